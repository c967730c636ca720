//! `orderbatch serve`: the command edge of the links server
//! ([`crate::serve`]): its token, settings and client, then serving until
//! Ctrl-C or SIGTERM.

use std::time::Duration;

use super::runtime;
use super::setup::GlobalArgs;
use crate::config::{self, TokenOptions};
use crate::exit::Exit;
use crate::provider::paynearme::PnmClient;

/// `orderbatch serve`.
pub fn serve(args: crate::cli::ServeArgs, env: &GlobalArgs) -> anyhow::Result<Exit> {
    if !args.listen.ip().is_loopback() && !args.allow_remote {
        anyhow::bail!(
            "--listen {} is not a loopback address; add --allow-remote to serve other machines, \
             and put TLS in front of it (the bearer token travels with every request)",
            args.listen
        );
    }
    let Some(token) = config::env_secret("ORDERBATCH_SERVE_TOKEN")? else {
        anyhow::bail!(
            "ORDERBATCH_SERVE_TOKEN is not set; serve refuses to start without a bearer token: \
             set it, or ORDERBATCH_SERVE_TOKEN_FILE to a file (mode 600) that holds it"
        );
    };
    if !crate::serve::sendable_token(secrecy::ExposeSecret::expose_secret(&token)) {
        anyhow::bail!(
            "the serve token is not one word a client can send after `Bearer ` (letters, digits \
             and - . _ ~ + /, then any =; no spaces, line breaks or other characters)"
        );
    }
    if secrecy::ExposeSecret::expose_secret(&token).len() < 16 {
        anyhow::bail!("the serve token is shorter than 16 characters; use a long random one");
    }
    let settings = env.settings(&args.pace, &TokenOptions::default())?;
    let timeout = Duration::from_secs(settings.timeout.value);
    let client = PnmClient::new(settings.credentials()?, timeout)?;
    let config = crate::serve::LinksConfig {
        db: args.db.clone(),
        token,
        min_validity: args.min_validity,
        rate: settings.rate.value,
        concurrency: usize::from(settings.concurrency.value),
        max_attempts: args.pace.max_attempts,
        retry_base: Duration::from_millis(args.pace.retry_base_ms),
        max_wait: args.max_wait,
        settle: super::setup::settle(&args.pace, &settings),
        client,
        limits: crate::serve::ConnectionLimits {
            idle_timeout: args.idle_timeout,
            max_connections: args.max_connections as usize,
            shutdown_timeout: args.shutdown_timeout,
        },
    };
    runtime()?.block_on(async move {
        let links = crate::serve::Links::bind(config, args.listen).await?;
        let addr = links.addr()?;
        println!("http://{addr}");
        eprintln!(
            "orderbatch serve: links from {} on http://{addr}",
            args.db.display()
        );
        links.serve(stop_signal()).await?;
        eprintln!("orderbatch serve: stopped");
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(Exit::Done)
}

/// Resolves on Ctrl-C or SIGTERM.
async fn stop_signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
