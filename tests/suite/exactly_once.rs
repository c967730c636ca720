//! Exactly once and byte for byte, in every command and across runs.

use std::collections::HashMap;

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
/// for byte.
fn assert_export_is_the_sandbox(sandbox: &Sandbox, path: &std::path::Path) {
    let orders = by_site_order(sandbox);
    let export = read_export(path);
    assert!(!export.is_empty());
    for line in &export {
        let order = &orders[&line["site_order_identifier"]];
        for field in [
            "pnm_order_identifier",
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
