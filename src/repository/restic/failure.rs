//! What a failed restic command said, read once: why it failed (no
//! repository, wrong password, locked, damaged), who holds a lock, which
//! items it could not read, what damage `restic check` named.

use super::SHOWN_ITEMS;
use super::json::{self, Version};

/// Why a restic command failed, as far as it matters to us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The repository does not exist (or its config cannot be read).
    NoRepository,
    /// The password opens no key.
    WrongPassword,
    /// Another process holds a conflicting lock.
    Locked,
    /// The key restic found does not decrypt the config.
    Damaged,
    /// Anything else.
    Other,
}

/// Classify a failed restic command by exit code (restic 0.17 and later)
/// and stderr text (all versions).
pub(crate) fn classify_failure(version: Version, code: Option<i32>, stderr: &str) -> Failure {
    if version >= Version::new(0, 17, 0) {
        match code {
            Some(10) => return Failure::NoRepository,
            Some(11) => return Failure::Locked,
            Some(12) => return Failure::WrongPassword,
            _ => {}
        }
    }
    if stderr.contains("wrong password or no key found") {
        Failure::WrongPassword
    } else if stderr.contains("unable to open config file")
        || stderr.contains("Is there a repository at the following location?")
        || stderr.contains("repository does not exist")
    {
        Failure::NoRepository
    } else if stderr.contains("config or key") && stderr.contains("is damaged") {
        // Not any "ciphertext verification failed": a damaged pack says
        // that too; only the config/key pair points at a collision.
        Failure::Damaged
    } else if stderr.contains("repository is already locked")
        || stderr.contains("unable to create lock")
    {
        Failure::Locked
    } else {
        Failure::Other
    }
}

/// Who holds the lock restic complained about, from its stderr: `by PID
/// 12 on host by user (UID 0, GID 0), lock created at ... (3s ago),
/// storage ID 1a2b3c4d`; the stderr itself when it names nobody.
pub(crate) fn lock_holder(stderr: &str) -> String {
    let mut parts = Vec::new();
    for line in stderr.lines().map(str::trim) {
        if let Some(i) = line.find("already locked ") {
            parts.push(line[i + "already locked ".len()..].trim().to_string());
        } else if let Some(rest) = line.strip_prefix("lock was ") {
            parts.push(format!("lock {rest}"));
        } else if let Some(rest) = line.strip_prefix("storage ID ") {
            parts.push(format!("storage ID {rest}"));
        }
    }
    if parts.is_empty() {
        format!("by another process (restic: {})", stderr.trim())
    } else {
        parts.join(", ")
    }
}

/// The items named in restic's error messages, or its stderr tail if it
/// named none.
pub(super) fn unreadable_items(errors: &[json::ErrorMessage], stderr_tail: &str) -> Vec<String> {
    let mut items: Vec<String> = errors
        .iter()
        .take(SHOWN_ITEMS)
        .map(json::ErrorMessage::describe)
        .collect();
    if errors.len() > SHOWN_ITEMS {
        items.push(format!("and {} more", errors.len() - SHOWN_ITEMS));
    }
    if items.is_empty() {
        items.push(format!("some files (restic: {stderr_tail})"));
    }
    items
}

/// The lines of `restic check`'s standard error that name damage (its
/// progress and advice lines left out), at most [`SHOWN_ITEMS`] plus a
/// count of the rest.
pub(super) fn check_damage(stderr: &[String]) -> Vec<String> {
    let damage: Vec<&String> = stderr
        .iter()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            (l.contains("error")
                || l.contains("damaged")
                || l.contains("does not match")
                || l.contains("not found"))
                && !l.starts_with("fatal: repository contains errors")
                && !l.starts_with("the repository contains damaged pack files")
                && !l.starts_with("damaged pack files can be caused")
        })
        .collect();
    let mut out: Vec<String> = damage
        .iter()
        .take(SHOWN_ITEMS)
        .map(|l| (*l).clone())
        .collect();
    if damage.len() > SHOWN_ITEMS {
        out.push(format!("and {} more", damage.len() - SHOWN_ITEMS));
    }
    if out.is_empty()
        && stderr
            .iter()
            .any(|l| l.contains("repository contains errors"))
    {
        out.push("repository contains errors".into());
    }
    out
}
