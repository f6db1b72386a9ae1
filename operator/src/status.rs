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

use crate::node_label;
use swarmseed_crd::quantity::human_bytes;
use swarmseed_crd::{
    Dataset, DatasetStatus, FailedNode, MAX_FAILED_NODES, MAX_NODE_PROGRESS, NodeCounts,
    NodeProgress, NodeProgressState,
};

/// Status writes per Dataset are at least this far apart.
pub const MIN_WRITE_INTERVAL: Duration = Duration::from_secs(1);

pub use swarmseed_crd::condition::{CONTENT_PINNED, DEGRADED, PROGRESSING, READY, reason};

/// A problem of the whole Dataset, found by the operator itself (listing
/// the source, validating the spec), before or besides any agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetProblem {
    /// One of [`reason`]'s constants.
    pub reason: &'static str,
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
    Refused { reason: String, message: String },
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
    Failed(FailedNode),
}

fn classify(node: &str, report: &NodeReport, revision: Option<&RevisionInfo>) -> NodeState {
    let failed = |reason: &str, message: &str| {
        NodeState::Failed(FailedNode {
            node: node.to_owned(),
            reason: reason.to_owned(),
            message: message.to_owned(),
        })
    };
    match report {
        NodeReport::Unreachable(msg) => failed(reason::AGENT_UNREACHABLE, msg),
        NodeReport::Refused { reason, message } => failed(reason, message),
        NodeReport::Progress(None) => NodeState::Seeding,
        NodeReport::Progress(Some(p)) => {
            let current = revision.is_some_and(|r| r.revision == p.revision);
            match p.state() {
                DatasetState::Failed => {
                    let e = p.error.clone().unwrap_or_default();
                    let reason = if e.reason.is_empty() {
                        reason::NODE_FAILED
                    } else {
                        &e.reason
                    };
                    failed(reason, &e.message)
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
                    (NodeState::Failed(_), _) => NodeProgressState::Failed,
                    (_, DatasetState::Transferring) => NodeProgressState::Transferring,
                    // Ready but not yet published as the current revision.
                    (_, DatasetState::Publishing | DatasetState::Ready) => {
                        NodeProgressState::Publishing
                    }
                    _ => NodeProgressState::Pending,
                };
            } else if let NodeState::Failed(_) = class {
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
            NodeState::Failed(f) => failed.push(f),
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
    // to the first in reason order, so the choice is stable.
    let mut by_reason: BTreeMap<&str, usize> = BTreeMap::new();
    for f in &failed {
        *by_reason.entry(f.reason.as_str()).or_default() += 1;
    }
    let dominant = by_reason
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
        .map(|(r, _)| *r);
    let dominant_message = dominant
        .and_then(|r| failed.iter().find(|f| f.reason == r))
        .map(|f| format!("{} node(s) failed; {}: {}", total_failed, f.node, f.message));

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
        let reason = if e.reason.is_empty() {
            reason::SOURCE_UNAVAILABLE
        } else {
            e.reason.as_str()
        };
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
    let mut conditions: Vec<(&str, bool, String, String)> = Vec::new();
    if let Some(p) = input.problem {
        conditions.push((READY, false, p.reason.into(), p.message.clone()));
        conditions.push((PROGRESSING, false, p.reason.into(), p.message.clone()));
        conditions.push((DEGRADED, true, p.reason.into(), p.message.clone()));
    } else if all == 0 {
        let msg = format!(
            "no node running a swarmseed agent matches the selector ({}) or tolerates its taints",
            input.selector
        );
        conditions.push((READY, false, reason::NO_MATCHING_NODES.into(), msg.clone()));
        conditions.push((PROGRESSING, false, reason::NO_MATCHING_NODES.into(), msg));
        conditions.push((DEGRADED, false, reason::AS_EXPECTED.into(), String::new()));
    } else {
        let rev_text = rev.map(|r| short(&r.revision)).unwrap_or_default();
        if counts.ready == all {
            conditions.push((
                READY,
                true,
                reason::READY.into(),
                format!("{all}/{all} nodes hold a verified copy of revision {rev_text}"),
            ));
        } else {
            let why = dominant.unwrap_or(reason::NOT_READY);
            let msg = format!(
                "{}/{} nodes ready, {} seeding, {} failed",
                counts.ready, all, counts.seeding, counts.failed
            );
            conditions.push((READY, false, why.into(), msg));
        }
        if counts.seeding > 0 {
            let msg = format!("{} node(s) receiving revision {rev_text}", counts.seeding);
            conditions.push((PROGRESSING, true, reason::SEEDING.into(), msg));
        } else if counts.failed > 0 {
            let msg = "no node is making progress".to_owned();
            conditions.push((PROGRESSING, false, reason::STALLED.into(), msg));
        } else {
            conditions.push((PROGRESSING, false, reason::COMPLETE.into(), String::new()));
        }
        match (dominant, dominant_message, origin_problem) {
            (Some(r), Some(m), _) => conditions.push((DEGRADED, true, r.into(), m)),
            (_, _, Some((r, m))) => conditions.push((DEGRADED, true, r.into(), m)),
            _ => conditions.push((DEGRADED, false, reason::AS_EXPECTED.into(), String::new())),
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
            conditions.push((CONTENT_PINNED, true, reason::DIGEST_PINNED.into(), message));
        } else {
            conditions.push((
                CONTENT_PINNED,
                false,
                reason::WEAK_VALIDATORS.into(),
                message,
            ));
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
        node_label: Some(node_label::key(input.namespace, input.name)),
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
            reason::TERMINATING,
            format!("being deleted: {waiting}"),
        ),
        (
            PROGRESSING,
            true,
            reason::TERMINATING,
            format!("being deleted: {waiting}"),
        ),
    ];
    if blocked.is_empty() {
        conditions.push((DEGRADED, false, reason::AS_EXPECTED, String::new()));
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
        conditions.push((DEGRADED, true, reason::DELETION_BLOCKED, message));
    }
    out.conditions = conditions
        .into_iter()
        .map(|(type_, ok, reason, message)| {
            condition(
                previous,
                type_,
                ok,
                reason.to_owned(),
                message,
                generation,
                &now,
            )
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
    reason: String,
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
        reason,
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// A milestone or failure worth a Kubernetes Event: (warning, reason,
/// note).
pub type Milestone = (bool, String, String);

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
    {
        out.push((false, c.reason.clone(), c.message.clone()));
    }
    if let Some(c) = now(DEGRADED)
        && c.status == "True"
        && find(stored, DEGRADED).is_none_or(|(ok, r)| !ok || r != c.reason)
    {
        out.push((true, c.reason.clone(), c.message.clone()));
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
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    const REV: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(1_800_000_000 + secs).unwrap())
    }

    fn rev() -> RevisionInfo {
        RevisionInfo {
            revision: REV.into(),
            total_bytes: 4 << 30,
            files: 3,
            chunk_size: 1 << 20,
            ..RevisionInfo::default()
        }
    }

    fn progress(state: DatasetState, origin: u64, peers: u64) -> NodeReport {
        let mut p = pb::DatasetProgress {
            revision: REV.into(),
            bytes_from_origin: origin,
            bytes_from_peers: peers,
            bytes_verified: origin + peers,
            bytes_total: 4 << 30,
            ..Default::default()
        };
        p.set_state(state);
        if state == DatasetState::Ready {
            p.published_revision = REV.into();
            p.content_digest = vec![0xcd; 32];
        }
        NodeReport::Progress(Some(Box::new(p)))
    }

    fn failed(reason: &str, message: &str) -> NodeReport {
        let mut p = pb::DatasetProgress {
            revision: REV.into(),
            ..Default::default()
        };
        p.set_state(DatasetState::Failed);
        p.error = Some(pb::ErrorInfo {
            reason: reason.into(),
            message: message.into(),
        });
        NodeReport::Progress(Some(Box::new(p)))
    }

    fn nodes(reports: Vec<NodeReport>) -> BTreeMap<String, NodeReport> {
        reports
            .into_iter()
            .enumerate()
            .map(|(i, r)| (format!("node-{i}"), r))
            .collect()
    }

    fn run(
        nodes: &BTreeMap<String, NodeReport>,
        prev: Option<&DatasetStatus>,
        now: Time,
    ) -> DatasetStatus {
        let r = rev();
        compute(&StatusInput {
            namespace: "ml",
            name: "llama",
            selector: "gpu=true",
            generation: Some(3),
            nodes,
            revision: Some(&r),
            problem: None,
            previous: prev,
            now,
        })
    }

    fn cond<'a>(s: &'a DatasetStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    /// An HTTP origin whose ETags are made of modification time and size
    /// published a file rewritten in place, a file that never existed at the
    /// origin: the status says which files only such a validator pins, and
    /// the remedy; with `spec.digest` set it says the content is pinned.
    #[test]
    fn files_pinned_by_a_weak_validator_are_named_with_the_remedy() {
        let ready = nodes(vec![progress(DatasetState::Ready, 1, 0)]);
        let status = |weak: usize, digest_pinned: bool| {
            let r = RevisionInfo {
                weak_validators: WeakValidators {
                    count: weak,
                    examples: (0..weak.min(3)).map(|i| format!("f{i}.bin")).collect(),
                },
                digest_pinned,
                ..rev()
            };
            compute(&StatusInput {
                namespace: "ml",
                name: "llama",
                selector: "gpu=true",
                generation: Some(3),
                nodes: &ready,
                revision: Some(&r),
                problem: None,
                previous: None,
                now: at(0),
            })
        };
        let strong = status(0, false);
        assert!(strong.conditions.iter().all(|c| c.type_ != CONTENT_PINNED));
        let weak = status(5, false);
        let c = cond(&weak, CONTENT_PINNED);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "WeakValidators")
        );
        assert!(
            c.message
                .starts_with("5 file(s) (f0.bin, f1.bin, f2.bin, ...) are pinned only"),
            "{}",
            c.message
        );
        assert!(c.message.contains("spec.digest"), "{}", c.message);
        assert_eq!(
            cond(&weak, READY).status,
            "True",
            "a warning, not a failure"
        );
        let pinned = status(5, true);
        let c = cond(&pinned, CONTENT_PINNED);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "DigestPinned")
        );
    }

    /// A 40 s origin outage mid-seed showed `Progressing=True Seeding`,
    /// `Degraded=False` and no Event: only agent logs mentioned it.
    #[test]
    fn an_origin_that_keeps_failing_is_degraded_and_named() {
        let failing = |secs: u32| {
            let NodeReport::Progress(Some(mut p)) = progress(DatasetState::Transferring, 1, 0)
            else {
                unreachable!()
            };
            p.origin_error = Some(pb::ErrorInfo {
                reason: reason::SOURCE_UNAVAILABLE.into(),
                message: "GET http://origin/w.bin: connection refused".into(),
            });
            p.origin_error_seconds = secs;
            NodeReport::Progress(Some(p))
        };
        let healthy = run(
            &nodes(vec![progress(DatasetState::Transferring, 1, 0)]),
            None,
            at(0),
        );
        let s = run(
            &nodes(vec![
                failing(12),
                progress(DatasetState::Transferring, 1, 0),
                failing(31),
            ]),
            Some(&healthy),
            at(15),
        );
        let d = cond(&s, DEGRADED);
        assert_eq!(
            (d.status.as_str(), d.reason.as_str()),
            ("True", "SourceUnavailable")
        );
        assert_eq!(
            d.message,
            "origin reads have failed for 31 s on node-2 (and on 1 other node(s)): \
             GET http://origin/w.bin: connection refused; chunks already in the cluster keep moving"
        );
        assert_eq!(cond(&s, PROGRESSING).status, "True", "the seed goes on");
        let m = milestones(Some(&healthy), &s);
        assert_eq!(m.len(), 1, "a Warning Event: {m:?}");
        assert_eq!((m[0].0, m[0].1.as_str()), (true, "SourceUnavailable"));
        // Recovered: Degraded clears by itself.
        let back = run(
            &nodes(vec![progress(DatasetState::Transferring, 2, 0)]),
            Some(&s),
            at(30),
        );
        assert_eq!(cond(&back, DEGRADED).status, "False");
        // A failed node is the stronger fault and names the Dataset's.
        let s = run(
            &nodes(vec![
                failing(40),
                failed(reason::INSUFFICIENT_STORAGE, "disk full"),
            ]),
            None,
            at(0),
        );
        assert_eq!(cond(&s, DEGRADED).reason, reason::INSUFFICIENT_STORAGE);
    }

    /// A deletion held up by a node cut off from the network was silent:
    /// status still said Ready 3/3, and there was no Event.
    #[test]
    fn a_blocked_deletion_says_so_and_names_the_nodes() {
        let ready = run(
            &nodes(vec![
                progress(DatasetState::Ready, 1, 0),
                progress(DatasetState::Ready, 0, 1),
            ]),
            None,
            at(0),
        );
        let blocked: BTreeMap<String, String> = [(
            "node-1".to_owned(),
            "agent 10.0.0.2:7400: no answer within 15s".to_owned(),
        )]
        .into();
        let s = terminating(Some(&ready), Some(3), &blocked, at(5));
        assert_eq!(cond(&s, READY).status, "False");
        assert_eq!(cond(&s, READY).reason, reason::TERMINATING);
        let d = cond(&s, DEGRADED);
        assert_eq!(
            (d.status.as_str(), d.reason.as_str()),
            ("True", "DeletionBlocked")
        );
        assert!(
            d.message
                .contains("node-1 (agent 10.0.0.2:7400: no answer within 15s)"),
            "{}",
            d.message
        );
        assert_eq!(s.nodes, ready.nodes, "what it held is still shown");
        let m = milestones(Some(&ready), &s);
        assert!(m.iter().any(|e| e.0 && e.1 == "DeletionBlocked"), "{m:?}");
        // Many nodes: a bounded message.
        let many: BTreeMap<String, String> = (0..1000)
            .map(|i| (format!("node-{i:04}"), "unreachable".to_owned()))
            .collect();
        let s = terminating(Some(&ready), Some(3), &many, at(6));
        assert!(cond(&s, DEGRADED).message.len() < 512);
        assert!(cond(&s, DEGRADED).message.contains("995 more"));
    }

    #[test]
    fn events_mark_ready_once_and_each_new_degradation() {
        let seeding = run(
            &nodes(vec![progress(DatasetState::Transferring, 1, 0)]),
            None,
            at(0),
        );
        assert!(milestones(None, &seeding).is_empty());
        let ready = run(
            &nodes(vec![progress(DatasetState::Ready, 1, 0)]),
            Some(&seeding),
            at(1),
        );
        let m = milestones(Some(&seeding), &ready);
        assert_eq!(m.len(), 1, "{m:?}");
        assert!(!m[0].0);
        assert_eq!(m[0].1, cond(&ready, READY).reason);
        assert!(milestones(Some(&ready), &ready).is_empty(), "no repeat");
        let bad = run(
            &nodes(vec![failed(reason::DIGEST_MISMATCH, "content differs")]),
            Some(&ready),
            at(2),
        );
        let m = milestones(Some(&ready), &bad);
        assert_eq!(m.len(), 1, "{m:?}");
        assert_eq!((m[0].0, m[0].1.as_str()), (true, reason::DIGEST_MISMATCH));
        assert!(milestones(Some(&bad), &bad).is_empty(), "no repeat");
    }

    #[test]
    fn all_nodes_ready_means_ready_with_totals() {
        let n = nodes(vec![
            progress(DatasetState::Ready, 2 << 30, 2 << 30),
            progress(DatasetState::Ready, 2 << 30, 2 << 30),
        ]);
        let s = run(&n, None, at(0));
        assert_eq!(
            s.nodes,
            NodeCounts {
                desired: 2,
                ready: 2,
                seeding: 0,
                failed: 0
            }
        );
        assert_eq!(cond(&s, READY).status, "True");
        assert_eq!(cond(&s, READY).reason, "Ready");
        assert_eq!(cond(&s, PROGRESSING).status, "False");
        assert_eq!(cond(&s, DEGRADED).status, "False");
        assert_eq!(s.ready_text.as_deref(), Some("2/2"));
        assert_eq!(s.size_text.as_deref(), Some("4GiB"));
        assert_eq!(s.origin_ratio.as_deref(), Some("1.00x"));
        assert_eq!(
            s.content_digest,
            Some(format!("blake3:{}", "cd".repeat(32)))
        );
        assert_eq!(
            s.path.as_deref(),
            Some("/var/lib/swarmseed/datasets/ml/llama")
        );
        assert_eq!(s.node_label, Some(node_label::key("ml", "llama")));
        assert_eq!(s.observed_generation, Some(3));
    }

    #[test]
    fn seeding_nodes_mean_progressing_and_not_ready() {
        let n = nodes(vec![
            progress(DatasetState::Ready, 0, 4 << 30),
            progress(DatasetState::Transferring, 1 << 30, 0),
            NodeReport::Progress(None),
        ]);
        let s = run(&n, None, at(0));
        assert_eq!(
            s.nodes,
            NodeCounts {
                desired: 3,
                ready: 1,
                seeding: 2,
                failed: 0
            }
        );
        assert_eq!(
            (
                cond(&s, READY).status.as_str(),
                cond(&s, READY).reason.as_str()
            ),
            ("False", "NotReady")
        );
        assert_eq!(
            cond(&s, READY).message,
            "1/3 nodes ready, 2 seeding, 0 failed"
        );
        assert_eq!(
            (
                cond(&s, PROGRESSING).status.as_str(),
                cond(&s, PROGRESSING).reason.as_str()
            ),
            ("True", "Seeding")
        );
        assert_eq!(s.ready_text.as_deref(), Some("1/3"));
        assert_eq!(s.origin_ratio.as_deref(), Some("0.25x"));
    }

    #[test]
    fn failures_name_the_reason_and_list_the_nodes() {
        let mut reports = vec![
            failed(
                "DigestMismatch",
                "content is blake3:aa, spec pins blake3:bb"
            );
            12
        ];
        reports.push(NodeReport::Unreachable(
            "GetStatus timed out after 5s".into(),
        ));
        let n = nodes(reports);
        let s = run(&n, None, at(0));
        assert_eq!(s.nodes.failed, 13);
        assert_eq!(s.failed_nodes.len(), MAX_FAILED_NODES, "bounded");
        assert_eq!(cond(&s, READY).reason, "DigestMismatch");
        let d = cond(&s, DEGRADED);
        assert_eq!(
            (d.status.as_str(), d.reason.as_str()),
            ("True", "DigestMismatch")
        );
        assert!(d.message.contains("spec pins blake3:bb"), "{}", d.message);
        assert_eq!(cond(&s, PROGRESSING).reason, "Stalled");
        let unreachable = nodes(vec![NodeReport::Unreachable("connection refused".into())]);
        let s = run(&unreachable, None, at(0));
        assert_eq!(s.failed_nodes[0].reason, "AgentUnreachable");
        assert_eq!(s.failed_nodes[0].message, "connection refused");
        let refused = nodes(vec![NodeReport::Refused {
            reason: "InsufficientStorage".into(),
            message: "1GiB free, 4GiB needed".into(),
        }]);
        let s = run(&refused, None, at(0));
        assert_eq!(s.failed_nodes[0].reason, "InsufficientStorage");
        assert_eq!(cond(&s, DEGRADED).reason, "InsufficientStorage");
        assert_eq!(s.node_progress[0].state, NodeProgressState::Failed);
    }

    #[test]
    fn dataset_problems_and_empty_selections_are_reported() {
        let n = BTreeMap::new();
        let s = run(&n, None, at(0));
        assert_eq!(cond(&s, READY).reason, "NoMatchingNodes");
        assert!(cond(&s, READY).message.contains("(gpu=true)"));
        assert_eq!(cond(&s, DEGRADED).status, "False");
        let problem = DatasetProblem {
            reason: reason::SOURCE_UNAVAILABLE,
            message: "listing s3://b/p: 403 Forbidden".into(),
        };
        let s = compute(&StatusInput {
            namespace: "ml",
            name: "llama",
            selector: "gpu=true",
            generation: Some(1),
            nodes: &n,
            revision: None,
            problem: Some(&problem),
            previous: None,
            now: at(0),
        });
        assert_eq!(cond(&s, READY).reason, "SourceUnavailable");
        assert_eq!(cond(&s, DEGRADED).status, "True");
        assert_eq!(
            cond(&s, DEGRADED).message,
            "listing s3://b/p: 403 Forbidden"
        );
        assert_eq!(s.size_text, None);
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let seeding = nodes(vec![progress(DatasetState::Transferring, 1, 0)]);
        let s1 = run(&seeding, None, at(0));
        let s2 = run(&seeding, Some(&s1), at(10));
        assert_eq!(s1, s2, "nothing changed, nothing to write");
        assert!(!needs_write(Some(&s1), &s2));

        let more = nodes(vec![progress(DatasetState::Transferring, 2, 0)]);
        let s3 = run(&more, Some(&s2), at(20));
        assert!(needs_write(Some(&s2), &s3), "byte counters changed");
        assert_eq!(cond(&s3, READY).last_transition_time, at(0));

        let ready = nodes(vec![progress(DatasetState::Ready, 2, 0)]);
        let s4 = run(&ready, Some(&s3), at(30));
        assert_eq!(
            cond(&s4, READY).last_transition_time,
            at(30),
            "Ready flipped"
        );
        assert_eq!(
            cond(&s4, DEGRADED).last_transition_time,
            at(0),
            "Degraded stayed False"
        );
    }

    fn entry(
        node: &str,
        state: NodeProgressState,
        verified: u64,
        origin: u64,
        peers: u64,
    ) -> NodeProgress {
        NodeProgress {
            node: node.into(),
            state,
            bytes_verified: verified,
            bytes_total: 4 << 30,
            bytes_from_origin: origin,
            bytes_from_peers: peers,
        }
    }

    #[test]
    fn node_progress_shows_each_node_with_its_origin_peer_split() {
        let mut old = pb::DatasetProgress {
            revision: "ff".repeat(32),
            published_revision: "ff".repeat(32),
            bytes_verified: 9 << 30,
            bytes_total: 9 << 30,
            ..Default::default()
        };
        old.set_state(DatasetState::Ready);
        let mut publishing = pb::DatasetProgress {
            revision: REV.into(),
            bytes_verified: 4 << 30,
            bytes_total: 4 << 30,
            bytes_from_peers: 4 << 30,
            ..Default::default()
        };
        publishing.set_state(DatasetState::Publishing);
        let n: BTreeMap<String, NodeReport> = [
            // Inserted out of order: the list comes out sorted.
            ("gpu-e", NodeReport::Unreachable("refused".into())),
            ("gpu-a", progress(DatasetState::Ready, 1 << 30, 3 << 30)),
            ("gpu-c", NodeReport::Progress(None)),
            (
                "gpu-b",
                progress(DatasetState::Transferring, 1 << 30, 512 << 20),
            ),
            ("gpu-d", failed("InsufficientStorage", "disk full")),
            // Still holding an older revision: nothing of this one yet.
            ("gpu-f", NodeReport::Progress(Some(Box::new(old)))),
            ("gpu-g", NodeReport::Progress(Some(Box::new(publishing)))),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let s = run(&n, None, at(0));
        use NodeProgressState::*;
        assert_eq!(
            s.node_progress,
            [
                entry("gpu-a", Ready, 4 << 30, 1 << 30, 3 << 30),
                entry("gpu-b", Transferring, 1536 << 20, 1 << 30, 512 << 20),
                entry("gpu-c", Pending, 0, 0, 0),
                entry("gpu-d", Failed, 0, 0, 0),
                entry("gpu-e", Unreachable, 0, 0, 0),
                entry("gpu-f", Pending, 0, 0, 0),
                entry("gpu-g", Publishing, 4 << 30, 0, 4 << 30),
            ]
        );
        // The per-node split adds up to the Dataset's totals.
        let origin: u64 = s.node_progress.iter().map(|e| e.bytes_from_origin).sum();
        let peers: u64 = s.node_progress.iter().map(|e| e.bytes_from_peers).sum();
        assert_eq!((origin, peers), (s.bytes_from_origin, s.bytes_from_peers));
        // Its states agree with the counts.
        assert_eq!(
            s.nodes,
            NodeCounts {
                desired: 7,
                ready: 1,
                seeding: 4,
                failed: 2
            }
        );
    }

    #[test]
    fn an_unreachable_node_keeps_its_last_known_bytes() {
        let before = nodes(vec![progress(DatasetState::Transferring, 1 << 30, 0)]);
        let s1 = run(&before, None, at(0));
        let blip = nodes(vec![NodeReport::Unreachable("timed out".into())]);
        let s2 = run(&blip, Some(&s1), at(1));
        assert_eq!(
            s2.node_progress,
            [entry(
                "node-0",
                NodeProgressState::Unreachable,
                1 << 30,
                1 << 30,
                0
            )]
        );
        // Not for another revision: those bytes mean nothing for this one.
        let mut other = s1.clone();
        other.revision = Some("ff".repeat(32));
        let s3 = run(&blip, Some(&other), at(1));
        assert_eq!(s3.node_progress[0].bytes_verified, 0);
    }

    #[test]
    fn node_progress_is_bounded_and_the_counts_stay_exact() {
        let n: BTreeMap<String, NodeReport> = (0..300)
            .map(|i| {
                (
                    format!("node-{i:03}"),
                    progress(DatasetState::Ready, 0, 4 << 30),
                )
            })
            .collect();
        let s = run(&n, None, at(0));
        assert_eq!(s.node_progress.len(), MAX_NODE_PROGRESS);
        assert_eq!(s.node_progress[0].node, "node-000");
        assert_eq!(s.node_progress[255].node, "node-255");
        assert_eq!((s.nodes.desired, s.nodes.ready), (300, 300));
        assert_eq!(s.bytes_from_peers, 300 * (4 << 30));
    }

    #[test]
    fn a_node_making_progress_is_a_change_worth_writing() {
        let mut p = pb::DatasetProgress {
            revision: REV.into(),
            bytes_verified: 1 << 20,
            bytes_total: 4 << 30,
            ..Default::default()
        };
        p.set_state(DatasetState::Transferring);
        let s1 = run(
            &nodes(vec![NodeReport::Progress(Some(Box::new(p.clone())))]),
            None,
            at(0),
        );
        // Verified bytes grow (chunks reused from an older revision, say)
        // while the origin/peer totals stay put.
        p.bytes_verified = 2 << 20;
        let s2 = run(
            &nodes(vec![NodeReport::Progress(Some(Box::new(p)))]),
            Some(&s1),
            at(1),
        );
        assert_eq!(s1.bytes_from_origin, s2.bytes_from_origin);
        assert!(needs_write(Some(&s1), &s2));
        assert!(!needs_write(Some(&s2), &s2));
    }

    #[test]
    fn writes_are_spaced_by_the_interval() {
        let t0 = Instant::now();
        assert_eq!(write_delay(None, t0), Duration::ZERO);
        assert_eq!(
            write_delay(Some(t0), t0 + Duration::from_millis(300)),
            Duration::from_millis(700)
        );
        assert_eq!(
            write_delay(Some(t0), t0 + Duration::from_secs(2)),
            Duration::ZERO
        );
    }
}
