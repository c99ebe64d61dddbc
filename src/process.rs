//! Process runner: spawns a child (argv, no shell) in its own process
//! group, reads its stderr concurrently keeping the tail for error
//! messages, and kills the whole group when the job is cancelled, times out
//! or the owner drops it.
//!
//! This module builds and runs the command ([`ChildCommand`]); `group`
//! sets up the child's process group and stops it on cancellation; `output`
//! keeps stderr's tail, reads lines and relays bytes through [`pipe`]s;
//! [`supervise`] outlives us to kill what we leave behind.
//!
//! # How a child is run
//!
//! [`ChildCommand`] is a builder: program, arguments, environment, working
//! directory, where stdin comes from ([`ChildCommand::stdin_fd`] takes e.g.
//! the read end of a [`pipe`]) and where stdout goes (discarded, captured,
//! streamed line by line to a callback, or handed to a file descriptor such
//! as the write end of a pipe). [`ChildCommand::status`] runs it and returns
//! an [`Outcome`] whatever the exit status; [`ChildCommand::run`] also fails
//! on an unsuccessful exit with [`ProcessError::Failed`], which carries the
//! exit status and the last lines of stderr.
//!
//! Every child:
//! - runs in its own process group (`setpgid(0, 0)`), so that it and
//!   everything it starts can be signalled at once;
//! - gets `PR_SET_PDEATHSIG` = `SIGKILL` (see the caveat below);
//! - optionally gets a nice level (relative, like `nice -n`) and an I/O
//!   scheduling class (like `ionice -c`), set with `setpriority` /
//!   `ioprio_set` between fork and exec. Both are best effort, like
//!   `nice(1)`: a failure (e.g. a negative nice level without privileges)
//!   leaves the priority unchanged rather than failing the command.
//!
//! # Cancellation
//!
//! The futures returned by [`ChildCommand::status`] / [`ChildCommand::run`]
//! own a guard. If the future is dropped before the child was reaped (the
//! caller's task was cancelled, `tokio::time::timeout` elapsed, a sibling
//! future in a `select!` won), the guard sends the stop signal (`SIGTERM`
//! by default, see [`ChildCommand::stop_signal`]) to the whole process
//! group, then `SIGKILL` to the group after [`KILL_GRACE`]. The polite
//! signal first lets programs clean up: restic removes its repository lock
//! on `SIGINT` (and on `SIGTERM` from 0.15), so a killed backup does not
//! leave a lock behind that blocks the next `forget`/`prune`; dump commands
//! can remove their temporary files. The `SIGKILL` afterwards bounds the
//! wait for programs that ignore it. Meanwhile a background thread keeps
//! the child's stdout/stderr pipes open and drains them, so that the child's
//! farewell message does not kill it with `SIGPIPE` halfway through its
//! cleanup; once both pipes are closed (the group is gone) it stops early.
//! The leader is not reaped until after that `SIGKILL`, so the
//! process-group id cannot be reused by an unrelated group in between.
//!
//! After a child exited normally, its group is left alone: background
//! processes it started on purpose keep running. Our reading of its pipes
//! stops [`DRAIN_GRACE`] after the exit if such a process keeps them open.
//!
//! # Parent-death signal caveat
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits,
//! not when the process does. Children are forked by the thread polling the
//! future. Tokio worker threads live as long as the runtime, so this is
//! right on runtime workers and on a `current_thread` runtime; but do not
//! start children from `spawn_blocking` or inside `block_in_place` (those
//! threads retire after an idle period and would take the child with them).
//! [`ChildCommand::kill_on_parent_death`] turns the signal off where that
//! cannot be avoided. The signal only reaches the direct child; the rest of
//! its group is covered by the guard while our process lives, and by the
//! [`supervise`] process when it is enabled (the `tabacco` binary enables
//! it): then every child runs under a small supervisor that kills the
//! child's whole group when we die, even by `SIGKILL`.

mod group;
mod output;
pub mod supervise;

use group::{GroupGuard, check_priority, child_setup};
pub use group::{KILL_GRACE, wait_cancelled};
pub(crate) use output::Tail;
use output::for_each_line;
pub use output::{
    DRAIN_GRACE, MAX_LINE_BYTES, STDERR_TAIL_BYTES, STDERR_TAIL_LINES, Tally, pipe, relay,
    relay_counting,
};

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};

use std::os::unix::ffi::OsStrExt;

use futures::future::Either;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;

/// A child process failed.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The program could not be started. A missing program has an error of
    /// kind [`io::ErrorKind::NotFound`] whose text says that the program
    /// was not found.
    #[error("cannot run {command}: {source}")]
    Spawn {
        /// What we tried to run.
        command: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The program exited unsuccessfully.
    #[error("{command} failed ({status}){}", if stderr_tail.is_empty() { String::new() } else { format!(": {stderr_tail}") })]
    Failed {
        /// What ran.
        command: String,
        /// Exit status, e.g. `exit status 1` or `killed by signal 9`.
        status: String,
        /// Last lines of its standard error.
        stderr_tail: String,
    },
}

impl ProcessError {
    /// Whether this is a spawn failure because the program does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ProcessError::Spawn { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// Describe an exit status as `exit status N` or `killed by signal N`.
pub fn format_status(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        format!("exit status {code}")
    } else if let Some(sig) = status.signal() {
        format!("killed by signal {sig}")
    } else {
        status.to_string()
    }
}

/// A callback receiving lines of a child's output.
type LineFn<'a> = Box<dyn FnMut(&str) + Send + 'a>;

/// Where a child's standard input comes from.
#[derive(Debug)]
enum StdinMode {
    /// `/dev/null`.
    Null,
    /// Our own stdin.
    Inherit,
    /// A file descriptor, e.g. a pipe's read end.
    Fd(OwnedFd),
}

/// Where a child's standard output goes.
enum StdoutMode<'a> {
    /// `/dev/null`.
    Null,
    /// Our own stdout.
    Inherit,
    /// A file descriptor, e.g. a pipe's write end.
    Fd(OwnedFd),
    /// Collected into [`Outcome::stdout`].
    Capture,
    /// Each line (without its newline) to a callback.
    Lines(LineFn<'a>),
}

impl StdoutMode<'_> {
    fn name(&self) -> &'static str {
        match self {
            StdoutMode::Null => "null",
            StdoutMode::Inherit => "inherit",
            StdoutMode::Fd(_) => "fd",
            StdoutMode::Capture => "capture",
            StdoutMode::Lines(_) => "lines",
        }
    }
}

/// A child process to run: program and arguments (no shell), environment,
/// stdio and priority. See the module documentation.
pub struct ChildCommand<'a> {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    env_remove: Vec<OsString>,
    current_dir: Option<PathBuf>,
    stdin: StdinMode,
    stdout: StdoutMode<'a>,
    on_stderr: Option<LineFn<'a>>,
    nice_level: i32,
    io_class: i32,
    parent_death_kill: bool,
    stop_signal: Signal,
    cleanup_args: Vec<OsString>,
    label: Option<String>,
}

/// Shows program, arguments and the names of environment variables; their
/// values may be secrets and are never shown.
impl fmt::Debug for ChildCommand<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let env_keys: Vec<_> = self.env.iter().map(|(k, _)| k).collect();
        f.debug_struct("ChildCommand")
            .field("program", &self.program)
            .field("args", &self.args)
            .field("env_keys", &env_keys)
            .field("env_remove", &self.env_remove)
            .field("current_dir", &self.current_dir)
            .field("stdin", &self.stdin)
            .field("stdout", &self.stdout.name())
            .field("nice_level", &self.nice_level)
            .field("io_class", &self.io_class)
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

/// What a finished child did.
#[derive(Debug)]
pub struct Outcome {
    /// The command's description (its label, or program and arguments).
    pub command: String,
    /// How it exited.
    pub status: ExitStatus,
    /// Its standard output, if it was captured (empty otherwise).
    pub stdout: Vec<u8>,
    /// The last lines of its standard error.
    pub stderr_tail: String,
}

impl Outcome {
    /// Whether it exited with status 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Its exit code, if it exited rather than being killed by a signal.
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// The error describing this outcome (status and stderr tail), whether
    /// or not it succeeded.
    pub fn to_error(&self) -> ProcessError {
        ProcessError::Failed {
            command: self.command.clone(),
            status: format_status(self.status),
            stderr_tail: self.stderr_tail.clone(),
        }
    }

    /// `Ok(self)` on success, [`ProcessError::Failed`] otherwise.
    pub fn into_result(self) -> Result<Outcome, ProcessError> {
        if self.success() {
            Ok(self)
        } else {
            Err(self.to_error())
        }
    }
}

impl<'a> ChildCommand<'a> {
    /// A command running `program` (looked up in `PATH` unless it contains
    /// a `/`), with stdin and stdout on `/dev/null`, our environment, and
    /// unchanged priority.
    pub fn new(program: impl AsRef<OsStr>) -> ChildCommand<'a> {
        ChildCommand {
            program: program.as_ref().to_os_string(),
            args: Vec::new(),
            env: Vec::new(),
            env_remove: Vec::new(),
            current_dir: None,
            stdin: StdinMode::Null,
            stdout: StdoutMode::Null,
            on_stderr: None,
            nice_level: 0,
            io_class: 0,
            parent_death_kill: true,
            stop_signal: Signal::SIGTERM,
            cleanup_args: Vec::new(),
            label: None,
        }
    }

    /// Add an argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_os_string());
        self
    }

    /// Add arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    /// Set an environment variable (on top of our environment).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_os_string(), value.as_ref().to_os_string()));
        self
    }

    /// Set environment variables.
    pub fn envs<I, K, V>(mut self, vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        for (k, v) in vars {
            self = self.env(k, v);
        }
        self
    }

    /// Remove a variable inherited from our environment (variables set with
    /// [`ChildCommand::env`] are kept).
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Self {
        self.env_remove.push(key.as_ref().to_os_string());
        self
    }

    /// Run in this directory.
    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.current_dir = Some(dir.as_ref().to_path_buf());
        self
    }

    /// Stdin from `/dev/null` (the default).
    pub fn stdin_null(mut self) -> Self {
        self.stdin = StdinMode::Null;
        self
    }

    /// Stdin shared with our process.
    pub fn stdin_inherit(mut self) -> Self {
        self.stdin = StdinMode::Inherit;
        self
    }

    /// Stdin from this descriptor (e.g. the read end of [`pipe`]). Our copy
    /// is closed as soon as the child is started.
    pub fn stdin_fd(mut self, fd: OwnedFd) -> Self {
        self.stdin = StdinMode::Fd(fd);
        self
    }

    /// Stdout to `/dev/null` (the default).
    pub fn stdout_null(mut self) -> Self {
        self.stdout = StdoutMode::Null;
        self
    }

    /// Stdout shared with our process.
    pub fn stdout_inherit(mut self) -> Self {
        self.stdout = StdoutMode::Inherit;
        self
    }

    /// Stdout to this descriptor (e.g. the write end of [`pipe`]). Our copy
    /// is closed as soon as the child is started.
    pub fn stdout_fd(mut self, fd: OwnedFd) -> Self {
        self.stdout = StdoutMode::Fd(fd);
        self
    }

    /// Stdout collected into [`Outcome::stdout`] (in memory: for short
    /// outputs).
    pub fn stdout_capture(mut self) -> Self {
        self.stdout = StdoutMode::Capture;
        self
    }

    /// Stdout handed to `f` line by line (newline removed, invalid UTF-8
    /// replaced, lines longer than [`MAX_LINE_BYTES`] cut in pieces).
    pub fn stdout_lines(mut self, f: impl FnMut(&str) + Send + 'a) -> Self {
        self.stdout = StdoutMode::Lines(Box::new(f));
        self
    }

    /// Also hand each stderr line to `f` (the tail is kept either way).
    pub fn stderr_lines(mut self, f: impl FnMut(&str) + Send + 'a) -> Self {
        self.on_stderr = Some(Box::new(f));
        self
    }

    /// Nice level to add (like `nice -n`, 0: unchanged) and I/O scheduling
    /// class (like `ionice -c`: 1 realtime, 2 best-effort, 3 idle; 0:
    /// unchanged). Best effort.
    pub fn priority(mut self, nice_level: i32, io_class: i32) -> Self {
        self.nice_level = nice_level;
        self.io_class = io_class;
        self
    }

    /// Whether the child gets `SIGKILL` when the thread that started it
    /// exits (default: yes; see the module documentation).
    pub fn kill_on_parent_death(mut self, yes: bool) -> Self {
        self.parent_death_kill = yes;
        self
    }

    /// The signal sent to the group first on cancellation (default
    /// `SIGTERM`; restic 0.14 only cleans up on `SIGINT`).
    pub fn stop_signal(mut self, signal: Signal) -> Self {
        self.stop_signal = signal;
        self
    }

    /// A clean-up run after this command was stopped (cancelled, or tabacco
    /// died), whatever its exit: the same program, environment and
    /// directory with these arguments, for at most
    /// [`supervise::CLEANUP_TIMEOUT`]. For restic, `unlock`: restic 0.14
    /// interrupted right after creating its lock exits 130 saying it cleaned
    /// up, and leaves that lock behind; `restic unlock` removes exactly such
    /// stale locks (of dead processes on this host).
    pub fn cleanup_after_stop<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cleanup_args = args
            .into_iter()
            .map(|a| a.as_ref().to_os_string())
            .collect();
        self
    }

    /// Describe the command as `label` in messages and errors (default:
    /// program and arguments).
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    /// The description used in messages.
    pub fn description(&self) -> String {
        match &self.label {
            Some(l) => l.clone(),
            None => self.argv().join(" "),
        }
    }

    /// Program and arguments, as text (for messages and tests).
    pub fn argv(&self) -> Vec<String> {
        std::iter::once(&self.program)
            .chain(&self.args)
            .map(|s| s.to_string_lossy().into_owned())
            .collect()
    }

    /// The value this command sets for an environment variable, if any (the
    /// last one set wins).
    pub fn get_env(&self, key: &str) -> Option<&OsStr> {
        self.env
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_os_str())
    }

    /// Run the command to completion and return how it went, whatever the
    /// exit status. Fails only if it could not be started. Dropping the
    /// future before it completes kills the child's process group.
    pub async fn status(self) -> Result<Outcome, ProcessError> {
        execute(self).await
    }

    /// Like [`ChildCommand::status`], but an unsuccessful exit is
    /// [`ProcessError::Failed`] with the exit status and stderr tail.
    pub async fn run(self) -> Result<Outcome, ProcessError> {
        execute(self).await?.into_result()
    }
}

/// Turn a spawn error into a message that says what is missing.
fn spawn_error(
    command: String,
    program: &OsStr,
    current_dir: Option<&Path>,
    e: io::Error,
) -> ProcessError {
    let source = if e.kind() == io::ErrorKind::NotFound {
        match current_dir {
            Some(d) if !d.is_dir() => io::Error::new(
                io::ErrorKind::NotFound,
                format!("working directory {} does not exist", d.display()),
            ),
            _ => io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "program '{}' not found (is it installed and in PATH?)",
                    program.to_string_lossy()
                ),
            ),
        }
    } else {
        e
    };
    ProcessError::Spawn { command, source }
}

/// Spawn, read, wait; see [`ChildCommand::status`].
async fn execute(cmd: ChildCommand<'_>) -> Result<Outcome, ProcessError> {
    let ChildCommand {
        program,
        args,
        env,
        env_remove,
        current_dir,
        stdin,
        stdout,
        mut on_stderr,
        nice_level,
        io_class,
        parent_death_kill,
        stop_signal,
        cleanup_args,
        label,
    } = cmd;
    let description = match &label {
        Some(l) => l.clone(),
        None => std::iter::once(&program)
            .chain(&args)
            .map(|s| s.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" "),
    };
    if nice_level != 0 || io_class != 0 {
        check_priority(&description, nice_level, io_class);
    }

    // Through the supervisor when enabled, so that the whole group dies
    // with us even if we are killed (see `supervise`).
    let supervisor = if parent_death_kill {
        supervise::supervisor()
    } else {
        None
    };
    let mut tc = match supervisor {
        Some(sup) => {
            let not_found = || {
                spawn_error(
                    description.clone(),
                    &program,
                    current_dir.as_deref(),
                    io::Error::from(io::ErrorKind::NotFound),
                )
            };
            let target: OsString = if program.as_bytes().contains(&b'/') {
                // A path: check it where the program will run; pass it as is.
                let p = Path::new(&program);
                let at = match &current_dir {
                    Some(d) if p.is_relative() => d.join(p),
                    _ => p.to_path_buf(),
                };
                supervise::find_program(at.as_os_str(), None).ok_or_else(not_found)?;
                program.clone()
            } else {
                let path_env = env
                    .iter()
                    .rev()
                    .find(|(k, _)| k == "PATH")
                    .map(|(_, v)| v.as_os_str());
                supervise::find_program(&program, path_env)
                    .ok_or_else(not_found)?
                    .into_os_string()
            };
            let mut c = tokio::process::Command::new(sup);
            c.arg0("tabacco")
                .args(supervise::supervisor_args(
                    stop_signal as i32,
                    &cleanup_args,
                ))
                .arg(target)
                .args(&args);
            c
        }
        None => {
            let mut c = tokio::process::Command::new(&program);
            c.args(&args);
            c
        }
    };
    for k in &env_remove {
        tc.env_remove(k);
    }
    for (k, v) in &env {
        tc.env(k, v);
    }
    if let Some(d) = &current_dir {
        tc.current_dir(d);
    }
    tc.stdin(match stdin {
        StdinMode::Null => Stdio::null(),
        StdinMode::Inherit => Stdio::inherit(),
        StdinMode::Fd(fd) => Stdio::from(fd),
    });
    let (stdout_io, mut stdout_mode) = match stdout {
        StdoutMode::Null => (Stdio::null(), StdoutMode::Null),
        StdoutMode::Inherit => (Stdio::inherit(), StdoutMode::Inherit),
        StdoutMode::Fd(fd) => (Stdio::from(fd), StdoutMode::Null),
        m @ (StdoutMode::Capture | StdoutMode::Lines(_)) => (Stdio::piped(), m),
    };
    tc.stdout(stdout_io);
    tc.stderr(Stdio::piped());
    tc.process_group(0);
    tc.kill_on_drop(false);
    // The clean-up run, ready for the cancellation guard.
    let cleanup = (!cleanup_args.is_empty()).then(|| {
        let mut c = std::process::Command::new(&program);
        c.args(&cleanup_args);
        for k in &env_remove {
            c.env_remove(k);
        }
        for (k, v) in &env {
            c.env(k, v);
        }
        if let Some(d) = &current_dir {
            c.current_dir(d);
        }
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    });
    let parent = nix::unistd::getpid().as_raw();
    // SAFETY: child_setup only makes async-signal-safe syscalls.
    unsafe {
        tc.pre_exec(move || child_setup(parent, parent_death_kill, nice_level, io_class));
    }
    let spawned = tc.spawn();
    // Close our copies of descriptors handed to the child (pipe ends), so
    // the reader at the other end sees EOF when the child is done.
    drop(tc);
    let mut child = spawned
        .map_err(|e| spawn_error(description.clone(), &program, current_dir.as_deref(), e))?;
    let pid = child.id().map(|p| p as i32).unwrap_or(0);
    tracing::debug!(command = %description, pid, "started");
    let child_stdout = child.stdout.take();
    let child_stderr = child.stderr.take();
    let drain = [
        child_stdout
            .as_ref()
            .map(|o| o.as_fd().try_clone_to_owned()),
        child_stderr
            .as_ref()
            .map(|e| e.as_fd().try_clone_to_owned()),
    ]
    .into_iter()
    .flatten()
    .filter_map(Result::ok)
    .collect();
    let mut guard = GroupGuard {
        child: Some(child),
        pgid: Pid::from_raw(pid),
        stop_signal,
        armed: pid > 0,
        command: description.clone(),
        drain,
        cleanup,
    };

    let mut tail = Tail::new(STDERR_TAIL_LINES, STDERR_TAIL_BYTES);
    let mut captured: Vec<u8> = Vec::new();
    let status = {
        let read_stderr = async {
            if let Some(e) = child_stderr {
                for_each_line(e, |line| {
                    tail.push(line);
                    if let Some(f) = on_stderr.as_mut() {
                        f(line);
                    }
                })
                .await;
            }
        };
        let read_stdout = async {
            match (child_stdout, &mut stdout_mode) {
                (Some(o), StdoutMode::Lines(f)) => for_each_line(o, |l| f(l)).await,
                (Some(mut o), StdoutMode::Capture) => {
                    if let Err(e) = o.read_to_end(&mut captured).await {
                        tracing::debug!("error reading a child's output: {e}");
                    }
                }
                _ => {}
            }
        };
        let mut readers = std::pin::pin!(async { tokio::join!(read_stdout, read_stderr) });
        let Some(child) = guard.child.as_mut() else {
            return Err(ProcessError::Spawn {
                command: description,
                source: io::Error::other("internal error: child handle missing"),
            });
        };
        let (status, readers_done) = {
            let mut wait = std::pin::pin!(child.wait());
            match futures::future::select(&mut wait, &mut readers).await {
                Either::Left((status, _)) => (status, false),
                Either::Right((_, _)) => (wait.await, true),
            }
        };
        // Reaped (or waiting failed): the group is no longer ours to kill.
        guard.armed = false;
        if !readers_done
            && tokio::time::timeout(DRAIN_GRACE, &mut readers)
                .await
                .is_err()
        {
            tracing::warn!(command = %description,
                "the command exited but processes it left in the background still hold its output open; not waiting for them");
        }
        status
    };
    let status = status.map_err(|e| ProcessError::Spawn {
        command: description.clone(),
        source: io::Error::new(e.kind(), format!("waiting for the process failed: {e}")),
    })?;
    tracing::debug!(command = %description, status = %format_status(status), "finished");
    Ok(Outcome {
        command: description,
        status,
        stdout: captured,
        stderr_tail: tail.text(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn status_text() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(format_status(ExitStatus::from_raw(3 << 8)), "exit status 3");
        assert_eq!(format_status(ExitStatus::from_raw(9)), "killed by signal 9");
    }

    #[tokio::test]
    async fn stderr_tail_is_in_the_error() {
        let err = ChildCommand::new("bash")
            .args([
                "-c",
                "for i in $(seq 1 100); do echo err$i >&2; done; exit 4",
            ])
            .run()
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("exit status 4"), "{text}");
        assert!(text.contains("err100") && text.contains("err81"), "{text}");
        assert!(!text.contains("err80\n"), "{text}");
    }

    #[tokio::test]
    async fn stdout_capture_lines_and_fd() {
        let out = ChildCommand::new("printf")
            .arg("a\nb\n")
            .stdout_capture()
            .run()
            .await
            .unwrap();
        assert_eq!(out.stdout, b"a\nb\n");

        let mut lines = Vec::new();
        ChildCommand::new("printf")
            .arg("x\ny")
            .stdout_lines(|l| lines.push(l.to_string()))
            .run()
            .await
            .unwrap();
        assert_eq!(lines, vec!["x", "y"]);

        // Producer -> pipe -> consumer, both children.
        let (r, w) = pipe().unwrap();
        let producer = ChildCommand::new("seq").args(["1", "1000"]).stdout_fd(w);
        let consumer = ChildCommand::new("wc")
            .arg("-l")
            .stdin_fd(r)
            .stdout_capture();
        let (p, c) = tokio::join!(producer.run(), consumer.run());
        p.unwrap();
        assert_eq!(String::from_utf8_lossy(&c.unwrap().stdout).trim(), "1000");
    }

    #[tokio::test]
    async fn missing_program_says_not_found() {
        let err = ChildCommand::new("/nonexistent/tabacco-nope")
            .run()
            .await
            .unwrap_err();
        assert!(err.is_not_found());
        let text = err.to_string();
        assert!(
            text.contains("program '/nonexistent/tabacco-nope' not found"),
            "{text}"
        );
        let err = ChildCommand::new("tabacco-no-such-program-xyz")
            .run()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not found"), "{err}");
    }

    #[tokio::test]
    async fn env_is_passed_and_removed() {
        // SAFETY: no other test reads this variable.
        unsafe { std::env::set_var("TABACCO_TEST_INHERITED", "yes") };
        let out = ChildCommand::new("bash")
            .args(["-c", "echo \"$A|${TABACCO_TEST_INHERITED:-gone}\""])
            .env("A", "$(echo spliced)")
            .env_remove("TABACCO_TEST_INHERITED")
            .stdout_capture()
            .run()
            .await
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "$(echo spliced)|gone\n"
        );
    }

    #[tokio::test]
    async fn priority_is_applied() {
        let out = ChildCommand::new("bash")
            .args([
                "-c",
                "echo $(nice) $(ionice -p $$ 2>/dev/null || echo unknown)",
            ])
            .priority(5, 3)
            .stdout_capture()
            .run()
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let base = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        let expect = (base + 5).clamp(-20, 19);
        assert!(text.starts_with(&format!("{expect} ")), "{text}");
        assert!(text.contains("idle") || text.contains("unknown"), "{text}");
    }

    #[test]
    fn debug_hides_env_values() {
        let c = ChildCommand::new("x").env("SECRET", "hunter2");
        let d = format!("{c:?}");
        assert!(d.contains("SECRET") && !d.contains("hunter2"), "{d}");
    }

    /// Whether a process with this pid exists (and is not a zombie).
    pub(crate) fn alive(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(s) => !s
                .rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z')),
            Err(_) => false,
        }
    }

    /// The pid a test script wrote to `path`, waiting for it to appear.
    pub(crate) async fn read_pid(path: &Path) -> i32 {
        let start = Instant::now();
        loop {
            if let Ok(s) = std::fs::read_to_string(path)
                && s.ends_with('\n')
            {
                return s.trim().parse().unwrap();
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no pid in {path:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait up to 10 s for a process to be gone; whether it went.
    pub(crate) async fn wait_gone(pid: i32) -> bool {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if !alive(pid) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let script = format!(
            "sleep 1000 & echo $! > {}; echo started; wait",
            pidfile.display()
        );
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut tx = Some(tx);
        let cmd = ChildCommand::new("bash")
            .args(["-c", &script])
            .stdout_lines(move |_| {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(());
                }
            });
        let run = tokio::spawn(async move {
            tokio::time::timeout(Duration::from_secs(30), async {
                tokio::join!(cmd.status(), async {
                    let _ = rx.await;
                    // Time out once the background sleep is running.
                    tokio::time::sleep(Duration::from_secs(1000)).await
                })
            })
            .await
        });
        let pid = read_pid(&pidfile).await;
        assert!(alive(pid));
        // Cancel: abort the task running the command (the same happens when
        // a timeout elapses, see below).
        run.abort();
        let _ = run.await;
        assert!(wait_gone(pid).await, "background sleep {pid} survived");
    }

    #[tokio::test]
    async fn elapsed_timeout_kills_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let script = format!("sleep 1000 & echo $! > {}; wait", pidfile.display());
        let started = Instant::now();
        let r = tokio::time::timeout(
            Duration::from_millis(500),
            ChildCommand::new("bash").args(["-c", &script]).status(),
        )
        .await;
        assert!(r.is_err(), "timed out");
        assert!(started.elapsed() < Duration::from_secs(5));
        let pid = read_pid(&pidfile).await;
        assert!(wait_gone(pid).await, "background sleep {pid} survived");
    }

    #[tokio::test]
    async fn leftover_background_process_does_not_hang_us() {
        let started = Instant::now();
        let out = ChildCommand::new("bash")
            .args(["-c", "sleep 30 & echo $!; echo done"])
            .stdout_capture()
            .run()
            .await
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(10));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(text.contains("done"), "{text}");
        // Clean up the sleep we left behind on purpose.
        if let Some(pid) = text
            .lines()
            .next()
            .and_then(|l| l.trim().parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}
