//! The index record a snapshot carries, so that the index can be checked
//! against the repository and rebuilt from it (`tabacco reconcile`).
//!
//! The tag vocabulary of a tabacco snapshot (every tag `key=value`):
//!
//! | tag | what |
//! |---|---|
//! | `backup_id=ID` | the backup (run) the snapshot belongs to |
//! | `dataset_id=ID` | the dataset's id |
//! | `source=NAME` | the source |
//! | `record.N=HEX` | the record, in parts `N` = 0, 1, ... |
//!
//! The record is the JSON of a [`Backup`] (id, timestamp, host) holding
//! the one [`Dataset`] as it was known when its backup started (name,
//! source, atoms with every field, and whatever fields the model gains
//! later: the record carries them without this module knowing them),
//! without the snapshot id and statistics, which only exist afterwards.
//! It is hex-encoded (a record may hold commas and spaces, which restic
//! tags cannot) and cut into parts of at most [`RECORD_PART_BYTES`]
//! characters (an argument to restic may not exceed 128 KiB).
//!
//! Tags come from outside (anyone with the repository password can tag a
//! snapshot): [`read`] checks every identifier with the rules of
//! [`crate::names`] and that the record agrees with the plain tags and
//! with the snapshot's host before anything is indexed from it.

use chrono::{DateTime, FixedOffset};

use crate::model::{Backup, Dataset};
use crate::names::{check_host, check_id, check_record, check_source_name, excerpt};

/// Longest `record.N=` part, in hex characters.
pub const RECORD_PART_BYTES: usize = 64 * 1024;

/// Tag key of the backup id.
pub const BACKUP_ID_TAG: &str = "backup_id";
/// Tag key of the dataset id.
pub const DATASET_ID_TAG: &str = "dataset_id";
/// Tag key of the source name.
pub const SOURCE_TAG: &str = "source";
/// Tag key prefix of the record's parts (`record.0`, `record.1`, ...).
pub const RECORD_TAG: &str = "record";

/// The record of `dataset` of `backup` as a snapshot carries it: JSON of
/// the backup with this one dataset, without the snapshot id and the
/// statistics.
pub fn record_json(backup: &Backup, dataset: &Dataset) -> String {
    let record = Backup {
        datasets: vec![Dataset {
            snapshot_id: String::new(),
            total_files: 0,
            total_bytes: 0,
            bytes_added: 0,
            duration: 0,
            ..dataset.clone()
        }],
        ..backup.clone()
    };
    serde_json::to_string(&record).unwrap_or_default()
}

/// The `record.N=HEX` tags of a record's JSON.
pub fn record_tags(json: &str) -> Vec<String> {
    let hex = hex::encode(json.as_bytes());
    hex.as_bytes()
        .chunks(RECORD_PART_BYTES)
        .enumerate()
        .map(|(i, part)| format!("{RECORD_TAG}.{i}={}", String::from_utf8_lossy(part)))
        .collect()
}

/// A snapshot as the repository lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct RepoSnapshot {
    /// Full snapshot id.
    pub id: String,
    /// When it was taken (with the offset it was written with).
    pub time: DateTime<FixedOffset>,
    /// Host it was taken on.
    pub host: String,
    /// Its tags.
    pub tags: Vec<String>,
    /// Statistics stored in the snapshot (restic 0.17 and later).
    pub stats: Option<SnapshotStats>,
}

/// The statistics a snapshot may carry.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SnapshotStats {
    /// Files read.
    pub total_files: i64,
    /// Bytes read.
    pub total_bytes: i64,
    /// Bytes added to the repository.
    pub bytes_added: i64,
    /// Seconds the backup took.
    pub duration_secs: f64,
}

impl RepoSnapshot {
    /// The value of the tag `key=value`, if present.
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags
            .iter()
            .find_map(|t| t.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
    }
}

/// What a snapshot says about itself.
#[derive(Debug, Clone, PartialEq)]
pub enum SnapshotRecord {
    /// A tabacco snapshot with its record: the backup holding its one
    /// dataset, the snapshot id and the statistics the snapshot has
    /// filled in.
    Record(Backup),
    /// A tabacco snapshot written before snapshots carried their record
    /// (or whose record was stripped): its ids only; reported, never
    /// indexed by guessing.
    Legacy {
        /// Backup id.
        backup_id: String,
        /// Dataset id.
        dataset_id: String,
        /// Source name.
        source: String,
    },
    /// Not a tabacco snapshot (no `backup_id`/`dataset_id`/`source` tags).
    Foreign,
    /// A tabacco snapshot whose tags are not acceptable (a broken rule, a
    /// record that disagrees with the tags); never indexed.
    Invalid(String),
}

/// Read what `snap` says about itself, checking every identifier.
pub fn read(snap: &RepoSnapshot) -> SnapshotRecord {
    let (Some(backup_id), Some(dataset_id), Some(source)) = (
        snap.tag(BACKUP_ID_TAG),
        snap.tag(DATASET_ID_TAG),
        snap.tag(SOURCE_TAG),
    ) else {
        return SnapshotRecord::Foreign;
    };
    let checks = [
        check_id("backup id", backup_id),
        check_id("dataset id", dataset_id),
        check_source_name(source),
        check_host(&snap.host),
    ];
    if let Some(e) = checks.into_iter().find_map(Result::err) {
        return SnapshotRecord::Invalid(e);
    }
    let mut parts: Vec<(usize, &str)> = Vec::new();
    for t in &snap.tags {
        let Some(rest) = t.strip_prefix(RECORD_TAG).and_then(|r| r.strip_prefix('.')) else {
            continue;
        };
        let Some((n, value)) = rest.split_once('=') else {
            return SnapshotRecord::Invalid(format!("tag {} has no value", excerpt(t)));
        };
        let Ok(n) = n.parse::<usize>() else {
            return SnapshotRecord::Invalid(format!("tag {} has no part number", excerpt(t)));
        };
        parts.push((n, value));
    }
    if parts.is_empty() {
        return SnapshotRecord::Legacy {
            backup_id: backup_id.to_string(),
            dataset_id: dataset_id.to_string(),
            source: source.to_string(),
        };
    }
    parts.sort_by_key(|(n, _)| *n);
    if parts.iter().enumerate().any(|(i, (n, _))| i != *n) {
        return SnapshotRecord::Invalid(format!(
            "record parts are not numbered 0 to {}",
            parts.len() - 1
        ));
    }
    let hex: String = parts.iter().map(|(_, v)| *v).collect();
    let bytes = match hex::decode(&hex) {
        Ok(b) => b,
        Err(e) => return SnapshotRecord::Invalid(format!("record is not hex: {e}")),
    };
    let mut backup: Backup = match serde_json::from_slice(&bytes) {
        Ok(b) => b,
        Err(e) => return SnapshotRecord::Invalid(format!("record is not a backup record: {e}")),
    };
    if backup.datasets.len() != 1 {
        return SnapshotRecord::Invalid(format!(
            "record holds {} datasets, not one",
            backup.datasets.len()
        ));
    }
    let mut dataset = backup.datasets.remove(0);
    let disagreements = [
        ("backup id", backup.id.as_str(), backup_id),
        ("dataset id", dataset.id.as_str(), dataset_id),
        ("source", dataset.source.as_str(), source),
        ("host", backup.host.as_str(), snap.host.as_str()),
    ];
    if let Some((what, rec, tag)) = disagreements.iter().find(|(_, a, b)| a != b) {
        return SnapshotRecord::Invalid(format!(
            "the record's {what} {} differs from the snapshot's {}",
            excerpt(rec),
            excerpt(tag)
        ));
    }
    if let Err(e) = check_record(&backup, &dataset) {
        return SnapshotRecord::Invalid(e);
    }
    if let Err(e) = crate::metadata::time_in_range("backup.timestamp", &backup.timestamp) {
        return SnapshotRecord::Invalid(e.to_string());
    }
    dataset.snapshot_id = snap.id.clone();
    if let Some(s) = snap.stats {
        dataset.total_files = s.total_files;
        dataset.total_bytes = s.total_bytes;
        dataset.bytes_added = s.bytes_added;
        dataset.duration = s.duration_secs.round() as i64;
    }
    backup.datasets = vec![dataset];
    SnapshotRecord::Record(backup)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Atom;

    fn record() -> (Backup, Dataset) {
        let b = Backup {
            id: "b1".into(),
            timestamp: "2026-11-28T10:00:00.123456Z".parse().unwrap(),
            host: "web1".into(),
            datasets: vec![],
        };
        let d = Dataset {
            id: "d1".into(),
            name: "sites, with spaces/and dirs".into(),
            source: "www".into(),
            atoms: vec![Atom {
                name: "a".into(),
                path: "x/y".into(),
                snapshot_path: Some("/srv/www/x/y".into()),
                ..Default::default()
            }],
            snapshot_id: "ignored".into(),
            total_files: 9,
            ..Default::default()
        };
        (b, d)
    }

    fn snapshot(tags: Vec<String>) -> RepoSnapshot {
        RepoSnapshot {
            id: "f".repeat(64),
            time: "2026-11-28T11:00:00+01:00".parse().unwrap(),
            host: "web1".into(),
            tags,
            stats: None,
        }
    }

    fn tags(b: &Backup, d: &Dataset) -> Vec<String> {
        let mut t = vec![
            format!("backup_id={}", b.id),
            format!("dataset_id={}", d.id),
            format!("source={}", d.source),
        ];
        t.extend(record_tags(&record_json(b, d)));
        t
    }

    #[test]
    fn a_record_round_trips_through_tags() {
        let (b, d) = record();
        let snap = snapshot(tags(&b, &d));
        assert!(snap.tags.iter().all(|t| !t.contains(',')));
        let SnapshotRecord::Record(back) = read(&snap) else {
            panic!("{:?}", read(&snap))
        };
        assert_eq!(back.id, b.id);
        assert_eq!(back.timestamp, b.timestamp);
        let ds = &back.datasets[0];
        assert_eq!(ds.name, d.name);
        assert_eq!(ds.atoms, d.atoms);
        assert_eq!(ds.snapshot_id, "f".repeat(64));
        assert_eq!(ds.total_files, 0, "statistics come from the snapshot only");
    }

    #[test]
    fn long_records_are_cut_into_numbered_parts() {
        let (b, mut d) = record();
        d.atoms = (0..3000)
            .map(|i| Atom {
                name: format!("atom-{i:05}"),
                ..Default::default()
            })
            .collect();
        let t = record_tags(&record_json(&b, &d));
        assert!(t.len() > 1);
        assert!(t.iter().all(|t| t.len() <= RECORD_PART_BYTES + 10));
        let mut all = tags(&b, &d);
        all.reverse();
        let SnapshotRecord::Record(back) = read(&snapshot(all)) else {
            panic!()
        };
        assert_eq!(back.datasets[0].atoms.len(), 3000);
    }

    #[test]
    fn tags_from_outside_are_checked() {
        let (b, d) = record();
        let snap = snapshot(vec!["other".into()]);
        assert_eq!(read(&snap), SnapshotRecord::Foreign);
        let snap = snapshot(tags(&b, &d)[..3].to_vec());
        assert!(matches!(read(&snap), SnapshotRecord::Legacy { .. }));
        // The record names another host than the snapshot.
        let mut snap = snapshot(tags(&b, &d));
        snap.host = "db1".into();
        let SnapshotRecord::Invalid(e) = read(&snap) else {
            panic!()
        };
        assert!(e.contains("host"), "{e}");
        // An atom that climbs out of its root.
        let (b, mut d) = record();
        d.atoms[0].name = "../etc".into();
        let SnapshotRecord::Invalid(e) = read(&snapshot(tags(&b, &d))) else {
            panic!()
        };
        assert!(e.contains("atoms[0]"), "{e}");
        let mut t = tags(&b, &d);
        t.push("record.7=00".into());
        assert!(matches!(read(&snapshot(t)), SnapshotRecord::Invalid(_)));
        let t = vec![
            "backup_id=b 1".into(),
            "dataset_id=d".into(),
            "source=s".into(),
        ];
        assert!(matches!(read(&snapshot(t)), SnapshotRecord::Invalid(_)));
    }
}
