//! Owns swarmseed's benchmarks: each one sets up, drives, measures and reports in modules of its own.
//! Never builds a cluster itself (`swarmseed_harness` does) and never judges a run pass or fail beyond its stated targets.
//!
//! - [`seed`]: `e2e bench`, a dataset seeded through kubectl, the operator
//!   and the agents on N shaped nodes, against the Kumar–Ross bound, a
//!   naive every-node-downloads baseline and raw TCP.
//! - [`scale`]: `e2e bench-scale`, the operator against the API stand-in
//!   and hundreds of simulated agents.
//! - [`peer`]: `e2e peer-bench`, one agent pulling from one peer over
//!   loopback against raw TCP.
//! - [`net`]: `e2e netbench`, TCP throughput between two places.
//!
//! Shared by all of them, once: [`report`] (sizes, markdown sections
//! spliced into `e2e/bench/RESULTS.md`), [`procfs`] (CPU, disk and process
//! sampling from `/proc`) and [`metrics`] (Prometheus text).

pub mod metrics;
pub mod net;
pub mod peer;
pub mod procfs;
pub mod report;
pub mod scale;
pub mod seed;
