//! A run's timeline, recorded as it runs: per time bucket and per endpoint,
//! requests, outcomes by class and a latency sketch; rows finished per
//! stage; the time spent in the 429 gate or in backoff.
//!
//! Nothing is kept per row or per request: a [`Recorder`] holds one bucket
//! per second of this invocation (fewer, wider ones for long runs: past
//! [`MAX_BUCKETS`] the width doubles and neighbours merge), and the store's
//! writer takes the buckets that changed about once a second
//! ([`Recorder::take_changed`]). A 24-hour invocation keeps at most
//! `MAX_BUCKETS` buckets of 128 s.
//!
//! Latencies go into a [`Sketch`]: a histogram of logarithmic bins, 16 per
//! doubling, so any percentile it gives is within [`SKETCH_RELATIVE_ERROR`]
//! of the exact one (nearest-rank) of the latencies it was given.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Most buckets one invocation keeps before they are merged in pairs.
pub const MAX_BUCKETS: usize = 1024;
/// The first bucket width.
pub const FIRST_WIDTH_MS: i64 = 1000;
/// Logarithmic bins per doubling of latency.
const BINS_PER_OCTAVE: f64 = 16.0;
/// The most a percentile of a [`Sketch`] differs from the exact one,
/// relative to it: half a bin, `2^(1/32) - 1` (2.2 %).
pub const SKETCH_RELATIVE_ERROR: f64 = 0.021_897_148_654_116_67;

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Ok = 0,
    /// 429 Too Many Requests.
    RateLimited = 1,
    /// A 5xx answer.
    ServerError = 2,
    /// No answer in time.
    Timeout = 3,
    /// The connection closed without a (complete) answer.
    Dropped = 4,
    /// The connection was refused (never sent).
    Refused = 5,
    /// Any other failure (4xx, redirect, oversized answer, credentials).
    Other = 6,
}

impl Class {
    pub const ALL: [Class; 7] = [
        Class::Ok,
        Class::RateLimited,
        Class::ServerError,
        Class::Timeout,
        Class::Dropped,
        Class::Refused,
        Class::Other,
    ];

    /// The class's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Class::Ok => "ok",
            Class::RateLimited => "429",
            Class::ServerError => "5xx",
            Class::Timeout => "timeout",
            Class::Dropped => "dropped",
            Class::Refused => "refused",
            Class::Other => "other",
        }
    }
}

/// What held requests back for a while.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Every worker waited for a 429's `Retry-After`.
    Gate = 0,
    /// At least one customer slept in backoff after a transient failure.
    Backoff = 1,
}

/// A latency histogram: counts per logarithmic bin of microseconds, only
/// the bins in use, sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sketch(pub Vec<(u16, u64)>);

impl Sketch {
    fn bin(micros: u64) -> u16 {
        ((micros.max(1) as f64).log2() * BINS_PER_OCTAVE) as u16
    }

    /// The value a bin stands for: its geometric middle, in microseconds.
    fn value(bin: u16) -> f64 {
        ((f64::from(bin) + 0.5) / BINS_PER_OCTAVE).exp2()
    }

    /// Adds one latency.
    pub fn add(&mut self, latency: Duration) {
        self.add_n(Self::bin(latency.as_micros() as u64), 1);
    }

    fn add_n(&mut self, bin: u16, n: u64) {
        match self.0.binary_search_by_key(&bin, |(b, _)| *b) {
            Ok(i) => self.0[i].1 += n,
            Err(i) => self.0.insert(i, (bin, n)),
        }
    }

    /// Adds every latency of `other`.
    pub fn merge(&mut self, other: &Sketch) {
        for &(bin, n) in &other.0 {
            self.add_n(bin, n);
        }
    }

    /// How many latencies it holds.
    pub fn count(&self) -> u64 {
        self.0.iter().map(|(_, n)| n).sum()
    }

    /// The `q` quantile (0 < q ≤ 1, nearest rank) in milliseconds, within
    /// [`SKETCH_RELATIVE_ERROR`]; `None` when empty.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let rank = ((q * count as f64).ceil() as u64).clamp(1, count);
        let mut seen = 0;
        for &(bin, n) in &self.0 {
            seen += n;
            if seen >= rank {
                return Some(Self::value(bin) / 1000.0);
            }
        }
        None
    }
}

/// One endpoint in one bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointStats {
    /// Requests that left in this bucket.
    pub requests: u64,
    /// Answers in this bucket, by [`Class`].
    pub outcomes: [u64; 7],
    pub latency: Sketch,
}

impl EndpointStats {
    fn merge(&mut self, other: &EndpointStats) {
        self.requests += other.requests;
        for (a, b) in self.outcomes.iter_mut().zip(other.outcomes) {
            *a += b;
        }
        self.latency.merge(&other.latency);
    }
}

/// One time bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    /// Unix milliseconds.
    pub start_ms: i64,
    pub width_ms: i64,
    /// Per endpoint, in order of first use.
    pub endpoints: Vec<(String, EndpointStats)>,
    /// Rows that finished a stage (or reached a final state), per label.
    pub rows: Vec<(String, u64)>,
    /// Milliseconds of the bucket every worker waited for a 429 gate.
    pub gate_ms: i64,
    /// Milliseconds of the bucket at least one customer slept in backoff.
    pub backoff_ms: i64,
    /// `--rate` of the invocation (requests per second), if limited.
    pub rate_limit: Option<u32>,
}

impl Bucket {
    fn endpoint(&mut self, endpoint: &str) -> &mut EndpointStats {
        let i = match self.endpoints.iter().position(|(e, _)| e == endpoint) {
            Some(i) => i,
            None => {
                self.endpoints
                    .push((endpoint.to_string(), EndpointStats::default()));
                self.endpoints.len() - 1
            }
        };
        &mut self.endpoints[i].1
    }

    fn add_rows(&mut self, label: &str, n: u64) {
        match self.rows.iter_mut().find(|(l, _)| l == label) {
            Some((_, m)) => *m += n,
            None => self.rows.push((label.to_string(), n)),
        }
    }

    /// Adds `other` (a later bucket) into this one.
    pub fn merge(&mut self, other: &Bucket) {
        for (name, stats) in &other.endpoints {
            self.endpoint(name).merge(stats);
        }
        for (label, n) in &other.rows {
            self.add_rows(label, *n);
        }
        self.gate_ms += other.gate_ms;
        self.backoff_ms += other.backoff_ms;
        self.rate_limit = self.rate_limit.or(other.rate_limit);
    }
}

/// Buckets that changed since the last [`Recorder::take_changed`].
#[derive(Debug, Clone, Default)]
pub struct Changed {
    /// When set, the buckets were merged: every bucket stored from this
    /// instant (unix ms) on is replaced by `buckets`.
    pub replace_from_ms: Option<i64>,
    pub buckets: Vec<Bucket>,
}

struct Inner {
    width_ms: i64,
    buckets: Vec<Bucket>,
    /// The first bucket changed since the last take.
    changed_from: usize,
    merged: bool,
    /// The hold of each kind not yet credited to buckets (ms from origin).
    open: [Option<(i64, i64)>; 2],
    rate_limit: Option<u32>,
}

/// The timeline of one invocation of a run, in memory (see the module).
pub struct Recorder {
    origin: Instant,
    /// Unix ms of `origin`, a whole second.
    origin_ms: i64,
    inner: Mutex<Inner>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// Starts at the current second.
    pub fn new() -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let into_second = Duration::from_millis(now.subsec_millis().into());
        let origin = Instant::now()
            .checked_sub(into_second)
            .unwrap_or_else(Instant::now);
        Self::starting(origin, now.as_secs() as i64 * 1000)
    }

    /// Starts at `origin`, which is unix ms `origin_ms`.
    pub fn starting(origin: Instant, origin_ms: i64) -> Self {
        Recorder {
            origin,
            origin_ms,
            inner: Mutex::new(Inner {
                width_ms: FIRST_WIDTH_MS,
                buckets: Vec::new(),
                changed_from: 0,
                merged: false,
                open: [None, None],
                rate_limit: None,
            }),
        }
    }

    fn ms(&self, at: Instant) -> i64 {
        at.saturating_duration_since(self.origin).as_millis() as i64
    }

    /// Records `--rate` (requests per second) in every bucket from now on.
    pub fn set_rate_limit(&self, rate: Option<u32>) {
        self.lock().rate_limit = rate;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("timeline lock")
    }

    /// A request to `endpoint` leaves now.
    pub fn request(&self, endpoint: &str) {
        let at = self.ms(Instant::now());
        let mut inner = self.lock();
        let origin_ms = self.origin_ms;
        inner.at(at, origin_ms).endpoint(endpoint).requests += 1;
    }

    /// A request to `endpoint` was answered (or failed) now, `latency`
    /// after it left.
    pub fn answered(&self, endpoint: &str, class: Class, latency: Duration) {
        let at = self.ms(Instant::now());
        let mut inner = self.lock();
        let origin_ms = self.origin_ms;
        let stats = inner.at(at, origin_ms).endpoint(endpoint);
        stats.outcomes[class as usize] += 1;
        stats.latency.add(latency);
    }

    /// Rows that finished a stage now, per label.
    pub fn rows(&self, finished: &[(&str, u64)]) {
        if finished.is_empty() {
            return;
        }
        let at = self.ms(Instant::now());
        let mut inner = self.lock();
        let origin_ms = self.origin_ms;
        let bucket = inner.at(at, origin_ms);
        for (label, n) in finished {
            bucket.add_rows(label, *n);
        }
    }

    /// Requests were held by `kind` from `from` until `until`.
    pub fn hold(&self, kind: Hold, from: Instant, until: Instant) {
        let (start, end) = (self.ms(from), self.ms(until));
        if end <= start {
            return;
        }
        let mut inner = self.lock();
        let origin_ms = self.origin_ms;
        let slot = kind as usize;
        match inner.open[slot] {
            Some((s, e)) if start <= e => inner.open[slot] = Some((s, e.max(end))),
            Some(done) => {
                inner.credit(kind, done, origin_ms);
                inner.open[slot] = Some((start, end));
            }
            None => inner.open[slot] = Some((start, end)),
        }
    }

    /// The buckets that changed since the last call (holds credited up to
    /// now), for the store.
    pub fn take_changed(&self) -> Changed {
        let now = self.ms(Instant::now());
        let mut inner = self.lock();
        let origin_ms = self.origin_ms;
        inner.at(now, origin_ms);
        for kind in [Hold::Gate, Hold::Backoff] {
            if let Some((s, e)) = inner.open[kind as usize] {
                let upto = e.min(now);
                inner.credit(kind, (s, upto), origin_ms);
                inner.open[kind as usize] = (e > now).then_some((upto, e));
            }
        }
        let from = if inner.merged {
            0
        } else {
            inner.changed_from.min(inner.buckets.len())
        };
        let changed = Changed {
            replace_from_ms: inner.merged.then_some(self.origin_ms),
            buckets: inner.buckets[from..].to_vec(),
        };
        inner.merged = false;
        // The current bucket goes on changing.
        inner.changed_from = inner.buckets.len().saturating_sub(1);
        changed
    }

    /// The width of this invocation's buckets now.
    pub fn width_ms(&self) -> i64 {
        self.lock().width_ms
    }
}

impl Inner {
    /// The bucket holding `at` (ms from origin), merging buckets in pairs
    /// as long as there would be too many.
    fn at(&mut self, at: i64, origin_ms: i64) -> &mut Bucket {
        let mut index = (at / self.width_ms) as usize;
        while index >= MAX_BUCKETS {
            self.coarsen();
            index = (at / self.width_ms) as usize;
        }
        while self.buckets.len() <= index {
            let k = self.buckets.len() as i64;
            self.buckets.push(Bucket {
                start_ms: origin_ms + k * self.width_ms,
                width_ms: self.width_ms,
                rate_limit: self.rate_limit,
                ..Bucket::default()
            });
        }
        self.changed_from = self.changed_from.min(index);
        let rate_limit = self.rate_limit;
        let bucket = &mut self.buckets[index];
        bucket.rate_limit = bucket.rate_limit.or(rate_limit);
        bucket
    }

    /// Doubles the width: bucket pairs (2k, 2k+1) become bucket k.
    fn coarsen(&mut self) {
        self.width_ms *= 2;
        let old = std::mem::take(&mut self.buckets);
        for pair in old.chunks(2) {
            let mut merged = pair[0].clone();
            merged.width_ms = self.width_ms;
            if let Some(second) = pair.get(1) {
                merged.merge(second);
            }
            self.buckets.push(merged);
        }
        self.merged = true;
        self.changed_from = 0;
    }

    /// Adds the hold `(start, end)` (ms from origin) to the buckets it covers.
    fn credit(&mut self, kind: Hold, (start, end): (i64, i64), origin_ms: i64) {
        let mut t = start;
        while t < end {
            let width = self.width_ms;
            let bucket_end = (t / width + 1) * width;
            let upto = bucket_end.min(end);
            let bucket = self.at(t, origin_ms);
            match kind {
                Hold::Gate => bucket.gate_ms += upto - t,
                Hold::Backoff => bucket.backoff_ms += upto - t,
            }
            t = upto;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(origin: Instant, ms: u64) -> Instant {
        origin + Duration::from_millis(ms)
    }

    #[test]
    fn percentiles_are_within_the_stated_error_of_the_exact_ones() {
        // A spread of latencies from 80 µs to 40 s, deterministic.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut exact = Vec::new();
        let mut sketch = Sketch::default();
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let micros = 80 + (x % 1_000) * (x % 1_000) * (1 + x % 40);
            exact.push(micros);
            sketch.add(Duration::from_micros(micros));
        }
        exact.sort_unstable();
        for q in [0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0] {
            let rank = ((q * exact.len() as f64).ceil() as usize).max(1);
            let truth = exact[rank - 1] as f64 / 1000.0;
            let estimate = sketch.quantile_ms(q).unwrap();
            let error = (estimate - truth).abs() / truth;
            assert!(
                error <= SKETCH_RELATIVE_ERROR + 1e-12,
                "q {q}: {estimate} ms vs exact {truth} ms ({error})"
            );
        }
        assert_eq!(sketch.count(), 100_000);
        assert!(sketch.0.len() < 500, "{} bins", sketch.0.len());
        assert_eq!(Sketch::default().quantile_ms(0.5), None);
    }

    #[test]
    fn merged_sketches_give_the_percentiles_of_all_their_latencies() {
        let (mut a, mut b, mut all) = (Sketch::default(), Sketch::default(), Sketch::default());
        for ms in 1..=100u64 {
            let d = Duration::from_millis(ms);
            if ms % 2 == 0 {
                a.add(d);
            } else {
                b.add(d);
            }
            all.add(d);
        }
        a.merge(&b);
        assert_eq!(a, all);
        let p50 = a.quantile_ms(0.5).unwrap();
        assert!((p50 - 50.0).abs() / 50.0 <= SKETCH_RELATIVE_ERROR, "{p50}");
    }

    #[test]
    fn buckets_are_seconds_then_coarsen_keeping_every_count() {
        let origin = Instant::now();
        let recorder = Recorder::starting(origin, 1_000_000);
        let mut inner = recorder.lock();
        // One request a second for 3,000 s: past MAX_BUCKETS seconds the
        // width doubles, then doubles again.
        for s in 0..3_000i64 {
            inner
                .at(s * 1000 + 500, 1_000_000)
                .endpoint("create_order")
                .requests += 1;
        }
        assert_eq!(inner.width_ms, 4000);
        assert!(inner.buckets.len() <= MAX_BUCKETS);
        assert_eq!(inner.buckets.len(), 750);
        let total: u64 = inner
            .buckets
            .iter()
            .map(|b| b.endpoints[0].1.requests)
            .sum();
        assert_eq!(total, 3_000);
        for (k, b) in inner.buckets.iter().enumerate() {
            assert_eq!(b.start_ms, 1_000_000 + k as i64 * 4000);
            assert_eq!(b.width_ms, 4000);
            assert_eq!(b.endpoints[0].1.requests, 4);
        }
        // A day at most MAX_BUCKETS buckets of 128 s.
        inner.at(86_400_000 - 1, 1_000_000);
        assert_eq!(inner.width_ms, 128_000);
        assert!(inner.buckets.len() <= MAX_BUCKETS);
    }

    #[test]
    fn changes_are_taken_once_and_a_merge_replaces_everything() {
        let origin = Instant::now() - Duration::from_secs(5);
        let recorder = Recorder::starting(origin, 0);
        recorder.request("create_order");
        let first = recorder.take_changed();
        assert_eq!(first.replace_from_ms, None);
        assert_eq!(first.buckets.len(), 6);
        assert_eq!(first.buckets[5].endpoints[0].1.requests, 1);
        // Only the current bucket again.
        let second = recorder.take_changed();
        assert_eq!(second.buckets.len(), 1);
        recorder.lock().coarsen();
        let merged = recorder.take_changed();
        assert_eq!(merged.replace_from_ms, Some(0));
        assert_eq!(merged.buckets.len(), 3);
    }

    #[test]
    fn holds_are_credited_to_the_buckets_they_cover_once() {
        let origin = Instant::now() - Duration::from_secs(10);
        let recorder = Recorder::starting(origin, 0);
        // Overlapping gate pauses 1.5 s → 2.5 s and 2.0 s → 4.2 s: one hold.
        recorder.hold(Hold::Gate, at(origin, 1500), at(origin, 2500));
        recorder.hold(Hold::Gate, at(origin, 2000), at(origin, 4200));
        // A separate backoff 6.9 s → 7.1 s.
        recorder.hold(Hold::Backoff, at(origin, 6900), at(origin, 7100));
        let changed = recorder.take_changed();
        let gate: Vec<i64> = changed.buckets.iter().map(|b| b.gate_ms).collect();
        assert_eq!(&gate[..6], &[0, 500, 1000, 1000, 200, 0]);
        let backoff: Vec<i64> = changed.buckets.iter().map(|b| b.backoff_ms).collect();
        assert_eq!(&backoff[5..9], &[0, 100, 100, 0]);
        // Nothing is credited twice.
        let again = recorder.take_changed();
        let total: i64 = again.buckets.iter().map(|b| b.gate_ms + b.backoff_ms).sum();
        assert_eq!(total, 0);
    }
}
