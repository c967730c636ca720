//! Command-line definitions and help text.
// Doc comments here are `--help` text, shown as written (`<db>`, bare URLs).
#![allow(rustdoc::invalid_html_tags, rustdoc::bare_urls)]

use std::num::NonZeroU32;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::TokenOptions;

const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (state schema ",
    env!("ORDERBATCH_SCHEMA_VERSION"),
    ")"
);

#[derive(Debug, Parser)]
#[command(
    name = "orderbatch",
    version = VERSION,
    about = "Push bulk order batches through PayNearMe safely, resumably, and exactly as fast as the provider allows.",
    after_help = crate::exit::help()
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// No progress display and warnings only.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// Config file (default: ./orderbatch.toml when present; samples/orderbatch.toml documents every key).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// More log detail: -v for every request, -vv for everything (RUST_LOG overrides).
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Log format on stderr: `text`, or `json` (one object per line; no progress bars).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create an order for every CSV row, refresh its embedded JS URL and issue its smart token.
    #[command(after_help = RUN_HELP)]
    Run(RunArgs),
    /// Regenerate embedded JS URLs and smart tokens for orders that already exist (the nightly job).
    #[command(after_help = REFRESH_HELP)]
    Refresh(RefreshArgs),
    /// Run every ready file of a drop folder (run or refresh), each exactly once by content, then archive it (the nightly job).
    #[command(after_help = INBOX_HELP)]
    Inbox(InboxArgs),
    /// Change existing orders in bulk (change_order), each exactly once.
    #[command(after_help = CHANGE_HELP)]
    Change(ChangeArgs),
    /// Commerce Engine storefront commands.
    #[command(subcommand)]
    Ce(CeCommand),
    /// Put a run's failed rows back in the queue and run them again.
    #[command(
        after_help = "Re-reads the run's input file (it must be unchanged).\n\nExample:\n  orderbatch retry --db nightly.db --error-code timeout --export links.csv"
    )]
    Retry(RetryArgs),
    /// Check an order CSV without sending anything.
    #[command(
        after_help = "Exit 0 when every row is valid, 1 when some are rejected, 2 when the file itself is unusable.\n\nExample:\n  orderbatch validate orders.csv --rejects rejects.csv"
    )]
    Validate(ValidateArgs),
    /// Write a run's results (URLs, tokens, links, errors) to CSV.
    #[command(after_help = "Example:\n  orderbatch export --db state.db --out links.csv")]
    Export(ExportArgs),
    /// Serve a local stand-in for the PayNearMe API (a TEST server; no real orders).
    #[cfg(feature = "sandbox")]
    #[command(after_help = SANDBOX_HELP)]
    Sandbox(SandboxArgs),
    /// Show each run of a state database: rows per state, requests, throughput, ETA, top errors.
    #[command(
        after_help = "Works while a run is going on in another process.\n\nExample:\n  orderbatch status --db nightly.db --json | jq '.runs[-1].states'"
    )]
    Status(StatusArgs),
    /// List the runs in a state database.
    #[command(after_help = "Example:\n  orderbatch runs --db nightly.db")]
    Runs(RunsArgs),
    /// Write a run's HTML report (summary, plots of rate, outcomes and latency over time).
    #[command(
        after_help = "Works while a run is going on in another process. Every run also writes\n<db>.report.html beside <db>.report.md.\n\nExample:\n  orderbatch report --db nightly.db --html nightly.html"
    )]
    Report(ReportArgs),
    /// Show the effective configuration and where each value comes from (the secret redacted).
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print a shell completion script.
    #[command(
        after_help = "Example:\n  orderbatch completions bash > /etc/bash_completion.d/orderbatch"
    )]
    Completions(CompletionsArgs),
    /// Rehearse the whole pipeline on the bundled sample against an in-process sandbox.
    #[cfg(feature = "sandbox")]
    #[command(
        after_help = "Example:\n  orderbatch demo            # writes ./orderbatch-demo/{state.db,export.csv}"
    )]
    Demo(DemoArgs),
    /// Serve just-in-time embedded JS URLs and smart links for agents from a state database.
    #[command(after_help = SERVE_HELP)]
    Serve(ServeArgs),
}

const SERVE_HELP: &str = "\
Every endpoint but /healthz needs Authorization: Bearer <token>, the token
from ORDERBATCH_SERVE_TOKEN or ORDERBATCH_SERVE_TOKEN_FILE (mode 600).
Provider settings as for `refresh` (PNM_BASE_URL, PNM_SITE_IDENTIFIER, and
OAuth or HMAC credentials). Runs beside a nightly run on the same --db.

  GET /v1/orders/{site_order_identifier}/embedded-js-url
      the stored URL while it has --min-validity left, else one
      refresh_embedded_js_urls with force=true for that order (stored,
      then returned; \"min_validity_met\": false when even the new one
      has less left)
  GET /v1/orders/{site_order_identifier}/smart-link
      a fresh get_smart_token with the options of the order's run
  GET /healthz     GET /metrics (Prometheus text)

Concurrent callers for one order share one provider call; none waits
longer than --max-wait. Errors are JSON {\"error\":{\"code\",\"message\"}}:
400 bad path, 401, 404 unknown order or path, 405, 502 the provider
refused, 503 (with Retry-After) rate limited, down, too slow, or the
database locked.

Example:
  export ORDERBATCH_SERVE_TOKEN_FILE=/etc/orderbatch/serve-token
  orderbatch serve --db state/orders.db --listen 127.0.0.1:8787 --rate 20
  curl -H \"Authorization: Bearer $(cat /etc/orderbatch/serve-token)\" \\
    http://127.0.0.1:8787/v1/orders/ORD-1001/embedded-js-url";

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// State database whose orders to serve (a run may be writing it).
    #[arg(long)]
    pub db: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8787")]
    pub listen: std::net::SocketAddr,
    /// Allow listening on a non-loopback address (put TLS in front of it).
    #[arg(long)]
    pub allow_remote: bool,
    /// Refresh a stored URL that has less than this left (e.g. 5m, 90s).
    #[arg(long, default_value = "5m", value_parser = parse_serve_duration)]
    pub min_validity: std::time::Duration,
    /// The longest a caller waits for the provider before a 503 with Retry-After (e.g. 5s); concurrent callers for one order share one provider call.
    #[arg(long, default_value = "5s", value_parser = parse_serve_wait)]
    pub max_wait: std::time::Duration,
    /// Close a connection that has not sent a whole request header for this long, idle keep-alive connections included.
    #[arg(long, default_value = "15s", value_parser = parse_serve_wait)]
    pub idle_timeout: std::time::Duration,
    /// Connections open at once (keep it well under `ulimit -n`); more wait to be accepted.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_connections: u32,
    /// After SIGTERM or Ctrl-C, how long requests in flight may take to finish before the rest are closed.
    #[arg(long, default_value = "10s", value_parser = parse_serve_duration)]
    pub shutdown_timeout: std::time::Duration,
    #[command(flatten)]
    pub pace: PaceArgs,
}

const RUN_HELP: &str = "\
Credentials come from the environment, never from the command line:
  PNM_SITE_IDENTIFIER and PNM_BASE_URL (or --base-url; no default), then
  OAuth 2.0 (sites onboarded since 2026-08-01): PNM_CLIENT_ID,
    PNM_CLIENT_SECRET (or PNM_CLIENT_SECRET_FILE, mode 600), PNM_TOKEN_URL,
    optional PNM_TOKEN_SCOPE;
  or HMAC (existing sites): PNM_SECRET_KEY (or PNM_SECRET_KEY_FILE, mode 600),
    optional PNM_API_KEY_ID.

The CSV header names PayNearMe create_order parameters; order_amount,
order_currency, site_customer_identifier, order_type and order_is_standing are
required. Rows without site_order_identifier get a stable one derived from
the file's fingerprint and row number.

Run the same command again after a crash or Ctrl-C: it resumes, never
creating an order twice.

Example:
  export PNM_SITE_IDENTIFIER=S1234 PNM_SECRET_KEY_FILE=~/.pnm-secret
  orderbatch run orders.csv --db nightly.db --export links.csv \\
      --base-url https://api.paynearme-sandbox.com --rate 20";

const REFRESH_HELP: &str = "\
Each row names orders by pnm_order_identifier, site_order_identifier,
pnm_customer_identifier or site_customer_identifier (the first non-empty one,
in that order). A customer row pages through all that customer's orders and
gives one export row per order. Without --force the provider regenerates only
expired URLs.

Example:
  orderbatch refresh nightly-orders.csv --db nightly.db --export links.csv --flow debit,ach";

const CHANGE_HELP: &str = "\
Each row names its order by pnm_order_identifier, or site_order_identifier
(looked up first), plus the columns to change (change_order parameters).
A resumed run never changes an order twice.

Example:
  orderbatch change new-amounts.csv --db backfill.db --export changed.csv";

#[cfg(feature = "sandbox")]
const SANDBOX_HELP: &str = "\
Accepts requests signed with PNM_SITE_IDENTIFIER / PNM_SECRET_KEY (or
PNM_SECRET_KEY_FILE) from the environment (defaults: S_SANDBOX /
sandbox-secret); with PNM_API_KEY_ID set, requests must carry that
api_key_id. OAuth 2.0: POST /oauth/token gives Bearer tokens to
PNM_CLIENT_ID / PNM_CLIENT_SECRET (or PNM_CLIENT_SECRET_FILE; defaults:
sandbox-client / sandbox-client-secret); --oauth-only refuses signed
requests. State is in memory; GET /__sandbox/state shows orders and
counters.

Example:
  orderbatch sandbox --listen 127.0.0.1:8099
  PNM_BASE_URL=http://127.0.0.1:8099 PNM_SITE_IDENTIFIER=S_SANDBOX \\
    PNM_SECRET_KEY=sandbox-secret orderbatch run samples/orders.csv --db s.db";

/// `--rate`: requests per second, or `unlimited` (`None`).
#[derive(Debug, Clone, Copy)]
pub struct Rate(pub Option<NonZeroU32>);

fn parse_rate(s: &str) -> Result<Rate, String> {
    if s == "unlimited" {
        return Ok(Rate(None));
    }
    s.parse::<NonZeroU32>().map(|r| Rate(Some(r))).map_err(|_| {
        format!("`{s}` is not a positive whole number of requests per second, or `unlimited`")
    })
}

/// `MIN,MAX`: an inclusive range of whole numbers.
#[derive(Debug, Clone, Copy)]
pub struct Range(pub u64, pub u64);

#[cfg(feature = "sandbox")]
fn parse_range(s: &str) -> Result<Range, String> {
    let parsed = s
        .split_once(',')
        .and_then(|(a, b)| Some(Range(a.trim().parse().ok()?, b.trim().parse().ok()?)));
    match parsed {
        Some(r) if r.0 <= r.1 => Ok(r),
        _ => Err(format!("`{s}` is not MIN,MAX with MIN <= MAX, e.g. 20,80")),
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Order CSV (header names PayNearMe parameters).
    pub input: PathBuf,
    /// State database; the same command with the same --db resumes.
    #[arg(long)]
    pub db: PathBuf,
    /// Write the results to this CSV when the run ends.
    #[arg(long)]
    pub export: Option<PathBuf>,
    #[command(flatten)]
    pub identity: IdentityArgs,
    #[command(flatten)]
    pub token: TokenOptions,
    #[command(flatten)]
    pub columns: ColumnArgs,
    #[command(flatten)]
    pub rejects: RejectsArgs,
    #[command(flatten)]
    pub outcome: OutcomeArgs,
    #[command(flatten)]
    pub pace: PaceArgs,
}

const INBOX_HELP: &str = "\
Takes every file of DIR that matches --pattern and is ready, oldest first
(modification time, then name), and runs it as `run` (--mode run) or
`refresh` (--mode refresh) would, with the same flags. Dotfiles and uploads
in progress by name (*.filepart, *.part, *.partial, *.tmp, *.crdownload) are
never taken. Ready means --ready stable:DURATION (size and times unchanged
that long) or --ready marker:SUFFIX (orders.csv once orders.csv.done exists;
the marker moves with the file).

Each file is run once by content: a file whose content this --db has
finished is archived without running again (a note names the run); a file
whose run was cut short resumes. Finished files (exit 0 or 1) move with
their export, rejects and reports into --done/YYYY-MM-DD/ (the UTC day the
run finished); refused files (header, quoting, unreadable) into
--failed/YYYY-MM-DD/ with <name>.error.txt; stopped, deferred or
interrupted ones stay. The exit code is the worst of the files' codes.

--watch keeps going, a pass every --interval; SIGTERM or Ctrl-C stops it
after the work in flight is recorded (exit 143 / 130).

Examples:
  orderbatch inbox /srv/sftp/site1/in --db /var/lib/orderbatch/site1.db --rate 20
  orderbatch inbox in --db state.db --mode refresh --ready marker:.done --dry-run
  orderbatch inbox in --db state.db --watch --interval 5m";

/// How `inbox` runs each file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InboxMode {
    /// Create the orders (`orderbatch run`).
    Run,
    /// Refresh URLs and issue tokens for existing orders (`orderbatch refresh`).
    Refresh,
}

#[derive(Debug, Args)]
pub struct InboxArgs {
    /// The drop folder.
    pub dir: PathBuf,
    /// State database; one inbox at a time per database.
    #[arg(long)]
    pub db: PathBuf,
    /// What each file goes through.
    #[arg(long, value_enum, default_value_t = InboxMode::Run)]
    pub mode: InboxMode,
    /// Which file names are taken (`*` and `?`).
    #[arg(long, default_value = "*.csv")]
    pub pattern: String,
    /// When a file is ready: stable:DURATION (e.g. stable:30s) or marker:SUFFIX (e.g. marker:.done).
    #[arg(long, default_value = "stable:30s", value_parser = crate::inbox::Ready::parse)]
    pub ready: crate::inbox::Ready,
    /// Where finished files go, in a folder per day (default: DIR/done).
    #[arg(long)]
    pub done: Option<PathBuf>,
    /// Where refused files go, in a folder per day (default: DIR/failed).
    #[arg(long)]
    pub failed: Option<PathBuf>,
    /// List what would be taken, skipped (and why) and archived; send and move nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Keep running: a pass every --interval, until SIGTERM or Ctrl-C.
    #[arg(long)]
    pub watch: bool,
    /// Time between passes with --watch (e.g. 60s, 5m).
    #[arg(long, default_value = "60s", value_parser = parse_serve_wait, requires = "watch")]
    pub interval: std::time::Duration,
    /// Keep customer PII in each file's rejects file instead of `[redacted]`.
    #[arg(long)]
    pub rejects_include_pii: bool,
    /// Prefix export and rejects cells a spreadsheet would run as a formula with `'`.
    #[arg(long)]
    pub spreadsheet_safe: bool,
    #[command(flatten)]
    pub identity: IdentityArgs,
    #[command(flatten)]
    pub steps: RefreshSteps,
    #[command(flatten)]
    pub token: TokenOptions,
    #[command(flatten)]
    pub columns: ColumnArgs,
    #[command(flatten)]
    pub pace: PaceArgs,
}

/// How `run` settles order identities against earlier runs and the provider.
#[derive(Debug, Args)]
pub struct IdentityArgs {
    /// Before creating an order whose site_order_identifier no run of this --db knows, ask the provider (find_orders) whether it exists already (a new machine, a lost database, orders sent by another tool); an existing one is adopted.
    #[arg(long)]
    pub check_existing: bool,
    /// A file without site_order_identifier whose rows match an earlier run's by content: adopt the earlier orders for the matching rows.
    #[arg(long, conflicts_with = "new_orders")]
    pub same_orders: bool,
    /// A file without site_order_identifier whose rows match an earlier run's by content: create every row's order anew.
    #[arg(long)]
    pub new_orders: bool,
}

/// Which of `refresh`'s steps run.
#[derive(Debug, Args)]
pub struct RefreshSteps {
    /// Regenerate every URL, not only expired ones.
    #[arg(long)]
    pub force: bool,
    /// Skip the URL step: only look orders up and issue tokens.
    #[arg(long)]
    pub no_urls: bool,
    /// Skip the smart-token step.
    #[arg(long)]
    pub no_token: bool,
}

#[derive(Debug, Subcommand)]
pub enum CeCommand {
    /// Re-issue payment requests (retry-payment) for orders whose payment failed or expired.
    #[command(after_help = CE_HELP)]
    RetryPayments(CeRetryArgs),
}

const CE_HELP: &str = "\
Credentials come from the environment: CE_BASE_URL (API host), CE_STORE_ID, and
CE_API_KEY (or CE_API_KEY_FILE, mode 600) or CE_ACCESS_TOKEN (+ CE_REFRESH_TOKEN).

Each row names an order_number; optional columns payment_provider_slug,
integration_type, return_url, action, gateway_reference_id override the flags.
Paid orders are skipped; a retry is allowed 15 minutes after the previous
payment request, or at once when it failed. Rows whose window opens within
--max-wait are waited for; the others stay scheduled, the run exits 4, and the
same command later picks them up.

Example:
  orderbatch ce retry-payments outage.csv --db ce.db --export links.csv --max-wait 20m";

/// `20m`, `90s`, `1h`, or plain seconds.
/// The longest duration serve takes for any flag.
const SERVE_DURATION_MAX: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// A duration of serve's: bare seconds (`90`) or humantime (`90s`, `5m`,
/// `1h 30m`, `500ms`), at most a day.
fn parse_serve_duration(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    let d = if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        t.parse::<u64>()
            .map(std::time::Duration::from_secs)
            .map_err(|_| format!("`{s}` is too large"))?
    } else {
        humantime::parse_duration(t)
            .map_err(|e| format!("`{s}` is not a duration like 20m, 90s or 1h ({e})"))?
    };
    if d > SERVE_DURATION_MAX {
        return Err(format!("`{s}` is more than a day"));
    }
    Ok(d)
}

/// As [`parse_serve_duration`], and more than zero.
fn parse_serve_wait(s: &str) -> Result<std::time::Duration, String> {
    let d = parse_serve_duration(s)?;
    if d.is_zero() {
        return Err(format!("`{s}` must be more than zero"));
    }
    Ok(d)
}

fn parse_duration(s: &str) -> Result<u64, String> {
    let (number, unit) = s.trim().split_at(
        s.trim()
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(s.trim().len()),
    );
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 20m, 90s or 1h"))?;
    let seconds = match unit {
        "" | "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        _ => return Err(format!("`{s}` is not a duration like 20m, 90s or 1h")),
    };
    seconds
        .filter(|&s| i64::try_from(s).is_ok())
        .ok_or_else(|| format!("`{s}` is too long"))
}

#[derive(Debug, Args)]
pub struct CeRetryArgs {
    /// CSV with an order_number column.
    pub input: PathBuf,
    /// State database; the same command with the same --db resumes.
    #[arg(long)]
    pub db: PathBuf,
    /// Write the results to this CSV when the run ends.
    #[arg(long)]
    pub export: Option<PathBuf>,
    /// Wait for retry windows that open within this long (e.g. 20m, 90s); later ones are left for the next run (exit 4).
    #[arg(long, default_value = "20m", value_parser = parse_duration)]
    pub max_wait: u64,
    /// Default payment_provider_slug (the payment_method is sent only when a slug is known).
    #[arg(long)]
    pub payment_provider_slug: Option<String>,
    /// Default integration_type.
    #[arg(long)]
    pub integration_type: Option<String>,
    /// Default return_url.
    #[arg(long)]
    pub return_url: Option<String>,
    /// Default action (paymentPage when not given).
    #[arg(long)]
    pub action: Option<String>,
    #[command(flatten)]
    pub columns: ColumnArgs,
    #[command(flatten)]
    pub rejects: RejectsArgs,
    #[command(flatten)]
    pub outcome: OutcomeArgs,
    #[command(flatten)]
    pub pace: PaceArgs,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print every setting with its source: command line > environment > config file > default.
    #[command(
        after_help = "Example:\n  orderbatch config show --config /etc/orderbatch.toml --rate 20"
    )]
    Show {
        #[command(flatten)]
        pace: PaceArgs,
        #[command(flatten)]
        token: TokenOptions,
    },
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// State database.
    #[arg(long)]
    pub db: PathBuf,
    /// Print JSON: {"runs":[{run_id, command, input, total, states, requests, errors, started_at, finished_at, ...}]}.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// State database.
    #[arg(long)]
    pub db: PathBuf,
    /// The run (default: the newest).
    #[arg(long)]
    pub run: Option<i64>,
    /// The HTML file to write (mode 600).
    #[arg(long)]
    pub html: PathBuf,
}

#[derive(Debug, Args)]
pub struct RunsArgs {
    /// State database.
    #[arg(long)]
    pub db: PathBuf,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// Shell to complete for.
    pub shell: clap_complete::Shell,
}

/// Report and dry-run switches of commands that send requests.
#[derive(Debug, Args)]
pub struct OutcomeArgs {
    /// Validate and print what would be sent (rows, requests per endpoint, duration) without sending anything or touching the state database.
    #[arg(long)]
    pub dry_run: bool,
    /// Where to write the Markdown run report (default: <db>.report.md; JSON beside it).
    #[arg(long)]
    pub report: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RefreshArgs {
    /// CSV of order or customer identifiers (and optional token columns).
    pub input: PathBuf,
    /// State database; the same command with the same --db resumes.
    #[arg(long)]
    pub db: PathBuf,
    /// Write one row per order found to this CSV when the run ends.
    #[arg(long)]
    pub export: Option<PathBuf>,
    #[command(flatten)]
    pub steps: RefreshSteps,
    /// Start a new run even when this --db finished one of the same file (a nightly refresh of an unchanged file).
    #[arg(long)]
    pub new_run: bool,
    #[command(flatten)]
    pub token: TokenOptions,
    #[command(flatten)]
    pub columns: ColumnArgs,
    #[command(flatten)]
    pub rejects: RejectsArgs,
    #[command(flatten)]
    pub outcome: OutcomeArgs,
    #[command(flatten)]
    pub pace: PaceArgs,
}

#[derive(Debug, Args)]
pub struct ChangeArgs {
    /// CSV of pnm_order_identifier or site_order_identifier plus the columns to change.
    pub input: PathBuf,
    /// State database; the same command with the same --db resumes.
    #[arg(long)]
    pub db: PathBuf,
    /// Write the results to this CSV when the run ends.
    #[arg(long)]
    pub export: Option<PathBuf>,
    #[command(flatten)]
    pub columns: ColumnArgs,
    #[command(flatten)]
    pub rejects: RejectsArgs,
    #[command(flatten)]
    pub outcome: OutcomeArgs,
    #[command(flatten)]
    pub pace: PaceArgs,
}

#[derive(Debug, Args)]
pub struct RetryArgs {
    /// State database of the run.
    #[arg(long)]
    pub db: PathBuf,
    /// Run to retry (default: the newest).
    #[arg(long)]
    pub run: Option<i64>,
    /// Retry only rows that failed with this error code (e.g. timeout, invalid_parameter).
    #[arg(long)]
    pub error_code: Option<String>,
    /// Write the results to this CSV when the run ends.
    #[arg(long)]
    pub export: Option<PathBuf>,
    /// Where to write the Markdown run report (default: <db>.report.md; JSON beside it).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Prefix export cells a spreadsheet would run as a formula with `'` (default: byte for byte).
    #[arg(long)]
    pub spreadsheet_safe: bool,
    #[command(flatten)]
    pub pace: PaceArgs,
}

/// How a run talks to the provider: where, how fast, how patiently.
#[derive(Debug, Args)]
pub struct PaceArgs {
    /// Provider base URL, e.g. https://api.paynearme-sandbox.com [env: PNM_BASE_URL; config: base_url]
    #[arg(long)]
    pub base_url: Option<String>,
    /// PayNearMe authentication: `oauth` (client credentials; sites onboarded since 2026-08-01) or `hmac` (signed with the secret key) [config: auth; default: oauth when PNM_CLIENT_ID is set, else hmac]
    #[arg(long, value_enum)]
    pub auth: Option<crate::config::AuthMethod>,
    /// Requests per second across all endpoints, or `unlimited` [config: rate; default: 10]
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<Rate>,
    /// Requests in flight at once [config: concurrency; default: 8]
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub concurrency: Option<u16>,
    /// Seconds to wait for each answer [config: timeout; default: 30]
    #[arg(long)]
    pub timeout: Option<u64>,
    /// Tries per request for timeouts, dropped connections and 5xx answers.
    #[arg(long, default_value_t = 8)]
    pub max_attempts: u32,
    /// Stop taking new rows after this many rows failed (exit 3, state kept).
    #[arg(long)]
    pub max_errors: Option<u64>,
    /// First retry delay in milliseconds (doubles each retry, with jitter).
    #[arg(long, default_value_t = 500, hide = true)]
    pub retry_base_ms: u64,
    /// How long (ms) a request that got no answer (a timeout, a dropped
    /// connection, a killed run) may still be running at the provider. A
    /// create or change is looked up only after that, so a late landing is
    /// found instead of sent twice; a token or forced URL is not asked for
    /// again before it, so the one recorded is the provider's last. Raise it
    /// if the provider can take longer than this to finish a request
    /// [default: twice --timeout, at least 10000].
    #[arg(long, env = "ORDERBATCH_SETTLE_MS")]
    pub settle_ms: Option<u64>,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Order CSV to check.
    pub input: PathBuf,
    #[command(flatten)]
    pub columns: ColumnArgs,
    #[command(flatten)]
    pub rejects: RejectsArgs,
}

/// Where rejected rows go.
#[derive(Debug, Args)]
pub struct RejectsArgs {
    /// Write every rejected row (original columns, then `line` and `error`) to this CSV.
    #[arg(long)]
    pub rejects: Option<PathBuf>,
    /// Keep customer PII (names, e-mail, phone, address, ...) in the rejects file instead of `[redacted]`.
    #[arg(long, requires = "rejects")]
    pub rejects_include_pii: bool,
    /// Prefix every cell of the export and rejects files that a spreadsheet would run as a formula (`=`, `+`, `-`, `@`) with `'`. Off by default: values are written byte for byte, as scripts need them.
    #[arg(long)]
    pub spreadsheet_safe: bool,
}

/// Columns the tool does not know.
#[derive(Debug, Args)]
pub struct ColumnArgs {
    /// Extra columns sent verbatim (your site's own parameters), comma separated.
    #[arg(long, value_delimiter = ',')]
    pub pass_through: Vec<String>,
    /// Ignore unknown columns (they are not sent) instead of refusing the file.
    #[arg(long)]
    pub allow_unknown_columns: bool,
}

impl PaceArgs {
    /// The flags settings resolve, with the token options given.
    pub fn flags(&self, token: &TokenOptions) -> crate::config::Flags {
        crate::config::Flags {
            base_url: self.base_url.clone(),
            auth: self.auth,
            rate: self.rate.map(|r| r.0),
            concurrency: self.concurrency,
            timeout: self.timeout,
            token: token.clone(),
        }
    }
}

impl RejectsArgs {
    /// The rejects file asked for, if any.
    pub fn file(&self) -> Option<crate::input::rejects::RejectsFile> {
        self.rejects
            .clone()
            .map(|path| crate::input::rejects::RejectsFile {
                path,
                include_pii: self.rejects_include_pii,
                cells: crate::cells::Cells::from_flag(self.spreadsheet_safe),
            })
    }
}

impl ColumnArgs {
    pub fn options(&self) -> crate::input::ColumnOptions {
        crate::input::ColumnOptions {
            pass_through: self.pass_through.clone(),
            allow_unknown: self.allow_unknown_columns,
        }
    }
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// State database of the run.
    #[arg(long)]
    pub db: PathBuf,
    /// CSV to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Run to export (default: the newest).
    #[arg(long)]
    pub run: Option<i64>,
    /// Prefix cells a spreadsheet would run as a formula with `'` (default: byte for byte).
    #[arg(long)]
    pub spreadsheet_safe: bool,
}

#[cfg(feature = "sandbox")]
#[derive(Debug, Args)]
pub struct SandboxArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8099")]
    pub listen: std::net::SocketAddr,
    /// Allow listening on a non-loopback address.
    #[arg(long)]
    pub allow_remote: bool,
    /// Each request takes a random time in MIN,MAX milliseconds (e.g. 20,80).
    #[arg(long, value_parser = parse_range)]
    pub latency_ms: Option<Range>,
    /// Answer 409 customer_busy to overlapping requests for one customer.
    #[arg(long)]
    pub strict_serial: bool,
    /// Seed for the sandbox's randomness (faults, latency, tokens).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Share of requests (0 to 1) answered 500 before anything is done.
    #[arg(long, default_value_t = 0.0, value_parser = parse_share)]
    pub fail_rate: f64,
    /// Share of requests (0 to 1) whose work is done but whose connection is closed without an answer.
    #[arg(long, default_value_t = 0.0, value_parser = parse_share)]
    pub drop_rate: f64,
    /// Answer 429 with Retry-After above this many requests per second.
    #[arg(long)]
    pub rate_limit: Option<u32>,
    /// Seconds an OAuth access token from POST /oauth/token lives.
    #[arg(long, default_value_t = 3600)]
    pub token_lifetime: u64,
    /// Refuse requests without a Bearer token (401 oauth_required), like a site onboarded since 2026-08-01.
    #[arg(long)]
    pub oauth_only: bool,
    /// Issue smart tokens that begin with - = + @ and URLs holding commas, quotes and line breaks (to check that exports keep them byte for byte).
    #[arg(long)]
    pub hostile_values: bool,
    /// Answer 500 to every request for this site_customer_identifier (a customer in trouble).
    #[arg(long)]
    pub poison_customer: Option<String>,
    /// Fields find_orders leaves out of its orders (comma-separated), like a
    /// provider whose lookup does not show every field change_order sets.
    #[arg(long, value_delimiter = ',')]
    pub lookup_hides: Vec<String>,
}

#[cfg(feature = "sandbox")]
fn parse_share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!("`{s}` is not a share between 0 and 1, e.g. 0.05")),
    }
}

#[cfg(feature = "sandbox")]
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Folder for the demo's state database, input copy and export.
    #[arg(long, default_value = "orderbatch-demo")]
    pub dir: PathBuf,
    /// Authenticate the way an OAuth-only site does (`oauth`), or sign requests (`hmac`).
    #[arg(long, value_enum, default_value_t = crate::config::AuthMethod::Hmac)]
    pub auth: crate::config::AuthMethod,
}
