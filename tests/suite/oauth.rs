//! OAuth 2.0: a site onboarded since 2026-08-01 runs every command with
//! client-credentials Bearer tokens, renewed before they expire, one token
//! request at a time, and never written anywhere.

use std::time::Instant;

use crate::util::*;

fn oauth_only(lifetime_secs: u64) -> Sandbox {
    Sandbox::with(|c| {
        c.oauth_only = true;
        c.token_lifetime = std::time::Duration::from_secs(lifetime_secs);
        c.latency_ms = Some((1, 3));
    })
}

/// No request went without a Bearer token and no token request overlapped
/// another.
fn assert_oauth_only(sandbox: &Sandbox) {
    let oauth = sandbox.oauth();
    assert_eq!(oauth["hmac_requests"], 0, "{oauth}");
    assert_eq!(oauth["oauth_required_answers"], 0, "{oauth}");
    assert!(
        oauth["max_token_requests_in_flight"].as_u64().unwrap() <= 1,
        "{oauth}"
    );
}

#[test]
fn an_oauth_only_site_runs_500_rows_through_many_short_token_lifetimes() {
    let sandbox = oauth_only(2);
    let dir = Dir::new();
    dir.write("o.csv", orders_csv(500, 60, true));
    let started = Instant::now();
    let out = run(dir.oauth_cmd(
        &sandbox,
        &[
            "run",
            "o.csv",
            "--db",
            "s.db",
            "--export",
            "e.csv",
            "--rate",
            "120",
            "--concurrency",
            "32",
        ],
    ));
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(sandbox.orders().len(), 500);
    assert_eq!(sandbox.counter("duplicates"), 0);
    let export = read_export(&dir.path("e.csv"));
    assert_eq!(export.len(), 500);
    assert!(export.iter().all(|r| r["status"] == "done"));
    assert_oauth_only(&sandbox);
    let oauth = sandbox.oauth();
    // Renewed before expiry (every 1.6 s of a 2 s token): about one token
    // per 1.6 s of run, never one per request.
    let tokens = oauth["token_requests"].as_u64().unwrap();
    let api_requests = sandbox.total_requests();
    assert!(elapsed > 3.0, "the run was too short to renew: {elapsed}");
    assert!(tokens >= 2, "never renewed: {oauth}");
    assert!(
        (tokens as f64) <= elapsed / 1.6 + 3.0,
        "{tokens} token requests in {elapsed:.1}s"
    );
    assert_eq!(oauth["bearer_requests"].as_u64().unwrap(), api_requests);
    assert_eq!(oauth["token_refused"], 0);
}

#[test]
fn revoked_tokens_are_renewed_once_and_the_same_request_resent_without_reconciling() {
    let sandbox = Sandbox::with(|c| {
        c.oauth_only = true;
        c.latency_ms = Some((20, 30));
    });
    let dir = Dir::new();
    dir.write("o.csv", orders_csv(120, 40, true));
    let child = spawn(dir.oauth_cmd(
        &sandbox,
        &[
            "run",
            "o.csv",
            "--db",
            "s.db",
            "--rate",
            "unlimited",
            "--concurrency",
            "16",
        ],
    ));
    wait_until(std::time::Duration::from_secs(30), || {
        sandbox.requests("create_order") >= 20
    });
    sandbox.revoke_tokens();
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
    let oauth = sandbox.oauth();
    assert!(
        oauth["unknown_token_answers"].as_u64().unwrap() > 0,
        "no request met the revoked token: {oauth}"
    );
    assert!(oauth["token_requests"].as_u64().unwrap() >= 2, "{oauth}");
    assert_oauth_only(&sandbox);
    // The refused requests were never processed: nothing to reconcile, no
    // attempt recorded as failed, one order per row.
    assert_eq!(sandbox.requests("find_orders"), 0);
    assert_eq!(sandbox.orders().len(), 120);
    assert_eq!(sandbox.counter("duplicates"), 0);
    let status = run(dir.bare_cmd(&["status", "--db", "s.db", "--json"]));
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert!(
        !status.to_string().contains("invalid_token"),
        "a renewed token counted as a failed attempt: {status}"
    );
}

#[test]
fn refresh_change_and_retry_work_for_an_oauth_only_site_with_the_secret_in_a_file() {
    let sandbox = oauth_only(3600);
    let dir = Dir::new();
    let secret_file = dir.write("client-secret", format!("{CLIENT_SECRET}\n"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let cmd = |args: &[&str]| {
        let mut cmd = dir.oauth_cmd(&sandbox, args);
        cmd.env_remove("PNM_CLIENT_SECRET")
            .env("PNM_CLIENT_SECRET_FILE", &secret_file);
        cmd
    };
    dir.write("o.csv", orders_csv(12, 3, true));
    let out = run(cmd(&["run", "o.csv", "--db", "run.db"]));
    assert_eq!(code(&out), 0, "{}", text(&out));

    dir.write("r.csv", "site_customer_identifier\nC-0\nC-1\nC-2\n");
    let out = run(cmd(&[
        "refresh",
        "r.csv",
        "--db",
        "refresh.db",
        "--force",
        "--export",
        "r-out.csv",
    ]));
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(read_export(&dir.path("r-out.csv")).len(), 12);
    assert!(sandbox.orders().iter().all(|o| o["url_generations"] == 2));

    dir.write(
        "c.csv",
        "site_order_identifier,order_amount\nORD-1,99.00\nORD-2,98.00\n",
    );
    let out = run(cmd(&["change", "c.csv", "--db", "change.db"]));
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(sandbox.order("ORD-1")["fields"]["order_amount"], "99.00");
    assert_eq!(sandbox.order("ORD-2")["changes"], 1);

    // A row naming an order that does not exist fails; retry sends it again
    // with a Bearer token too.
    dir.write("m.csv", "pnm_order_identifier\nno-such-order\n");
    let out = run(cmd(&["refresh", "m.csv", "--db", "missing.db"]));
    assert_eq!(code(&out), 1, "{}", text(&out));
    let before = sandbox.oauth()["bearer_requests"].as_u64().unwrap();
    let out = run(cmd(&["retry", "--db", "missing.db"]));
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(
        text(&out).contains("1 failed rows back in the queue"),
        "{}",
        text(&out)
    );
    assert!(sandbox.oauth()["bearer_requests"].as_u64().unwrap() > before);
    assert_oauth_only(&sandbox);
}

#[test]
fn a_wrong_client_secret_stops_at_once_with_exit_3_naming_the_client_credentials() {
    let sandbox = oauth_only(3600);
    let dir = Dir::new();
    dir.write("o.csv", orders_csv(20, 4, true));
    let mut cmd = dir.oauth_cmd(
        &sandbox,
        &["run", "o.csv", "--db", "s.db", "--concurrency", "8"],
    );
    cmd.env("PNM_CLIENT_SECRET", "not-the-secret");
    let out = run(cmd);
    assert_eq!(code(&out), 3, "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("PNM_CLIENT_ID"), "{stderr}");
    assert!(stderr.contains("invalid_client"), "{stderr}");
    assert!(!stderr.contains("not-the-secret"), "{stderr}");
    assert_eq!(sandbox.orders().len(), 0);
    assert_eq!(
        sandbox.total_requests(),
        0,
        "an API request left without a token"
    );
    // One refusal is enough: workers do not each ask again.
    assert!(sandbox.oauth()["token_refused"].as_u64().unwrap() <= 8);
}

#[test]
fn a_signed_request_to_an_oauth_only_site_names_the_oauth_settings() {
    let sandbox = oauth_only(3600);
    let dir = Dir::new();
    dir.write("o.csv", orders_csv(3, 1, true));
    let out = run(dir.cmd(&sandbox, &["run", "o.csv", "--db", "s.db"]));
    assert_eq!(code(&out), 3, "{}", text(&out));
    assert!(text(&out).contains("PNM_CLIENT_ID"), "{}", text(&out));
    assert_eq!(sandbox.orders().len(), 0);
}

#[test]
fn oauth_configuration_is_checked_before_anything_is_sent() {
    let sandbox = oauth_only(3600);
    let dir = Dir::new();
    dir.write("o.csv", orders_csv(3, 1, true));
    // A client id without a token URL.
    let mut cmd = dir.oauth_cmd(&sandbox, &["run", "o.csv", "--db", "s.db"]);
    cmd.env_remove("PNM_TOKEN_URL");
    let out = run(cmd);
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(text(&out).contains("PNM_TOKEN_URL"), "{}", text(&out));
    // A plain-http token URL to another host.
    let mut cmd = dir.oauth_cmd(&sandbox, &["run", "o.csv", "--db", "s.db"]);
    cmd.env("PNM_TOKEN_URL", "http://auth.example.com/oauth/token");
    let out = run(cmd);
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(text(&out).contains("not https"), "{}", text(&out));
    // --auth hmac without a secret names the secret.
    let out = run(dir.oauth_cmd(
        &sandbox,
        &["run", "o.csv", "--db", "s.db", "--auth", "hmac"],
    ));
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(text(&out).contains("PNM_SECRET_KEY"), "{}", text(&out));
    assert_eq!(sandbox.oauth()["token_requests"], 0);
    assert_eq!(sandbox.total_requests(), 0);
    assert!(!dir.path("s.db").exists());
}

#[test]
fn config_show_names_the_method_and_where_each_value_came_from() {
    let sandbox = oauth_only(3600);
    let dir = Dir::new();
    let out = run(dir.oauth_cmd(&sandbox, &["config", "show"]));
    assert_eq!(code(&out), 0, "{}", text(&out));
    let shown = String::from_utf8_lossy(&out.stdout).to_string();
    let line = |key: &str| {
        shown
            .lines()
            .find(|l| l.starts_with(&format!("{key} ")))
            .unwrap_or_else(|| panic!("no {key} in {shown}"))
            .to_string()
    };
    assert!(line("auth").contains("oauth"), "{shown}");
    assert!(
        line("client_id").contains("environment PNM_CLIENT_ID"),
        "{shown}"
    );
    assert!(line("client_secret").contains("[redacted]"), "{shown}");
    assert!(line("token_url").contains(&sandbox.token_url()), "{shown}");
    assert!(line("token_client_auth").contains("basic"), "{shown}");
    assert!(!shown.contains(CLIENT_SECRET), "{shown}");
    // --auth hmac wins over a configured client id.
    let out = run(dir.oauth_cmd(&sandbox, &["config", "show", "--auth", "hmac"]));
    let shown = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("auth ") && l.contains("hmac") && l.contains("command line")),
        "{shown}"
    );
}

#[test]
fn post_client_auth_from_the_config_file_gets_tokens_too() {
    let sandbox = oauth_only(3600);
    let dir = Dir::new();
    dir.write(
        "orderbatch.toml",
        format!(
            "client_id = \"{CLIENT_ID}\"\nclient_secret_env = \"MY_CLIENT_SECRET\"\ntoken_url = \"{}\"\ntoken_client_auth = \"post\"\nscope = \"orders\"\n",
            sandbox.token_url()
        ),
    );
    dir.write("o.csv", orders_csv(4, 2, true));
    let mut cmd = dir.bare_cmd(&["run", "o.csv", "--db", "s.db"]);
    cmd.env("PNM_BASE_URL", sandbox.base_url())
        .env("PNM_SITE_IDENTIFIER", SITE)
        .env("MY_CLIENT_SECRET", CLIENT_SECRET);
    let out = run(cmd);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(sandbox.orders().len(), 4);
    assert_oauth_only(&sandbox);
    // A client secret written into the config file is refused.
    dir.write("bad.toml", "client_id = \"x\"\nclient_secret = \"s\"\n");
    let out = run(dir.bare_cmd(&["--config", "bad.toml", "config", "show"]));
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(text(&out).contains("client_secret_env"), "{}", text(&out));
}

#[test]
fn neither_the_client_secret_nor_any_access_token_is_written_anywhere() {
    let sandbox = oauth_only(2);
    let dir = Dir::new();
    dir.write("o.csv", orders_csv(60, 6, true));
    let mut outputs = Vec::new();
    for (db, format) in [("t.db", "text"), ("j.db", "json")] {
        let mut cmd = dir.oauth_cmd(
            &sandbox,
            &[
                "run",
                "o.csv",
                "--db",
                db,
                "--export",
                &format!("{db}.csv"),
                "-vv",
                "--log-format",
                format,
                "--rate",
                "40",
            ],
        );
        cmd.env("RUST_LOG", "trace");
        let out = run(cmd);
        assert_eq!(code(&out), 0, "{}", text(&out));
        assert!(!out.stderr.is_empty());
        outputs.push(out.stdout);
        outputs.push(out.stderr);
    }
    let tokens: Vec<String> = sandbox.oauth()["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    assert!(tokens.len() >= 2, "{tokens:?}");
    let mut needles: Vec<Vec<u8>> = tokens.iter().map(|t| t.as_bytes().to_vec()).collect();
    needles.push(CLIENT_SECRET.as_bytes().to_vec());
    // The form-urlencoded secret as it goes into the Basic header.
    needles.push(b"oauth-secret%3A9d".to_vec());
    let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    for needle in &needles {
        for output in &outputs {
            assert!(!contains(output, needle), "a secret in the output");
        }
        for path in files_under(dir.tmp.path()) {
            let bytes = std::fs::read(&path).unwrap();
            assert!(!contains(&bytes, needle), "a secret in {}", path.display());
        }
    }
}

#[test]
fn the_demo_rehearses_an_oauth_only_site() {
    let dir = Dir::new();
    let out = run(dir.bare_cmd(&["demo", "--auth", "oauth", "--dir", "d"]));
    assert_eq!(code(&out), 0, "{}", text(&out));
    let export = read_export(&dir.path("d/export.csv"));
    assert!(!export.is_empty());
    assert!(export.iter().all(|r| r["status"] == "done"));
}

#[test]
fn a_token_endpoint_that_fails_for_a_while_is_retried_and_nothing_fails() {
    let sandbox = oauth_only(2);
    // The token endpoint answers 503 until three requests have met it.
    sandbox.set_faults_only("token");
    sandbox.set_fail_rate(1.0);
    let dir = Dir::new();
    dir.write("o.csv", orders_csv(60, 10, true));
    let child = spawn(dir.oauth_cmd(
        &sandbox,
        &[
            "run",
            "o.csv",
            "--db",
            "s.db",
            "--rate",
            "40",
            "--retry-base-ms",
            "20",
        ],
    ));
    wait_until(std::time::Duration::from_secs(30), || {
        sandbox.oauth()["token_failures"].as_u64().unwrap() >= 3
    });
    sandbox.set_fail_rate(0.0);
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
    let oauth = sandbox.oauth();
    assert_eq!(oauth["token_refused"], 0, "{oauth}");
    assert_eq!(sandbox.orders().len(), 60);
    assert_eq!(
        sandbox.requests("find_orders"),
        0,
        "a token failure is not an unknown outcome"
    );
    assert_oauth_only(&sandbox);
}
