//! The SQLite state database: runs, row progress, attempts, request counts.
//!
//! WAL mode: every commit survives the process being killed at any
//! instant; a transaction holding an intent (a request about to leave) is
//! also synced to disk before the request leaves (`synchronous=FULL`), so it
//! survives a power loss too; outcomes alone are written at
//! `synchronous=NORMAL` in batched transactions by one writer thread (see
//! [`writer`]): one lost to a power cut is reconciled from its intent.

mod counts;
pub mod rows;
pub mod runs;
pub mod served;
pub mod timeline;
pub mod writer;

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use include_dir::{include_dir, Dir};
use rusqlite::Connection;
use rusqlite_migration::Migrations;

pub use rows::{Requeue, RowState, StoredRow};
pub use runs::RunRecord;

static MIGRATIONS_DIR: Dir = include_dir!("$CARGO_MANIFEST_DIR/migrations");
static MIGRATIONS: LazyLock<Migrations<'static>> = LazyLock::new(|| {
    Migrations::from_directory(&MIGRATIONS_DIR).expect("migrations directory is well formed")
});

/// SQLite's `application_id` of an orderbatch state database ("OBAT").
pub const APPLICATION_ID: i32 = 0x4F42_4154;

/// The schema version this build writes.
pub fn schema_version() -> usize {
    MIGRATIONS_DIR.dirs().count()
}

/// A state database problem.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database {path}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("state database {path} was written by a newer orderbatch (schema {found}, this build knows up to {known}); upgrade orderbatch or use another --db")]
    TooNew {
        path: PathBuf,
        found: usize,
        known: usize,
    },
    #[error("state database {path}: migration failed")]
    Migration {
        path: PathBuf,
        source: rusqlite_migration::Error,
    },
    #[error("state database {path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no such state database {path} (give the --db of a run)")]
    Missing { path: PathBuf },
    #[error("state database {path} holds no run {run}")]
    NoRun { path: PathBuf, run: i64 },
    #[error("state database {path}: unreadable {what}")]
    Unreadable {
        path: PathBuf,
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("{path} is not an orderbatch state database ({why}); it was left as it is. Give the --db of an orderbatch run, or a new file name", path = path.display())]
    NotOurs { path: PathBuf, why: String },
}

/// A connection to the state database.
pub struct Store {
    pub(crate) conn: Connection,
    path: PathBuf,
}

impl Store {
    /// Opens (creating if needed, mode 0600) and migrates the database.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        crate::files::create_private(path).map_err(|source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut store = Self::connect(path)?;
        store.schema_found()?;
        MIGRATIONS
            .to_latest(&mut store.conn)
            .map_err(|source| StoreError::Migration {
                path: path.to_path_buf(),
                source,
            })?;
        let id: i32 = store
            .conn
            .pragma_query_value(None, "application_id", |r| r.get(0))
            .map_err(|e| store.err(e))?;
        if id != APPLICATION_ID {
            store
                .conn
                .pragma_update(None, "application_id", APPLICATION_ID)
                .map_err(|e| store.err(e))?;
        }
        Ok(store)
    }

    /// Opens an existing database to read it (e.g. while another process
    /// runs); refuses a missing or empty one, or one from a newer schema.
    pub fn open_existing(path: &Path) -> Result<Self, StoreError> {
        // Empty: a run has just locked it (the lock creates the file) and
        // not yet opened it; migrating it here would race that run.
        if !std::fs::metadata(path).is_ok_and(|m| m.len() > 0) {
            return Err(StoreError::Missing {
                path: path.to_path_buf(),
            });
        }
        let store = Self::connect(path)?;
        if store.schema_found()? < schema_version() {
            drop(store);
            return Self::open(path);
        }
        Ok(store)
    }

    /// The schema version the database was written with; refuses one newer
    /// than this build knows.
    fn schema_found(&self) -> Result<usize, StoreError> {
        let found: usize = self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| self.err(e))?;
        let known = schema_version();
        if found > known {
            return Err(StoreError::TooNew {
                path: self.path.clone(),
                found,
                known,
            });
        }
        Ok(found)
    }

    /// A second connection to an already migrated database, for reading
    /// while the writer thread writes.
    pub fn open_reader(path: &Path) -> Result<Self, StoreError> {
        Self::connect(path)
    }

    fn connect(path: &Path) -> Result<Self, StoreError> {
        let mut conn = Connection::open(path).map_err(|source| StoreError::Sqlite {
            path: path.to_path_buf(),
            source,
        })?;
        // Every transaction of the store writes, and many read a row before
        // writing it: one that began as a read cannot wait for another
        // connection's write lock (a run's writer beside an inbox's next
        // registration) and fails at once with "database is locked". Taken
        // up front, the lock is waited for (busy_timeout).
        conn.set_transaction_behavior(rusqlite::TransactionBehavior::Immediate);
        let store = Store {
            conn,
            path: path.to_path_buf(),
        };
        // Before anything is written (the journal mode included).
        store.refuse_if_not_ours()?;
        store
            .conn
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = NORMAL;
                 PRAGMA busy_timeout = 10000;
                 PRAGMA foreign_keys = ON;",
            )
            .map_err(|e| store.err(e))?;
        Ok(store)
    }

    /// Refuses a file another application owns, leaving it byte for byte:
    /// ours carries [`APPLICATION_ID`]; a file without one is ours only when
    /// it is new (no tables) or an orderbatch database written before the
    /// id was set (a `runs` table and a schema version).
    fn refuse_if_not_ours(&self) -> Result<(), StoreError> {
        let not_ours = |why: String| StoreError::NotOurs {
            path: self.path.clone(),
            why,
        };
        let id: i32 = self
            .conn
            .pragma_query_value(None, "application_id", |r| r.get(0))
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _)
                    if f.code == rusqlite::ErrorCode::NotADatabase =>
                {
                    not_ours("not a SQLite database".into())
                }
                e => self.err(e),
            })?;
        if id == APPLICATION_ID {
            return Ok(());
        }
        if id != 0 {
            return Err(not_ours(format!("SQLite application_id {id:#x}")));
        }
        let (tables, runs): (i64, i64) = self
            .conn
            .query_row(
                "SELECT COUNT(*), COUNT(*) FILTER (WHERE name = 'runs') FROM sqlite_master
                 WHERE type = 'table'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(|e| self.err(e))?;
        let version: i64 = self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| self.err(e))?;
        if tables == 0 || (runs == 1 && version > 0) {
            Ok(())
        } else {
            Err(not_ours(format!(
                "it holds {tables} tables of another application"
            )))
        }
    }

    /// Wraps a SQLite error with the database path.
    pub(crate) fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// The database file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_a_new_database_and_reopens_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        drop(Store::open(&path).unwrap());
        let store = Store::open(&path).unwrap();
        let version: usize = store
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, schema_version());
    }

    #[test]
    fn a_database_of_schema_7_gets_its_row_counts_from_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let mut conn = Connection::open(&path).unwrap();
        MIGRATIONS.to_version(&mut conn, 7).unwrap();
        conn.execute_batch(
            "INSERT INTO runs (id, command, input_path, fingerprint, options, started_at)
             VALUES (1, 'run', 'a.csv', 'f1', '{}', 'x'), (2, 'refresh', 'b.csv', 'f2', '{}', 'x');
             INSERT INTO rows (run_id, row_number, line, state) VALUES
                 (1, 1, 2, 'done'), (1, 2, 3, 'done'), (1, 3, 4, 'failed'), (1, 4, 5, 'pending'),
                 (2, 1, 2, 'urls_refreshed'), (2, 2, 3, 'rejected');",
        )
        .unwrap();
        drop(conn);
        let store = Store::open(&path).unwrap();
        counts::assert_exact(&store);
        assert_eq!(
            store.state_counts(1).unwrap(),
            [
                (RowState::Pending, 1),
                (RowState::Done, 2),
                (RowState::Failed, 1)
            ]
        );
        assert_eq!(store.row_count().unwrap(), 6);
    }

    #[test]
    fn refuses_a_database_from_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let store = Store::open(&path).unwrap();
        store
            .conn
            .pragma_update(None, "user_version", schema_version() + 1)
            .unwrap();
        drop(store);
        let err = Store::open(&path).err().expect("must refuse");
        assert!(matches!(err, StoreError::TooNew { .. }), "{err}");
        assert!(err.to_string().contains("newer orderbatch"), "{err}");
    }
}

#[cfg(test)]
mod chunk_tests {
    use super::rows::NewRow;
    use super::*;

    #[test]
    fn for_each_row_reads_every_matching_row_across_chunks_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db")).unwrap();
        let run = store.create_run("run", "in.csv", "fp", "{}").unwrap();
        let rows: Vec<NewRow> = (1..=10_000u64)
            .map(|n| NewRow {
                row_number: n,
                line: n + 1,
                site_customer_identifier: (n % 7 != 0).then(|| format!("C{:03}", n % 300)),
                site_order_identifier: Some(format!("O{n}")),
                unique_order_id: true,
                pnm_order_identifier: None,
                pnm_customer_identifier: None,
                rejection: None,
                identity: None,
                input_offset: None,
                known_customer: false,
            })
            .collect();
        store.insert_rows(run, &rows).unwrap();

        let mut seen = Vec::new();
        store
            .for_each_row(run, &[RowState::Pending], false, |r| {
                seen.push(r.row_number);
                true
            })
            .unwrap();
        assert_eq!(seen, (1..=10_000).collect::<Vec<_>>());

        let mut grouped = Vec::new();
        store
            .for_each_row(run, &[RowState::Pending], true, |r| {
                grouped.push((r.site_customer_identifier, r.row_number));
                true
            })
            .unwrap();
        assert_eq!(grouped.len(), 10_000);
        let mut expected = grouped.clone();
        expected.sort();
        assert_eq!(
            grouped, expected,
            "no-customer rows first, then by customer and row"
        );
    }
}
