//! Run-wide stop signal: Ctrl-C (stop taking work, finish in-flight requests)
//! or an abort (credentials rejected, too many failures).

use tokio::sync::watch;

/// Why the run is stopping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    Running,
    /// The user asked to stop; state is kept and the run can resume.
    Interrupted,
    /// No request can succeed; the message says what to fix.
    Aborted(String),
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

/// Installs the Ctrl-C handler: the first asks the run to stop after its
/// in-flight requests, the second exits at once (state is safe either way).
pub fn handle_ctrl_c(shutdown: Shutdown) {
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("interrupted: finishing in-flight requests and saving state (Ctrl-C again to quit now)");
            shutdown.stop(Stop::Interrupted);
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("quitting now; run the same command again to resume");
                std::process::exit(130);
            }
        }
    });
}
