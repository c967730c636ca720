mod chaos;
mod config;
mod input;
mod nightly;
mod ops;
mod resume;
mod run;
mod security;
