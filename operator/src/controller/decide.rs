//! The reconciler's decisions as plain functions over plain data: no
//! client, no socket, no clock of their own.
//!
//! A reconcile of a live Dataset runs in two pure steps around the agent
//! calls, because what the agents answer to an assignment (a refusal, the
//! progress of a fresh start) is part of what the status says:
//!
//! ```text
//! Observed + Memo ──decide──▶ Decision (plan, assignments to send, releases)
//!                                │ execute: ApplyAssignment, RemoveDataset
//!                                ▼
//! Observed + Decision + Outcomes ──conclude──▶ Concluded (memo, node labels,
//!                                              Events, status, next run)
//! ```
//!
//! A deletion is [`deletion`] (whom to ask, which labels go) and
//! [`after_deletion`] (whom it still waits for, the status that says so).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use swarmseed_origin::WeakValidators;
use swarmseed_proto::{ChunkLayout, pb};

use crate::agents::AgentPod;
use crate::events::EventType;
use crate::plan::{self, AgentInfo, Plan, PlanError, PlanInput};
use crate::status::{self, DatasetProblem, NodeReport, Reason, RevisionInfo, StatusInput};
use swarmseed_crd::{DatasetStatus, ValidSpec};

/// Run again this soon while a Dataset is not Ready everywhere.
pub const SEEDING_REQUEUE: Duration = Duration::from_secs(2);
/// Run again this soon once every selected node is Ready.
pub const READY_REQUEUE: Duration = Duration::from_secs(60);
/// Run again this soon after the source could not be listed.
pub const LIST_RETRY: Duration = Duration::from_secs(30);

/// The time of one decision: the monotonic clock for rate limits, the
/// wall clock for condition transition times.
#[derive(Debug, Clone)]
pub struct Now {
    pub mono: Instant,
    pub wall: Time,
}

impl Now {
    /// The clocks as they read now.
    pub fn current() -> Self {
        Self {
            mono: Instant::now(),
            wall: Time(k8s_openapi::jiff::Timestamp::now()),
        }
    }
}

/// What the reconciler remembers between runs. Losing it (a restart) costs
/// one listing per Dataset; the plan is rebuilt from the agents' state.
#[derive(Debug, Default, Clone)]
pub struct Memo {
    pub listed: Option<Listed>,
    pub plan: Option<Plan>,
    pub last_status_write: Option<Instant>,
    /// Nodes sent an assignment and not since told to remove it.
    pub assigned: BTreeSet<String>,
    /// What each node was last sent successfully (see [`assignment_key`]).
    pub sent: HashMap<String, [u8; 32]>,
    /// Every agent off the selected nodes was told to drop the dataset
    /// once since this process started (what it sent before a restart is
    /// unknown).
    pub swept: bool,
    /// Nodes that failed or refused the listed revision: never made its
    /// fetchers again (a node out of disk space would otherwise be given
    /// the role back at every retry, and the plan would never settle).
    pub failed_fetchers: BTreeSet<String>,
    /// The revision `failed_fetchers` is about.
    pub failed_revision: String,
}

/// A listing of the source, cut into chunks.
#[derive(Debug, Clone)]
pub struct Listed {
    /// The generation and relist annotation it was listed for.
    pub generation: Option<i64>,
    pub relist: Option<String>,
    pub layout: Arc<ChunkLayout>,
    pub origin: pb::Origin,
    /// Files only a weak validator pins at the origin.
    pub weak_validators: WeakValidators,
}

/// The Dataset object as the decisions need it.
#[derive(Debug, Clone, Default)]
pub struct Target {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub generation: Option<i64>,
    /// The stored status (`None` also when it cannot be read).
    pub status: Option<DatasetStatus>,
}

/// One selected node: its agent, when GetStatus answered, and what the
/// node reported.
#[derive(Debug, Clone)]
pub struct NodeSeen {
    pub agent: Option<AgentInfo>,
    pub report: NodeReport,
}

/// The world of one live Dataset, as gathered by `observe`.
#[derive(Debug, Clone)]
pub struct Observed {
    pub target: Target,
    /// The node selector in words (see `selector::describe`).
    pub selector: String,
    pub spec: ValidSpec,
    pub listed: Listed,
    /// The selected nodes that run an agent Pod.
    pub nodes: BTreeMap<String, NodeSeen>,
    /// The agent Pods of every other node.
    pub others: Vec<AgentPod>,
    /// The nodes carrying the Dataset's label now.
    pub labelled: Vec<String>,
    /// Peers each agent is given.
    pub max_peers: usize,
}

impl Observed {
    pub fn revision(&self) -> String {
        self.listed.layout.revision().to_hex()
    }

    /// The revision being held, as the status reports it.
    pub fn revision_info(&self) -> RevisionInfo {
        let layout = &self.listed.layout;
        RevisionInfo {
            revision: self.revision(),
            total_bytes: layout.total_bytes(),
            files: layout.files().len() as u64,
            chunk_size: layout.chunk_size(),
            weak_validators: self.listed.weak_validators.clone(),
            digest_pinned: self.spec.pinned_digest.is_some(),
        }
    }
}

/// What to do with the agents in one reconcile.
#[derive(Debug, Clone)]
pub struct Decision {
    pub revision: String,
    pub plan: Result<Plan, PlanError>,
    /// Identifies what `send` carries (see [`assignment_key`]); `None`
    /// without a plan.
    pub key: Option<[u8; 32]>,
    /// Selected nodes to send their assignment (built from the plan by
    /// `assignment::assignment`, one at a time as it is sent).
    pub send: Vec<String>,
    /// Agents off the selected nodes to tell to drop the Dataset.
    pub release: Vec<AgentPod>,
    /// Nodes never to be made fetchers of `revision`.
    pub failed_fetchers: BTreeSet<String>,
}

/// Decides the plan, whom to send an assignment and whom to release.
pub fn decide(observed: &Observed, memo: &Memo) -> Decision {
    let layout = &observed.listed.layout;
    let revision = observed.revision();
    let previous = memo.plan.clone().or_else(|| {
        // After a restart: continue the plan the agents follow.
        plan::from_agents(
            &revision,
            layout.chunk_count(),
            observed.nodes.values().filter_map(|v| match &v.report {
                NodeReport::Progress(Some(p)) => Some(&**p),
                _ => None,
            }),
        )
    });
    // Nodes that failed or refused this revision read nothing from the
    // origin for it: remembered, so that a retry that briefly looks healthy
    // does not give the role back.
    let mut failed_fetchers = if memo.failed_revision == revision {
        memo.failed_fetchers.clone()
    } else {
        BTreeSet::new()
    };
    failed_fetchers.extend(
        observed
            .nodes
            .iter()
            .filter_map(|(node, v)| match &v.report {
                NodeReport::Refused { .. } => Some(node.clone()),
                NodeReport::Progress(Some(p))
                    if p.revision == revision && p.state() == pb::DatasetState::Failed =>
                {
                    Some(node.clone())
                }
                _ => None,
            }),
    );
    let agents: Vec<AgentInfo> = observed
        .nodes
        .values()
        .filter_map(|v| v.agent.clone())
        .collect();
    let plan = plan::plan(&PlanInput {
        layout,
        agents: &agents,
        no_fetch: &failed_fetchers,
        previous: previous.as_ref(),
        max_fetchers: observed.spec.max_fetchers,
        max_peers: observed.max_peers,
    });
    let (key, send) = match &plan {
        Ok(plan) => {
            let key = assignment_key(
                observed.target.generation,
                &revision,
                plan.generation,
                &observed.listed.origin,
            );
            let send = observed
                .nodes
                .iter()
                .filter(|(node, v)| needs_assignment(node, v, &revision, plan, &key, memo))
                .map(|(node, _)| node.clone())
                .collect();
            (Some(key), send)
        }
        Err(_) => (None, Vec::new()),
    };
    let release = observed
        .others
        .iter()
        .filter(|p| {
            p.ready
                && (!memo.swept
                    || memo.assigned.contains(&p.node_name)
                    || observed.labelled.contains(&p.node_name))
        })
        .cloned()
        .collect();
    Decision {
        revision,
        plan,
        key,
        send,
        release,
        failed_fetchers,
    }
}

/// Whether `node` is sent its assignment: its agent answered, and it does
/// not follow this very assignment already.
///
/// An agent that follows what it was sent (it reports the same revision and
/// plan) is not sent it again: that would move the whole listing over the
/// wire for nothing, every run, to every node. That holds for a node that
/// failed this very assignment too: to an agent, a repeat of a failed
/// assignment means "start over" (a digest mismatch would fetch everything
/// again), so it is retried only once something changed: the spec, the
/// origin credentials, the plan, or this process (a restart forgets what
/// was sent).
fn needs_assignment(
    node: &str,
    seen: &NodeSeen,
    revision: &str,
    plan: &Plan,
    key: &[u8; 32],
    memo: &Memo,
) -> bool {
    let Some(info) = &seen.agent else {
        return false;
    };
    let follows = matches!(&seen.report, NodeReport::Progress(Some(p))
        if p.revision == revision && p.plan_generation == plan.generation);
    info.ready && !(follows && memo.sent.get(node) == Some(key))
}

/// Identifies the content of the assignments of one reconcile: the spec
/// (by generation), the listed revision, the plan (by generation: peers and
/// fetchers) and the origin access (credentials from a Secret can change
/// without the spec).
pub fn assignment_key(
    generation: Option<i64>,
    revision: &str,
    plan_generation: u64,
    origin: &pb::Origin,
) -> [u8; 32] {
    use prost::Message;
    let mut h = blake3::Hasher::new();
    h.update(&generation.unwrap_or(0).to_le_bytes());
    h.update(revision.as_bytes());
    h.update(&plan_generation.to_le_bytes());
    h.update(&origin.encode_to_vec());
    *h.finalize().as_bytes()
}

/// What an agent answered to its assignment: the progress it reports, or
/// what the node reports instead (`Refused` or `Unreachable`).
pub type SendOutcome = Result<Option<Box<pb::DatasetProgress>>, NodeReport>;

/// What the agents answered to a [`Decision`].
#[derive(Debug, Clone, Default)]
pub struct Outcomes {
    /// Per node sent an assignment: the progress the agent answered with,
    /// or what the node reports instead (`Refused` or `Unreachable`).
    pub sent: Vec<(String, SendOutcome)>,
    /// Per node released: whether the agent removed a copy, or why it
    /// could not be asked.
    pub released: Vec<(String, Result<bool, String>)>,
}

/// Whether and when to write a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusWrite {
    /// The stored status says this already.
    Skip,
    Now,
    /// Rate limited: due after this long (the reconcile runs again then).
    Later(Duration),
}

impl StatusWrite {
    /// Whether `new` is written over `stored`, given the last write.
    pub fn of(
        stored: Option<&DatasetStatus>,
        new: &DatasetStatus,
        last_write: Option<Instant>,
        now: Instant,
    ) -> Self {
        if !status::needs_write(stored, new) {
            return Self::Skip;
        }
        match status::write_delay(last_write, now) {
            d if d.is_zero() => Self::Now,
            d => Self::Later(d),
        }
    }

    /// The delay a rate-limited write asks for.
    pub fn pending(self) -> Option<Duration> {
        match self {
            Self::Later(d) => Some(d),
            Self::Skip | Self::Now => None,
        }
    }
}

/// An Event to publish on the Dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub type_: EventType,
    pub reason: Reason,
    pub note: String,
}

/// The rest of a reconcile, once the agents answered.
#[derive(Debug, Clone)]
pub struct Concluded {
    pub memo: Memo,
    /// Nodes to label (they hold a verified copy of the revision).
    pub label: Vec<String>,
    /// Nodes whose label goes.
    pub unlabel: Vec<String>,
    /// Events to publish (before the status).
    pub events: Vec<Note>,
    pub status: DatasetStatus,
    pub write: StatusWrite,
    /// When to run again.
    pub requeue: Duration,
}

/// Folds the agents' answers into the memo and the node reports, and
/// decides the node labels, the status and the next run.
pub fn conclude(
    observed: &Observed,
    memo: &Memo,
    decision: Decision,
    outcomes: Outcomes,
    now: &Now,
) -> Concluded {
    let mut memo = memo.clone();
    if memo.failed_revision != decision.revision {
        memo.failed_revision.clone_from(&decision.revision);
    }
    memo.failed_fetchers = decision.failed_fetchers;
    let mut reports: BTreeMap<String, NodeReport> = observed
        .nodes
        .iter()
        .map(|(n, v)| (n.clone(), v.report.clone()))
        .collect();
    if let (Ok(plan), Some(key)) = (decision.plan, decision.key) {
        memo.plan = Some(plan);
        for (node, result) in outcomes.sent {
            match &result {
                Ok(_) => {
                    memo.assigned.insert(node.clone());
                    memo.sent.insert(node.clone(), key);
                }
                Err(_) => {
                    memo.sent.remove(&node);
                }
            }
            if let Some(r) = reports.get_mut(&node) {
                *r = result.map_or_else(|report| report, NodeReport::Progress);
            }
        }
    }
    let mut events = Vec::new();
    let mut all_released = true;
    for (node, result) in &outcomes.released {
        match result {
            Ok(removed) => {
                memo.assigned.remove(node);
                memo.sent.remove(node);
                if *removed {
                    events.push(Note {
                        type_: EventType::Normal,
                        reason: Reason::Removed,
                        note: format!("node {node} no longer matches: its copy was removed"),
                    });
                }
            }
            Err(_) => all_released = false,
        }
    }
    memo.swept |= all_released;

    let ready: BTreeSet<&String> = reports
        .iter()
        .filter(|(_, r)| {
            matches!(r, NodeReport::Progress(Some(p))
                if p.state() == pb::DatasetState::Ready
                    && p.published_revision == decision.revision)
        })
        .map(|(n, _)| n)
        .collect();
    let label = ready
        .iter()
        .filter(|n| !observed.labelled.contains(n))
        .map(|n| (*n).clone())
        .collect();
    let unlabel = observed
        .labelled
        .iter()
        .filter(|n| !ready.contains(n))
        .cloned()
        .collect();

    let info = observed.revision_info();
    let target = &observed.target;
    let new = status::compute(&StatusInput {
        namespace: &target.namespace,
        name: &target.name,
        selector: &observed.selector,
        generation: target.generation,
        nodes: &reports,
        revision: Some(&info),
        problem: None,
        previous: target.status.as_ref(),
        now: now.wall.clone(),
    });
    let write = StatusWrite::of(
        target.status.as_ref(),
        &new,
        memo.last_status_write,
        now.mono,
    );
    let done = new.nodes.desired > 0 && new.nodes.ready == new.nodes.desired;
    let next = if done { READY_REQUEUE } else { SEEDING_REQUEUE };
    Concluded {
        memo,
        label,
        unlabel,
        events,
        requeue: write.pending().map_or(next, |p| p.min(next)),
        status: new,
        write,
    }
}

/// The status of a Dataset the operator cannot act on (a spec it cannot
/// read or validate, a source it cannot list), and whether to write it.
pub fn problem_status(
    target: &Target,
    selector: &str,
    problem: &DatasetProblem,
    last_write: Option<Instant>,
    now: &Now,
) -> (DatasetStatus, StatusWrite) {
    let new = status::compute(&StatusInput {
        namespace: &target.namespace,
        name: &target.name,
        selector,
        generation: target.generation,
        nodes: &BTreeMap::new(),
        revision: None,
        problem: Some(problem),
        previous: target.status.as_ref(),
        now: now.wall.clone(),
    });
    let write = StatusWrite::of(target.status.as_ref(), &new, last_write, now.mono);
    (new, write)
}

/// What a deletion does first: ask every agent that may hold data, Ready
/// or not (an agent that is up but not Ready still holds, and resumes,
/// what it was given), and take the label off every node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deletion {
    pub ask: Vec<AgentPod>,
    pub unlabel: Vec<String>,
}

pub fn deletion(agents: &BTreeMap<String, AgentPod>, labelled: &[String]) -> Deletion {
    Deletion {
        ask: agents.values().cloned().collect(),
        unlabel: labelled.to_vec(),
    }
}

/// How a deletion stands once the agents answered.
#[derive(Debug, Clone)]
pub enum Deleted {
    /// Every agent that may hold data dropped it: the finalizer goes.
    Done,
    /// Waiting for running agents that could not be reached (node → why),
    /// and the status that names them.
    Blocked {
        blocked: BTreeMap<String, String>,
        status: Box<DatasetStatus>,
        write: StatusWrite,
    },
}

/// The deletion waits for each agent Pod that is running and could not be
/// reached (a node cut off from the network), until it answers or its Pod
/// is gone. An agent that is not running is not waited for: when it
/// starts, it drops what it holds of Datasets that no longer exist.
pub fn after_deletion(
    target: &Target,
    answers: &[(AgentPod, Result<(), String>)],
    last_write: Option<Instant>,
    now: &Now,
) -> Deleted {
    let blocked: BTreeMap<String, String> = answers
        .iter()
        .filter(|(pod, _)| pod.running)
        .filter_map(|(pod, r)| {
            r.as_ref()
                .err()
                .map(|why| (pod.node_name.clone(), why.clone()))
        })
        .collect();
    if blocked.is_empty() {
        return Deleted::Done;
    }
    let status = status::terminating(
        target.status.as_ref(),
        target.generation,
        &blocked,
        now.wall.clone(),
    );
    let write = StatusWrite::of(target.status.as_ref(), &status, last_write, now.mono);
    Deleted::Blocked {
        blocked,
        status: Box::new(status),
        write,
    }
}

#[cfg(test)]
mod tests;
