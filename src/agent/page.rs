//! The status page: one self-contained HTML document (inline style, no
//! scripts, no external assets) that refreshes itself every 10 seconds.
//! Every value from the configuration or from commands is escaped.

use std::fmt::Write;

use chrono::{DateTime, SecondsFormat, Utc};

use super::AgentStatus;
use crate::jobs::status::JobInfo;
use crate::model::RunResult;

pub use crate::html::escape;

fn time(t: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    match t {
        None => "—".to_string(),
        Some(t) => {
            let d = t - now;
            let secs = d.num_seconds().unsigned_abs();
            let rel = humantime::format_duration(std::time::Duration::from_secs(secs)).to_string();
            let rel = if secs == 0 {
                "now".to_string()
            } else if d.num_seconds() > 0 {
                format!("in {rel}")
            } else {
                format!("{rel} ago")
            };
            format!(
                "<span title=\"{}\">{}</span>",
                t.to_rfc3339_opts(SecondsFormat::Secs, true),
                escape(&rel)
            )
        }
    }
}

fn secs(d: Option<f64>) -> String {
    match d {
        None => "—".to_string(),
        Some(d) => {
            let whole = std::time::Duration::from_secs(d.max(0.0).round() as u64);
            humantime::format_duration(whole).to_string()
        }
    }
}

fn result_cell(result: Option<RunResult>) -> String {
    let Some(result) = result else {
        return "?".to_string();
    };
    let class = match result {
        RunResult::Ok => "ok",
        RunResult::Partial | RunResult::Error => "err",
        RunResult::Skipped | RunResult::Cancelled => "warn",
    };
    format!("<span class=\"{class}\">{}</span>", result.as_str())
}

fn short(id: &Option<String>) -> String {
    match id {
        Some(id) => format!(
            "<code title=\"{}\">{}</code>",
            escape(id),
            escape(&id[id.len().saturating_sub(8)..])
        ),
        None => "—".to_string(),
    }
}

fn progress(job: &JobInfo) -> String {
    let mut out = String::new();
    for d in &job.datasets {
        let _ = write!(out, "<div><b>{}</b> {}", escape(&d.name), escape(&d.state));
        if let Some(p) = d.progress.as_ref().filter(|p| p.total_bytes <= 0) {
            // A stream of unknown size: no percentage to show.
            let rate = if p.seconds_elapsed > 0 {
                format!(
                    " · {}/s",
                    crate::util::bytes(p.bytes_done / p.seconds_elapsed)
                )
            } else {
                String::new()
            };
            let _ = write!(
                out,
                " streaming, size unknown · {} so far{rate} · {}s elapsed",
                crate::util::bytes(p.bytes_done),
                p.seconds_elapsed
            );
        } else if let Some(p) = &d.progress {
            let pct = (p.percent_done * 100.0).clamp(0.0, 100.0);
            let _ = write!(
                out,
                " <progress max=\"100\" value=\"{pct:.0}\"></progress> {pct:.1}% · {} files",
                p.files_done
            );
            if p.total_files > 0 {
                let _ = write!(out, "/{}", p.total_files);
            }
            let _ = write!(out, " · {}", crate::util::bytes(p.bytes_done));
            if p.total_bytes > 0 {
                let _ = write!(out, "/{}", crate::util::bytes(p.total_bytes));
            }
            let _ = write!(out, " · {}s elapsed", p.seconds_elapsed);
            if let Some(f) = p.current_files.first() {
                let _ = write!(out, " · <code>{}</code>", escape(f));
            }
        }
        out.push_str("</div>");
    }
    if out.is_empty() {
        out.push_str("starting");
    }
    out
}

/// The verification section: schedule, next and last run, and each
/// problem of the last run (failed drills name atom, version and what
/// differed).
fn verify_section(h: &mut String, v: &super::VerifyStatus, now: DateTime<Utc>) {
    let _ = write!(
        h,
        "<h2>Verification</h2>\n<p>Schedule <code>{}</code> · next run {}{}",
        escape(
            v.schedule
                .as_deref()
                .unwrap_or("none (tabacco verify only)")
        ),
        time(v.next_run, now),
        if v.running { " · <b>running</b>" } else { "" }
    );
    match &v.last_run {
        None => h.push_str(" · no run since the agent started</p>\n"),
        Some(r) => {
            let _ = writeln!(
                h,
                " · last run {} ({}): <span class=\"{}\">{}</span>, {} atom version(s) verified, {} failed, {} skipped, {} restored{}</p>",
                time(Some(r.finished_at), now),
                secs(Some(r.duration_seconds)),
                if r.ok { "ok" } else { "err" },
                if r.ok { "ok" } else { "FAILED" },
                r.verified,
                r.failed,
                r.skipped,
                crate::util::bytes(r.bytes),
                match r.check_ok {
                    Some(true) => ", repository check ok",
                    Some(false) => ", <span class=\"err\">repository check found damage</span>",
                    None => "",
                }
            );
            if let Some(url) = &r.results_queued_for {
                let _ = writeln!(
                    h,
                    "<p>Results queued for delivery to <code>{}</code>: not in the index yet (the outbox delivers them)</p>",
                    escape(url)
                );
            }
            if !r.problems.is_empty() {
                h.push_str("<ul class=\"err\">\n");
                for p in &r.problems {
                    let _ = writeln!(h, "<li>{}</li>", escape(p));
                }
                h.push_str("</ul>\n");
            }
        }
    }
}

/// A forget, prune or reconcile outcome: when, and what it did or why it
/// failed (in red).
fn maintenance_cell(run: Option<&crate::model::MaintenanceRun>, now: DateTime<Utc>) -> String {
    match run {
        None => "—".to_string(),
        Some(r) if r.ok => format!(
            "<span class=\"ok\">ok</span> {}: {}",
            time(Some(r.finished_at), now),
            escape(&r.summary)
        ),
        Some(r) => format!(
            "<span class=\"err\">FAILED</span> {}: {}",
            time(Some(r.finished_at), now),
            escape(&r.summary)
        ),
    }
}

/// Render the page for `status` as seen at `now`.
pub fn render(status: &AgentStatus, now: DateTime<Utc>) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta http-equiv=\"refresh\" content=\"10\">\
<title>tabacco agent on {host}</title>\
<style>body{{font-family:sans-serif;margin:1.5em;color:#222}}table{{border-collapse:collapse;margin-bottom:1.5em}}\
th,td{{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}}th{{background:#eee}}\
.ok{{color:#080}}.err{{color:#b00;font-weight:bold}}.warn{{color:#a60}}.banner{{background:#fed;padding:.5em}}\
code{{font-size:90%}}</style></head><body>\n<h1>tabacco agent on {host}</h1>\n\
<p>version {version} · started {started} · configuration <code>{config}</code> loaded {loaded} · \
<a href=\"/api/status\">JSON</a> · <a href=\"/metrics\">metrics</a></p>\n",
        host = escape(&status.host),
        version = escape(&status.version),
        started = time(Some(status.started_at), now),
        config = escape(&status.config_file),
        loaded = time(Some(status.config_loaded_at), now),
    );
    if let Some(url) = &status.metadb_url {
        let _ = writeln!(
            h,
            "<p>Metadata server: <a href=\"{url}/\">{url}</a> (every host of the fleet, search and restore commands)</p>",
            url = escape(url.trim_end_matches('/'))
        );
    }
    match (status.outbox_pending, status.outbox_rejected) {
        (Some(0), Some(0)) => h.push_str(
            "<p class=\"ok\">Outbox: every record has been delivered to the metadata server.</p>\n",
        ),
        (Some(pending), rejected) => {
            let _ = write!(
                h,
                "<p class=\"banner err\">Outbox: {pending} record(s) not yet delivered to the metadata server"
            );
            if let Some(r) = rejected.filter(|r| *r > 0) {
                let _ = write!(
                    h,
                    "; {r} refused for good and kept in <code>outbox/rejected/</code> (see the <code>.reason</code> files)"
                );
            }
            h.push_str(". Until they are delivered those backups cannot be found from other hosts; the agent's log says why delivery fails.</p>\n");
        }
        (None, _) if status.metadb_url.is_some() => h.push_str(
            "<p class=\"banner err\">Outbox: cannot read the outbox directory (see the agent's log).</p>\n",
        ),
        (None, _) => {}
    }
    if status.shutting_down {
        h.push_str("<p class=\"banner\">Shutting down: no new backups start; running jobs are finishing.</p>\n");
    }

    let _ = write!(
        h,
        "<h2>Sources ({})</h2>\n<table><tr><th>Source</th><th>Schedule</th><th>Next run</th><th>Last result</th><th>Finished</th><th>Duration</th><th>Last success</th><th>Skipped runs</th><th>Failed datasets</th><th>Error</th><th>Retention</th></tr>\n",
        status.sources.len()
    );
    for s in &status.sources {
        let (result, finished, duration, failed, error) = match &s.last_run {
            Some(r) => (
                result_cell(Some(r.result)),
                time(Some(r.finished_at), now),
                secs(Some(r.duration_seconds)),
                r.failed_text(),
                r.error.as_deref().map(escape).unwrap_or_default(),
            ),
            None => (
                "—".into(),
                "—".into(),
                "—".into(),
                "—".into(),
                String::new(),
            ),
        };
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{result}</td><td>{finished}</td><td>{duration}</td><td>{}</td><td>{}</td><td>{failed}</td><td>{error}</td><td>{}</td></tr>",
            escape(&s.name),
            escape(s.schedule.as_deref().unwrap_or("on demand")),
            time(s.next_run, now),
            time(s.last_success, now),
            s.skipped_runs,
            maintenance_cell(s.last_forget.as_ref(), now),
        );
    }
    h.push_str("</table>\n");

    verify_section(&mut h, &status.verify, now);
    h.push_str("<h2>Repository maintenance</h2>\n<table>");
    let _ = writeln!(
        h,
        "<tr><th>Prune</th><td>{}</td></tr>",
        match &status.prune_schedule {
            None => "this host never prunes (no <code>prune_schedule</code>)".to_string(),
            Some(s) => format!(
                "<code>{}</code>, next {}; last: {}",
                escape(s),
                time(status.next_prune, now),
                maintenance_cell(status.last_prune.as_ref(), now)
            ),
        }
    );
    let _ = writeln!(
        h,
        "<tr><th>Reconcile at start</th><td>{}</td></tr>",
        maintenance_cell(status.last_reconcile.as_ref(), now)
    );
    h.push_str("</table>\n");

    let jobs = &status.jobs;
    let _ = writeln!(h, "<h2>Running ({})</h2>", jobs.running.len());
    if !jobs.running.is_empty() {
        h.push_str("<table><tr><th>Source</th><th>Job</th><th>Backup</th><th>Started</th><th>Elapsed</th><th>Progress</th></tr>\n");
        for j in &jobs.running {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&j.source),
                short(&Some(j.id.clone())),
                short(&j.backup_id),
                time(j.started_at, now),
                secs(j.duration_seconds),
                progress(j),
            );
        }
        h.push_str("</table>\n");
    }
    let _ = writeln!(h, "<h2>Pending ({})</h2>", jobs.pending.len());
    if !jobs.pending.is_empty() {
        h.push_str("<table><tr><th>Source</th><th>Job</th><th>Queue</th><th>Queued</th></tr>\n");
        for j in &jobs.pending {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&j.source),
                short(&Some(j.id.clone())),
                escape(&j.queue),
                time(Some(j.created_at), now),
            );
        }
        h.push_str("</table>\n");
    }
    let _ = writeln!(h, "<h2>Recent jobs ({})</h2>", jobs.done.len());
    if !jobs.done.is_empty() {
        h.push_str("<table><tr><th>Source</th><th>Result</th><th>Finished</th><th>Duration</th><th>Backup</th><th>Added</th><th>Error</th></tr>\n");
        for j in &jobs.done {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&j.source),
                result_cell(j.result),
                time(j.finished_at, now),
                secs(j.duration_seconds),
                short(&j.backup_id),
                crate::util::bytes(j.bytes_added),
                j.error.as_deref().map(escape).unwrap_or_default(),
            );
        }
        h.push_str("</table>\n");
    }
    h.push_str("</body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::{LastRun, SourceStatus};
    use crate::jobs::status::{JobResult, StatusRegistry};
    use crate::model::{Dataset, RunningJobStatus};

    #[test]
    fn page_lists_sources_and_jobs_and_escapes_them() {
        let now: DateTime<Utc> = "2026-03-01T12:00:00Z".parse().unwrap();
        let reg = StatusRegistry::new();
        let running = reg.add_pending("backup", "db", "backup");
        reg.set_running(&running);
        let ds = Dataset {
            id: "d1".into(),
            name: "users".into(),
            source: "db".into(),
            ..Default::default()
        };
        reg.dataset_started(&running, &ds);
        reg.progress(
            &running,
            "d1",
            &RunningJobStatus {
                percent_done: 0.42,
                files_done: 5,
                total_files: 10,
                total_bytes: 100,
                current_files: vec!["/srv/<evil>".into()],
                ..Default::default()
            },
        );
        let stream = Dataset {
            id: "d2".into(),
            name: "dump".into(),
            ..ds.clone()
        };
        reg.dataset_started(&running, &stream);
        reg.progress(
            &running,
            "d2",
            &RunningJobStatus {
                bytes_done: 4096,
                seconds_elapsed: 2,
                ..Default::default()
            },
        );
        reg.add_pending("backup", "files", "backup");
        let done = reg.add_pending("backup", "old", "backup");
        reg.finish(&done, JobResult::Error, Some("exit status 1".into()));
        let status = AgentStatus {
            host: "h<1>".into(),
            version: "0.1.0".into(),
            started_at: now,
            config_file: "/etc/tabacco/agent.yml".into(),
            config_loaded_at: now,
            shutting_down: true,
            sources: vec![SourceStatus {
                name: "db".into(),
                schedule: Some("@every 1h".into()),
                next_run: Some("2026-03-01T13:00:00Z".parse().unwrap()),
                last_run: Some(LastRun {
                    result: RunResult::Partial,
                    finished_at: "2026-03-01T11:00:00Z".parse().unwrap(),
                    duration_seconds: 12.0,
                    backup_id: Some("b".into()),
                    job_id: None,
                    error: Some("dataset 'ldap': slapcat: permission denied".into()),
                    datasets_recorded: 2,
                    datasets_failed: 1,
                    atoms_failed: 4,
                }),
                last_success: None,
                skipped_runs: 3,
                last_forget: Some(crate::model::MaintenanceRun {
                    finished_at: "2026-03-01T11:01:00Z".parse().unwrap(),
                    ok: false,
                    summary: "metadata server unavailable".into(),
                }),
            }],
            jobs: reg.snapshot(),
            outbox_pending: Some(4),
            outbox_rejected: Some(0),
            metadb_url: Some("https://metadb.example:7443/".into()),
            verify: super::super::VerifyStatus {
                schedule: Some("@weekly".into()),
                next_run: None,
                running: false,
                last_run: Some(super::super::VerifyRun {
                    finished_at: "2026-03-01T11:00:00Z".parse().unwrap(),
                    duration_seconds: 3.0,
                    ok: false,
                    check_ok: Some(true),
                    verified: 4,
                    failed: 1,
                    skipped: 0,
                    bytes: 2048,
                    problems: vec![
                        "failed db/x/<y> version b1 (2026-03-01T10:00:00Z): SHA-256 differs".into(),
                    ],
                    results_queued_for: Some("https://metadb.example:7443/".into()),
                }),
            },
            prune_schedule: Some("@weekly".into()),
            next_prune: None,
            last_prune: Some(crate::model::MaintenanceRun {
                finished_at: "2026-03-01T10:00:00Z".parse().unwrap(),
                ok: true,
                summary: "to delete: 3 blobs".into(),
            }),
            last_reconcile: None,
        };
        let html = render(&status, now);
        assert!(
            html.contains("<code>@weekly</code>")
                && html.contains("4 atom version(s) verified, 1 failed"),
            "{html}"
        );
        assert!(html.contains("failed db/x/&lt;y&gt; version b1"), "{html}");
        assert!(
            html.contains(
                "Results queued for delivery to <code>https://metadb.example:7443/</code>"
            ),
            "{html}"
        );
        // A failed forget and the last prune are on the page.
        assert!(
            html.contains("FAILED</span>") && html.contains("metadata server unavailable"),
            "{html}"
        );
        assert!(html.contains("<code>@weekly</code>") && html.contains("to delete: 3 blobs"));
        assert!(html.contains(">partial<") && html.contains("1 of 3 datasets (4 atoms)"));
        assert!(html.contains("slapcat: permission denied"));
        assert!(html.contains("4 record(s) not yet delivered"));
        assert!(html.contains("<a href=\"https://metadb.example:7443/\">"));
        assert!(html.contains("h&lt;1&gt;"));
        assert!(!html.contains("<evil>"));
        assert!(html.contains("/srv/&lt;evil&gt;"));
        assert!(html.contains("<code>@every 1h</code>"));
        assert!(html.contains("in 1h"));
        assert!(html.contains("42.0%"));
        assert!(
            html.contains("streaming, size unknown · 4.00 KiB so far · 2.00 KiB/s"),
            "{html}"
        );
        assert!(
            html.contains("Running (1)")
                && html.contains("Pending (1)")
                && html.contains("Recent jobs (1)")
        );
        assert!(html.contains("exit status 1"));
        assert!(html.contains("Shutting down"));
        assert!(
            !html.contains("src=\"http") && !html.contains("<link"),
            "no external assets"
        );
    }
}
