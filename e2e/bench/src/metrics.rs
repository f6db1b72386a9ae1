//! Prometheus text from a process's admin port, as counters by series.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

/// Every sample of a Prometheus text exposition by `name{labels}`,
/// truncated to whole numbers (comments and unparsable lines skipped).
pub fn parse_metrics(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.trim().parse::<f64>().ok()? as u64))
        })
        .collect()
}

/// The counters of `http://<admin>/metrics` (empty when it does not answer
/// within 5 s).
pub async fn scrape(http: &reqwest::Client, admin: SocketAddr) -> BTreeMap<String, u64> {
    let Ok(resp) = http
        .get(format!("http://{admin}/metrics"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
    else {
        return BTreeMap::new();
    };
    let text = resp.text().await.unwrap_or_default();
    parse_metrics(&text)
}

/// The sum of every series of a metric (`None`: no series).
pub fn sum_prefix(metrics: &BTreeMap<String, u64>, name: &str) -> Option<u64> {
    let v: Vec<u64> = metrics
        .iter()
        .filter(|(k, _)| k.starts_with(name))
        .map(|(_, v)| *v)
        .collect();
    (!v.is_empty()).then(|| v.iter().sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_parse() {
        let text = "# HELP x\nswarmseed_operator_status_writes_total 42\nswarmseed_operator_agent_calls_total{method=\"apply\",result=\"ok\"} 7\n";
        let m = parse_metrics(text);
        assert_eq!(m["swarmseed_operator_status_writes_total"], 42);
        assert_eq!(
            m["swarmseed_operator_agent_calls_total{method=\"apply\",result=\"ok\"}"],
            7
        );
        assert_eq!(
            sum_prefix(&m, "swarmseed_operator_agent_calls_total"),
            Some(7)
        );
        assert_eq!(sum_prefix(&m, "nothing"), None);
    }
}
