//! Manager: backup and restore of sources.
//!
//! Every operation is a plan, made by reading only, then an apply (see
//! [`RuntimeContext::plan_then_apply`]): a dry run reports the plan.
//!
//! A backup's plan is the source's configuration ([`BackupPlan`]): what a
//! command lists is only named. Applying it runs `pre_backup_command`,
//! resolves the datasets
//! (static, or printed by `datasets_command`) and their atoms, backs each
//! dataset up through its handler (a few at once), records each dataset in
//! the metadata store only after its snapshot exists, and always ends with
//! `post_backup_command` (`TABACCO_STATUS=ok|error`). The source's
//! `timeout` bounds the whole run; what is still running then is killed.
//!
//! A restore finds atoms with a [`FindRequest`] and restores each matching
//! dataset version through its source's handler, between
//! `pre_restore_command` and `post_restore_command`.

#[cfg(test)]
mod dry_run_tests;
mod hooks;
pub mod maintenance;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DurationRound, Utc};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

use self::hooks::Hooks;
use crate::config::load::parse_dataset_specs;
use crate::config::{AtomSpec, AtomsSource, DatasetSpec, DatasetsSource, SourceSpec};
use crate::handler::{self, DatasetBackup, Handler, HandlerError};
use crate::metadata::{MetadataError, MetadataStore};
use crate::model::{Atom, Backup, Dataset, FindRequest, RunResult, RunningJobStatus, atom_path};
use crate::names::{check_name, check_record, excerpt, join_below};
use crate::process::ProcessError;
use crate::repository::{ProgressFn, SnapshotInfo};
use crate::runtime::RuntimeContext;
use crate::shell::script_label;
use crate::util::{error_chain, lock};

pub mod restore;
use restore::{Method, PlannedAtom};

/// The queue (`queue_config.workers`) bounding how many datasets of one
/// source are backed up at once.
pub const DATASETS_QUEUE: &str = "datasets";

/// Errors that stop a backup or restore as a whole.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// No source of that name is configured.
    #[error("no source named '{0}' in the configuration (see `tabacco config check`)")]
    UnknownSource(String),
    /// The source names a handler that does not exist.
    #[error("source '{source_name}': handler '{handler}' is not configured")]
    UnknownHandler {
        /// Source name.
        source_name: String,
        /// Handler name.
        handler: String,
    },
    /// The handler could not be built.
    #[error(transparent)]
    Handler(#[from] HandlerError),
    /// A pre/post command or `datasets_command` failed.
    #[error("source '{source_name}': {what} failed: {error}")]
    Command {
        /// Source name.
        source_name: String,
        /// Which command (`pre_backup_command`, ...).
        what: &'static str,
        /// How it failed.
        #[source]
        error: ProcessError,
    },
    /// `datasets_command` printed something that is not a dataset list.
    #[error("source '{source_name}': datasets_command printed an invalid dataset list: {message}")]
    BadDatasets {
        /// Source name.
        source_name: String,
        /// What was wrong.
        message: String,
    },
    /// The source's `timeout` elapsed; running commands were killed.
    #[error("source '{source_name}': timed out after {}; running commands were killed", humantime::format_duration(*timeout))]
    TimedOut {
        /// Source name.
        source_name: String,
        /// The configured timeout.
        timeout: Duration,
    },
    /// The run was interrupted (a signal to `tabacco backup`); running
    /// commands were stopped.
    #[error(
        "source '{source_name}': interrupted by {by}; running commands were stopped, the datasets not finished were not recorded"
    )]
    Interrupted {
        /// Source name.
        source_name: String,
        /// What interrupted it, e.g. `SIGINT`.
        by: String,
    },
    /// The metadata store failed.
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    /// Nothing in the index matches the request.
    #[error("no backed up atom matches '{0}' (try `tabacco query` with a broader pattern)")]
    NothingFound(String),
    /// The backup asked for holds no matching atom.
    #[error(
        "backup {backup_id} holds no atom matching '{pattern}' (see `tabacco query --backup-id {backup_id} '*'`)"
    )]
    NotInBackup {
        /// The pattern.
        pattern: String,
        /// The backup id asked for.
        backup_id: String,
    },
    /// This host has no matching backup, other hosts do.
    #[error(
        "host {host} has no backup of '{pattern}', other hosts do: {}; choose one with --host (e.g. --host {})",
        others.join("; "),
        others.first().and_then(|o| o.split(' ').next()).unwrap_or_default()
    )]
    OnlyOtherHosts {
        /// The pattern.
        pattern: String,
        /// This host.
        host: String,
        /// The other hosts, each with its newest version.
        others: Vec<String>,
    },
    /// Local I/O.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Receives events while a backup runs (progress display, job status).
/// Every method has a no-op default.
pub trait Observer: Send + Sync {
    /// A backup of a source is starting (its id is known).
    fn backup_started(&self, _backup: &Backup) {}
    /// The datasets to back up are known (atoms resolved); each starts
    /// later, a few at a time.
    fn datasets_planned(&self, _datasets: &[Dataset]) {}
    /// A dataset's backup is starting.
    fn dataset_started(&self, _dataset: &Dataset) {}
    /// The repository reported progress on a dataset.
    fn progress(&self, _dataset: &Dataset, _status: &RunningJobStatus) {}
    /// A dataset's backup ended.
    fn dataset_finished(&self, _dataset: &Dataset, _outcome: Result<&SnapshotInfo, &str>) {}
    /// A dataset version's restore ended.
    fn restore_finished(&self, _dataset: &Dataset, _outcome: Result<(), &str>) {}
}

/// An observer that ignores everything.
#[derive(Debug, Default)]
pub struct NoObserver;
impl Observer for NoObserver {}

/// A dataset that failed, with the reason.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetFailure {
    /// Dataset name.
    pub dataset: String,
    /// The atom that failed, when the rest of the dataset was recorded.
    pub atom: Option<String>,
    /// Full error text.
    pub error: String,
}

/// What a backup did.
#[derive(Debug, Clone)]
pub struct BackupReport {
    /// The backup, with the datasets that were recorded in the index.
    pub backup: Backup,
    /// Datasets that failed.
    pub failures: Vec<DatasetFailure>,
    /// An error that stopped the whole source (hook, timeout, datasets).
    pub fatal: Option<String>,
    /// Dry run: what the backup would do, one line each ([`BackupPlan::lines`];
    /// empty when the backup ran).
    pub planned: Vec<String>,
    /// Atoms of the failed datasets whose atoms were known (atoms left
    /// out of a recorded dataset are `failures` with an `atom`).
    pub failed_atoms: usize,
    /// Datasets not started because the stop token was cancelled (they
    /// are among `failures` too).
    pub not_started: usize,
}

impl BackupReport {
    /// Whether everything succeeded.
    pub fn is_ok(&self) -> bool {
        self.failures.is_empty() && self.fatal.is_none()
    }

    /// How the run ended: `ok` only when every dataset was recorded;
    /// `cancelled` when the stop token kept datasets from starting;
    /// `partial` when some datasets were recorded and others not;
    /// otherwise `error`.
    pub fn result(&self) -> RunResult {
        if self.not_started > 0 {
            RunResult::Cancelled
        } else if self.is_ok() {
            RunResult::Ok
        } else if !self.backup.datasets.is_empty() {
            RunResult::Partial
        } else {
            RunResult::Error
        }
    }

    /// Every failure in one line: the source's error, then each failed
    /// dataset with its error (`None` when all went well).
    pub fn error_text(&self) -> Option<String> {
        let mut errors: Vec<String> = self.fatal.iter().cloned().collect();
        errors.extend(
            self.failures
                .iter()
                .map(|f| format!("dataset '{}': {}", f.dataset, f.error)),
        );
        (!errors.is_empty()).then(|| errors.join("; "))
    }
}

/// One restored dataset version.
#[derive(Debug, Clone)]
pub struct RestoredItem {
    /// Backup it came from.
    pub backup_id: String,
    /// When that backup ran.
    pub timestamp: chrono::DateTime<Utc>,
    /// Host that backed it up.
    pub host: String,
    /// Global atom paths restored.
    pub atoms: Vec<String>,
    /// Where it went.
    pub target: PathBuf,
    /// The snapshot it came from.
    pub snapshot_id: String,
    /// How it was restored ([`Method::describe`]).
    pub how: &'static str,
    /// Each atom: where it lands, its recorded size.
    pub planned: Vec<PlannedAtom>,
}

/// What a restore did.
#[derive(Debug, Clone, Default)]
pub struct RestoreReport {
    /// Dataset versions restored (or that would be, in a dry run).
    pub restored: Vec<RestoredItem>,
    /// Datasets that failed.
    pub failures: Vec<DatasetFailure>,
}

/// Runs backups and restores against a metadata store.
#[derive(Clone)]
pub struct Manager {
    store: Arc<dyn MetadataStore>,
}

/// A new unique, time-ordered id.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// Environment for a source-level command.
fn source_env(backup: &Backup, source: &str) -> Vec<(String, String)> {
    vec![
        ("TABACCO_BACKUP_ID".into(), backup.id.clone()),
        ("TABACCO_HOST".into(), backup.host.clone()),
        ("TABACCO_SOURCE".into(), source.to_string()),
    ]
}

fn with_var(mut env: Vec<(String, String)>, key: &str, value: &str) -> Vec<(String, String)> {
    env.push((key.to_string(), value.to_string()));
    env
}

/// State shared between a backup run and its caller, so that what was
/// recorded before a timeout is still reported.
struct Progress {
    recorded: Vec<Dataset>,
    failures: Vec<DatasetFailure>,
    failed_atoms: usize,
    not_started: usize,
    /// Once cancelled, no new dataset starts.
    stop: CancellationToken,
}

impl Manager {
    /// A manager recording into `store`.
    pub fn new(store: Arc<dyn MetadataStore>) -> Manager {
        Manager { store }
    }

    /// The metadata store.
    pub fn store(&self) -> &Arc<dyn MetadataStore> {
        &self.store
    }

    /// Back up a source now.
    ///
    /// Returns `Err` only when the backup could not start (unknown source
    /// or handler); everything that went wrong after that is in the report.
    pub async fn backup(
        &self,
        rctx: &RuntimeContext,
        source_name: &str,
        observer: Arc<dyn Observer>,
    ) -> Result<BackupReport, ManagerError> {
        self.backup_until(
            rctx,
            source_name,
            observer,
            &CancellationToken::new(),
            std::future::pending(),
        )
        .await
    }

    /// [`Manager::backup`] under its caller's controls. Once `stop` is
    /// cancelled (the agent's grace period after SIGTERM) no new dataset
    /// starts: those already running go on, the others are failures "not
    /// started", counted in [`BackupReport::not_started`]. When `interrupt`
    /// completes (with what interrupted, e.g. `SIGINT`) the run ends like a
    /// timeout: running commands are stopped (restic with `SIGINT`, so it
    /// removes its lock) and unfinished datasets are not recorded.
    /// `post_backup_command` runs either way.
    ///
    /// A dry run plans ([`plan_backup`]) and stops: the report's
    /// [`BackupReport::planned`] says what would be done.
    pub async fn backup_until(
        &self,
        rctx: &RuntimeContext,
        source_name: &str,
        observer: Arc<dyn Observer>,
        stop: &CancellationToken,
        interrupt: impl std::future::Future<Output = String>,
    ) -> Result<BackupReport, ManagerError> {
        let plan = plan_backup(rctx, source_name)?;
        let now = Utc::now();
        let backup = Backup {
            id: new_id(),
            timestamp: now
                .duration_trunc(chrono::TimeDelta::microseconds(1))
                .unwrap_or(now),
            host: rctx.hostname().to_string(),
            datasets: Vec::new(),
        };
        let backup = &backup;
        rctx.plan_then_apply(
            plan,
            |plan| {
                let planned = plan.lines();
                for line in &planned {
                    info!(source = %plan.source.name, "dry run: {line}");
                }
                BackupReport {
                    backup: backup.clone(),
                    failures: Vec::new(),
                    fatal: None,
                    planned,
                    failed_atoms: 0,
                    not_started: 0,
                }
            },
            |plan| self.apply_backup(rctx, plan, backup, observer, stop, interrupt),
        )
        .await
    }

    /// Apply a backup plan: see [`Manager::backup_until`].
    async fn apply_backup(
        &self,
        rctx: &RuntimeContext,
        plan: BackupPlan<'_>,
        backup: &Backup,
        observer: Arc<dyn Observer>,
        stop: &CancellationToken,
        interrupt: impl std::future::Future<Output = String>,
    ) -> Result<BackupReport, ManagerError> {
        let BackupPlan { source, handler } = plan;
        let span = info_span!("backup", source = %source.name, backup_id = %backup.id);
        async {
            info!("backup started");
            observer.backup_started(backup);
            let started = Instant::now();
            let state = Mutex::new(Progress {
                recorded: Vec::new(),
                failures: Vec::new(),
                failed_atoms: 0,
                not_started: 0,
                stop: stop.clone(),
            });
            let run = self.run_backup(rctx, source, handler.as_ref(), backup, &observer, &state);
            let run = async {
                match source.timeout {
                    Some(t) => match tokio::time::timeout(t, run).await {
                        Ok(r) => r.err(),
                        Err(_) => Some(ManagerError::TimedOut {
                            source_name: source.name.clone(),
                            timeout: t,
                        }),
                    },
                    None => run.await.err(),
                }
            };
            let fatal = tokio::select! {
                fatal = run => fatal,
                by = interrupt => Some(ManagerError::Interrupted {
                    source_name: source.name.clone(),
                    by,
                }),
            };
            let mut fatal = fatal.map(|e| error_chain(&e));
            let state = state.into_inner().unwrap_or_else(|p| p.into_inner());
            let ok = fatal.is_none() && state.failures.is_empty();
            let hooks = Hooks::backup(source, source_env(backup, &source.name));
            if let Err(e) = hooks.post(rctx.shell(), ok).await {
                error!("{}", error_chain(&e));
                fatal.get_or_insert(error_chain(&e));
            }
            let report = BackupReport {
                backup: Backup {
                    datasets: state.recorded,
                    ..backup.clone()
                },
                failures: state.failures,
                fatal,
                planned: Vec::new(),
                failed_atoms: state.failed_atoms,
                not_started: state.not_started,
            };
            let elapsed = started.elapsed().as_secs_f64();
            if report.is_ok() {
                info!(
                    datasets = report.backup.datasets.len(),
                    elapsed, "backup finished"
                );
            } else {
                error!(
                    datasets = report.backup.datasets.len(),
                    failed = report.failures.len(),
                    elapsed,
                    "backup finished with errors{}",
                    report
                        .fatal
                        .as_deref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                );
            }
            Ok(report)
        }
        .instrument(span)
        .await
    }

    async fn run_backup(
        &self,
        rctx: &RuntimeContext,
        source: &SourceSpec,
        handler: &dyn Handler,
        backup: &Backup,
        observer: &Arc<dyn Observer>,
        state: &Mutex<Progress>,
    ) -> Result<(), ManagerError> {
        let shell = rctx.shell();
        let env = source_env(backup, &source.name);
        // The caller holds the source's lock: what is in its spool was
        // left by a killed run.
        if let Err(e) = handler::spool::clear_source(rctx.work_dir(), &source.name) {
            warn!("cannot remove the spool left by an earlier run: {e}");
        }
        Hooks::backup(source, env.clone()).pre(shell).await?;
        let specs = match &source.datasets {
            DatasetsSource::Static(specs) => specs.clone(),
            DatasetsSource::Command(cmd) => {
                let out = shell
                    .output(cmd, &env)
                    .await
                    .map_err(|error| ManagerError::Command {
                        source_name: source.name.clone(),
                        what: "datasets_command",
                        error,
                    })?;
                let text = String::from_utf8_lossy(&out);
                parse_dataset_specs(&text).map_err(|message| ManagerError::BadDatasets {
                    source_name: source.name.clone(),
                    message,
                })?
            }
        };
        let mut datasets = Vec::new();
        for spec in &specs {
            match self.resolve_dataset(rctx, source, backup, spec).await {
                Ok(ds) => datasets.push(ds),
                Err(e) => {
                    let error = error_chain(&e);
                    error!(dataset = %spec.name, "{error}");
                    lock(state).failures.push(DatasetFailure {
                        dataset: spec.name.clone(),
                        atom: None,
                        error,
                    });
                }
            }
        }
        let limit = rctx.config().queue.workers(DATASETS_QUEUE).max(1);
        observer.datasets_planned(&datasets);
        futures::stream::iter(datasets)
            .map(|ds| self.backup_dataset(rctx, handler, backup, ds, observer, state))
            .buffer_unordered(limit)
            .collect::<Vec<()>>()
            .await;
        Ok(())
    }

    /// Turn a dataset spec into a dataset with its atoms resolved.
    async fn resolve_dataset(
        &self,
        rctx: &RuntimeContext,
        source: &SourceSpec,
        backup: &Backup,
        spec: &DatasetSpec,
    ) -> Result<Dataset, ManagerError> {
        let atoms: Vec<AtomSpec> = match &spec.atoms {
            AtomsSource::Static(atoms) => atoms.clone(),
            AtomsSource::Command(cmd) => {
                let env = with_var(
                    source_env(backup, &source.name),
                    "TABACCO_DATASET",
                    &spec.name,
                );
                let out = rctx.shell().output(cmd, &env).await.map_err(|error| {
                    ManagerError::Command {
                        source_name: source.name.clone(),
                        what: "atoms_command",
                        error,
                    }
                })?;
                parse_atom_names(&String::from_utf8_lossy(&out)).map_err(|message| {
                    ManagerError::BadDatasets {
                        source_name: source.name.clone(),
                        message: format!("dataset '{}': atoms_command: {message}", spec.name),
                    }
                })?
            }
        };
        Ok(Dataset {
            id: new_id(),
            name: spec.name.clone(),
            source: source.name.clone(),
            atoms: atoms
                .into_iter()
                .map(|a| Atom {
                    name: a.name,
                    path: a.path.unwrap_or_default(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    async fn backup_dataset(
        &self,
        rctx: &RuntimeContext,
        handler: &dyn Handler,
        backup: &Backup,
        mut dataset: Dataset,
        observer: &Arc<dyn Observer>,
        state: &Mutex<Progress>,
    ) {
        let span = info_span!("dataset", dataset = %dataset.name, dataset_id = %dataset.id);
        async {
            // buffer_unordered creates this future when a slot frees up:
            // checking here is checking before the dataset would start.
            let stopping = lock(state).stop.is_cancelled();
            if stopping {
                warn!("dataset not started: stopping (shutdown grace period)");
                let mut st = lock(state);
                st.not_started += 1;
                st.failed_atoms += dataset.atoms.len();
                st.failures.push(DatasetFailure {
                    dataset: dataset.name.clone(),
                    atom: None,
                    error: "not started: the agent is shutting down".into(),
                });
                return;
            }
            info!(atoms = dataset.atoms.len(), "dataset backup started");
            observer.dataset_started(&dataset);
            let progress: ProgressFn = {
                let observer = observer.clone();
                let ds = dataset.clone();
                Arc::new(move |st: &RunningJobStatus| observer.progress(&ds, st))
            };
            // How to restore it, known before the backup runs, so that the
            // record the snapshot carries has it too.
            dataset.handler = Some(handler.kind().as_str().to_string());
            let result = handler.backup(rctx, backup, &dataset, Some(progress)).await;
            let mut atom_failures = Vec::new();
            let outcome = match result {
                Ok(DatasetBackup {
                    snapshot: info,
                    failed_atoms,
                    atoms,
                }) => {
                    // Atoms whose own part failed are not in the snapshot:
                    // record the others, report these.
                    if atoms.is_empty() {
                        dataset
                            .atoms
                            .retain(|a| !failed_atoms.iter().any(|f| f.atom == a.name));
                    } else {
                        dataset.atoms = atoms;
                    }
                    atom_failures = failed_atoms;
                    // What a restore elsewhere needs: from where (how is
                    // set above).
                    dataset.repository_id = match rctx.repo().id().await {
                        Ok(id) => id,
                        Err(e) => {
                            warn!(
                                "cannot read the repository id, the record will lack it: {}",
                                error_chain(&e)
                            );
                            None
                        }
                    };
                    dataset.snapshot_id = info.snapshot_id.clone();
                    dataset.total_files = info.total_files;
                    dataset.total_bytes = info.total_bytes;
                    dataset.bytes_added = info.bytes_added;
                    dataset.duration = info.duration_secs.round() as i64;
                    maintenance::failpoint("backup-after-snapshot");
                    match self.store.add_dataset(backup, &dataset).await {
                        Ok(()) => Ok(info),
                        Err(e) => Err(format!(
                            "snapshot {} was created but could not be recorded in the index: {}",
                            info.snapshot_id,
                            error_chain(&e)
                        )),
                    }
                }
                Err(e) => Err(error_chain(&e)),
            };
            match &outcome {
                Ok(info) => {
                    info!(
                        snapshot_id = %info.snapshot_id,
                        files = info.total_files,
                        bytes = info.total_bytes,
                        bytes_added = info.bytes_added,
                        "dataset backed up and recorded"
                    );
                    lock(state).recorded.push(dataset.clone());
                    for f in &atom_failures {
                        error!(atom = %f.atom, "atom left out of the backup: {}", f.error);
                        lock(state).failures.push(DatasetFailure {
                            dataset: dataset.name.clone(),
                            atom: Some(f.atom.clone()),
                            error: format!("atom '{}' left out: {}", f.atom, f.error),
                        });
                    }
                }
                Err(e) => {
                    error!("dataset backup failed: {e}");
                    let mut st = lock(state);
                    st.failed_atoms += dataset.atoms.len();
                    st.failures.push(DatasetFailure {
                        dataset: dataset.name.clone(),
                        atom: None,
                        error: e.clone(),
                    });
                }
            }
            observer.dataset_finished(&dataset, outcome.as_ref().map_err(|e| e.as_str()));
        }
        .instrument(span)
        .await
    }

    /// Find atoms and restore them under `target`, from what the index
    /// records (see [`restore`](mod@self::restore)).
    ///
    /// When the request yields several versions of one atom, each backup's
    /// data goes to `target/<backup id>/` so versions do not overwrite each
    /// other; otherwise everything goes to `target` itself.
    ///
    /// Every dataset version is planned (index and configuration only)
    /// before anything is touched; a dry run returns the plan as the
    /// report's `restored` items, running no hook and creating no
    /// directory.
    pub async fn restore(
        &self,
        rctx: &RuntimeContext,
        req: &FindRequest,
        target: &Path,
        opts: &RestoreOptions,
        observer: &Arc<dyn Observer>,
    ) -> Result<RestoreReport, ManagerError> {
        let found = self.find_for_restore(req, opts).await?;
        // Restore paths and the commands' environment are built from these
        // records: one that breaks the identifier rules (written by a
        // compromised host through an older server, say) is refused, never
        // followed.
        let mut report = RestoreReport::default();
        let mut backups = Vec::with_capacity(found.len());
        for mut b in found {
            for ds in std::mem::take(&mut b.datasets) {
                if let Err(e) = check_record(&b, &ds) {
                    let error = format!(
                        "refusing the index record of backup {} dataset {} (host {}): {e}",
                        excerpt(&b.id),
                        excerpt(&ds.id),
                        excerpt(&b.host)
                    );
                    error!("{error}");
                    report.failures.push(DatasetFailure {
                        dataset: ds.name.clone(),
                        atom: None,
                        error,
                    });
                } else {
                    b.datasets.push(ds);
                }
            }
            if !b.datasets.is_empty() {
                backups.push(b);
            }
        }
        let mut versions: HashMap<String, usize> = HashMap::new();
        for b in &backups {
            for ds in &b.datasets {
                for a in &ds.atoms {
                    *versions
                        .entry(atom_path(&ds.source, &ds.name, &a.name))
                        .or_default() += 1;
                }
            }
        }
        let per_backup_dirs = versions.values().any(|&n| n > 1);

        // This host's repository, to refuse snapshots held by another one
        // (unknown: the restore itself will say what is wrong).
        let local_repo_id = if backups
            .iter()
            .any(|b| b.datasets.iter().any(|d| d.repository_id.is_some()))
        {
            match rctx.repo().id().await {
                Ok(id) => id,
                Err(e) => {
                    warn!(
                        "cannot read this host's repository id to compare: {}",
                        error_chain(&e)
                    );
                    None
                }
            }
        } else {
            None
        };

        // Plan every dataset version before anything is touched.
        let mut by_source: BTreeMap<String, Vec<Planned<'_>>> = BTreeMap::new();
        for b in &backups {
            for ds in &b.datasets {
                let fail = |report: &mut RestoreReport, error: String| {
                    error!(dataset = %ds.name, backup = %b.id, "cannot restore: {error}");
                    report.failures.push(DatasetFailure {
                        dataset: ds.name.clone(),
                        atom: None,
                        error,
                    });
                };
                if let (Some(recorded), Some(local)) = (&ds.repository_id, &local_repo_id)
                    && recorded != local
                {
                    let e =
                        restore::other_repository(b, ds, recorded, local, &rctx.repo().location());
                    fail(&mut report, e);
                    continue;
                }
                let dest = if per_backup_dirs {
                    match join_below(target, &b.id) {
                        Ok(dest) => dest,
                        Err(e) => {
                            fail(&mut report, format!("backup {}: {e}", excerpt(&b.id)));
                            continue;
                        }
                    }
                } else {
                    target.to_path_buf()
                };
                let method = restore::method(rctx, ds, opts.raw, || {
                    source_handler(rctx, &ds.source)
                        .map(|(_, h)| h)
                        .map_err(|e| error_chain(&e))
                });
                let method = match method {
                    Ok(m) => m,
                    Err(e) => {
                        fail(&mut report, e);
                        continue;
                    }
                };
                let atoms = match restore::planned_atoms(ds, &method, &dest) {
                    Ok(a) => a,
                    Err(e) => {
                        fail(&mut report, e);
                        continue;
                    }
                };
                by_source
                    .entry(ds.source.clone())
                    .or_default()
                    .push(Planned {
                        backup: b,
                        dataset: ds,
                        dest,
                        method,
                        atoms,
                    });
            }
        }

        rctx.plan_then_apply(
            (report, by_source),
            |(mut report, by_source)| {
                for p in by_source.values().flatten() {
                    info!(backup_id = %p.backup.id, snapshot_id = %p.dataset.snapshot_id, atoms = ?p.atom_names(), target = %p.dest.display(), how = p.method.describe(), "dry run: would restore");
                    report.restored.push(p.restored_item());
                }
                report
            },
            |(report, by_source)| self.apply_restore(rctx, report, by_source, target, observer),
        )
        .await
    }

    /// Apply a restore plan: create the target, and restore each source's
    /// dataset versions between its restore hooks.
    async fn apply_restore(
        &self,
        rctx: &RuntimeContext,
        mut report: RestoreReport,
        by_source: BTreeMap<String, Vec<Planned<'_>>>,
        target: &Path,
        observer: &Arc<dyn Observer>,
    ) -> Result<RestoreReport, ManagerError> {
        if !by_source.is_empty() {
            tokio::fs::create_dir_all(target)
                .await
                .map_err(|source| ManagerError::Io {
                    context: format!("cannot create restore target {}", target.display()),
                    source,
                })?;
        }
        for (name, items) in &by_source {
            // The source's hooks run only where it is configured, and not
            // around raw streams (nothing is loaded anywhere).
            let hooks = rctx
                .find_source(name)
                .filter(|_| items.iter().any(|p| !matches!(p.method, Method::Raw)));
            let span = info_span!("restore", source = %name);
            async {
                let env = vec![
                    ("TABACCO_HOST".to_string(), rctx.hostname().to_string()),
                    ("TABACCO_SOURCE".to_string(), name.clone()),
                    ("TABACCO_TARGET".to_string(), target.display().to_string()),
                ];
                let hooks = Hooks::restore(name, hooks, env);
                let mut source_ok = true;
                if let Err(e) = hooks.pre(rctx.shell()).await {
                    report.failures.push(DatasetFailure {
                        dataset: String::new(),
                        atom: None,
                        error: error_chain(&e),
                    });
                    source_ok = false;
                }
                if source_ok {
                    for p in items {
                        let (b, ds) = (p.backup, p.dataset);
                        info!(backup_id = %b.id, snapshot_id = %ds.snapshot_id, atoms = ?p.atom_names(), target = %p.dest.display(), how = p.method.describe(), "restoring");
                        observer.dataset_started(ds);
                        let result = self.restore_one(rctx, p, observer).await;
                        observer.restore_finished(ds, result.as_ref().map(|_| ()).map_err(String::as_str));
                        if let Err(error) = result {
                            error!(dataset = %ds.name, "restore failed: {error}");
                            report.failures.push(DatasetFailure {
                                dataset: ds.name.clone(),
                                atom: None,
                                error,
                            });
                            source_ok = false;
                            continue;
                        }
                        report.restored.push(p.restored_item());
                    }
                }
                if let Err(e) = hooks.post(rctx.shell(), source_ok).await {
                    report.failures.push(DatasetFailure {
                        dataset: String::new(),
                        atom: None,
                        error: error_chain(&e),
                    });
                }
            }
            .instrument(span)
            .await;
        }
        if !report.failures.is_empty() {
            warn!(
                failed = report.failures.len(),
                "restore finished with errors"
            );
        }
        Ok(report)
    }

    /// The backups to restore from: those matching `req` (and
    /// `opts.backup_id`); when the host was only defaulted to this one and
    /// nothing matches, the other hosts that have matching atoms make the
    /// error.
    async fn find_for_restore(
        &self,
        req: &FindRequest,
        opts: &RestoreOptions,
    ) -> Result<Vec<Backup>, ManagerError> {
        let found = match &opts.backup_id {
            Some(id) => {
                let all = FindRequest {
                    num_versions: 0,
                    ..req.clone()
                };
                let mut found = self.store.find_atoms(&all).await?;
                found.retain(|b| &b.id == id);
                if found.is_empty() {
                    return Err(ManagerError::NotInBackup {
                        pattern: req.pattern.clone(),
                        backup_id: id.clone(),
                    });
                }
                found
            }
            None => self.store.find_atoms(req).await?,
        };
        if !found.is_empty() {
            return Ok(found);
        }
        if opts.host_defaulted && !req.host.is_empty() {
            let any = FindRequest {
                host: String::new(),
                num_versions: 0,
                ..req.clone()
            };
            let mut others: BTreeMap<String, (chrono::DateTime<Utc>, String)> = BTreeMap::new();
            for b in self.store.find_atoms(&any).await? {
                let e = others
                    .entry(b.host.clone())
                    .or_insert((b.timestamp, b.id.clone()));
                if b.timestamp > e.0 {
                    *e = (b.timestamp, b.id.clone());
                }
            }
            if !others.is_empty() {
                return Err(ManagerError::OnlyOtherHosts {
                    pattern: req.pattern.clone(),
                    host: req.host.clone(),
                    others: others
                        .into_iter()
                        .map(|(host, (t, id))| {
                            format!(
                                "{host} (newest {}, backup {id})",
                                t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                            )
                        })
                        .collect(),
                });
            }
        }
        Err(ManagerError::NothingFound(req.pattern.clone()))
    }

    /// Restore one planned dataset version; the error text says what
    /// failed.
    async fn restore_one(
        &self,
        rctx: &RuntimeContext,
        p: &Planned<'_>,
        observer: &Arc<dyn Observer>,
    ) -> Result<(), String> {
        let ds = p.dataset;
        // Progress against the recorded sizes, where known; `base`: bytes
        // of the atoms already streamed.
        let total: i64 = p.atoms.iter().filter_map(|a| a.size).sum();
        let progress = |base: i64| -> ProgressFn {
            let observer = observer.clone();
            let ds = ds.clone();
            Arc::new(move |st: &RunningJobStatus| {
                let mut st = st.clone();
                st.bytes_done += base;
                if st.total_bytes <= 0 && total > 0 {
                    st.total_bytes = total;
                }
                if st.total_bytes > 0 {
                    st.percent_done = (st.bytes_done as f64 / st.total_bytes as f64).min(1.0);
                }
                observer.progress(&ds, &st)
            })
        };
        match &p.method {
            Method::Local(handler) => handler
                .restore(rctx, p.backup, ds, &p.dest, Some(progress(0)))
                .await
                .map_err(|e| error_chain(&e)),
            Method::RecordedPaths(paths) => rctx
                .repo()
                .restore(&ds.snapshot_id, paths, &p.dest, Some(progress(0)))
                .await
                .map_err(|e| error_chain(&e)),
            Method::Raw => {
                let mut base = 0;
                for (atom, planned) in ds.atoms.iter().zip(&p.atoms) {
                    if let Some(dir) = planned.target.parent() {
                        tokio::fs::create_dir_all(dir)
                            .await
                            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                    }
                    let consumer = rctx.shell().command(
                        "cat > \"$TABACCO_RAW_FILE\"",
                        &[(
                            "TABACCO_RAW_FILE".to_string(),
                            planned.target.display().to_string(),
                        )],
                    );
                    let name = restore::stream_name(ds, &atom.name);
                    rctx.repo()
                        .stream_restore(&ds.snapshot_id, &name, consumer, Some(progress(base)))
                        .await
                        .map_err(|e| format!("atom '{}': {}", atom.name, error_chain(&e)))?;
                    base += atom.size.unwrap_or(0);
                }
                Ok(())
            }
        }
    }
}

/// A dataset version planned for restore.
struct Planned<'a> {
    backup: &'a Backup,
    dataset: &'a Dataset,
    /// The directory it is restored below.
    dest: PathBuf,
    method: Method,
    atoms: Vec<PlannedAtom>,
}

impl Planned<'_> {
    /// The names of the atoms restored.
    fn atom_names(&self) -> Vec<String> {
        self.atoms.iter().map(|a| a.atom.clone()).collect()
    }

    /// The report's line for this dataset version (restored, or in a dry
    /// run to be restored).
    fn restored_item(&self) -> RestoredItem {
        let (b, ds) = (self.backup, self.dataset);
        RestoredItem {
            backup_id: b.id.clone(),
            timestamp: b.timestamp,
            host: b.host.clone(),
            atoms: self.atom_names(),
            target: self.dest.clone(),
            snapshot_id: ds.snapshot_id.clone(),
            how: self.method.describe(),
            planned: self.atoms.clone(),
        }
    }
}

/// Choices of a restore beyond the index request.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Write pipe atoms' streams as files, even where the source is
    /// configured.
    pub raw: bool,
    /// Restore from this backup only.
    pub backup_id: Option<String>,
    /// The request's host is this host by default, not by the user's
    /// choice: when nothing matches, name the hosts that have it.
    pub host_defaulted: bool,
}

/// A backup of a source as planned from its configuration alone: no
/// command runs to make it. What `datasets_command` and `atoms_command`
/// list is only named: they run when the plan is applied, after
/// `pre_backup_command` (which may prepare what they list).
pub struct BackupPlan<'a> {
    source: &'a SourceSpec,
    handler: Box<dyn Handler>,
}

impl BackupPlan<'_> {
    /// What applying the plan would do, one line each: the hooks, and each
    /// dataset with its atoms (or the command that lists them).
    pub fn lines(&self) -> Vec<String> {
        let s = self.source;
        let hook = |what: &str, cmd: &Option<String>| {
            cmd.as_deref()
                .map(|c| format!("would run {what} `{}`", script_label(c)))
        };
        let mut out: Vec<String> = hook("pre_backup_command", &s.pre_backup_command)
            .into_iter()
            .collect();
        match &s.datasets {
            DatasetsSource::Static(specs) => {
                for spec in specs {
                    let atoms = match &spec.atoms {
                        AtomsSource::Static(atoms) => {
                            let names: Vec<&str> = atoms.iter().map(|a| a.name.as_str()).collect();
                            format!("atoms {}", names.join(", "))
                        }
                        AtomsSource::Command(c) => {
                            format!("atoms listed by atoms_command `{}`", script_label(c))
                        }
                    };
                    out.push(format!("would back up {}/{}: {atoms}", s.name, spec.name));
                }
            }
            DatasetsSource::Command(c) => out.push(format!(
                "would back up the datasets of {} listed by datasets_command `{}`",
                s.name,
                script_label(c)
            )),
        }
        out.extend(hook("post_backup_command", &s.post_backup_command));
        out
    }
}

/// Plan the backup of source `name` (see [`BackupPlan`]).
pub fn plan_backup<'a>(
    rctx: &'a RuntimeContext,
    name: &str,
) -> Result<BackupPlan<'a>, ManagerError> {
    let (source, handler) = source_handler(rctx, name)?;
    Ok(BackupPlan { source, handler })
}

/// A configured source and the handler built for it.
fn source_handler<'a>(
    rctx: &'a RuntimeContext,
    name: &str,
) -> Result<(&'a SourceSpec, Box<dyn Handler>), ManagerError> {
    let source = rctx
        .find_source(name)
        .ok_or_else(|| ManagerError::UnknownSource(name.to_string()))?;
    let hspec = rctx
        .handler_spec(&source.handler)
        .ok_or_else(|| ManagerError::UnknownHandler {
            source_name: source.name.clone(),
            handler: source.handler.clone(),
        })?;
    Ok((source, handler::for_source(hspec, source)?))
}

/// Parse the output of an `atoms_command`: one atom name per line (blank
/// lines ignored); names must be safe paths and unique.
pub fn parse_atom_names(text: &str) -> Result<Vec<AtomSpec>, String> {
    let mut seen = std::collections::HashSet::new();
    let mut atoms = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let name = line.trim_end_matches('\r');
        if name.trim().is_empty() {
            continue;
        }
        check_name("atom", name).map_err(|e| format!("line {}: {e}", i + 1))?;
        if !seen.insert(name.to_string()) {
            return Err(format!("line {}: atom '{name}' is listed twice", i + 1));
        }
        atoms.push(AtomSpec {
            name: name.to_string(),
            path: None,
        });
    }
    if atoms.is_empty() {
        return Err("printed no atom names".into());
    }
    Ok(atoms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atom_names_one_per_line() {
        let atoms = parse_atom_names("a\n\nb/c\r\n").unwrap();
        let names: Vec<_> = atoms.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["a", "b/c"]);
        assert!(parse_atom_names("a\na\n").unwrap_err().contains("twice"));
        assert!(parse_atom_names("../x\n").unwrap_err().contains("line 1"));
        assert!(parse_atom_names("\n\n").is_err());
    }
}
