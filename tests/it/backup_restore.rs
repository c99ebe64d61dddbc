//! Backups and restores that succeed: file and pipe sources, versions,
//! hooks, dynamic datasets.

use crate::common::{Env, atom_versions, read};

fn file_source(env: &Env) {
    env.write("etc/handlers/files.yml", "name: files\ntype: file\n");
    env.write(
        "etc/sources/home.yml",
        &format!(
            "name: home\nhandler: files\nparams:\n  path: {root}\ndatasets:\n  - name: users\n    atoms:\n      - name: alice\n      - name: bob\n      - name: carol\n        path: carol-home\n",
            root = env.path("data").display()
        ),
    );
    env.write("data/alice/notes.txt", "alice v1\n");
    env.write("data/alice/deep/dir/file.bin", &"x".repeat(10_000));
    env.write("data/bob/todo.txt", "bob v1\n");
    env.write("data/carol-home/c.txt", "carol v1\n");
}

#[test]
fn file_source_versions_restore_byte_identical_per_atom() {
    let env = Env::new();
    file_source(&env);
    let out = env.ok(&["backup", "home"]);
    assert!(out.contains("1 dataset(s) recorded"), "{out}");
    let v1 = env.query(&["home/users/alice"]);
    let first_ts = v1[0]["timestamp"].as_str().unwrap().to_string();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    // Between the two backups.
    let between = chrono::Utc::now().to_rfc3339();
    std::thread::sleep(std::time::Duration::from_millis(100));
    env.write("data/alice/notes.txt", "alice v2, longer\n");
    env.write("data/alice/new.txt", "new in v2\n");
    env.ok(&["backup", "home"]);

    // Both versions of every atom are listed.
    let all = atom_versions(&env.query(&["home/*"]));
    assert_eq!(all.len(), 6, "{all:?}");
    let alice: Vec<_> = all
        .iter()
        .filter(|(p, _)| p == "home/users/alice")
        .collect();
    assert_eq!(alice.len(), 2);
    assert_ne!(alice[0].1, alice[1].1, "two different backups");
    // The table lists them too.
    let table = env.ok(&["query", "home/users/alice"]);
    assert_eq!(table.lines().count(), 3, "{table}");
    assert!(table.contains(&first_ts[..19]), "{table}");

    // Restore alice as of the first backup: byte-identical to v1.
    let t1 = env.path("restore1");
    env.ok(&[
        "restore",
        "--target",
        t1.to_str().unwrap(),
        "--older-than",
        &between,
        "home/users/alice",
    ]);
    let restored = t1.join(env.path("data").strip_prefix("/").unwrap());
    assert_eq!(read(&restored.join("alice/notes.txt")), b"alice v1\n");
    assert_eq!(
        read(&restored.join("alice/deep/dir/file.bin")),
        "x".repeat(10_000).as_bytes()
    );
    assert!(
        !restored.join("alice/new.txt").exists(),
        "v2 file must not be in v1"
    );
    assert!(
        !restored.join("bob").exists(),
        "other atoms are not restored"
    );
    assert!(
        !restored.join("carol-home").exists(),
        "other atoms are not restored"
    );

    // Newest version by default.
    let t2 = env.path("restore2");
    env.ok(&[
        "restore",
        "--target",
        t2.to_str().unwrap(),
        "home/users/alice",
    ]);
    let restored = t2.join(env.path("data").strip_prefix("/").unwrap());
    assert_eq!(
        read(&restored.join("alice/notes.txt")),
        b"alice v2, longer\n"
    );
    assert_eq!(read(&restored.join("alice/new.txt")), b"new in v2\n");
    assert!(!restored.join("bob").exists());

    // An atom with its own path restores from that path.
    let t3 = env.path("restore3");
    env.ok(&[
        "restore",
        "--target",
        t3.to_str().unwrap(),
        "home/users/carol",
    ]);
    let restored = t3.join(env.path("data").strip_prefix("/").unwrap());
    assert_eq!(read(&restored.join("carol-home/c.txt")), b"carol v1\n");
    assert!(!restored.join("alice").exists());

    // Two versions at once go to per-backup directories.
    let t4 = env.path("restore4");
    let out = env.ok(&[
        "restore",
        "--target",
        t4.to_str().unwrap(),
        "--num-versions",
        "2",
        "home/users/bob",
    ]);
    assert_eq!(
        out.lines().filter(|l| l.starts_with("restored")).count(),
        2,
        "{out}"
    );
    let dirs: Vec<_> = std::fs::read_dir(&t4).unwrap().collect();
    assert_eq!(dirs.len(), 2);
}

#[test]
fn restore_of_unknown_pattern_fails_clearly() {
    let env = Env::new();
    file_source(&env);
    let out = env.run(&[
        "restore",
        "--target",
        env.path("t").to_str().unwrap(),
        "nothing/*",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(crate::common::text(&out).contains("no backed up atom matches 'nothing/*'"));
    // query follows grep: no match is exit 1, table or JSON.
    let out = env.run(&["query", "nothing/*"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(crate::common::text(&out).contains("no backed up atom matches 'nothing/*'"));
    let out = env.run(&["query", "--json", "nothing/*"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
    // --num-versions 0 is every version, as on the web form; a date is a
    // time (midnight UTC).
    let out = env.run(&[
        "query",
        "--num-versions",
        "0",
        "--older-than",
        "2000-01-01",
        "*",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", crate::common::text(&out));
    // A malformed pattern is the user's mistake: exit 2, with the reason.
    let out = env.run(&["query", "home/[a"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        crate::common::text(&out).contains("not closed"),
        "{}",
        crate::common::text(&out)
    );
}

fn pipe_handler(env: &Env) {
    env.write(
        "etc/handlers/dump.yml",
        "- name: dump\n  type: pipe\n  params:\n    backup_command: cat \"$DUMP_DIR/$TABACCO_ATOM.dump\"\n    restore_command: cat > \"$TABACCO_TARGET/$TABACCO_ATOM.restored\"\n",
    );
}

#[test]
fn pipe_source_round_trip_is_byte_identical() {
    let env = Env::new();
    pipe_handler(&env);
    env.write(
        "etc/sources/db.yml",
        "name: db\nhandler: dump\ndatasets:\n  - name: site42\n    atoms: [{name: main}]\n",
    );
    // Generated data: 3 MB of pseudo-random bytes.
    let data: Vec<u8> = (0u32..3_000_000)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(env.path("main.dump"), &data).unwrap();
    let out = env
        .cmd(&["backup", "db"])
        .env("DUMP_DIR", env.dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", crate::common::text(&out));
    let q = env.query(&["db/site42/main"]);
    assert_eq!(atom_versions(&q).len(), 1);
    assert_eq!(q[0]["host"], "testhost");
    assert_eq!(
        q[0]["datasets"][0]["snapshot_id"].as_str().unwrap().len(),
        64,
        "full snapshot id"
    );

    let target = env.path("out");
    env.ok(&[
        "restore",
        "--target",
        target.to_str().unwrap(),
        "db/site42/main",
    ]);
    assert_eq!(read(&target.join("main.restored")), data);
}

#[test]
fn hooks_and_dynamic_datasets_get_names_in_environment() {
    let env = Env::new();
    pipe_handler(&env);
    let log = env.path("hooks.log");
    let datasets = serde_json::json!([
        {"name": "bad", "atoms_command": "printf 'ok\\n../escape\\n'"},
        {"name": "good", "atoms_command": "printf '%s\\n' '$(touch pwned)'"},
    ]);
    env.write("datasets.json", &datasets.to_string());
    env.write(
        "etc/sources/db.yml",
        &format!(
            "name: db\nhandler: dump\npre_backup_command: echo \"pre $TABACCO_SOURCE\" >> {log}\npost_backup_command: echo \"post $TABACCO_STATUS\" >> {log}\ndatasets_command: cat {json}\n",
            log = log.display(),
            json = env.path("datasets.json").display()
        ),
    );
    // The atom name is `$(touch pwned)`: it must reach the dump command as
    // data, never as shell text.
    std::fs::write(env.path("$(touch pwned).dump"), b"payload").unwrap();
    let out = env
        .cmd(&["backup", "db"])
        .env("DUMP_DIR", env.dir.path())
        .current_dir(env.dir.path())
        .output()
        .unwrap();
    let text = crate::common::text(&out);
    // Dataset `bad` lists an unsafe atom name: it fails, `good` is backed up.
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("FAILED  db/bad") && text.contains("../escape"),
        "{text}"
    );
    assert!(
        !env.path("pwned").exists(),
        "atom name was executed as shell text"
    );
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "pre db\npost error\n"
    );
    let q = env.query(&["db/*"]);
    let atoms: Vec<String> = atom_versions(&q).into_iter().map(|(p, _)| p).collect();
    assert_eq!(atoms, vec!["db/good/$(touch pwned)".to_string()]);

    // And it restores by that name.
    let target = env.path("out");
    env.ok(&["restore", "--target", target.to_str().unwrap(), "db/good/*"]);
    assert_eq!(read(&target.join("$(touch pwned).restored")), b"payload");
    assert!(!env.path("pwned").exists());
}

/// Copy backup `from` of `env`'s embedded index under the backup ids
/// `ids`, a second later each: records a compromised host could have
/// written through a server that did not check identifiers (issue 10).
fn craft_index_records(env: &Env, from: &str, ids: &[&str]) {
    let db = env.path("work/metadata.db");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use sqlx::Connection;
        let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        for (i, id) in ids.iter().enumerate() {
            let later = 1_000_000 * (i as i64 + 1);
            for sql in [
                "INSERT INTO backups SELECT ?1, host, timestamp + ?2 FROM backups \
                 WHERE id = ?3",
                "INSERT INTO datasets (backup_id, id, name, source, snapshot_id, total_files, \
                 total_bytes, bytes_added, duration, handler, repository_id) \
                 SELECT ?1, id, name, source, snapshot_id, total_files, total_bytes, \
                 bytes_added, duration, handler, repository_id FROM datasets \
                 WHERE backup_id = ?3",
                "INSERT INTO atoms (backup_id, dataset_id, name, path, global_path, host, \
                 timestamp, snapshot_path, size, files, sha256) SELECT ?1, dataset_id, name, \
                 path, global_path, host, timestamp + ?2, snapshot_path, size, files, sha256 \
                 FROM atoms WHERE backup_id = ?3",
            ] {
                sqlx::query(sql)
                    .bind(id)
                    .bind(later)
                    .bind(from)
                    .execute(&mut c)
                    .await
                    .unwrap();
            }
        }
        c.close().await.unwrap();
    });
}

/// Issue 10: a record whose backup id is an absolute path or climbs out
/// with `..` made `restore --num-versions N` write outside `--target`.
/// Such records are refused with a clear error; the valid version is
/// restored below the target; nothing appears anywhere else.
#[test]
fn restore_refuses_index_records_that_would_escape_the_target() {
    let env = Env::new();
    file_source(&env);
    env.ok(&["backup", "home"]);
    let real = env.query(&["home/users/alice"])[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let escaped = env.path("ESCAPED");
    let escaped_str = escaped.display().to_string();
    craft_index_records(&env, &real, &[&escaped_str, "../ESCAPED2"]);
    assert_eq!(
        env.query(&["home/users/alice"]).as_array().unwrap().len(),
        3
    );

    let target = env.path("restore");
    let out = env.run(&[
        "restore",
        "--num-versions",
        "3",
        "--target",
        target.to_str().unwrap(),
        "home/users/alice",
    ]);
    let text = crate::common::text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    for bad in [escaped_str.as_str(), "../ESCAPED2"] {
        assert!(
            text.contains("refusing the index record") && text.contains(bad),
            "{bad}: {text}"
        );
    }
    assert!(!escaped.exists(), "restore wrote to {}", escaped.display());
    assert!(
        !env.path("ESCAPED2").exists(),
        "restore wrote to ../ESCAPED2"
    );
    // The valid version (the only one left) went straight into the target.
    let restored = target.join(env.path("data").strip_prefix("/").unwrap());
    assert_eq!(read(&restored.join("alice/notes.txt")), b"alice v1\n");
    assert!(text.contains(&real), "{text}");
    let entries: Vec<_> = std::fs::read_dir(&target)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let data = env.path("data");
    let first = data.components().nth(1).unwrap();
    assert_eq!(entries, [first.as_os_str().to_owned()]);
}
