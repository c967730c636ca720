//! The PayNearMe part of the sandbox: signed form or JSON requests,
//! in-memory orders, URL expiry, paging, and counters for tests.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use rand::Rng;
use serde_json::{json, Map, Value};

use super::oauth::{check_bearer, Caller};
use super::Shared;
use crate::money::Amount;
use crate::provider::paynearme::sign::verify;

/// How long an embedded JS URL lives.
const URL_LIFETIME_SECS: i64 = 30 * 60;
/// Accepted clock skew for `timestamp`.
const MAX_SKEW_SECS: i64 = 300;
/// Parameters every request carries; not part of an order.
const TRANSPORT: &[&str] = &[
    "site_identifier",
    "timestamp",
    "version",
    "api_key_id",
    "signature",
];
/// Selectors that name orders.
const SELECTORS: &[&str] = &[
    "pnm_order_identifier",
    "site_order_identifier",
    "pnm_customer_identifier",
    "site_customer_identifier",
];

/// One order held by the sandbox.
#[derive(Debug, Clone)]
struct Order {
    pnm_order_identifier: String,
    pnm_customer_identifier: String,
    /// Every parameter it was created or changed with, byte-exact.
    fields: BTreeMap<String, String>,
    embedded_js_url: String,
    url_expires_at: i64,
    url_generations: u32,
    smart_token: Option<String>,
    smart_link: Option<String>,
    token_options: BTreeMap<String, String>,
    changes: u32,
}

/// In-memory PayNearMe state.
#[derive(Debug, Default)]
pub struct PnmState {
    orders: Vec<Order>,
    by_pnm: HashMap<String, usize>,
    by_site_order: HashMap<String, Vec<usize>>,
    by_customer: HashMap<String, Vec<usize>>,
    pnm_customers: HashMap<String, String>,
    in_flight: HashSet<String>,
    requests: BTreeMap<String, u64>,
    url_regenerations: u64,
    duplicates: u64,
    overlaps: u64,
    rejected_auth: u64,
    clock_offset_secs: i64,
    faults: Faults,
    /// Requests answered (not 429) per wall-clock second, for rate checks.
    per_second: BTreeMap<i64, u64>,
    /// Issue values that spreadsheets and CSV writers trip on.
    hostile_values: bool,
    /// How refresh answers give `embedded_js_url_expires_at`: RFC 3339
    /// (`None`), or `"omit"` / `"garbled"` (a provider that leaves it out
    /// or writes it otherwise; `POST /__sandbox/faults {"url_expiry": …}`).
    pub(crate) url_expiry: Option<String>,
}

/// Faults the sandbox injected, for tests.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
struct Faults {
    failed: u64,
    dropped: u64,
    rate_limited: u64,
    poisoned: u64,
}

type Answer = (StatusCode, Json<Value>);

fn error(status: StatusCode, code: &str, description: impl Into<String>) -> Answer {
    (
        status,
        Json(json!({"status":"error","errors":[{"code":code,"description":description.into()}]})),
    )
}

fn invalid(description: impl Into<String>) -> Answer {
    error(StatusCode::BAD_REQUEST, "invalid_parameter", description)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn rfc3339(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Reads a form or flat JSON object body into key/value pairs.
fn parse_body(headers: &HeaderMap, body: &[u8]) -> Result<Vec<(String, String)>, Answer> {
    let is_json = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !is_json {
        return serde_urlencoded::from_bytes(body)
            .map_err(|e| invalid(format!("body is not form-encoded: {e}")));
    }
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) else {
        return Err(invalid("body is not a JSON object"));
    };
    Ok(map
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) => s,
                other => other.to_string(),
            };
            (k, v)
        })
        .collect())
}

/// Site, version and timestamp checks, then the signature (and
/// `api_key_id` when one is configured) unless a Bearer token vouched for
/// the request, in which case it must carry neither.
fn authenticate(
    shared: &Shared,
    params: &[(String, String)],
    caller: &Caller,
) -> Result<(), Answer> {
    let get = |k: &str| {
        params
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    let unauthorized = |code, what: &str| error(StatusCode::UNAUTHORIZED, code, what);
    if get("site_identifier") != Some(shared.config.site_identifier.as_str()) {
        return Err(unauthorized("unknown_site", "unknown site_identifier"));
    }
    if get("version") != Some("3.0") {
        return Err(invalid("version must be 3.0"));
    }
    let fresh = get("timestamp")
        .and_then(|t| t.parse::<i64>().ok())
        .is_some_and(|t| (unix_now() - t).abs() <= MAX_SKEW_SECS);
    if !fresh {
        return Err(unauthorized(
            "stale_timestamp",
            "timestamp is missing or more than 300 seconds from the server's clock",
        ));
    }
    if let Caller::Bearer = caller {
        if get("signature").is_some() || get("api_key_id").is_some() {
            return Err(invalid(
                "a request with a Bearer token carries no signature and no api_key_id",
            ));
        }
        return Ok(());
    }
    if let Some(expected) = &shared.config.api_key_id {
        if get("api_key_id") != Some(expected.as_str()) {
            return Err(unauthorized(
                "invalid_api_key_id",
                "api_key_id does not match",
            ));
        }
    }
    let signature = get("signature").unwrap_or_default();
    let signed: Vec<(&str, &str)> = params
        .iter()
        .filter(|(k, _)| k != "signature")
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    if !verify(&signed, &shared.config.secret, signature) {
        return Err(unauthorized(
            "invalid_signature",
            "signature does not match",
        ));
    }
    Ok(())
}

/// Removes the customer from the in-flight set when the request ends.
struct InFlight<'a> {
    shared: &'a Shared,
    customer: Option<String>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.customer.take() {
            self.shared.pnm.lock().unwrap().in_flight.remove(&c);
        }
    }
}

/// Whether this request is over the configured rate: at most `limit`
/// answered requests in any one-second window. Returns the wait if it is.
fn over_rate(shared: &Shared, limit: u32) -> Option<Duration> {
    let now = Instant::now();
    let mut window = shared.window.lock().unwrap();
    while window
        .front()
        .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
    {
        window.pop_front();
    }
    if window.len() >= limit as usize {
        let oldest = *window.front().expect("window is full");
        return Some(Duration::from_secs(1).saturating_sub(now.duration_since(oldest)));
    }
    window.push_back(now);
    None
}

/// An answer whose connection is closed before its body is complete: the
/// client cannot tell whether the work was done.
pub(crate) fn dropped() -> Response {
    let failing = futures_util::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::other("sandbox dropped the connection"))
    });
    (StatusCode::OK, Body::from_stream(failing)).into_response()
}

pub(crate) fn chance(shared: &Shared, p: f64) -> bool {
    p > 0.0 && shared.rng.lock().unwrap().random_bool(p.min(1.0))
}

/// `POST /json-api/{endpoint}`.
pub(crate) async fn handle(
    State(shared): State<Arc<Shared>>,
    Path(endpoint): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // Like a real provider, a request goes on to its end when its client
    // stops waiting (a timeout, a dropped connection): its work is its own
    // task, not the connection's.
    tokio::spawn(answer(shared, endpoint, headers, body))
        .await
        .unwrap_or_else(|_| {
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "the sandbox failed",
            )
            .into_response()
        })
}

/// One request, from its count to its answer (faults included).
async fn answer(
    shared: Arc<Shared>,
    endpoint: String,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    *shared
        .pnm
        .lock()
        .unwrap()
        .requests
        .entry(endpoint.clone())
        .or_default() += 1;
    if shared.faults_apply(&endpoint) {
        let delay = shared.delay();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }
    let rate_limit = *shared.rate_limit.lock().unwrap();
    if let Some(wait) = rate_limit.and_then(|l| over_rate(&shared, l)) {
        shared.pnm.lock().unwrap().faults.rate_limited += 1;
        let (status, body) = error(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "slow down");
        let retry_after = format!("{:.3}", wait.as_secs_f64().max(0.001));
        return (status, [(header::RETRY_AFTER, retry_after)], body).into_response();
    }
    *shared
        .pnm
        .lock()
        .unwrap()
        .per_second
        .entry(unix_now())
        .or_default() += 1;
    if shared.faults_apply(&endpoint) && chance(&shared, shared.fail_rate()) {
        shared.pnm.lock().unwrap().faults.failed += 1;
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "injected failure",
        )
        .into_response();
    }
    let answer = serve(&shared, &endpoint, &headers, &body).await;
    if shared.faults_apply(&endpoint) && chance(&shared, shared.drop_rate()) {
        shared.pnm.lock().unwrap().faults.dropped += 1;
        return dropped();
    }
    answer
}

/// Authenticates, holds the customer, waits the latency, then does the work.
async fn serve(shared: &Shared, endpoint: &str, headers: &HeaderMap, body: &[u8]) -> Response {
    let caller = match check_bearer(shared, headers) {
        Ok(caller) => caller,
        Err(refused) => {
            shared.pnm.lock().unwrap().rejected_auth += 1;
            return *refused;
        }
    };
    let params = match parse_body(headers, body) {
        Ok(p) => p,
        Err(answer) => return answer.into_response(),
    };
    if let Err(answer) = authenticate(shared, &params, &caller) {
        shared.pnm.lock().unwrap().rejected_auth += 1;
        return answer.into_response();
    }
    do_work(shared, endpoint, params).await.into_response()
}

/// Holds the customer, waits the latency, then does the work.
async fn do_work(shared: &Shared, endpoint: &str, params: Vec<(String, String)>) -> Answer {
    let params: BTreeMap<String, String> = params
        .into_iter()
        .filter(|(k, _)| !TRANSPORT.contains(&k.as_str()))
        .collect();

    let customer = shared.pnm.lock().unwrap().customer_of(&params);
    if shared.poisoned(customer.as_deref()) {
        shared.pnm.lock().unwrap().faults.poisoned += 1;
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "this customer is poisoned (--poison-customer)",
        );
    }
    let _guard = {
        let mut pnm = shared.pnm.lock().unwrap();
        match customer {
            Some(c) if pnm.in_flight.contains(&c) => {
                pnm.overlaps += 1;
                if shared.config.strict_serial {
                    return error(
                        StatusCode::CONFLICT,
                        "customer_busy",
                        format!("another request for customer {c} is in progress"),
                    );
                }
                InFlight {
                    shared,
                    customer: None,
                }
            }
            Some(c) => {
                pnm.in_flight.insert(c.clone());
                InFlight {
                    shared,
                    customer: Some(c),
                }
            }
            None => InFlight {
                shared,
                customer: None,
            },
        }
    };
    if let Some((min, max)) = shared.config.latency_ms {
        let ms = shared.rng.lock().unwrap().random_range(min..=max.max(min));
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let mut rng = shared.rng.lock().unwrap();
    let mut pnm = shared.pnm.lock().unwrap();
    match endpoint {
        "create_order" => pnm.create_order(params, &mut *rng),
        "find_orders" => {
            let (status, Json(mut body)) = pnm.find_orders(&params);
            hide_fields(&mut body, &shared.config.lookup_hides);
            (status, Json(body))
        }
        "refresh_embedded_js_urls" => pnm.refresh(&params, &mut *rng),
        "get_smart_token" => pnm.smart_token(&params, &mut *rng),
        "change_order" => pnm.change_order(params),
        other => error(
            StatusCode::NOT_FOUND,
            "unknown_endpoint",
            format!("no endpoint {other}"),
        ),
    }
}

/// Takes `hidden` out of every order of an answer.
fn hide_fields(body: &mut Value, hidden: &[String]) {
    if let Some(orders) = body.get_mut("orders").and_then(Value::as_array_mut) {
        for order in orders.iter_mut().filter_map(Value::as_object_mut) {
            for field in hidden {
                order.remove(field);
            }
        }
    }
}

fn random_hex(rng: &mut impl Rng, bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rng.random::<u8>()))
        .collect()
}

impl PnmState {
    /// An empty state; `hostile_values` as [`super::SandboxConfig`] says.
    pub fn new(hostile_values: bool) -> Self {
        PnmState {
            hostile_values,
            ..PnmState::default()
        }
    }

    fn now(&self) -> i64 {
        unix_now() + self.clock_offset_secs
    }

    /// The site customer a request is about, for overlap detection.
    fn customer_of(&self, params: &BTreeMap<String, String>) -> Option<String> {
        if let Some(c) = params.get("site_customer_identifier") {
            return Some(c.clone());
        }
        let order = params
            .get("pnm_order_identifier")
            .and_then(|p| self.by_pnm.get(p))
            .or_else(|| {
                params
                    .get("site_order_identifier")
                    .and_then(|s| self.by_site_order.get(s))
                    .and_then(|v| v.first())
            });
        if let Some(&i) = order {
            return self.orders[i]
                .fields
                .get("site_customer_identifier")
                .cloned();
        }
        let pnm_customer = params.get("pnm_customer_identifier")?;
        self.pnm_customers
            .iter()
            .find(|(_, p)| *p == pnm_customer)
            .map(|(site, _)| site.clone())
    }

    fn new_url(&mut self, i: usize, rng: &mut impl Rng) {
        let now = self.now();
        let order = &mut self.orders[i];
        order.url_generations += 1;
        order.embedded_js_url = format!(
            "https://sandbox.orderbatch.test/embedded/{}/{}.js",
            order.pnm_order_identifier,
            random_hex(rng, 8)
        );
        if self.hostile_values {
            order.embedded_js_url.push_str("?a=1,b=\"2\",c='3'\n");
        }
        order.url_expires_at = now + URL_LIFETIME_SECS;
    }

    fn order_json(&self, i: usize) -> Value {
        let o = &self.orders[i];
        let mut map: Map<String, Value> = o
            .fields
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        map.insert(
            "pnm_order_identifier".into(),
            o.pnm_order_identifier.clone().into(),
        );
        map.insert(
            "pnm_customer_identifier".into(),
            o.pnm_customer_identifier.clone().into(),
        );
        map.insert("order_status".into(), "open".into());
        map.insert("embedded_js_url".into(), o.embedded_js_url.clone().into());
        map.insert(
            "embedded_js_url_expires_at".into(),
            rfc3339(o.url_expires_at).into(),
        );
        if let Some(token) = &o.smart_token {
            map.insert("secure_smart_token".into(), token.clone().into());
        }
        if let Some(link) = &o.smart_link {
            map.insert("secure_smart_link".into(), link.clone().into());
        }
        Value::Object(map)
    }

    fn ok_orders(&self, indices: &[usize]) -> Answer {
        let orders: Vec<Value> = indices.iter().map(|&i| self.order_json(i)).collect();
        (StatusCode::OK, Json(json!({"status":"ok","orders":orders})))
    }

    fn create_order(&mut self, fields: BTreeMap<String, String>, rng: &mut impl Rng) -> Answer {
        let get = |k: &str| fields.get(k).map(String::as_str).unwrap_or("");
        for required in crate::provider::paynearme::params::CREATE_REQUIRED {
            if get(required).is_empty() {
                return invalid(format!("{required} is required"));
            }
        }
        if let Err(e) = get("order_amount").parse::<Amount>() {
            return invalid(format!("order_amount {e}"));
        }
        if get("order_currency") != "USD" {
            return invalid("order_currency must be USD");
        }
        if !["exact", "up-to", "any"].contains(&get("order_type")) {
            return invalid("order_type must be exact, up-to or any");
        }
        if !["true", "false"].contains(&get("order_is_standing")) {
            return invalid("order_is_standing must be true or false");
        }
        let customer = get("site_customer_identifier").to_string();
        let next_customer = self.pnm_customers.len() + 1;
        let pnm_customer = self
            .pnm_customers
            .entry(customer.clone())
            .or_insert_with(|| format!("C{next_customer:09}"))
            .clone();
        let i = self.orders.len();
        let pnm = format!("8{:011}", i + 1);
        if let Some(site_order) = fields.get("site_order_identifier") {
            let seen = self.by_site_order.entry(site_order.clone()).or_default();
            if !seen.is_empty() {
                self.duplicates += 1;
            }
            seen.push(i);
        }
        let minimal = get("return_minimal_info") == "true";
        self.orders.push(Order {
            pnm_order_identifier: pnm.clone(),
            pnm_customer_identifier: pnm_customer.clone(),
            fields,
            embedded_js_url: String::new(),
            url_expires_at: 0,
            url_generations: 0,
            smart_token: None,
            smart_link: None,
            token_options: BTreeMap::new(),
            changes: 0,
        });
        self.new_url(i, rng);
        self.by_pnm.insert(pnm.clone(), i);
        self.by_customer.entry(customer).or_default().push(i);
        let order = if minimal {
            json!({"pnm_order_identifier": pnm, "pnm_customer_identifier": pnm_customer})
        } else {
            self.order_json(i)
        };
        (StatusCode::OK, Json(json!({"status":"ok","order":order})))
    }

    /// Orders named by the one selector present, or an error.
    fn select(&self, params: &BTreeMap<String, String>) -> Result<(Vec<usize>, bool), Answer> {
        let Some((key, value)) = SELECTORS
            .iter()
            .find_map(|k| params.get(*k).map(|v| (*k, v)))
        else {
            return Err(invalid(format!(
                "one of {} is required",
                SELECTORS.join(", ")
            )));
        };
        let found: Vec<usize> = match key {
            "pnm_order_identifier" => self.by_pnm.get(value).copied().into_iter().collect(),
            "site_order_identifier" => self.by_site_order.get(value).cloned().unwrap_or_default(),
            "site_customer_identifier" => self.by_customer.get(value).cloned().unwrap_or_default(),
            _ => self
                .pnm_customers
                .iter()
                .find(|(_, p)| *p == value)
                .and_then(|(site, _)| self.by_customer.get(site).cloned())
                .unwrap_or_default(),
        };
        Ok((found, key.ends_with("customer_identifier")))
    }

    fn find_orders(&self, params: &BTreeMap<String, String>) -> Answer {
        let mut found: Vec<usize> = match self.select(params) {
            Ok((found, _)) => found,
            Err(_) => {
                let by_field = [
                    "site_creator_identifier",
                    "site_customer_email",
                    "site_customer_phone",
                    "site_order_annotation",
                ]
                .iter()
                .find_map(|k| params.get(*k).map(|v| (*k, v)));
                let Some((key, value)) = by_field else {
                    return invalid("find_orders needs an identifier");
                };
                (0..self.orders.len())
                    .filter(|&i| self.orders[i].fields.get(key) == Some(value))
                    .collect()
            }
        };
        found.sort_unstable();
        self.ok_orders(&found)
    }

    fn refresh(&mut self, params: &BTreeMap<String, String>, rng: &mut impl Rng) -> Answer {
        let (mut found, by_customer) = match self.select(params) {
            Ok(x) => x,
            Err(answer) => return answer,
        };
        if found.is_empty() && !by_customer {
            return error(StatusCode::NOT_FOUND, "order_not_found", "no such order");
        }
        if by_customer {
            let limit = match params.get("limit").map(|l| l.parse::<usize>()) {
                None => 2,
                Some(Ok(l)) if (1..=5).contains(&l) => l,
                Some(_) => return invalid("limit must be a whole number from 1 to 5"),
            };
            let offset = match params.get("offset").map(|o| o.parse::<usize>()) {
                None => 0,
                Some(Ok(o)) => o,
                Some(Err(_)) => return invalid("offset must be a whole number"),
            };
            found = found.into_iter().skip(offset).take(limit).collect();
        }
        let force = params.get("force").map(String::as_str) == Some("true");
        let now = self.now();
        for &i in &found {
            if force || self.orders[i].url_expires_at <= now {
                self.new_url(i, rng);
                self.url_regenerations += 1;
            }
        }
        let orders: Vec<Value> = found
            .iter()
            .map(|&i| {
                let o = &self.orders[i];
                let mut order = json!({
                    "pnm_order_identifier": o.pnm_order_identifier,
                    "pnm_customer_identifier": o.pnm_customer_identifier,
                    "site_order_identifier": o.fields.get("site_order_identifier"),
                    "site_customer_identifier": o.fields.get("site_customer_identifier"),
                    "embedded_js_url": o.embedded_js_url,
                    "embedded_js_url_expires_at": rfc3339(o.url_expires_at),
                });
                match self.url_expiry.as_deref() {
                    Some("omit") => {
                        order
                            .as_object_mut()
                            .unwrap()
                            .remove("embedded_js_url_expires_at");
                    }
                    Some(_) => order["embedded_js_url_expires_at"] = "in half an hour".into(),
                    None => {}
                }
                order
            })
            .collect();
        (StatusCode::OK, Json(json!({"status":"ok","orders":orders})))
    }

    fn smart_token(&mut self, params: &BTreeMap<String, String>, rng: &mut impl Rng) -> Answer {
        let (found, by_customer) = match self.select(params) {
            Ok(x) => x,
            Err(answer) => return answer,
        };
        if found.is_empty() && !by_customer {
            return error(StatusCode::NOT_FOUND, "order_not_found", "no such order");
        }
        // PII fields are noted as received, not kept.
        let options: BTreeMap<String, String> = params
            .iter()
            .filter(|(k, _)| !SELECTORS.contains(&k.as_str()))
            .map(|(k, v)| {
                let v = if k.ends_with("_pii") {
                    "[received]".to_string()
                } else {
                    v.clone()
                };
                (k.clone(), v)
            })
            .collect();
        for &i in &found {
            let token = if self.hostile_values {
                // Each begins with what a spreadsheet runs as a formula.
                let lead = ["-", "=", "+", "@"][rng.random_range(0..4)];
                format!("{lead}sst,\"{}\"", random_hex(rng, 12))
            } else {
                format!("sst_{}", random_hex(rng, 12))
            };
            let order = &mut self.orders[i];
            order.smart_link = Some(format!("https://sandbox.orderbatch.test/pay/{token}"));
            order.smart_token = Some(token);
            order.token_options = options.clone();
        }
        let orders: Vec<Value> = found
            .iter()
            .map(|&i| {
                let o = &self.orders[i];
                json!({
                    "pnm_order_identifier": o.pnm_order_identifier,
                    "site_order_identifier": o.fields.get("site_order_identifier"),
                    "secure_smart_token": o.smart_token,
                    "secure_smart_link": o.smart_link,
                    "order_tracking_url": format!("https://sandbox.orderbatch.test/track/{}", o.pnm_order_identifier),
                })
            })
            .collect();
        (StatusCode::OK, Json(json!({"status":"ok","orders":orders})))
    }

    fn change_order(&mut self, fields: BTreeMap<String, String>) -> Answer {
        let Some(&i) = fields
            .get("pnm_order_identifier")
            .and_then(|p| self.by_pnm.get(p))
        else {
            return error(
                StatusCode::NOT_FOUND,
                "order_not_found",
                "no such pnm_order_identifier",
            );
        };
        if let Some(amount) = fields.get("order_amount") {
            if let Err(e) = amount.parse::<Amount>() {
                return invalid(format!("order_amount {e}"));
            }
        }
        let order = &mut self.orders[i];
        order.changes += 1;
        for (k, v) in fields {
            if k != "pnm_order_identifier" {
                order.fields.insert(k, v);
            }
        }
        let answer = self.order_json(i);
        (StatusCode::OK, Json(json!({"status":"ok","order":answer})))
    }

    fn counters_json(&self) -> Value {
        json!({
            "requests": self.requests,
            "duplicates": self.duplicates,
            "overlaps": self.overlaps,
            "url_regenerations": self.url_regenerations,
            "rejected_auth": self.rejected_auth,
            "faults": self.faults,
            "orders": self.orders.len(),
            "per_second": self.per_second,
        })
    }

    fn to_json(&self) -> Value {
        let orders: Vec<Value> = self
            .orders
            .iter()
            .map(|o| {
                json!({
                    "pnm_order_identifier": o.pnm_order_identifier,
                    "pnm_customer_identifier": o.pnm_customer_identifier,
                    "fields": o.fields,
                    "embedded_js_url": o.embedded_js_url,
                    "embedded_js_url_expires_at": rfc3339(o.url_expires_at),
                    "url_generations": o.url_generations,
                    "secure_smart_token": o.smart_token,
                    "secure_smart_link": o.smart_link,
                    "token_options": o.token_options,
                    "changes": o.changes,
                })
            })
            .collect();
        json!({
            "orders": orders,
            "counters": self.counters_json(),
        })
    }
}

/// The sandbox's state as JSON (Commerce Engine under `ce`).
pub(crate) fn state_json(shared: &Shared) -> Value {
    let mut state = shared.pnm.lock().unwrap().to_json();
    state["ce"] = shared.ce.lock().unwrap().to_json();
    state["oauth"] = shared.oauth.lock().unwrap().to_json();
    state
}

/// `GET /__sandbox/counters`: the counters without the orders (cheap to poll).
pub(crate) async fn counters_handler(State(shared): State<Arc<Shared>>) -> Json<Value> {
    Json(shared.pnm.lock().unwrap().counters_json())
}

/// `GET /__sandbox/state`.
pub(crate) async fn state_handler(State(shared): State<Arc<Shared>>) -> Json<Value> {
    Json(state_json(&shared))
}

/// `POST /__sandbox/age {"seconds": N}`: moves the sandbox clock forward.
pub(crate) async fn age_handler(State(shared): State<Arc<Shared>>, body: Bytes) -> Answer {
    let seconds = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("seconds").and_then(Value::as_i64));
    let Some(seconds) = seconds else {
        return invalid(r#"body must be {"seconds": N}"#);
    };
    shared.ce.lock().unwrap().age(seconds);
    let mut pnm = shared.pnm.lock().unwrap();
    pnm.clock_offset_secs += seconds;
    (
        StatusCode::OK,
        Json(json!({"status":"ok","clock_offset_secs":pnm.clock_offset_secs})),
    )
}
