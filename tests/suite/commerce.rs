//! Commerce Engine `ce retry-payments`: the 15-minute rule, deferral with
//! exit 4, paid orders skipped, token refresh, exactly one retry per order.

use std::time::Duration;

use crate::util::*;

#[test]
fn retries_eligible_orders_once_defers_recent_skips_paid_and_fails_missing() {
    let sandbox = Sandbox::start();
    sandbox.seed_ce(&[
        ("FAILED-1", "failed", 60),
        ("STALE-1", "pending", 20 * 60),
        ("RECENT-1", "pending", 14 * 60),
        ("PAID-1", "success", 30 * 60),
    ]);
    let dir = Dir::new();
    dir.write("o.csv", "order_number,return_url\nFAILED-1,https://shop.example/back\nSTALE-1,\nRECENT-1,\nPAID-1,\nMISSING-1,\n");
    let args = [
        "ce",
        "retry-payments",
        "o.csv",
        "--db",
        "ce.db",
        "--export",
        "e.csv",
        "--max-wait",
        "10s",
        "--payment-provider-slug",
        "juspay",
    ];
    let out = run(dir.ce_cmd(&sandbox, &args));
    assert_eq!(code(&out), 4, "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("run the same command again after"));
    assert_eq!(sandbox.ce_order("FAILED-1")["retries"], 1);
    assert_eq!(sandbox.ce_order("STALE-1")["retries"], 1);
    assert_eq!(sandbox.ce_order("RECENT-1")["retries"], 0);
    assert_eq!(sandbox.ce_order("PAID-1")["retries"], 0);
    let method = &sandbox.ce_order("FAILED-1")["payments"][0]["payment_method"];
    assert_eq!(method["payment_provider_slug"], "juspay");
    assert_eq!(method["return_url"], "https://shop.example/back");

    let export = read_export(&dir.path("e.csv"));
    let by = |n: &str| {
        export
            .iter()
            .find(|r| r["order_number"] == n)
            .unwrap()
            .clone()
    };
    let failed = by("FAILED-1");
    assert_eq!(failed["status"], "done");
    assert_eq!(failed["payment_id"], "pay_FAILED-1_1");
    assert_eq!(
        failed["payment_link"],
        sandbox.ce_order("FAILED-1")["payments"][0]["payment_links"]["web"]
            .as_str()
            .unwrap()
    );
    assert!(!failed["payment_link_expiry"].is_empty());
    assert_eq!(by("RECENT-1")["status"], "deferred");
    assert_eq!(by("PAID-1")["status"], "skipped");
    assert!(by("PAID-1")["error"].contains("paid"));
    assert_eq!(by("MISSING-1")["status"], "failed");
    assert!(
        by("MISSING-1")["error"].contains("not found"),
        "{:?}",
        by("MISSING-1")
    );

    // Later, once RECENT-1's window has opened, the same command retries it alone.
    sandbox.age(2 * 60);
    let later = run(dir.ce_cmd(&sandbox, &args));
    assert_eq!(code(&later), 1, "one row failed: {}", text(&later));
    assert_eq!(sandbox.ce_order("RECENT-1")["retries"], 1);
    for n in ["FAILED-1", "STALE-1"] {
        assert_eq!(
            sandbox.ce_order(n)["retries"],
            1,
            "{n} retried exactly once"
        );
    }
    let export = read_export(&dir.path("e.csv"));
    assert_eq!(
        export
            .iter()
            .find(|r| r["order_number"] == "RECENT-1")
            .unwrap()["status"],
        "done"
    );
}

#[test]
fn a_window_opening_within_max_wait_is_waited_for() {
    let sandbox = Sandbox::start();
    sandbox.seed_ce(&[("SOON-1", "pending", 15 * 60 - 5)]);
    let dir = Dir::new();
    dir.write("o.csv", "order_number\nSOON-1\n");
    let started = std::time::Instant::now();
    let out = run(dir.ce_cmd(
        &sandbox,
        &["ce", "retry-payments", "o.csv", "--db", "ce.db"],
    ));
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert_eq!(sandbox.ce_order("SOON-1")["retries"], 1);
    assert_eq!(sandbox.state()["ce"]["too_early"], 1);
}

#[test]
fn an_access_token_expiring_mid_run_is_refreshed() {
    let sandbox = Sandbox::with(|c| c.ce_token_ttl = Duration::from_millis(700));
    let orders: Vec<String> = (1..=8).map(|i| format!("F-{i}")).collect();
    let seeds: Vec<(&str, &str, i64)> = orders.iter().map(|n| (n.as_str(), "failed", 60)).collect();
    sandbox.seed_ce(&seeds);
    let dir = Dir::new();
    dir.write("o.csv", format!("order_number\n{}\n", orders.join("\n")));
    let out = run(dir.ce_cmd(
        &sandbox,
        &[
            "ce",
            "retry-payments",
            "o.csv",
            "--db",
            "ce.db",
            "--rate",
            "6",
        ],
    ));
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        sandbox.ce_requests("auth/refresh-token") >= 1,
        "{}",
        sandbox.state()["ce"]
    );
    assert!(orders.iter().all(|n| sandbox.ce_order(n)["retries"] == 1));
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("cea_"),
        "tokens are never logged"
    );
}

#[test]
fn killed_and_resumed_runs_retry_each_order_exactly_once() {
    let sandbox = Sandbox::start();
    let orders: Vec<String> = (1..=30).map(|i| format!("K-{i}")).collect();
    let dir = Dir::new();
    sandbox.seed_failed_ce_orders(&dir, &orders);
    let args = [
        "ce",
        "retry-payments",
        "o.csv",
        "--db",
        "ce.db",
        "--export",
        "e.csv",
        "--rate",
        "20",
    ];
    for _ in 0..2 {
        let child = spawn(dir.ce_cmd(&sandbox, &args));
        let before = sandbox.ce_requests("retry-payment");
        wait_until(Duration::from_secs(30), || {
            sandbox.ce_requests("retry-payment") >= before + 5
        });
        signal(&child, 9);
        child.wait_with_output().unwrap();
    }
    let out = run(dir.ce_cmd(&sandbox, &args));
    assert_eq!(code(&out), 0, "{}", text(&out));
    for n in &orders {
        assert_eq!(sandbox.ce_order(n)["retries"], 1, "{n}");
    }
    let export = read_export(&dir.path("e.csv"));
    assert!(export.iter().all(|r| r["status"] == "done"), "{export:?}");
}

#[test]
fn dry_run_and_missing_credentials() {
    let dir = Dir::new();
    dir.write("o.csv", "order_number\nA\nB\n");
    let out = run(dir.bare_cmd(&[
        "ce",
        "retry-payments",
        "o.csv",
        "--db",
        "ce.db",
        "--dry-run",
    ]));
    assert_eq!(code(&out), 0, "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("payment-status") && stdout.contains("retry-payment"),
        "{stdout}"
    );
    let out = run(dir.bare_cmd(&["ce", "retry-payments", "o.csv", "--db", "ce.db"]));
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("CE_BASE_URL"));
    assert!(!dir.path("ce.db").exists());
}

#[test]
fn the_store_and_where_its_key_is_may_come_from_the_config_file() {
    use std::os::unix::fs::PermissionsExt;
    let sandbox = Sandbox::start();
    sandbox.seed_ce(&[("CFG-1", "failed", 60)]);
    let dir = Dir::new();
    dir.write("o.csv", "order_number\nCFG-1\n");
    let key = dir.write("ce-key", "ce-sandbox-key\n");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    dir.write(
        "orderbatch.toml",
        format!(
            "[commerce_engine]\nbase_url = \"{}\"\nstore_id = \"store_1\"\napi_key_file = \"{}\"\n",
            sandbox.base_url(),
            key.display()
        ),
    );
    let args = ["ce", "retry-payments", "o.csv", "--db", "ce.db"];
    let out = run(dir.bare_cmd(&args));
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(sandbox.ce_order("CFG-1")["retries"], 1);

    let shown = run(dir.bare_cmd(&["config", "show"]));
    let shown = String::from_utf8_lossy(&shown.stdout).to_string();
    assert!(
        shown.contains("commerce_engine.store_id") && shown.contains("store_1"),
        "{shown}"
    );
    assert!(!shown.contains("ce-sandbox-key"), "{shown}");

    // The environment wins over the file; the key itself may not be in it.
    let mut cmd = dir.bare_cmd(&["config", "show"]);
    cmd.env("CE_STORE_ID", "other_store");
    let shown = String::from_utf8_lossy(&run(cmd).stdout).to_string();
    let line = shown
        .lines()
        .find(|l| l.starts_with("commerce_engine.store_id"))
        .unwrap_or_default();
    assert!(
        line.contains("other_store") && line.contains("environment CE_STORE_ID"),
        "{shown}"
    );
    dir.write(
        "orderbatch.toml",
        "[commerce_engine]\nstore_id = \"store_1\"\napi_key = \"ce-sandbox-key\"\n",
    );
    let out = run(dir.bare_cmd(&args));
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("api_key_file"),
        "{}",
        text(&out)
    );
}

#[test]
fn given_access_and_refresh_tokens_are_used_and_never_logged() {
    let sandbox = Sandbox::start();
    sandbox.seed_ce(&[("T-1", "failed", 60)]);
    let url = format!(
        "{}/api/v1/store_1/storefront/auth/anonymous",
        sandbox.base_url()
    );
    let body: serde_json::Value = {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let bytes = reqwest::Client::new()
                .post(url)
                .header("X-Api-Key", "ce-sandbox-key")
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            serde_json::from_slice(&bytes).unwrap()
        })
    };
    let access = body["content"]["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let refresh = body["content"]["refresh_token"]
        .as_str()
        .unwrap()
        .to_string();
    let dir = Dir::new();
    dir.write("o.csv", "order_number\nT-1\n");
    let mut cmd = dir.ce_cmd(
        &sandbox,
        &[
            "ce",
            "retry-payments",
            "o.csv",
            "--db",
            "ce.db",
            "--export",
            "e.csv",
        ],
    );
    cmd.env_remove("CE_API_KEY")
        .env("CE_ACCESS_TOKEN", &access)
        .env("CE_REFRESH_TOKEN", &refresh)
        .env("RUST_LOG", "trace");
    let out = run(cmd);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(sandbox.ce_order("T-1")["retries"], 1);
    for secret in [&access, &refresh] {
        let found = [&out.stdout, &out.stderr]
            .iter()
            .any(|o| String::from_utf8_lossy(o).contains(secret.as_str()));
        assert!(!found, "token in output");
        for f in ["ce.db", "e.csv", "ce.db.report.md", "ce.db.report.json"] {
            let bytes = std::fs::read(dir.path(f)).unwrap_or_default();
            assert!(
                !String::from_utf8_lossy(&bytes).contains(secret.as_str()),
                "token in {f}"
            );
        }
    }
}
