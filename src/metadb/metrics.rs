//! Prometheus metrics of the metadata server, served at `/metrics` in the
//! OpenMetrics text format:
//!
//! - `tabacco_metadb_http_requests_total{route,method,status}`: requests
//!   answered, by matched route (`unmatched` for unknown paths);
//! - `tabacco_metadb_http_request_duration_seconds{route}`: latency;
//! - `tabacco_metadb_datasets_added_total`: datasets accepted by
//!   `add_dataset` (retries of a stored one included);
//! - `tabacco_host_last_backup_timestamp_seconds{host}`: start time of each
//!   host's newest backup, read from the database at every scrape (so it
//!   is right with several servers on one database, and after restarts).
//!   Alert with `time() - tabacco_host_last_backup_timestamp_seconds > ...`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use crate::metadata::HostSummary;

/// Content type of the exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

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
        Metrics {
            registry,
            requests,
            durations,
            datasets_added,
            host_last_backup,
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

    /// The exposition text.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
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
