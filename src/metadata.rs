//! The metadata store: the index of backups, datasets and atoms.
//!
//! One trait, [`MetadataStore`], with an embedded SQLite implementation
//! ([`sqlite`]) used when no metadata server is configured; the remote
//! client ([`remote`]), its durable outbox ([`outbox`]) and the server-side
//! PostgreSQL store ([`postgres`]) implement the same trait. [`ServerStore`]
//! adds what the `tabacco metadb` server needs for its host listing, web
//! page and metrics; [`open_database`] picks the backend from a `sqlite://`
//! or `postgres://` URL.
//!
//! Request validation shared by every backend lives here too, so that they
//! refuse exactly the same requests.

#[cfg(test)]
pub(crate) mod conformance;
pub mod glob;
pub mod outbox;
pub mod postgres;
pub mod remote;
mod sql;
pub mod sqlite;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Datelike, Utc};

use crate::model::{Backup, Dataset, FindRequest, JobStatus, UpdateActiveJobStatusRequest};
use glob::Pattern;

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
    #[error("metadata database {location}: {source}")]
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
    #[error("metadata server {url} refused the request: HTTP {status}: {message}{}", remote::refusal_hint(*status))]
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
}

impl MetadataError {
    /// The request was refused for good; retrying it cannot help.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            MetadataError::Rejected { .. }
                | MetadataError::BadRequest(_)
                | MetadataError::Conflict(_)
        )
    }
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

    /// Check that the database answers (for health checks).
    async fn ping(&self) -> Result<(), MetadataError>;

    /// Close the connections; later calls fail.
    async fn close(&self);
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

/// Refuse an empty required field.
pub(crate) fn require(what: &str, value: &str) -> Result<(), MetadataError> {
    if value.is_empty() {
        return Err(MetadataError::BadRequest(format!("{what} is empty")));
    }
    Ok(())
}

/// Refuse text SQL cannot carry faithfully (PostgreSQL text refuses NUL).
pub(crate) fn no_nul(what: &str, value: &str) -> Result<(), MetadataError> {
    if value.contains('\0') {
        return Err(MetadataError::BadRequest(format!(
            "{what} {value:?} contains a NUL character"
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

/// Check an add_dataset request before touching the database.
pub(crate) fn validate_add(backup: &Backup, dataset: &Dataset) -> Result<(), MetadataError> {
    require("backup id", &backup.id)?;
    require("backup host", &backup.host)?;
    require("dataset id", &dataset.id)?;
    time_in_range("backup timestamp", &backup.timestamp)?;
    for (what, value) in [
        ("backup id", &backup.id),
        ("backup host", &backup.host),
        ("dataset id", &dataset.id),
        ("dataset name", &dataset.name),
        ("dataset source", &dataset.source),
        ("dataset snapshot_id", &dataset.snapshot_id),
    ] {
        no_nul(what, value)?;
    }
    let mut names = std::collections::HashSet::new();
    for atom in &dataset.atoms {
        require(
            &format!("an atom name in dataset {:?}", dataset.id),
            &atom.name,
        )?;
        no_nul("atom name", &atom.name)?;
        no_nul("atom path", &atom.path)?;
        if !names.insert(atom.name.as_str()) {
            return Err(MetadataError::BadRequest(format!(
                "atom {:?} appears twice in dataset {:?}",
                atom.name, dataset.id
            )));
        }
    }
    Ok(())
}

/// Check a find request; returns its parsed pattern.
pub(crate) fn validate_find(req: &FindRequest) -> Result<Pattern, MetadataError> {
    let pattern = Pattern::parse(&req.pattern)
        .map_err(|e| MetadataError::BadRequest(format!("pattern {:?}: {e}", req.pattern)))?;
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
    require("host", &req.host)?;
    no_nul("host", &req.host)?;
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
