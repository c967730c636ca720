//! What every worker of a run shares: the client, the rate limiter, the 429
//! gate, the writer, the stop signal and the retry settings.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::mpsc;

use super::backoff::{Attempts, Gate, Next};
use super::claims::{Claim, Claims};
use super::shutdown::{Shutdown, Stop};
use super::RunOptions;
use crate::lock::{CustomerLease, CustomerLocks};
use crate::provider::commerce_engine::{CeClient, PaymentMethod};
use crate::provider::paynearme::PnmClient;
use crate::provider::{ErrorClass, ProviderError, TransportKind};
use crate::store::writer::{RequestCounts, Write, Writer};
use crate::timeline::{Class, Hold, Recorder};

tokio::task_local! {
    /// The requests one attempt of [`RunContext::request`] sent.
    static SENT: std::cell::RefCell<Vec<Sent>>;
}

/// A request that left during an attempt: its endpoint, when it left and
/// when its answer was in (its slot dropped).
struct Sent {
    endpoint: &'static str,
    started: Instant,
    ended: Option<Instant>,
}

/// A request slot ([`RunContext::permit`]): held until the answer is in;
/// dropping it ends the request's latency on the timeline.
pub struct Slot<'a> {
    _permit: tokio::sync::SemaphorePermit<'a>,
    /// The customer held against other processes on the same database.
    _lease: Option<CustomerLease>,
    /// Its place in the attempt's [`SENT`], or what to record on drop when
    /// it was taken outside [`RunContext::request`].
    sent: Result<usize, (&'static str, Instant, &'a Recorder)>,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        match self.sent {
            Ok(index) => {
                let _ = SENT.try_with(|sent| {
                    if let Some(s) = sent.borrow_mut().get_mut(index) {
                        s.ended = Some(Instant::now());
                    }
                });
            }
            Err((endpoint, started, timeline)) => {
                timeline.answered(endpoint, Class::Ok, started.elapsed());
            }
        }
    }
}

/// The timeline class of a failed request.
fn class_of(error: &ProviderError) -> Class {
    use crate::provider::TransportKind;
    match error {
        ProviderError::RateLimited { .. } => Class::RateLimited,
        ProviderError::Api { status, .. } | ProviderError::UnexpectedBody { status, .. }
            if *status >= 500 =>
        {
            Class::ServerError
        }
        ProviderError::Transport { kind, .. } => match kind {
            TransportKind::Timeout => Class::Timeout,
            TransportKind::Closed => Class::Dropped,
            TransportKind::Connect => Class::Refused,
        },
        _ => Class::Other,
    }
}

/// How one request ended after all its retries.
#[derive(Debug)]
pub enum Outcome<T> {
    Done(T),
    /// The rows it was for fail with this error.
    Failed(ProviderError),
    /// The run is stopping; the rows stay as they are, to resume later.
    Stopped,
}

/// Extra parameters and switches of a run's calls.
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    /// Added to every `refresh_embedded_js_urls` call (e.g. `force=true`).
    pub refresh: Vec<(String, String)>,
    /// Added to every `get_smart_token` call (flows, lifetimes, return URLs).
    pub token: Vec<(String, String)>,
    /// `refresh` regenerates URLs (off: it only looks orders up).
    pub urls: bool,
}

/// Transient failures in a row (no success between them, any worker) after
/// which the provider is taken to be down: enough that every worker has
/// gone through its retries a few times, never fewer than 50.
fn breaker_threshold(concurrency: usize, max_attempts: u32) -> u64 {
    (concurrency as u64 * u64::from(max_attempts) * 2).max(50)
}

/// The limiter's quota for `rate` requests per second. Requests are spaced
/// evenly; a burst of 0.5 % of the rate absorbs timer granularity and short
/// idle gaps, and the steady rate is lowered by twice that, so that no
/// one-second window (sliding, as a provider counts) sees more than 99.5 %
/// of `rate` leave: the rest is room for requests that arrive closer
/// together than they left.
pub fn quota(rate: NonZeroU32) -> Quota {
    let burst = rate.get() / 200;
    if burst < 2 {
        return Quota::per_second(rate).allow_burst(NonZeroU32::MIN);
    }
    let steady = NonZeroU32::new(rate.get() - 2 * burst).expect("burst is 0.5 % of rate");
    Quota::per_second(steady).allow_burst(NonZeroU32::new(burst).expect("at least 2"))
}

/// The budget runs of one process may share: the rate limiter, the 429
/// gate, the customers claimed and (when set) the request slots.
/// `orderbatch inbox` runs its files within one budget, the next file
/// starting while the last one's tail drains: the next file's first request
/// goes as soon as the rate allows, never more than `--concurrency`
/// requests are in flight across both, a 429 holds both, and a customer in
/// both goes through one file's chain, then the other's.
#[derive(Debug, Clone, Default)]
pub struct Pace {
    limiter: Option<Arc<DefaultDirectRateLimiter>>,
    /// Shared request slots; `None`: each run has its own `--concurrency`.
    slots: Option<Arc<tokio::sync::Semaphore>>,
    gate: Arc<Gate>,
    claims: Arc<Claims>,
}

impl Pace {
    /// A budget of `rate` requests per second (`None`: unlimited).
    pub fn new(rate: Option<NonZeroU32>) -> Pace {
        Pace {
            limiter: rate.map(|r| Arc::new(RateLimiter::direct(quota(r)))),
            ..Pace::default()
        }
    }

    /// With `concurrency` request slots shared by every run of the budget.
    #[must_use]
    pub fn with_concurrency(self, concurrency: usize) -> Pace {
        Pace {
            slots: Some(Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)))),
            ..self
        }
    }
}

/// The provider clients a run uses (only its provider's is set).
#[derive(Debug, Clone, Default)]
pub struct Clients {
    pub pnm: Option<PnmClient>,
    pub ce: Option<std::sync::Arc<CeClient>>,
}

tokio::task_local! {
    /// The site customer whose chain the current task runs (set by the
    /// dispatcher): each request holds it across processes.
    pub static CUSTOMER: Option<String>;
}

/// A create or change whose outcome may not be known: whether an attempt
/// may have been applied (it is then looked up before anything is resent),
/// and when the last attempt that got no answer at all left (it may still
/// be running at the provider: see [`RunContext::settle`]).
#[derive(Debug, Default)]
pub struct Unsettled {
    maybe_applied: AtomicBool,
    unanswered: std::sync::Mutex<Option<SystemTime>>,
}

impl Unsettled {
    /// A row found in its intent state: a killed run may have sent its
    /// request at `intent_at` (unix seconds), and it may still be running.
    pub fn resumed(intent_at: Option<i64>) -> Unsettled {
        Unsettled {
            maybe_applied: AtomicBool::new(true),
            // Recorded in whole seconds: it may have left up to one later.
            unanswered: std::sync::Mutex::new(intent_at.map(|secs| {
                SystemTime::UNIX_EPOCH + Duration::from_secs(secs.max(0).unsigned_abs() + 1)
            })),
        }
    }

    /// Whether an attempt may have been applied.
    pub fn maybe_applied(&self) -> bool {
        self.maybe_applied.load(Ordering::Relaxed)
    }

    /// A lookup showed that nothing was applied.
    pub fn settled(&self) {
        self.maybe_applied.store(false, Ordering::Relaxed);
    }

    /// Records what an attempt sent at `sent` came to.
    pub fn note<T>(&self, sent: SystemTime, result: &Result<T, ProviderError>) {
        let Err(e) = result else { return };
        if matches!(
            e.class(),
            ErrorClass::Transient {
                maybe_applied: true
            }
        ) {
            self.maybe_applied.store(true, Ordering::Relaxed);
        }
        // No answer at all: the request may still be running there (a
        // connection that failed sent nothing).
        if matches!(e, ProviderError::Transport { kind, .. } if *kind != TransportKind::Connect) {
            *self
                .unanswered
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(sent);
        }
    }

    fn unanswered(&self) -> Option<SystemTime> {
        *self
            .unanswered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Shared by all workers of a run.
pub struct RunContext {
    clients: Clients,
    /// Default `payment_method` of Commerce Engine retries.
    pub payment_defaults: PaymentMethod,
    pub options: CallOptions,
    limiter: Option<Arc<DefaultDirectRateLimiter>>,
    /// `--concurrency` request slots, each held only while a request is
    /// in flight (the budget's, when it shares them).
    slots: Arc<tokio::sync::Semaphore>,
    gate: Arc<Gate>,
    /// Customers claimed by the runs of the budget.
    claims: Arc<Claims>,
    /// Told when every customer of the run has been handed out (the
    /// caller may start the next run); dropped with the context.
    fed: Option<tokio::sync::watch::Sender<bool>>,
    writes: mpsc::Sender<Write>,
    requests: Arc<RequestCounts>,
    timeline: Arc<Recorder>,
    pub shutdown: Shutdown,
    max_attempts: u32,
    retry_base: Duration,
    settle: Duration,
    /// When nothing an earlier invocation of this run sent can still land
    /// (see [`RunContext::after_earlier_invocations`]).
    earlier_settled: Option<SystemTime>,
    max_errors: Option<u64>,
    failed_rows: AtomicU64,
    /// Transient failures since the last success, across all workers.
    failing_in_a_row: AtomicU64,
    /// Past this many, the provider is taken to be down and the run stops.
    breaker_threshold: u64,
    run_id: i64,
    /// Customers held against other processes on the same database.
    customers: CustomerLocks,
    /// Whether any request has left (shared with the run's caller, which
    /// reads it when the run fails).
    sent: Arc<std::sync::atomic::AtomicBool>,
}

impl RunContext {
    /// Shared state for the workers of run `run_id` under `options`.
    pub fn new(
        clients: Clients,
        options: &RunOptions,
        writer: &Writer,
        shutdown: Shutdown,
        run_id: i64,
        sent: Arc<std::sync::atomic::AtomicBool>,
        pace: &Pace,
    ) -> Self {
        let limiter = pace.limiter.clone();
        let timeline = writer.timeline();
        timeline.set_rate_limit(options.rate.map(NonZeroU32::get));
        let (force, urls) = match options.spec.mode {
            super::Mode::Refresh { force, urls, .. } => (force, urls),
            _ => (false, true),
        };
        RunContext {
            clients,
            payment_defaults: options.spec.payment_defaults.clone(),
            options: CallOptions {
                refresh: if force {
                    vec![("force".to_string(), "true".to_string())]
                } else {
                    Vec::new()
                },
                token: options.spec.token_options.clone(),
                urls,
            },
            limiter,
            slots: pace.slots.clone().unwrap_or_else(|| {
                Arc::new(tokio::sync::Semaphore::new(options.concurrency.max(1)))
            }),
            gate: pace.gate.clone(),
            claims: pace.claims.clone(),
            fed: None,
            writes: writer.sender(),
            requests: writer.request_counts(),
            timeline,
            shutdown,
            max_attempts: options.max_attempts,
            retry_base: options.retry_base,
            settle: options.settle,
            earlier_settled: None,
            max_errors: options.max_errors,
            failed_rows: AtomicU64::new(0),
            failing_in_a_row: AtomicU64::new(0),
            breaker_threshold: breaker_threshold(options.concurrency, options.max_attempts),
            run_id,
            customers: CustomerLocks::of(&options.db),
            sent,
        }
    }

    /// Tells `fed` when every customer of the run has been handed out.
    #[must_use]
    pub fn telling(self, fed: Option<tokio::sync::watch::Sender<bool>>) -> Self {
        RunContext { fed, ..self }
    }

    /// Every customer of the run has been handed out: a run waiting to
    /// start after this one may.
    pub fn fed(&self) {
        if let Some(fed) = &self.fed {
            fed.send_replace(true);
        }
    }

    /// Takes `customer`'s turn among the runs of the budget (see
    /// [`Claims`]); at once, in the order customers are handed out.
    pub fn claim(&self, customer: &str) -> Claim {
        self.claims.claim(customer)
    }

    /// The PayNearMe client (runs of PayNearMe commands always have one).
    pub fn pnm(&self) -> &PnmClient {
        self.clients
            .pnm
            .as_ref()
            .expect("a PayNearMe command runs with a PayNearMe client")
    }

    /// The Commerce Engine client (runs of `ce` commands always have one).
    pub fn ce(&self) -> &CeClient {
        self.clients
            .ce
            .as_deref()
            .expect("a Commerce Engine command runs with its client")
    }

    /// Counts a failed row; past `--max-errors` the run stops taking work.
    pub fn row_failed(&self) {
        let failed = self.failed_rows.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(max) = self.max_errors {
            if failed >= max {
                self.shutdown.stop(Stop::Aborted(format!(
                    "{failed} rows failed (--max-errors {max}); state kept. Fix the cause, then run \
                     `orderbatch retry --db <STATE.db>` to try the failed rows again"
                )));
            }
        }
    }

    /// Records a change; if the writer is gone the run cannot go on safely.
    pub async fn write(&self, op: Write) {
        if self.writes.send(op).await.is_err() {
            self.shutdown
                .stop(Stop::Aborted("the state database writer stopped".into()));
        }
    }

    /// Waits until the last request of `unsettled` that got no answer can
    /// no longer be running at the provider (`settle` after it left), so
    /// that a lookup of what it did sees its late landing instead of
    /// nothing (which would send it again). Returns at once when there is
    /// none or it is older; false when the run stops meanwhile.
    pub async fn settle(&self, unsettled: &Unsettled) -> bool {
        let Some(sent) = unsettled.unanswered() else {
            return true;
        };
        let since = sent.elapsed().unwrap_or_default();
        let Some(left) = self.settle.checked_sub(since) else {
            return true;
        };
        tokio::select! {
            () = tokio::time::sleep(left) => true,
            () = self.shutdown.stopped() => false,
        }
    }

    /// A resumed run: an earlier invocation was last seen sending at
    /// `last_seen` (its timeline's end), and a request it sent then may
    /// still be running at the provider.
    pub fn resumed_after(mut self, last_seen: SystemTime) -> Self {
        // The timeline is stored about once a second: a request may have
        // left up to a second after the end it shows.
        self.earlier_settled = Some(last_seen + Duration::from_secs(1) + self.settle);
        self
    }

    /// Waits until nothing an earlier (killed or stopped) invocation of
    /// this run sent can still land — before a call whose answer would be
    /// replaced by such a late one (a token, a forced URL). At once for a
    /// new run or one resumed long after; false when the run stops.
    pub async fn after_earlier_invocations(&self) -> bool {
        let Some(at) = self.earlier_settled else {
            return true;
        };
        let Ok(left) = at.duration_since(SystemTime::now()) else {
            return true;
        };
        tracing::info!(
            "waiting {:.1}s until requests an earlier invocation of this run may have left              running at the provider can no longer land (--settle-ms)",
            left.as_secs_f64()
        );
        tokio::select! {
            () = tokio::time::sleep(left) => true,
            () = self.shutdown.stopped() => false,
        }
    }

    /// Waits until everything written so far is committed.
    pub async fn flush(&self) {
        let (ack, done) = tokio::sync::oneshot::channel();
        self.write(Write::Flush { ack }).await;
        let _ = done.await;
    }

    /// Records intent before a side effect and waits until it is committed.
    /// Returns false if it could not be recorded (the request must not leave).
    pub async fn intent(&self, row: u64, state: crate::store::RowState) -> bool {
        let (ack, done) = tokio::sync::oneshot::channel();
        self.write(Write::Intent { row, state, ack }).await;
        done.await.is_ok()
    }

    /// Waits until a request to `endpoint` may leave — the 429 gate, then
    /// one of the `--concurrency` request slots, then the rate limit — and
    /// counts it. The slot is held until the returned guard is dropped
    /// (when the answer is in): a row waiting for the gate or sleeping in
    /// backoff holds none. [`ProviderError::Cancelled`] when the run stops
    /// meanwhile (the first Ctrl-C ends every wait at once).
    pub async fn permit(
        &self,
        endpoint: impl Into<&'static str>,
    ) -> Result<Slot<'_>, ProviderError> {
        let endpoint: &'static str = endpoint.into();
        let wait = async {
            self.gate.wait().await;
            let lease = self.hold_customer().await;
            let slot = self.slots.acquire().await.expect("never closed");
            if let Some(limiter) = &self.limiter {
                limiter.until_ready().await;
            }
            (slot, lease)
        };
        let (slot, lease) = tokio::select! {
            held = wait => held,
            _ = self.shutdown.stopped() => return Err(ProviderError::Cancelled),
        };
        if self.shutdown.is_stopping() {
            return Err(ProviderError::Cancelled);
        }
        self.sent.store(true, Ordering::Relaxed);
        self.requests.add(endpoint);
        self.timeline.request(endpoint);
        let started = Instant::now();
        let sent = SENT
            .try_with(|sent| {
                let mut sent = sent.borrow_mut();
                sent.push(Sent {
                    endpoint,
                    started,
                    ended: None,
                });
                sent.len() - 1
            })
            .map_err(|_| (endpoint, started, &*self.timeline));
        Ok(Slot {
            _permit: slot,
            _lease: lease,
            sent,
        })
    }

    /// Puts the requests of one attempt on the timeline: every request but
    /// the last was answered (the attempt went on), the last one ended as
    /// the attempt did (an error about another endpoint, or made up after
    /// its answer, leaves it ok).
    fn record(&self, sent: Vec<Sent>, result: Result<(), &ProviderError>) {
        let last = sent.len().saturating_sub(1);
        let now = Instant::now();
        for (i, s) in sent.into_iter().enumerate() {
            let class = match result {
                Err(e) if i == last => match e {
                    ProviderError::Cancelled | ProviderError::Token(_) => Class::Other,
                    e if e.endpoint() == s.endpoint => class_of(e),
                    _ => Class::Ok,
                },
                _ => Class::Ok,
            };
            let latency = s.ended.unwrap_or(now).saturating_duration_since(s.started);
            self.timeline.answered(s.endpoint, class, latency);
        }
    }

    /// Holds the customer whose chain this task runs ([`CUSTOMER`]) against
    /// other processes on the same database (`serve`), for one request.
    /// A customer that cannot be locked (an unwritable directory) goes
    /// unheld, with a warning.
    async fn hold_customer(&self) -> Option<CustomerLease> {
        let customer = CUSTOMER.try_with(Clone::clone).ok().flatten()?;
        self.customers
            .acquire(&customer, None)
            .await
            .unwrap_or_else(|e| {
                tracing::warn!("cannot lock a customer beside the state database: {e}");
                None
            })
    }

    /// Runs `attempt` until it succeeds, fails for good, or the run stops.
    /// Every failed attempt is recorded against `rows`.
    /// Each attempt is logged with `run_id`, `row_number` (the first row),
    /// `endpoint`, `attempt`, `outcome` and `latency_ms`: successes at debug
    /// level, failures at warn.
    pub async fn request<T, F>(
        &self,
        endpoint: impl Into<&'static str>,
        rows: &[u64],
        mut attempt: impl FnMut() -> F,
    ) -> Outcome<T>
    where
        F: std::future::Future<Output = Result<T, ProviderError>>,
    {
        let endpoint: &'static str = endpoint.into();
        let mut attempts = Attempts::new(self.max_attempts, self.retry_base);
        let row_number = rows.first().copied().unwrap_or_default();
        let mut number = 0u32;
        loop {
            if self.shutdown.is_stopping() {
                return Outcome::Stopped;
            }
            number += 1;
            let started = Instant::now();
            let (result, sent) = SENT
                .scope(std::cell::RefCell::new(Vec::new()), async {
                    let result = attempt().await;
                    (result, SENT.with(std::cell::RefCell::take))
                })
                .await;
            self.record(sent, result.as_ref().map(|_| ()));
            let latency_ms = started.elapsed().as_millis() as u64;
            let error = match result {
                Ok(value) => {
                    self.failing_in_a_row.store(0, Ordering::Relaxed);
                    tracing::debug!(
                        run_id = self.run_id,
                        row_number,
                        rows = rows.len(),
                        endpoint,
                        attempt = number,
                        outcome = "ok",
                        latency_ms,
                        "request done"
                    );
                    return Outcome::Done(value);
                }
                Err(ProviderError::Cancelled) => return Outcome::Stopped,
                Err(e) => e,
            };
            if matches!(error.class(), ErrorClass::Transient { .. }) {
                let in_a_row = self.failing_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
                if in_a_row >= self.breaker_threshold {
                    self.shutdown.stop(Stop::Aborted(format!(
                        "the provider failed {in_a_row} requests in a row with no success (last: {error}); \
                         it looks down or unreachable. State is kept: run the same command again when it is back"
                    )));
                }
            }
            tracing::warn!(
                run_id = self.run_id,
                row_number,
                rows = rows.len(),
                endpoint = error.endpoint(),
                attempt = number,
                outcome = %error.code(),
                latency_ms,
                "request failed: {error}"
            );
            for &row in rows {
                self.write(Write::Attempt {
                    row,
                    endpoint: error.endpoint(),
                    code: error.code(),
                    message: error.to_string(),
                    latency_ms,
                })
                .await;
            }
            let limited = matches!(error.class(), ErrorClass::RateLimited(_));
            match attempts.after(error, &self.gate) {
                Next::Retry(delay) => {
                    let now = Instant::now();
                    if limited {
                        if let Some(until) = self.gate.until() {
                            self.timeline.hold(Hold::Gate, now, until.into_std());
                        }
                    } else {
                        self.timeline.hold(Hold::Backoff, now, now + delay);
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.shutdown.stopped() => return Outcome::Stopped,
                    }
                }
                Next::Fail(error) => return Outcome::Failed(error),
                Next::Abort(error) => {
                    self.shutdown
                        .stop(Stop::Aborted(format!("{error}. {}", error.auth_hint())));
                    return Outcome::Stopped;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::{Clock, FakeRelativeClock, Reference};

    /// Takes cells as fast as the quota allows for `secs` seconds; returns
    /// when each was granted.
    fn grants(rate: u32, secs: u64) -> Vec<Duration> {
        let clock = FakeRelativeClock::default();
        let limiter =
            RateLimiter::direct_with_clock(quota(NonZeroU32::new(rate).unwrap()), clock.clone());
        let start = clock.now();
        let mut granted = Vec::new();
        while clock.now().duration_since(start) < Duration::from_secs(secs).into() {
            match limiter.check() {
                Ok(()) => granted.push(Duration::from(clock.now().duration_since(start))),
                Err(not_until) => clock.advance(not_until.wait_time_from(clock.now())),
            }
        }
        granted
    }

    #[test]
    fn no_sliding_second_exceeds_the_rate_and_almost_all_of_it_is_used() {
        for rate in [1u32, 10, 100, 1000, 5000] {
            let granted = grants(rate, 5);
            let busiest = granted
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    granted[i..]
                        .iter()
                        .take_while(|u| **u < *t + Duration::from_secs(1))
                        .count()
                })
                .max()
                .unwrap();
            assert!(
                busiest <= rate as usize,
                "rate {rate}: {busiest} in one second"
            );
            let used = granted.len() as f64 / (5.0 * f64::from(rate));
            assert!(used >= 0.98, "rate {rate}: only {used:.3} of the rate used");
        }
    }
}
