//! `e2e bench`: the headline numbers of DESIGN.md ("What fast means
//! here") for one topology, through the whole product, with the baselines
//! measured in the same run on the same links.
//!
//! One run:
//!
//! 1. A [`SeedCluster`]: the API stand-in, N nodes in network namespaces
//!    running the real agent, the operator. Every node link and the origin
//!    link are shaped to `--link-mbit` in both directions. Every node root,
//!    and the origin's files, are on an ext4 filesystem of their own, made
//!    fresh for the run ([`crate::disk`]). A generated dataset is served by
//!    the HTTP origin.
//! 2. **Seed**: `kubectl apply` of a Dataset (every node, default chunk
//!    size, `origin.maxFetchers` = N so the origin's one copy leaves over its
//!    link in N disjoint shares). The makespan runs from just before
//!    `kubectl apply` until every agent reports the revision Ready
//!    (published and durable), polled every 100 ms; the time the Dataset's
//!    `Ready` condition turned True is recorded beside it. Origin bytes come
//!    from the origin's own counter; CPU and disk utilisation from
//!    `/proc/stat` and `/proc/diskstats` deltas over the seed; agents' peak
//!    RSS from `VmHWM`.
//! 3. **Bound**: Kumar–Ross T* for the topology ([`kumar_ross_bound`]).
//! 4. **Naive baseline**: the Dataset is deleted, then every node GETs the
//!    whole dataset straight from the origin at once (`e2e bench
//!    fetch-all` in each node's namespace: an nginx-JSON listing, 8
//!    parallel GETs, every file written and made durable as the agents do:
//!    an fsync per file, or one `syncfs` for more than 64 files).
//! 5. **One peer link**: one agent pulls a probe dataset (about 4 s of the
//!    link, the seed's chunk size) from exactly one peer that already holds
//!    it (node-0 → node-1, assigned over the control API with node-0 as the
//!    only origin fetcher), against raw TCP (`e2e netbench`, one stream) on
//!    the same pair of nodes. Both rates exclude the start: the peer rate
//!    runs from the first verified byte to the last, the TCP rate from
//!    0.5 s after the first byte.
//!
//! T* uses the nominal link rate; TCP goodput through `tc tbf` is a few per
//! cent below it, so makespan / T* cannot quite reach 1 (the raw TCP rate
//! shows what a link delivers). The peer and TCP rates are sampled
//! differently (agent progress polled every 20 ms, chunk-granular, against
//! netbench's receiver), so their ratio carries a few per cent of noise
//! and may exceed 100 %.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::{StreamExt as _, TryStreamExt as _};
use serde::{Deserialize, Serialize};
use swarmseed_proto::pb;
use tokio::io::AsyncWriteExt as _;

use crate::agent_api::{self, AgentControl, Bearer};
use crate::netbench::NetbenchResult;
use crate::origin::dataset::{DatasetSpec, generate_dataset, tree_digest};
use crate::origin::http::ListingEntry;
use crate::seeding::{Binaries, SeedCluster, dataset_yaml};
use crate::{ClusterSpec, NetworkMode, Placement};

const NAMESPACE: &str = "bench";
const NAME: &str = "bench";
/// The probe dataset of the peer-link measurement, assigned directly over
/// the control API (the operator only touches Datasets it owns).
const PROBE_NAMESPACE: &str = "bench-probe";
const PROBE_NAME: &str = "probe";
const PROBE_SECONDS: f64 = 4.0;
/// Port of the netbench receiver inside a node (the agent has 7400–7402).
const NETBENCH_PORT: u16 = 7499;
const POLL: Duration = Duration::from_millis(100);
/// How long to keep polling for the Dataset's Ready condition after every
/// agent is Ready (status writes are rate-limited to about 1/s).
const STATUS_GRACE: Duration = Duration::from_secs(30);
/// How often the seed's progress is printed to stderr.
const REPORT_EVERY: Duration = Duration::from_secs(2);
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// `/proc/<pid>/stat` counts CPU time in USER_HZ, which Linux fixes at 100
/// for user space on every architecture we run on.
const USER_HZ: f64 = 100.0;
const RESULTS_BEGIN: &str =
    "<!-- BEGIN e2e/bench/run.sh: generated, edits here are overwritten -->";
const RESULTS_END: &str = "<!-- END e2e/bench/run.sh -->";

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub tool: Option<BenchTool>,
    #[command(flatten)]
    pub run: RunArgs,
}

/// Helpers the benchmark runs (hidden from `--help`).
#[derive(Debug, clap::Subcommand)]
pub enum BenchTool {
    /// The naive baseline's client: list an nginx-JSON directory and GET
    /// every file into a directory; prints one JSON line.
    #[command(hide = true)]
    FetchAll(FetchAllArgs),
    /// Write the results table of JSON reports (one per line) into a
    /// markdown file between markers, keeping the rest of the file.
    #[command(hide = true)]
    Render(RenderArgs),
}

/// One benchmark run.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Number of nodes (at least 2).
    #[arg(long, env = "BENCH_NODES", default_value_t = 4)]
    pub nodes: usize,
    /// Dataset size (e.g. 1GiB, 256MiB): four equal big files, or with
    /// --small-files that many small files totalling this.
    #[arg(long, env = "BENCH_SIZE", default_value = "256MiB", value_parser = crate::demo::parse_size)]
    pub size: u64,
    /// Rate of every node link and of the origin link, Mbit/s, both
    /// directions.
    #[arg(long, env = "BENCH_LINK_MBIT", default_value_t = 200)]
    pub link_mbit: u32,
    /// A dataset of this many small files (sizes uniform in ±50 % of the
    /// mean) instead of four big ones.
    #[arg(long, env = "BENCH_SMALL_FILES")]
    pub small_files: Option<usize>,
    /// `spec.origin.maxFetchers` (default: the number of nodes, so every
    /// node reads a disjoint 1/N of the origin).
    #[arg(long, env = "BENCH_MAX_FETCHERS")]
    pub max_fetchers: Option<u32>,
    /// Give up on a phase (seed, naive download) after this long.
    #[arg(long, env = "BENCH_TIMEOUT", default_value = "30m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Print one JSON object as the last line of stdout.
    #[arg(long, env = "BENCH_JSON")]
    pub json: bool,
    /// With every progress line on stderr, print each node's share
    /// verified, its download rates from the origin and from peers, and its
    /// upload rate to peers.
    #[arg(long, env = "BENCH_PER_NODE")]
    pub per_node: bool,
    /// Keep the work directory (agent, operator and origin logs) after the
    /// run; its path is printed at the end.
    #[arg(long, env = "BENCH_KEEP_WORK_DIR")]
    pub keep_work_dir: bool,
}

impl RunArgs {
    fn max_fetchers(&self) -> u32 {
        self.max_fetchers
            .unwrap_or(u32::try_from(self.nodes).unwrap_or(u32::MAX))
    }

    /// The command line that reproduces this run.
    pub fn command(&self) -> String {
        let mut c = format!(
            "e2e bench --nodes {} --size {} --link-mbit {}",
            self.nodes,
            format_size(self.size),
            self.link_mbit
        );
        if let Some(k) = self.small_files {
            c.push_str(&format!(" --small-files {k}"));
        }
        if let Some(m) = self.max_fetchers {
            c.push_str(&format!(" --max-fetchers {m}"));
        }
        c
    }

    /// The generated dataset.
    fn dataset(&self) -> anyhow::Result<DatasetSpec> {
        Ok(match self.small_files {
            None => DatasetSpec {
                seed: 42,
                big_files: 4,
                big_file_size: (self.size / 4).max(1),
                small_files: 0,
                small_file_min: 0,
                small_file_max: 0,
                small_dirs: 1,
            },
            Some(k) => {
                let mean = self.size / k.max(1) as u64;
                if k == 0 || mean == 0 {
                    bail!(
                        "--small-files {k} with --size {}: need at least one byte per file",
                        self.size
                    );
                }
                DatasetSpec {
                    seed: 42,
                    big_files: 0,
                    big_file_size: 0,
                    small_files: k,
                    small_file_min: mean / 2,
                    small_file_max: mean + mean / 2,
                    small_dirs: k.div_ceil(1000),
                }
            }
        })
    }
}

/// `1GiB`, `64MiB`, `4KiB` or plain bytes (what [`crate::demo::parse_size`]
/// reads).
pub fn format_size(bytes: u64) -> String {
    match bytes {
        0 => "0".into(),
        b if b.is_multiple_of(GIB) => format!("{}GiB", b / GIB),
        b if b.is_multiple_of(MIB) => format!("{}MiB", b / MIB),
        b if b.is_multiple_of(1024) => format!("{}KiB", b / 1024),
        b => b.to_string(),
    }
}

/// Kumar & Ross (2006): no schedule distributes a file of `file_bytes`
/// from a server with upload `server_upload` to peers with uploads
/// `peer_uploads` and downloads `peer_downloads` (bytes/s) faster than
/// `max(F/u_s, F/d_min, N·F/(u_s + Σu_i))` seconds.
pub fn kumar_ross_bound(
    file_bytes: f64,
    server_upload: f64,
    peer_uploads: &[f64],
    peer_downloads: &[f64],
) -> f64 {
    let n = peer_downloads.len() as f64;
    let d_min = peer_downloads.iter().copied().fold(f64::INFINITY, f64::min);
    let total_upload = server_upload + peer_uploads.iter().sum::<f64>();
    (file_bytes / server_upload)
        .max(file_bytes / d_min)
        .max(n * file_bytes / total_upload)
}

/// Bytes/s of a link of `mbit` Mbit/s (`tc`'s mbit is 10^6 bit/s).
pub fn mbit_to_bytes_per_s(mbit: u32) -> f64 {
    f64::from(mbit) * 1e6 / 8.0
}

/// T* of the bench topology: `nodes` peers and the origin, every link
/// `link_mbit` both ways.
pub fn bound_for_uniform_links(dataset_bytes: u64, nodes: usize, link_mbit: u32) -> f64 {
    let rate = mbit_to_bytes_per_s(link_mbit);
    kumar_ross_bound(
        dataset_bytes as f64,
        rate,
        &vec![rate; nodes],
        &vec![rate; nodes],
    )
}

/// The machine the run was on.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Machine {
    pub nproc: usize,
    pub mem_total_bytes: u64,
    pub kernel: String,
}

impl Machine {
    fn current() -> Self {
        let mem_total_bytes = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .map_or(0, |kb| kb * 1024);
        Self {
            nproc: std::thread::available_parallelism().map_or(0, usize::from),
            mem_total_bytes,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
        }
    }
}

/// What one run measured. Times in seconds, rates in bytes/s, utilisation
/// as fractions (CPU: of all CPUs; disk: of the busiest whole disk's time).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BenchReport {
    pub command: String,
    pub nodes: usize,
    pub dataset_bytes: u64,
    pub dataset_files: usize,
    pub chunk_size: u64,
    pub link_mbit: u32,
    pub max_fetchers: u32,
    /// From just before `kubectl apply` to every agent reporting Ready.
    pub makespan_s: f64,
    /// When any agent was first seen with a verified byte: the control
    /// plane's share of the makespan (kubectl, listing, planning, commands).
    pub first_byte_s: Option<f64>,
    /// When the Dataset's `Ready` condition was first seen True.
    pub status_ready_s: Option<f64>,
    /// When each node's agent was first seen Ready, by node order.
    pub node_ready_s: Vec<f64>,
    /// Kumar–Ross T* at the nominal link rates.
    pub bound_s: f64,
    pub makespan_over_bound: f64,
    pub origin_bytes: u64,
    pub origin_over_dataset: f64,
    pub naive_makespan_s: f64,
    pub naive_origin_bytes: u64,
    pub naive_over_bound: f64,
    /// One agent pulling from one peer on a shaped link (steady state).
    pub peer_link_bytes_per_s: f64,
    pub peer_probe_bytes: u64,
    /// One TCP stream on the same pair of nodes (steady state).
    pub raw_tcp_bytes_per_s: f64,
    pub peer_over_raw_tcp: f64,
    /// Highest VmHWM of the agents, read when the seed completed.
    pub agent_max_rss_bytes: u64,
    /// CPU time of all agents during the seed.
    pub agent_cpu_s: f64,
    /// Busy share of all CPUs during the seed (every process on the machine).
    pub cpu_util: f64,
    pub cpu_iowait: f64,
    /// Busy share (io_ticks) of the busiest whole disk during the seed.
    pub disk_util: f64,
    pub disk_device: String,
    pub disk_read_bytes: u64,
    pub disk_written_bytes: u64,
    pub naive_cpu_util: f64,
    pub naive_disk_util: f64,
    pub machine: Machine,
}

/// The `e2e bench` subcommand.
pub async fn main(
    args: BenchArgs,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    match args.tool {
        Some(BenchTool::FetchAll(a)) => {
            let r = fetch_all(&a).await?;
            println!("{}", serde_json::to_string(&r)?);
        }
        Some(BenchTool::Render(a)) => render(&a)?,
        None => {
            let json = args.run.json;
            // Dropping the run (interrupted) drops the cluster: teardown.
            let report = tokio::select! {
                r = run(args.run) => r?,
                _ = shutdown => bail!("interrupted"),
            };
            print(&report, json)?;
        }
    }
    Ok(())
}

/// One benchmark run (see the module documentation).
pub async fn run(args: RunArgs) -> anyhow::Result<BenchReport> {
    if args.nodes < 2 {
        bail!("--nodes must be at least 2 (the peer-link probe needs a pair)");
    }
    if args.link_mbit == 0 {
        bail!("--link-mbit must be positive");
    }
    let files = args.dataset()?;
    let bins = Binaries::beside_e2e()?;
    let mut spec = ClusterSpec::new(args.nodes, &bins.agent);
    spec.link_mbit = Some(args.link_mbit);
    spec.origin_link_mbit = Some(args.link_mbit);
    // Unshaped loopback would make T* meaningless.
    spec.network = NetworkMode::Namespaces;
    // A filesystem per node, made fresh, as on a cluster (see `disk`):
    // room for the agent's copy, the naive copy and the peer probe.
    let disk_bytes = 2 * files.total_bytes() + 2 * GIB;
    spec.node_disk_bytes = Some(disk_bytes);
    spec.keep_work_dir = args.keep_work_dir;
    eprintln!(
        "bench: starting {} nodes (real agents, operator), every link {} Mbit/s...",
        args.nodes, args.link_mbit
    );
    let mut c = SeedCluster::start(spec, bins).await?;
    let machine = Machine::current();

    let src = c.cluster.add_disk("origin", disk_bytes)?.join("origin");
    eprintln!(
        "bench: generating {} in {} files...",
        human(files.total_bytes()),
        files.big_files + files.small_files
    );
    let gen_dir = src.clone();
    let planned = tokio::task::spawn_blocking(move || generate_dataset(&gen_dir, &files))
        .await
        .context("dataset generation")??;
    let dataset_bytes: u64 = planned.iter().map(|f| f.size).sum();
    let dataset_files = planned.len();
    let origin = c.cluster.start_http_origin(&src, 8080).await?;
    let origin_url = format!("{}/", origin.url());
    c.kubectl(&["create", "namespace", NAMESPACE]).await?;
    let pids: Vec<u32> = c
        .cluster
        .nodes_mut()
        .iter_mut()
        .filter_map(|n| n.agent_pid())
        .collect();
    let mut probes = AgentProbes::connect(&c).await?;

    // --- The seed through the operator. ---
    let max_fetchers = args.max_fetchers();
    let manifest = dataset_yaml(
        NAMESPACE,
        NAME,
        &serde_json::json!({
            "source": { "uri": origin_url },
            "origin": { "maxFetchers": max_fetchers },
        }),
    );
    origin.reset_stats().await?;
    eprintln!("bench: seeding through kubectl apply → operator → agents...");
    let before = Snapshot::take(&pids);
    let start = Instant::now();
    c.kubectl_stdin(&["apply", "-f", "-"], &manifest).await?;
    let seed = watch_seed(&c, &mut probes, &pids, start, &args).await?;
    let after = seed.snapshot_at_ready.clone();
    let agent_max_rss_bytes = pids
        .iter()
        .map(|p| crate::peerbench::max_rss_of(*p))
        .max()
        .unwrap_or(0);
    let origin_bytes = origin.stats().await?.bytes_served;
    let seed_util = Utilisation::between(&before, &after);
    let makespan_s = seed.makespan.as_secs_f64();
    let status = c
        .dataset(NAMESPACE, NAME)
        .await?
        .and_then(|d| d.get("status").cloned())
        .unwrap_or_default();
    let chunk_size = status["chunkSize"]
        .as_u64()
        .unwrap_or_else(|| swarmseed_proto::layout::default_chunk_size(dataset_bytes));
    eprintln!("bench: seeded in {makespan_s:.1} s; verifying every node's copy...");
    verify_copies(&c, &src).await?;

    // --- Naive: every node GETs everything from the origin at once. ---
    eprintln!("bench: deleting the Dataset for the naive baseline...");
    c.kubectl(&["delete", "dataset", "-n", NAMESPACE, NAME, "--wait=false"])
        .await?;
    c.wait_for(
        "the Dataset's deletion",
        Duration::from_secs(120),
        async || Ok(c.dataset(NAMESPACE, NAME).await?.is_none().then_some(())),
    )
    .await?;
    origin.reset_stats().await?;
    eprintln!("bench: naive baseline: every node GETs the whole dataset from the origin...");
    let before = Snapshot::take(&[]);
    let naive_makespan = naive_download(&c, &origin_url, args.timeout).await?;
    let naive_util = Utilisation::between(&before, &Snapshot::take(&[]));
    let naive_origin_bytes = origin.stats().await?.bytes_served;

    // --- One peer link vs raw TCP on the same pair. ---
    eprintln!("bench: one peer link vs raw TCP (node-0 → node-1)...");
    let probe = probe_peer_link(&mut c, &mut probes, chunk_size, args.link_mbit).await?;
    let raw_tcp_bytes_per_s = raw_tcp(&c).await?;

    drop(origin);
    c.cluster.stop().await;

    let bound_s = bound_for_uniform_links(dataset_bytes, args.nodes, args.link_mbit);
    let naive_makespan_s = naive_makespan.as_secs_f64();
    Ok(BenchReport {
        command: args.command(),
        nodes: args.nodes,
        dataset_bytes,
        dataset_files,
        chunk_size,
        link_mbit: args.link_mbit,
        max_fetchers,
        makespan_s,
        first_byte_s: seed.first_byte.map(|d| d.as_secs_f64()),
        status_ready_s: seed.status_ready.map(|d| d.as_secs_f64()),
        node_ready_s: seed.node_ready.iter().map(Duration::as_secs_f64).collect(),
        bound_s,
        makespan_over_bound: makespan_s / bound_s,
        origin_bytes,
        origin_over_dataset: origin_bytes as f64 / dataset_bytes.max(1) as f64,
        naive_makespan_s,
        naive_origin_bytes,
        naive_over_bound: naive_makespan_s / bound_s,
        peer_link_bytes_per_s: probe.bytes_per_s,
        peer_probe_bytes: probe.bytes,
        raw_tcp_bytes_per_s,
        peer_over_raw_tcp: probe.bytes_per_s / raw_tcp_bytes_per_s.max(1.0),
        agent_max_rss_bytes,
        agent_cpu_s: seed_util.agent_cpu_s,
        cpu_util: seed_util.cpu_util,
        cpu_iowait: seed_util.cpu_iowait,
        disk_util: seed_util.disk_util,
        disk_device: seed_util.disk_device,
        disk_read_bytes: seed_util.disk_read_bytes,
        disk_written_bytes: seed_util.disk_written_bytes,
        naive_cpu_util: naive_util.cpu_util,
        naive_disk_util: naive_util.disk_util,
        machine,
    })
}

/// Persistent control channels to every agent (polling them every 100 ms
/// must not open a connection each time on a 2-CPU machine).
struct AgentProbes {
    clients: Vec<(String, AgentControl)>,
}

impl AgentProbes {
    async fn connect(c: &SeedCluster) -> anyhow::Result<Self> {
        let bearer = Bearer::new(c.cluster.control_token())?;
        let mut clients = Vec::new();
        for n in c.cluster.nodes() {
            let client = agent_api::connect(n.control_addr(), &bearer, Duration::from_secs(10))
                .await
                .with_context(|| format!("connecting to the agent on {}", n.name))?;
            clients.push((n.name.clone(), client));
        }
        Ok(Self { clients })
    }

    /// Each agent's progress of `ns/name` (`None`: holds nothing of it or
    /// did not answer), in node order.
    async fn progress(&mut self, ns: &str, name: &str) -> Vec<Option<pb::DatasetProgress>> {
        let dataset = pb::DatasetRef {
            namespace: ns.into(),
            name: name.into(),
            uid: String::new(),
        };
        let asks = self.clients.iter_mut().map(|(_, client)| {
            let dataset = dataset.clone();
            async move {
                let st = client
                    .get_status(pb::GetStatusRequest {
                        dataset: Some(dataset.clone()),
                    })
                    .await
                    .ok()?
                    .into_inner();
                st.datasets
                    .into_iter()
                    .find(|d| d.dataset.as_ref() == Some(&dataset))
            }
        });
        futures::future::join_all(asks).await
    }

    fn client(&mut self, node: usize) -> anyhow::Result<&mut AgentControl> {
        self.clients
            .get_mut(node)
            .map(|(_, c)| c)
            .with_context(|| format!("no node {node}"))
    }
}

struct SeedOutcome {
    makespan: Duration,
    node_ready: Vec<Duration>,
    first_byte: Option<Duration>,
    status_ready: Option<Duration>,
    snapshot_at_ready: Snapshot,
}

fn status_ready(status: &serde_json::Value) -> bool {
    status["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

/// Polls every agent and the Dataset every 100 ms until every agent is
/// Ready (and the Dataset says so, or a grace period passed).
async fn watch_seed(
    c: &SeedCluster,
    probes: &mut AgentProbes,
    agent_pids: &[u32],
    start: Instant,
    args: &RunArgs,
) -> anyhow::Result<SeedOutcome> {
    let timeout = args.timeout;
    let n = c.cluster.nodes().len();
    let mut node_ready: Vec<Option<Duration>> = vec![None; n];
    let mut status_ready_at = None;
    let mut first_byte = None;
    let mut done: Option<(Duration, Snapshot)> = None;
    let mut degraded_seen = String::new();
    let mut last_report = (Duration::ZERO, 0u64, 0u64);
    let mut node_before = vec![(0u64, 0u64, 0u64); n];
    loop {
        let tick = Instant::now();
        let progress = probes.progress(NAMESPACE, NAME).await;
        let now = start.elapsed();
        for (i, p) in progress.iter().enumerate() {
            let Some(p) = p else { continue };
            if p.bytes_verified > 0 && first_byte.is_none() {
                first_byte = Some(now);
            }
            if p.state() == pb::DatasetState::Failed {
                bail!(
                    "the agent on {} failed: {:?}\noperator log:\n{}",
                    c.cluster.nodes()[i].name,
                    p.error,
                    c.operator_log("operator-0")
                );
            }
            if p.state() == pb::DatasetState::Ready && node_ready[i].is_none() {
                node_ready[i] = Some(now);
            }
        }
        if done.is_none() && node_ready.iter().all(Option::is_some) {
            done = Some((now, Snapshot::take(agent_pids)));
        }
        if status_ready_at.is_none() {
            let status = c
                .dataset(NAMESPACE, NAME)
                .await?
                .and_then(|d| d.get("status").cloned())
                .unwrap_or_default();
            if status_ready(&status) {
                status_ready_at = Some(start.elapsed());
            }
            if let Some(d) = status["conditions"].as_array().and_then(|cs| {
                cs.iter()
                    .find(|c| c["type"] == "Degraded" && c["status"] == "True")
            }) {
                let line = format!("{}: {}", d["reason"], d["message"]);
                if line != degraded_seen {
                    eprintln!("bench: Degraded {line}");
                    degraded_seen = line;
                }
            }
        }
        if let Some((at, snap)) = &done
            && (status_ready_at.is_some() || now.saturating_sub(*at) > STATUS_GRACE)
        {
            return Ok(SeedOutcome {
                makespan: *at,
                node_ready: node_ready.into_iter().flatten().collect(),
                first_byte,
                status_ready: status_ready_at,
                snapshot_at_ready: snap.clone(),
            });
        }
        if now > timeout {
            bail!(
                "not every agent Ready after {timeout:?} ({} of {n}); operator log:\n{}",
                node_ready.iter().flatten().count(),
                c.operator_log("operator-0")
            );
        }
        if now.saturating_sub(last_report.0) >= REPORT_EVERY {
            let verified: u64 = progress.iter().flatten().map(|p| p.bytes_verified).sum();
            let total: u64 = progress.iter().flatten().map(|p| p.bytes_total).sum();
            let share =
                |p: &pb::DatasetProgress| p.bytes_verified as f64 / p.bytes_total.max(1) as f64;
            let shares = progress.iter().flatten().map(share);
            let (lo, hi) = shares
                .fold(None, |acc: Option<(f64, f64)>, s| {
                    Some(acc.map_or((s, s), |(lo, hi)| (lo.min(s), hi.max(s))))
                })
                .unwrap_or_default();
            let from_origin: u64 = progress.iter().flatten().map(|p| p.bytes_from_origin).sum();
            let from_peers: u64 = progress.iter().flatten().map(|p| p.bytes_from_peers).sum();
            let dt = now.saturating_sub(last_report.0).as_secs_f64().max(1e-3);
            let rate = |now: u64, then: u64| now.saturating_sub(then) as f64 / dt / MIB as f64;
            eprintln!(
                "bench: t={:>6.1}s  ready {}/{n}  verified {:.1} % (nodes {:.1}–{:.1} %)  origin {:.1} MiB/s ({:.4} F so far)  peers {:.1} MiB/s",
                now.as_secs_f64(),
                node_ready.iter().flatten().count(),
                100.0 * verified as f64 / total.max(1) as f64,
                100.0 * lo,
                100.0 * hi,
                rate(from_origin, last_report.1),
                from_origin as f64 * n as f64 / total.max(1) as f64,
                rate(from_peers, last_report.2),
            );
            if args.per_node {
                let nodes: Vec<String> = progress
                    .iter()
                    .zip(&mut node_before)
                    .map(|(p, before)| match p {
                        Some(p) => {
                            let origin = rate(p.bytes_from_origin, before.0);
                            let peers = rate(p.bytes_from_peers, before.1);
                            let up = rate(p.bytes_served_to_peers, before.2);
                            *before = (
                                p.bytes_from_origin,
                                p.bytes_from_peers,
                                p.bytes_served_to_peers,
                            );
                            format!("{:.1}%/{origin:.0}/{peers:.0}/{up:.0}", 100.0 * share(p))
                        }
                        None => "-".into(),
                    })
                    .collect();
                eprintln!(
                    "bench:   per node (verified/origin/peers/up MiB/s): {}",
                    nodes.join(" ")
                );
            }
            last_report = (now, from_origin, from_peers);
        }
        tokio::time::sleep(POLL.saturating_sub(tick.elapsed())).await;
    }
}

/// Every node's published tree must equal the origin's.
async fn verify_copies(c: &SeedCluster, src: &Path) -> anyhow::Result<()> {
    let dirs: Vec<(String, PathBuf)> = c
        .cluster
        .nodes()
        .iter()
        .map(|n| {
            (
                n.name.clone(),
                n.root.join("datasets").join(NAMESPACE).join(NAME),
            )
        })
        .collect();
    let src = src.to_path_buf();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let want = tree_digest(&src)?.root();
        for (node, dir) in dirs {
            let got = tree_digest(&dir)
                .with_context(|| format!("reading {node}'s copy"))?
                .root();
            if got != want {
                bail!("{node}'s published copy differs from the origin");
            }
        }
        Ok(())
    })
    .await
    .context("verifying copies")?
}

/// Runs `e2e bench fetch-all` in every node's namespace at once; returns
/// the time until the last one finished.
async fn naive_download(
    c: &SeedCluster,
    origin_url: &str,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let mut children = Vec::new();
    let mut dests = Vec::new();
    let start = Instant::now();
    for n in c.cluster.nodes() {
        // Beside the agent's root, on the node's own disk.
        let dest = n.root.with_file_name("naive");
        let child = c
            .cluster
            .command(Placement::Node(&n.name), &c.bins.e2e)?
            .args(["bench", "fetch-all", "--url", origin_url, "--dest"])
            .arg(&dest)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("starting fetch-all on {}", n.name))?;
        children.push((n.name.clone(), child));
        dests.push(dest);
    }
    let waits = children.into_iter().map(|(node, child)| async move {
        let out = tokio::time::timeout(timeout, child.wait_with_output())
            .await
            .with_context(|| format!("fetch-all on {node} took longer than {timeout:?}"))?
            .with_context(|| format!("waiting for fetch-all on {node}"))?;
        if !out.status.success() {
            bail!(
                "fetch-all on {node} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        anyhow::Ok(())
    });
    let results = futures::future::join_all(waits).await;
    let elapsed = start.elapsed();
    for r in results {
        r?;
    }
    // N more copies of the dataset need not stay on the disk.
    tokio::task::spawn_blocking(move || {
        for d in dests {
            let _ = std::fs::remove_dir_all(d);
        }
    })
    .await
    .context("removing the naive copies")?;
    Ok(elapsed)
}

struct PeerProbe {
    bytes: u64,
    bytes_per_s: f64,
}

/// node-1 pulls a probe dataset from node-0 only, which holds it already.
async fn probe_peer_link(
    c: &mut SeedCluster,
    probes: &mut AgentProbes,
    chunk_size: u64,
    link_mbit: u32,
) -> anyhow::Result<PeerProbe> {
    let size = ((mbit_to_bytes_per_s(link_mbit) * PROBE_SECONDS) as u64)
        .clamp(16 * MIB, 512 * MIB)
        .max(chunk_size);
    let dir = c.cluster.work_dir().join("probe-origin");
    let spec = DatasetSpec {
        seed: 7,
        big_files: 1,
        big_file_size: size,
        small_files: 0,
        small_file_min: 0,
        small_file_max: 0,
        small_dirs: 1,
    };
    let gen_dir = dir.clone();
    tokio::task::spawn_blocking(move || generate_dataset(&gen_dir, &spec))
        .await
        .context("probe generation")??;
    let probe_origin = c.cluster.start_http_origin(&dir, 8081).await?;
    let origin = pb::Origin {
        uri: format!("{}/", probe_origin.url()),
        allow_http: true,
        ..Default::default()
    };
    let files = swarmseed_origin::OriginClient::new(&origin, Default::default())?
        .list(&[], &[])
        .await?
        .files;
    let layout = swarmseed_proto::ChunkLayout::new(files.clone(), chunk_size)?;
    let (seeder, leecher) = (
        c.cluster.nodes()[0].name.clone(),
        c.cluster.nodes()[1].name.clone(),
    );
    let seeder_key = probes
        .client(0)?
        .get_status(pb::GetStatusRequest::default())
        .await?
        .into_inner()
        .public_key;
    let dataset = pb::DatasetRef {
        namespace: PROBE_NAMESPACE.into(),
        name: PROBE_NAME.into(),
        uid: String::new(),
    };
    let assignment = pb::Assignment {
        dataset: Some(dataset.clone()),
        revision: layout.revision().to_hex(),
        chunk_size,
        files,
        origin: Some(origin),
        fetchers: vec![pb::OriginFetcher {
            node_name: seeder.clone(),
            public_key: seeder_key,
            ranges: vec![pb::ChunkRange {
                start: 0,
                end: layout.chunk_count(),
            }],
        }],
        // Agents skip themselves in the peer list.
        peers: vec![pb::Peer {
            node_name: seeder.clone(),
            address: c.cluster.nodes()[0].peer_addr().to_string(),
        }],
        peer_token: blake3::hash(c.cluster.control_token().as_bytes()).as_bytes()[..].to_vec(),
        plan_generation: 1,
        ..Default::default()
    };
    probes
        .client(0)?
        .apply_assignment(assignment.clone())
        .await
        .with_context(|| format!("assigning the probe to {seeder}"))?;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let p = probes.progress(PROBE_NAMESPACE, PROBE_NAME).await;
        match p.first().cloned().flatten() {
            Some(p) if p.state() == pb::DatasetState::Ready => break,
            Some(p) if p.state() == pb::DatasetState::Failed => {
                bail!("{seeder} failed to fetch the probe: {:?}", p.error)
            }
            _ if Instant::now() > deadline => bail!("{seeder} did not fetch the probe in 300 s"),
            _ => tokio::time::sleep(POLL).await,
        }
    }

    probes
        .client(1)?
        .apply_assignment(assignment)
        .await
        .with_context(|| format!("assigning the probe to {leecher}"))?;
    let assigned = Instant::now();
    let request = pb::GetStatusRequest {
        dataset: Some(dataset.clone()),
    };
    let mut first: Option<(Instant, u64)> = None;
    let last = loop {
        let st = probes
            .client(1)?
            .get_status(request.clone())
            .await?
            .into_inner();
        let now = Instant::now();
        let p = st
            .datasets
            .into_iter()
            .next()
            .with_context(|| format!("{leecher} lost the probe"))?;
        if p.state() == pb::DatasetState::Failed {
            bail!("{leecher} failed to pull the probe: {:?}", p.error);
        }
        if p.bytes_from_origin > 0 {
            bail!("{leecher} read the origin during the peer probe");
        }
        if first.is_none() && p.bytes_verified > 0 {
            first = Some((now, p.bytes_verified));
        }
        if p.chunks_total > 0 && p.chunks_verified == p.chunks_total {
            break (now, p.bytes_verified);
        }
        if assigned.elapsed() > Duration::from_secs(300) {
            bail!("{leecher} did not pull the probe in 300 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let bytes_per_s = match first {
        Some((t0, b0)) if last.0 > t0 && last.1 > b0 => {
            (last.1 - b0) as f64 / last.0.duration_since(t0).as_secs_f64()
        }
        _ => last.1 as f64 / last.0.duration_since(assigned).as_secs_f64().max(1e-3),
    };
    for i in [0, 1] {
        let _ = probes
            .client(i)?
            .remove_dataset(pb::RemoveDatasetRequest {
                dataset: Some(dataset.clone()),
            })
            .await;
    }
    drop(probe_origin);
    Ok(PeerProbe {
        bytes: size,
        bytes_per_s,
    })
}

/// One TCP stream node-0 → node-1 for 4 s (`e2e netbench`), steady rate.
async fn raw_tcp(c: &SeedCluster) -> anyhow::Result<f64> {
    let nodes = c.cluster.nodes();
    let listen = SocketAddr::new(nodes[1].address.into(), NETBENCH_PORT);
    let e2e = &c.bins.e2e;
    let recv = c
        .cluster
        .command(Placement::Node(&nodes[1].name), e2e)?
        .args(["netbench", "recv", "--count", "1", "--listen"])
        .arg(listen.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("starting netbench recv")?;
    let send = c
        .cluster
        .command(Placement::Node(&nodes[0].name), e2e)?
        .args(["netbench", "send", "--duration", "4s", "--connect"])
        .arg(listen.to_string())
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), send)
        .await
        .context("netbench send took longer than 120 s")?
        .context("running netbench send")?;
    let _ = tokio::time::timeout(Duration::from_secs(10), recv.wait_with_output()).await;
    if !out.status.success() {
        bail!(
            "netbench send failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let r: NetbenchResult = serde_json::from_str(stdout.trim().lines().last().unwrap_or(""))
        .with_context(|| format!("netbench output {stdout:?}"))?;
    Ok(r.steady_mbit_per_s * 1e6 / 8.0)
}

// ---------------------------------------------------------------------------
// CPU and disk utilisation from /proc.

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct CpuTimes {
    busy: u64,
    iowait: u64,
    total: u64,
}

/// The aggregate `cpu` line of `/proc/stat`.
fn parse_proc_stat(s: &str) -> Option<CpuTimes> {
    let line = s.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal (guest is in user).
    let get = |i: usize| v.get(i).copied().unwrap_or(0);
    let total: u64 = (0..8).map(get).sum();
    let (idle, iowait) = (get(3), get(4));
    Some(CpuTimes {
        busy: total - idle - iowait,
        iowait,
        total,
    })
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct DiskCounters {
    sectors_read: u64,
    sectors_written: u64,
    io_ticks_ms: u64,
}

/// `/proc/diskstats` rows of the named devices.
fn parse_diskstats(s: &str, devices: &[String]) -> BTreeMap<String, DiskCounters> {
    s.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let name = *f.get(2)?;
            if !devices.iter().any(|d| d == name) {
                return None;
            }
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            Some((
                name.to_owned(),
                DiskCounters {
                    sectors_read: num(5),
                    sectors_written: num(9),
                    io_ticks_ms: num(12),
                },
            ))
        })
        .collect()
}

/// utime + stime of `/proc/<pid>/stat`, in clock ticks.
fn parse_pid_cpu_ticks(s: &str) -> Option<u64> {
    // The command name may contain spaces and parentheses: fields count
    // from the last ')'. After it come state (3), ppid (4), ... utime (14).
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Whole disks (no partitions, loop, RAM or zram devices).
fn whole_disks() -> Vec<String> {
    std::fs::read_dir("/sys/block")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !["loop", "ram", "zram"].iter().any(|p| n.starts_with(p)))
                .collect()
        })
        .unwrap_or_default()
}

#[derive(Debug, Clone)]
struct Snapshot {
    at: Instant,
    cpu: CpuTimes,
    disks: BTreeMap<String, DiskCounters>,
    process_ticks: u64,
}

impl Snapshot {
    fn take(pids: &[u32]) -> Self {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        Self {
            at: Instant::now(),
            cpu: parse_proc_stat(&read("/proc/stat")).unwrap_or_default(),
            disks: parse_diskstats(&read("/proc/diskstats"), &whole_disks()),
            process_ticks: pids
                .iter()
                .filter_map(|p| parse_pid_cpu_ticks(&read(&format!("/proc/{p}/stat"))))
                .sum(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Utilisation {
    cpu_util: f64,
    cpu_iowait: f64,
    disk_util: f64,
    disk_device: String,
    disk_read_bytes: u64,
    disk_written_bytes: u64,
    agent_cpu_s: f64,
}

impl Utilisation {
    fn between(a: &Snapshot, b: &Snapshot) -> Self {
        let total = b.cpu.total.saturating_sub(a.cpu.total).max(1) as f64;
        let wall_ms = b.at.duration_since(a.at).as_secs_f64() * 1000.0;
        let mut u = Utilisation {
            cpu_util: b.cpu.busy.saturating_sub(a.cpu.busy) as f64 / total,
            cpu_iowait: b.cpu.iowait.saturating_sub(a.cpu.iowait) as f64 / total,
            agent_cpu_s: b.process_ticks.saturating_sub(a.process_ticks) as f64 / USER_HZ,
            ..Default::default()
        };
        for (dev, end) in &b.disks {
            let Some(start) = a.disks.get(dev) else {
                continue;
            };
            u.disk_read_bytes += end.sectors_read.saturating_sub(start.sectors_read) * 512;
            u.disk_written_bytes += end.sectors_written.saturating_sub(start.sectors_written) * 512;
            let busy = end.io_ticks_ms.saturating_sub(start.io_ticks_ms) as f64 / wall_ms.max(1.0);
            if u.disk_device.is_empty() || busy > u.disk_util {
                u.disk_util = busy.min(1.0);
                u.disk_device = dev.clone();
            }
        }
        u
    }
}

// ---------------------------------------------------------------------------
// fetch-all: the naive baseline's client.

#[derive(Debug, Clone, clap::Args)]
pub struct FetchAllArgs {
    /// A directory served with nginx JSON listings, e.g. http://host:8080/.
    #[arg(long)]
    pub url: String,
    /// Where the files go (created).
    #[arg(long)]
    pub dest: PathBuf,
    /// Concurrent GETs.
    #[arg(long, default_value_t = 8)]
    pub parallel: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FetchAllReport {
    pub files: usize,
    pub bytes: u64,
    pub seconds: f64,
}

/// Above this many files, one `syncfs` at the end replaces an fsync per
/// file, as in the agent's store.
const FETCH_ALL_SYNCFS_ABOVE_FILES: usize = 64;

/// Lists the directory tree (nginx JSON, one GET per directory, no HEADs)
/// and GETs every file, writing it under `dest` and making it durable as
/// the agent does: an fsync per file, or for many files one `syncfs`.
pub async fn fetch_all(args: &FetchAllArgs) -> anyhow::Result<FetchAllReport> {
    let start = Instant::now();
    let client = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(60))
        .build()?;
    let base = format!("{}/", args.url.trim_end_matches('/'));
    let files = list_tree(&client, &base).await?;
    let sync_each = files.len() <= FETCH_ALL_SYNCFS_ABOVE_FILES;
    let bytes: u64 = futures::stream::iter(files.iter())
        .map(|(path, size)| get_file(&client, &base, path, *size, &args.dest, sync_each))
        .buffer_unordered(args.parallel.max(1))
        .try_fold(0u64, |acc, n| async move { Ok(acc + n) })
        .await?;
    if !sync_each {
        let dest = args.dest.clone();
        tokio::task::spawn_blocking(move || {
            let dir = std::fs::File::open(&dest)?;
            nix::unistd::syncfs(&dir).map_err(std::io::Error::from)
        })
        .await?
        .with_context(|| format!("syncing {}", args.dest.display()))?;
    }
    Ok(FetchAllReport {
        files: files.len(),
        bytes,
        seconds: start.elapsed().as_secs_f64(),
    })
}

const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn url_path(rel: &str) -> String {
    rel.split('/')
        .map(|s| percent_encoding::utf8_percent_encode(s, PATH_SEGMENT).to_string())
        .collect::<Vec<_>>()
        .join("/")
}

/// Every file under `base` as (relative path, listed size).
async fn list_tree(client: &reqwest::Client, base: &str) -> anyhow::Result<Vec<(String, u64)>> {
    let mut files = Vec::new();
    let mut pending = vec![String::new()];
    while let Some(dir) = pending.pop() {
        if dir.matches('/').count() > 64 {
            bail!("{dir:?} is nested too deep");
        }
        let url = format!("{base}{}", url_path(&dir));
        let entries: Vec<ListingEntry> = client
            .get(&url)
            .header(reqwest::header::ACCEPT, "application/json")
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .with_context(|| format!("GET {url}"))?
            .json()
            .await
            .with_context(|| format!("{url} is not an nginx JSON listing"))?;
        for e in entries {
            let name = e.name.trim_end_matches('/');
            if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\\', '\0']) {
                bail!("{url} lists an unusable name {:?}", e.name);
            }
            match e.kind.as_str() {
                "directory" => pending.push(format!("{dir}{name}/")),
                "file" => files.push((format!("{dir}{name}"), e.size.unwrap_or(0))),
                _ => {}
            }
        }
    }
    files.sort();
    Ok(files)
}

async fn get_file(
    client: &reqwest::Client,
    base: &str,
    rel: &str,
    size: u64,
    dest: &Path,
    sync: bool,
) -> anyhow::Result<u64> {
    let url = format!("{base}{}", url_path(rel));
    let path = dest.join(rel);
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let mut resp = client
        .get(&url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .with_context(|| format!("GET {url}"))?;
    let mut out = tokio::fs::File::create(&path)
        .await
        .with_context(|| format!("creating {}", path.display()))?;
    let mut n = 0u64;
    while let Some(chunk) = resp.chunk().await.with_context(|| format!("GET {url}"))? {
        out.write_all(&chunk)
            .await
            .with_context(|| format!("writing {}", path.display()))?;
        n += chunk.len() as u64;
    }
    if sync {
        out.sync_all()
            .await
            .with_context(|| format!("syncing {}", path.display()))?;
    }
    if n != size {
        bail!("{url}: got {n} bytes, the listing says {size}");
    }
    Ok(n)
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

fn mib_s(bytes_per_s: f64) -> String {
    format!("{:.1} MiB/s", bytes_per_s / MIB as f64)
}

/// The report as one JSON line (no newline inside).
pub fn json_line(report: &BenchReport) -> anyhow::Result<String> {
    Ok(serde_json::to_string(report)?)
}

/// Prints the human table; with `json` the JSON object as the last line.
pub fn print(r: &BenchReport, json: bool) -> anyhow::Result<()> {
    println!("{}", r.command);
    println!(
        "dataset               {} in {} files, chunk {}; {} nodes, every link {} Mbit/s; maxFetchers {}",
        human(r.dataset_bytes),
        r.dataset_files,
        human(r.chunk_size),
        r.nodes,
        r.link_mbit,
        r.max_fetchers
    );
    println!("                      swarmseed        naive (every node GETs all)");
    println!(
        "makespan              {:<16} {:.2} s",
        format!("{:.2} s", r.makespan_s),
        r.naive_makespan_s
    );
    println!(
        "makespan / T*         {:<16} {:.2}x     (T* = {:.2} s)",
        format!("{:.2}x", r.makespan_over_bound),
        r.naive_over_bound,
        r.bound_s
    );
    println!(
        "origin bytes / F      {:<16} {:.4}x",
        format!("{:.4}x", r.origin_over_dataset),
        r.naive_origin_bytes as f64 / r.dataset_bytes.max(1) as f64
    );
    let secs = |s: Option<f64>| s.map_or("(not seen)".to_string(), |s| format!("{s:.2} s"));
    println!("first verified byte   {}", secs(r.first_byte_s));
    println!("status Ready after    {}", secs(r.status_ready_s));
    println!(
        "peer link / raw TCP   {} / {} = {:.1} %  (probe {})",
        mib_s(r.peer_link_bytes_per_s),
        mib_s(r.raw_tcp_bytes_per_s),
        100.0 * r.peer_over_raw_tcp,
        human(r.peer_probe_bytes)
    );
    println!("agent peak RSS        {}", human(r.agent_max_rss_bytes));
    println!(
        "during the seed       CPU {:.0} % busy, {:.0} % iowait ({} CPUs); disk {} {:.0} % busy, {} written; agents {:.1} CPU-s",
        100.0 * r.cpu_util,
        100.0 * r.cpu_iowait,
        r.machine.nproc,
        r.disk_device,
        100.0 * r.disk_util,
        human(r.disk_written_bytes),
        r.agent_cpu_s
    );
    println!(
        "during naive          CPU {:.0} % busy; disk {:.0} % busy",
        100.0 * r.naive_cpu_util,
        100.0 * r.naive_disk_util
    );
    if json {
        println!("{}", json_line(r)?);
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// render: the RESULTS.md section.

#[derive(Debug, Clone, clap::Args)]
pub struct RenderArgs {
    /// JSON reports, one per line (other lines are ignored).
    #[arg(long)]
    pub input: PathBuf,
    /// The markdown file to update between its markers (appended when it
    /// has none).
    #[arg(long)]
    pub results: PathBuf,
    /// The date of the run, shown in the heading.
    #[arg(long, default_value = "")]
    pub date: String,
    /// A paragraph shown above the table (e.g. what kind of run this was).
    #[arg(long, default_value = "")]
    pub note: String,
}

fn render(args: &RenderArgs) -> anyhow::Result<()> {
    let input = std::fs::read_to_string(&args.input)
        .with_context(|| format!("reading {}", args.input.display()))?;
    let reports: Vec<BenchReport> = input
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
    let updated = splice_section(&existing, &section);
    std::fs::write(&args.results, updated)
        .with_context(|| format!("writing {}", args.results.display()))?;
    Ok(())
}

/// The generated section, markers included.
pub fn results_section(reports: &[BenchReport], date: &str, note: &str) -> String {
    let m = reports
        .first()
        .map(|r| r.machine.clone())
        .unwrap_or_default();
    let mut s = String::new();
    s.push_str(RESULTS_BEGIN);
    s.push_str("\n## Seeding through the operator (`e2e/bench/run.sh`)\n\n");
    if !date.is_empty() {
        s.push_str(&format!("Run {date}. "));
    }
    s.push_str(&format!(
        "Machine: {} CPUs, {:.1} GiB memory, Linux {}, release build, one run per row.\n\n",
        m.nproc,
        m.mem_total_bytes as f64 / GIB as f64,
        m.kernel
    ));
    s.push_str(
        "Every node link and the origin link are shaped to the row's rate in both \
directions (`tc tbf`), so T* = max(F/u_s, F/d_min, N·F/(u_s+Σu_i)) = F / rate. \
*Makespan*: from `kubectl apply` until every agent reports the revision Ready \
(published, fsynced), `origin.maxFetchers` = N, default chunk size. *Naive*: the \
Dataset deleted, every node GETs the whole dataset from the origin at once \
(`e2e bench fetch-all`, 8 parallel GETs, files made durable as the agents do). \
*Peer link*: one agent pulling a probe from one peer on the same shaped link vs \
one raw TCP stream (steady state). Every node (and the origin) has an ext4 \
filesystem of its own, made fresh for the run (loop-mounted images on the \
machine's one disk). CPU and disk: share busy during the seed, whole machine.\n\n",
    );
    if !note.is_empty() {
        s.push_str(note.trim());
        s.push_str("\n\n");
    }
    s.push_str(
        "| command | F | makespan (first byte) | T* | makespan / T* | origin / F | naive makespan | naive / T* | naive origin / F | peer link / raw TCP | agent peak RSS | CPU busy | disk busy |\n",
    );
    s.push_str("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    for r in reports {
        s.push_str(&format!(
            "| `{}` | {} in {} files | {:.1} s ({}) | {:.1} s | **{:.2}** | **{:.4}** | {:.1} s | {:.2} | {:.2} | {} / {} = {:.0} % | {} | {:.0} % | {:.0} % |\n",
            r.command,
            human(r.dataset_bytes),
            r.dataset_files,
            r.makespan_s,
            r.first_byte_s.map_or("-".into(), |s| format!("{s:.1} s")),
            r.bound_s,
            r.makespan_over_bound,
            r.origin_over_dataset,
            r.naive_makespan_s,
            r.naive_over_bound,
            r.naive_origin_bytes as f64 / r.dataset_bytes.max(1) as f64,
            mib_s(r.peer_link_bytes_per_s),
            mib_s(r.raw_tcp_bytes_per_s),
            100.0 * r.peer_over_raw_tcp,
            human(r.agent_max_rss_bytes),
            100.0 * r.cpu_util,
            100.0 * r.disk_util,
        ));
    }
    s.push_str(RESULTS_END);
    s.push('\n');
    s
}

/// Replaces the text between the markers (inclusive) with `section`, or
/// appends `section` when the markers are missing.
pub fn splice_section(existing: &str, section: &str) -> String {
    splice_marked(existing, RESULTS_BEGIN, RESULTS_END, section)
}

/// Replaces the text from `begin` to `end` (inclusive, with the newline
/// after `end`) with `section`, or appends `section` when either marker is
/// missing.
pub fn splice_marked(existing: &str, begin: &str, end: &str, section: &str) -> String {
    if let (Some(b), Some(e)) = (existing.find(begin), existing.find(end))
        && b < e
    {
        let mut stop = e + end.len();
        if existing[stop..].starts_with('\n') {
            stop += 1;
        }
        return format!("{}{section}{}", &existing[..b], &existing[stop..]);
    }
    let mut out = existing.to_owned();
    if !out.is_empty() {
        if !out.ends_with('\n') {
            out.push('\n');
        }
        out.push('\n');
    }
    out.push_str(section);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9 * b.abs().max(1.0)
    }

    #[test]
    fn the_bound_is_the_largest_of_the_three_terms() {
        // Symmetric links: the server's upload (= a peer's download) binds.
        assert!(close(
            kumar_ross_bound(1000.0, 10.0, &[10.0; 4], &[10.0; 4]),
            100.0
        ));
        // Slow peer uploads: the aggregate upload binds, N·F/(u_s + Σu_i).
        assert!(close(
            kumar_ross_bound(1000.0, 10.0, &[1.0; 10], &[100.0; 10]),
            10.0 * 1000.0 / 20.0
        ));
        // One slow download binds.
        assert!(close(
            kumar_ross_bound(1000.0, 100.0, &[100.0; 3], &[100.0, 5.0, 100.0]),
            200.0
        ));
        // Fast peers, slow server.
        assert!(close(
            kumar_ross_bound(1000.0, 2.0, &[100.0; 3], &[100.0; 3]),
            500.0
        ));
    }

    #[test]
    fn the_bench_topology_bound_is_one_dataset_over_the_link() {
        // 1 GiB over 200 Mbit/s (25 MB/s), any N.
        for n in [2, 4, 8, 16] {
            assert!(close(
                bound_for_uniform_links(1 << 30, n, 200),
                (1u64 << 30) as f64 / 25e6
            ));
        }
    }

    fn sample() -> BenchReport {
        BenchReport {
            command: "e2e bench --nodes 4 --size 64MiB --link-mbit 200".into(),
            nodes: 4,
            dataset_bytes: 64 << 20,
            dataset_files: 4,
            chunk_size: 1 << 20,
            link_mbit: 200,
            max_fetchers: 4,
            makespan_s: 3.5,
            first_byte_s: Some(1.1),
            status_ready_s: Some(4.0),
            node_ready_s: vec![3.0, 3.2, 3.4, 3.5],
            bound_s: 2.68,
            makespan_over_bound: 1.3,
            origin_bytes: 64 << 20,
            origin_over_dataset: 1.0,
            naive_makespan_s: 11.0,
            naive_origin_bytes: 4 * (64 << 20),
            naive_over_bound: 4.1,
            peer_link_bytes_per_s: 23e6,
            peer_probe_bytes: 100e6 as u64,
            raw_tcp_bytes_per_s: 23.5e6,
            peer_over_raw_tcp: 0.98,
            agent_max_rss_bytes: 30 << 20,
            agent_cpu_s: 2.0,
            cpu_util: 0.8,
            cpu_iowait: 0.05,
            disk_util: 0.2,
            disk_device: "vda".into(),
            disk_read_bytes: 0,
            disk_written_bytes: 256 << 20,
            naive_cpu_util: 0.5,
            naive_disk_util: 0.3,
            machine: Machine {
                nproc: 2,
                mem_total_bytes: 24 << 30,
                kernel: "6.18.0".into(),
            },
        }
    }

    #[test]
    fn the_json_line_is_one_object_with_the_documented_fields() {
        let line = json_line(&sample()).unwrap();
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        for key in [
            "nodes",
            "dataset_bytes",
            "link_mbit",
            "makespan_s",
            "bound_s",
            "origin_bytes",
            "naive_makespan_s",
            "naive_origin_bytes",
            "peer_link_bytes_per_s",
            "raw_tcp_bytes_per_s",
            "agent_max_rss_bytes",
            "cpu_util",
            "cpu_iowait",
            "disk_util",
            "disk_written_bytes",
        ] {
            assert!(v.get(key).is_some_and(|x| !x.is_null()), "missing {key}");
        }
        assert!(v["nodes"].is_u64() && v["makespan_s"].is_f64());
        assert_eq!(v["machine"]["nproc"], 2);
        // What run.sh writes, render reads back.
        let back: BenchReport = serde_json::from_str(&line).unwrap();
        assert_eq!(back, sample());
    }

    #[test]
    fn the_command_reproduces_the_run() {
        let args = RunArgs {
            nodes: 16,
            size: 256 << 20,
            link_mbit: 100,
            small_files: Some(50_000),
            max_fetchers: None,
            timeout: Duration::from_secs(60),
            json: true,
            per_node: true,
            keep_work_dir: true,
        };
        assert_eq!(
            args.command(),
            "e2e bench --nodes 16 --size 256MiB --link-mbit 100 --small-files 50000"
        );
        assert_eq!(args.max_fetchers(), 16);
        let spec = args.dataset().unwrap();
        assert_eq!(spec.small_files, 50_000);
        let total = spec.total_bytes() as f64;
        assert!(
            (total / (256u64 << 20) as f64 - 1.0).abs() < 0.02,
            "{total}"
        );
        assert_eq!(format_size(1 << 30), "1GiB");
        assert_eq!(format_size(3 << 10), "3KiB");
        assert_eq!(
            crate::demo::parse_size(&format_size(96 << 20)),
            Ok(96 << 20)
        );
    }

    #[test]
    fn proc_counters_parse() {
        let stat = "cpu  100 5 50 800 20 3 2 10 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        assert_eq!(
            parse_proc_stat(stat),
            Some(CpuTimes {
                busy: 170,
                iowait: 20,
                total: 990
            })
        );
        let disks = " 254       0 vda 761712 14453 21529466 1717518 324764 105812 90044144 950696 0 165840 2783168 0 0 0 0\n   7       0 loop0 1 0 2 0 0 0 0 0 0 0 0\n";
        let got = parse_diskstats(disks, &["vda".to_string()]);
        assert_eq!(
            got.get("vda"),
            Some(&DiskCounters {
                sectors_read: 21529466,
                sectors_written: 90044144,
                io_ticks_ms: 165840
            })
        );
        assert_eq!(got.len(), 1);
        let pid =
            "1234 (swarm seed) agent) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 9 0";
        assert_eq!(parse_pid_cpu_ticks(pid), Some(325));
    }

    #[test]
    fn the_results_section_replaces_only_its_own_markers() {
        let section = results_section(&[sample()], "2026-11-26", "Smoke run.");
        assert!(
            section.starts_with(RESULTS_BEGIN) && section.ends_with(&format!("{RESULTS_END}\n"))
        );
        assert!(section.contains("| `e2e bench --nodes 4 --size 64MiB --link-mbit 200` |"));
        assert!(section.contains("2 CPUs") && section.contains("\nSmoke run.\n"));
        let original = "# Benchmark results\n\nkept text\n";
        let once = splice_section(original, &section);
        assert!(once.starts_with(original));
        let twice = splice_section(&once, &section);
        assert_eq!(once, twice);
        let other = splice_section(&once, "X\n");
        assert!(other.starts_with(original) && !other.contains(RESULTS_BEGIN));
        let with_tail = format!("{once}\n## later\n");
        assert!(splice_section(&with_tail, &section).ends_with("\n## later\n"));
    }
}
