//! The allocator: mimalloc, set up to give memory back promptly.
//!
//! A request allocates in many small pieces; mimalloc costs a fraction of
//! glibc's malloc for that (figures in BENCHMARKS.md). Its defaults keep
//! freed memory and commit arenas eagerly, which doubles peak memory, so
//! both are turned off (eager commit at build time, in `.cargo/config.toml`,
//! as it acts before `main`).

#![allow(unsafe_code)] // mimalloc's option calls are C functions.
use libmimalloc_sys::{mi_option_set, mi_option_t};

/// `mi_option_arena_eager_commit` in mimalloc.h (v3); we build it with 0.
#[cfg(test)]
const ARENA_EAGER_COMMIT: mi_option_t = 4;
/// `mi_option_purge_delay` in mimalloc.h (v3), milliseconds, default 1000.
const PURGE_DELAY: mi_option_t = 15;

/// The allocator `main.rs` installs.
pub type Allocator = mimalloc::MiMalloc;

/// Call first thing in `main`: return freed memory at once.
pub fn tune() {
    // SAFETY: setting mimalloc options is allowed at any time; this one only
    // changes when freed memory is given back.
    unsafe { mi_option_set(PURGE_DELAY, 0) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use libmimalloc_sys::mi_option_get;

    fn option(option: mi_option_t) -> std::ffi::c_long {
        // SAFETY: reading an option has no preconditions.
        unsafe { mi_option_get(option) }
    }

    #[test]
    fn option_numbers_name_the_options_we_mean_and_the_build_flag_took() {
        // Read before `tune` (tests do not call it): a renumbered mimalloc
        // fails here instead of tuning the wrong thing.
        assert_eq!(option(PURGE_DELAY), 1000, "mimalloc's default");
        assert_eq!(option(ARENA_EAGER_COMMIT), 0, "set in .cargo/config.toml");
    }
}
