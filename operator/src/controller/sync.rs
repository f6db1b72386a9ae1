//! Tells every agent process which Datasets exist.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use kube::api::Api;
use swarmseed_proto::pb;

use super::{Context, in_flight, kube_call};
use crate::agents::{AgentError, AgentPod, agent_pods};
use swarmseed_crd::Dataset;

/// How often agents are checked for one not told yet which Datasets exist.
const SYNC_INTERVAL: Duration = Duration::from_secs(2);

/// Tells every agent process, once, which Datasets exist (`SyncDatasets`):
/// each agent found ready for the first time by this operator, and each
/// that restarted since. An agent drops what it resumed from its disk of
/// Datasets deleted while it was away (their finalizer could not wait for
/// an agent that was not running), so a deleted Dataset never comes back.
/// The Datasets are listed (metadata only) when an agent is due: a fresh
/// list, never a cache that might not hold one yet.
pub async fn sync_agents(ctx: Arc<Context>) {
    let datasets: Api<Dataset> = Api::all(ctx.client.clone());
    // Node → the agent incarnation told last.
    let mut told: HashMap<String, String> = HashMap::new();
    let mut tick = tokio::time::interval(SYNC_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Ok((_, pods)) = ctx.cached() else {
            continue;
        };
        let agents = agent_pods(pods.iter().map(|p| &**p));
        told.retain(|node, _| agents.contains_key(node));
        let due: Vec<&AgentPod> = agents
            .values()
            .filter(|p| p.ready && told.get(&p.node_name) != Some(&p.incarnation))
            .collect();
        if due.is_empty() {
            continue;
        }
        let list = kube_call(
            "list datasets",
            datasets.list_metadata(&kube::api::ListParams::default()),
        )
        .await;
        let existing: Arc<Vec<pb::DatasetRef>> = match list {
            Ok(list) => Arc::new(
                list.items
                    .iter()
                    .filter_map(|d| {
                        Some(pb::DatasetRef {
                            namespace: d.namespace()?,
                            name: d.name_any(),
                            uid: d.uid().unwrap_or_default(),
                        })
                    })
                    .collect(),
            ),
            Err(e) => {
                tracing::warn!(error = %e, "listing Datasets for the agents (retried)");
                continue;
            }
        };
        let calls = due.into_iter().map(|pod| {
            let existing = existing.clone();
            let ctx = &ctx;
            async move {
                // Copied here, so at most the calls in flight hold a copy.
                let list = (*existing).clone();
                let r = match ctx.agent(&pod.pod_ip) {
                    Ok(c) => c.sync(list).await,
                    Err(e) => Err(e),
                };
                ctx.count_call("sync", &r);
                (pod, r)
            }
        });
        for (pod, result) in in_flight(calls).await {
            match result {
                Ok(removed) => {
                    for d in removed {
                        tracing::info!(
                            node = pod.node_name,
                            namespace = d.namespace,
                            name = d.name,
                            "the agent dropped a Dataset deleted while it was away"
                        );
                    }
                    told.insert(pod.node_name.clone(), pod.incarnation.clone());
                }
                // An agent from before SyncDatasets: nothing to tell it.
                Err(AgentError::Call { status, .. })
                    if status.code() == tonic::Code::Unimplemented =>
                {
                    told.insert(pod.node_name.clone(), pod.incarnation.clone());
                }
                Err(e) => tracing::warn!(node = pod.node_name, error = %e,
                    "telling the agent which Datasets exist (retried)"),
            }
        }
    }
}
