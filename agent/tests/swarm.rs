//! The data plane end to end: real agent processes on loopback, driven
//! through their gRPC API the way the operator drives them, pulling from a
//! real origin that counts what it serves.

#![allow(clippy::unwrap_used)]

mod swarm_support;

use std::time::Duration;

use swarm_support::*;
use swarmseed_origin::{OriginClient, OriginOptions};
use swarmseed_proto::{Reason, pb};

async fn list(origin: &pb::Origin) -> Vec<pb::FileEntry> {
    OriginClient::new(origin, OriginOptions::default())
        .unwrap()
        .list(&[], &[])
        .await
        .unwrap()
        .files
}

fn spawn_agents(base: &std::path::Path, n: usize) -> Vec<AgentProc> {
    (0..n)
        .map(|i| AgentProc::spawn(base, &format!("node-{i}"), &[]))
        .collect()
}

fn moved(progress: &[pb::DatasetProgress]) -> u64 {
    progress
        .iter()
        .map(|p| p.bytes_from_origin + p.bytes_from_peers)
        .sum()
}

/// Acceptance 1: 8 agents, 512 MiB (one 384 MiB file and 2,000 small
/// files), HTTP origin: every tree identical, origin egress ≤ 1.02×.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_agents_seed_512_mib_from_http_with_one_copy_of_origin_egress() {
    let tmp = workdir();
    let src = tmp.path().join("origin");
    let total = generate(&src, &[384 * MIB], 2000, 1);
    assert!(total >= 500 * MIB, "{total}");
    let expected = tree(&src);
    let http = HttpOrigin::start(&src).await;
    let origin = http_origin(&http.url);
    let files = list(&origin).await;
    assert_eq!(files.len(), 2001);

    let agents = spawn_agents(&tmp.path().join("nodes"), 8);
    let a = plan(&agents, 8, files, MIB, origin, 1).await;
    apply_all(&agents, &a).await;
    let progress = wait_ready(&agents, &a.revision, Duration::from_secs(300)).await;

    for agent in &agents {
        assert_same_tree(&expected, &agent.dataset_dir("ml", "weights"));
    }
    let ratio = http.served() as f64 / total as f64;
    println!(
        "origin served {} bytes for {total} ({ratio:.4}x)",
        http.served()
    );
    assert!(ratio <= 1.02, "origin served {ratio:.4}x the dataset");
    let digests: std::collections::HashSet<_> =
        progress.iter().map(|p| p.content_digest.clone()).collect();
    assert_eq!(
        digests.len(),
        1,
        "every node computed the same content digest"
    );
    assert_eq!(
        moved(&progress),
        8 * total,
        "every node received each byte once"
    );
}

/// Acceptance 2: the same from S3 (moto) with credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_agents_seed_512_mib_from_s3_with_credentials() {
    let tmp = workdir();
    let src = tmp.path().join("origin");
    let total = generate(&src, &[384 * MIB], 2000, 2);
    let expected = tree(&src);
    let s3 = S3Origin::start().await;
    s3.upload("datasets", &src).await;
    let origin = s3.origin("s3://datasets/");
    let files = list(&origin).await;
    assert_eq!(files.len(), 2001);
    let listed = s3.served();

    let agents = spawn_agents(&tmp.path().join("nodes"), 8);
    let a = plan(&agents, 8, files, MIB, origin, 1).await;
    apply_all(&agents, &a).await;
    wait_ready(&agents, &a.revision, Duration::from_secs(400)).await;
    for agent in &agents {
        assert_same_tree(&expected, &agent.dataset_dir("ml", "weights"));
    }
    // What moto sent beyond the listing, including HTTP headers.
    let ratio = (s3.served() - listed) as f64 / total as f64;
    println!(
        "S3 served {} bytes for {total} ({ratio:.4}x)",
        s3.served() - listed
    );
    assert!(ratio <= 1.02, "S3 served {ratio:.4}x the dataset");
}

/// Acceptance 3: kill -9 at about half progress; after a restart on the
/// same root the agent fetches only what it did not have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_seed_resumes_without_refetching_verified_chunks() {
    let tmp = workdir();
    let src = tmp.path().join("origin");
    let total = generate(&src, &[96 * MIB, 64 * MIB], 200, 3);
    let expected = tree(&src);
    let http = HttpOrigin::start(&src).await;
    let origin = pb::Origin {
        // Slow the origin so the victim is caught mid-way.
        ..http_origin(&http.url)
    };
    let files = list(&origin).await;
    let mut agents = spawn_agents(&tmp.path().join("nodes"), 4);
    let mut a = plan(&agents, 4, files, MIB, origin, 1).await;
    a.limits = Some(pb::Limits {
        origin_bytes_per_second: 40 * MIB,
        ..Default::default()
    });
    apply_all(&agents, &a).await;

    let victim = 3;
    let before = loop {
        let p = progress(&agents[victim]).await.unwrap();
        if p.chunks_verified * 2 >= p.chunks_total {
            break p;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    agents[victim].kill9();
    agents[victim].start();
    // Once recovery is done, what it holds beyond what this process
    // fetched is what survived the kill.
    let recovered = loop {
        if let Some(p) = progress(&agents[victim]).await
            && p.state != pb::DatasetState::Pending as i32
        {
            break p.bytes_verified - p.bytes_from_origin - p.bytes_from_peers;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        recovered >= before.bytes_verified,
        "recovered {recovered} of the {} verified before the kill",
        before.bytes_verified
    );
    let progress = wait_ready(&agents, &a.revision, Duration::from_secs(300)).await;
    for agent in &agents {
        assert_same_tree(&expected, &agent.dataset_dir("ml", "weights"));
    }
    let v = &progress[victim];
    let fetched = v.bytes_from_origin + v.bytes_from_peers;
    let remaining = total - recovered;
    // At most one chunk per request that was in flight when it died: the
    // request depth per peer (8 MiB / 1 MiB chunks) times its 3 peers.
    let allowance = 8 * 3 * MIB;
    println!(
        "victim: verified {} before the kill, {} recovered, fetched {fetched} after restart for {remaining} remaining",
        before.bytes_verified, recovered
    );
    assert!(
        fetched <= remaining + allowance,
        "fetched {fetched} > remaining {remaining} + {allowance}"
    );
}

/// Acceptance 4: a peer that serves corrupted bytes is dropped; nothing
/// corrupted is ever published; the others complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_serving_corrupted_bytes_is_dropped_and_nothing_bad_is_published() {
    let tmp = workdir();
    let src = tmp.path().join("origin");
    generate(&src, &[48 * MIB], 100, 4);
    let expected = tree(&src);
    let http = HttpOrigin::start(&src).await;
    let origin = http_origin(&http.url);
    let files = list(&origin).await;
    let base = tmp.path().join("nodes");
    let mut agents = spawn_agents(&base, 3);
    agents.push(AgentProc::spawn(
        &base,
        "node-bad",
        &[("SWARMSEED_TEST_FAULT_CORRUPT_SERVING", "true")],
    ));
    // The bad node is one of the origin fetchers: its chunks must still
    // reach everyone (from the origin, once it is dropped).
    let a = plan(&agents, 4, files, MIB, origin, 1).await;
    apply_all(&agents, &a).await;
    wait_ready(&agents, &a.revision, Duration::from_secs(300)).await;
    for agent in &agents[..3] {
        assert_same_tree(&expected, &agent.dataset_dir("ml", "weights"));
        let metrics = agent.metrics().await;
        assert!(
            metrics.contains("swarmseed_agent_peers_dropped_total{reason=\"bad_data\"} 1"),
            "{} did not drop the bad peer:\n{metrics}",
            agent.name
        );
    }
}

/// Acceptance 5: unsafe names are refused with an error naming the path;
/// nothing is created outside the root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_listed_paths_are_refused_and_nothing_is_written_outside_the_root() {
    let tmp = workdir();
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let agents = spawn_agents(&tmp.path().join("nodes"), 1);
    let agent = &agents[0];
    let mut client = agent.client().await;
    let entry = |p: &str| pb::FileEntry {
        path: p.into(),
        size: 10,
        etag: "e".into(),
        ..Default::default()
    };
    let assignment = |files: Vec<pb::FileEntry>, revision: String| pb::Assignment {
        dataset: Some(pb::DatasetRef {
            namespace: "ml".into(),
            name: "bad".into(),
            uid: String::new(),
        }),
        revision,
        chunk_size: MIB,
        files,
        origin: Some(http_origin("http://127.0.0.1:9/")),
        peer_token: vec![1; 32],
        ..Default::default()
    };
    for bad in [
        "/etc/passwd",
        "../outside/x",
        "a/../../x",
        "./a",
        "a/./b",
        "a//b",
        "a/",
        "",
        "a\0b",
        "a\\b",
        "..",
        // A name no filesystem holds (NAME_MAX is 255 bytes).
        &format!("d/{}", "n".repeat(256)),
    ] {
        let err = client
            .apply_assignment(assignment(vec![entry(bad)], "0".repeat(64)))
            .await
            .expect_err(bad);
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad:?}: {err}");
        assert!(
            err.message().contains(&format!("{bad:?}")),
            "{bad:?} not named in: {}",
            err.message()
        );
    }
    // A symlink planted on the disk where a listed directory would go.
    let files = vec![entry("d/f")];
    let layout = swarmseed_proto::ChunkLayout::new(files.clone(), MIB).unwrap();
    let staging = agent
        .root
        .join("staging/ml/bad")
        .join(layout.revision().short());
    std::fs::create_dir_all(&staging).unwrap();
    std::os::unix::fs::symlink(&outside, staging.join("d")).unwrap();
    let err = client
        .apply_assignment(assignment(files, layout.revision().to_hex()))
        .await
        .expect_err("symlink");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    assert!(err.message().contains("\"d/f\""), "{}", err.message());

    // Nothing was created outside the root.
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    let mut top: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(top, ["nodes", "outside"]);
}

/// Acceptance 6: the same assignment twice moves nothing; a revision with
/// 10 % of the chunks changed moves at most 12 % of the bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reapplying_moves_nothing_and_a_new_revision_moves_only_what_changed() {
    let tmp = workdir();
    let src = tmp.path().join("origin");
    let sizes = vec![4 * MIB; 40];
    let total = generate(&src, &sizes, 0, 6);
    let http = HttpOrigin::start(&src).await;
    let origin = http_origin(&http.url);
    let agents = spawn_agents(&tmp.path().join("nodes"), 4);
    let a = plan(&agents, 4, list(&origin).await, MIB, origin.clone(), 1).await;
    apply_all(&agents, &a).await;
    let first = wait_ready(&agents, &a.revision, Duration::from_secs(300)).await;
    let served = http.served();

    let again = apply_all(&agents, &a).await;
    assert!(
        again.iter().all(|r| !r.changed),
        "re-applying changed something"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let still = wait_ready(&agents, &a.revision, Duration::from_secs(10)).await;
    assert_eq!(moved(&still), moved(&first), "bytes moved on re-apply");
    assert_eq!(http.served(), served, "origin read on re-apply");

    // Rewrite 4 of the 40 files (10 % of the chunks).
    for i in [3, 17, 25, 38] {
        write_random(
            &src.join(format!("model-{i:05}.safetensors")),
            4 * MIB,
            1000 + i,
        );
    }
    let expected = tree(&src);
    let b = plan(&agents, 4, list(&origin).await, MIB, origin, 2).await;
    assert_ne!(a.revision, b.revision);
    apply_all(&agents, &b).await;
    let second = wait_ready(&agents, &b.revision, Duration::from_secs(300)).await;
    for agent in &agents {
        assert_same_tree(&expected, &agent.dataset_dir("ml", "weights"));
    }
    let moved_now = moved(&second);
    let origin_now = http.served() - served;
    println!("delta: moved {moved_now} bytes over 4 nodes, origin {origin_now}, dataset {total}");
    assert!(
        moved_now as f64 <= 0.12 * 4.0 * total as f64,
        "moved {moved_now}"
    );
    assert!(
        origin_now as f64 <= 0.12 * total as f64,
        "origin {origin_now}"
    );
}

/// A listing of tens of thousands of files makes an assignment larger than
/// gRPC's default message limit (4 MiB): agents take it up to the listing
/// bound the operator enforces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assignment_of_a_hundred_thousand_files_is_accepted() {
    let tmp = workdir();
    let agents = spawn_agents(&tmp.path().join("nodes"), 1);
    let files: Vec<pb::FileEntry> = (0..100_000)
        .map(|i| pb::FileEntry {
            path: format!("shard-{:03}/sample-{i:08}.json", i / 1000),
            size: 16,
            etag: format!("\"{:032x}\"", i),
            ..Default::default()
        })
        .collect();
    let a = plan(
        &agents,
        1,
        files,
        MIB,
        http_origin("http://127.0.0.1:9/"),
        1,
    )
    .await;
    let size = prost::Message::encoded_len(&a);
    assert!(size > 6 << 20, "{size} bytes");
    let applied = apply_all(&agents, &a).await;
    assert!(applied[0].changed);
    let progress = progress(&agents[0]).await.unwrap();
    assert_eq!(progress.revision, a.revision);
}

/// Applies `a` on `agent`, returning the refusal instead of panicking.
async fn try_apply(
    agent: &AgentProc,
    a: &pb::Assignment,
) -> Result<pb::ApplyAssignmentResponse, tonic::Status> {
    agent
        .client()
        .await
        .apply_assignment(a.clone())
        .await
        .map(tonic::Response::into_inner)
}

/// Polls `agent`'s progress until `done` holds; panics with the progress
/// and the agent's log after `timeout`.
async fn wait_progress(
    agent: &AgentProc,
    timeout: Duration,
    what: &str,
    done: impl Fn(&pb::DatasetProgress) -> bool,
) -> pb::DatasetProgress {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let p = progress(agent).await;
        if let Some(p) = p.as_ref().filter(|p| done(p)) {
            return p.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{}: not {what} after {timeout:?}: {p:#?}\n{}",
            agent.name,
            agent.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn failed(p: &pb::DatasetProgress) -> bool {
    p.state == pb::DatasetState::Failed as i32
}

/// Issue 18, defect 4: a fetcher that refused its assignment (its store
/// cannot lay the revision out, as when its disk is too small) or failed
/// it half-way serves nothing. The other nodes read its chunks from the
/// origin once it has been unreachable for the fallback delay (3 s here),
/// instead of waiting for it forever one chunk short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetchers_that_refused_or_failed_their_assignment_are_replaced_by_the_origin() {
    let tmp = workdir();
    let src = tmp.path().join("origin");
    generate(&src, &[8 * MIB; 6], 0, 41);
    let expected = tree(&src);
    let http = HttpOrigin::start(&src).await;
    let origin = http_origin(&http.url);
    let agents = spawn_agents(&tmp.path().join("nodes"), 4);
    // node-0, node-1 and node-2 fetch 16 chunks each (two files); node-3
    // fetches nothing.
    let a = plan(&agents, 3, list(&origin).await, MIB, origin, 1).await;
    let short = &a.revision[..16];
    // node-0 cannot make its staging tree: it refuses the assignment.
    let staging = |i: usize| agents[i].root.join("staging/ml/weights").join(short);
    std::fs::create_dir_all(staging(0).parent().unwrap()).unwrap();
    std::fs::write(staging(0), b"in the way").unwrap();
    // node-1 cannot write the second file of its range: it fails half-way.
    let blocked = staging(1).join("model-00003.safetensors");
    std::fs::create_dir_all(&blocked).unwrap();

    let started = std::time::Instant::now();
    let refused = try_apply(&agents[0], &a)
        .await
        .expect_err("node-0 accepted");
    assert!(
        refused.message().contains("File exists"),
        "{}",
        refused.message()
    );
    for agent in &agents[1..] {
        try_apply(agent, &a).await.unwrap();
    }
    // Nobody has the first chunks of node-0's range, nor the last ones of
    // node-1's, but the origin.
    wait_ready(&agents[2..], &a.revision, Duration::from_secs(60)).await;
    let took = started.elapsed();
    println!("the others were ready {took:?} after the assignment");
    assert!(took < Duration::from_secs(20), "took {took:?}");
    for agent in &agents[2..] {
        assert_same_tree(&expected, &agent.dataset_dir("ml", "weights"));
    }
    let p = wait_progress(&agents[1], Duration::from_secs(30), "failed", failed).await;
    let error = p.error.unwrap();
    assert_eq!(error.known_reason(), Some(Reason::StorageError));
    assert!(
        error.message.contains(&blocked.display().to_string()),
        "{}",
        error.message
    );
}

/// Unmounts a filesystem mounted for a test when dropped.
struct Mount(std::path::PathBuf);

impl Mount {
    /// A tmpfs of `bytes` at `dir`, or `None` where this process may not
    /// mount (not root).
    fn tmpfs(dir: &std::path::Path, bytes: u64) -> Option<Self> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Self(dir.to_owned()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

fn free_bytes(dir: &std::path::Path) -> u64 {
    let s = nix::sys::statvfs::statvfs(dir).unwrap();
    s.blocks_available() as u64 * s.fragment_size() as u64
}

/// Issue 18, defect 12: a node whose disk fills while it receives chunks
/// from its peers fails with InsufficientStorage, naming the path and the
/// bytes it could not write, instead of retrying its sessions silently
/// for ever; the others complete; what it verified stays, and a retry
/// once there is room again resumes from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_disk_fills_during_the_seed_fails_with_insufficient_storage_and_resumes() {
    let tmp = workdir();
    let src = tmp.path().join("origin");
    let total = generate(&src, &[8 * MIB; 6], 0, 42);
    let expected = tree(&src);
    let http = HttpOrigin::start(&src).await;
    let origin = http_origin(&http.url);
    let base = tmp.path().join("nodes");
    let Some(_disk) = Mount::tmpfs(&base.join("node-2"), 64 * MIB) else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let agents = spawn_agents(&base, 3);
    // node-2 only receives from its peers.
    let mut a = plan(&agents, 2, list(&origin).await, MIB, origin, 1).await;
    a.limits = Some(pb::Limits {
        origin_bytes_per_second: 12 * MIB,
        ..Default::default()
    });
    apply_all(&agents, &a).await;
    // Something else takes the disk: 4 MiB stay free for the 48.
    let ballast = agents[2].root.join("ballast");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&ballast).unwrap();
        let block = vec![0u8; MIB as usize];
        // The agent writes meanwhile: a full disk ends it too.
        while free_bytes(&agents[2].root) > 5 * MIB && f.write_all(&block).is_ok() {}
    }

    let p = wait_progress(&agents[2], Duration::from_secs(30), "failed", failed).await;
    let error = p.error.clone().unwrap();
    assert_eq!(
        error.known_reason(),
        Some(Reason::InsufficientStorage),
        "{error:?}"
    );
    // The chunk's file, or the chunk log if that filled the disk first.
    assert!(
        error
            .message
            .contains(&agents[2].root.display().to_string())
            && error.message.contains("No space left on device")
            && error.message.contains("writing"),
        "{}",
        error.message
    );
    let log = std::fs::read_to_string(tmp.path().join("nodes/node-2.log")).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("No space left on device")),
        "no warning in the log:\n{}",
        agents[2].log_tail()
    );
    wait_ready(&agents[..2], &a.revision, Duration::from_secs(60)).await;
    for agent in &agents[..2] {
        assert_same_tree(&expected, &agent.dataset_dir("ml", "weights"));
    }
    assert!(!agents[2].dataset_dir("ml", "weights").exists());

    // Room again; the operator sends the assignment again.
    std::fs::remove_file(&ballast).unwrap();
    a.plan_generation = 2;
    apply_all(&agents, &a).await;
    let done = wait_ready(&agents, &a.revision, Duration::from_secs(60)).await;
    assert_same_tree(&expected, &agents[2].dataset_dir("ml", "weights"));
    let retry = &done[2];
    let moved = retry.bytes_from_origin + retry.bytes_from_peers;
    println!(
        "verified {} bytes before the disk filled; the retry moved {moved} of {total}",
        p.bytes_verified
    );
    assert!(p.bytes_verified > 0);
    assert_eq!(retry.bytes_verified, total);
    assert!(
        moved <= total - p.bytes_verified,
        "the retry moved {moved} bytes, {} were verified before",
        p.bytes_verified
    );
}

/// Issue 18, defect 6: while the origin is down, every node that needs it
/// says so in its progress within 15 s (reason and last error), the seed
/// goes on where it stopped once the origin is back, and the error is
/// cleared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_outage_is_reported_in_progress_and_the_seed_resumes_when_it_ends() {
    let tmp = workdir();
    let src = tmp.path().join("origin");
    let total = generate(&src, &[8 * MIB; 8], 0, 43);
    let expected = tree(&src);
    let http = HttpOrigin::start(&src).await;
    let origin = http_origin(&http.url);
    let agents = spawn_agents(&tmp.path().join("nodes"), 2);
    let mut a = plan(&agents, 2, list(&origin).await, MIB, origin, 1).await;
    a.limits = Some(pb::Limits {
        origin_bytes_per_second: 4 * MIB,
        ..Default::default()
    });
    apply_all(&agents, &a).await;
    wait_progress(&agents[0], Duration::from_secs(30), "a quarter done", |p| {
        p.chunks_verified * 4 >= p.chunks_total
    })
    .await;
    http.set_down(true);
    let down = std::time::Instant::now();
    for agent in &agents {
        let p = wait_progress(agent, Duration::from_secs(15), "showing the outage", |p| {
            p.origin_error.is_some()
        })
        .await;
        let error = p.origin_error.unwrap();
        assert_eq!(
            error.known_reason(),
            Some(Reason::SourceUnavailable),
            "{error:?}"
        );
        assert!(error.message.contains("503"), "{}", error.message);
        assert!(p.origin_error_seconds >= 10, "{}", p.origin_error_seconds);
        assert_eq!(p.state, pb::DatasetState::Transferring as i32);
    }
    println!(
        "both agents reported the outage {:?} after it began",
        down.elapsed()
    );
    http.set_down(false);
    for agent in &agents {
        wait_progress(agent, Duration::from_secs(30), "clear of the outage", |p| {
            p.origin_error.is_none()
        })
        .await;
    }
    let done = wait_ready(&agents, &a.revision, Duration::from_secs(120)).await;
    for agent in &agents {
        assert_same_tree(&expected, &agent.dataset_dir("ml", "weights"));
        let metrics = agent.metrics().await;
        assert!(
            metrics.contains("swarmseed_agent_origin_outages_total 1"),
            "{metrics}"
        );
    }
    // Nothing started again from zero: each node got each byte once.
    assert_eq!(moved(&done), 2 * total);
    assert!(http.served() <= total + 2 * MIB, "{}", http.served());
}

/// Issue 18, defect 10: a seed cut short by SourceChanged (a file
/// rewritten at the origin after the listing) keeps what it verified: the
/// relisted revision reads from the origin only what changed, not the whole
/// dataset again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_that_failed_with_source_changed_hands_its_chunks_to_the_relisted_one() {
    let tmp = workdir();
    let src = tmp.path().join("origin");
    let total = generate(&src, &[4 * MIB; 8], 0, 44);
    let http = HttpOrigin::start(&src).await;
    let origin = http_origin(&http.url);
    let agents = spawn_agents(&tmp.path().join("nodes"), 3);
    let a = plan(&agents, 3, list(&origin).await, MIB, origin.clone(), 1).await;
    // Rewritten after the listing, before anyone read it: node-1's range
    // is chunks 10 to 20, this file 12 to 15.
    let changed = src.join("model-00003.safetensors");
    write_random(&changed, 4 * MIB, 4403);
    let expected = tree(&src);
    apply_all(&agents, &a).await;
    // node-1 fails at once; the others read their ranges, help with
    // node-1's, and fail when they fall back to the origin for the
    // changed file.
    let mut before = Vec::new();
    for agent in &agents {
        let p = wait_progress(agent, Duration::from_secs(30), "failed", failed).await;
        assert_eq!(
            p.error.as_ref().unwrap().known_reason(),
            Some(Reason::SourceChanged),
            "{p:?}"
        );
        before.push(p);
    }
    let served_first = http.served();

    // The operator lists again and sends the new revision.
    let b = plan(&agents, 3, list(&origin).await, MIB, origin, 2).await;
    assert_ne!(a.revision, b.revision);
    apply_all(&agents, &b).await;
    let done = wait_ready(&agents, &b.revision, Duration::from_secs(120)).await;
    for agent in &agents {
        assert_same_tree(&expected, &agent.dataset_dir("ml", "weights"));
    }
    let verified: Vec<u64> = before.iter().map(|p| p.bytes_verified).collect();
    let reused: Vec<u64> = done.iter().map(|p| p.bytes_reused).collect();
    let from_origin: Vec<u64> = done.iter().map(|p| p.bytes_from_origin).collect();
    println!(
        "origin served {} bytes for {total}, {served_first} before the relisting; verified then {verified:?}, reused {reused:?}, read from the origin after {from_origin:?}",
        http.served()
    );
    assert_eq!(reused, verified, "what was verified is kept");
    // The second revision reads the changed file, and at most a chunk
    // per fetcher that a peer held but had not announced yet.
    let second = http.served() - served_first;
    assert!(
        second <= 4 * MIB + 3 * MIB,
        "the relisted revision read {second} bytes from the origin"
    );
}

/// A plan change must not lose what peers announced before it. A node
/// whose plan did not name a fetcher yet refused the announcements that
/// fetcher signed, and never looked at them again once its plan named it:
/// with every chunk announced already, it waited for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announcements_refused_under_an_older_plan_count_once_it_names_their_signer() {
    let tmp = workdir();
    let src = tmp.path().join("origin");
    let total = generate(&src, &[6 * MIB], 30, 11);
    let expected = tree(&src);
    let http = HttpOrigin::start(&src).await;
    let origin = http_origin(&http.url);
    let files = list(&origin).await;
    let nodes = tmp.path().join("nodes");
    // No fallback to the origin during the test: node-1 can only get the
    // chunks from node-0.
    let agents = vec![
        AgentProc::spawn(&nodes, "node-0", &[]),
        AgentProc::spawn(&nodes, "node-1", &[("SWARMSEED_FALLBACK_AFTER", "10m")]),
    ];
    // Plan 2: node-0 reads everything. Node-1 still follows plan 1, whose
    // fetcher has since gone.
    let current = plan(&agents, 1, files, 256 * 1024, origin, 2).await;
    let mut stale = current.clone();
    stale.plan_generation = 1;
    stale.fetchers = vec![pb::OriginFetcher {
        node_name: "gone".into(),
        public_key: ed25519_dalek::SigningKey::from_bytes(&[9; 32])
            .verifying_key()
            .to_bytes()
            .to_vec(),
        ranges: current.fetchers[0].ranges.clone(),
    }];
    agents[1]
        .client()
        .await
        .apply_assignment(stale)
        .await
        .unwrap();
    agents[0]
        .client()
        .await
        .apply_assignment(current.clone())
        .await
        .unwrap();
    wait_ready(&agents[..1], &current.revision, Duration::from_secs(60)).await;
    // Every chunk was announced to node-1 while its plan refused the
    // signer; now the plan names it.
    agents[1]
        .client()
        .await
        .apply_assignment(current.clone())
        .await
        .unwrap();
    let progress = wait_ready(&agents[1..], &current.revision, Duration::from_secs(30)).await;
    assert_same_tree(&expected, &agents[1].dataset_dir("ml", "weights"));
    assert_eq!(
        progress[0].bytes_from_origin, 0,
        "node-1 read from peers only"
    );
    assert!(
        http.served() <= total + MIB,
        "{} for {total}",
        http.served()
    );
}
