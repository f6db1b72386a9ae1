//! `swarmseed-operator`: reconciles `Dataset` resources (`run`, the
//! default) or prints the CRD (`crd`).
//!
//! `run`: start the admin server → wait for the leader Lease (a standby
//! waits here) → run the controller until SIGTERM/ctrl-c → release the
//! Lease. If leadership is lost while running, the process exits non-zero
//! at once and Kubernetes restarts it as a standby: the simplest way to be
//! sure nothing of the old leader keeps acting.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use prometheus_client::registry::Registry;
use swarmseed_operator::admin::{self, Metrics};
use swarmseed_operator::agents::{ControlToken, DEFAULT_CONTROL_PORT};
use swarmseed_operator::controller::{self, Context, Settings};
use swarmseed_operator::leader::{ElectionStatus, LeaderElector, LeaseTiming};
use swarmseed_operator::plan::DEFAULT_MAX_PEERS;
use swarmseed_runtime::logging::{self, LogFormat, LogOutput};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(
    name = "swarmseed-operator",
    version,
    about = "Seeds datasets onto Kubernetes nodes"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the operator (the default).
    Run,
    /// Print the Dataset CustomResourceDefinition as YAML (what
    /// crds/datasets.swarmseed.io.yaml holds).
    Crd,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Namespace of the agent DaemonSet's Pods.
    #[arg(
        long,
        global = true,
        env = "SWARMSEED_AGENT_NAMESPACE",
        default_value = "swarmseed-system"
    )]
    agent_namespace: String,
    /// Port of the agents' control API.
    #[arg(long, global = true, env = "SWARMSEED_CONTROL_PORT", default_value_t = DEFAULT_CONTROL_PORT)]
    control_port: u16,
    /// File holding the agents' control token (a mounted Secret).
    /// Required by `run`.
    #[arg(long, global = true, env = "SWARMSEED_CONTROL_TOKEN_FILE")]
    control_token_file: Option<PathBuf>,
    /// Bound on each call to an agent, e.g. `15s`.
    #[arg(long, global = true, env = "SWARMSEED_AGENT_CALL_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    agent_call_timeout: Duration,
    /// Peers each agent is given (besides the origin fetchers).
    #[arg(long, global = true, env = "SWARMSEED_MAX_PEERS", default_value_t = DEFAULT_MAX_PEERS)]
    max_peers: usize,
    /// Elect a leader through a coordination.k8s.io Lease so that only one
    /// replica acts; `--leader-election=false` for a single replica or
    /// development.
    #[arg(
        long,
        global = true,
        env = "SWARMSEED_LEADER_ELECTION",
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    leader_election: bool,
    /// Name of the leader election Lease.
    #[arg(
        long,
        global = true,
        env = "SWARMSEED_LEASE_NAME",
        default_value = "swarmseed-operator"
    )]
    lease_name: String,
    /// Namespace of the leader election Lease (the operator's own namespace,
    /// from the downward API).
    #[arg(
        long,
        global = true,
        env = "POD_NAMESPACE",
        default_value = "swarmseed-system"
    )]
    lease_namespace: String,
    /// This replica's name in the Lease; must differ between replicas (the
    /// Pod name, from the downward API). Default: `<hostname>_<random>`.
    #[arg(long, global = true, env = "POD_NAME")]
    identity: Option<String>,
    /// Address of the admin server (/livez, /readyz, /metrics).
    #[arg(
        long,
        global = true,
        env = "SWARMSEED_ADMIN_LISTEN",
        default_value = "0.0.0.0:8080"
    )]
    admin_listen: SocketAddr,
}

/// A duration such as `15s`, `500ms` or `1m30s` (humantime's syntax, as
/// the agent's and the plugin's flags take); a bare number is seconds, as
/// it always was here.
fn parse_duration(s: &str) -> Result<Duration, String> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse()
            .map(Duration::from_secs)
            .map_err(|_| format!("{s:?} is not a duration like 15s"));
    }
    humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration like 15s: {e}"))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Crd) => {
            print!("{}", swarmseed_crd::crd_yaml()?);
            Ok(())
        }
        Some(Command::Run) | None => run(cli.run),
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    logging::init(LogFormat::Text, LogOutput::Stdout);
    // kube uses rustls with ring, object_store's reqwest with aws-lc-rs:
    // one provider must be chosen before either builds a TLS config.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let token_file = args
        .control_token_file
        .clone()
        .context("--control-token-file (SWARMSEED_CONTROL_TOKEN_FILE) is required")?;
    let token = ControlToken::from_file(&token_file)?;
    let secret =
        std::fs::read(&token_file).with_context(|| format!("reading {}", token_file.display()))?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let result = runtime.block_on(serve(args, token, secret));
    // A lost leader must stop now: do not wait for stragglers.
    runtime.shutdown_timeout(Duration::from_secs(5));
    result
}

/// Admin server around the leader's work.
async fn serve(args: RunArgs, token: ControlToken, secret: Vec<u8>) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let timing = LeaseTiming::default();
    let elector = if args.leader_election {
        let identity = args.identity.clone().unwrap_or_else(default_identity);
        tracing::info!(lease = %format!("{}/{}", args.lease_namespace, args.lease_name), %identity, "leader election on");
        Some(LeaderElector::new(
            client.clone(),
            &args.lease_namespace,
            &args.lease_name,
            &identity,
            timing,
        )?)
    } else {
        tracing::info!("leader election off: this replica acts alone");
        None
    };
    // Without an election this replica is the leader for /readyz and the
    // gauge; the sender is not needed because that never changes.
    let election = match &elector {
        Some(e) => e.status(),
        None => watch::channel(ElectionStatus::Leader).1,
    };

    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let listener = tokio::net::TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("binding the admin server to {}", args.admin_listen))?;
    let stop_admin = CancellationToken::new();
    let admin = {
        let app = admin::router(
            Arc::new(registry),
            metrics.clone(),
            election,
            timing.lease_duration,
        );
        let stop = stop_admin.clone();
        tokio::spawn(async move {
            swarmseed_runtime::admin::serve(listener, app, async move { stop.cancelled().await })
                .await
        })
    };

    let settings = Settings {
        agent_namespace: args.agent_namespace,
        control_port: args.control_port,
        call_timeout: args.agent_call_timeout,
        max_peers: args.max_peers,
    };
    let ctx = Arc::new(Context::new(client, settings, token, secret).with_metrics(metrics.clone()));
    let result = lead(elector, ctx).await;

    stop_admin.cancel();
    match admin.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "admin server failed"),
        Err(e) => tracing::warn!(error = %e, "admin server task failed"),
    }
    result
}

/// Waits for leadership (if elected), runs the controller while it lasts,
/// and releases the Lease after a graceful shutdown.
async fn lead(elector: Option<LeaderElector>, ctx: Arc<Context>) -> anyhow::Result<()> {
    let Some(elector) = elector else {
        controller::run(ctx).await;
        return Ok(());
    };
    let guard = tokio::select! {
        guard = elector.acquire() => guard.context("leader election")?,
        _ = swarmseed_runtime::shutdown::signal_received() => {
            tracing::info!("shutting down as a standby");
            return Ok(());
        }
    };
    let lost = guard.lost();
    tokio::select! {
        // The controller stops on SIGTERM/ctrl-c by itself, after its
        // running reconciles finish.
        () = controller::run(ctx) => {
            if let Err(e) = guard.release().await {
                tracing::warn!(error = %e, "could not release the leader Lease; it expires on its own");
            }
            Ok(())
        }
        // Dropping the controller aborts its reconciles.
        () = lost.cancelled() => {
            anyhow::bail!("lost the leader Lease; exiting so that a restart rejoins as a standby")
        }
    }
}

/// `<hostname>_<random>`: unique even for two processes on one machine.
fn default_identity() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "swarmseed-operator".into());
    format!("{host}_{:08x}", rand::random::<u32>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn leader_election_is_on_unless_switched_off() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).unwrap().run.leader_election;
        assert!(parse(&["swarmseed-operator"]));
        assert!(parse(&["swarmseed-operator", "--leader-election"]));
        assert!(!parse(&["swarmseed-operator", "--leader-election=false"]));
        assert!(!parse(&[
            "swarmseed-operator",
            "run",
            "--leader-election=false"
        ]));
    }

    #[test]
    fn durations_take_humantime_and_bare_seconds() {
        let ok = |s: &str| parse_duration(s).unwrap();
        assert_eq!(ok("15s"), Duration::from_secs(15));
        assert_eq!(ok("500ms"), Duration::from_millis(500));
        assert_eq!(ok("2m"), Duration::from_secs(120));
        assert_eq!(ok("1m30s"), Duration::from_secs(90));
        assert_eq!(ok("20"), Duration::from_secs(20));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("fast").is_err());
        let timeout = |args: &[&str]| Cli::try_parse_from(args).unwrap().run.agent_call_timeout;
        assert_eq!(timeout(&["swarmseed-operator"]), Duration::from_secs(15));
        assert_eq!(
            timeout(&["swarmseed-operator", "--agent-call-timeout", "1m"]),
            Duration::from_secs(60)
        );
    }
}
