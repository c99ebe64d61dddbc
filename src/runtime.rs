//! RuntimeContext: the configuration and the runtime objects derived from
//! it (shell, repository), captured together so that a job keeps a
//! consistent view of the configuration while it runs, even if the agent
//! reloads it meanwhile.

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
        let shell = Shell::new(
            config.dry_run,
            config.default_nice_level,
            config.default_io_class,
        );
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
