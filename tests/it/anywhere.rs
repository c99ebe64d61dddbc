//! Restore anywhere (issue 11): the index records what a restore needs
//! (each atom's path in the snapshot, its size, file count or digest; the
//! dataset's handler type and repository id), so any host restores any
//! atom, any version, even one with no configuration.

use sha2::{Digest, Sha256};

use crate::common::{Env, restic_ok};

/// Hex SHA-256 of `data`.
fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `n` pseudo-random bytes, different per `seed`.
fn noise(n: u32, seed: u32) -> Vec<u8> {
    (0..n)
        .map(|i| ((i ^ seed).wrapping_mul(2654435761) >> 13) as u8)
        .collect()
}

/// The repository id in the config of the restic repository at `repo`.
fn repository_id(repo: &std::path::Path) -> String {
    let config: serde_json::Value =
        serde_json::from_slice(&restic_ok(&repo.display().to_string(), &["cat", "config"]))
            .unwrap();
    config["id"].as_str().unwrap().to_string()
}

/// The dataset of `source`/`name` in a `query --json` answer.
fn dataset<'a>(q: &'a serde_json::Value, source: &str, name: &str) -> &'a serde_json::Value {
    q.as_array()
        .unwrap()
        .iter()
        .flat_map(|b| b["datasets"].as_array().unwrap())
        .find(|d| d["source"] == source && d["name"] == name)
        .unwrap_or_else(|| panic!("no dataset {source}/{name} in {q:#}"))
}

/// The atom `name` of a dataset of a `query --json` answer.
fn atom<'a>(ds: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    ds["atoms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == name)
        .unwrap_or_else(|| panic!("no atom {name} in {ds:#}"))
}

#[test]
fn backup_records_what_a_restore_needs() {
    let env = Env::new();
    env.write("etc/handlers/files.yml", "name: files\ntype: file\n");
    env.write(
        "etc/handlers/dump.yml",
        "name: dump\ntype: pipe\nparams:\n  backup_command: cat \"$DUMP_DIR/$TABACCO_ATOM.dump\"\n  restore_command: cat > \"$TABACCO_TARGET/$TABACCO_ATOM.restored\"\n",
    );
    let root = env.path("data");
    env.write(
        "etc/sources/www.yml",
        &format!(
            "name: www\nhandler: files\nparams: {{path: {}}}\ndatasets:\n  - name: sites\n    atoms: [{{name: site1}}, {{name: site2, path: s/two}}]\n",
            root.display()
        ),
    );
    env.write(
        "etc/sources/mysql.yml",
        "name: mysql\nhandler: dump\ndatasets:\n  - name: one\n    atoms: [{name: main}]\n  - name: many\n    atoms: [{name: a}, {name: b}]\n",
    );
    env.write("data/site1/index.html", "hello\n");
    env.write("data/site1/img/logo.png", &"p".repeat(1000));
    env.write("data/s/two/x", "x");
    let dumps = [
        ("main", noise(200_000, 1)),
        ("a", noise(1000, 2)),
        ("b", Vec::new()),
    ];
    for (name, data) in &dumps {
        std::fs::write(env.path(&format!("{name}.dump")), data).unwrap();
    }
    for source in ["www", "mysql"] {
        let out = env
            .cmd(&["backup", source])
            .env("DUMP_DIR", env.dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", crate::common::text(&out));
    }
    let repo_id = repository_id(&env.repo());
    let q = env.query(&["*"]);

    let www = dataset(&q, "www", "sites");
    assert_eq!(www["handler"], "file");
    assert_eq!(www["repository_id"], repo_id.as_str());
    let site1 = atom(www, "site1");
    assert_eq!(site1["snapshot_path"], root.join("site1").to_str().unwrap());
    assert_eq!(
        (site1["files"].as_i64(), site1["size"].as_i64()),
        (Some(2), Some(1006))
    );
    assert!(site1.get("sha256").is_none(), "{site1}");
    let site2 = atom(www, "site2");
    assert_eq!(site2["snapshot_path"], root.join("s/two").to_str().unwrap());
    assert_eq!(
        (site2["files"].as_i64(), site2["size"].as_i64()),
        (Some(1), Some(1))
    );

    // A single-atom stream (straight into restic) and a spooled dataset.
    for (ds, name) in [("one", "main"), ("many", "a"), ("many", "b")] {
        let d = dataset(&q, "mysql", ds);
        assert_eq!(d["handler"], "pipe");
        assert_eq!(d["repository_id"], repo_id.as_str());
        let a = atom(d, name);
        let data = &dumps.iter().find(|(n, _)| *n == name).unwrap().1;
        assert_eq!(a["size"].as_u64(), Some(data.len() as u64), "{a}");
        assert_eq!(a["sha256"], sha256_hex(data).as_str(), "{a}");
        assert!(a.get("files").is_none(), "{a}");
        let path = a["snapshot_path"].as_str().unwrap();
        // restic 0.18.0 stores a single stream under a flat name.
        assert!(
            path == format!("/mysql/{ds}/{name}") || path == format!("/mysql%2F{ds}%2F{name}"),
            "{path}"
        );
        // It is where the snapshot holds it.
        let dumped = restic_ok(
            &env.repo().display().to_string(),
            &["dump", d["snapshot_id"].as_str().unwrap(), path],
        );
        assert!(dumped == *data, "restic dump of {path} differs");
    }
}
