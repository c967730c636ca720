//! PayNearMe API 3.0: parameter table, signing, response types, client.

pub mod client;
pub mod params;
pub mod sign;
pub mod types;

pub use client::{Endpoint, PnmClient, PnmCredentials};
pub use types::PnmOrder;
