//! The metadata store: the index of backups, datasets and atoms.
//!
//! One trait, [`MetadataStore`], and which side each implementation serves:
//!
//! - [`client`], the host side (the agent and the commands): the HTTP
//!   client of a metadata server ([`client::remote`]) behind a durable
//!   outbox ([`client::outbox`]), and [`client::Stores`], which picks it or
//!   the embedded store from the host's configuration;
//! - the SQL backends: [`sqlite`], the embedded store of a host without a
//!   metadata server and one backend of the server, and [`postgres`], the
//!   server's other backend; what they share is written once in `sql`,
//!   generic over the sqlx database. [`ServerStore`] adds what the
//!   `tabacco metadb` server needs for its host listing, web page and
//!   metrics; [`open_database`] picks the server's backend from a
//!   `sqlite://` or `postgres://` URL. The server itself is the `metadb`
//!   module.
//!
//! Request validation shared by every backend lives here too, so that they
//! refuse exactly the same requests.
//!
//! # Error policy
//!
//! Every store error falls in one of three classes, decided in one place,
//! [`MetadataError::recovery`]:
//!
//! - [`Recovery::Retry`]: the store could not be reached or failed for
//!   now (network errors, HTTP 5xx and 429, a database error, local I/O,
//!   an invalid response). The remote client retries such a request
//!   itself with backoff (HTTP status by [`client::remote::is_retryable_status`]);
//!   what still fails is kept (the outbox keeps its record) and tried
//!   again later.
//! - [`Recovery::FixSetup`]: the request may be fine but this host's setup
//!   is not (HTTP 401 credentials, 404/405 a URL that is not a tabacco
//!   server, 407 a proxy, 408 a timeout in between; a bad `metadb` block):
//!   nothing is thrown away; the error says what to fix, and a later
//!   attempt after the fix succeeds.
//! - [`Recovery::Refused`]: this request itself is refused for good (a bad
//!   request, 403 a record of another host, 409 a conflict with what is
//!   stored, 413 too large, other 4xx): sending it again fails again, so
//!   the outbox moves such a record aside (`outbox/rejected/`) instead of
//!   blocking the queue with it.

pub mod client;
#[cfg(test)]
pub(crate) mod conformance;
#[cfg(test)]
pub(crate) mod faults;
pub mod postgres;
mod sql;
pub mod sqlite;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Datelike, Utc};

use serde::{Deserialize, Serialize};

use crate::glob::Pattern;
use crate::model::{
    AddVerificationsRequest, Backup, Dataset, FindRequest, GetVerificationsRequest, JobStatus,
    MaintenanceRun, RemoveDatasetsRequest, SourceReport, UpdateActiveJobStatusRequest,
    Verification,
};
use crate::names::excerpt;

/// Errors from a metadata store.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    /// The request was wrong (bad pattern, missing field, ...).
    #[error("invalid request: {0}")]
    BadRequest(String),
    /// The request contradicts what is stored (e.g. a known backup id with
    /// another host or timestamp); nothing was changed.
    #[error("conflicts with stored data: {0}")]
    Conflict(String),
    /// The database failed.
    #[error("metadata database {location}: {source}{}", storage_hint(source))]
    Database {
        /// Which database (file path or URL without password).
        location: String,
        /// The error.
        #[source]
        source: sqlx::Error,
    },
    /// Applying schema migrations failed.
    #[error("metadata database {location}: schema migration failed: {source}")]
    Migration {
        /// Which database.
        location: String,
        /// The error.
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    /// Local I/O (creating the database directory, ...).
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The metadata server refused the request for good (an HTTP status
    /// that a retry cannot change, e.g. 400, 403, 409, 413): sending the
    /// same request again will fail again.
    #[error("metadata server {url} refused the request: HTTP {status}: {message}{}", client::remote::refusal_hint(*status))]
    Rejected {
        /// The URL requested.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The server's error text (`{"error": ...}`), or the start of its body.
        message: String,
    },
    /// The metadata server could not be reached or kept failing (network
    /// errors, 5xx, 429) after every retry; a later attempt may succeed.
    #[error("metadata server {url} is unavailable after {attempts} attempt(s): {reason}")]
    Unavailable {
        /// The URL requested.
        url: String,
        /// How many attempts were made.
        attempts: u32,
        /// The HTTP status of the last attempt, if there was a response.
        status: Option<u16>,
        /// What went wrong last (network error, or status and server text).
        reason: String,
    },
    /// The metadata server answered 2xx with a body that is not what the
    /// API promises.
    #[error("metadata server {url} sent an invalid response: {message}")]
    InvalidResponse {
        /// The URL requested.
        url: String,
        /// What was wrong.
        message: String,
    },
    /// The client configuration (`metadb` in `agent.yml`) cannot be used.
    #[error("{0}")]
    Config(String),
    /// A queued request was refused for good while it was delivered; the
    /// outbox keeps it aside with the reason (see
    /// [`client::outbox::queue`]).
    #[error(
        "{reason}; the request is kept in {} with a .reason file beside it (move it back into the outbox to send it again)",
        file.display()
    )]
    KeptAside {
        /// The request's file in `outbox/rejected/`.
        file: PathBuf,
        /// Why it was refused (its `.reason` file).
        reason: String,
    },
}

/// What to check when SQLite reports a full disk (`SQLITE_FULL`) or an
/// I/O error (`SQLITE_IOERR_*`, e.g. no room for its shared-memory file).
fn storage_hint(e: &sqlx::Error) -> &'static str {
    let code = match e {
        sqlx::Error::Database(db) => db.code().and_then(|c| c.parse::<i32>().ok()),
        _ => None,
    };
    match code.map(|c| c & 0xff) {
        Some(10 | 13) => {
            " (check that the file system holding the database has free space and is writable; \
             the next write after that succeeds)"
        }
        _ => "",
    }
}

/// What to do after a failed store operation (see the module's error
/// policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Try again later: the store may answer then.
    Retry,
    /// Keep the request; this host's setup must be fixed first.
    FixSetup,
    /// The request itself is refused for good; do not send it again.
    Refused,
}

impl MetadataError {
    /// The one decision of the error policy: what a caller does next.
    pub fn recovery(&self) -> Recovery {
        match self {
            MetadataError::BadRequest(_)
            | MetadataError::Conflict(_)
            | MetadataError::KeptAside { .. } => Recovery::Refused,
            MetadataError::Rejected { status, .. } => match status {
                401 | 404 | 405 | 407 | 408 => Recovery::FixSetup,
                429 => Recovery::Retry,
                400..=499 => Recovery::Refused,
                // Redirects are not followed and other statuses are not
                // the API's: the URL is likely wrong.
                _ => Recovery::FixSetup,
            },
            MetadataError::Config(_) => Recovery::FixSetup,
            MetadataError::Database { .. }
            | MetadataError::Migration { .. }
            | MetadataError::Io { .. }
            | MetadataError::Unavailable { .. }
            | MetadataError::InvalidResponse { .. } => Recovery::Retry,
        }
    }
}

/// Where a write accepted by a store is (see
/// [`MetadataStore::add_verifications`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recording {
    /// In the index now.
    Stored,
    /// Safely queued in this host's outbox (it survives a crash), not yet
    /// in the index: the metadata server at `url` could not take it now,
    /// and the agent or the next command delivers it.
    Queued {
        /// The server it is queued for.
        url: String,
    },
}

/// The interface to the index of backups.
#[async_trait]
pub trait MetadataStore: Send + Sync {
    /// Record a dataset of a backup. The backup may already exist (its
    /// `datasets` field is ignored); adding the same (backup id, dataset id)
    /// again is a success and changes nothing.
    async fn add_dataset(&self, backup: &Backup, dataset: &Dataset) -> Result<(), MetadataError>;

    /// Backups holding atoms that match the request, newest first; each
    /// holds only its datasets with matching atoms, and those only the
    /// matching atoms.
    async fn find_atoms(&self, req: &FindRequest) -> Result<Vec<Backup>, MetadataError>;

    /// Store a host's periodic report of its running jobs (the latest
    /// report per host is kept).
    async fn update_active_job_status(
        &self,
        req: &UpdateActiveJobStatusRequest,
    ) -> Result<(), MetadataError>;

    /// Record the results of restore drills run by `req.host` on its own
    /// backups: each replaces the stored result of its atom version
    /// (keeping the time of the last `ok` one). Refused as a whole when an
    /// atom version is not in the index or belongs to another host (both
    /// [`MetadataError::Conflict`]). Says whether the results are in the
    /// index or only queued for it (a store behind an outbox).
    async fn add_verifications(
        &self,
        req: &AddVerificationsRequest,
    ) -> Result<Recording, MetadataError> {
        let _ = req;
        Err(MetadataError::BadRequest(
            "this metadata store does not keep verification results".into(),
        ))
    }

    /// The latest drill of each of the atom versions asked about (versions
    /// never drilled are left out), in no particular order.
    async fn get_verifications(
        &self,
        req: &GetVerificationsRequest,
    ) -> Result<Vec<Verification>, MetadataError> {
        let _ = req;
        Ok(Vec::new())
    }

    /// Remove dataset records of `req.host` (those of other hosts named in
    /// it are left alone), and the backups left without datasets; returns
    /// how many records were removed. Removing a record that is not there
    /// is not an error.
    async fn remove_datasets(&self, req: &RemoveDatasetsRequest) -> Result<i64, MetadataError> {
        let _ = req;
        Err(MetadataError::Config(
            "this metadata store cannot remove records".into(),
        ))
    }
}

/// The latest running-jobs report of one host.
#[derive(Debug, Clone, PartialEq)]
pub struct HostActiveJobs {
    /// The reporting host.
    pub host: String,
    /// When the store received the report.
    pub received: DateTime<Utc>,
    /// The jobs running on the host at that time (possibly none).
    pub jobs: Vec<JobStatus>,
    /// The rest of that report: the sources' state, the outbox backlog.
    pub state: HostState,
}

/// What a host's latest report says beyond its running jobs (stored as
/// JSON next to them; every field is absent for an agent that does not
/// report it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostState {
    /// Every configured source of the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sources: Option<Vec<SourceReport>>,
    /// Records (dataset records, verification results) waiting in its
    /// outbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbox_pending: Option<i64>,
    /// Records refused for good, kept in its `outbox/rejected/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbox_rejected: Option<i64>,
    /// How often it reports, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_interval_seconds: Option<f64>,
    /// When it prunes the repository (absent: never, or not reported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune_schedule: Option<String>,
    /// How its last prune ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_prune: Option<MaintenanceRun>,
    /// The repository it backs up into (restic's id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository_id: Option<String>,
}

/// A host that has backups in the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSummary {
    /// Host name.
    pub host: String,
    /// Start time of its newest backup.
    pub last_backup: DateTime<Utc>,
    /// Number of its backups in the index.
    pub backups: i64,
}

/// What the metadata server needs from its database beyond
/// [`MetadataStore`]: listings for `GET /api/hosts`, the web page and the
/// metrics.
#[async_trait]
pub trait ServerStore: MetadataStore {
    /// Every host with backups in the index, with its newest backup time
    /// and number of backups, by host name.
    async fn hosts(&self) -> Result<Vec<HostSummary>, MetadataError>;

    /// The latest running-jobs report of every host that sent one, by host
    /// name.
    async fn active_jobs(&self) -> Result<Vec<HostActiveJobs>, MetadataError>;

    /// The `limit` newest backups, newest first (ties by id), each with
    /// all its datasets (ordered by source, name, id) but without atoms.
    async fn recent_backups(&self, limit: i64) -> Result<Vec<Backup>, MetadataError>;

    /// The `limit` newest backups of `host`, in the same form as
    /// [`ServerStore::recent_backups`] (a host's page).
    async fn host_backups(&self, host: &str, limit: i64) -> Result<Vec<Backup>, MetadataError>;

    /// The atom versions whose latest restore drill failed, newest drill
    /// first, at most `limit`, of `host` only when given (the pages).
    async fn failed_verifications(
        &self,
        host: Option<&str>,
        limit: i64,
    ) -> Result<Vec<FailedVerification>, MetadataError> {
        let _ = (host, limit);
        Ok(Vec::new())
    }

    /// Check that the database answers and takes a write now (for health
    /// checks: a store that can read but not write, e.g. on a full disk,
    /// fails).
    async fn ping(&self) -> Result<(), MetadataError>;

    /// Close the connections; later calls fail.
    async fn close(&self);
}

/// An atom version whose latest restore drill failed, with what a page
/// shows of it.
#[derive(Debug, Clone, PartialEq)]
pub struct FailedVerification {
    /// The host whose backup it is.
    pub host: String,
    /// Its global path `source/dataset/atom`.
    pub atom_path: String,
    /// When its backup started.
    pub backup_time: DateTime<Utc>,
    /// The drill's result (what failed, when, the last ok drill).
    pub verification: Verification,
}

/// Where a server's database lives, parsed from its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// `sqlite:///path/to/file` (a relative path is relative to the
    /// configuration file's directory).
    Sqlite(PathBuf),
    /// `postgres://user@host:port/db?...` (or `postgresql://`), passed to
    /// the driver as is.
    Postgres(String),
}

impl DatabaseUrl {
    /// Parse a database URL; relative SQLite paths are resolved against
    /// `base_dir`.
    pub fn parse(url: &str, base_dir: &Path) -> Result<DatabaseUrl, String> {
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(format!(
                    "database URL {url:?} names no file: write sqlite:///path/to/metadb.sqlite"
                ));
            }
            let path = Path::new(path);
            return Ok(DatabaseUrl::Sqlite(if path.is_absolute() {
                path.to_owned()
            } else {
                base_dir.join(path)
            }));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(DatabaseUrl::Postgres(url.to_owned()));
        }
        Err(format!(
            "database URL {:?} is neither sqlite:///path nor postgres://...",
            crate::redact::url(url)
        ))
    }
}

impl std::fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DatabaseUrl::Sqlite(p) => write!(f, "sqlite://{}", p.display()),
            DatabaseUrl::Postgres(url) => f.write_str(&crate::redact::url(url)),
        }
    }
}

/// Open (creating or migrating as needed) the database a server uses.
pub async fn open_database(url: &DatabaseUrl) -> Result<Arc<dyn ServerStore>, MetadataError> {
    Ok(match url {
        DatabaseUrl::Sqlite(path) => Arc::new(sqlite::SqliteStore::open(path).await?),
        DatabaseUrl::Postgres(url) => Arc::new(postgres::PostgresStore::connect(url).await?),
    })
}

/// Refuse text SQL cannot carry faithfully (PostgreSQL text refuses NUL).
pub(crate) fn no_nul(what: &str, value: &str) -> Result<(), MetadataError> {
    if value.contains('\0') {
        return Err(MetadataError::BadRequest(format!(
            "{what} {} contains a NUL character",
            excerpt(value)
        )));
    }
    Ok(())
}

/// Refuse a time outside years 1 to 9999: every backend stores those
/// exactly (PostgreSQL's range ends in 4713 BC).
pub(crate) fn time_in_range(what: &str, t: &DateTime<Utc>) -> Result<(), MetadataError> {
    if !(1..=9999).contains(&t.year()) {
        return Err(MetadataError::BadRequest(format!(
            "{what} {} is outside the years 1 to 9999",
            t.to_rfc3339()
        )));
    }
    Ok(())
}

/// Check an add_dataset request before touching the database: every
/// identifier by [`crate::names::check_record`] (the message names the
/// field), the time range, no NUL in the snapshot id, no negative totals,
/// no atom twice.
pub(crate) fn validate_add(backup: &Backup, dataset: &Dataset) -> Result<(), MetadataError> {
    crate::names::check_record(backup, dataset).map_err(MetadataError::BadRequest)?;
    time_in_range("backup.timestamp", &backup.timestamp)?;
    no_nul("dataset.snapshot_id", &dataset.snapshot_id)?;
    for (what, value) in [
        ("dataset.total_files", dataset.total_files),
        ("dataset.total_bytes", dataset.total_bytes),
        ("dataset.bytes_added", dataset.bytes_added),
        ("dataset.duration", dataset.duration),
    ] {
        if value < 0 {
            return Err(MetadataError::BadRequest(format!(
                "{what} is {value}: it cannot be negative"
            )));
        }
    }
    let mut names = std::collections::HashSet::new();
    for atom in &dataset.atoms {
        for (what, value) in [("size", atom.size), ("files", atom.files)] {
            if let Some(value) = value.filter(|v| *v < 0) {
                return Err(MetadataError::BadRequest(format!(
                    "dataset.atoms: atom {:?} has {what} {value}: it cannot be negative",
                    atom.name
                )));
            }
        }
        if !names.insert(atom.name.as_str()) {
            return Err(MetadataError::BadRequest(format!(
                "dataset.atoms: atom {:?} appears twice in dataset {:?}",
                atom.name, dataset.id
            )));
        }
    }
    Ok(())
}

/// Longest `error` text of a verification result that stores keep, in
/// bytes (longer ones are cut at a character boundary).
pub const MAX_VERIFY_ERROR_BYTES: usize = 4096;

/// Most results in one `add_verifications` request, and most atom versions
/// in one `get_verifications` request.
pub const MAX_VERIFICATIONS_PER_REQUEST: usize = 10_000;

/// Check an add_verifications request before touching the database: the
/// host, every identifier, the times; returns the results with their
/// `error` cut to [`MAX_VERIFY_ERROR_BYTES`] and `last_ok` cleared (the
/// store keeps it). Several results for one atom version are read like
/// results sent one after another: the newest (the last, at equal times)
/// is kept.
pub(crate) fn validate_verifications(
    req: &AddVerificationsRequest,
) -> Result<Vec<Verification>, MetadataError> {
    crate::names::check_host(&req.host)
        .map_err(|e| MetadataError::BadRequest(format!("host: {e}")))?;
    if req.verifications.len() > MAX_VERIFICATIONS_PER_REQUEST {
        return Err(MetadataError::BadRequest(format!(
            "{} verifications in one request (at most {MAX_VERIFICATIONS_PER_REQUEST}); send them in parts",
            req.verifications.len()
        )));
    }
    let checked: Vec<Verification> = req
        .verifications
        .iter()
        .enumerate()
        .map(|(i, v)| {
            check_version(&format!("verifications[{i}]"), &v.version())?;
            time_in_range(&format!("verifications[{i}].verified_at"), &v.verified_at)?;
            let error = v.error.as_deref().map(|e| {
                let mut end = e.len().min(MAX_VERIFY_ERROR_BYTES);
                while !e.is_char_boundary(end) {
                    end -= 1;
                }
                e[..end].replace('\0', " ")
            });
            Ok(Verification {
                error,
                last_ok: None,
                verified_at: truncate_micros(&v.verified_at),
                ..v.clone()
            })
        })
        .collect::<Result<_, _>>()?;
    let mut newest: std::collections::HashMap<crate::model::AtomVersion, usize> =
        std::collections::HashMap::new();
    for (i, v) in checked.iter().enumerate() {
        let slot = newest.entry(v.version()).or_insert(i);
        if checked[*slot].verified_at <= v.verified_at {
            *slot = i;
        }
    }
    let mut keep: Vec<usize> = newest.into_values().collect();
    keep.sort_unstable();
    Ok(keep.into_iter().map(|i| checked[i].clone()).collect())
}

/// Check the identifiers of an atom version (`what` names it in errors).
pub(crate) fn check_version(
    what: &str,
    v: &crate::model::AtomVersion,
) -> Result<(), MetadataError> {
    crate::names::check_id("backup id", &v.backup_id)
        .and_then(|()| crate::names::check_id("dataset id", &v.dataset_id))
        .and_then(|()| crate::names::check_name("atom", &v.atom))
        .map_err(|e| MetadataError::BadRequest(format!("{what}: {e}")))
}

/// Check that every result is about an atom version in the index that
/// belongs to `host` (`stored`: the host of each atom version found).
pub(crate) fn check_owned(
    host: &str,
    results: &[Verification],
    stored: &std::collections::HashMap<crate::model::AtomVersion, String>,
) -> Result<(), MetadataError> {
    for (i, v) in results.iter().enumerate() {
        match stored.get(&v.version()) {
            // A well-formed request about something the index does not hold
            // (forgotten since, or never recorded): a conflict with what is
            // stored, like a foreign key (409), not a malformed request.
            None => {
                return Err(MetadataError::Conflict(format!(
                    "verifications[{i}]: atom {} of backup {} dataset {} is not in the index",
                    excerpt(&v.atom),
                    excerpt(&v.backup_id),
                    excerpt(&v.dataset_id)
                )));
            }
            Some(owner) if owner != host => {
                return Err(MetadataError::Conflict(format!(
                    "verifications[{i}]: backup {} belongs to host {}, not {}: a host records \
                     verifications of its own backups only",
                    excerpt(&v.backup_id),
                    excerpt(owner),
                    excerpt(host)
                )));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Distinct backup ids of some atom versions, in chunks of at most `n`
/// (for `WHERE backup_id IN (...)` queries).
pub(crate) fn backup_id_chunks<'a>(
    versions: impl Iterator<Item = &'a str>,
    n: usize,
) -> Vec<Vec<String>> {
    let ids: std::collections::BTreeSet<&str> = versions.collect();
    let ids: Vec<String> = ids.into_iter().map(str::to_owned).collect();
    ids.chunks(n.max(1)).map(<[String]>::to_vec).collect()
}

/// Check a get_verifications request.
pub(crate) fn validate_get_verifications(
    req: &GetVerificationsRequest,
) -> Result<(), MetadataError> {
    if req.versions.len() > MAX_VERIFICATIONS_PER_REQUEST {
        return Err(MetadataError::BadRequest(format!(
            "{} atom versions in one request (at most {MAX_VERIFICATIONS_PER_REQUEST}); ask in parts",
            req.versions.len()
        )));
    }
    for (i, v) in req.versions.iter().enumerate() {
        check_version(&format!("versions[{i}]"), v)?;
    }
    Ok(())
}

/// Most records one remove request may name (a bound on the server's
/// work per request; clients send more in several requests).
pub const MAX_REMOVE_DATASETS: usize = 10_000;

/// Check a remove request: the host and every id by the rules of
/// [`crate::names`], at most [`MAX_REMOVE_DATASETS`] records.
pub(crate) fn validate_remove(req: &RemoveDatasetsRequest) -> Result<(), MetadataError> {
    crate::names::check_host(&req.host)
        .map_err(|e| MetadataError::BadRequest(format!("host: {e}")))?;
    if req.datasets.len() > MAX_REMOVE_DATASETS {
        return Err(MetadataError::BadRequest(format!(
            "datasets: {} records in one request (at most {MAX_REMOVE_DATASETS}); send several",
            req.datasets.len()
        )));
    }
    for (i, d) in req.datasets.iter().enumerate() {
        crate::names::check_id("backup id", &d.backup_id)
            .map_err(|e| MetadataError::BadRequest(format!("datasets[{i}].backup_id: {e}")))?;
        crate::names::check_id("dataset id", &d.dataset_id)
            .map_err(|e| MetadataError::BadRequest(format!("datasets[{i}].dataset_id: {e}")))?;
    }
    Ok(())
}

/// Check a find request; returns its parsed pattern.
pub(crate) fn validate_find(req: &FindRequest) -> Result<Pattern, MetadataError> {
    let pattern = Pattern::parse(&req.pattern).map_err(|e| {
        MetadataError::BadRequest(format!("pattern {}: {e}", excerpt(&req.pattern)))
    })?;
    if req.num_versions < 0 {
        return Err(MetadataError::BadRequest(format!(
            "num_versions is {}: give 0 for all versions or a positive count",
            req.num_versions
        )));
    }
    no_nul("host", &req.host)?;
    if let Some(t) = &req.older_than {
        time_in_range("older_than", t)?;
    }
    Ok(pattern)
}

/// Check a running-jobs report and encode its jobs as the JSON text that
/// stores keep.
pub(crate) fn jobs_json(req: &UpdateActiveJobStatusRequest) -> Result<String, MetadataError> {
    crate::names::check_host(&req.host)
        .map_err(|e| MetadataError::BadRequest(format!("host: {e}")))?;
    let jobs = serde_json::to_string(&req.active_jobs)
        .map_err(|e| MetadataError::BadRequest(format!("jobs of host {:?}: {e}", req.host)))?;
    // Store only what active_jobs() can read back (a NaN progress would be
    // written as null and poison the host's entry).
    serde_json::from_str::<Vec<JobStatus>>(&jobs).map_err(|e| {
        MetadataError::BadRequest(format!(
            "jobs of host {:?} cannot be stored faithfully: {e}",
            req.host
        ))
    })?;
    Ok(jobs)
}

/// The JSON text that stores keep for the rest of a report
/// ([`HostState`]); refuses what could not be read back.
pub(crate) fn state_json(req: &UpdateActiveJobStatusRequest) -> Result<String, MetadataError> {
    let state = HostState {
        sources: req.sources.clone(),
        outbox_pending: req.outbox_pending,
        outbox_rejected: req.outbox_rejected,
        report_interval_seconds: req.report_interval_seconds,
        prune_schedule: req.prune_schedule.clone(),
        last_prune: req.last_prune.clone(),
        repository_id: req.repository_id.clone(),
    };
    if let Some(id) = &state.repository_id {
        crate::names::check_id("repository id", id)
            .map_err(|e| MetadataError::BadRequest(format!("repository_id: {e}")))?;
    }
    for (i, s) in state.sources.iter().flatten().enumerate() {
        crate::names::check_source_name(&s.name)
            .map_err(|e| MetadataError::BadRequest(format!("sources[{i}].name: {e}")))?;
    }
    let json = serde_json::to_string(&state)
        .map_err(|e| MetadataError::BadRequest(format!("report of host {:?}: {e}", req.host)))?;
    match serde_json::from_str::<HostState>(&json) {
        Ok(back) if back == state => Ok(json),
        Ok(_) => Err(MetadataError::BadRequest(format!(
            "report of host {:?} cannot be stored faithfully (a number that is not finite?)",
            req.host
        ))),
        Err(e) => Err(MetadataError::BadRequest(format!(
            "report of host {:?} cannot be stored faithfully: {e}",
            req.host
        ))),
    }
}

/// Decode a stored report row (`jobs` JSON, `state` JSON or NULL); the
/// error says what is wrong with it.
pub(crate) fn decode_report(
    host: String,
    received: DateTime<Utc>,
    jobs: &str,
    state: Option<&str>,
) -> Result<HostActiveJobs, String> {
    let jobs = serde_json::from_str(jobs)
        .map_err(|e| format!("active_jobs row of host {host:?} is not a JSON list of jobs: {e}"))?;
    let state = match state {
        None => HostState::default(),
        Some(s) => serde_json::from_str(s).map_err(|e| {
            format!("active_jobs row of host {host:?}: its state is not valid: {e}")
        })?,
    };
    Ok(HostActiveJobs {
        host,
        received,
        jobs,
        state,
    })
}

/// A time truncated to whole microseconds, the resolution every backend
/// stores.
pub(crate) fn truncate_micros(t: &DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(*t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls() {
        let base = Path::new("/etc/tabacco");
        assert_eq!(
            DatabaseUrl::parse("sqlite:///var/lib/x.db", base).unwrap(),
            DatabaseUrl::Sqlite("/var/lib/x.db".into())
        );
        assert_eq!(
            DatabaseUrl::parse("sqlite://rel/x.db", base).unwrap(),
            DatabaseUrl::Sqlite("/etc/tabacco/rel/x.db".into())
        );
        assert!(DatabaseUrl::parse("sqlite://", base).is_err());
        let pg = DatabaseUrl::parse("postgres://u:secret@h:5432/db", base).unwrap();
        assert_eq!(
            pg,
            DatabaseUrl::Postgres("postgres://u:secret@h:5432/db".into())
        );
        assert!(!pg.to_string().contains("secret"), "{pg}");
        let err = DatabaseUrl::parse("mysql://u:secret@h/db", base).unwrap_err();
        assert!(err.contains("neither") && !err.contains("secret"), "{err}");
    }

    #[test]
    fn refusals_about_the_record_are_told_from_setup_problems() {
        let rejected = |status| MetadataError::Rejected {
            url: "http://metadb/api/add_dataset".into(),
            status,
            message: format!("scripted {status}"),
        };
        let refused = |e: &MetadataError| e.recovery() == Recovery::Refused;
        for s in [400, 403, 409, 413, 422] {
            assert!(refused(&rejected(s)), "{s}");
        }
        for s in [401, 404, 405, 407, 408, 308] {
            assert_eq!(rejected(s).recovery(), Recovery::FixSetup, "{s}");
        }
        assert_eq!(rejected(429).recovery(), Recovery::Retry);
        let unavailable = MetadataError::Unavailable {
            url: "http://metadb/api/add_dataset".into(),
            attempts: 1,
            status: None,
            reason: "connection refused".into(),
        };
        assert_eq!(unavailable.recovery(), Recovery::Retry);
        assert!(refused(&MetadataError::Conflict("x".into())));
    }

    #[test]
    fn times_outside_years_1_to_9999_are_refused() {
        let ok: DateTime<Utc> = "0001-01-01T00:00:00Z".parse().unwrap();
        assert!(time_in_range("t", &ok).is_ok());
        let bad = DateTime::<Utc>::MIN_UTC;
        assert!(matches!(
            time_in_range("t", &bad),
            Err(MetadataError::BadRequest(_))
        ));
        let bad: DateTime<Utc> = "+10000-01-01T00:00:00Z".parse().unwrap();
        assert!(time_in_range("t", &bad).is_err());
    }
}
