//! The download session with one peer as plain data: what it asked for,
//! what its peer holds, how fast it serves, and what to do on each frame,
//! verified piece and tick. No socket and no clock of its own: the async
//! shell ([`super::peer`]) feeds it and sends what it returns, and the
//! unit tests drive it directly.
//!
//! Every method that touches the swarm takes the [`Board`]: the caller
//! holds the session's lock, then the swarm's (always in that order: see
//! [`super::swarm`]).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use swarmseed_proto::{ChunkDigest, ChunkLayout};

use super::rate::RecentRate;
use crate::attest::ChunkRecord;
use crate::board::{Board, ChunkSet, ScanOrder};
use crate::wire::Frame;

/// Requests one session keeps in flight for chunks its peer alone holds
/// (when other peers could relay them).
const SOLE_SOURCE_REQUESTS: usize = 2;

/// How a session ended, or why it must.
#[derive(Debug, thiserror::Error)]
pub(super) enum SessionError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("timed out: {0}")]
    Timeout(&'static str),
    #[error("peer refused: {0}")]
    Refused(String),
    #[error("peer sent chunk {0} whose digest does not match")]
    BadData(u32),
    #[error("peer stalled with requests outstanding")]
    Stalled,
    #[error("peer protocol violation: {0}")]
    Protocol(String),
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
}

impl From<crate::wire::handshake::ClientError> for SessionError {
    fn from(e: crate::wire::handshake::ClientError) -> Self {
        use crate::wire::handshake::ClientError;
        match e {
            ClientError::Io(e) => Self::Io(e),
            ClientError::Timeout(what) => Self::Timeout(what),
            ClientError::Refused(why) => Self::Refused(why),
        }
    }
}

impl SessionError {
    pub(super) fn label(&self) -> &'static str {
        match self {
            Self::Io(_) => "io",
            Self::Timeout(_) => "timeout",
            Self::Refused(_) => "refused",
            Self::BadData(_) => "bad_data",
            Self::Stalled => "stalled",
            Self::Protocol(_) => "protocol",
            Self::Store(_) => "store",
        }
    }
}

/// What the session asks of the swarm next.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Next {
    /// Send these frames (REQUESTs or CANCELs; none: nothing to send).
    Send(Vec<Frame>),
    /// Every chunk is verified: the session is done.
    Complete,
}

/// One download session's state.
pub(super) struct PeerSession {
    layout_chunks: u32,
    chunk_size: u64,
    max_depth: usize,
    stall_timeout: Duration,
    order: ScanOrder,
    /// The chunks its peer announced (and this node accepted).
    peer_has: ChunkSet,
    /// Requested and neither delivered nor rejected yet.
    outstanding: HashSet<u32>,
    rate: RecentRate,
    last_progress: Instant,
}

impl PeerSession {
    /// A session that has just been welcomed, asking chunks in `order`.
    pub(super) fn new(
        layout: &ChunkLayout,
        order: ScanOrder,
        stall_timeout: Duration,
        now: Instant,
    ) -> Self {
        Self {
            layout_chunks: layout.chunk_count(),
            chunk_size: layout.chunk_size(),
            max_depth: max_depth(layout.chunk_size()),
            stall_timeout,
            order,
            peer_has: ChunkSet::new(layout.chunk_count()),
            outstanding: HashSet::new(),
            rate: RecentRate::new(now),
            last_progress: now,
        }
    }

    /// Requests to send now: up to the depth the peer's rate calls for,
    /// rarest first, few for chunks only this peer holds when `relays`
    /// (other peers are up to pass them on).
    pub(super) fn fill(&mut self, board: &mut Board, now: Instant, relays: bool) -> Next {
        if board.is_complete() {
            return Next::Complete;
        }
        let depth = self
            .rate
            .session_depth(now, self.max_depth, self.chunk_size);
        let mut requests = Vec::new();
        while self.outstanding.len() < depth {
            // With other peers to relay from, keep few requests here for
            // chunks only this peer holds: everyone else is asking it for
            // the same fresh chunks, and the ones not in flight can come
            // from whoever gets them first.
            let sole = self
                .outstanding
                .iter()
                .filter(|&&i| board.availability(i) <= 1)
                .count();
            let skip_sole = relays && sole >= SOLE_SOURCE_REQUESTS;
            match board.pick(&self.peer_has, self.order, skip_sole, &self.outstanding) {
                Some(i) => {
                    self.outstanding.insert(i);
                    requests.push(Frame::Request(i));
                }
                None => break,
            }
        }
        Next::Send(requests)
    }

    /// Endgame: CANCELs for what is outstanding here but another peer (or
    /// the origin) delivered already.
    pub(super) fn cancels(&self, board: &Board) -> Vec<Frame> {
        let mut c: Vec<u32> = self
            .outstanding
            .iter()
            .copied()
            .filter(|&i| board.is_verified(i))
            .collect();
        c.sort_unstable();
        c.into_iter().map(Frame::Cancel).collect()
    }

    /// Announced chunks whose attestations the shell found valid: the
    /// board learns their digests and that this peer holds them. Whether
    /// this peer now holds a chunk it did not before.
    pub(super) fn on_have(&mut self, board: &mut Board, valid: Vec<ChunkRecord>) -> bool {
        let mut gained = false;
        for rec in valid {
            if rec.index >= self.layout_chunks {
                continue;
            }
            if let Some(expected) = board.expected(rec.index)
                && expected != rec.digest
            {
                // Two fetchers disagree: the origin changed under us. Keep
                // the first; never this one.
                continue;
            }
            board.learn(rec);
            if self.peer_has.insert(rec.index) {
                board.peer_gained(rec.index);
                gained = true;
            }
        }
        gained
    }

    /// A PIECE header: whether its body may be read (the chunk exists, has
    /// that length, and was asked for here).
    pub(super) fn on_piece_header(
        &self,
        layout: &ChunkLayout,
        index: u32,
        data_len: u64,
    ) -> Result<(), SessionError> {
        if index >= layout.chunk_count() || data_len != layout.chunk_len(index) {
            return Err(SessionError::Protocol(format!(
                "PIECE {index} of {data_len} bytes"
            )));
        }
        if !self.outstanding.contains(&index) {
            return Err(SessionError::Protocol(format!("unrequested PIECE {index}")));
        }
        Ok(())
    }

    /// A PIECE body hashed to `digest`: a digest the board does not expect
    /// drops the peer. Otherwise whether the request is still this
    /// session's to release (not if it ended meanwhile, or the chunk was
    /// cancelled and rejected).
    pub(super) fn on_piece_hashed(
        &mut self,
        board: &Board,
        index: u32,
        digest: ChunkDigest,
    ) -> Result<bool, SessionError> {
        if board.expected(index) != Some(digest) {
            return Err(SessionError::BadData(index));
        }
        Ok(self.outstanding.remove(&index))
    }

    /// A REJECT: the peer will not send `index` (cancelled, or no longer
    /// held). Whether the board changed.
    pub(super) fn on_reject(&mut self, board: &mut Board, index: u32) -> bool {
        let mine = self.outstanding.remove(&index);
        if mine {
            board.release(index);
        }
        mine
    }

    /// A request was answered: `bytes` of chunk arrived (0: rejected).
    pub(super) fn on_resolved(&mut self, now: Instant, bytes: u64) {
        self.last_progress = now;
        self.rate.record(now, bytes);
    }

    /// When the peer counts as stalled if nothing arrives: only while
    /// requests are outstanding.
    pub(super) fn stall_deadline(&self) -> Option<Instant> {
        (!self.outstanding.is_empty()).then(|| self.last_progress + self.stall_timeout)
    }

    /// A tick at `now`: a peer with requests outstanding that sent nothing
    /// for the stall timeout is dropped. With none outstanding the clock
    /// does not run.
    pub(super) fn on_timer(&mut self, now: Instant) -> Result<(), SessionError> {
        match self.stall_deadline() {
            Some(deadline) if now >= deadline => Err(SessionError::Stalled),
            Some(_) => Ok(()),
            None => {
                self.last_progress = now;
                Ok(())
            }
        }
    }

    /// The session ended (its peer left, stalled, lied, or the transfer
    /// stopped): what it asked for is free for others, and what its peer
    /// held no longer counts as available.
    pub(super) fn close(&mut self, board: &mut Board) {
        for i in self.outstanding.drain() {
            board.release(i);
        }
        board.peer_lost(&self.peer_has);
        self.peer_has = ChunkSet::new(self.layout_chunks);
    }
}

/// Most requests in flight to one peer: about 8 MiB, enough to fill a fast
/// link. A session keeps fewer when its peer serves it slowly (see
/// [`RecentRate::session_depth`]).
fn max_depth(chunk_size: u64) -> usize {
    ((8 << 20) / chunk_size.max(1)).clamp(super::rate::MIN_DEPTH as u64, 16) as usize
}

#[cfg(test)]
mod tests;
