//! The upload side of an authenticated connection: the have-set and
//! every announcement after it out, REQUESTs and CANCELs in, PIECEs out
//! (from memory when the chunk was verified a moment ago, else with
//! `sendfile(2)` from the files). It reads only the [`ServedRevision`].

use crate::lock;
use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex};

use tokio::io::Interest;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Notify, broadcast};

use crate::attest::ChunkRecord;
use crate::served::ServedRevision;
use crate::wire::handshake;
use crate::wire::{self, Frame, Kind};

/// Most requests a client may queue on one connection.
const MAX_QUEUED: usize = 64;

/// Read buffer of an authenticated connection: it carries only REQUEST and
/// CANCEL frames (9 bytes each, [`MAX_QUEUED`] in flight).
const REQUEST_BUFFER: usize = 1024;

/// Welcomes a client that authenticated, then serves it until it leaves,
/// breaks the protocol, or the revision is no longer served.
pub(super) async fn serve(
    rd: OwnedReadHalf,
    mut wr: OwnedWriteHalf,
    served: Arc<ServedRevision>,
) -> io::Result<()> {
    // Subscribe before the snapshot so no announcement falls in between.
    let mut haves = served.subscribe_haves();
    handshake::welcome(&mut wr, served.layout().chunk_count()).await?;
    send_haves(&mut wr, &served.have_snapshot()).await?;

    let rd = BufReader::with_capacity(REQUEST_BUFFER, rd);
    let queue = Arc::new((Mutex::new(VecDeque::<Outgoing>::new()), Notify::new()));
    let mut reader = {
        let queue = queue.clone();
        tokio::spawn(async move { read_requests(rd, &queue).await })
    };
    // A client that breaks the protocol (or leaves) ends the connection
    // then, not at the next failed write.
    let result = tokio::select! {
        r = write_loop(&mut wr, &served, &queue, &mut haves) => r,
        r = &mut reader => r.unwrap_or_else(|e| Err(io::Error::other(e))),
    };
    reader.abort();
    result
}

async fn send_haves(wr: &mut OwnedWriteHalf, records: &[ChunkRecord]) -> io::Result<()> {
    let mut frames = Vec::new();
    wire::encode_haves(records, &mut frames);
    wr.write_all(&frames).await
}

/// What the writer sends next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outgoing {
    Piece(u32),
    /// The request was cancelled (or cannot be served).
    Reject(u32),
}

type Queue = (Mutex<VecDeque<Outgoing>>, Notify);

async fn read_requests(mut rd: BufReader<OwnedReadHalf>, queue: &Queue) -> io::Result<()> {
    loop {
        // Only REQUEST and CANCEL, 4 bytes each: anything else ends the
        // connection on its header, before its payload is read.
        let frame = wire::read_frame(&mut rd, &[Kind::Request, Kind::Cancel]).await?;
        match frame {
            Frame::Request(index) => {
                let mut q = lock(&queue.0);
                if q.len() >= MAX_QUEUED {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "too many requests queued",
                    ));
                }
                q.push_back(Outgoing::Piece(index));
            }
            Frame::Cancel(index) => {
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
                    format!("unexpected frame {}", other.kind() as u8),
                ));
            }
        }
        queue.1.notify_one();
    }
}

async fn write_loop(
    wr: &mut OwnedWriteHalf,
    served: &Arc<ServedRevision>,
    queue: &Queue,
    haves: &mut broadcast::Receiver<ChunkRecord>,
) -> io::Result<()> {
    loop {
        let next = next_outgoing(&mut lock(&queue.0), |i| served.uploads(i));
        match next {
            Some(Outgoing::Reject(index)) => {
                wire::write_frame(wr, &Frame::Reject(index)).await?;
            }
            Some(Outgoing::Piece(index)) => {
                if index >= served.layout().chunk_count() || !served.has_chunk(index) {
                    wire::write_frame(wr, &Frame::Reject(index)).await?;
                    continue;
                }
                let len = served.layout().chunk_len(index);
                served.count_upload(index);
                served.upload_limit().take(len).await;
                send_piece(wr, served, index).await?;
                served.served(len);
            }
            None => {
                tokio::select! {
                    _ = queue.1.notified() => {},
                    // Failed, replaced or removed: the session ends (the
                    // client's next handshake learns why).
                    _ = served.stopped() => return Ok(()),
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
                            send_haves(wr, &served.have_snapshot()).await?;
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
    served: &Arc<ServedRevision>,
    index: u32,
) -> io::Result<()> {
    let layout = served.layout();
    let len = layout.chunk_len(index);
    wr.write_all(&wire::piece_head(index, len)?).await?;
    #[cfg(feature = "fault-injection")]
    if crate::fault::corrupt_serving() {
        // Flip one byte of every chunk.
        let mut buf = vec![0u8; len as usize];
        served
            .files()
            .read_chunk(index, &mut buf)
            .map_err(io::Error::other)?;
        if let Some(b) = buf.first_mut() {
            *b ^= 0xff;
        }
        return wr.write_all(&buf).await;
    }
    if let Some(chunk) = served.recent_chunk(index) {
        // Verified a moment ago and still in memory (written to disk
        // without passing through the page cache).
        wr.write_all(&chunk).await?;
        served.served_from_memory(len);
        return Ok(());
    }
    for seg in layout.segments(index) {
        let file = served.files().file(seg.file).map_err(io::Error::other)?;
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
