//! The `file` handler: each atom is a path below the source's root
//! directory (`params.path`); a dataset becomes one `restic backup` of the
//! atoms' absolute paths, and a restore puts files back at
//! `TARGET/<original absolute path>`.

use std::path::{Path, PathBuf};

use async_trait::async_trait;

use super::{DatasetBackup, Handler, HandlerError, snapshot_meta};
use crate::config::HandlerType;
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

/// Files (every entry that is not a directory) and bytes (of the regular
/// files) of the tree at `path`, symbolic links not followed.
pub fn tree_totals(path: &Path) -> std::io::Result<(i64, i64)> {
    let (mut files, mut bytes) = (0i64, 0i64);
    let mut pending = vec![path.to_path_buf()];
    while let Some(p) = pending.pop() {
        let meta = std::fs::symlink_metadata(&p)?;
        if meta.is_dir() {
            for entry in std::fs::read_dir(&p)? {
                pending.push(entry?.path());
            }
        } else {
            files += 1;
            if meta.is_file() {
                bytes = bytes.saturating_add(i64::try_from(meta.len()).unwrap_or(i64::MAX));
            }
        }
    }
    Ok((files, bytes))
}

#[async_trait]
impl Handler for FileHandler {
    fn kind(&self) -> HandlerType {
        HandlerType::File
    }

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
        // Each atom's file count and bytes, for the index (what a restore
        // of that atom alone will write). Taken before the backup: a tree
        // changing meanwhile may differ from the snapshot a little.
        let paths = self.paths(dataset);
        let mut atoms = Vec::with_capacity(dataset.atoms.len());
        for (atom, path) in dataset.atoms.iter().zip(&paths) {
            let walked = path.clone();
            let totals = tokio::task::spawn_blocking(move || tree_totals(&walked))
                .await
                .map_err(std::io::Error::other)
                .and_then(|r| r);
            let (files, size) = match totals {
                Ok((files, bytes)) => (Some(files), Some(bytes)),
                Err(e) => {
                    tracing::debug!(atom = %atom.name, "cannot measure {}: {e}", path.display());
                    (None, None)
                }
            };
            atoms.push(Atom {
                snapshot_path: Some(path.display().to_string()),
                size,
                files,
                ..atom.clone()
            });
        }
        // The record the snapshot carries has the atoms as measured, so
        // that an index rebuilt from the repository knows their sizes.
        let measured = Dataset {
            atoms: atoms.clone(),
            ..dataset.clone()
        };
        let meta = snapshot_meta(backup, &measured);
        let snapshot = rctx.repo().backup(&meta, &paths, progress).await?;
        Ok(DatasetBackup {
            snapshot,
            failed_atoms: Vec::new(),
            atoms,
        })
    }

    async fn restore(
        &self,
        rctx: &RuntimeContext,
        _backup: &Backup,
        dataset: &Dataset,
        target: &Path,
        progress: Option<ProgressFn>,
    ) -> Result<(), HandlerError> {
        Ok(rctx
            .repo()
            .restore(&dataset.snapshot_id, &self.paths(dataset), target, progress)
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
            ..Default::default()
        };
        assert_eq!(h.atom_abs_path(&a), PathBuf::from("/srv/data/user1"));
        let a = Atom {
            name: "user1".into(),
            path: "mail/u1".into(),
            ..Default::default()
        };
        assert_eq!(h.atom_abs_path(&a), PathBuf::from("/srv/data/mail/u1"));
    }

    #[test]
    fn tree_totals_count_files_and_their_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("t");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/one"), b"12345").unwrap();
        std::fs::write(root.join("a/b/two"), b"123").unwrap();
        std::os::unix::fs::symlink("/nonexistent", root.join("link")).unwrap();
        assert_eq!(tree_totals(&root).unwrap(), (3, 8));
        assert_eq!(tree_totals(&root.join("a/one")).unwrap(), (1, 5));
        assert!(tree_totals(&root.join("missing")).is_err());
    }
}
