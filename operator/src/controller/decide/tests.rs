//! `decide`, `conclude` and the deletion steps driven as plain data: the
//! life of a Dataset, one reconcile at a time, without a cluster or an
//! agent.

use k8s_openapi::jiff::Timestamp;
use swarmseed_proto::pb::DatasetState;

use super::*;
use crate::status::Reason;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

const MIB: u64 = 1 << 20;

fn now(secs: i64) -> Now {
    Now {
        mono: Instant::now() + Duration::from_secs(secs as u64),
        wall: Time(Timestamp::from_second(1_800_000_000 + secs).unwrap()),
    }
}

fn listed() -> Listed {
    let files = (0..4)
        .map(|i| pb::FileEntry {
            path: format!("f{i}"),
            size: 8 * MIB,
            ..Default::default()
        })
        .collect();
    Listed {
        generation: Some(1),
        relist: None,
        layout: Arc::new(ChunkLayout::new(files, MIB).unwrap()),
        origin: pb::Origin {
            uri: "s3://bucket/llama".into(),
            ..Default::default()
        },
        weak_validators: WeakValidators::default(),
    }
}

fn agent(node: &str) -> AgentInfo {
    let i = node.bytes().last().unwrap_or(0);
    AgentInfo {
        node_name: node.into(),
        pod_ip: format!("10.0.0.{i}"),
        control_port: 7400,
        peer_address: format!("10.0.0.{i}:7401"),
        public_key: vec![i; 32],
        ready: true,
    }
}

fn pod(node: &str, ready: bool, running: bool) -> AgentPod {
    AgentPod {
        node_name: node.into(),
        pod_name: format!("agent-{node}"),
        pod_ip: if running {
            format!("10.0.1.{}", node.len())
        } else {
            String::new()
        },
        ready,
        running,
        incarnation: format!("uid-{node}/0"),
    }
}

/// A fresh agent that holds nothing of the Dataset.
fn fresh(node: &str) -> NodeSeen {
    NodeSeen {
        agent: Some(agent(node)),
        report: NodeReport::Progress(None),
    }
}

fn progress(revision: &str, plan: &Plan, state: DatasetState) -> pb::DatasetProgress {
    let mut p = pb::DatasetProgress {
        revision: revision.into(),
        plan_generation: plan.generation,
        fetchers: plan.fetchers_pb(),
        bytes_total: 32 * MIB,
        ..Default::default()
    };
    p.set_state(state);
    if state == DatasetState::Ready {
        p.published_revision = revision.into();
        p.bytes_verified = 32 * MIB;
        p.content_digest = vec![0xcd; 32];
    }
    p
}

fn following(node: &str, revision: &str, plan: &Plan, state: DatasetState) -> NodeSeen {
    NodeSeen {
        agent: Some(agent(node)),
        report: NodeReport::Progress(Some(Box::new(progress(revision, plan, state)))),
    }
}

fn observed(nodes: Vec<(&str, NodeSeen)>) -> Observed {
    Observed {
        target: Target {
            namespace: "ml".into(),
            name: "llama".into(),
            uid: "uid-1".into(),
            generation: Some(1),
            status: None,
        },
        selector: "all nodes".into(),
        spec: ValidSpec {
            pinned_digest: None,
            chunk_size: None,
            max_fetchers: 2,
            origin_bandwidth: 0,
            peer_bandwidth: 0,
        },
        listed: listed(),
        nodes: nodes.into_iter().map(|(n, s)| (n.to_owned(), s)).collect(),
        others: Vec::new(),
        labelled: Vec::new(),
        max_peers: plan::DEFAULT_MAX_PEERS,
    }
}

/// Every send accepted: each agent answers that it started transferring.
fn accepted(observed: &Observed, decision: &Decision) -> Outcomes {
    let plan = decision.plan.as_ref().unwrap();
    Outcomes {
        sent: decision
            .send
            .iter()
            .map(|n| {
                let p = progress(&observed.revision(), plan, DatasetState::Transferring);
                (n.clone(), Ok(Some(Box::new(p))))
            })
            .collect(),
        released: Vec::new(),
    }
}

fn condition<'a>(status: &'a DatasetStatus, type_: &str) -> &'a Condition {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {status:?}"))
}

/// One full run: decide, the agents' answers, conclude.
fn run(
    observed: &Observed,
    memo: &Memo,
    answer: impl FnOnce(&Observed, &Decision) -> Outcomes,
    at: &Now,
) -> (Decision, Concluded) {
    let decision = decide(observed, memo);
    let outcomes = answer(observed, &decision);
    let done = conclude(observed, memo, decision.clone(), outcomes, at);
    (decision, done)
}

/// `observed` with a fresh agent on each node named.
fn fresh_nodes(names: &[&str]) -> Observed {
    observed(names.iter().map(|n| (*n, fresh(n))).collect())
}

/// What the first run over fresh agents sent and concluded, every send
/// accepted.
struct FirstRun {
    revision: String,
    plan: Plan,
    memo: Memo,
    status: DatasetStatus,
}

/// The first run over fresh agents on the nodes named.
fn first_run(names: &[&str]) -> FirstRun {
    let obs = fresh_nodes(names);
    let (decision, done) = run(&obs, &Memo::default(), accepted, &now(0));
    FirstRun {
        revision: obs.revision(),
        plan: decision.plan.expect("a plan"),
        memo: done.memo,
        status: done.status,
    }
}

impl FirstRun {
    /// The Dataset observed later, each node's agent following the first
    /// plan in the state given.
    fn reported(&self, nodes: &[(&str, DatasetState)]) -> Observed {
        let seen = nodes
            .iter()
            .map(|&(n, state)| (n, following(n, &self.revision, &self.plan, state)));
        observed(seen.collect())
    }
}

#[test]
fn a_new_dataset_is_assigned_to_every_selected_node_and_says_it_is_seeding() {
    let obs = fresh_nodes(&["node-1", "node-2"]);
    let (decision, done) = run(&obs, &Memo::default(), accepted, &now(0));
    let plan = decision.plan.as_ref().expect("a plan");
    assert_eq!(decision.send, ["node-1", "node-2"]);
    assert!(decision.release.is_empty(), "no other agent");
    assert!(!plan.fetchers.is_empty());
    // Remembered: the plan, and what each node was sent.
    assert_eq!(done.memo.plan.as_ref(), Some(plan));
    assert_eq!(done.memo.assigned.len(), 2);
    assert_eq!(done.memo.sent.get("node-1"), decision.key.as_ref());
    assert_eq!(done.memo.failed_revision, obs.revision());
    // Nothing Ready yet: no label; the status says seeding and is written.
    assert!(done.label.is_empty() && done.unlabel.is_empty());
    assert_eq!(done.status.nodes.desired, 2);
    assert_eq!(done.status.nodes.seeding, 2);
    assert_eq!(
        done.status.revision.as_deref(),
        Some(obs.revision().as_str())
    );
    assert_eq!(condition(&done.status, status::READY).status, "False");
    assert_eq!(condition(&done.status, status::PROGRESSING).status, "True");
    assert_eq!(done.write, StatusWrite::Now);
    assert_eq!(done.requeue, SEEDING_REQUEUE);
}

#[test]
fn ready_nodes_are_labelled_and_a_ready_dataset_is_checked_less_often() {
    let first = first_run(&["node-1", "node-2"]);
    let mut obs = first.reported(&[
        ("node-1", DatasetState::Ready),
        ("node-2", DatasetState::Transferring),
    ]);
    obs.target.status = Some(first.status.clone());
    let (decision, done) = run(&obs, &first.memo, accepted, &now(5));
    assert!(decision.send.is_empty(), "both follow what they were sent");
    assert_eq!(done.label, ["node-1"]);
    assert_eq!(done.status.nodes.ready, 1);
    assert_eq!(done.requeue, SEEDING_REQUEUE);

    let mut obs = first.reported(&[
        ("node-1", DatasetState::Ready),
        ("node-2", DatasetState::Ready),
    ]);
    obs.labelled = vec!["node-1".into()];
    obs.target.status = Some(done.status.clone());
    let (_, done) = run(&obs, &done.memo, accepted, &now(10));
    assert_eq!(done.label, ["node-2"]);
    assert!(done.unlabel.is_empty());
    assert_eq!(done.status.nodes.ready, 2);
    assert_eq!(condition(&done.status, status::READY).status, "True");
    assert_eq!(done.requeue, READY_REQUEUE);
}

#[test]
fn a_node_that_follows_is_not_sent_again_until_something_changes() {
    let first = first_run(&["node-1"]);
    let follows = following(
        "node-1",
        &first.revision,
        &first.plan,
        DatasetState::Transferring,
    );
    let obs = observed(vec![("node-1", follows.clone())]);
    assert!(decide(&obs, &first.memo).send.is_empty());

    // A new spec generation, new origin credentials or a restart
    // (nothing remembered as sent) each send it again.
    let mut obs = observed(vec![("node-1", follows.clone())]);
    obs.target.generation = Some(2);
    assert_eq!(decide(&obs, &first.memo).send, ["node-1"]);
    let mut obs = observed(vec![("node-1", follows.clone())]);
    obs.listed
        .origin
        .credentials
        .insert("AWS_SECRET_ACCESS_KEY".into(), "rotated".into());
    assert_eq!(decide(&obs, &first.memo).send, ["node-1"]);
    let obs = observed(vec![("node-1", follows)]);
    let restarted = Memo {
        plan: first.memo.plan.clone(),
        ..Memo::default()
    };
    assert_eq!(decide(&obs, &restarted).send, ["node-1"]);
}

#[test]
fn a_failed_send_is_retried_and_a_refusal_shows_in_the_status() {
    let obs = fresh_nodes(&["node-1", "node-2"]);
    let refuse = |_: &Observed, d: &Decision| Outcomes {
        sent: d
            .send
            .iter()
            .map(|n| {
                let r = if n == "node-2" {
                    Err(NodeReport::Refused {
                        reason: Reason::InsufficientStorage,
                        message: "needs 32 MiB, 1 MiB free".into(),
                    })
                } else {
                    Ok(None)
                };
                (n.clone(), r)
            })
            .collect(),
        released: Vec::new(),
    };
    let (_, done) = run(&obs, &Memo::default(), refuse, &now(0));
    assert!(done.memo.sent.contains_key("node-1"));
    assert!(
        !done.memo.sent.contains_key("node-2"),
        "sent again next run"
    );
    assert_eq!(done.status.nodes.failed, 1);
    assert_eq!(done.status.failed_nodes[0].node, "node-2");
    assert_eq!(
        done.status.failed_nodes[0].reason,
        Reason::InsufficientStorage.as_str()
    );
    let again = decide(&obs, &done.memo);
    assert!(again.send.contains(&"node-2".to_owned()));
}

#[test]
fn a_node_that_failed_the_revision_is_not_its_fetcher() {
    let first = first_run(&["node-1", "node-2"]);
    let obs = first.reported(&[
        ("node-1", DatasetState::Transferring),
        ("node-2", DatasetState::Failed),
    ]);
    let (decision, done) = run(&obs, &first.memo, accepted, &now(5));
    assert!(done.memo.failed_fetchers.contains("node-2"));
    let plan = decision.plan.unwrap();
    assert!(plan.fetchers.iter().all(|f| f.node_name != "node-2"));
    // Remembered even once it looks healthy again.
    let fresh_again = fresh_nodes(&["node-1", "node-2"]);
    let again = decide(&fresh_again, &done.memo);
    let plan = again.plan.unwrap();
    assert!(plan.fetchers.iter().all(|f| f.node_name != "node-2"));
}

#[test]
fn a_node_that_joins_gets_its_assignment_and_the_others_are_not_sent_again() {
    let first = first_run(&["node-1", "node-2"]);
    let mut obs = first.reported(&[
        ("node-1", DatasetState::Transferring),
        ("node-2", DatasetState::Transferring),
    ]);
    obs.nodes.insert("node-3".into(), fresh("node-3"));
    let (decision, done) = run(&obs, &first.memo, accepted, &now(5));
    let new_plan = decision.plan.as_ref().unwrap();
    if new_plan.generation == first.plan.generation {
        assert_eq!(decision.send, ["node-3"]);
    } else {
        // A new plan (the joiner is a peer of the others): all are told.
        assert_eq!(decision.send, ["node-1", "node-2", "node-3"]);
    }
    // The fetchers keep their ranges: nothing fetched twice.
    for f in &first.plan.fetchers {
        assert!(new_plan.fetchers.iter().any(|g| g == f), "{f:?} kept");
    }
    assert_eq!(done.status.nodes.desired, 3);
    assert!(done.memo.assigned.contains("node-3"));
}

#[test]
fn a_deselected_node_is_released_and_unlabelled() {
    let first = first_run(&["node-1", "node-2"]);
    // node-2 no longer matches the selector: it is among the others now,
    // still labelled.
    let mut obs = first.reported(&[("node-1", DatasetState::Ready)]);
    obs.others = vec![pod("node-2", true, true), pod("node-9", true, true)];
    obs.labelled = vec!["node-1".into(), "node-2".into()];
    let mut memo = first.memo.clone();
    memo.swept = true;
    let decision = decide(&obs, &memo);
    assert_eq!(released(&decision), ["node-2"], "node-9 was never given it");
    let outcomes = release_answered("node-2", Ok(true));
    let done = conclude(&obs, &memo, decision, outcomes, &now(5));
    assert_eq!(done.unlabel, ["node-2"]);
    assert!(!done.memo.assigned.contains("node-2"));
    assert!(!done.memo.sent.contains_key("node-2"));
    assert_eq!(done.events.len(), 1);
    assert_eq!(done.events[0].reason, Reason::Removed);
    assert!(done.events[0].note.contains("node-2"));
    assert_eq!(done.status.nodes.desired, 1);

    // An agent that cannot be reached is asked again next run.
    let decision = decide(&obs, &memo);
    let outcomes = release_answered("node-2", Err("no answer".into()));
    let done = conclude(&obs, &memo, decision, outcomes, &now(5));
    assert!(done.memo.assigned.contains("node-2"));
    assert!(done.events.is_empty());
}

#[test]
fn after_a_restart_every_other_agent_is_released_once() {
    let mut obs = fresh_nodes(&["node-1"]);
    obs.others = vec![pod("node-8", true, true), pod("node-9", false, true)];
    let memo = Memo::default();
    let decision = decide(&obs, &memo);
    assert_eq!(released(&decision), ["node-8"], "ready agents only");
    let done = conclude(
        &obs,
        &memo,
        decision,
        release_answered("node-8", Ok(false)),
        &now(0),
    );
    assert!(done.memo.swept);
    assert!(decide(&obs, &done.memo).release.is_empty());
}

/// The nodes whose agents `decision` releases.
fn released(decision: &Decision) -> Vec<&str> {
    decision
        .release
        .iter()
        .map(|p| p.node_name.as_str())
        .collect()
}

/// The agent on `node` answered its release: whether it removed a copy,
/// or why it could not be asked.
fn release_answered(node: &str, answer: Result<bool, String>) -> Outcomes {
    Outcomes {
        sent: Vec::new(),
        released: vec![(node.into(), answer)],
    }
}

#[test]
fn a_restarted_operator_continues_the_plan_the_agents_report() {
    // What a first operator planned and sent...
    let first = first_run(&["node-1", "node-2", "node-3"]);
    // ...is what the agents report to a restarted one, which remembers
    // nothing.
    let obs = first.reported(&[
        ("node-1", DatasetState::Transferring),
        ("node-2", DatasetState::Ready),
        ("node-3", DatasetState::Transferring),
    ]);
    // Each agent answers the repeat with the progress it has.
    let as_before = |o: &Observed, d: &Decision| Outcomes {
        sent: d
            .send
            .iter()
            .map(|n| match &o.nodes[n].report {
                NodeReport::Progress(p) => (n.clone(), Ok(p.clone())),
                other => (n.clone(), Err(other.clone())),
            })
            .collect(),
        released: Vec::new(),
    };
    let (decision, done) = run(&obs, &Memo::default(), as_before, &now(60));
    let again = decision.plan.as_ref().unwrap();
    assert_eq!(
        again.fetchers, first.plan.fetchers,
        "the same fetchers and ranges"
    );
    // What was sent before the restart is unknown: sent once more (the
    // agents take the same plan as a no-op), and a Ready node stays Ready.
    assert_eq!(decision.send.len(), 3);
    assert_eq!(done.status.nodes.ready, 1);
    assert_eq!(done.label, ["node-2"]);
}

#[test]
fn no_ready_agent_means_no_plan_and_nothing_sent() {
    let obs = observed(vec![(
        "node-1",
        NodeSeen {
            agent: None,
            report: NodeReport::Unreachable("agent Pod agent-node-1 is not ready".into()),
        },
    )]);
    let (decision, done) = run(&obs, &Memo::default(), |_, _| Outcomes::default(), &now(0));
    assert!(decision.plan.is_err());
    assert!(decision.send.is_empty());
    assert!(done.memo.plan.is_none());
    assert_eq!(done.status.nodes.desired, 1);
    assert_eq!(done.requeue, SEEDING_REQUEUE);
}

#[test]
fn status_writes_are_skipped_when_unchanged_and_rate_limited() {
    let obs = fresh_nodes(&["node-1"]);
    let at = now(0);
    let (_, first) = run(&obs, &Memo::default(), accepted, &at);
    assert_eq!(first.write, StatusWrite::Now);
    // Stored: the same status again is not written.
    let mut obs2 = obs.clone();
    obs2.target.status = Some(first.status.clone());
    let plan = first.memo.plan.clone().unwrap();
    obs2.nodes.insert(
        "node-1".into(),
        following("node-1", &obs.revision(), &plan, DatasetState::Transferring),
    );
    let (_, same) = run(&obs2, &first.memo, accepted, &at);
    assert_eq!(same.write, StatusWrite::Skip);
    // A change right after a write waits for the interval, and the
    // reconcile runs again when it is due.
    let mut memo = first.memo.clone();
    memo.last_status_write = Some(at.mono);
    obs2.nodes.insert(
        "node-1".into(),
        following("node-1", &obs.revision(), &plan, DatasetState::Ready),
    );
    let (_, limited) = run(&obs2, &memo, accepted, &at);
    let StatusWrite::Later(d) = limited.write else {
        panic!("rate limited: {:?}", limited.write);
    };
    assert!(d <= status::MIN_WRITE_INTERVAL && !d.is_zero());
    assert_eq!(limited.requeue, d);
}

#[test]
fn a_problem_is_the_status() {
    let target = observed(Vec::new()).target;
    let problem = DatasetProblem {
        reason: Reason::SourceUnavailable,
        message: "Secret ml/creds (spec.source.secretRef) does not exist".into(),
    };
    let (status, write) = problem_status(&target, "all nodes", &problem, None, &now(0));
    assert_eq!(write, StatusWrite::Now);
    let ready = condition(&status, status::READY);
    assert_eq!(ready.status, "False");
    assert_eq!(ready.reason, Reason::SourceUnavailable.as_str());
    assert!(ready.message.contains("ml/creds"));
}

#[test]
fn deletion_asks_every_agent_and_waits_only_for_running_ones_it_cannot_reach() {
    let agents: BTreeMap<String, AgentPod> = [
        pod("node-1", true, true),
        pod("node-2", false, true),
        pod("node-3", false, false),
    ]
    .into_iter()
    .map(|p| (p.node_name.clone(), p))
    .collect();
    let plan = deletion(&agents, &["node-1".to_owned()]);
    assert_eq!(plan.ask.len(), 3, "Ready or not");
    assert_eq!(plan.unlabel, ["node-1"]);

    let target = observed(Vec::new()).target;
    let all_answered: Vec<_> = plan.ask.iter().map(|p| (p.clone(), Ok(()))).collect();
    assert!(matches!(
        after_deletion(&target, &all_answered, None, &now(0)),
        Deleted::Done
    ));

    let answers = vec![
        (agents["node-1"].clone(), Ok(())),
        (
            agents["node-2"].clone(),
            Err("no answer within 15s".to_owned()),
        ),
        (
            agents["node-3"].clone(),
            Err("agent Pod agent-node-3 has no address".to_owned()),
        ),
    ];
    let Deleted::Blocked {
        blocked,
        status,
        write,
    } = after_deletion(&target, &answers, None, &now(0))
    else {
        panic!("node-2 runs and did not answer");
    };
    assert_eq!(blocked.keys().collect::<Vec<_>>(), ["node-2"]);
    assert_eq!(write, StatusWrite::Now);
    let ready = condition(&status, status::READY);
    assert_eq!(ready.reason, Reason::Terminating.as_str());
    assert!(
        status
            .conditions
            .iter()
            .any(|c| c.reason == Reason::DeletionBlocked.as_str() && c.message.contains("node-2")),
        "{status:?}"
    );
}
