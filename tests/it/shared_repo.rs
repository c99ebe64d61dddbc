//! Many hosts on one repository: concurrent first runs create it once and
//! never damage it (issue 9); `tabacco repo init` is the explicit way.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::common::{Env, PASSWORD, restic_binary_param, restic_ok, text};

/// Write host `h`'s configuration under `env` (its own work dir, the
/// shared repository at `uri`, a file source over the shared `data/`);
/// returns its agent.yml.
pub fn host_config(env: &Env, h: &str, uri: &str) -> std::path::PathBuf {
    let base = format!("hosts/{h}");
    env.write(
        &format!("{base}/agent.yml"),
        &format!(
            "hostname: {h}\nwork_dir: {work}\nrepository:\n  name: main\n  type: restic\n  params:\n    uri: \"{uri}\"\n    password: \"{PASSWORD}\"\n{bin}",
            work = env.path(&format!("{base}/work")).display(),
            bin = restic_binary_param(),
        ),
    );
    env.write(
        &format!("{base}/handlers/files.yml"),
        "name: files\ntype: file\n",
    );
    env.write(
        &format!("{base}/sources/home.yml"),
        &format!(
            "name: home\nhandler: files\nparams: {{path: {}}}\ndatasets:\n  - name: users\n    atoms: [{{name: alice}}]\n",
            env.path("data").display()
        ),
    );
    env.path(&format!("{base}/agent.yml"))
}

/// `tabacco --config CONFIG ARGS...`.
pub fn tabacco(config: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tabacco"));
    c.arg("--config").arg(config).args(args);
    c.env_remove("RUST_LOG");
    c
}

/// `restic check` passes and the repository has one key.
pub fn assert_sound(repo: &str) {
    restic_ok(repo, &["check", "--no-cache"]);
    let keys = restic_ok(repo, &["key", "list", "--json", "--no-lock"]);
    let keys: serde_json::Value = serde_json::from_slice(&keys).unwrap();
    assert_eq!(keys.as_array().unwrap().len(), 1, "one key: {keys}");
}

#[test]
fn six_hosts_starting_together_on_a_new_repository_all_back_up_into_one() {
    let env = Env::new();
    env.write("data/alice/a.txt", "a\n");
    let repo = env.repo().display().to_string();
    let hosts: Vec<String> = (1..=6).map(|i| format!("host{i}")).collect();
    let configs: Vec<_> = hosts.iter().map(|h| host_config(&env, h, &repo)).collect();
    let children: Vec<_> = configs
        .iter()
        .map(|c| {
            tabacco(c, &["backup", "home"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (h, child) in hosts.iter().zip(children) {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{h}: {}", text(&out));
    }
    assert_sound(&repo);
    let snaps = env.snapshots();
    assert_eq!(snaps.len(), 6, "{snaps:?}");
    let mut seen: Vec<&str> = snaps
        .iter()
        .map(|s| s["hostname"].as_str().unwrap())
        .collect();
    seen.sort();
    assert_eq!(seen, hosts.iter().map(String::as_str).collect::<Vec<_>>());
    // Nothing of the creation is left but its (empty) lock file.
    assert!(!env.repo().join(".tabacco-init.tmp").exists());
}

#[test]
fn repo_init_creates_once_then_finds_the_repository() {
    let env = Env::new();
    let out = env.ok(&["repo", "init"]);
    assert!(out.contains("created repository"), "{out}");
    let out = env.ok(&["repo", "init"]);
    assert!(out.contains("exists already"), "{out}");
    assert_sound(&env.repo().display().to_string());
    // A wrong password is said so, and adds no key.
    env.write_main("");
    let main = std::fs::read_to_string(env.config()).unwrap();
    env.write("etc/agent.yml", &main.replace(PASSWORD, "not the password"));
    let out = env.run(&["repo", "init"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("wrong password"), "{t}");
    env.write_main("");
    assert_sound(&env.repo().display().to_string());
}

#[test]
fn a_creation_interrupted_after_init_is_finished_by_the_next_run() {
    // What a creator killed between `restic init` and publishing the
    // config leaves: a complete repository in the temporary directory.
    let env = Env::new();
    std::fs::create_dir_all(env.repo()).unwrap();
    let tmp = env.repo().join(".tabacco-init.tmp");
    restic_ok(&tmp.display().to_string(), &["init"]);
    let out = env.ok(&["repo", "init"]);
    assert!(out.contains("created repository"), "{out}");
    assert!(!tmp.exists());
    assert_sound(&env.repo().display().to_string());
}
