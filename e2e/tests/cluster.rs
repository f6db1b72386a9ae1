//! The cluster launcher: nodes in namespaces with shaped links, the Node
//! and agent Pod objects in the API stand-in, fault helpers, and teardown
//! that leaves nothing behind. Agents are `e2e stub-agent` here (same
//! flags as the real agent).

// Test helpers unwrap like the tests themselves.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};
use swarmseed_bench::net::NetbenchResult;
use swarmseed_harness::kube_objects::{AGENT_NAMESPACE, agent_pod_name};
use swarmseed_harness::naming::{AddressMode, pid_alive};
use swarmseed_harness::netns::{list_links, list_netns};
use swarmseed_harness::process::ChildSpec;
use swarmseed_harness::{Cluster, ClusterSpec, NetworkMode, Placement};

const E2E: &str = env!("CARGO_BIN_EXE_e2e");

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn pod_ready(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.clone())
}

async fn agent_pods(client: &kube::Client) -> Vec<Pod> {
    Api::<Pod>::namespaced(client.clone(), AGENT_NAMESPACE)
        .list(&ListParams::default().labels(swarmseed_core::label::AGENT_SELECTOR))
        .await
        .unwrap()
        .items
}

/// Checks the Node and agent Pod objects against the cluster's nodes.
async fn assert_objects(cluster: &Cluster) {
    let client = cluster.client();
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap();
    let names: BTreeSet<String> = nodes
        .items
        .iter()
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    let expected: BTreeSet<String> = cluster.nodes().iter().map(|n| n.name.clone()).collect();
    assert_eq!(names, expected);
    for cn in cluster.nodes() {
        let node = nodes
            .items
            .iter()
            .find(|n| n.metadata.name.as_ref() == Some(&cn.name))
            .unwrap();
        let labels = node.metadata.labels.as_ref().unwrap();
        assert_eq!(labels["kubernetes.io/hostname"], cn.name);
        for (k, v) in &cn.labels {
            assert_eq!(&labels[k], v);
        }
        let status = node.status.as_ref().unwrap();
        let ip = status
            .addresses
            .iter()
            .flatten()
            .find(|a| a.type_ == "InternalIP")
            .unwrap();
        assert_eq!(ip.address, cn.address.to_string());
        let ready = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.status, "True");
    }
    let pods = agent_pods(&client).await;
    assert_eq!(pods.len(), cluster.nodes().len());
    for cn in cluster.nodes() {
        let pod = pods
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(agent_pod_name(&cn.name).as_str()))
            .unwrap_or_else(|| panic!("no agent pod for {}", cn.name));
        assert_eq!(
            pod.spec.as_ref().unwrap().node_name.as_deref(),
            Some(cn.name.as_str())
        );
        let status = pod.status.as_ref().unwrap();
        assert_eq!(
            status.pod_ip.as_deref(),
            Some(cn.address.to_string().as_str())
        );
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(pod_ready(pod).as_deref(), Some("True"));
    }
}

async fn run_with_timeout(
    mut cmd: tokio::process::Command,
    limit: Duration,
) -> std::process::Output {
    tokio::time::timeout(limit, cmd.output())
        .await
        .expect("command timed out")
        .expect("command failed to start")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_shaped_nodes_reach_the_configured_rate_and_leave_nothing_behind() {
    if !is_root() {
        eprintln!("SKIP: needs root for network namespaces (the loopback test covers the rest)");
        return;
    }
    let mut spec = ClusterSpec::with_stub_agents(4, E2E);
    spec.network = NetworkMode::Namespaces;
    spec.link_mbit = Some(100);
    spec.origin_link_mbit = Some(100);
    spec.nodes[0]
        .labels
        .insert("example.com/gpu".into(), "a100".into());
    let mut cluster = Cluster::start(spec).await.unwrap();
    assert_eq!(cluster.mode(), AddressMode::Namespaces);
    assert_objects(&cluster).await;

    // The kubeconfig works for kubectl.
    let mut kubectl = tokio::process::Command::new("kubectl");
    kubectl
        .arg("--kubeconfig")
        .arg(cluster.kubeconfig())
        .args(["get", "nodes", "-o", "name"])
        .kill_on_drop(true);
    let out = run_with_timeout(kubectl, Duration::from_secs(30)).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .collect::<Vec<_>>(),
        ["node/node-0", "node/node-1", "node/node-2", "node/node-3"]
    );

    // node-0 → node-1 over their shaped links.
    let target = cluster.node("node-1").unwrap().address;
    let listen = format!("{target}:5201");
    let recv_pid = cluster
        .spawn(
            Placement::Node("node-1"),
            ChildSpec::new("netbench-recv", E2E)
                .args(["netbench", "recv", "--listen", &listen, "--count", "1"]),
        )
        .unwrap();
    let mut send = cluster.command(Placement::Node("node-0"), E2E).unwrap();
    send.args(["netbench", "send", "--connect", &listen, "--duration", "4s"]);
    let out = run_with_timeout(send, Duration::from_secs(40)).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: NetbenchResult = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("node-0 -> node-1 at 100 Mbit/s: {r:?}");
    assert!(
        (90.0..=110.0).contains(&r.steady_mbit_per_s),
        "throughput {:.1} Mbit/s is not within 10% of 100",
        r.steady_mbit_per_s
    );

    // Origins run in the origin namespace and count what they serve.
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("hello.txt"), b"hello from the origin").unwrap();
    let http = cluster.start_http_origin(data.path(), 8080).await.unwrap();
    assert_eq!(
        http.url(),
        format!("http://{}:8080", cluster.origin_address())
    );
    let body = reqwest::get(format!("{}/hello.txt", http.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "hello from the origin");
    assert_eq!(http.stats().await.unwrap().bytes_served, 21);
    let s3 = cluster.start_s3_origin("datasets").await.unwrap();
    assert_eq!(
        s3.endpoint(),
        format!("http://{}:9000", cluster.origin_address())
    );
    let (files, bytes) = s3.upload_dir(data.path(), "v1").await.unwrap();
    assert_eq!((files, bytes), (1, 21));
    s3.reset_stats().await.unwrap();
    use object_store::ObjectStoreExt;
    let got = s3
        .store()
        .unwrap()
        .get_range(&"v1/hello.txt".into(), 6..10)
        .await
        .unwrap();
    assert_eq!(got.as_ref(), b"from");
    assert!(s3.stats().await.unwrap().bytes_served >= 4);

    // Everything it created goes away with it.
    let netns = cluster.netns_names();
    let links = cluster.link_names();
    let agents: Vec<u32> = cluster
        .nodes_mut()
        .iter_mut()
        .filter_map(|n| n.agent_pid())
        .collect();
    assert_eq!(agents.len(), 4, "every agent runs");
    // Includes the receiver, which exited after its one measurement and
    // must be reaped too.
    let mut pids = cluster.pids();
    assert!(pids.contains(&recv_pid));
    pids.push(http.pid());
    pids.extend(s3.pids());
    assert_eq!(netns.len(), 5, "4 nodes + origin: {netns:?}");
    assert_eq!(links.len(), 6, "bridge + 5 veths: {links:?}");
    let work = cluster.work_dir().to_path_buf();
    drop((http, s3));
    cluster.stop().await;
    let left_ns: Vec<_> = list_netns()
        .unwrap()
        .into_iter()
        .filter(|n| netns.contains(n))
        .collect();
    assert!(left_ns.is_empty(), "namespaces left: {left_ns:?}");
    let left_links: Vec<_> = list_links()
        .unwrap()
        .into_iter()
        .filter(|l| links.contains(l))
        .collect();
    assert!(left_links.is_empty(), "links left: {left_links:?}");
    let alive: Vec<_> = pids.iter().filter(|p| pid_alive(**p)).collect();
    assert!(alive.is_empty(), "processes left: {alive:?}");
    assert!(!work.exists(), "work dir left: {}", work.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_cluster_registers_agents_and_survives_agent_crashes() {
    let mut spec = ClusterSpec::with_stub_agents(2, E2E);
    spec.network = NetworkMode::Loopback;
    let mut cluster = Cluster::start(spec).await.unwrap();
    assert_eq!(cluster.mode(), AddressMode::Loopback);
    assert!(cluster.netns_names().is_empty());
    for n in cluster.nodes() {
        assert!(
            n.address.is_loopback() && n.address.octets()[1] == 213,
            "{}",
            n.address
        );
        assert!(n.root.is_dir());
        assert!(n.netns.is_none());
    }
    assert_objects(&cluster).await;
    let client = cluster.client();
    let pods = Api::<Pod>::namespaced(client.clone(), AGENT_NAMESPACE);
    let name = agent_pod_name("node-1");

    // A crash: the agent is gone and its Pod is not ready.
    let old_pid = cluster.nodes_mut()[1].agent_pid().unwrap();
    cluster.kill_agent("node-1").await.unwrap();
    assert!(!pid_alive(old_pid));
    assert_eq!(cluster.nodes_mut()[1].agent_pid(), None);
    assert_eq!(
        pod_ready(&pods.get(&name).await.unwrap()).as_deref(),
        Some("False")
    );
    let admin = cluster.node("node-1").unwrap().admin_addr();
    assert!(
        tokio::net::TcpStream::connect(admin).await.is_err(),
        "nothing answers on {admin} after the kill"
    );

    // A restart: a new process, ready again, one restart counted.
    cluster.restart_agent("node-1").await.unwrap();
    let new_pid = cluster.nodes_mut()[1].agent_pid().unwrap();
    assert_ne!(new_pid, old_pid);
    let pod = pods.get(&name).await.unwrap();
    assert_eq!(pod_ready(&pod).as_deref(), Some("True"));
    let restarts = pod.status.unwrap().container_statuses.unwrap()[0].restart_count;
    assert_eq!(restarts, 1);

    let pids = cluster.pids();
    drop(cluster);
    assert!(
        pids.iter().all(|p| !pid_alive(*p)),
        "processes left after drop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_sweeps_leftovers_of_dead_owners_only() {
    if !is_root() {
        eprintln!("SKIP: needs root for network namespaces");
        return;
    }
    // Leftovers "owned" by a pid that does not run, and a live owner's.
    let dead = (4_000_000..4_194_304).find(|p| !pid_alive(*p)).unwrap();
    let stale = swarmseed_harness::naming::ClusterNames::new(dead, 7);
    let live = swarmseed_harness::naming::ClusterNames::new(std::process::id(), 1295);
    let ip = |args: &[&str]| {
        swarmseed_harness::cmd::run("ip", args, swarmseed_harness::cmd::SHORT).unwrap()
    };
    ip(&["netns", "add", &stale.node_netns(0)]);
    ip(&["link", "add", &stale.bridge(), "type", "bridge"]);
    ip(&["link", "add", &live.bridge(), "type", "bridge"]);
    // Another test's cluster start may sweep concurrently, so check the
    // outcome rather than who removed what.
    swarmseed_harness::netns::sweep_stale();
    let still_links = list_links().unwrap();
    let still_ns = list_netns().unwrap();
    // Clean up the live one before asserting, so a failure leaves nothing.
    ip(&["link", "del", &live.bridge()]);
    assert!(!still_ns.contains(&stale.node_netns(0)));
    assert!(!still_links.contains(&stale.bridge()));
    assert!(
        still_links.contains(&live.bridge()),
        "a live owner's bridge survives"
    );
}

/// `e2e cluster` as an unprivileged user: no namespaces, loopback
/// addresses, the reason printed, and a clean exit on Ctrl-C.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unprivileged_cluster_falls_back_to_loopback_and_says_why() {
    use std::os::unix::fs::PermissionsExt;
    use tokio::io::{AsyncBufReadExt, BufReader};
    // The unprivileged user may not reach the build directory (a checkout
    // in a private directory): run a world-readable copy of the binary.
    let bin_dir = tempfile::Builder::new()
        .prefix("e2e-bin")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(bin_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = bin_dir.path().join("e2e");
    std::fs::copy(E2E, &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = bin.to_str().unwrap();
    let mut cmd = if is_root() {
        if !swarmseed_harness::cmd::on_path("setpriv") {
            eprintln!("SKIP: setpriv missing, cannot drop privileges");
            return;
        }
        let mut c = tokio::process::Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            bin,
        ]);
        c
    } else {
        tokio::process::Command::new(bin)
    };
    cmd.args([
        "cluster",
        "--nodes",
        "2",
        "--agent-binary",
        bin,
        "--agent-arg",
        "stub-agent",
    ])
    .env("TMPDIR", "/tmp")
    .env("HOME", "/tmp")
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let stderr = child.stderr.take().unwrap();
    let stderr_task = tokio::spawn(async move {
        let mut all = String::new();
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            all.push_str(&l);
            all.push('\n');
        }
        all
    });
    let mut out = Vec::new();
    let ready = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = stdout.next_line().await.unwrap() {
            let done = line.starts_with("READY");
            out.push(line);
            if done {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits within 30 s of Ctrl-C")
        .unwrap();
    let err = stderr_task.await.unwrap();
    assert!(ready, "not ready; stdout: {out:?}\nstderr: {err}");
    assert!(status.success(), "{status}; stderr: {err}");
    if is_root() {
        assert!(
            err.contains("without link shaping (not running as root)"),
            "{err}"
        );
    }
    let nodes: Vec<&String> = out.iter().filter(|l| l.starts_with("NODE ")).collect();
    assert_eq!(nodes.len(), 2, "{out:?}");
    assert!(
        nodes
            .iter()
            .all(|l| l.contains(" address=127.213.") && l.contains(" netns=-")),
        "{nodes:?}"
    );
    let work = out
        .iter()
        .find_map(|l| l.strip_prefix("WORK_DIR="))
        .unwrap();
    assert!(
        !std::path::Path::new(work).exists(),
        "work dir {work} left behind"
    );
}
