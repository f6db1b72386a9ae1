//! What a Dataset's status says, computed from what the agents report.
//!
//! Pure: the reconciler gathers each selected node's `DatasetProgress` (or
//! why it could not), adds what it knows about the source, and writes the
//! result only when [`needs_write`] says something changed, at most once
//! per [`MIN_WRITE_INTERVAL`] per Dataset ([`write_delay`]).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use swarmseed_origin::WeakValidators;
use swarmseed_proto::ContentDigest;
use swarmseed_proto::pb::{self, DatasetState};

use swarmseed_core::label;
use swarmseed_crd::quantity::human_bytes;
use swarmseed_crd::{
    Dataset, DatasetStatus, FailedNode, MAX_FAILED_NODES, MAX_NODE_PROGRESS, NodeCounts,
    NodeProgress, NodeProgressState,
};

/// Status writes per Dataset are at least this far apart.
pub const MIN_WRITE_INTERVAL: Duration = Duration::from_secs(1);

pub use swarmseed_crd::condition::{CONTENT_PINNED, DEGRADED, PROGRESSING, READY, Reason};

/// A problem of the whole Dataset, found by the operator itself (listing
/// the source, validating the spec), before or besides any agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetProblem {
    pub reason: Reason,
    pub message: String,
}

/// What one selected node said.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeReport {
    /// The agent answered; `None` when it holds nothing of the Dataset yet.
    Progress(Option<Box<pb::DatasetProgress>>),
    /// The agent could not be asked (no ready Pod, call failed or timed
    /// out): the message says which.
    Unreachable(String),
    /// The agent answered but refused the assignment (no room on its disk,
    /// an unsafe path, ...): the condition reason and its message.
    Refused { reason: Reason, message: String },
}

/// The revision being held, from the source listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevisionInfo {
    /// Hex revision id.
    pub revision: String,
    pub total_bytes: u64,
    pub files: u64,
    pub chunk_size: u64,
    /// The files only a weak validator pins at the origin (none where
    /// every file is pinned by content or version).
    pub weak_validators: WeakValidators,
    /// Whether `spec.digest` pins the content.
    pub digest_pinned: bool,
}

pub struct StatusInput<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    /// The node selector in words (see `selector::describe`).
    pub selector: &'a str,
    pub generation: Option<i64>,
    /// Selected nodes and what each reported.
    pub nodes: &'a BTreeMap<String, NodeReport>,
    /// `None` until the source was listed.
    pub revision: Option<&'a RevisionInfo>,
    pub problem: Option<&'a DatasetProblem>,
    pub previous: Option<&'a DatasetStatus>,
    pub now: Time,
}

enum NodeState {
    Ready,
    Seeding,
    Failed(Reason, FailedNode),
}

fn classify(node: &str, report: &NodeReport, revision: Option<&RevisionInfo>) -> NodeState {
    let failed = |reason: Reason, message: &str| {
        NodeState::Failed(
            reason,
            FailedNode {
                node: node.to_owned(),
                reason: reason.to_string(),
                message: message.to_owned(),
            },
        )
    };
    match report {
        NodeReport::Unreachable(msg) => failed(Reason::AgentUnreachable, msg),
        NodeReport::Refused { reason, message } => failed(*reason, message),
        NodeReport::Progress(None) => NodeState::Seeding,
        NodeReport::Progress(Some(p)) => {
            let current = revision.is_some_and(|r| r.revision == p.revision);
            match p.state() {
                DatasetState::Failed => {
                    let e = p.error.clone().unwrap_or_default();
                    // An agent of another version may name a reason this
                    // operator does not know.
                    failed(e.known_reason().unwrap_or(Reason::NodeFailed), &e.message)
                }
                DatasetState::Ready if current && p.published_revision == p.revision => {
                    NodeState::Ready
                }
                _ => NodeState::Seeding,
            }
        }
    }
}

/// One node's `nodeProgress` entry. Its state agrees with [`classify`]
/// (what the counts say); bytes count only for the current revision. An
/// unreachable node keeps the bytes last reported for this revision, so a
/// blip does not reset its progress bar.
fn progress_entry(
    node: &str,
    report: &NodeReport,
    class: &NodeState,
    revision: Option<&RevisionInfo>,
    previous: Option<&DatasetStatus>,
) -> NodeProgress {
    let total = revision.map_or(0, |r| r.total_bytes);
    let mut entry = NodeProgress {
        node: node.to_owned(),
        state: NodeProgressState::Pending,
        bytes_verified: 0,
        bytes_total: total,
        bytes_from_origin: 0,
        bytes_from_peers: 0,
    };
    match report {
        NodeReport::Unreachable(_) => {
            entry.state = NodeProgressState::Unreachable;
            let last = previous
                .filter(|p| revision.is_some_and(|r| p.revision.as_deref() == Some(&r.revision)))
                .and_then(|p| p.node_progress.iter().find(|e| e.node == node));
            if let Some(last) = last {
                entry = NodeProgress {
                    state: NodeProgressState::Unreachable,
                    ..last.clone()
                };
            }
        }
        NodeReport::Refused { .. } => entry.state = NodeProgressState::Failed,
        NodeReport::Progress(None) => {}
        NodeReport::Progress(Some(p)) => {
            if revision.is_some_and(|r| r.revision == p.revision) {
                entry.bytes_verified = p.bytes_verified;
                entry.bytes_total = p.bytes_total.max(p.bytes_verified);
                if entry.bytes_total == 0 {
                    entry.bytes_total = total;
                }
                entry.bytes_from_origin = p.bytes_from_origin;
                entry.bytes_from_peers = p.bytes_from_peers;
                entry.state = match (class, p.state()) {
                    (NodeState::Ready, _) => NodeProgressState::Ready,
                    (NodeState::Failed(..), _) => NodeProgressState::Failed,
                    (_, DatasetState::Transferring) => NodeProgressState::Transferring,
                    // Ready but not yet published as the current revision.
                    (_, DatasetState::Publishing | DatasetState::Ready) => {
                        NodeProgressState::Publishing
                    }
                    _ => NodeProgressState::Pending,
                };
            } else if let NodeState::Failed(..) = class {
                entry.state = NodeProgressState::Failed;
            }
        }
    }
    entry
}

/// The status the Dataset should have.
pub fn compute(input: &StatusInput<'_>) -> DatasetStatus {
    let rev = input.revision;
    let mut counts = NodeCounts {
        desired: input.nodes.len() as u32,
        ..Default::default()
    };
    let mut failed = Vec::new();
    let mut node_progress = Vec::new();
    let (mut from_origin, mut from_peers) = (0u64, 0u64);
    let mut content_digest = None;
    // BTreeMap order: the entries are sorted by node name.
    for (node, report) in input.nodes {
        let class = classify(node, report, rev);
        if node_progress.len() < MAX_NODE_PROGRESS {
            node_progress.push(progress_entry(node, report, &class, rev, input.previous));
        }
        match class {
            NodeState::Ready => counts.ready += 1,
            NodeState::Seeding => counts.seeding += 1,
            NodeState::Failed(r, f) => failed.push((r, f)),
        }
        if let NodeReport::Progress(Some(p)) = report
            && rev.is_some_and(|r| r.revision == p.revision)
        {
            from_origin += p.bytes_from_origin;
            from_peers += p.bytes_from_peers;
            if content_digest.is_none() {
                content_digest =
                    ContentDigest::from_slice(&p.content_digest).map(|d| d.to_string());
            }
        }
    }
    counts.failed = failed.len() as u32;
    let total_failed = failed.len();

    // The most frequent failure reason names the Dataset's problem; ties go
    // to the first by name, so the choice is stable.
    let mut by_reason: BTreeMap<Reason, usize> = BTreeMap::new();
    for (r, _) in &failed {
        *by_reason.entry(*r).or_default() += 1;
    }
    let dominant = by_reason
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then(b.0.as_str().cmp(a.0.as_str())))
        .map(|(r, _)| *r);
    let dominant_message = dominant
        .and_then(|r| failed.iter().find(|(fr, _)| *fr == r))
        .map(|(_, f)| format!("{} node(s) failed; {}: {}", total_failed, f.node, f.message));
    let mut failed: Vec<FailedNode> = failed.into_iter().map(|(_, f)| f).collect();

    // Nodes whose origin reads keep failing, the longest first: the
    // transfer goes on, but whatever only the origin has waits.
    let mut origin_trouble: Vec<(&str, u32, &pb::ErrorInfo)> = input
        .nodes
        .iter()
        .filter_map(|(node, report)| match report {
            NodeReport::Progress(Some(p))
                if rev.is_some_and(|r| r.revision == p.revision)
                    && p.state() != DatasetState::Failed =>
            {
                p.origin_error
                    .as_ref()
                    .map(|e| (node.as_str(), p.origin_error_seconds, e))
            }
            _ => None,
        })
        .collect();
    origin_trouble.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let origin_problem = origin_trouble.first().map(|(node, secs, e)| {
        let reason = e.known_reason().unwrap_or(Reason::SourceUnavailable);
        let others = match origin_trouble.len() - 1 {
            0 => String::new(),
            n => format!(" (and on {n} other node(s))"),
        };
        let message = format!(
            "origin reads have failed for {secs} s on {node}{others}: {}; chunks already in the cluster keep moving",
            e.message
        );
        (reason, message)
    });

    let all = counts.desired;
    let mut conditions: Vec<(&str, bool, Reason, String)> = Vec::new();
    if let Some(p) = input.problem {
        conditions.push((READY, false, p.reason, p.message.clone()));
        conditions.push((PROGRESSING, false, p.reason, p.message.clone()));
        conditions.push((DEGRADED, true, p.reason, p.message.clone()));
    } else if all == 0 {
        let msg = format!(
            "no node running a swarmseed agent matches the selector ({}) or tolerates its taints",
            input.selector
        );
        conditions.push((READY, false, Reason::NoMatchingNodes, msg.clone()));
        conditions.push((PROGRESSING, false, Reason::NoMatchingNodes, msg));
        conditions.push((DEGRADED, false, Reason::AsExpected, String::new()));
    } else {
        let rev_text = rev.map(|r| short(&r.revision)).unwrap_or_default();
        if counts.ready == all {
            conditions.push((
                READY,
                true,
                Reason::Ready,
                format!("{all}/{all} nodes hold a verified copy of revision {rev_text}"),
            ));
        } else {
            let why = dominant.unwrap_or(Reason::NotReady);
            let msg = format!(
                "{}/{} nodes ready, {} seeding, {} failed",
                counts.ready, all, counts.seeding, counts.failed
            );
            conditions.push((READY, false, why, msg));
        }
        if counts.seeding > 0 {
            let msg = format!("{} node(s) receiving revision {rev_text}", counts.seeding);
            conditions.push((PROGRESSING, true, Reason::Seeding, msg));
        } else if counts.failed > 0 {
            let msg = "no node is making progress".to_owned();
            conditions.push((PROGRESSING, false, Reason::Stalled, msg));
        } else {
            conditions.push((PROGRESSING, false, Reason::Complete, String::new()));
        }
        match (dominant, dominant_message, origin_problem) {
            (Some(r), Some(m), _) => conditions.push((DEGRADED, true, r, m)),
            (_, _, Some((r, m))) => conditions.push((DEGRADED, true, r, m)),
            _ => conditions.push((DEGRADED, false, Reason::AsExpected, String::new())),
        }
    }

    if let Some(r) = rev
        && let Some(message) = r.weak_validators.message()
    {
        if r.digest_pinned {
            let message = format!(
                "{} file(s) are pinned at the origin only by a weak validator; spec.digest pins \
                 the content: a file rewritten in place is refused (DigestMismatch), never \
                 published",
                r.weak_validators.count
            );
            conditions.push((CONTENT_PINNED, true, Reason::DigestPinned, message));
        } else {
            conditions.push((CONTENT_PINNED, false, Reason::WeakValidators, message));
        }
    }

    failed.truncate(MAX_FAILED_NODES);
    let previous = input.previous;
    let conditions = conditions
        .into_iter()
        .map(|(type_, ok, reason, message)| {
            condition(
                previous,
                type_,
                ok,
                reason,
                message,
                input.generation,
                &input.now,
            )
        })
        .collect();

    // Keep the digest of this revision once known, even while nodes that
    // reported it are briefly unreachable.
    let same_rev = |p: &&DatasetStatus| p.revision.as_deref() == rev.map(|r| r.revision.as_str());
    let content_digest = content_digest.or_else(|| {
        previous
            .filter(same_rev)
            .and_then(|p| p.content_digest.clone())
    });
    let total = rev.map(|r| r.total_bytes);
    DatasetStatus {
        observed_generation: input.generation,
        content_digest,
        revision: rev.map(|r| r.revision.clone()),
        total_bytes: total,
        files: rev.map(|r| r.files),
        chunk_size: rev.map(|r| r.chunk_size),
        nodes: counts.clone(),
        bytes_from_origin: from_origin,
        bytes_from_peers: from_peers,
        path: Some(Dataset::host_path(input.namespace, input.name)),
        node_label: Some(label::key(input.namespace, input.name)),
        ready_text: Some(format!("{}/{}", counts.ready, counts.desired)),
        size_text: total.map(human_bytes),
        origin_ratio: total
            .filter(|t| *t > 0)
            .map(|t| format!("{:.2}x", from_origin as f64 / t as f64)),
        failed_nodes: failed,
        node_progress,
        conditions,
    }
}

/// The status of a Dataset being deleted: what it held, with conditions
/// that say it is going and, while agents that may hold data cannot be
/// reached, which nodes the deletion waits for (`blocked`: node → why).
pub fn terminating(
    previous: Option<&DatasetStatus>,
    generation: Option<i64>,
    blocked: &BTreeMap<String, String>,
    now: Time,
) -> DatasetStatus {
    let mut out = previous.cloned().unwrap_or_default();
    let waiting = match blocked.len() {
        0 => "removing it from every node".to_owned(),
        n => format!("waiting for {n} node(s) that may hold a copy to remove it"),
    };
    let mut conditions = vec![
        (
            READY,
            false,
            Reason::Terminating,
            format!("being deleted: {waiting}"),
        ),
        (
            PROGRESSING,
            true,
            Reason::Terminating,
            format!("being deleted: {waiting}"),
        ),
    ];
    if blocked.is_empty() {
        conditions.push((DEGRADED, false, Reason::AsExpected, String::new()));
    } else {
        const SHOWN: usize = 5;
        let mut named: Vec<String> = blocked
            .iter()
            .take(SHOWN)
            .map(|(node, why)| format!("{node} ({why})"))
            .collect();
        if blocked.len() > SHOWN {
            named.push(format!("{} more", blocked.len() - SHOWN));
        }
        let message = format!(
            "the deletion waits for nodes whose agent runs but cannot be reached: {}; it completes once they answer or their agent Pods are gone",
            named.join("; ")
        );
        conditions.push((DEGRADED, true, Reason::DeletionBlocked, message));
    }
    out.conditions = conditions
        .into_iter()
        .map(|(type_, ok, reason, message)| {
            condition(previous, type_, ok, reason, message, generation, &now)
        })
        .collect();
    out
}

fn short(revision: &str) -> &str {
    revision.get(..16).unwrap_or(revision)
}

fn condition(
    previous: Option<&DatasetStatus>,
    type_: &str,
    ok: bool,
    reason: Reason,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    // lastTransitionTime moves only when the status flips.
    let last_transition_time = previous
        .and_then(|p| p.conditions.iter().find(|c| c.type_ == type_))
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// A milestone or failure worth a Kubernetes Event: (warning, reason,
/// note).
pub type Milestone = (bool, Reason, String);

/// The Events a status change deserves: Ready turning true (a milestone),
/// and Degraded turning true or changing its reason (a warning).
pub fn milestones(stored: Option<&DatasetStatus>, new: &DatasetStatus) -> Vec<Milestone> {
    let find = |s: Option<&DatasetStatus>, t: &str| {
        s.and_then(|s| s.conditions.iter().find(|c| c.type_ == t))
            .map(|c| (c.status == "True", c.reason.clone()))
    };
    let mut out = Vec::new();
    let now = |t: &str| new.conditions.iter().find(|c| c.type_ == t);
    if let Some(c) = now(READY)
        && c.status == "True"
        && find(stored, READY).is_none_or(|(ok, _)| !ok)
        && let Ok(reason) = c.reason.parse()
    {
        out.push((false, reason, c.message.clone()));
    }
    if let Some(c) = now(DEGRADED)
        && c.status == "True"
        && find(stored, DEGRADED).is_none_or(|(ok, r)| !ok || r != c.reason)
        && let Ok(reason) = c.reason.parse()
    {
        out.push((true, reason, c.message.clone()));
    }
    out
}

/// Whether `new` differs from what is stored (no write otherwise).
pub fn needs_write(stored: Option<&DatasetStatus>, new: &DatasetStatus) -> bool {
    stored != Some(new)
}

/// How long to wait before the next status write of one Dataset, given
/// when the last one happened: zero when a write may go now.
pub fn write_delay(last_write: Option<Instant>, now: Instant) -> Duration {
    match last_write {
        Some(t) => (t + MIN_WRITE_INTERVAL).saturating_duration_since(now),
        None => Duration::ZERO,
    }
}

#[cfg(test)]
mod tests;
