//! One run per state database: an advisory lock (`flock`) on the database
//! file itself, so that every name that reaches it — the path as given, a
//! symbolic link, a hard link — meets the same lock. The OS releases it when
//! the process dies, so a lock left by a killed run is simply taken over.
//!
//! The lock's file descriptor must stay open until every SQLite connection
//! of the process is closed: closing any descriptor of a file drops the
//! POSIX (`fcntl`) locks the process holds on it, and those are SQLite's.
//! (`flock` and `fcntl` locks are independent of each other on Linux.)
//!
//! Who holds it is read from `/proc/locks` (by the file's device and inode);
//! where that is missing, from `<db>.lock` beside the database's real path,
//! where the holder writes its pid (information only: it is not the lock).

use std::fs::File;
use std::io::Write;
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

/// Held for as long as the run goes on; drop it only after every SQLite
/// connection of the process to the database is closed (or keep it until
/// the process exits: [`DbLock::hold_until_exit`]).
#[derive(Debug)]
pub struct DbLock {
    file: File,
    /// The lock created the (empty) database file.
    created: bool,
}

impl DbLock {
    /// Keeps the lock until the process exits: its descriptor is never
    /// closed, so it outlives every SQLite connection of the process (a
    /// writer thread or blocking task still closing its connection on an
    /// error path included), and no other run can start while this process
    /// might still write.
    pub fn hold_until_exit(self) -> HeldUntilExit {
        std::mem::forget(self.file);
        HeldUntilExit {
            created: self.created,
        }
    }
}

/// What [`DbLock::hold_until_exit`] leaves to its caller.
#[derive(Debug)]
pub struct HeldUntilExit {
    created: bool,
}

impl HeldUntilExit {
    /// Removes the database file this lock created if nothing was written
    /// to it (a run refused before it started leaves no database behind).
    pub fn remove_if_unused(&self, db: &Path) {
        if self.created && std::fs::metadata(db).is_ok_and(|m| m.len() == 0) {
            let _ = std::fs::remove_file(db);
        }
    }
}

/// Locks `db` for this process, creating it (empty, mode 0600) if it does
/// not exist yet.
pub fn lock(db: &Path) -> Result<DbLock, LockError> {
    let io = |source| LockError::Io {
        path: db.to_path_buf(),
        source,
    };
    let created = !db.exists();
    crate::files::create_private(db).map_err(io)?;
    // Read-only is enough for flock, and cannot change the database.
    let file = File::open(db).map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(LockError::Busy {
                db: db.to_path_buf(),
                pid: holder(&file, db).unwrap_or_else(|| "unknown".into()),
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
    }
    // For systems without /proc/locks: best effort, never an error.
    if let Some(path) = pid_file(db) {
        if crate::files::create_private(&path).is_ok() {
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&path)
            {
                let _ = write!(f, "{}", std::process::id());
            }
        }
    }
    Ok(DbLock { file, created })
}

/// `<db>.lock` beside the file the path leads to (the same for every
/// symbolic link to it).
fn pid_file(db: &Path) -> Option<PathBuf> {
    let mut path = std::fs::canonicalize(db).ok()?.into_os_string();
    path.push(".lock");
    Some(PathBuf::from(path))
}

/// The pid of the process holding `file`'s lock.
fn holder(file: &File, db: &Path) -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let meta = file.metadata().ok()?;
        if let Some(pid) = std::fs::read_to_string("/proc/locks")
            .ok()
            .and_then(|locks| flock_holder(&locks, meta.dev(), meta.ino()))
        {
            return Some(pid);
        }
    }
    #[cfg(not(unix))]
    let _ = file;
    let pid = std::fs::read_to_string(pid_file(db)?).ok()?;
    let pid = pid.trim();
    (!pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())).then(|| pid.to_string())
}

/// The pid of the `flock` holder of the file `dev`:`ino` in the text of
/// `/proc/locks` (lines like `1: FLOCK  ADVISORY  WRITE 4242 fd:01:1315383 0 EOF`,
/// the device as hexadecimal major:minor). Where no line has that device
/// (an overlay filesystem shows the underlying one), the one flock holder
/// of that inode, if only one.
fn flock_holder(locks: &str, dev: u64, ino: u64) -> Option<String> {
    let (major, minor) = split_dev(dev);
    let id = format!("{major:02x}:{minor:02x}:{ino}");
    let ino = format!(":{ino}");
    // Waiters are shown as `1: -> FLOCK ...`: not holders.
    let holders: Vec<(&str, &str)> = locks
        .lines()
        .filter_map(
            |line| match line.split_whitespace().collect::<Vec<_>>().as_slice() {
                [_, "FLOCK", _, _, pid, file, ..] => Some((*pid, *file)),
                _ => None,
            },
        )
        .collect();
    if let Some((pid, _)) = holders.iter().find(|(_, file)| *file == id) {
        return Some(pid.to_string());
    }
    match holders
        .iter()
        .filter(|(_, file)| file.ends_with(&ino))
        .collect::<Vec<_>>()
        .as_slice()
    {
        [(pid, _)] => Some(pid.to_string()),
        _ => None,
    }
}

/// Linux's `major` and `minor` of a device number (glibc's encoding).
fn split_dev(dev: u64) -> (u64, u64) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    (major, minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flock_holder_is_found_by_device_and_inode() {
        let locks = "\
1: POSIX  ADVISORY  READ 77 fd:01:1315383 1073741826 1073742335
2: FLOCK  ADVISORY  WRITE 4242 fd:01:1315383 0 EOF
2: -> FLOCK  ADVISORY  WRITE 99 fd:01:1315383 0 EOF
3: FLOCK  ADVISORY  WRITE 5151 fd:01:7 0 EOF
";
        let dev = (0xfd << 8) | 0x01;
        assert_eq!(flock_holder(locks, dev, 1315383).as_deref(), Some("4242"));
        assert_eq!(flock_holder(locks, dev, 7).as_deref(), Some("5151"));
        assert_eq!(flock_holder(locks, dev, 8), None);
        // Another device number (an overlay): the inode's only holder.
        assert_eq!(flock_holder(locks, 0x801, 7).as_deref(), Some("5151"));
        assert_eq!(split_dev(0x801), (8, 1));
        assert_eq!(split_dev(0x10303), (259, 3));
    }
}

/// One customer's requests at a time across every process that shares a
/// state database (a run, a `refresh`, `serve`): an advisory lock (`flock`)
/// per customer, on one of [`CUSTOMER_BUCKETS`] files in `<db>.customers/`
/// beside the database's real path. The kernel drops a lock when its
/// holder closes it or dies, so nothing is left to expire; two customers
/// that share a bucket only wait for each other now and then.
#[derive(Debug, Clone)]
pub struct CustomerLocks {
    dir: PathBuf,
}

/// How many lock files customers are spread over.
pub const CUSTOMER_BUCKETS: u16 = 1024;

/// A customer held for this process until dropped.
#[derive(Debug)]
pub struct CustomerLease {
    _file: File,
}

impl CustomerLocks {
    /// The customer locks of `db` (the directory is made on first use).
    pub fn of(db: &Path) -> CustomerLocks {
        let real = std::fs::canonicalize(db).unwrap_or_else(|_| db.to_path_buf());
        let mut dir = real.into_os_string();
        dir.push(".customers");
        CustomerLocks {
            dir: PathBuf::from(dir),
        }
    }

    /// Takes `customer` if no other holder has it (another process, or
    /// another lease of this one); `None` when it is taken. One `open` and
    /// one `flock` (the folder is made when the first open finds it missing).
    pub fn try_acquire(&self, customer: &str) -> std::io::Result<Option<CustomerLease>> {
        use sha2::Digest;
        use std::os::unix::fs::OpenOptionsExt;
        let digest = sha2::Sha256::digest(customer.as_bytes());
        let bucket = u16::from_be_bytes([digest[0], digest[1]]) % CUSTOMER_BUCKETS;
        let path = self.dir.join(format!("{bucket:04}"));
        // Each lease opens its own description: two leases conflict even
        // within one process.
        let open = || {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&path)
        };
        let file = match open() {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut builder = std::fs::DirBuilder::new();
                std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
                match builder.create(&self.dir) {
                    Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
                    _ => open()?,
                }
            }
            other => other?,
        };
        match file.try_lock() {
            Ok(()) => Ok(Some(CustomerLease { _file: file })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }

    /// Waits for `customer` until `deadline` (`None`: for as long as it
    /// takes; callers race it with their own stop), polling every 2 ms;
    /// `Ok(None)` once the deadline passed.
    pub async fn acquire(
        &self,
        customer: &str,
        deadline: Option<tokio::time::Instant>,
    ) -> std::io::Result<Option<CustomerLease>> {
        loop {
            if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                return Ok(None);
            }
            if let Some(lease) = self.try_acquire(customer)? {
                return Ok(Some(lease));
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }
}

#[cfg(test)]
mod customer_tests {
    use super::*;

    #[test]
    fn a_customer_is_held_by_one_lease_at_a_time_whatever_name_reaches_the_db() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("s.db");
        std::fs::write(&db, b"").unwrap();
        let alias = dir.path().join("alias.db");
        std::os::unix::fs::symlink(&db, &alias).unwrap();
        let (a, b) = (CustomerLocks::of(&db), CustomerLocks::of(&alias));
        let held = a.try_acquire("C-1").unwrap().expect("free");
        assert!(b.try_acquire("C-1").unwrap().is_none(), "held twice");
        assert!(a.try_acquire("C-1").unwrap().is_none(), "held twice");
        drop(held);
        assert!(b.try_acquire("C-1").unwrap().is_some(), "released");
    }
}
