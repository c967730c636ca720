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

/// CSV quoting state, as the csv crate reads it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Quote {
    FieldStart,
    Unquoted,
    Quoted,
    /// A `"` inside a quoted field: an escaped quote if another follows.
    Escaping,
}

/// Tracks quoting byte by byte.
struct QuoteTracker {
    state: Quote,
    line: u64,
    column: u64,
    opened_at: (u64, u64),
}

impl QuoteTracker {
    fn new() -> Self {
        QuoteTracker {
            state: Quote::FieldStart,
            line: 1,
            column: 0,
            opened_at: (0, 0),
        }
    }

    fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.column += 1;
            self.state = match (self.state, b) {
                (Quote::FieldStart, b'"') => {
                    self.opened_at = (self.line, self.column);
                    Quote::Quoted
                }
                (Quote::Quoted, b'"') => Quote::Escaping,
                (Quote::Quoted, _) => Quote::Quoted,
                (Quote::Escaping, b'"') => Quote::Quoted,
                (_, b',' | b'\n' | b'\r') => Quote::FieldStart,
                _ => Quote::Unquoted,
            };
            if b == b'\n' {
                self.line += 1;
                self.column = 0;
            }
        }
    }

    fn open_quote(&self) -> Option<(u64, u64)> {
        (self.state == Quote::Quoted).then_some(self.opened_at)
    }
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
    Ok(Scan {
        fingerprint: hasher.map(|h| hex::encode(h.finalize())),
        open_quote: quotes.open_quote(),
    })
}

/// SHA-256 of the file's bytes, lowercase hex. Streams the file.
pub fn fingerprint(path: &Path) -> io::Result<String> {
    Ok(scan(path, true)?.fingerprint.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_quote(text: &str) -> Option<(u64, u64)> {
        let mut t = QuoteTracker::new();
        t.feed(text.as_bytes());
        t.open_quote()
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
    }

    #[test]
    fn closed_escaped_and_stray_quotes_are_fine() {
        for text in [
            "a,b\n1,\"x,y\"\n",
            "a,b\n1,\"say \"\"hi\"\"\"\n",
            "a,b\n1,\"two\nlines\"\n",
            "a,b\n1,5\" screen\n",
            "a,b\r\n1,\"\"\r\n",
        ] {
            assert_eq!(open_quote(text), None, "{text:?}");
        }
    }
}
