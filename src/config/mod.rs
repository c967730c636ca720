//! Settings of a command: flags > environment > config file > defaults,
//! each value with its source. Credentials and endpoints come from the
//! environment or files, never from a command-line value (which `ps` would
//! show).
//!
//! `sources` resolves where each value comes from, `secrets` reads secrets,
//! `urls` checks provider URLs, `credentials` turns settings into a
//! provider's credentials, `show` is `orderbatch config show`.

use std::num::NonZeroU32;
use std::path::PathBuf;

mod credentials;
mod secrets;
mod show;
mod sources;
mod token;
mod urls;

pub use secrets::{env_secret, read_secret_file, SecretSource};
pub use sources::{
    env, load_file, CeFileConfig, FileConfig, RateSetting, Source, Sourced, Unlimited,
};
pub use token::TokenOptions;
pub use urls::{base_url, parse_url};

use crate::provider::paynearme::oauth::ClientAuth;

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

/// The config file read when `--config` is not given and it exists.
pub const DEFAULT_FILE: &str = "orderbatch.toml";
/// Requests per second when nothing says otherwise.
pub const DEFAULT_RATE: u32 = 10;
/// Requests in flight when nothing says otherwise.
pub const DEFAULT_CONCURRENCY: u16 = 8;
/// Seconds to wait for an answer when nothing says otherwise.
pub const DEFAULT_TIMEOUT: u64 = 30;

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

#[derive(Debug, Clone, Default)]
pub struct Flags {
    pub base_url: Option<String>,
    pub auth: Option<AuthMethod>,
    pub rate: Option<Option<NonZeroU32>>,
    pub concurrency: Option<u16>,
    pub timeout: Option<u64>,
    pub token: crate::config::TokenOptions,
}

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
