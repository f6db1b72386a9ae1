//! The `/metrics` response every binary serves from its admin port: a
//! `prometheus-client` registry encoded as OpenMetrics text.

use http::{HeaderName, StatusCode, header};
use prometheus_client::registry::Registry;

/// The content type of the OpenMetrics text format.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `registry` in the OpenMetrics text format.
pub fn encode(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

/// A scrape of `registry`: status, content type and body, ready to be
/// returned from an HTTP handler (axum's `IntoResponse` takes the tuple).
pub fn scrape(registry: &Registry) -> (StatusCode, [(HeaderName, &'static str); 1], String) {
    match encode(registry) {
        Ok(out) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
            out,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("encoding the metrics: {e}\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;

    use super::*;

    #[test]
    fn a_scrape_is_openmetrics_text() {
        let mut registry = Registry::default();
        let c: Counter = Counter::default();
        registry.register("things", "Things counted", c.clone());
        c.inc();
        let (status, [(name, value)], body) = scrape(&registry);
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            (name, value),
            (header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)
        );
        assert!(body.lines().any(|l| l == "things_total 1"), "{body}");
        assert!(body.ends_with("# EOF\n"), "{body}");
        assert_eq!(encode(&registry).unwrap(), body);
    }
}
