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

fn failed(reason: Reason, message: &str) -> NodeReport {
    let mut p = pb::DatasetProgress {
        revision: REV.into(),
        ..Default::default()
    };
    p.set_state(DatasetState::Failed);
    p.error = Some(pb::ErrorInfo::new(reason, message));
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
        let NodeReport::Progress(Some(mut p)) = progress(DatasetState::Transferring, 1, 0) else {
            unreachable!()
        };
        p.origin_error = Some(pb::ErrorInfo::new(
            Reason::SourceUnavailable,
            "GET http://origin/w.bin: connection refused",
        ));
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
            failed(Reason::InsufficientStorage, "disk full"),
        ]),
        None,
        at(0),
    );
    assert_eq!(
        cond(&s, DEGRADED).reason,
        Reason::InsufficientStorage.as_str()
    );
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
    assert_eq!(cond(&s, READY).reason, Reason::Terminating.as_str());
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
    assert!(
        m.iter().any(|e| e.0 && e.1 == Reason::DeletionBlocked),
        "{m:?}"
    );
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
    assert_eq!(m[0].1.as_str(), cond(&ready, READY).reason);
    assert!(milestones(Some(&ready), &ready).is_empty(), "no repeat");
    let bad = run(
        &nodes(vec![failed(Reason::DigestMismatch, "content differs")]),
        Some(&ready),
        at(2),
    );
    let m = milestones(Some(&ready), &bad);
    assert_eq!(m.len(), 1, "{m:?}");
    assert_eq!((m[0].0, m[0].1), (true, Reason::DigestMismatch));
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
    assert_eq!(s.node_label, Some(label::key("ml", "llama")));
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
            Reason::DigestMismatch,
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
        reason: Reason::InsufficientStorage,
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
        reason: Reason::SourceUnavailable,
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
        ("gpu-d", failed(Reason::InsufficientStorage, "disk full")),
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
