//! A provider in front of the sandbox that misbehaves on purpose: each
//! request is offered to a rule first (redirect, 429 with odd `Retry-After`,
//! an oversized body, 404 …); what no rule takes is passed on to the real
//! sandbox, so orders still end up where tests can count them.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;

/// Decides, for the `n`-th request (from 1) to `endpoint`, an answer of
/// its own, or `None` to pass the request on to the sandbox.
pub type Rule = dyn Fn(&str, u64) -> Option<Response> + Send + Sync;

struct Shared {
    upstream: String,
    rule: Box<Rule>,
    counts: Mutex<std::collections::HashMap<String, u64>>,
    http: reqwest::Client,
}

/// The misbehaving front, on its own runtime.
pub struct Hostile {
    addr: SocketAddr,
    runtime: tokio::runtime::Runtime,
    shared: Arc<Shared>,
}

impl Hostile {
    /// Starts a front for `upstream` (a sandbox's base URL) with `rule`.
    pub fn start(
        upstream: String,
        rule: impl Fn(&str, u64) -> Option<Response> + Send + Sync + 'static,
    ) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let shared = Arc::new(Shared {
            upstream,
            rule: Box::new(rule),
            counts: Mutex::new(Default::default()),
            http: reqwest::Client::new(),
        });
        let app = Router::new()
            .route("/json-api/{endpoint}", post(handle))
            .with_state(shared.clone());
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(SocketAddr::from((
                Ipv4Addr::LOCALHOST,
                0,
            ))))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        runtime.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Hostile {
            addr,
            runtime,
            shared,
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests that reached the front for `endpoint`.
    pub fn count(&self, endpoint: &str) -> u64 {
        self.shared
            .counts
            .lock()
            .unwrap()
            .get(endpoint)
            .copied()
            .unwrap_or(0)
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    Path(endpoint): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let n = {
        let mut counts = shared.counts.lock().unwrap();
        let n = counts.entry(endpoint.clone()).or_default();
        *n += 1;
        *n
    };
    if let Some(answer) = (shared.rule)(&endpoint, n) {
        return answer;
    }
    let mut request = shared
        .http
        .post(format!("{}/json-api/{endpoint}", shared.upstream))
        .body(body);
    for name in ["content-type", "authorization"] {
        if let Some(v) = headers.get(name) {
            request = request.header(name, v.clone());
        }
    }
    match request.send().await {
        Ok(answer) => {
            let status = StatusCode::from_u16(answer.status().as_u16()).unwrap();
            let bytes = answer.bytes().await.unwrap_or_default();
            (
                status,
                [("content-type", "application/json")],
                Body::from(bytes),
            )
                .into_response()
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}

/// `429` with this `Retry-After`.
pub fn too_many(retry_after: &str) -> Response {
    (
        StatusCode::TOO_MANY_REQUESTS,
        [("retry-after", retry_after.to_string())],
        r#"{"status":"error","errors":[{"code":"rate_limited","description":"slow down"}]}"#,
    )
        .into_response()
}

/// A `200` whose body is `bytes` long, streamed without a length (a
/// broken proxy).
pub fn huge(bytes: usize) -> Response {
    let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
    let chunks = bytes.div_ceil(chunk.len());
    let stream = futures_util::stream::iter(
        (0..chunks).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
    );
    (StatusCode::OK, Body::from_stream(stream)).into_response()
}

/// A local listener that counts the bytes anyone sends it (it never
/// answers): proof that nothing was sent somewhere.
pub struct Witness {
    pub addr: SocketAddr,
    bytes: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
    _runtime: tokio::runtime::Runtime,
}

impl Witness {
    pub fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(SocketAddr::from((
                Ipv4Addr::LOCALHOST,
                0,
            ))))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let bytes = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(AtomicU64::new(0));
        let (counted, accepted) = (bytes.clone(), connections.clone());
        runtime.spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::Relaxed);
                let counted = counted.clone();
                tokio::spawn(async move {
                    use tokio::io::AsyncReadExt;
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = socket.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        counted.fetch_add(n as u64, Ordering::Relaxed);
                    }
                });
            }
        });
        Witness {
            addr,
            bytes,
            connections,
            _runtime: runtime,
        }
    }

    /// Connections and bytes received so far.
    pub fn received(&self) -> (u64, u64) {
        (
            self.connections.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }
}

/// A token endpoint that echoes the `client_secret` it receives (sent in
/// the form body): the `n`-th request (from 1) gets `answer(n, secret as
/// received form-urlencoded, secret decoded)`.
pub struct Echo {
    addr: SocketAddr,
    _runtime: tokio::runtime::Runtime,
}

type Answer = dyn Fn(u64, &str, &str) -> Response + Send + Sync;

impl Echo {
    pub fn start(answer: impl Fn(u64, &str, &str) -> Response + Send + Sync + 'static) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let state: Arc<(AtomicU64, Box<Answer>)> = Arc::new((AtomicU64::new(0), Box::new(answer)));
        let app = Router::new()
            .route(
                "/oauth/token",
                post(
                    |State(state): State<Arc<(AtomicU64, Box<Answer>)>>, body: Bytes| async move {
                        let n = state.0.fetch_add(1, Ordering::Relaxed) + 1;
                        let text = String::from_utf8_lossy(&body).into_owned();
                        let sent = text
                            .split('&')
                            .find_map(|kv| kv.strip_prefix("client_secret="))
                            .unwrap_or_default()
                            .to_string();
                        let decoded = form_urlencoded::parse(&body)
                            .find(|(k, _)| k == "client_secret")
                            .map(|(_, v)| v.into_owned())
                            .unwrap_or_default();
                        (state.1)(n, &sent, &decoded)
                    },
                ),
            )
            .with_state(state);
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(SocketAddr::from((
                Ipv4Addr::LOCALHOST,
                0,
            ))))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        runtime.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Echo {
            addr,
            _runtime: runtime,
        }
    }

    pub fn token_url(&self) -> String {
        format!("http://{}/oauth/token", self.addr)
    }
}
