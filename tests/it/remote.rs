//! The metadata client from the command line: `tabacco backup`, `query` and
//! `restore` with a `metadb` section, against an HTTP stand-in for the
//! server (scripted statuses, records kept in memory) or no server at all.

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::common::{Env, text};

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

    server.shared.status.store(400, Ordering::SeqCst);
    let out = env.run(&["query", "home/["]);
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
