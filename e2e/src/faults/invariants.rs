//! The invariants every fault row and the soak hold the product to, as
//! pure checks over [`Snapshot`]s and the harness's [`World`]:
//!
//! 1. no byte outside the root: nothing new appears in the cluster's work
//!    directory outside the node roots (where a path escaping a root
//!    lands first), nor in the origins' directories;
//! 2. no partial tree at a published path: every `datasets/<ns>/<name>`
//!    link resolves to a revision whose files are the origin's bytes (or,
//!    without a known origin content, the same bytes on every node);
//! 3. every Dataset Ready or showing a condition that names the fault: a
//!    Degraded condition carries a reason and a message; a Dataset is never
//!    without status, nor not Ready with nothing Progressing or Degraded,
//!    for [`EXPLAIN_WITHIN`]; one held by its finalizer says `Terminating`
//!    and names the nodes that hold it within the same time;
//! 4. no node "Seeding" (`Pending`/`Transferring`) without a change in its
//!    progress or in the conditions for [`SILENT_LIMIT`];
//! 5. no leftover state after delete: no store entry and no node label of a
//!    Dataset that no longer exists, [`CLEANUP_WITHIN`] after the object
//!    went (or after the node came back).
//!
//! Time limits run only while an operator can act (and, for a node's
//! leftovers, while the node is up): a fault that stops the control plane
//! pauses them rather than counting as silence.
//!
//! [`Checker::check`] runs continuously (every second); [`final_check`]
//! runs once the row or soak healed every fault, and also demands that every
//! Dataset ended Ready (with every Ready node holding the origin's bytes)
//! or Degraded with a reason.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use swarmseed_core::label;
use swarmseed_crd::NodeProgressState;

use super::observe::{DatasetView, PublishedTree, Snapshot};
use super::world::{NodeHealth, World};

/// A Dataset not Ready says why within this long.
pub const EXPLAIN_WITHIN: Duration = Duration::from_secs(30);
/// A seeding node changes its progress, or the Dataset its conditions,
/// within this long (the 120 s).
pub const SILENT_LIMIT: Duration = Duration::from_secs(120);
/// A deleted Dataset leaves nothing on an up node after this long.
pub const CLEANUP_WITHIN: Duration = Duration::from_secs(15);

/// The five invariants, plus a row's own assertions.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Invariant {
    NoByteOutsideRoot,
    NoPartialTree,
    FaultNamed,
    NoSilentSeeding,
    NoLeftover,
    /// A row-specific assertion (what the row's fault must look like).
    Row(String),
}

impl std::fmt::Display for Invariant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Invariant::NoByteOutsideRoot => f.write_str("no byte outside the root"),
            Invariant::NoPartialTree => f.write_str("no partial tree at a published path"),
            Invariant::FaultNamed => f.write_str("Ready or a condition naming the fault"),
            Invariant::NoSilentSeeding => f.write_str("no silent seeding"),
            Invariant::NoLeftover => f.write_str("no leftover after delete"),
            Invariant::Row(what) => write!(f, "row: {what}"),
        }
    }
}

/// The number of invariants each continuous check covers.
pub const INVARIANTS: u64 = 5;

/// One broken promise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub invariant: Invariant,
    /// Since the cluster started.
    pub at: Duration,
    /// What it is about (`ml/weights on node-1`, a path).
    pub subject: String,
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "[{:>6.1} s] {} — {}: {}",
            self.at.as_secs_f64(),
            self.invariant,
            self.subject,
            self.detail
        )
    }
}

/// When a timer may start counting: not before `first_seen`, and only
/// once `since` (the operator, the node) is there.
fn overdue(now: Instant, first_seen: Instant, since: Option<Instant>, limit: Duration) -> bool {
    since.is_some_and(|s| now >= first_seen.max(s) + limit)
}

fn node_up_since(world: &World, node: &str) -> Option<Instant> {
    match world.nodes.get(node) {
        Some(NodeHealth::Up(since)) => Some(*since),
        Some(NodeHealth::Impaired(_)) => None,
        // A node the harness does not track is taken as up all along.
        None => Some(world.started),
    }
}

fn ds_name(d: &DatasetView) -> String {
    format!("{}/{}", d.ns, d.name)
}

/// The continuous checker: keeps the timers between snapshots and reports
/// each violation once per episode.
#[derive(Debug, Default)]
pub struct Checker {
    /// When a timed condition was first seen (by a key naming it).
    first_seen: HashMap<String, Instant>,
    /// (Dataset, node) of a seeding node → (what it showed, since when).
    seeding: HashMap<(String, String), (String, Instant)>,
    reported: BTreeSet<(Invariant, String)>,
    /// Snapshots checked.
    pub checks: u64,
}

impl Checker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks one snapshot; returns the violations not reported before.
    pub fn check(&mut self, snap: &Snapshot, world: &World) -> Vec<Violation> {
        self.checks += 1;
        let mut found = Vec::new();
        let mut live_timers = BTreeSet::new();
        outside_root(snap, &mut found);
        partial_trees(snap, world, &mut found);
        if let Ok(datasets) = &snap.datasets {
            self.fault_named(snap.at, datasets, world, &mut live_timers, &mut found);
            self.silent_seeding(snap.at, datasets, world, &mut found);
            self.leftovers(snap, datasets, world, &mut live_timers, &mut found);
        }
        // A condition that went away starts afresh if it comes back.
        self.first_seen.retain(|k, _| live_timers.contains(k));
        let at = snap.at.saturating_duration_since(world.started);
        found
            .into_iter()
            .filter_map(|(invariant, subject, detail)| {
                self.reported
                    .insert((invariant.clone(), subject.clone()))
                    .then_some(Violation {
                        invariant,
                        at,
                        subject,
                        detail,
                    })
            })
            .collect()
    }

    fn timer(&mut self, live: &mut BTreeSet<String>, key: String, now: Instant) -> Instant {
        live.insert(key.clone());
        *self.first_seen.entry(key).or_insert(now)
    }

    fn fault_named(
        &mut self,
        now: Instant,
        datasets: &[DatasetView],
        world: &World,
        live: &mut BTreeSet<String>,
        found: &mut Vec<Found>,
    ) {
        let control = world.control_since;
        for d in datasets {
            let subject = ds_name(d);
            if let Some(bad) = malformed(d) {
                found.push((Invariant::FaultNamed, subject.clone(), bad));
            }
            if d.deleting {
                let since = self.timer(live, format!("terminating {subject}"), now);
                if overdue(now, since, control, EXPLAIN_WITHIN) && !names_terminating(d, world) {
                    found.push((
                        Invariant::FaultNamed,
                        subject,
                        format!(
                            "held by its finalizer for {}s without a Terminating condition naming the nodes that hold it: {}",
                            EXPLAIN_WITHIN.as_secs(),
                            d.conditions_text()
                        ),
                    ));
                }
                continue;
            }
            if let Some(why) = unexplained(d) {
                let since = self.timer(live, format!("unexplained {subject}"), now);
                if overdue(now, since, control, EXPLAIN_WITHIN) {
                    found.push((
                        Invariant::FaultNamed,
                        subject,
                        format!("{why} for {}s", EXPLAIN_WITHIN.as_secs()),
                    ));
                }
            }
        }
    }

    fn silent_seeding(
        &mut self,
        now: Instant,
        datasets: &[DatasetView],
        world: &World,
        found: &mut Vec<Found>,
    ) {
        let mut seen = BTreeSet::new();
        for d in datasets.iter().filter(|d| !d.deleting) {
            let Some(status) = &d.status else { continue };
            let conditions = d.conditions_text();
            for p in &status.node_progress {
                if !matches!(
                    p.state,
                    NodeProgressState::Pending | NodeProgressState::Transferring
                ) {
                    continue;
                }
                let key = (ds_name(d), p.node.clone());
                let shown = format!("{} {} | {conditions}", p.state.as_str(), p.bytes_verified);
                seen.insert(key.clone());
                let entry = self.seeding.entry(key).or_insert((shown.clone(), now));
                if entry.0 != shown {
                    *entry = (shown, now);
                } else if overdue(now, entry.1, world.control_since, SILENT_LIMIT) {
                    found.push((
                        Invariant::NoSilentSeeding,
                        format!("{} on {}", ds_name(d), p.node),
                        format!(
                            "{} at {} of {} bytes with the same conditions for {}s: {conditions}",
                            p.state.as_str(),
                            p.bytes_verified,
                            p.bytes_total,
                            SILENT_LIMIT.as_secs()
                        ),
                    ));
                }
            }
        }
        self.seeding.retain(|k, _| seen.contains(k));
    }

    fn leftovers(
        &mut self,
        snap: &Snapshot,
        datasets: &[DatasetView],
        world: &World,
        live: &mut BTreeSet<String>,
        found: &mut Vec<Found>,
    ) {
        let now = snap.at;
        for (subject, node) in orphans(snap, datasets) {
            let since = self.timer(live, format!("orphan {subject}"), now);
            let up = node_up_since(world, &node)
                .zip(world.control_since)
                .map(|(a, b)| a.max(b));
            if overdue(now, since, up, CLEANUP_WITHIN) {
                found.push((
                    Invariant::NoLeftover,
                    subject,
                    format!(
                        "belongs to no Dataset for {}s while the node is up",
                        CLEANUP_WITHIN.as_secs()
                    ),
                ));
            }
        }
    }
}

type Found = (Invariant, String, String);

fn outside_root(snap: &Snapshot, found: &mut Vec<Found>) {
    for p in &snap.outside {
        found.push((
            Invariant::NoByteOutsideRoot,
            p.display().to_string(),
            "appeared outside every node root".into(),
        ));
    }
}

fn partial_trees(snap: &Snapshot, world: &World, found: &mut Vec<Found>) {
    // Without a known origin content, every node must agree per revision.
    let mut by_revision: BTreeMap<(String, String, String), BTreeSet<String>> = BTreeMap::new();
    for store in &snap.stores {
        for ((ns, name), tree) in &store.published {
            let subject = format!("{ns}/{name} on {}", store.node);
            match tree {
                PublishedTree::NotALink => {}
                PublishedTree::Dangling(what) => found.push((
                    Invariant::NoPartialTree,
                    subject,
                    format!("published link points nowhere: {what}"),
                )),
                PublishedTree::Unreadable(what) => found.push((
                    Invariant::NoPartialTree,
                    subject,
                    format!("published tree unreadable: {what}"),
                )),
                PublishedTree::Tree { revision, root } => {
                    match world.expected.get(&(ns.clone(), name.clone())) {
                        Some(roots) if !roots.contains(root) => found.push((
                            Invariant::NoPartialTree,
                            subject,
                            format!(
                                "revision {revision} holds other bytes than the origin's (tree {root})"
                            ),
                        )),
                        Some(_) => {}
                        None => {
                            by_revision
                                .entry((ns.clone(), name.clone(), revision.clone()))
                                .or_default()
                                .insert(root.clone());
                        }
                    }
                }
            }
        }
    }
    for ((ns, name, revision), roots) in by_revision {
        if roots.len() > 1 {
            found.push((
                Invariant::NoPartialTree,
                format!("{ns}/{name}"),
                format!("revision {revision} holds different bytes on different nodes: {roots:?}"),
            ));
        }
    }
}

/// A condition that breaks the API's promises, whatever the timing.
fn malformed(d: &DatasetView) -> Option<String> {
    let degraded = d.degraded()?;
    (degraded.reason.is_empty() || degraded.reason == "AsExpected" || degraded.message.is_empty())
        .then(|| {
            format!(
                "Degraded=True without a reason and a message: {}",
                d.conditions_text()
            )
        })
}

/// Why a (not deleting) Dataset's status explains nothing, if it does not.
fn unexplained(d: &DatasetView) -> Option<String> {
    if d.status.is_none() && d.raw.get("status").is_some() {
        return Some("a status the CRD's types cannot read".into());
    }
    if d.status.is_none() || d.conditions().is_empty() {
        return Some("no status".into());
    }
    if d.is_ready() || d.is("Progressing") || d.degraded().is_some() {
        return None;
    }
    let ready = d.condition("Ready");
    if ready.is_some_and(|r| r.reason == "NoMatchingNodes") {
        return None;
    }
    Some(format!(
        "not Ready, nothing Progressing or Degraded: {}",
        d.conditions_text()
    ))
}

/// Whether a deleting Dataset's conditions say `Terminating` and name a
/// node (the one may be in another condition than the other).
fn names_terminating(d: &DatasetView, world: &World) -> bool {
    let nodes: Vec<&str> = world.nodes.keys().map(String::as_str).collect();
    d.terminating_naming(&nodes)
}

/// Store entries and node labels of Datasets that do not exist: (subject,
/// node).
fn orphans(snap: &Snapshot, datasets: &[DatasetView]) -> Vec<(String, String)> {
    let live: BTreeSet<(&str, &str)> = datasets
        .iter()
        .map(|d| (d.ns.as_str(), d.name.as_str()))
        .collect();
    let mut out = Vec::new();
    for store in &snap.stores {
        for e in &store.entries {
            if !live.contains(&(e.ns.as_str(), e.entry.as_str())) {
                out.push((format!("{e} on {}", store.node), store.node.clone()));
            }
        }
    }
    if let Ok(labels) = &snap.labels {
        let keys: BTreeSet<String> = datasets
            .iter()
            .map(|d| label::key(&d.ns, &d.name))
            .collect();
        for (node, node_labels) in labels {
            for l in node_labels.iter().filter(|l| !keys.contains(*l)) {
                out.push((format!("label {l} on {node}"), node.clone()));
            }
        }
    }
    out
}

/// What must hold once every fault is healed and the cluster settled:
/// the continuous invariants without their grace periods, and every Dataset
/// Ready — with each Ready or labelled node holding the origin's bytes — or
/// Degraded with a reason and a message.
pub fn final_check(snap: &Snapshot, world: &World) -> Vec<Violation> {
    let mut found = Vec::new();
    outside_root(snap, &mut found);
    partial_trees(snap, world, &mut found);
    match &snap.datasets {
        Err(e) => found.push((Invariant::FaultNamed, "Datasets".into(), e.clone())),
        Ok(datasets) => {
            for d in datasets {
                settled(snap, world, d, &mut found);
            }
            for (subject, _) in orphans(snap, datasets) {
                found.push((
                    Invariant::NoLeftover,
                    subject,
                    "belongs to no Dataset after every fault healed".into(),
                ));
            }
        }
    }
    let at = snap.at.saturating_duration_since(world.started);
    found
        .into_iter()
        .map(|(invariant, subject, detail)| Violation {
            invariant,
            at,
            subject,
            detail,
        })
        .collect()
}

fn settled(snap: &Snapshot, world: &World, d: &DatasetView, found: &mut Vec<Found>) {
    let subject = ds_name(d);
    if let Some(bad) = malformed(d) {
        found.push((Invariant::FaultNamed, subject.clone(), bad));
    }
    if d.deleting {
        found.push((
            Invariant::FaultNamed,
            subject,
            format!(
                "still being deleted after every fault healed: {}",
                d.conditions_text()
            ),
        ));
        return;
    }
    if !d.is_ready() {
        if d.degraded().is_none() {
            found.push((
                Invariant::FaultNamed,
                subject,
                format!(
                    "neither Ready nor Degraded naming a fault: {}",
                    d.conditions_text()
                ),
            ));
        }
        return;
    }
    // Ready: every node that says so, or carries the label, holds the bytes.
    let key = label::key(&d.ns, &d.name);
    let mut holders: BTreeSet<String> = d
        .status
        .iter()
        .flat_map(|s| &s.node_progress)
        .filter(|p| p.state == NodeProgressState::Ready)
        .map(|p| p.node.clone())
        .collect();
    if let Ok(labels) = &snap.labels {
        holders.extend(
            labels
                .iter()
                .filter(|(_, l)| l.contains(&key))
                .map(|(n, _)| n.clone()),
        );
    }
    for node in holders {
        let published = snap
            .store(&node)
            .and_then(|s| s.published.get(&(d.ns.clone(), d.name.clone())));
        let ok = match published {
            Some(PublishedTree::Tree { root, .. }) => world
                .expected
                .get(&(d.ns.clone(), d.name.clone()))
                .is_none_or(|roots| roots.contains(root)),
            _ => false,
        };
        if !ok {
            found.push((
                Invariant::NoPartialTree,
                format!("{subject} on {node}"),
                format!("Ready (or labelled) but its published path holds {published:?}"),
            ));
        }
    }
}

#[cfg(test)]
mod tests;
