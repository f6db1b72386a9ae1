//! A TCP proxy that counts the bytes flowing from the upstream to clients,
//! put in front of origins that cannot count for themselves (moto's S3).
//! Its counters are served at `/_origin/stats` like the HTTP origin's
//! (`bytes_served` = upstream→client bytes, `requests` = connections).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use super::http::{OriginCounters, OriginStats, stats_router};
use crate::error::{Error, Result};

/// A running proxy; stops (with all its connections) on drop.
#[derive(Debug)]
pub struct TcpProxy {
    addr: SocketAddr,
    stats_addr: Option<SocketAddr>,
    counters: Arc<OriginCounters>,
    /// Bytes from clients to the upstream (uploads).
    upstream_bytes: Arc<AtomicU64>,
    tasks: JoinSet<()>,
}

impl TcpProxy {
    /// Listens on `listen`, forwards every connection to `upstream`, and
    /// serves the counters on `stats_listen` when given.
    pub async fn start(
        listen: SocketAddr,
        upstream: SocketAddr,
        stats_listen: Option<SocketAddr>,
    ) -> Result<Self> {
        let (listener, addr) = crate::bind_tcp(listen).await?;
        let counters = Arc::new(OriginCounters::default());
        let upstream_bytes = Arc::new(AtomicU64::new(0));
        let mut tasks = JoinSet::new();
        let stats_addr = match stats_listen {
            Some(s) => {
                let (l, a) = crate::bind_tcp(s).await?;
                let app = stats_router(counters.clone());
                tasks.spawn(async move {
                    let _ = axum::serve(l, app).await;
                });
                Some(a)
            }
            None => None,
        };
        let (c, u) = (counters.clone(), upstream_bytes.clone());
        tasks.spawn(accept_loop(listener, upstream, c, u));
        Ok(Self {
            addr,
            stats_addr,
            counters,
            upstream_bytes,
            tasks,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where `/_origin/stats` is served, if it is.
    pub fn stats_addr(&self) -> Option<SocketAddr> {
        self.stats_addr
    }

    pub fn stats(&self) -> OriginStats {
        self.counters.snapshot()
    }

    /// Bytes clients sent to the upstream.
    pub fn bytes_uploaded(&self) -> u64 {
        self.upstream_bytes.load(Ordering::Relaxed)
    }

    pub fn reset_stats(&self) {
        self.counters.reset();
        self.upstream_bytes.store(0, Ordering::Relaxed);
    }

    /// Runs until the process ends (the `e2e tcp-proxy` subcommand).
    pub async fn run_forever(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    counters: Arc<OriginCounters>,
    upstream_bytes: Arc<AtomicU64>,
) {
    // Connections live in this set: dropping the accept task drops them.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (client, _) = match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "proxy accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                counters.add_request();
                let (c, u) = (counters.clone(), upstream_bytes.clone());
                conns.spawn(async move {
                    if let Err(e) = forward(client, upstream, c, u).await {
                        tracing::debug!(error = %e, "proxy connection ended");
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn forward(
    client: TcpStream,
    upstream: SocketAddr,
    counters: Arc<OriginCounters>,
    upstream_bytes: Arc<AtomicU64>,
) -> Result<()> {
    let server = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(upstream))
        .await
        .map_err(|_| Error::network(format!("connect {upstream}"), "timed out"))?
        .map_err(|e| Error::network(format!("connect {upstream}"), e))?;
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let down = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = sr.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            cw.write_all(&buf[..n]).await?;
            counters.add_bytes(n as u64);
        }
        cw.shutdown().await
    };
    let up = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = cr.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            sw.write_all(&buf[..n]).await?;
            upstream_bytes.fetch_add(n as u64, Ordering::Relaxed);
        }
        sw.shutdown().await
    };
    let (d, u): (std::io::Result<()>, std::io::Result<()>) = tokio::join!(down, up);
    d.and(u).map_err(|e| Error::network("proxy copy", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_bytes_from_upstream_to_client() {
        // An upstream that answers every connection with 1000 bytes.
        let up = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up_addr = up.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = up.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut req = [0u8; 5];
                    s.read_exact(&mut req).await.unwrap();
                    s.write_all(&[7u8; 1000]).await.unwrap();
                });
            }
        });
        let proxy = TcpProxy::start(
            "127.0.0.1:0".parse().unwrap(),
            up_addr,
            Some("127.0.0.1:0".parse().unwrap()),
        )
        .await
        .unwrap();
        for _ in 0..3 {
            let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
            c.write_all(b"hello").await.unwrap();
            let mut got = Vec::new();
            c.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, vec![7u8; 1000]);
        }
        let remote =
            super::super::http::fetch_stats(&format!("http://{}", proxy.stats_addr().unwrap()))
                .await
                .unwrap();
        assert_eq!(
            remote,
            OriginStats {
                bytes_served: 3000,
                requests: 3
            }
        );
        assert_eq!(proxy.bytes_uploaded(), 15);
        proxy.reset_stats();
        assert_eq!(proxy.stats(), OriginStats::default());
    }
}
