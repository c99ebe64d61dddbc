//! Prometheus metrics of the metadata server, served at `/metrics` in
//! OpenMetrics, or the Prometheus text format when asked (see
//! [`crate::exposition`]):
//!
//! - `tabacco_metadb_http_requests_total{route,method,status}`: requests
//!   answered, by matched route (`unmatched` for unknown paths);
//! - `tabacco_metadb_http_request_duration_seconds{route}`: latency;
//! - `tabacco_metadb_datasets_added_total`: datasets accepted by
//!   `add_dataset` (retries of a stored one included);
//! - `tabacco_host_last_backup_timestamp_seconds{host}`: start time of each
//!   host's newest backup, read from the database at every scrape (so it
//!   is right with several servers on one database, and after restarts).
//!   Alert with `time() - tabacco_host_last_backup_timestamp_seconds > ...`;
//!
//! and from the hosts' latest reports, at every scrape (see
//! [`super::fleet`] for the rules):
//!
//! - `tabacco_host_last_seen_timestamp_seconds{host}`: when its latest
//!   report arrived;
//! - `tabacco_host_silent{host}`: 1 when it has not reported within
//!   `silent_after`;
//! - `tabacco_host_outbox_pending_records{host}`,
//!   `tabacco_host_outbox_rejected_records{host}`: its undelivered and
//!   refused records (dataset records, verification results);
//! - `tabacco_source_failing{host,source}`: 1 when the source's last run
//!   was `partial` or `error`;
//! - `tabacco_source_last_success_timestamp_seconds{host,source}`: its last
//!   run in which every dataset was recorded;
//! - `tabacco_host_prune_failing{host}`: 1 when the host's last prune of
//!   the repository failed (0 when it succeeded; absent when it reported
//!   none);
//! - `tabacco_repository_pruners{repository}`: how many of the hosts
//!   backing up into a repository (by the id they report) prune it (0:
//!   nobody does, forgotten snapshots keep their space);
//! - `tabacco_source_retention_failing{host,source}`: 1 when the last
//!   application of the source's retention policy failed (0 when it
//!   succeeded; absent when the agent reported none).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use super::routes::HostStatus;
use crate::metadata::HostSummary;

use crate::exposition::Format;

/// Labels of a request counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Route template (`/api/find_atoms`) or `unmatched`.
    pub route: String,
    /// HTTP method.
    pub method: String,
    /// Response status code.
    pub status: u16,
}

/// Labels of a repository's gauges.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RepositoryLabels {
    /// restic's id of the repository.
    pub repository: String,
}

/// Labels of the latency histogram.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// Route template or `unmatched`.
    pub route: String,
}

/// Labels of per-host gauges.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HostLabels {
    /// Host name.
    pub host: String,
}

/// Labels of per-source gauges.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    /// Host name.
    pub host: String,
    /// Source name.
    pub source: String,
}

/// The server's metrics and their registry.
#[derive(Debug)]
pub struct Metrics {
    /// Everything below, for encoding.
    registry: Registry,
    /// Requests answered.
    requests: Family<RequestLabels, Counter>,
    /// Request latency.
    durations: Family<RouteLabels, Histogram>,
    /// Datasets accepted.
    datasets_added: Counter,
    /// Newest backup per host, Unix seconds.
    host_last_backup: Family<HostLabels, Gauge<f64, AtomicU64>>,
    /// Latest report per host, Unix seconds.
    host_last_seen: Family<HostLabels, Gauge<f64, AtomicU64>>,
    /// 1 for a silent host.
    host_silent: Family<HostLabels, Gauge>,
    /// Records waiting in each host's outbox.
    host_outbox_pending: Family<HostLabels, Gauge>,
    /// Records refused and kept aside per host.
    host_outbox_rejected: Family<HostLabels, Gauge>,
    /// 1 for a source whose last run was partial or error.
    source_failing: Family<SourceLabels, Gauge>,
    /// Last full success per source, Unix seconds.
    source_last_success: Family<SourceLabels, Gauge<f64, AtomicU64>>,
    /// 1 for a host whose last prune failed.
    host_prune_failing: Family<HostLabels, Gauge>,
    /// Hosts pruning each repository.
    repository_pruners: Family<RepositoryLabels, Gauge>,
    /// 1 for a source whose last retention run failed.
    source_retention_failing: Family<SourceLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Fresh metrics, registered.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "tabacco_metadb_http_requests",
            "HTTP requests answered, by route, method and status",
            requests.clone(),
        );
        let durations = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 4.0, 9))
        });
        registry.register(
            "tabacco_metadb_http_request_duration_seconds",
            "Time to answer HTTP requests, by route",
            durations.clone(),
        );
        let datasets_added = Counter::default();
        registry.register(
            "tabacco_metadb_datasets_added",
            "Datasets accepted by add_dataset (including retries of stored ones)",
            datasets_added.clone(),
        );
        let host_last_backup = Family::<HostLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "tabacco_host_last_backup_timestamp_seconds",
            "Start time of each host's newest backup in the index (Unix seconds)",
            host_last_backup.clone(),
        );
        let host_last_seen = Family::<HostLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "tabacco_host_last_seen_timestamp_seconds",
            "When each host's latest status report arrived (Unix seconds)",
            host_last_seen.clone(),
        );
        let host_silent = Family::<HostLabels, Gauge>::default();
        registry.register(
            "tabacco_host_silent",
            "1 when the host has not reported within silent_after (its agent is down or cannot reach this server)",
            host_silent.clone(),
        );
        let host_outbox_pending = Family::<HostLabels, Gauge>::default();
        registry.register(
            "tabacco_host_outbox_pending_records",
            "Records waiting in the host's outbox for delivery to this server, from its latest report",
            host_outbox_pending.clone(),
        );
        let host_outbox_rejected = Family::<HostLabels, Gauge>::default();
        registry.register(
            "tabacco_host_outbox_rejected_records",
            "Records this server refused for good, kept in the host's outbox/rejected/, from its latest report",
            host_outbox_rejected.clone(),
        );
        let source_failing = Family::<SourceLabels, Gauge>::default();
        registry.register(
            "tabacco_source_failing",
            "1 when the source's last run was partial or error (some of its data is not in the index)",
            source_failing.clone(),
        );
        let source_last_success = Family::<SourceLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "tabacco_source_last_success_timestamp_seconds",
            "The source's last run in which every dataset was recorded (Unix seconds), from the host's latest report",
            source_last_success.clone(),
        );
        let host_prune_failing = Family::<HostLabels, Gauge>::default();
        registry.register(
            "tabacco_host_prune_failing",
            "1 when the host's last prune of the repository failed (forgotten snapshots keep their space until one succeeds), from its latest report",
            host_prune_failing.clone(),
        );
        let repository_pruners = Family::<RepositoryLabels, Gauge>::default();
        registry.register(
            "tabacco_repository_pruners",
            "How many of the hosts backing up into the repository prune it (prune_schedule), from their latest reports; 0: forgotten snapshots keep their space",
            repository_pruners.clone(),
        );
        let source_retention_failing = Family::<SourceLabels, Gauge>::default();
        registry.register(
            "tabacco_source_retention_failing",
            "1 when the last application of the source's retention policy failed (old versions pile up until it succeeds), from the host's latest report",
            source_retention_failing.clone(),
        );
        Metrics {
            registry,
            requests,
            durations,
            datasets_added,
            host_last_backup,
            host_last_seen,
            host_silent,
            host_outbox_pending,
            host_outbox_rejected,
            source_failing,
            source_last_success,
            source_retention_failing,
            host_prune_failing,
            repository_pruners,
        }
    }

    /// Count an answered request.
    pub fn observe_request(&self, route: &str, method: &str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_owned(),
                method: method.to_owned(),
                status,
            })
            .inc();
        self.durations
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
            })
            .observe(seconds);
    }

    /// Count an accepted dataset.
    pub fn dataset_added(&self) {
        self.datasets_added.inc();
    }

    /// Set the per-host gauges from the database's host list.
    pub fn set_hosts(&self, hosts: &[HostSummary]) {
        for h in hosts {
            let seconds = h.last_backup.timestamp_micros() as f64 / 1e6;
            self.host_last_backup
                .get_or_create(&HostLabels {
                    host: h.host.clone(),
                })
                .set(seconds);
        }
    }

    /// Set the gauges from the hosts' latest reports (series of hosts and
    /// sources no longer reported are dropped).
    pub fn set_fleet(&self, hosts: &[HostStatus]) {
        self.host_last_seen.clear();
        self.host_silent.clear();
        self.host_outbox_pending.clear();
        self.host_outbox_rejected.clear();
        self.source_failing.clear();
        self.source_last_success.clear();
        self.source_retention_failing.clear();
        self.host_prune_failing.clear();
        self.repository_pruners.clear();
        for r in super::fleet::repositories(hosts) {
            self.repository_pruners
                .get_or_create(&RepositoryLabels {
                    repository: r.id.to_owned(),
                })
                .set(i64::try_from(r.pruners.len()).unwrap_or(i64::MAX));
        }
        let secs = |t: &chrono::DateTime<chrono::Utc>| t.timestamp_micros() as f64 / 1e6;
        for h in hosts {
            let hl = HostLabels {
                host: h.host.clone(),
            };
            if let Some(t) = &h.last_seen {
                self.host_last_seen.get_or_create(&hl).set(secs(t));
            }
            self.host_silent.get_or_create(&hl).set(i64::from(h.silent));
            if let Some(r) = &h.state.last_prune {
                self.host_prune_failing
                    .get_or_create(&hl)
                    .set(i64::from(!r.ok));
            }
            if let Some(n) = h.state.outbox_pending {
                self.host_outbox_pending.get_or_create(&hl).set(n);
            }
            if let Some(n) = h.state.outbox_rejected {
                self.host_outbox_rejected.get_or_create(&hl).set(n);
            }
            for s in h.state.sources.iter().flatten() {
                let sl = SourceLabels {
                    host: h.host.clone(),
                    source: s.name.clone(),
                };
                self.source_failing
                    .get_or_create(&sl)
                    .set(i64::from(super::fleet::is_failing(s)));
                if let Some(t) = &s.last_success {
                    self.source_last_success.get_or_create(&sl).set(secs(t));
                }
                if let Some(r) = &s.last_forget {
                    self.source_retention_failing
                        .get_or_create(&sl)
                        .set(i64::from(!r.ok));
                }
            }
        }
    }

    /// The OpenMetrics exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        self.encode_as(Format::OpenMetrics)
    }

    /// The exposition in `format`.
    pub fn encode_as(&self, format: Format) -> Result<String, std::fmt::Error> {
        crate::exposition::encode(&self.registry, format)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_the_documented_names() {
        let m = Metrics::new();
        m.observe_request("/api/find_atoms", "POST", 200, 0.01);
        m.observe_request("/api/find_atoms", "POST", 200, 0.02);
        m.dataset_added();
        m.set_hosts(&[HostSummary {
            host: "h\"1".into(),
            last_backup: "2026-01-02T03:04:05.5Z".parse().unwrap(),
            backups: 3,
        }]);
        let text = m.encode().unwrap();
        assert!(
            text.contains(
                "tabacco_metadb_http_requests_total{route=\"/api/find_atoms\",method=\"POST\",status=\"200\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains("tabacco_metadb_datasets_added_total 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "tabacco_host_last_backup_timestamp_seconds{host=\"h\\\"1\"} 1767323045.5"
            ),
            "{text}"
        );
        assert!(text.contains("tabacco_metadb_http_request_duration_seconds_bucket"));
        assert!(text.ends_with("# EOF\n"));
    }
}
