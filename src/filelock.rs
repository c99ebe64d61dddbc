//! Advisory whole-file locks (`flock(2)`, through nix's [`Flock`]), the
//! one way tabacco takes a lock between processes: source locks, the
//! outbox's delivery lock, a repository's creators' lock.
//!
//! The kernel drops such a lock when its holder's file is closed, so a
//! lock left by a process that died (even by `SIGKILL`) never blocks. Lock
//! files are opened close-on-exec (children never inherit a lock) and are
//! never deleted (deleting lock files races with other lockers).

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

/// A held lock; released when dropped. Derefs to the file, so a holder can
/// write who it is into it.
pub type Locked = Flock<File>;

/// How often a waiting locker tries again.
const POLL: Duration = Duration::from_millis(50);

/// Open (creating it if needed) a lock file for reading and writing.
pub fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

/// Take the lock on `file` without waiting: `Ok(Err(file))` when another
/// process holds it (the file comes back, e.g. to read who).
pub fn try_lock(file: File) -> io::Result<Result<Locked, File>> {
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Ok(lock)),
        Err((file, nix::errno::Errno::EWOULDBLOCK)) => Ok(Err(file)),
        Err((_, e)) => Err(io::Error::from(e)),
    }
}

/// Take the lock on the file at `path` (created if missing), waiting up to
/// `wait` for another holder to let go; `None` if it held on all that time.
pub async fn lock_waiting(path: &Path, wait: Duration) -> io::Result<Option<Locked>> {
    let deadline = Instant::now() + wait;
    let mut file = open(path)?;
    loop {
        match try_lock(file)? {
            Ok(lock) => return Ok(Some(lock)),
            Err(f) if Instant::now() < deadline => {
                file = f;
                tokio::time::sleep(POLL).await;
            }
            Err(_) => return Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_held_lock_is_waited_for_then_taken() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let held = lock_waiting(&path, Duration::ZERO).await.unwrap().unwrap();
        // flock locks belong to the open file description: a second open
        // in this process is refused like another process would be.
        assert!(try_lock(open(&path).unwrap()).unwrap().is_err());
        assert!(
            lock_waiting(&path, Duration::from_millis(120))
                .await
                .unwrap()
                .is_none()
        );
        let waiter = tokio::spawn({
            let path = path.clone();
            async move { lock_waiting(&path, Duration::from_secs(10)).await }
        });
        drop(held);
        assert!(waiter.await.unwrap().unwrap().is_some());
    }
}
