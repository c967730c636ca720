//! The one engine of every command: the run's unfinished rows are streamed
//! by customer, and each customer goes through its command's chain
//! ([`super::chain`]) as soon as it is read, while other customers keep
//! flowing. No step waits for the whole file, and a customer in trouble
//! (retrying, backing off) holds no request slot and blocks no other.
//!
//! A feeder on a blocking thread reads the rows from the state database by
//! customer, in chunks, with each row's input fields re-read at its
//! recorded offset when its chain sends them; it hands whole customers to
//! the dispatcher, which keeps a bounded number of them in flight (memory
//! stays flat) and never waits on any one of them. Rows that name an order
//! the store has never seen and no customer are looked up first, one at a
//! time ([`resolve`]), so that they too go by customer.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use super::chain::{self, Bars};
use super::context::{RunContext, CUSTOMER};
use super::stages::{self, order_selector, Group};
use super::{blocking, Mode, PipelineError, RunOptions, Shutdown, Stage, Stop};
use crate::input::fingerprint::Snapshot;
use crate::input::{ColumnOptions, Header, OrderReader, Row};
use crate::report::StageTiming;
use crate::store::writer::Write;
use crate::store::{RowState, Store, StoredRow};

/// One customer's rows that its chain takes, each with its input fields
/// when a request needs them.
pub(super) struct Unit {
    /// The site customer, when known (rows of no known customer go alone).
    pub customer: Option<String>,
    pub rows: Vec<(StoredRow, Option<Arc<Row>>)>,
    /// `run` and `refresh` resumed at their tokens: a customer-wide
    /// `get_smart_token` touches only these rows (see
    /// [`Store::customer_wide_token_allowed`]).
    pub exclusive: bool,
}

/// A reader connection shared by the customers' chains (short reads on a
/// blocking thread).
pub(super) type SharedReader = Arc<Mutex<Store>>;

/// What a run has once it is registered, besides the [`RunContext`] its
/// requests go through: built once by [`super::run`], read by the
/// feeder, the dispatcher and every customer's chain.
pub(super) struct RunEnv {
    pub run_id: i64,
    pub mode: Mode,
    /// The state database (the feeder and `resolve` open their own reader).
    pub db: PathBuf,
    pub input: PathBuf,
    pub columns: ColumnOptions,
    pub header: Arc<Header>,
    /// What the input was when the run started: checked before a row's
    /// fields are sent.
    pub snapshot: Snapshot,
    /// `--concurrency` (customers in flight are a multiple of it).
    pub concurrency: usize,
    pub bars: Bars,
    pub reader: SharedReader,
}

impl RunEnv {
    /// Opens the chains' reader and starts the progress bars.
    pub(super) async fn start(
        options: &RunOptions,
        run_id: i64,
        header: Arc<Header>,
        snapshot: Snapshot,
    ) -> Result<RunEnv, PipelineError> {
        let db = options.db.clone();
        let (reader, counts) = blocking(move || {
            let store = Store::open_reader(&db)?;
            let counts = store.state_counts(run_id)?;
            Ok((store, counts))
        })
        .await?;
        let mode = options.spec.mode;
        Ok(RunEnv {
            run_id,
            mode,
            db: options.db.clone(),
            input: options.input.clone(),
            columns: options.spec.columns.clone(),
            header,
            snapshot,
            concurrency: options.concurrency,
            bars: Bars::start(mode, &counts, options.quiet),
            reader: Arc::new(Mutex::new(reader)),
        })
    }
}

/// Never a request with values the run did not start with: checks the
/// input before a row's fields are sent, and stops the run when it changed.
pub(super) fn input_unchanged(
    snapshot: &Snapshot,
    shutdown: &Shutdown,
) -> Result<(), PipelineError> {
    snapshot.check().map_err(|changed| {
        shutdown.stop(Stop::Aborted(
            "the input file changed since the run started".into(),
        ));
        changed.into()
    })
}

/// The states a command's chain takes a row in (its unfinished states).
fn unfinished(mode: Mode) -> Vec<RowState> {
    let mut states = Vec::new();
    for stage in mode.stages() {
        for state in stage.takes() {
            if !states.contains(state) {
                states.push(*state);
            }
        }
    }
    states
}

/// Takes every unfinished row of the run through its customer's chain:
/// first the lookups of rows of no known customer, then every customer,
/// then (Commerce Engine) the rows whose retry window opens within
/// `--max-wait`.
pub(super) async fn run_all(
    env: Arc<RunEnv>,
    ctx: &Arc<RunContext>,
) -> Result<Vec<StageTiming>, PipelineError> {
    let mode = env.mode;
    if mode.stages().contains(&Stage::Resolve) {
        resolve(ctx, &env).await?;
    }
    if !ctx.shutdown.is_stopping() {
        dispatch(ctx, &env, false).await?;
    }
    if let Mode::CeRetry { max_wait_secs } = mode {
        wait_for_deferred(ctx, &env, max_wait_secs).await?;
    }
    if let Mode::Refresh { tokens: false, .. } = mode {
        if !ctx.shutdown.is_stopping() {
            ctx.write(Write::MoveAll {
                from: RowState::UrlsRefreshed,
                to: RowState::Done,
            })
            .await;
        }
    }
    ctx.flush().await;
    Ok(env.bars.finish())
}

/// Looks up, one at a time, the customer of each row that names an order
/// the store has never seen and no customer: two lookups at once could be
/// for one customer.
async fn resolve(ctx: &Arc<RunContext>, env: &Arc<RunEnv>) -> Result<(), PipelineError> {
    let (tx, mut rx) = mpsc::channel::<StoredRow>(64);
    let (db, run_id, stopping) = (env.db.clone(), env.run_id, ctx.shutdown.clone());
    let feeder = blocking(move || {
        let store = Store::open_reader(&db)?;
        store.for_each_row(run_id, &[RowState::Pending], true, |row| {
            // Rows of no site customer come first.
            if row.site_customer_identifier.is_some() {
                return false;
            }
            if row.pnm_customer_identifier.is_some() || order_selector(&row).is_none() {
                return true;
            }
            tx.blocking_send(row).is_ok() && !stopping.is_stopping()
        })?;
        Ok(())
    });
    let progress = env.bars.get(Stage::Resolve);
    let work = async {
        while let Some(row) = rx.recv().await {
            if ctx.shutdown.is_stopping() {
                break;
            }
            let group = Group {
                customer: String::new(),
                rows: vec![row],
                exclusive: false,
            };
            stages::resolve(ctx, group, progress).await;
        }
    };
    let (fed, ()) = tokio::join!(feeder, work);
    fed?;
    ctx.flush().await;
    Ok(())
}

/// One pass over the run's unfinished rows, customer by customer (with
/// `only_due`, deferred rows only once their time has come).
async fn dispatch(
    ctx: &Arc<RunContext>,
    env: &Arc<RunEnv>,
    only_due: bool,
) -> Result<(), PipelineError> {
    // Customers in flight: enough that slow or failing ones never starve
    // the request slots, few enough that memory stays flat.
    let in_flight = (env.concurrency * 4).max(64);
    let (units, mut incoming) = mpsc::channel::<Unit>(in_flight);
    let feeder = {
        let feed = Feed {
            env: env.clone(),
            only_due,
            stopping: ctx.shutdown.clone(),
        };
        tokio::task::spawn_blocking(move || feed.run(units))
    };

    let slots = Arc::new(Semaphore::new(in_flight));
    let mut running = JoinSet::new();
    while let Some(unit) = incoming.recv().await {
        let slot = slots.clone().acquire_owned().await.expect("never closed");
        let (ctx, env) = (ctx.clone(), env.clone());
        // The customer's turn among the runs sharing the budget, taken
        // now (in order), waited for in its task.
        let claim = unit_key(&unit).map(|key| ctx.claim(&key));
        running.spawn(async move {
            let rows: Vec<u64> = unit.rows.iter().map(|(r, _)| r.row_number).collect();
            let mut claim = claim;
            if let Some(claim) = &mut claim {
                tokio::select! {
                    () = claim.ready() => {}
                    // Its rows stay as they are, for the next invocation.
                    () = ctx.shutdown.stopped() => return,
                }
            }
            run_unit(&ctx, &env, unit, rows).await;
            drop(claim);
            drop(slot);
        });
        // Reap finished customers as we go.
        while running.try_join_next().is_some() {}
    }
    // Every customer is handed out: a run waiting for this one may start.
    if !only_due {
        tracing::debug!(run_id = env.run_id, "every customer handed out");
        ctx.fed();
    }
    while running.join_next().await.is_some() {}
    feeder.await.map_err(|source| PipelineError::Internal {
        what: "feeder",
        source,
    })?
}

/// A customer's key among the runs of a budget: its site identifier, else
/// its PayNearMe one; rows of neither go alone and claim nothing.
fn unit_key(unit: &Unit) -> Option<String> {
    unit.customer.clone().or_else(|| {
        unit.rows
            .first()
            .and_then(|(row, _)| row.pnm_customer_identifier.as_ref())
            .map(|c| format!("\u{0}{c}"))
    })
}

/// One customer through its chain, a panic turned into its rows' failure.
async fn run_unit(ctx: &Arc<RunContext>, env: &Arc<RunEnv>, unit: Unit, rows: Vec<u64>) {
    let customer = unit.customer.clone();
    let work = CUSTOMER.scope(customer, chain::customer(ctx, env, unit));
    let work = std::panic::AssertUnwindSafe(work);
    let caught = futures_util::FutureExt::catch_unwind(work)
        .await
        .map_err(|panic| stages::panic_message(&*panic));
    if let Err(what) = caught {
        stages::internal_error(ctx, &rows, what, env.bars.first()).await;
    }
}

/// `ce retry-payments`: while a deferred row's window opens within
/// `max_wait_secs` of now, sleeps until it does and takes the rows due.
async fn wait_for_deferred(
    ctx: &Arc<RunContext>,
    env: &Arc<RunEnv>,
    max_wait_secs: u64,
) -> Result<(), PipelineError> {
    let deadline = chrono::Utc::now().timestamp() + max_wait_secs as i64;
    loop {
        ctx.flush().await;
        let reader = env.reader.clone();
        let run_id = env.run_id;
        let next = blocking(move || {
            let store = reader
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            Ok(store.next_deferred(run_id)?)
        })
        .await?;
        let Some(next) = next.filter(|&t| t <= deadline) else {
            return Ok(());
        };
        let wait = (next - chrono::Utc::now().timestamp()).max(0) as u64;
        tracing::info!("waiting {wait}s for the retry window of deferred rows (--max-wait)");
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(wait) + Duration::from_millis(200)) => {}
            _ = ctx.shutdown.stopped() => return Ok(()),
        }
        dispatch(ctx, env, true).await?;
    }
}

/// What the feeder reads, and from where.
struct Feed {
    env: Arc<RunEnv>,
    only_due: bool,
    stopping: Shutdown,
}

impl Feed {
    /// Whether the chain sends the row's input fields.
    fn needs_input(&self, row: &StoredRow) -> bool {
        self.env.header.has_token_columns()
            || match self.env.mode {
                Mode::Run => matches!(row.state, RowState::Pending | RowState::Creating),
                Mode::Refresh { .. } => false,
                Mode::Change | Mode::CeRetry { .. } => true,
            }
    }

    /// Reads the run's unfinished rows by customer (chunked), re-reads the
    /// input fields of rows that send them, and sends each customer whole.
    fn run(self, units: mpsc::Sender<Unit>) -> Result<(), PipelineError> {
        let store = Store::open_reader(&self.env.db)?;
        let mut reader = OrderReader::open_for_seeking(
            &self.env.input,
            self.env.mode.schema(&self.env.columns),
        )?;
        let mut failure: Option<PipelineError> = None;
        let mut current: Option<(Option<String>, Unit)> = None;
        let started = Instant::now();
        let now = chrono::Utc::now().timestamp();
        let send = |unit: Unit| -> bool {
            // Only a customer resumed at its tokens needs what its refresh saw.
            let resumed_at_token = unit
                .rows
                .iter()
                .any(|(row, _)| row.state == RowState::UrlsRefreshed);
            let exclusive = resumed_at_token
                && unit.customer.as_deref().is_some_and(|c| {
                    store
                        .customer_wide_token_allowed(self.env.run_id, c)
                        .unwrap_or(false)
                });
            units.blocking_send(Unit { exclusive, ..unit }).is_ok() && !self.stopping.is_stopping()
        };
        let mut going = true;
        store.for_each_row(self.env.run_id, &unfinished(self.env.mode), true, |row| {
            // Woken for deferred rows: only those whose time has come.
            if self.only_due
                && row.state == RowState::Deferred
                && row.next_attempt_at.is_some_and(|t| t > now)
            {
                return true;
            }
            let input = if self.needs_input(&row) {
                if let Err(changed) = input_unchanged(&self.env.snapshot, &self.stopping) {
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
            // A customer by its site identifier, else its PayNearMe one;
            // a row of neither goes alone.
            let key = row.site_customer_identifier.clone().or_else(|| {
                row.pnm_customer_identifier
                    .clone()
                    .map(|c| format!("\u{0}{c}"))
            });
            let customer = row.site_customer_identifier.clone();
            match &mut current {
                Some((k, unit)) if key.is_some() && *k == key => unit.rows.push((row, input)),
                _ => {
                    let next = Unit {
                        customer,
                        rows: vec![(row, input)],
                        exclusive: false,
                    };
                    if let Some((_, done)) = current.replace((key, next)) {
                        going = send(done);
                    }
                }
            }
            going
        })?;
        if let (true, Some((_, unit)), None) = (going, current, &failure) {
            send(unit);
        }
        tracing::debug!(
            run_id = self.env.run_id,
            seconds = started.elapsed().as_secs_f64(),
            "every customer handed to the workers"
        );
        failure.map_or(Ok(()), Err)
    }
}

/// Rows registered by an older version know their input row but not where
/// its record starts: the offsets are read from the input (whose content
/// the run's fingerprint vouches for) before the run goes on.
pub(super) fn fill_offsets(
    store: &mut Store,
    mode: Mode,
    run_id: i64,
    input: &Path,
    columns: &ColumnOptions,
) -> Result<(), PipelineError> {
    let all = RowState::ALL.iter().copied().filter(|s| !s.is_final());
    let unfinished: Vec<RowState> = all.collect();
    if !store.any_without_offset(run_id, &unfinished)? {
        return Ok(());
    }
    let mut reader = OrderReader::open(input, mode.schema(columns))?;
    let mut offsets = Vec::new();
    while let Some(row) = reader.next_row() {
        let row = row?;
        offsets.push((row.number, row.offset));
    }
    store.fill_offsets(run_id, &offsets)?;
    tracing::info!(
        run_id,
        "recorded where each input row starts for a run registered by an older version"
    );
    Ok(())
}
