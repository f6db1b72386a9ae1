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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, ObjectReference, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::controller::Config as ControllerConfig;
use kube::runtime::finalizer::{Error as FinalizerError, Event, finalizer};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use swarmseed_origin::{OriginClient, OriginOptions, WeakValidators};
use swarmseed_proto::layout::default_chunk_size;
use swarmseed_proto::{ChunkLayout, pb};

use crate::admin::Metrics;
use crate::agents::{AGENT_SELECTOR, AgentClient, AgentError, AgentPod, ControlToken, agent_pods};
use crate::assignment::{self, AssignmentInput};
use crate::events::{EventPublisher, EventType};
use crate::node_label;
use crate::plan::{self, AgentInfo, Plan, PlanInput};
use crate::selector;
use crate::status::{self, DatasetProblem, NodeReport, RevisionInfo, StatusInput, reason};
use swarmseed_crd::{Dataset, DatasetStatus};

/// The finalizer that keeps a Dataset until every node dropped it.
pub const FINALIZER: &str = "swarmseed.io/cleanup";
/// Field manager of status and label writes.
pub const MANAGER: &str = "swarmseed-operator";
/// Bound on every API server call.
const KUBE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on listing a source (large buckets take a while).
const LIST_TIMEOUT: Duration = Duration::from_secs(600);
/// Requests in flight while listing a source. Listing is latency-bound:
/// an HTTP source takes one HEAD per file (for its size and ETag).
const LIST_CONCURRENCY: usize = 64;

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
    #[error("the Node and agent Pod caches are not filled yet")]
    NotStarted,
    #[error("deletion waits for {0} node(s) that may hold data")]
    DeletionBlocked(usize),
}

impl Error {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube",
            Self::KubeTimeout(_) => "kube_timeout",
            Self::Agent(e) => e.label(),
            // The cause, not the wrapper every reconcile error comes in.
            Self::Finalizer(e) => match &**e {
                FinalizerError::ApplyFailed(inner) | FinalizerError::CleanupFailed(inner) => {
                    inner.label()
                }
                FinalizerError::AddFinalizer(_) | FinalizerError::RemoveFinalizer(_) => {
                    "finalizer_patch"
                }
                _ => "finalizer",
            },
            Self::NoNamespace => "no_namespace",
            Self::NotStarted => "not_started",
            Self::DeletionBlocked(_) => "deletion_blocked",
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
    /// Nodes sent an assignment and not since told to remove it.
    assigned: BTreeSet<String>,
    /// What each node was last sent successfully (see [`assignment_key`]).
    sent: HashMap<String, [u8; 32]>,
    /// Every agent off the selected nodes was told to drop the dataset
    /// once since this process started (what it sent before a restart is
    /// unknown).
    swept: bool,
    /// Nodes that failed or refused the listed revision: never made its
    /// fetchers again (a node out of disk space would otherwise be given
    /// the role back at every retry, and the plan would never settle).
    failed_fetchers: BTreeSet<String>,
    /// The revision `failed_fetchers` is about.
    failed_revision: String,
}

/// Annotation whose every new value makes the operator list the source
/// again (picking up a new revision without a spec change).
pub const RELIST_ANNOTATION: &str = "swarmseed.io/relist";

#[derive(Clone)]
struct Listed {
    /// The generation and relist annotation it was listed for.
    generation: Option<i64>,
    relist: Option<String>,
    layout: Arc<ChunkLayout>,
    origin: pb::Origin,
    /// Files only a weak validator pins at the origin.
    weak_validators: WeakValidators,
}

/// Watch-fed caches of the Nodes and agent Pods every reconcile reads
/// (`managedFields` dropped): one copy in memory, no LIST per reconcile.
struct Caches {
    nodes: Store<Node>,
    pods: Store<Pod>,
}

/// A snapshot of the caches: every Node, every agent Pod.
type Cached = (Vec<Arc<Node>>, Vec<Arc<Pod>>);

pub struct Context {
    pub client: Client,
    pub settings: Settings,
    pub token: ControlToken,
    /// Key the per-dataset peer tokens are derived from.
    pub peer_secret: Vec<u8>,
    memos: Mutex<HashMap<ObjectRef<Dataset>, Memo>>,
    /// Set by [`run`] before the first reconcile.
    caches: OnceLock<Caches>,
    /// One control connection per agent address, reused across runs.
    clients: Mutex<HashMap<String, AgentClient>>,
    events: EventPublisher,
    metrics: Metrics,
}

impl Context {
    pub fn new(
        client: Client,
        settings: Settings,
        token: ControlToken,
        peer_secret: Vec<u8>,
    ) -> Self {
        Self {
            events: EventPublisher::new(client.clone(), MANAGER, std::env::var("POD_NAME").ok()),
            client,
            settings,
            token,
            peer_secret,
            memos: Mutex::new(HashMap::new()),
            caches: OnceLock::new(),
            clients: Mutex::new(HashMap::new()),
            metrics: Metrics::default(),
        }
    }

    /// Counts reconciles, status writes and agent calls in `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Counts one agent call by its outcome.
    fn count_call<T>(&self, method: &'static str, r: &Result<T, AgentError>) {
        let result = match r {
            Ok(_) => "ok",
            Err(e) => e.label(),
        };
        self.metrics.agent_call(method, result);
    }

    /// The control client of the agent at `pod_ip` (cached).
    fn agent(&self, pod_ip: &str) -> Result<AgentClient, AgentError> {
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = clients.get(pod_ip) {
            return Ok(c.clone());
        }
        let c = AgentClient::new(
            pod_ip,
            self.settings.control_port,
            self.token.clone(),
            self.settings.call_timeout,
        )?;
        clients.insert(pod_ip.to_owned(), c.clone());
        Ok(c)
    }

    /// Drops the cached clients of agents that are no longer among the
    /// agent Pods (`live` pod IPs), so churn does not grow the cache.
    fn forget_agents_except<'a>(&self, live: impl IntoIterator<Item = &'a str>) {
        let live: HashSet<&str> = live.into_iter().collect();
        self.clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|ip, _| live.contains(ip.as_str()));
    }

    /// Publishes an Event on a Dataset; failures are logged, never fatal.
    async fn event(&self, regarding: &ObjectReference, type_: EventType, reason: &str, note: &str) {
        if let Err(e) = self.events.publish(regarding, type_, reason, note).await {
            tracing::warn!(error = %e, reason, "publishing an event failed");
        }
    }

    /// Every Node and every agent Pod, as last seen by the watches.
    fn cached(&self) -> Result<Cached, Error> {
        let c = self.caches.get().ok_or(Error::NotStarted)?;
        Ok((c.nodes.state(), c.pods.state()))
    }

    fn memo<R>(&self, key: &ObjectRef<Dataset>, f: impl FnOnce(&mut Memo) -> R) -> R {
        let mut memos = self
            .memos
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(memos.entry(key.clone()).or_default())
    }
}

/// Agent calls one reconcile keeps in flight: its memory is bounded by
/// this, not by the number of nodes.
const AGENT_CALLS_IN_FLIGHT: usize = 64;

/// Runs `calls` with at most [`AGENT_CALLS_IN_FLIGHT`] at a time; the
/// results in any order.
fn in_flight<F: Future>(
    calls: impl IntoIterator<Item = F>,
) -> impl Future<Output = Vec<F::Output>> {
    // Collected first, so that the returned future holds only the calls
    // (not the iterator and its closure, which trips up `Send` inference).
    let calls: Vec<F> = calls.into_iter().collect();
    futures::stream::iter(calls)
        .buffer_unordered(AGENT_CALLS_IN_FLIGHT)
        .collect()
}

/// Node label patches one reconcile keeps in flight.
const LABEL_WRITES_IN_FLIGHT: usize = 16;

/// Reconciles at most this many Datasets at once (each holds a view of
/// its selected nodes and up to [`AGENT_CALLS_IN_FLIGHT`] calls). A
/// Dataset that is seeding is reconciled every 2 s, so beyond this many
/// seeding at once a new Dataset waits for a slot.
const CONCURRENT_RECONCILES: u16 = 32;

/// Fills a cache of `api`'s objects (those `config` selects) until aborted,
/// and wakes the controller through `wake` after each change for which
/// `matters` says yes (and after every relist). A wake-up is sent only
/// once the cache holds the change, so the reconcile it causes sees it; a
/// second watch of the same objects for the controller would race this
/// cache, and a reconcile could read the state from before the change.
fn cache<K>(
    api: Api<K>,
    config: watcher::Config,
    wake: futures::channel::mpsc::Sender<()>,
    mut matters: impl FnMut(&K) -> bool + Send + 'static,
) -> (Store<K>, tokio::task::JoinHandle<()>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let feed = watcher(api, config)
        .default_backoff()
        .modify(|o: &mut K| o.managed_fields_mut().clear())
        .reflect(writer)
        .for_each(move |event| {
            let changed = match &event {
                Ok(watcher::Event::Apply(o)) => matters(o),
                Ok(watcher::Event::Delete(_) | watcher::Event::InitDone) => true,
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) | Err(_) => false,
            };
            if changed {
                // A full channel already holds a wake-up that is yet to be
                // taken, and the reconciles it causes will see this change.
                let _ = wake.clone().try_send(());
            }
            futures::future::ready(())
        });
    (reader, tokio::spawn(feed))
}

/// The Dataset API as dynamic objects. The controller's watch decodes no
/// Dataset; [`reconcile`] decodes each on its own. One that the API server
/// accepted but the Rust types cannot hold (once: `origin.bandwidth:
/// 3000000000` in a 32-bit field) is then reported on that object, where
/// with a typed watch it failed the list of every Dataset and a restarted
/// operator reconciled none.
fn dataset_resource() -> ApiResource {
    ApiResource::erase::<Dataset>(&())
}

/// Runs the controller until SIGTERM/ctrl-c.
pub async fn run(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let resource = dataset_resource();
    let datasets: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ctx.settings.agent_namespace);
    let nodes: Api<Node> = Api::all(client.clone());
    let agents = watcher::Config::default().labels(AGENT_SELECTOR);
    // Any agent Pod change may change any Dataset's node set; so may a Node
    // change, except the operator's own Dataset labels (which would
    // otherwise requeue every Dataset once per node labelled).
    let (wake, woken) = futures::channel::mpsc::channel(1);
    let mut seen = HashMap::new();
    let (node_cache, node_feed) = cache(
        nodes,
        watcher::Config::default(),
        wake.clone(),
        move |node: &Node| {
            let key = selection_key(node);
            seen.insert(node.name_any(), key) != Some(key)
        },
    );
    let (pod_cache, pod_feed) = cache(pods, agents, wake, |_: &Pod| true);
    for (what, ready) in [
        ("nodes", node_cache.wait_until_ready().await),
        ("agent pods", pod_cache.wait_until_ready().await),
    ] {
        if ready.is_err() {
            tracing::error!(what, "the cache's watch ended before it was filled");
            return;
        }
    }
    if ctx
        .caches
        .set(Caches {
            nodes: node_cache,
            pods: pod_cache,
        })
        .is_err()
    {
        tracing::warn!("the controller was started twice on one context");
    }
    let controller = Controller::new_with(datasets, watcher::Config::default(), resource)
        .with_config(ControllerConfig::default().concurrency(CONCURRENT_RECONCILES))
        .reconcile_all_on(woken)
        .shutdown_on_signal();
    let sync = tokio::spawn(sync_agents(ctx.clone()));
    controller
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::warn!(error = %e, "reconcile failed");
            }
        })
        .await;
    sync.abort();
    node_feed.abort();
    pod_feed.abort();
}

/// How often agents are checked for one not told yet which Datasets exist.
const SYNC_INTERVAL: Duration = Duration::from_secs(2);

/// Tells every agent process, once, which Datasets exist (`SyncDatasets`):
/// each agent found ready for the first time by this operator, and each
/// that restarted since. An agent drops what it resumed from its disk of
/// Datasets deleted while it was away (their finalizer could not wait for
/// an agent that was not running), so a deleted Dataset never comes back.
/// The Datasets are listed (metadata only) when an agent is due: a fresh
/// list, never a cache that might not hold one yet.
async fn sync_agents(ctx: Arc<Context>) {
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

/// What of a Node can change which Datasets select it: its labels (other
/// than the operator's own Dataset labels) and its taints.
fn selection_key(node: &Node) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for (k, v) in node.labels() {
        if !k.starts_with(node_label::KEY_PREFIX) {
            (k, v).hash(&mut h);
        }
    }
    if let Some(taints) = node.spec.as_ref().and_then(|s| s.taints.as_ref()) {
        for t in taints {
            (&t.key, &t.value, &t.effect).hash(&mut h);
        }
    }
    h.finish()
}

fn error_policy(ds: Arc<DynamicObject>, e: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(dataset = %ds.name_any(), error = %e, label = e.label(), "reconcile error");
    ctx.metrics.reconciled("error");
    ctx.metrics.reconcile_error(e.label());
    Action::requeue(Duration::from_secs(5))
}

/// Why a Dataset could not be read: the field and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(String);

/// The Dataset in `obj`, or why it cannot be read (naming the field). A
/// status that cannot be read (one written by another version of the
/// operator, say) is dropped, to be written anew; only a spec or metadata
/// that cannot be read makes the Dataset unusable.
pub fn decode(obj: &DynamicObject) -> Result<Dataset, DecodeError> {
    let mut value = serde_json::to_value(obj).map_err(|e| DecodeError(e.to_string()))?;
    let error = match serde_path_to_error::deserialize(&value) {
        Ok(ds) => return Ok(ds),
        Err(e) => {
            let path = e.path().to_string();
            if path.is_empty() || path == "." {
                DecodeError(e.into_inner().to_string())
            } else {
                DecodeError(format!("{path}: {}", e.into_inner()))
            }
        }
    };
    if let Some(o) = value.as_object_mut()
        && o.remove("status").is_some()
        && let Ok(ds) = serde_json::from_value::<Dataset>(value)
    {
        tracing::info!(dataset = %obj.name_any(), %error, "the stored status cannot be read: it is written anew");
        return Ok(ds);
    }
    Err(error)
}

#[tracing::instrument(skip_all, fields(dataset = %obj.name_any(), namespace = obj.namespace().unwrap_or_default()))]
async fn reconcile(obj: Arc<DynamicObject>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = obj.namespace().ok_or(Error::NoNamespace)?;
    let ds = match decode(&obj) {
        Ok(ds) => Arc::new(ds),
        Err(e) => {
            let action = undecodable(&obj, &e, &ctx).await?;
            ctx.metrics.reconciled("ok");
            return Ok(action);
        }
    };
    let api: Api<Dataset> = Api::namespaced(ctx.client.clone(), &ns);
    let action = finalizer(&api, FINALIZER, ds, |event| async {
        match event {
            Event::Apply(ds) => apply(&ds, &ctx).await,
            Event::Cleanup(ds) => cleanup(&Subject::of(&ds)?, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))?;
    ctx.metrics.reconciled("ok");
    Ok(action)
}

/// A Dataset object as the status writer, the Events and the cleanup see
/// it, whether or not its spec could be read.
struct Subject {
    ns: String,
    name: String,
    uid: String,
    generation: Option<i64>,
    /// The stored status (`None` also when it cannot be read: it is then
    /// written anew).
    status: Option<DatasetStatus>,
    reference: ObjectReference,
    key: ObjectRef<Dataset>,
}

impl Subject {
    fn of(ds: &Dataset) -> Result<Self, Error> {
        let ns = ds.namespace().ok_or(Error::NoNamespace)?;
        Ok(Self {
            name: ds.name_any(),
            uid: ds.uid().unwrap_or_default(),
            generation: ds.metadata.generation,
            status: ds.status.clone(),
            reference: ds.object_ref(&()),
            key: ObjectRef::from_obj(ds),
            ns,
        })
    }

    fn of_raw(obj: &DynamicObject) -> Result<Self, Error> {
        let ns = obj.namespace().ok_or(Error::NoNamespace)?;
        let name = obj.name_any();
        let resource = dataset_resource();
        Ok(Self {
            uid: obj.uid().unwrap_or_default(),
            generation: obj.metadata.generation,
            status: obj
                .data
                .get("status")
                .and_then(|v| serde_json::from_value(v.clone()).ok()),
            reference: ObjectReference {
                api_version: Some(resource.api_version),
                kind: Some(resource.kind),
                name: Some(name.clone()),
                namespace: Some(ns.clone()),
                uid: obj.uid(),
                resource_version: obj.resource_version(),
                ..Default::default()
            },
            key: ObjectRef::new(&name).within(&ns),
            name,
            ns,
        })
    }

    fn dataset_ref(&self) -> pb::DatasetRef {
        pb::DatasetRef {
            namespace: self.ns.clone(),
            name: self.name.clone(),
            uid: self.uid.clone(),
        }
    }
}

/// A Dataset the API server accepted and the operator cannot read: its
/// status says why (`InvalidSpec`, naming the field) and nothing else is
/// done with it, while every other Dataset is reconciled as usual. One
/// being deleted is cleaned up like any other.
async fn undecodable(
    obj: &DynamicObject,
    error: &DecodeError,
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
    let problem = DatasetProblem {
        reason: reason::INVALID_SPEC,
        message: format!("the operator cannot read this Dataset: {error}"),
    };
    let (_, pending) =
        write_status(&subject, "", ctx, &BTreeMap::new(), None, Some(&problem)).await?;
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

/// One selected node with its agent (if any) and what it reported.
struct NodeView {
    agent: Option<(AgentClient, AgentInfo)>,
    report: NodeReport,
}

async fn apply(ds: &Dataset, ctx: &Context) -> Result<Action, Error> {
    let subject = Subject::of(ds)?;
    let ns = subject.ns.clone();
    let name = subject.name.clone();
    let key = subject.key.clone();
    let selector = selector::describe(&ds.spec);

    let spec = match ds.spec.validate() {
        Ok(s) => s,
        Err(e) => {
            let problem = DatasetProblem {
                reason: reason::INVALID_SOURCE,
                message: e.to_string(),
            };
            let (_, pending) = write_status(
                &subject,
                &selector,
                ctx,
                &BTreeMap::new(),
                None,
                Some(&problem),
            )
            .await?;
            return Ok(pending.map_or_else(Action::await_change, Action::requeue));
        }
    };

    let listed = match list_source(ds, ctx, &key, spec.chunk_size, spec.origin_bandwidth).await? {
        Ok(l) => l,
        Err(problem) => {
            let (_, pending) = write_status(
                &subject,
                &selector,
                ctx,
                &BTreeMap::new(),
                None,
                Some(&problem),
            )
            .await?;
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
        weak_validators: listed.weak_validators.clone(),
        digest_pinned: spec.pinned_digest.is_some(),
    };

    let (mut views, others) = discover(ds, ctx, &ns, &name).await?;
    let agents: Vec<AgentInfo> = views
        .values()
        .filter_map(|v| v.agent.as_ref().map(|a| a.1.clone()))
        .collect();
    let previous = ctx.memo(&key, |m| m.plan.clone()).or_else(|| {
        // After a restart: continue the plan the agents follow.
        plan::from_agents(
            &revision,
            layout.chunk_count(),
            views.values().filter_map(|v| match &v.report {
                NodeReport::Progress(Some(p)) => Some(&**p),
                _ => None,
            }),
        )
    });
    // Nodes that failed or refused this revision read nothing from the
    // origin for it: remembered, so that a retry that briefly looks healthy
    // does not give the role back.
    let failed_now = views.iter().filter_map(|(node, v)| match &v.report {
        NodeReport::Refused { .. } => Some(node.clone()),
        NodeReport::Progress(Some(p))
            if p.revision == revision && p.state() == pb::DatasetState::Failed =>
        {
            Some(node.clone())
        }
        _ => None,
    });
    let failed_now: Vec<String> = failed_now.collect();
    let no_fetch = ctx.memo(&key, |m| {
        if m.failed_revision != revision {
            m.failed_revision.clone_from(&revision);
            m.failed_fetchers.clear();
        }
        m.failed_fetchers.extend(failed_now);
        m.failed_fetchers.clone()
    });
    let plan = plan::plan(&PlanInput {
        layout,
        agents: &agents,
        no_fetch: &no_fetch,
        previous: previous.as_ref(),
        max_fetchers: spec.max_fetchers,
        max_peers: ctx.settings.max_peers,
    });
    if let Ok(plan) = &plan {
        let token = assignment::peer_token(&ctx.peer_secret, &ns, &name, &revision);
        let input = AssignmentInput {
            namespace: &ns,
            name: &name,
            uid: &subject.uid,
            layout,
            origin: &listed.origin,
            spec: &spec,
            plan,
            peer_token: &token,
        };
        let key_now = assignment_key(ds, &revision, plan.generation, &listed.origin);
        let sent = ctx.memo(&key, |m| m.sent.clone());
        let sends = views.iter().filter_map(|(node, v)| {
            let (client, info) = v.agent.as_ref()?;
            // The agent follows what it was sent (it reports the same
            // revision and plan): sending it again would move the whole
            // listing over the wire for nothing, every run, to every node.
            // That holds for a node that failed this very assignment too:
            // to an agent, a repeat of a failed assignment means "start
            // over" (a digest mismatch would fetch everything again), so
            // it is retried only once something changed: the spec, the
            // origin credentials, the plan, or this process (a restart
            // forgets what was sent).
            let follows = matches!(&v.report, NodeReport::Progress(Some(p))
                if p.revision == revision && p.plan_generation == plan.generation);
            if !info.ready || (follows && sent.get(node) == Some(&key_now)) {
                return None;
            }
            let a = assignment::assignment(&input, node);
            let client = client.clone();
            Some(async move {
                let r = client.apply(a).await;
                ctx.count_call("apply", &r);
                (node.clone(), r)
            })
        });
        let results = in_flight(sends).await;
        ctx.memo(&key, |m| {
            m.plan = Some(plan.clone());
            m.assigned
                .extend(results.iter().filter(|r| r.1.is_ok()).map(|r| r.0.clone()));
            for (node, r) in &results {
                match r {
                    Ok(_) => m.sent.insert(node.clone(), key_now),
                    Err(_) => m.sent.remove(node),
                };
            }
        });
        for (node, result) in results {
            let Some(v) = views.get_mut(&node) else {
                continue;
            };
            v.report = match result {
                Ok(r) => NodeReport::Progress(r.progress.map(Box::new)),
                Err(e) => match e.refusal() {
                    Some(reason) => NodeReport::Refused {
                        reason: reason.to_owned(),
                        message: e.to_string(),
                    },
                    None => NodeReport::Unreachable(e.to_string()),
                },
            };
        }
    }

    let label = node_label::key(&ns, &name);
    let labelled = labelled_nodes(ctx, &label)?;
    release_deselected(ds, ctx, &key, &others, &labelled).await;

    let reports: BTreeMap<String, NodeReport> =
        views.into_iter().map(|(n, v)| (n, v.report)).collect();
    let ready_nodes: Vec<&String> = reports
        .iter()
        .filter(|(_, r)| {
            matches!(r, NodeReport::Progress(Some(p))
                if p.state() == pb::DatasetState::Ready && p.published_revision == revision)
        })
        .map(|(n, _)| n)
        .collect();
    sync_labels(ctx, &label, &labelled, &ready_nodes).await?;
    let (status, pending) =
        write_status(&subject, &selector, ctx, &reports, Some(&info), None).await?;
    let done = status.nodes.desired > 0 && status.nodes.ready == status.nodes.desired;
    let next = if done {
        Duration::from_secs(60)
    } else {
        Duration::from_secs(2)
    };
    Ok(Action::requeue(pending.map_or(next, |p| p.min(next))))
}

/// Identifies the content of the assignments of one reconcile: the spec
/// (by generation), the listed revision, the plan (by generation: peers and
/// fetchers) and the origin access (credentials from a Secret can change
/// without the spec).
fn assignment_key(
    ds: &Dataset,
    revision: &str,
    plan_generation: u64,
    origin: &pb::Origin,
) -> [u8; 32] {
    use prost::Message;
    let mut h = blake3::Hasher::new();
    h.update(&ds.metadata.generation.unwrap_or(0).to_le_bytes());
    h.update(revision.as_bytes());
    h.update(&plan_generation.to_le_bytes());
    h.update(&origin.encode_to_vec());
    *h.finalize().as_bytes()
}

/// Tells the agents of nodes the Dataset no longer selects to drop it: the
/// nodes it was sent to, the nodes still labelled, and once after a
/// restart every other agent. Unreachable agents are retried next run.
async fn release_deselected(
    ds: &Dataset,
    ctx: &Context,
    key: &ObjectRef<Dataset>,
    others: &[AgentPod],
    labelled: &[String],
) {
    let Some(ns) = ds.namespace() else { return };
    let (assigned, swept) = ctx.memo(key, |m| (m.assigned.clone(), m.swept));
    let dataset = pb::DatasetRef {
        namespace: ns,
        name: ds.name_any(),
        uid: String::new(),
    };
    let targets = others.iter().filter(|p| {
        p.ready && (!swept || assigned.contains(&p.node_name) || labelled.contains(&p.node_name))
    });
    let calls = targets.map(|pod| {
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
            (pod.node_name.clone(), result)
        }
    });
    let results = in_flight(calls).await;
    let all_ok = results.iter().all(|r| r.1.is_ok());
    for (node, result) in &results {
        match result {
            Ok(true) => {
                ctx.event(
                    &ds.object_ref(&()),
                    EventType::Normal,
                    "Removed",
                    &format!("node {node} no longer matches: its copy was removed"),
                )
                .await;
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(node, error = %e, "removing the dataset from a deselected node")
            }
        }
    }
    ctx.memo(key, |m| {
        for (node, result) in &results {
            if result.is_ok() {
                m.assigned.remove(node);
                m.sent.remove(node);
            }
        }
        m.swept |= all_ok;
    });
}

/// Lists the source once per generation and value of [`RELIST_ANNOTATION`].
/// The outer error is the API server's; the inner one is the Dataset's problem.
async fn list_source(
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
        concurrency: LIST_CONCURRENCY,
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
    let weak_validators = listing.weak_validators.clone();
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
            reason::WEAK_VALIDATORS,
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
        "SourceListed",
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
) -> Result<(BTreeMap<String, NodeView>, Vec<AgentPod>), Error> {
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
            let client = match ctx.agent(&pod.pod_ip) {
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
    let views = in_flight(asks).await.into_iter().collect();
    Ok((views, by_node.into_values().collect()))
}

/// The nodes carrying `label`.
fn labelled_nodes(ctx: &Context, label: &str) -> Result<Vec<String>, Error> {
    let (nodes, _) = ctx.cached()?;
    Ok(nodes
        .iter()
        .filter(|n| n.labels().contains_key(label))
        .map(|n| n.name_any())
        .collect())
}

/// Sets `label=ready` on `ready` nodes and removes it from the other
/// nodes in `has` (the nodes carrying it now).
async fn sync_labels(
    ctx: &Context,
    label: &str,
    has: &[String],
    ready: &[&String],
) -> Result<(), Error> {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    // Owned data only: the futures go into a stream polled elsewhere.
    let changes: Vec<(String, bool)> = ready
        .iter()
        .filter(|n| !has.contains(n))
        .map(|n| ((*n).clone(), true))
        .chain(
            has.iter()
                .filter(|n| !ready.contains(n))
                .map(|n| (n.clone(), false)),
        )
        .collect();
    let patches = changes.into_iter().map(|(node, add)| {
        let nodes = nodes.clone();
        let value = add.then_some(node_label::READY_VALUE);
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

/// Computes the status and writes it when it changed, at most once per
/// `MIN_WRITE_INTERVAL`. The `Duration` says when a rate-limited write is
/// due (the caller requeues then).
async fn write_status(
    subject: &Subject,
    selector: &str,
    ctx: &Context,
    reports: &BTreeMap<String, NodeReport>,
    revision: Option<&RevisionInfo>,
    problem: Option<&DatasetProblem>,
) -> Result<(DatasetStatus, Option<Duration>), Error> {
    let new = status::compute(&StatusInput {
        namespace: &subject.ns,
        name: &subject.name,
        selector,
        generation: subject.generation,
        nodes: reports,
        revision,
        problem,
        previous: subject.status.as_ref(),
        now: Time(Timestamp::now()),
    });
    let pending = store_status(subject, ctx, &new).await?;
    Ok((new, pending))
}

/// Writes `new` as the status of `subject` unless that is what it holds,
/// at most once per `MIN_WRITE_INTERVAL` (`Some(delay)`: rate limited, due
/// after `delay`), and publishes the Events the change deserves.
async fn store_status(
    subject: &Subject,
    ctx: &Context,
    new: &DatasetStatus,
) -> Result<Option<Duration>, Error> {
    if !status::needs_write(subject.status.as_ref(), new) {
        return Ok(None);
    }
    let last = ctx.memo(&subject.key, |m| m.last_status_write);
    let delay = status::write_delay(last, Instant::now());
    if !delay.is_zero() {
        return Ok(Some(delay));
    }
    // Dynamic: the response is the whole object, which need not decode.
    let api: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), &subject.ns, &dataset_resource());
    let patch = serde_json::json!({ "apiVersion": "swarmseed.io/v1alpha1", "kind": "Dataset", "status": new });
    let pp = PatchParams::apply(MANAGER).force();
    kube_call(
        "write status",
        api.patch_status(&subject.name, &pp, &Patch::Apply(&patch)),
    )
    .await?;
    ctx.memo(&subject.key, |m| m.last_status_write = Some(Instant::now()));
    ctx.metrics.status_written();
    for (warning, reason, note) in status::milestones(subject.status.as_ref(), new) {
        let type_ = if warning {
            EventType::Warning
        } else {
            EventType::Normal
        };
        ctx.event(&subject.reference, type_, &reason, &note).await;
    }
    Ok(None)
}

/// Removes the dataset from every agent and its label from every node,
/// before the Dataset goes.
///
/// Every agent that may hold data is asked, Ready or not: an agent that is
/// up but not Ready still holds (and resumes) what it was given. The
/// deletion waits for each agent Pod that is running and cannot be
/// reached (a node cut off from the network), and the status says so,
/// naming the nodes, until it answers or its Pod is gone. An agent that is
/// not running is not waited for: when it starts, it drops what it holds
/// of Datasets that no longer exist ([`sync_agents`]).
async fn cleanup(subject: &Subject, ctx: &Context) -> Result<Action, Error> {
    let (_, pods) = ctx.cached()?;
    let agents = agent_pods(pods.iter().map(|p| &**p));
    let removals = agents.into_values().map(|pod| {
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
                r.map_err(|e| e.to_string())
            };
            (pod, result)
        }
    });
    let mut blocked = BTreeMap::new();
    for (pod, result) in in_flight(removals).await {
        match result {
            Ok(_) => {}
            Err(why) if pod.running => {
                blocked.insert(pod.node_name.clone(), why);
            }
            Err(why) => {
                tracing::info!(node = pod.node_name, %why,
                    "not waiting for an agent that is not running: it drops the dataset when it starts");
            }
        }
    }
    let label = node_label::key(&subject.ns, &subject.name);
    let labelled = labelled_nodes(ctx, &label)?;
    sync_labels(ctx, &label, &labelled, &[]).await?;
    if !blocked.is_empty() {
        let new = status::terminating(
            subject.status.as_ref(),
            subject.generation,
            &blocked,
            Time(Timestamp::now()),
        );
        store_status(subject, ctx, &new).await?;
        return Err(Error::DeletionBlocked(blocked.len()));
    }
    ctx.memos
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .remove(&subject.key);
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{NodeSpec, Taint};

    use super::*;

    fn node(labels: &[(&str, &str)], taints: &[&str]) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some("gpu-1".into());
        n.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
        n.spec = Some(NodeSpec {
            taints: Some(
                taints
                    .iter()
                    .map(|k| Taint {
                        key: (*k).to_owned(),
                        effect: "NoSchedule".into(),
                        ..Taint::default()
                    })
                    .collect(),
            ),
            ..NodeSpec::default()
        });
        n
    }

    /// The controller is woken only once the cache holds the change: a
    /// reconcile must never see the node as it was before.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wake_up_comes_after_the_cache_holds_the_change() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let server = kube_standin::ApiServer::start("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let client = server.client().await.unwrap();
        let nodes: Api<Node> = Api::all(client);
        nodes
            .create(&Default::default(), &node(&[("step", "0")], &[]))
            .await
            .unwrap();
        let (wake, mut woken) = futures::channel::mpsc::channel(1);
        let (store, feed) = cache(nodes.clone(), watcher::Config::default(), wake, |_| true);
        store.wait_until_ready().await.unwrap();
        let step = |store: &Store<Node>| {
            store
                .state()
                .first()
                .and_then(|n| n.labels().get("step").cloned())
        };
        assert_eq!(step(&store).as_deref(), Some("0"));
        woken.next().await.unwrap(); // the first list
        for i in 1..=20 {
            let patch = serde_json::json!({ "metadata": { "labels": { "step": i.to_string() } } });
            nodes
                .patch("gpu-1", &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .unwrap();
            tokio::time::timeout(Duration::from_secs(10), woken.next())
                .await
                .expect("a wake-up for the change")
                .unwrap();
            assert_eq!(
                step(&store),
                Some(i.to_string()),
                "woken before the cache held step {i}"
            );
        }
        feed.abort();
    }

    #[test]
    fn only_node_changes_that_can_change_a_selection_requeue_datasets() {
        let base = selection_key(&node(&[("gpu", "a100")], &[]));
        let own = node_label::key("ml", "llama");
        assert_eq!(
            selection_key(&node(&[("gpu", "a100"), (own.as_str(), "ready")], &[])),
            base,
            "the operator's own Dataset label"
        );
        assert_ne!(selection_key(&node(&[("gpu", "h100")], &[])), base);
        assert_ne!(selection_key(&node(&[], &[])), base);
        assert_ne!(
            selection_key(&node(&[("gpu", "a100")], &["nvidia.com/gpu"])),
            base
        );
    }
}
