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
    let before = sandbox.total_requests();

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
