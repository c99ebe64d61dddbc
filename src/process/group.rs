//! A child's process group: what is set up between fork and exec (its own
//! group, the parent-death signal, the priority) and the guard that stops
//! the whole group when the future running the child is dropped before the
//! child was reaped (see the parent module's "Cancellation").

use std::io;
use std::os::fd::OwnedFd;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use super::{format_status, supervise};

/// How long a cancelled child's group gets between the stop signal and
/// `SIGKILL`.
pub const KILL_GRACE: Duration = Duration::from_secs(5);

/// Cancelled children whose process groups are still being stopped (their
/// stop signal sent, `SIGKILL` not yet): see [`wait_cancelled`].
static STOPPING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Wait until every cancelled child of this process is gone (it exited
/// after its stop signal, or got `SIGKILL` after [`KILL_GRACE`]), at most
/// `timeout`. Returns whether they all are. A command-line run calls this
/// after an interrupt, before it exits, so that restic can remove its
/// repository lock.
pub async fn wait_cancelled(timeout: Duration) -> bool {
    use std::sync::atomic::Ordering;
    let deadline = tokio::time::Instant::now() + timeout;
    while STOPPING.load(Ordering::SeqCst) > 0 {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// Set up the child between fork and exec. Only async-signal-safe calls.
pub(super) fn child_setup(
    parent: libc::pid_t,
    parent_death_kill: bool,
    nice_level: i32,
    io_class: i32,
) -> io::Result<()> {
    // SAFETY (for the calls below): plain syscalls without memory
    // arguments, async-signal-safe, run in the single-threaded child.
    unsafe {
        if parent_death_kill {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent died before prctl took effect: nobody will reap
            // or kill us.
            if libc::getppid() != parent {
                libc::_exit(125);
            }
        }
        if nice_level != 0 {
            // Relative, like nice(1); best effort (the result is ignored).
            let current = libc::getpriority(libc::PRIO_PROCESS, 0);
            let target = (current + nice_level).clamp(-20, 19);
            libc::setpriority(libc::PRIO_PROCESS, 0, target);
        }
        if (1..=3).contains(&io_class) {
            const IOPRIO_WHO_PROCESS: libc::c_long = 1;
            const IOPRIO_CLASS_SHIFT: i32 = 13;
            // ionice(1) uses priority 4 within the realtime and best-effort
            // classes; the idle class has none.
            let data = if io_class == 3 { 0 } else { 4 };
            let ioprio = (io_class << IOPRIO_CLASS_SHIFT) | data;
            libc::syscall(
                libc::SYS_ioprio_set,
                IOPRIO_WHO_PROCESS,
                0 as libc::c_long,
                ioprio as libc::c_long,
            );
        }
    }
    Ok(())
}

/// Warn (in the parent, where logging is possible) about priorities the
/// child will not be able to apply.
pub(super) fn check_priority(command: &str, nice_level: i32, io_class: i32) {
    if !(0..=3).contains(&io_class) {
        tracing::warn!(
            command,
            io_class,
            "ignoring I/O class {io_class}: valid classes are 1 (realtime), 2 (best-effort), 3 (idle)"
        );
    }
    // SAFETY: geteuid has no preconditions.
    let privileged = unsafe { libc::geteuid() } == 0;
    if !privileged && (nice_level < 0 || io_class == 1) {
        tracing::warn!(
            command,
            nice_level,
            io_class,
            "a negative nice level or the realtime I/O class needs root; the priority may stay unchanged"
        );
    }
}

/// Kills a child's process group when dropped while armed (the child not
/// yet reaped).
pub(super) struct GroupGuard {
    pub(super) child: Option<tokio::process::Child>,
    pub(super) pgid: Pid,
    pub(super) stop_signal: Signal,
    pub(super) armed: bool,
    pub(super) command: String,
    /// Duplicates of the read ends of the child's stdout/stderr pipes. On
    /// cancellation they stay open (and are drained) until the group is
    /// gone: otherwise the child's first write after our reader went away
    /// would kill it with SIGPIPE before it could clean up (restic prints
    /// "signal interrupt received, cleaning up" and only then removes its
    /// lock).
    pub(super) drain: Vec<OwnedFd>,
    /// The clean-up run ([`ChildCommand::cleanup_after_stop`]), if any.
    pub(super) cleanup: Option<std::process::Command>,
}

/// Run a clean-up command to its end, at most `timeout`; how it went, for
/// the log.
fn run_cleanup(mut c: std::process::Command, timeout: Duration) -> String {
    let mut child = match c.spawn() {
        Ok(c) => c,
        Err(e) => return format!("cannot start: {e}"),
    };
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return format_status(st),
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return "killed: it took too long".into();
            }
        }
    }
}

/// Discard what arrives on `fds` (non-blocking pipe read ends) until all
/// reach end of file or `deadline` passes. Returns whether all did.
fn drain_until(fds: &[OwnedFd], deadline: std::time::Instant) -> bool {
    let mut open: Vec<bool> = vec![true; fds.len()];
    let mut buf = [0u8; 8192];
    while open.iter().any(|o| *o) {
        let mut progressed = false;
        for (fd, is_open) in fds.iter().zip(open.iter_mut()) {
            if !*is_open {
                continue;
            }
            match nix::unistd::read(fd, &mut buf) {
                Ok(0) => *is_open = false,
                Ok(_) => progressed = true,
                Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => {}
                Err(_) => *is_open = false,
            }
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        if !progressed {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    true
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Some(child) = self.child.take() else {
            return;
        };
        let pgid = self.pgid;
        tracing::debug!(command = %self.command, pgid = pgid.as_raw(), signal = ?self.stop_signal,
            "cancelled: stopping the command's process group");
        let _ = killpg(pgid, self.stop_signal);
        let drain = std::mem::take(&mut self.drain);
        let cleanup = self.cleanup.take();
        let command = self.command.clone();
        STOPPING.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        // The leader stays unreaped (a zombie at worst) until after the
        // final SIGKILL, so the group id cannot be reused meanwhile.
        let spawned = std::thread::Builder::new()
            .name("tabacco-kill".into())
            .spawn(move || {
                let deadline = std::time::Instant::now() + KILL_GRACE;
                // With pipes to watch, stop early once every writer is gone
                // (the child and whatever inherited its output exited).
                if drain.is_empty() || !drain_until(&drain, deadline) {
                    std::thread::sleep(
                        deadline.saturating_duration_since(std::time::Instant::now()),
                    );
                }
                let _ = killpg(pgid, Signal::SIGKILL);
                drop(drain);
                if let Some(c) = cleanup {
                    let how = run_cleanup(c, supervise::CLEANUP_TIMEOUT);
                    tracing::debug!(command = %command, "clean-up after the stopped command: {how}");
                }
                drop(child);
                STOPPING.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            });
        if spawned.is_err() {
            let _ = killpg(pgid, Signal::SIGKILL);
            STOPPING.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}
