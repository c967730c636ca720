//! Moving a file out of the drop folder without ever losing it or
//! overwriting another: a hard link (atomic, and refused when the target
//! exists) then removing the source; a rename where links are not
//! supported; and across filesystems a copy to a temporary name, synced,
//! renamed into place, then the source removed. Every step can be cut
//! short and done again.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// Why a file could not be moved.
#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    #[error("{target} exists already with other content; {source_path} stays where it is (move or rename the one in the way)", target = target.display(), source_path = file.display())]
    TargetExists { file: PathBuf, target: PathBuf },
    #[error("cannot move {from} to {to}: {error}", from = from.display(), to = to.display())]
    Io {
        from: PathBuf,
        to: PathBuf,
        error: io::Error,
    },
}

/// How a move ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moved {
    /// Renamed or linked in place (same filesystem).
    Atomic,
    /// Copied, synced, renamed into place, source removed (another filesystem).
    Copied,
    /// The target already held the same bytes (an earlier move cut short):
    /// the source was removed.
    AlreadyThere,
}

/// Moves `from` to `to` (a full path; its directory must exist). Refuses to
/// replace a different file at `to`.
pub fn move_file(from: &Path, to: &Path) -> Result<Moved, MoveError> {
    let io_err = |error| MoveError::Io {
        from: from.to_path_buf(),
        to: to.to_path_buf(),
        error,
    };
    if to.exists() {
        if same_content(from, to).map_err(io_err)? {
            std::fs::remove_file(from).map_err(io_err)?;
            sync_parent(from).map_err(io_err)?;
            return Ok(Moved::AlreadyThere);
        }
        return Err(MoveError::TargetExists {
            file: from.to_path_buf(),
            target: to.to_path_buf(),
        });
    }
    match std::fs::hard_link(from, to) {
        Ok(()) => {
            sync_parent(to).map_err(io_err)?;
            std::fs::remove_file(from).map_err(io_err)?;
            sync_parent(from).map_err(io_err)?;
            return Ok(Moved::Atomic);
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(MoveError::TargetExists {
                file: from.to_path_buf(),
                target: to.to_path_buf(),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::CrossesDevices => {}
        // No hard links here (some network and FUSE filesystems): a rename,
        // the target's absence checked just above.
        Err(_) => match std::fs::rename(from, to) {
            Ok(()) => {
                sync_parent(to).map_err(io_err)?;
                return Ok(Moved::Atomic);
            }
            Err(e) if e.kind() == io::ErrorKind::CrossesDevices => {}
            Err(e) => return Err(io_err(e)),
        },
    }
    copy_across(from, to).map_err(io_err)?;
    Ok(Moved::Copied)
}

/// Copy to a temporary name beside `to`, sync, rename into place, sync the
/// directory, remove the source.
fn copy_across(from: &Path, to: &Path) -> io::Result<()> {
    let name = to
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = to.with_file_name(format!(".{name}.{}.moving", std::process::id()));
    let copied = (|| {
        let mut src = File::open(from)?;
        let mut dst = File::create(&temp)?;
        io::copy(&mut src, &mut dst)?;
        dst.sync_all()?;
        drop(dst);
        if to.exists() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} appeared meanwhile", to.display()),
            ));
        }
        std::fs::rename(&temp, to)?;
        sync_parent(to)
    })();
    if copied.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    copied?;
    std::fs::remove_file(from)?;
    sync_parent(from)
}

/// Removes from `dir` the temporary files of writes and moves cut short
/// (`.<name>.<pid>-<n>.tmp` of a replaced file, `.<name>.<pid>.moving` of
/// a copy across filesystems) whose name starts with one of `prefixes`
/// followed by a dot: what a killed archive of the same file left.
pub fn remove_leftovers(dir: &Path, prefixes: &[&str]) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let Some(rest) = name.strip_prefix('.') else {
            continue;
        };
        let temporary = rest.ends_with(".tmp") || rest.ends_with(".moving");
        if temporary
            && prefixes
                .iter()
                .any(|p| rest.strip_prefix(p).is_some_and(|r| r.starts_with('.')))
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Whether two files hold the same bytes.
pub fn same_content(a: &Path, b: &Path) -> io::Result<bool> {
    if std::fs::metadata(a)?.len() != std::fs::metadata(b)?.len() {
        return Ok(false);
    }
    Ok(crate::input::fingerprint::fingerprint(a)? == crate::input::fingerprint::fingerprint(b)?)
}

/// Syncs the directory holding `path` (a rename or removal in it lasts).
pub fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => File::open(dir)?.sync_all(),
        _ => File::open(".")?.sync_all(),
    }
}

/// `orders.csv` → (`orders`, `.csv`).
pub fn split_name(name: &str) -> (&str, &str) {
    match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_never_replace_another_file_and_finish_a_cut_move() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.csv");
        let b = dir.path().join("b.csv");
        std::fs::write(&a, "x").unwrap();
        assert_eq!(move_file(&a, &b).unwrap(), Moved::Atomic);
        assert!(!a.exists());
        // A move cut after the link: the source is still there.
        std::fs::write(&a, "x").unwrap();
        assert_eq!(move_file(&a, &b).unwrap(), Moved::AlreadyThere);
        assert!(!a.exists());
        std::fs::write(&a, "y").unwrap();
        assert!(matches!(
            move_file(&a, &b),
            Err(MoveError::TargetExists { .. })
        ));
        assert_eq!(std::fs::read_to_string(&b).unwrap(), "x");
        // The copy path leaves the same result.
        let c = dir.path().join("c.csv");
        copy_across(&a, &c).unwrap();
        assert!(!a.exists());
        assert_eq!(std::fs::read_to_string(&c).unwrap(), "y");
        // What a killed write or copy left is removed; nothing else is.
        for n in [
            ".o.report.md.7-0.tmp",
            ".o.csv.7.moving",
            ".other.csv.7.moving",
            "o.csv",
        ] {
            std::fs::write(dir.path().join(n), "").unwrap();
        }
        remove_leftovers(dir.path(), &["o.csv", "o"]);
        for (n, kept) in [
            (".o.report.md.7-0.tmp", false),
            (".o.csv.7.moving", false),
            (".other.csv.7.moving", true),
            ("o.csv", true),
        ] {
            assert_eq!(dir.path().join(n).exists(), kept, "{n}");
        }
        assert_eq!(split_name("orders.csv"), ("orders", ".csv"));
        assert_eq!(split_name(".x"), (".x", ""));
    }
}
