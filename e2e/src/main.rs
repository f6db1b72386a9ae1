//! `e2e`: swarmseed's test cluster from the command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use swarmseed_bench::net;
use swarmseed_e2e::stub_agent;
use swarmseed_harness::cluster::{Cluster, ClusterSpec, NetworkMode, find_e2e_binary};
use swarmseed_harness::origin::http::{OriginCounters, serve};
use swarmseed_harness::origin::proxy::TcpProxy;
use swarmseed_harness::{apiserver, shutdown_signal};
use swarmseed_runtime::logging::{self, LogFormat, LogOutput};

/// swarmseed's test cluster: the Kubernetes API stand-in, nodes in network
/// namespaces with shaped links, origins that count what they serve.
#[derive(Debug, Parser)]
#[command(name = "e2e", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The product end to end: a local cluster with real agents and the
    /// operator seeds a generated model-like dataset from an HTTP origin;
    /// shows per-node progress, verifies every node's copy, prints the
    /// figures.
    Demo(swarmseed_e2e::demo::DemoArgs),
    /// Run the Kubernetes API stand-in alone.
    Apiserver(apiserver::CliArgs),
    /// Start a cluster (API stand-in, nodes, agents, optional origins) and
    /// keep it until Ctrl-C; prints KUBECONFIG=... and the node addresses.
    Cluster(ClusterArgs),
    /// Serve a directory over HTTP with ranges, ETags and nginx-style JSON
    /// listings, counting the bytes served (GET /_origin/stats).
    OriginHttp(OriginHttpArgs),
    /// Forward TCP connections to an upstream, counting the bytes sent to
    /// clients (GET /_origin/stats on --stats-listen).
    TcpProxy(TcpProxyArgs),
    /// Measure TCP throughput between two places.
    Netbench(NetbenchArgs),
    /// Clients of an agent's peer port that never authenticate: slow,
    /// half-open, oversized or a flood, bounded in time and count; prints
    /// what the agent did with them as JSON.
    HostilePeer(swarmseed_e2e::hostile_peer::HostilePeerArgs),
    /// A stand-in for the agent with the same flags: opens its ports and
    /// answers /livez, /readyz and /metrics.
    StubAgent(stub_agent::StubAgentArgs),
    /// Benchmark: one agent pulling a dataset from one peer over loopback,
    /// against raw TCP on loopback in the same run (throughput, flush time,
    /// peak RSS).
    PeerBench(swarmseed_bench::peer::PeerBenchArgs),
    /// Benchmark: seed a generated dataset through kubectl, the operator and
    /// the agents on N nodes with shaped links; report the makespan against
    /// the Kumar–Ross bound T*, origin bytes, a naive every-node-downloads
    /// baseline, one peer link against raw TCP, peak RSS, CPU and disk.
    Bench(swarmseed_bench::seed::BenchArgs),
    /// Benchmark: the control plane at scale. The real operator against
    /// the API stand-in, N simulated agents (in-process fakes of the agent
    /// control API) and M Datasets selecting every node; reports the
    /// operator's peak RSS and CPU, status writes per second per Dataset,
    /// and the time from the last agent turning Ready to `Ready=True`.
    BenchScale(swarmseed_bench::scale::ScaleBenchArgs),
    /// The seeded chaos soak of the fault matrix (needs root): 3 Datasets
    /// on 4 nodes, random agent kills, operator kills, partitions, origin
    /// outages and delete+recreate, invariants checked every second; prints
    /// the seed, the faults and the checks, and fails on any violation.
    Soak(SoakArgs),
}

#[derive(Debug, clap::Args)]
struct SoakArgs {
    /// Seed of the fault schedule (default: from the clock; printed).
    #[arg(long, env = "SWARMSEED_SOAK_SEED")]
    seed: Option<u64>,
    /// How long faults are injected (recovery and checks come on top).
    #[arg(long, env = "SWARMSEED_SOAK_DURATION", default_value = "2m", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Keep the cluster's work directory (logs, node stores) afterwards.
    #[arg(long, env = "SWARMSEED_FAULTS_KEEP")]
    keep_work_dir: bool,
}

#[derive(Debug, clap::Args)]
struct ClusterArgs {
    /// Number of nodes (named node-0, node-1, ...).
    #[arg(long, env = "E2E_NODES", default_value_t = 3)]
    nodes: usize,
    /// Rate of every node link in Mbit/s, both directions (unshaped if unset).
    #[arg(long, env = "E2E_LINK_MBIT")]
    link_mbit: Option<u32>,
    /// Rate of the origin link in Mbit/s, both directions (unshaped if unset).
    #[arg(long, env = "E2E_ORIGIN_LINK_MBIT")]
    origin_link_mbit: Option<u32>,
    /// The agent binary; without it `swarmseed-agent` next to this binary is
    /// used, or the stub agent when there is none.
    #[arg(long, env = "E2E_AGENT_BIN")]
    agent_binary: Option<PathBuf>,
    /// Extra argument for every agent, placed before the generated flags
    /// (repeatable).
    #[arg(
        long = "agent-arg",
        env = "E2E_AGENT_ARGS",
        value_delimiter = ' ',
        allow_hyphen_values = true
    )]
    agent_args: Vec<String>,
    /// Label for every Node, KEY=VALUE (repeatable).
    #[arg(long = "node-label", env = "E2E_NODE_LABELS", value_delimiter = ',')]
    node_labels: Vec<String>,
    /// Work directory (node roots, logs, kubeconfig); a temporary one if unset.
    #[arg(long, env = "E2E_WORK_DIR")]
    work_dir: Option<PathBuf>,
    /// Keep the temporary work directory after exit.
    #[arg(long, env = "E2E_KEEP_WORK_DIR")]
    keep_work_dir: bool,
    /// Network isolation: namespaces (needs root), loopback, or auto.
    #[arg(long, env = "E2E_NETWORK", value_enum, default_value_t = NetworkMode::Auto)]
    network: NetworkMode,
    /// Serve this directory from an HTTP origin on the origin address, port 8080.
    #[arg(long, env = "E2E_HTTP_ORIGIN_ROOT")]
    http_origin_root: Option<PathBuf>,
    /// Start an S3 origin (moto) on the origin address, port 9000, with this bucket.
    #[arg(long, env = "E2E_S3_BUCKET")]
    s3_bucket: Option<String>,
    /// Upload this directory into the S3 bucket.
    #[arg(long, env = "E2E_S3_UPLOAD", requires = "s3_bucket")]
    s3_upload: Option<PathBuf>,
    /// How long to wait for each agent's /readyz.
    #[arg(long, env = "E2E_READY_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    ready_timeout: Duration,
}

#[derive(Debug, clap::Args)]
struct OriginHttpArgs {
    /// Directory to serve.
    #[arg(long, env = "ORIGIN_ROOT")]
    root: PathBuf,
    /// Address to listen on.
    #[arg(long, env = "ORIGIN_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
}

#[derive(Debug, clap::Args)]
struct TcpProxyArgs {
    /// Address to accept clients on.
    #[arg(long, env = "PROXY_LISTEN")]
    listen: SocketAddr,
    /// Where to forward connections.
    #[arg(long, env = "PROXY_UPSTREAM")]
    upstream: SocketAddr,
    /// Where to serve /_origin/stats and /_origin/reset.
    #[arg(long, env = "PROXY_STATS_LISTEN")]
    stats_listen: Option<SocketAddr>,
}

#[derive(Debug, clap::Args)]
struct NetbenchArgs {
    #[command(subcommand)]
    role: NetbenchRole,
}

#[derive(Debug, Subcommand)]
enum NetbenchRole {
    /// Receive and measure; prints one JSON line per sender.
    Recv {
        /// Address to listen on.
        #[arg(long, env = "NETBENCH_LISTEN")]
        listen: SocketAddr,
        /// Exit after this many senders (default: run until killed).
        #[arg(long, env = "NETBENCH_COUNT")]
        count: Option<usize>,
        /// Excluded from the steady-state rate (TCP slow start).
        #[arg(long, env = "NETBENCH_WARMUP", default_value = "500ms", value_parser = humantime::parse_duration)]
        warmup: Duration,
    },
    /// Send for a while; prints the receiver's measurement as JSON.
    Send {
        /// The receiver's address.
        #[arg(long, env = "NETBENCH_CONNECT")]
        connect: SocketAddr,
        /// How long to send.
        #[arg(long, env = "NETBENCH_DURATION", default_value = "3s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// How long to keep retrying the connection (receiver starting).
        #[arg(long, env = "NETBENCH_CONNECT_WAIT", default_value = "5s", value_parser = humantime::parse_duration)]
        connect_wait: Duration,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    logging::init(LogFormat::Text, LogOutput::Stderr);
    swarmseed_harness::init_crypto();
    let cli = Cli::parse();
    match cli.command {
        Command::Demo(args) => swarmseed_e2e::demo::run(args, shutdown_signal()).await?,
        Command::Apiserver(args) => apiserver::run_cli(args).await?,
        Command::Cluster(args) => run_cluster(args).await?,
        Command::OriginHttp(args) => {
            let listener = tokio::net::TcpListener::bind(args.listen)
                .await
                .with_context(|| format!("bind {}", args.listen))?;
            eprintln!(
                "origin-http serving {} on http://{}",
                args.root.display(),
                args.listen
            );
            serve(listener, args.root, Arc::new(OriginCounters::default())).await?;
        }
        Command::TcpProxy(args) => {
            let proxy = TcpProxy::start(args.listen, args.upstream, args.stats_listen).await?;
            eprintln!("tcp-proxy {} -> {}", proxy.addr(), args.upstream);
            proxy.run_forever().await;
        }
        Command::Netbench(NetbenchArgs { role }) => match role {
            NetbenchRole::Recv {
                listen,
                count,
                warmup,
            } => {
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("bind {listen}"))?;
                net::serve(listener, count, warmup).await?;
            }
            NetbenchRole::Send {
                connect,
                duration,
                connect_wait,
            } => {
                let r = net::send(connect, duration, connect_wait).await?;
                println!("{}", serde_json::to_string(&r)?);
            }
        },
        Command::HostilePeer(args) => {
            let report = swarmseed_e2e::hostile_peer::run(args).await?;
            println!("{}", serde_json::to_string(&report)?);
        }
        Command::StubAgent(args) => stub_agent::run(args).await?,
        Command::PeerBench(args) => {
            let json = args.json;
            let report = swarmseed_bench::peer::run(args).await?;
            swarmseed_bench::peer::print(&report, json)?;
        }
        Command::Bench(args) => swarmseed_bench::seed::main(args, shutdown_signal()).await?,
        Command::BenchScale(args) => {
            swarmseed_bench::scale::main(args, shutdown_signal()).await?;
        }
        Command::Soak(args) => run_soak(args).await?,
    }
    Ok(())
}

async fn run_soak(args: SoakArgs) -> anyhow::Result<()> {
    use swarmseed_e2e::faults::soak;
    let cfg = soak::SoakConfig {
        seed: args.seed.unwrap_or_else(soak::clock_seed),
        duration: args.duration,
        nodes: 4,
        datasets: 3,
        keep_work_dir: args.keep_work_dir,
    };
    let report = tokio::select! {
        r = soak::run(cfg) => r?,
        _ = shutdown_signal() => anyhow::bail!("interrupted"),
    };
    println!("{}", report.summary());
    for v in &report.violations {
        println!("{v}");
    }
    if !report.violations.is_empty() {
        anyhow::bail!(
            "{} violation(s); replay with `e2e soak --seed {}`",
            report.violations.len(),
            report.seed.unwrap_or_default()
        );
    }
    Ok(())
}

async fn run_cluster(args: ClusterArgs) -> anyhow::Result<()> {
    let e2e = find_e2e_binary(None)?;
    let (agent_binary, mut agent_args) = match args.agent_binary {
        Some(bin) => (bin, Vec::new()),
        None => {
            let beside = e2e.with_file_name("swarmseed-agent");
            if beside.is_file() {
                (beside, Vec::new())
            } else {
                eprintln!(
                    "no agent binary given and none at {}: using the stub agent",
                    beside.display()
                );
                (e2e.clone(), vec!["stub-agent".to_string()])
            }
        }
    };
    agent_args.extend(args.agent_args.into_iter().filter(|a| !a.is_empty()));
    let mut spec = ClusterSpec::new(args.nodes, agent_binary);
    spec.agent_args = agent_args;
    spec.link_mbit = args.link_mbit;
    spec.origin_link_mbit = args.origin_link_mbit;
    spec.work_dir = args.work_dir;
    spec.keep_work_dir = args.keep_work_dir;
    spec.network = args.network;
    spec.ready_timeout = args.ready_timeout;
    spec.e2e_binary = Some(e2e);
    for label in args.node_labels.iter().filter(|l| !l.is_empty()) {
        let (k, v) = label
            .split_once('=')
            .with_context(|| format!("node label {label:?} is not KEY=VALUE"))?;
        for n in &mut spec.nodes {
            n.labels.insert(k.to_string(), v.to_string());
        }
    }

    // Ctrl-C during start-up drops the half-built cluster, which tears down.
    let mut cluster = tokio::select! {
        c = Cluster::start(spec) => c?,
        _ = shutdown_signal() => anyhow::bail!("interrupted while starting"),
    };
    println!("KUBECONFIG={}", cluster.kubeconfig().display());
    println!("API_URL={}", cluster.api_url());
    println!("WORK_DIR={}", cluster.work_dir().display());
    println!(
        "CONTROL_TOKEN_FILE={}",
        cluster.control_token_file().display()
    );
    for n in cluster.nodes() {
        println!(
            "NODE {} address={} root={} netns={} log={}",
            n.name,
            n.address,
            n.root.display(),
            n.netns.as_deref().unwrap_or("-"),
            n.agent_log.display()
        );
    }
    let _http = match &args.http_origin_root {
        Some(root) => {
            let o = cluster.start_http_origin(root, 8080).await?;
            println!("HTTP_ORIGIN={}", o.url());
            Some(o)
        }
        None => None,
    };
    let _s3 = match &args.s3_bucket {
        Some(bucket) => {
            let s3 = cluster.start_s3_origin(bucket).await?;
            if let Some(dir) = &args.s3_upload {
                let (files, bytes) = s3.upload_dir(dir, "").await?;
                s3.reset_stats().await?;
                println!("S3_UPLOADED files={files} bytes={bytes}");
            }
            println!(
                "S3_ENDPOINT={} S3_BUCKET={} S3_STATS={}",
                s3.endpoint(),
                s3.bucket(),
                s3.stats_url()
            );
            Some(s3)
        }
        None => None,
    };
    println!("READY (Ctrl-C to tear down)");
    shutdown_signal().await;
    eprintln!("tearing down");
    drop(_s3);
    drop(_http);
    cluster.stop().await;
    Ok(())
}
