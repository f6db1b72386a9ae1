//! Setup: the whole product on a small namespace cluster tuned so that a
//! fault row takes seconds — shaped links, short agent timeouts, and one
//! HTTP origin serving a directory per source — with the [`World`] the
//! injections record into and the [`Observer`] the checks read from.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::observe::{DatasetView, Observer};
use super::world::SharedWorld;
use swarmseed_harness::error::{Error, Result};
use swarmseed_harness::origin::{DatasetSpec, generate_dataset, tree_digest};
use swarmseed_harness::seeding::{Binaries, SeedCluster, dataset_yaml};
use swarmseed_harness::{ClusterSpec, NetworkMode, RemoteHttpOrigin};

/// The agents' timeouts in the fault rows: short, so that a fault shows
/// within seconds (the defaults are 30 s and 60 s).
pub const AGENT_ARGS: [&str; 8] = [
    "--fallback-after",
    "5s",
    "--peer-stall-timeout",
    "5s",
    "--origin-timeout",
    "5s",
    "--origin-retries",
    "1",
];

/// Port of the HTTP origin in the origin namespace.
const ORIGIN_PORT: u16 = 8080;

/// What cluster a row needs.
#[derive(Debug, Clone)]
pub struct FaultSetup {
    pub nodes: usize,
    /// Every node link and the origin link, both directions.
    pub link_mbit: u32,
    /// Extra agent arguments (after [`AGENT_ARGS`]).
    pub agent_args: Vec<String>,
    /// Keep the work directory (also `SWARMSEED_FAULTS_KEEP=1`).
    pub keep_work_dir: bool,
}

impl FaultSetup {
    pub fn nodes(nodes: usize) -> Self {
        Self {
            nodes,
            link_mbit: 200,
            agent_args: Vec::new(),
            keep_work_dir: std::env::var_os("SWARMSEED_FAULTS_KEEP").is_some(),
        }
    }
}

/// A source of about `mib` MiB: two big files and 40 small ones (the
/// small ones share chunks, the big ones have their own).
pub fn small_source(seed: u64, mib: u64) -> DatasetSpec {
    let small = DatasetSpec::tiny(seed);
    let small_bytes = small.total_bytes() - 2 * small.big_file_size;
    DatasetSpec {
        big_file_size: ((mib << 20).saturating_sub(small_bytes) / 2).max(1) + 123,
        ..small
    }
}

/// One source directory on the HTTP origin.
#[derive(Debug, Clone)]
pub struct Source {
    /// `http://<origin>:8080/<name>/`.
    pub uri: String,
    pub dir: PathBuf,
    /// [`swarmseed_harness::origin::TreeDigest::root`] of its files.
    pub root: String,
    pub total_bytes: u64,
}

/// A running cluster for fault rows. Dropping it tears everything down.
pub struct FaultCluster {
    pub seed: SeedCluster,
    pub world: SharedWorld,
    pub observer: Observer,
    origin: RemoteHttpOrigin,
    origins_dir: PathBuf,
    namespaces: BTreeSet<String>,
    /// Operators started so far (names `operator-N`).
    pub(super) operators_started: u32,
}

impl std::fmt::Debug for FaultCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultCluster")
            .field("cluster", &self.seed.cluster)
            .finish_non_exhaustive()
    }
}

impl FaultCluster {
    /// Starts the cluster, the operator and the origin. `Ok(None)` without
    /// root: cutting links needs network namespaces (the reason is printed).
    pub async fn start(setup: FaultSetup) -> Result<Option<Self>> {
        swarmseed_harness::init_crypto();
        if let Some(why) = swarmseed_harness::netns::unavailable_reason() {
            eprintln!("SKIP: fault rows need network namespaces ({why})");
            return Ok(None);
        }
        let bins = Binaries::beside_e2e()?;
        // Nodes `node-0`, `node-1`, ...
        let mut spec = ClusterSpec::new(setup.nodes, &bins.agent);
        spec.network = NetworkMode::Namespaces;
        spec.link_mbit = Some(setup.link_mbit);
        spec.origin_link_mbit = Some(setup.link_mbit);
        spec.keep_work_dir = setup.keep_work_dir;
        spec.agent_args = AGENT_ARGS
            .iter()
            .map(|s| s.to_string())
            .chain(setup.agent_args)
            .collect();
        let mut seed = SeedCluster::start(spec, bins).await?;
        let work = seed.cluster.work_dir().to_path_buf();
        let origins_dir = work.join("origins");
        std::fs::create_dir_all(&origins_dir).map_err(|e| Error::io("create", &origins_dir, e))?;
        let origin = seed
            .cluster
            .start_http_origin(&origins_dir, ORIGIN_PORT)
            .await?;
        let (observer, world) = Observer::of(&seed);
        Ok(Some(Self {
            seed,
            world,
            observer,
            origin,
            origins_dir,
            namespaces: BTreeSet::new(),
            operators_started: 1,
        }))
    }

    pub fn node_names(&self) -> Vec<String> {
        self.seed
            .cluster
            .nodes()
            .iter()
            .map(|n| n.name.clone())
            .collect()
    }

    /// Generates `spec` as source `name` on the origin; its files are
    /// sealed (nothing else may appear among them).
    pub fn add_source(&mut self, name: &str, spec: &DatasetSpec) -> Result<Source> {
        let dir = self.origins_dir.join(name);
        self.world.lock().sealed.insert(dir.clone(), None);
        generate_dataset(&dir, spec)?;
        self.seal(&dir);
        let tree = tree_digest(&dir)?;
        Ok(Source {
            uri: format!("{}/{name}/", self.origin.url()),
            dir,
            root: tree.root(),
            total_bytes: tree.total_bytes(),
        })
    }

    /// Records every path under `dir` as the harness's own (call again
    /// after changing an origin's files on purpose).
    pub fn seal(&self, dir: &std::path::Path) {
        let mut files = BTreeSet::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(p.clone());
                }
                files.insert(p);
            }
        }
        self.world
            .lock()
            .sealed
            .insert(dir.to_path_buf(), Some(files));
    }

    /// The origin's base URL (`http://<origin address>:8080`).
    pub fn origin_url(&self) -> &str {
        self.origin.url()
    }

    /// Bytes the origin served so far.
    pub async fn origin_bytes(&self) -> Result<u64> {
        Ok(self.origin.stats().await?.bytes_served)
    }

    /// Creates namespace `ns` once.
    pub async fn namespace(&mut self, ns: &str) -> Result<()> {
        if self.namespaces.insert(ns.to_owned()) {
            self.seed.kubectl(&["create", "namespace", ns]).await?;
        }
        Ok(())
    }

    /// `kubectl apply` of Dataset `ns/name` with `spec`; with `source`, its
    /// published copies must hold the source's bytes.
    pub async fn apply(
        &mut self,
        ns: &str,
        name: &str,
        spec: &Value,
        source: Option<&Source>,
    ) -> Result<()> {
        self.namespace(ns).await?;
        if let Some(s) = source {
            self.world.expect(ns, name, s.root.clone());
        }
        self.seed
            .kubectl_stdin(&["apply", "-f", "-"], &dataset_yaml(ns, name, spec))
            .await
            .map(|_| ())
    }

    /// `kubectl delete` without waiting for the finalizer.
    pub async fn delete(&self, ns: &str, name: &str) -> Result<()> {
        self.seed
            .kubectl(&[
                "delete",
                "dataset",
                name,
                "-n",
                ns,
                "--wait=false",
                "--ignore-not-found",
            ])
            .await
            .map(|_| ())
    }

    /// `kubectl label node` (`value` `None` removes the label).
    pub async fn label_node(&self, node: &str, key: &str, value: Option<&str>) -> Result<()> {
        let arg = match value {
            Some(v) => format!("{key}={v}"),
            None => format!("{key}-"),
        };
        self.seed
            .kubectl(&["label", "node", node, &arg, "--overwrite"])
            .await
            .map(|_| ())
    }

    pub async fn dataset(&self, ns: &str, name: &str) -> Result<Option<DatasetView>> {
        let api: kube::Api<kube::api::DynamicObject> = kube::Api::namespaced_with(
            self.seed.cluster.client(),
            ns,
            &swarmseed_harness::seeding::dataset_resource(),
        );
        let obj = tokio::time::timeout(Duration::from_secs(10), api.get_opt(name))
            .await
            .map_err(|_| Error::Kube(format!("get dataset {ns}/{name} timed out")))??;
        Ok(obj.as_ref().map(DatasetView::from_object))
    }

    /// Polls `probe` every 250 ms until it yields or `timeout` passes.
    pub async fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        probe: impl AsyncFnMut() -> Result<Option<T>>,
    ) -> Result<T> {
        self.seed.wait_for(what, timeout, probe).await
    }

    /// Waits for `ns/name` to be Ready; the error shows its conditions.
    pub async fn wait_ready(&self, ns: &str, name: &str, timeout: Duration) -> Result<DatasetView> {
        let r = self
            .wait_for(&format!("{ns}/{name} Ready"), timeout, async || {
                Ok(self.dataset(ns, name).await?.filter(|d| d.is_ready()))
            })
            .await;
        match r {
            Ok(d) => Ok(d),
            Err(e) => {
                let now = self
                    .dataset(ns, name)
                    .await
                    .ok()
                    .flatten()
                    .map(|d| d.conditions_text())
                    .unwrap_or_else(|| "gone".into());
                Err(Error::Invalid(format!("{e}; conditions: {now}")))
            }
        }
    }

    /// The tail of the log of every operator started so far.
    pub fn operator_logs(&self, bytes: usize) -> String {
        (0..self.operators_started)
            .map(|i| {
                let log = self.seed.operator_log(&format!("operator-{i}"));
                let mut start = log.len().saturating_sub(bytes);
                while !log.is_char_boundary(start) {
                    start += 1;
                }
                format!("--- operator-{i}:\n{}", strip_ansi(&log[start..]))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The text of a log line without its colour escapes (`ESC [ ... m`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_sources_have_about_the_size_asked_for() {
        let total = small_source(1, 8).total_bytes();
        assert!((total as i64 - (8 << 20)).abs() < 1024, "{total}");
    }

    #[test]
    fn colour_escapes_are_stripped() {
        assert_eq!(
            strip_ansi("\u{1b}[2mtime\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m x"),
            "time  INFO x"
        );
    }
}
