//! The `pipe` handler: each atom is a stream. `backup_command` writes the
//! atom's data to stdout, which restic stores as the file
//! `/<source>/<dataset>/<atom>` of the dataset's snapshot;
//! `restore_command` reads it back from stdin. Both get the atom's
//! identity in environment variables (never spliced into the command
//! text).
//!
//! A dataset of one atom streams straight into `restic backup --stdin`. A
//! dataset of several atoms (a database server, one atom per database) is
//! still one snapshot and one repository open: the dumps run
//! `parallel_dumps` at a time into the dataset's [`super::spool`],
//! then one `restic backup` stores the spool. A dump that fails loses its
//! atom only; the others are backed up and recorded.
//!
//! Restoring several atoms of one snapshot restores them with one `restic
//! restore` into a scratch directory (one repository open), then feeds
//! each file to `restore_command`; a single atom, or a scratch directory
//! that would not fit, streams each atom with `restic dump`.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use async_trait::async_trait;
use futures::StreamExt;

use super::spool::{self, Budget, SpoolDir};
use super::{AtomFailure, DatasetBackup, Handler, HandlerError, snapshot_meta};
use crate::config::HandlerType;
use crate::model::{Atom, Backup, Dataset, RunningJobStatus, atom_path};
use crate::params::pipe::PipeParams;
use crate::repository::{ProgressFn, RepoError};
use crate::runtime::RuntimeContext;

/// Backs up atoms produced by a command and restores them into another.
#[derive(Debug, Clone)]
pub struct PipeHandler {
    params: PipeParams,
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

/// Characters restic's `--include` takes as a pattern.
fn is_pattern_free(name: &str) -> bool {
    !name.contains(['*', '?', '[', ']', '\\'])
}

impl PipeHandler {
    /// A handler with these parameters.
    pub fn new(params: PipeParams) -> PipeHandler {
        PipeHandler { params }
    }

    /// Dump every atom into the dataset's spool, then back the spool up as
    /// one snapshot.
    async fn backup_spooled(
        &self,
        rctx: &RuntimeContext,
        backup: &Backup,
        dataset: &Dataset,
        progress: Option<ProgressFn>,
    ) -> Result<DatasetBackup, HandlerError> {
        let fail = |message: String| HandlerError::Dataset {
            dataset: dataset.name.clone(),
            message,
        };
        let root = spool::dataset_dir(rctx.work_dir(), &dataset.source, &dataset.name);
        let dir = SpoolDir::create(root.clone()).map_err(|e| {
            fail(format!(
                "cannot create the spool directory {}: {e}",
                root.display()
            ))
        })?;
        let rel = PathBuf::from(&dataset.source).join(&dataset.name);
        let budget = Budget::for_dir(dir.path(), self.params.spool_budget).map_err(|e| {
            fail(format!(
                "cannot read the free space of {}: {e}",
                root.display()
            ))
        })?;

        // The dump phase is the first half of the progress, restic's the
        // second.
        let total_atoms = dataset.atoms.len() as i64;
        let started = std::time::Instant::now();
        let bytes = AtomicU64::new(0);
        let done = AtomicI64::new(0);
        let report = |n: u64| {
            let bytes = bytes.fetch_add(n, Ordering::Relaxed) + n;
            if let Some(p) = &progress {
                let files_done = done.load(Ordering::Relaxed);
                p(&RunningJobStatus {
                    message_type: "status".into(),
                    seconds_elapsed: started.elapsed().as_secs() as i64,
                    percent_done: 0.5 * files_done as f64 / total_atoms as f64,
                    total_files: total_atoms,
                    files_done,
                    bytes_done: bytes as i64,
                    ..Default::default()
                });
            }
        };

        // Built in a loop rather than with `map`: a closure returning a
        // borrowing future trips the compiler's higher-ranked lifetime
        // check inside `async_trait`.
        let mut dumps = Vec::with_capacity(dataset.atoms.len());
        for atom in &dataset.atoms {
            let file = dir.path().join(&rel).join(&atom.name);
            let command = rctx.shell().command(
                &self.params.backup_command,
                &atom_env(backup, dataset, atom),
            );
            let (budget, report, done) = (&budget, &report, &done);
            let dump = async move {
                let result = async {
                    if let Some(parent) = file.parent() {
                        tokio::fs::create_dir_all(parent).await.map_err(|source| {
                            spool::SpoolError::Io {
                                context: format!("cannot create {}", parent.display()),
                                source,
                            }
                        })?;
                    }
                    spool::dump_to_file(&command, &file, budget, report).await
                }
                .await;
                done.fetch_add(1, Ordering::Relaxed);
                report(0);
                (atom, result)
            };
            dumps.push(dump);
        }
        let mut dumps = futures::stream::iter(dumps).buffer_unordered(self.params.parallel_dumps);
        let mut failed_atoms = Vec::new();
        let mut spooled = Vec::new();
        while let Some((atom, result)) = dumps.next().await {
            match result {
                Ok(tally) => {
                    tracing::debug!(atom = %atom.name, size = tally.bytes(), "dump spooled");
                    spooled.push(Atom {
                        snapshot_path: Some(format!(
                            "/{}",
                            atom_path(&dataset.source, &dataset.name, &atom.name)
                        )),
                        size: Some(tally.bytes() as i64),
                        sha256: Some(tally.sha256_hex()),
                        ..atom.clone()
                    });
                }
                Err(e) if e.is_atom_only() => {
                    let error = e.to_string();
                    tracing::error!(atom = %atom.name, "dump failed, the atom is left out: {error}");
                    failed_atoms.push(AtomFailure {
                        atom: atom.name.clone(),
                        error,
                    });
                }
                // The whole dataset fails: dropping the stream kills the
                // dumps still running, dropping `dir` removes the spool.
                Err(e) => return Err(fail(e.to_string())),
            }
        }
        drop(dumps);
        if spooled.is_empty() {
            let first = failed_atoms
                .first()
                .map(|f| format!(" (first: atom '{}': {})", f.atom, f.error))
                .unwrap_or_default();
            return Err(fail(format!(
                "every dump failed ({} atoms), nothing was backed up{first}",
                failed_atoms.len()
            )));
        }
        tracing::info!(
            atoms = spooled.len(),
            failed = failed_atoms.len(),
            bytes = budget.used(),
            "dumps spooled, backing up the spool"
        );
        let restic_progress: Option<ProgressFn> = progress.clone().map(|p| {
            Arc::new(move |st: &RunningJobStatus| {
                let mut st = st.clone();
                st.percent_done = 0.5 + 0.5 * st.percent_done;
                p(&st)
            }) as ProgressFn
        });
        // The record the snapshot carries lists only the atoms it holds,
        // with their sizes and digests (what the index will record, see
        // the manager), so that an index rebuilt from the repository has
        // the fingerprints verify compares against.
        spooled.sort_by(|a, b| a.name.cmp(&b.name));
        let held = Dataset {
            atoms: spooled.clone(),
            ..dataset.clone()
        };
        let meta = snapshot_meta(backup, &held);
        let snapshot = rctx
            .repo()
            .backup_relative(&meta, dir.path(), &[rel], restic_progress)
            .await?;
        drop(dir);
        Ok(DatasetBackup {
            snapshot,
            failed_atoms,
            atoms: spooled,
        })
    }

    /// Restore `dataset`'s atoms with one `restic restore` into a scratch
    /// directory, then feed each to `restore_command`. `Ok(false)` when
    /// the scratch directory would not fit (the caller streams instead).
    async fn restore_via_scratch(
        &self,
        rctx: &RuntimeContext,
        backup: &Backup,
        dataset: &Dataset,
        target: &Path,
        progress: Option<ProgressFn>,
    ) -> Result<bool, HandlerError> {
        let io = |context: String| {
            move |source| {
                HandlerError::Repo(RepoError::Io {
                    context: context.clone(),
                    source,
                })
            }
        };
        let scratch = SpoolDir::scratch(rctx.work_dir())
            .map_err(io("cannot create a restore scratch directory".into()))?;
        // The dataset's size bounds what its atoms need.
        let budget = Budget::for_dir(scratch.path(), self.params.spool_budget).map_err(io(
            format!("cannot read the free space of {}", scratch.path().display()),
        ))?;
        if let Err(e) = budget.fits(dataset.total_bytes.max(0) as u64) {
            tracing::info!("restoring atom by atom, the scratch directory would not fit: {e}");
            return Ok(false);
        }
        let paths: Vec<PathBuf> = dataset
            .atoms
            .iter()
            .map(|a| PathBuf::from("/").join(atom_path(&dataset.source, &dataset.name, &a.name)))
            .collect();
        rctx.repo()
            .restore(&dataset.snapshot_id, &paths, scratch.path(), progress)
            .await?;
        for (atom, path) in dataset.atoms.iter().zip(&paths) {
            let file = scratch.path().join(path.strip_prefix("/").unwrap_or(path));
            let input = std::fs::File::open(&file)
                .map_err(io(format!("cannot open the restored {}", file.display())))?;
            let mut env = atom_env(backup, dataset, atom);
            env.push(("TABACCO_TARGET".into(), target.display().to_string()));
            rctx.shell()
                .command(&self.params.restore_command, &env)
                .to_child()
                .stdin_fd(OwnedFd::from(input))
                .run()
                .await
                .map_err(|e| HandlerError::Repo(RepoError::Process(e)))?;
            let _ = std::fs::remove_file(&file);
        }
        Ok(true)
    }
}

#[async_trait]
impl Handler for PipeHandler {
    fn kind(&self) -> HandlerType {
        HandlerType::Pipe
    }

    async fn backup(
        &self,
        rctx: &RuntimeContext,
        backup: &Backup,
        dataset: &Dataset,
        progress: Option<ProgressFn>,
    ) -> Result<DatasetBackup, HandlerError> {
        match dataset.atoms.as_slice() {
            [] => Err(HandlerError::Dataset {
                dataset: dataset.name.clone(),
                message: "has no atoms: nothing to back up".into(),
            }),
            [atom] => {
                let producer = rctx.shell().command(
                    &self.params.backup_command,
                    &atom_env(backup, dataset, atom),
                );
                let file_name = atom_path(&dataset.source, &dataset.name, &atom.name);
                let meta = snapshot_meta(backup, dataset);
                let snapshot = rctx
                    .repo()
                    .stream_backup(&meta, producer, &file_name, progress)
                    .await?;
                let recorded = Atom {
                    snapshot_path: snapshot.stream.as_ref().map(|s| s.path.clone()),
                    size: snapshot.stream.as_ref().map(|s| s.bytes as i64),
                    sha256: snapshot.stream.as_ref().map(|s| s.sha256.clone()),
                    ..atom.clone()
                };
                Ok(DatasetBackup {
                    snapshot,
                    failed_atoms: Vec::new(),
                    atoms: vec![recorded],
                })
            }
            _ => self.backup_spooled(rctx, backup, dataset, progress).await,
        }
    }

    async fn restore(
        &self,
        rctx: &RuntimeContext,
        backup: &Backup,
        dataset: &Dataset,
        target: &Path,
        progress: Option<ProgressFn>,
    ) -> Result<(), HandlerError> {
        if dataset.atoms.len() > 1
            && dataset.atoms.iter().all(|a| is_pattern_free(&a.name))
            && self
                .restore_via_scratch(rctx, backup, dataset, target, progress.clone())
                .await?
        {
            return Ok(());
        }
        for atom in &dataset.atoms {
            let mut env = atom_env(backup, dataset, atom);
            env.push(("TABACCO_TARGET".into(), target.display().to_string()));
            let consumer = rctx.shell().command(&self.params.restore_command, &env);
            let file_name = atom_path(&dataset.source, &dataset.name, &atom.name);
            rctx.repo()
                .stream_restore(&dataset.snapshot_id, &file_name, consumer, progress.clone())
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn include_patterns_are_recognised() {
        assert!(is_pattern_free("site42/main"));
        assert!(!is_pattern_free("db*"));
        assert!(!is_pattern_free("a[1]"));
    }
}
