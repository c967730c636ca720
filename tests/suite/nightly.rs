//! The nightly job and backfills: `refresh` for existing orders, bulk
//! `change`, smart-token options.

use std::collections::HashMap;

use crate::util::*;

/// Creates orders with `run` from `csv` (header as in `orders_csv`).
fn create(sandbox: &Sandbox, dir: &Dir, name: &str, csv: &str) {
    dir.write(name, csv);
    let db = format!("{name}.db");
    let out = run(dir.cmd(sandbox, &["run", name, "--db", &db, "--rate", "unlimited"]));
    assert_eq!(code(&out), 0, "{}", text(&out));
}

fn generations(sandbox: &Sandbox) -> HashMap<String, u64> {
    sandbox
        .orders()
        .iter()
        .map(|o| {
            (
                o["fields"]["site_order_identifier"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                o["url_generations"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Old orders (URLs expired) for customers A (7 orders) and B (1), fresh
/// ones for C (2).
fn nightly_setup(sandbox: &Sandbox, dir: &Dir) {
    let header = "site_customer_identifier,site_order_identifier,order_amount,order_currency,order_type,order_is_standing\n";
    let mut old = header.to_string();
    for i in 1..=7 {
        old.push_str(&format!("A,A{i},1{i}.00,USD,exact,true\n"));
    }
    old.push_str("B,B1,5,USD,any,false\n");
    create(sandbox, dir, "old.csv", &old);
    sandbox.age(31 * 60);
    create(
        sandbox,
        dir,
        "fresh.csv",
        &format!("{header}C,C1,5,USD,any,false\nC,C2,6,USD,any,false\n"),
    );
    assert!(generations(sandbox).values().all(|&g| g == 1));
}

#[test]
fn refresh_regenerates_only_expired_urls_and_expands_customer_rows() {
    let sandbox = Sandbox::with(|c| c.strict_serial = true);
    let dir = Dir::new();
    nightly_setup(&sandbox, &dir);
    let pnm_b1 = sandbox.order("B1")["pnm_order_identifier"]
        .as_str()
        .unwrap()
        .to_string();
    // Mixed identifiers: a customer (7 orders: two pages), a pnm order id,
    // a site order id with its customer, and a customer with fresh URLs.
    dir.write(
        "nightly.csv",
        format!(
            "site_customer_identifier,pnm_order_identifier,site_order_identifier\nA,,\n,{pnm_b1},\n,,C1\nC,,\n"
        ),
    );
    let before = sandbox.requests("refresh_embedded_js_urls");
    let out = run(dir.cmd(
        &sandbox,
        &[
            "refresh",
            "nightly.csv",
            "--db",
            "n.db",
            "--export",
            "links.csv",
            "--flow",
            "debit,ach",
            "--rate",
            "unlimited",
        ],
    ));
    assert_eq!(code(&out), 0, "{}", text(&out));

    let gens = generations(&sandbox);
    for i in 1..=7 {
        assert_eq!(gens[&format!("A{i}")], 2, "expired A{i} regenerated once");
    }
    assert_eq!(gens["B1"], 2);
    assert_eq!(gens["C1"], 1, "fresh URL kept");
    assert_eq!(gens["C2"], 1, "fresh URL kept");
    assert_eq!(sandbox.counter("overlaps"), 0);
    // A: pages at offsets 0 and 5; B1: one; C1: one; C: one page.
    assert_eq!(sandbox.requests("refresh_embedded_js_urls") - before, 5);

    let export = read_export(&dir.path("links.csv"));
    // Row 1 expands into A's seven orders; row 4 into C's two (C1 twice: by row 3 and row 4).
    assert_eq!(export.len(), 7 + 1 + 1 + 2);
    let rows_of = |n: &str| export.iter().filter(|r| r["row_number"] == n).count();
    assert_eq!(
        (rows_of("1"), rows_of("2"), rows_of("3"), rows_of("4")),
        (7, 1, 1, 2)
    );
    let orders = sandbox.orders();
    for line in &export {
        assert_eq!(line["status"], "done", "{line:?}");
        let order = orders
            .iter()
            .find(|o| o["pnm_order_identifier"] == line["pnm_order_identifier"].as_str())
            .unwrap();
        assert_eq!(
            order["embedded_js_url"].as_str(),
            Some(line["embedded_js_url"].as_str())
        );
        assert_eq!(
            order["secure_smart_token"].as_str(),
            Some(line["secure_smart_token"].as_str())
        );
        assert_eq!(order["token_options"]["flow_debit"], "true");
        assert_eq!(order["token_options"]["flow_ach"], "true");
    }
}

#[test]
fn refresh_force_regenerates_every_url() {
    let sandbox = Sandbox::start();
    let dir = Dir::new();
    nightly_setup(&sandbox, &dir);
    dir.write("all.csv", "site_customer_identifier\nA\nB\nC\n");
    let tokens_before = sandbox.requests("get_smart_token");
    let out = run(dir.cmd(
        &sandbox,
        &[
            "refresh",
            "all.csv",
            "--db",
            "n.db",
            "--force",
            "--no-token",
            "--export",
            "e.csv",
        ],
    ));
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(generations(&sandbox).values().all(|&g| g == 2));
    let export = read_export(&dir.path("e.csv"));
    assert_eq!(export.len(), 10);
    assert!(export
        .iter()
        .all(|r| r["status"] == "done" && r["secure_smart_token"].is_empty()));
    assert_eq!(
        sandbox.requests("get_smart_token"),
        tokens_before,
        "--no-token"
    );
}

#[test]
fn refresh_rejects_rows_naming_no_order_and_unknown_flows() {
    let sandbox = Sandbox::start();
    let dir = Dir::new();
    dir.write(
        "r.csv",
        "site_customer_identifier,site_order_identifier\n,\nNOBODY,\n",
    );
    let out = run(dir.cmd(
        &sandbox,
        &["refresh", "r.csv", "--db", "n.db", "--export", "e.csv"],
    ));
    assert_eq!(code(&out), 1, "{}", text(&out));
    let export = read_export(&dir.path("e.csv"));
    assert_eq!(export[0]["status"], "rejected");
    assert!(
        export[0]["error"].contains("names no order"),
        "{:?}",
        export[0]
    );
    assert_eq!(export[1]["status"], "failed");
    assert!(export[1]["error"].contains("no orders"), "{:?}", export[1]);

    let bad = run(dir.cmd(
        &sandbox,
        &["refresh", "r.csv", "--db", "x.db", "--flow", "debt"],
    ));
    assert_eq!(code(&bad), 2, "{}", text(&bad));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("did you mean `debit`?"));

    // Paging is the tool's business, not a column's.
    dir.write("p.csv", "site_customer_identifier,limit\nA,50\n");
    let paged = run(dir.cmd(&sandbox, &["refresh", "p.csv", "--db", "y.db"]));
    assert_eq!(code(&paged), 2, "{}", text(&paged));
    assert!(String::from_utf8_lossy(&paged.stderr).contains("unknown column `limit`"));
}

#[test]
fn change_applies_every_row_once_by_either_identifier() {
    let sandbox = Sandbox::with(|c| c.latency_ms = Some((15, 30)));
    let dir = Dir::new();
    let header = "site_customer_identifier,site_order_identifier,order_amount,order_currency,order_type,order_is_standing\n";
    let mut csv = header.to_string();
    for i in 1..=20 {
        csv.push_str(&format!("K{},S{i},10.00,USD,exact,true\n", i % 5));
    }
    create(&sandbox, &dir, "orders.csv", &csv);
    let pnm_s1 = sandbox.order("S1")["pnm_order_identifier"]
        .as_str()
        .unwrap()
        .to_string();
    let mut changes = String::from(
        "pnm_order_identifier,site_order_identifier,order_amount,site_order_description\n",
    );
    changes.push_str(&format!("{pnm_s1},,11.00,first\n"));
    for i in 2..=20 {
        changes.push_str(&format!(",S{i},{i}.50,backfill {i}\n"));
    }
    changes.push_str(",NOPE,1.00,missing\n");
    dir.write("changes.csv", changes);
    let args = [
        "change",
        "changes.csv",
        "--db",
        "c.db",
        "--export",
        "c.csv",
        "--rate",
        "unlimited",
        "--concurrency",
        "4",
    ];

    // Kill it part way, then finish with the same command.
    let child = spawn(dir.cmd(&sandbox, &args));
    wait_until(std::time::Duration::from_secs(30), || {
        sandbox.requests("change_order") >= 6
    });
    signal(&child, 9);
    child.wait_with_output().unwrap();
    let out = run(dir.cmd(&sandbox, &args));
    assert_eq!(code(&out), 1, "{}", text(&out));

    for i in 1..=20 {
        let order = sandbox.order(&format!("S{i}"));
        assert_eq!(order["changes"], 1, "S{i} changed exactly once: {order}");
        let amount = if i == 1 {
            "11.00".to_string()
        } else {
            format!("{i}.50")
        };
        assert_eq!(order["fields"]["order_amount"], amount.as_str());
    }
    let export = read_export(&dir.path("c.csv"));
    assert_eq!(export.len(), 21);
    assert!(
        export[..20].iter().all(|r| r["status"] == "done"),
        "{export:?}"
    );
    assert_eq!(export[20]["status"], "failed");
    assert!(
        export[20]["error"].contains("order_not_found"),
        "{:?}",
        export[20]
    );

    let again = run(dir.cmd(&sandbox, &args));
    assert_eq!(code(&again), 1);
    assert!((1..=20).all(|i| sandbox.order(&format!("S{i}"))["changes"] == 1));
}

#[test]
fn refresh_without_urls_only_looks_orders_up_and_issues_tokens() {
    let sandbox = Sandbox::start();
    let dir = Dir::new();
    nightly_setup(&sandbox, &dir);
    dir.write(
        "n.csv",
        "site_customer_identifier,site_order_identifier\nA,\n,C2\n",
    );
    let before = sandbox.requests("refresh_embedded_js_urls");
    let out = run(dir.cmd(
        &sandbox,
        &[
            "refresh",
            "n.csv",
            "--db",
            "n.db",
            "--no-urls",
            "--export",
            "e.csv",
        ],
    ));
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(
        sandbox.requests("refresh_embedded_js_urls"),
        before,
        "--no-urls"
    );
    assert!(generations(&sandbox).values().all(|&g| g == 1));
    let export = read_export(&dir.path("e.csv"));
    assert_eq!(export.len(), 8);
    assert!(export
        .iter()
        .all(|r| r["status"] == "done" && r["secure_smart_token"].starts_with("sst_")));
}

#[test]
fn per_row_token_columns_reach_their_orders_and_pii_is_never_kept() {
    let sandbox = Sandbox::start();
    let dir = Dir::new();
    // A run whose rows carry their own payment amounts.
    dir.write(
        "o.csv",
        "site_customer_identifier,site_order_identifier,order_amount,order_currency,order_type,order_is_standing,payment_amount,payment_field_fixed\n\
         P,P1,10.00,USD,exact,true,4.00,true\n\
         P,P2,20.00,USD,exact,true,,\n",
    );
    let out = run(dir.cmd(
        &sandbox,
        &["run", "o.csv", "--db", "r.db", "--flow", "debit"],
    ));
    assert_eq!(code(&out), 0, "{}", text(&out));
    let p1 = sandbox.order("P1");
    assert_eq!(p1["token_options"]["payment_amount"], "4.00");
    assert_eq!(p1["token_options"]["payment_field_fixed"], "true");
    assert_eq!(p1["token_options"]["flow_debit"], "true");
    assert!(
        p1["fields"].get("payment_amount").is_none(),
        "not sent to create_order"
    );
    assert!(sandbox.order("P2")["token_options"]
        .get("payment_amount")
        .is_none());

    // Guaranteed ACH on a refresh customer row: every order of the customer.
    let secret_dob = "1971-02-03";
    let secret_tax = "987-65-4321";
    dir.write(
        "ach.csv",
        format!(
            "site_customer_identifier,flow_trustly,ext_customer_enrollment_date,ext_customer_date_of_birth_pii,ext_customer_tax_id_pii,flow_bank_oauth_redirect_url\n\
             P,true,2020-01-01,{secret_dob},{secret_tax},https://bank.example/back\n"
        ),
    );
    let mut cmd = dir.cmd(
        &sandbox,
        &["refresh", "ach.csv", "--db", "a.db", "--export", "a.csv"],
    );
    cmd.env("RUST_LOG", "trace");
    let out = run(cmd);
    assert_eq!(code(&out), 0, "{}", text(&out));
    for id in ["P1", "P2"] {
        let o = sandbox.order(id);
        assert_eq!(o["token_options"]["flow_trustly"], "true", "{o}");
        assert_eq!(
            o["token_options"]["ext_customer_date_of_birth_pii"],
            "[received]"
        );
        assert_eq!(o["token_options"]["ext_customer_tax_id_pii"], "[received]");
    }
    let outputs = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for pii in [secret_dob, secret_tax] {
        assert!(!outputs.contains(pii), "{pii} logged");
        for f in ["a.db", "a.csv", "a.db.report.md", "a.db.report.json"] {
            let bytes = std::fs::read(dir.path(f)).unwrap_or_default();
            assert!(
                !bytes.windows(pii.len()).any(|w| w == pii.as_bytes()),
                "{pii} in {f}"
            );
        }
    }
    assert_eq!(read_export(&dir.path("a.csv")).len(), 2);
}

#[test]
fn a_nightly_refresh_of_the_same_file_runs_again_with_new_run() {
    let sandbox = Sandbox::start();
    let dir = Dir::new();
    nightly_setup(&sandbox, &dir);
    dir.write("n.csv", "site_customer_identifier\nC\n");
    let args = ["refresh", "n.csv", "--db", "n.db", "--force", "--no-token"];
    assert_eq!(code(&run(dir.cmd(&sandbox, &args))), 0);
    assert_eq!(generations(&sandbox)["C1"], 2);

    // The same file on the same db: the finished run is resumed, nothing is sent...
    let same = run(dir.cmd(&sandbox, &args));
    assert_eq!(code(&same), 0, "{}", text(&same));
    assert_eq!(generations(&sandbox)["C1"], 2);

    // ...unless a new run is asked for.
    let mut again = args.to_vec();
    again.push("--new-run");
    let out = run(dir.cmd(&sandbox, &again));
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(generations(&sandbox)["C1"], 3, "{}", text(&out));
    let runs = run(dir.bare_cmd(&["status", "--db", "n.db", "--json"]));
    let status: serde_json::Value = serde_json::from_slice(&runs.stdout).unwrap();
    assert_eq!(status["runs"].as_array().unwrap().len(), 2);
}
