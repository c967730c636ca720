//! Registering a run's input rows, writing its rejects, and refusing a
//! changed file beside an unfinished run.

use std::path::Path;

use super::mode::Mode;
use super::{derived_order_id, PipelineError};
use crate::input::rejects::{RejectsFile, RejectsWriter};
use crate::input::{ColumnOptions, InputError, OrderReader};
use crate::store::rows::NewRow;
use crate::store::{RowState, Store};

/// Rows recorded per transaction while registering the input.
const REGISTER_BATCH: usize = 2000;

/// Records every input row: valid rows as `pending`, invalid ones as
/// `rejected` with their reason.
pub(super) fn register(
    mut store: Store,
    mode: Mode,
    run_id: i64,
    input: &Path,
    columns: &ColumnOptions,
    fp: &str,
) -> Result<Store, PipelineError> {
    let mut reader = OrderReader::open(input, mode.schema(columns))?;
    let header = reader.header().clone();
    let col = |name: &str| header.index(name);
    let customer_col = col("site_customer_identifier");
    // A Commerce Engine row's order is its order_number.
    let order_col = match mode {
        Mode::CeRetry { .. } => col("order_number"),
        _ => col("site_order_identifier"),
    };
    let (pnm_order_col, pnm_customer_col) =
        (col("pnm_order_identifier"), col("pnm_customer_identifier"));
    let mut batch = Vec::with_capacity(REGISTER_BATCH);
    let mut total = 0u64;
    while let Some(row) = reader.next_row() {
        let row = row?;
        total += 1;
        let rejection = mode
            .check(&header, &row)
            .err()
            .map(|r| (r.code(), format!("line {}: {r}", row.line)));
        let text = |col: Option<usize>| {
            col.and_then(|i| row.get(i))
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        let mut site_order_identifier = text(order_col);
        if mode == Mode::Run && site_order_identifier.is_none() {
            site_order_identifier = Some(derived_order_id(fp, row.number));
        }
        batch.push(NewRow {
            row_number: row.number,
            line: row.line,
            site_customer_identifier: text(customer_col),
            site_order_identifier,
            unique_order_id: mode.unique_order_ids(),
            pnm_order_identifier: text(pnm_order_col),
            pnm_customer_identifier: text(pnm_customer_col),
            rejection,
        });
        if batch.len() == REGISTER_BATCH {
            store.insert_rows(run_id, &batch)?;
            batch.clear();
        }
    }
    store.insert_rows(run_id, &batch)?;
    store.mark_registered(run_id, total)?;
    Ok(store)
}

/// Writes the run's rejected rows, with their original columns re-read
/// from the input, to `out`.
pub(super) fn write_rejects(
    db: &Path,
    mode: Mode,
    run_id: i64,
    input: &Path,
    columns: &ColumnOptions,
    out: &RejectsFile,
) -> Result<(), PipelineError> {
    let store = Store::open_reader(db)?;
    let mut reader = OrderReader::open(input, mode.schema(columns))?;
    let io_err = |source| {
        PipelineError::Input(InputError::Io {
            path: out.path.clone(),
            source,
        })
    };
    let mut writer = RejectsWriter::create(out, reader.header()).map_err(io_err)?;
    let mut failure = None;
    store.for_each_row(run_id, &[RowState::Rejected], false, |stored| {
        while let Some(Ok(row)) = reader.next_row() {
            if row.number == stored.row_number {
                let error = stored.last_error.as_deref().unwrap_or_default();
                if let Err(e) = writer.write(&row, error) {
                    failure = Some(io_err(e));
                    return false;
                }
                break;
            }
        }
        true
    })?;
    if let Some(e) = failure {
        return Err(e);
    }
    writer.finish().map_err(io_err)
}

/// A changed input file must not start a second run beside an unfinished one:
/// rows without their own `site_order_identifier` would be created again.
pub(super) fn refuse_if_unfinished_other(
    store: &Store,
    command: &str,
    fp: &str,
) -> Result<(), PipelineError> {
    for run in store.runs()? {
        if run.command != command || run.fingerprint == fp || run.finished_at.is_some() {
            continue;
        }
        let counts = store.state_counts(run.id)?;
        if counts.iter().any(|(s, n)| !s.is_final() && *n > 0) {
            return Err(PipelineError::Conflict(format!(
                "{} holds unfinished run {} of {} (fingerprint {}), and this input's content differs \
                 (fingerprint {fp}). Finish that run with the original file, or use another --db; \
                 starting over beside it could create orders twice",
                store.path().display(),
                run.id,
                run.input_path,
                run.fingerprint
            )));
        }
    }
    Ok(())
}
