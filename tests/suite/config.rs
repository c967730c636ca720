//! The config file: precedence, secret sources, `config show`.

use crate::util::*;

const FILE: &str = r#"
base_url = "http://127.0.0.1:1"
site_identifier = "S_FROM_FILE"
secret_env = "MY_PNM_SECRET"
rate = 3
concurrency = 2
[token]
flow = ["credit"]
link_lifetime_seconds = 600
"#;

#[test]
fn config_show_reports_values_sources_and_never_the_secret() {
    let dir = Dir::new();
    dir.write("orderbatch.toml", FILE);
    let mut cmd = dir.bare_cmd(&["config", "show", "--rate", "7", "--flow", "debit"]);
    cmd.env("MY_PNM_SECRET", SECRET)
        .env("PNM_BASE_URL", "https://api.example.test");
    let out = run(cmd);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let shown = String::from_utf8_lossy(&out.stdout);
    let line = |key: &str| {
        shown
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        line("rate ").contains("7") && line("rate ").contains("command line"),
        "{shown}"
    );
    assert!(
        line("base_url").contains("https://api.example.test")
            && line("base_url").contains("environment PNM_BASE_URL"),
        "{shown}"
    );
    assert!(
        line("site_identifier").contains("S_FROM_FILE")
            && line("site_identifier").contains("orderbatch.toml"),
        "{shown}"
    );
    assert!(
        line("concurrency").contains("2") && line("concurrency").contains("orderbatch.toml"),
        "{shown}"
    );
    assert!(
        line("timeout").contains("30") && line("timeout").contains("default"),
        "{shown}"
    );
    assert!(
        line("secret").contains("[redacted]") && line("secret").contains("MY_PNM_SECRET"),
        "{shown}"
    );
    assert!(
        shown.contains("token.flow_debit") && !shown.contains("flow_credit"),
        "flag replaces the file's flows: {shown}"
    );
    assert!(
        shown.contains("token.link_lifetime_seconds") && shown.contains("600"),
        "{shown}"
    );
    assert!(!shown.contains(SECRET) && !String::from_utf8_lossy(&out.stderr).contains(SECRET));
}

#[test]
fn a_run_takes_credentials_rate_and_token_options_from_the_file() {
    let sandbox = Sandbox::start();
    let dir = Dir::new();
    dir.write(
        "my.toml",
        format!(
            "base_url = \"{}\"\nsite_identifier = \"{SITE}\"\nsecret_env = \"MY_PNM_SECRET\"\nrate = \"unlimited\"\n[token]\nflow = [\"ach\"]\n",
            sandbox.base_url()
        ),
    );
    dir.write("o.csv", orders_csv(4, 2, true));
    let mut cmd = dir.bare_cmd(&["run", "o.csv", "--db", "s.db", "--config", "my.toml"]);
    cmd.env("MY_PNM_SECRET", SECRET);
    let out = run(cmd);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let orders = sandbox.orders();
    assert_eq!(orders.len(), 4);
    assert!(orders
        .iter()
        .all(|o| o["token_options"]["flow_ach"] == "true"));
}

#[test]
fn a_secret_in_the_config_file_is_refused() {
    let dir = Dir::new();
    dir.write(
        "bad.toml",
        "site_identifier = \"S\"\nsecret = \"hunter2\"\n",
    );
    let out = run(dir.bare_cmd(&["config", "show", "--config", "bad.toml"]));
    assert_eq!(code(&out), 2, "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("must not be in the config file") && !stderr.contains("hunter2"),
        "{stderr}"
    );
    dir.write("typo.toml", "sight_identifier = \"S\"\n");
    let out = run(dir.bare_cmd(&["config", "show", "--config", "typo.toml"]));
    assert_eq!(code(&out), 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("sight_identifier"));
}

#[test]
fn the_documented_sample_config_parses() {
    let dir = Dir::new();
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/samples/orderbatch.toml");
    let out = run(dir.bare_cmd(&["config", "show", "--config", sample]));
    assert_eq!(code(&out), 0, "{}", text(&out));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("token.flow_debit"), "{shown}");
    assert!(shown.contains("store_123"), "{shown}");
}
