//! One peer link against raw TCP on the same pair of nodes: a probe
//! dataset pulled by node-1 from node-0 only, then one `e2e netbench`
//! stream.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use swarmseed_harness::Placement;
use swarmseed_harness::origin::dataset::{DatasetSpec, generate_dataset};
use swarmseed_harness::seeding::SeedCluster;
use swarmseed_proto::pb;

use super::bound::mbit_to_bytes_per_s;
use super::run::AgentProbes;
use super::{NETBENCH_PORT, POLL, PROBE_NAME, PROBE_NAMESPACE, PROBE_SECONDS};
use crate::net::NetbenchResult;
use crate::report::MIB;

pub(super) struct PeerProbe {
    pub(super) bytes: u64,
    pub(super) bytes_per_s: f64,
}

/// node-1 pulls a probe dataset from node-0 only, which holds it already.
pub(super) async fn probe_peer_link(
    c: &mut SeedCluster,
    probes: &mut AgentProbes,
    chunk_size: u64,
    link_mbit: u32,
) -> anyhow::Result<PeerProbe> {
    let size = ((mbit_to_bytes_per_s(link_mbit) * PROBE_SECONDS) as u64)
        .clamp(16 * MIB, 512 * MIB)
        .max(chunk_size);
    let dir = c.cluster.work_dir().join("probe-origin");
    let spec = DatasetSpec {
        seed: 7,
        big_files: 1,
        big_file_size: size,
        small_files: 0,
        small_file_min: 0,
        small_file_max: 0,
        small_dirs: 1,
    };
    let gen_dir = dir.clone();
    tokio::task::spawn_blocking(move || generate_dataset(&gen_dir, &spec))
        .await
        .context("probe generation")??;
    let probe_origin = c.cluster.start_http_origin(&dir, 8081).await?;
    let origin = pb::Origin {
        uri: format!("{}/", probe_origin.url()),
        allow_http: true,
        ..Default::default()
    };
    let files = swarmseed_origin::OriginClient::new(&origin, Default::default())?
        .list(&[], &[])
        .await?
        .files;
    let layout = swarmseed_proto::ChunkLayout::new(files.clone(), chunk_size)?;
    let (seeder, leecher) = (
        c.cluster.nodes()[0].name.clone(),
        c.cluster.nodes()[1].name.clone(),
    );
    let seeder_key = probes
        .client(0)?
        .get_status(pb::GetStatusRequest::default())
        .await?
        .into_inner()
        .public_key;
    let dataset = pb::DatasetRef {
        namespace: PROBE_NAMESPACE.into(),
        name: PROBE_NAME.into(),
        uid: String::new(),
    };
    let assignment = pb::Assignment {
        dataset: Some(dataset.clone()),
        revision: layout.revision().to_hex(),
        chunk_size,
        files,
        origin: Some(origin),
        fetchers: vec![pb::OriginFetcher {
            node_name: seeder.clone(),
            public_key: seeder_key,
            ranges: vec![pb::ChunkRange {
                start: 0,
                end: layout.chunk_count(),
            }],
        }],
        // Agents skip themselves in the peer list.
        peers: vec![pb::Peer {
            node_name: seeder.clone(),
            address: c.cluster.nodes()[0].peer_addr().to_string(),
        }],
        peer_token: blake3::hash(c.cluster.control_token().as_bytes()).as_bytes()[..].to_vec(),
        plan_generation: 1,
        ..Default::default()
    };
    probes
        .client(0)?
        .apply_assignment(assignment.clone())
        .await
        .with_context(|| format!("assigning the probe to {seeder}"))?;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let p = probes.progress(PROBE_NAMESPACE, PROBE_NAME).await;
        match p.first().cloned().flatten() {
            Some(p) if p.state() == pb::DatasetState::Ready => break,
            Some(p) if p.state() == pb::DatasetState::Failed => {
                bail!("{seeder} failed to fetch the probe: {:?}", p.error)
            }
            _ if Instant::now() > deadline => bail!("{seeder} did not fetch the probe in 300 s"),
            _ => tokio::time::sleep(POLL).await,
        }
    }

    probes
        .client(1)?
        .apply_assignment(assignment)
        .await
        .with_context(|| format!("assigning the probe to {leecher}"))?;
    let assigned = Instant::now();
    let request = pb::GetStatusRequest {
        dataset: Some(dataset.clone()),
    };
    let mut first: Option<(Instant, u64)> = None;
    let last = loop {
        let st = probes
            .client(1)?
            .get_status(request.clone())
            .await?
            .into_inner();
        let now = Instant::now();
        let p = st
            .datasets
            .into_iter()
            .next()
            .with_context(|| format!("{leecher} lost the probe"))?;
        if p.state() == pb::DatasetState::Failed {
            bail!("{leecher} failed to pull the probe: {:?}", p.error);
        }
        if p.bytes_from_origin > 0 {
            bail!("{leecher} read the origin during the peer probe");
        }
        if first.is_none() && p.bytes_verified > 0 {
            first = Some((now, p.bytes_verified));
        }
        if p.chunks_total > 0 && p.chunks_verified == p.chunks_total {
            break (now, p.bytes_verified);
        }
        if assigned.elapsed() > Duration::from_secs(300) {
            bail!("{leecher} did not pull the probe in 300 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let bytes_per_s = match first {
        Some((t0, b0)) if last.0 > t0 && last.1 > b0 => {
            (last.1 - b0) as f64 / last.0.duration_since(t0).as_secs_f64()
        }
        _ => last.1 as f64 / last.0.duration_since(assigned).as_secs_f64().max(1e-3),
    };
    for i in [0, 1] {
        let _ = probes
            .client(i)?
            .remove_dataset(pb::RemoveDatasetRequest {
                dataset: Some(dataset.clone()),
            })
            .await;
    }
    drop(probe_origin);
    Ok(PeerProbe {
        bytes: size,
        bytes_per_s,
    })
}

/// One TCP stream node-0 → node-1 for 4 s (`e2e netbench`), steady rate.
pub(super) async fn raw_tcp(c: &SeedCluster) -> anyhow::Result<f64> {
    let nodes = c.cluster.nodes();
    let listen = SocketAddr::new(nodes[1].address.into(), NETBENCH_PORT);
    let e2e = &c.bins.e2e;
    let recv = c
        .cluster
        .command(Placement::Node(&nodes[1].name), e2e)?
        .args(["netbench", "recv", "--count", "1", "--listen"])
        .arg(listen.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("starting netbench recv")?;
    let send = c
        .cluster
        .command(Placement::Node(&nodes[0].name), e2e)?
        .args(["netbench", "send", "--duration", "4s", "--connect"])
        .arg(listen.to_string())
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), send)
        .await
        .context("netbench send took longer than 120 s")?
        .context("running netbench send")?;
    let _ = tokio::time::timeout(Duration::from_secs(10), recv.wait_with_output()).await;
    if !out.status.success() {
        bail!(
            "netbench send failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let r: NetbenchResult = serde_json::from_str(stdout.trim().lines().last().unwrap_or(""))
        .with_context(|| format!("netbench output {stdout:?}"))?;
    Ok(r.steady_mbit_per_s * 1e6 / 8.0)
}
