//! The reconciler: a kube-runtime `Controller` over `Dataset`, woken by
//! agent Pods and Nodes too. `finalizer()` is the only top-level step:
//! `apply` drives agents towards the spec, `cleanup` removes the dataset
//! from every node before the Dataset goes away.
//!
//! Apply, in the order the data flows: validate the spec → list the source
//! (once per generation) → cut it into chunks → find the selected nodes and
//! their agents → ask each agent for its progress → plan → send every agent
//! its assignment (idempotent) → label ready nodes → write status (only
//! when it changed, at most once a second).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Client, ResourceExt};
use swarmseed_agent::origin::{OriginClient, OriginOptions};
use swarmseed_proto::layout::default_chunk_size;
use swarmseed_proto::{ChunkLayout, pb};

use crate::agents::{AGENT_SELECTOR, AgentClient, AgentError, ControlToken, agent_pods};
use crate::assignment::{self, AssignmentInput};
use crate::crd::{Dataset, DatasetStatus};
use crate::node_label;
use crate::plan::{self, AgentInfo, Plan, PlanInput};
use crate::selector;
use crate::status::{self, DatasetProblem, NodeReport, RevisionInfo, StatusInput, reason};

/// The finalizer that keeps a Dataset until every node dropped it.
pub const FINALIZER: &str = "swarmseed.io/cleanup";
/// Field manager of status and label writes.
pub const MANAGER: &str = "swarmseed-operator";
/// Bound on every API server call.
const KUBE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on listing a source (large buckets take a while).
const LIST_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("kubernetes API: no answer to {0} within {KUBE_TIMEOUT:?}")]
    KubeTimeout(&'static str),
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("Dataset has no namespace")]
    NoNamespace,
}

impl Error {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube",
            Self::KubeTimeout(_) => "kube_timeout",
            Self::Agent(e) => e.label(),
            Self::Finalizer(_) => "finalizer",
            Self::NoNamespace => "no_namespace",
        }
    }
}

async fn kube_call<T>(
    what: &'static str,
    f: impl Future<Output = kube::Result<T>>,
) -> Result<T, Error> {
    tokio::time::timeout(KUBE_TIMEOUT, f)
        .await
        .map_err(|_| Error::KubeTimeout(what))?
        .map_err(Error::from)
}

/// Settings of the reconciler.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Namespace of the agent DaemonSet's Pods.
    pub agent_namespace: String,
    pub control_port: u16,
    pub call_timeout: Duration,
    pub max_peers: usize,
}

/// What the reconciler remembers between runs. Losing it (a restart) costs
/// one listing per Dataset; the plan is rebuilt from the agents' state.
#[derive(Default)]
struct Memo {
    listed: Option<Listed>,
    plan: Option<Plan>,
    last_status_write: Option<Instant>,
}

#[derive(Clone)]
struct Listed {
    generation: Option<i64>,
    layout: Arc<ChunkLayout>,
    origin: pb::Origin,
}

pub struct Context {
    pub client: Client,
    pub settings: Settings,
    pub token: ControlToken,
    /// Key the per-dataset peer tokens are derived from.
    pub peer_secret: Vec<u8>,
    memos: Mutex<HashMap<ObjectRef<Dataset>, Memo>>,
}

impl Context {
    pub fn new(
        client: Client,
        settings: Settings,
        token: ControlToken,
        peer_secret: Vec<u8>,
    ) -> Self {
        Self {
            client,
            settings,
            token,
            peer_secret,
            memos: Mutex::new(HashMap::new()),
        }
    }

    fn memo<R>(&self, key: &ObjectRef<Dataset>, f: impl FnOnce(&mut Memo) -> R) -> R {
        let mut memos = self
            .memos
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(memos.entry(key.clone()).or_default())
    }
}

/// Runs the controller until SIGTERM/ctrl-c.
pub async fn run(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let datasets: Api<Dataset> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ctx.settings.agent_namespace);
    let nodes: Api<Node> = Api::all(client.clone());
    let controller = Controller::new(datasets, watcher::Config::default());
    let store = controller.store();
    // Any agent Pod or Node change may change any Dataset's node set.
    let all = move |store: &kube::runtime::reflector::Store<Dataset>| {
        store
            .state()
            .iter()
            .map(|d| ObjectRef::from_obj(&**d))
            .collect::<Vec<_>>()
    };
    let (s1, s2) = (store.clone(), store);
    controller
        .watches(
            pods,
            watcher::Config::default().labels(AGENT_SELECTOR),
            move |_| all(&s1),
        )
        .watches(nodes, watcher::Config::default(), move |_| {
            s2.state()
                .iter()
                .map(|d| ObjectRef::from_obj(&**d))
                .collect::<Vec<_>>()
        })
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::warn!(error = %e, "reconcile failed");
            }
        })
        .await;
}

fn error_policy(ds: Arc<Dataset>, e: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(dataset = %ds.name_any(), error = %e, label = e.label(), "reconcile error");
    Action::requeue(Duration::from_secs(5))
}

#[tracing::instrument(skip_all, fields(dataset = %ds.name_any(), namespace = ds.namespace().unwrap_or_default()))]
async fn reconcile(ds: Arc<Dataset>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = ds.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<Dataset> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, ds, |event| async {
        match event {
            Event::Apply(ds) => apply(&ds, &ctx).await,
            Event::Cleanup(ds) => cleanup(&ds, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// One selected node with its agent (if any) and what it reported.
struct NodeView {
    agent: Option<(AgentClient, AgentInfo)>,
    report: NodeReport,
}

async fn apply(ds: &Dataset, ctx: &Context) -> Result<Action, Error> {
    let ns = ds.namespace().ok_or(Error::NoNamespace)?;
    let name = ds.name_any();
    let key = ObjectRef::from_obj(ds);

    let spec = match ds.spec.validate() {
        Ok(s) => s,
        Err(e) => {
            let problem = DatasetProblem {
                reason: reason::INVALID_SOURCE,
                message: e.to_string(),
            };
            let (_, pending) =
                write_status(ds, ctx, &BTreeMap::new(), None, Some(&problem)).await?;
            return Ok(pending.map_or_else(Action::await_change, Action::requeue));
        }
    };

    let listed = match list_source(ds, ctx, &key, spec.chunk_size, spec.origin_bandwidth).await? {
        Ok(l) => l,
        Err(problem) => {
            let (_, pending) =
                write_status(ds, ctx, &BTreeMap::new(), None, Some(&problem)).await?;
            return Ok(Action::requeue(pending.unwrap_or(Duration::from_secs(30))));
        }
    };
    let layout = &listed.layout;
    let revision = layout.revision().to_hex();
    let info = RevisionInfo {
        revision: revision.clone(),
        total_bytes: layout.total_bytes(),
        files: layout.files().len() as u64,
        chunk_size: layout.chunk_size(),
    };

    let mut views = discover(ds, ctx, &ns, &name).await?;
    let agents: Vec<AgentInfo> = views
        .values()
        .filter_map(|v| v.agent.as_ref().map(|a| a.1.clone()))
        .collect();
    let previous = ctx.memo(&key, |m| m.plan.clone());
    let plan = plan::plan(&PlanInput {
        layout,
        agents: &agents,
        previous: previous.as_ref(),
        max_fetchers: spec.max_fetchers,
        max_peers: ctx.settings.max_peers,
    });
    if let Ok(plan) = &plan {
        let token = assignment::peer_token(&ctx.peer_secret, &ns, &name, &revision);
        let input = AssignmentInput {
            namespace: &ns,
            name: &name,
            layout,
            origin: &listed.origin,
            spec: &spec,
            plan,
            peer_token: &token,
        };
        let sends = views.iter().filter_map(|(node, v)| {
            let (client, info) = v.agent.as_ref()?;
            // A node that failed this very plan is not retried until the
            // plan changes: re-sending would restart the transfer (a
            // digest mismatch would fetch everything again) every run.
            let failed_this_plan = matches!(&v.report, NodeReport::Progress(Some(p))
                if p.state() == pb::DatasetState::Failed
                    && p.revision == revision
                    && p.plan_generation == plan.generation);
            if !info.ready || failed_this_plan {
                return None;
            }
            let a = assignment::assignment(&input, node);
            let client = client.clone();
            Some(async move { (node.clone(), client.apply(a).await) })
        });
        for (node, result) in futures::future::join_all(sends).await {
            let Some(v) = views.get_mut(&node) else {
                continue;
            };
            v.report = match result {
                Ok(r) => NodeReport::Progress(r.progress.map(Box::new)),
                Err(e) => NodeReport::Unreachable(e.to_string()),
            };
        }
        ctx.memo(&key, |m| m.plan = Some(plan.clone()));
    }

    let reports: BTreeMap<String, NodeReport> =
        views.into_iter().map(|(n, v)| (n, v.report)).collect();
    let label = node_label::key(&ns, &name);
    let ready_nodes: Vec<&String> = reports
        .iter()
        .filter(|(_, r)| {
            matches!(r, NodeReport::Progress(Some(p))
                if p.state() == pb::DatasetState::Ready && p.published_revision == revision)
        })
        .map(|(n, _)| n)
        .collect();
    sync_labels(ctx, &label, &ready_nodes).await?;
    let (status, pending) = write_status(ds, ctx, &reports, Some(&info), None).await?;
    let done = status.nodes.desired > 0 && status.nodes.ready == status.nodes.desired;
    let next = if done {
        Duration::from_secs(60)
    } else {
        Duration::from_secs(2)
    };
    Ok(Action::requeue(pending.map_or(next, |p| p.min(next))))
}

/// Lists the source once per generation. The outer error is the API
/// server's; the inner one is the Dataset's problem to report.
async fn list_source(
    ds: &Dataset,
    ctx: &Context,
    key: &ObjectRef<Dataset>,
    chunk_size: Option<u64>,
    bandwidth: u64,
) -> Result<Result<Listed, DatasetProblem>, Error> {
    let generation = ds.metadata.generation;
    if let Some(l) = ctx
        .memo(key, |m| m.listed.clone())
        .filter(|l| l.generation == generation)
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
                reason: reason::SOURCE_UNAVAILABLE,
                message,
            }));
        };
        credentials = match assignment::credentials(&secret.data.unwrap_or_default()) {
            Ok(c) => c,
            Err(k) => {
                let message = format!("Secret {ns}/{}: key {k} is not UTF-8 text", r.name);
                return Ok(Err(DatasetProblem {
                    reason: reason::INVALID_SOURCE,
                    message,
                }));
            }
        };
    }
    let origin = assignment::origin(source, credentials, "");
    let options = OriginOptions {
        bandwidth_bytes_per_sec: bandwidth,
        ..OriginOptions::default()
    };
    let problem =
        |reason: &'static str, message: String| Ok(Err(DatasetProblem { reason, message }));
    let client = match OriginClient::new(&origin, options) {
        Ok(c) => c,
        Err(e) => return problem(reason::INVALID_SOURCE, e.to_string()),
    };
    let include = source.include.clone().unwrap_or_default();
    let exclude = source.exclude.clone().unwrap_or_default();
    let listing = match tokio::time::timeout(LIST_TIMEOUT, client.list(&include, &exclude)).await {
        Ok(Ok(l)) => l,
        Ok(Err(e)) => return problem(e.reason(), e.to_string()),
        Err(_) => {
            return problem(
                reason::SOURCE_UNAVAILABLE,
                format!("listing took longer than {LIST_TIMEOUT:?}"),
            );
        }
    };
    let total: u64 = listing.files.iter().map(|f| f.size).sum();
    let layout = match ChunkLayout::new(
        listing.files,
        chunk_size.unwrap_or_else(|| default_chunk_size(total)),
    ) {
        Ok(l) => l,
        Err(e) => return problem(reason::INVALID_SOURCE, e.to_string()),
    };
    let origin = assignment::origin(
        source,
        origin.credentials.into_iter().collect(),
        &listing.revision,
    );
    let listed = Listed {
        generation,
        layout: Arc::new(layout),
        origin,
    };
    ctx.memo(key, |m| m.listed = Some(listed.clone()));
    Ok(Ok(listed))
}

/// The selected nodes that run an agent Pod, with the agent's answer.
async fn discover(
    ds: &Dataset,
    ctx: &Context,
    ns: &str,
    name: &str,
) -> Result<BTreeMap<String, NodeView>, Error> {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let nodes = kube_call("list nodes", nodes.list(&ListParams::default())).await?;
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ctx.settings.agent_namespace);
    let pods = kube_call(
        "list agent pods",
        pods.list(&ListParams::default().labels(AGENT_SELECTOR)),
    )
    .await?;
    let by_node = agent_pods(&pods.items);
    let dataset = pb::DatasetRef {
        namespace: ns.to_owned(),
        name: name.to_owned(),
    };
    let asks = nodes
        .items
        .iter()
        .filter(|n| selector::selects(&ds.spec, n))
        .filter_map(|n| by_node.get(&n.name_any()))
        .map(|pod| {
            let dataset = dataset.clone();
            async move {
                let node = pod.node_name.clone();
                if !pod.ready {
                    let msg = format!("agent Pod {} is not ready", pod.pod_name);
                    return (
                        node,
                        NodeView {
                            agent: None,
                            report: NodeReport::Unreachable(msg),
                        },
                    );
                }
                let client = match AgentClient::new(
                    &pod.pod_ip,
                    ctx.settings.control_port,
                    ctx.token.clone(),
                    ctx.settings.call_timeout,
                ) {
                    Ok(c) => c,
                    Err(e) => {
                        return (
                            node,
                            NodeView {
                                agent: None,
                                report: NodeReport::Unreachable(e.to_string()),
                            },
                        );
                    }
                };
                match client.status(Some(dataset.clone())).await {
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
                            NodeView {
                                agent: Some((client, info)),
                                report,
                            },
                        )
                    }
                    Err(e) => (
                        node,
                        NodeView {
                            agent: None,
                            report: NodeReport::Unreachable(e.to_string()),
                        },
                    ),
                }
            }
        });
    Ok(futures::future::join_all(asks).await.into_iter().collect())
}

/// Sets `label=ready` on `ready` nodes and removes it everywhere else.
async fn sync_labels(ctx: &Context, label: &str, ready: &[&String]) -> Result<(), Error> {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let labelled = kube_call(
        "list labelled nodes",
        nodes.list(&ListParams::default().labels(label)),
    )
    .await?;
    let has: Vec<String> = labelled.items.iter().map(|n| n.name_any()).collect();
    for node in ready.iter().filter(|n| !has.contains(n)) {
        let patch =
            serde_json::json!({ "metadata": { "labels": { label: node_label::READY_VALUE } } });
        kube_call(
            "label node",
            nodes.patch(node, &PatchParams::default(), &Patch::Merge(&patch)),
        )
        .await?;
    }
    for node in has.iter().filter(|n| !ready.contains(n)) {
        let patch = serde_json::json!({ "metadata": { "labels": { label: null } } });
        kube_call(
            "unlabel node",
            nodes.patch(node, &PatchParams::default(), &Patch::Merge(&patch)),
        )
        .await?;
    }
    Ok(())
}

/// Computes the status and writes it when it changed, at most once per
/// `MIN_WRITE_INTERVAL`. The `Duration` says when a rate-limited write is
/// due (the caller requeues then).
async fn write_status(
    ds: &Dataset,
    ctx: &Context,
    reports: &BTreeMap<String, NodeReport>,
    revision: Option<&RevisionInfo>,
    problem: Option<&DatasetProblem>,
) -> Result<(DatasetStatus, Option<Duration>), Error> {
    let ns = ds.namespace().ok_or(Error::NoNamespace)?;
    let name = ds.name_any();
    let new = status::compute(&StatusInput {
        namespace: &ns,
        name: &name,
        generation: ds.metadata.generation,
        nodes: reports,
        revision,
        problem,
        previous: ds.status.as_ref(),
        now: Time(Timestamp::now()),
    });
    if !status::needs_write(ds.status.as_ref(), &new) {
        return Ok((new, None));
    }
    let key = ObjectRef::from_obj(ds);
    let last = ctx.memo(&key, |m| m.last_status_write);
    let delay = status::write_delay(last, Instant::now());
    if !delay.is_zero() {
        // Rate limited: the caller requeues after `delay` to write it.
        return Ok((new, Some(delay)));
    }
    let api: Api<Dataset> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = serde_json::json!({ "apiVersion": "swarmseed.io/v1alpha1", "kind": "Dataset", "status": new });
    let pp = PatchParams::apply(MANAGER).force();
    kube_call(
        "write status",
        api.patch_status(&name, &pp, &Patch::Apply(&patch)),
    )
    .await?;
    ctx.memo(&key, |m| m.last_status_write = Some(Instant::now()));
    Ok((new, None))
}

/// Removes the dataset from every agent and its label from every node.
/// An agent that cannot be reached keeps the finalizer (retried), unless
/// its Pod is gone (nothing left to ask).
async fn cleanup(ds: &Dataset, ctx: &Context) -> Result<Action, Error> {
    let ns = ds.namespace().ok_or(Error::NoNamespace)?;
    let name = ds.name_any();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ctx.settings.agent_namespace);
    let pods = kube_call(
        "list agent pods",
        pods.list(&ListParams::default().labels(AGENT_SELECTOR)),
    )
    .await?;
    let dataset = pb::DatasetRef {
        namespace: ns.clone(),
        name: name.clone(),
    };
    for pod in agent_pods(&pods.items).values().filter(|p| p.ready) {
        let client = AgentClient::new(
            &pod.pod_ip,
            ctx.settings.control_port,
            ctx.token.clone(),
            ctx.settings.call_timeout,
        )?;
        client.remove(dataset.clone()).await?;
    }
    sync_labels(ctx, &node_label::key(&ns, &name), &[]).await?;
    let key = ObjectRef::from_obj(ds);
    ctx.memos
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .remove(&key);
    Ok(Action::await_change())
}
