//! Files the tool writes are private to the user (mode 0600).

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

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

/// Creates or truncates `path` for writing; a new file gets mode 0600.
pub fn write_private(path: &Path) -> io::Result<File> {
    warn_if_wide(path);
    options().write(true).create(true).truncate(true).open(path)
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
/// a new file, and the file, if it exists, is a file we may write. Leaves
/// nothing behind.
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
        return Ok(());
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

    #[test]
    fn new_files_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        create_private(&a).unwrap();
        drop(write_private(&b).unwrap());
        for p in [a, b] {
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", p.display());
        }
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
