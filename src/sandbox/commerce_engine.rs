//! The Commerce Engine part of the sandbox: anonymous and refresh auth with
//! short-lived access tokens, payment status, and retry-payment with the
//! 15-minute rule. Orders are seeded by tests (`POST /__sandbox/ce/orders`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use rand::Rng;
use secrecy::ExposeSecret;
use serde_json::{json, Value};

use super::paynearme::{chance, dropped};
use super::Shared;

/// Seconds after a payment request before another may be made.
const RETRY_WINDOW_SECS: i64 = 15 * 60;

/// One storefront order.
#[derive(Debug, Clone)]
struct CeOrder {
    status: String,
    /// When the last payment request was made (sandbox clock).
    last_request_at: i64,
    retries: u32,
    payments: Vec<Value>,
    /// Payment attempts as `GET .../payments` lists them: request number,
    /// when (sandbox clock), status.
    attempts: Vec<(String, i64, String)>,
}

/// In-memory Commerce Engine state.
#[derive(Debug, Default)]
pub struct CeState {
    orders: BTreeMap<String, CeOrder>,
    access: HashMap<String, Instant>,
    refresh: HashSet<String>,
    requests: BTreeMap<String, u64>,
    too_early: u64,
    clock_offset_secs: i64,
}

type Answer = (StatusCode, Json<Value>);

fn fail(status: StatusCode, code: &str, message: impl Into<String>) -> Answer {
    (
        status,
        Json(json!({"message": message.into(), "success": false, "code": code})),
    )
}

fn ok(content: Value) -> Answer {
    (
        StatusCode::OK,
        Json(json!({"message": "ok", "success": true, "content": content})),
    )
}

fn rfc3339(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl CeState {
    fn now(&self) -> i64 {
        chrono::Utc::now().timestamp() + self.clock_offset_secs
    }

    /// Moves the sandbox clock forward.
    pub fn age(&mut self, seconds: i64) {
        self.clock_offset_secs += seconds;
    }

    fn issue_tokens(&mut self, shared: &Shared) -> Value {
        let mut rng = shared.rng.lock().unwrap();
        let access = format!("cea_{:016x}", rng.random::<u64>());
        let refresh = format!("cer_{:016x}", rng.random::<u64>());
        drop(rng);
        self.access
            .insert(access.clone(), Instant::now() + shared.config.ce_token_ttl);
        self.refresh.insert(refresh.clone());
        json!({"access_token": access, "refresh_token": refresh})
    }

    fn retry_available(&self, order: &CeOrder) -> bool {
        order.status == "failed"
            || (order.status != "success"
                && self.now() >= order.last_request_at + RETRY_WINDOW_SECS)
    }

    pub fn to_json(&self) -> Value {
        let orders: Vec<Value> = self
            .orders
            .iter()
            .map(|(n, o)| {
                json!({"order_number": n, "status": o.status, "retries": o.retries,
                       "last_request_at": rfc3339(o.last_request_at), "payments": o.payments})
            })
            .collect();
        json!({"orders": orders, "requests": self.requests, "too_early": self.too_early})
    }
}

/// Faults on the storefront endpoints, as on PayNearMe's: the latency, a
/// `500` before any work (`--fail-rate`), and the connection closed after
/// the work is done (`--drop-rate`). Counted as `fault:failed` and
/// `fault:dropped` among the requests.
pub(crate) async fn faults(
    State(shared): State<Arc<Shared>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if let Some((min, max)) = shared.config.latency_ms {
        let ms = shared.rng.lock().unwrap().random_range(min..=max.max(min));
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    let endpoint = request
        .uri()
        .path()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    // `--poison-customer` names an order here (the storefront has no
    // customers): every request about it fails.
    let segments: Vec<&str> = request.uri().path().split('/').collect();
    let poisoned = segments
        .windows(2)
        .any(|w| w[0] == "orders" && shared.poisoned(Some(w[1])));
    if poisoned {
        count(&shared, "fault:poisoned");
        return fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "injected failure (poisoned order)",
        )
        .into_response();
    }
    if shared.faults_apply(&endpoint) && chance(&shared, shared.fail_rate()) {
        count(&shared, "fault:failed");
        return fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "injected failure",
        )
        .into_response();
    }
    let response = next.run(request).await;
    if shared.faults_apply(&endpoint) && chance(&shared, shared.drop_rate()) {
        count(&shared, "fault:dropped");
        return dropped();
    }
    response
}

fn count(shared: &Shared, name: &str) {
    *shared
        .ce
        .lock()
        .unwrap()
        .requests
        .entry(name.to_string())
        .or_default() += 1;
}

fn check_store(shared: &Shared, store: &str) -> Result<(), Answer> {
    if store == shared.config.ce_store_id {
        Ok(())
    } else {
        Err(fail(
            StatusCode::NOT_FOUND,
            "store_not_found",
            format!("no store {store}"),
        ))
    }
}

fn bearer_ok(shared: &Shared, headers: &HeaderMap) -> Result<(), Answer> {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let ce = shared.ce.lock().unwrap();
    match ce.access.get(token) {
        Some(expires) if *expires > Instant::now() => Ok(()),
        _ => Err(fail(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "access token missing, unknown or expired",
        )),
    }
}

/// `POST .../auth/anonymous`.
pub(crate) async fn anonymous(
    State(shared): State<Arc<Shared>>,
    Path(store): Path<String>,
    headers: HeaderMap,
) -> Answer {
    count(&shared, "auth/anonymous");
    if let Err(a) = check_store(&shared, &store) {
        return a;
    }
    let key = headers
        .get("X-Api-Key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if key != shared.config.ce_api_key.expose_secret() {
        return fail(
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
            "X-Api-Key is not valid for this store",
        );
    }
    let tokens = shared.ce.lock().unwrap().issue_tokens(&shared);
    ok(tokens)
}

/// `POST .../auth/refresh-token`.
pub(crate) async fn refresh(
    State(shared): State<Arc<Shared>>,
    Path(store): Path<String>,
    body: Bytes,
) -> Answer {
    count(&shared, "auth/refresh-token");
    if let Err(a) = check_store(&shared, &store) {
        return a;
    }
    let token = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| {
            v.get("refresh_token")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_default();
    let mut ce = shared.ce.lock().unwrap();
    if !ce.refresh.remove(&token) {
        return fail(
            StatusCode::UNAUTHORIZED,
            "invalid_refresh_token",
            "refresh token unknown or used",
        );
    }
    let tokens = ce.issue_tokens(&shared);
    ok(tokens)
}

/// An authorised read of one order: counts `name`, checks the store and the
/// token, then answers with `read` of the order (404 when unknown).
fn read_order(
    shared: &Shared,
    name: &str,
    (store, number): (String, String),
    headers: &HeaderMap,
    read: impl FnOnce(&CeState, &CeOrder) -> Value,
) -> Answer {
    count(shared, name);
    if let Err(a) = check_store(shared, &store).and_then(|_| bearer_ok(shared, headers)) {
        return a;
    }
    let ce = shared.ce.lock().unwrap();
    match ce.orders.get(&number) {
        Some(order) => ok(read(&ce, order)),
        None => fail(
            StatusCode::NOT_FOUND,
            "order_not_found",
            format!("Order {number} not found"),
        ),
    }
}

/// `GET .../orders/{n}/payment-status`.
pub(crate) async fn payment_status(
    State(shared): State<Arc<Shared>>,
    Path(order): Path<(String, String)>,
    headers: HeaderMap,
) -> Answer {
    read_order(&shared, "payment-status", order, &headers, |ce, order| {
        let paid = order.status == "success";
        // Numbers, as the storefront SDK's OpenAPI types say (format: double).
        json!({
            "status": order.status,
            "amount_paid": if paid { 10.0 } else { 0.0 },
            "amount_unpaid": if paid { 0.0 } else { 10.0 },
            "is_retry_available": ce.retry_available(order),
        })
    })
}

/// `GET .../orders/{n}/payments`: the order's payment attempts, oldest
/// first, as the SDK's `list-order-payments` (`PaymentInfo` fields).
pub(crate) async fn payments(
    State(shared): State<Arc<Shared>>,
    Path(order): Path<(String, String)>,
    headers: HeaderMap,
) -> Answer {
    read_order(&shared, "payments", order, &headers, |_, order| {
        let attempts: Vec<Value> = order
            .attempts
            .iter()
            .map(|(request_number, at, status)| {
                json!({
                    "transaction_type": "payment",
                    "request_number": request_number,
                    "amount": 10.0,
                    "payment_status": status,
                    "payment_date": rfc3339(*at),
                    "payment_method": "upi",
                })
            })
            .collect();
        json!({ "payments": attempts })
    })
}

/// `POST .../orders/{n}/retry-payment`.
pub(crate) async fn retry_payment(
    State(shared): State<Arc<Shared>>,
    Path((store, number)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    count(&shared, "retry-payment");
    if let Err(a) = check_store(&shared, &store).and_then(|_| bearer_ok(&shared, &headers)) {
        return a;
    }
    let method = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("payment_method").cloned());
    let mut ce = shared.ce.lock().unwrap();
    let now = ce.now();
    let Some(order) = ce.orders.get(&number).cloned() else {
        return fail(
            StatusCode::NOT_FOUND,
            "order_not_found",
            format!("Order {number} not found"),
        );
    };
    if order.status == "success" {
        return fail(StatusCode::BAD_REQUEST, "already_paid", "the order is paid");
    }
    if !ce.retry_available(&order) {
        ce.too_early += 1;
        return fail(
            StatusCode::BAD_REQUEST,
            "retry_too_early",
            format!(
                "retry-payment is allowed from {} (15 minutes after the last payment request)",
                rfc3339(order.last_request_at + RETRY_WINDOW_SECS)
            ),
        );
    }
    let id = format!("pay_{}_{}", number, order.retries + 1);
    let payment = json!({
        "id": id,
        "status": "pending",
        "order_id": number,
        "payment_links": {"web": format!("https://sandbox.orderbatch.test/ce/pay/{id}"), "expiry": rfc3339(now + RETRY_WINDOW_SECS)},
        "payment_method": method,
    });
    let entry = ce.orders.get_mut(&number).expect("order exists");
    entry.status = "pending".into();
    entry.last_request_at = now;
    entry.retries += 1;
    entry.payments.push(payment.clone());
    entry
        .attempts
        .push((id.clone(), now, "pending".to_string()));
    ok(json!({"payment_info": payment, "order_expiry": rfc3339(now + 86_400)}))
}

/// `POST /__sandbox/ce/orders [{"order_number", "status", "last_request_seconds_ago"}]`.
pub(crate) async fn seed(State(shared): State<Arc<Shared>>, body: Bytes) -> Answer {
    let Ok(Value::Array(items)) = serde_json::from_slice::<Value>(&body) else {
        return fail(
            StatusCode::BAD_REQUEST,
            "invalid_seed",
            "body must be a JSON list of orders",
        );
    };
    let mut ce = shared.ce.lock().unwrap();
    let now = ce.now();
    for item in items {
        let Some(number) = item.get("order_number").and_then(Value::as_str) else {
            return fail(
                StatusCode::BAD_REQUEST,
                "invalid_seed",
                "order_number is required",
            );
        };
        let ago = item
            .get("last_request_seconds_ago")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        ce.orders.insert(
            number.to_string(),
            CeOrder {
                status: item
                    .get("status")
                    .and_then(Value::as_str)
                    .unwrap_or("pending")
                    .to_string(),
                last_request_at: now - ago,
                retries: 0,
                payments: Vec::new(),
                attempts: vec![(
                    format!("req_{number}_0"),
                    now - ago,
                    item.get("status")
                        .and_then(Value::as_str)
                        .unwrap_or("pending")
                        .to_string(),
                )],
            },
        );
    }
    ok(json!({"orders": ce.orders.len()}))
}
