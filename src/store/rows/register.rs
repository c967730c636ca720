//! Recording the input's rows: order identity against earlier runs, the
//! customer the store knows for an order, repeats.

use rusqlite::{params, OptionalExtension, Transaction};

use crate::store::counts::Moves;
use crate::store::{Store, StoreError};

use super::state::RowState;

/// A row as first recorded from the input.
#[derive(Debug, Clone)]
pub struct NewRow {
    pub row_number: u64,
    pub line: u64,
    pub site_customer_identifier: Option<String>,
    pub site_order_identifier: Option<String>,
    /// Whether a repeat of `site_order_identifier` is rejected (`run`).
    pub unique_order_id: bool,
    pub pnm_order_identifier: Option<String>,
    pub pnm_customer_identifier: Option<String>,
    /// `Some(reason)` for a row that failed validation.
    pub rejection: Option<(String, String)>,
    /// `run`: how the row's order identity is settled against earlier runs.
    pub identity: Option<Identity>,
    /// Byte offset of the input record.
    pub input_offset: Option<u64>,
    /// Fill in the row's customer from what the store knows of the order it
    /// names (`refresh`, `change`).
    pub known_customer: bool,
}

/// What `run` records about a row's order identity (see migration 05).
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// The order amount, normalised (not personal data).
    pub order_amount: Option<String>,
    /// Keyed digest of what the row sends, for rows whose identifier was
    /// derived.
    pub content: Option<Vec<u8>>,
    /// Take the order of an earlier row with the same `content` (and its
    /// identifier) when there is one not yet taken (`--same-orders`).
    pub same_orders: bool,
    /// Look up identifiers no earlier run knows at the provider before
    /// creating them (`--check-existing`).
    pub check_existing: bool,
}

/// The error recorded for a row whose identifier names an earlier run's
/// order for another customer or amount.
pub const CONFLICTING_ORDER: &str = "conflicting_order";

/// The error recorded for a row whose `site_order_identifier` repeats an
/// earlier row's.
pub const DUPLICATE_ORDER_ID: &str = "duplicate_site_order_identifier";

/// An earlier `run` row with the same identifier.
struct Prior {
    run_id: i64,
    row_number: u64,
    customer: Option<String>,
    amount: Option<String>,
    pnm_order: Option<String>,
    pnm_customer: Option<String>,
}

/// The earlier `run` row that registered `id` (one whose order is known
/// first), if any.
fn prior_order(tx: &Transaction<'_>, run_id: i64, id: &str) -> rusqlite::Result<Option<Prior>> {
    tx.prepare_cached(
        "SELECT r.run_id, r.row_number, r.site_customer_identifier, r.order_amount,
                r.pnm_order_identifier, r.pnm_customer_identifier
         FROM rows r JOIN runs u ON u.id = r.run_id
         WHERE r.site_order_identifier = ?1 AND r.run_id != ?2 AND u.command = 'run'
           AND r.state != 'rejected'
         ORDER BY r.pnm_order_identifier IS NULL, r.run_id LIMIT 1",
    )?
    .query_row(params![id, run_id], |r| {
        Ok(Prior {
            run_id: r.get(0)?,
            row_number: r.get(1)?,
            customer: r.get(2)?,
            amount: r.get(3)?,
            pnm_order: r.get(4)?,
            pnm_customer: r.get(5)?,
        })
    })
    .optional()
}

/// The identifier of an earlier `run` row with the same content that no
/// row of this run has taken yet.
fn same_content(
    tx: &Transaction<'_>,
    run_id: i64,
    content: &[u8],
) -> rusqlite::Result<Option<String>> {
    tx.prepare_cached(
        "SELECT r.site_order_identifier FROM rows r JOIN runs u ON u.id = r.run_id
         WHERE r.content = ?1 AND r.run_id != ?2 AND u.command = 'run' AND r.state != 'rejected'
           AND r.site_order_identifier IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM rows x
                           WHERE x.site_order_identifier = r.site_order_identifier AND x.run_id = ?2)
         ORDER BY r.run_id, r.row_number LIMIT 1",
    )?
    .query_row(params![content, run_id], |r| r.get(0))
    .optional()
}

/// The customer (site and PayNearMe identifiers) of the order `row` names,
/// as the store has seen it: by `pnm_order_identifier`, else by a
/// `site_order_identifier` only one known order has, else by the
/// `pnm_customer_identifier` the row names.
fn known_customer(
    tx: &Transaction<'_>,
    row: &NewRow,
) -> rusqlite::Result<Option<(Option<String>, Option<String>)>> {
    let lookups: [(&str, Option<&String>); 3] = [
        (
            "SELECT site_customer_identifier, pnm_customer_identifier FROM orders
             WHERE pnm_order_identifier = ?1 AND site_customer_identifier IS NOT NULL",
            row.pnm_order_identifier.as_ref(),
        ),
        (
            "SELECT site_customer_identifier, pnm_customer_identifier FROM orders
             WHERE site_order_identifier = ?1 AND site_customer_identifier IS NOT NULL",
            row.site_order_identifier.as_ref(),
        ),
        (
            "SELECT site_customer_identifier, pnm_customer_identifier FROM orders
             WHERE pnm_customer_identifier = ?1 AND site_customer_identifier IS NOT NULL",
            row.pnm_customer_identifier.as_ref(),
        ),
    ];
    for (sql, key) in lookups {
        let Some(key) = key else { continue };
        let found: Vec<(Option<String>, Option<String>)> = tx
            .prepare_cached(&format!("{sql} LIMIT 2"))?
            .query_map(params![key], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        // Two known orders with one site identifier (or a PayNearMe
        // customer under two site customers): not one answer.
        match found.as_slice() {
            [one] => return Ok(Some(one.clone())),
            [a, b] if a.0 == b.0 => return Ok(Some(a.clone())),
            _ => {}
        }
        // A row naming its order is settled by that order alone.
        if row.pnm_order_identifier.is_some() {
            return Ok(None);
        }
    }
    Ok(None)
}

/// Records `row` (unless an earlier registration did) and counts it in
/// `moves`.
fn insert_one(
    tx: &Transaction<'_>,
    run_id: i64,
    row: &NewRow,
    moves: &mut Moves,
) -> rusqlite::Result<()> {
    let mut rejection = row.rejection.clone();
    let adopted_id = match &row.identity {
        Some(Identity {
            content: Some(content),
            same_orders: true,
            ..
        }) if rejection.is_none() => same_content(tx, run_id, content)?,
        _ => None,
    };
    let mut order_id = adopted_id
        .as_deref()
        .or(row.site_order_identifier.as_deref());
    if let (Some(id), true) = (order_id, row.unique_order_id) {
        let first: Option<u64> = tx
            .prepare_cached(
                "SELECT row_number FROM rows WHERE run_id = ?1 AND site_order_identifier = ?2
                 AND row_number < ?3 ORDER BY row_number LIMIT 1",
            )?
            .query_row(params![run_id, id, row.row_number], |r| r.get(0))
            .optional()?;
        if let Some(first) = first {
            rejection = Some((
                DUPLICATE_ORDER_ID.to_string(),
                format!(
                    "line {}: site_order_identifier: `{id}` is already used by row {first}; each order needs its own",
                    row.line
                ),
            ));
            order_id = None;
        }
    }
    let mut state = RowState::Pending;
    let (mut pnm_order, mut pnm_customer) = (
        row.pnm_order_identifier.clone(),
        row.pnm_customer_identifier.clone(),
    );
    let mut site_customer = row.site_customer_identifier.clone();
    if row.known_customer && site_customer.is_none() {
        if let Some(known) = known_customer(tx, row)? {
            site_customer = known.0;
            pnm_customer = pnm_customer.or(known.1);
        }
    }
    if let (Some(identity), Some(id), None) = (&row.identity, order_id, &rejection) {
        match prior_order(tx, run_id, id)? {
            Some(prior) => {
                let differs = |a: &Option<String>, b: &Option<String>| matches!((a, b), (Some(a), Some(b)) if a != b);
                if differs(&prior.customer, &row.site_customer_identifier)
                    || differs(&prior.amount, &identity.order_amount)
                {
                    rejection = Some((
                        CONFLICTING_ORDER.to_string(),
                        format!(
                            "line {}: site_order_identifier `{id}` is already the order of run {} \
                             (row {}) for customer {} and amount {}; this row says customer {} and \
                             amount {}. Give this order its own site_order_identifier, or correct \
                             the row (use `change` to change an existing order)",
                            row.line,
                            prior.run_id,
                            prior.row_number,
                            prior.customer.as_deref().unwrap_or("?"),
                            prior.amount.as_deref().unwrap_or("?"),
                            row.site_customer_identifier.as_deref().unwrap_or("?"),
                            identity.order_amount.as_deref().unwrap_or("?"),
                        ),
                    ));
                    order_id = None;
                } else if prior.pnm_order.is_some() {
                    // The order exists: adopt it, skip create.
                    state = RowState::Created;
                    pnm_order = prior.pnm_order;
                    pnm_customer = prior.pnm_customer;
                } else {
                    // Registered before but not known to exist: look it up
                    // before it is created.
                    state = RowState::Creating;
                }
            }
            None if identity.check_existing => state = RowState::Creating,
            None => {}
        }
    }
    let (state, code, error) = match &rejection {
        Some((code, error)) => (
            RowState::Rejected,
            Some(code.as_str()),
            Some(error.as_str()),
        ),
        None => (state, None, None),
    };
    let identity = row.identity.as_ref();
    // A row already there was recorded by an earlier, interrupted
    // registration: it stays as it is.
    let added = tx.prepare_cached(
        "INSERT INTO rows (run_id, row_number, line, site_customer_identifier, site_order_identifier,
             pnm_order_identifier, pnm_customer_identifier, state, last_error_code, last_error,
             order_amount, content, input_offset)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
         ON CONFLICT (run_id, row_number) DO NOTHING",
    )?
    .execute(params![
        run_id,
        row.row_number,
        row.line,
        site_customer,
        order_id,
        pnm_order,
        pnm_customer,
        state.as_str(),
        code,
        error,
        identity.and_then(|i| i.order_amount.as_deref()),
        identity.and_then(|i| i.content.as_deref()),
        row.input_offset,
    ])?;
    moves.add(state, added as i64);
    Ok(())
}

impl Store {
    /// Records input rows in one transaction. Rows already recorded (an
    /// interrupted registration) are left as they are; a row repeating an
    /// earlier row's `site_order_identifier` is recorded as rejected.
    pub fn insert_rows(&mut self, run_id: i64, rows: &[NewRow]) -> Result<(), StoreError> {
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        let mut moves = Moves::default();
        for row in rows {
            insert_one(&tx, run_id, row, &mut moves).map_err(err)?;
        }
        moves.write(&tx, run_id).map_err(err)?;
        tx.commit().map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::super::Requeue;
    use super::*;

    fn new_row(n: u64, order: &str) -> NewRow {
        NewRow {
            row_number: n,
            line: n + 1,
            site_customer_identifier: Some("C1".into()),
            site_order_identifier: Some(order.into()),
            unique_order_id: true,
            pnm_order_identifier: None,
            pnm_customer_identifier: None,
            rejection: None,
            identity: None,
            input_offset: None,
            known_customer: false,
        }
    }

    #[test]
    fn registering_again_after_an_interruption_keeps_recorded_rows_and_rejects_repeats() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db")).unwrap();
        let run = store.create_run("run", "in.csv", "fp", "{}").unwrap();
        // The first registration got as far as row 2, and row 1 moved on.
        store
            .insert_rows(run, &[new_row(1, "A"), new_row(2, "B")])
            .unwrap();
        store
            .conn
            .execute(
                "UPDATE rows SET state = 'creating' WHERE run_id = ?1 AND row_number = 1",
                [run],
            )
            .unwrap();
        // The resumed registration starts again from the top.
        let all = [new_row(1, "A"), new_row(2, "B"), new_row(3, "A")];
        store.insert_rows(run, &all).unwrap();

        let mut rows = Vec::new();
        store
            .all_rows(run, |r| {
                rows.push((r.row_number, r.state, r.site_order_identifier));
                true
            })
            .unwrap();
        assert_eq!(
            rows,
            [
                (1, RowState::Creating, Some("A".to_string())),
                (2, RowState::Pending, Some("B".to_string())),
                (3, RowState::Rejected, None),
            ]
        );
        let (code, _, example) = &store.error_summary(run, 5).unwrap()[0];
        assert_eq!(code, DUPLICATE_ORDER_ID);
        assert!(example.contains("already used by row 1"), "{example}");
    }

    #[test]
    fn registration_and_requeue_keep_the_row_counts() {
        use crate::store::counts::assert_exact;
        use crate::store::writer::{Write, Writer};

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let mut store = Store::open(&path).unwrap();
        let run = store.create_run("run", "in.csv", "fp", "{}").unwrap();
        // Interrupted after two rows, then registered again from the top:
        // a repeat is rejected, rows already there are not counted twice.
        store
            .insert_rows(run, &[new_row(1, "A"), new_row(2, "B")])
            .unwrap();
        assert_exact(&store);
        let all: Vec<NewRow> = ["A", "B", "A", "C", "D", "E"]
            .iter()
            .enumerate()
            .map(|(i, o)| new_row(i as u64 + 1, o))
            .collect();
        store.insert_rows(run, &all).unwrap();
        assert_exact(&store);
        assert_eq!(
            store.state_counts(run).unwrap(),
            [(RowState::Pending, 5), (RowState::Rejected, 1)]
        );

        // Rows 1, 2 and 4 fail (row 4 with an attempt at create_order, row
        // 2 holding its order), then go back by what they hold.
        let writer = Writer::start(Store::open(&path).unwrap(), run);
        let tx = writer.sender();
        let send = |w| tx.blocking_send(w).unwrap();
        send(Write::Created {
            row: 2,
            pnm_order: "P2".into(),
            pnm_customer: None,
        });
        send(Write::Attempt {
            row: 4,
            endpoint: "create_order",
            code: "timeout".into(),
            message: "m".into(),
            latency_ms: 1,
        });
        for row in [1, 2, 4] {
            send(Write::Failed {
                row,
                code: "internal_error".into(),
                message: "m".into(),
            });
        }
        drop(tx);
        writer.finish().unwrap();
        assert_exact(&store);
        let to = Requeue {
            no_order: RowState::Pending,
            order: RowState::Created,
            urls: RowState::UrlsRefreshed,
            attempted: Some(("create_order", RowState::Creating)),
        };
        assert_eq!(store.requeue_failed(run, Some("other"), &to).unwrap(), 0);
        assert_eq!(store.requeue_failed(run, None, &to).unwrap(), 3);
        assert_exact(&store);
        assert_eq!(
            store.state_counts(run).unwrap(),
            [
                (RowState::Pending, 3),
                (RowState::Creating, 1),
                (RowState::Created, 1),
                (RowState::Rejected, 1)
            ]
        );
    }
}
