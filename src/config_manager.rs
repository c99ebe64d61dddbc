//! ConfigManager: the agent's current configuration and the runtime
//! objects derived from it, replaced as a whole on reload.
//!
//! Jobs take a [`RuntimeContext`] snapshot when they start
//! ([`ConfigManager::runtime_context`]) and keep it to the end, so a reload
//! never changes the configuration under a running backup. A reload reads
//! the whole tree again; if any file is invalid (or the runtime objects
//! cannot be built) nothing changes and every error is returned. Listeners
//! learn about a new configuration through [`ConfigManager::subscribe`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::watch;

use crate::config::{self, Config, ConfigErrors};
use crate::repository::RepoError;
use crate::runtime::RuntimeContext;

/// A reload failed; the previous configuration stays in force.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The configuration tree is invalid.
    #[error(transparent)]
    Config(#[from] ConfigErrors),
    /// The runtime objects (repository) could not be built.
    #[error(transparent)]
    Runtime(#[from] RepoError),
}

/// What a successful reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Sources that are new.
    pub added: Vec<String>,
    /// Sources that are gone.
    pub removed: Vec<String>,
    /// Settings that changed but only take effect after a restart.
    pub restart_needed: Vec<&'static str>,
}

/// Holds the current configuration and hands out snapshots.
#[derive(Debug)]
pub struct ConfigManager {
    path: PathBuf,
    current: watch::Sender<RuntimeContext>,
}

impl ConfigManager {
    /// A manager starting with `config` (read from `config.path`).
    pub fn new(config: Arc<Config>) -> Result<ConfigManager, RepoError> {
        let rctx = RuntimeContext::new(config)?;
        Ok(ConfigManager::with_context(rctx))
    }

    /// A manager starting with a ready runtime context.
    pub fn with_context(rctx: RuntimeContext) -> ConfigManager {
        ConfigManager {
            path: rctx.config().path.clone(),
            current: watch::Sender::new(rctx),
        }
    }

    /// The main configuration file reloads read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A snapshot of the current configuration and its runtime objects.
    pub fn runtime_context(&self) -> RuntimeContext {
        self.current.borrow().clone()
    }

    /// The current configuration.
    pub fn config(&self) -> Arc<Config> {
        self.current.borrow().config_arc().clone()
    }

    /// Be told about every new configuration.
    pub fn subscribe(&self) -> watch::Receiver<RuntimeContext> {
        self.current.subscribe()
    }

    /// Read the configuration tree again and switch to it if it is valid.
    pub fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let config = config::load(&self.path)?;
        self.apply(Arc::new(config))
    }

    /// Switch to `config` if its runtime objects can be built.
    pub fn apply(&self, config: Arc<Config>) -> Result<ReloadReport, ReloadError> {
        let rctx = RuntimeContext::new(config)?;
        Ok(self.apply_context(rctx))
    }

    /// Switch to a ready runtime context.
    pub fn apply_context(&self, rctx: RuntimeContext) -> ReloadReport {
        let report = diff(&self.config(), rctx.config());
        self.current.send_replace(rctx);
        report
    }
}

/// What changed between two configurations.
pub fn diff(old: &Config, new: &Config) -> ReloadReport {
    let names = |c: &Config| -> Vec<String> { c.sources.iter().map(|s| s.name.clone()).collect() };
    let (old_names, new_names) = (names(old), names(new));
    let mut restart_needed = Vec::new();
    if old.work_dir != new.work_dir {
        restart_needed.push("work_dir");
    }
    if old.random_seed_file != new.random_seed_file {
        restart_needed.push("random_seed_file");
    }
    if old.metadb != new.metadb {
        restart_needed.push("metadb");
    }
    if old.status_report_interval != new.status_report_interval {
        restart_needed.push("status_report_interval");
    }
    ReloadReport {
        added: new_names
            .iter()
            .filter(|n| !old_names.contains(n))
            .cloned()
            .collect(),
        removed: old_names
            .iter()
            .filter(|n| !new_names.contains(n))
            .cloned()
            .collect(),
        restart_needed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAIN: &str = "hostname: h\nwork_dir: work\nrepository:\n  type: restic\n  params:\n    uri: /nonexistent/repo\n    password: x\n";
    const HANDLER: &str = "name: files\ntype: file\nparams:\n  path: /srv\n";

    fn source(name: &str, schedule: &str) -> String {
        format!(
            "name: {name}\nhandler: files\nschedule: '{schedule}'\ndatasets: [{{name: d, atoms: [{{name: a}}]}}]\n"
        )
    }

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("handlers")).unwrap();
        std::fs::create_dir_all(dir.path().join("sources")).unwrap();
        std::fs::write(dir.path().join("agent.yml"), MAIN).unwrap();
        std::fs::write(dir.path().join("handlers/files.yml"), HANDLER).unwrap();
        std::fs::write(dir.path().join("sources/a.yml"), source("a", "@daily")).unwrap();
        dir
    }

    fn manager(dir: &Path) -> ConfigManager {
        let config = Arc::new(config::load(&dir.join("agent.yml")).unwrap());
        let rctx = RuntimeContext::with_repository(
            config,
            crate::shell::Shell::default(),
            Arc::new(NoRepo),
        );
        ConfigManager::with_context(rctx)
    }

    struct NoRepo;
    #[async_trait::async_trait]
    impl crate::repository::Repository for NoRepo {
        async fn backup(
            &self,
            _: &crate::repository::SnapshotMeta,
            _: &[PathBuf],
            _: Option<crate::repository::ProgressFn>,
        ) -> Result<crate::repository::SnapshotInfo, RepoError> {
            Err(RepoError::Protocol {
                command: "none".into(),
                message: "test".into(),
            })
        }
        async fn backup_relative(
            &self,
            _: &crate::repository::SnapshotMeta,
            _: &Path,
            _: &[PathBuf],
            _: Option<crate::repository::ProgressFn>,
        ) -> Result<crate::repository::SnapshotInfo, RepoError> {
            Err(RepoError::Protocol {
                command: "none".into(),
                message: "test".into(),
            })
        }
        async fn stream_backup(
            &self,
            _: &crate::repository::SnapshotMeta,
            _: crate::shell::ShellCommand,
            _: &str,
            _: Option<crate::repository::ProgressFn>,
        ) -> Result<crate::repository::SnapshotInfo, RepoError> {
            Err(RepoError::Protocol {
                command: "none".into(),
                message: "test".into(),
            })
        }
        async fn restore(
            &self,
            _: &str,
            _: &[PathBuf],
            _: &Path,
            _: Option<crate::repository::ProgressFn>,
        ) -> Result<(), RepoError> {
            Ok(())
        }
        async fn stream_restore(
            &self,
            _: &str,
            _: &str,
            _: crate::shell::ShellCommand,
            _: Option<crate::repository::ProgressFn>,
        ) -> Result<(), RepoError> {
            Ok(())
        }
        async fn create(&self) -> Result<crate::repository::Creation, RepoError> {
            Err(RepoError::Protocol {
                command: "none".into(),
                message: "test".into(),
            })
        }
    }

    #[test]
    fn invalid_tree_keeps_the_old_configuration_and_reports_every_error() {
        let dir = tree();
        let m = manager(dir.path());
        let before = m.runtime_context();
        std::fs::write(
            dir.path().join("sources/b.yml"),
            "name: b\nhandler: nope\nschedule: often\n",
        )
        .unwrap();
        let e = match m.reload() {
            Err(ReloadError::Config(e)) => e,
            other => panic!("expected config errors, got {other:?}"),
        };
        assert!(e.0.len() >= 2, "{e}");
        assert!(e.0.iter().all(|e| e.file.ends_with("sources/b.yml")), "{e}");
        assert_eq!(m.config().sources.len(), 1);
        assert!(Arc::ptr_eq(
            before.config_arc(),
            m.runtime_context().config_arc()
        ));
    }

    #[test]
    fn diff_names_added_removed_and_restart_only_settings() {
        let dir = tree();
        let old = config::load(&dir.path().join("agent.yml")).unwrap();
        std::fs::remove_file(dir.path().join("sources/a.yml")).unwrap();
        std::fs::write(dir.path().join("sources/b.yml"), source("b", "@hourly")).unwrap();
        std::fs::write(
            dir.path().join("agent.yml"),
            MAIN.replace("work_dir: work", "work_dir: elsewhere"),
        )
        .unwrap();
        let new = config::load(&dir.path().join("agent.yml")).unwrap();
        let r = diff(&old, &new);
        assert_eq!(r.added, ["b"]);
        assert_eq!(r.removed, ["a"]);
        assert_eq!(r.restart_needed, ["work_dir", "random_seed_file"]);
    }

    #[tokio::test]
    async fn running_jobs_keep_their_snapshot_and_listeners_are_told() {
        let dir = tree();
        let m = manager(dir.path());
        let mut rx = m.subscribe();
        let job_view = m.runtime_context();
        std::fs::write(dir.path().join("sources/a.yml"), source("a", "@hourly")).unwrap();
        let rctx = RuntimeContext::with_repository(
            Arc::new(config::load(&dir.path().join("agent.yml")).unwrap()),
            crate::shell::Shell::default(),
            Arc::new(NoRepo),
        );
        m.apply_context(rctx);
        assert!(rx.has_changed().unwrap());
        assert_eq!(
            rx.borrow_and_update()
                .find_source("a")
                .unwrap()
                .schedule
                .as_deref(),
            Some("@hourly")
        );
        assert_eq!(
            job_view.find_source("a").unwrap().schedule.as_deref(),
            Some("@daily")
        );
    }
}
