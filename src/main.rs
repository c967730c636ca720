//! The `orderbatch` binary: parse the command line, set up logging, call the
//! library, map the outcome to an exit code.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use secrecy::SecretString;

use orderbatch::cli::{Cli, Command, PaceArgs, RetryArgs, RunArgs, SandboxArgs, ValidateArgs};
use orderbatch::input::check::check_file;
use orderbatch::input::ColumnOptions;
use orderbatch::pipeline::{self, RunOptions, RunSummary, Shutdown, Stop};
use orderbatch::provider::paynearme::PnmClient;
use orderbatch::store::{RowState, Store};
use orderbatch::{config, export, sandbox};

/// Exit code for invalid invocation, configuration or input.
const EXIT_USAGE: u8 = 2;
/// Exit code for a run stopped because the provider rejected our credentials.
const EXIT_ABORTED: u8 = 3;
/// Exit code for an interrupted run.
const EXIT_INTERRUPTED: u8 = 130;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            if is_broken_pipe(&e) {
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("orderbatch=info,warn"));
    let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(color)
        .init();
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => run_orders(args, cli.quiet),
        Command::Retry(args) => retry(args, cli.quiet),
        Command::Validate(args) => validate(args),
        Command::Export(args) => {
            let store = Store::open(&args.db)?;
            let run_id = match args.run {
                Some(id) => id,
                None => store
                    .runs()?
                    .last()
                    .map(|r| r.id)
                    .with_context(|| format!("{} holds no run yet", args.db.display()))?,
            };
            let rows = export::export(&store, run_id, &args.out)?;
            println!(
                "exported {rows} rows of run {run_id} to {}",
                args.out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Sandbox(args) => serve_sandbox(args),
        Command::Demo(args) => {
            let rt = runtime()?;
            rt.block_on(async {
                let shutdown = Shutdown::new();
                pipeline::handle_ctrl_c(shutdown.clone());
                let report = orderbatch::demo::run(&args.dir, cli.quiet, shutdown).await?;
                print_summary(&report.summary);
                println!(
                    "sandbox holds {} orders; exported {} rows to {}",
                    report.sandbox_orders,
                    report.exported_rows,
                    report.export.display()
                );
                Ok(exit_code(&report.summary))
            })
        }
    }
}

fn run_orders(args: RunArgs, quiet: bool) -> anyhow::Result<ExitCode> {
    execute(
        args.input,
        args.db,
        args.columns.options(),
        args.rejects
            .rejects
            .clone()
            .map(|p| (p, args.rejects.rejects_include_pii)),
        &args.pace,
        args.export.as_deref(),
        quiet,
    )
}

fn retry(args: RetryArgs, quiet: bool) -> anyhow::Result<ExitCode> {
    // Check the configuration before touching the state database.
    config::pnm_credentials(args.pace.base_url.clone())?;
    let plan = pipeline::prepare_retry(&args.db, args.run, args.error_code.as_deref())?;
    println!(
        "run {}: {} failed rows back in the queue",
        plan.run_id, plan.requeued
    );
    execute(
        plan.input,
        args.db,
        plan.columns,
        None,
        &args.pace,
        args.export.as_deref(),
        quiet,
    )
}

/// Runs (or resumes) the pipeline on `input`, prints the summary, exports.
fn execute(
    input: PathBuf,
    db: PathBuf,
    columns: ColumnOptions,
    rejects: Option<(PathBuf, bool)>,
    pace: &PaceArgs,
    export_to: Option<&Path>,
    quiet: bool,
) -> anyhow::Result<ExitCode> {
    let credentials = config::pnm_credentials(pace.base_url.clone())?;
    let client = PnmClient::new(credentials, Duration::from_secs(pace.timeout))
        .context("cannot build the HTTP client")?;
    let options = RunOptions {
        input,
        db,
        rate: pace.rate.0,
        concurrency: usize::from(pace.concurrency),
        max_attempts: pace.max_attempts,
        retry_base: Duration::from_millis(pace.retry_base_ms),
        columns,
        max_errors: pace.max_errors,
        rejects,
        quiet,
    };
    let rt = runtime()?;
    let summary = rt.block_on(async {
        let shutdown = Shutdown::new();
        pipeline::handle_ctrl_c(shutdown.clone());
        pipeline::run(&options, client, shutdown).await
    })?;
    if summary.total == 0 {
        println!(
            "{}: no data rows after the header; nothing to do",
            options.input.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    print_summary(&summary);
    if let Some(out) = export_to {
        let store = Store::open_reader(&options.db)?;
        let rows = export::export(&store, summary.run_id, out)?;
        println!("exported {rows} rows to {}", out.display());
    }
    Ok(exit_code(&summary))
}

fn exit_code(summary: &RunSummary) -> ExitCode {
    match &summary.stop {
        Stop::Interrupted => {
            eprintln!("interrupted; state saved: run the same command again to resume");
            ExitCode::from(EXIT_INTERRUPTED)
        }
        Stop::Aborted(why) => {
            eprintln!("error: run stopped: {why}");
            ExitCode::from(EXIT_ABORTED)
        }
        Stop::Running if summary.count(RowState::Done) == summary.total => ExitCode::SUCCESS,
        Stop::Running => ExitCode::from(1),
    }
}

fn print_summary(summary: &RunSummary) {
    let secs = summary.elapsed.as_secs_f64();
    println!(
        "run {}{}: {} rows in {:.1}s",
        summary.run_id,
        if summary.resumed { " (resumed)" } else { "" },
        summary.total,
        secs
    );
    println!("  {:<26} {:>10}", "state", "rows");
    for (state, n) in &summary.states {
        println!("  {:<26} {:>10}", state.as_str(), n);
    }
    println!("  {:<26} {:>10}", "endpoint", "requests");
    for (endpoint, n) in &summary.requests {
        println!("  {:<26} {:>10}", endpoint, n);
    }
    let total = summary.request_total();
    println!(
        "  {} requests, {:.1} requests/s, {:.2} requests per row",
        total,
        total as f64 / secs.max(0.001),
        total as f64 / summary.total.max(1) as f64
    );
}

fn validate(args: ValidateArgs) -> anyhow::Result<ExitCode> {
    let columns = args.columns.options();
    let schema = pipeline::schema(&columns);
    let rejects = args
        .rejects
        .rejects
        .as_deref()
        .map(|p| (p, args.rejects.rejects_include_pii));
    let report = check_file(&args.input, schema, rejects)?;
    let input = args.input.display();
    if report.valid + report.rejected == 0 {
        println!("{input}: no data rows after the header; nothing to do");
        return Ok(ExitCode::SUCCESS);
    }
    for (code, count) in &report.by_code {
        println!("{code}: {count} rows");
        for p in report
            .problems
            .iter()
            .filter(|p| &p.rejection.code() == code)
        {
            println!("  {input}:{}: row {}: {}", p.line, p.row, p.rejection);
        }
    }
    if report.rejected > report.problems.len() as u64 {
        println!(
            "(first {} problems shown{})",
            report.problems.len(),
            if rejects.is_some() {
                "; every one is in the rejects file"
            } else {
                "; --rejects FILE.csv lists every one"
            }
        );
    }
    println!("{} valid rows, {} rejected", report.valid, report.rejected);
    Ok(if report.rejected > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn serve_sandbox(args: SandboxArgs) -> anyhow::Result<ExitCode> {
    if !args.listen.ip().is_loopback() && !args.allow_remote {
        anyhow::bail!(
            "--listen {} is not a loopback address; the sandbox is a test server with no real security. \
             Use 127.0.0.1, or add --allow-remote if you really mean it",
            args.listen
        );
    }
    let site = std::env::var("PNM_SITE_IDENTIFIER").unwrap_or_else(|_| "S_SANDBOX".into());
    let secret = std::env::var("PNM_SECRET_KEY").unwrap_or_else(|_| "sandbox-secret".into());
    let mut config = sandbox::SandboxConfig::new(site.clone(), SecretString::from(secret));
    config.strict_serial = args.strict_serial;
    config.seed = args.seed;
    config.latency_ms = args.latency_ms.map(|r| (r.0, r.1));
    config.fail_rate = args.fail_rate;
    config.drop_rate = args.drop_rate;
    config.rate_limit = args.rate_limit;
    let rt = runtime()?;
    rt.block_on(async move {
        let server = sandbox::start(config, args.listen).await?;
        let addr: SocketAddr = server.addr();
        eprintln!(
            "orderbatch sandbox: a TEST server, not PayNearMe. No real orders, no real money."
        );
        eprintln!(
            "listening on http://{addr} for site {site}; state at http://{addr}/__sandbox/state"
        );
        println!("http://{addr}");
        tokio::select! {
            _ = server.wait() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}
