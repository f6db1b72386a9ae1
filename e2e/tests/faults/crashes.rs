//! Rows: an agent and the operator killed mid-seed.

use std::time::Duration;

use swarmseed_e2e::faults::{FaultSetup, Row, small_source};

use crate::{NS, seeding_under_way, spec};

/// SIGKILL of an agent mid-seed: it restarts, resumes from the chunks it
/// had verified and never downloads one of them again; every node ends
/// with the origin's bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_kill() {
    let Some(mut row) = Row::start("agent_kill", FaultSetup::nodes(3)).await else {
        return;
    };
    let src = row.add_source("weights", &small_source(1, 8)).unwrap();
    // Three fetchers at 256 KiB/s: about 10 s of seeding.
    let spec = spec(&src, 3, Some("256Ki"));
    row.apply(NS, "weights", &spec, Some(&src)).await.unwrap();
    let before = row
        .wait_for(
            "node-1 a quarter verified",
            Duration::from_secs(60),
            async || {
                Ok(progress(&row, "node-1")
                    .await
                    .filter(|p| p.bytes_total > 0 && p.bytes_verified * 4 >= p.bytes_total))
            },
        )
        .await;
    let before = row.must("seeding under way", before);
    row.kill_agent("node-1").await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    row.restart_agent("node-1").await.unwrap();
    let ready = row
        .wait_ready(NS, "weights", Duration::from_secs(120))
        .await;
    row.check_ok("Ready after the agent came back", ready);
    if let Some(after) = progress(&row, "node-1").await {
        // The restarted process counts only what it received itself.
        let fetched = after.bytes_from_origin + after.bytes_from_peers;
        let missing = before.bytes_total - before.bytes_verified.min(before.bytes_total);
        row.check(
            "no verified chunk downloaded again",
            after.state == swarmseed_proto::pb::DatasetState::Ready as i32 && fetched <= missing,
            format!(
                "node-1 had {} of {} bytes verified when killed; after the restart it received {fetched} ({} from the origin, {} from peers), state {}",
                before.bytes_verified,
                before.bytes_total,
                after.bytes_from_origin,
                after.bytes_from_peers,
                after.state
            ),
        );
    } else {
        row.check(
            "node-1 reports the Dataset",
            false,
            "no progress after the restart",
        );
    }
    row.finish().await;
}

/// SIGKILL of the operator mid-seed, a new one started: it takes over once
/// the Lease expires, continues the agents' plan, and no chunk moves twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_kill() {
    let Some(mut row) = Row::start("operator_kill", FaultSetup::nodes(3)).await else {
        return;
    };
    let src = row.add_source("weights", &small_source(2, 8)).unwrap();
    let spec = spec(&src, 3, Some("256Ki"));
    row.apply(NS, "weights", &spec, Some(&src)).await.unwrap();
    seeding_under_way(&row, NS, "weights").await;
    row.kill_operator().unwrap();
    row.start_operator().unwrap();
    let ready = row
        .wait_ready(NS, "weights", Duration::from_secs(120))
        .await;
    if let Some(d) = row.check_ok("Ready after the operator was replaced", ready) {
        let s = d.status.unwrap_or_default();
        let total = s.total_bytes.unwrap_or_default();
        row.check(
            "no chunk moved twice",
            s.bytes_from_origin + s.bytes_from_peers == 3 * total,
            format!(
                "{} from the origin + {} from peers for 3 nodes x {total} bytes",
                s.bytes_from_origin, s.bytes_from_peers
            ),
        );
        let served = row.origin_bytes().await.unwrap_or(u64::MAX);
        row.check(
            "the origin read about once",
            served as f64 <= 1.02 * total as f64,
            format!("the origin served {served} bytes for {total}"),
        );
    }
    row.finish().await;
}

/// What `node`'s agent reports for `faults/weights`.
async fn progress(row: &Row, node: &str) -> Option<swarmseed_proto::pb::DatasetProgress> {
    row.seed
        .agent_progress(NS, "weights")
        .await
        .into_iter()
        .find(|(n, _)| n == node)
        .and_then(|(_, p)| p)
}
