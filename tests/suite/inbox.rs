//! `orderbatch inbox`: ready files only, each once by content, archived
//! once, through kills, a target in the way and a SIGTERM under --watch.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::{Rng, SeedableRng};

use crate::util::{code, run, signal, spawn, text, wait_until, Dir, Sandbox};

/// An order file of `rows` rows, one customer each, order ids `{tag}-{i}`.
fn orders(tag: &str, rows: usize) -> String {
    let mut out = String::from(
        "site_customer_identifier,order_amount,order_currency,order_type,order_is_standing,site_order_identifier\n",
    );
    for i in 1..=rows {
        out.push_str(&format!(
            "{tag}-C{i},{}.00,USD,exact,true,{tag}-{i}\n",
            10 + i
        ));
    }
    out
}

fn inbox_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "inbox",
        "in",
        "--db",
        "state.db",
        "-q",
        "--rate",
        "unlimited",
    ];
    args.extend_from_slice(extra);
    args
}

/// Every file named `name` under `dir`/*/ (the per-day folders).
fn archived(dir: &Path, name: &str) -> Vec<PathBuf> {
    let Ok(days) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    days.flatten()
        .map(|d| d.path().join(name))
        .filter(|p| p.exists())
        .collect()
}

/// How many orders the sandbox holds per site_order_identifier starting with `prefix`.
fn orders_by_id(sandbox: &Sandbox, prefix: &str) -> HashMap<String, usize> {
    let mut by_id = HashMap::new();
    for o in sandbox.orders() {
        let id = o["fields"]["site_order_identifier"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if id.starts_with(prefix) {
            *by_id.entry(id).or_insert(0) += 1;
        }
    }
    by_id
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn new_inbox() -> Dir {
    let dir = Dir::new();
    std::fs::create_dir(dir.path("in")).unwrap();
    dir
}

#[test]
fn files_still_uploading_are_not_taken_then_are_once_stable() {
    let sandbox = Sandbox::start();
    let dir = new_inbox();
    dir.write("in/a.csv.filepart", orders("UP-A", 3));
    // A file growing under its final name, a line every 50 ms.
    let growing = dir.path("in/b.csv");
    std::fs::write(&growing, orders("UP-B", 0)).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (path, stop) = (growing.clone(), stop.clone());
        std::thread::spawn(move || {
            use std::io::Write;
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .unwrap();
                writeln!(f, "UP-B-C{i},{i}.00,USD,exact,true,UP-B-{i}").unwrap();
                drop(f);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let out = run(dir.cmd(&sandbox, &inbox_args(&["--ready", "stable:3s"])));
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        stdout(&out).contains("b.csv: waiting: changed"),
        "{}",
        text(&out)
    );
    assert!(!stdout(&out).contains("a.csv"), "{}", text(&out));
    assert!(dir.path("in/b.csv").exists());
    assert!(orders_by_id(&sandbox, "UP-").is_empty());

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    let rows = dir.read("in/b.csv").lines().count() - 1;
    // The upload ends with a rename to the final name.
    std::fs::rename(dir.path("in/a.csv.filepart"), dir.path("in/a.csv")).unwrap();
    std::thread::sleep(Duration::from_millis(3100));
    let out = run(dir.cmd(&sandbox, &inbox_args(&["--ready", "stable:3s"])));
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(orders_by_id(&sandbox, "UP-B-").len(), rows);
    assert_eq!(orders_by_id(&sandbox, "UP-A-").len(), 3);
    assert_eq!(archived(&dir.path("in/done"), "b.csv").len(), 1);
    assert_eq!(archived(&dir.path("in/done"), "a.csv").len(), 1);
}

#[test]
fn marker_mode_takes_a_file_only_with_its_marker_and_archives_both() {
    let sandbox = Sandbox::start();
    let dir = new_inbox();
    dir.write("in/m.csv", orders("MK", 4));
    let args = inbox_args(&["--ready", "marker:.done"]);
    let out = run(dir.cmd(&sandbox, &args));
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        stdout(&out).contains("m.csv: waiting: no m.csv.done yet"),
        "{}",
        text(&out)
    );
    assert_eq!(sandbox.total_requests(), 0);

    dir.write("in/m.csv.done", "");
    let dry = run(dir.cmd(&sandbox, &[&args[..], &["--dry-run"]].concat()));
    assert_eq!(code(&dry), 0, "{}", text(&dry));
    assert!(
        stdout(&dry).contains("m.csv: take: run it"),
        "{}",
        text(&dry)
    );
    assert_eq!(sandbox.total_requests(), 0);

    let out = run(dir.cmd(&sandbox, &args));
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(orders_by_id(&sandbox, "MK-").len(), 4);
    assert!(!dir.path("in/m.csv").exists() && !dir.path("in/m.csv.done").exists());
    let done = archived(&dir.path("in/done"), "m.csv");
    assert_eq!(done.len(), 1);
    let day = done[0].parent().unwrap();
    for name in [
        "m.csv.done",
        "m.export.csv",
        "m.rejects.csv",
        "m.report.md",
        "m.report.json",
    ] {
        assert!(day.join(name).exists(), "no {name} in {}", day.display());
    }
    let export = crate::util::read_export(&day.join("m.export.csv"));
    assert_eq!(export.len(), 4);
}

#[test]
fn two_files_back_to_back_then_the_same_content_under_another_name_is_not_run_again() {
    let sandbox = Sandbox::start();
    let dir = new_inbox();
    dir.write("in/first.csv", orders("BB1", 5));
    dir.write("in/second.csv", orders("BB2", 7));
    dir.write("in/broken.csv", "no_such_column\nx\n");
    let out = run(dir.cmd(&sandbox, &inbox_args(&["--ready", "stable:0"])));
    // The worst of 0, 0 and 2 (the refused file).
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert_eq!(orders_by_id(&sandbox, "BB1-").len(), 5);
    assert_eq!(orders_by_id(&sandbox, "BB2-").len(), 7);
    assert_eq!(archived(&dir.path("in/done"), "first.csv").len(), 1);
    assert_eq!(archived(&dir.path("in/done"), "second.csv").len(), 1);
    let failed = archived(&dir.path("in/failed"), "broken.csv");
    assert_eq!(failed.len(), 1, "{}", text(&out));
    let error = std::fs::read_to_string(failed[0].with_file_name("broken.csv.error.txt")).unwrap();
    assert!(error.contains("no_such_column"), "{error}");
    let requests = sandbox.total_requests();

    // The first file again, under another name.
    let first = archived(&dir.path("in/done"), "first.csv").remove(0);
    std::fs::copy(&first, dir.path("in/again.csv")).unwrap();
    let out = run(dir.cmd(&sandbox, &inbox_args(&["--ready", "stable:0"])));
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        stdout(&out).contains("same content as run 1"),
        "{}",
        text(&out)
    );
    assert_eq!(sandbox.total_requests(), requests);
    let again = archived(&dir.path("in/done"), "again.csv");
    assert_eq!(again.len(), 1);
    let note = std::fs::read_to_string(again[0].with_file_name("again.note.txt")).unwrap();
    assert!(
        note.contains("run 1") && note.contains("first.csv"),
        "{note}"
    );
    assert!(!dir.path("in/again.csv").exists());
}

#[test]
fn an_archive_target_in_the_way_is_reported_and_retried_without_running_again() {
    let sandbox = Sandbox::start();
    let dir = new_inbox();
    dir.write("in/t.csv", orders("TX", 3));
    // Other files under both names the archive may use, today and
    // tomorrow (UTC), so that the test holds across midnight.
    let now = chrono::Utc::now();
    let days: Vec<String> = [now, now + chrono::Duration::days(1)]
        .iter()
        .map(|d| d.format("%Y-%m-%d").to_string())
        .collect();
    for day in &days {
        std::fs::create_dir_all(dir.path(&format!("in/done/{day}"))).unwrap();
        dir.write(&format!("in/done/{day}/t.csv"), "someone else's\n");
        dir.write(&format!("in/done/{day}/t.run-1.csv"), "someone else's\n");
    }
    let out = run(dir.cmd(&sandbox, &inbox_args(&["--ready", "stable:0"])));
    assert_eq!(code(&out), 5, "{}", text(&out));
    assert!(stdout(&out).contains("not archived"), "{}", text(&out));
    assert!(dir.path("in/t.csv").exists());
    assert_eq!(orders_by_id(&sandbox, "TX-").len(), 3);
    let requests = sandbox.total_requests();

    // Still in the way: reported again, nothing sent.
    let out = run(dir.cmd(&sandbox, &inbox_args(&["--ready", "stable:0"])));
    assert_eq!(code(&out), 5, "{}", text(&out));
    assert_eq!(sandbox.total_requests(), requests);

    for day in &days {
        std::fs::remove_file(dir.path(&format!("in/done/{day}/t.run-1.csv"))).unwrap();
    }
    let out = run(dir.cmd(&sandbox, &inbox_args(&["--ready", "stable:0"])));
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(sandbox.total_requests(), requests);
    assert!(!dir.path("in/t.csv").exists());
    let moved = archived(&dir.path("in/done"), "t.run-1.csv");
    assert_eq!(moved.len(), 1);
    assert_eq!(std::fs::read_to_string(&moved[0]).unwrap(), orders("TX", 3));
    assert!(moved[0].with_file_name("t.run-1.export.csv").exists());
    for day in &days {
        assert_eq!(
            dir.read(&format!("in/done/{day}/t.csv")),
            "someone else's\n"
        );
    }
}

/// Kills a pass over 5 files with SIGKILL at random points — a request
/// count (mid-run, often while the next file registers or starts beside
/// the last one's tail), the moment an export appears (mid-archive), or a
/// time after the start (registration, the first requests) — three times
/// per trial, then runs passes until one ends with 0. 20 trials: no order
/// twice, none lost, every file archived once with its export, nothing
/// left in the folder.
#[test]
fn sigkill_at_random_points_of_a_pass_loses_and_duplicates_nothing() {
    let sandbox = Sandbox::start();
    sandbox.set_delay_ms(1);
    let mut rng = rand::rngs::StdRng::seed_from_u64(20261203);
    let (mut kills, mut duplicates, mut lost, mut archives) = (0, 0, 0, 0);
    const TRIALS: usize = 20;
    for trial in 0..TRIALS {
        let dir = new_inbox();
        for f in 0..5 {
            dir.write(&format!("in/f{f}.csv"), orders(&format!("K{trial}F{f}"), 8));
        }
        let args = inbox_args(&["--ready", "stable:0", "--concurrency", "4"]);
        for _ in 0..3 {
            let before = sandbox.total_requests();
            let (at_requests, at_exports, at_ms) = (
                rng.random_range(0..130u64),
                rng.random_range(1..=5usize),
                rng.random_range(0..400u64),
            );
            let started = std::time::Instant::now();
            let mut child = spawn(dir.cmd(&sandbox, &args));
            let mut finished = false;
            wait_until(Duration::from_secs(60), || {
                finished = child.try_wait().unwrap().is_some();
                finished
                    || match trial % 3 {
                        0 => sandbox.total_requests() - before >= at_requests,
                        1 => exports(&dir.path("in/done")) >= at_exports,
                        _ => started.elapsed() >= Duration::from_millis(at_ms),
                    }
            });
            if !finished {
                signal(&child, 9);
            }
            let out = child.wait_with_output().unwrap();
            if !finished {
                use std::os::unix::process::ExitStatusExt;
                // Killed, unless it had just ended by itself.
                if out.status.signal() == Some(9) {
                    kills += 1;
                } else {
                    assert_eq!(code(&out), 0, "trial {trial}: {}", text(&out));
                }
            }
        }
        let mut last = None;
        for _ in 0..3 {
            let out = run(dir.cmd(&sandbox, &args));
            let done = code(&out) == 0 && stdout(&out).contains(" 0 waiting");
            last = Some(out);
            if done
                && std::fs::read_dir(dir.path("in"))
                    .unwrap()
                    .flatten()
                    .all(|e| e.path().is_dir())
            {
                break;
            }
        }
        let last = last.unwrap();
        assert_eq!(code(&last), 0, "trial {trial}: {}", text(&last));
        for f in 0..5 {
            let by_id = orders_by_id(&sandbox, &format!("K{trial}F{f}-"));
            lost += 8 - by_id.len();
            duplicates += by_id.values().map(|&n| n - 1).sum::<usize>();
            let name = format!("f{f}.csv");
            let moved = archived(&dir.path("in/done"), &name);
            assert_eq!(moved.len(), 1, "trial {trial}: {name}");
            archives += moved.len();
            assert_eq!(
                std::fs::read_to_string(&moved[0]).unwrap(),
                orders(&format!("K{trial}F{f}"), 8)
            );
            assert!(!dir.path(&format!("in/{name}")).exists());
            let export = archived(&dir.path("in/done"), &format!("f{f}.export.csv"));
            assert_eq!(crate::util::read_export(&export[0]).len(), 8);
        }
        // The folder holds nothing but the archive (no marker, no temporary
        // file of a move cut short); the archive, the files and their
        // outputs only.
        let left: Vec<_> = std::fs::read_dir(dir.path("in"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "done" && n != "failed")
            .collect();
        assert!(
            left.is_empty(),
            "trial {trial}: left in the folder: {left:?}"
        );
        assert!(
            crate::util::files_under(&dir.path("in/failed")).is_empty(),
            "trial {trial}: a file refused"
        );
        for f in crate::util::files_under(&dir.path("in/done")) {
            let n = f.file_name().unwrap().to_string_lossy().into_owned();
            assert!(
                [
                    ".csv",
                    ".export.csv",
                    ".rejects.csv",
                    ".report.md",
                    ".report.json"
                ]
                .iter()
                .any(|s| n.ends_with(s))
                    && !n.starts_with('.'),
                "trial {trial}: {n} in the archive"
            );
        }
    }
    println!(
        "{TRIALS} trials, {kills} passes killed: {duplicates} duplicates, {lost} lost, \
         {archives} of {} files archived once",
        TRIALS * 5
    );
    assert_eq!((duplicates, lost), (0, 0));
    assert_eq!(archives, TRIALS * 5);
    assert!(
        kills >= TRIALS * 2,
        "only {kills} passes were killed before they ended"
    );
}

fn exports(done: &Path) -> usize {
    let Ok(days) = std::fs::read_dir(done) else {
        return 0;
    };
    days.flatten()
        .filter_map(|d| std::fs::read_dir(d.path()).ok())
        .flat_map(std::iter::Iterator::flatten)
        .filter(|f| f.file_name().to_string_lossy().ends_with(".export.csv"))
        .count()
}

#[test]
fn watch_takes_a_file_dropped_while_it_runs_and_stops_on_sigterm() {
    let sandbox = Sandbox::start();
    let dir = new_inbox();
    let child = spawn(dir.cmd(
        &sandbox,
        &inbox_args(&["--ready", "stable:0", "--watch", "--interval", "200ms"]),
    ));
    wait_until(Duration::from_secs(30), || dir.path("in/done").exists());
    // Dropped the way an upload ends: written under a temporary name, renamed.
    dir.write("in/w.csv.part", orders("WT", 6));
    std::fs::rename(dir.path("in/w.csv.part"), dir.path("in/w.csv")).unwrap();
    wait_until(Duration::from_secs(60), || {
        !archived(&dir.path("in/done"), "w.csv").is_empty()
    });
    signal(&child, 15);
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), 143, "{}", text(&out));
    assert_eq!(orders_by_id(&sandbox, "WT-").len(), 6);
    assert!(!dir.path("in/w.csv").exists());
    // The lock went with the process: the next inbox starts.
    let again = run(dir.cmd(&sandbox, &inbox_args(&["--ready", "stable:0"])));
    assert_eq!(code(&again), 0, "{}", text(&again));
}

/// Sets a file's modification time `secs` seconds back.
fn age(path: &Path, secs: u64) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(secs))
        .unwrap();
}

/// Whether the database holds a run whose registration began (rows
/// recorded) and never ended.
fn half_registered(db: &Path) -> bool {
    let Ok(conn) =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return false;
    };
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM runs u WHERE u.registered = 0
                        AND EXISTS (SELECT 1 FROM rows r WHERE r.run_id = u.id))",
        [],
        |r| r.get::<_, bool>(0),
    )
    .unwrap_or(false)
}

/// A pass killed while it registers a file leaves a run that sent
/// nothing: the next pass resumes it (no order twice) or, when a corrected
/// upload replaced the file, runs the new file instead of refusing it
/// beside the old run; the file after it is taken either way.
#[test]
fn a_pass_killed_while_a_file_registers_blocks_nothing_and_duplicates_nothing() {
    let sandbox = Sandbox::start();
    for replaced in [false, true] {
        let dir = new_inbox();
        let tag = if replaced { "HRR" } else { "HRK" };
        // Five orders, then rows the registration rejects (nothing sent
        // for them): a registration long enough to be killed in.
        let mut a = orders(&format!("{tag}A"), 5);
        for i in 0..60_000 {
            a.push_str(&format!(
                "{tag}A-X{i},not-an-amount,USD,exact,true,{tag}A-X{i}\n"
            ));
        }
        dir.write("in/a.csv", &a);
        age(&dir.path("in/a.csv"), 60);
        dir.write("in/b.csv", orders(&format!("{tag}B"), 4));
        let db = dir.path("state.db");
        let mut child = spawn(dir.cmd(&sandbox, &inbox_args(&["--ready", "stable:0"])));
        wait_until(Duration::from_secs(120), || half_registered(&db));
        signal(&child, 9);
        let _ = child.wait().unwrap();
        assert!(half_registered(&db), "the kill missed the registration");
        assert!(orders_by_id(&sandbox, tag).is_empty());
        if replaced {
            // The uploader sends a corrected file under the same name.
            dir.write("in/a.csv", orders(&format!("{tag}A"), 6));
            age(&dir.path("in/a.csv"), 60);
        }
        let out = run(dir.cmd(&sandbox, &inbox_args(&["--ready", "stable:0"])));
        // The rejected rows leave the first file at exit 1.
        assert_eq!(code(&out), if replaced { 0 } else { 1 }, "{}", text(&out));
        let a_orders = orders_by_id(&sandbox, &format!("{tag}A-"));
        assert_eq!(
            a_orders.len(),
            if replaced { 6 } else { 5 },
            "{}",
            text(&out)
        );
        assert!(a_orders.values().all(|&n| n == 1), "{a_orders:?}");
        let b_orders = orders_by_id(&sandbox, &format!("{tag}B-"));
        assert_eq!(b_orders.len(), 4, "{}", text(&out));
        assert!(b_orders.values().all(|&n| n == 1), "{b_orders:?}");
        for name in ["a.csv", "b.csv"] {
            assert_eq!(archived(&dir.path("in/done"), name).len(), 1, "{name}");
            assert!(!dir.path(&format!("in/{name}")).exists());
        }
        if replaced {
            assert!(
                stderr(&out).contains("forgot unfinished run 1"),
                "{}",
                text(&out)
            );
        }
        assert!(!half_registered(&db));
    }
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `orderbatch retry` after the inbox archived a file reads the input where
/// the archive put it; for a run whose archive path was not recorded (an
/// older version), it looks in the default done folder; a file in neither
/// place is reported with where it looked and what to do.
#[test]
fn retry_after_the_inbox_archived_a_file_finds_it_in_the_archive() {
    let sandbox = Sandbox::start();
    let dir = new_inbox();
    dir.write("in/r.csv", orders("RT", 3));
    sandbox.set_faults_only("get_smart_token");
    sandbox.set_fail_rate(1.0);
    let args = inbox_args(&["--ready", "stable:0", "--max-attempts", "1"]);
    let out = run(dir.cmd(&sandbox, &args));
    // Every token failed: rows left, the file archived all the same.
    assert_eq!(code(&out), 1, "{}", text(&out));
    let moved = archived(&dir.path("in/done"), "r.csv");
    assert_eq!(moved.len(), 1, "{}", text(&out));
    assert!(!dir.path("in/r.csv").exists());
    let tokens = sandbox.requests("get_smart_token");

    sandbox.set_fail_rate(0.0);
    let out = run(dir.cmd(&sandbox, &["retry", "--db", "state.db", "-q"]));
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        stdout(&out).contains("3 failed rows back"),
        "{}",
        text(&out)
    );
    assert_eq!(sandbox.requests("get_smart_token"), tokens + 3);
    let by_id = orders_by_id(&sandbox, "RT-");
    assert_eq!(by_id.len(), 3);
    assert!(by_id.values().all(|&n| n == 1), "{by_id:?}");
    let conn = rusqlite::Connection::open(dir.path("state.db")).unwrap();
    let recorded: String = conn
        .query_row("SELECT input_path FROM runs WHERE id = 1", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        Path::new(&recorded),
        std::fs::canonicalize(&moved[0]).unwrap()
    );

    // An archive path not recorded: found in the default done folder.
    let old = std::fs::canonicalize(dir.path("in")).unwrap().join("r.csv");
    conn.execute(
        "UPDATE runs SET input_path = ?1 WHERE id = 1",
        [old.display().to_string()],
    )
    .unwrap();
    let out = run(dir.cmd(&sandbox, &["retry", "--db", "state.db", "-q"]));
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        stdout(&out).contains("0 failed rows back"),
        "{}",
        text(&out)
    );

    // Nowhere to be found: where it looked, and what to do.
    std::fs::rename(&moved[0], dir.path("elsewhere.csv")).unwrap();
    let out = run(dir.cmd(&sandbox, &["retry", "--db", "state.db", "-q"]));
    assert_eq!(code(&out), 2, "{}", text(&out));
    let said = stderr(&out);
    assert!(
        said.contains("done/*/{r.csv,r.run-1.csv}") && said.contains("Put the file back at"),
        "{said}"
    );
    assert_eq!(sandbox.requests("get_smart_token"), tokens + 3);
}

/// A marker left in the folder after its file was archived (a pass cut
/// short between the two) is removed by the next pass, its copy being in
/// the archive; a newer marker (a new upload's) is left alone.
#[test]
fn an_orphan_marker_is_removed_by_the_next_pass() {
    let sandbox = Sandbox::start();
    let dir = new_inbox();
    dir.write("in/m.csv", orders("OM", 2));
    dir.write("in/m.csv.done", "");
    let args = inbox_args(&["--ready", "marker:.done"]);
    let out = run(dir.cmd(&sandbox, &args));
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(archived(&dir.path("in/done"), "m.csv.done").len(), 1);
    let requests = sandbox.total_requests();

    // What a pass killed after the move and before the marker's removal
    // leaves: the marker, from before the archive's copy of it.
    dir.write("in/m.csv.done", "");
    age(&dir.path("in/m.csv.done"), 60);
    let dry = run(dir.cmd(&sandbox, &[&args[..], &["--dry-run"]].concat()));
    assert_eq!(code(&dry), 0, "{}", text(&dry));
    assert!(
        stdout(&dry).contains("m.csv.done: remove: the marker of a file already archived"),
        "{}",
        text(&dry)
    );
    assert!(dir.path("in/m.csv.done").exists());
    let out = run(dir.cmd(&sandbox, &args));
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        stdout(&out).contains("m.csv.done: removed: the marker of a file already archived"),
        "{}",
        text(&out)
    );
    assert!(!dir.path("in/m.csv.done").exists());
    assert_eq!(archived(&dir.path("in/done"), "m.csv.done").len(), 1);
    assert_eq!(sandbox.total_requests(), requests);

    // A marker newer than the archive's copy belongs to a new upload.
    std::thread::sleep(Duration::from_millis(20));
    dir.write("in/m.csv.done", "");
    let out = run(dir.cmd(&sandbox, &args));
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(dir.path("in/m.csv.done").exists(), "{}", text(&out));
    // Its file arrives: taken, with the marker.
    dir.write("in/m.csv", orders("OM2", 2));
    let out = run(dir.cmd(&sandbox, &args));
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(orders_by_id(&sandbox, "OM2-").len(), 2);
    assert!(!dir.path("in/m.csv.done").exists());
    assert!(!dir.path("in/m.csv").exists());
}

/// Two files sharing a customer, and an order of that customer: the second
/// file starts while the first one's last customer (that one, with a long
/// chain) still sends, and its chain for the customer waits for the first
/// file's: the shared order is created once and both files carry it.
#[test]
fn a_customer_in_two_files_goes_through_the_first_files_chain_first() {
    let sandbox = Sandbox::start();
    sandbox.set_delay_ms(15);
    let dir = new_inbox();
    let header = "site_customer_identifier,order_amount,order_currency,order_type,order_is_standing,site_order_identifier\n";
    let mut first = String::from(header);
    for i in 1..=10 {
        first.push_str(&format!("SC-A{i:02},{i}.00,USD,exact,true,SC-A-{i}\n"));
    }
    // The last customer read, with the longest chain, the shared order
    // last in it (created last).
    for i in (2..=12).chain([1]) {
        first.push_str(&format!("SC-ZZ,{}.00,USD,exact,true,SC-ZZ-{i}\n", 20 + i));
    }
    let mut second = String::from(header);
    for i in 1..=3 {
        second.push_str(&format!("SC-B{i:02},{i}.00,USD,exact,true,SC-B-{i}\n"));
    }
    // The same order as the first file's (same customer, same amount),
    // and new ones of the same customer.
    second.push_str("SC-ZZ,21.00,USD,exact,true,SC-ZZ-1\n");
    for i in 13..=15 {
        second.push_str(&format!("SC-ZZ,{}.00,USD,exact,true,SC-ZZ-{i}\n", 20 + i));
    }
    dir.write("in/first.csv", &first);
    age(&dir.path("in/first.csv"), 60);
    dir.write("in/second.csv", &second);
    let out = run(dir.cmd(
        &sandbox,
        &inbox_args(&["--ready", "stable:0", "--concurrency", "4"]),
    ));
    assert_eq!(code(&out), 0, "{}", text(&out));
    let by_id = orders_by_id(&sandbox, "SC-");
    assert_eq!(by_id.len(), 10 + 15 + 3, "{by_id:?}");
    assert!(by_id.values().all(|&n| n == 1), "{by_id:?}");
    assert_eq!(sandbox.counter("duplicates"), 0);
    assert_eq!(sandbox.counter("overlaps"), 0);
    let shared = |name: &str| {
        let export = archived(&dir.path("in/done"), name);
        assert_eq!(export.len(), 1, "{name}");
        crate::util::read_export(&export[0])
            .into_iter()
            .find(|r| r["site_order_identifier"] == "SC-ZZ-1")
            .map(|r| r["pnm_order_identifier"].clone())
            .unwrap()
    };
    let a = shared("first.export.csv");
    assert!(!a.is_empty());
    assert_eq!(a, shared("second.export.csv"));
}

/// A file that stops (`--max-errors`) stops the files started beside it
/// and the pass: they stay, nothing of theirs is archived half done, and
/// the next pass finishes them with every order once.
#[test]
fn a_file_that_stops_stops_the_files_after_it() {
    let sandbox = Sandbox::start();
    sandbox.set_delay_ms(5);
    let dir = new_inbox();
    dir.write("in/a.csv", orders("ME-A", 6));
    age(&dir.path("in/a.csv"), 120);
    dir.write("in/b.csv", orders("ME-B", 30));
    age(&dir.path("in/b.csv"), 60);
    dir.write("in/c.csv", orders("ME-C", 4));
    sandbox.set_poison("ME-A-C1");
    let args = inbox_args(&[
        "--ready",
        "stable:0",
        "--max-attempts",
        "1",
        "--max-errors",
        "1",
        "--concurrency",
        "2",
    ]);
    let out = run(dir.cmd(&sandbox, &args));
    assert_eq!(code(&out), 3, "{}", text(&out));
    let said = stdout(&out);
    assert!(said.contains("a.csv: run 1: stopped"), "{said}");
    assert!(dir.path("in/a.csv").exists());
    // b.csv, registered meanwhile, was not started (a.csv stopped first)
    // or was stopped with it (started beside a.csv's last customers),
    // unless it had finished by then.
    let b_done = !archived(&dir.path("in/done"), "b.csv").is_empty();
    assert!(
        b_done
            || ((said.contains("b.csv: run 2: stopped")
                || said.contains("b.csv: waiting: not started: a file before it stopped"))
                && dir.path("in/b.csv").exists()),
        "{said}"
    );
    assert!(dir.path("in/c.csv").exists(), "{said}");
    assert!(archived(&dir.path("in/done"), "c.csv").is_empty());

    sandbox.set_poison("");
    let out = run(dir.cmd(&sandbox, &args));
    // The poisoned row failed for good: a.csv ends with a row left.
    assert_eq!(code(&out), 1, "{}", text(&out));
    for (tag, rows) in [("ME-A-", 5), ("ME-B-", 30), ("ME-C-", 4)] {
        let by_id = orders_by_id(&sandbox, tag);
        assert_eq!(by_id.len(), rows, "{tag} {}", text(&out));
        assert!(by_id.values().all(|&n| n == 1), "{by_id:?}");
    }
    for name in ["a.csv", "b.csv", "c.csv"] {
        assert_eq!(archived(&dir.path("in/done"), name).len(), 1, "{name}");
    }
}

#[test]
fn the_same_content_twice_in_one_pass_is_run_once_and_archived_beside_that_run() {
    let sandbox = Sandbox::start();
    let dir = new_inbox();
    dir.write("in/a.csv", orders("TW", 5));
    dir.write("in/b.csv", orders("TW", 5));
    let out = run(dir.cmd(&sandbox, &inbox_args(&["--ready", "stable:0"])));
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(orders_by_id(&sandbox, "TW-").len(), 5);
    // One token per order: the copy did not resume the run beside itself.
    assert_eq!(sandbox.requests("get_smart_token"), 5, "{}", text(&out));
    assert!(dir.path("in/b.csv").exists(), "{}", text(&out));
    let requests = sandbox.total_requests();
    let out = run(dir.cmd(&sandbox, &inbox_args(&["--ready", "stable:0"])));
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(sandbox.total_requests(), requests, "{}", text(&out));
    assert_eq!(archived(&dir.path("in/done"), "b.csv").len(), 1);
    assert!(
        stdout(&out).contains("same content as run 1"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_file_replaced_while_it_runs_is_not_archived_under_the_old_run() {
    let sandbox = Sandbox::start();
    // Each create takes a while: the replacement lands mid-run.
    sandbox.set_faults(r#"{"only":"create_order","delay_ms":300}"#);
    let dir = new_inbox();
    dir.write("in/x.csv", orders("OLD", 6));
    let child = spawn(dir.cmd(
        &sandbox,
        &inbox_args(&["--ready", "stable:0", "--concurrency", "1"]),
    ));
    wait_until(Duration::from_secs(30), || {
        sandbox.requests("create_order") >= 1
    });
    let new = dir.path("in/x.csv.new");
    std::fs::write(&new, orders("NEW", 3)).unwrap();
    std::fs::rename(&new, dir.path("in/x.csv")).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(orders_by_id(&sandbox, "OLD-").len(), 6, "{}", text(&out));
    // What is there now was not run: it stays, and is not in the archive.
    assert_eq!(
        std::fs::read_to_string(dir.path("in/x.csv")).unwrap(),
        orders("NEW", 3)
    );
    assert!(archived(&dir.path("in/done"), "x.csv")
        .iter()
        .all(|p| std::fs::read_to_string(p).unwrap() != orders("NEW", 3)));
    sandbox.set_faults(r#"{"delay_ms":0}"#);
    let out = run(dir.cmd(&sandbox, &inbox_args(&["--ready", "stable:0"])));
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(orders_by_id(&sandbox, "NEW-").len(), 3, "{}", text(&out));
    assert!(!dir.path("in/x.csv").exists());
}
