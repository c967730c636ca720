//! The content fingerprint that identifies a run's input file.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use sha2::{Digest, Sha256};

/// SHA-256 of the file's bytes, lowercase hex. Streams the file.
pub fn fingerprint(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn same_bytes_same_fingerprint_and_one_byte_changes_it() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.csv");
        let b = dir.path().join("b.csv");
        File::create(&a).unwrap().write_all(b"x,y\n1,2\n").unwrap();
        File::create(&b).unwrap().write_all(b"x,y\n1,3\n").unwrap();
        assert_eq!(fingerprint(&a).unwrap(), fingerprint(&a).unwrap());
        assert_ne!(fingerprint(&a).unwrap(), fingerprint(&b).unwrap());
        assert_eq!(fingerprint(&a).unwrap().len(), 64);
    }
}
