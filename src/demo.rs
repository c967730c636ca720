//! `orderbatch demo`: the whole pipeline on the bundled sample against an
//! in-process sandbox, with no credentials needed.

use std::net::{Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;

use crate::config::AuthMethod;
use crate::pipeline::{self, PipelineError, RunOptions, RunSummary, Shutdown};
use crate::provider::paynearme::oauth::{ClientAuth, OAuthConfig};
use crate::provider::paynearme::{PnmAuth, PnmClient, PnmCredentials};
use crate::sandbox::{self, SandboxConfig};
use crate::store::Store;

/// The bundled sample, `samples/orders.csv`.
pub const SAMPLE: &str = include_str!("../samples/orders.csv");

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("demo folder {path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Export(#[from] crate::export::ExportError),
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// What the demo did.
pub struct DemoReport {
    pub summary: RunSummary,
    pub export: PathBuf,
    pub exported_rows: u64,
    pub sandbox_orders: usize,
}

/// Runs the sample into `dir/state.db` and `dir/export.csv`, starting fresh.
pub async fn run(
    dir: &Path,
    auth: AuthMethod,
    quiet: bool,
    shutdown: Shutdown,
) -> Result<DemoReport, DemoError> {
    let io = |source| DemoError::Io {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let input = dir.join("orders.csv");
    let db = dir.join("state.db");
    let export = dir.join("export.csv");
    std::fs::write(&input, SAMPLE).map_err(io)?;
    for stale in ["state.db", "state.db-wal", "state.db-shm"] {
        match std::fs::remove_file(dir.join(stale)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
            _ => {}
        }
    }

    let secret = SecretString::from(format!("demo-{}", rand::random::<u64>()));
    let mut config = SandboxConfig::new("S_DEMO", secret.clone());
    config.oauth_only = auth == AuthMethod::Oauth;
    let client_secret = config.client_secret.clone();
    let client_id = config.client_id.clone();
    let server = sandbox::start(config, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .map_err(io)?;
    let auth = match auth {
        AuthMethod::Hmac => PnmAuth::Hmac {
            secret,
            api_key_id: None,
        },
        AuthMethod::Oauth => PnmAuth::OAuth(OAuthConfig {
            token_url: server
                .token_url()
                .parse()
                .map_err(|e| DemoError::Client(format!("{e}")))?,
            client_id,
            client_secret,
            scope: None,
            client_auth: ClientAuth::Basic,
        }),
    };
    let credentials = PnmCredentials {
        base_url: server.base_url(),
        site_identifier: "S_DEMO".into(),
        auth,
    };
    let client = PnmClient::new(credentials, Duration::from_secs(10))
        .map_err(|e| DemoError::Client(e.to_string()))?;
    let options = RunOptions {
        spec: crate::pipeline::RunSpec::new(crate::pipeline::Mode::Run),
        input,
        db: db.clone(),
        rate: NonZeroU32::new(50),
        concurrency: 8,
        max_attempts: 8,
        retry_base: Duration::from_millis(200),
        settle: Duration::from_secs(5),
        max_errors: None,
        new_run: false,
        rejects: None,
        identity: Default::default(),
        quiet,
    };
    let clients = pipeline::Clients {
        pnm: Some(client),
        ce: None,
    };
    let summary = pipeline::run(&options, clients, shutdown)
        .await
        .map_err(|e| e.error)?;
    let store = Store::open_reader(&db).map_err(PipelineError::from)?;
    let exported_rows = crate::export::export(&store, summary.run_id, &export, Default::default())?;
    let sandbox_orders = server.state()["orders"].as_array().map_or(0, Vec::len);
    server.stop().await;
    Ok(DemoReport {
        summary,
        export,
        exported_rows,
        sandbox_orders,
    })
}
