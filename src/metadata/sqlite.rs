//! The embedded metadata store: a SQLite file (WAL, migrations).
//!
//! Used by the agent and the CLI when no metadata server is configured, and
//! by the `tabacco metadb` server as one of its backends.
//!
//! Schema (`migrations/sqlite/`): `backups`, `datasets` and `atoms`, where
//! each atom row also carries its backup's host and timestamp and its global
//! path `source/dataset/atom`, so that [`MetadataStore::find_atoms`] filters
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

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite};

use super::glob::{PathCondition, Pattern};
use super::{MetadataError, MetadataStore};
use crate::model::{
    Atom, Backup, Dataset, FindRequest, JobStatus, UpdateActiveJobStatusRequest, atom_path,
};

/// How long a connection waits for another process's write lock before
/// failing with "database is locked".
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections in the pool (WAL: many readers, one writer at a time).
const MAX_CONNECTIONS: u32 = 4;

/// Attempts at applying migrations: two processes opening a new file at
/// the same moment race to create the schema, and the loser must retry to
/// see that the winner has done it.
const MIGRATION_ATTEMPTS: u32 = 4;

/// Atom rows per INSERT statement (7 parameters each, well below SQLite's
/// limit of 32766 parameters).
const ATOMS_PER_INSERT: usize = 200;

/// A metadata store in a SQLite database.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// Connection pool on the database file.
    pool: SqlitePool,
    /// The file path, for error messages.
    location: String,
}

/// The latest running-jobs report of one host.
#[derive(Debug, Clone, PartialEq)]
pub struct HostActiveJobs {
    /// The reporting host.
    pub host: String,
    /// When the store received the report.
    pub received: DateTime<Utc>,
    /// The jobs running on the host at that time (possibly none).
    pub jobs: Vec<JobStatus>,
}

/// A host that has backups in the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSummary {
    /// Host name.
    pub host: String,
    /// Start time of its newest backup.
    pub last_backup: DateTime<Utc>,
    /// Number of its backups in the index.
    pub backups: i64,
}

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
            .foreign_keys(true);
        // Turning a new file into WAL mode needs an exclusive lock that
        // SQLite does not wait for with the busy timeout: when another
        // process opens the same new file at the same moment, retry here.
        let deadline = tokio::time::Instant::now() + BUSY_TIMEOUT;
        let pool = loop {
            match SqlitePoolOptions::new()
                .max_connections(MAX_CONNECTIONS)
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
        let store = SqliteStore { pool, location };
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

    /// Close the connections (checkpointing the WAL). Further calls fail.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The latest running-jobs report of every host that sent one, by host
    /// name.
    pub async fn active_jobs(&self) -> Result<Vec<HostActiveJobs>, MetadataError> {
        let rows = sqlx::query("SELECT host, received, jobs FROM active_jobs ORDER BY host")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.db_error(e))?;
        rows.iter()
            .map(|row| {
                let host: String = row.try_get(0).map_err(|e| self.db_error(e))?;
                let received = self.timestamp(row.try_get(1).map_err(|e| self.db_error(e))?)?;
                let json: String = row.try_get(2).map_err(|e| self.db_error(e))?;
                let jobs = serde_json::from_str(&json).map_err(|e| {
                    self.corrupt(format!(
                        "active_jobs row of host {host:?} is not a JSON list of jobs: {e}"
                    ))
                })?;
                Ok(HostActiveJobs {
                    host,
                    received,
                    jobs,
                })
            })
            .collect()
    }

    /// Every host with backups in the index, with its newest backup time
    /// and number of backups, by host name.
    pub async fn hosts(&self) -> Result<Vec<HostSummary>, MetadataError> {
        let rows = sqlx::query(
            "SELECT host, MAX(timestamp), COUNT(*) FROM backups GROUP BY host ORDER BY host",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.db_error(e))?;
        rows.iter()
            .map(|row| {
                Ok(HostSummary {
                    host: row.try_get(0).map_err(|e| self.db_error(e))?,
                    last_backup: self.timestamp(row.try_get(1).map_err(|e| self.db_error(e))?)?,
                    backups: row.try_get(2).map_err(|e| self.db_error(e))?,
                })
            })
            .collect()
    }

    /// Wrap a database error with the file path.
    fn db_error(&self, source: sqlx::Error) -> MetadataError {
        MetadataError::Database {
            location: self.location.clone(),
            source,
        }
    }

    /// A stored value that cannot be decoded.
    fn corrupt(&self, detail: String) -> MetadataError {
        self.db_error(sqlx::Error::Decode(detail.into()))
    }

    /// Decode a stored timestamp.
    fn timestamp(&self, micros: i64) -> Result<DateTime<Utc>, MetadataError> {
        DateTime::from_timestamp_micros(micros)
            .ok_or_else(|| self.corrupt(format!("timestamp {micros} is out of range")))
    }

    /// The stored dataset (with atoms) of a backup, if any.
    async fn stored_dataset(
        &self,
        conn: &mut sqlx::SqliteConnection,
        backup_id: &str,
        dataset_id: &str,
    ) -> Result<Option<Dataset>, MetadataError> {
        let Some(row) = sqlx::query(
            "SELECT id, name, source, snapshot_id, total_files, total_bytes, bytes_added, duration
             FROM datasets WHERE backup_id = ? AND id = ?",
        )
        .bind(backup_id)
        .bind(dataset_id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| self.db_error(e))?
        else {
            return Ok(None);
        };
        let mut dataset = dataset_from_row(&row, 0).map_err(|e| self.db_error(e))?;
        let atoms = sqlx::query(
            "SELECT name, path FROM atoms WHERE backup_id = ? AND dataset_id = ? ORDER BY name",
        )
        .bind(backup_id)
        .bind(dataset_id)
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| self.db_error(e))?;
        for row in atoms {
            dataset.atoms.push(Atom {
                name: row.try_get(0).map_err(|e| self.db_error(e))?,
                path: row.try_get(1).map_err(|e| self.db_error(e))?,
            });
        }
        Ok(Some(dataset))
    }
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

/// Refuse an empty required field.
fn require(what: &str, value: &str) -> Result<(), MetadataError> {
    if value.is_empty() {
        return Err(MetadataError::BadRequest(format!("{what} is empty")));
    }
    Ok(())
}

/// Refuse text SQL cannot carry faithfully.
fn no_nul(what: &str, value: &str) -> Result<(), MetadataError> {
    if value.contains('\0') {
        return Err(MetadataError::BadRequest(format!(
            "{what} {value:?} contains a NUL character"
        )));
    }
    Ok(())
}

/// Check an add_dataset request before touching the database.
fn validate_add(backup: &Backup, dataset: &Dataset) -> Result<(), MetadataError> {
    require("backup id", &backup.id)?;
    require("backup host", &backup.host)?;
    require("dataset id", &dataset.id)?;
    for (what, value) in [
        ("backup id", &backup.id),
        ("backup host", &backup.host),
        ("dataset id", &dataset.id),
        ("dataset name", &dataset.name),
        ("dataset source", &dataset.source),
        ("dataset snapshot_id", &dataset.snapshot_id),
    ] {
        no_nul(what, value)?;
    }
    let mut names = std::collections::HashSet::new();
    for atom in &dataset.atoms {
        require(
            &format!("an atom name in dataset {:?}", dataset.id),
            &atom.name,
        )?;
        no_nul("atom name", &atom.name)?;
        no_nul("atom path", &atom.path)?;
        if !names.insert(atom.name.as_str()) {
            return Err(MetadataError::BadRequest(format!(
                "atom {:?} appears twice in dataset {:?}",
                atom.name, dataset.id
            )));
        }
    }
    Ok(())
}

/// Decode the dataset columns `id, name, source, snapshot_id, total_files,
/// total_bytes, bytes_added, duration` starting at column `at`.
fn dataset_from_row(row: &SqliteRow, at: usize) -> Result<Dataset, sqlx::Error> {
    Ok(Dataset {
        id: row.try_get(at)?,
        name: row.try_get(at + 1)?,
        source: row.try_get(at + 2)?,
        atoms: Vec::new(),
        snapshot_id: row.try_get(at + 3)?,
        total_files: row.try_get(at + 4)?,
        total_bytes: row.try_get(at + 5)?,
        bytes_added: row.try_get(at + 6)?,
        duration: row.try_get(at + 7)?,
    })
}

/// Append `cond_1 AND cond_2 ...` selecting atoms rows of `host` (if not empty) whose
/// global path lies after `after` (a SQL expression, exclusive) or from
/// `lower` (a bound value, inclusive, if not empty) and before `upper`.
/// Appends nothing if there is no condition.
fn push_path_walk_filter(
    qb: &mut QueryBuilder<Sqlite>,
    host: &str,
    after: Option<&str>,
    lower: &str,
    upper: Option<&str>,
) {
    let mut conds = qb.separated(" AND ");
    if !host.is_empty() {
        conds.push("host = ").push_bind_unseparated(host.to_owned());
    }
    if let Some(expr) = after {
        conds.push("global_path > ").push_unseparated(expr);
    } else if !lower.is_empty() {
        conds
            .push("global_path >= ")
            .push_bind_unseparated(lower.to_owned());
    }
    if let Some(upper) = upper {
        conds
            .push("global_path < ")
            .push_bind_unseparated(upper.to_owned());
    }
}

/// Append the find query for `req` (whose pattern parsed as `pattern`) to
/// `qb`. Columns: backup id, host, timestamp, the eight dataset columns of
/// [`dataset_from_row`], atom name, atom path; ordered newest backup first,
/// then by dataset source, name and id, then atom name.
///
/// Two shapes, both starting from an index on the global path:
///
/// - all versions (`num_versions` 0): one range (or equality) scan of
///   `atoms` by `(global_path, timestamp)` or `(host, global_path,
///   timestamp)`, filtered by `GLOB`, host and time;
/// - the newest N versions: ranking every matching row (a window
///   function) would read all versions of every path in the prefix range,
///   100 times the result for 100 backups. Instead a recursive CTE walks
///   the distinct paths of the range through the index (one seek per path:
///   a "loose index scan"), keeps those that match the pattern, and takes
///   each path's newest N rows with an index seek and `LIMIT`.
fn push_find_query(qb: &mut QueryBuilder<Sqlite>, pattern: &Pattern, req: &FindRequest) {
    let cond = pattern.condition();
    if req.num_versions > 0 {
        qb.push("WITH RECURSIVE paths(p) AS (");
        match &cond {
            PathCondition::Equals(path) => {
                qb.push("SELECT ").push_bind(path.clone());
            }
            PathCondition::Glob { lower, upper, .. } => {
                qb.push("SELECT (SELECT global_path FROM atoms");
                let upper = upper.as_deref();
                if !req.host.is_empty() || !lower.is_empty() || upper.is_some() {
                    qb.push(" WHERE ");
                    push_path_walk_filter(qb, &req.host, None, lower, upper);
                }
                qb.push(
                    " ORDER BY global_path LIMIT 1) \
                     UNION ALL SELECT (SELECT global_path FROM atoms WHERE ",
                );
                push_path_walk_filter(qb, &req.host, Some("paths.p"), lower, upper);
                qb.push(" ORDER BY global_path LIMIT 1) FROM paths WHERE paths.p IS NOT NULL");
            }
        }
        qb.push(
            "), matched AS (SELECT a.backup_id, a.dataset_id, a.name, a.path, a.host, \
             a.timestamp FROM paths JOIN atoms a ON a.rowid IN (SELECT rowid FROM atoms \
             WHERE global_path = paths.p",
        );
        if !req.host.is_empty() {
            qb.push(" AND host = ").push_bind(req.host.clone());
        }
        if let Some(t) = req.older_than {
            qb.push(" AND timestamp < ").push_bind(t.timestamp_micros());
        }
        qb.push(" ORDER BY timestamp DESC, backup_id, dataset_id LIMIT ")
            .push_bind(req.num_versions)
            .push(")");
        if let PathCondition::Glob { pattern, .. } = &cond {
            qb.push(" WHERE paths.p GLOB ").push_bind(pattern.clone());
        }
    } else {
        qb.push("WITH matched AS (SELECT backup_id, dataset_id, name, path, host, timestamp FROM atoms WHERE ");
        match &cond {
            PathCondition::Equals(path) => {
                qb.push("global_path = ").push_bind(path.clone());
            }
            PathCondition::Glob {
                lower,
                upper,
                pattern,
            } => {
                if !lower.is_empty() {
                    qb.push("global_path >= ")
                        .push_bind(lower.clone())
                        .push(" AND ");
                }
                if let Some(upper) = upper {
                    qb.push("global_path < ")
                        .push_bind(upper.clone())
                        .push(" AND ");
                }
                qb.push("global_path GLOB ").push_bind(pattern.clone());
            }
        }
        if !req.host.is_empty() {
            qb.push(" AND host = ").push_bind(req.host.clone());
        }
        if let Some(t) = req.older_than {
            qb.push(" AND timestamp < ").push_bind(t.timestamp_micros());
        }
    }
    qb.push(
        ") SELECT m.backup_id, m.host, m.timestamp, \
         d.id, d.name, d.source, d.snapshot_id, d.total_files, d.total_bytes, d.bytes_added, \
         d.duration, m.name, m.path \
         FROM matched m JOIN datasets d ON d.backup_id = m.backup_id AND d.id = m.dataset_id \
         ORDER BY m.timestamp DESC, m.backup_id, d.source, d.name, d.id, m.name",
    );
}

#[async_trait]
impl MetadataStore for SqliteStore {
    async fn add_dataset(&self, backup: &Backup, dataset: &Dataset) -> Result<(), MetadataError> {
        validate_add(backup, dataset)?;
        let ts = backup.timestamp.timestamp_micros();
        // Take the write lock now: a deferred transaction that reads first
        // fails instead of waiting if another process writes in between.
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| self.db_error(e))?;

        let existing = sqlx::query("SELECT host, timestamp FROM backups WHERE id = ?")
            .bind(&backup.id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| self.db_error(e))?;
        match existing {
            Some(row) => {
                let host: String = row.try_get(0).map_err(|e| self.db_error(e))?;
                let stored_ts: i64 = row.try_get(1).map_err(|e| self.db_error(e))?;
                if host != backup.host || stored_ts != ts {
                    return Err(MetadataError::Conflict(format!(
                        "backup {:?} is already recorded with host {host:?} and timestamp {}, \
                         not host {:?} and timestamp {}",
                        backup.id,
                        self.timestamp(stored_ts)?.to_rfc3339(),
                        backup.host,
                        backup.timestamp.to_rfc3339(),
                    )));
                }
            }
            None => {
                sqlx::query("INSERT INTO backups (id, host, timestamp) VALUES (?, ?, ?)")
                    .bind(&backup.id)
                    .bind(&backup.host)
                    .bind(ts)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| self.db_error(e))?;
            }
        }

        if let Some(stored) = self
            .stored_dataset(&mut tx, &backup.id, &dataset.id)
            .await?
        {
            let mut given = dataset.clone();
            given.atoms.sort_by(|a, b| a.name.cmp(&b.name));
            if stored != given {
                tracing::warn!(
                    database = %self.location,
                    backup = %backup.id,
                    dataset = %dataset.id,
                    "dataset already recorded with different contents; keeping the stored one"
                );
            }
            return Ok(());
        }

        sqlx::query(
            "INSERT INTO datasets (backup_id, id, name, source, snapshot_id, total_files, \
             total_bytes, bytes_added, duration) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&backup.id)
        .bind(&dataset.id)
        .bind(&dataset.name)
        .bind(&dataset.source)
        .bind(&dataset.snapshot_id)
        .bind(dataset.total_files)
        .bind(dataset.total_bytes)
        .bind(dataset.bytes_added)
        .bind(dataset.duration)
        .execute(&mut *tx)
        .await
        .map_err(|e| self.db_error(e))?;
        // Many rows per statement: each statement is a round trip to the
        // connection's worker thread.
        for chunk in dataset.atoms.chunks(ATOMS_PER_INSERT) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "INSERT INTO atoms (backup_id, dataset_id, name, path, global_path, host, \
                 timestamp) ",
            );
            qb.push_values(chunk, |mut row, atom| {
                row.push_bind(&backup.id)
                    .push_bind(&dataset.id)
                    .push_bind(&atom.name)
                    .push_bind(&atom.path)
                    .push_bind(atom_path(&dataset.source, &dataset.name, &atom.name))
                    .push_bind(&backup.host)
                    .push_bind(ts);
            });
            qb.build()
                .execute(&mut *tx)
                .await
                .map_err(|e| self.db_error(e))?;
        }
        tx.commit().await.map_err(|e| self.db_error(e))?;
        tracing::debug!(
            database = %self.location,
            backup = %backup.id,
            dataset = %dataset.id,
            atoms = dataset.atoms.len(),
            "dataset recorded"
        );
        Ok(())
    }

    async fn find_atoms(&self, req: &FindRequest) -> Result<Vec<Backup>, MetadataError> {
        let pattern = Pattern::parse(&req.pattern)
            .map_err(|e| MetadataError::BadRequest(format!("pattern {:?}: {e}", req.pattern)))?;
        if req.num_versions < 0 {
            return Err(MetadataError::BadRequest(format!(
                "num_versions is {}: give 0 for all versions or a positive count",
                req.num_versions
            )));
        }
        let mut qb = QueryBuilder::new("");
        push_find_query(&mut qb, &pattern, req);
        let rows = qb
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.db_error(e))?;

        let mut backups: Vec<Backup> = Vec::new();
        for row in &rows {
            let backup_id: String = row.try_get(0).map_err(|e| self.db_error(e))?;
            let mut dataset = dataset_from_row(row, 3).map_err(|e| self.db_error(e))?;
            let atom = Atom {
                name: row.try_get(11).map_err(|e| self.db_error(e))?,
                path: row.try_get(12).map_err(|e| self.db_error(e))?,
            };
            let index = match backups.last() {
                Some(b) if b.id == backup_id => backups.len() - 1,
                _ => {
                    backups.push(Backup {
                        id: backup_id,
                        host: row.try_get(1).map_err(|e| self.db_error(e))?,
                        timestamp: self.timestamp(row.try_get(2).map_err(|e| self.db_error(e))?)?,
                        datasets: Vec::new(),
                    });
                    backups.len() - 1
                }
            };
            let backup = &mut backups[index];
            match backup.datasets.last_mut() {
                Some(d) if d.id == dataset.id => d.atoms.push(atom),
                _ => {
                    dataset.atoms.push(atom);
                    backup.datasets.push(dataset);
                }
            }
        }
        Ok(backups)
    }

    async fn update_active_job_status(
        &self,
        req: &UpdateActiveJobStatusRequest,
    ) -> Result<(), MetadataError> {
        require("host", &req.host)?;
        no_nul("host", &req.host)?;
        let jobs = serde_json::to_string(&req.active_jobs)
            .map_err(|e| MetadataError::BadRequest(format!("jobs of host {:?}: {e}", req.host)))?;
        // Store only what active_jobs() can read back (a NaN progress
        // would be written as null and poison the host's entry).
        serde_json::from_str::<Vec<JobStatus>>(&jobs).map_err(|e| {
            MetadataError::BadRequest(format!(
                "jobs of host {:?} cannot be stored faithfully: {e}",
                req.host
            ))
        })?;
        sqlx::query(
            "INSERT INTO active_jobs (host, received, jobs) VALUES (?, ?, ?) \
             ON CONFLICT (host) DO UPDATE SET received = excluded.received, jobs = excluded.jobs",
        )
        .bind(&req.host)
        .bind(Utc::now().timestamp_micros())
        .bind(jobs)
        .execute(&self.pool)
        .await
        .map_err(|e| self.db_error(e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::Connection;
    use tempfile::TempDir;

    async fn store() -> (TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("sub/dir/meta.db"))
            .await
            .unwrap();
        (dir, s)
    }

    fn ts(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn backup(id: &str, host: &str, t: &str) -> Backup {
        Backup {
            id: id.into(),
            timestamp: ts(t),
            host: host.into(),
            datasets: Vec::new(),
        }
    }

    fn dataset(id: &str, source: &str, name: &str, atoms: &[&str]) -> Dataset {
        Dataset {
            id: id.into(),
            name: name.into(),
            source: source.into(),
            atoms: atoms
                .iter()
                .map(|a| Atom {
                    name: (*a).into(),
                    path: String::new(),
                })
                .collect(),
            snapshot_id: format!("snap-{id}"),
            total_files: 10,
            total_bytes: 2000,
            bytes_added: 300,
            duration: 4,
        }
    }

    fn find(pattern: &str) -> FindRequest {
        FindRequest {
            pattern: pattern.into(),
            ..FindRequest::default()
        }
    }

    /// `backup_id:source/dataset/atom` for every atom returned, in order.
    fn flat(backups: &[Backup]) -> Vec<String> {
        backups
            .iter()
            .flat_map(|b| {
                b.datasets.iter().flat_map(move |d| {
                    d.atoms.iter().map(move |a| {
                        format!("{}:{}", b.id, atom_path(&d.source, &d.name, &a.name))
                    })
                })
            })
            .collect()
    }

    async fn counts(s: &SqliteStore) -> (i64, i64, i64) {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM backups), (SELECT COUNT(*) FROM datasets), \
             (SELECT COUNT(*) FROM atoms)",
        )
        .fetch_one(&s.pool)
        .await
        .unwrap();
        (row.get(0), row.get(1), row.get(2))
    }

    /// Host h1: backups b1 < b2 < b3, each with mysql/db {site1, site2} and
    /// files/home {alice/docs, bob}; host h2: c1 (between b2 and b3) with
    /// mysql/db {site1, site10}.
    async fn fleet() -> (TempDir, SqliteStore) {
        let (dir, s) = store().await;
        for (i, (id, t)) in [
            ("b1", "2026-01-01T00:00:00Z"),
            ("b2", "2026-01-02T00:00:00Z"),
            ("b3", "2026-01-03T00:00:00Z"),
        ]
        .into_iter()
        .enumerate()
        {
            let b = backup(id, "h1", t);
            s.add_dataset(
                &b,
                &dataset(&format!("m{i}"), "mysql", "db", &["site1", "site2"]),
            )
            .await
            .unwrap();
            s.add_dataset(
                &b,
                &dataset(&format!("f{i}"), "files", "home", &["alice/docs", "bob"]),
            )
            .await
            .unwrap();
        }
        let c = backup("c1", "h2", "2026-01-02T12:00:00Z");
        s.add_dataset(&c, &dataset("mc", "mysql", "db", &["site1", "site10"]))
            .await
            .unwrap();
        (dir, s)
    }

    #[tokio::test]
    async fn add_then_find_round_trips_every_field() {
        let (_dir, s) = store().await;
        let b = backup("bk-1", "host-a", "2026-03-04T05:06:07.123456Z");
        let mut d = Dataset {
            id: "ds-1".into(),
            name: "home".into(),
            source: "files".into(),
            atoms: vec![
                Atom {
                    name: "bob".into(),
                    path: "home/bob".into(),
                },
                Atom {
                    name: "alice".into(),
                    path: "home/alice".into(),
                },
            ],
            snapshot_id: "a".repeat(64),
            total_files: 123,
            total_bytes: 1 << 40,
            bytes_added: 98765,
            duration: 42,
        };
        s.add_dataset(&b, &d).await.unwrap();
        let got = s.find_atoms(&find("files/home/*")).await.unwrap();
        d.atoms.sort_by(|x, y| x.name.cmp(&y.name));
        let mut want = b.clone();
        want.datasets = vec![d];
        assert_eq!(got, vec![want]);
    }

    #[tokio::test]
    async fn timestamps_keep_microseconds_and_truncate_below() {
        let (_dir, s) = store().await;
        let b = backup("b", "h", "2026-03-04T05:06:07.123456789Z");
        s.add_dataset(&b, &dataset("d", "s", "n", &["a"]))
            .await
            .unwrap();
        let got = s.find_atoms(&find("s/n/a")).await.unwrap();
        assert_eq!(got[0].timestamp, ts("2026-03-04T05:06:07.123456Z"));
        // A retry with the same nanosecond timestamp is the same backup.
        s.add_dataset(&b, &dataset("d2", "s", "n2", &["a"]))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn re_adding_a_dataset_changes_nothing() {
        let (_dir, s) = store().await;
        let b = backup("b1", "h1", "2026-01-01T00:00:00Z");
        let d = dataset("d1", "mysql", "db", &["x", "y"]);
        s.add_dataset(&b, &d).await.unwrap();
        s.add_dataset(&b, &d).await.unwrap();
        assert_eq!(counts(&s).await, (1, 1, 2));
        // Same keys, different contents: still a success, stored one kept.
        let other = dataset("d1", "mysql", "db", &["x", "y", "z"]);
        s.add_dataset(&b, &other).await.unwrap();
        assert_eq!(counts(&s).await, (1, 1, 2));
        // Another dataset of the same backup reuses the backup row.
        s.add_dataset(&b, &dataset("d2", "files", "home", &["x"]))
            .await
            .unwrap();
        assert_eq!(counts(&s).await, (1, 2, 3));
        let got = s.find_atoms(&find("*")).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].datasets.len(), 2);
    }

    #[tokio::test]
    async fn large_datasets_are_stored_whole() {
        let (_dir, s) = store().await;
        let names: Vec<String> = (0..2 * ATOMS_PER_INSERT + 50)
            .map(|i| format!("a{i:04}"))
            .collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let b = backup("b", "h", "2026-01-01T00:00:00Z");
        s.add_dataset(&b, &dataset("d", "s", "n", &refs))
            .await
            .unwrap();
        let n = refs.len() as i64;
        assert_eq!(counts(&s).await, (1, 1, n));
        let got = s.find_atoms(&find("s/n/a*")).await.unwrap();
        let atoms: Vec<&str> = got[0].datasets[0]
            .atoms
            .iter()
            .map(|a| a.name.as_str())
            .collect();
        assert_eq!(atoms, refs);
        // A duplicate in the last chunk rolls back the whole dataset.
        let mut dup = refs.clone();
        dup[0] = "a0000x";
        dup.push("a0000x");
        let err = s
            .add_dataset(&b, &dataset("d2", "s", "n", &dup))
            .await
            .unwrap_err();
        assert!(matches!(err, MetadataError::BadRequest(_)), "{err}");
        assert_eq!(counts(&s).await, (1, 1, n));
    }

    #[tokio::test]
    async fn known_backup_with_other_host_or_time_is_a_conflict() {
        let (_dir, s) = store().await;
        let b = backup("b1", "h1", "2026-01-01T00:00:00Z");
        s.add_dataset(&b, &dataset("d1", "s", "n", &["a"]))
            .await
            .unwrap();
        let other_host = backup("b1", "h2", "2026-01-01T00:00:00Z");
        let err = s
            .add_dataset(&other_host, &dataset("d2", "s", "n", &["a"]))
            .await
            .unwrap_err();
        assert!(matches!(err, MetadataError::Conflict(_)), "{err}");
        let other_time = backup("b1", "h1", "2026-01-01T00:00:01Z");
        let err = s
            .add_dataset(&other_time, &dataset("d2", "s", "n", &["a"]))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("already recorded"), "{err}");
        assert_eq!(counts(&s).await, (1, 1, 1));
    }

    #[tokio::test]
    async fn add_rejects_missing_fields_and_duplicate_atoms() {
        let (_dir, s) = store().await;
        let b = backup("b1", "h1", "2026-01-01T00:00:00Z");
        let d = dataset("d1", "s", "n", &["a"]);
        let cases: Vec<(Backup, Dataset, &str)> = vec![
            (
                backup("", "h1", "2026-01-01T00:00:00Z"),
                d.clone(),
                "backup id",
            ),
            (
                backup("b1", "", "2026-01-01T00:00:00Z"),
                d.clone(),
                "backup host",
            ),
            (b.clone(), dataset("", "s", "n", &["a"]), "dataset id"),
            (b.clone(), dataset("d1", "s", "n", &["a", ""]), "atom name"),
            (
                b.clone(),
                dataset("d1", "s", "n", &["a", "b", "a"]),
                "twice",
            ),
            (b.clone(), dataset("d1", "s", "n", &["a\0b"]), "NUL"),
        ];
        for (b, d, what) in cases {
            match s.add_dataset(&b, &d).await {
                Err(MetadataError::BadRequest(msg)) => assert!(msg.contains(what), "{msg}"),
                other => panic!("{what}: expected BadRequest, got {other:?}"),
            }
        }
        assert_eq!(counts(&s).await, (0, 0, 0));
    }

    #[tokio::test]
    async fn find_literal_returns_every_version_newest_first() {
        let (_dir, s) = fleet().await;
        let got = s.find_atoms(&find("mysql/db/site1")).await.unwrap();
        assert_eq!(
            flat(&got),
            [
                "b3:mysql/db/site1",
                "c1:mysql/db/site1",
                "b2:mysql/db/site1",
                "b1:mysql/db/site1"
            ]
        );
        for pair in got.windows(2) {
            assert!(pair[0].timestamp > pair[1].timestamp);
        }
        // Only the matching dataset, with all its stored fields.
        assert_eq!(got[0].datasets.len(), 1);
        let d = &got[0].datasets[0];
        assert_eq!(
            (
                d.id.as_str(),
                d.snapshot_id.as_str(),
                d.total_files,
                d.total_bytes
            ),
            ("m2", "snap-m2", 10, 2000)
        );
        assert_eq!((d.bytes_added, d.duration), (300, 4));
        assert_eq!(got[1].host, "h2");
        assert!(
            s.find_atoms(&find("mysql/db/site"))
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            s.find_atoms(&find("MYSQL/db/site1"))
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn find_prefix_glob_returns_only_matching_datasets_and_atoms() {
        let (_dir, s) = fleet().await;
        let got = s.find_atoms(&find("files/*")).await.unwrap();
        assert_eq!(
            flat(&got),
            [
                "b3:files/home/alice/docs",
                "b3:files/home/bob",
                "b2:files/home/alice/docs",
                "b2:files/home/bob",
                "b1:files/home/alice/docs",
                "b1:files/home/bob",
            ]
        );
        assert!(got.iter().all(|b| b.datasets.len() == 1));
        // No backup without a match (c1 has no files dataset).
        assert!(got.iter().all(|b| b.id != "c1"));
        let got = s.find_atoms(&find("files/home/b*")).await.unwrap();
        assert_eq!(
            flat(&got),
            [
                "b3:files/home/bob",
                "b2:files/home/bob",
                "b1:files/home/bob"
            ]
        );
        assert_eq!(got[0].datasets[0].atoms.len(), 1);
    }

    #[tokio::test]
    async fn find_question_mark_class_and_star_across_slashes() {
        let (_dir, s) = fleet().await;
        let req = FindRequest {
            host: "h2".into(),
            ..find("mysql/db/site?")
        };
        assert_eq!(
            flat(&s.find_atoms(&req).await.unwrap()),
            ["c1:mysql/db/site1"]
        );
        let req = FindRequest {
            num_versions: 1,
            ..find("mysql/db/site[2-9]")
        };
        assert_eq!(
            flat(&s.find_atoms(&req).await.unwrap()),
            ["b3:mysql/db/site2"]
        );
        let req = FindRequest {
            num_versions: 1,
            ..find("*/[ab]*")
        };
        // Matches home/alice/docs via '*' spanning "files/home" and "lice/docs".
        assert_eq!(
            flat(&s.find_atoms(&req).await.unwrap()),
            ["b3:files/home/alice/docs", "b3:files/home/bob"]
        );
        let req = FindRequest {
            num_versions: 1,
            ..find("f*docs")
        };
        assert_eq!(
            flat(&s.find_atoms(&req).await.unwrap()),
            ["b3:files/home/alice/docs"]
        );
        let req = FindRequest {
            host: "h2".into(),
            ..find("*")
        };
        assert_eq!(
            flat(&s.find_atoms(&req).await.unwrap()),
            ["c1:mysql/db/site1", "c1:mysql/db/site10"]
        );
    }

    #[tokio::test]
    async fn find_host_and_older_than_filters() {
        let (_dir, s) = fleet().await;
        let req = FindRequest {
            host: "h1".into(),
            ..find("mysql/db/site1")
        };
        assert_eq!(
            flat(&s.find_atoms(&req).await.unwrap()),
            [
                "b3:mysql/db/site1",
                "b2:mysql/db/site1",
                "b1:mysql/db/site1"
            ]
        );
        let req = FindRequest {
            host: "nope".into(),
            ..find("*")
        };
        assert!(s.find_atoms(&req).await.unwrap().is_empty());
        // Strictly before: b2's own timestamp excludes b2.
        let req = FindRequest {
            older_than: Some(ts("2026-01-02T00:00:00Z")),
            ..find("mysql/db/site1")
        };
        assert_eq!(
            flat(&s.find_atoms(&req).await.unwrap()),
            ["b1:mysql/db/site1"]
        );
        let req = FindRequest {
            older_than: Some(ts("2026-01-02T00:00:00.000001Z")),
            ..find("mysql/db/site1")
        };
        assert_eq!(
            flat(&s.find_atoms(&req).await.unwrap()),
            ["b2:mysql/db/site1", "b1:mysql/db/site1"]
        );
    }

    #[tokio::test]
    async fn find_num_versions_keeps_newest_per_atom() {
        let (_dir, s) = fleet().await;
        let req = FindRequest {
            num_versions: 1,
            ..find("mysql/*")
        };
        assert_eq!(
            flat(&s.find_atoms(&req).await.unwrap()),
            [
                "b3:mysql/db/site1",
                "b3:mysql/db/site2",
                "c1:mysql/db/site10"
            ]
        );
        let req = FindRequest {
            num_versions: 2,
            ..find("mysql/*")
        };
        assert_eq!(
            flat(&s.find_atoms(&req).await.unwrap()),
            [
                "b3:mysql/db/site1",
                "b3:mysql/db/site2",
                "c1:mysql/db/site1",
                "c1:mysql/db/site10",
                "b2:mysql/db/site2",
            ]
        );
        // Versions are counted after the host and time filters.
        let req = FindRequest {
            num_versions: 1,
            host: "h1".into(),
            older_than: Some(ts("2026-01-03T00:00:00Z")),
            ..find("mysql/db/site1")
        };
        assert_eq!(
            flat(&s.find_atoms(&req).await.unwrap()),
            ["b2:mysql/db/site1"]
        );
        let req = FindRequest {
            num_versions: 100,
            ..find("mysql/db/site1")
        };
        assert_eq!(s.find_atoms(&req).await.unwrap().len(), 4);
    }

    #[tokio::test]
    async fn num_versions_agrees_with_filtering_all_versions() {
        let (_dir, s) = fleet().await;
        // A tie: another host's backup at b2's time holding the same path.
        s.add_dataset(
            &backup("a9", "h3", "2026-01-02T00:00:00Z"),
            &dataset("mt", "mysql", "db", &["site1", "site3"]),
        )
        .await
        .unwrap();
        let mut checked = 0;
        for pattern in [
            "*",
            "mysql/db/site1",
            "mysql/*",
            "*/site1*",
            "files/home/*",
            "[fm]*/[bd]*",
            "nothing*",
        ] {
            for host in ["", "h1", "h2", "h3"] {
                for older_than in [None, Some(ts("2026-01-02T00:00:00Z"))] {
                    let all = FindRequest {
                        pattern: pattern.into(),
                        host: host.into(),
                        num_versions: 0,
                        older_than,
                    };
                    let all_flat = flat(&s.find_atoms(&all).await.unwrap());
                    for n in 1..=3 {
                        let req = FindRequest {
                            num_versions: n,
                            ..all.clone()
                        };
                        // Keep the first n entries of each path, in the
                        // newest-first order of the full result.
                        let mut seen = std::collections::HashMap::new();
                        let want: Vec<String> = all_flat
                            .iter()
                            .filter(|e| {
                                let path = e.split_once(':').unwrap().1.to_owned();
                                let k = seen.entry(path).or_insert(0);
                                *k += 1;
                                *k <= n
                            })
                            .cloned()
                            .collect();
                        let got = s.find_atoms(&req).await.unwrap();
                        assert_eq!(flat(&got), want, "{req:?}");
                        checked += usize::from(want.len() < all_flat.len());
                    }
                }
            }
        }
        assert!(checked > 20, "only {checked} requests dropped versions");
    }

    #[tokio::test]
    async fn bad_find_requests_are_bad_requests() {
        let (_dir, s) = fleet().await;
        for req in [
            find(""),
            find("mysql/[db"),
            find("x[^]"),
            FindRequest {
                num_versions: -1,
                ..find("*")
            },
        ] {
            match s.find_atoms(&req).await {
                Err(MetadataError::BadRequest(msg)) => assert!(!msg.is_empty()),
                other => panic!("{req:?}: expected BadRequest, got {other:?}"),
            }
        }
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
        plan.iter()
            .any(|l| l.starts_with("SEARCH atoms USING") && l.contains("INDEX atoms_"))
    }

    #[tokio::test]
    async fn find_query_plan_uses_an_atoms_index() {
        let (_dir, s) = fleet().await;
        for req in [
            find("mysql/db/site1"),
            find("host1*/mysql/*"),
            FindRequest {
                num_versions: 1,
                ..find("mysql/db/site1")
            },
            FindRequest {
                num_versions: 1,
                older_than: Some(ts("2026-01-03T00:00:00Z")),
                ..find("host1*/mysql/*")
            },
            FindRequest {
                host: "h1".into(),
                ..find("mysql/*")
            },
            FindRequest {
                host: "h1".into(),
                num_versions: 1,
                ..find("*")
            },
        ] {
            let plan = plan(&s, &req).await;
            assert!(!scans_atoms(&plan), "{req:?} scans atoms: {plan:#?}");
            assert!(searches_atoms_by_index(&plan), "{req:?}: {plan:#?}");
        }
        // The check can fail: a bare '*' without host has no index range.
        let plan = plan(&s, &find("*")).await;
        assert!(scans_atoms(&plan), "{plan:#?}");
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
        let mut seed: u64 = 0x5eed;
        let mut next = |n: usize| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) as usize) % n
        };
        let pat_chars = ['a', 'b', '/', '*', '?', '[', ']', '^', '-', 'é'];
        let text_chars = ['a', 'b', '/', '-', ']', '^', 'é', '*'];
        for _ in 0..400 {
            let plen = 1 + next(7);
            let p: String = (0..plen)
                .map(|_| pat_chars[next(pat_chars.len())])
                .collect();
            for _ in 0..12 {
                let tlen = next(6);
                let t: String = (0..tlen)
                    .map(|_| text_chars[next(text_chars.len())])
                    .collect();
                cases.push((p.clone(), t));
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
    async fn active_jobs_keeps_the_latest_report_per_host() {
        let (_dir, s) = store().await;
        let job = |host: &str, id: &str| JobStatus {
            host: host.into(),
            job_id: id.into(),
            backup_id: "b".into(),
            dataset_id: "d".into(),
            dataset_source: "src".into(),
            status: Some(crate::model::RunningJobStatus {
                percent_done: 0.5,
                current_files: vec!["/x".into()],
                ..Default::default()
            }),
        };
        let before = Utc::now();
        for jobs in [
            vec![job("h1", "j1")],
            vec![job("h1", "j2"), job("h1", "j3")],
        ] {
            s.update_active_job_status(&UpdateActiveJobStatusRequest {
                host: "h1".into(),
                active_jobs: jobs,
            })
            .await
            .unwrap();
        }
        s.update_active_job_status(&UpdateActiveJobStatusRequest {
            host: "h0".into(),
            active_jobs: vec![],
        })
        .await
        .unwrap();
        let got = s.active_jobs().await.unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].host.as_str(), got[0].jobs.len()), ("h0", 0));
        assert_eq!(got[1].host, "h1");
        assert_eq!(got[1].jobs, vec![job("h1", "j2"), job("h1", "j3")]);
        assert!(got[1].received >= before - chrono::Duration::microseconds(1));
        assert!(got[1].received <= Utc::now());

        let err = s
            .update_active_job_status(&UpdateActiveJobStatusRequest::default())
            .await
            .unwrap_err();
        assert!(matches!(err, MetadataError::BadRequest(_)), "{err}");
        let mut nan = job("h2", "j");
        if let Some(st) = nan.status.as_mut() {
            st.percent_done = f64::NAN;
        }
        let err = s
            .update_active_job_status(&UpdateActiveJobStatusRequest {
                host: "h2".into(),
                active_jobs: vec![nan],
            })
            .await
            .unwrap_err();
        assert!(matches!(err, MetadataError::BadRequest(_)), "{err}");
        assert_eq!(s.active_jobs().await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn hosts_lists_last_backup_per_host() {
        let (_dir, s) = fleet().await;
        assert_eq!(
            s.hosts().await.unwrap(),
            vec![
                HostSummary {
                    host: "h1".into(),
                    last_backup: ts("2026-01-03T00:00:00Z"),
                    backups: 3,
                },
                HostSummary {
                    host: "h2".into(),
                    last_backup: ts("2026-01-02T12:00:00Z"),
                    backups: 1,
                },
            ]
        );
        let (_dir2, empty) = store().await;
        assert!(empty.hosts().await.unwrap().is_empty());
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
        assert_eq!(counts(&a).await, (50, 50, 100));
        assert_eq!(counts(&b).await, (50, 50, 100));
        a.close().await;
        b.close().await;
        // Data survives reopening.
        let c = SqliteStore::open(&path).await.unwrap();
        assert_eq!(c.hosts().await.unwrap().len(), 2);
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
