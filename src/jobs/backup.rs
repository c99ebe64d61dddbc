//! One backup of a source under the source's lock: the flow that the
//! agent's scheduled jobs and `tabacco backup` share.
//!
//! [`SourceJob::start`] checks that the source is configured and takes its
//! lock ([`super::lock`]), or says who holds it; [`SourceJob::backup`] runs
//! the backup with the [`RuntimeContext`] the job started with, whatever
//! reloads happen meanwhile. The agent then applies the source's retention
//! policy with [`SourceJob::apply_retention`], still under the lock.
//! Dropping the job releases the lock. A dry run takes no lock: it writes
//! nothing, so it neither waits for nor blocks a real run.

use std::future::Future;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::lock::{HolderKind, LockError, SourceLock};
use crate::manager::maintenance::{ForgetReport, MaintenanceError};
use crate::manager::{BackupReport, Manager, ManagerError, Observer};
use crate::runtime::RuntimeContext;

/// Why a backup of a source did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration has no such source (any more).
    #[error("source '{0}' is not configured")]
    NotConfigured(String),
    /// The source's lock is held, or could not be taken.
    #[error(transparent)]
    Lock(#[from] LockError),
}

/// A backup of one source that holds the source's lock (except in a dry
/// run) until it is dropped.
#[derive(Debug)]
pub struct SourceJob {
    rctx: RuntimeContext,
    source: String,
    _lock: Option<SourceLock>,
}

/// Take the lock of `source` for `kind` without waiting, as every run that
/// changes a source does (a backup, `tabacco forget`). The source must be
/// configured: its lock file is named after it. `None` in a dry run: it
/// writes nothing, so it neither waits for nor blocks a real run.
pub fn lock_source(
    rctx: &RuntimeContext,
    source: &str,
    kind: HolderKind,
) -> Result<Option<SourceLock>, StartError> {
    if rctx.find_source(source).is_none() {
        return Err(StartError::NotConfigured(source.to_string()));
    }
    if rctx.config().dry_run {
        return Ok(None);
    }
    Ok(Some(SourceLock::try_acquire(
        rctx.work_dir(),
        source,
        kind,
    )?))
}

impl SourceJob {
    /// Take the lock of `source` for `kind` without waiting
    /// ([`lock_source`]).
    pub fn start(
        rctx: RuntimeContext,
        source: &str,
        kind: HolderKind,
    ) -> Result<SourceJob, StartError> {
        let lock = lock_source(&rctx, source, kind)?;
        Ok(SourceJob {
            rctx,
            source: source.to_string(),
            _lock: lock,
        })
    }

    /// The source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The configuration the job runs with.
    pub fn runtime(&self) -> &RuntimeContext {
        &self.rctx
    }

    /// Back the source up: [`Manager::backup_until`] with `stop` (no new
    /// dataset starts once it is cancelled) and `interrupt` (running
    /// commands are stopped when it completes).
    pub async fn backup(
        &self,
        manager: &Manager,
        observer: Arc<dyn Observer>,
        stop: &CancellationToken,
        interrupt: impl Future<Output = String>,
    ) -> Result<BackupReport, ManagerError> {
        manager
            .backup_until(&self.rctx, &self.source, observer, stop, interrupt)
            .await
    }

    /// Apply the source's retention policy after `report`, under the lock.
    /// `None` when there is nothing to apply: a source without a policy,
    /// or a backup that recorded nothing (a dry run, or a run that failed:
    /// versions are never forgotten in favour of it).
    pub async fn apply_retention(
        &self,
        manager: &Manager,
        report: &BackupReport,
    ) -> Option<Result<ForgetReport, MaintenanceError>> {
        let policy = self.rctx.find_source(&self.source)?.retention;
        if policy.is_none() || report.backup.datasets.is_empty() {
            return None;
        }
        let names = [self.source.clone()];
        Some(manager.forget(&self.rctx, &names).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(dir: &std::path::Path, main_extra: &str) -> RuntimeContext {
        std::fs::create_dir_all(dir.join("sources")).unwrap();
        std::fs::write(
            dir.join("agent.yml"),
            format!(
                "hostname: h1\nwork_dir: work\nrepository:\n  type: restic\n  params:\n    uri: /nonexistent\n    password: x\n{main_extra}"
            ),
        )
        .unwrap();
        std::fs::create_dir_all(dir.join("handlers")).unwrap();
        std::fs::write(dir.join("handlers/file.yml"), "name: file\ntype: file\n").unwrap();
        std::fs::write(
            dir.join("sources/www.yml"),
            "name: www\nhandler: file\nparams:\n  path: /\ndatasets:\n  - name: site\n    atoms: [{name: a, path: etc/hostname}]\n",
        )
        .unwrap();
        let config = crate::config::load(&dir.join("agent.yml")).unwrap();
        RuntimeContext::new(Arc::new(config)).unwrap()
    }

    #[test]
    fn a_source_job_holds_the_lock_until_dropped_and_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let rctx = context(dir.path(), "");
        let job = SourceJob::start(rctx.clone(), "www", HolderKind::Agent).unwrap();
        assert_eq!(job.source(), "www");
        let err = SourceJob::start(rctx.clone(), "www", HolderKind::Cli).unwrap_err();
        assert!(
            matches!(err, StartError::Lock(LockError::Busy { .. })),
            "{err}"
        );
        assert!(err.to_string().contains("the agent (pid"), "{err}");
        drop(job);
        SourceJob::start(rctx.clone(), "www", HolderKind::Cli).unwrap();
        let err = SourceJob::start(rctx, "nope", HolderKind::Cli).unwrap_err();
        assert!(matches!(err, StartError::NotConfigured(_)), "{err}");
    }

    #[test]
    fn a_dry_run_takes_no_lock() {
        let dir = tempfile::tempdir().unwrap();
        let rctx = context(dir.path(), "dry_run: true\n");
        assert!(rctx.config().dry_run);
        let _first = SourceJob::start(rctx.clone(), "www", HolderKind::Agent).unwrap();
        let _second = SourceJob::start(rctx.clone(), "www", HolderKind::Cli).unwrap();
        assert!(!crate::jobs::lock::lock_path(rctx.work_dir(), "www").exists());
    }
}
