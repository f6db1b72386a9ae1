//! Gathers the world of one Dataset into plain data: the source listing
//! (once per generation), the selected nodes with their agents' reports,
//! the other agents, the labelled nodes.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use swarmseed_origin::{OriginClient, OriginOptions};
use swarmseed_proto::layout::default_chunk_size;
use swarmseed_proto::{ChunkLayout, pb};

use super::decide::{Listed, NodeSeen, Observed, Target};
use super::{
    Context, Error, LIST_CONCURRENCY, LIST_TIMEOUT, RELIST_ANNOTATION, in_flight, kube_call,
};
use crate::agents::{AgentPod, agent_pods};
use crate::assignment;
use crate::events::EventType;
use crate::plan::AgentInfo;
use crate::selector;
use crate::status::{DatasetProblem, NodeReport, Reason};
use swarmseed_crd::{Dataset, ValidSpec};

/// Everything `decide` needs about a live Dataset whose spec is valid and
/// whose source is listed.
pub async fn observe(
    ds: &Dataset,
    target: Target,
    spec: ValidSpec,
    listed: Listed,
    ctx: &Context,
) -> Result<Observed, Error> {
    let (nodes, others) = discover(ds, ctx, &target.namespace, &target.name).await?;
    let label = swarmseed_core::label::key(&target.namespace, &target.name);
    let labelled = labelled_nodes(ctx, &label)?;
    Ok(Observed {
        target,
        selector: selector::describe(&ds.spec),
        spec,
        listed,
        nodes,
        others,
        labelled,
        max_peers: ctx.settings.max_peers,
    })
}

/// Lists the source once per generation and value of [`RELIST_ANNOTATION`].
/// The outer error is the API server's; the inner one is the Dataset's problem.
pub async fn list_source(
    ds: &Dataset,
    ctx: &Context,
    key: &ObjectRef<Dataset>,
    chunk_size: Option<u64>,
    bandwidth: u64,
) -> Result<Result<Listed, DatasetProblem>, Error> {
    let generation = ds.metadata.generation;
    let relist = ds.annotations().get(RELIST_ANNOTATION).cloned();
    if let Some(l) = ctx
        .memo(key, |m| m.listed.clone())
        .filter(|l| l.generation == generation && l.relist == relist)
    {
        return Ok(Ok(l));
    }
    let ns = ds.namespace().ok_or(Error::NoNamespace)?;
    let source = &ds.spec.source;
    let mut credentials = BTreeMap::new();
    if let Some(r) = &source.secret_ref {
        let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
        let Some(secret) = kube_call("get secret", secrets.get_opt(&r.name)).await? else {
            let message = format!(
                "Secret {ns}/{} (spec.source.secretRef) does not exist",
                r.name
            );
            return Ok(Err(DatasetProblem {
                reason: Reason::SourceUnavailable,
                message,
            }));
        };
        credentials = match assignment::credentials(&secret.data.unwrap_or_default()) {
            Ok(c) => c,
            Err(k) => {
                let message = format!("Secret {ns}/{}: key {k} is not UTF-8 text", r.name);
                return Ok(Err(DatasetProblem {
                    reason: Reason::InvalidSource,
                    message,
                }));
            }
        };
    }
    let origin = assignment::origin(source, credentials, "");
    let options = OriginOptions {
        bandwidth_bytes_per_sec: bandwidth,
        concurrency: LIST_CONCURRENCY,
        ..OriginOptions::default()
    };
    let problem = |reason: Reason, message: String| Ok(Err(DatasetProblem { reason, message }));
    let client = match OriginClient::new(&origin, options) {
        Ok(c) => c,
        Err(e) => return problem(Reason::InvalidSource, e.to_string()),
    };
    let include = source.include.clone().unwrap_or_default();
    let exclude = source.exclude.clone().unwrap_or_default();
    let listing = match tokio::time::timeout(LIST_TIMEOUT, client.list(&include, &exclude)).await {
        Ok(Ok(l)) => l,
        Ok(Err(e)) => return problem(e.reason(), e.to_string()),
        Err(_) => {
            return problem(
                Reason::SourceUnavailable,
                format!("listing took longer than {LIST_TIMEOUT:?}"),
            );
        }
    };
    let weak_validators = listing.weak_validators.clone();
    let total: u64 = listing.files.iter().map(|f| f.size).sum();
    let layout = match ChunkLayout::new(
        listing.files,
        chunk_size.unwrap_or_else(|| default_chunk_size(total)),
    ) {
        Ok(l) => l,
        Err(e) => return problem(Reason::InvalidSource, e.to_string()),
    };
    let origin = assignment::origin(
        source,
        origin.credentials.into_iter().collect(),
        &listing.revision,
    );
    let listed = Listed {
        generation,
        relist,
        layout: Arc::new(layout),
        origin,
        weak_validators,
    };
    ctx.memo(key, |m| m.listed = Some(listed.clone()));
    if ds.spec.digest.is_none()
        && let Some(message) = listed.weak_validators.message()
    {
        ctx.event(
            &ds.object_ref(&()),
            EventType::Warning,
            Reason::WeakValidators,
            &message,
        )
        .await;
    }
    let note = format!(
        "listed {} files, {} bytes in {} chunks: revision {}",
        listed.layout.files().len(),
        listed.layout.total_bytes(),
        listed.layout.chunk_count(),
        listed.layout.revision(),
    );
    ctx.event(
        &ds.object_ref(&()),
        EventType::Normal,
        Reason::SourceListed,
        &note,
    )
    .await;
    Ok(Ok(listed))
}

/// The selected nodes that run an agent Pod, with the agent's answer; and
/// the agent Pods of every other node.
async fn discover(
    ds: &Dataset,
    ctx: &Context,
    ns: &str,
    name: &str,
) -> Result<(BTreeMap<String, NodeSeen>, Vec<AgentPod>), Error> {
    let (nodes, pods) = ctx.cached()?;
    let mut by_node = agent_pods(pods.iter().map(|p| &**p));
    ctx.forget_agents_except(by_node.values().map(|p| p.pod_ip.as_str()));
    let dataset = pb::DatasetRef {
        namespace: ns.to_owned(),
        name: name.to_owned(),
        uid: String::new(),
    };
    let selected: Vec<AgentPod> = nodes
        .iter()
        .filter(|n| selector::selects(&ds.spec, n))
        .filter_map(|n| by_node.remove(&n.name_any()))
        .collect();
    let asks = selected.iter().map(|pod| {
        let dataset = dataset.clone();
        async move {
            let node = pod.node_name.clone();
            let unreachable = |message: String| NodeSeen {
                agent: None,
                report: NodeReport::Unreachable(message),
            };
            if !pod.ready {
                let msg = format!("agent Pod {} is not ready", pod.pod_name);
                return (node, unreachable(msg));
            }
            let client = match ctx.agent(&pod.pod_ip) {
                Ok(c) => c,
                Err(e) => return (node, unreachable(e.to_string())),
            };
            let status = client.status(Some(dataset.clone())).await;
            ctx.count_call("status", &status);
            match status {
                Ok(s) => {
                    let info = AgentInfo {
                        node_name: node.clone(),
                        pod_ip: pod.pod_ip.clone(),
                        control_port: ctx.settings.control_port,
                        peer_address: s.peer_address.clone(),
                        public_key: s.public_key.clone(),
                        ready: true,
                    };
                    let progress = s
                        .datasets
                        .into_iter()
                        .find(|d| d.dataset.as_ref() == Some(&dataset));
                    let report = NodeReport::Progress(progress.map(Box::new));
                    (
                        node,
                        NodeSeen {
                            agent: Some(info),
                            report,
                        },
                    )
                }
                Err(e) => (node, unreachable(e.to_string())),
            }
        }
    });
    let views = in_flight(asks).await.into_iter().collect();
    Ok((views, by_node.into_values().collect()))
}

/// The nodes carrying `label`.
pub fn labelled_nodes(ctx: &Context, label: &str) -> Result<Vec<String>, Error> {
    let (nodes, _) = ctx.cached()?;
    Ok(nodes
        .iter()
        .filter(|n| n.labels().contains_key(label))
        .map(|n| n.name_any())
        .collect())
}
