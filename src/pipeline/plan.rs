//! `--dry-run`: what a run would send, computed from the file alone, with no
//! request and no change to any state database.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::Path;
use std::time::Duration;

use super::stages::PAGE_LIMIT;
use super::{schema, Mode, PipelineError};
use crate::input::check::check_file_with;
use crate::input::fingerprint::fingerprint;
use crate::input::{ColumnOptions, OrderReader};
use crate::provider::paynearme::Endpoint;
use crate::store::Store;

/// What a run of a file would do.
#[derive(Debug, Clone)]
pub struct Plan {
    pub valid: u64,
    pub rejected: u64,
    pub customers: u64,
    /// Requests per endpoint after batching, for a fresh run.
    pub requests: Vec<(&'static str, u64)>,
    /// At the configured rate; `None` when unlimited.
    pub duration: Option<Duration>,
    /// Rows an existing run of this file in the state database has finished.
    pub already_finished: Option<u64>,
}

impl Plan {
    pub fn total_requests(&self) -> u64 {
        self.requests.iter().map(|(_, n)| n).sum()
    }
}

/// Requests that refresh and token calls take for a customer with `orders`
/// ready orders: pages of five (or one call) to refresh, one call for tokens.
pub fn group_requests(orders: u64) -> (u64, u64) {
    let refresh = if orders <= 1 {
        orders
    } else {
        orders.div_ceil(PAGE_LIMIT as u64)
    };
    (refresh, orders.min(1))
}

/// Plans `refresh` or `change`: every valid row, with the requests it takes
/// when each customer row has one page of orders.
fn plan_existing(mode: Mode, input: &Path, columns: &ColumnOptions) -> Result<Plan, PipelineError> {
    let mut reader = OrderReader::open(input, mode.schema(columns))?;
    let header = reader.header().clone();
    let (mut valid, mut rejected) = (0u64, 0u64);
    let mut per_customer: HashMap<String, u64> = HashMap::new();
    let mut lookups = 0u64;
    let mut unkeyed = 0u64;
    while let Some(row) = reader.next_row() {
        let row = row?;
        if mode.check(&header, &row).is_err() {
            rejected += 1;
            continue;
        }
        valid += 1;
        let get = |name: &str| {
            header
                .index(name)
                .and_then(|i| row.get(i))
                .filter(|v| !v.is_empty())
        };
        let names_order =
            get("pnm_order_identifier").is_some() || get("site_order_identifier").is_some();
        match (mode, names_order, get("site_customer_identifier")) {
            // A row naming no customer is looked up first (its customer),
            // which also gives its order; otherwise a site id is looked up.
            (Mode::Change, _, customer) => {
                let knows_customer = customer.is_some() || get("pnm_customer_identifier").is_some();
                lookups += u64::from(!knows_customer || get("pnm_order_identifier").is_none());
            }
            (_, true, Some(c)) => *per_customer.entry(c.to_string()).or_default() += 1,
            // An order the state db has never seen is looked up first (its
            // customer), at most once.
            (_, true, None) => {
                lookups += u64::from(get("pnm_customer_identifier").is_none());
                unkeyed += 1;
            }
            _ => unkeyed += 1,
        }
    }
    let requests = match mode {
        Mode::Change => vec![
            (Endpoint::FindOrders.as_str(), lookups),
            (Endpoint::ChangeOrder.as_str(), valid),
        ],
        Mode::Refresh { urls, tokens, .. } => {
            let grouped: u64 = per_customer.values().map(|&n| group_requests(n).0).sum();
            let mut r = Vec::new();
            if lookups > 0 {
                r.push((Endpoint::FindOrders.as_str(), lookups));
            }
            r.push((
                if urls {
                    Endpoint::RefreshEmbeddedJsUrls
                } else {
                    Endpoint::FindOrders
                }
                .as_str(),
                grouped + unkeyed,
            ));
            if tokens {
                r.push((
                    Endpoint::GetSmartToken.as_str(),
                    per_customer.len() as u64 + unkeyed,
                ));
            }
            r
        }
        Mode::CeRetry { .. } => vec![
            (crate::provider::commerce_engine::PAYMENT_STATUS, valid),
            (crate::provider::commerce_engine::RETRY_PAYMENT, valid),
        ],
        Mode::Run => unreachable!("run is planned from its rows"),
    };
    Ok(Plan {
        valid,
        rejected,
        customers: per_customer.len() as u64,
        requests,
        duration: None,
        already_finished: None,
    })
}

/// Plans a run of `input` at `rate`.
pub fn plan(
    mode: Mode,
    input: &Path,
    columns: &ColumnOptions,
    rate: Option<NonZeroU32>,
    db: &Path,
    check_existing: bool,
) -> Result<Plan, PipelineError> {
    if mode != Mode::Run {
        let mut plan = plan_existing(mode, input, columns)?;
        plan.duration = rate
            .map(|r| Duration::from_secs_f64(plan.total_requests() as f64 / f64::from(r.get())));
        plan.already_finished = already_finished(mode, input, db)?;
        return Ok(plan);
    }
    let mut per_customer: HashMap<String, u64> = HashMap::new();
    let store = if db.exists() {
        Some(Store::open_reader(db)?)
    } else {
        None
    };
    // Rows whose order an earlier run of the database created are adopted
    // (no create); with --check-existing, identifiers no run knows are
    // looked up first.
    let (mut adopted, mut lookups) = (0u64, 0u64);
    let mut store_error = None;
    let check = check_file_with(input, schema(columns), None, |header, row| {
        if let Some(c) = header
            .index("site_customer_identifier")
            .and_then(|i| row.get(i))
        {
            *per_customer.entry(c.to_string()).or_default() += 1;
        }
        let id = header
            .index("site_order_identifier")
            .and_then(|i| row.get(i))
            .filter(|v| !v.is_empty());
        let known = match (id, &store) {
            (Some(id), Some(store)) => match store.known_order(id) {
                Ok(known) => known,
                Err(e) => {
                    store_error.get_or_insert(e);
                    None
                }
            },
            _ => None,
        };
        match known {
            Some(true) => adopted += 1,
            Some(false) => lookups += 1,
            None => lookups += u64::from(check_existing),
        }
    })?;
    if let Some(e) = store_error {
        return Err(e.into());
    }
    let (mut refresh, mut token) = (0, 0);
    for &n in per_customer.values() {
        let (r, t) = group_requests(n);
        refresh += r;
        token += t;
    }
    let mut requests = vec![
        (Endpoint::CreateOrder.as_str(), check.valid - adopted),
        (Endpoint::RefreshEmbeddedJsUrls.as_str(), refresh),
        (Endpoint::GetSmartToken.as_str(), token),
    ];
    if lookups > 0 {
        requests.insert(1, (Endpoint::FindOrders.as_str(), lookups));
    }
    let total: u64 = requests.iter().map(|(_, n)| n).sum();
    let already_finished = already_finished(mode, input, db)?;
    Ok(Plan {
        valid: check.valid,
        rejected: check.rejected,
        customers: per_customer.len() as u64,
        duration: rate.map(|r| Duration::from_secs_f64(total as f64 / f64::from(r.get()))),
        requests,
        already_finished,
    })
}

/// Rows an existing run of this file and command has finished (read only).
fn already_finished(mode: Mode, input: &Path, db: &Path) -> Result<Option<u64>, PipelineError> {
    if !db.exists() {
        return Ok(None);
    }
    let fp = fingerprint(input).map_err(|source| crate::input::InputError::Io {
        path: input.to_path_buf(),
        source,
    })?;
    let store = Store::open_reader(db)?;
    Ok(match store.find_run(mode.command(), &fp)? {
        Some(run) => Some(
            store
                .state_counts(run.id)?
                .iter()
                .filter(|(s, _)| s.is_final())
                .map(|(_, n)| n)
                .sum(),
        ),
        None => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_requests_page_by_five() {
        assert_eq!(group_requests(1), (1, 1));
        assert_eq!(group_requests(2), (1, 1));
        assert_eq!(group_requests(5), (1, 1));
        assert_eq!(group_requests(6), (2, 1));
        assert_eq!(group_requests(12), (3, 1));
    }
}
