//! The behaviour every metadata store backend must share: one suite of
//! tests, generated for the SQLite and the PostgreSQL store by
//! [`store_tests!`], so that the two behave identically.
//!
//! Each test is an `async fn(&dyn TestStore)` on an empty store. The
//! PostgreSQL variants run in a schema of their own on the server named by
//! `TABACCO_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`) and fail when it is
//! unreachable. The fixtures are also used by the backend-specific tests
//! and the server's tests.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::postgres::PostgresStore;
use super::sqlite::SqliteStore;
use super::{HostSummary, MetadataError, MetadataStore, ServerStore};
use crate::glob::Pattern;
use crate::model::{
    Atom, Backup, Dataset, DatasetRef, FindRequest, JobStatus, RemoveDatasetsRequest,
    UpdateActiveJobStatusRequest, atom_path,
};

/// A store under test: the server interface plus row counts.
#[async_trait]
pub(crate) trait TestStore: ServerStore {
    /// Rows in backups, datasets and atoms.
    async fn counts(&self) -> (i64, i64, i64);
}

#[async_trait]
impl TestStore for SqliteStore {
    async fn counts(&self) -> (i64, i64, i64) {
        super::sql::counts(self).await
    }
}

#[async_trait]
impl TestStore for PostgresStore {
    async fn counts(&self) -> (i64, i64, i64) {
        super::sql::counts(self).await
    }
}

pub(crate) fn ts(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

pub(crate) fn backup(id: &str, host: &str, t: &str) -> Backup {
    Backup {
        id: id.into(),
        timestamp: ts(t),
        host: host.into(),
        datasets: Vec::new(),
    }
}

pub(crate) fn dataset(id: &str, source: &str, name: &str, atoms: &[&str]) -> Dataset {
    Dataset {
        id: id.into(),
        name: name.into(),
        source: source.into(),
        atoms: atoms
            .iter()
            .map(|a| Atom {
                name: (*a).into(),
                path: String::new(),
                ..Default::default()
            })
            .collect(),
        snapshot_id: format!("snap-{id}"),
        total_files: 10,
        total_bytes: 2000,
        bytes_added: 300,
        duration: 4,
        ..Default::default()
    }
}

pub(crate) fn find(pattern: &str) -> FindRequest {
    FindRequest {
        pattern: pattern.into(),
        ..FindRequest::default()
    }
}

/// Requests whose query plan must seek an `atoms` index and never read
/// the whole table, on the [`fleet`]: literal, prefix glob, newest N,
/// older-than, host-filtered ([`check_find_plans`]).
fn indexed_find_requests() -> Vec<FindRequest> {
    vec![
        find("mysql/db/site1"),
        find("host1*/mysql/*"),
        FindRequest {
            num_versions: 1,
            ..find("mysql/db/site1")
        },
        FindRequest {
            num_versions: 1,
            older_than: Some(ts("2026-01-03T00:00:00Z")),
            ..find("host1*/mysql/*")
        },
        FindRequest {
            host: "h1".into(),
            ..find("mysql/*")
        },
        FindRequest {
            host: "h1".into(),
            num_versions: 1,
            ..find("*")
        },
    ]
}

/// The requests of a store's plan test: [`indexed_find_requests`], then a
/// bare `*` without host, which has no index range.
pub(crate) fn plan_requests() -> Vec<FindRequest> {
    let mut requests = indexed_find_requests();
    requests.push(find("*"));
    requests
}

/// Check a store's query plans on the [`fleet`], `plans` being those of
/// [`plan_requests`] in order (one line per plan node): each indexed
/// request seeks an `atoms` index and never reads the whole table
/// (`scans_atoms`, `seeks_atoms`: how the backend's plan says so); the
/// bare `*` does read it, so that the check can fail.
pub(crate) fn check_find_plans(
    plans: &[(FindRequest, Vec<String>)],
    scans_atoms: fn(&[String]) -> bool,
    seeks_atoms: fn(&[String]) -> bool,
) {
    let Some(((_, bare), indexed)) = plans.split_last() else {
        panic!("no plans to check");
    };
    assert_eq!(plans.len(), plan_requests().len(), "one plan per request");
    for (req, plan) in indexed {
        assert!(!scans_atoms(plan), "{req:?} scans atoms: {plan:#?}");
        assert!(seeks_atoms(plan), "{req:?}: {plan:#?}");
    }
    assert!(scans_atoms(bare), "{bare:#?}");
}

/// A small deterministic pseudo-random source (a linear congruential
/// generator) for the pattern cross-checks: the same cases on every run.
pub(crate) struct Lcg(pub(crate) u64);

impl Lcg {
    /// A number below `n`.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n
    }

    /// `len` characters drawn from `chars`.
    pub(crate) fn text(&mut self, chars: &[char], len: usize) -> String {
        (0..len).map(|_| chars[self.below(chars.len())]).collect()
    }
}

/// `backup_id:source/dataset/atom` for every atom returned, in order.
pub(crate) fn flat(backups: &[Backup]) -> Vec<String> {
    backups
        .iter()
        .flat_map(|b| {
            b.datasets.iter().flat_map(move |d| {
                d.atoms
                    .iter()
                    .map(move |a| format!("{}:{}", b.id, atom_path(&d.source, &d.name, &a.name)))
            })
        })
        .collect()
}

/// Host h1: backups b1 < b2 < b3, each with mysql/db {site1, site2} and
/// files/home {alice/docs, bob}; host h2: c1 (between b2 and b3) with
/// mysql/db {site1, site10}.
pub(crate) async fn fleet(s: &dyn MetadataStore) {
    for (i, (id, t)) in [
        ("b1", "2026-01-01T00:00:00Z"),
        ("b2", "2026-01-02T00:00:00Z"),
        ("b3", "2026-01-03T00:00:00Z"),
    ]
    .into_iter()
    .enumerate()
    {
        let b = backup(id, "h1", t);
        s.add_dataset(
            &b,
            &dataset(&format!("m{i}"), "mysql", "db", &["site1", "site2"]),
        )
        .await
        .unwrap();
        s.add_dataset(
            &b,
            &dataset(&format!("f{i}"), "files", "home", &["alice/docs", "bob"]),
        )
        .await
        .unwrap();
    }
    let c = backup("c1", "h2", "2026-01-02T12:00:00Z");
    s.add_dataset(&c, &dataset("mc", "mysql", "db", &["site1", "site10"]))
        .await
        .unwrap();
}

/// Generate a `#[tokio::test]` per backend for each named suite function.
macro_rules! store_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite_store {
            $(
                #[tokio::test]
                async fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let store = crate::metadata::sqlite::SqliteStore::open(&dir.path().join("meta.db"))
                        .await
                        .unwrap();
                    super::$name(&store).await;
                }
            )*
        }
        mod postgres_store {
            $(
                #[tokio::test]
                async fn $name() {
                    let schema = crate::metadata::postgres::test_support::TestSchema::new().await;
                    let store = schema.store().await;
                    super::$name(&store).await;
                    crate::metadata::ServerStore::close(&store).await;
                }
            )*
        }
    };
}

store_tests!(
    add_then_find_round_trips_every_field,
    timestamps_keep_microseconds_and_truncate_below,
    re_adding_a_dataset_changes_nothing,
    large_datasets_are_stored_whole,
    known_backup_with_other_host_or_time_is_a_conflict,
    add_rejects_missing_fields_and_duplicate_atoms,
    add_refuses_path_escapes_in_every_identifier,
    find_literal_returns_every_version_newest_first,
    find_prefix_glob_returns_only_matching_datasets_and_atoms,
    find_question_mark_class_and_star_across_slashes,
    find_host_and_older_than_filters,
    find_num_versions_keeps_newest_per_atom,
    num_versions_agrees_with_filtering_all_versions,
    bad_find_requests_are_bad_requests,
    active_jobs_keeps_the_latest_report_per_host,
    hosts_lists_last_backup_per_host,
    special_characters_in_paths_match_literally,
    random_patterns_agree_with_pattern_matches,
    recent_backups_lists_newest_first_without_atoms,
    concurrent_identical_adds_store_one_copy,
    out_of_range_times_are_bad_requests,
    empty_ranges_in_classes_match_only_their_start,
    verifications_keep_the_latest_result_and_the_last_ok,
    verifications_only_of_own_indexed_atoms,
    restore_record_fields_round_trip,
    add_refuses_bad_restore_record_fields,
    remove_datasets_removes_only_the_hosts_own_records,
    remove_datasets_refuses_bad_ids,
);

/// A dataset with the restore record of issue 11: the handler, the
/// repository id, and per atom its snapshot path, size, file count and
/// digest; atom `old` has none of them (as written before).
pub(crate) fn recorded_dataset(id: &str) -> Dataset {
    Dataset {
        handler: Some("pipe".into()),
        repository_id: Some("5e".repeat(32)),
        atoms: vec![
            Atom {
                name: "new".into(),
                snapshot_path: Some("/mysql/db/new".into()),
                size: Some(1 << 40),
                files: None,
                sha256: Some("0123456789abcdef".repeat(4)),
                ..Default::default()
            },
            Atom {
                name: "old".into(),
                ..Default::default()
            },
            Atom {
                name: "tree".into(),
                path: "www/tree".into(),
                snapshot_path: Some("/srv/a b/www/tree".into()),
                size: Some(0),
                files: Some(7),
                sha256: None,
            },
        ],
        ..dataset(id, "mysql", "db", &[])
    }
}

async fn restore_record_fields_round_trip(s: &dyn TestStore) {
    let b = backup("b1", "h1", "2026-01-01T00:00:00Z");
    let d = recorded_dataset("d1");
    s.add_dataset(&b, &d).await.unwrap();
    // Both query shapes: all versions, and the newest N.
    for req in [
        find("mysql/db/*"),
        FindRequest {
            num_versions: 1,
            ..find("mysql/db/*")
        },
    ] {
        let got = s.find_atoms(&req).await.unwrap();
        assert_eq!(got.len(), 1, "{req:?}");
        assert_eq!(got[0].datasets, vec![d.clone()], "{req:?}");
    }
    // A record without them reads back without them.
    s.add_dataset(&b, &dataset("d2", "files", "home", &["a"]))
        .await
        .unwrap();
    let got = s.find_atoms(&find("files/home/a")).await.unwrap();
    let ds = &got[0].datasets[0];
    assert_eq!((&ds.handler, &ds.repository_id), (&None, &None));
    assert_eq!(
        ds.atoms[0],
        Atom {
            name: "a".into(),
            ..Default::default()
        }
    );
    // Listings carry the dataset's fields too.
    let recent = s.recent_backups(1).await.unwrap();
    let listed = recent[0].datasets.iter().find(|x| x.id == "d1").unwrap();
    assert_eq!(listed.handler.as_deref(), Some("pipe"));
    assert_eq!(listed.repository_id, d.repository_id);
    // Re-adding the same record changes nothing.
    s.add_dataset(&b, &d).await.unwrap();
    assert_eq!(s.counts().await, (1, 2, 4));
}

async fn add_refuses_bad_restore_record_fields(s: &dyn TestStore) {
    let b = backup("b1", "h1", "2026-01-01T00:00:00Z");
    type Breaker = fn(&mut Dataset);
    let cases: [(&str, Breaker); 6] = [
        ("snapshot_path", |d| {
            d.atoms[0].snapshot_path = Some("/srv/../etc".into())
        }),
        ("snapshot_path", |d| {
            d.atoms[0].snapshot_path = Some("relative".into())
        }),
        ("sha256", |d| d.atoms[0].sha256 = Some("xyz".into())),
        ("size", |d| d.atoms[0].size = Some(-1)),
        ("handler", |d| d.handler = Some("a/b".into())),
        ("repository_id", |d| d.repository_id = Some("a,b".into())),
    ];
    for (field, break_it) in cases {
        let mut d = recorded_dataset("d1");
        break_it(&mut d);
        match s.add_dataset(&b, &d).await {
            Err(MetadataError::BadRequest(m)) => assert!(m.contains(field), "{field}: {m}"),
            other => panic!("{field}: {other:?}"),
        }
    }
    assert_eq!(s.counts().await, (0, 0, 0));
}

fn remove(host: &str, refs: &[(&str, &str)]) -> RemoveDatasetsRequest {
    RemoveDatasetsRequest {
        host: host.into(),
        datasets: refs
            .iter()
            .map(|(b, d)| DatasetRef {
                backup_id: (*b).into(),
                dataset_id: (*d).into(),
            })
            .collect(),
    }
}

async fn remove_datasets_removes_only_the_hosts_own_records(s: &dyn TestStore) {
    let b1 = backup("b1", "h1", "2026-01-01T00:00:00Z");
    let b2 = backup("b2", "h2", "2026-01-02T00:00:00Z");
    s.add_dataset(&b1, &dataset("d1", "src", "one", &["a", "b"]))
        .await
        .unwrap();
    s.add_dataset(&b1, &dataset("d2", "src", "two", &["c"]))
        .await
        .unwrap();
    s.add_dataset(&b2, &dataset("d3", "src", "one", &["a"]))
        .await
        .unwrap();
    assert_eq!(s.counts().await, (2, 3, 4));
    // h1 names its own record and one of h2's: only its own goes.
    let n = s
        .remove_datasets(&remove("h1", &[("b1", "d1"), ("b2", "d3"), ("b9", "d9")]))
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(s.counts().await, (2, 2, 2));
    let found = s.find_atoms(&find("src/*")).await.unwrap();
    let names: Vec<_> = found
        .iter()
        .flat_map(|b| b.datasets.iter().map(|d| d.id.clone()))
        .collect();
    assert_eq!(names, ["d3", "d2"]);
    // Removing again is not an error; the emptied backup goes.
    let n = s
        .remove_datasets(&remove("h1", &[("b1", "d1"), ("b1", "d2")]))
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(s.counts().await, (1, 1, 1));
    let hosts: Vec<_> = s
        .hosts()
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.host)
        .collect();
    assert_eq!(hosts, ["h2"]);
    // The record can be added again (reconcile re-indexing a snapshot).
    s.add_dataset(&b1, &dataset("d1", "src", "one", &["a", "b"]))
        .await
        .unwrap();
    assert_eq!(s.counts().await, (2, 2, 3));
    assert_eq!(s.remove_datasets(&remove("h1", &[])).await.unwrap(), 0);
}

async fn remove_datasets_refuses_bad_ids(s: &dyn TestStore) {
    for req in [
        remove("", &[("b", "d")]),
        remove("h 1", &[("b", "d")]),
        remove("h1", &[("../b", "d")]),
        remove("h1", &[("b", "d,e")]),
    ] {
        let e = s.remove_datasets(&req).await.unwrap_err();
        assert!(matches!(e, MetadataError::BadRequest(_)), "{req:?}: {e}");
    }
    let many = RemoveDatasetsRequest {
        host: "h1".into(),
        datasets: vec![
            DatasetRef {
                backup_id: "b".into(),
                dataset_id: "d".into()
            };
            super::MAX_REMOVE_DATASETS + 1
        ],
    };
    let e = s.remove_datasets(&many).await.unwrap_err();
    assert!(e.to_string().contains("at most"), "{e}");
}

async fn add_then_find_round_trips_every_field(s: &dyn TestStore) {
    let b = backup("bk-1", "host-a", "2026-03-04T05:06:07.123456Z");
    let mut d = Dataset {
        id: "ds-1".into(),
        name: "home".into(),
        source: "files".into(),
        atoms: vec![
            Atom {
                name: "bob".into(),
                path: "home/bob".into(),
                ..Default::default()
            },
            Atom {
                name: "alice".into(),
                path: "home/alice".into(),
                ..Default::default()
            },
        ],
        snapshot_id: "a".repeat(64),
        total_files: 123,
        total_bytes: 1 << 40,
        bytes_added: 98765,
        duration: 42,
        ..Default::default()
    };
    s.add_dataset(&b, &d).await.unwrap();
    let got = s.find_atoms(&find("files/home/*")).await.unwrap();
    d.atoms.sort_by(|x, y| x.name.cmp(&y.name));
    let mut want = b.clone();
    want.datasets = vec![d];
    assert_eq!(got, vec![want]);
}

async fn timestamps_keep_microseconds_and_truncate_below(s: &dyn TestStore) {
    let b = backup("b", "h", "2026-03-04T05:06:07.123456789Z");
    s.add_dataset(&b, &dataset("d", "s", "n", &["a"]))
        .await
        .unwrap();
    let got = s.find_atoms(&find("s/n/a")).await.unwrap();
    assert_eq!(got[0].timestamp, ts("2026-03-04T05:06:07.123456Z"));
    // A retry with the same nanosecond timestamp is the same backup.
    s.add_dataset(&b, &dataset("d2", "s", "n2", &["a"]))
        .await
        .unwrap();
}

async fn re_adding_a_dataset_changes_nothing(s: &dyn TestStore) {
    let b = backup("b1", "h1", "2026-01-01T00:00:00Z");
    let d = dataset("d1", "mysql", "db", &["x", "y"]);
    s.add_dataset(&b, &d).await.unwrap();
    s.add_dataset(&b, &d).await.unwrap();
    assert_eq!(s.counts().await, (1, 1, 2));
    // Same keys, different contents: still a success, stored one kept.
    let other = dataset("d1", "mysql", "db", &["x", "y", "z"]);
    s.add_dataset(&b, &other).await.unwrap();
    assert_eq!(s.counts().await, (1, 1, 2));
    // Another dataset of the same backup reuses the backup row.
    s.add_dataset(&b, &dataset("d2", "files", "home", &["x"]))
        .await
        .unwrap();
    assert_eq!(s.counts().await, (1, 2, 3));
    let got = s.find_atoms(&find("*")).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].datasets.len(), 2);
}

async fn large_datasets_are_stored_whole(s: &dyn TestStore) {
    let names: Vec<String> = (0..450).map(|i| format!("a{i:04}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let b = backup("b", "h", "2026-01-01T00:00:00Z");
    s.add_dataset(&b, &dataset("d", "s", "n", &refs))
        .await
        .unwrap();
    let n = refs.len() as i64;
    assert_eq!(s.counts().await, (1, 1, n));
    let got = s.find_atoms(&find("s/n/a*")).await.unwrap();
    let atoms: Vec<&str> = got[0].datasets[0]
        .atoms
        .iter()
        .map(|a| a.name.as_str())
        .collect();
    assert_eq!(atoms, refs);
    // A duplicate in the last chunk rolls back the whole dataset.
    let mut dup = refs.clone();
    dup[0] = "a0000x";
    dup.push("a0000x");
    let err = s
        .add_dataset(&b, &dataset("d2", "s", "n", &dup))
        .await
        .unwrap_err();
    assert!(matches!(err, MetadataError::BadRequest(_)), "{err}");
    assert_eq!(s.counts().await, (1, 1, n));
}

async fn known_backup_with_other_host_or_time_is_a_conflict(s: &dyn TestStore) {
    let b = backup("b1", "h1", "2026-01-01T00:00:00Z");
    s.add_dataset(&b, &dataset("d1", "s", "n", &["a"]))
        .await
        .unwrap();
    let other_host = backup("b1", "h2", "2026-01-01T00:00:00Z");
    let err = s
        .add_dataset(&other_host, &dataset("d2", "s", "n", &["a"]))
        .await
        .unwrap_err();
    assert!(matches!(err, MetadataError::Conflict(_)), "{err}");
    let other_time = backup("b1", "h1", "2026-01-01T00:00:01Z");
    let err = s
        .add_dataset(&other_time, &dataset("d2", "s", "n", &["a"]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already recorded"), "{err}");
    assert_eq!(s.counts().await, (1, 1, 1));
}

async fn add_rejects_missing_fields_and_duplicate_atoms(s: &dyn TestStore) {
    let b = backup("b1", "h1", "2026-01-01T00:00:00Z");
    let d = dataset("d1", "s", "n", &["a"]);
    let cases: Vec<(Backup, Dataset, &str)> = vec![
        (
            backup("", "h1", "2026-01-01T00:00:00Z"),
            d.clone(),
            "backup id",
        ),
        (
            backup("b1", "", "2026-01-01T00:00:00Z"),
            d.clone(),
            "backup.host",
        ),
        (b.clone(), dataset("", "s", "n", &["a"]), "dataset id"),
        (
            b.clone(),
            dataset("d1", "s", "n", &["a", ""]),
            "dataset.atoms[1].name",
        ),
        (
            b.clone(),
            dataset("d1", "s", "n", &["a", "b", "a"]),
            "twice",
        ),
        (
            b.clone(),
            dataset("d1", "s", "n", &["a\0b"]),
            "control character",
        ),
        (
            b.clone(),
            Dataset {
                total_files: -1,
                ..d.clone()
            },
            "dataset.total_files",
        ),
        (
            b.clone(),
            Dataset {
                duration: -5,
                ..d.clone()
            },
            "dataset.duration",
        ),
    ];
    for (b, d, what) in cases {
        match s.add_dataset(&b, &d).await {
            Err(MetadataError::BadRequest(msg)) => assert!(msg.contains(what), "{msg}"),
            other => panic!("{what}: expected BadRequest, got {other:?}"),
        }
    }
    assert_eq!(s.counts().await, (0, 0, 0));
}

/// Issue 10: a record whose identifiers could leave a restore's target
/// (or a pipe atom's snapshot path) is refused with the field named, and
/// nothing is stored.
async fn add_refuses_path_escapes_in_every_identifier(s: &dyn TestStore) {
    let b = || backup("b1", "h1", "2026-01-01T00:00:00Z");
    let d = || dataset("d1", "files", "docs", &["a"]);
    let mut cases: Vec<(Backup, Dataset, &str)> = Vec::new();
    for bad in ["/tmp/ESCAPED", "..", ".", "../x", "a/b"] {
        cases.push((
            Backup {
                id: bad.into(),
                ..b()
            },
            d(),
            "backup.id",
        ));
        cases.push((
            Backup {
                host: bad.into(),
                ..b()
            },
            d(),
            "backup.host",
        ));
        cases.push((
            b(),
            Dataset {
                id: bad.into(),
                ..d()
            },
            "dataset.id",
        ));
        cases.push((
            b(),
            Dataset {
                source: bad.into(),
                ..d()
            },
            "dataset.source",
        ));
    }
    for bad in ["..", ".", "../x", "a/../..", "/abs", "a//b", "a/"] {
        cases.push((
            b(),
            Dataset {
                name: bad.into(),
                ..d()
            },
            "dataset.name",
        ));
        cases.push((
            b(),
            dataset("d1", "files", "docs", &[bad]),
            "dataset.atoms[0].name",
        ));
    }
    for bad in ["/etc", "../../etc", "a/../../b"] {
        let mut ds = d();
        ds.atoms[0].path = bad.into();
        cases.push((b(), ds, "dataset.atoms[0].path"));
    }
    for (b, d, field) in cases {
        match s.add_dataset(&b, &d).await {
            Err(MetadataError::BadRequest(msg)) => {
                assert!(msg.starts_with(&format!("{field}: ")), "{field}: {msg}")
            }
            other => panic!("{field} ({b:?}, {d:?}): expected BadRequest, got {other:?}"),
        }
    }
    assert_eq!(s.counts().await, (0, 0, 0));
}

async fn find_literal_returns_every_version_newest_first(s: &dyn TestStore) {
    fleet(s).await;
    let got = s.find_atoms(&find("mysql/db/site1")).await.unwrap();
    assert_eq!(
        flat(&got),
        [
            "b3:mysql/db/site1",
            "c1:mysql/db/site1",
            "b2:mysql/db/site1",
            "b1:mysql/db/site1"
        ]
    );
    for pair in got.windows(2) {
        assert!(pair[0].timestamp > pair[1].timestamp);
    }
    // Only the matching dataset, with all its stored fields.
    assert_eq!(got[0].datasets.len(), 1);
    let d = &got[0].datasets[0];
    assert_eq!(
        (
            d.id.as_str(),
            d.snapshot_id.as_str(),
            d.total_files,
            d.total_bytes
        ),
        ("m2", "snap-m2", 10, 2000)
    );
    assert_eq!((d.bytes_added, d.duration), (300, 4));
    assert_eq!(got[1].host, "h2");
    assert!(
        s.find_atoms(&find("mysql/db/site"))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        s.find_atoms(&find("MYSQL/db/site1"))
            .await
            .unwrap()
            .is_empty()
    );
}

async fn find_prefix_glob_returns_only_matching_datasets_and_atoms(s: &dyn TestStore) {
    fleet(s).await;
    let got = s.find_atoms(&find("files/*")).await.unwrap();
    assert_eq!(
        flat(&got),
        [
            "b3:files/home/alice/docs",
            "b3:files/home/bob",
            "b2:files/home/alice/docs",
            "b2:files/home/bob",
            "b1:files/home/alice/docs",
            "b1:files/home/bob",
        ]
    );
    assert!(got.iter().all(|b| b.datasets.len() == 1));
    // No backup without a match (c1 has no files dataset).
    assert!(got.iter().all(|b| b.id != "c1"));
    let got = s.find_atoms(&find("files/home/b*")).await.unwrap();
    assert_eq!(
        flat(&got),
        [
            "b3:files/home/bob",
            "b2:files/home/bob",
            "b1:files/home/bob"
        ]
    );
    assert_eq!(got[0].datasets[0].atoms.len(), 1);
}

async fn find_question_mark_class_and_star_across_slashes(s: &dyn TestStore) {
    fleet(s).await;
    let req = FindRequest {
        host: "h2".into(),
        ..find("mysql/db/site?")
    };
    assert_eq!(
        flat(&s.find_atoms(&req).await.unwrap()),
        ["c1:mysql/db/site1"]
    );
    let req = FindRequest {
        num_versions: 1,
        ..find("mysql/db/site[2-9]")
    };
    assert_eq!(
        flat(&s.find_atoms(&req).await.unwrap()),
        ["b3:mysql/db/site2"]
    );
    let req = FindRequest {
        num_versions: 1,
        ..find("*/[ab]*")
    };
    // Matches home/alice/docs via '*' spanning "files/home" and "lice/docs".
    assert_eq!(
        flat(&s.find_atoms(&req).await.unwrap()),
        ["b3:files/home/alice/docs", "b3:files/home/bob"]
    );
    let req = FindRequest {
        num_versions: 1,
        ..find("f*docs")
    };
    assert_eq!(
        flat(&s.find_atoms(&req).await.unwrap()),
        ["b3:files/home/alice/docs"]
    );
    let req = FindRequest {
        host: "h2".into(),
        ..find("*")
    };
    assert_eq!(
        flat(&s.find_atoms(&req).await.unwrap()),
        ["c1:mysql/db/site1", "c1:mysql/db/site10"]
    );
}

async fn find_host_and_older_than_filters(s: &dyn TestStore) {
    fleet(s).await;
    let req = FindRequest {
        host: "h1".into(),
        ..find("mysql/db/site1")
    };
    assert_eq!(
        flat(&s.find_atoms(&req).await.unwrap()),
        [
            "b3:mysql/db/site1",
            "b2:mysql/db/site1",
            "b1:mysql/db/site1"
        ]
    );
    let req = FindRequest {
        host: "nope".into(),
        ..find("*")
    };
    assert!(s.find_atoms(&req).await.unwrap().is_empty());
    // Strictly before: b2's own timestamp excludes b2.
    let req = FindRequest {
        older_than: Some(ts("2026-01-02T00:00:00Z")),
        ..find("mysql/db/site1")
    };
    assert_eq!(
        flat(&s.find_atoms(&req).await.unwrap()),
        ["b1:mysql/db/site1"]
    );
    let req = FindRequest {
        older_than: Some(ts("2026-01-02T00:00:00.000001Z")),
        ..find("mysql/db/site1")
    };
    assert_eq!(
        flat(&s.find_atoms(&req).await.unwrap()),
        ["b2:mysql/db/site1", "b1:mysql/db/site1"]
    );
}

async fn find_num_versions_keeps_newest_per_atom(s: &dyn TestStore) {
    fleet(s).await;
    let req = FindRequest {
        num_versions: 1,
        ..find("mysql/*")
    };
    assert_eq!(
        flat(&s.find_atoms(&req).await.unwrap()),
        [
            "b3:mysql/db/site1",
            "b3:mysql/db/site2",
            "c1:mysql/db/site10"
        ]
    );
    let req = FindRequest {
        num_versions: 2,
        ..find("mysql/*")
    };
    assert_eq!(
        flat(&s.find_atoms(&req).await.unwrap()),
        [
            "b3:mysql/db/site1",
            "b3:mysql/db/site2",
            "c1:mysql/db/site1",
            "c1:mysql/db/site10",
            "b2:mysql/db/site2",
        ]
    );
    // Versions are counted after the host and time filters.
    let req = FindRequest {
        num_versions: 1,
        host: "h1".into(),
        older_than: Some(ts("2026-01-03T00:00:00Z")),
        ..find("mysql/db/site1")
    };
    assert_eq!(
        flat(&s.find_atoms(&req).await.unwrap()),
        ["b2:mysql/db/site1"]
    );
    let req = FindRequest {
        num_versions: 100,
        ..find("mysql/db/site1")
    };
    assert_eq!(s.find_atoms(&req).await.unwrap().len(), 4);
}

async fn num_versions_agrees_with_filtering_all_versions(s: &dyn TestStore) {
    fleet(s).await;
    // A tie: another host's backup at b2's time holding the same path.
    s.add_dataset(
        &backup("a9", "h3", "2026-01-02T00:00:00Z"),
        &dataset("mt", "mysql", "db", &["site1", "site3"]),
    )
    .await
    .unwrap();
    let mut checked = 0;
    for pattern in [
        "*",
        "mysql/db/site1",
        "mysql/*",
        "*/site1*",
        "files/home/*",
        "[fm]*/[bd]*",
        "nothing*",
    ] {
        for host in ["", "h1", "h2", "h3"] {
            for older_than in [None, Some(ts("2026-01-02T00:00:00Z"))] {
                let all = FindRequest {
                    pattern: pattern.into(),
                    host: host.into(),
                    num_versions: 0,
                    older_than,
                };
                let all_flat = flat(&s.find_atoms(&all).await.unwrap());
                for n in 1..=3 {
                    let req = FindRequest {
                        num_versions: n,
                        ..all.clone()
                    };
                    // Keep the first n entries of each path, in the
                    // newest-first order of the full result.
                    let mut seen = std::collections::HashMap::new();
                    let want: Vec<String> = all_flat
                        .iter()
                        .filter(|e| {
                            let path = e.split_once(':').unwrap().1.to_owned();
                            let k = seen.entry(path).or_insert(0);
                            *k += 1;
                            *k <= n
                        })
                        .cloned()
                        .collect();
                    let got = s.find_atoms(&req).await.unwrap();
                    assert_eq!(flat(&got), want, "{req:?}");
                    checked += usize::from(want.len() < all_flat.len());
                }
            }
        }
    }
    assert!(checked > 20, "only {checked} requests dropped versions");
}

async fn bad_find_requests_are_bad_requests(s: &dyn TestStore) {
    fleet(s).await;
    for req in [
        find(""),
        find("mysql/[db"),
        find("x[^]"),
        FindRequest {
            num_versions: -1,
            ..find("*")
        },
    ] {
        match s.find_atoms(&req).await {
            Err(MetadataError::BadRequest(msg)) => assert!(!msg.is_empty()),
            other => panic!("{req:?}: expected BadRequest, got {other:?}"),
        }
    }
}

/// The `detail` lines of EXPLAIN QUERY PLAN for the find query.
async fn active_jobs_keeps_the_latest_report_per_host(s: &dyn TestStore) {
    let job = |host: &str, id: &str| JobStatus {
        host: host.into(),
        job_id: id.into(),
        backup_id: "b".into(),
        dataset_id: "d".into(),
        dataset_source: "src".into(),
        status: Some(crate::model::RunningJobStatus {
            percent_done: 0.5,
            current_files: vec!["/x".into()],
            ..Default::default()
        }),
        dataset_name: Some("users".into()),
        state: Some("running".into()),
    };
    let before = Utc::now();
    for jobs in [
        vec![job("h1", "j1")],
        vec![job("h1", "j2"), job("h1", "j3")],
    ] {
        s.update_active_job_status(&UpdateActiveJobStatusRequest {
            host: "h1".into(),
            active_jobs: jobs,
            ..Default::default()
        })
        .await
        .unwrap();
    }
    // The per-source state and outbox backlog of the report come back as
    // sent; a report without them (an older agent) has none.
    let sources = vec![crate::model::SourceReport {
        name: "ldap".into(),
        schedule: Some("@every 1h".into()),
        next_run: Some(ts("2026-01-01T01:00:00Z")),
        last_run: Some(crate::model::RunReport {
            result: crate::model::RunResult::Partial,
            finished_at: ts("2026-01-01T00:00:00Z"),
            duration_seconds: 1.5,
            backup_id: Some("b".into()),
            job_id: None,
            error: Some("dataset 'x': slapcat: permission denied".into()),
            datasets_recorded: 2,
            datasets_failed: 1,
            atoms_failed: 3,
        }),
        last_success: None,
        running: false,
        last_forget: Some(crate::model::MaintenanceRun {
            finished_at: ts("2026-01-01T00:00:01Z"),
            ok: false,
            summary: "the metadata server is unreachable".into(),
        }),
    }];
    s.update_active_job_status(&UpdateActiveJobStatusRequest {
        host: "h0".into(),
        active_jobs: vec![],
        sources: Some(sources.clone()),
        outbox_pending: Some(4),
        outbox_rejected: Some(0),
        report_interval_seconds: Some(30.0),
        prune_schedule: Some("0 4 * * 0".into()),
        last_prune: Some(crate::model::MaintenanceRun {
            finished_at: ts("2026-01-01T04:00:00Z"),
            ok: true,
            summary: "restic prune: 12 MiB freed".into(),
        }),
        repository_id: Some("5e5b".repeat(16)),
    })
    .await
    .unwrap();
    let got = s.active_jobs().await.unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!((got[0].host.as_str(), got[0].jobs.len()), ("h0", 0));
    assert_eq!(got[0].state.sources.as_ref(), Some(&sources));
    assert_eq!(got[0].state.outbox_pending, Some(4));
    assert_eq!(got[0].state.report_interval_seconds, Some(30.0));
    assert_eq!(got[0].state.prune_schedule.as_deref(), Some("0 4 * * 0"));
    assert!(got[0].state.last_prune.as_ref().is_some_and(|p| p.ok));
    assert_eq!(got[0].state.repository_id, Some("5e5b".repeat(16)));
    assert_eq!(got[1].host, "h1");
    assert_eq!(got[1].state, crate::metadata::HostState::default());
    assert_eq!(got[1].jobs, vec![job("h1", "j2"), job("h1", "j3")]);
    assert!(got[1].received >= before - chrono::Duration::microseconds(1));
    assert!(got[1].received <= Utc::now());

    let err = s
        .update_active_job_status(&UpdateActiveJobStatusRequest::default())
        .await
        .unwrap_err();
    assert!(matches!(err, MetadataError::BadRequest(_)), "{err}");
    let mut nan = job("h2", "j");
    if let Some(st) = nan.status.as_mut() {
        st.percent_done = f64::NAN;
    }
    let err = s
        .update_active_job_status(&UpdateActiveJobStatusRequest {
            host: "h2".into(),
            active_jobs: vec![nan],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(err, MetadataError::BadRequest(_)), "{err}");
    assert_eq!(s.active_jobs().await.unwrap().len(), 2);
}

async fn hosts_lists_last_backup_per_host(s: &dyn TestStore) {
    assert!(s.hosts().await.unwrap().is_empty());
    fleet(s).await;
    assert_eq!(
        s.hosts().await.unwrap(),
        vec![
            HostSummary {
                host: "h1".into(),
                last_backup: ts("2026-01-03T00:00:00Z"),
                backups: 3,
            },
            HostSummary {
                host: "h2".into(),
                last_backup: ts("2026-01-02T12:00:00Z"),
                backups: 1,
            },
        ]
    );
}

/// Every global path in a result, in order, without backup ids.
fn paths(backups: &[Backup]) -> Vec<String> {
    flat(backups)
        .into_iter()
        .map(|e| e.split_once(':').unwrap().1.to_owned())
        .collect()
}

async fn special_characters_in_paths_match_literally(s: &dyn TestStore) {
    let atoms = [
        "a%b",
        "a_b",
        "x\\y",
        "$1",
        "ü/ñ",
        "line break",
        "star*",
        "[br]",
        "dot.",
    ];
    s.add_dataset(
        &backup("b1", "h", "2026-01-01T00:00:00Z"),
        &dataset("d1", "my.sql", "d(b)", &atoms),
    )
    .await
    .unwrap();
    // A second, similar source that only a wrongly escaped '.' matches.
    s.add_dataset(
        &backup("b1", "h", "2026-01-01T00:00:00Z"),
        &dataset("d2", "myXsql", "d(b)", &["a%b"]),
    )
    .await
    .unwrap();
    let cases: &[(&str, &[&str])] = &[
        ("my.sql/d(b)/a%b", &["my.sql/d(b)/a%b"]),
        ("my.sql/d(b)/a_*", &["my.sql/d(b)/a_b"]),
        ("my.sql/d(b)/a?b", &["my.sql/d(b)/a%b", "my.sql/d(b)/a_b"]),
        ("my.sql/d(b)/x\\*", &["my.sql/d(b)/x\\y"]),
        ("*[*]", &["my.sql/d(b)/star*"]),
        ("*[[]br]", &["my.sql/d(b)/[br]"]),
        ("*/ü/*", &["my.sql/d(b)/ü/ñ"]),
        ("my.sql/d(b)/line?break", &["my.sql/d(b)/line break"]),
        ("*line*", &["my.sql/d(b)/line break"]),
        ("*$1", &["my.sql/d(b)/$1"]),
        ("*.", &["my.sql/d(b)/dot."]),
        ("my.sql/*%*", &["my.sql/d(b)/a%b"]),
        ("my?sql/*%*", &["my.sql/d(b)/a%b", "myXsql/d(b)/a%b"]),
        ("mysql/*", &[]),
        ("my.sql/d(b)/a", &[]),
    ];
    for (pattern, want) in cases {
        let mut got = paths(&s.find_atoms(&find(pattern)).await.unwrap());
        got.sort();
        assert_eq!(&got, want, "pattern {pattern:?}");
    }
    assert_eq!(
        paths(&s.find_atoms(&find("my.sql/*")).await.unwrap()).len(),
        atoms.len()
    );
}

async fn random_patterns_agree_with_pattern_matches(s: &dyn TestStore) {
    let names = [
        "a", "ab", "a/b", "b/a", "aa/bb", "a-b", "a]b", "é", "é/a", "b^", "a*b", "ba", "x",
    ];
    s.add_dataset(
        &backup("b1", "h", "2026-01-01T00:00:00Z"),
        &dataset("d1", "s", "a", &names),
    )
    .await
    .unwrap();
    s.add_dataset(
        &backup("b2", "h", "2026-01-02T00:00:00Z"),
        &dataset("d1", "s", "b", &names),
    )
    .await
    .unwrap();
    let all: Vec<String> = ["a", "b"]
        .iter()
        .flat_map(|ds| names.iter().map(move |n| atom_path("s", ds, n)))
        .collect();
    let mut seed: u64 = 0xc0ffee;
    let mut next = |n: usize| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((seed >> 33) as usize) % n
    };
    let pat_chars = ['s', '/', 'a', 'b', '*', '?', '[', ']', '^', '-', 'é'];
    let (mut tried, mut nonempty) = (0, 0);
    for _ in 0..150 {
        // Half the patterns are mutations of a stored path, so that many
        // match something.
        let p: String = if next(2) == 0 {
            let base = &all[next(all.len())];
            base.chars()
                .map(|c| match next(10) {
                    0..=3 => c.to_string(),
                    4 | 5 => "?".into(),
                    6 => "*".into(),
                    7 => format!("[{c}x]"),
                    8 => "[^x]".into(),
                    _ => pat_chars[next(pat_chars.len())].to_string(),
                })
                .collect()
        } else {
            (0..1 + next(6))
                .map(|_| pat_chars[next(pat_chars.len())])
                .collect()
        };
        let Ok(pattern) = Pattern::parse(&p) else {
            continue;
        };
        tried += 1;
        let mut want: Vec<String> = all.iter().filter(|x| pattern.matches(x)).cloned().collect();
        want.sort();
        for num_versions in [0, 1] {
            let req = FindRequest {
                num_versions,
                ..find(&p)
            };
            let mut got = paths(&s.find_atoms(&req).await.unwrap());
            got.sort();
            assert_eq!(got, want, "{req:?}");
        }
        nonempty += usize::from(!want.is_empty());
    }
    assert!(
        tried > 80 && nonempty > 30,
        "{tried} tried, {nonempty} matched"
    );
}

async fn recent_backups_lists_newest_first_without_atoms(s: &dyn TestStore) {
    assert!(s.recent_backups(10).await.unwrap().is_empty());
    fleet(s).await;
    let got = s.recent_backups(2).await.unwrap();
    let ids: Vec<&str> = got.iter().map(|b| b.id.as_str()).collect();
    assert_eq!(ids, ["b3", "c1"]);
    assert_eq!(got[0].host, "h1");
    assert_eq!(got[0].timestamp, ts("2026-01-03T00:00:00Z"));
    let ds: Vec<(&str, &str)> = got[0]
        .datasets
        .iter()
        .map(|d| (d.source.as_str(), d.id.as_str()))
        .collect();
    assert_eq!(ds, [("files", "f2"), ("mysql", "m2")]);
    assert!(
        got.iter()
            .all(|b| b.datasets.iter().all(|d| d.atoms.is_empty()))
    );
    assert_eq!(got[0].datasets[1].snapshot_id, "snap-m2");
    assert_eq!(got[0].datasets[1].total_bytes, 2000);
    assert_eq!(s.recent_backups(100).await.unwrap().len(), 4);
    assert!(s.recent_backups(0).await.unwrap().is_empty());
    // One host's backups, in the same form.
    let got = s.host_backups("h1", 2).await.unwrap();
    let ids: Vec<&str> = got.iter().map(|b| b.id.as_str()).collect();
    assert_eq!(ids, ["b3", "b2"]);
    assert!(got.iter().all(|b| b.host == "h1"));
    assert_eq!(got[0].datasets.len(), 2);
    assert!(s.host_backups("nobody", 10).await.unwrap().is_empty());
    s.ping().await.unwrap();
}

async fn concurrent_identical_adds_store_one_copy(s: &dyn TestStore) {
    let b = backup("b1", "h1", "2026-01-01T00:00:00Z");
    let d = dataset("d1", "mysql", "db", &["x", "y"]);
    let results = futures::future::join_all((0..8).map(|_| s.add_dataset(&b, &d))).await;
    for r in results {
        r.unwrap();
    }
    assert_eq!(s.counts().await, (1, 1, 2));
    // Different datasets of one new backup, all at once.
    let b2 = backup("b2", "h1", "2026-01-02T00:00:00Z");
    let sets: Vec<Dataset> = (0..8)
        .map(|i| dataset(&format!("d{i}"), "src", &format!("n{i}"), &["x", "y"]))
        .collect();
    let results = futures::future::join_all(sets.iter().map(|d| s.add_dataset(&b2, d))).await;
    for r in results {
        r.unwrap();
    }
    assert_eq!(s.counts().await, (2, 9, 18));
}

async fn out_of_range_times_are_bad_requests(s: &dyn TestStore) {
    let mut b = backup("b1", "h1", "2026-01-01T00:00:00Z");
    b.timestamp = "+10000-01-01T00:00:00Z".parse().unwrap();
    let err = s
        .add_dataset(&b, &dataset("d", "s", "n", &["a"]))
        .await
        .unwrap_err();
    assert!(matches!(err, MetadataError::BadRequest(_)), "{err}");
    b.timestamp = DateTime::<Utc>::MIN_UTC;
    assert!(matches!(
        s.add_dataset(&b, &dataset("d", "s", "n", &["a"])).await,
        Err(MetadataError::BadRequest(_))
    ));
    let req = FindRequest {
        older_than: Some(DateTime::<Utc>::MIN_UTC),
        ..find("*")
    };
    assert!(matches!(
        s.find_atoms(&req).await,
        Err(MetadataError::BadRequest(_))
    ));
    // The edges are fine.
    b.timestamp = ts("9999-12-31T23:59:59.999999Z");
    s.add_dataset(&b, &dataset("d", "s", "n", &["a"]))
        .await
        .unwrap();
    let req = FindRequest {
        older_than: Some(ts("0001-01-01T00:00:00Z")),
        ..find("*")
    };
    assert!(s.find_atoms(&req).await.unwrap().is_empty());
    assert_eq!(s.counts().await, (1, 1, 1));
}

async fn empty_ranges_in_classes_match_only_their_start(s: &dyn TestStore) {
    fleet(s).await;
    for num_versions in [0, 1] {
        let req = FindRequest {
            num_versions,
            ..find("mysql/db/site[9-1]")
        };
        assert!(s.find_atoms(&req).await.unwrap().is_empty(), "{req:?}");
        // '2' is a member, the empty range 2-1 adds nothing.
        let req = FindRequest {
            num_versions,
            ..find("mysql/db/site[2-1]")
        };
        let got = flat(&s.find_atoms(&req).await.unwrap());
        assert!(
            !got.is_empty() && got.iter().all(|e| e.ends_with("site2")),
            "{got:?}"
        );
    }
    let req = FindRequest {
        num_versions: 1,
        ..find("mysql/db/site[^9-1]")
    };
    assert_eq!(
        flat(&s.find_atoms(&req).await.unwrap()),
        ["b3:mysql/db/site1", "b3:mysql/db/site2"]
    );
}

fn verification(
    backup_id: &str,
    dataset_id: &str,
    atom: &str,
    at: &str,
    ok: bool,
) -> crate::model::Verification {
    crate::model::Verification {
        backup_id: backup_id.into(),
        dataset_id: dataset_id.into(),
        atom: atom.into(),
        verified_at: ts(at),
        result: if ok {
            crate::model::VerifyResult::Ok
        } else {
            crate::model::VerifyResult::Failed
        },
        error: (!ok).then(|| "sha256 differs".to_string()),
        last_ok: None,
    }
}

fn versions(list: &[(&str, &str, &str)]) -> crate::model::GetVerificationsRequest {
    crate::model::GetVerificationsRequest {
        versions: list
            .iter()
            .map(|(b, d, a)| crate::model::AtomVersion {
                backup_id: (*b).into(),
                dataset_id: (*d).into(),
                atom: (*a).into(),
            })
            .collect(),
    }
}

async fn verifications_keep_the_latest_result_and_the_last_ok(s: &dyn TestStore) {
    use crate::model::{AddVerificationsRequest, VerifyResult};
    fleet(s).await;
    let add = |list: Vec<crate::model::Verification>| AddVerificationsRequest {
        host: "h1".into(),
        verifications: list,
    };
    let ask = versions(&[
        ("b1", "m0", "site1"),
        ("b1", "m0", "site2"),
        ("b2", "m1", "site1"),
    ]);
    assert!(s.get_verifications(&ask).await.unwrap().is_empty());
    s.add_verifications(&add(vec![
        verification("b1", "m0", "site1", "2026-02-01T00:00:00.123456Z", true),
        verification("b1", "m0", "site2", "2026-02-01T00:00:00Z", false),
    ]))
    .await
    .unwrap();
    let mut got = s.get_verifications(&ask).await.unwrap();
    got.sort_by(|a, b| a.atom.cmp(&b.atom));
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].result, VerifyResult::Ok);
    assert_eq!(got[0].verified_at, ts("2026-02-01T00:00:00.123456Z"));
    assert_eq!(got[0].last_ok, Some(got[0].verified_at));
    assert_eq!(got[1].result, VerifyResult::Failed);
    assert_eq!(got[1].error.as_deref(), Some("sha256 differs"));
    assert_eq!(got[1].last_ok, None);

    // A later failure replaces the result but keeps the last ok time; an
    // older result replaces nothing.
    s.add_verifications(&add(vec![verification(
        "b1",
        "m0",
        "site1",
        "2026-02-03T00:00:00Z",
        false,
    )]))
    .await
    .unwrap();
    s.add_verifications(&add(vec![verification(
        "b1",
        "m0",
        "site1",
        "2026-02-02T00:00:00Z",
        true,
    )]))
    .await
    .unwrap();
    let got = s
        .get_verifications(&versions(&[("b1", "m0", "site1")]))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].result, got[0].verified_at, got[0].last_ok),
        (
            VerifyResult::Failed,
            ts("2026-02-03T00:00:00Z"),
            Some(ts("2026-02-01T00:00:00.123456Z"))
        )
    );
    // Only what was asked for comes back.
    let got = s
        .get_verifications(&versions(&[("b1", "m0", "site2"), ("b9", "x", "y")]))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].atom, "site2");
}

async fn verifications_only_of_own_indexed_atoms(s: &dyn TestStore) {
    use crate::model::AddVerificationsRequest;
    fleet(s).await;
    // c1 is h2's backup: h1 may not record its verification.
    let e = s
        .add_verifications(&AddVerificationsRequest {
            host: "h1".into(),
            verifications: vec![
                verification("b1", "m0", "site1", "2026-02-01T00:00:00Z", true),
                verification("c1", "mc", "site1", "2026-02-01T00:00:00Z", true),
            ],
        })
        .await
        .unwrap_err();
    assert!(matches!(e, MetadataError::Conflict(_)), "{e}");
    assert!(e.to_string().contains("h2"), "{e}");
    // Nothing of the refused request was stored.
    let got = s
        .get_verifications(&versions(&[("b1", "m0", "site1")]))
        .await
        .unwrap();
    assert!(got.is_empty(), "{got:?}");
    // Atom versions the index does not hold conflict with it; bad
    // identifiers are bad requests.
    for (b, d, a) in [
        ("b1", "m0", "nope"),
        ("zz", "m0", "site1"),
        ("b1", "m0", "../x"),
    ] {
        let e = s
            .add_verifications(&AddVerificationsRequest {
                host: "h1".into(),
                verifications: vec![verification(b, d, a, "2026-02-01T00:00:00Z", true)],
            })
            .await
            .unwrap_err();
        if a.contains("..") {
            assert!(
                matches!(e, MetadataError::BadRequest(_)),
                "{b}/{d}/{a}: {e}"
            );
        } else {
            assert!(matches!(e, MetadataError::Conflict(_)), "{b}/{d}/{a}: {e}");
        }
    }
    // Two results for one atom version in one request: the newer counts.
    s.add_verifications(&AddVerificationsRequest {
        host: "h1".into(),
        verifications: vec![
            verification("b1", "m0", "site1", "2026-01-20T00:00:00Z", true),
            verification("b1", "m0", "site1", "2026-01-10T00:00:00Z", false),
        ],
    })
    .await
    .unwrap();
    let got = s
        .get_verifications(&versions(&[("b1", "m0", "site1")]))
        .await
        .unwrap();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].result, crate::model::VerifyResult::Ok, "{got:?}");
    assert_eq!(got[0].verified_at, ts("2026-01-20T00:00:00Z"), "{got:?}");
    // The owner may.
    s.add_verifications(&AddVerificationsRequest {
        host: "h2".into(),
        verifications: vec![verification(
            "c1",
            "mc",
            "site10",
            "2026-02-01T00:00:00Z",
            true,
        )],
    })
    .await
    .unwrap();
    // Failed drills are listed for the pages, newest first, by host.
    assert!(s.failed_verifications(None, 10).await.unwrap().is_empty());
    for (host, b, d, a, t) in [
        ("h1", "b1", "m0", "site1", "2026-02-02T00:00:00Z"),
        ("h1", "b2", "m1", "site2", "2026-02-03T00:00:00Z"),
        ("h2", "c1", "mc", "site1", "2026-02-04T00:00:00Z"),
    ] {
        s.add_verifications(&AddVerificationsRequest {
            host: host.into(),
            verifications: vec![verification(b, d, a, t, false)],
        })
        .await
        .unwrap();
    }
    let all = s.failed_verifications(None, 10).await.unwrap();
    let got: Vec<(&str, &str, &str)> = all
        .iter()
        .map(|f| {
            (
                f.host.as_str(),
                f.atom_path.as_str(),
                f.verification.backup_id.as_str(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("h2", "mysql/db/site1", "c1"),
            ("h1", "mysql/db/site2", "b2"),
            ("h1", "mysql/db/site1", "b1")
        ]
    );
    assert_eq!(all[1].backup_time, ts("2026-01-02T00:00:00Z"));
    assert_eq!(all[1].verification.error.as_deref(), Some("sha256 differs"));
    let h1 = s.failed_verifications(Some("h1"), 1).await.unwrap();
    assert_eq!(h1.len(), 1);
    assert_eq!(h1[0].verification.backup_id, "b2");
}
