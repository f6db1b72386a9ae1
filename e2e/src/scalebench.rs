//! `e2e bench-scale`: the control plane at scale. The real operator
//! against the API stand-in, N simulated agents and M Datasets that each
//! select every node; no byte moves, only the operator's work is measured.
//!
//! One run, all in this process except the operator:
//!
//! 1. The API stand-in with the Dataset CRD (applied with kubectl), N Nodes
//!    labelled [`NODE_LABEL`] and N agent Pods (Running, Ready) whose podIP
//!    is `127.214.x.y`: Linux routes all of 127.0.0.0/8 to loopback, so
//!    every fake agent has an address of its own on one shared port.
//! 2. N fake agents: one tonic `AgentControl` server per address behind the
//!    real agent's bearer-token check (`swarmseed_agent::control::ControlAuth`;
//!    checked at start: no token and a wrong token are refused). They accept
//!    assignments as the real agent does (the revision is recomputed from
//!    the listing and must match; the same assignment twice is a no-op; a
//!    new plan of the same revision does not restart) and report progress
//!    as the real agent's `DatasetProgress` looks: Pending, Transferring
//!    (chunks and bytes verified, from origin for the chunks in their own
//!    fetcher ranges, from peers otherwise), Publishing, then Ready with
//!    the content digest and the published revision. Each agent takes
//!    `--seed-time` ± `--jitter` per Dataset from its first assignment.
//! 3. An HTTP origin serving one directory per Dataset with a few sparse
//!    files (the operator lists them; nobody reads them).
//! 4. The operator binary (`swarmseed-operator`, leader election on as in
//!    production), then M Datasets created at once.
//!
//! Measured: the operator's peak RSS (`VmHWM`, sampled every 250 ms and at
//! the end) and CPU time (`/proc/<pid>/stat`); status writes per Dataset
//! (the highest count in any 1-second window, the mean rate from creation
//! to Ready, the smallest gap), timed where the operator's PATCH requests
//! arrive: it talks to the stand-in through a reverse proxy in this process
//! (`ApiProxy`; a watch of the Datasets, whose delivery delay grows under
//! load, only cross-checks the count, as does the operator's own
//! `status_writes` counter); the time from the instant a Dataset's last
//! fake agent turned Ready to its `Ready=True` seen on the watch (median
//! and max over Datasets), and to its label being on every Node; how often
//! each Dataset is reconciled (the probe agent's GetStatus calls) and how
//! long a LIST of every Node takes the stand-in meanwhile; how long the
//! assignments took to reach every agent; the calls the agents received;
//! the whole machine's CPU use. After every Dataset is Ready the run
//! watches for `--settle` more to show the operator at rest.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::api::{Api, DynamicObject, PartialObjectMeta, PostParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use serde::{Deserialize, Serialize};
use swarmseed_agent::control::ControlAuth;
use swarmseed_proto::ChunkLayout;
use swarmseed_proto::pb::agent_control_server::{AgentControl, AgentControlServer};
use swarmseed_proto::pb::{self, DatasetState};
use tonic::{Request, Response, Status};

use crate::apiserver::ApiServer;
use crate::bench::Machine;
use crate::kube_objects::{self, AGENT_NAMESPACE, AgentPorts};
use crate::origin::http::HttpOrigin;
use crate::process::{ChildSpec, ManagedChild};
use crate::seeding::{DATASET_CRD, dataset_resource, kubectl};

/// Namespace of the Datasets.
pub const NAMESPACE: &str = "scale";
/// The label every simulated Node carries and every Dataset selects.
pub const NODE_LABEL: (&str, &str) = ("swarmseed.io/scale-bench", "true");
/// Targets of the issue: operator at 500 nodes.
pub const RSS_TARGET_BYTES: u64 = 256 << 20;
pub const WRITES_PER_S_TARGET: u32 = 1;
const RESULTS_BEGIN: &str =
    "<!-- BEGIN scale: e2e/bench/run.sh, generated, edits here are overwritten -->";
const RESULTS_END: &str = "<!-- END scale -->";
const OPERATOR_ID: &str = "scale-operator";
/// A fake agent reports Pending this long after its assignment.
const PENDING_FOR: Duration = Duration::from_millis(100);
/// Share of the seed time spent moving chunks; the rest is Publishing.
const TRANSFER_SHARE: f64 = 0.95;
/// `/proc/<pid>/stat` counts CPU time in USER_HZ (100 on Linux).
const USER_HZ: f64 = 100.0;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ScaleBenchArgs {
    #[command(subcommand)]
    pub tool: Option<ScaleTool>,
    #[command(flatten)]
    pub run: ScaleRunArgs,
}

/// Helpers (hidden from `--help`).
#[derive(Debug, clap::Subcommand)]
pub enum ScaleTool {
    /// Write the "Control plane at scale" table of JSON reports (one per
    /// line) into a markdown file between its markers, keeping the rest.
    #[command(hide = true)]
    Render(ScaleRenderArgs),
}

/// One scale run.
#[derive(Debug, Clone, clap::Args)]
pub struct ScaleRunArgs {
    /// Simulated agents (= Nodes), each on its own 127.214.x.y address.
    #[arg(long, env = "SCALE_AGENTS", default_value_t = 500)]
    pub agents: usize,
    /// Datasets, each selecting every node.
    #[arg(long, env = "SCALE_DATASETS", default_value_t = 20)]
    pub datasets: usize,
    /// How long a fake agent takes from its first assignment of a Dataset
    /// to Ready (± --jitter, per agent and Dataset).
    #[arg(long, env = "SCALE_SEED_TIME", default_value = "20s", value_parser = humantime::parse_duration)]
    pub seed_time: Duration,
    /// Spread of the seed time: each agent and Dataset takes seed-time ×
    /// (1 ± jitter), uniformly (0 ≤ jitter < 1).
    #[arg(long, env = "SCALE_JITTER", default_value_t = 0.25)]
    pub jitter: f64,
    /// Listed size of each Dataset (sparse files on the origin; only the
    /// chunk count matters to the operator).
    #[arg(long, env = "SCALE_DATASET_SIZE", default_value = "4GiB", value_parser = crate::demo::parse_size)]
    pub dataset_size: u64,
    /// Files per Dataset.
    #[arg(long, env = "SCALE_FILES", default_value_t = 4)]
    pub files: usize,
    /// How long to keep measuring after every Dataset is Ready.
    #[arg(long, env = "SCALE_SETTLE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub settle: Duration,
    /// Give up (and stop the operator) after this long in all.
    #[arg(long, env = "SCALE_TIMEOUT", default_value = "10m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// The operator binary (default: `swarmseed-operator` next to `e2e`).
    #[arg(long, env = "SCALE_OPERATOR_BIN")]
    pub operator_binary: Option<PathBuf>,
    /// Keep the kubeconfig, the operator's log and the origin tree here
    /// (default: a temporary directory, removed at the end).
    #[arg(long, env = "SCALE_WORK_DIR")]
    pub work_dir: Option<PathBuf>,
    /// Print one JSON object as the last line of stdout.
    #[arg(long, env = "SCALE_JSON")]
    pub json: bool,
}

impl ScaleRunArgs {
    /// The command line that reproduces this run.
    pub fn command(&self) -> String {
        format!(
            "e2e bench-scale --agents {} --datasets {} --seed-time {}",
            self.agents,
            self.datasets,
            humantime::format_duration(self.seed_time)
        )
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.agents == 0 || self.agents > 250 * 256 {
            bail!("--agents must be between 1 and 64000");
        }
        if self.datasets == 0 || self.datasets > 1000 {
            bail!("--datasets must be between 1 and 1000");
        }
        if !(0.0..1.0).contains(&self.jitter) {
            bail!("--jitter must be in [0, 1)");
        }
        if self.files == 0 || self.dataset_size < self.files as u64 {
            bail!("--files must be at least 1 and at most --dataset-size bytes");
        }
        if self.seed_time.is_zero() {
            bail!("--seed-time must be positive");
        }
        Ok(())
    }
}

/// Figures of one Dataset.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DatasetFigures {
    pub name: String,
    /// From creation to `Ready=True` seen on the watch.
    pub ready_s: Option<f64>,
    /// From creation to the instant its last fake agent turned Ready.
    pub last_agent_ready_s: Option<f64>,
    pub ready_after_last_agent_s: Option<f64>,
    /// Status writes from creation to Ready.
    pub status_writes: u64,
    pub max_writes_in_1s: u32,
    pub min_write_gap_s: Option<f64>,
    /// `status_writes` over the time from creation to Ready.
    pub writes_per_s: f64,
    pub writes_after_ready: u64,
    /// From creation to every Node carrying its label.
    pub labelled_s: Option<f64>,
    pub labelled_after_last_agent_s: Option<f64>,
    /// Reconciles (GetStatus rounds) from creation to Ready, and the
    /// median time between two.
    pub reconciles_until_ready: u64,
    pub reconcile_interval_s: Option<f64>,
    /// When each of those reconciles asked the probe agent.
    pub reconcile_rounds_s: Vec<f64>,
}

/// What one run measured. Times in seconds from the Datasets' creation
/// unless named otherwise.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ScaleReport {
    pub command: String,
    pub agents: usize,
    pub datasets: usize,
    pub seed_time_s: f64,
    pub jitter: f64,
    pub dataset_bytes: u64,
    pub dataset_files: usize,
    pub chunk_size: Option<u64>,
    pub all_ready: bool,
    pub datasets_ready: usize,
    /// The whole run, start-up and teardown included.
    pub wall_s: f64,
    /// Stand-in, objects, fake agents and the operator up, before the
    /// Datasets were created.
    pub setup_s: f64,
    /// First ApplyAssignment any agent received.
    pub first_assignment_s: Option<f64>,
    /// When the last (agent, Dataset) pair received its first assignment.
    pub all_assigned_s: Option<f64>,
    /// (agent, Dataset) pairs assigned, of agents × datasets.
    pub assigned_pairs: u64,
    /// The instant the last fake agent turned Ready (any Dataset).
    pub last_agent_ready_s: Option<f64>,
    pub last_dataset_ready_s: Option<f64>,
    /// Per Dataset: its `Ready=True` after its own last agent turned Ready.
    pub ready_after_last_agent_median_s: Option<f64>,
    pub ready_after_last_agent_max_s: Option<f64>,
    /// The last Dataset Ready after the last agent of all turned Ready.
    pub all_ready_after_last_agent_s: Option<f64>,
    /// Per Dataset: every Node labelled after its last agent turned Ready.
    pub labelled_after_last_agent_median_s: Option<f64>,
    pub labelled_after_last_agent_max_s: Option<f64>,
    /// Median time between two reconciles of one Dataset while seeding.
    pub reconcile_interval_median_s: Option<f64>,
    /// Status writes (the operator's PATCH requests of `…/status`, timed
    /// as they arrive), every Dataset, creation to Ready.
    pub status_writes: u64,
    /// The most status writes of one Dataset in any 1 s window.
    pub status_writes_max_per_s: u32,
    /// Mean over Datasets of status writes per second, creation to Ready.
    pub status_writes_mean_per_s: f64,
    /// Smallest gap between two status writes of one Dataset.
    pub status_write_min_gap_s: Option<f64>,
    /// Status writes after a Dataset was Ready (until the end of settle).
    pub status_writes_after_ready: u64,
    /// Status changes seen on a watch of the Datasets, all of the run (a
    /// cross-check of the writes: an identical write changes nothing).
    pub status_changes_seen: u64,
    /// The operator's own `swarmseed_operator_status_writes_total` at the end.
    pub operator_status_writes: Option<u64>,
    pub operator_reconciles: Option<u64>,
    pub operator_reconcile_errors: Option<u64>,
    /// The operator's `agent_calls_total` by `method/result`.
    pub operator_agent_calls: BTreeMap<String, u64>,
    /// Calls the fake agents answered (after the start-up auth check).
    pub agent_apply_calls: u64,
    pub agent_apply_changed: u64,
    pub agent_status_calls: u64,
    pub agent_remove_calls: u64,
    /// Calls refused for a missing or wrong token.
    pub agent_unauthenticated_calls: u64,
    /// Highest VmHWM of the operator.
    pub operator_peak_rss_bytes: u64,
    /// VmRSS when every Dataset was Ready, and at the end.
    pub operator_rss_at_ready_bytes: u64,
    pub operator_rss_final_bytes: u64,
    pub operator_threads: u64,
    /// Operator CPU seconds: all, creation to all Ready, during settle.
    pub operator_cpu_s: f64,
    pub operator_cpu_seed_s: f64,
    pub operator_cpu_settle_s: f64,
    /// Reconciles and status writes during settle (every Dataset Ready).
    pub operator_reconciles_settle: Option<u64>,
    pub operator_status_writes_settle: Option<u64>,
    pub settle_s: f64,
    /// CPU seconds of this process (stand-in, fake agents, watch) in all.
    pub harness_cpu_s: f64,
    /// Busy share of all CPUs, creation to all Ready (every process on the
    /// machine: the operator, the harness and anyone else's work).
    pub machine_cpu_busy: f64,
    /// A LIST of every Node (as each reconcile does) from the harness,
    /// once a second while seeding: the API stand-in's responsiveness.
    pub api_list_nodes_median_s: Option<f64>,
    pub api_list_nodes_max_s: Option<f64>,
    /// Per reconcile that sent the probe agent an assignment: from its
    /// GetStatus to its ApplyAssignment (discover every agent, plan), and
    /// from there to the next reconcile's GetStatus (send, label, status,
    /// wait); medians.
    pub reconcile_discover_plan_median_s: Option<f64>,
    pub reconcile_rest_median_s: Option<f64>,
    pub rss_target_met: bool,
    pub writes_target_met: bool,
    pub per_dataset: Vec<DatasetFigures>,
    pub machine: Machine,
}

/// The `e2e bench-scale` subcommand.
pub async fn main(
    args: ScaleBenchArgs,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    match args.tool {
        Some(ScaleTool::Render(a)) => render(&a)?,
        None => {
            let json = args.run.json;
            // The run watches its own deadline; this bounds set-up and
            // teardown too. Dropping the run kills the operator.
            let bound = args.run.timeout + Duration::from_secs(60);
            let report = tokio::select! {
                r = tokio::time::timeout(bound, run(args.run)) => {
                    r.map_err(|_| anyhow::anyhow!("bench-scale took longer than {bound:?}"))??
                }
                _ = shutdown => bail!("interrupted"),
            };
            print(&report, json)?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Fake agents.

#[derive(Debug, Clone, Copy)]
struct Sim {
    seed_time: Duration,
    jitter: f64,
}

impl Sim {
    /// seed_time × (1 ± jitter), fixed per node and Dataset.
    fn duration(&self, node: &str, ns: &str, name: &str) -> Duration {
        let h = blake3::hash(format!("{node}\0{ns}\0{name}").as_bytes());
        let mut b = [0u8; 8];
        b.copy_from_slice(&h.as_bytes()[..8]);
        let u = u64::from_le_bytes(b) as f64 / u64::MAX as f64; // [0, 1]
        self.seed_time.mul_f64(1.0 + self.jitter * (2.0 * u - 1.0))
    }
}

/// Per Dataset, what the fleet saw.
#[derive(Debug, Clone, Default)]
struct DatasetLog {
    first_assigned: Option<Instant>,
    /// When the last agent got its first assignment, and how many have.
    last_first_assigned: Option<Instant>,
    assigned: u64,
    /// The latest instant any agent turns (turned) Ready.
    last_ready: Option<Instant>,
    /// When the probe agent (the first) was asked for this Dataset's
    /// progress: one GetStatus per reconcile, so the reconcile cadence.
    rounds: Vec<Instant>,
    /// When the probe agent received this Dataset's ApplyAssignment.
    apply_rounds: Vec<Instant>,
}

#[derive(Debug, Default)]
struct FleetLog {
    datasets: Mutex<HashMap<String, DatasetLog>>,
    apply: AtomicU64,
    apply_changed: AtomicU64,
    status: AtomicU64,
    remove: AtomicU64,
    unauthenticated: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl FleetLog {
    fn assigned(&self, dataset: &str, now: Instant, ready: Instant) {
        let mut d = lock(&self.datasets);
        let e = d.entry(dataset.to_owned()).or_default();
        e.first_assigned.get_or_insert(now);
        e.last_first_assigned = Some(now);
        e.assigned += 1;
        e.last_ready = Some(e.last_ready.map_or(ready, |r| r.max(ready)));
    }

    fn round(&self, dataset: String, now: Instant) {
        lock(&self.datasets)
            .entry(dataset)
            .or_default()
            .rounds
            .push(now);
    }

    fn apply_round(&self, dataset: String, now: Instant) {
        lock(&self.datasets)
            .entry(dataset)
            .or_default()
            .apply_rounds
            .push(now);
    }
}

/// One revision of one Dataset on a fake agent.
struct Held {
    assignment: pb::Assignment,
    chunks: u32,
    bytes: u64,
    /// Share of the bytes in this agent's own fetcher ranges.
    origin_share: f64,
    started: Instant,
    duration: Duration,
}

impl Held {
    fn ready_at(&self) -> Instant {
        self.started + self.duration
    }

    /// What the real agent's `DatasetProgress` says at `now`.
    fn progress(&self, now: Instant) -> pb::DatasetProgress {
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
struct FakeAgent {
    node: String,
    public_key: Vec<u8>,
    peer_address: String,
    sim: Sim,
    /// Logs the reconcile rounds (one agent is enough).
    probe: bool,
    log: Arc<FleetLog>,
    held: Mutex<BTreeMap<(String, String), Held>>,
}

fn invalid(msg: impl Into<String>) -> Status {
    Status::invalid_argument(msg.into())
}

impl FakeAgent {
    fn origin_share(&self, layout: &ChunkLayout, a: &pb::Assignment) -> f64 {
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
    fn apply(&self, a: pb::Assignment) -> Result<pb::ApplyAssignmentResponse, Status> {
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

    fn status(&self, only: Option<&pb::DatasetRef>) -> pb::AgentStatus {
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

    fn remove(&self, d: Option<&pb::DatasetRef>) -> Result<bool, Status> {
        self.log.remove.fetch_add(1, Ordering::Relaxed);
        let d = d.ok_or_else(|| invalid("remove without a dataset"))?;
        Ok(lock(&self.held)
            .remove(&(d.namespace.clone(), d.name.clone()))
            .is_some())
    }

    fn ready_count(&self, now: Instant) -> usize {
        lock(&self.held)
            .values()
            .filter(|h| h.ready_at() <= now)
            .count()
    }
}

#[derive(Clone)]
struct FakeService(Arc<FakeAgent>);

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
struct CountingAuth {
    inner: ControlAuth,
    log: Arc<FleetLog>,
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

/// The address of agent `i`: 127.214.x.y, y in 1..=250.
pub fn agent_address(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 214, (i / 250) as u8, (i % 250 + 1) as u8)
}

/// N fake agents serving on one port, each on its own address.
struct Fleet {
    agents: Vec<(Ipv4Addr, Arc<FakeAgent>)>,
    port: u16,
    log: Arc<FleetLog>,
    servers: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for s in &self.servers {
            s.abort();
        }
    }
}

impl Fleet {
    async fn start(count: usize, token: &str, sim: Sim) -> anyhow::Result<Self> {
        let log = Arc::new(FleetLog::default());
        // One port for every address (the operator has one --control-port):
        // the first address picks a free one; retry if another is taken.
        let mut last_err = None;
        for _attempt in 0..8 {
            match Self::bind_all(count).await {
                Ok((port, listeners)) => {
                    let auth = CountingAuth {
                        inner: ControlAuth::new(token),
                        log: log.clone(),
                    };
                    let mut agents = Vec::with_capacity(count);
                    let mut servers = Vec::with_capacity(count);
                    for (i, listener) in listeners.into_iter().enumerate() {
                        let ip = agent_address(i);
                        let node = node_name(i);
                        let agent = Arc::new(FakeAgent {
                            public_key: blake3::hash(node.as_bytes()).as_bytes().to_vec(),
                            peer_address: format!("{ip}:{}", AgentPorts::default().peer),
                            node,
                            sim,
                            probe: i == 0,
                            log: log.clone(),
                            held: Mutex::new(BTreeMap::new()),
                        });
                        let svc = AgentControlServer::with_interceptor(
                            FakeService(agent.clone()),
                            auth.clone(),
                        );
                        servers.push(tokio::spawn(async move {
                            let incoming = tonic::transport::server::TcpIncoming::from(listener);
                            if let Err(e) = tonic::transport::Server::builder()
                                .timeout(Duration::from_secs(120))
                                .add_service(svc)
                                .serve_with_incoming(incoming)
                                .await
                            {
                                tracing::warn!(error = %e, "fake agent server stopped");
                            }
                        }));
                        agents.push((ip, agent));
                    }
                    return Ok(Self {
                        agents,
                        port,
                        log,
                        servers,
                    });
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("binding the fake agents failed")))
    }

    async fn bind_all(count: usize) -> anyhow::Result<(u16, Vec<tokio::net::TcpListener>)> {
        let first = tokio::net::TcpListener::bind(SocketAddr::new(agent_address(0).into(), 0))
            .await
            .with_context(|| format!("binding {}", agent_address(0)))?;
        let port = first.local_addr()?.port();
        let mut listeners = vec![first];
        for i in 1..count {
            let addr = SocketAddr::new(agent_address(i).into(), port);
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr}"))?;
            listeners.push(l);
        }
        Ok((port, listeners))
    }

    /// Agents must refuse calls without the token or with a wrong one, and
    /// answer with the right one (as the real agent does).
    async fn check_auth(&self, token: &str) -> anyhow::Result<()> {
        let Some((ip, _)) = self.agents.first() else {
            return Ok(());
        };
        let url = format!("http://{}", SocketAddr::new((*ip).into(), self.port));
        let channel = tonic::transport::Endpoint::from_shared(url)?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(5))
            .connect()
            .await
            .context("connecting to a fake agent")?;
        for (bearer, want_ok) in [
            (None, false),
            (Some("Bearer not-the-token".to_owned()), false),
            (Some(format!("Bearer {token}")), true),
        ] {
            let mut client = pb::agent_control_client::AgentControlClient::new(channel.clone());
            let mut req = Request::new(pb::GetStatusRequest::default());
            if let Some(b) = bearer {
                req.metadata_mut()
                    .insert("authorization", b.parse().context("bearer header")?);
            }
            match (client.get_status(req).await, want_ok) {
                (Ok(_), true) => {}
                (Err(s), false) if s.code() == tonic::Code::Unauthenticated => {}
                (r, _) => bail!(
                    "fake agent auth check: expected {}, got {:?}",
                    if want_ok { "OK" } else { "UNAUTHENTICATED" },
                    r.map(|_| ())
                ),
            }
        }
        for c in [
            &self.log.unauthenticated,
            &self.log.status,
            &self.log.apply,
            &self.log.remove,
        ] {
            c.store(0, Ordering::Relaxed);
        }
        Ok(())
    }

    fn ready_pairs(&self) -> usize {
        let now = Instant::now();
        self.agents.iter().map(|(_, a)| a.ready_count(now)).sum()
    }
}

fn node_name(i: usize) -> String {
    format!("node-{i:05}")
}

fn dataset_name(i: usize) -> String {
    format!("ds-{i:03}")
}

// ---------------------------------------------------------------------------
// Watching the Datasets.

#[derive(Debug, Default, Clone)]
struct Track {
    status: Option<serde_json::Value>,
    /// When each status change was seen.
    writes: Vec<Instant>,
    ready_at: Option<Instant>,
}

type Tracks = Arc<Mutex<BTreeMap<String, Track>>>;

fn status_ready(status: &serde_json::Value) -> bool {
    status["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

/// Follows the Datasets of [`NAMESPACE`], recording every status change.
fn watch_datasets(client: kube::Client, tracks: Tracks) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let api: Api<DynamicObject> = Api::namespaced_with(client, NAMESPACE, &dataset_resource());
        let mut events = watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        while let Some(ev) = events.next().await {
            let obj = match ev {
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => o,
                Ok(_) => continue,
                Err(e) => {
                    tracing::debug!(error = %e, "dataset watch");
                    continue;
                }
            };
            let now = Instant::now();
            let Some(name) = obj.metadata.name.clone() else {
                continue;
            };
            let status = obj.data.get("status").cloned();
            let mut guard = lock(&tracks);
            let t = guard.entry(name).or_default();
            if status.is_some() && status != t.status {
                t.writes.push(now);
                if t.ready_at.is_none() && status.as_ref().is_some_and(status_ready) {
                    t.ready_at = Some(now);
                }
                t.status = status;
            }
        }
    })
}

/// One Dataset's node label (`swarmseed.io/ds.<16 hex>`, as the
/// operator's `node_label::key`) on the Nodes.
#[derive(Debug, Default, Clone)]
struct LabelTrack {
    nodes: std::collections::HashSet<String>,
    /// When every Node carried it.
    complete: Option<Instant>,
}

type LabelTracks = Arc<Mutex<BTreeMap<String, LabelTrack>>>;

/// The label the operator puts on nodes holding `ns/name`.
pub fn dataset_label(ns: &str, name: &str) -> String {
    let h = blake3::hash(format!("{ns}/{name}").as_bytes());
    format!("swarmseed.io/ds.{}", &h.to_hex()[..16])
}

/// Follows the Nodes' labels (metadata only), recording when each
/// Dataset's label is on all `nodes` Nodes.
fn watch_labels(
    client: kube::Client,
    names: &[String],
    nodes: usize,
    tracks: LabelTracks,
) -> tokio::task::JoinHandle<()> {
    let keys: Vec<(String, String)> = names
        .iter()
        .map(|n| (dataset_label(NAMESPACE, n), n.clone()))
        .collect();
    tokio::spawn(async move {
        // `PartialObjectMeta` makes the requests metadata-only.
        let api: Api<PartialObjectMeta<Node>> = Api::all(client);
        let mut events = watcher(
            api,
            watcher::Config::default().labels(&format!("{}={}", NODE_LABEL.0, NODE_LABEL.1)),
        )
        .default_backoff()
        .boxed();
        while let Some(ev) = events.next().await {
            let obj = match ev {
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => o,
                Ok(_) => continue,
                Err(e) => {
                    tracing::debug!(error = %e, "node watch");
                    continue;
                }
            };
            let now = Instant::now();
            let Some(node) = obj.metadata.name.clone() else {
                continue;
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
        }
    })
}

/// Per reconcile round (GetStatus instants `rounds`, ApplyAssignment
/// instants `applies`, both of one agent and Dataset, up to `until`): the
/// time from a GetStatus to the first ApplyAssignment before the next
/// GetStatus, and from that ApplyAssignment to the next GetStatus.
fn phases(rounds: &[Instant], applies: &[Instant], until: Instant) -> (Vec<f64>, Vec<f64>) {
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
fn probe_node_lists(
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

/// (busy, total) jiffies of all CPUs from `/proc/stat`.
fn machine_cpu() -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    parse_proc_stat(&s)
}

/// (busy, total) of the aggregate `cpu` line: busy excludes idle and iowait.
pub fn parse_proc_stat(s: &str) -> Option<(u64, u64)> {
    let line = s.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let get = |i: usize| v.get(i).copied().unwrap_or(0);
    let total: u64 = (0..8).map(get).sum();
    Some((total - get(3) - get(4), total))
}

/// The most instants in any window `[t, t + width)`.
pub fn max_in_window(times: &[f64], width: f64) -> u32 {
    let mut sorted = times.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mut best = 0;
    let mut j = 0;
    for i in 0..sorted.len() {
        while j < sorted.len() && sorted[j] < sorted[i] + width {
            j += 1;
        }
        best = best.max(j - i);
    }
    best as u32
}

/// The smallest gap between consecutive instants.
pub fn min_gap(times: &[f64]) -> Option<f64> {
    let mut sorted = times.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted
        .windows(2)
        .map(|w| w[1] - w[0])
        .min_by(f64::total_cmp)
}

pub fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

// ---------------------------------------------------------------------------
// The operator process.

#[derive(Debug, Clone, Copy, Default)]
struct ProcSample {
    hwm: u64,
    rss: u64,
    threads: u64,
    cpu_ticks: u64,
}

/// utime + stime of `/proc/<pid>/stat`, in clock ticks.
pub fn parse_pid_cpu_ticks(s: &str) -> Option<u64> {
    // The command name may contain spaces and parentheses: fields count
    // from the last ')'. After it come state (3), ppid (4), ... utime (14).
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn status_kb(s: &str, key: &str) -> u64 {
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
}

fn sample(pid: &str) -> Option<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(ProcSample {
        hwm: status_kb(&status, "VmHWM:") * 1024,
        rss: status_kb(&status, "VmRSS:") * 1024,
        threads: status_kb(&status, "Threads:"),
        cpu_ticks: parse_pid_cpu_ticks(&stat).unwrap_or(0),
    })
}

/// Samples the operator every 250 ms, keeping the highest VmHWM and the
/// last sample (a process that exited keeps what was seen).
fn sample_operator(pid: u32, peak: Arc<Mutex<ProcSample>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let pid = pid.to_string();
        loop {
            if let Some(s) = sample(&pid) {
                let mut p = lock(&peak);
                let hwm = p.hwm.max(s.hwm);
                *p = ProcSample { hwm, ..s };
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
}

/// The operator's Prometheus counters by `name{labels}`.
async fn scrape(http: &reqwest::Client, admin: SocketAddr) -> BTreeMap<String, u64> {
    let Ok(resp) = http
        .get(format!("http://{admin}/metrics"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
    else {
        return BTreeMap::new();
    };
    let text = resp.text().await.unwrap_or_default();
    parse_metrics(&text)
}

/// The sum of every series of a metric (`None`: no series).
fn sum_prefix(metrics: &BTreeMap<String, u64>, name: &str) -> Option<u64> {
    let v: Vec<u64> = metrics
        .iter()
        .filter(|(k, _)| k.starts_with(name))
        .map(|(_, v)| *v)
        .collect();
    (!v.is_empty()).then(|| v.iter().sum())
}

pub fn parse_metrics(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.trim().parse::<f64>().ok()? as u64))
        })
        .collect()
}

/// A reverse proxy between the operator and the API stand-in that records
/// when each Dataset status write arrives. The instant is taken before the
/// request is forwarded, so two writes the operator spaced by ≥ 1 s (it
/// sends the next only a second after the previous one was answered) are
/// recorded ≥ 1 s apart: unlike a watch, load can only widen the gaps.
struct ApiProxy {
    addr: SocketAddr,
    writes: Arc<Mutex<Vec<(String, Instant)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ApiProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct ProxyState {
    upstream: String,
    client: reqwest::Client,
    writes: Arc<Mutex<Vec<(String, Instant)>>>,
}

/// The Dataset a request path writes the status of.
pub fn status_write_target(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/apis/swarmseed.io/v1alpha1/namespaces/")?;
    let rest = rest.strip_prefix(NAMESPACE)?.strip_prefix("/datasets/")?;
    let name = rest.strip_suffix("/status")?;
    (!name.is_empty() && !name.contains('/')).then_some(name)
}

fn hop_by_hop(name: &http::HeaderName) -> bool {
    use http::header;
    [
        header::HOST,
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::CONNECTION,
    ]
    .contains(name)
        || name.as_str() == "keep-alive"
}

async fn proxy(
    axum::extract::State(st): axum::extract::State<Arc<ProxyState>>,
    req: axum::extract::Request,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let now = Instant::now();
    let (parts, body) = req.into_parts();
    if parts.method == http::Method::PATCH
        && let Some(name) = status_write_target(parts.uri.path())
    {
        lock(&st.writes).push((name.to_owned(), now));
    }
    let Ok(body) = axum::body::to_bytes(body, 64 << 20).await else {
        return (http::StatusCode::BAD_REQUEST, "unreadable body").into_response();
    };
    let target = format!(
        "{}{}",
        st.upstream,
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut upstream = st.client.request(parts.method, target).body(body);
    for (k, v) in parts.headers.iter().filter(|(k, _)| !hop_by_hop(k)) {
        upstream = upstream.header(k, v);
    }
    match upstream.send().await {
        Ok(resp) => {
            let mut out = http::Response::builder().status(resp.status());
            for (k, v) in resp.headers().iter().filter(|(k, _)| !hop_by_hop(k)) {
                out = out.header(k, v);
            }
            out.body(axum::body::Body::from_stream(resp.bytes_stream()))
                .unwrap_or_else(|e| (http::StatusCode::BAD_GATEWAY, e.to_string()).into_response())
        }
        Err(e) => (http::StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}

impl ApiProxy {
    async fn start(upstream: String) -> anyhow::Result<Self> {
        let (listener, addr) = crate::bind_tcp("127.0.0.1:0".parse()?).await?;
        let writes: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
        let state = Arc::new(ProxyState {
            upstream,
            client: reqwest::Client::builder()
                .no_proxy()
                .connect_timeout(Duration::from_secs(5))
                .build()?,
            writes: writes.clone(),
        });
        let app = axum::Router::new().fallback(proxy).with_state(state);
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!(error = %e, "API proxy stopped");
            }
        });
        Ok(Self { addr, writes, task })
    }

    /// A kubeconfig pointing at the proxy.
    fn write_kubeconfig(&self, path: &Path) -> anyhow::Result<()> {
        // JSON is YAML.
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{ "name": "scale", "cluster": { "server": format!("http://{}", self.addr) } }],
            "users": [{ "name": "scale", "user": {} }],
            "contexts": [{ "name": "scale", "context": { "cluster": "scale", "user": "scale", "namespace": "default" } }],
            "current-context": "scale",
        });
        write_file(path, &config.to_string())
    }
}

fn free_local_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

fn random_token() -> anyhow::Result<String> {
    use std::io::Read as _;
    let mut b = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("reading /dev/urandom")?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn machine() -> Machine {
    let mem_kb = std::fs::read_to_string("/proc/meminfo")
        .map(|s| status_kb(&s, "MemTotal:"))
        .unwrap_or(0);
    Machine {
        nproc: std::thread::available_parallelism().map_or(0, usize::from),
        mem_total_bytes: mem_kb * 1024,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
    }
}

fn secs_between(from: Instant, to: Option<Instant>) -> Option<f64> {
    to.map(|t| {
        if t >= from {
            t.duration_since(from).as_secs_f64()
        } else {
            -from.duration_since(t).as_secs_f64()
        }
    })
}

// ---------------------------------------------------------------------------
// The run.

/// One scale run (see the module documentation).
pub async fn run(args: ScaleRunArgs) -> anyhow::Result<ScaleReport> {
    args.validate()?;
    crate::init_crypto();
    let started = Instant::now();
    let deadline = started + args.timeout;
    let operator_bin = match &args.operator_binary {
        Some(p) => p.clone(),
        None => crate::cluster::find_e2e_binary(None)?.with_file_name("swarmseed-operator"),
    };
    if !operator_bin.is_file() {
        bail!(
            "{} is missing: build it first (cargo build --release --locked --bins)",
            operator_bin.display()
        );
    }
    // A temporary work directory lives until the run returns.
    let mut _temp = None;
    let work: PathBuf = match &args.work_dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            d.clone()
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("swarmseed-scale-")
                .tempdir()
                .context("creating a work directory")?;
            let p = t.path().to_path_buf();
            _temp = Some(t);
            p
        }
    };

    eprintln!(
        "bench-scale: {} fake agents, {} Datasets; starting the API stand-in...",
        args.agents, args.datasets
    );
    let kubeconfig = work.join("kubeconfig");
    let api = ApiServer::start("127.0.0.1:0".parse()?, &kubeconfig, false).await?;
    let client = api.client();
    let out = kubectl(&kubeconfig, &["apply", "-f", "-"], DATASET_CRD).await?;
    if !out.status.success() {
        bail!(
            "kubectl apply of the CRD: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let owner = kube_objects::register_agent_daemonset(&client).await?;
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": NAMESPACE },
    }))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .context("creating the Datasets' namespace")?;

    let token = random_token()?;
    let token_file = work.join("control-token");
    std::fs::write(&token_file, &token).context("writing the control token")?;
    let sim = Sim {
        seed_time: args.seed_time,
        jitter: args.jitter,
    };
    let fleet = Fleet::start(args.agents, &token, sim).await?;
    fleet.check_auth(&token).await?;
    eprintln!(
        "bench-scale: {} fake agents on 127.214.x.y:{} (bearer token checked); registering Nodes and agent Pods...",
        args.agents, fleet.port
    );
    let labels = BTreeMap::from([(NODE_LABEL.0.to_owned(), NODE_LABEL.1.to_owned())]);
    let ports = AgentPorts {
        control: fleet.port,
        ..AgentPorts::default()
    };
    futures::stream::iter(0..args.agents)
        .map(|i| {
            let (client, labels, owner) = (client.clone(), &labels, owner.as_deref());
            async move {
                let (node, ip) = (node_name(i), agent_address(i));
                kube_objects::register_node(&client, &node, labels, ip).await?;
                kube_objects::register_agent_pod(&client, &node, ip, ports, owner).await?;
                kube_objects::set_agent_pod_ready(&client, &node, ip, true, 0).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(16)
        .try_collect::<()>()
        .await
        .context("registering Nodes and agent Pods")?;

    // The origin: one directory of sparse files per Dataset.
    let origin_root = work.join("origin");
    let file_size = args.dataset_size / args.files as u64;
    for d in 0..args.datasets {
        let dir = origin_root.join(dataset_name(d));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for f in 0..args.files {
            let p = dir.join(format!("model-{f:05}-of-{:05}.safetensors", args.files));
            std::fs::File::create(&p)
                .and_then(|file| file.set_len(file_size))
                .with_context(|| format!("creating {}", p.display()))?;
        }
    }
    let origin = HttpOrigin::start(&origin_root, "127.0.0.1:0".parse()?).await?;

    let names: Vec<String> = (0..args.datasets).map(dataset_name).collect();
    let tracks: Tracks = Arc::default();
    let watch = watch_datasets(client.clone(), tracks.clone());
    let label_tracks: LabelTracks = Arc::default();
    let label_watch = watch_labels(client.clone(), &names, args.agents, label_tracks.clone());

    let api_proxy = ApiProxy::start(api.url()).await?;
    let operator_kubeconfig = work.join("operator.kubeconfig");
    api_proxy.write_kubeconfig(&operator_kubeconfig)?;
    let admin = SocketAddr::from(([127, 0, 0, 1], free_local_port()?));
    let log_path = work.join("operator.log");
    let spec = ChildSpec::new(OPERATOR_ID, &operator_bin)
        .arg("run")
        .arg("--control-token-file")
        .arg(&token_file)
        .arg("--control-port")
        .arg(fleet.port.to_string())
        .arg("--identity")
        .arg(OPERATOR_ID)
        .arg("--lease-namespace")
        .arg(AGENT_NAMESPACE)
        .arg("--agent-namespace")
        .arg(AGENT_NAMESPACE)
        .arg("--admin-listen")
        .arg(admin.to_string())
        .env("KUBECONFIG", &operator_kubeconfig)
        .env("POD_NAME", OPERATOR_ID)
        .env("RUST_LOG", "info")
        .log(&log_path);
    let mut operator = ManagedChild::spawn(&spec)?;
    let pid = operator.pid();
    let peak = Arc::new(Mutex::new(ProcSample::default()));
    let sampler = sample_operator(pid, peak.clone());
    let http = reqwest::Client::builder().no_proxy().build()?;
    let log_tail = |op: &ManagedChild| op.log_tail(4000);
    // The leader is ready once it holds the Lease.
    let ready_deadline = (Instant::now() + Duration::from_secs(60)).min(deadline);
    loop {
        let ok = http
            .get(format!("http://{admin}/readyz"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ok {
            break;
        }
        if !operator.is_running() {
            bail!("the operator exited at start:\n{}", log_tail(&operator));
        }
        if Instant::now() > ready_deadline {
            bail!(
                "the operator was not ready within 60 s:\n{}",
                log_tail(&operator)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The Datasets, all at once.
    let datasets: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), NAMESPACE, &dataset_resource());
    let objects = names
        .iter()
        .map(|name| {
            serde_json::from_value::<DynamicObject>(serde_json::json!({
                "apiVersion": "swarmseed.io/v1alpha1",
                "kind": "Dataset",
                "metadata": { "namespace": NAMESPACE, "name": name },
                "spec": {
                    "source": { "uri": format!("{}/{name}/", origin.url()) },
                    "nodeSelector": { NODE_LABEL.0: NODE_LABEL.1 },
                },
            }))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let cpu_before = lock(&peak).cpu_ticks;
    let harness_before = sample("self").map_or(0, |s| s.cpu_ticks);
    let machine_before = machine_cpu();
    let setup_s = started.elapsed().as_secs_f64();
    eprintln!(
        "bench-scale: set up in {setup_s:.1} s; operator pid {pid} ready; creating {} Datasets...",
        args.datasets
    );
    let pp = PostParams::default();
    let list_latencies: Arc<Mutex<Vec<f64>>> = Arc::default();
    let api_probe = probe_node_lists(client.clone(), list_latencies.clone());
    let t0 = Instant::now();
    futures::future::try_join_all(objects.iter().map(|o| datasets.create(&pp, o)))
        .await
        .context("creating the Datasets")?;

    // Until every Dataset is Ready.
    let mut last_report = Instant::now();
    let all_ready_at = loop {
        let ready = {
            let t = lock(&tracks);
            names
                .iter()
                .filter(|n| t.get(*n).is_some_and(|t| t.ready_at.is_some()))
                .count()
        };
        if ready == names.len() {
            break Some(Instant::now());
        }
        if !operator.is_running() {
            eprintln!("bench-scale: the operator exited:\n{}", log_tail(&operator));
            break None;
        }
        if Instant::now() > deadline {
            eprintln!(
                "bench-scale: timed out after {:?} with {ready}/{} Datasets Ready; operator log:\n{}",
                args.timeout,
                names.len(),
                log_tail(&operator)
            );
            break None;
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            last_report = Instant::now();
            let writes: usize = lock(&tracks).values().map(|t| t.writes.len()).sum();
            let p = *lock(&peak);
            eprintln!(
                "bench-scale: t={:>6.1}s  Datasets Ready {ready}/{}  agent×Dataset Ready {}/{}  status writes {writes}  operator RSS {} (peak {}), CPU {:.1} s",
                t0.elapsed().as_secs_f64(),
                names.len(),
                fleet.ready_pairs(),
                args.agents * args.datasets,
                human(p.rss),
                human(p.hwm),
                p.cpu_ticks.saturating_sub(cpu_before) as f64 / USER_HZ,
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let at_ready = sample(&pid.to_string()).unwrap_or_else(|| *lock(&peak));
    let metrics_at_ready = scrape(&http, admin).await;
    let machine_after = machine_cpu();
    api_probe.abort();
    let settle_start = Instant::now();
    if all_ready_at.is_some() {
        eprintln!(
            "bench-scale: every Dataset Ready after {:.1} s; watching {:?} more...",
            t0.elapsed().as_secs_f64(),
            args.settle
        );
        let until = (settle_start + args.settle).min(deadline);
        tokio::time::sleep(until.saturating_duration_since(Instant::now())).await;
    }
    let settle_s = settle_start.elapsed().as_secs_f64();
    let metrics = scrape(&http, admin).await;
    let end = sample(&pid.to_string()).unwrap_or_else(|| *lock(&peak));
    sampler.abort();
    let peak_hwm = lock(&peak).hwm.max(end.hwm);
    // SIGTERM (the operator releases its Lease), SIGKILL after 5 s.
    operator.signal(nix::sys::signal::Signal::SIGTERM);
    let grace = Instant::now() + Duration::from_secs(5);
    while operator.is_running() && Instant::now() < grace {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    operator.kill();
    watch.abort();
    label_watch.abort();
    let harness_after = sample("self").map_or(0, |s| s.cpu_ticks);

    // --- Figures. ---
    let tracks = lock(&tracks).clone();
    let label_tracks = lock(&label_tracks).clone();
    let list_latencies = lock(&list_latencies).clone();
    let status_requests = lock(&api_proxy.writes).clone();
    let status_changes_seen = tracks.values().map(|t| t.writes.len() as u64).sum();
    let mut intervals = Vec::new();
    let (mut discover_plan, mut rest) = (Vec::new(), Vec::new());
    let fleet_log = lock(&fleet.log.datasets).clone();
    let end_of_seed = all_ready_at.unwrap_or_else(Instant::now);
    let mut per_dataset = Vec::new();
    let mut all_window = 0u32;
    let mut gaps = Vec::new();
    for name in &names {
        let t = tracks.get(name).cloned().unwrap_or_default();
        let log = fleet_log
            .get(&format!("{NAMESPACE}/{name}"))
            .cloned()
            .unwrap_or_default();
        let until = t.ready_at.unwrap_or(end_of_seed);
        let requests: Vec<Instant> = status_requests
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, at)| *at)
            .collect();
        let seeding: Vec<f64> = requests
            .iter()
            .filter(|w| **w <= until)
            .map(|w| secs_between(t0, Some(*w)).unwrap_or(0.0))
            .collect();
        let all: Vec<f64> = requests
            .iter()
            .map(|w| secs_between(t0, Some(*w)).unwrap_or(0.0))
            .collect();
        let window = max_in_window(&all, 1.0);
        all_window = all_window.max(window);
        let gap = min_gap(&all);
        gaps.extend(gap);
        let ready_s = secs_between(t0, t.ready_at);
        let labelled_s = secs_between(t0, label_tracks.get(name).and_then(|l| l.complete));
        let rounds: Vec<f64> = log
            .rounds
            .iter()
            .filter(|r| **r <= until)
            .map(|r| secs_between(t0, Some(*r)).unwrap_or(0.0))
            .collect();
        let gaps_of_rounds: Vec<f64> = rounds.windows(2).map(|w| w[1] - w[0]).collect();
        intervals.extend(gaps_of_rounds.iter().copied());
        let (dp, r) = phases(&log.rounds, &log.apply_rounds, until);
        discover_plan.extend(dp);
        rest.extend(r);
        let last_agent_ready_s = secs_between(t0, log.last_ready);
        let span = secs_between(t0, Some(until)).unwrap_or(0.0).max(1e-3);
        per_dataset.push(DatasetFigures {
            name: name.clone(),
            ready_s,
            last_agent_ready_s,
            ready_after_last_agent_s: ready_s.zip(last_agent_ready_s).map(|(r, a)| r - a),
            labelled_s,
            labelled_after_last_agent_s: labelled_s.zip(last_agent_ready_s).map(|(l, a)| l - a),
            reconciles_until_ready: rounds.len() as u64,
            reconcile_interval_s: median(&gaps_of_rounds),
            reconcile_rounds_s: rounds
                .iter()
                .map(|r| (r * 1000.0).round() / 1000.0)
                .collect(),
            status_writes: seeding.len() as u64,
            max_writes_in_1s: window,
            min_write_gap_s: gap,
            writes_per_s: seeding.len() as f64 / span,
            writes_after_ready: (all.len() - seeding.len()) as u64,
        });
    }
    let latencies: Vec<f64> = per_dataset
        .iter()
        .filter_map(|d| d.ready_after_last_agent_s)
        .collect();
    let labelled_latencies: Vec<f64> = per_dataset
        .iter()
        .filter_map(|d| d.labelled_after_last_agent_s)
        .collect();
    let last_agent_ready = fleet_log.values().filter_map(|l| l.last_ready).max();
    let last_dataset_ready = tracks.values().filter_map(|t| t.ready_at).max();
    let datasets_ready = per_dataset.iter().filter(|d| d.ready_s.is_some()).count();
    let metric = |k: &str| metrics.get(k).copied();
    let operator_agent_calls = metrics
        .iter()
        .filter_map(|(k, v)| {
            let labels = k.strip_prefix("swarmseed_operator_agent_calls_total{")?;
            let get = |key: &str| {
                labels
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(&format!("{key}=\"")))
                    .map(|v| v.trim_end_matches('}').trim_end_matches('"').to_owned())
            };
            Some((format!("{}/{}", get("method")?, get("result")?), *v))
        })
        .collect();
    let seeding_writes: u64 = per_dataset.iter().map(|d| d.status_writes).sum();
    let status_writes_mean_per_s = if per_dataset.is_empty() {
        0.0
    } else {
        per_dataset.iter().map(|d| d.writes_per_s).sum::<f64>() / per_dataset.len() as f64
    };
    let chunk_size = tracks
        .values()
        .find_map(|t| t.status.as_ref()?.get("chunkSize")?.as_u64());
    let ticks = |a: u64, b: u64| b.saturating_sub(a) as f64 / USER_HZ;
    drop(origin);
    let assigned_pairs = fleet_log.values().map(|d| d.assigned).sum();
    // Only when every Dataset reached every agent.
    let all_assigned = (fleet_log.len() == args.datasets
        && fleet_log.values().all(|d| d.assigned >= args.agents as u64))
    .then(|| {
        fleet_log
            .values()
            .filter_map(|d| d.last_first_assigned)
            .max()
    })
    .flatten();
    let first_assigned = fleet_log.values().filter_map(|d| d.first_assigned).min();
    let report = ScaleReport {
        command: args.command(),
        agents: args.agents,
        datasets: args.datasets,
        seed_time_s: args.seed_time.as_secs_f64(),
        jitter: args.jitter,
        dataset_bytes: file_size * args.files as u64,
        dataset_files: args.files,
        chunk_size,
        all_ready: all_ready_at.is_some(),
        datasets_ready,
        wall_s: 0.0,
        setup_s,
        first_assignment_s: secs_between(t0, first_assigned),
        all_assigned_s: secs_between(t0, all_assigned),
        assigned_pairs,
        last_agent_ready_s: secs_between(t0, last_agent_ready),
        last_dataset_ready_s: secs_between(t0, last_dataset_ready),
        ready_after_last_agent_median_s: median(&latencies),
        ready_after_last_agent_max_s: latencies.iter().copied().max_by(f64::total_cmp),
        labelled_after_last_agent_median_s: median(&labelled_latencies),
        labelled_after_last_agent_max_s: labelled_latencies.iter().copied().max_by(f64::total_cmp),
        reconcile_interval_median_s: median(&intervals),
        all_ready_after_last_agent_s: last_dataset_ready
            .zip(last_agent_ready)
            .and_then(|(d, a)| secs_between(a, Some(d))),
        status_writes: seeding_writes,
        status_writes_max_per_s: all_window,
        status_writes_mean_per_s,
        status_write_min_gap_s: gaps.iter().copied().min_by(f64::total_cmp),
        status_writes_after_ready: per_dataset.iter().map(|d| d.writes_after_ready).sum(),
        status_changes_seen,
        operator_status_writes: metric("swarmseed_operator_status_writes_total"),
        operator_reconciles: sum_prefix(&metrics, "swarmseed_operator_reconciles_total"),
        // No series until the first error.
        operator_reconcile_errors: sum_prefix(
            &metrics,
            "swarmseed_operator_reconcile_errors_total",
        )
        .or_else(|| (!metrics.is_empty()).then_some(0)),
        operator_agent_calls,
        agent_apply_calls: fleet.log.apply.load(Ordering::Relaxed),
        agent_apply_changed: fleet.log.apply_changed.load(Ordering::Relaxed),
        agent_status_calls: fleet.log.status.load(Ordering::Relaxed),
        agent_remove_calls: fleet.log.remove.load(Ordering::Relaxed),
        agent_unauthenticated_calls: fleet.log.unauthenticated.load(Ordering::Relaxed),
        operator_peak_rss_bytes: peak_hwm,
        operator_rss_at_ready_bytes: at_ready.rss,
        operator_rss_final_bytes: end.rss,
        operator_threads: end.threads,
        operator_cpu_s: end.cpu_ticks as f64 / USER_HZ,
        operator_cpu_seed_s: ticks(cpu_before, at_ready.cpu_ticks),
        operator_cpu_settle_s: ticks(at_ready.cpu_ticks, end.cpu_ticks),
        operator_reconciles_settle: sum_prefix(&metrics, "swarmseed_operator_reconciles_total")
            .zip(sum_prefix(
                &metrics_at_ready,
                "swarmseed_operator_reconciles_total",
            ))
            .map(|(b, a)| b.saturating_sub(a)),
        operator_status_writes_settle: metric("swarmseed_operator_status_writes_total")
            .zip(
                metrics_at_ready
                    .get("swarmseed_operator_status_writes_total")
                    .copied(),
            )
            .map(|(b, a)| b.saturating_sub(a)),
        settle_s,
        harness_cpu_s: ticks(harness_before, harness_after),
        machine_cpu_busy: machine_before
            .zip(machine_after)
            .map_or(0.0, |((b0, t0), (b1, t1))| {
                b1.saturating_sub(b0) as f64 / t1.saturating_sub(t0).max(1) as f64
            }),
        api_list_nodes_median_s: median(&list_latencies),
        api_list_nodes_max_s: list_latencies.iter().copied().max_by(f64::total_cmp),
        reconcile_discover_plan_median_s: median(&discover_plan),
        reconcile_rest_median_s: median(&rest),
        rss_target_met: peak_hwm <= RSS_TARGET_BYTES,
        writes_target_met: all_window <= WRITES_PER_S_TARGET,
        per_dataset,
        machine: machine(),
    };
    drop(fleet);
    api.shutdown().await;
    Ok(ScaleReport {
        wall_s: started.elapsed().as_secs_f64(),
        ..report
    })
}

// ---------------------------------------------------------------------------
// Output.

fn human(bytes: u64) -> String {
    if bytes >= GIB {
        format!("{:.2} GiB", bytes as f64 / GIB as f64)
    } else {
        format!("{:.1} MiB", bytes as f64 / MIB as f64)
    }
}

fn secs(s: Option<f64>) -> String {
    s.map_or("-".to_owned(), |s| format!("{s:.1} s"))
}

/// Prints the summary; with `json` the JSON object as the last line.
pub fn print(r: &ScaleReport, json: bool) -> anyhow::Result<()> {
    println!("{}", r.command);
    println!(
        "setup                 {} fake agents (tonic, bearer token checked), {} Datasets × {} nodes, {} in {} files each (chunk {}); seed time {:.0} s ± {:.0} %",
        r.agents,
        r.datasets,
        r.agents,
        human(r.dataset_bytes),
        r.dataset_files,
        r.chunk_size.map_or("-".into(), human),
        r.seed_time_s,
        100.0 * r.jitter
    );
    println!(
        "Datasets Ready        {}/{}; last agent Ready at {}, last Dataset Ready at {}",
        r.datasets_ready,
        r.datasets,
        secs(r.last_agent_ready_s),
        secs(r.last_dataset_ready_s)
    );
    println!(
        "Ready after the last agent   median {}, max {} (per Dataset); all Datasets {} after the last agent of all",
        secs(r.ready_after_last_agent_median_s),
        secs(r.ready_after_last_agent_max_s),
        secs(r.all_ready_after_last_agent_s)
    );
    println!(
        "node labels           all Nodes labelled after the Dataset's last agent: median {}, max {}; a Dataset reconciled every {} (median)",
        secs(r.labelled_after_last_agent_median_s),
        secs(r.labelled_after_last_agent_max_s),
        secs(r.reconcile_interval_median_s)
    );
    println!(
        "one reconcile         GetStatus → ApplyAssignment at one agent {} (discover, plan), then {} to the next (send, label, status, wait); LIST of every Node {} (max {})",
        secs(r.reconcile_discover_plan_median_s),
        secs(r.reconcile_rest_median_s),
        r.api_list_nodes_median_s
            .map_or("-".into(), |s| format!("{:.0} ms", s * 1000.0)),
        r.api_list_nodes_max_s
            .map_or("-".into(), |s| format!("{:.0} ms", s * 1000.0)),
    );
    println!(
        "assignments           first after {}, every agent × Dataset after {} ({} of {})",
        secs(r.first_assignment_s),
        secs(r.all_assigned_s),
        r.assigned_pairs,
        r.agents * r.datasets
    );
    println!(
        "status writes         {} while seeding (operator counted {}, watch saw {} changes in all); per Dataset: at most {} in any 1 s (target ≤ {WRITES_PER_S_TARGET}: {}), mean {:.2}/s, smallest gap {}; {} after Ready",
        r.status_writes,
        r.operator_status_writes
            .map_or("-".to_owned(), |n| n.to_string()),
        r.status_changes_seen,
        r.status_writes_max_per_s,
        if r.writes_target_met { "met" } else { "MISSED" },
        r.status_writes_mean_per_s,
        r.status_write_min_gap_s
            .map_or("-".to_owned(), |g| format!("{g:.3} s")),
        r.status_writes_after_ready
    );
    println!(
        "operator              peak RSS {} (target ≤ {}: {}), RSS at Ready {}, {} threads",
        human(r.operator_peak_rss_bytes),
        human(RSS_TARGET_BYTES),
        if r.rss_target_met { "met" } else { "MISSED" },
        human(r.operator_rss_at_ready_bytes),
        r.operator_threads
    );
    let seed_span = r.last_dataset_ready_s.unwrap_or(0.0).max(1e-3);
    println!(
        "operator CPU          {:.1} s while seeding ({:.2} cores), {:.1} s in {:.0} s at rest ({} reconciles, {} status writes), {:.1} s in all; harness (stand-in, fakes) {:.1} s; machine {:.0} % busy while seeding",
        r.operator_cpu_seed_s,
        r.operator_cpu_seed_s / seed_span,
        r.operator_cpu_settle_s,
        r.settle_s,
        r.operator_reconciles_settle
            .map_or("-".into(), |n| n.to_string()),
        r.operator_status_writes_settle
            .map_or("-".into(), |n| n.to_string()),
        r.operator_cpu_s,
        r.harness_cpu_s,
        100.0 * r.machine_cpu_busy
    );
    println!(
        "agent calls           ApplyAssignment {} ({} changed), GetStatus {}, RemoveDataset {}, unauthenticated {}; reconciles {} ({} errors)",
        r.agent_apply_calls,
        r.agent_apply_changed,
        r.agent_status_calls,
        r.agent_remove_calls,
        r.agent_unauthenticated_calls,
        r.operator_reconciles.map_or("-".into(), |n| n.to_string()),
        r.operator_reconcile_errors.unwrap_or(0)
    );
    println!(
        "wall time             {:.1} s (setup {:.1} s)",
        r.wall_s, r.setup_s
    );
    if json {
        println!("{}", serde_json::to_string(r)?);
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// render: the RESULTS.md section.

#[derive(Debug, Clone, clap::Args)]
pub struct ScaleRenderArgs {
    /// JSON reports, one per line (other lines are ignored).
    #[arg(long)]
    pub input: PathBuf,
    /// The markdown file to update between its scale markers (appended
    /// when it has none).
    #[arg(long)]
    pub results: PathBuf,
    /// The date of the run, shown in the heading.
    #[arg(long, default_value = "")]
    pub date: String,
    /// A paragraph shown above the table.
    #[arg(long, default_value = "")]
    pub note: String,
}

fn render(args: &ScaleRenderArgs) -> anyhow::Result<()> {
    let input = std::fs::read_to_string(&args.input)
        .with_context(|| format!("reading {}", args.input.display()))?;
    let reports: Vec<ScaleReport> = input
        .lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("parsing the reports")?;
    if reports.is_empty() {
        bail!("no reports in {}", args.input.display());
    }
    let existing = std::fs::read_to_string(&args.results).unwrap_or_default();
    let section = results_section(&reports, &args.date, &args.note);
    write_file(&args.results, &splice_section(&existing, &section))
}

fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// The generated section, markers included.
pub fn results_section(reports: &[ScaleReport], date: &str, note: &str) -> String {
    let m = reports
        .first()
        .map(|r| r.machine.clone())
        .unwrap_or_default();
    let mut s = String::new();
    s.push_str(RESULTS_BEGIN);
    s.push_str("\n## Control plane at scale (`e2e bench-scale`)\n\n");
    if !date.is_empty() {
        s.push_str(&format!("Run {date}. "));
    }
    s.push_str(&format!(
        "Machine: {} CPUs, {:.1} GiB memory, Linux {}, release build, one run per row. \
Targets at 500 nodes: operator peak RSS ≤ {}, at most {WRITES_PER_S_TARGET} status write per second per Dataset.\n\n",
        m.nproc,
        m.mem_total_bytes as f64 / GIB as f64,
        m.kernel,
        human(RSS_TARGET_BYTES),
    ));
    s.push_str(
        "The real operator against the API stand-in, N simulated agents (in-process \
tonic servers of the agent control API, one per 127.214.x.y address, behind the real \
agent's token check) on N Nodes, and M Datasets created at once, each selecting every \
node and listing sparse files from an HTTP origin. A fake agent accepts assignments as \
the agent does and reports progress from Pending to Ready over the seed time ± 25 %. \
*Status writes*: the operator's status PATCHes of one Dataset, timed as they reach the \
API (through a proxy), the most in any 1-second window (max over Datasets) and the mean \
rate from creation to Ready. *Ready after last \
agent*: from the instant a Dataset's last agent turned Ready to its `Ready=True` \
(median / max over Datasets). *Reconcile every*: the median time between two \
reconciles of one Dataset (its GetStatus calls at one agent). *Assigned*: when every \
agent held every Dataset's assignment. CPU: the operator's, from creation to all Ready; \
*machine busy*: all CPUs, every process (the harness, i.e. stand-in and fakes, and \
anyone else's work share them).\n\n",
    );
    if !note.is_empty() {
        s.push_str(note.trim());
        s.push_str("\n\n");
    }
    s.push_str(
        "| command | Ready | operator peak RSS | status writes / s per Dataset (max in 1 s, mean) | Ready after last agent (median / max) | reconcile every (median) | all assigned | operator CPU (cores) | machine busy | GetStatus / ApplyAssignment calls | wall |\n",
    );
    s.push_str("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    for r in reports {
        let span = r.last_dataset_ready_s.unwrap_or(0.0).max(1e-3);
        s.push_str(&format!(
            "| `{}` | {}/{} | **{}** | **{}**, {:.2} | {} / **{}** | {} | {} | {:.1} s ({:.2}) | {:.0} % | {} / {} | {:.0} s |\n",
            r.command,
            r.datasets_ready,
            r.datasets,
            human(r.operator_peak_rss_bytes),
            r.status_writes_max_per_s,
            r.status_writes_mean_per_s,
            secs(r.ready_after_last_agent_median_s),
            secs(r.ready_after_last_agent_max_s),
            secs(r.reconcile_interval_median_s),
            secs(r.all_assigned_s),
            r.operator_cpu_seed_s,
            r.operator_cpu_seed_s / span,
            100.0 * r.machine_cpu_busy,
            r.agent_status_calls,
            r.agent_apply_calls,
            r.wall_s,
        ));
    }
    s.push_str(RESULTS_END);
    s.push('\n');
    s
}

/// Replaces the text between the scale markers (inclusive) with
/// `section`, or appends it when they are missing.
pub fn splice_section(existing: &str, section: &str) -> String {
    crate::bench::splice_marked(existing, RESULTS_BEGIN, RESULTS_END, section)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn addresses_are_distinct_loopback() {
        let a: std::collections::BTreeSet<Ipv4Addr> = (0..1000).map(agent_address).collect();
        assert_eq!(a.len(), 1000);
        assert!(a.iter().all(|ip| ip.is_loopback() && ip.octets()[3] != 0));
    }

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

    #[test]
    fn status_writes_are_told_by_their_path() {
        let p = "/apis/swarmseed.io/v1alpha1/namespaces/scale/datasets/ds-001/status";
        assert_eq!(status_write_target(p), Some("ds-001"));
        for other in [
            "/apis/swarmseed.io/v1alpha1/namespaces/scale/datasets/ds-001",
            "/apis/swarmseed.io/v1alpha1/namespaces/other/datasets/ds-001/status",
            "/apis/swarmseed.io/v1alpha1/namespaces/scale/datasets//status",
            "/api/v1/nodes/n/status",
        ] {
            assert_eq!(status_write_target(other), None, "{other}");
        }
    }

    #[test]
    fn windows_gaps_and_medians() {
        assert_eq!(max_in_window(&[], 1.0), 0);
        assert_eq!(max_in_window(&[0.0, 1.0, 2.0, 3.0], 1.0), 1);
        assert_eq!(max_in_window(&[0.0, 0.99, 2.0], 1.0), 2);
        assert_eq!(max_in_window(&[3.0, 0.2, 0.1, 0.3, 5.0], 1.0), 3);
        assert!((min_gap(&[0.0, 1.5, 1.1]).unwrap() - 0.4).abs() < 1e-9);
        assert_eq!(min_gap(&[1.0]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn metrics_and_proc_parse() {
        let text = "# HELP x\nswarmseed_operator_status_writes_total 42\nswarmseed_operator_agent_calls_total{method=\"apply\",result=\"ok\"} 7\n";
        let m = parse_metrics(text);
        assert_eq!(m["swarmseed_operator_status_writes_total"], 42);
        assert_eq!(
            m["swarmseed_operator_agent_calls_total{method=\"apply\",result=\"ok\"}"],
            7
        );
        let pid = "1234 (swarm seed) op) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 9 0";
        assert_eq!(parse_pid_cpu_ticks(pid), Some(325));
        assert_eq!(status_kb("VmHWM:\t  2048 kB\n", "VmHWM:"), 2048);
        let stat = "cpu  100 5 50 800 20 3 2 10 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        assert_eq!(parse_proc_stat(stat), Some((170, 990)));
    }

    fn sample_report() -> ScaleReport {
        ScaleReport {
            command: "e2e bench-scale --agents 500 --datasets 20 --seed-time 20s".into(),
            agents: 500,
            datasets: 20,
            seed_time_s: 20.0,
            jitter: 0.25,
            dataset_bytes: 4 << 30,
            dataset_files: 4,
            chunk_size: Some(1 << 20),
            all_ready: true,
            datasets_ready: 20,
            wall_s: 60.0,
            setup_s: 10.0,
            first_assignment_s: Some(0.5),
            all_assigned_s: Some(5.0),
            assigned_pairs: 10_000,
            last_agent_ready_s: Some(30.0),
            last_dataset_ready_s: Some(32.0),
            ready_after_last_agent_median_s: Some(1.0),
            ready_after_last_agent_max_s: Some(2.0),
            labelled_after_last_agent_median_s: Some(0.8),
            labelled_after_last_agent_max_s: Some(1.5),
            reconcile_interval_median_s: Some(2.0),
            all_ready_after_last_agent_s: Some(2.0),
            status_writes: 500,
            status_writes_max_per_s: 1,
            status_writes_mean_per_s: 0.8,
            status_write_min_gap_s: Some(1.01),
            status_writes_after_ready: 0,
            status_changes_seen: 500,
            operator_status_writes: Some(510),
            operator_reconciles: Some(900),
            operator_reconcile_errors: Some(0),
            operator_agent_calls: BTreeMap::from([("apply/ok".to_owned(), 10)]),
            agent_apply_calls: 10,
            agent_apply_changed: 10,
            agent_status_calls: 100,
            agent_remove_calls: 0,
            agent_unauthenticated_calls: 0,
            operator_peak_rss_bytes: 100 << 20,
            operator_rss_at_ready_bytes: 90 << 20,
            operator_rss_final_bytes: 90 << 20,
            operator_threads: 4,
            operator_cpu_s: 40.0,
            operator_cpu_seed_s: 30.0,
            operator_cpu_settle_s: 1.0,
            operator_reconciles_settle: Some(20),
            operator_status_writes_settle: Some(0),
            settle_s: 10.0,
            harness_cpu_s: 20.0,
            machine_cpu_busy: 0.9,
            api_list_nodes_median_s: Some(0.01),
            api_list_nodes_max_s: Some(0.1),
            reconcile_discover_plan_median_s: Some(1.0),
            reconcile_rest_median_s: Some(1.0),
            rss_target_met: true,
            writes_target_met: true,
            per_dataset: vec![],
            machine: Machine {
                nproc: 2,
                mem_total_bytes: 24 << 30,
                kernel: "6.18.0".into(),
            },
        }
    }

    #[test]
    fn the_results_section_keeps_the_data_plane_section() {
        let section = results_section(&[sample_report()], "2026-12-01", "Quick run.");
        assert!(
            section.starts_with(RESULTS_BEGIN) && section.ends_with(&format!("{RESULTS_END}\n"))
        );
        assert!(section.contains(
            "| `e2e bench-scale --agents 500 --datasets 20 --seed-time 20s` | 20/20 | **100.0 MiB** | **1**, 0.80 | 1.0 s / **2.0 s** | 2.0 s |"
        ));
        let data_plane = "# Results\n\n<!-- BEGIN e2e/bench/run.sh: generated, edits here are overwritten -->\nrows\n<!-- END e2e/bench/run.sh -->\n";
        let once = splice_section(data_plane, &section);
        assert!(once.starts_with(data_plane));
        assert_eq!(splice_section(&once, &section), once);
        let line = serde_json::to_string(&sample_report()).unwrap();
        assert_eq!(
            serde_json::from_str::<ScaleReport>(&line).unwrap(),
            sample_report()
        );
    }
}
