//! Observation: one [`Snapshot`] of everything the invariants look at —
//! the Datasets as a user reads them, the nodes' labels, every node store
//! on disk (with a digest of each published tree), and anything new in
//! the cluster's work directory outside the node roots. No judgement here;
//! [`super::invariants`] decides.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, DynamicObject, ListParams};
use swarmseed_core::label;
use swarmseed_crd::{DatasetStatus, NodeProgress};
use swarmseed_harness::origin::tree_digest;
use swarmseed_harness::seeding::{SeedCluster, dataset_resource};

use super::world::SharedWorld;

/// Bound on each API call of an observation.
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// A Dataset as a user reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetView {
    pub ns: String,
    pub name: String,
    pub uid: String,
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    pub annotations: BTreeMap<String, String>,
    /// `None` before the operator wrote one (or if it does not parse as
    /// the CRD's status type).
    pub status: Option<DatasetStatus>,
    pub raw: serde_json::Value,
}

impl DatasetView {
    pub fn from_object(obj: &DynamicObject) -> Self {
        let raw = serde_json::to_value(obj).unwrap_or_default();
        let status = raw
            .get("status")
            .and_then(|s| serde_json::from_value::<DatasetStatus>(s.clone()).ok());
        Self {
            ns: obj.metadata.namespace.clone().unwrap_or_default(),
            name: obj.metadata.name.clone().unwrap_or_default(),
            uid: obj.metadata.uid.clone().unwrap_or_default(),
            deleting: obj.metadata.deletion_timestamp.is_some(),
            annotations: obj.metadata.annotations.clone().unwrap_or_default(),
            status,
            raw,
        }
    }

    pub fn key(&self) -> (String, String) {
        (self.ns.clone(), self.name.clone())
    }

    pub fn conditions(&self) -> &[Condition] {
        self.status.as_ref().map_or(&[], |s| &s.conditions)
    }

    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions().iter().find(|c| c.type_ == type_)
    }

    /// Whether condition `type_` has status True.
    pub fn is(&self, type_: &str) -> bool {
        self.condition(type_).is_some_and(|c| c.status == "True")
    }

    pub fn is_ready(&self) -> bool {
        self.is("Ready")
    }

    /// `Degraded` when it is True.
    pub fn degraded(&self) -> Option<&Condition> {
        self.condition("Degraded").filter(|c| c.status == "True")
    }

    pub fn node_progress(&self, node: &str) -> Option<&NodeProgress> {
        self.status
            .as_ref()?
            .node_progress
            .iter()
            .find(|p| p.node == node)
    }

    /// Whether a condition says `Terminating` and one (the same or
    /// another) names one of `nodes`: a deletion held up says by whom.
    pub fn terminating_naming(&self, nodes: &[&str]) -> bool {
        let conditions = self.conditions();
        conditions.iter().any(|c| c.reason == "Terminating")
            && conditions
                .iter()
                .any(|c| nodes.iter().any(|n| c.message.contains(n)))
    }

    /// Every condition on one line, for messages.
    pub fn conditions_text(&self) -> String {
        if self.status.is_none() {
            return "no status".into();
        }
        self.conditions()
            .iter()
            .map(|c| format!("{}={} {}: {}", c.type_, c.status, c.reason, c.message))
            .collect::<Vec<_>>()
            .join(" | ")
    }
}

/// The four areas of a node store that hold a Dataset's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Area {
    Datasets,
    Revisions,
    Staging,
    State,
}

impl Area {
    pub const ALL: [Area; 4] = [Area::Datasets, Area::Revisions, Area::Staging, Area::State];

    pub fn dir(self) -> &'static str {
        match self {
            Area::Datasets => "datasets",
            Area::Revisions => "revisions",
            Area::Staging => "staging",
            Area::State => "state",
        }
    }
}

/// `<root>/<area>/<ns>/<entry>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StoreEntry {
    pub area: Area,
    pub ns: String,
    pub entry: String,
}

impl std::fmt::Display for StoreEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.area.dir(), self.ns, self.entry)
    }
}

/// What a published path (`datasets/<ns>/<name>`) holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishedTree {
    /// Not a symlink: not something the agent publishes (left alone).
    NotALink,
    /// A symlink whose target does not exist (still so when looked at again).
    Dangling(String),
    /// A symlink to a revision directory, with the digest of its tree.
    Tree { revision: String, root: String },
    /// The tree could not be read (still so when looked at again).
    Unreadable(String),
}

/// One node's store.
#[derive(Debug, Clone, Default)]
pub struct NodeStore {
    pub node: String,
    pub entries: BTreeSet<StoreEntry>,
    /// Published paths by (ns, name).
    pub published: BTreeMap<(String, String), PublishedTree>,
}

/// Everything one observation saw.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub at: Instant,
    /// `Err` when the API could not be read this time (checks that need it
    /// are skipped for this snapshot).
    pub datasets: Result<Vec<DatasetView>, String>,
    /// The operator's labels on each node (keys with
    /// [`label::KEY_PREFIX`]).
    pub labels: Result<BTreeMap<String, BTreeSet<String>>, String>,
    pub stores: Vec<NodeStore>,
    /// Paths under the work directory, outside every node root, that were
    /// not there at the start and are not the harness's own.
    pub outside: Vec<PathBuf>,
}

impl Snapshot {
    pub fn dataset(&self, ns: &str, name: &str) -> Option<&DatasetView> {
        self.datasets
            .as_ref()
            .ok()?
            .iter()
            .find(|d| d.ns == ns && d.name == name)
    }

    pub fn store(&self, node: &str) -> Option<&NodeStore> {
        self.stores.iter().find(|s| s.node == node)
    }
}

/// The harness's own directories and the paths it wrote there (`None`:
/// being written).
pub type Sealed = BTreeMap<PathBuf, Option<BTreeSet<PathBuf>>>;

/// Digests of published revisions: a revision directory does not change
/// once published, so each is hashed once (keyed by path, inode and ctime).
type DigestCache = HashMap<(PathBuf, u64, i64), String>;

/// Takes [`Snapshot`]s of one cluster. Cheap to clone.
#[derive(Clone)]
pub struct Observer {
    client: kube::Client,
    nodes: Vec<(String, PathBuf)>,
    work_dir: PathBuf,
    /// Paths under the work directory (outside node roots) at the start.
    baseline: Arc<BTreeSet<PathBuf>>,
    digests: Arc<Mutex<DigestCache>>,
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observer")
            .field("nodes", &self.nodes)
            .field("work_dir", &self.work_dir)
            .finish_non_exhaustive()
    }
}

impl Observer {
    /// An observer of `cluster`'s nodes (with its work directory's content
    /// now as the baseline), and a [`SharedWorld`] where they are all up.
    pub fn of(cluster: &SeedCluster) -> (Self, SharedWorld) {
        let nodes: Vec<(String, PathBuf)> = cluster
            .cluster
            .nodes()
            .iter()
            .map(|n| (n.name.clone(), n.root.clone()))
            .collect();
        let world = SharedWorld::new(nodes.iter().map(|(n, _)| n.clone()));
        let observer = Self::new(
            cluster.cluster.client(),
            nodes,
            cluster.cluster.work_dir().to_path_buf(),
        );
        (observer, world)
    }

    /// `nodes`: (name, root) of every node. Records what the work directory
    /// holds now, outside the roots, as the baseline.
    pub fn new(client: kube::Client, nodes: Vec<(String, PathBuf)>, work_dir: PathBuf) -> Self {
        let roots: Vec<PathBuf> = nodes.iter().map(|(_, r)| r.clone()).collect();
        let baseline = walk_outside(&work_dir, &roots).into_iter().collect();
        Self {
            client,
            nodes,
            work_dir,
            baseline: Arc::new(baseline),
            digests: Arc::default(),
        }
    }

    /// One observation. `sealed`: the harness's own directories with the
    /// files it wrote there.
    pub async fn observe(&self, sealed: &Sealed) -> Snapshot {
        let datasets = self.datasets().await;
        let labels = self.labels().await;
        let this = self.clone();
        let sealed = sealed.clone();
        let disk = tokio::task::spawn_blocking(move || {
            let stores = this
                .nodes
                .iter()
                .map(|(node, root)| this.store(node, root))
                .collect::<Vec<_>>();
            (stores, this.outside(&sealed))
        })
        .await;
        let (stores, outside) = disk.unwrap_or_default();
        Snapshot {
            at: Instant::now(),
            datasets,
            labels,
            stores,
            outside,
        }
    }

    async fn datasets(&self) -> Result<Vec<DatasetView>, String> {
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &dataset_resource());
        match tokio::time::timeout(API_TIMEOUT, api.list(&ListParams::default())).await {
            Ok(Ok(list)) => Ok(list.items.iter().map(DatasetView::from_object).collect()),
            Ok(Err(e)) => Err(format!("listing Datasets: {e}")),
            Err(_) => Err(format!("listing Datasets took over {API_TIMEOUT:?}")),
        }
    }

    async fn labels(&self) -> Result<BTreeMap<String, BTreeSet<String>>, String> {
        let api: Api<Node> = Api::all(self.client.clone());
        let list = match tokio::time::timeout(API_TIMEOUT, api.list(&ListParams::default())).await {
            Ok(Ok(list)) => list,
            Ok(Err(e)) => return Err(format!("listing Nodes: {e}")),
            Err(_) => return Err(format!("listing Nodes took over {API_TIMEOUT:?}")),
        };
        Ok(list
            .items
            .into_iter()
            .map(|n| {
                let keys = n
                    .metadata
                    .labels
                    .unwrap_or_default()
                    .into_keys()
                    .filter(|k| k.starts_with(label::KEY_PREFIX))
                    .collect();
                (n.metadata.name.unwrap_or_default(), keys)
            })
            .collect())
    }

    fn store(&self, node: &str, root: &Path) -> NodeStore {
        let mut store = NodeStore {
            node: node.to_owned(),
            ..NodeStore::default()
        };
        for area in Area::ALL {
            for (ns, entry) in two_levels(&root.join(area.dir())) {
                store.entries.insert(StoreEntry { area, ns, entry });
            }
        }
        let published: Vec<(String, String)> = store
            .entries
            .iter()
            .filter(|e| e.area == Area::Datasets && !e.entry.starts_with('.'))
            .map(|e| (e.ns.clone(), e.entry.clone()))
            .collect();
        for (ns, name) in published {
            let link = root.join("datasets").join(&ns).join(&name);
            if let Some(tree) = self.published_tree(&link) {
                store.published.insert((ns, name), tree);
            }
        }
        store
    }

    /// What `link` holds; `None` if it went away meanwhile (a removal).
    fn published_tree(&self, link: &Path) -> Option<PublishedTree> {
        let first = self.try_published_tree(link)?;
        match first {
            // Looked at again: a swap or a removal may have raced the read.
            PublishedTree::Dangling(_) | PublishedTree::Unreadable(_) => {
                self.try_published_tree(link)
            }
            other => Some(other),
        }
    }

    fn try_published_tree(&self, link: &Path) -> Option<PublishedTree> {
        let meta = match std::fs::symlink_metadata(link) {
            Ok(m) => m,
            Err(_) => return None,
        };
        if !meta.file_type().is_symlink() {
            return Some(PublishedTree::NotALink);
        }
        let target = std::fs::read_link(link).ok()?;
        let resolved = link.parent().unwrap_or(Path::new("/")).join(&target);
        let revision = resolved
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let dir_meta = match std::fs::metadata(&resolved) {
            Ok(m) => m,
            Err(e) => {
                return Some(PublishedTree::Dangling(format!(
                    "{} -> {}: {e}",
                    link.display(),
                    target.display()
                )));
            }
        };
        let key = (resolved.clone(), dir_meta.ino(), dir_meta.ctime());
        if let Some(root) = self.cached(&key) {
            return Some(PublishedTree::Tree { revision, root });
        }
        match tree_digest(&resolved) {
            Ok(t) => {
                let root = t.root();
                self.digests
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(key, root.clone());
                Some(PublishedTree::Tree { revision, root })
            }
            Err(e) => Some(PublishedTree::Unreadable(format!(
                "{}: {e}",
                link.display()
            ))),
        }
    }

    fn cached(&self, key: &(PathBuf, u64, i64)) -> Option<String> {
        self.digests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(key)
            .cloned()
    }

    /// New paths outside the roots that are neither the harness's nor
    /// things the cluster itself makes as it runs (logs, kubeconfigs).
    fn outside(&self, sealed: &Sealed) -> Vec<PathBuf> {
        let roots: Vec<PathBuf> = self.nodes.iter().map(|(_, r)| r.clone()).collect();
        let node_dirs = self.work_dir.join("nodes");
        walk_outside(&self.work_dir, &roots)
            .into_iter()
            .filter(|p| match p.strip_prefix(&node_dirs) {
                // Next to a root, where an escape from it lands first: only
                // what the cluster itself puts there, whenever it appeared.
                Ok(rel) => !node_dir_entry(rel),
                Err(_) => !self.baseline.contains(p) && !self.is_harness_file(p, sealed),
            })
            .collect()
    }

    fn is_harness_file(&self, p: &Path, sealed: &Sealed) -> bool {
        if let Some((dir, files)) = sealed.iter().find(|(dir, _)| p.starts_with(dir)) {
            return p == dir || files.as_ref().is_none_or(|f| f.contains(p));
        }
        // Processes the harness starts later log and configure here.
        let top = p.parent() == Some(self.work_dir.as_path());
        let ext = p.extension().and_then(|e| e.to_str());
        top && matches!(ext, Some("log" | "kubeconfig"))
            || p.starts_with(self.work_dir.join("s3-origin"))
            || p.starts_with(self.work_dir.join("disks"))
    }
}

/// Whether `rel` (under `<work>/nodes/`) is something the cluster makes
/// for a node: its directory, the agent's log, its filesystem image and
/// mount point (with the filesystem's own `lost+found`). The root itself is
/// never walked.
fn node_dir_entry(rel: &Path) -> bool {
    let parts: Vec<&std::ffi::OsStr> = rel.iter().collect();
    match parts.as_slice() {
        [] | [_] => true,
        [_node, f] => ["agent.log", "disk.img", "disk"].iter().any(|a| f == a),
        [_node, disk, lost, ..] => *disk == "disk" && *lost == "lost+found",
    }
}

/// `<dir>/<a>/<b>` names, for every `a` and `b` (missing dirs: none).
fn two_levels(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for a in read_names(dir) {
        for b in read_names(&dir.join(&a)) {
            out.push((a.clone(), b));
        }
    }
    out
}

fn read_names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|it| {
            it.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Every path under `dir` except the subtrees of `roots` (not following
/// symlinks; at most 64 levels).
fn walk_outside(dir: &Path, roots: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), 0usize)];
    while let Some((d, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.filter_map(|e| e.ok()) {
            let p = e.path();
            if roots.contains(&p) {
                continue;
            }
            let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
            out.push(p.clone());
            if is_dir && depth < 64 {
                stack.push((p, depth + 1));
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_walk_skips_node_roots_and_sees_their_neighbours() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("nodes/n0/root");
        std::fs::create_dir_all(root.join("datasets/ml")).unwrap();
        std::fs::write(root.join("datasets/ml/x"), b"").unwrap();
        std::fs::write(dir.path().join("nodes/n0/escaped"), b"").unwrap();
        let seen = walk_outside(dir.path(), std::slice::from_ref(&root));
        assert!(seen.contains(&dir.path().join("nodes/n0/escaped")));
        assert!(!seen.iter().any(|p| p.starts_with(&root)), "{seen:?}");
        assert!(!node_dir_entry(Path::new("n0/escaped")));
        assert!(!node_dir_entry(Path::new("n0/disk/escaped")));
        for ok in [
            "n0",
            "n0/agent.log",
            "n0/disk",
            "n0/disk.img",
            "n0/disk/lost+found/x",
        ] {
            assert!(node_dir_entry(Path::new(ok)), "{ok}");
        }
    }

    #[test]
    fn a_status_reads_as_a_user_sees_it() {
        let obj: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "swarmseed.io/v1alpha1", "kind": "Dataset",
            "metadata": { "name": "w", "namespace": "ml", "uid": "u1",
                          "deletionTimestamp": "2024-01-01T00:00:00Z" },
            "status": {
                "conditions": [
                    { "type": "Ready", "status": "False", "reason": "Terminating", "message": "node-1 holds it",
                      "lastTransitionTime": "2024-01-01T00:00:00Z" },
                    { "type": "Degraded", "status": "True", "reason": "AgentUnreachable", "message": "m",
                      "lastTransitionTime": "2024-01-01T00:00:00Z" },
                ],
                "nodeProgress": [{ "node": "node-1", "state": "Transferring", "bytesVerified": 5 }],
            },
        }))
        .unwrap();
        let d = DatasetView::from_object(&obj);
        assert!(d.deleting && !d.is_ready());
        assert_eq!(d.degraded().unwrap().reason, "AgentUnreachable");
        assert_eq!(d.node_progress("node-1").unwrap().bytes_verified, 5);
        assert!(
            d.conditions_text()
                .contains("Ready=False Terminating: node-1 holds it")
        );
    }
}
