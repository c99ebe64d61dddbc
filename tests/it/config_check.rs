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
    assert!(!out.contains(crate::common::PASSWORD), "password shown: {out}");
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
