//! Files the tool writes are private to the user (mode 0600).

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

#[cfg(unix)]
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

fn options() -> OpenOptions {
    let mut options = OpenOptions::new();
    #[cfg(unix)]
    options.mode(0o600);
    options
}

/// Warns when an existing file can be read by group or others.
fn warn_if_wide(path: &Path) {
    #[cfg(unix)]
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                "{} has mode {mode:o}: others on this machine can read it; consider `chmod 600 {}`",
                path.display(),
                path.display()
            );
        }
    }
}

/// Makes sure `path` exists, creating it empty with mode 0600 if it does not.
pub fn create_private(path: &Path) -> io::Result<()> {
    if path.exists() {
        warn_if_wide(path);
        return Ok(());
    }
    options()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    Ok(())
}

/// A file written under a temporary name beside its target (same
/// directory, mode 0600) and renamed over the target once complete and
/// synced ([`Replacement::commit`]): a reader never sees half a file, and a
/// process killed mid-write leaves the old file as it was. Dropped without
/// `commit`, the temporary file is removed.
#[derive(Debug)]
pub struct Replacement {
    file: Option<File>,
    temp: PathBuf,
    target: PathBuf,
}

/// Starts replacing `path` (see [`Replacement`]). A symbolic link is kept:
/// the file it leads to is replaced.
pub fn replace_private(path: &Path) -> io::Result<Replacement> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let target = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
        }
        _ => path.to_path_buf(),
    };
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = target
        .file_name()
        .ok_or_else(|| io::Error::other(format!("{} is not a file name", path.display())))?
        .to_string_lossy()
        .into_owned();
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let temp = dir.join(format!(".{name}.{}-{n}.tmp", std::process::id()));
        match options().write(true).create_new(true).open(&temp) {
            Ok(file) => {
                return Ok(Replacement {
                    file: Some(file),
                    temp,
                    target,
                })
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

impl Replacement {
    /// Syncs the new contents, renames them over the target and syncs the
    /// directory.
    pub fn commit(mut self) -> io::Result<()> {
        let file = self.file.take().expect("committed once");
        file.sync_all()?;
        drop(file);
        std::fs::rename(&self.temp, &self.target)?;
        // Renamed: nothing left to remove.
        self.temp = PathBuf::new();
        #[cfg(unix)]
        if let Some(dir) = self.target.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("not committed")
    }
}

impl io::Write for Replacement {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file().write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file().flush()
    }
}

impl Drop for Replacement {
    fn drop(&mut self) {
        if !self.temp.as_os_str().is_empty() {
            drop(self.file.take());
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// A file the run will write cannot be written.
#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {why}", path = path.display())]
pub struct NotWritable {
    pub what: &'static str,
    pub path: std::path::PathBuf,
    pub why: String,
}

/// Checks, before anything is sent, that `path` (the `what` of the run,
/// e.g. "export file") can be written later: its directory exists and takes
/// a new file (outputs are written beside their target and renamed over
/// it), and the file, if it exists, is a file we may write. Leaves nothing
/// behind.
pub fn check_writable(what: &'static str, path: &Path) -> Result<(), NotWritable> {
    let fail = |why: String| NotWritable {
        what,
        path: path.to_path_buf(),
        why,
    };
    if path.is_dir() {
        return Err(fail("is a directory; give a file name".into()));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(fail(format!(
            "the directory {} does not exist; create it first (nothing was sent)",
            dir.display()
        )));
    }
    if path.exists() {
        OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| fail(format!("cannot be written: {e} (nothing was sent)")))?;
    }
    let probe = dir.join(format!(".orderbatch-write-check-{}", std::process::id()));
    options()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map_err(|e| {
            fail(format!(
                "cannot create files in {}: {e} (nothing was sent)",
                dir.display()
            ))
        })?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn new_files_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        create_private(&a).unwrap();
        let mut new = replace_private(&b).unwrap();
        new.write_all(b"x").unwrap();
        new.commit().unwrap();
        for p in [a, b] {
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", p.display());
        }
    }

    #[test]
    fn a_replaced_file_stays_whole_until_the_new_one_is_complete() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("export.csv");
        std::fs::write(&path, "last night's\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let names = || {
            let mut names: Vec<String> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };

        // Half written: the old file is untouched; the new one, beside it,
        // is private.
        let mut new = replace_private(&path).unwrap();
        new.write_all(b"half of tonight's").unwrap();
        new.flush().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "last night's\n");
        let temp = dir.path().join(&names()[0]);
        assert_ne!(temp, path);
        let mode = std::fs::metadata(&temp).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Given up (an error, a panic): the old file stays, the temp goes.
        drop(new);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "last night's\n");
        assert_eq!(names(), ["export.csv"]);

        // Complete: replaced whole, private, nothing left behind.
        let mut new = replace_private(&path).unwrap();
        new.write_all(b"tonight's\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "last night's\n");
        new.commit().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "tonight's\n");
        assert_eq!(names(), ["export.csv"]);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        // Through a symbolic link: the link stays, its target is replaced.
        std::os::unix::fs::symlink("export.csv", dir.path().join("latest.csv")).unwrap();
        let mut new = replace_private(&dir.path().join("latest.csv")).unwrap();
        new.write_all(b"again\n").unwrap();
        new.commit().unwrap();
        assert!(std::fs::symlink_metadata(dir.path().join("latest.csv"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "again\n");
        assert_eq!(names(), ["export.csv", "latest.csv"]);
    }

    #[test]
    fn writable_paths_are_checked_without_leaving_anything() {
        let dir = tempfile::tempdir().unwrap();
        check_writable("export file", &dir.path().join("new.csv")).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let missing = check_writable("export file", &dir.path().join("no/such/x.csv"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("does not exist"), "{missing}");
        let is_dir = check_writable("report", dir.path())
            .unwrap_err()
            .to_string();
        assert!(is_dir.contains("is a directory"), "{is_dir}");
    }
}
