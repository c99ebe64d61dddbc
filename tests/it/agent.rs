//! The agent (`tabacco agent`): schedules, queues, locks, status page and
//! metrics, reload on SIGHUP, clean shutdown on SIGTERM, and no child
//! process left behind, even when the agent is killed.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::agent_proc::{Agent, processes_with};
use crate::common::{Env, text};

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The pipe handler every source here uses.
fn pipe_handler(env: &Env) {
    env.write(
        "etc/handlers/pipe.yml",
        "name: pipe\ntype: pipe\nparams:\n  backup_command: echo \"data of $TABACCO_SOURCE\"\n  restore_command: cat > /dev/null\n",
    );
}

/// A source with one pipe dataset; `extra` is appended (YAML lines).
fn source(env: &Env, name: &str, schedule: &str, backup_command: Option<&str>, extra: &str) {
    let params = match backup_command {
        Some(c) => format!("params:\n  backup_command: {}\n", quote(c)),
        None => String::new(),
    };
    env.write(
        &format!("etc/sources/{name}.yml"),
        &format!(
            "name: {name}\nhandler: pipe\nschedule: {}\n{params}datasets:\n  - name: dump\n    atoms:\n      - name: all\n{extra}",
            quote(schedule)
        ),
    );
}

/// Count of each source's backups in the index.
fn backups_per_source(env: &Env) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for b in env.query(&["*"]).as_array().unwrap() {
        for ds in b["datasets"].as_array().unwrap() {
            *out.entry(ds["source"].as_str().unwrap().to_string())
                .or_insert(0) += 1;
        }
    }
    out
}

/// The value of a metric line (exact name and labels).
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[test]
fn agent_every_2s_backs_up_twice_within_10s_and_reports_on_page_api_and_metrics() {
    let env = Env::new();
    pipe_handler(&env);
    source(&env, "db", "@every 2s", None, "");
    source(&env, "manual", "@daily", None, "");
    env.write(
        "etc/sources/ondemand.yml",
        "name: ondemand\nhandler: pipe\ndatasets:\n  - name: dump\n    atoms:\n      - name: all\n",
    );
    let started = Instant::now();
    let agent = Agent::start(&env);
    agent.wait_for(10, "two backups of db in the index", || {
        backups_per_source(&env).get("db").copied().unwrap_or(0) >= 2
    });
    assert!(started.elapsed() <= Duration::from_secs(10));
    // Only the source that is due ran.
    assert_eq!(backups_per_source(&env).keys().collect::<Vec<_>>(), ["db"]);

    // The random seed file was created, private.
    use std::os::unix::fs::PermissionsExt;
    let seed = std::fs::metadata(env.path("work/random_seed")).expect("seed file");
    assert_eq!(seed.permissions().mode() & 0o777, 0o600);
    assert!(seed.len() >= 8);

    let status = agent.status();
    assert_eq!(status["host"], "testhost");
    let sources = status["sources"].as_array().unwrap();
    let db = sources
        .iter()
        .find(|s| s["name"] == "db")
        .expect("db listed");
    assert_eq!(db["schedule"], "@every 2s");
    assert_eq!(db["last_run"]["result"], "ok", "{db}");
    assert!(
        db["next_run"].is_string() && db["last_success"].is_string(),
        "{db}"
    );
    let ondemand = sources.iter().find(|s| s["name"] == "ondemand").unwrap();
    assert!(ondemand["schedule"].is_null() && ondemand["next_run"].is_null());
    let done = status["jobs"]["done"].as_array().unwrap();
    assert!(done.len() >= 2, "{status}");
    assert_eq!(done[0]["source"], "db");
    assert_eq!(done[0]["result"], "ok");
    assert!(done[0]["backup_id"].is_string());

    let (code, page) = agent.get("/");
    assert_eq!(code, 200);
    assert!(page.starts_with("<!DOCTYPE html>"), "{page}");
    assert!(
        page.contains("<td>db</td>") && page.contains("@every 2s"),
        "{page}"
    );
    assert!(page.contains("on demand"), "{page}");

    let m = agent.metrics();
    assert!(
        metric(&m, r#"tabacco_backup_runs_total{source="db",result="ok"}"#).unwrap() >= 2.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            r#"tabacco_backup_runs_total{source="db",result="error"}"#
        ),
        Some(0.0),
        "{m}"
    );
    let last = metric(
        &m,
        r#"tabacco_backup_last_success_timestamp_seconds{source="db"}"#,
    )
    .unwrap();
    let now = chrono::Utc::now().timestamp() as f64;
    assert!(last > now - 30.0 && last <= now + 1.0, "{m}");
    assert!(metric(&m, r#"tabacco_backup_duration_seconds{source="db"}"#).unwrap() > 0.0);
    assert!(
        metric(&m, r#"tabacco_backup_files_total{source="db"}"#).unwrap() >= 2.0,
        "{m}"
    );
    assert!(
        metric(&m, r#"tabacco_backup_bytes_added_total{source="db"}"#).is_some(),
        "{m}"
    );
    assert!(
        metric(&m, r#"tabacco_jobs{state="pending"}"#).is_some(),
        "{m}"
    );
    assert!(
        m.contains(&format!(
            "tabacco_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{m}"
    );
    assert_eq!(agent.get("/nope").0, 404);

    // Every job log line carries the source; dataset lines the dataset and
    // backup id.
    let log = agent.log();
    let line = log
        .lines()
        .find(|l| l.contains("dataset backed up and recorded"))
        .expect("dataset line in the log");
    assert!(
        line.contains("source=db") && line.contains("backup_id=") && line.contains("dataset=dump"),
        "{line}"
    );
}

#[test]
fn agent_queue_limit_of_one_runs_one_restic_at_a_time() {
    let env = Env::new();
    env.write_main("queue_config:\n  workers:\n    backup: 1\n");
    pipe_handler(&env);
    let hooks = env.path("hooks.log");
    // The same epoch-aligned schedule: all three are due at the same instant.
    for name in ["q1", "q2", "q3"] {
        source(
            &env,
            name,
            "@every 3s",
            Some("sleep 0.3; echo data"),
            &format!(
                "pre_backup_command: echo \"start $TABACCO_SOURCE $(date +%s.%N)\" >> {log}\npost_backup_command: echo \"end $TABACCO_SOURCE $(date +%s.%N)\" >> {log}\n",
                log = hooks.display()
            ),
        );
    }
    let agent = Agent::start(&env);
    // Sample the process table while the jobs run: `restic backup`s only
    // (the queue limits backups; the agent's reconcile at start lists
    // snapshots with a restic of its own, outside the queue).
    let max_restic = Arc::new(Mutex::new((0usize, Vec::<String>::new())));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (max_restic, stop, marker, pid) = (
            max_restic.clone(),
            stop.clone(),
            agent.marker.clone(),
            agent.pid() as i32,
        );
        std::thread::spawn(move || {
            let mut samples = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let backups: Vec<String> = processes_with(&marker, pid)
                    .into_iter()
                    .filter(|p| p.comm == "restic" && p.cmdline.split(' ').any(|a| a == "backup"))
                    .map(|p| p.cmdline)
                    .collect();
                let mut m = max_restic.lock().unwrap();
                if backups.len() > m.0 {
                    *m = (backups.len(), backups);
                }
                samples += 1;
                drop(m);
                std::thread::sleep(Duration::from_millis(5));
            }
            samples
        })
    };
    agent.wait_for(30, "a backup of each of the three sources", || {
        let b = backups_per_source(&env);
        // The post hook runs after the record: wait for it too.
        let ends = std::fs::read_to_string(&hooks)
            .map(|t| t.lines().filter(|l| l.starts_with("end")).count())
            .unwrap_or(0);
        ends >= 3
            && ["q1", "q2", "q3"]
                .iter()
                .all(|s| b.get(*s).copied().unwrap_or(0) >= 1)
    });
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let samples = sampler.join().unwrap();
    assert!(samples > 20, "the sampler ran ({samples} samples)");
    let (max, seen) = max_restic.lock().unwrap().clone();
    assert_eq!(
        max, 1,
        "never more than one restic backup at once: {seen:#?}"
    );

    // The hooks' timestamps: no two backups overlapped.
    let text = std::fs::read_to_string(&hooks).unwrap();
    let mut spans: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut open: BTreeMap<String, f64> = BTreeMap::new();
    let mut all = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let t: f64 = f[2].parse().unwrap();
        match f[0] {
            "start" => {
                open.insert(f[1].to_string(), t);
            }
            _ => {
                let s = open.remove(f[1]).expect("end after start");
                spans.entry(f[1].to_string()).or_default().push((s, t));
                all.push((s, t));
            }
        }
    }
    all.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
    assert!(all.len() >= 3, "{text}");
    for w in all.windows(2) {
        assert!(w[1].0 >= w[0].1, "backups overlapped: {w:?}\n{text}");
    }
    // While one ran, the others waited pending in the queue.
    assert!(agent.log().contains("backup job queued"));
}

#[test]
fn agent_skips_and_counts_overlapping_runs_of_a_slow_source() {
    let env = Env::new();
    pipe_handler(&env);
    source(&env, "slow", "@every 1s", Some("sleep 4; echo slow"), "");
    let agent = Agent::start(&env);
    agent.wait_for(15, "two skipped runs", || {
        metric(
            &agent.metrics(),
            r#"tabacco_backup_runs_total{source="slow",result="skipped"}"#,
        )
        .unwrap_or(0.0)
            >= 2.0
    });
    // Skipped, not queued: never more than one job of the source.
    let status = agent.status();
    let jobs = &status["jobs"];
    let active =
        jobs["pending"].as_array().unwrap().len() + jobs["running"].as_array().unwrap().len();
    assert_eq!(active, 1, "{status}");
    let running = &jobs["running"][0];
    assert_eq!(running["source"], "slow");
    assert!(running["backup_id"].is_string(), "{running}");
    let slow = &status["sources"][0];
    assert!(slow["skipped_runs"].as_u64().unwrap() >= 2, "{slow}");
    let log = agent.log();
    assert!(
        log.contains(
            "scheduled backup skipped: source 'slow' is already being backed up by the agent"
        ),
        "{log}"
    );
    // The page shows the running job.
    let (_, page) = agent.get("/");
    assert!(page.contains("Running (1)"), "{page}");
    // The slow run still completes and is recorded.
    agent.wait_for(15, "the slow backup to finish", || {
        backups_per_source(&env).get("slow").copied().unwrap_or(0) >= 1
    });
}

#[test]
fn agent_holds_the_lock_so_a_manual_backup_is_refused_naming_the_holder() {
    let env = Env::new();
    pipe_handler(&env);
    source(&env, "slow", "@every 1s", Some("sleep 6; echo slow"), "");
    let agent = Agent::start(&env);
    agent.wait_for(10, "the agent's backup of slow to run", || {
        agent
            .children()
            .iter()
            .any(|p| p.cmdline.contains("sleep 6"))
    });
    let started = Instant::now();
    let out = env.run(&["backup", "slow"]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused at once, not after waiting"
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let msg = text(&out);
    assert!(
        msg.contains(&format!(
            "source 'slow' is already being backed up by the agent (pid {}, since ",
            agent.pid()
        )),
        "{msg}"
    );
    assert!(msg.contains("locks/slow.lock"), "{msg}");
}

#[test]
fn agent_sighup_starts_new_sources_and_keeps_old_config_when_broken() {
    use nix::sys::signal::Signal;
    let env = Env::new();
    pipe_handler(&env);
    source(&env, "a", "@every 2s", None, "");
    let mut agent = Agent::start(&env);
    agent.wait_for(15, "a backup of a", || {
        backups_per_source(&env).contains_key("a")
    });

    // A new source file, then SIGHUP: the new source runs.
    source(&env, "b", "@every 1s", None, "");
    agent.signal(Signal::SIGHUP);
    agent.wait_for(15, "a backup of the new source b", || {
        backups_per_source(&env).contains_key("b")
    });
    assert!(
        agent.log().contains("configuration reloaded"),
        "{}",
        agent.log()
    );

    // A broken file, then SIGHUP: every error logged, the old config kept.
    env.write(
        "etc/sources/c.yml",
        "name: c\nhandler: nope\nschedule: often\ndatasets: [{name: d, atoms: [{name: x}]}]\n",
    );
    agent.signal(Signal::SIGHUP);
    agent.wait_for(10, "the failed reload in the log", || {
        agent.log().contains(
            "configuration reload failed with 2 error(s): keeping the previous configuration",
        )
    });
    let log = agent.log();
    for needle in ["c.yml: handler:", "c.yml: schedule:"] {
        assert!(log.contains(needle), "{needle} not in log:\n{log}");
    }
    assert!(agent.child_alive());
    let status = agent.status();
    let names: Vec<&str> = status["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b"]);
    let m = agent.metrics();
    assert_eq!(
        metric(&m, r#"tabacco_config_reloads_total{result="error"}"#),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, r#"tabacco_config_reloads_total{result="ok"}"#),
        Some(1.0),
        "{m}"
    );
    // And the agent keeps backing up (the CLI cannot read the broken tree:
    // ask the agent).
    let ok_runs =
        |m: &str| metric(m, r#"tabacco_backup_runs_total{source="b",result="ok"}"#).unwrap_or(0.0);
    let before = ok_runs(&m);
    agent.wait_for(15, "another backup of b", || {
        ok_runs(&agent.metrics()) > before
    });
}

#[test]
fn agent_sigterm_during_a_long_pipe_backup_exits_in_time_leaving_no_child() {
    use nix::sys::signal::Signal;
    let env = Env::new();
    env.write_main("shutdown_timeout: 2s\n");
    pipe_handler(&env);
    // The dump is a pipeline: bash -> sleep, plus restic reading it.
    source(
        &env,
        "long",
        "@every 1s",
        Some("sleep 300 | cat; echo never"),
        "",
    );
    let mut agent = Agent::start(&env);
    agent.wait_for(15, "the long dump and restic to run", || {
        let c = agent.children();
        c.iter().any(|p| p.cmdline == "sleep 300") && c.iter().any(|p| p.comm == "restic")
    });
    let started = Instant::now();
    agent.signal(Signal::SIGTERM);
    let status = agent
        .wait_exit(Duration::from_secs(2 + 5))
        .unwrap_or_else(|| panic!("agent still running 7s after SIGTERM:\n{}", agent.log()));
    assert!(status.success(), "exit status {status}:\n{}", agent.log());
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "the grace period was given"
    );
    let log = agent.log();
    assert!(log.contains("cancelling the running jobs"), "{log}");
    assert!(log.contains("agent stopped"), "{log}");
    // Nothing the agent started is left (give the kernel a moment).
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let left = agent.children();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "processes left behind: {left:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn agent_sigkill_leaves_no_child_process_behind() {
    use nix::sys::signal::Signal;
    let env = Env::new();
    pipe_handler(&env);
    source(
        &env,
        "long",
        "@every 1s",
        Some("sleep 300 | cat; echo never"),
        "",
    );
    let mut agent = Agent::start(&env);
    // The dump and restic's backup (not the `restic init` of the first
    // run, which comes and goes before it), each with its supervisor.
    agent.wait_for(15, "the long dump and restic backup to run", || {
        let c = agent.children();
        c.len() >= 4
            && c.iter().any(|p| p.cmdline == "sleep 300")
            && c.iter()
                .any(|p| p.comm == "restic" && p.cmdline.contains(" backup "))
    });
    agent.signal(Signal::SIGKILL);
    agent.wait_exit(Duration::from_secs(5)).expect("killed");
    // The supervisors stop their groups: politely, then SIGKILL after 5s
    // (and run `restic unlock`): gone within 10 s.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = agent.children();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "processes left behind: {left:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The kernel dropped the dead agent's lock: a backup by hand may run.
    source(&env, "long", "@daily", None, "");
    let out = env.run(&["backup", "long"]);
    assert!(out.status.success(), "{}", text(&out));

    // A new agent knows the last success from the index before any run.
    let agent = Agent::start(&env);
    agent.wait_for(5, "the last success read from the index", || {
        metric(
            &agent.metrics(),
            r#"tabacco_backup_last_success_timestamp_seconds{source="long"}"#,
        )
        .is_some()
    });
    assert!(agent.status()["sources"][0]["last_success"].is_string());
}

/// Issue 10: the agent's `work_dir` (its embedded index) fills up, all
/// but 64 KiB. Its backups of a dataset of 300 long-named atoms fail while
/// the disk is full (the snapshot is made, its record cannot be written);
/// once space is freed the same agent records again, without a restart (a
/// pooled connection used to stay stuck inside a transaction, and every
/// later record failed).
#[test]
fn agent_records_again_once_its_full_work_dir_is_freed() {
    let env = Env::new();
    std::fs::create_dir_all(env.path("work")).unwrap();
    let Some(fs) = crate::faults::SmallTmpfs::mount_on(&env.path("work"), "4m") else {
        return;
    };
    let data = env.path("data");
    for i in 0..300 {
        std::fs::write(data.join(format!("{i:03}-{}", "n".repeat(200))), "x").unwrap();
    }
    env.write("etc/handlers/files.yml", "name: files\ntype: file\n");
    env.write(
        "etc/sources/files.yml",
        &format!(
            "name: files\nhandler: files\nschedule: '@every 1s'\nparams: {{path: {d}}}\n\
             datasets:\n  - name: all\n    atoms_command: ls {d}\n",
            d = data.display()
        ),
    );
    let mut agent = Agent::start(&env);
    let recorded = || backups_per_source(&env).get("files").copied().unwrap_or(0);
    agent.wait_for(60, "a first backup", || recorded() >= 1);
    let filler = fs.fill_leaving(64 << 10);
    let errors = |agent: &Agent| {
        metric(
            &agent.metrics(),
            r#"tabacco_backup_runs_total{source="files",result="error"}"#,
        )
        .unwrap_or(0.0)
    };
    agent.wait_for(60, "two backups failing on the full disk", || {
        errors(&agent) >= 2.0
    });
    std::fs::remove_file(filler).unwrap();
    let before = recorded();
    agent.wait_for(60, "two backups recorded after freeing space", || {
        recorded() >= before + 2
    });
    let log = agent.log();
    assert!(
        log.contains("could not be recorded in the index") && log.contains("free space"),
        "{log}"
    );
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(agent.wait_exit(Duration::from_secs(60)).is_some());
    drop(agent);
    drop(fs);
}
