//! Interrupts and stale locks (issue 9): `tabacco backup` stopped by
//! SIGINT, SIGTERM or SIGKILL, and the agent killed, leave no restic
//! process and no lock; a lock left by a killed restic does not stop the
//! next failing dump from forgetting its partial snapshot.

use std::process::{Child, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::agent_proc::{Agent, processes_with};
use crate::common::{Env, atom_versions, locks, restic_on, text, wait_until};

/// A pipe source `db` (dataset `site`, atom `main`) dumping with `command`;
/// `schedule` for the agent, if any.
fn pipe_source(env: &Env, command: &str, schedule: Option<&str>) {
    env.write(
        "etc/handlers/dump.yml",
        &format!(
            "name: dump\ntype: pipe\nparams:\n  backup_command: {}\n  restore_command: cat > /dev/null\n",
            serde_json::to_string(command).unwrap()
        ),
    );
    let schedule = schedule
        .map(|s| format!("schedule: '{s}'\n"))
        .unwrap_or_default();
    env.write(
        "etc/sources/db.yml",
        &format!("name: db\nhandler: dump\n{schedule}datasets:\n  - name: site\n    atoms: [{{name: main}}]\n"),
    );
}

/// A dump that sends some data, then hangs: restic holds its lock.
const SLOW_DUMP: &str = "head -c 100000 /dev/urandom; exec sleep 300";

/// The output of `child`, waiting at most `secs`.
fn output_within(child: Child, secs: u64) -> Output {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    rx.recv_timeout(Duration::from_secs(secs))
        .unwrap_or_else(|_| panic!("tabacco did not exit within {secs}s"))
        .unwrap()
}

/// Nothing started with `marker` is left, within 10 s; no lock in the
/// repository.
fn assert_clean(env: &Env, marker: &str, since: Instant) {
    wait_until(10, "no process of the interrupted run left", || {
        processes_with(marker, 0).is_empty()
    });
    assert!(
        since.elapsed() < Duration::from_secs(10) + Duration::from_secs(1),
        "processes took {:?} to go",
        since.elapsed()
    );
    let left = locks(&env.repo());
    assert!(left.is_empty(), "locks left in REPO/locks: {left:?}");
}

/// Run `tabacco ARGS` until restic holds its lock, send it `sig`; its
/// output. Then nothing it started is left within 10 s and no lock.
fn interrupt(env: &Env, args: &[&str], sig: Signal) -> Output {
    let marker = format!(
        "tabacco-test-int-{}-{}",
        std::process::id(),
        env.dir.path().display()
    );
    let child = env
        .cmd(args)
        .env("TABACCO_TEST_MARK", &marker)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = Pid::from_raw(child.id() as i32);
    wait_until(30, "restic's lock", || !locks(&env.repo()).is_empty());
    let sent = Instant::now();
    kill(pid, sig).unwrap();
    let out = output_within(child, 30);
    assert_clean(env, &marker, sent);
    out
}

fn interrupt_backup(sig: Signal) -> (Env, Output) {
    let env = Env::new();
    pipe_source(&env, SLOW_DUMP, None);
    env.ok(&["repo", "init"]);
    let out = interrupt(&env, &["backup", "db"], sig);
    assert!(
        atom_versions(&env.query(&["*"])).is_empty(),
        "nothing recorded"
    );
    (env, out)
}

#[test]
fn sigint_to_backup_stops_restic_and_exits_130() {
    let (_env, out) = interrupt_backup(Signal::SIGINT);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(130), "{t}");
    assert!(t.contains("interrupted by SIGINT"), "{t}");
    assert!(t.contains("NOT recorded: db/site"), "{t}");
    assert!(t.contains("0 dataset(s) were recorded"), "{t}");
}

#[test]
fn sigterm_to_backup_stops_restic_and_exits_143() {
    let (_env, out) = interrupt_backup(Signal::SIGTERM);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(143), "{t}");
    assert!(t.contains("interrupted by SIGTERM"), "{t}");
    assert!(t.contains("NOT recorded: db/site"), "{t}");
}

#[test]
fn sigkill_to_backup_leaves_no_restic_and_no_lock() {
    use std::os::unix::process::ExitStatusExt;
    let (_env, out) = interrupt_backup(Signal::SIGKILL);
    assert_eq!(out.status.signal(), Some(9), "{}", text(&out));
}

#[test]
fn sigkill_to_the_agent_leaves_no_restic_and_no_lock() {
    let env = Env::new();
    pipe_source(&env, SLOW_DUMP, Some("@every 1s"));
    env.ok(&["repo", "init"]);
    let mut agent = Agent::start(&env);
    wait_until(30, "restic's lock", || !locks(&env.repo()).is_empty());
    agent.signal(Signal::SIGKILL);
    agent.wait_exit(Duration::from_secs(5)).expect("killed");
    let sent = Instant::now();
    assert_clean(&env, &agent.marker, sent);
    assert!(
        atom_versions(&env.query(&["*"])).is_empty(),
        "nothing recorded"
    );
}

#[test]
fn a_killed_restics_lock_does_not_keep_a_failed_dumps_partial_snapshot() {
    use std::io::Write;
    let env = Env::new();
    pipe_source(
        &env,
        "head -c 200000 /dev/zero; echo 'dump exploded' >&2; exit 3",
        None,
    );
    env.ok(&["repo", "init"]);
    // A restic of our own, killed with SIGKILL while it holds its lock.
    let mut restic = restic_on(&env.repo().display().to_string())
        .args([
            "backup",
            "--stdin",
            "--stdin-filename",
            "held",
            "--no-cache",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = restic.stdin.take().unwrap();
    stdin.write_all(b"data\n").unwrap();
    wait_until(30, "restic's lock", || !locks(&env.repo()).is_empty());
    restic.kill().unwrap();
    restic.wait().unwrap();
    drop(stdin);
    assert_eq!(locks(&env.repo()).len(), 1, "a stale lock");

    let out = env.run(&["backup", "db"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("dump exploded"), "{t}");
    assert!(
        t.contains("was discarded") && !t.contains("LEFT BEHIND"),
        "{t}"
    );
    assert!(
        env.snapshots().is_empty(),
        "the partial snapshot was forgotten"
    );
    assert!(atom_versions(&env.query(&["*"])).is_empty());
}

#[test]
fn sigint_to_restore_stops_restic_and_exits_130() {
    let env = Env::new();
    // A pipe atom whose restore command never finishes reading.
    pipe_source(&env, "head -c 3000000 /dev/urandom", None);
    let handler = std::fs::read_to_string(env.path("etc/handlers/dump.yml")).unwrap();
    env.write(
        "etc/handlers/dump.yml",
        &handler.replace("cat > /dev/null", "exec sleep 300"),
    );
    env.ok(&["backup", "db"]);
    let target = env.path("t");
    let out = interrupt(
        &env,
        &[
            "restore",
            "--target",
            target.to_str().unwrap(),
            "db/site/main",
        ],
        Signal::SIGINT,
    );
    let t = text(&out);
    assert_eq!(out.status.code(), Some(130), "{t}");
    assert!(t.contains("restore interrupted by SIGINT"), "{t}");
}
