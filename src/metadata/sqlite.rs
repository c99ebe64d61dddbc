//! The embedded metadata store: a SQLite file (WAL, migrations).
//!
//! Used by the agent and the CLI when no metadata server is configured, and
//! by the `tabacco metadb` server as one of its backends.
//!
//! Schema (`migrations/sqlite/`): `backups`, `datasets` and `atoms`, where
//! each atom row also carries its backup's host and timestamp and its global
//! path `source/dataset/atom`, so that [`super::MetadataStore::find_atoms`] filters
//! and ranks on the `atoms` table and its two indexes, `(global_path,
//! timestamp)` and `(host, global_path, timestamp)`, and joins `datasets` by
//! primary key only for the rows it returns (see `push_find_query` for
//! the two query shapes: a prefix range scan for all versions, a loose
//! index scan over distinct paths for the newest N). Timestamps are INTEGER
//! microseconds since the Unix epoch (UTC): they sort numerically, are
//! compact in a table of millions of rows, and round-trip exactly at
//! PostgreSQL's `timestamptz` resolution; sub-microsecond input is
//! truncated.
//!
//! The file may be opened by several processes at once (the agent and a
//! hand-run CLI): it uses WAL journaling, a busy timeout, and write
//! transactions that take the write lock up front (`BEGIN IMMEDIATE`).
//! Within one process, writers first queue on an async mutex
//! ([`SqliteStore`]'s `writer`), so concurrent writes of one process (the
//! metadata server's requests) never meet SQLite's busy handler, which
//! sleeps 1 to 100 ms between attempts.
//!
//! A write that fails (a full disk, an I/O error, a cancelled request)
//! leaves nothing behind: its transaction is rolled back, and a pooled
//! connection whose rollback failed is discarded before it is handed out
//! again (`outside_transaction`), so the next write after the fault works.
//! `ping` (the server's `/healthz`) writes a one-row probe table, so it
//! fails while writes do.
//!
//! Running-jobs reports (`update_active_job_status`, every host's
//! periodic ping) are group-committed: a report joins a queue, and
//! whichever caller gets the write lock writes every queued report in one
//! statement and hands each caller its result. A caller still returns only
//! once its own report is stored; under load one commit (and one round
//! trip to the connection's thread) serves many pings instead of one
//! each, which is what bounds the server's ping rate (see
//! `bench/server_load.sh`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{Pool, QueryBuilder, Row, Sqlite};

use super::MetadataError;
use super::sql::{
    Dialect, ReportRow, SqlStore, WriteTx, atoms_from_json, corrupt, push_find_tail,
    push_matching_paths, write_reports,
};
use crate::glob::{PathCondition, Pattern};
use crate::model::{Atom, Backup, Dataset, FindRequest, RemoveDatasetsRequest, atom_path};

/// How long a connection waits for another process's write lock before
/// failing with "database is locked".
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections in the pool (WAL: many readers, one writer at a time).
const MAX_CONNECTIONS: u32 = 4;

/// Page cache of each connection, in KiB (SQLite's default is 2 000 KiB).
/// Pages are allocated as they are read, so a small index costs nothing
/// extra; a server's index of millions of atom-versions keeps its hot
/// B-tree pages in memory instead of reading them again through the OS.
pub const CACHE_KIB: u32 = 32 * 1024;

/// Attempts at applying migrations: two processes opening a new file at
/// the same moment race to create the schema, and the loser must retry to
/// see that the winner has done it.
const MIGRATION_ATTEMPTS: u32 = 4;

/// Atom rows per INSERT statement (11 parameters each, well below SQLite's
/// limit of 32766 parameters).
const ATOMS_PER_INSERT: usize = 200;

/// A metadata store in a SQLite database.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// Connection pool on the database file.
    pool: SqlitePool,
    /// The file path, for error messages.
    location: String,
    /// Held by this process's writers for the length of their write
    /// transaction (SQLite admits one writer at a time anyway).
    writer: Arc<tokio::sync::Mutex<()>>,
    /// Running-jobs reports waiting to be written (group commit).
    reports: Arc<std::sync::Mutex<Vec<QueuedReport>>>,
}

/// A running-jobs report waiting in [`SqliteStore`]'s queue.
#[derive(Debug)]
struct QueuedReport {
    /// Reporting host.
    host: String,
    /// When the store received it (microseconds since the epoch).
    received: i64,
    /// The jobs as JSON text.
    jobs: String,
    /// The rest of the report ([`super::HostState`]) as JSON text.
    state: String,
    /// Where the writer sends whether the batch holding it was stored.
    done: tokio::sync::oneshot::Sender<bool>,
}

/// Most reports written by one statement (4 parameters each, well below
/// SQLite's limit of 32766); the writer writes the whole queue, in as many
/// statements as needed.
const REPORTS_PER_BATCH: usize = 1000;

impl SqliteStore {
    /// Open (creating if needed) the database file and migrate it.
    ///
    /// Creates the parent directory, turns on WAL journaling,
    /// `synchronous=NORMAL`, foreign keys and a busy timeout of
    /// [`BUSY_TIMEOUT`].
    pub async fn open(path: &Path) -> Result<SqliteStore, MetadataError> {
        let location = path.display().to_string();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|source| MetadataError::Io {
                    context: format!(
                        "creating directory {} for the metadata database",
                        dir.display()
                    ),
                    source,
                })?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true)
            .pragma("cache_size", format!("-{CACHE_KIB}"));
        // Turning a new file into WAL mode needs an exclusive lock that
        // SQLite does not wait for with the busy timeout: when another
        // process opens the same new file at the same moment, retry here.
        let deadline = tokio::time::Instant::now() + BUSY_TIMEOUT;
        let pool = loop {
            match SqlitePoolOptions::new()
                .max_connections(MAX_CONNECTIONS)
                .before_acquire(|conn, _| Box::pin(async move { Ok(outside_transaction(conn)) }))
                .connect_with(options.clone())
                .await
            {
                Ok(pool) => break pool,
                Err(e) if is_busy(&e) && tokio::time::Instant::now() < deadline => {
                    tracing::debug!(database = %location, error = %e, "database busy on open, retrying");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(source) => return Err(MetadataError::Database { location, source }),
            }
        };
        let store = SqliteStore {
            pool,
            location,
            writer: Arc::new(tokio::sync::Mutex::new(())),
            reports: Arc::default(),
        };
        store.migrate().await?;
        tracing::debug!(database = %store.location, "metadata database open");
        Ok(store)
    }

    /// Apply the embedded migrations, retrying if another process is
    /// applying them at the same time.
    async fn migrate(&self) -> Result<(), MetadataError> {
        let migrator = sqlx::migrate!("migrations/sqlite");
        let mut attempt = 1;
        loop {
            match migrator.run(&self.pool).await {
                Ok(()) => return Ok(()),
                Err(
                    e @ (sqlx::migrate::MigrateError::Execute(_)
                    | sqlx::migrate::MigrateError::ExecuteMigration(..)),
                ) if attempt < MIGRATION_ATTEMPTS => {
                    tracing::debug!(
                        database = %self.location,
                        error = %e,
                        attempt,
                        "schema migration failed, retrying (another process may be migrating)"
                    );
                    tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
                    attempt += 1;
                }
                Err(source) => {
                    return Err(MetadataError::Migration {
                        location: self.location.clone(),
                        source,
                    });
                }
            }
        }
    }

    /// The queue of running-jobs reports (a panic while it was held
    /// cannot leave it inconsistent: it is only pushed to and drained).
    fn queued_reports(&self) -> std::sync::MutexGuard<'_, Vec<QueuedReport>> {
        crate::util::lock(&self.reports)
    }
}

/// Whether a pooled connection may be handed out: `false` (it is closed
/// and replaced) when it is still inside a transaction.
///
/// Dropping an uncommitted `Transaction` (an error path, a cancelled
/// request) queues a `ROLLBACK` on the connection's worker. After a "disk
/// full" or I/O error, SQLite has often rolled the transaction back by
/// itself, so that `ROLLBACK` fails ("no transaction is active"), sqlx
/// keeps its transaction depth at 1, and every later `begin_with("BEGIN
/// IMMEDIATE")` on that connection failed with "attempted to call
/// begin_with at non-zero transaction depth": the store stayed broken
/// until restarted (issue 10). The pool pings a connection before this
/// check (`test_before_acquire`), and the ping queues behind that
/// rollback on the same worker, so the depth read here is settled.
fn outside_transaction(conn: &mut sqlx::SqliteConnection) -> bool {
    use sqlx::Connection;
    if conn.is_in_transaction() {
        tracing::warn!(
            "discarding a metadata database connection left inside a transaction \
             (its rollback failed after an error); a new one replaces it"
        );
        return false;
    }
    true
}

/// Whether `e` is SQLite's "database is locked" (SQLITE_BUSY or
/// SQLITE_LOCKED, any extended code).
fn is_busy(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .code()
            .and_then(|c| c.parse::<i32>().ok())
            .is_some_and(|c| matches!(c & 0xff, 5 | 6)),
        _ => false,
    }
}

/// SQLite's spelling of the shared SQL.
impl Dialect for Sqlite {
    /// Microseconds since the Unix epoch (UTC).
    type Time = i64;
    const LITERAL_CAST: &'static str = "";
    const IDS_PER_QUERY: usize = 500;
    const VERIFICATIONS_PER_INSERT: usize = 500;
    const ATOM_AGGREGATES: &'static [&'static str] =
        &["json_group_array(json_array(name, path, snapshot_path, size, files, sha256))"];

    fn time(t: &DateTime<Utc>) -> i64 {
        t.timestamp_micros()
    }

    fn time_at(row: &SqliteRow, i: usize) -> Result<DateTime<Utc>, sqlx::Error> {
        let micros: i64 = row.try_get(i)?;
        DateTime::from_timestamp_micros(micros)
            .ok_or_else(|| corrupt(format!("timestamp {micros} is out of range")))
    }

    fn opt_time_at(row: &SqliteRow, i: usize) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        match row.try_get::<Option<i64>, _>(i)? {
            None => Ok(None),
            Some(_) => Sqlite::time_at(row, i).map(Some),
        }
    }

    /// `column IN (?, ?, ...)`.
    fn push_in(qb: &mut QueryBuilder<Sqlite>, column: &str, ids: &[String]) {
        qb.push(column).push(" IN (");
        let mut list = qb.separated(", ");
        for id in ids {
            list.push_bind(id.clone());
        }
        qb.push(")");
    }

    fn rows_affected(result: &sqlx::sqlite::SqliteQueryResult) -> u64 {
        result.rows_affected()
    }

    /// One JSON array of arrays of the atom columns.
    fn atoms_at(row: &SqliteRow, at: usize) -> Result<Vec<Atom>, sqlx::Error> {
        let json: &str = row.try_get(at)?;
        atoms_from_json(json).map_err(|e| corrupt(e.to_string()))
    }
}

/// Append the find query for `req` (whose pattern parsed as `pattern`) to
/// `qb`. Columns and order: those of [`push_find_tail`], one row per
/// dataset, its matching atoms as a JSON array of `atom_columns!` arrays.
///
/// The query starts from the distinct global paths that match: the
/// literal path itself, or for a glob a recursive CTE that walks the
/// distinct paths of the pattern's literal-prefix range through the index
/// (one seek per path, a "loose index scan") and keeps those that match.
/// Then, per path, its versions through the index on `(global_path,
/// timestamp)` or `(host, global_path, timestamp)`: all of them, or the
/// newest N (an index seek and `LIMIT`). With many versions per path the
/// walk touches a fraction of the rows a range scan filtered by `GLOB`
/// would (`host04*/mysql/db1*` over 100 backups: 1 000 paths walked, not
/// 100 000 rows scanned), and ranking every row (a window function) for
/// the newest N is never needed.
fn push_find_query(qb: &mut QueryBuilder<Sqlite>, pattern: &Pattern, req: &FindRequest) {
    let cond = pattern.condition();
    push_matching_paths(qb, &cond, &req.host);
    qb.push(
        ", matched AS (SELECT a.backup_id, a.dataset_id, a.name, a.path, a.host, \
         a.timestamp, a.snapshot_path, a.size, a.files, a.sha256 FROM paths CROSS JOIN atoms a ON ",
    );
    if req.num_versions > 0 {
        qb.push("a.rowid IN (SELECT rowid FROM atoms WHERE global_path = paths.p");
    } else {
        qb.push("a.global_path = paths.p");
    }
    // Unqualified: `paths` has no such column, so these name the atom row,
    // whether of the join or of the newest-N subquery.
    if !req.host.is_empty() {
        qb.push(" AND host = ").push_bind(req.host.clone());
    }
    if let Some(t) = req.older_than {
        qb.push(" AND timestamp < ").push_bind(t.timestamp_micros());
    }
    if req.num_versions > 0 {
        qb.push(" ORDER BY timestamp DESC, backup_id, dataset_id LIMIT ")
            .push_bind(req.num_versions)
            .push(")");
    }
    if let PathCondition::Glob { pattern, .. } = &cond {
        qb.push(" WHERE paths.p GLOB ").push_bind(pattern.clone());
    }
    push_find_tail(qb);
}

impl QueuedReport {
    /// The report as stored.
    fn row(&self) -> ReportRow<'_, i64> {
        ReportRow {
            host: &self.host,
            received: self.received,
            jobs: &self.jobs,
            state: &self.state,
        }
    }
}

#[async_trait]
impl SqlStore for SqliteStore {
    type DB = Sqlite;

    fn pool(&self) -> &Pool<Sqlite> {
        &self.pool
    }

    /// Wrap a database error with the file path.
    fn db_error(&self, source: sqlx::Error) -> MetadataError {
        MetadataError::Database {
            location: self.location.clone(),
            source,
        }
    }

    fn location(&self) -> &str {
        &self.location
    }

    /// `BEGIN IMMEDIATE` behind this process's other writers: a deferred
    /// transaction that reads first fails instead of waiting if another
    /// process writes in between.
    async fn begin_write(&self) -> Result<WriteTx<'_, Sqlite>, MetadataError> {
        let writer = self.writer.lock().await;
        let tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| self.db_error(e))?;
        Ok(WriteTx {
            tx,
            _writer: Some(writer),
        })
    }

    /// Many rows per statement: each statement is a round trip to the
    /// connection's worker thread.
    async fn insert_atoms(
        &self,
        conn: &mut SqliteConnection,
        backup: &Backup,
        dataset: &Dataset,
        time: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        for chunk in dataset.atoms.chunks(ATOMS_PER_INSERT) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "INSERT INTO atoms (backup_id, dataset_id, name, path, global_path, host, \
                 timestamp, snapshot_path, size, files, sha256) ",
            );
            qb.push_values(chunk, |mut row, atom| {
                row.push_bind(&backup.id)
                    .push_bind(&dataset.id)
                    .push_bind(&atom.name)
                    .push_bind(&atom.path)
                    .push_bind(atom_path(&dataset.source, &dataset.name, &atom.name))
                    .push_bind(&backup.host)
                    .push_bind(Sqlite::time(&time))
                    .push_bind(&atom.snapshot_path)
                    .push_bind(atom.size)
                    .push_bind(atom.files)
                    .push_bind(&atom.sha256);
            });
            qb.build().execute(&mut *conn).await?;
        }
        Ok(())
    }

    /// One statement per record. Atoms go with their dataset (ON DELETE
    /// CASCADE); only the host's own records match.
    async fn delete_datasets(
        &self,
        conn: &mut SqliteConnection,
        req: &RemoveDatasetsRequest,
    ) -> Result<i64, sqlx::Error> {
        let mut removed = 0i64;
        for d in &req.datasets {
            removed += sqlx::query(
                "DELETE FROM datasets WHERE backup_id = ? AND id = ? \
                 AND backup_id IN (SELECT id FROM backups WHERE id = ? AND host = ?)",
            )
            .bind(&d.backup_id)
            .bind(&d.dataset_id)
            .bind(&d.backup_id)
            .bind(&req.host)
            .execute(&mut *conn)
            .await?
            .rows_affected() as i64;
        }
        let mut backups: Vec<&str> = req.datasets.iter().map(|d| d.backup_id.as_str()).collect();
        backups.sort_unstable();
        backups.dedup();
        for b in backups {
            sqlx::query(
                "DELETE FROM backups WHERE id = ? AND host = ? \
                 AND NOT EXISTS (SELECT 1 FROM datasets WHERE backup_id = ?)",
            )
            .bind(b)
            .bind(&req.host)
            .bind(b)
            .execute(&mut *conn)
            .await?;
        }
        Ok(removed)
    }

    fn find_query(&self, pattern: &Pattern, req: &FindRequest) -> Option<QueryBuilder<Sqlite>> {
        let mut qb = QueryBuilder::new("");
        push_find_query(&mut qb, pattern, req);
        Some(qb)
    }

    /// Group commit (see the module's documentation).
    async fn store_report(
        &self,
        host: &str,
        jobs: String,
        state: String,
    ) -> Result<(), MetadataError> {
        let received = Sqlite::time(&Utc::now());
        let (done, mut stored) = tokio::sync::oneshot::channel();
        self.queued_reports().push(QueuedReport {
            host: host.to_owned(),
            received,
            jobs: jobs.clone(),
            state: state.clone(),
            done,
        });
        let batched = tokio::select! {
            // Another caller wrote the batch holding this report.
            r = &mut stored => r.unwrap_or(false),
            guard = self.writer.clone().lock_owned() => match stored.try_recv() {
                // Written by the previous holder of the lock.
                Ok(ok) => ok,
                Err(_) => {
                    // Still queued: write the queue. In a task of its own,
                    // so that this request being cancelled cannot drop the
                    // other callers' reports half-way.
                    let mut queued = std::mem::take(&mut *self.queued_reports());
                    let pool = self.pool.clone();
                    tokio::spawn(async move {
                        while !queued.is_empty() {
                            let rest = queued.split_off(queued.len().min(REPORTS_PER_BATCH));
                            let ok = write_reports(&pool, queued.iter().map(QueuedReport::row))
                                .await
                                .is_ok();
                            for report in std::mem::replace(&mut queued, rest) {
                                let _ = report.done.send(ok);
                            }
                        }
                        drop(guard);
                    });
                    stored.await.unwrap_or(false)
                }
            },
        };
        if batched {
            return Ok(());
        }
        // The batch failed (or its writer was lost): write this report
        // alone, for its own result and error.
        let _writer = self.writer.lock().await;
        let report = ReportRow {
            host,
            received,
            jobs: &jobs,
            state: &state,
        };
        write_reports(&self.pool, [report])
            .await
            .map_err(|e| self.db_error(e))
    }
}

#[cfg(test)]
impl SqliteStore {
    /// Checkpoint the WAL and truncate it to zero bytes, so that the next
    /// write must grow the file (fault tests fill the disk after this).
    pub(crate) async fn checkpoint_truncate(&self) {
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.pool)
            .await
            .unwrap();
    }
}

#[cfg(test)]
mod tests {
    //! SQLite-specific tests; the behaviour shared with PostgreSQL is
    //! tested for both by `metadata::conformance`.

    use super::*;
    use crate::metadata::conformance::{
        Lcg, TestStore, backup, check_find_plans, dataset, find, plan_requests,
    };
    use crate::metadata::{MetadataStore, ServerStore};
    use crate::model::UpdateActiveJobStatusRequest;
    use sqlx::Connection;
    use tempfile::TempDir;

    /// A dataset of `n` atoms with long names (about 200 KiB of rows).
    fn bulky(id: &str, n: usize) -> Dataset {
        let names: Vec<String> = (0..n)
            .map(|i| format!("{i:05}-{}", "x".repeat(200)))
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        dataset(id, "files", "docs", &names)
    }

    /// Issue 10: after "database or disk is full" (SQLite often rolls the
    /// transaction back by itself, and the pooled connection kept sqlx's
    /// transaction depth at 1), every later write failed until a restart.
    /// Now a write on a full disk fails cleanly, the health check fails
    /// with it, and the first write after space is freed succeeds.
    #[tokio::test]
    async fn a_full_disk_fails_writes_cleanly_and_the_first_write_after_freeing_space_succeeds() {
        let Some(fs) = crate::metadata::faults::SmallTmpfs::mount("1m") else {
            return;
        };
        let s = SqliteStore::open(&fs.path().join("meta.db")).await.unwrap();
        let t = "2026-01-01T00:00:00Z";
        s.add_dataset(&backup("b0", "h", t), &bulky("d0", 1))
            .await
            .unwrap();
        s.ping().await.unwrap();
        s.checkpoint_truncate().await;
        let filler = fs.fill();
        for i in 1..=3 {
            let e = s
                .add_dataset(&backup(&format!("b{i}"), "h", t), &bulky("d", 200))
                .await
                .unwrap_err();
            assert!(
                matches!(&e, MetadataError::Database { .. }) && e.to_string().contains("full"),
                "{e}"
            );
            let e = s.ping().await.unwrap_err();
            assert!(e.to_string().contains("full"), "{e}");
        }
        std::fs::remove_file(filler).unwrap();
        for i in 1..=10 {
            s.add_dataset(&backup(&format!("b{i}"), "h", t), &bulky("d", 5))
                .await
                .unwrap_or_else(|e| panic!("write {i} after freeing space: {e}"));
        }
        s.ping().await.unwrap();
        assert_eq!(s.counts().await, (11, 11, 1 + 10 * 5));
        s.close().await;
    }

    /// Issue 10: a write cancelled at any point (a request future
    /// dropped, a timeout) leaves nothing half-written and no connection
    /// stuck in a transaction.
    #[tokio::test]
    async fn cancelled_writes_leave_whole_datasets_and_a_working_store() {
        let (_dir, s) = store().await;
        let t = "2026-01-01T00:00:00Z";
        for i in 0..60u64 {
            let (b, d) = (backup(&format!("b{i}"), "h", t), bulky("d", 50));
            let _ = tokio::time::timeout(Duration::from_micros(i * i * 40), s.add_dataset(&b, &d))
                .await;
        }
        let (backups, datasets, atoms) = s.counts().await;
        assert_eq!(atoms, datasets * 50, "a dataset was stored in part");
        assert!(backups >= datasets);
        for i in 0..60u64 {
            s.add_dataset(&backup(&format!("b{i}"), "h", t), &bulky("d", 50))
                .await
                .unwrap();
        }
        assert_eq!(s.counts().await, (60, 60, 60 * 50));
        s.ping().await.unwrap();
    }

    async fn store() -> (TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("sub/dir/meta.db"))
            .await
            .unwrap();
        (dir, s)
    }

    async fn fleet() -> (TempDir, SqliteStore) {
        let (dir, s) = store().await;
        crate::metadata::conformance::fleet(&s).await;
        (dir, s)
    }

    /// The `detail` lines of EXPLAIN QUERY PLAN for the find query.
    async fn plan(s: &SqliteStore, req: &FindRequest) -> Vec<String> {
        let pattern = Pattern::parse(&req.pattern).unwrap();
        let mut qb = QueryBuilder::new("EXPLAIN QUERY PLAN ");
        push_find_query(&mut qb, &pattern, req);
        qb.build()
            .fetch_all(&s.pool)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<String, _>(3))
            .collect()
    }

    /// Whether the plan reads the whole atoms table or one of its indexes
    /// (the table is `atoms`, or `a` in the newest-versions query).
    fn scans_atoms(plan: &[String]) -> bool {
        plan.iter()
            .any(|l| l.starts_with("SCAN atoms") || l == "SCAN a" || l.starts_with("SCAN a "))
    }

    fn searches_atoms_by_index(plan: &[String]) -> bool {
        plan.iter().any(|l| {
            (l.starts_with("SEARCH atoms USING") || l.starts_with("SEARCH a USING"))
                && l.contains("INDEX atoms_")
        })
    }

    #[tokio::test]
    async fn find_query_plan_uses_an_atoms_index() {
        let (_dir, s) = fleet().await;
        let mut plans = Vec::new();
        for req in plan_requests() {
            let plan = plan(&s, &req).await;
            plans.push((req, plan));
        }
        check_find_plans(&plans, scans_atoms, searches_atoms_by_index);
    }

    #[tokio::test]
    async fn glob_agrees_with_sqlite() {
        let mut conn = sqlx::SqliteConnection::connect("sqlite::memory:")
            .await
            .unwrap();
        let mut cases: Vec<(String, String)> = [
            ("a/b/c", "a/b/c"),
            ("a/*", "a/b/c"),
            ("a*c", "a/b/cd"),
            ("?", "é"),
            ("?", ""),
            ("[]]", "]"),
            ("[^]]", "x"),
            ("[]-a]", "-"),
            ("[]-a]", "^"),
            ("[a-c-e]", "d"),
            ("[a-c-e]", "-"),
            ("[c-a]", "b"),
            ("[-a]", "-"),
            ("[a-]", "-"),
            ("[*]", "*"),
            ("a\\*", "a\\bc"),
            ("*a*b", "xxaxxbxxb"),
            ("[ab", "a"),
            ("*[ab", "xa"),
            ("[]", "]"),
            ("A", "a"),
        ]
        .iter()
        .map(|(p, t)| ((*p).to_owned(), (*t).to_owned()))
        .collect();
        // Plus pseudo-random patterns and texts over a small alphabet rich
        // in metacharacters.
        let mut rng = Lcg(0x5eed);
        let pat_chars = ['a', 'b', '/', '*', '?', '[', ']', '^', '-', 'é'];
        let text_chars = ['a', 'b', '/', '-', ']', '^', 'é', '*'];
        for _ in 0..400 {
            let plen = 1 + rng.below(7);
            let p = rng.text(&pat_chars, plen);
            for _ in 0..12 {
                let tlen = rng.below(6);
                cases.push((p.clone(), rng.text(&text_chars, tlen)));
            }
        }
        let (mut valid, mut matched) = (0, 0);
        for (p, t) in &cases {
            let sqlite: bool = sqlx::query_scalar("SELECT ?1 GLOB ?2")
                .bind(t)
                .bind(p)
                .fetch_one(&mut conn)
                .await
                .unwrap();
            match Pattern::parse(p) {
                Ok(pat) => {
                    valid += 1;
                    matched += usize::from(sqlite);
                    assert_eq!(pat.matches(t), sqlite, "{t:?} GLOB {p:?}");
                }
                // Refused patterns are those SQLite never matches.
                Err(e) => assert!(!sqlite, "{p:?} refused ({e}) but SQLite matches {t:?}"),
            }
        }
        assert!(
            valid > 1000 && matched > 100,
            "{valid} valid, {matched} matched"
        );
    }

    #[tokio::test]
    async fn two_handles_on_one_file_work_concurrently() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        // Both open a new file at once: one creates the schema, the other
        // must not fail.
        let opened = futures::future::join_all((0..4).map(|_| SqliteStore::open(&path))).await;
        let mut opened = opened.into_iter().map(Result::unwrap);
        let (a, b) = (opened.next().unwrap(), opened.next().unwrap());
        let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&a.pool)
            .await
            .unwrap();
        assert_eq!(journal, "wal");
        let write = |s: SqliteStore, host: &'static str| async move {
            for i in 0..25 {
                let bk = backup(&format!("{host}-{i}"), host, "2026-01-01T00:00:00Z");
                s.add_dataset(&bk, &dataset(&format!("d{i}"), "src", "ds", &["x", "y"]))
                    .await
                    .unwrap();
                s.find_atoms(&find("src/*")).await.unwrap();
            }
        };
        let ta = tokio::spawn(write(a.clone(), "ha"));
        let tb = tokio::spawn(write(b.clone(), "hb"));
        ta.await.unwrap();
        tb.await.unwrap();
        assert_eq!(a.counts().await, (50, 50, 100));
        assert_eq!(b.counts().await, (50, 50, 100));
        a.close().await;
        b.close().await;
        // Data survives reopening.
        let c = SqliteStore::open(&path).await.unwrap();
        assert_eq!(c.hosts().await.unwrap().len(), 2);
    }

    fn report(host: &str, job: &str) -> UpdateActiveJobStatusRequest {
        UpdateActiveJobStatusRequest {
            host: host.to_owned(),
            active_jobs: vec![crate::model::JobStatus {
                host: host.to_owned(),
                job_id: job.to_owned(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_reports_are_group_committed_in_order() {
        let (_dir, s) = store().await;
        // 1200 hosts at once (more than one statement's worth), each
        // sending two reports in turn: every report is stored before its
        // call returns, so the second wins.
        let tasks: Vec<_> = (0..1200)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move {
                    let host = format!("h{i:04}");
                    s.update_active_job_status(&report(&host, "first"))
                        .await
                        .unwrap();
                    s.update_active_job_status(&report(&host, "second"))
                        .await
                        .unwrap();
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let jobs = s.active_jobs().await.unwrap();
        assert_eq!(jobs.len(), 1200);
        for (i, h) in jobs.iter().enumerate() {
            assert_eq!(h.host, format!("h{i:04}"));
            assert_eq!(h.jobs.len(), 1);
            assert_eq!(h.jobs[0].job_id, "second", "{h:?}");
        }
        assert!(s.queued_reports().is_empty());
    }

    #[tokio::test]
    async fn a_batch_with_two_reports_of_one_host_keeps_the_later() {
        let (_dir, s) = store().await;
        let (tx1, _rx1) = tokio::sync::oneshot::channel();
        let (tx2, _rx2) = tokio::sync::oneshot::channel();
        let batch = [
            QueuedReport {
                host: "h".into(),
                received: 1,
                jobs: "[]".into(),
                state: "{}".into(),
                done: tx1,
            },
            QueuedReport {
                host: "h".into(),
                received: 2,
                jobs: "[]".into(),
                state: "{}".into(),
                done: tx2,
            },
        ];
        write_reports(&s.pool, batch.iter().map(QueuedReport::row))
            .await
            .unwrap();
        let jobs = s.active_jobs().await.unwrap();
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].received.timestamp_micros(), 2);
    }

    #[tokio::test]
    async fn a_report_to_a_closed_store_fails_with_its_own_error() {
        let (_dir, s) = store().await;
        s.close().await;
        let err = s
            .update_active_job_status(&report("h", "j"))
            .await
            .unwrap_err();
        assert!(matches!(err, MetadataError::Database { .. }), "{err}");
        assert!(s.queued_reports().is_empty());
    }

    #[tokio::test]
    async fn open_reports_an_unusable_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let err = SqliteStore::open(&file.join("meta.db")).await.unwrap_err();
        assert!(matches!(err, MetadataError::Io { .. }), "{err}");
        assert!(err.to_string().contains("creating directory"), "{err}");
    }
}
