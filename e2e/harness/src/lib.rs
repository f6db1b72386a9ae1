//! Owns the test cluster every e2e run stands on: API stand-in, nodes, links, processes, origins.
//! Never measures, reports or judges a run (the benchmarks, demo and faults do, on top of it).
//!
//! - [`cluster`]: N nodes as network namespaces on a bridge (or loopback
//!   addresses without root), each with its own hostPath root and agent
//!   process, `tc`-shaped links, and the Kubernetes API stand-in holding
//!   the Node and agent Pod objects.
//! - [`seeding`]: a cluster with the operator, kubectl and Dataset objects.
//! - [`origin`]: an HTTP origin with ranges and nginx-style JSON listings,
//!   moto's S3 behind a counting proxy, and deterministic datasets with
//!   tree comparison.
//! - [`agent_api`]: the agents' control API, called with the control token.

pub mod agent_api;
pub mod apiserver;
pub mod cluster;
pub mod cmd;
pub mod disk;
pub mod error;
pub mod kube_objects;
pub mod naming;
pub mod netns;
pub mod origin;
pub mod process;
pub mod rng;
pub mod seeding;
pub mod size;

/// Selects rustls' process-wide crypto provider (idempotent). Needed
/// because kube enables rustls' `ring` backend and object_store's reqwest
/// enables `aws-lc-rs`: with both compiled in, rustls refuses to guess, and
/// the first TLS-capable client panics.
pub fn init_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    swarmseed_runtime::shutdown::signal_received().await;
}

/// Binds a TCP listener and reports the address it got (port 0: any).
pub async fn bind_tcp(
    addr: std::net::SocketAddr,
) -> Result<(tokio::net::TcpListener, std::net::SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::network(format!("bind {addr}"), e))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::network(format!("local address of {addr}"), e))?;
    Ok((listener, local))
}

pub use cluster::{
    Cluster, ClusterNode, ClusterSpec, LinkEnd, NetworkMode, NodeSpec, Placement, RemoteHttpOrigin,
};
pub use error::{Error, Result};
pub use kube_objects::AgentPorts;
