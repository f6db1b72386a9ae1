//! One revision of one dataset moving onto this node.
//!
//! A [`Transfer`] owns the revision's files and its [`Board`]. It runs:
//! - one peer session per peer in the plan ([`peer`], its decisions in the
//!   sans-IO [`session`] core), pulling chunks over the peer protocol,
//!   several requests in flight;
//! - the [`origin`] worker, which reads this node's own origin ranges, then
//!   helps the fetchers that lag (and, as a last resort, reads chunks whose
//!   fetchers have been unreachable for the fallback delay: [`fallback`]);
//! - the completion step: content digest, pinned-digest check, flush and
//!   atomic publication.
//!
//! Every chunk goes through one [`sink`]: claimed, hashed, written,
//! committed, announced. A chunk from a peer must match a digest signed by
//! one of the plan's origin fetchers (see [`crate::attest`]). A peer that
//! sends a chunk that does not match is dropped for the rest of the
//! transfer. What peers are served lives in the [`ServedRevision`] this
//! transfer fills.
//!
//! What the tasks decide together (plan, board, sessions, which peers are
//! up) is one [`swarm::Swarm`] behind one lock.

use crate::lock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use swarmseed_proto::pb;
use swarmseed_proto::{ChunkLayout, ContentDigest, Reason, RevisionId};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use crate::attest::Identity;
use crate::board::ChunkSet;
use crate::chunkmem::BufferPool;
use crate::metrics::Metrics;
use crate::served::ServedRevision;
use crate::store::{DatasetKey, NodeStore, RevisionFiles, StoreError};
use swarmseed_origin::{OriginError, OriginOptions};

mod fallback;
mod origin;
mod peer;
mod phase;
mod plan;
mod rate;
mod session;
mod sink;
mod swarm;

use phase::Phase;
use plan::Plan;
use session::PeerSession;
use swarm::Swarm;

/// Tunables shared by all transfers of an agent.
#[derive(Debug, Clone)]
pub struct TransferConfig {
    pub node_name: String,
    /// How long the fetchers of a chunk must be unreachable before this node
    /// reads that chunk from the origin itself.
    pub fallback_after: Duration,
    pub connect_timeout: Duration,
    /// A peer connection with requests outstanding and no bytes arriving
    /// for this long is dropped.
    pub stall_timeout: Duration,
    /// Most chunks one transfer reads from the origin at once (it keeps
    /// fewer while the origin is slow: see `RecentRate::origin_depth`).
    pub origin_chunk_concurrency: usize,
    pub origin: OriginOptions,
    /// Memory per transfer for the chunks verified last, served to peers
    /// from there rather than from disk (0: none).
    pub peer_cache_bytes: u64,
}

impl Default for TransferConfig {
    fn default() -> Self {
        Self {
            node_name: String::new(),
            fallback_after: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            stall_timeout: Duration::from_secs(30),
            origin_chunk_concurrency: 16,
            origin: OriginOptions::default(),
            peer_cache_bytes: 64 << 20,
        }
    }
}

#[derive(Default)]
struct Counters {
    from_origin: AtomicU64,
    from_peers: AtomicU64,
    reused: AtomicU64,
}

/// Chunk buffers a transfer keeps for reuse beyond those in
/// the recent-chunk cache ([`ServedRevision::keep_recent`]).
const IDLE_BUFFERS: usize = 16;

/// How long a published transfer keeps the chunks it verified last.
const RECENT_AFTER_READY: Duration = Duration::from_secs(30);

pub struct Transfer {
    pub key: DatasetKey,
    files: Arc<RevisionFiles>,
    layout: Arc<ChunkLayout>,
    identity: Arc<Identity>,
    metrics: Arc<Metrics>,
    cfg: Arc<TransferConfig>,
    /// Everything the transfer's tasks decide together; see [`Swarm`] for
    /// how its lock is held.
    swarm: Mutex<Swarm>,
    board_version: watch::Sender<u64>,
    /// What the peer server reads: verified chunks, announcements, the
    /// recent-chunk cache, upload counts, token and limiter.
    served: Arc<ServedRevision>,
    counters: Counters,
    cancel: CancellationToken,
    /// Buffers for chunks on their way in, reused.
    buffers: BufferPool,
    started: Instant,
}

impl Transfer {
    pub fn new(
        key: DatasetKey,
        files: Arc<RevisionFiles>,
        assignment: &pb::Assignment,
        identity: Arc<Identity>,
        metrics: Arc<Metrics>,
        cfg: Arc<TransferConfig>,
    ) -> Result<Arc<Self>, OriginError> {
        let layout = files.layout().clone();
        let plan = Plan::from_assignment(assignment, &cfg)?;
        let buffers = BufferPool::new(layout.chunk_size() as usize, IDLE_BUFFERS);
        let cancel = CancellationToken::new();
        let served = Arc::new(ServedRevision::new(
            key.clone(),
            files.clone(),
            metrics.clone(),
            plan.token,
            plan.upload.clone(),
            cfg.peer_cache_bytes,
            cancel.clone(),
        ));
        let started = Instant::now();
        let swarm = Swarm::new(plan, layout.chunk_count(), &identity.public_key(), started);
        Ok(Arc::new(Self {
            key,
            files,
            layout,
            identity,
            metrics,
            cfg,
            swarm: Mutex::new(swarm),
            board_version: watch::channel(0).0,
            served,
            counters: Counters::default(),
            cancel,
            buffers,
            started,
        }))
    }

    pub fn revision(&self) -> RevisionId {
        self.layout.revision()
    }

    pub fn layout(&self) -> &Arc<ChunkLayout> {
        &self.layout
    }

    pub fn files(&self) -> &Arc<RevisionFiles> {
        &self.files
    }

    /// The swarm state, for one short decision: never held across an
    /// `.await`, and never while a session's lock is taken (see
    /// [`Self::with_session`]).
    fn swarm(&self) -> MutexGuard<'_, Swarm> {
        lock(&self.swarm)
    }

    /// Runs `f` on a download session and the swarm, locked in the one
    /// order the two are ever held together: the session first.
    fn with_session<R>(
        &self,
        session: &Mutex<PeerSession>,
        f: impl FnOnce(&mut PeerSession, &mut Swarm) -> R,
    ) -> R {
        let mut session = lock(session);
        f(&mut session, &mut self.swarm())
    }

    pub fn token(&self) -> [u8; 32] {
        self.swarm().plan().token
    }

    /// What the peer server serves of this revision.
    pub fn served(&self) -> &Arc<ServedRevision> {
        &self.served
    }

    pub fn plan_generation(&self) -> u64 {
        self.swarm().plan().generation
    }

    pub fn is_ready(&self) -> bool {
        self.swarm().phase().is_ready()
    }

    pub fn is_failed(&self) -> bool {
        self.swarm().phase().is_failed()
    }

    /// Completes when the transfer is stopped: it failed, was replaced by
    /// another revision, or its dataset was removed.
    pub fn stopped(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.cancel.cancelled()
    }

    /// The chunks this node has verified so far.
    pub fn verified_chunks(&self) -> ChunkSet {
        self.swarm().board().verified().clone()
    }

    /// Applies a new plan for the same revision: peers, fetchers, limits.
    pub fn update_plan(self: &Arc<Self>, a: &pb::Assignment) -> Result<(), OriginError> {
        let plan = Plan::from_assignment(a, &self.cfg)?;
        self.served.set_access(plan.token, plan.upload.clone());
        let new_signers = self.swarm().apply_plan(plan, &self.identity.public_key());
        self.bump();
        if !self.is_ready() && !self.cancel.is_cancelled() {
            if new_signers {
                // The peers' announcements of chunks these fetchers vouched
                // for were refused under the old plan and are not sent
                // again: new sessions get every peer's whole have-set.
                self.stop_sessions();
            }
            self.sync_sessions();
        }
        Ok(())
    }

    pub(super) fn bump(&self) {
        self.board_version.send_modify(|v| *v += 1);
    }

    /// Stops every task of this transfer (the files stay).
    pub fn stop(&self) {
        self.cancel.cancel();
    }

    pub fn progress(&self) -> pb::DatasetProgress {
        let mut swarm = self.swarm();
        let verified = swarm.board().verified();
        let bytes_verified: u64 = verified.iter().map(|i| self.layout.chunk_len(i)).sum();
        let chunks_verified = verified.count();
        let (origin_error, origin_error_seconds) = match swarm.phase() {
            Phase::Transferring => swarm.origin_health().report(Instant::now()).unzip(),
            _ => (None, None),
        };
        let origin_error_seconds = origin_error_seconds.unwrap_or(0);
        let (state, error) = swarm.phase().report();
        let plan_generation = swarm.plan().generation;
        let fetchers = swarm.plan().assigned_fetchers.clone();
        let content_digest = swarm.content_digest();
        drop(swarm);
        pb::DatasetProgress {
            dataset: Some(self.key.to_ref()),
            revision: self.revision().to_hex(),
            plan_generation,
            fetchers,
            state: state as i32,
            chunks_total: self.layout.chunk_count(),
            chunks_verified,
            bytes_total: self.layout.total_bytes(),
            bytes_verified,
            bytes_from_origin: self.counters.from_origin.load(Ordering::Relaxed),
            bytes_from_peers: self.counters.from_peers.load(Ordering::Relaxed),
            bytes_reused: self.counters.reused.load(Ordering::Relaxed),
            bytes_served_to_peers: self.served.bytes_served(),
            content_digest: content_digest.map(|d| d.0.to_vec()).unwrap_or_default(),
            published_path: String::new(),
            published_revision: String::new(),
            error,
            origin_error,
            origin_error_seconds,
        }
    }

    /// A write to the node's store failed: the transfer fails with the
    /// store's reason (`InsufficientStorage` for a full filesystem or
    /// quota, `StorageError` otherwise) and a message naming the path.
    /// What was verified stays on the disk and in the chunk log, so a
    /// retry of the assignment resumes from there.
    fn fail_storage(&self, e: &StoreError) {
        self.fail(e.reason(), e.to_string());
    }

    fn fail(&self, reason: Reason, message: String) {
        warn!(dataset = %self.key, %reason, %message, "transfer failed");
        self.served.set_failed();
        self.swarm().fail(reason, message);
        self.cancel.cancel();
    }

    /// Runs the transfer to publication (or failure). Spawned once.
    pub async fn run(self: Arc<Self>, store: Arc<NodeStore>) {
        let span = info_span!("transfer", dataset = %self.key, revision = %self.revision().short());
        async move {
            if let Err(e) = self.recover().await {
                self.fail(e.reason(), e.to_string());
                return;
            }
            if self.swarm().board().is_complete() {
                self.finish(&store).await;
                return;
            }
            self.swarm().advance(Phase::Transferring);
            self.sync_sessions();
            let origin = tokio::spawn(self.clone().run_origin());
            let fallback = tokio::spawn(self.clone().run_fallback());
            let mut version = self.board_version.subscribe();
            loop {
                if self.swarm().board().is_complete() {
                    break;
                }
                tokio::select! {
                    _ = self.cancel.cancelled() => break,
                    r = version.changed() => if r.is_err() { break },
                }
            }
            origin.abort();
            fallback.abort();
            self.stop_sessions();
            if !self.cancel.is_cancelled() {
                self.finish(&store).await;
            }
        }
        .instrument(span)
        .await
    }

    async fn finish(self: &Arc<Self>, store: &Arc<NodeStore>) {
        let digests = {
            let mut swarm = self.swarm();
            swarm.advance(Phase::Publishing);
            swarm.chunk_digests()
        };
        let digest = ContentDigest::compute(&self.layout, &digests);
        let pinned = self.swarm().seal(digest);
        if let Some(pinned) = pinned
            && pinned != digest
        {
            self.fail(
                Reason::DigestMismatch,
                format!(
                    "content digest is {digest}, but the spec pins {pinned}; nothing was published"
                ),
            );
            return;
        }
        let files = self.files.clone();
        let store = store.clone();
        let published = tokio::task::spawn_blocking(move || store.publish(&files)).await;
        match published {
            Ok(Ok(flush)) => {
                info!(
                    flush_ms = flush.as_millis() as u64,
                    elapsed_ms = self.started.elapsed().as_millis() as u64,
                    %digest,
                    "published"
                );
                self.swarm().advance(Phase::Ready);
                // Peers still filling up ask for the last chunks now; after
                // that they are sent from disk, and the memory goes back.
                let this = self.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = tokio::time::sleep(RECENT_AFTER_READY) => {}
                        _ = this.cancel.cancelled() => {}
                    }
                    this.served.clear_recent();
                    this.buffers.clear();
                });
            }
            Ok(Err(e)) => self.fail(e.reason(), e.to_string()),
            Err(e) => self.fail(Reason::Internal, e.to_string()),
        }
    }
}

struct ScopeGuard<F: FnMut()>(F);

impl<F: FnMut()> Drop for ScopeGuard<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

fn scopeguard<F: FnMut()>(f: F) -> ScopeGuard<F> {
    ScopeGuard(f)
}

#[cfg(test)]
mod peer_protocol_tests;

#[cfg(test)]
mod tests;
