//! Which chunk to ask for next: the swarm's bookkeeping as plain data.
//!
//! The board knows, for one revision, which chunks this node has verified,
//! how many connected peers hold each chunk (availability), what is in
//! flight, and the digest each chunk must hash to. Peer sessions ask it for
//! the next chunk to request from their peer: the rarest chunk that peer
//! holds, not yet verified and not in flight; once everything left is in
//! flight (endgame), a chunk may be requested from a second peer.

use std::collections::HashSet;
use swarmseed_proto::ChunkDigest;

use crate::attest::ChunkRecord;

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

/// The order in which one session scans the chunks for its next request.
///
/// New chunks appear in runs (a fetcher reads its range front to back), so
/// sessions that scanned from different starts in index order would still
/// all ask for the first chunk of a run, and a node would send the same
/// chunk to every peer at once, leaving none of them anything to pass on.
/// A random start and a random stride coprime to the chunk count visit
/// every chunk once, in an order that differs between sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanOrder {
    start: u32,
    stride: u32,
}

impl ScanOrder {
    /// Index order from chunk 0.
    pub const SEQUENTIAL: Self = Self {
        start: 0,
        stride: 1,
    };

    /// A random order over `n` chunks.
    pub fn random(n: u32) -> Self {
        if n < 2 {
            return Self::SEQUENTIAL;
        }
        let start = rand::random::<u32>() % n;
        loop {
            let stride = 1 + rand::random::<u32>() % (n - 1);
            if gcd(stride, n) == 1 {
                return Self { start, stride };
            }
        }
    }

    /// The `k`-th chunk visited (`k < n`).
    fn nth(self, k: u32, n: u32) -> u32 {
        ((self.start as u64 + k as u64 * self.stride as u64) % n as u64) as u32
    }
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
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
    /// in flight, rarest first (ties broken by
    /// the session's scan `order`). With `skip_sole`, chunks no other peer
    /// holds are passed over. In endgame (nothing else left) a chunk in
    /// flight elsewhere may be picked once more, but never one in `asked`,
    /// the chunks this session has requested already: its peer would send
    /// it twice. Marks the pick in flight.
    pub fn pick(
        &mut self,
        peer_has: &ChunkSet,
        order: ScanOrder,
        skip_sole: bool,
        asked: &HashSet<u32>,
    ) -> Option<u32> {
        let n = self.chunk_count();
        if n == 0 {
            return None;
        }
        let mut best: Option<(u16, u32)> = None;
        let mut endgame: Option<u32> = None;
        for k in 0..n {
            let i = order.nth(k, n);
            if !peer_has.contains(i)
                || self.verified.contains(i)
                || self.expected[i as usize].is_none()
            {
                continue;
            }
            if self.inflight[i as usize] > 0 {
                if endgame.is_none()
                    && self.inflight[i as usize] < ENDGAME_DUPLICATES
                    && !asked.contains(&i)
                {
                    endgame = Some(i);
                }
                continue;
            }
            if self.origin.contains(i) && self.availability[i as usize] == 0 {
                continue;
            }
            if skip_sole && self.availability[i as usize] <= 1 {
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

    /// Whether chunk `i` is vouched for: verified here, or attested by a
    /// fetcher, or held by a peer.
    fn vouched(&self, i: u32) -> bool {
        self.verified.contains(i)
            || self.expected[i as usize].is_some()
            || self.availability[i as usize] > 0
    }

    /// Whether every chunk of `ranges` is vouched for: a fetcher with these
    /// ranges is done with them.
    pub fn all_vouched(&self, ranges: &[(u32, u32)]) -> bool {
        let n = self.chunk_count();
        ranges
            .iter()
            .all(|&(s, e)| (s..e.min(n)).all(|i| self.vouched(i)))
    }

    /// A chunk of another fetcher's ranges for this node to read from the
    /// origin, once its own are all vouched for. `fetchers` holds
    /// every fetcher's ranges in plan order, this node's at `me`.
    ///
    /// Fetchers read their ranges front to back, and on shared links some
    /// fall behind; the last one to finish holds up every node. A helper
    /// takes chunks nobody has vouched for yet from the back of the range
    /// with the most of them left, and only a chunk with more than `margin`
    /// such chunks before it (see [`help_margin`]): the range's own fetcher
    /// works there, and a chunk both read is origin egress spent twice.
    ///
    /// The helpers are the fetchers whose ranges are all vouched for, which
    /// every node sees alike from the attestations. They share the chunks
    /// out between them, so no two read the same chunk, and however few
    /// have finished, together they may take any chunk.
    pub fn pick_help(
        &mut self,
        fetchers: &[Vec<(u32, u32)>],
        me: usize,
        margin: usize,
    ) -> Option<u32> {
        let n = self.chunk_count();
        // This node helps only once the others can tell: while its own
        // last reads are in flight it would count itself and they would not.
        let helping: Vec<bool> = fetchers.iter().map(|r| self.all_vouched(r)).collect();
        if !helping.get(me).copied().unwrap_or(false) {
            return None;
        }
        // Each chunk goes to one helper by rendezvous hashing: the helper
        // with the highest score for it. Every helper gets about the same
        // share, and a fetcher that starts helping takes its share from all
        // the others, so views that lag each other by an announcement
        // disagree on few chunks.
        let helpers: Vec<u64> = (0..fetchers.len() as u64)
            .filter(|&f| helping[f as usize])
            .collect();
        let mine = |i: u32| {
            let score = |f: u64| splitmix64((u64::from(i) << 32) | f);
            helpers.iter().copied().max_by_key(|&f| score(f)) == Some(me as u64)
        };
        let open =
            |i: u32| !self.vouched(i) && self.inflight[i as usize] == 0 && !self.origin.contains(i);
        // The others' ranges with more open chunks than the margin, most
        // first.
        let mut ranges: Vec<(usize, std::ops::Range<u32>)> = fetchers
            .iter()
            .enumerate()
            .filter(|&(f, _)| f != me)
            .flat_map(|(_, r)| r.iter().copied())
            .map(|(s, e)| {
                let range = s..e.min(n);
                (range.clone().filter(|&i| open(i)).count(), range)
            })
            .filter(|&(count, _)| count > margin)
            .collect();
        ranges.sort_unstable_by_key(|(count, _)| std::cmp::Reverse(*count));
        // A range's open chunks after its first `margin + 1`, last first.
        let pick = ranges.into_iter().find_map(|(count, range)| {
            range
                .rev()
                .filter(|&i| open(i))
                .take(count - margin - 1)
                .find(|&i| mine(i))
        })?;
        self.begin(pick);
        Some(pick)
    }
}

/// A well-mixed 64-bit hash of `x` (SplitMix64's finaliser).
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Unvouched chunks at the front of a range that a helper leaves to the
/// range's own fetcher, for a helper that keeps `depth` origin reads in
/// flight. Helpers cannot see the fetcher's reads in flight, but it reads
/// the same origin about as fast as they do: about `depth` at once, and
/// `depth` more before a helper's read is announced.
pub fn help_margin(depth: usize) -> usize {
    2 * depth + 1
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    /// `Board::pick` in plan order, no chunks skipped, none asked before.
    fn pick_seq(b: &mut Board, has: &ChunkSet) -> Option<u32> {
        b.pick(has, ScanOrder::SEQUENTIAL, false, &HashSet::new())
    }

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
        assert_eq!(pick_seq(&mut b, &set(4, &[0, 1, 2, 3])), Some(2));
        assert_eq!(b.inflight(2), 1);
        // Next pick skips the in-flight chunk.
        assert_eq!(pick_seq(&mut b, &set(4, &[2, 3])), Some(3));
    }

    #[test]
    fn never_picks_a_chunk_whose_digest_is_unknown_or_verified() {
        let mut b = Board::new(3);
        b.learn(rec(1));
        b.learn(rec(2));
        assert!(b.complete(rec(2)));
        assert_eq!(pick_seq(&mut b, &set(3, &[0, 1, 2])), Some(1));
        assert_eq!(b.remaining(), 2);
        assert!(!b.complete(rec(2)), "duplicate completion is reported");
    }

    #[test]
    fn endgame_allows_one_duplicate_request() {
        let mut b = Board::new(2);
        b.learn(rec(0));
        b.learn(rec(1));
        let all = set(2, &[0, 1]);
        assert!(pick_seq(&mut b, &all).is_some());
        assert!(pick_seq(&mut b, &all).is_some());
        // Everything missing is in flight: endgame picks a duplicate...
        assert!(pick_seq(&mut b, &all).is_some());
        assert!(pick_seq(&mut b, &all).is_some());
        // ...but no more than two requests per chunk.
        assert_eq!(pick_seq(&mut b, &all), None);
    }

    #[test]
    fn endgame_never_asks_one_peer_twice_for_a_chunk() {
        let mut b = Board::new(1);
        b.learn(rec(0));
        let all = set(1, &[0]);
        let asked: HashSet<u32> = [0].into();
        assert_eq!(pick_seq(&mut b, &all), Some(0));
        // In endgame, but this session asked for chunk 0 already.
        assert_eq!(b.pick(&all, ScanOrder::SEQUENTIAL, false, &asked), None);
        // Another session may ask its peer.
        assert_eq!(pick_seq(&mut b, &all), Some(0));
    }

    #[test]
    fn origin_chunks_go_to_the_origin_unless_a_peer_has_them() {
        let mut b = Board::new(2);
        b.learn(rec(0));
        b.assign_origin(0);
        b.assign_origin(1);
        assert_eq!(
            pick_seq(&mut b, &set(2, &[0])),
            None,
            "no peer: origin's job"
        );
        assert_eq!(b.pick_origin(), Some(0));
        assert_eq!(b.pick_origin(), Some(1));
        assert_eq!(b.pick_origin(), None);
        b.release(0);
        b.peer_gained(0);
        assert_eq!(b.pick_origin(), None, "a peer has it now");
        assert_eq!(pick_seq(&mut b, &set(2, &[0])), Some(0));
    }

    #[test]
    fn skip_sole_passes_over_chunks_only_this_peer_holds() {
        let mut b = Board::new(3);
        for i in 0..3 {
            b.learn(rec(i));
        }
        // Chunk 0 is held by this peer alone, chunk 1 by two peers.
        for i in [0, 1, 1] {
            b.peer_gained(i);
        }
        let has = set(3, &[0, 1]);
        assert_eq!(
            b.pick(&has, ScanOrder::SEQUENTIAL, true, &HashSet::new()),
            Some(1)
        );
        assert_eq!(
            b.pick(&has, ScanOrder::SEQUENTIAL, true, &HashSet::new()),
            None
        );
        assert_eq!(pick_seq(&mut b, &has), Some(0));
    }

    #[test]
    fn a_random_order_visits_every_chunk_once() {
        for n in [1, 2, 7, 64, 1000] {
            for _ in 0..20 {
                let order = ScanOrder::random(n);
                let mut seen: Vec<u32> = (0..n).map(|k| order.nth(k, n)).collect();
                seen.sort_unstable();
                assert_eq!(seen, (0..n).collect::<Vec<_>>(), "{order:?} over {n}");
            }
        }
    }

    #[test]
    fn sessions_start_a_run_of_new_chunks_in_different_places() {
        // Ten new chunks in a row at the end of 1024: sessions with random
        // orders do not all ask for the same one first.
        let n = 1024;
        let firsts: HashSet<u32> = (0..16)
            .map(|_| {
                let order = ScanOrder::random(n);
                (0..n)
                    .map(|k| order.nth(k, n))
                    .find(|&i| i >= n - 10)
                    .unwrap()
            })
            .collect();
        assert!(firsts.len() > 2, "{firsts:?}");
    }

    #[test]
    fn helpers_take_unvouched_chunks_from_the_back_of_the_range_furthest_behind() {
        let mut b = Board::new(60);
        // This node's own range is 0..20 and done; 20..40 has 12 chunks
        // nobody vouched for, 40..60 has 20.
        for i in 0..20 {
            b.assign_origin(i);
            b.complete(rec(i));
        }
        for i in 20..28 {
            b.learn(rec(i));
        }
        let fetchers = [vec![(0, 20)], vec![(20, 40)], vec![(40, 60)]];
        let margin = help_margin(4);
        // The only helper takes any chunk, from the back of 40..60.
        assert_eq!(b.pick_help(&fetchers, 0, margin), Some(59));
        assert_eq!(b.pick_help(&fetchers, 0, margin), Some(58));
        // Chunks a peer holds or nobody must read again are skipped.
        b.peer_gained(57);
        assert_eq!(b.pick_help(&fetchers, 0, margin), Some(56));
        // A fetcher not done with its own range does not help yet.
        assert_eq!(b.pick_help(&fetchers, 1, margin), None);
    }

    #[test]
    fn helpers_split_the_chunks_between_them() {
        // Fetchers 0 and 1 are done; 2 (40..100) lags.
        let board = || {
            let mut b = Board::new(100);
            for i in 0..40 {
                b.learn(rec(i));
            }
            b
        };
        let fetchers = [vec![(0, 20)], vec![(20, 40)], vec![(40, 100)]];
        let margin = help_margin(1);
        let all_picks = |b: &mut Board, me| {
            std::iter::from_fn(|| b.pick_help(&fetchers, me, margin)).collect::<Vec<u32>>()
        };
        // Each helper's view: what it would take alone (the other takes its
        // share meanwhile, unseen until announced).
        let zero = all_picks(&mut board(), 0);
        let one = all_picks(&mut board(), 1);
        let zero_set: HashSet<u32> = zero.iter().copied().collect();
        assert!(
            one.iter().all(|i| !zero_set.contains(i)),
            "{zero:?} {one:?}"
        );
        // Together every chunk past the fetcher's margin, from the back.
        let mut both: Vec<u32> = zero.iter().chain(&one).copied().collect();
        both.sort_unstable();
        assert_eq!(both, (40 + margin as u32 + 1..100).collect::<Vec<_>>());
        assert!(zero.len() > 15 && one.len() > 15, "{zero:?} {one:?}");
        assert!(zero.windows(2).all(|w| w[0] > w[1]));
        // Fetcher 2, whose range lags, is not a helper.
        assert_eq!(board().pick_help(&fetchers, 2, margin), None);
    }

    #[test]
    fn helpers_leave_the_front_of_a_range_to_its_fetcher() {
        for depth in [1, 4, 8] {
            let mut b = Board::new(40);
            let fetchers = [vec![], vec![(0, 40)]];
            let margin = help_margin(depth);
            for i in 0..(40 - margin as u32 - 2) {
                b.learn(rec(i));
            }
            // margin + 2 unvouched: the last has margin + 1 before it.
            assert_eq!(b.pick_help(&fetchers, 0, margin), Some(39));
            assert_eq!(b.pick_help(&fetchers, 0, margin), None);
        }
    }

    #[test]
    fn the_faster_the_origin_the_more_a_helper_leaves_to_the_fetcher() {
        assert_eq!(help_margin(1), 3);
        assert!(help_margin(16) > 16 * 2);
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
