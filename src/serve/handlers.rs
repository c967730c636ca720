//! The routes: URLs and smart links, the one log line and count of every
//! request, `/healthz`, and the JSON 404/405.

#![allow(clippy::result_large_err)]

use super::*;

/// The order `id` names, for a caller with the right token.
pub(super) async fn find(
    shared: &Arc<Shared>,
    id: &str,
    headers: &HeaderMap,
) -> Result<ServedOrder, Failure> {
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
pub(super) struct Served {
    pub(super) id: Option<String>,
    pub(super) source: Option<Source>,
}

/// Gives `answer`, noting what [`record`] logs about it.
pub(super) fn tag(
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
pub(super) fn path_id(path: Result<Path<String>, PathRejection>) -> Result<String, Response> {
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
pub(super) async fn embedded_js_url(
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

pub(super) fn url_ok(o: &ServedOrder, min_validity_met: bool) -> Response {
    Json(json!({
        "site_order_identifier": o.site_order_identifier,
        "pnm_order_identifier": o.pnm_order_identifier,
        "embedded_js_url": o.embedded_js_url,
        "embedded_js_url_expires_at": o.embedded_js_url_expires_at,
        "min_validity_met": min_validity_met,
    }))
    .into_response()
}

pub(super) async fn url_answer(
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
pub(super) async fn smart_link(
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

pub(super) async fn link_answer(
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

pub(super) fn unauthorized() -> Failure {
    Failure::new(
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        "send Authorization: Bearer <ORDERBATCH_SERVE_TOKEN>",
    )
}

pub(super) fn unknown(id: &str) -> Failure {
    Failure::new(
        StatusCode::NOT_FOUND,
        "unknown_order",
        format!(
            "no order with site_order_identifier `{}` in this state database",
            bounded(id)
        ),
    )
}

pub(super) fn internal(e: &StoreError) -> Failure {
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
pub(super) async fn record(
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
pub(super) async fn no_route() -> Response {
    Failure::new(StatusCode::NOT_FOUND, "no_route", "no such endpoint").response()
}

/// A known path with another method: a JSON 405.
pub(super) async fn wrong_method() -> Response {
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

pub(super) async fn healthz() -> &'static str {
    "ok\n"
}
