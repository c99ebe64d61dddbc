//! What tabacco passes to restic, checked before it is passed: paths,
//! snapshot ids, tags, stream names (never something restic would read as
//! a flag), and the name a stream is stored under by each restic version.

use std::path::Path;

use super::json::Version;
use crate::repository::RepoError;

/// Check a path given to backup/restore: absolute and plain text.
pub(super) fn check_abs_path(p: &Path) -> Result<(), RepoError> {
    if !p.is_absolute() {
        return Err(RepoError::BadRequest {
            message: format!(
                "path '{}' is not absolute; restic would store it under /{0}: pass absolute paths",
                p.display()
            ),
        });
    }
    Ok(())
}

/// Check a path given relative to a backup's working directory: relative,
/// no `..` (restic would store it outside `/`), not starting with `-`
/// (restic would take it as a flag).
pub(super) fn check_rel_path(p: &Path) -> Result<(), RepoError> {
    use std::path::Component;
    let ok = !p.as_os_str().is_empty()
        && !p.to_string_lossy().starts_with('-')
        && p.components().all(|c| matches!(c, Component::Normal(_)));
    if !ok {
        return Err(RepoError::BadRequest {
            message: format!(
                "path '{}' must be relative, without '.' or '..' segments",
                p.display()
            ),
        });
    }
    Ok(())
}

/// Check a snapshot id given to restore/dump/forget: hex (a prefix is
/// fine) or `latest`, never something restic would take as a flag.
pub(super) fn check_snapshot_id(id: &str) -> Result<(), RepoError> {
    if id == "latest" || (!id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit())) {
        Ok(())
    } else {
        Err(RepoError::BadRequest {
            message: format!("'{id}' is not a restic snapshot id (hex digits expected)"),
        })
    }
}

/// Check a tag: restic splits tag lists at commas.
pub(super) fn check_tag(tag: &str) -> Result<(), RepoError> {
    if tag.contains(',') || tag.contains('\n') {
        Err(RepoError::BadRequest {
            message: format!("tag '{tag}' contains a comma or newline, which restic cannot store"),
        })
    } else {
        Ok(())
    }
}

/// The stdin file name without a leading `/`, checked.
pub(super) fn check_stdin_filename(name: &str) -> Result<&str, RepoError> {
    let n = name.trim_start_matches('/');
    if n.is_empty() || n.contains('\0') || n.contains('\n') || n.split('/').any(|c| c == "..") {
        return Err(RepoError::BadRequest {
            message: format!("'{name}' cannot be the name of a stream in a snapshot"),
        });
    }
    Ok(n)
}

/// restic 0.18.0 cannot store a stream under a name with directories
/// ("unable to save snapshot: open /db: no such file or directory"; restic
/// issue 5324, fixed in 0.18.1). Debian 13 ships that version.
const STDIN_DIRS_BROKEN: (Version, Version) = (Version::new(0, 18, 0), Version::new(0, 18, 1));

/// A stream name as one path segment: `%` as `%25`, `/` as `%2F`.
pub(super) fn flat_stdin_name(name: &str) -> String {
    name.replace('%', "%25").replace('/', "%2F")
}

/// The name a stream is stored under by this restic version: the name
/// itself, or with the versions that cannot store directories, its flat
/// form ([`flat_stdin_name`]). A restore finds either.
pub(super) fn stored_stdin_name(version: Version, name: &str) -> String {
    if (STDIN_DIRS_BROKEN.0..STDIN_DIRS_BROKEN.1).contains(&version) {
        flat_stdin_name(name)
    } else {
        name.to_string()
    }
}
