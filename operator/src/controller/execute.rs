//! Carries out decisions through the clients: assignments and removals
//! over the agents' control API, node labels, the status and Events
//! through the API server. Nothing here decides; the answers go back to
//! the pure core as data.

use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::controller::Action;
use swarmseed_proto::pb;

use super::decide::{self, Decision, Deleted, Note, Now, Observed, Outcomes, StatusWrite};
use super::{Context, Error, FINALIZER, MANAGER, Subject, dataset_resource, in_flight, kube_call};
use crate::agents::{AgentPod, agent_pods};
use crate::assignment::{self, AssignmentInput};
use crate::events::EventType;
use crate::status::{self, NodeReport, Reason};
use swarmseed_core::label;
use swarmseed_crd::DatasetStatus;

/// Node label patches one reconcile keeps in flight.
const LABEL_WRITES_IN_FLIGHT: usize = 16;

/// Sends the decided assignments and releases; the agents' answers.
pub async fn agents(observed: &Observed, decision: &Decision, ctx: &Context) -> Outcomes {
    Outcomes {
        sent: send(observed, decision, ctx).await,
        released: release(observed, &decision.release, ctx).await,
    }
}

/// Sends each node in `decision.send` its assignment, built as it is sent
/// (each holds the whole listing).
async fn send(
    observed: &Observed,
    decision: &Decision,
    ctx: &Context,
) -> Vec<(String, decide::SendOutcome)> {
    let Ok(plan) = &decision.plan else {
        return Vec::new();
    };
    let target = &observed.target;
    let token = assignment::peer_token(
        &ctx.peer_secret,
        &target.namespace,
        &target.name,
        &decision.revision,
    );
    let input = AssignmentInput {
        namespace: &target.namespace,
        name: &target.name,
        uid: &target.uid,
        layout: &observed.listed.layout,
        origin: &observed.listed.origin,
        spec: &observed.spec,
        plan,
        peer_token: &token,
    };
    let input = &input;
    let sends = decision.send.iter().filter_map(|node| {
        let info = observed.nodes.get(node)?.agent.as_ref()?;
        Some(async move {
            let r = match ctx.agent(&info.pod_ip) {
                Ok(client) => client.apply(assignment::assignment(input, node)).await,
                Err(e) => Err(e),
            };
            ctx.count_call("apply", &r);
            let r = r
                .map(|a| a.progress.map(Box::new))
                .map_err(|e| match e.refusal() {
                    Some(reason) => NodeReport::Refused {
                        reason,
                        message: e.to_string(),
                    },
                    None => NodeReport::Unreachable(e.to_string()),
                });
            (node.clone(), r)
        })
    });
    in_flight(sends).await
}

/// Tells the agents of nodes the Dataset no longer selects to drop it.
/// Unreachable agents are retried next run.
async fn release(
    observed: &Observed,
    targets: &[AgentPod],
    ctx: &Context,
) -> Vec<(String, Result<bool, String>)> {
    let dataset = pb::DatasetRef {
        namespace: observed.target.namespace.clone(),
        name: observed.target.name.clone(),
        uid: String::new(),
    };
    let calls = targets.iter().map(|pod| {
        let dataset = dataset.clone();
        async move {
            let result = match ctx.agent(&pod.pod_ip) {
                Ok(c) => {
                    let r = c.remove(dataset).await;
                    ctx.count_call("remove", &r);
                    r
                }
                Err(e) => Err(e),
            };
            if let Err(e) = &result {
                tracing::warn!(node = pod.node_name, error = %e, "removing the dataset from a deselected node");
            }
            (pod.node_name.clone(), result.map_err(|e| e.to_string()))
        }
    });
    in_flight(calls).await
}

/// Publishes `notes` on the Dataset.
pub async fn publish(ctx: &Context, subject: &Subject, notes: &[Note]) {
    for n in notes {
        ctx.event(&subject.reference, n.type_, n.reason, &n.note)
            .await;
    }
}

/// Sets `label` to [`label::READY_VALUE`] on the `add` nodes and removes it
/// from the `remove` nodes.
pub async fn sync_labels(
    ctx: &Context,
    label: &str,
    add: &[String],
    remove: &[String],
) -> Result<(), Error> {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    // Owned data only: the futures go into a stream polled elsewhere.
    let changes: Vec<(String, bool)> = add
        .iter()
        .map(|n| (n.clone(), true))
        .chain(remove.iter().map(|n| (n.clone(), false)))
        .collect();
    let patches = changes.into_iter().map(|(node, add)| {
        let nodes = nodes.clone();
        let value = add.then_some(label::READY_VALUE);
        let patch = serde_json::json!({ "metadata": { "labels": { label: value } } });
        async move {
            kube_call(
                "label node",
                nodes.patch(&node, &PatchParams::default(), &Patch::Merge(&patch)),
            )
            .await
        }
    });
    // A few at a time: hundreds of nodes may turn Ready in one reconcile.
    let mut results = futures::stream::iter(patches).buffer_unordered(LABEL_WRITES_IN_FLIGHT);
    while let Some(r) = results.next().await {
        r?;
    }
    Ok(())
}

/// Writes `new` as the status of `subject` when `write` says so, and
/// publishes the Events the change deserves. `Some(delay)`: rate limited,
/// due after `delay`.
pub async fn store_status(
    subject: &Subject,
    ctx: &Context,
    new: &DatasetStatus,
    write: StatusWrite,
) -> Result<Option<Duration>, Error> {
    if write != StatusWrite::Now {
        return Ok(write.pending());
    }
    // Dynamic: the response is the whole object, which need not decode.
    let api: Api<DynamicObject> = Api::namespaced_with(
        ctx.client.clone(),
        &subject.target.namespace,
        &dataset_resource(),
    );
    let patch = serde_json::json!({ "apiVersion": "swarmseed.io/v1alpha1", "kind": "Dataset", "status": new });
    let pp = PatchParams::apply(MANAGER).force();
    kube_call(
        "write status",
        api.patch_status(&subject.target.name, &pp, &Patch::Apply(&patch)),
    )
    .await?;
    ctx.memo(&subject.key, |m| m.last_status_write = Some(Instant::now()));
    ctx.metrics.status_written();
    for (warning, reason, note) in status::milestones(subject.target.status.as_ref(), new) {
        let type_ = if warning {
            EventType::Warning
        } else {
            EventType::Normal
        };
        ctx.event(&subject.reference, type_, reason, &note).await;
    }
    Ok(None)
}

/// Writes the status of a Dataset the operator cannot act on.
pub async fn store_problem(
    subject: &Subject,
    selector: &str,
    problem: &status::DatasetProblem,
    ctx: &Context,
) -> Result<Option<Duration>, Error> {
    let last = ctx.memo(&subject.key, |m| m.last_status_write);
    let (new, write) =
        decide::problem_status(&subject.target, selector, problem, last, &Now::current());
    store_status(subject, ctx, &new, write).await
}

/// Removes the dataset from every agent and its label from every node,
/// before the Dataset goes (see [`decide::deletion`] and
/// [`decide::after_deletion`]).
pub async fn cleanup(subject: &Subject, ctx: &Context) -> Result<Action, Error> {
    let (_, pods) = ctx.cached()?;
    let agents = agent_pods(pods.iter().map(|p| &**p));
    let label = label::key(&subject.target.namespace, &subject.target.name);
    let labelled = super::observe::labelled_nodes(ctx, &label)?;
    let plan = decide::deletion(&agents, &labelled);
    let removals = plan.ask.into_iter().map(|pod| {
        let dataset = subject.dataset_ref();
        async move {
            let result = if pod.pod_ip.is_empty() {
                Err(format!("agent Pod {} has no address", pod.pod_name))
            } else {
                let r = match ctx.agent(&pod.pod_ip) {
                    Ok(c) => c.remove(dataset).await,
                    Err(e) => Err(e),
                };
                ctx.count_call("remove", &r);
                r.map(|_| ()).map_err(|e| e.to_string())
            };
            if let Err(why) = &result
                && !pod.running
            {
                tracing::info!(node = pod.node_name, %why,
                    "not waiting for an agent that is not running: it drops the dataset when it starts");
            }
            (pod, result)
        }
    });
    let answers = in_flight(removals).await;
    sync_labels(ctx, &label, &[], &plan.unlabel).await?;
    let last = ctx.memo(&subject.key, |m| m.last_status_write);
    match decide::after_deletion(&subject.target, &answers, last, &Now::current()) {
        Deleted::Blocked {
            blocked,
            status,
            write,
        } => {
            store_status(subject, ctx, &status, write).await?;
            Err(Error::DeletionBlocked(blocked.len()))
        }
        Deleted::Done => {
            ctx.forget(&subject.key);
            Ok(Action::await_change())
        }
    }
}

/// A Dataset the API server accepted and the operator cannot read: its
/// status says why (`InvalidSpec`, naming the field) and nothing else is
/// done with it, while every other Dataset is reconciled as usual. One
/// being deleted is cleaned up like any other.
pub async fn undecodable(
    obj: &DynamicObject,
    error: &super::DecodeError,
    ctx: &Context,
) -> Result<Action, Error> {
    let subject = Subject::of_raw(obj)?;
    tracing::warn!(error = %error, "the Dataset cannot be read");
    if obj.metadata.deletion_timestamp.is_some() {
        if obj.finalizers().iter().any(|f| f == FINALIZER) {
            cleanup(&subject, ctx).await?;
            remove_finalizer(obj, ctx).await?;
        }
        return Ok(Action::await_change());
    }
    let problem = status::DatasetProblem {
        reason: Reason::InvalidSpec,
        message: format!("the operator cannot read this Dataset: {error}"),
    };
    let pending = store_problem(&subject, "", &problem, ctx).await?;
    Ok(pending.map_or_else(Action::await_change, Action::requeue))
}

/// Removes [`FINALIZER`] from `obj` (a JSON patch that tests it is still
/// where it was, as kube-runtime's `finalizer` does).
async fn remove_finalizer(obj: &DynamicObject, ctx: &Context) -> Result<(), Error> {
    let Some(i) = obj.finalizers().iter().position(|f| f == FINALIZER) else {
        return Ok(());
    };
    let ns = obj.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), &ns, &dataset_resource());
    let path = format!("/metadata/finalizers/{i}");
    let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
        { "op": "test", "path": path, "value": FINALIZER },
        { "op": "remove", "path": path },
    ]))
    .map_err(|e| Error::Kube(kube::Error::SerdeError(e)))?;
    kube_call(
        "remove finalizer",
        api.patch::<()>(
            &obj.name_any(),
            &PatchParams::default(),
            &Patch::Json(patch),
        ),
    )
    .await?;
    Ok(())
}
