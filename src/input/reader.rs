//! Streams an order CSV row by row; never loads the whole file.

use std::fs::File;
use std::io::{self, BufReader};
use std::path::{Path, PathBuf};

use crate::provider::paynearme::params::{self, Param};

/// A file-level problem: the whole file is refused before any request.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("{path}: cannot read the input file")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: the file is empty; the first line must name the columns, e.g. `{example}`")]
    Empty { path: PathBuf, example: String },
    #[error("{path}:{line}:{column}: {message}")]
    At {
        path: PathBuf,
        line: u64,
        column: usize,
        message: String,
    },
}

/// The header line: column names and what the tool knows of each.
#[derive(Debug, Clone)]
pub struct Header {
    pub names: Vec<String>,
    /// The known parameter for each column; `None` for pass-through and
    /// ignored columns.
    pub params: Vec<Option<&'static Param>>,
    /// Whether each column is sent (false for unknown columns that
    /// `--allow-unknown-columns` ignores).
    pub send: Vec<bool>,
    /// Columns of the rules that span fields, looked up once.
    pub(crate) cross: CrossColumns,
}

/// Column indices of the fields that cross-field rules compare.
#[derive(Debug, Clone, Default)]
pub(crate) struct CrossColumns {
    pub order_amount: Option<usize>,
    pub minimum_payment_amount: Option<usize>,
    /// (start, end) date pairs.
    pub date_ranges: Vec<(usize, usize, &'static str, &'static str)>,
}

impl Header {
    /// A header from its column names, what each is, and whether it is sent.
    pub fn new(names: Vec<String>, params: Vec<Option<&'static Param>>, send: Vec<bool>) -> Self {
        let find = |n: &str| names.iter().position(|x| x == n);
        let date_ranges = [
            ("auto_pay_start_date", "auto_pay_end_date"),
            ("reminder_start_date", "reminder_end_date"),
            ("payments_start_date", "payments_end_date"),
        ]
        .into_iter()
        .filter_map(|(s, e)| Some((find(s)?, find(e)?, s, e)))
        .collect();
        let cross = CrossColumns {
            order_amount: find("order_amount"),
            minimum_payment_amount: find("minimum_payment_amount"),
            date_ranges,
        };
        Header {
            names,
            params,
            send,
            cross,
        }
    }

    /// Whether the file has per-row smart-token columns.
    pub fn has_token_columns(&self) -> bool {
        self.params
            .iter()
            .any(|p| p.is_some_and(|p| p.endpoints & params::ep::TOKEN_ROW != 0))
    }

    /// The column index of `name`.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }
}

/// One data row: its 1-based number, the physical line it starts on, and its
/// fields, as text when they are all valid UTF-8.
#[derive(Debug, Clone, Default)]
pub struct Row {
    pub number: u64,
    pub line: u64,
    /// Byte offset of the record in the file (see [`OrderReader::read_at`]).
    pub offset: u64,
    fields: Fields,
}

/// A row's fields: text when all are UTF-8, raw bytes otherwise.
#[derive(Debug, Clone, Default)]
enum Fields {
    #[default]
    Empty,
    Text(csv::StringRecord),
    Bytes(csv::ByteRecord),
}

impl Fields {
    fn from_bytes(record: csv::ByteRecord) -> Self {
        match csv::StringRecord::from_byte_record(record) {
            Ok(text) => Fields::Text(text),
            Err(e) => Fields::Bytes(e.into_byte_record()),
        }
    }

    /// The raw record, for reuse as a read buffer.
    fn into_bytes(self) -> csv::ByteRecord {
        match self {
            Fields::Text(t) => t.into_byte_record(),
            Fields::Bytes(b) => b,
            Fields::Empty => csv::ByteRecord::new(),
        }
    }
}

impl Row {
    /// A row from raw fields (checked for UTF-8 once, here).
    pub fn new(number: u64, line: u64, record: csv::ByteRecord) -> Self {
        let offset = record.position().map_or(0, csv::Position::byte);
        Row {
            number,
            line,
            offset,
            fields: Fields::from_bytes(record),
        }
    }

    fn text(&self) -> Option<&csv::StringRecord> {
        match &self.fields {
            Fields::Text(t) => Some(t),
            _ => None,
        }
    }

    /// How many fields the row has.
    pub fn len(&self) -> usize {
        match &self.fields {
            Fields::Text(text) => text.len(),
            Fields::Bytes(bytes) => bytes.len(),
            Fields::Empty => 0,
        }
    }

    /// Whether the row has no fields.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether every field is valid UTF-8.
    pub fn is_utf8(&self) -> bool {
        !matches!(self.fields, Fields::Bytes(_))
    }

    /// The field in column `index` as text, if present and the row is UTF-8.
    pub fn get(&self, index: usize) -> Option<&str> {
        self.text().and_then(|t| t.get(index))
    }

    /// The raw bytes of the field in column `index`.
    pub fn raw(&self, index: usize) -> Option<&[u8]> {
        match &self.fields {
            Fields::Text(text) => text.get(index).map(str::as_bytes),
            Fields::Bytes(bytes) => bytes.get(index),
            Fields::Empty => None,
        }
    }

    /// The non-empty fields of sent columns as `(column name, value)` pairs,
    /// in column order, for a request to `endpoint` (flags of `params::ep`):
    /// known parameters of that endpoint, and pass-through columns except for
    /// token calls. Empty for a row that is not UTF-8 (never sent).
    pub fn params_for<'a>(&'a self, header: &'a Header, endpoint: u8) -> Vec<(&'a str, &'a str)> {
        let Some(text) = self.text() else {
            return Vec::new();
        };
        let wanted = |i: usize| match header.params[i] {
            Some(p) => p.endpoints & endpoint != 0,
            None => endpoint != params::ep::TOKEN_ROW,
        };
        header
            .names
            .iter()
            .enumerate()
            .zip(text.iter())
            .filter(|((i, _), value)| header.send[*i] && wanted(*i) && !value.is_empty())
            .map(|((_, name), value)| (name.as_str(), value))
            .collect()
    }
}

/// What the user says about columns the tool does not know.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ColumnOptions {
    /// Extra column names sent verbatim (a site's own parameters).
    pub pass_through: Vec<String>,
    /// Ignore (do not send) unknown columns instead of refusing the file.
    pub allow_unknown: bool,
}

/// What the reader requires of the header.
#[derive(Debug, Clone, Copy)]
pub struct Schema<'a> {
    /// Endpoint flags (`params::ep`) whose parameters are accepted as columns.
    pub endpoints: u8,
    /// Columns that must be present.
    pub required: &'a [&'a str],
    pub columns: &'a ColumnOptions,
}

/// A streaming reader of order rows.
pub struct OrderReader {
    path: PathBuf,
    header: Header,
    reader: csv::Reader<BufReader<File>>,
    record: csv::ByteRecord,
    rows: u64,
}

impl OrderReader {
    /// Opens `path` and checks its header against `schema`.
    pub fn open(path: &Path, schema: Schema<'_>) -> Result<Self, InputError> {
        Self::open_with(path, schema, 1 << 16)
    }

    /// [`OrderReader::open`] for [`OrderReader::read_at`]: a seek throws
    /// the buffers away, so they are kept small (a record or two).
    pub fn open_for_seeking(path: &Path, schema: Schema<'_>) -> Result<Self, InputError> {
        Self::open_with(path, schema, 1 << 10)
    }

    fn open_with(path: &Path, schema: Schema<'_>, buffer: usize) -> Result<Self, InputError> {
        let io_err = |source| InputError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        if file.metadata().map_err(io_err)?.len() == 0 {
            return Err(InputError::Empty {
                path: path.to_path_buf(),
                example: schema.required.join(","),
            });
        }
        let mut reader = csv::ReaderBuilder::new()
            .flexible(true)
            .buffer_capacity(buffer.min(8 * 1024))
            .from_reader(BufReader::with_capacity(buffer, file));
        let raw = reader
            .byte_headers()
            .map_err(|e| csv_error(path, e))?
            .clone();
        let header = check_header(path, &raw, schema)?;
        Ok(OrderReader {
            path: path.to_path_buf(),
            header,
            reader,
            record: csv::ByteRecord::new(),
            rows: 0,
        })
    }

    /// The checked header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Reads the next row into `row`, reusing its buffers (no allocation per
    /// row); `None` at the end of the file.
    pub fn read_into(&mut self, row: &mut Row) -> Option<Result<(), InputError>> {
        let mut raw = std::mem::take(&mut row.fields).into_bytes();
        match self.reader.read_byte_record(&mut raw) {
            Ok(false) => None,
            Err(e) => Some(Err(csv_error(&self.path, e))),
            Ok(true) => {
                self.rows += 1;
                row.number = self.rows;
                row.line = raw.position().map_or(0, csv::Position::line);
                row.fields = Fields::from_bytes(raw);
                Some(Ok(()))
            }
        }
    }

    /// The next row, or `None` at the end of the file.
    pub fn next_row(&mut self) -> Option<Result<Row, InputError>> {
        match self.reader.read_byte_record(&mut self.record) {
            Ok(false) => None,
            Err(e) => Some(Err(csv_error(&self.path, e))),
            Ok(true) => {
                self.rows += 1;
                let line = self.record.position().map_or(0, csv::Position::line);
                Some(Ok(Row::new(self.rows, line, self.record.clone())))
            }
        }
    }
}

impl OrderReader {
    /// The row numbered `number` whose record starts at byte `offset` on
    /// `line` (as a registration recorded it), read without the rows
    /// before it.
    pub fn read_at(&mut self, offset: u64, line: u64, number: u64) -> Result<Row, InputError> {
        let mut position = csv::Position::new();
        position.set_byte(offset).set_line(line).set_record(number);
        self.reader
            .seek(position)
            .map_err(|e| csv_error(&self.path, e))?;
        match self.reader.read_byte_record(&mut self.record) {
            Ok(true) => Ok(Row::new(number, line, self.record.clone())),
            Ok(false) => Err(InputError::At {
                path: self.path.clone(),
                line,
                column: 1,
                message: format!("row {number} is missing; the file changed under the run"),
            }),
            Err(e) => Err(csv_error(&self.path, e)),
        }
    }
}

impl Iterator for OrderReader {
    type Item = Result<Row, InputError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_row()
    }
}

fn csv_error(path: &Path, e: csv::Error) -> InputError {
    let line = e.position().map_or(0, csv::Position::line);
    match e.into_kind() {
        csv::ErrorKind::Io(source) => InputError::Io {
            path: path.to_path_buf(),
            source,
        },
        other => InputError::At {
            path: path.to_path_buf(),
            line,
            column: 1,
            message: format!("{other:?}"),
        },
    }
}

fn check_header(
    path: &Path,
    raw: &csv::ByteRecord,
    schema: Schema<'_>,
) -> Result<Header, InputError> {
    let at = |column: usize, message: String| InputError::At {
        path: path.to_path_buf(),
        line: 1,
        column,
        message,
    };
    let mut names: Vec<String> = Vec::with_capacity(raw.len());
    let mut known = Vec::with_capacity(raw.len());
    let mut send = Vec::with_capacity(raw.len());
    // Name → column, so that the duplicate check stays linear.
    let mut seen: std::collections::HashMap<String, usize> =
        std::collections::HashMap::with_capacity(raw.len());
    // Unknown columns ignored with --allow-unknown-columns: one warning.
    let mut ignored: Vec<(usize, String)> = Vec::new();
    for (i, field) in raw.iter().enumerate() {
        let column = i + 1;
        let name = std::str::from_utf8(field)
            .map_err(|_| at(column, "column name is not valid UTF-8".into()))?
            .trim()
            .to_string();
        if name.is_empty() {
            return Err(at(column, "column name is empty".into()));
        }
        if let Some(first) = seen.insert(name.clone(), column) {
            return Err(at(
                column,
                format!("column `{name}` appears twice (columns {first} and {column}); remove one"),
            ));
        }
        let param = params::find(&name).filter(|p| p.endpoints & schema.endpoints != 0);
        let passed = schema.columns.pass_through.contains(&name);
        if param.is_none() && !passed && schema.columns.allow_unknown {
            ignored.push((column, name.clone()));
        } else if param.is_none() && !passed {
            let hint = match params::suggest(&name, schema.endpoints) {
                Some(s) => format!("; did you mean `{s}`?"),
                None => String::new(),
            };
            return Err(at(
                column,
                format!(
                    "unknown column `{name}`{hint} (send your site's own parameter as-is with \
                     --pass-through {name}, or ignore unknown columns with --allow-unknown-columns)"
                ),
            ));
        }
        send.push(param.is_some() || passed);
        known.push(param);
        names.push(name);
    }
    if !ignored.is_empty() {
        const SHOWN: usize = 10;
        let listed: Vec<String> = ignored
            .iter()
            .take(SHOWN)
            .map(|(column, name)| format!("`{name}` (column {column})"))
            .collect();
        let more = ignored.len().saturating_sub(SHOWN);
        tracing::warn!(
            "{}: ignoring {} unknown column{}: {}{}",
            path.display(),
            ignored.len(),
            if ignored.len() == 1 { "" } else { "s" },
            listed.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        );
    }
    for required in schema.required {
        if !seen.contains_key(*required) {
            return Err(at(
                1,
                format!(
                    "required column `{required}` is missing; the header must name {}",
                    schema.required.join(", ")
                ),
            ));
        }
    }
    Ok(Header::new(names, known, send))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::paynearme::params::{ep, CREATE_REQUIRED};

    #[test]
    fn a_row_read_at_its_offset_equals_the_row_read_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.csv");
        // A byte-order mark, CRLF line ends, a quoted field over three lines.
        std::fs::write(
            &path,
            "\u{feff}site_customer_identifier,order_amount,order_currency,order_type,order_is_standing,site_order_description\r\n\
             C1,10,USD,exact,true,\"one\r\ntwo, \"\"three\"\"\r\nfour\"\r\n\
             C2,11,USD,any,false,plain\r\n\
             C3,12,USD,up-to,true,Ñandú\r\n",
        )
        .unwrap();
        let columns = ColumnOptions::default();
        let schema = || Schema {
            endpoints: ep::CREATE,
            required: CREATE_REQUIRED,
            columns: &columns,
        };
        let rows: Vec<Row> = OrderReader::open(&path, schema())
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(rows.len(), 3);
        let mut seeking = OrderReader::open_for_seeking(&path, schema()).unwrap();
        for row in rows.iter().rev() {
            let again = seeking.read_at(row.offset, row.line, row.number).unwrap();
            assert_eq!(again.number, row.number);
            for i in 0..6 {
                assert_eq!(again.get(i), row.get(i), "row {} field {i}", row.number);
            }
        }
        assert_eq!(rows[0].get(5), Some("one\r\ntwo, \"three\"\r\nfour"));
    }
}
