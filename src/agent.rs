//! The agent: the long-running process on every host. It holds the
//! manager and the scheduler together, runs each source on its schedule as
//! a job, serves the status page and metrics, reloads its configuration on
//! request and shuts down cleanly.
//!
//! # Jobs
//!
//! When a source is due, the agent takes a [`RuntimeContext`] snapshot
//! (the job keeps it to the end, whatever reloads happen meanwhile) and the
//! source's lock ([`crate::jobs::lock`], shared with `tabacco backup`). If
//! the lock is held (the previous run is still going, or someone runs a
//! backup of it by hand) the run is skipped and counted
//! (`tabacco_backup_runs_total{result="skipped"}`), not queued. Otherwise
//! the job waits, pending, for a worker of the `backup` queue, then runs
//! with its progress in the job status.
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
pub mod metrics;
pub mod page;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, error, info, info_span, warn};

use crate::config::Config;
use crate::config::{AtomsSource, DatasetsSource};
use crate::config_manager::{ConfigManager, ReloadError};
use crate::jobs::lock::{HolderKind, LockError, SourceLock};
use crate::jobs::queue::Queues;
use crate::jobs::scheduler::{Clock, PlanChanges, ScheduledSource, SystemClock, run_scheduler};
use crate::jobs::status::{JobObserver, JobResult, JobsSnapshot, StatusRegistry};
use crate::manager::Manager;
use crate::manager::maintenance::{ReconcileMode, Scope};
use crate::metadata::MetadataStore;
use crate::metadata::client::outbox::{DEFAULT_DELIVERY_INTERVAL, OutboxStore};
use crate::model::{FindRequest, RunReport, RunResult, SourceReport, UpdateActiveJobStatusRequest};
use crate::runtime::RuntimeContext;
use crate::schedule::{Schedule, Seed};
use crate::util::{error_chain, lock};
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

/// How a source's last run ended: the report sent to the metadata server
/// (`ok`, `partial`, `error`, `skipped`, `cancelled`).
pub type LastRun = RunReport;

/// How a forget, prune or reconcile run by the agent ended (its page
/// shows the last of each; a failure stays visible until the next run
/// succeeds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MaintenanceRun {
    /// When it ended.
    pub finished_at: DateTime<Utc>,
    /// Whether it succeeded.
    pub ok: bool,
    /// What it did, or why it failed.
    pub summary: String,
}

impl MaintenanceRun {
    fn now(ok: bool, summary: String) -> MaintenanceRun {
        MaintenanceRun {
            finished_at: Utc::now(),
            ok,
            summary,
        }
    }
}

/// What the agent knows about a source.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceStatus {
    /// Source name.
    pub name: String,
    /// Schedule as written; `None`: on demand only.
    pub schedule: Option<String>,
    /// Next scheduled run.
    pub next_run: Option<DateTime<Utc>>,
    /// The last run by this agent.
    pub last_run: Option<LastRun>,
    /// The last run in which every dataset was recorded; at start, the
    /// newest time by which every configured dataset had been recorded,
    /// from the index (see [`Agent::load_last_successes`]).
    pub last_success: Option<DateTime<Utc>>,
    /// Scheduled runs skipped because the source was locked.
    pub skipped_runs: u64,
    /// The last application of the source's retention policy (after its
    /// backups); `None`: none yet, or the source has no policy.
    #[serde(default)]
    pub last_forget: Option<MaintenanceRun>,
}

/// The agent's verification runs (`verify_schedule`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VerifyStatus {
    /// Schedule as written; `None`: not scheduled (`tabacco verify` only).
    pub schedule: Option<String>,
    /// Next scheduled run.
    pub next_run: Option<DateTime<Utc>>,
    /// Whether a run is pending or going on.
    pub running: bool,
    /// The last run of this agent.
    pub last_run: Option<VerifyRun>,
}

/// How a verification run of the agent ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifyRun {
    /// When it ended.
    pub finished_at: DateTime<Utc>,
    /// How long it took, in seconds.
    pub duration_seconds: f64,
    /// Whether everything was proven (check clean, every drill ok,
    /// results recorded).
    pub ok: bool,
    /// Whether the repository check found no damage (`None`: not run).
    pub check_ok: Option<bool>,
    /// Atom versions proven restorable.
    pub verified: usize,
    /// Drills that failed.
    pub failed: usize,
    /// Drills that could not run.
    pub skipped: usize,
    /// Bytes restored.
    pub bytes: u64,
    /// Each problem: the check's damage, each failed drill naming atom,
    /// version and what differed (or the error that stopped the run).
    pub problems: Vec<String>,
}

/// Everything the status page and `/api/status` show.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// This host.
    pub host: String,
    /// Agent version.
    pub version: String,
    /// When the agent started.
    pub started_at: DateTime<Utc>,
    /// Main configuration file.
    pub config_file: String,
    /// When the configuration in force was loaded.
    pub config_loaded_at: DateTime<Utc>,
    /// Whether the agent is shutting down.
    pub shutting_down: bool,
    /// Configured sources, by name.
    pub sources: Vec<SourceStatus>,
    /// Pending, running and recently done jobs.
    pub jobs: JobsSnapshot,
    /// Dataset records waiting in the outbox for the metadata server
    /// (`None`: no metadata server configured, or the outbox unreadable).
    pub outbox_pending: Option<i64>,
    /// Dataset records the server refused, kept in `outbox/rejected/`.
    pub outbox_rejected: Option<i64>,
    /// The metadata server's web page (`metadb.url`), if one is configured.
    pub metadb_url: Option<String>,
    /// Verification runs.
    #[serde(default)]
    pub verify: VerifyStatus,
    /// When this agent prunes the repository (`prune_schedule`; `None`:
    /// never).
    #[serde(default)]
    pub prune_schedule: Option<String>,
    /// Its next prune.
    #[serde(default)]
    pub next_prune: Option<DateTime<Utc>>,
    /// Its last prune.
    #[serde(default)]
    pub last_prune: Option<MaintenanceRun>,
    /// The reconcile of this host's records it ran at start.
    #[serde(default)]
    pub last_reconcile: Option<MaintenanceRun>,
}

/// The agent's own maintenance state (not per source).
#[derive(Debug, Default)]
struct MaintenanceState {
    next_prune: Option<DateTime<Utc>>,
    last_prune: Option<MaintenanceRun>,
    last_reconcile: Option<MaintenanceRun>,
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

/// What a full backup of a source records: each dataset by name, with its
/// atoms when they are listed in the configuration (`None`: printed by
/// `atoms_command`, so any atom of the dataset counts).
pub type ExpectedDatasets<'a> = [(&'a str, Option<Vec<&'a str>>)];

/// The newest time by which everything in `expected` had been recorded,
/// from the newest version of each atom (`backups`, a `num_versions: 1`
/// find result): the oldest of the atoms' (or datasets') newest versions.
/// `None` if something has never been recorded. A run that recorded only
/// some datasets (failed, or cancelled), or a dataset without some of its
/// atoms, does not move it past the older versions of the rest.
pub fn full_backup_time(
    expected: &ExpectedDatasets<'_>,
    backups: &[crate::model::Backup],
) -> Option<DateTime<Utc>> {
    let mut newest: BTreeMap<(&str, Option<&str>), DateTime<Utc>> = BTreeMap::new();
    let mut raise = |key, t: DateTime<Utc>| {
        let e = newest.entry(key).or_insert(t);
        if *e < t {
            *e = t;
        }
    };
    for b in backups {
        for d in &b.datasets {
            raise((d.name.as_str(), None), b.timestamp);
            for a in &d.atoms {
                raise((d.name.as_str(), Some(a.name.as_str())), b.timestamp);
            }
        }
    }
    let mut oldest: Option<DateTime<Utc>> = None;
    for (dataset, atoms) in expected {
        let keys: Vec<(&str, Option<&str>)> = match atoms {
            Some(atoms) => atoms.iter().map(|a| (*dataset, Some(*a))).collect(),
            None => vec![(*dataset, None)],
        };
        for key in keys {
            let t = *newest.get(&key)?;
            oldest = Some(oldest.map_or(t, |o| o.min(t)));
        }
    }
    oldest
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

    /// The metrics in OpenMetrics text.
    pub fn metrics_text(&self) -> String {
        self.metrics_as(crate::exposition::Format::OpenMetrics)
    }

    /// The metrics in `format`.
    pub fn metrics_as(&self, format: crate::exposition::Format) -> String {
        let (pending, running) = self.inner.jobs.counts();
        self.inner.metrics.jobs(pending, running);
        if let Some(store) = self.inner.outbox.get() {
            let outbox = store.outbox();
            self.inner.metrics.outbox(
                outbox.pending().unwrap_or(0),
                outbox.rejected_stored().unwrap_or(0),
                outbox.delivered_total(),
                outbox.rejected_total(),
            );
        }
        self.inner.metrics.render_as(format)
    }

    /// The agent's status.
    pub fn status(&self) -> AgentStatus {
        let cfg = self.inner.config.config();
        let (next_prune, last_prune, last_reconcile) = {
            let m = lock(&self.inner.maintenance);
            (m.next_prune, m.last_prune.clone(), m.last_reconcile.clone())
        };
        AgentStatus {
            host: cfg.hostname.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: self.inner.started_at,
            config_file: cfg.path.display().to_string(),
            config_loaded_at: *lock(&self.inner.config_loaded_at),
            shutting_down: self.inner.stopping.is_cancelled(),
            sources: lock(&self.inner.sources).values().cloned().collect(),
            jobs: self.inner.jobs.snapshot(),
            outbox_pending: self.outbox_counts().map(|c| c.0),
            outbox_rejected: self.outbox_counts().map(|c| c.1),
            metadb_url: cfg.metadb.as_ref().map(|m| m.url.clone()),
            verify: lock(&self.inner.verify).clone(),
            prune_schedule: cfg.prune_schedule.clone(),
            next_prune,
            last_prune,
            last_reconcile,
        }
    }

    /// Records pending in the outbox and kept aside as rejected, if an
    /// outbox is in use and readable.
    fn outbox_counts(&self) -> Option<(i64, i64)> {
        let outbox = self.inner.outbox.get()?.outbox();
        let n = |r: Result<usize, _>| r.ok().map(|n| i64::try_from(n).unwrap_or(i64::MAX));
        Some((n(outbox.pending())?, n(outbox.rejected_stored())?))
    }

    /// Make the per-source state follow the configuration's sources.
    fn sync_sources(&self, cfg: &Config) {
        let mut sources = lock(&self.inner.sources);
        sources.retain(|name, _| {
            let keep = cfg.find_source(name).is_some();
            if !keep {
                self.inner.metrics.remove_source(name);
            }
            keep
        });
        for s in &cfg.sources {
            let st = sources.entry(s.name.clone()).or_insert_with(|| {
                self.inner.metrics.add_source(&s.name);
                SourceStatus {
                    name: s.name.clone(),
                    ..SourceStatus::default()
                }
            });
            st.schedule = s.schedule.clone();
            if st.schedule.is_none() {
                st.next_run = None;
            }
        }
    }

    fn with_source(&self, name: &str, f: impl FnOnce(&mut SourceStatus)) {
        if let Some(s) = lock(&self.inner.sources).get_mut(name) {
            f(s);
        }
    }

    fn published(&self, next: &BTreeMap<String, Option<DateTime<Utc>>>, changes: &PlanChanges) {
        for name in changes.removed.iter() {
            if name == VERIFY_JOB {
                lock(&self.inner.verify).next_run = None;
                continue;
            }
            self.inner.metrics.next_run(name, None);
            self.with_source(name, |s| s.next_run = None);
        }
        for (name, when) in next {
            if name == VERIFY_JOB {
                lock(&self.inner.verify).next_run = *when;
                continue;
            }
            self.inner.metrics.next_run(name, when.map(unix_seconds));
            self.with_source(name, |s| s.next_run = *when);
        }
    }

    /// Start a verification run now, as the scheduler does: skipped if one
    /// is pending or running.
    pub fn trigger_verify(&self) {
        let inner = &self.inner;
        if inner.stopping.is_cancelled() {
            return;
        }
        {
            let mut st = lock(&inner.verify);
            if st.running {
                warn!(
                    "scheduled verification skipped: the previous one is still pending or running"
                );
                return;
            }
            st.running = true;
        }
        let rctx = inner.config.runtime_context();
        let job_id = inner.jobs.add_pending("verify", "(verify)", VERIFY_QUEUE);
        let span = info_span!("job", job_id = %job_id, kind = "verify");
        let this = self.clone();
        inner
            .tracker
            .spawn(async move { this.run_verify(rctx, job_id).await }.instrument(span));
    }

    async fn run_verify(&self, rctx: RuntimeContext, job_id: String) {
        let inner = &self.inner;
        let slot = tokio::select! {
            biased;
            () = inner.stopping.cancelled() => {
                inner.jobs.finish(&job_id, JobResult::Cancelled, Some("the agent shut down before the verification got a worker".into()));
                lock(&inner.verify).running = false;
                return;
            }
            slot = inner.queues.acquire(VERIFY_QUEUE) => slot,
        };
        inner.jobs.set_running(&job_id);
        info!("verification started");
        let opts = crate::verify::VerifyOptions {
            dry_run: rctx.config().dry_run,
            ..crate::verify::VerifyOptions::from_spec(&rctx.config().verify)
        };
        let started = Instant::now();
        // Cancelling drops the run: restic is stopped, the scratch
        // directory removed, nothing recorded.
        let outcome = tokio::select! {
            biased;
            () = inner.cancel_jobs.cancelled() => None,
            () = inner.stopping.cancelled() => None,
            r = crate::verify::run(&rctx, inner.manager.store().as_ref(), &opts) => Some(r),
        };
        let now = Utc::now();
        let duration = started.elapsed().as_secs_f64();
        let (result, run) = match outcome {
            None => {
                warn!("verification cancelled by the shutdown");
                inner.jobs.finish(
                    &job_id,
                    JobResult::Cancelled,
                    Some("cancelled: the agent shut down".into()),
                );
                lock(&inner.verify).running = false;
                return;
            }
            // Nothing backed up here yet (or nothing matches `verify.pattern`):
            // nothing to prove, not a failure.
            Some(Err(e @ crate::verify::VerifyError::NothingFound { .. })) => {
                info!("verification: nothing to drill: {e}");
                let run = VerifyRun {
                    finished_at: now,
                    duration_seconds: duration,
                    ok: true,
                    check_ok: None,
                    verified: 0,
                    failed: 0,
                    skipped: 0,
                    bytes: 0,
                    problems: Vec::new(),
                };
                (RunResult::Ok, run)
            }
            Some(Err(e)) => {
                let e = error_chain(&e);
                error!("verification could not run: {e}");
                let run = VerifyRun {
                    finished_at: now,
                    duration_seconds: duration,
                    ok: false,
                    check_ok: None,
                    verified: 0,
                    failed: 0,
                    skipped: 0,
                    bytes: 0,
                    problems: vec![e],
                };
                (RunResult::Error, run)
            }
            Some(Ok(report)) => {
                use crate::verify::DrillOutcome;
                let mut by_source: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
                for d in &report.drills {
                    let source = d.atom_path.split('/').next().unwrap_or_default();
                    let e = by_source.entry(source).or_default();
                    match d.outcome {
                        DrillOutcome::Ok => e.0 += 1,
                        DrillOutcome::Failed => e.1 += 1,
                        _ => {}
                    }
                }
                for (source, (ok, failed)) in by_source {
                    inner.metrics.verify_drills(source, ok, failed);
                }
                let run = VerifyRun {
                    finished_at: now,
                    duration_seconds: duration,
                    ok: report.is_ok(),
                    check_ok: report.check.as_ref().map(|c| c.ok),
                    verified: report.count(DrillOutcome::Ok),
                    failed: report.count(DrillOutcome::Failed),
                    skipped: report.count(DrillOutcome::Skipped),
                    bytes: report.bytes(),
                    problems: report.problems(),
                };
                for p in &run.problems {
                    error!("verification: {p}");
                }
                (
                    if run.ok {
                        RunResult::Ok
                    } else {
                        RunResult::Error
                    },
                    run,
                )
            }
        };
        inner
            .metrics
            .verify_run(unix_seconds(now), run.problems.len(), run.check_ok);
        let summary = format!(
            "{} verified, {} failed, {} skipped{}",
            run.verified,
            run.failed,
            run.skipped,
            match run.check_ok {
                Some(true) => "; repository check ok",
                Some(false) => "; repository check FAILED",
                None => "",
            }
        );
        inner.jobs.finish(
            &job_id,
            result,
            (!run.ok).then(|| format!("{summary}: {}", run.problems.join("; "))),
        );
        info!(result = %result.as_str(), duration, "verification done: {summary}");
        {
            let mut st = lock(&inner.verify);
            st.running = false;
            st.last_run = Some(run);
        }
        drop(slot);
        self.load_verify_state().await;
    }

    /// Read from the index what is proven of each configured source's
    /// atoms (the `tabacco_verify_*` gauges per source).
    pub async fn load_verify_state(&self) {
        let cfg = self.inner.config.config();
        for s in &cfg.sources {
            match crate::verify::proven(self.inner.manager.store().as_ref(), &cfg.hostname, &s.name)
                .await
            {
                Ok(p) if p.atoms > 0 => self.inner.metrics.verify_state(
                    &s.name,
                    p.proven_by.map(unix_seconds),
                    p.unverified,
                ),
                Ok(_) => {}
                Err(e) => {
                    warn!(source = %s.name, "cannot read the verifications from the index: {}", error_chain(&e))
                }
            }
        }
    }

    /// Start a backup job of `source` now, as the scheduler does: skipped
    /// (and counted) if the source is locked.
    pub fn trigger(&self, source: &str) {
        let inner = &self.inner;
        if source == VERIFY_JOB {
            return self.trigger_verify();
        }
        if inner.stopping.is_cancelled() {
            return;
        }
        let rctx = inner.config.runtime_context();
        if rctx.find_source(source).is_none() {
            warn!(
                source = %source,
                "not starting a backup: the source is no longer configured"
            );
            return;
        }
        let lock = match SourceLock::try_acquire(rctx.work_dir(), source, HolderKind::Agent) {
            Ok(l) => l,
            Err(e @ LockError::Busy { .. }) => {
                warn!(source = %source, "scheduled backup skipped: {e}");
                inner.metrics.run(source, RunResult::Skipped.as_str());
                self.with_source(source, |s| {
                    s.skipped_runs += 1;
                    // A skip never hides a failure: the failed run stays
                    // the last run until a run ends again.
                    if s.last_run.as_ref().is_some_and(|r| r.result.is_failure()) {
                        return;
                    }
                    s.last_run = Some(RunReport {
                        result: RunResult::Skipped,
                        finished_at: Utc::now(),
                        duration_seconds: 0.0,
                        backup_id: None,
                        job_id: None,
                        error: Some(format!("skipped: {e}")),
                        datasets_recorded: 0,
                        datasets_failed: 0,
                        atoms_failed: 0,
                    });
                });
                return;
            }
            Err(e) => {
                error!(source = %source, "scheduled backup not started: {e}");
                let now = Utc::now();
                inner.metrics.run(source, RunResult::Error.as_str());
                inner
                    .metrics
                    .finished(source, false, unix_seconds(now), 0.0);
                self.with_source(source, |s| {
                    s.last_run = Some(RunReport {
                        result: RunResult::Error,
                        finished_at: now,
                        duration_seconds: 0.0,
                        backup_id: None,
                        job_id: None,
                        error: Some(e.to_string()),
                        datasets_recorded: 0,
                        datasets_failed: 0,
                        atoms_failed: 0,
                    })
                });
                return;
            }
        };
        let job_id = inner.jobs.add_pending("backup", source, BACKUP_QUEUE);
        let span = info_span!("job", job_id = %job_id, source = %source);
        let this = self.clone();
        let source = source.to_string();
        inner
            .tracker
            .spawn(async move { this.run_job(rctx, source, job_id, lock).await }.instrument(span));
    }

    async fn run_job(
        &self,
        rctx: RuntimeContext,
        source: String,
        job_id: String,
        lock: SourceLock,
    ) {
        let inner = &self.inner;
        info!("backup job queued");
        let slot = tokio::select! {
            biased;
            () = inner.stopping.cancelled() => {
                info!("pending backup job dropped: the agent is shutting down");
                inner.jobs.finish(&job_id, JobResult::Cancelled, Some("the agent shut down before the job got a worker".into()));
                inner.metrics.run(&source, JobResult::Cancelled.as_str());
                return;
            }
            slot = inner.queues.acquire(BACKUP_QUEUE) => slot,
        };
        inner.jobs.set_running(&job_id);
        let observer = Arc::new(JobObserver::new(inner.jobs.clone(), job_id.clone()));
        let started = Instant::now();
        // Once the agent is stopping, no new dataset starts (the grace
        // period lets running ones finish); cancel_jobs kills them.
        let outcome = tokio::select! {
            biased;
            () = inner.cancel_jobs.cancelled() => None,
            r = inner.manager.backup_until(&rctx, &source, observer, &inner.stopping, std::future::pending()) => Some(r),
        };
        let duration = started.elapsed().as_secs_f64();
        let now = Utc::now();
        let mut run = RunReport {
            result: RunResult::Error,
            finished_at: now,
            duration_seconds: duration,
            backup_id: None,
            job_id: Some(job_id.clone()),
            error: None,
            datasets_recorded: 0,
            datasets_failed: 0,
            atoms_failed: 0,
        };
        match outcome {
            None => {
                warn!(
                    duration,
                    "backup cancelled by the shutdown; its commands were killed"
                );
                run.result = RunResult::Cancelled;
                run.error = Some(
                    "cancelled: the agent shut down and the shutdown_timeout ran out".to_string(),
                );
                // What the job had finished before it was cancelled.
                if let Some(job) = inner
                    .jobs
                    .snapshot()
                    .running
                    .iter()
                    .find(|j| j.id == job_id)
                {
                    run.backup_id = job.backup_id.clone();
                    run.datasets_recorded =
                        job.datasets.iter().filter(|d| d.state == "ok").count() as i64;
                    run.datasets_failed = job.datasets.len() as i64 - run.datasets_recorded;
                }
            }
            Some(Err(e)) => {
                let e = error_chain(&e);
                error!("backup could not start: {e}");
                run.error = Some(e);
            }
            Some(Ok(report)) => {
                let bytes: i64 = report.backup.datasets.iter().map(|d| d.bytes_added).sum();
                let files: i64 = report.backup.datasets.iter().map(|d| d.total_files).sum();
                inner.metrics.added(&source, bytes, files);
                // Atoms left out of a recorded dataset (pipe datasets of
                // many atoms) count as failed atoms, not failed datasets.
                let left_out = report.failures.iter().filter(|f| f.atom.is_some()).count();
                inner.metrics.atoms_failed(&source, left_out);
                run.result = report.result();
                run.error = report.error_text();
                run.backup_id = Some(report.backup.id.clone());
                run.datasets_recorded = report.backup.datasets.len() as i64;
                run.datasets_failed =
                    report.failures.iter().filter(|f| f.atom.is_none()).count() as i64;
                run.atoms_failed = (report.failed_atoms + left_out) as i64;
            }
        }
        let result = run.result;
        inner.metrics.run(&source, result.as_str());
        if result != JobResult::Cancelled {
            inner
                .metrics
                .finished(&source, result.is_success(), unix_seconds(now), duration);
        }
        inner.jobs.finish(&job_id, result, run.error.clone());
        let recorded = run.datasets_recorded > 0;
        self.with_source(&source, |s| {
            if result.is_success() {
                s.last_success = Some(now);
            }
            s.last_run = Some(run);
        });
        info!(result = %result.as_str(), duration, "backup job done");
        drop(slot);
        // The source's policy after each backup that recorded something,
        // still under the source's lock.
        if recorded && !inner.stopping.is_cancelled() {
            self.apply_retention(&rctx, &source).await;
        }
        drop(lock);
    }

    /// Apply the retention policy of `source` (if it has one) and record
    /// the outcome for the page and the metrics.
    async fn apply_retention(&self, rctx: &RuntimeContext, source: &str) {
        let inner = &self.inner;
        if rctx.config().dry_run || rctx.find_source(source).and_then(|s| s.retention).is_none() {
            return;
        }
        let names = [source.to_string()];
        let outcome = tokio::select! {
            biased;
            () = inner.cancel_jobs.cancelled() => return,
            r = inner.manager.forget(rctx, &names, false) => r,
        };
        let now = Utc::now();
        let run = match outcome {
            Ok(r) => {
                info!(forgotten = r.forgotten, "retention policy applied");
                inner
                    .metrics
                    .forget(source, Some(r.forgotten), unix_seconds(now));
                MaintenanceRun::now(
                    true,
                    format!(
                        "forgot {} snapshot(s), kept {}",
                        r.forgotten,
                        r.groups
                            .iter()
                            .map(|g| g.decisions.iter().filter(|d| d.keep).count())
                            .sum::<usize>()
                    ),
                )
            }
            Err(e) => {
                let e = error_chain(&e);
                error!("retention policy not applied: {e}");
                inner.metrics.forget(source, None, unix_seconds(now));
                MaintenanceRun::now(false, e)
            }
        };
        self.with_source(source, |s| s.last_forget = Some(run));
    }

    /// Prune the repository on `prune_schedule` until the agent stops (a
    /// host without `prune_schedule` never prunes; the schedule is read
    /// again after each prune, so a reload takes effect).
    async fn run_prune_schedule(&self) {
        let inner = &self.inner;
        loop {
            let cfg = inner.config.config();
            let next = cfg
                .prune_schedule
                .as_deref()
                .and_then(|s| Schedule::parse(s).ok())
                .and_then(|s| {
                    crate::schedule::next_run(&s, inner.clock.now(), &inner.seed, "prune")
                });
            lock(&inner.maintenance).next_prune = next;
            let wait = match next {
                Some(t) => crate::schedule::until(inner.clock.now(), t),
                // Not pruning: look again after a while (a reload may
                // have set a schedule).
                None => Duration::from_secs(60),
            };
            tokio::select! {
                () = inner.stopping.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            if next.is_none() || inner.config.config().prune_schedule.is_none() {
                continue;
            }
            let rctx = inner.config.runtime_context();
            let outcome = tokio::select! {
                () = inner.cancel_jobs.cancelled() => return,
                r = inner.manager.prune(&rctx) => r,
            };
            let now = Utc::now();
            let run = match outcome {
                Ok(r) => {
                    inner.metrics.prune(true, unix_seconds(now));
                    MaintenanceRun::now(true, r.summary.join("; "))
                }
                Err(e) => {
                    let e = error_chain(&e);
                    error!("prune failed: {e}");
                    inner.metrics.prune(false, unix_seconds(now));
                    MaintenanceRun::now(false, e)
                }
            };
            lock(&inner.maintenance).last_prune = Some(run);
        }
    }

    /// Reconcile this host's records with the repository at start, adding
    /// only (a snapshot made just before the agent was killed gets its
    /// record); stale records are reported for `tabacco reconcile`.
    pub async fn reconcile_at_start(&self) {
        let inner = &self.inner;
        let rctx = inner.config.runtime_context();
        let scope = Scope::Host(rctx.hostname().to_string());
        let run = match inner
            .manager
            .reconcile(&rctx, &scope, ReconcileMode::AddOnly)
            .await
        {
            Ok(r) => {
                inner.metrics.reconcile(r.differences(), r.repaired());
                if r.differences() > 0 {
                    warn!(
                        missing = r.missing.len(),
                        stale = r.stale.len(),
                        added = r.added,
                        "index and repository disagreed at start"
                    );
                }
                MaintenanceRun::now(
                    r.errors.is_empty() && r.stale.is_empty(),
                    format!(
                        "{} snapshot(s) indexed again, {} stale record(s) left for `tabacco reconcile`{}",
                        r.added,
                        r.stale.len(),
                        if r.errors.is_empty() {
                            String::new()
                        } else {
                            format!("; failed: {}", r.errors.join("; "))
                        }
                    ),
                )
            }
            // A host whose first backup has not run yet: nothing to
            // reconcile (the backup creates the repository).
            Err(crate::manager::maintenance::MaintenanceError::Repo(
                crate::repository::RepoError::NoRepository { .. },
            )) => {
                info!("reconcile at start: the repository does not exist yet, nothing to compare");
                MaintenanceRun::now(true, "the repository does not exist yet".into())
            }
            Err(e) => {
                let e = error_chain(&e);
                warn!("reconcile at start failed: {e}");
                MaintenanceRun::now(false, e)
            }
        };
        lock(&inner.maintenance).last_reconcile = Some(run);
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

    /// The periodic report: running jobs (and their datasets not started
    /// yet), the state of every source, the outbox backlog.
    pub fn status_report(&self) -> UpdateActiveJobStatusRequest {
        let cfg = self.inner.config.config();
        let host = cfg.hostname.clone();
        let sources = lock(&self.inner.sources)
            .values()
            .map(|s| SourceReport {
                name: s.name.clone(),
                schedule: s.schedule.clone(),
                next_run: s.next_run,
                last_run: s.last_run.clone(),
                last_success: s.last_success,
                running: self.inner.jobs.is_active(&s.name),
            })
            .collect();
        let outbox = self.outbox_counts();
        UpdateActiveJobStatusRequest {
            active_jobs: self.inner.jobs.active_jobs(&host),
            host,
            sources: Some(sources),
            outbox_pending: outbox.map(|c| c.0),
            outbox_rejected: outbox.map(|c| c.1),
            report_interval_seconds: Some(self.inner.report_interval.as_secs_f64()),
        }
    }

    /// Report the running jobs and the sources' state to the metadata
    /// store.
    pub async fn report_status(&self) {
        let req = self.status_report();
        let store = self.inner.manager.store();
        match tokio::time::timeout(
            Duration::from_secs(10),
            store.update_active_job_status(&req),
        )
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(
                "cannot report running jobs to the metadata store: {}",
                error_chain(&e)
            ),
            Err(_) => {
                warn!("cannot report running jobs to the metadata store: no answer within 10s")
            }
        }
    }

    /// Read from the index when each source was last backed up in full, so
    /// that `tabacco_backup_last_success_timestamp_seconds` survives
    /// restarts without trusting a partial or cancelled run: see
    /// [`full_backup_time`]. A source whose datasets come from
    /// `datasets_command` has no fixed list to check, so it gets a last
    /// success only from a run of this agent.
    pub async fn load_last_successes(&self) {
        let cfg = self.inner.config.config();
        for s in &cfg.sources {
            let DatasetsSource::Static(specs) = &s.datasets else {
                continue;
            };
            let expected: Vec<(&str, Option<Vec<&str>>)> = specs
                .iter()
                .map(|d| {
                    let atoms = match &d.atoms {
                        AtomsSource::Static(atoms) => {
                            Some(atoms.iter().map(|a| a.name.as_str()).collect())
                        }
                        AtomsSource::Command(_) => None,
                    };
                    (d.name.as_str(), atoms)
                })
                .collect();
            let req = FindRequest {
                pattern: format!("{}/*", s.name),
                host: cfg.hostname.clone(),
                num_versions: 1,
                older_than: None,
            };
            match self.inner.manager.store().find_atoms(&req).await {
                Ok(backups) => {
                    if let Some(t) = full_backup_time(&expected, &backups) {
                        self.inner.metrics.seen_success(&s.name, unix_seconds(t));
                        self.with_source(&s.name, |st| {
                            if st.last_success.is_none_or(|l| l < t) {
                                st.last_success = Some(t);
                            }
                        });
                    }
                }
                Err(e) => {
                    warn!(source = %s.name, "cannot read the last backup from the index: {}", error_chain(&e))
                }
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
                if !this.inner.config.config().dry_run {
                    this.reconcile_at_start().await;
                }
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
    use crate::metadata::MetadataError;
    use crate::model::{Backup, Dataset, RunningJobStatus};
    use crate::repository::{ProgressFn, RepoError, Repository, SnapshotInfo, SnapshotMeta};
    use crate::shell::{Shell, ShellCommand};
    use std::path::{Path, PathBuf};

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
