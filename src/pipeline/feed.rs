//! Feeders: read a stage's rows from the state database (and, for stages
//! that send input fields, the input file) and route each job to the worker
//! that owns its customer.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::mode::{Mode, Stage};
use super::stages::{order_selector, Group, Job};
use super::{PipelineError, Shutdown};
use crate::input::fingerprint::Snapshot;
use crate::input::{ColumnOptions, OrderReader, Row};
use crate::store::{RowState, Store, StoredRow};

/// Never a request with values the run did not start with: checks the
/// input before a row's fields are sent, and stops the run when it changed.
pub(super) fn input_unchanged(
    snapshot: &Snapshot,
    shutdown: &Shutdown,
) -> Result<(), PipelineError> {
    snapshot.check().map_err(|changed| {
        shutdown.stop(super::Stop::Aborted(
            "the input file changed since the run started".into(),
        ));
        changed.into()
    })
}

/// The worker that owns `key` (a customer, or an order when the customer is
/// not known).
fn shard(key: &str, workers: usize) -> usize {
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    (hasher.finish() % workers as u64) as usize
}

/// What routes a row: its customer, else its order.
fn route_key(row: &StoredRow) -> String {
    row.site_customer_identifier
        .clone()
        .or_else(|| row.pnm_customer_identifier.clone())
        .or_else(|| row.pnm_order_identifier.clone())
        .or_else(|| row.site_order_identifier.clone())
        .unwrap_or_else(|| row.row_number.to_string())
}

/// Sends each row the stage takes, with its input row's fields re-read from
/// the file (both in row order), to its customer's worker: first the rows
/// of the input itself, then the rows customer rows expanded into.
#[allow(clippy::too_many_arguments)]
pub(super) fn feed_rows(
    db: &Path,
    run_id: i64,
    mode: Mode,
    stage: Stage,
    input: &Path,
    columns: &ColumnOptions,
    snapshot: &Snapshot,
    only_due: bool,
    shutdown: &Shutdown,
    senders: Vec<mpsc::Sender<Job>>,
) -> Result<(), PipelineError> {
    let store = Store::open_reader(db)?;
    let mut failure = None;
    snapshot.check()?;
    let send = |row: &Arc<Row>, stored: StoredRow| {
        let target = &senders[shard(&route_key(&stored), senders.len())];
        let job = (row.clone(), stored);
        let job = match stage {
            Stage::Change => Job::Change(Box::new(job)),
            Stage::CeRetry => Job::CeRetry(Box::new(job)),
            Stage::Token => Job::TokenRow(Box::new(job)),
            _ => Job::Create(Box::new(job)),
        };
        target.blocking_send(job).is_ok() && !shutdown.is_stopping()
    };
    for expanded in [false, true] {
        let mut reader = OrderReader::open(input, mode.schema(columns))?;
        let mut current: Option<Arc<Row>> = None;
        let now = chrono::Utc::now().timestamp();
        let mut each = |stored: StoredRow| {
            // Woken for deferred rows: only those whose time has come.
            if only_due
                && stored.state == RowState::Deferred
                && stored.next_attempt_at.is_some_and(|t| t > now)
            {
                return true;
            }
            let wanted = stored.input_row;
            loop {
                if current.as_ref().is_some_and(|r| r.number == wanted) {
                    break;
                }
                match reader.next_row() {
                    Some(Ok(row)) if row.number <= wanted => current = Some(Arc::new(row)),
                    Some(Err(e)) => {
                        failure = Some(PipelineError::Input(e));
                        return false;
                    }
                    _ => {
                        failure = Some(PipelineError::Conflict(format!(
                            "{}: row {wanted} is missing; the file changed while the run was going",
                            input.display()
                        )));
                        return false;
                    }
                }
            }
            if let Err(changed) = input_unchanged(snapshot, shutdown) {
                failure = Some(changed);
                return false;
            }
            send(current.as_ref().expect("row found"), stored)
        };
        if expanded {
            store.for_each_expanded(run_id, stage.takes(), &mut each)?;
        } else {
            store.for_each_row(run_id, stage.takes(), false, &mut each)?;
        }
        if failure.is_some() {
            break;
        }
    }
    failure.map_or(Ok(()), Err)
}

/// Sends each customer's rows the stage takes as one group to its worker;
/// rows whose customer is not known go one by one.
pub(super) fn feed_groups(
    db: &Path,
    run_id: i64,
    stage: Stage,
    shutdown: &Shutdown,
    senders: Vec<mpsc::Sender<Job>>,
) -> Result<(), PipelineError> {
    let store = Store::open_reader(db)?;
    let send = |customer: String, rows: Vec<StoredRow>| {
        let key = if customer.is_empty() {
            route_key(&rows[0])
        } else {
            customer.clone()
        };
        let target = &senders[shard(&key, senders.len())];
        let exclusive = stage == Stage::Token
            && !customer.is_empty()
            && store
                .customer_wide_token_allowed(run_id, &customer)
                .unwrap_or(false);
        let group = Group {
            customer,
            rows,
            exclusive,
        };
        let job = match stage {
            Stage::Expand | Stage::Lookup => Job::Lookup(group),
            Stage::Refresh => Job::Refresh(group),
            Stage::Resolve => Job::Resolve(group),
            _ => Job::Token(group),
        };
        target.blocking_send(job).is_ok() && !shutdown.is_stopping()
    };
    let mut current: Option<(String, Vec<StoredRow>)> = None;
    let mut going = true;
    store.for_each_row(run_id, stage.takes(), true, |row| {
        // Customer rows first, then order rows (see `Stage::Expand`).
        let names_order = order_selector(&row).is_some();
        if (stage == Stage::Expand && names_order) || (stage == Stage::Lookup && !names_order) {
            return true;
        }
        if stage == Stage::Resolve {
            // Only rows whose customer is unknown (they come first).
            if row.site_customer_identifier.is_some() {
                return false;
            }
            if row.pnm_customer_identifier.is_some() {
                return true;
            }
        }
        let Some(customer) = row.site_customer_identifier.clone() else {
            going = send(String::new(), vec![row]);
            return going;
        };
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
