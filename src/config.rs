//! Credentials and endpoints from the environment (never from a command-line
//! value, which `ps` would show).

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use secrecy::SecretString;

mod token;
pub use token::TokenOptions;

use crate::provider::paynearme::oauth::{ClientAuth, OAuthConfig};
use crate::provider::paynearme::{PnmAuth, PnmCredentials};

/// A configuration problem; the message says what to set.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} is not set; {1}")]
    Missing(&'static str, &'static str),
    #[error("cannot read the secret file {path}: {detail}")]
    SecretFile { path: PathBuf, detail: String },
    #[error("the secret file {path} can be read or written by others (mode {mode:o}); run `chmod 600 {path}` (0400 and 0440 are accepted too)", path = path.display())]
    SecretFileOpen { path: PathBuf, mode: u32 },
    #[error("{what} `{url}` is not https; https is required except for a sandbox on this machine (127.0.0.1, ::1 or localhost)")]
    InsecureUrl { what: &'static str, url: String },
    #[error("{what} `{url}` is not a valid http(s) URL{why}")]
    BadUrl {
        what: &'static str,
        url: String,
        why: String,
    },
    #[error("the environment variable {name} (named by {setting}) is not set")]
    SecretEnvUnset { name: String, setting: &'static str },
    #[error("config file {path}: {detail}", path = path.display())]
    File { path: PathBuf, detail: String },
}

/// Reads the secret from a file that only its owner (and its group) can
/// read, following symbolic links (Kubernetes mounts a secret as
/// `key -> ..data/key`, `..data -> ..2024_..`: the mode checked is the
/// file's). Group read is accepted: Kubernetes gives a 0400 secret file
/// group read for the pod's `fsGroup` (0440), on a volume only that pod
/// mounts; systemd's credentials are 0400 of the service's user. Any
/// permission for others, and group write or execute, are refused. The mode
/// is read from the opened file, so what is checked is what is read.
pub fn read_secret_file(path: &Path) -> Result<SecretString, ConfigError> {
    let fail = |e: std::io::Error| ConfigError::SecretFile {
        path: path.to_path_buf(),
        detail: e.to_string(),
    };
    let mut file = std::fs::File::open(path).map_err(fail)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = file.metadata().map_err(fail)?.permissions().mode() & 0o777;
        if mode & 0o037 != 0 {
            return Err(ConfigError::SecretFileOpen {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut file, &mut text).map_err(fail)?;
    Ok(SecretString::from(
        text.trim_end_matches(['\r', '\n']).to_string(),
    ))
}

/// Parses a provider URL (`what` names it in errors): http(s) only, no
/// user-info, https unless the host is this machine (a loopback IP or
/// `localhost`). The host is taken from the parsed URL, never split out
/// of the text by hand.
pub fn parse_url(what: &'static str, url: &str) -> Result<reqwest::Url, ConfigError> {
    let bad = |why: &str| ConfigError::BadUrl {
        what,
        url: url.to_string(),
        why: why.to_string(),
    };
    let parsed = reqwest::Url::parse(url.trim()).map_err(|e| bad(&format!(": {e}")))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(bad(
            ": it carries a user name or password (`user@host`); give the host alone",
        ));
    }
    match parsed.scheme() {
        "https" => {}
        "http" => {
            let loopback = match parsed.host() {
                Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                None => false,
            };
            if !loopback {
                return Err(ConfigError::InsecureUrl {
                    what,
                    url: url.to_string(),
                });
            }
        }
        _ => return Err(bad(": only https (or http to this machine) is allowed")),
    }
    if parsed.host().is_none() {
        return Err(bad(": no host"));
    }
    Ok(parsed)
}

/// The PayNearMe base URL: [`parse_url`], then without a trailing
/// `/json-api` (how PayNearMe's sample clients write their host; the client
/// adds it), with a note when one was taken off.
pub fn base_url(url: &str) -> Result<String, ConfigError> {
    let parsed = parse_url("base URL", url)?;
    let text = parsed.as_str().trim_end_matches('/');
    match text.strip_suffix("/json-api") {
        Some(base) => {
            tracing::info!(
                "base URL {url} ends in /json-api; using {base} (orderbatch adds /json-api itself)"
            );
            Ok(base.to_string())
        }
        None => Ok(text.to_string()),
    }
}

/// A secret from the environment variable or file `source` names;
/// `setting` is the config key that names an environment variable.
fn read_secret(source: &SecretSource, setting: &'static str) -> Result<SecretString, ConfigError> {
    match source {
        SecretSource::Env(name) => {
            env(name)
                .map(SecretString::from)
                .ok_or_else(|| ConfigError::SecretEnvUnset {
                    name: name.clone(),
                    setting,
                })
        }
        SecretSource::File(path) => read_secret_file(path),
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The config file read when `--config` is not given and it exists.
pub const DEFAULT_FILE: &str = "orderbatch.toml";
/// Requests per second when nothing says otherwise.
pub const DEFAULT_RATE: u32 = 10;
/// Requests in flight when nothing says otherwise.
pub const DEFAULT_CONCURRENCY: u16 = 8;
/// Seconds to wait for an answer when nothing says otherwise.
pub const DEFAULT_TIMEOUT: u64 = 30;

/// `orderbatch.toml`: everything but the secret itself (only where to find it).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub base_url: Option<String>,
    pub site_identifier: Option<String>,
    pub api_key_id: Option<String>,
    /// Name of an environment variable that holds the secret.
    pub secret_env: Option<String>,
    /// A file (mode 600) that holds the secret.
    pub secret_file: Option<PathBuf>,
    /// `oauth` or `hmac`; without it, OAuth when a client id is configured.
    pub auth: Option<AuthMethod>,
    /// OAuth 2.0 client id (Business Portal).
    pub client_id: Option<String>,
    /// Name of an environment variable that holds the OAuth client secret.
    pub client_secret_env: Option<String>,
    /// A file (mode 600) that holds the OAuth client secret.
    pub client_secret_file: Option<PathBuf>,
    /// The OAuth token endpoint (no default: PayNearMe gives it with the
    /// credentials).
    pub token_url: Option<String>,
    /// OAuth scope to ask for, if the site needs one.
    pub scope: Option<String>,
    /// How the client authenticates to the token endpoint.
    pub token_client_auth: Option<ClientAuth>,
    /// Requests per second, or `"unlimited"`.
    pub rate: Option<RateSetting>,
    pub concurrency: Option<u16>,
    pub timeout: Option<u64>,
    /// Options sent with every `get_smart_token` call.
    #[serde(default)]
    pub token: crate::config::TokenOptions,
    /// `orderbatch ce` settings.
    #[serde(default)]
    pub commerce_engine: CeFileConfig,
    /// Refused: the secret never lives in the config file.
    secret: Option<toml::Value>,
    /// Refused: the client secret never lives in the config file.
    client_secret: Option<toml::Value>,
}

/// How PayNearMe requests are authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AuthMethod {
    /// OAuth 2.0 client credentials (sites onboarded since 2026-08-01).
    Oauth,
    /// HMAC-SHA256 signatures with the site's secret key.
    Hmac,
}

impl std::fmt::Display for AuthMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AuthMethod::Oauth => "oauth",
            AuthMethod::Hmac => "hmac",
        })
    }
}

/// `[commerce_engine]`: the store and where its API key is (never the key).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CeFileConfig {
    pub base_url: Option<String>,
    pub store_id: Option<String>,
    /// Name of an environment variable that holds the API key.
    pub api_key_env: Option<String>,
    /// A file (mode 600) that holds the API key.
    pub api_key_file: Option<PathBuf>,
    /// Refused: the key never lives in the config file.
    api_key: Option<toml::Value>,
}

/// `rate = 20` or `rate = "unlimited"`.
#[derive(Debug, Clone, Copy, serde::Deserialize)]
#[serde(untagged)]
pub enum RateSetting {
    PerSecond(u32),
    Named(Unlimited),
}

/// The word `unlimited`.
#[derive(Debug, Clone, Copy, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unlimited {
    Unlimited,
}

impl RateSetting {
    fn value(self) -> Option<NonZeroU32> {
        match self {
            RateSetting::PerSecond(n) => NonZeroU32::new(n),
            RateSetting::Named(Unlimited::Unlimited) => None,
        }
    }
}

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Flag,
    Env(&'static str),
    File(PathBuf),
    Default,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Flag => f.write_str("command line"),
            Source::Env(name) => write!(f, "environment {name}"),
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Default => f.write_str("default"),
        }
    }
}

/// A value and where it came from.
#[derive(Debug, Clone)]
pub struct Sourced<T> {
    pub value: T,
    pub source: Source,
}

/// The first candidate that has a value (callers list them flags first,
/// then environment, config file, default).
fn pick<T>(candidates: impl IntoIterator<Item = (Option<T>, Source)>) -> Option<Sourced<T>> {
    candidates
        .into_iter()
        .find_map(|(value, source)| value.map(|value| Sourced { value, source }))
}

/// Reads `explicit`, else `./orderbatch.toml` when it exists.
pub fn load_file(explicit: Option<&Path>) -> Result<Option<(PathBuf, FileConfig)>, ConfigError> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None if Path::new(DEFAULT_FILE).exists() => PathBuf::from(DEFAULT_FILE),
        None => return Ok(None),
    };
    let file_err = |detail: String| ConfigError::File {
        path: path.clone(),
        detail,
    };
    let text = std::fs::read_to_string(&path).map_err(|e| file_err(e.to_string()))?;
    let file: FileConfig = toml::from_str(&text).map_err(|e| file_err(e.to_string()))?;
    if file.secret.is_some() {
        return Err(file_err(
            "`secret` must not be in the config file; say where it is with \
             secret_env = \"VAR\" or secret_file = \"/path/to/mode-600-file\""
                .into(),
        ));
    }
    if file.client_secret.is_some() {
        return Err(file_err(
            "`client_secret` must not be in the config file; say where it is with \
             client_secret_env = \"VAR\" or client_secret_file = \"/path/to/mode-600-file\""
                .into(),
        ));
    }
    if file.commerce_engine.api_key.is_some() {
        return Err(file_err(
            "`commerce_engine.api_key` must not be in the config file; say where it is with \
             api_key_env = \"VAR\" or api_key_file = \"/path/to/mode-600-file\""
                .into(),
        ));
    }
    Ok(Some((path, file)))
}

/// Flags a command was given that settings resolve.
#[derive(Debug, Clone, Default)]
pub struct Flags {
    pub base_url: Option<String>,
    pub auth: Option<AuthMethod>,
    pub rate: Option<Option<NonZeroU32>>,
    pub concurrency: Option<u16>,
    pub timeout: Option<u64>,
    pub token: crate::config::TokenOptions,
}

/// Where the secret is read from.
#[derive(Debug, Clone)]
pub enum SecretSource {
    Env(String),
    File(PathBuf),
}

impl std::fmt::Display for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretSource::Env(name) => write!(f, "environment variable {name}"),
            SecretSource::File(p) => write!(f, "file {}", p.display()),
        }
    }
}

/// The effective settings of a command, each with its source.
#[derive(Debug, Clone)]
pub struct Settings {
    pub base_url: Option<Sourced<String>>,
    pub site_identifier: Option<Sourced<String>>,
    pub api_key_id: Option<Sourced<String>>,
    /// Where the secret comes from; [`Settings::credentials`] reads it.
    pub secret: Option<Sourced<SecretSource>>,
    /// `--auth` / `auth`: the method asked for, if any.
    pub auth: Option<Sourced<AuthMethod>>,
    pub client_id: Option<Sourced<String>>,
    /// Where the OAuth client secret comes from.
    pub client_secret: Option<Sourced<SecretSource>>,
    pub token_url: Option<Sourced<String>>,
    pub scope: Option<Sourced<String>>,
    pub token_client_auth: Sourced<ClientAuth>,
    pub rate: Sourced<Option<NonZeroU32>>,
    pub concurrency: Sourced<u16>,
    pub timeout: Sourced<u64>,
    /// `get_smart_token` options: flags over the file's, key by key.
    pub token: crate::config::TokenOptions,
    /// Commerce Engine settings; [`Settings::ce_credentials`] reads them.
    pub ce: CeSettings,
}

/// Commerce Engine settings, each with its source (environment > file).
#[derive(Debug, Clone)]
pub struct CeSettings {
    pub base_url: Option<Sourced<String>>,
    pub store_id: Option<Sourced<String>>,
    /// Where the API key is; `None` with `CE_ACCESS_TOKEN` set (tokens come
    /// from the environment only: they are short-lived).
    pub api_key: Option<Sourced<SecretSource>>,
}

impl Settings {
    /// Resolves flags > environment > config file > defaults.
    pub fn resolve(flags: Flags, file: Option<(PathBuf, FileConfig)>) -> Settings {
        let (path, file) = file.unwrap_or_default();
        let from_file = || Source::File(path.clone());
        let secret = pick([
            (
                env("PNM_SECRET_KEY").map(|_| SecretSource::Env("PNM_SECRET_KEY".into())),
                Source::Env("PNM_SECRET_KEY"),
            ),
            (
                env("PNM_SECRET_KEY_FILE").map(|p| SecretSource::File(p.into())),
                Source::Env("PNM_SECRET_KEY_FILE"),
            ),
            (file.secret_env.clone().map(SecretSource::Env), from_file()),
            (
                file.secret_file.clone().map(SecretSource::File),
                from_file(),
            ),
        ]);
        let client_secret = pick([
            (
                env("PNM_CLIENT_SECRET").map(|_| SecretSource::Env("PNM_CLIENT_SECRET".into())),
                Source::Env("PNM_CLIENT_SECRET"),
            ),
            (
                env("PNM_CLIENT_SECRET_FILE").map(|p| SecretSource::File(p.into())),
                Source::Env("PNM_CLIENT_SECRET_FILE"),
            ),
            (
                file.client_secret_env.clone().map(SecretSource::Env),
                from_file(),
            ),
            (
                file.client_secret_file.clone().map(SecretSource::File),
                from_file(),
            ),
        ]);
        let default = |v| (Some(v), Source::Default);
        Settings {
            auth: pick([(flags.auth, Source::Flag), (file.auth, from_file())]),
            client_id: pick([
                (env("PNM_CLIENT_ID"), Source::Env("PNM_CLIENT_ID")),
                (file.client_id.clone(), from_file()),
            ]),
            client_secret,
            token_url: pick([
                (env("PNM_TOKEN_URL"), Source::Env("PNM_TOKEN_URL")),
                (file.token_url.clone(), from_file()),
            ]),
            scope: pick([
                (env("PNM_TOKEN_SCOPE"), Source::Env("PNM_TOKEN_SCOPE")),
                (file.scope.clone(), from_file()),
            ]),
            token_client_auth: pick([
                (file.token_client_auth, from_file()),
                (Some(ClientAuth::Basic), Source::Default),
            ])
            .expect("has a default"),
            base_url: pick([
                (flags.base_url, Source::Flag),
                (env("PNM_BASE_URL"), Source::Env("PNM_BASE_URL")),
                (file.base_url.clone(), from_file()),
            ]),
            site_identifier: pick([
                (
                    env("PNM_SITE_IDENTIFIER"),
                    Source::Env("PNM_SITE_IDENTIFIER"),
                ),
                (file.site_identifier.clone(), from_file()),
            ]),
            api_key_id: pick([
                (env("PNM_API_KEY_ID"), Source::Env("PNM_API_KEY_ID")),
                (file.api_key_id.clone(), from_file()),
            ]),
            secret,
            rate: pick([
                (flags.rate, Source::Flag),
                (file.rate.map(RateSetting::value), from_file()),
                (Some(NonZeroU32::new(DEFAULT_RATE)), Source::Default),
            ])
            .expect("has a default"),
            concurrency: pick([
                (flags.concurrency, Source::Flag),
                (file.concurrency, from_file()),
                default(DEFAULT_CONCURRENCY),
            ])
            .expect("has a default"),
            timeout: pick([
                (flags.timeout, Source::Flag),
                (file.timeout, from_file()),
                (Some(DEFAULT_TIMEOUT), Source::Default),
            ])
            .expect("has a default"),
            token: flags.token.over(file.token),
            ce: CeSettings::resolve(&file.commerce_engine, from_file()),
        }
    }

    /// The authentication method: `--auth` / `auth` when given, else OAuth
    /// when a client id is configured, else HMAC.
    pub fn auth_method(&self) -> AuthMethod {
        match (&self.auth, &self.client_id) {
            (Some(explicit), _) => explicit.value,
            (None, Some(_)) => AuthMethod::Oauth,
            (None, None) => AuthMethod::Hmac,
        }
    }

    /// PayNearMe credentials, reading the secret from its source.
    pub fn credentials(&self) -> Result<PnmCredentials, ConfigError> {
        let base = self.base_url.as_ref().ok_or(ConfigError::Missing(
            "PNM_BASE_URL",
            "set it, pass --base-url, or put base_url in orderbatch.toml \
             (e.g. https://api.paynearme-sandbox.com, or the URL `orderbatch sandbox` prints)",
        ))?;
        let base_url = base_url(&base.value)?;
        let site = self.site_identifier.as_ref().ok_or(ConfigError::Missing(
            "PNM_SITE_IDENTIFIER",
            "set it, or put site_identifier in orderbatch.toml",
        ))?;
        let auth = match self.auth_method() {
            AuthMethod::Hmac => self.hmac()?,
            AuthMethod::Oauth => PnmAuth::OAuth(self.oauth()?),
        };
        Ok(PnmCredentials {
            base_url,
            site_identifier: site.value.clone(),
            auth,
        })
    }

    fn hmac(&self) -> Result<PnmAuth, ConfigError> {
        let secret = match self.secret.as_ref().map(|s| &s.value) {
            Some(source) => read_secret(source, "secret_env")?,
            None => {
                return Err(ConfigError::Missing(
                    "PNM_SECRET_KEY",
                    "set it, or PNM_SECRET_KEY_FILE to a file (mode 600) holding the secret, \
                     or secret_env / secret_file in orderbatch.toml. Sites onboarded since \
                     2026-08-01 use OAuth 2.0 instead: set PNM_CLIENT_ID, PNM_CLIENT_SECRET \
                     and PNM_TOKEN_URL",
                ))
            }
        };
        Ok(PnmAuth::Hmac {
            secret,
            api_key_id: self.api_key_id.as_ref().map(|k| k.value.clone()),
        })
    }

    fn oauth(&self) -> Result<OAuthConfig, ConfigError> {
        let client_id = self.client_id.as_ref().ok_or(ConfigError::Missing(
            "PNM_CLIENT_ID",
            "--auth oauth needs the OAuth client id from PayNearMe's Business Portal \
             (or client_id in orderbatch.toml)",
        ))?;
        let token_url = self.token_url.as_ref().ok_or(ConfigError::Missing(
            "PNM_TOKEN_URL",
            "OAuth needs the token endpoint PayNearMe gave with the client credentials \
             (or token_url in orderbatch.toml); there is no default",
        ))?;
        let token_url = parse_url("token URL", &token_url.value)?;
        let client_secret = match self.client_secret.as_ref().map(|s| &s.value) {
            Some(source) => read_secret(source, "client_secret_env")?,
            None => {
                return Err(ConfigError::Missing(
                    "PNM_CLIENT_SECRET",
                    "set it, or PNM_CLIENT_SECRET_FILE to a file (mode 600) holding it, \
                     or client_secret_env / client_secret_file in orderbatch.toml",
                ))
            }
        };
        Ok(OAuthConfig {
            token_url,
            client_id: client_id.value.clone(),
            client_secret,
            scope: self.scope.as_ref().map(|s| s.value.clone()),
            client_auth: self.token_client_auth.value,
        })
    }

    /// Commerce Engine credentials: `CE_BASE_URL`, `CE_STORE_ID`, and
    /// `CE_API_KEY` / `CE_API_KEY_FILE` or `CE_ACCESS_TOKEN` (+ optional
    /// `CE_REFRESH_TOKEN`), else the `[commerce_engine]` section of the
    /// config file.
    pub fn ce_credentials(
        &self,
    ) -> Result<crate::provider::commerce_engine::CeCredentials, ConfigError> {
        use crate::provider::commerce_engine::{CeAuth, CeCredentials};
        let base_url = self.ce.base_url.as_ref().ok_or(ConfigError::Missing(
            "CE_BASE_URL",
            "set it (or commerce_engine.base_url in orderbatch.toml) to the API host, \
             e.g. https://staging.api.commercengine.io, or the URL `orderbatch sandbox` prints",
        ))?;
        let ce_base = parse_url("Commerce Engine base URL", &base_url.value)?;
        let store_id = self.ce.store_id.as_ref().ok_or(ConfigError::Missing(
            "CE_STORE_ID",
            "set it (or commerce_engine.store_id in orderbatch.toml) to your store id",
        ))?;
        let auth = match (&self.ce.api_key, env("CE_ACCESS_TOKEN")) {
            (Some(key), _) => {
                CeAuth::ApiKey(read_secret(&key.value, "commerce_engine.api_key_env")?)
            }
            (None, Some(access)) => CeAuth::Tokens {
                access: SecretString::from(access),
                refresh: env("CE_REFRESH_TOKEN").map(SecretString::from),
            },
            (None, None) => {
                return Err(ConfigError::Missing(
                    "CE_API_KEY",
                    "set it (or CE_API_KEY_FILE, mode 600, or commerce_engine.api_key_env / \
                     api_key_file in orderbatch.toml), or CE_ACCESS_TOKEN with an optional \
                     CE_REFRESH_TOKEN",
                ))
            }
        };
        Ok(CeCredentials {
            base_url: ce_base.as_str().trim_end_matches('/').to_string(),
            store_id: store_id.value.clone(),
            auth,
        })
    }

    /// `orderbatch config show`: every setting and where it came from; the
    /// secret only by where it is read from.
    pub fn render(&self) -> String {
        fn line(out: &mut String, key: &str, value: Option<(String, &Source)>) {
            match value {
                Some((v, source)) => out.push_str(&format!("{key:<32} = {v:<44} # {source}\n")),
                None => out.push_str(&format!("{key:<32}   (not set)\n")),
            }
        }
        fn text(s: &Option<Sourced<String>>) -> Option<(String, &Source)> {
            s.as_ref().map(|s| (s.value.clone(), &s.source))
        }
        let mut out = String::new();
        line(&mut out, "base_url", text(&self.base_url));
        line(&mut out, "site_identifier", text(&self.site_identifier));
        let method = self.auth_method();
        let how = match &self.auth {
            Some(explicit) => explicit.source.to_string(),
            None if method == AuthMethod::Oauth => "a client id is configured".to_string(),
            None => "no client id is configured".to_string(),
        };
        out.push_str(&format!(
            "{:<32} = {:<44} # {how}\n",
            "auth",
            method.to_string()
        ));
        fn secret(s: &Option<Sourced<SecretSource>>) -> Option<(String, &Source)> {
            s.as_ref()
                .map(|s| (format!("[redacted], read from {}", s.value), &s.source))
        }
        match method {
            AuthMethod::Hmac => {
                line(&mut out, "api_key_id", text(&self.api_key_id));
                line(&mut out, "secret", secret(&self.secret));
            }
            AuthMethod::Oauth => {
                line(&mut out, "client_id", text(&self.client_id));
                line(&mut out, "client_secret", secret(&self.client_secret));
                line(&mut out, "token_url", text(&self.token_url));
                line(&mut out, "scope", text(&self.scope));
                line(
                    &mut out,
                    "token_client_auth",
                    Some((
                        self.token_client_auth.value.to_string(),
                        &self.token_client_auth.source,
                    )),
                );
            }
        }
        let rate = self
            .rate
            .value
            .map_or("unlimited".to_string(), |r| r.to_string());
        line(&mut out, "rate", Some((rate, &self.rate.source)));
        line(
            &mut out,
            "concurrency",
            Some((self.concurrency.value.to_string(), &self.concurrency.source)),
        );
        line(
            &mut out,
            "timeout",
            Some((self.timeout.value.to_string(), &self.timeout.source)),
        );
        match self.token.params() {
            Ok(params) => {
                for (k, v) in params {
                    out.push_str(&format!("{:<32} = {v}\n", format!("token.{k}")));
                }
            }
            Err(e) => out.push_str(&format!("token options: {e}\n")),
        }
        line(
            &mut out,
            "commerce_engine.base_url",
            text(&self.ce.base_url),
        );
        line(
            &mut out,
            "commerce_engine.store_id",
            text(&self.ce.store_id),
        );
        line(
            &mut out,
            "commerce_engine.api_key",
            self.ce
                .api_key
                .as_ref()
                .map(|s| (format!("[redacted], read from {}", s.value), &s.source)),
        );
        out
    }
}

impl CeSettings {
    /// Environment > the `[commerce_engine]` section (read from `file`).
    fn resolve(section: &CeFileConfig, file: Source) -> CeSettings {
        CeSettings {
            base_url: pick([
                (env("CE_BASE_URL"), Source::Env("CE_BASE_URL")),
                (section.base_url.clone(), file.clone()),
            ]),
            store_id: pick([
                (env("CE_STORE_ID"), Source::Env("CE_STORE_ID")),
                (section.store_id.clone(), file.clone()),
            ]),
            // An access token in the environment beats a key in the file.
            api_key: pick([
                (
                    env("CE_API_KEY").map(|_| SecretSource::Env("CE_API_KEY".into())),
                    Source::Env("CE_API_KEY"),
                ),
                (
                    env("CE_API_KEY_FILE").map(|p| SecretSource::File(p.into())),
                    Source::Env("CE_API_KEY_FILE"),
                ),
            ])
            .or_else(|| {
                env("CE_ACCESS_TOKEN").is_none().then(|| {
                    pick([
                        (
                            section.api_key_env.clone().map(SecretSource::Env),
                            file.clone(),
                        ),
                        (section.api_key_file.clone().map(SecretSource::File), file),
                    ])
                })?
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_is_required_except_on_loopback() {
        for ok in [
            "https://api.paynearme.com",
            "http://127.0.0.1:8080",
            "http://127.1.2.3",
            "http://localhost:9/x",
            "http://[::1]:80",
        ] {
            assert!(parse_url("base URL", ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://api.paynearme.com",
            "http://10.0.0.1",
            "http://127.0.0.1.evil.com",
            "ftp://x",
        ] {
            assert!(parse_url("base URL", bad).is_err(), "{bad}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn secret_file_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "s3cret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_secret_file(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        use secrecy::ExposeSecret;
        assert_eq!(read_secret_file(&path).unwrap().expose_secret(), "s3cret");
    }
}
