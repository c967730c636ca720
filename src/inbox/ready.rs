//! Which files of the drop folder are ready: the name (pattern, no
//! dotfiles, no upload in progress) and the readiness rule (stable for a
//! while, or a marker beside it). Oldest first: modification time, then name.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::input::fingerprint::Stamp;

/// Names an upload in progress carries (WinSCP, curl, browsers, rsync...).
const IN_PROGRESS: &[&str] = &[".filepart", ".part", ".partial", ".tmp", ".crdownload"];

/// When a file that matches the pattern may be taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ready {
    /// Size, modification and status-change times unchanged for this long.
    Stable(Duration),
    /// `orders.csv` once `orders.csv<suffix>` exists.
    Marker(String),
}

impl Ready {
    /// `stable:30s`, `stable:2m`, `stable:0` or `marker:.done`.
    pub fn parse(s: &str) -> Result<Ready, String> {
        match s.split_once(':') {
            Some(("stable", d)) => {
                let d = d.trim();
                let duration = if !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()) {
                    d.parse::<u64>()
                        .map(Duration::from_secs)
                        .map_err(|_| format!("`{s}`: the duration is too large"))?
                } else {
                    humantime::parse_duration(d)
                        .map_err(|e| format!("`{s}`: `{d}` is not a duration like 30s ({e})"))?
                };
                Ok(Ready::Stable(duration))
            }
            Some(("marker", suffix)) if !suffix.is_empty() && !suffix.contains('/') => {
                Ok(Ready::Marker(suffix.to_string()))
            }
            _ => Err(format!(
                "`{s}` is neither stable:DURATION (e.g. stable:30s) nor marker:SUFFIX (e.g. marker:.done)"
            )),
        }
    }
}

/// A file of the folder that matches the pattern, and what to do with it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub path: PathBuf,
    pub name: String,
    pub modified: SystemTime,
    /// `None`: take it; otherwise why it waits.
    pub skip: Option<String>,
    /// What the file looked like when it was judged ready.
    pub stamp: Option<Stamp>,
    /// Its marker file (marker mode).
    pub marker: Option<PathBuf>,
}

/// `*` (any run of characters) and `?` (any one) over a file name.
pub fn glob(pattern: &str, name: &str) -> bool {
    fn go(p: &[char], n: &[char]) -> bool {
        match p.split_first() {
            None => n.is_empty(),
            Some(('*', rest)) => (0..=n.len()).any(|i| go(rest, &n[i..])),
            Some(('?', rest)) => !n.is_empty() && go(rest, &n[1..]),
            Some((c, rest)) => n.first() == Some(c) && go(rest, &n[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    go(&p, &n)
}

/// The files of `dir` that match `pattern`, oldest first, each with why it
/// is not taken yet (if it is not). Dotfiles, uploads in progress by name,
/// directories and marker files are left out, as are names that are not
/// UTF-8.
pub fn scan(dir: &Path, pattern: &str, ready: &Ready) -> std::io::Result<Vec<Candidate>> {
    let now = SystemTime::now();
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if name.starts_with('.')
            || IN_PROGRESS.iter().any(|s| name.ends_with(s))
            || !glob(pattern, &name)
        {
            continue;
        }
        if let Ready::Marker(suffix) = ready {
            if name.ends_with(suffix.as_str()) {
                continue;
            }
        }
        let path = entry.path();
        // Follows a symbolic link: the file it leads to is what is read.
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        let stamp = Stamp::of(&path).ok();
        let (skip, marker) = match ready {
            Ready::Stable(wait) => (unstable(&meta, now, *wait), None),
            Ready::Marker(suffix) => {
                let marker = dir.join(format!("{name}{suffix}"));
                if marker.exists() {
                    (None, Some(marker))
                } else {
                    (Some(format!("no {name}{suffix} yet")), None)
                }
            }
        };
        found.push(Candidate {
            path,
            name,
            modified,
            skip,
            stamp,
            marker,
        });
    }
    found.sort_by(|a, b| {
        a.modified
            .cmp(&b.modified)
            .then_with(|| a.name.cmp(&b.name))
    });
    Ok(found)
}

/// Why a file is not stable yet: its content or metadata changed less than
/// `wait` ago (the status-change time moves on every write, even one that
/// puts the modification time back).
fn unstable(meta: &std::fs::Metadata, now: SystemTime, wait: Duration) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let changed = SystemTime::UNIX_EPOCH
        + Duration::new(
            u64::try_from(meta.ctime()).unwrap_or(0),
            u32::try_from(meta.ctime_nsec()).unwrap_or(0),
        );
    let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    let last = changed.max(modified);
    match now.duration_since(last) {
        Ok(age) if age >= wait => None,
        Ok(age) => Some(format!(
            "changed {}s ago; waiting until it has been stable for {}",
            age.as_secs(),
            humantime::format_duration(wait)
        )),
        Err(_) => Some("its times are in the future; waiting".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_and_readiness_rules() {
        assert!(glob("*.csv", "orders.csv"));
        assert!(!glob("*.csv", "orders.csv.done"));
        assert!(glob("orders-??.csv", "orders-01.csv"));
        assert!(glob("*", "x"));
        assert_eq!(
            Ready::parse("stable:30s"),
            Ok(Ready::Stable(Duration::from_secs(30)))
        );
        assert_eq!(Ready::parse("stable:0"), Ok(Ready::Stable(Duration::ZERO)));
        assert_eq!(
            Ready::parse("marker:.done"),
            Ok(Ready::Marker(".done".into()))
        );
        assert!(Ready::parse("marker:").is_err());
        assert!(Ready::parse("stable:soon").is_err());
        assert!(Ready::parse("30s").is_err());
    }
}
