//! `tabacco config check` on good and bad trees.

use crate::common::{Env, text};

#[test]
fn good_tree_prints_a_summary_without_secrets() {
    let env = Env::new();
    env.write("etc/handlers/files.yml", "name: files\ntype: file\n");
    env.write(
        "etc/sources/home.yml",
        "name: home\nhandler: files\nschedule: '@daily'\nparams: {path: /srv}\ndatasets:\n  - name: users\n    atoms: [{name: alice}]\n",
    );
    let out = env.ok(&["config", "check"]);
    assert!(out.contains("home") && out.contains("files"), "{out}");
    assert!(out.contains("configuration OK"), "{out}");
    assert!(
        !out.contains(crate::common::PASSWORD),
        "password shown: {out}"
    );
}

#[test]
fn bad_tree_reports_every_mistake_with_file_and_field() {
    let env = Env::new();
    env.write_main("default_io_class: 7\n");
    env.write(
        "etc/handlers/h.yml",
        "- name: files\n  type: file\n- name: files\n  type: pipe\n- name: weird\n  type: tape\n",
    );
    env.write(
        "etc/sources/a.yml",
        "name: a\nhandler: missing\nschedule: every tuesday\ndatasets:\n  - name: ../up\n    atoms: [{name: x}]\n",
    );
    env.write(
        "etc/sources/b.yml",
        "name: b\nhandler: files\nparams: {path: /srv}\ntimeout: soon\ndatasets: [{name: d, atoms: [{name: x}]}]\ndatasets_command: echo\ncolour: blue\n",
    );
    let out = env.run(&["config", "check"]);
    assert_eq!(out.status.code(), Some(2));
    let t = text(&out);
    let expect = [
        ("agent.yml", "default_io_class"),
        ("h.yml", "name"),
        ("h.yml", "type"),
        ("a.yml", "handler"),
        ("a.yml", "schedule"),
        ("a.yml", "datasets[0].name"),
        ("b.yml", "colour"),
    ];
    for (file, field) in expect {
        assert!(
            t.lines().any(|l| l.contains(file) && l.contains(field)),
            "no error naming {file} and {field} in:\n{t}"
        );
    }
}

/// Issue 16: what `config check` used to accept: a queue name typo, a
/// schedule that never fires, a directory named `*.yml`; then, on a valid
/// tree, a password file that is not there and a work_dir that is a file
/// (errors) and a missing root (a warning).
#[test]
fn config_check_finds_typos_impossible_schedules_and_missing_files() {
    let env = Env::new();
    env.write_main("queue_config:\n  workers:\n    backups: 3\n");
    env.write("etc/handlers/files.yml", "name: files\ntype: file\n");
    env.write(
        "etc/sources/home.yml",
        "name: home\nhandler: files\nschedule: '0 0 30 2 *'\nparams: {path: /srv}\ndatasets: [{name: d, atoms: [{name: a}]}]\n",
    );
    std::fs::create_dir_all(env.path("etc/sources/old.yml")).unwrap();
    let out = env.run(&["config", "check"]);
    assert_eq!(out.status.code(), Some(2));
    let t = text(&out);
    for needle in [
        "queue_config.workers.backups: unknown queue",
        "schedule: \"0 0 30 2 *\" never fires",
        "old.yml: (document): is not a regular file",
    ] {
        assert!(t.contains(needle), "no {needle:?} in:\n{t}");
    }

    std::fs::remove_dir(env.path("etc/sources/old.yml")).unwrap();
    env.write(
        "etc/agent.yml",
        &format!(
            "hostname: h\nwork_dir: {w}\nrepository:\n  type: restic\n  params:\n    uri: {r}\n    password_file: {p}\n",
            w = env.path("state-file").display(),
            r = env.repo().display(),
            p = env.path("no-password").display(),
        ),
    );
    env.write("state-file", "not a directory");
    env.write(
        "etc/sources/home.yml",
        &format!(
            "name: home\nhandler: files\nparams: {{path: {}}}\ndatasets: [{{name: d, atoms: [{{name: a}}]}}]\n",
            env.path("not-mounted").display()
        ),
    );
    let out = env.run(&["config", "check"]);
    assert_eq!(out.status.code(), Some(2));
    let t = text(&out);
    for needle in [
        "repository.params.password_file",
        "no-password: cannot be read",
        "work_dir:",
        "is not a directory: tabacco keeps its state there",
        "warning:",
        "not-mounted",
    ] {
        assert!(t.contains(needle), "no {needle:?} in:\n{t}");
    }

    // Fixed: OK, the missing root still a warning, the summary's queues right.
    env.write("no-password", "secret\n");
    std::fs::remove_file(env.path("state-file")).unwrap();
    let out = env.run(&["config", "check"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(t.contains("warning:") && t.contains("not-mounted"), "{t}");
    assert!(
        t.contains("backup: 2 (default), datasets: 2 (default)"),
        "{t}"
    );
}
