//! The command-line edge: one function per command, `anyhow` errors, exit
//! codes. `main.rs` only parses arguments and sets up logging.

mod inbox;
mod inspect;
mod orders;
#[cfg(feature = "sandbox")]
mod serve;

use std::process::ExitCode;

use anyhow::Context;

use crate::cli::{Cli, Command};

/// Exit code for invalid invocation, configuration or input.
pub const EXIT_USAGE: u8 = 2;
/// Exit code for a run stopped early (credentials rejected, --max-errors).
pub const EXIT_ABORTED: u8 = 3;
/// Exit code for a run that left rows deferred to a later run.
pub const EXIT_DEFERRED: u8 = 4;
/// Exit code for a run stopped by a local failure (disk full, internal
/// error) after requests were sent: the state database keeps what was done.
pub const EXIT_AFTER_SEND: u8 = 5;
// An interrupted run exits 128 + the signal's number: 130 for Ctrl-C, 143
// for SIGTERM (`pipeline::Signal::exit_status`).

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let quiet = cli.quiet || cli.log_format == crate::cli::LogFormat::Json;
    let env = orders::GlobalArgs {
        quiet,
        config: cli.config.clone(),
    };
    match cli.command {
        Command::Run(args) => orders::run(args, &env),
        Command::Refresh(args) => orders::refresh(args, &env),
        Command::Inbox(args) => inbox::inbox(args, &env),
        Command::Change(args) => orders::change(args, &env),
        Command::Retry(args) => orders::retry(args, &env),
        Command::Ce(crate::cli::CeCommand::RetryPayments(args)) => orders::ce_retry(args, &env),
        Command::Config(crate::cli::ConfigCommand::Show { pace, token }) => {
            orders::config_show(&pace, &token, &env)
        }
        Command::Validate(args) => inspect::validate(args),
        Command::Export(args) => inspect::export(args),
        Command::Status(args) => inspect::status(args),
        Command::Runs(args) => inspect::runs(args),
        Command::Completions(args) => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(args.shell, &mut cmd, "orderbatch", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "sandbox")]
        Command::Sandbox(args) => serve::sandbox(args),
        #[cfg(feature = "sandbox")]
        Command::Demo(args) => orders::demo(args, quiet),
        Command::Serve(args) => orders::serve_links(args, &env),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}
