//! The commands that start a run from an input file: `run`, `refresh`,
//! `change`, `ce retry-payments` (and their `--dry-run`).

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::execute::{execute, RunJob};
use super::setup::{check_outputs, clients, GlobalArgs};
use crate::cli::{
    CeRetryArgs, ChangeArgs, ColumnArgs, OutcomeArgs, PaceArgs, RefreshArgs, RejectsArgs, RunArgs,
};
use crate::config::{Settings, TokenOptions};
use crate::exit::Exit;
use crate::input::ColumnOptions;
use crate::lock;
use crate::pipeline::plan::plan;
use crate::pipeline::{self, Mode, RunSpec};
use crate::provider::commerce_engine::PaymentMethod;

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

pub fn run(args: RunArgs, env: &GlobalArgs) -> anyhow::Result<Exit> {
    let settings = env.settings(&args.pace, &args.token)?;
    let inputs = Inputs {
        identity: super::setup::identity(&args.identity),
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
