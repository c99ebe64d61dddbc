//! `tabacco verify`: repository checks and restore drills, their results
//! in the index, damage and differences named, the scratch directory
//! always cleaned.

use std::path::Path;
use std::process::Command;

use crate::common::{Env, PASSWORD, restic, run, text};

/// A file source `home` (atoms alice and bob) and a pipe source `db` (one
/// dataset with two atoms, spooled; one with a single streamed atom).
fn sources(env: &Env) {
    env.write("etc/handlers/files.yml", "name: files\ntype: file\n");
    env.write(
        "etc/sources/home.yml",
        &format!(
            "name: home\nhandler: files\nparams: {{path: {}}}\ndatasets:\n  - name: users\n    atoms: [{{name: alice}}, {{name: bob}}]\n",
            env.path("data").display()
        ),
    );
    env.write("data/alice/a.txt", "alice\n");
    env.write("data/alice/deep/b.bin", &"b".repeat(5000));
    env.write("data/bob/todo.txt", "bob\n");
    env.write(
        "etc/handlers/dump.yml",
        &format!(
            "name: dump\ntype: pipe\nparams:\n  backup_command: cat \"{}/$TABACCO_ATOM.dump\"\n  restore_command: cat > /dev/null\n",
            env.path("dumps").display()
        ),
    );
    env.write(
        "etc/sources/db.yml",
        "name: db\nhandler: dump\ndatasets:\n  - name: many\n    atoms: [{name: one}, {name: two}]\n  - name: single\n    atoms: [{name: three}]\n",
    );
    for (n, t) in [
        ("one", "first dump\n"),
        ("two", "second dump\n"),
        ("three", "third\n"),
    ] {
        env.write(&format!("dumps/{n}.dump"), t);
    }
}

/// Entries left in the scratch directory of `work_dir`.
fn scratch_entries(env: &Env) -> Vec<String> {
    match std::fs::read_dir(env.path("work/restore-scratch")) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Every atom version in a `query --json` answer with its verification.
fn verifications(v: &serde_json::Value) -> Vec<(String, serde_json::Value)> {
    let mut out = Vec::new();
    for b in v.as_array().unwrap() {
        for ds in b["datasets"].as_array().unwrap() {
            for a in ds["atoms"].as_array().unwrap() {
                out.push((
                    format!(
                        "{}/{}/{}",
                        ds["source"].as_str().unwrap(),
                        ds["name"].as_str().unwrap(),
                        a["name"].as_str().unwrap()
                    ),
                    a["verification"].clone(),
                ));
            }
        }
    }
    out
}

#[test]
fn verify_all_after_file_and_pipe_backups_proves_every_atom() {
    let env = Env::new();
    sources(&env);
    env.ok(&["backup", "home", "db"]);
    let before = verifications(&env.query(&["*"]));
    assert_eq!(before.len(), 5);
    assert!(before.iter().all(|(_, v)| v.is_null()), "{before:?}");

    let dry = env.ok(&["verify", "--all", "--dry-run"]);
    assert_eq!(dry.matches("WOULD VERIFY").count(), 5, "{dry}");
    assert!(scratch_entries(&env).is_empty());

    let out = env.ok(&["verify", "--all"]);
    assert!(out.contains("OK      repository check"), "{out}");
    for atom in [
        "home/users/alice",
        "home/users/bob",
        "db/many/one",
        "db/many/two",
        "db/single/three",
    ] {
        assert!(
            out.lines().any(|l| l.starts_with("OK") && l.contains(atom)),
            "{atom} verified: {out}"
        );
    }
    assert!(out.contains("5 atom versions verified, 0 failed"), "{out}");
    assert!(
        scratch_entries(&env).is_empty(),
        "{:?}",
        scratch_entries(&env)
    );

    let after = verifications(&env.query(&["*"]));
    for (atom, v) in &after {
        assert_eq!(v["result"], "ok", "{atom}: {v}");
        let at: chrono::DateTime<chrono::Utc> = v["verified_at"].as_str().unwrap().parse().unwrap();
        assert!(
            chrono::Utc::now() - at < chrono::TimeDelta::minutes(5),
            "{atom}: {v}"
        );
        assert_eq!(v["last_ok"], v["verified_at"], "{atom}");
    }
    let table = env.ok(&["query", "home/users/alice"]);
    assert!(
        table.contains("VERIFIED") && table.contains("ok 20"),
        "{table}"
    );

    // A sample takes the least recently verified: a new backup's atoms
    // (never verified) first.
    env.ok(&["backup", "home"]);
    let out = env.ok(&[
        "verify",
        "--no-check",
        "--sample",
        "2",
        "--num-versions",
        "0",
    ]);
    let newest = &env.query(&["--num-versions", "1", "home/users/alice"])[0]["id"];
    assert_eq!(
        out.lines().filter(|l| l.starts_with("OK")).count(),
        2,
        "{out}"
    );
    assert!(
        out.lines()
            .filter(|l| l.starts_with("OK"))
            .all(|l| l.contains(newest.as_str().unwrap())),
        "the new backup's atoms first: {out}"
    );
}

/// Overwrite 16 bytes in the middle of the largest pack file under
/// `repo/data/`.
fn corrupt_largest_pack(repo: &Path) -> String {
    let mut packs = Vec::new();
    for sub in std::fs::read_dir(repo.join("data")).unwrap().flatten() {
        for f in std::fs::read_dir(sub.path()).unwrap().flatten() {
            packs.push((f.metadata().unwrap().len(), f.path()));
        }
    }
    packs.sort();
    let (size, pack) = packs.pop().expect("a pack file");
    let mut perms = std::fs::metadata(&pack).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&pack, perms).unwrap();
    let mut bytes = std::fs::read(&pack).unwrap();
    let at = (size / 2) as usize;
    for b in &mut bytes[at..at + 16] {
        *b ^= 0xff;
    }
    std::fs::write(&pack, bytes).unwrap();
    pack.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn a_damaged_pack_fails_the_check_and_the_drill_naming_atom_and_version() {
    let env = Env::new();
    sources(&env);
    // Incompressible, so the pack holding it is the largest by far.
    let noise: Vec<u8> = (0u64..400_000)
        .map(|i| {
            (i.wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407)
                >> 33) as u8
        })
        .collect();
    std::fs::write(env.path("data/alice/noise.bin"), &noise).unwrap();
    env.ok(&["backup", "home"]);
    let backup_id = env.query(&["home/users/alice"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let pack = corrupt_largest_pack(&env.repo());

    let out = env.run(&["verify", "--all", "--read-data-subset", "100%"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("FAILED  repository check"), "{t}");
    assert!(t.contains(&pack[..8]), "the damaged pack is named: {t}");
    let failed: Vec<&str> = t
        .lines()
        .filter(|l| l.starts_with("FAILED  home"))
        .collect();
    assert_eq!(failed.len(), 1, "{t}");
    assert!(
        failed[0].contains("home/users/alice") && failed[0].contains(&backup_id),
        "{t}"
    );
    assert!(
        t.contains("OK      home/users/bob"),
        "bob's data is intact: {t}"
    );
    assert!(
        scratch_entries(&env).is_empty(),
        "{:?}",
        scratch_entries(&env)
    );

    // The failure is in the index, naming what failed.
    let v = verifications(&env.query(&["home/users/alice"]));
    assert_eq!(v[0].1["result"], "failed", "{v:?}");
    assert!(
        v[0].1["error"].as_str().unwrap().contains("restore"),
        "{v:?}"
    );
    assert!(v[0].1.get("last_ok").is_none(), "{v:?}");
}

#[test]
fn live_files_changed_under_a_forged_mtime_differ_newer_ones_do_not_count() {
    let env = Env::new();
    sources(&env);
    env.write("data/alice/c.txt", "same size\n");
    env.ok(&["backup", "home"]);
    // a.txt: new bytes of the same size, its old mtime forged back.
    let a = env.path("data/alice/a.txt");
    let reference = env.path("a.ref");
    std::fs::write(&reference, "").unwrap();
    touch_r(&a, &reference);
    std::fs::write(&a, "ALICE\n").unwrap();
    touch_r(&reference, &a);
    // c.txt: changed with a new mtime: a legitimate change since.
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(env.path("data/alice/c.txt"), "SAME SIZE\n").unwrap();

    let out = env.run(&["verify", "--no-check", "--all", "home/users/alice"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    let line = t
        .lines()
        .find(|l| l.starts_with("FAILED  home/users/alice"))
        .unwrap_or_else(|| panic!("{t}"));
    assert!(line.contains("1 of 2 live files"), "{line}");
    assert!(line.contains("a.txt") && !line.contains("c.txt"), "{line}");

    // Within a tolerance the drill passes, and still reports it.
    let out = env.ok(&[
        "verify",
        "--no-check",
        "--all",
        "--tolerance",
        "50",
        "home/users/alice",
    ]);
    let line = out
        .lines()
        .find(|l| l.starts_with("OK      home/users/alice"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.contains("1 of 2 live files") && line.contains("a.txt"),
        "{line}"
    );
    assert!(scratch_entries(&env).is_empty());
}

/// `touch -r reference target`.
fn touch_r(reference: &Path, target: &Path) {
    let out = run({
        let mut c = Command::new("touch");
        c.arg("-r").arg(reference).arg(target);
        c
    });
    assert!(out.status.success(), "touch -r: {}", text(&out));
}

/// A restic wrapper whose `restore` touches the returned mark and then
/// blocks until killed (a drill caught with its scratch directory in
/// place); every other command is the real restic. (wrapper, mark)
fn slow_restore_restic(env: &Env) -> (std::path::PathBuf, std::path::PathBuf) {
    let mark = env.path("restore-started");
    let wrapper = env.write_executable(
        "slow-restic",
        &format!(
            "#!/bin/sh\nif [ \"$1\" = restore ]; then touch '{}'; exec sleep 60; fi\nexec '{}' \"$@\"\n",
            mark.display(),
            which(&restic())
        ),
    );
    (wrapper, mark)
}

#[test]
fn scratch_is_removed_after_a_kill_at_the_next_start() {
    let env = Env::new();
    sources(&env);
    env.ok(&["backup", "home"]);
    // A restic whose restore blocks until killed, so the drill is caught
    // with its scratch directory in place.
    let (wrapper, mark) = slow_restore_restic(&env);
    let slow = env.path("etc-slow/agent.yml");
    env.write(
        "etc-slow/agent.yml",
        &format!(
            "hostname: testhost\nwork_dir: {}\nrepository:\n  type: restic\n  params:\n    uri: {}\n    password: \"{PASSWORD}\"\n    restic_binary: {}\n",
            env.path("work").display(),
            env.repo().display(),
            wrapper.display()
        ),
    );
    std::fs::create_dir_all(env.path("etc-slow/sources")).unwrap();
    std::fs::copy(
        env.path("etc/sources/home.yml"),
        env.path("etc-slow/sources/home.yml"),
    )
    .unwrap();
    std::fs::create_dir_all(env.path("etc-slow/handlers")).unwrap();
    std::fs::copy(
        env.path("etc/handlers/files.yml"),
        env.path("etc-slow/handlers/files.yml"),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tabacco"))
        .arg("--config")
        .arg(&slow)
        .args(["verify", "--no-check", "--all"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    crate::common::wait_until(30, "the drill's restore to start", || mark.exists());
    assert_eq!(
        scratch_entries(&env).len(),
        1,
        "a scratch directory during the drill"
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_eq!(scratch_entries(&env).len(), 1, "left behind by the kill");
    // The next start (here: the next verify) removes it.
    env.ok(&["verify", "--no-check", "--all"]);
    assert!(
        scratch_entries(&env).is_empty(),
        "{:?}",
        scratch_entries(&env)
    );
}

/// The absolute path of a program on `PATH` (or `p` itself).
fn which(p: &str) -> String {
    if p.contains('/') {
        return p.to_string();
    }
    let out = run({
        let mut c = Command::new("sh");
        c.args(["-c", &format!("command -v {p}")]);
        c
    });
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_stream_that_differs_from_its_fingerprint_fails_naming_the_atom() {
    let env = Env::new();
    sources(&env);
    env.ok(&["backup", "db"]);
    // The fingerprints were recorded on the way in.
    let q = env.query(&["db/*"]);
    for b in q.as_array().unwrap() {
        for ds in b["datasets"].as_array().unwrap() {
            for a in ds["atoms"].as_array().unwrap() {
                assert_eq!(a["sha256"].as_str().map(str::len), Some(64), "{a}");
            }
        }
    }
    // A wrong fingerprint for one spooled and the one streamed atom.
    env.sql(&format!(
        "UPDATE atoms SET sha256 = '{}' WHERE name IN ('two', 'three')",
        "0".repeat(64)
    ));
    let out = env.run(&["verify", "--no-check", "--all"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    for atom in ["db/many/two", "db/single/three"] {
        let line = t
            .lines()
            .find(|l| l.starts_with("FAILED") && l.contains(atom))
            .unwrap_or_else(|| panic!("{atom}: {t}"));
        assert!(
            line.contains("differs from its fingerprint") && line.contains("SHA-256"),
            "{line}"
        );
    }
    assert!(
        t.lines().any(|l| l.starts_with("OK")
            && l.contains("db/many/one")
            && l.contains("matches its SHA-256")),
        "{t}"
    );
    assert!(scratch_entries(&env).is_empty());
    // A wrong size is named too.
    env.sql("UPDATE atoms SET size = size + 1 WHERE name = 'one'");
    let t = text(&env.run(&["verify", "--no-check", "--all", "db/many/one"]));
    assert!(
        t.contains("FAILED  db/many/one") && t.contains("recorded"),
        "{t}"
    );
}

#[test]
fn the_agent_verifies_on_schedule_in_its_own_queue_with_metrics_and_page() {
    let env = Env::new();
    sources(&env);
    env.ok(&["backup", "home", "db"]);
    env.write_main("verify_schedule: '@every 2s'\nverify:\n  all: true\n  check: false\n");
    let agent = crate::agent_proc::Agent::start(&env);
    agent.wait_for(60, "a verification run", || {
        agent.status()["verify"]["last_run"]["ok"] == true
    });
    let st = agent.status();
    assert_eq!(st["verify"]["schedule"], "@every 2s");
    assert_eq!(st["verify"]["last_run"]["verified"], 5, "{st}");
    agent.wait_for(30, "the proof in the metrics", || {
        agent
            .metrics()
            .contains("tabacco_verify_atoms_unverified{source=\"home\"} 0")
    });
    let m = agent.metrics();
    assert!(
        m.contains("tabacco_verify_last_success_timestamp_seconds{source=\"db\"}"),
        "{m}"
    );
    assert!(
        m.contains("tabacco_verify_atoms_total{source=\"home\",result=\"ok\"}"),
        "{m}"
    );
    assert!(m.contains("tabacco_verify_last_run_problems 0"), "{m}");
    let (_, page) = agent.get("/");
    assert!(
        page.contains("Verification") && page.contains("@every 2s"),
        "{page}"
    );

    // A damaged stream: the next run fails, naming atom and version on
    // the page.
    env.sql(&format!(
        "UPDATE atoms SET sha256 = '{}' WHERE name = 'three'",
        "0".repeat(64)
    ));
    agent.wait_for(60, "a failing verification run", || {
        agent.status()["verify"]["last_run"]["failed"] == 1
    });
    let (_, page) = agent.get("/");
    let backup = env.query(&["db/single/three"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        page.contains("db/single/three") && page.contains(&backup) && page.contains("SHA-256"),
        "{page}"
    );
    agent.wait_for(30, "the problem in the metrics", || {
        agent
            .metrics()
            .contains("tabacco_verify_last_run_problems 1")
    });
    agent.stop();
}

#[test]
fn an_agent_killed_during_a_drill_leaves_no_scratch_after_its_next_start() {
    let env = Env::new();
    sources(&env);
    env.ok(&["backup", "home"]);
    let (wrapper, mark) = slow_restore_restic(&env);
    let main = std::fs::read_to_string(env.config()).unwrap();
    let slow = format!(
        "{}    restic_binary: {}\nverify_schedule: '@every 1s'\nverify:\n  check: false\n",
        main.lines()
            .filter(|l| !l.contains("restic_binary"))
            .map(|l| format!("{l}\n"))
            .collect::<String>(),
        wrapper.display()
    );
    env.write("etc/agent.yml", &slow);
    let mut agent = crate::agent_proc::Agent::start(&env);
    agent.wait_for(60, "the drill's restore to start", || mark.exists());
    assert_eq!(scratch_entries(&env).len(), 1);
    agent.signal(nix::sys::signal::Signal::SIGKILL);
    agent.wait_exit(std::time::Duration::from_secs(10));
    assert_eq!(scratch_entries(&env).len(), 1, "left behind by the kill");
    // Next start, no verification scheduled: the leftovers go at once.
    env.write_main("");
    let agent = crate::agent_proc::Agent::start(&env);
    assert!(
        scratch_entries(&env).is_empty(),
        "{:?}",
        scratch_entries(&env)
    );
    agent.stop();
}

#[test]
fn e2e_verify_records_through_the_metadata_server_and_query_returns_it() {
    use sha2::Digest;
    let srv = tempfile::tempdir().unwrap();
    let hash = hex::encode(sha2::Sha256::digest(b"token-of-testhost"));
    let config = srv.path().join("metadb.yml");
    std::fs::write(
        &config,
        format!(
            "database: sqlite://{}\nlisten: 127.0.0.1:0\ntokens:\n  testhost: {hash}\n",
            srv.path().join("metadb.sqlite").display()
        ),
    )
    .unwrap();
    let server = crate::metadb_server::MetadbServer::start(srv.path(), &config, &[]);
    let env = Env::new();
    sources(&env);
    env.write("etc/token", "token-of-testhost\n");
    env.write_main(&format!(
        "metadb:\n  url: {}\n  token_file: {}\n",
        server.base,
        env.path("etc/token").display()
    ));
    env.ok(&["backup", "home", "db"]);
    let out = env.ok(&["verify", "--no-check", "--all"]);
    assert!(out.contains("5 atom versions verified, 0 failed"), "{out}");
    let v = verifications(&env.query(&["*"]));
    assert_eq!(v.len(), 5);
    for (atom, v) in &v {
        assert_eq!(v["result"], "ok", "{atom}: {v}");
    }
    // The server's page has nothing failed to show.
    let addr = server
        .base
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let (code, page) =
        crate::agent_proc::http_get(&addr, "/", &[("Authorization", "Bearer token-of-testhost")]);
    assert_eq!(code, 200, "{page}");
    assert!(
        page.contains("No atom version's latest restore drill failed"),
        "{page}"
    );
    server.terminate();
}

/// Verification results are as durable as dataset records: when the
/// metadata server goes away during the drills (after the reads), `tabacco
/// verify` queues the results in the outbox and says so (exit 0, nothing on
/// the server); once the server is back, `tabacco backup` delivers them and
/// the server answers with them.
#[test]
fn e2e_verify_with_the_server_gone_queues_the_results_and_backup_delivers_them() {
    let srv = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let config = srv.path().join("metadb.yml");
    std::fs::write(
        &config,
        format!(
            "database: sqlite://{}\nlisten: 127.0.0.1:{port}\n",
            srv.path().join("metadb.sqlite").display()
        ),
    )
    .unwrap();
    let server = crate::metadb_server::MetadbServer::start(srv.path(), &config, &[]);
    assert_eq!(server.base, url);
    let env = Env::new();
    sources(&env);
    env.write_main(&format!("metadb:\n  url: {url}\n"));
    env.ok(&["backup", "home", "db"]);
    assert_eq!(verifications(&env.query(&["*"])).len(), 5);

    // restic, through a wrapper that stops the server (SIGTERM, then waits
    // for the port to close) at the first drill's restic call: the reads
    // are done, the results cannot reach the server.
    let stop = env.path("stop-server-pid");
    std::fs::write(&stop, server.pid().to_string()).unwrap();
    let wrapper = env.write_executable(
        "restic-stopping-the-server",
        &format!(
            "#!/bin/bash\ncase \" $* \" in\n  *\" ls \"*|*\" restore \"*|*\" dump \"*)\n    if mv {stop} {stop}.taken 2>/dev/null; then\n      kill -TERM \"$(cat {stop}.taken)\"\n      for _ in $(seq 300); do (echo > /dev/tcp/127.0.0.1/{port}) 2>/dev/null || break; sleep 0.05; done\n    fi;;\nesac\nexec {restic} \"$@\"\n",
            stop = stop.display(),
            restic = restic(),
        ),
    );
    env.write(
        "etc/agent.yml",
        &format!(
            "hostname: testhost\nwork_dir: {work}\nrepository:\n  name: main\n  type: restic\n  params:\n    uri: {repo}\n    password: \"{PASSWORD}\"\n    restic_binary: {bin}\nmetadb:\n  url: {url}\n",
            work = env.path("work").display(),
            repo = env.repo().display(),
            bin = wrapper.display(),
        ),
    );
    let out = env.run(&["verify", "--no-check", "--all"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(!stop.exists(), "the server was stopped: {all}");
    assert!(all.contains("5 atom versions verified, 0 failed"), "{all}");
    assert!(
        all.contains(&format!(
            "5 result(s) queued for delivery to {url} (not in the index yet)"
        )),
        "{all}"
    );
    assert!(!all.contains("recorded in the index"), "{all}");
    let queued: Vec<std::path::PathBuf> = std::fs::read_dir(env.path("work/outbox"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    assert_eq!(queued.len(), 1, "{queued:?}");
    assert_eq!(queued[0].extension().unwrap(), "verifications");
    let body: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&queued[0]).unwrap()).unwrap();
    assert_eq!(body["host"], "testhost");
    assert_eq!(body["verifications"].as_array().unwrap().len(), 5);

    // The server comes back (same port, same database): nothing recorded.
    let _ = server.terminate();
    let server = crate::metadb_server::MetadbServer::start(srv.path(), &config, &[]);
    let v = verifications(&env.query(&["*"]));
    assert!(v.iter().all(|(_, v)| v.is_null()), "{v:?}");

    // The next backup delivers them (behind its own records).
    let out = env.ok(&["backup", "home", "db"]);
    assert!(out.contains(&format!("delivered to {url}")), "{out}");
    assert!(!out.contains("pending delivery"), "{out}");
    assert!(
        std::fs::read_dir(env.path("work/outbox"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .all(|p| !p.is_file() || p.file_name().unwrap().to_string_lossy().starts_with('.')),
        "the outbox is empty"
    );
    let v = verifications(&env.query(&["*"]));
    assert_eq!(v.len(), 10, "two backups of five atoms: {v:?}");
    let proven: Vec<&(String, serde_json::Value)> =
        v.iter().filter(|(_, v)| !v.is_null()).collect();
    assert_eq!(proven.len(), 5, "{v:?}\nserver log:\n{}", server.log());
    for (atom, v) in proven {
        assert_eq!(v["result"], "ok", "{atom}: {v}");
    }
    server.terminate();
}
