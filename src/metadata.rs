//! The metadata store: the index of backups, datasets and atoms.
//!
//! One trait, [`MetadataStore`], with an embedded SQLite implementation
//! ([`sqlite`]) used when no metadata server is configured; the remote
//! client ([`remote`]), its durable outbox ([`outbox`]) and the server-side
//! PostgreSQL store implement the same trait.

pub mod glob;
pub mod outbox;
pub mod remote;
pub mod sqlite;

use async_trait::async_trait;

use crate::model::{Backup, Dataset, FindRequest, UpdateActiveJobStatusRequest};

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
