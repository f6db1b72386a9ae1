//! `swarmseed-agent`: the per-node agent (runs as a DaemonSet).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use swarmseed_agent::agent::Agent;
use swarmseed_agent::control::{ControlAuth, ControlService};
use swarmseed_agent::metrics::Metrics;
use swarmseed_agent::peer_server::{self, HandshakeLimits, RevisionLookup};
use swarmseed_agent::store::NodeStore;
use swarmseed_agent::transfer::TransferConfig;
use swarmseed_origin::OriginOptions;
use swarmseed_proto::pb::agent_control_server::AgentControlServer;
use swarmseed_runtime::logging::{self, LogFormat, LogOutput};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// Node agent of swarmseed: holds datasets on this node's disk, pulling
/// verified chunks from peer agents over TCP and from the origin only as a
/// last resort, and publishes each revision atomically under
/// <ROOT>/datasets/<namespace>/<name>. The operator drives it over gRPC.
#[derive(Debug, Parser)]
#[command(name = "swarmseed-agent", version)]
struct Args {
    /// Name of the Kubernetes node this agent runs on (from the downward API).
    #[arg(long, env = "NODE_NAME")]
    node_name: String,

    /// Root of the node store (a hostPath). Datasets are published under
    /// <ROOT>/datasets/<namespace>/<name>.
    #[arg(long, env = "SWARMSEED_ROOT", default_value = "/var/lib/swarmseed")]
    root: PathBuf,

    /// Address of the gRPC control API the operator calls.
    #[arg(long, env = "SWARMSEED_CONTROL_LISTEN", default_value = "0.0.0.0:7400")]
    control_listen: SocketAddr,

    /// Address of the peer data server other agents pull chunks from.
    #[arg(long, env = "SWARMSEED_PEER_LISTEN", default_value = "0.0.0.0:7401")]
    peer_listen: SocketAddr,

    /// Address of the admin server (/livez, /readyz, /metrics).
    #[arg(long, env = "SWARMSEED_ADMIN_LISTEN", default_value = "0.0.0.0:7402")]
    admin_listen: SocketAddr,

    /// The address peers reach this node at (the pod IP); reported to the
    /// operator with the peer port.
    #[arg(long, env = "POD_IP")]
    advertise_address: Option<String>,

    /// File holding the control token the operator presents on every call
    /// (a mounted Secret).
    #[arg(long, env = "SWARMSEED_CONTROL_TOKEN_FILE")]
    control_token_file: PathBuf,

    /// Read a chunk no connected peer holds from the origin when every agent
    /// assigned to fetch it has been unreachable for this long: no session
    /// with it (a refusal does not count: not assigned yet, refused or
    /// failed its assignment).
    #[arg(long, env = "SWARMSEED_FALLBACK_AFTER", default_value = "30s", value_parser = humantime::parse_duration)]
    fallback_after: Duration,

    /// Timeout of one origin request.
    #[arg(long, env = "SWARMSEED_ORIGIN_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    origin_timeout: Duration,

    /// Retries of a failed origin request (with exponential backoff).
    #[arg(long, env = "SWARMSEED_ORIGIN_RETRIES", default_value_t = 5)]
    origin_retries: u32,

    /// Most chunks one dataset reads from the origin at a time (and at most
    /// 64 MiB). The agent keeps one in flight, or about a quarter second of
    /// its measured origin rate if that is more: more requests help only
    /// when the origin's latency, not its bandwidth, is the limit.
    #[arg(long, env = "SWARMSEED_ORIGIN_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=64))]
    origin_concurrency: u16,

    /// Drop a peer connection that delivers nothing for this long while
    /// requests are outstanding.
    #[arg(long, env = "SWARMSEED_PEER_STALL_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    peer_stall_timeout: Duration,

    /// Close a peer connection that has not authenticated this long after
    /// it was accepted (a peer sends its HELLO within one round trip).
    #[arg(long, env = "SWARMSEED_PEER_HANDSHAKE_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    peer_handshake_timeout: Duration,

    /// Most peer connections that have not authenticated yet, over all
    /// sources. A new connection past it closes the oldest of them, so a
    /// flood of slow clients cannot keep a real peer out for long.
    #[arg(long, env = "SWARMSEED_PEER_MAX_HANDSHAKES", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    peer_max_handshakes: u32,

    /// Most peer connections that have not authenticated yet from one
    /// source address (IPv6: one /64). A new one past it is closed at
    /// once with a "busy" error.
    #[arg(long, env = "SWARMSEED_PEER_MAX_HANDSHAKES_PER_SOURCE", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    peer_max_handshakes_per_source: u32,

    /// TCP congestion control of the connections this agent sends chunks
    /// on: the first of these (comma-separated) the kernel lets the agent
    /// use; empty: the node's default. Many peer streams cross every link
    /// at once, next to the origin read that bounds how fast a dataset can
    /// spread; a loss-based algorithm shares those links evenly, where many
    /// BBR streams crowd the origin read out. Without CAP_NET_ADMIN (as the
    /// chart runs it) the agent may use only the algorithms in
    /// /proc/sys/net/ipv4/tcp_allowed_congestion_control, where a node whose
    /// default is BBR may lack cubic; reno is always allowed.
    #[arg(
        long,
        env = "SWARMSEED_PEER_CONGESTION_CONTROL",
        default_value = "cubic,reno",
        value_delimiter = ','
    )]
    peer_congestion_control: Vec<String>,

    /// Memory for the chunks each dataset transfer verified last, MiB.
    /// Peers ask for a chunk soon after this node announces it; from here
    /// it is sent without a disk read. Chunks of big files are written to
    /// disk bypassing the page cache, so without this memory every chunk
    /// served would be read back from disk. Released 30 s after the
    /// dataset is published. 0 turns it off.
    #[arg(long, env = "SWARMSEED_PEER_CACHE_MIB", default_value_t = 64)]
    peer_cache_mib: u32,

    /// Write every chunk through the page cache, never with O_DIRECT (on a
    /// filesystem that refuses O_DIRECT the agent does so by itself).
    #[arg(long, env = "SWARMSEED_NO_DIRECT_IO")]
    no_direct_io: bool,

    /// Log format.
    #[arg(long, env = "SWARMSEED_LOG_FORMAT", default_value = "text", value_parser = PossibleValuesParser::new(LogFormat::NAMES).try_map(|s| s.parse::<LogFormat>()))]
    log_format: LogFormat,

    /// Fault tests only: serve corrupted chunks to peers (a build with the
    /// `fault-injection` feature).
    #[cfg(feature = "fault-injection")]
    #[arg(long, env = "SWARMSEED_TEST_FAULT_CORRUPT_SERVING", hide = true)]
    test_fault_corrupt_serving: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    logging::init(args.log_format, LogOutput::Stderr);
    #[cfg(feature = "fault-injection")]
    swarmseed_agent::fault::set_corrupt_serving(args.test_fault_corrupt_serving);

    let token = std::fs::read_to_string(&args.control_token_file).with_context(|| {
        format!(
            "reading the control token from {}",
            args.control_token_file.display()
        )
    })?;
    if token.trim().is_empty() {
        anyhow::bail!(
            "the control token file {} is empty",
            args.control_token_file.display()
        );
    }

    let mut store = NodeStore::open(&args.root).context("opening the node store")?;
    if args.no_direct_io {
        store = store.without_direct_io();
    }
    let store = Arc::new(store);
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Metrics::register(&mut registry);

    let peer_listener = peer_server::bind(args.peer_listen)
        .with_context(|| format!("binding the peer server to {}", args.peer_listen))?;
    let peer_port = peer_listener.local_addr()?.port();
    choose_congestion_control(&peer_listener, &args.peer_congestion_control);
    let advertise = args
        .advertise_address
        .clone()
        .unwrap_or_else(|| args.peer_listen.ip().to_string());

    let cfg = TransferConfig {
        node_name: args.node_name.clone(),
        fallback_after: args.fallback_after,
        stall_timeout: args.peer_stall_timeout,
        origin_chunk_concurrency: args.origin_concurrency.into(),
        peer_cache_bytes: u64::from(args.peer_cache_mib) << 20,
        origin: OriginOptions {
            request_timeout: args.origin_timeout,
            max_retries: args.origin_retries,
            ..OriginOptions::default()
        },
        ..TransferConfig::default()
    };
    let agent = Agent::new(
        store,
        metrics.clone(),
        cfg,
        format!("{advertise}:{peer_port}"),
    )
    .context("loading the agent identity")?;

    let shutdown = CancellationToken::new();
    let lookup: Arc<dyn RevisionLookup> = agent.clone();
    let handshakes = HandshakeLimits {
        timeout: args.peer_handshake_timeout,
        max_pending: args.peer_max_handshakes as usize,
        max_pending_per_source: args.peer_max_handshakes_per_source as usize,
    };
    let peers = tokio::spawn(peer_server::serve(
        peer_listener,
        lookup,
        handshakes,
        metrics,
        shutdown.clone(),
    ));

    let admin_listener = tokio::net::TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("binding the admin server to {}", args.admin_listen))?;
    let admin = {
        let app = swarmseed_agent::admin::router(agent.clone(), Arc::new(registry));
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            swarmseed_runtime::admin::serve(admin_listener, app, async move {
                shutdown.cancelled().await
            })
            .await
        })
    };

    let control = {
        // An assignment carries the whole listing: tonic's default of
        // 4 MiB would refuse datasets of a few tens of thousands of files.
        // The token is checked before a body is decoded.
        let svc = tonic::service::interceptor::InterceptedService::new(
            AgentControlServer::new(ControlService::new(agent.clone()))
                .max_decoding_message_size(swarmseed_proto::layout::MAX_ASSIGNMENT_BYTES),
            ControlAuth::new(&token),
        );
        let shutdown = shutdown.clone();
        let addr = args.control_listen;
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .timeout(Duration::from_secs(120))
                .add_service(svc)
                .serve_with_shutdown(addr, async move { shutdown.cancelled().await })
                .await
        })
    };

    info!(node = %args.node_name, root = %args.root.display(), peer = %format!("{advertise}:{peer_port}"), "agent started");
    agent.recover().await;

    tokio::select! {
        stop = swarmseed_runtime::shutdown::signal_received() => info!("{stop}"),
        r = control => error!(result = ?r, "control server stopped"),
    }
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = peers.await;
        let _ = admin.await;
    })
    .await;
    Ok(())
}

/// Sets the first of `names` the kernel accepts on the peer listener (every
/// connection accepted from it takes it); warns when it accepts none.
fn choose_congestion_control(listener: &tokio::net::TcpListener, names: &[String]) {
    let names: Vec<&str> = names
        .iter()
        .map(|n| n.trim())
        .filter(|n| !n.is_empty())
        .collect();
    let mut refused = Vec::new();
    for name in &names {
        match swarmseed_agent::wire::set_congestion_control(listener, name) {
            Ok(()) => {
                info!(
                    congestion_control = name,
                    "congestion control of peer connections"
                );
                return;
            }
            Err(e) => refused.push(format!("{name}: {e}")),
        }
    }
    if !refused.is_empty() {
        warn!(
            refused = %refused.join("; "),
            "peer connections keep the node's default congestion control \
             (see /proc/sys/net/ipv4/tcp_allowed_congestion_control)"
        );
    }
}
