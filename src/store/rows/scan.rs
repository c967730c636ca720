//! The reads the engine and the exports make: rows by customer in chunks,
//! every row in input order, customers' token facts, input offsets.

use rusqlite::{params, OptionalExtension};

use crate::store::counts::read_state;
use crate::store::{Store, StoreError};

use super::state::RowState;

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
        state: read_state(r, 7)?,
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

impl Store {
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
}
