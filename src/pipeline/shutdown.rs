//! Run-wide stop signal: Ctrl-C or SIGTERM (stop taking work, finish
//! in-flight requests) or an abort (credentials rejected, too many failures).

use tokio::sync::watch;

use crate::exit::Exit;

/// Why the run is stopping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    Running,
    /// The user (Ctrl-C) or a service manager (SIGTERM) asked to stop;
    /// state is kept and the run can resume.
    Interrupted(Signal),
    /// No request can succeed; the message says what to fix.
    Aborted(String),
}

/// The signal that asked a run to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT: Ctrl-C.
    Interrupt,
    /// SIGTERM: how systemd, Kubernetes and `kill` stop a job.
    Terminate,
}

impl Signal {
    /// The exit status of a process stopped by this signal: 128 + its number.
    pub fn number(self) -> u8 {
        match self {
            Signal::Interrupt => 2,
            Signal::Terminate => 15,
        }
    }

    /// How messages name it.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Interrupt => "Ctrl-C",
            Signal::Terminate => "SIGTERM",
        }
    }
}

/// Shared by every task of a run; cheap to clone.
#[derive(Debug, Clone)]
pub struct Shutdown {
    tx: std::sync::Arc<watch::Sender<Stop>>,
    rx: watch::Receiver<Stop>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        let (tx, rx) = watch::channel(Stop::Running);
        Shutdown {
            tx: std::sync::Arc::new(tx),
            rx,
        }
    }

    /// Asks every task to stop taking new work. The first reason wins.
    pub fn stop(&self, why: Stop) {
        self.tx.send_if_modified(|current| {
            if *current == Stop::Running {
                *current = why;
                true
            } else {
                false
            }
        });
    }

    /// Whether a stop was asked for.
    pub fn is_stopping(&self) -> bool {
        *self.rx.borrow() != Stop::Running
    }

    /// The current reason.
    pub fn state(&self) -> Stop {
        self.rx.borrow().clone()
    }

    /// Resolves once a stop is asked for.
    pub async fn stopped(&self) {
        let mut rx = self.rx.clone();
        let _ = rx.wait_for(|s| *s != Stop::Running).await;
    }
}

/// How the process quits at once on a second signal (set by the binary:
/// a library leaves the process alone).
static QUIT: std::sync::OnceLock<fn(Exit) -> !> = std::sync::OnceLock::new();

/// Sets how the process quits at once when a second Ctrl-C or SIGTERM
/// comes (the first asks the run to stop).
pub fn quit_on_second_signal(quit: fn(Exit) -> !) {
    let _ = QUIT.set(quit);
}

/// Installs the handler of Ctrl-C and SIGTERM (treated alike): the first
/// asks the run to stop after its in-flight requests, the second (either
/// one) exits at once with 128 + its number (state is safe either way).
/// Must be called inside the runtime.
pub fn handle_signals(shutdown: Shutdown) {
    let mut signals = Signals::new();
    tokio::spawn(async move {
        let Some(first) = signals.next().await else {
            return;
        };
        eprintln!(
            "{}: finishing in-flight requests and saving state (Ctrl-C or SIGTERM again to quit now)",
            match first {
                Signal::Interrupt => "interrupted",
                Signal::Terminate => "terminated (SIGTERM)",
            }
        );
        shutdown.stop(Stop::Interrupted(first));
        if let Some(second) = signals.next().await {
            eprintln!("quitting now; run the same command again to resume");
            if let Some(quit) = QUIT.get() {
                quit(Exit::Signal(second.number()));
            }
        }
    });
}

/// Ctrl-C and, on Unix, SIGTERM, as one stream.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    /// Registers the handlers now, so a signal that comes before the first
    /// `next` is not lost.
    fn new() -> Self {
        Signals {
            #[cfg(unix)]
            term: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok(),
        }
    }

    /// The next signal; `None` when none can be received any more.
    async fn next(&mut self) -> Option<Signal> {
        #[cfg(unix)]
        {
            let term = async {
                match &mut self.term {
                    Some(term) => term.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = tokio::signal::ctrl_c() => r.ok().map(|()| Signal::Interrupt),
                Some(()) = term => Some(Signal::Terminate),
            }
        }
        #[cfg(not(unix))]
        tokio::signal::ctrl_c()
            .await
            .ok()
            .map(|()| Signal::Interrupt)
    }
}
