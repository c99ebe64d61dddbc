//! The restic repository adapter.

use std::path::{Path, PathBuf};

use async_trait::async_trait;

use super::{ProgressFn, RepoError, Repository, SnapshotInfo, SnapshotMeta};
use crate::config::RepositorySpec;
use crate::shell::ShellCommand;

/// A restic repository.
#[derive(Debug)]
pub struct Restic {}

impl Restic {
    /// Build from the configuration.
    pub fn from_spec(_spec: &RepositorySpec) -> Result<Restic, RepoError> {
        todo!()
    }
}

#[async_trait]
impl Repository for Restic {
    async fn backup(
        &self,
        _meta: &SnapshotMeta,
        _paths: &[PathBuf],
        _progress: Option<ProgressFn>,
    ) -> Result<SnapshotInfo, RepoError> {
        todo!()
    }
    async fn stream_backup(
        &self,
        _meta: &SnapshotMeta,
        _producer: ShellCommand,
        _f: &str,
        _progress: Option<ProgressFn>,
    ) -> Result<SnapshotInfo, RepoError> {
        todo!()
    }
    async fn restore(&self, _s: &str, _paths: &[PathBuf], _target: &Path) -> Result<(), RepoError> {
        todo!()
    }
    async fn stream_restore(
        &self,
        _s: &str,
        _f: &str,
        _consumer: ShellCommand,
    ) -> Result<(), RepoError> {
        todo!()
    }
}
