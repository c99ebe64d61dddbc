//! The server's web page, `GET /`: hosts with their last backup and its
//! age (stale ones highlighted), active jobs with progress, recent
//! backups, and an atom search form (pattern, host, versions) with its
//! results.
//!
//! Rendered on the server as one self-contained HTML document: inline
//! CSS, no scripts, no external assets (a restrictive
//! `Content-Security-Policy` says so to the browser). Every value from the
//! index goes through [`escape`].

use std::fmt::Write;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;

use super::AppState;
use super::auth::Caller;
use super::error::ApiError;
use super::routes::{HostStatus, host_statuses};
use crate::metadata::MetadataError;
use crate::model::{Backup, FindRequest, atom_path};

/// Most search result rows shown.
pub const MAX_RESULT_ROWS: usize = 1000;
/// Recent backups shown.
pub const RECENT_BACKUPS: i64 = 20;

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

/// Bytes in binary units: `512 B`, `1.5 KiB`, `3.2 GiB`.
pub fn format_bytes(n: i64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n.unsigned_abs() < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v.abs() >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
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
tr.stale td{background:#fde2e1}tr.stale td.age{font-weight:bold;color:#a00}\
.meta{color:#666;font-size:.9em}.error{color:#a00;font-weight:bold}\
code{font-family:ui-monospace,monospace}\
form label{margin-right:1em}input[type=number]{width:5em}";

/// `GET /`: the page.
pub async fn page(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    form: Result<Query<SearchForm>, QueryRejection>,
) -> Result<Response, ApiError> {
    state.auth.check_read(&caller)?;
    let Query(form) = form.map_err(|e| ApiError::BadRequest(format!("query string: {e}")))?;
    let now = Utc::now();
    let hosts = host_statuses(&state).await?;
    let recent = state.store.recent_backups(RECENT_BACKUPS).await?;

    let (search, status) = match search_section(&state, &form, &hosts).await {
        Ok(html) => (html, StatusCode::OK),
        Err(SearchError::BadRequest(html)) => (html, StatusCode::BAD_REQUEST),
        Err(SearchError::Api(e)) => return Err(e),
    };

    let mut html = String::with_capacity(16 * 1024);
    html.push_str(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>tabacco metadata server</title><style>",
    );
    html.push_str(STYLE);
    html.push_str("</style></head><body><h1>tabacco metadata server</h1>");
    let _ = write!(
        html,
        "<p class=\"meta\">As of {} UTC. A host is stale when its newest backup is older than {}.</p>",
        escape(&time(&now)),
        escape(&format_age(state.stale_after))
    );
    html.push_str(&search);
    hosts_section(&mut html, &hosts, now, state.stale_after);
    jobs_section(&mut html, &hosts, now);
    recent_section(&mut html, &recent);
    html.push_str("</body></html>\n");
    Ok((
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
        .into_response())
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
         <code>[abc]</code> one of a set.</p>",
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

/// The rows of a search result: one per atom version.
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
         <th>Dataset size</th><th>Backup</th></tr></thead><tbody>",
    );
    let rows = backups.iter().flat_map(|b| {
        b.datasets
            .iter()
            .flat_map(move |d| d.atoms.iter().map(move |a| (b, d, a)))
    });
    for (b, d, a) in rows.take(MAX_RESULT_ROWS) {
        let short: String = d.snapshot_id.chars().take(8).collect();
        let _ = write!(
            html,
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td>\
             <td><code title=\"{}\">{}</code></td><td class=\"num\">{}</td><td><code>{}</code></td></tr>",
            escape(&atom_path(&d.source, &d.name, &a.name)),
            escape(&time(&b.timestamp)),
            escape(&b.host),
            escape(&d.snapshot_id),
            escape(&short),
            escape(&format_bytes(d.total_bytes)),
            escape(&b.id),
        );
    }
    html.push_str("</tbody></table>");
}

/// Hosts, last backup, age; stale rows highlighted.
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
        "<table><thead><tr><th>Host</th><th>Last backup (UTC)</th><th>Age</th>\
         <th>Backups</th><th>Running jobs</th></tr></thead><tbody>",
    );
    for h in hosts {
        let (last, age_text, stale) = match &h.last_backup {
            Some(t) => {
                let a = age(now, t);
                (time(t), format_age(a), a > stale_after)
            }
            None => ("never".to_owned(), "–".to_owned(), true),
        };
        let _ = write!(
            html,
            "<tr{}><td>{}</td><td>{}</td><td class=\"age\">{}{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td></tr>",
            if stale { " class=\"stale\"" } else { "" },
            escape(&h.host),
            escape(&last),
            escape(&age_text),
            if stale { " (stale)" } else { "" },
            h.backups,
            h.active_jobs.len(),
        );
    }
    html.push_str("</tbody></table></section>");
}

/// Running jobs with progress.
fn jobs_section(html: &mut String, hosts: &[HostStatus], now: DateTime<Utc>) {
    html.push_str("<section><h2>Active jobs</h2>");
    let jobs: Vec<_> = hosts
        .iter()
        .flat_map(|h| h.active_jobs.iter().map(move |j| (h, j)))
        .collect();
    if jobs.is_empty() {
        html.push_str("<p>No job is running.</p></section>");
        return;
    }
    html.push_str(
        "<table><thead><tr><th>Host</th><th>Job</th><th>Source</th><th>Dataset</th>\
         <th>Progress</th><th>Files</th><th>Bytes</th><th>Remaining</th><th>Reported</th>\
         </tr></thead><tbody>",
    );
    for (h, j) in jobs {
        let (progress, files, bytes, remaining) = match &j.status {
            Some(s) => {
                let pct = if s.percent_done.is_finite() {
                    s.percent_done.clamp(0.0, 1.0)
                } else {
                    0.0
                };
                (
                    format!(
                        "<progress max=\"1\" value=\"{pct:.3}\">{:.0}%</progress> {:.0}%",
                        pct * 100.0,
                        pct * 100.0
                    ),
                    format!("{} / {}", s.files_done, s.total_files),
                    format!(
                        "{} / {}",
                        format_bytes(s.bytes_done),
                        format_bytes(s.total_bytes)
                    ),
                    format_age(Duration::from_secs(s.seconds_remaining.max(0) as u64)),
                )
            }
            None => ("starting".into(), "–".into(), "–".into(), "–".into()),
        };
        let reported = h.active_jobs_updated.map_or_else(
            || "–".to_owned(),
            |t| format!("{} ago", format_age(age(now, &t))),
        );
        let _ = write!(
            html,
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td><code>{}</code></td><td>{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>",
            escape(&h.host),
            escape(&j.job_id),
            escape(&j.dataset_source),
            escape(&j.dataset_id),
            progress,
            escape(&files),
            escape(&bytes),
            escape(&remaining),
            escape(&reported),
        );
    }
    html.push_str("</tbody></table></section>");
}

/// The newest backups of all hosts.
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
            escape(&format_bytes(size)),
        );
    }
    html.push_str("</tbody></table></section>");
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(format_bytes(512), "512 B");
        assert_eq!(format_bytes(1536), "1.5 KiB");
        assert_eq!(format_bytes(3 << 30), "3.0 GiB");
        assert_eq!(format_bytes(i64::MAX), "8.0 EiB");
    }
}
