//! Owns the control plane: reconciling Datasets (observe, a pure decide, execute), planning, status, node labels and leader election.
//! Never moves dataset bytes (agents do) and never blocks one Dataset on another's failure.
//!
//! The swarmseed operator: the `Dataset` API and the pure planning and
//! status logic the reconciler drives.
//!
//! Module order follows the data: the `Dataset` of [`swarmseed_crd`]
//! (what users write) →
//! [`plan`] (which agents fetch which chunks from the origin, who peers with
//! whom) → [`status`] (what users read) and the node label of
//! [`swarmseed_core::label`] (how pods find nodes holding a copy). Around them: [`leader`] (only one replica acts)
//! and [`admin`] (`/livez`, `/readyz`, `/metrics`). `kubectl swarmseed` is
//! a package of its own (`operator/plugin/`).

pub mod admin;
pub mod agents;
pub mod assignment;
pub mod controller;
pub mod events;
pub mod leader;
pub mod plan;
pub mod reference;
pub mod selector;
pub mod status;
