//! The agent's repository maintenance: the prune on `prune_schedule`
//! and the add-only reconcile of this host's records at start.

use std::time::Duration;

use chrono::Utc;
use tracing::{error, info, warn};

use super::{Agent, unix_seconds};
use crate::manager::maintenance::{ReconcileMode, Scope};
use crate::model::MaintenanceRun;
use crate::schedule::Schedule;
use crate::util::{error_chain, lock};

impl Agent {
    /// Prune the repository on `prune_schedule` until the agent stops (a
    /// host without `prune_schedule` never prunes; the schedule is read
    /// again after each prune, so a reload takes effect).
    pub(super) async fn run_prune_schedule(&self) {
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

    /// Read the repository's id at start (one `restic cat config`, cached
    /// for the process), for the status report; a repository that does not
    /// exist yet gets its id from the first backup instead.
    pub async fn learn_repository_id(&self) {
        let rctx = self.inner.config.runtime_context();
        match rctx.repo().id().await {
            Ok(Some(id)) => self.set_repository_id(id),
            Ok(None) => {}
            Err(e) => info!(
                "the repository's id is not known yet ({}); the first backup records it",
                error_chain(&e)
            ),
        }
    }

    /// Remember the repository's id (also from a backup's records).
    pub(super) fn set_repository_id(&self, id: String) {
        lock(&self.inner.maintenance).repository_id = Some(id);
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
            .reconcile(
                &rctx,
                &scope,
                ReconcileMode::AddOnly {
                    before: inner.started_at,
                },
            )
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
}
