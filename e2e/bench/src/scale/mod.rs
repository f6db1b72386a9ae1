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

mod api_proxy;
mod fake_agent;
mod fleet;
mod report;
mod run;
mod stats;
mod watch;

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::bail;

use crate::report::{Markers, RenderArgs};

pub use api_proxy::status_write_target;
pub use fleet::agent_address;
pub use report::{DatasetFigures, ScaleReport, print, results_section, splice_section};
pub use run::run;
pub use stats::{max_in_window, median, min_gap};

/// Namespace of the Datasets.
pub const NAMESPACE: &str = "scale";
/// The label every simulated Node carries and every Dataset selects.
pub const NODE_LABEL: (&str, &str) = ("swarmseed.io/scale-bench", "true");
/// Targets of the issue: operator at 500 nodes.
pub const RSS_TARGET_BYTES: u64 = 256 << 20;
pub const WRITES_PER_S_TARGET: u32 = 1;
/// Where the scale table goes in RESULTS.md.
pub const MARKERS: Markers = Markers {
    begin: "<!-- BEGIN scale: e2e/bench/run.sh, generated, edits here are overwritten -->",
    end: "<!-- END scale -->",
};
const OPERATOR_ID: &str = "scale-operator";
/// A fake agent reports Pending this long after its assignment.
const PENDING_FOR: Duration = Duration::from_millis(100);
/// Share of the seed time spent moving chunks; the rest is Publishing.
const TRANSFER_SHARE: f64 = 0.95;

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
    Render(RenderArgs),
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
    #[arg(long, env = "SCALE_DATASET_SIZE", default_value = "4GiB", value_parser = swarmseed_harness::size::parse_size)]
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

/// The `e2e bench-scale` subcommand.
pub async fn main(
    args: ScaleBenchArgs,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    match args.tool {
        Some(ScaleTool::Render(a)) => crate::report::render(&a, MARKERS, results_section)?,
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn node_name(i: usize) -> String {
    format!("node-{i:05}")
}

fn dataset_name(i: usize) -> String {
    format!("ds-{i:03}")
}
