//! `e2e demo`: the product end to end on one machine. Starts the API
//! stand-in and N nodes running the real agent, an HTTP origin holding a
//! generated model-like dataset, the operator; applies
//! `e2e/examples/dataset.yaml` with kubectl, shows live per-node progress,
//! then checks every node's tree against the origin and prints the figures.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use swarmseed_proto::pb;

use swarmseed_harness::origin::dataset::{DatasetSpec, generate_dataset, tree_digest};
use swarmseed_harness::seeding::{Binaries, SeedCluster};
use swarmseed_harness::size::parse_size;
use swarmseed_harness::{ClusterSpec, NetworkMode};

/// The demo's Dataset manifest; `${ORIGIN}` stands for the origin's
/// `host:port`.
pub const EXAMPLE: &str = include_str!("../examples/dataset.yaml");
const NAMESPACE: &str = "ml";
const NAME: &str = "llama-demo";
/// The label the example's nodeSelector asks for.
const GPU_LABEL: (&str, &str) = ("swarmseed.io/demo-gpu", "true");
const MIB: u64 = 1 << 20;

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 4)]
    pub nodes: usize,
    /// Dataset size: three big files plus 2,000 small ones (e.g. 1GiB, 256MiB).
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    pub size: u64,
    /// Rate of every node link and of the origin link, Mbit/s.
    #[arg(long, default_value_t = 1000)]
    pub link_mbit: u32,
    /// Keep the cluster running afterwards (prints KUBECONFIG=...), until
    /// Ctrl-C.
    #[arg(long)]
    pub keep: bool,
    /// Network isolation: namespaces (needs root), loopback, or auto.
    #[arg(long, value_enum, default_value_t = NetworkMode::Auto)]
    pub network: NetworkMode,
    /// Use the agent and operator binaries as they are (no cargo build).
    #[arg(long)]
    pub no_build: bool,
    /// Give up if the Dataset is not Ready after this long.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// A model-like dataset of about `size` bytes: three big "shards" and
/// 2,000 small files (configs, tokenizer pieces) of 1–64 KiB.
fn model_like(size: u64) -> DatasetSpec {
    let small_files = 2000;
    let small = small_files as u64 * 32 * 1024;
    DatasetSpec {
        seed: 42,
        big_files: 3,
        big_file_size: size.saturating_sub(small).max(3 * MIB) / 3,
        small_files,
        small_file_min: 1024,
        small_file_max: 64 * 1024,
        small_dirs: 20,
    }
}

/// Builds the agent and operator when run through cargo (`cargo run -p
/// e2e -- demo` sets `CARGO`), so one command from a fresh clone works.
fn build_binaries() -> anyhow::Result<()> {
    let Some(cargo) = std::env::var_os("CARGO") else {
        return Ok(());
    };
    eprintln!(
        "building swarmseed-agent and swarmseed-operator (cargo build --release --workspace --bins)..."
    );
    let status = std::process::Command::new(cargo)
        // The same build as the test command's, so nothing is rebuilt.
        .args(["build", "--release", "--locked", "--workspace", "--bins"])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build of the agent and operator failed");
    }
    Ok(())
}

fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= (1u64 << 30) as f64 {
        format!("{:.2} GiB", b / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", b / MIB as f64)
    }
}

fn bar(fraction: f64, width: usize) -> String {
    let filled = ((fraction.clamp(0.0, 1.0)) * width as f64).round() as usize;
    format!("{}{}", "#".repeat(filled), "-".repeat(width - filled))
}

/// Runs the demo; `shutdown` resolves on Ctrl-C / SIGTERM.
pub async fn run(
    args: DemoArgs,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    if !args.no_build {
        build_binaries()?;
    }
    let bins = Binaries::beside_e2e()?;
    let mut shutdown = std::pin::pin!(shutdown);

    let mut spec = ClusterSpec::new(args.nodes, &bins.agent);
    spec.link_mbit = Some(args.link_mbit);
    spec.origin_link_mbit = Some(args.link_mbit);
    spec.network = args.network;
    for n in &mut spec.nodes {
        n.labels.insert(GPU_LABEL.0.into(), GPU_LABEL.1.into());
    }
    eprintln!(
        "starting the cluster: API stand-in, {} nodes with real agents, {} Mbit/s links...",
        args.nodes, args.link_mbit
    );
    let mut c = tokio::select! {
        c = SeedCluster::start(spec, bins) => c?,
        _ = &mut shutdown => bail!("interrupted while starting"),
    };
    if let Some(why) = c.cluster.fallback_reason() {
        eprintln!("note: {why}: nodes share loopback, links are not shaped");
    }

    let src = c.cluster.work_dir().join("origin");
    let files = model_like(args.size);
    eprintln!(
        "generating a model-like dataset of {}...",
        human(files.total_bytes())
    );
    let gen_dir = src.clone();
    tokio::task::spawn_blocking(move || generate_dataset(&gen_dir, &files))
        .await
        .context("dataset generation")??;
    let expected = tree_digest(&src)?;
    let total = expected.total_bytes();
    let origin = c.cluster.start_http_origin(&src, 8080).await?;
    let origin_hostport = origin.url().trim_start_matches("http://").to_owned();

    c.kubectl(&["create", "namespace", NAMESPACE]).await?;
    let manifest = EXAMPLE.replace("${ORIGIN}", &origin_hostport);
    let manifest_file = c.cluster.work_dir().join("dataset.yaml");
    std::fs::write(&manifest_file, &manifest)
        .with_context(|| format!("writing {}", manifest_file.display()))?;
    println!("$ kubectl apply -f e2e/examples/dataset.yaml    # ORIGIN={origin_hostport}");
    let out = c
        .kubectl(&["apply", "-f", &manifest_file.to_string_lossy()])
        .await?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    let start = Instant::now();

    // Live progress until every node is Ready.
    let tty = std::io::stdout().is_terminal();
    let mut done_at: BTreeMap<String, Duration> = BTreeMap::new();
    let mut last_lines = 0;
    loop {
        let progress = c.agent_progress(NAMESPACE, NAME).await;
        let status = c
            .dataset(NAMESPACE, NAME)
            .await?
            .and_then(|d| d.get("status").cloned())
            .unwrap_or_default();
        for (node, p) in &progress {
            if p.as_ref()
                .is_some_and(|p| p.state() == pb::DatasetState::Ready)
            {
                done_at.entry(node.clone()).or_insert(start.elapsed());
            }
        }
        let lines = render(&progress, &status, start.elapsed());
        if tty && last_lines > 0 {
            // Redraw in place.
            print!("\x1b[{last_lines}A\x1b[J");
        }
        if tty || done_at.len() == progress.len() || start.elapsed().as_secs().is_multiple_of(5) {
            for l in &lines {
                println!("{l}");
            }
            last_lines = lines.len();
        }
        std::io::stdout().flush().ok();
        let ready = status["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        });
        if ready {
            break;
        }
        if let Some(deg) = status["conditions"].as_array().and_then(|cs| {
            cs.iter()
                .find(|c| c["type"] == "Degraded" && c["status"] == "True")
        }) {
            eprintln!("Degraded: {} — {}", deg["reason"], deg["message"]);
        }
        if start.elapsed() > args.timeout {
            bail!(
                "not Ready after {:?}; operator log:\n{}",
                args.timeout,
                c.operator_log("operator-0")
            );
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(if tty { 500 } else { 1000 })) => {}
            _ = &mut shutdown => bail!("interrupted"),
        }
    }
    let makespan = start.elapsed();

    // Verify every node's published tree against the origin.
    println!("\nverifying every node's published tree against the origin...");
    let mut all_ok = true;
    for n in c.cluster.nodes() {
        let dir = n.root.join("datasets").join(NAMESPACE).join(NAME);
        let got = tree_digest(&dir)?;
        let ok = got.root() == expected.root();
        all_ok &= ok;
        println!(
            "  {:<8} {} ({} files, {})",
            n.name,
            if ok { "identical" } else { "DIFFERENT" },
            got.files.len(),
            human(got.total_bytes())
        );
    }
    let served = origin.stats().await?.bytes_served;
    let out = c.kubectl(&["get", "datasets", "-n", NAMESPACE]).await?;
    println!(
        "\n$ kubectl get datasets -n {NAMESPACE}\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let secs = makespan.as_secs_f64();
    println!(
        "dataset:        {} in {} files",
        human(total),
        expected.files.len()
    );
    println!(
        "makespan:       {secs:.1} s (apply to Ready on {} nodes)",
        c.cluster.nodes().len()
    );
    println!(
        "origin egress:  {} = {:.4} x the dataset (naive: every node pulls it = {}x)",
        human(served),
        served as f64 / total as f64,
        c.cluster.nodes().len()
    );
    for (node, t) in &done_at {
        println!(
            "  {node:<8} ready after {:>5.1} s, {:>7.1} MiB/s",
            t.as_secs_f64(),
            total as f64 / MIB as f64 / t.as_secs_f64().max(0.001)
        );
    }
    if !all_ok {
        bail!("a node's tree differs from the origin");
    }
    println!("\nOK: every node holds a verified, identical copy.");

    if args.keep {
        println!("\nThe cluster stays up until Ctrl-C:");
        println!("export KUBECONFIG={}", c.cluster.kubeconfig().display());
        println!("ORIGIN={origin_hostport}");
        println!("kubectl get datasets -A");
        shutdown.await;
        eprintln!("tearing down");
    }
    drop(origin);
    c.cluster.stop().await;
    Ok(())
}

/// One line per node plus a totals line.
fn render(
    progress: &[(String, Option<pb::DatasetProgress>)],
    status: &serde_json::Value,
    elapsed: Duration,
) -> Vec<String> {
    let mut lines = Vec::new();
    for (node, p) in progress {
        let line = match p {
            None => format!("  {node:<8} [{}]   waiting", bar(0.0, 30)),
            Some(p) => {
                let f = if p.bytes_total == 0 {
                    1.0
                } else {
                    p.bytes_verified as f64 / p.bytes_total as f64
                };
                format!(
                    "  {node:<8} [{}] {:>5.1}%  origin {:>10}  peers {:>10}  {:?}",
                    bar(f, 30),
                    100.0 * f,
                    human(p.bytes_from_origin),
                    human(p.bytes_from_peers),
                    p.state()
                )
            }
        };
        lines.push(line);
    }
    let ready = &status["nodes"];
    lines.push(format!(
        "  t={:>5.1}s  Ready {}/{}  from origin {}  from peers {}",
        elapsed.as_secs_f64(),
        ready["ready"].as_u64().unwrap_or(0),
        ready["desired"].as_u64().unwrap_or(0),
        human(status["bytesFromOrigin"].as_u64().unwrap_or(0)),
        human(status["bytesFromPeers"].as_u64().unwrap_or(0)),
    ));
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_names_the_demo_dataset_and_origin() {
        assert!(EXAMPLE.contains("name: llama-demo"));
        assert!(EXAMPLE.contains("namespace: ml"));
        assert!(EXAMPLE.contains("http://${ORIGIN}/"));
        assert!(EXAMPLE.contains(GPU_LABEL.0));
    }

    #[test]
    fn a_model_like_dataset_has_about_the_asked_size() {
        let spec = model_like(1 << 30);
        let total = spec.total_bytes() as f64;
        assert!((total / (1u64 << 30) as f64 - 1.0).abs() < 0.05, "{total}");
    }
}
