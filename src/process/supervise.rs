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
//!    [`super::KILL_GRACE`] to exit (else `SIGKILL`); then it runs the
//!    command's clean-up, if it has one (`--cleanup-arg=A`...: the same program with those
//!    arguments, e.g. `restic unlock`, which removes the lock of a restic
//!    killed before it could) for at most [`CLEANUP_TIMEOUT`]; then it
//!    sends `SIGKILL` to the group, itself included.
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

/// The supervisor's option giving one argument of the clean-up run: the
/// program run again with these arguments after it was stopped
/// (`--cleanup-arg=unlock` for restic).
pub const CLEANUP_ARG_OPT: &str = "--cleanup-arg=";

/// How long a clean-up run may take.
pub const CLEANUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The supervisor's arguments before the program: the stop signal, the
/// clean-up arguments, then `--`.
pub fn supervisor_args(stop_signal: i32, cleanup_args: &[OsString]) -> Vec<OsString> {
    let mut out: Vec<OsString> = vec![
        SUPERVISE_ARG.into(),
        format!("{STOP_SIGNAL_OPT}{stop_signal}").into(),
    ];
    for a in cleanup_args {
        let mut opt = OsString::from(CLEANUP_ARG_OPT);
        opt.push(a);
        out.push(opt);
    }
    out.push("--".into());
    out
}

/// The supervisor's own options.
#[derive(Debug, PartialEq)]
struct Options {
    stop_signal: i32,
    cleanup_args: Vec<OsString>,
    program: Vec<OsString>,
}

/// Split the supervisor's own options off `args`: the stop signal
/// (`SIGTERM` unless given), the clean-up arguments, and the program with
/// its arguments.
fn parse_args(mut args: Vec<OsString>) -> Result<Options, String> {
    let mut stop_signal = libc::SIGTERM;
    let mut cleanup_args = Vec::new();
    while let Some(first) = args.first() {
        let bytes = first.as_bytes();
        if bytes == b"--" {
            args.remove(0);
            break;
        }
        if let Some(n) = bytes.strip_prefix(STOP_SIGNAL_OPT.as_bytes()) {
            let n = String::from_utf8_lossy(n).into_owned();
            stop_signal = n
                .parse()
                .ok()
                .filter(|n| (1..=64).contains(n))
                .ok_or_else(|| format!("bad stop signal {n:?}"))?;
        } else if let Some(a) = bytes.strip_prefix(CLEANUP_ARG_OPT.as_bytes()) {
            cleanup_args.push(OsStr::from_bytes(a).to_os_string());
        } else {
            break;
        }
        args.remove(0);
    }
    Ok(Options {
        stop_signal,
        cleanup_args,
        program: args,
    })
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

/// Fork and exec `argv` (a NULL-terminated C argv) with the default signal
/// state, to die with us; returns its pid. Never returns in the child.
///
/// # Safety
/// Single-threaded process; `argv` valid and NULL-terminated.
unsafe fn spawn(argv: &[*const libc::c_char], name: &OsStr) -> libc::pid_t {
    // SAFETY: see the function's contract.
    unsafe {
        let me = libc::getpid();
        let child = libc::fork();
        if child < 0 {
            fail(&format!("fork: {}", std::io::Error::last_os_error()));
        }
        if child == 0 {
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
                name.to_string_lossy()
            );
            libc::write(2, msg.as_ptr().cast(), msg.len());
            libc::_exit(if err.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            });
        }
        child
    }
}

/// Wait up to `timeout` for `child` to exit; its status if it did.
fn reap_within(
    set: &libc::sigset_t,
    child: libc::pid_t,
    timeout: std::time::Duration,
) -> Option<i32> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(status) = try_reap(child) {
            return Some(status);
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return None;
        }
        // Other signals (our own stop signal) are consumed here.
        wait_signal(set, Some(left));
    }
}

/// The supervisor's entry point: `args` are the program and its arguments
/// (after [`SUPERVISE_ARG`], optionally `--stop-signal=N`,
/// `--cleanup-arg=A`... and `--`). Never returns.
pub fn main(args: Vec<OsString>) -> ! {
    let Options {
        stop_signal,
        cleanup_args,
        program: args,
    } = match parse_args(args) {
        Ok(parsed) => parsed,
        Err(e) => fail(&e),
    };
    if args.is_empty() {
        fail(
            "usage: tabacco __supervise [--stop-signal=N] [--cleanup-arg=A]... [--] PROGRAM [ARGS...] (internal)",
        );
    }
    let cargs: Vec<CString> = match args.iter().map(|a| CString::new(a.as_bytes())).collect() {
        Ok(v) => v,
        Err(_) => fail("an argument contains a NUL byte"),
    };
    let mut argv: Vec<*const libc::c_char> = cargs.iter().map(|c| c.as_ptr()).collect();
    argv.push(std::ptr::null());
    // The clean-up run: the same program with the clean-up arguments.
    let cleanup: Option<Vec<CString>> = if cleanup_args.is_empty() {
        None
    } else {
        std::iter::once(&args[0])
            .chain(&cleanup_args)
            .map(|a| CString::new(a.as_bytes()))
            .collect::<Result<_, _>>()
            .ok()
    };

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
        let child = spawn(&argv, &args[0]);
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
                    if reap_within(&set, child, super::KILL_GRACE).is_none() {
                        libc::kill(child, libc::SIGKILL);
                        reap_within(&set, child, super::KILL_GRACE);
                    }
                    // The clean-up run, whatever the exit (restic 0.14
                    // stopped right after creating its lock exits 130 and
                    // leaves it behind).
                    if let Some(cleanup) = &cleanup {
                        let mut cargv: Vec<*const libc::c_char> =
                            cleanup.iter().map(|c| c.as_ptr()).collect();
                        cargv.push(std::ptr::null());
                        let pid = spawn(&cargv, &args[0]);
                        if reap_within(&set, pid, CLEANUP_TIMEOUT).is_none() {
                            libc::kill(pid, libc::SIGKILL);
                        }
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
    fn options_are_parsed() {
        let os = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        let args = supervisor_args(libc::SIGINT, &os(&["unlock"]));
        assert_eq!(
            args,
            os(&[
                "__supervise",
                "--stop-signal=2",
                "--cleanup-arg=unlock",
                "--"
            ])
        );
        let mut given = args[1..].to_vec();
        given.extend(os(&["restic", "backup"]));
        assert_eq!(
            parse_args(given).unwrap(),
            Options {
                stop_signal: libc::SIGINT,
                cleanup_args: os(&["unlock"]),
                program: os(&["restic", "backup"]),
            }
        );
        let o = parse_args(os(&["--", "bash", "-c", "x"])).unwrap();
        assert_eq!(
            (o.stop_signal, o.program),
            (libc::SIGTERM, os(&["bash", "-c", "x"]))
        );
        assert!(o.cleanup_args.is_empty());
        assert_eq!(parse_args(os(&["bash"])).unwrap().program, os(&["bash"]));
        // After `--` everything belongs to the program.
        assert_eq!(
            parse_args(os(&["--", "--stop-signal=2"])).unwrap().program,
            os(&["--stop-signal=2"])
        );
        assert!(parse_args(os(&["--stop-signal=x", "--", "a"])).is_err());
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
