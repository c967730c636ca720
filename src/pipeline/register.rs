//! Registering a run's input rows, writing its rejects, and refusing a
//! changed file beside an unfinished run.

use std::path::Path;

use super::mode::Mode;
use super::{derived_order_id, Conflict, PipelineError};
use crate::input::rejects::{RejectsFile, RejectsWriter};
use crate::input::{ColumnOptions, InputError, OrderReader};
use crate::input::{Header, Row};
use crate::money::Amount;
use crate::provider::paynearme::params::ep;
use crate::store::rows::{Identity, NewRow};
use crate::store::{RowState, Store};

/// Rows recorded per transaction while registering the input.
const REGISTER_BATCH: usize = 2000;

/// How `run` settles order identities against earlier runs of the database.
#[derive(Debug, Clone, Copy, Default)]
pub struct IdentityOptions {
    /// `--check-existing`: look identifiers no run knows up at the provider.
    pub check_existing: bool,
    /// `--same-orders` (true) or `--new-orders` (false); `None` when neither.
    pub same_orders: Option<bool>,
}

/// A keyed digest of what a `run` row sends (its create parameters, by
/// name, each [`normalised`]), for recognising a copy of a file without
/// identifiers.
pub(super) fn content_digest(key: &[u8], header: &Header, row: &Row) -> Vec<u8> {
    use hmac::Mac;
    let mut params: Vec<(&str, String)> = row
        .params_for(header, ep::CREATE)
        .into_iter()
        .filter(|(name, _)| *name != "site_order_identifier")
        .map(|(name, value)| (name, normalised(name, value)))
        .filter(|(_, value)| !value.is_empty())
        .collect();
    params.sort_unstable();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
    for (name, value) in params {
        mac.update(name.as_bytes());
        mac.update(&[0]);
        mac.update(value.as_bytes());
        mac.update(&[0]);
    }
    mac.finalize().into_bytes()[..16].to_vec()
}

/// A value as it identifies an order, without what does not change the
/// order: surrounding whitespace, a phone number's punctuation, an e-mail
/// address's case, an amount's trailing zeros (`10.0` is `10.00`).
fn normalised(name: &str, value: &str) -> String {
    let value = value.trim();
    if name.contains("phone") {
        let digits: String = value.chars().filter(char::is_ascii_digit).collect();
        return match value.starts_with('+') {
            true => format!("+{digits}"),
            false => digits,
        };
    }
    if name.contains("email") {
        return value.to_lowercase();
    }
    if name.contains("amount") {
        if let Ok(amount) = value.parse::<Amount>() {
            return amount.to_string();
        }
    }
    value.to_string()
}

/// A file whose rows without `site_order_identifier` (no column, or blank)
/// match rows of an earlier run by content is a copy of that file (edited,
/// grown, reordered, re-encoded): refused until the user says which way to
/// go, since creating those rows again would duplicate the orders.
pub(super) fn refuse_copy_of_earlier_file(
    store: &Store,
    input: &Path,
    mode: Mode,
    columns: &ColumnOptions,
) -> Result<(), PipelineError> {
    if !store.runs()?.iter().any(|r| r.command == mode.command()) {
        return Ok(());
    }
    let mut reader = OrderReader::open(input, mode.schema(columns))?;
    let header = reader.header().clone();
    let id_col = header.index("site_order_identifier");
    let key = store.content_key()?;
    let mut digests = Vec::new();
    while let Some(row) = reader.next_row() {
        let row = row?;
        let has_id = id_col
            .and_then(|i| row.get(i))
            .is_some_and(|v| !v.is_empty());
        if !has_id && mode.check(&header, &row).is_ok() {
            digests.push(content_digest(&key, &header, &row));
        }
    }
    let by_run = store.content_matches(&digests)?;
    let matched: u64 = by_run.iter().map(|(_, n)| n).sum();
    if matched == 0 {
        return Ok(());
    }
    Err(Conflict::CopyOfEarlierFile {
        matched,
        checked: digests.len(),
        input: input.to_path_buf(),
        db: store.path().to_path_buf(),
        by_run,
    }
    .into())
}

/// Records every input row: valid rows as `pending`, invalid ones as
/// `rejected` with their reason. For `run`, a row whose order an earlier
/// run registered adopts it (see [`crate::store::rows::Identity`]).
pub(super) fn register(
    mut store: Store,
    mode: Mode,
    run_id: i64,
    input: &Path,
    columns: &ColumnOptions,
    fp: &str,
    identity: IdentityOptions,
) -> Result<Store, PipelineError> {
    let mut reader = OrderReader::open(input, mode.schema(columns))?;
    let header = reader.header().clone();
    let content_key = (mode == Mode::Run)
        .then(|| store.content_key())
        .transpose()?;
    let amount_col = header.index("order_amount");
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
        let derived = mode == Mode::Run && site_order_identifier.is_none();
        if derived {
            site_order_identifier = Some(derived_order_id(fp, row.number));
        }
        let identity = content_key.as_ref().map(|key| Identity {
            order_amount: text(amount_col)
                .and_then(|a| a.parse::<Amount>().ok())
                .map(|a| a.to_string()),
            content: (derived && rejection.is_none()).then(|| content_digest(key, &header, &row)),
            same_orders: identity.same_orders == Some(true),
            check_existing: identity.check_existing,
        });
        batch.push(NewRow {
            row_number: row.number,
            line: row.line,
            site_customer_identifier: text(customer_col),
            site_order_identifier,
            unique_order_id: mode.unique_order_ids(),
            pnm_order_identifier: text(pnm_order_col),
            pnm_customer_identifier: text(pnm_customer_col),
            rejection,
            identity,
            input_offset: Some(row.offset),
            known_customer: matches!(mode, Mode::Refresh { .. } | Mode::Change),
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
/// An unfinished run that sent nothing (killed while it registered, or
/// before its first request) is forgotten instead: there is nothing to
/// finish, and its rows would otherwise hold back every later file. Runs in
/// `beside` (this process's own, in flight) are let be.
pub(super) fn refuse_if_unfinished_other(
    store: &Store,
    command: &str,
    fp: &str,
    beside: &[i64],
) -> Result<(), PipelineError> {
    for run in store.runs()? {
        if run.command != command
            || run.fingerprint == fp
            || run.finished_at.is_some()
            || beside.contains(&run.id)
        {
            continue;
        }
        if store.forget_unsent_run(run.id)? {
            tracing::warn!(
                "forgot unfinished run {} of {} (fingerprint {}): no request had left for it",
                run.id,
                run.input_path,
                run.fingerprint
            );
            continue;
        }
        let counts = store.state_counts(run.id)?;
        if counts.iter().any(|(s, n)| !s.is_final() && *n > 0) {
            return Err(Conflict::UnfinishedOtherRun {
                db: store.path().to_path_buf(),
                run: run.id,
                input: run.input_path,
                fingerprint: run.fingerprint,
                found: fp.to_string(),
            }
            .into());
        }
    }
    Ok(())
}
