//! The outbox in front of the metadata server: [`OutboxStore`], a
//! [`MetadataStore`] that queues each dataset record and each batch of
//! verification results durably ([`queue::Outbox`], `<work_dir>/outbox/`)
//! before it is sent.
//!
//! `add_dataset` and `add_verifications` queue the request, make one
//! bounded delivery attempt and succeed once the request is safely queued,
//! whether or not the server answered (`add_verifications` says which:
//! [`Recording`]); what stays queued is delivered by the agent's
//! background loop or at the end of the next command. Reads go straight to
//! the server.

pub mod queue;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tracing::{debug, info, warn};

use self::queue::{DeliveryReport, Outbox, RecordState};
use crate::config::Config;
use crate::metadata::client::remote::{RemoteOptions, RemoteStore, RetryPolicy};
use crate::metadata::{MetadataError, MetadataStore, Recording};
use crate::model::{
    AddVerificationsRequest, Backup, Dataset, FindRequest, GetVerificationsRequest,
    RemoveDatasetsRequest, UpdateActiveJobStatusRequest, Verification,
};

/// How often the agent's background task should deliver the outbox
/// ([`OutboxStore::run_delivery_loop`]).
pub const DEFAULT_DELIVERY_INTERVAL: Duration = Duration::from_secs(30);
/// Bound on connecting for the single delivery attempt right after a record
/// is queued (the background deliverer uses the client's own timeout).
const IMMEDIATE_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

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
            .field("outbox", &self.outbox.dir())
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

    /// The single delivery attempt right after a record is queued (through
    /// the client that does not retry, within `immediate_budget`), unless
    /// a round failed moments ago: then the record is only queued.
    async fn deliver_now(&self) {
        if self.paused().is_some() {
            debug!(url = %self.url, "server failed recently; record left queued");
            return;
        }
        let report = self
            .deliver_via(&*self.immediate, self.options.immediate_budget)
            .await;
        log_report(&self.url, &report);
    }

    /// The agent's background delivery: a round at once, then one every
    /// `interval`, until `shutdown` completes (a round in progress is
    /// abandoned then; what it had not delivered stays queued).
    pub async fn run_delivery_loop(&self, interval: Duration, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        info!(url = %self.url, outbox = %self.outbox.dir().display(), every = %humantime::format_duration(interval), "outbox delivery started");
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
        self.deliver_now().await;
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

    /// Queued like a dataset record, behind the records queued before
    /// (the results may be about them), then one delivery attempt as
    /// `add_dataset` makes. `Ok` once safely queued: [`Recording::Stored`]
    /// when the server acknowledged them (this attempt or another
    /// deliverer's), [`Recording::Queued`] while they wait in the outbox;
    /// refused for good in this attempt: [`MetadataError::KeptAside`].
    async fn add_verifications(
        &self,
        req: &AddVerificationsRequest,
    ) -> Result<Recording, MetadataError> {
        let file = self.outbox.enqueue_verifications(req).await?;
        self.deliver_now().await;
        match self.outbox.state_of(&file) {
            RecordState::Queued => Ok(Recording::Queued {
                url: self.url.clone(),
            }),
            RecordState::Gone => Ok(Recording::Stored),
            RecordState::Rejected { file, reason } => {
                Err(MetadataError::KeptAside { file, reason })
            }
        }
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
                    "{} record(s) are still waiting in the outbox ({}); records are removed only once the outbox is delivered{}",
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
    use std::fs;
    use std::path::Path;
    use std::sync::atomic::Ordering;

    use super::queue::tests::{Fake, enqueue_n, rejected, unavailable, verifications};
    use crate::metadata::client::remote::tests::sample;

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
        use crate::metadata::client::remote::testserver::{Reply, Script, start};
        use crate::metadata::client::remote::{RemoteOptions, RetryPolicy};
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

    /// Verification results are as durable as dataset records: with the
    /// server down, `add_verifications` queues them behind the dataset
    /// queued before, says so, and the next delivery sends both in order.
    #[tokio::test]
    async fn add_verifications_with_the_server_down_queues_and_the_next_delivery_sends_them() {
        let work = tempfile::tempdir().unwrap();
        let retrying = Arc::new(Fake {
            verifications_need_datasets: true,
            ..Fake::default()
        });
        let once = Arc::new(Fake {
            fail_always: true,
            ..Fake::default()
        });
        let store = outbox_store(work.path(), retrying.clone()).with_immediate(once.clone());
        let (b, d) = sample("d0");
        store.add_dataset(&b, &d).await.unwrap();
        let started = Instant::now();
        let r = store.add_verifications(&verifications("d0")).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(
            r,
            Recording::Queued {
                url: "http://metadb".into()
            }
        );
        assert_eq!(store.outbox().pending().unwrap(), 2);
        let names: Vec<String> = fs::read_dir(store.outbox().dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".verifications"))
            .collect();
        assert_eq!(names.len(), 1, "one pending verification file: {names:?}");
        assert_eq!(
            once.calls.load(Ordering::SeqCst),
            1,
            "paused after the failure"
        );
        let r = store.deliver_pending().await;
        assert_eq!((r.delivered, r.pending, r.error), (2, 0, None));
        assert_eq!(retrying.acked(), ["d0", "v:d0"]);
        assert_eq!(store.outbox().delivered_total(), 2);
    }

    #[tokio::test]
    async fn add_verifications_delivered_at_once_are_stored() {
        let work = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake::default());
        let store = outbox_store(work.path(), fake.clone());
        let r = store.add_verifications(&verifications("d0")).await.unwrap();
        assert_eq!(r, Recording::Stored);
        assert_eq!(fake.acked(), ["v:d0"]);
        assert_eq!(store.outbox().pending().unwrap(), 0);
    }

    #[tokio::test]
    async fn add_verifications_refused_for_good_are_kept_aside_and_reported() {
        let work = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake::default());
        fake.push(Err(rejected(409)));
        let store = outbox_store(work.path(), fake.clone());
        let e = store
            .add_verifications(&verifications("d0"))
            .await
            .unwrap_err();
        assert_eq!(e.recovery(), crate::metadata::Recovery::Refused);
        let MetadataError::KeptAside { file, .. } = &e else {
            panic!("{e}");
        };
        assert!(file.starts_with(store.outbox().rejected_dir()), "{e}");
        let text = e.to_string();
        assert!(
            text.contains("HTTP 409") && text.contains("move it back into the outbox"),
            "{text}"
        );
        assert_eq!(store.outbox().pending().unwrap(), 0);
        assert_eq!(store.outbox().rejected_total(), 1);
    }

    #[tokio::test]
    async fn add_verifications_fail_when_they_cannot_be_queued() {
        let work = tempfile::tempdir().unwrap();
        let not_a_dir = work.path().join("file");
        fs::write(&not_a_dir, "").unwrap();
        let fake = Arc::new(Fake::default());
        let store = outbox_store(&not_a_dir, fake.clone());
        let e = store
            .add_verifications(&verifications("d0"))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cannot queue 1 verification result(s) of host host-a")
                && e.contains("outbox"),
            "{e}"
        );
        assert_eq!(fake.calls.load(Ordering::SeqCst), 0);
    }

    /// Queued results hold back a removal like dataset records do.
    #[tokio::test]
    async fn queued_verification_results_hold_back_removals() {
        let work = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake {
            fail_always: true,
            ..Fake::default()
        });
        let store = outbox_store(work.path(), fake.clone());
        store.add_verifications(&verifications("d0")).await.unwrap();
        let e = store
            .remove_datasets(&RemoveDatasetsRequest {
                host: "host-a".into(),
                datasets: Vec::new(),
            })
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("1 record(s) are still waiting in the outbox"),
            "{e}"
        );
    }
}
