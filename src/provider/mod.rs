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
    #[error("rate limited by the provider calling {endpoint} (retry after {retry_after:?})")]
    RateLimited {
        endpoint: &'static str,
        retry_after: Option<Duration>,
    },
    /// The provider answered with an error.
    #[error("{endpoint} answered HTTP {status} {code}: {description}")]
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
}

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
    /// The error with each of `values` (3 characters or more), as sent or as
    /// JSON would escape it, replaced by `[redacted]` in the provider's own
    /// words (description, body snippet): a provider that echoes what it was
    /// sent must not carry a customer's personal data into the state
    /// database, the logs or an export.
    pub fn redact(mut self, values: &[&str]) -> Self {
        if let ProviderError::Api {
            description: text, ..
        }
        | ProviderError::UnexpectedBody { snippet: text, .. } = &mut self
        {
            for value in values.iter().filter(|v| v.chars().count() >= 3) {
                let escaped = serde_json::to_string(value).unwrap_or_default();
                let escaped = escaped.trim_matches('"');
                for form in [*value, escaped] {
                    if text.contains(form) {
                        *text = text.replace(form, "[redacted]");
                    }
                }
            }
        }
        self
    }
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

/// The `Retry-After` of a 429, in seconds (fractions accepted).
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
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
}
