//! Serves verified chunks to peers (the server side of [`crate::wire`]).
//!
//! [`gate`] bounds connections until they authenticate; [`upload`] serves
//! the ones that did, from the [`ServedRevision`] they asked for (never
//! from the download side).
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
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use swarmseed_proto::RevisionId;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span, warn};

use crate::metrics::Metrics;
use crate::served::ServedRevision;
use crate::store::DatasetKey;
use crate::wire::handshake;
use crate::wire::{self, Frame};

mod gate;
mod upload;

pub use gate::HandshakeLimits;
use gate::{Admission, Gate, HandshakeError, HandshakeSlot, LogThrottle, PendingHandshakes};

/// Finds the revision a peer asks for.
pub trait RevisionLookup: Send + Sync + 'static {
    fn find(&self, key: &DatasetKey, revision: &RevisionId) -> Option<Arc<ServedRevision>>;
}

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
    lookup: Arc<dyn RevisionLookup>,
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
    let frame = Frame::Error(format!("busy: {why}")).encode();
    let _ = stream.try_write(&frame);
}

async fn connection(
    stream: TcpStream,
    lookup: Arc<dyn RevisionLookup>,
    slot: HandshakeSlot,
    dropped: CancellationToken,
    limits: HandshakeLimits,
) -> io::Result<()> {
    stream.set_nodelay(true)?;
    wire::set_unsent_limit(&stream, UNSENT_LIMIT)?;
    let (mut rd, mut wr) = stream.into_split();

    let find = |key: &DatasetKey, revision: &RevisionId| lookup.find(key, revision);
    let result = tokio::select! {
        r = tokio::time::timeout(limits.timeout, handshake::server(&mut rd, &mut wr, find)) => {
            r.map_or(Err(HandshakeError::Timeout(limits.timeout)), |r| r.map_err(HandshakeError::from))
        }
        _ = dropped.cancelled() => Err(HandshakeError::Evicted(limits.max_pending)),
    };
    let gate = slot.gate.clone();
    // Authenticated or not, it no longer counts as pending.
    drop(slot);
    let served = match result {
        Ok((served, _hello)) => served,
        Err(e) => {
            if matches!(e, HandshakeError::Evicted(_)) {
                tell_busy(wr.as_ref(), &e);
            }
            gate.failed(&e);
            return Err(io::Error::other(e));
        }
    };
    upload::serve(rd, wr, served).await
}

/// A transfer of one 10-byte file holding no chunk yet, with `token` as its
/// peer token (for tests of both ends of the protocol).
#[cfg(test)]
pub(crate) fn test_transfer(
    dir: &std::path::Path,
    token: [u8; 32],
    cfg: crate::transfer::TransferConfig,
) -> Arc<crate::transfer::Transfer> {
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
    crate::transfer::Transfer::new(
        key,
        Arc::new(files),
        &pb::Assignment {
            peer_token: token.to_vec(),
            ..Default::default()
        },
        Arc::new(identity),
        Metrics::register(&mut Default::default()),
        Arc::new(cfg),
    )
    .expect("transfer")
}

#[cfg(test)]
mod tests;
