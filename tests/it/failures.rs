//! Failures: each gives a clear error and records nothing.

use std::process::Command;

use crate::common::{Env, PASSWORD, atom_versions, file_source, text};

fn pipe_source(env: &Env, backup_command: &str) {
    env.write(
        "etc/handlers/dump.yml",
        &format!(
            "name: dump\ntype: pipe\nparams:\n  backup_command: {}\n  restore_command: cat > /dev/null\n",
            serde_json::to_string(backup_command).unwrap()
        ),
    );
    env.write(
        "etc/sources/db.yml",
        "name: db\nhandler: dump\ndatasets:\n  - name: site\n    atoms: [{name: main}]\n",
    );
}

#[test]
fn dump_failing_midway_leaves_no_record_and_no_snapshot() {
    let env = Env::new();
    pipe_source(
        &env,
        "head -c 200000 /dev/zero; echo 'dump exploded' >&2; exit 3",
    );
    let out = env.run(&["backup", "db"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("exit status 3"), "{t}");
    assert!(
        t.contains("dump exploded"),
        "stderr tail of the dump is shown: {t}"
    );
    assert!(atom_versions(&env.query(&["*"])).is_empty());
    assert!(env.snapshots().is_empty(), "partial snapshot was forgotten");
}

#[test]
fn wrong_password_is_a_clear_error_and_records_nothing() {
    let env = Env::new();
    let init = Command::new(crate::common::restic())
        .args(["init"])
        .env("RESTIC_REPOSITORY", env.repo())
        .env("RESTIC_PASSWORD", "another password")
        .output()
        .unwrap();
    assert!(init.status.success());
    file_source(&env);
    let out = env.run(&["backup", "home"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("wrong password"), "{t}");
    assert!(!t.contains(PASSWORD), "password leaked: {t}");
    assert!(atom_versions(&env.query(&["*"])).is_empty());
}

#[test]
fn restic_missing_from_path_is_a_clear_error() {
    let env = Env::new();
    file_source(&env);
    // restic from PATH, whichever restic the other tests use.
    let main = std::fs::read_to_string(env.config()).unwrap();
    let main: String = main
        .lines()
        .filter(|l| !l.contains("restic_binary"))
        .map(|l| format!("{l}\n"))
        .collect();
    env.write("etc/agent.yml", &main);
    let empty = env.path("empty-bin");
    std::fs::create_dir_all(&empty).unwrap();
    let out = env
        .cmd(&["backup", "home"])
        .env("PATH", &empty)
        .output()
        .unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("restic") && t.contains("not found"), "{t}");
    assert!(atom_versions(&env.query(&["*"])).is_empty());
}

#[test]
fn unreadable_source_directory_is_a_clear_error_and_records_nothing() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    file_source(&env);
    env.write("data/alice/secret/s.txt", "s\n");
    let secret = env.path("data/alice/secret");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o000)).unwrap();
    // Root reads everything: drop the capabilities that let it, so the
    // permission bits count (restic inherits the reduced bounding set).
    let mut c = Command::new("setpriv");
    c.args([
        "--inh-caps=-dac_override,-dac_read_search",
        "--bounding-set=-dac_override,-dac_read_search",
        "--",
        env!("CARGO_BIN_EXE_tabacco"),
        "--config",
    ]);
    c.arg(env.config()).args(["backup", "home"]);
    let out = c.output().unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o755)).unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("secret"), "the unreadable path is named: {t}");
    assert!(atom_versions(&env.query(&["*"])).is_empty());
    assert!(env.snapshots().is_empty(), "partial snapshot was forgotten");
}

#[test]
fn dry_run_executes_nothing_and_records_nothing() {
    let env = Env::new();
    file_source(&env);
    let marker = env.path("marker");
    env.write(
        "etc/sources/home.yml",
        &format!(
            "name: home\nhandler: files\nparams: {{path: {}}}\npre_backup_command: touch {m}\npost_backup_command: touch {m}\ndatasets:\n  - name: users\n    atoms: [{{name: alice}}]\n",
            env.path("data").display(),
            m = marker.display()
        ),
    );
    let out = env.ok(&["backup", "--dry-run", "home"]);
    assert!(
        out.contains("would back up home/users: atoms alice"),
        "{out}"
    );
    assert!(!marker.exists(), "dry run ran a hook");
    assert!(!env.repo().exists(), "dry run touched the repository");
    assert!(atom_versions(&env.query(&["*"])).is_empty());

    // The config switch does the same.
    env.write_main("dry_run: true\n");
    env.ok(&["backup", "home"]);
    assert!(!marker.exists());
    assert!(!env.repo().exists());
}

#[test]
fn source_timeout_kills_the_dump_and_records_nothing() {
    let env = Env::new();
    pipe_source(&env, "sleep 30; echo late");
    let src = std::fs::read_to_string(env.path("etc/sources/db.yml")).unwrap();
    env.write("etc/sources/db.yml", &format!("{src}timeout: 2s\n"));
    let started = std::time::Instant::now();
    let out = env.run(&["backup", "db"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("timed out after 2s"), "{t}");
    assert!(
        started.elapsed().as_secs() < 15,
        "took {:?}",
        started.elapsed()
    );
    let ps = Command::new("pgrep")
        .args(["-f", "sleep 30; echo late"])
        .output()
        .unwrap();
    assert!(
        ps.stdout.is_empty(),
        "dump survived: {}",
        String::from_utf8_lossy(&ps.stdout)
    );
    assert!(atom_versions(&env.query(&["*"])).is_empty());
}

/// Issue 10: the agent's `work_dir` (its embedded index) on a full disk.
/// The backup fails with a clear error; once space is freed, the next
/// backup is recorded (the store used to stay broken after a full disk).
#[test]
fn a_full_work_dir_fails_cleanly_and_the_next_backup_after_freeing_space_is_recorded() {
    let env = Env::new();
    std::fs::create_dir_all(env.path("work")).unwrap();
    let Some(fs) = crate::faults::SmallTmpfs::mount_on(&env.path("work"), "1m") else {
        return;
    };
    file_source(&env);
    env.ok(&["backup", "home"]);
    assert_eq!(atom_versions(&env.query(&["home/*"])).len(), 1);

    let filler = fs.fill();
    env.write("data/alice/a.txt", "second version\n");
    let out = env.run(&["backup", "home"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    // Whatever needs the disk first fails (the source's lock file, the
    // index's shared-memory file or a write), and says so.
    assert!(
        t.contains("free space") || t.contains("No space left on device"),
        "the error says what to check: {t}"
    );

    std::fs::remove_file(filler).unwrap();
    env.write("data/alice/a.txt", "third version\n");
    let out = env.ok(&["backup", "home"]);
    assert!(out.contains("1 dataset(s) recorded"), "{out}");
    let versions = atom_versions(&env.query(&["home/*"]));
    assert!(
        (2..=3).contains(&versions.len()),
        "the first and the last backup are recorded: {versions:?}"
    );
}
