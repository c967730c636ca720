//! The single writer: one thread owns the write connection and applies
//! outcomes in batched transactions (group commit). A worker that must record
//! intent before a side effect waits for the commit that holds it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rusqlite::params;
use tokio::sync::{mpsc, oneshot};

use super::counts::{state_of, Moves};
use super::rows::RowState;
use super::runs::now;
use super::{Store, StoreError};
use crate::timeline::Recorder;

/// Most operations applied in one transaction.
pub const MAX_BATCH: usize = 1024;

/// What a provider's answer told about an order, as the store records it
/// (the pipeline maps the provider's own types to it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderFacts {
    pub pnm_order_identifier: Option<String>,
    pub pnm_customer_identifier: Option<String>,
    pub site_order_identifier: Option<String>,
    pub site_customer_identifier: Option<String>,
    pub embedded_js_url: Option<String>,
    pub embedded_js_url_expires_at: Option<String>,
}

/// A Commerce Engine payment a retry made, as the store records it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PaymentFacts {
    pub id: Option<String>,
    pub status: Option<String>,
    pub link: Option<String>,
    pub link_expiry: Option<String>,
}

/// One change to the state of the run's rows.
#[derive(Debug)]
pub enum Write {
    /// The row's create (`creating`) or change (`changing`) request is about
    /// to leave; acknowledged once committed.
    Intent {
        row: u64,
        state: RowState,
        ack: oneshot::Sender<()>,
    },
    /// The order exists on the provider.
    Created {
        row: u64,
        pnm_order: String,
        pnm_customer: Option<String>,
    },
    /// The row's order was found and its embedded JS URL is fresh (or URLs
    /// were skipped); identifiers the answer names fill in unknown ones.
    Urls { row: u64, order: OrderFacts },
    /// A `refresh` customer row found these orders: the row takes the
    /// first, each other becomes a new row of the same input row. No order
    /// fails the row.
    Expand {
        parent: u64,
        orders: Vec<OrderFacts>,
    },
    /// The row's order and customer were looked up (`change` and `refresh`
    /// rows naming an order the store has never seen); its state does not
    /// change.
    Resolved {
        row: u64,
        pnm_order: String,
        pnm_customer: Option<String>,
        site_customer: Option<String>,
    },
    /// The row's order was changed: the row is done.
    Changed { row: u64, pnm_order: String },
    /// A retry-payment made a new payment (or, `note` says, an interrupted
    /// run's retry went through): the row is done.
    Retried {
        row: u64,
        payment: PaymentFacts,
        note: Option<String>,
    },
    /// The row waits until `until` (unix seconds).
    Deferred {
        row: u64,
        until: i64,
        message: String,
    },
    /// Nothing to do for the row.
    Skipped {
        row: u64,
        code: String,
        message: String,
    },
    /// Moves every row in `from` to `to` (e.g. done without tokens).
    MoveAll { from: RowState, to: RowState },
    /// The row's smart token and link were issued: the row is done.
    Token {
        row: u64,
        token: String,
        link: Option<String>,
    },
    /// Whether the row's request took effect cannot be told: the row is
    /// left `unknown` for an operator.
    Unknown {
        row: u64,
        code: String,
        message: String,
    },
    /// The row cannot be completed.
    Failed {
        row: u64,
        code: String,
        message: String,
    },
    /// An attempt that did not succeed.
    Attempt {
        row: u64,
        endpoint: &'static str,
        code: String,
        message: String,
        latency_ms: u64,
    },
    /// What the refresh pages showed of a customer's orders at the
    /// provider: `exclusive` when every one of them is in this run.
    Customer { customer: String, exclusive: bool },
    /// Acknowledged once everything sent before it is committed.
    Flush { ack: oneshot::Sender<()> },
    /// Wakes the writer about once a second, so the timeline is stored
    /// while nothing else is written (e.g. every worker waits for a 429).
    Tick,
}

/// What the writer did, for the summary and benchmarks.
#[derive(Debug, Default, Clone, Copy)]
pub struct WriterStats {
    pub transactions: u64,
    pub operations: u64,
    /// Transactions synced to disk before their commit returned (intents).
    pub durable: u64,
}

/// Requests sent, per endpoint: counted by the workers as they send, and
/// written with the writer's next commit (a message per request would cost
/// the writer more than the rest of a request's bookkeeping).
#[derive(Debug, Default)]
pub struct RequestCounts(Mutex<Vec<(&'static str, u64)>>);

impl RequestCounts {
    /// Counts one request to `endpoint`.
    pub fn add(&self, endpoint: &'static str) {
        let mut counts = self.0.lock().expect("request counts lock");
        match counts.iter_mut().find(|(e, _)| *e == endpoint) {
            Some((_, n)) => *n += 1,
            None => counts.push((endpoint, 1)),
        }
    }

    fn snapshot(&self) -> Vec<(&'static str, u64)> {
        self.0.lock().expect("request counts lock").clone()
    }
}

/// Handle to the writer thread.
pub struct Writer {
    tx: mpsc::Sender<Write>,
    requests: Arc<RequestCounts>,
    timeline: Arc<Recorder>,
    thread: JoinHandle<Result<WriterStats, StoreError>>,
}

impl Writer {
    /// Starts the writer for `run_id` on its own thread.
    pub fn start(store: Store, run_id: i64) -> Self {
        let (tx, rx) = mpsc::channel(MAX_BATCH * 4);
        let requests = Arc::new(RequestCounts::default());
        let counts = requests.clone();
        let timeline = Arc::new(Recorder::new());
        let recorder = timeline.clone();
        let thread = std::thread::Builder::new()
            .name("orderbatch-writer".into())
            .spawn(move || write_loop(store, run_id, rx, &counts, &recorder))
            .expect("spawn writer thread");
        // Holds the channel only while it sends: the writer still ends
        // when the last worker's sender is dropped.
        let ticks = tx.downgrade();
        std::thread::Builder::new()
            .name("orderbatch-timeline".into())
            .spawn(move || loop {
                std::thread::sleep(TIMELINE_EVERY);
                match ticks.upgrade() {
                    Some(tx) if tx.try_send(Write::Tick).is_ok() || !tx.is_closed() => {}
                    _ => return,
                }
            })
            .expect("spawn timeline thread");
        Writer {
            tx,
            requests,
            timeline,
            thread,
        }
    }

    /// Where workers record the run's timeline.
    pub fn timeline(&self) -> Arc<Recorder> {
        self.timeline.clone()
    }

    /// A sender for workers.
    pub fn sender(&self) -> mpsc::Sender<Write> {
        self.tx.clone()
    }

    /// Where workers count the requests they send.
    pub fn request_counts(&self) -> Arc<RequestCounts> {
        self.requests.clone()
    }

    /// Closes the writer's channel and waits until everything is committed.
    pub fn finish(self) -> Result<WriterStats, StoreError> {
        drop(self.tx);
        self.thread.join().expect("writer thread panicked")
    }
}

/// How long a batch of outcomes that nobody waits on may gather more, and
/// how often it looks for an operation somebody waits on meanwhile.
const GATHER: std::time::Duration = std::time::Duration::from_millis(2);
const GATHER_STEP: std::time::Duration = std::time::Duration::from_micros(100);
/// How often the timeline's changed buckets are stored.
const TIMELINE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Takes what is already queued, up to a full batch.
fn drain(rx: &mut mpsc::Receiver<Write>, batch: &mut Vec<Write>) {
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(op) => batch.push(op),
            Err(_) => break,
        }
    }
}

impl Write {
    /// Whether a worker waits for this operation's commit.
    fn awaited(&self) -> bool {
        matches!(self, Write::Intent { .. } | Write::Flush { .. })
    }

    /// The row whose state this operation sets, and the state (rows an
    /// expansion adds and `MoveAll`'s are counted where they are written).
    fn sets_state(&self) -> Option<(u64, RowState)> {
        Some(match self {
            Write::Intent { row, state, .. } => (*row, *state),
            Write::Created { row, .. } => (*row, RowState::Created),
            Write::Urls { row, .. } => (*row, RowState::UrlsRefreshed),
            Write::Expand { parent, orders } if orders.is_empty() => (*parent, RowState::Failed),
            Write::Expand { parent, .. } => (*parent, RowState::UrlsRefreshed),
            Write::Changed { row, .. } | Write::Retried { row, .. } | Write::Token { row, .. } => {
                (*row, RowState::Done)
            }
            Write::Deferred { row, .. } => (*row, RowState::Deferred),
            Write::Skipped { row, .. } => (*row, RowState::Skipped),
            Write::Unknown { row, .. } => (*row, RowState::Unknown),
            Write::Failed { row, .. } => (*row, RowState::Failed),
            Write::Resolved { .. }
            | Write::MoveAll { .. }
            | Write::Attempt { .. }
            | Write::Customer { .. }
            | Write::Flush { .. }
            | Write::Tick => return None,
        })
    }
}

fn write_loop(
    mut store: Store,
    run_id: i64,
    mut rx: mpsc::Receiver<Write>,
    requests: &RequestCounts,
    timeline: &Recorder,
) -> Result<WriterStats, StoreError> {
    let mut stats = WriterStats::default();
    let mut stored_timeline = std::time::Instant::now();
    let mut stages = Stages::default();
    let mut counted = Counted::default();
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // Whether the connection is at synchronous = FULL (it opens at NORMAL).
    let mut synced = false;
    // Orders URL and token writes (see migration 05).
    let mut seq: i64 = store
        .conn
        .query_row(
            "SELECT COALESCE(MAX(MAX(COALESCE(url_seq, 0)), MAX(COALESCE(token_seq, 0))), 0)
             FROM rows WHERE run_id = ?1",
            params![run_id],
            |r| r.get(0),
        )
        .map_err(|e| store.err(e))?;
    let mut next_row: u64 = store
        .conn
        .query_row(
            "SELECT COALESCE(MAX(row_number), 0) + 1 FROM rows WHERE run_id = ?1",
            params![run_id],
            |r| r.get(0),
        )
        .map_err(|e| store.err(e))?;
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        drain(&mut rx, &mut batch);
        // Nobody waits on a batch of outcomes alone: let it grow a little
        // before paying for a commit. Intents and flushes commit at once.
        let mut waited = std::time::Duration::ZERO;
        while waited < GATHER && batch.len() < MAX_BATCH / 16 && !batch.iter().any(Write::awaited) {
            std::thread::sleep(GATHER_STEP);
            waited += GATHER_STEP;
            drain(&mut rx, &mut batch);
        }
        // An intent must be on disk before its request leaves, across a
        // power loss: its transaction syncs the WAL (synchronous = FULL);
        // outcomes alone may wait for the next sync (NORMAL), since a lost
        // outcome is reconciled from the intent before it.
        let durable = batch.iter().any(|op| matches!(op, Write::Intent { .. }));
        if durable != synced {
            let level = if durable { "FULL" } else { "NORMAL" };
            store
                .conn
                .pragma_update(None, "synchronous", level)
                .map_err(|e| store.err(e))?;
            synced = durable;
        }
        let due = stored_timeline.elapsed() >= TIMELINE_EVERY;
        let acks = apply(
            &mut store,
            run_id,
            &mut batch,
            &mut next_row,
            &mut seq,
            &mut stages,
            |tx| {
                counted.write(tx, run_id, requests)?;
                if due {
                    super::timeline::write(tx, run_id, &timeline.take_changed())?;
                }
                Ok(())
            },
        )?;
        if due {
            stored_timeline = std::time::Instant::now();
        }
        timeline.rows(&stages.0);
        stages.0.clear();
        stats.transactions += 1;
        stats.durable += u64::from(durable);
        stats.operations += acks.1 as u64;
        for ack in acks.0 {
            let _ = ack.send(());
        }
    }
    // Requests counted after the last commit, and the timeline's last
    // changes.
    apply(
        &mut store,
        run_id,
        &mut batch,
        &mut next_row,
        &mut seq,
        &mut stages,
        |tx| {
            counted.write(tx, run_id, requests)?;
            super::timeline::write(tx, run_id, &timeline.take_changed())
        },
    )?;
    Ok(stats)
}

/// Request counts already written, per endpoint.
#[derive(Default)]
struct Counted(HashMap<&'static str, u64>);

impl Counted {
    /// Adds what was counted since the last commit to the `requests` table.
    fn write(
        &mut self,
        tx: &rusqlite::Transaction<'_>,
        run_id: i64,
        requests: &RequestCounts,
    ) -> rusqlite::Result<()> {
        for (endpoint, n) in requests.snapshot() {
            let written = self.0.entry(endpoint).or_default();
            if n > *written {
                exec(
                    tx,
                    "INSERT INTO requests (run_id, endpoint, count) VALUES (?1, ?2, ?3)
                     ON CONFLICT (run_id, endpoint) DO UPDATE SET count = count + excluded.count",
                    params![run_id, endpoint, n - *written],
                )?;
                *written = n;
            }
        }
        Ok(())
    }
}

type Acks = (Vec<oneshot::Sender<()>>, usize);

/// Rows that finished a stage in one batch, per timeline label.
#[derive(Default)]
struct Stages(Vec<(&'static str, u64)>);

impl Stages {
    fn add(&mut self, label: &'static str, n: u64) {
        if n == 0 {
            return;
        }
        match self.0.iter_mut().find(|(l, _)| *l == label) {
            Some((_, m)) => *m += n,
            None => self.0.push((label, n)),
        }
    }

    /// The stage a row finished (or the final state it reached) by `op`.
    fn of(op: &Write) -> Option<(&'static str, u64)> {
        Some(match op {
            Write::Created { .. } => ("create", 1),
            Write::Urls { .. } => ("refresh", 1),
            Write::Expand { orders, .. } => ("refresh", orders.len().max(1) as u64),
            Write::Token { .. } => ("token", 1),
            Write::Changed { .. } => ("change", 1),
            Write::Retried { .. } => ("retry-payment", 1),
            Write::Deferred { .. } => ("deferred", 1),
            Write::Skipped { .. } => ("skipped", 1),
            Write::Unknown { .. } => ("unknown", 1),
            Write::Failed { .. } => ("failed", 1),
            _ => return None,
        })
    }
}

/// Runs one cached statement in the transaction.
fn exec(
    tx: &rusqlite::Transaction<'_>,
    sql: &str,
    params: impl rusqlite::Params,
) -> rusqlite::Result<usize> {
    tx.prepare_cached(sql)?.execute(params)
}

/// The most characters of an error message kept (a provider's answer may
/// be megabytes; the report, `status` and the exports show the start).
const MESSAGE_MAX: usize = 1000;
/// The most characters of an error code kept.
const CODE_MAX: usize = 100;

/// `text` cut to its first `max` characters (with `…` when cut).
fn bounded(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]).into(),
        None => text.into(),
    }
}

/// Sets a row's final state with an error code and message.
const SET_OUTCOME: &str = "UPDATE rows SET state = ?3, last_error_code = ?4, last_error = ?5
     WHERE run_id = ?1 AND row_number = ?2";

/// Records an order's identifiers and URL (URL may be absent); a URL takes
/// the next number of `seq`.
fn set_urls(
    tx: &rusqlite::Transaction<'_>,
    run_id: i64,
    row: u64,
    order: &OrderFacts,
    seq: &mut i64,
) -> rusqlite::Result<()> {
    let url_seq = order.embedded_js_url.is_some().then(|| {
        *seq += 1;
        *seq
    });
    tx.prepare_cached(
        "UPDATE rows SET state = ?3, embedded_js_url = COALESCE(?4, embedded_js_url),
             embedded_js_url_expires_at = COALESCE(?5, embedded_js_url_expires_at),
             pnm_order_identifier = COALESCE(pnm_order_identifier, ?6),
             pnm_customer_identifier = COALESCE(pnm_customer_identifier, ?7),
             url_seq = COALESCE(?8, url_seq)
         WHERE run_id = ?1 AND row_number = ?2",
    )?
    .execute(params![
        run_id,
        row,
        RowState::UrlsRefreshed.as_str(),
        order.embedded_js_url,
        order.embedded_js_url_expires_at,
        order.pnm_order_identifier,
        order.pnm_customer_identifier,
        url_seq,
    ])?;
    // Indexed identifiers are filled in only where they are unknown: an
    // update that names an indexed column rewrites its index entries.
    if order.site_order_identifier.is_some() || order.site_customer_identifier.is_some() {
        tx.prepare_cached(
            "UPDATE rows SET site_order_identifier = COALESCE(site_order_identifier, ?3),
                 site_customer_identifier = COALESCE(site_customer_identifier, ?4)
             WHERE run_id = ?1 AND row_number = ?2
               AND ((site_order_identifier IS NULL AND ?3 IS NOT NULL)
                 OR (site_customer_identifier IS NULL AND ?4 IS NOT NULL))",
        )?
        .execute(params![
            run_id,
            row,
            order.site_order_identifier,
            order.site_customer_identifier
        ])?;
    }
    learn_order(tx, run_id, row)
}

/// Records what the row now says about its order (its customer, its
/// identifiers) in the store's `orders`, filling in only what is unknown
/// there: which customer owns an order is one fact, read by every command.
fn learn_order(tx: &rusqlite::Transaction<'_>, run_id: i64, row: u64) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO orders (pnm_order_identifier, site_order_identifier, site_customer_identifier,
                             pnm_customer_identifier)
         SELECT pnm_order_identifier, site_order_identifier, site_customer_identifier,
                pnm_customer_identifier
         FROM rows r JOIN runs u ON u.id = r.run_id
         WHERE r.run_id = ?1 AND r.row_number = ?2 AND r.pnm_order_identifier IS NOT NULL
           AND u.command != 'ce-retry-payments'
         ON CONFLICT (pnm_order_identifier) DO UPDATE SET
             site_order_identifier = COALESCE(orders.site_order_identifier, excluded.site_order_identifier),
             site_customer_identifier = COALESCE(orders.site_customer_identifier, excluded.site_customer_identifier),
             pnm_customer_identifier = COALESCE(orders.pnm_customer_identifier, excluded.pnm_customer_identifier)
         WHERE orders.site_order_identifier IS NULL OR orders.site_customer_identifier IS NULL
            OR orders.pnm_customer_identifier IS NULL",
    )?
    .execute(params![run_id, row])?;
    Ok(())
}

/// The parent row takes the first order; every other becomes a new row
/// (counted in `moves`; the parent's own move is counted by `apply`).
fn expand(
    tx: &rusqlite::Transaction<'_>,
    run_id: i64,
    parent: u64,
    orders: &[OrderFacts],
    next_row: &mut u64,
    seq: &mut i64,
    moves: &mut Moves,
) -> rusqlite::Result<()> {
    let Some((first, rest)) = orders.split_first() else {
        tx.execute(
            "UPDATE rows SET state = ?3, last_error_code = 'order_not_found',
                 last_error = 'the provider has no orders for this customer'
             WHERE run_id = ?1 AND row_number = ?2",
            params![run_id, parent, RowState::Failed.as_str()],
        )?;
        return Ok(());
    };
    set_urls(tx, run_id, parent, first, seq)?;
    for (i, order) in rest.iter().enumerate() {
        let added = tx.execute(
            "INSERT INTO rows (run_id, row_number, input_row, line, site_customer_identifier,
                 state, attempts, input_offset)
             SELECT run_id, ?3, row_number, line, site_customer_identifier, ?4, 0, input_offset
             FROM rows WHERE run_id = ?1 AND row_number = ?2",
            params![
                run_id,
                parent,
                *next_row + i as u64,
                RowState::Pending.as_str()
            ],
        )?;
        set_urls(tx, run_id, *next_row + i as u64, order, seq)?;
        // Added pending, and at once given its URL.
        moves.add(RowState::UrlsRefreshed, added as i64);
    }
    Ok(())
}

fn apply(
    store: &mut Store,
    run_id: i64,
    batch: &mut Vec<Write>,
    next_row: &mut u64,
    seq: &mut i64,
    stages: &mut Stages,
    also: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<()>,
) -> Result<Acks, StoreError> {
    let path = store.path().to_path_buf();
    let sql_err = |source| StoreError::Sqlite {
        path: path.clone(),
        source,
    };
    let count = batch.len();
    let mut acks = Vec::new();
    let mut moves = Moves::default();
    let tx = store.conn.transaction().map_err(sql_err)?;
    {
        let mut set_state = tx
            .prepare_cached(
                "UPDATE rows SET state = ?3, intent_at = unixepoch()
                 WHERE run_id = ?1 AND row_number = ?2",
            )
            .map_err(sql_err)?;
        for op in batch.drain(..) {
            if let Some((label, n)) = Stages::of(&op) {
                stages.add(label, n);
            }
            // The state the row leaves, for the run's row counts.
            if let Some((row, to)) = op.sets_state() {
                if let Some(from) = state_of(&tx, run_id, row).map_err(sql_err)? {
                    moves.moved(from, to, 1);
                }
            }
            match op {
                Write::Intent { row, state, ack } => {
                    set_state
                        .execute(params![run_id, row, state.as_str()])
                        .map_err(sql_err)?;
                    acks.push(ack);
                }
                Write::Created {
                    row,
                    pnm_order,
                    pnm_customer,
                } => {
                    exec(
                        &tx,
                        "UPDATE rows SET state = ?3, pnm_order_identifier = ?4,
                             pnm_customer_identifier = ?5 WHERE run_id = ?1 AND row_number = ?2",
                        params![
                            run_id,
                            row,
                            RowState::Created.as_str(),
                            pnm_order,
                            pnm_customer
                        ],
                    )
                    .map_err(sql_err)?;
                    learn_order(&tx, run_id, row).map_err(sql_err)?;
                }
                Write::Urls { row, order } => {
                    set_urls(&tx, run_id, row, &order, seq).map_err(sql_err)?;
                }
                Write::Expand { parent, orders } => {
                    expand(&tx, run_id, parent, &orders, next_row, seq, &mut moves)
                        .map_err(sql_err)?;
                    *next_row += orders.len().saturating_sub(1) as u64;
                }
                Write::Resolved {
                    row,
                    pnm_order,
                    pnm_customer,
                    site_customer,
                } => {
                    exec(
                        &tx,
                        "UPDATE rows SET pnm_order_identifier = ?3,
                             pnm_customer_identifier = COALESCE(?4, pnm_customer_identifier),
                             site_customer_identifier = COALESCE(site_customer_identifier, ?5)
                         WHERE run_id = ?1 AND row_number = ?2",
                        params![run_id, row, pnm_order, pnm_customer, site_customer],
                    )
                    .map_err(sql_err)?;
                    learn_order(&tx, run_id, row).map_err(sql_err)?;
                }
                Write::Changed { row, pnm_order } => {
                    exec(
                        &tx,
                        "UPDATE rows SET state = ?3, pnm_order_identifier = ?4,
                             last_error_code = NULL, last_error = NULL
                         WHERE run_id = ?1 AND row_number = ?2",
                        params![run_id, row, RowState::Done.as_str(), pnm_order],
                    )
                    .map_err(sql_err)?;
                }
                Write::Retried { row, payment, note } => {
                    exec(&tx, "UPDATE rows SET state = ?3, payment_id = ?4, payment_status = ?5,
                             payment_link = ?6, payment_link_expiry = ?7, next_attempt_at = NULL,
                             last_error_code = CASE WHEN ?8 IS NULL THEN NULL ELSE 'link_not_recorded' END,
                             last_error = ?8
                         WHERE run_id = ?1 AND row_number = ?2", params![
                            run_id,
                            row,
                            RowState::Done.as_str(),
                            payment.id,
                            payment.status,
                            payment.link,
                            payment.link_expiry,
                            note
                        ])
                    .map_err(sql_err)?;
                }
                Write::Deferred {
                    row,
                    until,
                    message,
                } => {
                    exec(&tx, "UPDATE rows SET state = ?3, next_attempt_at = ?4, last_error_code = 'retry_too_early',
                             last_error = ?5 WHERE run_id = ?1 AND row_number = ?2", params![run_id, row, RowState::Deferred.as_str(), until, bounded(&message, MESSAGE_MAX)])
                    .map_err(sql_err)?;
                }
                Write::Skipped { row, code, message } => {
                    exec(
                        &tx,
                        SET_OUTCOME,
                        params![
                            run_id,
                            row,
                            RowState::Skipped.as_str(),
                            bounded(&code, CODE_MAX),
                            bounded(&message, MESSAGE_MAX)
                        ],
                    )
                    .map_err(sql_err)?;
                }
                Write::MoveAll { from, to } => {
                    // A row that reaches `done` keeps no error of an attempt
                    // that was retried (the attempts table keeps those).
                    let moved = tx.execute(
                        "UPDATE rows SET state = ?3,
                             last_error_code = CASE WHEN ?3 = 'done' THEN NULL ELSE last_error_code END,
                             last_error = CASE WHEN ?3 = 'done' THEN NULL ELSE last_error END
                         WHERE run_id = ?1 AND state = ?2",
                        params![run_id, from.as_str(), to.as_str()],
                    )
                    .map_err(sql_err)?;
                    stages.add(to.as_str(), moved as u64);
                    moves.moved(from, to, moved as i64);
                }
                Write::Token { row, token, link } => {
                    exec(
                        &tx,
                        "UPDATE rows SET state = ?3, secure_smart_token = ?4,
                             secure_smart_link = ?5, last_error_code = NULL, last_error = NULL,
                             token_seq = ?6
                         WHERE run_id = ?1 AND row_number = ?2",
                        params![run_id, row, RowState::Done.as_str(), token, link, {
                            *seq += 1;
                            *seq
                        }],
                    )
                    .map_err(sql_err)?;
                }
                Write::Unknown { row, code, message } => {
                    exec(
                        &tx,
                        SET_OUTCOME,
                        params![
                            run_id,
                            row,
                            RowState::Unknown.as_str(),
                            bounded(&code, CODE_MAX),
                            bounded(&message, MESSAGE_MAX)
                        ],
                    )
                    .map_err(sql_err)?;
                }
                Write::Failed { row, code, message } => {
                    exec(
                        &tx,
                        SET_OUTCOME,
                        params![
                            run_id,
                            row,
                            RowState::Failed.as_str(),
                            bounded(&code, CODE_MAX),
                            bounded(&message, MESSAGE_MAX)
                        ],
                    )
                    .map_err(sql_err)?;
                }
                Write::Attempt {
                    row,
                    endpoint,
                    code,
                    message,
                    latency_ms,
                } => {
                    exec(
                        &tx,
                        "UPDATE rows SET attempts = attempts + 1, last_error_code = ?3,
                             last_error = ?4 WHERE run_id = ?1 AND row_number = ?2",
                        params![
                            run_id,
                            row,
                            bounded(&code, CODE_MAX),
                            bounded(&message, MESSAGE_MAX)
                        ],
                    )
                    .map_err(sql_err)?;
                    exec(
                        &tx,
                        "INSERT INTO attempts (run_id, row_number, endpoint, attempt, error_code,
                             error, latency_ms, at)
                         SELECT ?1, ?2, ?3, attempts, ?4, ?5, ?6, ?7 FROM rows
                             WHERE run_id = ?1 AND row_number = ?2",
                        params![
                            run_id,
                            row,
                            endpoint,
                            bounded(&code, CODE_MAX),
                            bounded(&message, MESSAGE_MAX),
                            latency_ms,
                            now()
                        ],
                    )
                    .map_err(sql_err)?;
                }
                Write::Customer {
                    customer,
                    exclusive,
                } => {
                    exec(
                        &tx,
                        "INSERT INTO run_customers (run_id, site_customer_identifier, exclusive)
                         VALUES (?1, ?2, ?3)
                         ON CONFLICT (run_id, site_customer_identifier)
                         DO UPDATE SET exclusive = excluded.exclusive",
                        params![run_id, customer, exclusive],
                    )
                    .map_err(sql_err)?;
                }
                Write::Flush { ack } => acks.push(ack),
                Write::Tick => {}
            }
        }
    }
    moves.write(&tx, run_id).map_err(sql_err)?;
    also(&tx).map_err(sql_err)?;
    tx.commit().map_err(sql_err)?;
    Ok((acks, count))
}

#[cfg(test)]
mod tests {
    //! Each `Write` on a temporary database: the row's state after it, the
    //! acknowledgements, and which transactions were synced.

    use super::*;

    #[test]
    fn error_texts_are_kept_to_their_first_characters() {
        let long = "é".repeat(5000);
        let kept = bounded(&long, MESSAGE_MAX);
        assert_eq!(kept.chars().count(), MESSAGE_MAX + 1);
        assert!(kept.ends_with('…'));
        assert_eq!(bounded("short", MESSAGE_MAX), "short");
    }
    use crate::store::counts::assert_exact;
    use crate::store::rows::NewRow;
    use crate::store::StoredRow;

    /// A run of three pending rows (customer C, orders O1..O3).
    fn store() -> (tempfile::TempDir, std::path::PathBuf, i64) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let mut store = Store::open(&path).unwrap();
        let run = store.create_run("run", "in.csv", "fp", "{}").unwrap();
        let rows: Vec<NewRow> = (1..=3u64)
            .map(|n| NewRow {
                row_number: n,
                line: n + 1,
                site_customer_identifier: Some("C".into()),
                site_order_identifier: Some(format!("O{n}")),
                unique_order_id: true,
                pnm_order_identifier: None,
                pnm_customer_identifier: None,
                rejection: None,
                identity: None,
                input_offset: Some(n * 10),
                known_customer: false,
            })
            .collect();
        store.insert_rows(run, &rows).unwrap();
        (dir, path, run)
    }

    /// Sends `writes` through a writer and returns its stats and the rows.
    fn apply_all(writes: Vec<Write>) -> (WriterStats, Vec<StoredRow>, tempfile::TempDir) {
        let (dir, path, run) = store();
        let writer = Writer::start(Store::open(&path).unwrap(), run);
        let tx = writer.sender();
        for w in writes {
            tx.blocking_send(w).unwrap();
        }
        drop(tx);
        let stats = writer.finish().unwrap();
        let mut rows = Vec::new();
        Store::open_reader(&path)
            .unwrap()
            .all_rows(run, |r| {
                rows.push(r);
                true
            })
            .unwrap();
        (stats, rows, dir)
    }

    fn state(rows: &[StoredRow], n: u64) -> RowState {
        rows.iter().find(|r| r.row_number == n).unwrap().state
    }

    fn order(n: u64) -> OrderFacts {
        OrderFacts {
            pnm_order_identifier: Some(format!("P{n}")),
            site_order_identifier: Some(format!("O{n}")),
            embedded_js_url: Some(format!("https://u/{n}")),
            embedded_js_url_expires_at: Some("2030-01-01T00:00:00Z".into()),
            ..OrderFacts::default()
        }
    }

    #[test]
    fn each_write_leaves_its_row_in_the_state_it_names() {
        let text = |s: &str| s.to_string();
        let cases: Vec<(Vec<Write>, u64, RowState)> = vec![
            (
                vec![Write::Intent {
                    row: 1,
                    state: RowState::Creating,
                    ack: oneshot::channel().0,
                }],
                1,
                RowState::Creating,
            ),
            (
                vec![Write::Expand {
                    parent: 2,
                    orders: Vec::new(),
                }],
                2,
                RowState::Failed,
            ),
            // One row through every stage (likely in one transaction),
            // another moved twice.
            (
                vec![
                    Write::Intent {
                        row: 1,
                        state: RowState::Creating,
                        ack: oneshot::channel().0,
                    },
                    Write::Created {
                        row: 1,
                        pnm_order: text("P1"),
                        pnm_customer: None,
                    },
                    Write::Urls {
                        row: 1,
                        order: order(1),
                    },
                    Write::Token {
                        row: 1,
                        token: text("t"),
                        link: None,
                    },
                    Write::Failed {
                        row: 2,
                        code: text("x"),
                        message: text("y"),
                    },
                    Write::Unknown {
                        row: 2,
                        code: text("x"),
                        message: text("y"),
                    },
                ],
                1,
                RowState::Done,
            ),
            (
                vec![Write::Created {
                    row: 1,
                    pnm_order: text("P1"),
                    pnm_customer: None,
                }],
                1,
                RowState::Created,
            ),
            (
                vec![Write::Urls {
                    row: 1,
                    order: order(1),
                }],
                1,
                RowState::UrlsRefreshed,
            ),
            (
                vec![Write::Token {
                    row: 2,
                    token: text("t"),
                    link: None,
                }],
                2,
                RowState::Done,
            ),
            (
                vec![Write::Changed {
                    row: 2,
                    pnm_order: text("P2"),
                }],
                2,
                RowState::Done,
            ),
            (
                vec![Write::Failed {
                    row: 3,
                    code: text("x"),
                    message: text("y"),
                }],
                3,
                RowState::Failed,
            ),
            (
                vec![Write::Unknown {
                    row: 3,
                    code: text("x"),
                    message: text("y"),
                }],
                3,
                RowState::Unknown,
            ),
            (
                vec![Write::Skipped {
                    row: 3,
                    code: text("paid"),
                    message: text("y"),
                }],
                3,
                RowState::Skipped,
            ),
            (
                vec![Write::Deferred {
                    row: 3,
                    until: 99,
                    message: text("later"),
                }],
                3,
                RowState::Deferred,
            ),
            (
                vec![Write::Retried {
                    row: 3,
                    payment: PaymentFacts::default(),
                    note: None,
                }],
                3,
                RowState::Done,
            ),
            (
                vec![Write::Resolved {
                    row: 3,
                    pnm_order: text("P3"),
                    pnm_customer: None,
                    site_customer: None,
                }],
                3,
                RowState::Pending,
            ),
            (
                vec![
                    Write::Urls {
                        row: 1,
                        order: order(1),
                    },
                    Write::Urls {
                        row: 2,
                        order: order(2),
                    },
                    Write::MoveAll {
                        from: RowState::UrlsRefreshed,
                        to: RowState::Done,
                    },
                ],
                2,
                RowState::Done,
            ),
            (
                vec![Write::Attempt {
                    row: 1,
                    endpoint: "create_order",
                    code: text("timeout"),
                    message: text("m"),
                    latency_ms: 5,
                }],
                1,
                RowState::Pending,
            ),
        ];
        for (writes, row, expected) in cases {
            let what = format!("{writes:?}");
            let (_, rows, dir) = apply_all(writes);
            assert_eq!(state(&rows, row), expected, "{what}");
            // And the run's row counts moved with it.
            assert_exact(&Store::open_reader(&dir.path().join("s.db")).unwrap());
        }
    }

    #[test]
    fn an_expansion_makes_a_row_per_further_order_of_the_same_input_row() {
        let (_, rows, dir) = apply_all(vec![Write::Expand {
            parent: 2,
            orders: vec![order(7), order(8), order(9)],
        }]);
        let store = Store::open_reader(&dir.path().join("s.db")).unwrap();
        assert_exact(&store);
        assert_eq!(
            store.state_counts(1).unwrap(),
            [(RowState::Pending, 2), (RowState::UrlsRefreshed, 3)]
        );
        let from_two: Vec<&StoredRow> = rows.iter().filter(|r| r.input_row == 2).collect();
        assert_eq!(from_two.len(), 3, "{rows:?}");
        assert!(from_two.iter().all(|r| r.state == RowState::UrlsRefreshed));
        assert!(from_two.iter().all(|r| r.input_offset == Some(20)));
        assert!(from_two
            .iter()
            .all(|r| r.site_customer_identifier.as_deref() == Some("C")));
    }

    #[test]
    fn intents_and_flushes_are_acknowledged_once_committed_and_intents_are_synced() {
        let (ack, intent_done) = oneshot::channel();
        let (flush_ack, flushed) = oneshot::channel();
        let (stats, rows, _) = apply_all(vec![
            Write::Intent {
                row: 1,
                state: RowState::Creating,
                ack,
            },
            Write::Flush { ack: flush_ack },
            Write::Created {
                row: 1,
                pnm_order: "P1".into(),
                pnm_customer: None,
            },
        ]);
        assert!(
            intent_done.blocking_recv().is_ok(),
            "intent not acknowledged"
        );
        assert!(flushed.blocking_recv().is_ok(), "flush not acknowledged");
        assert_eq!(state(&rows, 1), RowState::Created);
        assert!(
            stats.durable >= 1,
            "the intent's transaction was not synced: {stats:?}"
        );
        assert!(stats.durable < stats.transactions || stats.transactions == 1);
    }

    #[test]
    fn what_a_row_learns_of_its_order_becomes_the_stores_knowledge() {
        let (_, _, dir) = apply_all(vec![Write::Created {
            row: 1,
            pnm_order: "P1".into(),
            pnm_customer: Some("PC".into()),
        }]);
        let store = Store::open_reader(&dir.path().join("s.db")).unwrap();
        let (customer, pnm_customer): (Option<String>, Option<String>) = store
            .conn
            .query_row(
                "SELECT site_customer_identifier, pnm_customer_identifier FROM orders
                 WHERE pnm_order_identifier = 'P1'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(customer.as_deref(), Some("C"));
        assert_eq!(pnm_customer.as_deref(), Some("PC"));
    }
}
