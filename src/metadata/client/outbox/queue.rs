//! The durable queue of dataset records on their way to the metadata
//! server (`<work_dir>/outbox/`), and its delivery rounds.
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

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use chrono::Utc;
use tracing::{debug, error, warn};

use crate::filelock::{Locked, lock_waiting};
use crate::metadata::{MetadataError, MetadataStore, Recovery};
use crate::model::{AddDatasetRequest, Backup, Dataset};

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

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::collections::{BTreeSet, VecDeque};
    use std::sync::{Arc, Mutex};

    use async_trait::async_trait;

    use crate::metadata::client::remote::tests::sample;
    use crate::model::{FindRequest, UpdateActiveJobStatusRequest};

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
}
