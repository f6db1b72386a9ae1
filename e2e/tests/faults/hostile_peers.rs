//! Rows: hostile clients of an agent's peer port (`e2e hostile-peer`, run
//! in another node's namespace from 64 addresses of its own) while a real
//! peer pulls a dataset from the attacked agent over a 200 Mbit/s link.
//!
//! - `hostile_peers_slow_handshake`: 1,000 silent, half-open and trickling
//!   connections. The agent stays under 150 MiB, the real peer's rate
//!   under attack is that without it (same run, same link), and 30 s after
//!   the attack the agent is back within 10 % of its idle memory.
//! - `hostile_peers_oversize_frames`: HELLOs declaring 1 MiB, their
//!   bodies following at 320 KB/s: each refused on its header, nothing of
//!   it allocated.
//! - `hostile_peers_connection_flood`: connections opened and closed as
//!   fast as they come back, next to 1,000 held ones: the real peer still
//!   gets in.
//!
//! Memory is the agent's VmRSS (`/proc/<pid>/status`). The agents run with
//! `--peer-cache-mib 0`: the chunks a transfer verified last are otherwise
//! kept in memory for 30 s after it published, which would be part of
//! "idle" here and leave it while the attack runs.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use swarmseed_e2e::hostile_peer::HostileReport;
use swarmseed_harness::agent_api::{self, AgentControl, Bearer};
use swarmseed_harness::cluster::RemoteHttpOrigin;
use swarmseed_harness::netns;
use swarmseed_harness::seeding::Binaries;
use swarmseed_harness::{Cluster, ClusterSpec, NetworkMode, Placement};
use swarmseed_proto::pb;

const MIB: u64 = 1 << 20;
const LINK_MBIT: u32 = 200;
/// The agent's default `--peer-handshake-timeout`.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// The acceptance bound on the attacked agent's memory.
const RSS_BOUND: u64 = 150 * MIB;
/// Addresses the attacker connects from (its own, on node-2's link).
const ATTACK_SOURCES: u8 = 64;

/// One row at a time: the machine's two cores are shared, and a rate
/// measured in one row must not be another row's load.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// node-0 holds a dataset (the victim), node-1 pulls it (the real peer),
/// node-2's namespace is where the attacker runs.
struct Victim {
    cluster: Cluster,
    _origin: RemoteHttpOrigin,
    assignment: pb::Assignment,
    bytes: u64,
    bearer: Bearer,
    sources: Vec<IpAddr>,
    _one_at_a_time: tokio::sync::MutexGuard<'static, ()>,
}

/// `None` (and a line saying why) where network namespaces cannot be made.
async fn victim(bytes: u64) -> Option<Victim> {
    if let Some(why) = netns::unavailable_reason() {
        eprintln!("skipped: the hostile peer rows need network namespaces ({why})");
        return None;
    }
    let one_at_a_time = ONE_AT_A_TIME.lock().await;
    swarmseed_harness::init_crypto();
    let bins = Binaries::beside_e2e().unwrap();
    let mut spec = ClusterSpec::new(3, &bins.agent);
    spec.e2e_binary = Some(bins.e2e.clone());
    spec.network = NetworkMode::Namespaces;
    spec.link_mbit = Some(LINK_MBIT);
    spec.agent_args = vec!["--peer-cache-mib".into(), "0".into()];
    let mut cluster = Cluster::start(spec).await.unwrap();

    let data = cluster.work_dir().join("origin-data");
    swarmseed_bench::peer::write_random(&data.join("weights.bin"), bytes, 18).unwrap();
    let origin = cluster.start_http_origin(&data, 8080).await.unwrap();
    let origin_pb = pb::Origin {
        uri: format!("{}/", origin.url()),
        allow_http: true,
        ..Default::default()
    };
    let files = swarmseed_origin::OriginClient::new(&origin_pb, Default::default())
        .unwrap()
        .list(&[], &[])
        .await
        .unwrap()
        .files;
    let chunk_size = swarmseed_proto::layout::default_chunk_size(bytes);
    let layout = swarmseed_proto::ChunkLayout::new(files, chunk_size).unwrap();

    let bearer = Bearer::new(cluster.control_token()).unwrap();
    let seeder = &cluster.nodes()[0];
    let mut control = agent_api::connect(seeder.control_addr(), &bearer, Duration::from_secs(5))
        .await
        .unwrap();
    let key = control
        .get_status(pb::GetStatusRequest::default())
        .await
        .unwrap()
        .into_inner()
        .public_key;
    let assignment = agent_api::one_seeder_assignment(
        pb::DatasetRef {
            namespace: "faults".into(),
            name: "weights".into(),
            uid: String::new(),
        },
        origin_pb,
        &layout,
        pb::Peer {
            node_name: seeder.name.clone(),
            address: seeder.peer_addr().to_string(),
        },
        key,
    );
    control.apply_assignment(assignment.clone()).await.unwrap();
    wait_verified(&mut control, true, Duration::from_secs(60)).await;
    // Chunks were written past the page cache: read them in, so that the
    // real peer's pulls with and without the attack serve alike.
    let published = seeder.root.join("datasets/faults/weights/weights.bin");
    std::io::copy(
        &mut std::fs::File::open(&published).unwrap(),
        &mut std::io::sink(),
    )
    .unwrap();

    // The attacker's own addresses, next to node-2's.
    let attacker = &cluster.nodes()[2];
    let [a, b, c, _] = attacker.address.octets();
    let sources: Vec<IpAddr> = (0..ATTACK_SOURCES)
        .map(|i| IpAddr::V4(Ipv4Addr::new(a, b, c, 128 + i)))
        .collect();
    let ns = attacker.netns.clone().unwrap();
    for ip in &sources {
        let out = cluster
            .command(Placement::Root, "ip")
            .unwrap()
            .args(["-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"])
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    Some(Victim {
        cluster,
        _origin: origin,
        assignment,
        bytes,
        bearer,
        sources,
        _one_at_a_time: one_at_a_time,
    })
}

/// Polls until the agent's only dataset has every chunk verified (and, if
/// `published`, is Ready).
async fn wait_verified(
    control: &mut AgentControl,
    published: bool,
    limit: Duration,
) -> pb::DatasetProgress {
    let started = Instant::now();
    loop {
        let st = control
            .get_status(pb::GetStatusRequest::default())
            .await
            .unwrap()
            .into_inner();
        if let Some(p) = st.datasets.into_iter().next() {
            assert_ne!(
                p.state,
                pb::DatasetState::Failed as i32,
                "the transfer failed: {:?}",
                p.error
            );
            let ready = p.state == pb::DatasetState::Ready as i32;
            if p.chunks_total > 0 && p.chunks_verified == p.chunks_total && (ready || !published) {
                return p;
            }
        }
        assert!(
            started.elapsed() < limit,
            "not every chunk verified after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Victim {
    fn agent_pid(&mut self) -> u32 {
        self.cluster.nodes_mut()[0].agent_pid().unwrap()
    }

    /// The real peer (node-1) pulls the dataset from node-0 afresh: how
    /// long until every chunk was verified. Checks it all came from node-0.
    async fn pull(&self) -> Duration {
        let peer = &self.cluster.nodes()[1];
        let mut control =
            agent_api::connect(peer.control_addr(), &self.bearer, Duration::from_secs(5))
                .await
                .unwrap();
        control
            .remove_dataset(pb::RemoveDatasetRequest {
                dataset: self.assignment.dataset.clone(),
            })
            .await
            .unwrap();
        let started = Instant::now();
        control
            .apply_assignment(self.assignment.clone())
            .await
            .unwrap();
        let p = wait_verified(&mut control, false, Duration::from_secs(60)).await;
        let took = started.elapsed();
        assert_eq!(
            (p.bytes_from_peers, p.bytes_from_origin),
            (self.bytes, 0),
            "the real peer did not get the dataset from the attacked agent"
        );
        took
    }

    /// Runs `e2e hostile-peer` in node-2's namespace against node-0's peer
    /// port, from the attacker's addresses: `connections` at once in
    /// `mode`, each reopened `reconnect_after` the agent closed it, for
    /// `duration`, `max_attempts` at most.
    fn attack(
        &self,
        mode: &str,
        connections: u32,
        duration: &str,
        reconnect_after: &str,
        max_attempts: u32,
    ) -> Attack {
        let (connections, max_attempts) = (connections.to_string(), max_attempts.to_string());
        let args = [
            "--mode",
            mode,
            "--connections",
            &connections,
            "--duration",
            duration,
            "--reconnect-after",
            reconnect_after,
            "--max-attempts",
            &max_attempts,
        ];
        let target = self.cluster.nodes()[0].peer_addr().to_string();
        let sources: Vec<String> = self.sources.iter().map(IpAddr::to_string).collect();
        let mut cmd = self
            .cluster
            .command(
                Placement::Node("node-2"),
                self.cluster.e2e_binary().unwrap(),
            )
            .unwrap();
        cmd.args([
            "hostile-peer",
            "--target",
            &target,
            "--sources",
            &sources.join(","),
        ])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
        Attack {
            child: cmd.spawn().unwrap(),
            started: Instant::now(),
        }
    }

    /// The agent on node-0 (its metrics endpoint), for a metric's value.
    async fn metric(&self, name: &str) -> f64 {
        let url = format!("{}/metrics", self.cluster.nodes()[0].admin_url());
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let response = client.get(url).send().await.unwrap();
        let text = response.text().await.unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0.0)
    }
}

struct Attack {
    child: tokio::process::Child,
    started: Instant,
}

impl Attack {
    /// Waits for the attacker to end by itself (bounded) and reads its
    /// report; when its attack ended.
    async fn report(self, within: Duration) -> (HostileReport, Instant) {
        let out = tokio::time::timeout(within, self.child.wait_with_output())
            .await
            .expect("the attacker ran past its duration")
            .unwrap();
        assert!(
            out.status.success(),
            "the attacker failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: HostileReport = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("{e}: {}", String::from_utf8_lossy(&out.stdout));
        });
        let ended = self.started + Duration::from_millis(report.duration_ms);
        (report, ended)
    }
}

/// VmRSS of `pid`, bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap()
        * 1024
}

/// The middle of five samples over half a second.
async fn settled_rss(pid: u32) -> u64 {
    let mut samples = Vec::new();
    for _ in 0..5 {
        samples.push(rss(pid));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    samples.sort_unstable();
    samples[2]
}

/// Samples `pid`'s RSS every 50 ms until stopped; the highest.
struct PeakRss {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<u64>,
}

impl PeakRss {
    fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut peak = 0;
                while !stop.load(Ordering::Relaxed) {
                    peak = peak.max(rss(pid));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                peak
            }
        });
        Self { stop, task }
    }

    async fn peak(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB as f64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peers_slow_handshake() {
    let Some(mut v) = victim(64 * MIB).await else {
        return;
    };
    let pid = v.agent_pid();
    let without = v.pull().await;
    let idle = settled_rss(pid).await;

    let peak = PeakRss::start(pid);
    let attack = v.attack("slow", 1000, "12s", "1s", 40000);
    // Let the thousand connections build up first.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let under = v.pull().await;
    let pulled_at = Instant::now();
    let started = attack.started;
    let (report, ended) = attack.report(Duration::from_secs(30)).await;
    let peak = peak.peak().await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let after = settled_rss(pid).await;

    let ratio = without.as_secs_f64() / under.as_secs_f64();
    eprintln!(
        "hostile_peers_slow_handshake: idle {}, peak under attack {}, 30 s after {}; \
         real peer {:.1} MB/s without the attack, {:.1} MB/s during it (ratio {ratio:.2}); \
         attacker: {report:?}",
        mib(idle),
        mib(peak),
        mib(after),
        v.bytes as f64 / without.as_secs_f64() / 1e6,
        v.bytes as f64 / under.as_secs_f64() / 1e6,
    );
    assert!(
        pulled_at < ended,
        "the attack ended {:?} after it began, before the pull did",
        ended - started
    );
    assert!(
        report.attempts >= 1000 && report.connect_errors == 0,
        "the attack did not open a thousand connections: {report:?}"
    );
    assert!(peak < RSS_BOUND, "{} under attack", mib(peak));
    assert!(
        after <= idle + idle / 10,
        "{} 30 s after the attack, {} idle",
        mib(after),
        mib(idle)
    );
    assert!(
        ratio >= 0.9,
        "the real peer pulled at {ratio:.2} of its rate without the attack"
    );
    // No handshake outlived its bound, however slow the client.
    let bound = (HANDSHAKE_TIMEOUT + Duration::from_millis(1500)).as_millis() as u64;
    assert!(
        report.longest_held_ms <= bound && report.oldest_open_at_end_ms <= bound,
        "a connection was held past the handshake bound: {report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peers_oversize_frames() {
    let Some(mut v) = victim(16 * MIB).await else {
        return;
    };
    let pid = v.agent_pid();
    let idle = settled_rss(pid).await;
    let peak = PeakRss::start(pid);
    let attack = v.attack("oversize", 300, "8s", "200ms", 20000);
    tokio::time::sleep(Duration::from_secs(1)).await;
    v.pull().await;
    let (report, _) = attack.report(Duration::from_secs(30)).await;
    let peak = peak.peak().await;
    eprintln!(
        "hostile_peers_oversize_frames: idle {}, peak under attack {}; attacker: {report:?}",
        mib(idle),
        mib(peak)
    );
    let refused_on_header = report
        .errors
        .get("HELLO of N bytes (expected N to N)")
        .copied()
        .unwrap_or(0);
    assert!(
        report.greeted >= 300 && refused_on_header == report.greeted,
        "not every 1 MiB HELLO was refused with its reason: {report:?}"
    );
    // At its header, not after the body or the handshake timeout.
    assert!(
        report.longest_held_ms < 1000,
        "an oversized HELLO was kept {} ms",
        report.longest_held_ms
    );
    // 300 bodies of 1 MiB would be 300 MiB.
    assert!(
        peak < RSS_BOUND && peak <= idle + 16 * MIB,
        "{} under attack, {} idle",
        mib(peak),
        mib(idle)
    );
    assert!(
        v.metric("swarmseed_agent_peer_handshakes_failed_total{reason=\"malformed\"}")
            .await
            >= report.greeted as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peers_connection_flood() {
    let Some(mut v) = victim(16 * MIB).await else {
        return;
    };
    let pid = v.agent_pid();
    let peak = PeakRss::start(pid);
    // A thousand held, and two hundred opened and closed as fast as the
    // agent answers them.
    let held = v.attack("silent", 1000, "8s", "500ms", 20000);
    let flood = v.attack("flood", 200, "8s", "0s", 80000);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let took = v.pull().await;
    let pulled_at = Instant::now();
    let pending = v.metric("swarmseed_agent_peer_handshakes_pending").await;
    let (held, _) = held.report(Duration::from_secs(30)).await;
    let (flood, flood_ended) = flood.report(Duration::from_secs(30)).await;
    let peak = peak.peak().await;
    let evicted = v
        .metric("swarmseed_agent_peer_handshakes_failed_total{reason=\"evicted\"}")
        .await;
    eprintln!(
        "hostile_peers_connection_flood: peak {}, real peer {:.1} MB/s, pending {pending}, \
         evicted {evicted}; held: {held:?}; flood: {flood:?}",
        mib(peak),
        v.bytes as f64 / took.as_secs_f64() / 1e6
    );
    assert!(
        flood.attempts >= 1000 && pulled_at < flood_ended,
        "the flood ({} connections) was over before the pull",
        flood.attempts
    );
    assert!(
        (pending as usize) <= 256,
        "{pending} handshakes pending, past the default total"
    );
    assert!(evicted > 0.0, "the total was never reached");
    assert!(peak < RSS_BOUND, "{} under attack", mib(peak));
}
