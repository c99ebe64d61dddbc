//! Job status: what every job of the agent is doing.
//!
//! A job is pending (waiting for a worker of its queue), running (with the
//! repository's progress for each dataset: percent, files, bytes, current
//! files, elapsed), or done (result, duration, error text). The last
//! [`DONE_KEEP`] done jobs are kept. The registry feeds the status page,
//! `/api/status`, the `tabacco_jobs` metric, and the periodic report of
//! active jobs to the metadata store ([`StatusRegistry::active_jobs`]).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::manager::Observer;
use crate::model::{Backup, Dataset, JobStatus, RunningJobStatus};
use crate::repository::SnapshotInfo;

/// How many done jobs are kept.
pub const DONE_KEEP: usize = 100;

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for a worker of its queue.
    Pending,
    /// Running.
    Running,
    /// Finished (see its result).
    Done,
}

impl JobState {
    /// The lowercase name (`pending`, `running`, `done`).
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Running => "running",
            JobState::Done => "done",
        }
    }
}

/// How a job ended: the run results of [`crate::model::RunResult`]
/// (`ok` only when every dataset was recorded; `partial`, `error`,
/// `cancelled`).
pub use crate::model::RunResult as JobResult;

/// One dataset of a running or done job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetStatus {
    /// Dataset id.
    pub dataset_id: String,
    /// Dataset name.
    pub name: String,
    /// `pending` (not started yet), `running`, `ok`, `error`, or
    /// `not started` (the job ended before it started).
    pub state: String,
    /// The latest progress report from the repository.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<RunningJobStatus>,
    /// Error text of a failed dataset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Status of one job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobInfo {
    /// Job id, unique on this host.
    pub id: String,
    /// What the job does (`backup`).
    pub kind: String,
    /// Source it works on.
    pub source: String,
    /// Queue it runs in.
    pub queue: String,
    /// Where it is.
    pub state: JobState,
    /// When it was queued.
    pub created_at: DateTime<Utc>,
    /// When it started running.
    pub started_at: Option<DateTime<Utc>>,
    /// When it finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// Running time in seconds (so far, while running).
    pub duration_seconds: Option<f64>,
    /// The backup id, once the backup started.
    pub backup_id: Option<String>,
    /// How it ended.
    pub result: Option<JobResult>,
    /// What went wrong.
    pub error: Option<String>,
    /// Datasets started so far, with their progress or outcome.
    pub datasets: Vec<DatasetStatus>,
    /// Bytes added to the repository by the recorded datasets.
    pub bytes_added: i64,
    /// Files in the recorded datasets.
    pub files: i64,
}

/// All jobs at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobsSnapshot {
    /// Waiting for a worker, oldest first.
    pub pending: Vec<JobInfo>,
    /// Running, oldest first.
    pub running: Vec<JobInfo>,
    /// Finished, newest first (at most [`DONE_KEEP`]).
    pub done: Vec<JobInfo>,
}

#[derive(Debug, Default)]
struct Inner {
    active: BTreeMap<String, JobInfo>,
    done: VecDeque<JobInfo>,
}

/// The registry of jobs.
#[derive(Debug, Default)]
pub struct StatusRegistry {
    inner: Mutex<Inner>,
}

impl StatusRegistry {
    /// An empty registry.
    pub fn new() -> StatusRegistry {
        StatusRegistry::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        crate::util::lock(&self.inner)
    }

    fn with_job(&self, id: &str, f: impl FnOnce(&mut JobInfo)) {
        if let Some(job) = self.lock().active.get_mut(id) {
            f(job);
        }
    }

    /// Register a new pending job; returns its id.
    pub fn add_pending(&self, kind: &str, source: &str, queue: &str) -> String {
        let mut inner = self.lock();
        // Time-ordered and unique across restarts of the agent.
        let id = crate::manager::new_id();
        inner.active.insert(
            id.clone(),
            JobInfo {
                id: id.clone(),
                kind: kind.to_string(),
                source: source.to_string(),
                queue: queue.to_string(),
                state: JobState::Pending,
                created_at: Utc::now(),
                started_at: None,
                finished_at: None,
                duration_seconds: None,
                backup_id: None,
                result: None,
                error: None,
                datasets: Vec::new(),
                bytes_added: 0,
                files: 0,
            },
        );
        id
    }

    /// The job got a worker.
    pub fn set_running(&self, id: &str) {
        self.with_job(id, |j| {
            j.state = JobState::Running;
            j.started_at = Some(Utc::now());
        });
    }

    /// The job's backup id is known.
    pub fn set_backup_id(&self, id: &str, backup_id: &str) {
        self.with_job(id, |j| j.backup_id = Some(backup_id.to_string()));
    }

    /// The datasets the job will back up are known: each is pending until
    /// it starts.
    pub fn datasets_planned(&self, id: &str, datasets: &[Dataset]) {
        self.with_job(id, |j| {
            for dataset in datasets {
                if !j.datasets.iter().any(|d| d.dataset_id == dataset.id) {
                    j.datasets.push(DatasetStatus {
                        dataset_id: dataset.id.clone(),
                        name: dataset.name.clone(),
                        state: "pending".into(),
                        progress: None,
                        error: None,
                    });
                }
            }
        });
    }

    /// A dataset of the job started.
    pub fn dataset_started(&self, id: &str, dataset: &Dataset) {
        self.with_job(id, |j| {
            match j.datasets.iter_mut().find(|d| d.dataset_id == dataset.id) {
                Some(d) => d.state = "running".into(),
                None => j.datasets.push(DatasetStatus {
                    dataset_id: dataset.id.clone(),
                    name: dataset.name.clone(),
                    state: "running".into(),
                    progress: None,
                    error: None,
                }),
            }
        });
    }

    /// Progress of a dataset of the job.
    pub fn progress(&self, id: &str, dataset_id: &str, status: &RunningJobStatus) {
        self.with_job(id, |j| {
            if let Some(d) = j.datasets.iter_mut().find(|d| d.dataset_id == dataset_id) {
                d.progress = Some(status.clone());
            }
        });
    }

    /// A dataset of the job ended.
    pub fn dataset_finished(
        &self,
        id: &str,
        dataset: &Dataset,
        outcome: Result<&SnapshotInfo, &str>,
    ) {
        self.with_job(id, |j| {
            if let Some(d) = j.datasets.iter_mut().find(|d| d.dataset_id == dataset.id) {
                match outcome {
                    Ok(info) => {
                        d.state = "ok".into();
                        d.progress = None;
                        j.bytes_added += info.bytes_added;
                        j.files += info.total_files;
                    }
                    Err(e) => {
                        d.state = "error".into();
                        d.error = Some(e.to_string());
                    }
                }
            }
        });
    }

    /// The job ended: move it to the done list.
    pub fn finish(&self, id: &str, result: JobResult, error: Option<String>) -> Option<JobInfo> {
        let mut inner = self.lock();
        let mut job = inner.active.remove(id)?;
        let now = Utc::now();
        job.state = JobState::Done;
        job.finished_at = Some(now);
        job.duration_seconds = job.started_at.map(|s| seconds(now - s));
        job.result = Some(result);
        job.error = error;
        for d in &mut job.datasets {
            match d.state.as_str() {
                "running" => d.state = "error".into(),
                "pending" => d.state = "not started".into(),
                _ => {}
            }
        }
        inner.done.push_front(job.clone());
        inner.done.truncate(DONE_KEEP);
        Some(job)
    }

    /// Every job, running durations filled in.
    pub fn snapshot(&self) -> JobsSnapshot {
        let inner = self.lock();
        let now = Utc::now();
        let mut snap = JobsSnapshot::default();
        for job in inner.active.values() {
            let mut job = job.clone();
            match job.state {
                JobState::Running => {
                    job.duration_seconds = job.started_at.map(|s| seconds(now - s));
                    snap.running.push(job);
                }
                _ => snap.pending.push(job),
            }
        }
        snap.done = inner.done.iter().cloned().collect();
        snap
    }

    /// Number of pending and running jobs.
    pub fn counts(&self) -> (usize, usize) {
        let inner = self.lock();
        let running = inner
            .active
            .values()
            .filter(|j| j.state == JobState::Running)
            .count();
        (inner.active.len() - running, running)
    }

    /// The running datasets, then those of running jobs not started yet
    /// (`state: pending`), with their names, as reported to the metadata
    /// store. Finished datasets are left out.
    pub fn active_jobs(&self, host: &str) -> Vec<JobStatus> {
        let inner = self.lock();
        let mut out = Vec::new();
        for wanted in ["running", "pending"] {
            for job in inner
                .active
                .values()
                .filter(|j| j.state == JobState::Running)
            {
                for d in job.datasets.iter().filter(|d| d.state == wanted) {
                    out.push(JobStatus {
                        host: host.to_string(),
                        job_id: job.id.clone(),
                        backup_id: job.backup_id.clone().unwrap_or_default(),
                        dataset_id: d.dataset_id.clone(),
                        dataset_source: job.source.clone(),
                        status: d.progress.clone(),
                        dataset_name: Some(d.name.clone()),
                        state: Some(wanted.to_string()),
                    });
                }
            }
        }
        out
    }

    /// Whether a job of `source` is pending or running.
    pub fn is_active(&self, source: &str) -> bool {
        self.lock().active.values().any(|j| j.source == source)
    }
}

fn seconds(d: chrono::TimeDelta) -> f64 {
    d.num_milliseconds() as f64 / 1000.0
}

/// Feeds a job's status from the manager's events.
#[derive(Debug, Clone)]
pub struct JobObserver {
    registry: Arc<StatusRegistry>,
    job_id: String,
}

impl JobObserver {
    /// An observer updating job `job_id`.
    pub fn new(registry: Arc<StatusRegistry>, job_id: String) -> JobObserver {
        JobObserver { registry, job_id }
    }
}

impl Observer for JobObserver {
    fn backup_started(&self, backup: &Backup) {
        self.registry.set_backup_id(&self.job_id, &backup.id);
    }
    fn datasets_planned(&self, datasets: &[Dataset]) {
        self.registry.datasets_planned(&self.job_id, datasets);
    }
    fn dataset_started(&self, dataset: &Dataset) {
        self.registry.dataset_started(&self.job_id, dataset);
    }
    fn progress(&self, dataset: &Dataset, status: &RunningJobStatus) {
        self.registry.progress(&self.job_id, &dataset.id, status);
    }
    fn dataset_finished(&self, dataset: &Dataset, outcome: Result<&SnapshotInfo, &str>) {
        self.registry
            .dataset_finished(&self.job_id, dataset, outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ds(id: &str) -> Dataset {
        Dataset {
            id: id.into(),
            name: format!("name-{id}"),
            source: "src".into(),
            ..Default::default()
        }
    }

    #[test]
    fn job_goes_pending_running_done_with_progress() {
        let reg = Arc::new(StatusRegistry::new());
        let id = reg.add_pending("backup", "src", "backup");
        assert_eq!(reg.counts(), (1, 0));
        reg.set_running(&id);
        assert_eq!(reg.counts(), (0, 1));
        let obs = JobObserver::new(reg.clone(), id.clone());
        obs.backup_started(&Backup {
            id: "b1".into(),
            timestamp: Utc::now(),
            host: "h".into(),
            datasets: vec![],
        });
        obs.dataset_started(&ds("d1"));
        obs.dataset_started(&ds("d2"));
        let st = RunningJobStatus {
            percent_done: 0.5,
            files_done: 3,
            current_files: vec!["/x".into()],
            ..Default::default()
        };
        obs.progress(&ds("d1"), &st);
        let active = reg.active_jobs("h");
        assert_eq!(active.len(), 2);
        assert_eq!(active[0].backup_id, "b1");
        assert_eq!(active[0].job_id, id);
        assert_eq!(active[0].dataset_source, "src");
        assert_eq!(active[0].status.as_ref().unwrap().files_done, 3);
        let info = SnapshotInfo {
            snapshot_id: "s".into(),
            total_files: 7,
            bytes_added: 100,
            ..Default::default()
        };
        obs.dataset_finished(&ds("d1"), Ok(&info));
        obs.dataset_finished(&ds("d2"), Err("boom"));
        assert!(reg.active_jobs("h").is_empty());
        let snap = reg.snapshot();
        assert_eq!(snap.running.len(), 1);
        assert!(snap.running[0].duration_seconds.is_some());
        let done = reg
            .finish(&id, JobResult::Error, Some("1 dataset failed".into()))
            .unwrap();
        assert_eq!(done.state, JobState::Done);
        assert_eq!(done.files, 7);
        assert_eq!(done.bytes_added, 100);
        assert_eq!(done.datasets[1].error.as_deref(), Some("boom"));
        assert_eq!(reg.counts(), (0, 0));
        assert_eq!(reg.snapshot().done.len(), 1);
        // Unknown ids are ignored.
        reg.set_running("nope");
        assert!(reg.finish("nope", JobResult::Ok, None).is_none());
    }

    #[test]
    fn only_the_last_hundred_done_jobs_are_kept() {
        let reg = StatusRegistry::new();
        let mut last = String::new();
        for _ in 0..(DONE_KEEP + 20) {
            last = reg.add_pending("backup", "s", "backup");
            reg.finish(&last, JobResult::Ok, None);
        }
        let done = reg.snapshot().done;
        assert_eq!(done.len(), DONE_KEEP);
        assert_eq!(done[0].id, last, "newest first");
    }

    #[test]
    fn job_json_names_state_and_result_in_lowercase() {
        let reg = StatusRegistry::new();
        let id = reg.add_pending("backup", "s", "backup");
        let done = reg.finish(&id, JobResult::Cancelled, None).unwrap();
        let v = serde_json::to_value(&done).unwrap();
        assert_eq!(v["state"], "done");
        assert_eq!(v["result"], "cancelled");
    }
}
