//! The PayNearMe HTTP client: form-encoded, signed, liberal in what it reads.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use secrecy::SecretString;
use serde_json::{Map, Value};

use super::oauth::{bearer_authorization, OAuthConfig, TokenSource};
use super::sign::sign;
use super::types::{self, PnmOrder};
use crate::provider::{exchange, http_client, json_object, snippet, unreadable, ProviderError};

/// API version sent with every request.
pub const API_VERSION: &str = "3.0";

/// Who we are to PayNearMe and where it lives.
#[derive(Debug, Clone)]
pub struct PnmCredentials {
    /// e.g. `https://api.paynearme-sandbox.com`, without `/json-api`.
    pub base_url: String,
    pub site_identifier: String,
    pub auth: PnmAuth,
}

/// How requests prove who sent them.
#[derive(Debug, Clone)]
pub enum PnmAuth {
    /// Each request signed with the site's secret key (existing sites).
    Hmac {
        secret: SecretString,
        api_key_id: Option<String>,
    },
    /// `Authorization: Bearer` with a client-credentials token (sites
    /// onboarded since 2026-08-01); nothing is signed.
    OAuth(OAuthConfig),
}

impl PnmAuth {
    /// `hmac` or `oauth`, as `--auth` spells it.
    pub fn name(&self) -> &'static str {
        match self {
            PnmAuth::Hmac { .. } => "hmac",
            PnmAuth::OAuth(_) => "oauth",
        }
    }
}

/// How the built client authenticates.
#[derive(Debug)]
enum Signer {
    Hmac {
        secret: SecretString,
        api_key_id: Option<String>,
    },
    OAuth(Box<TokenSource>),
}

/// The PayNearMe endpoints the tool calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    CreateOrder = 0,
    FindOrders = 1,
    RefreshEmbeddedJsUrls = 2,
    GetSmartToken = 3,
    ChangeOrder = 4,
}

impl From<Endpoint> for &'static str {
    fn from(e: Endpoint) -> Self {
        e.as_str()
    }
}

/// The client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot build the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error("base URL `{0}` is not a valid URL")]
    BadUrl(String),
}

impl Endpoint {
    /// All endpoints, in pipeline order.
    pub const ALL: [Endpoint; 5] = [
        Endpoint::CreateOrder,
        Endpoint::FindOrders,
        Endpoint::RefreshEmbeddedJsUrls,
        Endpoint::GetSmartToken,
        Endpoint::ChangeOrder,
    ];

    /// Position in [`Endpoint::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The path segment and the name used in counters.
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::CreateOrder => "create_order",
            Endpoint::FindOrders => "find_orders",
            Endpoint::RefreshEmbeddedJsUrls => "refresh_embedded_js_urls",
            Endpoint::GetSmartToken => "get_smart_token",
            Endpoint::ChangeOrder => "change_order",
        }
    }
}

/// A PayNearMe client; cheap to clone, reuses connections, shares one
/// OAuth token among its clones.
#[derive(Debug, Clone)]
pub struct PnmClient {
    http: reqwest::Client,
    /// `{base}/json-api/{endpoint}` for each endpoint, parsed once.
    urls: std::sync::Arc<[reqwest::Url]>,
    site_identifier: String,
    signer: std::sync::Arc<Signer>,
}

impl PnmClient {
    /// Builds a client with the given per-request timeout.
    pub fn new(credentials: PnmCredentials, timeout: Duration) -> Result<Self, ClientError> {
        let http = http_client(timeout)?;
        let base = credentials.base_url.trim_end_matches('/');
        let urls = Endpoint::ALL
            .iter()
            .map(|e| reqwest::Url::parse(&format!("{base}/json-api/{}", e.as_str())))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| ClientError::BadUrl(credentials.base_url.clone()))?;
        let signer = match credentials.auth {
            PnmAuth::Hmac { secret, api_key_id } => Signer::Hmac { secret, api_key_id },
            PnmAuth::OAuth(config) => {
                Signer::OAuth(Box::new(TokenSource::new(http.clone(), config)))
            }
        };
        Ok(PnmClient {
            http,
            urls: urls.into(),
            site_identifier: credentials.site_identifier,
            signer: std::sync::Arc::new(signer),
        })
    }

    /// `error` without the customer's personal data among `params` nor our
    /// secrets, in any encoding ([`ProviderError::redact`]).
    fn redact(&self, error: ProviderError, params: &[(&str, &str)]) -> ProviderError {
        use secrecy::ExposeSecret;
        let mut values = pii(params);
        match &*self.signer {
            Signer::Hmac { secret, .. } => values.push(secret.expose_secret()),
            Signer::OAuth(tokens) => values.push(tokens.client_secret()),
        }
        error.redact(&values)
    }

    /// Signs and sends one request; returns the answer body when it says `ok`.
    pub async fn call(
        &self,
        endpoint: Endpoint,
        params: &[(&str, &str)],
    ) -> Result<Map<String, Value>, ProviderError> {
        let (status, bytes) = self
            .send(endpoint, params)
            .await
            .map_err(|e| self.redact(e, params))?;
        read_answer(endpoint.as_str(), status, &bytes).map_err(|e| self.redact(e, params))
    }

    /// Like [`PnmClient::call`], reading only the answer's orders.
    async fn call_for_orders(
        &self,
        endpoint: Endpoint,
        params: &[(&str, &str)],
    ) -> Result<Vec<PnmOrder>, ProviderError> {
        let (status, bytes) = self
            .send(endpoint, params)
            .await
            .map_err(|e| self.redact(e, params))?;
        read_orders(endpoint.as_str(), status, &bytes).map_err(|e| self.redact(e, params))
    }

    /// Authenticates and sends one request; returns the HTTP status and
    /// body. With OAuth, a 401 renews the token once and sends the same
    /// request again: the provider did not act on the refused one.
    #[tracing::instrument(level = "debug", skip_all, fields(endpoint = endpoint.as_str()))]
    async fn send(
        &self,
        endpoint: Endpoint,
        params: &[(&str, &str)],
    ) -> Result<(u16, bytes::Bytes), ProviderError> {
        let name = endpoint.as_str();
        let url = &self.urls[endpoint.index()];
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs()
            .to_string();
        let mut form: Vec<(&str, &str)> = Vec::with_capacity(params.len() + 5);
        form.extend(params.iter().filter(|(_, v)| !v.is_empty()).copied());
        form.push(("site_identifier", &self.site_identifier));
        form.push(("timestamp", &timestamp));
        form.push(("version", API_VERSION));
        tracing::trace!(
            params = ?form.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            auth = match &*self.signer { Signer::Hmac { .. } => "hmac", Signer::OAuth(_) => "oauth" },
            "sending (values, signature and token not logged)"
        );
        match &*self.signer {
            Signer::Hmac { secret, api_key_id } => {
                if let Some(key_id) = api_key_id {
                    form.push(("api_key_id", key_id));
                }
                let signature = sign(&form, secret);
                form.push(("signature", &signature));
                exchange(name, self.http.post(url.clone()).form(&form)).await
            }
            Signer::OAuth(tokens) => {
                let mut renewed = false;
                loop {
                    let bearer = tokens
                        .bearer()
                        .await
                        .map_err(|e| ProviderError::Token(Box::new(e)))?;
                    let request = self
                        .http
                        .post(url.clone())
                        .header(
                            reqwest::header::AUTHORIZATION,
                            bearer_authorization(&bearer),
                        )
                        .form(&form);
                    let (status, bytes) = exchange(name, request).await?;
                    if status != 401 || renewed {
                        return Ok((status, bytes));
                    }
                    tracing::debug!(
                        endpoint = name,
                        "access token refused (401): renewing it once"
                    );
                    tokens.reject(&bearer);
                    renewed = true;
                }
            }
        }
    }

    /// `create_order` with the row's parameters.
    pub async fn create_order(&self, params: &[(&str, &str)]) -> Result<PnmOrder, ProviderError> {
        let (status, bytes) = self
            .send(Endpoint::CreateOrder, params)
            .await
            .map_err(|e| self.redact(e, params))?;
        read_orders(Endpoint::CreateOrder.as_str(), status, &bytes)
            .and_then(|orders| {
                orders
                    .into_iter()
                    .next()
                    .ok_or_else(|| ProviderError::UnexpectedBody {
                        endpoint: Endpoint::CreateOrder.as_str(),
                        status,
                        snippet: snippet(&bytes),
                    })
            })
            .map_err(|e| self.redact(e, params))
    }

    /// `find_orders` by one identifier; an answer of 404 means no match.
    pub async fn find_orders(
        &self,
        key: &str,
        value: &str,
    ) -> Result<Vec<PnmOrder>, ProviderError> {
        no_match_is_empty(
            self.call_for_orders(Endpoint::FindOrders, &[(key, value)])
                .await,
        )
    }

    /// `find_orders` by one identifier, each order as the provider sent it;
    /// an answer of 404 means no match.
    pub async fn find_orders_raw(
        &self,
        key: &str,
        value: &str,
    ) -> Result<Vec<Map<String, Value>>, ProviderError> {
        let body = no_match_is_empty(
            self.call(Endpoint::FindOrders, &[(key, value)])
                .await
                .map(|body| vec![body]),
        )?;
        Ok(body
            .iter()
            .flat_map(types::order_objects)
            .cloned()
            .collect())
    }

    /// `change_order` with the order's `pnm_order_identifier` and new values.
    pub async fn change_order(&self, params: &[(&str, &str)]) -> Result<(), ProviderError> {
        self.call(Endpoint::ChangeOrder, params).await.map(drop)
    }

    /// `refresh_embedded_js_urls` with the given selector and paging.
    pub async fn refresh_urls(
        &self,
        params: &[(&str, &str)],
    ) -> Result<Vec<PnmOrder>, ProviderError> {
        self.call_for_orders(Endpoint::RefreshEmbeddedJsUrls, params)
            .await
    }

    /// `get_smart_token` with the given selector and options.
    pub async fn smart_token(
        &self,
        params: &[(&str, &str)],
    ) -> Result<Vec<PnmOrder>, ProviderError> {
        self.call_for_orders(Endpoint::GetSmartToken, params).await
    }
}

/// A search answered 404 (some APIs say "not found" for an empty result) is
/// an empty result, whatever its body says.
fn no_match_is_empty<T>(result: Result<Vec<T>, ProviderError>) -> Result<Vec<T>, ProviderError> {
    match result {
        Err(
            ProviderError::Api { status: 404, .. }
            | ProviderError::UnexpectedBody { status: 404, .. },
        ) => Ok(Vec::new()),
        other => other,
    }
}

/// The values of the customer's personal data among `params` (see
/// [`ProviderError::redact`]).
fn pii<'a>(params: &[(&str, &'a str)]) -> Vec<&'a str> {
    params
        .iter()
        .filter(|(name, _)| super::params::find(name).is_some_and(|p| p.pii))
        .map(|(_, value)| *value)
        .collect()
}

/// Turns an HTTP answer into the body or a typed error.
fn read_answer(
    endpoint: &'static str,
    status: u16,
    bytes: &[u8],
) -> Result<Map<String, Value>, ProviderError> {
    let body = json_object(endpoint, status, bytes)?;
    if types::is_ok(&body) && status < 300 {
        return Ok(body);
    }
    Err(api_error(endpoint, status, types::first_error(&body)))
}

/// Like [`read_answer`], reading only the answer's orders.
fn read_orders(
    endpoint: &'static str,
    status: u16,
    bytes: &[u8],
) -> Result<Vec<PnmOrder>, ProviderError> {
    let Some(answer) = types::Answer::parse(bytes) else {
        return Err(unreadable(endpoint, status, bytes));
    };
    if answer.ok && status < 300 {
        return Ok(answer.orders);
    }
    Err(api_error(endpoint, status, answer.first_error()))
}

fn api_error(
    endpoint: &'static str,
    status: u16,
    first_error: Option<(Option<String>, String)>,
) -> ProviderError {
    let (code, description) = first_error.unwrap_or((None, String::new()));
    ProviderError::Api {
        endpoint,
        status,
        code: code.unwrap_or_else(|| format!("http_{status}")),
        description,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_index_is_its_position_in_all() {
        for (i, e) in Endpoint::ALL.iter().enumerate() {
            assert_eq!(e.index(), i, "{e:?}");
        }
    }

    #[test]
    fn an_echoed_personal_value_is_redacted_and_other_values_kept() {
        let params = [
            ("order_amount", "12.50"),
            ("site_customer_email", "jo@example.com"),
            ("site_customer_name", "Jo Smith"),
        ];
        assert_eq!(pii(&params), ["jo@example.com", "Jo Smith"]);
        let body = br#"{"status":"error","errors":[{"code":"invalid_parameter","description":"Jo Smith <jo@example.com> may not pay 12.50"}]}"#;
        let err = read_orders("create_order", 400, body)
            .unwrap_err()
            .redact(&pii(&params));
        assert_eq!(
            err.to_string(),
            read_orders(
                "create_order",
                400,
                br#"{"status":"error","errors":[{"code":"invalid_parameter","description":"[redacted] <[redacted]> may not pay 12.50"}]}"#
            )
            .unwrap_err()
            .to_string()
        );
    }

    #[test]
    fn ok_answer_is_the_body() {
        let body = read_answer("create_order", 200, br#"{"status":"ok","order":{}}"#).unwrap();
        assert!(body.contains_key("order"));
    }

    #[test]
    fn error_status_is_an_error_whatever_the_http_code() {
        let err = read_answer(
            "create_order",
            200,
            br#"{"status":"error","errors":[{"code":"invalid_parameter","description":"order_type"}]}"#,
        )
        .unwrap_err();
        match err {
            ProviderError::Api {
                status,
                code,
                description,
                ..
            } => {
                assert_eq!(
                    (status, code.as_str(), description.as_str()),
                    (200, "invalid_parameter", "order_type")
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn html_5xx_is_a_transient_api_error_and_html_200_is_unexpected() {
        let err = read_answer("create_order", 502, b"<html>bad gateway</html>").unwrap_err();
        assert_eq!(err.code(), "http_502");
        let err = read_answer("create_order", 200, b"<html>").unwrap_err();
        assert!(matches!(err, ProviderError::UnexpectedBody { .. }));
    }
}
