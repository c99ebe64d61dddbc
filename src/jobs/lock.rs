//! Exclusive per-source locks, shared by the agent and `tabacco backup`.
//!
//! A lock is an advisory `flock(2)` on `<work_dir>/locks/<source>.lock`.
//! The holder writes who it is (pid, agent or command line, since when)
//! into the file so that a refused run can name it. The kernel drops the
//! lock when the holder's file is closed, so a lock left by a process that
//! died (even by `SIGKILL`) never blocks; the file itself stays, and is
//! never deleted (deleting lock files races with other lockers). The file
//! is opened close-on-exec: children (restic, dump commands) do not inherit
//! the lock.

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::filelock;

/// Name of the directory inside `work_dir` holding the lock files.
pub const LOCKS_DIR: &str = "locks";

/// Who holds a lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HolderKind {
    /// The agent (`tabacco agent`).
    Agent,
    /// A command run by hand (`tabacco backup`).
    Cli,
    /// `tabacco forget` run by hand, applying the source's retention
    /// policy.
    Forget,
}

/// What a lock file says about its holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockHolder {
    /// Process id of the holder.
    pub pid: u32,
    /// Agent or command line.
    pub kind: HolderKind,
    /// When the holder took the lock.
    pub since: DateTime<Utc>,
}

impl std::fmt::Display for LockHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.kind {
            HolderKind::Agent => "already being backed up by the agent",
            HolderKind::Cli => "already being backed up by `tabacco backup`",
            HolderKind::Forget => "having its retention policy applied by `tabacco forget`",
        };
        write!(
            f,
            "{what} (pid {}, since {})",
            self.pid,
            self.since.to_rfc3339_opts(SecondsFormat::Secs, true)
        )
    }
}

/// A lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it.
    #[error("source '{source_name}' is {}; not starting another run on it now (lock file {})",
        holder.as_ref().map(ToString::to_string).unwrap_or_else(|| "locked by another process".to_string()),
        path.display())]
    Busy {
        /// The source.
        source_name: String,
        /// The lock file.
        path: PathBuf,
        /// The holder, if the file says who it is.
        holder: Option<LockHolder>,
    },
    /// The lock file could not be opened or locked.
    #[error("cannot lock source '{source_name}' with {}: {source} (check that the work_dir is writable)", path.display())]
    Io {
        /// The source.
        source_name: String,
        /// The lock file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// A held lock; dropping it releases the lock.
#[derive(Debug)]
pub struct SourceLock {
    file: filelock::Locked,
    path: PathBuf,
    holder: LockHolder,
}

/// Path of a source's lock file.
pub fn lock_path(work_dir: &Path, source: &str) -> PathBuf {
    work_dir.join(LOCKS_DIR).join(format!("{source}.lock"))
}

impl SourceLock {
    /// Take the lock of `source` without waiting, or say who holds it.
    pub fn try_acquire(
        work_dir: &Path,
        source: &str,
        kind: HolderKind,
    ) -> Result<SourceLock, LockError> {
        let path = lock_path(work_dir, source);
        let io = |source_err: std::io::Error| LockError::Io {
            source_name: source.to_string(),
            path: path.clone(),
            source: source_err,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let file = filelock::open(&path).map_err(io)?;
        let file = match filelock::try_lock(file).map_err(io)? {
            Ok(locked) => locked,
            Err(mut file) => {
                let mut text = String::new();
                let holder = file
                    .read_to_string(&mut text)
                    .ok()
                    .and_then(|_| serde_json::from_str(text.trim()).ok());
                return Err(LockError::Busy {
                    source_name: source.to_string(),
                    path,
                    holder,
                });
            }
        };
        let holder = LockHolder {
            pid: std::process::id(),
            kind,
            since: Utc::now(),
        };
        let mut text = serde_json::to_string(&holder).unwrap_or_default();
        text.push('\n');
        file.set_len(0)
            .and_then(|()| file.write_all_at(text.as_bytes(), 0))
            .map_err(io)?;
        Ok(SourceLock { file, path, holder })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Who we said we are.
    pub fn holder(&self) -> &LockHolder {
        &self.holder
    }
}

impl Drop for SourceLock {
    fn drop(&mut self) {
        // Leave no stale holder behind; closing the file releases the lock.
        let _ = self.file.set_len(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_locker_is_refused_and_told_who_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let held = SourceLock::try_acquire(dir.path(), "mysql", HolderKind::Agent).unwrap();
        assert_eq!(held.path(), dir.path().join("locks/mysql.lock"));
        let e = SourceLock::try_acquire(dir.path(), "mysql", HolderKind::Cli).unwrap_err();
        match &e {
            LockError::Busy {
                holder: Some(h), ..
            } => {
                assert_eq!(h.pid, std::process::id());
                assert_eq!(h.kind, HolderKind::Agent);
            }
            other => panic!("unexpected {other:?}"),
        }
        let msg = e.to_string();
        assert!(
            msg.contains("already being backed up by the agent (pid"),
            "{msg}"
        );
        assert!(msg.contains("mysql.lock"), "{msg}");
        // Other sources are independent.
        SourceLock::try_acquire(dir.path(), "files", HolderKind::Cli).unwrap();
        drop(held);
        let again = SourceLock::try_acquire(dir.path(), "mysql", HolderKind::Cli).unwrap();
        assert_eq!(again.holder().kind, HolderKind::Cli);
    }

    #[test]
    fn lock_of_another_process_blocks_until_it_dies() {
        let dir = tempfile::tempdir().unwrap();
        let path = lock_path(dir.path(), "s");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        // bash locks fd 9, then becomes `sleep` (same pid, still holding it).
        let mut child = std::process::Command::new("bash")
            .args(["-c", "exec 9>\"$0\"; flock -x 9; echo ready; exec sleep 60"])
            .arg(&path)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "ready");
        let e = SourceLock::try_acquire(dir.path(), "s", HolderKind::Agent).unwrap_err();
        assert!(e.to_string().contains("by another process"), "{e}");
        // SIGKILL: no cleanup, yet the kernel drops the lock.
        child.kill().unwrap();
        child.wait().unwrap();
        let l = SourceLock::try_acquire(dir.path(), "s", HolderKind::Agent).unwrap();
        assert_eq!(l.holder().pid, std::process::id());
    }
}
