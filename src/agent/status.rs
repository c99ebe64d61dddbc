//! What the agent knows and shows: the state of each source, of its
//! verification and maintenance runs, the status page's and `/api/status`'s
//! [`AgentStatus`], the periodic report to the metadata server, and the
//! last full backup of each source read from the index at start.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::{Agent, VERIFY_JOB, unix_seconds};
use crate::config::{AtomsSource, Config, DatasetsSource};
use crate::jobs::scheduler::PlanChanges;
use crate::jobs::status::JobsSnapshot;
use crate::model::{
    FindRequest, MaintenanceRun, RunReport, SourceReport, UpdateActiveJobStatusRequest,
};
use crate::util::{error_chain, lock};

/// How a source's last run ended: the report sent to the metadata server
/// (`ok`, `partial`, `error`, `skipped`, `cancelled`).
pub type LastRun = RunReport;

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
    /// The metadata server its results are queued for (safely in the
    /// outbox, not yet in the index); absent when they were recorded or
    /// there were none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results_queued_for: Option<String>,
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
    /// Records (dataset records, verification results) waiting in the
    /// outbox for the metadata server (`None`: no metadata server
    /// configured, or the outbox unreadable).
    pub outbox_pending: Option<i64>,
    /// Records the server refused, kept in `outbox/rejected/`.
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
    pub(super) fn outbox_counts(&self) -> Option<(i64, i64)> {
        let outbox = self.inner.outbox.get()?.outbox();
        let n = |r: Result<usize, _>| r.ok().map(|n| i64::try_from(n).unwrap_or(i64::MAX));
        Some((n(outbox.pending())?, n(outbox.rejected_stored())?))
    }

    /// Make the per-source state follow the configuration's sources.
    pub(super) fn sync_sources(&self, cfg: &Config) {
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

    pub(super) fn with_source(&self, name: &str, f: impl FnOnce(&mut SourceStatus)) {
        if let Some(s) = lock(&self.inner.sources).get_mut(name) {
            f(s);
        }
    }

    pub(super) fn published(
        &self,
        next: &BTreeMap<String, Option<DateTime<Utc>>>,
        changes: &PlanChanges,
    ) {
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
                last_forget: s.last_forget.clone(),
            })
            .collect();
        let outbox = self.outbox_counts();
        let (last_prune, repository_id) = {
            let m = lock(&self.inner.maintenance);
            (m.last_prune.clone(), m.repository_id.clone())
        };
        UpdateActiveJobStatusRequest {
            active_jobs: self.inner.jobs.active_jobs(&host),
            host,
            sources: Some(sources),
            outbox_pending: outbox.map(|c| c.0),
            outbox_rejected: outbox.map(|c| c.1),
            report_interval_seconds: Some(self.inner.report_interval.as_secs_f64()),
            prune_schedule: cfg.prune_schedule.clone(),
            last_prune,
            repository_id,
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
}
