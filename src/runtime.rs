//! RuntimeContext: the configuration and the runtime objects derived from
//! it (shell, repository), captured together so that a job keeps a
//! consistent view of the configuration while it runs, even if the agent
//! reloads it meanwhile.
//!
//! It also owns the dry-run rule ([`RuntimeContext::plan_then_apply`]):
//! every operation (backup, restore, forget, reconcile, verify) is a plan,
//! made by reading only, then an apply that changes things; a dry run
//! (`--dry-run`, `dry_run: true`) reports the plan and stops there. No
//! apply step, and no runtime object (the shell runs what it is given),
//! looks at a dry-run flag.

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{Config, HandlerSpec, SourceSpec};
use crate::repository::{self, RepoError, Repository};
use crate::shell::Shell;

/// A consistent view of the configuration and its runtime objects.
#[derive(Clone)]
pub struct RuntimeContext {
    config: Arc<Config>,
    shell: Shell,
    repo: Arc<dyn Repository>,
}

impl std::fmt::Debug for RuntimeContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeContext")
            .field("config", &self.config.path)
            .field("shell", &self.shell)
            .finish_non_exhaustive()
    }
}

impl RuntimeContext {
    /// Build the runtime objects for a configuration.
    pub fn new(config: Arc<Config>) -> Result<RuntimeContext, RepoError> {
        let shell = Shell::new(config.default_nice_level, config.default_io_class);
        let repo = repository::from_spec(
            &config.repository,
            config.default_nice_level,
            config.default_io_class,
        )?;
        Ok(RuntimeContext::with_repository(config, shell, repo))
    }

    /// Assemble a context from parts (tests use their own repository).
    pub fn with_repository(
        config: Arc<Config>,
        shell: Shell,
        repo: Arc<dyn Repository>,
    ) -> RuntimeContext {
        RuntimeContext {
            config,
            shell,
            repo,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The configuration, shared.
    pub fn config_arc(&self) -> &Arc<Config> {
        &self.config
    }

    /// The dry-run rule, written once: `plan` (made by reading only) is
    /// given to `apply`, or, in a dry run, turned into the report by
    /// `planned` and nothing else happens.
    pub async fn plan_then_apply<P, R, E, F>(
        &self,
        plan: P,
        planned: impl FnOnce(P) -> R,
        apply: impl FnOnce(P) -> F,
    ) -> Result<R, E>
    where
        F: std::future::Future<Output = Result<R, E>>,
    {
        if self.config.dry_run {
            tracing::info!("dry run: planned only, nothing applied");
            Ok(planned(plan))
        } else {
            apply(plan).await
        }
    }

    /// The shell for user commands.
    pub fn shell(&self) -> &Shell {
        &self.shell
    }

    /// The repository.
    pub fn repo(&self) -> &Arc<dyn Repository> {
        &self.repo
    }

    /// This host's name.
    pub fn hostname(&self) -> &str {
        &self.config.hostname
    }

    /// The state directory.
    pub fn work_dir(&self) -> &PathBuf {
        &self.config.work_dir
    }

    /// The source with this name.
    pub fn find_source(&self, name: &str) -> Option<&SourceSpec> {
        self.config.find_source(name)
    }

    /// The handler with this name.
    pub fn handler_spec(&self, name: &str) -> Option<&HandlerSpec> {
        self.config.handlers.get(name)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::repository::fake::FakeRepo;

    /// A configuration tree for the dry-run tests of each operation, with
    /// two contexts on one [`FakeRepo`]: the same configuration with
    /// `dry_run` off and on.
    pub(crate) struct Contexts {
        /// The tree (`agent.yml`, `handlers/`, `sources/`, `work/`).
        pub dir: tempfile::TempDir,
        /// `dry_run: false`.
        pub real: RuntimeContext,
        /// `dry_run: true`.
        pub dry: RuntimeContext,
        /// The repository of both.
        pub repo: Arc<FakeRepo>,
    }

    /// [`Contexts`] for host `h1` with a `pipe` handler and these source
    /// files (name, YAML).
    pub(crate) fn contexts(sources: &[(&str, &str)]) -> Contexts {
        let dir = tempfile::tempdir().unwrap();
        let w = |rel: &str, text: &str| {
            let p = dir.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        w(
            "agent.yml",
            "hostname: h1\nwork_dir: work\nrepository:\n  type: restic\n  params:\n    uri: /nonexistent\n    password: x\n",
        );
        w(
            "handlers/pipe.yml",
            "name: pipe\ntype: pipe\nparams:\n  backup_command: echo x\n  restore_command: cat\n",
        );
        for (name, yaml) in sources {
            w(&format!("sources/{name}.yml"), yaml);
        }
        let config = crate::config::load(&dir.path().join("agent.yml")).unwrap();
        assert!(!config.dry_run);
        let repo = Arc::new(FakeRepo::default());
        let context = |dry_run: bool| {
            let config = Config {
                dry_run,
                ..config.clone()
            };
            RuntimeContext::with_repository(Arc::new(config), Shell::default(), repo.clone())
        };
        Contexts {
            real: context(false),
            dry: context(true),
            repo,
            dir,
        }
    }

    impl Contexts {
        /// A path in the tree.
        pub fn path(&self, rel: &str) -> std::path::PathBuf {
            self.dir.path().join(rel)
        }
    }

    #[tokio::test]
    async fn a_dry_run_stops_at_the_plan() {
        let c = contexts(&[]);
        let applied = std::sync::atomic::AtomicBool::new(false);
        let applied = &applied;
        let apply = |plan: u32| async move {
            applied.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok::<_, ()>(plan + 1)
        };
        let r = c.dry.plan_then_apply(1, |p| p * 10, apply).await;
        assert_eq!(r, Ok(10));
        assert!(!applied.load(std::sync::atomic::Ordering::SeqCst));
        assert!(c.dry.config().dry_run && !c.real.config().dry_run);
        let r = c.real.plan_then_apply(1, |p| p * 10, apply).await;
        assert_eq!(r, Ok(2));
        assert!(applied.load(std::sync::atomic::Ordering::SeqCst));
    }
}
