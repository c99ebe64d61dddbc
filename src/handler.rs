//! Handlers: how a class of datasets is backed up and restored. A handler
//! is built from its [`HandlerSpec`] and the source using it (the source's
//! `params` win over the handler's), and turns a dataset into repository
//! operations.
//!
//! - [`file`](mod@file): atoms are paths below the source's root directory.
//! - [`pipe`]: atoms are streams written by a `backup_command` and read
//!   back by a `restore_command`.

pub mod file;
pub mod pipe;
pub mod spool;

use std::path::Path;

use async_trait::async_trait;

use crate::config::{HandlerSpec, HandlerType, SourceSpec};
use crate::model::{Atom, Backup, Dataset};
use crate::repository::{ProgressFn, RepoError, SnapshotInfo, SnapshotMeta};
use crate::runtime::RuntimeContext;

/// Errors from a handler.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The handler's or source's parameters are wrong.
    #[error("handler '{handler}' for source '{source_name}': {message}")]
    Config {
        /// Handler name.
        handler: String,
        /// Source name.
        source_name: String,
        /// What is wrong.
        message: String,
    },
    /// The dataset cannot be handled as it is.
    #[error("dataset '{dataset}': {message}")]
    Dataset {
        /// Dataset name.
        dataset: String,
        /// What is wrong.
        message: String,
    },
    /// The repository failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
}

/// One atom of a dataset that could not be backed up, while the others
/// were.
#[derive(Debug, Clone, PartialEq)]
pub struct AtomFailure {
    /// Atom name.
    pub atom: String,
    /// What went wrong (command, exit status, stderr tail).
    pub error: String,
}

/// What a dataset's backup produced: the snapshot, and the atoms left out
/// of it because their own part failed (only handlers with independent
/// atoms, such as a multi-atom pipe dataset, report those).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DatasetBackup {
    /// The snapshot holding every atom not in `failed_atoms`.
    pub snapshot: SnapshotInfo,
    /// Atoms that are not in the snapshot.
    pub failed_atoms: Vec<AtomFailure>,
    /// The atoms in the snapshot as they are to be recorded: with what
    /// the handler learned of each (its path in the snapshot, size, file
    /// count, digest). Empty: the dataset's atoms less `failed_atoms`, as
    /// given.
    pub atoms: Vec<Atom>,
}

/// Backs up and restores one class of datasets.
#[async_trait]
pub trait Handler: Send + Sync {
    /// The handler's type (recorded with each dataset).
    fn kind(&self) -> HandlerType;

    /// Back up a dataset (with its atoms resolved) as one snapshot.
    async fn backup(
        &self,
        rctx: &RuntimeContext,
        backup: &Backup,
        dataset: &Dataset,
        progress: Option<ProgressFn>,
    ) -> Result<DatasetBackup, HandlerError>;

    /// Restore the atoms listed in `dataset` (a subset of those backed up)
    /// from its snapshot, under `target`.
    /// `progress` gets the bytes restored so far, where they are known.
    async fn restore(
        &self,
        rctx: &RuntimeContext,
        backup: &Backup,
        dataset: &Dataset,
        target: &Path,
        progress: Option<ProgressFn>,
    ) -> Result<(), HandlerError>;
}

/// Build the handler for a source.
pub fn for_source(
    spec: &HandlerSpec,
    source: &SourceSpec,
) -> Result<Box<dyn Handler>, HandlerError> {
    let params = spec.params.merged_with(&source.params);
    let config_error = |errors: Vec<(&str, String)>| HandlerError::Config {
        handler: spec.name.clone(),
        source_name: source.name.clone(),
        message: errors
            .iter()
            .map(|(key, message)| format!("params.{key}: {message}"))
            .collect::<Vec<_>>()
            .join("; "),
    };
    Ok(match spec.kind {
        HandlerType::File => Box::new(file::FileHandler::new(
            crate::params::file::FileParams::from_params(&params).map_err(config_error)?,
        )),
        HandlerType::Pipe => Box::new(pipe::PipeHandler::new(
            crate::params::pipe::PipeParams::from_params(&params).map_err(config_error)?,
        )),
    })
}

/// How a snapshot of this dataset is tagged.
pub fn snapshot_meta(backup: &Backup, dataset: &Dataset) -> SnapshotMeta {
    SnapshotMeta {
        host: backup.host.clone(),
        backup_id: backup.id.clone(),
        dataset_id: dataset.id.clone(),
        source: dataset.source.clone(),
        record: crate::repository::record::record_json(backup, dataset),
    }
}
