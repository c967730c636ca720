//! One provider call per order and kind, shared by its callers (a
//! single-flight), within the wait bound and under the customer lock; the
//! answers other than 200 every sharer gets.

#![allow(clippy::result_large_err)]

use super::*;

/// What a single-flight is for.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Kind {
    Url,
    Link,
}

/// What a flight gives every caller that shares it.
#[derive(Clone)]
pub(super) enum Fresh {
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
pub(super) struct Failure {
    pub(super) status: StatusCode,
    pub(super) code: String,
    pub(super) message: String,
    pub(super) retry_after: Option<u64>,
}

impl Failure {
    pub(super) fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Failure {
        Failure {
            status,
            code: code.to_string(),
            message: message.into(),
            retry_after: None,
        }
    }

    pub(super) fn retry_after(mut self, secs: u64) -> Failure {
        self.retry_after = Some(secs.max(1));
        self
    }

    pub(super) fn response(&self) -> Response {
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

pub(super) type Outcome = Result<(Fresh, Source), Failure>;
pub(super) type Flight = SharedFuture<BoxFuture<'static, Outcome>>;

pub(super) struct Shared {
    pub(super) stores: Vec<Mutex<Store>>,
    pub(super) next: AtomicU64,
    pub(super) client: PnmClient,
    pub(super) limiter: Option<DefaultDirectRateLimiter>,
    /// `concurrency` provider calls at once.
    pub(super) slots: tokio::sync::Semaphore,
    pub(super) max_attempts: u32,
    pub(super) retry_base: Duration,
    pub(super) max_wait: Duration,
    /// See [`super::LinksConfig::settle`].
    pub(super) settle: Duration,
    /// One provider call per customer at a time, in this process and across
    /// the processes sharing the database (a run or `refresh` beside): a
    /// lock file per customer (per order when the customer is not known),
    /// so nothing here grows with the customers seen.
    pub(super) customers: CustomerLocks,
    /// The provider call in flight per (kind, pnm_order_identifier).
    pub(super) flights: Mutex<HashMap<(Kind, String), Flight>>,
    /// URLs a forced regeneration gave with less than `min_validity` left
    /// (pnm_order_identifier → URL): the best the provider can do, served
    /// as they are until they expire.
    pub(super) short: Mutex<HashMap<String, String>>,
    pub(super) token: SecretString,
    pub(super) min_validity: Duration,
    /// Whether a missing or unreadable expiry has been logged.
    pub(super) expiry_guessed: std::sync::atomic::AtomicBool,
    pub(super) metrics: Metrics,
}

/// Where a served value came from, for the log line.
#[derive(Clone, Copy)]
pub(super) enum Source {
    Db,
    Provider,
    /// Another request's provider call.
    Joined,
}

/// A JSON error answer `{"error":{"code","message"}}`.
pub(super) fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message.into()}})),
    )
        .into_response()
}

/// The credentials of an `Authorization` value with the Bearer scheme,
/// which is case-insensitive (RFC 7235 §2.1).
pub(super) fn bearer(value: &str) -> Option<&str> {
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
pub(super) fn bounded(text: &str) -> String {
    const MAX: usize = 64;
    match text.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

/// Seconds from now until an RFC 3339 time, if it is one.
pub(super) fn seconds_left(expires_at: Option<&str>) -> Option<i64> {
    let expires = chrono::DateTime::parse_from_rfc3339(expires_at?).ok()?;
    Some(expires.timestamp() - chrono::Utc::now().timestamp())
}

impl Shared {
    /// Runs `f` on one of the connections, on a blocking thread.
    pub(super) async fn db<T: Send + 'static>(
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

    pub(super) fn authorized(&self, headers: &HeaderMap) -> bool {
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
    pub(super) async fn hold_customer(
        &self,
        order: &ServedOrder,
        deadline: Instant,
    ) -> Result<Option<CustomerLease>, Failure> {
        // The site customer, as runs lock it; else the provider's customer
        // or the order itself (kept apart from site customer names).
        let key = match (
            &order.site_customer_identifier,
            &order.pnm_customer_identifier,
        ) {
            (Some(site), _) => site.clone(),
            (None, Some(pnm)) => format!("\u{0}customer {pnm}"),
            (None, None) => format!("\u{0}order {}", order.pnm_order_identifier),
        };
        match self.customers.acquire(&key, Some(deadline.into())).await {
            Ok(Some(lease)) => Ok(Some(lease)),
            Ok(None) => Err(waited_too_long(self.max_wait)),
            Err(e) => {
                tracing::warn!("cannot lock the customer beside the state database: {e}");
                Ok(None)
            }
        }
    }

    /// Whether `left` seconds meet `--min-validity`.
    pub(super) fn enough(&self, left: i64) -> bool {
        i64::try_from(self.min_validity.as_secs()).is_ok_and(|min| left >= min)
    }

    /// `Some(min_validity_met)` when the stored URL may be served as it
    /// is: it has `min_validity` left, or it is what the provider gave
    /// when asked for a new one and has not expired.
    pub(super) fn servable(&self, order: &ServedOrder) -> Option<bool> {
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
    pub(super) fn flight(
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
    pub(super) async fn wait(&self, flight: Flight, deadline: Instant, joined: bool) -> Outcome {
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
    pub(super) async fn call<T, F>(
        &self,
        deadline: Instant,
        mut call: impl FnMut() -> F,
    ) -> Result<T, ProviderError>
    where
        F: std::future::Future<Output = Result<T, ProviderError>>,
    {
        let mut attempt = 0u32;
        // When the last attempt that got no answer left: it may still be
        // running at the provider, and what it issues would supersede what
        // a retry sent before it lands.
        let mut unanswered: Option<Instant> = None;
        loop {
            attempt += 1;
            let sent = Instant::now();
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
            if matches!(&e, ProviderError::Transport { kind, .. } if *kind != TransportKind::Connect)
            {
                unanswered = Some(sent);
            }
            let backoff = self
                .retry_base
                .saturating_mul(1 << (attempt - 1).min(16))
                .min(Duration::from_secs(30));
            let settled = unanswered.map_or(Duration::ZERO, |at| {
                (at + self.settle).saturating_duration_since(Instant::now())
            });
            let wait = match e.class() {
                ErrorClass::Transient { .. } => backoff,
                ErrorClass::RateLimited(wait) => wait.unwrap_or(backoff),
                ErrorClass::Permanent | ErrorClass::Auth => return Err(e),
            }
            .max(settled);
            if attempt >= self.max_attempts || Instant::now() + wait >= deadline {
                // The caller holds the customer's lock: keep it until the
                // unanswered call can no longer land, so that no other
                // call (here or in a run) issues something it would
                // supersede. Callers waiting for this flight get their 503
                // at their own deadline meanwhile.
                tokio::time::sleep(settled).await;
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
    pub(super) async fn measured<T>(
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
    pub(super) async fn regenerate(
        self: Arc<Self>,
        order: ServedOrder,
        deadline: Instant,
    ) -> Outcome {
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
    pub(super) fn expiry_of(&self, given: Option<&str>) -> String {
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
    pub(super) async fn issue(self: Arc<Self>, order: ServedOrder, deadline: Instant) -> Outcome {
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
pub(super) fn waited_too_long(max_wait: Duration) -> Failure {
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
pub(super) fn provider_error(e: &ProviderError) -> Failure {
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
pub(super) fn answered(
    result: Result<Vec<PnmOrder>, ProviderError>,
    pnm: &str,
) -> Result<PnmOrder, Failure> {
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
pub(super) fn lacks(field: &str) -> Failure {
    Failure::new(
        StatusCode::BAD_GATEWAY,
        "unexpected_body",
        format!("the provider's answer has no {field}"),
    )
}
