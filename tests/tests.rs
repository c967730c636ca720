//! Integration tests: one binary; each module drives the real `orderbatch`
//! binary against a real sandbox server on 127.0.0.1:0.

mod suite;
mod util;
