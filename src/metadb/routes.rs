//! The HTTP routes: the JSON API, health check, OpenAPI document, metrics
//! and the web page.
//!
//! | route | what |
//! |---|---|
//! | `POST /api/add_dataset` | record `{backup, dataset}` (idempotent) |
//! | `POST /api/find_atoms` | a `FindRequest` -> `[Backup]` |
//! | `POST /api/update_active_job_status` | a host's running jobs |
//! | `POST /api/add_verifications` | a host's restore drill results (its own backups only) |
//! | `POST /api/get_verifications` | atom versions -> their latest drill results |
//! | `POST /api/remove_datasets` | remove a host's dataset records -> `{removed}` |
//! | `GET /api/hosts` | hosts: last backup, last report, sources' state, active jobs |
//! | `GET /api/openapi.json` | the OpenAPI 3 document (`docs/openapi.json`) |
//! | `GET /healthz` | 200 when the database answers and takes a write, else 503 |
//! | `GET /metrics` | Prometheus metrics |
//! | `GET /` | the fleet page |
//! | `GET /hosts/{host}` | one host's page |
//!
//! Request bodies must be `application/json`, at most `max_body_bytes`
//! long, and are parsed strictly: an unknown field anywhere is a 400 (the
//! shared wire types in `model` stay lenient for the client side). Every
//! error is `{"error": "..."}` with a 4xx for client mistakes; a panic in a
//! handler becomes a 500 and the server keeps serving.

use std::any::Any;
use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tower_http::catch_panic::CatchPanicLayer;

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use super::page;
use crate::metadata::HostState;
use crate::model::{
    AddDatasetRequest, AddVerificationsRequest, Backup, FindRequest, GetVerificationsRequest,
    JobStatus, RemoveDatasetsRequest, RemoveDatasetsResponse, UpdateActiveJobStatusRequest,
    Verification, api,
};

/// The OpenAPI 3 document of this API (committed as `docs/openapi.json`).
pub const OPENAPI_JSON: &str = include_str!("../../docs/openapi.json");

/// One entry of `GET /api/hosts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostStatus {
    /// Host name.
    pub host: String,
    /// Start time of its newest backup (`null`: none yet, only job reports).
    pub last_backup: Option<DateTime<Utc>>,
    /// Number of its backups in the index.
    pub backups: i64,
    /// Its running jobs, from its latest report.
    pub active_jobs: Vec<JobStatus>,
    /// When that report arrived (`null`: never).
    pub active_jobs_updated: Option<DateTime<Utc>>,
    /// When the host's latest report arrived (`null`: never); the same
    /// time as `active_jobs_updated`.
    #[serde(default)]
    pub last_seen: Option<DateTime<Utc>>,
    /// Whether the host has not reported within the server's
    /// `silent_after` (see [`super::fleet::is_silent`]).
    #[serde(default)]
    pub silent: bool,
    /// What its latest report says beyond its jobs: its sources, outbox
    /// backlog, report interval and prunes (each absent when its agent
    /// does not report it).
    #[serde(flatten)]
    pub state: HostState,
}

/// A JSON request body, parsed strictly (unknown fields refused).
pub struct ApiJson<T>(pub T);

/// Whether the request says its body is JSON.
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|m| {
            let m = m.trim().to_ascii_lowercase();
            m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
        })
        .unwrap_or(false)
}

/// Parse `bytes` as `T`, refusing unknown fields and trailing data, with
/// the path of the offending field in the message.
pub fn parse_strict<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut unknown = Vec::new();
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = {
        let mut record = |path: serde_ignored::Path<'_>| unknown.push(path.to_string());
        let ignored = serde_ignored::Deserializer::new(&mut de, &mut record);
        serde_path_to_error::deserialize(ignored).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path == "." || path.is_empty() {
                ApiError::BadRequest(format!("invalid JSON body: {inner}"))
            } else {
                ApiError::BadRequest(format!("invalid JSON body at {path}: {inner}"))
            }
        })?
    };
    de.end()
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?;
    if !unknown.is_empty() {
        return Err(ApiError::BadRequest(format!(
            "unknown field{} in the JSON body: {} (see /api/openapi.json)",
            if unknown.len() == 1 { "" } else { "s" },
            unknown.join(", ")
        )));
    }
    Ok(value)
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(req.headers()) {
            return Err(ApiError::Client {
                status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
                message: "the request body must be JSON with Content-Type: application/json"
                    .to_owned(),
            });
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            let status = rejection.status();
            if status == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge(
                    "the request body is larger than this server's max_body_bytes".to_owned(),
                )
            } else if status.is_client_error() {
                ApiError::Client {
                    status,
                    message: rejection.body_text(),
                }
            } else {
                ApiError::Internal(rejection.body_text())
            }
        })?;
        parse_strict(&bytes).map(ApiJson)
    }
}

/// Empty success body.
fn ok() -> Json<serde_json::Value> {
    Json(serde_json::json!({}))
}

/// `POST /api/add_dataset`.
async fn add_dataset(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(req): ApiJson<AddDatasetRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.auth.check_write(&caller, &req.backup.host)?;
    state.store.add_dataset(&req.backup, &req.dataset).await?;
    state.metrics.dataset_added();
    tracing::info!(
        caller = caller.name(),
        host = %req.backup.host,
        backup = %req.backup.id,
        dataset = %req.dataset.id,
        atoms = req.dataset.atoms.len(),
        "dataset recorded"
    );
    Ok(ok())
}

/// `POST /api/remove_datasets`: a host removes its own records, an admin
/// any host's.
async fn remove_datasets(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(req): ApiJson<RemoveDatasetsRequest>,
) -> Result<Json<RemoveDatasetsResponse>, ApiError> {
    state.auth.check_write(&caller, &req.host)?;
    let removed = state.store.remove_datasets(&req).await?;
    tracing::info!(
        caller = caller.name(),
        host = %req.host,
        asked = req.datasets.len(),
        removed,
        "dataset records removed"
    );
    Ok(Json(RemoveDatasetsResponse { removed }))
}

/// `POST /api/find_atoms`.
async fn find_atoms(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(req): ApiJson<FindRequest>,
) -> Result<Json<Vec<Backup>>, ApiError> {
    state.auth.check_read(&caller)?;
    Ok(Json(state.store.find_atoms(&req).await?))
}

/// `POST /api/update_active_job_status`.
async fn update_active_job_status(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(req): ApiJson<UpdateActiveJobStatusRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.auth.check_write(&caller, &req.host)?;
    if let Some(job) = req
        .active_jobs
        .iter()
        .find(|j| !j.host.is_empty() && j.host != req.host)
    {
        return Err(ApiError::BadRequest(format!(
            "job {:?} names host {:?} in a report of host {:?}",
            job.job_id, job.host, req.host
        )));
    }
    state.store.update_active_job_status(&req).await?;
    Ok(ok())
}

/// `POST /api/add_verifications`: a host may record results of its own
/// backups only (the ACL checks the host named; the store checks that
/// every atom version is that host's).
async fn add_verifications(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(req): ApiJson<AddVerificationsRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.auth.check_write(&caller, &req.host)?;
    state.store.add_verifications(&req).await?;
    let failed = req
        .verifications
        .iter()
        .filter(|v| v.result == crate::model::VerifyResult::Failed)
        .count();
    tracing::info!(
        caller = caller.name(),
        host = %req.host,
        results = req.verifications.len(),
        failed,
        "verifications recorded"
    );
    Ok(ok())
}

/// `POST /api/get_verifications`.
async fn get_verifications(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(req): ApiJson<GetVerificationsRequest>,
) -> Result<Json<Vec<Verification>>, ApiError> {
    state.auth.check_read(&caller)?;
    Ok(Json(state.store.get_verifications(&req).await?))
}

/// Hosts with backups or job reports, by name, as seen at `now`.
pub async fn host_statuses(state: &AppState) -> Result<Vec<HostStatus>, ApiError> {
    host_statuses_at(state, Utc::now()).await
}

/// Hosts with backups or job reports, by name, as seen at `now`.
pub async fn host_statuses_at(
    state: &AppState,
    now: DateTime<Utc>,
) -> Result<Vec<HostStatus>, ApiError> {
    let hosts = state.store.hosts().await?;
    let jobs = state.store.active_jobs().await?;
    let mut out: std::collections::BTreeMap<String, HostStatus> = hosts
        .into_iter()
        .map(|h| {
            (
                h.host.clone(),
                HostStatus {
                    last_backup: Some(h.last_backup),
                    backups: h.backups,
                    ..HostStatus::unreported(h.host)
                },
            )
        })
        .collect();
    for report in jobs {
        let entry = out
            .entry(report.host.clone())
            .or_insert_with(|| HostStatus::unreported(report.host.clone()));
        entry.active_jobs = report.jobs;
        entry.active_jobs_updated = Some(report.received);
        entry.last_seen = Some(report.received);
        entry.silent = super::fleet::is_silent(
            Some(report.received),
            report.state.report_interval_seconds,
            now,
            state.silent_after,
        );
        entry.state = report.state;
    }
    Ok(out.into_values().collect())
}

impl HostStatus {
    /// A host known by name only: no backups, never reported (silent).
    pub fn unreported(host: String) -> HostStatus {
        HostStatus {
            host,
            last_backup: None,
            backups: 0,
            active_jobs: Vec::new(),
            active_jobs_updated: None,
            last_seen: None,
            silent: true,
            state: HostState::default(),
        }
    }
}

/// `GET /api/hosts`.
async fn hosts(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<Vec<HostStatus>>, ApiError> {
    state.auth.check_read(&caller)?;
    Ok(Json(host_statuses(&state).await?))
}

/// `GET /healthz`: 200 `{"status": "ok"}` when the database answers and
/// takes a write (a one-row probe table), 503 otherwise.
async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    match state.store.ping().await {
        Ok(()) => Json(serde_json::json!({"status": "ok"})).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "health check: the database does not answer");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(ErrorBody {
                    error: "the metadata database does not answer or cannot take writes".to_owned(),
                }),
            )
                .into_response()
        }
    }
}

/// `GET /api/openapi.json`.
async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON).into_response()
}

/// `GET /metrics`.
async fn metrics(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.auth.check_read(&caller)?;
    match state.store.hosts().await {
        Ok(hosts) => state.metrics.set_hosts(&hosts),
        // Serve the rest; the host gauges keep their last values.
        Err(e) => tracing::warn!(error = %e, "metrics: cannot read the host list"),
    }
    match host_statuses(&state).await {
        Ok(hosts) => state.metrics.set_fleet(&hosts),
        Err(e) => tracing::warn!(error = %e, "metrics: cannot read the hosts' reports"),
    }
    let format = crate::exposition::Format::from_accept(
        headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()),
    );
    let text = state
        .metrics
        .encode_as(format)
        .map_err(|e| ApiError::Internal(format!("encoding metrics: {e}")))?;
    Ok(([(header::CONTENT_TYPE, format.content_type())], text).into_response())
}

/// Unknown paths.
async fn not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!(
        "no such route: {method} {}; see /api/openapi.json",
        uri.path()
    ))
}

/// Known paths, wrong method.
async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!(
        "{} does not accept {method}; see /api/openapi.json",
        uri.path()
    ))
}

/// Count and time every request by route and status; answer 503 when one
/// takes longer than the request timeout.
async fn track(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().as_str().to_owned();
    let resp = match tokio::time::timeout(state.request_timeout, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => {
            tracing::warn!(%route, %method, timeout = ?state.request_timeout, "request timed out");
            ApiError::Unavailable(format!(
                "the request took longer than {} s; retry later",
                state.request_timeout.as_secs_f64()
            ))
            .into_response()
        }
    };
    state.metrics.observe_request(
        &route,
        &method,
        resp.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    resp
}

/// A panic in a handler: 500, logged, the server keeps serving.
fn panic_response(err: Box<dyn Any + Send + 'static>) -> Response<Body> {
    let detail = err
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| err.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "unknown panic".to_owned());
    ApiError::Internal(format!("a request handler panicked: {detail}")).into_response()
}

/// Routes with the list of (method, path) they serve.
struct Routes {
    /// The router so far.
    router: Router<Arc<AppState>>,
    /// What it serves.
    list: Vec<(&'static str, &'static str)>,
}

impl Routes {
    /// Add one route.
    fn add(
        mut self,
        method: &'static str,
        path: &'static str,
        handler: MethodRouter<Arc<AppState>>,
    ) -> Routes {
        self.list.push((method, path));
        self.router = self.router.route(path, handler);
        self
    }
}

/// The application and the (method, path) pairs it serves (what the
/// OpenAPI document must describe).
pub fn router(state: Arc<AppState>) -> (Router, Vec<(&'static str, &'static str)>) {
    let routes = Routes {
        router: Router::new(),
        list: Vec::new(),
    }
    .add("post", api::ADD_DATASET, post(add_dataset))
    .add("post", api::FIND_ATOMS, post(find_atoms))
    .add("post", api::REMOVE_DATASETS, post(remove_datasets))
    .add(
        "post",
        api::UPDATE_ACTIVE_JOB_STATUS,
        post(update_active_job_status),
    )
    .add("post", api::ADD_VERIFICATIONS, post(add_verifications))
    .add("post", api::GET_VERIFICATIONS, post(get_verifications))
    .add("get", api::HOSTS, get(hosts))
    .add("get", api::OPENAPI, get(openapi))
    .add("get", api::HEALTHZ, get(healthz))
    .add("get", api::METRICS, get(metrics))
    .add("get", "/", get(page::page))
    .add("get", "/hosts/{host}", get(page::host_page));
    let router = routes
        .router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(axum::middleware::from_fn_with_state(state.clone(), track))
        .with_state(state);
    (router, routes.list)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_parse_names_unknown_and_bad_fields() {
        let ok: FindRequest = parse_strict(br#"{"pattern":"a*","num_versions":1}"#).unwrap();
        assert_eq!(ok.num_versions, 1);
        let e = parse_strict::<FindRequest>(br#"{"pattern":"a*","limit":1}"#).unwrap_err();
        assert!(
            e.to_string().contains("unknown field") && e.to_string().contains("limit"),
            "{e}"
        );
        let e = parse_strict::<AddDatasetRequest>(
            br#"{"backup":{"id":"b","timestamp":"2026-01-01T00:00:00Z","host":"h"},
                 "dataset":{"id":"d","source":"s","atoms":[{"name":"a","pth":"x"}]}}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("pth"), "{e}");
        let e = parse_strict::<FindRequest>(br#"{"pattern":"a*","num_versions":"x"}"#).unwrap_err();
        assert!(e.to_string().contains("num_versions"), "{e}");
        let e = parse_strict::<FindRequest>(br#"{"pattern":"a*"} x"#).unwrap_err();
        assert!(e.to_string().contains("invalid JSON"), "{e}");
        let e = parse_strict::<FindRequest>(b"").unwrap_err();
        assert!(matches!(e, ApiError::BadRequest(_)), "{e}");
        // Go clients' zero time still means "unset".
        let r: FindRequest =
            parse_strict(br#"{"pattern":"x","older_than":"0001-01-01T00:00:00Z"}"#).unwrap();
        assert!(r.older_than.is_none());
    }

    #[test]
    fn json_content_types() {
        let mut h = HeaderMap::new();
        assert!(!is_json(&h));
        for (v, want) in [
            ("application/json", true),
            ("application/json; charset=utf-8", true),
            ("Application/JSON", true),
            ("application/problem+json", true),
            ("text/plain", false),
            ("application/x-www-form-urlencoded", false),
        ] {
            h.insert(header::CONTENT_TYPE, v.parse().unwrap());
            assert_eq!(is_json(&h), want, "{v}");
        }
    }
}
