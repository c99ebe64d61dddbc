//! Shell: runs user-supplied commands (hooks, dump commands,
//! `datasets_command`, `atoms_command`) through `/bin/bash -c`, with the
//! configured nice level and I/O class, extra environment variables, and a
//! global dry-run switch that logs commands instead of running them.
//!
//! Values such as atom names reach commands as environment variables, never
//! spliced into the command text.

use crate::process::ProcessError;

/// Runs user commands with the configured options.
#[derive(Debug, Clone, Default)]
pub struct Shell {
    dry_run: bool,
    nice_level: i32,
    io_class: i32,
}

/// A user command ready to be spawned with the stdio of the caller's
/// choosing (a repository pipes a dump command into restic).
#[derive(Debug, Clone)]
pub struct ShellCommand {
    /// The command text given to `bash -c`.
    pub script: String,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// `nice` level (0: unchanged).
    pub nice_level: i32,
    /// `ionice` class (0: unchanged).
    pub io_class: i32,
}

impl Shell {
    /// A shell with the given options.
    pub fn new(dry_run: bool, nice_level: i32, io_class: i32) -> Shell {
        Shell {
            dry_run,
            nice_level,
            io_class,
        }
    }

    /// Whether commands are only logged.
    pub fn is_dry_run(&self) -> bool {
        self.dry_run
    }

    /// A command for a caller that wires its stdio itself.
    pub fn command(&self, script: &str, env: &[(String, String)]) -> ShellCommand {
        ShellCommand {
            script: script.to_string(),
            env: env.to_vec(),
            nice_level: self.nice_level,
            io_class: self.io_class,
        }
    }

    /// Run a command; its output is logged. Fails on a non-zero exit with
    /// the exit status and the tail of stderr.
    pub async fn run(&self, _script: &str, _env: &[(String, String)]) -> Result<(), ProcessError> {
        todo!()
    }

    /// Run a command and return its standard output.
    pub async fn output(
        &self,
        _script: &str,
        _env: &[(String, String)],
    ) -> Result<Vec<u8>, ProcessError> {
        todo!()
    }
}
