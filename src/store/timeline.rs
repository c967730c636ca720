//! The `timeline` table: a run's time buckets (see `crate::timeline`).

use rusqlite::params;

use super::{Store, StoreError};
use crate::timeline::{Bucket, Changed};

/// Stores buckets that changed (replacing an invocation's buckets when they
/// were merged), in the writer's transaction.
pub(crate) fn write(
    tx: &rusqlite::Transaction<'_>,
    run_id: i64,
    changed: &Changed,
) -> rusqlite::Result<()> {
    if let Some(from) = changed.replace_from_ms {
        tx.prepare_cached("DELETE FROM timeline WHERE run_id = ?1 AND start_ms >= ?2")?
            .execute(params![run_id, from])?;
    }
    let mut insert = tx.prepare_cached(
        "INSERT INTO timeline (run_id, start_ms, width_ms, bucket) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (run_id, start_ms) DO UPDATE SET width_ms = excluded.width_ms,
             bucket = excluded.bucket",
    )?;
    for bucket in &changed.buckets {
        let json = serde_json::to_string(bucket)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        insert.execute(params![run_id, bucket.start_ms, bucket.width_ms, json])?;
    }
    Ok(())
}

impl Store {
    /// The timeline of `run_id`, oldest bucket first (empty for runs of an
    /// older version).
    pub fn timeline(&self, run_id: i64) -> Result<Vec<Bucket>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT bucket FROM timeline WHERE run_id = ?1 ORDER BY start_ms")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![run_id], |r| r.get::<_, String>(0))
            .map_err(|e| self.err(e))?;
        let mut buckets = Vec::new();
        for json in rows {
            let json = json.map_err(|e| self.err(e))?;
            let bucket: Bucket =
                serde_json::from_str(&json).map_err(|source| StoreError::Unreadable {
                    path: self.path().to_path_buf(),
                    what: "timeline bucket",
                    source,
                })?;
            buckets.push(bucket);
        }
        Ok(buckets)
    }
}

/// Rows of one error code in one final state: how many, and the first ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorRows {
    pub code: String,
    pub state: String,
    pub count: u64,
    /// The first row numbers, in order.
    pub first: Vec<u64>,
}

impl Store {
    /// Failed, rejected and unknown rows of `run_id` by error code, most
    /// first, each with its first `first` row numbers.
    pub fn error_rows(&self, run_id: i64, first: usize) -> Result<Vec<ErrorRows>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT last_error_code, state, row_number
                 FROM (SELECT last_error_code, state, row_number,
                              ROW_NUMBER() OVER (PARTITION BY last_error_code, state
                                                 ORDER BY row_number) AS k
                       FROM rows
                       WHERE run_id = ?1 AND state IN ('failed', 'rejected', 'unknown')
                         AND last_error_code IS NOT NULL)
                 WHERE k <= ?2
                 ORDER BY last_error_code, state, row_number",
            )
            .map_err(|e| self.err(e))?;
        let mut counts = self
            .conn
            .prepare(
                "SELECT last_error_code, state, COUNT(*) FROM rows
                 WHERE run_id = ?1 AND state IN ('failed', 'rejected', 'unknown')
                   AND last_error_code IS NOT NULL
                 GROUP BY last_error_code, state",
            )
            .map_err(|e| self.err(e))?;
        let mut out: Vec<ErrorRows> = counts
            .query_map(params![run_id], |r| {
                Ok(ErrorRows {
                    code: r.get(0)?,
                    state: r.get(1)?,
                    count: r.get(2)?,
                    first: Vec::new(),
                })
            })
            .and_then(Iterator::collect)
            .map_err(|e| self.err(e))?;
        let firsts: Vec<(String, String, u64)> = stmt
            .query_map(params![run_id, first as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .and_then(Iterator::collect)
            .map_err(|e| self.err(e))?;
        for (code, state, row) in firsts {
            if let Some(e) = out.iter_mut().find(|e| e.code == code && e.state == state) {
                e.first.push(row);
            }
        }
        out.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.code.cmp(&b.code)));
        Ok(out)
    }
}
