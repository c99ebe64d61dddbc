//! What the SQLite and PostgreSQL stores share, written once, generic over
//! the sqlx database: both have the same tables and run the same queries,
//! so [`MetadataStore`] and [`ServerStore`] are implemented here for every
//! [`SqlStore`] (validation, the `add_dataset` transaction, verification
//! results, the server's listings), with queries built by a
//! [`QueryBuilder`] (which writes each backend's placeholders) and rows
//! decoded here.
//!
//! What a backend spells its own way is its [`Dialect`] (how a time is
//! stored, how a list of ids is matched, how a find answer carries its
//! atoms); what it does its own way are the [`SqlStore`] steps: how a
//! write transaction starts, how a dataset's atoms are inserted and
//! records removed, how paths are matched in `find_atoms`, how
//! running-jobs reports are written.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{
    ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, QueryBuilder, Row, Type,
};

use super::{
    FailedVerification, HostActiveJobs, HostSummary, MetadataError, MetadataStore, Recording,
    ServerStore, backup_id_chunks, check_owned, decode_report, jobs_json, state_json,
    truncate_micros, validate_add, validate_find, validate_get_verifications, validate_remove,
    validate_verifications,
};
use crate::glob::{PathCondition, Pattern};
use crate::model::{
    AddVerificationsRequest, Atom, AtomVersion, Backup, Dataset, FindRequest,
    GetVerificationsRequest, RemoveDatasetsRequest, UpdateActiveJobStatusRequest, Verification,
    VerifyResult,
};

/// How a backend spells what the shared SQL leaves open. Implemented for
/// `Sqlite` in `sqlite.rs` and `Postgres` in `postgres.rs`.
pub(crate) trait Dialect: Database {
    /// A time as the backend stores it (SQLite: INTEGER microseconds since
    /// the epoch; PostgreSQL: `timestamptz`).
    type Time: for<'q> Encode<'q, Self> + Type<Self> + Copy + Send;

    /// Put after a bound text literal that starts a query (PostgreSQL's
    /// `::text`; SQLite needs none).
    const LITERAL_CAST: &'static str;

    /// Backup ids in one [`Dialect::push_in`] list.
    const IDS_PER_QUERY: usize;

    /// Verification rows in one INSERT (7 parameters each).
    const VERIFICATIONS_PER_INSERT: usize;

    /// The aggregates of a `find_atoms` row's atoms ([`push_find_tail`]),
    /// read back by [`Dialect::atoms_at`].
    const ATOM_AGGREGATES: &'static [&'static str];

    /// `t` as stored (already truncated to microseconds).
    fn time(t: &DateTime<Utc>) -> Self::Time;

    /// Decode a stored time at column `i`.
    fn time_at(row: &Self::Row, i: usize) -> Result<DateTime<Utc>, sqlx::Error>;

    /// Decode a stored time that may be NULL at column `i`.
    fn opt_time_at(row: &Self::Row, i: usize) -> Result<Option<DateTime<Utc>>, sqlx::Error>;

    /// Append the condition that `column` is one of `ids`.
    fn push_in(qb: &mut QueryBuilder<Self>, column: &str, ids: &[String]);

    /// How many rows a statement changed.
    fn rows_affected(result: &Self::QueryResult) -> u64;

    /// Decode the atoms of a `find_atoms` row from its
    /// [`Dialect::ATOM_AGGREGATES`] starting at column `at`.
    fn atoms_at(row: &Self::Row, at: usize) -> Result<Vec<Atom>, sqlx::Error>;
}

/// A store on an SQL database (the SQLite and the PostgreSQL store): its
/// pool, its [`Dialect`], and the steps it takes its own way. Every such
/// store is a [`MetadataStore`] and a [`ServerStore`] through the
/// implementations below, which hold everything else once.
#[async_trait]
pub(crate) trait SqlStore: Send + Sync {
    /// Its database.
    type DB: Dialect;

    /// Its connection pool.
    fn pool(&self) -> &Pool<Self::DB>;

    /// A database error, naming the database.
    fn db_error(&self, source: sqlx::Error) -> MetadataError;

    /// The database, for log lines (a file path, or a URL without
    /// password).
    fn location(&self) -> &str;

    /// Start a write transaction (SQLite: behind this process's other
    /// writers, holding the write lock from the start).
    async fn begin_write(&self) -> Result<WriteTx<'_, Self::DB>, MetadataError>;

    /// Insert the atom rows of a dataset just inserted (`time`: the
    /// backup's start, truncated to microseconds).
    async fn insert_atoms(
        &self,
        conn: &mut <Self::DB as Database>::Connection,
        backup: &Backup,
        dataset: &Dataset,
        time: DateTime<Utc>,
    ) -> Result<(), sqlx::Error>;

    /// Delete the dataset records of `req.host` named in `req` (a checked,
    /// non-empty request) and the backups left without datasets; returns
    /// how many dataset records were deleted.
    async fn delete_datasets(
        &self,
        conn: &mut <Self::DB as Database>::Connection,
        req: &RemoveDatasetsRequest,
    ) -> Result<i64, sqlx::Error>;

    /// The find query for `req`, whose pattern parsed as `pattern`, ending
    /// in [`push_find_tail`]; `None` when nothing can match.
    fn find_query(&self, pattern: &Pattern, req: &FindRequest) -> Option<QueryBuilder<Self::DB>>;

    /// Store a checked running-jobs report (`jobs` and `state` as JSON).
    async fn store_report(
        &self,
        host: &str,
        jobs: String,
        state: String,
    ) -> Result<(), MetadataError>;
}

/// A write transaction of a [`SqlStore`]; dropped without
/// [`WriteTx::commit`], it rolls back.
pub(crate) struct WriteTx<'a, DB: Database> {
    /// The transaction (dropped first: rolled back before the writer
    /// lock is released).
    pub(crate) tx: sqlx::Transaction<'a, DB>,
    /// This process's writer lock, where the store has one.
    pub(crate) _writer: Option<tokio::sync::MutexGuard<'a, ()>>,
}

impl<DB: Database> WriteTx<'_, DB> {
    /// Commit.
    pub(crate) async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}

#[async_trait]
impl<S> MetadataStore for S
where
    S: SqlStore,
    for<'c> &'c mut <S::DB as Database>::Connection: Executor<'c, Database = S::DB>,
    <S::DB as Database>::Arguments: IntoArguments<S::DB>,
    usize: ColumnIndex<<S::DB as Database>::Row>,
    String: for<'r> Decode<'r, S::DB> + for<'q> Encode<'q, S::DB> + Type<S::DB>,
    Option<String>: for<'q> Encode<'q, S::DB>,
    Option<<S::DB as Dialect>::Time>: for<'q> Encode<'q, S::DB>,
    i64: for<'r> Decode<'r, S::DB> + for<'q> Encode<'q, S::DB> + Type<S::DB>,
{
    async fn add_dataset(&self, backup: &Backup, dataset: &Dataset) -> Result<(), MetadataError> {
        validate_add(backup, dataset)?;
        let time = truncate_micros(&backup.timestamp);
        let err = |e| self.db_error(e);
        let mut w = self.begin_write().await?;
        // Insert-or-keep, then compare: a concurrent insert of the same
        // backup makes this wait for it instead of failing.
        let mut qb = QueryBuilder::new("INSERT INTO backups (id, host, timestamp) ");
        qb.push_values([backup], |mut row, b| {
            row.push_bind(b.id.clone())
                .push_bind(b.host.clone())
                .push_bind(S::DB::time(&time));
        });
        qb.push(" ON CONFLICT (id) DO NOTHING");
        qb.build().execute(&mut *w.tx).await.map_err(err)?;
        let mut qb = QueryBuilder::new("SELECT host, timestamp FROM backups WHERE id = ");
        qb.push_bind(backup.id.clone());
        let row = qb.build().fetch_one(&mut *w.tx).await.map_err(err)?;
        let host: String = row.try_get(0).map_err(err)?;
        let stored_time = S::DB::time_at(&row, 1).map_err(err)?;
        if host != backup.host || stored_time != time {
            return Err(backup_conflict(backup, &host, &stored_time));
        }

        let mut qb = QueryBuilder::new("");
        push_dataset_insert(&mut qb, &backup.id, dataset);
        qb.push(" ON CONFLICT (backup_id, id) DO NOTHING");
        let result = qb.build().execute(&mut *w.tx).await.map_err(err)?;
        if S::DB::rows_affected(&result) == 0 {
            let stored = stored_dataset::<S::DB>(&mut w.tx, &backup.id, &dataset.id).await;
            if let Some(stored) = stored.map_err(err)? {
                warn_if_changed(self.location(), backup, dataset, &stored);
            }
            return Ok(());
        }
        self.insert_atoms(&mut w.tx, backup, dataset, time)
            .await
            .map_err(err)?;
        w.commit().await.map_err(err)?;
        tracing::debug!(
            database = %self.location(),
            backup = %backup.id,
            dataset = %dataset.id,
            atoms = dataset.atoms.len(),
            "dataset recorded"
        );
        Ok(())
    }

    async fn remove_datasets(&self, req: &RemoveDatasetsRequest) -> Result<i64, MetadataError> {
        validate_remove(req)?;
        if req.datasets.is_empty() {
            return Ok(0);
        }
        let err = |e| self.db_error(e);
        let mut w = self.begin_write().await?;
        let removed = self.delete_datasets(&mut w.tx, req).await.map_err(err)?;
        w.commit().await.map_err(err)?;
        tracing::debug!(database = %self.location(), host = %req.host, removed, "dataset records removed");
        Ok(removed)
    }

    async fn find_atoms(&self, req: &FindRequest) -> Result<Vec<Backup>, MetadataError> {
        let pattern = validate_find(req)?;
        let Some(qb) = self.find_query(&pattern, req) else {
            return Ok(Vec::new());
        };
        let found = fetch_decoded(self, qb, found_from_row::<S::DB>).await?;
        Ok(group_backups(found))
    }

    async fn update_active_job_status(
        &self,
        req: &UpdateActiveJobStatusRequest,
    ) -> Result<(), MetadataError> {
        let jobs = jobs_json(req)?;
        let state = state_json(req)?;
        self.store_report(&req.host, jobs, state).await
    }

    async fn add_verifications(
        &self,
        req: &AddVerificationsRequest,
    ) -> Result<Recording, MetadataError> {
        let results = validate_verifications(req)?;
        let err = |e| self.db_error(e);
        let mut w = self.begin_write().await?;
        record_verifications::<S::DB>(&mut w.tx, &req.host, &results, err).await?;
        w.commit().await.map_err(err)?;
        tracing::debug!(database = %self.location(), host = %req.host, results = results.len(), "verifications recorded");
        Ok(Recording::Stored)
    }

    async fn get_verifications(
        &self,
        req: &GetVerificationsRequest,
    ) -> Result<Vec<Verification>, MetadataError> {
        validate_get_verifications(req)?;
        let err = |e| self.db_error(e);
        let mut conn = self.pool().acquire().await.map_err(err)?;
        let stored = stored_verifications::<S::DB>(&mut conn, &req.versions).await;
        stored.map_err(err)
    }
}

/// Run the query `qb` on the store's pool.
async fn fetch_rows<S>(
    store: &S,
    mut qb: QueryBuilder<S::DB>,
) -> Result<Vec<<S::DB as Database>::Row>, MetadataError>
where
    S: SqlStore,
    for<'c> &'c mut <S::DB as Database>::Connection: Executor<'c, Database = S::DB>,
    <S::DB as Database>::Arguments: IntoArguments<S::DB>,
{
    let rows = qb.build().fetch_all(store.pool()).await;
    rows.map_err(|e| store.db_error(e))
}

/// Run the query `qb` on the store's pool and decode every row.
async fn fetch_decoded<S, T>(
    store: &S,
    qb: QueryBuilder<S::DB>,
    decode: impl Fn(&<S::DB as Database>::Row) -> Result<T, sqlx::Error>,
) -> Result<Vec<T>, MetadataError>
where
    S: SqlStore,
    for<'c> &'c mut <S::DB as Database>::Connection: Executor<'c, Database = S::DB>,
    <S::DB as Database>::Arguments: IntoArguments<S::DB>,
{
    let rows = fetch_rows(store, qb).await?;
    let decoded = rows.iter().map(decode).collect::<Result<_, _>>();
    decoded.map_err(|e| store.db_error(e))
}

/// The `limit` newest backups (of `host` only, when given), newest first,
/// each with its datasets.
async fn newest_backups<S>(
    store: &S,
    host: Option<&str>,
    limit: i64,
) -> Result<Vec<Backup>, MetadataError>
where
    S: SqlStore,
    for<'c> &'c mut <S::DB as Database>::Connection: Executor<'c, Database = S::DB>,
    <S::DB as Database>::Arguments: IntoArguments<S::DB>,
    usize: ColumnIndex<<S::DB as Database>::Row>,
    String: for<'r> Decode<'r, S::DB> + for<'q> Encode<'q, S::DB> + Type<S::DB>,
    i64: for<'r> Decode<'r, S::DB> + for<'q> Encode<'q, S::DB> + Type<S::DB>,
{
    let mut qb = QueryBuilder::new("");
    push_recent_backups(&mut qb, host, limit);
    let rows = fetch_rows(store, qb).await?;
    backups_from_rows::<S::DB>(&rows).map_err(|e| store.db_error(e))
}

#[async_trait]
impl<S> ServerStore for S
where
    S: SqlStore,
    for<'c> &'c mut <S::DB as Database>::Connection: Executor<'c, Database = S::DB>,
    <S::DB as Database>::Arguments: IntoArguments<S::DB>,
    usize: ColumnIndex<<S::DB as Database>::Row>,
    String: for<'r> Decode<'r, S::DB> + for<'q> Encode<'q, S::DB> + Type<S::DB>,
    Option<String>: for<'q> Encode<'q, S::DB>,
    Option<<S::DB as Dialect>::Time>: for<'q> Encode<'q, S::DB>,
    i64: for<'r> Decode<'r, S::DB> + for<'q> Encode<'q, S::DB> + Type<S::DB>,
{
    async fn hosts(&self) -> Result<Vec<HostSummary>, MetadataError> {
        fetch_decoded(self, QueryBuilder::new(HOSTS_QUERY), host_from_row::<S::DB>).await
    }

    async fn active_jobs(&self) -> Result<Vec<HostActiveJobs>, MetadataError> {
        let qb = QueryBuilder::new(ACTIVE_JOBS_QUERY);
        fetch_decoded(self, qb, report_from_row::<S::DB>).await
    }

    async fn recent_backups(&self, limit: i64) -> Result<Vec<Backup>, MetadataError> {
        newest_backups(self, None, limit).await
    }

    async fn host_backups(&self, host: &str, limit: i64) -> Result<Vec<Backup>, MetadataError> {
        newest_backups(self, Some(host), limit).await
    }

    async fn failed_verifications(
        &self,
        host: Option<&str>,
        limit: i64,
    ) -> Result<Vec<FailedVerification>, MetadataError> {
        let mut qb = QueryBuilder::new("");
        push_failed_verifications(&mut qb, host, limit);
        fetch_decoded(self, qb, failed_verification_from_row::<S::DB>).await
    }

    /// Writes the health probe in a write transaction, the way every
    /// write goes.
    async fn ping(&self) -> Result<(), MetadataError> {
        let err = |e| self.db_error(e);
        let mut w = self.begin_write().await?;
        let mut qb = QueryBuilder::new("");
        push_health_probe(&mut qb);
        qb.build().execute(&mut *w.tx).await.map_err(err)?;
        w.commit().await.map_err(err)
    }

    /// Close the connections (SQLite checkpoints its WAL then).
    async fn close(&self) {
        self.pool().close().await;
    }
}

/// Rows in backups, datasets and atoms (for tests).
#[cfg(test)]
pub(crate) async fn counts<S>(store: &S) -> (i64, i64, i64)
where
    S: SqlStore,
    for<'c> &'c mut <S::DB as Database>::Connection: Executor<'c, Database = S::DB>,
    <S::DB as Database>::Arguments: IntoArguments<S::DB>,
    usize: ColumnIndex<<S::DB as Database>::Row>,
    i64: for<'r> Decode<'r, S::DB> + Type<S::DB>,
{
    let row = sqlx::query(
        "SELECT (SELECT COUNT(*) FROM backups), (SELECT COUNT(*) FROM datasets), \
         (SELECT COUNT(*) FROM atoms)",
    )
    .fetch_one(store.pool())
    .await
    .expect("count rows");
    (row.get(0), row.get(1), row.get(2))
}

/// A stored value that cannot be used, as a decoding error (the stores
/// report it with the database's location).
pub(crate) fn corrupt(detail: String) -> sqlx::Error {
    sqlx::Error::Decode(detail.into())
}

/// The dataset columns [`dataset_from_row`] decodes, in order, as a
/// literal for `concat!` (sqlx takes only static query text).
macro_rules! dataset_columns {
    () => {
        "id, name, source, snapshot_id, total_files, total_bytes, bytes_added, duration, \
         handler, repository_id"
    };
}

/// The atom columns [`atom_from_row`] decodes, in order, as a literal for
/// `concat!`.
macro_rules! atom_columns {
    () => {
        "name, path, snapshot_path, size, files, sha256"
    };
}

/// `dataset_columns!` of the table aliased `d`.
const D_DATASET_COLUMNS: &str = "d.id, d.name, d.source, d.snapshot_id, \
     d.total_files, d.total_bytes, d.bytes_added, d.duration, d.handler, d.repository_id";

/// How many columns [`dataset_from_row`] decodes.
const DATASET_COLUMN_COUNT: usize = 10;

/// Decode the dataset columns `dataset_columns!` starting at column `at`.
fn dataset_from_row<R>(row: &R, at: usize) -> Result<Dataset, sqlx::Error>
where
    R: Row,
    usize: ColumnIndex<R>,
    String: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    i64: for<'r> Decode<'r, R::Database> + Type<R::Database>,
{
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
        handler: row.try_get(at + 8)?,
        repository_id: row.try_get(at + 9)?,
    })
}

/// Decode the atom columns `atom_columns!` starting at column 0.
fn atom_from_row<R>(row: &R) -> Result<Atom, sqlx::Error>
where
    R: Row,
    usize: ColumnIndex<R>,
    String: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    i64: for<'r> Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(Atom {
        name: row.try_get(0)?,
        path: row.try_get(1)?,
        snapshot_path: row.try_get(2)?,
        size: row.try_get(3)?,
        files: row.try_get(4)?,
        sha256: row.try_get(5)?,
    })
}

/// Append `WITH RECURSIVE paths(p) AS (...)`: the distinct global paths
/// to look up for `cond`. A literal path is the one row (with the
/// dialect's [`Dialect::LITERAL_CAST`]); a glob walks the
/// distinct paths of `host` (if not empty) in the pattern's literal-prefix
/// range through an `atoms` index, one seek per path (a "loose index
/// scan"), ending with a NULL row. The caller keeps the paths that match
/// the pattern (`WHERE paths.p GLOB ...` or a regex).
pub(crate) fn push_matching_paths<DB>(qb: &mut QueryBuilder<DB>, cond: &PathCondition, host: &str)
where
    DB: Dialect,
    String: for<'q> Encode<'q, DB> + Type<DB>,
{
    qb.push("WITH RECURSIVE paths(p) AS (");
    match cond {
        PathCondition::Equals(path) => {
            qb.push("SELECT ")
                .push_bind(path.clone())
                .push(DB::LITERAL_CAST);
        }
        PathCondition::Glob { lower, upper, .. } => {
            qb.push("SELECT (SELECT global_path FROM atoms");
            let upper = upper.as_deref();
            if !host.is_empty() || !lower.is_empty() || upper.is_some() {
                qb.push(" WHERE ");
                push_path_walk_filter(qb, host, None, lower, upper);
            }
            qb.push(
                " ORDER BY global_path LIMIT 1) \
                 UNION ALL SELECT (SELECT global_path FROM atoms WHERE ",
            );
            push_path_walk_filter(qb, host, Some("paths.p"), lower, upper);
            qb.push(" ORDER BY global_path LIMIT 1) FROM paths WHERE paths.p IS NOT NULL");
        }
    }
    qb.push(")");
}

/// Append the conditions selecting `atoms` rows of `host` (if not empty)
/// whose global path lies after `after` (an SQL expression, exclusive) or
/// from `lower` (inclusive, if not empty), and before `upper`, joined by
/// `AND`. Appends nothing if there is no condition.
fn push_path_walk_filter<DB>(
    qb: &mut QueryBuilder<DB>,
    host: &str,
    after: Option<&str>,
    lower: &str,
    upper: Option<&str>,
) where
    DB: Database,
    String: for<'q> Encode<'q, DB> + Type<DB>,
{
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

/// Append the last stage of a `find_atoms` query, after a `matched` CTE of
/// atom rows (`backup_id, dataset_id, host, timestamp` and
/// `atom_columns!`): the matched atoms grouped into one row per dataset,
/// the dialect's [`Dialect::ATOM_AGGREGATES`] (e.g. one JSON array) giving
/// the atoms, joined with `datasets` once per
/// dataset, newest backup first. Columns: `backup_id, host, timestamp`,
/// the dataset columns of [`dataset_from_row`] from 3, then the
/// aggregates from [`FIND_AGGREGATES_AT`].
///
/// One row per dataset rather than per atom: a 10 000-atom answer of 100
/// datasets costs 100 dataset lookups and 100 rows through the driver,
/// not 10 000 (`bench/index_scale.sh`).
pub(crate) fn push_find_tail<DB: Dialect>(qb: &mut QueryBuilder<DB>) {
    let atoms_aggregates = DB::ATOM_AGGREGATES;
    qb.push(") SELECT m.backup_id, m.host, m.timestamp, ")
        .push(D_DATASET_COLUMNS);
    for i in 0..atoms_aggregates.len() {
        qb.push(format_args!(", m.agg{i}"));
    }
    qb.push(" FROM (SELECT backup_id, dataset_id, host, timestamp");
    for (i, aggregate) in atoms_aggregates.iter().enumerate() {
        qb.push(format_args!(", {aggregate} AS agg{i}"));
    }
    qb.push(
        " FROM matched GROUP BY backup_id, dataset_id, host, timestamp) m \
         JOIN datasets d ON d.backup_id = m.backup_id AND d.id = m.dataset_id \
         ORDER BY m.timestamp DESC, m.backup_id, d.source, d.name, d.id",
    );
}

/// The first aggregate column of a [`push_find_tail`] row.
const FIND_AGGREGATES_AT: usize = 3 + DATASET_COLUMN_COUNT;

/// One row of a `find_atoms` answer: a dataset with its matching atoms,
/// and the backup it belongs to.
struct FoundDataset {
    pub backup_id: String,
    pub host: String,
    pub timestamp: DateTime<Utc>,
    pub dataset: Dataset,
}

/// Group `find_atoms` rows, consecutive per backup (as [`push_find_tail`]
/// orders them), into backups; each dataset's atoms are sorted by name.
fn group_backups(rows: impl IntoIterator<Item = FoundDataset>) -> Vec<Backup> {
    let mut backups: Vec<Backup> = Vec::new();
    for mut row in rows {
        row.dataset
            .atoms
            .sort_unstable_by(|a, b| a.name.cmp(&b.name));
        match backups.last_mut() {
            Some(b) if b.id == row.backup_id => b.datasets.push(row.dataset),
            _ => backups.push(Backup {
                id: row.backup_id,
                host: row.host,
                timestamp: row.timestamp,
                datasets: vec![row.dataset],
            }),
        }
    }
    backups
}

/// Decode a `find_atoms` row of [`push_find_tail`].
fn found_from_row<DB>(row: &DB::Row) -> Result<FoundDataset, sqlx::Error>
where
    DB: Dialect,
    usize: ColumnIndex<DB::Row>,
    String: for<'r> Decode<'r, DB> + Type<DB>,
    i64: for<'r> Decode<'r, DB> + Type<DB>,
{
    let mut dataset = dataset_from_row(row, 3)?;
    dataset.atoms = DB::atoms_at(row, FIND_AGGREGATES_AT).map_err(|e| match e {
        sqlx::Error::Decode(detail) => {
            corrupt(format!("atoms of dataset {}: {detail}", dataset.id))
        }
        e => e,
    })?;
    Ok(FoundDataset {
        backup_id: row.try_get(0)?,
        host: row.try_get(1)?,
        timestamp: DB::time_at(row, 2)?,
        dataset,
    })
}

/// The error for a backup id recorded with another host or start time.
fn backup_conflict(
    backup: &Backup,
    stored_host: &str,
    stored_time: &DateTime<Utc>,
) -> MetadataError {
    MetadataError::Conflict(format!(
        "backup {:?} is already recorded with host {stored_host:?} and timestamp {}, \
         not host {:?} and timestamp {}",
        backup.id,
        stored_time.to_rfc3339(),
        backup.host,
        backup.timestamp.to_rfc3339(),
    ))
}

/// Log when a dataset sent again differs from the stored one (which is
/// kept: adding a known dataset changes nothing).
fn warn_if_changed(location: &str, backup: &Backup, given: &Dataset, stored: &Dataset) {
    let mut given = given.clone();
    given.atoms.sort_by(|a, b| a.name.cmp(&b.name));
    if *stored != given {
        tracing::warn!(
            database = %location,
            backup = %backup.id,
            dataset = %given.id,
            "dataset already recorded with different contents; keeping the stored one"
        );
    }
}

/// The stored dataset (with its atoms, by name) `dataset_id` of
/// `backup_id`, if any.
async fn stored_dataset<DB>(
    conn: &mut DB::Connection,
    backup_id: &str,
    dataset_id: &str,
) -> Result<Option<Dataset>, sqlx::Error>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    usize: ColumnIndex<DB::Row>,
    String: for<'r> Decode<'r, DB> + for<'q> Encode<'q, DB> + Type<DB>,
    i64: for<'r> Decode<'r, DB> + Type<DB>,
{
    let mut qb = QueryBuilder::new("");
    push_dataset_query(&mut qb, backup_id, dataset_id);
    let Some(row) = qb.build().fetch_optional(&mut *conn).await? else {
        return Ok(None);
    };
    let mut dataset = dataset_from_row(&row, 0)?;
    let mut qb = QueryBuilder::new("");
    push_dataset_atoms_query(&mut qb, backup_id, dataset_id);
    for row in qb.build().fetch_all(&mut *conn).await? {
        dataset.atoms.push(atom_from_row(&row)?);
    }
    Ok(Some(dataset))
}

/// Append the query for the dataset `dataset_id` of `backup_id`
/// (`dataset_columns!`).
fn push_dataset_query<DB>(qb: &mut QueryBuilder<DB>, backup_id: &str, dataset_id: &str)
where
    DB: Database,
    String: for<'q> Encode<'q, DB> + Type<DB>,
{
    qb.push(concat!(
        "SELECT ",
        dataset_columns!(),
        " FROM datasets WHERE backup_id = "
    ))
    .push_bind(backup_id.to_owned())
    .push(" AND id = ")
    .push_bind(dataset_id.to_owned());
}

/// Append the query for the atoms of a dataset (`atom_columns!`), by
/// name.
fn push_dataset_atoms_query<DB>(qb: &mut QueryBuilder<DB>, backup_id: &str, dataset_id: &str)
where
    DB: Database,
    String: for<'q> Encode<'q, DB> + Type<DB>,
{
    qb.push(concat!(
        "SELECT ",
        atom_columns!(),
        " FROM atoms WHERE backup_id = "
    ))
    .push_bind(backup_id.to_owned())
    .push(" AND dataset_id = ")
    .push_bind(dataset_id.to_owned())
    .push(" ORDER BY name");
}

/// Append the INSERT of a dataset row (without its atoms).
fn push_dataset_insert<DB>(qb: &mut QueryBuilder<DB>, backup_id: &str, d: &Dataset)
where
    DB: Database,
    String: for<'q> Encode<'q, DB> + Type<DB>,
    Option<String>: for<'q> Encode<'q, DB>,
    i64: for<'q> Encode<'q, DB> + Type<DB>,
{
    qb.push(
        "INSERT INTO datasets (backup_id, id, name, source, snapshot_id, total_files, \
         total_bytes, bytes_added, duration, handler, repository_id) ",
    );
    qb.push_values([d], |mut row, d| {
        row.push_bind(backup_id.to_owned())
            .push_bind(d.id.clone())
            .push_bind(d.name.clone())
            .push_bind(d.source.clone())
            .push_bind(d.snapshot_id.clone())
            .push_bind(d.total_files)
            .push_bind(d.total_bytes)
            .push_bind(d.bytes_added)
            .push_bind(d.duration)
            .push_bind(d.handler.clone())
            .push_bind(d.repository_id.clone());
    });
}

/// A running-jobs report as stored: host, time received, jobs and the rest
/// of the report as JSON text.
pub(crate) struct ReportRow<'a, T> {
    pub host: &'a str,
    pub received: T,
    pub jobs: &'a str,
    pub state: &'a str,
}

/// Append the statement storing `reports` (each replaces its host's
/// previous one; of two reports of one host in the batch, the later
/// wins).
fn push_reports_upsert<'a, DB>(
    qb: &mut QueryBuilder<DB>,
    reports: impl IntoIterator<Item = ReportRow<'a, DB::Time>>,
) where
    DB: Dialect,
    String: for<'q> Encode<'q, DB> + Type<DB>,
{
    qb.push("INSERT INTO active_jobs (host, received, jobs, state) ");
    qb.push_values(reports, |mut row, r| {
        row.push_bind(r.host.to_owned())
            .push_bind(r.received)
            .push_bind(r.jobs.to_owned())
            .push_bind(r.state.to_owned());
    });
    qb.push(
        " ON CONFLICT (host) DO UPDATE SET received = excluded.received, jobs = excluded.jobs, \
         state = excluded.state",
    );
}

/// Store running-jobs reports in one statement (each replaces its host's
/// previous one; of two reports of one host, the later wins).
pub(crate) async fn write_reports<'a, DB>(
    pool: &Pool<DB>,
    reports: impl IntoIterator<Item = ReportRow<'a, DB::Time>>,
) -> Result<(), sqlx::Error>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    String: for<'q> Encode<'q, DB> + Type<DB>,
{
    let mut qb = QueryBuilder::new("");
    push_reports_upsert(&mut qb, reports);
    qb.build().execute(pool).await?;
    Ok(())
}

/// Every host's latest running-jobs report ([`report_from_row`]).
const ACTIVE_JOBS_QUERY: &str = "SELECT host, received, jobs, state FROM active_jobs ORDER BY host";

/// Decode a row of [`ACTIVE_JOBS_QUERY`].
fn report_from_row<DB>(row: &DB::Row) -> Result<HostActiveJobs, sqlx::Error>
where
    DB: Dialect,
    usize: ColumnIndex<DB::Row>,
    String: for<'r> Decode<'r, DB> + Type<DB>,
{
    let jobs: String = row.try_get(2)?;
    let state: Option<String> = row.try_get(3)?;
    decode_report(
        row.try_get(0)?,
        DB::time_at(row, 1)?,
        &jobs,
        state.as_deref(),
    )
    .map_err(corrupt)
}

/// Every host with backups, its newest backup and its number of backups
/// ([`host_from_row`]).
const HOSTS_QUERY: &str =
    "SELECT host, MAX(timestamp), COUNT(*) FROM backups GROUP BY host ORDER BY host";

/// Decode a row of [`HOSTS_QUERY`].
fn host_from_row<DB>(row: &DB::Row) -> Result<HostSummary, sqlx::Error>
where
    DB: Dialect,
    usize: ColumnIndex<DB::Row>,
    String: for<'r> Decode<'r, DB> + Type<DB>,
    i64: for<'r> Decode<'r, DB> + Type<DB>,
{
    Ok(HostSummary {
        host: row.try_get(0)?,
        last_backup: DB::time_at(row, 1)?,
        backups: row.try_get(2)?,
    })
}

/// Append the query for the `limit` newest backups (of `host` only, when
/// given), newest first, each with its datasets ([`backups_from_rows`]).
fn push_recent_backups<DB>(qb: &mut QueryBuilder<DB>, host: Option<&str>, limit: i64)
where
    DB: Database,
    String: for<'q> Encode<'q, DB> + Type<DB>,
    i64: for<'q> Encode<'q, DB> + Type<DB>,
{
    qb.push("WITH recent AS (SELECT id, host, timestamp FROM backups");
    if let Some(host) = host {
        qb.push(" WHERE host = ").push_bind(host.to_owned());
    }
    qb.push(" ORDER BY timestamp DESC, id LIMIT ")
        .push_bind(limit.max(0))
        .push(") SELECT r.id, r.host, r.timestamp, ")
        .push(D_DATASET_COLUMNS)
        .push(
            " FROM recent r JOIN datasets d ON d.backup_id = r.id \
             ORDER BY r.timestamp DESC, r.id, d.source, d.name, d.id",
        );
}

/// Group rows of [`push_recent_backups`] (`id, host, timestamp`, then the
/// dataset columns; ordered by backup) into backups.
fn backups_from_rows<DB>(rows: &[DB::Row]) -> Result<Vec<Backup>, sqlx::Error>
where
    DB: Dialect,
    usize: ColumnIndex<DB::Row>,
    String: for<'r> Decode<'r, DB> + Type<DB>,
    i64: for<'r> Decode<'r, DB> + Type<DB>,
{
    let mut backups: Vec<Backup> = Vec::new();
    for row in rows {
        let id: String = row.try_get(0)?;
        let dataset = dataset_from_row(row, 3)?;
        match backups.last_mut() {
            Some(b) if b.id == id => b.datasets.push(dataset),
            _ => backups.push(Backup {
                id,
                host: row.try_get(1)?,
                timestamp: DB::time_at(row, 2)?,
                datasets: vec![dataset],
            }),
        }
    }
    Ok(backups)
}

/// Store the results of `host`'s drills (checked by
/// `validate_verifications`) inside the caller's transaction `conn`:
/// refused as a whole (a conflict) when one is about an atom version the
/// index does not hold or that belongs to another host. `db_error` names
/// the database in errors.
async fn record_verifications<DB>(
    conn: &mut DB::Connection,
    host: &str,
    results: &[Verification],
    db_error: impl Fn(sqlx::Error) -> MetadataError,
) -> Result<(), MetadataError>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    usize: ColumnIndex<DB::Row>,
    String: for<'r> Decode<'r, DB> + for<'q> Encode<'q, DB> + Type<DB>,
    Option<String>: for<'q> Encode<'q, DB>,
    Option<DB::Time>: for<'q> Encode<'q, DB>,
{
    let mut stored = HashMap::new();
    for ids in backup_id_chunks(
        results.iter().map(|v| v.backup_id.as_str()),
        DB::IDS_PER_QUERY,
    ) {
        let mut qb = QueryBuilder::new("");
        push_atom_hosts_query(&mut qb, &ids);
        for row in qb.build().fetch_all(&mut *conn).await.map_err(&db_error)? {
            atom_host_from_row::<DB>(&row, &mut stored).map_err(&db_error)?;
        }
    }
    check_owned(host, results, &stored)?;
    for chunk in results.chunks(DB::VERIFICATIONS_PER_INSERT) {
        let mut qb = QueryBuilder::new("");
        push_verifications_upsert(&mut qb, chunk);
        qb.build().execute(&mut *conn).await.map_err(&db_error)?;
    }
    Ok(())
}

/// The latest drill of each of the atom versions `versions` (checked by
/// `validate_get_verifications`; those never drilled are left out).
async fn stored_verifications<DB>(
    conn: &mut DB::Connection,
    versions: &[AtomVersion],
) -> Result<Vec<Verification>, sqlx::Error>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    usize: ColumnIndex<DB::Row>,
    String: for<'r> Decode<'r, DB> + Type<DB>,
{
    let wanted: std::collections::HashSet<&AtomVersion> = versions.iter().collect();
    let mut out = Vec::new();
    for ids in backup_id_chunks(
        versions.iter().map(|v| v.backup_id.as_str()),
        DB::IDS_PER_QUERY,
    ) {
        let mut qb = QueryBuilder::new("");
        push_verifications_query(&mut qb, &ids);
        for row in qb.build().fetch_all(&mut *conn).await? {
            let v = verification_from_row::<DB>(&row)?;
            if wanted.contains(&v.version()) {
                out.push(v);
            }
        }
    }
    Ok(out)
}

/// Append the query for the host of every atom of the backups `ids` (the
/// atom versions a verification may name; [`atom_host_from_row`]).
fn push_atom_hosts_query<DB: Dialect>(qb: &mut QueryBuilder<DB>, ids: &[String]) {
    qb.push("SELECT backup_id, dataset_id, name, host FROM atoms WHERE ");
    DB::push_in(qb, "backup_id", ids);
}

/// Decode a row of [`push_atom_hosts_query`] into `into`.
fn atom_host_from_row<DB>(
    row: &DB::Row,
    into: &mut HashMap<AtomVersion, String>,
) -> Result<(), sqlx::Error>
where
    DB: Database,
    usize: ColumnIndex<DB::Row>,
    String: for<'r> Decode<'r, DB> + Type<DB>,
{
    into.insert(
        AtomVersion {
            backup_id: row.try_get(0)?,
            dataset_id: row.try_get(1)?,
            atom: row.try_get(2)?,
        },
        row.try_get(3)?,
    );
    Ok(())
}

/// Append the statement storing `results` (checked and truncated by
/// `validate_verifications`): each replaces the stored result of its atom
/// version unless that one is newer, keeping the time of the last `ok`.
fn push_verifications_upsert<DB>(qb: &mut QueryBuilder<DB>, results: &[Verification])
where
    DB: Dialect,
    String: for<'q> Encode<'q, DB> + Type<DB>,
    Option<String>: for<'q> Encode<'q, DB>,
    Option<DB::Time>: for<'q> Encode<'q, DB>,
{
    qb.push(
        "INSERT INTO verifications (backup_id, dataset_id, atom, verified_at, result, \
         error, last_ok) ",
    );
    qb.push_values(results, |mut row, v| {
        let at = DB::time(&v.verified_at);
        row.push_bind(v.backup_id.clone())
            .push_bind(v.dataset_id.clone())
            .push_bind(v.atom.clone())
            .push_bind(at)
            .push_bind(v.result.as_str().to_owned())
            .push_bind(v.error.clone())
            .push_bind((v.result == VerifyResult::Ok).then_some(at));
    });
    // A result older than the stored one does not replace it.
    qb.push(
        " ON CONFLICT (backup_id, dataset_id, atom) DO UPDATE SET \
         verified_at = excluded.verified_at, result = excluded.result, \
         error = excluded.error, \
         last_ok = COALESCE(excluded.last_ok, verifications.last_ok) \
         WHERE excluded.verified_at >= verifications.verified_at",
    );
}

/// The `verifications` columns [`verification_from_row`] decodes.
const VERIFICATION_COLUMNS: &str =
    "backup_id, dataset_id, atom, verified_at, result, error, last_ok";

/// Append the query for the stored results of the backups `ids`
/// ([`verification_from_row`]).
fn push_verifications_query<DB: Dialect>(qb: &mut QueryBuilder<DB>, ids: &[String]) {
    qb.push("SELECT ")
        .push(VERIFICATION_COLUMNS)
        .push(" FROM verifications WHERE ");
    DB::push_in(qb, "backup_id", ids);
}

/// Decode a `verifications` row ([`VERIFICATION_COLUMNS`]).
fn verification_from_row<DB>(row: &DB::Row) -> Result<Verification, sqlx::Error>
where
    DB: Dialect,
    usize: ColumnIndex<DB::Row>,
    String: for<'r> Decode<'r, DB> + Type<DB>,
{
    let result: String = row.try_get(4)?;
    let result = match result.as_str() {
        "ok" => VerifyResult::Ok,
        "failed" => VerifyResult::Failed,
        other => return Err(corrupt(format!("verification result {other:?}"))),
    };
    Ok(Verification {
        backup_id: row.try_get(0)?,
        dataset_id: row.try_get(1)?,
        atom: row.try_get(2)?,
        verified_at: DB::time_at(row, 3)?,
        result,
        error: row.try_get(5)?,
        last_ok: DB::opt_time_at(row, 6)?,
    })
}

/// Append the query for the atom versions whose latest drill failed,
/// newest drill first, at most `limit`, of `host` only when given
/// ([`failed_verification_from_row`]).
fn push_failed_verifications<DB>(qb: &mut QueryBuilder<DB>, host: Option<&str>, limit: i64)
where
    DB: Database,
    String: for<'q> Encode<'q, DB> + Type<DB>,
    i64: for<'q> Encode<'q, DB> + Type<DB>,
{
    qb.push(
        "SELECT v.backup_id, v.dataset_id, v.atom, v.verified_at, v.result, v.error, \
         v.last_ok, a.host, a.global_path, a.timestamp FROM verifications v \
         JOIN atoms a ON a.backup_id = v.backup_id AND a.dataset_id = v.dataset_id \
         AND a.name = v.atom WHERE v.result = 'failed'",
    );
    if let Some(h) = host {
        qb.push(" AND a.host = ").push_bind(h.to_owned());
    }
    qb.push(" ORDER BY v.verified_at DESC, v.backup_id, v.atom LIMIT ")
        .push_bind(limit.max(0));
}

/// Decode a row of [`push_failed_verifications`].
fn failed_verification_from_row<DB>(row: &DB::Row) -> Result<FailedVerification, sqlx::Error>
where
    DB: Dialect,
    usize: ColumnIndex<DB::Row>,
    String: for<'r> Decode<'r, DB> + Type<DB>,
{
    Ok(FailedVerification {
        verification: verification_from_row::<DB>(row)?,
        host: row.try_get(7)?,
        atom_path: row.try_get(8)?,
        backup_time: DB::time_at(row, 9)?,
    })
}

/// Append the write of the health probe (`ping`: a store that cannot
/// write fails it).
fn push_health_probe<DB>(qb: &mut QueryBuilder<DB>)
where
    DB: Database,
    i64: for<'q> Encode<'q, DB> + Type<DB>,
{
    qb.push("INSERT INTO health_probe (id, checked) VALUES (1, ")
        .push_bind(Utc::now().timestamp_micros())
        .push(") ON CONFLICT (id) DO UPDATE SET checked = excluded.checked");
}

/// An atom as the `atom_columns!` in order (one element of SQLite's JSON
/// aggregate; PostgreSQL's column arrays zipped).
type AtomTuple = (
    String,
    String,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<String>,
);

/// The atom of an [`AtomTuple`].
pub(crate) fn atom_from_tuple(t: AtomTuple) -> Atom {
    let (name, path, snapshot_path, size, files, sha256) = t;
    Atom {
        name,
        path,
        snapshot_path,
        size,
        files,
        sha256,
    }
}

/// Atoms from a JSON array of `atom_columns!` arrays (SQLite's
/// aggregate, `null` for a NULL column).
pub(crate) fn atoms_from_json(json: &str) -> Result<Vec<Atom>, serde_json::Error> {
    let rows: Vec<AtomTuple> = serde_json::from_str(json)?;
    Ok(rows.into_iter().map(atom_from_tuple).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(backup: &str, dataset: &str, atoms: &[&str]) -> FoundDataset {
        FoundDataset {
            backup_id: backup.to_owned(),
            host: "h".to_owned(),
            timestamp: DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default(),
            // Only id and source have no default.
            dataset: serde_json::from_value(serde_json::json!({
                "id": dataset,
                "source": "src",
                "atoms": atoms.iter().map(|n| serde_json::json!({"name": n})).collect::<Vec<_>>(),
            }))
            .expect("a valid dataset"),
        }
    }

    #[test]
    fn consecutive_rows_of_a_backup_share_it_and_atoms_are_sorted() {
        let backups = group_backups([
            found("b2", "d1", &["z", "a"]),
            found("b2", "d2", &["m"]),
            found("b1", "d1", &["b", "a"]),
        ]);
        let shape: Vec<String> = backups
            .iter()
            .flat_map(|b| {
                b.datasets.iter().map(move |d| {
                    let atoms: Vec<&str> = d.atoms.iter().map(|a| a.name.as_str()).collect();
                    format!("{}/{}: {}", b.id, d.id, atoms.join(","))
                })
            })
            .collect();
        assert_eq!(shape, ["b2/d1: a,z", "b2/d2: m", "b1/d1: a,b"]);
        assert_eq!(backups.len(), 2);
    }

    #[test]
    fn json_atoms_keep_names_and_paths_with_any_characters() {
        let atoms = atoms_from_json(
            r#"[["db\"1","a/b",null,null,null,null],["$(x)","","/s/d/$(x)",5,null,"ab"]]"#,
        )
        .unwrap_or_default();
        assert_eq!(atoms.len(), 2);
        assert_eq!(atoms[0].name, "db\"1");
        assert_eq!(atoms[0].path, "a/b");
        assert_eq!(atoms[0].snapshot_path, None);
        assert_eq!(atoms[1].name, "$(x)");
        assert_eq!(atoms[1].snapshot_path.as_deref(), Some("/s/d/$(x)"));
        assert_eq!((atoms[1].size, atoms[1].files), (Some(5), None));
        assert_eq!(atoms[1].sha256.as_deref(), Some("ab"));
        assert!(atoms_from_json("[1]").is_err());
    }
}
