//! Setup and drive of one `e2e bench` run: the cluster, the seed through
//! the operator, the naive baseline and the peer-link probe in turn, and
//! what the agents say while the seed runs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use swarmseed_harness::agent_api::{self, AgentControl, Bearer};
use swarmseed_harness::origin::dataset::{generate_dataset, tree_digest};
use swarmseed_harness::seeding::{Binaries, SeedCluster, dataset_yaml, is_ready};
use swarmseed_harness::{ClusterSpec, NetworkMode};
use swarmseed_proto::pb;

use super::baseline::naive_download;
use super::bound::bound_for_uniform_links;
use super::peer_link::{probe_peer_link, raw_tcp};
use super::report::BenchReport;
use super::{NAME, NAMESPACE, POLL, REPORT_EVERY, RunArgs, STATUS_GRACE};
use crate::procfs::{Machine, Snapshot, Utilisation, max_rss_of};
use crate::report::{GIB, MIB, human};

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
    let agent_max_rss_bytes = pids.iter().map(|p| max_rss_of(*p)).max().unwrap_or(0);
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
pub(super) struct AgentProbes {
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
    pub(super) async fn progress(
        &mut self,
        ns: &str,
        name: &str,
    ) -> Vec<Option<pb::DatasetProgress>> {
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

    pub(super) fn client(&mut self, node: usize) -> anyhow::Result<&mut AgentControl> {
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
            if is_ready(&status) {
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
