//! Prometheus metrics of the agent, registered in an injected registry and
//! served on the admin port at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use swarmseed_core::ByteSource;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    /// origin | peer ([`ByteSource::as_str`]) | reused
    pub source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Default)]
pub struct Metrics {
    pub bytes_received: Family<SourceLabels, Counter>,
    pub bytes_served: Counter,
    pub bytes_served_from_memory: Counter,
    pub chunks_verified: Counter,
    pub verification_failures: Counter,
    pub peers_dropped: Family<ReasonLabels, Counter>,
    pub active_peers: Gauge,
    pub datasets: Gauge,
    pub origin_errors: Family<ReasonLabels, Counter>,
    pub peer_handshakes_failed: Family<ReasonLabels, Counter>,
    pub peer_handshakes_pending: Gauge,
    pub origin_outages: Counter,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> std::sync::Arc<Self> {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("swarmseed_agent");
        r.register(
            "received_bytes",
            "Verified bytes written to the node store, by source (origin, peer, reused from an earlier revision)",
            m.bytes_received.clone(),
        );
        r.register(
            "served_bytes",
            "Bytes served to peers",
            m.bytes_served.clone(),
        );
        r.register(
            "served_from_memory_bytes",
            "Of the bytes served to peers, those sent from the chunks verified last, kept in memory (--peer-cache-mib); the rest is read from disk",
            m.bytes_served_from_memory.clone(),
        );
        r.register(
            "chunks_verified",
            "Chunks whose blake3 digest matched",
            m.chunks_verified.clone(),
        );
        r.register(
            "verification_failures",
            "Chunks received from a peer whose digest did not match (the peer is dropped)",
            m.verification_failures.clone(),
        );
        r.register(
            "peers_dropped",
            "Peer connections dropped, by reason",
            m.peers_dropped.clone(),
        );
        r.register(
            "active_peers",
            "Peer connections this agent downloads from",
            m.active_peers.clone(),
        );
        r.register(
            "datasets",
            "Datasets assigned to this node",
            m.datasets.clone(),
        );
        r.register(
            "origin_errors",
            "Failed origin reads, by reason",
            m.origin_errors.clone(),
        );
        r.register(
            "peer_handshakes_failed",
            "Connections to the peer port closed before they authenticated, by reason (source_limit, evicted, timeout, malformed, unknown_dataset, bad_credential, dataset_failed, io)",
            m.peer_handshakes_failed.clone(),
        );
        r.register(
            "peer_handshakes_pending",
            "Connections to the peer port that have not authenticated yet",
            m.peer_handshakes_pending.clone(),
        );
        r.register(
            "origin_outages",
            "Times a transfer began reporting an origin error: it needed the origin, reads failed, and none succeeded for 10 s",
            m.origin_outages.clone(),
        );
        std::sync::Arc::new(m)
    }

    /// Verified bytes from `source` written to the node store.
    pub fn received(&self, source: ByteSource, bytes: u64) {
        self.count_received(source.as_str(), bytes);
    }

    /// Bytes found in files reused from an earlier revision: verified, but
    /// neither read nor received.
    pub fn reused(&self, bytes: u64) {
        self.count_received("reused", bytes);
    }

    fn count_received(&self, source: &'static str, bytes: u64) {
        self.bytes_received
            .get_or_create(&SourceLabels { source })
            .inc_by(bytes);
    }
}
