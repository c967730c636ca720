//! Running a job on the pipeline, then what it prints and writes: the
//! summary, the export, the reports, the exit status.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use super::runtime;
use super::setup::settle;
use crate::cli::PaceArgs;
use crate::config::Settings;
use crate::exit::Exit;
use crate::pipeline::{self, RunOptions, RunSpec, RunSummary, Shutdown, Stop};
use crate::report::{self, shell_quote, Report};
use crate::store::{RowState, Store};
use crate::{export, report_html, status};

/// What one invocation of `run` or `retry` works on.
pub(super) struct RunJob {
    /// What the run is (for `retry`: what it was started with).
    pub(super) spec: RunSpec,
    pub(super) new_run: bool,
    pub(super) identity: pipeline::IdentityOptions,
    pub(super) input: PathBuf,
    pub(super) db: PathBuf,
    pub(super) rejects: Option<crate::input::rejects::RejectsFile>,
    /// How the export writes data cells.
    pub(super) cells: crate::cells::Cells,
    pub(super) export: Option<PathBuf>,
    pub(super) report: Option<PathBuf>,
}

/// Runs (or resumes) the pipeline with the provider `clients` (the caller
/// holds the database's lock); prints the summary, exports, reports.
pub(super) fn execute(
    clients: pipeline::Clients,
    job: RunJob,
    settings: &Settings,
    pace: &PaceArgs,
    quiet: bool,
) -> anyhow::Result<Exit> {
    let rate = settings.rate.value;
    let concurrency = usize::from(settings.concurrency.value);
    let options = RunOptions {
        spec: RunSpec {
            rate: rate.map(NonZeroU32::get),
            concurrency: Some(concurrency),
            max_attempts: Some(pace.max_attempts),
            ..job.spec
        },
        input: job.input,
        db: job.db,
        rate,
        concurrency,
        max_attempts: pace.max_attempts,
        retry_base: Duration::from_millis(pace.retry_base_ms),
        settle: settle(pace, settings),
        max_errors: pace.max_errors,
        new_run: job.new_run,
        rejects: job.rejects,
        identity: job.identity,
        quiet,
    };
    let summary = runtime()?
        .block_on(async {
            let shutdown = Shutdown::new();
            pipeline::handle_signals(shutdown.clone());
            pipeline::run(&options, clients, shutdown).await
        })
        .map_err(super::run_failed)?;
    if summary.total == 0 {
        println!(
            "{}: no data rows after the header; nothing to do",
            options.input.display()
        );
    } else {
        print_summary(&summary);
    }
    let outputs = || -> anyhow::Result<()> {
        let store = Store::open_reader(&options.db)?;
        if let Some(out) = &job.export {
            let rows = export::export(&store, summary.run_id, out, job.cells)?;
            println!("exported {rows} rows to {}", out.display());
        }
        write_report(&store, &summary, &options.db, job.report.as_deref())
    };
    match outputs() {
        Err(e) if summary.request_total() > 0 => Err(super::AfterSend(e).into()),
        other => other.map(|()| exit_code(&summary)),
    }
}

fn write_report(
    store: &Store,
    summary: &RunSummary,
    db: &Path,
    explicit: Option<&Path>,
) -> anyhow::Result<()> {
    let run = store
        .run(summary.run_id)?
        .context("the run vanished from the state database")?;
    let status = status::run_status(store, &run)?;
    let resume_command = std::env::args()
        .map(|a| shell_quote(&a))
        .collect::<Vec<_>>()
        .join(" ");
    let retry_command = (summary.count(RowState::Failed) > 0).then(|| {
        format!(
            "orderbatch retry --db {}",
            shell_quote(&db.display().to_string())
        )
    });
    let report = Report {
        outcome: match &summary.stop {
            Stop::Running => "completed".to_string(),
            Stop::Interrupted(_) => "interrupted".to_string(),
            Stop::Aborted(why) => format!("stopped: {why}"),
        },
        requests_per_row: summary.request_total() as f64 / summary.total.max(1) as f64,
        stages: summary.stages.clone(),
        resume_command,
        retry_command,
        status,
    };
    let (md, json) = report::paths(db, explicit);
    report::write(&report, &md, &json)
        .with_context(|| format!("cannot write the run report {}", md.display()))?;
    let html = super::inspect::write_html(store, &report, &report_html::path(&md))?;
    println!("report: {} ({})", md.display(), html.display());
    Ok(())
}

fn exit_code(summary: &RunSummary) -> Exit {
    let exit = summary.exit();
    match (&summary.stop, exit) {
        (_, Exit::Deferred) => {
            let until = summary.deferred_until.unwrap_or_default();
            let at = chrono::DateTime::from_timestamp(until, 0)
                .unwrap_or_default()
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            eprintln!(
                "{} rows deferred: run the same command again after {at}",
                summary.count(RowState::Deferred)
            );
        }
        (Stop::Interrupted(signal), _) => eprintln!(
            "interrupted ({}); state saved: run the same command again to resume",
            signal.name()
        ),
        (Stop::Aborted(why), _) => eprintln!("error: run stopped: {why}"),
        _ => {}
    }
    exit
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
        println!("  {endpoint:<26} {n:>10}");
    }
    let total = summary.request_total();
    println!(
        "  {} requests, {:.1} requests/s, {:.2} requests per row",
        total,
        total as f64 / secs.max(0.001),
        total as f64 / summary.total.max(1) as f64
    );
    let w = summary.writer;
    if w.transactions > 0 {
        println!(
            "  state writes: {} in {} transactions ({:.1} per transaction; {} synced to disk for intents)",
            w.operations,
            w.transactions,
            w.operations as f64 / w.transactions as f64,
            w.durable
        );
    }
}

/// `orderbatch demo`: the sandbox, the samples, a run, an export.
#[cfg(feature = "sandbox")]
pub fn demo(args: crate::cli::DemoArgs, quiet: bool) -> anyhow::Result<Exit> {
    runtime()?.block_on(async {
        let shutdown = Shutdown::new();
        pipeline::handle_signals(shutdown.clone());
        let report = crate::demo::run(&args.dir, args.auth, quiet, shutdown).await?;
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
