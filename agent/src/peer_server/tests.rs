//! The peer server over real sockets: the gate's bounds, refusals and
//! the accept queue.

use super::*;
use crate::metrics::ReasonLabels;
use crate::transfer::Transfer;
use crate::wire::{Header, Kind};
use std::net::Ipv4Addr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: [u8; 32] = [7; 32];
/// Ample for anything local that should happen at once.
const SOON: Duration = Duration::from_secs(2);

struct OneTransfer(Arc<Transfer>);

impl RevisionLookup for OneTransfer {
    fn find(&self, key: &DatasetKey, revision: &RevisionId) -> Option<Arc<ServedRevision>> {
        (key.namespace == "ml" && key.name == "llama" && *revision == self.0.revision())
            .then(|| self.0.served().clone())
    }
}

struct Server {
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    transfer: Arc<Transfer>,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Server {
    async fn start(limits: HandshakeLimits) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let transfer = test_transfer(dir.path(), TOKEN, Default::default());
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Metrics::register(&mut Default::default());
        let shutdown = CancellationToken::new();
        tokio::spawn(serve(
            listener,
            Arc::new(OneTransfer(transfer.clone())),
            limits,
            metrics.clone(),
            shutdown.clone(),
        ));
        Self {
            addr,
            metrics,
            transfer,
            shutdown,
            _dir: dir,
        }
    }

    /// A connection from `source` (any 127.x address is local).
    async fn connect_from(&self, source: Ipv4Addr) -> TcpStream {
        let sock = TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::new(source.into(), 0)).unwrap();
        sock.connect(self.addr).await.unwrap()
    }

    /// The HELLO a real peer sends for this server's transfer.
    fn hello(&self, nonce: &[u8; 32]) -> Vec<u8> {
        let revision = self.transfer.revision();
        Frame::Hello(wire::Hello {
            revision,
            mac: handshake::hello_mac(&TOKEN, nonce, &revision, "ml", "llama"),
            namespace: "ml".into(),
            name: "llama".into(),
            node: "gpu-2".into(),
        })
        .encode()
    }

    /// A real peer's handshake from `source`: the WELCOME's chunk count.
    async fn handshake_from(&self, source: Ipv4Addr) -> (TcpStream, u32) {
        let mut s = self.connect_from(source).await;
        let nonce = server_hello(&mut s).await;
        s.write_all(&self.hello(&nonce)).await.unwrap();
        let answer = tokio::time::timeout(
            SOON,
            wire::read_frame(&mut s, &[Kind::Welcome, Kind::Error]),
        )
        .await
        .expect("no answer to HELLO")
        .unwrap();
        match answer {
            Frame::Welcome { chunk_count } => (s, chunk_count),
            other => panic!("{other:?}"),
        }
    }

    fn failed(&self, reason: &'static str) -> u64 {
        self.metrics
            .peer_handshakes_failed
            .get_or_create(&ReasonLabels { reason })
            .get()
    }
}

async fn server_hello(s: &mut TcpStream) -> [u8; 32] {
    let frame = tokio::time::timeout(SOON, wire::read_frame(s, &[Kind::ServerHello]))
        .await
        .expect("no SERVER_HELLO")
        .unwrap();
    match frame {
        Frame::ServerHello { nonce } => nonce,
        other => panic!("{other:?}"),
    }
}

/// Everything the server still sends until it closes the connection,
/// or `None` if it is still open after `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut rest = Vec::new();
    match tokio::time::timeout(within, s.read_to_end(&mut rest)).await {
        Ok(Ok(_)) => Some(rest),
        // Reset by the server: closed too.
        Ok(Err(_)) => Some(rest),
        Err(_) => None,
    }
}

/// The reason of the ERROR frame in `bytes`.
fn error_reason(bytes: &[u8]) -> String {
    match futures::executor::block_on(wire::read_frame(&mut &bytes[..], &[Kind::Error])) {
        Ok(Frame::Error(why)) => why,
        other => panic!("not an ERROR frame: {bytes:?}: {other:?}"),
    }
}

fn limits(timeout: Duration, total: usize, per_source: usize) -> HandshakeLimits {
    HandshakeLimits {
        timeout,
        max_pending: total,
        max_pending_per_source: per_source,
    }
}

#[tokio::test]
async fn a_handshake_that_does_not_finish_is_closed_within_the_bound() {
    let timeout = Duration::from_millis(300);
    let server = Server::start(limits(timeout, 64, 16)).await;
    let local = Ipv4Addr::LOCALHOST;
    // Sends nothing.
    let mut silent = server.connect_from(local).await;
    // A HELLO header, then nothing; and one that trickles in, never
    // whole.
    let mut begun = Vec::new();
    for _ in 0..2 {
        let mut s = server.connect_from(local).await;
        server_hello(&mut s).await;
        s.write_all(&Header::new(Kind::Hello, 600).to_bytes())
            .await
            .unwrap();
        begun.push(s);
    }
    let (mut header_only, mut trickle) = (begun.remove(0), begun.remove(0));
    let started = Instant::now();
    for _ in 0..4 {
        trickle.write_all(&[0; 10]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (what, s) in [
        ("silent", &mut silent),
        ("header only", &mut header_only),
        ("trickling", &mut trickle),
    ] {
        assert!(
            closed_within(s, timeout + SOON).await.is_some(),
            "a {what} client is still connected {:?} after the handshake began",
            started.elapsed()
        );
    }
    assert_eq!(server.failed("timeout"), 3);
    assert_eq!(server.metrics.peer_handshakes_pending.get(), 0);
}

#[tokio::test]
async fn an_oversized_hello_is_refused_on_its_header() {
    // A long handshake bound: the refusal must not wait for it.
    let server = Server::start(limits(Duration::from_secs(60), 64, 16)).await;
    let mut s = server.connect_from(Ipv4Addr::LOCALHOST).await;
    server_hello(&mut s).await;
    s.write_all(&Header::new(Kind::Hello, 1 << 20).to_bytes())
        .await
        .unwrap();
    let rest = closed_within(&mut s, SOON)
        .await
        .expect("the server waits for a 1 MiB HELLO");
    assert_eq!(
        error_reason(&rest),
        format!(
            "HELLO of 1048576 bytes (expected 78 to {})",
            wire::MAX_HELLO
        )
    );
    assert_eq!(server.failed("malformed"), 1);
    // A real one still gets in.
    let (_peer, chunks) = server.handshake_from(Ipv4Addr::LOCALHOST).await;
    assert_eq!(chunks, server.transfer.layout().chunk_count());
}

#[tokio::test]
async fn a_source_over_its_share_is_refused_while_a_real_peer_gets_in() {
    let server = Server::start(limits(Duration::from_secs(60), 64, 4)).await;
    let attacker = Ipv4Addr::new(127, 0, 0, 1);
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut s = server.connect_from(attacker).await;
        server_hello(&mut s).await;
        held.push(s);
    }
    let mut excess = server.connect_from(attacker).await;
    let rest = closed_within(&mut excess, SOON)
        .await
        .expect("the 5th handshake from one address is not refused");
    assert_eq!(
        error_reason(&rest),
        "busy: 4 handshakes in progress from this address"
    );
    assert_eq!(server.failed("source_limit"), 1);
    // A peer at another address completes its handshake...
    let (_peer, chunks) = server.handshake_from(Ipv4Addr::new(127, 0, 0, 2)).await;
    assert_eq!(chunks, server.transfer.layout().chunk_count());
    // ... and the held ones are untouched.
    for s in &mut held {
        assert!(closed_within(s, Duration::from_millis(50)).await.is_none());
    }
    // One of them leaving makes room for another from its address.
    drop(held.pop());
    let deadline = Instant::now() + SOON;
    loop {
        let mut s = server.connect_from(attacker).await;
        let frame = wire::read_frame(&mut s, &[Kind::ServerHello, Kind::Error])
            .await
            .unwrap();
        if matches!(frame, Frame::ServerHello { .. }) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slot of a closed connection is not freed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn past_the_total_the_oldest_handshake_makes_room_for_a_real_peer() {
    let server = Server::start(limits(Duration::from_secs(60), 4, 16)).await;
    let mut held = Vec::new();
    for i in 0..4 {
        let mut s = server.connect_from(Ipv4Addr::new(127, 0, 1, i)).await;
        server_hello(&mut s).await;
        held.push(s);
    }
    let (_peer, chunks) = server.handshake_from(Ipv4Addr::new(127, 0, 0, 2)).await;
    assert_eq!(chunks, server.transfer.layout().chunk_count());
    let rest = closed_within(&mut held[0], SOON)
        .await
        .expect("the oldest handshake was kept past the total");
    assert_eq!(
        error_reason(&rest),
        "busy: dropped for a newer connection: 4 handshakes in progress"
    );
    for s in &mut held[1..] {
        assert!(closed_within(s, Duration::from_millis(50)).await.is_none());
    }
    assert_eq!(server.failed("evicted"), 1);
    // Three held and none for the peer, which authenticated.
    assert_eq!(server.metrics.peer_handshakes_pending.get(), 3);
}

#[tokio::test]
async fn an_authenticated_peer_cannot_make_the_server_read_a_large_frame() {
    let server = Server::start(HandshakeLimits::default()).await;
    for (kind, len) in [(Kind::Request, 1 << 20), (Kind::Have, wire::MAX_HAVE)] {
        let (mut s, _) = server.handshake_from(Ipv4Addr::LOCALHOST).await;
        s.write_all(&Header::new(kind, len).to_bytes())
            .await
            .unwrap();
        assert!(
            closed_within(&mut s, SOON).await.is_some(),
            "the server waits for a {} of {len} bytes",
            kind.name()
        );
    }
}

/// A burst of connections is queued for accept whole, even while the
/// server is busy: past the queue the kernel would drop new SYNs.
#[tokio::test]
async fn a_burst_of_connections_fits_the_accept_queue() {
    let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    // Nothing accepts: every connection waits in the queue.
    let connects = (0..300)
        .map(|_| tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(addr)));
    let results = futures::future::join_all(connects).await;
    let waiting = results.iter().filter(|r| !matches!(r, Ok(Ok(_)))).count();
    assert_eq!(
        waiting, 0,
        "{waiting} of 300 connections not queued within 500 ms"
    );
}
