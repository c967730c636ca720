//! What the end of a run, `status` and the reports read and settle: rows
//! naming one order share its last values, errors by code, the next
//! deferred row.

use rusqlite::params;

use crate::store::{Store, StoreError};

use super::state::RowState;

/// [`Store::error_summary`]'s query: `?1` the run, `?2` how many codes.
pub(crate) const ERROR_SUMMARY: &str = "SELECT code, SUM(n), MIN(example) FROM (
         SELECT last_error_code AS code, COUNT(*) AS n, MIN(last_error) AS example
         FROM rows WHERE run_id = ?1 AND state = 'failed' AND last_error_code IS NOT NULL
         GROUP BY last_error_code
         UNION ALL
         SELECT last_error_code, COUNT(*), MIN(last_error)
         FROM rows WHERE run_id = ?1 AND state = 'rejected' AND last_error_code IS NOT NULL
         GROUP BY last_error_code)
     GROUP BY code ORDER BY SUM(n) DESC, code LIMIT ?2";

impl Store {
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

    /// The most common error codes of failed and rejected rows: code,
    /// count, and one example message, most frequent first. Reads only rows
    /// in those states (the indexes of migration 08, which a query uses
    /// when it names one state).
    pub fn error_summary(
        &self,
        run_id: i64,
        limit: usize,
    ) -> Result<Vec<(String, u64, String)>, StoreError> {
        let mut stmt = self.conn.prepare(ERROR_SUMMARY).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![run_id, limit as i64], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get::<_, Option<String>>(2)?.unwrap_or_default(),
                ))
            })
            .and_then(Iterator::collect)
            .map_err(|e| self.err(e));
        rows
    }

    /// The earliest time (unix seconds) a deferred row of the run may go.
    pub fn next_deferred(&self, run_id: i64) -> Result<Option<i64>, StoreError> {
        // Most runs have none: no need to read every row to find out.
        let deferred = self
            .state_counts(run_id)?
            .iter()
            .any(|(s, n)| *s == RowState::Deferred && *n > 0);
        if !deferred {
            return Ok(None);
        }
        self.conn
            .query_row(
                "SELECT MIN(next_attempt_at) FROM rows WHERE run_id = ?1 AND state = ?2",
                params![run_id, RowState::Deferred.as_str()],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))
    }
}
