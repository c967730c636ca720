//! The stage loop of `refresh`, `change` and `ce retry-payments` (and of a
//! `run` registered by an older version): each stage reads its rows from the
//! store, routes each customer to one worker, and ends before the next
//! begins; then the Commerce Engine wait for deferred rows.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::context::RunContext;
use super::feed::{feed_groups, feed_rows};
use super::progress::StageProgress;
use super::stages::{self, Job};
use super::{blocking, customers, flush, Mode, PipelineError, RunOptions, Stage};
use crate::input::fingerprint::Snapshot;
use crate::input::Header;
use crate::report::StageTiming;
use crate::store::writer::{Write, Writer};
use crate::store::{RowState, Store};

/// Jobs queued per worker.
const WORKER_QUEUE: usize = 16;

pub(super) async fn run_stages(
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
