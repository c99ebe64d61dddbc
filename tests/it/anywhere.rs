//! Restore anywhere (issue 11): the index records what a restore needs
//! (each atom's path in the snapshot, its size, file count or digest; the
//! dataset's handler type and repository id), so any host restores any
//! atom, any version, even one with no configuration.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::common::{Env, PASSWORD, read, restic_binary_param, restic_ok, text};
use crate::metadb_server::MetadbServer;

/// Hex SHA-256 of `data`.
fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `n` pseudo-random bytes, different per `seed`.
fn noise(n: u32, seed: u32) -> Vec<u8> {
    (0..n)
        .map(|i| ((i ^ seed).wrapping_mul(2654435761) >> 13) as u8)
        .collect()
}

/// The repository id in the config of the restic repository at `repo`.
fn repository_id(repo: &std::path::Path) -> String {
    let config: serde_json::Value =
        serde_json::from_slice(&restic_ok(&repo.display().to_string(), &["cat", "config"]))
            .unwrap();
    config["id"].as_str().unwrap().to_string()
}

/// The dataset of `source`/`name` in a `query --json` answer.
fn dataset<'a>(q: &'a serde_json::Value, source: &str, name: &str) -> &'a serde_json::Value {
    q.as_array()
        .unwrap()
        .iter()
        .flat_map(|b| b["datasets"].as_array().unwrap())
        .find(|d| d["source"] == source && d["name"] == name)
        .unwrap_or_else(|| panic!("no dataset {source}/{name} in {q:#}"))
}

/// The atom `name` of a dataset of a `query --json` answer.
fn atom<'a>(ds: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    ds["atoms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == name)
        .unwrap_or_else(|| panic!("no atom {name} in {ds:#}"))
}

#[test]
fn backup_records_what_a_restore_needs() {
    let env = Env::new();
    env.write("etc/handlers/files.yml", "name: files\ntype: file\n");
    env.write(
        "etc/handlers/dump.yml",
        "name: dump\ntype: pipe\nparams:\n  backup_command: cat \"$DUMP_DIR/$TABACCO_ATOM.dump\"\n  restore_command: cat > \"$TABACCO_TARGET/$TABACCO_ATOM.restored\"\n",
    );
    let root = env.path("data");
    env.write(
        "etc/sources/www.yml",
        &format!(
            "name: www\nhandler: files\nparams: {{path: {}}}\ndatasets:\n  - name: sites\n    atoms: [{{name: site1}}, {{name: site2, path: s/two}}]\n",
            root.display()
        ),
    );
    env.write(
        "etc/sources/mysql.yml",
        "name: mysql\nhandler: dump\ndatasets:\n  - name: one\n    atoms: [{name: main}]\n  - name: many\n    atoms: [{name: a}, {name: b}]\n",
    );
    env.write("data/site1/index.html", "hello\n");
    env.write("data/site1/img/logo.png", &"p".repeat(1000));
    env.write("data/s/two/x", "x");
    let dumps = [
        ("main", noise(200_000, 1)),
        ("a", noise(1000, 2)),
        ("b", Vec::new()),
    ];
    for (name, data) in &dumps {
        std::fs::write(env.path(&format!("{name}.dump")), data).unwrap();
    }
    for source in ["www", "mysql"] {
        let out = env
            .cmd(&["backup", source])
            .env("DUMP_DIR", env.dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", crate::common::text(&out));
    }
    let repo_id = repository_id(&env.repo());
    let q = env.query(&["*"]);

    let www = dataset(&q, "www", "sites");
    assert_eq!(www["handler"], "file");
    assert_eq!(www["repository_id"], repo_id.as_str());
    let site1 = atom(www, "site1");
    assert_eq!(site1["snapshot_path"], root.join("site1").to_str().unwrap());
    assert_eq!(
        (site1["files"].as_i64(), site1["size"].as_i64()),
        (Some(2), Some(1006))
    );
    assert!(site1.get("sha256").is_none(), "{site1}");
    let site2 = atom(www, "site2");
    assert_eq!(site2["snapshot_path"], root.join("s/two").to_str().unwrap());
    assert_eq!(
        (site2["files"].as_i64(), site2["size"].as_i64()),
        (Some(1), Some(1))
    );

    // A single-atom stream (straight into restic) and a spooled dataset.
    for (ds, name) in [("one", "main"), ("many", "a"), ("many", "b")] {
        let d = dataset(&q, "mysql", ds);
        assert_eq!(d["handler"], "pipe");
        assert_eq!(d["repository_id"], repo_id.as_str());
        let a = atom(d, name);
        let data = &dumps.iter().find(|(n, _)| *n == name).unwrap().1;
        assert_eq!(a["size"].as_u64(), Some(data.len() as u64), "{a}");
        assert_eq!(a["sha256"], sha256_hex(data).as_str(), "{a}");
        assert!(a.get("files").is_none(), "{a}");
        let path = a["snapshot_path"].as_str().unwrap();
        // restic 0.18.0 stores a single stream under a flat name.
        assert!(
            path == format!("/mysql/{ds}/{name}") || path == format!("/mysql%2F{ds}%2F{name}"),
            "{path}"
        );
        // It is where the snapshot holds it.
        let dumped = restic_ok(
            &env.repo().display().to_string(),
            &["dump", d["snapshot_id"].as_str().unwrap(), path],
        );
        assert!(dumped == *data, "restic dump of {path} differs");
    }
}

/// Hosts sharing a metadata server (and, unless told, one repository).
struct Fleet {
    dir: tempfile::TempDir,
    server: MetadbServer,
}

impl Fleet {
    fn new() -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("metadb.yml");
        std::fs::write(
            &config,
            format!(
                "database: sqlite://{}\n",
                dir.path().join("metadb.sqlite").display()
            ),
        )
        .unwrap();
        let server = MetadbServer::start(dir.path(), &config, &["--listen", "127.0.0.1:0"]);
        Fleet { dir, server }
    }

    /// The shared repository.
    fn repo(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    /// A host named `name` using repository `repo`, with the pipe handler
    /// `dump` (reading `$DUMP_DIR/<atom>.dump`, writing
    /// `$TABACCO_TARGET/<atom>.restored`) and `sources` (YAML files by
    /// name).
    fn host(&self, name: &str, repo: &Path, sources: &[(&str, String)]) -> Env {
        let env = Env::new();
        env.write(
            "etc/agent.yml",
            &format!(
                "hostname: {name}\nwork_dir: {work}\nrepository:\n  name: main\n  type: restic\n  params:\n    uri: {repo}\n    password: \"{PASSWORD}\"\n{bin}metadb:\n  url: {url}\n",
                work = env.path("work").display(),
                repo = repo.display(),
                bin = restic_binary_param(),
                url = self.server.base,
            ),
        );
        env.write("etc/handlers/files.yml", "name: files\ntype: file\n");
        env.write(
            "etc/handlers/dump.yml",
            "name: dump\ntype: pipe\nparams:\n  backup_command: cat \"$DUMP_DIR/$TABACCO_ATOM.dump\"\n  restore_command: cat > \"$TABACCO_TARGET/$TABACCO_ATOM.restored\"\n",
        );
        for (file, text) in sources {
            env.write(&format!("etc/sources/{file}.yml"), text);
        }
        env
    }
}

/// The file source `www` over `root` (atoms site1, site2) and the pipe
/// source `mysql` (dataset `one`, atom `main`).
fn www_and_mysql(root: &Path) -> Vec<(&'static str, String)> {
    vec![
        (
            "www",
            format!(
                "name: www\nhandler: files\nparams: {{path: {}}}\ndatasets:\n  - name: sites\n    atoms: [{{name: site1}}, {{name: site2}}]\n",
                root.display()
            ),
        ),
        (
            "mysql",
            "name: mysql\nhandler: dump\ndatasets:\n  - name: one\n    atoms: [{name: main}]\n"
                .to_string(),
        ),
    ]
}

/// Run `tabacco backup SOURCE` on `env` with `DUMP_DIR` set to its dir.
fn backup(env: &Env, source: &str) {
    let out = env
        .cmd(&["backup", source])
        .env("DUMP_DIR", env.dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "backup {source}: {}", text(&out));
}

/// `restore --target TARGET ARGS...` on `env`: its output.
fn restore(env: &Env, target: &Path, args: &[&str]) -> std::process::Output {
    let mut all = vec!["restore", "--target", target.to_str().unwrap()];
    all.extend_from_slice(args);
    env.cmd(&all)
        .env("DUMP_DIR", env.dir.path())
        .output()
        .unwrap()
}

/// `target` joined with the absolute `path` below it.
fn below(target: &Path, path: &Path) -> PathBuf {
    target.join(path.strip_prefix("/").unwrap())
}

#[test]
fn any_host_restores_any_hosts_atoms_from_the_record() {
    let fleet = Fleet::new();
    let (a_root_dir, b_root_dir) = (
        fleet.dir.path().join("a-root"),
        fleet.dir.path().join("b-root"),
    );
    let a = fleet.host("a", &fleet.repo(), &www_and_mysql(&a_root_dir));
    let b = fleet.host("b", &fleet.repo(), &www_and_mysql(&b_root_dir));
    let c = fleet.host("c", &fleet.repo(), &[]);
    let site1 = noise(300_000, 7);
    std::fs::create_dir_all(a_root_dir.join("site1/sub")).unwrap();
    std::fs::write(a_root_dir.join("site1/sub/data.bin"), &site1).unwrap();
    std::fs::create_dir_all(a_root_dir.join("site2")).unwrap();
    std::fs::write(a_root_dir.join("site2/index.html"), "site2 of a, v1\n").unwrap();
    std::fs::create_dir_all(b_root_dir.join("site1")).unwrap();
    std::fs::create_dir_all(b_root_dir.join("site2")).unwrap();
    std::fs::write(b_root_dir.join("site2/index.html"), "site2 of b\n").unwrap();
    let dump = noise(250_000, 9);
    std::fs::write(a.path("main.dump"), &dump).unwrap();
    backup(&a, "www");
    backup(&a, "mysql");
    let first = a.query(&["--host", "a", "www/sites/site2"]);
    let first_id = first[0]["id"].as_str().unwrap().to_string();
    // A second version of a's site2, and b's own backup of www.
    std::fs::write(a_root_dir.join("site2/index.html"), "site2 of a, v2\n").unwrap();
    backup(&a, "www");
    backup(&b, "www");

    // B restores A's atom at the path A backed up: A's root, not B's.
    let t = fleet.dir.path().join("t-b");
    let out = restore(&b, &t, &["--host", "a", "www/sites/site2"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        read(&below(&t, &a_root_dir).join("site2/index.html")),
        b"site2 of a, v2\n"
    );
    assert!(
        !below(&t, &a_root_dir).join("site1").exists(),
        "only the atom asked for"
    );
    assert!(!below(&t, &b_root_dir).exists(), "nothing at B's paths");

    // --backup-id restores exactly that version (on a host without the
    // source, and without --host: the backup names its host).
    let t = fleet.dir.path().join("t-id");
    let out = restore(&c, &t, &["--backup-id", &first_id, "www/sites/site2"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        read(&below(&t, &a_root_dir).join("site2/index.html")),
        b"site2 of a, v1\n"
    );
    let q = c.query(&["--backup-id", &first_id, "*"]);
    assert!(
        q.as_array()
            .unwrap()
            .iter()
            .all(|b| b["id"] == first_id.as_str()),
        "{q:#}"
    );

    // C, which has no sources at all, restores A's file atom and A's pipe
    // atom (as a raw file), byte-identical.
    let t = fleet.dir.path().join("t-c");
    let out = restore(&c, &t, &["--host", "a", "www/sites/site1"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        read(&below(&t, &a_root_dir).join("site1/sub/data.bin")) == site1,
        "site1 differs"
    );
    let out = restore(&c, &t, &["-v", "--host", "a", "mysql/one/main"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(read(&t.join("mysql/one/main")) == dump, "raw dump differs");
    // Not a terminal: progress as log lines (shown with -v), counted on
    // the dump pipe against the recorded size.
    assert!(
        text(&out).contains("progress: ") && text(&out).contains("/244.14 KiB"),
        "{}",
        text(&out)
    );

    // B configures mysql: its restore_command by default, the raw stream
    // with --raw.
    let t = fleet.dir.path().join("t-b-pipe");
    let out = restore(&b, &t, &["--host", "a", "mysql/one/main"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        read(&t.join("main.restored")) == dump,
        "restore_command output differs"
    );
    assert!(!t.join("mysql").exists());
    let t = fleet.dir.path().join("t-b-raw");
    let out = restore(&b, &t, &["--raw", "--host", "a", "mysql/one/main"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(read(&t.join("mysql/one/main")) == dump, "raw dump differs");
    assert!(!t.join("main.restored").exists());

    // Without --host, B considers its own backups only: it has none of
    // mysql, A does.
    let t = fleet.dir.path().join("t-none");
    let out = restore(&b, &t, &["mysql/one/main"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let msg = text(&out);
    assert!(
        msg.contains("host b has no backup")
            && msg.contains("a (newest ")
            && msg.contains("--host a"),
        "{msg}"
    );
    assert!(!t.exists());
    // Its own www it restores without --host, from its own root.
    let out = restore(&b, &t, &["www/sites/site2"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        read(&below(&t, &b_root_dir).join("site2/index.html")),
        b"site2 of b\n"
    );

    // A dry run prints the plan and the command, restores nothing.
    let t = fleet.dir.path().join("t-dry");
    let out = restore(&c, &t, &["--dry-run", "--host", "a", "*"]);
    let plan = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{}", text(&out));
    for want in [
        "www/sites/site1",
        "www/sites/site2",
        "mysql/one/main",
        &below(&t, &a_root_dir).join("site1").display().to_string(),
        &t.join("mysql/one/main").display().to_string(),
        "292.97 KiB (1 file)",
        "244.14 KiB",
        "raw stream to a file",
        "to run it: tabacco --config ",
    ] {
        assert!(plan.contains(want), "plan lacks {want:?}:\n{plan}");
    }
    assert!(!t.exists(), "a dry run restores nothing");
    // One backup: the command pins it, and runs as printed.
    let out = restore(&c, &t, &["--dry-run", "--host", "a", "www/sites/site2"]);
    let plan = String::from_utf8_lossy(&out.stdout).into_owned();
    let cmd = plan
        .lines()
        .find_map(|l| l.strip_prefix("to run it: tabacco "))
        .unwrap_or_else(|| panic!("no command in {plan}"));
    assert!(cmd.contains("--backup-id "), "{cmd}");
    let words: Vec<&str> = cmd.split(' ').collect();
    let out = crate::common::run({
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_tabacco"));
        c.args(&words);
        c
    });
    assert!(out.status.success(), "{cmd}: {}", text(&out));
    assert_eq!(
        read(&below(&t, &a_root_dir).join("site2/index.html")),
        b"site2 of a, v2\n"
    );
}

#[test]
fn a_snapshot_in_another_repository_is_refused_naming_both() {
    let fleet = Fleet::new();
    let root = fleet.dir.path().join("root");
    let a = fleet.host("a", &fleet.repo(), &www_and_mysql(&root));
    let other_repo = fleet.dir.path().join("other-repo");
    let d = fleet.host("d", &other_repo, &www_and_mysql(&root));
    std::fs::create_dir_all(root.join("site1")).unwrap();
    std::fs::write(root.join("site1/x"), "x").unwrap();
    std::fs::create_dir_all(root.join("site2")).unwrap();
    std::fs::write(d.path("main.dump"), "d's dump").unwrap();
    backup(&a, "www");
    backup(&d, "mysql"); // creates d's repository
    let (a_id, d_id) = (repository_id(&fleet.repo()), repository_id(&other_repo));
    assert_ne!(a_id, d_id);
    let t = fleet.dir.path().join("t");
    let out = restore(&d, &t, &["--host", "a", "www/sites/site1"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let msg = text(&out);
    assert!(
        msg.contains(&a_id)
            && msg.contains(&d_id)
            && msg.contains(&other_repo.display().to_string()),
        "{msg}"
    );
    assert!(!below(&t, &root).exists());
}

#[test]
fn records_without_the_new_fields_still_restore_on_their_host() {
    let env = Env::new();
    let root = env.path("data");
    for (file, text) in www_and_mysql(&root) {
        env.write(&format!("etc/sources/{file}.yml"), &text);
    }
    env.write("etc/handlers/files.yml", "name: files\ntype: file\n");
    env.write(
        "etc/handlers/dump.yml",
        "name: dump\ntype: pipe\nparams:\n  backup_command: cat \"$DUMP_DIR/$TABACCO_ATOM.dump\"\n  restore_command: cat > \"$TABACCO_TARGET/$TABACCO_ATOM.restored\"\n",
    );
    env.write("data/site1/a.txt", "site1\n");
    env.write("data/site2/b.txt", "site2\n");
    std::fs::write(env.path("main.dump"), "the dump").unwrap();
    backup(&env, "www");
    backup(&env, "mysql");
    // As written before issue 11: none of the new columns.
    for statement in [
        "UPDATE datasets SET handler = NULL, repository_id = NULL",
        "UPDATE atoms SET snapshot_path = NULL, size = NULL, files = NULL, sha256 = NULL",
    ] {
        env.sql(statement);
    }
    let q = env.query(&["*"]);
    assert!(q[0]["datasets"][0].get("handler").is_none(), "{q:#}");
    let t = env.path("t");
    let out = restore(&env, &t, &["www/sites/site1"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(read(&below(&t, &root).join("site1/a.txt")), b"site1\n");
    let out = restore(&env, &t, &["mysql/one/main"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(read(&t.join("main.restored")), b"the dump");
    // The table shows the dataset's size for them, marked.
    let table = env.ok(&["query", "www/sites/site1"]);
    assert!(table.contains("(dataset)"), "{table}");
}
