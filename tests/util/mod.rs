//! Test helpers: an in-process sandbox on 127.0.0.1:0, a command wrapper for
//! the real binary, and order-file builders.

#![allow(dead_code)]

pub mod hostile;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use orderbatch::sandbox::{self, SandboxConfig, SandboxHandle};
use secrecy::SecretString;
use serde_json::Value;

pub const SITE: &str = "S_TEST";
pub const SECRET: &str = "test-secret-7f3a9c1e5b";
pub const CLIENT_ID: &str = "client:ü%+1";
pub const CLIENT_SECRET: &str = "oauth-secret:9d%2B+x ü";

/// A sandbox running on its own runtime for the length of a test.
pub struct Sandbox {
    handle: Option<SandboxHandle>,
    runtime: tokio::runtime::Runtime,
}

impl Sandbox {
    pub fn start() -> Self {
        Self::with(|_| {})
    }

    pub fn with(tune: impl FnOnce(&mut SandboxConfig)) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut config = SandboxConfig::new(SITE, SecretString::from(SECRET));
        config.client_id = CLIENT_ID.into();
        config.client_secret = SecretString::from(CLIENT_SECRET);
        tune(&mut config);
        let handle = runtime
            .block_on(sandbox::start(
                config,
                SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            ))
            .unwrap();
        Sandbox {
            handle: Some(handle),
            runtime,
        }
    }

    pub fn base_url(&self) -> String {
        self.handle.as_ref().unwrap().base_url()
    }

    pub fn token_url(&self) -> String {
        self.handle.as_ref().unwrap().token_url()
    }

    /// The sandbox's OAuth counters (and the tokens it issued).
    pub fn oauth(&self) -> Value {
        self.state()["oauth"].clone()
    }

    /// Sets the share of requests answered 500 (1.0: a full outage).
    pub fn set_fail_rate(&self, rate: f64) {
        self.set_faults(format!("{{\"fail_rate\": {rate}}}"));
    }

    /// Sets the share of requests whose connection is dropped after the work.
    pub fn set_drop_rate(&self, rate: f64) {
        self.set_faults(format!("{{\"drop_rate\": {rate}}}"));
    }

    /// Every request about `customer` (a site customer, or a Commerce
    /// Engine order) answers 500 from now on (`""`: none).
    pub fn set_poison(&self, customer: &str) {
        self.set_faults(format!("{{\"poison\": \"{customer}\"}}"));
    }

    /// Makes every PayNearMe request wait `ms` before anything else (a
    /// slow or hung provider; 0 lifts it).
    pub fn set_delay_ms(&self, ms: u64) {
        self.set_faults(format!("{{\"delay_ms\": {ms}}}"));
    }

    /// How refresh answers give `embedded_js_url_expires_at`: `"omit"`,
    /// `"garbled"` or `"rfc3339"` (the default).
    pub fn set_url_expiry(&self, how: &str) {
        self.set_faults(format!("{{\"url_expiry\": \"{how}\"}}"));
    }

    /// Limits injected faults to one endpoint (`""`: all of them again).
    pub fn set_faults_only(&self, endpoint: &str) {
        self.set_faults(format!("{{\"only\": \"{endpoint}\"}}"));
    }

    pub fn set_faults(&self, body: impl Into<String>) {
        let body: String = body.into();
        let url = format!("{}/__sandbox/faults", self.base_url());
        self.runtime.block_on(async {
            let status = reqwest::Client::new()
                .post(url)
                .body(body)
                .send()
                .await
                .unwrap()
                .status();
            assert!(status.is_success());
        });
    }

    /// Revokes every token issued so far.
    pub fn revoke_tokens(&self) {
        let url = format!("{}/__sandbox/oauth/revoke", self.base_url());
        self.runtime.block_on(async {
            let status = reqwest::Client::new()
                .post(url)
                .send()
                .await
                .unwrap()
                .status();
            assert!(status.is_success());
        });
    }

    pub fn state(&self) -> Value {
        self.handle.as_ref().unwrap().state()
    }

    pub fn orders(&self) -> Vec<Value> {
        self.state()["orders"].as_array().unwrap().clone()
    }

    pub fn counter(&self, name: &str) -> u64 {
        self.state()["counters"][name].as_u64().unwrap()
    }

    pub fn requests(&self, endpoint: &str) -> u64 {
        self.state()["counters"]["requests"][endpoint]
            .as_u64()
            .unwrap_or(0)
    }

    pub fn total_requests(&self) -> u64 {
        self.state()["counters"]["requests"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum()
    }

    /// `GET /__sandbox/state` over real HTTP.
    pub fn http_state(&self) -> Value {
        let url = format!("{}/__sandbox/state", self.base_url());
        self.runtime.block_on(async {
            let bytes = reqwest::get(url).await.unwrap().bytes().await.unwrap();
            serde_json::from_slice(&bytes).unwrap()
        })
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            self.runtime.block_on(handle.stop());
        }
    }
}

/// A temporary folder that the binary runs in.
pub struct Dir {
    pub tmp: tempfile::TempDir,
}

impl Dir {
    pub fn new() -> Self {
        Dir {
            tmp: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap()
    }

    /// The binary with the sandbox's credentials in its environment.
    pub fn cmd(&self, sandbox: &Sandbox, args: &[&str]) -> Command {
        let mut cmd = self.bare_cmd(args);
        cmd.env("PNM_BASE_URL", sandbox.base_url())
            .env("PNM_SITE_IDENTIFIER", SITE)
            .env("PNM_SECRET_KEY", SECRET);
        cmd
    }

    /// The binary with the sandbox's OAuth client credentials (and no
    /// HMAC secret) in its environment.
    pub fn oauth_cmd(&self, sandbox: &Sandbox, args: &[&str]) -> Command {
        let mut cmd = self.bare_cmd(args);
        cmd.env("PNM_BASE_URL", sandbox.base_url())
            .env("PNM_SITE_IDENTIFIER", SITE)
            .env("PNM_CLIENT_ID", CLIENT_ID)
            .env("PNM_CLIENT_SECRET", CLIENT_SECRET)
            .env("PNM_TOKEN_URL", sandbox.token_url());
        cmd
    }

    /// The binary with no credentials.
    pub fn bare_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_orderbatch"));
        cmd.args(args)
            .current_dir(self.tmp.path())
            .env_remove("PNM_BASE_URL")
            .env_remove("PNM_SITE_IDENTIFIER")
            .env_remove("PNM_SECRET_KEY")
            .env_remove("PNM_SECRET_KEY_FILE")
            .env_remove("PNM_API_KEY_ID")
            .env_remove("PNM_CLIENT_ID")
            .env_remove("PNM_CLIENT_SECRET")
            .env_remove("PNM_CLIENT_SECRET_FILE")
            .env_remove("PNM_TOKEN_URL")
            .env_remove("PNM_TOKEN_SCOPE")
            .env_remove("CE_BASE_URL")
            .env_remove("CE_STORE_ID")
            .env_remove("CE_API_KEY")
            .env_remove("CE_API_KEY_FILE")
            .env_remove("CE_ACCESS_TOKEN")
            .env_remove("CE_REFRESH_TOKEN")
            .env_remove("RUST_LOG")
            // An unanswered request may still be running at the provider
            // for this long: the sandbox answers in milliseconds (the
            // default, --timeout or 5 s, is tested on its own).
            .env("ORDERBATCH_SETTLE_MS", "300")
            .stdin(Stdio::null());
        cmd
    }
}

/// Every file below `dir`, in every subfolder (what a run leaves behind).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// Runs a command to its end.
pub fn run(mut cmd: Command) -> Output {
    cmd.output().unwrap()
}

pub fn code(output: &Output) -> i32 {
    output.status.code().unwrap_or(-1)
}

pub fn text(output: &Output) -> String {
    format!(
        "--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Starts a command in the background.
pub fn spawn(mut cmd: Command) -> Child {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Sends a signal to a child by number (2 = SIGINT, 9 = SIGKILL).
pub fn signal(child: &Child, signal: i32) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

/// Polls `done` until it holds, failing the test after `limit`.
pub fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < limit,
            "condition not reached in {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// An order file of `rows` rows over `customers` customers, interleaved,
/// with quoted commas, quotes and non-ASCII names.
pub fn orders_csv(rows: usize, customers: usize, with_order_ids: bool) -> String {
    let mut out = String::from(
        "site_customer_identifier,order_amount,order_currency,order_type,order_is_standing,site_customer_name",
    );
    if with_order_ids {
        out.push_str(",site_order_identifier");
    }
    out.push('\n');
    for i in 1..=rows {
        let customer = i % customers;
        out.push_str(&format!(
            "C-{customer},{}.{:02},USD,exact,true,\"Ñandú {customer}, \"\"Jr\"\"\"",
            10 + i,
            i % 100
        ));
        if with_order_ids {
            out.push_str(&format!(",ORD-{i}"));
        }
        out.push('\n');
    }
    out
}

/// Reads a CSV into header and records.
pub fn read_csv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let mut reader = csv::Reader::from_path(path).unwrap();
    let header = reader.headers().unwrap().iter().map(String::from).collect();
    let rows = reader
        .records()
        .map(|r| r.unwrap().iter().map(String::from).collect())
        .collect();
    (header, rows)
}

/// The export's records as maps from column name to value.
pub fn read_export(path: &Path) -> Vec<std::collections::HashMap<String, String>> {
    let (header, rows) = read_csv(path);
    rows.into_iter()
        .map(|r| header.iter().cloned().zip(r).collect())
        .collect()
}

impl Sandbox {
    /// Moves the sandbox clock forward (`POST /__sandbox/age`).
    pub fn age(&self, seconds: i64) {
        let url = format!("{}/__sandbox/age", self.base_url());
        self.runtime.block_on(async {
            let status = reqwest::Client::new()
                .post(url)
                .body(format!("{{\"seconds\": {seconds}}}"))
                .send()
                .await
                .unwrap()
                .status();
            assert!(status.is_success());
        });
    }

    /// Seeds `names` as orders whose payment failed a minute ago (a retry
    /// is allowed at once) and writes `o.csv` listing them.
    pub fn seed_failed_ce_orders(&self, dir: &Dir, names: &[String]) {
        let seeds: Vec<(&str, &str, i64)> =
            names.iter().map(|n| (n.as_str(), "failed", 60)).collect();
        self.seed_ce(&seeds);
        dir.write("o.csv", format!("order_number\n{}\n", names.join("\n")));
    }

    /// The sandbox's order with this `site_order_identifier`.
    pub fn order(&self, site_order_identifier: &str) -> Value {
        self.orders()
            .into_iter()
            .find(|o| o["fields"]["site_order_identifier"] == site_order_identifier)
            .unwrap_or_else(|| panic!("no order {site_order_identifier}"))
    }
}

impl Sandbox {
    /// Seeds Commerce Engine orders: (order_number, status, seconds since the last payment request).
    pub fn seed_ce(&self, orders: &[(&str, &str, i64)]) {
        let body: Vec<Value> = orders
            .iter()
            .map(|(n, s, ago)| serde_json::json!({"order_number": n, "status": s, "last_request_seconds_ago": ago}))
            .collect();
        let url = format!("{}/__sandbox/ce/orders", self.base_url());
        self.runtime.block_on(async {
            let status = reqwest::Client::new()
                .post(url)
                .body(serde_json::to_vec(&body).unwrap())
                .send()
                .await
                .unwrap()
                .status();
            assert!(status.is_success());
        });
    }

    /// The Commerce Engine order's state.
    pub fn ce_order(&self, number: &str) -> Value {
        self.state()["ce"]["orders"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["order_number"] == number)
            .cloned()
            .unwrap_or_else(|| panic!("no CE order {number}"))
    }

    pub fn ce_requests(&self, name: &str) -> u64 {
        self.state()["ce"]["requests"][name].as_u64().unwrap_or(0)
    }
}

impl Dir {
    /// The binary with the sandbox's Commerce Engine credentials.
    pub fn ce_cmd(&self, sandbox: &Sandbox, args: &[&str]) -> Command {
        let mut cmd = self.bare_cmd(args);
        cmd.env("CE_BASE_URL", sandbox.base_url())
            .env("CE_STORE_ID", "store_1")
            .env("CE_API_KEY", "ce-sandbox-key")
            .env_remove("CE_ACCESS_TOKEN")
            .env_remove("CE_REFRESH_TOKEN");
        cmd
    }
}
