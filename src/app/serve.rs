//! `orderbatch sandbox`.

use std::process::ExitCode;

use secrecy::SecretString;

use crate::cli::SandboxArgs;
use crate::sandbox;

pub fn sandbox(args: SandboxArgs) -> anyhow::Result<ExitCode> {
    if !args.listen.ip().is_loopback() && !args.allow_remote {
        anyhow::bail!(
            "--listen {} is not a loopback address; the sandbox is a test server with no real security. \
             Use 127.0.0.1, or add --allow-remote if you really mean it",
            args.listen
        );
    }
    let site = std::env::var("PNM_SITE_IDENTIFIER").unwrap_or_else(|_| "S_SANDBOX".into());
    let secret = std::env::var("PNM_SECRET_KEY").unwrap_or_else(|_| "sandbox-secret".into());
    let mut config = sandbox::SandboxConfig::new(site.clone(), SecretString::from(secret));
    config.strict_serial = args.strict_serial;
    config.seed = args.seed;
    config.latency_ms = args.latency_ms.map(|r| (r.0, r.1));
    config.fail_rate = args.fail_rate;
    config.drop_rate = args.drop_rate;
    config.rate_limit = args.rate_limit;
    super::runtime()?.block_on(async move {
        let server = sandbox::start(config, args.listen).await?;
        let addr = server.addr();
        eprintln!(
            "orderbatch sandbox: a TEST server, not PayNearMe. No real orders, no real money."
        );
        eprintln!(
            "listening on http://{addr} for site {site}; state at http://{addr}/__sandbox/state"
        );
        println!("http://{addr}");
        tokio::select! {
            _ = server.wait() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}
