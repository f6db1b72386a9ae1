//! The fault matrix's harness: each row of `e2e/tests/faults/` and the
//! seeded soak disturb the whole product on a namespace cluster and hold
//! it to the same invariants.
//!
//! Layered as the data flows:
//! - [`setup`]: the cluster, the origin and its sources ([`FaultCluster`]);
//! - [`inject`]: one call per fault (agent kill, operator kill, partition,
//!   origin outage, node drain), each recorded in the [`world`];
//! - [`observe`]: a [`observe::Snapshot`] of what a user and the disks show;
//! - [`invariants`]: the five promises as pure checks over snapshots;
//! - [`monitor`]: the checks every second while a row runs;
//! - [`report`]: the summary and the failure message;
//! - [`row`]: one named row from start to report; [`soak`]: the seeded
//!   chaos run.

pub mod inject;
pub mod invariants;
pub mod monitor;
pub mod observe;
pub mod report;
pub mod row;
pub mod setup;
pub mod soak;
pub mod world;

pub use invariants::{Invariant, Violation};
pub use observe::{DatasetView, Snapshot};
pub use report::Report;
pub use row::{Row, assert_invariants};
pub use setup::{FaultCluster, FaultSetup, Source, small_source};
