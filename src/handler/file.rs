//! The `file` handler: each atom is a path below the source's root
//! directory (`params.path`); a dataset becomes one `restic backup` of the
//! atoms' absolute paths, and a restore puts files back at
//! `TARGET/<original absolute path>`.

use std::path::{Path, PathBuf};

use async_trait::async_trait;

use super::{DatasetBackup, Handler, HandlerError, snapshot_meta};
use crate::model::{Atom, Backup, Dataset};
use crate::names::check_atom_path;
use crate::params::file::FileParams;
use crate::repository::ProgressFn;
use crate::runtime::RuntimeContext;

/// Backs up atoms that are files or directories below a root.
#[derive(Debug, Clone)]
pub struct FileHandler {
    root: PathBuf,
}

impl FileHandler {
    /// A handler for atoms below the root of `params`.
    pub fn new(params: FileParams) -> FileHandler {
        FileHandler { root: params.root }
    }

    /// Absolute path of an atom: the root joined with the atom's `path`,
    /// or its name when it has none.
    pub fn atom_abs_path(&self, atom: &Atom) -> PathBuf {
        let rel = if atom.path.is_empty() {
            &atom.name
        } else {
            &atom.path
        };
        self.root.join(rel.trim_start_matches('/'))
    }

    fn paths(&self, dataset: &Dataset) -> Vec<PathBuf> {
        dataset
            .atoms
            .iter()
            .map(|a| self.atom_abs_path(a))
            .collect()
    }
}

#[async_trait]
impl Handler for FileHandler {
    async fn backup(
        &self,
        rctx: &RuntimeContext,
        backup: &Backup,
        dataset: &Dataset,
        progress: Option<ProgressFn>,
    ) -> Result<DatasetBackup, HandlerError> {
        // Atom paths may come from a datasets_command: keep them below the
        // root. restic only warns about a missing path and exits 0: check
        // that each exists first.
        for atom in &dataset.atoms {
            if !atom.path.is_empty()
                && let Err(e) = check_atom_path(&atom.path)
            {
                return Err(HandlerError::Dataset {
                    dataset: dataset.name.clone(),
                    message: format!("atom '{}': {e}", atom.name),
                });
            }
            let path = self.atom_abs_path(atom);
            if let Err(e) = tokio::fs::symlink_metadata(&path).await {
                return Err(HandlerError::Dataset {
                    dataset: dataset.name.clone(),
                    message: format!(
                        "atom '{}': cannot access {}: {e}",
                        atom.name,
                        path.display()
                    ),
                });
            }
        }
        let meta = snapshot_meta(backup, dataset);
        Ok(rctx
            .repo()
            .backup(&meta, &self.paths(dataset), progress)
            .await?
            .into())
    }

    async fn restore(
        &self,
        rctx: &RuntimeContext,
        _backup: &Backup,
        dataset: &Dataset,
        target: &Path,
    ) -> Result<(), HandlerError> {
        Ok(rctx
            .repo()
            .restore(&dataset.snapshot_id, &self.paths(dataset), target)
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atom_path_defaults_to_name_below_root() {
        let h = FileHandler::new(FileParams {
            root: "/srv/data".into(),
        });
        let a = Atom {
            name: "user1".into(),
            path: String::new(),
        };
        assert_eq!(h.atom_abs_path(&a), PathBuf::from("/srv/data/user1"));
        let a = Atom {
            name: "user1".into(),
            path: "mail/u1".into(),
        };
        assert_eq!(h.atom_abs_path(&a), PathBuf::from("/srv/data/mail/u1"));
    }
}
