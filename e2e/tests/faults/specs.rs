//! Rows: Datasets smaller than the plan, names at Kubernetes' limits, and
//! specs the schema accepts but that make no sense.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
use serde_json::json;
use swarmseed_core::label;
use swarmseed_e2e::faults::{DatasetView, FaultSetup, Row, small_source};
use swarmseed_harness::origin::DatasetSpec;

use crate::{NS, expect_dataset, spec};

/// The highest plan generation any agent follows for `ns/name`.
async fn plan_generation(row: &Row, ns: &str, name: &str) -> u64 {
    row.seed
        .agent_progress(ns, name)
        .await
        .into_iter()
        .filter_map(|(_, p)| p.map(|p| p.plan_generation))
        .max()
        .unwrap_or(0)
}

/// Datasets with fewer chunks than min(maxFetchers, nodes) — one chunk and
/// three, on four nodes with four fetchers: every node Ready and the plan
/// settles (its generation stops moving).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_datasets() {
    let Some(mut row) = Row::start("tiny_datasets", FaultSetup::nodes(4)).await else {
        return;
    };
    let one = DatasetSpec {
        seed: 8,
        big_files: 0,
        big_file_size: 0,
        small_files: 1,
        small_file_min: 10_000,
        small_file_max: 10_000,
        small_dirs: 1,
    };
    // Files of one chunk each (64 KiB chunks): three chunks.
    let three = DatasetSpec {
        seed: 9,
        big_files: 3,
        big_file_size: 64 * 1024,
        small_files: 0,
        ..one.clone()
    };
    for (name, shape) in [("one-chunk", one), ("three-chunks", three)] {
        let src = row.add_source(name, &shape).unwrap();
        let mut spec = spec(&src, 4, None);
        spec["chunkSize"] = json!("64Ki");
        row.apply(NS, name, &spec, Some(&src)).await.unwrap();
    }
    for name in ["one-chunk", "three-chunks"] {
        let ready = row.wait_ready(NS, name, Duration::from_secs(60)).await;
        if let Some(d) = row.check_ok("Ready on every node", ready) {
            let ready_nodes = d.status.map(|s| s.nodes.ready).unwrap_or_default();
            row.check(
                "every node Ready",
                ready_nodes == 4,
                format!("{name}: {ready_nodes}/4 nodes Ready"),
            );
        }
    }
    let before = [
        plan_generation(&row, NS, "one-chunk").await,
        plan_generation(&row, NS, "three-chunks").await,
    ];
    tokio::time::sleep(Duration::from_secs(15)).await;
    let after = [
        plan_generation(&row, NS, "one-chunk").await,
        plan_generation(&row, NS, "three-chunks").await,
    ];
    row.check(
        "the plan settles",
        before == after,
        format!("plan generations {before:?} became {after:?} in 15 s with nothing changing"),
    );
    row.finish().await;
}

/// A 253-character Dataset name in a 63-character namespace (both the
/// longest Kubernetes allows): Ready with the origin's bytes on every node,
/// every node labelled, its Events recorded on it, and deletion cleans up.
/// (The on-disk side of long names has its own row with the storage faults;
/// this one is about the namespace, the label and the Events.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_names() {
    let Some(mut row) = Row::start("oversized_names", FaultSetup::nodes(3)).await else {
        return;
    };
    let ns = format!("ns-{}", "n".repeat(60));
    let name = format!(
        "{}.{}.{}.{}",
        "a".repeat(63),
        "b".repeat(63),
        "c".repeat(63),
        "d".repeat(61)
    );
    assert_eq!((ns.len(), name.len()), (63, 253));
    let src = row.add_source("long", &small_source(10, 2)).unwrap();
    row.apply(&ns, &name, &spec(&src, 3, None), Some(&src))
        .await
        .unwrap();
    let ready = row.wait_ready(&ns, &name, Duration::from_secs(90)).await;
    row.check_ok("Ready", ready);
    let key = label::key(&ns, &name);
    let labelled: BTreeSet<String> = Api::<Node>::all(row.seed.cluster.client())
        .list(&ListParams::default().labels(&key))
        .await
        .map(|l| {
            l.items
                .into_iter()
                .filter_map(|n| n.metadata.name)
                .collect()
        })
        .unwrap_or_default();
    row.check(
        "every node labelled",
        labelled.len() == 3,
        format!("nodes with {key}: {labelled:?}"),
    );
    let events: Vec<Event> = Api::<Event>::namespaced(row.seed.cluster.client(), &ns)
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    let reasons: BTreeSet<String> = events
        .iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name.as_str()))
        .filter_map(|e| e.reason.clone())
        .collect();
    row.check(
        "its Events are recorded on it",
        reasons.contains("SourceListed") && reasons.contains("Ready"),
        format!("Event reasons regarding the Dataset: {reasons:?}"),
    );
    row.delete(&ns, &name).await.unwrap();
    expect_dataset(
        &mut row,
        &ns,
        &name,
        "deleted",
        Duration::from_secs(60),
        |d| d.is_none(),
    )
    .await;
    row.finish().await;
}

/// Specs the schema accepts that cannot be used as written — a bandwidth
/// beyond 32 bits, a quantity beyond 64 bits, a pinned digest the content
/// does not have, a Secret that does not exist. Each shows why on itself
/// (or, where the value is merely large, works); the good Dataset next to
/// them seeds; and an operator restarted with them present still reconciles
/// the others (a new Dataset gets Ready, a deleted one goes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_specs() {
    let Some(mut row) = Row::start("bad_specs", FaultSetup::nodes(3)).await else {
        return;
    };
    let src = row.add_source("weights", &small_source(11, 2)).unwrap();
    let good = spec(&src, 3, None);
    row.apply(NS, "good-before", &good, Some(&src))
        .await
        .unwrap();
    let zeros = format!("blake3:{}", "0".repeat(64));
    let mut huge = good.clone();
    huge["origin"]["bandwidth"] = json!(3_000_000_000u64);
    let mut overflow = good.clone();
    overflow["peerBandwidth"] = json!("99999999999999999999999");
    let mut digest = good.clone();
    digest["digest"] = json!(zeros);
    let mut secret = good.clone();
    secret["source"]["secretRef"] = json!({ "name": "does-not-exist" });
    for (name, spec) in [
        ("huge-bandwidth", &huge),
        ("overflow-quantity", &overflow),
        ("wrong-digest", &digest),
        ("missing-secret", &secret),
    ] {
        row.apply(NS, name, spec, Some(&src)).await.unwrap();
    }
    let ready = row
        .wait_ready(NS, "good-before", Duration::from_secs(90))
        .await;
    row.check_ok("the good Dataset seeds next to the bad ones", ready);
    expect_bad_ones(&mut row, &zeros, "").await;

    // An operator restarted with them present.
    row.kill_operator().unwrap();
    row.start_operator().unwrap();
    row.apply(NS, "good-after", &good, Some(&src))
        .await
        .unwrap();
    let ready = row
        .wait_ready(NS, "good-after", Duration::from_secs(90))
        .await;
    row.check_ok(
        "a restarted operator reconciles a new Dataset next to the bad ones",
        ready,
    );
    row.delete(NS, "good-before").await.unwrap();
    expect_dataset(
        &mut row,
        NS,
        "good-before",
        "a restarted operator lets a deleted Dataset go",
        Duration::from_secs(60),
        |d| d.is_none(),
    )
    .await;
    expect_bad_ones(&mut row, &zeros, " after the operator restart").await;
    row.finish().await;
}

/// Each bad Dataset shows why (or, for the merely large bandwidth, works).
async fn expect_bad_ones(row: &mut Row, zeros: &str, when: &str) {
    let degraded_naming = |reason: Option<&'static str>, needle: String| {
        move |d: Option<&DatasetView>| {
            d.and_then(|d| d.degraded()).is_some_and(|c| {
                reason.is_none_or(|r| c.reason == r) && c.message.contains(&needle)
            })
        }
    };
    expect_dataset(
        row,
        NS,
        "huge-bandwidth",
        &format!("a 3 GB/s bandwidth works, or the Dataset names the field{when}"),
        Duration::from_secs(60),
        |d| {
            d.is_some_and(|d| {
                d.is_ready()
                    || d.degraded()
                        .is_some_and(|c| c.message.contains("bandwidth"))
            })
        },
    )
    .await;
    expect_dataset(
        row,
        NS,
        "overflow-quantity",
        &format!("a quantity beyond 64 bits is refused, naming peerBandwidth{when}"),
        Duration::from_secs(60),
        degraded_naming(None, "peerBandwidth".into()),
    )
    .await;
    expect_dataset(
        row,
        NS,
        "wrong-digest",
        &format!("a wrong pinned digest is DigestMismatch naming it{when}"),
        Duration::from_secs(60),
        degraded_naming(Some("DigestMismatch"), zeros.to_owned()),
    )
    .await;
    expect_dataset(
        row,
        NS,
        "missing-secret",
        &format!("a missing Secret is SourceUnavailable naming it{when}"),
        Duration::from_secs(60),
        degraded_naming(Some("SourceUnavailable"), "does-not-exist".into()),
    )
    .await;
}
