//! One run per state database: an advisory lock on `<db>.lock` holding the
//! owner's pid. The OS releases it when the process dies, so a lock left by
//! a killed run is simply taken over.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// Another live process holds the database.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{db} is in use by another orderbatch process (pid {pid}); wait for it to finish, or stop it (it can be resumed)", db = db.display())]
    Busy { db: PathBuf, pid: String },
    #[error("cannot lock {path}", path = path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Held for as long as the run goes on.
#[derive(Debug)]
pub struct DbLock {
    _file: File,
}

/// Locks `db` for this process.
pub fn lock(db: &Path) -> Result<DbLock, LockError> {
    let mut path = db.as_os_str().to_owned();
    path.push(".lock");
    let path = PathBuf::from(path);
    let io = |source| LockError::Io {
        path: path.clone(),
        source,
    };
    crate::files::create_private(&path).map_err(io)?;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            return Err(LockError::Busy {
                db: db.to_path_buf(),
                pid: if pid.is_empty() {
                    "unknown".into()
                } else {
                    pid.into()
                },
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
    }
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    write!(file, "{}", std::process::id()).map_err(io)?;
    file.flush().map_err(io)?;
    Ok(DbLock { _file: file })
}
