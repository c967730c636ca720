//! orderbatch: bulk orders through PayNearMe, resumable and rate-limited.
//!
//! See `ARCHITECTURE.md` in the shared docs for the data flow. The binary in
//! `main.rs` is a thin shell over these modules.

pub mod alloc;
pub mod app;
pub mod cells;
pub mod cli;
pub mod config;
#[cfg(feature = "sandbox")]
pub mod demo;
pub mod export;
pub mod files;
pub mod input;
pub mod links;
pub mod lock;
pub mod money;
pub mod pipeline;
pub mod provider;
pub mod report;
#[cfg(feature = "sandbox")]
pub mod sandbox;
pub mod status;
pub mod store;
