//! A source's commands around one of its operations, in the shape of
//! rustic's `Hooks::use_with`: `pre` runs first and, when it fails, the
//! operation does not run; `post` runs afterwards whatever happened, told
//! the outcome in `TABACCO_STATUS=ok|error`. Written once for backups
//! (`pre_backup_command`, `post_backup_command`) and restores
//! (`pre_restore_command`, `post_restore_command`).

use super::ManagerError;
use crate::config::SourceSpec;
use crate::shell::Shell;

/// The hook commands of one operation of one source, with the environment
/// they run in.
pub(crate) struct Hooks<'a> {
    source: &'a str,
    pre: Option<(&'static str, &'a str)>,
    post: Option<(&'static str, &'a str)>,
    env: Vec<(String, String)>,
}

impl<'a> Hooks<'a> {
    /// The backup hooks of `source`.
    pub fn backup(source: &'a SourceSpec, env: Vec<(String, String)>) -> Hooks<'a> {
        Hooks {
            source: &source.name,
            pre: source
                .pre_backup_command
                .as_deref()
                .map(|c| ("pre_backup_command", c)),
            post: source
                .post_backup_command
                .as_deref()
                .map(|c| ("post_backup_command", c)),
            env,
        }
    }

    /// The restore hooks of source `name`, when this host configures it
    /// (`None`: a restore that runs no hooks).
    pub fn restore(
        name: &'a str,
        source: Option<&'a SourceSpec>,
        env: Vec<(String, String)>,
    ) -> Hooks<'a> {
        Hooks {
            source: name,
            pre: source
                .and_then(|s| s.pre_restore_command.as_deref())
                .map(|c| ("pre_restore_command", c)),
            post: source
                .and_then(|s| s.post_restore_command.as_deref())
                .map(|c| ("post_restore_command", c)),
            env,
        }
    }

    /// Run the `pre` command, if any; its failure means the operation
    /// must not run.
    pub async fn pre(&self, shell: &Shell) -> Result<(), ManagerError> {
        self.run(shell, self.pre, None).await
    }

    /// Run the `post` command, if any, with `TABACCO_STATUS` saying whether
    /// the operation went well.
    pub async fn post(&self, shell: &Shell, ok: bool) -> Result<(), ManagerError> {
        self.run(shell, self.post, Some(if ok { "ok" } else { "error" }))
            .await
    }

    async fn run(
        &self,
        shell: &Shell,
        which: Option<(&'static str, &str)>,
        status: Option<&str>,
    ) -> Result<(), ManagerError> {
        let Some((what, cmd)) = which else {
            return Ok(());
        };
        let mut env = self.env.clone();
        if let Some(status) = status {
            env.push(("TABACCO_STATUS".into(), status.into()));
        }
        shell
            .run(cmd, &env)
            .await
            .map_err(|error| ManagerError::Command {
                source_name: self.source.to_string(),
                what,
                error,
            })
    }
}
