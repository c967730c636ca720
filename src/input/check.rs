//! `orderbatch validate`: every check `run` makes before sending, with no
//! network and no state.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::Path;

use super::fingerprint::scan;
use super::reader::{Header, InputError, OrderReader, Row, Schema};
use super::rejects::{RejectsFile, RejectsWriter};
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
    /// Valid rows without a `site_order_identifier` (no column, or a blank
    /// value: the same thing).
    pub without_order_id: u64,
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

/// The hash used to spot a repeated `site_order_identifier` without keeping
/// every identifier in memory (candidates are confirmed by comparing text).
fn id_hash(id: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    id.hash(&mut h);
    h.finish()
}

/// How a pass treats repeated `site_order_identifier`s.
enum Dups {
    /// First pass: only note each row's identifier hash (sequential writes,
    /// sorted afterwards: far cheaper than a hash map's random accesses).
    Collect(Vec<(u64, u64)>),
    /// Second pass: the rows whose hash repeats an earlier row's, to be
    /// confirmed against that row's identifier.
    Known {
        /// Later row → the first row with the same hash.
        later: HashMap<u64, u64>,
        /// First rows and, once read, their identifier.
        firsts: HashMap<u64, Option<String>>,
    },
}

impl Dups {
    /// The candidates a collected list holds, if any.
    fn candidates(self) -> Option<Dups> {
        let Dups::Collect(mut ids) = self else {
            return None;
        };
        ids.sort_unstable();
        let (mut later, mut firsts) = (HashMap::new(), HashMap::new());
        for run in ids.chunk_by(|a, b| a.0 == b.0).filter(|run| run.len() > 1) {
            let first = run[0].1;
            firsts.insert(first, None);
            for &(_, row) in &run[1..] {
                later.insert(row, first);
            }
        }
        (!later.is_empty()).then_some(Dups::Known { later, firsts })
    }
}

/// Checks every row of `path`; writes rejected rows to `rejects` if given.
pub fn check_file(
    path: &Path,
    schema: Schema<'_>,
    rejects: Option<&RejectsFile>,
) -> Result<FileCheck, InputError> {
    let mut dups = Dups::Collect(Vec::new());
    let report = pass(path, schema, rejects, &mut dups, &mut |_, _| {})?;
    match dups.candidates() {
        None => Ok(report),
        Some(mut known) => pass(path, schema, rejects, &mut known, &mut |_, _| {}),
    }
}

/// [`check_file`], calling `on_valid` for every valid row (reads the file
/// twice).
pub fn check_file_with(
    path: &Path,
    schema: Schema<'_>,
    rejects: Option<&RejectsFile>,
    mut on_valid: impl FnMut(&Header, &Row),
) -> Result<FileCheck, InputError> {
    let mut dups = Dups::Collect(Vec::new());
    pass(path, schema, None, &mut dups, &mut |_, _| {})?;
    let mut known = dups.candidates().unwrap_or(Dups::Known {
        later: HashMap::new(),
        firsts: HashMap::new(),
    });
    pass(path, schema, rejects, &mut known, &mut on_valid)
}

/// One pass over the file.
fn pass(
    path: &Path,
    schema: Schema<'_>,
    rejects: Option<&RejectsFile>,
    dups: &mut Dups,
    on_valid: &mut dyn FnMut(&Header, &Row),
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
        Some(to) => Some(
            RejectsWriter::create(to, &header).map_err(|source| InputError::Io {
                path: to.path.clone(),
                source,
            })?,
        ),
        None => None,
    };
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
            match dups {
                Dups::Collect(ids) => ids.push((id_hash(id), row.number)),
                Dups::Known { later, firsts } => {
                    if let Some(slot) = firsts.get_mut(&row.number) {
                        *slot = Some(id.to_string());
                    }
                    let first = later.get(&row.number).copied();
                    let same = first.and_then(|f| firsts.get(&f)?.as_deref().map(|t| t == id));
                    if let (Some(first), Some(true), true) = (first, same, outcome.is_ok()) {
                        outcome = Err(Rejection {
                            column: Some("site_order_identifier".into()),
                            reason: format!(
                                "`{id}` is already used by row {first}; each order needs its own"
                            ),
                        });
                    }
                }
            }
        }
        match outcome {
            Ok(()) => {
                report.valid += 1;
                if order_col.and_then(|i| row.get(i)).is_none_or(str::is_empty) {
                    report.without_order_id += 1;
                }
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
    /// The header `run` accepts (as `pipeline::schema` builds it).
    fn run_schema(columns: &crate::input::ColumnOptions) -> Schema<'_> {
        use crate::provider::paynearme::params::{ep, CREATE_REQUIRED};
        Schema {
            endpoints: ep::CREATE | ep::TOKEN_ROW,
            required: CREATE_REQUIRED,
            columns,
        }
    }

    use super::*;
    use crate::input::ColumnOptions;
    use proptest::prelude::*;

    fn check_bytes(bytes: &[u8]) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.csv");
        std::fs::write(&path, bytes).unwrap();
        let columns = ColumnOptions::default();
        let schema = run_schema(&columns);
        let _ = check_file(
            &path,
            schema,
            Some(&RejectsFile {
                path: dir.path().join("rejects.csv"),
                include_pii: false,
                cells: Default::default(),
            }),
        );
        let lenient = ColumnOptions {
            pass_through: Vec::new(),
            allow_unknown: true,
        };
        let _ = check_file(&path, run_schema(&lenient), None);
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
