//! `orderbatch serve`: just-in-time embedded JS URLs and smart links for
//! agents, from the state database, refreshed at the provider only when
//! the stored URL has less than `--min-validity` left.
//!
//! What it promises:
//! - A URL served has at least `min_validity` left, unless the provider
//!   could not give one (the answer then says `"min_validity_met": false`).
//!   A URL inside the window is regenerated with `force=true` (without it
//!   the provider hands back the same, unexpired URL), once: a URL the
//!   provider just gave is not regenerated again before it expires.
//! - Concurrent callers for one order share one provider call and its
//!   outcome, failures included (a single-flight per order and kind).
//! - No caller waits longer than `max_wait`: then a 503 with `Retry-After`
//!   (the call it waited for still finishes and is stored).
//! - Every provider call of one customer goes through that customer's
//!   lock (a customer's requests never overlap at the provider), through
//!   `concurrency` slots and one rate limiter; transient failures are
//!   tried again up to `max_attempts` times within the first caller's wait.
//! - The database is used only from blocking threads, never from the
//!   async workers; a database another process keeps locked gives a quick
//!   503 with `Retry-After`, and `/healthz` never touches it.

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

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::future::{BoxFuture, FutureExt, Shared as SharedFuture};
use governor::{DefaultDirectRateLimiter, RateLimiter};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::lock::{CustomerLease, CustomerLocks};
use crate::pipeline::RunSpec;
use crate::provider::paynearme::{PnmClient, PnmOrder};
use crate::provider::{ErrorClass, ProviderError};
use crate::store::served::ServedOrder;
use crate::store::{Store, StoreError};

/// How long a regenerated URL is valid, as the provider documents it.
pub const URL_LIFETIME: Duration = Duration::from_secs(30 * 60);

/// What the server needs.
pub struct LinksConfig {
    pub db: PathBuf,
    /// The bearer token every endpoint but `/healthz` asks for.
    pub token: SecretString,
    /// A stored URL with less than this left is regenerated first.
    pub min_validity: Duration,
    /// Provider calls per second; `None` is unlimited.
    pub rate: Option<NonZeroU32>,
    /// Provider calls in flight at once.
    pub concurrency: usize,
    /// Tries per provider call for timeouts, dropped connections, 5xx and 429.
    pub max_attempts: u32,
    /// The first retry's delay (doubling after each).
    pub retry_base: Duration,
    /// The longest a caller waits for an answer before a 503.
    pub max_wait: Duration,
    pub client: PnmClient,
    /// How connections are kept.
    pub limits: ConnectionLimits,
}

/// What a connection may cost.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// A connection that has not sent a whole request header for this long
    /// is closed, idle keep-alive connections included.
    pub idle_timeout: Duration,
    /// Connections open at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// After the stop signal, requests in flight get this long to finish;
    /// then the connections left are closed.
    pub shutdown_timeout: Duration,
}

/// Database connections the handlers share (reads are short; WAL lets
/// them run beside a nightly run's writer).
const CONNECTIONS: usize = 4;

/// How long a statement waits for another process's lock on the database
/// before the caller gets a 503.
const BUSY_TIMEOUT: Duration = Duration::from_millis(250);

/// Upper bounds of the provider latency histogram, seconds.
const BUCKETS: [f64; 9] = [0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

#[derive(Default)]
struct Metrics {
    /// (endpoint, status) → requests.
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    provider_calls: AtomicU64,
    served_from_db: AtomicU64,
    /// Requests answered by a provider call another request started.
    joined: AtomicU64,
    /// Cumulative counts per bucket, then +Inf.
    latency: [AtomicU64; BUCKETS.len() + 1],
    latency_sum_us: AtomicU64,
}

/// What a single-flight is for.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Url,
    Link,
}

/// What a flight gives every caller that shares it.
#[derive(Clone)]
enum Fresh {
    Url {
        order: ServedOrder,
        min_validity_met: bool,
    },
    Link {
        token: String,
        link: Option<String>,
    },
}

/// An answer other than 200, as every sharer of a flight gets it.
#[derive(Clone, Debug)]
struct Failure {
    status: StatusCode,
    code: String,
    message: String,
    retry_after: Option<u64>,
}

impl Failure {
    fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Failure {
        Failure {
            status,
            code: code.to_string(),
            message: message.into(),
            retry_after: None,
        }
    }

    fn retry_after(mut self, secs: u64) -> Failure {
        self.retry_after = Some(secs.max(1));
        self
    }

    fn response(&self) -> Response {
        let mut answer = error(self.status, &self.code, self.message.clone());
        if let Some(secs) = self.retry_after {
            answer
                .headers_mut()
                .insert(header::RETRY_AFTER, secs.into());
        }
        if self.status == StatusCode::UNAUTHORIZED {
            answer.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        answer
    }
}

type Outcome = Result<(Fresh, Source), Failure>;
type Flight = SharedFuture<BoxFuture<'static, Outcome>>;

struct Shared {
    stores: Vec<Mutex<Store>>,
    next: AtomicU64,
    client: PnmClient,
    limiter: Option<DefaultDirectRateLimiter>,
    /// `concurrency` provider calls at once.
    slots: tokio::sync::Semaphore,
    max_attempts: u32,
    retry_base: Duration,
    max_wait: Duration,
    /// One provider call per customer at a time, in this process and across
    /// the processes sharing the database (a run or `refresh` beside): a
    /// lock file per customer (per order when the customer is not known),
    /// so nothing here grows with the customers seen.
    customers: CustomerLocks,
    /// The provider call in flight per (kind, pnm_order_identifier).
    flights: Mutex<HashMap<(Kind, String), Flight>>,
    /// URLs a forced regeneration gave with less than `min_validity` left
    /// (pnm_order_identifier → URL): the best the provider can do, served
    /// as they are until they expire.
    short: Mutex<HashMap<String, String>>,
    token: SecretString,
    min_validity: Duration,
    /// Whether a missing or unreadable expiry has been logged.
    expiry_guessed: std::sync::atomic::AtomicBool,
    metrics: Metrics,
}

/// Where a served value came from, for the log line.
#[derive(Clone, Copy)]
enum Source {
    Db,
    Provider,
    /// Another request's provider call.
    Joined,
}

/// A JSON error answer `{"error":{"code","message"}}`.
fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message.into()}})),
    )
        .into_response()
}

/// The credentials of an `Authorization` value with the Bearer scheme,
/// which is case-insensitive (RFC 7235 §2.1).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, credentials) = value.trim_matches(' ').split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| credentials.trim_matches(' '))
}

/// Whether `token` is one RFC 6750 `b64token` (token68), the only thing
/// a client can send after `Bearer `.
pub fn sendable_token(token: &str) -> bool {
    let word = token.trim_end_matches('=');
    !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

/// At most the first 64 characters of something a caller sent, for a
/// log line.
fn bounded(text: &str) -> String {
    const MAX: usize = 64;
    match text.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

/// Seconds from now until an RFC 3339 time, if it is one.
fn seconds_left(expires_at: Option<&str>) -> Option<i64> {
    let expires = chrono::DateTime::parse_from_rfc3339(expires_at?).ok()?;
    Some(expires.timestamp() - chrono::Utc::now().timestamp())
}

impl Shared {
    /// Runs `f` on one of the connections, on a blocking thread.
    async fn db<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, Failure> {
        let this = self.clone();
        let result = tokio::task::spawn_blocking(move || {
            let i = this.next.fetch_add(1, Ordering::Relaxed) as usize % this.stores.len();
            let store = this.stores[i]
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            f(&store)
        })
        .await;
        match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(internal(&e)),
            Err(e) => {
                tracing::error!("state database task: {e}");
                Err(Failure::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "state_database",
                    "the state database could not be read or written",
                ))
            }
        }
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer)
            .unwrap_or_default();
        bool::from(
            given
                .as_bytes()
                .ct_eq(self.token.expose_secret().as_bytes()),
        )
    }

    /// Holds the order's customer (in this process and against others: a
    /// run or a `refresh` of the same database) until `deadline`: requests
    /// for one customer never overlap.
    async fn hold_customer(
        &self,
        order: &ServedOrder,
        deadline: Instant,
    ) -> Result<Option<CustomerLease>, Failure> {
        // The site customer, as runs lock it; else the provider's customer
        // or the order itself (kept apart from site customer names).
        let key = match (&order.site_customer_identifier, &order.pnm_customer_identifier) {
            (Some(site), _) => site.clone(),
            (None, Some(pnm)) => format!("\u{0}customer {pnm}"),
            (None, None) => format!("\u{0}order {}", order.pnm_order_identifier),
        };
        loop {
            if Instant::now() >= deadline {
                return Err(waited_too_long(self.max_wait));
            }
            match self.customers.try_acquire(&key) {
                Ok(Some(lease)) => return Ok(Some(lease)),
                Ok(None) => tokio::time::sleep(Duration::from_millis(2)).await,
                Err(e) => {
                    tracing::warn!("cannot lock the customer beside the state database: {e}");
                    return Ok(None);
                }
            }
        }
    }

    /// Whether `left` seconds meet `--min-validity`.
    fn enough(&self, left: i64) -> bool {
        i64::try_from(self.min_validity.as_secs()).is_ok_and(|min| left >= min)
    }

    /// `Some(min_validity_met)` when the stored URL may be served as it
    /// is: it has `min_validity` left, or it is what the provider gave
    /// when asked for a new one and has not expired.
    fn servable(&self, order: &ServedOrder) -> Option<bool> {
        let url = order.embedded_js_url.as_deref()?;
        let left = seconds_left(order.embedded_js_url_expires_at.as_deref())?;
        if self.enough(left) {
            return Some(true);
        }
        let short = self.short.lock().unwrap();
        (left > 0 && short.get(&order.pnm_order_identifier).map(String::as_str) == Some(url))
            .then_some(false)
    }

    /// The flight for `key`: the one in progress, or `work` started as a
    /// new one. `true` when it joined one in progress.
    fn flight(
        self: &Arc<Self>,
        key: (Kind, String),
        work: impl std::future::Future<Output = Outcome> + Send + 'static,
    ) -> (Flight, bool) {
        let mut flights = self.flights.lock().unwrap();
        if let Some(flight) = flights.get(&key) {
            return (flight.clone(), true);
        }
        let this = self.clone();
        let done = key.clone();
        // Its own task: it finishes (and stores what it got) even when
        // every caller has given up waiting.
        let task = tokio::spawn(async move {
            let outcome = work.await;
            this.flights.lock().unwrap().remove(&done);
            outcome
        });
        let flight = async move {
            task.await.unwrap_or_else(|e| {
                tracing::error!("provider call task: {e}");
                Err(Failure::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the provider call failed",
                ))
            })
        }
        .boxed()
        .shared();
        flights.insert(key, flight.clone());
        (flight, false)
    }

    /// Waits for `flight` until `deadline`: its outcome, or a 503.
    async fn wait(&self, flight: Flight, deadline: Instant, joined: bool) -> Outcome {
        match tokio::time::timeout_at(deadline.into(), flight).await {
            Ok(Ok((fresh, source))) => Ok((fresh, if joined { Source::Joined } else { source })),
            Ok(Err(failure)) => Err(failure),
            Err(_) => Err(waited_too_long(self.max_wait)),
        }
    }

    /// One provider call: the customer's lock is held by the caller; a
    /// request slot, the rate limiter, then the call, tried again after
    /// transient failures up to `max_attempts` times while the first
    /// caller still waits (`deadline`).
    async fn call<T, F>(
        &self,
        deadline: Instant,
        mut call: impl FnMut() -> F,
    ) -> Result<T, ProviderError>
    where
        F: std::future::Future<Output = Result<T, ProviderError>>,
    {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let result = {
                let _slot = self.slots.acquire().await;
                if let Some(limiter) = &self.limiter {
                    limiter.until_ready().await;
                }
                self.measured(call()).await
            };
            let e = match result {
                Ok(value) => return Ok(value),
                Err(e) => e,
            };
            let backoff = self
                .retry_base
                .saturating_mul(1 << (attempt - 1).min(16))
                .min(Duration::from_secs(30));
            let wait = match e.class() {
                ErrorClass::Transient { .. } => backoff,
                ErrorClass::RateLimited(wait) => wait.unwrap_or(backoff),
                ErrorClass::Permanent | ErrorClass::Auth => return Err(e),
            };
            if attempt >= self.max_attempts || Instant::now() + wait >= deadline {
                return Err(e);
            }
            tracing::debug!(
                "provider call failed ({}); trying again in {wait:?}",
                e.code()
            );
            tokio::time::sleep(wait).await;
        }
    }

    /// One provider request, measured.
    async fn measured<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, ProviderError>>,
    ) -> Result<T, ProviderError> {
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

    /// Regenerates the order's URL (`force=true`) and stores it; the flight
    /// of [`Kind::Url`].
    async fn regenerate(self: Arc<Self>, order: ServedOrder, deadline: Instant) -> Outcome {
        let _customer = self.hold_customer(&order, deadline).await?;
        // A run (or another order's call) may have refreshed it meanwhile.
        let id = order.site_order_identifier.clone();
        let order = self
            .db(move |s| s.served_order(&id))
            .await?
            .ok_or_else(|| unknown(&order.site_order_identifier))?;
        if let Some(min_validity_met) = self.servable(&order) {
            return Ok((
                Fresh::Url {
                    order,
                    min_validity_met,
                },
                Source::Db,
            ));
        }
        let pnm = order.pnm_order_identifier.clone();
        let params = [("pnm_order_identifier", pnm.as_str()), ("force", "true")];
        let result = self
            .call(deadline, || self.client.refresh_urls(&params))
            .await;
        let fresh = answered(result, &pnm)?;
        let url = fresh
            .embedded_js_url
            .clone()
            .ok_or_else(|| lacks("embedded_js_url"))?;
        let expires = self.expiry_of(fresh.embedded_js_url_expires_at.as_deref());
        let served = ServedOrder {
            embedded_js_url: Some(url.clone()),
            embedded_js_url_expires_at: Some(expires.clone()),
            ..order.clone()
        };
        let left = seconds_left(served.embedded_js_url_expires_at.as_deref()).unwrap_or(0);
        let min_validity_met = self.enough(left);
        {
            let mut short = self.short.lock().unwrap();
            if min_validity_met {
                short.remove(&pnm);
            } else {
                tracing::warn!(
                    pnm_order_identifier = pnm.as_str(),
                    seconds_left = left,
                    "the provider's new URL has less than --min-validity left; served as it is"
                );
                short.insert(pnm.clone(), url.clone());
            }
        }
        self.db(move |s| s.set_served_url(&order, &url, Some(&expires)))
            .await?;
        Ok((
            Fresh::Url {
                order: served,
                min_validity_met,
            },
            Source::Provider,
        ))
    }

    /// The expiry of a URL just regenerated: the provider's, verbatim, when
    /// it gave one that reads as RFC 3339; else the documented rule, 30
    /// minutes from now (said in the log once).
    fn expiry_of(&self, given: Option<&str>) -> String {
        if let Some(given) = given.filter(|g| chrono::DateTime::parse_from_rfc3339(g).is_ok()) {
            return given.to_string();
        }
        if !self.expiry_guessed.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                given = given.map(|g| g.chars().take(64).collect::<String>()),
                "the provider's refresh answer has no readable embedded_js_url_expires_at; \
                 taking the documented 30 minutes from regeneration (said once)"
            );
        }
        let at =
            chrono::Utc::now() + chrono::Duration::from_std(URL_LIFETIME).expect("30 minutes fit");
        at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    }

    /// Issues a smart token with the options of the order's run and stores
    /// it; the flight of [`Kind::Link`].
    async fn issue(self: Arc<Self>, order: ServedOrder, deadline: Instant) -> Outcome {
        let run_id = order.run_id;
        let options = self
            .db(move |s| s.run(run_id))
            .await?
            .and_then(|r| RunSpec::from_stored(&r.options).ok())
            .map_or_else(Vec::new, |spec| spec.token_options);
        let _customer = self.hold_customer(&order, deadline).await?;
        let pnm = order.pnm_order_identifier.clone();
        let mut params: Vec<(&str, &str)> = vec![("pnm_order_identifier", pnm.as_str())];
        params.extend(options.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let result = self
            .call(deadline, || self.client.smart_token(&params))
            .await;
        let fresh = answered(result, &pnm)?;
        let token = fresh
            .secure_smart_token
            .clone()
            .ok_or_else(|| lacks("secure_smart_token"))?;
        let link = fresh.secure_smart_link.clone();
        let (t, l) = (token.clone(), link.clone());
        self.db(move |s| s.set_served_token(&order, &t, l.as_deref()))
            .await?;
        Ok((Fresh::Link { token, link }, Source::Provider))
    }
}

/// The 503 of a caller that waited `--max-wait`.
fn waited_too_long(max_wait: Duration) -> Failure {
    Failure::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "busy",
        format!(
            "no answer from the provider within {}s; try again shortly",
            max_wait.as_secs_f64()
        ),
    )
    .retry_after(max_wait.as_secs().max(1))
}

/// A provider error as an answer: 503 with `Retry-After` when it may pass
/// (rate limited, down), 502 with the provider's code when it refused.
fn provider_error(e: &ProviderError) -> Failure {
    match e.class() {
        ErrorClass::RateLimited(wait) => Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "provider_rate_limited",
            "the provider asks us to slow down; try again later",
        )
        .retry_after(wait.map_or(1, |w| w.as_secs())),
        ErrorClass::Transient { .. } => Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "provider_unavailable",
            format!(
                "the provider did not answer usefully ({}); try again later",
                e.code()
            ),
        )
        .retry_after(5),
        ErrorClass::Permanent | ErrorClass::Auth => {
            Failure::new(StatusCode::BAD_GATEWAY, &e.code(), e.to_string())
        }
    }
}

/// The order `pnm` in the provider's answer, or the answer to give.
fn answered(result: Result<Vec<PnmOrder>, ProviderError>, pnm: &str) -> Result<PnmOrder, Failure> {
    result
        .map_err(|e| provider_error(&e))?
        .into_iter()
        .find(|o| o.pnm_order_identifier.as_deref() == Some(pnm))
        .ok_or_else(|| {
            Failure::new(
                StatusCode::BAD_GATEWAY,
                "order_not_found",
                "the provider's answer did not include this order",
            )
        })
}

/// A field the provider's answer should have held.
fn lacks(field: &str) -> Failure {
    Failure::new(
        StatusCode::BAD_GATEWAY,
        "unexpected_body",
        format!("the provider's answer has no {field}"),
    )
}

/// The order `id` names, for a caller with the right token.
async fn find(shared: &Arc<Shared>, id: &str, headers: &HeaderMap) -> Result<ServedOrder, Failure> {
    if !shared.authorized(headers) {
        return Err(unauthorized());
    }
    let key = id.to_string();
    shared
        .db(move |s| s.served_order(&key))
        .await?
        .ok_or_else(|| unknown(id))
}

/// What the log line and the metrics learn from a handler: the order (of
/// an authenticated caller only, bounded) and where the answer came from.
#[derive(Clone)]
struct Served {
    id: Option<String>,
    source: Option<Source>,
}

/// Gives `answer`, noting what [`record`] logs about it.
fn tag(
    shared: &Shared,
    headers: &HeaderMap,
    id: &str,
    (mut answer, source): (Response, Option<Source>),
) -> Response {
    let id = shared.authorized(headers).then(|| bounded(id));
    answer.extensions_mut().insert(Served { id, source });
    answer
}

/// The order identifier of the path, or a JSON 400 (e.g. bad UTF-8).
fn path_id(path: Result<Path<String>, PathRejection>) -> Result<String, Response> {
    path.map(|Path(id)| id).map_err(|_| {
        Failure::new(
            StatusCode::BAD_REQUEST,
            "bad_path",
            "the order identifier in the path is not valid percent-encoded UTF-8",
        )
        .response()
    })
}

/// `GET /v1/orders/{id}/embedded-js-url`.
async fn embedded_js_url(
    State(shared): State<Arc<Shared>>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Response {
    let started = Instant::now();
    let id = match path_id(path) {
        Ok(id) => id,
        Err(answer) => return answer,
    };
    let answered = url_answer(&shared, &id, &headers, started).await;
    tag(&shared, &headers, &id, answered)
}

fn url_ok(o: &ServedOrder, min_validity_met: bool) -> Response {
    Json(json!({
        "site_order_identifier": o.site_order_identifier,
        "pnm_order_identifier": o.pnm_order_identifier,
        "embedded_js_url": o.embedded_js_url,
        "embedded_js_url_expires_at": o.embedded_js_url_expires_at,
        "min_validity_met": min_validity_met,
    }))
    .into_response()
}

async fn url_answer(
    shared: &Arc<Shared>,
    id: &str,
    headers: &HeaderMap,
    started: Instant,
) -> (Response, Option<Source>) {
    let deadline = started + shared.max_wait;
    let order = match find(shared, id, headers).await {
        Ok(order) => order,
        Err(failure) => return (failure.response(), None),
    };
    if let Some(met) = shared.servable(&order) {
        return (url_ok(&order, met), Some(Source::Db));
    }
    let key = (Kind::Url, order.pnm_order_identifier.clone());
    let (flight, joined) = shared.flight(key, shared.clone().regenerate(order, deadline));
    match shared.wait(flight, deadline, joined).await {
        Ok((
            Fresh::Url {
                order,
                min_validity_met,
            },
            source,
        )) => (url_ok(&order, min_validity_met), Some(source)),
        Ok((Fresh::Link { .. }, _)) => unreachable!("a URL flight gives a URL"),
        Err(failure) => (failure.response(), Some(Source::Provider)),
    }
}

/// `GET /v1/orders/{id}/smart-link`: a fresh smart token, with the token
/// options of the run that holds the order; concurrent callers for one
/// order share one.
async fn smart_link(
    State(shared): State<Arc<Shared>>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Response {
    let started = Instant::now();
    let id = match path_id(path) {
        Ok(id) => id,
        Err(answer) => return answer,
    };
    let answered = link_answer(&shared, &id, &headers, started).await;
    tag(&shared, &headers, &id, answered)
}

async fn link_answer(
    shared: &Arc<Shared>,
    id: &str,
    headers: &HeaderMap,
    started: Instant,
) -> (Response, Option<Source>) {
    let deadline = started + shared.max_wait;
    let order = match find(shared, id, headers).await {
        Ok(order) => order,
        Err(failure) => return (failure.response(), None),
    };
    let key = (Kind::Link, order.pnm_order_identifier.clone());
    let (flight, joined) = shared.flight(key, shared.clone().issue(order, deadline));
    match shared.wait(flight, deadline, joined).await {
        Ok((Fresh::Link { token, link }, source)) => (
            Json(json!({"secure_smart_token": token, "secure_smart_link": link})).into_response(),
            Some(source),
        ),
        Ok((Fresh::Url { .. }, _)) => unreachable!("a link flight gives a link"),
        Err(failure) => (failure.response(), Some(Source::Provider)),
    }
}

fn unauthorized() -> Failure {
    Failure::new(
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        "send Authorization: Bearer <ORDERBATCH_SERVE_TOKEN>",
    )
}

fn unknown(id: &str) -> Failure {
    Failure::new(
        StatusCode::NOT_FOUND,
        "unknown_order",
        format!(
            "no order with site_order_identifier `{}` in this state database",
            bounded(id)
        ),
    )
}

fn internal(e: &StoreError) -> Failure {
    if e.is_busy() {
        tracing::warn!("state database busy: {e:#}");
        return Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "state_database_busy",
            "the state database is locked by another process; try again shortly",
        )
        .retry_after(1);
    }
    tracing::error!("state database: {e:#}");
    Failure::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "state_database",
        "the state database could not be read or written",
    )
}

/// Every request, whatever its route or answer: counted, and logged in
/// one line with its real method, the route it matched, and (for an
/// authenticated caller only, bounded) the order it named; no customer
/// data.
async fn record(
    State(shared): State<Arc<Shared>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let endpoint = match request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(axum::extract::MatchedPath::as_str)
    {
        Some("/healthz") => "healthz",
        Some("/metrics") => "metrics",
        Some("/v1/orders/{id}/embedded-js-url") => "embedded-js-url",
        Some("/v1/orders/{id}/smart-link") => "smart-link",
        _ => "unmatched",
    };
    let answer = next.run(request).await;
    let served = answer.extensions().get::<Served>().cloned();
    let (id, source) = served.map_or((None, None), |s| (s.id, s.source));
    let m = &shared.metrics;
    match source {
        Some(Source::Db) => m.served_from_db.fetch_add(1, Ordering::Relaxed),
        Some(Source::Joined) => m.joined.fetch_add(1, Ordering::Relaxed),
        _ => 0,
    };
    *m.requests
        .lock()
        .unwrap()
        .entry((endpoint, answer.status().as_u16()))
        .or_default() += 1;
    tracing::info!(
        method = %method,
        endpoint,
        site_order_identifier = id.as_deref().unwrap_or("-"),
        status = answer.status().as_u16(),
        latency_ms = started.elapsed().as_secs_f64() * 1000.0,
        source = match source {
            Some(Source::Db) => "db",
            Some(Source::Provider) => "refreshed",
            Some(Source::Joined) => "shared",
            None => "-",
        },
        "served"
    );
    answer
}

/// Any other path: a JSON 404.
async fn no_route() -> Response {
    Failure::new(StatusCode::NOT_FOUND, "no_route", "no such endpoint").response()
}

/// A known path with another method: a JSON 405.
async fn wrong_method() -> Response {
    let mut answer = Failure::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint answers GET (and HEAD) only",
    )
    .response();
    answer
        .headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
    answer
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /metrics`, Prometheus text format.
async fn metrics(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if !shared.authorized(&headers) {
        return unauthorized().response();
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
    out.push_str("# HELP orderbatch_serve_joined_total Requests answered by a provider call another request made.\n");
    out.push_str("# TYPE orderbatch_serve_joined_total counter\n");
    out.push_str(&format!(
        "orderbatch_serve_joined_total {}\n",
        m.joined.load(Ordering::Relaxed)
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
    limits: ConnectionLimits,
}

impl Links {
    /// Opens the database and binds `addr`.
    pub async fn bind(config: LinksConfig, addr: SocketAddr) -> Result<Links, LinksError> {
        let mut stores = Vec::with_capacity(CONNECTIONS);
        for _ in 0..CONNECTIONS {
            let store = Store::open_existing(&config.db)?;
            store.set_busy_timeout(BUSY_TIMEOUT)?;
            stores.push(Mutex::new(store));
        }
        let shared = Arc::new(Shared {
            stores,
            next: AtomicU64::new(0),
            client: config.client,
            limiter: config
                .rate
                .map(|r| RateLimiter::direct(crate::pipeline::quota(r))),
            slots: tokio::sync::Semaphore::new(config.concurrency.max(1)),
            max_attempts: config.max_attempts.max(1),
            retry_base: config.retry_base,
            max_wait: config.max_wait,
            customers: CustomerLocks::of(&config.db),
            flights: Mutex::new(HashMap::new()),
            short: Mutex::new(HashMap::new()),
            token: config.token,
            min_validity: config.min_validity,
            expiry_guessed: Default::default(),
            metrics: Metrics::default(),
        });
        let app = Router::new()
            .route("/healthz", get(healthz))
            .route("/metrics", get(metrics))
            .route("/v1/orders/{id}/embedded-js-url", get(embedded_js_url))
            .route("/v1/orders/{id}/smart-link", get(smart_link))
            .fallback(no_route)
            .method_not_allowed_fallback(wrong_method)
            .layer(axum::middleware::from_fn_with_state(shared.clone(), record))
            .with_state(shared);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| LinksError::Bind { addr, source })?;
        Ok(Links {
            listener,
            app,
            limits: config.limits,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then lets requests in flight
    /// finish for up to `shutdown_timeout` and closes what is left.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let Links {
            listener,
            app,
            limits,
        } = self;
        let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
        let (closing, closing_rx) = tokio::sync::watch::channel(false);
        let mut connections = tokio::task::JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            // A slot first: past the limit, connections wait in the
            // kernel's backlog and cost this process no descriptor.
            let slot = tokio::select! {
                _ = &mut shutdown => break,
                slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            };
            let stream = tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of descriptors, or a connection reset before
                        // it was taken: wait a little rather than spin.
                        tracing::warn!("accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let service = hyper_util::service::TowerToHyperService::new(app.clone());
            let mut closing = closing_rx.clone();
            connections.spawn(async move {
                let _slot = slot;
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(limits.idle_timeout)
                    .keep_alive(true);
                let connection =
                    builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                tokio::pin!(connection);
                let done = tokio::select! {
                    done = connection.as_mut() => done,
                    _ = closing.changed() => {
                        connection.as_mut().graceful_shutdown();
                        connection.await
                    }
                };
                if let Err(e) = done {
                    tracing::debug!("connection closed: {e}");
                }
            });
            while connections.try_join_next().is_some() {}
        }
        drop(listener);
        let _ = closing.send(true);
        let drained = tokio::time::timeout(limits.shutdown_timeout, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                open = connections.len(),
                "connections still open {}s after the stop signal; closing them",
                limits.shutdown_timeout.as_secs_f64()
            );
            connections.shutdown().await;
        }
        Ok(())
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
        let answer = provider_error(&refused).response();
        assert_eq!(answer.status(), StatusCode::BAD_GATEWAY);
        let limited = ProviderError::RateLimited {
            endpoint: "refresh_embedded_js_urls",
            retry_after: Some(Duration::from_secs(7)),
        };
        let answer = provider_error(&limited).response();
        assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(answer.headers()[header::RETRY_AFTER], "7");
        let down = ProviderError::Api {
            endpoint: "refresh_embedded_js_urls",
            status: 503,
            code: "http_503".into(),
            description: String::new(),
        };
        let answer = provider_error(&down).response();
        assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(answer.headers().contains_key(header::RETRY_AFTER));
    }
}
