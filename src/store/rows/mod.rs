//! Rows: where each is (`state`), how the input's rows are recorded
//! (`register`), the reads the engine and the exports use (`scan`), and
//! what a run's end and its reports read (`summary`).

mod register;
mod scan;
mod state;
mod summary;

pub use register::{Identity, NewRow, CONFLICTING_ORDER, DUPLICATE_ORDER_ID};
pub use scan::StoredRow;
pub use state::{Requeue, RowState};
#[cfg(test)]
pub(crate) use summary::ERROR_SUMMARY;
