//! `e2e bench`: the headline numbers of DESIGN.md ("What fast means
//! here") for one topology, through the whole product, with the baselines
//! measured in the same run on the same links.
//!
//! One run:
//!
//! 1. A [`SeedCluster`](swarmseed_harness::seeding::SeedCluster): the API stand-in, N nodes in network namespaces
//!    running the real agent, the operator. Every node link and the origin
//!    link are shaped to `--link-mbit` in both directions. Every node root,
//!    and the origin's files, are on an ext4 filesystem of their own, made
//!    fresh for the run ([`swarmseed_harness::disk`]). A generated dataset is served by
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

mod baseline;
mod bound;
mod peer_link;
mod report;
mod run;

use std::time::Duration;

use anyhow::bail;
use swarmseed_harness::origin::dataset::DatasetSpec;

use crate::report::{Markers, RenderArgs, format_size};

pub use baseline::{FetchAllArgs, FetchAllReport, fetch_all};
pub use bound::{bound_for_uniform_links, kumar_ross_bound, mbit_to_bytes_per_s};
pub use report::{BenchReport, json_line, print, results_section, splice_section};
pub use run::run;

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
/// Where `e2e/bench/run.sh` puts its table in RESULTS.md.
pub const MARKERS: Markers = Markers {
    begin: "<!-- BEGIN e2e/bench/run.sh: generated, edits here are overwritten -->",
    end: "<!-- END e2e/bench/run.sh -->",
};

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
    #[arg(long, env = "BENCH_SIZE", default_value = "256MiB", value_parser = swarmseed_harness::size::parse_size)]
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
        Some(BenchTool::Render(a)) => crate::report::render(&a, MARKERS, results_section)?,
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

#[cfg(test)]
mod tests {
    use super::*;

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
            swarmseed_harness::size::parse_size(&format_size(96 << 20)),
            Ok(96 << 20)
        );
    }
}
