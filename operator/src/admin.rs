//! The operator's admin port: `/livez`, `/readyz` and `/metrics`.
//!
//! Readiness follows the election, not the work: a replica is ready while
//! it holds the Lease, and also while it is a healthy standby (it has read
//! the Lease within the standby grace period, so it could take over). A
//! standby that is merely waiting must count as ready, or a rolling update
//! would wait forever for a new Pod that cannot lead until the old one goes.
//! A replica that cannot reach the API server, or has lost or released the
//! Lease, is not ready.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use swarmseed_runtime::admin::Health;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::leader::ElectionStatus;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentCallLabels {
    method: &'static str,
    result: &'static str,
}

/// The operator's Prometheus metrics, registered in an injected registry.
/// Cheap to clone; every clone updates the same series.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    inner: Arc<MetricsInner>,
}

#[derive(Debug, Default)]
struct MetricsInner {
    reconciles: Family<ResultLabels, Counter>,
    reconcile_errors: Family<ReasonLabels, Counter>,
    status_writes: Counter,
    leader: Gauge,
    agent_calls: Family<AgentCallLabels, Counter>,
}

impl Metrics {
    /// Registers the metrics under the `swarmseed_operator` prefix
    /// (counters get the `_total` suffix).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("swarmseed_operator");
        r.register(
            "reconciles",
            "Reconciliations of a Dataset, by result",
            m.inner.reconciles.clone(),
        );
        r.register(
            "reconcile_errors",
            "Failed reconciliations, by error reason",
            m.inner.reconcile_errors.clone(),
        );
        r.register(
            "status_writes",
            "Dataset status updates written to the API server",
            m.inner.status_writes.clone(),
        );
        r.register(
            "leader",
            "1 while this replica holds the leader Lease (or leader election is off), else 0",
            m.inner.leader.clone(),
        );
        r.register(
            "agent_calls",
            "Calls to node agents' control API, by method and result",
            m.inner.agent_calls.clone(),
        );
        m
    }

    /// Counts a reconciliation ending in `result` (e.g. `ok`, `error`).
    pub fn reconciled(&self, result: &'static str) {
        self.inner
            .reconciles
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Counts a failed reconciliation by its error's stable label.
    pub fn reconcile_error(&self, reason: &'static str) {
        self.inner
            .reconcile_errors
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Counts a status write.
    pub fn status_written(&self) {
        self.inner.status_writes.inc();
    }

    /// Counts a call to an agent's control API.
    pub fn agent_call(&self, method: &'static str, result: &'static str) {
        self.inner
            .agent_calls
            .get_or_create(&AgentCallLabels { method, result })
            .inc();
    }

    fn set_leader(&self, leader: bool) {
        self.inner.leader.set(i64::from(leader));
    }
}

/// What `/readyz` and the leader gauge follow: the election.
struct OperatorHealth {
    metrics: Metrics,
    election: watch::Receiver<ElectionStatus>,
    standby_grace: Duration,
}

impl Health for OperatorHealth {
    fn readiness(&self) -> Result<String, String> {
        let status = self.election.borrow().clone();
        readiness(&status, Instant::now(), self.standby_grace)
    }

    fn before_scrape(&self) {
        // The gauge is derived from the election at scrape time, so it can
        // never disagree with /readyz.
        let leader = *self.election.borrow() == ElectionStatus::Leader;
        self.metrics.set_leader(leader);
    }
}

/// The admin routes. `election` is followed for `/readyz` and the leader
/// gauge; a standby is healthy if it read the Lease within
/// `standby_grace` (the lease duration is a good value).
pub fn router(
    registry: Arc<Registry>,
    metrics: Metrics,
    election: watch::Receiver<ElectionStatus>,
    standby_grace: Duration,
) -> Router {
    let health = OperatorHealth {
        metrics,
        election,
        standby_grace,
    };
    swarmseed_runtime::admin::router(registry, Arc::new(health))
}

/// `Ok` with what this replica is, or `Err` with why it is not ready.
fn readiness(
    status: &ElectionStatus,
    now: Instant,
    standby_grace: Duration,
) -> Result<String, String> {
    match status {
        ElectionStatus::Leader => Ok("leader".into()),
        ElectionStatus::Standby {
            holder,
            read_at: Some(read_at),
        } if now.saturating_duration_since(*read_at) <= standby_grace => Ok(format!(
            "standby (leader: {})",
            holder.as_deref().unwrap_or("none")
        )),
        ElectionStatus::Standby { read_at: None, .. } => {
            Err("standby, has not read the leader Lease yet".into())
        }
        ElectionStatus::Standby { .. } => Err(format!(
            "standby, could not read the leader Lease for more than {standby_grace:?}"
        )),
        ElectionStatus::Stopped => Err("leadership lost or released".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(registry: &Registry) -> String {
        swarmseed_runtime::metrics::encode(registry).unwrap()
    }

    #[test]
    fn metrics_render_with_their_names_and_labels() {
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry);
        m.reconciled("ok");
        m.reconciled("ok");
        m.reconcile_error("kube_timeout");
        m.status_written();
        m.agent_call("ApplyAssignment", "ok");
        m.clone().set_leader(true);
        let text = render(&registry);
        for line in [
            "swarmseed_operator_reconciles_total{result=\"ok\"} 2",
            "swarmseed_operator_reconcile_errors_total{reason=\"kube_timeout\"} 1",
            "swarmseed_operator_status_writes_total 1",
            "swarmseed_operator_leader 1",
            "swarmseed_operator_agent_calls_total{method=\"ApplyAssignment\",result=\"ok\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing in\n{text}"
            );
        }
    }

    #[test]
    fn leaders_and_healthy_standbys_are_ready() {
        let now = Instant::now();
        let grace = Duration::from_secs(15);
        assert_eq!(
            readiness(&ElectionStatus::Leader, now, grace),
            Ok("leader".into())
        );
        let standby = |ago: u64| ElectionStatus::Standby {
            holder: Some("op-1".into()),
            read_at: Some(now - Duration::from_secs(ago)),
        };
        assert_eq!(
            readiness(&standby(2), now, grace),
            Ok("standby (leader: op-1)".into())
        );
        assert!(readiness(&standby(16), now, grace).is_err());
        let unread = ElectionStatus::Standby {
            holder: None,
            read_at: None,
        };
        assert!(readiness(&unread, now, grace).is_err());
        assert!(readiness(&ElectionStatus::Stopped, now, grace).is_err());
    }
}
