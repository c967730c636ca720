//! Commerce Engine storefront API: payment status and retry-payment, with
//! anonymous or token authentication refreshed once on a 401.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Map, Value};
use tokio::sync::Mutex;

use crate::provider::{exchange, http_client, json_object, ProviderError};

/// Counter names of the endpoints.
pub const PAYMENT_STATUS: &str = "payment-status";
pub const PAYMENTS: &str = "payments";
pub const RETRY_PAYMENT: &str = "retry-payment";
pub const AUTH: &str = "auth";

/// How the client authenticates.
#[derive(Debug, Clone)]
pub enum CeAuth {
    /// `POST /auth/anonymous` with `X-Api-Key`.
    ApiKey(SecretString),
    /// Tokens given up front; the refresh token (if any) renews them.
    Tokens {
        access: SecretString,
        refresh: Option<SecretString>,
    },
}

/// Where the store is and who we are to it.
#[derive(Debug, Clone)]
pub struct CeCredentials {
    /// e.g. `https://staging.api.commercengine.io` (paths are added).
    pub base_url: String,
    pub store_id: String,
    pub auth: CeAuth,
}

/// `GET /orders/{n}/payment-status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentStatus {
    /// `pending`, `success`, `failed` or `partially_paid`.
    pub status: String,
    /// `None` when the answer does not say: never read as "no".
    pub is_retry_available: Option<bool>,
}

/// Whether a retry-payment sent at (or after) an intent landed, as the
/// order's payment attempts tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Landed {
    /// A payment attempt at or after the intent: the retry went through.
    Yes,
    /// Every attempt is clearly older than the intent: it never landed.
    No,
    /// The answer cannot tell (no list, unreadable dates, or an attempt too
    /// close to the intent to call, given clocks that may differ).
    Unknown(String),
}

/// How far apart our clock and the provider's may be taken to be.
pub const CLOCK_MARGIN_SECS: i64 = 30;

/// Decides [`Landed`] from a `GET .../payments` answer's content, for an
/// intent recorded at `intent_at` (unix seconds, our clock).
pub fn retry_landed(content: &Map<String, Value>, intent_at: i64) -> Landed {
    let Some(payments) = content.get("payments").and_then(Value::as_array) else {
        return Landed::Unknown("the payments answer holds no list of payments".into());
    };
    let mut close = false;
    for payment in payments {
        if payment
            .get("transaction_type")
            .and_then(Value::as_str)
            .is_some_and(|t| t != "payment")
        {
            continue;
        }
        let Some(at) = payment
            .get("payment_date")
            .and_then(Value::as_str)
            .and_then(|d| chrono::DateTime::parse_from_rfc3339(d).ok())
            .map(|d| d.timestamp())
        else {
            return Landed::Unknown("a payment attempt has no readable payment_date".into());
        };
        if at >= intent_at {
            return Landed::Yes;
        }
        close |= at >= intent_at - CLOCK_MARGIN_SECS;
    }
    if close {
        Landed::Unknown(format!(
            "a payment attempt is less than {CLOCK_MARGIN_SECS} s older than the retry this run \
             may have sent; check the order's payments in the store's admin"
        ))
    } else {
        Landed::No
    }
}

/// The new payment a retry made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PaymentInfo {
    pub id: Option<String>,
    pub status: Option<String>,
    pub link: Option<String>,
    pub link_expiry: Option<String>,
}

/// What the `payment_method` of a retry says (sent only with a provider slug).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PaymentMethod {
    pub payment_provider_slug: Option<String>,
    pub integration_type: Option<String>,
    pub return_url: Option<String>,
    pub action: Option<String>,
    pub gateway_reference_id: Option<String>,
}

impl PaymentMethod {
    /// The request body: `{"payment_method": {...}}` when a slug is known.
    pub fn body(&self) -> Value {
        let Some(slug) = &self.payment_provider_slug else {
            return json!({});
        };
        let mut method = Map::new();
        method.insert("payment_provider_slug".into(), slug.clone().into());
        for (k, v) in [
            ("integration_type", &self.integration_type),
            ("return_url", &self.return_url),
            ("gateway_reference_id", &self.gateway_reference_id),
        ] {
            if let Some(v) = v {
                method.insert(k.into(), v.clone().into());
            }
        }
        method.insert(
            "action".into(),
            self.action
                .clone()
                .unwrap_or_else(|| "paymentPage".into())
                .into(),
        );
        json!({ "payment_method": method })
    }
}

struct Tokens {
    access: SecretString,
    refresh: Option<SecretString>,
}

/// A Commerce Engine client; cheap to share behind an `Arc`.
pub struct CeClient {
    http: reqwest::Client,
    prefix: String,
    auth: CeAuth,
    tokens: Mutex<Option<Tokens>>,
}

impl std::fmt::Debug for CeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CeClient")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Reads the `{message, success, content, code}` envelope.
fn envelope(
    endpoint: &'static str,
    status: u16,
    bytes: &[u8],
) -> Result<Map<String, Value>, ProviderError> {
    let body = json_object(endpoint, status, bytes)?;
    let success = body
        .get("success")
        .and_then(Value::as_bool)
        .unwrap_or(status < 300);
    if success && status < 300 {
        return Ok(body
            .get("content")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default());
    }
    let text = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
    Err(ProviderError::Api {
        endpoint,
        status,
        code: text("code").unwrap_or_else(|| format!("http_{status}")),
        description: text("message").unwrap_or_default(),
    })
}

impl CeClient {
    /// Builds a client with the given per-request timeout.
    pub fn new(credentials: CeCredentials, timeout: Duration) -> Result<Self, reqwest::Error> {
        let http = http_client(timeout)?;
        let tokens = match &credentials.auth {
            CeAuth::Tokens { access, refresh } => Some(Tokens {
                access: access.clone(),
                refresh: refresh.clone(),
            }),
            CeAuth::ApiKey(_) => None,
        };
        Ok(CeClient {
            http,
            prefix: format!(
                "{}/api/v1/{}/storefront",
                credentials.base_url.trim_end_matches('/'),
                credentials.store_id
            ),
            auth: credentials.auth,
            tokens: Mutex::new(tokens),
        })
    }

    async fn post_json(
        &self,
        endpoint: &'static str,
        path: &str,
        body: &Value,
        bearer: Option<&SecretString>,
    ) -> Result<(u16, Vec<u8>), ProviderError> {
        let mut request = self.http.post(format!("{}{path}", self.prefix)).json(body);
        if let Some(token) = bearer {
            request = request.bearer_auth(token.expose_secret());
        }
        if let (None, CeAuth::ApiKey(key)) = (bearer, &self.auth) {
            request = request.header("X-Api-Key", key.expose_secret());
        }
        let (status, bytes) = exchange(endpoint, request).await?;
        Ok((status, bytes.to_vec()))
    }

    fn tokens_from(content: &Map<String, Value>) -> Result<Tokens, ProviderError> {
        let text = |k: &str| {
            content
                .get(k)
                .and_then(Value::as_str)
                .map(|s| SecretString::from(s.to_string()))
        };
        match text("access_token") {
            Some(access) => Ok(Tokens {
                access,
                refresh: text("refresh_token"),
            }),
            None => Err(ProviderError::UnexpectedBody {
                endpoint: AUTH,
                status: 200,
                snippet: "authentication answer without access_token".into(),
            }),
        }
    }

    /// Gets fresh tokens: refresh when we can, else log in anonymously.
    async fn renew(&self, slot: &mut Option<Tokens>) -> Result<(), ProviderError> {
        if let Some(refresh) = slot.as_ref().and_then(|t| t.refresh.clone()) {
            let body = json!({ "refresh_token": refresh.expose_secret() });
            let (status, bytes) = self
                .post_json(AUTH, "/auth/refresh-token", &body, None)
                .await?;
            if let Ok(content) = envelope(AUTH, status, &bytes) {
                *slot = Some(Self::tokens_from(&content)?);
                return Ok(());
            }
        }
        match &self.auth {
            CeAuth::ApiKey(_) => {
                let (status, bytes) = self.post_json(AUTH, "/auth/anonymous", &json!({}), None).await?;
                *slot = Some(Self::tokens_from(&envelope(AUTH, status, &bytes)?)?);
                Ok(())
            }
            CeAuth::Tokens { .. } => Err(ProviderError::Api {
                endpoint: AUTH,
                status: 401,
                code: "invalid_signature".into(),
                description: "the access token was refused and could not be refreshed; set a new CE_ACCESS_TOKEN / CE_REFRESH_TOKEN, or CE_API_KEY".into(),
            }),
        }
    }

    /// Sends an authorized request; on 401 renews the tokens once and repeats.
    async fn authorized(
        &self,
        endpoint: &'static str,
        get: bool,
        path: &str,
        body: &Value,
    ) -> Result<Map<String, Value>, ProviderError> {
        let mut renewed = false;
        loop {
            let token = {
                let mut slot = self.tokens.lock().await;
                if slot.is_none() {
                    self.renew(&mut slot).await?;
                    renewed = true;
                }
                slot.as_ref().expect("tokens present").access.clone()
            };
            let url = format!("{}{path}", self.prefix);
            let request = if get {
                self.http.get(url)
            } else {
                self.http.post(url).json(body)
            };
            let (status, bytes) =
                exchange(endpoint, request.bearer_auth(token.expose_secret())).await?;
            if status == 401 && !renewed {
                let mut slot = self.tokens.lock().await;
                // Another request may have renewed them meanwhile.
                let same = slot
                    .as_ref()
                    .is_some_and(|t| t.access.expose_secret() == token.expose_secret());
                if same {
                    self.renew(&mut slot).await?;
                }
                renewed = true;
                continue;
            }
            return envelope(endpoint, status, &bytes).map_err(|e| match e {
                ProviderError::Api {
                    status: 401,
                    description,
                    ..
                } => ProviderError::Api {
                    endpoint,
                    status: 401,
                    code: "invalid_signature".into(),
                    description,
                },
                other => other,
            });
        }
    }

    /// `GET /orders/{n}/payment-status`.
    pub async fn payment_status(&self, order: &str) -> Result<PaymentStatus, ProviderError> {
        let path = format!("/orders/{}/payment-status", urlencode(order));
        let content = self
            .authorized(PAYMENT_STATUS, true, &path, &Value::Null)
            .await?;
        Ok(PaymentStatus {
            status: content
                .get("status")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            is_retry_available: content.get("is_retry_available").and_then(Value::as_bool),
        })
    }

    /// `GET /orders/{n}/payments`: whether a retry sent since `intent_at`
    /// landed.
    pub async fn retry_landed(&self, order: &str, intent_at: i64) -> Result<Landed, ProviderError> {
        let path = format!("/orders/{}/payments", urlencode(order));
        let content = self.authorized(PAYMENTS, true, &path, &Value::Null).await?;
        Ok(retry_landed(&content, intent_at))
    }

    /// `POST /orders/{n}/retry-payment`.
    pub async fn retry_payment(
        &self,
        order: &str,
        method: &PaymentMethod,
    ) -> Result<PaymentInfo, ProviderError> {
        let path = format!("/orders/{}/retry-payment", urlencode(order));
        let content = self
            .authorized(RETRY_PAYMENT, false, &path, &method.body())
            .await?;
        let info = content
            .get("payment_info")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let text = |m: &Map<String, Value>, k: &str| {
            m.get(k).and_then(|v| match v {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
        };
        let links = info
            .get("payment_links")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        Ok(PaymentInfo {
            id: text(&info, "id"),
            status: text(&info, "status"),
            link: text(&links, "web"),
            link_expiry: text(&links, "expiry"),
        })
    }
}

fn urlencode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The earliest allowed time a `retry_too_early` answer names (RFC 3339).
pub fn retry_time(message: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    message
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')' || c == ',')
        .find_map(|word| chrono::DateTime::parse_from_rfc3339(word.trim_end_matches('.')).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payment_method_is_sent_only_with_a_slug() {
        assert_eq!(PaymentMethod::default().body(), json!({}));
        let m = PaymentMethod {
            payment_provider_slug: Some("juspay".into()),
            return_url: Some("https://x/r".into()),
            ..Default::default()
        };
        assert_eq!(
            m.body(),
            json!({"payment_method": {"payment_provider_slug": "juspay", "return_url": "https://x/r", "action": "paymentPage"}})
        );
    }

    #[test]
    fn reads_the_retry_time_from_the_message() {
        let t = retry_time("retry-payment is allowed from 2026-11-22T06:00:00Z (15 minutes after the last request)").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-22T06:00:00+00:00");
        assert!(retry_time("too early").is_none());
    }

    #[test]
    fn envelope_errors_carry_code_and_message() {
        let err = envelope(
            RETRY_PAYMENT,
            404,
            br#"{"message":"Order not found","success":false,"code":"order_not_found"}"#,
        )
        .unwrap_err();
        assert_eq!(err.code(), "order_not_found");
        assert!(err.to_string().contains("Order not found"));
        let ok = envelope(
            PAYMENT_STATUS,
            200,
            br#"{"message":"ok","success":true,"content":{"status":"failed"}}"#,
        )
        .unwrap();
        assert_eq!(ok["status"], "failed");
    }

    #[test]
    fn a_retry_landed_only_when_a_payment_attempt_is_at_or_after_its_intent() {
        let at = |secs: i64| {
            chrono::DateTime::from_timestamp(secs, 0)
                .unwrap()
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        };
        let content = |dates: &[String]| {
            let payments: Vec<Value> = dates
                .iter()
                .map(|d| json!({"transaction_type": "payment", "payment_date": d}))
                .collect();
            json!({ "payments": payments }).as_object().unwrap().clone()
        };
        let intent = 1_800_000_000;
        assert_eq!(
            retry_landed(&content(&[at(intent - 3600), at(intent + 1)]), intent),
            Landed::Yes
        );
        assert_eq!(retry_landed(&content(&[at(intent)]), intent), Landed::Yes);
        assert_eq!(
            retry_landed(&content(&[at(intent - 3600)]), intent),
            Landed::No
        );
        assert_eq!(retry_landed(&content(&[]), intent), Landed::No);
        // Too close to call, unreadable, or no list at all: for an operator.
        for unclear in [
            content(&[at(intent - 30)]),
            content(&["yesterday".to_string()]),
            json!({"payments": "none"}).as_object().unwrap().clone(),
            Map::new(),
        ] {
            assert!(
                matches!(retry_landed(&unclear, intent), Landed::Unknown(_)),
                "{unclear:?}"
            );
        }
        // Refunds are not payment attempts.
        let refund =
            json!({"payments": [{"transaction_type": "refund", "payment_date": at(intent + 5)}]});
        assert_eq!(
            retry_landed(refund.as_object().unwrap(), intent),
            Landed::No
        );
    }
}
