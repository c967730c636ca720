//! Settings to a provider's credentials, reading secrets from their
//! sources.

use secrecy::SecretString;

use super::secrets::read_secret;
use super::sources::env;
use super::urls::{base_url, parse_url};
use super::{AuthMethod, ConfigError, Settings};
use crate::provider::paynearme::oauth::OAuthConfig;
use crate::provider::paynearme::{PnmAuth, PnmCredentials};

impl Settings {
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
}
