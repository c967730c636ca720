//! Row progress: states, registration, and the queries stages and exports use.

use rusqlite::{params, Transaction};

use super::{Store, StoreError};

/// Where a row is. `creating` is written before the create request leaves,
/// so a row found in it has an unknown outcome and is reconciled first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RowState {
    Pending,
    Creating,
    Created,
    UrlsRefreshed,
    Done,
    Failed,
    Rejected,
}

impl RowState {
    pub const ALL: [RowState; 7] = [
        RowState::Pending,
        RowState::Creating,
        RowState::Created,
        RowState::UrlsRefreshed,
        RowState::Done,
        RowState::Failed,
        RowState::Rejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RowState::Pending => "pending",
            RowState::Creating => "creating",
            RowState::Created => "created",
            RowState::UrlsRefreshed => "urls_refreshed",
            RowState::Done => "done",
            RowState::Failed => "failed",
            RowState::Rejected => "rejected",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether the row needs no more work in this run.
    pub fn is_final(self) -> bool {
        matches!(self, RowState::Done | RowState::Failed | RowState::Rejected)
    }
}

/// A row as first recorded from the input.
#[derive(Debug, Clone)]
pub struct NewRow {
    pub row_number: u64,
    pub line: u64,
    pub site_customer_identifier: Option<String>,
    pub site_order_identifier: Option<String>,
    /// `Some(reason)` for a row that failed validation.
    pub rejection: Option<(String, String)>,
}

/// A row's stored progress.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredRow {
    pub row_number: u64,
    pub line: u64,
    pub site_customer_identifier: Option<String>,
    pub site_order_identifier: Option<String>,
    pub pnm_order_identifier: Option<String>,
    pub pnm_customer_identifier: Option<String>,
    pub state: String,
    pub attempts: u32,
    pub last_error_code: Option<String>,
    pub last_error: Option<String>,
    pub embedded_js_url: Option<String>,
    pub embedded_js_url_expires_at: Option<String>,
    pub secure_smart_token: Option<String>,
    pub secure_smart_link: Option<String>,
}

const COLUMNS: &str = "row_number, line, site_customer_identifier, site_order_identifier, \
     pnm_order_identifier, pnm_customer_identifier, state, attempts, last_error_code, last_error, \
     embedded_js_url, embedded_js_url_expires_at, secure_smart_token, secure_smart_link";

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredRow> {
    Ok(StoredRow {
        row_number: r.get(0)?,
        line: r.get(1)?,
        site_customer_identifier: r.get(2)?,
        site_order_identifier: r.get(3)?,
        pnm_order_identifier: r.get(4)?,
        pnm_customer_identifier: r.get(5)?,
        state: r.get(6)?,
        attempts: r.get(7)?,
        last_error_code: r.get(8)?,
        last_error: r.get(9)?,
        embedded_js_url: r.get(10)?,
        embedded_js_url_expires_at: r.get(11)?,
        secure_smart_token: r.get(12)?,
        secure_smart_link: r.get(13)?,
    })
}

/// The error recorded for a row whose `site_order_identifier` repeats an
/// earlier row's.
pub const DUPLICATE_ORDER_ID: &str = "duplicate_site_order_identifier";

fn insert_one(tx: &Transaction<'_>, run_id: i64, row: &NewRow) -> rusqlite::Result<()> {
    let (state, code, error) = match &row.rejection {
        Some((code, error)) => (
            RowState::Rejected,
            Some(code.as_str()),
            Some(error.as_str()),
        ),
        None => (RowState::Pending, None, None),
    };
    let inserted = tx.execute(
        "INSERT OR IGNORE INTO rows (run_id, row_number, line, site_customer_identifier,
             site_order_identifier, state, last_error_code, last_error)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            run_id,
            row.row_number,
            row.line,
            row.site_customer_identifier,
            row.site_order_identifier,
            state.as_str(),
            code,
            error
        ],
    )?;
    if inserted == 1 {
        return Ok(());
    }
    let exists: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM rows WHERE run_id = ?1 AND row_number = ?2)",
        params![run_id, row.row_number],
        |r| r.get(0),
    )?;
    if exists {
        // Recorded by an earlier, interrupted registration.
        return Ok(());
    }
    let first: u64 = tx.query_row(
        "SELECT row_number FROM rows WHERE run_id = ?1 AND site_order_identifier = ?2",
        params![run_id, row.site_order_identifier],
        |r| r.get(0),
    )?;
    tx.execute(
        "INSERT INTO rows (run_id, row_number, line, site_customer_identifier, state,
             last_error_code, last_error)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            run_id,
            row.row_number,
            row.line,
            row.site_customer_identifier,
            RowState::Rejected.as_str(),
            DUPLICATE_ORDER_ID,
            format!(
                "site_order_identifier: `{}` is already used by row {first}; each order needs its own",
                row.site_order_identifier.as_deref().unwrap_or_default()
            ),
        ],
    )?;
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
        for row in rows {
            insert_one(&tx, run_id, row).map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    /// Calls `f` for each row of the run in `states`, ordered by customer
    /// then row number when `by_customer`, else by row number.
    pub fn for_each_row(
        &self,
        run_id: i64,
        states: &[RowState],
        by_customer: bool,
        mut f: impl FnMut(StoredRow) -> bool,
    ) -> Result<(), StoreError> {
        let list = states
            .iter()
            .map(|s| format!("'{}'", s.as_str()))
            .collect::<Vec<_>>()
            .join(",");
        let order = if by_customer {
            "site_customer_identifier, row_number"
        } else {
            "row_number"
        };
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT {COLUMNS} FROM rows WHERE run_id = ?1 AND state IN ({list}) ORDER BY {order}"
            ))
            .map_err(|e| self.err(e))?;
        let mut rows = stmt.query(params![run_id]).map_err(|e| self.err(e))?;
        while let Some(r) = rows.next().map_err(|e| self.err(e))? {
            let row = from_row(r).map_err(|e| self.err(e))?;
            if !f(row) {
                break;
            }
        }
        Ok(())
    }

    /// Every row of the run, by row number.
    pub fn all_rows(
        &self,
        run_id: i64,
        f: impl FnMut(StoredRow) -> bool,
    ) -> Result<(), StoreError> {
        self.for_each_row(run_id, &RowState::ALL, false, f)
    }

    /// Puts failed rows (only those with `error_code`, if given) back in the
    /// queue at the stage they failed in. A row with no order yet goes to
    /// `creating`, so it is looked up before it is created again: its last
    /// attempt may have reached the provider. Returns how many.
    pub fn requeue_failed(&self, run_id: i64, error_code: Option<&str>) -> Result<u64, StoreError> {
        self.conn
            .execute(
                "UPDATE rows SET attempts = 0, state = CASE
                     WHEN pnm_order_identifier IS NULL THEN ?3
                     WHEN embedded_js_url IS NULL THEN ?4
                     ELSE ?5 END
                 WHERE run_id = ?1 AND state = ?6 AND (?2 IS NULL OR last_error_code = ?2)",
                params![
                    run_id,
                    error_code,
                    RowState::Creating.as_str(),
                    RowState::Created.as_str(),
                    RowState::UrlsRefreshed.as_str(),
                    RowState::Failed.as_str()
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
