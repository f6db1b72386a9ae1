//! Setup, drive and measurement of one scale run: the stand-in, the fake
//! fleet, the origin and the operator, the Datasets created at once, then
//! the watches and samples until every Dataset is Ready and settled.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DynamicObject, PostParams};
use swarmseed_harness::apiserver::ApiServer;
use swarmseed_harness::kube_objects::{self, AGENT_NAMESPACE, AgentPorts};
use swarmseed_harness::origin::http::HttpOrigin;
use swarmseed_harness::process::{ChildSpec, ManagedChild};
use swarmseed_harness::seeding::{DATASET_CRD, dataset_resource, kubectl};

use super::api_proxy::ApiProxy;
use super::fake_agent::Sim;
use super::fleet::{Fleet, agent_address};
use super::report::{DatasetFigures, ScaleReport};
use super::stats::{max_in_window, median, min_gap};
use super::watch::{LabelTracks, Tracks, phases, probe_node_lists, watch_datasets, watch_labels};
use super::{
    NAMESPACE, NODE_LABEL, OPERATOR_ID, RSS_TARGET_BYTES, ScaleRunArgs, WRITES_PER_S_TARGET,
    dataset_name, lock, node_name,
};
use crate::metrics::{scrape, sum_prefix};
use crate::procfs::{Machine, ProcSample, USER_HZ, cpu_times};
use crate::report::human;

/// Samples the operator every 250 ms, keeping the highest VmHWM and the
/// last sample (a process that exited keeps what was seen).
fn sample_operator(pid: u32, peak: Arc<Mutex<ProcSample>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if let Some(s) = ProcSample::take(pid) {
                let mut p = lock(&peak);
                let hwm = p.hwm.max(s.hwm);
                *p = ProcSample { hwm, ..s };
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
}

fn free_local_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

fn random_token() -> anyhow::Result<String> {
    use std::io::Read as _;
    let mut b = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("reading /dev/urandom")?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn secs_between(from: Instant, to: Option<Instant>) -> Option<f64> {
    to.map(|t| {
        if t >= from {
            t.duration_since(from).as_secs_f64()
        } else {
            -from.duration_since(t).as_secs_f64()
        }
    })
}

/// One scale run (see the module documentation).
pub async fn run(args: ScaleRunArgs) -> anyhow::Result<ScaleReport> {
    args.validate()?;
    swarmseed_harness::init_crypto();
    let started = Instant::now();
    let deadline = started + args.timeout;
    let operator_bin = match &args.operator_binary {
        Some(p) => p.clone(),
        None => {
            swarmseed_harness::cluster::find_e2e_binary(None)?.with_file_name("swarmseed-operator")
        }
    };
    if !operator_bin.is_file() {
        bail!(
            "{} is missing: build it first (cargo build --release --locked --bins)",
            operator_bin.display()
        );
    }
    // A temporary work directory lives until the run returns.
    let mut _temp = None;
    let work: PathBuf = match &args.work_dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            d.clone()
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("swarmseed-scale-")
                .tempdir()
                .context("creating a work directory")?;
            let p = t.path().to_path_buf();
            _temp = Some(t);
            p
        }
    };

    eprintln!(
        "bench-scale: {} fake agents, {} Datasets; starting the API stand-in...",
        args.agents, args.datasets
    );
    let kubeconfig = work.join("kubeconfig");
    let api = ApiServer::start("127.0.0.1:0".parse()?, &kubeconfig, false).await?;
    let client = api.client();
    let out = kubectl(&kubeconfig, &["apply", "-f", "-"], DATASET_CRD).await?;
    if !out.status.success() {
        bail!(
            "kubectl apply of the CRD: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let owner = kube_objects::register_agent_daemonset(&client).await?;
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": NAMESPACE },
    }))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .context("creating the Datasets' namespace")?;

    let token = random_token()?;
    let token_file = work.join("control-token");
    std::fs::write(&token_file, &token).context("writing the control token")?;
    let sim = Sim {
        seed_time: args.seed_time,
        jitter: args.jitter,
    };
    let fleet = Fleet::start(args.agents, &token, sim).await?;
    fleet.check_auth(&token).await?;
    eprintln!(
        "bench-scale: {} fake agents on 127.214.x.y:{} (bearer token checked); registering Nodes and agent Pods...",
        args.agents, fleet.port
    );
    let labels = BTreeMap::from([(NODE_LABEL.0.to_owned(), NODE_LABEL.1.to_owned())]);
    let ports = AgentPorts {
        control: fleet.port,
        ..AgentPorts::default()
    };
    futures::stream::iter(0..args.agents)
        .map(|i| {
            let (client, labels, owner) = (client.clone(), &labels, owner.as_deref());
            async move {
                let (node, ip) = (node_name(i), agent_address(i));
                kube_objects::register_node(&client, &node, labels, ip).await?;
                kube_objects::register_agent_pod(&client, &node, ip, ports, owner).await?;
                kube_objects::set_agent_pod_ready(&client, &node, ip, true, 0).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(16)
        .try_collect::<()>()
        .await
        .context("registering Nodes and agent Pods")?;

    // The origin: one directory of sparse files per Dataset.
    let origin_root = work.join("origin");
    let file_size = args.dataset_size / args.files as u64;
    for d in 0..args.datasets {
        let dir = origin_root.join(dataset_name(d));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for f in 0..args.files {
            let p = dir.join(format!("model-{f:05}-of-{:05}.safetensors", args.files));
            std::fs::File::create(&p)
                .and_then(|file| file.set_len(file_size))
                .with_context(|| format!("creating {}", p.display()))?;
        }
    }
    let origin = HttpOrigin::start(&origin_root, "127.0.0.1:0".parse()?).await?;

    let names: Vec<String> = (0..args.datasets).map(dataset_name).collect();
    let tracks: Tracks = Arc::default();
    let watch = watch_datasets(client.clone(), tracks.clone());
    let label_tracks: LabelTracks = Arc::default();
    let label_watch = watch_labels(client.clone(), &names, args.agents, label_tracks.clone());

    let api_proxy = ApiProxy::start(api.url()).await?;
    let operator_kubeconfig = work.join("operator.kubeconfig");
    api_proxy.write_kubeconfig(&operator_kubeconfig)?;
    let admin = SocketAddr::from(([127, 0, 0, 1], free_local_port()?));
    let log_path = work.join("operator.log");
    let spec = ChildSpec::new(OPERATOR_ID, &operator_bin)
        .arg("run")
        .arg("--control-token-file")
        .arg(&token_file)
        .arg("--control-port")
        .arg(fleet.port.to_string())
        .arg("--identity")
        .arg(OPERATOR_ID)
        .arg("--lease-namespace")
        .arg(AGENT_NAMESPACE)
        .arg("--agent-namespace")
        .arg(AGENT_NAMESPACE)
        .arg("--admin-listen")
        .arg(admin.to_string())
        .env("KUBECONFIG", &operator_kubeconfig)
        .env("POD_NAME", OPERATOR_ID)
        .env("RUST_LOG", "info")
        .log(&log_path);
    let mut operator = ManagedChild::spawn(&spec)?;
    let pid = operator.pid();
    let peak = Arc::new(Mutex::new(ProcSample::default()));
    let sampler = sample_operator(pid, peak.clone());
    let http = reqwest::Client::builder().no_proxy().build()?;
    let log_tail = |op: &ManagedChild| op.log_tail(4000);
    // The leader is ready once it holds the Lease.
    let ready_deadline = (Instant::now() + Duration::from_secs(60)).min(deadline);
    loop {
        let ok = http
            .get(format!("http://{admin}/readyz"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ok {
            break;
        }
        if !operator.is_running() {
            bail!("the operator exited at start:\n{}", log_tail(&operator));
        }
        if Instant::now() > ready_deadline {
            bail!(
                "the operator was not ready within 60 s:\n{}",
                log_tail(&operator)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The Datasets, all at once.
    let datasets: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), NAMESPACE, &dataset_resource());
    let objects = names
        .iter()
        .map(|name| {
            serde_json::from_value::<DynamicObject>(serde_json::json!({
                "apiVersion": "swarmseed.io/v1alpha1",
                "kind": "Dataset",
                "metadata": { "namespace": NAMESPACE, "name": name },
                "spec": {
                    "source": { "uri": format!("{}/{name}/", origin.url()) },
                    "nodeSelector": { NODE_LABEL.0: NODE_LABEL.1 },
                },
            }))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let cpu_before = lock(&peak).cpu_ticks;
    let harness_before = ProcSample::take("self").map_or(0, |s| s.cpu_ticks);
    let machine_before = cpu_times();
    let setup_s = started.elapsed().as_secs_f64();
    eprintln!(
        "bench-scale: set up in {setup_s:.1} s; operator pid {pid} ready; creating {} Datasets...",
        args.datasets
    );
    let pp = PostParams::default();
    let list_latencies: Arc<Mutex<Vec<f64>>> = Arc::default();
    let api_probe = probe_node_lists(client.clone(), list_latencies.clone());
    let t0 = Instant::now();
    futures::future::try_join_all(objects.iter().map(|o| datasets.create(&pp, o)))
        .await
        .context("creating the Datasets")?;

    // Until every Dataset is Ready.
    let mut last_report = Instant::now();
    let all_ready_at = loop {
        let ready = {
            let t = lock(&tracks);
            names
                .iter()
                .filter(|n| t.get(*n).is_some_and(|t| t.ready_at.is_some()))
                .count()
        };
        if ready == names.len() {
            break Some(Instant::now());
        }
        if !operator.is_running() {
            eprintln!("bench-scale: the operator exited:\n{}", log_tail(&operator));
            break None;
        }
        if Instant::now() > deadline {
            eprintln!(
                "bench-scale: timed out after {:?} with {ready}/{} Datasets Ready; operator log:\n{}",
                args.timeout,
                names.len(),
                log_tail(&operator)
            );
            break None;
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            last_report = Instant::now();
            let writes: usize = lock(&tracks).values().map(|t| t.writes.len()).sum();
            let p = *lock(&peak);
            eprintln!(
                "bench-scale: t={:>6.1}s  Datasets Ready {ready}/{}  agent×Dataset Ready {}/{}  status writes {writes}  operator RSS {} (peak {}), CPU {:.1} s",
                t0.elapsed().as_secs_f64(),
                names.len(),
                fleet.ready_pairs(),
                args.agents * args.datasets,
                human(p.rss),
                human(p.hwm),
                p.cpu_ticks.saturating_sub(cpu_before) as f64 / USER_HZ,
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let at_ready = ProcSample::take(pid).unwrap_or_else(|| *lock(&peak));
    let metrics_at_ready = scrape(&http, admin).await;
    let machine_after = cpu_times();
    api_probe.abort();
    let settle_start = Instant::now();
    if all_ready_at.is_some() {
        eprintln!(
            "bench-scale: every Dataset Ready after {:.1} s; watching {:?} more...",
            t0.elapsed().as_secs_f64(),
            args.settle
        );
        let until = (settle_start + args.settle).min(deadline);
        tokio::time::sleep(until.saturating_duration_since(Instant::now())).await;
    }
    let settle_s = settle_start.elapsed().as_secs_f64();
    let metrics = scrape(&http, admin).await;
    let end = ProcSample::take(pid).unwrap_or_else(|| *lock(&peak));
    sampler.abort();
    let peak_hwm = lock(&peak).hwm.max(end.hwm);
    // SIGTERM (the operator releases its Lease), SIGKILL after 5 s.
    operator.signal(nix::sys::signal::Signal::SIGTERM);
    let grace = Instant::now() + Duration::from_secs(5);
    while operator.is_running() && Instant::now() < grace {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    operator.kill();
    watch.abort();
    label_watch.abort();
    let harness_after = ProcSample::take("self").map_or(0, |s| s.cpu_ticks);

    // --- Figures. ---
    let tracks = lock(&tracks).clone();
    let label_tracks = lock(&label_tracks).clone();
    let list_latencies = lock(&list_latencies).clone();
    let status_requests = lock(&api_proxy.writes).clone();
    let status_changes_seen = tracks.values().map(|t| t.writes.len() as u64).sum();
    let mut intervals = Vec::new();
    let (mut discover_plan, mut rest) = (Vec::new(), Vec::new());
    let fleet_log = lock(&fleet.log.datasets).clone();
    let end_of_seed = all_ready_at.unwrap_or_else(Instant::now);
    let mut per_dataset = Vec::new();
    let mut all_window = 0u32;
    let mut gaps = Vec::new();
    for name in &names {
        let t = tracks.get(name).cloned().unwrap_or_default();
        let log = fleet_log
            .get(&format!("{NAMESPACE}/{name}"))
            .cloned()
            .unwrap_or_default();
        let until = t.ready_at.unwrap_or(end_of_seed);
        let requests: Vec<Instant> = status_requests
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, at)| *at)
            .collect();
        let seeding: Vec<f64> = requests
            .iter()
            .filter(|w| **w <= until)
            .map(|w| secs_between(t0, Some(*w)).unwrap_or(0.0))
            .collect();
        let all: Vec<f64> = requests
            .iter()
            .map(|w| secs_between(t0, Some(*w)).unwrap_or(0.0))
            .collect();
        let window = max_in_window(&all, 1.0);
        all_window = all_window.max(window);
        let gap = min_gap(&all);
        gaps.extend(gap);
        let ready_s = secs_between(t0, t.ready_at);
        let labelled_s = secs_between(t0, label_tracks.get(name).and_then(|l| l.complete));
        let rounds: Vec<f64> = log
            .rounds
            .iter()
            .filter(|r| **r <= until)
            .map(|r| secs_between(t0, Some(*r)).unwrap_or(0.0))
            .collect();
        let gaps_of_rounds: Vec<f64> = rounds.windows(2).map(|w| w[1] - w[0]).collect();
        intervals.extend(gaps_of_rounds.iter().copied());
        let (dp, r) = phases(&log.rounds, &log.apply_rounds, until);
        discover_plan.extend(dp);
        rest.extend(r);
        let last_agent_ready_s = secs_between(t0, log.last_ready);
        let span = secs_between(t0, Some(until)).unwrap_or(0.0).max(1e-3);
        per_dataset.push(DatasetFigures {
            name: name.clone(),
            ready_s,
            last_agent_ready_s,
            ready_after_last_agent_s: ready_s.zip(last_agent_ready_s).map(|(r, a)| r - a),
            labelled_s,
            labelled_after_last_agent_s: labelled_s.zip(last_agent_ready_s).map(|(l, a)| l - a),
            reconciles_until_ready: rounds.len() as u64,
            reconcile_interval_s: median(&gaps_of_rounds),
            reconcile_rounds_s: rounds
                .iter()
                .map(|r| (r * 1000.0).round() / 1000.0)
                .collect(),
            status_writes: seeding.len() as u64,
            max_writes_in_1s: window,
            min_write_gap_s: gap,
            writes_per_s: seeding.len() as f64 / span,
            writes_after_ready: (all.len() - seeding.len()) as u64,
        });
    }
    let latencies: Vec<f64> = per_dataset
        .iter()
        .filter_map(|d| d.ready_after_last_agent_s)
        .collect();
    let labelled_latencies: Vec<f64> = per_dataset
        .iter()
        .filter_map(|d| d.labelled_after_last_agent_s)
        .collect();
    let last_agent_ready = fleet_log.values().filter_map(|l| l.last_ready).max();
    let last_dataset_ready = tracks.values().filter_map(|t| t.ready_at).max();
    let datasets_ready = per_dataset.iter().filter(|d| d.ready_s.is_some()).count();
    let metric = |k: &str| metrics.get(k).copied();
    let operator_agent_calls = metrics
        .iter()
        .filter_map(|(k, v)| {
            let labels = k.strip_prefix("swarmseed_operator_agent_calls_total{")?;
            let get = |key: &str| {
                labels
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(&format!("{key}=\"")))
                    .map(|v| v.trim_end_matches('}').trim_end_matches('"').to_owned())
            };
            Some((format!("{}/{}", get("method")?, get("result")?), *v))
        })
        .collect();
    let seeding_writes: u64 = per_dataset.iter().map(|d| d.status_writes).sum();
    let status_writes_mean_per_s = if per_dataset.is_empty() {
        0.0
    } else {
        per_dataset.iter().map(|d| d.writes_per_s).sum::<f64>() / per_dataset.len() as f64
    };
    let chunk_size = tracks
        .values()
        .find_map(|t| t.status.as_ref()?.get("chunkSize")?.as_u64());
    let ticks = |a: u64, b: u64| b.saturating_sub(a) as f64 / USER_HZ;
    drop(origin);
    let assigned_pairs = fleet_log.values().map(|d| d.assigned).sum();
    // Only when every Dataset reached every agent.
    let all_assigned = (fleet_log.len() == args.datasets
        && fleet_log.values().all(|d| d.assigned >= args.agents as u64))
    .then(|| {
        fleet_log
            .values()
            .filter_map(|d| d.last_first_assigned)
            .max()
    })
    .flatten();
    let first_assigned = fleet_log.values().filter_map(|d| d.first_assigned).min();
    let report = ScaleReport {
        command: args.command(),
        agents: args.agents,
        datasets: args.datasets,
        seed_time_s: args.seed_time.as_secs_f64(),
        jitter: args.jitter,
        dataset_bytes: file_size * args.files as u64,
        dataset_files: args.files,
        chunk_size,
        all_ready: all_ready_at.is_some(),
        datasets_ready,
        wall_s: 0.0,
        setup_s,
        first_assignment_s: secs_between(t0, first_assigned),
        all_assigned_s: secs_between(t0, all_assigned),
        assigned_pairs,
        last_agent_ready_s: secs_between(t0, last_agent_ready),
        last_dataset_ready_s: secs_between(t0, last_dataset_ready),
        ready_after_last_agent_median_s: median(&latencies),
        ready_after_last_agent_max_s: latencies.iter().copied().max_by(f64::total_cmp),
        labelled_after_last_agent_median_s: median(&labelled_latencies),
        labelled_after_last_agent_max_s: labelled_latencies.iter().copied().max_by(f64::total_cmp),
        reconcile_interval_median_s: median(&intervals),
        all_ready_after_last_agent_s: last_dataset_ready
            .zip(last_agent_ready)
            .and_then(|(d, a)| secs_between(a, Some(d))),
        status_writes: seeding_writes,
        status_writes_max_per_s: all_window,
        status_writes_mean_per_s,
        status_write_min_gap_s: gaps.iter().copied().min_by(f64::total_cmp),
        status_writes_after_ready: per_dataset.iter().map(|d| d.writes_after_ready).sum(),
        status_changes_seen,
        operator_status_writes: metric("swarmseed_operator_status_writes_total"),
        operator_reconciles: sum_prefix(&metrics, "swarmseed_operator_reconciles_total"),
        // No series until the first error.
        operator_reconcile_errors: sum_prefix(
            &metrics,
            "swarmseed_operator_reconcile_errors_total",
        )
        .or_else(|| (!metrics.is_empty()).then_some(0)),
        operator_agent_calls,
        agent_apply_calls: fleet.log.apply.load(Ordering::Relaxed),
        agent_apply_changed: fleet.log.apply_changed.load(Ordering::Relaxed),
        agent_status_calls: fleet.log.status.load(Ordering::Relaxed),
        agent_remove_calls: fleet.log.remove.load(Ordering::Relaxed),
        agent_unauthenticated_calls: fleet.log.unauthenticated.load(Ordering::Relaxed),
        operator_peak_rss_bytes: peak_hwm,
        operator_rss_at_ready_bytes: at_ready.rss,
        operator_rss_final_bytes: end.rss,
        operator_threads: end.threads,
        operator_cpu_s: end.cpu_ticks as f64 / USER_HZ,
        operator_cpu_seed_s: ticks(cpu_before, at_ready.cpu_ticks),
        operator_cpu_settle_s: ticks(at_ready.cpu_ticks, end.cpu_ticks),
        operator_reconciles_settle: sum_prefix(&metrics, "swarmseed_operator_reconciles_total")
            .zip(sum_prefix(
                &metrics_at_ready,
                "swarmseed_operator_reconciles_total",
            ))
            .map(|(b, a)| b.saturating_sub(a)),
        operator_status_writes_settle: metric("swarmseed_operator_status_writes_total")
            .zip(
                metrics_at_ready
                    .get("swarmseed_operator_status_writes_total")
                    .copied(),
            )
            .map(|(b, a)| b.saturating_sub(a)),
        settle_s,
        harness_cpu_s: ticks(harness_before, harness_after),
        machine_cpu_busy: machine_before.zip(machine_after).map_or(0.0, |(b, a)| {
            a.busy.saturating_sub(b.busy) as f64 / a.total.saturating_sub(b.total).max(1) as f64
        }),
        api_list_nodes_median_s: median(&list_latencies),
        api_list_nodes_max_s: list_latencies.iter().copied().max_by(f64::total_cmp),
        reconcile_discover_plan_median_s: median(&discover_plan),
        reconcile_rest_median_s: median(&rest),
        rss_target_met: peak_hwm <= RSS_TARGET_BYTES,
        writes_target_met: all_window <= WRITES_PER_S_TARGET,
        per_dataset,
        machine: Machine::current(),
    };
    drop(fleet);
    api.shutdown().await;
    Ok(ScaleReport {
        wall_s: started.elapsed().as_secs_f64(),
        ..report
    })
}
