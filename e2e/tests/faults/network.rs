//! Rows: a node cut off mid-seed, and the origin unreachable before any
//! byte is in the cluster or after every chunk is.

use std::time::{Duration, Instant};

use serde_json::json;
use swarmseed_e2e::faults::{FaultSetup, Row, small_source};

use crate::{NS, expect_dataset, names, seeding_under_way, spec};

/// How long the partition row cuts its node off.
const CUT: Duration = Duration::from_secs(40);

/// The label that selects nodes in the origin rows.
const SELECTED: &str = "faults.swarmseed.io/selected";

/// A node's link down for 40 s mid-seed (its agent runs on, its Pod stays
/// Ready). The status names the node while it is away; the other nodes
/// finish meanwhile (its origin ranges are read by others after
/// `--fallback-after`); once back it catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition() {
    let Some(mut row) = Row::start("partition", FaultSetup::nodes(3)).await else {
        return;
    };
    let src = row.add_source("weights", &small_source(3, 8)).unwrap();
    // Every node a fetcher: the cut-off node surely holds origin ranges.
    let spec = spec(&src, 3, Some("256Ki"));
    row.apply(NS, "weights", &spec, Some(&src)).await.unwrap();
    seeding_under_way(&row, NS, "weights").await;
    let cut = Instant::now();
    row.partition("node-2").unwrap();
    // The operator's calls to the node time out (15 s), then it says so.
    expect_dataset(
        &mut row,
        NS,
        "weights",
        "the status names node-2 while it is cut off",
        Duration::from_secs(30),
        |d| d.is_some_and(|d| names(d, "node-2")),
    )
    .await;
    // Asked of the agents themselves: while an agent does not answer, each
    // reconcile waits out its call timeout, so the status trails by that.
    let others = row
        .wait_for(
            "node-0 and node-1 publish while node-2 is cut off",
            CUT.saturating_sub(cut.elapsed()),
            async || {
                let done = row
                    .seed
                    .agent_progress(NS, "weights")
                    .await
                    .iter()
                    .filter(|(n, p)| {
                        n != "node-2"
                            && p.as_ref().is_some_and(|p| {
                                p.state == swarmseed_proto::pb::DatasetState::Ready as i32
                            })
                    })
                    .count();
                Ok((done == 2).then_some(()))
            },
        )
        .await;
    row.check_ok("node-0 and node-1 publish while node-2 is cut off", others);
    tokio::time::sleep(CUT.saturating_sub(cut.elapsed())).await;
    row.heal_partition("node-2").unwrap();
    let ready = row.wait_ready(NS, "weights", Duration::from_secs(90)).await;
    row.check_ok("Ready once node-2 is back", ready);
    row.finish().await;
}

/// The origin unreachable after the source was listed and before any byte
/// reached a node: `Degraded=True SourceUnavailable` with the last error
/// (naming the origin) within 25 s — 10 s for an agent to call origin
/// errors persistent, 15 s for the operator to show them — and Ready once
/// the origin is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_outage_before_coverage() {
    let Some(mut row) = Row::start("origin_outage_before_coverage", FaultSetup::nodes(3)).await
    else {
        return;
    };
    let src = row.add_source("weights", &small_source(4, 4)).unwrap();
    let mut spec = spec(&src, 3, None);
    spec["nodeSelector"] = json!({ SELECTED: "yes" });
    row.apply(NS, "weights", &spec, Some(&src)).await.unwrap();
    // Listed, but no node selected yet: nothing moves.
    let listed = row
        .wait_for("listed", Duration::from_secs(60), async || {
            let d = row.dataset(NS, "weights").await?;
            Ok(d.filter(|d| d.status.as_ref().is_some_and(|s| s.revision.is_some())))
        })
        .await;
    row.must("the source listed", listed);
    let cut = Instant::now();
    row.origin_outage().unwrap();
    for n in row.node_names() {
        row.label_node(&n, SELECTED, Some("yes")).await.unwrap();
    }
    let origin_host = origin_host(row.origin_url());
    let shown = expect_dataset(
        &mut row,
        NS,
        "weights",
        "Degraded=True SourceUnavailable naming the origin within 25 s",
        Duration::from_secs(25),
        |d| {
            d.and_then(|d| d.degraded()).is_some_and(|c| {
                c.reason == "SourceUnavailable" && c.message.contains(&origin_host)
            })
        },
    )
    .await;
    if shown.is_some() {
        eprintln!(
            "origin outage shown {:.1} s after it began",
            cut.elapsed().as_secs_f64()
        );
    }
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(cut.elapsed())).await;
    row.origin_restore().unwrap();
    let ready = row.wait_ready(NS, "weights", Duration::from_secs(90)).await;
    if let Some(d) = row.check_ok("Ready once the origin is back", ready) {
        row.check(
            "Degraded clears once the origin is back",
            d.degraded().is_none(),
            d.conditions_text(),
        );
    }
    row.finish().await;
}

/// The origin unreachable once every chunk is in the cluster (two nodes
/// hold the Dataset): a node selected during the outage needs only its
/// peers, finishes, and the Dataset is Ready while the origin is still
/// down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_outage_after_coverage() {
    let Some(mut row) = Row::start("origin_outage_after_coverage", FaultSetup::nodes(3)).await
    else {
        return;
    };
    let src = row.add_source("weights", &small_source(5, 4)).unwrap();
    let mut spec = spec(&src, 3, None);
    spec["nodeSelector"] = json!({ SELECTED: "yes" });
    for n in ["node-0", "node-1"] {
        row.label_node(n, SELECTED, Some("yes")).await.unwrap();
    }
    row.apply(NS, "weights", &spec, Some(&src)).await.unwrap();
    let covered = row.wait_ready(NS, "weights", Duration::from_secs(90)).await;
    row.must("two nodes hold every chunk", covered);
    row.origin_outage().unwrap();
    row.label_node("node-2", SELECTED, Some("yes"))
        .await
        .unwrap();
    let done = expect_dataset(
        &mut row,
        NS,
        "weights",
        "node-2 seeded from its peers while the origin is down",
        Duration::from_secs(45),
        |d| {
            d.is_some_and(|d| {
                d.is_ready()
                    && d.node_progress("node-2")
                        .is_some_and(|p| p.state == swarmseed_crd::NodeProgressState::Ready)
            })
        },
    )
    .await;
    if let Some(Some(d)) = done {
        let from_origin = d.node_progress("node-2").map(|p| p.bytes_from_origin);
        row.check(
            "node-2 read nothing from the origin",
            from_origin == Some(0),
            format!("{from_origin:?} bytes from the origin"),
        );
    }
    row.origin_restore().unwrap();
    row.finish().await;
}

/// `10.213.S.2` of `http://10.213.S.2:8080`.
fn origin_host(url: &str) -> String {
    url.trim_start_matches("http://")
        .split(':')
        .next()
        .unwrap_or_default()
        .to_owned()
}
