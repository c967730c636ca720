//! A local stand-in for the provider API, for rehearsals and tests.
//!
//! It is a real HTTP server (axum) with in-memory state; tests start it on
//! `127.0.0.1:0` and read its state back through [`SandboxHandle::state`] or
//! `GET /__sandbox/state`.

mod commerce_engine;
mod oauth;
mod paynearme;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::routing::{get, post};
use axum::Router;
use rand::rngs::StdRng;
use rand::SeedableRng;
use secrecy::SecretString;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub use paynearme::PnmState;

/// How the sandbox behaves.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    pub site_identifier: String,
    pub secret: SecretString,
    /// Each request waits a random time in this range (milliseconds) while it
    /// holds its customer, so overlapping requests can be seen.
    pub latency_ms: Option<(u64, u64)>,
    /// Answer `409 customer_busy` to a request for a customer that already has
    /// one in flight (overlaps are counted either way).
    pub strict_serial: bool,
    /// Seed for everything random the sandbox does.
    pub seed: u64,
    /// Share of requests answered `500` before anything is done.
    pub fail_rate: f64,
    /// Share of requests whose work is done but whose connection is then
    /// closed without an answer.
    pub drop_rate: f64,
    /// Requests per second above which the answer is `429` with `Retry-After`.
    pub rate_limit: Option<u32>,
    /// Commerce Engine store served under `/api/v1/{store}/storefront`.
    pub ce_store_id: String,
    /// Commerce Engine key accepted by `auth/anonymous`.
    pub ce_api_key: SecretString,
    /// How long a Commerce Engine access token lives.
    pub ce_token_ttl: std::time::Duration,
    /// When set, signed requests must carry this `api_key_id`.
    pub api_key_id: Option<String>,
    /// OAuth client id `POST /oauth/token` accepts.
    pub client_id: String,
    /// OAuth client secret `POST /oauth/token` accepts.
    pub client_secret: SecretString,
    /// How long an OAuth access token lives.
    pub token_lifetime: std::time::Duration,
    /// Refuse requests without a Bearer token (`401 oauth_required`).
    pub oauth_only: bool,
    /// Smart tokens that begin with `-` `=` `+` `@` and hold a comma and
    /// quotes; URLs with commas, quotes and a line break.
    pub hostile_values: bool,
    /// Every request for this site customer answers 500 (a customer in
    /// trouble, for tests and benchmarks).
    pub poison_customer: Option<String>,
    /// Fields `find_orders` leaves out of the orders it returns (a lookup
    /// that does not show every field `change_order` can set).
    pub lookup_hides: Vec<String>,
}

impl SandboxConfig {
    /// A sandbox that accepts these credentials and injects nothing.
    pub fn new(site_identifier: impl Into<String>, secret: SecretString) -> Self {
        SandboxConfig {
            site_identifier: site_identifier.into(),
            secret,
            latency_ms: None,
            strict_serial: false,
            seed: 0,
            fail_rate: 0.0,
            drop_rate: 0.0,
            rate_limit: None,
            ce_store_id: "store_1".into(),
            ce_api_key: SecretString::from("ce-sandbox-key"),
            ce_token_ttl: std::time::Duration::from_secs(3600),
            api_key_id: None,
            client_id: "sandbox-client".into(),
            client_secret: SecretString::from("sandbox-client-secret"),
            token_lifetime: std::time::Duration::from_secs(3600),
            oauth_only: false,
            hostile_values: false,
            poison_customer: None,
            lookup_hides: Vec::new(),
        }
    }
}

/// Everything the handlers share.
pub(crate) struct Shared {
    pub config: SandboxConfig,
    pub pnm: Mutex<PnmState>,
    pub ce: Mutex<commerce_engine::CeState>,
    pub oauth: Mutex<oauth::OAuthState>,
    pub rng: Mutex<StdRng>,
    /// When the requests of the last second arrived (for `rate_limit`).
    pub window: Mutex<std::collections::VecDeque<std::time::Instant>>,
    /// `fail_rate` now (`POST /__sandbox/faults` changes it, e.g. for an
    /// outage in the middle of a test).
    pub fail_rate: Mutex<f64>,
    /// `drop_rate` now (as `fail_rate`).
    pub drop_rate: Mutex<f64>,
    /// When set, faults hit only this endpoint (e.g. `retry-payment`).
    pub faults_only: Mutex<Option<String>>,
    /// `poison_customer` now (`POST /__sandbox/faults {"poison": ...}`).
    pub poison: Mutex<Option<String>>,
    /// Milliseconds every PayNearMe request (as `faults_only` says) waits
    /// before anything else, failures included (`POST /__sandbox/faults
    /// {"delay_ms": N}`; a provider that is slow or hangs).
    pub delay_ms: Mutex<u64>,
    /// How many more requests `delay_ms` holds (`{"delay_next": N}`; none:
    /// every request).
    pub delay_left: Mutex<Option<u64>>,
    /// `rate_limit` now (`POST /__sandbox/faults {"rate_limit": N}`, 0: none).
    pub rate_limit: Mutex<Option<u32>>,
}

impl Shared {
    pub fn fail_rate(&self) -> f64 {
        *self.fail_rate.lock().unwrap()
    }

    pub fn drop_rate(&self) -> f64 {
        *self.drop_rate.lock().unwrap()
    }

    /// Whether every request about `customer` (a site customer, or a
    /// Commerce Engine order) fails now.
    pub fn poisoned(&self, customer: Option<&str>) -> bool {
        customer.is_some() && self.poison.lock().unwrap().as_deref() == customer
    }

    /// How long this request waits before anything else (`delay_ms`, for
    /// the next `delay_next` requests when that is set).
    pub fn delay(&self) -> std::time::Duration {
        let mut left = self.delay_left.lock().unwrap();
        match left.as_mut() {
            Some(0) => return std::time::Duration::ZERO,
            Some(n) => *n -= 1,
            None => {}
        }
        std::time::Duration::from_millis(*self.delay_ms.lock().unwrap())
    }

    /// Whether injected faults hit `endpoint` (the last path segment).
    pub fn faults_apply(&self, endpoint: &str) -> bool {
        self.faults_only
            .lock()
            .unwrap()
            .as_deref()
            .is_none_or(|only| only == endpoint)
    }
}

/// `POST /__sandbox/faults {"fail_rate": 0..1, "drop_rate": 0..1, "only":
/// "endpoint", "poison": "customer", "delay_ms": N, "delay_next": N, "url_expiry":
/// "omit"|"garbled"|"rfc3339", "rate_limit": N}` (any of them): changes the faults of a
/// running sandbox; `only` limits them to one endpoint (`""` lifts the
/// limit); `poison` fails every request about one customer (`""`: none).
async fn faults_handler(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
    body: axum::body::Bytes,
) -> (axum::http::StatusCode, axum::Json<serde_json::Value>) {
    let body = serde_json::from_slice::<serde_json::Value>(&body).unwrap_or_default();
    let share = |name: &str| {
        body.get(name)
            .and_then(serde_json::Value::as_f64)
            .filter(|r| (0.0..=1.0).contains(r))
    };
    let (fail, drop) = (share("fail_rate"), share("drop_rate"));
    let only = body.get("only").and_then(serde_json::Value::as_str);
    let poison = body.get("poison").and_then(serde_json::Value::as_str);
    if let Some(poison) = poison {
        *shared.poison.lock().unwrap() = (!poison.is_empty()).then(|| poison.to_string());
    }
    let delay = body.get("delay_ms").and_then(serde_json::Value::as_u64);
    let expiry = body.get("url_expiry").and_then(serde_json::Value::as_str);
    if let Some(expiry) = expiry {
        shared.pnm.lock().unwrap().url_expiry =
            (!expiry.is_empty() && expiry != "rfc3339").then(|| expiry.to_string());
    }
    if let Some(delay) = delay {
        *shared.delay_ms.lock().unwrap() = delay;
        *shared.delay_left.lock().unwrap() =
            body.get("delay_next").and_then(serde_json::Value::as_u64);
    }
    let rate_limit = body.get("rate_limit").and_then(serde_json::Value::as_u64);
    if let Some(limit) = rate_limit {
        *shared.rate_limit.lock().unwrap() = u32::try_from(limit).ok().filter(|l| *l > 0);
    }
    if let Some(only) = only {
        *shared.faults_only.lock().unwrap() = (!only.is_empty()).then(|| only.to_string());
    }
    if fail.is_none()
        && drop.is_none()
        && only.is_none()
        && poison.is_none()
        && delay.is_none()
        && expiry.is_none()
        && rate_limit.is_none()
    {
        return (
            axum::http::StatusCode::BAD_REQUEST,
            axum::Json(serde_json::json!({"status":"error","errors":[{
                "code":"invalid_parameter",
                "description":"body must name fail_rate and/or drop_rate, each 0..1"}]})),
        );
    }
    if let Some(rate) = fail {
        *shared.fail_rate.lock().unwrap() = rate;
    }
    if let Some(rate) = drop {
        *shared.drop_rate.lock().unwrap() = rate;
    }
    (
        axum::http::StatusCode::OK,
        axum::Json(serde_json::json!({"status":"ok"})),
    )
}

/// A running sandbox.
pub struct SandboxHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl SandboxHandle {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL to give the client.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The OAuth token endpoint's URL.
    pub fn token_url(&self) -> String {
        format!("http://{}/oauth/token", self.addr)
    }

    /// Its state as JSON, the same document `GET /__sandbox/state` returns.
    pub fn state(&self) -> serde_json::Value {
        paynearme::state_json(&self.shared)
    }

    /// Stops serving and waits for the server task.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }

    /// Serves until the process is stopped.
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// Binds `addr` and starts serving in the background.
pub async fn start(config: SandboxConfig, addr: SocketAddr) -> std::io::Result<SandboxHandle> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let hostile_values = config.hostile_values;
    let shared = Arc::new(Shared {
        rng: Mutex::new(StdRng::seed_from_u64(config.seed)),
        window: Mutex::new(std::collections::VecDeque::new()),
        fail_rate: Mutex::new(config.fail_rate),
        drop_rate: Mutex::new(config.drop_rate),
        faults_only: Mutex::new(None),
        poison: Mutex::new(config.poison_customer.clone()),
        delay_ms: Mutex::new(0),
        delay_left: Mutex::new(None),
        rate_limit: Mutex::new(config.rate_limit),
        config,
        pnm: Mutex::new(PnmState::new(hostile_values)),
        ce: Mutex::new(commerce_engine::CeState::default()),
        oauth: Mutex::new(oauth::OAuthState::default()),
    });
    let storefront = Router::new()
        .route(
            "/api/v1/{store}/storefront/auth/anonymous",
            post(commerce_engine::anonymous),
        )
        .route(
            "/api/v1/{store}/storefront/auth/refresh-token",
            post(commerce_engine::refresh),
        )
        .route(
            "/api/v1/{store}/storefront/orders/{number}/payment-status",
            get(commerce_engine::payment_status),
        )
        .route(
            "/api/v1/{store}/storefront/orders/{number}/retry-payment",
            post(commerce_engine::retry_payment),
        )
        .route(
            "/api/v1/{store}/storefront/orders/{number}/payments",
            get(commerce_engine::payments),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            commerce_engine::faults,
        ));
    let app = Router::new()
        .route("/json-api/{endpoint}", post(paynearme::handle))
        .route("/oauth/token", post(oauth::token))
        .route("/__sandbox/oauth/revoke", post(oauth::revoke))
        .route("/__sandbox/state", get(paynearme::state_handler))
        .route("/__sandbox/counters", get(paynearme::counters_handler))
        .route("/__sandbox/age", post(paynearme::age_handler))
        .route("/__sandbox/faults", post(faults_handler))
        .route("/__sandbox/ce/orders", post(commerce_engine::seed))
        .merge(storefront)
        .with_state(shared.clone());
    let (stop_tx, stop_rx) = oneshot::channel();
    let task = tokio::spawn(async move {
        let server = axum::serve(listener, app).with_graceful_shutdown(async {
            let _ = stop_rx.await;
        });
        if let Err(e) = server.await {
            tracing::error!("sandbox server stopped: {e}");
        }
    });
    Ok(SandboxHandle {
        addr,
        shared,
        stop: Some(stop_tx),
        task,
    })
}
