//! Test environment: a temp dir with a config tree, a restic repository
//! path, a work dir, and helpers to run the binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const PASSWORD: &str = "correct horse battery staple";

/// The restic the tests use: `TABACCO_TEST_RESTIC` (a path, e.g. from
/// `scripts/install-restic 0.18`) or `restic` from `PATH`. The tabacco
/// configurations the tests write name it as `restic_binary`.
pub fn restic() -> String {
    std::env::var("TABACCO_TEST_RESTIC")
        .ok()
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "restic".to_string())
}

/// The `restic_binary` line for a repository's `params` (4 spaces in), or
/// nothing when the tests use `restic` from `PATH`.
pub fn restic_binary_param() -> String {
    match std::env::var("TABACCO_TEST_RESTIC") {
        Ok(r) if !r.is_empty() => format!("    restic_binary: {r}\n"),
        _ => String::new(),
    }
}

/// A restic command on `repo` (a path or URL) with the test password.
pub fn restic_on(repo: &str) -> Command {
    let mut c = Command::new(restic());
    c.env("RESTIC_REPOSITORY", repo)
        .env("RESTIC_PASSWORD", PASSWORD)
        .env_remove("RESTIC_PASSWORD_FILE")
        .env_remove("RESTIC_REPOSITORY_FILE");
    c
}

/// Run restic on `repo` with `args`, insisting on success; its stdout.
pub fn restic_ok(repo: &str, args: &[&str]) -> Vec<u8> {
    let out = restic_on(repo).args(args).output().expect("restic runs");
    assert!(
        out.status.success(),
        "restic {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The locks in a local repository: the files of `locks/` named by a
/// 64-hex id, which are what restic reads as locks. (A restic interrupted
/// while writing its lock file can leave `ID-tmp-N` there, which restic
/// ignores.)
pub fn locks(repo: &Path) -> Vec<String> {
    match std::fs::read_dir(repo.join("locks")) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Wait up to `secs` for `cond`; panics saying `what` if it never holds.
pub fn wait_until(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {secs}s waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// One test's world.
pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    /// A new environment with `agent.yml` pointing at a local repository.
    pub fn new() -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let env = Env { dir };
        std::fs::create_dir_all(env.path("etc/handlers")).unwrap();
        std::fs::create_dir_all(env.path("etc/sources")).unwrap();
        std::fs::create_dir_all(env.path("data")).unwrap();
        env.write_main("");
        env
    }

    /// Absolute path inside the environment.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn repo(&self) -> PathBuf {
        self.path("repo")
    }

    pub fn config(&self) -> PathBuf {
        self.path("etc/agent.yml")
    }

    /// (Re)write agent.yml; `extra` is appended (YAML lines).
    pub fn write_main(&self, extra: &str) {
        let text = format!(
            "hostname: testhost\nwork_dir: {work}\nrepository:\n  name: main\n  type: restic\n  params:\n    uri: {repo}\n    password: \"{PASSWORD}\"\n{bin}{extra}",
            work = self.path("work").display(),
            repo = self.repo().display(),
            bin = restic_binary_param(),
        );
        self.write("etc/agent.yml", &text);
    }

    /// Write a file (creating parents).
    pub fn write(&self, rel: &str, text: &str) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    /// Write an executable script (a restic wrapper, a dump command) at
    /// `rel`; its absolute path.
    pub fn write_executable(&self, rel: &str, text: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        self.write(rel, text);
        let p = self.path(rel);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    /// A command running the binary with `--config` set.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tabacco"));
        c.arg("--config").arg(self.config()).args(args);
        c.env_remove("RUST_LOG");
        c
    }

    /// Run the binary and return its output.
    pub fn run(&self, args: &[&str]) -> Output {
        run(self.cmd(args))
    }

    /// Run and insist on success.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "tabacco {args:?} failed: {}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `tabacco query --json PATTERN` parsed (exit 0 with matches, exit 1
    /// and `[]` without).
    pub fn query(&self, extra: &[&str]) -> serde_json::Value {
        let mut args = vec!["query", "--json"];
        args.extend_from_slice(extra);
        let out = self.run(&args);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("query --json prints JSON ({e}): {}", text(&out)));
        let empty = v.as_array().is_some_and(|a| a.is_empty());
        assert_eq!(
            out.status.code(),
            Some(if empty { 1 } else { 0 }),
            "query {args:?}: {}",
            text(&out)
        );
        v
    }

    /// Run one SQL statement on the embedded index (tests that forge or
    /// age records); it must change at least one row.
    pub fn sql(&self, statement: &str) {
        let db = self.path("work/metadata.db");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            use sqlx::Connection;
            let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
                .await
                .unwrap();
            let done = sqlx::query(sqlx::AssertSqlSafe(statement.to_string()))
                .execute(&mut c)
                .await
                .unwrap();
            assert!(done.rows_affected() > 0, "{statement}");
            c.close().await.unwrap();
        });
    }

    /// Snapshots in the repository, straight from restic.
    pub fn snapshots(&self) -> Vec<serde_json::Value> {
        let out = restic_on(&self.repo().display().to_string())
            .args(["snapshots", "--json", "--no-lock"])
            .output()
            .expect("restic runs");
        assert!(
            out.status.success(),
            "restic snapshots: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("restic JSON")
    }
}

/// A file source `home` (handler `files`, dataset `users`, atom `alice`)
/// over `data/`, with `data/alice/a.txt`.
pub fn file_source(env: &Env) {
    env.write("etc/handlers/files.yml", "name: files\ntype: file\n");
    env.write(
        "etc/sources/home.yml",
        &format!(
            "name: home\nhandler: files\nparams: {{path: {}}}\ndatasets:\n  - name: users\n    atoms: [{{name: alice}}]\n",
            env.path("data").display()
        ),
    );
    env.write("data/alice/a.txt", "a\n");
}

/// Run a command, capturing output.
pub fn run(mut c: Command) -> Output {
    c.output().expect("binary runs")
}

/// Combined stdout + stderr, for assertions on messages.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// All atom global paths in a `query --json` result, with their backup id.
pub fn atom_versions(v: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for b in v.as_array().expect("array") {
        for ds in b["datasets"].as_array().expect("datasets") {
            for a in ds["atoms"].as_array().expect("atoms") {
                out.push((
                    format!(
                        "{}/{}/{}",
                        ds["source"].as_str().unwrap(),
                        ds["name"].as_str().unwrap(),
                        a["name"].as_str().unwrap()
                    ),
                    b["id"].as_str().unwrap().to_string(),
                ));
            }
        }
    }
    out
}

/// Whole file as bytes.
pub fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}
