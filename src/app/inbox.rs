//! `orderbatch inbox`: the command edge (flags into an [`Inbox`], the
//! database lock, the passes, the summary lines and the exit code).

use std::path::PathBuf;

use anyhow::Context;

use super::runtime;
use super::setup::{clients, GlobalArgs};
use crate::cli::{InboxArgs, InboxMode};
use crate::exit::Exit;
use crate::inbox::{Inbox, Pass};
use crate::pipeline::{self, Mode, Pace, RunOptions, RunSpec, Shutdown};
use crate::report::shell_quote;

pub fn inbox(args: InboxArgs, env: &GlobalArgs) -> anyhow::Result<Exit> {
    let mode = match args.mode {
        InboxMode::Run => {
            if args.steps.force || args.steps.no_urls || args.steps.no_token {
                anyhow::bail!("--force, --no-urls and --no-token are for --mode refresh");
            }
            Mode::Run
        }
        InboxMode::Refresh => {
            if args.identity.check_existing || args.identity.same_orders || args.identity.new_orders
            {
                anyhow::bail!(
                    "--check-existing, --same-orders and --new-orders are for --mode run"
                );
            }
            Mode::Refresh {
                force: args.steps.force,
                urls: !args.steps.no_urls,
                tokens: !args.steps.no_token,
            }
        }
    };
    let settings = env.settings(&args.pace, &args.token)?;
    let token_options = settings.token.params().map_err(anyhow::Error::msg)?;
    if !args.dir.is_dir() {
        anyhow::bail!("{} is not a folder", args.dir.display());
    }
    let mut work = args.db.clone().into_os_string();
    work.push(".inbox");
    let inbox = Inbox {
        done: args.done.clone().unwrap_or_else(|| args.dir.join("done")),
        failed: args
            .failed
            .clone()
            .unwrap_or_else(|| args.dir.join("failed")),
        dir: args.dir.clone(),
        pattern: args.pattern.clone(),
        ready: args.ready.clone(),
        work: PathBuf::from(work),
        options: RunOptions {
            spec: RunSpec {
                token_options,
                columns: args.columns.options(),
                rate: settings.rate.value.map(std::num::NonZeroU32::get),
                concurrency: Some(usize::from(settings.concurrency.value)),
                max_attempts: Some(args.pace.max_attempts),
                ..RunSpec::new(mode)
            },
            input: PathBuf::new(),
            db: args.db.clone(),
            rate: settings.rate.value,
            concurrency: usize::from(settings.concurrency.value),
            max_attempts: args.pace.max_attempts,
            retry_base: std::time::Duration::from_millis(args.pace.retry_base_ms),
            settle: super::setup::settle(&args.pace, &settings),
            max_errors: args.pace.max_errors,
            new_run: false,
            identity: super::setup::identity(&args.identity),
            rejects: None,
            quiet: env.quiet,
        },
        cells: crate::cells::Cells::from_flag(args.spreadsheet_safe),
        rejects_include_pii: args.rejects_include_pii,
        command_line: std::env::args()
            .map(|a| shell_quote(&a))
            .collect::<Vec<_>>()
            .join(" "),
    };
    if args.dry_run {
        println!(
            "dry run of inbox {}: nothing will be sent or moved",
            inbox.dir.display()
        );
        let plan = inbox.plan()?;
        for p in &plan {
            println!("  {}: {}", p.name, p.action);
        }
        println!("  {} files match {}", plan.len(), inbox.pattern);
        return Ok(Exit::Done);
    }
    let clients = clients(mode, &settings)?;
    crate::files::check_writable("state database", &args.db)?;
    for (what, dir) in [
        ("done folder", &inbox.done),
        ("failed folder", &inbox.failed),
    ] {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the {what} {}", dir.display()))?;
    }
    // Until the process exits: after every SQLite connection it opens.
    let held = crate::lock::lock(&args.db)?.hold_until_exit();
    let outcome = runtime()?.block_on(async {
        let shutdown = Shutdown::new();
        pipeline::handle_signals(shutdown.clone());
        // One budget for every file: the rate, the request slots, the 429
        // gate and the customers in flight.
        let pace = Pace::new(inbox.options.rate).with_concurrency(inbox.options.concurrency);
        let mut worst = Exit::Done;
        loop {
            let pass = inbox.pass(&clients, &pace, &shutdown).await?;
            print_pass(&inbox, &pass);
            worst = worst.worst(pass.code());
            if !args.watch || shutdown.is_stopping() {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(args.interval) => {}
                _ = shutdown.stopped() => {}
            }
            if shutdown.is_stopping() {
                break;
            }
        }
        if let pipeline::Stop::Interrupted(signal) = shutdown.state() {
            eprintln!(
                "inbox stopped ({}); state saved: run the same command again to go on",
                signal.name()
            );
            worst = worst.worst(Exit::Signal(signal.number()));
        }
        Ok::<_, anyhow::Error>(worst)
    });
    match outcome {
        Ok(exit) => Ok(exit),
        Err(e) => {
            held.remove_if_unused(&args.db);
            Err(e)
        }
    }
}

fn print_pass(inbox: &Inbox, pass: &Pass) {
    for (name, what) in &pass.tidied {
        println!("{name}: {what}");
    }
    for f in &pass.files {
        println!("{}: {} (exit {})", f.name, f.line, f.code.status());
    }
    for (name, why) in &pass.waiting {
        println!("{name}: waiting: {why}");
    }
    let done = pass
        .files
        .iter()
        .filter(|f| matches!(f.code, Exit::Done | Exit::RowsLeft))
        .count();
    let refused = pass.files.iter().filter(|f| f.code == Exit::Usage).count();
    let requests: u64 = pass.files.iter().map(|f| f.requests).sum();
    println!(
        "inbox {}: {} files: {done} archived, {refused} refused or in error, {} left for the next pass; {} waiting; {requests} requests; exit {}",
        inbox.dir.display(),
        pass.files.len(),
        pass.files.len() - done - refused,
        pass.waiting.len(),
        pass.code().status()
    );
}
