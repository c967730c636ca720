//! `orderbatch sandbox`.

use crate::exit::Exit;

use secrecy::SecretString;

use crate::cli::SandboxArgs;
use crate::config::{env, env_secret};
use crate::sandbox;

pub fn sandbox(args: SandboxArgs) -> anyhow::Result<Exit> {
    if !args.listen.ip().is_loopback() && !args.allow_remote {
        anyhow::bail!(
            "--listen {} is not a loopback address; the sandbox is a test server with no real security. \
             Use 127.0.0.1, or add --allow-remote if you really mean it",
            args.listen
        );
    }
    let site = env("PNM_SITE_IDENTIFIER").unwrap_or_else(|| "S_SANDBOX".into());
    let key = env_secret("PNM_SECRET_KEY")?.unwrap_or_else(|| SecretString::from("sandbox-secret"));
    let mut config = sandbox::SandboxConfig::new(site.clone(), key);
    config.api_key_id = env("PNM_API_KEY_ID");
    if let Some(id) = env("PNM_CLIENT_ID") {
        config.client_id = id;
    }
    if let Some(client_secret) = env_secret("PNM_CLIENT_SECRET")? {
        config.client_secret = client_secret;
    }
    config.token_lifetime = std::time::Duration::from_secs(args.token_lifetime.max(1));
    config.oauth_only = args.oauth_only;
    config.hostile_values = args.hostile_values;
    config.poison_customer = args.poison_customer.clone();
    config.lookup_hides = args.lookup_hides.clone();
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
        eprintln!(
            "OAuth token endpoint: http://{addr}/oauth/token{}",
            if args.oauth_only {
                " (OAuth only: signed requests are refused)"
            } else {
                ""
            }
        );
        println!("http://{addr}");
        tokio::select! {
            _ = server.wait() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(Exit::Done)
}
