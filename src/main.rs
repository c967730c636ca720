//! The `orderbatch` binary: parse the command line, set up logging, run the
//! command, map the outcome to an exit code.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

use orderbatch::app::{self, EXIT_AFTER_SEND, EXIT_USAGE};
use orderbatch::cli::{Cli, LogFormat};

#[global_allocator]
static ALLOCATOR: orderbatch::alloc::Allocator = mimalloc::MiMalloc;

fn main() -> ExitCode {
    orderbatch::alloc::tune();
    let cli = Cli::parse();
    init_logging(&cli);
    match app::run(cli) {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        // The input changed under the run: nothing with the new values was
        // sent; the file, not the state, is what needs fixing.
        Err(e) if input_changed(&e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(e) if orderbatch::pipeline::requests_sent() => {
            eprintln!(
                "error: {e:#}\nrequests had already been sent: the state database keeps what was \
                 done; fix the cause and run the same command again to resume"
            );
            ExitCode::from(EXIT_AFTER_SEND)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

fn input_changed(e: &anyhow::Error) -> bool {
    use orderbatch::pipeline::PipelineError;
    e.chain().any(|c| {
        c.is::<orderbatch::input::fingerprint::InputChanged>()
            || matches!(
                c.downcast_ref::<PipelineError>(),
                Some(PipelineError::InputChanged(_))
            )
    })
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Text (colour on a terminal unless NO_COLOR) or JSON lines on stderr;
/// RUST_LOG overrides the level that --quiet / -v / -vv choose.
fn init_logging(cli: &Cli) {
    let default = match (cli.quiet, cli.verbose) {
        (true, 0) => "orderbatch=warn,warn",
        (_, 0) => "orderbatch=info,warn",
        (_, 1) => "orderbatch=debug,warn",
        _ => "orderbatch=trace,info",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
        LogFormat::Text => {
            let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            builder.with_ansi(color).init()
        }
    }
}
