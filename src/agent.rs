//! The agent: the long-running process on every host. It holds the
//! manager and the scheduler together, runs each source on its schedule as
//! a job, serves the status page and metrics, reloads its configuration on
//! request and shuts down cleanly.
//!
//! # Jobs
//!
//! When a source is due, the agent takes a [`RuntimeContext`](crate::runtime::RuntimeContext) snapshot
//! (the job keeps it to the end, whatever reloads happen meanwhile) and the
//! source's lock: the flow of [`crate::jobs::backup`], shared with
//! `tabacco backup`. If
//! the lock is held (the previous run is still going, or someone runs a
//! backup of it by hand) the run is skipped and counted
//! (`tabacco_backup_runs_total{result="skipped"}`), not queued. Otherwise
//! the job waits, pending, for a worker of the `backup` queue, then runs
//! with its progress in the job status. After a backup that recorded
//! something, the source's retention policy is applied under the same lock.
//!
//! The code is in four parts: this module (the agent's state and its
//! lifecycle: start, reload, shutdown), `jobs` (backup and verification
//! jobs), `maintenance` (prune schedule, reconcile at start) and `status`
//! (what the page, `/api/status` and the metadata server are told).
//!
//! # Verification
//!
//! With `verify_schedule`, the agent also runs [`crate::verify`] (check
//! and restore drills with the options under `verify:`) as a job of its
//! own queue, `verify` (one worker unless `queue_config` says otherwise),
//! so it never takes a backup worker. One verification runs at a time; a
//! run due while one is going is skipped. Its scratch directories left by
//! a killed agent are removed at start.
//!
//! # Shutdown
//!
//! Three steps, as in mini-redis: stop scheduling (pending jobs are
//! dropped), give running jobs `shutdown_timeout` to finish, then cancel
//! them. Cancelling drops the job's future, which kills the process groups
//! of its commands (see [`crate::process`]); the process supervisor makes
//! sure nothing survives even if the agent itself is killed.

pub mod http;
mod jobs;
mod maintenance;
pub mod metrics;
pub mod page;
mod status;

pub use status::{
    AgentStatus, ExpectedDatasets, LastRun, SourceStatus, VerifyRun, VerifyStatus, full_backup_time,
};

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::config_manager::{ConfigManager, ReloadError};
use crate::jobs::queue::Queues;
use crate::jobs::scheduler::{Clock, ScheduledSource, SystemClock, run_scheduler};
use crate::jobs::status::StatusRegistry;
use crate::manager::Manager;
use crate::metadata::MetadataStore;
use crate::metadata::client::outbox::{DEFAULT_DELIVERY_INTERVAL, OutboxStore};
use crate::model::MaintenanceRun;
use crate::schedule::{Schedule, Seed};
use crate::util::lock;
use metrics::Metrics;

/// Default address of the status page.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:5331";

/// After cancelling jobs, how long the agent waits for them to record how
/// they ended.
pub const CANCEL_WAIT: Duration = Duration::from_secs(10);

/// The queue backups run in.
pub const BACKUP_QUEUE: &str = "backup";

/// The queue verification runs in.
pub const VERIFY_QUEUE: &str = "verify";

/// The scheduler's name for the verification job: no source can have it
/// (source names are single path segments).
pub const VERIFY_JOB: &str = "/verify";

/// What the process asks of the agent (from signals).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Re-read the configuration (SIGHUP).
    Reload,
    /// Stop (SIGTERM, SIGINT); a second one cancels running jobs at once.
    Shutdown,
}

/// The agent's own maintenance state (not per source).
#[derive(Debug, Default)]
struct MaintenanceState {
    next_prune: Option<DateTime<Utc>>,
    last_prune: Option<MaintenanceRun>,
    last_reconcile: Option<MaintenanceRun>,
    /// The repository's id, once known (read at start, or recorded by a
    /// backup), for the status report: the server groups hosts by it.
    repository_id: Option<String>,
}

struct Inner {
    config: ConfigManager,
    manager: Manager,
    jobs: Arc<StatusRegistry>,
    metrics: Metrics,
    queues: Queues,
    seed: Seed,
    clock: Arc<dyn Clock>,
    sources: Mutex<BTreeMap<String, SourceStatus>>,
    maintenance: Mutex<MaintenanceState>,
    schedules: watch::Sender<Vec<ScheduledSource>>,
    started_at: DateTime<Utc>,
    config_loaded_at: Mutex<DateTime<Utc>>,
    /// Stop scheduling; pending jobs give up.
    stopping: CancellationToken,
    /// Cancel running jobs.
    cancel_jobs: CancellationToken,
    tracker: TaskTracker,
    /// The outbox in front of the metadata server, if one is configured:
    /// delivered in the background, counted in the metrics.
    outbox: std::sync::OnceLock<Arc<OutboxStore>>,
    /// How often the status report is sent (read at start).
    report_interval: Duration,
    /// The verification runs' state.
    verify: Mutex<VerifyStatus>,
}

/// The agent. Cheap to clone (shared state).
#[derive(Clone)]
pub struct Agent {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("config", &self.inner.config.path())
            .finish_non_exhaustive()
    }
}

/// The scheduled sources of a configuration. Schedules were validated when
/// the configuration was loaded; one that does not parse is logged and left
/// out.
pub fn scheduled_sources(config: &Config) -> Vec<ScheduledSource> {
    let mut out: Vec<ScheduledSource> = config
        .sources
        .iter()
        .filter_map(|s| {
            let expr = s.schedule.as_deref()?;
            match Schedule::parse(expr) {
                Ok(sched) => Some((s.name.clone(), sched)),
                Err(e) => {
                    error!(source = %s.name, "{}: schedule: {e}; the source is not scheduled", s.file.display());
                    None
                }
            }
        })
        .collect();
    if let Some(expr) = config.verify.schedule.as_deref() {
        match Schedule::parse(expr) {
            Ok(sched) => out.push((VERIFY_JOB.to_string(), sched)),
            Err(e) => error!(
                "{}: verify_schedule: {e}; verification is not scheduled",
                config.path.display()
            ),
        }
    }
    out
}

fn unix_seconds(t: DateTime<Utc>) -> f64 {
    t.timestamp_millis() as f64 / 1000.0
}

impl Agent {
    /// An agent over a configuration, a metadata store and this host's
    /// random seed.
    pub fn new(config: ConfigManager, store: Arc<dyn MetadataStore>, seed: Seed) -> Agent {
        Agent::with_clock(config, store, seed, Arc::new(SystemClock))
    }

    /// An agent with its own clock (tests).
    pub fn with_clock(
        config: ConfigManager,
        store: Arc<dyn MetadataStore>,
        seed: Seed,
        clock: Arc<dyn Clock>,
    ) -> Agent {
        let cfg = config.config();
        let agent = Agent {
            inner: Arc::new(Inner {
                queues: Queues::new(&cfg.queue),
                schedules: watch::Sender::new(scheduled_sources(&cfg)),
                config,
                manager: Manager::new(store),
                jobs: Arc::new(StatusRegistry::new()),
                metrics: Metrics::new(),
                seed,
                clock,
                sources: Mutex::new(BTreeMap::new()),
                maintenance: Mutex::new(MaintenanceState::default()),
                started_at: Utc::now(),
                config_loaded_at: Mutex::new(Utc::now()),
                stopping: CancellationToken::new(),
                cancel_jobs: CancellationToken::new(),
                tracker: TaskTracker::new(),
                outbox: std::sync::OnceLock::new(),
                report_interval: cfg.status_report_interval,
                verify: Mutex::new(VerifyStatus {
                    schedule: cfg.verify.schedule.clone(),
                    ..VerifyStatus::default()
                }),
            }),
        };
        agent.sync_sources(&cfg);
        agent
    }

    /// Deliver `outbox` in the background while the agent runs (its
    /// `store` should be this same outbox store) and show its counters in
    /// the metrics. Only the first call has an effect.
    pub fn set_outbox(&self, outbox: Arc<OutboxStore>) {
        let _ = self.inner.outbox.set(outbox);
    }

    /// The job registry.
    pub fn jobs(&self) -> &Arc<StatusRegistry> {
        &self.inner.jobs
    }

    /// Re-read the configuration (SIGHUP). On any error the previous
    /// configuration stays and every error is logged.
    pub fn reload(&self) -> bool {
        let inner = &self.inner;
        info!(config = %inner.config.path().display(), "reloading the configuration");
        match inner.config.reload() {
            Ok(report) => {
                let cfg = inner.config.config();
                *lock(&inner.config_loaded_at) = Utc::now();
                inner.queues.configure(&cfg.queue);
                self.sync_sources(&cfg);
                lock(&inner.verify).schedule = cfg.verify.schedule.clone();
                inner.schedules.send_replace(scheduled_sources(&cfg));
                for key in &report.restart_needed {
                    warn!(
                        "configuration reloaded, but the change of {key} takes effect only after a restart of the agent"
                    );
                }
                info!(
                    sources = cfg.sources.len(),
                    added = ?report.added,
                    removed = ?report.removed,
                    "configuration reloaded; running jobs finish with the configuration they started with"
                );
                inner.metrics.reload(true);
                true
            }
            Err(e) => {
                let n = match &e {
                    ReloadError::Config(errors) => {
                        for err in &errors.0 {
                            error!(file = %err.file.display(), field = %err.field, "configuration error: {err}");
                        }
                        errors.0.len()
                    }
                    ReloadError::Runtime(err) => {
                        error!("configuration error: {err}");
                        1
                    }
                };
                error!(
                    "configuration reload failed with {n} error(s): keeping the previous configuration"
                );
                inner.metrics.reload(false);
                false
            }
        }
    }

    /// Run until a [`Event::Shutdown`] arrives (or `events` closes): serve
    /// the status page on `listener`, schedule and run jobs, reload on
    /// [`Event::Reload`]. Returns when every job has ended.
    pub async fn run(self, listener: tokio::net::TcpListener, mut events: mpsc::Receiver<Event>) {
        let inner = &self.inner;
        // Scratch directories of drills (and restores) of a killed agent.
        crate::handler::spool::clear_stale_scratch(inner.config.config().work_dir.as_path());
        let http_stop = CancellationToken::new();
        let http = tokio::spawn(http::serve(listener, self.clone(), http_stop.clone()));

        let scheduler = {
            let (a, b) = (self.clone(), self.clone());
            tokio::spawn(run_scheduler(
                inner.clock.clone(),
                inner.seed.clone(),
                inner.schedules.subscribe(),
                inner.stopping.clone(),
                move |next, changes| a.published(next, changes),
                move |name| b.trigger(name),
            ))
        };
        let reporter = {
            let this = self.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(this.inner.report_interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        () = this.inner.stopping.cancelled() => break,
                        _ = tick.tick() => this.report_status().await,
                    }
                }
            })
        };
        {
            let this = self.clone();
            tokio::spawn(async move {
                this.load_last_successes().await;
                this.load_verify_state().await;
                this.learn_repository_id().await;
                this.reconcile_at_start().await;
            });
        }
        // Tracked like a job: a prune running at shutdown gets the grace
        // period, then is stopped (restic prune may be interrupted).
        {
            let this = self.clone();
            inner
                .tracker
                .spawn(async move { this.run_prune_schedule().await });
        }

        // Records queued by earlier runs (or while the server was down) are
        // delivered in the background until the jobs are done.
        let delivery_stop = CancellationToken::new();
        let delivery = inner.outbox.get().cloned().map(|outbox| {
            let stop = delivery_stop.clone();
            tokio::spawn(async move {
                outbox
                    .run_delivery_loop(DEFAULT_DELIVERY_INTERVAL, stop.cancelled_owned())
                    .await
            })
        });
        let cfg = inner.config.config();
        info!(
            host = %cfg.hostname,
            sources = cfg.sources.len(),
            scheduled = inner.schedules.borrow().len(),
            "agent started"
        );

        // Until the first stop signal (or the sender is gone).
        while let Some(Event::Reload) = events.recv().await {
            self.reload();
        }

        // 1. Stop scheduling; pending jobs give up.
        let grace = inner.config.config().shutdown_timeout;
        let (_, running) = inner.jobs.counts();
        info!(
            running,
            grace = %humantime::format_duration(grace),
            "shutting down: no new backups; waiting for running jobs to finish"
        );
        inner.stopping.cancel();
        inner.tracker.close();
        let _ = scheduler.await;
        let _ = reporter.await;

        // 2. Let running jobs finish within the grace period.
        let finished = tokio::select! {
            () = inner.tracker.wait() => true,
            () = tokio::time::sleep(grace) => false,
            () = async {
                loop {
                    match events.recv().await {
                        Some(Event::Shutdown) => break,
                        Some(Event::Reload) => info!("not reloading: the agent is shutting down"),
                        None => std::future::pending::<()>().await,
                    }
                }
            } => {
                warn!("second stop signal: not waiting any longer");
                false
            }
        };

        // 3. Cancel what is still running: its process groups are killed.
        if !finished {
            let (_, running) = inner.jobs.counts();
            warn!(
                running,
                "cancelling the running jobs and killing their commands"
            );
            inner.cancel_jobs.cancel();
            if tokio::time::timeout(CANCEL_WAIT, inner.tracker.wait())
                .await
                .is_err()
            {
                error!(
                    "jobs did not end within {}s of being cancelled",
                    CANCEL_WAIT.as_secs()
                );
            }
        }
        // What is still queued stays in the outbox for the next start.
        delivery_stop.cancel();
        if let Some(delivery) = delivery {
            let _ = delivery.await;
        }
        self.report_status().await;
        http_stop.cancel();
        match tokio::time::timeout(Duration::from_secs(5), http).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => error!("status server failed: {e}"),
            Ok(Err(e)) => error!("status server task failed: {e}"),
            Err(_) => warn!("status server did not stop within 5s"),
        }
        info!("agent stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::lock::{HolderKind, SourceLock};
    use crate::jobs::status::JobResult;
    use crate::metadata::MetadataError;
    use crate::model::{
        Backup, Dataset, FindRequest, RunResult, RunningJobStatus, UpdateActiveJobStatusRequest,
    };
    use crate::repository::{ProgressFn, RepoError, Repository, SnapshotInfo, SnapshotMeta};
    use crate::runtime::RuntimeContext;
    use crate::shell::{Shell, ShellCommand};
    use std::path::{Path, PathBuf};
    use std::time::Instant;

    /// Records what the agent sends.
    #[derive(Default)]
    struct FakeStore {
        reports: Mutex<Vec<UpdateActiveJobStatusRequest>>,
        datasets: Mutex<Vec<(Backup, Dataset)>>,
    }

    #[async_trait::async_trait]
    impl MetadataStore for FakeStore {
        async fn add_dataset(&self, b: &Backup, d: &Dataset) -> Result<(), MetadataError> {
            lock(&self.datasets).push((b.clone(), d.clone()));
            Ok(())
        }
        async fn find_atoms(&self, _: &FindRequest) -> Result<Vec<Backup>, MetadataError> {
            Ok(Vec::new())
        }
        async fn update_active_job_status(
            &self,
            r: &UpdateActiveJobStatusRequest,
        ) -> Result<(), MetadataError> {
            lock(&self.reports).push(r.clone());
            Ok(())
        }
    }

    /// A repository whose stream backups report progress, then wait for
    /// the test to let them finish.
    struct GateRepo {
        gate: tokio::sync::Semaphore,
        started: tokio::sync::Notify,
        /// Stream backups started.
        calls: std::sync::atomic::AtomicUsize,
    }

    #[async_trait::async_trait]
    impl Repository for GateRepo {
        async fn backup(
            &self,
            _: &SnapshotMeta,
            _: &[PathBuf],
            _: Option<ProgressFn>,
        ) -> Result<SnapshotInfo, RepoError> {
            unreachable!("only pipe sources here")
        }
        async fn backup_relative(
            &self,
            _: &SnapshotMeta,
            _: &Path,
            _: &[PathBuf],
            _: Option<ProgressFn>,
        ) -> Result<SnapshotInfo, RepoError> {
            unreachable!("only single-atom pipe datasets here")
        }
        async fn stream_backup(
            &self,
            _: &SnapshotMeta,
            _: ShellCommand,
            file_name: &str,
            progress: Option<ProgressFn>,
        ) -> Result<SnapshotInfo, RepoError> {
            self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if file_name.contains("/bad/") {
                return Err(RepoError::Config {
                    name: "test".into(),
                    message: "the bad dataset always fails".into(),
                });
            }
            if let Some(p) = progress {
                p(&RunningJobStatus {
                    percent_done: 0.5,
                    files_done: 1,
                    current_files: vec!["/s/d/a".into()],
                    ..Default::default()
                });
            }
            self.started.notify_one();
            let _permit = self.gate.acquire().await;
            Ok(SnapshotInfo {
                snapshot_id: "f".repeat(64),
                total_files: 1,
                total_bytes: 10,
                bytes_added: 100,
                duration_secs: 0.1,
                stream: None,
            })
        }
        async fn restore(
            &self,
            _: &str,
            _: &[PathBuf],
            _: &Path,
            _: Option<crate::repository::ProgressFn>,
        ) -> Result<(), RepoError> {
            Ok(())
        }
        async fn stream_restore(
            &self,
            _: &str,
            _: &str,
            _: ShellCommand,
            _: Option<crate::repository::ProgressFn>,
        ) -> Result<(), RepoError> {
            Ok(())
        }
        async fn create(&self) -> Result<crate::repository::Creation, RepoError> {
            Ok(crate::repository::Creation::Existing)
        }
    }

    fn setup(main_extra: &str) -> (tempfile::TempDir, Agent, Arc<FakeStore>, Arc<GateRepo>) {
        setup_with(
            main_extra,
            "name: s\nhandler: pipe\nschedule: '@daily'\ndatasets: [{name: d, atoms: [{name: a}]}]\n",
        )
    }

    /// An agent whose only source `s` is `source_yaml`.
    fn setup_with(
        main_extra: &str,
        source_yaml: &str,
    ) -> (tempfile::TempDir, Agent, Arc<FakeStore>, Arc<GateRepo>) {
        let dir = tempfile::tempdir().unwrap();
        let w = |rel: &str, text: &str| {
            let p = dir.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        w(
            "agent.yml",
            &format!(
                "hostname: h1\nwork_dir: work\nrepository:\n  type: restic\n  params:\n    uri: /nonexistent\n    password: x\n{main_extra}"
            ),
        );
        w(
            "handlers/pipe.yml",
            "name: pipe\ntype: pipe\nparams:\n  backup_command: echo x\n  restore_command: cat\n",
        );
        w("sources/s.yml", source_yaml);
        let config = Arc::new(crate::config::load(&dir.path().join("agent.yml")).unwrap());
        let repo = Arc::new(GateRepo {
            gate: tokio::sync::Semaphore::new(0),
            started: tokio::sync::Notify::new(),
            calls: std::sync::atomic::AtomicUsize::new(0),
        });
        let rctx = RuntimeContext::with_repository(config, Shell::default(), repo.clone());
        let store = Arc::new(FakeStore::default());
        let agent = Agent::new(
            ConfigManager::with_context(rctx),
            store.clone(),
            Seed::from_bytes(*b"12345678"),
        );
        (dir, agent, store, repo)
    }

    async fn until(what: &str, mut cond: impl FnMut() -> bool) {
        for _ in 0..500 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}");
    }

    #[tokio::test]
    async fn job_runs_skips_overlaps_and_reports_progress_to_the_store() {
        let (_dir, agent, store, repo) = setup("");
        agent.trigger("s");
        repo.started.notified().await;
        // The same source again while it runs: skipped, not queued.
        agent.trigger("s");
        let m = agent.metrics_text();
        assert!(
            m.contains(r#"tabacco_backup_runs_total{source="s",result="skipped"} 1"#),
            "{m}"
        );
        assert!(m.contains(r#"tabacco_jobs{state="running"} 1"#), "{m}");
        assert_eq!(agent.jobs().counts(), (0, 1));
        // Unknown sources are ignored.
        agent.trigger("nope");

        agent.report_status().await;
        let report = lock(&store.reports).last().cloned().unwrap();
        assert_eq!(report.host, "h1");
        assert_eq!(report.active_jobs.len(), 1);
        let job = &report.active_jobs[0];
        assert_eq!(job.dataset_source, "s");
        assert!(!job.backup_id.is_empty() && !job.dataset_id.is_empty());
        assert_eq!(job.status.as_ref().unwrap().files_done, 1);

        repo.gate.add_permits(1);
        until("the job to finish", || agent.jobs().counts() == (0, 0)).await;
        let status = agent.status();
        let s = &status.sources[0];
        assert_eq!(s.last_run.as_ref().unwrap().result, RunResult::Ok);
        assert_eq!(s.skipped_runs, 1);
        assert!(s.last_success.is_some());
        assert_eq!(status.jobs.done[0].bytes_added, 100);
        assert_eq!(lock(&store.datasets).len(), 1);
        let m = agent.metrics_text();
        assert!(
            m.contains(r#"tabacco_backup_runs_total{source="s",result="ok"} 1"#),
            "{m}"
        );
        assert!(
            m.contains(r#"tabacco_backup_bytes_added_total{source="s"} 100"#),
            "{m}"
        );
        agent.report_status().await;
        assert!(lock(&store.reports).last().unwrap().active_jobs.is_empty());
        // The lock was released: the next run is not skipped.
        agent.trigger("s");
        repo.started.notified().await;
        repo.gate.add_permits(1);
        until("the second job to finish", || {
            agent.jobs().counts() == (0, 0)
        })
        .await;
        assert_eq!(agent.status().sources[0].skipped_runs, 1);
    }

    #[tokio::test]
    async fn shutdown_cancels_running_jobs_after_the_grace_period() {
        let (_dir, agent, store, repo) = setup("shutdown_timeout: 200ms\n");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (tx, rx) = mpsc::channel(4);
        let run = tokio::spawn(agent.clone().run(listener, rx));
        agent.trigger("s");
        repo.started.notified().await;
        let started = Instant::now();
        tx.send(Event::Shutdown).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), run)
            .await
            .expect("the agent stops")
            .unwrap();
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "the grace period was given"
        );
        let status = agent.status();
        assert!(status.shutting_down);
        assert_eq!(status.jobs.done[0].result, Some(JobResult::Cancelled));
        assert!(lock(&store.datasets).is_empty(), "nothing recorded");
        let m = agent.metrics_text();
        assert!(
            m.contains(r#"tabacco_backup_runs_total{source="s",result="cancelled"} 1"#),
            "{m}"
        );
        // No new jobs after shutdown.
        agent.trigger("s");
        assert_eq!(agent.jobs().counts(), (0, 0));
        // The final report says nothing runs.
        assert!(lock(&store.reports).last().unwrap().active_jobs.is_empty());
    }

    #[tokio::test]
    async fn jobs_that_finish_within_the_grace_period_complete() {
        let (_dir, agent, store, repo) = setup("shutdown_timeout: 10s\n");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (tx, rx) = mpsc::channel(4);
        let run = tokio::spawn(agent.clone().run(listener, rx));
        agent.trigger("s");
        repo.started.notified().await;
        tx.send(Event::Shutdown).await.unwrap();
        // Release the job only once the shutdown has begun, so that it is
        // the grace period that lets it finish.
        until("the shutdown to start", || agent.status().shutting_down).await;
        repo.gate.add_permits(1);
        tokio::time::timeout(Duration::from_secs(5), run)
            .await
            .expect("the agent stops when the job is done")
            .unwrap();
        assert_eq!(agent.status().jobs.done[0].result, Some(JobResult::Ok));
        assert_eq!(lock(&store.datasets).len(), 1);
    }

    #[tokio::test]
    async fn a_run_with_a_failed_dataset_is_partial_and_not_a_success() {
        let (_dir, agent, store, repo) = setup_with(
            "",
            "name: s\nhandler: pipe\nschedule: '@daily'\n\
             datasets: [{name: good, atoms: [{name: a}]}, {name: bad, atoms: [{name: a}]}]\n",
        );
        repo.gate.add_permits(10);
        agent.trigger("s");
        until("the job to finish", || {
            agent.jobs().counts() == (0, 0) && !agent.status().jobs.done.is_empty()
        })
        .await;
        let status = agent.status();
        let s = &status.sources[0];
        let run = s.last_run.as_ref().unwrap();
        assert_eq!(run.result, RunResult::Partial);
        assert_eq!((run.datasets_recorded, run.datasets_failed), (1, 1));
        assert_eq!(run.atoms_failed, 1);
        assert!(
            run.error.as_deref().unwrap().contains("dataset 'bad'"),
            "{run:?}"
        );
        assert!(s.last_success.is_none(), "a partial run is not a success");
        assert_eq!(lock(&store.datasets).len(), 1);
        let m = agent.metrics_text();
        assert!(
            m.contains(r#"tabacco_backup_runs_total{source="s",result="partial"} 1"#),
            "{m}"
        );
        assert!(
            !m.contains("tabacco_backup_last_success_timestamp_seconds{"),
            "{m}"
        );
        assert!(
            m.contains(r#"tabacco_backup_last_failure_timestamp_seconds{source="s"}"#),
            "{m}"
        );
        // The report carries the source's state.
        let report = agent.status_report();
        let src = &report.sources.as_ref().unwrap()[0];
        assert_eq!(src.last_run.as_ref().unwrap().result, RunResult::Partial);
        assert_eq!(src.schedule.as_deref(), Some("@daily"));
        assert!(report.outbox_pending.is_none(), "no outbox configured");
        assert_eq!(report.report_interval_seconds, Some(30.0));
    }

    #[tokio::test]
    async fn the_grace_period_after_shutdown_starts_no_new_dataset() {
        // One dataset at a time: the second would start after the first.
        let (_dir, agent, store, repo) = setup_with(
            "shutdown_timeout: 10s\nqueue_config:\n  workers:\n    datasets: 1\n",
            "name: s\nhandler: pipe\nschedule: '@daily'\n\
             datasets: [{name: one, atoms: [{name: a}]}, {name: two, atoms: [{name: a}]}]\n",
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (tx, rx) = mpsc::channel(4);
        let run = tokio::spawn(agent.clone().run(listener, rx));
        agent.trigger("s");
        repo.started.notified().await;
        // While the report shows the second dataset waiting, by name.
        let active = agent.jobs().active_jobs("h1");
        assert_eq!(active.len(), 2, "{active:?}");
        assert_eq!(active[1].dataset_name.as_deref(), Some("two"));
        assert_eq!(active[1].state.as_deref(), Some("pending"));
        tx.send(Event::Shutdown).await.unwrap();
        until("the agent to stop scheduling", || {
            agent.status().shutting_down
        })
        .await;
        repo.gate.add_permits(10);
        tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .expect("the agent stops")
            .unwrap();
        assert_eq!(
            repo.calls.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "no dataset started during the grace period"
        );
        assert_eq!(lock(&store.datasets).len(), 1, "the running one finished");
        let status = agent.status();
        let run = status.sources[0].last_run.as_ref().unwrap();
        assert_eq!(run.result, RunResult::Cancelled);
        assert!(status.sources[0].last_success.is_none());
        let done = &status.jobs.done[0];
        assert_eq!(done.datasets[1].name, "two");
        assert!(
            done.error.as_deref().unwrap().contains("not started"),
            "{done:?}"
        );
    }

    #[test]
    fn full_backup_time_is_the_oldest_newest_dataset_or_atom() {
        let t = |s: &str| -> DateTime<Utc> { s.parse().unwrap() };
        let backup = |ts: &str, datasets: &[(&str, &[&str])]| crate::model::Backup {
            id: ts.into(),
            timestamp: t(ts),
            host: "h".into(),
            datasets: datasets
                .iter()
                .map(|(n, atoms)| crate::model::Dataset {
                    id: format!("{ts}{n}"),
                    name: (*n).into(),
                    source: "s".into(),
                    atoms: atoms
                        .iter()
                        .map(|a| crate::model::Atom {
                            name: (*a).into(),
                            path: String::new(),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                })
                .collect(),
        };
        // A full run on day 1; on day 3 only a and b were recorded (the
        // run was cancelled), and b without its atom y: the last full
        // backup is still day 1.
        let found = [
            backup("2026-01-03T00:00:00Z", &[("a", &["x"]), ("b", &["x"])]),
            backup("2026-01-01T00:00:00Z", &[("b", &["y"]), ("c", &["x"])]),
        ];
        let day1 = Some(t("2026-01-01T00:00:00Z"));
        let day3 = Some(t("2026-01-03T00:00:00Z"));
        let by_name = |names: &[&'static str]| -> Vec<(&'static str, Option<Vec<&'static str>>)> {
            names.iter().map(|n| (*n, None)).collect()
        };
        assert_eq!(full_backup_time(&by_name(&["a", "b", "c"]), &found), day1);
        assert_eq!(full_backup_time(&by_name(&["a", "b"]), &found), day3);
        assert_eq!(full_backup_time(&by_name(&["a", "d"]), &found), None);
        // With the atoms listed, b's missing atom y holds it at day 1.
        let with_atoms = [("a", Some(vec!["x"])), ("b", Some(vec!["x", "y"]))];
        assert_eq!(full_backup_time(&with_atoms, &found), day1);
        let never = [("a", Some(vec!["x", "z"]))];
        assert_eq!(full_backup_time(&never, &found), None);
    }

    #[tokio::test]
    async fn a_skipped_run_never_hides_a_failed_one() {
        let (dir, agent, _store, repo) = setup_with(
            "",
            "name: s\nhandler: pipe\nschedule: '@daily'\ndatasets: [{name: bad, atoms: [{name: a}]}]\n",
        );
        repo.gate.add_permits(10);
        agent.trigger("s");
        until("the failed run", || {
            agent.status().sources[0]
                .last_run
                .as_ref()
                .is_some_and(|r| r.result == RunResult::Error)
        })
        .await;
        // A backup by hand holds the lock: the scheduled run is skipped.
        let held = SourceLock::try_acquire(&dir.path().join("work"), "s", HolderKind::Cli).unwrap();
        agent.trigger("s");
        let s = agent.status().sources[0].clone();
        assert_eq!(s.skipped_runs, 1);
        assert_eq!(
            s.last_run.unwrap().result,
            RunResult::Error,
            "still failing"
        );
        drop(held);
    }
}
