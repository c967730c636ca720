//! orderbatch: bulk orders through PayNearMe, resumable and rate-limited.
//!
//! See `ARCHITECTURE.md` at the project root for the data flow and the
//! module map. The binary in `main.rs` is a thin shell over these modules.

pub mod alloc;
pub mod app;
pub mod cells;
pub mod cli;
pub mod config;
#[cfg(feature = "sandbox")]
pub mod demo;
pub mod exit;
pub mod export;
pub mod files;
pub mod inbox;
pub mod input;
pub mod lock;
pub mod money;
pub mod pipeline;
pub mod provider;
pub mod report;
pub mod report_html;
#[cfg(feature = "sandbox")]
pub mod sandbox;
pub mod serve;
pub mod status;
pub mod store;
pub mod timeline;
