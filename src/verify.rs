//! Verification: a repository check and restore drills, so that every
//! atom is proven restorable, and the proof is in the index.
//!
//! A run (`tabacco verify`, or the agent's `verify_schedule`):
//! 1. checks the repository (`restic check`, with `--read-data-subset`
//!    when asked; it waits for running backups like `forget` does);
//! 2. picks atom versions of this host's backups: the newest version of
//!    each matching atom (or more with `num_versions`), never-verified
//!    first, then least recently verified, all or a sample of N;
//! 3. drills them one dataset (snapshot) at a time: one `restic restore`
//!    of the picked atoms into a scratch directory under `work_dir`
//!    (bounded by `scratch_budget` and the free space; removed after the
//!    dataset, on failure and cancellation; after a kill, removed at the
//!    next start: see [`crate::handler::spool`]), then compares:
//!    - a pipe atom: SHA-256 and size of the restored stream against the
//!      fingerprint recorded at backup;
//!    - a file atom: the restored tree against the snapshot's listing
//!      (every entry present, files of the listed size; file count and
//!      bytes against the record), and each file whose live copy has the
//!      listed size and modification time against that live copy, byte
//!      for byte: the share that differs must stay within
//!      `live_tolerance_percent` (borgmatic's spot check, per atom);
//! 4. records each result (ok or failed, with what differed) in the index
//!    through [`MetadataStore::add_verifications`].
//!
//! Drills never run a source's restore commands: nothing live is touched.

pub mod compare;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use tracing::{error, info, warn};

use crate::config::HandlerType;
use crate::handler::file::FileHandler;
use crate::handler::spool::{Budget, SpoolDir};
use crate::metadata::{MAX_VERIFICATIONS_PER_REQUEST, MetadataError, MetadataStore, Recording};
use crate::model::{
    AddVerificationsRequest, Atom, AtomVersion, Backup, Dataset, FindRequest,
    GetVerificationsRequest, Verification, VerifyResult, atom_path,
};
use crate::names::{check_record, excerpt};
use crate::params::file::FileParams;
use crate::runtime::RuntimeContext;
use crate::util::error_chain;

/// Which of the matching atom versions to drill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// Every one.
    All,
    /// The N least recently verified (never verified first).
    Sample(usize),
}

/// What a verification run does.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifyOptions {
    /// Glob on `source/dataset/atom` choosing the atoms (`*`: all).
    pub pattern: String,
    /// All matching atom versions, or a sample.
    pub selection: Selection,
    /// Versions per atom to consider, newest first (0: all).
    pub num_versions: i64,
    /// Run `restic check` first.
    pub check_repository: bool,
    /// `--read-data-subset` for the check (`10%`, `1/5`, `500M`).
    pub read_data_subset: Option<String>,
    /// Largest share (percent) of compared live files that may differ
    /// from the backup before a file atom's drill fails.
    pub live_tolerance_percent: f64,
    /// Most bytes a drill's scratch directory may hold (`None`: the free
    /// space of `work_dir` less a reserve).
    pub scratch_budget: Option<u64>,
}

impl Default for VerifyOptions {
    fn default() -> VerifyOptions {
        VerifyOptions {
            pattern: "*".into(),
            selection: Selection::Sample(crate::config::DEFAULT_VERIFY_SAMPLE),
            num_versions: 1,
            check_repository: true,
            read_data_subset: None,
            live_tolerance_percent: 0.0,
            scratch_budget: None,
        }
    }
}

impl VerifyOptions {
    /// The options `verify:` of `agent.yml` gives.
    pub fn from_spec(spec: &crate::config::VerifySpec) -> VerifyOptions {
        VerifyOptions {
            pattern: spec.pattern.clone(),
            selection: spec.sample.map_or(Selection::All, Selection::Sample),
            num_versions: spec.num_versions,
            check_repository: spec.check,
            read_data_subset: spec.read_data_subset.clone(),
            live_tolerance_percent: spec.live_tolerance_percent,
            scratch_budget: spec.scratch_budget,
        }
    }
}

/// Results sent per `add_verifications` request: with errors of up to
/// 4 KiB each, 1000 stay well below a metadata server's default body limit
/// (16 MiB).
const RESULTS_PER_REQUEST: usize = 1000;

/// Datasets drilled at once: one restoring while another is compared.
/// Each has its own scratch directory, checked against the budget when
/// it starts.
const DATASETS_IN_FLIGHT: usize = 2;

/// How one drill ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrillOutcome {
    /// Restored and matching.
    Ok,
    /// Not restorable, or differing.
    Failed,
    /// Not drilled (no room for it, the source unknown here); not recorded.
    Skipped,
    /// Dry run: would be drilled.
    Planned,
}

impl DrillOutcome {
    /// Upper-case word for listings.
    pub fn word(self) -> &'static str {
        match self {
            DrillOutcome::Ok => "OK",
            DrillOutcome::Failed => "FAILED",
            DrillOutcome::Skipped => "SKIPPED",
            DrillOutcome::Planned => "WOULD VERIFY",
        }
    }
}

/// The drill of one atom version.
#[derive(Debug, Clone, PartialEq)]
pub struct Drill {
    /// Which atom version.
    pub version: AtomVersion,
    /// Its global path `source/dataset/atom`.
    pub atom_path: String,
    /// When its backup started.
    pub backup_time: DateTime<Utc>,
    /// The snapshot it was restored from.
    pub snapshot_id: String,
    /// How it ended.
    pub outcome: DrillOutcome,
    /// What was compared, or what differed or failed.
    pub detail: String,
    /// Bytes restored and compared.
    pub bytes: u64,
    /// When it finished.
    pub finished_at: DateTime<Utc>,
}

impl Drill {
    /// `source/dataset/atom` of backup `ID` (time), for messages.
    pub fn name(&self) -> String {
        format!(
            "{} version {} ({})",
            self.atom_path,
            self.version.backup_id,
            self.backup_time
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )
    }
}

/// How the repository check ended.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckOutcome {
    /// Whether restic found no damage.
    pub ok: bool,
    /// What it found (empty when ok).
    pub detail: String,
    /// How long it took, in seconds.
    pub seconds: f64,
}

/// What a verification run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VerifyReport {
    /// The repository check (`None`: not run).
    pub check: Option<CheckOutcome>,
    /// Every drill, in the order run.
    pub drills: Vec<Drill>,
    /// Why recording the results in the index failed, if it did.
    pub record_error: Option<String>,
    /// The metadata server the results are queued for, when they are
    /// safely in this host's outbox but not yet in the index (the server
    /// could not take them now; the agent or the next command delivers
    /// them).
    pub queued_for: Option<String>,
    /// Seconds the drills took (restores and comparisons).
    pub drill_seconds: f64,
}

impl VerifyReport {
    /// Whether everything was proven: the check (if run) found nothing,
    /// every drill ended ok and the results are in the index or safely
    /// queued for it.
    pub fn is_ok(&self) -> bool {
        self.check.as_ref().is_none_or(|c| c.ok)
            && self
                .drills
                .iter()
                .all(|d| matches!(d.outcome, DrillOutcome::Ok | DrillOutcome::Planned))
            && self.record_error.is_none()
    }

    /// Drills that ended this way.
    pub fn count(&self, outcome: DrillOutcome) -> usize {
        self.drills.iter().filter(|d| d.outcome == outcome).count()
    }

    /// Where the results of the drills that ran are, for the output:
    /// recorded in the index, or queued for delivery to the server (`None`
    /// when nothing was to be recorded, or recording failed: see
    /// [`VerifyReport::problems`]).
    pub fn recording(&self) -> Option<String> {
        let results = self.count(DrillOutcome::Ok) + self.count(DrillOutcome::Failed);
        if results == 0 || self.record_error.is_some() {
            return None;
        }
        Some(match &self.queued_for {
            Some(url) => format!(
                "{results} result(s) queued for delivery to {url} (not in the index yet): the agent, the next `tabacco backup` or `tabacco verify` delivers them"
            ),
            None => format!("{results} result(s) recorded in the index"),
        })
    }

    /// Bytes restored by the drills.
    pub fn bytes(&self) -> u64 {
        self.drills.iter().map(|d| d.bytes).sum()
    }

    /// One line per problem: the check's damage, each failed or skipped
    /// drill naming atom, version and what differed, the recording error.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(c) = self.check.as_ref().filter(|c| !c.ok) {
            out.push(format!("repository check: {}", c.detail));
        }
        for d in &self.drills {
            if matches!(d.outcome, DrillOutcome::Failed | DrillOutcome::Skipped) {
                out.push(format!(
                    "{} {}: {}",
                    d.outcome.word().to_lowercase(),
                    d.name(),
                    d.detail
                ));
            }
        }
        if let Some(e) = &self.record_error {
            out.push(format!("recording the results in the index: {e}"));
        }
        out
    }
}

/// Errors that stop a verification run as a whole.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The index could not be read.
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    /// Nothing of this host matches the pattern.
    #[error(
        "no backed up atom of host {host} matches '{pattern}' (see `tabacco query --host {host} '{pattern}'`)"
    )]
    NothingFound {
        /// This host.
        host: String,
        /// The pattern.
        pattern: String,
    },
}

/// One atom version picked for a drill, with what the index knows.
#[derive(Debug, Clone)]
struct Candidate {
    backup: usize,
    dataset: usize,
    atom: Atom,
    last: Option<DateTime<Utc>>,
}

/// Run a verification: pick (the plan: reads the index only), then check,
/// drill, record; a dry run lists the picked versions as
/// [`DrillOutcome::Planned`] drills and stops.
pub async fn run(
    rctx: &RuntimeContext,
    store: &dyn MetadataStore,
    opts: &VerifyOptions,
) -> Result<VerifyReport, VerifyError> {
    let host = rctx.hostname().to_string();
    let found = store
        .find_atoms(&FindRequest {
            pattern: opts.pattern.clone(),
            host: host.clone(),
            num_versions: opts.num_versions,
            older_than: None,
        })
        .await?;
    // The index is shared: a record that breaks the identifier rules is
    // refused, never followed (as a restore does).
    let backups: Vec<Backup> = found
        .into_iter()
        .map(|mut b| {
            let datasets = std::mem::take(&mut b.datasets);
            b.datasets = datasets
                .into_iter()
                .filter(|ds| match check_record(&b, ds) {
                    Ok(()) => true,
                    Err(e) => {
                        error!(backup = %excerpt(&b.id), dataset = %excerpt(&ds.id), "refusing an index record: {e}");
                        false
                    }
                })
                .collect();
            b
        })
        .filter(|b| !b.datasets.is_empty())
        .collect();
    let mut candidates = Vec::new();
    for (bi, b) in backups.iter().enumerate() {
        for (di, ds) in b.datasets.iter().enumerate() {
            for a in &ds.atoms {
                candidates.push(Candidate {
                    backup: bi,
                    dataset: di,
                    atom: a.clone(),
                    last: None,
                });
            }
        }
    }
    if candidates.is_empty() {
        return Err(VerifyError::NothingFound {
            host,
            pattern: opts.pattern.clone(),
        });
    }
    let version = |c: &Candidate| AtomVersion {
        backup_id: backups[c.backup].id.clone(),
        dataset_id: backups[c.backup].datasets[c.dataset].id.clone(),
        atom: c.atom.name.clone(),
    };
    let mut last: HashMap<AtomVersion, DateTime<Utc>> = HashMap::new();
    for chunk in candidates.chunks(MAX_VERIFICATIONS_PER_REQUEST) {
        let req = GetVerificationsRequest {
            versions: chunk.iter().map(version).collect(),
        };
        for v in store.get_verifications(&req).await? {
            last.insert(v.version(), v.verified_at);
        }
    }
    for c in &mut candidates {
        c.last = last.get(&version(c)).copied();
    }
    let picked = pick(candidates, opts.selection, |c| backups[c.backup].timestamp);

    // One restore per dataset, datasets in the order their first atom was
    // picked.
    let mut groups: Vec<((usize, usize), Vec<Atom>)> = Vec::new();
    for c in picked {
        match groups.iter_mut().find(|(k, _)| *k == (c.backup, c.dataset)) {
            Some((_, atoms)) => atoms.push(c.atom),
            None => groups.push(((c.backup, c.dataset), vec![c.atom])),
        }
    }
    let backups = &backups;
    rctx.plan_then_apply(
        (VerifyReport::default(), groups),
        |(mut report, groups)| {
            if opts.check_repository {
                info!(read_data_subset = ?opts.read_data_subset, "dry run: would check the repository");
            }
            for ((bi, di), atoms) in groups {
                let b = &backups[bi];
                let ds = &b.datasets[di];
                for a in &atoms {
                    report
                        .drills
                        .push(drill(b, ds, a, DrillOutcome::Planned, "dry run".into(), 0));
                }
            }
            report
        },
        |(mut report, groups)| async move {
            if opts.check_repository {
                report.check = Some(check(rctx, opts.read_data_subset.as_deref()).await);
            }
            let started = Instant::now();
            // Two datasets in flight: one restoring while the other's
            // restored bytes are compared (results in the order picked).
            let mut drills =
                futures::stream::iter(groups.into_iter().map(|((bi, di), atoms)| async move {
                    let b = &backups[bi];
                    drill_dataset(rctx, b, &b.datasets[di], &atoms, opts).await
                }))
                .buffered(DATASETS_IN_FLIGHT);
            while let Some(d) = drills.next().await {
                report.drills.extend(d);
            }
            report.drill_seconds = started.elapsed().as_secs_f64();
            match record(store, &host, &report.drills).await {
                Ok(queued_for) => report.queued_for = queued_for,
                Err(e) => report.record_error = Some(e),
            }
            Ok(report)
        },
    )
    .await
}

/// Order candidates never-verified first, then least recently verified,
/// ties newest backup first (then by name), and keep what `selection`
/// asks for.
fn pick(
    mut candidates: Vec<Candidate>,
    selection: Selection,
    backup_time: impl Fn(&Candidate) -> DateTime<Utc>,
) -> Vec<Candidate> {
    candidates.sort_by(|a, b| {
        a.last
            .cmp(&b.last)
            .then_with(|| backup_time(b).cmp(&backup_time(a)))
            .then_with(|| a.atom.name.cmp(&b.atom.name))
    });
    if let Selection::Sample(n) = selection {
        candidates.truncate(n);
    }
    candidates
}

/// Run the repository check.
async fn check(rctx: &RuntimeContext, read_data_subset: Option<&str>) -> CheckOutcome {
    let started = Instant::now();
    info!(read_data_subset = ?read_data_subset, "checking the repository");
    let result = rctx.repo().check(read_data_subset).await;
    let seconds = started.elapsed().as_secs_f64();
    match result {
        Ok(()) => {
            info!(seconds, "repository check found no damage");
            CheckOutcome {
                ok: true,
                detail: String::new(),
                seconds,
            }
        }
        Err(e) => {
            let detail = error_chain(&e);
            error!("repository check failed: {detail}");
            CheckOutcome {
                ok: false,
                detail,
                seconds,
            }
        }
    }
}

/// A drill result.
fn drill(
    b: &Backup,
    ds: &Dataset,
    a: &Atom,
    outcome: DrillOutcome,
    detail: String,
    bytes: u64,
) -> Drill {
    Drill {
        version: AtomVersion::of(b, ds, a),
        atom_path: atom_path(&ds.source, &ds.name, &a.name),
        backup_time: b.timestamp,
        snapshot_id: ds.snapshot_id.clone(),
        outcome,
        detail,
        bytes,
        finished_at: Utc::now(),
    }
}

/// What the backup recorded about an atom, to compare a restore with.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recorded {
    /// Where the atom sits in the snapshot (absolute).
    pub snapshot_path: Option<String>,
    /// Its bytes (pipe: streamed; file: total of its files).
    pub size: Option<i64>,
    /// A file atom's file count.
    pub files: Option<i64>,
    /// A pipe atom's SHA-256, lowercase hex.
    pub sha256: Option<String>,
    /// The handler type that made the snapshot (`file`, `pipe`).
    pub handler: Option<String>,
}

impl Recorded {
    /// What the index record of `atom` in `dataset` holds (records
    /// written before fingerprints were kept hold none of it).
    pub fn of(dataset: &Dataset, atom: &Atom) -> Recorded {
        Recorded {
            snapshot_path: atom.snapshot_path.clone(),
            size: atom.size,
            files: atom.files,
            sha256: atom.sha256.clone(),
            handler: dataset.handler.clone(),
        }
    }
}

/// The handler type of a dataset and where each atom sits in its
/// snapshot: from the record, else from this host's configuration of the
/// source.
fn locate(
    rctx: &RuntimeContext,
    ds: &Dataset,
    atoms: &[Atom],
) -> Result<(HandlerType, Vec<String>), String> {
    let recorded: Vec<Recorded> = atoms.iter().map(|a| Recorded::of(ds, a)).collect();
    let local = || -> Result<(HandlerType, crate::params::Params), String> {
        let source = rctx.find_source(&ds.source).ok_or_else(|| {
            format!(
                "source '{}' is not configured on this host and the index record does not say how it was backed up",
                ds.source
            )
        })?;
        let spec = rctx.handler_spec(&source.handler).ok_or_else(|| {
            format!(
                "source '{}': handler '{}' is not configured",
                ds.source, source.handler
            )
        })?;
        Ok((spec.kind, spec.params.merged_with(&source.params)))
    };
    let kind = match recorded.first().and_then(|r| r.handler.as_deref()) {
        Some("file") => HandlerType::File,
        Some("pipe") => HandlerType::Pipe,
        _ => local()?.0,
    };
    let mut paths = Vec::with_capacity(atoms.len());
    for (a, r) in atoms.iter().zip(&recorded) {
        if let Some(p) = &r.snapshot_path {
            paths.push(p.clone());
            continue;
        }
        paths.push(match kind {
            HandlerType::Pipe => format!("/{}", atom_path(&ds.source, &ds.name, &a.name)),
            HandlerType::File => {
                let (_, params) = local()?;
                let params = FileParams::from_params(&params).map_err(|e| {
                    format!(
                        "source '{}': {}",
                        ds.source,
                        e.iter()
                            .map(|(k, m)| format!("params.{k}: {m}"))
                            .collect::<Vec<_>>()
                            .join("; ")
                    )
                })?;
                FileHandler::new(params)
                    .atom_abs_path(a)
                    .to_string_lossy()
                    .into_owned()
            }
        });
    }
    Ok((kind, paths))
}

/// Drill the `atoms` of one dataset: restore them into a scratch
/// directory with one restic run (atom by atom when that fails, to name
/// the atoms that fail), compare, remove the scratch directory.
async fn drill_dataset(
    rctx: &RuntimeContext,
    b: &Backup,
    ds: &Dataset,
    atoms: &[Atom],
    opts: &VerifyOptions,
) -> Vec<Drill> {
    let all = |outcome, detail: String| -> Vec<Drill> {
        atoms
            .iter()
            .map(|a| drill(b, ds, a, outcome, detail.clone(), 0))
            .collect()
    };
    let (kind, mut paths) = match locate(rctx, ds, atoms) {
        Ok(x) => x,
        Err(e) => return all(DrillOutcome::Skipped, e),
    };
    // A single streamed atom without a recorded path: where this restic
    // stored it.
    if kind == HandlerType::Pipe
        && let [a] = atoms
        && Recorded::of(ds, a).snapshot_path.is_none()
    {
        match rctx
            .repo()
            .stream_path(&ds.snapshot_id, &atom_path(&ds.source, &ds.name, &a.name))
            .await
        {
            Ok(p) => paths[0] = p,
            Err(e) => warn!(
                "cannot look up where the stream of {} sits in snapshot {}: {}",
                a.name,
                ds.snapshot_id,
                error_chain(&e)
            ),
        }
    }
    let scratch = match SpoolDir::scratch(rctx.work_dir()) {
        Ok(s) => s,
        Err(e) => {
            return all(
                DrillOutcome::Skipped,
                format!(
                    "cannot create a scratch directory under {}: {e}",
                    rctx.work_dir().display()
                ),
            );
        }
    };
    let recorded: Vec<Recorded> = atoms.iter().map(|a| Recorded::of(ds, a)).collect();
    let need: u64 = if recorded.iter().all(|r| r.size.is_some()) {
        recorded.iter().filter_map(|r| r.size).sum::<i64>().max(0) as u64
    } else {
        ds.total_bytes.max(0) as u64
    };
    match Budget::for_dir(scratch.path(), opts.scratch_budget) {
        Ok(budget) if budget.fits(need).is_ok() => {}
        Ok(_) => {
            return all(
                DrillOutcome::Skipped,
                format!(
                    "the restore needs about {} ({need} bytes), more than the scratch directory {} may hold (verify scratch_budget, or the free space less a reserve): raise scratch_budget, free space, or move work_dir",
                    crate::util::bytes(need),
                    scratch.path().display()
                ),
            );
        }
        Err(e) => {
            return all(
                DrillOutcome::Skipped,
                format!(
                    "cannot read the free space of {}: {e}",
                    scratch.path().display()
                ),
            );
        }
    }
    let abs: Vec<PathBuf> = paths.iter().map(PathBuf::from).collect();
    info!(backup_id = %b.id, snapshot_id = %ds.snapshot_id, atoms = atoms.len(), scratch = %scratch.path().display(), "restore drill");
    let mut restore_errors: Vec<Option<String>> = vec![None; atoms.len()];
    // The listing (a repository open of its own) is read while restic
    // restores: the drill then costs about what the restore costs.
    let list = async {
        if kind == HandlerType::File {
            Some(rctx.repo().list(&ds.snapshot_id, &abs).await)
        } else {
            None
        }
    };
    let (restored, listing) = tokio::join!(
        rctx.repo()
            .restore(&ds.snapshot_id, &abs, scratch.path(), None),
        list
    );
    if let Err(e) = restored {
        let e = error_chain(&e);
        if atoms.len() == 1 {
            restore_errors[0] = Some(e);
        } else {
            warn!(
                "restore of {} atoms failed, restoring them one by one to tell which: {e}",
                atoms.len()
            );
            for (i, p) in abs.iter().enumerate() {
                if let Err(e) = rctx
                    .repo()
                    .restore(
                        &ds.snapshot_id,
                        std::slice::from_ref(p),
                        scratch.path(),
                        None,
                    )
                    .await
                {
                    restore_errors[i] = Some(error_chain(&e));
                }
            }
        }
    }
    // The comparisons read every restored byte (and the unchanged live
    // files): on a blocking thread, so that the next dataset's restore
    // goes on meanwhile.
    let (bc, dsc, atomsc) = (b.clone(), ds.clone(), atoms.to_vec());
    let target = scratch.path().to_path_buf();
    let tolerance = opts.live_tolerance_percent;
    let compared = tokio::task::spawn_blocking(move || {
        compare_all(
            &bc,
            &dsc,
            &atomsc,
            &recorded,
            &paths,
            &restore_errors,
            listing,
            &target,
            kind,
            tolerance,
        )
    })
    .await;
    drop(scratch);
    compared.unwrap_or_else(|e| all(DrillOutcome::Skipped, format!("the comparison failed: {e}")))
}

/// Compare each restored atom of a dataset (or report its restore error).
#[allow(clippy::too_many_arguments)]
fn compare_all(
    b: &Backup,
    ds: &Dataset,
    atoms: &[Atom],
    recorded: &[Recorded],
    paths: &[String],
    restore_errors: &[Option<String>],
    listing: Option<Result<Vec<crate::repository::SnapshotNode>, crate::repository::RepoError>>,
    target: &Path,
    kind: HandlerType,
    tolerance: f64,
) -> Vec<Drill> {
    let mut out = Vec::with_capacity(atoms.len());
    for (i, a) in atoms.iter().enumerate() {
        let d = if let Some(e) = &restore_errors[i] {
            drill(
                b,
                ds,
                a,
                DrillOutcome::Failed,
                format!("restore from snapshot {} failed: {e}", ds.snapshot_id),
                0,
            )
        } else {
            match kind {
                HandlerType::Pipe => compare_stream(b, ds, a, &recorded[i], target, &paths[i]),
                HandlerType::File => match &listing {
                    Some(Ok(nodes)) => {
                        compare_files(b, ds, a, &recorded[i], target, &paths[i], nodes, tolerance)
                    }
                    Some(Err(e)) => drill(
                        b,
                        ds,
                        a,
                        DrillOutcome::Failed,
                        format!(
                            "cannot list snapshot {}: {}",
                            ds.snapshot_id,
                            error_chain(e)
                        ),
                        0,
                    ),
                    None => unreachable!("listed whenever an atom restored"),
                },
            }
        };
        match d.outcome {
            DrillOutcome::Ok => {
                info!(atom = %d.atom_path, backup_id = %b.id, "verified: {}", d.detail)
            }
            _ => {
                error!(atom = %d.atom_path, backup_id = %b.id, "verification failed: {}", d.detail)
            }
        }
        out.push(d);
    }
    out
}

/// Compare a restored stream with its fingerprint.
fn compare_stream(
    b: &Backup,
    ds: &Dataset,
    a: &Atom,
    rec: &Recorded,
    target: &Path,
    snapshot_path: &str,
) -> Drill {
    let file = compare::restored_path(target, snapshot_path);
    let (sha, size) = match compare::fingerprint(&file) {
        Ok(x) => x,
        Err(e) => {
            return drill(
                b,
                ds,
                a,
                DrillOutcome::Failed,
                format!("cannot read the restored stream {}: {e}", file.display()),
                0,
            );
        }
    };
    let mut differs = Vec::new();
    if let Some(want) = rec.size
        && want != size as i64
    {
        differs.push(format!("size {size} bytes, recorded {want}"));
    }
    if let Some(want) = &rec.sha256
        && !want.eq_ignore_ascii_case(&sha)
    {
        differs.push(format!("SHA-256 {sha}, recorded {want}"));
    }
    if !differs.is_empty() {
        return drill(
            b,
            ds,
            a,
            DrillOutcome::Failed,
            format!(
                "the restored stream differs from its fingerprint: {}",
                differs.join("; ")
            ),
            size,
        );
    }
    let detail = if rec.sha256.is_some() {
        format!("stream of {size} bytes matches its SHA-256 {sha}")
    } else {
        format!(
            "stream of {size} bytes restored (SHA-256 {sha}); no fingerprint was recorded at backup to compare with"
        )
    };
    drill(b, ds, a, DrillOutcome::Ok, detail, size)
}

/// Compare a restored file atom with the snapshot's listing, the record
/// and the unchanged live files.
#[allow(clippy::too_many_arguments)]
fn compare_files(
    b: &Backup,
    ds: &Dataset,
    a: &Atom,
    rec: &Recorded,
    target: &Path,
    snapshot_path: &str,
    nodes: &[crate::repository::SnapshotNode],
    tolerance: f64,
) -> Drill {
    let root = snapshot_path.trim_end_matches('/');
    let mine: Vec<crate::repository::SnapshotNode> = nodes
        .iter()
        .filter(|n| {
            n.path == root
                || n.path
                    .strip_prefix(root)
                    .is_some_and(|r| r.starts_with('/'))
        })
        .cloned()
        .collect();
    if mine.is_empty() {
        return drill(
            b,
            ds,
            a,
            DrillOutcome::Failed,
            format!(
                "snapshot {} lists nothing at {snapshot_path}",
                ds.snapshot_id
            ),
            0,
        );
    }
    let r = compare::compare_tree(target, &mine, true);
    let mut problems = Vec::new();
    if !r.restore_mismatches.is_empty() {
        problems.push(format!(
            "{} entries restored unlike the snapshot lists them: {}",
            r.restore_mismatches.len(),
            compare::some(&r.restore_mismatches, 5)
        ));
    }
    if let Some(want) = rec.files
        && want != r.files as i64
    {
        problems.push(format!(
            "{} files listed, {want} recorded at backup",
            r.files
        ));
    }
    if let Some(want) = rec.size
        && want != r.bytes as i64
    {
        problems.push(format!(
            "{} bytes listed, {want} recorded at backup",
            r.bytes
        ));
    }
    let share = r.live_differing_percent();
    let live = if r.live_compared == 0 {
        "no live file unchanged since the backup to compare with".to_string()
    } else {
        format!(
            "{} of {} live files unchanged since the backup (same size and modification time) differ ({share:.1}%, tolerance {tolerance}%){}",
            r.live_differing.len(),
            r.live_compared,
            if r.live_differing.is_empty() {
                String::new()
            } else {
                format!(": {}", compare::some(&r.live_differing, 5))
            }
        )
    };
    if share > tolerance {
        problems.push(live.clone());
    }
    let unreadable = if r.live_unreadable.is_empty() {
        String::new()
    } else {
        format!(
            "; {} live files could not be read: {}",
            r.live_unreadable.len(),
            compare::some(&r.live_unreadable, 3)
        )
    };
    if problems.is_empty() {
        drill(
            b,
            ds,
            a,
            DrillOutcome::Ok,
            format!(
                "{} files, {} bytes restored as listed; {live}{unreadable}",
                r.files, r.bytes
            ),
            r.bytes,
        )
    } else {
        drill(
            b,
            ds,
            a,
            DrillOutcome::Failed,
            format!("{}{unreadable}", problems.join("; ")),
            r.bytes,
        )
    }
}

/// Record the results of the drills that ran (ok or failed) in the index;
/// `Some(url)` when some are only queued for the metadata server at `url`.
async fn record(
    store: &dyn MetadataStore,
    host: &str,
    drills: &[Drill],
) -> Result<Option<String>, String> {
    let results: Vec<Verification> = drills
        .iter()
        .filter_map(|d| {
            let result = match d.outcome {
                DrillOutcome::Ok => VerifyResult::Ok,
                DrillOutcome::Failed => VerifyResult::Failed,
                _ => return None,
            };
            Some(Verification {
                backup_id: d.version.backup_id.clone(),
                dataset_id: d.version.dataset_id.clone(),
                atom: d.version.atom.clone(),
                verified_at: d.finished_at,
                result,
                error: (result == VerifyResult::Failed).then(|| d.detail.clone()),
                last_ok: None,
            })
        })
        .collect();
    let mut queued_for = None;
    for chunk in results.chunks(RESULTS_PER_REQUEST) {
        let recording = store
            .add_verifications(&AddVerificationsRequest {
                host: host.to_string(),
                verifications: chunk.to_vec(),
            })
            .await
            .map_err(|e| e.to_string())?;
        if let Recording::Queued { url } = recording {
            queued_for = Some(url);
        }
    }
    if let Some(url) = &queued_for {
        warn!(url = %url, results = results.len(), "verification results queued in the outbox: the metadata server could not take them now");
    }
    Ok(queued_for)
}

/// What the index proves of one source's atoms on one host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Proven {
    /// Atoms (global paths) with versions in the index.
    pub atoms: usize,
    /// Those with no successful drill of any version.
    pub unverified: usize,
    /// The time by which every atom had a successful drill: the oldest of
    /// their newest ok drills (`None` while one was never proven).
    pub proven_by: Option<DateTime<Utc>>,
}

/// Read from the index what is proven of `source`'s atoms of `host`:
/// every version is considered, so a new backup does not make an atom
/// unproven until its next drill.
pub async fn proven(
    store: &dyn MetadataStore,
    host: &str,
    source: &str,
) -> Result<Proven, MetadataError> {
    let backups = store
        .find_atoms(&FindRequest {
            pattern: format!("{source}/*"),
            host: host.to_string(),
            num_versions: 0,
            older_than: None,
        })
        .await?;
    let verified = verifications_of(store, &backups).await?;
    let mut newest_ok: BTreeMap<String, Option<DateTime<Utc>>> = BTreeMap::new();
    for b in &backups {
        for ds in &b.datasets {
            for a in &ds.atoms {
                let key = AtomVersion::of(b, ds, a);
                let ok = verified.get(&key).and_then(|v| v.last_ok);
                let entry = newest_ok
                    .entry(atom_path(&ds.source, &ds.name, &a.name))
                    .or_default();
                *entry = (*entry).max(ok);
            }
        }
    }
    let unverified = newest_ok.values().filter(|t| t.is_none()).count();
    Ok(Proven {
        atoms: newest_ok.len(),
        unverified,
        proven_by: if unverified == 0 {
            newest_ok.values().flatten().min().copied()
        } else {
            None
        },
    })
}

/// The latest verification of each atom version of `backups`, by version
/// (for `query --json` and the pages).
pub async fn verifications_of(
    store: &dyn MetadataStore,
    backups: &[Backup],
) -> Result<BTreeMap<AtomVersion, Verification>, MetadataError> {
    let versions: Vec<AtomVersion> = backups
        .iter()
        .flat_map(|b| {
            b.datasets
                .iter()
                .flat_map(move |ds| ds.atoms.iter().map(move |a| AtomVersion::of(b, ds, a)))
        })
        .collect();
    let mut out = BTreeMap::new();
    for chunk in versions.chunks(MAX_VERIFICATIONS_PER_REQUEST) {
        for v in store
            .get_verifications(&GetVerificationsRequest {
                versions: chunk.to_vec(),
            })
            .await?
        {
            out.insert(v.version(), v);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(name: &str, backup: usize, last: Option<&str>) -> Candidate {
        Candidate {
            backup,
            dataset: 0,
            atom: Atom {
                name: name.into(),
                ..Default::default()
            },
            last: last.map(|t| t.parse().unwrap()),
        }
    }

    #[test]
    fn never_verified_first_then_least_recently_verified() {
        let times: Vec<DateTime<Utc>> = ["2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"]
            .iter()
            .map(|t| t.parse().unwrap())
            .collect();
        let c = vec![
            cand("recent", 1, Some("2026-02-03T00:00:00Z")),
            cand("old", 1, Some("2026-02-01T00:00:00Z")),
            cand("never-older-backup", 0, None),
            cand("never-newer-backup", 1, None),
        ];
        let names = |v: Vec<Candidate>| v.into_iter().map(|c| c.atom.name).collect::<Vec<_>>();
        let all = pick(c.clone(), Selection::All, |c| times[c.backup]);
        assert_eq!(
            names(all),
            ["never-newer-backup", "never-older-backup", "old", "recent"]
        );
        let two = pick(c, Selection::Sample(2), |c| times[c.backup]);
        assert_eq!(names(two), ["never-newer-backup", "never-older-backup"]);
    }

    /// A drill of atom `s/d/a` that ended `outcome`.
    fn drill(outcome: DrillOutcome, detail: &str) -> Drill {
        Drill {
            version: AtomVersion {
                backup_id: "b".into(),
                dataset_id: "d".into(),
                atom: "a".into(),
            },
            atom_path: "s/d/a".into(),
            backup_time: "2026-01-01T00:00:00Z".parse().unwrap(),
            snapshot_id: "x".into(),
            outcome,
            detail: detail.into(),
            bytes: 1,
            finished_at: Utc::now(),
        }
    }

    #[test]
    fn report_is_ok_only_when_everything_was_proven() {
        let d = |outcome| drill(outcome, "sha differs");
        let mut r = VerifyReport {
            drills: vec![d(DrillOutcome::Ok)],
            ..Default::default()
        };
        assert!(r.is_ok() && r.problems().is_empty());
        r.drills.push(d(DrillOutcome::Failed));
        assert!(!r.is_ok());
        assert_eq!(
            r.problems(),
            ["failed s/d/a version b (2026-01-01T00:00:00Z): sha differs"]
        );
        let r = VerifyReport {
            check: Some(CheckOutcome {
                ok: false,
                detail: "pack x damaged".into(),
                seconds: 1.0,
            }),
            ..Default::default()
        };
        assert!(!r.is_ok());
        assert_eq!(r.problems(), ["repository check: pack x damaged"]);
    }

    /// Results queued for the metadata server are neither a failure nor
    /// claimed as recorded: the report says where they are.
    #[test]
    fn the_report_says_whether_results_are_recorded_or_queued() {
        let d = |outcome| drill(outcome, "");
        let mut r = VerifyReport {
            drills: vec![d(DrillOutcome::Ok), d(DrillOutcome::Skipped)],
            ..Default::default()
        };
        assert_eq!(
            r.recording().as_deref(),
            Some("1 result(s) recorded in the index"),
            "a skipped drill records nothing"
        );
        r.drills.pop();
        r.queued_for = Some("http://metadb:7070".into());
        assert!(r.is_ok(), "safely queued is not a failure");
        let line = r.recording().unwrap();
        assert!(
            line.starts_with(
                "1 result(s) queued for delivery to http://metadb:7070 (not in the index yet)"
            ),
            "{line}"
        );
        r.record_error = Some("refused".into());
        assert_eq!(r.recording(), None, "a problem, not a recording");
        assert!(!r.is_ok());
        let planned = VerifyReport {
            drills: vec![d(DrillOutcome::Planned)],
            ..Default::default()
        };
        assert_eq!(planned.recording(), None);
    }
}

#[cfg(test)]
mod dry_run_tests {
    use std::sync::Arc;

    use super::*;
    use crate::metadata::sqlite::SqliteStore;
    use crate::runtime::tests::contexts;

    /// "A dry run does nothing", at the boundary between the pick (the
    /// plan) and the check, drills and recording (the apply).
    #[tokio::test]
    async fn verify_dry_run_picks_and_drills_nothing() {
        let c = contexts(&[(
            "s",
            "name: s\nhandler: pipe\ndatasets: [{name: d, atoms: [{name: a}]}]\n",
        )]);
        let store = Arc::new(SqliteStore::open(&c.path("index.db")).await.unwrap());
        let backup = Backup {
            id: format!("{:032x}", 1),
            timestamp: Utc::now(),
            host: "h1".into(),
            datasets: Vec::new(),
        };
        let atom = Atom {
            name: "a".into(),
            ..Default::default()
        };
        let dataset = Dataset {
            id: format!("{:032x}", 2),
            name: "d".into(),
            source: "s".into(),
            snapshot_id: "f".repeat(64),
            handler: Some("pipe".into()),
            atoms: vec![atom.clone()],
            ..Default::default()
        };
        store.add_dataset(&backup, &dataset).await.unwrap();
        let verified = || async {
            let req = GetVerificationsRequest {
                versions: vec![AtomVersion::of(&backup, &dataset, &atom)],
            };
            store.get_verifications(&req).await.unwrap().len()
        };
        let opts = VerifyOptions::default();

        let r = run(&c.dry, store.as_ref(), &opts).await.unwrap();
        assert_eq!(r.check, None);
        assert_eq!(r.count(DrillOutcome::Planned), 1);
        assert_eq!(r.drills[0].atom_path, "s/d/a");
        assert!(c.repo.calls().is_empty(), "{:?}", c.repo.calls());
        assert_eq!(verified().await, 0);

        // Applied: checked, drilled (the fake restores nothing: a failed
        // drill), recorded.
        let r = run(&c.real, store.as_ref(), &opts).await.unwrap();
        assert!(r.check.is_some());
        assert_eq!(r.count(DrillOutcome::Planned), 0);
        assert!(
            c.repo.writes().starts_with(&["check"]),
            "{:?}",
            c.repo.calls()
        );
        assert_eq!(verified().await, 1);
    }
}
