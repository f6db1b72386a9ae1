//! A stand-in for the swarmseed agent with the same command line: binds
//! the control and peer ports (accepting and closing connections) and
//! serves `/livez`, `/readyz` and `/metrics` on the admin port. It lets the
//! cluster launcher be tested without the real agent (`e2e stub-agent`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use std::sync::Arc;
use std::sync::atomic::AtomicI64;

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use swarmseed_runtime::admin::Health;
use tokio::net::TcpListener;

use swarmseed_harness::error::{Error, Result};

/// The agent's flags (see the agent's `--help`).
#[derive(Debug, Clone, clap::Args)]
pub struct StubAgentArgs {
    #[arg(long, env = "SWARMSEED_NODE_NAME")]
    pub node_name: String,
    #[arg(long, env = "SWARMSEED_ROOT")]
    pub root: PathBuf,
    #[arg(long, env = "SWARMSEED_CONTROL_LISTEN")]
    pub control_listen: SocketAddr,
    #[arg(long, env = "SWARMSEED_PEER_LISTEN")]
    pub peer_listen: SocketAddr,
    #[arg(long, env = "SWARMSEED_ADMIN_LISTEN")]
    pub admin_listen: SocketAddr,
    #[arg(long, env = "SWARMSEED_ADVERTISE_ADDRESS")]
    pub advertise_address: Option<std::net::IpAddr>,
    #[arg(long, env = "SWARMSEED_CONTROL_TOKEN_FILE")]
    pub control_token_file: Option<PathBuf>,
    /// Answer /readyz with 503 for this long after start.
    #[arg(long, env = "STUB_AGENT_READY_AFTER", default_value = "0s", value_parser = humantime::parse_duration)]
    pub ready_after: Duration,
}

/// Ready once `ready_after` passed since the start.
struct StubHealth {
    started: tokio::time::Instant,
    ready_after: Duration,
}

impl Health for StubHealth {
    fn readiness(&self) -> Result<String, String> {
        if self.started.elapsed() >= self.ready_after {
            Ok("ok".into())
        } else {
            Err("starting".into())
        }
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    Ok(swarmseed_harness::bind_tcp(addr).await?.0)
}

/// Runs until killed.
pub async fn run(args: StubAgentArgs) -> Result<()> {
    std::fs::create_dir_all(&args.root).map_err(|e| Error::io("create root", &args.root, e))?;
    let control = bind(args.control_listen).await?;
    let peer = bind(args.peer_listen).await?;
    let admin = bind(args.admin_listen).await?;
    for l in [control, peer] {
        tokio::spawn(async move {
            // Accept and drop: enough for "is the port open" checks.
            while let Ok((s, _)) = l.accept().await {
                drop(s);
            }
        });
    }
    let mut registry =
        Registry::with_labels([("node".into(), args.node_name.clone().into())].into_iter());
    let up = Gauge::<i64, AtomicI64>::default();
    up.set(1);
    registry.register("swarmseed_stub_agent_up", "1 while the stub agent runs", up);
    let health = StubHealth {
        started: tokio::time::Instant::now(),
        ready_after: args.ready_after,
    };
    let app = swarmseed_runtime::admin::router(Arc::new(registry), Arc::new(health));
    eprintln!(
        "stub agent {} serving admin on {}",
        args.node_name, args.admin_listen
    );
    axum::serve(admin, app)
        .await
        .map_err(|e| Error::network("stub agent admin", e))
}
