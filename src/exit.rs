//! How a command ends: one enum, its exit status, and the table `--help`
//! shows (generated from the same list, so the two cannot drift apart).

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Every row done (or nothing to do).
    Done,
    /// Finished, but some rows failed, were rejected or are unknown.
    RowsLeft,
    /// Invalid invocation, configuration or input: nothing was sent.
    Usage,
    /// Stopped early: credentials or clock rejected, or `--max-errors`.
    Stopped,
    /// Rows deferred to a later run (Commerce Engine retry windows).
    Deferred,
    /// Stopped by a local failure after requests were sent.
    FailedAfterSend,
    /// Interrupted by this signal's number (Ctrl-C 2, SIGTERM 15).
    Signal(u8),
}

/// What each exit status means, in the order `--help` lists them.
const MEANINGS: [(Exit, &str); 9] = [
    (Exit::Done, "every row done"),
    (
        Exit::RowsLeft,
        "finished, but some rows failed, were rejected or are unknown (see the export or `status`)",
    ),
    (
        Exit::Usage,
        "invalid invocation, configuration or input file (nothing was sent)",
    ),
    (
        Exit::Stopped,
        "stopped early: the provider rejected the credentials or the clock, or --max-errors",
    ),
    (
        Exit::Deferred,
        "rows deferred (ce retry-payments): run the same command again after the time shown",
    ),
    (
        Exit::FailedAfterSend,
        "stopped by a local failure after requests were sent (disk full, internal error):\n       \
         state kept; fix the cause and run the same command again",
    ),
    (
        Exit::Signal(2),
        "interrupted by Ctrl-C (state kept: run the same command again to resume)",
    ),
    (
        Exit::Signal(15),
        "stopped by SIGTERM, like Ctrl-C (state kept: run the same command again to resume)",
    ),
    (
        Exit::Signal(9),
        "killed (SIGKILL, e.g. the OOM killer): state kept; run the same command again",
    ),
];

impl Exit {
    /// The process's exit status.
    pub fn status(self) -> u8 {
        match self {
            Exit::Done => 0,
            Exit::RowsLeft => 1,
            Exit::Usage => 2,
            Exit::Stopped => 3,
            Exit::Deferred => 4,
            Exit::FailedAfterSend => 5,
            Exit::Signal(n) => 128u8.saturating_add(n),
        }
    }

    /// The worse of two outcomes (for commands over several files): an
    /// interruption over a local failure over a stop, and so on.
    pub fn worst(self, other: Exit) -> Exit {
        let rank = |e: Exit| match e {
            Exit::Done => 0,
            Exit::RowsLeft => 1,
            Exit::Deferred => 2,
            Exit::Usage => 3,
            Exit::Stopped => 4,
            Exit::FailedAfterSend => 5,
            Exit::Signal(_) => 6,
        };
        if rank(other) > rank(self) {
            other
        } else {
            self
        }
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(exit: Exit) -> Self {
        std::process::ExitCode::from(exit.status())
    }
}

/// The exit-status table of `--help`.
pub fn help() -> String {
    let mut text = String::from("Exit codes:");
    for (exit, meaning) in MEANINGS {
        text.push_str(&format!("\n  {:<4} {meaning}", exit.status()));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_has_its_own_status_and_a_line_in_the_help() {
        let mut seen = std::collections::HashSet::new();
        for (exit, _) in MEANINGS {
            assert!(seen.insert(exit.status()), "{exit:?} shares its status");
            assert!(help().contains(&format!("\n  {:<4} ", exit.status())));
        }
        assert_eq!(Exit::Signal(2).status(), 130);
        assert_eq!(Exit::Signal(15).status(), 143);
    }

    #[test]
    fn the_worst_outcome_wins_in_either_order() {
        let all = MEANINGS.map(|(e, _)| e);
        for a in all {
            for b in all {
                let w = a.worst(b);
                assert!(w == a || w == b);
                assert_eq!(w.worst(a), w);
                assert_eq!(w.worst(b), w);
            }
            assert_eq!(a.worst(Exit::Done), a);
        }
        assert_eq!(
            Exit::RowsLeft.worst(Exit::FailedAfterSend),
            Exit::FailedAfterSend
        );
    }
}
