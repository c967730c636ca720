//! Operating it unattended: status, reports, locking, dry runs, JSON logs,
//! completions and help.

use std::time::Duration;

use serde_json::Value;

use crate::util::*;

fn sample() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/samples/orders.csv")).unwrap()
}

fn slow_sandbox() -> Sandbox {
    Sandbox::with(|c| c.latency_ms = Some((20, 40)))
}

const SLOW_ARGS: &[&str] = &[
    "run",
    "o.csv",
    "--db",
    "s.db",
    "--rate",
    "unlimited",
    "--concurrency",
    "2",
];

#[test]
fn status_json_during_a_live_run_in_another_process_adds_up() {
    let sandbox = slow_sandbox();
    let dir = Dir::new();
    dir.write("o.csv", orders_csv(80, 20, true));
    let child = spawn(dir.cmd(&sandbox, SLOW_ARGS));
    wait_until(Duration::from_secs(30), || sandbox.orders().len() >= 10);
    let out = run(dir.bare_cmd(&["status", "--db", "s.db", "--json"]));
    assert_eq!(code(&out), 0, "{}", text(&out));
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    let live = &status["runs"][0];
    assert_eq!(live["total"], 80);
    let sum: u64 = live["states"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(sum, 80);
    assert!(live["finished_at"].is_null());
    assert!(live["requests"]["create_order"].as_u64().unwrap() >= 1);
    for key in ["run_id", "command", "input", "errors", "started_at"] {
        assert!(live.get(key).is_some(), "missing {key}");
    }

    let finished = child.wait_with_output().unwrap();
    assert_eq!(finished.status.code(), Some(0), "{}", text(&finished));
    let out = run(dir.bare_cmd(&["status", "--db", "s.db", "--json"]));
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["runs"][0]["states"]["done"], 80);
    assert!(status["runs"][0]["finished_at"].is_string());
    let text_status = run(dir.bare_cmd(&["status", "--db", "s.db"]));
    assert!(String::from_utf8_lossy(&text_status.stdout).contains("done"));
}

#[test]
fn a_second_run_on_a_busy_db_is_refused_and_a_killed_runs_lock_is_taken_over() {
    let sandbox = slow_sandbox();
    let dir = Dir::new();
    dir.write("o.csv", orders_csv(80, 20, true));
    let child = spawn(dir.cmd(&sandbox, SLOW_ARGS));
    wait_until(Duration::from_secs(30), || sandbox.orders().len() >= 3);
    let second = run(dir.cmd(&sandbox, SLOW_ARGS));
    assert_eq!(code(&second), 2, "{}", text(&second));
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains(&format!("pid {}", child.id())), "{stderr}");
    signal(&child, 9);
    child.wait_with_output().unwrap();
    let resumed = run(dir.cmd(&sandbox, SLOW_ARGS));
    assert_eq!(code(&resumed), 0, "{}", text(&resumed));
    assert_eq!(sandbox.orders().len(), 80);
    assert_eq!(sandbox.counter("duplicates"), 0);
}

/// Two runs of one file on one database reached by two names (`first`
/// for the first run, `second` for the other; `link` makes the link, before
/// the first run starts or once it is going): the second is refused (exit
/// 2, naming the first's pid) and the first finishes with exactly one order
/// per row.
fn one_run_per_database_file(
    first: &str,
    second: &str,
    link_before: bool,
    link: impl FnOnce(&Dir),
) {
    let sandbox = slow_sandbox();
    let dir = Dir::new();
    dir.write("o.csv", orders_csv(80, 20, true));
    let mut link = Some(link);
    if link_before {
        link.take().unwrap()(&dir);
    }
    let with_db = |db| {
        let mut args = SLOW_ARGS.to_vec();
        args[3] = db;
        args
    };
    let child = spawn(dir.cmd(&sandbox, &with_db(first)));
    wait_until(Duration::from_secs(30), || sandbox.orders().len() >= 3);
    if let Some(link) = link {
        link(&dir);
    }
    let refused = run(dir.cmd(&sandbox, &with_db(second)));
    assert_eq!(code(&refused), 2, "{}", text(&refused));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains(&format!("pid {}", child.id())), "{stderr}");

    let finished = child.wait_with_output().unwrap();
    assert_eq!(finished.status.code(), Some(0), "{}", text(&finished));
    let orders = sandbox.orders();
    let ids: std::collections::HashSet<&str> = orders
        .iter()
        .map(|o| o["fields"]["site_order_identifier"].as_str().unwrap())
        .collect();
    assert_eq!(orders.len(), 80);
    assert_eq!(ids.len(), 80);
    assert_eq!(sandbox.counter("duplicates"), 0);
}

#[test]
fn a_second_run_on_the_same_db_through_a_symlink_is_refused_naming_the_first() {
    // The first run reaches a database that does not exist yet through a
    // link made beforehand, and creates it; the second names the file.
    one_run_per_database_file("alias.db", "s.db", true, |dir| {
        std::os::unix::fs::symlink("s.db", dir.path("alias.db")).unwrap();
    });
}

#[test]
fn a_second_run_on_the_same_db_through_a_hard_link_is_refused_naming_the_first() {
    one_run_per_database_file("s.db", "alias.db", false, |dir| {
        std::fs::hard_link(dir.path("s.db"), dir.path("alias.db")).unwrap();
    });
}

#[test]
fn dry_run_sends_nothing_touches_no_db_and_predicts_the_real_requests() {
    let sandbox = Sandbox::start();
    let dir = Dir::new();
    dir.write("o.csv", sample());
    let out = run(dir.cmd(
        &sandbox,
        &["run", "o.csv", "--db", "s.db", "--dry-run", "--rate", "10"],
    ));
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(sandbox.total_requests(), 0);
    assert!(!dir.path("s.db").exists());
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let predicted = |endpoint: &str| -> u64 {
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(endpoint))
            .unwrap();
        line.split_whitespace().last().unwrap().parse().unwrap()
    };
    assert!(stdout.contains("25 valid rows for 7 customers"), "{stdout}");
    assert!(stdout.contains("at --rate 10"), "{stdout}");

    // The real run sends exactly what was predicted.
    let real = run(dir.cmd(
        &sandbox,
        &["run", "o.csv", "--db", "s.db", "--rate", "unlimited"],
    ));
    assert_eq!(code(&real), 0, "{}", text(&real));
    for endpoint in [
        "create_order",
        "refresh_embedded_js_urls",
        "get_smart_token",
    ] {
        assert_eq!(
            predicted(endpoint),
            sandbox.requests(endpoint),
            "{endpoint}"
        );
    }

    // A dry run beside an existing state database leaves it byte for byte.
    let before = std::fs::read(dir.path("s.db")).unwrap();
    let again = run(dir.cmd(&sandbox, &["run", "o.csv", "--db", "s.db", "--dry-run"]));
    assert_eq!(code(&again), 0, "{}", text(&again));
    assert!(String::from_utf8_lossy(&again.stdout).contains("25 rows finished"));
    assert_eq!(std::fs::read(dir.path("s.db")).unwrap(), before);
}

#[test]
fn report_says_what_happened_and_how_to_resume_or_retry() {
    let broken = Sandbox::with(|c| c.fail_rate = 1.0);
    let dir = Dir::new();
    dir.write("o.csv", orders_csv(4, 2, true));
    let out = run(dir.cmd(
        &broken,
        &[
            "run",
            "o.csv",
            "--db",
            "s.db",
            "--max-attempts",
            "1",
            "--rate",
            "unlimited",
        ],
    ));
    assert_eq!(code(&out), 1, "{}", text(&out));
    let md = dir.read("s.db.report.md");
    assert!(md.contains("| failed | 4 |"), "{md}");
    assert!(md.contains("| internal_error | 4 |"), "{md}");
    assert!(
        md.contains("run o.csv --db s.db --max-attempts 1 --rate unlimited"),
        "{md}"
    );
    assert!(md.contains("orderbatch retry --db s.db"), "{md}");
    assert!(md.contains("| create_order |"), "{md}");
    let json: Value = serde_json::from_str(&dir.read("s.db.report.json")).unwrap();
    assert_eq!(json["status"]["states"]["failed"], 4);
    assert_eq!(json["stages"][0]["stage"], "register input");
    assert_eq!(json["stages"][0]["rows"], 4);
    assert_eq!(json["stages"][1]["stage"], "create_order");
    assert_eq!(json["retry_command"], "orderbatch retry --db s.db");

    let healthy = Sandbox::start();
    let out = run(dir.cmd(
        &healthy,
        &[
            "retry",
            "--db",
            "s.db",
            "--report",
            "r.md",
            "--rate",
            "unlimited",
        ],
    ));
    assert_eq!(code(&out), 0, "{}", text(&out));
    let md = dir.read("r.md");
    assert!(
        md.contains("| done | 4 |") && md.contains("completed"),
        "{md}"
    );
    assert!(serde_json::from_str::<Value>(&dir.read("r.json")).unwrap()["retry_command"].is_null());
}

#[test]
fn json_logs_are_one_object_per_line_with_request_fields() {
    let sandbox = Sandbox::start();
    let dir = Dir::new();
    dir.write("o.csv", orders_csv(6, 2, true));
    let out = run(dir.cmd(
        &sandbox,
        &["run", "o.csv", "--db", "s.db", "--log-format", "json", "-v"],
    ));
    assert_eq!(code(&out), 0, "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let requests: Vec<&Value> = lines
        .iter()
        .filter(|l| l.get("endpoint").is_some())
        .collect();
    assert_eq!(requests.len() as u64, sandbox.total_requests());
    for r in requests {
        for key in [
            "run_id",
            "row_number",
            "endpoint",
            "attempt",
            "outcome",
            "latency_ms",
        ] {
            assert!(r.get(key).is_some(), "{key} missing in {r}");
        }
    }
}

#[test]
fn runs_lists_runs_and_export_picks_one() {
    let sandbox = Sandbox::start();
    let dir = Dir::new();
    dir.write("a.csv", orders_csv(2, 1, true));
    dir.write("b.csv", orders_csv(3, 1, false));
    assert_eq!(
        code(&run(dir.cmd(&sandbox, &["run", "a.csv", "--db", "s.db"]))),
        0
    );
    assert_eq!(
        code(&run(dir.cmd(&sandbox, &["run", "b.csv", "--db", "s.db"]))),
        0
    );
    let runs = run(dir.bare_cmd(&["runs", "--db", "s.db"]));
    let listing = String::from_utf8_lossy(&runs.stdout);
    assert!(
        listing.contains("a.csv") && listing.contains("b.csv"),
        "{listing}"
    );
    let out = run(dir.bare_cmd(&["export", "--db", "s.db", "--run", "1", "--out", "one.csv"]));
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(read_export(&dir.path("one.csv")).len(), 2);
    let out = run(dir.bare_cmd(&["export", "--db", "s.db", "--out", "last.csv"]));
    assert_eq!(
        read_export(&dir.path("last.csv")).len(),
        3,
        "{}",
        text(&out)
    );
    let missing = run(dir.bare_cmd(&["export", "--db", "s.db", "--run", "9", "--out", "x.csv"]));
    assert_eq!(code(&missing), 2);
}

#[test]
fn completions_version_and_help_with_examples() {
    let dir = Dir::new();
    for shell in ["bash", "zsh", "fish"] {
        let out = run(dir.bare_cmd(&["completions", shell]));
        assert_eq!(code(&out), 0);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("orderbatch"),
            "{shell}"
        );
    }
    let version = run(dir.bare_cmd(&["--version"]));
    assert!(String::from_utf8_lossy(&version.stdout).contains("state schema 9"));
    for sub in [
        "run",
        "retry",
        "validate",
        "export",
        "status",
        "runs",
        "completions",
        "sandbox",
        "demo",
    ] {
        let help = run(dir.bare_cmd(&[sub, "--help"]));
        assert_eq!(code(&help), 0, "{sub}");
        assert!(
            String::from_utf8_lossy(&help.stdout).contains("Example"),
            "{sub} --help has no example"
        );
    }
    let top = run(dir.bare_cmd(&["--help"]));
    assert!(String::from_utf8_lossy(&top.stdout).contains("Exit codes"));
}

#[test]
fn exports_rejects_and_reports_replace_the_earlier_files_whole_and_leave_no_temp_files() {
    let sandbox = Sandbox::start();
    let dir = Dir::new();
    let mut csv = orders_csv(6, 3, true);
    csv.push_str("C-9,not-money,USD,exact,true,Bad\n");
    dir.write("o.csv", csv);
    // Last night's files, each also reachable by a second (hard) link, as a
    // reader that opened it before the run would hold it: a file written in
    // place would change under that name too.
    let outputs = ["e.csv", "r.csv", "s.db.report.md", "s.db.report.json"];
    for name in outputs {
        dir.write(name, "last night's\n");
        std::fs::hard_link(dir.path(name), dir.path(&format!("old-{name}"))).unwrap();
    }
    let out = run(dir.cmd(
        &sandbox,
        &[
            "run",
            "o.csv",
            "--db",
            "s.db",
            "--export",
            "e.csv",
            "--rejects",
            "r.csv",
        ],
    ));
    assert_eq!(code(&out), 1, "{}", text(&out));
    for name in outputs {
        assert_eq!(dir.read(&format!("old-{name}")), "last night's\n", "{name}");
        let new = dir.read(name);
        assert_ne!(new, "last night's\n", "{name}");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path(name)).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "{name}");
    }
    assert_eq!(read_export(&dir.path("e.csv")).len(), 7);
    assert_eq!(read_csv(&dir.path("r.csv")).1.len(), 1);

    // `orderbatch export` on its own too.
    std::fs::remove_file(dir.path("old-e.csv")).unwrap();
    std::fs::hard_link(dir.path("e.csv"), dir.path("old-e.csv")).unwrap();
    let before = dir.read("e.csv");
    let again = run(dir.bare_cmd(&["export", "--db", "s.db", "--out", "e.csv"]));
    assert_eq!(code(&again), 0, "{}", text(&again));
    assert_eq!(dir.read("old-e.csv"), before);
    assert_eq!(read_export(&dir.path("e.csv")).len(), 7);

    let mut names: Vec<String> = std::fs::read_dir(dir.tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    names.sort();
    assert!(names.is_empty(), "temporary files left: {names:?}");
}
