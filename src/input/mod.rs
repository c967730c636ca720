//! Order files: streaming CSV reading, row checks and the file fingerprint.

pub mod check;
pub mod fingerprint;
pub mod reader;
pub mod rejects;
pub mod validate;

pub use reader::{ColumnOptions, Header, InputError, OrderReader, Row};
