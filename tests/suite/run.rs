//! A full run: one order per row, byte-exact fields, export equal to the
//! sandbox, batching, exit codes.

use std::collections::HashMap;

use serde_json::Value;

use crate::util::*;

fn sample() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/samples/orders.csv")).unwrap()
}

#[test]
fn run_creates_one_order_per_row_with_exact_fields_and_exports_what_the_sandbox_holds() {
    let sandbox = Sandbox::with(|c| {
        c.strict_serial = true;
        c.latency_ms = Some((1, 4));
    });
    let dir = Dir::new();
    let input = dir.write("orders.csv", sample());
    let out = run(dir.cmd(
        &sandbox,
        &[
            "run",
            input.to_str().unwrap(),
            "--db",
            "s.db",
            "--export",
            "out.csv",
            "--rate",
            "unlimited",
            "--concurrency",
            "8",
        ],
    ));
    assert_eq!(code(&out), 0, "{}", text(&out));

    // One order per row, every field byte-exact (quotes, commas, newlines, non-ASCII).
    let (header, rows) = read_csv(&input);
    let orders = sandbox.orders();
    assert_eq!(orders.len(), rows.len());
    let by_site_order: HashMap<&str, &Value> = orders
        .iter()
        .map(|o| (o["fields"]["site_order_identifier"].as_str().unwrap(), o))
        .collect();
    assert_eq!(by_site_order.len(), rows.len(), "duplicate orders");
    for row in &rows {
        let order = by_site_order[row[1].as_str()];
        for (name, value) in header.iter().zip(row) {
            assert_eq!(
                order["fields"][name].as_str(),
                Some(value.as_str()),
                "{name}"
            );
        }
    }
    let state = sandbox.http_state();
    assert_eq!(state["counters"]["duplicates"], 0);
    assert_eq!(
        state["counters"]["overlaps"], 0,
        "two requests in flight for one customer"
    );

    // The export holds exactly what the sandbox holds.
    let export = read_export(&dir.path("out.csv"));
    assert_eq!(export.len(), rows.len());
    for line in &export {
        assert_eq!(line["status"], "done");
        assert_eq!(line["error"], "");
        let order = by_site_order[line["site_order_identifier"].as_str()];
        for field in [
            "pnm_order_identifier",
            "pnm_customer_identifier",
            "embedded_js_url",
            "embedded_js_url_expires_at",
            "secure_smart_token",
            "secure_smart_link",
        ] {
            assert_eq!(order[field].as_str(), Some(line[field].as_str()), "{field}");
        }
    }

    // Batched: refresh pages and tokens per customer, under 2 requests per order.
    let total = sandbox.total_requests();
    assert_eq!(sandbox.requests("create_order"), rows.len() as u64);
    assert!(
        (total as f64) / (rows.len() as f64) < 2.0,
        "{total} requests for {} rows",
        rows.len()
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("done"), "{stdout}");
}

#[test]
fn customer_with_more_than_five_orders_is_refreshed_in_pages_of_five() {
    let sandbox = Sandbox::start();
    let dir = Dir::new();
    // One customer, 12 orders: pages at offset 0, 5, 10.
    dir.write("o.csv", orders_csv(12, 1, true));
    let out = run(dir.cmd(
        &sandbox,
        &["run", "o.csv", "--db", "s.db", "--rate", "unlimited"],
    ));
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(sandbox.requests("refresh_embedded_js_urls"), 3);
    assert_eq!(sandbox.requests("get_smart_token"), 1);
    let export = {
        let out = run(dir.bare_cmd(&["export", "--db", "s.db", "--out", "e.csv"]));
        assert_eq!(code(&out), 0, "{}", text(&out));
        read_export(&dir.path("e.csv"))
    };
    assert_eq!(export.len(), 12);
    assert!(export
        .iter()
        .all(|r| r["status"] == "done" && !r["embedded_js_url"].is_empty()));
}

#[test]
fn rows_without_site_order_identifier_get_a_stable_derived_one() {
    let sandbox = Sandbox::start();
    let dir = Dir::new();
    dir.write("o.csv", orders_csv(6, 3, false));
    let out = run(dir.cmd(
        &sandbox,
        &["run", "o.csv", "--db", "s.db", "--export", "e.csv"],
    ));
    assert_eq!(code(&out), 0, "{}", text(&out));
    let export = read_export(&dir.path("e.csv"));
    let mut ids: Vec<&str> = export
        .iter()
        .map(|r| r["site_order_identifier"].as_str())
        .collect();
    assert!(ids.iter().all(|id| id.starts_with("ob-")), "{ids:?}");
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 6);
    let sent: Vec<String> = sandbox
        .orders()
        .iter()
        .map(|o| {
            o["fields"]["site_order_identifier"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    for id in ids {
        assert!(sent.iter().any(|s| s == id), "{id} not sent");
    }
}

#[test]
fn a_finished_run_run_again_sends_nothing() {
    let sandbox = Sandbox::start();
    let dir = Dir::new();
    dir.write("o.csv", orders_csv(5, 2, true));
    let args = ["run", "o.csv", "--db", "s.db", "--rate", "unlimited"];
    assert_eq!(code(&run(dir.cmd(&sandbox, &args))), 0);
    let before = sandbox.total_requests();
    let again = run(dir.cmd(&sandbox, &args));
    assert_eq!(code(&again), 0, "{}", text(&again));
    assert_eq!(sandbox.total_requests(), before);
    assert!(String::from_utf8_lossy(&again.stdout).contains("resumed"));
}

#[test]
fn wrong_credentials_stop_the_run_with_exit_3_and_fail_no_row() {
    let sandbox = Sandbox::start();
    let dir = Dir::new();
    dir.write("o.csv", orders_csv(20, 5, true));
    let mut cmd = dir.cmd(
        &sandbox,
        &["run", "o.csv", "--db", "s.db", "--export", "e.csv"],
    );
    cmd.env("PNM_SECRET_KEY", "wrong-secret");
    let out = run(cmd);
    assert_eq!(code(&out), 3, "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid_signature") && stderr.contains("credentials"),
        "{stderr}"
    );
    assert!(sandbox.orders().is_empty());
    // Far fewer requests than rows: the run stopped early.
    assert!(
        sandbox.total_requests() <= 8,
        "{}",
        sandbox.total_requests()
    );
    let export = read_export(&dir.path("e.csv"));
    assert!(export.iter().all(|r| r["status"] != "failed"), "{export:?}");
}

#[test]
fn demo_runs_the_sample_end_to_end() {
    let dir = Dir::new();
    let out = run(dir.bare_cmd(&["demo", "--quiet"]));
    assert_eq!(code(&out), 0, "{}", text(&out));
    let export = read_export(&dir.path("orderbatch-demo/export.csv"));
    assert_eq!(export.len(), 25);
    assert!(export
        .iter()
        .all(|r| r["status"] == "done" && r["secure_smart_token"].starts_with("sst_")));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("sandbox holds 25 orders"), "{stdout}");
    // Running it again starts afresh and succeeds again.
    let again = run(dir.bare_cmd(&["demo", "--quiet"]));
    assert_eq!(code(&again), 0, "{}", text(&again));
}
