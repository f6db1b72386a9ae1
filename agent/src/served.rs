//! What the peer server needs of one revision on this node, in one
//! object: its files, the chunks verified so far and their announcements,
//! the recent-chunk cache, upload counts, the peer token and the upload
//! limiter.
//!
//! The download side ([`crate::transfer`]) fills it as chunks verify; the
//! upload side ([`crate::peer_server`]) only reads it. Neither calls the
//! other.

use crate::lock;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use swarmseed_proto::{ChunkLayout, RevisionId};
use swarmseed_runtime::ratelimit::TokenBucket;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::attest::ChunkRecord;
use crate::board::ChunkSet;
use crate::chunkmem::{ChunkBuf, RecentChunks};
use crate::metrics::Metrics;
use crate::store::{DatasetKey, RevisionFiles};
use crate::wire::handshake::Served;

/// The burst a node's upload limit lets pass at once: a tenth of a
/// second's worth, so that short bursts do not overshoot the average.
pub const UPLOAD_BURST: Duration = Duration::from_millis(100);

/// Announcements a slow upload connection may lag behind before it is
/// sent the whole have-set again.
const ANNOUNCE_QUEUE: usize = 4096;

/// Who may read the revision and how fast (both follow the plan).
struct Access {
    token: [u8; 32],
    upload: Arc<TokenBucket>,
}

/// The chunks verified so far, with the attestations peers are sent.
struct Verified {
    set: ChunkSet,
    records: Vec<ChunkRecord>,
}

pub struct ServedRevision {
    pub key: DatasetKey,
    files: Arc<RevisionFiles>,
    layout: Arc<ChunkLayout>,
    metrics: Arc<Metrics>,
    access: Mutex<Access>,
    verified: Mutex<Verified>,
    haves: broadcast::Sender<ChunkRecord>,
    /// Copies of each chunk this node has begun sending to peers.
    uploads: Box<[AtomicU16]>,
    /// The chunks verified last, kept to serve peers from memory.
    recent: RecentChunks,
    served: AtomicU64,
    failed: AtomicBool,
    stopped: CancellationToken,
}

impl ServedRevision {
    /// A revision holding no verified chunk yet; `stopped` ends its upload
    /// connections.
    pub fn new(
        key: DatasetKey,
        files: Arc<RevisionFiles>,
        metrics: Arc<Metrics>,
        token: [u8; 32],
        upload: Arc<TokenBucket>,
        recent_bytes: u64,
        stopped: CancellationToken,
    ) -> Self {
        let layout = files.layout().clone();
        let uploads = (0..layout.chunk_count())
            .map(|_| AtomicU16::new(0))
            .collect();
        Self {
            key,
            verified: Mutex::new(Verified {
                set: ChunkSet::new(layout.chunk_count()),
                records: Vec::new(),
            }),
            files,
            layout,
            metrics,
            access: Mutex::new(Access { token, upload }),
            haves: broadcast::channel(ANNOUNCE_QUEUE).0,
            uploads,
            recent: RecentChunks::new(recent_bytes),
            served: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            stopped,
        }
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

    /// A new plan: its token and upload limit.
    pub fn set_access(&self, token: [u8; 32], upload: Arc<TokenBucket>) {
        *lock(&self.access) = Access { token, upload };
    }

    pub fn upload_limit(&self) -> Arc<TokenBucket> {
        lock(&self.access).upload.clone()
    }

    /// The copy failed: new clients are told so, not served.
    pub fn set_failed(&self) {
        self.failed.store(true, Ordering::Relaxed);
    }

    /// Completes when the revision is no longer served (failed, replaced
    /// or removed).
    pub fn stopped(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.stopped.cancelled()
    }

    /// Chunk `record.index` is verified and written (and, if the caller
    /// kept it, in the recent-chunk cache): peers may ask for it.
    pub fn announce(&self, record: ChunkRecord) {
        {
            let mut v = lock(&self.verified);
            if v.set.insert(record.index) {
                v.records.push(record);
            }
        }
        let _ = self.haves.send(record);
    }

    /// Verified chunks and their attestations, for a peer's initial HAVE.
    pub fn have_snapshot(&self) -> Vec<ChunkRecord> {
        lock(&self.verified).records.clone()
    }

    /// New announcements; subscribe before taking [`Self::have_snapshot`]
    /// so that none falls in between.
    pub fn subscribe_haves(&self) -> broadcast::Receiver<ChunkRecord> {
        self.haves.subscribe()
    }

    pub fn has_chunk(&self, i: u32) -> bool {
        lock(&self.verified).set.contains(i)
    }

    /// Keeps a verified chunk in memory for the peers that will ask for it
    /// soon; the buffers that makes room for.
    pub fn keep_recent(&self, index: u32, data: ChunkBuf) -> Vec<ChunkBuf> {
        self.recent.insert(index, data)
    }

    /// Chunk `index` if it is among those verified last.
    pub fn recent_chunk(&self, index: u32) -> Option<Arc<ChunkBuf>> {
        self.recent.get(index)
    }

    /// Lets go of the recent-chunk cache (peers are sent from disk).
    pub fn clear_recent(&self) {
        self.recent.clear();
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

    /// `bytes` of chunks were sent to a peer.
    pub fn served(&self, bytes: u64) {
        self.served.fetch_add(bytes, Ordering::Relaxed);
        self.metrics.bytes_served.inc_by(bytes);
    }

    /// Of the bytes [`Self::served`], those sent from memory.
    pub fn served_from_memory(&self, bytes: u64) {
        self.metrics.bytes_served_from_memory.inc_by(bytes);
    }

    /// Bytes sent to peers so far.
    pub fn bytes_served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }
}

impl Served for Arc<ServedRevision> {
    fn token(&self) -> [u8; 32] {
        lock(&self.access).token
    }

    fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }
}
