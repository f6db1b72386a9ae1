//! The naive baseline: every node GETs the whole dataset straight from
//! the origin at once (`e2e bench fetch-all` in each node's namespace).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::{StreamExt as _, TryStreamExt as _};
use serde::{Deserialize, Serialize};
use swarmseed_harness::Placement;
use swarmseed_harness::origin::http::ListingEntry;
use swarmseed_harness::seeding::SeedCluster;
use tokio::io::AsyncWriteExt as _;

/// Runs `e2e bench fetch-all` in every node's namespace at once; returns
/// the time until the last one finished.
pub(super) async fn naive_download(
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
