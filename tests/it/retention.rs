//! Retention, prune and reconcile (issue 13): restic's decisions, the
//! index and the repository in agreement at every step, and an index
//! rebuilt from the repository.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;

use serde_json::{Value, json};

use crate::common::{Env, atom_versions, file_source, read, restic_ok, restic_on, text};

/// The policies compared with restic (its `forget` flags; ours in YAML).
const POLICIES: &[(&str, &[&str])] = &[
    ("{keep_last: 3}", &["--keep-last", "3"]),
    ("{keep_hourly: 5}", &["--keep-hourly", "5"]),
    ("{keep_daily: 7}", &["--keep-daily", "7"]),
    ("{keep_weekly: 6}", &["--keep-weekly", "6"]),
    ("{keep_monthly: 12}", &["--keep-monthly", "12"]),
    ("{keep_yearly: 5}", &["--keep-yearly", "5"]),
    ("{keep_within: 3m10d}", &["--keep-within", "3m10d"]),
    (
        "{keep_last: 2, keep_daily: 4, keep_weekly: 3, keep_monthly: 6, keep_yearly: 2}",
        &[
            "--keep-last",
            "2",
            "--keep-daily",
            "4",
            "--keep-weekly",
            "3",
            "--keep-monthly",
            "6",
            "--keep-yearly",
            "2",
        ],
    ),
    (
        "{keep_daily: 3, keep_within: 1y2d}",
        &["--keep-daily", "3", "--keep-within", "1y2d"],
    ),
    (
        "{keep_hourly: 2, keep_monthly: 30}",
        &["--keep-hourly", "2", "--keep-monthly", "30"],
    ),
];

/// Backup times spanning two years, irregular: several a day, a few an
/// hour, gaps of weeks and months, ISO weeks across new year.
fn history_times() -> Vec<String> {
    let mut times = Vec::new();
    let mut day = chrono::NaiveDate::from_ymd_opt(2023, 1, 1).unwrap();
    let mut i = 0u32;
    let end = chrono::NaiveDate::from_ymd_opt(2024, 12, 31).unwrap();
    while day <= end && times.len() < 34 {
        let hour = (i * 7) % 24;
        let minute = (i * 13) % 60;
        times.push(format!("{day} {hour:02}:{minute:02}:{:02}", i % 60));
        if i % 5 == 0 {
            // A second one in the same hour.
            times.push(format!("{day} {hour:02}:{:02}:30", (minute + 20) % 60));
        }
        // Gaps from one day to two months.
        let gap = [1, 1, 2, 6, 9, 17, 31, 44, 61][(i as usize * 5) % 9];
        day += chrono::TimeDelta::days(gap);
        i += 1;
    }
    times.push("2024-12-31 23:10:00".into());
    times.push("2024-12-31 23:50:00".into());
    times
}

/// The record tags tabacco would give a snapshot of dataset `users` of
/// source `home` (see `src/repository/record.rs`).
fn tabacco_tags(n: usize, time: &str) -> Vec<String> {
    let backup_id = format!("b{n:03}");
    let dataset_id = format!("d{n:03}");
    let timestamp = format!("{}Z", time.replace(' ', "T"));
    let record = json!({
        "id": backup_id, "timestamp": timestamp, "host": "testhost",
        "datasets": [{"id": dataset_id, "name": "users", "source": "home",
                      "atoms": [{"name": "alice"}], "snapshot_id": "",
                      "total_files": 0, "total_bytes": 0, "bytes_added": 0, "duration": 0}]
    });
    vec![
        format!("backup_id={backup_id}"),
        format!("dataset_id={dataset_id}"),
        "source=home".into(),
        format!("record.0={}", hex::encode(record.to_string())),
    ]
}

/// Kept ids with their reasons, from restic's `forget --json` output (one
/// group). `reasons` is in the order of `keep` (restic 0.14 leaves the
/// snapshot id out of the reasons).
fn restic_kept(out: &[u8]) -> BTreeMap<String, Vec<String>> {
    let v: Value = serde_json::from_slice(out).unwrap_or_else(|e| {
        panic!(
            "restic forget --json: {e}: {}",
            String::from_utf8_lossy(out)
        )
    });
    let groups = v.as_array().unwrap();
    assert_eq!(groups.len(), 1, "{v}");
    let keep = groups[0]["keep"].as_array().unwrap();
    let reasons = groups[0]["reasons"].as_array().unwrap();
    assert_eq!(keep.len(), reasons.len(), "{v}");
    keep.iter()
        .zip(reasons)
        .map(|(k, r)| {
            (
                k["id"].as_str().unwrap().to_string(),
                r["matches"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| m.as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect()
}

/// Kept ids with their reasons, from `tabacco forget --json` (one group).
fn tabacco_kept(out: &str) -> BTreeMap<String, Vec<String>> {
    let v: Value = serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let groups = v.as_array().unwrap();
    assert_eq!(groups.len(), 1, "{v}");
    groups[0]["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["keep"].as_bool().unwrap())
        .map(|d| {
            (
                d["id"].as_str().unwrap().to_string(),
                d["reasons"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| m.as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect()
}

#[test]
fn policy_decisions_equal_restic_forget_over_two_years_of_backups() {
    let env = Env::new();
    file_source(&env);
    let repo = env.repo().display().to_string();
    restic_ok(&repo, &["init"]);
    let file = env.path("data/alice/a.txt").display().to_string();
    for (n, t) in history_times().iter().enumerate() {
        let mut args = vec![
            "backup".to_string(),
            "--host".into(),
            "testhost".into(),
            "--time".into(),
            t.clone(),
        ];
        for tag in tabacco_tags(n, t) {
            args.push("--tag".into());
            args.push(tag);
        }
        args.push(file.clone());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        restic_ok(&repo, &args);
    }
    for (yaml, flags) in POLICIES {
        env.write_main(&format!("retention: {yaml}\n"));
        let ours = tabacco_kept(&env.ok(&["forget", "--dry-run", "--json"]));
        let mut args = vec!["forget", "--dry-run", "--json", "--group-by", "host"];
        args.extend_from_slice(flags);
        let theirs = restic_kept(&restic_ok(&repo, &args));
        assert_eq!(ours, theirs, "policy {yaml} (restic {flags:?})");
    }
    // Dry runs changed nothing.
    assert_eq!(env.snapshots().len(), history_times().len());
}

/// An environment with `keep_last: 2` on source `home`.
fn keep_last_two() -> Env {
    let env = Env::new();
    file_source(&env);
    env.write_main("retention: {keep_last: 2}\n");
    env
}

#[test]
fn a_forget_by_hand_leaves_out_a_source_being_backed_up_and_says_so() {
    let env = keep_last_two();
    env.write(
        "etc/sources/more.yml",
        &format!(
            "name: more\nhandler: files\nparams: {{path: {}}}\ndatasets:\n  - name: team\n    atoms: [{{name: bob}}]\n",
            env.path("data").display()
        ),
    );
    env.write("data/bob/b.txt", "b\n");
    for i in 0..3 {
        env.write("data/alice/a.txt", &format!("version {i}\n"));
        env.ok(&["backup", "home", "more"]);
    }
    let versions = |source: &str| {
        atom_versions(&env.query(&["*"]))
            .iter()
            .filter(|(path, _)| path.starts_with(&format!("{source}/")))
            .count()
    };
    assert_eq!((versions("home"), versions("more")), (3, 3));
    // Hold home's lock, as a running backup does.
    let path = env.path("work/locks/home.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap();
    let held = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| e)
        .unwrap();
    let out = env.run(&["forget"]);
    let msg = text(&out);
    assert_eq!(out.status.code(), Some(1), "{msg}");
    assert!(
        msg.contains("skipped: source 'home' is locked by another process"),
        "{msg}"
    );
    assert!(msg.contains("1 source(s) were busy and left out"), "{msg}");
    assert_eq!((versions("home"), versions("more")), (3, 2), "{msg}");
    // Asked for the busy one alone: nothing to do, exit 1.
    let out = env.run(&["forget", "home"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("nothing forgotten"), "{}", text(&out));
    // A dry run takes no lock: it shows the decision anyway.
    let out = env.ok(&["forget", "--dry-run", "home"]);
    assert!(out.contains("would remove 1 version(s)"), "{out}");
    drop(held);
    env.ok(&["forget"]);
    assert_eq!((versions("home"), versions("more")), (2, 2));
}

#[test]
fn keep_last_two_after_five_backups_leaves_two_versions_in_index_and_repository() {
    let env = keep_last_two();
    for i in 0..5 {
        env.write("data/alice/a.txt", &format!("version {i}\n"));
        env.ok(&["backup", "home"]);
    }
    // A dry run says what it would do and changes nothing.
    let out = env.ok(&["forget", "--dry-run"]);
    assert!(out.contains("would remove 3 version(s)"), "{out}");
    assert!(out.contains("last snapshot"), "{out}");
    assert_eq!(env.snapshots().len(), 5);
    assert_eq!(atom_versions(&env.query(&["*"])).len(), 5);

    let out = env.ok(&["forget"]);
    assert!(out.contains("forgot 3 snapshot(s)"), "{out}");
    assert_eq!(env.snapshots().len(), 2);
    let index = env.query(&["*"]);
    assert_eq!(atom_versions(&index).len(), 2);
    let in_index: BTreeSet<String> = index
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            b["datasets"][0]["snapshot_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let in_repo: BTreeSet<String> = env
        .snapshots()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(in_index, in_repo);
    // The newest restores byte-identical.
    let target = env.path("restored");
    env.ok(&[
        "restore",
        "--num-versions",
        "1",
        "--target",
        target.to_str().unwrap(),
        "home/users/alice",
    ]);
    let restored = target.join(env.path("data/alice/a.txt").strip_prefix("/").unwrap());
    assert_eq!(read(&restored), b"version 4\n");
    // Nothing left to forget; prune frees the space and the rest restores.
    let out = env.ok(&["forget"]);
    assert!(out.contains("forgot 0 snapshot(s)"), "{out}");
    env.ok(&["prune"]);
    restic_ok(&env.repo().display().to_string(), &["check"]);
    let out = env.ok(&["reconcile", "--dry-run"]);
    assert!(out.contains("index and repository agree"), "{out}");
}

/// Kill `tabacco` at `point` (the failpoint), then check that reconcile
/// brings index and repository into agreement.
fn assert_reconciled(env: &Env) {
    env.ok(&["reconcile"]);
    let out = env.ok(&["reconcile", "--dry-run"]);
    assert!(out.contains("index and repository agree"), "{out}");
    let index = env.query(&["*"]);
    let in_index: BTreeSet<String> = index
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|b| b["datasets"].as_array().unwrap().iter())
        .map(|d| d["snapshot_id"].as_str().unwrap().to_string())
        .collect();
    let in_repo: BTreeSet<String> = env
        .snapshots()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(in_index, in_repo);
}

#[test]
fn a_kill_between_any_two_steps_of_forget_or_backup_is_repaired_by_reconcile() {
    let env = keep_last_two();
    for i in 0..3 {
        env.write("data/alice/a.txt", &format!("version {i}\n"));
        env.ok(&["backup", "home"]);
    }
    // Between snapshot and record: a snapshot nothing indexes.
    let out = env.run_with_failpoint(&["backup", "home"], "backup-after-snapshot");
    assert!(!out.status.success());
    assert_eq!(env.snapshots().len(), 4);
    assert_eq!(atom_versions(&env.query(&["*"])).len(), 3);
    let out = env.ok(&["reconcile", "--dry-run"]);
    assert!(out.contains("would index again"), "{out}");
    assert_reconciled(&env);
    assert_eq!(atom_versions(&env.query(&["*"])).len(), 4);

    for point in [
        "forget-after-list",
        "forget-after-records",
        "forget-after-forget",
    ] {
        env.ok(&["backup", "home"]);
        let out = env.run_with_failpoint(&["forget"], point);
        assert!(!out.status.success(), "{point}: {}", text(&out));
        // Whatever the step, the index never promises a forgotten snapshot.
        let in_repo: BTreeSet<String> = env
            .snapshots()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect();
        for b in env.query(&["*"]).as_array().unwrap() {
            for d in b["datasets"].as_array().unwrap() {
                assert!(
                    in_repo.contains(d["snapshot_id"].as_str().unwrap()),
                    "{point}: the index promises a forgotten snapshot"
                );
            }
        }
        assert_reconciled(&env);
    }
    env.ok(&["forget"]);
    assert_reconciled(&env);
    assert_eq!(env.snapshots().len(), 2);
}

#[test]
fn a_deleted_embedded_index_is_rebuilt_by_reconcile_and_answers_as_before() {
    let env = Env::new();
    file_source(&env);
    env.write("data/bob/b.txt", "b\n");
    env.write(
        "etc/sources/more.yml",
        &format!(
            "name: more\nhandler: files\nparams: {{path: {}}}\ndatasets:\n  - name: \"team, a/b\"\n    atoms: [{{name: bob}}, {{name: carol, path: alice}}]\n",
            env.path("data").display()
        ),
    );
    // A pipe dataset of two atoms: spooled, so their digests are known
    // before restic runs and travel in the snapshot's record.
    env.write(
        "etc/handlers/dump.yml",
        "name: dump\ntype: pipe\nparams:\n  backup_command: printf 'dump of %s\\n' \"$TABACCO_ATOM\"\n  restore_command: cat > /dev/null\n",
    );
    env.write(
        "etc/sources/db.yml",
        "name: db\nhandler: dump\ndatasets:\n  - name: all\n    atoms: [{name: one}, {name: two}]\n",
    );
    for _ in 0..2 {
        env.ok(&["backup", "home", "more", "db"]);
    }
    let before = env.query(&["*"]);
    assert_eq!(atom_versions(&before).len(), 10);
    for f in std::fs::read_dir(env.path("work")).unwrap() {
        let p = f.unwrap().path();
        if p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("metadata")
        {
            std::fs::remove_file(&p).unwrap();
        }
    }
    assert_eq!(env.query(&["*"]), json!([]));
    let out = env.ok(&["reconcile"]);
    assert!(out.contains("indexed again"), "{out}");
    let after = env.query(&["*"]);
    assert_eq!(
        strip_stats(&after),
        strip_stats(&before),
        "rebuilt index differs"
    );
    // What a restore anywhere and verify need came back too: how, from
    // which repository, and each atom's path, size, file count or digest.
    let digests = |v: &Value| -> Vec<String> {
        let mut out: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|b| b["datasets"].as_array().unwrap().iter())
            .flat_map(|d| d["atoms"].as_array().unwrap().iter())
            .filter_map(|a| a["sha256"].as_str().map(str::to_string))
            .collect();
        out.sort();
        out
    };
    assert_eq!(digests(&before).len(), 4, "{before}");
    assert_eq!(digests(&after), digests(&before));
    if has_snapshot_summary(&env) {
        // restic 0.17 and later keep the statistics in the snapshot.
        assert_eq!(record_fields(&after, true), record_fields(&before, true));
    }
}

/// Whether this restic stores backup statistics in snapshots (0.17+).
fn has_snapshot_summary(env: &Env) -> bool {
    env.snapshots().iter().all(|s| s.get("summary").is_some())
}

/// The fields of a query result a snapshot's record restores in every
/// case: ids, time, host, names, handler, repository id, snapshot id,
/// atoms' name, path, path in the snapshot, size, file count and digest;
/// the dataset's statistics only with `stats` (restic 0.17 and later keep
/// them in the snapshot). A single-atom stream's size and digest are only
/// known once restic has read it, so they are not in its record: the
/// datasets compared here are files and a spooled (multi-atom) stream.
fn record_fields(v: &Value, stats: bool) -> Value {
    let pick = |o: &Value, keys: &[&str]| -> serde_json::Map<String, Value> {
        keys.iter()
            .filter_map(|k| o.get(*k).map(|x| (k.to_string(), x.clone())))
            .collect()
    };
    let mut ds_keys = vec![
        "id",
        "name",
        "source",
        "snapshot_id",
        "handler",
        "repository_id",
    ];
    if stats {
        ds_keys.extend(["total_files", "total_bytes", "bytes_added", "duration"]);
    }
    Value::Array(
        v.as_array()
            .unwrap()
            .iter()
            .map(|b| {
                let mut m = pick(b, &["id", "timestamp", "host"]);
                let datasets: Vec<Value> = b["datasets"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| {
                        let mut dm = pick(d, &ds_keys);
                        let atoms: Vec<Value> = d["atoms"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|a| {
                                Value::Object(pick(
                                    a,
                                    &["name", "path", "snapshot_path", "size", "files", "sha256"],
                                ))
                            })
                            .collect();
                        dm.insert("atoms".into(), Value::Array(atoms));
                        Value::Object(dm)
                    })
                    .collect();
                m.insert("datasets".into(), Value::Array(datasets));
                Value::Object(m)
            })
            .collect(),
    )
}

fn strip_stats(v: &Value) -> Value {
    record_fields(v, false)
}

#[test]
fn prune_on_one_host_while_another_backs_up_ends_with_the_backup_recorded() {
    use crate::shared_repo::{host_config, tabacco};
    let env = Env::new();
    env.write("data/alice/a.txt", "a\n");
    let repo = env.repo().display().to_string();
    let a = host_config(&env, "pruner", &repo);
    let b = host_config(&env, "worker", &repo);
    for i in 0..4 {
        env.write("data/alice/a.txt", &format!("{i}\n").repeat(1000));
        let out = tabacco(&a, &["backup", "home"]).output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }
    restic_ok(&repo, &["forget", "--host", "pruner", "--keep-last", "1"]);
    // Several prunes and backups overlapping.
    let pruner = std::thread::spawn(move || {
        for _ in 0..3 {
            let out = tabacco(&a, &["prune"])
                .stdout(Stdio::piped())
                .output()
                .unwrap();
            assert!(out.status.success(), "prune: {}", text(&out));
        }
    });
    for i in 0..3 {
        env.write("data/alice/a.txt", &format!("worker {i}\n"));
        let out = tabacco(&b, &["backup", "home"]).output().unwrap();
        assert!(out.status.success(), "backup during prune: {}", text(&out));
    }
    pruner.join().unwrap();
    let out = tabacco(&b, &["query", "--json", "--host", "worker", "*"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(atom_versions(&v).len(), 3);
    let target = env.path("restored");
    let out = tabacco(
        &b,
        &[
            "restore",
            "--host",
            "worker",
            "--num-versions",
            "1",
            "--target",
            target.to_str().unwrap(),
            "home/users/alice",
        ],
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let restored = target.join(env.path("data/alice/a.txt").strip_prefix("/").unwrap());
    assert_eq!(read(&restored), b"worker 2\n");
    restic_ok(&repo, &["check"]);
    let _ = restic_on(&repo);
}

impl Env {
    /// Run with `TABACCO_FAILPOINT=point` (the process kills itself there).
    pub fn run_with_failpoint(&self, args: &[&str], point: &str) -> std::process::Output {
        let mut c = self.cmd(args);
        c.env("TABACCO_FAILPOINT", point);
        c.output().expect("binary runs")
    }
}

/// Start `tabacco metadb` on `db` (SQLite) with a token per host and
/// `admin` as the admin.
fn start_server(env: &Env, db: &str) -> crate::metadb_server::MetadbServer {
    use sha2::Digest;
    let mut tokens = String::new();
    for h in ["hosta", "hostb", "admin"] {
        let hash = hex::encode(sha2::Sha256::digest(format!("token-{h}").as_bytes()));
        tokens.push_str(&format!("  {h}: {hash}\n"));
    }
    env.write(
        "metadb.yml",
        &format!(
            "database: sqlite://{}\ntokens:\n{tokens}acl: {{admins: [admin]}}\n",
            env.path(db).display()
        ),
    );
    crate::metadb_server::MetadbServer::start(
        env.dir.path(),
        &env.path("metadb.yml"),
        &["--listen", "127.0.0.1:0"],
    )
}

/// Host `h`'s configuration on the shared repository, reporting to `url`
/// with its token, keeping its `keep` newest versions.
fn fleet_host(env: &Env, h: &str, url: &str, keep: u32) -> std::path::PathBuf {
    let repo = env.repo().display().to_string();
    let config = crate::shared_repo::host_config(env, h, &repo);
    env.write(&format!("hosts/{h}/token"), &format!("token-{h}\n"));
    let main = std::fs::read_to_string(&config).unwrap();
    let main = main
        .split("metadb:")
        .next()
        .unwrap()
        .split("retention:")
        .next()
        .unwrap()
        .to_string();
    std::fs::write(
        &config,
        format!(
            "{main}retention: {{keep_last: {keep}}}\nmetadb:\n  url: {url}\n  token_file: {}\n",
            env.path(&format!("hosts/{h}/token")).display()
        ),
    )
    .unwrap();
    config
}

fn query_all(config: &std::path::Path) -> Value {
    let out = crate::shared_repo::tabacco(config, &["query", "--json", "*"])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)))
}

fn ok(config: &std::path::Path, args: &[&str]) -> String {
    let out = crate::shared_repo::tabacco(config, args).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn versions_of(v: &Value, host: &str) -> usize {
    v.as_array()
        .unwrap()
        .iter()
        .filter(|b| b["host"] == host)
        .count()
}

#[test]
fn two_hosts_on_one_repository_and_server_each_forget_their_own_and_a_lost_server_database_is_rebuilt()
 {
    let env = Env::new();
    env.write("data/alice/a.txt", "a\n");
    let server = start_server(&env, "metadb.sqlite");
    let a = fleet_host(&env, "hosta", &server.base, 1);
    let b = fleet_host(&env, "hostb", &server.base, 2);
    for i in 0..3 {
        env.write("data/alice/a.txt", &format!("{i}\n"));
        ok(&a, &["backup", "home"]);
        ok(&b, &["backup", "home"]);
    }
    let all = query_all(&a);
    assert_eq!(
        (versions_of(&all, "hosta"), versions_of(&all, "hostb")),
        (3, 3)
    );
    // Same source and dataset names on both hosts: each forgets only its own.
    let out = ok(&a, &["forget"]);
    assert!(out.contains("forgot 2 snapshot(s)"), "{out}");
    let all = query_all(&a);
    assert_eq!(
        (versions_of(&all, "hosta"), versions_of(&all, "hostb")),
        (1, 3)
    );
    ok(&b, &["forget"]);
    let before = query_all(&b);
    assert_eq!(
        (versions_of(&before, "hosta"), versions_of(&before, "hostb")),
        (1, 2)
    );
    let hosts: Vec<String> = env
        .snapshots()
        .iter()
        .map(|s| s["hostname"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(hosts.len(), 3, "{hosts:?}");

    // The server's database is lost: a new, empty one.
    drop(server);
    std::fs::remove_file(env.path("metadb.sqlite")).unwrap();
    let server = start_server(&env, "metadb.sqlite");
    let a = fleet_host(&env, "hosta", &server.base, 1);
    let admin = fleet_host(&env, "admin", &server.base, 1);
    assert_eq!(query_all(&a), json!([]));
    // A host may rebuild only its own records ...
    let out = crate::shared_repo::tabacco(&a, &["reconcile", "--all-hosts"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("403") || text(&out).contains("may not"),
        "{}",
        text(&out)
    );
    // ... an admin every host's.
    let out = ok(&admin, &["reconcile", "--all-hosts"]);
    assert!(out.contains("indexed again"), "{out}");
    let after = query_all(&admin);
    assert_eq!(strip_stats(&after), strip_stats(&before));
    let out = ok(&admin, &["reconcile", "--all-hosts", "--dry-run"]);
    assert!(out.contains("index and repository agree"), "{out}");
}

#[test]
fn forget_forgets_nothing_while_the_metadata_server_is_unreachable() {
    let env = Env::new();
    file_source(&env);
    // Nothing listens on port 1: records wait in the outbox.
    env.write_main("retention: {keep_last: 1}\nmetadb:\n  url: http://127.0.0.1:1\n");
    env.ok(&["backup", "home"]);
    env.ok(&["backup", "home"]);
    let out = env.run(&["forget"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("outbox"), "{}", text(&out));
    assert_eq!(env.snapshots().len(), 2, "nothing forgotten");
}
