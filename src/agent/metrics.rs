//! The agent's Prometheus metrics (prometheus-client), at `GET /metrics`
//! in OpenMetrics, or the Prometheus text format when asked (see
//! [`crate::exposition`]).
//!
//! Per source: last success and failure times, duration of the last run,
//! runs by result (`ok`, `partial`, `error`, `skipped`, `cancelled`: a
//! success only when every dataset was recorded), bytes added and
//! files backed up, and the next scheduled run. Per agent: jobs by state,
//! configuration reloads by result, and `tabacco_build_info{version}`.
//! Verification (`verify_schedule`): per source the time by which every
//! atom had a successful restore drill and the atoms never proven, drills
//! by result; per agent the checks by result and the last run's time and
//! problems.
//! Retention: snapshots forgotten and failed forgets per source, the last
//! forget per source, the last prune and failed prunes, and the
//! differences reconcile found and repaired.
//! Series of a source removed by a reload are dropped, so alerts do not
//! fire for sources that no longer exist.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::exposition::Format;
use crate::model::RunResult;

/// Labels `{source}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    /// Source name.
    pub source: String,
}

/// Labels `{source, result}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RunLabels {
    /// Source name.
    pub source: String,
    /// `ok`, `partial`, `error`, `skipped` or `cancelled`.
    pub result: String,
}

/// Labels `{state}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// `pending` or `running`.
    pub state: String,
}

/// Labels `{result}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `ok` or `error`.
    pub result: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// The agent's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    last_success: Family<SourceLabels, FloatGauge>,
    last_failure: Family<SourceLabels, FloatGauge>,
    duration: Family<SourceLabels, FloatGauge>,
    runs: Family<RunLabels, Counter>,
    bytes_added: Family<SourceLabels, Counter>,
    files: Family<SourceLabels, Counter>,
    atoms_failed: Family<SourceLabels, Counter>,
    next_run: Family<SourceLabels, FloatGauge>,
    jobs: Family<StateLabels, Gauge>,
    reloads: Family<ResultLabels, Counter>,
    outbox_pending: Gauge,
    outbox_rejected_kept: Gauge,
    outbox_delivered: Counter,
    outbox_rejected: Counter,
    verify_last_success: Family<SourceLabels, FloatGauge>,
    verify_unverified: Family<SourceLabels, Gauge>,
    verify_atoms: Family<RunLabels, Counter>,
    verify_checks: Family<ResultLabels, Counter>,
    verify_last_run: FloatGauge,
    verify_last_run_problems: Gauge,
    forgotten: Family<SourceLabels, Counter>,
    forget_failures: Family<SourceLabels, Counter>,
    last_forget: Family<SourceLabels, FloatGauge>,
    last_forget_failure: Family<SourceLabels, FloatGauge>,
    last_prune: FloatGauge,
    last_prune_failure: FloatGauge,
    prune_failures: Counter,
    reconcile_found: Counter,
    reconcile_repaired: Counter,
}

fn src(source: &str) -> SourceLabels {
    SourceLabels {
        source: source.to_string(),
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Register every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("tabacco");
        let m = Metrics {
            last_success: Family::default(),
            last_failure: Family::default(),
            duration: Family::default(),
            runs: Family::default(),
            bytes_added: Family::default(),
            files: Family::default(),
            atoms_failed: Family::default(),
            next_run: Family::default(),
            jobs: Family::default(),
            reloads: Family::default(),
            outbox_pending: Gauge::default(),
            outbox_rejected_kept: Gauge::default(),
            outbox_delivered: Counter::default(),
            outbox_rejected: Counter::default(),
            verify_last_success: Family::default(),
            verify_unverified: Family::default(),
            verify_atoms: Family::default(),
            verify_checks: Family::default(),
            verify_last_run: FloatGauge::default(),
            verify_last_run_problems: Gauge::default(),
            forgotten: Family::default(),
            forget_failures: Family::default(),
            last_forget: Family::default(),
            last_forget_failure: Family::default(),
            last_prune: FloatGauge::default(),
            last_prune_failure: FloatGauge::default(),
            prune_failures: Counter::default(),
            reconcile_found: Counter::default(),
            reconcile_repaired: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "forget_snapshots",
            "Snapshots of the source forgotten by its retention policy",
            m.forgotten.clone(),
        );
        registry.register(
            "forget_failures",
            "Retention runs of the source that failed (nothing was forgotten, or the index and repository steps did not both finish)",
            m.forget_failures.clone(),
        );
        registry.register(
            "forget_last_timestamp_seconds",
            "Unix time of the last successful retention run of the source",
            m.last_forget.clone(),
        );
        registry.register(
            "forget_last_failure_timestamp_seconds",
            "Unix time of the last failed retention run of the source",
            m.last_forget_failure.clone(),
        );
        registry.register(
            "prune_last_timestamp_seconds",
            "Unix time of the last successful prune of the repository by this agent",
            m.last_prune.clone(),
        );
        registry.register(
            "prune_last_failure_timestamp_seconds",
            "Unix time of the last failed prune of the repository by this agent",
            m.last_prune_failure.clone(),
        );
        registry.register(
            "prune_failures",
            "Prunes of the repository by this agent that failed",
            m.prune_failures.clone(),
        );
        registry.register(
            "reconcile_differences",
            "Differences between the index and the repository that reconcile found (records of forgotten snapshots, snapshots without records)",
            m.reconcile_found.clone(),
        );
        registry.register(
            "reconcile_repaired",
            "Differences between the index and the repository that reconcile repaired",
            m.reconcile_repaired.clone(),
        );
        registry.register(
            "backup_last_success_timestamp_seconds",
            "Unix time of the last backup of the source in which every dataset was recorded (at start: the newest time by which the index holds every configured dataset)",
            m.last_success.clone(),
        );
        registry.register(
            "backup_last_failure_timestamp_seconds",
            "Unix time of the last backup of the source that failed or recorded only some datasets",
            m.last_failure.clone(),
        );
        registry.register(
            "backup_duration_seconds",
            "Duration of the last backup of the source",
            m.duration.clone(),
        );
        registry.register(
            "backup_runs",
            "Scheduled backup runs by result (ok: every dataset recorded, partial: some, error, skipped: the source was locked by a running backup, cancelled: by shutdown)",
            m.runs.clone(),
        );
        registry.register(
            "backup_bytes_added",
            "Bytes added to the repository by backups of the source",
            m.bytes_added.clone(),
        );
        registry.register(
            "backup_files",
            "Files in the datasets backed up from the source (summed over runs)",
            m.files.clone(),
        );
        registry.register(
            "backup_atoms_failed",
            "Atoms left out of a backup of the source because their own dump failed (the dataset's other atoms were recorded)",
            m.atoms_failed.clone(),
        );
        registry.register(
            "backup_next_run_timestamp_seconds",
            "Unix time of the next scheduled backup of the source",
            m.next_run.clone(),
        );
        registry.register("jobs", "Jobs by state", m.jobs.clone());
        registry.register(
            "config_reloads",
            "Configuration reloads (SIGHUP) by result",
            m.reloads.clone(),
        );
        registry.register(
            "outbox_pending_records",
            "Records in the outbox waiting for delivery to the metadata server",
            m.outbox_pending.clone(),
        );
        registry.register(
            "outbox_rejected_records",
            "Records kept in outbox/rejected/ (refused by the metadata server or unreadable)",
            m.outbox_rejected_kept.clone(),
        );
        registry.register(
            "outbox_delivered",
            "Records delivered to the metadata server by this agent",
            m.outbox_delivered.clone(),
        );
        registry.register(
            "outbox_rejected",
            "Records this agent moved aside to outbox/rejected/ (refused for good by the metadata server, or unreadable)",
            m.outbox_rejected.clone(),
        );
        registry.register(
            "verify_last_success_timestamp_seconds",
            "Unix time by which every atom of the source had a successful restore drill (the oldest of its atoms' newest ok drill, any version); absent while an atom was never proven",
            m.verify_last_success.clone(),
        );
        registry.register(
            "verify_atoms_unverified",
            "Atoms of the source (of this host's backups) with no successful restore drill of any version",
            m.verify_unverified.clone(),
        );
        registry.register(
            "verify_atoms",
            "Restore drills of the source's atom versions by result (ok, failed)",
            m.verify_atoms.clone(),
        );
        registry.register(
            "verify_checks",
            "Repository checks (restic check) by result (ok, error)",
            m.verify_checks.clone(),
        );
        registry.register(
            "verify_last_run_timestamp_seconds",
            "Unix time the last verification run of the agent ended",
            m.verify_last_run.clone(),
        );
        registry.register(
            "verify_last_run_problems",
            "Problems of the last verification run: failed or skipped drills, a check that found damage, results not recorded",
            m.verify_last_run_problems.clone(),
        );
        registry.register(
            "build",
            "Version of the agent",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        Metrics { registry, ..m }
    }

    /// Make a source's series exist (zero) so dashboards see it before its
    /// first run.
    pub fn add_source(&self, source: &str) {
        for result in RunResult::ALL {
            let _ = self.runs.get_or_create(&RunLabels {
                source: source.to_string(),
                result: result.as_str().to_string(),
            });
        }
        let _ = self.bytes_added.get_or_create(&src(source));
        let _ = self.files.get_or_create(&src(source));
        let _ = self.atoms_failed.get_or_create(&src(source));
    }

    /// Drop every series of a source that is no longer configured.
    pub fn remove_source(&self, source: &str) {
        let l = src(source);
        self.last_success.remove(&l);
        self.last_failure.remove(&l);
        self.duration.remove(&l);
        self.bytes_added.remove(&l);
        self.files.remove(&l);
        self.atoms_failed.remove(&l);
        self.next_run.remove(&l);
        self.verify_last_success.remove(&l);
        self.verify_unverified.remove(&l);
        self.forgotten.remove(&l);
        self.forget_failures.remove(&l);
        self.last_forget.remove(&l);
        self.last_forget_failure.remove(&l);
        for result in ["ok", "failed"] {
            self.verify_atoms.remove(&RunLabels {
                source: source.to_string(),
                result: result.to_string(),
            });
        }
        self.forgotten.remove(&l);
        self.forget_failures.remove(&l);
        self.last_forget.remove(&l);
        for result in RunResult::ALL {
            self.runs.remove(&RunLabels {
                source: source.to_string(),
                result: result.as_str().to_string(),
            });
        }
    }

    /// Count a run with its result.
    pub fn run(&self, source: &str, result: &str) {
        self.runs
            .get_or_create(&RunLabels {
                source: source.to_string(),
                result: result.to_string(),
            })
            .inc();
    }

    /// `n` atoms of a run were left out because their dumps failed.
    pub fn atoms_failed(&self, source: &str, n: usize) {
        self.atoms_failed
            .get_or_create(&src(source))
            .inc_by(n as u64);
    }

    /// A run ended at `when` (Unix seconds) after `duration` seconds.
    pub fn finished(&self, source: &str, ok: bool, when: f64, duration: f64) {
        let l = src(source);
        if ok {
            self.last_success.get_or_create(&l).set(when);
        } else {
            self.last_failure.get_or_create(&l).set(when);
        }
        self.duration.get_or_create(&l).set(duration);
    }

    /// Raise the last success time to `when` if it is later (index data
    /// read at start must not hide a newer run).
    pub fn seen_success(&self, source: &str, when: f64) {
        let g = self.last_success.get_or_create(&src(source));
        if g.get() < when {
            g.set(when);
        }
    }

    /// Add what a run backed up.
    pub fn added(&self, source: &str, bytes: i64, files: i64) {
        let l = src(source);
        self.bytes_added
            .get_or_create(&l)
            .inc_by(bytes.max(0) as u64);
        self.files.get_or_create(&l).inc_by(files.max(0) as u64);
    }

    /// The next run of a source (`None`: not scheduled).
    pub fn next_run(&self, source: &str, when: Option<f64>) {
        match when {
            Some(t) => {
                self.next_run.get_or_create(&src(source)).set(t);
            }
            None => {
                self.next_run.remove(&src(source));
            }
        }
    }

    /// Count a source's drills of one run by result.
    pub fn verify_drills(&self, source: &str, ok: usize, failed: usize) {
        for (result, n) in [("ok", ok), ("failed", failed)] {
            self.verify_atoms
                .get_or_create(&RunLabels {
                    source: source.to_string(),
                    result: result.to_string(),
                })
                .inc_by(n as u64);
        }
    }

    /// What the index says of a source's atoms: the time by which every
    /// one was proven (`None`: some never was) and how many never were.
    pub fn verify_state(&self, source: &str, proven_by: Option<f64>, unverified: usize) {
        let l = src(source);
        match proven_by {
            Some(t) => {
                self.verify_last_success.get_or_create(&l).set(t);
            }
            None => {
                self.verify_last_success.remove(&l);
            }
        }
        self.verify_unverified
            .get_or_create(&l)
            .set(i64::try_from(unverified).unwrap_or(i64::MAX));
    }

    /// A verification run ended at `when` with `problems`, after a check
    /// (`Some(ok)`) or none.
    pub fn verify_run(&self, when: f64, problems: usize, check: Option<bool>) {
        self.verify_last_run.set(when);
        self.verify_last_run_problems
            .set(i64::try_from(problems).unwrap_or(i64::MAX));
        if let Some(ok) = check {
            self.verify_checks
                .get_or_create(&ResultLabels {
                    result: if ok { "ok" } else { "error" }.to_string(),
                })
                .inc();
        }
    }

    /// A retention run of a source ended: `Some(n)` snapshots forgotten,
    /// or `None` when it failed.
    pub fn forget(&self, source: &str, forgotten: Option<usize>, when: f64) {
        let l = src(source);
        match forgotten {
            Some(n) => {
                self.forgotten.get_or_create(&l).inc_by(n as u64);
                self.last_forget.get_or_create(&l).set(when);
            }
            None => {
                self.forget_failures.get_or_create(&l).inc();
                self.last_forget_failure.get_or_create(&l).set(when);
                // Present (0: never) so that alerts can compare the two.
                let _ = self.last_forget.get_or_create(&l);
            }
        }
    }

    /// A prune ended.
    pub fn prune(&self, ok: bool, when: f64) {
        if ok {
            self.last_prune.set(when);
        } else {
            self.prune_failures.inc();
            self.last_prune_failure.set(when);
        }
    }

    /// A reconcile found `found` differences and repaired `repaired`.
    pub fn reconcile(&self, found: usize, repaired: usize) {
        self.reconcile_found.inc_by(found as u64);
        self.reconcile_repaired.inc_by(repaired as u64);
    }

    /// Count a configuration reload.
    pub fn reload(&self, ok: bool) {
        self.reloads
            .get_or_create(&ResultLabels {
                result: if ok { "ok" } else { "error" }.to_string(),
            })
            .inc();
    }

    /// Set the number of pending and running jobs.
    pub fn jobs(&self, pending: usize, running: usize) {
        for (state, n) in [("pending", pending), ("running", running)] {
            self.jobs
                .get_or_create(&StateLabels {
                    state: state.to_string(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// The outbox's state: records pending and kept aside now, and the
    /// totals delivered and moved aside by this process.
    pub fn outbox(
        &self,
        pending: usize,
        rejected_kept: usize,
        delivered_total: u64,
        rejected_total: u64,
    ) {
        self.outbox_pending
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
        self.outbox_rejected_kept
            .set(i64::try_from(rejected_kept).unwrap_or(i64::MAX));
        for (counter, total) in [
            (&self.outbox_delivered, delivered_total),
            (&self.outbox_rejected, rejected_total),
        ] {
            counter.inc_by(total.saturating_sub(counter.get()));
        }
    }

    /// The OpenMetrics text of every metric.
    pub fn render(&self) -> String {
        self.render_as(Format::OpenMetrics)
    }

    /// Every metric in `format`.
    pub fn render_as(&self, format: Format) -> String {
        crate::exposition::encode(&self.registry, format).unwrap_or_else(|e| {
            tracing::error!("cannot encode metrics: {e}");
            String::new()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_has_the_documented_names() {
        let m = Metrics::new();
        m.add_source("db");
        m.run("db", "ok");
        m.run("db", "skipped");
        m.finished("db", true, 1_700_000_000.5, 12.25);
        m.finished("db", false, 1_700_000_100.0, 3.0);
        m.seen_success("db", 1_600_000_000.0);
        m.added("db", 1024, 7);
        m.atoms_failed("db", 2);
        m.jobs(1, 2);
        m.next_run("db", Some(1_700_003_600.0));
        m.reload(false);
        m.outbox(5, 1, 4, 1);
        m.outbox(3, 1, 6, 1);
        m.forget("db", None, 1_700_000_200.0);
        m.prune(true, 1_700_000_300.0);
        m.prune(false, 1_700_000_400.0);
        let text = m.render();
        for line in [
            r#"tabacco_backup_last_success_timestamp_seconds{source="db"} 1700000000.5"#,
            r#"tabacco_backup_last_failure_timestamp_seconds{source="db"} 1700000100.0"#,
            r#"tabacco_backup_duration_seconds{source="db"} 3.0"#,
            r#"tabacco_backup_runs_total{source="db",result="ok"} 1"#,
            r#"tabacco_backup_runs_total{source="db",result="skipped"} 1"#,
            r#"tabacco_backup_runs_total{source="db",result="error"} 0"#,
            r#"tabacco_backup_bytes_added_total{source="db"} 1024"#,
            r#"tabacco_backup_files_total{source="db"} 7"#,
            r#"tabacco_backup_atoms_failed_total{source="db"} 2"#,
            r#"tabacco_jobs{state="pending"} 1"#,
            r#"tabacco_jobs{state="running"} 2"#,
            r#"tabacco_backup_next_run_timestamp_seconds{source="db"} 1700003600.0"#,
            r#"tabacco_config_reloads_total{result="error"} 1"#,
            "tabacco_outbox_pending_records 3",
            "tabacco_outbox_rejected_records 1",
            "tabacco_outbox_delivered_total 6",
            "tabacco_outbox_rejected_total 1",
            r#"tabacco_forget_failures_total{source="db"} 1"#,
            r#"tabacco_forget_last_failure_timestamp_seconds{source="db"} 1700000200.0"#,
            r#"tabacco_forget_last_timestamp_seconds{source="db"} 0.0"#,
            "tabacco_prune_last_timestamp_seconds 1700000300.0",
            "tabacco_prune_last_failure_timestamp_seconds 1700000400.0",
            "tabacco_prune_failures_total 1",
            &format!(
                r#"tabacco_build_info{{version="{}"}} 1"#,
                env!("CARGO_PKG_VERSION")
            ),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        m.remove_source("db");
        assert!(!m.render().contains("source=\"db\""));
    }
}
