//! Provider clients and the error type they share with the pipeline.

pub mod commerce_engine;
pub mod paynearme;

use std::time::Duration;

/// How a request failed, as far as the pipeline needs to know.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// The request did not get an answer.
    #[error("{kind} calling {endpoint}: {detail}")]
    Transport {
        endpoint: &'static str,
        kind: TransportKind,
        detail: String,
    },
    /// HTTP 429: the provider asks us to slow down.
    #[error("rate limited by the provider calling {endpoint} ({})", wait_for(*.retry_after))]
    RateLimited {
        endpoint: &'static str,
        retry_after: Option<Duration>,
    },
    /// The provider answered with an error.
    #[error("{endpoint} answered HTTP {status} {code}{}", described(.description))]
    Api {
        endpoint: &'static str,
        status: u16,
        code: String,
        description: String,
    },
    /// The provider answered something we cannot read.
    #[error("{endpoint} answered HTTP {status} with an unreadable body: {snippet}")]
    UnexpectedBody {
        endpoint: &'static str,
        status: u16,
        snippet: String,
    },
    /// The provider answered with a redirect, which is never followed: the
    /// request would be re-sent, signed body and all, somewhere else.
    #[error("{endpoint} answered HTTP {status} redirecting to `{location}`; redirects are not followed. Check {}", setting(endpoint))]
    Redirected {
        endpoint: &'static str,
        status: u16,
        location: String,
    },
    /// The answer was longer than [`MAX_ANSWER_BYTES`] (a broken proxy?).
    #[error("{endpoint} answered HTTP {status} with more than {MAX_ANSWER_BYTES} bytes; the answer was not read")]
    TooLarge { endpoint: &'static str, status: u16 },
    /// No OAuth access token could be had, so the request was not sent.
    #[error("no OAuth access token: {0}")]
    Token(Box<ProviderError>),
    /// The run is stopping: the request was not sent.
    #[error("not sent: the run is stopping")]
    Cancelled,
}

/// `: description`, or nothing when the provider gave none.
fn described(description: &str) -> String {
    if description.trim().is_empty() {
        String::new()
    } else {
        format!(": {description}")
    }
}

/// What a 429 asked for.
fn wait_for(retry_after: Option<Duration>) -> String {
    match retry_after {
        Some(wait) => format!("retry after {wait:?}"),
        None => "no Retry-After given".to_string(),
    }
}

/// The setting that says where `endpoint`'s requests go.
fn setting(endpoint: &str) -> &'static str {
    if endpoint == paynearme::oauth::TOKEN_ENDPOINT {
        "PNM_TOKEN_URL"
    } else {
        "the base URL"
    }
}

/// The most bytes read of one answer; a longer one fails the attempt as
/// `answer_too_large` without being held in memory.
pub const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// The longest `Retry-After` waited out; a longer one is taken as a
/// transient failure and retried with backoff instead.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(15 * 60);

/// Why a request got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// Could not connect: the request was certainly not sent.
    Connect,
    /// No answer in time: the request may have been processed.
    Timeout,
    /// The connection closed without an answer: the request may have been processed.
    Closed,
}

impl std::fmt::Display for TransportKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TransportKind::Connect => "connection failed",
            TransportKind::Timeout => "timed out",
            TransportKind::Closed => "connection closed without an answer",
        })
    }
}

/// What the pipeline does with an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Try again after a backoff. `maybe_applied` says the provider may have
    /// acted on the request, so a create must be reconciled before it is resent.
    Transient { maybe_applied: bool },
    /// Wait as the provider says, then try again; does not use up attempts.
    RateLimited(Option<Duration>),
    /// This row cannot succeed as it is.
    Permanent,
    /// Credentials or clock are wrong: no request can succeed; stop the run.
    Auth,
}

/// Provider error codes that mean the credentials or the clock are wrong.
pub const AUTH_CODES: &[&str] = &["invalid_signature", "unknown_site", "stale_timestamp"];

impl ProviderError {
    /// Sorts the error into what the pipeline should do next.
    pub fn class(&self) -> ErrorClass {
        match self {
            ProviderError::Transport { kind, .. } => ErrorClass::Transient {
                maybe_applied: *kind != TransportKind::Connect,
            },
            ProviderError::RateLimited {
                retry_after: Some(wait),
                ..
            } if *wait > MAX_RETRY_AFTER => ErrorClass::Transient {
                maybe_applied: false,
            },
            ProviderError::RateLimited { retry_after, .. } => ErrorClass::RateLimited(*retry_after),
            ProviderError::Api { status, code, .. } => {
                if AUTH_CODES.contains(&code.as_str()) || *status == 401 {
                    ErrorClass::Auth
                } else if *status >= 500 || code == "customer_busy" {
                    ErrorClass::Transient {
                        maybe_applied: *status >= 500,
                    }
                } else {
                    ErrorClass::Permanent
                }
            }
            ProviderError::UnexpectedBody { status, .. } => {
                if *status >= 500 {
                    ErrorClass::Transient {
                        maybe_applied: true,
                    }
                } else {
                    ErrorClass::Permanent
                }
            }
            ProviderError::Redirected { .. } => ErrorClass::Permanent,
            ProviderError::TooLarge { .. } => ErrorClass::Transient {
                maybe_applied: true,
            },
            // The request itself never left: retrying it cannot duplicate
            // anything; a token refused for good means none can succeed.
            ProviderError::Token(inner) => match inner.class() {
                ErrorClass::Transient { .. } => ErrorClass::Transient {
                    maybe_applied: false,
                },
                ErrorClass::RateLimited(wait) => ErrorClass::RateLimited(wait),
                ErrorClass::Permanent | ErrorClass::Auth => ErrorClass::Auth,
            },
            ProviderError::Cancelled => ErrorClass::Transient {
                maybe_applied: false,
            },
        }
    }

    /// What to tell the user when this error stops the run ([`ErrorClass::Auth`]).
    pub fn auth_hint(&self) -> &'static str {
        match self {
            ProviderError::Token(inner) => match inner.as_ref() {
                ProviderError::Redirected { .. } => {
                    "The OAuth token endpoint redirected the token request: check that \
                     PNM_TOKEN_URL is the token endpoint's exact URL"
                }
                // It said yes, but its answer is no token: the endpoint (or
                // whatever answers at PNM_TOKEN_URL) misbehaves; the
                // credentials were not refused.
                ProviderError::UnexpectedBody { status, .. } if (200..300).contains(status) => {
                    "The OAuth token endpoint answered success without a usable token (see \
                     above what was wrong with its answer): check that PNM_TOKEN_URL is \
                     PayNearMe's token endpoint, or ask PayNearMe about its answer"
                }
                _ => {
                    "The OAuth token endpoint refused to give a token: check PNM_CLIENT_ID and \
                     PNM_CLIENT_SECRET (or PNM_CLIENT_SECRET_FILE), PNM_TOKEN_URL, \
                     PNM_TOKEN_SCOPE and token_client_auth (basic or post)"
                }
            },
            ProviderError::Api { code, .. } if code == "oauth_required" => {
                "This site accepts OAuth 2.0 only: set PNM_CLIENT_ID, PNM_CLIENT_SECRET (or \
                 PNM_CLIENT_SECRET_FILE) and PNM_TOKEN_URL, or pass --auth oauth"
            }
            ProviderError::Api { code, .. } if code == "invalid_token" => {
                "PayNearMe refused a freshly issued OAuth access token: check that OAuth is \
                 enabled for PNM_SITE_IDENTIFIER and that PNM_CLIENT_ID belongs to that site"
            }
            _ => {
                "The provider rejected our credentials or clock: check PNM_SITE_IDENTIFIER, \
                 the secret key and PNM_BASE_URL, and that this machine's clock is right"
            }
        }
    }

    /// A short machine-readable code recorded in the state database.
    pub fn code(&self) -> String {
        match self {
            ProviderError::Transport { kind, .. } => match kind {
                TransportKind::Connect => "connect_failed",
                TransportKind::Timeout => "timeout",
                TransportKind::Closed => "connection_closed",
            }
            .to_string(),
            ProviderError::RateLimited { .. } => "rate_limited".to_string(),
            ProviderError::Api { code, .. } => code.clone(),
            ProviderError::UnexpectedBody { .. } => "unexpected_body".to_string(),
            ProviderError::Redirected { .. } => "redirected".to_string(),
            ProviderError::TooLarge { .. } => "answer_too_large".to_string(),
            ProviderError::Token(inner) => format!("oauth_{}", inner.code()),
            ProviderError::Cancelled => "cancelled".to_string(),
        }
    }

    /// The endpoint the error is about (`oauth_token` for token failures).
    pub fn endpoint(&self) -> &'static str {
        match self {
            ProviderError::Transport { endpoint, .. }
            | ProviderError::RateLimited { endpoint, .. }
            | ProviderError::Api { endpoint, .. }
            | ProviderError::UnexpectedBody { endpoint, .. }
            | ProviderError::Redirected { endpoint, .. }
            | ProviderError::TooLarge { endpoint, .. } => endpoint,
            ProviderError::Token(inner) => inner.endpoint(),
            ProviderError::Cancelled => "none",
        }
    }
}

/// A transport error from reqwest, sorted by whether the request may have
/// been sent. reqwest's message names the URL, never the body.
pub(crate) fn transport_error(endpoint: &'static str, e: &reqwest::Error) -> ProviderError {
    let kind = if e.is_connect() {
        TransportKind::Connect
    } else if e.is_timeout() {
        TransportKind::Timeout
    } else {
        TransportKind::Closed
    };
    let mut detail = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        source = s.source();
    }
    ProviderError::Transport {
        endpoint,
        kind,
        detail,
    }
}

impl ProviderError {
    /// The error with each of `values` (3 characters or more) replaced by
    /// `[redacted]` in the provider's own words (description, body snippet,
    /// redirect target) and in transport details, in whatever encoding it
    /// takes there ([`redact_text`]): a provider that echoes what it was
    /// sent must not carry a customer's personal data or a secret into the
    /// state database, the logs, a report or an export.
    pub fn redact(mut self, values: &[&str]) -> Self {
        let forms: Vec<String> = values
            .iter()
            .filter(|v| v.chars().count() >= 3)
            .flat_map(|v| forms_of(v))
            .collect();
        let scrub = |text: &mut String| {
            for form in &forms {
                if let Some(redacted) = redact_text(text, form) {
                    *text = redacted;
                }
            }
        };
        match &mut self {
            ProviderError::Api {
                description, code, ..
            } => {
                scrub(description);
                scrub(code);
            }
            ProviderError::UnexpectedBody { snippet: text, .. }
            | ProviderError::Redirected { location: text, .. }
            | ProviderError::Transport { detail: text, .. } => scrub(text),
            ProviderError::Token(inner) => {
                let redacted = std::mem::replace(inner.as_mut(), ProviderError::Cancelled);
                **inner = redacted.redact(values);
            }
            _ => {}
        }
        self
    }
}

/// The forms a provider may echo `value` in besides its encodings: as it
/// is, lower- and upper-cased, HTML-escaped, and a phone number's digits
/// alone.
fn forms_of(value: &str) -> Vec<String> {
    let mut forms = vec![
        value.to_string(),
        value.to_lowercase(),
        value.to_uppercase(),
        value
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
            .replace('\'', "&#39;"),
    ];
    let digits: String = value.chars().filter(char::is_ascii_digit).collect();
    if digits.len() >= 7 && digits.len() < value.len() {
        forms.push(digits);
    }
    forms.sort();
    forms.dedup();
    forms
}

/// `text` with every occurrence of `value` replaced by `[redacted]`, or
/// `None` when there is none. An occurrence may take any encoding a
/// request or an answer gives it, character by character and mixed: raw;
/// percent-encoded (either case of hex, `+` or `%20` for a space, some
/// characters left as they are); JSON-escaped (`\"`, `\\`, `\/`, `\n`,
/// `\u00fc` in either case, surrogate pairs). An occurrence cut off by the
/// end of the text (a truncated snippet) is redacted from where it starts
/// once 4 of its characters are there.
pub fn redact_text(text: &str, value: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let chars: Vec<char> = value.chars().collect();
    if chars.is_empty() {
        return None;
    }
    let mut out: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut found = false;
    let mut i = 0;
    while i < bytes.len() {
        match occurrence(bytes, i, &chars) {
            Some(end) => {
                out.extend_from_slice(b"[redacted]");
                found = true;
                i = end;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    found.then(|| String::from_utf8_lossy(&out).into_owned())
}

/// Where an occurrence of `value` that starts at `start` ends (the longest
/// one), following every encoding of each character at once.
fn occurrence(text: &[u8], start: usize, value: &[char]) -> Option<usize> {
    let mut at = vec![start];
    for (done, &c) in value.iter().enumerate() {
        let mut next = Vec::new();
        for &p in &at {
            if p == text.len() {
                // Cut off by the end of the text.
                return (done >= 4.min(value.len())).then_some(p);
            }
            for end in encodings_at(text, p, c) {
                if !next.contains(&end) {
                    next.push(end);
                }
            }
        }
        if next.is_empty() {
            // Cut off in the middle of an escape (`%2`, `\\u00`)?
            let cut = at.iter().any(|&p| {
                let rest = &text[p..];
                rest.len() < 6 && matches!(rest.first(), Some(b'%' | b'\\'))
            });
            return (cut && done >= 4.min(value.len())).then_some(text.len());
        }
        at = next;
    }
    at.into_iter().max()
}

/// Where each encoding of `c` found at `at` ends.
fn encodings_at(text: &[u8], at: usize, c: char) -> Vec<usize> {
    let rest = &text[at..];
    let mut ends = Vec::new();
    let mut utf8 = [0u8; 4];
    let raw = c.encode_utf8(&mut utf8).as_bytes();
    if rest.starts_with(raw) {
        ends.push(at + raw.len());
    }
    // Percent-encoded bytes, each `%XX` in either case (or the byte itself).
    let mut p = at;
    let mut percent = true;
    for &b in raw {
        if text.get(p) == Some(&b'%')
            && text
                .get(p + 1..p + 3)
                .is_some_and(|hex| hex.eq_ignore_ascii_case(format!("{b:02X}").as_bytes()))
        {
            p += 3;
        } else if text.get(p) == Some(&b) {
            p += 1;
        } else {
            percent = false;
            break;
        }
    }
    if percent && p != at + raw.len() {
        ends.push(p);
    }
    let escape: &[u8] = match c {
        ' ' => b"+",
        '"' => b"\\\"",
        '\\' => b"\\\\",
        '/' => b"\\/",
        '\n' => b"\\n",
        '\r' => b"\\r",
        '\t' => b"\\t",
        '\u{8}' => b"\\b",
        '\u{c}' => b"\\f",
        _ => b"",
    };
    if !escape.is_empty() && rest.starts_with(escape) {
        ends.push(at + escape.len());
    }
    // `\uXXXX` (two of them for a surrogate pair), hex in either case.
    let mut units = [0u16; 2];
    let mut p = at;
    let mut unicode = true;
    for unit in c.encode_utf16(&mut units).iter() {
        if text.get(p..p + 2) == Some(&b"\\u"[..])
            && text
                .get(p + 2..p + 6)
                .is_some_and(|hex| hex.eq_ignore_ascii_case(format!("{unit:04X}").as_bytes()))
        {
            p += 6;
        } else {
            unicode = false;
            break;
        }
    }
    if unicode {
        ends.push(p);
    }
    ends
}

/// An answer that is not a JSON object: a transient server error for a 5xx
/// (proxies answer HTML), an unreadable body otherwise.
pub(crate) fn unreadable(endpoint: &'static str, status: u16, bytes: &[u8]) -> ProviderError {
    let snippet = snippet(bytes);
    if status >= 500 {
        ProviderError::Api {
            endpoint,
            status,
            code: format!("http_{status}"),
            description: snippet,
        }
    } else {
        ProviderError::UnexpectedBody {
            endpoint,
            status,
            snippet,
        }
    }
}

/// An answer body that must be a JSON object (else [`unreadable`]).
pub(crate) fn json_object(
    endpoint: &'static str,
    status: u16,
    bytes: &[u8],
) -> Result<serde_json::Map<String, serde_json::Value>, ProviderError> {
    match serde_json::from_slice(bytes) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        _ => Err(unreadable(endpoint, status, bytes)),
    }
}

/// The start of an answer body, for an error message.
pub(crate) fn snippet(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).chars().take(200).collect()
}

/// The `Retry-After` of a 429 ([`parse_retry_after`]).
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()))
}

/// A `Retry-After` value: seconds (fractions accepted) or an HTTP date,
/// as of `now`. Negative or past values are zero; values beyond a day are
/// a day (callers treat anything over [`MAX_RETRY_AFTER`] as too long).
/// Garbage is `None`. Never panics.
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    const DAY: f64 = 86_400.0;
    let value = value.trim();
    if let Ok(seconds) = value.parse::<f64>() {
        if seconds.is_nan() {
            return None;
        }
        return Some(Duration::from_secs_f64(seconds.clamp(0.0, DAY)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    let wait = at.duration_since(now).unwrap_or_default();
    Some(wait.min(Duration::from_secs_f64(DAY)))
}

/// The HTTP client both providers use: no redirects (a redirect would
/// re-send a signed body, customer data included, to another place) and
/// the given per-request timeout.
pub(crate) fn http_client(timeout: Duration) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .pool_max_idle_per_host(64)
        .user_agent(concat!("orderbatch/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Sends `request` and reads its answer: a redirect or a 429 becomes its
/// error; the body is read up to [`MAX_ANSWER_BYTES`].
pub(crate) async fn exchange(
    endpoint: &'static str,
    request: reqwest::RequestBuilder,
) -> Result<(u16, bytes::Bytes), ProviderError> {
    let response = request
        .send()
        .await
        .map_err(|e| transport_error(endpoint, &e))?;
    let status = response.status().as_u16();
    if (300..400).contains(&status) {
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .chars()
                    .take(200)
                    .collect()
            })
            .unwrap_or_else(|| "(no Location)".to_string());
        return Err(ProviderError::Redirected {
            endpoint,
            status,
            location,
        });
    }
    if status == 429 {
        return Err(ProviderError::RateLimited {
            endpoint,
            retry_after: retry_after(response.headers()),
        });
    }
    let bytes = read_body(endpoint, response).await?;
    Ok((status, bytes))
}

/// Reads an answer's body, refusing one longer than [`MAX_ANSWER_BYTES`]
/// without holding more than that.
async fn read_body(
    endpoint: &'static str,
    mut response: reqwest::Response,
) -> Result<bytes::Bytes, ProviderError> {
    let status = response.status().as_u16();
    let too_large = ProviderError::TooLarge { endpoint, status };
    if response
        .content_length()
        .is_some_and(|n| n > MAX_ANSWER_BYTES as u64)
    {
        return Err(too_large);
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| transport_error(endpoint, &e))?
    {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(too_large);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: &str) -> ProviderError {
        ProviderError::Api {
            endpoint: "create_order",
            status,
            code: code.into(),
            description: String::new(),
        }
    }

    /// What a run stopped by `error` says (as `RunContext::request` puts it).
    fn stop_message(error: &ProviderError) -> String {
        format!("{error}. {}", error.auth_hint())
    }

    #[test]
    fn token_endpoint_errors_say_what_was_wrong() {
        let token = paynearme::oauth::TOKEN_ENDPOINT;
        // A code without a description: just the code.
        let bare = ProviderError::Token(Box::new(ProviderError::Api {
            endpoint: token,
            status: 400,
            code: "unsupported_grant_type".into(),
            description: String::new(),
        }));
        let message = stop_message(&bare);
        assert!(
            message.starts_with(
                "no OAuth access token: oauth_token answered HTTP 400 unsupported_grant_type. The"
            ),
            "{message}"
        );
        let described = ProviderError::Api {
            endpoint: token,
            status: 401,
            code: "invalid_client".into(),
            description: "unknown client".into(),
        };
        assert!(described
            .to_string()
            .ends_with("401 invalid_client: unknown client"));

        // A wait, not an Option.
        let limited = ProviderError::Token(Box::new(ProviderError::RateLimited {
            endpoint: token,
            retry_after: Some(Duration::from_secs(1)),
        }));
        assert!(
            limited.to_string().contains("(retry after 1s)"),
            "{limited}"
        );
        let unsaid = ProviderError::RateLimited {
            endpoint: token,
            retry_after: None,
        };
        assert!(!unsaid.to_string().contains("None"), "{unsaid}");

        // A 200 without a usable token is the endpoint misbehaving, not the
        // credentials refused; the message says what was wrong.
        for what in [
            "expires_in is not a positive number of seconds",
            "<html>maintenance</html>",
        ] {
            let odd = ProviderError::Token(Box::new(ProviderError::UnexpectedBody {
                endpoint: token,
                status: 200,
                snippet: what.into(),
            }));
            let message = stop_message(&odd);
            assert!(message.contains(what), "{message}");
            assert!(!message.contains("refused"), "{message}");
            assert!(!message.contains("PNM_CLIENT_ID"), "{message}");
            assert!(message.contains("PNM_TOKEN_URL"), "{message}");
        }
        // A refusal still points at the credentials.
        let refused = ProviderError::Token(Box::new(ProviderError::Api {
            endpoint: token,
            status: 401,
            code: "invalid_client".into(),
            description: String::new(),
        }));
        assert!(stop_message(&refused).contains("PNM_CLIENT_ID"));

        // A redirect from the token endpoint names PNM_TOKEN_URL.
        let redirected = ProviderError::Token(Box::new(ProviderError::Redirected {
            endpoint: token,
            status: 302,
            location: "https://login.example/".into(),
        }));
        let message = stop_message(&redirected);
        assert!(message.contains("PNM_TOKEN_URL"), "{message}");
        assert!(!message.contains("base URL"), "{message}");
        assert!(!message.contains("PNM_CLIENT_ID"), "{message}");
        let elsewhere = ProviderError::Redirected {
            endpoint: "create_order",
            status: 302,
            location: "https://x/".into(),
        };
        assert!(elsewhere.to_string().contains("Check the base URL"));
    }

    /// Every encoding a secret can take in an answer.
    fn encodings(secret: &str) -> Vec<String> {
        let form: String = form_urlencoded::byte_serialize(secret.as_bytes()).collect();
        let percent = |lower: bool| -> String {
            secret
                .bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                        (b as char).to_string()
                    }
                    _ if lower => format!("%{b:02x}"),
                    _ => format!("%{b:02X}"),
                })
                .collect()
        };
        let json = serde_json::to_string(secret).unwrap();
        let ascii_json = |lower: bool| -> String {
            secret
                .encode_utf16()
                .map(|u| match u {
                    0x22 => "\\\"".to_string(),
                    0x2f => "\\/".to_string(),
                    0x20..=0x7e => char::from(u as u8).to_string(),
                    _ if lower => format!("\\u{u:04x}"),
                    _ => format!("\\u{u:04X}"),
                })
                .collect()
        };
        // Python's quote(): `/` left as it is.
        let python = percent(false).replace("%2F", "/");
        vec![
            secret.to_string(),
            form,
            percent(false),
            percent(true),
            json.trim_matches('"').to_string(),
            ascii_json(true),
            ascii_json(false),
            python,
        ]
    }

    #[test]
    fn a_secret_is_redacted_in_every_encoding() {
        let secret = "s3:cr et/\"100%\" ü秘😀";
        for (i, form) in encodings(secret).iter().enumerate() {
            let text = format!("echo [{form}] and again {form}!");
            let redacted = redact_text(&text, secret).unwrap_or_else(|| panic!("{i}: {form}"));
            assert_eq!(
                redacted, "echo [[redacted]] and again [redacted]!",
                "{i}: {form}"
            );
        }
        // Cut off by a snippet's end.
        let cut = format!("client_secret={}", &encodings(secret)[1][..12]);
        assert_eq!(
            redact_text(&cut, secret).as_deref(),
            Some("client_secret=[redacted]")
        );
        // Other text is left alone.
        assert_eq!(redact_text("s3:c is not it", secret), None);
        // Through the error's every field that carries the provider's words.
        let error = ProviderError::Token(Box::new(ProviderError::Redirected {
            endpoint: "oauth_token",
            status: 302,
            location: format!("https://x/?s={}", encodings(secret)[1]),
        }))
        .redact(&[secret]);
        assert!(error.to_string().contains("?s=[redacted]"), "{error}");
    }

    #[test]
    fn redact_finds_values_case_folded_html_escaped_as_digits_and_in_the_code() {
        let echoed = ProviderError::Api {
            endpoint: "create_order",
            status: 400,
            code: "invalid_email:jo.pii@example.com".into(),
            description: "JO.PII@EXAMPLE.COM, 15550101014, Zed&lt;b&gt; Pii, zed<b> pii".into(),
        }
        .redact(&["Jo.Pii@Example.com", "+1 555 010 1014", "Zed<b> Pii"]);
        let text = echoed.to_string();
        for leaked in ["pii", "PII", "5550101014", "Zed", "zed"] {
            assert!(!text.contains(leaked), "{leaked} in {text}");
        }
        assert!(text.contains("invalid_email:[redacted]"), "{text}");
    }

    #[test]
    fn redact_removes_sent_values_from_the_providers_words_only() {
        let echoed = ProviderError::Api {
            endpoint: "create_order",
            status: 400,
            code: "invalid_parameter".into(),
            description:
                "site_customer_email jo@example.com and name \\\"Zoë\\\" O\\\"Neil rejected".into(),
        }
        .redact(&["jo@example.com", "\"Zoë\" O\"Neil", "ab"]);
        assert_eq!(
            echoed.to_string(),
            ProviderError::Api {
                endpoint: "create_order",
                status: 400,
                code: "invalid_parameter".into(),
                description: "site_customer_email [redacted] and name [redacted] rejected".into(),
            }
            .to_string()
        );
        let body = unreadable("create_order", 200, b"<p>Hello Jo Smith</p>").redact(&["Jo Smith"]);
        assert!(body.to_string().contains("Hello [redacted]"), "{body}");
        assert!(!body.to_string().contains("Smith"), "{body}");
    }

    #[test]
    fn classifies_errors() {
        let transport = |kind| ProviderError::Transport {
            endpoint: "create_order",
            kind,
            detail: String::new(),
        };
        assert_eq!(
            transport(TransportKind::Connect).class(),
            ErrorClass::Transient {
                maybe_applied: false
            }
        );
        assert_eq!(
            transport(TransportKind::Timeout).class(),
            ErrorClass::Transient {
                maybe_applied: true
            }
        );
        assert_eq!(
            api(503, "http_503").class(),
            ErrorClass::Transient {
                maybe_applied: true
            }
        );
        assert_eq!(
            api(409, "customer_busy").class(),
            ErrorClass::Transient {
                maybe_applied: false
            }
        );
        assert_eq!(api(400, "invalid_parameter").class(), ErrorClass::Permanent);
        assert_eq!(api(404, "order_not_found").class(), ErrorClass::Permanent);
        for code in AUTH_CODES {
            assert_eq!(api(401, code).class(), ErrorClass::Auth);
        }
        let limited = ProviderError::RateLimited {
            endpoint: "create_order",
            retry_after: Some(Duration::from_secs(2)),
        };
        assert_eq!(
            limited.class(),
            ErrorClass::RateLimited(Some(Duration::from_secs(2)))
        );
    }

    #[test]
    fn retry_after_reads_seconds_and_dates_and_bounds_them() {
        let now = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let parse = |v| parse_retry_after(v, now);
        assert_eq!(parse("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse(" 0.25 "), Some(Duration::from_millis(250)));
        assert_eq!(parse("-1"), Some(Duration::ZERO));
        assert_eq!(parse("1e20"), Some(Duration::from_secs(86_400)));
        assert_eq!(parse("1e10"), Some(Duration::from_secs(86_400)));
        assert_eq!(parse("inf"), Some(Duration::from_secs(86_400)));
        assert_eq!(parse("NaN"), None);
        assert_eq!(parse("soon"), None);
        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(parse(&later), Some(Duration::from_secs(90)));
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(parse(&earlier), Some(Duration::ZERO));
        // Beyond the maximum: retried with backoff, not waited out.
        let long = ProviderError::RateLimited {
            endpoint: "create_order",
            retry_after: parse("1e10"),
        };
        assert_eq!(
            long.class(),
            ErrorClass::Transient {
                maybe_applied: false
            }
        );
    }

    proptest::proptest! {
        #[test]
        fn retry_after_never_panics(value in ".{0,40}", secs in 0u64..4_000_000_000) {
            let now = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
            if let Some(wait) = parse_retry_after(&value, now) {
                proptest::prop_assert!(wait <= Duration::from_secs(86_400));
            }
        }

        #[test]
        fn numeric_retry_after_never_panics(n in proptest::num::f64::ANY) {
            let now = std::time::SystemTime::now();
            let _ = parse_retry_after(&n.to_string(), now);
            let _ = parse_retry_after(&format!("{n:e}"), now);
        }
    }

    #[test]
    fn token_failures_never_count_as_maybe_applied() {
        let inner = ProviderError::Transport {
            endpoint: "oauth_token",
            kind: TransportKind::Timeout,
            detail: String::new(),
        };
        let token = ProviderError::Token(Box::new(inner));
        assert_eq!(
            token.class(),
            ErrorClass::Transient {
                maybe_applied: false
            }
        );
        assert_eq!(token.code(), "oauth_timeout");
        for code in [
            "invalid_client",
            "unauthorized_client",
            "invalid_grant",
            "invalid_scope",
        ] {
            for status in [400, 401] {
                let refused = ProviderError::Token(Box::new(api(status, code)));
                assert_eq!(refused.class(), ErrorClass::Auth, "{status} {code}");
                assert!(refused.auth_hint().contains("PNM_CLIENT_ID"));
            }
        }
        let busy = ProviderError::Token(Box::new(api(503, "http_503")));
        assert!(matches!(busy.class(), ErrorClass::Transient { .. }));
        let limited = ProviderError::Token(Box::new(ProviderError::RateLimited {
            endpoint: "oauth_token",
            retry_after: Some(Duration::from_secs(3)),
        }));
        assert_eq!(
            limited.class(),
            ErrorClass::RateLimited(Some(Duration::from_secs(3)))
        );
    }
}
