//! Issue 12: a pipe dataset of many atoms is one snapshot and one
//! repository open; a failing dump loses its atom only; the spool is
//! bounded and never left behind.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{Env, PASSWORD, atom_versions, read, restic, restic_ok, text};

/// What the dump of atom `name` writes: about 70 KB, different per atom.
fn content(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    while out.len() < 70_000 {
        out.extend_from_slice(name.as_bytes());
        out.push(b'\n');
    }
    out.truncate(70_000);
    out
}

/// An environment whose restic is a wrapper counting its runs (one line
/// per run, the subcommand) in `restic.log`, with a pipe source `db` of
/// one dataset `all` whose atoms `atoms_command` lists.
fn setup(atoms_command: &str, backup_command: &str, source_extra: &str) -> Env {
    let env = Env::new();
    let wrapper = env.write_executable(
        "restic-counting",
        &format!(
            "#!/bin/bash\necho \"$1\" >> {log}\nexec {restic} \"$@\"\n",
            log = env.path("restic.log").display(),
            restic = restic(),
        ),
    );
    env.write(
        "etc/agent.yml",
        &format!(
            "hostname: testhost\nwork_dir: {work}\nrepository:\n  name: main\n  type: restic\n  params:\n    uri: {repo}\n    password: \"{PASSWORD}\"\n    restic_binary: {wrapper}\n",
            work = env.path("work").display(),
            repo = env.repo().display(),
            wrapper = wrapper.display(),
        ),
    );
    env.write(
        "etc/handlers/dump.yml",
        &format!(
            "- name: dump\n  type: pipe\n  params:\n    backup_command: {backup_command:?}\n    restore_command: cat > \"$TABACCO_TARGET/$TABACCO_ATOM.restored\"\n"
        ),
    );
    env.write(
        "etc/sources/db.yml",
        &format!(
            "name: db\nhandler: dump\n{source_extra}datasets:\n  - name: all\n    atoms_command: {atoms_command:?}\n"
        ),
    );
    // The repository exists before the runs that are counted.
    restic_ok(env.repo().to_str().unwrap(), &["init"]);
    env
}

/// restic subcommands run so far, and forget them.
fn restic_runs(env: &Env) -> Vec<String> {
    let log = env.path("restic.log");
    let runs = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect();
    let _ = std::fs::remove_file(&log);
    runs
}

/// Files left below the spool, if any.
fn spool_files(env: &Env) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&env.path("work/spool"), &mut out);
    walk(&env.path("work/restore-scratch"), &mut out);
    out
}

const CONTENT_DUMP: &str = "yes \"$TABACCO_ATOM\" | head -c 70000";

/// Replace a test's slow or failing dump with [`CONTENT_DUMP`].
fn quick_dumps(env: &Env) {
    env.write(
        "etc/handlers/dump.yml",
        &format!(
            "- name: dump\n  type: pipe\n  params:\n    backup_command: {CONTENT_DUMP:?}\n    restore_command: cat\n"
        ),
    );
}

#[test]
fn fifty_atoms_are_one_snapshot_one_repository_open_and_restore_one_by_one() {
    let env = setup("seq -f 'db%g' 1 50", CONTENT_DUMP, "");
    let out = env.run(&["backup", "db"]);
    assert!(out.status.success(), "{}", text(&out));
    let runs = restic_runs(&env);
    // Besides `version`, and `cat config` once per process for the
    // repository id the index records (issue 11).
    assert!(
        runs.len() <= 3
            && runs.iter().filter(|r| *r == "backup").count() == 1
            && runs.iter().filter(|r| *r == "cat").count() <= 1,
        "restic runs during the backup: {runs:?}"
    );
    let snaps = env.snapshots();
    assert_eq!(snaps.len(), 1, "one snapshot");
    let snap_id = snaps[0]["id"].as_str().unwrap();

    let q = env.query(&["db/all/*"]);
    let versions = atom_versions(&q);
    assert_eq!(versions.len(), 50, "{q}");
    assert_eq!(q[0]["datasets"][0]["snapshot_id"], snap_id);
    assert!(spool_files(&env).is_empty(), "{:?}", spool_files(&env));

    // Restored one by one, byte-identical.
    let target = env.path("out");
    for name in ["db1", "db27", "db50"] {
        env.ok(&[
            "restore",
            "--target",
            target.to_str().unwrap(),
            &format!("db/all/{name}"),
        ]);
        assert_eq!(
            read(&target.join(format!("{name}.restored"))),
            content(name)
        );
    }
    // Each atom is a file of the snapshot, as restic itself shows it.
    let dumped = restic_ok(
        env.repo().to_str().unwrap(),
        &["dump", "--no-lock", snap_id, "/db/all/db7"],
    );
    assert_eq!(dumped, content("db7"));

    // Several atoms at once: one restic restore, whatever their number.
    restic_runs(&env);
    let many = env.path("many");
    env.ok(&["restore", "--target", many.to_str().unwrap(), "db/all/db1*"]);
    let runs = restic_runs(&env);
    assert!(
        runs.iter().filter(|r| *r == "restore").count() == 1
            && runs.len() <= 3
            && runs.iter().filter(|r| *r == "cat").count() <= 1,
        "restic runs during a restore of 11 atoms: {runs:?}"
    );
    for name in ["db1", "db10", "db15", "db19"] {
        assert_eq!(read(&many.join(format!("{name}.restored"))), content(name));
    }
    assert!(!many.join("db2.restored").exists());
    assert!(spool_files(&env).is_empty(), "{:?}", spool_files(&env));
}

#[test]
fn a_failing_dump_loses_its_atom_only() {
    let dump = format!(
        "if [ \"$TABACCO_ATOM\" = db3 ]; then echo partial; echo 'db3: access denied' >&2; exit 2; fi; {CONTENT_DUMP}"
    );
    let env = setup("seq -f 'db%g' 1 5", &dump, "");
    let out = env.run(&["backup", "db"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("db3") && t.contains("access denied") && t.contains("exit status 2"),
        "{t}"
    );
    let mut atoms: Vec<String> = atom_versions(&env.query(&["db/*"]))
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    atoms.sort();
    assert_eq!(
        atoms,
        ["db/all/db1", "db/all/db2", "db/all/db4", "db/all/db5"]
    );
    assert_eq!(env.snapshots().len(), 1);
    assert!(spool_files(&env).is_empty(), "{:?}", spool_files(&env));
    // db3's partial output is not in the snapshot.
    let listed = restic_ok(env.repo().to_str().unwrap(), &["ls", "--no-lock", "latest"]);
    assert!(!String::from_utf8_lossy(&listed).contains("/db/all/db3"));
    // The record the snapshot carries agrees (issue 13): an index rebuilt
    // from the repository does not promise db3 either.
    let before = env.query(&["db/*"]);
    for f in ["metadata.db", "metadata.db-wal", "metadata.db-shm"] {
        let _ = std::fs::remove_file(env.path("work").join(f));
    }
    env.ok(&["reconcile"]);
    let after = env.query(&["db/*"]);
    assert_eq!(atom_versions(&after).len(), 4, "{after}");
    let names = |v: &serde_json::Value| -> Vec<String> {
        v[0]["datasets"][0]["atoms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&after), names(&before));
}

#[test]
fn every_dump_failing_records_nothing_and_leaves_no_snapshot() {
    let env = setup("seq -f 'db%g' 1 4", "echo half; exit 3", "");
    let out = env.run(&["backup", "db"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("every dump failed"), "{t}");
    assert!(atom_versions(&env.query(&["*"])).is_empty());
    assert!(env.snapshots().is_empty());
    assert!(spool_files(&env).is_empty(), "{:?}", spool_files(&env));
    assert!(
        !restic_runs(&env).iter().any(|r| r == "backup"),
        "restic backup ran for nothing"
    );
}

#[test]
fn a_spool_over_budget_fails_the_dataset_clearly() {
    let env = setup(
        "seq -f 'db%g' 1 10",
        CONTENT_DUMP,
        "params: {spool_budget: 300KB}\n",
    );
    let out = env.run(&["backup", "db"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("spool_budget") && t.contains("300000 bytes"),
        "{t}"
    );
    assert!(atom_versions(&env.query(&["*"])).is_empty());
    assert!(env.snapshots().is_empty());
    assert!(spool_files(&env).is_empty(), "{:?}", spool_files(&env));
}

/// No process whose command line holds `needle` within 10 s.
fn assert_no_process(needle: &str) {
    let start = Instant::now();
    loop {
        let ps = Command::new("pgrep").args(["-f", needle]).output().unwrap();
        if ps.stdout.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "left running: {}",
            String::from_utf8_lossy(&ps.stdout)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Wait until some dump has written into the spool.
fn wait_for_spool(env: &Env) {
    let start = Instant::now();
    while spool_files(env).is_empty() {
        assert!(start.elapsed() < Duration::from_secs(20), "no dump started");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn timeout_during_the_dumps_kills_them_and_removes_the_spool() {
    let env = setup(
        "seq -f 'db%g' 1 6",
        "echo start; sleep 31; echo tmo-marker-one",
        "timeout: 2s\n",
    );
    let out = env.run(&["backup", "db"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("timed out after 2s"), "{t}");
    assert_no_process("tmo-marker-one");
    assert!(spool_files(&env).is_empty(), "{:?}", spool_files(&env));
    assert!(atom_versions(&env.query(&["*"])).is_empty());
}

#[test]
fn sigterm_during_the_dumps_leaves_no_child_and_the_spool_goes() {
    let env = setup(
        "seq -f 'db%g' 1 6",
        "echo start; sleep 32; echo term-marker-two",
        "",
    );
    let child = env
        .cmd(&["backup", "db"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_spool(&env);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(143), "{}", text(&out));
    assert_no_process("term-marker-two");
    // Interrupted cleanly: the spool is gone at once.
    assert!(spool_files(&env).is_empty(), "{:?}", spool_files(&env));
    assert!(atom_versions(&env.query(&["*"])).is_empty());
    // The next run of the source works (and would remove what a SIGKILLed
    // run left).
    quick_dumps(&env);
    env.ok(&["backup", "db"]);
    assert!(spool_files(&env).is_empty(), "{:?}", spool_files(&env));
    assert_eq!(atom_versions(&env.query(&["*"])).len(), 6);
}

#[test]
fn the_spool_of_a_killed_run_is_removed_by_the_next_run() {
    let env = setup(
        "seq -f 'db%g' 1 4",
        "echo start; sleep 33; echo kill-marker-three",
        "",
    );
    let mut child = env
        .cmd(&["backup", "db"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_spool(&env);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_no_process("kill-marker-three");
    assert!(!spool_files(&env).is_empty(), "SIGKILL leaves the spool");
    quick_dumps(&env);
    env.ok(&["backup", "db"]);
    assert!(spool_files(&env).is_empty(), "{:?}", spool_files(&env));
}
