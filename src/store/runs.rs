//! Runs: the same command on the same file resumes the newest run of it
//! (`refresh --new-run` starts another).

use rusqlite::{params, OptionalExtension};

use super::{Store, StoreError};

/// The names runs are stored under, one per command.
pub mod commands {
    pub const RUN: &str = "run";
    pub const REFRESH: &str = "refresh";
    pub const CHANGE: &str = "change";
    pub const CE_RETRY_PAYMENTS: &str = "ce-retry-payments";
}

/// A run as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRecord {
    pub id: i64,
    pub command: String,
    pub input_path: String,
    pub fingerprint: String,
    /// The run's options as JSON (no secrets).
    pub options: String,
    pub total_rows: u64,
    /// All input rows have been recorded.
    pub registered: bool,
    pub started_at: String,
    pub finished_at: Option<String>,
}

const COLUMNS: &str =
    "id, command, input_path, fingerprint, options, total_rows, registered, started_at, finished_at";

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunRecord> {
    Ok(RunRecord {
        id: r.get(0)?,
        command: r.get(1)?,
        input_path: r.get(2)?,
        fingerprint: r.get(3)?,
        options: r.get(4)?,
        total_rows: r.get(5)?,
        registered: r.get(6)?,
        started_at: r.get(7)?,
        finished_at: r.get(8)?,
    })
}

/// Current time as RFC 3339 UTC, the format of every timestamp we store.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl Store {
    /// This database's key for content digests (see migration 05), made
    /// at first use.
    pub fn content_key(&self) -> Result<Vec<u8>, StoreError> {
        let found: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'content_key'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        if let Some(key) = found {
            return Ok(key);
        }
        let key: Vec<u8> = (0..32).map(|_| rand::random::<u8>()).collect();
        self.conn
            .execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('content_key', ?1)",
                params![key],
            )
            .map_err(|e| self.err(e))?;
        self.content_key()
    }

    /// Whether an earlier `run` registered `site_order_identifier`: `Some(true)`
    /// when its order is known to exist, `Some(false)` when only registered.
    pub fn known_order(&self, site_order_identifier: &str) -> Result<Option<bool>, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT MAX(r.pnm_order_identifier IS NOT NULL) FROM rows r JOIN runs u ON u.id = r.run_id
                 WHERE r.site_order_identifier = ?1 AND u.command = 'run' AND r.state != 'rejected'",
            )
            .and_then(|mut s| s.query_row(params![site_order_identifier], |r| r.get::<_, Option<bool>>(0)))
            .map_err(|e| self.err(e))
    }

    /// Of `digests`, how many match the content of a row of an earlier
    /// `run`, by run (oldest first).
    pub fn content_matches(&self, digests: &[Vec<u8>]) -> Result<Vec<(i64, u64)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT r.run_id FROM rows r JOIN runs u ON u.id = r.run_id
                 WHERE r.content = ?1 AND u.command = 'run' AND r.state != 'rejected' LIMIT 1",
            )
            .map_err(|e| self.err(e))?;
        let mut by_run = std::collections::BTreeMap::new();
        for digest in digests {
            let run: Option<i64> = stmt
                .query_row(params![digest], |r| r.get(0))
                .optional()
                .map_err(|e| self.err(e))?;
            if let Some(run) = run {
                *by_run.entry(run).or_insert(0) += 1;
            }
        }
        Ok(by_run.into_iter().collect())
    }

    /// The newest run of `command` on the input with `fingerprint`, if any.
    pub fn find_run(
        &self,
        command: &str,
        fingerprint: &str,
    ) -> Result<Option<RunRecord>, StoreError> {
        self.conn
            .query_row(
                &format!(
                    "SELECT {COLUMNS} FROM runs WHERE command = ?1 AND fingerprint = ?2
                     ORDER BY id DESC LIMIT 1"
                ),
                params![command, fingerprint],
                from_row,
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// The run with `id`.
    pub fn run(&self, id: i64) -> Result<Option<RunRecord>, StoreError> {
        self.conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM runs WHERE id = ?1"),
                params![id],
                from_row,
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// All runs, oldest first.
    pub fn runs(&self) -> Result<Vec<RunRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(&format!("SELECT {COLUMNS} FROM runs ORDER BY id"))
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], from_row)
            .and_then(Iterator::collect)
            .map_err(|e| self.err(e));
        rows
    }

    /// Records a new run and returns its id.
    pub fn create_run(
        &self,
        command: &str,
        input_path: &str,
        fingerprint: &str,
        options: &str,
    ) -> Result<i64, StoreError> {
        self.conn
            .execute(
                "INSERT INTO runs (command, input_path, fingerprint, options, started_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![command, input_path, fingerprint, options, now()],
            )
            .map_err(|e| self.err(e))?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Forgets run `run_id` if no request can have left for it: its
    /// registration never ended (nothing is sent before it does), or no row
    /// ever recorded an intent and nothing was counted, attempted or put on
    /// its timeline (a create, change or retry records its intent, synced,
    /// before it leaves; what else a run sends creates nothing). Returns
    /// whether it was forgotten; a run that may have sent stays.
    pub fn forget_unsent_run(&self, run_id: i64) -> Result<bool, StoreError> {
        let tx = self.conn.unchecked_transaction().map_err(|e| self.err(e))?;
        let unsent: bool = tx
            .query_row(
                "SELECT u.registered = 0 OR (
                     NOT EXISTS (SELECT 1 FROM rows WHERE run_id = u.id AND intent_at IS NOT NULL)
                     AND NOT EXISTS (SELECT 1 FROM requests WHERE run_id = u.id AND count > 0)
                     AND NOT EXISTS (SELECT 1 FROM attempts WHERE run_id = u.id)
                     AND NOT EXISTS (SELECT 1 FROM timeline WHERE run_id = u.id))
                 FROM runs u WHERE u.id = ?1 AND u.finished_at IS NULL",
                params![run_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?
            .unwrap_or(false);
        if !unsent {
            return Ok(false);
        }
        for table in [
            "rows",
            "row_states",
            "attempts",
            "requests",
            "timeline",
            "run_customers",
        ] {
            tx.execute(
                &format!("DELETE FROM {table} WHERE run_id = ?1"),
                params![run_id],
            )
            .map_err(|e| self.err(e))?;
        }
        tx.execute("DELETE FROM runs WHERE id = ?1", params![run_id])
            .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(true)
    }

    /// Records where the run's input now is (`orderbatch inbox` moved it
    /// into its archive): `retry` reads it there.
    pub fn set_input_path(&self, run_id: i64, path: &str) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE runs SET input_path = ?2 WHERE id = ?1",
                params![run_id, path],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// Marks every input row of the run as recorded.
    pub fn mark_registered(&self, run_id: i64, total_rows: u64) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE runs SET registered = 1, total_rows = ?2 WHERE id = ?1",
                params![run_id, total_rows],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// Marks the run finished now (or clears it when a resumed run starts).
    pub fn set_finished(&self, run_id: i64, finished: bool) -> Result<(), StoreError> {
        let at = finished.then(now);
        self.conn
            .execute(
                "UPDATE runs SET finished_at = ?2 WHERE id = ?1",
                params![run_id, at],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// Rewrites the database without the free space rows left as they grew
    /// stage by stage (done when a run finishes).
    pub fn vacuum(&self) -> Result<(), StoreError> {
        self.conn.execute_batch("VACUUM").map_err(|e| self.err(e))
    }

    /// Requests sent per endpoint for the run.
    pub fn request_counts(&self, run_id: i64) -> Result<Vec<(String, u64)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT endpoint, count FROM requests WHERE run_id = ?1 ORDER BY endpoint")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![run_id], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(Iterator::collect)
            .map_err(|e| self.err(e));
        rows
    }
}
