//! Wire types shared by the agent, the metadata store and its HTTP API.
//!
//! Field names follow the original Go implementation's JSON exactly, so
//! existing clients and servers interoperate: `Backup`, `Dataset`, `Atom`,
//! `FindRequest`, `JobStatus`, `RunningJobStatus` and
//! `UpdateActiveJobStatusRequest`. Fields added since (the per-source state
//! in [`SourceReport`], dataset names, the outbox backlog) are optional and
//! left out when unset, so Go peers and older agents still interoperate.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One run of a backup on one host. Backups are started autonomously by
/// hosts, so each belongs to exactly one host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Backup {
    /// Unique identifier of the run.
    pub id: String,
    /// When the run started.
    pub timestamp: DateTime<Utc>,
    /// Host that ran it.
    pub host: String,
    /// Datasets backed up by this run (in query results: only those that
    /// hold matching atoms).
    #[serde(default)]
    pub datasets: Vec<Dataset>,
}

/// A group of atoms backed up together as one repository snapshot.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Dataset {
    /// Unique identifier.
    pub id: String,
    /// Dataset name, unique within its source.
    #[serde(default)]
    pub name: String,
    /// Name of the source that created this dataset, so that a restore
    /// knows which handler to use.
    pub source: String,
    /// Atoms in this dataset.
    #[serde(default)]
    pub atoms: Vec<Atom>,
    /// Repository snapshot id (for restic: the full 64-hex id).
    #[serde(default)]
    pub snapshot_id: String,
    /// Number of files in the snapshot.
    #[serde(default, deserialize_with = "integer")]
    pub total_files: i64,
    /// Number of bytes in the snapshot.
    #[serde(default, deserialize_with = "integer")]
    pub total_bytes: i64,
    /// Number of bytes this backup added to the repository.
    #[serde(default, deserialize_with = "integer")]
    pub bytes_added: i64,
    /// Duration of the backup, in seconds.
    #[serde(default, deserialize_with = "integer")]
    pub duration: i64,
    /// Type of the handler that made the snapshot (`file`, `pipe`), so a
    /// host without the source in its configuration knows how to restore
    /// it (absent: a record written before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
    /// Identity of the repository holding the snapshot (restic: the
    /// repository id from its config), so a restore from another
    /// repository is refused by name (absent: not known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository_id: Option<String>,
}

/// The smallest independently restorable piece of data.
///
/// Atoms are identified by their global path `source/dataset/atom`.
///
/// The fields after `path` are what a restore needs without the backing
/// up host's configuration; records written before they were kept lack
/// them (a restore then falls back to the local configuration).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Atom {
    /// Atom name (path-like, relative to its dataset).
    pub name: String,
    /// For the `file` handler: path relative to the source's root.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// Absolute path of the atom inside the snapshot: for a file atom the
    /// absolute path that was backed up, for a pipe atom the file its
    /// stream was stored as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_path: Option<String>,
    /// Bytes of the atom: a pipe atom's bytes streamed, a file atom's
    /// total bytes of its files.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "optional_integer"
    )]
    pub size: Option<i64>,
    /// A file atom's number of files.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "optional_integer"
    )]
    pub files: Option<i64>,
    /// A pipe atom's SHA-256 of its stream, lowercase hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// The metadata server's HTTP API: its paths, written once for the
/// server's router, the client and the pages that link to them.
pub mod api {
    /// `POST`: record one dataset of a backup ([`super::AddDatasetRequest`]).
    pub const ADD_DATASET: &str = "/api/add_dataset";
    /// `POST`: find atoms ([`super::FindRequest`]).
    pub const FIND_ATOMS: &str = "/api/find_atoms";
    /// `POST`: a host's running jobs and sources
    /// ([`super::UpdateActiveJobStatusRequest`]).
    pub const UPDATE_ACTIVE_JOB_STATUS: &str = "/api/update_active_job_status";
    /// `POST`: record restore drill results
    /// ([`super::AddVerificationsRequest`]).
    pub const ADD_VERIFICATIONS: &str = "/api/add_verifications";
    /// `POST`: restore drill results of atom versions
    /// ([`super::GetVerificationsRequest`]).
    pub const GET_VERIFICATIONS: &str = "/api/get_verifications";
    /// `POST`: remove a host's dataset records
    /// ([`super::RemoveDatasetsRequest`]).
    pub const REMOVE_DATASETS: &str = "/api/remove_datasets";
    /// `GET`: every host's state.
    pub const HOSTS: &str = "/api/hosts";
    /// `GET`: the OpenAPI document.
    pub const OPENAPI: &str = "/api/openapi.json";
    /// `GET`: health check (probes a write).
    pub const HEALTHZ: &str = "/healthz";
    /// `GET`: Prometheus metrics.
    pub const METRICS: &str = "/metrics";
}

/// Body of `POST /api/add_dataset`: `{"backup": ..., "dataset": ...}`.
/// The backup's own `datasets` list is sent empty (the server ignores it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AddDatasetRequest {
    /// The backup the dataset belongs to (its `datasets` list is ignored).
    pub backup: Backup,
    /// The dataset to record.
    pub dataset: Dataset,
}

impl AddDatasetRequest {
    /// The request for `dataset` of `backup`.
    pub fn new(backup: &Backup, dataset: &Dataset) -> AddDatasetRequest {
        AddDatasetRequest {
            backup: Backup {
                datasets: Vec::new(),
                ..backup.clone()
            },
            dataset: dataset.clone(),
        }
    }
}

/// A recorded size as shown (`2.00 KiB (3 files)`), if the size is known.
pub fn size_text(size: Option<i64>, files: Option<i64>) -> Option<String> {
    let size = crate::util::bytes(size?);
    Some(match files {
        Some(1) => format!("{size} (1 file)"),
        Some(f) => format!("{size} ({f} files)"),
        None => size,
    })
}

/// An atom's size as shown (query table, dry-run plan, web pages): its
/// own when recorded (with its file count), else its dataset's (a record
/// written before atoms had sizes), marked so.
pub fn atom_size_text(ds: &Dataset, a: &Atom) -> String {
    size_text(a.size, a.files)
        .unwrap_or_else(|| format!("{} (dataset)", crate::util::bytes(ds.total_bytes)))
}

/// One dataset record of the index, by its keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DatasetRef {
    /// The backup it belongs to.
    pub backup_id: String,
    /// The dataset's id.
    pub dataset_id: String,
}

/// Remove dataset records of one host from the index (retention and
/// reconcile: the record goes before its snapshot is forgotten). A host
/// removes only its own records; records of other hosts named here are
/// left alone. A backup left without datasets goes too.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RemoveDatasetsRequest {
    /// The host whose records these are.
    pub host: String,
    /// The records to remove (absent ones are not an error).
    #[serde(default)]
    pub datasets: Vec<DatasetRef>,
}

/// The answer to a [`RemoveDatasetsRequest`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RemoveDatasetsResponse {
    /// How many of the named records existed and were removed.
    #[serde(default, deserialize_with = "integer")]
    pub removed: i64,
}

/// Global path of an atom: `source/dataset/atom`.
pub fn atom_path(source: &str, dataset: &str, atom: &str) -> String {
    format!("{source}/{dataset}/{atom}")
}

/// Search criteria for atoms.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FindRequest {
    /// Shell glob matched against the global atom path
    /// (`source/dataset/atom`). `*` also matches `/`.
    pub pattern: String,
    /// Only atoms backed up by this host (empty: any host).
    #[serde(default)]
    pub host: String,
    /// Keep only the newest N versions of each atom (0: all versions).
    #[serde(default, deserialize_with = "integer")]
    pub num_versions: i64,
    /// Only versions backed up strictly before this time. Go clients send
    /// the zero time (`0001-01-01T00:00:00Z`) for "unset": exactly that
    /// instant is read as `None`; any other time is kept (and a store
    /// refuses one outside the years 1 to 9999).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "zero_time_is_none"
    )]
    pub older_than: Option<DateTime<Utc>>,
}

/// Go's zero `time.Time`, `0001-01-01T00:00:00Z`, in Unix seconds.
const GO_ZERO_TIME_SECS: i64 = -62_135_596_800;

/// An `i64` written as a JSON integer or as a number with no fractional
/// part (`3.0`): JSON Schema (and so the OpenAPI document) counts both as
/// integers, and some JSON encoders write whole floats that way.
fn integer<'de, D>(d: D) -> Result<i64, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Integer;
    impl serde::de::Visitor<'_> for Integer {
        type Value = i64;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a whole number (64-bit signed)")
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<i64, E> {
            Ok(v)
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<i64, E> {
            i64::try_from(v).map_err(|_| E::custom(format!("{v} is larger than a 64-bit integer")))
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<i64, E> {
            // i64::MAX as f64 rounds up to 2^63, which is out of range.
            if v.fract() == 0.0 && v >= i64::MIN as f64 && v < i64::MAX as f64 {
                Ok(v as i64)
            } else {
                Err(E::custom(format!(
                    "{v} is not a whole number in the 64-bit range"
                )))
            }
        }
    }
    d.deserialize_any(Integer)
}

/// An optional [`integer`] (`null` or absent: `None`).
fn optional_integer<'de, D>(d: D) -> Result<Option<i64>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    struct Int(#[serde(deserialize_with = "integer")] i64);
    Ok(Option::<Int>::deserialize(d)?.map(|i| i.0))
}

fn zero_time_is_none<'de, D>(d: D) -> Result<Option<DateTime<Utc>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let t: Option<DateTime<Utc>> = Option::deserialize(d)?;
    Ok(t.filter(|t| t.timestamp() != GO_ZERO_TIME_SECS || t.timestamp_subsec_nanos() != 0))
}

/// Progress of a running backup, as reported by restic's `--json` status
/// messages (the seed's `RunningJobStatus`). Absent fields are zero.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunningJobStatus {
    /// Always `status` for progress messages.
    #[serde(default)]
    pub message_type: String,
    /// Seconds since the backup started.
    #[serde(default, deserialize_with = "integer")]
    pub seconds_elapsed: i64,
    /// Estimated seconds left.
    #[serde(default, deserialize_with = "integer")]
    pub seconds_remaining: i64,
    /// Fraction done, 0.0 to 1.0.
    #[serde(default)]
    pub percent_done: f64,
    /// Files found so far.
    #[serde(default, deserialize_with = "integer")]
    pub total_files: i64,
    /// Files processed so far.
    #[serde(default, deserialize_with = "integer")]
    pub files_done: i64,
    /// Bytes found so far.
    #[serde(default, deserialize_with = "integer")]
    pub total_bytes: i64,
    /// Bytes processed so far.
    #[serde(default, deserialize_with = "integer")]
    pub bytes_done: i64,
    /// Files that could not be read.
    #[serde(default, deserialize_with = "integer")]
    pub error_count: i64,
    /// Files being read right now.
    #[serde(default)]
    pub current_files: Vec<String>,
}

/// A backup job that is currently running on a host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobStatus {
    /// Host running the job.
    pub host: String,
    /// Job identifier, unique on the host.
    pub job_id: String,
    /// Backup the job belongs to.
    pub backup_id: String,
    /// Dataset being backed up.
    pub dataset_id: String,
    /// Source of the dataset.
    pub dataset_source: String,
    /// Progress, if the repository reported any yet.
    #[serde(default)]
    pub status: Option<RunningJobStatus>,
    /// Name of the dataset (`dataset_id` is an opaque id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset_name: Option<String>,
    /// `running`, or `pending` for a dataset of the job that has not
    /// started yet (absent: `running`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

/// The periodic report of a host's running jobs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UpdateActiveJobStatusRequest {
    /// Reporting host (host names are unique in a fleet).
    pub host: String,
    /// Jobs running on the host right now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub active_jobs: Vec<JobStatus>,
    /// The state of every configured source (absent: an agent that does
    /// not report it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sources: Option<Vec<SourceReport>>,
    /// Records (dataset records, verification results) waiting in the
    /// agent's outbox for delivery to the metadata server.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "optional_integer"
    )]
    pub outbox_pending: Option<i64>,
    /// Records (dataset records, verification results) the server refused
    /// for good, kept aside in the agent's `outbox/rejected/`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "optional_integer"
    )]
    pub outbox_rejected: Option<i64>,
    /// How often the agent reports, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_interval_seconds: Option<f64>,
    /// When the agent prunes the repository (its `prune_schedule`; absent:
    /// it never prunes, or an agent that does not report it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune_schedule: Option<String>,
    /// How its last prune ended (absent: none since it started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_prune: Option<MaintenanceRun>,
    /// restic's id of the repository it backs up into (absent: not known
    /// yet, before its first backup, or an agent that does not report it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository_id: Option<String>,
}

/// How a run of a source ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunResult {
    /// Every dataset was backed up and recorded in the index.
    Ok,
    /// Some datasets were recorded, others failed: not a success.
    Partial,
    /// Nothing was recorded, or the source failed as a whole (a hook,
    /// `datasets_command`, the timeout).
    Error,
    /// Not run: the source was locked by a backup still running.
    Skipped,
    /// Stopped by the agent's shutdown before it finished: not a success,
    /// whatever it recorded.
    Cancelled,
}

impl RunResult {
    /// Every result, in the order above (also the metrics labels).
    pub const ALL: [RunResult; 5] = [
        RunResult::Ok,
        RunResult::Partial,
        RunResult::Error,
        RunResult::Skipped,
        RunResult::Cancelled,
    ];

    /// The lowercase name (`ok`, `partial`, `error`, `skipped`,
    /// `cancelled`), also the metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            RunResult::Ok => "ok",
            RunResult::Partial => "partial",
            RunResult::Error => "error",
            RunResult::Skipped => "skipped",
            RunResult::Cancelled => "cancelled",
        }
    }

    /// Whether the run counts as a success: only when every dataset was
    /// recorded.
    pub fn is_success(self) -> bool {
        self == RunResult::Ok
    }

    /// Whether the run means the source needs attention (`partial`,
    /// `error`); skipped and cancelled runs are not failures of the
    /// source by themselves.
    pub fn is_failure(self) -> bool {
        matches!(self, RunResult::Partial | RunResult::Error)
    }
}

/// The last run of a source, as reported by its agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// How it ended.
    pub result: RunResult,
    /// When it ended (for a skipped run: when it was due).
    pub finished_at: DateTime<Utc>,
    /// How long it ran, in seconds.
    #[serde(default)]
    pub duration_seconds: f64,
    /// The backup id, if the backup started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_id: Option<String>,
    /// The agent's job id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// What went wrong (every failed dataset, or the source's error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Datasets recorded in the index.
    #[serde(default, deserialize_with = "integer")]
    pub datasets_recorded: i64,
    /// Datasets that failed (or were not started).
    #[serde(default, deserialize_with = "integer")]
    pub datasets_failed: i64,
    /// Atoms of the failed datasets (those whose atoms were known).
    #[serde(default, deserialize_with = "integer")]
    pub atoms_failed: i64,
}

impl RunReport {
    /// A run that ended `result` at `finished_at`, with nothing else known
    /// yet (no backup, no job, no counts).
    pub fn new(result: RunResult, finished_at: DateTime<Utc>) -> RunReport {
        RunReport {
            result,
            finished_at,
            duration_seconds: 0.0,
            backup_id: None,
            job_id: None,
            error: None,
            datasets_recorded: 0,
            datasets_failed: 0,
            atoms_failed: 0,
        }
    }

    /// What failed, for the pages: `2 of 5 datasets (7 atoms)`, or `0`.
    pub fn failed_text(&self) -> String {
        if self.datasets_failed > 0 {
            format!(
                "{} of {} datasets ({} atoms)",
                self.datasets_failed,
                self.datasets_failed + self.datasets_recorded,
                self.atoms_failed
            )
        } else {
            "0".to_string()
        }
    }
}

/// How a forget, prune or reconcile run by an agent ended (its page and
/// the metadata server's show the last of each; a failure stays visible
/// until the next run succeeds).
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
    /// A run that ended now.
    pub fn now(ok: bool, summary: String) -> MaintenanceRun {
        MaintenanceRun {
            finished_at: Utc::now(),
            ok,
            summary,
        }
    }
}

/// The state of one source of a host, as reported by its agent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceReport {
    /// Source name.
    pub name: String,
    /// Schedule as written (absent: on demand only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// Next scheduled run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run: Option<DateTime<Utc>>,
    /// The last run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<RunReport>,
    /// The last run in which every dataset was recorded (or, read from the
    /// index at start, the newest time by which every configured dataset
    /// had been recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success: Option<DateTime<Utc>>,
    /// Whether a run is going on now.
    #[serde(default)]
    pub running: bool,
    /// The last application of the source's retention policy (absent: none
    /// yet, the source has no policy, or an agent that does not report
    /// it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_forget: Option<MaintenanceRun>,
}

/// One version of one atom: the atom `atom` of dataset `dataset_id` of
/// backup `backup_id` (what a verification is about).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AtomVersion {
    /// The backup holding it.
    pub backup_id: String,
    /// The dataset (id) holding it.
    pub dataset_id: String,
    /// The atom's name within its dataset.
    pub atom: String,
}

impl AtomVersion {
    /// The version of atom `atom` of dataset `ds` in backup `b`.
    pub fn of(b: &Backup, ds: &Dataset, atom: &Atom) -> AtomVersion {
        AtomVersion {
            backup_id: b.id.clone(),
            dataset_id: ds.id.clone(),
            atom: atom.name.clone(),
        }
    }
}

/// How a restore drill of one atom version ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifyResult {
    /// Restored, and it matched what was recorded at backup time.
    Ok,
    /// Not restorable, or it differs from what was recorded.
    Failed,
}

impl VerifyResult {
    /// The lowercase name (`ok`, `failed`), also the metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            VerifyResult::Ok => "ok",
            VerifyResult::Failed => "failed",
        }
    }
}

/// The latest restore drill of one atom version, as the index keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Verification {
    /// The backup holding the atom version drilled.
    pub backup_id: String,
    /// Its dataset (id).
    pub dataset_id: String,
    /// The atom's name within that dataset.
    pub atom: String,
    /// When the drill finished.
    pub verified_at: DateTime<Utc>,
    /// How it ended.
    pub result: VerifyResult,
    /// What differed or failed (absent when it matched).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The last drill of this version that ended `ok` (kept by the index
    /// across later failures; ignored when sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ok: Option<DateTime<Utc>>,
}

impl Verification {
    /// The atom version this is about.
    pub fn version(&self) -> AtomVersion {
        AtomVersion {
            backup_id: self.backup_id.clone(),
            dataset_id: self.dataset_id.clone(),
            atom: self.atom.clone(),
        }
    }
}

/// Body of `POST /api/add_verifications`: a host records the results of its
/// restore drills (only of its own backups).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AddVerificationsRequest {
    /// The host that ran the drills and whose backups they drilled.
    pub host: String,
    /// One result per atom version.
    pub verifications: Vec<Verification>,
}

/// Body of `POST /api/get_verifications`: the latest drill of each of
/// these atom versions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GetVerificationsRequest {
    /// The atom versions asked about (those never drilled are left out of
    /// the answer).
    pub versions: Vec<AtomVersion>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_json_uses_seed_field_names() {
        let b = Backup {
            id: "b1".into(),
            timestamp: "2026-01-02T03:04:05Z".parse().unwrap(),
            host: "h".into(),
            datasets: vec![Dataset {
                id: "d1".into(),
                name: "ds".into(),
                source: "src".into(),
                atoms: vec![Atom {
                    name: "a".into(),
                    path: String::new(),
                    ..Default::default()
                }],
                snapshot_id: "s".into(),
                total_files: 1,
                total_bytes: 2,
                bytes_added: 3,
                duration: 4,
                ..Default::default()
            }],
        };
        let v = serde_json::to_value(&b).unwrap();
        assert_eq!(v["timestamp"], "2026-01-02T03:04:05Z");
        let ds = &v["datasets"][0];
        for k in [
            "id",
            "name",
            "source",
            "atoms",
            "snapshot_id",
            "total_files",
            "total_bytes",
            "bytes_added",
            "duration",
        ] {
            assert!(ds.get(k).is_some(), "missing {k}");
        }
        assert!(
            ds["atoms"][0].get("path").is_none(),
            "empty path is omitted"
        );
        let back: Backup = serde_json::from_value(v).unwrap();
        assert_eq!(back, b);
    }

    #[test]
    fn restore_record_fields_are_optional_and_left_out_when_unset() {
        // A record written before them (a Go client, an older agent).
        let old: Dataset =
            serde_json::from_str(r#"{"id":"d","source":"s","atoms":[{"name":"a"}]}"#).unwrap();
        assert_eq!((&old.handler, &old.repository_id), (&None, &None));
        assert_eq!(
            old.atoms[0],
            Atom {
                name: "a".into(),
                ..Default::default()
            }
        );
        let v = serde_json::to_value(&old).unwrap();
        for k in ["handler", "repository_id"] {
            assert!(v.get(k).is_none(), "{k}");
        }
        assert_eq!(v["atoms"][0], serde_json::json!({"name": "a"}));
        let new: Dataset = serde_json::from_str(
            r#"{"id":"d","source":"s","handler":"pipe","repository_id":"r",
                "atoms":[{"name":"a","snapshot_path":"/s/d/a","size":5.0,"files":1,"sha256":"ab"}]}"#,
        )
        .unwrap();
        assert_eq!(new.handler.as_deref(), Some("pipe"));
        assert_eq!(new.atoms[0].size, Some(5));
        assert_eq!(
            serde_json::from_value::<Dataset>(serde_json::to_value(&new).unwrap()).unwrap(),
            new
        );
    }

    #[test]
    fn integers_may_be_written_as_whole_floats() {
        let r: FindRequest = serde_json::from_str(r#"{"pattern":"x","num_versions":3.0}"#).unwrap();
        assert_eq!(r.num_versions, 3);
        for bad in ["3.5", "1e300", "9223372036854775808", "\"3\""] {
            let e = serde_json::from_str::<FindRequest>(&format!(
                r#"{{"pattern":"x","num_versions":{bad}}}"#
            ))
            .unwrap_err();
            assert!(
                e.to_string().contains("whole number") || e.to_string().contains("larger"),
                "{bad}: {e}"
            );
        }
        // The status report's counters too (schemathesis sends them so).
        let r: UpdateActiveJobStatusRequest = serde_json::from_str(
            r#"{"host":"h","outbox_pending":426490801.0,"outbox_rejected":null,
                "sources":[{"name":"s","last_run":{"result":"ok","finished_at":"2026-01-01T00:00:00Z","atoms_failed":2.0}}]}"#,
        )
        .unwrap();
        assert_eq!(
            (r.outbox_pending, r.outbox_rejected),
            (Some(426490801), None)
        );
        let sources = r.sources.unwrap_or_default();
        assert_eq!(
            sources[0].last_run.as_ref().map(|l| l.atoms_failed),
            Some(2)
        );
        // Floats parse back exactly (serde_json's float_roundtrip), so a
        // report with a tiny duration is stored, not refused.
        let text = r#"{"result":"ok","finished_at":"2026-01-01T00:00:00Z","duration_seconds":8.923298092665196e-299}"#;
        let run: RunReport = serde_json::from_str(text).unwrap();
        let again: RunReport = serde_json::from_str(&serde_json::to_string(&run).unwrap()).unwrap();
        assert_eq!(run, again);
    }

    #[test]
    fn find_request_accepts_go_style_json() {
        let r: FindRequest = serde_json::from_str(
            r#"{"pattern":"a/*","host":"","num_versions":2,"older_than":"2026-01-01T00:00:00.5+01:00"}"#,
        )
        .unwrap();
        assert_eq!(r.num_versions, 2);
        assert_eq!(
            r.older_than.unwrap().to_rfc3339(),
            "2025-12-31T23:00:00.500+00:00"
        );
        let r: FindRequest = serde_json::from_str(r#"{"pattern":"x"}"#).unwrap();
        assert!(r.older_than.is_none());
        let r: FindRequest =
            serde_json::from_str(r#"{"pattern":"x","older_than":"0001-01-01T00:00:00Z"}"#).unwrap();
        assert_eq!(r.host, "");
        assert!(r.older_than.is_none());
        // Only the zero instant means "unset" (issue 10): later times of
        // year 1 are kept, earlier ones too (and refused by the stores).
        for t in [
            "0001-01-02T00:00:00Z",
            "0001-01-01T00:00:01Z",
            "0000-06-01T00:00:00Z",
        ] {
            let r: FindRequest =
                serde_json::from_str(&format!(r#"{{"pattern":"x","older_than":"{t}"}}"#)).unwrap();
            assert!(r.older_than.is_some(), "{t}");
        }
    }
}
