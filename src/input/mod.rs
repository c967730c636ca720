//! Order files: streaming CSV reading, row checks and the file fingerprint.

pub mod fingerprint;
pub mod reader;
pub mod validate;

pub use reader::{Header, InputError, OrderReader, Row};
