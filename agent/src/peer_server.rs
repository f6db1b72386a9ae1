//! Serves verified chunks to peers (the server side of [`crate::wire`]).
//!
//! A chunk this node verified a moment ago is sent from the memory that
//! still holds it (it was written to disk past the page cache); any other
//! goes from the file to the socket with `sendfile(2)`, no copy through
//! this process. A connection must prove it holds the
//! dataset's peer token (a MAC over a fresh nonce) before it learns
//! anything.
//!
//! Until it has, a connection is bounded ([`HandshakeLimits`]): the whole
//! handshake in time, its HELLO in size (read straight from the socket,
//! no buffer beyond the frame's few hundred bytes), and the handshakes in
//! progress per source address and in total. A source over its share is
//! refused at accept; when the total is reached, the oldest handshake is
//! dropped for the new one, so a flood of slow clients cannot keep a peer
//! that answers at once from getting in.

use crate::lock;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use swarmseed_proto::RevisionId;
use tokio::io::Interest;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span, warn};

use crate::metrics::{Metrics, ReasonLabels};
use crate::store::{ChunkRecord, DatasetKey};
use crate::transfer::Transfer;
use crate::wire;

/// Finds the transfer a peer asks for.
pub trait TransferLookup: Send + Sync + 'static {
    fn find(&self, key: &DatasetKey, revision: &RevisionId) -> Option<Arc<Transfer>>;
}

/// Most requests a client may queue on one connection.
const MAX_QUEUED: usize = 64;

/// Read buffer of an authenticated connection: it carries only REQUEST and
/// CANCEL frames (9 bytes each, [`MAX_QUEUED`] in flight).
const REQUEST_BUFFER: usize = 1024;

/// Unsent bytes a connection's socket holds at most (see
/// [`wire::set_unsent_limit`]): announcements reach a peer soon after the
/// chunk is verified here, even while pieces queue for it.
const UNSENT_LIMIT: usize = 64 * 1024;

/// Connections the kernel completes and queues for `accept` (it caps this
/// at `net.core.somaxconn`). A burst of connections must find room there to
/// be accepted and refused: past a full queue the kernel drops new SYNs,
/// a real peer's among them, and holds connections its clients already
/// think open. (The default of std and tokio is 128.)
pub const ACCEPT_BACKLOG: u32 = 4096;

/// How often a refusal at accept is logged at most (each is counted in
/// `peer_handshakes_failed_total`).
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Bounds on connections that have not proven a peer token yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeLimits {
    /// From accept to the answer to HELLO: a peer sends its HELLO as soon
    /// as it reads the server's, one round trip.
    pub timeout: Duration,
    /// Handshakes in progress at once; a new one past it drops the oldest.
    pub max_pending: usize,
    /// Handshakes in progress from one source address (IPv6: one /64); a
    /// new one past it is refused.
    pub max_pending_per_source: usize,
}

impl Default for HandshakeLimits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            max_pending: 256,
            max_pending_per_source: 16,
        }
    }
}

/// Why a connection was closed before it authenticated.
#[derive(Debug, thiserror::Error)]
enum HandshakeError {
    #[error("{0} handshakes in progress from this address")]
    SourceLimit(usize),
    #[error("dropped for a newer connection: {0} handshakes in progress")]
    Evicted(usize),
    #[error("no valid HELLO within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Malformed(io::Error),
    #[error("{0}")]
    UnknownDataset(&'static str),
    #[error("bad credential")]
    BadCredential,
    #[error("dataset failed on this node")]
    Failed,
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl HandshakeError {
    fn label(&self) -> &'static str {
        match self {
            Self::SourceLimit(_) => "source_limit",
            Self::Evicted(_) => "evicted",
            Self::Timeout(_) => "timeout",
            Self::Malformed(_) => "malformed",
            Self::UnknownDataset(_) => "unknown_dataset",
            Self::BadCredential => "bad_credential",
            Self::Failed => "dataset_failed",
            Self::Io(_) => "io",
        }
    }
}

/// The key a source address is counted under: an IPv4 address (also when
/// mapped into IPv6), or an IPv6 address's /64, which one host usually
/// has whole.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// The handshakes in progress, each with a `T` (what drops it), counted per
/// source and in admission order. Pure bookkeeping: [`serve`] acts on what
/// it decides.
#[derive(Debug)]
struct PendingHandshakes<T> {
    limits: HandshakeLimits,
    per_source: HashMap<IpAddr, usize>,
    /// Admission id → (source key, what drops it); the first is the oldest.
    by_age: BTreeMap<u64, (IpAddr, T)>,
    next_id: u64,
}

/// What admitting a new connection decided.
#[derive(Debug, PartialEq, Eq)]
enum Admission<T> {
    /// Go ahead under this id; drop the connection of the `T` evicted for it.
    Admit { id: u64, evicted: Option<T> },
    /// Its source has `max_pending_per_source` handshakes in progress.
    SourceLimit,
}

impl<T> PendingHandshakes<T> {
    fn new(limits: HandshakeLimits) -> Self {
        Self {
            limits,
            per_source: HashMap::new(),
            by_age: BTreeMap::new(),
            next_id: 0,
        }
    }

    fn admit(&mut self, source: IpAddr, drop: T) -> Admission<T> {
        let source = source_key(source);
        if self.per_source.get(&source).copied().unwrap_or(0)
            >= self.limits.max_pending_per_source.max(1)
        {
            return Admission::SourceLimit;
        }
        let evicted = if self.by_age.len() >= self.limits.max_pending.max(1) {
            self.by_age.pop_first().map(|(_, (old, t))| {
                self.forget(old);
                t
            })
        } else {
            None
        };
        let id = self.next_id;
        self.next_id += 1;
        self.by_age.insert(id, (source, drop));
        *self.per_source.entry(source).or_insert(0) += 1;
        Admission::Admit { id, evicted }
    }

    /// The handshake `id` ended (authenticated, failed or evicted).
    fn release(&mut self, id: u64) {
        if let Some((source, _)) = self.by_age.remove(&id) {
            self.forget(source);
        }
    }

    fn forget(&mut self, source: IpAddr) {
        if let Some(n) = self.per_source.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&source);
            }
        }
    }

    fn len(&self) -> usize {
        self.by_age.len()
    }
}

/// Counts refusals between log lines: at most one line per interval.
#[derive(Debug, Default)]
struct LogThrottle {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogThrottle {
    /// `Some(refusals since the last line)` when a line is due.
    fn due(&mut self, now: Instant, interval: Duration) -> Option<u64> {
        self.suppressed += 1;
        match self.last {
            Some(t) if now.duration_since(t) < interval => None,
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// The shared side of [`PendingHandshakes`]: a connection holds a
/// [`HandshakeSlot`] until it authenticated or ended.
struct Gate {
    pending: Mutex<PendingHandshakes<CancellationToken>>,
    refusals: Mutex<LogThrottle>,
    metrics: Arc<Metrics>,
}

struct HandshakeSlot {
    gate: Arc<Gate>,
    id: u64,
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut pending = lock(&self.gate.pending);
        pending.release(self.id);
        self.gate
            .metrics
            .peer_handshakes_pending
            .set(pending.len() as i64);
    }
}

impl Gate {
    fn failed(&self, e: &HandshakeError) {
        self.metrics
            .peer_handshakes_failed
            .get_or_create(&ReasonLabels { reason: e.label() })
            .inc();
    }
}

/// Binds the peer server's listener, with [`ACCEPT_BACKLOG`].
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(ACCEPT_BACKLOG)
}

pub async fn serve(
    listener: TcpListener,
    lookup: Arc<dyn TransferLookup>,
    limits: HandshakeLimits,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let gate = Arc::new(Gate {
        pending: Mutex::new(PendingHandshakes::new(limits)),
        refusals: Mutex::new(LogThrottle::default()),
        metrics,
    });
    loop {
        let (stream, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return Ok(()),
        };
        let dropped = CancellationToken::new();
        let admission = {
            let mut pending = lock(&gate.pending);
            let a = pending.admit(addr.ip(), dropped.clone());
            gate.metrics
                .peer_handshakes_pending
                .set(pending.len() as i64);
            a
        };
        let slot = match admission {
            Admission::Admit { id, evicted } => {
                if let Some(old) = evicted {
                    old.cancel();
                }
                HandshakeSlot {
                    gate: gate.clone(),
                    id,
                }
            }
            Admission::SourceLimit => {
                let e = HandshakeError::SourceLimit(limits.max_pending_per_source);
                gate.failed(&e);
                tell_busy(&stream, &e);
                let due = lock(&gate.refusals).due(Instant::now(), REFUSAL_LOG_INTERVAL);
                if let Some(count) = due {
                    warn!(
                        peer = %addr,
                        refused = count,
                        "peer connections refused: {e} (--peer-max-handshakes-per-source)"
                    );
                }
                // Dropping the stream closes it.
                continue;
            }
        };
        let lookup = lookup.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(
            async move {
                tokio::select! {
                    r = connection(stream, lookup, slot, dropped, limits) => if let Err(e) = r {
                        debug!(error = %e, "peer connection ended");
                    },
                    _ = shutdown.cancelled() => {},
                }
            }
            .instrument(info_span!("serve", peer = %addr)),
        );
    }
}

/// Tells a client dropped before its handshake ended why, if its socket
/// takes the few bytes at once (never waits: a refusal must cost next to
/// nothing).
fn tell_busy(stream: &TcpStream, why: &HandshakeError) {
    let why = format!("busy: {why}");
    let payload = wire::error_payload(&why);
    let mut frame = Vec::with_capacity(5 + payload.len());
    frame.extend_from_slice(&wire::header(wire::ERROR, payload.len() as u32));
    frame.extend_from_slice(payload);
    let _ = stream.try_write(&frame);
}

async fn connection(
    stream: TcpStream,
    lookup: Arc<dyn TransferLookup>,
    slot: HandshakeSlot,
    dropped: CancellationToken,
    limits: HandshakeLimits,
) -> io::Result<()> {
    stream.set_nodelay(true)?;
    wire::set_unsent_limit(&stream, UNSENT_LIMIT)?;
    let (mut rd, mut wr) = stream.into_split();

    let result = tokio::select! {
        r = tokio::time::timeout(limits.timeout, handshake(&mut rd, &mut wr, &*lookup)) => {
            r.unwrap_or(Err(HandshakeError::Timeout(limits.timeout)))
        }
        _ = dropped.cancelled() => Err(HandshakeError::Evicted(limits.max_pending)),
    };
    let gate = slot.gate.clone();
    // Authenticated or not, it no longer counts as pending.
    drop(slot);
    let (transfer, mut haves) = match result {
        Ok(x) => x,
        Err(e) => {
            if matches!(e, HandshakeError::Evicted(_)) {
                tell_busy(wr.as_ref(), &e);
            }
            gate.failed(&e);
            return Err(io::Error::other(e));
        }
    };
    wire::write_frame(
        &mut wr,
        wire::WELCOME,
        &wire::u32_payload(transfer.layout().chunk_count()),
    )
    .await?;
    send_haves(&mut wr, &transfer.have_snapshot()).await?;

    let rd = BufReader::with_capacity(REQUEST_BUFFER, rd);
    let queue = Arc::new((Mutex::new(VecDeque::<Outgoing>::new()), Notify::new()));
    let mut reader = {
        let queue = queue.clone();
        tokio::spawn(async move { read_requests(rd, &queue).await })
    };
    // A client that breaks the protocol (or leaves) ends the connection
    // then, not at the next failed write.
    let result = tokio::select! {
        r = write_loop(&mut wr, &transfer, &queue, &mut haves) => r,
        r = &mut reader => r.unwrap_or_else(|e| Err(io::Error::other(e))),
    };
    reader.abort();
    result
}

/// SERVER_HELLO out, HELLO in, checked: the transfer the client proved it
/// may read, subscribed to its announcements. A refusal is answered with
/// ERROR. Reads straight from the socket: nothing is buffered or
/// allocated beyond the HELLO's declared length, which is bounded first.
async fn handshake(
    rd: &mut OwnedReadHalf,
    wr: &mut OwnedWriteHalf,
    lookup: &dyn TransferLookup,
) -> Result<(Arc<Transfer>, broadcast::Receiver<ChunkRecord>), HandshakeError> {
    let nonce: [u8; 32] = rand::random();
    wire::write_frame(wr, wire::SERVER_HELLO, &wire::server_hello(&nonce)).await?;

    let (kind, len) = wire::read_header(rd).await?;
    let hello = if kind == wire::HELLO {
        wire::check_control(kind, len)
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("expected HELLO, got frame {kind}"),
        ))
    };
    if let Err(e) = hello {
        refuse(wr, &e.to_string()).await?;
        return Err(HandshakeError::Malformed(e));
    }
    let hello = match wire::Hello::decode(&wire::read_control(rd, kind, len).await?) {
        Ok(h) => h,
        Err(e) => {
            refuse(wr, &e.to_string()).await?;
            return Err(HandshakeError::Malformed(e));
        }
    };
    let Ok(key) = DatasetKey::new(&hello.namespace, &hello.name) else {
        let e = HandshakeError::UnknownDataset("unknown dataset");
        refuse(wr, &e.to_string()).await?;
        return Err(e);
    };
    let Some(transfer) = lookup.find(&key, &hello.revision) else {
        let e = HandshakeError::UnknownDataset("unknown dataset or revision");
        refuse(wr, &e.to_string()).await?;
        return Err(e);
    };
    let expected = wire::hello_mac(
        &transfer.token(),
        &nonce,
        &hello.revision,
        &key.namespace,
        &key.name,
    );
    if !constant_time_eq(&expected, &hello.mac) {
        let e = HandshakeError::BadCredential;
        refuse(wr, &e.to_string()).await?;
        return Err(e);
    }
    // A failed copy serves nothing: its peers must not take it for a live
    // fetcher (they fall back to the origin for what only it would read).
    // Said only to a client that proved it holds the token.
    if transfer.is_failed() {
        let e = HandshakeError::Failed;
        refuse(wr, &e.to_string()).await?;
        return Err(e);
    }
    // Subscribe before the snapshot so no announcement falls in between.
    let haves = transfer.subscribe_haves();
    Ok((transfer, haves))
}

async fn refuse(wr: &mut OwnedWriteHalf, why: &str) -> io::Result<()> {
    wire::write_frame(wr, wire::ERROR, wire::error_payload(why)).await?;
    wr.shutdown().await
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn send_haves(wr: &mut OwnedWriteHalf, records: &[ChunkRecord]) -> io::Result<()> {
    for batch in records.chunks(wire::HAVE_BATCH) {
        wire::write_frame(wr, wire::HAVE, &wire::encode_haves(batch)).await?;
    }
    Ok(())
}

/// What the writer sends next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outgoing {
    Piece(u32),
    /// The request was cancelled (or cannot be served).
    Reject(u32),
}

type Queue = (Mutex<VecDeque<Outgoing>>, Notify);

async fn read_requests(mut rd: BufReader<OwnedReadHalf>, queue: &Queue) -> io::Result<()> {
    loop {
        // Only REQUEST and CANCEL, 4 bytes each: anything else ends the
        // connection on its header, before its payload is read.
        let (kind, p) = wire::read_frame_of(&mut rd, &[wire::REQUEST, wire::CANCEL]).await?;
        let index = wire::parse_u32(&p)?;
        match kind {
            wire::REQUEST => {
                let mut q = lock(&queue.0);
                if q.len() >= MAX_QUEUED {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "too many requests queued",
                    ));
                }
                q.push_back(Outgoing::Piece(index));
            }
            wire::CANCEL => {
                let mut q = lock(&queue.0);
                if let Some(pos) = q.iter().position(|&o| o == Outgoing::Piece(index)) {
                    q.remove(pos);
                    // Tell the client the request is gone; it will not get it.
                    q.push_front(Outgoing::Reject(index));
                }
            }
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("unexpected frame {other}"),
                ));
            }
        }
        queue.1.notify_one();
    }
}

async fn write_loop(
    wr: &mut OwnedWriteHalf,
    transfer: &Arc<Transfer>,
    queue: &Queue,
    haves: &mut broadcast::Receiver<ChunkRecord>,
) -> io::Result<()> {
    loop {
        let next = next_outgoing(&mut lock(&queue.0), |i| transfer.uploads(i));
        match next {
            Some(Outgoing::Reject(index)) => {
                wire::write_frame(wr, wire::REJECT, &wire::u32_payload(index)).await?;
            }
            Some(Outgoing::Piece(index)) => {
                if index >= transfer.layout().chunk_count() || !transfer.has_chunk(index) {
                    wire::write_frame(wr, wire::REJECT, &wire::u32_payload(index)).await?;
                    continue;
                }
                let len = transfer.layout().chunk_len(index);
                transfer.count_upload(index);
                transfer.upload_limit().take(len).await;
                send_piece(wr, transfer, index).await?;
                transfer.served(len);
            }
            None => {
                tokio::select! {
                    _ = queue.1.notified() => {},
                    // Failed, replaced or removed: the session ends (the
                    // client's next handshake learns why).
                    _ = transfer.stopped() => return Ok(()),
                    r = haves.recv() => match r {
                        Ok(rec) => {
                            // Batch whatever else is already announced.
                            let mut batch = vec![rec];
                            while let Ok(more) = haves.try_recv() {
                                batch.push(more);
                            }
                            send_haves(wr, &batch).await?;
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            send_haves(wr, &transfer.have_snapshot()).await?;
                        }
                        Err(broadcast::error::RecvError::Closed) => return Ok(()),
                    },
                }
            }
        }
        // Announcements are not starved by a long request queue.
        let mut pending = Vec::new();
        while let Ok(rec) = haves.try_recv() {
            pending.push(rec);
        }
        if !pending.is_empty() {
            send_haves(wr, &pending).await?;
        }
    }
}

/// What to send next: a rejection first, then the requested chunk of
/// which this node has sent the fewest copies (the earliest asked among
/// equals). Every peer asks the node that fetched a chunk from the origin
/// for it at first; sending each such chunk to one peer before sending any
/// twice lets the peers pass it on, instead of this node's uplink carrying
/// every copy.
fn next_outgoing(queue: &mut VecDeque<Outgoing>, uploads: impl Fn(u32) -> u16) -> Option<Outgoing> {
    if let Some(pos) = queue.iter().position(|o| matches!(o, Outgoing::Reject(_))) {
        return queue.remove(pos);
    }
    let pos = queue
        .iter()
        .enumerate()
        .min_by_key(|&(pos, o)| match *o {
            Outgoing::Piece(i) => (uploads(i), pos),
            Outgoing::Reject(_) => (0, pos),
        })
        .map(|(pos, _)| pos)?;
    queue.remove(pos)
}

async fn send_piece(
    wr: &mut OwnedWriteHalf,
    transfer: &Arc<Transfer>,
    index: u32,
) -> io::Result<()> {
    let layout = transfer.layout();
    let len = layout.chunk_len(index);
    let frame_len = u32::try_from(len + 4).map_err(|_| io::Error::other("chunk too large"))?;
    let mut head = Vec::with_capacity(9);
    head.extend_from_slice(&wire::header(wire::PIECE, frame_len));
    head.extend_from_slice(&wire::u32_payload(index));
    wr.write_all(&head).await?;
    if transfer.corrupt_serving {
        // Test-only fault: flip one byte of every chunk.
        let mut buf = vec![0u8; len as usize];
        transfer
            .files()
            .read_chunk(index, &mut buf)
            .map_err(io::Error::other)?;
        if let Some(b) = buf.first_mut() {
            *b ^= 0xff;
        }
        return wr.write_all(&buf).await;
    }
    if let Some(chunk) = transfer.recent_chunk(index) {
        // Verified a moment ago and still in memory (written to disk
        // without passing through the page cache).
        wr.write_all(&chunk).await?;
        transfer.served_from_memory(len);
        return Ok(());
    }
    for seg in layout.segments(index) {
        let file = transfer.files().file(seg.file).map_err(io::Error::other)?;
        sendfile_all(wr, &file, seg.file_offset, seg.len).await?;
    }
    Ok(())
}

/// `sendfile(2)` of `len` bytes at `offset`, waiting for the socket as
/// needed.
async fn sendfile_all(
    wr: &OwnedWriteHalf,
    file: &std::fs::File,
    offset: u64,
    len: u64,
) -> io::Result<()> {
    let stream: &TcpStream = wr.as_ref();
    let mut off = offset as libc::off_t;
    let end = offset + len;
    while (off as u64) < end {
        let remaining = (end - off as u64) as usize;
        stream.writable().await?;
        match stream.try_io(Interest::WRITABLE, || {
            nix::sys::sendfile::sendfile(stream, file, Some(&mut off), remaining.min(1 << 30))
                .map_err(io::Error::from)
        }) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file shorter than listed",
                ));
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A transfer of one 10-byte file holding no chunk yet, with `token` as its
/// peer token (for tests of both ends of the protocol).
#[cfg(test)]
pub(crate) fn test_transfer(
    dir: &std::path::Path,
    token: [u8; 32],
    cfg: crate::transfer::TransferConfig,
) -> Arc<Transfer> {
    use swarmseed_proto::{ChunkLayout, pb};
    let store = crate::store::NodeStore::open(dir.join("root")).expect("store");
    let key = DatasetKey::new("ml", "llama").expect("key");
    let file = pb::FileEntry {
        path: "f".into(),
        size: 10,
        etag: "1".into(),
        ..Default::default()
    };
    let layout = Arc::new(ChunkLayout::new(vec![file], 64 * 1024).expect("layout"));
    let files = store
        .open_revision(&key, layout, crate::store::Reuse::default())
        .expect("revision");
    let identity = crate::attest::Identity::load_or_create(&dir.join("key")).expect("key");
    Transfer::new(
        key,
        Arc::new(files),
        &pb::Assignment {
            peer_token: token.to_vec(),
            ..Default::default()
        },
        Arc::new(identity),
        Metrics::register(&mut Default::default()),
        Arc::new(cfg),
        false,
    )
    .expect("transfer")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use tokio::io::AsyncReadExt;

    const TOKEN: [u8; 32] = [7; 32];
    /// Ample for anything local that should happen at once.
    const SOON: Duration = Duration::from_secs(2);

    struct OneTransfer(Arc<Transfer>);

    impl TransferLookup for OneTransfer {
        fn find(&self, key: &DatasetKey, revision: &RevisionId) -> Option<Arc<Transfer>> {
            (key.namespace == "ml" && key.name == "llama" && *revision == self.0.revision())
                .then(|| self.0.clone())
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
            let hello = wire::Hello {
                revision,
                mac: wire::hello_mac(&TOKEN, nonce, &revision, "ml", "llama"),
                namespace: "ml".into(),
                name: "llama".into(),
                node: "gpu-2".into(),
            }
            .encode();
            let mut frame = wire::header(wire::HELLO, hello.len() as u32).to_vec();
            frame.extend_from_slice(&hello);
            frame
        }

        /// A real peer's handshake from `source`: the WELCOME's chunk count.
        async fn handshake_from(&self, source: Ipv4Addr) -> (TcpStream, u32) {
            let mut s = self.connect_from(source).await;
            let nonce = server_hello(&mut s).await;
            s.write_all(&self.hello(&nonce)).await.unwrap();
            let (kind, p) = tokio::time::timeout(
                SOON,
                wire::read_frame_of(&mut s, &[wire::WELCOME, wire::ERROR]),
            )
            .await
            .expect("no answer to HELLO")
            .unwrap();
            assert_eq!(kind, wire::WELCOME, "{}", String::from_utf8_lossy(&p));
            (s, wire::parse_u32(&p).unwrap())
        }

        fn failed(&self, reason: &'static str) -> u64 {
            self.metrics
                .peer_handshakes_failed
                .get_or_create(&ReasonLabels { reason })
                .get()
        }
    }

    async fn server_hello(s: &mut TcpStream) -> [u8; 32] {
        let (_, p) = tokio::time::timeout(SOON, wire::read_frame_of(s, &[wire::SERVER_HELLO]))
            .await
            .expect("no SERVER_HELLO")
            .unwrap();
        wire::parse_server_hello(&p).unwrap()
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
        assert!(bytes.len() >= 5, "no ERROR frame: {bytes:?}");
        assert_eq!(bytes[0], wire::ERROR, "not an ERROR frame: {bytes:?}");
        String::from_utf8_lossy(&bytes[5..]).into_owned()
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
            s.write_all(&wire::header(wire::HELLO, 600)).await.unwrap();
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
        s.write_all(&wire::header(wire::HELLO, 1 << 20))
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
            let (kind, _) = wire::read_frame_of(&mut s, &[wire::SERVER_HELLO, wire::ERROR])
                .await
                .unwrap();
            if kind == wire::SERVER_HELLO {
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
        for (kind, len) in [(wire::REQUEST, 1 << 20), (wire::HAVE, wire::MAX_HAVE)] {
            let (mut s, _) = server.handshake_from(Ipv4Addr::LOCALHOST).await;
            s.write_all(&wire::header(kind, len)).await.unwrap();
            assert!(
                closed_within(&mut s, SOON).await.is_some(),
                "the server waits for a {} of {len} bytes",
                wire::kind_name(kind)
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

    #[test]
    fn a_source_over_its_share_is_refused_and_the_total_drops_the_oldest() {
        let mut p = PendingHandshakes::new(limits(Duration::from_secs(1), 3, 2));
        let [a, b, c]: [IpAddr; 3] = [1, 2, 3].map(|i| Ipv4Addr::new(10, 0, 0, i).into());
        let admit = |id, evicted| Admission::Admit { id, evicted };
        assert_eq!(p.admit(a, "a0"), admit(0, None));
        assert_eq!(p.admit(a, "a1"), admit(1, None));
        assert_eq!(p.admit(a, "a2"), Admission::SourceLimit);
        assert_eq!(p.admit(b, "b0"), admit(2, None));
        // The total is reached: the oldest goes, whoever it came from.
        assert_eq!(p.admit(c, "c0"), admit(3, Some("a0")));
        assert_eq!(p.len(), 3);
        // a0's share went with it.
        assert_eq!(p.admit(a, "a3"), admit(4, Some("a1")));
        // Releasing an evicted id again changes nothing.
        p.release(0);
        p.release(1);
        assert_eq!(p.len(), 3);
        for id in 2..5 {
            p.release(id);
        }
        assert_eq!(p.len(), 0);
        assert!(p.per_source.is_empty(), "{:?}", p.per_source);
    }

    #[test]
    fn sources_are_counted_by_ipv4_address_and_ipv6_64() {
        let v6 = |s: &str| -> IpAddr { s.parse().unwrap() };
        assert_eq!(source_key(v6("2001:db8:1:2:aa::1")), v6("2001:db8:1:2::"));
        assert_eq!(
            source_key(v6("2001:db8:1:2:aa::1")),
            source_key(v6("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            source_key(v6("2001:db8:1:2::1")),
            source_key(v6("2001:db8:1:3::1"))
        );
        assert_eq!(source_key(v6("::ffff:10.0.0.1")), v6("10.0.0.1"));
        assert_eq!(source_key(v6("10.0.0.1")), v6("10.0.0.1"));
    }

    #[test]
    fn refusals_are_logged_once_per_interval_with_their_count() {
        let mut t = LogThrottle::default();
        let t0 = Instant::now();
        let every = Duration::from_secs(10);
        assert_eq!(t.due(t0, every), Some(1));
        assert_eq!(t.due(t0 + Duration::from_secs(1), every), None);
        assert_eq!(t.due(t0 + Duration::from_secs(2), every), None);
        assert_eq!(t.due(t0 + every, every), Some(3));
    }

    #[test]
    fn rejections_first_then_the_least_sent_chunk() {
        let sent = |i: u32| [3, 0, 1, 0][i as usize];
        let mut q: VecDeque<Outgoing> = [0, 2, 3, 1].map(Outgoing::Piece).into();
        q.push_back(Outgoing::Reject(2));
        let order: Vec<_> = std::iter::from_fn(|| next_outgoing(&mut q, sent)).collect();
        assert_eq!(
            order,
            [
                Outgoing::Reject(2),
                Outgoing::Piece(3),
                Outgoing::Piece(1),
                Outgoing::Piece(2),
                Outgoing::Piece(0)
            ]
        );
    }
}
