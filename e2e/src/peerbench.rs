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

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use swarmseed_proto::pb;

use crate::agent_api::{self, AgentControl, Bearer};
use crate::origin::http::HttpOrigin;
use crate::process::{ChildSpec, ManagedChild};

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

/// Parses `2GiB`, `512MiB`, `64KiB` or plain bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = [
        ("GiB", 1u64 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
        ("B", 1),
    ]
    .iter()
    .find_map(|(suffix, m)| s.strip_suffix(suffix).map(|n| (n, *m)))
    .unwrap_or((s, 1));
    num.trim()
        .parse::<u64>()
        .map(|n| n * mult)
        .map_err(|_| format!("{s:?} is not a size like 2GiB, 512MiB or 1048576"))
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

/// One TCP stream over loopback, `bytes` long: receiver-side rate.
fn raw_tcp(bytes: u64) -> anyhow::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let sender = std::thread::spawn(move || -> std::io::Result<()> {
        let mut s = TcpStream::connect(addr)?;
        let buf = vec![0x5au8; 1 << 20];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            s.write_all(&buf[..n])?;
            left -= n as u64;
        }
        Ok(())
    });
    let (mut r, _) = listener.accept()?;
    let rate = drain(&mut r, bytes)?;
    join(sender)?;
    Ok(rate)
}

/// Reads `bytes` from `r` into one 1 MiB buffer, dropping them: bytes per
/// second.
fn drain(r: &mut TcpStream, bytes: u64) -> anyhow::Result<f64> {
    let mut buf = vec![0u8; 1 << 20];
    let started = Instant::now();
    let mut got = 0u64;
    while got < bytes {
        let n = r.read(&mut buf)?;
        if n == 0 {
            bail!("stream ended after {got} of {bytes} bytes");
        }
        got += n as u64;
    }
    Ok(bytes as f64 / started.elapsed().as_secs_f64())
}

/// `path` (in the page cache) sent with `sendfile` over one loopback
/// stream, as a seeding agent sends. Returns the sender thread and the
/// accepted receiving end.
fn sendfile_stream(
    path: &Path,
) -> anyhow::Result<(std::thread::JoinHandle<std::io::Result<()>>, TcpStream, u64)> {
    let file = std::fs::File::open(path)?;
    let bytes = file.metadata()?.len();
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let sender = std::thread::spawn(move || -> std::io::Result<()> {
        let s = TcpStream::connect(addr)?;
        let mut offset: nix::libc::off_t = 0;
        while (offset as u64) < bytes {
            let count = (bytes - offset as u64).min(1 << 20) as usize;
            if nix::sys::sendfile::sendfile(&s, &file, Some(&mut offset), count)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(())
    });
    let (r, _) = listener.accept()?;
    Ok((sender, r, bytes))
}

fn join(sender: std::thread::JoinHandle<std::io::Result<()>>) -> anyhow::Result<()> {
    sender
        .join()
        .map_err(|_| anyhow::anyhow!("sender panicked"))??;
    Ok(())
}

/// The dataset's own bytes over one loopback stream, as a seeding agent
/// sends them (`sendfile` from the page cache), read into one 1 MiB buffer
/// and dropped: no hash, no store. Receiver-side bytes per second.
fn receive_only(path: &Path) -> anyhow::Result<f64> {
    let (sender, mut r, bytes) = sendfile_stream(path)?;
    let rate = drain(&mut r, bytes)?;
    join(sender)?;
    Ok(rate)
}

/// Threads that hash and store chunks in the bare receiver: one per core
/// of the machines the bench runs on.
const BARE_WORKERS: usize = 2;

/// The least any receiver that verifies and stores must do, on this
/// machine, stored as the agent stores: `path` sent as by
/// [`sendfile_stream`]; one thread reads each chunk into a block-aligned
/// buffer and hands it to [`BARE_WORKERS`] threads that hash it with
/// blake3 and write it into the new file `into` with `O_DIRECT` (through
/// the page cache where the filesystem refuses that), no fsync. No
/// protocol, no async runtime, no bookkeeping. Receiver-side bytes per
/// second; `into` is removed after.
fn bare_receiver(path: &Path, chunk_size: u64, into: &Path) -> anyhow::Result<f64> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::sync::mpsc;
    use swarmseed_agent::chunkmem::{BLOCK, ChunkBuf};

    let open = |flags| {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(flags)
            .open(into)
    };
    let out = std::sync::Arc::new(open(nix::libc::O_DIRECT).or_else(|_| open(0))?);
    // The end of a file that is not whole blocks long: through the page
    // cache, as the agent writes it.
    let tail = std::sync::Arc::new(std::fs::OpenOptions::new().write(true).open(into)?);
    let (sender, mut r, bytes) = sendfile_stream(path)?;
    let chunk = usize::try_from(chunk_size)?;
    // Two buffers per worker: one being hashed and stored, one waiting.
    let (give, free) = mpsc::channel::<ChunkBuf>();
    for _ in 0..2 * BARE_WORKERS {
        give.send(ChunkBuf::with_capacity(chunk))?;
    }
    let (queues, workers): (Vec<_>, Vec<_>) = (0..BARE_WORKERS)
        .map(|_| {
            let (queue, work) = mpsc::sync_channel::<(u64, ChunkBuf)>(1);
            let (give, out, tail) = (give.clone(), out.clone(), tail.clone());
            let worker = std::thread::spawn(move || -> std::io::Result<()> {
                for (offset, buf) in work {
                    std::hint::black_box(blake3::hash(&buf));
                    let whole = buf.len() / BLOCK * BLOCK;
                    out.write_all_at(&buf[..whole], offset)?;
                    tail.write_all_at(&buf[whole..], offset + whole as u64)?;
                    let _ = give.send(buf);
                }
                Ok(())
            });
            (queue, worker)
        })
        .unzip();
    drop(give);
    let started = Instant::now();
    let mut got = 0u64;
    for queue in queues.iter().cycle() {
        if got == bytes {
            break;
        }
        let mut buf = free.recv()?;
        let n = (bytes - got).min(chunk_size) as usize;
        buf.set_len(n);
        r.read_exact(&mut buf)?;
        if queue.send((got, buf)).is_err() {
            bail!("a worker stopped at byte {got}");
        }
        got += n as u64;
    }
    drop(queues);
    for worker in workers {
        worker
            .join()
            .map_err(|_| anyhow::anyhow!("worker panicked"))??;
    }
    let secs = started.elapsed().as_secs_f64();
    join(sender)?;
    drop(out);
    std::fs::remove_file(into)?;
    Ok(bytes as f64 / secs)
}

/// Writes `path` back and drops its pages from the page cache.
fn evict(path: &Path) -> anyhow::Result<()> {
    let f = std::fs::File::open(path)?;
    f.sync_all()?;
    nix::fcntl::posix_fadvise(
        &f,
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    )?;
    Ok(())
}

/// Fills `path` with `size` pseudo-random bytes.
pub fn write_random(path: &Path, size: u64, seed: u64) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut xof = blake3::Hasher::new()
        .update(&seed.to_le_bytes())
        .finalize_xof();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        xof.fill(&mut buf[..n]);
        out.write_all(&buf[..n])?;
        left -= n as u64;
    }
    out.flush()
}

struct BenchAgent {
    child: ManagedChild,
    control: u16,
    peer: u16,
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl BenchAgent {
    fn spawn(bin: &Path, work: &Path, name: &str, token: &Path) -> anyhow::Result<Self> {
        let (control, peer, admin) = (free_port()?, free_port()?, free_port()?);
        let spec = ChildSpec::new(name, bin)
            .arg("--node-name")
            .arg(name)
            .arg("--root")
            .arg(work.join(name))
            .arg("--control-listen")
            .arg(format!("127.0.0.1:{control}"))
            .arg("--peer-listen")
            .arg(format!("127.0.0.1:{peer}"))
            .arg("--admin-listen")
            .arg(format!("127.0.0.1:{admin}"))
            .arg("--advertise-address")
            .arg("127.0.0.1")
            .arg("--control-token-file")
            .arg(token)
            .log(work.join(format!("{name}.log")));
        Ok(Self {
            child: ManagedChild::spawn(&spec)?,
            control,
            peer,
        })
    }

    fn peer_address(&self) -> String {
        format!("127.0.0.1:{}", self.peer)
    }

    async fn client(&self) -> anyhow::Result<AgentControl> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.control));
        let bearer = Bearer::new(TOKEN)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match agent_api::connect(addr, &bearer, Duration::from_secs(30)).await {
                Ok(client) => return Ok(client),
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => bail!(
                    "agent control API at {addr} unreachable: {e}\n{}",
                    self.child.log_tail(4000)
                ),
            }
        }
    }

    async fn status(&self) -> anyhow::Result<pb::AgentStatus> {
        Ok(self
            .client()
            .await?
            .get_status(pb::GetStatusRequest::default())
            .await?
            .into_inner())
    }

    async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let st = self.status().await?;
            if let Some(p) = st.datasets.first() {
                if p.state == pb::DatasetState::Ready as i32 {
                    return Ok(());
                }
                if p.state == pb::DatasetState::Failed as i32 {
                    bail!("{} failed: {:?}", self.child.name(), p.error);
                }
            }
            if Instant::now() > deadline {
                bail!("{} not ready after {timeout:?}", self.child.name());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Peak resident set size (VmHWM) in bytes.
    fn max_rss(&self) -> u64 {
        max_rss_of(self.child.pid())
    }
}

/// Peak resident set size (VmHWM) of a process, in bytes; 0 if unknown.
pub fn max_rss_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
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
