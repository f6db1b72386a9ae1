//! `e2e peer-bench`: how close one agent pulling from one peer over
//! loopback gets to raw TCP on the same machine, in the same run.
//!
//! 1. Raw TCP: one stream on 127.0.0.1, a sender writing 1 MiB buffers and a
//!    receiver discarding them.
//! 2. A seeder agent reads the dataset from a loopback HTTP origin until it
//!    is published.
//! 3. A leecher agent is assigned the same revision with the seeder as its
//!    only peer and origin fetcher: it pulls every chunk from the seeder
//!    (blake3 verification on, written into staging), then flushes and
//!    publishes. The transfer and the flush are timed separately.
//! 4. Peak RSS of both agents (VmHWM).
//!
//! Before 3 it times the same path without the agent: the dataset's bytes
//! sent as a seeder sends them and only received ([`receive_only`]), then
//! the least any receiver that verifies and stores must do, without the
//! agent's protocol, runtime or bookkeeping ([`bare_receiver`]).

mod agent;
mod baselines;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use swarmseed_harness::agent_api;
use swarmseed_harness::origin::http::HttpOrigin;
use swarmseed_harness::size::parse_size;
use swarmseed_proto::pb;

use agent::BenchAgent;
use baselines::{BARE_WORKERS, bare_receiver, evict, raw_tcp, receive_only};

pub use baselines::write_random;

#[derive(Debug, clap::Args)]
pub struct PeerBenchArgs {
    /// Dataset size (one file), e.g. 2GiB.
    #[arg(long, env = "PEER_BENCH_SIZE", default_value = "2GiB", value_parser = parse_size)]
    pub size: u64,
    /// Chunk size (power of two); default: the operator's default for the size.
    #[arg(long, env = "PEER_BENCH_CHUNK_SIZE", value_parser = parse_size)]
    pub chunk_size: Option<u64>,
    /// The agent binary (default: swarmseed-agent next to this binary).
    #[arg(long, env = "SWARMSEED_AGENT_BIN")]
    pub agent_binary: Option<PathBuf>,
    /// Scratch directory (default: a temporary directory, removed after).
    #[arg(long, env = "PEER_BENCH_WORK_DIR")]
    pub work_dir: Option<PathBuf>,
    /// Print one JSON object as the last line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct PeerBenchReport {
    pub dataset_bytes: u64,
    pub chunk_size: u64,
    pub raw_tcp_bytes_per_s: f64,
    /// The dataset's bytes sent as a seeding agent sends them (`sendfile`)
    /// over one loopback stream, received and dropped, same run.
    pub receive_only_bytes_per_s: f64,
    /// The bare receiver: as `receive_only`, then blake3 per chunk and
    /// written as the agent writes (`O_DIRECT`), no protocol, same run.
    pub bare_receiver_bytes_per_s: f64,
    pub peer_transfer_bytes_per_s: f64,
    pub ratio: f64,
    pub transfer_s: f64,
    pub flush_s: f64,
    pub leecher_max_rss_bytes: u64,
    pub seeder_max_rss_bytes: u64,
}

const TOKEN: &str = "peer-bench-control-token";

pub async fn run(args: PeerBenchArgs) -> anyhow::Result<PeerBenchReport> {
    let tmp;
    let work = match &args.work_dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = tempfile::Builder::new().prefix("peer-bench-").tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let agent_bin = match &args.agent_binary {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .map(|d| d.join("swarmseed-agent"))
            .context("locating swarmseed-agent")?,
    };
    if !agent_bin.is_file() {
        bail!(
            "{} not found: build it with `cargo build --release -p agent`",
            agent_bin.display()
        );
    }
    let chunk_size = args
        .chunk_size
        .unwrap_or_else(|| swarmseed_proto::layout::default_chunk_size(args.size));

    eprintln!("generating {} MiB ...", args.size >> 20);
    let src = work.join("origin");
    write_random(&src.join("weights.bin"), args.size, 42)?;

    eprintln!("raw TCP on loopback ...");
    let raw = raw_tcp(args.size)?;

    let origin = HttpOrigin::start(&src, "127.0.0.1:0".parse()?).await?;
    let origin_pb = pb::Origin {
        uri: format!("{}/", origin.url()),
        allow_http: true,
        ..Default::default()
    };
    let files = swarmseed_origin::OriginClient::new(&origin_pb, Default::default())?
        .list(&[], &[])
        .await?
        .files;
    let layout = swarmseed_proto::ChunkLayout::new(files, chunk_size)?;

    let token_file = work.join("control-token");
    std::fs::write(&token_file, TOKEN)?;
    let mut seeder = BenchAgent::spawn(&agent_bin, &work, "seeder", &token_file)?;
    let mut leecher = BenchAgent::spawn(&agent_bin, &work, "leecher", &token_file)?;
    let seeder_key = seeder.status().await?.public_key;

    let assignment = agent_api::one_seeder_assignment(
        pb::DatasetRef {
            namespace: "bench".into(),
            name: "weights".into(),
            uid: String::new(),
        },
        origin_pb,
        &layout,
        pb::Peer {
            node_name: "seeder".into(),
            address: seeder.peer_address(),
        },
        seeder_key,
    );
    eprintln!("seeding the seeder from the origin ...");
    seeder
        .client()
        .await?
        .apply_assignment(assignment.clone())
        .await?;
    seeder.wait_ready(Duration::from_secs(600)).await?;

    // The seeder wrote its copy past the page cache (`O_DIRECT`); read it
    // in, so that every leg below serves from memory. The origin's copy is
    // no longer needed. (On a VM whose host backs guest memory lazily,
    // first-touch pages are several times slower than reused ones: the
    // legs below run on pages given back just before.)
    evict(&src.join("weights.bin"))?;
    let published = work.join("seeder/datasets/bench/weights/weights.bin");
    std::io::copy(&mut std::fs::File::open(&published)?, &mut std::io::sink())?;
    // What the path costs without the agent: the seeder's published copy
    // (in the page cache) over one loopback stream, received and dropped,
    // then received, verified and stored by the least possible receiver.
    eprintln!("receive only ...");
    let receive = receive_only(&published)?;
    eprintln!("bare receiver ...");
    let bare = bare_receiver(&published, chunk_size, &work.join("bare.bin"))?;

    eprintln!("leecher pulling from the seeder ...");
    let started = Instant::now();
    leecher.client().await?.apply_assignment(assignment).await?;
    let mut client = leecher.client().await?;
    let mut verified_at = None;
    let ready_at = loop {
        let st = client
            .get_status(pb::GetStatusRequest::default())
            .await?
            .into_inner();
        let p = st
            .datasets
            .into_iter()
            .next()
            .context("leecher lost the dataset")?;
        if p.state == pb::DatasetState::Failed as i32 {
            bail!("leecher failed: {:?}", p.error);
        }
        if verified_at.is_none() && p.chunks_verified == p.chunks_total {
            verified_at = Some(started.elapsed());
        }
        if p.state == pb::DatasetState::Ready as i32 {
            break started.elapsed();
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("leecher not ready after 600 s");
        }
        // Often enough for 1 % resolution, rarely enough not to steal
        // the leecher's CPU.
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let transfer = verified_at.unwrap_or(ready_at);
    let report = PeerBenchReport {
        dataset_bytes: args.size,
        chunk_size,
        raw_tcp_bytes_per_s: raw,
        receive_only_bytes_per_s: receive,
        bare_receiver_bytes_per_s: bare,
        peer_transfer_bytes_per_s: args.size as f64 / transfer.as_secs_f64(),
        ratio: args.size as f64 / transfer.as_secs_f64() / raw,
        transfer_s: transfer.as_secs_f64(),
        flush_s: (ready_at - transfer).as_secs_f64(),
        leecher_max_rss_bytes: leecher.max_rss(),
        seeder_max_rss_bytes: seeder.max_rss(),
    };
    seeder.child.kill();
    leecher.child.kill();
    Ok(report)
}

pub fn print(report: &PeerBenchReport, json: bool) -> anyhow::Result<()> {
    let mib = |b: f64| b / (1u64 << 20) as f64;
    println!(
        "dataset                {} MiB, chunk {} MiB",
        report.dataset_bytes >> 20,
        report.chunk_size >> 20
    );
    println!(
        "raw TCP (loopback)     {:.0} MiB/s",
        mib(report.raw_tcp_bytes_per_s)
    );
    println!(
        "peer → staging         {:.0} MiB/s  ({:.1} % of raw TCP, {:.2} s)",
        mib(report.peer_transfer_bytes_per_s),
        report.ratio * 100.0,
        report.transfer_s
    );
    let of_raw = |b: f64| b / report.raw_tcp_bytes_per_s * 100.0;
    println!(
        "receive only           {:.0} MiB/s  ({:.1} % of raw TCP; the dataset's bytes by sendfile, received and dropped)",
        mib(report.receive_only_bytes_per_s),
        of_raw(report.receive_only_bytes_per_s)
    );
    println!(
        "bare receiver          {:.0} MiB/s  ({:.1} % of raw TCP; the same, blake3 and O_DIRECT writes on {BARE_WORKERS} threads)",
        mib(report.bare_receiver_bytes_per_s),
        of_raw(report.bare_receiver_bytes_per_s)
    );
    println!(
        "agent / bare receiver  {:.1} %",
        report.peer_transfer_bytes_per_s / report.bare_receiver_bytes_per_s * 100.0
    );
    println!("final flush to disk    {:.2} s", report.flush_s);
    println!(
        "peak RSS               leecher {} MiB, seeder {} MiB",
        report.leecher_max_rss_bytes >> 20,
        report.seeder_max_rss_bytes >> 20
    );
    if json {
        println!("{}", serde_json::to_string(report)?);
    }
    Ok(())
}
