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
}
