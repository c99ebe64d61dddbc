//! The comparisons of a restore drill, as plain functions over files on
//! disk: a restored stream against its fingerprint, a restored tree
//! against the snapshot's listing, and restored files against the live
//! source where the live file looks unchanged since the backup.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::repository::SnapshotNode;

/// Size of the buffer files are read through.
const BUFFER: usize = 256 * 1024;

/// SHA-256 (lowercase hex) and size of a file, read once.
pub fn fingerprint(path: &Path) -> io::Result<(String, u64)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; BUFFER];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), size))
}

/// Whether two files hold the same bytes (sizes compared first).
pub fn same_bytes(a: &Path, b: &Path) -> io::Result<bool> {
    let (mut fa, mut fb) = (std::fs::File::open(a)?, std::fs::File::open(b)?);
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; BUFFER], vec![0u8; BUFFER]);
    loop {
        let n = read_full(&mut fa, &mut ba)?;
        let m = read_full(&mut fb, &mut bb)?;
        if n != m || ba[..n] != bb[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

/// Read until `buf` is full or the file ends; the number of bytes read.
fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match f.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// What comparing a restored tree with its listing and the live source
/// found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TreeReport {
    /// Entries listed in the snapshot that are not directories (what the
    /// backup records as an atom's `files`).
    pub files: u64,
    /// Total bytes of the regular files, as listed.
    pub bytes: u64,
    /// Listed entries missing from the restored tree, or restored with
    /// another type or size (path and what differs).
    pub restore_mismatches: Vec<String>,
    /// Live files that look unchanged since the backup (same size and
    /// modification time) and so were compared byte for byte.
    pub live_compared: u64,
    /// Those whose bytes differ from the restored ones.
    pub live_differing: Vec<String>,
    /// Live files that could not be read (permission, vanished).
    pub live_unreadable: Vec<String>,
}

impl TreeReport {
    /// The share of compared live files that differ, in percent (0 when
    /// none was compared).
    pub fn live_differing_percent(&self) -> f64 {
        if self.live_compared == 0 {
            0.0
        } else {
            100.0 * self.live_differing.len() as f64 / self.live_compared as f64
        }
    }
}

/// Where a snapshot path landed under a restore target.
pub fn restored_path(target: &Path, snapshot_path: &str) -> PathBuf {
    target.join(snapshot_path.trim_start_matches('/'))
}

/// Compare the tree restored under `target` with the snapshot `listing`
/// (entries of the atom), and each listed regular file whose live copy
/// at the same absolute path has the listed size and modification time
/// with that live copy, byte for byte. A live file changed since the
/// backup (another size or time) is not counted against the backup.
pub fn compare_tree(target: &Path, listing: &[SnapshotNode], live: bool) -> TreeReport {
    let mut report = TreeReport::default();
    for node in listing {
        let restored = restored_path(target, &node.path);
        let meta = std::fs::symlink_metadata(&restored);
        let is_file = node.kind == "file";
        if node.kind != "dir" {
            report.files += 1;
        }
        if is_file {
            report.bytes += node.size;
        }
        match meta {
            Err(_) => {
                report
                    .restore_mismatches
                    .push(format!("{}: not restored", node.path));
                continue;
            }
            Ok(m) => {
                let kind_ok = match node.kind.as_str() {
                    "file" => m.is_file(),
                    "dir" => m.is_dir(),
                    "symlink" => m.file_type().is_symlink(),
                    _ => true,
                };
                if !kind_ok {
                    report.restore_mismatches.push(format!(
                        "{}: restored as another type than the listed {}",
                        node.path, node.kind
                    ));
                    continue;
                }
                if is_file && m.len() != node.size {
                    report.restore_mismatches.push(format!(
                        "{}: restored {} bytes, listed {}",
                        node.path,
                        m.len(),
                        node.size
                    ));
                    continue;
                }
            }
        }
        if !(live && is_file) {
            continue;
        }
        let live_path = Path::new(&node.path);
        let Ok(lm) = std::fs::symlink_metadata(live_path) else {
            continue; // gone since the backup: not the backup's fault
        };
        let unchanged = lm.is_file()
            && lm.len() == node.size
            && node.mtime.is_some_and(|t| {
                use std::os::unix::fs::MetadataExt;
                lm.mtime() == t.timestamp()
                    && lm.mtime_nsec() == i64::from(t.timestamp_subsec_nanos())
            });
        if !unchanged {
            continue;
        }
        report.live_compared += 1;
        match same_bytes(&restored, live_path) {
            Ok(true) => {}
            Ok(false) => report.live_differing.push(node.path.clone()),
            Err(e) => report.live_unreadable.push(format!("{}: {e}", node.path)),
        }
    }
    report
}

/// At most `n` items joined by `, `, with how many more there are.
pub fn some(items: &[String], n: usize) -> String {
    let mut text = items.iter().take(n).cloned().collect::<Vec<_>>().join(", ");
    if items.len() > n {
        text.push_str(&format!(" and {} more", items.len() - n));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};
    use std::os::unix::fs::MetadataExt;

    fn mtime(p: &Path) -> DateTime<Utc> {
        let m = std::fs::metadata(p).unwrap();
        DateTime::from_timestamp(m.mtime(), m.mtime_nsec() as u32).unwrap()
    }

    fn node(path: &Path, kind: &str) -> SnapshotNode {
        let m = std::fs::symlink_metadata(path).unwrap();
        SnapshotNode {
            path: path.to_string_lossy().into_owned(),
            kind: kind.into(),
            size: if kind == "file" { m.len() } else { 0 },
            mtime: Some(mtime(path)),
        }
    }

    #[test]
    fn fingerprints_are_sha256_and_size() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("x");
        std::fs::write(&f, b"abc").unwrap();
        assert_eq!(
            fingerprint(&f).unwrap(),
            (
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".to_string(),
                3
            )
        );
    }

    #[test]
    fn trees_compare_with_listing_and_unchanged_live_files() {
        let live = tempfile::tempdir().unwrap();
        let src = live.path().join("src");
        std::fs::create_dir(&src).unwrap();
        for (n, t) in [
            ("same", "one"),
            ("forged", "two"),
            ("newer", "three"),
            ("gone", "4"),
        ] {
            std::fs::write(src.join(n), t).unwrap();
        }
        let listing: Vec<SnapshotNode> = std::iter::once(node(&src, "dir"))
            .chain(
                ["same", "forged", "newer", "gone"]
                    .iter()
                    .map(|n| node(&src.join(n), "file")),
            )
            .collect();
        // The "restore": a copy of the tree as it was.
        let target = tempfile::tempdir().unwrap();
        let restored = restored_path(target.path(), &src.to_string_lossy());
        std::fs::create_dir_all(&restored).unwrap();
        for n in ["same", "forged", "newer", "gone"] {
            std::fs::copy(src.join(n), restored.join(n)).unwrap();
        }
        // Live changes: same size and forged time; a new time; removed.
        let t = std::fs::File::open(src.join("forged")).unwrap();
        let before = t.metadata().unwrap().modified().unwrap();
        std::fs::write(src.join("forged"), "TWO").unwrap();
        std::fs::File::options()
            .write(true)
            .open(src.join("forged"))
            .unwrap()
            .set_modified(before)
            .unwrap();
        std::fs::write(src.join("newer"), "THREE").unwrap();
        std::fs::remove_file(src.join("gone")).unwrap();

        let r = compare_tree(target.path(), &listing, true);
        assert_eq!((r.files, r.bytes), (4, 12));
        assert!(r.restore_mismatches.is_empty(), "{r:?}");
        assert_eq!(r.live_compared, 2, "{r:?}");
        assert_eq!(r.live_differing, [src.join("forged").to_string_lossy()]);
        assert_eq!(r.live_differing_percent(), 50.0);

        // A file missing from the restore, another of the wrong size.
        std::fs::remove_file(restored.join("same")).unwrap();
        std::fs::write(restored.join("newer"), "x").unwrap();
        let r = compare_tree(target.path(), &listing, false);
        assert_eq!(r.restore_mismatches.len(), 2, "{r:?}");
        assert!(r.restore_mismatches[0].contains("not restored"), "{r:?}");
        assert!(
            r.restore_mismatches[1].contains("restored 1 bytes, listed 5"),
            "{r:?}"
        );
        assert_eq!(r.live_compared, 0);
    }

    #[test]
    fn some_items_are_cut() {
        let items: Vec<String> = (1..=5).map(|i| i.to_string()).collect();
        assert_eq!(some(&items, 3), "1, 2, 3 and 2 more");
        assert_eq!(some(&items[..2], 3), "1, 2");
    }
}
