//! The rejects file: every rejected row's original columns, then `line` and
//! `error`. PII columns are redacted unless the user asks for them.

use std::io::BufWriter;

use super::reader::{Header, Row};
use crate::cells::Cells;

/// Where rejected rows go and how.
#[derive(Debug, Clone)]
pub struct RejectsFile {
    pub path: std::path::PathBuf,
    /// Keep PII cells instead of `[redacted]`.
    pub include_pii: bool,
    pub cells: Cells,
}

/// What a redacted PII cell holds.
pub const REDACTED: &str = "[redacted]";

/// Writes rejected rows as they are found.
pub struct RejectsWriter {
    writer: csv::Writer<BufWriter<crate::files::Replacement>>,
    /// Columns to redact.
    redact: Vec<bool>,
    width: usize,
    cells: Cells,
}

impl RejectsWriter {
    /// Starts `path` (mode 0600) with the input's columns plus `line, error`;
    /// it replaces an earlier file only once [`finish`](Self::finish)ed.
    pub fn create(to: &RejectsFile, header: &Header) -> std::io::Result<Self> {
        let (path, include_pii, cells) = (to.path.as_path(), to.include_pii, to.cells);
        let file = crate::files::replace_private(path)?;
        let mut writer = csv::Writer::from_writer(BufWriter::new(file));
        let mut names: Vec<&str> = header.names.iter().map(String::as_str).collect();
        names.extend(["line", "error"]);
        writer.write_record(&names)?;
        let redact = header
            .params
            .iter()
            .map(|p| !include_pii && p.is_some_and(|p| p.pii))
            .collect();
        Ok(RejectsWriter {
            writer,
            redact,
            width: header.names.len(),
            cells,
        })
    }

    /// Writes one rejected row.
    pub fn write(&mut self, row: &Row, error: &str) -> std::io::Result<()> {
        let mut cells: Vec<String> = (0..self.width)
            .map(|i| {
                let raw = row.raw(i).unwrap_or_default();
                if self.redact[i] && !raw.is_empty() {
                    REDACTED.to_string()
                } else {
                    self.cells.data(&String::from_utf8_lossy(raw)).into_owned()
                }
            })
            .collect();
        cells.push(row.line.to_string());
        cells.push(self.cells.text(error).into_owned());
        self.writer.write_record(&cells)?;
        Ok(())
    }

    /// Writes the file out whole, in place of any earlier one.
    pub fn finish(self) -> std::io::Result<()> {
        let buffered = self
            .writer
            .into_inner()
            .map_err(csv::IntoInnerError::into_error)?;
        buffered
            .into_inner()
            .map_err(std::io::IntoInnerError::into_error)?
            .commit()
    }
}
