//! PayNearMe API 3.0: parameter table, signing, response types, client.

pub mod client;
pub mod oauth;
pub mod params;
pub mod sign;
pub mod types;

pub use client::{Endpoint, PnmAuth, PnmClient, PnmCredentials};
pub use types::PnmOrder;
