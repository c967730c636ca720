//! What every command that sends requests builds before it sends anything:
//! its settings, its provider clients, the check of every path it writes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use crate::cli::PaceArgs;
use crate::config::{self, Settings, TokenOptions};
use crate::exit::Exit;
use crate::pipeline::{self, Mode};
use crate::provider::commerce_engine::CeClient;
use crate::provider::paynearme::PnmClient;
use crate::{report, report_html};

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

/// `orderbatch config show`.
pub fn config_show(
    pace: &PaceArgs,
    token: &TokenOptions,
    env: &GlobalArgs,
) -> anyhow::Result<Exit> {
    print!("{}", env.settings(pace, token)?.render());
    Ok(Exit::Done)
}

/// Checks that every file a run writes can be written, before it sends
/// anything: the state database (and its directory), the export, the
/// report and the rejects file.
pub(super) fn check_outputs(
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
/// `--settle-ms`, else twice the answer timeout, at least 10 s.
pub(super) fn settle(pace: &PaceArgs, settings: &Settings) -> Duration {
    pace.settle_ms.map_or_else(
        || Duration::from_secs(settings.timeout.value.saturating_mul(2).max(10)),
        Duration::from_millis,
    )
}

/// How `run` (and an inbox in run mode) settles order identities against
/// earlier runs, from `--check-existing`, `--same-orders`, `--new-orders`.
pub(super) fn identity(args: &crate::cli::IdentityArgs) -> pipeline::IdentityOptions {
    pipeline::IdentityOptions {
        check_existing: args.check_existing,
        same_orders: match (args.same_orders, args.new_orders) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        },
    }
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
