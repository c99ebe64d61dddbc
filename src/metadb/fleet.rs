//! Fleet health: the rules that turn the hosts' latest reports into what
//! the web pages, `/api/hosts`, the metrics and the alerts show. One place,
//! so that the page, the API and Prometheus never disagree on which host
//! is silent or which source is failing.
//!
//! - A host is **silent** when its latest report is older than
//!   `silent_after` (or three of its own report intervals, if longer), or
//!   when it never reported.
//! - A source is **failing** when its last run ended `partial` or
//!   `error`: some of its data is not in the index.
//! - A source is **stale** when its last full success (every dataset
//!   recorded) is older than `stale_after`, or it never had one.
//! - A source's **retention is failing** when the last application of its
//!   retention policy failed: nothing is lost, old versions pile up.
//! - A host's **prune is failing** when its last prune of the repository
//!   (`prune_schedule`) failed: forgotten snapshots keep their space.
//! - A **repository** (by the id its hosts report) is **unpruned** when
//!   none of its hosts has a `prune_schedule`: forgotten snapshots keep
//!   their space for ever.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::model::{MaintenanceRun, SourceReport};

use super::routes::HostStatus;

/// `silent_after` unless `metadb.yml` says otherwise: four of the agents'
/// default report intervals (30 s).
pub const DEFAULT_SILENT_AFTER: Duration = Duration::from_secs(120);

/// How many of its own report intervals a host may miss before it is
/// silent, when that is longer than `silent_after`.
pub const MISSED_REPORTS: f64 = 3.0;

/// Whether a host whose latest report arrived at `last_seen` (`None`:
/// never) is silent at `now`.
pub fn is_silent(
    last_seen: Option<DateTime<Utc>>,
    report_interval_seconds: Option<f64>,
    now: DateTime<Utc>,
    silent_after: Duration,
) -> bool {
    let Some(seen) = last_seen else {
        return true;
    };
    let own = report_interval_seconds
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(|s| Duration::from_secs_f64((s * MISSED_REPORTS).min(1e9)))
        .unwrap_or_default();
    let limit = silent_after.max(own);
    (now - seen).to_std().unwrap_or_default() > limit
}

/// Whether the source's last run left data out of the index.
pub fn is_failing(source: &SourceReport) -> bool {
    source
        .last_run
        .as_ref()
        .is_some_and(|r| r.result.is_failure())
}

/// Whether the last application of the source's retention policy failed.
pub fn retention_failing(source: &SourceReport) -> bool {
    source.last_forget.as_ref().is_some_and(|r| !r.ok)
}

/// Whether the host's last prune failed.
pub fn prune_failing(h: &HostStatus) -> bool {
    h.state.last_prune.as_ref().is_some_and(|r| !r.ok)
}

/// Whether the source's last full success is older than `stale_after` at
/// `now` (or it never had one).
pub fn is_stale(source: &SourceReport, now: DateTime<Utc>, stale_after: Duration) -> bool {
    match source.last_success {
        None => true,
        Some(t) => (now - t).to_std().unwrap_or_default() > stale_after,
    }
}

/// The "is my fleet safe?" counts at the top of the page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Hosts known (with backups or reports).
    pub hosts: usize,
    /// Hosts not heard from within `silent_after`.
    pub silent_hosts: usize,
    /// Sources whose last run was `partial` or `error`.
    pub failing_sources: usize,
    /// Sources without a full success within `stale_after`.
    pub stale_sources: usize,
    /// Sources whose last retention run failed.
    pub retention_failing: usize,
    /// Hosts whose last prune failed.
    pub prune_failing: usize,
    /// Repositories (reported by their hosts) that no host prunes.
    pub unpruned_repositories: usize,
    /// Sources reported by the hosts.
    pub sources: usize,
    /// Jobs running now (by job, not dataset).
    pub running_jobs: usize,
    /// Records waiting in the hosts' outboxes, and refused ones.
    pub undelivered_records: i64,
}

/// Count what needs attention.
pub fn summary(hosts: &[HostStatus], now: DateTime<Utc>, stale_after: Duration) -> Summary {
    let mut s = Summary {
        hosts: hosts.len(),
        ..Summary::default()
    };
    for h in hosts {
        s.silent_hosts += usize::from(h.silent);
        s.prune_failing += usize::from(prune_failing(h));
        for src in h.state.sources.iter().flatten() {
            s.sources += 1;
            s.failing_sources += usize::from(is_failing(src));
            s.stale_sources += usize::from(is_stale(src, now, stale_after));
            s.retention_failing += usize::from(retention_failing(src));
        }
        let mut jobs: Vec<&str> = h.active_jobs.iter().map(|j| j.job_id.as_str()).collect();
        jobs.sort_unstable();
        jobs.dedup();
        s.running_jobs += jobs.len();
        s.undelivered_records += h.state.outbox_pending.unwrap_or(0).max(0)
            + h.state.outbox_rejected.unwrap_or(0).max(0);
    }
    s.unpruned_repositories = repositories(hosts)
        .iter()
        .filter(|r| r.pruners.is_empty())
        .count();
    s
}

/// A repository the fleet's hosts back up into, as their reports say.
#[derive(Debug, Clone, PartialEq)]
pub struct RepositoryView<'a> {
    /// restic's id of the repository.
    pub id: &'a str,
    /// Hosts that back up into it, by name.
    pub hosts: Vec<&'a str>,
    /// Those of them with a `prune_schedule`.
    pub pruners: Vec<&'a str>,
    /// The newest prune any of them reported, and by whom.
    pub last_prune: Option<(&'a str, &'a MaintenanceRun)>,
}

/// The repositories the hosts report, by id (hosts that report none, before
/// their first backup or older agents, are in none).
pub fn repositories(hosts: &[HostStatus]) -> Vec<RepositoryView<'_>> {
    let mut by_id: std::collections::BTreeMap<&str, RepositoryView<'_>> =
        std::collections::BTreeMap::new();
    for h in hosts {
        let Some(id) = h.state.repository_id.as_deref() else {
            continue;
        };
        let r = by_id.entry(id).or_insert_with(|| RepositoryView {
            id,
            hosts: Vec::new(),
            pruners: Vec::new(),
            last_prune: None,
        });
        r.hosts.push(&h.host);
        if h.state.prune_schedule.is_some() {
            r.pruners.push(&h.host);
        }
        if let Some(p) = &h.state.last_prune
            && r.last_prune
                .is_none_or(|(_, l)| l.finished_at < p.finished_at)
        {
            r.last_prune = Some((&h.host, p));
        }
    }
    by_id.into_values().collect()
}

/// How much attention a host needs: lower sorts first (failing sources,
/// then silent, then stale sources, then the rest).
pub fn attention(h: &HostStatus, now: DateTime<Utc>, stale_after: Duration) -> u8 {
    let sources = h.state.sources.iter().flatten();
    if sources.clone().any(is_failing) {
        0
    } else if h.silent {
        1
    } else if sources.clone().any(|s| is_stale(s, now, stale_after))
        || sources.clone().any(retention_failing)
        || prune_failing(h)
        || h.state.outbox_rejected.unwrap_or(0) > 0
        || h.state.outbox_pending.unwrap_or(0) > 0
    {
        2
    } else {
        3
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{RunReport, RunResult};

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn silent_after_or_three_own_intervals() {
        let now = t("2026-01-01T00:10:00Z");
        let two_min = Duration::from_secs(120);
        assert!(is_silent(None, None, now, two_min));
        assert!(!is_silent(
            Some(t("2026-01-01T00:08:30Z")),
            None,
            now,
            two_min
        ));
        assert!(is_silent(
            Some(t("2026-01-01T00:07:30Z")),
            None,
            now,
            two_min
        ));
        // A host reporting every 5 min is silent after 15 min only.
        assert!(!is_silent(
            Some(t("2026-01-01T00:00:00Z")),
            Some(300.0),
            now,
            two_min
        ));
        assert!(is_silent(
            Some(t("2026-01-01T00:00:00Z")),
            Some(150.0),
            now,
            two_min
        ));
    }

    #[test]
    fn failing_is_partial_or_error_and_stale_is_an_old_full_success() {
        let now = t("2026-01-03T00:00:00Z");
        let mut s = SourceReport {
            name: "ldap".into(),
            schedule: None,
            next_run: None,
            last_run: None,
            last_success: Some(t("2026-01-02T12:00:00Z")),
            running: false,
            last_forget: None,
        };
        assert!(!is_failing(&s));
        for (result, failing) in [
            (RunResult::Ok, false),
            (RunResult::Partial, true),
            (RunResult::Error, true),
            (RunResult::Skipped, false),
            (RunResult::Cancelled, false),
        ] {
            s.last_run = Some(RunReport {
                duration_seconds: 1.0,
                ..RunReport::new(result, now)
            });
            assert_eq!(is_failing(&s), failing, "{result:?}");
        }
        let day = Duration::from_secs(86400);
        assert!(!is_stale(&s, now, day));
        assert!(is_stale(&s, now, day / 4));
        s.last_success = None;
        assert!(is_stale(&s, now, day));
    }

    #[test]
    fn retention_failing_is_a_failed_last_forget_and_needs_attention() {
        let now = t("2026-01-03T00:00:00Z");
        let mut source = SourceReport {
            name: "www".into(),
            last_success: Some(now),
            ..SourceReport::default()
        };
        assert!(!retention_failing(&source));
        source.last_forget = Some(crate::model::MaintenanceRun {
            finished_at: now,
            ok: true,
            summary: "forgot 1 snapshot(s), kept 2".into(),
        });
        assert!(!retention_failing(&source));
        let mut host = HostStatus {
            last_seen: Some(now),
            silent: false,
            ..HostStatus::unreported("h".into())
        };
        host.state.sources = Some(vec![source.clone()]);
        let day = Duration::from_secs(86400);
        assert_eq!(attention(&host, now, day), 3);
        source.last_forget.as_mut().unwrap().ok = false;
        assert!(retention_failing(&source));
        host.state.sources = Some(vec![source]);
        assert_eq!(attention(&host, now, day), 2);
        assert_eq!(summary(&[host.clone()], now, day).retention_failing, 1);

        // A host whose prune failed needs attention too; one that prunes
        // is counted as pruning.
        host.state.sources = Some(Vec::new());
        assert_eq!(attention(&host, now, day), 3);
        host.state.prune_schedule = Some("0 4 * * 0".into());
        host.state.last_prune = Some(crate::model::MaintenanceRun {
            finished_at: now,
            ok: false,
            summary: "repository is already locked exclusively".into(),
        });
        assert!(prune_failing(&host));
        assert_eq!(attention(&host, now, day), 2);
        let s = summary(&[host], now, day);
        assert_eq!((s.prune_failing, s.unpruned_repositories), (1, 0));
    }

    #[test]
    fn repositories_group_hosts_and_tell_who_prunes() {
        let now = t("2026-01-03T00:00:00Z");
        let host = |name: &str, repo: Option<&str>, prunes: bool| {
            let mut h = HostStatus::unreported(name.into());
            h.state.repository_id = repo.map(str::to_string);
            if prunes {
                h.state.prune_schedule = Some("0 4 * * 0".into());
                h.state.last_prune = Some(MaintenanceRun {
                    finished_at: now,
                    ok: true,
                    summary: "ok".into(),
                });
            }
            h
        };
        let hosts = [
            host("a", Some("r1"), false),
            host("b", Some("r1"), true),
            host("c", Some("r2"), false),
            host("d", None, false),
        ];
        let repos = repositories(&hosts);
        assert_eq!(repos.len(), 2);
        assert_eq!((repos[0].id, &repos[0].hosts), ("r1", &vec!["a", "b"]));
        assert_eq!(repos[0].pruners, vec!["b"]);
        assert_eq!(repos[0].last_prune.map(|(h, _)| h), Some("b"));
        assert_eq!((repos[1].id, repos[1].pruners.len()), ("r2", 0));
        let day = Duration::from_secs(86400);
        assert_eq!(summary(&hosts, now, day).unpruned_repositories, 1);
    }
}
