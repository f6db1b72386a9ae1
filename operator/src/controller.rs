//! The reconciler: a kube-runtime `Controller` over `Dataset`, woken by
//! agent Pods and Nodes too. `finalizer()` is the only top-level step:
//! `apply` drives agents towards the spec, `cleanup` removes the dataset
//! from every node before the Dataset goes away.
//!
//! Each run is observe → decide → execute. [`observe`] gathers the world
//! into plain data: the spec, the source listing (once per generation),
//! the selected nodes and their agents' reports, the other agents, the
//! labelled nodes. [`decide`] is pure: the plan, which agents are sent
//! their assignment (idempotent: a node that follows it is not sent it
//! again), which are released, and, once the agents answered, the node
//! labels, the status (written only when it changed, at most once a
//! second) and the next run. [`execute`] carries that out through the
//! kube and gRPC clients. [`sync`] tells every agent process which
//! Datasets exist.

pub mod decide;
pub mod execute;
pub mod observe;
pub mod sync;

use std::collections::HashMap;
use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, ObjectReference, Pod};
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::controller::Action;
use kube::runtime::controller::Config as ControllerConfig;
use kube::runtime::finalizer::{Error as FinalizerError, Event, finalizer};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use swarmseed_proto::pb;

use self::decide::{Memo, Now, Target};
use crate::admin::Metrics;
use crate::agents::{AgentClient, AgentError, ControlToken};
use crate::events::{EventPublisher, EventType};
use crate::selector;
use crate::status::{DatasetProblem, Reason};
use swarmseed_core::label;
use swarmseed_crd::Dataset;

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

/// Annotation whose every new value makes the operator list the source
/// again (picking up a new revision without a spec change).
pub const RELIST_ANNOTATION: &str = "swarmseed.io/relist";

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
    async fn event(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: Reason,
        note: &str,
    ) {
        let reason = reason.as_str();
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

    /// Forgets what was remembered of a Dataset that is gone.
    fn forget(&self, key: &ObjectRef<Dataset>) {
        self.memos
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(key);
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
    let agents = watcher::Config::default().labels(label::AGENT_SELECTOR);
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
    let sync = tokio::spawn(sync::sync_agents(ctx.clone()));
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

/// What of a Node can change which Datasets select it: its labels (other
/// than the operator's own Dataset labels) and its taints.
fn selection_key(node: &Node) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for (k, v) in node.labels() {
        if !k.starts_with(label::KEY_PREFIX) {
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
            let action = execute::undecodable(&obj, &e, &ctx).await?;
            ctx.metrics.reconciled("ok");
            return Ok(action);
        }
    };
    let api: Api<Dataset> = Api::namespaced(ctx.client.clone(), &ns);
    let action = finalizer(&api, FINALIZER, ds, |event| async {
        match event {
            Event::Apply(ds) => apply(&ds, &ctx).await,
            Event::Cleanup(ds) => execute::cleanup(&Subject::of(&ds)?, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))?;
    ctx.metrics.reconciled("ok");
    Ok(action)
}

/// A Dataset object as the status writer, the Events and the cleanup see
/// it, whether or not its spec could be read.
pub struct Subject {
    pub target: Target,
    pub reference: ObjectReference,
    pub key: ObjectRef<Dataset>,
}

impl Subject {
    fn of(ds: &Dataset) -> Result<Self, Error> {
        let ns = ds.namespace().ok_or(Error::NoNamespace)?;
        Ok(Self {
            target: Target {
                name: ds.name_any(),
                uid: ds.uid().unwrap_or_default(),
                generation: ds.metadata.generation,
                status: ds.status.clone(),
                namespace: ns,
            },
            reference: ds.object_ref(&()),
            key: ObjectRef::from_obj(ds),
        })
    }

    fn of_raw(obj: &DynamicObject) -> Result<Self, Error> {
        let ns = obj.namespace().ok_or(Error::NoNamespace)?;
        let name = obj.name_any();
        let resource = dataset_resource();
        Ok(Self {
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
            target: Target {
                uid: obj.uid().unwrap_or_default(),
                generation: obj.metadata.generation,
                status: obj
                    .data
                    .get("status")
                    .and_then(|v| serde_json::from_value(v.clone()).ok()),
                name,
                namespace: ns,
            },
        })
    }

    fn dataset_ref(&self) -> pb::DatasetRef {
        pb::DatasetRef {
            namespace: self.target.namespace.clone(),
            name: self.target.name.clone(),
            uid: self.target.uid.clone(),
        }
    }
}

/// One run for a live Dataset: validate the spec → list the source →
/// observe the nodes and agents → decide → send and release → conclude →
/// label nodes, publish Events, write the status.
async fn apply(ds: &Dataset, ctx: &Context) -> Result<Action, Error> {
    let subject = Subject::of(ds)?;
    let spec = match ds.spec.validate() {
        Ok(s) => s,
        Err(e) => {
            let problem = DatasetProblem {
                reason: Reason::InvalidSource,
                message: e.to_string(),
            };
            let selector = selector::describe(&ds.spec);
            let pending = execute::store_problem(&subject, &selector, &problem, ctx).await?;
            return Ok(pending.map_or_else(Action::await_change, Action::requeue));
        }
    };
    let listed = match observe::list_source(
        ds,
        ctx,
        &subject.key,
        spec.chunk_size,
        spec.origin_bandwidth,
    )
    .await?
    {
        Ok(l) => l,
        Err(problem) => {
            let selector = selector::describe(&ds.spec);
            let pending = execute::store_problem(&subject, &selector, &problem, ctx).await?;
            return Ok(Action::requeue(pending.unwrap_or(decide::LIST_RETRY)));
        }
    };
    let observed = observe::observe(ds, subject.target.clone(), spec, listed, ctx).await?;
    let memo = ctx.memo(&subject.key, |m| m.clone());
    let decision = decide::decide(&observed, &memo);
    let outcomes = execute::agents(&observed, &decision, ctx).await;
    let done = decide::conclude(&observed, &memo, decision, outcomes, &Now::current());
    // Kept before the writes below, which may fail: what the agents were
    // sent stays known.
    ctx.memo(&subject.key, |m| {
        let last_status_write = m.last_status_write;
        *m = done.memo.clone();
        m.last_status_write = last_status_write;
    });
    execute::publish(ctx, &subject, &done.events).await;
    let label = label::key(&subject.target.namespace, &subject.target.name);
    execute::sync_labels(ctx, &label, &done.label, &done.unlabel).await?;
    execute::store_status(&subject, ctx, &done.status, done.write).await?;
    Ok(Action::requeue(done.requeue))
}

#[cfg(test)]
mod tests;
