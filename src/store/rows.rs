//! Row progress: states, registration, and the queries stages and exports use.

use rusqlite::{params, OptionalExtension, Transaction};

use super::{Store, StoreError};

/// Where a row is. `creating` is written before the create request leaves,
/// so a row found in it has an unknown outcome and is reconciled first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RowState {
    #[default]
    Pending,
    Creating,
    /// A change request is about to leave (or may have); reconciled on resume.
    Changing,
    /// A retry-payment request is about to leave (or may have); checked on resume.
    Retrying,
    /// Waiting for its retry window (`next_attempt_at`).
    Deferred,
    /// Nothing to do (e.g. already paid); the reason is in the error columns.
    Skipped,
    Created,
    UrlsRefreshed,
    Done,
    Failed,
    Rejected,
    /// Whether the row's request took effect cannot be told from the
    /// provider's answers: left for an operator (the error says what to check).
    Unknown,
}

impl RowState {
    pub const ALL: [RowState; 12] = [
        RowState::Pending,
        RowState::Creating,
        RowState::Changing,
        RowState::Retrying,
        RowState::Deferred,
        RowState::Skipped,
        RowState::Created,
        RowState::UrlsRefreshed,
        RowState::Done,
        RowState::Failed,
        RowState::Rejected,
        RowState::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RowState::Pending => "pending",
            RowState::Creating => "creating",
            RowState::Changing => "changing",
            RowState::Retrying => "retrying",
            RowState::Deferred => "deferred",
            RowState::Skipped => "skipped",
            RowState::Created => "created",
            RowState::UrlsRefreshed => "urls_refreshed",
            RowState::Done => "done",
            RowState::Failed => "failed",
            RowState::Rejected => "rejected",
            RowState::Unknown => "unknown",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether the row needs no more work in this run.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RowState::Done
                | RowState::Failed
                | RowState::Rejected
                | RowState::Skipped
                | RowState::Unknown
        )
    }
}

/// Where [`Store::requeue_failed`] puts a failed row back, by what it holds.
#[derive(Debug, Clone, Copy)]
pub struct Requeue {
    /// A row with no order identifier.
    pub no_order: RowState,
    /// A row with an order but no URL.
    pub order: RowState,
    /// A row with an order and its URL.
    pub urls: RowState,
    /// A row with a failed attempt at this endpoint goes to this state
    /// whatever it holds (its request may have been acted on).
    pub attempted: Option<(&'static str, RowState)>,
}

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

/// A row's stored progress.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredRow {
    /// The state row's own number: the input row's, or a new one for an
    /// order a `refresh` customer row expanded into.
    pub row_number: u64,
    /// The input row it came from.
    pub input_row: u64,
    pub line: u64,
    pub site_customer_identifier: Option<String>,
    pub site_order_identifier: Option<String>,
    pub pnm_order_identifier: Option<String>,
    pub pnm_customer_identifier: Option<String>,
    pub state: RowState,
    pub attempts: u32,
    pub last_error_code: Option<String>,
    pub last_error: Option<String>,
    pub embedded_js_url: Option<String>,
    pub embedded_js_url_expires_at: Option<String>,
    pub secure_smart_token: Option<String>,
    pub secure_smart_link: Option<String>,
    /// Unix seconds before which a deferred row waits.
    pub next_attempt_at: Option<i64>,
    pub payment_id: Option<String>,
    pub payment_status: Option<String>,
    pub payment_link: Option<String>,
    pub payment_link_expiry: Option<String>,
    /// Unix seconds of the row's last intent.
    pub intent_at: Option<i64>,
    /// Byte offset of the input record (rows registered since schema 5).
    pub input_offset: Option<u64>,
}

const COLUMNS: &str = "row_number, COALESCE(input_row, row_number), line, site_customer_identifier, site_order_identifier, \
     pnm_order_identifier, pnm_customer_identifier, state, attempts, last_error_code, last_error, \
     embedded_js_url, embedded_js_url_expires_at, secure_smart_token, secure_smart_link, \
     next_attempt_at, payment_id, payment_status, payment_link, payment_link_expiry, intent_at, input_offset";

/// How many columns [`COLUMNS`] names (a query may add its own after them).
const COLUMN_COUNT: usize = 22;

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredRow> {
    Ok(StoredRow {
        row_number: r.get(0)?,
        input_row: r.get(1)?,
        line: r.get(2)?,
        site_customer_identifier: r.get(3)?,
        site_order_identifier: r.get(4)?,
        pnm_order_identifier: r.get(5)?,
        pnm_customer_identifier: r.get(6)?,
        state: {
            let text: String = r.get(7)?;
            RowState::parse(&text).ok_or_else(|| {
                rusqlite::Error::FromSqlConversionFailure(
                    7,
                    rusqlite::types::Type::Text,
                    format!("unknown row state `{text}`").into(),
                )
            })?
        },
        attempts: r.get(8)?,
        last_error_code: r.get(9)?,
        last_error: r.get(10)?,
        embedded_js_url: r.get(11)?,
        embedded_js_url_expires_at: r.get(12)?,
        secure_smart_token: r.get(13)?,
        secure_smart_link: r.get(14)?,
        next_attempt_at: r.get(15)?,
        payment_id: r.get(16)?,
        payment_status: r.get(17)?,
        payment_link: r.get(18)?,
        payment_link_expiry: r.get(19)?,
        intent_at: r.get(20)?,
        input_offset: r.get(21)?,
    })
}

/// Rows read per read transaction by the feeders.
const CHUNK: i64 = 4096;

/// `'a','b'` for an `IN (...)` of states (their names are fixed words).
fn sql_list(states: &[RowState]) -> String {
    states
        .iter()
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(",")
}

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

fn insert_one(tx: &Transaction<'_>, run_id: i64, row: &NewRow) -> rusqlite::Result<()> {
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
    tx.prepare_cached(
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
        // Immediate: each row is read before it is written, and a
        // transaction that reads first cannot wait for the write lock that
        // another connection (a run's writer beside this registration)
        // holds.
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(err)?;
        for row in rows {
            insert_one(&tx, run_id, row).map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    /// Calls `f` for each row of the run in `states` (until `f` says
    /// stop), by site customer (then PayNearMe customer) and row number when
    /// `by_customer` (rows with no site customer first), else by row number
    /// and leaving out rows a customer row expanded into. Reads in
    /// chunks, each its own short read transaction, so a long stage never
    /// holds back WAL checkpoints (which would grow the WAL and memory with
    /// the input); rows that leave `states` meanwhile are simply not seen
    /// again.
    pub fn for_each_row(
        &self,
        run_id: i64,
        states: &[RowState],
        by_customer: bool,
        f: impl FnMut(StoredRow) -> bool,
    ) -> Result<(), StoreError> {
        if by_customer {
            return self.for_each_by_customer(run_id, states, f);
        }
        let list = sql_list(states);
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT {COLUMNS} FROM rows WHERE run_id = ?1 AND state IN ({list})
                 AND input_row IS NULL AND row_number > ?2 ORDER BY row_number LIMIT {CHUNK}"
            ))
            .map_err(|e| self.err(e))?;
        self.in_chunks(
            |after: &u64| {
                stmt.query_map(params![run_id, after], |r| {
                    let row = from_row(r)?;
                    let next = row.row_number;
                    Ok((row, next))
                })?
                .collect()
            },
            f,
        )
    }

    /// [`Store::for_each_row`] by customer. The rows are sorted once into a
    /// temporary table (SQLite's own temporary file, outside the WAL) and
    /// read back along it in chunks: the sort reads only this run's rows, and
    /// the database keeps no index by customer that every state change would
    /// have to update.
    fn for_each_by_customer(
        &self,
        run_id: i64,
        states: &[RowState],
        f: impl FnMut(StoredRow) -> bool,
    ) -> Result<(), StoreError> {
        let list = sql_list(states);
        self.conn
            .execute_batch("DROP TABLE IF EXISTS temp.stage_rows")
            .map_err(|e| self.err(e))?;
        self.conn
            .execute(
                &format!(
                    "CREATE TEMP TABLE stage_rows AS SELECT row_number AS r FROM rows
                     WHERE run_id = ?1 AND state IN ({list})
                     ORDER BY site_customer_identifier, pnm_customer_identifier, row_number"
                ),
                params![run_id],
            )
            .map_err(|e| self.err(e))?;
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT {COLUMNS}, s.rowid FROM temp.stage_rows AS s
                 JOIN rows ON rows.run_id = ?1 AND rows.row_number = s.r
                 WHERE s.rowid > ?2 AND rows.state IN ({list}) ORDER BY s.rowid LIMIT {CHUNK}"
            ))
            .map_err(|e| self.err(e))?;
        self.in_chunks(
            |after: &i64| {
                stmt.query_map(params![run_id, after], |r| {
                    Ok((from_row(r)?, r.get(COLUMN_COUNT)?))
                })?
                .collect()
            },
            f,
        )?;
        drop(stmt);
        self.conn
            .execute_batch("DROP TABLE temp.stage_rows")
            .map_err(|e| self.err(e))
    }

    /// Reads rows a chunk at a time (`chunk` gives up to [`CHUNK`] rows
    /// after a cursor, each with the cursor past it), each chunk its own
    /// read transaction, until a chunk is short or `f` says stop.
    fn in_chunks<C: Default>(
        &self,
        mut chunk: impl FnMut(&C) -> rusqlite::Result<Vec<(StoredRow, C)>>,
        mut f: impl FnMut(StoredRow) -> bool,
    ) -> Result<(), StoreError> {
        let mut cursor = C::default();
        loop {
            let rows = chunk(&cursor).map_err(|e| self.err(e))?;
            let full = rows.len() as i64 == CHUNK;
            for (row, next) in rows {
                cursor = next;
                if !f(row) {
                    return Ok(());
                }
            }
            if !full {
                return Ok(());
            }
        }
    }

    /// Every row of the run in input order (a row's expansions after it),
    /// read in one query: for exports, when nothing else writes.
    pub fn all_rows(
        &self,
        run_id: i64,
        mut f: impl FnMut(StoredRow) -> bool,
    ) -> Result<(), StoreError> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT {COLUMNS} FROM rows WHERE run_id = ?1
                 ORDER BY COALESCE(input_row, row_number), row_number"
            ))
            .map_err(|e| self.err(e))?;
        let mut rows = stmt.query(params![run_id]).map_err(|e| self.err(e))?;
        while let Some(r) = rows.next().map_err(|e| self.err(e))? {
            if !f(from_row(r).map_err(|e| self.err(e))?) {
                break;
            }
        }
        Ok(())
    }

    /// Whether a row of `run_id` in `states` lacks its input offset (it was
    /// registered by a version that did not record them).
    pub fn any_without_offset(&self, run_id: i64, states: &[RowState]) -> Result<bool, StoreError> {
        self.conn
            .query_row(
                &format!(
                    "SELECT EXISTS (SELECT 1 FROM rows WHERE run_id = ?1 AND input_offset IS NULL
                     AND state IN ({}))",
                    sql_list(states)
                ),
                params![run_id],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))
    }

    /// The rows of `run_id` ready for their token that came from
    /// `input_rows` (themselves, or rows they expanded into).
    pub fn ready_rows(
        &self,
        run_id: i64,
        input_rows: &[u64],
    ) -> Result<Vec<StoredRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM rows WHERE run_id = ?1 AND state = ?2
                 AND (row_number = ?3 OR input_row = ?3) ORDER BY row_number"
            ))
            .map_err(|e| self.err(e))?;
        let mut rows = Vec::new();
        for input_row in input_rows {
            let found = stmt
                .query_map(
                    params![run_id, RowState::UrlsRefreshed.as_str(), input_row],
                    from_row,
                )
                .and_then(Iterator::collect::<rusqlite::Result<Vec<_>>>)
                .map_err(|e| self.err(e))?;
            rows.extend(found);
        }
        Ok(rows)
    }

    /// Records where each input row's record starts (`(row, offset)`) for
    /// rows of `run_id` that do not know it (and rows they expanded into).
    pub fn fill_offsets(&mut self, run_id: i64, offsets: &[(u64, u64)]) -> Result<(), StoreError> {
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        {
            let mut own = tx
                .prepare(
                    "UPDATE rows SET input_offset = ?3
                     WHERE run_id = ?1 AND row_number = ?2 AND input_offset IS NULL",
                )
                .map_err(err)?;
            let mut expanded = tx
                .prepare(
                    "UPDATE rows SET input_offset = ?3
                     WHERE run_id = ?1 AND input_row = ?2 AND input_offset IS NULL",
                )
                .map_err(err)?;
            for (row, offset) in offsets {
                own.execute(params![run_id, row, offset]).map_err(err)?;
                expanded
                    .execute(params![run_id, row, offset])
                    .map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }

    /// Whether the refresh pages showed every order of `customer` at the
    /// provider to be in `run_id` (see migration 05).
    pub fn customer_exclusive(&self, run_id: i64, customer: &str) -> Result<bool, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT exclusive FROM run_customers WHERE run_id = ?1 AND site_customer_identifier = ?2",
            )
            .and_then(|mut s| {
                s.query_row(params![run_id, customer], |r| r.get::<_, bool>(0))
                    .optional()
            })
            .map(|found| found.unwrap_or(false))
            .map_err(|e| self.err(e))
    }

    /// Whether a row of `customer` in `run_id` already holds a smart token
    /// (issued by an earlier invocation of the run): a customer-wide
    /// `get_smart_token` now would replace it at the provider.
    pub fn customer_has_tokens(&self, run_id: i64, customer: &str) -> Result<bool, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM rows WHERE run_id = ?1 AND site_customer_identifier = ?2
                                AND secure_smart_token IS NOT NULL)",
            )
            .and_then(|mut s| s.query_row(params![run_id, customer], |r| r.get::<_, bool>(0)))
            .map_err(|e| self.err(e))
    }

    /// Whether a customer-wide `get_smart_token` for `customer` touches
    /// only the rows about to get their tokens: the refresh pages showed
    /// every order of the customer in the run, and no row of the run holds
    /// a token already (it would be replaced at the provider and the row
    /// left with a superseded one). Decided anew at every token stage.
    pub fn customer_wide_token_allowed(
        &self,
        run_id: i64,
        customer: &str,
    ) -> Result<bool, StoreError> {
        Ok(self.customer_exclusive(run_id, customer)?
            && !self.customer_has_tokens(run_id, customer)?)
    }

    /// Rows of `run_id` that name one order share the URL and the token
    /// issued last for it (a `refresh` may name an order directly and
    /// through its customer).
    pub fn share_latest_values(&self, run_id: i64) -> Result<(), StoreError> {
        let latest = |table: &str, a: &str, b: &str, seq: &str| {
            format!(
                "DROP TABLE IF EXISTS temp.{table};
                 CREATE TEMP TABLE {table} (pnm TEXT PRIMARY KEY, a, b) WITHOUT ROWID;
                 INSERT INTO temp.{table}
                 SELECT p, a, b FROM (
                     SELECT pnm_order_identifier AS p, {a} AS a, {b} AS b,
                         ROW_NUMBER() OVER (PARTITION BY pnm_order_identifier ORDER BY {seq} DESC) AS rn,
                         COUNT(*) OVER (PARTITION BY pnm_order_identifier) AS n
                     FROM rows WHERE run_id = {run_id} AND pnm_order_identifier IS NOT NULL
                       AND {seq} IS NOT NULL)
                 WHERE rn = 1 AND n > 1;
                 UPDATE rows SET {a} = l.a, {b} = l.b FROM temp.{table} AS l
                 WHERE rows.run_id = {run_id} AND rows.pnm_order_identifier = l.pnm;
                 DROP TABLE temp.{table};"
            )
        };
        let sql = latest(
            "latest_url",
            "embedded_js_url",
            "embedded_js_url_expires_at",
            "url_seq",
        ) + &latest(
            "latest_token",
            "secure_smart_token",
            "secure_smart_link",
            "token_seq",
        );
        self.conn.execute_batch(&sql).map_err(|e| self.err(e))
    }

    /// Puts failed rows of `run_id` (only those whose last error is
    /// `error_code`, when given) back to the state `to` picks for what each
    /// already holds; returns how many.
    pub fn requeue_failed(
        &self,
        run_id: i64,
        error_code: Option<&str>,
        to: &Requeue,
    ) -> Result<u64, StoreError> {
        self.conn
            .execute(
                "UPDATE rows SET attempts = 0, state = CASE
                     WHEN ?7 IS NOT NULL AND EXISTS (SELECT 1 FROM attempts a
                         WHERE a.run_id = rows.run_id AND a.row_number = rows.row_number
                           AND a.endpoint = ?7) THEN ?8
                     WHEN pnm_order_identifier IS NULL THEN ?3
                     WHEN embedded_js_url IS NULL THEN ?4
                     ELSE ?5 END
                 WHERE run_id = ?1 AND state = ?6 AND (?2 IS NULL OR last_error_code = ?2)",
                params![
                    run_id,
                    error_code,
                    to.no_order.as_str(),
                    to.order.as_str(),
                    to.urls.as_str(),
                    RowState::Failed.as_str(),
                    to.attempted.map(|(endpoint, _)| endpoint),
                    to.attempted.map(|(_, state)| state.as_str()),
                ],
            )
            .map(|n| n as u64)
            .map_err(|e| self.err(e))
    }

    /// The most common error codes of failed and rejected rows: code,
    /// count, and one example message, most frequent first.
    pub fn error_summary(
        &self,
        run_id: i64,
        limit: usize,
    ) -> Result<Vec<(String, u64, String)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT last_error_code, COUNT(*), MIN(last_error) FROM rows
                 WHERE run_id = ?1 AND state IN (?2, ?3) AND last_error_code IS NOT NULL
                 GROUP BY last_error_code ORDER BY COUNT(*) DESC, last_error_code LIMIT ?4",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(
                params![
                    run_id,
                    RowState::Failed.as_str(),
                    RowState::Rejected.as_str(),
                    limit as i64
                ],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get::<_, Option<String>>(2)?.unwrap_or_default(),
                    ))
                },
            )
            .and_then(Iterator::collect)
            .map_err(|e| self.err(e));
        rows
    }

    /// The earliest time (unix seconds) a deferred row of the run may go.
    pub fn next_deferred(&self, run_id: i64) -> Result<Option<i64>, StoreError> {
        self.conn
            .query_row(
                "SELECT MIN(next_attempt_at) FROM rows WHERE run_id = ?1 AND state = ?2",
                params![run_id, RowState::Deferred.as_str()],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))
    }

    /// Row counts per state for the run.
    pub fn state_counts(&self, run_id: i64) -> Result<Vec<(RowState, u64)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT state, COUNT(*) FROM rows WHERE run_id = ?1 GROUP BY state")
            .map_err(|e| self.err(e))?;
        let pairs: Vec<(String, u64)> = stmt
            .query_map(params![run_id], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(Iterator::collect)
            .map_err(|e| self.err(e))?;
        let mut counts: Vec<(RowState, u64)> = pairs
            .into_iter()
            .filter_map(|(s, n)| RowState::parse(&s).map(|s| (s, n)))
            .collect();
        counts.sort_by_key(|(s, _)| RowState::ALL.iter().position(|x| x == s));
        Ok(counts)
    }
}

#[cfg(test)]
mod tests {
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
}
