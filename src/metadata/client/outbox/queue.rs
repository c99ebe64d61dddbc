//! The durable queue of records on their way to the metadata server
//! (`<work_dir>/outbox/`), and its delivery rounds.
//!
//! Before a record is sent, it is written to its own file in
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
//! Two kinds of record share the queue, told apart by the file name's
//! extension ([`RecordKind`]): dataset records (`*.json`, the body of
//! `POST /api/add_dataset`, as every earlier version wrote them) and
//! verification results (`*.verifications`, the body of
//! `POST /api/add_verifications`). One queue keeps their order: results
//! queued after the dataset records they are about are delivered after
//! them (the server refuses a result for an atom version it does not hold).
//! An older tabacco lists only `*.json`, so it leaves verification files
//! queued rather than setting them aside as unreadable.
//!
//! Any number of deliverers (the agent's background task, `tabacco backup`
//! on the same host) may run at once: a round holds an exclusive `flock` on
//! `outbox/.lock` (released by the kernel if the process dies), and records
//! are only ever deleted after their own acknowledgement. The server is
//! idempotent, so a record sent twice (an ack lost in a crash) is harmless.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use chrono::Utc;
use tracing::{debug, error, warn};

use crate::filelock::{Locked, lock_waiting};
use crate::metadata::{MetadataError, MetadataStore, Recovery};
use crate::model::{AddDatasetRequest, AddVerificationsRequest, Backup, Dataset};

/// Name of the outbox directory inside `work_dir`.
pub const OUTBOX_DIR: &str = "outbox";
/// Name of the directory of refused records inside the outbox.
pub const REJECTED_DIR: &str = "rejected";
/// Extension of the reason files beside refused records.
const REASON_EXT: &str = "reason";
/// Prefix of files being written.
const TMP_PREFIX: &str = ".tmp-";
/// The lock file held by a delivery round.
const LOCK_FILE: &str = ".lock";
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

/// Where a queued record is ([`Outbox::state_of`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordState {
    /// Still waiting for delivery.
    Queued,
    /// Refused for good (or unreadable) and kept in `rejected/` as `file`,
    /// with the `reason` of its `.reason` file.
    Rejected {
        /// Its file in `rejected/`.
        file: PathBuf,
        /// Why (time and error).
        reason: String,
    },
    /// No longer in the outbox: acknowledged by the server and removed.
    Gone,
}

/// The on-disk queue of records (`<work_dir>/outbox/`).
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

/// What a queued file holds, told by its name's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// A dataset record ([`AddDatasetRequest`]), `*.json`: the only kind
    /// earlier versions queued, so their files are read unchanged.
    Dataset,
    /// Verification results ([`AddVerificationsRequest`]),
    /// `*.verifications` (an extension older versions do not list).
    Verifications,
}

impl RecordKind {
    /// The extension of its files.
    pub fn ext(self) -> &'static str {
        match self {
            RecordKind::Dataset => "json",
            RecordKind::Verifications => "verifications",
        }
    }

    /// The kind of the file `name` (a queued record or a temporary file),
    /// if it is one.
    fn of_name(name: &str) -> Option<RecordKind> {
        match Path::new(name).extension().and_then(|e| e.to_str()) {
            Some("json") => Some(RecordKind::Dataset),
            Some("verifications") => Some(RecordKind::Verifications),
            _ => None,
        }
    }

    /// The kind of a temporary file: written with the extension of its
    /// kind, except dataset records (`.tmp-ID`, as earlier versions wrote
    /// them).
    fn of_tmp(name: &str) -> RecordKind {
        RecordKind::of_name(name).unwrap_or(RecordKind::Dataset)
    }

    /// Whether `bytes` is a whole record of this kind.
    fn is_whole(self, bytes: &[u8]) -> bool {
        match self {
            RecordKind::Dataset => serde_json::from_slice::<AddDatasetRequest>(bytes).is_ok(),
            RecordKind::Verifications => {
                serde_json::from_slice::<AddVerificationsRequest>(bytes).is_ok()
            }
        }
    }
}

/// A unique file name for a record of `kind` that sorts by creation time
/// (whatever the kind).
fn record_name(kind: RecordKind) -> String {
    format!(
        "{}-{}.{}",
        Utc::now().format("%Y%m%dT%H%M%S%.9fZ"),
        uuid::Uuid::now_v7().simple(),
        kind.ext()
    )
}

/// The name of a temporary file for a record of `kind`.
fn tmp_name(kind: RecordKind) -> String {
    let id = uuid::Uuid::now_v7().simple();
    match kind {
        RecordKind::Dataset => format!("{TMP_PREFIX}{id}"),
        other => format!("{TMP_PREFIX}{id}.{}", other.ext()),
    }
}

/// Whether `name` is a queued record (not a temporary, lock or directory).
fn is_record_name(name: &str) -> bool {
    !name.starts_with('.') && RecordKind::of_name(name).is_some()
}

/// What happened to one record sent.
enum Sent {
    /// Acknowledged (what it was, for the log).
    Acked(String),
    /// Refused for good, or unreadable: why.
    Refused(String),
    /// Failed for now: the round stops.
    Failed(String),
}

/// Send the record of `kind` in `bytes` to `store`.
async fn send(store: &dyn MetadataStore, kind: RecordKind, bytes: &[u8]) -> Sent {
    let (what, result) = match kind {
        RecordKind::Dataset => match serde_json::from_slice::<AddDatasetRequest>(bytes) {
            Err(e) => {
                return Sent::Refused(format!("corrupt outbox file, not a dataset record: {e}"));
            }
            Ok(req) => (
                format!(
                    "backup {}, host {}, dataset {} {}/{}",
                    req.backup.id,
                    req.backup.host,
                    req.dataset.id,
                    req.dataset.source,
                    req.dataset.name
                ),
                store.add_dataset(&req.backup, &req.dataset).await,
            ),
        },
        RecordKind::Verifications => {
            match serde_json::from_slice::<AddVerificationsRequest>(bytes) {
                Err(e) => {
                    return Sent::Refused(format!(
                        "corrupt outbox file, not verification results: {e}"
                    ));
                }
                Ok(req) => (
                    format!(
                        "verification results of host {}: {} atom version(s){}",
                        req.host,
                        req.verifications.len(),
                        req.verifications
                            .first()
                            .map(|v| format!(
                                ", the first backup {} dataset {} atom {}",
                                v.backup_id, v.dataset_id, v.atom
                            ))
                            .unwrap_or_default()
                    ),
                    store.add_verifications(&req).await.map(|_| ()),
                ),
            }
        }
    };
    match result {
        Ok(()) => Sent::Acked(what),
        Err(e) if e.recovery() == Recovery::Refused => {
            Sent::Refused(format!("refused by the metadata server ({what}): {e}"))
        }
        Err(e) => Sent::Failed(e.to_string()),
    }
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
        let path = self
            .write_record(
                RecordKind::Dataset,
                body,
                format!("the record of dataset {}", dataset.id),
            )
            .await?;
        debug!(file = %path.display(), dataset_id = %dataset.id, "dataset record queued in the outbox");
        Ok(path)
    }

    /// Queue verification results durably, behind every record queued
    /// before; returns the file. When this returns `Ok`, the results
    /// survive a crash or power loss.
    pub async fn enqueue_verifications(
        &self,
        req: &AddVerificationsRequest,
    ) -> Result<PathBuf, MetadataError> {
        let body = serde_json::to_vec_pretty(req).map_err(|e| {
            MetadataError::BadRequest(format!("cannot encode the verification results: {e}"))
        })?;
        let path = self
            .write_record(
                RecordKind::Verifications,
                body,
                format!(
                    "{} verification result(s) of host {}",
                    req.verifications.len(),
                    req.host
                ),
            )
            .await?;
        debug!(file = %path.display(), results = req.verifications.len(), "verification results queued in the outbox");
        Ok(path)
    }

    /// Write `body` as a new record of `kind` (`what` it is, for the
    /// error): temporary file, fsync, rename, directory fsync.
    async fn write_record(
        &self,
        kind: RecordKind,
        body: Vec<u8>,
        what: String,
    ) -> Result<PathBuf, MetadataError> {
        let dir = self.dir.clone();
        let path = dir.join(record_name(kind));
        let target = path.clone();
        blocking(move || {
            if !dir.is_dir() {
                fs::create_dir_all(&dir)?;
                if let Some(parent) = dir.parent() {
                    sync_dir(parent)?;
                }
            }
            let tmp = dir.join(tmp_name(kind));
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
                "cannot queue {what} in the outbox {} (is work_dir writable, is the disk full?)",
                self.dir.display()
            ),
            source,
        })?;
        Ok(path)
    }

    /// Where the record queued as `file` (a path [`Outbox::enqueue`] or
    /// [`Outbox::enqueue_verifications`] returned) is now.
    pub fn state_of(&self, file: &Path) -> RecordState {
        if file.exists() {
            return RecordState::Queued;
        }
        let Some(name) = file.file_name() else {
            return RecordState::Gone;
        };
        let kept = self.rejected_dir.join(name);
        if !kept.exists() {
            return RecordState::Gone;
        }
        let reason = fs::read_to_string(kept.with_extension(REASON_EXT))
            .map(|r| r.trim().to_string())
            .unwrap_or_else(|e| format!("refused (its .reason file cannot be read: {e})"));
        RecordState::Rejected { file: kept, reason }
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
                    let kind = RecordKind::of_tmp(&name);
                    let complete = fs::read(dir.join(&name))
                        .ok()
                        .is_some_and(|b| kind.is_whole(&b));
                    out.push((name, kind, complete));
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
        for (name, kind, complete) in stale {
            if complete {
                let dir = self.dir.clone();
                let to = record_name(kind);
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
            let Some(kind) = RecordKind::of_name(&name) else {
                continue;
            };
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
            let outcome = match send(store, kind, &bytes).await {
                Sent::Acked(what) => Ok(what),
                Sent::Refused(reason) => Err(reason),
                Sent::Failed(e) => {
                    report.error = Some(e);
                    break;
                }
            };
            match outcome {
                Ok(what) => {
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
                    debug!(record = %what, "record delivered");
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::collections::{BTreeSet, VecDeque};
    use std::sync::{Arc, Mutex};

    use async_trait::async_trait;

    use crate::metadata::Recording;
    use crate::metadata::client::remote::tests::sample;
    use crate::model::{FindRequest, UpdateActiveJobStatusRequest, Verification, VerifyResult};

    pub(crate) fn rejected(status: u16) -> MetadataError {
        MetadataError::Rejected {
            url: "http://metadb/api/add_dataset".into(),
            status,
            message: format!("scripted {status}"),
        }
    }

    pub(crate) fn unavailable() -> MetadataError {
        MetadataError::Unavailable {
            url: "http://metadb/api/add_dataset".into(),
            attempts: 1,
            status: None,
            reason: "connection refused".into(),
        }
    }

    /// A store that answers from a script (then Ok) and records acks.
    #[derive(Default)]
    pub(crate) struct Fake {
        pub(crate) script: Mutex<VecDeque<Result<(), MetadataError>>>,
        pub(crate) calls: AtomicU64,
        pub(crate) acked: Mutex<Vec<String>>,
        pub(crate) delay: Duration,
        /// When set, every call checks that the record is still queued.
        pub(crate) check_queued_in: Option<PathBuf>,
        pub(crate) fail_always: bool,
        /// As the server does: refuse (409) verification results about a
        /// dataset not acknowledged before.
        pub(crate) verifications_need_datasets: bool,
    }

    impl Fake {
        pub(crate) fn acked(&self) -> Vec<String> {
            self.acked.lock().unwrap().clone()
        }
        pub(crate) fn push(&self, r: Result<(), MetadataError>) {
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
        /// Acks as `v:DATASET_ID` of the first result.
        async fn add_verifications(
            &self,
            req: &AddVerificationsRequest,
        ) -> Result<Recording, MetadataError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            if self.fail_always {
                return Err(unavailable());
            }
            let r = self.script.lock().unwrap().pop_front().unwrap_or(Ok(()));
            r?;
            let acked = self.acked();
            if self.verifications_need_datasets
                && let Some(v) = req
                    .verifications
                    .iter()
                    .find(|v| !acked.contains(&v.dataset_id))
            {
                return Err(MetadataError::Rejected {
                    url: "http://metadb/api/add_verifications".into(),
                    status: 409,
                    message: format!("atom version {} is not in the index", v.dataset_id),
                });
            }
            let first = req.verifications.first().map(|v| v.dataset_id.as_str());
            self.acked
                .lock()
                .unwrap()
                .push(format!("v:{}", first.unwrap_or_default()));
            Ok(Recording::Stored)
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

    /// Results of drills of the atom `alice` of dataset `dataset_id` (as
    /// [`sample`] makes it).
    pub(crate) fn verifications(dataset_id: &str) -> AddVerificationsRequest {
        AddVerificationsRequest {
            host: "host-a".into(),
            verifications: vec![Verification {
                backup_id: format!("b-{dataset_id}"),
                dataset_id: dataset_id.into(),
                atom: "alice".into(),
                verified_at: "2026-01-03T00:00:00Z".parse().unwrap(),
                result: VerifyResult::Ok,
                error: None,
                last_ok: None,
            }],
        }
    }

    pub(crate) async fn enqueue_n(outbox: &Outbox, n: usize) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for i in 0..n {
            let (b, d) = sample(&format!("d{i}"));
            out.push(outbox.enqueue(&b, &d).await.unwrap());
        }
        out
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

    #[tokio::test]
    async fn verification_results_are_delivered_after_the_datasets_queued_before_them() {
        let work = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(work.path());
        let (b, d) = sample("d0");
        outbox.enqueue(&b, &d).await.unwrap();
        let v = outbox
            .enqueue_verifications(&verifications("d0"))
            .await
            .unwrap();
        assert_eq!(
            v.extension().unwrap(),
            "verifications",
            "the file says what it holds"
        );
        let (b, d) = sample("d1");
        outbox.enqueue(&b, &d).await.unwrap();
        assert_eq!(outbox.pending().unwrap(), 3);
        let on_disk: AddVerificationsRequest =
            serde_json::from_slice(&fs::read(&v).unwrap()).unwrap();
        assert_eq!(
            on_disk,
            verifications("d0"),
            "the body of POST /api/add_verifications"
        );
        let fake = Fake {
            verifications_need_datasets: true,
            ..Fake::default()
        };
        let r = outbox.deliver(&fake, WAIT).await;
        assert_eq!(
            (r.delivered, r.rejected, r.pending, r.error),
            (3, 0, 0, None)
        );
        assert_eq!(fake.acked(), ["d0", "v:d0", "d1"]);
        assert_eq!(outbox.delivered_total(), 3);
    }

    /// A dataset record queued by an earlier version (its name and its
    /// plain `AddDatasetRequest` JSON, written here by hand) is still read
    /// and delivered, in time order with the new kinds.
    #[tokio::test]
    async fn an_old_format_dataset_file_still_delivers() {
        let work = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(work.path());
        fs::create_dir_all(outbox.dir()).unwrap();
        let old = serde_json::json!({
            "backup": {
                "id": "b-old",
                "timestamp": "2026-01-02T03:04:05Z",
                "host": "host-a",
                "datasets": []
            },
            "dataset": {
                "id": "old",
                "name": "users",
                "source": "home",
                "atoms": [{"name": "alice", "path": ""}],
                "snapshot_id": "ab".repeat(32),
                "total_files": 1,
                "total_bytes": 2,
                "bytes_added": 3,
                "duration": 4
            }
        });
        fs::write(
            outbox
                .dir()
                .join("20260102T030405.000000000Z-0190a0b0c0d07e8f9a0b1c2d3e4f5a6b.json"),
            serde_json::to_vec_pretty(&old).unwrap(),
        )
        .unwrap();
        outbox
            .enqueue_verifications(&verifications("old"))
            .await
            .unwrap();
        assert_eq!(outbox.pending().unwrap(), 2);
        let fake = Fake {
            verifications_need_datasets: true,
            ..Fake::default()
        };
        let r = outbox.deliver(&fake, WAIT).await;
        assert_eq!((r.delivered, r.rejected, r.pending), (2, 0, 0));
        assert_eq!(fake.acked(), ["old", "v:old"]);
    }

    #[tokio::test]
    async fn refused_verification_results_are_moved_aside_with_their_reason() {
        for status in [409, 400] {
            let work = tempfile::tempdir().unwrap();
            let outbox = Outbox::open(work.path());
            let v = outbox
                .enqueue_verifications(&verifications("d0"))
                .await
                .unwrap();
            let (b, d) = sample("d1");
            outbox.enqueue(&b, &d).await.unwrap();
            let fake = Fake::default();
            fake.push(Err(rejected(status)));
            let r = outbox.deliver(&fake, WAIT).await;
            assert_eq!((r.delivered, r.rejected, r.pending), (1, 1, 0), "{status}");
            assert_eq!(fake.acked(), ["d1"], "the round goes on after a refusal");
            let kept = outbox.rejected_dir().join(v.file_name().unwrap());
            let body: AddVerificationsRequest =
                serde_json::from_slice(&fs::read(&kept).unwrap()).unwrap();
            assert_eq!(body, verifications("d0"), "kept unchanged");
            let reason = fs::read_to_string(kept.with_extension("reason")).unwrap();
            assert!(
                reason.contains(&format!("HTTP {status}"))
                    && reason.contains("verification results of host host-a: 1 atom version(s)")
                    && reason.contains("dataset d0 atom alice"),
                "{reason}"
            );
            assert_eq!(outbox.rejected_total(), 1);
            assert_eq!(outbox.rejected_stored().unwrap(), 1);
            match outbox.state_of(&v) {
                RecordState::Rejected { file, reason } => {
                    assert_eq!(file, kept);
                    assert!(reason.contains(&format!("HTTP {status}")), "{reason}");
                }
                other => panic!("{other:?}"),
            }
            // Moved back, it is queued and sent again.
            fs::rename(&kept, &v).unwrap();
            assert_eq!(outbox.state_of(&v), RecordState::Queued);
            let r = outbox.deliver(&fake, WAIT).await;
            assert_eq!(r.delivered, 1);
            assert_eq!(outbox.state_of(&v), RecordState::Gone);
        }
    }

    #[tokio::test]
    async fn a_stale_temporary_verification_file_is_recovered_as_one() {
        let work = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(work.path());
        enqueue_n(&outbox, 1).await;
        let whole = serde_json::to_vec(&verifications("d0")).unwrap();
        let old = SystemTime::now() - Duration::from_secs(7200);
        for (name, bytes) in [
            (".tmp-whole.verifications", &whole[..]),
            (".tmp-half.verifications", &whole[..10]),
        ] {
            let p = outbox.dir().join(name);
            fs::write(&p, bytes).unwrap();
            File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        let fake = Fake::default();
        let r = outbox.deliver(&fake, WAIT).await;
        assert_eq!((r.delivered, r.rejected), (2, 1));
        assert_eq!(fake.acked(), ["d0", "v:d0"]);
        assert!(
            outbox
                .rejected_dir()
                .join(".tmp-half.verifications")
                .exists()
        );
    }
}
