//! API tests against a real server bound to `127.0.0.1:0` in-process,
//! generated for the SQLite and the PostgreSQL backend ([`api_tests!`]),
//! plus TLS, client certificates (generated here with rcgen) and tokens.

use std::net::SocketAddr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use super::config::{self, MetadbConfig, Overrides, RawConfig, TlsFiles};
use super::{AppState, routes, serve};
use crate::metadata::ServerStore;
use crate::metadata::postgres::test_support::TestSchema;
use crate::metadata::sqlite::SqliteStore;
use crate::model::{Atom, Backup, Dataset, JobStatus, RunningJobStatus};

/// Keeps a backend's storage alive for a test.
#[allow(dead_code)]
enum Backing {
    /// SQLite file's directory.
    Dir(tempfile::TempDir),
    /// PostgreSQL schema.
    Schema(Box<TestSchema>),
}

/// A running in-process server.
struct TestServer {
    /// `http(s)://host:port`.
    base: String,
    /// The bound address.
    addr: SocketAddr,
    /// A client without credentials.
    client: reqwest::Client,
    /// The store (for direct checks).
    store: Arc<dyn ServerStore>,
    /// Stops the server.
    stop: Option<oneshot::Sender<()>>,
    /// The serve task.
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    /// Storage.
    _backing: Backing,
}

impl TestServer {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        let resp = self
            .client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let v = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{path}: {status}: not JSON ({e}): {text}"));
        (status, v)
    }

    async fn get(&self, path: &str) -> (StatusCode, String) {
        let resp = self.client.get(self.url(path)).send().await.unwrap();
        let status = resp.status();
        (status, resp.text().await.unwrap())
    }

    /// Stop gracefully and check the server ended cleanly.
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
        self.store.close().await;
    }
}

/// The default configuration for tests (loopback, no auth).
fn test_config() -> MetadbConfig {
    config::resolve(
        RawConfig::default(),
        None,
        Overrides {
            listen: Some("127.0.0.1:0".into()),
            database: Some("sqlite:///unused".into()),
            max_body_bytes: Some(64 * 1024),
            ..Overrides::default()
        },
    )
    .unwrap()
}

/// Open the backend's store.
async fn backend(postgres: bool) -> (Arc<dyn ServerStore>, Backing) {
    if postgres {
        let schema = TestSchema::new().await;
        let store = schema.store().await;
        (Arc::new(store), Backing::Schema(Box::new(schema)))
    } else {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("metadb.sqlite"))
            .await
            .unwrap();
        (Arc::new(store), Backing::Dir(dir))
    }
}

/// Start a server with `config` on a backend; `client` is the default
/// client (without credentials) for its scheme.
async fn start_with(
    postgres: bool,
    config: MetadbConfig,
    client: reqwest::Client,
    host: &str,
) -> TestServer {
    let (store, backing) = backend(postgres).await;
    let state = AppState::new(store.clone(), &config).unwrap();
    start_state(state, store, backing, client, host).await
}

/// Start a server with prepared state.
async fn start_state(
    state: AppState,
    store: Arc<dyn ServerStore>,
    backing: Backing,
    client: reqwest::Client,
    host: &str,
) -> TestServer {
    let state = Arc::new(state);
    let scheme = if state.tls.is_some() { "https" } else { "http" };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, state, async move {
        let _ = stopped.await;
    }));
    TestServer {
        base: format!("{scheme}://{host}:{}", addr.port()),
        addr,
        client,
        store,
        stop: Some(stop),
        task: Some(task),
        _backing: backing,
    }
}

async fn start(postgres: bool) -> TestServer {
    start_with(postgres, test_config(), reqwest::Client::new(), "127.0.0.1").await
}

fn backup_json(id: &str, host: &str, t: &str) -> Value {
    json!({"id": id, "timestamp": t, "host": host, "datasets": []})
}

fn dataset_json(id: &str, source: &str, name: &str, atoms: &[&str]) -> Value {
    let atoms: Vec<Value> = atoms.iter().map(|a| json!({"name": a})).collect();
    json!({
        "id": id, "name": name, "source": source, "atoms": atoms,
        "snapshot_id": format!("{id:0>64}"), "total_files": 3, "total_bytes": 4096,
        "bytes_added": 100, "duration": 2
    })
}

fn add_body(backup: Value, dataset: Value) -> Value {
    json!({"backup": backup, "dataset": dataset})
}

/// `backup_id:source/dataset/atom` for each atom of a find result.
fn flat(v: &Value) -> Vec<String> {
    let backups: Vec<Backup> = serde_json::from_value(v.clone()).unwrap();
    crate::metadata::conformance::flat(&backups)
}

/// h1: b1 (01-01) and b2 (01-02) with mysql/db {site1, site2}; h2: c1 (01-03)
/// with mysql/db {site1} and files/home {x}.
async fn seed(s: &TestServer) {
    for (b, host, t, d, src, name, atoms) in [
        (
            "b1",
            "h1",
            "2026-01-01T00:00:00Z",
            "d1",
            "mysql",
            "db",
            &["site1", "site2"][..],
        ),
        (
            "b2",
            "h1",
            "2026-01-02T00:00:00Z",
            "d2",
            "mysql",
            "db",
            &["site1", "site2"][..],
        ),
        (
            "c1",
            "h2",
            "2026-01-03T00:00:00Z",
            "d3",
            "mysql",
            "db",
            &["site1"][..],
        ),
        (
            "c1",
            "h2",
            "2026-01-03T00:00:00Z",
            "d4",
            "files",
            "home",
            &["x"][..],
        ),
    ] {
        let (status, v) = s
            .post(
                "/api/add_dataset",
                &add_body(backup_json(b, host, t), dataset_json(d, src, name, atoms)),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{v}");
    }
}

macro_rules! api_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite_api {
            $(
                #[tokio::test]
                async fn $name() {
                    let s = super::start(false).await;
                    super::$name(&s).await;
                    s.stop().await;
                }
            )*
        }
        mod postgres_api {
            $(
                #[tokio::test]
                async fn $name() {
                    let s = super::start(true).await;
                    super::$name(&s).await;
                    s.stop().await;
                }
            )*
        }
    };
}

api_tests!(
    add_find_and_idempotent_re_add,
    find_uses_every_request_field,
    malformed_and_oversized_bodies_are_4xx_and_the_server_still_serves,
    hosts_and_job_status,
    page_shows_hosts_jobs_backups_and_search_results,
    metrics_count_requests_datasets_and_host_timestamps,
    healthz_answers,
    path_escapes_are_refused_naming_the_field,
    older_than_in_year_1_filters_and_bad_input_is_not_reflected,
    restore_record_fields_pass_through,
);

/// The restore record (issue 11) goes in and comes back through the API
/// as sent, including an atom without it.
async fn restore_record_fields_pass_through(s: &TestServer) {
    let d = crate::metadata::conformance::recorded_dataset("d1");
    let body = json!({
        "backup": backup_json("b1", "h1", "2026-01-01T00:00:00Z"),
        "dataset": serde_json::to_value(&d).unwrap(),
    });
    let (status, v) = s.post("/api/add_dataset", &body).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let (status, v) = s
        .post("/api/find_atoms", &json!({"pattern": "mysql/db/*"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v[0]["datasets"][0]["handler"], "pipe");
    assert!(v[0]["datasets"][0]["atoms"][1].get("size").is_none(), "{v}");
    let backups: Vec<Backup> = serde_json::from_value(v).unwrap();
    assert_eq!(backups[0].datasets, vec![d]);
}

async fn add_find_and_idempotent_re_add(s: &TestServer) {
    seed(s).await;
    let body = add_body(
        backup_json("b1", "h1", "2026-01-01T00:00:00Z"),
        dataset_json("d1", "mysql", "db", &["site1", "site2"]),
    );
    // Retries are successes and store nothing new.
    for _ in 0..3 {
        let (status, v) = s.post("/api/add_dataset", &body).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(v, json!({}));
    }
    let (status, v) = s.post("/api/find_atoms", &json!({"pattern": "*"})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        flat(&v),
        [
            "c1:files/home/x",
            "c1:mysql/db/site1",
            "b2:mysql/db/site1",
            "b2:mysql/db/site2",
            "b1:mysql/db/site1",
            "b1:mysql/db/site2"
        ]
    );
    // Every field comes back as sent.
    let backups: Vec<Backup> = serde_json::from_value(v).unwrap();
    let b1 = backups.iter().find(|b| b.id == "b1").unwrap();
    assert_eq!(b1.host, "h1");
    assert_eq!(
        b1.timestamp,
        "2026-01-01T00:00:00Z".parse::<DateTime<Utc>>().unwrap()
    );
    let want: Dataset =
        serde_json::from_value(dataset_json("d1", "mysql", "db", &["site1", "site2"])).unwrap();
    assert_eq!(b1.datasets, vec![want]);
    // The same backup id with another host is a conflict.
    let (status, v) = s
        .post(
            "/api/add_dataset",
            &add_body(
                backup_json("b1", "h9", "2026-01-01T00:00:00Z"),
                dataset_json("d9", "s", "n", &["a"]),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("already recorded"),
        "{v}"
    );
}

async fn find_uses_every_request_field(s: &TestServer) {
    seed(s).await;
    let cases = [
        (
            json!({"pattern": "mysql/db/site1"}),
            vec![
                "c1:mysql/db/site1",
                "b2:mysql/db/site1",
                "b1:mysql/db/site1",
            ],
        ),
        (
            json!({"pattern": "mysql/db/site1", "host": "h1"}),
            vec!["b2:mysql/db/site1", "b1:mysql/db/site1"],
        ),
        (
            json!({"pattern": "mysql/*", "host": "", "num_versions": 1}),
            vec!["c1:mysql/db/site1", "b2:mysql/db/site2"],
        ),
        (
            json!({"pattern": "mysql/*", "host": "h1", "num_versions": 1}),
            vec!["b2:mysql/db/site1", "b2:mysql/db/site2"],
        ),
        (
            json!({"pattern": "mysql/db/site?", "older_than": "2026-01-02T00:00:00Z"}),
            vec!["b1:mysql/db/site1", "b1:mysql/db/site2"],
        ),
        (
            json!({"pattern": "mysql/db/site1", "num_versions": 1, "older_than": "2026-01-03T00:00:00+01:00"}),
            vec!["b2:mysql/db/site1"],
        ),
        // Go clients' zero time means "unset".
        (
            json!({"pattern": "files/*", "host": "", "num_versions": 0, "older_than": "0001-01-01T00:00:00Z"}),
            vec!["c1:files/home/x"],
        ),
        (json!({"pattern": "[fx]*"}), vec!["c1:files/home/x"]),
        (json!({"pattern": "nothing/*"}), vec![]),
    ];
    for (req, want) in cases {
        let (status, v) = s.post("/api/find_atoms", &req).await;
        assert_eq!(status, StatusCode::OK, "{req}: {v}");
        assert_eq!(flat(&v), want, "{req}");
    }
    // Only matching datasets and atoms are returned.
    let (_, v) = s
        .post("/api/find_atoms", &json!({"pattern": "files/*"}))
        .await;
    let backups: Vec<Backup> = serde_json::from_value(v).unwrap();
    assert_eq!(backups.len(), 1);
    assert_eq!(backups[0].datasets.len(), 1);
    assert_eq!(
        backups[0].datasets[0].atoms,
        vec![Atom {
            name: "x".into(),
            path: String::new(),
            ..Default::default()
        }]
    );
}

async fn malformed_and_oversized_bodies_are_4xx_and_the_server_still_serves(s: &TestServer) {
    seed(s).await;
    let raw = |path: &str, body: Vec<u8>, content_type: &str| {
        let req = s
            .client
            .post(s.url(path))
            .header("content-type", content_type.to_owned())
            .body(body);
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status();
            let v: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
            (status, v)
        }
    };
    let json_ct = "application/json";
    let big = format!(r#"{{"pattern": "{}"}}"#, "a".repeat(128 * 1024));
    let cases: Vec<(&str, Vec<u8>, &str, StatusCode, &str)> = vec![
        ("/api/find_atoms", b"{not json".to_vec(), json_ct, StatusCode::BAD_REQUEST, "invalid JSON"),
        ("/api/find_atoms", b"".to_vec(), json_ct, StatusCode::BAD_REQUEST, "invalid JSON"),
        ("/api/find_atoms", b"[1,2]".to_vec(), json_ct, StatusCode::BAD_REQUEST, "invalid JSON"),
        ("/api/find_atoms", br#"{"pattern":"*","limit":3}"#.to_vec(), json_ct, StatusCode::BAD_REQUEST, "unknown field"),
        ("/api/find_atoms", br#"{"pattern":"*","num_versions":"two"}"#.to_vec(), json_ct, StatusCode::BAD_REQUEST, "num_versions"),
        ("/api/find_atoms", br#"{"pattern":"mysql/[db"}"#.to_vec(), json_ct, StatusCode::BAD_REQUEST, "not closed"),
        ("/api/find_atoms", br#"{"pattern":""}"#.to_vec(), json_ct, StatusCode::BAD_REQUEST, "empty"),
        ("/api/find_atoms", br#"{"pattern":"*","num_versions":-1}"#.to_vec(), json_ct, StatusCode::BAD_REQUEST, "num_versions"),
        ("/api/find_atoms", br#"{"host":"h1"}"#.to_vec(), json_ct, StatusCode::BAD_REQUEST, "pattern"),
        ("/api/find_atoms", br#"{"pattern":"*"}"#.to_vec(), "text/plain", StatusCode::UNSUPPORTED_MEDIA_TYPE, "application/json"),
        ("/api/find_atoms", big.into_bytes(), json_ct, StatusCode::PAYLOAD_TOO_LARGE, "max_body_bytes"),
        ("/api/add_dataset", br#"{"backup":{"id":"x","timestamp":"2026-01-01T00:00:00Z","host":"h"},"dataset":{"id":"d","source":"s","atoms":[{"name":"a","bytes":1}]}}"#.to_vec(), json_ct, StatusCode::BAD_REQUEST, "dataset.atoms"),
        ("/api/add_dataset", br#"{"backup":{"id":"","timestamp":"2026-01-01T00:00:00Z","host":"h"},"dataset":{"id":"d","source":"s"}}"#.to_vec(), json_ct, StatusCode::BAD_REQUEST, "backup id is empty"),
        ("/api/add_dataset", br#"{"backup":{"id":"x","timestamp":"yesterday","host":"h"},"dataset":{"id":"d","source":"s"}}"#.to_vec(), json_ct, StatusCode::BAD_REQUEST, "timestamp"),
        ("/api/add_dataset", br#"{"backup":{"id":"x","timestamp":"2026-01-01T00:00:00Z","host":"h"}}"#.to_vec(), json_ct, StatusCode::BAD_REQUEST, "dataset"),
        ("/api/update_active_job_status", br#"{"host":"h","active_jobs":[{"host":"other","job_id":"j","backup_id":"b","dataset_id":"d","dataset_source":"s"}]}"#.to_vec(), json_ct, StatusCode::BAD_REQUEST, "names host"),
        ("/api/update_active_job_status", br#"{"host":""}"#.to_vec(), json_ct, StatusCode::BAD_REQUEST, "host name is empty"),
    ];
    for (path, body, ct, want, text) in cases {
        let shown = String::from_utf8_lossy(&body[..body.len().min(80)]).into_owned();
        let (status, v) = raw(path, body, ct).await;
        assert_eq!(status, want, "{path} {shown}: {v}");
        let msg = v["error"].as_str().unwrap_or_else(|| panic!("{v}"));
        assert!(msg.contains(text), "{path} {shown}: {msg:?} lacks {text:?}");
    }
    // Unknown routes and methods are JSON errors too.
    let (status, text) = s.get("/api/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(serde_json::from_str::<Value>(&text).unwrap()["error"].is_string());
    let (status, text) = s.get("/api/find_atoms").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(text.contains("does not accept GET"), "{text}");
    // Still serving, nothing was stored by the refused requests.
    let (status, _) = s.get("/healthz").await;
    assert_eq!(status, StatusCode::OK);
    let (status, v) = s.post("/api/find_atoms", &json!({"pattern": "*"})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(flat(&v).len(), 6);
}

async fn hosts_and_job_status(s: &TestServer) {
    seed(s).await;
    let job = JobStatus {
        host: "h1".into(),
        job_id: "j1".into(),
        backup_id: "b3".into(),
        dataset_id: "d5".into(),
        dataset_source: "mysql".into(),
        status: Some(RunningJobStatus {
            message_type: "status".into(),
            percent_done: 0.25,
            files_done: 1,
            total_files: 4,
            current_files: vec!["/var/lib/mysql/x".into()],
            ..RunningJobStatus::default()
        }),
        dataset_name: None,
        state: None,
    };
    let (status, v) = s
        .post(
            "/api/update_active_job_status",
            &json!({"host": "h1", "active_jobs": [job]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    // A host that reported jobs but has no backup yet.
    let (status, _) = s
        .post("/api/update_active_job_status", &json!({"host": "h3"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, text) = s.get("/api/hosts").await;
    assert_eq!(status, StatusCode::OK);
    let hosts: Vec<routes::HostStatus> = serde_json::from_str(&text).unwrap();
    let names: Vec<&str> = hosts.iter().map(|h| h.host.as_str()).collect();
    assert_eq!(names, ["h1", "h2", "h3"]);
    assert_eq!(
        hosts[0].last_backup,
        Some("2026-01-02T00:00:00Z".parse().unwrap())
    );
    assert_eq!(hosts[0].backups, 2);
    assert_eq!(hosts[0].active_jobs, vec![job]);
    assert!(hosts[0].active_jobs_updated.is_some());
    assert!(hosts[1].active_jobs.is_empty() && hosts[1].active_jobs_updated.is_none());
    assert_eq!(hosts[2].last_backup, None);
    assert_eq!(hosts[2].backups, 0);
    // An empty report clears the host's jobs.
    s.post(
        "/api/update_active_job_status",
        &json!({"host": "h1", "active_jobs": []}),
    )
    .await;
    let (_, text) = s.get("/api/hosts").await;
    let hosts: Vec<routes::HostStatus> = serde_json::from_str(&text).unwrap();
    assert!(hosts[0].active_jobs.is_empty());
}

async fn page_shows_hosts_jobs_backups_and_search_results(s: &TestServer) {
    seed(s).await;
    let now = Utc::now().to_rfc3339();
    let (status, v) = s
        .post(
            "/api/add_dataset",
            &add_body(
                backup_json("<b>fresh<b>", "h3<script>", &now),
                dataset_json("d9", "files", "home", &["<img src=x>", "a&b"]),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    s.post(
        "/api/update_active_job_status",
        &json!({"host": "h1", "active_jobs": [
            {"host": "h1", "job_id": "job-7", "backup_id": "b", "dataset_id": "d", "dataset_source": "mysql", "dataset_name": "users", "status": {"percent_done": 0.4, "total_files": 10, "files_done": 4, "total_bytes": 1000, "bytes_done": 400}},
            {"host": "h1", "job_id": "job-7", "backup_id": "b", "dataset_id": "d2", "dataset_source": "mysql", "dataset_name": "stream", "status": {"seconds_elapsed": 10, "bytes_done": 10240}},
            {"host": "h1", "job_id": "job-7", "backup_id": "b", "dataset_id": "d3", "dataset_source": "mysql", "dataset_name": "later", "state": "pending"}
        ],
        "sources": [
            {"name": "ldap", "schedule": "@daily", "last_run": {"result": "partial", "finished_at": now, "error": "dataset 'cn': slapcat: permission denied", "datasets_recorded": 1, "datasets_failed": 1, "atoms_failed": 2}},
            {"name": "mysql", "schedule": "@daily", "last_run": {"result": "ok", "finished_at": now}, "last_success": now, "running": true,
             "last_forget": {"finished_at": now, "ok": false, "summary": "index removal refused <b>"}}
        ],
        "outbox_pending": 4, "outbox_rejected": 0,
        "prune_schedule": "0 4 * * 0",
        "repository_id": "5e5b5e5b",
        "last_prune": {"finished_at": now, "ok": false, "summary": "repository is already locked exclusively"}}),
    )
    .await;
    let resp = s.client.get(s.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let csp = resp.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    let html = resp.text().await.unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    // No scripts or external assets (links only to this server's pages),
    // and values are escaped.
    assert!(!html.contains("<script") && !html.contains("src=") && !html.contains("<link"));
    assert!(
        html.split("href=\"")
            .skip(1)
            .all(|rest| rest.starts_with('/')),
        "{html}"
    );
    assert!(html.contains("h3&lt;script&gt;"), "escaped host");
    assert!(
        html.contains("&lt;b&gt;fresh&lt;b&gt;"),
        "escaped backup id"
    );
    // The summary: 3 hosts, h2 and h3 never reported (silent), h1's ldap
    // failing, 4 records undelivered.
    assert!(html.contains("<b>3</b>hosts"), "{html}");
    assert!(html.contains("<b>2</b>silent hosts"), "{html}");
    assert!(html.contains("<b>1</b>failing sources"), "{html}");
    assert!(html.contains("<b>4</b>undelivered records"), "{html}");
    assert!(html.contains("<b>1</b>retention failing"), "{html}");
    assert!(
        html.contains("Needs attention: 1 failing source, 2 silent hosts")
            && html.contains(
                "1 source whose retention failed, 1 host whose prune failed, 4 undelivered records."
            ),
        "{html}"
    );
    assert!(
        html.contains("prune of the repository failed")
            && html.contains("repository is already locked exclusively"),
        "{html}"
    );
    // h1 backs up into a repository only it uses, and prunes it.
    assert!(
        html.contains("<h2>Repositories</h2>") && html.contains("<td>1 (h1)</td><td>h1</td>"),
        "{html}"
    );
    assert!(!html.contains("no host prunes"), "{html}");
    assert!(
        html.contains("<b>mysql</b>: retention failed")
            && html.contains("index removal refused &lt;b&gt;"),
        "{html}"
    );
    // h1 (failing source) first, with the error; links to the host page.
    let h1 = html.find("<a href=\"/hosts/h1\">h1</a>").unwrap();
    let h2 = html.find("<a href=\"/hosts/h2\">h2</a>").unwrap();
    assert!(h1 < h2, "failing first");
    assert!(html.contains("slapcat: permission denied") && html.contains(">partial<"));
    assert!(html.contains("never reported to this server"));
    assert!(html.contains("4 record(s) waiting in its outbox"));
    // Running datasets by name, honest progress; the waiting one too.
    assert!(html.contains(">users<") && html.contains("<progress max=\"1\" value=\"0.400\">"));
    assert!(html.contains("4 / 10"));
    assert!(
        html.contains("streaming, size unknown (10.00 KiB so far, 1.00 KiB/s, 10s)"),
        "{html}"
    );
    assert!(!html.contains("0s left") && !html.contains("/ 0 B"));
    assert!(html.contains(">later<") && html.contains("waiting for a slot"));

    // The host page: sources with the failing one first, its error, the
    // restore command; unknown hosts are a 404.
    let (status, page) = s.get("/hosts/h1").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let ldap = page.find("<b>ldap</b>").unwrap();
    let mysql = page.find("<b>mysql</b>").unwrap();
    assert!(ldap < mysql, "{page}");
    assert!(page.contains("1 of 2 datasets (2 atoms)"), "{page}");
    assert!(
        page.contains("tabacco restore --host h1 --target /tmp/restore &#x27;mysql/*&#x27;"),
        "{page}"
    );
    assert!(page.contains("(running now)"));
    assert!(
        page.contains("<span class=\"err\">failed ")
            && page.contains("index removal refused &lt;b&gt;</span>"),
        "{page}"
    );
    assert!(
        page.contains(
            "Prunes the repository on <code>0 4 * * 0</code>; last prune <span class=\"err\">FAILED</span>"
        ),
        "{page}"
    );
    let (_, metrics) = s.get("/metrics").await;
    assert!(
        metrics.contains(r#"tabacco_host_prune_failing{host="h1"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"tabacco_repository_pruners{repository="5e5b5e5b"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"tabacco_source_retention_failing{host="h1",source="mysql"} 1"#),
        "{metrics}"
    );
    assert!(
        !metrics.contains(r#"tabacco_source_retention_failing{host="h1",source="ldap"}"#),
        "{metrics}"
    );
    assert!(
        page.contains("Recent runs") && page.contains("<code>b2</code>"),
        "{page}"
    );
    let (status, _) = s.get("/hosts/nobody").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Recent backups, newest first.
    let fresh = html.find("&lt;b&gt;fresh&lt;b&gt;").unwrap();
    let c1 = html.find("<code>c1</code>").unwrap();
    assert!(fresh < c1);

    // Search by pattern and host.
    let (status, html) = s
        .get("/?pattern=mysql%2Fdb%2Fsite1&host=h1&versions=")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("2 versions match"), "{html}");
    assert!(
        html.contains(
            "<td><code>mysql/db/site1</code></td><td>2026-01-02T00:00:00Z</td><td>h1</td>"
        ),
        "{html}"
    );
    // Each version with the command that restores exactly it.
    assert!(
        html.contains("tabacco restore --backup-id b2 --target /tmp/restore mysql/db/site1"),
        "{html}"
    );
    // Records without atom sizes show their dataset's, marked.
    assert!(html.contains("4.00 KiB (dataset)"), "{html}");
    assert!(html.contains(&format!("title=\"{:0>64}\"", "d2")), "{html}");
    assert!(
        html.contains("value=\"mysql/db/site1\""),
        "form keeps the pattern"
    );
    let (_, html) = s.get("/?pattern=files%2F*&versions=1").await;
    assert!(
        html.contains("files/home/&lt;img src=x&gt;") && html.contains("files/home/a&amp;b"),
        "{html}"
    );
    assert!(!html.contains("<img"));
    let (status, html) = s.get("/?pattern=mysql%2F%5Bdb").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        html.contains("class=\"error\"") && html.contains("not closed"),
        "{html}"
    );
    let (status, html) = s.get("/?pattern=x&versions=-2").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(html.contains("Versions must be"), "{html}");
    let (_, html) = s.get("/?pattern=nothing").await;
    assert!(html.contains("No atom matches."));
}

async fn metrics_count_requests_datasets_and_host_timestamps(s: &TestServer) {
    seed(s).await;
    s.post("/api/find_atoms", &json!({"pattern": "["})).await;
    s.get("/nope").await;
    let resp = s.client.get(s.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = resp.text().await.unwrap();
    for want in [
        "tabacco_metadb_http_requests_total{route=\"/api/add_dataset\",method=\"POST\",status=\"200\"} 4",
        "tabacco_metadb_http_requests_total{route=\"/api/find_atoms\",method=\"POST\",status=\"400\"} 1",
        "tabacco_metadb_http_requests_total{route=\"unmatched\",method=\"GET\",status=\"404\"} 1",
        "tabacco_metadb_datasets_added_total 4",
        "tabacco_host_last_backup_timestamp_seconds{host=\"h1\"} 1767312000.0",
        "tabacco_host_last_backup_timestamp_seconds{host=\"h2\"} 1767398400.0",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
}

async fn healthz_answers(s: &TestServer) {
    let (status, text) = s.get("/healthz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        json!({"status": "ok"})
    );
    // With the database gone, 503 (and still a JSON body).
    s.store.close().await;
    let (status, text) = s.get("/healthz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(serde_json::from_str::<Value>(&text).unwrap()["error"].is_string());
    let (status, v) = s.post("/api/find_atoms", &json!({"pattern": "*"})).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(!v["error"].as_str().unwrap().contains("sqlite"), "{v}");
}

/// Issue 10: a host's record whose identifiers would leave a restore's
/// target is refused with 400 naming the field, for every field.
async fn path_escapes_are_refused_naming_the_field(s: &TestServer) {
    let ok = || {
        add_body(
            backup_json("b1", "h1", "2026-01-01T00:00:00Z"),
            dataset_json("d1", "files", "docs", &["a"]),
        )
    };
    let mut cases: Vec<(Value, &str)> = Vec::new();
    for (pointer, field) in [
        ("/backup/id", "backup.id"),
        ("/backup/host", "backup.host"),
        ("/dataset/id", "dataset.id"),
        ("/dataset/source", "dataset.source"),
        ("/dataset/name", "dataset.name"),
        ("/dataset/atoms/0/name", "dataset.atoms[0].name"),
        ("/dataset/atoms/0/path", "dataset.atoms[0].path"),
    ] {
        for bad in ["/tmp/ESCAPED", "..", "../../etc"] {
            let mut body = ok();
            if pointer.ends_with("/path") {
                body["dataset"]["atoms"][0]["path"] = json!(bad);
            } else {
                *body.pointer_mut(pointer).unwrap() = json!(bad);
            }
            cases.push((body, field));
        }
    }
    for (body, field) in cases {
        let (status, v) = s.post("/api/add_dataset", &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {v}");
        let msg = v["error"].as_str().unwrap();
        assert!(msg.starts_with(&format!("{field}: ")), "{field}: {msg}");
    }
    let (status, v) = s.post("/api/find_atoms", &json!({"pattern": "*"})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v, json!([]), "nothing was stored");
    let (status, v) = s.post("/api/add_dataset", &ok()).await;
    assert_eq!(status, StatusCode::OK, "{v}");
}

/// Issue 10, smaller points over HTTP: a year-1 `older_than` other than
/// Go's zero time filters (it used to mean "unset"), year 0 is refused,
/// and a huge bad pattern is not echoed back whole.
async fn older_than_in_year_1_filters_and_bad_input_is_not_reflected(s: &TestServer) {
    seed(s).await;
    let find = |older_than: &str| json!({"pattern": "*", "older_than": older_than});
    let (status, v) = s
        .post("/api/find_atoms", &find("0001-01-02T00:00:00Z"))
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v, json!([]), "every version is newer than year 1");
    let (status, v) = s
        .post("/api/find_atoms", &find("0001-01-01T00:00:00Z"))
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert!(!flat(&v).is_empty(), "Go's zero time still means unset");
    let (status, v) = s
        .post("/api/find_atoms", &find("0000-06-01T00:00:00Z"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["error"].as_str().unwrap().contains("older_than"), "{v}");
    let huge = format!("[{}", "x".repeat(50_000));
    let (status, v) = s.post("/api/find_atoms", &json!({"pattern": huge})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let msg = v["error"].as_str().unwrap();
    assert!(msg.len() < 400, "{} bytes reflected: {msg:.200}", msg.len());
    let (status, v) = s
        .post(
            "/api/add_dataset",
            &add_body(
                backup_json("b9", "h1", "2026-01-01T00:00:00Z"),
                json!({"id": "d", "name": "n", "source": "s", "snapshot_id": "x".repeat(50_000) + "\u{0}"}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["error"].as_str().unwrap().len() < 400, "{v:.300}");
}

/// Issue 10: the server's SQLite database on a full disk. A write fails
/// (500), `/healthz` says 503 while writes fail, and once space is freed
/// the first write succeeds and the health check recovers.
#[tokio::test]
async fn a_full_disk_gives_503_health_and_the_first_write_after_freeing_space_succeeds() {
    let Some(fs) = crate::metadata::faults::SmallTmpfs::mount("1m") else {
        return;
    };
    let store = SqliteStore::open(&fs.path().join("metadb.sqlite"))
        .await
        .unwrap();
    let state = AppState::new(Arc::new(store.clone()), &test_config()).unwrap();
    let s = start_state(
        state,
        Arc::new(store.clone()),
        Backing::Dir(tempfile::tempdir().unwrap()),
        reqwest::Client::new(),
        "127.0.0.1",
    )
    .await;
    let body = |b: &str, n: usize| {
        let atoms: Vec<String> = (0..n)
            .map(|i| format!("{i:04}-{}", "y".repeat(200)))
            .collect();
        let atoms: Vec<&str> = atoms.iter().map(String::as_str).collect();
        add_body(
            backup_json(b, "h1", "2026-01-01T00:00:00Z"),
            dataset_json(&format!("{b}-d"), "files", "home", &atoms),
        )
    };
    let (status, v) = s.post("/api/add_dataset", &body("b0", 1)).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(s.get("/healthz").await.0, StatusCode::OK);
    store.checkpoint_truncate().await;
    let filler = fs.fill();
    let (status, v) = s.post("/api/add_dataset", &body("b1", 150)).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{v}");
    for _ in 0..3 {
        let (status, text) = s.get("/healthz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    }
    std::fs::remove_file(filler).unwrap();
    let (status, v) = s.post("/api/add_dataset", &body("b1", 3)).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the first write after freeing space: {v}"
    );
    assert_eq!(s.get("/healthz").await.0, StatusCode::OK);
    for i in 2..12 {
        let (status, v) = s.post("/api/add_dataset", &body(&format!("b{i}"), 3)).await;
        assert_eq!(status, StatusCode::OK, "write {i}: {v}");
    }
    let (_, v) = s
        .post("/api/find_atoms", &json!({"pattern": "files/*"}))
        .await;
    assert_eq!(flat(&v).len(), 1 + 11 * 3);
    s.stop().await;
}

#[tokio::test]
async fn openapi_document_matches_routes_and_model() {
    let s = start(false).await;
    let doc: Value = serde_json::from_str(routes::OPENAPI_JSON).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    // Served as committed.
    let (status, text) = s.get("/api/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), doc);

    let documented: std::collections::BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.clone(), path.clone()))
        })
        .collect();
    let state = Arc::new(AppState::new(s.store.clone(), &test_config()).unwrap());
    let served: std::collections::BTreeSet<(String, String)> = routes::router(state)
        .1
        .into_iter()
        .map(|(m, p)| (m.to_owned(), p.to_owned()))
        .collect();
    assert_eq!(
        documented, served,
        "docs/openapi.json and the router disagree"
    );
    // And each documented operation is really there.
    for (method, path) in &documented {
        let method: reqwest::Method = method.to_uppercase().parse().unwrap();
        let resp = s
            .client
            .request(method.clone(), s.url(path))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let body = resp.text().await.unwrap();
        // A path with a parameter may answer 404 for the value, but from its
        // handler, not as an unknown route.
        assert!(
            status != StatusCode::METHOD_NOT_ALLOWED
                && (status != StatusCode::NOT_FOUND
                    || (path.contains('{') && !body.contains("no such route"))),
            "{method} {path}: {status} {body}"
        );
    }

    // The schemas list exactly the fields the wire types serialize.
    let schemas = &doc["components"]["schemas"];
    let props = |name: &str| -> std::collections::BTreeSet<String> {
        schemas[name]["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("schema {name}"))
            .keys()
            .cloned()
            .collect()
    };
    let keys = |v: Value| -> std::collections::BTreeSet<String> {
        v.as_object().unwrap().keys().cloned().collect()
    };
    let job = JobStatus {
        status: Some(RunningJobStatus::default()),
        dataset_name: Some("n".into()),
        state: Some("running".into()),
        ..JobStatus::default()
    };
    let source = crate::model::SourceReport {
        name: "s".into(),
        schedule: Some("@daily".into()),
        next_run: Some(Utc::now()),
        last_run: Some(crate::model::RunReport {
            result: crate::model::RunResult::Ok,
            finished_at: Utc::now(),
            duration_seconds: 1.0,
            backup_id: Some("b".into()),
            job_id: Some("j".into()),
            error: Some("e".into()),
            datasets_recorded: 1,
            datasets_failed: 0,
            atoms_failed: 0,
        }),
        last_success: Some(Utc::now()),
        running: false,
        last_forget: Some(crate::model::MaintenanceRun::now(false, "e".into())),
    };
    let dataset = Dataset {
        atoms: vec![Atom {
            name: "a".into(),
            path: "p".into(),
            snapshot_path: Some("/srv/p".into()),
            size: Some(1),
            files: Some(1),
            sha256: Some("0".repeat(64)),
        }],
        handler: Some("file".into()),
        repository_id: Some("f".repeat(64)),
        ..serde_json::from_value(dataset_json("d", "s", "n", &[])).unwrap()
    };
    let backup: Backup =
        serde_json::from_value(backup_json("b", "h", "2026-01-01T00:00:00Z")).unwrap();
    let verification = crate::model::Verification {
        backup_id: "b".into(),
        dataset_id: "d".into(),
        atom: "a".into(),
        verified_at: Utc::now(),
        result: crate::model::VerifyResult::Failed,
        error: Some("e".into()),
        last_ok: Some(Utc::now()),
    };
    let checks = [
        ("Backup", serde_json::to_value(&backup).unwrap()),
        ("Dataset", serde_json::to_value(&dataset).unwrap()),
        ("Atom", serde_json::to_value(&dataset.atoms[0]).unwrap()),
        (
            "FindRequest",
            serde_json::to_value(crate::model::FindRequest {
                older_than: Some(Utc::now()),
                ..crate::model::FindRequest::default()
            })
            .unwrap(),
        ),
        ("JobStatus", serde_json::to_value(&job).unwrap()),
        ("SourceReport", serde_json::to_value(&source).unwrap()),
        (
            "RunReport",
            serde_json::to_value(source.last_run.as_ref().unwrap()).unwrap(),
        ),
        (
            "MaintenanceRun",
            serde_json::to_value(source.last_forget.as_ref().unwrap()).unwrap(),
        ),
        (
            "RunningJobStatus",
            serde_json::to_value(RunningJobStatus::default()).unwrap(),
        ),
        (
            "UpdateActiveJobStatusRequest",
            serde_json::to_value(crate::model::UpdateActiveJobStatusRequest {
                host: "h".into(),
                active_jobs: vec![job.clone()],
                sources: Some(vec![source.clone()]),
                outbox_pending: Some(1),
                outbox_rejected: Some(0),
                report_interval_seconds: Some(30.0),
                prune_schedule: Some("0 4 * * 0".into()),
                last_prune: source.last_forget.clone(),
                repository_id: Some("5e5b".repeat(16)),
            })
            .unwrap(),
        ),
        (
            "RemoveDatasetsRequest",
            serde_json::to_value(crate::model::RemoveDatasetsRequest {
                host: "h".into(),
                datasets: vec![crate::model::DatasetRef {
                    backup_id: "b".into(),
                    dataset_id: "d".into(),
                }],
            })
            .unwrap(),
        ),
        (
            "DatasetRef",
            serde_json::to_value(crate::model::DatasetRef {
                backup_id: "b".into(),
                dataset_id: "d".into(),
            })
            .unwrap(),
        ),
        (
            "RemoveDatasetsResponse",
            serde_json::to_value(crate::model::RemoveDatasetsResponse { removed: 1 }).unwrap(),
        ),
        (
            "AddDatasetRequest",
            serde_json::to_value(crate::model::AddDatasetRequest {
                backup: backup.clone(),
                dataset: dataset.clone(),
            })
            .unwrap(),
        ),
        (
            "HostStatus",
            serde_json::to_value(routes::HostStatus {
                state: crate::metadata::HostState {
                    sources: Some(vec![source.clone()]),
                    outbox_pending: Some(0),
                    outbox_rejected: Some(0),
                    report_interval_seconds: Some(30.0),
                    prune_schedule: Some("0 4 * * 0".into()),
                    last_prune: source.last_forget.clone(),
                    repository_id: Some("5e5b".repeat(16)),
                },
                ..routes::HostStatus::unreported("h".into())
            })
            .unwrap(),
        ),
        ("Verification", serde_json::to_value(&verification).unwrap()),
        (
            "AtomVersion",
            serde_json::to_value(verification.version()).unwrap(),
        ),
        (
            "AddVerificationsRequest",
            serde_json::to_value(crate::model::AddVerificationsRequest {
                host: "h".into(),
                verifications: vec![verification.clone()],
            })
            .unwrap(),
        ),
        (
            "GetVerificationsRequest",
            serde_json::to_value(crate::model::GetVerificationsRequest {
                versions: vec![verification.version()],
            })
            .unwrap(),
        ),
    ];
    for (name, value) in checks {
        assert_eq!(props(name), keys(value), "schema {name} vs serde");
    }
    s.stop().await;
}

// ---- TLS, client certificates, tokens ----

/// A test PKI: a CA, a server certificate for `metadb.test`, and client
/// certificates.
struct Pki {
    /// Where the PEM files are.
    dir: tempfile::TempDir,
    /// The CA certificate (PEM).
    ca_pem: String,
    /// The CA, to sign more.
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "tabacco test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca = params.self_signed(&ca_key).unwrap();
        let ca_pem = ca.pem();
        std::fs::write(dir.path().join("ca.pem"), &ca_pem).unwrap();
        let pki = Pki {
            dir,
            ca_pem,
            issuer: rcgen::Issuer::new(params, ca_key),
        };
        let (cert, key) = pki.leaf(Some("metadb.test"), &["metadb.test"], true);
        std::fs::write(pki.dir.path().join("server.pem"), cert).unwrap();
        std::fs::write(pki.dir.path().join("server.key"), key).unwrap();
        pki
    }

    /// A certificate (PEM) and key (PEM) signed by the CA.
    fn leaf(&self, cn: Option<&str>, dns: &[&str], server: bool) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(dns.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
        }
        params.extended_key_usages = vec![if server {
            rcgen::ExtendedKeyUsagePurpose::ServerAuth
        } else {
            rcgen::ExtendedKeyUsagePurpose::ClientAuth
        }];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn tls_files(&self, client_ca: bool) -> TlsFiles {
        TlsFiles {
            cert: self.dir.path().join("server.pem"),
            key: self.dir.path().join("server.key"),
            client_ca: client_ca.then(|| self.dir.path().join("ca.pem")),
        }
    }

    /// A client trusting the CA, resolving metadb.test to `addr`, with an
    /// optional client certificate.
    fn client(
        &self,
        addr: Option<SocketAddr>,
        identity: Option<(String, String)>,
    ) -> reqwest::Client {
        let mut b = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap()]);
        if let Some(addr) = addr {
            b = b.resolve("metadb.test", addr);
        }
        if let Some((cert, key)) = identity {
            b = b.identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap());
        }
        b.build().unwrap()
    }

    /// A client with a certificate for `host` (as CN).
    fn host_client(&self, addr: SocketAddr, host: &str) -> reqwest::Client {
        self.client(Some(addr), Some(self.leaf(Some(host), &[], false)))
    }
}

/// Start a TLS server on SQLite with `config`; its `client` has no
/// credentials.
async fn start_tls(pki: &Pki, config: MetadbConfig) -> TestServer {
    // The client needs the port to resolve; build it after binding.
    let mut s = start_with(false, config, reqwest::Client::new(), "metadb.test").await;
    s.client = pki.client(Some(s.addr), None);
    s
}

/// POST with a given client; (status, body text).
async fn post_with(
    client: &reqwest::Client,
    s: &TestServer,
    path: &str,
    body: &Value,
    token: Option<&str>,
) -> Result<(StatusCode, String), reqwest::Error> {
    let mut req = client.post(s.url(path)).json(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await?;
    let status = resp.status();
    Ok((status, resp.text().await?))
}

fn add_for(host: &str, backup: &str) -> Value {
    add_body(
        backup_json(backup, host, "2026-01-01T00:00:00Z"),
        dataset_json(&format!("{backup}-d"), "files", "home", &["a"]),
    )
}

#[tokio::test]
async fn tls_without_client_certificates_serves_https() {
    let pki = Pki::new();
    let mut config = test_config();
    config.tls = Some(pki.tls_files(false));
    let s = start_tls(&pki, config).await;
    assert!(s.base.starts_with("https://"));
    let (status, _) = post_with(
        &s.client,
        &s,
        "/api/add_dataset",
        &add_for("h1", "b1"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::OK);
    // Plain HTTP to the TLS port does not get an answer.
    let plain = reqwest::Client::new()
        .get(format!("http://{}/healthz", s.addr))
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
    s.stop().await;
}

/// Issue 10: established connections are capped by `max_connections`;
/// one more client waits until a connection closes, then is served.
#[tokio::test]
async fn connections_beyond_max_connections_wait_until_one_closes() {
    use tokio::io::AsyncWriteExt;
    let mut config = test_config();
    config.max_connections = 2;
    let s = start_with(false, config, reqwest::Client::new(), "127.0.0.1").await;
    let mut held = Vec::new();
    for _ in 0..2 {
        // Incomplete headers: each holds its connection (and permit).
        let mut c = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        held.push(c);
    }
    let client = reqwest::Client::new();
    let waiting = client
        .get(s.url("/healthz"))
        .timeout(std::time::Duration::from_secs(2))
        .send()
        .await;
    assert!(
        waiting.as_ref().is_err_and(|e| e.is_timeout()),
        "a third connection was served: {waiting:?}"
    );
    held.pop();
    let resp = client
        .get(s.url("/healthz"))
        .timeout(std::time::Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    drop(held);
    s.stop().await;
}

/// Issue 10: an HTTP/2-capable client (curl's default, like a browser)
/// negotiates a protocol the server speaks and gets the page over TLS.
#[tokio::test]
async fn an_http2_capable_client_gets_the_page_over_tls() {
    let pki = Pki::new();
    let mut config = test_config();
    config.tls = Some(pki.tls_files(false));
    let s = start_tls(&pki, config).await;
    let port = s.addr.port();
    let out = tokio::process::Command::new("curl")
        .args(["--silent", "--show-error", "--http2", "--max-time", "60"])
        .arg("--cacert")
        .arg(pki.dir.path().join("ca.pem"))
        .args(["--resolve", &format!("metadb.test:{port}:127.0.0.1")])
        .args(["--write-out", "\n%{http_code} %{http_version}"])
        .arg(format!("https://metadb.test:{port}/"))
        .output()
        .await
        .expect("curl is needed for this test (scripts/deps installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let (page, status_line) = stdout.rsplit_once('\n').unwrap();
    assert_eq!(status_line, "200 1.1", "{stdout}");
    assert!(page.contains("<html"), "{page}");
    s.stop().await;
}

#[tokio::test]
async fn mtls_requires_a_certificate_and_hosts_write_only_their_own_records() {
    let pki = Pki::new();
    let mut config = test_config();
    config.tls = Some(pki.tls_files(true));
    config.acl.admins.insert("admin".into());
    let s = start_tls(&pki, config).await;

    // No certificate: the handshake is refused.
    let no_cert = post_with(
        &s.client,
        &s,
        "/api/find_atoms",
        &json!({"pattern": "*"}),
        None,
    )
    .await;
    assert!(
        no_cert.is_err(),
        "no certificate must be refused: {no_cert:?}"
    );
    // A certificate from another CA: refused too.
    let other = Pki::new();
    let stranger = pki.client(Some(s.addr), Some(other.leaf(Some("host-a"), &[], false)));
    assert!(
        post_with(
            &stranger,
            &s,
            "/api/find_atoms",
            &json!({"pattern": "*"}),
            None
        )
        .await
        .is_err()
    );

    let a = pki.host_client(s.addr, "host-a");
    // Host A writes its own records.
    let (status, text) = post_with(&a, &s, "/api/add_dataset", &add_for("host-a", "ba"), None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{text}");
    // Host A writing host B's records: 403.
    let (status, text) = post_with(&a, &s, "/api/add_dataset", &add_for("host-b", "bb"), None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN, "{text}");
    assert!(text.contains("host-a") && text.contains("host-b"), "{text}");
    let (status, _) = post_with(
        &a,
        &s,
        "/api/update_active_job_status",
        &json!({"host": "host-b"}),
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Identity from the first DNS name when there is no common name.
    let b = pki.client(
        Some(s.addr),
        Some(pki.leaf(None, &["host-b", "other"], false)),
    );
    let (status, text) = post_with(&b, &s, "/api/add_dataset", &add_for("host-b", "bb"), None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{text}");
    // An admin writes for anyone.
    let admin = pki.host_client(s.addr, "admin");
    let (status, _) = post_with(
        &admin,
        &s,
        "/api/add_dataset",
        &add_for("host-c", "bc"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::OK);
    // Any authenticated host may search, across hosts (restores move data).
    let (status, text) = post_with(&b, &s, "/api/find_atoms", &json!({"pattern": "*"}), None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(flat(&serde_json::from_str(&text).unwrap()).len(), 3);
    // Removing records follows the same rule: host A may not remove host
    // B's, B removes its own, an admin anyone's.
    let refs = |host: &str, b: &str| {
        let add = add_for(host, b);
        json!({"host": host, "datasets": [{"backup_id": b, "dataset_id": add["dataset"]["id"]}]})
    };
    let (status, _) = post_with(&a, &s, "/api/remove_datasets", &refs("host-b", "bb"), None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, text) = post_with(&b, &s, "/api/remove_datasets", &refs("host-b", "bb"), None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap()["removed"], 1);
    let (status, text) = post_with(
        &admin,
        &s,
        "/api/remove_datasets",
        &refs("host-c", "bc"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap()["removed"], 1);
    let (_, text) = post_with(&b, &s, "/api/find_atoms", &json!({"pattern": "*"}), None)
        .await
        .unwrap();
    assert_eq!(flat(&serde_json::from_str(&text).unwrap()).len(), 1);
    // Health and the document need no certificate at the HTTP level, but
    // the TLS layer still wants one.
    let resp = admin.get(s.url("/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    s.stop().await;
}

#[tokio::test]
async fn acl_readers_restrict_searching() {
    let pki = Pki::new();
    let mut config = test_config();
    config.tls = Some(pki.tls_files(true));
    config.acl.readers = Some(["restorer".to_owned()].into_iter().collect());
    let s = start_tls(&pki, config).await;
    let a = pki.host_client(s.addr, "host-a");
    let (status, _) = post_with(&a, &s, "/api/add_dataset", &add_for("host-a", "ba"), None)
        .await
        .unwrap();
    assert_eq!(
        status,
        StatusCode::OK,
        "writing own records needs no read access"
    );
    let (status, _) = post_with(&a, &s, "/api/find_atoms", &json!({"pattern": "*"}), None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        a.get(s.url("/api/hosts")).send().await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        a.get(s.url("/")).send().await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    let r = pki.host_client(s.addr, "restorer");
    let (status, _) = post_with(&r, &s, "/api/find_atoms", &json!({"pattern": "*"}), None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    s.stop().await;
}

fn token_config(tokens: &[(&str, &str)]) -> MetadbConfig {
    let mut config = test_config();
    config.tokens = tokens
        .iter()
        .map(|(h, t)| ((*h).to_owned(), Sha256::digest(t.as_bytes()).into()))
        .collect();
    config
}

#[tokio::test]
async fn bearer_tokens_authenticate_hosts() {
    let s = start_with(
        false,
        token_config(&[("host-a", "secret-a"), ("host-b", "secret-b")]),
        reqwest::Client::new(),
        "127.0.0.1",
    )
    .await;
    let c = &s.client;
    // No token, a wrong token, a malformed header: 401 with a challenge.
    for token in [None, Some("wrong")] {
        let (status, text) = post_with(c, &s, "/api/find_atoms", &json!({"pattern": "*"}), token)
            .await
            .unwrap();
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}: {text}");
        assert!(!text.contains("secret"), "{text}");
    }
    let resp = c
        .get(s.url("/api/hosts"))
        .header("authorization", "Basic aDp4")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(
        resp.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    // Host A with its token: own records yes, B's no.
    let (status, text) = post_with(
        c,
        &s,
        "/api/add_dataset",
        &add_for("host-a", "ba"),
        Some("secret-a"),
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::OK, "{text}");
    let (status, _) = post_with(
        c,
        &s,
        "/api/add_dataset",
        &add_for("host-b", "bb"),
        Some("secret-a"),
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = post_with(
        c,
        &s,
        "/api/add_dataset",
        &add_for("host-b", "bb"),
        Some("secret-b"),
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::OK);
    // Verifications: A records its own, not B's (the ACL names the host;
    // the store checks every atom version's owner).
    let drill = |host: &str, backup: &str| {
        json!({"host": host, "verifications": [{
            "backup_id": backup, "dataset_id": format!("{backup}-d"), "atom": "a",
            "verified_at": "2026-01-02T00:00:00Z", "result": "failed", "error": "SHA-256 differs"
        }]})
    };
    for (body, token, want) in [
        (drill("host-a", "ba"), "secret-a", StatusCode::OK),
        (drill("host-b", "bb"), "secret-a", StatusCode::FORBIDDEN),
        (drill("host-a", "bb"), "secret-a", StatusCode::CONFLICT),
        // An atom version the index does not hold: a conflict too (the
        // API fuzz sends such well-formed requests).
        (drill("host-a", "zz"), "secret-a", StatusCode::CONFLICT),
    ] {
        let (status, text) = post_with(c, &s, "/api/add_verifications", &body, Some(token))
            .await
            .unwrap();
        assert_eq!(status, want, "{body}: {text}");
    }
    let (status, text) = post_with(
        c,
        &s,
        "/api/get_verifications",
        &json!({"versions": [{"backup_id": "ba", "dataset_id": "ba-d", "atom": "a"},
                             {"backup_id": "bb", "dataset_id": "bb-d", "atom": "a"}]}),
        Some("secret-b"),
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::OK, "{text}");
    let got: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(got.as_array().unwrap().len(), 1, "{got}");
    assert_eq!(got[0]["result"], "failed");
    // The fleet page and A's page name the failed drill.
    for path in ["/", "/hosts/host-a"] {
        let page = c
            .get(s.url(path))
            .bearer_auth("secret-b")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            page.contains("Failed restore drills")
                && page.contains("files/home/a")
                && page.contains("SHA-256 differs")
                && page.contains("<code>ba</code>"),
            "{path}: {page}"
        );
    }
    // B finds A's atoms.
    let (status, text) = post_with(
        c,
        &s,
        "/api/find_atoms",
        &json!({"pattern": "*", "host": "host-a"}),
        Some("secret-b"),
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        flat(&serde_json::from_str(&text).unwrap()),
        ["ba:files/home/a"]
    );
    // Open routes.
    assert_eq!(
        c.get(s.url("/healthz")).send().await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        c.get(s.url("/api/openapi.json"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        c.get(s.url("/metrics")).send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    s.stop().await;
}

#[tokio::test]
async fn client_certificates_and_tokens_together() {
    let pki = Pki::new();
    let mut config = token_config(&[("host-t", "secret-t")]);
    config.tls = Some(pki.tls_files(true));
    let s = start_tls(&pki, config).await;
    // Without a certificate the handshake succeeds (tokens are accepted),
    // but the request needs a token.
    let (status, _) = post_with(
        &s.client,
        &s,
        "/api/find_atoms",
        &json!({"pattern": "*"}),
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = post_with(
        &s.client,
        &s,
        "/api/add_dataset",
        &add_for("host-t", "bt"),
        Some("secret-t"),
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::OK);
    let a = pki.host_client(s.addr, "host-a");
    let (status, _) = post_with(&a, &s, "/api/add_dataset", &add_for("host-a", "ba"), None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    // A certificate and someone else's token disagree: 401.
    let (status, _) = post_with(
        &a,
        &s,
        "/api/find_atoms",
        &json!({"pattern": "*"}),
        Some("secret-t"),
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    s.stop().await;
}

/// A store that hangs on the pattern `slow`, panics on `panic`, on `wait`
/// says it `entered` and answers once `release`d, and otherwise finds
/// nothing.
#[derive(Default)]
struct UnrulyStore {
    /// Notified when a `wait` request reaches the store.
    entered: tokio::sync::Notify,
    /// A `wait` request answers once this is notified.
    release: tokio::sync::Notify,
}

#[async_trait::async_trait]
impl crate::metadata::MetadataStore for UnrulyStore {
    async fn add_dataset(
        &self,
        _: &Backup,
        _: &Dataset,
    ) -> Result<(), crate::metadata::MetadataError> {
        Ok(())
    }

    async fn find_atoms(
        &self,
        req: &crate::model::FindRequest,
    ) -> Result<Vec<Backup>, crate::metadata::MetadataError> {
        match req.pattern.as_str() {
            "slow" => {
                tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                Ok(Vec::new())
            }
            "panic" => panic!("the unruly store panics"),
            "wait" => {
                self.entered.notify_one();
                self.release.notified().await;
                Ok(Vec::new())
            }
            _ => Ok(Vec::new()),
        }
    }

    async fn update_active_job_status(
        &self,
        _: &crate::model::UpdateActiveJobStatusRequest,
    ) -> Result<(), crate::metadata::MetadataError> {
        Ok(())
    }
}

#[async_trait::async_trait]
impl ServerStore for UnrulyStore {
    async fn hosts(
        &self,
    ) -> Result<Vec<crate::metadata::HostSummary>, crate::metadata::MetadataError> {
        Ok(Vec::new())
    }
    async fn active_jobs(
        &self,
    ) -> Result<Vec<crate::metadata::HostActiveJobs>, crate::metadata::MetadataError> {
        Ok(Vec::new())
    }
    async fn recent_backups(&self, _: i64) -> Result<Vec<Backup>, crate::metadata::MetadataError> {
        Ok(Vec::new())
    }
    async fn host_backups(
        &self,
        _: &str,
        _: i64,
    ) -> Result<Vec<Backup>, crate::metadata::MetadataError> {
        Ok(Vec::new())
    }
    async fn ping(&self) -> Result<(), crate::metadata::MetadataError> {
        Ok(())
    }
    async fn close(&self) {}
}

#[tokio::test]
async fn slow_and_panicking_requests_get_json_errors_and_the_server_keeps_serving() {
    let store: Arc<dyn ServerStore> = Arc::new(UnrulyStore::default());
    let mut state = AppState::new(store.clone(), &test_config()).unwrap();
    state.request_timeout = std::time::Duration::from_millis(300);
    let s = start_state(
        state,
        store,
        Backing::Dir(tempfile::tempdir().unwrap()),
        reqwest::Client::new(),
        "127.0.0.1",
    )
    .await;
    let started = std::time::Instant::now();
    let (status, v) = s.post("/api/find_atoms", &json!({"pattern": "slow"})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert!(v["error"].as_str().unwrap().contains("retry"), "{v}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    let (status, v) = s
        .post("/api/find_atoms", &json!({"pattern": "panic"}))
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{v}");
    assert!(
        !v["error"].as_str().unwrap().contains("unruly"),
        "internals stay in the log: {v}"
    );
    let (status, v) = s.post("/api/find_atoms", &json!({"pattern": "fine"})).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v, json!([]));
    let (_, text) = s.get("/metrics").await;
    assert!(
        text.contains("route=\"/api/find_atoms\",method=\"POST\",status=\"503\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("route=\"/api/find_atoms\",method=\"POST\",status=\"500\"} 1"),
        "{text}"
    );
    s.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_finishes_and_frees_the_port() {
    let unruly = Arc::new(UnrulyStore::default());
    let store: Arc<dyn ServerStore> = unruly.clone();
    let state = AppState::new(store.clone(), &test_config()).unwrap();
    let mut s = start_state(
        state,
        store,
        Backing::Dir(tempfile::tempdir().unwrap()),
        reqwest::Client::new(),
        "127.0.0.1",
    )
    .await;
    let addr = s.addr;
    // A request in flight when the shutdown starts still gets its answer.
    let client = s.client.clone();
    let url = s.url("/api/find_atoms");
    let in_flight = tokio::spawn(async move {
        client
            .post(url)
            .json(&json!({"pattern": "wait"}))
            .send()
            .await
            .map(|r| r.status())
    });
    // The request is in the store: start the shutdown, and let the store
    // answer only once the server has stopped accepting connections.
    unruly.entered.notified().await;
    let _ = s.stop.take().unwrap().send(());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "still accepting 30 s after the shutdown started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    unruly.release.notify_one();
    assert_eq!(in_flight.await.unwrap().unwrap(), StatusCode::OK);
    s.task.take().unwrap().await.unwrap().unwrap();
    // No longer listening.
    assert!(
        reqwest::Client::new()
            .get(format!("http://{addr}/healthz"))
            .send()
            .await
            .is_err()
    );
}
