//! Repositories hold the snapshots. The [`Repository`] trait is what
//! handlers use; [`restic`] is the one implementation, driving the `restic`
//! binary as a child process (argv, never a shell; secrets by environment
//! or file, never argv).

#[cfg(test)]
pub(crate) mod fake;
pub mod record;
pub mod restic;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

use crate::config::RepositorySpec;
use crate::model::RunningJobStatus;
use crate::process::ProcessError;
use crate::shell::ShellCommand;

/// Callback receiving progress while a backup or restore runs.
pub type ProgressFn = Arc<dyn Fn(&RunningJobStatus) + Send + Sync>;

/// What a snapshot is tagged with, so it can be found from the index and
/// the index rebuilt from the repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// Host name recorded in the snapshot (`--host`).
    pub host: String,
    /// Backup id (tag `backup_id=...`).
    pub backup_id: String,
    /// Dataset id (tag `dataset_id=...`).
    pub dataset_id: String,
    /// Source name (tag `source=...`).
    pub source: String,
    /// The index record the snapshot carries (JSON, see [`record`];
    /// empty: none).
    pub record: String,
}

impl SnapshotMeta {
    /// The snapshot's tags: `backup_id=`, `dataset_id=`, `source=` and the
    /// record's parts (see [`record::record_tags`]).
    pub fn tags(&self) -> Vec<String> {
        let mut tags = vec![
            format!("backup_id={}", self.backup_id),
            format!("dataset_id={}", self.dataset_id),
            format!("source={}", self.source),
        ];
        if !self.record.is_empty() {
            tags.extend(record::record_tags(&self.record));
        }
        tags
    }
}

/// What a finished backup produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SnapshotInfo {
    /// Full snapshot id (64 hex for restic).
    pub snapshot_id: String,
    /// Files in the snapshot.
    pub total_files: i64,
    /// Bytes in the snapshot.
    pub total_bytes: i64,
    /// Bytes added to the repository by this backup.
    pub bytes_added: i64,
    /// How long the backup took, in seconds.
    pub duration_secs: f64,
    /// For a stream backup: the stream as it went into the snapshot.
    pub stream: Option<StreamFacts>,
}

/// A stream as it went into a snapshot: where, how big, its digest
/// (counted on its way into the repository, not read again).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamFacts {
    /// Its absolute path inside the snapshot (restic 0.18.0 stores it
    /// under a flat name).
    pub path: String,
    /// Bytes streamed.
    pub bytes: u64,
    /// SHA-256 of the stream, lowercase hex.
    pub sha256: String,
}

/// One entry of a snapshot's listing (`restic ls --json`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotNode {
    /// Absolute path inside the snapshot.
    pub path: String,
    /// `file`, `dir`, `symlink`, ... as restic names it.
    pub kind: String,
    /// Size in bytes (files; 0 otherwise).
    pub size: u64,
    /// Modification time, as recorded at backup.
    pub mtime: Option<chrono::DateTime<chrono::Utc>>,
}

/// Errors from a repository.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// The configuration of the repository is wrong.
    #[error("repository '{name}': {message}")]
    Config {
        /// Repository name.
        name: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The password does not open the repository.
    #[error(
        "repository '{uri}': wrong password (restic: no key found for it); check the repository's `password` or `password_file`"
    )]
    WrongPassword {
        /// Repository URI.
        uri: String,
    },
    /// A child process failed (restic, or a producer/consumer command).
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// The producer of a stream backup failed; what became of the partial
    /// snapshot restic made of its output is in `partial`.
    #[error("backup command failed, {partial}: {error}")]
    ProducerFailed {
        /// How the producer failed.
        #[source]
        error: ProcessError,
        /// The partial snapshot: none, discarded, or left behind.
        partial: Box<PartialSnapshot>,
    },
    /// A restore completed but did not produce what was asked for.
    #[error(
        "restore of snapshot {snapshot_id} produced nothing for {missing:?} (not in the snapshot?)"
    )]
    NothingRestored {
        /// Snapshot restored from.
        snapshot_id: String,
        /// Paths that were asked for but are not in the target.
        missing: Vec<PathBuf>,
    },
    /// restic printed something we could not understand.
    #[error("unexpected output from {command}: {message}")]
    Protocol {
        /// Which command.
        command: String,
        /// What was wrong.
        message: String,
    },
    /// The repository does not exist (or its config file cannot be read).
    #[error(
        "repository '{uri}' not found; check the repository's `uri` (a backup creates it on first use): {stderr_tail}"
    )]
    NoRepository {
        /// Repository URI (credentials hidden).
        uri: String,
        /// What restic said.
        stderr_tail: String,
    },
    /// Another process holds a conflicting lock on the repository, and
    /// kept it for as long as we waited (stale locks were removed).
    #[error(
        "repository '{uri}' is locked {holder}; waited {waited} and removed stale locks (`restic unlock`), but this lock belongs to a live process or is younger than 30 minutes; retry later, or raise the repository's `lock_wait`"
    )]
    Locked {
        /// Repository URI (credentials hidden).
        uri: String,
        /// Who holds the lock, as restic describes it (or its stderr).
        holder: String,
        /// How long we waited for it, e.g. `10m 2s`.
        waited: String,
    },
    /// The repository cannot be used as it is: a creation that went wrong
    /// (two `restic init` at once on a remote backend, an interrupted
    /// creation). The message says what to do.
    #[error("repository '{uri}' is damaged: {message}")]
    Damaged {
        /// Repository URI (credentials hidden).
        uri: String,
        /// What is wrong and how to repair it.
        message: String,
    },
    /// The restic program is not installed.
    #[error(
        "restic not found (tried to run '{binary}'): install it (`apt-get install restic`) or set the repository's `restic_binary` parameter to its path"
    )]
    ResticNotFound {
        /// The program we tried to run.
        binary: String,
    },
    /// Some files could not be read; the partial snapshot is discarded (we
    /// never record partial data), or reported as left behind.
    #[error("backup incomplete, restic could not read {}; {partial}", items.join(", "))]
    Unreadable {
        /// The items restic could not read (or its stderr when it did not
        /// name them).
        items: Vec<String>,
        /// The partial snapshot: discarded, or left behind.
        partial: Box<PartialSnapshot>,
    },
    /// A stream backup received no data at all.
    #[error(
        "backup of '{stdin_filename}' received no data: the backup command succeeded but wrote nothing to its standard output (restic: snapshot is empty)"
    )]
    EmptyStream {
        /// The file name the stream was to be stored as.
        stdin_filename: String,
    },
    /// The file asked for is not in the snapshot.
    #[error("snapshot {snapshot_id} holds no file {path}")]
    NotInSnapshot {
        /// Snapshot asked for.
        snapshot_id: String,
        /// Path asked for.
        path: String,
    },
    /// `restic check` found damage in the repository.
    #[error(
        "repository '{uri}' is damaged: restic check found {}: {}; read restic's troubleshooting guide (https://restic.readthedocs.io/en/stable/077_troubleshooting.html) before repairing (`restic repair packs ID`, then a new backup)",
        if errors.len() == 1 { "1 error".to_string() } else { format!("{} errors", errors.len()) },
        errors.join("; ")
    )]
    CheckFailed {
        /// Repository URI (credentials hidden).
        uri: String,
        /// What restic reported, one item per line (bounded).
        errors: Vec<String>,
    },
    /// The caller asked for something the repository cannot do (relative
    /// paths, tags with commas, ...).
    #[error("invalid repository request: {message}")]
    BadRequest {
        /// What was wrong.
        message: String,
    },
    /// Local I/O around a restore (target directories and the like).
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// What became of the snapshot a failed backup made of partial data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartialSnapshot {
    /// No snapshot was made.
    None,
    /// It was forgotten: nothing of the failed backup is listed.
    Discarded {
        /// Its id.
        snapshot_id: String,
    },
    /// Forgetting it failed: it is still in the repository (not in the
    /// index), looking like a real snapshot until someone forgets it.
    LeftBehind {
        /// Its id.
        snapshot_id: String,
        /// Repository URI (credentials hidden), for the command to run.
        uri: String,
        /// Why forgetting it failed.
        error: String,
    },
}

impl std::fmt::Display for PartialSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PartialSnapshot::None => write!(f, "no snapshot was made"),
            PartialSnapshot::Discarded { snapshot_id } => {
                write!(f, "the partial snapshot {snapshot_id} was discarded")
            }
            PartialSnapshot::LeftBehind {
                snapshot_id,
                uri,
                error,
            } => write!(
                f,
                "the partial snapshot {snapshot_id} was LEFT BEHIND in the repository (forgetting it failed: {error}); it is not in the index; remove it with `restic -r {uri} forget {snapshot_id}`"
            ),
        }
    }
}

/// Whether [`Repository::create`] made the repository or found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Creation {
    /// This call created it.
    Created,
    /// It existed already (and opens with our password).
    Existing,
}

/// The interface to a repository of snapshots.
#[async_trait]
pub trait Repository: Send + Sync {
    /// Back up `paths` (absolute) into one snapshot tagged with `meta`.
    async fn backup(
        &self,
        meta: &SnapshotMeta,
        paths: &[PathBuf],
        progress: Option<ProgressFn>,
    ) -> Result<SnapshotInfo, RepoError>;

    /// Back up `paths`, relative to the directory `root` (absolute), into
    /// one snapshot tagged with `meta`: `root/a/b` is stored as `/a/b`.
    /// Every file is read again (no parent-snapshot shortcut), as the
    /// files are freshly written dumps.
    async fn backup_relative(
        &self,
        meta: &SnapshotMeta,
        root: &Path,
        paths: &[PathBuf],
        progress: Option<ProgressFn>,
    ) -> Result<SnapshotInfo, RepoError>;

    /// Back up the standard output of `producer` as the single file
    /// `/<stdin_filename>` of a snapshot. If the producer fails, the backup
    /// fails and no snapshot is left behind.
    async fn stream_backup(
        &self,
        meta: &SnapshotMeta,
        producer: ShellCommand,
        stdin_filename: &str,
        progress: Option<ProgressFn>,
    ) -> Result<SnapshotInfo, RepoError>;

    /// Restore the absolute `paths` of a snapshot under `target` (files land
    /// at `target/<path>`); fails if any of them was not restored.
    /// `progress` gets the bytes restored so far where the repository
    /// reports them (restic 0.17 and later).
    async fn restore(
        &self,
        snapshot_id: &str,
        paths: &[PathBuf],
        target: &Path,
        progress: Option<ProgressFn>,
    ) -> Result<(), RepoError>;

    /// The repository's identity (restic: the id in its config), read
    /// once and cached; `None` for a repository that has none.
    async fn id(&self) -> Result<Option<String>, RepoError> {
        Ok(None)
    }

    /// The repository's location for messages (credentials hidden).
    fn location(&self) -> String {
        String::new()
    }

    /// Create the repository if it does not exist yet, safely when many
    /// hosts try at once, and check that it opens with our password.
    async fn create(&self) -> Result<Creation, RepoError>;

    /// Stream the file `/<stdin_filename>` of a snapshot into the standard
    /// input of `consumer`; fails if either side fails. `progress` gets
    /// the bytes streamed so far (`bytes_done`), counted on the way.
    async fn stream_restore(
        &self,
        snapshot_id: &str,
        stdin_filename: &str,
        consumer: ShellCommand,
        progress: Option<ProgressFn>,
    ) -> Result<(), RepoError>;

    /// The absolute path inside snapshot `snapshot_id` where the stream
    /// backed up as `stdin_filename` sits (a restic version may have
    /// stored it under another name).
    async fn stream_path(
        &self,
        snapshot_id: &str,
        stdin_filename: &str,
    ) -> Result<String, RepoError> {
        let _ = snapshot_id;
        Ok(format!("/{stdin_filename}"))
    }

    /// Check the repository's structure, and with `read_data_subset`
    /// (restic's `--read-data-subset` syntax, e.g. `10%`, `1/5`) also read
    /// and verify that share of its data; [`RepoError::CheckFailed`] names
    /// the damage.
    async fn check(&self, read_data_subset: Option<&str>) -> Result<(), RepoError> {
        let _ = read_data_subset;
        Err(RepoError::BadRequest {
            message: "this repository type cannot be checked".into(),
        })
    }

    /// The entries of a snapshot at or below the absolute `paths` (every
    /// entry when empty), as recorded at backup.
    async fn list(
        &self,
        snapshot_id: &str,
        paths: &[PathBuf],
    ) -> Result<Vec<SnapshotNode>, RepoError> {
        let _ = (snapshot_id, paths);
        Err(RepoError::BadRequest {
            message: "this repository type cannot list snapshots".into(),
        })
    }

    /// Every snapshot (of `host` only, when given), in one repository
    /// open (retention and reconcile).
    async fn snapshots(&self, _host: Option<&str>) -> Result<Vec<record::RepoSnapshot>, RepoError> {
        Err(unsupported("listing snapshots"))
    }

    /// Forget these snapshots (full ids) in a few repository opens at most,
    /// under restic's exclusive lock (waited for like every command). The
    /// data stays until the next prune.
    async fn forget_ids(&self, _ids: &[String]) -> Result<(), RepoError> {
        Err(unsupported("forgetting snapshots"))
    }

    /// Remove the data no snapshot references (`restic prune`, under
    /// restic's exclusive lock: backups of other hosts wait for it).
    async fn prune(&self) -> Result<PruneReport, RepoError> {
        Err(unsupported("pruning"))
    }

    /// The version-dependent rules of `restic forget` (see
    /// [`crate::retention::Rules`]).
    async fn retention_rules(&self) -> Result<crate::retention::Rules, RepoError> {
        Ok(crate::retention::Rules::default())
    }
}

/// The error of an operation a repository does not implement.
fn unsupported(what: &str) -> RepoError {
    RepoError::BadRequest {
        message: format!("this repository does not support {what}"),
    }
}

/// What a prune did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PruneReport {
    /// restic's own summary lines (what was removed, what is left).
    pub summary: Vec<String>,
}

/// Build the repository described by the configuration; its child
/// processes run with this nice level and I/O class (0: unchanged).
pub fn from_spec(
    spec: &RepositorySpec,
    nice_level: i32,
    io_class: i32,
) -> Result<Arc<dyn Repository>, RepoError> {
    match spec.kind.as_str() {
        "restic" => Ok(Arc::new(restic::Restic::from_spec(
            spec, nice_level, io_class,
        )?)),
        other => Err(RepoError::Config {
            name: spec.name.clone(),
            message: format!("unknown repository type '{other}' (known: restic)"),
        }),
    }
}
