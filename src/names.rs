//! The identifier rules: which backup ids, dataset ids, host, source,
//! dataset and atom names (and file-handler atom paths) are acceptable.
//!
//! Every identifier ends up in a file system path somewhere (a restore's
//! `target/<backup id>/`, a pipe atom's `/<source>/<dataset>/<atom>` in a
//! snapshot, the environment of user commands) or in a restic tag, and the
//! index is shared by hosts that may not trust each other. So each one is a
//! safe path segment (dataset and atom names: a safe relative path of such
//! segments), checked with the same function wherever it enters: the
//! config loader, the manager (what `datasets_command`/`atoms_command`
//! print), every metadata store (and through them the metadata server,
//! which answers 400 naming the field), and the restore path, which
//! refuses a stored record that breaks them instead of following it.
//!
//! A leaf module: it depends on the wire types in [`crate::model`] only.

use std::path::{Component, Path, PathBuf};

use crate::model::{Backup, Dataset};

/// Longest backup id, dataset id, host or source name, in bytes (a file
/// name's limit on common file systems).
pub const MAX_SEGMENT_BYTES: usize = 255;

/// Longest dataset or atom name (or atom path), in bytes (Linux's
/// `PATH_MAX`).
pub const MAX_PATH_BYTES: usize = 4096;

/// Common rules of one path segment: non-empty, bounded, no control
/// characters, no `/`, not `.` or `..`.
fn check_segment(kind: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{kind} is empty"));
    }
    if value.len() > MAX_SEGMENT_BYTES {
        return Err(format!(
            "{kind} is {} bytes long (at most {MAX_SEGMENT_BYTES})",
            value.len()
        ));
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(format!(
            "{kind} {value:?} contains the control character {c:?}"
        ));
    }
    if value.contains('/') {
        return Err(format!(
            "{kind} {value:?} contains '/': it must be a single path segment"
        ));
    }
    if value == "." || value == ".." {
        return Err(format!("{kind} {value:?} is not a valid path segment"));
    }
    Ok(())
}

/// A segment that is also a restic tag value or argument: no whitespace,
/// no `,` (restic splits tag lists on commas).
fn check_tag_segment(kind: &str, value: &str) -> Result<(), String> {
    check_segment(kind, value)?;
    if let Some(c) = value.chars().find(|c| c.is_whitespace()) {
        return Err(format!(
            "{kind} {value:?} contains {c:?}: no whitespace is allowed"
        ));
    }
    if value.contains(',') {
        return Err(format!(
            "{kind} {value:?} contains ',': restic splits tags on commas"
        ));
    }
    Ok(())
}

/// Check a backup or dataset id (`kind`: "backup id", "dataset id"): a
/// single safe path segment of at most [`MAX_SEGMENT_BYTES`], without
/// whitespace or `,` (ids are restic tags).
pub fn check_id(kind: &str, id: &str) -> Result<(), String> {
    check_tag_segment(kind, id)
}

/// Check a host name: a single safe path segment without whitespace or
/// `,` (restic's `--host` and tags).
pub fn check_host(host: &str) -> Result<(), String> {
    check_tag_segment("host name", host)
}

/// Check a source name: a single safe path segment: non-empty, no `/`,
/// not `.` or `..`, no `,` (restic tags are split on commas), no
/// whitespace, NUL or control characters, at most [`MAX_SEGMENT_BYTES`].
pub fn check_source_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("missing or empty: every source needs a name".to_string());
    }
    check_tag_segment("source name", name)
}

/// Check a dataset or atom name (`kind`: "dataset", "atom"): a safe
/// relative path, i.e. non-empty, no NUL or control characters, no `/` at
/// either end, no empty, `.` or `..` segment, at most [`MAX_PATH_BYTES`]
/// (each segment at most [`MAX_SEGMENT_BYTES`]).
pub fn check_name(kind: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("missing or empty: every {kind} needs a name"));
    }
    if name.len() > MAX_PATH_BYTES {
        return Err(format!(
            "{kind} name is {} bytes long (at most {MAX_PATH_BYTES})",
            name.len()
        ));
    }
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Err(format!(
            "{kind} name {name:?} contains the control character {c:?}"
        ));
    }
    if name.starts_with('/') || name.ends_with('/') {
        return Err(format!(
            "{kind} name {name:?} starts or ends with '/': it must be a relative path"
        ));
    }
    for seg in name.split('/') {
        if seg.is_empty() {
            return Err(format!(
                "{kind} name {name:?} has an empty path segment ('//')"
            ));
        }
        if seg == "." || seg == ".." {
            return Err(format!("{kind} name {name:?} has a {seg:?} path segment"));
        }
        if seg.len() > MAX_SEGMENT_BYTES {
            return Err(format!(
                "{kind} name {name:?} has a segment of {} bytes (at most {MAX_SEGMENT_BYTES})",
                seg.len()
            ));
        }
    }
    Ok(())
}

/// Check an atom's `path` for the `file` handler: non-empty, relative (no
/// leading `/`), no `..` segment, no NUL or control characters, at most
/// [`MAX_PATH_BYTES`].
pub fn check_atom_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("is empty: give a path relative to the source's root, or remove it to use the atom name".to_string());
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(format!(
            "atom path is {} bytes long (at most {MAX_PATH_BYTES})",
            path.len()
        ));
    }
    if let Some(c) = path.chars().find(|c| c.is_control()) {
        return Err(format!(
            "atom path {path:?} contains the control character {c:?}"
        ));
    }
    if path.starts_with('/') {
        return Err(format!(
            "atom path {path:?} is absolute: it must be relative to the source's root (params.path)"
        ));
    }
    if path.split('/').any(|seg| seg == "..") {
        return Err(format!(
            "atom path {path:?} has a '..' segment: it must stay below the source's root"
        ));
    }
    Ok(())
}

/// Check every identifier of a (backup, dataset) record as it is written
/// to the index or read back for a restore. The error starts with the
/// field's JSON path (`backup.id`, `dataset.atoms[3].name`, ...).
pub fn check_record(backup: &Backup, dataset: &Dataset) -> Result<(), String> {
    let field = |path: &str, r: Result<(), String>| r.map_err(|e| format!("{path}: {e}"));
    field("backup.id", check_id("backup id", &backup.id))?;
    field("backup.host", check_host(&backup.host))?;
    field("dataset.id", check_id("dataset id", &dataset.id))?;
    field("dataset.source", check_source_name(&dataset.source))?;
    field("dataset.name", check_name("dataset", &dataset.name))?;
    for (i, atom) in dataset.atoms.iter().enumerate() {
        field(
            &format!("dataset.atoms[{i}].name"),
            check_name("atom", &atom.name),
        )?;
        if !atom.path.is_empty() {
            field(
                &format!("dataset.atoms[{i}].path"),
                check_atom_path(&atom.path),
            )?;
        }
        if let Some(path) = &atom.snapshot_path {
            field(
                &format!("dataset.atoms[{i}].snapshot_path"),
                check_snapshot_path(path),
            )?;
        }
        if let Some(sha) = &atom.sha256 {
            field(&format!("dataset.atoms[{i}].sha256"), check_sha256(sha))?;
        }
    }
    if let Some(handler) = &dataset.handler {
        field(
            "dataset.handler",
            check_tag_segment("handler type", handler),
        )?;
    }
    if let Some(id) = &dataset.repository_id {
        field(
            "dataset.repository_id",
            check_tag_segment("repository id", id),
        )?;
    }
    Ok(())
}

/// Check an atom's `snapshot_path`, its absolute path inside a snapshot
/// (a restore writes it below its target): absolute, no empty, `.` or
/// `..` segment, no NUL or control characters, at most
/// [`MAX_PATH_BYTES`].
pub fn check_snapshot_path(path: &str) -> Result<(), String> {
    if path.len() > MAX_PATH_BYTES {
        return Err(format!(
            "snapshot path is {} bytes long (at most {MAX_PATH_BYTES})",
            path.len()
        ));
    }
    if let Some(c) = path.chars().find(|c| c.is_control()) {
        return Err(format!(
            "snapshot path {path:?} contains the control character {c:?}"
        ));
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(format!("snapshot path {path:?} is not absolute"));
    };
    if rest
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err(format!(
            "snapshot path {path:?} has an empty, '.' or '..' segment"
        ));
    }
    Ok(())
}

/// Check a SHA-256 digest as recorded: 64 lowercase hex digits.
pub fn check_sha256(digest: &str) -> Result<(), String> {
    if digest.len() == 64
        && digest
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(format!(
            "{} is not a SHA-256 digest (64 lowercase hex digits)",
            excerpt(digest)
        ))
    }
}

/// `text` quoted for an error message, cut to its first 64 characters:
/// a client's oversized input is not echoed back whole.
pub fn excerpt(text: &str) -> String {
    const MAX_CHARS: usize = 64;
    match text.char_indices().nth(MAX_CHARS) {
        None => format!("{text:?}"),
        Some((cut, _)) => format!("{:?}... ({} bytes)", &text[..cut], text.len()),
    }
}

/// `base` joined with `relative`, refused unless the result stays below
/// `base`: `relative` must consist of plain segments only (no root, no
/// `.`/`..`, no prefix). The last line of defence of the restore path,
/// whose parts were checked already.
pub fn join_below(base: &Path, relative: &str) -> Result<PathBuf, String> {
    let rel = Path::new(relative);
    if relative.is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(format!(
            "{relative:?} would leave {}: refusing to write there",
            base.display()
        ));
    }
    Ok(base.join(rel))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Atom;

    #[test]
    fn check_source_name_rules() {
        assert!(check_source_name("mail-1.example_x").is_ok());
        for bad in [
            "", "a/b", "/a", "..", ".", "a,b", "a b", "a\nb", "a\0b", "a\u{7f}b",
        ] {
            assert!(check_source_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_source_name("a,b").unwrap_err().contains("comma"));
        assert!(check_source_name(&"x".repeat(256)).is_err());
    }

    #[test]
    fn check_name_rules() {
        for good in ["a", "a/b", "..a", "a..", "a.b/c", "a b"] {
            assert!(check_name("dataset", good).is_ok(), "{good:?} rejected");
        }
        for bad in [
            "", "/a", "a/", "a//b", "../a", "a/../b", "a/..", "..", ".", "a/./b", "a\0b", "a\nb",
        ] {
            assert!(check_name("atom", bad).is_err(), "{bad:?} accepted");
        }
        assert!(
            check_name("atom", "a//b")
                .unwrap_err()
                .contains("empty path segment")
        );
        assert!(check_name("atom", &"x".repeat(256)).is_err());
        assert!(check_name("atom", &format!("{}/b", "x".repeat(255))).is_ok());
        assert!(check_name("atom", &"x/".repeat(2100)).is_err());
    }

    #[test]
    fn check_atom_path_rules() {
        assert!(check_atom_path("a/b").is_ok());
        assert!(check_atom_path("./a").is_ok());
        for bad in ["", "/a", "..", "a/..", "a/../b", "a\0"] {
            assert!(check_atom_path(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn ids_and_hosts_are_single_segments() {
        for good in ["0194d5c2a1b27c3e8f", "b-1", "host.example.org"] {
            assert!(check_id("backup id", good).is_ok(), "{good:?}");
            assert!(check_host(good).is_ok(), "{good:?}");
        }
        for bad in [
            "",
            "/tmp/ESCAPED",
            "..",
            ".",
            "a/b",
            "a b",
            "a,b",
            "a\0",
            "a\n",
        ] {
            assert!(check_id("backup id", bad).is_err(), "{bad:?} accepted");
            assert!(check_host(bad).is_err(), "{bad:?} accepted");
        }
    }

    /// Makes one field of a valid record invalid.
    type Breaker = fn(&mut Backup, &mut Dataset);

    fn record() -> (Backup, Dataset) {
        (
            Backup {
                id: "b1".into(),
                timestamp: chrono::Utc::now(),
                host: "h1".into(),
                datasets: vec![],
            },
            Dataset {
                id: "d1".into(),
                name: "docs".into(),
                source: "files".into(),
                atoms: vec![Atom {
                    name: "a/b".into(),
                    path: String::new(),
                    ..Default::default()
                }],
                snapshot_id: "s".into(),
                ..Default::default()
            },
        )
    }

    #[test]
    fn records_name_the_bad_field() {
        let (b, mut d) = record();
        assert!(check_record(&b, &d).is_ok());
        d.atoms[0].snapshot_path = Some("/srv/a b/c".into());
        d.atoms[0].sha256 = Some("0123456789abcdef".repeat(4));
        d.handler = Some("pipe".into());
        d.repository_id = Some("5e5b".repeat(16));
        assert!(check_record(&b, &d).is_ok());
        let cases: [(&str, Breaker); 12] = [
            ("backup.id", |b, _| b.id = "/tmp/ESCAPED".into()),
            ("backup.host", |b, _| b.host = "..".into()),
            ("dataset.id", |_, d| d.id = "../x".into()),
            ("dataset.source", |_, d| d.source = "..".into()),
            ("dataset.name", |_, d| d.name = "a/../..".into()),
            ("dataset.atoms[0].name", |_, d| {
                d.atoms[0].name = "../../etc".into()
            }),
            ("dataset.atoms[0].path", |_, d| {
                d.atoms[0].path = "/etc".into()
            }),
            ("dataset.atoms[0].snapshot_path", |_, d| {
                d.atoms[0].snapshot_path = Some("/srv/../../etc".into())
            }),
            ("dataset.atoms[0].snapshot_path", |_, d| {
                d.atoms[0].snapshot_path = Some("srv/a".into())
            }),
            ("dataset.atoms[0].sha256", |_, d| {
                d.atoms[0].sha256 = Some("AB".repeat(32))
            }),
            ("dataset.handler", |_, d| d.handler = Some("../x".into())),
            ("dataset.repository_id", |_, d| {
                d.repository_id = Some("a b".into())
            }),
        ];
        for (field, break_it) in cases {
            let (mut b, mut d) = record();
            break_it(&mut b, &mut d);
            let e = check_record(&b, &d).unwrap_err();
            assert!(e.starts_with(&format!("{field}: ")), "{field}: {e}");
        }
    }

    #[test]
    fn join_below_refuses_to_leave_the_base() {
        let base = Path::new("/restore");
        assert_eq!(
            join_below(base, "b1").unwrap(),
            PathBuf::from("/restore/b1")
        );
        for bad in ["", "/tmp/ESCAPED", "..", "a/../..", "."] {
            assert!(join_below(base, bad).is_err(), "{bad:?} accepted");
        }
    }
}
