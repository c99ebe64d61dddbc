//! The durable outbox: dataset records on their way to the metadata server.
//!
//! Before a dataset record is sent, it is written to its own file in
//! `<work_dir>/outbox/` (written to a temporary name, fsync'ed, renamed to a
//! unique, time-ordered name, directory fsync'ed). A file is removed only
//! after the server acknowledged it. Delivery goes oldest first and stops at
//! the first temporary failure (the server is down: the rest waits for the
//! next round). A record the server refuses for good (a 4xx about the
//! record, such as 400, 403, 409 or 413) is moved to `outbox/rejected/`
//! with a `.reason` file beside it, logged at error and counted; an
//! unreadable file goes there too. Moving a file from `rejected/` back to
//! `outbox/` queues it again.
//!
//! Any number of deliverers (the agent's background task, `tabacco backup`
//! on the same host) may run at once: a round holds an exclusive `flock` on
//! `outbox/.lock` (released by the kernel if the process dies), and records
//! are only ever deleted after their own acknowledgement. The server is
//! idempotent, so a record sent twice (an ack lost in a crash) is harmless.
//!
//! [`OutboxStore`] puts this in front of a remote store: `add_dataset`
//! queues the record, tries a bounded delivery and succeeds once the record
//! is safely queued; reads go straight to the server.

use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use chrono::Utc;
use tracing::{debug, error, info, warn};

use super::remote::{RemoteOptions, RemoteStore, RetryPolicy};
use super::{MetadataError, MetadataStore, Recovery};
use crate::config::Config;
use crate::filelock::{Locked, lock_waiting};
use crate::model::{
    AddDatasetRequest, AddVerificationsRequest, Backup, Dataset, FindRequest,
    GetVerificationsRequest, RemoveDatasetsRequest, UpdateActiveJobStatusRequest, Verification,
};

/// How often the agent's background task should deliver the outbox
/// ([`OutboxStore::run_delivery_loop`]).
pub const DEFAULT_DELIVERY_INTERVAL: Duration = Duration::from_secs(30);
/// Name of the outbox directory inside `work_dir`.
pub const OUTBOX_DIR: &str = "outbox";
/// Name of the directory of refused records inside the outbox.
pub const REJECTED_DIR: &str = "rejected";
/// Extension of queued records.
const RECORD_EXT: &str = "json";
/// Extension of the reason files beside refused records.
const REASON_EXT: &str = "reason";
/// Prefix of files being written.
const TMP_PREFIX: &str = ".tmp-";
/// The lock file held by a delivery round.
const LOCK_FILE: &str = ".lock";
/// Bound on connecting for the single delivery attempt right after a record
/// is queued (the background deliverer uses the client's own timeout).
const IMMEDIATE_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A temporary file older than this was left by a crash: it is queued if it
/// holds a whole record, else moved aside.
const STALE_TMP_AGE: Duration = Duration::from_secs(3600);

/// What one delivery round did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryReport {
    /// Records the server acknowledged (and that were removed).
    pub delivered: usize,
    /// Records moved aside to `rejected/` (refused for good, or unreadable).
    pub rejected: usize,
    /// Records still queued after the round.
    pub pending: usize,
    /// Why the round stopped early (server unavailable, local I/O, time
    /// budget spent), if it did.
    pub error: Option<String>,
    /// Another deliverer held the outbox for the whole wait; this round did
    /// nothing.
    pub busy: bool,
}

/// The on-disk queue of dataset records (`<work_dir>/outbox/`).
#[derive(Debug)]
pub struct Outbox {
    dir: PathBuf,
    rejected_dir: PathBuf,
    delivered_total: AtomicU64,
    rejected_total: AtomicU64,
    /// Serializes rounds inside this process (the flock does it between
    /// processes).
    round: tokio::sync::Mutex<()>,
}

/// Run blocking file system work off the async threads.
async fn blocking<T, F>(f: F) -> io::Result<T>
where
    F: FnOnce() -> io::Result<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(io::Error::other(format!("file system task failed: {e}"))))
}

/// fsync a directory, so that names created or removed in it are durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A unique file name that sorts by creation time.
fn record_name() -> String {
    format!(
        "{}-{}.{RECORD_EXT}",
        Utc::now().format("%Y%m%dT%H%M%S%.9fZ"),
        uuid::Uuid::now_v7().simple()
    )
}

/// Whether `name` is a queued record (not a temporary, lock or directory).
fn is_record_name(name: &str) -> bool {
    !name.starts_with('.')
        && Path::new(name).extension().and_then(|e| e.to_str()) == Some(RECORD_EXT)
}

/// Names of the regular files in `dir` for which `keep` holds, sorted.
fn list_files(dir: &Path, keep: impl Fn(&str) -> bool) -> io::Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            continue;
        }
        if let Some(name) = entry.file_name().to_str()
            && keep(name)
        {
            names.push(name.to_string());
        }
    }
    names.sort();
    Ok(names)
}

/// Write `bytes` to `path` (a new file) and fsync it.
fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new().write(true).create_new(true).open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

impl Outbox {
    /// The outbox of `work_dir`. Nothing is created until a record is
    /// queued, so readers (`tabacco query`) need no write access.
    pub fn open(work_dir: &Path) -> Outbox {
        let dir = work_dir.join(OUTBOX_DIR);
        Outbox {
            rejected_dir: dir.join(REJECTED_DIR),
            dir,
            delivered_total: AtomicU64::new(0),
            rejected_total: AtomicU64::new(0),
            round: tokio::sync::Mutex::new(()),
        }
    }

    /// The outbox directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where refused records are kept.
    pub fn rejected_dir(&self) -> &Path {
        &self.rejected_dir
    }

    /// Records delivered by this process so far.
    pub fn delivered_total(&self) -> u64 {
        self.delivered_total.load(Ordering::Relaxed)
    }

    /// Records this process moved aside to `rejected/` so far (a counter
    /// for metrics: `tabacco_outbox_rejected_total`).
    pub fn rejected_total(&self) -> u64 {
        self.rejected_total.load(Ordering::Relaxed)
    }

    /// Records waiting for delivery now.
    pub fn pending(&self) -> Result<usize, MetadataError> {
        list_files(&self.dir, is_record_name)
            .map(|v| v.len())
            .map_err(|source| MetadataError::Io {
                context: format!("cannot list the outbox {}", self.dir.display()),
                source,
            })
    }

    /// Records kept in `rejected/` now (by any process, ever).
    pub fn rejected_stored(&self) -> Result<usize, MetadataError> {
        list_files(&self.rejected_dir, is_record_name)
            .map(|v| v.len())
            .map_err(|source| MetadataError::Io {
                context: format!("cannot list {}", self.rejected_dir.display()),
                source,
            })
    }

    /// Queue a dataset record durably; returns the record's file. When this
    /// returns `Ok`, the record survives a crash or power loss.
    pub async fn enqueue(
        &self,
        backup: &Backup,
        dataset: &Dataset,
    ) -> Result<PathBuf, MetadataError> {
        let body =
            serde_json::to_vec_pretty(&AddDatasetRequest::new(backup, dataset)).map_err(|e| {
                MetadataError::BadRequest(format!("cannot encode the dataset record: {e}"))
            })?;
        let dir = self.dir.clone();
        let path = dir.join(record_name());
        let target = path.clone();
        blocking(move || {
            if !dir.is_dir() {
                fs::create_dir_all(&dir)?;
                if let Some(parent) = dir.parent() {
                    sync_dir(parent)?;
                }
            }
            let tmp = dir.join(format!("{TMP_PREFIX}{}", uuid::Uuid::now_v7().simple()));
            if let Err(e) = write_synced(&tmp, &body) {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
            fs::rename(&tmp, &target)?;
            sync_dir(&dir)
        })
        .await
        .map_err(|source| MetadataError::Io {
            context: format!(
                "cannot queue the record of dataset {} in the outbox {} (is work_dir writable, is the disk full?)",
                dataset.id,
                self.dir.display()
            ),
            source,
        })?;
        debug!(file = %path.display(), dataset_id = %dataset.id, "dataset record queued in the outbox");
        Ok(path)
    }

    /// Take the outbox's delivery lock, waiting up to `wait`. `None`: some
    /// other deliverer held it all that time.
    async fn lock(&self, wait: Duration) -> io::Result<Option<Locked>> {
        fs::create_dir_all(&self.dir)?;
        lock_waiting(&self.dir.join(LOCK_FILE), wait).await
    }

    /// Move `name` to `rejected/`, with `reason` in a `.reason` file beside it.
    async fn move_aside(&self, name: &str, reason: &str) -> io::Result<()> {
        let from = self.dir.join(name);
        let rejected = self.rejected_dir.clone();
        let to = rejected.join(name);
        let reason_path = to.with_extension(REASON_EXT);
        let text = format!(
            "{} {reason}\n",
            Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        let dir = self.dir.clone();
        blocking(move || {
            fs::create_dir_all(&rejected)?;
            let tmp = rejected.join(format!("{TMP_PREFIX}{}", uuid::Uuid::now_v7().simple()));
            write_synced(&tmp, text.as_bytes())?;
            fs::rename(&tmp, &reason_path)?;
            fs::rename(&from, &to)?;
            sync_dir(&rejected)?;
            sync_dir(&dir)
        })
        .await
    }

    /// Temporary files left by a crash between write and rename: queue the
    /// complete ones, move the rest aside.
    async fn recover_stale(&self, report: &mut DeliveryReport) {
        let dir = self.dir.clone();
        let stale = blocking(move || {
            let names = list_files(&dir, |n| n.starts_with(TMP_PREFIX))?;
            let now = SystemTime::now();
            let mut out = Vec::new();
            for name in names {
                let meta = fs::metadata(dir.join(&name))?;
                let age = meta
                    .modified()
                    .ok()
                    .and_then(|m| now.duration_since(m).ok());
                if age.is_some_and(|a| a >= STALE_TMP_AGE) {
                    let complete = fs::read(dir.join(&name))
                        .ok()
                        .is_some_and(|b| serde_json::from_slice::<AddDatasetRequest>(&b).is_ok());
                    out.push((name, complete));
                }
            }
            Ok(out)
        })
        .await;
        let stale = match stale {
            Ok(s) => s,
            Err(e) => {
                warn!(outbox = %self.dir.display(), "cannot look for stale temporary files: {e}");
                return;
            }
        };
        for (name, complete) in stale {
            if complete {
                let dir = self.dir.clone();
                let to = record_name();
                let res = blocking(move || {
                    fs::rename(dir.join(&name), dir.join(&to))?;
                    sync_dir(&dir)
                })
                .await;
                match res {
                    Ok(()) => {
                        warn!(outbox = %self.dir.display(), "queued a complete record left in a temporary file by an interrupted run")
                    }
                    Err(e) => {
                        warn!(outbox = %self.dir.display(), "cannot queue a stale temporary record: {e}")
                    }
                }
            } else {
                let reason = "incomplete record left in a temporary file by an interrupted run";
                match self.move_aside(&name, reason).await {
                    Ok(()) => {
                        report.rejected += 1;
                        self.rejected_total.fetch_add(1, Ordering::Relaxed);
                        error!(file = %self.rejected_dir.join(&name).display(), "outbox: {reason}; moved aside");
                    }
                    Err(e) => {
                        warn!(outbox = %self.dir.display(), "cannot move a stale temporary file aside: {e}")
                    }
                }
            }
        }
    }

    /// One delivery round to `store`: every queued record, oldest first,
    /// until one fails temporarily. Waits up to `lock_wait` for another
    /// deliverer to finish its round.
    pub async fn deliver(&self, store: &dyn MetadataStore, lock_wait: Duration) -> DeliveryReport {
        let mut report = DeliveryReport::default();
        let start = Instant::now();
        let Ok(_round) = tokio::time::timeout(lock_wait, self.round.lock()).await else {
            report.busy = true;
            report.pending = self.pending().unwrap_or(0);
            return report;
        };
        if !self.dir.is_dir() {
            return report;
        }
        let _lock = match self.lock(lock_wait.saturating_sub(start.elapsed())).await {
            Ok(Some(lock)) => lock,
            Ok(None) => {
                debug!(outbox = %self.dir.display(), "another process is delivering the outbox");
                report.busy = true;
                report.pending = self.pending().unwrap_or(0);
                return report;
            }
            Err(e) => {
                report.error = Some(format!(
                    "cannot lock the outbox {}: {e}",
                    self.dir.join(LOCK_FILE).display()
                ));
                report.pending = self.pending().unwrap_or(0);
                return report;
            }
        };
        self.recover_stale(&mut report).await;
        let dir = self.dir.clone();
        let names = match blocking(move || list_files(&dir, is_record_name)).await {
            Ok(n) => n,
            Err(e) => {
                report.error = Some(format!(
                    "cannot list the outbox {}: {e}",
                    self.dir.display()
                ));
                return report;
            }
        };
        for name in names {
            let path = self.dir.join(&name);
            let read_path = path.clone();
            let bytes = match blocking(move || fs::read(read_path)).await {
                Ok(b) => b,
                // Removed by hand meanwhile.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    report.error = Some(format!("cannot read {}: {e}", path.display()));
                    break;
                }
            };
            let outcome = match serde_json::from_slice::<AddDatasetRequest>(&bytes) {
                Err(e) => Err(format!("corrupt outbox file, not a dataset record: {e}")),
                Ok(req) => match store.add_dataset(&req.backup, &req.dataset).await {
                    Ok(()) => Ok(req),
                    Err(e) if e.recovery() == Recovery::Refused => Err(format!(
                        "refused by the metadata server (backup {}, host {}, dataset {} {}/{}): {e}",
                        req.backup.id,
                        req.backup.host,
                        req.dataset.id,
                        req.dataset.source,
                        req.dataset.name
                    )),
                    Err(e) => {
                        report.error = Some(e.to_string());
                        break;
                    }
                },
            };
            match outcome {
                Ok(req) => {
                    let dir = self.dir.clone();
                    let file = path.clone();
                    let removed = blocking(move || {
                        match fs::remove_file(&file) {
                            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                            _ => {}
                        }
                        sync_dir(&dir)
                    })
                    .await;
                    report.delivered += 1;
                    self.delivered_total.fetch_add(1, Ordering::Relaxed);
                    debug!(dataset_id = %req.dataset.id, backup_id = %req.backup.id, "dataset record delivered");
                    if let Err(e) = removed {
                        // Delivered again next round; the server ignores it.
                        report.error = Some(format!(
                            "delivered {}, but cannot remove it from the outbox: {e}",
                            path.display()
                        ));
                        break;
                    }
                }
                Err(reason) => match self.move_aside(&name, &reason).await {
                    Ok(()) => {
                        report.rejected += 1;
                        self.rejected_total.fetch_add(1, Ordering::Relaxed);
                        error!(
                            file = %self.rejected_dir.join(&name).display(),
                            "outbox: {reason}; the record was moved aside (move it back into {} to retry)",
                            self.dir.display()
                        );
                    }
                    Err(e) => {
                        report.error = Some(format!(
                            "{reason}; and moving {} to {} failed: {e}",
                            path.display(),
                            self.rejected_dir.display()
                        ));
                        break;
                    }
                },
            }
        }
        report.pending = self.pending().unwrap_or(0);
        report
    }
}

/// Timing of an [`OutboxStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxOptions {
    /// Time `add_dataset` may spend delivering after queueing (the record
    /// is safe either way).
    pub immediate_budget: Duration,
    /// After a failed round, `add_dataset` only queues for this long (the
    /// server is down: don't make every dataset wait for it).
    pub pause_after_failure: Duration,
    /// How long an explicit delivery waits for another deliverer's round.
    pub lock_wait: Duration,
}

impl Default for OutboxOptions {
    fn default() -> OutboxOptions {
        OutboxOptions {
            immediate_budget: Duration::from_secs(15),
            pause_after_failure: Duration::from_secs(30),
            lock_wait: Duration::from_secs(60),
        }
    }
}

/// A metadata store that queues dataset records in an [`Outbox`] and
/// delivers them to a remote store; reads go straight to the remote.
///
/// A backup never waits on the network for its records: right after
/// queueing one, a single attempt is made (through `immediate`, a client
/// that does not retry); if the server fails, records are only queued for
/// [`OutboxOptions::pause_after_failure`], and the background deliverer
/// (the agent) or the next run retries them.
pub struct OutboxStore {
    outbox: Arc<Outbox>,
    remote: Arc<dyn MetadataStore>,
    /// Delivers right after queueing: one attempt, no backoff.
    immediate: Arc<dyn MetadataStore>,
    url: String,
    options: OutboxOptions,
    /// No immediate delivery before this instant (after a failed round),
    /// and why that round failed.
    paused_until: Mutex<Option<(Instant, String)>>,
}

impl std::fmt::Debug for OutboxStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxStore")
            .field("outbox", &self.outbox.dir)
            .field("url", &self.url)
            .field("options", &self.options)
            .finish()
    }
}

impl OutboxStore {
    /// Queue in `outbox`, deliver to `remote` (reached at `url`, for
    /// messages).
    pub fn new(
        outbox: Outbox,
        remote: Arc<dyn MetadataStore>,
        url: impl Into<String>,
    ) -> OutboxStore {
        OutboxStore::with_options(outbox, remote, url, OutboxOptions::default())
    }

    /// Like [`OutboxStore::new`] with explicit timing.
    pub fn with_options(
        outbox: Outbox,
        remote: Arc<dyn MetadataStore>,
        url: impl Into<String>,
        options: OutboxOptions,
    ) -> OutboxStore {
        OutboxStore {
            outbox: Arc::new(outbox),
            immediate: remote.clone(),
            remote,
            url: url.into(),
            options,
            paused_until: Mutex::new(None),
        }
    }

    /// Deliver right after queueing through `immediate` (a client making a
    /// single attempt) instead of the retrying remote.
    pub fn with_immediate(mut self, immediate: Arc<dyn MetadataStore>) -> OutboxStore {
        self.immediate = immediate;
        self
    }

    /// The store for `config`: its `metadb` server through an outbox in its
    /// `work_dir`. `None` when no `metadb` is configured.
    pub fn from_config(config: &Config) -> Result<Option<OutboxStore>, MetadataError> {
        let Some(metadb) = &config.metadb else {
            return Ok(None);
        };
        let remote = RemoteStore::new(metadb)?;
        let url = remote.url().to_string();
        let defaults = RemoteOptions::default();
        let immediate = RemoteStore::with_options(
            metadb,
            RemoteOptions {
                connect_timeout: IMMEDIATE_CONNECT_TIMEOUT.min(defaults.connect_timeout),
                retry: RetryPolicy {
                    max_attempts: 1,
                    ..defaults.retry.clone()
                },
                ..defaults
            },
        )?;
        Ok(Some(
            OutboxStore::new(Outbox::open(&config.work_dir), Arc::new(remote), url)
                .with_immediate(Arc::new(immediate)),
        ))
    }

    /// The outbox (for counters: `pending()`, `rejected_total()`, ...).
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// The metadata server itself, without the outbox (for work that is
    /// repeated until it succeeds anyway, such as reconcile, and should
    /// see the server's refusals at once).
    pub fn remote(&self) -> &Arc<dyn MetadataStore> {
        &self.remote
    }

    /// The server's URL, for messages.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn pause_state(&self) -> std::sync::MutexGuard<'_, Option<(Instant, String)>> {
        crate::util::lock(&self.paused_until)
    }

    /// Why delivery is paused (a round failed less than
    /// `pause_after_failure` ago), if it is.
    fn paused(&self) -> Option<String> {
        self.pause_state()
            .as_ref()
            .filter(|(until, _)| Instant::now() < *until)
            .map(|(_, why)| why.clone())
    }

    fn note(&self, report: &DeliveryReport) {
        let mut paused = self.pause_state();
        if report.busy {
            return;
        }
        *paused = report
            .error
            .as_ref()
            .map(|e| (Instant::now() + self.options.pause_after_failure, e.clone()));
    }

    /// The delivery at the end of a command: every queued record within
    /// `budget`, unless a round failed moments ago (the server is down:
    /// the command does not wait for it again; the records stay queued and
    /// the report says why).
    pub async fn deliver_at_exit(&self, budget: Duration) -> DeliveryReport {
        match self.paused() {
            Some(error) => DeliveryReport {
                pending: self.outbox.pending().unwrap_or(0),
                error: Some(error),
                ..DeliveryReport::default()
            },
            None => self.deliver_pending_within(budget).await,
        }
    }

    /// Deliver every queued record now (oldest first), waiting for another
    /// deliverer's round if needed. Ends at the first temporary failure.
    pub async fn deliver_pending(&self) -> DeliveryReport {
        let report = self
            .outbox
            .deliver(&*self.remote, self.options.lock_wait)
            .await;
        self.note(&report);
        report
    }

    /// [`OutboxStore::deliver_pending`], giving up after `budget` (what is
    /// not delivered then stays queued).
    pub async fn deliver_pending_within(&self, budget: Duration) -> DeliveryReport {
        self.deliver_via(&*self.remote, budget).await
    }

    /// A round through `store` within `budget`, noted for the pause.
    async fn deliver_via(&self, store: &dyn MetadataStore, budget: Duration) -> DeliveryReport {
        let lock_wait = self.options.lock_wait.min(budget);
        let report = match tokio::time::timeout(budget, self.outbox.deliver(store, lock_wait)).await
        {
            Ok(report) => report,
            Err(_) => DeliveryReport {
                pending: self.outbox.pending().unwrap_or(0),
                error: Some(format!(
                    "delivery to {} did not finish within {}",
                    self.url,
                    humantime::format_duration(budget)
                )),
                ..DeliveryReport::default()
            },
        };
        self.note(&report);
        report
    }

    /// The agent's background delivery: a round at once, then one every
    /// `interval`, until `shutdown` completes (a round in progress is
    /// abandoned then; what it had not delivered stays queued).
    pub async fn run_delivery_loop(&self, interval: Duration, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        info!(url = %self.url, outbox = %self.outbox.dir.display(), every = %humantime::format_duration(interval), "outbox delivery started");
        loop {
            let report = tokio::select! {
                _ = &mut shutdown => break,
                r = self.deliver_pending() => r,
            };
            log_report(&self.url, &report);
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(interval) => {}
            }
        }
        info!(url = %self.url, "outbox delivery stopped");
    }
}

/// Log a round's outcome (nothing when there was nothing to do).
fn log_report(url: &str, r: &DeliveryReport) {
    if let Some(e) = &r.error {
        warn!(
            url,
            delivered = r.delivered,
            rejected = r.rejected,
            pending = r.pending,
            "outbox delivery incomplete: {e}"
        );
    } else if r.delivered > 0 || r.rejected > 0 {
        info!(
            url,
            delivered = r.delivered,
            rejected = r.rejected,
            pending = r.pending,
            "outbox delivery round done"
        );
    }
}

#[async_trait]
impl MetadataStore for OutboxStore {
    async fn add_dataset(&self, backup: &Backup, dataset: &Dataset) -> Result<(), MetadataError> {
        self.outbox.enqueue(backup, dataset).await?;
        if self.paused().is_some() {
            debug!(url = %self.url, "server failed recently; record left queued");
            return Ok(());
        }
        let report = self
            .deliver_via(&*self.immediate, self.options.immediate_budget)
            .await;
        log_report(&self.url, &report);
        Ok(())
    }

    async fn find_atoms(&self, req: &FindRequest) -> Result<Vec<Backup>, MetadataError> {
        self.remote.find_atoms(req).await
    }

    async fn update_active_job_status(
        &self,
        req: &UpdateActiveJobStatusRequest,
    ) -> Result<(), MetadataError> {
        self.remote.update_active_job_status(req).await
    }

    /// Sent straight to the server (not through the outbox): a result
    /// that cannot be delivered fails the drill's recording, and the next
    /// drill measures again.
    async fn add_verifications(&self, req: &AddVerificationsRequest) -> Result<(), MetadataError> {
        self.remote.add_verifications(req).await
    }

    async fn get_verifications(
        &self,
        req: &GetVerificationsRequest,
    ) -> Result<Vec<Verification>, MetadataError> {
        self.remote.get_verifications(req).await
    }

    /// Delivers the outbox first: a record still queued could be
    /// delivered after its removal and promise a forgotten snapshot again.
    /// While records stay queued (the server is unreachable), nothing is
    /// removed and the caller must not forget anything either.
    async fn remove_datasets(&self, req: &RemoveDatasetsRequest) -> Result<i64, MetadataError> {
        let report = self.deliver_pending().await;
        log_report(&self.url, &report);
        if report.pending > 0 {
            return Err(MetadataError::Unavailable {
                url: self.url.clone(),
                attempts: 1,
                status: None,
                reason: format!(
                    "{} dataset record(s) are still waiting in the outbox ({}); records are removed only once the outbox is delivered{}",
                    report.pending,
                    self.outbox.dir().display(),
                    report
                        .error
                        .as_deref()
                        .map(|e| format!(" (delivery: {e})"))
                        .unwrap_or_default()
                ),
            });
        }
        self.remote.remove_datasets(req).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeSet, VecDeque};

    use crate::metadata::remote::tests::sample;

    fn rejected(status: u16) -> MetadataError {
        MetadataError::Rejected {
            url: "http://metadb/api/add_dataset".into(),
            status,
            message: format!("scripted {status}"),
        }
    }

    fn unavailable() -> MetadataError {
        MetadataError::Unavailable {
            url: "http://metadb/api/add_dataset".into(),
            attempts: 1,
            status: None,
            reason: "connection refused".into(),
        }
    }

    /// A store that answers from a script (then Ok) and records acks.
    #[derive(Default)]
    struct Fake {
        script: Mutex<VecDeque<Result<(), MetadataError>>>,
        calls: AtomicU64,
        acked: Mutex<Vec<String>>,
        delay: Duration,
        /// When set, every call checks that the record is still queued.
        check_queued_in: Option<PathBuf>,
        fail_always: bool,
    }

    impl Fake {
        fn acked(&self) -> Vec<String> {
            self.acked.lock().unwrap().clone()
        }
        fn push(&self, r: Result<(), MetadataError>) {
            self.script.lock().unwrap().push_back(r);
        }
    }

    #[async_trait]
    impl MetadataStore for Fake {
        async fn add_dataset(&self, _b: &Backup, d: &Dataset) -> Result<(), MetadataError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if let Some(dir) = &self.check_queued_in {
                let found = list_files(dir, is_record_name)
                    .unwrap()
                    .into_iter()
                    .any(|n| {
                        fs::read(dir.join(n))
                            .ok()
                            .and_then(|b| serde_json::from_slice::<AddDatasetRequest>(&b).ok())
                            .is_some_and(|r| r.dataset.id == d.id)
                    });
                assert!(found, "record {} was removed before its ack", d.id);
            }
            tokio::time::sleep(self.delay).await;
            if self.fail_always {
                return Err(unavailable());
            }
            let r = self.script.lock().unwrap().pop_front().unwrap_or(Ok(()));
            if r.is_ok() {
                self.acked.lock().unwrap().push(d.id.clone());
            }
            r
        }
        async fn find_atoms(&self, _req: &FindRequest) -> Result<Vec<Backup>, MetadataError> {
            Ok(vec![sample("found").0])
        }
        async fn update_active_job_status(
            &self,
            _req: &UpdateActiveJobStatusRequest,
        ) -> Result<(), MetadataError> {
            Ok(())
        }
    }

    const WAIT: Duration = Duration::from_secs(10);

    async fn enqueue_n(outbox: &Outbox, n: usize) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for i in 0..n {
            let (b, d) = sample(&format!("d{i}"));
            out.push(outbox.enqueue(&b, &d).await.unwrap());
        }
        out
    }

    #[test]
    fn refusals_about_the_record_are_told_from_setup_problems() {
        let refused = |e: &MetadataError| e.recovery() == Recovery::Refused;
        for s in [400, 403, 409, 413, 422] {
            assert!(refused(&rejected(s)), "{s}");
        }
        for s in [401, 404, 405, 407, 408, 308] {
            assert_eq!(rejected(s).recovery(), Recovery::FixSetup, "{s}");
        }
        assert_eq!(rejected(429).recovery(), Recovery::Retry);
        assert_eq!(unavailable().recovery(), Recovery::Retry);
        assert!(refused(&MetadataError::Conflict("x".into())));
    }

    #[tokio::test]
    async fn enqueue_writes_whole_time_ordered_files() {
        let work = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(work.path());
        assert_eq!(outbox.pending().unwrap(), 0);
        assert!(
            !outbox.dir().exists(),
            "nothing is created before a record is queued"
        );
        let paths = enqueue_n(&outbox, 5).await;
        assert_eq!(outbox.pending().unwrap(), 5);
        let names = list_files(outbox.dir(), |_| true).unwrap();
        assert_eq!(names.len(), 5, "no temporary or lock files: {names:?}");
        let listed: Vec<PathBuf> = list_files(outbox.dir(), is_record_name)
            .unwrap()
            .into_iter()
            .map(|n| outbox.dir().join(n))
            .collect();
        assert_eq!(listed, paths, "file names sort in queueing order");
        let req: AddDatasetRequest = serde_json::from_slice(&fs::read(&paths[3]).unwrap()).unwrap();
        assert_eq!(req.dataset.id, "d3");
        assert!(req.backup.datasets.is_empty());
    }

    #[tokio::test]
    async fn delivery_goes_oldest_first_and_removes_acked_records() {
        let work = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(work.path());
        enqueue_n(&outbox, 3).await;
        let fake = Fake::default();
        let r = outbox.deliver(&fake, WAIT).await;
        assert_eq!(
            r,
            DeliveryReport {
                delivered: 3,
                ..Default::default()
            }
        );
        assert_eq!(fake.acked(), ["d0", "d1", "d2"]);
        assert_eq!(outbox.pending().unwrap(), 0);
        assert_eq!(outbox.delivered_total(), 3);
    }

    #[tokio::test]
    async fn a_temporary_failure_keeps_the_rest_queued_for_the_next_round() {
        let work = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(work.path());
        let paths = enqueue_n(&outbox, 3).await;
        let fake = Fake::default();
        fake.push(Ok(()));
        fake.push(Err(unavailable()));
        let r = outbox.deliver(&fake, WAIT).await;
        assert_eq!(r.delivered, 1);
        assert_eq!(r.pending, 2);
        assert!(r.error.as_deref().unwrap().contains("connection refused"));
        assert!(!paths[0].exists() && paths[1].exists() && paths[2].exists());
        assert_eq!(
            fake.calls.load(Ordering::SeqCst),
            2,
            "the round stops at the failure"
        );
        let r = outbox.deliver(&fake, WAIT).await;
        assert_eq!((r.delivered, r.pending, r.error), (2, 0, None));
        assert_eq!(fake.acked(), ["d0", "d1", "d2"]);
    }

    #[tokio::test]
    async fn a_refused_record_is_moved_aside_with_its_reason_and_counted() {
        let work = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(work.path());
        let paths = enqueue_n(&outbox, 3).await;
        let fake = Fake::default();
        fake.push(Ok(()));
        fake.push(Err(rejected(403)));
        let r = outbox.deliver(&fake, WAIT).await;
        assert_eq!((r.delivered, r.rejected, r.pending), (2, 1, 0));
        assert_eq!(
            fake.acked(),
            ["d0", "d2"],
            "the round goes on after a refusal"
        );
        let name = paths[1].file_name().unwrap();
        let kept = outbox.rejected_dir().join(name);
        let req: AddDatasetRequest = serde_json::from_slice(&fs::read(&kept).unwrap()).unwrap();
        assert_eq!(req.dataset.id, "d1", "the record is kept unchanged");
        let reason = fs::read_to_string(kept.with_extension("reason")).unwrap();
        assert!(
            reason.contains("HTTP 403") && reason.contains("scripted 403"),
            "{reason}"
        );
        assert!(reason.contains("dataset d1"), "{reason}");
        assert_eq!(outbox.rejected_total(), 1);
        assert_eq!(outbox.rejected_stored().unwrap(), 1);
        // Moving it back queues it again.
        fs::rename(&kept, outbox.dir().join(name)).unwrap();
        let r = outbox.deliver(&fake, WAIT).await;
        assert_eq!(r.delivered, 1);
        assert_eq!(fake.acked(), ["d0", "d2", "d1"]);
    }

    #[tokio::test]
    async fn an_authentication_failure_keeps_records_queued() {
        let work = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(work.path());
        enqueue_n(&outbox, 2).await;
        let fake = Fake::default();
        fake.push(Err(rejected(401)));
        let r = outbox.deliver(&fake, WAIT).await;
        assert_eq!((r.delivered, r.rejected, r.pending), (0, 0, 2));
        assert!(r.error.unwrap().contains("401"));
        assert_eq!(outbox.rejected_total(), 0);
    }

    #[tokio::test]
    async fn a_corrupt_file_is_moved_aside_without_stopping_delivery() {
        let work = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(work.path());
        enqueue_n(&outbox, 1).await;
        let bad = outbox.dir().join("00000000T000000.000000000Z-corrupt.json");
        fs::write(&bad, "{\"backup\": {").unwrap();
        let fake = Fake::default();
        let r = outbox.deliver(&fake, WAIT).await;
        assert_eq!((r.delivered, r.rejected, r.pending), (1, 1, 0));
        let reason = fs::read_to_string(
            outbox
                .rejected_dir()
                .join("00000000T000000.000000000Z-corrupt.reason"),
        )
        .unwrap();
        assert!(reason.contains("corrupt outbox file"), "{reason}");
        assert!(
            outbox
                .rejected_dir()
                .join("00000000T000000.000000000Z-corrupt.json")
                .exists()
        );
        assert_eq!(fake.acked(), ["d0"]);
    }

    #[tokio::test]
    async fn stale_temporary_files_are_recovered_or_moved_aside() {
        let work = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(work.path());
        enqueue_n(&outbox, 1).await;
        let (b, d) = sample("from-crash");
        let whole = serde_json::to_vec(&AddDatasetRequest::new(&b, &d)).unwrap();
        let old = SystemTime::now() - Duration::from_secs(7200);
        for (name, bytes) in [
            (".tmp-whole", &whole[..]),
            (".tmp-half", &whole[..10]),
            (".tmp-fresh", &whole[..]),
        ] {
            let p = outbox.dir().join(name);
            fs::write(&p, bytes).unwrap();
            if name != ".tmp-fresh" {
                File::options()
                    .write(true)
                    .open(&p)
                    .unwrap()
                    .set_modified(old)
                    .unwrap();
            }
        }
        let fake = Fake::default();
        let r = outbox.deliver(&fake, WAIT).await;
        assert_eq!((r.delivered, r.rejected), (2, 1));
        assert_eq!(fake.acked(), ["d0", "from-crash"]);
        assert!(outbox.rejected_dir().join(".tmp-half").exists());
        assert!(
            outbox.dir().join(".tmp-fresh").exists(),
            "a file being written is left alone"
        );
    }

    #[tokio::test]
    async fn concurrent_deliverers_lose_nothing() {
        let work = tempfile::tempdir().unwrap();
        // Two outboxes on one directory: two processes, each with its own lock.
        let a = Arc::new(Outbox::open(work.path()));
        let b = Arc::new(Outbox::open(work.path()));
        let fake = Arc::new(Fake {
            delay: Duration::from_millis(2),
            check_queued_in: Some(a.dir().to_path_buf()),
            ..Fake::default()
        });
        let writer = {
            let a = a.clone();
            tokio::spawn(async move {
                for i in 0..40 {
                    let (bk, d) = sample(&format!("d{i:02}"));
                    a.enqueue(&bk, &d).await.unwrap();
                    tokio::task::yield_now().await;
                }
            })
        };
        let deliverer = |o: Arc<Outbox>, f: Arc<Fake>| {
            tokio::spawn(async move {
                for _ in 0..30 {
                    let r = o.deliver(&*f, WAIT).await;
                    assert_eq!(r.error, None);
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
            })
        };
        let d1 = deliverer(a.clone(), fake.clone());
        let d2 = deliverer(b.clone(), fake.clone());
        writer.await.unwrap();
        d1.await.unwrap();
        d2.await.unwrap();
        b.deliver(&*fake, WAIT).await;
        let acked: BTreeSet<String> = fake.acked().into_iter().collect();
        let want: BTreeSet<String> = (0..40).map(|i| format!("d{i:02}")).collect();
        assert_eq!(acked, want);
        assert_eq!(a.pending().unwrap(), 0);
        assert_eq!(
            a.delivered_total() + b.delivered_total(),
            fake.acked().len() as u64
        );
    }

    #[tokio::test]
    async fn a_second_deliverer_waits_for_the_lock_or_reports_busy() {
        let work = tempfile::tempdir().unwrap();
        let a = Outbox::open(work.path());
        let b = Outbox::open(work.path());
        enqueue_n(&a, 1).await;
        let held = a.lock(WAIT).await.unwrap().expect("free");
        let fake = Fake::default();
        let r = b.deliver(&fake, Duration::from_millis(100)).await;
        assert!(r.busy);
        assert_eq!(r.pending, 1);
        assert_eq!(fake.calls.load(Ordering::SeqCst), 0);
        drop(held);
        let r = b.deliver(&fake, Duration::from_millis(100)).await;
        assert_eq!((r.busy, r.delivered), (false, 1));
    }

    fn outbox_store(work: &Path, fake: Arc<Fake>) -> OutboxStore {
        OutboxStore::with_options(
            Outbox::open(work),
            fake,
            "http://metadb",
            OutboxOptions {
                immediate_budget: Duration::from_secs(5),
                pause_after_failure: Duration::from_secs(60),
                lock_wait: Duration::from_secs(5),
            },
        )
    }

    #[tokio::test]
    async fn outbox_store_queues_then_delivers() {
        let work = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake::default());
        let store = outbox_store(work.path(), fake.clone());
        let (b, d) = sample("d1");
        store.add_dataset(&b, &d).await.unwrap();
        assert_eq!(fake.acked(), ["d1"]);
        assert_eq!(store.outbox().pending().unwrap(), 0);
        // Reads go to the remote.
        assert_eq!(
            store.find_atoms(&FindRequest::default()).await.unwrap()[0].id,
            "b-found"
        );
    }

    #[tokio::test]
    async fn outbox_store_succeeds_while_the_server_is_down() {
        let work = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake {
            fail_always: true,
            ..Fake::default()
        });
        let store = outbox_store(work.path(), fake.clone());
        for i in 0..3 {
            let (b, d) = sample(&format!("d{i}"));
            store.add_dataset(&b, &d).await.unwrap();
        }
        assert_eq!(store.outbox().pending().unwrap(), 3);
        assert_eq!(
            fake.calls.load(Ordering::SeqCst),
            1,
            "after a failure, records are only queued for a while"
        );
        let r = store.deliver_pending().await;
        assert_eq!((r.delivered, r.pending), (0, 3));
        assert_eq!(
            fake.calls.load(Ordering::SeqCst),
            2,
            "an explicit delivery always tries"
        );
    }

    /// Issue 16: with the server down, a backup does not wait for it. The
    /// record goes through the single-attempt client; the retrying one is
    /// left to the background deliverer, and the delivery at the end of
    /// the command does not try again right after a failure.
    #[tokio::test]
    async fn a_backup_never_waits_on_a_server_that_is_down() {
        let work = tempfile::tempdir().unwrap();
        let retrying = Arc::new(Fake {
            delay: Duration::from_secs(3600),
            ..Fake::default()
        });
        let once = Arc::new(Fake {
            fail_always: true,
            ..Fake::default()
        });
        let store = outbox_store(work.path(), retrying.clone()).with_immediate(once.clone());
        for i in 0..2 {
            let (b, d) = sample(&format!("d{i}"));
            store.add_dataset(&b, &d).await.unwrap();
        }
        let r = store.deliver_at_exit(Duration::from_secs(3600)).await;
        assert_eq!((r.delivered, r.pending), (0, 2));
        assert!(r.error.unwrap().contains("connection refused"));
        assert_eq!(once.calls.load(Ordering::SeqCst), 1);
        assert_eq!(retrying.calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn immediate_delivery_is_bounded_in_time() {
        let work = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake {
            delay: Duration::from_secs(30),
            ..Fake::default()
        });
        let store = OutboxStore::with_options(
            Outbox::open(work.path()),
            fake.clone(),
            "http://metadb",
            OutboxOptions {
                immediate_budget: Duration::from_millis(200),
                ..OutboxOptions::default()
            },
        );
        let started = Instant::now();
        let (b, d) = sample("d1");
        store.add_dataset(&b, &d).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(
            store.outbox().pending().unwrap(),
            1,
            "not acknowledged: still queued"
        );
        let r = store
            .deliver_pending_within(Duration::from_millis(100))
            .await;
        assert!(r.error.unwrap().contains("did not finish within"));
        assert_eq!(r.pending, 1);
    }

    #[tokio::test]
    async fn add_dataset_fails_when_the_record_cannot_be_queued() {
        let work = tempfile::tempdir().unwrap();
        let not_a_dir = work.path().join("file");
        fs::write(&not_a_dir, "").unwrap();
        let fake = Arc::new(Fake::default());
        let store = outbox_store(&not_a_dir, fake.clone());
        let (b, d) = sample("d1");
        let e = store.add_dataset(&b, &d).await.unwrap_err().to_string();
        assert!(
            e.contains("cannot queue the record of dataset d1") && e.contains("outbox"),
            "{e}"
        );
        assert_eq!(fake.calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn the_delivery_loop_delivers_until_shutdown() {
        let work = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake::default());
        fake.push(Err(unavailable()));
        let store = Arc::new(outbox_store(work.path(), fake.clone()));
        enqueue_n(store.outbox(), 3).await;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .run_delivery_loop(Duration::from_millis(20), async {
                        let _ = rx.await;
                    })
                    .await
            })
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.outbox().pending().unwrap() > 0 {
            assert!(Instant::now() < deadline, "loop did not deliver");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(fake.acked(), ["d0", "d1", "d2"]);
        tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("loop stops on shutdown")
            .unwrap();
    }

    #[tokio::test]
    async fn delivery_through_the_remote_store_survives_an_outage() {
        use crate::metadata::remote::testserver::{Reply, Script, start};
        use crate::metadata::remote::{RemoteOptions, RetryPolicy};
        let script = Script::default();
        script.set_default(Reply::status(503));
        let url = start(script.clone()).await;
        let remote = RemoteStore::with_options(
            &crate::config::MetadbClientConfig {
                url: url.clone(),
                tls_cert: None,
                tls_key: None,
                tls_ca: None,
                token_file: None,
            },
            RemoteOptions {
                retry: RetryPolicy {
                    max_attempts: 2,
                    initial_backoff: Duration::from_millis(5),
                    ..RetryPolicy::default()
                },
                ..RemoteOptions::default()
            },
        )
        .unwrap();
        let work = tempfile::tempdir().unwrap();
        let store = OutboxStore::new(Outbox::open(work.path()), Arc::new(remote), url);
        let (b, d) = sample("d1");
        store.add_dataset(&b, &d).await.unwrap();
        assert_eq!(store.outbox().pending().unwrap(), 1);
        assert_eq!(script.attempts(), 2);
        script.set_default(Reply::ok("{}"));
        let r = store.deliver_pending().await;
        assert_eq!((r.delivered, r.pending, r.error), (1, 0, None));
        let bodies: Vec<String> = script.seen().into_iter().map(|s| s.body).collect();
        assert_eq!(bodies.len(), 3);
        assert!(
            bodies.iter().all(|b| b == &bodies[0]),
            "the same record every time"
        );
    }
}
