//! `tabacco metadb`: run the metadata server.
//!
//! Reads `metadb.yml` (`--server-config` or `TABACCO_METADB_CONFIG`, else
//! a `--config` given on the command line, else `/etc/tabacco/metadb.yml`
//! if it exists, else built-in defaults; never the agent's
//! `TABACCO_CONFIG`),
//! applies the flags over it, refuses an unauthenticated non-loopback
//! listener, opens and migrates the database, and serves until SIGTERM or
//! SIGINT, then drains in-flight requests (at most [`DRAIN_TIMEOUT`]).
//!
//! Once listening it prints `listening on http(s)://ADDRESS` on standard
//! output (the actual port when `:0` was asked for).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use super::CliError;
use super::interrupt::Interrupts;
use crate::metadata::open_database;
use crate::metadb::config::{self, Overrides, RawConfig};
use crate::metadb::{AppState, serve, tls_for};

/// The server's configuration file when `--config` is left at its default.
pub const DEFAULT_METADB_CONFIG_PATH: &str = "/etc/tabacco/metadb.yml";

/// Longest wait for in-flight requests after a shutdown signal.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Arguments of `tabacco metadb` (each overrides `metadb.yml`).
#[derive(Debug, Args)]
pub struct MetadbArgs {
    /// The server's configuration file, metadb.yml (default
    /// /etc/tabacco/metadb.yml when it exists, else built-in defaults). A
    /// `--config` given on the command line is taken too, for
    /// compatibility; the agent's `TABACCO_CONFIG` never is.
    #[arg(long, env = "TABACCO_METADB_CONFIG")]
    pub server_config: Option<PathBuf>,
    /// Address to listen on, `host:port` (default 127.0.0.1:7443).
    #[arg(long)]
    pub listen: Option<String>,
    /// Database URL: `sqlite:///path/to/metadb.sqlite` or
    /// `postgres://user@host/db` (a password is better put in PGPASSWORD
    /// or a `.pgpass` file than on the command line).
    #[arg(long)]
    pub database: Option<String>,
    /// Server certificate chain (PEM).
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// CA (PEM) that signs client certificates; clients must present one.
    #[arg(long)]
    pub tls_client_ca: Option<PathBuf>,
    /// YAML file of `host: <sha256 hex of the host's token>` entries.
    #[arg(long)]
    pub tokens_file: Option<PathBuf>,
    /// Largest request body in bytes.
    #[arg(long)]
    pub max_body_bytes: Option<usize>,
    /// Serve a non-loopback address without any client authentication.
    #[arg(long)]
    pub allow_unauthenticated: bool,
    /// Age after which a host's newest backup counts as stale (`36h`, `2d`).
    #[arg(long)]
    pub stale_after: Option<String>,
    /// Time without a report after which a host counts as silent (`2m`).
    #[arg(long)]
    pub silent_after: Option<String>,
}

impl MetadbArgs {
    /// The flags as configuration overrides.
    fn overrides(self) -> Overrides {
        Overrides {
            listen: self.listen,
            database: self.database,
            tls_cert: self.tls_cert,
            tls_key: self.tls_key,
            tls_client_ca: self.tls_client_ca,
            tokens_file: self.tokens_file,
            max_body_bytes: self.max_body_bytes,
            allow_unauthenticated: self.allow_unauthenticated,
            stale_after: self.stale_after,
            silent_after: self.silent_after,
        }
    }
}

/// Which configuration file to read, if any: `--server-config` (or
/// `TABACCO_METADB_CONFIG`), else a `--config` given on the command line,
/// else the default file if it exists.
fn config_file(server_config: Option<&Path>, config_flag: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = server_config.or(config_flag) {
        return Some(p.to_owned());
    }
    let default = PathBuf::from(DEFAULT_METADB_CONFIG_PATH);
    default.exists().then_some(default)
}

/// Run the server.
pub async fn run(config_flag: Option<&Path>, args: MetadbArgs) -> Result<(), CliError> {
    let file = config_file(args.server_config.as_deref(), config_flag);
    let raw = match &file {
        Some(f) => config::read_file(f).map_err(CliError::usage)?,
        None => RawConfig::default(),
    };
    let config =
        config::resolve(raw, file.as_deref(), args.overrides()).map_err(CliError::usage)?;

    let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host(config.listen.as_str())
        .await
        .map_err(|e| {
            CliError::usage(anyhow::anyhow!(
                "listen: {:?} is not an address to listen on (host:port): {e}",
                config.listen
            ))
        })?
        .collect();
    config::check_exposure(&config, &addrs).map_err(CliError::usage)?;
    if config.tls.is_none()
        && !config.tokens.is_empty()
        && addrs.iter().any(|a| !a.ip().is_loopback())
    {
        tracing::warn!(
            "bearer tokens are accepted over plain HTTP on a non-loopback address: configure tls \
             so that tokens cannot be read on the network"
        );
    }

    // Check the TLS files before touching the database.
    let tls = tls_for(&config).map_err(CliError::usage)?;
    let store = open_database(&config.database)
        .await
        .map_err(|e| CliError::failed(anyhow::anyhow!("cannot open the metadata database: {e}")))?;
    let state = AppState::with_tls(store.clone(), &config, tls);
    let listener = tokio::net::TcpListener::bind(&addrs[..])
        .await
        .map_err(|e| {
            CliError::failed(anyhow::anyhow!("cannot listen on {}: {e}", config.listen))
        })?;
    let local = listener
        .local_addr()
        .map_err(|e| CliError::failed(anyhow::anyhow!("listening socket: {e}")))?;
    // Caught before the server says it is listening: a SIGTERM right
    // after that line must stop it cleanly.
    let interrupts = Interrupts::catch()?;
    let scheme = if state.tls.is_some() { "https" } else { "http" };
    tracing::info!(
        address = %local,
        database = %config.database,
        tls = state.tls.is_some(),
        client_certificates = config.tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
        tokens = config.tokens.len(),
        "metadata server listening"
    );
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on {scheme}://{local}");
        let _ = out.flush();
    }

    let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        let signal = interrupts.first().await;
        tracing::info!("{}: shutting down", signal.name());
        let _ = signalled_tx.send(());
    };
    let server = serve(listener, Arc::new(state), shutdown);
    tokio::pin!(server);
    let drain_deadline = async {
        if signalled_rx.await.is_err() {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(DRAIN_TIMEOUT).await;
    };
    let result = tokio::select! {
        r = &mut server => r.map_err(|e| CliError::failed(anyhow::anyhow!("serving on {local}: {e}"))),
        () = drain_deadline => {
            tracing::warn!(timeout = ?DRAIN_TIMEOUT, "requests still running at the drain deadline; stopping anyway");
            Ok(())
        }
    };
    store.close().await;
    tracing::info!("metadata server stopped");
    result
}
