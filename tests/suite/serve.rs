//! `orderbatch serve`: just-in-time URLs and smart links from the state db.

use std::io::{BufRead, BufReader};
use std::process::Child;
use std::time::Duration;

use serde_json::Value;

use crate::util::*;

const TOKEN: &str = "serve-token-1234567890abcdef";

struct Server {
    child: Child,
    url: String,
    runtime: tokio::runtime::Runtime,
}

impl Server {
    fn start(dir: &Dir, sandbox: &Sandbox, db: &str, min_validity: &str) -> Server {
        Server::start_with(dir, sandbox, db, min_validity, &[])
    }

    /// Serves `db`; a stored URL with less than `min_validity` left (e.g.
    /// `5m`) is refreshed. (Tests age the sandbox's clock, not ours: a
    /// `min_validity` above the 30-minute URL lifetime makes every URL
    /// stored so far due.)
    /// ... with `extra` flags.
    fn start_with(
        dir: &Dir,
        sandbox: &Sandbox,
        db: &str,
        min_validity: &str,
        extra: &[&str],
    ) -> Server {
        let mut args = vec![
            "serve",
            "--db",
            db,
            "--listen",
            "127.0.0.1:0",
            "--min-validity",
            min_validity,
        ];
        args.extend_from_slice(extra);
        Server::spawn(dir.cmd(sandbox, &args))
    }

    /// Runs `cmd` (a serve command) and waits for its address.
    fn spawn(mut cmd: std::process::Command) -> Server {
        cmd.env("ORDERBATCH_SERVE_TOKEN", TOKEN);
        let mut child = spawn(cmd);
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("http://"), "serve printed {line:?}");
        Server {
            child,
            url: line.trim().to_string(),
            runtime: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap(),
        }
    }

    /// GETs `path` with `token` (if any): status and JSON body.
    fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let url = format!("{}{path}", self.url);
        self.runtime.block_on(async {
            let mut request = reqwest::Client::new().get(url);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let answer = request.send().await.unwrap();
            let status = answer.status().as_u16();
            let body = answer.bytes().await.unwrap();
            (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
        })
    }

    /// `n` GETs of `path` at once.
    fn get_many(&self, path: &str, n: usize) -> Vec<(u16, Value)> {
        let url = format!("{}{path}", self.url);
        self.runtime.block_on(async {
            let client = reqwest::Client::new();
            let calls = (0..n).map(|_| {
                let request = client.get(url.clone()).bearer_auth(TOKEN);
                async move {
                    let answer = request.send().await.unwrap();
                    let status = answer.status().as_u16();
                    (status, answer.json::<Value>().await.unwrap_or(Value::Null))
                }
            });
            futures_util::future::join_all(calls).await
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A db with orders ORD-1.. whose stored URLs have about 3 minutes left
/// and have not expired at the provider (created with the sandbox clock
/// 27 minutes behind, which is then put right).
fn setup_due(sandbox: &Sandbox, dir: &Dir, rows: usize, customers: usize) {
    sandbox.age(-27 * 60);
    setup(sandbox, dir, rows, customers);
    sandbox.age(27 * 60);
}

/// Seconds from now until an RFC 3339 time.
fn seconds_left(expires_at: &Value) -> i64 {
    let at = chrono::DateTime::parse_from_rfc3339(expires_at.as_str().unwrap()).unwrap();
    at.timestamp() - chrono::Utc::now().timestamp()
}

/// A db with orders ORD-1.. created by `run` (their URLs fresh).
fn setup(sandbox: &Sandbox, dir: &Dir, rows: usize, customers: usize) {
    dir.write("o.csv", orders_csv(rows, customers, true));
    let out = run(dir.cmd(
        sandbox,
        &[
            "run",
            "o.csv",
            "--db",
            "s.db",
            "--rate",
            "unlimited",
            "--export",
            "e.csv",
        ],
    ));
    assert_eq!(code(&out), 0, "{}", text(&out));
}

#[test]
fn urls_come_from_the_db_while_fresh_and_one_refresh_serves_fifty_callers() {
    let sandbox = Sandbox::with(|c| c.latency_ms = Some((20, 30)));
    let dir = Dir::new();
    setup(&sandbox, &dir, 6, 2);
    let server = Server::start(&dir, &sandbox, "s.db", "5m");
    let before = sandbox.requests("refresh_embedded_js_urls");
    let (status, body) = server.get("/v1/orders/ORD-1/embedded-js-url", Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["embedded_js_url"],
        sandbox.order("ORD-1")["embedded_js_url"]
    );
    assert_eq!(
        body["pnm_order_identifier"],
        sandbox.order("ORD-1")["pnm_order_identifier"]
    );
    assert_eq!(
        sandbox.requests("refresh_embedded_js_urls"),
        before,
        "a fresh URL was refreshed"
    );

    // 31 minutes later every URL has expired: fifty callers at once share
    // one refresh and all get the new URL.
    sandbox.age(31 * 60);
    drop(server);
    let server = Server::start(&dir, &sandbox, "s.db", "40m");
    let answers = server.get_many("/v1/orders/ORD-1/embedded-js-url", 50);
    assert_eq!(sandbox.requests("refresh_embedded_js_urls"), before + 1);
    let fresh = sandbox.order("ORD-1")["embedded_js_url"].clone();
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(body["embedded_js_url"], fresh);
    }
    // Stored: the export of the run now carries it too.
    let out = run(dir.bare_cmd(&["export", "--db", "s.db", "--out", "again.csv"]));
    assert_eq!(code(&out), 0);
    let again = read_export(&dir.path("again.csv"));
    let row = again
        .iter()
        .find(|r| r["site_order_identifier"] == "ORD-1")
        .unwrap();
    assert_eq!(Value::String(row["embedded_js_url"].clone()), fresh);

    // A smart link is issued fresh each time.
    let (status, link) = server.get("/v1/orders/ORD-2/smart-link", Some(TOKEN));
    assert_eq!(status, 200, "{link}");
    assert_eq!(
        link["secure_smart_token"],
        sandbox.order("ORD-2")["secure_smart_token"]
    );

    let metrics = server.runtime.block_on(async {
        reqwest::Client::new()
            .get(format!("{}/metrics", server.url))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    assert!(
        metrics.contains("orderbatch_serve_provider_calls_total 2"),
        "{metrics}"
    );
    // The other 49 shared the one call or read what it stored.
    let count = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {metrics}"))
    };
    assert_eq!(
        count("orderbatch_serve_served_from_db_total") + count("orderbatch_serve_joined_total"),
        49,
        "{metrics}"
    );
}

#[test]
fn a_customers_orders_fetched_at_once_never_overlap_at_the_provider() {
    let sandbox = Sandbox::with(|c| {
        c.latency_ms = Some((30, 40));
        c.strict_serial = true;
    });
    let dir = Dir::new();
    setup(&sandbox, &dir, 4, 1);
    let server = Server::start(&dir, &sandbox, "s.db", "40m");
    sandbox.age(31 * 60);
    let overlaps = sandbox.counter("overlaps");
    let urls: Vec<String> = (1..=4)
        .map(|i| format!("/v1/orders/ORD-{i}/embedded-js-url"))
        .collect();
    let answers = server.runtime.block_on(async {
        let client = reqwest::Client::new();
        let calls = urls.iter().map(|path| {
            let request = client
                .get(format!("{}{path}", server.url))
                .bearer_auth(TOKEN);
            async move { request.send().await.unwrap().status().as_u16() }
        });
        futures_util::future::join_all(calls).await
    });
    assert!(answers.iter().all(|s| *s == 200), "{answers:?}");
    assert_eq!(sandbox.counter("overlaps"), overlaps);
}

#[test]
fn errors_are_json_with_the_right_status() {
    let sandbox = Sandbox::start();
    let dir = Dir::new();
    setup(&sandbox, &dir, 2, 1);
    let server = Server::start(&dir, &sandbox, "s.db", "40m");
    let (status, body) = server.get("/v1/orders/ORD-1/embedded-js-url", None);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthenticated"))
    );
    let (status, _) = server.get(
        "/v1/orders/ORD-1/embedded-js-url",
        Some("wrong-token-000000000000"),
    );
    assert_eq!(status, 401);
    let (status, body) = server.get("/v1/orders/NOPE/embedded-js-url", Some(TOKEN));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("unknown_order"))
    );
    let (status, _) = server.get("/healthz", None);
    assert_eq!(status, 200);
    // The provider down: 503 with Retry-After.
    sandbox.age(31 * 60);
    sandbox.set_fail_rate(1.0);
    let answer = server.runtime.block_on(async {
        reqwest::Client::new()
            .get(format!("{}/v1/orders/ORD-1/embedded-js-url", server.url))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
    });
    assert_eq!(answer.status().as_u16(), 503);
    assert!(answer.headers().contains_key("retry-after"));
    sandbox.set_fail_rate(0.0);
}

#[test]
fn serve_refuses_to_start_without_a_token() {
    let sandbox = Sandbox::start();
    let dir = Dir::new();
    setup(&sandbox, &dir, 1, 1);
    let out = run(dir.cmd(
        &sandbox,
        &["serve", "--db", "s.db", "--listen", "127.0.0.1:0"],
    ));
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(text(&out).contains("ORDERBATCH_SERVE_TOKEN"));
    let mut cmd = dir.cmd(
        &sandbox,
        &["serve", "--db", "s.db", "--listen", "0.0.0.0:0"],
    );
    cmd.env("ORDERBATCH_SERVE_TOKEN", TOKEN);
    let out = run(cmd);
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(text(&out).contains("--allow-remote"));
}

#[cfg(unix)]
#[test]
fn sigterm_lets_the_request_in_flight_finish() {
    let sandbox = Sandbox::with(|c| c.latency_ms = Some((600, 700)));
    let dir = Dir::new();
    setup(&sandbox, &dir, 1, 1);
    let mut server = Server::start(&dir, &sandbox, "s.db", "40m");
    sandbox.age(31 * 60);
    let url = format!("{}/v1/orders/ORD-1/embedded-js-url", server.url);
    let pending = server.runtime.spawn(async move {
        reqwest::Client::new()
            .get(url)
            .bearer_auth(TOKEN)
            .send()
            .await
            .map(|a| a.status().as_u16())
    });
    std::thread::sleep(Duration::from_millis(200));
    signal(&server.child, 15);
    let status = server.runtime.block_on(pending).unwrap().unwrap();
    assert_eq!(status, 200);
    let exit = server.child.wait().unwrap();
    assert_eq!(exit.code(), Some(0));
}

#[test]
fn serve_beside_a_refresh_of_the_same_db_both_finish() {
    let sandbox = Sandbox::with(|c| c.latency_ms = Some((1, 3)));
    let dir = Dir::new();
    setup(&sandbox, &dir, 60, 6);
    let server = Server::start(&dir, &sandbox, "s.db", "5m");
    sandbox.age(31 * 60);
    dir.write(
        "r.csv",
        "site_customer_identifier\nC-0\nC-1\nC-2\nC-3\nC-4\nC-5\n",
    );
    let refresh = spawn(dir.cmd(
        &sandbox,
        &[
            "refresh",
            "r.csv",
            "--db",
            "s.db",
            "--rate",
            "unlimited",
            "--export",
            "r.csv.out",
        ],
    ));
    for i in 1..=60 {
        let (status, body) =
            server.get(&format!("/v1/orders/ORD-{i}/embedded-js-url"), Some(TOKEN));
        assert_eq!(status, 200, "ORD-{i}: {body}");
    }
    let out = refresh.wait_with_output().unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
    // Every URL served or exported is the provider's current one or was
    // current when issued; the latest of each order is in the database.
    for i in 1..=60 {
        let (status, body) =
            server.get(&format!("/v1/orders/ORD-{i}/embedded-js-url"), Some(TOKEN));
        assert_eq!(status, 200);
        assert_eq!(
            body["embedded_js_url"],
            sandbox.order(&format!("ORD-{i}"))["embedded_js_url"]
        );
    }
}

#[test]
fn a_url_inside_the_min_validity_window_is_regenerated_once_with_force() {
    let sandbox = Sandbox::with(|c| c.latency_ms = Some((20, 30)));
    let dir = Dir::new();
    setup_due(&sandbox, &dir, 2, 1);
    let stored = sandbox.order("ORD-1")["embedded_js_url"].clone();
    let server = Server::start(&dir, &sandbox, "s.db", "5m");
    let before = sandbox.requests("refresh_embedded_js_urls");
    let answers = server.get_many("/v1/orders/ORD-1/embedded-js-url", 50);
    // One call, and it regenerated the URL (without force the provider
    // would have handed back the stored one, 3 minutes from expiry).
    assert_eq!(sandbox.requests("refresh_embedded_js_urls"), before + 1);
    let fresh = sandbox.order("ORD-1")["embedded_js_url"].clone();
    assert_ne!(fresh, stored);
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(body["embedded_js_url"], fresh);
        assert!(
            seconds_left(&body["embedded_js_url_expires_at"]) >= 5 * 60,
            "{body}"
        );
        assert_eq!(body["min_validity_met"], true);
    }
    // The new URL is served from the database from now on.
    for _ in 0..5 {
        let (status, body) = server.get("/v1/orders/ORD-1/embedded-js-url", Some(TOKEN));
        assert_eq!((status, &body["embedded_js_url"]), (200, &fresh));
    }
    assert_eq!(sandbox.requests("refresh_embedded_js_urls"), before + 1);
}

#[test]
fn a_provider_that_cannot_give_min_validity_is_said_so_and_asked_once() {
    // The sandbox clock stays 27 minutes behind: every URL it makes,
    // forced or not, has 3 minutes left by ours.
    let sandbox = Sandbox::start();
    let dir = Dir::new();
    sandbox.age(-27 * 60);
    setup(&sandbox, &dir, 1, 1);
    let server = Server::start(&dir, &sandbox, "s.db", "5m");
    let before = sandbox.requests("refresh_embedded_js_urls");
    for _ in 0..3 {
        let (status, body) = server.get("/v1/orders/ORD-1/embedded-js-url", Some(TOKEN));
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["min_validity_met"], false, "{body}");
        assert_eq!(
            body["embedded_js_url"],
            sandbox.order("ORD-1")["embedded_js_url"]
        );
    }
    assert_eq!(sandbox.requests("refresh_embedded_js_urls"), before + 1);
}

#[test]
fn a_hung_provider_costs_one_call_and_no_caller_waits_past_max_wait() {
    let sandbox = Sandbox::start();
    let dir = Dir::new();
    setup_due(&sandbox, &dir, 1, 1);
    let server = Server::start_with(
        &dir,
        &sandbox,
        "s.db",
        "5m",
        &["--timeout", "30", "--max-wait", "1s"],
    );
    let before = sandbox.requests("refresh_embedded_js_urls");
    sandbox.set_delay_ms(4000);
    let started = std::time::Instant::now();
    let answers = server.runtime.block_on(async {
        let client = reqwest::Client::new();
        let calls = (0..5).map(|_| {
            let request = client
                .get(format!("{}/v1/orders/ORD-1/embedded-js-url", server.url))
                .bearer_auth(TOKEN);
            async move {
                let answer = request.send().await.unwrap();
                (
                    answer.status().as_u16(),
                    answer.headers().contains_key("retry-after"),
                )
            }
        });
        futures_util::future::join_all(calls).await
    });
    // Each caller waited about --max-wait (1 s), not a provider call each.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(answers.iter().all(|a| *a == (503, true)), "{answers:?}");
    assert_eq!(sandbox.requests("refresh_embedded_js_urls"), before + 1);
    // The call finishes anyway and is stored: later callers get its URL
    // with no other call.
    sandbox.set_delay_ms(0);
    wait_until(Duration::from_secs(20), || {
        server
            .get("/v1/orders/ORD-1/embedded-js-url", Some(TOKEN))
            .0
            == 200
    });
    let (_, body) = server.get("/v1/orders/ORD-1/embedded-js-url", Some(TOKEN));
    assert_eq!(
        body["embedded_js_url"],
        sandbox.order("ORD-1")["embedded_js_url"]
    );
    assert_eq!(sandbox.requests("refresh_embedded_js_urls"), before + 1);
}

#[test]
fn callers_for_one_order_share_a_failing_call_and_max_attempts_is_honoured() {
    let sandbox = Sandbox::start();
    let dir = Dir::new();
    setup_due(&sandbox, &dir, 1, 1);
    let server = Server::start_with(
        &dir,
        &sandbox,
        "s.db",
        "5m",
        &["--max-attempts", "2", "--max-wait", "10s"],
    );
    let before = sandbox.requests("refresh_embedded_js_urls");
    sandbox.set_fail_rate(1.0);
    sandbox.set_delay_ms(300);
    let answers = server.get_many("/v1/orders/ORD-1/embedded-js-url", 10);
    for (status, body) in &answers {
        assert_eq!(*status, 503, "{body}");
        assert_eq!(body["error"]["code"], "provider_unavailable", "{body}");
    }
    assert_eq!(sandbox.requests("refresh_embedded_js_urls"), before + 2);
}

#[test]
fn concurrent_smart_link_callers_share_one_token() {
    let sandbox = Sandbox::with(|c| c.latency_ms = Some((50, 60)));
    let dir = Dir::new();
    setup(&sandbox, &dir, 2, 1);
    let server = Server::start(&dir, &sandbox, "s.db", "5m");
    let before = sandbox.requests("get_smart_token");
    let answers = server.get_many("/v1/orders/ORD-1/smart-link", 20);
    assert_eq!(sandbox.requests("get_smart_token"), before + 1);
    let token = sandbox.order("ORD-1")["secure_smart_token"].clone();
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(body["secure_smart_token"], token);
    }
}

#[test]
fn a_locked_database_gives_a_quick_503_and_healthz_stays_instant() {
    let sandbox = Sandbox::start();
    let dir = Dir::new();
    setup_due(&sandbox, &dir, 4, 4);
    let server = Server::start(&dir, &sandbox, "s.db", "5m");
    // Another process takes the write lock and keeps it for 8 s.
    let db = dir.path("s.db");
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let holder = std::thread::spawn(move || {
        let conn = rusqlite::Connection::open(db).unwrap();
        conn.execute_batch("BEGIN IMMEDIATE; UPDATE runs SET id = id;")
            .unwrap();
        locked_tx.send(()).unwrap();
        std::thread::sleep(Duration::from_secs(8));
        conn.execute_batch("COMMIT").unwrap();
    });
    locked_rx.recv().unwrap();
    let started = std::time::Instant::now();
    let pending: Vec<_> = (1..=4)
        .map(|i| {
            let url = format!("{}/v1/orders/ORD-{i}/embedded-js-url", server.url);
            server.runtime.spawn(async move {
                let answer = reqwest::Client::new()
                    .get(url)
                    .bearer_auth(TOKEN)
                    .send()
                    .await
                    .unwrap();
                (
                    answer.status().as_u16(),
                    answer.headers().contains_key("retry-after"),
                    std::time::Instant::now(),
                )
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let asked = std::time::Instant::now();
    let (status, _) = server.get("/healthz", None);
    assert_eq!(status, 200);
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );
    for task in pending {
        let (status, retry_after, at) = server.runtime.block_on(task).unwrap();
        assert_eq!((status, retry_after), (503, true));
        // Well before the lock is let go (8 s).
        assert!(at - started < Duration::from_secs(5), "{:?}", at - started);
    }
    holder.join().unwrap();
}

/// Opens `n` connections that send nothing.
fn silent_connections(server: &Server, n: usize) -> Vec<std::net::TcpStream> {
    let addr = server.url.trim_start_matches("http://").to_string();
    (0..n)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect()
}

/// Whether the server closed `stream` within `limit`.
fn closed_within(stream: &mut std::net::TcpStream, limit: Duration) -> bool {
    use std::io::Read;
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            // A 408 or similar before the close.
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn silent_half_sent_and_idle_connections_are_closed() {
    use std::io::Write;
    let sandbox = Sandbox::start();
    let dir = Dir::new();
    setup(&sandbox, &dir, 1, 1);
    let server = Server::start_with(&dir, &sandbox, "s.db", "5m", &["--idle-timeout", "1s"]);
    let mut silent = silent_connections(&server, 3);
    let mut half = silent_connections(&server, 1).remove(0);
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    // A keep-alive connection after one answered request.
    let mut idle = silent_connections(&server, 1).remove(0);
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    for stream in silent.iter_mut().chain([&mut half, &mut idle]) {
        assert!(closed_within(stream, Duration::from_secs(10)));
    }
}

#[cfg(unix)]
#[test]
fn more_silent_connections_than_descriptors_do_not_take_healthz_down() {
    let sandbox = Sandbox::start();
    let dir = Dir::new();
    setup(&sandbox, &dir, 1, 1);
    // serve under `ulimit -n 128`, at most 48 connections at once.
    let serve = dir.cmd(
        &sandbox,
        &[
            "serve",
            "--db",
            "s.db",
            "--listen",
            "127.0.0.1:0",
            "--idle-timeout",
            "1s",
            "--max-connections",
            "48",
        ],
    );
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg("ulimit -n 128 && exec \"$0\" \"$@\"")
        .arg(serve.get_program())
        .args(serve.get_args())
        .current_dir(dir.tmp.path())
        .stdin(std::process::Stdio::null());
    for (key, value) in serve.get_envs() {
        match value {
            Some(value) => cmd.env(key, value),
            None => cmd.env_remove(key),
        };
    }
    let server = Server::spawn(cmd);
    let _silent = silent_connections(&server, 200);
    let (status, _) = server.runtime.block_on(async {
        let answer = reqwest::Client::new()
            .get(format!("{}/healthz", server.url))
            .timeout(Duration::from_secs(20))
            .send()
            .await
            .unwrap();
        (answer.status().as_u16(), ())
    });
    assert_eq!(status, 200);
}

#[cfg(unix)]
#[test]
fn sigterm_with_a_half_sent_header_open_still_exits() {
    use std::io::Write;
    let sandbox = Sandbox::start();
    let dir = Dir::new();
    setup(&sandbox, &dir, 1, 1);
    let mut server = Server::start_with(
        &dir,
        &sandbox,
        "s.db",
        "5m",
        &["--idle-timeout", "300s", "--shutdown-timeout", "1s"],
    );
    let mut half = silent_connections(&server, 1).remove(0);
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    signal(&server.child, 15);
    let mut exit = None;
    wait_until(Duration::from_secs(15), || {
        exit = server.child.try_wait().unwrap();
        exit.is_some()
    });
    assert_eq!(exit.unwrap().code(), Some(0));
}

#[test]
fn absurd_durations_are_refused_with_exit_2() {
    let sandbox = Sandbox::start();
    let dir = Dir::new();
    setup(&sandbox, &dir, 1, 1);
    for (flag, value) in [
        ("--min-validity", "9223372036854775808s"),
        ("--min-validity", "18446744073709551615"),
        ("--min-validity", "400d"),
        ("--max-wait", "0s"),
        ("--idle-timeout", "-1s"),
    ] {
        let mut cmd = dir.cmd(
            &sandbox,
            &[
                "serve",
                "--db",
                "s.db",
                "--listen",
                "127.0.0.1:0",
                flag,
                value,
            ],
        );
        cmd.env("ORDERBATCH_SERVE_TOKEN", TOKEN);
        let mut child = spawn(cmd);
        let mut exit = None;
        let started = std::time::Instant::now();
        while exit.is_none() && started.elapsed() < Duration::from_secs(10) {
            exit = child.try_wait().unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        // Reaped either way (a no-op when it had exited).
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(exit.and_then(|e| e.code()), Some(2), "{flag} {value}");
    }
}

#[test]
fn a_refresh_answer_without_a_readable_expiry_counts_thirty_minutes() {
    let sandbox = Sandbox::start();
    let dir = Dir::new();
    setup_due(&sandbox, &dir, 2, 2);
    let server = Server::start(&dir, &sandbox, "s.db", "5m");
    for (order, how) in [("ORD-1", "omit"), ("ORD-2", "garbled")] {
        sandbox.set_url_expiry(how);
        let before = sandbox.requests("refresh_embedded_js_urls");
        let path = format!("/v1/orders/{order}/embedded-js-url");
        for _ in 0..3 {
            let (status, body) = server.get(&path, Some(TOKEN));
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["min_validity_met"], true, "{body}");
            let left = seconds_left(&body["embedded_js_url_expires_at"]);
            assert!((29 * 60..=30 * 60).contains(&left), "{how}: {body}");
        }
        assert_eq!(
            sandbox.requests("refresh_embedded_js_urls"),
            before + 1,
            "{how}"
        );
    }
}

/// Stops the server and gives what it logged.
fn stop_and_log(mut server: Server) -> String {
    use std::io::Read;
    let mut stderr = server.child.stderr.take().unwrap();
    let _ = server.child.kill();
    let _ = server.child.wait();
    let mut log = String::new();
    stderr.read_to_string(&mut log).unwrap();
    log
}

/// GETs (or `method`s) `path` with `authorization` as it is: status,
/// content type and body.
fn raw(
    server: &Server,
    method: &str,
    path: &str,
    authorization: Option<&str>,
) -> (u16, String, String) {
    let url = format!("{}{path}", server.url);
    server.runtime.block_on(async {
        let mut request = reqwest::Client::new().request(method.parse().unwrap(), url);
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        let answer = request.send().await.unwrap();
        let status = answer.status().as_u16();
        let kind = answer
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        (status, kind, answer.text().await.unwrap())
    })
}

#[test]
fn the_bearer_scheme_is_case_insensitive() {
    let sandbox = Sandbox::start();
    let dir = Dir::new();
    setup(&sandbox, &dir, 1, 1);
    let server = Server::start(&dir, &sandbox, "s.db", "5m");
    for value in [
        format!("bearer {TOKEN}"),
        format!("BEARER {TOKEN}"),
        format!("Bearer  {TOKEN}"),
    ] {
        let (status, _, body) = raw(
            &server,
            "GET",
            "/v1/orders/ORD-1/embedded-js-url",
            Some(&value),
        );
        assert_eq!(status, 200, "{value}: {body}");
    }
    let (status, _, _) = raw(
        &server,
        "GET",
        "/v1/orders/ORD-1/embedded-js-url",
        Some(&format!("Basic {TOKEN}")),
    );
    assert_eq!(status, 401);
}

#[test]
fn a_serve_token_no_client_can_send_is_refused_at_start() {
    let sandbox = Sandbox::start();
    let dir = Dir::new();
    setup(&sandbox, &dir, 1, 1);
    for token in [
        "                        ",
        "abcdefghij klmnopqrstu",
        "abcdefghijklmnopqrstué",
        "abcdefghijklmnop\nqrstuvwxyz",
    ] {
        let mut cmd = dir.cmd(
            &sandbox,
            &["serve", "--db", "s.db", "--listen", "127.0.0.1:0"],
        );
        cmd.env("ORDERBATCH_SERVE_TOKEN", token);
        let mut child = spawn(cmd);
        let mut exit = None;
        let started = std::time::Instant::now();
        while exit.is_none() && started.elapsed() < Duration::from_secs(10) {
            exit = child.try_wait().unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(exit.and_then(|e| e.code()), Some(2), "{token:?}");
    }
}

#[test]
fn unknown_routes_methods_and_bad_paths_answer_json_and_are_counted_and_logged() {
    let sandbox = Sandbox::start();
    let dir = Dir::new();
    setup(&sandbox, &dir, 1, 1);
    let server = Server::start(&dir, &sandbox, "s.db", "5m");
    let bearer = format!("Bearer {TOKEN}");
    for (method, path, want) in [
        ("GET", "/nope", 404),
        ("POST", "/healthz", 405),
        ("DELETE", "/v1/orders/ORD-1/embedded-js-url", 405),
        ("GET", "/v1/orders/%FF%FE/embedded-js-url", 400),
    ] {
        let (status, kind, body) = raw(&server, method, path, Some(&bearer));
        assert_eq!(status, want, "{method} {path}: {body}");
        assert!(
            kind.starts_with("application/json"),
            "{method} {path}: {kind}"
        );
        let body: Value = serde_json::from_str(&body).unwrap();
        assert!(body["error"]["code"].is_string(), "{body}");
    }
    let (status, _, _) = raw(&server, "HEAD", "/healthz", None);
    assert_eq!(status, 200);
    let (_, _, metrics) = raw(&server, "GET", "/metrics", Some(&bearer));
    for line in [
        "endpoint=\"unmatched\",status=\"404\"} 1",
        "endpoint=\"healthz\",status=\"405\"} 1",
        "endpoint=\"embedded-js-url\",status=\"405\"} 1",
        "endpoint=\"embedded-js-url\",status=\"400\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    let log = stop_and_log(server);
    for method in ["POST", "DELETE", "HEAD"] {
        assert!(
            log.contains(&format!("method={method}")),
            "{method} in {log}"
        );
    }
}

#[test]
fn what_a_caller_sends_is_logged_bounded_and_before_authentication_not_at_all() {
    let sandbox = Sandbox::start();
    let dir = Dir::new();
    setup(&sandbox, &dir, 1, 1);
    let server = Server::start(&dir, &sandbox, "s.db", "5m");
    let long = format!("SECRETISH{}", "X".repeat(50_000));
    let path = format!("/v1/orders/{long}/embedded-js-url");
    for _ in 0..5 {
        assert_eq!(server.get(&path, None).0, 401);
        assert_eq!(server.get(&path, Some("wrong-token-000000000000")).0, 401);
    }
    assert_eq!(server.get(&path, Some(TOKEN)).0, 404);
    let log = stop_and_log(server);
    // Once, bounded: the one authenticated request.
    assert_eq!(
        log.matches("SECRETISH").count(),
        1,
        "{}",
        &log[..log.len().min(2000)]
    );
    assert!(log.len() < 8 * 1024, "{} bytes of log", log.len());
}

#[test]
fn the_sandbox_token_endpoint_takes_a_lowercase_basic_scheme_and_a_client_id_beside_it() {
    use base64::Engine;
    let sandbox = Sandbox::start();
    let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let basic = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        enc(CLIENT_ID),
        enc(CLIENT_SECRET)
    ));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let ask = |scheme: &str, body: String| -> u16 {
        runtime.block_on(async {
            reqwest::Client::new()
                .post(sandbox.token_url())
                .header("authorization", format!("{scheme} {basic}"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    let grant = "grant_type=client_credentials".to_string();
    assert_eq!(ask("Basic", grant.clone()), 200);
    assert_eq!(ask("basic", grant.clone()), 200);
    assert_eq!(ask("BASIC", grant.clone()), 200);
    assert_eq!(
        ask("Basic", format!("{grant}&client_id={}", enc(CLIENT_ID))),
        200
    );
    // The secret twice is two methods (RFC 6749 §2.3): still refused.
    assert_eq!(
        ask(
            "Basic",
            format!(
                "{grant}&client_id={}&client_secret={}",
                enc(CLIENT_ID),
                enc(CLIENT_SECRET)
            )
        ),
        400
    );
}

#[test]
fn smart_links_after_a_refresh_by_order_identifier_keep_the_customer_serial() {
    // A fresh db whose only run is a `refresh` naming orders by
    // pnm_order_identifier: the store learns each order's customer.
    let sandbox = Sandbox::with(|c| {
        c.latency_ms = Some((20, 30));
        c.strict_serial = true;
    });
    let dir = Dir::new();
    dir.write("o.csv", orders_csv(6, 1, true));
    let out = run(dir.cmd(
        &sandbox,
        &["run", "o.csv", "--db", "first.db", "--rate", "unlimited"],
    ));
    assert_eq!(code(&out), 0, "{}", text(&out));
    let mut by_pnm = String::from("pnm_order_identifier\n");
    for order in sandbox.orders() {
        by_pnm.push_str(&format!(
            "{}\n",
            order["pnm_order_identifier"].as_str().unwrap()
        ));
    }
    dir.write("r.csv", &by_pnm);
    let out = run(dir.cmd(
        &sandbox,
        &["refresh", "r.csv", "--db", "s.db", "--rate", "unlimited"],
    ));
    assert_eq!(code(&out), 0, "{}", text(&out));
    let server = Server::start(&dir, &sandbox, "s.db", "5m");
    let overlaps = sandbox.counter("overlaps");
    // Twelve smart links over the customer's six orders at once.
    let answers = server.runtime.block_on(async {
        let client = reqwest::Client::new();
        let calls = (0..12).map(|i| {
            let request = client
                .get(format!(
                    "{}/v1/orders/ORD-{}/smart-link",
                    server.url,
                    i % 6 + 1
                ))
                .bearer_auth(TOKEN);
            async move { request.send().await.unwrap().status().as_u16() }
        });
        futures_util::future::join_all(calls).await
    });
    assert!(answers.iter().all(|s| *s == 200), "{answers:?}");
    assert_eq!(
        sandbox.counter("overlaps"),
        overlaps,
        "one customer's calls overlapped"
    );
}

#[test]
fn serve_beside_a_refresh_of_the_same_db_never_overlaps_a_customer() {
    let sandbox = Sandbox::with(|c| {
        c.latency_ms = Some((20, 40));
        c.strict_serial = true;
    });
    let dir = Dir::new();
    setup(&sandbox, &dir, 300, 6);
    let server = Server::start_with(&dir, &sandbox, "s.db", "5m", &["--max-wait", "20s"]);
    dir.write(
        "r.csv",
        "site_customer_identifier\nC-0\nC-1\nC-2\nC-3\nC-4\nC-5\n",
    );
    let overlaps = sandbox.counter("overlaps");
    let mut refresh = spawn(dir.cmd(
        &sandbox,
        &[
            "refresh", "r.csv", "--db", "s.db", "--rate", "30", "--force",
        ],
    ));
    // Smart links for every customer, round after round, for as long as
    // the refresh runs.
    let mut answers = Vec::new();
    let mut rounds = 0;
    while refresh.try_wait().unwrap().is_none() && rounds < 200 {
        rounds += 1;
        answers.extend(server.runtime.block_on(async {
            let client = reqwest::Client::new();
            let calls = (1..=12).map(|i| {
                let request = client
                    .get(format!("{}/v1/orders/ORD-{i}/smart-link", server.url))
                    .bearer_auth(TOKEN);
                async move { request.send().await.unwrap().status().as_u16() }
            });
            futures_util::future::join_all(calls).await
        }));
    }
    let out = refresh.wait_with_output().unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(
        sandbox.counter("overlaps"),
        overlaps,
        "serve and the refresh overlapped one customer's calls"
    );
    assert!(answers.iter().all(|s| *s == 200), "{answers:?}");
    // At least one round was asked while the refresh was running.
    assert!(
        rounds >= 1,
        "the refresh ended before serve was asked anything"
    );
}

#[test]
fn a_smart_link_call_that_timed_out_and_lands_late_is_not_superseded_by_its_retry() {
    // serve's first get_smart_token gets no answer within --timeout, but
    // the provider issues that token after serve gave up. The token served
    // must be the one the provider holds once the late call has landed.
    let sandbox = Sandbox::start();
    let dir = Dir::new();
    setup(&sandbox, &dir, 1, 1);
    let before = sandbox.requests("get_smart_token");
    sandbox.set_faults(r#"{"only":"get_smart_token","delay_ms":2500,"delay_next":1}"#);
    let mut cmd = dir.cmd(
        &sandbox,
        &[
            "serve",
            "--db",
            "s.db",
            "--listen",
            "127.0.0.1:0",
            "--timeout",
            "1",
            "--retry-base-ms",
            "1",
            "--max-wait",
            "20s",
        ],
    );
    cmd.env("ORDERBATCH_SETTLE_MS", "3500");
    let server = Server::spawn(cmd);
    let (status, body) = server.get("/v1/orders/ORD-1/smart-link", Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        sandbox.requests("get_smart_token") - before,
        2,
        "the timed-out call and one retry"
    );
    // Until the late call has certainly landed.
    std::thread::sleep(Duration::from_millis(2000));
    assert_eq!(
        sandbox.order("ORD-1")["secure_smart_token"],
        body["secure_smart_token"]
    );
}

/// `(run, state, rows)` by counting the rows of `db`, and as `row_states`
/// keeps them (migration 08) and `status --json` prints them.
fn row_counts(dir: &Dir, sandbox: &Sandbox, db: &str) -> [Vec<(i64, String, i64)>; 3] {
    let conn = rusqlite::Connection::open(dir.path(db)).unwrap();
    let read = |sql: &str| -> Vec<(i64, String, i64)> {
        conn.prepare(sql)
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    };
    let counted = read("SELECT run_id, state, COUNT(*) FROM rows GROUP BY 1, 2 ORDER BY 1, 2");
    let kept = read("SELECT run_id, state, count FROM row_states WHERE count != 0 ORDER BY 1, 2");
    let out = run(dir.cmd(sandbox, &["status", "--db", db, "--json"]));
    assert_eq!(code(&out), 0, "{}", text(&out));
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut printed = Vec::new();
    for r in status["runs"].as_array().unwrap() {
        for (state, n) in r["states"].as_object().unwrap() {
            printed.push((
                r["run_id"].as_i64().unwrap(),
                state.clone(),
                n.as_i64().unwrap(),
            ));
        }
    }
    printed.sort();
    [counted, kept, printed]
}

/// What `status` and the report say of a run's rows (kept per state as the
/// rows change, migration 08) is what counting the rows says, after every
/// command that writes rows: a run with failures and rejects, its retry, a
/// refresh that expands customers into their orders, a change, and serve
/// regenerating URLs and tokens.
#[test]
fn row_counts_stay_exact_through_a_faulty_run_retry_refresh_change_and_serve() {
    let sandbox = Sandbox::start();
    let dir = Dir::new();
    let mut orders = orders_csv(24, 4, true);
    orders.push_str("C-1,abc,USD,exact,true,Bad,ORD-90\nC-2,12.00,USD,exact,true,Again,ORD-3\n");
    dir.write("o.csv", orders);
    dir.write("r.csv", "site_customer_identifier\nC-0\nC-1\n");
    dir.write(
        "c.csv",
        "site_order_identifier,order_amount\nORD-1,91.00\nORD-2,92.00\n",
    );
    let mut seen = std::collections::BTreeSet::new();
    let mut step = |args: &[&str], fail_rate: f64| {
        sandbox.set_fail_rate(fail_rate);
        let mut args = args.to_vec();
        args.extend(["--max-attempts", "1", "--retry-base-ms", "10"]);
        args.extend(["--rate", "unlimited"]);
        let out = run(dir.cmd(&sandbox, &args));
        let [counted, kept, printed] = row_counts(&dir, &sandbox, "s.db");
        assert_eq!(kept, counted, "after {args:?}: {}", text(&out));
        assert_eq!(printed, counted, "after {args:?}");
        seen.extend(counted.into_iter().map(|(_, state, _)| state));
    };
    step(&["run", "o.csv", "--db", "s.db"], 0.3);
    step(&["retry", "--db", "s.db"], 0.0);
    step(&["refresh", "r.csv", "--db", "s.db", "--force"], 0.3);
    step(&["retry", "--db", "s.db"], 0.0);
    step(&["change", "c.csv", "--db", "s.db"], 0.0);
    for state in ["done", "failed", "rejected"] {
        assert!(seen.contains(state), "no {state} row: {seen:?}");
    }

    // serve writes the URLs and tokens it regenerates into the rows.
    sandbox.set_fail_rate(0.0);
    let server = Server::start(&dir, &sandbox, "s.db", "31m");
    for i in [4, 5, 6] {
        let (status, body) =
            server.get(&format!("/v1/orders/ORD-{i}/embedded-js-url"), Some(TOKEN));
        assert_eq!(status, 200, "{body}");
        let (status, body) = server.get(&format!("/v1/orders/ORD-{i}/smart-link"), Some(TOKEN));
        assert_eq!(status, 200, "{body}");
    }
    drop(server);
    let [counted, kept, printed] = row_counts(&dir, &sandbox, "s.db");
    assert_eq!(kept, counted, "after serve");
    assert_eq!(printed, counted, "after serve");
}
