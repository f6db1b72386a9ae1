//! Which chunk to ask for next: the swarm's bookkeeping as plain data.
//!
//! The board knows, for one revision, which chunks this node has verified,
//! how many connected peers hold each chunk (availability), what is in
//! flight, and the digest each chunk must hash to. Peer sessions ask it for
//! the next chunk to request from their peer: the rarest chunk that peer
//! holds, not yet verified and not in flight; once everything left is in
//! flight (endgame), a chunk may be requested from a second peer.

use swarmseed_proto::ChunkDigest;

use crate::store::ChunkRecord;

/// A set of chunk indices.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChunkSet {
    words: Vec<u64>,
    len: u32,
    count: u32,
}

impl ChunkSet {
    pub fn new(len: u32) -> Self {
        Self {
            words: vec![0; (len as usize).div_ceil(64)],
            len,
            count: 0,
        }
    }

    pub fn contains(&self, i: u32) -> bool {
        i < self.len && self.words[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    /// Inserts `i`; returns whether it was new.
    pub fn insert(&mut self, i: u32) -> bool {
        if i >= self.len || self.contains(i) {
            return false;
        }
        self.words[(i / 64) as usize] |= 1 << (i % 64);
        self.count += 1;
        true
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len).filter(|&i| self.contains(i))
    }
}

/// Most requests outstanding for one chunk in endgame.
const ENDGAME_DUPLICATES: u8 = 2;

#[derive(Debug)]
pub struct Board {
    verified: ChunkSet,
    /// The attestation of every verified chunk (what we re-serve).
    records: Vec<Option<ChunkRecord>>,
    /// The accepted attestation of each chunk: the digest it must hash to.
    expected: Vec<Option<ChunkRecord>>,
    availability: Vec<u16>,
    inflight: Vec<u8>,
    /// Chunks this node reads from the origin itself.
    origin: ChunkSet,
}

impl Board {
    pub fn new(chunks: u32) -> Self {
        let n = chunks as usize;
        Self {
            verified: ChunkSet::new(chunks),
            records: vec![None; n],
            expected: vec![None; n],
            availability: vec![0; n],
            inflight: vec![0; n],
            origin: ChunkSet::new(chunks),
        }
    }

    pub fn chunk_count(&self) -> u32 {
        self.verified.len()
    }

    pub fn verified(&self) -> &ChunkSet {
        &self.verified
    }

    pub fn is_verified(&self, i: u32) -> bool {
        self.verified.contains(i)
    }

    pub fn remaining(&self) -> u32 {
        self.verified.len() - self.verified.count()
    }

    pub fn is_complete(&self) -> bool {
        self.remaining() == 0
    }

    pub fn record(&self, i: u32) -> Option<&ChunkRecord> {
        self.records.get(i as usize)?.as_ref()
    }

    pub fn records(&self) -> impl Iterator<Item = &ChunkRecord> {
        self.records.iter().flatten()
    }

    pub fn expected(&self, i: u32) -> Option<ChunkDigest> {
        self.attestation(i).map(|r| r.digest)
    }

    /// The accepted attestation of chunk `i`.
    pub fn attestation(&self, i: u32) -> Option<ChunkRecord> {
        self.expected.get(i as usize).copied().flatten()
    }

    /// Learns the digest of a chunk from an accepted attestation (the
    /// first one wins).
    pub fn learn(&mut self, record: ChunkRecord) {
        if let Some(slot) = self.expected.get_mut(record.index as usize) {
            slot.get_or_insert(record);
        }
    }

    pub fn availability(&self, i: u32) -> u16 {
        self.availability[i as usize]
    }

    pub fn peer_gained(&mut self, i: u32) {
        let a = &mut self.availability[i as usize];
        *a = a.saturating_add(1);
    }

    /// A peer that held `has` went away.
    pub fn peer_lost(&mut self, has: &ChunkSet) {
        for i in has.iter() {
            let a = &mut self.availability[i as usize];
            *a = a.saturating_sub(1);
        }
    }

    pub fn inflight(&self, i: u32) -> u8 {
        self.inflight[i as usize]
    }

    pub fn begin(&mut self, i: u32) {
        self.inflight[i as usize] = self.inflight[i as usize].saturating_add(1);
    }

    /// A request for `i` is no longer in flight: delivered, rejected,
    /// failed, or its peer went away. Every `begin` (every pick) is released
    /// exactly once.
    pub fn release(&mut self, i: u32) {
        self.inflight[i as usize] = self.inflight[i as usize].saturating_sub(1);
    }

    /// Records a verified chunk; returns false if it was already verified
    /// (a duplicate from endgame). The request that delivered it, if any, is
    /// released separately.
    pub fn complete(&mut self, record: ChunkRecord) -> bool {
        let i = record.index;
        if !self.verified.insert(i) {
            return false;
        }
        self.expected[i as usize] = Some(record);
        self.records[i as usize] = Some(record);
        true
    }

    /// Marks chunks this node reads from the origin itself.
    pub fn assign_origin(&mut self, i: u32) {
        self.origin.insert(i);
    }

    pub fn is_origin(&self, i: u32) -> bool {
        self.origin.contains(i)
    }

    /// The next chunk to request from a peer holding `peer_has`: not
    /// verified, digest known, not one this node reads from the origin, not
    /// in flight, rarest first (ties broken by the scan starting at
    /// `cursor`). In endgame (nothing else left) a chunk in flight elsewhere
    /// may be picked once more. Marks the pick in flight.
    pub fn pick(&mut self, peer_has: &ChunkSet, cursor: u32) -> Option<u32> {
        let n = self.chunk_count();
        if n == 0 {
            return None;
        }
        let mut best: Option<(u16, u32)> = None;
        let mut endgame: Option<u32> = None;
        for k in 0..n {
            let i = (cursor.wrapping_add(k)) % n;
            if !peer_has.contains(i)
                || self.verified.contains(i)
                || self.expected[i as usize].is_none()
            {
                continue;
            }
            if self.inflight[i as usize] > 0 {
                if endgame.is_none() && self.inflight[i as usize] < ENDGAME_DUPLICATES {
                    endgame = Some(i);
                }
                continue;
            }
            if self.origin.contains(i) && self.availability[i as usize] == 0 {
                continue;
            }
            let a = self.availability[i as usize].max(1);
            if best.is_none_or(|(b, _)| a < b) {
                best = Some((a, i));
                if a == 1 {
                    break;
                }
            }
        }
        let pick = match best {
            Some((_, i)) => Some(i),
            None if self.in_endgame() => endgame,
            None => None,
        };
        if let Some(i) = pick {
            self.begin(i);
        }
        pick
    }

    /// Endgame: every chunk still missing is already in flight.
    fn in_endgame(&self) -> bool {
        (0..self.chunk_count()).all(|i| self.verified.contains(i) || self.inflight[i as usize] > 0)
    }

    /// The next chunk this node should read from the origin: one of its own
    /// (or fallback) chunks that no peer can give it and that is not in
    /// flight.
    pub fn pick_origin(&mut self) -> Option<u32> {
        let i = self.origin.iter().find(|&i| {
            !self.verified.contains(i)
                && self.inflight[i as usize] == 0
                && self.availability[i as usize] == 0
        })?;
        self.begin(i);
        Some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u32) -> ChunkRecord {
        ChunkRecord {
            index: i,
            digest: ChunkDigest([i as u8; 32]),
            signer: [0; 32],
            signature: [0; 64],
        }
    }

    fn set(n: u32, items: &[u32]) -> ChunkSet {
        let mut s = ChunkSet::new(n);
        items.iter().for_each(|&i| {
            s.insert(i);
        });
        s
    }

    #[test]
    fn picks_the_rarest_chunk_the_peer_has() {
        let mut b = Board::new(4);
        for i in 0..4 {
            b.learn(rec(i));
        }
        // chunk 2 is held by one peer, the others by three.
        for i in [0, 1, 3, 0, 1, 3, 0, 1, 2, 3] {
            b.peer_gained(i);
        }
        assert_eq!(b.pick(&set(4, &[0, 1, 2, 3]), 0), Some(2));
        assert_eq!(b.inflight(2), 1);
        // Next pick skips the in-flight chunk.
        assert_eq!(b.pick(&set(4, &[2, 3]), 0), Some(3));
    }

    #[test]
    fn never_picks_a_chunk_whose_digest_is_unknown_or_verified() {
        let mut b = Board::new(3);
        b.learn(rec(1));
        b.learn(rec(2));
        assert!(b.complete(rec(2)));
        assert_eq!(b.pick(&set(3, &[0, 1, 2]), 0), Some(1));
        assert_eq!(b.remaining(), 2);
        assert!(!b.complete(rec(2)), "duplicate completion is reported");
    }

    #[test]
    fn endgame_allows_one_duplicate_request() {
        let mut b = Board::new(2);
        b.learn(rec(0));
        b.learn(rec(1));
        let all = set(2, &[0, 1]);
        assert!(b.pick(&all, 0).is_some());
        assert!(b.pick(&all, 0).is_some());
        // Everything missing is in flight: endgame picks a duplicate...
        assert!(b.pick(&all, 0).is_some());
        assert!(b.pick(&all, 0).is_some());
        // ...but no more than two requests per chunk.
        assert_eq!(b.pick(&all, 0), None);
    }

    #[test]
    fn origin_chunks_go_to_the_origin_unless_a_peer_has_them() {
        let mut b = Board::new(2);
        b.learn(rec(0));
        b.assign_origin(0);
        b.assign_origin(1);
        assert_eq!(b.pick(&set(2, &[0]), 0), None, "no peer: origin's job");
        assert_eq!(b.pick_origin(), Some(0));
        assert_eq!(b.pick_origin(), Some(1));
        assert_eq!(b.pick_origin(), None);
        b.release(0);
        b.peer_gained(0);
        assert_eq!(b.pick_origin(), None, "a peer has it now");
        assert_eq!(b.pick(&set(2, &[0]), 0), Some(0));
    }

    #[test]
    fn a_lost_peer_lowers_availability() {
        let mut b = Board::new(3);
        let has = set(3, &[0, 2]);
        for i in has.iter() {
            b.peer_gained(i);
        }
        b.peer_lost(&has);
        assert_eq!((b.availability(0), b.availability(2)), (0, 0));
    }
}
