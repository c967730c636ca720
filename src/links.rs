//! `orderbatch serve`: just-in-time embedded JS URLs and smart links for
//! agents, from the state database, refreshed at the provider only when
//! the stored URL is about to expire.
//!
//! Every provider call of one customer goes through that customer's lock
//! (so a customer's requests never overlap at the provider, and concurrent
//! requests for one order share one call: the second finds the first's
//! fresh URL in the database) and through one rate limiter.

// A handler's early answers travel as `Err(Response)` straight to the
// client; boxing them would buy nothing.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use governor::{DefaultDirectRateLimiter, RateLimiter};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::provider::paynearme::{PnmClient, PnmOrder};
use crate::provider::{ErrorClass, ProviderError};
use crate::store::served::ServedOrder;
use crate::store::{Store, StoreError};

/// What the server needs.
pub struct LinksConfig {
    pub db: PathBuf,
    /// The bearer token every endpoint but `/healthz` asks for.
    pub token: SecretString,
    /// A stored URL with less than this left is refreshed first.
    pub min_validity: Duration,
    /// Provider calls per second; `None` is unlimited.
    pub rate: Option<NonZeroU32>,
    pub client: PnmClient,
}

/// Database connections the handlers share (reads are short; WAL lets
/// them run beside a nightly run's writer).
const CONNECTIONS: usize = 4;

/// Upper bounds of the provider latency histogram, seconds.
const BUCKETS: [f64; 9] = [0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

#[derive(Default)]
struct Metrics {
    /// (endpoint, status) → requests.
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    provider_calls: AtomicU64,
    served_from_db: AtomicU64,
    /// Cumulative counts per bucket, then +Inf.
    latency: [AtomicU64; BUCKETS.len() + 1],
    latency_sum_us: AtomicU64,
}

struct Shared {
    stores: Vec<Mutex<Store>>,
    next: AtomicU64,
    client: PnmClient,
    limiter: Option<DefaultDirectRateLimiter>,
    /// One async lock per customer (or per order when the customer is not
    /// known).
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    token: SecretString,
    min_validity: Duration,
    metrics: Metrics,
}

/// Where a served value came from, for the log line.
#[derive(Clone, Copy)]
enum Source {
    Db,
    Provider,
}

/// A JSON error answer `{"error":{"code","message"}}`.
fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message.into()}})),
    )
        .into_response()
}

impl Shared {
    fn store<T>(&self, f: impl FnOnce(&Store) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) as usize % self.stores.len();
        let store = self.stores[i].lock().unwrap();
        f(&store)
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        bool::from(
            given
                .as_bytes()
                .ct_eq(self.token.expose_secret().as_bytes()),
        )
    }

    fn lock_for(&self, order: &ServedOrder) -> Arc<tokio::sync::Mutex<()>> {
        let key = order
            .site_customer_identifier
            .clone()
            .or_else(|| order.pnm_customer_identifier.clone())
            .unwrap_or_else(|| order.pnm_order_identifier.clone());
        self.locks.lock().unwrap().entry(key).or_default().clone()
    }

    fn fresh(&self, order: &ServedOrder) -> bool {
        let Some(expires) = order
            .embedded_js_url_expires_at
            .as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        else {
            return false;
        };
        order.embedded_js_url.is_some()
            && expires.timestamp() - chrono::Utc::now().timestamp()
                >= self.min_validity.as_secs() as i64
    }

    /// One provider call, rate limited and measured.
    async fn call<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, ProviderError>>,
    ) -> Result<T, ProviderError> {
        if let Some(limiter) = &self.limiter {
            limiter.until_ready().await;
        }
        let started = Instant::now();
        let result = call.await;
        let secs = started.elapsed().as_secs_f64();
        let m = &self.metrics;
        m.provider_calls.fetch_add(1, Ordering::Relaxed);
        m.latency_sum_us
            .fetch_add((secs * 1e6) as u64, Ordering::Relaxed);
        let bucket = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        for counter in &m.latency[bucket..] {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// Logs and counts an answer about order `id`, then gives it.
    fn served(
        &self,
        endpoint: &'static str,
        id: &str,
        started: Instant,
        (answer, source): (Response, Option<Source>),
    ) -> Response {
        log(endpoint, id, &answer, started, source);
        *self
            .metrics
            .requests
            .lock()
            .unwrap()
            .entry((endpoint, answer.status().as_u16()))
            .or_default() += 1;
        answer
    }
}

/// A provider error as an answer: 503 with `Retry-After` when it may pass
/// (rate limited, down), 502 with the provider's code when it refused.
fn provider_error(e: &ProviderError) -> Response {
    match e.class() {
        ErrorClass::RateLimited(wait) => {
            let secs = wait.map_or(1, |w| w.as_secs().max(1));
            let mut answer = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "provider_rate_limited",
                "the provider asks us to slow down; try again later",
            );
            answer
                .headers_mut()
                .insert(header::RETRY_AFTER, secs.into());
            answer
        }
        ErrorClass::Transient { .. } => {
            let mut answer = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "provider_unavailable",
                format!(
                    "the provider did not answer usefully ({}); try again later",
                    e.code()
                ),
            );
            answer.headers_mut().insert(header::RETRY_AFTER, 5.into());
            answer
        }
        ErrorClass::Permanent | ErrorClass::Auth => {
            error(StatusCode::BAD_GATEWAY, &e.code(), e.to_string())
        }
    }
}

/// The order `pnm` in the provider's answer, or the answer to give.
fn answered(result: Result<Vec<PnmOrder>, ProviderError>, pnm: &str) -> Result<PnmOrder, Response> {
    result
        .map_err(|e| provider_error(&e))?
        .into_iter()
        .find(|o| o.pnm_order_identifier.as_deref() == Some(pnm))
        .ok_or_else(|| {
            error(
                StatusCode::BAD_GATEWAY,
                "order_not_found",
                "the provider's answer did not include this order",
            )
        })
}

/// A field the provider's answer should have held.
fn lacks(field: &str) -> Response {
    error(
        StatusCode::BAD_GATEWAY,
        "unexpected_body",
        format!("the provider's answer has no {field}"),
    )
}

/// The order `id` names, for a caller with the right token.
fn find(shared: &Shared, id: &str, headers: &HeaderMap) -> Result<ServedOrder, Response> {
    if !shared.authorized(headers) {
        return Err(unauthorized());
    }
    match shared.store(|s| s.served_order(id)) {
        Ok(Some(order)) => Ok(order),
        Ok(None) => Err(unknown(id)),
        Err(e) => Err(internal(&e)),
    }
}

/// `GET /v1/orders/{id}/embedded-js-url`.
async fn embedded_js_url(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let started = Instant::now();
    let answered = url_answer(&shared, &id, &headers).await;
    shared.served("embedded-js-url", &id, started, answered)
}

async fn url_answer(shared: &Shared, id: &str, headers: &HeaderMap) -> (Response, Option<Source>) {
    let ok = |o: &ServedOrder| {
        Json(json!({
            "site_order_identifier": o.site_order_identifier,
            "pnm_order_identifier": o.pnm_order_identifier,
            "embedded_js_url": o.embedded_js_url,
            "embedded_js_url_expires_at": o.embedded_js_url_expires_at,
        }))
        .into_response()
    };
    let order = match find(shared, id, headers) {
        Ok(order) => order,
        Err(answer) => return (answer, None),
    };
    if shared.fresh(&order) {
        shared
            .metrics
            .served_from_db
            .fetch_add(1, Ordering::Relaxed);
        return (ok(&order), Some(Source::Db));
    }
    let lock = shared.lock_for(&order);
    let _customer = lock.lock().await;
    // Another request may have refreshed it while this one waited.
    let order = match find(shared, id, headers) {
        Ok(order) => order,
        Err(answer) => return (answer, None),
    };
    if shared.fresh(&order) {
        shared
            .metrics
            .served_from_db
            .fetch_add(1, Ordering::Relaxed);
        return (ok(&order), Some(Source::Db));
    }
    let refreshed = async {
        let pnm = order.pnm_order_identifier.as_str();
        let result = shared
            .call(shared.client.refresh_urls(&[("pnm_order_identifier", pnm)]))
            .await;
        let fresh = answered(result, pnm)?;
        let url = fresh
            .embedded_js_url
            .clone()
            .ok_or_else(|| lacks("embedded_js_url"))?;
        let expires = fresh.embedded_js_url_expires_at.clone();
        shared
            .store(|s| s.set_served_url(&order, &url, expires.as_deref()))
            .map_err(|e| internal(&e))?;
        Ok::<_, Response>(ServedOrder {
            embedded_js_url: Some(url),
            embedded_js_url_expires_at: expires.or(order.embedded_js_url_expires_at.clone()),
            ..order.clone()
        })
    };
    match refreshed.await {
        Ok(served) => (ok(&served), Some(Source::Provider)),
        Err(answer) => (answer, Some(Source::Provider)),
    }
}

/// `GET /v1/orders/{id}/smart-link`: a fresh smart token, with the token
/// options of the run that holds the order.
async fn smart_link(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let started = Instant::now();
    let answered = link_answer(&shared, &id, &headers).await;
    shared.served("smart-link", &id, started, answered)
}

async fn link_answer(shared: &Shared, id: &str, headers: &HeaderMap) -> (Response, Option<Source>) {
    let order = match find(shared, id, headers) {
        Ok(order) => order,
        Err(answer) => return (answer, None),
    };
    let options = match shared.store(|s| s.run(order.run_id)) {
        Ok(run) => run.map_or_else(Vec::new, |r| {
            crate::pipeline::stored_token_options(&r.options)
        }),
        Err(e) => return (internal(&e), None),
    };
    let lock = shared.lock_for(&order);
    let _customer = lock.lock().await;
    let issued = async {
        let pnm = order.pnm_order_identifier.as_str();
        let mut params: Vec<(&str, &str)> = vec![("pnm_order_identifier", pnm)];
        params.extend(options.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let fresh = answered(shared.call(shared.client.smart_token(&params)).await, pnm)?;
        let token = fresh
            .secure_smart_token
            .clone()
            .ok_or_else(|| lacks("secure_smart_token"))?;
        let link = fresh.secure_smart_link.clone();
        shared
            .store(|s| s.set_served_token(&order, &token, link.as_deref()))
            .map_err(|e| internal(&e))?;
        Ok::<_, Response>(
            Json(json!({"secure_smart_token": token, "secure_smart_link": link})).into_response(),
        )
    };
    match issued.await {
        Ok(answer) | Err(answer) => (answer, Some(Source::Provider)),
    }
}

fn unauthorized() -> Response {
    let mut answer = error(
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        "send Authorization: Bearer <ORDERBATCH_SERVE_TOKEN>",
    );
    answer.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    answer
}

fn unknown(id: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "unknown_order",
        format!("no order with site_order_identifier `{id}` in this state database"),
    )
}

fn internal(e: &StoreError) -> Response {
    tracing::error!("state database: {e:#}");
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "state_database",
        "the state database could not be read or written",
    )
}

/// One line per request: no customer data (the path holds the order's
/// identifier only).
fn log(endpoint: &str, id: &str, answer: &Response, started: Instant, source: Option<Source>) {
    tracing::info!(
        method = "GET",
        endpoint,
        site_order_identifier = id,
        status = answer.status().as_u16(),
        latency_ms = started.elapsed().as_secs_f64() * 1000.0,
        source = match source {
            Some(Source::Db) => "db",
            Some(Source::Provider) => "refreshed",
            None => "-",
        },
        "served"
    );
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /metrics`, Prometheus text format.
async fn metrics(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if !shared.authorized(&headers) {
        return unauthorized();
    }
    let m = &shared.metrics;
    let mut out = String::new();
    out.push_str(
        "# HELP orderbatch_serve_requests_total Requests answered, by endpoint and status.\n",
    );
    out.push_str("# TYPE orderbatch_serve_requests_total counter\n");
    for ((endpoint, status), n) in m.requests.lock().unwrap().iter() {
        out.push_str(&format!(
            "orderbatch_serve_requests_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {n}\n"
        ));
    }
    out.push_str("# HELP orderbatch_serve_served_from_db_total URLs served from the state database without a provider call.\n");
    out.push_str("# TYPE orderbatch_serve_served_from_db_total counter\n");
    out.push_str(&format!(
        "orderbatch_serve_served_from_db_total {}\n",
        m.served_from_db.load(Ordering::Relaxed)
    ));
    out.push_str("# HELP orderbatch_serve_provider_calls_total Calls made to the provider.\n");
    out.push_str("# TYPE orderbatch_serve_provider_calls_total counter\n");
    out.push_str(&format!(
        "orderbatch_serve_provider_calls_total {}\n",
        m.provider_calls.load(Ordering::Relaxed)
    ));
    out.push_str("# HELP orderbatch_serve_provider_latency_seconds Provider call latency.\n");
    out.push_str("# TYPE orderbatch_serve_provider_latency_seconds histogram\n");
    for (i, bound) in BUCKETS.iter().enumerate() {
        out.push_str(&format!(
            "orderbatch_serve_provider_latency_seconds_bucket{{le=\"{bound}\"}} {}\n",
            m.latency[i].load(Ordering::Relaxed)
        ));
    }
    let count = m.latency[BUCKETS.len()].load(Ordering::Relaxed);
    out.push_str(&format!(
        "orderbatch_serve_provider_latency_seconds_bucket{{le=\"+Inf\"}} {count}\n"
    ));
    out.push_str(&format!(
        "orderbatch_serve_provider_latency_seconds_sum {}\n",
        m.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6
    ));
    out.push_str(&format!(
        "orderbatch_serve_provider_latency_seconds_count {count}\n"
    ));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// A bound server, ready to serve.
pub struct Links {
    listener: tokio::net::TcpListener,
    app: Router,
}

impl Links {
    /// Opens the database and binds `addr`.
    pub async fn bind(config: LinksConfig, addr: SocketAddr) -> Result<Links, LinksError> {
        let mut stores = Vec::with_capacity(CONNECTIONS);
        for _ in 0..CONNECTIONS {
            stores.push(Mutex::new(Store::open_existing(&config.db)?));
        }
        let shared = Arc::new(Shared {
            stores,
            next: AtomicU64::new(0),
            client: config.client,
            limiter: config
                .rate
                .map(|r| RateLimiter::direct(crate::pipeline::quota(r))),
            locks: Mutex::new(HashMap::new()),
            token: config.token,
            min_validity: config.min_validity,
            metrics: Metrics::default(),
        });
        let app = Router::new()
            .route("/healthz", get(healthz))
            .route("/metrics", get(metrics))
            .route("/v1/orders/{id}/embedded-js-url", get(embedded_js_url))
            .route("/v1/orders/{id}/smart-link", get(smart_link))
            .with_state(shared);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| LinksError::Bind { addr, source })?;
        Ok(Links { listener, app })
    }

    /// The address it listens on.
    pub fn addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then lets requests in flight finish.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(self.listener, self.app)
            .with_graceful_shutdown(shutdown)
            .await
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum LinksError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_errors_map_to_502_or_503_with_retry_after() {
        let refused = ProviderError::Api {
            endpoint: "refresh_embedded_js_urls",
            status: 404,
            code: "order_not_found".into(),
            description: "no such order".into(),
        };
        let answer = provider_error(&refused);
        assert_eq!(answer.status(), StatusCode::BAD_GATEWAY);
        let limited = ProviderError::RateLimited {
            endpoint: "refresh_embedded_js_urls",
            retry_after: Some(Duration::from_secs(7)),
        };
        let answer = provider_error(&limited);
        assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(answer.headers()[header::RETRY_AFTER], "7");
        let down = ProviderError::Api {
            endpoint: "refresh_embedded_js_urls",
            status: 503,
            code: "http_503".into(),
            description: String::new(),
        };
        let answer = provider_error(&down);
        assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(answer.headers().contains_key(header::RETRY_AFTER));
    }
}
