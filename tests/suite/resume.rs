//! Interrupted and killed runs resume without creating any order twice.

use std::collections::HashSet;
use std::time::Duration;

use crate::util::*;

const ROWS: usize = 60;

fn slow_sandbox() -> Sandbox {
    Sandbox::with(|c| {
        c.latency_ms = Some((20, 40));
        c.strict_serial = true;
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
        "4",
    ]
}

/// Every row has exactly one order on the sandbox and is done in the export.
fn assert_complete(sandbox: &Sandbox, dir: &Dir) {
    let orders = sandbox.orders();
    let ids: HashSet<&str> = orders
        .iter()
        .map(|o| o["fields"]["site_order_identifier"].as_str().unwrap())
        .collect();
    assert_eq!(orders.len(), ROWS, "orders on the sandbox");
    assert_eq!(ids.len(), ROWS, "distinct site_order_identifiers");
    assert_eq!(sandbox.counter("duplicates"), 0);
    assert_eq!(sandbox.counter("overlaps"), 0);
    let export = read_export(&dir.path("e.csv"));
    assert_eq!(export.len(), ROWS);
    for row in &export {
        assert_eq!(row["status"], "done", "{row:?}");
        assert!(ids.contains(row["site_order_identifier"].as_str()));
    }
}

fn interrupt_then_resume(signal_number: i32, expected_code: Option<i32>) {
    let sandbox = slow_sandbox();
    let dir = Dir::new();
    dir.write("o.csv", orders_csv(ROWS, 12, true));
    let child = spawn(dir.cmd(&sandbox, &args()));
    wait_until(Duration::from_secs(30), || sandbox.orders().len() >= 15);
    signal(&child, signal_number);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), expected_code, "{}", text(&out));
    let created = sandbox.orders().len();
    assert!(created < ROWS, "the run finished before it was stopped");

    let resumed = run(dir.cmd(&sandbox, &args()));
    assert_eq!(code(&resumed), 0, "{}", text(&resumed));
    assert!(String::from_utf8_lossy(&resumed.stdout).contains("resumed"));
    assert_complete(&sandbox, &dir);
}

#[test]
fn ctrl_c_stops_with_130_and_the_same_command_finishes_without_duplicates() {
    interrupt_then_resume(2, Some(130));
}

#[test]
fn sigterm_stops_like_ctrl_c_with_143_keeps_consistent_state_and_the_same_command_finishes() {
    let sandbox = slow_sandbox();
    let dir = Dir::new();
    dir.write("o.csv", orders_csv(ROWS, 12, true));
    let child = spawn(dir.cmd(&sandbox, &args()));
    wait_until(Duration::from_secs(30), || sandbox.orders().len() >= 15);
    signal(&child, 15);
    let out = child.wait_with_output().unwrap();
    // A graceful stop, not death by the signal: it exits 143 itself.
    assert_eq!(out.status.code(), Some(143), "{}", text(&out));
    let created = sandbox.orders().len();
    assert!(created < ROWS, "the run finished before it was stopped");

    // The state database is readable and whole (every row counted, in flight
    // ones as `creating`, looked up on resume) and the report says the run
    // was interrupted.
    let status = run(dir.bare_cmd(&["status", "--db", "s.db", "--json"]));
    assert_eq!(code(&status), 0, "{}", text(&status));
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let states = status["runs"][0]["states"].as_object().unwrap().clone();
    let total: u64 = states.values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(total, ROWS as u64, "{states:?}");
    let report: serde_json::Value = serde_json::from_str(&dir.read("s.db.report.json")).unwrap();
    assert_eq!(report["outcome"], "interrupted", "{report}");

    let resumed = run(dir.cmd(&sandbox, &args()));
    assert_eq!(code(&resumed), 0, "{}", text(&resumed));
    assert!(String::from_utf8_lossy(&resumed.stdout).contains("resumed"));
    assert_complete(&sandbox, &dir);
}

#[test]
fn sigkill_at_any_point_then_the_same_command_finishes_without_duplicates() {
    interrupt_then_resume(9, None);
}

#[test]
fn a_changed_input_beside_an_unfinished_run_is_refused() {
    let sandbox = slow_sandbox();
    let dir = Dir::new();
    dir.write("o.csv", orders_csv(ROWS, 12, false));
    let child = spawn(dir.cmd(&sandbox, &args()));
    wait_until(Duration::from_secs(30), || sandbox.orders().len() >= 5);
    signal(&child, 9);
    child.wait_with_output().unwrap();
    assert!(
        sandbox.orders().len() < ROWS,
        "the run finished before it was killed"
    );
    // Requests the killed run had already written may still be read.
    let mut before = sandbox.total_requests();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = sandbox.total_requests();
        if now == before {
            break;
        }
        before = now;
    }

    let mut changed = orders_csv(ROWS, 12, false);
    changed.push_str("C-1,1.00,USD,exact,true,Extra\n");
    dir.write("o.csv", changed);
    let out = run(dir.cmd(&sandbox, &args()));
    assert_eq!(code(&out), 2, "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unfinished run") && stderr.contains("fingerprint"),
        "{stderr}"
    );
    assert_eq!(sandbox.total_requests(), before, "nothing may be sent");
}

#[test]
fn max_errors_stops_the_run_and_retry_finishes_it_exactly_once() {
    let broken = Sandbox::with(|c| c.fail_rate = 1.0);
    let healthy = Sandbox::start();
    let dir = Dir::new();
    dir.write("o.csv", orders_csv(30, 6, false));
    let first = run(dir.cmd(
        &broken,
        &[
            "run",
            "o.csv",
            "--db",
            "s.db",
            "--export",
            "e.csv",
            "--max-attempts",
            "1",
            "--max-errors",
            "3",
            "--rate",
            "unlimited",
            "--concurrency",
            "2",
        ],
    ));
    assert_eq!(code(&first), 3, "{}", text(&first));
    assert!(String::from_utf8_lossy(&first.stderr).contains("--max-errors 3"));
    let export = read_export(&dir.path("e.csv"));
    let failed = export.iter().filter(|r| r["status"] == "failed").count();
    assert!((3..30).contains(&failed), "{failed} failed rows");
    assert!(
        export.iter().any(|r| r["status"] == "pending"),
        "the run must stop taking rows"
    );
    assert!(broken.orders().is_empty());

    // Retry against a healthy provider: failed rows are looked up, then created.
    let retried = run(dir.cmd(
        &healthy,
        &[
            "retry",
            "--db",
            "s.db",
            "--error-code",
            "internal_error",
            "--export",
            "e.csv",
            "--rate",
            "unlimited",
        ],
    ));
    assert_eq!(code(&retried), 0, "{}", text(&retried));
    assert!(String::from_utf8_lossy(&retried.stdout)
        .contains(&format!("{failed} failed rows back in the queue")));
    assert_eq!(healthy.orders().len(), 30);
    assert_eq!(healthy.counter("duplicates"), 0);
    assert!(healthy.requests("find_orders") >= failed as u64);
    assert!(read_export(&dir.path("e.csv"))
        .iter()
        .all(|r| r["status"] == "done"));
}

#[test]
fn retry_refuses_a_changed_input_naming_the_expected_fingerprint() {
    let broken = Sandbox::with(|c| c.fail_rate = 1.0);
    let dir = Dir::new();
    dir.write("o.csv", orders_csv(3, 1, true));
    let first = run(dir.cmd(
        &broken,
        &["run", "o.csv", "--db", "s.db", "--max-attempts", "1"],
    ));
    assert_eq!(code(&first), 1, "{}", text(&first));
    dir.write("o.csv", orders_csv(4, 1, true));
    let retried = run(dir.cmd(&broken, &["retry", "--db", "s.db"]));
    assert_eq!(code(&retried), 2, "{}", text(&retried));
    let stderr = String::from_utf8_lossy(&retried.stderr);
    assert!(
        stderr.contains("o.csv has changed") && stderr.contains("expected fingerprint"),
        "{stderr}"
    );
}

#[test]
fn a_provider_that_is_down_stops_the_run_instead_of_failing_every_row() {
    let down = Sandbox::with(|c| c.fail_rate = 1.0);
    let dir = Dir::new();
    dir.write("o.csv", orders_csv(300, 30, true));
    let out = run(dir.cmd(
        &down,
        &[
            "run",
            "o.csv",
            "--db",
            "s.db",
            "--export",
            "e.csv",
            "--max-attempts",
            "3",
            "--retry-base-ms",
            "1",
            "--rate",
            "unlimited",
            "--concurrency",
            "2",
        ],
    ));
    assert_eq!(code(&out), 3, "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("looks down"),
        "{}",
        text(&out)
    );
    let export = read_export(&dir.path("e.csv"));
    let failed = export.iter().filter(|r| r["status"] == "failed").count();
    assert!(failed < 30, "{failed} rows failed before the run stopped");
    assert!(
        down.total_requests() < 100,
        "{} requests",
        down.total_requests()
    );
}

#[test]
fn a_second_ctrl_c_quits_at_once_and_the_same_command_still_finishes_exactly_once() {
    // Slow answers, so requests are in flight when the second Ctrl-C comes.
    let sandbox = Sandbox::with(|c| {
        c.latency_ms = Some((150, 200));
        c.strict_serial = true;
    });
    let dir = Dir::new();
    dir.write("o.csv", orders_csv(ROWS, 12, true));
    let child = spawn(dir.cmd(&sandbox, &args()));
    wait_until(Duration::from_secs(30), || sandbox.orders().len() >= 8);
    signal(&child, 2);
    std::thread::sleep(Duration::from_millis(100));
    signal(&child, 2);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("quitting now"),
        "{}",
        text(&out)
    );
    assert!(sandbox.orders().len() < ROWS, "the run finished first");

    let resumed = run(dir.cmd(&sandbox, &args()));
    assert_eq!(code(&resumed), 0, "{}", text(&resumed));
    assert_complete(&sandbox, &dir);
}
