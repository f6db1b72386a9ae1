//! Owns one node's data plane: the node store, the peer protocol, transfers, the peer server and the control API.
//! Never writes outside its store's root, never publishes a partial tree, and never trusts a peer's byte before its digest is verified.
//!
//! The swarmseed node agent.
//!
//! Data path: [`swarmseed_origin`] (source reads) → [`transfer`] (swarm scheduling
//! over [`wire`], bookkeeping in [`board`], digests vouched for by
//! [`attest`]) → [`store`] (staging, verification log, atomic publish).
//! [`peer_server`] serves verified chunks to other nodes from each
//! revision's [`served`] view; [`control`] is the operator's gRPC API;
//! [`admin`] serves health and metrics.

pub mod admin;
pub mod agent;
pub mod attest;
pub mod board;
pub mod chunkmem;
pub mod control;
#[cfg(feature = "fault-injection")]
pub mod fault;
pub mod metrics;
pub mod origin_health;
pub mod peer_server;
pub mod reach;
pub mod served;
pub mod store;
pub mod transfer;
pub mod wire;

/// Locks `m`, even when a thread panicked while holding it: one failed
/// task must not take the node's other datasets down with it.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
