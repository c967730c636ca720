//! Where each setting comes from: flags > environment > config file >
//! defaults.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use super::{
    AuthMethod, CeSettings, ConfigError, Flags, SecretSource, Settings, DEFAULT_CONCURRENCY,
    DEFAULT_FILE, DEFAULT_RATE, DEFAULT_TIMEOUT,
};
use crate::provider::paynearme::oauth::ClientAuth;

/// A non-empty environment variable.
pub fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

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
    pub(super) fn value(self) -> Option<NonZeroU32> {
        match self {
            RateSetting::PerSecond(n) => NonZeroU32::new(n),
            RateSetting::Named(Unlimited::Unlimited) => None,
        }
    }
}

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
