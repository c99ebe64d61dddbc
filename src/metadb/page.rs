//! The server's web pages.
//!
//! `GET /` answers "is my fleet safe?" at the top: counts of hosts, silent
//! hosts, failing and stale sources, running jobs and undelivered records
//! (rules in [`super::fleet`]); then the hosts, those needing attention
//! first, each with its failing sources and their errors; the running jobs
//! with source and dataset names and honest progress (a spinner and the
//! throughput when a stream's size is unknown); an atom search whose
//! results give, for each version, the exact `tabacco restore` command
//! that restores it; and the newest backups.
//!
//! `GET /hosts/{host}`: one host's sources (schedule, next run, last result
//! and error, last success, newest version, a restore command), its running
//! jobs and its recent runs.
//!
//! Rendered on the server as self-contained HTML documents: inline CSS, no
//! scripts, no external assets (a restrictive `Content-Security-Policy`
//! says so to the browser). Every value from the index or a report goes
//! through [`escape`].

use std::fmt::Write;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;

use super::AppState;
use super::auth::Caller;
use super::error::ApiError;
use super::fleet::{self, Summary};
use super::routes::{HostStatus, host_statuses_at};
use crate::glob;
use crate::metadata::MetadataError;
use crate::model::{Backup, FindRequest, JobStatus, RunResult, SourceReport, atom_path};

/// Most search result rows shown.
pub const MAX_RESULT_ROWS: usize = 1000;
/// Recent backups shown.
pub const RECENT_BACKUPS: i64 = 20;
/// Recent runs shown on a host's page.
pub const HOST_BACKUPS: i64 = 50;
/// Where the restore commands shown restore to (the operator edits it).
pub const RESTORE_TARGET: &str = "/tmp/restore";

/// The search form's fields (all optional).
#[derive(Debug, Default, Deserialize)]
pub struct SearchForm {
    /// Atom pattern; empty: no search.
    #[serde(default)]
    pub pattern: Option<String>,
    /// Only this host.
    #[serde(default)]
    pub host: Option<String>,
    /// Newest N versions per atom (empty or 0: all).
    #[serde(default)]
    pub versions: Option<String>,
}

pub use crate::html::escape;

/// A duration as its two largest units: `3d 4h`, `5h 12m`, `7m 3s`, `9s`.
pub fn format_age(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, minutes, seconds) = (s / 86400, s / 3600 % 24, s / 60 % 60, s % 60);
    let two = |big: u64, bu: &str, small: u64, su: &str| {
        if small == 0 {
            format!("{big}{bu}")
        } else {
            format!("{big}{bu} {small}{su}")
        }
    };
    if days > 0 {
        two(days, "d", hours, "h")
    } else if hours > 0 {
        two(hours, "h", minutes, "m")
    } else if minutes > 0 {
        two(minutes, "m", seconds, "s")
    } else {
        format!("{seconds}s")
    }
}

/// A time as shown on the page.
fn time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Age of `t` at `now` (zero for times in the future).
fn age(now: DateTime<Utc>, t: &DateTime<Utc>) -> Duration {
    (now - *t).to_std().unwrap_or_default()
}

const STYLE: &str = "\
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}\
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}\
table{border-collapse:collapse;margin-top:.5em}\
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}\
th{background:#f0f0f0}td.num{text-align:right}\
tr.bad td{background:#fde2e1}tr.warn td{background:#fff4d6}\
tr.stale td{background:#fde2e1}tr.stale td.age{font-weight:bold;color:#a00}\
.meta{color:#666;font-size:.9em}.error,.err{color:#a00;font-weight:bold}\
.ok{color:#080}.warnt{color:#a60;font-weight:bold}\
.tiles{display:flex;flex-wrap:wrap;gap:.6em;margin:.8em 0}\
.tile{border:1px solid #ccc;border-radius:.4em;padding:.4em .8em;min-width:8em}\
.tile b{display:block;font-size:1.6em}.tile.bad{background:#fde2e1;border-color:#a00}\
.tile.good{background:#e6f4e6}.verdict{font-size:1.1em;font-weight:bold}\
.verdict.bad{color:#a00}.verdict.good{color:#080}\
.spin{display:inline-block;width:.8em;height:.8em;border:2px solid #999;\
border-top-color:transparent;border-radius:50%;animation:s 1s linear infinite}\
@keyframes s{to{transform:rotate(360deg)}}\
code{font-family:ui-monospace,monospace}code.cmd{white-space:pre-wrap;overflow-wrap:anywhere}\
form label{margin-right:1em}input[type=number]{width:5em}";

/// The headers every page is sent with.
fn html_response(status: StatusCode, html: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; \
                 frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        html,
    )
        .into_response()
}

/// The start of a page, up to and including `<body>` and its `<h1>`.
fn head(html: &mut String, title: &str, refresh: bool) {
    html.push_str(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
    );
    if refresh {
        html.push_str("<meta http-equiv=\"refresh\" content=\"30\">");
    }
    let _ = write!(html, "<title>{}</title><style>", escape(title));
    html.push_str(STYLE);
    let _ = write!(html, "</style></head><body><h1>{}</h1>", escape(title));
}

/// The link to a host's page.
pub fn host_href(host: &str) -> String {
    format!(
        "/hosts/{}",
        percent_encoding::utf8_percent_encode(host, percent_encoding::NON_ALPHANUMERIC)
    )
}

/// `text` as one shell word: as is when it holds only safe characters,
/// otherwise in single quotes (a `'` written as `'\''`).
pub fn shell_quote(text: &str) -> String {
    let safe = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./:@%+=,-".contains(c));
    if safe {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// The `tabacco restore` command line that restores exactly the version of
/// atom `path` in backup `backup_id`: the backup named, and the path as a
/// pattern that matches only itself.
pub fn restore_command(backup_id: &str, path: &str) -> String {
    format!(
        "tabacco restore --backup-id {} --target {} {}",
        shell_quote(backup_id),
        RESTORE_TARGET,
        shell_quote(&glob::literal(path))
    )
}

/// `GET /`: the fleet page.
pub async fn page(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    form: Result<Query<SearchForm>, QueryRejection>,
) -> Result<Response, ApiError> {
    state.auth.check_read(&caller)?;
    let Query(form) = form.map_err(|e| ApiError::BadRequest(format!("query string: {e}")))?;
    let now = Utc::now();
    let mut hosts = host_statuses_at(&state, now).await?;
    let recent = state.store.recent_backups(RECENT_BACKUPS).await?;

    let (search, status) = match search_section(&state, &form, &hosts).await {
        Ok(html) => (html, StatusCode::OK),
        Err(SearchError::BadRequest(html)) => (html, StatusCode::BAD_REQUEST),
        Err(SearchError::Api(e)) => return Err(e),
    };
    let searching = form
        .pattern
        .as_deref()
        .is_some_and(|p| !p.trim().is_empty());

    let mut html = String::with_capacity(16 * 1024);
    head(&mut html, "tabacco fleet", !searching);
    let _ = write!(
        html,
        "<p class=\"meta\">As of {} UTC. A host is silent after {} without a report; a source \
         is stale when its last full backup is older than {}. \
         <a href=\"/api/hosts\">JSON</a> · <a href=\"/metrics\">metrics</a></p>",
        escape(&time(&now)),
        escape(&format_age(state.silent_after)),
        escape(&format_age(state.stale_after))
    );
    let summary = fleet::summary(&hosts, now, state.stale_after);
    summary_section(&mut html, &summary);
    hosts.sort_by_key(|h| fleet::attention(h, now, state.stale_after));
    hosts_section(&mut html, &hosts, now, state.stale_after);
    repositories_section(&mut html, &hosts, now);
    jobs_section(&mut html, &hosts, now, true);
    let failed = state
        .store
        .failed_verifications(None, FAILED_DRILLS)
        .await?;
    failed_drills_section(&mut html, &failed, true);
    html.push_str(&search);
    recent_section(&mut html, &recent);
    html.push_str("</body></html>\n");
    Ok(html_response(status, html))
}

/// Failed restore drills listed on a page.
const FAILED_DRILLS: i64 = 50;

/// The atom versions whose latest restore drill failed (`tabacco
/// verify`): atom, version, when, what differed, the last ok drill.
fn failed_drills_section(
    html: &mut String,
    failed: &[crate::metadata::FailedVerification],
    host_column: bool,
) {
    html.push_str("<section><h2>Failed restore drills</h2>");
    if failed.is_empty() {
        html.push_str(
            "<p>No atom version's latest restore drill failed (<code>tabacco verify</code>, \
             <code>verify_schedule</code>).</p></section>",
        );
        return;
    }
    html.push_str("<table><thead><tr>");
    if host_column {
        html.push_str("<th>Host</th>");
    }
    html.push_str(
        "<th>Atom</th><th>Version (backup)</th><th>Drilled (UTC)</th><th>What failed</th>\
         <th>Last ok drill</th></tr></thead><tbody>",
    );
    for f in failed {
        html.push_str("<tr>");
        if host_column {
            let _ = write!(
                html,
                "<td><a href=\"{}\">{}</a></td>",
                escape(&host_href(&f.host)),
                escape(&f.host)
            );
        }
        let v = &f.verification;
        let _ = write!(
            html,
            "<td><code>{}</code></td><td><code>{}</code> ({})</td><td>{}</td><td class=\"err\">{}</td><td>{}</td></tr>",
            escape(&f.atom_path),
            escape(&v.backup_id),
            escape(&time(&f.backup_time)),
            escape(&time(&v.verified_at)),
            escape(v.error.as_deref().unwrap_or("failed")),
            v.last_ok
                .map_or_else(|| "never".to_owned(), |t| escape(&time(&t))),
        );
    }
    html.push_str("</tbody></table></section>");
}

/// The counts and the one-line verdict.
fn summary_section(html: &mut String, s: &Summary) {
    html.push_str("<section aria-label=\"summary\"><div class=\"tiles\">");
    let tile = |html: &mut String, n: String, what: &str, bad: Option<bool>| {
        let class = match bad {
            Some(true) => " bad",
            Some(false) => " good",
            None => "",
        };
        let _ = write!(
            html,
            "<div class=\"tile{class}\"><b>{}</b>{}</div>",
            escape(&n),
            escape(what)
        );
    };
    tile(html, s.hosts.to_string(), "hosts", None);
    tile(
        html,
        s.silent_hosts.to_string(),
        "silent hosts",
        Some(s.silent_hosts > 0),
    );
    tile(
        html,
        s.failing_sources.to_string(),
        "failing sources",
        Some(s.failing_sources > 0),
    );
    tile(
        html,
        s.stale_sources.to_string(),
        "stale sources",
        Some(s.stale_sources > 0),
    );
    tile(
        html,
        s.retention_failing.to_string(),
        "retention failing",
        Some(s.retention_failing > 0),
    );
    tile(html, s.running_jobs.to_string(), "running jobs", None);
    tile(
        html,
        s.undelivered_records.to_string(),
        "undelivered records",
        Some(s.undelivered_records > 0),
    );
    html.push_str("</div>");
    let mut problems = Vec::new();
    let mut count = |n: usize, one: &str, many: &str| {
        if n == 1 {
            problems.push(format!("1 {one}"));
        } else if n > 1 {
            problems.push(format!("{n} {many}"));
        }
    };
    count(s.failing_sources, "failing source", "failing sources");
    count(s.silent_hosts, "silent host", "silent hosts");
    count(s.stale_sources, "stale source", "stale sources");
    count(
        s.retention_failing,
        "source whose retention failed",
        "sources whose retention failed",
    );
    count(
        s.prune_failing,
        "host whose prune failed",
        "hosts whose prune failed",
    );
    count(
        s.unpruned_repositories,
        "repository no host prunes",
        "repositories no host prunes",
    );
    count(
        usize::try_from(s.undelivered_records).unwrap_or(0),
        "undelivered record",
        "undelivered records",
    );
    if s.hosts == 0 {
        html.push_str("<p class=\"verdict bad\">No host has reported yet.</p>");
    } else if problems.is_empty() {
        let _ = write!(
            html,
            "<p class=\"verdict good\">All {} hosts reported recently and every source's last \
             backup recorded every dataset.</p>",
            s.hosts
        );
    } else {
        let _ = write!(
            html,
            "<p class=\"verdict bad\">Needs attention: {}.</p>",
            escape(&problems.join(", "))
        );
    }
    html.push_str("</section>");
}

/// The repositories the hosts back up into: who shares each, who prunes
/// it, and how its last prune ended. Hosts that report no repository yet
/// are left out.
fn repositories_section(html: &mut String, hosts: &[HostStatus], now: DateTime<Utc>) {
    let repos = fleet::repositories(hosts);
    if repos.is_empty() {
        return;
    }
    html.push_str(
        "<section><h2>Repositories</h2><table><thead><tr><th>Repository</th><th>Hosts</th>\
         <th>Pruned by</th><th>Last prune</th></tr></thead><tbody>",
    );
    for r in &repos {
        let names = |list: &[&str]| {
            let shown: Vec<String> = list.iter().take(10).map(|h| escape(h)).collect();
            let more = list.len().saturating_sub(shown.len());
            if more > 0 {
                format!("{} and {more} more", shown.join(", "))
            } else {
                shown.join(", ")
            }
        };
        let (class, pruners) = if r.pruners.is_empty() {
            (
                " class=\"warn\"",
                "<span class=\"warnt\">no host: set <code>prune_schedule</code> on one of them \
                 (forgotten snapshots keep their space until a prune)</span>"
                    .to_owned(),
            )
        } else {
            ("", names(&r.pruners))
        };
        let last = match r.last_prune {
            None => "–".to_owned(),
            Some((host, p)) => format!(
                "{} {} by {}: {}",
                if p.ok {
                    "<span class=\"ok\">ok</span>"
                } else {
                    "<span class=\"err\">FAILED</span>"
                },
                ago(now, &p.finished_at),
                escape(host),
                escape(&p.summary)
            ),
        };
        let _ = write!(
            html,
            "<tr{class}><td><code title=\"{}\">{}</code></td><td>{} ({})</td><td>{pruners}</td>\
             <td>{last}</td></tr>",
            escape(r.id),
            escape(&r.id.chars().take(8).collect::<String>()),
            r.hosts.len(),
            names(&r.hosts),
        );
    }
    html.push_str("</tbody></table></section>");
}

/// A run result as a coloured word.
fn result_word(r: RunResult) -> String {
    let class = match r {
        RunResult::Ok => "ok",
        RunResult::Partial | RunResult::Error => "err",
        RunResult::Skipped | RunResult::Cancelled => "warnt",
    };
    format!("<span class=\"{class}\">{}</span>", r.as_str())
}

/// "5m ago" for a time, with the exact time as a tooltip.
fn ago(now: DateTime<Utc>, t: &DateTime<Utc>) -> String {
    format!(
        "<span title=\"{}\">{} ago</span>",
        escape(&time(t)),
        escape(&format_age(age(now, t)))
    )
}

/// What is wrong with a host, one line each (empty: nothing).
fn host_problems(h: &HostStatus, now: DateTime<Utc>, stale_after: Duration) -> Vec<String> {
    let mut out = Vec::new();
    if h.silent {
        out.push(match &h.last_seen {
            Some(t) => format!(
                "<div class=\"err\">silent: no report for {} (agent stopped, or cannot reach \
                 this server)</div>",
                escape(&format_age(age(now, t)))
            ),
            None => "<div class=\"err\">silent: its agent has never reported to this server</div>"
                .to_owned(),
        });
    }
    for s in h.state.sources.iter().flatten() {
        if let Some(r) = s.last_run.as_ref().filter(|_| fleet::is_failing(s)) {
            out.push(format!(
                "<div><b>{}</b>: {} {} — <span class=\"err\">{}</span></div>",
                escape(&s.name),
                result_word(r.result),
                ago(now, &r.finished_at),
                escape(r.error.as_deref().unwrap_or("(no error text)")),
            ));
        }
        if let Some(r) = s
            .last_forget
            .as_ref()
            .filter(|_| fleet::retention_failing(s))
        {
            out.push(format!(
                "<div><b>{}</b>: retention failed {} — <span class=\"err\">{}</span></div>",
                escape(&s.name),
                ago(now, &r.finished_at),
                escape(&r.summary),
            ));
        }
        if !fleet::is_failing(s) && fleet::is_stale(s, now, stale_after) {
            out.push(match &s.last_success {
                Some(t) => format!(
                    "<div><b>{}</b>: <span class=\"warnt\">stale</span>, last full backup {}</div>",
                    escape(&s.name),
                    ago(now, t)
                ),
                None => format!(
                    "<div><b>{}</b>: <span class=\"warnt\">stale</span>, never backed up in full</div>",
                    escape(&s.name)
                ),
            });
        }
    }
    if let Some(r) = h
        .state
        .last_prune
        .as_ref()
        .filter(|_| fleet::prune_failing(h))
    {
        out.push(format!(
            "<div>prune of the repository failed {} — <span class=\"err\">{}</span></div>",
            ago(now, &r.finished_at),
            escape(&r.summary),
        ));
    }
    let pending = h.state.outbox_pending.unwrap_or(0);
    if pending > 0 {
        out.push(format!(
            "<div class=\"warnt\">{pending} record(s) waiting in its outbox</div>"
        ));
    }
    let rejected = h.state.outbox_rejected.unwrap_or(0);
    if rejected > 0 {
        out.push(format!(
            "<div class=\"err\">{rejected} record(s) refused by this server (see \
             outbox/rejected/ on the host)</div>"
        ));
    }
    out
}

/// Hosts, those needing attention first.
fn hosts_section(
    html: &mut String,
    hosts: &[HostStatus],
    now: DateTime<Utc>,
    stale_after: Duration,
) {
    html.push_str("<section><h2>Hosts</h2>");
    if hosts.is_empty() {
        html.push_str("<p>No host has reported yet.</p></section>");
        return;
    }
    html.push_str(
        "<table><thead><tr><th>Host</th><th>Last seen</th><th>Sources</th><th>Problems</th>\
         <th>Last backup (UTC)</th><th>Backups</th><th>Running</th></tr></thead><tbody>",
    );
    for h in hosts {
        let rank = fleet::attention(h, now, stale_after);
        let class = match rank {
            0 | 1 => " class=\"bad\"",
            2 => " class=\"warn\"",
            _ => "",
        };
        let seen = match &h.last_seen {
            Some(t) => ago(now, t),
            None => "never".to_owned(),
        };
        let sources = match &h.state.sources {
            None => "<span class=\"meta\">not reported</span>".to_owned(),
            Some(list) => {
                let failing = list.iter().filter(|s| fleet::is_failing(s)).count();
                if failing > 0 {
                    format!(
                        "{} <span class=\"err\">({failing} failing)</span>",
                        list.len()
                    )
                } else {
                    format!("{} <span class=\"ok\">ok</span>", list.len())
                }
            }
        };
        let problems = host_problems(h, now, stale_after);
        let last = match &h.last_backup {
            Some(t) => format!(
                "{} ({} ago)",
                escape(&time(t)),
                escape(&format_age(age(now, t)))
            ),
            None => "never".to_owned(),
        };
        let mut jobs: Vec<&str> = h.active_jobs.iter().map(|j| j.job_id.as_str()).collect();
        jobs.sort_unstable();
        jobs.dedup();
        let _ = write!(
            html,
            "<tr{class}><td><a href=\"{}\">{}</a></td><td>{seen}{}</td><td>{sources}</td>\
             <td>{}</td><td>{last}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            escape(&host_href(&h.host)),
            escape(&h.host),
            if h.silent {
                " <span class=\"err\">(silent)</span>"
            } else {
                ""
            },
            if problems.is_empty() {
                "<span class=\"ok\">none</span>".to_owned()
            } else {
                problems.concat()
            },
            h.backups,
            jobs.len(),
        );
    }
    html.push_str("</tbody></table></section>");
}

/// Progress of one dataset, honestly: a bar only when the size is known;
/// for a stream of unknown size a spinner, the bytes read and the
/// throughput.
fn progress_cell(j: &JobStatus) -> (String, String, String) {
    if j.state.as_deref() == Some("pending") {
        return ("waiting for a slot".into(), "–".into(), "–".into());
    }
    let Some(s) = &j.status else {
        return (
            "<span class=\"spin\"></span> starting".into(),
            "–".into(),
            "–".into(),
        );
    };
    let files = if s.total_files > 0 {
        format!("{} / {}", s.files_done, s.total_files)
    } else {
        s.files_done.to_string()
    };
    let elapsed = s.seconds_elapsed.max(0);
    if s.total_bytes > 0 {
        let pct = if s.percent_done.is_finite() {
            s.percent_done.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let mut cell = format!(
            "<progress max=\"1\" value=\"{pct:.3}\">{:.0}%</progress> {:.0}%",
            pct * 100.0,
            pct * 100.0
        );
        if s.seconds_remaining > 0 {
            let _ = write!(
                cell,
                ", {} left",
                escape(&format_age(Duration::from_secs(s.seconds_remaining as u64)))
            );
        }
        let bytes = format!(
            "{} / {}",
            crate::util::bytes(s.bytes_done),
            crate::util::bytes(s.total_bytes)
        );
        (cell, escape(&files), escape(&bytes))
    } else {
        let rate = if elapsed > 0 {
            format!(", {}/s", crate::util::bytes(s.bytes_done / elapsed))
        } else {
            String::new()
        };
        (
            format!(
                "<span class=\"spin\"></span> streaming, size unknown ({} so far{}, {})",
                escape(&crate::util::bytes(s.bytes_done)),
                escape(&rate),
                escape(&format_age(Duration::from_secs(elapsed as u64)))
            ),
            escape(&files),
            escape(&crate::util::bytes(s.bytes_done)),
        )
    }
}

/// Running jobs: source and dataset names, running datasets and those
/// waiting to start.
fn jobs_section(html: &mut String, hosts: &[HostStatus], now: DateTime<Utc>, host_column: bool) {
    html.push_str("<section><h2>Running jobs</h2>");
    let jobs: Vec<_> = hosts
        .iter()
        .filter(|h| !h.silent)
        .flat_map(|h| h.active_jobs.iter().map(move |j| (h, j)))
        .collect();
    if jobs.is_empty() {
        html.push_str("<p>No job is running.</p></section>");
        return;
    }
    html.push_str("<table><thead><tr>");
    if host_column {
        html.push_str("<th>Host</th>");
    }
    html.push_str(
        "<th>Source</th><th>Dataset</th><th>Progress</th><th>Files</th><th>Data</th>\
         <th>Reported</th></tr></thead><tbody>",
    );
    for (h, j) in jobs {
        let (progress, files, bytes) = progress_cell(j);
        let dataset = match &j.dataset_name {
            Some(n) => format!(
                "<span title=\"{}\">{}</span>",
                escape(&j.dataset_id),
                escape(n)
            ),
            None => format!("<code>{}</code>", escape(&j.dataset_id)),
        };
        let reported = h.last_seen.map_or_else(|| "–".to_owned(), |t| ago(now, &t));
        html.push_str("<tr>");
        if host_column {
            let _ = write!(
                html,
                "<td><a href=\"{}\">{}</a></td>",
                escape(&host_href(&h.host)),
                escape(&h.host)
            );
        }
        let _ = write!(
            html,
            "<td>{}</td><td>{dataset}</td><td>{progress}</td><td class=\"num\">{files}</td>\
             <td class=\"num\">{bytes}</td><td>{reported}</td></tr>",
            escape(&j.dataset_source),
        );
    }
    html.push_str("</tbody></table></section>");
}

/// Why the search section could not be rendered normally.
enum SearchError {
    /// The form was wrong: the section with the message.
    BadRequest(String),
    /// The database failed.
    Api(ApiError),
}

/// The search form, and results if a pattern was given.
async fn search_section(
    state: &AppState,
    form: &SearchForm,
    hosts: &[HostStatus],
) -> Result<String, SearchError> {
    let pattern = form.pattern.as_deref().unwrap_or("").trim();
    let host = form.host.as_deref().unwrap_or("").trim();
    let versions_text = form.versions.as_deref().unwrap_or("").trim();
    let mut html = String::new();
    html.push_str("<section><h2>Search atoms</h2><form method=\"get\" action=\"/\">");
    let _ = write!(
        html,
        "<label>Pattern <input name=\"pattern\" size=\"40\" placeholder=\"source/dataset/*\" \
         value=\"{}\"></label>",
        escape(pattern)
    );
    let _ = write!(
        html,
        "<label>Host <input name=\"host\" list=\"hosts\" placeholder=\"any\" value=\"{}\"></label>",
        escape(host)
    );
    html.push_str("<datalist id=\"hosts\">");
    for h in hosts {
        let _ = write!(html, "<option value=\"{}\">", escape(&h.host));
    }
    html.push_str("</datalist>");
    let _ = write!(
        html,
        "<label>Versions <input name=\"versions\" type=\"number\" min=\"0\" size=\"4\" \
         placeholder=\"all\" value=\"{}\"></label>",
        escape(versions_text)
    );
    html.push_str("<button type=\"submit\">Search</button></form>");
    html.push_str(
        "<p class=\"meta\">Patterns match <code>source/dataset/atom</code>: <code>*</code> \
         matches anything (also <code>/</code>), <code>?</code> one character, \
         <code>[abc]</code> one of a set. Each version comes with the command that restores \
         it (run it on any host of the fleet; change <code>--target</code>).</p>",
    );
    if pattern.is_empty() {
        html.push_str("</section>");
        return Ok(html);
    }
    let bad = |mut html: String, msg: &str| {
        let _ = write!(html, "<p class=\"error\">{}</p></section>", escape(msg));
        SearchError::BadRequest(html)
    };
    let num_versions = if versions_text.is_empty() {
        0
    } else {
        match versions_text.parse::<i64>() {
            Ok(n) if n >= 0 => n,
            _ => {
                return Err(bad(
                    html,
                    &format!("Versions must be a whole number ≥ 0, not {versions_text:?}."),
                ));
            }
        }
    };
    let req = FindRequest {
        pattern: pattern.to_owned(),
        host: host.to_owned(),
        num_versions,
        older_than: None,
    };
    let backups = match state.store.find_atoms(&req).await {
        Ok(b) => b,
        Err(MetadataError::BadRequest(msg)) => return Err(bad(html, &msg)),
        Err(e) => return Err(SearchError::Api(e.into())),
    };
    results_table(&mut html, &backups);
    html.push_str("</section>");
    Ok(html)
}

/// The rows of a search result: one per atom version, with its restore
/// command.
fn results_table(html: &mut String, backups: &[Backup]) {
    let total: usize = backups
        .iter()
        .flat_map(|b| b.datasets.iter())
        .map(|d| d.atoms.len())
        .sum();
    if total == 0 {
        html.push_str("<p>No atom matches.</p>");
        return;
    }
    if total > MAX_RESULT_ROWS {
        let _ = write!(
            html,
            "<p class=\"meta\">{total} versions match; showing the newest {MAX_RESULT_ROWS}. \
             Narrow the pattern or set Versions.</p>"
        );
    } else {
        let _ = write!(html, "<p class=\"meta\">{total} versions match.</p>");
    }
    html.push_str(
        "<table><thead><tr><th>Atom</th><th>Time</th><th>Host</th><th>Snapshot</th>\
         <th>Size</th><th>Backup</th><th>Restore command</th></tr></thead><tbody>",
    );
    let rows = backups.iter().flat_map(|b| {
        b.datasets
            .iter()
            .flat_map(move |d| d.atoms.iter().map(move |a| (b, d, a)))
    });
    for (b, d, a) in rows.take(MAX_RESULT_ROWS) {
        let short: String = d.snapshot_id.chars().take(8).collect();
        let path = atom_path(&d.source, &d.name, &a.name);
        let _ = write!(
            html,
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td>\
             <td><code title=\"{}\">{}</code></td><td class=\"num\">{}</td><td><code>{}</code></td>\
             <td><code class=\"cmd\">{}</code></td></tr>",
            escape(&path),
            escape(&time(&b.timestamp)),
            escape(&b.host),
            escape(&d.snapshot_id),
            escape(&short),
            escape(&crate::model::atom_size_text(d, a)),
            escape(&b.id),
            escape(&restore_command(&b.id, &path)),
        );
    }
    html.push_str("</tbody></table>");
}

/// The newest backups (of all hosts, or of one).
fn recent_section(html: &mut String, recent: &[Backup]) {
    html.push_str("<section><h2>Recent backups</h2>");
    if recent.is_empty() {
        html.push_str("<p>The index is empty.</p></section>");
        return;
    }
    html.push_str(
        "<table><thead><tr><th>Time (UTC)</th><th>Host</th><th>Backup</th><th>Datasets</th>\
         <th>Size</th></tr></thead><tbody>",
    );
    for b in recent {
        let names: Vec<String> = b
            .datasets
            .iter()
            .map(|d| escape(&format!("{}/{}", d.source, d.name)))
            .collect();
        let size: i64 = b.datasets.iter().map(|d| d.total_bytes).sum();
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td class=\"num\">{}</td></tr>",
            escape(&time(&b.timestamp)),
            escape(&b.host),
            escape(&b.id),
            names.join(", "),
            escape(&crate::util::bytes(size)),
        );
    }
    html.push_str("</tbody></table></section>");
}

/// `GET /hosts/{host}`: one host's sources, running jobs and recent runs.
pub async fn host_page(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    state.auth.check_read(&caller)?;
    // No host of that name can exist: not found (the page is found by
    // name among the hosts the server knows, never built from it).
    crate::names::check_host(&name).map_err(|e| ApiError::NotFound(format!("host: {e}")))?;
    let now = Utc::now();
    let hosts = host_statuses_at(&state, now).await?;
    let Some(h) = hosts.iter().find(|h| h.host == name) else {
        return Err(ApiError::NotFound(format!(
            "no host {name:?} has backups or reports on this server"
        )));
    };
    let backups = state.store.host_backups(&h.host, HOST_BACKUPS).await?;
    let mut html = String::with_capacity(16 * 1024);
    head(&mut html, &format!("Host {}", h.host), true);
    let seen = match &h.last_seen {
        Some(t) => format!("last report {}", ago(now, t)),
        None => "never reported".to_owned(),
    };
    let _ = write!(
        html,
        "<p class=\"meta\"><a href=\"/\">← fleet</a> · As of {} UTC · {seen}{} · {} backups in \
         the index</p>",
        escape(&time(&now)),
        if h.silent {
            " · <span class=\"err\">silent</span>"
        } else {
            ""
        },
        h.backups
    );
    let prune = match (&h.state.prune_schedule, &h.state.last_prune) {
        (None, _) if h.state.sources.is_none() => String::new(),
        (None, _) => "This host does not prune the repository.".to_owned(),
        (Some(when), None) => format!(
            "Prunes the repository on <code>{}</code>; no prune since its agent started.",
            escape(when)
        ),
        (Some(when), Some(r)) => format!(
            "Prunes the repository on <code>{}</code>; last prune {} {}: {}.",
            escape(when),
            if r.ok {
                "<span class=\"ok\">ok</span>"
            } else {
                "<span class=\"err\">FAILED</span>"
            },
            ago(now, &r.finished_at),
            escape(&r.summary)
        ),
    };
    if !prune.is_empty() {
        let _ = write!(html, "<p class=\"meta\">{prune}</p>");
    }
    let problems = host_problems(h, now, state.stale_after);
    if problems.is_empty() {
        html.push_str("<p class=\"verdict good\">Nothing needs attention on this host.</p>");
    } else {
        html.push_str("<div class=\"verdict bad\">Needs attention:</div>");
        html.push_str(&problems.concat());
    }
    sources_section(&mut html, h, &backups, now, state.stale_after);
    let failed = state
        .store
        .failed_verifications(Some(&h.host), FAILED_DRILLS)
        .await?;
    failed_drills_section(&mut html, &failed, false);
    jobs_section(&mut html, std::slice::from_ref(h), now, false);
    html.push_str("<section><h2>Recent runs</h2>");
    if backups.is_empty() {
        html.push_str("<p>No backup of this host is in the index.</p></section>");
    } else {
        html.push_str(
            "<table><thead><tr><th>Time (UTC)</th><th>Backup</th><th>Datasets recorded</th>\
             <th>Files</th><th>Size</th><th>Added</th></tr></thead><tbody>",
        );
        for b in &backups {
            let names: Vec<String> = b
                .datasets
                .iter()
                .map(|d| escape(&format!("{}/{}", d.source, d.name)))
                .collect();
            let sum = |f: fn(&crate::model::Dataset) -> i64| b.datasets.iter().map(f).sum::<i64>();
            let _ = write!(
                html,
                "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td class=\"num\">{}</td>\
                 <td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
                escape(&time(&b.timestamp)),
                escape(&b.id),
                names.join(", "),
                sum(|d| d.total_files),
                escape(&crate::util::bytes(sum(|d| d.total_bytes))),
                escape(&crate::util::bytes(sum(|d| d.bytes_added))),
            );
        }
        html.push_str("</tbody></table></section>");
    }
    html.push_str("</body></html>\n");
    Ok(html_response(StatusCode::OK, html))
}

/// A host's sources: failing ones first.
fn sources_section(
    html: &mut String,
    h: &HostStatus,
    backups: &[Backup],
    now: DateTime<Utc>,
    stale_after: Duration,
) {
    html.push_str("<section><h2>Sources</h2>");
    let Some(list) = &h.state.sources else {
        html.push_str(
            "<p>This host's agent does not report its sources (an older version, or it has not \
             reported yet).</p></section>",
        );
        return;
    };
    if list.is_empty() {
        html.push_str("<p>No source is configured on this host.</p></section>");
        return;
    }
    let mut list: Vec<&SourceReport> = list.iter().collect();
    list.sort_by_key(|s| (!fleet::is_failing(s), !fleet::is_stale(s, now, stale_after)));
    html.push_str(
        "<table><thead><tr><th>Source</th><th>Schedule</th><th>Next run</th><th>Last run</th>\
         <th>Failed</th><th>Error</th><th>Last success</th><th>Newest version</th>\
         <th>Retention</th><th>Restore newest</th></tr></thead><tbody>",
    );
    for s in list {
        let class = if fleet::is_failing(s) {
            " class=\"bad\""
        } else if fleet::is_stale(s, now, stale_after) {
            " class=\"warn\""
        } else {
            ""
        };
        let next = match (&s.schedule, &s.next_run) {
            (None, _) => "on demand".to_owned(),
            (Some(_), Some(t)) if *t > now => format!(
                "<span title=\"{}\">in {}</span>",
                escape(&time(t)),
                escape(&format_age((*t - now).to_std().unwrap_or_default()))
            ),
            (Some(_), Some(t)) => ago(now, t),
            (Some(_), None) => "–".to_owned(),
        };
        let (last, failed, error) = match &s.last_run {
            None => ("never".to_owned(), "–".to_owned(), String::new()),
            Some(r) => (
                format!(
                    "{}{} {}",
                    result_word(r.result),
                    if s.running { " (running now)" } else { "" },
                    ago(now, &r.finished_at)
                ),
                r.failed_text(),
                format!(
                    "<span class=\"err\">{}</span>",
                    escape(r.error.as_deref().unwrap_or(""))
                ),
            ),
        };
        let success = match &s.last_success {
            Some(t) => ago(now, t),
            None => "<span class=\"warnt\">never</span>".to_owned(),
        };
        let newest = backups
            .iter()
            .find(|b| b.datasets.iter().any(|d| d.source == s.name));
        let newest_text = match newest {
            Some(b) => {
                let n = b.datasets.iter().filter(|d| d.source == s.name).count();
                format!("{} ({n} datasets)", ago(now, &b.timestamp))
            }
            None => "–".to_owned(),
        };
        let retention = match &s.last_forget {
            None => "–".to_owned(),
            Some(r) if r.ok => format!("{} {}", escape(&r.summary), ago(now, &r.finished_at)),
            Some(r) => format!(
                "<span class=\"err\">failed {}: {}</span>",
                ago(now, &r.finished_at),
                escape(&r.summary)
            ),
        };
        let restore = format!(
            "tabacco restore --host {} --target {} {}",
            shell_quote(&h.host),
            RESTORE_TARGET,
            shell_quote(&format!("{}/*", glob::literal(&s.name)))
        );
        let _ = write!(
            html,
            "<tr{class}><td><b>{}</b></td><td><code>{}</code></td><td>{next}</td><td>{last}</td>\
             <td>{failed}</td><td>{error}</td><td>{success}</td><td>{newest_text}</td>\
             <td>{retention}</td><td><code class=\"cmd\">{}</code></td></tr>",
            escape(&s.name),
            escape(s.schedule.as_deref().unwrap_or("on demand")),
            escape(&restore),
        );
    }
    html.push_str("</tbody></table></section>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote("plain-1.2/x"), "plain-1.2/x");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("$(x)"), "'$(x)'");
        assert_eq!(host_href("a b/é"), "/hosts/a%20b%2F%C3%A9");
    }

    #[test]
    fn ages_and_sizes_read_well() {
        assert_eq!(format_age(Duration::from_secs(9)), "9s");
        assert_eq!(format_age(Duration::from_secs(7 * 60 + 3)), "7m 3s");
        assert_eq!(
            format_age(Duration::from_secs(5 * 3600 + 12 * 60)),
            "5h 12m"
        );
        assert_eq!(
            format_age(Duration::from_secs(3 * 86400 + 4 * 3600)),
            "3d 4h"
        );
    }

    #[test]
    fn repositories_say_who_prunes_and_warn_when_nobody_does() {
        let now = Utc::now();
        let host = |name: &str, repo: &str, prune: Option<bool>| {
            let mut h = HostStatus::unreported(name.into());
            h.state.repository_id = Some(repo.into());
            if let Some(ok) = prune {
                h.state.prune_schedule = Some("0 4 * * 0".into());
                h.state.last_prune = Some(crate::model::MaintenanceRun {
                    finished_at: now,
                    ok,
                    summary: "<done>".into(),
                });
            }
            h
        };
        let hosts = [
            host("a", &"1".repeat(64), None),
            host("b", &"1".repeat(64), Some(false)),
            host("c", &"2".repeat(64), None),
        ];
        let mut html = String::new();
        repositories_section(&mut html, &hosts, now);
        assert!(html.contains("<h2>Repositories</h2>"), "{html}");
        assert!(
            html.contains(">11111111</code></td><td>2 (a, b)</td><td>b</td>"),
            "{html}"
        );
        assert!(
            html.contains("FAILED") && html.contains("&lt;done&gt;"),
            "{html}"
        );
        assert!(
            html.contains("<tr class=\"warn\"><td><code title=\"2222")
                && html.contains("no host: set <code>prune_schedule</code>"),
            "{html}"
        );
        let mut html = String::new();
        summary_section(
            &mut html,
            &fleet::summary(&hosts, now, Duration::from_secs(86400)),
        );
        assert!(html.contains("1 repository no host prunes"), "{html}");
        // No repository reported: no section.
        let mut html = String::new();
        repositories_section(&mut html, &[HostStatus::unreported("x".into())], now);
        assert!(html.is_empty());
    }
}
