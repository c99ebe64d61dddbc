//! The metadata index on PostgreSQL, for a `tabacco metadb` server that
//! outgrows one SQLite file.
//!
//! Same tables, same semantics as the embedded SQLite store
//! ([`super::sqlite`]); what they share is written once in `sql` (this
//! file holds PostgreSQL's `Dialect` and `SqlStore` steps), and the shared
//! conformance suite (`metadata::conformance`) runs against both.
//! Differences are only in how things are spelled:
//!
//! - every text column is `COLLATE "C"` (`migrations/postgres/`), so
//!   ordering is by code point like SQLite's `BINARY` and the literal-prefix
//!   range of a pattern ([`Pattern::condition`]) is served by the B-tree
//!   indexes on `global_path`;
//! - the glob is applied as an anchored regular expression
//!   ([`Pattern::to_postgres_regex`]);
//! - idempotent inserts use `ON CONFLICT DO NOTHING` (as on SQLite), so
//!   concurrent retries of the same record from several connections cannot
//!   race into a unique violation; a dataset's atoms go in as one `unnest`
//!   of arrays, and removed records as arrays too;
//! - timestamps are `timestamptz`, truncated to microseconds before they
//!   are stored, as the SQLite store does.
//!
//! Queries are built at run time (no database needed to compile).
//! Migrations are applied on connect; the migrator's advisory lock makes
//! concurrent starts safe. The database must use the UTF8 encoding.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{Pool, Postgres, QueryBuilder, Row};

use super::sql::{
    Dialect, ReportRow, SqlStore, WriteTx, atom_from_tuple, corrupt, push_find_tail,
    push_matching_paths, write_reports,
};
use super::{MetadataError, truncate_micros};
use crate::glob::{PathCondition, Pattern};
use crate::model::{Atom, Backup, Dataset, FindRequest, RemoveDatasetsRequest, atom_path};

/// Connections in the pool.
const MAX_CONNECTIONS: u32 = 16;

/// How long a request waits for a free connection (or for the server to
/// answer a new one) before failing.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// SQLSTATE `invalid_regular_expression` (PostgreSQL refuses a pattern's
/// translation, e.g. as too complex).
const INVALID_REGULAR_EXPRESSION: &str = "2201B";

/// A metadata store in a PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    /// Connection pool.
    pool: PgPool,
    /// The URL without password, for error messages.
    location: String,
}

impl PostgresStore {
    /// Connect to the database at `url` (`postgres://user:pass@host:port/db`,
    /// with the driver's query parameters such as `sslmode` or `options`)
    /// and migrate it.
    pub async fn connect(url: &str) -> Result<PostgresStore, MetadataError> {
        let location = crate::redact::url(url);
        let options: PgConnectOptions =
            url.parse()
                .map_err(|source: sqlx::Error| MetadataError::Database {
                    location: location.clone(),
                    source,
                })?;
        PostgresStore::connect_with(options, location).await
    }

    /// Connect with prepared options; `location` names the database in
    /// errors (no password).
    pub async fn connect_with(
        options: PgConnectOptions,
        location: String,
    ) -> Result<PostgresStore, MetadataError> {
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(|source| MetadataError::Database {
                location: location.clone(),
                source,
            })?;
        let store = PostgresStore { pool, location };
        let encoding: String = sqlx::query_scalar("SHOW server_encoding")
            .fetch_one(&store.pool)
            .await
            .map_err(|e| store.db_error(e))?;
        if encoding != "UTF8" {
            return Err(store.corrupt(format!(
                "the database uses the {encoding} encoding; tabacco needs UTF8 \
                 (create it with ENCODING 'UTF8')"
            )));
        }
        sqlx::migrate!("migrations/postgres")
            .run(&store.pool)
            .await
            .map_err(|source| MetadataError::Migration {
                location: store.location.clone(),
                source,
            })?;
        tracing::debug!(database = %store.location, "metadata database open");
        Ok(store)
    }

    /// A stored value that cannot be used.
    fn corrupt(&self, detail: String) -> MetadataError {
        self.db_error(corrupt(detail))
    }
}

/// PostgreSQL's spelling of the shared SQL.
impl Dialect for Postgres {
    /// `timestamptz`.
    type Time = DateTime<Utc>;
    const LITERAL_CAST: &'static str = "::text";
    const IDS_PER_QUERY: usize = 1000;
    const VERIFICATIONS_PER_INSERT: usize = 1000;
    /// One array per atom column.
    const ATOM_AGGREGATES: &'static [&'static str] = &[
        "array_agg(name)",
        "array_agg(path)",
        "array_agg(snapshot_path)",
        "array_agg(size)",
        "array_agg(files)",
        "array_agg(sha256)",
    ];

    fn time(t: &DateTime<Utc>) -> DateTime<Utc> {
        *t
    }

    fn time_at(row: &PgRow, i: usize) -> Result<DateTime<Utc>, sqlx::Error> {
        row.try_get(i)
    }

    fn opt_time_at(row: &PgRow, i: usize) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        row.try_get(i)
    }

    /// `column = ANY($n)`, the ids as one array parameter.
    fn push_in(qb: &mut QueryBuilder<Postgres>, column: &str, ids: &[String]) {
        qb.push(column)
            .push(" = ANY(")
            .push_bind(ids.to_vec())
            .push(")");
    }

    fn rows_affected(result: &sqlx::postgres::PgQueryResult) -> u64 {
        result.rows_affected()
    }

    fn atoms_at(row: &PgRow, at: usize) -> Result<Vec<Atom>, sqlx::Error> {
        let names: Vec<String> = row.try_get(at)?;
        let paths: Vec<String> = row.try_get(at + 1)?;
        let snapshot_paths: Vec<Option<String>> = row.try_get(at + 2)?;
        let sizes: Vec<Option<i64>> = row.try_get(at + 3)?;
        let files: Vec<Option<i64>> = row.try_get(at + 4)?;
        let sha256s: Vec<Option<String>> = row.try_get(at + 5)?;
        if [
            paths.len(),
            snapshot_paths.len(),
            sizes.len(),
            files.len(),
            sha256s.len(),
        ]
        .iter()
        .any(|&n| n != names.len())
        {
            return Err(corrupt("aggregates of different lengths".into()));
        }
        Ok(names
            .into_iter()
            .zip(paths)
            .zip(snapshot_paths)
            .zip(sizes.into_iter().zip(files))
            .zip(sha256s)
            .map(|((((name, path), snapshot_path), (size, files)), sha256)| {
                atom_from_tuple((name, path, snapshot_path, size, files, sha256))
            })
            .collect())
    }
}

/// Append the find query for `req` to `qb`: the same shape, columns and
/// order as the SQLite store's (`sqlite::push_find_query`): the matching
/// distinct paths (the literal path, or for a glob a recursive CTE walking
/// the prefix range through the index, one seek per path, keeping those
/// matching `regex`, the pattern's translation), then each path's
/// versions, all or the newest N, through a `LATERAL` index scan; the
/// atoms of each dataset as one array per atom column.
fn push_find_query(
    qb: &mut QueryBuilder<Postgres>,
    pattern: &Pattern,
    regex: &str,
    req: &FindRequest,
) {
    let cond = pattern.condition();
    let older_than = req.older_than.as_ref().map(truncate_micros);
    push_matching_paths(qb, &cond, &req.host);
    qb.push(
        ", matched AS (SELECT a.backup_id, a.dataset_id, a.name, a.path, a.host, \
         a.timestamp, a.snapshot_path, a.size, a.files, a.sha256 FROM paths CROSS JOIN LATERAL \
         (SELECT backup_id, dataset_id, name, path, host, timestamp, snapshot_path, size, \
         files, sha256 FROM atoms WHERE global_path = paths.p",
    );
    if !req.host.is_empty() {
        qb.push(" AND host = ").push_bind(req.host.clone());
    }
    if let Some(t) = older_than {
        qb.push(" AND timestamp < ").push_bind(t);
    }
    if req.num_versions > 0 {
        qb.push(" ORDER BY timestamp DESC, backup_id, dataset_id LIMIT ")
            .push_bind(req.num_versions);
    }
    qb.push(") a");
    if let PathCondition::Glob { .. } = &cond {
        qb.push(" WHERE paths.p ~ ").push_bind(regex.to_owned());
    }
    push_find_tail(qb);
}

#[async_trait]
impl SqlStore for PostgresStore {
    type DB = Postgres;

    fn pool(&self) -> &Pool<Postgres> {
        &self.pool
    }

    /// Wrap a database error with the location; PostgreSQL refusing a
    /// pattern's regular expression is the client's problem.
    fn db_error(&self, source: sqlx::Error) -> MetadataError {
        if let sqlx::Error::Database(db) = &source
            && db.code().as_deref() == Some(INVALID_REGULAR_EXPRESSION)
        {
            return MetadataError::BadRequest(format!(
                "the pattern cannot be evaluated by PostgreSQL: {}",
                db.message()
            ));
        }
        MetadataError::Database {
            location: self.location.clone(),
            source,
        }
    }

    fn location(&self) -> &str {
        &self.location
    }

    async fn begin_write(&self) -> Result<WriteTx<'_, Postgres>, MetadataError> {
        let tx = self.pool.begin().await.map_err(|e| self.db_error(e))?;
        Ok(WriteTx { tx, _writer: None })
    }

    /// All atoms in one statement, as arrays.
    async fn insert_atoms(
        &self,
        conn: &mut PgConnection,
        backup: &Backup,
        dataset: &Dataset,
        time: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        let names: Vec<&str> = dataset.atoms.iter().map(|a| a.name.as_str()).collect();
        let paths: Vec<&str> = dataset.atoms.iter().map(|a| a.path.as_str()).collect();
        let globals: Vec<String> = dataset
            .atoms
            .iter()
            .map(|a| atom_path(&dataset.source, &dataset.name, &a.name))
            .collect();
        let snapshot_paths: Vec<Option<&str>> = dataset
            .atoms
            .iter()
            .map(|a| a.snapshot_path.as_deref())
            .collect();
        let sizes: Vec<Option<i64>> = dataset.atoms.iter().map(|a| a.size).collect();
        let files: Vec<Option<i64>> = dataset.atoms.iter().map(|a| a.files).collect();
        let sha256s: Vec<Option<&str>> =
            dataset.atoms.iter().map(|a| a.sha256.as_deref()).collect();
        sqlx::query(
            "INSERT INTO atoms (backup_id, dataset_id, name, path, global_path, host, timestamp, \
             snapshot_path, size, files, sha256) \
             SELECT $1, $2, a.name, a.path, a.global_path, $6, $7, a.snapshot_path, a.size, \
             a.files, a.sha256 \
             FROM unnest($3::text[], $4::text[], $5::text[], $8::text[], $9::bigint[], \
             $10::bigint[], $11::text[]) \
             AS a(name, path, global_path, snapshot_path, size, files, sha256)",
        )
        .bind(&backup.id)
        .bind(&dataset.id)
        .bind(&names)
        .bind(&paths)
        .bind(&globals)
        .bind(&backup.host)
        .bind(time)
        .bind(&snapshot_paths)
        .bind(&sizes)
        .bind(&files)
        .bind(&sha256s)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// Two statements, the records as arrays. Atoms go with their dataset
    /// (ON DELETE CASCADE); only the host's own records match.
    async fn delete_datasets(
        &self,
        conn: &mut PgConnection,
        req: &RemoveDatasetsRequest,
    ) -> Result<i64, sqlx::Error> {
        let backup_ids: Vec<&str> = req.datasets.iter().map(|d| d.backup_id.as_str()).collect();
        let dataset_ids: Vec<&str> = req.datasets.iter().map(|d| d.dataset_id.as_str()).collect();
        let removed = sqlx::query(
            "DELETE FROM datasets d USING unnest($1::text[], $2::text[]) AS r(backup_id, id), \
             backups b WHERE d.backup_id = r.backup_id AND d.id = r.id \
             AND b.id = d.backup_id AND b.host = $3",
        )
        .bind(&backup_ids)
        .bind(&dataset_ids)
        .bind(&req.host)
        .execute(&mut *conn)
        .await?
        .rows_affected() as i64;
        sqlx::query(
            "DELETE FROM backups b WHERE b.id = ANY($1::text[]) AND b.host = $2 \
             AND NOT EXISTS (SELECT 1 FROM datasets d WHERE d.backup_id = b.id)",
        )
        .bind(&backup_ids)
        .bind(&req.host)
        .execute(&mut *conn)
        .await?;
        Ok(removed)
    }

    /// `None` when the pattern has no regular expression (it matches
    /// nothing).
    fn find_query(&self, pattern: &Pattern, req: &FindRequest) -> Option<QueryBuilder<Postgres>> {
        let regex = pattern.to_postgres_regex()?;
        let mut qb = QueryBuilder::new("");
        push_find_query(&mut qb, pattern, &regex, req);
        Some(qb)
    }

    async fn store_report(
        &self,
        host: &str,
        jobs: String,
        state: String,
    ) -> Result<(), MetadataError> {
        let report = ReportRow {
            host,
            received: truncate_micros(&Utc::now()),
            jobs: &jobs,
            state: &state,
        };
        write_reports(&self.pool, [report])
            .await
            .map_err(|e| self.db_error(e))
    }
}

/// Helpers for tests against a real PostgreSQL server.
#[cfg(test)]
pub(crate) mod test_support {
    use sqlx::Connection;
    use sqlx::postgres::{PgConnectOptions, PgConnection};

    use super::PostgresStore;

    /// Where tests find PostgreSQL unless `TABACCO_TEST_POSTGRES_URL` says
    /// otherwise.
    pub(crate) const DEFAULT_TEST_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

    /// The test server's URL.
    pub(crate) fn test_url() -> String {
        std::env::var("TABACCO_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_TEST_URL.to_owned())
    }

    /// A schema of its own for one test, dropped when the value is dropped.
    /// Tests fail (never skip) when the server is unreachable.
    pub(crate) struct TestSchema {
        /// Connection options with `search_path` set to the schema.
        pub(crate) options: PgConnectOptions,
        /// Options for the database itself.
        admin: PgConnectOptions,
        /// Schema name.
        pub(crate) name: String,
    }

    impl TestSchema {
        /// Create a fresh schema.
        pub(crate) async fn new() -> TestSchema {
            let url = test_url();
            let admin: PgConnectOptions = url.parse().unwrap_or_else(|e| {
                panic!(
                    "TABACCO_TEST_POSTGRES_URL {}: {e}",
                    crate::redact::url(&url)
                )
            });
            let mut conn = PgConnection::connect_with(&admin)
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "PostgreSQL for the tests is unreachable at {}: {e}. Start it \
                     (pg_ctlcluster --skip-systemctl-redirect <version> main start) or point \
                     TABACCO_TEST_POSTGRES_URL at a server",
                        crate::redact::url(&url)
                    )
                });
            let name = format!("tabacco_test_{}", uuid::Uuid::now_v7().simple());
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {name}")))
                .execute(&mut conn)
                .await
                .expect("create test schema");
            let _ = conn.close().await;
            TestSchema {
                options: admin.clone().options([("search_path", name.as_str())]),
                admin,
                name,
            }
        }

        /// A migrated store in the schema.
        pub(crate) async fn store(&self) -> PostgresStore {
            PostgresStore::connect_with(self.options.clone(), format!("test schema {}", self.name))
                .await
                .expect("connect to the test schema")
        }
    }

    impl Drop for TestSchema {
        fn drop(&mut self) {
            let admin = self.admin.clone();
            let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name);
            // Drop may run inside or outside a runtime: use a thread of
            // its own with a runtime of its own.
            let _ = std::thread::spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(async {
                    if let Ok(mut conn) = PgConnection::connect_with(&admin).await {
                        let _ = sqlx::query(sqlx::AssertSqlSafe(sql))
                            .execute(&mut conn)
                            .await;
                        let _ = conn.close().await;
                    }
                });
            })
            .join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::TestSchema;
    use super::*;
    use crate::metadata::conformance::{Lcg, TestStore, check_find_plans, fleet, plan_requests};
    use crate::metadata::{MetadataStore, ServerStore};

    /// Issue 10: the store's connections are killed again and again in the
    /// middle of an ingest (`pg_terminate_backend`, what a server restart
    /// or a failover does to them). Each writer retries a failed add until
    /// it succeeds, as the agents' outboxes do; the index ends up with
    /// every dataset exactly once, whole.
    #[tokio::test]
    async fn terminated_connections_mid_ingest_lose_and_duplicate_nothing() {
        use crate::metadata::conformance::{backup, dataset};
        use sqlx::Connection;
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        const WRITERS: usize = 4;
        const PER_WRITER: usize = 40;
        const ATOMS: usize = 30;
        let schema = TestSchema::new().await;
        let app = format!("tabacco-kill-test-{}", schema.name);
        let store = Arc::new(
            PostgresStore::connect_with(
                schema.options.clone().application_name(&app),
                format!("test schema {}", schema.name),
            )
            .await
            .unwrap(),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let killer = {
            let (stop, app) = (stop.clone(), app.clone());
            let mut conn = sqlx::postgres::PgConnection::connect_with(&schema.options)
                .await
                .unwrap();
            tokio::spawn(async move {
                let mut kills = 0i64;
                while !stop.load(Ordering::Relaxed) {
                    let n: i64 = sqlx::query_scalar(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                         WHERE application_name = $1",
                    )
                    .bind(&app)
                    .fetch_one(&mut conn)
                    .await
                    .unwrap();
                    kills += n;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                kills
            })
        };
        let names: Vec<String> = (0..ATOMS).map(|i| format!("atom-{i}")).collect();
        let names = Arc::new(names);
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (store, names) = (store.clone(), names.clone());
                tokio::spawn(async move {
                    let mut failures = 0u32;
                    for i in 0..PER_WRITER {
                        let b = backup(&format!("b{w}-{i}"), "h", "2026-01-01T00:00:00Z");
                        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                        let d = dataset("d", "files", "docs", &refs);
                        while let Err(e) = store.add_dataset(&b, &d).await {
                            assert!(
                                matches!(e, MetadataError::Database { .. }),
                                "not a retryable failure: {e}"
                            );
                            failures += 1;
                            assert!(failures < 5000, "the store does not recover: {e}");
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                    failures
                })
            })
            .collect();
        let mut failures = 0;
        for w in writers {
            failures += w.await.unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        let kills = killer.await.unwrap();
        eprintln!("{kills} connections terminated, {failures} adds failed and were retried");
        assert!(
            kills > 0 && failures > 0,
            "the fault was not injected mid-ingest: {kills} kills, {failures} failed adds"
        );
        let n = (WRITERS * PER_WRITER) as i64;
        assert_eq!(store.counts().await, (n, n, n * ATOMS as i64));
        store.ping().await.unwrap();
        ServerStore::close(&*store).await;
    }

    /// The plan of the find query, one line per node.
    async fn plan(s: &PostgresStore, req: &FindRequest) -> Vec<String> {
        let pattern = Pattern::parse(&req.pattern).unwrap();
        let regex = pattern.to_postgres_regex().unwrap();
        let mut conn = s.pool.acquire().await.unwrap();
        // The test tables are tiny: make the planner show what it would do
        // with a large one rather than read a page sequentially.
        sqlx::query("SET enable_seqscan = off")
            .execute(&mut *conn)
            .await
            .unwrap();
        let mut qb = QueryBuilder::new("EXPLAIN ");
        push_find_query(&mut qb, &pattern, &regex, req);
        let lines = qb
            .build()
            .fetch_all(&mut *conn)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<String, _>(0))
            .collect();
        sqlx::query("RESET enable_seqscan")
            .execute(&mut *conn)
            .await
            .unwrap();
        lines
    }

    /// The scan nodes on `atoms` in a plan, each with whether it has an
    /// index condition (a range or equality seek rather than a full read).
    fn atoms_scans(plan: &[String]) -> Vec<(String, bool)> {
        let mut scans = Vec::new();
        for (i, line) in plan.iter().enumerate() {
            if !(line.contains("Scan")
                && (line.contains(" on atoms") || line.contains("using atoms_")))
            {
                continue;
            }
            // Detail lines follow the node up to the next node.
            let seeks = plan[i + 1..]
                .iter()
                .take_while(|l| !l.contains("->"))
                .any(|l| l.contains("Index Cond:"));
            scans.push((line.trim().to_owned(), seeks));
        }
        scans
    }

    /// Whether the plan reads all of atoms (sequentially or a whole index).
    fn scans_atoms(plan: &[String]) -> bool {
        atoms_scans(plan)
            .iter()
            .any(|(node, seeks)| node.contains("Seq Scan") || !seeks)
    }

    fn searches_atoms_by_index(plan: &[String]) -> bool {
        atoms_scans(plan)
            .iter()
            .any(|(node, seeks)| *seeks && node.contains("using atoms_"))
    }

    #[tokio::test]
    async fn find_query_plan_uses_an_atoms_index() {
        let schema = TestSchema::new().await;
        let s = schema.store().await;
        fleet(&s).await;
        sqlx::query("ANALYZE").execute(&s.pool).await.unwrap();
        let mut plans = Vec::new();
        for req in plan_requests() {
            let plan = plan(&s, &req).await;
            plans.push((req, plan));
        }
        check_find_plans(&plans, scans_atoms, searches_atoms_by_index);
    }

    #[tokio::test]
    async fn regex_translation_agrees_with_pattern_matches() {
        let schema = TestSchema::new().await;
        let s = schema.store().await;
        let mut cases: Vec<(String, String)> = Vec::new();
        let mut rng = Lcg(0x9e37);
        let pat_chars = [
            'a',
            'b',
            '/',
            '*',
            '?',
            '[',
            ']',
            '^',
            '-',
            'é',
            '.',
            '\\',
            '$',
            '(',
            '|',
            '\n',
            '\u{1F600}',
            '%',
            '_',
            '{',
        ];
        let text_chars = [
            'a',
            'b',
            '/',
            '-',
            ']',
            '^',
            'é',
            '*',
            '.',
            '\\',
            '$',
            '(',
            '\n',
            '\u{1F600}',
            '_',
        ];
        for _ in 0..300 {
            let plen = 1 + rng.below(7);
            let p = rng.text(&pat_chars, plen);
            for _ in 0..10 {
                let tlen = rng.below(6);
                let t = rng.text(&text_chars, tlen);
                // Every other pattern is a mutation of the text, so that
                // many match.
                let p = if rng.below(2) == 0 {
                    t.chars()
                        .map(|c| match rng.below(8) {
                            0..=2 => c.to_string(),
                            3 => "?".into(),
                            4 => "*".into(),
                            5 => format!("[{c}b-a]"),
                            6 => "[^a-b]".into(),
                            _ => pat_chars[rng.below(pat_chars.len())].to_string(),
                        })
                        .collect()
                } else {
                    p.clone()
                };
                cases.push((p, t));
            }
        }
        let (mut valid, mut matched) = (0, 0);
        for (p, t) in &cases {
            let Ok(pattern) = Pattern::parse(p) else {
                continue;
            };
            valid += 1;
            let want = pattern.matches(t);
            let got = match pattern.to_postgres_regex() {
                None => false,
                Some(re) => sqlx::query_scalar::<_, bool>("SELECT $1::text COLLATE \"C\" ~ $2")
                    .bind(t)
                    .bind(&re)
                    .fetch_one(&s.pool)
                    .await
                    .unwrap_or_else(|e| panic!("{p:?} as {re:?}: {e}")),
            };
            matched += usize::from(want);
            assert_eq!(got, want, "{t:?} against {p:?}");
        }
        assert!(
            valid > 1500 && matched > 300,
            "{valid} valid, {matched} matched"
        );
    }
}
