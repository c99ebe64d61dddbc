//! The process supervisor: a tiny process between tabacco and each child,
//! so that no child outlives tabacco, even when tabacco is killed with
//! `SIGKILL`.
//!
//! `PR_SET_PDEATHSIG` alone only reaches the direct child: `bash -c
//! 'mysqldump ... | gzip'` would lose bash and leave the dump running. So,
//! when supervision is enabled ([`enable`], done by the `tabacco` binary),
//! [`super::ChildCommand`] runs `tabacco __supervise PROGRAM ARGS...`
//! instead of `PROGRAM ARGS...`. The supervisor (the binary re-executed, no
//! async runtime, no allocation-heavy work):
//!
//! 1. blocks the signals it handles and asks for `SIGUSR1` when its parent
//!    (the thread of tabacco that started it) dies;
//! 2. forks and execs the real program in the same process group (the
//!    group tabacco made for the supervisor), with the signal mask and
//!    `SIGPIPE` reset, and `PR_SET_PDEATHSIG` = `SIGKILL` tied to the
//!    supervisor;
//! 3. lets go of its own stdin and stdout (so pipes see EOF when the child
//!    is done with them);
//! 4. waits: when the program exits it exits the same way (same code, or
//!    the same signal); `SIGTERM`, `SIGINT`, `SIGHUP` and `SIGQUIT` sent to
//!    the supervisor alone are passed on to the program; when tabacco dies
//!    it sends the command's stop signal (`--stop-signal=N`, default
//!    `SIGTERM`; `SIGINT` for restic, which removes its repository lock
//!    only on that signal in 0.14) to the whole group, gives the program
//!    [`super::KILL_GRACE`] to exit, then sends `SIGKILL` to the group,
//!    itself included.
//!
//! Cancellation by tabacco (which signals the whole group) works as before:
//! the program gets the stop signal directly.

use std::ffi::{CString, OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The hidden first argument that makes the binary a supervisor.
pub const SUPERVISE_ARG: &str = "__supervise";

/// The supervisor's option naming the signal the program gets first when
/// tabacco dies (`--stop-signal=2`).
pub const STOP_SIGNAL_OPT: &str = "--stop-signal=";

/// The supervisor's arguments before the program: the stop signal, then
/// `--`.
pub fn supervisor_args(stop_signal: i32) -> [String; 3] {
    [
        SUPERVISE_ARG.to_string(),
        format!("{STOP_SIGNAL_OPT}{stop_signal}"),
        "--".to_string(),
    ]
}

/// Split the supervisor's own options off `args`: the stop signal
/// (`SIGTERM` unless given) and the program with its arguments.
fn parse_args(mut args: Vec<OsString>) -> Result<(i32, Vec<OsString>), String> {
    let mut stop_signal = libc::SIGTERM;
    while let Some(first) = args.first() {
        let text = first.to_string_lossy();
        if text == "--" {
            args.remove(0);
            break;
        }
        match text.strip_prefix(STOP_SIGNAL_OPT) {
            Some(n) => {
                stop_signal = n
                    .parse()
                    .ok()
                    .filter(|n| (1..=64).contains(n))
                    .ok_or_else(|| format!("bad stop signal {n:?}"))?;
                args.remove(0);
            }
            None => break,
        }
    }
    Ok((stop_signal, args))
}

static SUPERVISOR: OnceLock<PathBuf> = OnceLock::new();

/// Run every child (that asks to be killed with its parent, the default)
/// through `supervisor`, which must be a tabacco binary (whose `main`
/// calls [`main`] on [`SUPERVISE_ARG`]). Returns `false` if supervision
/// was enabled already.
pub fn enable(supervisor: PathBuf) -> bool {
    SUPERVISOR.set(supervisor).is_ok()
}

/// Enable supervision with this very binary (`/proc/self/exe`, which
/// stays valid when the file is replaced by an upgrade), if available.
pub fn enable_self() -> bool {
    let exe = PathBuf::from("/proc/self/exe");
    if exe.exists() {
        enable(exe)
    } else {
        match std::env::current_exe() {
            Ok(p) => enable(p),
            Err(_) => false,
        }
    }
}

/// The supervisor program, if supervision is enabled.
pub fn supervisor() -> Option<&'static Path> {
    SUPERVISOR.get().map(PathBuf::as_path)
}

/// Find `program` like `execvp` would: as given if it contains a `/`,
/// else in the directories of `path` (our `PATH` if `None`). `None` if it
/// is not there or not executable.
pub fn find_program(program: &OsStr, path: Option<&OsStr>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.as_bytes().contains(&b'/') {
        let p = PathBuf::from(program);
        return executable(&p).then_some(p);
    }
    let path = match path {
        Some(p) => p.to_os_string(),
        None => std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
    };
    std::env::split_paths(&path)
        .map(|dir| {
            let dir = if dir.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                dir
            };
            dir.join(program)
        })
        .find(|p| executable(p))
}

/// Signals the supervisor handles (blocked, taken with `sigtimedwait`).
fn handled() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [
            libc::SIGCHLD,
            libc::SIGUSR1,
            libc::SIGTERM,
            libc::SIGINT,
            libc::SIGHUP,
            libc::SIGQUIT,
        ] {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("tabacco supervisor: {msg}");
    std::process::exit(125)
}

/// Wait for one of the handled signals, at most `timeout` (forever if
/// `None`). Returns the signal number, or `None` on timeout.
fn wait_signal(set: &libc::sigset_t, timeout: Option<std::time::Duration>) -> Option<i32> {
    loop {
        let ts = timeout.map(|t| libc::timespec {
            tv_sec: t.as_secs() as libc::time_t,
            tv_nsec: t.subsec_nanos() as libc::c_long,
        });
        let tsp = ts
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: valid set and timespec pointers.
        let sig = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), tsp) };
        if sig > 0 {
            return Some(sig);
        }
        match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::EINTR) => continue,
            _ => return None, // EAGAIN: timeout
        }
    }
}

/// Reap `child` if it exited; its raw wait status.
fn try_reap(child: libc::pid_t) -> Option<i32> {
    let mut status = 0;
    // SAFETY: waitpid on our own child.
    let r = unsafe { libc::waitpid(child, &mut status, libc::WNOHANG) };
    if r == child {
        Some(status)
    } else if r < 0 {
        // ECHILD: already gone (should not happen); report a failure.
        Some(127 << 8)
    } else {
        None
    }
}

/// Exit the way the child did.
fn exit_like(status: i32) -> ! {
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        // SAFETY: resetting a disposition, unblocking and raising a signal
        // on ourselves.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, sig);
            libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            libc::raise(sig);
        }
        std::process::exit(128 + sig)
    }
    std::process::exit(if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        1
    })
}

/// The supervisor's entry point: `args` are the program and its arguments
/// (after [`SUPERVISE_ARG`], optionally `--stop-signal=N` and `--`). Never
/// returns.
pub fn main(args: Vec<OsString>) -> ! {
    let (stop_signal, args) = match parse_args(args) {
        Ok(parsed) => parsed,
        Err(e) => fail(&e),
    };
    if args.is_empty() {
        fail("usage: tabacco __supervise [--] PROGRAM [ARGS...] (internal)");
    }
    let cargs: Vec<CString> = match args.iter().map(|a| CString::new(a.as_bytes())).collect() {
        Ok(v) => v,
        Err(_) => fail("an argument contains a NUL byte"),
    };
    let mut argv: Vec<*const libc::c_char> = cargs.iter().map(|c| c.as_ptr()).collect();
    argv.push(std::ptr::null());

    let set = handled();
    // SAFETY: plain syscalls; the process is single-threaded here (no
    // runtime was started), so fork is safe.
    unsafe {
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        // Named for ps/top (exec'ing /proc/self/exe would show "exe").
        libc::prctl(libc::PR_SET_NAME, c"tabacco-superv".as_ptr(), 0, 0, 0);
        // From here on our parent's death is SIGUSR1 (until now it was
        // SIGKILL, set by tabacco before exec: nothing had started yet).
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGUSR1, 0, 0, 0) != 0 {
            fail(&format!(
                "prctl(PR_SET_PDEATHSIG): {}",
                std::io::Error::last_os_error()
            ));
        }
        if libc::getppid() == 1 {
            // Orphaned already.
            std::process::exit(125);
        }
        let me = libc::getpid();
        let child = libc::fork();
        if child < 0 {
            fail(&format!("fork: {}", std::io::Error::last_os_error()));
        }
        if child == 0 {
            // The program: default signal state, dies with the supervisor.
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            if libc::getppid() != me {
                libc::_exit(125);
            }
            libc::execv(argv[0], argv.as_ptr());
            let err = std::io::Error::last_os_error();
            let msg = format!(
                "tabacco supervisor: cannot run {}: {err}\n",
                args[0].to_string_lossy()
            );
            libc::write(2, msg.as_ptr().cast(), msg.len());
            libc::_exit(if err.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            });
        }
        // Let go of stdin/stdout: the program has its own copies.
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            libc::dup2(null, 0);
            libc::dup2(null, 1);
            if null > 2 {
                libc::close(null);
            }
        }
        loop {
            let Some(sig) = wait_signal(&set, None) else {
                continue;
            };
            match sig {
                libc::SIGCHLD => {
                    if let Some(status) = try_reap(child) {
                        exit_like(status);
                    }
                }
                libc::SIGUSR1 => {
                    // tabacco is gone: stop the whole group, politely first
                    // (with the program's own stop signal: restic cleans
                    // up its lock on SIGINT).
                    let pgid = libc::getpgrp();
                    libc::kill(-pgid, stop_signal);
                    let deadline = std::time::Instant::now() + super::KILL_GRACE;
                    loop {
                        if try_reap(child).is_some() {
                            break;
                        }
                        let left = deadline.saturating_duration_since(std::time::Instant::now());
                        if left.is_zero() {
                            break;
                        }
                        // Other signals (our own stop signal) are consumed
                        // here.
                        wait_signal(&set, Some(left));
                    }
                    // Background processes of the program too; and us.
                    libc::kill(-pgid, libc::SIGKILL);
                    std::process::exit(137);
                }
                other => {
                    libc::kill(child, other);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_signal_option_is_parsed() {
        let os = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            parse_args(os(&["--stop-signal=2", "--", "restic", "backup"])).unwrap(),
            (libc::SIGINT, os(&["restic", "backup"]))
        );
        assert_eq!(
            parse_args(os(&["--", "bash", "-c", "x"])).unwrap(),
            (libc::SIGTERM, os(&["bash", "-c", "x"]))
        );
        assert_eq!(
            parse_args(os(&["bash"])).unwrap(),
            (libc::SIGTERM, os(&["bash"]))
        );
        // After `--` everything belongs to the program.
        assert_eq!(
            parse_args(os(&["--", "--stop-signal=2"])).unwrap().1,
            os(&["--stop-signal=2"])
        );
        assert!(parse_args(os(&["--stop-signal=x", "--", "a"])).is_err());
        let a = supervisor_args(libc::SIGINT);
        assert_eq!(a[1], "--stop-signal=2");
    }

    #[test]
    fn find_program_searches_path_like_execvp() {
        let sh = find_program(OsStr::new("sh"), None).expect("sh is in PATH");
        assert!(sh.is_absolute() && sh.ends_with("sh"));
        assert_eq!(
            find_program(OsStr::new("/bin/sh"), None),
            Some(PathBuf::from("/bin/sh"))
        );
        assert!(find_program(OsStr::new("no-such-program-xyz"), None).is_none());
        assert!(find_program(OsStr::new("sh"), Some(OsStr::new("/nonexistent"))).is_none());
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tool");
        std::fs::write(&f, "#!/bin/sh\n").unwrap();
        // Not executable: not found.
        assert!(find_program(OsStr::new("tool"), Some(dir.path().as_os_str())).is_none());
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            find_program(OsStr::new("tool"), Some(dir.path().as_os_str())),
            Some(f)
        );
    }
}
