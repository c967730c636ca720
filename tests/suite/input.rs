//! Input checks at the edge: bad headers refuse the file, bad rows are
//! rejected while the good ones run.

use crate::util::*;

const HEADER: &str = "site_customer_identifier,site_order_identifier,order_amount,order_currency,order_type,order_is_standing";

#[test]
fn bad_rows_are_rejected_with_their_line_and_good_rows_run() {
    let sandbox = Sandbox::start();
    let dir = Dir::new();
    let csv = format!(
        "{HEADER},site_order_description\n\
         C1,A1,10.00,USD,exact,true,ok\n\
         C1,A2,12.345,USD,exact,true,\"two\nlines\"\n\
         C2,A3,5,USD,EXACT,true,bad type\n\
         C2,A1,5,USD,exact,true,duplicate id\n\
         C3,A5,7.5,USD,any,false,ok\n"
    );
    dir.write("o.csv", csv);
    let out = run(dir.cmd(
        &sandbox,
        &["run", "o.csv", "--db", "s.db", "--export", "e.csv"],
    ));
    assert_eq!(code(&out), 1, "{}", text(&out));
    let sent: Vec<String> = sandbox
        .orders()
        .iter()
        .map(|o| {
            o["fields"]["site_order_identifier"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(sent.contains(&"A1".to_string()) && sent.contains(&"A5".to_string()));

    let export = read_export(&dir.path("e.csv"));
    let status: Vec<&str> = export.iter().map(|r| r["status"].as_str()).collect();
    assert_eq!(status, ["done", "rejected", "rejected", "rejected", "done"]);
    assert!(
        export[1]["error"].contains("line 3") && export[1]["error"].contains("order_amount"),
        "{:?}",
        export[1]
    );
    // The row after a two-line quoted field starts on line 5.
    assert!(
        export[2]["error"].contains("line 5")
            && export[2]["error"].contains("did you mean `exact`?"),
        "{:?}",
        export[2]
    );
    assert!(
        export[3]["error"].contains("already used by row 1"),
        "{:?}",
        export[3]
    );
}

#[test]
fn unknown_column_is_refused_with_a_suggestion_before_any_request() {
    let sandbox = Sandbox::start();
    let dir = Dir::new();
    dir.write(
        "o.csv",
        format!("{HEADER},site_custmer_email\nC1,A1,10,USD,exact,true,a@example.com\n"),
    );
    let out = run(dir.cmd(&sandbox, &["run", "o.csv", "--db", "s.db"]));
    assert_eq!(code(&out), 2, "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("o.csv:1:7"), "{stderr}");
    assert!(
        stderr.contains("did you mean `site_customer_email`?"),
        "{stderr}"
    );
    assert_eq!(sandbox.total_requests(), 0);
    assert!(
        !dir.path("s.db").exists(),
        "the state db must not be created for a refused file"
    );
}

#[test]
fn missing_required_column_and_empty_file_are_refused() {
    let sandbox = Sandbox::start();
    let dir = Dir::new();
    dir.write("o.csv", "site_customer_identifier,order_amount\nC1,5\n");
    let out = run(dir.cmd(&sandbox, &["run", "o.csv", "--db", "s.db"]));
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("required column `order_currency` is missing"));

    dir.write("empty.csv", "");
    let out = run(dir.cmd(&sandbox, &["run", "empty.csv", "--db", "s.db"]));
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty"));
    assert_eq!(sandbox.total_requests(), 0);
}

#[test]
fn header_only_file_is_nothing_to_do() {
    let sandbox = Sandbox::start();
    let dir = Dir::new();
    dir.write("o.csv", format!("{HEADER}\n"));
    let out = run(dir.cmd(&sandbox, &["run", "o.csv", "--db", "s.db"]));
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to do"));
}

#[test]
fn bom_and_crlf_are_accepted() {
    let sandbox = Sandbox::start();
    let dir = Dir::new();
    dir.write(
        "o.csv",
        format!("\u{feff}{HEADER}\r\nC1,A1,10,USD,exact,true\r\nC2,A2,11,USD,any,false\r\n"),
    );
    let out = run(dir.cmd(&sandbox, &["run", "o.csv", "--db", "s.db"]));
    assert_eq!(code(&out), 0, "{}", text(&out));
    let mut orders = sandbox.orders();
    assert_eq!(orders.len(), 2);
    orders.sort_by_key(|o| {
        o["fields"]["site_order_identifier"]
            .as_str()
            .unwrap()
            .to_string()
    });
    assert_eq!(orders[0]["fields"]["site_customer_identifier"], "C1");
    assert_eq!(orders[1]["fields"]["order_is_standing"], "false");
}

#[test]
fn validate_counts_and_exits_1_on_rejects_without_network() {
    let dir = Dir::new();
    dir.write(
        "o.csv",
        format!("{HEADER}\nC1,A1,10,USD,exact,true\nC1,A2,-5,USD,exact,true\n"),
    );
    let out = run(dir.bare_cmd(&["validate", "o.csv"]));
    assert_eq!(code(&out), 1, "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("1 valid rows, 1 rejected"), "{stdout}");
    assert!(stdout.contains("o.csv:3: row 2: order_amount"), "{stdout}");
}

#[test]
fn duplicate_header_names_are_refused() {
    let dir = Dir::new();
    dir.write(
        "o.csv",
        format!("{HEADER},order_amount\nC1,A1,10,USD,exact,true,11\n"),
    );
    let out = run(dir.bare_cmd(&["validate", "o.csv"]));
    assert_eq!(code(&out), 2, "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("o.csv:1:7")
            && stderr.contains("`order_amount` appears twice (columns 3 and 7)"),
        "{stderr}"
    );
}

#[test]
fn a_quote_left_open_is_refused_with_its_line_and_column() {
    let sandbox = Sandbox::start();
    let dir = Dir::new();
    dir.write(
        "o.csv",
        format!("{HEADER},site_order_description\nC1,A1,10,USD,exact,true,fine\nC1,A2,10,USD,exact,true,\"never closed\nC1,A3,10,USD,exact,true,x\n"),
    );
    let out = run(dir.cmd(&sandbox, &["run", "o.csv", "--db", "s.db"]));
    assert_eq!(code(&out), 2, "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("o.csv:3:25") && stderr.contains("never closed"),
        "{stderr}"
    );
    assert_eq!(sandbox.total_requests(), 0);
    let validate = run(dir.bare_cmd(&["validate", "o.csv"]));
    assert_eq!(code(&validate), 2, "{}", text(&validate));
}

#[test]
fn allow_unknown_columns_ignores_them_and_sends_the_rest() {
    let sandbox = Sandbox::start();
    let dir = Dir::new();
    dir.write(
        "o.csv",
        format!("{HEADER},internal_note\nC1,A1,10,USD,exact,true,do not send\n"),
    );
    let out = run(dir.cmd(
        &sandbox,
        &["run", "o.csv", "--db", "s.db", "--allow-unknown-columns"],
    ));
    assert_eq!(code(&out), 0, "{}", text(&out));
    let orders = sandbox.orders();
    assert_eq!(orders.len(), 1);
    assert!(
        orders[0]["fields"].get("internal_note").is_none(),
        "{}",
        orders[0]
    );
    assert_eq!(orders[0]["fields"]["site_order_identifier"], "A1");
}

#[test]
fn pass_through_columns_are_sent_verbatim() {
    let sandbox = Sandbox::start();
    let dir = Dir::new();
    dir.write(
        "o.csv",
        format!("{HEADER},loan_branch\nC1,A1,10,USD,exact,true,Nº 7\n"),
    );
    let out = run(dir.cmd(
        &sandbox,
        &[
            "run",
            "o.csv",
            "--db",
            "s.db",
            "--pass-through",
            "loan_branch",
        ],
    ));
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(sandbox.orders()[0]["fields"]["loan_branch"], "Nº 7");
}

#[test]
fn rejects_file_has_original_columns_line_and_error_with_pii_redacted() {
    let sandbox = Sandbox::start();
    let dir = Dir::new();
    let csv = format!(
        "{HEADER},site_customer_name,site_order_description\n\
         C1,A1,10,USD,exact,true,Ana Núñez,\"first\nsecond\nthird\"\n\
         C2,A2,1e3,USD,exact,true,Bo Li,=HYPERLINK(\"x\")\n\
         C3,A3,5,USD,any,maybe,Cy Young,plain\n"
    );
    dir.write("o.csv", &csv);
    let out = run(dir.cmd(
        &sandbox,
        &["run", "o.csv", "--db", "s.db", "--rejects", "rej.csv"],
    ));
    assert_eq!(code(&out), 1, "{}", text(&out));
    let (header, rows) = read_csv(&dir.path("rej.csv"));
    assert_eq!(header.last().unwrap(), "error");
    assert_eq!(header[header.len() - 2], "line");
    assert_eq!(rows.len(), 2);
    // Row 2 starts on line 5: the quoted field of row 1 spans lines 2 to 4.
    assert_eq!(rows[0][0], "C2");
    assert_eq!(rows[0][2], "1e3");
    assert_eq!(rows[0][6], "[redacted]");
    // The input's own cells come back byte for byte by default.
    assert_eq!(rows[0][7], "=HYPERLINK(\"x\")", "verbatim");
    assert_eq!(rows[0][8], "5");
    assert!(rows[0][9].contains("order_amount"), "{:?}", rows[0]);
    assert_eq!(rows[1][8], "6");
    assert!(rows[1][9].contains("order_is_standing"), "{:?}", rows[1]);
    assert_eq!(sandbox.orders().len(), 1);
    let safe = run(dir.bare_cmd(&[
        "validate",
        "o.csv",
        "--rejects",
        "safe.csv",
        "--spreadsheet-safe",
    ]));
    assert_eq!(code(&safe), 1, "{}", text(&safe));
    let (_, rows) = read_csv(&dir.path("safe.csv"));
    assert_eq!(
        rows[0][7], "'=HYPERLINK(\"x\")",
        "formula neutralised on request"
    );

    let with_pii = run(dir.bare_cmd(&[
        "validate",
        "o.csv",
        "--rejects",
        "rej2.csv",
        "--rejects-include-pii",
    ]));
    assert_eq!(code(&with_pii), 1, "{}", text(&with_pii));
    let (_, rows) = read_csv(&dir.path("rej2.csv"));
    assert_eq!(rows[0][6], "Bo Li");
    assert_eq!(rows[1][8], "6");
}

#[test]
fn validate_groups_problems_by_reason() {
    let dir = Dir::new();
    let mut csv = format!("{HEADER}\n");
    for i in 0..30 {
        csv.push_str(&format!("C{i},A{i},{i}.999,USD,exact,true\n"));
    }
    csv.push_str("C1,A1,5,USD,exact,true\n");
    csv.push_str("C1,B1,5,USD,Exact,true\n");
    dir.write("o.csv", csv);
    let out = run(dir.bare_cmd(&["validate", "o.csv"]));
    assert_eq!(code(&out), 1, "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("invalid_order_amount: 30 rows"), "{stdout}");
    assert!(
        stdout.contains("invalid_site_order_identifier: 1 rows"),
        "{stdout}"
    );
    assert!(stdout.contains("invalid_order_type: 1 rows"), "{stdout}");
    assert!(stdout.contains("first 20 problems shown"), "{stdout}");
    assert!(
        stdout.contains("0 valid rows, 32 rejected") || stdout.contains("valid rows, 32 rejected"),
        "{stdout}"
    );
}
