//! "A dry run does nothing", once per operation of the manager, at the
//! boundary between its plan and its apply
//! ([`RuntimeContext::plan_then_apply`]): the same call on the same
//! configuration, with `dry_run` on, runs no user command, writes nothing
//! to the repository or the index and creates no directory; with it off,
//! the apply does all of that (so each test can fail).

use std::collections::BTreeSet;

use super::maintenance::{ReconcileMode, Scope};
use super::*;
use crate::handler::snapshot_meta;
use crate::metadata::sqlite::SqliteStore;
use crate::runtime::tests::{Contexts, contexts};

/// The two contexts, a manager on an embedded index, and a directory
/// where the user commands leave markers.
struct Setup {
    c: Contexts,
    marks: tempfile::TempDir,
    manager: Manager,
}

/// Source `s`: hooks, a static dataset `d` and a dataset `e` whose atoms
/// `atoms_command` lists, a retention of one version; source `c`: its
/// datasets listed by `datasets_command`. Every command leaves a marker.
async fn setup() -> Setup {
    let marks = tempfile::tempdir().unwrap();
    let m = |name: &str| marks.path().join(name).display().to_string();
    let s = format!(
        "name: s\nhandler: pipe\npre_backup_command: touch {}\npost_backup_command: touch {}\npre_restore_command: touch {}\nretention: {{keep_last: 1}}\ndatasets:\n  - name: d\n    atoms: [{{name: a}}]\n  - name: e\n    atoms_command: touch {}; echo b\n",
        m("pre-backup"),
        m("post-backup"),
        m("pre-restore"),
        m("atoms")
    );
    let c_yaml = format!(
        "name: c\nhandler: pipe\ndatasets_command: |\n  touch {}; echo '[{{name: x, atoms: [{{name: a}}]}}]'\n",
        m("datasets")
    );
    let c = contexts(&[("s", &s), ("c", &c_yaml)]);
    let store = SqliteStore::open(&c.path("index.db")).await.unwrap();
    Setup {
        manager: Manager::new(Arc::new(store)),
        c,
        marks,
    }
}

impl Setup {
    /// The markers the user commands left.
    fn marks(&self) -> BTreeSet<String> {
        std::fs::read_dir(self.marks.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// Dataset records of any host in the index.
    async fn records(&self) -> usize {
        let req = FindRequest {
            pattern: "*".into(),
            host: String::new(),
            num_versions: 0,
            older_than: None,
        };
        let found = self.manager.store().find_atoms(&req).await.unwrap();
        found.iter().map(|b| b.datasets.len()).sum()
    }

    async fn backup(&self, rctx: &RuntimeContext, source: &str) -> BackupReport {
        let r = self
            .manager
            .backup(rctx, source, Arc::new(NoObserver))
            .await
            .unwrap();
        assert!(r.is_ok(), "{:?}", r.error_text());
        r
    }
}

fn marks(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

#[tokio::test]
async fn backup_dry_run_plans_from_the_configuration_alone() {
    let t = setup().await;
    let spool = handler::spool::source_dir(t.c.real.work_dir(), "s").join("left");
    std::fs::create_dir_all(&spool).unwrap();

    let r = t.backup(&t.c.dry, "s").await;
    assert!(r.backup.datasets.is_empty());
    assert_eq!(r.planned.len(), 4, "{:?}", r.planned);
    assert!(r.planned[0].starts_with("would run pre_backup_command `touch "));
    assert_eq!(r.planned[1], "would back up s/d: atoms a");
    assert!(
        r.planned[2].starts_with("would back up s/e: atoms listed by atoms_command `touch "),
        "{:?}",
        r.planned
    );
    assert!(r.planned[3].starts_with("would run post_backup_command `touch "));
    let r = t.backup(&t.c.dry, "c").await;
    assert_eq!(r.planned.len(), 1);
    assert!(
        r.planned[0]
            .starts_with("would back up the datasets of c listed by datasets_command `touch "),
        "{:?}",
        r.planned
    );
    assert!(t.marks().is_empty(), "a dry run ran {:?}", t.marks());
    assert!(t.c.repo.calls().is_empty(), "{:?}", t.c.repo.calls());
    assert_eq!(t.records().await, 0);
    assert!(spool.exists(), "a dry run cleared the spool");

    // Applied: every command runs, three datasets backed up and recorded.
    let r = t.backup(&t.c.real, "s").await;
    assert!(r.planned.is_empty());
    t.backup(&t.c.real, "c").await;
    assert_eq!(
        t.marks(),
        marks(&["atoms", "datasets", "post-backup", "pre-backup"])
    );
    assert_eq!(t.c.repo.writes(), ["backup"; 3]);
    assert_eq!(t.records().await, 3);
    assert!(!spool.exists());
}

#[tokio::test]
async fn restore_dry_run_plans_from_the_index_alone() {
    let t = setup().await;
    t.backup(&t.c.real, "s").await;
    let target = t.c.path("target");
    let req = FindRequest {
        pattern: "s/*".into(),
        host: "h1".into(),
        num_versions: 1,
        older_than: None,
    };
    let observer: Arc<dyn Observer> = Arc::new(NoObserver);
    let opts = RestoreOptions::default();
    let restore = |rctx| t.manager.restore(rctx, &req, &target, &opts, &observer);

    let r = restore(&t.c.dry).await.unwrap();
    assert!(r.failures.is_empty(), "{:?}", r.failures);
    let atoms: Vec<_> = r.restored.iter().flat_map(|i| i.atoms.clone()).collect();
    assert_eq!(atoms, ["s/d/a", "s/e/b"]);
    assert!(!target.exists(), "a dry run created the target");
    assert!(!t.marks().contains("pre-restore"));
    assert_eq!(t.c.repo.writes(), ["backup"; 2]);

    let r = restore(&t.c.real).await.unwrap();
    assert!(r.failures.is_empty(), "{:?}", r.failures);
    assert_eq!(r.restored.len(), 2);
    assert!(target.is_dir());
    assert!(t.marks().contains("pre-restore"));
    assert_eq!(
        t.c.repo.writes(),
        ["backup", "backup", "restore", "restore"]
    );
}

#[tokio::test]
async fn forget_dry_run_decides_and_removes_nothing() {
    let t = setup().await;
    t.backup(&t.c.real, "s").await;
    t.backup(&t.c.real, "s").await;
    let sources = ["s".to_string()];

    let r = t.manager.forget(&t.c.dry, &sources).await.unwrap();
    assert!(r.dry_run);
    assert_eq!(r.to_remove(), 2, "keep_last 1 of two versions of d and e");
    assert_eq!((r.records_removed, r.forgotten), (0, 0));
    assert_eq!(t.c.repo.snapshot_ids().len(), 4);
    assert_eq!(t.records().await, 4);
    assert_eq!(t.c.repo.writes(), ["backup"; 4]);

    let r = t.manager.forget(&t.c.real, &sources).await.unwrap();
    assert!(!r.dry_run);
    assert_eq!((r.records_removed, r.forgotten), (2, 2));
    assert_eq!(t.c.repo.snapshot_ids().len(), 2);
    assert_eq!(t.records().await, 2);
}

#[tokio::test]
async fn reconcile_dry_run_finds_and_repairs_nothing() {
    let t = setup().await;
    t.backup(&t.c.real, "s").await;
    // A snapshot without its record, and a record without its snapshot.
    let dataset = |snapshot_id: &str| Dataset {
        id: new_id(),
        name: "d".into(),
        source: "s".into(),
        snapshot_id: snapshot_id.into(),
        atoms: vec![Atom {
            name: "a".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let backup = Backup {
        id: new_id(),
        timestamp: Utc::now(),
        host: "h1".into(),
        datasets: Vec::new(),
    };
    let unrecorded = dataset("");
    t.c.repo.add(
        &snapshot_meta(&backup, &unrecorded),
        Utc::now().fixed_offset(),
    );
    t.manager
        .store()
        .add_dataset(&backup, &dataset(&"f".repeat(64)))
        .await
        .unwrap();
    let scope = Scope::Host("h1".into());
    let reconcile = |rctx| t.manager.reconcile(rctx, &scope, ReconcileMode::Full);

    for _ in 0..2 {
        let r = reconcile(&t.c.dry).await.unwrap();
        assert!(r.dry_run);
        assert_eq!((r.missing.len(), r.stale.len()), (1, 1), "{}", r.text());
        assert_eq!(r.repaired(), 0);
        assert_eq!(t.records().await, 3);
    }
    let r = reconcile(&t.c.real).await.unwrap();
    assert_eq!(r.repaired(), 2, "{}", r.text());
    assert_eq!(reconcile(&t.c.dry).await.unwrap().differences(), 0);
}

/// The agent's reconcile at start adds the snapshots made before it
/// started, and leaves those taken since to the backups making them.
#[tokio::test]
async fn reconcile_at_start_leaves_snapshots_taken_since_to_their_backups() {
    let t = setup().await;
    let started = Utc::now();
    let unrecorded = |at: chrono::DateTime<Utc>| {
        let backup = Backup {
            id: new_id(),
            timestamp: at,
            host: "h1".into(),
            datasets: Vec::new(),
        };
        let dataset = Dataset {
            id: new_id(),
            name: "d".into(),
            source: "s".into(),
            atoms: vec![Atom {
                name: "a".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        t.c.repo
            .add(&snapshot_meta(&backup, &dataset), at.fixed_offset());
    };
    unrecorded(started - chrono::Duration::minutes(5));
    unrecorded(started + chrono::Duration::seconds(1));
    let scope = Scope::Host("h1".into());
    let r = t
        .manager
        .reconcile(
            &t.c.real,
            &scope,
            ReconcileMode::AddOnly { before: started },
        )
        .await
        .unwrap();
    assert_eq!((r.added, r.in_flight), (1, 1), "{}", r.text());
    assert!(
        r.text()
            .contains("1 snapshot(s) taken since the agent started")
    );
    assert_eq!(t.records().await, 1);
    // A full reconcile later indexes the other one (its backup died).
    let r = t
        .manager
        .reconcile(&t.c.real, &scope, ReconcileMode::Full)
        .await
        .unwrap();
    assert_eq!((r.added, r.in_flight), (1, 0), "{}", r.text());
}

#[tokio::test]
async fn prune_dry_run_runs_no_prune() {
    let t = setup().await;
    let r = t.manager.prune(&t.c.dry).await.unwrap();
    assert!(r.summary[0].starts_with("dry run: would run restic prune"));
    assert!(t.c.repo.calls().is_empty());
    t.manager.prune(&t.c.real).await.unwrap();
    assert_eq!(t.c.repo.calls(), ["prune"]);
}
