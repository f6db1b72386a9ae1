//! The agent: every dataset this node holds, and the operations the
//! operator drives over the control API. Each operation is idempotent.

use crate::lock;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use swarmseed_origin::OriginError;
use swarmseed_proto::pb::{self, DatasetState};
use swarmseed_proto::{ChunkLayout, LayoutError, Reason, RevisionId};
use thiserror::Error;
use tracing::{info, warn};

use crate::attest::Identity;
use crate::metrics::Metrics;
use crate::peer_server::RevisionLookup;
use crate::served::ServedRevision;
use crate::store::{DatasetKey, NodeStore, Reuse, StoreError};
use crate::transfer::{Transfer, TransferConfig};

#[derive(Debug, Error)]
pub enum ApplyError {
    #[error("invalid assignment: {0}")]
    Invalid(String),
    #[error("invalid listing: {0}")]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Origin(#[from] OriginError),
}

impl ApplyError {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "invalid",
            Self::Layout(_) => "layout",
            Self::Store(e) => e.label(),
            Self::Origin(e) => e.label(),
        }
    }

    /// The condition reason the operator shows for a refused assignment.
    pub fn reason(&self) -> Reason {
        match self {
            Self::Invalid(_) => Reason::InvalidAssignment,
            Self::Layout(_) => Reason::InvalidSource,
            Self::Store(e) => e.reason(),
            Self::Origin(e) => e.reason(),
        }
    }
}

/// A refused assignment: its gRPC code, and its condition reason in the
/// status details (see [`swarmseed_proto::refusal`]).
impl From<ApplyError> for tonic::Status {
    fn from(e: ApplyError) -> Self {
        use tonic::Code;
        let code = match &e {
            ApplyError::Invalid(_) | ApplyError::Layout(_) => Code::InvalidArgument,
            ApplyError::Store(StoreError::UnsafePath { .. } | StoreError::InvalidName(_)) => {
                Code::InvalidArgument
            }
            ApplyError::Store(e) if e.is_out_of_space() => Code::ResourceExhausted,
            ApplyError::Store(StoreError::Occupied { .. }) => Code::FailedPrecondition,
            ApplyError::Store(
                StoreError::Io { .. }
                | StoreError::Write { .. }
                | StoreError::InsufficientStorage { .. },
            ) => Code::Internal,
            ApplyError::Origin(_) => Code::InvalidArgument,
        };
        swarmseed_proto::refusal(code, e.reason(), e.to_string())
    }
}

struct Slot {
    assignment: pb::Assignment,
    current: Arc<Transfer>,
    /// The revision being replaced, still served to peers until the new one
    /// is published.
    previous: Option<Arc<Transfer>>,
}

pub struct Agent {
    store: Arc<NodeStore>,
    identity: Arc<Identity>,
    metrics: Arc<Metrics>,
    cfg: Arc<TransferConfig>,
    peer_address: String,
    datasets: Mutex<HashMap<DatasetKey, Slot>>,
    /// Datasets found on the disk at start-up and not assigned since, with
    /// the uid of their saved assignment (empty when none was saved): the
    /// ones [`Agent::sync`] may find deleted.
    resumed: Mutex<HashMap<DatasetKey, String>>,
    ops: tokio::sync::Mutex<()>,
    ready: AtomicBool,
}

impl Agent {
    pub fn new(
        store: Arc<NodeStore>,
        metrics: Arc<Metrics>,
        cfg: TransferConfig,
        peer_address: String,
    ) -> std::io::Result<Arc<Self>> {
        let identity = Arc::new(Identity::load_or_create(&store.identity_key_path())?);
        Ok(Arc::new(Self {
            store,
            identity,
            metrics,
            cfg: Arc::new(cfg),
            peer_address,
            datasets: Mutex::new(HashMap::new()),
            resumed: Mutex::new(HashMap::new()),
            ops: tokio::sync::Mutex::new(()),
            ready: AtomicBool::new(false),
        }))
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.identity.public_key()
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Resumes every dataset persisted in the store (after a restart), and
    /// remembers everything found on the disk until the operator confirms
    /// it (an assignment) or finds it deleted ([`Agent::sync`]).
    pub async fn recover(self: &Arc<Self>) {
        let store = self.store.clone();
        let (saved, held) =
            tokio::task::spawn_blocking(move || (store.load_assignments(), store.held_datasets()))
                .await
                .unwrap_or_default();
        lock(&self.resumed).extend(held.into_iter().map(|k| (k, String::new())));
        for a in saved {
            match a {
                Ok(a) => {
                    let dataset = a.dataset.clone().unwrap_or_default();
                    if let Ok(key) = DatasetKey::from_ref(Some(&dataset)) {
                        lock(&self.resumed).insert(key, dataset.uid.clone());
                    }
                    let name = format!("{}/{}", dataset.namespace, dataset.name);
                    match self.apply_inner(a).await {
                        Ok(_) => info!(dataset = name, "resumed"),
                        Err(e) => warn!(dataset = name, error = %e, "could not resume"),
                    }
                }
                Err(e) => warn!(error = %e, "unreadable saved assignment"),
            }
        }
        self.ready.store(true, Ordering::Relaxed);
    }

    /// Removes what [`Agent::recover`] found on the disk that the operator
    /// has not assigned since and that is not among `existing` (or is
    /// there under another uid): the Dataset was deleted while this agent
    /// was away. Returns what was removed.
    pub async fn sync(&self, existing: &[pb::DatasetRef]) -> Result<Vec<DatasetKey>, StoreError> {
        let listed: HashMap<(&str, &str), &str> = existing
            .iter()
            .map(|d| ((d.namespace.as_str(), d.name.as_str()), d.uid.as_str()))
            .collect();
        let gone: Vec<DatasetKey> = lock(&self.resumed)
            .iter()
            .filter(
                |(k, uid)| match listed.get(&(k.namespace.as_str(), k.name.as_str())) {
                    None => true,
                    Some(listed_uid) => {
                        !uid.is_empty() && !listed_uid.is_empty() && uid.as_str() != *listed_uid
                    }
                },
            )
            .map(|(k, _)| k.clone())
            .collect();
        let mut removed = Vec::new();
        for key in gone {
            // Assigned in the meantime: the operator knows it exists.
            if !lock(&self.resumed).contains_key(&key) {
                continue;
            }
            self.remove(&key).await?;
            info!(dataset = %key, "removed: its Dataset no longer exists");
            removed.push(key);
        }
        Ok(removed)
    }

    /// Holds the assignment's revision (see the `ApplyAssignment` call).
    /// A dataset held under another uid (its Dataset was deleted and made
    /// again) is removed first.
    pub async fn apply(
        self: &Arc<Self>,
        a: pb::Assignment,
    ) -> Result<pb::ApplyAssignmentResponse, ApplyError> {
        let key = DatasetKey::from_ref(a.dataset.as_ref())?;
        let uid = a
            .dataset
            .as_ref()
            .map(|d| d.uid.as_str())
            .unwrap_or_default();
        let held_uid = {
            let datasets = lock(&self.datasets);
            datasets.get(&key).map(|s| {
                s.assignment
                    .dataset
                    .as_ref()
                    .map(|d| d.uid.clone())
                    .unwrap_or_default()
            })
        };
        let resumed_uid = lock(&self.resumed).get(&key).cloned();
        if let Some(held) = held_uid.or(resumed_uid)
            && !held.is_empty()
            && !uid.is_empty()
            && held != uid
        {
            info!(dataset = %key, "held under another uid: its Dataset was made again, removing the old copy");
            self.remove(&key).await?;
        }
        lock(&self.resumed).remove(&key);
        self.apply_inner(a).await
    }

    async fn apply_inner(
        self: &Arc<Self>,
        a: pb::Assignment,
    ) -> Result<pb::ApplyAssignmentResponse, ApplyError> {
        let key = DatasetKey::from_ref(a.dataset.as_ref())?;
        if a.peer_token.len() != 32 {
            return Err(ApplyError::Invalid("peer_token must be 32 bytes".into()));
        }
        if !a.pinned_digest.is_empty() && a.pinned_digest.len() != 32 {
            return Err(ApplyError::Invalid(
                "pinned_digest must be empty or 32 bytes".into(),
            ));
        }
        let layout = Arc::new(ChunkLayout::new(a.files.clone(), a.chunk_size)?);
        if layout.revision().to_hex() != a.revision {
            return Err(ApplyError::Invalid(format!(
                "revision {} does not match the listing (computed {})",
                a.revision,
                layout.revision()
            )));
        }
        let _serial = self.ops.lock().await;

        // Same revision: nothing, or a new plan.
        let existing = {
            let datasets = lock(&self.datasets);
            datasets
                .get(&key)
                .map(|s| (s.current.clone(), s.assignment == a))
        };
        if let Some((current, same)) = existing
            && current.revision() == layout.revision()
            && !current.is_failed()
        {
            if same {
                return Ok(pb::ApplyAssignmentResponse {
                    changed: false,
                    progress: Some(self.progress_of(&key, &current)),
                });
            }
            current.update_plan(&a)?;
            self.persist(&key, &a).await?;
            if let Some(slot) = lock(&self.datasets).get_mut(&key) {
                slot.assignment = a;
            }
            return Ok(pb::ApplyAssignmentResponse {
                changed: true,
                progress: Some(self.progress_of(&key, &current)),
            });
        }

        // A new revision (or a retry of a failed one). It takes what it
        // can from the published revision, and from the one it replaces
        // if that never finished (it failed, say, because a file changed
        // at the origin while it was read).
        let (base, unfinished) = {
            let datasets = lock(&self.datasets);
            let slot = datasets.get(&key);
            let base = slot.and_then(|s| {
                [Some(&s.current), s.previous.as_ref()]
                    .into_iter()
                    .flatten()
                    .find(|t| t.files().is_published() && t.revision() != layout.revision())
                    .cloned()
            });
            let unfinished = slot
                .map(|s| s.current.clone())
                .filter(|t| !t.files().is_published() && t.revision() != layout.revision());
            (base, unfinished)
        };
        let store = self.store.clone();
        let k = key.clone();
        let l = layout.clone();
        let files = tokio::task::spawn_blocking(move || {
            let verified = unfinished.as_ref().map(|t| t.verified_chunks());
            let reuse = Reuse {
                published: base.as_ref().map(|t| t.files().as_ref()),
                unfinished: unfinished
                    .as_ref()
                    .zip(verified.as_ref())
                    .map(|(t, v)| (t.files().as_ref(), v)),
            };
            store.open_revision(&k, l, reuse)
        })
        .await
        .map_err(|e| StoreError::Io {
            path: "open revision".into(),
            source: std::io::Error::other(e),
        })??;
        let transfer = Transfer::new(
            key.clone(),
            Arc::new(files),
            &a,
            self.identity.clone(),
            self.metrics.clone(),
            self.cfg.clone(),
        )?;
        self.persist(&key, &a).await?;
        let replaced = {
            let mut datasets = lock(&self.datasets);
            let old = datasets.remove(&key);
            let previous = old
                .as_ref()
                .map(|s| s.current.clone())
                .filter(|t| t.is_ready());
            if let Some(old) = &old
                && !old.current.is_ready()
            {
                old.current.stop();
            }
            datasets.insert(
                key.clone(),
                Slot {
                    assignment: a,
                    current: transfer.clone(),
                    previous,
                },
            );
            self.metrics.datasets.set(datasets.len() as i64);
            old
        };
        if let Some(old) = replaced.and_then(|s| s.previous) {
            old.stop();
        }
        info!(dataset = %key, revision = %layout.revision().short(), chunks = layout.chunk_count(), "assignment accepted");
        tokio::spawn(transfer.clone().run(self.store.clone()));
        Ok(pb::ApplyAssignmentResponse {
            changed: true,
            progress: Some(self.progress_of(&key, &transfer)),
        })
    }

    async fn persist(&self, key: &DatasetKey, a: &pb::Assignment) -> Result<(), StoreError> {
        let store = self.store.clone();
        let (key, a) = (key.clone(), a.clone());
        tokio::task::spawn_blocking(move || store.save_assignment(&key, &a))
            .await
            .map_err(|e| StoreError::Io {
                path: "assignment".into(),
                source: std::io::Error::other(e),
            })?
    }

    /// Removes a dataset from the node; returns whether it held anything.
    pub async fn remove(&self, key: &DatasetKey) -> Result<bool, StoreError> {
        let _serial = self.ops.lock().await;
        lock(&self.resumed).remove(key);
        let slot = {
            let mut datasets = lock(&self.datasets);
            let slot = datasets.remove(key);
            self.metrics.datasets.set(datasets.len() as i64);
            slot
        };
        if let Some(slot) = &slot {
            slot.current.stop();
            if let Some(p) = &slot.previous {
                p.stop();
            }
        }
        let store = self.store.clone();
        let k = key.clone();
        let existed = tokio::task::spawn_blocking(move || store.remove(&k))
            .await
            .map_err(|e| StoreError::Io {
                path: "remove".into(),
                source: std::io::Error::other(e),
            })??;
        info!(dataset = %key, existed, "removed");
        Ok(existed || slot.is_some())
    }

    fn progress_of(&self, key: &DatasetKey, t: &Transfer) -> pb::DatasetProgress {
        let mut p = t.progress();
        p.published_path = self.store.dataset_path(key).display().to_string();
        if let Some(short) = self.store.published_revision(key) {
            let rev = t.revision();
            p.published_revision = if rev.short() == short {
                rev.to_hex()
            } else {
                short
            };
        }
        p
    }

    pub fn status(&self, only: Option<&DatasetKey>) -> pb::AgentStatus {
        let transfers: Vec<(DatasetKey, Arc<Transfer>)> = lock(&self.datasets)
            .iter()
            .filter(|(k, _)| only.is_none_or(|o| o == *k))
            .map(|(k, s)| (k.clone(), s.current.clone()))
            .collect();
        let mut datasets: Vec<pb::DatasetProgress> = transfers
            .iter()
            .map(|(k, t)| self.progress_of(k, t))
            .collect();
        datasets.sort_by(|a, b| {
            let key = |p: &pb::DatasetProgress| {
                p.dataset
                    .as_ref()
                    .map(|d| (d.namespace.clone(), d.name.clone()))
            };
            key(a).cmp(&key(b))
        });
        pb::AgentStatus {
            node_name: self.cfg.node_name.clone(),
            public_key: self.identity.public_key().to_vec(),
            peer_address: self.peer_address.clone(),
            datasets,
            disk: Some(self.store.disk_usage()),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }

    /// Whether every dataset is ready (used by tests and the admin page).
    pub fn all_ready(&self) -> bool {
        lock(&self.datasets)
            .values()
            .all(|s| s.current.progress().state == DatasetState::Ready as i32)
    }
}

impl RevisionLookup for Agent {
    fn find(&self, key: &DatasetKey, revision: &RevisionId) -> Option<Arc<ServedRevision>> {
        let datasets = lock(&self.datasets);
        let slot = datasets.get(key)?;
        [Some(&slot.current), slot.previous.as_ref()]
            .into_iter()
            .flatten()
            .find(|t| t.revision() == *revision)
            .map(|t| t.served().clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(name: &str, uid: &str) -> pb::Assignment {
        let files = vec![pb::FileEntry {
            path: "a.bin".into(),
            size: 1000,
            etag: "\"1\"".into(),
            ..Default::default()
        }];
        let layout = ChunkLayout::new(files.clone(), 1 << 16).unwrap();
        pb::Assignment {
            dataset: Some(pb::DatasetRef {
                namespace: "ml".into(),
                name: name.into(),
                uid: uid.into(),
            }),
            revision: layout.revision().to_hex(),
            chunk_size: 1 << 16,
            files,
            // Nothing listens there: the transfer never gets a byte.
            origin: Some(pb::Origin {
                uri: "http://127.0.0.1:9/data/".into(),
                allow_http: true,
                ..Default::default()
            }),
            peer_token: vec![7; 32],
            ..Default::default()
        }
    }

    async fn agent(root: &std::path::Path) -> Arc<Agent> {
        let store = Arc::new(NodeStore::open(root).unwrap());
        Agent::new(
            store,
            Arc::new(Metrics::default()),
            TransferConfig::default(),
            "127.0.0.1:1".into(),
        )
        .unwrap()
    }

    /// A Dataset deleted while its agent was down must not come back: the
    /// agent resumes it from its disk, and drops it with everything it
    /// held once the operator's list of Datasets does not name it (or
    /// names it under another uid).
    #[tokio::test]
    async fn datasets_deleted_while_away_are_dropped_at_the_first_sync() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let a = agent(tmp.path()).await;
            a.recover().await;
            for (name, uid) in [("kept", "u1"), ("deleted", "u2"), ("made-again", "u3")] {
                a.apply(assignment(name, uid)).await.unwrap();
            }
            // An orphan: data without a saved assignment.
            std::fs::create_dir_all(tmp.path().join("staging/ml/orphan/x")).unwrap();
        }
        let restarted = agent(tmp.path()).await;
        restarted.recover().await;
        let existing =
            [("kept", "u1"), ("made-again", "u9"), ("new", "u4")].map(|(n, u)| pb::DatasetRef {
                namespace: "ml".into(),
                name: n.into(),
                uid: u.into(),
            });
        let mut removed: Vec<String> = restarted
            .sync(&existing)
            .await
            .unwrap()
            .into_iter()
            .map(|k| k.name)
            .collect();
        removed.sort();
        assert_eq!(removed, ["deleted", "made-again", "orphan"]);
        let held: Vec<String> = restarted
            .store
            .held_datasets()
            .into_iter()
            .map(|k| k.name)
            .collect();
        assert_eq!(held, ["kept"]);
        // Confirmed by an assignment: a later sync leaves it alone even if
        // its list is stale.
        restarted.apply(assignment("kept", "u1")).await.unwrap();
        assert!(restarted.sync(&[]).await.unwrap().is_empty());
        assert_eq!(restarted.store.held_datasets().len(), 1);
    }

    #[tokio::test]
    async fn an_assignment_under_another_uid_replaces_the_old_copy() {
        let tmp = tempfile::tempdir().unwrap();
        let a = agent(tmp.path()).await;
        a.recover().await;
        a.apply(assignment("llama", "old")).await.unwrap();
        let marker = tmp.path().join("staging/ml/llama/marker");
        std::fs::write(&marker, b"old").unwrap();
        a.apply(assignment("llama", "new")).await.unwrap();
        assert!(!marker.exists(), "the old Dataset's staging survived");
        let saved = a.store.load_assignments();
        assert_eq!(saved.len(), 1);
        assert_eq!(
            saved[0].as_ref().unwrap().dataset.as_ref().unwrap().uid,
            "new"
        );
    }

    #[test]
    fn a_refused_assignment_names_its_condition_reason() {
        let e = ApplyError::Store(StoreError::InsufficientStorage {
            root: "/var/lib/swarmseed".into(),
            needed: 4 << 30,
            free: 1 << 30,
        });
        let status = tonic::Status::from(e);
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            swarmseed_proto::refusal_reason(&status),
            Some(Reason::InsufficientStorage)
        );
    }
}
