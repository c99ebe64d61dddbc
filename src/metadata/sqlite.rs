//! The embedded metadata store: a SQLite file (WAL, migrations).

use std::path::Path;

use async_trait::async_trait;

use super::{MetadataError, MetadataStore};
use crate::model::{Backup, Dataset, FindRequest, UpdateActiveJobStatusRequest};

/// A metadata store in a SQLite database.
#[derive(Debug, Clone)]
pub struct SqliteStore {}

impl SqliteStore {
    /// Open (creating if needed) the database file and migrate it.
    pub async fn open(_path: &Path) -> Result<SqliteStore, MetadataError> {
        todo!()
    }
}

#[async_trait]
impl MetadataStore for SqliteStore {
    async fn add_dataset(&self, _b: &Backup, _d: &Dataset) -> Result<(), MetadataError> {
        todo!()
    }
    async fn find_atoms(&self, _r: &FindRequest) -> Result<Vec<Backup>, MetadataError> {
        todo!()
    }
    async fn update_active_job_status(
        &self,
        _r: &UpdateActiveJobStatusRequest,
    ) -> Result<(), MetadataError> {
        todo!()
    }
}
