//! deploy/ kept honest without a cluster: every command line in it parses
//! with the real argument parser, the systemd units pass `systemd-analyze
//! verify` (where it is installed), and the secret files the manifests make
//! (0400, 0440 under fsGroup, behind Kubernetes' `..data` symlinks) are read.

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser;

use crate::util::{code, run, text, Dir, Sandbox, SECRET, SITE};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    out.sort();
    out
}

/// Every orderbatch command line of deploy/: systemd `ExecStart=` lines and
/// Kubernetes `args: [...]` lists.
fn command_lines() -> Vec<(String, Vec<String>)> {
    let mut lines = Vec::new();
    for unit in files(&deploy().join("systemd")) {
        for line in std::fs::read_to_string(&unit).unwrap().lines() {
            if let Some(rest) = line.strip_prefix("ExecStart=/usr/local/bin/orderbatch ") {
                let mut argv = vec!["orderbatch".to_string()];
                argv.extend(rest.split_whitespace().map(String::from));
                lines.push((unit.display().to_string(), argv));
            }
        }
    }
    for manifest in files(&deploy().join("kubernetes")) {
        for line in std::fs::read_to_string(&manifest).unwrap().lines() {
            if let Some(list) = line.trim().strip_prefix("args: ") {
                let args: Vec<String> = serde_json::from_str(list)
                    .unwrap_or_else(|e| panic!("{}: {list}: {e}", manifest.display()));
                let mut argv = vec!["orderbatch".to_string()];
                argv.extend(args);
                lines.push((manifest.display().to_string(), argv));
            }
        }
    }
    lines
}

#[test]
fn every_command_line_in_deploy_parses() {
    let lines = command_lines();
    let commands: Vec<&str> = lines.iter().map(|(_, a)| a[1].as_str()).collect();
    for expected in ["inbox", "serve"] {
        assert!(
            commands.iter().filter(|c| **c == expected).count() >= 2,
            "{expected} is not in both the systemd units and the manifests: {commands:?}"
        );
    }
    for (file, argv) in &lines {
        if let Err(e) = orderbatch::cli::Cli::try_parse_from(argv) {
            panic!("{file}: {argv:?} does not parse:\n{e}");
        }
    }
}

#[test]
fn the_inbox_command_lines_of_deploy_run_as_a_dry_run() {
    // The real binary, with the paths moved into a temporary folder.
    let dir = Dir::new();
    for (file, argv) in command_lines() {
        if argv[1] != "inbox" {
            continue;
        }
        let args: Vec<String> = argv[1..]
            .iter()
            .map(|a| {
                if let Some(path) = a.strip_prefix('/') {
                    let local = dir.path(&path.replace('/', "_"));
                    if !a.ends_with(".db") {
                        std::fs::create_dir_all(&local).unwrap();
                    }
                    local.display().to_string()
                } else {
                    a.clone()
                }
            })
            .chain(["--dry-run".to_string()])
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run(dir.bare_cmd(&args));
        assert_eq!(code(&out), 0, "{file}: {}", text(&out));
    }
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("systemd-analyze is not installed: skipped (.ci/run installs it)");
        return;
    }
    let dir = Dir::new();
    let mut units = Vec::new();
    for unit in files(&deploy().join("systemd")) {
        let name = unit.file_name().unwrap().to_str().unwrap().to_string();
        // The binary where the unit expects it.
        let text = std::fs::read_to_string(&unit).unwrap().replace(
            "/usr/local/bin/orderbatch",
            env!("CARGO_BIN_EXE_orderbatch"),
        );
        dir.write(&name, text);
        units.push(if name.ends_with("@.service") {
            name.replace("@.service", "@orderbatch-inbox.service.service")
        } else {
            name
        });
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&units)
        .current_dir(dir.tmp.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains(".service:") && !stderr.contains(".timer:"),
        "systemd-analyze verify {units:?}:\n{stderr}"
    );
}

/// The inbox run against the sandbox with the HMAC secret read from `file`.
fn inbox_with_secret_file(sandbox: &Sandbox, dir: &Dir, file: &Path) -> std::process::Output {
    let mut cmd = dir.bare_cmd(&[
        "inbox", "in", "--db", "state.db", "--ready", "stable:0", "-q",
    ]);
    cmd.env("PNM_BASE_URL", sandbox.base_url())
        .env("PNM_SITE_IDENTIFIER", SITE)
        .env("PNM_SECRET_KEY_FILE", file);
    run(cmd)
}

#[test]
fn secret_files_as_systemd_and_kubernetes_make_them_are_read() {
    use std::os::unix::fs::{symlink, PermissionsExt};
    let sandbox = Sandbox::start();
    let mode =
        |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    let dir = Dir::new();
    std::fs::create_dir(dir.path("in")).unwrap();
    // systemd's LoadCredential=: 0400.
    let plain = dir.write("cred", format!("{SECRET}\n"));
    mode(&plain, 0o400);
    // Kubernetes with fsGroup: key -> ..data/key, ..data -> ..<stamp>/, 0440.
    std::fs::create_dir_all(dir.path("secret/..2026_12_03_02_30_00.1")).unwrap();
    let real = dir.write("secret/..2026_12_03_02_30_00.1/pnm-secret-key", SECRET);
    mode(&real, 0o440);
    symlink("..2026_12_03_02_30_00.1", dir.path("secret/..data")).unwrap();
    symlink("..data/pnm-secret-key", dir.path("secret/pnm-secret-key")).unwrap();

    for (i, file) in [plain.clone(), dir.path("secret/pnm-secret-key")]
        .iter()
        .enumerate()
    {
        dir.write(
            &format!("in/s{i}.csv"),
            format!(
                "site_customer_identifier,order_amount,order_currency,order_type,order_is_standing,site_order_identifier\nSEC-C{i},10.00,USD,exact,true,SEC-{i}\n"
            ),
        );
        let out = inbox_with_secret_file(&sandbox, &dir, file);
        assert_eq!(code(&out), 0, "{}: {}", file.display(), text(&out));
        sandbox.order(&format!("SEC-{i}"));
    }

    // Readable by others: refused before anything is sent.
    let requests = sandbox.total_requests();
    mode(&real, 0o444);
    dir.write("in/s9.csv", "site_customer_identifier,order_amount,order_currency,order_type,order_is_standing\nX,1.00,USD,exact,true\n");
    let out = inbox_with_secret_file(&sandbox, &dir, &dir.path("secret/pnm-secret-key"));
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(text(&out).contains("chmod 600"), "{}", text(&out));
    assert_eq!(sandbox.total_requests(), requests);
    // Writable by the group: refused too.
    mode(&real, 0o460);
    let out = inbox_with_secret_file(&sandbox, &dir, &dir.path("secret/pnm-secret-key"));
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(dir.path("in/s9.csv").exists());
}
