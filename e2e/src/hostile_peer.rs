//! `e2e hostile-peer`: clients of an agent's peer port that never
//! authenticate, for the fault tests (`e2e/tests/faults/hostile_peers.rs`).
//!
//! `--connections` slots each keep one connection open as long as the
//! server lets it, behaving as `--mode` says, and open the next one
//! `--reconnect-after` after the server closed it; source addresses are
//! taken in turn from `--sources`. Bounded in time (`--duration`) and in
//! connection attempts (`--max-attempts`); prints one JSON report
//! ([`HostileReport`]) saying what the server did with them.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use swarmseed_agent::wire::{self, Header, Kind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use swarmseed_harness::error::{Error, Result};

/// How a connection behaves after it is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HostileMode {
    /// Sends nothing.
    Silent,
    /// A HELLO header (600 bytes declared), then nothing.
    HalfHello,
    /// A HELLO header, then one byte every 500 ms.
    Trickle,
    /// Silent, half-hello and trickle, slot by slot.
    Slow,
    /// A HELLO header declaring 1 MiB, then its body, 16 KiB every 50 ms,
    /// all but the last byte.
    Oversize,
    /// Reads the server's first frame and closes, at once.
    Flood,
}

#[derive(Debug, Clone, clap::Args)]
pub struct HostilePeerArgs {
    /// The agent's peer address.
    #[arg(long)]
    pub target: SocketAddr,
    /// Source addresses to connect from, in turn (on this namespace's
    /// interfaces); none: the kernel picks.
    #[arg(long, value_delimiter = ',')]
    pub sources: Vec<IpAddr>,
    /// Connections kept open at once (slots).
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    #[arg(long, value_enum)]
    pub mode: HostileMode,
    /// How long the attack lasts.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Most connection attempts in all.
    #[arg(long, default_value_t = 100_000)]
    pub max_attempts: u64,
    /// Pause of a slot after the server closed its connection.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub reconnect_after: Duration,
}

/// What the server did with the connections.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct HostileReport {
    pub attempts: u64,
    pub connect_errors: u64,
    /// Connections the server greeted with SERVER_HELLO.
    pub greeted: u64,
    /// Refused at accept: an ERROR instead of SERVER_HELLO.
    pub refused: u64,
    /// Closed by the server before the end of the attack.
    pub closed_by_server: u64,
    /// The longest the server kept a connection it greeted open, ms.
    pub longest_held_ms: u64,
    /// Connections still open when the attack ended, and the age of the
    /// oldest of them, ms.
    pub open_at_end: u64,
    pub oldest_open_at_end_ms: u64,
    /// Most connections open at once.
    pub peak_open: u64,
    /// The ERROR reasons received (with a count each).
    pub errors: BTreeMap<String, u64>,
    pub duration_ms: u64,
}

/// How one connection ended.
enum Ending {
    /// The server closed it (or we did, in flood mode): the bytes it sent.
    Closed { got: Vec<u8>, held: Duration },
    /// Still open when the attack ended.
    OpenAtEnd(Duration),
}

struct Shared {
    args: HostilePeerArgs,
    deadline: tokio::time::Instant,
    attempts: AtomicU64,
    open: AtomicU64,
    report: Mutex<HostileReport>,
}

pub async fn run(args: HostilePeerArgs) -> Result<HostileReport> {
    let started = Instant::now();
    let shared = Arc::new(Shared {
        deadline: tokio::time::Instant::now() + args.duration,
        attempts: AtomicU64::new(0),
        open: AtomicU64::new(0),
        report: Mutex::new(HostileReport::default()),
        args,
    });
    let slots: Vec<_> = (0..shared.args.connections)
        .map(|i| tokio::spawn(slot(i, shared.clone())))
        .collect();
    for s in slots {
        s.await
            .map_err(|e| Error::Invalid(format!("an attack slot failed: {e}")))?;
    }
    let mut report = lock(&shared.report).clone();
    report.attempts = shared.attempts.load(Ordering::Relaxed);
    report.duration_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn slot(i: usize, shared: Arc<Shared>) {
    let args = &shared.args;
    let mode = match args.mode {
        HostileMode::Slow => [
            HostileMode::Silent,
            HostileMode::HalfHello,
            HostileMode::Trickle,
        ][i % 3],
        m => m,
    };
    let source = (!args.sources.is_empty()).then(|| args.sources[i % args.sources.len()]);
    while tokio::time::Instant::now() < shared.deadline {
        if shared.attempts.fetch_add(1, Ordering::Relaxed) >= args.max_attempts {
            shared.attempts.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        let connected =
            tokio::time::timeout_at(shared.deadline, connect(source, args.target)).await;
        let stream = match connected {
            Ok(Ok(s)) => s,
            Ok(Err(_)) => {
                lock(&shared.report).connect_errors += 1;
                tokio::time::sleep(args.reconnect_after.max(Duration::from_millis(100))).await;
                continue;
            }
            Err(_) => return,
        };
        let open = shared.open.fetch_add(1, Ordering::Relaxed) + 1;
        {
            let mut r = lock(&shared.report);
            r.peak_open = r.peak_open.max(open);
        }
        let ending = exchange(stream, mode, shared.deadline).await;
        shared.open.fetch_sub(1, Ordering::Relaxed);
        if !record(&mut lock(&shared.report), ending, mode) {
            return;
        }
        tokio::time::sleep_until(
            (tokio::time::Instant::now() + args.reconnect_after).min(shared.deadline),
        )
        .await;
    }
}

/// Adds how a connection ended to the report; false once the attack is
/// over.
fn record(r: &mut HostileReport, ending: Ending, mode: HostileMode) -> bool {
    let (got, held) = match ending {
        Ending::OpenAtEnd(age) => {
            r.open_at_end += 1;
            r.oldest_open_at_end_ms = r.oldest_open_at_end_ms.max(age.as_millis() as u64);
            return false;
        }
        Ending::Closed { got, held } => (got, held),
    };
    let frames = frames(&got);
    match frames.first().and_then(|(kind, _)| Kind::from_byte(*kind)) {
        Some(Kind::ServerHello) => {
            r.greeted += 1;
            r.longest_held_ms = r.longest_held_ms.max(held.as_millis() as u64);
        }
        Some(Kind::Error) => r.refused += 1,
        _ => {}
    }
    if mode != HostileMode::Flood {
        r.closed_by_server += 1;
    }
    for (kind, payload) in frames {
        if kind == Kind::Error as u8 {
            *r.errors.entry(reason(&payload)).or_insert(0) += 1;
        }
    }
    true
}

/// An ERROR reason with its numbers replaced by `N`, so that reasons of
/// one kind count together.
fn reason(payload: &[u8]) -> String {
    let text = String::from_utf8_lossy(payload);
    let mut out = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            if !out.ends_with('N') {
                out.push('N');
            }
        } else {
            out.push(c);
        }
    }
    out
}

async fn connect(source: Option<IpAddr>, target: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = if target.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        sock.bind(SocketAddr::new(ip, 0))?;
    }
    sock.connect(target).await
}

/// Whole frames at the start of `bytes`.
fn frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while bytes.len() >= 5 {
        let len = u32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        let Some(payload) = bytes.get(5..5 + len) else {
            break;
        };
        out.push((bytes[0], payload.to_vec()));
        bytes = &bytes[5 + len..];
    }
    out
}

async fn exchange(stream: TcpStream, mode: HostileMode, deadline: tokio::time::Instant) -> Ending {
    let opened = Instant::now();
    let (mut rd, mut wr) = stream.into_split();
    let talk = async move {
        match mode {
            HostileMode::HalfHello => {
                wr.write_all(&Header::new(Kind::Hello, 600).to_bytes())
                    .await?
            }
            HostileMode::Trickle => {
                wr.write_all(&Header::new(Kind::Hello, wire::MAX_HELLO).to_bytes())
                    .await?;
                loop {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    wr.write_all(&[0]).await?;
                }
            }
            HostileMode::Oversize => {
                const BODY: usize = 1 << 20;
                const PIECE: usize = 16 * 1024;
                wr.write_all(&Header::new(Kind::Hello, BODY as u32).to_bytes())
                    .await?;
                let piece = [0u8; PIECE];
                let mut sent = 0;
                while sent < BODY - 1 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let n = PIECE.min(BODY - 1 - sent);
                    wr.write_all(&piece[..n]).await?;
                    sent += n;
                }
            }
            HostileMode::Silent | HostileMode::Slow | HostileMode::Flood => {}
        }
        // Keep the write half (and so the connection) open.
        std::future::pending::<std::io::Result<()>>().await
    };
    let listen = async {
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return got,
                Ok(n) => {
                    if got.len() < 4096 {
                        got.extend_from_slice(&buf[..n]);
                    }
                    if mode == HostileMode::Flood && !frames(&got).is_empty() {
                        return got;
                    }
                }
            }
        }
    };
    tokio::pin!(listen);
    tokio::select! {
        got = &mut listen => Ending::Closed { got, held: opened.elapsed() },
        _ = talk => {
            // A write failed: the server reset the connection. Take what
            // it sent before.
            let got = tokio::time::timeout(Duration::from_secs(1), listen)
                .await
                .unwrap_or_default();
            Ending::Closed { got, held: opened.elapsed() }
        }
        _ = tokio::time::sleep_until(deadline) => Ending::OpenAtEnd(opened.elapsed()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_of_one_kind_count_together() {
        assert_eq!(
            reason(b"busy: 16 handshakes in progress from this address"),
            "busy: N handshakes in progress from this address"
        );
        assert_eq!(
            reason(b"HELLO of 1048576 bytes (expected 78 to 647)"),
            "HELLO of N bytes (expected N to N)"
        );
    }

    #[test]
    fn whole_frames_are_split_off_and_a_torn_one_left() {
        let mut b = Header::new(Kind::ServerHello, 2).to_bytes().to_vec();
        b.extend_from_slice(&[1, 2]);
        b.extend_from_slice(&Header::new(Kind::Error, 3).to_bytes());
        b.extend_from_slice(b"ab");
        assert_eq!(frames(&b), vec![(Kind::ServerHello as u8, vec![1, 2])]);
    }
}
