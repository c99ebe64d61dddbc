//! `tabacco agent`: run the agent until SIGTERM or SIGINT; SIGHUP reloads
//! the configuration.

use std::path::Path;
use std::sync::Arc;

use clap::Args;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tracing::info;

use super::{CliError, load_config, open_stores};
use crate::agent::{Agent, DEFAULT_HTTP_ADDR, Event};
use crate::config_manager::ConfigManager;
use crate::schedule::Seed;

/// Arguments of `tabacco agent`.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Address of the status page, `/api/status` and `/metrics` (port 0:
    /// any free port, logged at start).
    #[arg(long, env = "TABACCO_HTTP_ADDR", default_value = DEFAULT_HTTP_ADDR)]
    pub http_addr: String,
}

/// Run the agent; returns when it has stopped.
pub async fn run(config_path: &Path, args: AgentArgs) -> Result<(), CliError> {
    // Signal handlers first: a SIGHUP or SIGTERM that arrives while we start
    // must not kill the process with the default action.
    let signals = [
        (SignalKind::hangup(), Event::Reload, "SIGHUP"),
        (SignalKind::terminate(), Event::Shutdown, "SIGTERM"),
        (SignalKind::interrupt(), Event::Shutdown, "SIGINT"),
    ];
    let (tx, rx) = mpsc::channel(16);
    for (kind, event, name) in signals {
        let mut stream = signal(kind).map_err(|e| {
            CliError::failed(anyhow::anyhow!("cannot install the {name} handler: {e}"))
        })?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                info!("received {name}");
                if tx.send(event).await.is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);

    let config = load_config(config_path)?;
    let seed = Seed::load_or_create(&config.random_seed_file).map_err(CliError::failed)?;
    let stores = open_stores(&config).await?;
    let manager = ConfigManager::new(Arc::clone(&config)).map_err(CliError::usage)?;
    let listener = tokio::net::TcpListener::bind(&args.http_addr)
        .await
        .map_err(|e| {
            CliError::failed(anyhow::anyhow!(
                "cannot listen on {} for the status page: {e} (is another agent running? choose another address with --http-addr)",
                args.http_addr
            ))
        })?;
    let addr = listener.local_addr().map_err(CliError::failed)?;
    info!(addr = %addr, "status page listening on http://{addr}/");
    let agent = Agent::new(manager, stores.store, seed);
    if let Some(outbox) = stores.outbox {
        agent.set_outbox(outbox);
    }
    agent.run(listener, rx).await;
    Ok(())
}
