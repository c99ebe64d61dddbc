//! The metadata client from the command line: `tabacco backup`, `query` and
//! `restore` with a `metadb` section, against an HTTP stand-in for the
//! server (scripted statuses, records kept in memory) or no server at all;
//! then end to end against the real `tabacco metadb` (`e2e_*`): outages,
//! an agent killed with records pending, and a restore on another host
//! identity over mutual TLS.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::agent_proc::Agent;
use crate::common::{Env, text};
use crate::metadb_server::MetadbServer;

/// What the stand-in received and how it answers.
#[derive(Clone)]
struct Shared {
    /// Bodies of acknowledged `add_dataset` requests, in arrival order.
    added: Arc<Mutex<Vec<Value>>>,
    /// Bodies of `find_atoms` requests.
    finds: Arc<Mutex<Vec<Value>>>,
    /// Status for `add_dataset` and `find_atoms` (200: serve).
    status: Arc<AtomicU16>,
    /// What `find_atoms` returns.
    find_reply: Arc<Mutex<Value>>,
}

/// An HTTP stand-in for `tabacco metadb` on 127.0.0.1.
struct StandIn {
    _rt: tokio::runtime::Runtime,
    url: String,
    shared: Shared,
}

async fn add_dataset(
    State(s): State<Shared>,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let status = s.status.load(Ordering::SeqCst);
    if status != 200 {
        return (
            StatusCode::from_u16(status).unwrap(),
            Json(json!({"error": format!("stand-in refuses with {status}")})),
        );
    }
    s.added.lock().unwrap().push(body);
    (StatusCode::OK, Json(json!({})))
}

async fn find_atoms(State(s): State<Shared>, Json(body): Json<Value>) -> (StatusCode, Json<Value>) {
    s.finds.lock().unwrap().push(body);
    let status = s.status.load(Ordering::SeqCst);
    if status != 200 {
        return (
            StatusCode::from_u16(status).unwrap(),
            Json(json!({"error": "stand-in: bad pattern"})),
        );
    }
    (StatusCode::OK, Json(s.find_reply.lock().unwrap().clone()))
}

impl StandIn {
    /// Serve on `port` (0: any free port).
    fn start_on(port: u16) -> StandIn {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let shared = Shared {
            added: Arc::default(),
            finds: Arc::default(),
            status: Arc::new(AtomicU16::new(200)),
            find_reply: Arc::new(Mutex::new(json!([]))),
        };
        let app = Router::new()
            .route("/api/add_dataset", post(add_dataset))
            .route("/api/find_atoms", post(find_atoms))
            .route("/healthz", get(|| async { "ok" }))
            .with_state(shared.clone());
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))
            .expect("bind the stand-in server");
        let addr = listener.local_addr().unwrap();
        rt.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        StandIn {
            _rt: rt,
            url: format!("http://{addr}"),
            shared,
        }
    }

    fn added(&self) -> Vec<Value> {
        self.shared.added.lock().unwrap().clone()
    }
}

/// A port nothing listens on (right now).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `file` source `home` with one dataset of two atoms, reporting to `url`.
fn setup(env: &Env, url: &str) {
    env.write_main(&format!("metadb:\n  url: {url}\n"));
    env.write("etc/handlers/files.yml", "name: files\ntype: file\n");
    env.write(
        "etc/sources/home.yml",
        &format!(
            "name: home\nhandler: files\nparams:\n  path: {root}\ndatasets:\n  - name: users\n    atoms:\n      - name: alice\n      - name: bob\n",
            root = env.path("data").display()
        ),
    );
    env.write("data/alice/notes.txt", "alice\n");
    env.write("data/bob/todo.txt", "bob\n");
}

fn outbox_files(env: &Env, sub: &str) -> Vec<PathBuf> {
    let dir = env.path("work/outbox").join(sub);
    let mut v: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "json"))
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

#[test]
fn backup_with_the_server_down_succeeds_and_the_next_backup_delivers() {
    let env = Env::new();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    setup(&env, &url);

    let out = env.ok(&["backup", "home"]);
    assert!(
        out.contains(&format!(
            "1 record(s) pending delivery to {url}; they will be retried by the agent or the next `tabacco backup`"
        )),
        "{out}"
    );
    let queued = outbox_files(&env, "");
    assert_eq!(queued.len(), 1, "{queued:?}");
    let record: Value = serde_json::from_slice(&std::fs::read(&queued[0]).unwrap()).unwrap();
    let snapshots = env.snapshots();
    assert_eq!(snapshots.len(), 1);
    assert_eq!(record["dataset"]["snapshot_id"], snapshots[0]["id"]);
    assert_eq!(record["backup"]["host"], "testhost");
    let first_backup = record["backup"]["id"].clone();

    // The server comes up; the next backup delivers both, oldest first.
    let server = StandIn::start_on(port);
    let out = env.ok(&["backup", "home"]);
    assert!(
        out.contains(&format!("metadata: 2 record(s) delivered to {url}")),
        "{out}"
    );
    assert!(!out.contains("pending delivery"), "{out}");
    let added = server.added();
    assert_eq!(added.len(), 2, "{added:?}");
    assert_eq!(added[0]["backup"]["id"], first_backup);
    assert_ne!(added[1]["backup"]["id"], first_backup);
    assert_eq!(added[0]["dataset"]["atoms"][0]["name"], "alice");
    assert!(outbox_files(&env, "").is_empty());
}

#[test]
fn a_refused_record_is_kept_aside_with_the_reason_and_backup_exits_1() {
    let env = Env::new();
    let server = StandIn::start_on(0);
    server.shared.status.store(403, Ordering::SeqCst);
    setup(&env, &server.url);

    let out = env.run(&["backup", "home"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("1 record(s) refused by"), "{all}");
    assert!(outbox_files(&env, "").is_empty());
    let kept = outbox_files(&env, "rejected");
    assert_eq!(kept.len(), 1);
    let reason = std::fs::read_to_string(kept[0].with_extension("reason")).unwrap();
    assert!(
        reason.contains("HTTP 403") && reason.contains("stand-in refuses with 403"),
        "{reason}"
    );
    // The snapshot exists; the record is kept for a later retry.
    assert_eq!(env.snapshots().len(), 1);
    let record: Value = serde_json::from_slice(&std::fs::read(&kept[0]).unwrap()).unwrap();
    assert_eq!(record["dataset"]["source"], "home");
}

#[test]
fn query_asks_the_server_and_reports_its_errors() {
    let env = Env::new();
    let server = StandIn::start_on(0);
    setup(&env, &server.url);
    let reply = json!([{
        "id": "b1",
        "timestamp": "2026-01-02T03:04:05Z",
        "host": "other-host",
        "datasets": [{
            "id": "d1", "name": "users", "source": "home",
            "atoms": [{"name": "alice"}],
            "snapshot_id": "ab".repeat(32),
            "total_files": 1, "total_bytes": 2, "bytes_added": 3, "duration": 4
        }]
    }]);
    *server.shared.find_reply.lock().unwrap() = reply.clone();
    let got = env.query(&["--host", "other-host", "home/*"]);
    assert_eq!(got, reply);
    let finds = server.shared.finds.lock().unwrap().clone();
    assert_eq!(finds[0]["pattern"], "home/*");
    assert_eq!(finds[0]["host"], "other-host");
    assert!(!env.path("work/outbox").exists(), "reading needs no outbox");

    // A malformed pattern is refused here, before the server is asked.
    let out = env.run(&["query", "home/["]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("home/["), "{}", text(&out));
    assert_eq!(server.shared.finds.lock().unwrap().len(), 1);

    server.shared.status.store(400, Ordering::SeqCst);
    let out = env.run(&["query", "home/x"]);
    let all = text(&out);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a bad request is a usage error: {all}"
    );
    assert!(
        all.contains(&format!("{}/api/find_atoms", server.url))
            && all.contains("HTTP 400")
            && all.contains("stand-in: bad pattern"),
        "{all}"
    );
}

#[test]
fn unusable_metadb_settings_exit_2_naming_the_key() {
    let env = Env::new();
    env.write_main(&format!(
        "metadb:\n  url: https://127.0.0.1:1\n  tls:\n    cert: {d}/missing.pem\n    key: {d}/missing.key\n",
        d = env.path("etc").display()
    ));
    let out = env.run(&["query", "x"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(
        all.contains("metadb.tls.cert") && all.contains("missing.pem"),
        "{all}"
    );
}

// ---------------------------------------------------------------------------
// End to end: the real `tabacco metadb` server, `tabacco backup`, `tabacco
// agent` and `tabacco restore`.

/// Start `tabacco metadb` with `metadb.yml` = `yaml` plus a SQLite
/// database in `dir`, and `args`.
fn start_metadb(dir: &Path, yaml: &str, args: &[&str]) -> MetadbServer {
    let config = dir.join("metadb.yml");
    std::fs::write(
        &config,
        format!(
            "database: sqlite://{}\n{yaml}",
            dir.join("metadb.sqlite").display()
        ),
    )
    .unwrap();
    MetadbServer::start(dir, &config, args)
}

/// (backup id, atom path) of every atom version in a `query --json` result.
fn versions(v: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for b in v.as_array().expect("a list of backups") {
        for d in b["datasets"].as_array().unwrap() {
            for a in d["atoms"].as_array().unwrap() {
                out.push((
                    b["id"].as_str().unwrap().to_string(),
                    format!(
                        "{}/{}/{}",
                        d["source"].as_str().unwrap(),
                        d["name"].as_str().unwrap(),
                        a["name"].as_str().unwrap()
                    ),
                ));
            }
        }
    }
    out.sort();
    out
}

/// Backup ids of the records queued in the outbox.
fn queued_backups(env: &Env) -> Vec<String> {
    outbox_files(env, "")
        .iter()
        .filter_map(|p| {
            let v: Value = serde_json::from_slice(&std::fs::read(p).ok()?).ok()?;
            Some(v["backup"]["id"].as_str()?.to_string())
        })
        .collect()
}

#[test]
fn e2e_server_down_during_backups_then_delivered_once_each() {
    let env = Env::new();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    setup(&env, &url);

    // Two backups while the server is down: both succeed, both queue.
    for n in 1..=2 {
        let out = env.ok(&["backup", "home"]);
        assert!(
            out.contains(&format!("{n} record(s) pending delivery to {url}")),
            "{out}"
        );
    }
    let queued = outbox_files(&env, "");
    assert_eq!(queued.len(), 2);
    // An acknowledgement lost in a crash: the first record is sent again.
    let copy = env.path("work/outbox/00000000T000000.000000000Z-resent.json");
    std::fs::copy(&queued[0], &copy).unwrap();

    let srv = tempfile::tempdir().unwrap();
    let server = start_metadb(srv.path(), "", &["--listen", &format!("127.0.0.1:{port}")]);
    assert_eq!(server.base, url);
    let out = env.ok(&["backup", "home"]);
    assert!(
        out.contains(&format!("metadata: 4 record(s) delivered to {url}")),
        "{out}"
    );
    assert!(!out.contains("pending"), "{out}");
    assert!(outbox_files(&env, "").is_empty());

    // Three backups of two atoms, each exactly once, all from the server.
    let v = env.query(&["home/*"]);
    let got = versions(&v);
    assert_eq!(got.len(), 6, "{got:?}\nserver log:\n{}", server.log());
    let mut unique = got.clone();
    unique.dedup();
    assert_eq!(unique, got, "no duplicates");
    let backups: std::collections::BTreeSet<&str> = got.iter().map(|(b, _)| b.as_str()).collect();
    assert_eq!(backups.len(), 3);
    assert!(
        v.as_array()
            .unwrap()
            .iter()
            .all(|b| b["host"] == "testhost")
    );
    // The snapshots are those in the repository.
    let snaps: std::collections::BTreeSet<String> = env
        .snapshots()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    for b in v.as_array().unwrap() {
        let id = b["datasets"][0]["snapshot_id"].as_str().unwrap();
        assert!(snaps.contains(id), "{id} not in {snaps:?}");
    }
}

#[test]
fn e2e_agent_killed_with_records_pending_delivers_them_after_a_restart() {
    let env = Env::new();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    setup(&env, &url);
    // Back up every second while the server is down.
    env.write(
        "etc/sources/home.yml",
        &format!(
            "name: home\nhandler: files\nschedule: '@every 1s'\nparams:\n  path: {root}\ndatasets:\n  - name: users\n    atoms:\n      - name: alice\n      - name: bob\n",
            root = env.path("data").display()
        ),
    );
    let agent = Agent::start(&env);
    agent.wait_for(120, "two queued records", || {
        outbox_files(&env, "").len() >= 2
    });
    drop(agent); // SIGKILL: no chance to clean up.
    let pending = queued_backups(&env);
    assert!(pending.len() >= 2, "{pending:?}");

    // No more schedule: the restarted agent only delivers.
    setup(&env, &url);
    let srv = tempfile::tempdir().unwrap();
    let server = start_metadb(srv.path(), "", &["--listen", &format!("127.0.0.1:{port}")]);
    let agent = Agent::start(&env);
    agent.wait_for(60, "the outbox to empty", || {
        outbox_files(&env, "").is_empty()
    });
    let v = env.query(&["home/*"]);
    let delivered: std::collections::BTreeSet<String> =
        versions(&v).into_iter().map(|(b, _)| b).collect();
    for id in &pending {
        assert!(
            delivered.contains(id),
            "backup {id} queued before the kill is not on the server; server log:\n{}\nagent log:\n{}",
            server.log(),
            agent.log()
        );
    }
    let got = versions(&v);
    let mut unique = got.clone();
    unique.dedup();
    assert_eq!(unique, got, "no duplicates");
    let metrics = agent.metrics();
    assert!(
        metrics.contains("tabacco_outbox_pending_records 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("tabacco_outbox_delivered_total {}", pending.len())),
        "{metrics}"
    );
    agent.stop();
}

/// A CA, a server certificate for 127.0.0.1 and client certificates for
/// `hosts`, written as PEM files into `dir`.
fn make_pki(dir: &Path, hosts: &[&str]) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "fleet CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    let leaf = |file: &str, names: Vec<String>, cn: &str| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(names).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        let cert = p.signed_by(&key, &*ca).unwrap();
        std::fs::write(dir.join(format!("{file}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{file}.key")), key.serialize_pem()).unwrap();
    };
    leaf(
        "server",
        vec!["127.0.0.1".into(), "localhost".into()],
        "metadb",
    );
    for h in hosts {
        leaf(h, vec![h.to_string()], h);
    }
}

/// `agent.yml` for `host` on the shared repository `repo`, reporting to
/// `url` with the host's client certificate from `pki`.
fn write_host_config(env: &Env, host: &str, repo: &Path, url: &str, pki: &Path, data: &Path) {
    env.write(
        "etc/agent.yml",
        &format!(
            "hostname: {host}\nwork_dir: {work}\nrepository:\n  name: main\n  type: restic\n  params:\n    uri: {repo}\n    password: \"{pw}\"\nmetadb:\n  url: {url}\n  tls:\n    cert: {pki}/{host}.pem\n    key: {pki}/{host}.key\n    ca: {pki}/ca.pem\n",
            work = env.path("work").display(),
            repo = repo.display(),
            pw = crate::common::PASSWORD,
            pki = pki.display(),
        ),
    );
    env.write("etc/handlers/files.yml", "name: files\ntype: file\n");
    env.write(
        "etc/sources/home.yml",
        &format!(
            "name: home\nhandler: files\nparams:\n  path: {root}\ndatasets:\n  - name: users\n    atoms:\n      - name: alice\n      - name: bob\n",
            root = data.display()
        ),
    );
}

#[test]
fn e2e_host_b_restores_what_the_agent_of_host_a_backed_up_over_mutual_tls() {
    let pki = tempfile::tempdir().unwrap();
    make_pki(pki.path(), &["host-a", "host-b"]);
    let srv = tempfile::tempdir().unwrap();
    let server = start_metadb(
        srv.path(),
        &format!(
            "listen: 127.0.0.1:0\ntls:\n  cert: {p}/server.pem\n  key: {p}/server.key\n  client_ca: {p}/ca.pem\n",
            p = pki.path().display()
        ),
        &[],
    );
    assert!(
        server.base.starts_with("https://127.0.0.1:"),
        "{}",
        server.base
    );

    // Host A: the agent backs up on its schedule through the server.
    let a = Env::new();
    let data = a.path("data");
    write_host_config(&a, "host-a", &a.repo(), &server.base, pki.path(), &data);
    a.write("data/alice/notes.txt", "alice's notes\n");
    a.write("data/alice/deep/blob.bin", &"0123456789".repeat(5000));
    a.write("data/bob/todo.txt", "bob\n");
    a.write(
        "etc/sources/home.yml",
        &format!(
            "name: home\nhandler: files\nschedule: '@every 2s'\nparams:\n  path: {root}\ndatasets:\n  - name: users\n    atoms:\n      - name: alice\n      - name: bob\n",
            root = data.display()
        ),
    );
    let agent = Agent::start(&a);
    agent.wait_for(120, "a backup recorded on the server", || {
        let out = a.run(&["query", "--json", "--host", "host-a", "home/users/alice"]);
        out.status.success()
            && serde_json::from_slice::<Value>(&out.stdout)
                .is_ok_and(|v| v.as_array().is_some_and(|l| !l.is_empty()))
    });
    agent.stop();
    let v = a.query(&["home/*"]);
    assert!(v.as_array().unwrap().iter().all(|b| b["host"] == "host-a"));

    // Host B: another identity, same repository; finds A's atom and
    // restores it byte for byte.
    let b = Env::new();
    write_host_config(&b, "host-b", &a.repo(), &server.base, pki.path(), &data);
    let target = b.path("restored");
    let out = b.ok(&[
        "restore",
        "--host",
        "host-a",
        "--target",
        target.to_str().unwrap(),
        "home/users/alice",
    ]);
    assert!(out.contains("host host-a"), "{out}");
    let restored = target.join(data.strip_prefix("/").unwrap());
    assert_eq!(
        crate::common::read(&restored.join("alice/notes.txt")),
        b"alice's notes\n"
    );
    assert_eq!(
        crate::common::read(&restored.join("alice/deep/blob.bin")),
        "0123456789".repeat(5000).as_bytes()
    );
    assert!(!restored.join("bob").exists(), "only the asked atom");

    // B's identity may read A's records but not write them.
    let mut rec: Value = serde_json::from_value(json!({
        "backup": v[0].clone(),
        "dataset": v[0]["datasets"][0].clone(),
    }))
    .unwrap();
    rec["backup"]["datasets"] = json!([]);
    std::fs::create_dir_all(b.path("work/outbox")).unwrap();
    std::fs::write(
        b.path("work/outbox/00000000T000000.000000000Z-forged.json"),
        serde_json::to_vec(&rec).unwrap(),
    )
    .unwrap();
    b.write("data-b/x", "x\n");
    b.write(
        "etc/sources/home.yml",
        &format!(
            "name: home\nhandler: files\nparams:\n  path: {root}\ndatasets:\n  - name: users\n    atoms:\n      - name: x\n",
            root = b.path("data-b").display()
        ),
    );
    let out = b.run(&["backup", "home"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    let reason = std::fs::read_to_string(
        b.path("work/outbox/rejected/00000000T000000.000000000Z-forged.reason"),
    )
    .unwrap();
    assert!(reason.contains("HTTP 403"), "{reason}");
    // B's own record went through.
    let mine = b.query(&["--host", "host-b", "home/*"]);
    assert_eq!(versions(&mine).len(), 1);
}

#[test]
fn e2e_bearer_token_is_accepted_and_a_wrong_one_keeps_records_queued() {
    use sha2::Digest;
    let srv = tempfile::tempdir().unwrap();
    let hash = hex::encode(sha2::Sha256::digest(b"token-of-testhost"));
    let server = start_metadb(
        srv.path(),
        &format!("listen: 127.0.0.1:0\ntokens:\n  testhost: {hash}\n"),
        &[],
    );
    let env = Env::new();
    setup(&env, &server.base);
    env.write("etc/token", "wrong-token\n");
    env.write_main(&format!(
        "metadb:\n  url: {}\n  token_file: {}\n",
        server.base,
        env.path("etc/token").display()
    ));

    // Bad credentials are this host's setup problem, not the record's: it
    // stays queued (not rejected) and the backup still succeeds.
    let out = env.ok(&["backup", "home"]);
    assert!(out.contains("1 record(s) pending delivery"), "{out}");
    assert!(
        out.contains("HTTP 401") && out.contains("metadb.token_file"),
        "{out}"
    );
    assert!(outbox_files(&env, "rejected").is_empty());
    let out = env.run(&["query", "home/*"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));

    // With the right token, the next backup delivers both.
    env.write("etc/token", "token-of-testhost\n");
    let out = env.ok(&["backup", "home"]);
    assert!(out.contains("metadata: 2 record(s) delivered"), "{out}");
    assert_eq!(versions(&env.query(&["home/*"])).len(), 4);
}
