//! Index-at-scale benchmark, driven by `bench/index_scale.sh`.
//!
//! `index_bench run` generates `hosts x atoms x backups` atom-versions and
//! ingests them into SQLite and/or PostgreSQL twice, interleaved round by
//! round (one round = one backup of every host):
//!
//! - through the store's own ingest path: one `MetadataStore::add_dataset`
//!   per host per backup, a dataset of `atoms` atoms (what an agent records
//!   after each backup), `concurrency` calls at a time (a server receives
//!   them from many hosts at once);
//! - as a raw bulk insert of the same rows into the same schema (the
//!   anchor): SQLite, one transaction per round of prepared 100-row
//!   `INSERT`s; PostgreSQL, one transaction per round of `COPY ... FROM
//!   STDIN`.
//!
//! It prints the ingest rate of each round (atom-versions per second:
//! median and spread over the rounds) and the ratio store / raw, then the
//! latency of `find_atoms` through the store for several query shapes
//! (random hosts and atoms, the shapes interleaved), against a `SELECT 1`
//! round trip through the same pool (the driver's floor).
//!
//! Names: host `hostNNN`; each host has one source named after it
//! (`hostNNN`, so a fleet-wide glob can pick hosts by name) backing up a
//! dataset `mysql` of atoms `db00`, `db01`, ... (pipe dumps: no path). A
//! global path is `host042/mysql/db17`.
//!
//! `index_bench load` fills a SQLite file through the store (for
//! `bench/server_load.sh`).

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::{TimeZone, Utc};
use clap::{Parser, Subcommand};
use futures::StreamExt;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, QueryBuilder, Sqlite};
use tabacco::metadata::ServerStore;
use tabacco::metadata::postgres::PostgresStore;
use tabacco::metadata::sqlite::{self, SqliteStore};
use tabacco::model::{Atom, Backup, Dataset, FindRequest, atom_path};

/// Command line.
#[derive(Parser)]
#[command(about = "tabacco index benchmark: ingest and find_atoms at scale")]
struct Cli {
    /// What to do.
    #[command(subcommand)]
    cmd: Cmd,
}

/// Subcommands.
#[derive(Subcommand)]
enum Cmd {
    /// Ingest through the store and as a raw bulk insert, then time queries.
    Run(RunArgs),
    /// Fill a SQLite file through the store.
    Load {
        /// The data set's shape.
        #[command(flatten)]
        shape: Shape,
        /// The SQLite file (created).
        #[arg(long)]
        sqlite: PathBuf,
    },
}

/// The generated data set: every host backs up one dataset of `atoms`
/// atoms `backups` times.
#[derive(clap::Args, Clone, Copy)]
struct Shape {
    /// Hosts (at most 1000: names are hostNNN).
    #[arg(long, default_value_t = 1000)]
    hosts: usize,
    /// Atoms per dataset (at most 100: names are dbNN).
    #[arg(long, default_value_t = 100)]
    atoms: usize,
    /// Backups per host.
    #[arg(long, default_value_t = 100)]
    backups: usize,
}

/// Arguments of `run`.
#[derive(clap::Args)]
struct RunArgs {
    /// The data set's shape.
    #[command(flatten)]
    shape: Shape,
    /// Directory for the SQLite files (store.db, raw.db).
    #[arg(long)]
    dir: PathBuf,
    /// PostgreSQL URL; the benchmark creates and drops its own schemas
    /// `tabacco_bench_store` and `tabacco_bench_raw` there.
    #[arg(long)]
    postgres: Option<String>,
    /// Backends to measure, comma-separated: sqlite, postgres.
    #[arg(long, default_value = "sqlite,postgres")]
    backends: String,
    /// Queries per query shape.
    #[arg(long, default_value_t = 200)]
    queries: usize,
    /// add_dataset calls in flight at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Keep the databases afterwards.
    #[arg(long)]
    keep: bool,
}

/// Schema of the store's side in PostgreSQL.
const PG_STORE_SCHEMA: &str = "tabacco_bench_store";
/// Schema of the raw side in PostgreSQL.
const PG_RAW_SCHEMA: &str = "tabacco_bench_raw";
/// Rows per raw SQLite INSERT statement.
const RAW_ROWS_PER_INSERT: usize = 100;

fn host_name(h: usize) -> String {
    format!("host{h:03}")
}

fn atom_name(a: usize) -> String {
    format!("db{a:02}")
}

/// The backup and dataset host `h` records in backup round `b`.
fn record(shape: &Shape, h: usize, b: usize) -> (Backup, Dataset) {
    let base = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let timestamp = base + chrono::Duration::hours(b as i64) + chrono::Duration::seconds(h as i64);
    let ms = timestamp.timestamp_millis() as u64;
    let n = (h * 1_000_000 + b) as u64;
    let host = host_name(h);
    let dataset = Dataset {
        id: format!("{ms:012x}8{n:019x}"),
        name: "mysql".to_owned(),
        source: host.clone(),
        atoms: (0..shape.atoms)
            .map(|a| Atom {
                name: atom_name(a),
                ..Default::default()
            })
            .collect(),
        snapshot_id: format!(
            "{:064x}",
            u128::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c)
        ),
        total_files: shape.atoms as i64,
        total_bytes: (n % 997) as i64 * 1_048_576,
        bytes_added: (n % 89) as i64 * 4096,
        duration: (n % 300) as i64,
        ..Default::default()
    };
    let backup = Backup {
        id: format!("{ms:012x}7{n:019x}"),
        timestamp,
        host,
        datasets: Vec::new(),
    };
    (backup, dataset)
}

/// One round: backup `b` of every host.
fn round(shape: &Shape, b: usize) -> Vec<(Backup, Dataset)> {
    (0..shape.hosts).map(|h| record(shape, h, b)).collect()
}

/// Record a round through the store, `concurrency` at a time.
async fn store_ingest(
    store: &Arc<dyn ServerStore>,
    rows: &[(Backup, Dataset)],
    concurrency: usize,
) -> Result<()> {
    let mut results = futures::stream::iter(rows)
        .map(|(b, d)| {
            let store = store.clone();
            async move { store.add_dataset(b, d).await }
        })
        .buffer_unordered(concurrency.max(1));
    while let Some(r) = results.next().await {
        r.context("add_dataset")?;
    }
    Ok(())
}

/// The SQLite connection options the store uses.
fn sqlite_options(path: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        .pragma("cache_size", format!("-{}", sqlite::CACHE_KIB))
}

/// The raw anchor on SQLite: the round in one transaction of prepared
/// multi-row INSERTs.
async fn sqlite_raw_ingest(conn: &mut SqliteConnection, rows: &[(Backup, Dataset)]) -> Result<()> {
    let mut tx = conn.begin().await?;
    for chunk in rows.chunks(RAW_ROWS_PER_INSERT) {
        let mut qb = QueryBuilder::<Sqlite>::new("INSERT INTO backups (id, host, timestamp) ");
        qb.push_values(chunk, |mut r, (b, _)| {
            r.push_bind(&b.id)
                .push_bind(&b.host)
                .push_bind(b.timestamp.timestamp_micros());
        });
        qb.build().execute(&mut *tx).await?;
        let mut qb = QueryBuilder::<Sqlite>::new(
            "INSERT INTO datasets (backup_id, id, name, source, snapshot_id, total_files, \
             total_bytes, bytes_added, duration) ",
        );
        qb.push_values(chunk, |mut r, (b, d)| {
            r.push_bind(&b.id)
                .push_bind(&d.id)
                .push_bind(&d.name)
                .push_bind(&d.source)
                .push_bind(&d.snapshot_id)
                .push_bind(d.total_files)
                .push_bind(d.total_bytes)
                .push_bind(d.bytes_added)
                .push_bind(d.duration);
        });
        qb.build().execute(&mut *tx).await?;
    }
    let atoms: Vec<(&Backup, &Dataset, &Atom)> = rows
        .iter()
        .flat_map(|(b, d)| d.atoms.iter().map(move |a| (b, d, a)))
        .collect();
    for chunk in atoms.chunks(RAW_ROWS_PER_INSERT) {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "INSERT INTO atoms (backup_id, dataset_id, name, path, global_path, host, timestamp) ",
        );
        qb.push_values(chunk, |mut r, (b, d, a)| {
            r.push_bind(&b.id)
                .push_bind(&d.id)
                .push_bind(&a.name)
                .push_bind(&a.path)
                .push_bind(atom_path(&d.source, &d.name, &a.name))
                .push_bind(&b.host)
                .push_bind(b.timestamp.timestamp_micros());
        });
        qb.build().execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The raw anchor on PostgreSQL: the round in one transaction of three
/// `COPY ... FROM STDIN` (text format).
async fn pg_raw_ingest(conn: &mut PgConnection, rows: &[(Backup, Dataset)]) -> Result<()> {
    use std::fmt::Write;
    let (mut backups, mut datasets, mut atoms) = (String::new(), String::new(), String::new());
    for (b, d) in rows {
        let ts = b.timestamp.to_rfc3339();
        writeln!(backups, "{}\t{}\t{ts}", b.id, b.host)?;
        writeln!(
            datasets,
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            b.id,
            d.id,
            d.name,
            d.source,
            d.snapshot_id,
            d.total_files,
            d.total_bytes,
            d.bytes_added,
            d.duration
        )?;
        for a in &d.atoms {
            writeln!(
                atoms,
                "{}\t{}\t{}\t{}\t{}\t{}\t{ts}",
                b.id,
                d.id,
                a.name,
                a.path,
                atom_path(&d.source, &d.name, &a.name),
                b.host
            )?;
        }
    }
    let mut tx = conn.begin().await?;
    for (stmt, data) in [
        ("COPY backups (id, host, timestamp) FROM STDIN", backups),
        (
            "COPY datasets (backup_id, id, name, source, snapshot_id, total_files, total_bytes, \
             bytes_added, duration) FROM STDIN",
            datasets,
        ),
        (
            "COPY atoms (backup_id, dataset_id, name, path, global_path, host, timestamp) \
             FROM STDIN",
            atoms,
        ),
    ] {
        let mut copy = tx.copy_in_raw(stmt).await?;
        copy.send(data.into_bytes()).await?;
        copy.finish().await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Median, nearest-rank percentile, min and max of `xs` (sorted here).
struct Stats {
    median: f64,
    p99: f64,
    min: f64,
    max: f64,
}

fn stats(xs: &mut [f64]) -> Stats {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    let rank = |p: f64| xs[((p * n as f64).ceil() as usize).clamp(1, n) - 1];
    Stats {
        median: if n % 2 == 1 {
            xs[n / 2]
        } else {
            (xs[n / 2 - 1] + xs[n / 2]) / 2.0
        },
        p99: rank(0.99),
        min: xs[0],
        max: xs[n - 1],
    }
}

/// One backend under test: the store, and how to bulk insert raw rows.
enum Raw {
    Sqlite(SqliteConnection),
    Postgres(PgConnection),
}

impl Raw {
    async fn ingest(&mut self, rows: &[(Backup, Dataset)]) -> Result<()> {
        match self {
            Raw::Sqlite(c) => sqlite_raw_ingest(c, rows).await,
            Raw::Postgres(c) => pg_raw_ingest(c, rows).await,
        }
    }
}

/// Connection options for PostgreSQL with `search_path` set to `schema`.
fn pg_options(url: &str, schema: &str) -> Result<PgConnectOptions> {
    Ok(PgConnectOptions::from_str(url)
        .context("parsing the PostgreSQL URL")?
        .options([("search_path", schema)]))
}

/// Drop (and with `create`, recreate) the benchmark's PostgreSQL schemas.
async fn pg_reset_schemas(url: &str, create: bool) -> Result<()> {
    let mut conn = PgConnectOptions::from_str(url)?
        .connect()
        .await
        .context("connecting to PostgreSQL")?;
    for schema in [PG_STORE_SCHEMA, PG_RAW_SCHEMA] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE"
        )))
        .execute(&mut conn)
        .await?;
        if create {
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
                .execute(&mut conn)
                .await?;
        }
    }
    Ok(())
}

/// Remove a SQLite file and its WAL and shared-memory files.
fn remove_sqlite(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

/// Open both sides of a backend on fresh databases.
async fn open_backend(backend: &str, args: &RunArgs) -> Result<(Arc<dyn ServerStore>, Raw)> {
    match backend {
        "sqlite" => {
            std::fs::create_dir_all(&args.dir)
                .with_context(|| format!("creating {}", args.dir.display()))?;
            let (store_path, raw_path) = (args.dir.join("store.db"), args.dir.join("raw.db"));
            remove_sqlite(&store_path);
            remove_sqlite(&raw_path);
            let store = SqliteStore::open(&store_path).await?;
            // The same schema for the raw side: the store's migrations.
            SqliteStore::open(&raw_path).await?.close().await;
            let raw = sqlite_options(&raw_path).connect().await?;
            Ok((Arc::new(store), Raw::Sqlite(raw)))
        }
        "postgres" => {
            let url = args
                .postgres
                .as_deref()
                .context("--postgres URL is needed for the postgres backend")?;
            pg_reset_schemas(url, true).await?;
            let store = PostgresStore::connect_with(
                pg_options(url, PG_STORE_SCHEMA)?,
                format!("{PG_STORE_SCHEMA} schema"),
            )
            .await?;
            // The same schema for the raw side: the store's migrations.
            PostgresStore::connect_with(
                pg_options(url, PG_RAW_SCHEMA)?,
                format!("{PG_RAW_SCHEMA} schema"),
            )
            .await?
            .close()
            .await;
            let raw = pg_options(url, PG_RAW_SCHEMA)?.connect().await?;
            Ok((Arc::new(store), Raw::Postgres(raw)))
        }
        other => anyhow::bail!("unknown backend {other:?}: give sqlite or postgres"),
    }
}

/// Size of the databases on disk (SQLite: files; PostgreSQL: schemas).
async fn sizes(backend: &str, args: &RunArgs) -> Result<(u64, u64)> {
    match backend {
        "sqlite" => {
            let size = |name: &str| -> u64 {
                ["", "-wal"]
                    .iter()
                    .filter_map(|s| std::fs::metadata(args.dir.join(format!("{name}{s}"))).ok())
                    .map(|m| m.len())
                    .sum()
            };
            Ok((size("store.db"), size("raw.db")))
        }
        _ => {
            let url = args.postgres.as_deref().unwrap_or_default();
            let mut conn = PgConnectOptions::from_str(url)?.connect().await?;
            let mut out = [0u64; 2];
            for (i, schema) in [PG_STORE_SCHEMA, PG_RAW_SCHEMA].iter().enumerate() {
                let n: i64 = sqlx::query_scalar(
                    "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0)::bigint \
                     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname = $1 AND c.relkind = 'r'",
                )
                .bind(schema)
                .fetch_one(&mut conn)
                .await?;
                out[i] = n as u64;
            }
            Ok((out[0], out[1]))
        }
    }
}

/// Write counters to explain the ingest rate: SQLite (in this process),
/// `/proc/self/io`: bytes written, write and read system calls;
/// PostgreSQL, `pg_stat_wal` (whole cluster): WAL bytes, full-page images,
/// WAL records.
enum IoProbe {
    Sqlite,
    Postgres(PgConnection),
}

impl IoProbe {
    async fn new(backend: &str, args: &RunArgs) -> Result<IoProbe> {
        Ok(match backend {
            "sqlite" => IoProbe::Sqlite,
            _ => IoProbe::Postgres(
                PgConnectOptions::from_str(args.postgres.as_deref().unwrap_or_default())?
                    .connect()
                    .await?,
            ),
        })
    }

    async fn read(&mut self) -> Result<[u64; 3]> {
        match self {
            IoProbe::Sqlite => {
                let text = std::fs::read_to_string("/proc/self/io")?;
                let field = |name: &str| -> u64 {
                    text.lines()
                        .find_map(|l| l.strip_prefix(name))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0)
                };
                Ok([field("wchar:"), field("syscw:"), field("syscr:")])
            }
            IoProbe::Postgres(conn) => {
                let (bytes, fpi, records): (i64, i64, i64) = sqlx::query_as(
                    "SELECT wal_bytes::bigint, wal_fpi, wal_records FROM pg_stat_wal",
                )
                .fetch_one(&mut *conn)
                .await?;
                Ok([bytes as u64, fpi as u64, records as u64])
            }
        }
    }

    fn what(&self) -> &'static str {
        match self {
            IoProbe::Sqlite => "written",
            IoProbe::Postgres(_) => "of WAL",
        }
    }

    fn detail(&self, c: [u64; 3], n: f64) -> String {
        match self {
            IoProbe::Sqlite => format!(
                "{:.2} write and {:.2} read system calls",
                c[1] as f64 / n,
                c[2] as f64 / n
            ),
            IoProbe::Postgres(_) => format!(
                "{:.2} full-page images, {:.2} WAL records",
                c[1] as f64 / n,
                c[2] as f64 / n
            ),
        }
    }
}

/// Makes the next request of a query shape.
type MakeRequest = Box<dyn Fn(&mut Rng, &Shape) -> FindRequest>;

/// A query shape: its label and a generator of requests.
struct QueryShape {
    label: &'static str,
    make: MakeRequest,
}

/// A small deterministic generator (LCG) for query parameters.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) as usize) % n.max(1)
    }
}

fn query_shapes() -> Vec<QueryShape> {
    let literal = |r: &mut Rng, s: &Shape| FindRequest {
        pattern: format!(
            "{}/mysql/{}",
            host_name(r.below(s.hosts)),
            atom_name(r.below(s.atoms))
        ),
        ..FindRequest::default()
    };
    // host04*/mysql/db1*: hosts host040..host049, atoms db10..db19.
    let glob = |r: &mut Rng, s: &Shape| FindRequest {
        pattern: format!("host{:02}*/mysql/db1*", r.below(s.hosts.div_ceil(10))),
        ..FindRequest::default()
    };
    let host = |r: &mut Rng, s: &Shape| FindRequest {
        pattern: "*".to_owned(),
        host: host_name(r.below(s.hosts)),
        ..FindRequest::default()
    };
    vec![
        QueryShape {
            label: "literal hostNNN/mysql/dbNN, all versions",
            make: Box::new(literal),
        },
        QueryShape {
            label: "literal, num_versions=1",
            make: Box::new(move |r, s| FindRequest {
                num_versions: 1,
                ..literal(r, s)
            }),
        },
        QueryShape {
            label: "glob hostNN*/mysql/db1*, all versions",
            make: Box::new(glob),
        },
        QueryShape {
            label: "glob hostNN*/mysql/db1*, num_versions=1",
            make: Box::new(move |r, s| FindRequest {
                num_versions: 1,
                ..glob(r, s)
            }),
        },
        QueryShape {
            label: "host=hostNNN '*', all versions",
            make: Box::new(host),
        },
        QueryShape {
            label: "host=hostNNN '*', num_versions=1",
            make: Box::new(move |r, s| FindRequest {
                num_versions: 1,
                ..host(r, s)
            }),
        },
    ]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Time `queries` find_atoms per shape (shapes interleaved) and a
/// `SELECT 1` floor; print p50/p99 per shape.
async fn time_queries(store: &Arc<dyn ServerStore>, shape: &Shape, queries: usize) -> Result<()> {
    let shapes = query_shapes();
    let mut rng = Rng(0x5eed);
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); shapes.len()];
    let mut rows: Vec<usize> = vec![0; shapes.len()];
    let mut floor = Vec::new();
    // Warm-up: a few of each, not counted.
    for q in &shapes {
        for _ in 0..3 {
            store.find_atoms(&(q.make)(&mut rng, shape)).await?;
        }
    }
    for _ in 0..queries {
        for (i, q) in shapes.iter().enumerate() {
            let req = (q.make)(&mut rng, shape);
            let t = Instant::now();
            let found = store.find_atoms(&req).await?;
            times[i].push(ms(t.elapsed()));
            rows[i] += found
                .iter()
                .flat_map(|b| &b.datasets)
                .map(|d| d.atoms.len())
                .sum::<usize>();
        }
        let t = Instant::now();
        store.ping().await?;
        floor.push(ms(t.elapsed()));
    }
    for (i, q) in shapes.iter().enumerate() {
        let s = stats(&mut times[i]);
        let verdict = if s.p99 <= 20.0 { "ok" } else { "MISSES" };
        println!(
            "    {:<42} {:>6} rows  p50 {:7.2} ms  p99 {:7.2} ms  (min {:.2}, max {:.2}; {} queries; goal p99 <= 20 ms: {verdict})",
            q.label,
            rows[i] / queries.max(1),
            s.median,
            s.p99,
            s.min,
            s.max,
            queries
        );
    }
    let f = stats(&mut floor);
    println!(
        "    {:<42} {:>6}       p50 {:7.2} ms  p99 {:7.2} ms  (anchor: the driver's round trip)",
        "SELECT 1 on the same pool", "", f.median, f.p99
    );
    Ok(())
}

async fn run(args: RunArgs) -> Result<()> {
    let shape = args.shape;
    anyhow::ensure!(
        shape.hosts <= 1000 && shape.atoms <= 100,
        "at most 1000 hosts and 100 atoms"
    );
    let total = shape.hosts * shape.atoms * shape.backups;
    println!(
        "  data: {} hosts x {} atoms x {} backups = {total} atom-versions; one add_dataset per host per backup \
         (source hostNNN, dataset mysql, atoms db00..), {} in flight",
        shape.hosts, shape.atoms, shape.backups, args.concurrency
    );
    for backend in args.backends.split(',').map(str::trim) {
        let (store, mut raw) = open_backend(backend, &args).await?;
        let (mut store_rates, mut raw_rates) = (Vec::new(), Vec::new());
        let (mut store_total, mut raw_total) = (Duration::ZERO, Duration::ZERO);
        let per_round = (shape.hosts * shape.atoms) as f64;
        let started = Instant::now();
        let mut io = IoProbe::new(backend, &args).await?;
        let (mut store_io, mut raw_io) = ([0u64; 3], [0u64; 3]);
        for b in 0..shape.backups {
            let rows = round(&shape, b);
            let before = io.read().await?;
            let t = Instant::now();
            store_ingest(&store, &rows, args.concurrency).await?;
            let ds = t.elapsed();
            let middle = io.read().await?;
            let t = Instant::now();
            raw.ingest(&rows).await?;
            let dr = t.elapsed();
            let after = io.read().await?;
            for i in 0..3 {
                store_io[i] += middle[i].saturating_sub(before[i]);
                raw_io[i] += after[i].saturating_sub(middle[i]);
            }
            store_total += ds;
            raw_total += dr;
            store_rates.push(per_round / ds.as_secs_f64());
            raw_rates.push(per_round / dr.as_secs_f64());
            if shape.backups >= 20 && (b + 1) % (shape.backups / 10) == 0 {
                eprintln!(
                    "  {backend}: round {}/{} ({:.0} s): store {:.0}/s, raw {:.0}/s",
                    b + 1,
                    shape.backups,
                    started.elapsed().as_secs_f64(),
                    store_rates[b],
                    raw_rates[b]
                );
            }
        }
        let (first_s, first_r) = (store_rates[0], raw_rates[0]);
        let (last_s, last_r) = (store_rates[shape.backups - 1], raw_rates[shape.backups - 1]);
        let s = stats(&mut store_rates);
        let r = stats(&mut raw_rates);
        let (store_bytes, raw_bytes) = sizes(backend, &args).await?;
        let raw_label = match backend {
            "sqlite" => "raw INSERT, 1 transaction per round",
            _ => "raw COPY, 1 transaction per round",
        };
        println!(
            "  {backend} ingest, atom-versions/s per round of {} datasets ({} rounds):",
            shape.hosts, shape.backups
        );
        for (label, st, tot, first, last, bytes) in [
            (
                "store add_dataset",
                &s,
                store_total,
                first_s,
                last_s,
                store_bytes,
            ),
            (raw_label, &r, raw_total, first_r, last_r, raw_bytes),
        ] {
            println!(
                "    {label:<38} median {:9.0}/s  spread {:.0}..{:.0}/s  first/last round {:.0}/{:.0}/s  total {:.1} s  ({:.2} GiB)",
                st.median,
                st.min,
                st.max,
                first,
                last,
                tot.as_secs_f64(),
                bytes as f64 / f64::from(1u32 << 30)
            );
        }
        let n = total as f64;
        for (label, c) in [("store", store_io), ("raw", raw_io)] {
            println!(
                "    {label:<5} I/O per atom-version: {:.1} KiB {} ({})",
                c[0] as f64 / 1024.0 / n,
                io.what(),
                io.detail(c, n)
            );
        }
        let ratio = s.median / r.median;
        println!(
            "    ingest: store / raw = {ratio:.2} (overall {:.2}; goal >= 0.5: {})",
            raw_total.as_secs_f64() / store_total.as_secs_f64(),
            if ratio >= 0.5 { "ok" } else { "MISSES" }
        );
        drop(raw);
        if backend == "postgres" {
            // Planner statistics, as autovacuum would gather them: without
            // any (autovacuum off, or not run yet after a bulk load) the
            // planner guesses thousands of rows for `global_path = $1` and
            // hash-joins all datasets.
            let url = args.postgres.as_deref().unwrap_or_default();
            let mut conn = pg_options(url, PG_STORE_SCHEMA)?.connect().await?;
            let autovacuum: String = sqlx::query_scalar("SHOW autovacuum")
                .fetch_one(&mut conn)
                .await?;
            let t = Instant::now();
            sqlx::query("ANALYZE").execute(&mut conn).await?;
            println!(
                "  postgres ANALYZE of the store's tables before the queries (autovacuum is {autovacuum} here): {:.1} s",
                t.elapsed().as_secs_f64()
            );
        }
        println!("  {backend} find_atoms latency through the store (random hosts and atoms):");
        time_queries(&store, &shape, args.queries).await?;
        store.close().await;
        if !args.keep {
            match backend {
                "sqlite" => {
                    remove_sqlite(&args.dir.join("store.db"));
                    remove_sqlite(&args.dir.join("raw.db"));
                }
                _ => pg_reset_schemas(args.postgres.as_deref().unwrap_or_default(), false).await?,
            }
        }
    }
    Ok(())
}

async fn load(shape: Shape, path: &Path) -> Result<()> {
    remove_sqlite(path);
    let store: Arc<dyn ServerStore> = Arc::new(SqliteStore::open(path).await?);
    for b in 0..shape.backups {
        store_ingest(&store, &round(&shape, b), 4).await?;
    }
    store.close().await;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Run(args) => run(args).await,
        Cmd::Load { shape, sqlite } => load(shape, &sqlite).await,
    }
}
