//! The HTML run report of a real run with a 429 storm and a 500 burst in
//! the middle, rendered by a real browser (headless Chromium).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::util::{self, Dir, Sandbox};

/// Chromium, or `None` when it is absent and this is not CI (the test is
/// then skipped with a message); in CI its absence fails the test.
fn chromium() -> Option<PathBuf> {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if let Ok(out) = Command::new("which").arg(name).output() {
            let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if out.status.success() && !path.is_empty() {
                return Some(PathBuf::from(path));
            }
        }
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "chromium is not installed, and CI must run this test (.ci/run installs it)"
    );
    eprintln!(
        "SKIPPED: chromium is not installed (apt-get install -y chromium); CI runs this test"
    );
    None
}

/// Runs headless Chromium on `page` with `args`; returns stdout and stderr.
fn browse(chromium: &Path, profile: &Path, page: &Path, args: &[&str]) -> (String, String) {
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chromium failed: {}",
        util::text(&out)
    );
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The text of the element with `id` in `dom`.
fn cell(dom: &str, id: &str) -> Option<String> {
    let at = dom.find(&format!("id=\"{id}\""))?;
    let rest = &dom[at..];
    let start = rest.find('>')? + 1;
    let end = rest[start..].find('<')? + start;
    Some(rest[start..end].to_string())
}

/// Requests per endpoint and outcomes per endpoint and class, summed over
/// the run's timeline in the database.
type Totals = (BTreeMap<String, u64>, BTreeMap<String, [u64; 7]>);

fn timeline_totals(db: &Path) -> Totals {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT bucket FROM timeline WHERE run_id = 1")
        .unwrap();
    let buckets: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(buckets.len() > 3, "a timeline of {} buckets", buckets.len());
    let (mut requests, mut outcomes) = (BTreeMap::new(), BTreeMap::<String, [u64; 7]>::new());
    for json in buckets {
        let bucket: orderbatch::timeline::Bucket = serde_json::from_str(&json).unwrap();
        for (endpoint, stats) in bucket.endpoints {
            *requests.entry(endpoint.clone()).or_default() += stats.requests;
            let sums = outcomes.entry(endpoint).or_default();
            for (s, n) in sums.iter_mut().zip(stats.outcomes) {
                *s += n;
            }
        }
    }
    (requests, outcomes)
}

fn request_counts(db: &Path) -> BTreeMap<String, u64> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT endpoint, count FROM requests WHERE run_id = 1")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn faults(sandbox: &Sandbox, name: &str) -> u64 {
    sandbox.state()["counters"]["faults"][name]
        .as_u64()
        .unwrap_or(0)
}

fn rows_done(db: &Path) -> u64 {
    let Ok(conn) = rusqlite::Connection::open(db) else {
        return 0;
    };
    conn.query_row(
        "SELECT COUNT(*) FROM rows WHERE state IN ('created', 'urls_refreshed', 'done')",
        [],
        |r| r.get(0),
    )
    .unwrap_or(0)
}

#[test]
fn the_html_report_of_a_run_through_a_429_storm_and_a_500_burst_renders_its_counters() {
    let Some(chromium) = chromium() else {
        return;
    };
    let sandbox = Sandbox::with(|c| c.latency_ms = Some((2, 8)));
    let dir = Dir::new();
    dir.write("orders.csv", util::orders_csv(300, 60, true));
    let db = dir.path("s.db");
    let child = util::spawn(dir.cmd(
        &sandbox,
        &["run", "orders.csv", "--db", "s.db", "--rate", "80", "-q"],
    ));
    // The storm and the burst come once the run is under way; each ends
    // after it has hit enough requests.
    util::wait_until(Duration::from_secs(60), || rows_done(&db) >= 40);
    sandbox.set_faults(r#"{"rate_limit": 25}"#);
    util::wait_until(Duration::from_secs(60), || {
        faults(&sandbox, "rate_limited") >= 40
    });
    sandbox.set_faults(r#"{"rate_limit": 0}"#);
    sandbox.set_fail_rate(0.4);
    util::wait_until(Duration::from_secs(60), || faults(&sandbox, "failed") >= 30);
    sandbox.set_fail_rate(0.0);
    let out = child.wait_with_output().unwrap();
    assert_eq!(util::code(&out), 0, "{}", util::text(&out));

    // The report beside report.md, private like every output.
    let html_path = dir.path("s.db.report.html");
    let html = std::fs::read_to_string(&html_path).unwrap();
    let mode = std::fs::metadata(&html_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(html.len() < 2 * 1024 * 1024, "{} bytes", html.len());
    assert!(html.contains("http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'"));
    // Nothing that could be fetched: no URL but the SVG namespace.
    let urls = html.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
    assert!(!urls.contains("http://") && !urls.contains("https://") && !urls.contains("url("));
    assert!(!html.contains("<script"));
    // No customer data: the input's names are nowhere in it.
    assert!(!html.contains("Ñandú"), "customer names in the report");

    // The database's counters: the timeline's requests equal the requests
    // table; every request has exactly one outcome; the storm and the
    // burst are there.
    let (timeline_requests, outcomes) = timeline_totals(&db);
    let requests = request_counts(&db);
    assert_eq!(timeline_requests, requests);
    for (endpoint, n) in &requests {
        let answered: u64 = outcomes[endpoint].iter().sum();
        assert_eq!(
            answered, *n,
            "{endpoint}: outcomes {:?}",
            outcomes[endpoint]
        );
    }
    let class_total = |class: usize| outcomes.values().map(|o| o[class]).sum::<u64>();
    assert!(class_total(1) >= 40, "429s: {outcomes:?}");
    assert!(class_total(2) >= 30, "5xx: {outcomes:?}");
    // create_order asks for one row: its failed attempts, recorded per
    // row in `attempts`, are its 429s and 5xx.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let attempts = |code: &str| -> u64 {
        conn.query_row(
            "SELECT COUNT(*) FROM attempts WHERE run_id = 1 AND endpoint = 'create_order' AND error_code = ?1",
            [code],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!(attempts("rate_limited"), outcomes["create_order"][1]);
    assert_eq!(attempts("internal_error"), outcomes["create_order"][2]);

    // A real browser: the page loads with no console error, the DOM holds
    // the five plots, and its tables say what the database says.
    let profile = tempfile::tempdir().unwrap();
    let (dom, log) = browse(&chromium, profile.path(), &html_path, &["--dump-dom"]);
    for line in log.lines() {
        assert!(
            !(line.contains("CONSOLE") || line.contains("Refused to") || line.contains("Uncaught")),
            "browser console: {line}"
        );
    }
    for plot in [
        "plot-rows",
        "plot-requests",
        "plot-outcomes",
        "plot-latency",
        "plot-errors",
    ] {
        assert!(
            dom.contains(&format!("<svg id=\"{plot}\"")),
            "no {plot} in the DOM"
        );
    }
    assert_eq!(
        dom.matches("<details>").count(),
        5,
        "a table under each plot"
    );
    for (endpoint, n) in &requests {
        assert_eq!(
            cell(&dom, &format!("total-requests-{endpoint}")).as_deref(),
            Some(n.to_string().as_str()),
            "{endpoint}"
        );
    }
    for (i, class) in ["ok", "429", "5xx", "timeout", "dropped", "refused", "other"]
        .iter()
        .enumerate()
    {
        assert_eq!(
            cell(&dom, &format!("total-outcome-{class}")),
            Some(class_total(i).to_string()),
            "{class}"
        );
    }
    assert!(
        cell(&dom, "total-gate-seconds")
            .unwrap()
            .parse::<f64>()
            .unwrap()
            > 0.0
    );
    // The same figures as `status`'s top line.
    let status = util::run(dir.cmd(&sandbox, &["status", "--db", "s.db"]));
    let headline = cell(&dom, "headline").unwrap();
    assert!(
        String::from_utf8_lossy(&status.stdout).contains(&headline),
        "{headline} not in {}",
        util::text(&status)
    );
    assert!(
        headline.contains("300 of 300 rows final (300 done)"),
        "{headline}"
    );

    // `orderbatch report` writes the same plots from the database.
    let again = util::run(dir.cmd(
        &sandbox,
        &["report", "--db", "s.db", "--html", "again.html"],
    ));
    assert_eq!(util::code(&again), 0, "{}", util::text(&again));
    let again = dir.read("again.html");
    assert_eq!(
        cell(&again, "total-outcome-429"),
        Some(class_total(1).to_string())
    );

    // And it draws: a screenshot of the page is a PNG.
    let shot = dir.path("report.png");
    browse(
        &chromium,
        profile.path(),
        &html_path,
        &[
            "--window-size=1100,2400",
            "--hide-scrollbars",
            &format!("--screenshot={}", shot.display()),
        ],
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "{} bytes",
        png.len()
    );
    if let Some(keep) = std::env::var_os("ORDERBATCH_REPORT_SCREENSHOT") {
        std::fs::copy(&shot, keep).unwrap();
    }
}
