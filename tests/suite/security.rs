//! Secrets and PII stay out of everything the tool writes.

use crate::util::*;

#[test]
fn secret_never_appears_in_logs_db_or_export_even_at_trace() {
    let sandbox = Sandbox::start();
    let dir = Dir::new();
    dir.write("o.csv", orders_csv(10, 3, true));
    let mut cmd = dir.cmd(
        &sandbox,
        &["run", "o.csv", "--db", "s.db", "--export", "e.csv"],
    );
    cmd.env("RUST_LOG", "trace");
    let out = run(cmd);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(!out.stderr.is_empty(), "trace logging produced nothing");
    let needle = SECRET.as_bytes();
    let contains = |hay: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    assert!(
        !contains(&out.stdout) && !contains(&out.stderr),
        "secret in output"
    );
    for path in files_under(dir.tmp.path()) {
        let bytes = std::fs::read(&path).unwrap();
        assert!(!contains(&bytes), "secret in {}", path.display());
    }
}

#[test]
fn customer_pii_is_not_stored_in_the_state_database() {
    let sandbox = Sandbox::start();
    let dir = Dir::new();
    dir.write(
        "o.csv",
        "site_customer_identifier,order_amount,order_currency,order_type,order_is_standing,site_customer_name,site_customer_email,site_customer_phone,site_customer_street\n\
         C1,10,USD,exact,true,Zyxwv Qutsr,zyxwv.qutsr@example.com,+1 (555) 867-5309,742 Evergreen Terrace\n",
    );
    // Kill nothing: but keep the WAL by reading the files right after the run.
    let out = run(dir.cmd(&sandbox, &["run", "o.csv", "--db", "s.db"]));
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(
        sandbox.orders()[0]["fields"]["site_customer_name"],
        "Zyxwv Qutsr"
    );
    for name in ["s.db", "s.db-wal", "s.db-shm"] {
        let Ok(bytes) = std::fs::read(dir.path(name)) else {
            continue;
        };
        for pii in ["Zyxwv", "zyxwv.qutsr@example.com", "867-5309", "Evergreen"] {
            let found = bytes.windows(pii.len()).any(|w| w == pii.as_bytes());
            assert!(!found, "{pii} stored in {name}");
        }
    }
}

#[cfg(unix)]
#[test]
fn state_db_and_export_are_private_files() {
    use std::os::unix::fs::PermissionsExt;
    let sandbox = Sandbox::start();
    let dir = Dir::new();
    dir.write("o.csv", orders_csv(3, 1, true));
    let out = run(dir.cmd(
        &sandbox,
        &["run", "o.csv", "--db", "s.db", "--export", "e.csv"],
    ));
    assert_eq!(code(&out), 0, "{}", text(&out));
    for name in [
        "s.db",
        "e.csv",
        "s.db.report.md",
        "s.db.report.json",
        "s.db.lock",
    ] {
        let mode = std::fs::metadata(dir.path(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{name}");
    }

    // An existing export readable by others is replaced by a private one.
    dir.write("wide.csv", "old");
    std::fs::set_permissions(dir.path("wide.csv"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(dir.bare_cmd(&["export", "--db", "s.db", "--out", "wide.csv"]));
    assert_eq!(code(&out), 0, "{}", text(&out));
    let mode = std::fs::metadata(dir.path("wide.csv"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(read_export(&dir.path("wide.csv")).len(), 3);
}

#[cfg(unix)]
#[test]
fn the_wal_of_a_running_state_db_is_private_too() {
    use std::os::unix::fs::PermissionsExt;
    let sandbox = Sandbox::with(|c| c.latency_ms = Some((20, 40)));
    let dir = Dir::new();
    dir.write("o.csv", orders_csv(40, 10, true));
    let child = spawn(dir.cmd(
        &sandbox,
        &[
            "run",
            "o.csv",
            "--db",
            "s.db",
            "--concurrency",
            "2",
            "--rate",
            "unlimited",
        ],
    ));
    wait_until(std::time::Duration::from_secs(30), || {
        sandbox.orders().len() >= 5 && dir.path("s.db-wal").exists()
    });
    for name in ["s.db-wal", "s.db-shm"] {
        let mode = std::fs::metadata(dir.path(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{name}");
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn plain_http_to_a_remote_host_is_refused() {
    let dir = Dir::new();
    dir.write("o.csv", orders_csv(1, 1, true));
    let mut cmd = dir.bare_cmd(&[
        "run",
        "o.csv",
        "--db",
        "s.db",
        "--base-url",
        "http://api.paynearme.com",
    ]);
    cmd.env("PNM_SITE_IDENTIFIER", SITE)
        .env("PNM_SECRET_KEY", SECRET);
    let out = run(cmd);
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("https is required"));
}

#[test]
fn sandbox_refuses_a_non_loopback_address_without_allow_remote() {
    let dir = Dir::new();
    let out = run(dir.bare_cmd(&["sandbox", "--listen", "0.0.0.0:0"]));
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--allow-remote"));
}

#[test]
fn a_rejected_rows_personal_data_is_not_stored_even_in_its_reason() {
    let sandbox = Sandbox::start();
    let dir = Dir::new();
    dir.write(
        "o.csv",
        "site_customer_identifier,order_amount,order_currency,order_type,order_is_standing,site_customer_email,site_customer_phone\n\
         C1,10,USD,exact,true,qwertz.secret@@example,555-0100\n",
    );
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
    for name in [
        "s.db",
        "s.db-wal",
        "e.csv",
        "r.csv",
        "s.db.report.md",
        "s.db.report.json",
    ] {
        let Ok(bytes) = std::fs::read(dir.path(name)) else {
            continue;
        };
        let found = bytes.windows(13).any(|w| w == b"qwertz.secret");
        assert!(!found, "personal data in {name}");
    }
    let export = read_export(&dir.path("e.csv"));
    assert!(
        export[0]["error"].contains("site_customer_email"),
        "{:?}",
        export[0]
    );
}

/// Every encoding a secret can take in an answer that echoes it.
fn encodings(secret: &str) -> Vec<String> {
    let percent = |lower: bool| -> String {
        secret
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                _ if lower => format!("%{b:02x}"),
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    let ascii_json: String = secret
        .encode_utf16()
        .map(|u| match u {
            0x22 => "\\\"".to_string(),
            0x2f => "\\/".to_string(),
            0x20..=0x7e => char::from(u as u8).to_string(),
            _ => format!("\\u{u:04x}"),
        })
        .collect();
    vec![
        secret.to_string(),
        form_urlencoded::byte_serialize(secret.as_bytes()).collect(),
        percent(false),
        percent(true),
        serde_json::to_string(secret)
            .unwrap()
            .trim_matches('"')
            .to_string(),
        ascii_json,
    ]
}

#[test]
fn a_client_secret_echoed_by_the_token_endpoint_in_any_encoding_is_kept_out_of_everything() {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    const ECHOED: &str = "s3:cr et/\"100%\" ü秘";
    let sandbox = Sandbox::start();
    // Transient failures (retried) that echo the secret in each encoding,
    // then a refusal that echoes it decoded (the run stops).
    let echo = crate::util::hostile::Echo::start(|n, sent, decoded| {
        let forms = encodings(decoded);
        match n {
            1 => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("got client_secret={sent}"),
            )
                .into_response(),
            2..=6 => (
                StatusCode::BAD_GATEWAY,
                format!("<p>{}</p>", forms[n as usize - 1]),
            )
                .into_response(),
            _ => (
                StatusCode::BAD_REQUEST,
                [("content-type", "application/json")],
                serde_json::json!({
                    "error": "invalid_client",
                    "error_description": format!("bad secret {decoded} ({})", forms[5]),
                })
                .to_string(),
            )
                .into_response(),
        }
    });
    for format in ["text", "json"] {
        let dir = Dir::new();
        dir.write("o.csv", orders_csv(3, 1, true));
        dir.write("orderbatch.toml", "token_client_auth = \"post\"\n");
        let mut cmd = dir.oauth_cmd(
            &sandbox,
            &[
                "-vv",
                "--log-format",
                format,
                "run",
                "o.csv",
                "--db",
                "s.db",
                "--export",
                "e.csv",
                "--retry-base-ms",
                "1",
                "--max-attempts",
                "20",
            ],
        );
        cmd.env("PNM_CLIENT_SECRET", ECHOED)
            .env("PNM_TOKEN_URL", echo.token_url());
        let out = run(cmd);
        assert_eq!(code(&out), 3, "{}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("[redacted]"), "{stderr}");
        let forms = encodings(ECHOED);
        let leaks = |hay: &[u8]| -> Vec<String> {
            forms
                .iter()
                .filter(|f| hay.windows(f.len()).any(|w| w == f.as_bytes()))
                .cloned()
                .collect()
        };
        assert_eq!(leaks(&out.stdout), Vec::<String>::new(), "stdout");
        assert_eq!(leaks(&out.stderr), Vec::<String>::new(), "{stderr}");
        assert!(dir.path("s.db.report.md").exists() && dir.path("e.csv").exists());
        for path in files_under(dir.tmp.path()) {
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(leaks(&bytes), Vec::<String>::new(), "{}", path.display());
        }
    }
}

#[test]
fn a_database_of_another_application_is_refused_and_left_byte_for_byte() {
    let sandbox = Sandbox::start();
    let dir = Dir::new();
    let other = dir.path("other.db");
    {
        let conn = rusqlite::Connection::open(&other).unwrap();
        conn.execute_batch(
            "CREATE TABLE invoices (id INTEGER PRIMARY KEY, total TEXT);
             INSERT INTO invoices (total) VALUES ('10.00');",
        )
        .unwrap();
    }
    let garbage = dir.write(
        "garbage.db",
        b"not a database at all, just some text\n".repeat(200),
    );
    dir.write("o.csv", orders_csv(2, 1, true));
    for db in [&other, &garbage] {
        let before = std::fs::read(db).unwrap();
        let name = db.file_name().unwrap().to_str().unwrap();
        for args in [
            vec!["run", "o.csv", "--db", name],
            vec!["status", "--db", name],
            vec!["export", "--db", name, "--out", "x.csv"],
        ] {
            let out = run(dir.cmd(&sandbox, &args));
            assert_eq!(code(&out), 2, "{args:?}: {}", text(&out));
            assert!(
                text(&out).contains("not an orderbatch state database"),
                "{args:?}: {}",
                text(&out)
            );
            assert_eq!(
                std::fs::read(db).unwrap(),
                before,
                "{args:?} changed {name}"
            );
            assert!(
                !dir.path(&format!("{name}-wal")).exists(),
                "{args:?}: WAL made"
            );
        }
    }
    assert_eq!(sandbox.total_requests(), 0);
    // A state database of ours says so.
    let out = run(dir.cmd(&sandbox, &["run", "o.csv", "--db", "s.db"]));
    assert_eq!(code(&out), 0, "{}", text(&out));
    let conn = rusqlite::Connection::open(dir.path("s.db")).unwrap();
    let id: i32 = conn
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .unwrap();
    assert_eq!(id, orderbatch::store::APPLICATION_ID);
}
