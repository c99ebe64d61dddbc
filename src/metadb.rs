//! The metadata server, `tabacco metadb`: the fleet's central index over
//! HTTP(S), on SQLite or PostgreSQL.
//!
//! - [`config`]: `metadb.yml`, flags, the exposure check;
//! - [`routes`]: the JSON API, health, OpenAPI document, metrics endpoint;
//! - [`auth`]: client certificates, bearer tokens, ACL;
//! - [`error`]: request errors as JSON;
//! - [`page`]: the server-rendered web page;
//! - [`metrics`]: Prometheus metrics.
//!
//! [`serve`] runs the server on a bound listener until a shutdown future
//! completes, then drains in-flight requests; tests bind `127.0.0.1:0` and
//! call it in-process. With TLS, handshakes run concurrently in their own
//! tasks (a slow client cannot stall the accept loop) and the verified
//! client certificate's identity travels with the connection
//! ([`PeerInfo`]).

pub mod auth;
pub mod config;
pub mod error;
pub mod fleet;
pub mod metrics;
pub mod page;
pub mod routes;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::serve::Listener;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tower::ServiceExt;

use crate::metadata::ServerStore;
use auth::{AuthPolicy, TlsSetupError, certificate_identity, server_tls_config};
use config::MetadbConfig;
use metrics::Metrics;

/// Longest a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a request may take once its headers are in (reading the body
/// included); then it is answered with 503.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Most TLS handshakes in progress at once.
const MAX_HANDSHAKES: usize = 256;

/// Everything a request handler needs.
pub struct AppState {
    /// The index.
    pub store: Arc<dyn ServerStore>,
    /// Access rules.
    pub auth: AuthPolicy,
    /// Metrics.
    pub metrics: Metrics,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// When a host's newest backup counts as stale (web page).
    pub stale_after: Duration,
    /// When a host that stopped reporting counts as silent.
    pub silent_after: Duration,
    /// TLS configuration; `None`: plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Longest a request may take ([`REQUEST_TIMEOUT`]).
    pub request_timeout: Duration,
    /// Most client connections served at once (`max_connections`).
    pub max_connections: usize,
}

impl AppState {
    /// State for `config` on `store` (reads the TLS files).
    pub fn new(
        store: Arc<dyn ServerStore>,
        config: &MetadbConfig,
    ) -> Result<AppState, TlsSetupError> {
        Ok(AppState::with_tls(store, config, tls_for(config)?))
    }

    /// State for `config` on `store` with TLS prepared by [`tls_for`].
    pub fn with_tls(
        store: Arc<dyn ServerStore>,
        config: &MetadbConfig,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> AppState {
        AppState {
            store,
            auth: AuthPolicy::from_config(config),
            metrics: Metrics::new(),
            max_body_bytes: config.max_body_bytes,
            stale_after: config.stale_after,
            silent_after: config.silent_after,
            tls,
            request_timeout: REQUEST_TIMEOUT,
            max_connections: config.max_connections,
        }
    }
}

/// The TLS configuration `config` asks for (reads its files), if any.
pub fn tls_for(config: &MetadbConfig) -> Result<Option<Arc<rustls::ServerConfig>>, TlsSetupError> {
    match &config.tls {
        Some(files) => Ok(Some(server_tls_config(files, !config.tokens.is_empty())?)),
        None => Ok(None),
    }
}

/// The peer of a connection: its address and, with client certificates,
/// the verified identity.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// Remote address.
    pub addr: SocketAddr,
    /// Host identity from the client certificate, if one was presented.
    pub identity: Option<String>,
}

/// Plain TCP connections.
pub struct PlainListener(TcpListener);

impl Listener for PlainListener {
    type Io = TcpStream;
    type Addr = PeerInfo;

    async fn accept(&mut self) -> (TcpStream, PeerInfo) {
        loop {
            match self.0.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    return (
                        stream,
                        PeerInfo {
                            addr,
                            identity: None,
                        },
                    );
                }
                Err(e) => accept_failed(&e).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<PeerInfo> {
        Ok(PeerInfo {
            addr: self.0.local_addr()?,
            identity: None,
        })
    }
}

/// Handle a failed `accept`: log, and back off when out of resources.
async fn accept_failed(e: &io::Error) {
    use io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused
    ) {
        return;
    }
    tracing::warn!(error = %e, "accepting a connection failed; retrying shortly");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// TLS connections whose handshakes completed.
pub struct TlsListener {
    /// Completed handshakes.
    rx: mpsc::Receiver<(TlsStream<TcpStream>, PeerInfo)>,
    /// The bound address.
    local: SocketAddr,
    /// The accept loop (aborted on drop).
    task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Accept on `listener`, handshaking with `config` in separate tasks.
    pub fn new(
        listener: TcpListener,
        config: Arc<rustls::ServerConfig>,
    ) -> io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        let acceptor = TlsAcceptor::from(config);
        let permits = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        let task = tokio::spawn(async move {
            loop {
                let (tcp, addr) = match listener.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        accept_failed(&e).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let identity = tls
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|certs| certs.first())
                                .and_then(|c| certificate_identity(c));
                            let _ = tx.send((tls, PeerInfo { addr, identity })).await;
                        }
                        Ok(Err(e)) => {
                            tracing::info!(peer = %addr, error = %e, "TLS handshake failed")
                        }
                        Err(_) => tracing::info!(peer = %addr, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { rx, local, task })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = PeerInfo;

    async fn accept(&mut self) -> (Self::Io, PeerInfo) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The accept loop ended (it only does when aborted).
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<PeerInfo> {
        Ok(PeerInfo {
            addr: self.local,
            identity: None,
        })
    }
}

/// Serve the API on `listener` until `shutdown` completes, then stop
/// accepting and wait for in-flight requests to finish (idle keep-alive
/// connections are closed).
pub async fn serve<F>(listener: TcpListener, state: Arc<AppState>, shutdown: F) -> io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let router = routes::router(state.clone()).0;
    let limit = state.max_connections;
    match state.tls.clone() {
        None => run(PlainListener(listener), router, limit, shutdown).await,
        Some(config) => run(TlsListener::new(listener, config)?, router, limit, shutdown).await,
    }
}

/// The accept loop: one task per connection, HTTP/1.1 with a header read
/// timeout (a client trickling its headers cannot hold a connection
/// forever), the peer's [`PeerInfo`] in every request's extensions as
/// `ConnectInfo<PeerInfo>`. At most `max_connections` are served at once
/// (mini-redis: a semaphore permit is taken before `accept` and held by
/// the connection's task); while the cap is reached, new clients wait in
/// the kernel's listen queue and one warning says so.
async fn run<L, F>(
    mut listener: L,
    router: axum::Router,
    max_connections: usize,
    shutdown: F,
) -> io::Result<()>
where
    L: Listener<Addr = PeerInfo>,
    F: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(max_connections));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                tracing::warn!(
                    max_connections,
                    "connection limit reached: new clients wait until a connection closes \
                     (raise max_connections in metadb.yml if this is normal load)"
                );
                tokio::select! {
                    permit = permits.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break,
                    },
                    () = &mut shutdown => break,
                }
            }
        };
        let (io, peer) = tokio::select! {
            conn = listener.accept() => conn,
            () = &mut shutdown => break,
        };
        let router = router.clone();
        let service =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer.clone()));
                router.clone().oneshot(req.map(axum::body::Body::new))
            });
        let conn = http.serve_connection(hyper_util::rt::TokioIo::new(io), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests;
