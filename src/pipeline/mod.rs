//! The run: register the input's rows, then create orders, refresh their
//! URLs and issue smart tokens, each stage through a pool of workers that
//! share one rate limiter. Every customer belongs to one worker, so requests
//! for a customer are never in flight together.

mod context;
pub mod plan;
pub mod progress;
pub mod retry;
pub mod shutdown;
mod stages;

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::input::check::check_quotes;
use crate::input::fingerprint::{fingerprint, scan};
use crate::input::reader::Schema;
use crate::input::rejects::RejectsWriter;
use crate::input::validate::check_row;
use crate::input::{ColumnOptions, Header, InputError, OrderReader};
use crate::provider::paynearme::params::{ep, CREATE_REQUIRED};
use crate::provider::paynearme::PnmClient;
use crate::report::StageTiming;
use crate::store::rows::NewRow;
use crate::store::writer::{Write, Writer, WriterStats};
use crate::store::{RowState, Store, StoreError, StoredRow};
use context::Ctx;
use progress::StageProgress;
pub use shutdown::{Shutdown, Stop};
use stages::{Group, Job};

/// The command name runs of `orderbatch run` are stored under.
pub const RUN_COMMAND: &str = "run";
/// Rows recorded per transaction while registering the input.
const REGISTER_BATCH: usize = 2000;
/// Jobs queued per worker.
const WORKER_QUEUE: usize = 16;

/// What `orderbatch run` was asked to do.
#[derive(Debug, Clone)]
pub struct RunOptions {
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
    /// Write rejected rows here (with PII when the flag is set).
    pub rejects: Option<(PathBuf, bool)>,
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
    #[error("internal error: {0}")]
    Internal(String),
}

/// The header `run` accepts.
pub fn schema(columns: &ColumnOptions) -> Schema<'_> {
    Schema {
        endpoints: ep::CREATE,
        required: CREATE_REQUIRED,
        columns,
    }
}

/// The `site_order_identifier` sent for a row whose input has none: stable for
/// the same file and row, so a resumed run finds what an earlier one created.
pub fn derived_order_id(fingerprint: &str, row_number: u64) -> String {
    format!("ob-{}-{row_number}", &fingerprint[..16])
}

/// Takes every row of `options.input` through create, refresh and token.
pub async fn run(
    options: &RunOptions,
    client: PnmClient,
    shutdown: Shutdown,
) -> Result<RunSummary, PipelineError> {
    let started = Instant::now();
    // Check the header and the quoting before touching the state database.
    OrderReader::open(&options.input, schema(&options.columns))?;
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
    let (run_id, resumed) = match store.find_run(RUN_COMMAND, &fp)? {
        Some(run) => (run.id, true),
        None => {
            refuse_if_unfinished_other(&store, &fp)?;
            let options_json = serde_json::json!({
                "rate": options.rate.map(NonZeroU32::get),
                "concurrency": options.concurrency,
                "max_attempts": options.max_attempts,
                "columns": options.columns,
            })
            .to_string();
            let path = std::fs::canonicalize(&options.input)
                .unwrap_or_else(|_| options.input.clone())
                .display()
                .to_string();
            (
                store.create_run(RUN_COMMAND, &path, &fp, &options_json)?,
                false,
            )
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
    if !run.registered {
        let (input, pass, fp2) = (options.input.clone(), options.columns.clone(), fp.clone());
        store = blocking(move || register(store, run_id, &input, &pass, &fp2)).await?;
    }
    if let Some((out, include_pii)) = options.rejects.clone() {
        let (db, input, columns) = (
            options.db.clone(),
            options.input.clone(),
            options.columns.clone(),
        );
        blocking(move || write_rejects(&db, run_id, &input, &columns, &out, include_pii)).await?;
    }
    store.set_finished(run_id, false)?;

    let writer = Writer::start(store, run_id);
    let ctx = Arc::new(Ctx::new(
        client,
        options,
        writer.sender(),
        shutdown.clone(),
        run_id,
    ));
    let header = Arc::new(
        OrderReader::open(&options.input, schema(&options.columns))?
            .header()
            .clone(),
    );
    let stage_result = run_stages(options, run_id, &ctx, &header, &writer).await;
    drop(ctx);
    let writer_stats = writer.finish().map_err(PipelineError::Store)?;
    let timings = stage_result?;

    let store = Store::open_reader(&options.db)?;
    let states = store.state_counts(run_id)?;
    let unfinished = states.iter().any(|(s, n)| !s.is_final() && *n > 0);
    if !unfinished {
        store.set_finished(run_id, true)?;
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
    })
}

async fn run_stages(
    options: &RunOptions,
    run_id: i64,
    ctx: &Arc<Ctx>,
    header: &Arc<Header>,
    writer: &Writer,
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
    let stages: [(&'static str, &'static [RowState]); 3] = [
        ("create_order", &[RowState::Pending, RowState::Creating]),
        ("refresh_embedded_js_urls", &[RowState::Created]),
        ("get_smart_token", &[RowState::UrlsRefreshed]),
    ];
    let mut timings = Vec::new();
    for (stage, states) in stages {
        if ctx.shutdown.is_stopping() {
            break;
        }
        let todo = count(states).await?;
        if todo == 0 {
            continue;
        }
        let started = Instant::now();
        let progress = StageProgress::start(stage, todo, options.quiet);
        let (db, stopping) = (db.clone(), ctx.shutdown.clone());
        let feed: Feeder = if stage == "create_order" {
            let (input, columns) = (options.input.clone(), options.columns.clone());
            Box::new(move |senders| feed_creates(&db, run_id, &input, &columns, &stopping, senders))
        } else {
            let state = states[0];
            Box::new(move |senders| feed_groups(&db, run_id, state, &stopping, senders))
        };
        run_stage(ctx, header, options.concurrency, &progress, feed).await?;
        progress.finish();
        flush(writer).await;
        timings.push(StageTiming {
            stage: stage.to_string(),
            rows: progress.done(),
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    Ok(timings)
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
    ctx: &Arc<Ctx>,
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
                stages::execute(&ctx, &header, job, &progress).await;
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

/// The worker that owns `customer`.
fn shard(customer: &str, workers: usize) -> usize {
    let mut hasher = DefaultHasher::new();
    customer.hash(&mut hasher);
    (hasher.finish() % workers as u64) as usize
}

/// Sends each row still to be created, with its input fields re-read from
/// the file, to its customer's worker.
fn feed_creates(
    db: &Path,
    run_id: i64,
    input: &Path,
    columns: &ColumnOptions,
    shutdown: &Shutdown,
    senders: Vec<mpsc::Sender<Job>>,
) -> Result<(), PipelineError> {
    let store = Store::open_reader(db)?;
    let mut reader = OrderReader::open(input, schema(columns))?;
    let mut failure = None;
    store.for_each_row(
        run_id,
        &[RowState::Pending, RowState::Creating],
        false,
        |stored| {
            let row = loop {
                match reader.next_row() {
                    Some(Ok(row)) if row.number < stored.row_number => continue,
                    Some(Ok(row)) if row.number == stored.row_number => break row,
                    Some(Err(e)) => {
                        failure = Some(PipelineError::Input(e));
                        return false;
                    }
                    _ => {
                        failure = Some(PipelineError::Conflict(format!(
                            "{}: row {} is missing; the file changed while the run was going",
                            input.display(),
                            stored.row_number
                        )));
                        return false;
                    }
                }
            };
            let customer = stored.site_customer_identifier.clone().unwrap_or_default();
            let target = &senders[shard(&customer, senders.len())];
            target
                .blocking_send(Job::Create(Box::new((row, stored))))
                .is_ok()
                && !shutdown.is_stopping()
        },
    )?;
    failure.map_or(Ok(()), Err)
}

/// Sends each customer's rows in `state` as one group to its worker.
fn feed_groups(
    db: &Path,
    run_id: i64,
    state: RowState,
    shutdown: &Shutdown,
    senders: Vec<mpsc::Sender<Job>>,
) -> Result<(), PipelineError> {
    let store = Store::open_reader(db)?;
    let send = |customer: String, rows: Vec<StoredRow>| {
        let target = &senders[shard(&customer, senders.len())];
        let group = Group { customer, rows };
        let job = match state {
            RowState::Created => Job::Refresh(group),
            _ => Job::Token(group),
        };
        target.blocking_send(job).is_ok() && !shutdown.is_stopping()
    };
    let mut current: Option<(String, Vec<StoredRow>)> = None;
    let mut going = true;
    store.for_each_row(run_id, &[state], true, |row| {
        let customer = row.site_customer_identifier.clone().unwrap_or_default();
        match &mut current {
            Some((c, rows)) if *c == customer => rows.push(row),
            _ => {
                if let Some((c, rows)) = current.replace((customer, vec![row])) {
                    going = send(c, rows);
                }
            }
        }
        going
    })?;
    if let (true, Some((c, rows))) = (going, current) {
        send(c, rows);
    }
    Ok(())
}

/// Writes the run's rejected rows, with their original columns re-read
/// from the input, to `out`.
fn write_rejects(
    db: &Path,
    run_id: i64,
    input: &Path,
    columns: &ColumnOptions,
    out: &Path,
    include_pii: bool,
) -> Result<(), PipelineError> {
    let store = Store::open_reader(db)?;
    let mut reader = OrderReader::open(input, schema(columns))?;
    let io_err = |source| {
        PipelineError::Input(InputError::Io {
            path: out.to_path_buf(),
            source,
        })
    };
    let mut writer = RejectsWriter::create(out, reader.header(), include_pii).map_err(io_err)?;
    let mut failure = None;
    store.for_each_row(run_id, &[RowState::Rejected], false, |stored| {
        while let Some(Ok(row)) = reader.next_row() {
            if row.number == stored.row_number {
                let error = stored.last_error.as_deref().unwrap_or_default();
                if let Err(e) = writer.write(&row, error) {
                    failure = Some(io_err(e));
                    return false;
                }
                break;
            }
        }
        true
    })?;
    if let Some(e) = failure {
        return Err(e);
    }
    writer.finish().map_err(io_err)
}

/// Records every input row: valid rows as `pending`, invalid ones as
/// `rejected` with their reason.
fn register(
    mut store: Store,
    run_id: i64,
    input: &Path,
    columns: &ColumnOptions,
    fp: &str,
) -> Result<Store, PipelineError> {
    let mut reader = OrderReader::open(input, schema(columns))?;
    let header = reader.header().clone();
    let customer_col = header.index("site_customer_identifier");
    let order_col = header.index("site_order_identifier");
    let mut batch = Vec::with_capacity(REGISTER_BATCH);
    let mut total = 0u64;
    while let Some(row) = reader.next_row() {
        let row = row?;
        total += 1;
        let rejection = check_row(&header, &row, CREATE_REQUIRED).err().map(|r| {
            (
                "invalid_input".to_string(),
                format!("line {}: {r}", row.line),
            )
        });
        let text = |col: Option<usize>| {
            col.and_then(|i| row.get(i))
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        let site_order_identifier =
            text(order_col).or_else(|| Some(derived_order_id(fp, row.number)));
        batch.push(NewRow {
            row_number: row.number,
            line: row.line,
            site_customer_identifier: text(customer_col),
            site_order_identifier,
            rejection,
        });
        if batch.len() == REGISTER_BATCH {
            store.insert_rows(run_id, &batch)?;
            batch.clear();
        }
    }
    store.insert_rows(run_id, &batch)?;
    store.mark_registered(run_id, total)?;
    Ok(store)
}

/// A changed input file must not start a second run beside an unfinished one:
/// rows without their own `site_order_identifier` would be created again.
fn refuse_if_unfinished_other(store: &Store, fp: &str) -> Result<(), PipelineError> {
    for run in store.runs()? {
        if run.command != RUN_COMMAND || run.fingerprint == fp || run.finished_at.is_some() {
            continue;
        }
        let counts = store.state_counts(run.id)?;
        if counts.iter().any(|(s, n)| !s.is_final() && *n > 0) {
            return Err(PipelineError::Conflict(format!(
                "{} holds unfinished run {} of {} (fingerprint {}), and this input's content differs \
                 (fingerprint {fp}). Finish that run with the original file, or use another --db; \
                 starting over beside it could create orders twice",
                store.path().display(),
                run.id,
                run.input_path,
                run.fingerprint
            )));
        }
    }
    Ok(())
}

/// What `orderbatch retry` resumes: the run's input and pass-through columns.
#[derive(Debug, Clone)]
pub struct RetryPlan {
    pub run_id: i64,
    pub input: PathBuf,
    pub columns: ColumnOptions,
    pub requeued: u64,
}

/// Checks that `run_id` (default: the newest run) still has its input file,
/// unchanged, and puts its failed rows (with `error_code`, if given) back in
/// the queue.
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
        None => store
            .runs()?
            .into_iter()
            .rev()
            .find(|r| r.command == RUN_COMMAND),
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
    let columns = serde_json::from_str::<serde_json::Value>(&run.options)
        .ok()
        .and_then(|o| serde_json::from_value(o["columns"].clone()).ok())
        .unwrap_or_default();
    let requeued = store.requeue_failed(run.id, error_code)?;
    Ok(RetryPlan {
        run_id: run.id,
        input,
        columns,
        requeued,
    })
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
