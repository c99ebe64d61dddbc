//! Creating a restic repository that many hosts may try to create at the
//! same moment.
//!
//! Two `restic init` runs racing on one new repository each write a key
//! and then the config; the repository ends with two keys for one config
//! and does not open for whoever's key restic picks first ("config or key
//! ... is damaged: ciphertext verification failed"). So:
//!
//! - **Local directory** (`/path`, `local:/path`; NFS included): creators
//!   take turns on an advisory lock (`flock`) on `DIR/.tabacco-init.lock`,
//!   released by the kernel when its holder dies. The holder that finds no
//!   `DIR/config` runs `restic init` into `DIR/.tabacco-init.tmp` (where
//!   nobody else looks), moves its directories into `DIR`, and publishes
//!   the config last with `link(2)`, which fails rather than replace one.
//!   Everyone else finds the config and uses the repository. An interrupted
//!   creation leaves only the temporary directory; the next creator
//!   resumes or redoes it. `restic init` itself never runs on `DIR`.
//! - **Remote backends** have no atomic create. Creators on one host take
//!   turns on a lock file in the temporary directory; each checks again
//!   that the repository is still missing (`restic cat config`), runs
//!   `restic init`, and then checks that the result opens with our
//!   password. Hosts racing each other can still collide: that check
//!   reports the damage with its repair. The fleet procedure is to create
//!   a shared remote repository once (`tabacco repo init`) before rolling
//!   out the hosts (README, "Shared repositories").

use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::Restic;
use super::json::Version;
use crate::filelock::{Locked, lock_waiting};
use crate::repository::{Creation, RepoError};

/// The lock file creators take turns on, in a local repository directory.
pub const INIT_LOCK: &str = ".tabacco-init.lock";

/// Where a local repository is built before it is moved into place.
pub const INIT_TMP: &str = ".tabacco-init.tmp";

/// The directories of a local restic repository (the config comes last).
const RESTIC_DIRS: [&str; 5] = ["data", "index", "keys", "locks", "snapshots"];

/// Take the creators' lock at `path` for `r`, waiting up to its
/// `lock_wait`; a holder that keeps it longer is an error.
async fn creators_lock(r: &Restic, path: &Path) -> Result<Locked, RepoError> {
    lock_waiting(path, r.lock_wait)
        .await
        .map_err(io_error(format!("cannot lock {}", path.display())))?
        .ok_or_else(|| RepoError::Damaged {
            uri: r.display_uri(),
            message: format!(
                "another tabacco process has been creating it for more than {} (it holds {}); its `restic init` may hang: look for that process",
                humantime::format_duration(r.lock_wait),
                path.display()
            ),
        })
}

fn io_error(context: String) -> impl FnOnce(io::Error) -> RepoError {
    move |source| RepoError::Io { context, source }
}

/// The message for a repository whose creation collided with another.
pub fn collision_advice() -> &'static str {
    "if several hosts created this repository at the same moment, it holds several keys for one config. Repair: for each file K in the repository's keys/, `restic --key-hint K cat config`; keep the key that works and remove the others (`restic --key-hint GOOD key remove K`). Avoid it: create a shared remote repository once with `tabacco repo init` before rolling out the fleet"
}

/// Whether `dir` has entries.
fn non_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut rd| rd.next().is_some())
}

/// Create the local repository `dir` atomically (see the module
/// documentation), or find it.
pub(super) async fn create_local(
    r: &Restic,
    _version: Version,
    dir: &Path,
) -> Result<Creation, RepoError> {
    let uri = r.display_uri();
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(io_error(format!(
            "cannot create the repository directory {}",
            dir.display()
        )))?;
    let _lock = creators_lock(r, &dir.join(INIT_LOCK)).await?;
    let config = dir.join("config");
    if config.exists() {
        return Ok(Creation::Existing);
    }
    let tmp = dir.join(INIT_TMP);
    if tmp.join("config").exists() {
        tracing::info!(repository = %uri, "resuming an interrupted repository creation from {}", tmp.display());
    } else {
        if non_empty(&dir.join("keys")) {
            return Err(RepoError::Damaged {
                uri,
                message: format!(
                    "{} holds keys but no config: a `restic init` on it was interrupted, or ran twice at once (tabacco builds repositories in {INIT_TMP} and never runs `restic init` on the directory itself); it holds no snapshots yet: move it aside and run the backup again",
                    dir.display()
                ),
            });
        }
        match tokio::fs::remove_dir_all(&tmp).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(io_error(format!(
                    "cannot remove the leftover {}",
                    tmp.display()
                ))(e));
            }
        }
        tracing::info!(repository = %uri, "creating the restic repository");
        let out = r.run_init(Some(&tmp)).await?;
        if !out.success() {
            return Err(RepoError::Process(out.to_error()));
        }
    }
    for name in RESTIC_DIRS {
        let from = tmp.join(name);
        if !from.exists() {
            continue;
        }
        // rename(2) replaces an empty directory, never a full one.
        std::fs::rename(&from, dir.join(name)).map_err(|e| RepoError::Damaged {
            uri: uri.clone(),
            message: format!(
                "cannot move the new repository's {name}/ into {}: {e} (does {} already hold files?)",
                dir.display(),
                dir.join(name).display()
            ),
        })?;
    }
    // Published last, and never over an existing config.
    std::fs::hard_link(tmp.join("config"), &config).map_err(|e| RepoError::Damaged {
        uri: uri.clone(),
        message: format!(
            "cannot publish the new repository's config as {}: {e}; something created a repository there without tabacco's lock ({})",
            config.display(),
            collision_advice()
        ),
    })?;
    if let Err(e) = std::fs::remove_dir_all(&tmp) {
        tracing::warn!("cannot remove {}: {e}", tmp.display());
    }
    tracing::info!(repository = %uri, "created the restic repository");
    Ok(Creation::Created)
}

/// The per-host lock file for creating a remote repository.
fn remote_lock_path(uri: &str) -> PathBuf {
    let digest = Sha256::digest(uri.as_bytes());
    std::env::temp_dir().join(format!("tabacco-init-{}.lock", &hex::encode(digest)[..16]))
}

/// Create a remote repository if it still does not exist, one creator per
/// host at a time, and check that the result opens with our password.
pub(super) async fn create_remote(r: &Restic, version: Version) -> Result<Creation, RepoError> {
    let uri = r.display_uri();
    let _lock = creators_lock(r, &remote_lock_path(&r.params.uri)).await?;
    match r.cat_config(version).await {
        Ok(()) => return Ok(Creation::Existing),
        Err(RepoError::NoRepository { .. }) => {}
        Err(e) => return Err(e),
    }
    tracing::info!(repository = %uri, "creating the restic repository");
    let out = r.run_init(None).await?;
    let exists = !out.success()
        && (out.stderr_tail.contains("already exists")
            || out.stderr_tail.contains("already initialized"));
    if !out.success() && !exists {
        return Err(match r.failure_error(version, &out) {
            // init's own failure reads "create repository at ... failed".
            RepoError::NoRepository { .. } => RepoError::Process(out.to_error()),
            e => e,
        });
    }
    // Another host may have been creating it at the same moment: check
    // that what is there opens with our password.
    match r.cat_config(version).await {
        Ok(()) if exists => Ok(Creation::Existing),
        Ok(()) => {
            tracing::info!(repository = %uri, "created the restic repository");
            Ok(Creation::Created)
        }
        Err(RepoError::WrongPassword { .. }) if exists => Err(RepoError::Damaged {
            uri,
            message: format!(
                "it was created by someone else at the same moment, and does not open with our password: check `password`; {}",
                collision_advice()
            ),
        }),
        Err(e @ RepoError::Damaged { .. }) => Err(e),
        Err(e) => Err(RepoError::Damaged {
            uri,
            message: format!(
                "it does not open right after `restic init` ({e}); {}",
                collision_advice()
            ),
        }),
    }
}
