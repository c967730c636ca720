//! CSV export of a run's results: provider values byte for byte (see
//! [`crate::cells`]).

use std::path::Path;

use crate::cells::Cells;
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

/// A row's error text for the export: none for a clean `done` row.
fn error_text(row: &StoredRow) -> String {
    let clean =
        row.state == RowState::Done && row.last_error_code.as_deref() != Some("link_not_recorded");
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
        row.state.as_str().to_string(),
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
        row.state.as_str().to_string(),
        error,
    ]
}

/// Turns a stored row into export cells.
type ToRecord = fn(&StoredRow) -> Vec<String>;

/// Writes every row of `run_id` to `out` (mode 0600); returns the row count.
pub fn export(store: &Store, run_id: i64, out: &Path, cells: Cells) -> Result<u64, ExportError> {
    let write_err = |e: &dyn std::fmt::Display| ExportError::Write {
        path: out.display().to_string(),
        detail: e.to_string(),
    };
    // Written beside `out` and renamed over it once whole: an export killed
    // half-way leaves the earlier file as it was.
    let file = crate::files::replace_private(out).map_err(|e| write_err(&e))?;
    let mut writer = csv::Writer::from_writer(std::io::BufWriter::new(file));
    let commerce_engine = store
        .run(run_id)?
        .is_some_and(|r| r.command == crate::store::runs::commands::CE_RETRY_PAYMENTS);
    let (columns, to_record): (&[&str], ToRecord) = if commerce_engine {
        (&CE_COLUMNS, ce_record)
    } else {
        (&COLUMNS, record)
    };
    writer.write_record(columns).map_err(|e| write_err(&e))?;
    let mut count = 0u64;
    let mut failure = None;
    store.all_rows(run_id, |row| {
        let record = to_record(&row);
        let last = record.len() - 1;
        // The last column is the error: our own free text.
        let written = record.iter().enumerate().map(|(i, c)| {
            if i == last {
                cells.text(c).into_owned()
            } else {
                cells.data(c).into_owned()
            }
        });
        match writer.write_record(written) {
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
    let buffered = writer.into_inner().map_err(|e| write_err(&e))?;
    let file = buffered
        .into_inner()
        .map_err(|e| write_err(&e.into_error()))?;
    file.commit().map_err(|e| write_err(&e))?;
    Ok(count)
}
