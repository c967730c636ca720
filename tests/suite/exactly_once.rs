//! Exactly once and byte for byte, in every command and across runs.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

use crate::util::*;

/// The sandbox's orders by `site_order_identifier`.
fn by_site_order(sandbox: &Sandbox) -> HashMap<String, Value> {
    sandbox
        .orders()
        .into_iter()
        .map(|o| {
            (
                o["fields"]["site_order_identifier"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                o,
            )
        })
        .collect()
}

/// Every provider value of the export equals what the sandbox holds, byte
/// for byte (rows found by their order, so several rows may name one).
fn assert_export_is_the_sandbox(sandbox: &Sandbox, path: &std::path::Path) {
    let orders: HashMap<String, Value> = sandbox
        .orders()
        .into_iter()
        .map(|o| (o["pnm_order_identifier"].as_str().unwrap().to_string(), o))
        .collect();
    let export = read_export(path);
    assert!(!export.is_empty());
    for line in &export {
        let order = &orders[&line["pnm_order_identifier"]];
        assert_eq!(
            order["fields"]["site_order_identifier"].as_str(),
            Some(line["site_order_identifier"].as_str()),
            "row {}",
            line["row_number"]
        );
        for field in [
            "pnm_customer_identifier",
            "embedded_js_url",
            "embedded_js_url_expires_at",
            "secure_smart_token",
            "secure_smart_link",
        ] {
            assert_eq!(
                order[field].as_str(),
                Some(line[field].as_str()),
                "{field} of {}",
                line["site_order_identifier"]
            );
        }
    }
}

#[test]
fn exports_carry_provider_values_byte_for_byte_unless_asked_to_be_spreadsheet_safe() {
    let sandbox = Sandbox::with(|c| c.hostile_values = true);
    let dir = Dir::new();
    dir.write("o.csv", orders_csv(40, 8, true));
    let out = run(dir.cmd(
        &sandbox,
        &[
            "run",
            "o.csv",
            "--db",
            "s.db",
            "--export",
            "e.csv",
            "--rate",
            "unlimited",
        ],
    ));
    assert_eq!(code(&out), 0, "{}", text(&out));
    let tokens: Vec<String> = sandbox
        .orders()
        .iter()
        .map(|o| o["secure_smart_token"].as_str().unwrap().to_string())
        .collect();
    for lead in ["-", "=", "+", "@"] {
        assert!(
            tokens.iter().any(|t| t.starts_with(lead)),
            "no token starts with {lead}"
        );
    }
    assert_export_is_the_sandbox(&sandbox, &dir.path("e.csv"));
    // `orderbatch export` writes the same bytes.
    let out = run(dir.bare_cmd(&["export", "--db", "s.db", "--out", "again.csv"]));
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(
        std::fs::read(dir.path("e.csv")).unwrap(),
        std::fs::read(dir.path("again.csv")).unwrap()
    );
    // Opting in prefixes formula-like cells, and nothing else.
    let out = run(dir.bare_cmd(&[
        "export",
        "--db",
        "s.db",
        "--out",
        "sheet.csv",
        "--spreadsheet-safe",
    ]));
    assert_eq!(code(&out), 0, "{}", text(&out));
    let orders = by_site_order(&sandbox);
    for line in read_export(&dir.path("sheet.csv")) {
        let token = orders[&line["site_order_identifier"]]["secure_smart_token"]
            .as_str()
            .unwrap();
        assert_eq!(line["secure_smart_token"], format!("'{token}"));
        assert_eq!(
            line["embedded_js_url"],
            orders[&line["site_order_identifier"]]["embedded_js_url"]
        );
    }
}

/// `site_order_identifier → pnm_order_identifier` of an export.
fn export_orders(path: &std::path::Path) -> HashMap<String, String> {
    read_export(path)
        .into_iter()
        .map(|r| {
            (
                r["site_order_identifier"].clone(),
                r["pnm_order_identifier"].clone(),
            )
        })
        .collect()
}

#[test]
fn a_second_file_on_the_same_db_adopts_orders_it_names_again() {
    let sandbox = Sandbox::start();
    let dir = Dir::new();
    let first = orders_csv(150, 30, true);
    dir.write("first.csv", &first);
    let out = run(dir.cmd(
        &sandbox,
        &[
            "run",
            "first.csv",
            "--db",
            "s.db",
            "--export",
            "first-out.csv",
            "--rate",
            "unlimited",
        ],
    ));
    assert_eq!(code(&out), 0, "{}", text(&out));
    // 60 of them again (same identifiers, same content) beside 40 new ones.
    let lines: Vec<&str> = first.lines().collect();
    let mut second = format!("{}\n", lines[0]);
    for line in &lines[91..151] {
        second.push_str(line);
        second.push('\n');
    }
    for line in orders_csv(190, 30, true).lines().skip(151) {
        second.push_str(line);
        second.push('\n');
    }
    dir.write("second.csv", &second);
    let dry = run(dir.cmd(
        &sandbox,
        &["run", "second.csv", "--db", "s.db", "--dry-run"],
    ));
    assert!(
        text(&dry).contains("create_order") && text(&dry).contains(" 40\n"),
        "{}",
        text(&dry)
    );
    let out = run(dir.cmd(
        &sandbox,
        &[
            "run",
            "second.csv",
            "--db",
            "s.db",
            "--export",
            "second-out.csv",
            "--rate",
            "unlimited",
        ],
    ));
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(sandbox.orders().len(), 190, "orders created twice");
    assert_eq!(sandbox.counter("duplicates"), 0);
    assert_eq!(sandbox.requests("create_order"), 190);
    // The repeated rows' export rows carry the earlier orders.
    let earlier = export_orders(&dir.path("first-out.csv"));
    let later = export_orders(&dir.path("second-out.csv"));
    assert_eq!(later.len(), 100);
    for (id, pnm) in &later {
        if let Some(before) = earlier.get(id) {
            assert_eq!(before, pnm, "{id}");
        }
        assert!(!pnm.is_empty());
    }
    assert_export_is_the_sandbox(&sandbox, &dir.path("second-out.csv"));
}

#[test]
fn the_same_identifier_with_another_amount_is_a_conflict_naming_the_earlier_run() {
    let sandbox = Sandbox::start();
    let dir = Dir::new();
    let header = "site_customer_identifier,site_order_identifier,order_amount,order_currency,order_type,order_is_standing\n";
    dir.write(
        "a.csv",
        format!("{header}C1,O1,10.00,USD,exact,true\nC1,O2,11.00,USD,exact,true\n"),
    );
    let out = run(dir.cmd(&sandbox, &["run", "a.csv", "--db", "s.db"]));
    assert_eq!(code(&out), 0, "{}", text(&out));
    // O1 again for another amount (10 and 10.00 are the same amount), O2
    // for another customer.
    dir.write(
        "b.csv",
        format!("{header}C1,O1,10,USD,exact,true\nC1,O1X,12.00,USD,exact,true\nC2,O2,11.00,USD,exact,true\nC1,O3,99.99,USD,exact,true\n"),
    );
    let out = run(dir.cmd(
        &sandbox,
        &["run", "b.csv", "--db", "s.db", "--export", "b-out.csv"],
    ));
    assert_eq!(code(&out), 1, "{}", text(&out));
    let export = read_export(&dir.path("b-out.csv"));
    let status = |id: &str| {
        export
            .iter()
            .find(|r| r["site_order_identifier"] == id || r["row_number"] == id)
            .cloned()
    };
    assert_eq!(status("O1").unwrap()["status"], "done");
    let conflict = export.iter().find(|r| r["row_number"] == "3").unwrap();
    assert_eq!(conflict["status"], "rejected");
    assert!(conflict["error"].contains("run 1"), "{conflict:?}");
    assert!(conflict["error"].contains("customer C1"), "{conflict:?}");
    assert_eq!(sandbox.orders().len(), 4, "O1, O2, O1X, O3");
    assert_eq!(sandbox.counter("duplicates"), 0);
}

#[test]
fn check_existing_on_a_fresh_db_adopts_what_the_provider_already_holds() {
    let sandbox = Sandbox::start();
    let dir = Dir::new();
    dir.write("o.csv", orders_csv(30, 6, true));
    let out = run(dir.cmd(
        &sandbox,
        &["run", "o.csv", "--db", "first.db", "--rate", "unlimited"],
    ));
    assert_eq!(code(&out), 0, "{}", text(&out));
    // Another machine: a new database, the same file plus 10 new rows.
    dir.write("more.csv", orders_csv(40, 6, true));
    let dry = run(dir.cmd(
        &sandbox,
        &[
            "run",
            "more.csv",
            "--db",
            "second.db",
            "--check-existing",
            "--dry-run",
        ],
    ));
    let dry_text = String::from_utf8_lossy(&dry.stdout).to_string();
    let planned = |endpoint: &str| -> u64 {
        dry_text
            .lines()
            .find(|l| l.trim_start().starts_with(endpoint))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    assert_eq!(planned("find_orders"), 40, "{dry_text}");
    let before = sandbox.requests("find_orders");
    let out = run(dir.cmd(
        &sandbox,
        &[
            "run",
            "more.csv",
            "--db",
            "second.db",
            "--check-existing",
            "--export",
            "e.csv",
        ],
    ));
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(sandbox.requests("find_orders") - before, 40);
    assert_eq!(sandbox.orders().len(), 40, "one order per identifier");
    assert_eq!(sandbox.counter("duplicates"), 0);
    assert_export_is_the_sandbox(&sandbox, &dir.path("e.csv"));
}

#[test]
fn a_copy_of_a_file_without_identifiers_is_refused_until_told_which_orders_to_use() {
    let sandbox = Sandbox::start();
    let dir = Dir::new();
    let original = orders_csv(200, 20, false);
    dir.write("o.csv", &original);
    let out = run(dir.cmd(
        &sandbox,
        &["run", "o.csv", "--db", "s.db", "--rate", "unlimited"],
    ));
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(sandbox.orders().len(), 200);
    let lines: Vec<&str> = original.lines().collect();
    // One amount corrected; the rows reversed; CRLF line endings.
    let edited = original.replacen(",11.01,", ",11.02,", 1);
    assert_ne!(edited, original);
    let mut reversed = format!("{}\n", lines[0]);
    for line in lines[1..].iter().rev() {
        reversed.push_str(line);
        reversed.push('\n');
    }
    let crlf = original.replace('\n', "\r\n");
    for (name, copy) in [
        ("edited.csv", &edited),
        ("reversed.csv", &reversed),
        ("crlf.csv", &crlf),
    ] {
        dir.write(name, copy);
        let out = run(dir.cmd(&sandbox, &["run", name, "--db", "s.db"]));
        assert_eq!(code(&out), 2, "{name}: {}", text(&out));
        assert!(
            text(&out).contains("of the 200 rows of"),
            "{name}: {}",
            text(&out)
        );
        assert!(text(&out).contains("--same-orders"), "{}", text(&out));
        assert_eq!(sandbox.orders().len(), 200, "{name} sent something");
    }
    let validate = run(dir.bare_cmd(&["validate", "o.csv"]));
    assert!(
        text(&validate).contains("200 valid rows have no site_order_identifier"),
        "{}",
        text(&validate)
    );
    // --same-orders: every unchanged row adopts its order; the edited one is new.
    let out = run(dir.cmd(
        &sandbox,
        &[
            "run",
            "edited.csv",
            "--db",
            "s.db",
            "--same-orders",
            "--export",
            "e.csv",
        ],
    ));
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(sandbox.orders().len(), 201);
    for (name, _) in [("reversed.csv", ()), ("crlf.csv", ())] {
        let out = run(dir.cmd(
            &sandbox,
            &[
                "run",
                name,
                "--db",
                "s.db",
                "--same-orders",
                "--rate",
                "unlimited",
            ],
        ));
        assert_eq!(code(&out), 0, "{name}: {}", text(&out));
        assert_eq!(sandbox.orders().len(), 201, "{name}");
    }
    // --new-orders: created anew (another copy: one more line break at the end).
    dir.write("again.csv", format!("{original}\n"));
    let out = run(dir.cmd(&sandbox, &["run", "again.csv", "--db", "s.db"]));
    assert_eq!(code(&out), 2, "{}", text(&out));
    let out = run(dir.cmd(
        &sandbox,
        &[
            "run",
            "again.csv",
            "--db",
            "s.db",
            "--new-orders",
            "--rate",
            "unlimited",
        ],
    ));
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(sandbox.orders().len(), 401);
}

/// `site_order_identifier → (url_generations, token, changes)` at the sandbox.
fn touches(sandbox: &Sandbox) -> HashMap<String, (u64, String, u64)> {
    by_site_order(sandbox)
        .into_iter()
        .map(|(id, o)| {
            (
                id,
                (
                    o["url_generations"].as_u64().unwrap(),
                    o["secure_smart_token"].as_str().unwrap_or("").to_string(),
                    o["changes"].as_u64().unwrap(),
                ),
            )
        })
        .collect()
}

#[test]
fn retry_after_a_full_outage_finishes_refresh_change_and_ce_touching_each_order_once_more() {
    let sandbox = Sandbox::start();
    let dir = Dir::new();
    dir.write("o.csv", orders_csv(12, 3, true));
    let out = run(dir.cmd(
        &sandbox,
        &["run", "o.csv", "--db", "run.db", "--rate", "unlimited"],
    ));
    assert_eq!(code(&out), 0, "{}", text(&out));
    let fast = [
        "--max-attempts",
        "2",
        "--retry-base-ms",
        "10",
        "--rate",
        "unlimited",
    ];
    let with = |args: &[&'static str]| -> Vec<&'static str> {
        args.iter().chain(&fast).copied().collect()
    };

    // refresh --force: every order's URL and token once more.
    let before = touches(&sandbox);
    dir.write("r.csv", "site_customer_identifier\nC-0\nC-1\nC-2\n");
    sandbox.set_fail_rate(1.0);
    let out = run(dir.cmd(
        &sandbox,
        &with(&["refresh", "r.csv", "--db", "refresh.db", "--force"]),
    ));
    assert_eq!(code(&out), 1, "{}", text(&out));
    sandbox.set_fail_rate(0.0);
    let out = run(dir.cmd(
        &sandbox,
        &with(&["retry", "--db", "refresh.db", "--export", "r-out.csv"]),
    ));
    assert_eq!(code(&out), 0, "{}", text(&out));
    let after = touches(&sandbox);
    for (id, (urls, token, _)) in &after {
        assert_eq!(
            *urls,
            before[id].0 + 1,
            "{id}: URL not regenerated exactly once more"
        );
        assert_ne!(*token, before[id].1, "{id}: token not reissued");
    }
    assert_eq!(read_export(&dir.path("r-out.csv")).len(), 12);

    // change: every order changed exactly once.
    dir.write(
        "c.csv",
        "site_order_identifier,order_amount\nORD-1,91.00\nORD-2,92.00\nORD-3,93.00\nORD-4,94.00\n",
    );
    sandbox.set_fail_rate(1.0);
    let out = run(dir.cmd(&sandbox, &with(&["change", "c.csv", "--db", "change.db"])));
    assert_eq!(code(&out), 1, "{}", text(&out));
    sandbox.set_fail_rate(0.0);
    let out = run(dir.cmd(&sandbox, &with(&["retry", "--db", "change.db"])));
    assert_eq!(code(&out), 0, "{}", text(&out));
    for i in 1..=4 {
        let order = sandbox.order(&format!("ORD-{i}"));
        assert_eq!(order["changes"], 1, "ORD-{i}");
        assert_eq!(order["fields"]["order_amount"], format!("9{i}.00"));
    }

    // ce retry-payments: one retry per order, with the run's payment defaults.
    let names: Vec<String> = (1..=5).map(|i| format!("CE-{i}")).collect();
    sandbox.seed_failed_ce_orders(&dir, &names);
    sandbox.set_fail_rate(1.0);
    let mut cmd = dir.ce_cmd(
        &sandbox,
        &with(&[
            "ce",
            "retry-payments",
            "o.csv",
            "--db",
            "ce.db",
            "--payment-provider-slug",
            "juspay",
        ]),
    );
    cmd.arg("--max-wait").arg("0s");
    let out = run(cmd);
    assert_eq!(code(&out), 1, "{}", text(&out));
    sandbox.set_fail_rate(0.0);
    let out = run(dir.ce_cmd(&sandbox, &with(&["retry", "--db", "ce.db"])));
    assert_eq!(code(&out), 0, "{}", text(&out));
    for name in &names {
        let order = sandbox.ce_order(name);
        assert_eq!(order["retries"], 1, "{name}");
        assert_eq!(
            order["payments"][0]["payment_method"]["payment_provider_slug"],
            "juspay"
        );
    }
}

#[test]
fn retry_puts_nothing_back_when_the_configuration_is_wrong() {
    let sandbox = Sandbox::start();
    let dir = Dir::new();
    dir.write("c.csv", "pnm_order_identifier,order_amount\nnope-1,1.00\n");
    let out = run(dir.cmd(
        &sandbox,
        &["change", "c.csv", "--db", "c.db", "--max-attempts", "1"],
    ));
    assert_eq!(code(&out), 1, "{}", text(&out));
    let failed = || {
        let status = run(dir.bare_cmd(&["status", "--db", "c.db", "--json"]));
        let status: Value = serde_json::from_slice(&status.stdout).unwrap();
        status["runs"][0]["states"]["failed"].as_u64().unwrap_or(0)
    };
    assert_eq!(failed(), 1);
    // No credentials: refused before anything is put back.
    let out = run(dir.bare_cmd(&["retry", "--db", "c.db"]));
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert_eq!(failed(), 1, "the failed row was requeued before the check");
}

#[test]
fn change_under_dropped_connections_applies_each_change_once_and_never_overlaps_a_customer() {
    let sandbox = Sandbox::with(|c| {
        c.strict_serial = true;
        c.latency_ms = Some((2, 6));
        c.seed = 7;
    });
    let dir = Dir::new();
    dir.write("o.csv", orders_csv(40, 5, true));
    let out = run(dir.cmd(
        &sandbox,
        &["run", "o.csv", "--db", "run.db", "--rate", "unlimited"],
    ));
    assert_eq!(code(&out), 0, "{}", text(&out));
    // Name each order by pnm_order_identifier only: the customer is unknown.
    let mut csv = String::from("pnm_order_identifier,order_amount\n");
    let mut expected = HashMap::new();
    for (i, order) in sandbox.orders().iter().enumerate() {
        let amount = format!("{}.{:02}", 500 + i, i % 100);
        csv.push_str(&format!(
            "{},{amount}\n",
            order["pnm_order_identifier"].as_str().unwrap()
        ));
        expected.insert(
            order["pnm_order_identifier"].as_str().unwrap().to_string(),
            amount,
        );
    }
    dir.write("c.csv", &csv);
    let overlaps_before = sandbox.counter("overlaps");
    let dry = run(dir.cmd(&sandbox, &["change", "c.csv", "--db", "c.db", "--dry-run"]));
    assert!(text(&dry).contains("find_orders"), "{}", text(&dry));
    sandbox.set_drop_rate(0.2);
    let out = run(dir.cmd(
        &sandbox,
        &[
            "change",
            "c.csv",
            "--db",
            "c.db",
            "--rate",
            "unlimited",
            "--concurrency",
            "16",
            "--retry-base-ms",
            "10",
        ],
    ));
    sandbox.set_drop_rate(0.0);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        sandbox.state()["counters"]["faults"]["dropped"]
            .as_u64()
            .unwrap()
            > 0
    );
    for order in sandbox.orders() {
        let pnm = order["pnm_order_identifier"].as_str().unwrap();
        assert_eq!(
            order["changes"], 1,
            "{pnm} changed {} times",
            order["changes"]
        );
        assert_eq!(
            order["fields"]["order_amount"].as_str(),
            Some(expected[pnm].as_str())
        );
    }
    assert_eq!(
        sandbox.counter("overlaps") - overlaps_before,
        0,
        "requests overlapped"
    );
}

/// Starts a run of 600 rows, edits its input in place once 20 orders are
/// created (same size, other amounts) with `edit`, and checks that the run
/// stopped before any new value was sent and finishes once restored.
fn edited_mid_run_stops_the_run(edit: impl FnOnce(&std::path::Path, &str)) {
    let sandbox = Sandbox::with(|c| c.latency_ms = Some((4, 8)));
    let dir = Dir::new();
    // More customers than a run keeps in flight: the file is still being
    // read when it changes.
    let original = orders_csv(600, 600, true);
    dir.write("o.csv", &original);
    let child = spawn(dir.cmd(
        &sandbox,
        &[
            "run",
            "o.csv",
            "--db",
            "s.db",
            "--rate",
            "unlimited",
            "--concurrency",
            "2",
        ],
    ));
    wait_until(Duration::from_secs(30), || {
        sandbox.requests("create_order") >= 20
    });
    // Same size, other amounts: only the hash tells.
    let edited: String = original
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i == 0 {
                format!("{l}\n")
            } else {
                format!("{}\n", l.replacen(",1", ",9", 1))
            }
        })
        .collect();
    assert_eq!(edited.len(), original.len());
    edit(&dir.path("o.csv"), &edited);
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(
        text(&out).contains("input changed since the run started"),
        "{}",
        text(&out)
    );
    for order in sandbox.orders() {
        let amount = order["fields"]["order_amount"].as_str().unwrap();
        assert!(!amount.starts_with('9'), "a new value was sent: {amount}");
    }
    // Restored, the same command finishes: one order per row.
    dir.write("o.csv", &original);
    let out = run(dir.cmd(
        &sandbox,
        &["run", "o.csv", "--db", "s.db", "--rate", "unlimited"],
    ));
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(sandbox.orders().len(), 600);
    assert_eq!(sandbox.counter("duplicates"), 0);
}

#[test]
fn an_input_edited_mid_run_stops_the_run_before_any_new_value_is_sent() {
    edited_mid_run_stops_the_run(|path, text| std::fs::write(path, text).unwrap());
}

#[test]
fn an_input_edited_in_place_with_its_mtime_put_back_stops_the_run() {
    // What `touch -r` or an SFTP client preserving times leaves: same size,
    // same modification time, other bytes (written over, not truncated).
    edited_mid_run_stops_the_run(|path, text| {
        use std::io::Write;
        let mtime = std::fs::metadata(path).unwrap().modified().unwrap();
        let mut file = std::fs::File::options().write(true).open(path).unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file.set_modified(mtime).unwrap();
    });
}

#[test]
fn a_ce_retry_whose_answer_was_lost_is_never_sent_again_even_once_the_window_reopens() {
    let sandbox = Sandbox::start();
    let dir = Dir::new();
    let names: Vec<String> = (1..=4).map(|i| format!("LOST-{i}")).collect();
    sandbox.seed_failed_ce_orders(&dir, &names);
    // Every retry-payment goes through but its answer is lost; with one
    // attempt allowed, the rows fail.
    sandbox.set_faults_only("retry-payment");
    sandbox.set_drop_rate(1.0);
    let out = run(dir.ce_cmd(
        &sandbox,
        &[
            "ce",
            "retry-payments",
            "o.csv",
            "--db",
            "ce.db",
            "--max-attempts",
            "1",
            "--max-wait",
            "0s",
        ],
    ));
    sandbox.set_drop_rate(0.0);
    sandbox.set_faults_only("");
    assert_eq!(code(&out), 1, "{}", text(&out));
    for name in &names {
        assert_eq!(sandbox.ce_order(name)["retries"], 1, "{name}");
    }
    // Sixteen minutes later a retry would be allowed again: the payments
    // show the lost one landed, so none is sent.
    sandbox.age(16 * 60);
    let out = run(dir.ce_cmd(&sandbox, &["retry", "--db", "ce.db", "--export", "e.csv"]));
    assert_eq!(code(&out), 0, "{}", text(&out));
    for name in &names {
        assert_eq!(sandbox.ce_order(name)["retries"], 1, "{name} retried twice");
    }
    assert!(sandbox.ce_requests("payments") >= 4);
    let export = read_export(&dir.path("e.csv"));
    assert!(export.iter().all(|r| r["status"] == "done"), "{export:?}");
}

#[test]
fn a_later_run_for_the_same_customers_leaves_the_earlier_export_valid() {
    let sandbox = Sandbox::with(|c| c.strict_serial = true);
    let dir = Dir::new();
    let header = "site_customer_identifier,site_order_identifier,order_amount,order_currency,order_type,order_is_standing\n";
    let file = |from: usize, to: usize| {
        let mut csv = header.to_string();
        for i in from..to {
            csv.push_str(&format!("C-{},N-{i},{}.00,USD,exact,true\n", i % 5, 10 + i));
        }
        csv
    };
    dir.write("first.csv", file(0, 20));
    dir.write("second.csv", file(20, 40));
    let out = run(dir.cmd(
        &sandbox,
        &[
            "run",
            "first.csv",
            "--db",
            "s.db",
            "--export",
            "first-out.csv",
            "--rate",
            "unlimited",
        ],
    ));
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_export_is_the_sandbox(&sandbox, &dir.path("first-out.csv"));
    // New customers: one token call per customer, as before.
    assert_eq!(sandbox.requests("get_smart_token"), 5);
    let out = run(dir.cmd(
        &sandbox,
        &[
            "run",
            "second.csv",
            "--db",
            "s.db",
            "--export",
            "second-out.csv",
            "--rate",
            "unlimited",
            "--flow",
            "debit",
        ],
    ));
    assert_eq!(code(&out), 0, "{}", text(&out));
    // Both exports still hold what the provider holds.
    assert_export_is_the_sandbox(&sandbox, &dir.path("first-out.csv"));
    assert_export_is_the_sandbox(&sandbox, &dir.path("second-out.csv"));
    // The first run's orders kept their token options.
    for order in sandbox.orders() {
        let id = order["fields"]["site_order_identifier"].as_str().unwrap();
        let n: usize = id.trim_start_matches("N-").parse().unwrap();
        let debit = order["token_options"].get("flow_debit").is_some();
        assert_eq!(debit, n >= 20, "{id}: {}", order["token_options"]);
    }
    assert_eq!(sandbox.counter("overlaps"), 0);
}

#[test]
fn a_refresh_naming_an_order_directly_and_through_its_customer_exports_the_last_values() {
    let sandbox = Sandbox::start();
    let dir = Dir::new();
    dir.write("o.csv", orders_csv(40, 4, true));
    let out = run(dir.cmd(
        &sandbox,
        &["run", "o.csv", "--db", "run.db", "--rate", "unlimited"],
    ));
    assert_eq!(code(&out), 0, "{}", text(&out));
    // Every order twice: by its customer, and by itself.
    let mut csv = String::from("site_customer_identifier,pnm_order_identifier\n");
    for c in 0..4 {
        csv.push_str(&format!("C-{c},\n"));
    }
    for order in sandbox.orders() {
        csv.push_str(&format!(
            ",{}\n",
            order["pnm_order_identifier"].as_str().unwrap()
        ));
    }
    dir.write("r.csv", &csv);
    let out = run(dir.cmd(
        &sandbox,
        &[
            "refresh",
            "r.csv",
            "--db",
            "r.db",
            "--force",
            "--export",
            "r-out.csv",
            "--rate",
            "unlimited",
        ],
    ));
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(read_export(&dir.path("r-out.csv")).len(), 80);
    assert_export_is_the_sandbox(&sandbox, &dir.path("r-out.csv"));
}

#[test]
fn check_existing_never_adopts_an_order_held_for_another_customer_or_amount() {
    let sandbox = Sandbox::start();
    let dir = Dir::new();
    let header = "site_order_identifier,site_customer_identifier,order_amount,order_currency,order_type,order_is_standing";
    dir.write(
        "a.csv",
        format!("{header}\nX-1,alice,10.00,USD,exact,true\nX-2,alice,10.00,USD,exact,true\n"),
    );
    let out = run(dir.cmd(&sandbox, &["run", "a.csv", "--db", "a.db"]));
    assert_eq!(code(&out), 0, "{}", text(&out));
    let before = by_site_order(&sandbox);
    let tokens_before = sandbox.requests("get_smart_token");

    // Another machine, a fresh db: the same identifiers for someone else,
    // or for another amount; and one new order.
    dir.write(
        "b.csv",
        format!(
            "{header}\nX-1,mallory,10.00,USD,exact,true\nX-2,alice,999.00,USD,exact,true\nX-3,bob,5.00,USD,exact,true\n"
        ),
    );
    let out = run(dir.cmd(
        &sandbox,
        &[
            "run",
            "b.csv",
            "--db",
            "b.db",
            "--check-existing",
            "--export",
            "b-export.csv",
        ],
    ));
    assert_ne!(code(&out), 0, "{}", text(&out));
    let export = read_export(&dir.path("b-export.csv"));
    let line = |id: &str| {
        export
            .iter()
            .find(|l| l["site_order_identifier"] == id)
            .cloned()
    };
    for id in ["X-1", "X-2"] {
        if let Some(line) = line(id) {
            assert_eq!(line["pnm_order_identifier"], "", "{id} adopted: {line:?}");
            assert_eq!(line["secure_smart_token"], "", "{id} got a token: {line:?}");
        }
    }
    let (_, rows) = read_csv(&dir.path("b-export.csv"));
    assert!(!rows.is_empty());
    let after = by_site_order(&sandbox);
    assert_eq!(after.len(), 3, "X-1, X-2 and the new X-3");
    for id in ["X-1", "X-2"] {
        assert_eq!(
            after[id]["secure_smart_token"], before[id]["secure_smart_token"],
            "{id}: alice's token was reissued"
        );
        assert_eq!(after[id]["fields"], before[id]["fields"]);
    }
    assert_eq!(
        sandbox.requests("get_smart_token") - tokens_before,
        1,
        "only X-3's token"
    );
    let status = run(dir.bare_cmd(&["status", "--db", "b.db"]));
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("conflicting_order"),
        "{}",
        text(&status)
    );
}

#[test]
fn retry_after_partial_runs_exports_the_tokens_the_provider_holds_last_for_every_row() {
    // Customers whose rows finish across several invocations: a later
    // customer-wide token call must not supersede tokens an earlier one
    // recorded.
    for seed in [1, 2, 3] {
        let sandbox = Sandbox::with(|c| {
            c.seed = seed;
            c.fail_rate = 0.3;
        });
        let dir = Dir::new();
        dir.write("o.csv", orders_csv(120, 12, true));
        let args = [
            "--max-attempts",
            "1",
            "--rate",
            "unlimited",
            "--retry-base-ms",
            "1",
        ];
        let mut cmd_args = vec!["run", "o.csv", "--db", "s.db"];
        cmd_args.extend(args);
        let mut out = run(dir.cmd(&sandbox, &cmd_args));
        let mut invocations = 1;
        while code(&out) != 0 {
            assert!(
                invocations < 60,
                "seed {seed}: never finished: {}",
                text(&out)
            );
            let mut retry = vec!["retry", "--db", "s.db", "--export", "e.csv"];
            retry.extend(args);
            out = run(dir.cmd(&sandbox, &retry));
            invocations += 1;
        }
        assert!(
            invocations > 2,
            "seed {seed}: faults too rare to test anything"
        );
        sandbox.set_fail_rate(0.0);
        assert_eq!(sandbox.orders().len(), 120, "seed {seed}");
        assert_eq!(sandbox.counter("duplicates"), 0, "seed {seed}");
        let export = read_export(&dir.path("e.csv"));
        assert_eq!(export.len(), 120, "seed {seed}");
        assert_export_is_the_sandbox(&sandbox, &dir.path("e.csv"));
    }
}

#[test]
fn a_change_the_lookup_cannot_show_is_never_resent_and_ends_unknown() {
    // The provider's lookup does not return site_order_description: a lost
    // answer to a change that sets it cannot be checked.
    let sandbox = Sandbox::with(|c| {
        c.seed = 11;
        c.lookup_hides = vec!["site_order_description".into()];
    });
    let dir = Dir::new();
    dir.write("o.csv", orders_csv(40, 8, true));
    let out = run(dir.cmd(
        &sandbox,
        &["run", "o.csv", "--db", "run.db", "--rate", "unlimited"],
    ));
    assert_eq!(code(&out), 0, "{}", text(&out));
    let mut csv = String::from("site_order_identifier,site_order_description,order_amount\n");
    for i in 1..=40 {
        csv.push_str(&format!("ORD-{i},note {i},{}.00\n", 700 + i));
    }
    dir.write("c.csv", &csv);
    sandbox.set_drop_rate(0.3);
    sandbox.set_faults_only("change_order");
    let out = run(dir.cmd(
        &sandbox,
        &[
            "change",
            "c.csv",
            "--db",
            "c.db",
            "--rate",
            "unlimited",
            "--retry-base-ms",
            "1",
            "--export",
            "c-export.csv",
        ],
    ));
    sandbox.set_drop_rate(0.0);
    sandbox.set_faults_only("");
    let dropped = sandbox.state()["counters"]["faults"]["dropped"]
        .as_u64()
        .unwrap();
    assert!(dropped > 0, "no answer was lost");
    for order in sandbox.orders() {
        assert_eq!(
            order["changes"], 1,
            "{} changed {} times",
            order["pnm_order_identifier"], order["changes"]
        );
    }
    let export = read_export(&dir.path("c-export.csv"));
    let unknown: Vec<_> = export.iter().filter(|l| l["status"] == "unknown").collect();
    assert_eq!(
        unknown.len() as u64,
        dropped,
        "one unknown row per lost answer"
    );
    assert!(unknown
        .iter()
        .all(|l| l["error"].contains("site_order_description")));
    assert!(export
        .iter()
        .all(|l| l["status"] == "done" || l["status"] == "unknown"));
    assert_eq!(
        code(&out),
        1,
        "unknown rows ask an operator: {}",
        text(&out)
    );
    // A later retry does not send them again either.
    let out = run(dir.cmd(&sandbox, &["retry", "--db", "c.db"]));
    assert!(code(&out) <= 1, "{}", text(&out));
    for order in sandbox.orders() {
        assert_eq!(order["changes"], 1);
    }
}

/// `rows` orders with a phone, an e-mail and an amount per row, and a
/// `site_order_identifier` column left blank when `blank_ids`.
fn contact_orders(from: usize, to: usize, blank_ids: bool, phone: fn(usize) -> String) -> String {
    let mut csv = String::from(
        "site_customer_identifier,order_amount,order_currency,order_type,order_is_standing,\
         site_customer_phone,site_customer_email",
    );
    csv.push_str(if blank_ids {
        ",site_order_identifier\n"
    } else {
        "\n"
    });
    for i in from..to {
        csv.push_str(&format!(
            "C-{},{}.50,USD,exact,true,{},Person.{i}@Example.com",
            i % 7,
            10 + i,
            phone(i)
        ));
        csv.push_str(if blank_ids { ",\n" } else { "\n" });
    }
    csv
}

#[test]
fn a_redelivered_file_without_identifiers_is_refused_whatever_changed_around_its_orders() {
    let sandbox = Sandbox::start();
    let dir = Dir::new();
    let dashed: fn(usize) -> String = |i| format!("555-010-{i:04}");
    dir.write("first.csv", contact_orders(0, 100, false, dashed));
    let out = run(dir.cmd(
        &sandbox,
        &["run", "first.csv", "--db", "s.db", "--rate", "unlimited"],
    ));
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(sandbox.orders().len(), 100);

    // The same orders with a blank identifier column; grown by 120 rows;
    // phone punctuation, e-mail case and `10.5` for `10.50` changed.
    let grown = {
        let mut csv = contact_orders(0, 220, false, dashed);
        csv = csv.replace("\n", "\r\n");
        csv
    };
    let reformatted = contact_orders(0, 100, false, |i| format!("(555) 010 {i:04}"))
        .replace("@Example.com", "@example.COM")
        .replace(".50,USD", ".5,USD");
    for (name, copy, matching) in [
        ("blank-ids.csv", contact_orders(0, 100, true, dashed), 100),
        ("grown.csv", grown, 100),
        ("reformatted.csv", reformatted, 100),
    ] {
        dir.write(name, &copy);
        let out = run(dir.cmd(&sandbox, &["run", name, "--db", "s.db"]));
        assert_eq!(code(&out), 2, "{name}: {}", text(&out));
        assert!(
            text(&out).contains(&format!("{matching} of run 1")),
            "{name}: {}",
            text(&out)
        );
        assert_eq!(sandbox.orders().len(), 100, "{name} sent something");
    }
    let validate = run(dir.bare_cmd(&["validate", "blank-ids.csv"]));
    assert!(
        text(&validate).contains("100 valid rows have no site_order_identifier"),
        "{}",
        text(&validate)
    );
    // The grown file with --same-orders: only the 120 new rows are created.
    let out = run(dir.cmd(
        &sandbox,
        &[
            "run",
            "grown.csv",
            "--db",
            "s.db",
            "--same-orders",
            "--rate",
            "unlimited",
        ],
    ));
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(sandbox.orders().len(), 220);
    assert_eq!(sandbox.counter("duplicates"), 0);
}

#[test]
fn refresh_and_change_by_order_identifier_keep_each_customer_serial_using_what_the_store_knows() {
    let sandbox = Sandbox::with(|c| c.latency_ms = Some((3, 8)));
    let dir = Dir::new();
    // Five customers × five orders.
    dir.write("o.csv", orders_csv(25, 5, true));
    let out = run(dir.cmd(
        &sandbox,
        &["run", "o.csv", "--db", "s.db", "--rate", "unlimited"],
    ));
    assert_eq!(code(&out), 0, "{}", text(&out));
    let mut by_pnm = String::from("pnm_order_identifier\n");
    let mut change = String::from("pnm_order_identifier,order_amount\n");
    for (i, order) in sandbox.orders().iter().enumerate() {
        let pnm = order["pnm_order_identifier"].as_str().unwrap();
        by_pnm.push_str(&format!("{pnm}\n"));
        change.push_str(&format!("{pnm},{}.00\n", 300 + i));
    }
    dir.write("r.csv", &by_pnm);
    dir.write("c.csv", &change);
    let fast = ["--rate", "unlimited", "--concurrency", "16"];
    for (db, lookups) in [("s.db", 0), ("fresh.db", 25)] {
        for (command, file) in [("refresh", "r.csv"), ("change", "c.csv")] {
            let (overlaps, finds) = (sandbox.counter("overlaps"), sandbox.requests("find_orders"));
            let mut args = vec![command, file, "--db", db];
            args.extend(fast);
            if command == "refresh" {
                args.push("--new-run");
            }
            let out = run(dir.cmd(&sandbox, &args));
            assert_eq!(code(&out), 0, "{command} on {db}: {}", text(&out));
            assert_eq!(
                sandbox.counter("overlaps") - overlaps,
                0,
                "{command} on {db}: one customer's requests overlapped"
            );
            // The store knows every order `run` created; a fresh db learns
            // each order's customer once (the refresh), then knows it.
            let expected = if db == "fresh.db" && command == "change" {
                0
            } else {
                lookups
            };
            assert_eq!(
                sandbox.requests("find_orders") - finds,
                expected,
                "{command} on {db}: lookups"
            );
        }
    }
}

#[test]
fn check_existing_adopts_nothing_the_lookup_cannot_show_to_be_the_rows() {
    // The provider's lookup leaves out the customer: the order may be
    // anyone's, so it is neither adopted nor created again.
    let sandbox = Sandbox::with(|c| c.lookup_hides = vec!["site_customer_identifier".into()]);
    let dir = Dir::new();
    let header = "site_order_identifier,site_customer_identifier,order_amount,order_currency,order_type,order_is_standing";
    dir.write(
        "a.csv",
        format!("{header}\nX-1,alice,10.00,USD,exact,true\n"),
    );
    let out = run(dir.cmd(&sandbox, &["run", "a.csv", "--db", "a.db"]));
    assert_eq!(code(&out), 0, "{}", text(&out));
    let tokens = sandbox.requests("get_smart_token");
    dir.write(
        "b.csv",
        format!("{header}\nX-1,mallory,10.00,USD,exact,true\n"),
    );
    let out = run(dir.cmd(
        &sandbox,
        &["run", "b.csv", "--db", "b.db", "--check-existing"],
    ));
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert_eq!(sandbox.orders().len(), 1, "created again");
    assert_eq!(
        sandbox.requests("get_smart_token"),
        tokens,
        "alice's token reissued"
    );
    let status = run(dir.bare_cmd(&["status", "--db", "b.db"]));
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("conflicting_order"),
        "{}",
        text(&status)
    );
}

#[test]
fn a_create_or_change_still_running_after_the_timeout_is_found_not_sent_again() {
    // The provider takes 2.5 s to create (and to change); the client gives
    // up after 1 s. The order lands after the client stopped waiting: the
    // lookup must come after that, or the row is created twice.
    let sandbox = Sandbox::start();
    let dir = Dir::new();
    dir.write("o.csv", orders_csv(4, 2, true));
    sandbox.set_faults_only("create_order");
    sandbox.set_delay_ms(2500);
    let mut cmd = dir.cmd(
        &sandbox,
        &[
            "run",
            "o.csv",
            "--db",
            "s.db",
            "--timeout",
            "1",
            "--export",
            "e.csv",
        ],
    );
    // The default: an unanswered request may run at the provider for
    // twice --timeout, at least 10 s.
    cmd.env_remove("ORDERBATCH_SETTLE_MS");
    let out = run(cmd);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(sandbox.orders().len(), 4, "an order was created twice");
    assert_eq!(sandbox.counter("duplicates"), 0);
    assert_export_is_the_sandbox(&sandbox, &dir.path("e.csv"));

    sandbox.set_faults_only("change_order");
    dir.write(
        "c.csv",
        "site_order_identifier,order_amount\nORD-1,77.00\nORD-2,78.00\n",
    );
    let mut cmd = dir.cmd(
        &sandbox,
        &["change", "c.csv", "--db", "c.db", "--timeout", "1"],
    );
    cmd.env_remove("ORDERBATCH_SETTLE_MS");
    let out = run(cmd);
    sandbox.set_delay_ms(0);
    assert_eq!(code(&out), 0, "{}", text(&out));
    for id in ["ORD-1", "ORD-2"] {
        assert_eq!(sandbox.order(id)["changes"], 1, "{id} changed twice");
    }
}

#[test]
fn a_token_call_that_timed_out_and_lands_late_is_not_superseded_by_its_retry() {
    // The first get_smart_token gets no answer within --timeout, but the
    // provider still issues that token after the client gave up. A retry
    // sent at once would be issued first and then superseded by the late
    // one: the export would hold a token the provider no longer honours.
    let sandbox = Sandbox::start();
    sandbox.set_faults(r#"{"only":"get_smart_token","delay_ms":2500,"delay_next":1}"#);
    let dir = Dir::new();
    dir.write("o.csv", orders_csv(1, 1, true));
    let mut cmd = dir.cmd(
        &sandbox,
        &[
            "run",
            "o.csv",
            "--db",
            "s.db",
            "--timeout",
            "1",
            "--retry-base-ms",
            "1",
            "--export",
            "e.csv",
        ],
    );
    // The provider may still be working on an unanswered call this long.
    cmd.env("ORDERBATCH_SETTLE_MS", "3500");
    let out = run(cmd);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(
        sandbox.requests("get_smart_token"),
        2,
        "the timed-out call and one retry"
    );
    // Until the late call has certainly landed (it was sent 2.5 s before
    // its answer, at the run's start).
    std::thread::sleep(Duration::from_millis(2000));
    assert_export_is_the_sandbox(&sandbox, &dir.path("e.csv"));
}

#[test]
fn a_create_resent_by_a_resumed_run_is_waited_for_by_the_next_resume() {
    // Run 1 is killed while its create is at the provider, which then
    // fails it: nothing was created. Run 2 finds nothing and sends the
    // create again; it is killed while that one is still running there.
    // Run 3 must wait from when run 2's create left (not run 1's), or it
    // finds nothing and creates the order a second time.
    let sandbox = Sandbox::start();
    let dir = Dir::new();
    dir.write("o.csv", orders_csv(1, 1, true));
    let cmd = || {
        let mut cmd = dir.cmd(
            &sandbox,
            &["run", "o.csv", "--db", "s.db", "--export", "e.csv"],
        );
        // The provider takes up to 3 s.
        cmd.env("ORDERBATCH_SETTLE_MS", "4000");
        cmd
    };
    sandbox.set_faults(r#"{"only":"create_order","fail_rate":1.0,"delay_ms":3000}"#);
    let mut first = spawn(cmd());
    wait_until(Duration::from_secs(20), || {
        sandbox.requests("create_order") == 1
    });
    first.kill().unwrap();
    first.wait().unwrap();
    // Until the provider has failed it (the fault is read after the delay).
    std::thread::sleep(Duration::from_millis(3500));
    sandbox.set_faults(r#"{"fail_rate":0.0,"delay_ms":3000,"delay_next":1}"#);
    let mut second = spawn(cmd());
    let waited = std::time::Instant::now();
    while sandbox.requests("create_order") < 2 {
        if waited.elapsed() > Duration::from_secs(30) {
            second.kill().unwrap();
            panic!("{}", text(&second.wait_with_output().unwrap()));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(500));
    second.kill().unwrap();
    second.wait().unwrap();
    let out = run(cmd());
    assert_eq!(code(&out), 0, "{}", text(&out));
    // Until run 2's create has certainly landed.
    std::thread::sleep(Duration::from_millis(3000));
    assert_eq!(sandbox.orders().len(), 1, "the order was created twice");
    assert_eq!(sandbox.counter("duplicates"), 0);
    assert_export_is_the_sandbox(&sandbox, &dir.path("e.csv"));
}

#[test]
fn a_token_call_in_flight_when_the_run_is_killed_is_not_superseded_by_the_resumed_run() {
    // The run is killed while its get_smart_token is at the provider, which
    // issues that token 3 s after it left. The resumed run must not ask for
    // a token before then: the late one would replace the one it exports.
    let sandbox = Sandbox::start();
    let dir = Dir::new();
    dir.write("o.csv", orders_csv(1, 1, true));
    let cmd = || {
        let mut cmd = dir.cmd(
            &sandbox,
            &["run", "o.csv", "--db", "s.db", "--export", "e.csv"],
        );
        // The provider takes up to 3 s.
        cmd.env("ORDERBATCH_SETTLE_MS", "4000");
        cmd
    };
    sandbox.set_faults(r#"{"only":"get_smart_token","delay_ms":3000,"delay_next":1}"#);
    let mut first = spawn(cmd());
    wait_until(Duration::from_secs(20), || {
        sandbox.requests("get_smart_token") == 1
    });
    first.kill().unwrap();
    first.wait().unwrap();
    let out = run(cmd());
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(sandbox.requests("get_smart_token"), 2);
    // Until the first call has certainly landed.
    std::thread::sleep(Duration::from_millis(3000));
    assert_export_is_the_sandbox(&sandbox, &dir.path("e.csv"));
}
