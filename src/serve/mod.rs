//! `orderbatch serve`: just-in-time embedded JS URLs and smart links for
//! agents, from the state database, refreshed at the provider only when
//! the stored URL has less than `--min-validity` left.
//!
//! What it promises:
//! - A URL served has at least `min_validity` left, unless the provider
//!   could not give one (the answer then says `"min_validity_met": false`).
//!   A URL inside the window is regenerated with `force=true` (without it
//!   the provider hands back the same, unexpired URL), once: a URL the
//!   provider just gave is not regenerated again before it expires.
//! - Concurrent callers for one order share one provider call and its
//!   outcome, failures included (a single-flight per order and kind).
//! - No caller waits longer than `max_wait`: then a 503 with `Retry-After`
//!   (the call it waited for still finishes and is stored).
//! - Every provider call of one customer goes through that customer's
//!   lock (a customer's requests never overlap at the provider), through
//!   `concurrency` slots and one rate limiter; transient failures are
//!   tried again up to `max_attempts` times within the first caller's wait.
//! - The database is used only from blocking threads, never from the
//!   async workers; a database another process keeps locked gives a quick
//!   503 with `Retry-After`, and `/healthz` never touches it.

// A handler's early answers travel as `Err(Response)` straight to the
// client; boxing them would buy nothing.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::future::{BoxFuture, FutureExt, Shared as SharedFuture};
use governor::{DefaultDirectRateLimiter, RateLimiter};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::lock::{CustomerLease, CustomerLocks};
use crate::pipeline::RunSpec;
use crate::provider::paynearme::{PnmClient, PnmOrder};
use crate::provider::{ErrorClass, ProviderError, TransportKind};
use crate::store::served::ServedOrder;
use crate::store::{Store, StoreError};

mod flight;
mod handlers;
mod metrics;

pub use flight::sendable_token;
use flight::*;
use handlers::*;
use metrics::*;

/// How long a regenerated URL is valid, as the provider documents it.
pub const URL_LIFETIME: Duration = Duration::from_secs(30 * 60);

/// What the server needs.
pub struct LinksConfig {
    pub db: PathBuf,
    /// The bearer token every endpoint but `/healthz` asks for.
    pub token: SecretString,
    /// A stored URL with less than this left is regenerated first.
    pub min_validity: Duration,
    /// Provider calls per second; `None` is unlimited.
    pub rate: Option<NonZeroU32>,
    /// Provider calls in flight at once.
    pub concurrency: usize,
    /// Tries per provider call for timeouts, dropped connections, 5xx and 429.
    pub max_attempts: u32,
    /// The first retry's delay (doubling after each).
    pub retry_base: Duration,
    /// The longest a caller waits for an answer before a 503.
    pub max_wait: Duration,
    /// How long a call that got no answer may still be running at the
    /// provider: nothing that would supersede what it issues is sent for
    /// that order's customer until then.
    pub settle: Duration,
    pub client: PnmClient,
    /// How connections are kept.
    pub limits: ConnectionLimits,
}

/// What a connection may cost.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// A connection that has not sent a whole request header for this long
    /// is closed, idle keep-alive connections included.
    pub idle_timeout: Duration,
    /// Connections open at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// After the stop signal, requests in flight get this long to finish;
    /// then the connections left are closed.
    pub shutdown_timeout: Duration,
}

/// Database connections the handlers share (reads are short; WAL lets
/// them run beside a nightly run's writer).
const CONNECTIONS: usize = 4;

/// How long a statement waits for another process's lock on the database
/// before the caller gets a 503.
const BUSY_TIMEOUT: Duration = Duration::from_millis(250);

/// A bound server, ready to serve.
pub struct Links {
    listener: tokio::net::TcpListener,
    app: Router,
    limits: ConnectionLimits,
}

impl Links {
    /// Opens the database and binds `addr`.
    pub async fn bind(config: LinksConfig, addr: SocketAddr) -> Result<Links, LinksError> {
        let mut stores = Vec::with_capacity(CONNECTIONS);
        for _ in 0..CONNECTIONS {
            let store = Store::open_existing(&config.db)?;
            store.set_busy_timeout(BUSY_TIMEOUT)?;
            stores.push(Mutex::new(store));
        }
        let shared = Arc::new(Shared {
            stores,
            next: AtomicU64::new(0),
            client: config.client,
            limiter: config
                .rate
                .map(|r| RateLimiter::direct(crate::pipeline::quota(r))),
            slots: tokio::sync::Semaphore::new(config.concurrency.max(1)),
            max_attempts: config.max_attempts.max(1),
            retry_base: config.retry_base,
            max_wait: config.max_wait,
            settle: config.settle,
            customers: CustomerLocks::of(&config.db),
            flights: Mutex::new(HashMap::new()),
            short: Mutex::new(HashMap::new()),
            token: config.token,
            min_validity: config.min_validity,
            expiry_guessed: Default::default(),
            metrics: Metrics::default(),
        });
        let app = Router::new()
            .route("/healthz", get(healthz))
            .route("/metrics", get(metrics))
            .route("/v1/orders/{id}/embedded-js-url", get(embedded_js_url))
            .route("/v1/orders/{id}/smart-link", get(smart_link))
            .fallback(no_route)
            .method_not_allowed_fallback(wrong_method)
            .layer(axum::middleware::from_fn_with_state(shared.clone(), record))
            .with_state(shared);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| LinksError::Bind { addr, source })?;
        Ok(Links {
            listener,
            app,
            limits: config.limits,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then lets requests in flight
    /// finish for up to `shutdown_timeout` and closes what is left.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let Links {
            listener,
            app,
            limits,
        } = self;
        let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
        let (closing, closing_rx) = tokio::sync::watch::channel(false);
        let mut connections = tokio::task::JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            // A slot first: past the limit, connections wait in the
            // kernel's backlog and cost this process no descriptor.
            let slot = tokio::select! {
                _ = &mut shutdown => break,
                slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            };
            let stream = tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of descriptors, or a connection reset before
                        // it was taken: wait a little rather than spin.
                        tracing::warn!("accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let service = hyper_util::service::TowerToHyperService::new(app.clone());
            let mut closing = closing_rx.clone();
            connections.spawn(async move {
                let _slot = slot;
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(limits.idle_timeout)
                    .keep_alive(true);
                let connection =
                    builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                tokio::pin!(connection);
                let done = tokio::select! {
                    done = connection.as_mut() => done,
                    _ = closing.changed() => {
                        connection.as_mut().graceful_shutdown();
                        connection.await
                    }
                };
                if let Err(e) = done {
                    tracing::debug!("connection closed: {e}");
                }
            });
            while connections.try_join_next().is_some() {}
        }
        drop(listener);
        let _ = closing.send(true);
        let drained = tokio::time::timeout(limits.shutdown_timeout, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                open = connections.len(),
                "connections still open {}s after the stop signal; closing them",
                limits.shutdown_timeout.as_secs_f64()
            );
            connections.shutdown().await;
        }
        Ok(())
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum LinksError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_errors_map_to_502_or_503_with_retry_after() {
        let refused = ProviderError::Api {
            endpoint: "refresh_embedded_js_urls",
            status: 404,
            code: "order_not_found".into(),
            description: "no such order".into(),
        };
        let answer = provider_error(&refused).response();
        assert_eq!(answer.status(), StatusCode::BAD_GATEWAY);
        let limited = ProviderError::RateLimited {
            endpoint: "refresh_embedded_js_urls",
            retry_after: Some(Duration::from_secs(7)),
        };
        let answer = provider_error(&limited).response();
        assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(answer.headers()[header::RETRY_AFTER], "7");
        let down = ProviderError::Api {
            endpoint: "refresh_embedded_js_urls",
            status: 503,
            code: "http_503".into(),
            description: String::new(),
        };
        let answer = provider_error(&down).response();
        assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(answer.headers().contains_key(header::RETRY_AFTER));
    }
}
