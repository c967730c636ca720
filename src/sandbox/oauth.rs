//! The sandbox's OAuth 2.0 side: `POST /oauth/token` (client credentials,
//! RFC 6749 §4.4) and Bearer checks on API requests (RFC 6750).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use rand::Rng;
use secrecy::ExposeSecret;
use serde_json::{json, Value};

use super::Shared;

/// Issued tokens and what tests count about them.
#[derive(Debug, Default)]
pub struct OAuthState {
    /// Token → when it expires.
    tokens: HashMap<String, Instant>,
    /// Tokens revoked through `/__sandbox/oauth/revoke`.
    revoked: Vec<String>,
    token_requests: u64,
    token_refused: u64,
    /// Token requests answered 503 by an injected fault.
    token_failures: u64,
    bearer_requests: u64,
    hmac_requests: u64,
    expired_token_answers: u64,
    unknown_token_answers: u64,
    oauth_required_answers: u64,
    tokens_in_flight: u64,
    max_tokens_in_flight: u64,
}

impl OAuthState {
    pub fn to_json(&self) -> Value {
        json!({
            "token_requests": self.token_requests,
            "token_refused": self.token_refused,
            "token_failures": self.token_failures,
            "tokens_issued": self.tokens.len(),
            "bearer_requests": self.bearer_requests,
            "hmac_requests": self.hmac_requests,
            "expired_token_answers": self.expired_token_answers,
            "unknown_token_answers": self.unknown_token_answers,
            "oauth_required_answers": self.oauth_required_answers,
            "max_token_requests_in_flight": self.max_tokens_in_flight,
            // A test server: tests grep outputs for these.
            "tokens": self.tokens.keys().chain(&self.revoked).collect::<Vec<_>>(),
        })
    }
}

/// `POST /__sandbox/oauth/revoke`: every issued token becomes unknown, as
/// when the provider revokes them.
pub(crate) async fn revoke(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let mut state = shared.oauth.lock().unwrap();
    let revoked = state.tokens.len();
    let drained: Vec<String> = state.tokens.drain().map(|(t, _)| t).collect();
    state.revoked.extend(drained);
    Json(json!({"status":"ok","revoked":revoked}))
}

/// RFC 6749 §5.2 error answer.
fn token_error(status: StatusCode, code: &str, description: &str) -> Response {
    let mut response = (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({"error": code, "error_description": description})),
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Basic realm=\"orderbatch-sandbox\""),
        );
    }
    response
}

/// Counts a token request in flight while it lives.
struct InFlight<'a>(&'a Shared);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.oauth.lock().unwrap().tokens_in_flight -= 1;
    }
}

/// `POST /oauth/token`: client credentials by HTTP Basic (id and secret
/// form-urlencoded, RFC 6749 §2.3.1) or in the form body.
pub(crate) async fn token(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let _in_flight = {
        let mut state = shared.oauth.lock().unwrap();
        state.token_requests += 1;
        state.tokens_in_flight += 1;
        state.max_tokens_in_flight = state.max_tokens_in_flight.max(state.tokens_in_flight);
        InFlight(&shared)
    };
    if let Some((min, max)) = shared.config.latency_ms {
        let ms = shared.rng.lock().unwrap().random_range(min..=max.max(min));
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    // Injected failures reach the token endpoint only when faults are
    // limited to it (`POST /__sandbox/faults {"only": "token", ...}`).
    let only_token = shared.faults_only.lock().unwrap().as_deref() == Some("token");
    if only_token && super::paynearme::chance(&shared, shared.fail_rate()) {
        shared.oauth.lock().unwrap().token_failures += 1;
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "0")],
            Json(json!({"error": "temporarily_unavailable"})),
        )
            .into_response();
    }
    let answer = issue(&shared, &headers, &body);
    if answer.status() != StatusCode::OK {
        shared.oauth.lock().unwrap().token_refused += 1;
    }
    answer
}

fn issue(shared: &Shared, headers: &HeaderMap, body: &[u8]) -> Response {
    let form: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
    let get = |k: &str| {
        form.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            // The scheme is case-insensitive (RFC 7235 §2.1).
            let (scheme, rest) = v.trim_matches(' ').split_once(' ')?;
            scheme.eq_ignore_ascii_case("basic").then_some(rest)
        })
        .map(|b64| {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok());
            let pair = decoded.as_deref().and_then(|p| p.split_once(':'));
            pair.map(|(id, secret)| (form_decode(id), form_decode(secret)))
        });
    let credentials = match (basic, get("client_id"), get("client_secret")) {
        (Some(Some(pair)), None, None) => pair,
        // RFC 6749 §3.2.1: a client may name itself in the body beside its
        // Basic credentials (the secret twice would be two methods).
        (Some(Some(pair)), Some(id), None) if id == pair.0 => pair,
        (None, Some(id), Some(secret)) => (id, secret),
        (Some(None), _, _) => {
            return token_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "malformed Basic credentials",
            )
        }
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            return token_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "client credentials given twice (Basic and form)",
            )
        }
        _ => {
            return token_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "no client authentication",
            )
        }
    };
    let config = &shared.config;
    let id_ok = credentials.0 == config.client_id;
    let secret_ok = credentials.1 == config.client_secret.expose_secret();
    if !(id_ok && secret_ok) {
        return token_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication failed",
        );
    }
    if get("grant_type").as_deref() != Some("client_credentials") {
        return token_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant_type must be client_credentials",
        );
    }
    if let Some(scope) = get("scope") {
        if scope.split(' ').any(|s| s != "orders" && !s.is_empty()) {
            return token_error(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                "the sandbox knows the scope `orders` only",
            );
        }
    }
    let token = {
        let mut rng = shared.rng.lock().unwrap();
        format!(
            "sbx_{}",
            (0..24)
                .map(|_| format!("{:02x}", rng.random::<u8>()))
                .collect::<String>()
        )
    };
    let lifetime = config.token_lifetime;
    shared
        .oauth
        .lock()
        .unwrap()
        .tokens
        .insert(token.clone(), Instant::now() + lifetime);
    (
        StatusCode::OK,
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::PRAGMA, "no-cache"),
        ],
        Json(json!({
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": lifetime.as_secs(),
        })),
    )
        .into_response()
}

fn form_decode(s: &str) -> String {
    form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// How an API request authenticated.
pub(crate) enum Caller {
    /// A valid Bearer token.
    Bearer,
    /// No Bearer token: the signature must be checked.
    Signed,
}

/// Checks the request's `Authorization`: a valid Bearer token, or none
/// (then it must be signed, unless the sandbox is OAuth-only).
pub(crate) fn check_bearer(shared: &Shared, headers: &HeaderMap) -> Result<Caller, Box<Response>> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let token = authorization.and_then(|v| {
        let (scheme, token) = v.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    });
    let mut state = shared.oauth.lock().unwrap();
    let Some(token) = token else {
        if shared.config.oauth_only {
            state.oauth_required_answers += 1;
            return Err(Box::new(api_401(
                "oauth_required",
                "this site authenticates with OAuth 2.0 only: send Authorization: Bearer",
                "Bearer realm=\"paynearme-sandbox\"",
            )));
        }
        state.hmac_requests += 1;
        return Ok(Caller::Signed);
    };
    match state.tokens.get(token).copied() {
        Some(expires) if Instant::now() < expires => {
            state.bearer_requests += 1;
            Ok(Caller::Bearer)
        }
        Some(_) => {
            state.expired_token_answers += 1;
            Err(Box::new(api_401(
                "invalid_token",
                "the access token expired",
                "Bearer error=\"invalid_token\", error_description=\"The access token expired\"",
            )))
        }
        None => {
            state.unknown_token_answers += 1;
            Err(Box::new(api_401(
                "invalid_token",
                "unknown access token",
                "Bearer error=\"invalid_token\"",
            )))
        }
    }
}

fn api_401(code: &str, description: &str, challenge: &'static str) -> Response {
    let mut response = (
        StatusCode::UNAUTHORIZED,
        Json(json!({"status":"error","errors":[{"code":code,"description":description}]})),
    )
        .into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static(challenge),
    );
    response
}
