//! The origin worker: this node's own origin ranges first, then help for
//! the fetchers that lag, then (when fallback gives it more) chunks whose
//! fetchers are gone.

use crate::lock;
use std::sync::Arc;
use std::time::{Duration, Instant};

use swarmseed_proto::{ChunkDigest, Reason};
use tokio::sync::mpsc;
use tracing::{trace, warn};

use super::Transfer;
use super::rate::RecentRate;
use super::session::SessionError;
use crate::board::help_margin;
use crate::metrics::ReasonLabels;
use swarmseed_origin::OriginError;

/// How long a fetcher done with its own ranges waits before it helps the
/// others (see [`crate::board::Board::pick_help`]): about two announcements
/// on a busy link and one origin read. Without it, on the bench's 16 nodes
/// at 100 Mbit/s, 1.9 % of the chunks were read from the origin twice.
const HELP_AFTER: Duration = Duration::from_millis(1500);

impl Transfer {
    /// Reads this node's origin chunks, a few at a time, then helps the
    /// fetchers that lag.
    pub(super) async fn run_origin(self: Arc<Self>) {
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
                        warn!(reason = e.known_reason().map_or("unknown", Reason::as_str), error = %e.message, seconds = secs, "no origin read has succeeded for a while");
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
            self.fail(
                Reason::InvalidAssignment,
                "the assignment names no origin".into(),
            );
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
                        self.fail(Reason::StorageError, e.to_string());
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
}
