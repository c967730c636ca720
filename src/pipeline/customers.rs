//! `run`, streamed by customer: each customer's rows go create → refresh →
//! token as soon as its own creates are done, while other customers keep
//! flowing. No stage waits for the whole file, and a customer in trouble
//! (retrying, backing off) holds no request slot and blocks no other.
//!
//! A feeder on a blocking thread reads the run's unfinished rows from the
//! state database by customer, in chunks, with each row's input fields
//! re-read at its recorded offset; it hands whole customers to the
//! dispatcher, which keeps a bounded number of them in flight (memory stays
//! flat) and never waits on any one of them.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use super::context::RunContext;
use super::progress::StageProgress;
use super::stages::{self, create::create, groups, Group};
use super::{PipelineError, RunOptions};
use crate::input::fingerprint::Snapshot;
use crate::input::{Header, OrderReader, Row};
use crate::report::StageTiming;
use crate::store::{RowState, Store, StoredRow};

/// The states a `run` row can be in before it is finished.
const UNFINISHED: [RowState; 4] = [
    RowState::Pending,
    RowState::Creating,
    RowState::Created,
    RowState::UrlsRefreshed,
];

/// One customer's unfinished rows, each with its input fields when a
/// request needs them.
struct Unit {
    customer: String,
    rows: Vec<(StoredRow, Option<Arc<Row>>)>,
    /// Recorded by an earlier run's refresh (for rows resumed at token).
    exclusive: bool,
}

/// Progress of the three stages, shown together.
struct Bars {
    create: StageProgress,
    refresh: StageProgress,
    token: StageProgress,
}

/// Whether the run's unfinished rows can be streamed: every one knows where
/// its input record is (rows registered by an older version do not).
pub(super) fn streamable(store: &Store, run_id: i64) -> Result<bool, PipelineError> {
    Ok(!store.any_without_offset(run_id, &UNFINISHED)?)
}

/// Takes every unfinished row of the run through its customer's chain.
pub(super) async fn stream(
    options: &RunOptions,
    run_id: i64,
    ctx: &Arc<RunContext>,
    header: &Arc<Header>,
    snapshot: &Snapshot,
) -> Result<Vec<StageTiming>, PipelineError> {
    let db = options.db.clone();
    let counts = tokio::task::spawn_blocking(move || {
        Ok::<_, PipelineError>(Store::open_reader(&db)?.state_counts(run_id)?)
    })
    .await
    .map_err(|e| PipelineError::Internal(e.to_string()))??;
    let count = |states: &[RowState]| -> u64 {
        counts
            .iter()
            .filter(|(s, _)| states.contains(s))
            .map(|(_, n)| n)
            .sum()
    };
    let multi = indicatif::MultiProgress::new();
    let quiet = options.quiet;
    let bars = Arc::new(Bars {
        create: StageProgress::start_in(
            Some(&multi),
            "create_order",
            count(&UNFINISHED[..2]),
            quiet,
        ),
        refresh: StageProgress::start_in(
            Some(&multi),
            "refresh_embedded_js_urls",
            count(&UNFINISHED[..3]),
            quiet,
        ),
        token: StageProgress::start_in(Some(&multi), "get_smart_token", count(&UNFINISHED), quiet),
    });

    // Customers in flight: enough that slow or failing ones never starve
    // the request slots, few enough that memory stays flat.
    let in_flight = (options.concurrency * 4).max(64);
    let (units, mut incoming) = mpsc::channel::<Unit>(in_flight);
    let feeder = {
        let (db, input, columns, snapshot, stopping) = (
            options.db.clone(),
            options.input.clone(),
            options.columns.clone(),
            snapshot.clone(),
            ctx.shutdown.clone(),
        );
        let per_row_tokens = header.has_token_columns();
        tokio::task::spawn_blocking(move || {
            feed(
                &db,
                run_id,
                &input,
                &columns,
                &snapshot,
                per_row_tokens,
                &stopping,
                units,
            )
        })
    };

    let slots = Arc::new(Semaphore::new(in_flight));
    let mut running = JoinSet::new();
    while let Some(unit) = incoming.recv().await {
        let slot = slots.clone().acquire_owned().await.expect("never closed");
        let (ctx, header, bars) = (ctx.clone(), header.clone(), bars.clone());
        running.spawn(async move {
            let rows: Vec<u64> = unit.rows.iter().map(|(r, _)| r.row_number).collect();
            let work = std::panic::AssertUnwindSafe(customer(&ctx, &header, unit, &bars));
            let caught = futures_util::FutureExt::catch_unwind(work)
                .await
                .map_err(|panic| stages::panic_message(&*panic));
            if let Err(what) = caught {
                stages::internal_error(&ctx, &rows, what, &bars.create).await;
            }
            drop(slot);
        });
        // Reap finished customers as we go.
        while running.try_join_next().is_some() {}
    }
    while running.join_next().await.is_some() {}
    let fed = feeder
        .await
        .map_err(|e| PipelineError::Internal(format!("feeder failed: {e}")))?;
    for bar in [&bars.create, &bars.refresh, &bars.token] {
        bar.finish();
    }
    fed?;
    Ok([
        ("create_order", &bars.create),
        ("refresh_embedded_js_urls", &bars.refresh),
        ("get_smart_token", &bars.token),
    ]
    .into_iter()
    .filter(|(_, bar)| bar.done() > 0)
    .map(|(stage, bar)| StageTiming {
        stage: stage.to_string(),
        rows: bar.done(),
        seconds: bar.busy_secs(),
    })
    .collect())
}

/// One customer's chain: its creates one after another, then its URLs
/// (pages of five), then its tokens. Never two requests of the customer
/// in flight together.
async fn customer(ctx: &RunContext, header: &Header, unit: Unit, bars: &Bars) {
    let mut created = Vec::new();
    let mut ready = Vec::new();
    let mut inputs = std::collections::HashMap::new();
    if let Some(row) = stages::failpoint_row() {
        assert!(
            !unit.rows.iter().any(|(r, _)| r.row_number == row),
            "failpoint panic-at-row:{row}"
        );
    }
    for (stored, input) in unit.rows {
        if ctx.shutdown.is_stopping() {
            return;
        }
        if let Some(input) = &input {
            inputs.insert(stored.row_number, input.clone());
        }
        match stored.state {
            RowState::Pending | RowState::Creating => {
                let Some(input) = input else { continue };
                if let Some((pnm_order, pnm_customer)) =
                    create(ctx, header, &input, &stored, &bars.create).await
                {
                    let mut row = stored;
                    row.pnm_order_identifier = Some(pnm_order);
                    row.pnm_customer_identifier = pnm_customer.or(row.pnm_customer_identifier);
                    row.state = RowState::Created;
                    created.push(row);
                }
            }
            RowState::Created => created.push(stored),
            RowState::UrlsRefreshed => ready.push(stored),
            _ => {}
        }
    }
    if ctx.shutdown.is_stopping() {
        return;
    }
    let mut exclusive = unit.exclusive;
    if !created.is_empty() {
        let refreshed = groups::refresh(
            ctx,
            Group {
                customer: unit.customer.clone(),
                rows: created,
                exclusive: false,
            },
            true,
            &bars.refresh,
        )
        .await;
        exclusive = refreshed.exclusive || (ready.is_empty() && exclusive);
        ready.extend(refreshed.rows);
    }
    if ctx.shutdown.is_stopping() || ready.is_empty() {
        return;
    }
    if header.has_token_columns() {
        for row in ready {
            if let Some(input) = inputs.get(&row.row_number) {
                groups::token_row(ctx, header, input, &row, &bars.token).await;
            }
        }
        return;
    }
    groups::token(
        ctx,
        Group {
            customer: unit.customer,
            rows: ready,
            exclusive,
        },
        &bars.token,
    )
    .await;
}

/// Reads the run's unfinished rows by customer (chunked), re-reads the
/// input fields of rows that send them, and sends each customer whole.
#[allow(clippy::too_many_arguments)]
fn feed(
    db: &std::path::Path,
    run_id: i64,
    input: &std::path::Path,
    columns: &crate::input::ColumnOptions,
    snapshot: &Snapshot,
    per_row_tokens: bool,
    stopping: &super::Shutdown,
    units: mpsc::Sender<Unit>,
) -> Result<(), PipelineError> {
    let store = Store::open_reader(db)?;
    let mut reader = OrderReader::open_for_seeking(input, super::Mode::Run.schema(columns))?;
    let mut failure: Option<PipelineError> = None;
    let mut current: Option<Unit> = None;
    let started = Instant::now();
    let send = |unit: Unit| -> bool {
        // Only a customer resumed at its tokens needs what its refresh saw.
        let resumed_at_token = unit
            .rows
            .iter()
            .any(|(row, _)| row.state == RowState::UrlsRefreshed);
        let exclusive = resumed_at_token
            && store
                .customer_wide_token_allowed(run_id, &unit.customer)
                .unwrap_or(false);
        units.blocking_send(Unit { exclusive, ..unit }).is_ok() && !stopping.is_stopping()
    };
    let mut going = true;
    store.for_each_row(run_id, &UNFINISHED, true, |row| {
        let needs_input =
            per_row_tokens || matches!(row.state, RowState::Pending | RowState::Creating);
        let input = if needs_input {
            if let Err(changed) = super::feed::input_unchanged(snapshot, stopping) {
                failure = Some(changed);
                return false;
            }
            match reader.read_at(row.input_offset.unwrap_or(0), row.line, row.input_row) {
                Ok(input) => Some(Arc::new(input)),
                Err(e) => {
                    failure = Some(e.into());
                    return false;
                }
            }
        } else {
            None
        };
        let customer = row.site_customer_identifier.clone().unwrap_or_default();
        match &mut current {
            Some(unit) if unit.customer == customer => unit.rows.push((row, input)),
            _ => {
                let next = Unit {
                    customer,
                    rows: vec![(row, input)],
                    exclusive: false,
                };
                if let Some(done) = current.replace(next) {
                    going = send(done);
                }
            }
        }
        going
    })?;
    if let (true, Some(unit), None) = (going, current, &failure) {
        send(unit);
    }
    tracing::debug!(
        seconds = started.elapsed().as_secs_f64(),
        "every customer handed to the workers"
    );
    failure.map_or(Ok(()), Err)
}
