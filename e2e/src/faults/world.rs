//! What the harness knows about the cluster it disturbs: which nodes are
//! cut off and since when, whether an operator can act, which content each
//! Dataset may publish, and every fault injected so far. Injection writes
//! it; the checks read a copy of it ([`World::view`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long a restarted operator waits for the Lease of a killed one to
/// expire before it acts (the operator's lease duration).
pub const LEASE_TAKEOVER: Duration = Duration::from_secs(15);

/// A Dataset, by namespace and name.
pub type DatasetKey = (String, String);

/// Whether a node can take part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeHealth {
    /// Its agent runs and its link is up, since then.
    Up(Instant),
    /// Its agent is down or its link is cut, since then.
    Impaired(Instant),
}

/// One fault (or its end) as the report lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultRecord {
    /// Since the cluster started.
    pub at: Duration,
    /// `agent-kill node-1`, `partition-end node-2`, ...
    pub what: String,
    /// A fault, as opposed to the end of one.
    pub injected: bool,
}

/// The shared state; see the module doc.
#[derive(Debug)]
pub struct World {
    pub started: Instant,
    pub nodes: BTreeMap<String, NodeHealth>,
    /// Since when an operator can act (`None`: none runs). A replacement of
    /// a killed operator counts from the end of its Lease wait.
    pub control_since: Option<Instant>,
    /// The tree digests ([`swarmseed_harness::origin::TreeDigest::root`]) a Dataset's
    /// published copies may have: its origin's content.
    pub expected: BTreeMap<DatasetKey, BTreeSet<String>>,
    /// Directories the harness writes (origins), with the files it wrote
    /// (`None` while it writes them): anything else appearing there came
    /// from elsewhere.
    pub sealed: BTreeMap<PathBuf, Option<BTreeSet<PathBuf>>>,
    pub faults: Vec<FaultRecord>,
}

/// A cheap handle on the shared [`World`].
#[derive(Debug, Clone)]
pub struct SharedWorld(Arc<Mutex<World>>);

impl SharedWorld {
    pub fn new(nodes: impl IntoIterator<Item = String>) -> Self {
        let now = Instant::now();
        Self(Arc::new(Mutex::new(World {
            started: now,
            nodes: nodes
                .into_iter()
                .map(|n| (n, NodeHealth::Up(now)))
                .collect(),
            control_since: Some(now),
            expected: BTreeMap::new(),
            sealed: BTreeMap::new(),
            faults: Vec::new(),
        })))
    }

    pub fn lock(&self) -> MutexGuard<'_, World> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A copy for the checks (they never hold the lock).
    pub fn view(&self) -> World {
        let w = self.lock();
        World {
            started: w.started,
            nodes: w.nodes.clone(),
            control_since: w.control_since,
            expected: w.expected.clone(),
            sealed: w.sealed.clone(),
            faults: w.faults.clone(),
        }
    }

    /// Logs a fault for the report.
    pub fn injected(&self, what: impl Into<String>) {
        self.record(what.into(), true);
    }

    /// Logs the end of a fault (a restart, a link back up) for the report.
    pub fn healed(&self, what: impl Into<String>) {
        self.record(what.into(), false);
    }

    fn record(&self, what: String, injected: bool) {
        let mut w = self.lock();
        let at = w.started.elapsed();
        eprintln!("fault at {:>6.1} s: {what}", at.as_secs_f64());
        w.faults.push(FaultRecord { at, what, injected });
    }

    pub fn set_node(&self, node: &str, up: bool) {
        let health = if up {
            NodeHealth::Up(Instant::now())
        } else {
            NodeHealth::Impaired(Instant::now())
        };
        self.lock().nodes.insert(node.to_owned(), health);
    }

    pub fn expect(&self, ns: &str, name: &str, root: String) {
        self.lock()
            .expected
            .entry((ns.to_owned(), name.to_owned()))
            .or_default()
            .insert(root);
    }
}
