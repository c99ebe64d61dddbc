//! Fleet health end to end (issue 15): two agents reporting to one
//! metadata server. Host b's always-failing source reaches `/api/hosts`
//! and the pages with its error within a report interval; a run with one
//! failed dataset is `partial` and does not move the last success; agent a
//! stopped shows as silent after `silent_after`; the pages read in headless
//! Chromium; both `/metrics` pass `promtool check metrics`; the alert rules
//! pass `promtool check rules` and their unit tests.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::agent::metric;
use crate::agent_proc::{Agent, http_get};
use crate::browser::Browser;
use crate::common::{Env, PASSWORD};
use crate::metadb_server::MetadbServer;

/// How often the agents report (`status_report_interval`).
const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// The server's `silent_after`.
const SILENT_AFTER: Duration = Duration::from_secs(4);
/// Allowance for a loaded machine on top of the intervals under test.
const SLACK: Duration = Duration::from_secs(10);

/// `agent.yml` of `host`, reporting to `url` every [`REPORT_INTERVAL`].
fn host_config(env: &Env, host: &str, url: &str) {
    env.write(
        "etc/agent.yml",
        &format!(
            "hostname: {host}\nwork_dir: {work}\nrepository:\n  name: main\n  type: restic\n  params:\n    uri: {repo}\n    password: \"{PASSWORD}\"\nmetadb:\n  url: {url}\nstatus_report_interval: {}ms\nshutdown_timeout: 5s\n",
            REPORT_INTERVAL.as_millis(),
            work = env.path("work").display(),
            repo = env.repo().display(),
        ),
    );
    env.write(
        "etc/handlers/pipe.yml",
        "name: pipe\ntype: pipe\nparams:\n  backup_command: echo data\n  \
         restore_command: 'mkdir -p \"$TABACCO_TARGET\" && cat > \"$TABACCO_TARGET/restored\"'\n",
    );
}

/// The entry of `sources` named `name` in a host of `/api/hosts` or an
/// agent's `/api/status`.
fn source<'a>(host: &'a Value, name: &str) -> Option<&'a Value> {
    host["sources"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == name)
}

fn get_json(base: &str, path: &str) -> Value {
    let (code, body) = http_get(base, path, &[]);
    assert_eq!(code, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

fn host<'a>(hosts: &'a Value, name: &str) -> Option<&'a Value> {
    hosts.as_array()?.iter().find(|h| h["host"] == name)
}

/// Poll `cond` every 100 ms for up to `within`; panics with `what` and the
/// last value seen.
fn wait<T: std::fmt::Debug>(
    within: Duration,
    what: &str,
    mut cond: impl FnMut() -> (bool, T),
) -> T {
    let deadline = Instant::now() + within;
    loop {
        let (ok, seen) = cond();
        if ok {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}; last seen: {seen:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `promtool` from Debian's `prometheus` package (scripts/deps).
fn promtool() -> Command {
    let found = Command::new("promtool").arg("--version").output();
    assert!(
        found.as_ref().is_ok_and(|o| o.status.success()),
        "promtool is missing: install Debian's prometheus package (scripts/deps does): {found:?}"
    );
    Command::new("promtool")
}

/// `promtool check metrics` on `GET addr/metrics` asked in the Prometheus
/// text format; returns the exposition.
fn promtool_check_metrics(addr: &str) -> String {
    let (code, body) = http_get(addr, "/metrics", &[("Accept", "text/plain;version=0.0.4")]);
    assert_eq!(code, 200, "{body}");
    let mut child = promtool()
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics on {addr}/metrics: {}\n{}{}\n---\n{body}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    body
}

fn start_metadb(dir: &Path) -> MetadbServer {
    let config = dir.join("metadb.yml");
    std::fs::write(
        &config,
        format!(
            "database: sqlite://{}\nsilent_after: {}s\n",
            dir.join("metadb.sqlite").display(),
            SILENT_AFTER.as_secs()
        ),
    )
    .unwrap();
    MetadbServer::start(dir, &config, &["--listen", "127.0.0.1:0"])
}

#[test]
fn fleet_failing_source_partial_run_and_silent_host_reach_api_pages_browser_and_metrics() {
    let srv = tempfile::tempdir().unwrap();
    let server = start_metadb(srv.path());
    let base = server.base.strip_prefix("http://").unwrap().to_owned();

    // Host a: one source, not due during the test.
    let a_env = Env::new();
    host_config(&a_env, "host-a", &server.base);
    a_env.write(
        "etc/sources/etc.yml",
        "name: etc\nhandler: pipe\nschedule: '@daily'\ndatasets:\n  - name: conf\n    atoms:\n      - name: all\n",
    );
    // Host b: ldap always fails (before restic runs); mixed has a dataset
    // that fails once the flag file exists.
    let b_env = Env::new();
    host_config(&b_env, "host-b", &server.base);
    b_env.write(
        "etc/sources/ldap.yml",
        "name: ldap\nhandler: pipe\nschedule: '@every 2s'\n\
         pre_backup_command: 'echo \"slapcat: /etc/ldap/slapd.d: permission denied\" >&2; exit 1'\n\
         datasets:\n  - name: tree\n    atoms:\n      - name: all\n",
    );
    let flag = b_env.path("fail-bad");
    b_env.write(
        "etc/sources/mixed.yml",
        &format!(
            "name: mixed\nhandler: pipe\nschedule: '@every 3s'\nparams:\n  backup_command: \
             'if [ \"$TABACCO_DATASET\" = bad ] && [ -e {} ]; then echo \"pg_dump: connection refused\" >&2; exit 1; fi; echo \"data of $TABACCO_BACKUP_ID\"'\n\
             datasets:\n  - name: good\n    atoms:\n      - name: all\n  - name: bad\n    atoms:\n      - name: all\n",
            flag.display()
        ),
    );
    let a = Agent::start(&a_env);
    let b = Agent::start(&b_env);

    // b's failing source reaches the server within one report interval of
    // failing on b (plus slack for a loaded machine), with its error.
    let failed_at = wait(Duration::from_secs(60), "ldap to fail on host-b", || {
        let ldap = source(&b.status(), "ldap").cloned().unwrap();
        (ldap["last_run"]["result"] == "error", ldap)
    });
    let seen_failing = Instant::now();
    assert!(
        failed_at["last_run"]["error"]
            .as_str()
            .unwrap()
            .contains("slapcat: /etc/ldap/slapd.d: permission denied"),
        "{failed_at}"
    );
    let hosts = wait(
        REPORT_INTERVAL + SLACK,
        "ldap failing in /api/hosts",
        || {
            let hosts = get_json(&base, "/api/hosts");
            let ok = host(&hosts, "host-b")
                .and_then(|h| source(h, "ldap"))
                .is_some_and(|s| s["last_run"]["result"] == "error");
            (ok, hosts)
        },
    );
    let delay = seen_failing.elapsed();
    let hb = host(&hosts, "host-b").unwrap();
    let ldap = source(hb, "ldap").unwrap();
    assert!(
        ldap["last_run"]["error"]
            .as_str()
            .unwrap()
            .contains("slapcat: /etc/ldap/slapd.d: permission denied"),
        "{ldap}"
    );
    assert!(ldap["last_success"].is_null(), "{ldap}");
    assert_eq!(hb["silent"], false, "{hb}");
    assert!(hb["last_seen"].is_string(), "{hb}");
    assert_eq!(hb["outbox_pending"].as_i64().map(|n| n >= 0), Some(true));
    let ha = host(&hosts, "host-a").expect("host-a reported");
    assert_eq!(ha["silent"], false, "{ha}");
    assert_eq!(source(ha, "etc").unwrap()["schedule"], "@daily");
    eprintln!("ldap failure reached /api/hosts {delay:?} after the agent showed it");

    // A full run of mixed first, then one with a failed dataset: partial,
    // and the last success does not move.
    let success = wait(Duration::from_secs(60), "a full run of mixed", || {
        let m = b.metrics();
        let v = metric(
            &m,
            r#"tabacco_backup_last_success_timestamp_seconds{source="mixed"}"#,
        );
        (v.is_some(), v)
    })
    .unwrap();
    std::fs::write(&flag, "").unwrap();
    let partials = |m: &str| {
        metric(
            m,
            r#"tabacco_backup_runs_total{source="mixed",result="partial"}"#,
        )
        .unwrap_or(0.0)
    };
    let last_success = |m: &str| {
        metric(
            m,
            r#"tabacco_backup_last_success_timestamp_seconds{source="mixed"}"#,
        )
    };
    // A full run may have been under way when the flag appeared (runs come
    // every 3 s), so the last success is taken at the first partial run:
    // the runs after it all start with the flag, and a second partial run
    // must not move it.
    let m = wait(Duration::from_secs(60), "a partial run of mixed", || {
        let m = b.metrics();
        (partials(&m) >= 1.0, m)
    });
    let first = partials(&m);
    let success = last_success(&m).unwrap_or(success);
    let m = wait(
        Duration::from_secs(60),
        "another partial run of mixed",
        || {
            let m = b.metrics();
            (partials(&m) > first, m)
        },
    );
    assert_eq!(
        last_success(&m),
        Some(success),
        "a partial run moved the last success:\n{m}"
    );
    let failure = metric(
        &m,
        r#"tabacco_backup_last_failure_timestamp_seconds{source="mixed"}"#,
    )
    .unwrap();
    assert!(failure > success, "{m}");
    let mixed = source(&b.status(), "mixed").cloned().unwrap();
    // The latest run may be a later partial one: still partial.
    assert_eq!(mixed["last_run"]["result"], "partial", "{mixed}");
    assert_eq!(mixed["last_run"]["datasets_failed"], 1, "{mixed}");
    assert_eq!(mixed["last_run"]["datasets_recorded"], 1, "{mixed}");
    assert!(
        mixed["last_run"]["error"]
            .as_str()
            .unwrap()
            .contains("pg_dump: connection refused"),
        "{mixed}"
    );
    wait(
        REPORT_INTERVAL + SLACK,
        "mixed partial on the server",
        || {
            let hosts = get_json(&base, "/api/hosts");
            let s = host(&hosts, "host-b")
                .and_then(|h| source(h, "mixed"))
                .cloned();
            let ok = s
                .as_ref()
                .is_some_and(|s| s["last_run"]["result"] == "partial");
            (ok, s)
        },
    );

    // The agent's page links to the server's and shows the outbox.
    let (_, page) = b.get("/");
    assert!(
        page.contains(&format!("<a href=\"{}/\">", server.base)),
        "{page}"
    );
    assert!(page.contains("Outbox:"), "{page}");

    // host-b reports the repository it backs up into (learnt by its
    // backups); host-a, which has not backed up, reports none. Nobody
    // prunes host-b's repository: the server says so.
    let hosts = get_json(&base, "/api/hosts");
    let repo_id = host(&hosts, "host-b").unwrap()["repository_id"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("host-b reports its repository: {hosts}"));
    assert_eq!(repo_id.len(), 64, "{repo_id}");
    assert!(host(&hosts, "host-a").unwrap()["repository_id"].is_null());
    let (code, fleet_page) = http_get(&base, "/", &[]);
    assert_eq!(code, 200, "{fleet_page}");
    assert!(
        fleet_page.contains("<h2>Repositories</h2>")
            && fleet_page.contains(&format!("<code title=\"{repo_id}\">"))
            && fleet_page.contains("1 (host-b)")
            && fleet_page.contains("repository no host prunes"),
        "{fleet_page}"
    );

    // Both /metrics in the Prometheus text format pass promtool.
    promtool_check_metrics(&b.addr);
    let server_metrics = promtool_check_metrics(&base);
    assert_eq!(
        metric(
            &server_metrics,
            &format!(r#"tabacco_repository_pruners{{repository="{repo_id}"}}"#)
        ),
        Some(0.0),
        "{server_metrics}"
    );
    assert_eq!(
        metric(
            &server_metrics,
            r#"tabacco_source_failing{host="host-b",source="ldap"}"#
        ),
        Some(1.0),
        "{server_metrics}"
    );
    assert_eq!(
        metric(&server_metrics, r#"tabacco_host_silent{host="host-a"}"#),
        Some(0.0),
        "{server_metrics}"
    );
    // OpenMetrics stays the default.
    let (_, om) = http_get(&base, "/metrics", &[]);
    assert!(om.ends_with("# EOF\n"), "{om}");

    // Stop agent a: silent after silent_after, not before.
    a.stop();
    let stopped = Instant::now();
    let hosts = wait(
        SILENT_AFTER + REPORT_INTERVAL + SLACK,
        "host-a silent",
        || {
            let hosts = get_json(&base, "/api/hosts");
            let silent = host(&hosts, "host-a").is_some_and(|h| h["silent"] == true);
            (silent, hosts)
        },
    );
    assert!(
        stopped.elapsed() >= SILENT_AFTER - REPORT_INTERVAL,
        "silent too early: {:?}",
        stopped.elapsed()
    );
    assert_eq!(host(&hosts, "host-b").unwrap()["silent"], false, "{hosts}");
    let m = promtool_check_metrics(&base);
    assert_eq!(
        metric(&m, r#"tabacco_host_silent{host="host-a"}"#),
        Some(1.0),
        "{m}"
    );

    // What a person sees, in a real browser.
    let mut browser = Browser::start();
    let text = browser.rendered_text(&format!("{}/", server.base));
    for want in [
        "Needs attention",
        "failing sources",
        "silent hosts",
        "ldap",
        "slapcat: /etc/ldap/slapd.d: permission denied",
        "mixed",
        "pg_dump: connection refused",
        "silent: no report for",
    ] {
        assert!(
            text.contains(want),
            "the fleet page does not show {want:?}:\n{text}"
        );
    }
    // Host b (failing sources) is listed before host a (silent).
    let (ib, ia) = (text.find("host-b").unwrap(), text.find("host-a").unwrap());
    assert!(ib < ia, "{text}");

    let text = browser.rendered_text(&format!("{}/hosts/host-b", server.base));
    for want in [
        "Host host-b",
        "ldap",
        "error",
        "slapcat: /etc/ldap/slapd.d: permission denied",
        "partial",
        "1 of 2 datasets",
        "tabacco restore --host host-b --target /tmp/restore 'mixed/*'",
    ] {
        assert!(
            text.contains(want),
            "host-b's page does not show {want:?}:\n{text}"
        );
    }

    // Search results: each version with the command that restores exactly
    // it. Take an older version (newest first) and run its command.
    let text = browser.rendered_text(&format!(
        "{}/?pattern=mixed%2Fgood%2F*&host=host-b",
        server.base
    ));
    let rows: Vec<Vec<&str>> = text
        .lines()
        .filter(|l| l.starts_with("mixed/good/all\t"))
        .map(|l| l.split('\t').map(str::trim).collect())
        .collect();
    assert!(rows.len() >= 2, "two versions of mixed/good/all:\n{text}");
    let row = &rows[1];
    let (backup_id, cmd) = (row[5], row[6]);
    assert_eq!(
        cmd,
        format!("tabacco restore --backup-id {backup_id} --target /tmp/restore mixed/good/all")
    );
    let target = b_env.path("restored");
    let mut args: Vec<String> = cmd.split_whitespace().skip(1).map(String::from).collect();
    let t = args.iter().position(|w| w == "--target").unwrap();
    args[t + 1] = target.display().to_string();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    b_env.ok(&args);
    let restored = std::fs::read_to_string(target.join("restored"))
        .unwrap_or_else(|e| panic!("the page's restore command restored nothing: {e}"));
    assert_eq!(restored, format!("data of {backup_id}\n"), "{cmd}");

    drop(browser);
    b.stop();
    server.terminate();
}

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/prometheus");
    for args in [
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts_test.yml"],
    ] {
        let out = promtool().args(args).current_dir(&dir).output().unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
