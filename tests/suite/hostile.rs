//! A hostile outside world: redirects, odd `Retry-After`s, huge answers,
//! 404 searches, URLs that hide a remote host, unwritable outputs, a disk
//! that fills up mid-run.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::response::IntoResponse;

use crate::util::hostile::{huge, too_many, Hostile, Witness};
use crate::util::*;

/// Runs `o.csv` (`rows` orders) through `base_url` with fast retries.
fn run_through(
    dir: &Dir,
    sandbox: &Sandbox,
    base_url: &str,
    extra: &[&str],
) -> std::process::Output {
    let mut args = vec![
        "run",
        "o.csv",
        "--db",
        "s.db",
        "--rate",
        "unlimited",
        "--retry-base-ms",
        "10",
        "--export",
        "e.csv",
    ];
    args.extend_from_slice(extra);
    let mut cmd = dir.cmd(sandbox, &args);
    cmd.env("PNM_BASE_URL", base_url);
    run(cmd)
}

fn attempt_codes(dir: &Dir) -> Vec<String> {
    let db = rusqlite::Connection::open(dir.path("s.db")).unwrap();
    let mut stmt = db.prepare("SELECT error_code FROM attempts").unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn a_redirect_is_never_followed_and_names_where_it_pointed() {
    let sandbox = Sandbox::start();
    let elsewhere = Witness::start();
    let target = format!("http://{}/json-api/create_order", elsewhere.addr);
    let location = target.clone();
    let front = Hostile::start(sandbox.base_url(), move |endpoint, _| {
        (endpoint == "create_order").then(|| {
            (
                StatusCode::TEMPORARY_REDIRECT,
                [("location", location.clone())],
                "",
            )
                .into_response()
        })
    });
    let dir = Dir::new();
    dir.write("o.csv", orders_csv(3, 1, true));
    let out = run_through(&dir, &sandbox, &front.base_url(), &[]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert_eq!(
        elsewhere.received(),
        (0, 0),
        "the signed body went elsewhere"
    );
    assert_eq!(sandbox.orders().len(), 0);
    let export = read_export(&dir.path("e.csv"));
    assert!(export.iter().all(|r| r["status"] == "failed"));
    assert!(export[0]["error"].contains(&target), "{:?}", export[0]);
    // Permanent: one request per row, no retries.
    assert_eq!(front.count("create_order"), 3);
}

#[test]
fn odd_retry_after_values_neither_panic_nor_park_the_run() {
    let future = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(2));
    let past = httpdate::fmt_http_date(std::time::SystemTime::now() - Duration::from_secs(3600));
    for value in [
        "1e20",
        "1e10",
        "-1",
        "garbage",
        past.as_str(),
        future.as_str(),
    ] {
        let sandbox = Sandbox::start();
        let value_owned = value.to_string();
        // Every endpoint's first request is refused with this Retry-After.
        let front = Hostile::start(sandbox.base_url(), move |_, n| {
            (n == 1).then(|| too_many(&value_owned))
        });
        let dir = Dir::new();
        dir.write("o.csv", orders_csv(4, 2, true));
        let started = Instant::now();
        let out = run_through(&dir, &sandbox, &front.base_url(), &["--concurrency", "2"]);
        assert_eq!(code(&out), 0, "Retry-After {value}: {}", text(&out));
        assert!(!text(&out).contains("panicked"), "{}", text(&out));
        assert_eq!(sandbox.orders().len(), 4, "Retry-After {value}");
        assert_eq!(sandbox.counter("duplicates"), 0);
        // Loose bound: nothing waits out 1e10 seconds (or 15 minutes).
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "Retry-After {value}"
        );
    }
}

#[test]
fn the_first_ctrl_c_ends_a_long_retry_after_at_once() {
    let sandbox = Sandbox::start();
    // Ten minutes: under the 15-minute cap, so every worker waits it out.
    let front = Hostile::start(sandbox.base_url(), |_, _| Some(too_many("600")));
    let dir = Dir::new();
    dir.write("o.csv", orders_csv(6, 3, true));
    let mut cmd = dir.cmd(&sandbox, &["run", "o.csv", "--db", "s.db"]);
    cmd.env("PNM_BASE_URL", front.base_url());
    let child = spawn(cmd);
    wait_until(Duration::from_secs(20), || front.count("create_order") >= 1);
    std::thread::sleep(Duration::from_millis(300));
    signal(&child, 2);
    let stopped = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), 130, "{}", text(&out));
    assert!(stopped.elapsed() < Duration::from_secs(20));
    // The same command resumes against a provider that lets it through.
    let out = run(dir.cmd(&sandbox, &["run", "o.csv", "--db", "s.db"]));
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(sandbox.orders().len(), 6);
}

#[test]
fn an_oversized_answer_fails_the_attempt_without_being_held_and_is_retried() {
    let sandbox = Sandbox::start();
    let front = Hostile::start(sandbox.base_url(), |endpoint, n| {
        (endpoint == "refresh_embedded_js_urls" && n == 1).then(|| huge(6 * 1024 * 1024))
    });
    let dir = Dir::new();
    dir.write("o.csv", orders_csv(3, 1, true));
    let out = run_through(&dir, &sandbox, &front.base_url(), &[]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        attempt_codes(&dir).contains(&"answer_too_large".to_string()),
        "{:?}",
        attempt_codes(&dir)
    );
    let export = read_export(&dir.path("e.csv"));
    assert!(export
        .iter()
        .all(|r| r["status"] == "done" && r["error"].is_empty()));
}

#[test]
fn find_orders_answering_404_means_no_match() {
    let sandbox = Sandbox::start();
    // The first create is answered 503 without reaching the sandbox (so it
    // is looked up before it is resent); the lookup answers 404.
    let front = Hostile::start(sandbox.base_url(), |endpoint, n| {
        match endpoint {
        "create_order" if n == 1 => Some(
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "<html>busy</html>",
            )
                .into_response(),
        ),
        "find_orders" => Some(
            (
                StatusCode::NOT_FOUND,
                r#"{"status":"error","errors":[{"code":"order_not_found","description":"no orders"}]}"#,
            )
                .into_response(),
        ),
        _ => None,
    }
    });
    let dir = Dir::new();
    dir.write("o.csv", orders_csv(1, 1, true));
    let out = run_through(&dir, &sandbox, &front.base_url(), &[]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(front.count("find_orders"), 1);
    assert_eq!(sandbox.orders().len(), 1);
}

#[test]
fn base_urls_that_hide_a_remote_host_are_refused_before_any_connection() {
    let sandbox = Sandbox::start();
    let witness = Witness::start();
    let port = witness.addr.port();
    let dir = Dir::new();
    dir.write("o.csv", orders_csv(2, 1, true));
    for url in [
        format!("http://localhost:1@127.0.0.1:{port}"),
        format!("http://127.0.0.1:80@127.0.0.1:{port}"),
        format!("http://[::1]@127.0.0.1:{port}"),
        "http://localhost:1@192.0.2.1".to_string(),
        "http://[::1]@192.0.2.1:80".to_string(),
        "http://127.0.0.1:80@192.0.2.1".to_string(),
        "http://192.0.2.1".to_string(),
        "ftp://127.0.0.1".to_string(),
    ] {
        let mut cmd = dir.cmd(&sandbox, &["run", "o.csv", "--db", "s.db"]);
        cmd.env("PNM_BASE_URL", &url);
        let out = run(cmd);
        assert_eq!(code(&out), 2, "{url}: {}", text(&out));
        assert!(!dir.path("s.db").exists(), "{url}");
        // The same rule for the OAuth token URL.
        let mut cmd = dir.oauth_cmd(&sandbox, &["run", "o.csv", "--db", "s.db"]);
        cmd.env("PNM_TOKEN_URL", &url);
        let out = run(cmd);
        assert_eq!(code(&out), 2, "token URL {url}: {}", text(&out));
    }
    assert_eq!(witness.received(), (0, 0));
    assert_eq!(sandbox.total_requests(), 0);
}

#[test]
fn a_base_url_ending_in_json_api_is_taken_as_the_host_with_a_note() {
    let sandbox = Sandbox::start();
    let dir = Dir::new();
    dir.write("o.csv", orders_csv(2, 1, true));
    let mut cmd = dir.cmd(&sandbox, &["run", "o.csv", "--db", "s.db"]);
    cmd.env("PNM_BASE_URL", format!("{}/json-api/", sandbox.base_url()));
    let out = run(cmd);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(sandbox.orders().len(), 2);
    let notes = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.contains("ends in /json-api"))
        .count();
    assert_eq!(notes, 1, "{}", text(&out));
}

#[test]
fn outputs_in_a_missing_directory_are_refused_before_anything_is_sent() {
    let sandbox = Sandbox::start();
    let dir = Dir::new();
    dir.write("o.csv", orders_csv(2, 1, true));
    for flag in ["--export", "--report", "--rejects"] {
        let out = run(dir.cmd(
            &sandbox,
            &["run", "o.csv", "--db", "s.db", flag, "no/such/dir/out.csv"],
        ));
        assert_eq!(code(&out), 2, "{flag}: {}", text(&out));
        assert!(text(&out).contains("no/such/dir"), "{flag}: {}", text(&out));
        assert!(
            text(&out).contains("does not exist"),
            "{flag}: {}",
            text(&out)
        );
    }
    let out = run(dir.cmd(&sandbox, &["run", "o.csv", "--db", "missing/s.db"]));
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert_eq!(sandbox.total_requests(), 0);
    assert!(!dir.path("s.db").exists());
}

#[cfg(unix)]
#[test]
fn a_disk_that_fills_mid_run_exits_5_and_a_rerun_with_space_finishes_exactly_once() {
    let dir = Dir::new();
    let mount = dir.path("small");
    std::fs::create_dir(&mount).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=600k", "tmpfs"])
        .arg(&mount)
        .output();
    if !mounted.as_ref().is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: cannot mount a small tmpfs here (needs root): {mounted:?}");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mount.clone());
    let sandbox = Sandbox::start();
    dir.write("o.csv", orders_csv(3000, 300, true));
    let db = mount.join("s.db");
    let db = db.to_str().unwrap();
    let out = run(dir.cmd(
        &sandbox,
        &[
            "run",
            "o.csv",
            "--db",
            db,
            "--rate",
            "unlimited",
            "--concurrency",
            "16",
        ],
    ));
    assert_eq!(code(&out), 5, "{}", text(&out));
    assert!(sandbox.total_requests() > 0);
    assert!(
        text(&out).contains("run the same command again"),
        "{}",
        text(&out)
    );
    // Room again: the same command finishes, one order per row.
    let grown = std::process::Command::new("mount")
        .args(["-o", "remount,size=64m"])
        .arg(&mount)
        .status()
        .unwrap();
    assert!(grown.success());
    let out = run(dir.cmd(
        &sandbox,
        &[
            "run",
            "o.csv",
            "--db",
            db,
            "--rate",
            "unlimited",
            "--concurrency",
            "16",
        ],
    ));
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(sandbox.orders().len(), 3000);
    assert_eq!(sandbox.counter("duplicates"), 0);
}

#[test]
fn a_header_of_100k_unknown_columns_is_checked_in_one_pass_with_one_warning() {
    let dir = Dir::new();
    let mut header = String::from(
        "site_customer_identifier,order_amount,order_currency,order_type,order_is_standing",
    );
    let mut row = String::from("C1,10,USD,exact,true");
    for i in 0..100_000 {
        header.push_str(&format!(",extra_{i}"));
        row.push_str(",x");
    }
    dir.write("wide.csv", format!("{header}\n{row}\n"));
    let out = run(dir.bare_cmd(&["validate", "wide.csv", "--allow-unknown-columns"]));
    assert_eq!(code(&out), 0, "{}", text(&out));
    let warnings = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.contains("ignoring"))
        .count();
    assert_eq!(warnings, 1, "{}", &text(&out)[..2000.min(text(&out).len())]);
    assert!(text(&out).contains("100000 unknown columns"));
    // A repeated column among them is still named, with both positions.
    dir.write("dup.csv", format!("{header},extra_99999\n{row},x\n"));
    let out = run(dir.bare_cmd(&["validate", "dup.csv", "--allow-unknown-columns"]));
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(
        text(&out).contains("columns 100005 and 100006"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_lock_error_names_its_cause_once() {
    let dir = Dir::new();
    dir.write("o.csv", orders_csv(1, 1, true));
    // The database cannot be opened: a link that leads to itself.
    std::os::unix::fs::symlink("s.db", dir.path("s.db")).unwrap();
    let sandbox = Sandbox::start();
    let out = run(dir.cmd(&sandbox, &["run", "o.csv", "--db", "s.db"]));
    assert_eq!(code(&out), 2, "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or("");
    assert!(line.contains("cannot lock"), "{stderr}");
    assert_eq!(line.matches("os error").count(), 1, "{stderr}");
}

#[test]
fn a_panic_in_a_worker_fails_its_row_keeps_the_rest_and_retry_finishes_it() {
    let sandbox = Sandbox::start();
    let dir = Dir::new();
    dir.write("o.csv", orders_csv(6, 3, true));
    let mut cmd = dir.cmd(
        &sandbox,
        &["run", "o.csv", "--db", "s.db", "--export", "e.csv"],
    );
    cmd.env("ORDERBATCH_FAILPOINT", "panic-at-row:3");
    let out = run(cmd);
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(
        text(&out).contains("internal error while working on row 3"),
        "{}",
        text(&out)
    );
    let export = read_export(&dir.path("e.csv"));
    // The panic fails its customer's rows (a customer goes through its
    // chain as one unit); every other customer is done.
    let failed: Vec<_> = export.iter().filter(|r| r["status"] == "failed").collect();
    assert!(failed.iter().any(|r| r["row_number"] == "3"), "{export:?}");
    for row in &export {
        let same_customer = row["site_customer_identifier"] == "C-0";
        assert_eq!(row["status"] == "failed", same_customer, "{row:?}");
    }
    assert!(failed[0]["error"].contains("failpoint"), "{failed:?}");
    assert!(dir.path("s.db.report.md").exists());
    let out = run(dir.cmd(&sandbox, &["retry", "--db", "s.db"]));
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(sandbox.orders().len(), 6);
    assert_eq!(sandbox.counter("duplicates"), 0);
}
