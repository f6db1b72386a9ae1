//! Rows: a Dataset deleted while a node is down or cut off.

use std::time::{Duration, Instant};

use swarmseed_e2e::faults::{DatasetView, FaultSetup, Row, small_source};

use crate::{NS, expect_dataset, holds_anything, spec};

/// The node each row takes away.
const AWAY: &str = "node-2";

/// Whether `d` is being deleted, says `Terminating` and names [`AWAY`].
fn terminating_names_away(d: Option<&DatasetView>) -> bool {
    d.is_some_and(|d| d.deleting && d.terminating_naming(&[AWAY]))
}

/// Waits until no node in `nodes` holds anything of `ns/name`.
async fn expect_clean(row: &mut Row, nodes: &[&str], name: &str, what: &str, timeout: Duration) {
    let r = row
        .wait_for(what, timeout, async || {
            Ok(nodes
                .iter()
                .all(|n| !holds_anything(row, n, NS, name))
                .then_some(()))
        })
        .await;
    row.check_ok(what, r);
}

/// Seeds `names` on all three nodes from one source.
async fn seed(row: &mut Row, names: &[&str], source_seed: u64) {
    let src = row
        .add_source("weights", &small_source(source_seed, 4))
        .unwrap();
    for name in names {
        row.apply(NS, name, &spec(&src, 3, None), Some(&src))
            .await
            .unwrap();
    }
    for name in names {
        let ready = row.wait_ready(NS, name, Duration::from_secs(90)).await;
        row.must("seeded", ready);
    }
}

/// With [`AWAY`] already taken away: deletes `name`, expects the finalizer
/// to hold for `hold` with `Terminating` naming the node while the others
/// are cleaned, brings the node back with `back`, and expects its copy to
/// go, then the object.
async fn delete_while_away(
    row: &mut Row,
    name: &str,
    hold: Duration,
    back: impl AsyncFnOnce(&mut Row),
) {
    let deleted = Instant::now();
    row.delete(NS, name).await.unwrap();
    expect_dataset(
        row,
        NS,
        name,
        &format!("held by its finalizer, Terminating naming {AWAY}"),
        Duration::from_secs(30),
        terminating_names_away,
    )
    .await;
    expect_clean(
        row,
        &["node-0", "node-1"],
        name,
        "the reachable nodes cleaned",
        Duration::from_secs(30),
    )
    .await;
    tokio::time::sleep(hold.saturating_sub(deleted.elapsed())).await;
    let still = row.dataset(NS, name).await.ok().flatten().is_some();
    let copy = holds_anything(row, AWAY, NS, name);
    row.check(
        &format!("the finalizer holds while {AWAY} is away"),
        still && copy,
        format!(
            "{}s after the delete: object {}, {AWAY}'s copy {}",
            hold.as_secs(),
            if still { "present" } else { "gone" },
            if copy { "present" } else { "gone" },
        ),
    );
    back(row).await;
    expect_clean(
        row,
        &[AWAY],
        name,
        &format!("{AWAY}'s copy removed once it is back"),
        Duration::from_secs(45),
    )
    .await;
    expect_dataset(
        row,
        NS,
        name,
        "the object goes once every node dropped it",
        Duration::from_secs(30),
        |d| d.is_none(),
    )
    .await;
}

/// A Dataset deleted while a node's agent is down: the finalizer holds and
/// the status says `Terminating`, naming the node; the other nodes are
/// cleaned at once; when the agent is back its copy goes, then the object.
/// Then the drained-node case: the agent's Pod itself deleted with the
/// agent, the Dataset deleted; when the agent comes back (a new Pod) it
/// drops what it resumed from its disk (SyncDatasets).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_while_node_down() {
    let Some(mut row) = Row::start("delete_while_node_down", FaultSetup::nodes(3)).await else {
        return;
    };
    seed(&mut row, &["held", "drained"], 6).await;

    row.kill_agent(AWAY).await.unwrap();
    delete_while_away(&mut row, "held", Duration::from_secs(20), async |row| {
        row.restart_agent(AWAY).await.unwrap();
    })
    .await;

    // The node drained: agent and Pod gone, then the Dataset deleted.
    row.drain_node(AWAY).await.unwrap();
    row.delete(NS, "drained").await.unwrap();
    expect_dataset(
        &mut row,
        NS,
        "drained",
        &format!("deleted, or Terminating naming {AWAY}"),
        Duration::from_secs(30),
        |d| d.is_none() || terminating_names_away(d),
    )
    .await;
    row.restart_agent(AWAY).await.unwrap();
    expect_clean(
        &mut row,
        &[AWAY],
        "drained",
        &format!("{AWAY} drops what it resumed of the deleted Dataset"),
        Duration::from_secs(30),
    )
    .await;
    let resumed = row.seed.agent_progress(NS, "drained").await;
    row.check(
        "no agent reports the deleted Dataset",
        resumed.iter().all(|(_, p)| p.is_none()),
        format!("{resumed:?}"),
    );
    expect_dataset(
        &mut row,
        NS,
        "drained",
        "the drained Dataset goes",
        Duration::from_secs(30),
        |d| d.is_none(),
    )
    .await;
    row.finish().await;
}

/// A Dataset deleted while a node is cut off (its Pod still Ready): the
/// finalizer holds, the status says `Terminating` naming the node, the
/// other nodes are cleaned; once the link is back the node's copy goes,
/// then the object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_while_partitioned() {
    let Some(mut row) = Row::start("delete_while_partitioned", FaultSetup::nodes(3)).await else {
        return;
    };
    seed(&mut row, &["cut"], 7).await;
    row.partition(AWAY).unwrap();
    delete_while_away(&mut row, "cut", Duration::from_secs(30), async |row| {
        row.heal_partition(AWAY).unwrap();
    })
    .await;
    row.finish().await;
}
