//! `orderbatch validate`: every check `run` makes before sending, with no
//! network and no state.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::Path;

use super::fingerprint::scan;
use super::reader::{Header, InputError, OrderReader, Row, Schema};
use super::rejects::RejectsWriter;
use super::validate::{check_row, Rejection};

/// Problems shown in full; the rest are counted.
pub const SHOWN_PROBLEMS: usize = 20;

/// One rejected row.
#[derive(Debug, Clone)]
pub struct Problem {
    pub row: u64,
    pub line: u64,
    pub rejection: Rejection,
}

/// What a check of a whole file found.
#[derive(Debug, Default)]
pub struct FileCheck {
    pub valid: u64,
    pub rejected: u64,
    /// The first problems, in file order.
    pub problems: Vec<Problem>,
    /// Rejected rows per code (`invalid_<column>`, ...), most first.
    pub by_code: Vec<(String, u64)>,
}

/// Refuses a file with a quote never closed.
pub fn check_quotes(path: &Path, open_quote: Option<(u64, u64)>) -> Result<(), InputError> {
    match open_quote {
        Some((line, column)) => Err(InputError::At {
            path: path.to_path_buf(),
            line,
            column: column as usize,
            message: "a quoted field opens here and is never closed; add the missing `\"`".into(),
        }),
        None => Ok(()),
    }
}

/// Keys of `seen_ids` are already hashes: use them as they are.
#[derive(Default)]
struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type BuildIdentity = std::hash::BuildHasherDefault<Identity>;

/// The stable hash used to spot a repeated `site_order_identifier` without
/// keeping every identifier in memory.
fn id_hash(id: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    id.hash(&mut h);
    h.finish()
}

/// Checks every row of `path`; writes rejected rows to `rejects` if given.
pub fn check_file(
    path: &Path,
    schema: Schema<'_>,
    rejects: Option<(&Path, bool)>,
) -> Result<FileCheck, InputError> {
    check_file_with(path, schema, rejects, |_, _| {})
}

/// [`check_file`], calling `on_valid` for every valid row.
pub fn check_file_with(
    path: &Path,
    schema: Schema<'_>,
    rejects: Option<(&Path, bool)>,
    mut on_valid: impl FnMut(&Header, &Row),
) -> Result<FileCheck, InputError> {
    let io_err = |source| InputError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut reader = OrderReader::open(path, schema)?;
    check_quotes(path, scan(path, false).map_err(io_err)?.open_quote)?;
    let header = reader.header().clone();
    let order_col = header.index("site_order_identifier");
    let mut rejects = match rejects {
        Some((out, include_pii)) => Some(
            RejectsWriter::create(out, &header, include_pii).map_err(|source| InputError::Io {
                path: out.to_path_buf(),
                source,
            })?,
        ),
        None => None,
    };
    // Sized from the file so the map rarely grows (rows are rarely < 64 bytes).
    let size_hint = std::fs::metadata(path).map_or(0, |m| m.len() / 64) as usize;
    let mut seen_ids: HashMap<u64, u64, BuildIdentity> =
        HashMap::with_capacity_and_hasher(size_hint.min(1 << 24), BuildIdentity::default());
    let mut report = FileCheck::default();
    let mut codes: HashMap<String, u64> = HashMap::new();
    let mut row = Row::default();
    while let Some(read) = reader.read_into(&mut row) {
        read?;
        let mut outcome = check_row(&header, &row, schema.required);
        // Like `run`, an identifier counts as used by the first row that
        // has it, even when that row is rejected for another reason.
        if let Some(id) = order_col
            .and_then(|i| row.get(i))
            .filter(|id| !id.is_empty())
        {
            let first = *seen_ids.entry(id_hash(id)).or_insert(row.number);
            if first != row.number && outcome.is_ok() {
                outcome = Err(Rejection {
                    column: Some("site_order_identifier".into()),
                    reason: format!(
                        "`{id}` is already used by row {first}; each order needs its own"
                    ),
                });
            }
        }
        match outcome {
            Ok(()) => {
                report.valid += 1;
                on_valid(&header, &row);
            }
            Err(rejection) => {
                report.rejected += 1;
                *codes.entry(rejection.code()).or_default() += 1;
                if let Some(w) = rejects.as_mut() {
                    w.write(&row, &rejection.to_string()).map_err(io_err)?;
                }
                if report.problems.len() < SHOWN_PROBLEMS {
                    report.problems.push(Problem {
                        row: row.number,
                        line: row.line,
                        rejection,
                    });
                }
            }
        }
    }
    if let Some(w) = rejects {
        w.finish().map_err(io_err)?;
    }
    report.by_code = codes.into_iter().collect();
    report
        .by_code
        .sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::ColumnOptions;
    use proptest::prelude::*;

    fn check_bytes(bytes: &[u8]) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.csv");
        std::fs::write(&path, bytes).unwrap();
        let columns = ColumnOptions::default();
        let schema = crate::pipeline::schema(&columns);
        let _ = check_file(
            &path,
            schema,
            Some((&dir.path().join("rejects.csv"), false)),
        );
        let lenient = ColumnOptions {
            pass_through: Vec::new(),
            allow_unknown: true,
        };
        let _ = check_file(&path, crate::pipeline::schema(&lenient), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            check_bytes(&bytes);
        }

        #[test]
        fn never_panics_on_csv_like_input(
            body in proptest::collection::vec(
                prop_oneof![
                    Just(b','), Just(b'"'), Just(b'\n'), Just(b'\r'), Just(b'.'), Just(b'-'),
                    Just(0xe9u8), Just(0xffu8), b'0'..=b'9', b'a'..=b'z',
                ],
                0..400,
            )
        ) {
            let mut bytes = b"site_customer_identifier,order_amount,order_currency,order_type,order_is_standing,site_order_identifier\n".to_vec();
            bytes.extend(body);
            check_bytes(&bytes);
        }
    }
}
