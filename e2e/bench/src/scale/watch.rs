//! Watching what the operator does: the Datasets' status, the Nodes'
//! labels, reconcile rounds and how long a LIST of every Node takes.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Node;
use kube::Resource;
use kube::api::{Api, DynamicObject, PartialObjectMeta};
use kube::runtime::{WatchStreamExt as _, watcher};
use serde::de::DeserializeOwned;
use swarmseed_core::label;
use swarmseed_harness::seeding::{dataset_resource, is_ready};

use super::{NAMESPACE, NODE_LABEL, lock};

#[derive(Debug, Default, Clone)]
pub(super) struct Track {
    pub(super) status: Option<serde_json::Value>,
    /// When each status change was seen.
    pub(super) writes: Vec<Instant>,
    pub(super) ready_at: Option<Instant>,
}

pub(super) type Tracks = Arc<Mutex<BTreeMap<String, Track>>>;

/// Spawns a watch of `api`: `record` sees every object applied, with the
/// instant it was seen. Watch errors are logged under `what` and retried
/// with backoff.
fn follow<K>(
    api: Api<K>,
    config: watcher::Config,
    what: &'static str,
    mut record: impl FnMut(K, Instant) + Send + 'static,
) -> tokio::task::JoinHandle<()>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    tokio::spawn(async move {
        let mut events = watcher(api, config).default_backoff().boxed();
        while let Some(ev) = events.next().await {
            match ev {
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                    record(o, Instant::now())
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "{what} watch"),
            }
        }
    })
}

/// Follows the Datasets of [`NAMESPACE`], recording every status change.
pub(super) fn watch_datasets(client: kube::Client, tracks: Tracks) -> tokio::task::JoinHandle<()> {
    let api: Api<DynamicObject> = Api::namespaced_with(client, NAMESPACE, &dataset_resource());
    follow(
        api,
        watcher::Config::default(),
        "dataset",
        move |obj, now| {
            let Some(name) = obj.metadata.name.clone() else {
                return;
            };
            let status = obj.data.get("status").cloned();
            let mut guard = lock(&tracks);
            let t = guard.entry(name).or_default();
            if status.is_some() && status != t.status {
                t.writes.push(now);
                if t.ready_at.is_none() && status.as_ref().is_some_and(is_ready) {
                    t.ready_at = Some(now);
                }
                t.status = status;
            }
        },
    )
}

/// One Dataset's node label (`swarmseed_core::label::key`) on the Nodes.
#[derive(Debug, Default, Clone)]
pub(super) struct LabelTrack {
    pub(super) nodes: std::collections::HashSet<String>,
    /// When every Node carried it.
    pub(super) complete: Option<Instant>,
}

pub(super) type LabelTracks = Arc<Mutex<BTreeMap<String, LabelTrack>>>;

/// Follows the Nodes' labels (metadata only), recording when each
/// Dataset's label is on all `nodes` Nodes.
pub(super) fn watch_labels(
    client: kube::Client,
    names: &[String],
    nodes: usize,
    tracks: LabelTracks,
) -> tokio::task::JoinHandle<()> {
    let keys: Vec<(String, String)> = names
        .iter()
        .map(|n| (label::key(NAMESPACE, n), n.clone()))
        .collect();
    // `PartialObjectMeta` makes the requests metadata-only.
    let api: Api<PartialObjectMeta<Node>> = Api::all(client);
    let config = watcher::Config::default().labels(&format!("{}={}", NODE_LABEL.0, NODE_LABEL.1));
    follow(api, config, "node", move |obj, now| {
        let Some(node) = obj.metadata.name.clone() else {
            return;
        };
        let labels = obj.metadata.labels.unwrap_or_default();
        let mut guard = lock(&tracks);
        for (key, name) in &keys {
            let t = guard.entry(name.clone()).or_default();
            if labels.get(key).is_some_and(|v| v == "ready") {
                t.nodes.insert(node.clone());
            } else {
                t.nodes.remove(&node);
            }
            if t.complete.is_none() && t.nodes.len() >= nodes {
                t.complete = Some(now);
            }
        }
    })
}

/// Per reconcile round (GetStatus instants `rounds`, ApplyAssignment
/// instants `applies`, both of one agent and Dataset, up to `until`): the
/// time from a GetStatus to the first ApplyAssignment before the next
/// GetStatus, and from that ApplyAssignment to the next GetStatus.
pub(super) fn phases(
    rounds: &[Instant],
    applies: &[Instant],
    until: Instant,
) -> (Vec<f64>, Vec<f64>) {
    let rounds: Vec<Instant> = rounds.iter().copied().filter(|r| *r <= until).collect();
    let (mut first, mut second) = (Vec::new(), Vec::new());
    for (i, r) in rounds.iter().enumerate() {
        let next = rounds.get(i + 1).copied();
        let Some(a) = applies
            .iter()
            .copied()
            .find(|a| a >= r && *a <= until && next.is_none_or(|n| *a < n))
        else {
            continue;
        };
        first.push(a.duration_since(*r).as_secs_f64());
        if let Some(n) = next {
            second.push(n.duration_since(a).as_secs_f64());
        }
    }
    (first, second)
}

/// Lists every Node once a second (full objects, as a reconcile does),
/// recording how long each LIST took.
pub(super) fn probe_node_lists(
    client: kube::Client,
    latencies: Arc<Mutex<Vec<f64>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let api: Api<Node> = Api::all(client);
        loop {
            let start = Instant::now();
            if api.list(&kube::api::ListParams::default()).await.is_ok() {
                lock(&latencies).push(start.elapsed().as_secs_f64());
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconcile_phases_pair_each_status_round_with_its_apply() {
        let t = Instant::now();
        let at = |s: f64| t + Duration::from_secs_f64(s);
        let rounds = [at(0.0), at(5.0), at(9.0), at(20.0)];
        // The round at 9 s sent nothing before `until`; the last is after it.
        let applies = [at(2.0), at(6.5), at(21.0)];
        let (first, second) = phases(&rounds, &applies, at(10.0));
        let close = |a: &[f64], b: &[f64]| {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-9)
        };
        assert!(close(&first, &[2.0, 1.5]), "{first:?}");
        assert!(close(&second, &[3.0, 2.5]), "{second:?}");
    }
}
