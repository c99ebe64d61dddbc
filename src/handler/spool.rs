//! The spool: where the dumps of a multi-atom pipe dataset wait for the one
//! `restic backup` that stores them all, and where a restore of several
//! atoms of one snapshot lands before each goes to its `restore_command`.
//!
//! restic reads one stream per run (`--stdin`) and stores FIFOs as
//! metadata only, so many atoms in one snapshot need real files. The
//! spool of a dataset is `WORK_DIR/spool/<source>/<dataset>/`, holding
//! `<source>/<dataset>/<atom>` below it; restic runs in that directory and
//! stores the relative path `<source>/<dataset>` as `/<source>/<dataset>`,
//! the very layout a single-atom stream backup gives. The path is stable
//! from run to run, so restic groups the snapshots of one dataset together.
//!
//! Bounded and clean:
//! - every byte a dump writes passes through tabacco (a fixed buffer, so
//!   memory stays flat) and is counted against a [`Budget`]: the
//!   `spool_budget` parameter, and never more than the free space of the
//!   file system minus a reserve ([`reserve`]); a dataset over budget
//!   fails before the disk fills;
//! - a [`SpoolDir`] removes its directory when dropped: after a run, on
//!   failure, on timeout and on cancellation; the leftovers of a killed
//!   run are removed when the source is next backed up
//!   ([`clear_source`], called with the source's lock held);
//! - restore scratch directories carry the PID of their process, and the
//!   next restore removes those whose process is gone
//!   ([`clear_stale_scratch`]).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use futures::future::Either;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::process::{ProcessError, Tally};
use crate::shell::ShellCommand;

/// Directory below `work_dir` holding the backup spools, one per source.
pub const SPOOL_DIR: &str = "spool";

/// Directory below `work_dir` holding restore scratch directories.
pub const SCRATCH_DIR: &str = "restore-scratch";

/// Size of the buffer a dump's output is copied through.
const COPY_BUFFER: usize = 256 * 1024;

/// The spool of all datasets of a source.
pub fn source_dir(work_dir: &Path, source: &str) -> PathBuf {
    work_dir.join(SPOOL_DIR).join(source)
}

/// The spool of one dataset (restic's working directory for it).
pub fn dataset_dir(work_dir: &Path, source: &str, dataset: &str) -> PathBuf {
    source_dir(work_dir, source).join(dataset)
}

/// Remove a directory tree; a missing one is fine.
pub fn remove_tree(dir: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Remove what killed runs left in a source's spool. Call only while
/// holding the source's lock (no backup of it is running).
pub fn clear_source(work_dir: &Path, source: &str) -> io::Result<()> {
    remove_tree(&source_dir(work_dir, source))
}

/// Remove restore scratch directories whose process is gone (named
/// `<pid>-<id>`; see [`SpoolDir::scratch`]).
pub fn clear_stale_scratch(work_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(work_dir.join(SCRATCH_DIR)) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.split('-').next())
            .and_then(|p| p.parse::<i32>().ok());
        let alive = pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
        if !alive {
            match remove_tree(&entry.path()) {
                Ok(()) => tracing::info!(
                    dir = %entry.path().display(),
                    "removed the restore scratch directory of a process that is gone"
                ),
                Err(e) => tracing::warn!(
                    dir = %entry.path().display(),
                    "cannot remove a stale restore scratch directory: {e}"
                ),
            }
        }
    }
}

/// A spool or scratch directory, removed with everything in it when
/// dropped.
#[derive(Debug)]
pub struct SpoolDir {
    path: PathBuf,
}

impl SpoolDir {
    /// Create `path` (and its parents), removing whatever was there.
    pub fn create(path: PathBuf) -> io::Result<SpoolDir> {
        remove_tree(&path)?;
        std::fs::create_dir_all(&path)?;
        Ok(SpoolDir { path })
    }

    /// A fresh restore scratch directory below `work_dir`, named after this
    /// process so that [`clear_stale_scratch`] can tell when it is stale.
    pub fn scratch(work_dir: &Path) -> io::Result<SpoolDir> {
        clear_stale_scratch(work_dir);
        let name = format!("{}-{}", std::process::id(), uuid::Uuid::now_v7().simple());
        SpoolDir::create(work_dir.join(SCRATCH_DIR).join(name))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SpoolDir {
    fn drop(&mut self) {
        if let Err(e) = remove_tree(&self.path) {
            tracing::warn!(dir = %self.path.display(), "cannot remove the spool directory: {e}");
        }
    }
}

/// How much free space the spool leaves on its file system: 5% of the
/// file system's size, at most 1 GiB.
pub fn reserve(fs_size: u64) -> u64 {
    (fs_size / 20).min(1 << 30)
}

/// Free and total bytes of the file system holding `dir`.
pub fn disk_space(dir: &Path) -> io::Result<(u64, u64)> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(io::Error::from)?;
    let frag = st.fragment_size() as u64;
    Ok((
        (st.blocks_available() as u64).saturating_mul(frag),
        (st.blocks() as u64).saturating_mul(frag),
    ))
}

/// Why a [`Budget`] has the limit it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The `spool_budget` parameter.
    Configured,
    /// The free space of the file system, less the reserve.
    FreeSpace,
}

/// Bytes a spool may hold.
#[derive(Debug)]
pub struct Budget {
    limit: u64,
    kind: Limit,
    dir: PathBuf,
    used: AtomicU64,
}

/// A spool ran out of its budget.
#[derive(Debug, thiserror::Error)]
#[error("{}", self.describe())]
pub struct OverBudget {
    limit: u64,
    kind: Limit,
    dir: PathBuf,
}

impl OverBudget {
    fn describe(&self) -> String {
        let limit = format!("{}, {} bytes", crate::util::bytes(self.limit), self.limit);
        match self.kind {
            Limit::Configured => format!(
                "the dumps need more than spool_budget ({limit}) in {}: raise params.spool_budget, or split the dataset",
                self.dir.display()
            ),
            Limit::FreeSpace => format!(
                "the dumps need more than the {limit} free in {} (a reserve of 5% of the file system, at most 1 GiB, stays free): free space, or move work_dir",
                self.dir.display()
            ),
        }
    }
}

impl Budget {
    /// The budget for a spool in `dir`: `configured` bytes, or less when
    /// the file system has less free space than that (minus the reserve).
    pub fn for_dir(dir: &Path, configured: Option<u64>) -> io::Result<Budget> {
        let (free, size) = disk_space(dir)?;
        let available = free.saturating_sub(reserve(size));
        let (limit, kind) = match configured {
            Some(c) if c <= available => (c, Limit::Configured),
            _ => (available, Limit::FreeSpace),
        };
        Ok(Budget::new(limit, kind, dir))
    }

    /// A budget of `limit` bytes.
    pub fn new(limit: u64, kind: Limit, dir: &Path) -> Budget {
        Budget {
            limit,
            kind,
            dir: dir.to_path_buf(),
            used: AtomicU64::new(0),
        }
    }

    /// Account for `n` more bytes.
    pub fn take(&self, n: u64) -> Result<(), OverBudget> {
        let used = self.used.fetch_add(n, Ordering::Relaxed) + n;
        if used > self.limit {
            return Err(self.over());
        }
        Ok(())
    }

    /// Whether `n` bytes fit in what is left.
    pub fn fits(&self, n: u64) -> Result<(), OverBudget> {
        if self.used().saturating_add(n) > self.limit {
            return Err(self.over());
        }
        Ok(())
    }

    fn over(&self) -> OverBudget {
        OverBudget {
            limit: self.limit,
            kind: self.kind,
            dir: self.dir.clone(),
        }
    }

    /// Bytes accounted for so far.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }
}

/// Why spooling one dump failed.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The dump command failed: this atom alone is lost.
    #[error(transparent)]
    Command(#[from] ProcessError),
    /// The spool is full: the whole dataset fails.
    #[error(transparent)]
    OverBudget(#[from] OverBudget),
    /// Writing the spool failed: the whole dataset fails.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl SpoolError {
    /// Whether only the atom is lost (the other dumps may go on).
    pub fn is_atom_only(&self) -> bool {
        matches!(self, SpoolError::Command(_))
    }
}

/// Run `command` with its standard output written to the new file `file`,
/// counting every byte against `budget` and telling `on_bytes`. Returns
/// the dump's size and SHA-256, taken on its way into the file. On
/// failure the file is removed; dropping the future kills the command.
pub async fn dump_to_file(
    command: &ShellCommand,
    file: &Path,
    budget: &Budget,
    on_bytes: &(dyn Fn(u64) + Send + Sync),
) -> Result<Tally, SpoolError> {
    let result = dump_to_file_inner(command, file, budget, on_bytes).await;
    if result.is_err() {
        let _ = std::fs::remove_file(file);
    }
    result
}

async fn dump_to_file_inner(
    command: &ShellCommand,
    file: &Path,
    budget: &Budget,
    on_bytes: &(dyn Fn(u64) + Send + Sync),
) -> Result<Tally, SpoolError> {
    let io_error = |context: String| move |source| SpoolError::Io { context, source };
    let mut out = tokio::fs::File::create(file)
        .await
        .map_err(io_error(format!(
            "cannot create the spool file {}",
            file.display()
        )))?;
    let (read_end, write_end) =
        crate::process::pipe().map_err(io_error("cannot create a pipe for a dump".into()))?;
    let copy = async {
        let mut input = tokio::net::unix::pipe::Receiver::from_owned_fd(read_end)
            .map_err(io_error("cannot read a dump's output".into()))?;
        let mut buf = vec![0u8; COPY_BUFFER];
        let mut total = Tally::default();
        loop {
            let n = input
                .read(&mut buf)
                .await
                .map_err(io_error("cannot read a dump's output".into()))?;
            if n == 0 {
                break;
            }
            budget.take(n as u64)?;
            out.write_all(&buf[..n]).await.map_err(io_error(format!(
                "cannot write the spool file {}",
                file.display()
            )))?;
            total.update(&buf[..n]);
            on_bytes(n as u64);
        }
        out.flush().await.map_err(io_error(format!(
            "cannot write the spool file {}",
            file.display()
        )))?;
        Ok::<Tally, SpoolError>(total)
    };
    let child = command.to_child().stdout_fd(write_end).status();
    let (child, copy) = (Box::pin(child), Box::pin(copy));
    match futures::future::select(child, copy).await {
        Either::Left((status, copy)) => {
            let status = status?;
            // The command is done; its output may still be in the pipe.
            let total = copy.await?;
            status.into_result()?;
            Ok(total)
        }
        Either::Right((copied, child)) => match copied {
            // EOF before the command exited (it closed its stdout).
            Ok(total) => {
                child.await?.into_result()?;
                Ok(total)
            }
            // Dropping the child's future kills its process group.
            Err(e) => Err(e),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shell::Shell;

    fn unlimited(dir: &Path) -> Budget {
        Budget::new(u64::MAX, Limit::Configured, dir)
    }

    #[tokio::test]
    async fn a_dump_lands_in_its_file_and_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a");
        let budget = unlimited(dir.path());
        let seen = AtomicU64::new(0);
        let cmd = Shell::new(0, 0).command("head -c 1000000 /dev/zero; echo end", &[]);
        let tally = dump_to_file(&cmd, &file, &budget, &|b| {
            seen.fetch_add(b, Ordering::Relaxed);
        })
        .await
        .unwrap();
        let expected = {
            let mut t = Tally::default();
            t.update(&vec![0u8; 1_000_000]);
            t.update(b"end\n");
            t.sha256_hex()
        };
        assert_eq!(tally.sha256_hex(), expected);
        let n = tally.bytes();
        assert_eq!(n, 1_000_004);
        assert_eq!(std::fs::metadata(&file).unwrap().len(), n);
        assert_eq!(seen.load(Ordering::Relaxed), n);
        assert_eq!(budget.used(), n);
    }

    #[tokio::test]
    async fn a_failing_dump_is_an_atom_error_and_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a");
        let cmd = Shell::new(0, 0).command("echo partial; echo 'no such db' >&2; exit 4", &[]);
        let e = dump_to_file(&cmd, &file, &unlimited(dir.path()), &|_| {})
            .await
            .unwrap_err();
        assert!(e.is_atom_only());
        let text = e.to_string();
        assert!(
            text.contains("exit status 4") && text.contains("no such db"),
            "{text}"
        );
        assert!(!file.exists());
    }

    #[tokio::test]
    async fn over_budget_kills_the_dump_and_fails_the_dataset() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a");
        let pid_file = dir.path().join("pid");
        let budget = Budget::new(100_000, Limit::Configured, dir.path());
        let script = format!("echo $$ > {}; exec cat /dev/zero", pid_file.display());
        let cmd = Shell::new(0, 0).command(&script, &[]);
        let e = dump_to_file(&cmd, &file, &budget, &|_| {})
            .await
            .unwrap_err();
        assert!(!e.is_atom_only());
        assert!(e.to_string().contains("spool_budget"), "{e}");
        assert!(!file.exists());
        let pid = crate::process::tests::read_pid(&pid_file).await;
        assert!(
            crate::process::tests::wait_gone(pid).await,
            "the dump survived"
        );
    }

    #[test]
    fn budget_is_capped_by_free_space() {
        let dir = tempfile::tempdir().unwrap();
        let (free, size) = disk_space(dir.path()).unwrap();
        let available = free.saturating_sub(reserve(size));
        let b = Budget::for_dir(dir.path(), Some(1000)).unwrap();
        assert_eq!((b.limit, b.kind), (1000, Limit::Configured));
        let b = Budget::for_dir(dir.path(), Some(u64::MAX)).unwrap();
        assert_eq!(b.kind, Limit::FreeSpace);
        assert!(b.limit <= available);
        assert!(b.fits(b.limit).is_ok());
        assert!(b.fits(b.limit + 1).is_err());
        assert_eq!(reserve(100 << 30), 1 << 30);
        assert_eq!(reserve(1000), 50);
    }

    #[test]
    fn spool_dirs_are_removed_when_dropped_and_stale_scratch_is_cleared() {
        let work = tempfile::tempdir().unwrap();
        let d = SpoolDir::create(dataset_dir(work.path(), "db", "main")).unwrap();
        std::fs::write(d.path().join("x"), "x").unwrap();
        let p = d.path().to_path_buf();
        drop(d);
        assert!(!p.exists());

        let stale = work.path().join(SCRATCH_DIR).join("999999999-abc");
        std::fs::create_dir_all(&stale).unwrap();
        let mine = SpoolDir::scratch(work.path()).unwrap();
        assert!(!stale.exists());
        assert!(mine.path().exists());
        clear_stale_scratch(work.path());
        assert!(mine.path().exists(), "a live process's scratch stays");

        std::fs::create_dir_all(source_dir(work.path(), "db").join("main/db/main")).unwrap();
        clear_source(work.path(), "db").unwrap();
        assert!(!source_dir(work.path(), "db").exists());
        clear_source(work.path(), "db").unwrap();
    }
}
