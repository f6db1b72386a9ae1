//! Serves verified chunks to peers (the server side of [`crate::wire`]).
//!
//! A chunk this node verified a moment ago is sent from the memory that
//! still holds it (it was written to disk past the page cache); any other
//! goes from the file to the socket with `sendfile(2)`, no copy through
//! this process. A connection must prove it holds the
//! dataset's peer token (a MAC over a fresh nonce) before it learns
//! anything.

use crate::lock;
use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use swarmseed_proto::RevisionId;
use tokio::io::Interest;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span};

use crate::store::{ChunkRecord, DatasetKey};
use crate::transfer::Transfer;
use crate::wire;

/// Finds the transfer a peer asks for.
pub trait TransferLookup: Send + Sync + 'static {
    fn find(&self, key: &DatasetKey, revision: &RevisionId) -> Option<Arc<Transfer>>;
}

/// Most requests a client may queue on one connection.
const MAX_QUEUED: usize = 64;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Unsent bytes a connection's socket holds at most (see
/// [`wire::set_unsent_limit`]): announcements reach a peer soon after the
/// chunk is verified here, even while pieces queue for it.
const UNSENT_LIMIT: usize = 64 * 1024;

pub async fn serve(
    listener: TcpListener,
    lookup: Arc<dyn TransferLookup>,
    shutdown: CancellationToken,
) -> io::Result<()> {
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
        let lookup = lookup.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(
            async move {
                tokio::select! {
                    r = connection(stream, lookup) => if let Err(e) = r {
                        debug!(error = %e, "peer connection ended");
                    },
                    _ = shutdown.cancelled() => {},
                }
            }
            .instrument(info_span!("serve", peer = %addr)),
        );
    }
}

async fn connection(stream: TcpStream, lookup: Arc<dyn TransferLookup>) -> io::Result<()> {
    stream.set_nodelay(true)?;
    wire::set_unsent_limit(&stream, UNSENT_LIMIT)?;
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);

    let nonce: [u8; 32] = rand::random();
    let mut hello = Vec::with_capacity(40);
    hello.extend_from_slice(&wire::MAGIC);
    hello.extend_from_slice(&nonce);
    wire::write_frame(&mut wr, wire::SERVER_HELLO, &hello).await?;

    let (kind, len) = tokio::time::timeout(HANDSHAKE_TIMEOUT, wire::read_header(&mut rd))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no HELLO"))??;
    if kind != wire::HELLO {
        return refuse(&mut wr, "expected HELLO").await;
    }
    let hello = wire::Hello::decode(&wire::read_control(&mut rd, len).await?)?;
    let key = match DatasetKey::new(&hello.namespace, &hello.name) {
        Ok(k) => k,
        Err(_) => return refuse(&mut wr, "unknown dataset").await,
    };
    let Some(transfer) = lookup.find(&key, &hello.revision) else {
        return refuse(&mut wr, "unknown dataset or revision").await;
    };
    // A failed copy serves nothing: its peers must not take it for a live
    // fetcher (they fall back to the origin for what only it would read).
    if transfer.is_failed() {
        return refuse(&mut wr, "dataset failed on this node").await;
    }
    let expected = wire::hello_mac(
        &transfer.token(),
        &nonce,
        &hello.revision,
        &key.namespace,
        &key.name,
    );
    if !constant_time_eq(&expected, &hello.mac) {
        return refuse(&mut wr, "bad credential").await;
    }

    // Subscribe before the snapshot so no announcement falls in between.
    let mut haves = transfer.subscribe_haves();
    wire::write_frame(
        &mut wr,
        wire::WELCOME,
        &wire::u32_payload(transfer.layout().chunk_count()),
    )
    .await?;
    send_haves(&mut wr, &transfer.have_snapshot()).await?;

    let queue = Arc::new((Mutex::new(VecDeque::<Outgoing>::new()), Notify::new()));
    let reader = {
        let queue = queue.clone();
        tokio::spawn(async move { read_requests(rd, &queue).await })
    };
    let result = write_loop(&mut wr, &transfer, &queue, &mut haves).await;
    reader.abort();
    result
}

async fn refuse(wr: &mut OwnedWriteHalf, why: &str) -> io::Result<()> {
    wire::write_frame(wr, wire::ERROR, why.as_bytes()).await?;
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

async fn read_requests(
    mut rd: BufReader<tokio::net::tcp::OwnedReadHalf>,
    queue: &Queue,
) -> io::Result<()> {
    loop {
        let (kind, len) = wire::read_header(&mut rd).await?;
        let p = wire::read_control(&mut rd, len).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

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
