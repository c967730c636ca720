//! The `row_states` table (migration 08): how many rows of each run are in
//! each state, kept by every write that adds a row or changes its state, in
//! that write's own transaction — the run's writer, registration and
//! `retry`'s requeue — so that `status`, the report and the end of a run
//! read a dozen numbers instead of counting a run's rows.
//!
//! A write that changes a row's state reads the state it leaves first
//! ([`state_of`], a primary-key lookup of a page the update is about to
//! touch anyway) and tallies the move in [`Moves`]; the tally is added to
//! the table once per transaction. (A trigger on `rows` would do the same
//! for every writer, but costs each state change about three times what
//! the lookup does.)

use rusqlite::{params, OptionalExtension};

use super::rows::RowState;
use super::{Store, StoreError};

/// Changes to a run's row counts, per state, not yet written.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Moves([i64; RowState::ALL.len()]);

impl Moves {
    /// `n` rows more (or fewer) in `state`.
    pub(crate) fn add(&mut self, state: RowState, n: i64) {
        self.0[state.index()] += n;
    }

    /// `n` rows went from `from` to `to`.
    pub(crate) fn moved(&mut self, from: RowState, to: RowState, n: i64) {
        self.add(from, -n);
        self.add(to, n);
    }

    /// Adds the changes to `row_states` in the transaction `tx` and clears
    /// them.
    pub(crate) fn write(&mut self, tx: &rusqlite::Connection, run_id: i64) -> rusqlite::Result<()> {
        for (state, n) in RowState::ALL.into_iter().zip(self.0) {
            if n != 0 {
                tx.prepare_cached(
                    "INSERT INTO row_states (run_id, state, count) VALUES (?1, ?2, ?3)
                     ON CONFLICT (run_id, state) DO UPDATE SET count = count + excluded.count",
                )?
                .execute(params![run_id, state.as_str(), n])?;
            }
        }
        *self = Moves::default();
        Ok(())
    }
}

/// The state of row `row` of `run_id`, if there is such a row.
pub(crate) fn state_of(
    tx: &rusqlite::Connection,
    run_id: i64,
    row: u64,
) -> rusqlite::Result<Option<RowState>> {
    tx.prepare_cached("SELECT state FROM rows WHERE run_id = ?1 AND row_number = ?2")?
        .query_row(params![run_id, row], |r| read_state(r, 0))
        .optional()
}

/// Column `i` of `r`, a row state.
pub(crate) fn read_state(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<RowState> {
    let text = r.get_ref(i)?.as_str()?;
    RowState::parse(text).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            i,
            rusqlite::types::Type::Text,
            format!("unknown row state `{text}`").into(),
        )
    })
}

impl Store {
    /// Row counts per state for the run (states with rows only), in
    /// [`RowState::ALL`]'s order.
    pub fn state_counts(&self, run_id: i64) -> Result<Vec<(RowState, u64)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT state, count FROM row_states WHERE run_id = ?1 AND count > 0")
            .map_err(|e| self.err(e))?;
        let pairs: Vec<(String, u64)> = stmt
            .query_map(params![run_id], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(Iterator::collect)
            .map_err(|e| self.err(e))?;
        let mut counts: Vec<(RowState, u64)> = pairs
            .into_iter()
            .filter_map(|(s, n)| RowState::parse(&s).map(|s| (s, n)))
            .collect();
        counts.sort_by_key(|(s, _)| s.index());
        Ok(counts)
    }

    /// Rows of all runs.
    pub fn row_count(&self) -> Result<u64, StoreError> {
        self.conn
            .query_row("SELECT COALESCE(SUM(count), 0) FROM row_states", [], |r| {
                r.get(0)
            })
            .map_err(|e| self.err(e))
    }
}

/// Asserts that `row_states` says what counting the rows says, for every
/// run of the database (a state no row is in may keep a line at 0).
#[cfg(test)]
pub(crate) fn assert_exact(store: &Store) {
    let read = |sql: &str| -> Vec<(i64, String, i64)> {
        store
            .conn
            .prepare(sql)
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    };
    assert_eq!(
        read("SELECT run_id, state, count FROM row_states WHERE count != 0 ORDER BY 1, 2"),
        read("SELECT run_id, state, COUNT(*) FROM rows GROUP BY 1, 2 ORDER BY 1, 2"),
        "row_states (left) against the rows (right)"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::rows::ERROR_SUMMARY;
    use crate::store::timeline::{error_counts, error_firsts, ERROR_STATES};

    #[test]
    fn row_states_index_their_position_in_all() {
        for (i, state) in RowState::ALL.into_iter().enumerate() {
            assert_eq!(state.index(), i, "{state:?}");
        }
    }

    /// What `status` and the report read of a run's rows goes by the
    /// counts table or the indexes of rows in error, never through every
    /// row of the run: a full scan took 0.2-0.4 s per query on a
    /// 1,000,000-row run. (Easy to lose: SQLite uses a partial index only
    /// for a query that names one of its states as a literal.)
    #[test]
    fn status_and_report_queries_read_no_run_from_end_to_end() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).unwrap();
        let plan = |sql: &str| -> String {
            let mut stmt = store
                .conn
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .unwrap();
            let nulls = vec![rusqlite::types::Null; stmt.parameter_count()];
            stmt.query_map(rusqlite::params_from_iter(nulls), |r| r.get::<_, String>(3))
                .unwrap()
                .collect::<rusqlite::Result<Vec<_>>>()
                .unwrap()
                .join("\n")
        };
        let mut queries = vec![ERROR_SUMMARY.to_string()];
        for state in ERROR_STATES {
            queries.push(error_counts(state));
            queries.push(error_firsts(state));
        }
        for sql in &queries {
            let plan = plan(sql);
            assert!(
                plan.contains("rows_by_error")
                    && !plan.contains("SCAN rows")
                    && !plan.contains("PRIMARY KEY"),
                "{sql}\n{plan}"
            );
        }
    }
}
