//! What `/metrics` counts, and its Prometheus text.

#![allow(clippy::result_large_err)]

use super::*;

/// Upper bounds of the provider latency histogram, seconds.
pub(super) const BUCKETS: [f64; 9] = [0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

#[derive(Default)]
pub(super) struct Metrics {
    /// (endpoint, status) → requests.
    pub(super) requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    pub(super) provider_calls: AtomicU64,
    pub(super) served_from_db: AtomicU64,
    /// Requests answered by a provider call another request started.
    pub(super) joined: AtomicU64,
    /// Cumulative counts per bucket, then +Inf.
    pub(super) latency: [AtomicU64; BUCKETS.len() + 1],
    pub(super) latency_sum_us: AtomicU64,
}

/// `GET /metrics`, Prometheus text format.
pub(super) async fn metrics(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
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
