//! The single writer: one thread owns the write connection and applies
//! outcomes in batched transactions (group commit). A worker that must record
//! intent before a side effect waits for the commit that holds it.

use std::collections::HashMap;
use std::thread::JoinHandle;

use rusqlite::params;
use tokio::sync::{mpsc, oneshot};

use super::rows::RowState;
use super::runs::now;
use super::{Store, StoreError};

/// Most operations applied in one transaction.
pub const MAX_BATCH: usize = 1024;

/// One change to the state of the run's rows.
#[derive(Debug)]
pub enum Write {
    /// The row's create request is about to leave; acknowledged once committed.
    Intent { row: u64, ack: oneshot::Sender<()> },
    /// The order exists on the provider.
    Created {
        row: u64,
        pnm_order: String,
        pnm_customer: Option<String>,
    },
    /// The row's embedded JS URL is fresh.
    Urls {
        row: u64,
        url: String,
        expires_at: Option<String>,
    },
    /// The row's smart token and link were issued: the row is done.
    Token {
        row: u64,
        token: String,
        link: Option<String>,
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
    /// A request was sent.
    Request { endpoint: &'static str },
    /// Acknowledged once everything sent before it is committed.
    Flush { ack: oneshot::Sender<()> },
}

/// What the writer did, for the summary and benchmarks.
#[derive(Debug, Default, Clone, Copy)]
pub struct WriterStats {
    pub transactions: u64,
    pub operations: u64,
}

/// Handle to the writer thread.
pub struct Writer {
    tx: mpsc::Sender<Write>,
    thread: JoinHandle<Result<WriterStats, StoreError>>,
}

impl Writer {
    /// Starts the writer for `run_id` on its own thread.
    pub fn start(store: Store, run_id: i64) -> Self {
        let (tx, rx) = mpsc::channel(MAX_BATCH * 4);
        let thread = std::thread::Builder::new()
            .name("orderbatch-writer".into())
            .spawn(move || write_loop(store, run_id, rx))
            .expect("spawn writer thread");
        Writer { tx, thread }
    }

    /// A sender for workers.
    pub fn sender(&self) -> mpsc::Sender<Write> {
        self.tx.clone()
    }

    /// Closes the writer's channel and waits until everything is committed.
    pub fn finish(self) -> Result<WriterStats, StoreError> {
        drop(self.tx);
        self.thread.join().expect("writer thread panicked")
    }
}

fn write_loop(
    mut store: Store,
    run_id: i64,
    mut rx: mpsc::Receiver<Write>,
) -> Result<WriterStats, StoreError> {
    let mut stats = WriterStats::default();
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let acks = apply(&mut store, run_id, &mut batch)?;
        stats.transactions += 1;
        stats.operations += acks.1 as u64;
        for ack in acks.0 {
            let _ = ack.send(());
        }
    }
    Ok(stats)
}

type Acks = (Vec<oneshot::Sender<()>>, usize);

fn apply(store: &mut Store, run_id: i64, batch: &mut Vec<Write>) -> Result<Acks, StoreError> {
    let path = store.path().to_path_buf();
    let sql_err = |source| StoreError::Sqlite {
        path: path.clone(),
        source,
    };
    let count = batch.len();
    let mut acks = Vec::new();
    let mut requests: HashMap<&'static str, u64> = HashMap::new();
    let tx = store.conn.transaction().map_err(sql_err)?;
    {
        let mut set_state = tx
            .prepare_cached("UPDATE rows SET state = ?3 WHERE run_id = ?1 AND row_number = ?2")
            .map_err(sql_err)?;
        for op in batch.drain(..) {
            match op {
                Write::Intent { row, ack } => {
                    set_state
                        .execute(params![run_id, row, RowState::Creating.as_str()])
                        .map_err(sql_err)?;
                    acks.push(ack);
                }
                Write::Created {
                    row,
                    pnm_order,
                    pnm_customer,
                } => {
                    tx.prepare_cached(
                        "UPDATE rows SET state = ?3, pnm_order_identifier = ?4,
                             pnm_customer_identifier = ?5 WHERE run_id = ?1 AND row_number = ?2",
                    )
                    .and_then(|mut s| {
                        s.execute(params![
                            run_id,
                            row,
                            RowState::Created.as_str(),
                            pnm_order,
                            pnm_customer
                        ])
                    })
                    .map_err(sql_err)?;
                }
                Write::Urls {
                    row,
                    url,
                    expires_at,
                } => {
                    tx.prepare_cached(
                        "UPDATE rows SET state = ?3, embedded_js_url = ?4,
                             embedded_js_url_expires_at = ?5 WHERE run_id = ?1 AND row_number = ?2",
                    )
                    .and_then(|mut s| {
                        s.execute(params![
                            run_id,
                            row,
                            RowState::UrlsRefreshed.as_str(),
                            url,
                            expires_at
                        ])
                    })
                    .map_err(sql_err)?;
                }
                Write::Token { row, token, link } => {
                    tx.prepare_cached(
                        "UPDATE rows SET state = ?3, secure_smart_token = ?4,
                             secure_smart_link = ?5 WHERE run_id = ?1 AND row_number = ?2",
                    )
                    .and_then(|mut s| {
                        s.execute(params![run_id, row, RowState::Done.as_str(), token, link])
                    })
                    .map_err(sql_err)?;
                }
                Write::Failed { row, code, message } => {
                    tx.prepare_cached(
                        "UPDATE rows SET state = ?3, last_error_code = ?4, last_error = ?5
                             WHERE run_id = ?1 AND row_number = ?2",
                    )
                    .and_then(|mut s| {
                        s.execute(params![
                            run_id,
                            row,
                            RowState::Failed.as_str(),
                            code,
                            message
                        ])
                    })
                    .map_err(sql_err)?;
                }
                Write::Attempt {
                    row,
                    endpoint,
                    code,
                    message,
                    latency_ms,
                } => {
                    tx.prepare_cached(
                        "UPDATE rows SET attempts = attempts + 1, last_error_code = ?3,
                             last_error = ?4 WHERE run_id = ?1 AND row_number = ?2",
                    )
                    .and_then(|mut s| s.execute(params![run_id, row, code, message]))
                    .map_err(sql_err)?;
                    tx.prepare_cached(
                        "INSERT INTO attempts (run_id, row_number, endpoint, attempt, error_code,
                             error, latency_ms, at)
                         SELECT ?1, ?2, ?3, attempts, ?4, ?5, ?6, ?7 FROM rows
                             WHERE run_id = ?1 AND row_number = ?2",
                    )
                    .and_then(|mut s| {
                        s.execute(params![
                            run_id,
                            row,
                            endpoint,
                            code,
                            message,
                            latency_ms,
                            now()
                        ])
                    })
                    .map_err(sql_err)?;
                }
                Write::Request { endpoint } => *requests.entry(endpoint).or_default() += 1,
                Write::Flush { ack } => acks.push(ack),
            }
        }
        for (endpoint, n) in requests {
            tx.prepare_cached(
                "INSERT INTO requests (run_id, endpoint, count) VALUES (?1, ?2, ?3)
                 ON CONFLICT (run_id, endpoint) DO UPDATE SET count = count + excluded.count",
            )
            .and_then(|mut s| s.execute(params![run_id, endpoint, n]))
            .map_err(sql_err)?;
        }
    }
    tx.commit().map_err(sql_err)?;
    Ok((acks, count))
}
