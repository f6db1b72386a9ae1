//! The origin worker: this node's own origin ranges first, then help for
//! the fetchers that lag, then (when fallback gives it more) chunks whose
//! fetchers are gone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use swarmseed_core::ByteSource;
use swarmseed_proto::{ChunkDigest, Reason};
use tokio::sync::mpsc;
use tracing::{trace, warn};

use super::Transfer;
use super::rate::RecentRate;
use super::session::SessionError;
use crate::metrics::ReasonLabels;
use swarmseed_origin::OriginError;

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
        let me = self.identity.public_key();
        loop {
            let depth = rate.origin_depth(Instant::now(), max, chunk_size);
            while in_flight < depth {
                // This node's own chunks first; `help`: one of a lagging
                // fetcher's.
                let picked = {
                    let mut swarm = self.swarm();
                    let own = swarm.pick_origin().map(|i| (i, false));
                    own.or_else(|| Some((swarm.pick_help(&me, depth, Instant::now())?, true)))
                };
                let Some((i, help)) = picked else {
                    break;
                };
                in_flight += 1;
                let this = self.clone();
                let done_tx = done_tx.clone();
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
            let now = Instant::now();
            let outage = {
                let mut swarm = self.swarm();
                if in_flight == 0 && swarm.board().is_complete() {
                    return;
                }
                let health = swarm.origin_health();
                // Nothing wanted from the origin now: no outage.
                let ended = in_flight == 0 && health.idle(now);
                (ended || health.report_began(now)).then(|| health.report(now))
            };
            if let Some(report) = outage {
                self.metrics.origin_outages.inc();
                if let Some((e, secs)) = report {
                    warn!(reason = e.known_reason().map_or("unknown", Reason::as_str), error = %e.message, seconds = secs, "no origin read has succeeded for a while");
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

    /// Reads, verifies and writes one chunk from the origin; the bytes it
    /// got (0 on failure).
    async fn fetch_origin_chunk(self: &Arc<Self>, index: u32) -> u64 {
        let origin = self.swarm().plan().origin.clone();
        let Some(origin) = origin else {
            self.swarm().release(index);
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
                        this.swarm().release(index);
                        this.buffers.give(data);
                        return Ok(());
                    };
                    let digest = ChunkDigest::of(&data);
                    let record = this.identity.attest(&this.revision(), index, digest);
                    this.store_chunk(record, data, ByteSource::Origin, true)
                })
                .await
                .unwrap_or_else(|e| Err(SessionError::Io(std::io::Error::other(e))));
                if let Err(e) = written {
                    self.swarm().release(index);
                    // A store error failed the transfer already, with its
                    // reason and path.
                    if !matches!(e, SessionError::Store(_)) {
                        self.fail(Reason::StorageError, e.to_string());
                    }
                    return 0;
                }
                if self.swarm().origin_health().succeeded(Instant::now()) {
                    self.metrics.origin_outages.inc();
                }
                len
            }
            Err(e) => {
                self.swarm().release(index);
                self.metrics
                    .origin_errors
                    .get_or_create(&ReasonLabels { reason: e.label() })
                    .inc();
                if e.is_transient() {
                    let message = e.to_string();
                    let pause = self.swarm().origin_health().failed(e.reason(), message);
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
