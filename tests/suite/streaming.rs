//! `run` streamed by customer: no stage barrier, no head-of-line blocking.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::*;

fn states(dir: &Dir, db: &str) -> Value {
    let out = run(dir.bare_cmd(&["status", "--db", db, "--json"]));
    let status: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    // The newest run of the db.
    let runs = status["runs"].as_array().cloned().unwrap_or_default();
    runs.iter()
        .max_by_key(|r| r["run_id"].as_i64().or_else(|| r["id"].as_i64()))
        .map(|r| r["states"].clone())
        .unwrap_or_default()
}

fn count(states: &Value, state: &str) -> u64 {
    states[state].as_u64().unwrap_or(0)
}

#[test]
fn one_customer_in_trouble_does_not_hold_up_the_others() {
    let sandbox = Sandbox::with(|c| {
        c.latency_ms = Some((1, 3));
        c.strict_serial = true;
        c.poison_customer = Some("C-7".into());
    });
    let dir = Dir::new();
    // 100 customers of two orders each; C-7 answers 500 to everything.
    dir.write("o.csv", orders_csv(200, 100, true));
    let mut child = spawn(dir.cmd(
        &sandbox,
        &[
            "run",
            "o.csv",
            "--db",
            "s.db",
            "--rate",
            "unlimited",
            "--concurrency",
            "8",
            "--max-attempts",
            "6",
            "--retry-base-ms",
            "300",
        ],
    ));
    let started = Instant::now();
    wait_until(Duration::from_secs(60), || {
        count(&states(&dir, "s.db"), "done") >= 198
    });
    // Every healthy row is done while the poisoned customer still retries.
    assert!(child.try_wait().unwrap().is_none(), "the run ended first");
    let healthy = started.elapsed();
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), 1, "{}", text(&out));
    let end = states(&dir, "s.db");
    assert_eq!(count(&end, "done"), 198, "{end}");
    assert_eq!(count(&end, "failed"), 2, "{end}");
    assert!(
        sandbox.state()["counters"]["faults"]["poisoned"]
            .as_u64()
            .unwrap()
            >= 6
    );
    assert_eq!(sandbox.counter("overlaps"), 0);
    assert!(healthy < started.elapsed());
}

#[test]
fn a_run_killed_between_a_customers_create_and_refresh_resumes_at_refresh() {
    let sandbox = Sandbox::with(|c| {
        c.latency_ms = Some((15, 25));
        c.strict_serial = true;
    });
    let dir = Dir::new();
    dir.write("o.csv", orders_csv(60, 6, true));
    let args = [
        "run",
        "o.csv",
        "--db",
        "s.db",
        "--rate",
        "unlimited",
        "--concurrency",
        "4",
        "--export",
        "e.csv",
    ];
    let child = spawn(dir.cmd(&sandbox, &args));
    wait_until(Duration::from_secs(30), || {
        sandbox.requests("create_order") >= 20
    });
    signal(&child, 9);
    let _ = child.wait_with_output().unwrap();
    let killed = states(&dir, "s.db");
    assert!(
        count(&killed, "created") + count(&killed, "creating") > 0,
        "nothing was between create and refresh: {killed}"
    );
    let refreshes_before = sandbox.requests("refresh_embedded_js_urls");
    let out = run(dir.cmd(&sandbox, &args));
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(sandbox.orders().len(), 60);
    assert_eq!(sandbox.counter("duplicates"), 0);
    assert_eq!(sandbox.counter("overlaps"), 0);
    assert!(sandbox.requests("refresh_embedded_js_urls") > refreshes_before);
    let export = read_export(&dir.path("e.csv"));
    assert!(export.iter().all(|r| r["status"] == "done"));
}

#[test]
fn strict_serial_at_concurrency_64_sees_no_overlap() {
    let sandbox = Sandbox::with(|c| {
        c.latency_ms = Some((1, 4));
        c.strict_serial = true;
    });
    let dir = Dir::new();
    dir.write("o.csv", orders_csv(600, 90, true));
    let out = run(dir.cmd(
        &sandbox,
        &[
            "run",
            "o.csv",
            "--db",
            "s.db",
            "--rate",
            "unlimited",
            "--concurrency",
            "64",
        ],
    ));
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(sandbox.orders().len(), 600);
    assert_eq!(sandbox.counter("overlaps"), 0);
    assert_eq!(sandbox.counter("duplicates"), 0);
}

/// Runs `args` in the background and checks that every row but the
/// poisoned customer's (`poisoned` rows) is finished while that customer
/// is still retrying, and that the run then ends with only its rows failed.
fn others_finish_while_one_customer_retries(
    dir: &Dir,
    sandbox: &Sandbox,
    args: &[&str],
    total: u64,
    poisoned: u64,
    ce: bool,
) {
    let mut full: Vec<&str> = args.to_vec();
    full.extend([
        "--rate",
        "unlimited",
        "--concurrency",
        "8",
        "--max-attempts",
        "5",
        "--retry-base-ms",
        "300",
    ]);
    let cmd = if ce {
        dir.ce_cmd(sandbox, &full)
    } else {
        dir.cmd(sandbox, &full)
    };
    let mut child = spawn(cmd);
    let db = full[full.iter().position(|a| *a == "--db").unwrap() + 1].to_string();
    wait_until(Duration::from_secs(60), || {
        count(&states(dir, &db), "done") >= total - poisoned
    });
    // Every healthy row is done while the poisoned customer still retries.
    assert!(child.try_wait().unwrap().is_none(), "the run ended first");
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), 1, "{}", text(&out));
    let end = states(dir, &db);
    assert_eq!(count(&end, "done"), total - poisoned, "{end}");
    assert_eq!(count(&end, "failed"), poisoned, "{end}");
}

#[test]
fn refresh_change_and_ce_retry_finish_every_other_customer_while_one_is_in_trouble() {
    let sandbox = Sandbox::with(|c| {
        c.latency_ms = Some((1, 3));
        c.strict_serial = true;
    });
    let dir = Dir::new();
    // 100 customers of two orders each, all created while healthy.
    dir.write("o.csv", orders_csv(200, 100, true));
    let out = run(dir.cmd(
        &sandbox,
        &["run", "o.csv", "--db", "s.db", "--rate", "unlimited"],
    ));
    assert_eq!(code(&out), 0, "{}", text(&out));
    let mut by_customer = String::from("site_customer_identifier\n");
    for c in 0..100 {
        by_customer.push_str(&format!("C-{c}\n"));
    }
    dir.write("r.csv", &by_customer);
    let mut change = String::from("site_order_identifier,order_amount\n");
    for i in 1..=200 {
        change.push_str(&format!("ORD-{i},{}.00\n", 500 + i));
    }
    dir.write("c.csv", &change);
    // Now C-7 answers 500 to everything.
    sandbox.set_poison("C-7");
    // 99 customer rows expand into 198 rows done; C-7's row fails.
    others_finish_while_one_customer_retries(
        &dir,
        &sandbox,
        &["refresh", "r.csv", "--db", "s.db"],
        199,
        1,
        false,
    );
    // C-7's two changes fail; the 198 others are done.
    others_finish_while_one_customer_retries(
        &dir,
        &sandbox,
        &["change", "c.csv", "--db", "s.db"],
        200,
        2,
        false,
    );
    assert_eq!(sandbox.counter("overlaps"), 0);

    // Commerce Engine orders have no customer: each is its own.
    let mut names: Vec<String> = (0..60).map(|i| format!("CE-{i}")).collect();
    names.push("CE-BAD".into());
    sandbox.seed_failed_ce_orders(&dir, &names);
    sandbox.set_poison("CE-BAD");
    others_finish_while_one_customer_retries(
        &dir,
        &sandbox,
        &[
            "ce",
            "retry-payments",
            "o.csv",
            "--db",
            "ce.db",
            "--max-wait",
            "0s",
        ],
        61,
        1,
        true,
    );
}
