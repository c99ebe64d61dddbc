//! Prometheus exposition for both `/metrics` endpoints (the agent's and
//! the metadata server's): OpenMetrics by default, the Prometheus text
//! format (0.0.4) when the scraper's `Accept` header prefers `text/plain`
//! (what `promtool check metrics` reads, and what Prometheus asks for with
//! `scrape_protocols: [PrometheusText0.0.4]`). Both encoders are
//! prometheus-client's own; this module only picks one.

use prometheus_client::registry::Registry;

/// Content type of the OpenMetrics exposition.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// An exposition format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 text.
    OpenMetrics,
    /// Prometheus text format 0.0.4.
    Text,
}

impl Format {
    /// The format an `Accept` header asks for: the Prometheus text format
    /// when `text/plain` has a higher quality than
    /// `application/openmetrics-text`, OpenMetrics otherwise (also with no
    /// header, `*/*`, or a tie).
    pub fn from_accept(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::OpenMetrics;
        };
        let (mut openmetrics, mut text) = (0.0_f64, 0.0_f64);
        for range in accept.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f64>().ok())
                .unwrap_or(1.0);
            match media.as_str() {
                "application/openmetrics-text" => openmetrics = openmetrics.max(q),
                "text/plain" => text = text.max(q),
                _ => {}
            }
        }
        if text > openmetrics {
            Format::Text
        } else {
            Format::OpenMetrics
        }
    }

    /// The `Content-Type` of this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
            Format::Text => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        }
    }
}

/// Encode `registry` in `format`.
pub fn encode(registry: &Registry, format: Format) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    match format {
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, registry)?,
        Format::Text => prometheus_client::encoding::prometheus_text::encode(&mut out, registry)?,
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::info::Info;

    #[test]
    fn accept_header_picks_the_format() {
        for (accept, want) in [
            (None, Format::OpenMetrics),
            (Some("*/*"), Format::OpenMetrics),
            (Some("text/plain"), Format::Text),
            (Some("text/plain;version=0.0.4"), Format::Text),
            (
                Some("text/plain; version=0.0.4; charset=utf-8"),
                Format::Text,
            ),
            // What Prometheus sends by default.
            (
                Some(
                    "application/openmetrics-text;version=1.0.0;q=0.5,\
                     application/openmetrics-text;version=0.0.1;q=0.4,\
                     text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
                ),
                Format::OpenMetrics,
            ),
            (
                Some("application/openmetrics-text;q=0.2,text/plain;q=0.9"),
                Format::Text,
            ),
            (Some("application/json"), Format::OpenMetrics),
        ] {
            assert_eq!(Format::from_accept(accept), want, "{accept:?}");
        }
    }

    #[test]
    fn text_format_names_counters_with_total_and_info_as_gauge() {
        let mut r = Registry::default();
        let c = Counter::<u64>::default();
        r.register("x_runs", "Runs", c.clone());
        r.register("x_build", "Build", Info::new(vec![("version", "1")]));
        c.inc();
        let text = encode(&r, Format::Text).unwrap();
        assert!(text.contains("# HELP x_runs_total Runs"), "{text}");
        assert!(text.contains("# TYPE x_runs_total counter"), "{text}");
        assert!(text.contains("# TYPE x_build_info gauge"), "{text}");
        assert!(text.contains("x_build_info{version=\"1\"} 1"), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
        let om = encode(&r, Format::OpenMetrics).unwrap();
        assert!(om.contains("# TYPE x_runs counter") && om.ends_with("# EOF\n"));
    }
}
