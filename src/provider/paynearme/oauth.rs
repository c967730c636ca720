//! OAuth 2.0 access tokens for PayNearMe: the client-credentials grant
//! (RFC 6749 §4.4), Bearer use (RFC 6750).
//!
//! One [`TokenSource`] is shared by every worker of a command. It holds the
//! current token in memory only, renews it before it expires, and lets one
//! token request out at a time: workers that need a token while it is being
//! renewed wait for that request instead of sending their own.
//!
//! Written by hand rather than with the `oauth2` crate: the exchange is one
//! form POST, and the crate brings its own HTTP client version and no token
//! cache, while this needs the run's own client (no redirects, bounded
//! answers), `Retry-After` and a single-flight cache.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use tokio::time::Instant;

use crate::provider::{exchange, json_object, ProviderError};

/// The name token requests have in counters, logs and errors.
pub const TOKEN_ENDPOINT: &str = "oauth_token";

/// How the client authenticates to the token endpoint (RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// HTTP Basic with the form-urlencoded id and secret (the RFC's default).
    #[default]
    Basic,
    /// `client_id` and `client_secret` in the form body.
    Post,
}

impl std::fmt::Display for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ClientAuth::Basic => "basic",
            ClientAuth::Post => "post",
        })
    }
}

/// Where and how to get tokens.
#[derive(Debug, Clone)]
pub struct OAuthConfig {
    pub token_url: reqwest::Url,
    pub client_id: String,
    pub client_secret: SecretString,
    pub scope: Option<String>,
    pub client_auth: ClientAuth,
}

/// An access token and which renewal it came from.
#[derive(Debug, Clone)]
pub struct Bearer {
    pub token: SecretString,
    generation: u64,
}

/// When a token obtained at `obtained` should be renewed.
#[derive(Debug, Clone, Copy)]
struct Lease {
    obtained: Instant,
    /// `expires_in`; `None` when the answer gave none (used until a 401).
    lifetime: Option<Duration>,
}

impl Lease {
    fn needs_renewal(&self, now: Instant) -> bool {
        self.lifetime
            .is_some_and(|lifetime| now >= self.obtained + renew_after(lifetime))
    }
}

/// How long a token of `lifetime` is used before it is renewed: the
/// lifetime less a margin of 60 s or 20 % of it, whichever is larger; for
/// lifetimes under two minutes (where 60 s would be half or more of it),
/// 20 %.
pub fn renew_after(lifetime: Duration) -> Duration {
    let fifth = lifetime / 5;
    let margin = if lifetime >= Duration::from_secs(120) {
        fifth.max(Duration::from_secs(60))
    } else {
        fifth
    };
    lifetime - margin
}

struct Current {
    bearer: Bearer,
    lease: Lease,
}

/// The shared, single-flight token cache.
pub struct TokenSource {
    http: reqwest::Client,
    config: OAuthConfig,
    current: Mutex<Option<Current>>,
    /// Held while a token request is out.
    renewing: tokio::sync::Mutex<()>,
    generations: AtomicU64,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("token_url", &self.config.token_url.as_str())
            .field("client_id", &self.config.client_id)
            .finish_non_exhaustive()
    }
}

impl TokenSource {
    /// A token source that sends its requests through `http`.
    pub fn new(http: reqwest::Client, config: OAuthConfig) -> Self {
        TokenSource {
            http,
            config,
            current: Mutex::new(None),
            renewing: tokio::sync::Mutex::new(()),
            generations: AtomicU64::new(0),
        }
    }

    /// A token that is not due for renewal, fetching one if needed. Only one
    /// token request is out at a time; others wait for its result.
    pub async fn bearer(&self) -> Result<Bearer, ProviderError> {
        if let Some(bearer) = self.fresh() {
            return Ok(bearer);
        }
        let _renewing = self.renewing.lock().await;
        if let Some(bearer) = self.fresh() {
            return Ok(bearer);
        }
        let (token, lease) = self.request_token().await?;
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        let bearer = Bearer { token, generation };
        *self.current.lock().unwrap() = Some(Current {
            bearer: bearer.clone(),
            lease,
        });
        tracing::debug!(
            generation,
            lifetime_s = lease.lifetime.map(|l| l.as_secs_f64()),
            "new OAuth access token (value not logged)"
        );
        Ok(bearer)
    }

    /// The client secret, for redaction only.
    pub(crate) fn client_secret(&self) -> &str {
        self.config.client_secret.expose_secret()
    }

    /// Forgets `rejected` (the provider answered 401 to it), unless a newer
    /// token has already replaced it.
    pub fn reject(&self, rejected: &Bearer) {
        let mut current = self.current.lock().unwrap();
        if current
            .as_ref()
            .is_some_and(|c| c.bearer.generation == rejected.generation)
        {
            *current = None;
        }
    }

    fn fresh(&self) -> Option<Bearer> {
        let current = self.current.lock().unwrap();
        current
            .as_ref()
            .filter(|c| !c.lease.needs_renewal(Instant::now()))
            .map(|c| c.bearer.clone())
    }

    /// One token request (RFC 6749 §4.4.2); errors name the token endpoint.
    async fn request_token(&self) -> Result<(SecretString, Lease), ProviderError> {
        let config = &self.config;
        let mut form: Vec<(&str, &str)> = vec![("grant_type", "client_credentials")];
        if let Some(scope) = &config.scope {
            form.push(("scope", scope));
        }
        let mut request = self
            .http
            .post(config.token_url.clone())
            .header(ACCEPT, "application/json");
        match config.client_auth {
            ClientAuth::Basic => {
                request = request.header(
                    AUTHORIZATION,
                    basic_authorization(&config.client_id, &config.client_secret),
                );
            }
            ClientAuth::Post => {
                form.push(("client_id", &config.client_id));
                form.push(("client_secret", config.client_secret.expose_secret()));
            }
        }
        let obtained = Instant::now();
        let secret = config.client_secret.expose_secret();
        // The secret in any encoding an echoing endpoint may give it.
        // An echoed Authorization header carries it in base64 of `id:secret`.
        let basic = basic_authorization(&config.client_id, &config.client_secret);
        let basic = basic.to_str().unwrap_or_default();
        let basic = basic.strip_prefix("Basic ").unwrap_or(basic);
        let redact = |e: ProviderError| e.redact(&[secret, basic]);
        let (status, bytes) = exchange(TOKEN_ENDPOINT, request.form(&form))
            .await
            .map_err(redact)?;
        let body = json_object(TOKEN_ENDPOINT, status, &bytes).map_err(redact)?;
        if !(200..300).contains(&status) {
            let text = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
            return Err(redact(ProviderError::Api {
                endpoint: TOKEN_ENDPOINT,
                status,
                code: text("error").unwrap_or_else(|| format!("http_{status}")),
                description: text("error_description").unwrap_or_default(),
            }));
        }
        read_token(&body, status)
            .map(|(token, lifetime)| (token, Lease { obtained, lifetime }))
            .map_err(redact)
    }
}

/// Reads a successful token answer (RFC 6749 §5.1): the token, and its
/// lifetime when `expires_in` is given.
fn read_token(
    body: &serde_json::Map<String, Value>,
    status: u16,
) -> Result<(SecretString, Option<Duration>), ProviderError> {
    let bad = |what: &str| ProviderError::UnexpectedBody {
        endpoint: TOKEN_ENDPOINT,
        status,
        snippet: what.to_string(),
    };
    let token = body
        .get("access_token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| bad("token answer without access_token"))?;
    match body.get("token_type").and_then(Value::as_str) {
        Some(kind) if kind.eq_ignore_ascii_case("bearer") => {}
        Some(_) => return Err(bad("token_type is not Bearer")),
        None => return Err(bad("token answer without token_type")),
    }
    let lifetime = match body.get("expires_in") {
        None | Some(Value::Null) => None,
        Some(value) => {
            let seconds = value
                .as_f64()
                .or_else(|| value.as_str().and_then(|s| s.trim().parse().ok()))
                .filter(|s| s.is_finite() && *s > 0.0)
                .ok_or_else(|| bad("expires_in is not a positive number of seconds"))?;
            Some(Duration::from_secs_f64(seconds.min(1e9)))
        }
    };
    Ok((SecretString::from(token.to_string()), lifetime))
}

/// `Authorization: Basic …` with the id and secret form-urlencoded first,
/// as RFC 6749 §2.3.1 asks; marked sensitive so it is never logged.
pub fn basic_authorization(client_id: &str, secret: &SecretString) -> HeaderValue {
    let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let pair = format!("{}:{}", encode(client_id), encode(secret.expose_secret()));
    let mut value = HeaderValue::from_str(&format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    ))
    .expect("base64 is a valid header value");
    value.set_sensitive(true);
    value
}

/// `Authorization: Bearer …`, marked sensitive.
pub fn bearer_authorization(bearer: &Bearer) -> HeaderValue {
    let mut value = HeaderValue::from_str(&format!("Bearer {}", bearer.token.expose_secret()))
        .unwrap_or_else(|_| HeaderValue::from_static("Bearer invalid"));
    value.set_sensitive(true);
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_basic(value: &HeaderValue) -> (String, String) {
        let text = value.to_str().unwrap().strip_prefix("Basic ").unwrap();
        let pair = base64::engine::general_purpose::STANDARD
            .decode(text)
            .unwrap();
        let pair = String::from_utf8(pair).unwrap();
        let (id, secret) = pair.split_once(':').unwrap();
        let decode = |s: &str| {
            form_urlencoded::parse(format!("x={s}").as_bytes())
                .next()
                .unwrap()
                .1
                .into_owned()
        };
        (decode(id), decode(secret))
    }

    #[test]
    fn basic_credentials_are_form_urlencoded_before_base64() {
        for (id, secret) in [
            ("plain", "secret"),
            ("id:with:colons", "se:cret"),
            ("100%", "a+b c%20"),
            ("Zoë-ñandú", "秘密/=?&"),
        ] {
            let value = basic_authorization(id, &SecretString::from(secret));
            assert!(value.is_sensitive());
            let encoded = value.to_str().unwrap().strip_prefix("Basic ").unwrap();
            let raw = String::from_utf8(
                base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .unwrap(),
            )
            .unwrap();
            // Exactly one separator: a `:` inside the id or secret is escaped.
            assert_eq!(raw.matches(':').count(), 1, "{raw}");
            assert!(raw.is_ascii(), "{raw}");
            assert_eq!(decode_basic(&value), (id.to_string(), secret.to_string()));
        }
        // The RFC's own encoding: space is `+`, `+` is `%2B`, `%` is `%25`.
        let value = basic_authorization("a b", &SecretString::from("+%"));
        let encoded = value.to_str().unwrap().strip_prefix("Basic ").unwrap();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap();
        assert_eq!(raw, b"a+b:%2B%25");
    }

    #[test]
    fn renewal_leaves_sixty_seconds_or_a_fifth_of_the_lifetime() {
        let s = Duration::from_secs;
        assert_eq!(renew_after(s(3600)), s(2880)); // 20 % = 720 s > 60 s
        assert_eq!(renew_after(s(300)), s(240)); // 60 s > 20 % = 60 s
        assert_eq!(renew_after(s(200)), s(140)); // 60 s > 40 s
        assert_eq!(renew_after(s(120)), s(60));
        assert_eq!(renew_after(s(60)), s(48)); // short: 20 %
        assert_eq!(renew_after(s(2)), Duration::from_millis(1600));
    }

    #[test]
    fn a_lease_is_renewed_on_a_fake_clock_only_once_its_margin_is_reached() {
        let start = Instant::now();
        let lease = Lease {
            obtained: start,
            lifetime: Some(Duration::from_secs(2)),
        };
        assert!(!lease.needs_renewal(start));
        assert!(!lease.needs_renewal(start + Duration::from_millis(1599)));
        assert!(lease.needs_renewal(start + Duration::from_millis(1600)));
        let hour = Lease {
            obtained: start,
            lifetime: Some(Duration::from_secs(3600)),
        };
        assert!(!hour.needs_renewal(start + Duration::from_secs(2879)));
        assert!(hour.needs_renewal(start + Duration::from_secs(2880)));
        let unknown = Lease {
            obtained: start,
            lifetime: None,
        };
        assert!(!unknown.needs_renewal(start + Duration::from_secs(86_400 * 365)));
    }

    fn answer(json: &str) -> serde_json::Map<String, Value> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn token_answers_are_read_as_rfc_6749_says() {
        let (token, lifetime) = read_token(
            &answer(r#"{"access_token":"abc","token_type":"bearer","expires_in":3600}"#),
            200,
        )
        .unwrap();
        assert_eq!(token.expose_secret(), "abc");
        assert_eq!(lifetime, Some(Duration::from_secs(3600)));
        let (_, lifetime) = read_token(
            &answer(r#"{"access_token":"abc","token_type":"Bearer","expires_in":"2"}"#),
            200,
        )
        .unwrap();
        assert_eq!(lifetime, Some(Duration::from_secs(2)));
        let (_, lifetime) = read_token(
            &answer(r#"{"access_token":"abc","token_type":"BEARER"}"#),
            200,
        )
        .unwrap();
        assert_eq!(lifetime, None);
        for bad in [
            r#"{"token_type":"Bearer"}"#,
            r#"{"access_token":"","token_type":"Bearer"}"#,
            r#"{"access_token":"abc","token_type":"mac"}"#,
            r#"{"access_token":"abc"}"#,
            r#"{"access_token":"abc","token_type":"Bearer","expires_in":-5}"#,
            r#"{"access_token":"abc","token_type":"Bearer","expires_in":0}"#,
            r#"{"access_token":"abc","token_type":"Bearer","expires_in":"0"}"#,
            r#"{"access_token":"abc","token_type":"Bearer","expires_in":"soon"}"#,
        ] {
            let err = read_token(&answer(bad), 200).unwrap_err();
            assert!(
                matches!(err, ProviderError::UnexpectedBody { .. }),
                "{bad}: {err:?}"
            );
            // Any unreadable token answer stops the run: no request can succeed.
            assert_eq!(
                ProviderError::Token(Box::new(err)).class(),
                crate::provider::ErrorClass::Auth
            );
        }
    }
}
