//! One revision of one dataset moving onto this node.
//!
//! A [`Transfer`] owns the revision's files and its [`Board`]. It runs:
//! - one [`peer session`](Transfer::run_peer) per peer in the plan, pulling
//!   chunks over the peer protocol, several requests in flight;
//! - an origin worker that reads this node's own origin ranges, then helps
//!   the fetchers that lag (and, as a last resort, reads chunks whose
//!   fetchers have been unreachable for the fallback delay);
//! - the completion step: content digest, pinned-digest check, flush and
//!   atomic publication.
//!
//! Every chunk is hashed before it is written; a chunk from a peer must
//! match a digest signed by one of the plan's origin fetchers (see
//! [`crate::attest`]). A peer that sends a chunk that does not match is
//! dropped for the rest of the transfer.

use crate::lock;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use swarmseed_origin::{OriginClient, OriginError, OriginOptions};
use swarmseed_proto::pb::{self, DatasetState};
use swarmseed_proto::{ChunkDigest, ChunkLayout, ContentDigest, RevisionId};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, trace, warn};

use crate::attest::{FetcherTable, Identity};
use crate::board::{Board, ChunkSet, ScanOrder, help_margin};
use crate::chunkmem::{BufferPool, ChunkBuf, RecentChunks};
use crate::metrics::{Metrics, ReasonLabels};
use crate::origin_health::OriginHealth;
use crate::reach::PeerReach;
use crate::store::{ChunkRecord, DatasetKey, NodeStore, RevisionFiles, StoreError};
use crate::wire;

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

/// What the plan says, as this transfer uses it.
struct Plan {
    generation: u64,
    token: [u8; 32],
    fetchers: FetcherTable,
    /// The fetchers as assigned (reported back to the operator).
    assigned_fetchers: Vec<pb::OriginFetcher>,
    fetcher_nodes: Vec<(String, Vec<(u32, u32)>)>,
    peers: Vec<pb::Peer>,
    pinned: Option<ContentDigest>,
    origin: Option<OriginClient>,
    upload: Arc<crate::ratelimit::TokenBucket>,
}

#[derive(Debug, Clone)]
enum Phase {
    Pending,
    Transferring,
    Publishing,
    Ready,
    Failed { reason: String, message: String },
}

#[derive(Default)]
struct Counters {
    from_origin: AtomicU64,
    from_peers: AtomicU64,
    reused: AtomicU64,
    served: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
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

impl SessionError {
    fn label(&self) -> &'static str {
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

/// Chunks of one peer session being verified at once.
const VERIFY_SLOTS: usize = 3;

/// Chunk buffers a transfer keeps for reuse beyond those in
/// [`Transfer::recent`].
const IDLE_BUFFERS: usize = 16;

/// How long a published transfer keeps the chunks it verified last.
const RECENT_AFTER_READY: Duration = Duration::from_secs(30);

/// Requests one session keeps in flight however slow its peer: one being
/// sent and one waiting keep the connection busy.
const MIN_DEPTH: usize = 2;

/// A session keeps about this much of its peer's recent rate in flight
/// beyond the chunk being sent. A peer whose uplink is shared by many
/// sessions serves each slowly; a chunk queued there waits while another
/// peer that holds it idles, so slow peers get short queues.
const QUEUE_TIME: Duration = Duration::from_millis(250);

/// The window over which a session's receive rate is measured.
const RATE_WINDOW: Duration = Duration::from_secs(2);

/// Chunk bytes received over the last [`RATE_WINDOW`], by one peer session
/// or by the origin reader.
struct RecentRate {
    since: Instant,
    arrivals: VecDeque<(Instant, u64)>,
    bytes: u64,
}

impl RecentRate {
    fn new(now: Instant) -> Self {
        Self {
            since: now,
            arrivals: Default::default(),
            bytes: 0,
        }
    }

    fn record(&mut self, now: Instant, bytes: u64) {
        self.arrivals.push_back((now, bytes));
        self.bytes += bytes;
    }

    /// Bytes per second over the last window, or over the time since
    /// [`RecentRate::new`] while that is shorter; whether a whole window
    /// has passed.
    fn per_sec(&mut self, now: Instant) -> (f64, bool) {
        while let Some(&(t, b)) = self.arrivals.front() {
            if now.duration_since(t) <= RATE_WINDOW {
                break;
            }
            self.arrivals.pop_front();
            self.bytes -= b;
        }
        let up = now.duration_since(self.since);
        let span = up.clamp(Duration::from_millis(10), RATE_WINDOW);
        (self.bytes as f64 / span.as_secs_f64(), up >= RATE_WINDOW)
    }

    /// Chunks of [`QUEUE_TIME`] at the measured rate.
    fn queued(per_sec: f64, chunk_size: u64) -> f64 {
        per_sec * QUEUE_TIME.as_secs_f64() / chunk_size.max(1) as f64
    }

    /// Requests a peer session keeps in flight: `max` until it has been up
    /// for a whole window, then one plus [`QUEUE_TIME`] of the measured
    /// rate.
    fn session_depth(&mut self, now: Instant, max: usize, chunk_size: u64) -> usize {
        let (per_sec, whole) = self.per_sec(now);
        if !whole {
            return max;
        }
        (1 + Self::queued(per_sec, chunk_size).ceil() as usize).clamp(MIN_DEPTH.min(max), max)
    }

    /// Chunks the origin reader keeps in flight: [`QUEUE_TIME`] of its
    /// measured rate, and at least one.
    ///
    /// Where the origin's link is the limit, a fetcher's share of it is far
    /// less than a chunk per [`QUEUE_TIME`], so every fetcher keeps one read
    /// in flight and gets about the same share (a fetcher with more reads
    /// would get more, and finish its ranges early while others lag). The
    /// link stays full: while one fetcher asks for its next chunk, the
    /// others' reads take its share. And one read at a time is what makes
    /// each chunk arrive soonest, while peers can relay a chunk only once
    /// all of it has arrived: with two each, every node got the dataset
    /// about 0.8 s later on the bench's 16 nodes at 100 Mbit/s (25.3 s
    /// against 24.5 s, the mean of ten and six seeds), the time a byte
    /// waited in a half-read chunk. Where the origin's latency is the limit
    /// (a cloud object store), more reads in flight raise the rate, and
    /// the depth grows with it.
    fn origin_depth(&mut self, now: Instant, max: usize, chunk_size: u64) -> usize {
        let (per_sec, _) = self.per_sec(now);
        (Self::queued(per_sec, chunk_size).ceil() as usize).clamp(1, max.max(1))
    }
}

/// How long a fetcher done with its own ranges waits before it helps the
/// others (see [`Board::pick_help`]): about two announcements on a busy
/// link and one origin read. Without it, on the bench's 16 nodes at 100
/// Mbit/s, 1.9 % of the chunks were read from the origin twice.
const HELP_AFTER: Duration = Duration::from_millis(1500);

/// Requests one session keeps in flight for chunks its peer alone holds
/// (when other peers could relay them).
const SOLE_SOURCE_REQUESTS: usize = 2;

enum SessionEvent {
    /// A request was answered: this many chunk bytes arrived (0: refused).
    Resolved(u64),
    Closed(Result<(), SessionError>),
}

pub struct Transfer {
    pub key: DatasetKey,
    files: Arc<RevisionFiles>,
    layout: Arc<ChunkLayout>,
    identity: Arc<Identity>,
    metrics: Arc<Metrics>,
    cfg: Arc<TransferConfig>,
    plan: Mutex<Plan>,
    board: Mutex<Board>,
    /// Chunks being written now, each by one writer: a duplicate (endgame,
    /// or a helper's origin read and a peer at once) is dropped rather
    /// than written, so no write can reach a file once the last chunk is
    /// in and publication seals it.
    writing: Mutex<HashSet<u32>>,
    board_version: watch::Sender<u64>,
    haves: broadcast::Sender<ChunkRecord>,
    counters: Counters,
    phase: Mutex<Phase>,
    content_digest: Mutex<Option<ContentDigest>>,
    cancel: CancellationToken,
    sessions: Mutex<HashMap<String, CancellationToken>>,
    /// Which peers have a download session, and when the others last had
    /// one: whether their chunks are stranded.
    reach: Mutex<PeerReach>,
    /// Whether origin reads succeed (reported in progress).
    origin_health: Mutex<OriginHealth>,
    banned: Mutex<HashSet<String>>,
    /// Copies of each chunk this node has begun sending to peers.
    uploads: Box<[AtomicU16]>,
    /// Buffers for chunks on their way in, reused.
    buffers: BufferPool,
    /// The chunks verified last, kept to serve peers from memory.
    recent: RecentChunks,
    /// When this node, a fetcher, first found its own ranges done.
    helping_since: Mutex<Option<Instant>>,
    started: Instant,
    /// Test-only fault switch: serve corrupted bytes.
    pub corrupt_serving: bool,
}

impl Transfer {
    pub fn new(
        key: DatasetKey,
        files: Arc<RevisionFiles>,
        assignment: &pb::Assignment,
        identity: Arc<Identity>,
        metrics: Arc<Metrics>,
        cfg: Arc<TransferConfig>,
        corrupt_serving: bool,
    ) -> Result<Arc<Self>, OriginError> {
        let layout = files.layout().clone();
        let plan = Self::plan_from(assignment, &cfg)?;
        let mut board = Board::new(layout.chunk_count());
        for (s, e) in plan.fetchers.ranges_of(&identity.public_key()) {
            for i in s..e.min(layout.chunk_count()) {
                board.assign_origin(i);
            }
        }
        let (haves, _) = broadcast::channel(4096);
        let uploads = (0..layout.chunk_count())
            .map(|_| AtomicU16::new(0))
            .collect();
        let buffers = BufferPool::new(layout.chunk_size() as usize, IDLE_BUFFERS);
        let recent = RecentChunks::new(cfg.peer_cache_bytes);
        let started = Instant::now();
        Ok(Arc::new(Self {
            key,
            files,
            layout,
            identity,
            metrics,
            cfg,
            plan: Mutex::new(plan),
            board: Mutex::new(board),
            writing: Mutex::new(HashSet::new()),
            board_version: watch::channel(0).0,
            haves,
            counters: Counters::default(),
            phase: Mutex::new(Phase::Pending),
            content_digest: Mutex::new(None),
            cancel: CancellationToken::new(),
            sessions: Mutex::new(HashMap::new()),
            reach: Mutex::new(PeerReach::new(started)),
            origin_health: Mutex::new(OriginHealth::new(started)),
            banned: Mutex::new(HashSet::new()),
            uploads,
            buffers,
            recent,
            helping_since: Mutex::new(None),
            started,
            corrupt_serving,
        }))
    }

    fn plan_from(a: &pb::Assignment, cfg: &TransferConfig) -> Result<Plan, OriginError> {
        let token: [u8; 32] = a.peer_token.as_slice().try_into().unwrap_or([0; 32]);
        let fetcher_nodes = a
            .fetchers
            .iter()
            .map(|f| {
                (
                    f.node_name.clone(),
                    f.ranges.iter().map(|r| (r.start, r.end)).collect(),
                )
            })
            .collect();
        let limits = a.limits.unwrap_or_default();
        let origin = match &a.origin {
            Some(o) if !o.uri.is_empty() => {
                let mut opts = cfg.origin.clone();
                opts.bandwidth_bytes_per_sec = limits.origin_bytes_per_second;
                if limits.origin_concurrency > 0 {
                    opts.concurrency = limits.origin_concurrency as usize;
                }
                Some(OriginClient::new(o, opts)?)
            }
            _ => None,
        };
        Ok(Plan {
            generation: a.plan_generation,
            token,
            fetchers: FetcherTable::from_plan(&a.fetchers),
            assigned_fetchers: a.fetchers.clone(),
            fetcher_nodes,
            peers: a.peers.clone(),
            pinned: ContentDigest::from_slice(&a.pinned_digest),
            origin,
            upload: Arc::new(crate::ratelimit::TokenBucket::new(
                limits.peer_upload_bytes_per_second,
            )),
        })
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

    pub fn token(&self) -> [u8; 32] {
        lock(&self.plan).token
    }

    pub fn upload_limit(&self) -> Arc<crate::ratelimit::TokenBucket> {
        lock(&self.plan).upload.clone()
    }

    pub fn plan_generation(&self) -> u64 {
        lock(&self.plan).generation
    }

    pub fn is_ready(&self) -> bool {
        matches!(*lock(&self.phase), Phase::Ready)
    }

    pub fn is_failed(&self) -> bool {
        matches!(*lock(&self.phase), Phase::Failed { .. })
    }

    /// Completes when the transfer is stopped: it failed, was replaced by
    /// another revision, or its dataset was removed.
    pub fn stopped(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.cancel.cancelled()
    }

    /// The chunks this node has verified so far.
    pub fn verified_chunks(&self) -> ChunkSet {
        lock(&self.board).verified().clone()
    }

    /// Verified chunks and their attestations, for a peer's initial HAVE.
    pub fn have_snapshot(&self) -> Vec<ChunkRecord> {
        lock(&self.board).records().copied().collect()
    }

    pub fn subscribe_haves(&self) -> broadcast::Receiver<ChunkRecord> {
        self.haves.subscribe()
    }

    pub fn has_chunk(&self, i: u32) -> bool {
        lock(&self.board).is_verified(i)
    }

    /// Copies of chunk `i` this node has begun sending to peers.
    pub fn uploads(&self, i: u32) -> u16 {
        self.uploads
            .get(i as usize)
            .map_or(0, |u| u.load(Ordering::Relaxed))
    }

    /// Notes that a copy of chunk `i` is being sent to a peer.
    pub fn count_upload(&self, i: u32) {
        if let Some(u) = self.uploads.get(i as usize) {
            let _ = u.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_add(1));
        }
    }

    pub fn served(&self, bytes: u64) {
        self.counters.served.fetch_add(bytes, Ordering::Relaxed);
        self.metrics.bytes_served.inc_by(bytes);
    }

    /// Of the bytes [`Self::served`], those sent from memory.
    pub fn served_from_memory(&self, bytes: u64) {
        self.metrics.bytes_served_from_memory.inc_by(bytes);
    }

    /// Applies a new plan for the same revision: peers, fetchers, limits.
    pub fn update_plan(self: &Arc<Self>, a: &pb::Assignment) -> Result<(), OriginError> {
        let plan = Self::plan_from(a, &self.cfg)?;
        let own = plan.fetchers.ranges_of(&self.identity.public_key());
        let new_signers = {
            let mut current = lock(&self.plan);
            let added = plan.fetchers.adds_signers_to(&current.fetchers);
            *current = plan;
            added
        };
        {
            let mut board = lock(&self.board);
            for (s, e) in own {
                for i in s..e.min(self.layout.chunk_count()) {
                    board.assign_origin(i);
                }
            }
        }
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

    fn bump(&self) {
        self.board_version.send_modify(|v| *v += 1);
    }

    /// Stops every task of this transfer (the files stay).
    pub fn stop(&self) {
        self.cancel.cancel();
    }

    pub fn progress(&self) -> pb::DatasetProgress {
        let (verified, bytes_verified) = {
            let b = lock(&self.board);
            let v = b.verified();
            let bytes: u64 = v.iter().map(|i| self.layout.chunk_len(i)).sum();
            (v.count(), bytes)
        };
        let phase = lock(&self.phase).clone();
        let (origin_error, origin_error_seconds) = match phase {
            Phase::Transferring => lock(&self.origin_health).report(Instant::now()).unzip(),
            _ => (None, None),
        };
        let origin_error_seconds = origin_error_seconds.unwrap_or(0);
        let (state, error) = match &phase {
            Phase::Pending => (DatasetState::Pending, None),
            Phase::Transferring => (DatasetState::Transferring, None),
            Phase::Publishing => (DatasetState::Publishing, None),
            Phase::Ready => (DatasetState::Ready, None),
            Phase::Failed { reason, message } => (
                DatasetState::Failed,
                Some(pb::ErrorInfo {
                    reason: reason.clone(),
                    message: message.clone(),
                }),
            ),
        };
        pb::DatasetProgress {
            dataset: Some(self.key.to_ref()),
            revision: self.revision().to_hex(),
            plan_generation: self.plan_generation(),
            fetchers: lock(&self.plan).assigned_fetchers.clone(),
            state: state as i32,
            chunks_total: self.layout.chunk_count(),
            chunks_verified: verified,
            bytes_total: self.layout.total_bytes(),
            bytes_verified,
            bytes_from_origin: self.counters.from_origin.load(Ordering::Relaxed),
            bytes_from_peers: self.counters.from_peers.load(Ordering::Relaxed),
            bytes_reused: self.counters.reused.load(Ordering::Relaxed),
            bytes_served_to_peers: self.counters.served.load(Ordering::Relaxed),
            content_digest: lock(&self.content_digest)
                .map(|d| d.0.to_vec())
                .unwrap_or_default(),
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

    fn fail(&self, reason: &str, message: String) {
        warn!(dataset = %self.key, reason, %message, "transfer failed");
        *lock(&self.phase) = Phase::Failed {
            reason: reason.to_owned(),
            message,
        };
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
            if lock(&self.board).is_complete() {
                self.finish(&store).await;
                return;
            }
            *lock(&self.phase) = Phase::Transferring;
            self.sync_sessions();
            let origin = tokio::spawn(self.clone().run_origin());
            let fallback = tokio::spawn(self.clone().run_fallback());
            let mut version = self.board_version.subscribe();
            loop {
                if lock(&self.board).is_complete() {
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

    /// Loads what survived a restart: chunks in the log that still hash to
    /// their digest, and chunks that lie in files reused from an earlier
    /// revision.
    async fn recover(self: &Arc<Self>) -> Result<(), crate::store::StoreError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || -> Result<(), crate::store::StoreError> {
            let rev = this.revision();
            let published = this.files.is_published();
            let mut seen = ChunkSet::new(this.layout.chunk_count());
            let mut buf = Vec::new();
            let mut good = ChunkSet::new(this.layout.chunk_count());
            let mut recovered = Vec::new();
            for rec in this.files.load_records() {
                if rec.index >= this.layout.chunk_count() || !seen.insert(rec.index) {
                    continue;
                }
                // Published revisions were flushed before publication; staging
                // data may be torn by a crash, so it is hashed again.
                if !published {
                    buf.resize(this.layout.chunk_len(rec.index) as usize, 0);
                    if this.files.read_chunk(rec.index, &mut buf).is_err()
                        || ChunkDigest::of(&buf) != rec.digest
                    {
                        continue;
                    }
                }
                good.insert(rec.index);
                recovered.push(rec);
            }
            let mut fresh = Vec::new();
            for i in 0..this.layout.chunk_count() {
                if good.contains(i) {
                    continue;
                }
                if published || this.files.chunk_is_local(i) {
                    buf.resize(this.layout.chunk_len(i) as usize, 0);
                    this.files.read_chunk(i, &mut buf)?;
                    let rec = this.identity.attest(&rev, i, ChunkDigest::of(&buf));
                    this.counters
                        .reused
                        .fetch_add(buf.len() as u64, Ordering::Relaxed);
                    this.metrics.received("reused", buf.len() as u64);
                    fresh.push(rec);
                }
            }
            this.files.record_verified(&fresh)?;
            let mut board = lock(&this.board);
            for rec in recovered.into_iter().chain(fresh) {
                board.complete(rec);
                // Peers connected while recovery ran got an empty have-set:
                // announce what survived (a lagging session re-reads the
                // whole set).
                let _ = this.haves.send(rec);
            }
            if !board.verified().is_empty() {
                debug!(verified = board.verified().count(), "recovered chunks");
            }
            Ok(())
        })
        .await
        .map_err(|e| crate::store::StoreError::Io {
            path: "recovery".into(),
            source: std::io::Error::other(e),
        })?
    }

    async fn finish(self: &Arc<Self>, store: &Arc<NodeStore>) {
        *lock(&self.phase) = Phase::Publishing;
        let digests: Vec<ChunkDigest> = {
            let b = lock(&self.board);
            (0..self.layout.chunk_count())
                .map(|i| {
                    b.record(i)
                        .map(|r| r.digest)
                        .unwrap_or(ChunkDigest([0; 32]))
                })
                .collect()
        };
        let digest = ContentDigest::compute(&self.layout, &digests);
        *lock(&self.content_digest) = Some(digest);
        let pinned = lock(&self.plan).pinned;
        if let Some(pinned) = pinned
            && pinned != digest
        {
            self.fail(
                "DigestMismatch",
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
                *lock(&self.phase) = Phase::Ready;
                // Peers still filling up ask for the last chunks now; after
                // that they are sent from disk, and the memory goes back.
                let this = self.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = tokio::time::sleep(RECENT_AFTER_READY) => {}
                        _ = this.cancel.cancelled() => {}
                    }
                    this.recent.clear();
                    this.buffers.clear();
                });
            }
            Ok(Err(e)) => self.fail(e.reason(), e.to_string()),
            Err(e) => self.fail("Internal", e.to_string()),
        }
    }

    /// Starts a session for every planned peer without one, stops sessions
    /// of peers no longer planned.
    fn sync_sessions(self: &Arc<Self>) {
        let peers = lock(&self.plan).peers.clone();
        let mut sessions = lock(&self.sessions);
        let wanted: HashSet<&str> = peers.iter().map(|p| p.address.as_str()).collect();
        sessions.retain(|addr, token| {
            let keep = wanted.contains(addr.as_str());
            if !keep {
                token.cancel();
            }
            keep
        });
        for peer in peers {
            if peer.node_name == self.cfg.node_name || sessions.contains_key(&peer.address) {
                continue;
            }
            let token = self.cancel.child_token();
            sessions.insert(peer.address.clone(), token.clone());
            let this = self.clone();
            tokio::spawn(async move { this.run_peer(peer, token).await });
        }
    }

    fn stop_sessions(&self) {
        for (_, t) in lock(&self.sessions).drain() {
            t.cancel();
        }
    }

    /// Keeps one download session with `peer` alive until the transfer is
    /// complete, reconnecting with backoff; drops the peer for good if it
    /// serves bad data.
    async fn run_peer(self: Arc<Self>, peer: pb::Peer, cancel: CancellationToken) {
        let span = info_span!("peer", node = %peer.node_name, addr = %peer.address);
        async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                if cancel.is_cancelled() || lock(&self.board).is_complete() {
                    return;
                }
                if lock(&self.banned).contains(&peer.node_name) {
                    return;
                }
                let result = tokio::select! {
                    r = self.session(&peer, &cancel) => r,
                    _ = cancel.cancelled() => return,
                };
                match result {
                    Ok(()) => backoff = Duration::from_millis(100),
                    Err(SessionError::BadData(i)) => {
                        warn!(chunk = i, "peer served corrupted data; dropping it");
                        self.metrics.verification_failures.inc();
                        self.metrics
                            .peers_dropped
                            .get_or_create(&ReasonLabels { reason: "bad_data" })
                            .inc();
                        lock(&self.banned).insert(peer.node_name.clone());
                        return;
                    }
                    Err(e) => {
                        debug!(error = %e, "peer session ended");
                        self.metrics
                            .peers_dropped
                            .get_or_create(&ReasonLabels { reason: e.label() })
                            .inc();
                        let jitter = Duration::from_millis(rand::random::<u64>() % 100);
                        tokio::select! {
                            _ = tokio::time::sleep(backoff + jitter) => {},
                            _ = cancel.cancelled() => return,
                        }
                        // A peer that refuses only lacks the assignment so
                        // far: ask again soon.
                        let cap = if matches!(e, SessionError::Refused(_)) {
                            500
                        } else {
                            5000
                        };
                        backoff = (backoff * 2).min(Duration::from_millis(cap));
                    }
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn session(
        self: &Arc<Self>,
        peer: &pb::Peer,
        cancel: &CancellationToken,
    ) -> Result<(), SessionError> {
        let io_timeout = self.cfg.connect_timeout;
        let stream = tokio::time::timeout(io_timeout, TcpStream::connect(&peer.address))
            .await
            .map_err(|_| SessionError::Timeout("connect"))??;
        stream.set_nodelay(true)?;
        let (rd, mut wr) = stream.into_split();
        // Small: frame headers and control frames go through this buffer,
        // PIECE bodies mostly bypass it (what it holds of one is copied
        // once more).
        let mut rd = BufReader::with_capacity(32 * 1024, rd);

        // Handshake: each frame whole within the timeout, its length
        // bounded by its kind before it is read.
        let (kind, p) = tokio::time::timeout(
            io_timeout,
            wire::read_frame_of(&mut rd, &[wire::SERVER_HELLO, wire::ERROR]),
        )
        .await
        .map_err(|_| SessionError::Timeout("server hello"))??;
        if kind == wire::ERROR {
            // A server with too many handshakes in progress says so.
            return Err(SessionError::Refused(
                String::from_utf8_lossy(&p).into_owned(),
            ));
        }
        let nonce = wire::parse_server_hello(&p)?;
        let rev = self.revision();
        let mac = wire::hello_mac(
            &self.token(),
            &nonce,
            &rev,
            &self.key.namespace,
            &self.key.name,
        );
        let hello = wire::Hello {
            revision: rev,
            mac,
            namespace: self.key.namespace.clone(),
            name: self.key.name.clone(),
            node: self.cfg.node_name.clone(),
        };
        wire::write_frame(&mut wr, wire::HELLO, &hello.encode()).await?;
        let (kind, p) = tokio::time::timeout(
            io_timeout,
            wire::read_frame_of(&mut rd, &[wire::WELCOME, wire::ERROR]),
        )
        .await
        .map_err(|_| SessionError::Timeout("welcome"))??;
        // A refusal is no sign of life for the fallback (see
        // `crate::reach`): only a welcome is.
        match kind {
            wire::WELCOME if wire::parse_u32(&p)? == self.layout.chunk_count() => {}
            wire::WELCOME => return Err(SessionError::Protocol("chunk count differs".into())),
            wire::ERROR => {
                return Err(SessionError::Refused(
                    String::from_utf8_lossy(&p).into_owned(),
                ));
            }
            _ => return Err(SessionError::Protocol("expected WELCOME".into())),
        }
        lock(&self.reach).session_opened(&peer.node_name, Instant::now());
        self.metrics.active_peers.inc();
        let _active = scopeguard(|| {
            self.metrics.active_peers.dec();
            // It was up until now.
            lock(&self.reach).session_closed(&peer.node_name, Instant::now());
        });

        let peer_has = Arc::new(Mutex::new(ChunkSet::new(self.layout.chunk_count())));
        let outstanding = Arc::new(Mutex::new(HashSet::<u32>::new()));
        let (events_tx, mut events) = mpsc::channel(64);
        let reader = {
            let this = self.clone();
            let peer_has = peer_has.clone();
            let outstanding = outstanding.clone();
            tokio::spawn(async move {
                let r = this
                    .read_loop(rd, &peer_has, &outstanding, &events_tx)
                    .await;
                let _ = events_tx.send(SessionEvent::Closed(r)).await;
            })
        };
        let result = self
            .request_loop(&mut wr, &peer_has, &outstanding, &mut events, cancel)
            .await;
        // Wait for the reader to stop: a HAVE batch it is still applying
        // would otherwise raise availability after `peer_lost` below, and
        // a chunk only this peer "holds" would never go to the origin.
        reader.abort();
        let _ = reader.await;
        {
            // Lock order everywhere: peer_has, outstanding, board.
            let has = lock(&peer_has);
            let mut out = lock(&outstanding);
            let mut board = lock(&self.board);
            for i in out.drain() {
                board.release(i);
            }
            board.peer_lost(&has);
        }
        self.bump();
        result
    }

    /// Most requests in flight to one peer: about 8 MiB, enough to fill a
    /// fast link. A session keeps fewer when its peer serves it slowly
    /// (see [`RecentRate::session_depth`]).
    fn depth(&self) -> usize {
        ((8 << 20) / self.layout.chunk_size()).clamp(MIN_DEPTH as u64, 16) as usize
    }

    async fn request_loop(
        &self,
        wr: &mut OwnedWriteHalf,
        peer_has: &Mutex<ChunkSet>,
        outstanding: &Mutex<HashSet<u32>>,
        events: &mut mpsc::Receiver<SessionEvent>,
        cancel: &CancellationToken,
    ) -> Result<(), SessionError> {
        let mut version = self.board_version.subscribe();
        let order = ScanOrder::random(self.layout.chunk_count());
        let max_depth = self.depth();
        let mut rate = RecentRate::new(Instant::now());
        let mut last_progress = Instant::now();
        loop {
            let depth = rate.session_depth(Instant::now(), max_depth, self.layout.chunk_size());
            // Fill the pipeline.
            let mut requests = Vec::new();
            // With other peers to relay from, keep few requests here for
            // chunks only this peer holds: everyone else is asking it for
            // the same fresh chunks, and the ones not in flight can come
            // from whoever gets them first.
            let relays = lock(&self.reach).live() > 1;
            {
                let has = lock(peer_has);
                let mut out = lock(outstanding);
                let mut board = lock(&self.board);
                if board.is_complete() {
                    return Ok(());
                }
                while out.len() < depth {
                    let sole = out.iter().filter(|&&i| board.availability(i) <= 1).count();
                    let skip_sole = relays && sole >= SOLE_SOURCE_REQUESTS;
                    match board.pick(&has, order, skip_sole, &out) {
                        Some(i) => {
                            out.insert(i);
                            requests.push(i);
                        }
                        None => break,
                    }
                }
            }
            if !requests.is_empty() {
                let mut buf = Vec::with_capacity(requests.len() * 9);
                for i in requests {
                    buf.extend_from_slice(&wire::header(wire::REQUEST, 4));
                    buf.extend_from_slice(&wire::u32_payload(i));
                }
                wr.write_all(&buf).await?;
            }
            let waiting = !lock(outstanding).is_empty();
            let stall = self
                .cfg
                .stall_timeout
                .saturating_sub(last_progress.elapsed());
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(SessionEvent::Resolved(bytes)) => {
                        last_progress = Instant::now();
                        rate.record(last_progress, bytes);
                    }
                    Some(SessionEvent::Closed(r)) => return r,
                    None => return Ok(()),
                },
                r = version.changed() => {
                    if r.is_err() {
                        return Ok(());
                    }
                    // Endgame: cancel what another peer already delivered.
                    let cancels: Vec<u32> = {
                        let out = lock(outstanding);
                        let board = lock(&self.board);
                        out.iter().copied().filter(|&i| board.is_verified(i)).collect()
                    };
                    let mut buf = Vec::new();
                    for i in cancels {
                        buf.extend_from_slice(&wire::header(wire::CANCEL, 4));
                        buf.extend_from_slice(&wire::u32_payload(i));
                    }
                    if !buf.is_empty() {
                        wr.write_all(&buf).await?;
                    }
                }
                _ = tokio::time::sleep(stall), if waiting => return Err(SessionError::Stalled),
                _ = cancel.cancelled() => return Ok(()),
            }
            if !waiting {
                last_progress = Instant::now();
            }
        }
    }

    async fn read_loop(
        self: &Arc<Self>,
        mut rd: BufReader<tokio::net::tcp::OwnedReadHalf>,
        peer_has: &Mutex<ChunkSet>,
        outstanding: &Arc<Mutex<HashSet<u32>>>,
        events: &mpsc::Sender<SessionEvent>,
    ) -> Result<(), SessionError> {
        let rev = self.revision();
        // Chunks received but not yet verified: bounds memory to
        // VERIFY_SLOTS chunks per peer.
        let verify_slots = Arc::new(tokio::sync::Semaphore::new(VERIFY_SLOTS));
        loop {
            let (kind, len) = wire::read_header(&mut rd).await?;
            match kind {
                wire::HAVE => {
                    let payload = wire::read_control(&mut rd, kind, len).await?;
                    let mut records = wire::decode_haves(&payload)?;
                    let fetchers = lock(&self.plan).fetchers.clone();
                    records.retain(|r| r.index < self.layout.chunk_count());
                    // Every peer passes on the same attestation of a chunk:
                    // check its signature once, not once per peer (an
                    // ed25519 verification costs far more than the rest of
                    // a HAVE), and outside the board's lock.
                    let known: Vec<bool> = {
                        let board = lock(&self.board);
                        records
                            .iter()
                            .map(|r| board.attestation(r.index) == Some(*r))
                            .collect()
                    };
                    let valid: Vec<ChunkRecord> = records
                        .into_iter()
                        .zip(known)
                        .filter(|(r, known)| *known || fetchers.accepts(&rev, r))
                        .map(|(r, _)| r)
                        .collect();
                    let mut gained = false;
                    // Lock order everywhere: peer_has, outstanding, board.
                    let mut has = lock(peer_has);
                    let mut board = lock(&self.board);
                    for rec in valid {
                        if let Some(expected) = board.expected(rec.index)
                            && expected != rec.digest
                        {
                            // Two fetchers disagree: the origin changed
                            // under us. Keep the first; never this one.
                            continue;
                        }
                        board.learn(rec);
                        if has.insert(rec.index) {
                            board.peer_gained(rec.index);
                            gained = true;
                        }
                    }
                    drop(board);
                    drop(has);
                    if gained {
                        self.bump();
                    }
                }
                wire::PIECE => {
                    if len < 4 {
                        return Err(SessionError::Protocol("short PIECE".into()));
                    }
                    let mut idx = [0u8; 4];
                    rd.read_exact(&mut idx).await?;
                    let index = u32::from_le_bytes(idx);
                    let data_len = (len - 4) as u64;
                    if index >= self.layout.chunk_count()
                        || data_len != self.layout.chunk_len(index)
                    {
                        return Err(SessionError::Protocol(format!(
                            "PIECE {index} of {data_len} bytes"
                        )));
                    }
                    if !lock(outstanding).contains(&index) {
                        return Err(SessionError::Protocol(format!("unrequested PIECE {index}")));
                    }
                    // Receive here; hash and write on a blocking thread, so
                    // the next chunk arrives while this one is verified.
                    let permit = verify_slots
                        .clone()
                        .acquire_owned()
                        .await
                        .map_err(|_| SessionError::Protocol("session closing".into()))?;
                    let mut buf = self.buffers.take(data_len as usize);
                    if let Err(e) = wire::read_body(&mut rd, &mut buf).await {
                        self.buffers.give(buf);
                        return Err(e.into());
                    }
                    let this = self.clone();
                    let outstanding = outstanding.clone();
                    let events = events.clone();
                    tokio::task::spawn_blocking(move || {
                        let result = this.verify_peer_chunk(index, buf, &outstanding);
                        drop(permit);
                        let event = match result {
                            Ok(()) => SessionEvent::Resolved(data_len),
                            Err(e) => SessionEvent::Closed(Err(e)),
                        };
                        let _ = events.blocking_send(event);
                    });
                }
                wire::REJECT => {
                    let p = wire::read_control(&mut rd, kind, len).await?;
                    let index = wire::parse_u32(&p)?;
                    if lock(outstanding).remove(&index) {
                        lock(&self.board).release(index);
                        // The peer no longer offers it (cancelled or gone).
                        self.bump();
                    }
                    let _ = events.send(SessionEvent::Resolved(0)).await;
                }
                wire::ERROR => {
                    let p = wire::read_control(&mut rd, kind, len).await?;
                    return Err(SessionError::Refused(
                        String::from_utf8_lossy(&p).into_owned(),
                    ));
                }
                other => return Err(SessionError::Protocol(format!("unexpected frame {other}"))),
            }
        }
    }

    /// Writes a chunk that matched its attested digest and announces it.
    /// Hashes a received chunk; writes and announces it if it matches the
    /// attested digest.
    fn verify_peer_chunk(
        &self,
        index: u32,
        data: ChunkBuf,
        outstanding: &Mutex<HashSet<u32>>,
    ) -> Result<(), SessionError> {
        let digest = ChunkDigest::of(&data);
        if lock(&self.board).expected(index) != Some(digest) {
            self.buffers.give(data);
            return Err(SessionError::BadData(index));
        }
        // Not ours any more if the session ended meanwhile: its teardown
        // released the request already.
        let requested = lock(outstanding).remove(&index);
        let Some(_claim) = self.claim_write(index) else {
            // Endgame duplicate: already have it, or another writer does.
            if requested {
                lock(&self.board).release(index);
            }
            self.buffers.give(data);
            return Ok(());
        };
        self.accept_peer_chunk(index, digest, data, requested)
    }

    /// Writes a verified chunk, keeps it in memory for the peers that will
    /// ask for it, and announces it (in that order, so that they find it
    /// there).
    fn store_chunk(
        &self,
        record: ChunkRecord,
        data: ChunkBuf,
        source: &'static str,
        requested: bool,
    ) -> Result<(), SessionError> {
        if let Err(e) = self.files.write_chunk(record.index, &data) {
            self.buffers.give(data);
            self.fail_storage(&e);
            return Err(e.into());
        }
        let len = data.len() as u64;
        for buf in self.recent.insert(record.index, data) {
            self.buffers.give(buf);
        }
        self.commit(record, source, len, requested)
    }

    /// Chunk `index` if it is among those verified last.
    pub fn recent_chunk(&self, index: u32) -> Option<Arc<ChunkBuf>> {
        self.recent.get(index)
    }

    /// The right to write chunk `index`, held until the chunk is committed
    /// (or its write failed); `None` if it is complete or being written.
    fn claim_write(&self, index: u32) -> Option<ScopeGuard<impl FnMut() + '_>> {
        let board = lock(&self.board);
        if board.record(index).is_some() {
            return None;
        }
        let claimed = lock(&self.writing).insert(index);
        // Built only when claimed: dropping a claim releases its chunk.
        claimed.then(|| {
            scopeguard(move || {
                lock(&self.writing).remove(&index);
            })
        })
    }

    fn accept_peer_chunk(
        &self,
        index: u32,
        digest: ChunkDigest,
        data: ChunkBuf,
        requested: bool,
    ) -> Result<(), SessionError> {
        // Re-announce it with the fetcher's attestation we accepted.
        let attestation = lock(&self.board)
            .attestation(index)
            .filter(|r| r.digest == digest);
        let record =
            attestation.unwrap_or_else(|| self.identity.attest(&self.revision(), index, digest));
        self.store_chunk(record, data, "peer", requested)
    }

    fn commit(
        &self,
        record: ChunkRecord,
        source: &'static str,
        bytes: u64,
        requested: bool,
    ) -> Result<(), SessionError> {
        if let Err(e) = self.files.record_verified(&[record]) {
            self.fail_storage(&e);
            return Err(e.into());
        }
        let new = {
            let mut board = lock(&self.board);
            if requested {
                board.release(record.index);
            }
            board.complete(record)
        };
        if new {
            match source {
                "origin" => self
                    .counters
                    .from_origin
                    .fetch_add(bytes, Ordering::Relaxed),
                _ => self.counters.from_peers.fetch_add(bytes, Ordering::Relaxed),
            };
            self.metrics.received(source, bytes);
            self.metrics.chunks_verified.inc();
            let _ = self.haves.send(record);
        }
        self.bump();
        Ok(())
    }

    /// Reads this node's origin chunks, a few at a time, then helps the
    /// fetchers that lag.
    async fn run_origin(self: Arc<Self>) {
        // At most `origin_chunk_concurrency` requests, and about 64 MiB.
        let chunk_size = self.layout.chunk_size();
        let max = ((64 << 20) / chunk_size)
            .clamp(1, self.cfg.origin_chunk_concurrency.max(1) as u64) as usize;
        let (done_tx, mut done) = mpsc::unbounded_channel::<u64>();
        let mut rate = RecentRate::new(Instant::now());
        let mut in_flight = 0usize;
        let mut version = self.board_version.subscribe();
        loop {
            let depth = rate.origin_depth(Instant::now(), max, chunk_size);
            while in_flight < depth {
                let own = lock(&self.board).pick_origin();
                let Some(i) = own.or_else(|| self.pick_help(depth)) else {
                    break;
                };
                in_flight += 1;
                let this = self.clone();
                let done_tx = done_tx.clone();
                let help = own.is_none();
                tokio::spawn(async move {
                    let start = Instant::now();
                    let bytes = this.fetch_origin_chunk(i).await;
                    trace!(
                        chunk = i,
                        help,
                        depth,
                        bytes,
                        ms = start.elapsed().as_millis() as u64,
                        "origin read"
                    );
                    let _ = done_tx.send(bytes);
                });
            }
            if in_flight == 0 && lock(&self.board).is_complete() {
                return;
            }
            {
                let now = Instant::now();
                let mut health = lock(&self.origin_health);
                // Nothing wanted from the origin now: no outage.
                let ended = in_flight == 0 && health.idle(now);
                if ended || health.report_began(now) {
                    self.metrics.origin_outages.inc();
                    if let Some((e, secs)) = health.report(now) {
                        warn!(reason = %e.reason, error = %e.message, seconds = secs, "no origin read has succeeded for a while");
                    }
                }
            }
            // At full depth only a finished read can start another: board
            // changes need not wake this loop.
            tokio::select! {
                Some(bytes) = done.recv() => {
                    in_flight -= 1;
                    rate.record(Instant::now(), bytes);
                }
                r = version.changed(), if in_flight < depth => if r.is_err() { return },
                _ = tokio::time::sleep(Duration::from_secs(1)) => {},
            }
        }
    }

    /// A lagging fetcher's chunk to read for it, if this node is a fetcher
    /// (only their attestations count), for a node with `depth` origin
    /// reads in flight.
    fn pick_help(&self, depth: usize) -> Option<u32> {
        let view = lock(&self.plan)
            .fetchers
            .helper_view(&self.identity.public_key())?;
        let mut board = lock(&self.board);
        if !board.all_vouched(&view.fetchers[view.me]) {
            // (Again, after a new plan gave it more.)
            *lock(&self.helping_since) = None;
            return None;
        }
        // The others learn that this node is done, and this node learns
        // what they read just before, an announcement later: until then
        // both would count the same chunks theirs.
        let done = *lock(&self.helping_since).get_or_insert_with(Instant::now);
        if done.elapsed() < HELP_AFTER {
            return None;
        }
        board.pick_help(&view.fetchers, view.me, help_margin(depth))
    }

    /// Reads, verifies and writes one chunk from the origin; the bytes it
    /// got (0 on failure).
    async fn fetch_origin_chunk(self: &Arc<Self>, index: u32) -> u64 {
        let origin = lock(&self.plan).origin.clone();
        let Some(origin) = origin else {
            lock(&self.board).release(index);
            self.fail("InvalidAssignment", "the assignment names no origin".into());
            return 0;
        };
        let result = async {
            let segments = self.layout.segments(index).to_vec();
            let reads = segments.iter().map(|s| {
                let file = &self.layout.files()[s.file as usize];
                origin.read_range(file, s.file_offset..s.file_offset + s.len)
            });
            let parts = futures::future::try_join_all(reads).await?;
            let mut data = self.buffers.take(0);
            for p in parts {
                data.extend_from_slice(&p);
            }
            Ok::<_, OriginError>(data)
        }
        .await;
        match result {
            Ok(data) => {
                // Hash and write off the async workers, as for peer chunks:
                // a write can block for long while the kernel throttles
                // dirty pages, and the control API must still answer.
                let len = data.len() as u64;
                let this = self.clone();
                let written = tokio::task::spawn_blocking(move || {
                    let Some(_claim) = this.claim_write(index) else {
                        // A peer delivered it meanwhile (this was a helper's read).
                        lock(&this.board).release(index);
                        this.buffers.give(data);
                        return Ok(());
                    };
                    let digest = ChunkDigest::of(&data);
                    let record = this.identity.attest(&this.revision(), index, digest);
                    this.store_chunk(record, data, "origin", true)
                })
                .await
                .unwrap_or_else(|e| Err(SessionError::Io(std::io::Error::other(e))));
                if let Err(e) = written {
                    lock(&self.board).release(index);
                    // A store error failed the transfer already, with its
                    // reason and path.
                    if !matches!(e, SessionError::Store(_)) {
                        self.fail("StorageError", e.to_string());
                    }
                    return 0;
                }
                if lock(&self.origin_health).succeeded(Instant::now()) {
                    self.metrics.origin_outages.inc();
                }
                len
            }
            Err(e) => {
                lock(&self.board).release(index);
                self.metrics
                    .origin_errors
                    .get_or_create(&ReasonLabels { reason: e.label() })
                    .inc();
                if e.is_transient() {
                    let pause = lock(&self.origin_health).failed(e.reason(), e.to_string());
                    warn!(chunk = index, error = %e, retry_in = ?pause, "origin read failed; will retry");
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = self.cancel.cancelled() => {}
                    }
                    self.bump();
                } else {
                    self.fail(e.reason(), e.to_string());
                }
                0
            }
        }
    }

    /// Gives this node the chunks whose fetchers have been unreachable for
    /// the fallback delay, so no chunk is stranded.
    async fn run_fallback(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let after = self.cfg.fallback_after;
            let now = Instant::now();
            let (fetcher_nodes, me) = {
                let p = lock(&self.plan);
                (p.fetcher_nodes.clone(), self.cfg.node_name.clone())
            };
            let reach = lock(&self.reach);
            let unreachable: HashSet<&str> = fetcher_nodes
                .iter()
                .map(|(node, _)| node.as_str())
                .filter(|node| *node != me && reach.unreachable(node, now, after))
                .collect();
            drop(reach);
            let stranded_since_start = now.duration_since(self.started) >= after;
            let mut board = lock(&self.board);
            let mut covered = ChunkSet::new(self.layout.chunk_count());
            let mut changed = false;
            let mut gone = Vec::new();
            for (node, ranges) in &fetcher_nodes {
                let unreachable = unreachable.contains(node.as_str());
                if unreachable {
                    gone.push(node.as_str());
                }
                for &(s, e) in ranges {
                    for i in s..e.min(self.layout.chunk_count()) {
                        covered.insert(i);
                        if unreachable
                            && !board.is_verified(i)
                            && board.availability(i) == 0
                            && !board.is_origin(i)
                        {
                            board.assign_origin(i);
                            changed = true;
                        }
                    }
                }
            }
            if stranded_since_start {
                for i in 0..self.layout.chunk_count() {
                    if !covered.contains(i)
                        && !board.is_verified(i)
                        && !board.is_origin(i)
                        && board.availability(i) == 0
                    {
                        board.assign_origin(i);
                        changed = true;
                    }
                }
            }
            drop(board);
            if changed {
                info!(fetchers = ?gone, "fetchers unreachable: reading their chunks from the origin");
                self.bump();
            }
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
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_chunk_has_one_writer_at_a_time_and_none_once_complete() {
        let tmp = tempfile::tempdir().unwrap();
        let store = crate::store::NodeStore::open(tmp.path().join("root")).unwrap();
        let key = DatasetKey::new("ml", "x").unwrap();
        let file = pb::FileEntry {
            path: "f".into(),
            size: 10,
            etag: "1".into(),
            ..Default::default()
        };
        let layout = Arc::new(ChunkLayout::new(vec![file], 64 * 1024).unwrap());
        let files = store
            .open_revision(&key, layout, Default::default())
            .unwrap();
        let identity = Identity::load_or_create(&tmp.path().join("key")).unwrap();
        let transfer = Transfer::new(
            key,
            Arc::new(files),
            &pb::Assignment::default(),
            Arc::new(identity),
            Metrics::register(&mut Default::default()),
            Arc::default(),
            false,
        )
        .unwrap();

        let claim = transfer.claim_write(0).expect("nobody writes chunk 0");
        // A duplicate (endgame, or the origin helper) finds it taken...
        assert!(transfer.claim_write(0).is_none());
        // ...until the writer gives up (a failed write).
        drop(claim);
        let claim = transfer.claim_write(0).expect("released");
        let mut data = ChunkBuf::with_capacity(10);
        data.extend_from_slice(&[7; 10]);
        transfer
            .accept_peer_chunk(0, ChunkDigest::of(&data), data, false)
            .unwrap();
        // Kept in memory for peers.
        assert_eq!(
            transfer.recent_chunk(0).as_deref().map(|b| &b[..]),
            Some(&[7u8; 10][..])
        );
        drop(claim);
        // Complete: nobody writes it again.
        assert!(transfer.claim_write(0).is_none());
    }

    #[test]
    fn the_origin_reader_keeps_one_chunk_in_flight_and_follows_its_rate() {
        let t0 = Instant::now();
        let mut rate = RecentRate::new(t0);
        assert_eq!(rate.origin_depth(t0, 16, MIB), 1);
        // A link shared by many: a chunk per 1.3 s is far less than a chunk
        // per QUEUE_TIME, so one read at a time.
        let t = t0 + Duration::from_millis(1300);
        rate.record(t, MIB);
        assert_eq!(rate.origin_depth(t, 16, MIB), 1);
        // A latency-bound origin: a chunk per 50 ms is five per QUEUE_TIME.
        let mut rate = RecentRate::new(t0);
        let t = t0 + Duration::from_millis(50);
        rate.record(t, MIB);
        assert_eq!(rate.origin_depth(t, 16, MIB), 5);
        // ... and at most `max`.
        assert_eq!(rate.origin_depth(t, 3, MIB), 3);
        // What left the window no longer counts.
        assert_eq!(rate.origin_depth(t + RATE_WINDOW * 2, 16, MIB), 1);
        // A concurrency limit of one is kept.
        assert_eq!(rate.origin_depth(t, 1, MIB), 1);
    }

    #[test]
    fn a_session_keeps_its_maximum_until_it_has_measured_a_whole_window() {
        let t0 = Instant::now();
        let mut rate = RecentRate::new(t0);
        assert_eq!(rate.session_depth(t0, 8, MIB), 8);
        let t = t0 + RATE_WINDOW;
        // 4 MiB over 2 s: 2 MiB/s, half a chunk per QUEUE_TIME: 1 + 1.
        rate.record(t, 4 * MIB);
        assert_eq!(rate.session_depth(t, 8, MIB), 2);
        // Idle: never fewer than MIN_DEPTH.
        assert_eq!(rate.session_depth(t + RATE_WINDOW * 2, 8, MIB), MIN_DEPTH);
    }
}
