//! The agent's jobs: a backup of a source (under the source's lock, see
//! [`crate::jobs::backup`]) followed by its retention policy, in the
//! `backup` queue; a verification run in the `verify` queue.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use tracing::{Instrument, error, info, info_span, warn};

use super::status::VerifyRun;
use super::{Agent, BACKUP_QUEUE, VERIFY_JOB, VERIFY_QUEUE, unix_seconds};
use crate::jobs::backup::{SourceJob, StartError};
use crate::jobs::lock::{HolderKind, LockError};
use crate::jobs::status::{JobObserver, JobResult};
use crate::manager::BackupReport;
use crate::model::MaintenanceRun;
use crate::model::{RunReport, RunResult};
use crate::runtime::RuntimeContext;
use crate::util::{error_chain, lock};

impl Agent {
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
        let job = match SourceJob::start(rctx, source, HolderKind::Agent) {
            Ok(job) => job,
            Err(StartError::NotConfigured(_)) => {
                warn!(
                    source = %source,
                    "not starting a backup: the source is no longer configured"
                );
                return;
            }
            Err(StartError::Lock(e @ LockError::Busy { .. })) => {
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
                        error: Some(format!("skipped: {e}")),
                        ..RunReport::new(RunResult::Skipped, Utc::now())
                    });
                });
                return;
            }
            Err(StartError::Lock(e)) => {
                error!(source = %source, "scheduled backup not started: {e}");
                let now = Utc::now();
                inner.metrics.run(source, RunResult::Error.as_str());
                inner
                    .metrics
                    .finished(source, false, unix_seconds(now), 0.0);
                self.with_source(source, |s| {
                    s.last_run = Some(RunReport {
                        error: Some(e.to_string()),
                        ..RunReport::new(RunResult::Error, now)
                    })
                });
                return;
            }
        };
        let job_id = inner.jobs.add_pending("backup", source, BACKUP_QUEUE);
        let span = info_span!("job", job_id = %job_id, source = %source);
        let this = self.clone();
        inner
            .tracker
            .spawn(async move { this.run_job(job, job_id).await }.instrument(span));
    }

    pub(super) async fn run_job(&self, job: SourceJob, job_id: String) {
        let inner = &self.inner;
        let source = job.source().to_string();
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
            r = job.backup(&inner.manager, observer, &inner.stopping, std::future::pending()) => Some(r),
        };
        let duration = started.elapsed().as_secs_f64();
        let now = Utc::now();
        let mut run = RunReport {
            duration_seconds: duration,
            job_id: Some(job_id.clone()),
            ..RunReport::new(RunResult::Error, now)
        };
        match &outcome {
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
                if let Some(status) = inner
                    .jobs
                    .snapshot()
                    .running
                    .iter()
                    .find(|j| j.id == job_id)
                {
                    run.backup_id = status.backup_id.clone();
                    run.datasets_recorded =
                        status.datasets.iter().filter(|d| d.state == "ok").count() as i64;
                    run.datasets_failed = status.datasets.len() as i64 - run.datasets_recorded;
                }
            }
            Some(Err(e)) => {
                let e = error_chain(e);
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
                if let Some(id) = report
                    .backup
                    .datasets
                    .iter()
                    .find_map(|d| d.repository_id.clone())
                {
                    self.set_repository_id(id);
                }
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
        self.with_source(&source, |s| {
            if result.is_success() {
                s.last_success = Some(now);
            }
            s.last_run = Some(run);
        });
        info!(result = %result.as_str(), duration, "backup job done");
        drop(slot);
        // The source's policy after each backup, still under the source's
        // lock.
        if let Some(Ok(report)) = &outcome
            && !inner.stopping.is_cancelled()
        {
            self.apply_retention(&job, report).await;
        }
        drop(job);
    }

    /// Apply the retention policy of the job's source after `report` (see
    /// [`SourceJob::apply_retention`]) and record the outcome for the page
    /// and the metrics.
    pub(super) async fn apply_retention(&self, job: &SourceJob, report: &BackupReport) {
        let inner = &self.inner;
        let source = job.source();
        let outcome = tokio::select! {
            biased;
            () = inner.cancel_jobs.cancelled() => return,
            r = job.apply_retention(&inner.manager, report) => match r {
                Some(r) => r,
                None => return,
            },
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

    pub(super) async fn run_verify(&self, rctx: RuntimeContext, job_id: String) {
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
        let opts = crate::verify::VerifyOptions::from_spec(&rctx.config().verify);
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
                    results_queued_for: None,
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
                    results_queued_for: None,
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
                    results_queued_for: report.queued_for.clone(),
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
            "{} verified, {} failed, {} skipped{}{}",
            run.verified,
            run.failed,
            run.skipped,
            match run.check_ok {
                Some(true) => "; repository check ok",
                Some(false) => "; repository check FAILED",
                None => "",
            },
            run.results_queued_for
                .as_deref()
                .map(|url| format!("; results queued for delivery to {url}"))
                .unwrap_or_default()
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
}
