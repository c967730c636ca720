//! The `timeline` table: a run's time buckets (see `crate::timeline`).

use rusqlite::params;

use super::{RowState, Store, StoreError};
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
    /// When (unix ms) an earlier invocation of `run_id` was last seen: the
    /// later of its start and the end of the run's newest timeline bucket.
    /// No request of it left much after that (the timeline is stored about
    /// once a second while a run sends).
    pub fn last_seen_ms(&self, run_id: i64) -> Result<Option<i64>, StoreError> {
        self.conn
            .query_row(
                "SELECT MAX(COALESCE((SELECT invoked_ms FROM runs WHERE id = ?1), 0),
                            COALESCE((SELECT MAX(start_ms + width_ms) FROM timeline
                                      WHERE run_id = ?1), 0))",
                params![run_id],
                |r| r.get::<_, i64>(0),
            )
            .map(|ms| (ms > 0).then_some(ms))
            .map_err(|e| self.err(e))
    }

    /// Records that an invocation of `run_id` starts now, before it sends
    /// anything.
    pub fn record_invocation(&self, run_id: i64) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE runs SET invoked_ms = CAST(unixepoch('subsec') * 1000 AS INTEGER)
                 WHERE id = ?1",
                params![run_id],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

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

/// The final states of rows in error.
pub(super) const ERROR_STATES: [RowState; 3] =
    [RowState::Failed, RowState::Rejected, RowState::Unknown];

/// Rows of run `?1` in `state` by error code: code, count. (A state's name
/// is a fixed word, spelt out for the index to be used.)
pub(super) fn error_counts(state: RowState) -> String {
    format!(
        "SELECT last_error_code, COUNT(*) FROM rows
         WHERE run_id = ?1 AND state = '{}' AND last_error_code IS NOT NULL
         GROUP BY last_error_code",
        state.as_str()
    )
}

/// The first `?3` rows of run `?1` in `state` with error code `?2`.
pub(super) fn error_firsts(state: RowState) -> String {
    format!(
        "SELECT row_number FROM rows
         WHERE run_id = ?1 AND state = '{}' AND last_error_code = ?2
         ORDER BY row_number LIMIT ?3",
        state.as_str()
    )
}

impl Store {
    /// Failed, rejected and unknown rows of `run_id` by error code, most
    /// first, each with its first `first` row numbers. Reads only rows in
    /// those states (the indexes of migration 08, which a query uses when it
    /// names one state), and of each code only its first rows.
    pub fn error_rows(&self, run_id: i64, first: usize) -> Result<Vec<ErrorRows>, StoreError> {
        let err = |e| self.err(e);
        let mut out = Vec::new();
        for state in ERROR_STATES {
            let mut counts = self.conn.prepare(&error_counts(state)).map_err(err)?;
            let mut firsts = self.conn.prepare(&error_firsts(state)).map_err(err)?;
            let codes: Vec<(String, u64)> = counts
                .query_map(params![run_id], |r| Ok((r.get(0)?, r.get(1)?)))
                .and_then(Iterator::collect)
                .map_err(err)?;
            for (code, count) in codes {
                let first = firsts
                    .query_map(params![run_id, code, first as i64], |r| r.get(0))
                    .and_then(Iterator::collect)
                    .map_err(err)?;
                out.push(ErrorRows {
                    code,
                    state: state.as_str().to_string(),
                    count,
                    first,
                });
            }
        }
        out.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then_with(|| a.code.cmp(&b.code))
                .then_with(|| a.state.cmp(&b.state))
        });
        Ok(out)
    }
}
