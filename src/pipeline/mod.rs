//! The run: register the input's rows, then create orders, refresh their
//! URLs and issue smart tokens, each stage through a pool of workers that
//! share one rate limiter. Every customer belongs to one worker, so requests
//! for a customer are never in flight together.

mod context;
mod customers;
mod feed;
pub mod mode;
pub mod plan;
pub mod progress;
mod register;
pub mod retry;
pub mod shutdown;
mod stages;

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::input::check::check_quotes;
use crate::input::fingerprint::{fingerprint, scan, Snapshot};
use crate::input::reader::Schema;
use crate::input::{ColumnOptions, Header, InputError, OrderReader};
use crate::report::StageTiming;
use crate::store::writer::{Write, Writer, WriterStats};
use crate::store::{RowState, Store, StoreError};
use context::RunContext;
pub use context::{quota, requests_sent, Clients};
use feed::{feed_groups, feed_rows};
pub use mode::{Mode, Stage};
use progress::StageProgress;
pub use register::IdentityOptions;
use register::{refuse_copy_of_earlier_file, refuse_if_unfinished_other, register, write_rejects};
pub use shutdown::{Shutdown, Stop};
use stages::Job;

/// Finished runs of at least this many rows may get their database compacted.
const VACUUM_AFTER_ROWS: u64 = 10_000;

/// Jobs queued per worker.
const WORKER_QUEUE: usize = 16;

/// What `orderbatch run`, `refresh` or `change` was asked to do.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Which command: its input, checks and stages.
    pub mode: Mode,
    /// Parameters added to every `get_smart_token` call.
    pub token_options: Vec<(String, String)>,
    /// Default `payment_method` of Commerce Engine retries.
    pub payment_defaults: crate::provider::commerce_engine::PaymentMethod,
    pub input: PathBuf,
    pub db: PathBuf,
    /// Requests per second across all endpoints; `None` is unlimited.
    pub rate: Option<NonZeroU32>,
    /// Requests in flight at once (one worker each).
    pub concurrency: usize,
    pub max_attempts: u32,
    /// First backoff delay; later ones grow exponentially.
    pub retry_base: Duration,
    /// Pass-through and unknown columns.
    pub columns: ColumnOptions,
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
}

/// Why a run could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    InputChanged(#[from] crate::input::fingerprint::InputChanged),
    #[error("internal error: {0}")]
    Internal(String),
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

/// Takes every row of `options.input` through create, refresh and token.
pub async fn run(
    options: &RunOptions,
    clients: Clients,
    shutdown: Shutdown,
) -> Result<RunSummary, PipelineError> {
    let started = Instant::now();
    let mode = options.mode;
    let command = mode.command();
    // Check the header and the quoting before touching the state database.
    let header = Arc::new(
        OrderReader::open(&options.input, mode.schema(&options.columns))?
            .header()
            .clone(),
    );
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

    let store = Store::open(&options.db)?;
    let previous = store.find_run(command, &fp)?;
    let resume = match previous {
        Some(run) if options.new_run && run.finished_at.is_some() => None,
        other => other,
    };
    let (run_id, resumed) = match resume {
        Some(run) => (run.id, true),
        None => {
            refuse_if_unfinished_other(&store, command, &fp)?;
            if mode == Mode::Run && options.identity.same_orders.is_none() {
                refuse_copy_of_earlier_file(&store, &options.input, mode, &options.columns)?;
            }
            let options_json = serde_json::json!({
                "mode": mode,
                "token_options": options.token_options,
                "rate": options.rate.map(NonZeroU32::get),
                "concurrency": options.concurrency,
                "max_attempts": options.max_attempts,
                "columns": options.columns,
                "payment_defaults": options.payment_defaults,
            })
            .to_string();
            let path = std::fs::canonicalize(&options.input)
                .unwrap_or_else(|_| options.input.clone())
                .display()
                .to_string();
            (store.create_run(command, &path, &fp, &options_json)?, false)
        }
    };
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
        let (input, pass, fp2) = (options.input.clone(), options.columns.clone(), fp.clone());
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
            options.columns.clone(),
        );
        blocking(move || write_rejects(&db, mode, run_id, &input, &columns, &out)).await?;
    }
    store.set_finished(run_id, false)?;

    let snapshot = Snapshot::of(&options.input, &fp).map_err(|source| InputError::Io {
        path: options.input.clone(),
        source,
    })?;
    let writer = Writer::start(store, run_id);
    let ctx = Arc::new(RunContext::new(
        clients,
        options,
        &writer,
        shutdown.clone(),
        run_id,
    ));
    let stage_result = run_stages(options, run_id, &ctx, &header, &writer, &snapshot).await;
    drop(ctx);
    let writer_stats = writer.finish().map_err(PipelineError::Store)?;
    if let Mode::Refresh { .. } = mode {
        // Rows naming one order carry the values issued last for it.
        Store::open_reader(&options.db)?.share_latest_values(run_id)?;
    }
    let timings = registered.into_iter().chain(stage_result?).collect();

    let store = Store::open_reader(&options.db)?;
    let states = store.state_counts(run_id)?;
    let unfinished = states.iter().any(|(s, n)| !s.is_final() && *n > 0);
    let deferred_until = store.next_deferred(run_id)?;
    if !unfinished {
        store.set_finished(run_id, true)?;
        // Rows grow stage by stage and leave pages part-empty: compact when
        // this run is most of the database (a backfill, a first run), so a
        // database of many nightly runs is not rewritten every night.
        let this_run: u64 = states.iter().map(|(_, n)| n).sum();
        if this_run >= VACUUM_AFTER_ROWS && this_run * 2 >= store.row_count()? {
            store.vacuum()?;
        }
    }
    Ok(RunSummary {
        run_id,
        total: states.iter().map(|(_, n)| n).sum(),
        resumed,
        requests: store.request_counts(run_id)?,
        states,
        elapsed: started.elapsed(),
        stop: shutdown.state(),
        writer: writer_stats,
        stages: timings,
        deferred_until,
    })
}

async fn run_stages(
    options: &RunOptions,
    run_id: i64,
    ctx: &Arc<RunContext>,
    header: &Arc<Header>,
    writer: &Writer,
    snapshot: &Snapshot,
) -> Result<Vec<StageTiming>, PipelineError> {
    let db = options.db.clone();
    let count = |states: &'static [RowState]| {
        let db = db.clone();
        blocking(move || {
            let store = Store::open_reader(&db)?;
            let counts = store.state_counts(run_id)?;
            Ok(counts
                .iter()
                .filter(|(s, _)| states.contains(s))
                .map(|(_, n)| n)
                .sum::<u64>())
        })
    };
    if options.mode == Mode::Run {
        let db = options.db.clone();
        let streamable =
            blocking(move || customers::streamable(&Store::open_reader(&db)?, run_id)).await?;
        if streamable {
            let timings = customers::stream(options, run_id, ctx, header, snapshot).await?;
            flush(writer).await;
            return Ok(timings);
        }
        // Rows registered by an older version lack their input offsets:
        // stage by stage, as that version did.
    }
    let mut timings = Vec::new();
    for &stage in options.mode.stages() {
        if ctx.shutdown.is_stopping() {
            break;
        }
        let todo = count(stage.takes()).await?;
        if todo == 0 {
            continue;
        }
        let started = Instant::now();
        let progress = StageProgress::start(stage.name(), todo, options.quiet);
        let (db, stopping) = (db.clone(), ctx.shutdown.clone());
        let per_row_tokens = stage == Stage::Token && header.has_token_columns();
        let feed: Feeder = if stage.reads_input() || per_row_tokens {
            let (input, columns, mode, snapshot) = (
                options.input.clone(),
                options.columns.clone(),
                options.mode,
                snapshot.clone(),
            );
            Box::new(move |senders| {
                feed_rows(
                    &db, run_id, mode, stage, &input, &columns, &snapshot, false, &stopping,
                    senders,
                )
            })
        } else {
            Box::new(move |senders| feed_groups(&db, run_id, stage, &stopping, senders))
        };
        // Rows whose customer is unknown are looked up one at a time: two
        // at once could be for the same customer.
        let concurrency = if stage == Stage::Resolve {
            1
        } else {
            options.concurrency
        };
        run_stage(ctx, header, concurrency, &progress, feed).await?;
        progress.finish();
        flush(writer).await;
        timings.push(StageTiming {
            stage: stage.name().to_string(),
            rows: progress.done(),
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    if let Mode::CeRetry { max_wait_secs } = options.mode {
        let run = StageRun {
            options,
            run_id,
            ctx,
            header,
            writer,
            snapshot,
        };
        wait_for_deferred(&run, max_wait_secs, &mut timings).await?;
    }
    if let Mode::Refresh { tokens: false, .. } = options.mode {
        if !ctx.shutdown.is_stopping() {
            ctx.write(Write::MoveAll {
                from: RowState::UrlsRefreshed,
                to: RowState::Done,
            })
            .await;
            flush(writer).await;
        }
    }
    Ok(timings)
}

/// `ce retry-payments`: while a deferred row's window opens within
/// `max_wait_secs` of now, sleeps until it does and runs the stage again.
/// What the stages of one run share.
struct StageRun<'a> {
    options: &'a RunOptions,
    run_id: i64,
    ctx: &'a Arc<RunContext>,
    header: &'a Arc<Header>,
    writer: &'a Writer,
    snapshot: &'a Snapshot,
}

async fn wait_for_deferred(
    run: &StageRun<'_>,
    max_wait_secs: u64,
    timings: &mut Vec<StageTiming>,
) -> Result<(), PipelineError> {
    let StageRun {
        options,
        run_id,
        ctx,
        header,
        writer,
        snapshot,
    } = *run;
    let deadline = chrono::Utc::now().timestamp() + max_wait_secs as i64;
    loop {
        let db = options.db.clone();
        let next = blocking(move || Ok(Store::open_reader(&db)?.next_deferred(run_id)?)).await?;
        let Some(next) = next.filter(|&t| t <= deadline) else {
            return Ok(());
        };
        let wait = (next - chrono::Utc::now().timestamp()).max(0) as u64;
        tracing::info!("waiting {wait}s for the retry window of deferred rows (--max-wait)");
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(wait) + Duration::from_millis(200)) => {}
            _ = ctx.shutdown.stopped() => return Ok(()),
        }
        let started = Instant::now();
        let stage = Stage::CeRetry;
        let progress = StageProgress::start(stage.name(), 0, options.quiet);
        let (db, stopping, input, columns, mode, snapshot) = (
            options.db.clone(),
            ctx.shutdown.clone(),
            options.input.clone(),
            options.columns.clone(),
            options.mode,
            snapshot.clone(),
        );
        let feed: Feeder = Box::new(move |senders| {
            feed_rows(
                &db, run_id, mode, stage, &input, &columns, &snapshot, true, &stopping, senders,
            )
        });
        run_stage(ctx, header, options.concurrency, &progress, feed).await?;
        progress.finish();
        flush(writer).await;
        timings.push(StageTiming {
            stage: format!("{} (after waiting {wait}s)", stage.name()),
            rows: progress.done(),
            seconds: started.elapsed().as_secs_f64(),
        });
    }
}

/// Sends a stage's jobs to the workers, from a blocking thread.
type Feeder = Box<dyn FnOnce(Vec<mpsc::Sender<Job>>) -> Result<(), PipelineError> + Send>;

/// Waits until everything written so far is committed.
async fn flush(writer: &Writer) {
    let (ack, done) = tokio::sync::oneshot::channel();
    if writer.sender().send(Write::Flush { ack }).await.is_ok() {
        let _ = done.await;
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, PipelineError> + Send + 'static,
) -> Result<T, PipelineError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| PipelineError::Internal(e.to_string()))?
}

/// Starts one worker per unit of concurrency, feeds them from a blocking
/// thread, and waits until every job is done.
async fn run_stage(
    ctx: &Arc<RunContext>,
    header: &Arc<Header>,
    concurrency: usize,
    progress: &StageProgress,
    feed: impl FnOnce(Vec<mpsc::Sender<Job>>) -> Result<(), PipelineError> + Send + 'static,
) -> Result<(), PipelineError> {
    let mut senders = Vec::with_capacity(concurrency);
    let mut workers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency.max(1) {
        let (tx, mut rx) = mpsc::channel::<Job>(WORKER_QUEUE);
        senders.push(tx);
        let (ctx, header, progress) = (ctx.clone(), header.clone(), progress.clone());
        workers.push(tokio::spawn(async move {
            while let Some(job) = rx.recv().await {
                if ctx.shutdown.is_stopping() {
                    continue;
                }
                let rows = job.rows();
                let work =
                    std::panic::AssertUnwindSafe(stages::execute(&ctx, &header, job, &progress));
                let caught = futures_util::FutureExt::catch_unwind(work)
                    .await
                    .map_err(|panic| stages::panic_message(&*panic));
                if let Err(what) = caught {
                    stages::internal_error(&ctx, &rows, what, &progress).await;
                }
            }
        }));
    }
    let fed = blocking(move || feed(senders)).await;
    for worker in workers {
        worker
            .await
            .map_err(|e| PipelineError::Internal(format!("worker failed: {e}")))?;
    }
    fed
}

/// What `orderbatch retry` resumes: the run's input, and everything the run
/// was started with that its requests need.
#[derive(Debug, Clone)]
pub struct RetryPlan {
    pub run_id: i64,
    pub input: PathBuf,
    pub columns: ColumnOptions,
    pub mode: Mode,
    pub token_options: Vec<(String, String)>,
    pub payment_defaults: crate::provider::commerce_engine::PaymentMethod,
    /// Failed rows that [`RetryPlan::requeue`] would put back.
    error_code: Option<String>,
}

/// The options a run stores (see [`run`]) as `orderbatch retry` reads them.
#[derive(Debug, serde::Deserialize)]
struct StoredOptions {
    mode: Mode,
    #[serde(default)]
    token_options: Vec<(String, String)>,
    #[serde(default)]
    columns: ColumnOptions,
    #[serde(default)]
    payment_defaults: crate::provider::commerce_engine::PaymentMethod,
}

/// Reads what retrying `run_id` (default: the newest run) of `db` needs,
/// changing nothing: the caller checks its configuration, then
/// [`RetryPlan::requeue`]s.
pub fn prepare_retry(
    db: &Path,
    run_id: Option<i64>,
    error_code: Option<&str>,
) -> Result<RetryPlan, PipelineError> {
    if !db.exists() {
        return Err(PipelineError::Conflict(format!(
            "state database {} does not exist",
            db.display()
        )));
    }
    let store = Store::open(db)?;
    let run = match run_id {
        Some(id) => store.run(id)?,
        None => store.runs()?.pop(),
    }
    .ok_or_else(|| PipelineError::Conflict(format!("{} holds no such run", db.display())))?;
    let input = PathBuf::from(&run.input_path);
    let found = fingerprint(&input).map_err(|e| {
        PipelineError::Conflict(format!(
            "run {} needs its input file {} (fingerprint {}), which cannot be read: {e}",
            run.id,
            input.display(),
            run.fingerprint
        ))
    })?;
    if found != run.fingerprint {
        return Err(PipelineError::Conflict(format!(
            "{} has changed since run {} read it: expected fingerprint {}, found {found}. \
             Restore the original file to retry this run",
            input.display(),
            run.id,
            run.fingerprint
        )));
    }
    let options: StoredOptions = serde_json::from_str(&run.options).map_err(|e| {
        PipelineError::Conflict(format!(
            "run {} in {} has options this version cannot read ({e}); \
             run its command again instead of retry",
            run.id,
            db.display()
        ))
    })?;
    Ok(RetryPlan {
        run_id: run.id,
        input,
        columns: options.columns,
        mode: options.mode,
        token_options: options.token_options,
        payment_defaults: options.payment_defaults,
        error_code: error_code.map(str::to_string),
    })
}

impl RetryPlan {
    /// Puts the failed rows back into the state their command's stages
    /// take; returns how many.
    pub fn requeue(&self, db: &Path) -> Result<u64, PipelineError> {
        let store = Store::open(db)?;
        Ok(store.requeue_failed(
            self.run_id,
            self.error_code.as_deref(),
            &self.mode.requeue(),
        )?)
    }
}

/// Installs the Ctrl-C handler: the first asks the run to stop after its
/// in-flight requests, the second exits at once (state is safe either way).
pub fn handle_ctrl_c(shutdown: Shutdown) {
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("interrupted: finishing in-flight requests and saving state (Ctrl-C again to quit now)");
            shutdown.stop(Stop::Interrupted);
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("quitting now; run the same command again to resume");
                std::process::exit(130);
            }
        }
    });
}
