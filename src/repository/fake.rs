//! Test support: a repository in memory that records every call, so a
//! test can say which operations reached it (a dry run: reads only).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, FixedOffset};

use super::record::RepoSnapshot;
use super::{Creation, ProgressFn, PruneReport, RepoError, Repository, SnapshotInfo, SnapshotMeta};
use crate::shell::ShellCommand;
use crate::util::lock;

/// The calls that change a repository or read its data (backups,
/// restores, check, forget, prune, create); listing snapshots is not one.
pub const WRITES_AND_DATA_READS: &[&str] =
    &["backup", "restore", "create", "check", "forget", "prune"];

/// A repository in memory: snapshots are only their metadata.
#[derive(Debug, Default)]
pub struct FakeRepo {
    snapshots: Mutex<Vec<RepoSnapshot>>,
    calls: Mutex<Vec<&'static str>>,
}

impl FakeRepo {
    /// Add a snapshot tagged with `meta`, taken at `time`; its id.
    pub fn add(&self, meta: &SnapshotMeta, time: DateTime<FixedOffset>) -> String {
        let mut snaps = lock(&self.snapshots);
        let id = format!("{:064x}", snaps.len() + 1);
        snaps.push(RepoSnapshot {
            id: id.clone(),
            time,
            host: meta.host.clone(),
            tags: meta.tags(),
            stats: None,
        });
        id
    }

    /// Every call so far, by method name, in order.
    pub fn calls(&self) -> Vec<&'static str> {
        lock(&self.calls).clone()
    }

    /// The calls so far among [`WRITES_AND_DATA_READS`].
    pub fn writes(&self) -> Vec<&'static str> {
        self.calls()
            .into_iter()
            .filter(|c| WRITES_AND_DATA_READS.contains(c))
            .collect()
    }

    /// The ids of the snapshots held.
    pub fn snapshot_ids(&self) -> Vec<String> {
        lock(&self.snapshots).iter().map(|s| s.id.clone()).collect()
    }

    fn call(&self, name: &'static str) {
        lock(&self.calls).push(name);
    }

    fn backed_up(&self, meta: &SnapshotMeta) -> SnapshotInfo {
        self.call("backup");
        let id = self.add(meta, chrono::Utc::now().fixed_offset());
        SnapshotInfo {
            snapshot_id: id,
            ..SnapshotInfo::default()
        }
    }
}

#[async_trait]
impl Repository for FakeRepo {
    async fn backup(
        &self,
        meta: &SnapshotMeta,
        _: &[PathBuf],
        _: Option<ProgressFn>,
    ) -> Result<SnapshotInfo, RepoError> {
        Ok(self.backed_up(meta))
    }

    async fn backup_relative(
        &self,
        meta: &SnapshotMeta,
        _: &Path,
        _: &[PathBuf],
        _: Option<ProgressFn>,
    ) -> Result<SnapshotInfo, RepoError> {
        Ok(self.backed_up(meta))
    }

    async fn stream_backup(
        &self,
        meta: &SnapshotMeta,
        _: ShellCommand,
        _: &str,
        _: Option<ProgressFn>,
    ) -> Result<SnapshotInfo, RepoError> {
        Ok(self.backed_up(meta))
    }

    async fn restore(
        &self,
        _: &str,
        _: &[PathBuf],
        _: &Path,
        _: Option<ProgressFn>,
    ) -> Result<(), RepoError> {
        self.call("restore");
        Ok(())
    }

    async fn create(&self) -> Result<Creation, RepoError> {
        self.call("create");
        Ok(Creation::Existing)
    }

    async fn stream_restore(
        &self,
        _: &str,
        _: &str,
        _: ShellCommand,
        _: Option<ProgressFn>,
    ) -> Result<(), RepoError> {
        self.call("restore");
        Ok(())
    }

    async fn check(&self, _: Option<&str>) -> Result<(), RepoError> {
        self.call("check");
        Ok(())
    }

    async fn snapshots(&self, host: Option<&str>) -> Result<Vec<RepoSnapshot>, RepoError> {
        self.call("snapshots");
        Ok(lock(&self.snapshots)
            .iter()
            .filter(|s| host.is_none_or(|h| s.host == h))
            .cloned()
            .collect())
    }

    async fn forget_ids(&self, ids: &[String]) -> Result<(), RepoError> {
        self.call("forget");
        lock(&self.snapshots).retain(|s| !ids.contains(&s.id));
        Ok(())
    }

    async fn prune(&self) -> Result<PruneReport, RepoError> {
        self.call("prune");
        Ok(PruneReport::default())
    }
}
