//! `swarmseed-operator`: reconciles `Dataset` resources (`run`, the
//! default) or prints the CRD (`crd`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use swarmseed_operator::agents::{ControlToken, DEFAULT_CONTROL_PORT};
use swarmseed_operator::controller::{self, Context, Settings};
use swarmseed_operator::plan::DEFAULT_MAX_PEERS;

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
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 15s"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{s:?} is not a duration like 15s")),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Crd) => {
            print!("{}", swarmseed_operator::crd::crd_yaml()?);
            Ok(())
        }
        Some(Command::Run) | None => run(cli.run),
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    // kube uses rustls with ring, object_store's reqwest with aws-lc-rs:
    // one provider must be chosen before either builds a TLS config.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let token_file = args
        .control_token_file
        .context("--control-token-file (SWARMSEED_CONTROL_TOKEN_FILE) is required")?;
    let token = ControlToken::from_file(&token_file)?;
    let secret =
        std::fs::read(&token_file).with_context(|| format!("reading {}", token_file.display()))?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let client = kube::Client::try_default()
            .await
            .context("connecting to the Kubernetes API")?;
        let settings = Settings {
            agent_namespace: args.agent_namespace,
            control_port: args.control_port,
            call_timeout: args.agent_call_timeout,
            max_peers: args.max_peers,
        };
        controller::run(Arc::new(Context::new(client, settings, token, secret))).await;
        Ok(())
    })
}
