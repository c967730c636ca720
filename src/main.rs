//! The `orderbatch` binary: parse the command line, set up logging, run the
//! command, map the outcome to an exit code.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

use orderbatch::app;
use orderbatch::cli::{Cli, LogFormat};
use orderbatch::exit::Exit;

#[global_allocator]
static ALLOCATOR: orderbatch::alloc::Allocator = mimalloc::MiMalloc;

fn main() -> ExitCode {
    orderbatch::alloc::tune();
    let cli = Cli::parse();
    // Lines written before the process ends are flushed when this drops.
    let _log = init_logging(&cli);
    orderbatch::pipeline::shutdown::quit_on_second_signal(quit);
    match app::run(cli) {
        Ok(exit) => exit.into(),
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            app::exit_for_error(&e).into()
        }
    }
}

/// A second Ctrl-C or SIGTERM: out at once (the state is safe either way).
fn quit(exit: Exit) -> ! {
    std::process::exit(i32::from(exit.status()))
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Text (colour on a terminal unless NO_COLOR) or JSON lines on stderr;
/// RUST_LOG overrides the level that --quiet / -v / -vv choose. Lines go
/// through a writer thread (tracing-appender), so a slow stderr (a file, a
/// pipe to a log shipper) never sits on a request's path; it blocks
/// rather than drops lines when it falls far behind.
fn init_logging(cli: &Cli) -> tracing_appender::non_blocking::WorkerGuard {
    let default = match (cli.quiet, cli.verbose) {
        (true, 0) => "orderbatch=warn,warn",
        (_, 0) => "orderbatch=info,warn",
        (_, 1) => "orderbatch=debug,warn",
        _ => "orderbatch=trace,info",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match cli.log_format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
        LogFormat::Text => {
            let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            builder.with_ansi(color).init();
        }
    }
    guard
}
