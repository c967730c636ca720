//! The command-line edge: one function per command, `anyhow` errors, exit
//! codes. `main.rs` only parses arguments and sets up logging.

mod execute;
mod inbox;
mod inspect;
mod retry;
#[cfg(feature = "sandbox")]
mod sandbox;
mod serve;
mod setup;
mod start;

use crate::exit::Exit;

use anyhow::Context;

use crate::cli::{Cli, Command};

/// An error that stopped a command after it had sent requests: the state
/// database keeps what was done, and the same command resumes.
#[derive(Debug, thiserror::Error)]
#[error(
    "{0:#}\nrequests had already been sent: the state database keeps what was done; fix the \
     cause and run the same command again to resume"
)]
pub struct AfterSend(pub(crate) anyhow::Error);

/// A run's failure for the edge: after requests were sent, [`AfterSend`].
pub(crate) fn run_failed(e: crate::pipeline::RunError) -> anyhow::Error {
    if e.requests_sent && !e.input_changed() {
        AfterSend(e.error.into()).into()
    } else {
        e.error.into()
    }
}

/// The one mapping of a command's error to its exit status: failures
/// after requests were sent are 5 (state kept), everything else — bad
/// invocation, configuration, input, or an input changed under the run
/// (nothing with the new values was sent) — is 2.
pub fn exit_for_error(e: &anyhow::Error) -> Exit {
    if e.downcast_ref::<AfterSend>().is_some() {
        Exit::FailedAfterSend
    } else {
        Exit::Usage
    }
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<Exit> {
    let quiet = cli.quiet || cli.log_format == crate::cli::LogFormat::Json;
    let env = setup::GlobalArgs {
        quiet,
        config: cli.config.clone(),
    };
    match cli.command {
        Command::Run(args) => start::run(args, &env),
        Command::Refresh(args) => start::refresh(args, &env),
        Command::Inbox(args) => inbox::inbox(args, &env),
        Command::Change(args) => start::change(args, &env),
        Command::Retry(args) => retry::retry(args, &env),
        Command::Ce(crate::cli::CeCommand::RetryPayments(args)) => start::ce_retry(args, &env),
        Command::Config(crate::cli::ConfigCommand::Show { pace, token }) => {
            setup::config_show(&pace, &token, &env)
        }
        Command::Validate(args) => inspect::validate(args),
        Command::Export(args) => inspect::export(args),
        Command::Status(args) => inspect::status(args),
        Command::Runs(args) => inspect::runs(args),
        Command::Report(args) => inspect::report(args),
        Command::Completions(args) => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(args.shell, &mut cmd, "orderbatch", &mut std::io::stdout());
            Ok(Exit::Done)
        }
        #[cfg(feature = "sandbox")]
        Command::Sandbox(args) => sandbox::sandbox(args),
        #[cfg(feature = "sandbox")]
        Command::Demo(args) => execute::demo(args, quiet),
        Command::Serve(args) => serve::serve(args, &env),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}
