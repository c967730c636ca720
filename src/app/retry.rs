//! `orderbatch retry`: a run's failed rows back in the queue, then the run
//! resumed with what it was started with.

use super::execute::{execute, RunJob};
use super::setup::{check_outputs, clients, GlobalArgs};
use crate::cli::RetryArgs;
use crate::config::TokenOptions;
use crate::exit::Exit;
use crate::{lock, pipeline};

/// `orderbatch retry`.
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
