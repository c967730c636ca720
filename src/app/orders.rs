//! Commands that send requests: run, retry, demo.

use crate::exit::Exit;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use super::runtime;
use std::num::NonZeroU32;

use crate::cli::{
    CeRetryArgs, ChangeArgs, ColumnArgs, OutcomeArgs, PaceArgs, RefreshArgs, RejectsArgs,
    RetryArgs, RunArgs,
};
use crate::config::{Settings, TokenOptions};
use crate::input::ColumnOptions;
use crate::pipeline::plan::plan;
use crate::pipeline::{self, Mode, RunOptions, RunSpec, RunSummary, Shutdown, Stop};
use crate::provider::commerce_engine::{CeClient, PaymentMethod};
use crate::provider::paynearme::PnmClient;
use crate::report::{self, shell_quote, Report};
use crate::store::{RowState, Store};
use crate::{config, export, lock, report_html, status};

/// The [`Inputs`] of a command's arguments (they share these fields).
macro_rules! inputs {
    ($args:expr) => {
        Inputs {
            input: $args.input,
            db: $args.db,
            export: $args.export,
            columns: &$args.columns,
            rejects: &$args.rejects,
            outcome: &$args.outcome,
            new_run: false,
            identity: Default::default(),
        }
    };
}

/// What every command that sends requests gets from the command line.
pub struct GlobalArgs {
    pub quiet: bool,
    pub config: Option<PathBuf>,
}

impl GlobalArgs {
    /// Settings from the flags, environment, config file and defaults.
    pub(super) fn settings(
        &self,
        pace: &PaceArgs,
        token: &TokenOptions,
    ) -> anyhow::Result<Settings> {
        let file = config::load_file(self.config.as_deref())?;
        Ok(Settings::resolve(pace.flags(token), file))
    }
}

pub fn run(args: RunArgs, env: &GlobalArgs) -> anyhow::Result<Exit> {
    let settings = env.settings(&args.pace, &args.token)?;
    let inputs = Inputs {
        identity: pipeline::IdentityOptions {
            check_existing: args.identity.check_existing,
            same_orders: match (args.identity.same_orders, args.identity.new_orders) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            },
        },
        ..inputs!(args)
    };
    start(Mode::Run, settings, inputs, &args.pace, env.quiet)
}

pub fn refresh(args: RefreshArgs, env: &GlobalArgs) -> anyhow::Result<Exit> {
    let settings = env.settings(&args.pace, &args.token)?;
    let mode = Mode::Refresh {
        force: args.steps.force,
        urls: !args.steps.no_urls,
        tokens: !args.steps.no_token,
    };
    let inputs = Inputs {
        new_run: args.new_run,
        ..inputs!(args)
    };
    start(mode, settings, inputs, &args.pace, env.quiet)
}

pub fn change(args: ChangeArgs, env: &GlobalArgs) -> anyhow::Result<Exit> {
    let settings = env.settings(&args.pace, &TokenOptions::default())?;
    start(Mode::Change, settings, inputs!(args), &args.pace, env.quiet)
}

pub fn ce_retry(args: CeRetryArgs, env: &GlobalArgs) -> anyhow::Result<Exit> {
    let settings = env.settings(&args.pace, &TokenOptions::default())?;
    let defaults = PaymentMethod {
        payment_provider_slug: args.payment_provider_slug.clone(),
        integration_type: args.integration_type.clone(),
        return_url: args.return_url.clone(),
        action: args.action.clone(),
        gateway_reference_id: None,
    };
    start_with(
        Mode::CeRetry {
            max_wait_secs: args.max_wait,
        },
        settings,
        defaults,
        inputs!(args),
        &args.pace,
        env.quiet,
    )
}

/// The arguments `run`, `refresh` and `change` share.
struct Inputs<'a> {
    /// How `run` settles order identities against earlier runs.
    identity: pipeline::IdentityOptions,
    /// Start a new run even if this input's last run is finished.
    new_run: bool,
    input: PathBuf,
    db: PathBuf,
    export: Option<PathBuf>,
    columns: &'a ColumnArgs,
    rejects: &'a RejectsArgs,
    outcome: &'a OutcomeArgs,
}

/// Dry-runs, or locks the database and runs.
fn start(
    mode: Mode,
    settings: Settings,
    args: Inputs<'_>,
    pace: &PaceArgs,
    quiet: bool,
) -> anyhow::Result<Exit> {
    start_with(mode, settings, PaymentMethod::default(), args, pace, quiet)
}

/// [`start`] with Commerce Engine payment defaults.
fn start_with(
    mode: Mode,
    settings: Settings,
    payment_defaults: PaymentMethod,
    args: Inputs<'_>,
    pace: &PaceArgs,
    quiet: bool,
) -> anyhow::Result<Exit> {
    let token_options = match mode {
        Mode::Run | Mode::Refresh { .. } => settings.token.params().map_err(anyhow::Error::msg)?,
        _ => Vec::new(),
    };
    let columns = args.columns.options();
    if args.outcome.dry_run {
        return dry_run(
            mode,
            &args.input,
            &columns,
            settings.rate.value,
            &args.db,
            args.identity.check_existing,
        );
    }
    // Check the configuration and every path the run writes before
    // touching the state database.
    let clients = clients(mode, &settings)?;
    check_outputs(
        &args.db,
        args.export.as_deref(),
        args.outcome.report.as_deref(),
        args.rejects.rejects.as_deref(),
    )?;
    // Until the process exits: after every SQLite connection it opens.
    let held = lock::lock(&args.db)?.hold_until_exit();
    let db = args.db.clone();
    let outcome = execute(
        clients,
        RunJob {
            spec: RunSpec {
                token_options,
                payment_defaults,
                columns,
                ..RunSpec::new(mode)
            },
            new_run: args.new_run,
            identity: args.identity,
            input: args.input,
            db: args.db,
            rejects: args.rejects.file(),
            cells: crate::cells::Cells::from_flag(args.rejects.spreadsheet_safe),
            export: args.export,
            report: args.outcome.report.clone(),
        },
        &settings,
        pace,
        quiet,
    );
    if outcome.is_err() {
        held.remove_if_unused(&db);
    }
    outcome
}

pub fn retry(args: RetryArgs, env: &GlobalArgs) -> anyhow::Result<Exit> {
    let settings = env.settings(&args.pace, &TokenOptions::default())?;
    // Until the process exits: after every SQLite connection it opens.
    lock::lock(&args.db)?.hold_until_exit();
    let plan = pipeline::prepare_retry(&args.db, args.run, args.error_code.as_deref())?;
    // Check the configuration and the outputs before putting anything back
    // in the queue.
    let clients = clients(plan.spec.mode, &settings)?;
    check_outputs(
        &args.db,
        args.export.as_deref(),
        args.report.as_deref(),
        None,
    )?;
    let requeued = plan.requeue(&args.db)?;
    println!(
        "run {}: {requeued} failed rows back in the queue",
        plan.run_id
    );
    execute(
        clients,
        RunJob {
            spec: plan.spec,
            new_run: false,
            identity: Default::default(),
            input: plan.input,
            db: args.db,
            rejects: None,
            cells: crate::cells::Cells::from_flag(args.spreadsheet_safe),
            export: args.export,
            report: args.report,
        },
        &settings,
        &args.pace,
        env.quiet,
    )
}

pub fn config_show(
    pace: &PaceArgs,
    token: &TokenOptions,
    env: &GlobalArgs,
) -> anyhow::Result<Exit> {
    print!("{}", env.settings(pace, token)?.render());
    Ok(Exit::Done)
}

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

/// What one invocation of `run` or `retry` works on.
struct RunJob {
    /// What the run is (for `retry`: what it was started with).
    spec: RunSpec,
    new_run: bool,
    identity: pipeline::IdentityOptions,
    input: PathBuf,
    db: PathBuf,
    rejects: Option<crate::input::rejects::RejectsFile>,
    /// How the export writes data cells.
    cells: crate::cells::Cells,
    export: Option<PathBuf>,
    report: Option<PathBuf>,
}

fn dry_run(
    mode: Mode,
    input: &Path,
    columns: &ColumnOptions,
    rate: Option<NonZeroU32>,
    db: &Path,
    check_existing: bool,
) -> anyhow::Result<Exit> {
    let plan = plan(mode, input, columns, rate, db, check_existing)?;
    println!("dry run of {}: nothing will be sent", input.display());
    println!(
        "  {} valid rows for {} customers, {} rejected",
        plan.valid, plan.customers, plan.rejected
    );
    println!("  {:<26} {:>10}", "endpoint", "requests");
    for (endpoint, n) in &plan.requests {
        println!("  {endpoint:<26} {n:>10}");
    }
    println!(
        "  {} requests, {:.2} per valid row",
        plan.total_requests(),
        plan.total_requests() as f64 / plan.valid.max(1) as f64
    );
    match (plan.duration, rate) {
        (Some(d), Some(rate)) => println!("  about {} at --rate {rate}", human(d)),
        _ => println!("  --rate unlimited: as fast as the provider answers"),
    }
    if let Some(done) = plan.already_finished {
        println!(
            "  {} already holds a run of this file with {done} rows finished; the run would resume",
            db.display()
        );
    }
    Ok(if plan.rejected > 0 {
        Exit::RowsLeft
    } else {
        Exit::Done
    })
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{:.1}s", d.as_secs_f64()),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// Runs (or resumes) the pipeline with the provider `clients` (the caller
/// holds the database's lock); prints the summary, exports, reports.
fn execute(
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
        return Ok(Exit::Done);
    }
    print_summary(&summary);
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

/// Checks that every file a run writes can be written, before it sends
/// anything: the state database (and its directory), the export, the
/// report and the rejects file.
fn check_outputs(
    db: &Path,
    export: Option<&Path>,
    report: Option<&Path>,
    rejects: Option<&Path>,
) -> anyhow::Result<()> {
    use crate::files::check_writable;
    check_writable("state database", db)?;
    let (report_md, report_json) = report::paths(db, report);
    check_writable("report", &report_md)?;
    check_writable("report", &report_json)?;
    check_writable("report", &report_html::path(&report_md))?;
    if let Some(export) = export {
        check_writable("export file", export)?;
    }
    if let Some(rejects) = rejects {
        check_writable("rejects file", rejects)?;
    }
    Ok(())
}

/// How long an unanswered request may still be running at the provider:
/// `--settle-ms`, else the answer timeout, at least 5 s.
pub(super) fn settle(pace: &PaceArgs, settings: &Settings) -> Duration {
    pace.settle_ms.map_or_else(
        || Duration::from_secs(settings.timeout.value.max(5)),
        Duration::from_millis,
    )
}

/// The provider client the mode needs, built from its credentials.
pub(super) fn clients(mode: Mode, settings: &Settings) -> anyhow::Result<pipeline::Clients> {
    let timeout = Duration::from_secs(settings.timeout.value);
    Ok(match mode {
        Mode::CeRetry { .. } => pipeline::Clients {
            pnm: None,
            ce: Some(std::sync::Arc::new(
                CeClient::new(settings.ce_credentials()?, timeout)
                    .context("cannot build the HTTP client")?,
            )),
        },
        _ => pipeline::Clients {
            pnm: Some(PnmClient::new(settings.credentials()?, timeout)?),
            ce: None,
        },
    })
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
