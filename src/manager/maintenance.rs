//! Retention, prune and reconcile: keeping the repository and the index in
//! agreement.
//!
//! **Forget** applies each source's policy to this host's versions, grouped
//! per host, source and dataset name, with restic's own rules
//! ([`crate::retention`]). The order of the steps is what keeps the index
//! honest: (1) list the snapshots (one repository open), (2) decide,
//! (3) remove the records of the versions to forget from the index, (4)
//! forget their snapshots (one `restic forget ID...`). At no point does a
//! find return a version whose snapshot is gone; a crash between (3) and
//! (4) leaves snapshots without records, which the next forget forgets and
//! reconcile re-indexes meanwhile. When the index cannot take the removal
//! (the metadata server is unreachable, the outbox is not delivered),
//! nothing is forgotten: the next run tries again.
//!
//! **Reconcile** reads the index first, then lists the repository (a
//! record read first has its snapshot in the later listing unless it was
//! really forgotten), removes records whose snapshot is gone and indexes
//! again the snapshots whose record is missing, from the record each
//! snapshot carries ([`crate::repository::record`]). Snapshots written
//! before snapshots carried their record are reported, never guessed at.
//! Records are removed only for hosts that have snapshots in this
//! repository, so a reconcile against the wrong repository, or an empty
//! one, cannot wipe a host's index.
//!
//! **Prune** is `restic prune`: repository-wide, under restic's exclusive
//! lock; backups of other hosts wait for it (see the lock handling of the
//! restic adapter).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Utc};
use tracing::{info, warn};

use super::{Manager, ManagerError};
use crate::metadata::MAX_REMOVE_DATASETS;
use crate::model::{Backup, DatasetRef, FindRequest, RemoveDatasetsRequest};
use crate::repository::record::{self, RepoSnapshot, SnapshotRecord};
use crate::repository::{PruneReport, RepoError};
use crate::retention::{self, Decision, Policy};
use crate::runtime::RuntimeContext;

/// Test support: when the environment variable `TABACCO_FAILPOINT` names
/// `point`, the process kills itself with `SIGKILL` there (the crash tests
/// of forget and backup use it to stop between two steps).
pub fn failpoint(point: &str) {
    if std::env::var("TABACCO_FAILPOINT").is_ok_and(|p| p == point) {
        warn!(point, "failpoint reached: killing this process");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

/// Errors of forget, prune and reconcile.
#[derive(Debug, thiserror::Error)]
pub enum MaintenanceError {
    /// The repository failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// The index failed; nothing was forgotten.
    #[error("{0}")]
    Index(#[from] ManagerError),
    /// A source named on the command line is not configured.
    #[error("no source named '{0}' in the configuration (see `tabacco config check`)")]
    UnknownSource(String),
}

/// The versions of one dataset and what the policy decided for them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GroupDecision {
    /// Host.
    pub host: String,
    /// Source.
    pub source: String,
    /// Dataset name.
    pub dataset: String,
    /// The policy, in restic's words.
    pub policy: String,
    /// One decision per version, newest first.
    pub decisions: Vec<Decision>,
}

/// What forget did (or, in a dry run, would do).
#[derive(Debug, Clone, Default)]
pub struct ForgetReport {
    /// Decisions per dataset, by source and dataset name.
    pub groups: Vec<GroupDecision>,
    /// Sources left alone because they have no retention policy.
    pub no_policy: Vec<String>,
    /// Snapshots of the selected sources that could not be grouped (no
    /// record and no index entry, or invalid tags): never forgotten.
    pub ungrouped: Vec<String>,
    /// Records removed from the index.
    pub records_removed: i64,
    /// Snapshots forgotten.
    pub forgotten: usize,
    /// Nothing was changed.
    pub dry_run: bool,
}

impl ForgetReport {
    /// Versions the policies remove.
    pub fn to_remove(&self) -> usize {
        self.groups
            .iter()
            .map(|g| g.decisions.iter().filter(|d| !d.keep).count())
            .sum()
    }

    /// Versions removed per source (for metrics).
    pub fn removed_per_source(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for g in &self.groups {
            *m.entry(g.source.clone()).or_default() +=
                g.decisions.iter().filter(|d| !d.keep).count();
        }
        m
    }

    /// The table of decisions: one line per version with why it is kept.
    pub fn table(&self) -> String {
        let mut out = String::new();
        for g in &self.groups {
            let keep = g.decisions.iter().filter(|d| d.keep).count();
            out.push_str(&format!(
                "{}/{} on {}: {} ({} kept, {} removed)\n",
                g.source,
                g.dataset,
                g.host,
                g.policy,
                keep,
                g.decisions.len() - keep
            ));
            let rows: Vec<[String; 4]> = g
                .decisions
                .iter()
                .map(|d| {
                    [
                        d.time.to_rfc3339_opts(chrono::SecondsFormat::Secs, false),
                        d.id.chars().take(8).collect(),
                        if d.keep { "keep" } else { "remove" }.to_string(),
                        d.reasons.join(", "),
                    ]
                })
                .collect();
            out.push_str(&crate::util::table(&rows, "  "));
        }
        for s in &self.no_policy {
            out.push_str(&format!("{s}: no retention policy, every version kept\n"));
        }
        for s in &self.ungrouped {
            out.push_str(&format!("kept, not grouped: {s}\n"));
        }
        out
    }
}

/// Which hosts a reconcile looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// One host.
    Host(String),
    /// Every host with snapshots in the repository or records in the index.
    AllHosts,
}

/// How much a reconcile changes (a dry run: nothing, see
/// [`RuntimeContext::plan_then_apply`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReconcileMode {
    /// Index the snapshots without a record taken before `before`; report
    /// stale records but leave them (what the agent does at start: it may
    /// have been killed between a snapshot and its record, and adding is
    /// always safe). Snapshots from `before` on belong to backups of this
    /// run of the agent, which record them themselves, with what only the
    /// backup knows (statistics, a stream's size and digest): adding their
    /// tags' record first would keep the poorer one (the first record of a
    /// dataset is the one kept).
    AddOnly {
        /// When the agent started.
        before: DateTime<Utc>,
    },
    /// Repair both ways.
    Full,
}

/// What reconcile found and did.
#[derive(Debug, Clone, Default)]
pub struct ReconcileReport {
    /// Snapshots listed.
    pub snapshots: usize,
    /// Dataset records read from the index.
    pub records: usize,
    /// Records whose snapshot is gone: removed (`host backup/dataset
    /// snapshot`).
    pub stale: Vec<String>,
    /// Snapshots indexed again from their record.
    pub missing: Vec<String>,
    /// Records whose snapshot is gone but whose host has no snapshot in
    /// this repository: left alone (another repository's?).
    pub other_repository: Vec<String>,
    /// Snapshots of tabacco's without a record, not in the index: reported.
    pub legacy: Vec<String>,
    /// Snapshots whose tags are not acceptable: reported.
    pub invalid: Vec<String>,
    /// Records removed from the index.
    pub removed: i64,
    /// Records added to the index.
    pub added: usize,
    /// Failures while repairing (the rest went on).
    pub errors: Vec<String>,
    /// Nothing was changed.
    pub dry_run: bool,
    /// Stale records were reported, not removed.
    pub add_only: bool,
    /// Snapshots without a record left to the backups that are making
    /// them (taken since the agent started).
    pub in_flight: usize,
}

impl ReconcileReport {
    /// Differences found (stale records and missing ones).
    pub fn differences(&self) -> usize {
        self.stale.len() + self.missing.len()
    }

    /// Differences repaired.
    pub fn repaired(&self) -> usize {
        self.removed.max(0) as usize + self.added
    }

    /// The report for a person.
    pub fn text(&self) -> String {
        let mut out = format!(
            "{} snapshots in the repository, {} dataset records in the index\n",
            self.snapshots, self.records
        );
        let verb = |done: &str, would: &str| {
            if self.dry_run {
                would.to_string()
            } else {
                done.to_string()
            }
        };
        for (list, what) in [
            (
                &self.stale,
                if self.add_only {
                    "stale record left (run `tabacco reconcile` to remove it)".to_string()
                } else {
                    verb("removed stale record", "would remove stale record")
                },
            ),
            (&self.missing, verb("indexed again", "would index again")),
            (
                &self.other_repository,
                "left alone (host has no snapshot in this repository)".to_string(),
            ),
            (
                &self.legacy,
                "not indexed (snapshot written before snapshots carried their record)".to_string(),
            ),
            (&self.invalid, "not indexed (invalid tags)".to_string()),
            (&self.errors, "failed".to_string()),
        ] {
            for item in list {
                out.push_str(&format!("{what}: {item}\n"));
            }
        }
        if self.in_flight > 0 {
            out.push_str(&format!(
                "{} snapshot(s) taken since the agent started left to the backups making them\n",
                self.in_flight
            ));
        }
        if self.differences() == 0 {
            out.push_str("index and repository agree\n");
        }
        out
    }
}

/// The repairs a reconcile plans.
struct Repairs {
    /// Records whose snapshot is gone, per host.
    stale: BTreeMap<String, Vec<DatasetRef>>,
    /// Records to index again from their snapshots.
    to_add: Vec<Backup>,
}

/// Every dataset record of `host` (`""`: every host) in the index.
async fn index_records(
    manager: &Manager,
    host: &str,
    source: Option<&str>,
) -> Result<Vec<Backup>, ManagerError> {
    let pattern = match source {
        Some(s) => format!("{s}/*"),
        None => "*".to_string(),
    };
    Ok(manager
        .store()
        .find_atoms(&FindRequest {
            pattern,
            host: host.to_string(),
            num_versions: 0,
            older_than: None,
        })
        .await?)
}

/// Remove records through the store, in requests of bounded size, per host.
async fn remove_records(
    manager: &Manager,
    by_host: BTreeMap<String, Vec<DatasetRef>>,
) -> Result<i64, ManagerError> {
    let mut removed = 0;
    for (host, refs) in by_host {
        for chunk in refs.chunks(MAX_REMOVE_DATASETS) {
            removed += manager
                .store()
                .remove_datasets(&RemoveDatasetsRequest {
                    host: host.clone(),
                    datasets: chunk.to_vec(),
                })
                .await?;
        }
    }
    Ok(removed)
}

impl Manager {
    /// Apply the retention policies of `sources` (empty: every configured
    /// source) to this host's versions. See the module documentation for
    /// the order of the steps: (1) and (2) are the plan, a dry run stops
    /// after them.
    pub async fn forget(
        &self,
        rctx: &RuntimeContext,
        sources: &[String],
    ) -> Result<ForgetReport, MaintenanceError> {
        let plan = self.plan_forget(rctx, sources).await?;
        rctx.plan_then_apply(
            plan,
            |(report, _)| ForgetReport {
                dry_run: true,
                ..report
            },
            |(report, to_remove)| self.apply_forget(rctx, report, to_remove),
        )
        .await
    }

    /// Steps (1) and (2) of forget: the decisions, and the versions to
    /// remove (snapshot id, index key).
    async fn plan_forget(
        &self,
        rctx: &RuntimeContext,
        sources: &[String],
    ) -> Result<(ForgetReport, Vec<(String, DatasetRef)>), MaintenanceError> {
        let host = rctx.hostname().to_string();
        let mut report = ForgetReport::default();
        let mut policies: BTreeMap<String, Policy> = BTreeMap::new();
        let selected: Vec<&crate::config::SourceSpec> = if sources.is_empty() {
            rctx.config().sources.iter().collect()
        } else {
            sources
                .iter()
                .map(|s| {
                    rctx.find_source(s)
                        .ok_or_else(|| MaintenanceError::UnknownSource(s.clone()))
                })
                .collect::<Result<_, _>>()?
        };
        for s in selected {
            match s.retention {
                Some(p) => {
                    policies.insert(s.name.clone(), p);
                }
                None => report.no_policy.push(s.name.clone()),
            }
        }
        if policies.is_empty() {
            return Ok((report, Vec::new()));
        }
        let repo = rctx.repo();
        let rules = repo.retention_rules().await?;
        let snapshots = repo.snapshots(Some(&host)).await?;
        failpoint("forget-after-list");

        // (source, dataset name) -> versions, with their index keys.
        let mut groups: BTreeMap<(String, String), Vec<(retention::Version, DatasetRef)>> =
            BTreeMap::new();
        let mut legacy: Vec<(&RepoSnapshot, DatasetRef, String)> = Vec::new();
        for snap in &snapshots {
            match record::read(snap) {
                SnapshotRecord::Record(b) => {
                    let ds = &b.datasets[0];
                    if !policies.contains_key(&ds.source) || b.host != host {
                        continue;
                    }
                    groups
                        .entry((ds.source.clone(), ds.name.clone()))
                        .or_default()
                        .push((
                            retention::Version {
                                id: snap.id.clone(),
                                time: snap.time,
                            },
                            DatasetRef {
                                backup_id: b.id.clone(),
                                dataset_id: ds.id.clone(),
                            },
                        ));
                }
                SnapshotRecord::Legacy {
                    backup_id,
                    dataset_id,
                    source,
                } if policies.contains_key(&source) => legacy.push((
                    snap,
                    DatasetRef {
                        backup_id,
                        dataset_id,
                    },
                    source,
                )),
                SnapshotRecord::Invalid(e)
                    if snap
                        .tag(record::SOURCE_TAG)
                        .is_some_and(|s| policies.contains_key(s)) =>
                {
                    report.ungrouped.push(format!(
                        "snapshot {}: {e}",
                        &snap.id[..8.min(snap.id.len())]
                    ));
                }
                _ => {}
            }
        }
        // Snapshots from before records were carried: their dataset name
        // comes from the index, if it has them.
        if !legacy.is_empty() {
            let mut names: HashMap<DatasetRef, String> = HashMap::new();
            let legacy_sources: BTreeSet<&str> =
                legacy.iter().map(|(_, _, s)| s.as_str()).collect();
            for source in legacy_sources {
                for b in index_records(self, &host, Some(source)).await? {
                    for ds in b.datasets {
                        names.insert(
                            DatasetRef {
                                backup_id: b.id.clone(),
                                dataset_id: ds.id.clone(),
                            },
                            ds.name,
                        );
                    }
                }
            }
            for (snap, key, source) in legacy {
                match names.get(&key) {
                    Some(name) => groups.entry((source, name.clone())).or_default().push((
                        retention::Version {
                            id: snap.id.clone(),
                            time: snap.time,
                        },
                        key,
                    )),
                    None => report.ungrouped.push(format!(
                        "snapshot {} (source {source}, backup {}): no record in the snapshot or the index",
                        &snap.id[..8.min(snap.id.len())],
                        key.backup_id
                    )),
                }
            }
        }

        let now = Utc::now();
        let mut to_remove: Vec<(String, DatasetRef)> = Vec::new();
        for ((source, dataset), versions) in groups {
            let policy = policies[&source];
            let keys: HashMap<String, DatasetRef> = versions
                .iter()
                .map(|(v, k)| (v.id.clone(), k.clone()))
                .collect();
            let list: Vec<retention::Version> = versions.into_iter().map(|(v, _)| v).collect();
            let decisions = retention::apply(&policy, &list, now, rules);
            for d in decisions.iter().filter(|d| !d.keep) {
                to_remove.push((d.id.clone(), keys[&d.id].clone()));
            }
            report.groups.push(GroupDecision {
                host: host.clone(),
                source,
                dataset,
                policy: policy.describe(),
                decisions,
            });
        }
        Ok((report, to_remove))
    }

    /// Steps (3) and (4) of forget.
    async fn apply_forget(
        &self,
        rctx: &RuntimeContext,
        mut report: ForgetReport,
        to_remove: Vec<(String, DatasetRef)>,
    ) -> Result<ForgetReport, MaintenanceError> {
        if to_remove.is_empty() {
            return Ok(report);
        }
        let host = rctx.hostname().to_string();
        // (3) The index first: from now on no find returns these versions.
        let refs: Vec<DatasetRef> = to_remove.iter().map(|(_, k)| k.clone()).collect();
        report.records_removed = remove_records(self, BTreeMap::from([(host.clone(), refs)]))
            .await
            .map_err(|e| {
                warn!("forget: the index did not take the removal, nothing forgotten: {e}");
                e
            })?;
        failpoint("forget-after-records");
        // (4) Then the snapshots.
        let ids: Vec<String> = to_remove.into_iter().map(|(id, _)| id).collect();
        rctx.repo().forget_ids(&ids).await?;
        report.forgotten = ids.len();
        failpoint("forget-after-forget");
        info!(
            forgotten = report.forgotten,
            records_removed = report.records_removed,
            "forget done"
        );
        Ok(report)
    }

    /// Remove unreferenced data from the repository (`restic prune`); a
    /// dry run only says so (restic decides what to remove while it runs).
    pub async fn prune(&self, rctx: &RuntimeContext) -> Result<PruneReport, MaintenanceError> {
        rctx.plan_then_apply(
            (),
            |()| PruneReport {
                summary: vec![format!(
                    "dry run: would run restic prune on {}",
                    rctx.repo().location()
                )],
            },
            |()| async {
                info!("prune started");
                let r = rctx.repo().prune().await?;
                info!(summary = ?r.summary, "prune done");
                Ok(r)
            },
        )
        .await
    }

    /// Make the index and the repository agree for `scope` (see the module
    /// documentation): the differences are the plan, a dry run stops there.
    pub async fn reconcile(
        &self,
        rctx: &RuntimeContext,
        scope: &Scope,
        mode: ReconcileMode,
    ) -> Result<ReconcileReport, MaintenanceError> {
        let plan = self.plan_reconcile(rctx, scope, mode).await?;
        rctx.plan_then_apply(
            plan,
            |(report, _)| ReconcileReport {
                dry_run: true,
                ..report
            },
            |(report, repair)| self.apply_reconcile(report, repair, mode),
        )
        .await
    }

    /// The differences between the index and the repository, and the
    /// repairs they call for.
    async fn plan_reconcile(
        &self,
        rctx: &RuntimeContext,
        scope: &Scope,
        mode: ReconcileMode,
    ) -> Result<(ReconcileReport, Repairs), MaintenanceError> {
        let host_filter = match scope {
            Scope::Host(h) => h.as_str(),
            Scope::AllHosts => "",
        };
        let mut report = ReconcileReport {
            add_only: matches!(mode, ReconcileMode::AddOnly { .. }),
            ..ReconcileReport::default()
        };
        // The index first, then the repository.
        let index = index_records(self, host_filter, None).await?;
        let snapshots = rctx
            .repo()
            .snapshots((!host_filter.is_empty()).then_some(host_filter))
            .await?;
        report.snapshots = snapshots.len();
        let in_repo: HashSet<&str> = snapshots.iter().map(|s| s.id.as_str()).collect();
        let hosts_in_repo: HashSet<&str> = snapshots.iter().map(|s| s.host.as_str()).collect();
        let mut indexed: HashSet<(String, String)> = HashSet::new();
        let mut stale: BTreeMap<String, Vec<DatasetRef>> = BTreeMap::new();
        for b in &index {
            for ds in &b.datasets {
                report.records += 1;
                indexed.insert((b.id.clone(), ds.id.clone()));
                if in_repo.contains(ds.snapshot_id.as_str()) {
                    continue;
                }
                let what = format!(
                    "{} {}/{} (backup {}, snapshot {})",
                    b.host,
                    ds.source,
                    ds.name,
                    b.id,
                    &ds.snapshot_id[..ds.snapshot_id.len().min(8)]
                );
                if !hosts_in_repo.contains(b.host.as_str()) {
                    report.other_repository.push(what);
                    continue;
                }
                report.stale.push(what);
                stale.entry(b.host.clone()).or_default().push(DatasetRef {
                    backup_id: b.id.clone(),
                    dataset_id: ds.id.clone(),
                });
            }
        }
        let mut to_add: Vec<Backup> = Vec::new();
        // A snapshot's record is written before its backup runs: the
        // repository it is in is this one (also for a snapshot copied here
        // from another), read once when something is to be indexed.
        let mut repo_id: Option<Option<String>> = None;
        for snap in &snapshots {
            let short = &snap.id[..snap.id.len().min(8)];
            match record::read(snap) {
                SnapshotRecord::Record(mut b) => {
                    let ds = &b.datasets[0];
                    if let ReconcileMode::AddOnly { before } = mode
                        && snap.time >= before
                        && !indexed.contains(&(b.id.clone(), ds.id.clone()))
                    {
                        report.in_flight += 1;
                        continue;
                    }
                    if !indexed.contains(&(b.id.clone(), ds.id.clone())) {
                        if repo_id.is_none() {
                            repo_id = Some(match rctx.repo().id().await {
                                Ok(id) => id,
                                Err(e) => {
                                    warn!(
                                        "cannot read the repository id, records indexed again will lack it: {e}"
                                    );
                                    None
                                }
                            });
                        }
                        if let Some(Some(id)) = &repo_id {
                            b.datasets[0].repository_id = Some(id.clone());
                        }
                        let ds = &b.datasets[0];
                        report.missing.push(format!(
                            "{} {}/{} (backup {}, snapshot {short})",
                            b.host, ds.source, ds.name, b.id
                        ));
                        to_add.push(b);
                    }
                }
                SnapshotRecord::Legacy {
                    backup_id,
                    dataset_id,
                    source,
                } => {
                    if !indexed.contains(&(backup_id.clone(), dataset_id)) {
                        report.legacy.push(format!(
                            "{} source {source} (backup {backup_id}, snapshot {short})",
                            snap.host
                        ));
                    }
                }
                SnapshotRecord::Invalid(e) => report
                    .invalid
                    .push(format!("snapshot {short} of {}: {e}", snap.host)),
                SnapshotRecord::Foreign => {}
            }
        }
        Ok((report, Repairs { stale, to_add }))
    }

    /// Repair what [`Manager::plan_reconcile`] found: stale records are
    /// removed only in [`ReconcileMode::Full`].
    async fn apply_reconcile(
        &self,
        mut report: ReconcileReport,
        Repairs { stale, mut to_add }: Repairs,
        mode: ReconcileMode,
    ) -> Result<ReconcileReport, MaintenanceError> {
        if mode == ReconcileMode::Full {
            match remove_records(self, stale).await {
                Ok(n) => report.removed = n,
                Err(e) => report.errors.push(format!("removing stale records: {e}")),
            }
        }
        // Oldest first, so that a backup's datasets arrive in order.
        to_add.sort_by(|a, b| a.timestamp.cmp(&b.timestamp).then(a.id.cmp(&b.id)));
        for b in to_add {
            let ds = &b.datasets[0];
            match self.store().add_dataset(&b, ds).await {
                Ok(()) => report.added += 1,
                Err(e) => report
                    .errors
                    .push(format!("indexing backup {} dataset {}: {e}", b.id, ds.id)),
            }
        }
        info!(
            snapshots = report.snapshots,
            records = report.records,
            removed = report.removed,
            added = report.added,
            "reconcile done"
        );
        Ok(report)
    }
}
