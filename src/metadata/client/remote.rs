//! The remote metadata store: a [`MetadataStore`] that talks to a
//! `tabacco metadb` server over HTTP(S).
//!
//! Authentication is a client certificate (mutual TLS, `metadb.tls.cert` and
//! `metadb.tls.key`) and/or a bearer token read from `metadb.token_file`;
//! `metadb.tls.ca` replaces the system roots for checking the server.
//!
//! Every request has a connect and a total timeout. Network errors, 5xx and
//! 429 are retried with exponential backoff and jitter (a `Retry-After`
//! header is honoured); any other status is final and becomes
//! [`MetadataError::Rejected`], so callers can tell "refused for good" from
//! "temporarily failed" ([`MetadataError::Unavailable`]).

use std::fmt;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use reqwest::{Method, StatusCode, Url};
use tracing::{debug, warn};

use crate::config::MetadbClientConfig;
use crate::metadata::{MetadataError, MetadataStore, Recording};
use crate::model::{
    AddDatasetRequest, AddVerificationsRequest, Backup, Dataset, FindRequest,
    GetVerificationsRequest, RemoveDatasetsRequest, RemoveDatasetsResponse,
    UpdateActiveJobStatusRequest, Verification, api,
};
use crate::util::error_chain;

/// How many characters of a non-JSON error body are kept in messages.
const MAX_ERROR_TEXT: usize = 500;

/// When and how often a failed request is tried again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1).
    pub max_attempts: u32,
    /// Backoff before the second attempt; doubled for each further one.
    pub initial_backoff: Duration,
    /// Upper bound of the backoff.
    pub max_backoff: Duration,
    /// Longest `Retry-After` the client waits for; a server asking for more
    /// ends the retries at once (the request counts as unavailable).
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(30),
        }
    }
}

/// Backoff before attempt `attempt + 1` (`attempt` >= 1 attempts have
/// failed): `initial * 2^(attempt-1)`, capped at `max_backoff`, of which a
/// random half is taken away (`jitter` in `0.0..1.0`) so that a fleet does
/// not retry in lockstep.
pub fn backoff_delay(policy: &RetryPolicy, attempt: u32, jitter: f64) -> Duration {
    let exp = attempt.saturating_sub(1).min(30);
    let base = policy
        .initial_backoff
        .saturating_mul(1u32 << exp)
        .min(policy.max_backoff);
    let jitter = jitter.clamp(0.0, 1.0);
    base.mul_f64(1.0 - 0.5 * jitter)
}

/// Parse a `Retry-After` header: delay seconds, or an HTTP date (a date in
/// the past means "now"). `None` when it is neither.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = DateTime::parse_from_rfc2822(value).ok()?;
    Some(
        (when.with_timezone(&Utc) - now)
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

/// Whether a response status is worth retrying: 5xx and 429 only.
pub fn is_retryable_status(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS
}

/// A hint for the operator appended to [`MetadataError::Rejected`] messages.
pub fn refusal_hint(status: u16) -> &'static str {
    match status {
        401 => {
            " (the server did not accept this host's credentials: check metadb.token_file or metadb.tls.cert/key in agent.yml)"
        }
        403 => {
            " (this host's identity may not do this: a host may write only records of its own hostname, unless the server's acl makes it an admin)"
        }
        404 | 405 => {
            " (no such API endpoint: check that metadb.url points at a `tabacco metadb` server)"
        }
        413 => " (the request is larger than the server's max_body_bytes)",
        _ => "",
    }
}

/// Timeouts and retries of a [`RemoteStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteOptions {
    /// Bound on establishing a connection (TCP + TLS).
    pub connect_timeout: Duration,
    /// Bound on one whole request, response body included.
    pub request_timeout: Duration,
    /// Retries of failed requests.
    pub retry: RetryPolicy,
}

impl Default for RemoteOptions {
    fn default() -> RemoteOptions {
        RemoteOptions {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            retry: RetryPolicy::default(),
        }
    }
}

/// A metadata store on a `tabacco metadb` server.
pub struct RemoteStore {
    client: reqwest::Client,
    /// Base URL, ending in `/`.
    base: Url,
    /// The base URL for messages (no credentials).
    display: String,
    /// `Bearer <token>`, marked sensitive.
    auth: Option<HeaderValue>,
    options: RemoteOptions,
}

impl fmt::Debug for RemoteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteStore")
            .field("url", &self.display)
            .field("token", &self.auth.as_ref().map(|_| "<redacted>"))
            .field("options", &self.options)
            .finish()
    }
}

/// Read a file named by a `metadb` setting.
fn read_setting_file(field: &str, path: &Path) -> Result<Vec<u8>, MetadataError> {
    std::fs::read(path).map_err(|source| MetadataError::Io {
        context: format!("{field}: cannot read {}", path.display()),
        source,
    })
}

/// The URL without user name or password, for messages.
fn display_url(url: &Url) -> String {
    let mut u = url.clone();
    // Both only fail for URLs that cannot have credentials at all.
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.as_str().trim_end_matches('/').to_string()
}

/// The server's error text: `error` of a JSON body, else the start of the
/// body, else the status's reason phrase.
fn error_text(status: StatusCode, body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct ApiError {
        error: String,
    }
    if let Ok(e) = serde_json::from_slice::<ApiError>(body) {
        return e.error;
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return status
            .canonical_reason()
            .unwrap_or("no error text")
            .to_string();
    }
    let mut cut: String = text.chars().take(MAX_ERROR_TEXT).collect();
    if cut.len() < text.len() {
        cut.push_str("...");
    }
    cut
}

/// One failed attempt that may be retried.
struct TemporaryFailure {
    status: Option<u16>,
    reason: String,
    retry_after: Option<Duration>,
}

impl RemoteStore {
    /// A client for the server in `config`, with default timeouts and
    /// retries. Reads the certificate, key, CA and token files now, so that
    /// a bad setting is reported at start, naming the setting and file.
    pub fn new(config: &MetadbClientConfig) -> Result<RemoteStore, MetadataError> {
        RemoteStore::with_options(config, RemoteOptions::default())
    }

    /// Like [`RemoteStore::new`] with explicit timeouts and retries.
    pub fn with_options(
        config: &MetadbClientConfig,
        options: RemoteOptions,
    ) -> Result<RemoteStore, MetadataError> {
        let mut base = Url::parse(&config.url).map_err(|e| {
            MetadataError::Config(format!(
                "metadb.url: {:?} is not a valid URL: {e}",
                config.url
            ))
        })?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(MetadataError::Config(format!(
                "metadb.url: {:?} is not an http:// or https:// URL",
                config.url
            )));
        }
        if base.query().is_some() || base.fragment().is_some() {
            return Err(MetadataError::Config(format!(
                "metadb.url: {:?} must not have a query or fragment",
                config.url
            )));
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let display = display_url(&base);

        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("tabacco/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(options.connect_timeout)
            .timeout(options.request_timeout)
            // A POST must not silently turn into a GET somewhere else.
            .redirect(reqwest::redirect::Policy::none());

        match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => {
                let mut pem = read_setting_file("metadb.tls.cert", cert)?;
                pem.push(b'\n');
                pem.extend(read_setting_file("metadb.tls.key", key)?);
                let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                    MetadataError::Config(format!(
                        "metadb.tls.cert {} / metadb.tls.key {}: not a usable PEM certificate and private key: {}",
                        cert.display(),
                        key.display(),
                        error_chain(&e)
                    ))
                })?;
                builder = builder.identity(identity);
            }
            (None, None) => {}
            _ => {
                return Err(MetadataError::Config(
                    "metadb.tls: cert and key must be given together".to_string(),
                ));
            }
        }
        if let Some(ca) = &config.tls_ca {
            let pem = read_setting_file("metadb.tls.ca", ca)?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                MetadataError::Config(format!(
                    "metadb.tls.ca {}: not a PEM certificate bundle: {}",
                    ca.display(),
                    error_chain(&e)
                ))
            })?;
            if certs.is_empty() {
                return Err(MetadataError::Config(format!(
                    "metadb.tls.ca {}: holds no PEM certificate",
                    ca.display()
                )));
            }
            builder = builder.tls_certs_only(certs);
        }
        let auth = match &config.token_file {
            None => None,
            Some(path) => {
                let raw = read_setting_file("metadb.token_file", path)?;
                let token = String::from_utf8(raw).map_err(|_| {
                    MetadataError::Config(format!(
                        "metadb.token_file {}: is not UTF-8 text",
                        path.display()
                    ))
                })?;
                let token = token.trim();
                if token.is_empty() {
                    return Err(MetadataError::Config(format!(
                        "metadb.token_file {}: is empty",
                        path.display()
                    )));
                }
                let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                    MetadataError::Config(format!(
                        "metadb.token_file {}: the token holds characters not allowed in an HTTP header",
                        path.display()
                    ))
                })?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        let client = builder.build().map_err(|e| {
            MetadataError::Config(format!(
                "metadb: cannot set up the HTTP client for {display}: {}",
                error_chain(&e)
            ))
        })?;
        Ok(RemoteStore {
            client,
            base,
            display,
            auth,
            options,
        })
    }

    /// The server's base URL (without credentials), for messages.
    pub fn url(&self) -> &str {
        &self.display
    }

    /// The timeouts and retries in use.
    pub fn options(&self) -> &RemoteOptions {
        &self.options
    }

    /// Check that the server answers `GET /healthz` with 2xx.
    pub async fn healthz(&self) -> Result<(), MetadataError> {
        self.request(Method::GET, api::HEALTHZ, None)
            .await
            .map(|_| ())
    }

    fn endpoint(&self, path: &str) -> Result<Url, MetadataError> {
        // Relative to the base URL, which may have a path of its own.
        self.base.join(path.trim_start_matches('/')).map_err(|e| {
            MetadataError::Config(format!(
                "metadb.url {}: cannot append {path}: {e}",
                self.display
            ))
        })
    }

    /// POST `body` as JSON to `path`; the body of the 2xx response.
    async fn post<B: serde::Serialize>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<Vec<u8>, MetadataError> {
        let body = serde_json::to_vec(body).map_err(|e| {
            MetadataError::BadRequest(format!("cannot encode the request to {path} as JSON: {e}"))
        })?;
        self.request(Method::POST, path, Some(body)).await
    }

    /// Send a request with retries; the body of the 2xx response.
    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Vec<u8>, MetadataError> {
        let url = self.endpoint(path)?;
        let shown = display_url(&url);
        let policy = &self.options.retry;
        let max_attempts = policy.max_attempts.max(1);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let failure = match self.attempt(&method, &url, &shown, body.as_deref()).await {
                Ok(body) => return Ok(body),
                Err(Err(final_error)) => return Err(final_error),
                Err(Ok(failure)) => failure,
            };
            let unavailable = |reason: String| MetadataError::Unavailable {
                url: shown.clone(),
                attempts: attempt,
                status: failure.status,
                reason,
            };
            if attempt >= max_attempts {
                return Err(unavailable(failure.reason));
            }
            let delay = match failure.retry_after {
                Some(d) if d > policy.max_retry_after => {
                    return Err(unavailable(format!(
                        "{} (the server asks to retry after {}, longer than this client waits)",
                        failure.reason,
                        humantime::format_duration(d)
                    )));
                }
                Some(d) => d,
                None => backoff_delay(policy, attempt, fastrand::f64()),
            };
            warn!(
                url = %shown,
                attempt,
                max_attempts,
                retry_in = %humantime::format_duration(Duration::from_millis(delay.as_millis() as u64)),
                "metadata server request failed, retrying: {}",
                failure.reason
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// One attempt: the 2xx body, or a retryable failure (`Err(Ok)`), or a
    /// final error (`Err(Err)`).
    async fn attempt(
        &self,
        method: &Method,
        url: &Url,
        shown: &str,
        body: Option<&[u8]>,
    ) -> Result<Vec<u8>, Result<TemporaryFailure, MetadataError>> {
        let mut req = self.client.request(method.clone(), url.clone());
        if let Some(body) = body {
            req = req
                .header(CONTENT_TYPE, "application/json")
                .body(body.to_vec());
        }
        if let Some(auth) = &self.auth {
            req = req.header(AUTHORIZATION, auth.clone());
        }
        let resp = match req.send().await {
            Ok(resp) => resp,
            Err(e) if e.is_builder() => {
                return Err(Err(MetadataError::Config(format!(
                    "cannot build a request to {shown}: {}",
                    error_chain(&e.without_url())
                ))));
            }
            Err(e) => {
                return Err(Ok(TemporaryFailure {
                    status: None,
                    reason: error_chain(&e.without_url()),
                    retry_after: None,
                }));
            }
        };
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, Utc::now()));
        let bytes = match resp.bytes().await {
            Ok(b) => b.to_vec(),
            Err(e) => {
                // The body broke off: a network failure whatever the status.
                return Err(Ok(TemporaryFailure {
                    status: Some(status.as_u16()),
                    reason: format!(
                        "HTTP {status}, then reading the response failed: {}",
                        error_chain(&e.without_url())
                    ),
                    retry_after,
                }));
            }
        };
        if status.is_success() {
            debug!(url = %shown, %status, "metadata server request done");
            return Ok(bytes);
        }
        let message = error_text(status, &bytes);
        if is_retryable_status(status) {
            return Err(Ok(TemporaryFailure {
                status: Some(status.as_u16()),
                reason: format!("HTTP {status}: {message}"),
                retry_after,
            }));
        }
        Err(Err(MetadataError::Rejected {
            url: shown.to_string(),
            status: status.as_u16(),
            message,
        }))
    }
}

/// Whether `d` carries any field of the restore record (issue 11).
fn has_restore_record(d: &Dataset) -> bool {
    d.handler.is_some()
        || d.repository_id.is_some()
        || d.atoms.iter().any(|a| {
            a.snapshot_path.is_some() || a.size.is_some() || a.files.is_some() || a.sha256.is_some()
        })
}

/// `d` as written before the restore record: without its fields.
fn without_restore_record(d: &Dataset) -> Dataset {
    Dataset {
        handler: None,
        repository_id: None,
        atoms: d
            .atoms
            .iter()
            .map(|a| crate::model::Atom {
                name: a.name.clone(),
                path: a.path.clone(),
                ..Default::default()
            })
            .collect(),
        ..d.clone()
    }
}

#[async_trait]
impl MetadataStore for RemoteStore {
    async fn add_dataset(&self, backup: &Backup, dataset: &Dataset) -> Result<(), MetadataError> {
        let body = AddDatasetRequest::new(backup, dataset);
        match self.post(api::ADD_DATASET, &body).await {
            // A server from before the restore record (issue 11) refuses
            // its fields: record the rest rather than losing the record
            // (restores of it then need the source's configuration).
            Err(MetadataError::Rejected {
                status: 400,
                message,
                ..
            }) if message.contains("unknown field") && has_restore_record(dataset) => {
                tracing::warn!(
                    server = %self.display,
                    dataset = %dataset.id,
                    "the metadata server does not know the restore record fields ({message}); \
                     recording the dataset without them: upgrade the server, or restores of \
                     this record will need the source's configuration"
                );
                let bare = without_restore_record(dataset);
                let body = AddDatasetRequest::new(backup, &bare);
                self.post(api::ADD_DATASET, &body).await.map(|_| ())
            }
            r => r.map(|_| ()),
        }
    }

    async fn find_atoms(&self, req: &FindRequest) -> Result<Vec<Backup>, MetadataError> {
        let body = self.post(api::FIND_ATOMS, req).await?;
        serde_json::from_slice(&body).map_err(|e| MetadataError::InvalidResponse {
            url: format!("{}{}", self.display.trim_end_matches('/'), api::FIND_ATOMS),
            message: format!("expected a JSON list of backups: {e}"),
        })
    }

    async fn update_active_job_status(
        &self,
        req: &UpdateActiveJobStatusRequest,
    ) -> Result<(), MetadataError> {
        self.post(api::UPDATE_ACTIVE_JOB_STATUS, req)
            .await
            .map(|_| ())
    }

    async fn remove_datasets(&self, req: &RemoveDatasetsRequest) -> Result<i64, MetadataError> {
        let mut removed = 0;
        // The server takes a bounded number per request.
        for chunk in req.datasets.chunks(crate::metadata::MAX_REMOVE_DATASETS) {
            let part = RemoveDatasetsRequest {
                host: req.host.clone(),
                datasets: chunk.to_vec(),
            };
            let body = self.post(api::REMOVE_DATASETS, &part).await?;
            let answer: RemoveDatasetsResponse =
                serde_json::from_slice(&body).map_err(|e| MetadataError::InvalidResponse {
                    url: format!(
                        "{}{}",
                        self.display.trim_end_matches('/'),
                        api::REMOVE_DATASETS
                    ),
                    message: format!("expected {{\"removed\": N}}: {e}"),
                })?;
            removed += answer.removed;
        }
        Ok(removed)
    }

    async fn add_verifications(
        &self,
        req: &AddVerificationsRequest,
    ) -> Result<Recording, MetadataError> {
        self.post(api::ADD_VERIFICATIONS, req)
            .await
            .map(|_| Recording::Stored)
    }

    async fn get_verifications(
        &self,
        req: &GetVerificationsRequest,
    ) -> Result<Vec<Verification>, MetadataError> {
        let body = self.post(api::GET_VERIFICATIONS, req).await?;
        serde_json::from_slice(&body).map_err(|e| MetadataError::InvalidResponse {
            url: format!(
                "{}{}",
                self.display.trim_end_matches('/'),
                api::GET_VERIFICATIONS
            ),
            message: format!("expected a JSON list of verifications: {e}"),
        })
    }
}

/// A small scripted HTTP server on `127.0.0.1:0` for client tests.
#[cfg(test)]
pub(crate) mod testserver {
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use axum::Router;
    use axum::body::Body;
    use axum::extract::State;
    use axum::http::{HeaderMap, Request, Response};

    /// One scripted answer.
    #[derive(Debug, Clone)]
    pub struct Reply {
        pub status: u16,
        pub headers: Vec<(&'static str, String)>,
        pub body: String,
        pub delay: Duration,
    }

    impl Reply {
        pub fn status(status: u16) -> Reply {
            Reply {
                status,
                headers: Vec::new(),
                body: format!(r#"{{"error":"scripted {status}"}}"#),
                delay: Duration::ZERO,
            }
        }
        pub fn ok(body: &str) -> Reply {
            Reply {
                body: body.to_string(),
                ..Reply::status(200)
            }
        }
        pub fn header(mut self, name: &'static str, value: &str) -> Reply {
            self.headers.push((name, value.to_string()));
            self
        }
        pub fn delay(mut self, d: Duration) -> Reply {
            self.delay = d;
            self
        }
    }

    /// A request as received.
    #[derive(Debug, Clone)]
    pub struct Seen {
        pub path: String,
        pub authorization: Option<String>,
        pub body: String,
    }

    /// The server's script and record.
    #[derive(Clone, Default)]
    pub struct Script {
        replies: Arc<Mutex<VecDeque<Reply>>>,
        /// Answer when the script is empty (default: 200 `{}`).
        default: Arc<Mutex<Option<Reply>>>,
        attempts: Arc<AtomicUsize>,
        seen: Arc<Mutex<Vec<Seen>>>,
    }

    impl Script {
        pub fn push(&self, r: Reply) -> &Script {
            self.replies.lock().unwrap().push_back(r);
            self
        }
        pub fn set_default(&self, r: Reply) {
            *self.default.lock().unwrap() = Some(r);
        }
        pub fn attempts(&self) -> usize {
            self.attempts.load(Ordering::SeqCst)
        }
        pub fn seen(&self) -> Vec<Seen> {
            self.seen.lock().unwrap().clone()
        }
    }

    async fn handle(State(s): State<Script>, req: Request<Body>) -> Response<Body> {
        s.attempts.fetch_add(1, Ordering::SeqCst);
        let path = req.uri().path().to_string();
        let headers: HeaderMap = req.headers().clone();
        let body = axum::body::to_bytes(req.into_body(), 1 << 20)
            .await
            .unwrap_or_default();
        s.seen.lock().unwrap().push(Seen {
            path,
            authorization: headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(String::from),
            body: String::from_utf8_lossy(&body).into_owned(),
        });
        let reply = s.replies.lock().unwrap().pop_front();
        let reply = reply
            .or_else(|| s.default.lock().unwrap().clone())
            .unwrap_or_else(|| Reply::ok("{}"));
        tokio::time::sleep(reply.delay).await;
        let mut b = Response::builder()
            .status(reply.status)
            .header("content-type", "application/json");
        for (k, v) in &reply.headers {
            b = b.header(*k, v);
        }
        b.body(Body::from(reply.body)).unwrap()
    }

    /// Start a server answering every path from `script`; its base URL.
    pub async fn start(script: Script) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().fallback(handle).with_state(script);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        format!("http://{addr}")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::testserver::{Reply, Script, start};
    use super::*;
    use crate::model::Atom;
    use std::time::Instant;

    fn fast() -> RemoteOptions {
        RemoteOptions {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            retry: RetryPolicy {
                max_attempts: 4,
                initial_backoff: Duration::from_millis(10),
                max_backoff: Duration::from_millis(40),
                max_retry_after: Duration::from_secs(2),
            },
        }
    }

    fn config(url: &str) -> MetadbClientConfig {
        MetadbClientConfig {
            url: url.to_string(),
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
            token_file: None,
        }
    }

    fn store(url: &str) -> RemoteStore {
        RemoteStore::with_options(&config(url), fast()).unwrap()
    }

    pub(crate) fn sample(id: &str) -> (Backup, Dataset) {
        let b = Backup {
            id: format!("b-{id}"),
            timestamp: "2026-01-02T03:04:05Z".parse().unwrap(),
            host: "host-a".into(),
            datasets: vec![],
        };
        let d = Dataset {
            id: id.to_string(),
            name: "users".into(),
            source: "home".into(),
            atoms: vec![Atom {
                name: "alice".into(),
                path: String::new(),
                ..Default::default()
            }],
            snapshot_id: "ab".repeat(32),
            total_files: 1,
            total_bytes: 2,
            bytes_added: 3,
            duration: 4,
            ..Default::default()
        };
        (b, d)
    }

    #[test]
    fn backoff_doubles_is_capped_and_jittered() {
        let p = RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(700),
            max_retry_after: Duration::from_secs(1),
        };
        assert_eq!(backoff_delay(&p, 1, 0.0), Duration::from_millis(100));
        assert_eq!(backoff_delay(&p, 2, 0.0), Duration::from_millis(200));
        assert_eq!(backoff_delay(&p, 3, 0.0), Duration::from_millis(400));
        assert_eq!(backoff_delay(&p, 4, 0.0), Duration::from_millis(700));
        assert_eq!(backoff_delay(&p, 40, 0.0), Duration::from_millis(700));
        assert_eq!(backoff_delay(&p, 2, 1.0), Duration::from_millis(100));
        let d = backoff_delay(&p, 3, 0.5);
        assert!(d > Duration::from_millis(200) && d < Duration::from_millis(400));
    }

    #[test]
    fn retry_after_is_seconds_or_an_http_date() {
        let now: DateTime<Utc> = "2026-01-02T03:04:05Z".parse().unwrap();
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Fri, 02 Jan 2026 03:04:35 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Fri, 02 Jan 2026 03:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }

    #[test]
    fn only_5xx_and_429_are_retryable() {
        for s in [500, 502, 503, 504, 429] {
            assert!(is_retryable_status(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        for s in [200, 301, 400, 401, 403, 404, 409, 413, 422] {
            assert!(
                !is_retryable_status(StatusCode::from_u16(s).unwrap()),
                "{s}"
            );
        }
    }

    #[tokio::test]
    async fn server_errors_are_retried_until_success() {
        let script = Script::default();
        script.push(Reply::status(500)).push(Reply::status(502));
        let url = start(script.clone()).await;
        let (b, d) = sample("d1");
        store(&url).add_dataset(&b, &d).await.unwrap();
        assert_eq!(script.attempts(), 3);
    }

    #[tokio::test]
    async fn persistent_5xx_becomes_unavailable_naming_url_status_and_text() {
        let script = Script::default();
        script.set_default(Reply {
            body: r#"{"error":"database is down"}"#.into(),
            ..Reply::status(503)
        });
        let url = start(script.clone()).await;
        let (b, d) = sample("d1");
        let err = store(&url).add_dataset(&b, &d).await.unwrap_err();
        assert_eq!(script.attempts(), 4);
        match &err {
            MetadataError::Unavailable {
                attempts, status, ..
            } => {
                assert_eq!(*attempts, 4);
                assert_eq!(*status, Some(503));
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
        assert_eq!(err.recovery(), crate::metadata::Recovery::Retry);
        let text = err.to_string();
        assert!(text.contains(&format!("{url}/api/add_dataset")), "{text}");
        assert!(
            text.contains("503") && text.contains("database is down"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn too_many_requests_honours_retry_after() {
        let script = Script::default();
        script.push(Reply::status(429).header("retry-after", "1"));
        let url = start(script.clone()).await;
        let started = Instant::now();
        store(&url)
            .update_active_job_status(&UpdateActiveJobStatusRequest {
                host: "h".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(script.attempts(), 2);
        assert!(
            started.elapsed() >= Duration::from_millis(950),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn retry_after_beyond_the_limit_ends_retries() {
        let script = Script::default();
        script.push(Reply::status(429).header("retry-after", "3600"));
        let url = start(script.clone()).await;
        let (b, d) = sample("d1");
        let err = store(&url).add_dataset(&b, &d).await.unwrap_err();
        assert_eq!(script.attempts(), 1);
        assert!(
            matches!(
                err,
                MetadataError::Unavailable {
                    attempts: 1,
                    status: Some(429),
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("retry after 1h"), "{err}");
    }

    #[tokio::test]
    async fn client_errors_are_never_retried() {
        for status in [400u16, 401, 403, 404, 409, 413, 422] {
            let script = Script::default();
            script.push(Reply {
                body: format!(r#"{{"error":"nope {status}"}}"#),
                ..Reply::status(status)
            });
            let url = start(script.clone()).await;
            let (b, d) = sample("d1");
            let err = store(&url).add_dataset(&b, &d).await.unwrap_err();
            assert_eq!(script.attempts(), 1, "status {status} was retried");
            match &err {
                MetadataError::Rejected {
                    url: u,
                    status: s,
                    message,
                } => {
                    assert_eq!(*s, status);
                    assert_eq!(message, &format!("nope {status}"));
                    assert_eq!(u, &format!("{url}/api/add_dataset"));
                }
                other => panic!("expected Rejected, got {other:?}"),
            }
            assert_ne!(err.recovery(), crate::metadata::Recovery::Retry);
            assert!(err.to_string().contains(&format!("HTTP {status}")), "{err}");
        }
    }

    #[tokio::test]
    async fn non_json_error_bodies_are_quoted_and_cut() {
        let script = Script::default();
        script.push(Reply {
            body: "x".repeat(2000),
            ..Reply::status(400)
        });
        let url = start(script.clone()).await;
        let err = store(&url)
            .find_atoms(&FindRequest::default())
            .await
            .unwrap_err();
        let MetadataError::Rejected { message, .. } = err else {
            panic!("expected Rejected");
        };
        assert_eq!(message.len(), MAX_ERROR_TEXT + 3);
        assert!(message.ends_with("..."));
    }

    #[tokio::test]
    async fn connection_refused_is_retried_then_unavailable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let url = format!("http://{addr}");
        let (b, d) = sample("d1");
        let err = store(&url).add_dataset(&b, &d).await.unwrap_err();
        match &err {
            MetadataError::Unavailable {
                attempts, status, ..
            } => {
                assert_eq!(*attempts, 4);
                assert_eq!(*status, None);
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
        assert!(err.to_string().contains(&url), "{err}");
    }

    #[tokio::test]
    async fn slow_responses_time_out_and_are_retried() {
        let script = Script::default();
        script.push(Reply::ok("{}").delay(Duration::from_secs(3)));
        let url = start(script.clone()).await;
        let opts = RemoteOptions {
            request_timeout: Duration::from_millis(300),
            ..fast()
        };
        let s = RemoteStore::with_options(&config(&url), opts).unwrap();
        let (b, d) = sample("d1");
        s.add_dataset(&b, &d).await.unwrap();
        assert_eq!(script.attempts(), 2);
    }

    #[tokio::test]
    async fn requests_carry_the_bearer_token_which_debug_hides() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "s3cret-token\n").unwrap();
        let script = Script::default();
        let url = start(script.clone()).await;
        let mut cfg = config(&url);
        cfg.token_file = Some(token);
        let s = RemoteStore::with_options(&cfg, fast()).unwrap();
        s.healthz().await.unwrap();
        let seen = script.seen();
        assert_eq!(seen[0].path, "/healthz");
        assert_eq!(
            seen[0].authorization.as_deref(),
            Some("Bearer s3cret-token")
        );
        assert!(!format!("{s:?}").contains("s3cret"));
        // Without a token file, no header.
        store(&url).healthz().await.unwrap();
        assert_eq!(script.seen()[1].authorization, None);
    }

    #[tokio::test]
    async fn add_dataset_sends_backup_and_dataset() {
        let script = Script::default();
        let url = start(script.clone()).await;
        let (mut b, d) = sample("d1");
        b.datasets = vec![d.clone(), d.clone()];
        store(&url).add_dataset(&b, &d).await.unwrap();
        let seen = script.seen();
        assert_eq!(seen[0].path, "/api/add_dataset");
        let body: AddDatasetRequest = serde_json::from_str(&seen[0].body).unwrap();
        assert_eq!(body.dataset, d);
        assert_eq!(body.backup.id, b.id);
        assert!(body.backup.datasets.is_empty());
    }

    #[tokio::test]
    async fn an_older_server_gets_the_record_without_the_restore_fields() {
        let script = Script::default();
        script.push(Reply {
            body: r#"{"error":"unknown field in the JSON body: dataset.handler (see /api/openapi.json)"}"#.into(),
            ..Reply::status(400)
        });
        let url = start(script.clone()).await;
        let (b, mut d) = sample("d1");
        d.handler = Some("file".into());
        d.atoms[0].size = Some(3);
        store(&url).add_dataset(&b, &d).await.unwrap();
        let seen = script.seen();
        assert_eq!(seen.len(), 2);
        let first: AddDatasetRequest = serde_json::from_str(&seen[0].body).unwrap();
        assert_eq!(first.dataset, d);
        let second: AddDatasetRequest = serde_json::from_str(&seen[1].body).unwrap();
        assert_eq!(second.dataset, without_restore_record(&d));
        assert!(!has_restore_record(&second.dataset));
        // Any other 400 stays an error, sent once.
        let script = Script::default();
        script.push(Reply::status(400));
        let url = start(script.clone()).await;
        assert!(store(&url).add_dataset(&b, &d).await.is_err());
        assert_eq!(script.seen().len(), 1);
    }

    #[tokio::test]
    async fn find_atoms_returns_the_servers_backups() {
        let (mut b, d) = sample("d1");
        b.datasets = vec![d];
        let script = Script::default();
        script.push(Reply::ok(&serde_json::to_string(&vec![b.clone()]).unwrap()));
        script.push(Reply::ok(r#"{"not":"a list"}"#));
        let url = start(script.clone()).await;
        let s = store(&url);
        let req = FindRequest {
            pattern: "home/*".into(),
            host: "host-a".into(),
            num_versions: 2,
            older_than: None,
        };
        assert_eq!(s.find_atoms(&req).await.unwrap(), vec![b]);
        let sent: FindRequest = serde_json::from_str(&script.seen()[0].body).unwrap();
        assert_eq!(sent, req);
        let err = s.find_atoms(&req).await.unwrap_err();
        assert!(
            matches!(err, MetadataError::InvalidResponse { .. }),
            "{err:?}"
        );
        assert_eq!(script.attempts(), 2, "a bad 2xx body is not retried");
    }

    #[tokio::test]
    async fn a_path_prefix_in_the_url_is_kept() {
        let script = Script::default();
        let url = start(script.clone()).await;
        store(&format!("{url}/metadb")).healthz().await.unwrap();
        store(&format!("{url}/metadb/")).healthz().await.unwrap();
        let paths: Vec<String> = script.seen().into_iter().map(|s| s.path).collect();
        assert_eq!(paths, ["/metadb/healthz", "/metadb/healthz"]);
    }

    #[tokio::test]
    async fn redirects_are_not_followed() {
        let script = Script::default();
        script.push(Reply::status(308).header("location", "/elsewhere"));
        let url = start(script.clone()).await;
        let (b, d) = sample("d1");
        let err = store(&url).add_dataset(&b, &d).await.unwrap_err();
        assert!(
            matches!(err, MetadataError::Rejected { status: 308, .. }),
            "{err:?}"
        );
        assert_eq!(script.attempts(), 1);
    }

    /// A TLS server on 127.0.0.1:0 that requires client certificates signed
    /// by the test CA, answers every request with 200 `{}`, and records the
    /// client certificate of each connection.
    mod tls {
        use std::sync::{Arc, Mutex};

        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        pub struct Pki {
            pub ca_pem: String,
            pub ca_der: CertificateDer<'static>,
            pub server: (CertificateDer<'static>, Vec<u8>),
            pub client_pem: (String, String),
            pub client_der: CertificateDer<'static>,
        }

        pub fn pki() -> Pki {
            let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
            ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            ca.distinguished_name
                .push(DnType::CommonName, "tabacco test CA");
            let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
            let leaf = |names: Vec<String>, cn: &str| {
                let key = KeyPair::generate().unwrap();
                let mut p = CertificateParams::new(names).unwrap();
                p.distinguished_name.push(DnType::CommonName, cn);
                (p.signed_by(&key, &*ca).unwrap(), key)
            };
            let (server, server_key) = leaf(vec!["localhost".into(), "127.0.0.1".into()], "metadb");
            let (client, client_key) = leaf(vec!["host-a".into()], "host-a");
            Pki {
                ca_pem: ca.pem(),
                ca_der: ca.der().clone(),
                server: (server.der().clone(), server_key.serialize_der()),
                client_pem: (client.pem(), client_key.serialize_pem()),
                client_der: client.der().clone(),
            }
        }

        pub type Seen = Arc<Mutex<Vec<Option<Vec<u8>>>>>;

        pub async fn start(pki: &Pki) -> (String, Seen) {
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let mut roots = rustls::RootCertStore::empty();
            roots.add(pki.ca_der.clone()).unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider.clone(),
            )
            .build()
            .unwrap();
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.server.1.clone()));
            let config = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_client_cert_verifier(verifier)
                .with_single_cert(vec![pki.server.0.clone()], key)
                .unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let seen: Seen = Arc::default();
            let record = seen.clone();
            tokio::spawn(async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    let acceptor = acceptor.clone();
                    let record = record.clone();
                    tokio::spawn(async move {
                        let Ok(mut tls) = acceptor.accept(tcp).await else {
                            record.lock().unwrap().push(None);
                            return;
                        };
                        let peer = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .map(|c| c.to_vec());
                        record.lock().unwrap().push(peer);
                        let mut buf = Vec::new();
                        let mut chunk = [0u8; 1024];
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            match tls.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let _ = tls
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
                            .await;
                        let _ = tls.shutdown().await;
                    });
                }
            });
            (format!("https://127.0.0.1:{}", addr.port()), seen)
        }
    }

    #[tokio::test]
    async fn mutual_tls_presents_the_client_certificate_and_trusts_only_the_ca() {
        let pki = tls::pki();
        let (url, seen) = tls::start(&pki).await;
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let mut cfg = config(&url);
        cfg.tls_ca = Some(write("ca.pem", &pki.ca_pem));
        cfg.tls_cert = Some(write("client.pem", &pki.client_pem.0));
        cfg.tls_key = Some(write("client.key", &pki.client_pem.1));
        let mut opts = fast();
        opts.retry.max_attempts = 1;
        RemoteStore::with_options(&cfg, opts.clone())
            .unwrap()
            .healthz()
            .await
            .unwrap();
        assert_eq!(
            seen.lock().unwrap().last().cloned().flatten(),
            Some(pki.client_der.to_vec()),
            "the server saw the configured client certificate"
        );

        // No client certificate: the server refuses the handshake.
        let mut anonymous = cfg.clone();
        anonymous.tls_cert = None;
        anonymous.tls_key = None;
        let err = RemoteStore::with_options(&anonymous, opts.clone())
            .unwrap()
            .healthz()
            .await
            .unwrap_err();
        assert!(matches!(err, MetadataError::Unavailable { .. }), "{err:?}");

        // Without tls.ca the test CA is not trusted.
        let mut system_roots = cfg.clone();
        system_roots.tls_ca = None;
        let err = RemoteStore::with_options(&system_roots, opts)
            .unwrap()
            .healthz()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("certificate"), "{err}");
    }

    #[test]
    fn bad_settings_name_the_setting_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let mut cfg = config("https://metadb.example:5332");
        cfg.tls_cert = Some(missing.clone());
        cfg.tls_key = Some(missing.clone());
        let e = RemoteStore::new(&cfg).unwrap_err().to_string();
        assert!(
            e.contains("metadb.tls.cert") && e.contains("missing.pem"),
            "{e}"
        );

        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").unwrap();
        let mut cfg = config("https://metadb.example:5332");
        cfg.tls_ca = Some(garbage.clone());
        let e = RemoteStore::new(&cfg).unwrap_err().to_string();
        assert!(
            e.contains("metadb.tls.ca") && e.contains("garbage.pem"),
            "{e}"
        );

        let mut cfg = config("https://metadb.example:5332");
        cfg.tls_cert = Some(garbage.clone());
        cfg.tls_key = Some(garbage.clone());
        let e = RemoteStore::new(&cfg).unwrap_err().to_string();
        assert!(
            e.contains("metadb.tls.cert") && e.contains("metadb.tls.key"),
            "{e}"
        );

        let empty = dir.path().join("empty-token");
        std::fs::write(&empty, "\n").unwrap();
        let mut cfg = config("https://metadb.example:5332");
        cfg.token_file = Some(empty);
        let e = RemoteStore::new(&cfg).unwrap_err().to_string();
        assert!(
            e.contains("metadb.token_file") && e.contains("empty"),
            "{e}"
        );

        let e = RemoteStore::new(&config("ftp://x"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("metadb.url"), "{e}");
        let e = RemoteStore::new(&config("not a url"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("metadb.url"), "{e}");
    }

    #[test]
    fn debug_and_messages_hide_url_credentials() {
        let s = RemoteStore::new(&config("https://user:pw@metadb.example:5332/x")).unwrap();
        assert_eq!(s.url(), "https://metadb.example:5332/x");
        assert!(!format!("{s:?}").contains("pw"));
    }
}
