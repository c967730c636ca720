//! Retry policy: exponential backoff with jitter for transient errors, a
//! shared gate that pauses every worker after a 429, and separate caps so
//! 429s never use up a row's attempts.

use std::sync::Mutex;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::time::Instant;

use crate::provider::{ErrorClass, ProviderError};

/// Most 429 answers one request waits out before its row fails.
pub const MAX_RATE_LIMITED: u32 = 50;
/// Wait after a 429 that names no `Retry-After`.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Pauses every worker until the provider's `Retry-After` has passed.
#[derive(Debug, Default)]
pub struct Gate {
    until: Mutex<Option<Instant>>,
}

impl Gate {
    /// Closes the gate for `wait` from now (never shortens a longer pause).
    pub fn pause(&self, wait: Duration) {
        let until = Instant::now() + wait;
        let mut current = self.until.lock().unwrap();
        if current.is_none_or(|c| c < until) {
            *current = Some(until);
        }
    }

    /// Until when the gate is closed (it may be in the past).
    pub fn until(&self) -> Option<Instant> {
        *self.until.lock().unwrap()
    }

    /// Waits while the gate is closed.
    pub async fn wait(&self) {
        loop {
            let until = *self.until.lock().unwrap();
            match until {
                Some(t) if t > Instant::now() => tokio::time::sleep_until(t).await,
                _ => return,
            }
        }
    }
}

/// What to do after a failed attempt.
#[derive(Debug)]
pub enum Next {
    /// Try again after this delay.
    Retry(Duration),
    /// Give up on this request: the row fails with the error.
    Fail(ProviderError),
    /// Stop the whole run: the error says no request can succeed.
    Abort(ProviderError),
}

/// The attempt budget of one request.
pub struct Attempts {
    backoff: backon::ExponentialBackoff,
    pub transient: u32,
    pub rate_limited: u32,
    max_attempts: u32,
}

impl Attempts {
    /// A budget of `max_attempts` tries for transient errors.
    pub fn new(max_attempts: u32, base_delay: Duration) -> Self {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(base_delay)
            .with_max_delay(Duration::from_secs(30))
            .with_jitter()
            .without_max_times()
            .build();
        Attempts {
            backoff,
            transient: 0,
            rate_limited: 0,
            max_attempts: max_attempts.max(1),
        }
    }

    /// Decides what follows `error`; a 429 closes `gate`.
    pub fn after(&mut self, error: ProviderError, gate: &Gate) -> Next {
        match error.class() {
            ErrorClass::Auth => Next::Abort(error),
            ErrorClass::Permanent => Next::Fail(error),
            ErrorClass::RateLimited(wait) => {
                self.rate_limited += 1;
                gate.pause(wait.unwrap_or(DEFAULT_RETRY_AFTER));
                if self.rate_limited > MAX_RATE_LIMITED {
                    Next::Fail(error)
                } else {
                    Next::Retry(Duration::ZERO)
                }
            }
            ErrorClass::Transient { .. } => {
                self.transient += 1;
                if self.transient >= self.max_attempts {
                    Next::Fail(error)
                } else {
                    Next::Retry(self.backoff.next().unwrap_or(Duration::from_secs(30)))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::TransportKind;

    fn timeout() -> ProviderError {
        ProviderError::Transport {
            endpoint: "create_order",
            kind: TransportKind::Timeout,
            detail: String::new(),
        }
    }

    fn limited() -> ProviderError {
        ProviderError::RateLimited {
            endpoint: "create_order",
            retry_after: Some(Duration::from_millis(300)),
        }
    }

    #[test]
    fn transient_errors_retry_until_max_attempts() {
        let gate = Gate::default();
        let mut attempts = Attempts::new(3, Duration::from_millis(10));
        assert!(matches!(attempts.after(timeout(), &gate), Next::Retry(_)));
        assert!(matches!(attempts.after(timeout(), &gate), Next::Retry(_)));
        assert!(matches!(attempts.after(timeout(), &gate), Next::Fail(_)));
    }

    #[test]
    fn rate_limits_do_not_use_up_attempts() {
        let gate = Gate::default();
        let mut attempts = Attempts::new(2, Duration::from_millis(10));
        for _ in 0..MAX_RATE_LIMITED {
            assert!(matches!(attempts.after(limited(), &gate), Next::Retry(_)));
        }
        assert_eq!(attempts.transient, 0);
        assert!(matches!(attempts.after(timeout(), &gate), Next::Retry(_)));
        assert!(matches!(attempts.after(limited(), &gate), Next::Fail(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_pauses_every_waiter_until_retry_after() {
        let gate = std::sync::Arc::new(Gate::default());
        let mut attempts = Attempts::new(3, Duration::from_millis(10));
        let start = Instant::now();
        attempts.after(limited(), &gate);
        let others: Vec<_> = (0..3)
            .map(|_| {
                let gate = gate.clone();
                tokio::spawn(async move {
                    gate.wait().await;
                    Instant::now()
                })
            })
            .collect();
        for other in others {
            let passed = other.await.unwrap();
            assert!(passed - start >= Duration::from_millis(300));
        }
        // A shorter pause never shortens the longer one already in force.
        gate.pause(Duration::from_secs(5));
        gate.pause(Duration::from_secs(1));
        let before = Instant::now();
        gate.wait().await;
        assert!(Instant::now() - before >= Duration::from_secs(5));
    }

    #[test]
    fn permanent_fails_and_auth_aborts() {
        let gate = Gate::default();
        let mut attempts = Attempts::new(8, Duration::from_millis(10));
        let api = |status, code: &str| ProviderError::Api {
            endpoint: "create_order",
            status,
            code: code.into(),
            description: String::new(),
        };
        assert!(matches!(
            attempts.after(api(400, "invalid_parameter"), &gate),
            Next::Fail(_)
        ));
        assert!(matches!(
            attempts.after(api(401, "invalid_signature"), &gate),
            Next::Abort(_)
        ));
    }
}
