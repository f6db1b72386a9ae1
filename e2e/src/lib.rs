//! Owns the `e2e` command's own parts on the harness's cluster: the demo, the fault matrix and soak, hostile peers, the stub agent.
//! Never holds cluster plumbing (that is `swarmseed_harness`) or benchmarks (`swarmseed_bench`).
//!
//! - [`demo`]: the product end to end on one machine (`e2e demo`).
//! - [`faults`]: the fault matrix's rows and the seeded chaos soak.
//! - [`hostile_peer`]: clients of an agent's peer port that never
//!   authenticate (`e2e hostile-peer`).
//! - [`stub_agent`]: a stand-in for the agent (`e2e stub-agent`).
//!
//! The `e2e` binary exposes these, the harness's pieces and the
//! benchmarks (`swarmseed_bench`) as subcommands.

pub mod demo;
pub mod faults;
pub mod hostile_peer;
pub mod stub_agent;
