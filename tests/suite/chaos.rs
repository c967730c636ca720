//! Exactly once under faults: 500s, dropped connections, 429s, strict
//! per-customer serialisation, and SIGKILL at random points, then resume.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::util::*;

const ROWS: usize = 1000;
const CUSTOMERS: usize = 50;

fn faulty_sandbox(seed: u64) -> Sandbox {
    Sandbox::with(|c| {
        c.seed = seed;
        c.fail_rate = 0.05;
        c.drop_rate = 0.05;
        c.rate_limit = Some(400);
        c.strict_serial = true;
        c.latency_ms = Some((0, 3));
    })
}

fn args() -> Vec<&'static str> {
    vec![
        "run",
        "o.csv",
        "--db",
        "s.db",
        "--export",
        "e.csv",
        "--rate",
        "unlimited",
        "--concurrency",
        "8",
        "--retry-base-ms",
        "5",
        "--max-attempts",
        "12",
        "--quiet",
    ]
}

/// One order per row, nothing overlapping, every row done, export equal to
/// the sandbox.
fn assert_exactly_once(sandbox: &Sandbox, dir: &Dir) {
    let state = sandbox.http_state();
    let orders = state["orders"].as_array().unwrap();
    let by_id: HashMap<&str, &Value> = orders
        .iter()
        .map(|o| (o["fields"]["site_order_identifier"].as_str().unwrap(), o))
        .collect();
    assert_eq!(orders.len(), ROWS, "orders on the sandbox");
    assert_eq!(by_id.len(), ROWS, "distinct site_order_identifiers");
    assert_eq!(state["counters"]["duplicates"], 0);
    assert_eq!(state["counters"]["overlaps"], 0);
    let export = read_export(&dir.path("e.csv"));
    assert_eq!(export.len(), ROWS);
    let mut rows_seen = HashSet::new();
    for row in &export {
        assert_eq!(row["status"], "done", "{row:?}");
        assert!(rows_seen.insert(row["row_number"].clone()));
        let order = by_id[row["site_order_identifier"].as_str()];
        for field in [
            "pnm_order_identifier",
            "embedded_js_url",
            "secure_smart_token",
            "secure_smart_link",
        ] {
            assert_eq!(
                order[field].as_str(),
                Some(row[field].as_str()),
                "{field} of {row:?}"
            );
        }
    }
}

#[test]
fn chaos_with_faults_and_sigkills_creates_every_order_exactly_once() {
    let seed = 20261122;
    let sandbox = faulty_sandbox(seed);
    let dir = Dir::new();
    dir.write("o.csv", orders_csv(ROWS, CUSTOMERS, false));
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    // Kill the real binary at random request counts: during creates, and
    // later during the refresh and token stages.
    let mut kill_at: Vec<u64> = vec![
        rng.random_range(50..400),
        rng.random_range(400..900),
        rng.random_range(900..1150),
        rng.random_range(1150..1300),
    ];
    kill_at.sort_unstable();
    let mut kills = 0;
    for threshold in kill_at {
        let child = spawn(dir.cmd(&sandbox, &args()));
        let mut child = Some(child);
        let mut finished = None;
        wait_until(Duration::from_secs(60), || {
            if let Some(status) = child.as_mut().unwrap().try_wait().unwrap() {
                finished = Some(status);
                return true;
            }
            sandbox.total_requests() >= threshold
        });
        let child = child.take().unwrap();
        if finished.is_none() {
            signal(&child, 9);
            kills += 1;
        }
        let _ = child.wait_with_output().unwrap();
    }

    assert!(kills >= 3, "only {kills} runs were killed before finishing");
    let last = run(dir.cmd(&sandbox, &args()));
    assert_eq!(code(&last), 0, "{}", text(&last));
    assert_exactly_once(&sandbox, &dir);

    let faults = &sandbox.state()["counters"]["faults"];
    for kind in ["failed", "dropped", "rate_limited"] {
        assert!(
            faults[kind].as_u64().unwrap() > 0,
            "no {kind} fault injected: {faults}"
        );
    }
}

#[test]
fn a_run_against_all_faults_ends_with_exit_0_and_no_duplicates() {
    let sandbox = faulty_sandbox(7);
    let dir = Dir::new();
    dir.write("o.csv", orders_csv(ROWS, CUSTOMERS, true));
    let out = run(dir.cmd(&sandbox, &args()));
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_exactly_once(&sandbox, &dir);
    // Dropped creates were reconciled by lookup, not resent blindly.
    assert!(sandbox.requests("find_orders") > 0);
}

/// Commerce Engine under the same faults: 500s and dropped connections on
/// every storefront endpoint (auth included), and a SIGKILL, then resume:
/// every order is retried exactly once and every row ends done.
#[test]
fn ce_retry_payments_under_faults_and_a_kill_retry_each_order_exactly_once() {
    const ORDERS: usize = 200;
    let sandbox = Sandbox::with(|c| {
        c.seed = 7;
        c.fail_rate = 0.08;
        c.drop_rate = 0.08;
        c.latency_ms = Some((0, 3));
    });
    let names: Vec<String> = (0..ORDERS).map(|i| format!("CE-{i:03}")).collect();
    let dir = Dir::new();
    sandbox.seed_failed_ce_orders(&dir, &names);
    let args = [
        "ce",
        "retry-payments",
        "o.csv",
        "--db",
        "ce.db",
        "--export",
        "e.csv",
        "--rate",
        "unlimited",
        "--concurrency",
        "8",
        "--retry-base-ms",
        "5",
        "--max-attempts",
        "12",
        "--quiet",
    ];
    let child = spawn(dir.ce_cmd(&sandbox, &args));
    wait_until(Duration::from_secs(30), || {
        sandbox.ce_requests("retry-payment") >= ORDERS as u64 / 3
    });
    signal(&child, 9);
    child.wait_with_output().unwrap();
    let retried = names
        .iter()
        .filter(|n| sandbox.ce_order(n)["retries"] != 0)
        .count();
    assert!(retried < ORDERS, "the run finished before it was killed");

    let out = run(dir.ce_cmd(&sandbox, &args));
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(sandbox.ce_requests("fault:failed") > 0, "no 500 injected");
    assert!(sandbox.ce_requests("fault:dropped") > 0, "no drop injected");
    for name in &names {
        assert_eq!(sandbox.ce_order(name)["retries"], 1, "{name}");
    }
    let export = read_export(&dir.path("e.csv"));
    assert_eq!(export.len(), ORDERS);
    for row in &export {
        assert_eq!(row["status"], "done", "{row:?}");
    }
}

/// Runs `args` against `sandbox`, SIGKILLs it once `killed_at` requests
/// have reached the sandbox, then runs it again to the end.
fn kill_then_finish(sandbox: &Sandbox, dir: &Dir, args: &[&str], killed_at: u64) {
    let mut child = spawn(dir.cmd(sandbox, args));
    let mut finished = false;
    wait_until(Duration::from_secs(60), || {
        finished = child.try_wait().unwrap().is_some();
        finished || sandbox.total_requests() >= killed_at
    });
    if !finished {
        signal(&child, 9);
    }
    let _ = child.wait_with_output().unwrap();
    let out = run(dir.cmd(sandbox, args));
    assert_eq!(code(&out), 0, "{}", text(&out));
}

/// Across runs and commands under the same faults: a second file repeating
/// half of the first on the same db, then a bulk change by
/// `pnm_order_identifier` alone, each killed once and resumed: one order
/// per identifier, each change applied once, no customer ever overlapping.
#[test]
fn chaos_across_files_and_changes_keeps_one_order_per_id_and_one_change_per_order() {
    let sandbox = faulty_sandbox(99);
    let dir = Dir::new();
    let first = orders_csv(400, 40, true);
    dir.write("o.csv", &first);
    let out = run(dir.cmd(&sandbox, &args()));
    assert_eq!(code(&out), 0, "{}", text(&out));
    let lines: Vec<&str> = first.lines().collect();
    let mut second = format!("{}\n", lines[0]);
    for line in lines[201..]
        .iter()
        .copied()
        .chain(orders_csv(600, 40, true).lines().skip(401))
    {
        second.push_str(line);
        second.push('\n');
    }
    dir.write("second.csv", &second);
    let mut second_args = args();
    second_args[1] = "second.csv";
    let before = sandbox.total_requests();
    kill_then_finish(&sandbox, &dir, &second_args, before + 150);
    let state = sandbox.http_state();
    let orders = state["orders"].as_array().unwrap();
    let ids: HashSet<&str> = orders
        .iter()
        .map(|o| o["fields"]["site_order_identifier"].as_str().unwrap())
        .collect();
    assert_eq!(orders.len(), 600, "orders created twice");
    assert_eq!(ids.len(), 600);
    assert_eq!(state["counters"]["duplicates"], 0);

    let mut change = String::from("pnm_order_identifier,order_amount\n");
    for order in orders.iter().take(150) {
        change.push_str(&format!(
            "{},77.77\n",
            order["pnm_order_identifier"].as_str().unwrap()
        ));
    }
    dir.write("c.csv", &change);
    let change_args = [
        "change",
        "c.csv",
        "--db",
        "s.db",
        "--rate",
        "unlimited",
        "--concurrency",
        "8",
        "--retry-base-ms",
        "5",
        "--max-attempts",
        "12",
        "--quiet",
    ];
    let before = sandbox.total_requests();
    kill_then_finish(&sandbox, &dir, &change_args, before + 200);
    let state = sandbox.http_state();
    let changed: Vec<&Value> = state["orders"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["fields"]["order_amount"] == "77.77")
        .collect();
    assert_eq!(changed.len(), 150);
    for order in &changed {
        assert_eq!(order["changes"], 1, "{}", order["pnm_order_identifier"]);
    }
    assert_eq!(state["counters"]["overlaps"], 0);
}
