//! Shell: runs user-supplied commands (hooks, dump commands,
//! `datasets_command`, `atoms_command`) through `/bin/bash -c`, with the
//! configured nice level and I/O class and extra environment variables. It
//! runs what it is given: a dry run stops before any command (the runtime
//! context's `plan_then_apply` owns that rule).
//!
//! Values such as atom names reach commands as environment variables, never
//! spliced into the command text.
//!
//! Each command runs in its own process group with the guarantees of
//! [`crate::process`]: stderr is read concurrently and its tail goes into
//! the error, and dropping the future (cancellation, timeout) kills the
//! whole group, background jobs of the script included.

use crate::process::{ChildCommand, ProcessError};

/// The shell running user commands.
pub const BASH: &str = "/bin/bash";

/// Longest [`ShellCommand::label`], in characters.
const LABEL_CHARS: usize = 60;

/// Runs user commands with the configured options.
#[derive(Debug, Clone, Default)]
pub struct Shell {
    nice_level: i32,
    io_class: i32,
}

/// A user command ready to be spawned with the stdio of the caller's
/// choosing (a repository pipes a dump command into restic): see
/// [`ShellCommand::to_child`].
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

impl ShellCommand {
    /// A short description for messages: the first non-empty line of the
    /// script, cut to 60 characters, with `…` when anything was left out.
    pub fn label(&self) -> String {
        script_label(&self.script)
    }

    /// The command as a child process (`/bin/bash -c SCRIPT`, our
    /// environment plus [`ShellCommand::env`], the priority), stdin and
    /// stdout on `/dev/null` until the caller wires them, e.g. with
    /// [`ChildCommand::stdout_fd`] and a [`crate::process::pipe`]. It is
    /// described as ``command `LABEL` `` in errors.
    pub fn to_child<'a>(&self) -> ChildCommand<'a> {
        ChildCommand::new(BASH)
            .arg("-c")
            .arg(&self.script)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .priority(self.nice_level, self.io_class)
            .label(format!("command `{}`", self.label()))
    }
}

/// A short description of a script for messages: see
/// [`ShellCommand::label`].
pub fn script_label(script: &str) -> String {
    let mut lines = script.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or("");
    let more = lines.next().is_some();
    let mut label: String = first.chars().take(LABEL_CHARS).collect();
    if more || first.chars().count() > LABEL_CHARS {
        label.push('…');
    }
    label
}

impl Shell {
    /// A shell with the given options.
    pub fn new(nice_level: i32, io_class: i32) -> Shell {
        Shell {
            nice_level,
            io_class,
        }
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
    pub async fn run(&self, script: &str, env: &[(String, String)]) -> Result<(), ProcessError> {
        let cmd = self.command(script, env);
        let label = cmd.label();
        self.run_with_stdout_callback(script, env, |line| {
            tracing::info!(command = %label, "{line}");
        })
        .await
    }

    /// Run a command, calling `stdout_callback` with each line of its
    /// standard output; stderr is logged. Fails like [`Shell::run`].
    pub async fn run_with_stdout_callback(
        &self,
        script: &str,
        env: &[(String, String)],
        stdout_callback: impl FnMut(&str) + Send,
    ) -> Result<(), ProcessError> {
        let cmd = self.command(script, env);
        let label = cmd.label();
        cmd.to_child()
            .stdout_lines(stdout_callback)
            .stderr_lines(|line| tracing::info!(command = %label, stream = "stderr", "{line}"))
            .run()
            .await?;
        Ok(())
    }

    /// Run a command and return its standard output. Fails like [`Shell::run`]; stderr is logged at debug level.
    pub async fn output(
        &self,
        script: &str,
        env: &[(String, String)],
    ) -> Result<Vec<u8>, ProcessError> {
        let cmd = self.command(script, env);
        let label = cmd.label();
        let out = cmd
            .to_child()
            .stdout_capture()
            .stderr_lines(|line| tracing::debug!(command = %label, stream = "stderr", "{line}"))
            .run()
            .await?;
        Ok(out.stdout)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::process::tests::{read_pid, wait_gone};

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn labels_are_short() {
        assert_eq!(script_label("pg_dump mydb"), "pg_dump mydb");
        assert_eq!(script_label("\n  set -e\n  pg_dump x\n"), "set -e…");
        let long = "x".repeat(100);
        let l = script_label(&long);
        assert_eq!(l.chars().count(), LABEL_CHARS + 1);
        assert!(l.ends_with('…'));
        assert_eq!(script_label(""), "");
    }

    #[tokio::test]
    async fn output_and_env_values_stay_literal() {
        let dir = tempfile::tempdir().unwrap();
        let sh = Shell::new(0, 0);
        let e = env(&[("TABACCO_ATOM", "$(touch pwned); `touch pwned2`")]);
        let out = sh.output("echo \"atom=$TABACCO_ATOM\"", &e).await.unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out),
            "atom=$(touch pwned); `touch pwned2`\n"
        );
        // Also through `run` with a working directory where a splice would
        // have created files.
        let script = format!("cd {} && echo $TABACCO_ATOM", dir.path().display());
        sh.run(&script, &e).await.unwrap();
        assert!(!dir.path().join("pwned").exists());
        assert!(!dir.path().join("pwned2").exists());
    }

    #[tokio::test]
    async fn failure_has_status_and_stderr_tail() {
        let sh = Shell::new(0, 0);
        let err = sh
            .run("echo to-stdout; echo 'dump exploded' >&2; exit 3", &[])
            .await
            .unwrap_err();
        let t = err.to_string();
        assert!(t.contains("exit status 3"), "{t}");
        assert!(t.contains("dump exploded"), "{t}");
        assert!(t.contains("command `echo to-stdout;"), "{t}");
        assert!(sh.output("exit 1", &[]).await.is_err());
    }

    #[tokio::test]
    async fn stdout_callback_gets_lines() {
        let sh = Shell::new(0, 0);
        let mut lines = Vec::new();
        sh.run_with_stdout_callback("printf 'a\\nb\\n'; echo err >&2", &[], |l| {
            lines.push(l.to_string())
        })
        .await
        .unwrap();
        assert_eq!(lines, vec!["a", "b"]);
    }

    #[tokio::test]
    async fn timeout_kills_background_jobs_of_the_script() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let sh = Shell::new(0, 0);
        let script = format!("sleep 1000 & echo $! > {}; wait", pidfile.display());
        let r = tokio::time::timeout(Duration::from_millis(500), sh.run(&script, &[])).await;
        assert!(r.is_err());
        let pid = read_pid(&pidfile).await;
        assert!(wait_gone(pid).await, "sleep {pid} survived the timeout");
    }

    #[tokio::test]
    async fn shell_command_pipes_into_another() {
        let sh = Shell::new(0, 0);
        let producer = sh.command("seq 1 5 | tr -d '\\n'; echo", &[]);
        let (r, w) = crate::process::pipe().unwrap();
        let consumer = ChildCommand::new("cat").stdin_fd(r).stdout_capture();
        let (p, c) = tokio::join!(producer.to_child().stdout_fd(w).run(), consumer.run());
        p.unwrap();
        assert_eq!(c.unwrap().stdout, b"12345\n");
    }
}
