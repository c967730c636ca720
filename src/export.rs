//! CSV export of a run's results, safe to open in a spreadsheet.

use std::io::Write;
use std::path::Path;

use crate::store::{RowState, Store, StoreError, StoredRow};

/// Export columns, in order.
pub const COLUMNS: [&str; 11] = [
    "row_number",
    "site_customer_identifier",
    "site_order_identifier",
    "pnm_order_identifier",
    "pnm_customer_identifier",
    "embedded_js_url",
    "embedded_js_url_expires_at",
    "secure_smart_token",
    "secure_smart_link",
    "status",
    "error",
];

/// Export columns of a Commerce Engine `retry-payments` run.
pub const CE_COLUMNS: [&str; 8] = [
    "row_number",
    "order_number",
    "payment_id",
    "payment_status",
    "payment_link",
    "payment_link_expiry",
    "status",
    "error",
];

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write {path}: {detail}")]
    Write { path: String, detail: String },
}

/// Neutralises a cell a spreadsheet would run as a formula (OWASP CSV
/// injection guidance): a leading `=`, `+`, `-`, `@`, tab or carriage return
/// gets a `'` in front. Only exports are changed; requests and the state
/// database keep the original value.
pub fn spreadsheet_safe(cell: &str) -> std::borrow::Cow<'_, str> {
    match cell.as_bytes().first() {
        Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r') => format!("'{cell}").into(),
        _ => cell.into(),
    }
}

/// A row's error text for the export: none for a clean `done` row.
fn error_text(row: &StoredRow) -> String {
    let clean = row.state == RowState::Done.as_str()
        && row.last_error_code.as_deref() != Some("link_not_recorded");
    if clean {
        String::new()
    } else {
        row.last_error.clone().unwrap_or_default()
    }
}

fn ce_record(row: &StoredRow) -> Vec<String> {
    let opt = |v: &Option<String>| v.clone().unwrap_or_default();
    vec![
        row.input_row.to_string(),
        opt(&row.site_order_identifier),
        opt(&row.payment_id),
        opt(&row.payment_status),
        opt(&row.payment_link),
        opt(&row.payment_link_expiry),
        row.state.clone(),
        error_text(row),
    ]
}

fn record(row: &StoredRow) -> Vec<String> {
    let opt = |v: &Option<String>| v.clone().unwrap_or_default();
    let error = error_text(row);
    vec![
        row.input_row.to_string(),
        opt(&row.site_customer_identifier),
        opt(&row.site_order_identifier),
        opt(&row.pnm_order_identifier),
        opt(&row.pnm_customer_identifier),
        opt(&row.embedded_js_url),
        opt(&row.embedded_js_url_expires_at),
        opt(&row.secure_smart_token),
        opt(&row.secure_smart_link),
        row.state.clone(),
        error,
    ]
}

/// Turns a stored row into export cells.
type ToRecord = fn(&StoredRow) -> Vec<String>;

/// Writes every row of `run_id` to `out` (mode 0600); returns the row count.
pub fn export(store: &Store, run_id: i64, out: &Path) -> Result<u64, ExportError> {
    let write_err = |e: &dyn std::fmt::Display| ExportError::Write {
        path: out.display().to_string(),
        detail: e.to_string(),
    };
    let file = crate::files::write_private(out).map_err(|e| write_err(&e))?;
    let mut writer = csv::Writer::from_writer(std::io::BufWriter::new(file));
    let commerce_engine = store.run(run_id)?.is_some_and(|r| {
        r.command == crate::pipeline::Mode::CeRetry { max_wait_secs: 0 }.command()
    });
    let (columns, to_record): (&[&str], ToRecord) = if commerce_engine {
        (&CE_COLUMNS, ce_record)
    } else {
        (&COLUMNS, record)
    };
    writer.write_record(columns).map_err(|e| write_err(&e))?;
    let mut count = 0u64;
    let mut failure = None;
    store.all_rows(run_id, |row| {
        let cells = to_record(&row);
        match writer.write_record(cells.iter().map(|c| spreadsheet_safe(c).into_owned())) {
            Ok(()) => {
                count += 1;
                true
            }
            Err(e) => {
                failure = Some(write_err(&e));
                false
            }
        }
    })?;
    if let Some(e) = failure {
        return Err(e);
    }
    let mut inner = writer.into_inner().map_err(|e| write_err(&e))?;
    inner.flush().map_err(|e| write_err(&e))?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula_cells_are_neutralised_and_others_kept() {
        for cell in ["=1+1", "+1", "-2", "@SUM(A1)", "\tx", "\rx"] {
            assert_eq!(spreadsheet_safe(cell), format!("'{cell}"));
        }
        for cell in ["", "abc", "https://x", "12.50", "José"] {
            assert_eq!(spreadsheet_safe(cell), cell);
        }
    }
}
