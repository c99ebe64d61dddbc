//! `tabacco metadb` as a real child process: configuration file and flags,
//! the printed address, SQLite and PostgreSQL databases, tokens, the
//! exposure check, and graceful shutdown on SIGTERM.

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};
use sqlx::Connection;

use crate::metadb_server::MetadbServer;

fn add_body(backup: &str, host: &str, dataset: &str) -> Value {
    json!({
        "backup": {"id": backup, "timestamp": "2026-02-03T04:05:06Z", "host": host},
        "dataset": {"id": dataset, "name": "db", "source": "mysql", "atoms": [{"name": "site1"}, {"name": "site2"}],
                    "snapshot_id": "abc", "total_files": 1, "total_bytes": 2, "bytes_added": 3, "duration": 4}
    })
}

async fn post(
    client: &reqwest::Client,
    s: &MetadbServer,
    path: &str,
    body: &Value,
    token: Option<&str>,
) -> (u16, Value) {
    let mut req = client.post(s.url(path)).json(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

/// Number of atom versions in a find result.
fn versions(v: &Value) -> usize {
    v.as_array()
        .unwrap()
        .iter()
        .flat_map(|b| b["datasets"].as_array().unwrap())
        .map(|d| d["atoms"].as_array().unwrap().len())
        .sum()
}

/// Add, re-add, find, refuse garbage, stop on SIGTERM; a restart on the
/// same database still has the records.
async fn exercise(dir: &Path, config: &Path, args: &[&str]) {
    let client = reqwest::Client::new();
    let s = MetadbServer::start(dir, config, args);
    assert!(s.base.starts_with("http://127.0.0.1:"), "{}", s.base);
    for _ in 0..2 {
        let (status, v) = post(
            &client,
            &s,
            "/api/add_dataset",
            &add_body("b1", "h1", "d1"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{v}");
    }
    let (status, v) = post(
        &client,
        &s,
        "/api/find_atoms",
        &json!({"pattern": "mysql/*"}),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(versions(&v), 2);
    let resp = client
        .post(s.url("/api/find_atoms"))
        .header("content-type", "application/json")
        .body("{\"pattern\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let resp = client.get(s.url("/healthz")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let log = s.terminate();
    assert!(log.contains("SIGTERM"), "{log}");

    let s = MetadbServer::start(dir, config, args);
    let (status, v) = post(
        &client,
        &s,
        "/api/find_atoms",
        &json!({"pattern": "*", "host": "h1"}),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(versions(&v), 2, "records survive a restart");
    s.terminate();
}

#[tokio::test]
async fn metadb_binary_on_sqlite_flags_override_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("metadb.yml");
    // The file's port is taken by a listener of ours: only the flag's
    // 127.0.0.1:0 can work.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std::fs::write(
        &config,
        format!(
            "listen: {}\ndatabase: sqlite://data/metadb.sqlite\nmax_body_bytes: 65536\n",
            busy.local_addr().unwrap()
        ),
    )
    .unwrap();
    exercise(dir.path(), &config, &["--listen", "127.0.0.1:0"]).await;
    assert!(
        dir.path().join("data/metadb.sqlite").exists(),
        "relative to the file"
    );
}

#[tokio::test]
async fn metadb_binary_on_postgres() {
    let url = std::env::var("TABACCO_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let mut conn = sqlx::PgConnection::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL for the tests is unreachable at {url}: {e}"));
    let schema = format!("tabacco_it_{}", uuid::Uuid::now_v7().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&mut conn)
        .await
        .unwrap();
    let sep = if url.contains('?') { '&' } else { '?' };
    let db = format!("{url}{sep}options=-c%20search_path%3D{schema}");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("metadb.yml");
    std::fs::write(&config, "listen: 127.0.0.1:0\n").unwrap();
    exercise(dir.path(), &config, &["--database", &db]).await;
    // The tables are in the test's schema.
    let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM {schema}.atoms"
    )))
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(n, 2);
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&mut conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn metadb_binary_with_a_tokens_file() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.yml");
    let hash = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(b"secret-a"))
    };
    std::fs::write(&tokens, format!("host-a: {hash}\n")).unwrap();
    let config = dir.path().join("metadb.yml");
    std::fs::write(
        &config,
        "listen: 127.0.0.1:0\ndatabase: sqlite://m.sqlite\ntokens_file: tokens.yml\n",
    )
    .unwrap();
    let s = MetadbServer::start(dir.path(), &config, &[]);
    let client = reqwest::Client::new();
    let (status, _) = post(
        &client,
        &s,
        "/api/add_dataset",
        &add_body("b1", "host-a", "d1"),
        None,
    )
    .await;
    assert_eq!(status, 401);
    let (status, v) = post(
        &client,
        &s,
        "/api/add_dataset",
        &add_body("b1", "host-a", "d1"),
        Some("secret-a"),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let (status, _) = post(
        &client,
        &s,
        "/api/add_dataset",
        &add_body("b2", "host-b", "d1"),
        Some("secret-a"),
    )
    .await;
    assert_eq!(status, 403);
    s.terminate();
}

#[test]
fn metadb_refuses_an_open_non_loopback_listener_and_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("metadb.yml");
    std::fs::write(&config, "listen: 0.0.0.0:0\ndatabase: sqlite://m.sqlite\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tabacco"))
        .arg("--config")
        .arg(&config)
        .arg("metadb")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("refusing to listen on 0.0.0.0:0"), "{text}");
    assert!(text.contains("allow_unauthenticated"), "{text}");
    assert!(
        !dir.path().join("m.sqlite").exists(),
        "refused before opening the database"
    );

    std::fs::write(
        &config,
        "listen: 127.0.0.1:0\ntls:\n  cert: a.pem\n  kye: b.pem\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tabacco"))
        .arg("--config")
        .arg(&config)
        .arg("metadb")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("metadb.yml") && text.contains("kye"),
        "{text}"
    );

    // Missing TLS files are a usage error naming the field.
    std::fs::write(&config, "listen: 127.0.0.1:0\ndatabase: sqlite://m.sqlite\ntls:\n  cert: nope.pem\n  key: nope.key\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tabacco"))
        .arg("--config")
        .arg(&config)
        .arg("metadb")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("tls.cert") && text.contains("nope.pem"),
        "{text}"
    );
}

/// Issue 16: the server reads its own file (`--server-config` or
/// `TABACCO_METADB_CONFIG`); the agent's `TABACCO_CONFIG` in the
/// environment is not taken for it.
#[test]
fn metadb_has_its_own_config_flag_and_variable() {
    let dir = tempfile::tempdir().unwrap();
    let agent_yml = dir.path().join("agent.yml");
    std::fs::write(&agent_yml, "hostname: h1\nwork_dir: /tmp\n").unwrap();
    let metadb_yml = dir.path().join("metadb.yml");
    std::fs::write(
        &metadb_yml,
        format!(
            "listen: 127.0.0.1:0\ndatabase: sqlite://{}\n",
            dir.path().join("index.sqlite").display()
        ),
    )
    .unwrap();

    let mut command = Command::new(env!("CARGO_BIN_EXE_tabacco"));
    command
        .arg("metadb")
        .env("TABACCO_CONFIG", &agent_yml)
        .env("TABACCO_METADB_CONFIG", &metadb_yml);
    let server = MetadbServer::spawn(dir.path(), command);
    assert!(dir.path().join("index.sqlite").exists(), "{}", server.log());
    server.terminate();

    let mut command = Command::new(env!("CARGO_BIN_EXE_tabacco"));
    command
        .args(["metadb", "--server-config"])
        .arg(&metadb_yml)
        .env("TABACCO_CONFIG", &agent_yml);
    MetadbServer::spawn(dir.path(), command).terminate();
}
