//! How values are written into the CSV files we produce (exports, rejects).
//!
//! Provider values (identifiers, URLs, expiries, tokens) and the user's own
//! input are data: by default they are written byte for byte, since a
//! script or an agent reading the file must get exactly what the provider
//! issued. Free text we write ourselves (the `error` column) is always
//! neutralised against spreadsheet formulas. `--spreadsheet-safe` opts into
//! neutralising every cell, for files meant to be opened in a spreadsheet.

use std::borrow::Cow;

/// Whether data cells are neutralised against spreadsheet formulas.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Cells {
    /// Data byte for byte (the default).
    #[default]
    Verbatim,
    /// Every cell a spreadsheet would run as a formula gets a `'` in front.
    SpreadsheetSafe,
}

impl Cells {
    /// `--spreadsheet-safe` given or not.
    pub fn from_flag(spreadsheet_safe: bool) -> Self {
        if spreadsheet_safe {
            Cells::SpreadsheetSafe
        } else {
            Cells::Verbatim
        }
    }

    /// A data cell: verbatim unless the file is meant for a spreadsheet.
    pub fn data<'a>(self, cell: &'a str) -> Cow<'a, str> {
        match self {
            Cells::Verbatim => cell.into(),
            Cells::SpreadsheetSafe => spreadsheet_safe(cell),
        }
    }

    /// A free-text cell we wrote ourselves: always neutralised.
    pub fn text(self, cell: &str) -> Cow<'_, str> {
        spreadsheet_safe(cell)
    }
}

/// Neutralises a cell a spreadsheet would run as a formula (OWASP CSV
/// injection guidance): a leading `=`, `+`, `-`, `@`, tab or carriage return
/// gets a `'` in front.
pub fn spreadsheet_safe(cell: &str) -> Cow<'_, str> {
    match cell.as_bytes().first() {
        Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r') => format!("'{cell}").into(),
        _ => cell.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_verbatim_unless_asked_and_text_is_always_neutralised() {
        for cell in ["=1+1", "+1", "-abc", "@x", "\tx", "\rx"] {
            assert_eq!(Cells::Verbatim.data(cell), cell);
            assert_eq!(Cells::SpreadsheetSafe.data(cell), format!("'{cell}"));
            assert_eq!(Cells::Verbatim.text(cell), format!("'{cell}"));
        }
        for cell in ["abc", "", "1-2", "a=b", "https://x/?a=1,b=\"2\""] {
            assert_eq!(Cells::SpreadsheetSafe.data(cell), cell);
            assert_eq!(Cells::Verbatim.text(cell), cell);
        }
    }
}
