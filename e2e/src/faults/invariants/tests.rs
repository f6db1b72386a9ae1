use super::*;
use crate::faults::observe::{Area, NodeStore, StoreEntry};
use serde_json::json;

fn world(start: Instant) -> World {
    World {
        started: start,
        nodes: ["node-0", "node-1"]
            .map(|n| (n.to_string(), NodeHealth::Up(start)))
            .into(),
        control_since: Some(start),
        expected: BTreeMap::from([(
            ("ml".to_string(), "w".to_string()),
            BTreeSet::from(["good".to_string()]),
        )]),
        sealed: BTreeMap::new(),
        faults: Vec::new(),
    }
}

/// A Dataset whose status holds `conditions` (each given the transition
/// time the CRD's `Condition` requires) and the `status` and `metadata`
/// fields of `extra`.
fn dataset(mut conditions: serde_json::Value, extra: serde_json::Value) -> DatasetView {
    for c in conditions.as_array_mut().into_iter().flatten() {
        c["lastTransitionTime"] = json!("2024-01-01T00:00:00Z");
    }
    let mut obj = json!({
        "apiVersion": "swarmseed.io/v1alpha1", "kind": "Dataset",
        "metadata": { "name": "w", "namespace": "ml", "uid": "u" },
        "status": { "conditions": conditions },
    });
    if let Some(m) = extra.get("metadata") {
        obj["metadata"]
            .as_object_mut()
            .unwrap()
            .extend(m.as_object().unwrap().clone());
    }
    if let Some(s) = extra.get("status") {
        obj["status"]
            .as_object_mut()
            .unwrap()
            .extend(s.as_object().unwrap().clone());
    }
    DatasetView::from_object(&serde_json::from_value(obj).unwrap())
}

fn snap(at: Instant, datasets: Vec<DatasetView>, stores: Vec<NodeStore>) -> Snapshot {
    Snapshot {
        at,
        datasets: Ok(datasets),
        labels: Ok(BTreeMap::new()),
        stores,
        outside: Vec::new(),
    }
}

fn seeding(bytes: u64) -> DatasetView {
    dataset(
        json!([{ "type": "Ready", "status": "False", "reason": "NotReady", "message": "" },
               { "type": "Progressing", "status": "True", "reason": "Seeding", "message": "1 node" }]),
        json!({ "status": { "nodeProgress": [{ "node": "node-1", "state": "Transferring", "bytesVerified": bytes }] } }),
    )
}

#[test]
fn seeding_without_change_is_reported_after_the_limit_once() {
    let t0 = Instant::now();
    let w = world(t0);
    let mut c = Checker::new();
    assert!(c.check(&snap(t0, vec![seeding(5)], vec![]), &w).is_empty());
    let later = t0 + SILENT_LIMIT - Duration::from_secs(1);
    assert!(
        c.check(&snap(later, vec![seeding(5)], vec![]), &w)
            .is_empty()
    );
    let v = c.check(&snap(t0 + SILENT_LIMIT, vec![seeding(5)], vec![]), &w);
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0].invariant, Invariant::NoSilentSeeding);
    assert!(v[0].subject.contains("node-1"), "{}", v[0]);
    assert!(
        c.check(&snap(t0 + SILENT_LIMIT * 2, vec![seeding(5)], vec![]), &w)
            .is_empty(),
        "reported once"
    );
    // Progress resets the clock.
    let mut c = Checker::new();
    c.check(&snap(t0, vec![seeding(5)], vec![]), &w);
    c.check(&snap(t0 + SILENT_LIMIT / 2, vec![seeding(6)], vec![]), &w);
    assert!(
        c.check(&snap(t0 + SILENT_LIMIT, vec![seeding(6)], vec![]), &w)
            .is_empty()
    );
}

#[test]
fn timers_pause_while_no_operator_can_act() {
    let t0 = Instant::now();
    let mut w = world(t0);
    w.control_since = None;
    let mut c = Checker::new();
    let none = dataset(json!([]), json!({}));
    assert!(
        c.check(&snap(t0, vec![none.clone()], vec![]), &w)
            .is_empty()
    );
    let late = t0 + EXPLAIN_WITHIN * 3;
    assert!(
        c.check(&snap(late, vec![none.clone()], vec![]), &w)
            .is_empty()
    );
    w.control_since = Some(late);
    assert!(
        c.check(
            &snap(late + EXPLAIN_WITHIN / 2, vec![none.clone()], vec![]),
            &w
        )
        .is_empty()
    );
    let v = c.check(&snap(late + EXPLAIN_WITHIN, vec![none], vec![]), &w);
    assert_eq!(v.len(), 1);
    assert!(v[0].detail.contains("no status"), "{}", v[0]);
}

#[test]
fn a_held_deletion_must_say_terminating_and_name_a_node() {
    let t0 = Instant::now();
    let w = world(t0);
    let deleting = |reason: &str, message: &str| {
        dataset(
            json!([{ "type": "Ready", "status": "False", "reason": reason, "message": message }]),
            json!({ "metadata": { "deletionTimestamp": "2024-01-01T00:00:00Z" } }),
        )
    };
    let mut c = Checker::new();
    c.check(&snap(t0, vec![deleting("Ready", "")], vec![]), &w);
    let v = c.check(
        &snap(t0 + EXPLAIN_WITHIN, vec![deleting("Ready", "")], vec![]),
        &w,
    );
    assert_eq!(v.len(), 1);
    assert!(v[0].detail.contains("Terminating"), "{}", v[0]);
    let mut c = Checker::new();
    c.check(&snap(t0, vec![deleting("Terminating", "x")], vec![]), &w);
    let named = dataset(
        json!([{ "type": "Ready", "status": "False", "reason": "Terminating", "message": "waiting for 1 node" },
               { "type": "Degraded", "status": "True", "reason": "DeletionBlocked", "message": "node-1 (no answer)" }]),
        json!({ "metadata": { "deletionTimestamp": "2024-01-01T00:00:00Z" } }),
    );
    assert!(
        c.check(&snap(t0 + EXPLAIN_WITHIN, vec![named], vec![]), &w)
            .is_empty()
    );
}

#[test]
fn leftovers_count_only_while_the_node_is_up() {
    let t0 = Instant::now();
    let mut w = world(t0);
    w.nodes.insert("node-1".into(), NodeHealth::Impaired(t0));
    let store = NodeStore {
        node: "node-1".into(),
        entries: BTreeSet::from([StoreEntry {
            area: Area::Staging,
            ns: "ml".into(),
            entry: "gone".into(),
        }]),
        published: BTreeMap::new(),
    };
    let mut c = Checker::new();
    let s = |at| snap(at, vec![], vec![store.clone()]);
    assert!(c.check(&s(t0), &w).is_empty());
    assert!(c.check(&s(t0 + CLEANUP_WITHIN * 4), &w).is_empty());
    let back = t0 + CLEANUP_WITHIN * 4;
    w.nodes.insert("node-1".into(), NodeHealth::Up(back));
    assert!(c.check(&s(back + CLEANUP_WITHIN / 2), &w).is_empty());
    let v = c.check(&s(back + CLEANUP_WITHIN), &w);
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].invariant, Invariant::NoLeftover);
    assert_eq!(v[0].subject, "staging/ml/gone on node-1");
}

#[test]
fn published_trees_must_hold_the_origins_bytes() {
    let t0 = Instant::now();
    let w = world(t0);
    let store = |root: &str| NodeStore {
        node: "node-0".into(),
        entries: BTreeSet::new(),
        published: BTreeMap::from([(
            ("ml".to_string(), "w".to_string()),
            PublishedTree::Tree {
                revision: "r1".into(),
                root: root.into(),
            },
        )]),
    };
    let mut c = Checker::new();
    assert!(
        c.check(&snap(t0, vec![], vec![store("good")]), &w)
            .is_empty()
    );
    let v = c.check(&snap(t0, vec![], vec![store("torn")]), &w);
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].invariant, Invariant::NoPartialTree);
}

#[test]
fn the_final_check_wants_ready_with_the_bytes_or_a_named_fault() {
    let t0 = Instant::now();
    let w = world(t0);
    let ready = dataset(
        json!([{ "type": "Ready", "status": "True", "reason": "Ready", "message": "" }]),
        json!({ "status": { "nodeProgress": [{ "node": "node-0", "state": "Ready" }] } }),
    );
    let v = final_check(&snap(t0, vec![ready], vec![]), &w);
    assert_eq!(v.len(), 1, "node-0 publishes nothing: {v:?}");
    let stuck = dataset(
        json!([{ "type": "Ready", "status": "False", "reason": "NotReady", "message": "" },
               { "type": "Progressing", "status": "True", "reason": "Seeding", "message": "" }]),
        json!({}),
    );
    let v = final_check(&snap(t0, vec![stuck], vec![]), &w);
    assert!(v[0].detail.contains("neither Ready nor Degraded"), "{v:?}");
    let failed = dataset(
        json!([{ "type": "Degraded", "status": "True", "reason": "DigestMismatch", "message": "differs" }]),
        json!({}),
    );
    assert!(final_check(&snap(t0, vec![failed], vec![]), &w).is_empty());
}
