//! The `pipe` handler: each atom is a stream. `backup_command` writes the
//! atom's data to stdout, which restic stores as the single file
//! `/<source>/<dataset>/<atom>` of a snapshot; `restore_command` reads it
//! back from stdin. Both get the atom's identity in environment variables
//! (never spliced into the command text).

use std::path::Path;

use async_trait::async_trait;

use super::{Handler, HandlerError, snapshot_meta};
use crate::model::{Atom, Backup, Dataset, atom_path};
use crate::repository::{ProgressFn, SnapshotInfo};
use crate::runtime::RuntimeContext;

/// Backs up atoms produced by a command and restores them into another.
#[derive(Debug, Clone)]
pub struct PipeHandler {
    backup_command: String,
    restore_command: String,
}

/// Environment for a pipe command working on one atom.
pub fn atom_env(backup: &Backup, dataset: &Dataset, atom: &Atom) -> Vec<(String, String)> {
    vec![
        ("TABACCO_BACKUP_ID".into(), backup.id.clone()),
        ("TABACCO_HOST".into(), backup.host.clone()),
        ("TABACCO_SOURCE".into(), dataset.source.clone()),
        ("TABACCO_DATASET".into(), dataset.name.clone()),
        ("TABACCO_ATOM".into(), atom.name.clone()),
        (
            "TABACCO_ATOM_PATH".into(),
            atom_path(&dataset.source, &dataset.name, &atom.name),
        ),
    ]
}

impl PipeHandler {
    /// A handler running these commands.
    pub fn new(backup_command: String, restore_command: String) -> PipeHandler {
        PipeHandler {
            backup_command,
            restore_command,
        }
    }
}

#[async_trait]
impl Handler for PipeHandler {
    async fn backup(
        &self,
        rctx: &RuntimeContext,
        backup: &Backup,
        dataset: &Dataset,
        progress: Option<ProgressFn>,
    ) -> Result<SnapshotInfo, HandlerError> {
        let [atom] = dataset.atoms.as_slice() else {
            return Err(HandlerError::Dataset {
                dataset: dataset.name.clone(),
                message: format!(
                    "a pipe dataset holds exactly one atom for now, this one has {}",
                    dataset.atoms.len()
                ),
            });
        };
        let producer = rctx
            .shell()
            .command(&self.backup_command, &atom_env(backup, dataset, atom));
        let file_name = atom_path(&dataset.source, &dataset.name, &atom.name);
        let meta = snapshot_meta(backup, dataset);
        Ok(rctx
            .repo()
            .stream_backup(&meta, producer, &file_name, progress)
            .await?)
    }

    async fn restore(
        &self,
        rctx: &RuntimeContext,
        backup: &Backup,
        dataset: &Dataset,
        target: &Path,
    ) -> Result<(), HandlerError> {
        for atom in &dataset.atoms {
            let mut env = atom_env(backup, dataset, atom);
            env.push(("TABACCO_TARGET".into(), target.display().to_string()));
            let consumer = rctx.shell().command(&self.restore_command, &env);
            let file_name = atom_path(&dataset.source, &dataset.name, &atom.name);
            rctx.repo()
                .stream_restore(&dataset.snapshot_id, &file_name, consumer)
                .await?;
        }
        Ok(())
    }
}
