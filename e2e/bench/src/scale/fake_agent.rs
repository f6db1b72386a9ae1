//! The simulated agents: one in-process `AgentControl` server per node
//! that checks assignments as the agent does and reports progress from
//! Pending to Ready over its seed time, logging what the operator asked.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use swarmseed_agent::control::ControlAuth;
use swarmseed_proto::ChunkLayout;
use swarmseed_proto::pb::agent_control_server::AgentControl;
use swarmseed_proto::pb::{self, DatasetState};
use tonic::{Request, Response, Status};

use super::{PENDING_FOR, TRANSFER_SHARE, lock};

#[derive(Debug, Clone, Copy)]
pub(super) struct Sim {
    pub(super) seed_time: Duration,
    pub(super) jitter: f64,
}

impl Sim {
    /// seed_time × (1 ± jitter), fixed per node and Dataset.
    pub(super) fn duration(&self, node: &str, ns: &str, name: &str) -> Duration {
        let h = blake3::hash(format!("{node}\0{ns}\0{name}").as_bytes());
        let mut b = [0u8; 8];
        b.copy_from_slice(&h.as_bytes()[..8]);
        let u = u64::from_le_bytes(b) as f64 / u64::MAX as f64; // [0, 1]
        self.seed_time.mul_f64(1.0 + self.jitter * (2.0 * u - 1.0))
    }
}

/// Per Dataset, what the fleet saw.
#[derive(Debug, Clone, Default)]
pub(super) struct DatasetLog {
    pub(super) first_assigned: Option<Instant>,
    /// When the last agent got its first assignment, and how many have.
    pub(super) last_first_assigned: Option<Instant>,
    pub(super) assigned: u64,
    /// The latest instant any agent turns (turned) Ready.
    pub(super) last_ready: Option<Instant>,
    /// When the probe agent (the first) was asked for this Dataset's
    /// progress: one GetStatus per reconcile, so the reconcile cadence.
    pub(super) rounds: Vec<Instant>,
    /// When the probe agent received this Dataset's ApplyAssignment.
    pub(super) apply_rounds: Vec<Instant>,
}

#[derive(Debug, Default)]
pub(super) struct FleetLog {
    pub(super) datasets: Mutex<HashMap<String, DatasetLog>>,
    pub(super) apply: AtomicU64,
    pub(super) apply_changed: AtomicU64,
    pub(super) status: AtomicU64,
    pub(super) remove: AtomicU64,
    pub(super) unauthenticated: AtomicU64,
}

impl FleetLog {
    pub(super) fn assigned(&self, dataset: &str, now: Instant, ready: Instant) {
        let mut d = lock(&self.datasets);
        let e = d.entry(dataset.to_owned()).or_default();
        e.first_assigned.get_or_insert(now);
        e.last_first_assigned = Some(now);
        e.assigned += 1;
        e.last_ready = Some(e.last_ready.map_or(ready, |r| r.max(ready)));
    }

    pub(super) fn round(&self, dataset: String, now: Instant) {
        lock(&self.datasets)
            .entry(dataset)
            .or_default()
            .rounds
            .push(now);
    }

    pub(super) fn apply_round(&self, dataset: String, now: Instant) {
        lock(&self.datasets)
            .entry(dataset)
            .or_default()
            .apply_rounds
            .push(now);
    }
}

/// One revision of one Dataset on a fake agent.
pub(super) struct Held {
    pub(super) assignment: pb::Assignment,
    pub(super) chunks: u32,
    pub(super) bytes: u64,
    /// Share of the bytes in this agent's own fetcher ranges.
    pub(super) origin_share: f64,
    pub(super) started: Instant,
    pub(super) duration: Duration,
}

impl Held {
    pub(super) fn ready_at(&self) -> Instant {
        self.started + self.duration
    }

    /// What the real agent's `DatasetProgress` says at `now`.
    pub(super) fn progress(&self, now: Instant) -> pb::DatasetProgress {
        let elapsed = now.saturating_duration_since(self.started);
        let frac = elapsed.as_secs_f64() / self.duration.as_secs_f64();
        let (state, verified) = if frac >= 1.0 {
            (DatasetState::Ready, self.chunks)
        } else if elapsed < PENDING_FOR {
            (DatasetState::Pending, 0)
        } else {
            let v = ((frac / TRANSFER_SHARE).min(1.0) * f64::from(self.chunks)) as u32;
            if v >= self.chunks {
                (DatasetState::Publishing, self.chunks)
            } else {
                (DatasetState::Transferring, v)
            }
        };
        let bytes_verified = if self.chunks == 0 {
            self.bytes
        } else {
            (u128::from(self.bytes) * u128::from(verified) / u128::from(self.chunks)) as u64
        };
        let from_origin = (bytes_verified as f64 * self.origin_share) as u64;
        let from_peers = bytes_verified - from_origin.min(bytes_verified);
        let a = &self.assignment;
        let complete = verified == self.chunks;
        let dataset = a.dataset.clone().unwrap_or_default();
        pb::DatasetProgress {
            published_path: format!(
                "/var/lib/swarmseed/datasets/{}/{}",
                dataset.namespace, dataset.name
            ),
            dataset: Some(dataset),
            revision: a.revision.clone(),
            plan_generation: a.plan_generation,
            state: state as i32,
            chunks_total: self.chunks,
            chunks_verified: verified,
            bytes_total: self.bytes,
            bytes_verified,
            bytes_from_origin: from_origin,
            bytes_from_peers: from_peers,
            bytes_reused: 0,
            bytes_served_to_peers: from_peers,
            content_digest: if complete {
                blake3::hash(a.revision.as_bytes()).as_bytes().to_vec()
            } else {
                Vec::new()
            },
            published_revision: if state == DatasetState::Ready {
                a.revision.clone()
            } else {
                String::new()
            },
            error: None,
            fetchers: a.fetchers.clone(),
            origin_error: None,
            origin_error_seconds: 0,
        }
    }
}

/// One simulated agent: the control API of one node.
pub(super) struct FakeAgent {
    pub(super) node: String,
    pub(super) public_key: Vec<u8>,
    pub(super) peer_address: String,
    pub(super) sim: Sim,
    /// Logs the reconcile rounds (one agent is enough).
    pub(super) probe: bool,
    pub(super) log: Arc<FleetLog>,
    pub(super) held: Mutex<BTreeMap<(String, String), Held>>,
}

pub(super) fn invalid(msg: impl Into<String>) -> Status {
    Status::invalid_argument(msg.into())
}

impl FakeAgent {
    pub(super) fn origin_share(&self, layout: &ChunkLayout, a: &pb::Assignment) -> f64 {
        let total = layout.total_bytes();
        if total == 0 {
            return 0.0;
        }
        let own: u64 = a
            .fetchers
            .iter()
            .filter(|f| f.public_key == self.public_key)
            .flat_map(|f| f.ranges.iter())
            .map(|r| layout.bytes_in(r.start..r.end.min(layout.chunk_count())))
            .sum();
        own as f64 / total as f64
    }

    /// The agent's ApplyAssignment, checks first (as `Agent::apply`).
    pub(super) fn apply(&self, a: pb::Assignment) -> Result<pb::ApplyAssignmentResponse, Status> {
        self.log.apply.fetch_add(1, Ordering::Relaxed);
        let d = a
            .dataset
            .clone()
            .ok_or_else(|| invalid("assignment without a dataset"))?;
        if d.namespace.is_empty() || d.name.is_empty() {
            return Err(invalid("dataset namespace and name must be set"));
        }
        if a.peer_token.len() != 32 {
            return Err(invalid("peer_token must be 32 bytes"));
        }
        let layout = ChunkLayout::new(a.files.clone(), a.chunk_size)
            .map_err(|e| invalid(format!("invalid listing: {e}")))?;
        if layout.revision().to_hex() != a.revision {
            return Err(invalid(format!(
                "revision {} does not match the listing (computed {})",
                a.revision,
                layout.revision()
            )));
        }
        let now = Instant::now();
        if self.probe {
            self.log
                .apply_round(format!("{}/{}", d.namespace, d.name), now);
        }
        let key = (d.namespace.clone(), d.name.clone());
        let mut held = lock(&self.held);
        let changed = match held.get_mut(&key) {
            Some(h) if h.assignment.revision == a.revision => {
                if h.assignment == a {
                    false
                } else {
                    // A new plan of the same revision: no restart.
                    h.origin_share = self.origin_share(&layout, &a);
                    h.assignment = a;
                    true
                }
            }
            _ => {
                let duration = self.sim.duration(&self.node, &d.namespace, &d.name);
                let h = Held {
                    origin_share: self.origin_share(&layout, &a),
                    assignment: a,
                    chunks: layout.chunk_count(),
                    bytes: layout.total_bytes(),
                    started: now,
                    duration,
                };
                self.log
                    .assigned(&format!("{}/{}", d.namespace, d.name), now, h.ready_at());
                held.insert(key.clone(), h);
                true
            }
        };
        if changed {
            self.log.apply_changed.fetch_add(1, Ordering::Relaxed);
        }
        let progress = held.get(&key).map(|h| h.progress(now));
        Ok(pb::ApplyAssignmentResponse { changed, progress })
    }

    pub(super) fn status(&self, only: Option<&pb::DatasetRef>) -> pb::AgentStatus {
        self.log.status.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        if let Some(d) = only.filter(|_| self.probe) {
            self.log.round(format!("{}/{}", d.namespace, d.name), now);
        }
        let held = lock(&self.held);
        let datasets: Vec<pb::DatasetProgress> = held
            .iter()
            .filter(|((ns, name), _)| only.is_none_or(|o| o.namespace == *ns && o.name == *name))
            .map(|(_, h)| h.progress(now))
            .collect();
        let store_bytes = datasets.iter().map(|p| p.bytes_verified).sum();
        pb::AgentStatus {
            node_name: self.node.clone(),
            public_key: self.public_key.clone(),
            peer_address: self.peer_address.clone(),
            datasets,
            disk: Some(pb::DiskUsage {
                store_bytes,
                filesystem_free_bytes: 8 << 40,
                filesystem_total_bytes: 8 << 40,
            }),
            version: concat!(env!("CARGO_PKG_VERSION"), "-scale-bench-fake").to_owned(),
        }
    }

    pub(super) fn remove(&self, d: Option<&pb::DatasetRef>) -> Result<bool, Status> {
        self.log.remove.fetch_add(1, Ordering::Relaxed);
        let d = d.ok_or_else(|| invalid("remove without a dataset"))?;
        Ok(lock(&self.held)
            .remove(&(d.namespace.clone(), d.name.clone()))
            .is_some())
    }

    pub(super) fn ready_count(&self, now: Instant) -> usize {
        lock(&self.held)
            .values()
            .filter(|h| h.ready_at() <= now)
            .count()
    }
}

#[derive(Clone)]
pub(super) struct FakeService(pub(super) Arc<FakeAgent>);

#[tonic::async_trait]
impl AgentControl for FakeService {
    async fn apply_assignment(
        &self,
        request: Request<pb::Assignment>,
    ) -> Result<Response<pb::ApplyAssignmentResponse>, Status> {
        self.0.apply(request.into_inner()).map(Response::new)
    }

    async fn remove_dataset(
        &self,
        request: Request<pb::RemoveDatasetRequest>,
    ) -> Result<Response<pb::RemoveDatasetResponse>, Status> {
        let existed = self.0.remove(request.get_ref().dataset.as_ref())?;
        Ok(Response::new(pb::RemoveDatasetResponse { existed }))
    }

    /// A simulated agent holds nothing across restarts.
    async fn sync_datasets(
        &self,
        _: Request<pb::SyncDatasetsRequest>,
    ) -> Result<Response<pb::SyncDatasetsResponse>, Status> {
        Ok(Response::new(pb::SyncDatasetsResponse::default()))
    }

    async fn get_status(
        &self,
        request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::AgentStatus>, Status> {
        Ok(Response::new(
            self.0.status(request.get_ref().dataset.as_ref()),
        ))
    }
}

/// The real agent's token check, counting what it refuses.
#[derive(Clone)]
pub(super) struct CountingAuth {
    pub(super) inner: ControlAuth,
    pub(super) log: Arc<FleetLog>,
}

impl tonic::service::Interceptor for CountingAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let r = self.inner.call(request);
        if r.is_err() {
            self.log.unauthenticated.fetch_add(1, Ordering::Relaxed);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::super::node_name;
    use super::*;
    use crate::report::MIB;

    fn assignment(files: Vec<pb::FileEntry>, fetcher_key: Vec<u8>) -> pb::Assignment {
        let layout = ChunkLayout::new(files.clone(), MIB).unwrap();
        pb::Assignment {
            dataset: Some(pb::DatasetRef {
                namespace: "ns".into(),
                name: "d".into(),
                uid: String::new(),
            }),
            revision: layout.revision().to_hex(),
            chunk_size: MIB,
            files,
            fetchers: vec![pb::OriginFetcher {
                node_name: "node-00000".into(),
                public_key: fetcher_key,
                ranges: vec![pb::ChunkRange { start: 0, end: 2 }],
            }],
            peer_token: vec![7; 32],
            plan_generation: 1,
            ..Default::default()
        }
    }

    fn fake(seed_time: Duration) -> FakeAgent {
        let node = node_name(0);
        FakeAgent {
            public_key: blake3::hash(node.as_bytes()).as_bytes().to_vec(),
            peer_address: "127.214.0.1:7401".into(),
            node,
            sim: Sim {
                seed_time,
                jitter: 0.0,
            },
            probe: true,
            log: Arc::default(),
            held: Mutex::new(BTreeMap::new()),
        }
    }

    #[test]
    fn a_fake_agent_checks_assignments_and_reports_like_the_agent() {
        let f = fake(Duration::from_secs(10));
        let files = vec![pb::FileEntry {
            path: "w.bin".into(),
            size: 8 * MIB,
            ..Default::default()
        }];
        let a = assignment(files, f.public_key.clone());
        let mut bad = a.clone();
        bad.revision = "00".repeat(32);
        assert_eq!(
            f.apply(bad).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let r = f.apply(a.clone()).unwrap();
        assert!(r.changed);
        let p = r.progress.unwrap();
        assert_eq!(p.state(), DatasetState::Pending);
        assert_eq!(p.chunks_total, 8);
        assert_eq!(p.fetchers, a.fetchers);
        assert!(!f.apply(a.clone()).unwrap().changed, "same assignment");
        let mut replanned = a.clone();
        replanned.plan_generation = 2;
        assert!(f.apply(replanned).unwrap().changed);
        assert_eq!(f.log.apply.load(Ordering::Relaxed), 4);
        assert_eq!(f.log.apply_changed.load(Ordering::Relaxed), 2);
        // A new plan does not restart: still one assignment logged.
        assert_eq!(lock(&f.log.datasets)["ns/d"].assigned, 1);

        let key = ("ns".to_owned(), "d".to_owned());
        let started = lock(&f.held)[&key].started;
        let at = |secs: f64| lock(&f.held)[&key].progress(started + Duration::from_secs_f64(secs));
        let half = at(5.0);
        assert_eq!(half.state(), DatasetState::Transferring);
        assert!(half.chunks_verified > 0 && half.chunks_verified < 8);
        // Chunks 0..2 are this agent's: a quarter of the bytes from origin.
        assert_eq!(half.bytes_from_origin * 4, half.bytes_verified, "{half:?}");
        assert!(half.content_digest.is_empty() && half.published_revision.is_empty());
        assert_eq!(at(9.8).state(), DatasetState::Publishing);
        let done = at(10.0);
        assert_eq!(done.state(), DatasetState::Ready);
        assert_eq!(done.published_revision, a.revision);
        assert_eq!(done.content_digest.len(), 32);
        assert_eq!(done.bytes_verified, 8 * MIB);
        assert_eq!(done.published_path, "/var/lib/swarmseed/datasets/ns/d");

        let st = f.status(Some(&pb::DatasetRef {
            namespace: "ns".into(),
            name: "other".into(),
            uid: String::new(),
        }));
        assert!(st.datasets.is_empty());
        assert_eq!(f.status(None).datasets.len(), 1);
        assert_eq!(st.public_key.len(), 32);
        assert!(f.remove(a.dataset.as_ref()).unwrap());
        assert!(!f.remove(a.dataset.as_ref()).unwrap());
    }

    #[test]
    fn seed_times_spread_within_the_jitter() {
        let sim = Sim {
            seed_time: Duration::from_secs(20),
            jitter: 0.25,
        };
        let d: Vec<f64> = (0..200)
            .map(|i| sim.duration(&node_name(i), "ns", "d").as_secs_f64())
            .collect();
        assert!(d.iter().all(|s| (15.0..=25.0).contains(s)));
        let spread = d.iter().copied().fold(0.0, f64::max) - d.iter().copied().fold(99.0, f64::min);
        assert!(spread > 8.0, "{spread}");
        assert_eq!(sim.duration("a", "b", "c"), sim.duration("a", "b", "c"));
    }
}
