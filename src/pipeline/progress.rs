//! Stage progress: an indicatif bar with rate and ETA when stderr is a
//! terminal, otherwise a plain log line every few seconds.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Progress of one stage.
#[derive(Clone)]
pub struct StageProgress {
    inner: Arc<Inner>,
}

struct Inner {
    name: &'static str,
    total: u64,
    done: AtomicU64,
    started: Instant,
    /// Microseconds from `started` to the latest row finished.
    last_us: AtomicU64,
    bar: Option<ProgressBar>,
}

/// How often plain progress lines are logged.
const LOG_EVERY: Duration = Duration::from_secs(5);

impl StageProgress {
    /// Starts showing progress of `name` over `total` rows.
    pub fn start(name: &'static str, total: u64, quiet: bool) -> Self {
        Self::start_in(None, name, total, quiet)
    }

    /// [`StageProgress::start`], as one of several bars shown together
    /// (stages that overlap).
    pub fn start_in(
        multi: Option<&indicatif::MultiProgress>,
        name: &'static str,
        total: u64,
        quiet: bool,
    ) -> Self {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:>26} [{bar:30}] {pos}/{len} rows  {per_sec}  ETA {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix(name);
            match multi {
                Some(multi) => multi.add(bar),
                None => bar,
            }
        });
        let progress = StageProgress {
            inner: Arc::new(Inner {
                name,
                total,
                done: AtomicU64::new(0),
                started: Instant::now(),
                last_us: AtomicU64::new(0),
                bar,
            }),
        };
        if progress.inner.bar.is_none() && !quiet {
            let weak = Arc::downgrade(&progress.inner);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(LOG_EVERY);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let Some(inner) = weak.upgrade() else { break };
                    inner.log();
                }
            });
        }
        progress
    }

    /// Counts `n` more rows finished.
    pub fn inc(&self, n: u64) {
        self.inner.done.fetch_add(n, Ordering::Relaxed);
        let at = self.inner.started.elapsed().as_micros() as u64;
        self.inner.last_us.fetch_max(at, Ordering::Relaxed);
        if let Some(bar) = &self.inner.bar {
            bar.inc(n);
        }
    }

    /// Rows finished so far.
    pub fn done(&self) -> u64 {
        self.inner.done.load(Ordering::Relaxed)
    }

    /// Seconds from the start to the latest row finished.
    pub fn busy_secs(&self) -> f64 {
        self.inner.last_us.load(Ordering::Relaxed) as f64 / 1e6
    }

    /// Ends the stage's display.
    pub fn finish(&self) {
        if let Some(bar) = &self.inner.bar {
            bar.finish();
        }
    }
}

impl Inner {
    fn log(&self) {
        let done = self.done.load(Ordering::Relaxed);
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        tracing::info!(
            "{}: {done}/{} rows ({:.1} rows/s)",
            self.name,
            self.total,
            done as f64 / secs
        );
    }
}
