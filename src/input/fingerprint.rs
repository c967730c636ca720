//! One pass over the raw file: the content fingerprint that identifies a
//! run, and a check for a quote left open at the end of the file (which a
//! CSV reader would otherwise silently read as one huge field).

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use sha2::{Digest, Sha256};

/// What a scan of the raw bytes found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    /// SHA-256 of the file, lowercase hex (when asked for).
    pub fingerprint: Option<String>,
    /// Line and column of a quote that opens a field never closed.
    pub open_quote: Option<(u64, u64)>,
}

/// CSV quoting state between chunks, as the csv crate reads it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Quoting {
    /// Outside a quoted field; a `"` opens one only at the start of a field,
    /// i.e. after a delimiter, a line end, or at the start of the file.
    Outside {
        at_field_start: bool,
    },
    Quoted,
    /// The chunk ended on a `"` inside a quoted field: an escaped quote if
    /// the next byte is another.
    MaybeEscaped,
}

/// Tracks quoting over the file with `memchr`, so a scan costs little more
/// than reading. Only the offset of the last opening quote is kept; its line
/// and column are worked out (by a second read) only when it is never closed.
struct QuoteTracker {
    state: Quoting,
    offset: u64,
    opened_at: u64,
}

fn is_field_start(b: u8) -> bool {
    matches!(b, b',' | b'\n' | b'\r')
}

impl QuoteTracker {
    fn new() -> Self {
        QuoteTracker {
            state: Quoting::Outside {
                at_field_start: true,
            },
            offset: 0,
            opened_at: 0,
        }
    }

    fn feed(&mut self, chunk: &[u8]) {
        let mut i = 0;
        while i <= chunk.len() {
            match self.state {
                Quoting::MaybeEscaped => match chunk.get(i) {
                    None => break,
                    Some(b'"') => {
                        self.state = Quoting::Quoted;
                        i += 1;
                    }
                    Some(_) => {
                        self.state = Quoting::Outside {
                            at_field_start: false,
                        }
                    }
                },
                Quoting::Quoted => match memchr::memchr(b'"', &chunk[i..]) {
                    None => break,
                    Some(j) => {
                        let q = i + j;
                        match chunk.get(q + 1) {
                            None => {
                                self.state = Quoting::MaybeEscaped;
                                break;
                            }
                            Some(b'"') => i = q + 2,
                            Some(_) => {
                                self.state = Quoting::Outside {
                                    at_field_start: false,
                                };
                                i = q + 1;
                            }
                        }
                    }
                },
                Quoting::Outside { at_field_start } => match memchr::memchr(b'"', &chunk[i..]) {
                    None => {
                        if i < chunk.len() {
                            self.state = Quoting::Outside {
                                at_field_start: is_field_start(chunk[chunk.len() - 1]),
                            };
                        }
                        break;
                    }
                    Some(j) => {
                        let q = i + j;
                        let opens = if q == 0 {
                            at_field_start
                        } else {
                            is_field_start(chunk[q - 1])
                        };
                        if opens {
                            self.state = Quoting::Quoted;
                            self.opened_at = self.offset + q as u64;
                        } else {
                            self.state = Quoting::Outside {
                                at_field_start: false,
                            };
                        }
                        i = q + 1;
                    }
                },
            }
        }
        self.offset += chunk.len() as u64;
    }

    /// Byte offset of a quote never closed.
    fn open_quote(&self) -> Option<u64> {
        matches!(self.state, Quoting::Quoted).then_some(self.opened_at)
    }
}

/// Line and column (1-based) of byte `offset` of `path`.
fn line_and_column(path: &Path, offset: u64) -> io::Result<(u64, u64)> {
    let mut file = File::open(path)?;
    let mut buf = vec![0u8; 1 << 16];
    let (mut line, mut line_start, mut pos) = (1u64, 0u64, 0u64);
    while pos < offset {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let upto = ((offset - pos) as usize).min(n);
        for nl in memchr::memchr_iter(b'\n', &buf[..upto]) {
            line += 1;
            line_start = pos + nl as u64 + 1;
        }
        pos += n as u64;
    }
    Ok((line, offset - line_start + 1))
}

/// Reads `path` once; hashes it when `hash` is set.
pub fn scan(path: &Path, hash: bool) -> io::Result<Scan> {
    let mut file = File::open(path)?;
    let mut hasher = hash.then(Sha256::new);
    let mut quotes = QuoteTracker::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if let Some(h) = hasher.as_mut() {
            h.update(&buf[..n]);
        }
        quotes.feed(&buf[..n]);
    }
    let open_quote = match quotes.open_quote() {
        Some(offset) => Some(line_and_column(path, offset)?),
        None => None,
    };
    Ok(Scan {
        fingerprint: hasher.map(|h| hex::encode(h.finalize())),
        open_quote,
    })
}

/// SHA-256 of the file's bytes, lowercase hex. Streams the file.
pub fn fingerprint(path: &Path) -> io::Result<String> {
    Ok(scan(path, true)?.fingerprint.unwrap_or_default())
}

/// What the file system says about a file, cheaply: size, modification
/// and status-change times, device and inode. An edit that keeps the size
/// and puts the modification time back (`touch -r`, an upload preserving
/// times) still moves the status-change time; a file replaced by another
/// moves the inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
    changed: (i64, i64),
    file: (u64, u64),
}

impl Stamp {
    /// The stamp of `path` now.
    pub fn of(path: &Path) -> io::Result<Stamp> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path)?;
        Ok(Stamp {
            len: meta.len(),
            modified: meta.modified().ok(),
            changed: (meta.ctime(), meta.ctime_nsec()),
            file: (meta.dev(), meta.ino()),
        })
    }
}

/// The input as a run first read it, to notice it changing under the run.
#[derive(Debug, Clone)]
pub struct Snapshot {
    path: std::path::PathBuf,
    fingerprint: String,
    seen: std::sync::Arc<std::sync::Mutex<Stamp>>,
}

/// The input file changed while the run was reading it.
#[derive(Debug, thiserror::Error)]
#[error(
    "{path}: input changed since the run started (fingerprint {expected}, now {found}); \
     no request with the new values was sent and the state is kept. Restore the original \
     file and run the same command again, or run the new file with another --db",
    path = path.display()
)]
pub struct InputChanged {
    pub path: std::path::PathBuf,
    pub expected: String,
    pub found: String,
}

impl Snapshot {
    /// A snapshot of the file whose content hashed to `fingerprint`, with
    /// `stamp` taken *before* it was hashed: a change after the stamp, even
    /// one while it was being hashed, shows up at the first
    /// [`Snapshot::check`].
    pub fn new(path: &Path, fingerprint: String, stamp: Stamp) -> Snapshot {
        Snapshot {
            path: path.to_path_buf(),
            fingerprint,
            seen: std::sync::Arc::new(std::sync::Mutex::new(stamp)),
        }
    }

    /// Checks that the file is still the one the run started with: its
    /// stamp first (cheap), the whole hash when the stamp moved.
    pub fn check(&self) -> Result<(), InputChanged> {
        let changed = |found: String| InputChanged {
            path: self.path.clone(),
            expected: self.fingerprint.clone(),
            found,
        };
        let now = Stamp::of(&self.path).map_err(|e| changed(format!("unreadable: {e}")))?;
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *seen == now {
            return Ok(());
        }
        let found = fingerprint(&self.path).map_err(|e| changed(format!("unreadable: {e}")))?;
        if found != self.fingerprint {
            return Err(changed(found));
        }
        // Touched, not changed (the stamp was taken before the hash).
        *seen = now;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `text` in chunks of every size, checks they all agree, and
    /// returns the line and column of an open quote.
    fn open_quote(text: &str) -> Option<(u64, u64)> {
        let bytes = text.as_bytes();
        let mut answers = Vec::new();
        for size in 1..=bytes.len().max(1) {
            let mut t = QuoteTracker::new();
            for chunk in bytes.chunks(size) {
                t.feed(chunk);
            }
            answers.push(t.open_quote());
        }
        assert!(
            answers.windows(2).all(|w| w[0] == w[1]),
            "{text:?}: {answers:?}"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.csv");
        std::fs::write(&path, bytes).unwrap();
        answers[0].map(|o| line_and_column(&path, o).unwrap())
    }

    #[test]
    fn same_bytes_same_fingerprint_and_one_byte_changes_it() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.csv");
        let b = dir.path().join("b.csv");
        std::fs::write(&a, b"x,y\n1,2\n").unwrap();
        std::fs::write(&b, b"x,y\n1,3\n").unwrap();
        assert_eq!(fingerprint(&a).unwrap(), fingerprint(&a).unwrap());
        assert_ne!(fingerprint(&a).unwrap(), fingerprint(&b).unwrap());
        assert_eq!(fingerprint(&a).unwrap().len(), 64);
    }

    #[test]
    fn finds_a_quote_left_open_at_the_end() {
        assert_eq!(open_quote("a,b\n1,\"x\n2,3\n"), Some((2, 3)));
        assert_eq!(open_quote("a,b\n1,\"x\"\"y\n"), Some((2, 3)));
        assert_eq!(open_quote("\"a,b\n"), Some((1, 1)));
        assert_eq!(open_quote("a,b\n1,\"ok\"\n2,\"x\"\"\n"), Some((3, 3)));
    }

    #[test]
    fn closed_escaped_and_stray_quotes_are_fine() {
        for text in [
            "a,b\n1,\"x,y\"\n",
            "a,b\n1,\"say \"\"hi\"\"\"\n",
            "a,b\n1,\"two\nlines\"\n",
            "a,b\n1,5\" screen\n",
            "a,b\r\n1,\"\"\r\n",
            "\"a\",\"b\"\n\"\",\"\"\"\"\"\"\n",
            "",
        ] {
            assert_eq!(open_quote(text), None, "{text:?}");
        }
    }

    /// Writes `text` over `path` in place, then puts its modification time
    /// back, as `touch -r` or an upload preserving times does.
    fn edit_keeping_mtime(path: &Path, text: &str) {
        let mtime = std::fs::metadata(path).unwrap().modified().unwrap();
        std::fs::write(path, text).unwrap();
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
    }

    #[test]
    fn a_same_size_edit_with_the_mtime_put_back_is_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.csv");
        std::fs::write(&path, "a,b\n1,2\n").unwrap();
        let stamp = Stamp::of(&path).unwrap();
        let snapshot = Snapshot::new(&path, fingerprint(&path).unwrap(), stamp);
        snapshot.check().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        edit_keeping_mtime(&path, "a,b\n1,9\n");
        assert!(snapshot.check().is_err());
    }

    #[test]
    fn an_edit_between_the_stamp_and_the_hash_is_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.csv");
        std::fs::write(&path, "a,b\n1,2\n").unwrap();
        let stamp = Stamp::of(&path).unwrap();
        let before = fingerprint(&path).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        // Edited after the run hashed it, before anything else looked.
        edit_keeping_mtime(&path, "a,b\n1,9\n");
        let snapshot = Snapshot::new(&path, before, stamp);
        assert!(snapshot.check().is_err());
    }

    #[test]
    fn a_touch_without_an_edit_is_not_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.csv");
        std::fs::write(&path, "a,b\n1,2\n").unwrap();
        let stamp = Stamp::of(&path).unwrap();
        let snapshot = Snapshot::new(&path, fingerprint(&path).unwrap(), stamp);
        std::thread::sleep(std::time::Duration::from_millis(20));
        edit_keeping_mtime(&path, "a,b\n1,2\n");
        snapshot.check().unwrap();
        snapshot.check().unwrap();
    }
}
