//! A minimal TCP throughput test (`e2e netbench recv|send`).
//!
//! The sender writes as fast as it can for a fixed time, then half-closes;
//! the receiver counts what arrived and answers with one JSON line, so the
//! number comes from the receiving side (bytes still in socket buffers when
//! the sender stops do not count as delivered). The first `warmup` of the
//! transfer (TCP slow start) is excluded from the steady-state rate.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use swarmseed_harness::error::{Error, Result};

/// What the receiver measured for one connection.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct NetbenchResult {
    /// Bytes received.
    pub bytes: u64,
    /// From the first byte to EOF.
    pub seconds: f64,
    /// bytes * 8 / seconds / 1e6.
    pub mbit_per_s: f64,
    /// Rate after the warm-up period.
    pub steady_mbit_per_s: f64,
}

const BUF: usize = 128 * 1024;

/// Receives one connection's data and answers with the result.
pub async fn receive_one(stream: TcpStream, warmup: Duration) -> Result<NetbenchResult> {
    let (mut rd, mut wr) = stream.into_split();
    let mut buf = vec![0u8; BUF];
    let mut total = 0u64;
    let mut first: Option<Instant> = None;
    let mut steady: Option<(Instant, u64)> = None;
    // Bound a connection's life so that a stuck sender cannot hold us forever.
    let limit = Duration::from_secs(600);
    let started = Instant::now();
    loop {
        let n = tokio::time::timeout(Duration::from_secs(30), rd.read(&mut buf))
            .await
            .map_err(|_| Error::network("netbench receive", "no data for 30 s"))?
            .map_err(|e| Error::network("netbench receive", e))?;
        if n == 0 {
            break;
        }
        let now = Instant::now();
        let t0 = *first.get_or_insert(now);
        total += n as u64;
        if steady.is_none() && now.duration_since(t0) >= warmup {
            steady = Some((now, total));
        }
        if started.elapsed() > limit {
            return Err(Error::network(
                "netbench receive",
                "transfer exceeded 600 s",
            ));
        }
    }
    let end = Instant::now();
    let seconds = first
        .map(|t| end.duration_since(t).as_secs_f64())
        .unwrap_or(0.0);
    let rate = |bytes: u64, secs: f64| {
        if secs > 0.0 {
            bytes as f64 * 8.0 / secs / 1e6
        } else {
            0.0
        }
    };
    let steady_mbit_per_s = match steady {
        Some((t, at)) => rate(total - at, end.duration_since(t).as_secs_f64()),
        None => rate(total, seconds),
    };
    let result = NetbenchResult {
        bytes: total,
        seconds,
        mbit_per_s: rate(total, seconds),
        steady_mbit_per_s,
    };
    let mut line = serde_json::to_vec(&result).map_err(|e| Error::network("netbench encode", e))?;
    line.push(b'\n');
    tokio::time::timeout(Duration::from_secs(10), wr.write_all(&line))
        .await
        .map_err(|_| Error::network("netbench reply", "timed out"))?
        .map_err(|e| Error::network("netbench reply", e))?;
    Ok(result)
}

/// Serves senders until `count` connections were measured (forever when
/// `None`), printing each result as a JSON line.
pub async fn serve(listener: TcpListener, count: Option<usize>, warmup: Duration) -> Result<()> {
    let mut done = 0usize;
    while count.is_none_or(|c| done < c) {
        let (stream, peer) = listener
            .accept()
            .await
            .map_err(|e| Error::network("netbench accept", e))?;
        match receive_one(stream, warmup).await {
            Ok(r) => println!("{}", serde_json::to_string(&r).unwrap_or_default()),
            Err(e) => eprintln!("netbench: {peer}: {e}"),
        }
        done += 1;
    }
    Ok(())
}

/// Connects (retrying for up to `connect_wait`, the receiver may still be
/// starting), sends for `duration`, returns the receiver's measurement.
pub async fn send(
    addr: SocketAddr,
    duration: Duration,
    connect_wait: Duration,
) -> Result<NetbenchResult> {
    let deadline = Instant::now() + connect_wait;
    let mut backoff = Duration::from_millis(20);
    let stream = loop {
        match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => break s,
            Ok(Err(e)) if Instant::now() >= deadline => {
                return Err(Error::network(format!("netbench connect {addr}"), e));
            }
            Err(_) if Instant::now() >= deadline => {
                return Err(Error::network(
                    format!("netbench connect {addr}"),
                    "timed out",
                ));
            }
            _ => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
        }
    };
    let (rd, mut wr) = stream.into_split();
    let buf = vec![0x5au8; BUF];
    let end = Instant::now() + duration;
    while Instant::now() < end {
        tokio::time::timeout(Duration::from_secs(30), wr.write_all(&buf))
            .await
            .map_err(|_| Error::network("netbench send", "stalled for 30 s"))?
            .map_err(|e| Error::network("netbench send", e))?;
    }
    wr.shutdown()
        .await
        .map_err(|e| Error::network("netbench shutdown", e))?;
    let mut line = String::new();
    // The receiver answers once it drained everything still in flight.
    tokio::time::timeout(
        Duration::from_secs(60),
        BufReader::new(rd).read_line(&mut line),
    )
    .await
    .map_err(|_| Error::network("netbench result", "no answer within 60 s"))?
    .map_err(|e| Error::network("netbench result", e))?;
    serde_json::from_str(line.trim())
        .map_err(|e| Error::network("netbench result", format!("{e}: {line:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn measures_what_arrived() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, Some(1), Duration::from_millis(50)));
        let r = send(addr, Duration::from_millis(300), Duration::from_secs(2))
            .await
            .unwrap();
        server.await.unwrap().unwrap();
        assert!(r.bytes > 0 && r.bytes % BUF as u64 == 0, "{r:?}");
        assert!(r.seconds > 0.1 && r.seconds < 5.0, "{r:?}");
        assert!(r.mbit_per_s > 0.0 && r.steady_mbit_per_s > 0.0, "{r:?}");
    }
}
