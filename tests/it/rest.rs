//! A real remote repository (issue 9): restic's REST protocol served on
//! loopback by `rclone serve restic` (Debian's `rclone`, installed by
//! `scripts/deps`). Backup, query and restore of file and pipe sources;
//! snapshot ids resolved through `restic snapshots`, as for every
//! non-local repository.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{Env, atom_versions, file_source, read, restic_ok, text};

/// `rclone serve restic` on 127.0.0.1 (a free port) over a temp dir;
/// killed when dropped.
struct RestServer {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl RestServer {
    fn start() -> RestServer {
        let dir = tempfile::tempdir().unwrap();
        // A free port: bind, read it, release it for rclone.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let mut child = Command::new("rclone")
            .args(["serve", "restic", "--addr", &addr, "--config", "/dev/null"])
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run rclone ({e}): the REST repository tests need Debian's rclone; run scripts/deps")
            });
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("rclone: {line}");
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(&addr).is_err() {
            if let Ok(Some(st)) = child.try_wait() {
                panic!("rclone serve restic exited with {st}");
            }
            assert!(
                Instant::now() < deadline,
                "rclone does not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        RestServer {
            child,
            url: format!("rest:http://{addr}/"),
            _dir: dir,
        }
    }
}

impl Drop for RestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A test environment whose repository is `server`'s, with the file
/// source `home`.
fn rest_env(server: &RestServer) -> Env {
    let env = Env::new();
    let main = std::fs::read_to_string(env.config()).unwrap();
    let main = main.replace(
        &format!("uri: {}", env.repo().display()),
        &format!("uri: \"{}\"", server.url),
    );
    assert!(main.contains("rest:http"), "{main}");
    env.write("etc/agent.yml", &main);
    file_source(&env);
    env
}

#[test]
fn backup_query_restore_against_a_rest_repository() {
    let server = RestServer::start();
    let env = rest_env(&server);
    env.write("data/alice/a.txt", "alice over REST\n");
    let dump_src = env.path("dump.bin");
    std::fs::write(
        &dump_src,
        (0..200_000u32)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    let out_file = env.path("restored.bin");
    env.write(
        "etc/handlers/dump.yml",
        &format!(
            "name: dump\ntype: pipe\nparams:\n  backup_command: cat {}\n  restore_command: cat > {}\n",
            dump_src.display(),
            out_file.display()
        ),
    );
    env.write(
        "etc/sources/db.yml",
        "name: db\nhandler: dump\ndatasets:\n  - name: site\n    atoms: [{name: main}]\n",
    );

    // The fleet procedure: create it once, explicitly.
    let out = env.ok(&["repo", "init"]);
    assert!(
        out.contains("created repository rest:http://127.0.0.1:"),
        "{out}"
    );
    env.ok(&["backup", "home", "db"]);

    let all = atom_versions(&env.query(&["*"]));
    let mut names: Vec<&str> = all.iter().map(|(p, _)| p.as_str()).collect();
    names.sort();
    assert_eq!(names, vec!["db/site/main", "home/users/alice"]);
    // Full snapshot ids, resolved through the remote repository.
    let q = env.query(&["*"]);
    for b in q.as_array().unwrap() {
        for ds in b["datasets"].as_array().unwrap() {
            let id = ds["snapshot_id"].as_str().unwrap();
            assert!(
                id.len() == 64 && id.bytes().all(|c| c.is_ascii_hexdigit()),
                "{id}"
            );
        }
    }

    let target = env.path("restore");
    let out = env.run(&[
        "restore",
        "--target",
        target.to_str().unwrap(),
        "home/users/alice",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let restored = target.join(env.path("data").strip_prefix("/").unwrap());
    assert_eq!(read(&restored.join("alice/a.txt")), b"alice over REST\n");

    let out = env.run(&[
        "restore",
        "--target",
        target.to_str().unwrap(),
        "db/site/main",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(read(&out_file) == read(&dump_src), "the stream came back");

    restic_ok(&server.url, &["check", "--no-cache"]);
}

#[test]
fn first_backup_creates_a_rest_repository_and_checks_it() {
    let server = RestServer::start();
    let env = rest_env(&server);
    // No `repo init`: the backup creates it (one host), then it opens.
    env.ok(&["backup", "home"]);
    let out = env.ok(&["repo", "init"]);
    assert!(out.contains("exists already"), "{out}");
    assert_eq!(atom_versions(&env.query(&["*"])).len(), 1);
}
