//! What a transfer's tasks decide together, behind one lock: the plan, the
//! board, which chunks are being written, where the transfer is, the
//! download sessions, which peers are up or banned, and whether the origin
//! answers.
//!
//! [`Transfer::swarm`](super::Transfer::swarm) hands it out for one short
//! decision at a time (a method call, mostly), never across an `.await`.
//! The one lock ever held along with it is a download session's, and that
//! one first: no method here locks a session, the methods that need one
//! are handed it locked ([`Transfer::with_session`](super::Transfer::with_session)),
//! and a [`Swarm`] holds no session it could lock.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use swarmseed_proto::{ChunkDigest, ContentDigest, Reason, pb};
use tokio_util::sync::CancellationToken;

use super::fallback::{self, Fallback};
use super::phase::Phase;
use super::plan::Plan;
use super::session::{Next, PeerSession, SessionError};
use crate::attest::ChunkRecord;
use crate::board::{Board, help_margin};
use crate::origin_health::OriginHealth;
use crate::reach::PeerReach;
use crate::wire::Frame;

/// How long a fetcher done with its own ranges waits before it helps the
/// others (see [`Board::pick_help`]): about two announcements on a busy
/// link and one origin read. Without it, on the bench's 16 nodes at
/// 100 Mbit/s, 1.9 % of the chunks were read from the origin twice.
const HELP_AFTER: Duration = Duration::from_millis(1500);

/// The state a transfer's sessions, origin worker, fallback check and
/// completion step share. Lock order: a session's lock, then this one
/// (see the module documentation).
pub(super) struct Swarm {
    plan: Plan,
    board: Board,
    /// Chunks being written now, each by one writer: a duplicate (endgame,
    /// or a helper's origin read and a peer at once) is dropped rather
    /// than written, so no write can reach a file once the last chunk is
    /// in and publication seals it.
    writing: HashSet<u32>,
    phase: Phase,
    /// Known once every chunk is in (reported in progress).
    content_digest: Option<ContentDigest>,
    /// What stops the download session with each planned peer, by address.
    sessions: HashMap<String, CancellationToken>,
    /// Which peers have a download session, and when the others last had
    /// one: whether their chunks are stranded.
    reach: PeerReach,
    /// Whether origin reads succeed (reported in progress).
    origin_health: OriginHealth,
    /// Peers that served a chunk that did not match its digest: never
    /// asked again in this transfer.
    banned: HashSet<String>,
    /// When this node, a fetcher, first found its own ranges done.
    helping_since: Option<Instant>,
}

impl Swarm {
    /// A transfer of `chunk_count` chunks starting at `started` under
    /// `plan`; the node with key `me` reads its own ranges from the origin.
    pub(super) fn new(plan: Plan, chunk_count: u32, me: &[u8; 32], started: Instant) -> Self {
        let mut swarm = Self {
            plan,
            board: Board::new(chunk_count),
            writing: HashSet::new(),
            phase: Phase::Pending,
            content_digest: None,
            sessions: HashMap::new(),
            reach: PeerReach::new(started),
            origin_health: OriginHealth::new(started),
            banned: HashSet::new(),
            helping_since: None,
        };
        swarm.assign_own_ranges(me);
        swarm
    }

    pub(super) fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Replaces the plan (same revision). Whether it names a fetcher the
    /// old one did not.
    pub(super) fn apply_plan(&mut self, plan: Plan, me: &[u8; 32]) -> bool {
        let new_signers = plan.fetchers.adds_signers_to(&self.plan.fetchers);
        self.plan = plan;
        self.assign_own_ranges(me);
        new_signers
    }

    fn assign_own_ranges(&mut self, me: &[u8; 32]) {
        let chunk_count = self.board.chunk_count();
        for (s, e) in self.plan.fetchers.ranges_of(me) {
            for i in s..e.min(chunk_count) {
                self.board.assign_origin(i);
            }
        }
    }

    pub(super) fn board(&self) -> &Board {
        &self.board
    }

    pub(super) fn phase(&self) -> &Phase {
        &self.phase
    }

    /// Moves the transfer to `next`, unless it failed already.
    pub(super) fn advance(&mut self, next: Phase) {
        self.phase.advance(next);
    }

    pub(super) fn fail(&mut self, reason: Reason, message: String) {
        self.phase.fail(reason, message);
    }

    pub(super) fn content_digest(&self) -> Option<ContentDigest> {
        self.content_digest
    }

    /// The digest of every chunk, in order (zero for one not verified).
    pub(super) fn chunk_digests(&self) -> Vec<ChunkDigest> {
        (0..self.board.chunk_count())
            .map(|i| {
                self.board
                    .record(i)
                    .map(|r| r.digest)
                    .unwrap_or(ChunkDigest([0; 32]))
            })
            .collect()
    }

    /// Keeps the content digest for the progress report; the digest the
    /// plan pins, if any.
    pub(super) fn seal(&mut self, digest: ContentDigest) -> Option<ContentDigest> {
        self.content_digest = Some(digest);
        self.plan.pinned
    }

    /// The right to write chunk `index`: whether it was free (neither
    /// complete nor being written). [`Self::end_write`] gives it back.
    pub(super) fn claim_write(&mut self, index: u32) -> bool {
        self.board.record(index).is_none() && self.writing.insert(index)
    }

    pub(super) fn end_write(&mut self, index: u32) {
        self.writing.remove(&index);
    }

    /// A request for `index` (to a peer or the origin) ended without the
    /// chunk.
    pub(super) fn release(&mut self, index: u32) {
        self.board.release(index);
    }

    /// A chunk was written and logged: the board has it (and its request,
    /// if `requested`, is settled). Whether it is new.
    pub(super) fn commit(&mut self, record: ChunkRecord, requested: bool) -> bool {
        if requested {
            self.board.release(record.index);
        }
        self.board.complete(record)
    }

    /// Chunks that survived a restart.
    pub(super) fn recovered(&mut self, records: &[ChunkRecord]) {
        for &record in records {
            self.board.complete(record);
        }
    }

    /// The next chunk of this node's own origin ranges to read.
    pub(super) fn pick_origin(&mut self) -> Option<u32> {
        self.board.pick_origin()
    }

    /// A lagging fetcher's chunk to read for it, if this node (key `me`) is
    /// a fetcher (only their attestations count), for a node with `depth`
    /// origin reads in flight.
    pub(super) fn pick_help(&mut self, me: &[u8; 32], depth: usize, now: Instant) -> Option<u32> {
        let view = self.plan.fetchers.helper_view(me)?;
        if !self.board.all_vouched(&view.fetchers[view.me]) {
            // (Again, after a new plan gave it more.)
            self.helping_since = None;
            return None;
        }
        // The others learn that this node is done, and this node learns
        // what they read just before, an announcement later: until then
        // both would count the same chunks theirs.
        let done = *self.helping_since.get_or_insert(now);
        if now.saturating_duration_since(done) < HELP_AFTER {
            return None;
        }
        self.board
            .pick_help(&view.fetchers, view.me, help_margin(depth))
    }

    pub(super) fn origin_health(&mut self) -> &mut OriginHealth {
        &mut self.origin_health
    }

    /// The chunks no one else will deliver (see [`fallback::decide`]),
    /// made this node's to read from the origin.
    pub(super) fn take_stranded(
        &mut self,
        me: &str,
        started: Instant,
        now: Instant,
        after: Duration,
    ) -> Fallback {
        let decided = fallback::decide(
            &self.board,
            &self.plan.fetcher_nodes,
            me,
            &self.reach,
            started,
            now,
            after,
        );
        for &i in &decided.take {
            self.board.assign_origin(i);
        }
        decided
    }

    /// Stops the sessions of peers the plan no longer names; registers one
    /// (with a token from `new_token`) for each planned peer other than
    /// `me` without one, and returns those peers, for the caller to start.
    pub(super) fn plan_sessions(
        &mut self,
        me: &str,
        mut new_token: impl FnMut() -> CancellationToken,
    ) -> Vec<(pb::Peer, CancellationToken)> {
        let peers = &self.plan.peers;
        let wanted: HashSet<&str> = peers.iter().map(|p| p.address.as_str()).collect();
        self.sessions.retain(|addr, token| {
            let keep = wanted.contains(addr.as_str());
            if !keep {
                token.cancel();
            }
            keep
        });
        let mut start = Vec::new();
        for peer in peers {
            if peer.node_name == me || self.sessions.contains_key(&peer.address) {
                continue;
            }
            let token = new_token();
            self.sessions.insert(peer.address.clone(), token.clone());
            start.push((peer.clone(), token));
        }
        start
    }

    pub(super) fn stop_sessions(&mut self) {
        for (_, token) in self.sessions.drain() {
            token.cancel();
        }
    }

    pub(super) fn is_banned(&self, node: &str) -> bool {
        self.banned.contains(node)
    }

    pub(super) fn ban(&mut self, node: String) {
        self.banned.insert(node);
    }

    /// `node` welcomed a download session.
    pub(super) fn session_opened(&mut self, node: &str, now: Instant) {
        self.reach.session_opened(node, now);
    }

    /// A download session with `node` that it had welcomed ended.
    pub(super) fn session_closed(&mut self, node: &str, now: Instant) {
        self.reach.session_closed(node, now);
    }

    /// For each announced record, whether the board holds that very
    /// attestation already (its signature need not be checked again).
    pub(super) fn known_attestations(&self, records: &[ChunkRecord]) -> Vec<bool> {
        records
            .iter()
            .map(|r| self.board.attestation(r.index) == Some(*r))
            .collect()
    }

    /// The attestation to re-announce a chunk that hashed to `digest`
    /// with: the one accepted for it, if it matches.
    pub(super) fn attestation(&self, index: u32, digest: ChunkDigest) -> Option<ChunkRecord> {
        self.board.attestation(index).filter(|r| r.digest == digest)
    }

    /// See [`PeerSession::fill`]; other peers relay when more than one is
    /// up.
    pub(super) fn fill(&mut self, session: &mut PeerSession, now: Instant) -> Next {
        let relays = self.reach.live() > 1;
        session.fill(&mut self.board, now, relays)
    }

    /// See [`PeerSession::cancels`].
    pub(super) fn cancels(&self, session: &PeerSession) -> Vec<Frame> {
        session.cancels(&self.board)
    }

    /// See [`PeerSession::on_have`].
    pub(super) fn on_have(&mut self, session: &mut PeerSession, valid: Vec<ChunkRecord>) -> bool {
        session.on_have(&mut self.board, valid)
    }

    /// See [`PeerSession::on_piece_hashed`].
    pub(super) fn on_piece_hashed(
        &self,
        session: &mut PeerSession,
        index: u32,
        digest: ChunkDigest,
    ) -> Result<bool, SessionError> {
        session.on_piece_hashed(&self.board, index, digest)
    }

    /// See [`PeerSession::on_reject`].
    pub(super) fn on_reject(&mut self, session: &mut PeerSession, index: u32) -> bool {
        session.on_reject(&mut self.board, index)
    }

    /// See [`PeerSession::close`].
    pub(super) fn close_session(&mut self, session: &mut PeerSession) {
        session.close(&mut self.board);
    }
}
