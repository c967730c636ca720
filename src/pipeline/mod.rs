//! A run: check and register the input, start the writer, take the rows
//! through the command's chain (`dispatch` streams every command by
//! customer; `chain` is each command's work for one customer), then
//! summarise. Requests for one customer are never in flight
//! together; every request shares one rate limiter and one 429 gate.

pub mod backoff;
mod chain;
mod claims;
mod context;
mod dispatch;
pub mod mode;
pub mod plan;
pub mod progress;
mod register;
mod requeue;
pub mod shutdown;
mod spec;
mod stages;

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::exit::Exit;
use crate::input::check::check_quotes;
use crate::input::fingerprint::{scan, Snapshot, Stamp};
use crate::input::reader::Schema;
use crate::input::{ColumnOptions, Header, InputError, OrderReader};
use crate::report::StageTiming;
use crate::store::writer::{Writer, WriterStats};
use crate::store::{RowState, Store, StoreError};
use context::RunContext;
pub use context::{quota, Clients, Pace};
pub use mode::{Mode, Stage};
pub use register::IdentityOptions;
use register::{refuse_copy_of_earlier_file, refuse_if_unfinished_other, register, write_rejects};
pub use requeue::{prepare_retry, RetryPlan};
pub use shutdown::{handle_signals, Shutdown, Signal, Stop};
pub use spec::RunSpec;

/// Finished runs of at least this many rows may get their database compacted.
const VACUUM_AFTER_ROWS: u64 = 10_000;

/// What `orderbatch run`, `refresh` or `change` was asked to do.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// What the run is (stored with it, read back by retry and serve).
    pub spec: RunSpec,
    pub input: PathBuf,
    pub db: PathBuf,
    /// Requests per second across all endpoints; `None` is unlimited.
    pub rate: Option<NonZeroU32>,
    /// Requests in flight at once (one worker each).
    pub concurrency: usize,
    pub max_attempts: u32,
    /// First backoff delay; later ones grow exponentially.
    pub retry_base: Duration,
    /// How long a request that got no answer may still be running at the
    /// provider: its lookup waits until then.
    pub settle: Duration,
    /// Stop taking new rows after this many rows failed.
    pub max_errors: Option<u64>,
    /// Start a new run even if this input's last run is finished (`refresh`).
    pub new_run: bool,
    /// How `run` settles order identities against earlier runs.
    pub identity: IdentityOptions,
    /// Write rejected rows here (with PII when the flag is set).
    pub rejects: Option<crate::input::rejects::RejectsFile>,
    /// No progress display.
    pub quiet: bool,
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub run_id: i64,
    pub total: u64,
    pub resumed: bool,
    pub states: Vec<(RowState, u64)>,
    pub requests: Vec<(String, u64)>,
    pub elapsed: Duration,
    pub stop: Stop,
    pub writer: WriterStats,
    /// Stages this invocation worked on.
    pub stages: Vec<StageTiming>,
    /// When the earliest deferred row may go (unix seconds), if any wait.
    pub deferred_until: Option<i64>,
}

impl RunSummary {
    /// Rows in `state`.
    pub fn count(&self, state: RowState) -> u64 {
        self.states
            .iter()
            .find(|(s, _)| *s == state)
            .map_or(0, |(_, n)| *n)
    }

    /// Requests sent in all.
    pub fn request_total(&self) -> u64 {
        self.requests.iter().map(|(_, n)| n).sum()
    }

    /// How the command that made this run ends: the one mapping of a run's
    /// end to an exit status (`run`, `refresh`, `change`, `retry`, `ce`,
    /// and each file of `inbox`).
    pub fn exit(&self) -> Exit {
        match &self.stop {
            Stop::Running if self.deferred_until.is_some() => Exit::Deferred,
            Stop::Interrupted(signal) => Exit::Signal(signal.number()),
            Stop::Aborted(_) => Exit::Stopped,
            Stop::Running
                if self.count(RowState::Done) + self.count(RowState::Skipped) == self.total =>
            {
                Exit::Done
            }
            Stop::Running => Exit::RowsLeft,
        }
    }
}

/// Why a run could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Conflict(#[from] Conflict),
    #[error(transparent)]
    InputChanged(#[from] crate::input::fingerprint::InputChanged),
    /// A task of the run's own panicked or was cancelled.
    #[error("internal error: the {what} stopped")]
    Internal {
        what: &'static str,
        source: tokio::task::JoinError,
    },
}

/// Why a run cannot start, or be retried, as asked: nothing was sent, and
/// the message says what to do instead.
#[derive(Debug, thiserror::Error)]
pub enum Conflict {
    #[error(
        "{matched} of the {checked} rows of {input} without a site_order_identifier have the \
         same content as rows of earlier runs of {db} ({runs}), ignoring whitespace, phone \
         punctuation, e-mail case and amount formatting: it looks like a copy of an earlier file \
         (edited, grown, reordered or with other line endings). Creating them again would \
         duplicate those orders. Run again with --same-orders to adopt the earlier orders for the \
         matching rows (the others are created), or --new-orders to create every row anew. \
         Nothing was sent",
        runs = by_run_text(.by_run)
    )]
    CopyOfEarlierFile {
        matched: u64,
        checked: usize,
        input: PathBuf,
        db: PathBuf,
        /// Matching rows per earlier run: (run id, rows).
        by_run: Vec<(i64, u64)>,
    },
    #[error(
        "{db} holds unfinished run {run} of {input} (fingerprint {fingerprint}), and this \
         input's content differs (fingerprint {found}). Finish that run with the original file, \
         or use another --db; starting over beside it could create orders twice"
    )]
    UnfinishedOtherRun {
        db: PathBuf,
        run: i64,
        input: String,
        fingerprint: String,
        found: String,
    },
    #[error("state database {db} does not exist")]
    NoDatabase { db: PathBuf },
    #[error("{db} holds no such run")]
    NoSuchRun { db: PathBuf },
    #[error(
        "run {run} needs its input file {input} (fingerprint {fingerprint}), which cannot be \
         read, and it is not in {archive} either (where `orderbatch inbox` archives by \
         default). Put the file back at {input} (a copy will do: its fingerprint is checked), \
         then retry"
    )]
    InputUnreadable {
        run: i64,
        input: PathBuf,
        fingerprint: String,
        /// Where an inbox's archive of it was looked for.
        archive: String,
        source: std::io::Error,
    },
    #[error(
        "{input} has changed since run {run} read it: expected fingerprint {fingerprint}, found \
         {found}. Restore the original file to retry this run"
    )]
    InputDiffers {
        run: i64,
        input: PathBuf,
        fingerprint: String,
        found: String,
    },
    #[error(
        "run {run} in {db} has options this version cannot read; run its command again instead \
         of retry"
    )]
    UnreadableSpec {
        run: i64,
        db: PathBuf,
        source: serde_json::Error,
    },
}

fn by_run_text(by_run: &[(i64, u64)]) -> String {
    by_run
        .iter()
        .map(|(run, n)| format!("{n} of run {run}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A run that could not go on, and whether it had sent requests by then
/// (the state database keeps what was done; the same command resumes).
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct RunError {
    pub error: PipelineError,
    pub requests_sent: bool,
}

impl RunError {
    /// The input changed under the run (nothing with the new values was
    /// sent).
    pub fn input_changed(&self) -> bool {
        matches!(self.error, PipelineError::InputChanged(_))
    }
}

/// The header `run` accepts.
pub fn schema(columns: &ColumnOptions) -> Schema<'_> {
    Mode::Run.schema(columns)
}

/// The `site_order_identifier` sent for a row whose input has none: stable for
/// the same file and row, so a resumed run finds what an earlier one created.
pub fn derived_order_id(fingerprint: &str, row_number: u64) -> String {
    format!("ob-{}-{row_number}", &fingerprint[..16])
}

/// Takes every row of `options.input` through its command's chain.
pub async fn run(
    options: &RunOptions,
    clients: Clients,
    shutdown: Shutdown,
) -> Result<RunSummary, RunError> {
    let pace = Pace::new(options.rate);
    let prepared = prepare(options, &[]).await?;
    prepared
        .execute(
            clients,
            shutdown,
            &pace,
            Sequence {
                fed: None,
                compact: true,
            },
        )
        .await
}

/// A run's input checked and registered, nothing sent yet: the first half
/// of a run, which `orderbatch inbox` does for its next file while the
/// last one's requests go on ([`Prepared::execute`] is the second).
pub struct Prepared {
    options: RunOptions,
    run_id: i64,
    resumed: bool,
    /// A resumed run: when its earlier invocation was last seen sending
    /// (unix ms).
    last_seen_ms: Option<i64>,
    header: Arc<Header>,
    snapshot: Snapshot,
    store: Store,
    registered: Option<StageTiming>,
    /// How long this half took.
    took: Duration,
}

/// How a run fits in a sequence of runs sharing a [`Pace`] (`inbox`).
#[derive(Debug, Default)]
pub struct Sequence {
    /// Told `true` once every customer of the run has been handed out (the
    /// next run may start); dropped when the run ends.
    pub fed: Option<tokio::sync::watch::Sender<bool>>,
    /// Compact the database after a large run (not while another run of
    /// the process writes: see [`compact`]).
    pub compact: bool,
}

/// Checks and registers `options.input` (or finds its run to resume),
/// sending nothing. `beside`: unfinished runs of this process that a new
/// run may start beside (the files of an inbox pass still in flight).
pub async fn prepare(options: &RunOptions, beside: &[i64]) -> Result<Prepared, RunError> {
    prepare_inner(options, beside)
        .await
        .map_err(|error| RunError {
            error,
            requests_sent: false,
        })
}

impl Prepared {
    /// The run this is.
    pub fn run_id(&self) -> i64 {
        self.run_id
    }

    /// Takes every unfinished row through its command's chain, within
    /// `pace` (shared with other runs of this process, for `inbox`).
    pub async fn execute(
        self,
        clients: Clients,
        shutdown: Shutdown,
        pace: &Pace,
        sequence: Sequence,
    ) -> Result<RunSummary, RunError> {
        let sent = Arc::new(std::sync::atomic::AtomicBool::new(false));
        self.execute_inner(clients, shutdown, pace, sequence, sent.clone())
            .await
            .map_err(|error| RunError {
                error,
                requests_sent: sent.load(std::sync::atomic::Ordering::Relaxed),
            })
    }
}

async fn prepare_inner(options: &RunOptions, beside: &[i64]) -> Result<Prepared, PipelineError> {
    let started = Instant::now();
    let mode = options.spec.mode;
    let command = mode.command();
    // Check the header and the quoting before touching the state database.
    let header = Arc::new(
        OrderReader::open(&options.input, mode.schema(&options.spec.columns))?
            .header()
            .clone(),
    );
    // The stamp comes before the hash: an edit while (or after) the file is
    // hashed is noticed before any row is sent.
    let stamp = Stamp::of(&options.input).map_err(|source| InputError::Io {
        path: options.input.clone(),
        source,
    })?;
    let input = options.input.clone();
    let fp = blocking(move || {
        let scanned = scan(&input, true).map_err(|source| InputError::Io {
            path: input.clone(),
            source,
        })?;
        check_quotes(&input, scanned.open_quote)?;
        Ok(scanned.fingerprint.unwrap_or_default())
    })
    .await?;

    // On a blocking thread: a new run reads the whole input for copies of
    // earlier files, and `inbox` prepares its next file while the last one
    // sends.
    let (store, run_id, resumed) = {
        let (options, fp, beside) = (options.clone(), fp.clone(), beside.to_vec());
        blocking(move || {
            let store = Store::open(&options.db)?;
            let previous = store.find_run(command, &fp)?;
            let resume = match previous {
                Some(run) if options.new_run && run.finished_at.is_some() => None,
                other => other,
            };
            let (run_id, resumed) = match resume {
                Some(run) => (run.id, true),
                None => {
                    refuse_if_unfinished_other(&store, command, &fp, &beside)?;
                    if mode == Mode::Run && options.identity.same_orders.is_none() {
                        refuse_copy_of_earlier_file(
                            &store,
                            &options.input,
                            mode,
                            &options.spec.columns,
                        )?;
                    }
                    let options_json = options.spec.to_stored();
                    let path = std::fs::canonicalize(&options.input)
                        .unwrap_or_else(|_| options.input.clone())
                        .display()
                        .to_string();
                    (store.create_run(command, &path, &fp, &options_json)?, false)
                }
            };
            Ok((store, run_id, resumed))
        })
        .await?
    };
    // Before this invocation is recorded and its writer adds to the
    // timeline.
    let last_seen_ms = if resumed {
        store.last_seen_ms(run_id)?
    } else {
        None
    };
    store.record_invocation(run_id)?;
    if resumed {
        tracing::info!(
            run_id,
            "resuming the run of this file recorded in {}",
            options.db.display()
        );
    }
    let mut store = store;
    let run = store.run(run_id)?.expect("run just found or created");
    let mut registered = None;
    if !run.registered {
        let begun = Instant::now();
        let (input, pass, fp2) = (
            options.input.clone(),
            options.spec.columns.clone(),
            fp.clone(),
        );
        let identity = options.identity;
        store =
            blocking(move || register(store, mode, run_id, &input, &pass, &fp2, identity)).await?;
        registered = Some(StageTiming {
            stage: "register input".into(),
            rows: store.run(run_id)?.map_or(0, |r| r.total_rows),
            seconds: begun.elapsed().as_secs_f64(),
        });
    }
    if let Some(out) = options.rejects.clone() {
        let (db, input, columns) = (
            options.db.clone(),
            options.input.clone(),
            options.spec.columns.clone(),
        );
        blocking(move || write_rejects(&db, mode, run_id, &input, &columns, &out)).await?;
    }
    store.set_finished(run_id, false)?;

    let snapshot = Snapshot::new(&options.input, fp.clone(), stamp);
    let mut store = store;
    {
        let (input, columns) = (options.input.clone(), options.spec.columns.clone());
        store = blocking(move || {
            dispatch::fill_offsets(&mut store, mode, run_id, &input, &columns)?;
            Ok(store)
        })
        .await?;
    }
    Ok(Prepared {
        options: options.clone(),
        run_id,
        resumed,
        last_seen_ms,
        header,
        snapshot,
        store,
        registered,
        took: started.elapsed(),
    })
}

impl Prepared {
    async fn execute_inner(
        self,
        clients: Clients,
        shutdown: Shutdown,
        pace: &Pace,
        sequence: Sequence,
        sent: Arc<std::sync::atomic::AtomicBool>,
    ) -> Result<RunSummary, PipelineError> {
        let started = Instant::now();
        let Prepared {
            options,
            run_id,
            resumed,
            last_seen_ms,
            header,
            snapshot,
            store,
            registered,
            took,
        } = self;
        let options = &options;
        let mode = options.spec.mode;
        let writer = Writer::start(store, run_id);
        let mut ctx = RunContext::new(
            clients,
            options,
            &writer,
            shutdown.clone(),
            run_id,
            sent,
            pace,
        )
        .telling(sequence.fed);
        if let Some(ms) = last_seen_ms {
            ctx = ctx.resumed_after(
                std::time::SystemTime::UNIX_EPOCH + Duration::from_millis(ms.max(0).unsigned_abs()),
            );
        }
        let ctx = Arc::new(ctx);
        let env = dispatch::RunEnv::start(options, run_id, header, snapshot.clone()).await?;
        let stage_result = dispatch::run_all(Arc::new(env), &ctx).await;
        drop(ctx);
        // Every row is read (and checked) before it is sent; an edit after the
        // last row was read changed nothing that was sent, but is said.
        if stage_result.is_ok() && !shutdown.is_stopping() {
            if let Err(changed) = snapshot.check() {
                tracing::warn!(
                    "{changed}. Every row of this run had been read before the change and was sent \
                     with the values the run started with"
                );
            }
        }
        let writer_stats = writer.finish().map_err(PipelineError::Store)?;
        // The writer is done: the rest is written on one connection.
        let store = Store::open_reader(&options.db)?;
        if let Mode::Refresh { .. } = mode {
            // Rows naming one order carry the values issued last for it.
            store.share_latest_values(run_id)?;
        }
        let timings = registered.into_iter().chain(stage_result?).collect();

        let states = store.state_counts(run_id)?;
        let unfinished = states.iter().any(|(s, n)| !s.is_final() && *n > 0);
        let deferred_until = store.next_deferred(run_id)?;
        if !unfinished {
            store.set_finished(run_id, true)?;
            if sequence.compact {
                let this_run: u64 = states.iter().map(|(_, n)| n).sum();
                compact(&store, this_run)?;
            }
        }
        Ok(RunSummary {
            run_id,
            total: states.iter().map(|(_, n)| n).sum(),
            resumed,
            requests: store.request_counts(run_id)?,
            states,
            elapsed: took + started.elapsed(),
            stop: shutdown.state(),
            writer: writer_stats,
            stages: timings,
            deferred_until,
        })
    }
}

/// Rows grow stage by stage and leave pages part-empty: compacts the
/// database when `rows` just finished (a run, or an inbox pass) are most of
/// it (a backfill, a first run), so a database of many nightly runs is not
/// rewritten every night. Not while a run writes: VACUUM holds the database
/// for as long as it takes.
pub fn compact(store: &Store, rows: u64) -> Result<bool, StoreError> {
    if rows >= VACUUM_AFTER_ROWS && rows * 2 >= store.row_count()? {
        store.vacuum()?;
        return Ok(true);
    }
    Ok(false)
}

pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, PipelineError> + Send + 'static,
) -> Result<T, PipelineError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|source| PipelineError::Internal {
            what: "database task",
            source,
        })?
}
