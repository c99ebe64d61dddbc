//! The metadata store: the index of backups, datasets and atoms.
//!
//! One trait, [`MetadataStore`], with an embedded SQLite implementation
//! ([`sqlite`]) used when no metadata server is configured; the remote
//! client and the server-side PostgreSQL store implement the same trait.

pub mod glob;
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
