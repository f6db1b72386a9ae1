//! The sink every verified chunk goes through, whoever delivered it:
//! claim (one writer per chunk), verify, write, commit to the chunk log,
//! announce. And recovery, which refills the board from what survived a
//! restart.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use swarmseed_core::ByteSource;
use swarmseed_proto::ChunkDigest;
use tracing::debug;

use super::session::{PeerSession, SessionError};
use super::{ScopeGuard, Transfer, scopeguard};
use crate::attest::ChunkRecord;
use crate::board::ChunkSet;
use crate::chunkmem::ChunkBuf;

impl Transfer {
    /// Loads what survived a restart: chunks in the log that still hash to
    /// their digest, and chunks that lie in files reused from an earlier
    /// revision.
    pub(super) async fn recover(self: &Arc<Self>) -> Result<(), crate::store::StoreError> {
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
                    this.metrics.reused(buf.len() as u64);
                    fresh.push(rec);
                }
            }
            this.files.record_verified(&fresh)?;
            recovered.extend(fresh);
            this.swarm().recovered(&recovered);
            // Peers connected while recovery ran got an empty have-set:
            // announce what survived (a lagging session re-reads the whole
            // set).
            for &rec in &recovered {
                this.served.announce(rec);
            }
            if !recovered.is_empty() {
                debug!(verified = recovered.len(), "recovered chunks");
            }
            Ok(())
        })
        .await
        .map_err(|e| crate::store::StoreError::Io {
            path: "recovery".into(),
            source: std::io::Error::other(e),
        })?
    }

    /// Hashes a chunk received from a peer; writes and announces it if it
    /// matches the attested digest (a mismatch drops the peer).
    pub(super) fn verify_peer_chunk(
        &self,
        index: u32,
        data: ChunkBuf,
        session: &Mutex<PeerSession>,
    ) -> Result<(), SessionError> {
        let digest = ChunkDigest::of(&data);
        // Not ours to release any more if the session ended meanwhile: its
        // teardown released the request already.
        let requested = self.with_session(session, |session, swarm| {
            swarm.on_piece_hashed(session, index, digest)
        });
        let requested = match requested {
            Ok(r) => r,
            Err(e) => {
                self.buffers.give(data);
                return Err(e);
            }
        };
        let Some(_claim) = self.claim_write(index) else {
            // Endgame duplicate: already have it, or another writer does.
            if requested {
                self.swarm().release(index);
            }
            self.buffers.give(data);
            return Ok(());
        };
        self.accept_peer_chunk(index, digest, data, requested)
    }

    /// Writes a verified chunk, keeps it in memory for the peers that will
    /// ask for it, and announces it (in that order, so that they find it
    /// there).
    pub(super) fn store_chunk(
        &self,
        record: ChunkRecord,
        data: ChunkBuf,
        source: ByteSource,
        requested: bool,
    ) -> Result<(), SessionError> {
        if let Err(e) = self.files.write_chunk(record.index, &data) {
            self.buffers.give(data);
            self.fail_storage(&e);
            return Err(e.into());
        }
        let len = data.len() as u64;
        for buf in self.served.keep_recent(record.index, data) {
            self.buffers.give(buf);
        }
        self.commit(record, source, len, requested)
    }

    /// The right to write chunk `index`, held until the chunk is committed
    /// (or its write failed); `None` if it is complete or being written.
    pub(super) fn claim_write(&self, index: u32) -> Option<ScopeGuard<impl FnMut() + '_>> {
        let claimed = self.swarm().claim_write(index);
        // Built only when claimed: dropping a claim releases its chunk.
        claimed.then(|| scopeguard(move || self.swarm().end_write(index)))
    }

    pub(super) fn accept_peer_chunk(
        &self,
        index: u32,
        digest: ChunkDigest,
        data: ChunkBuf,
        requested: bool,
    ) -> Result<(), SessionError> {
        // Re-announce it with the fetcher's attestation we accepted.
        let attestation = self.swarm().attestation(index, digest);
        let record =
            attestation.unwrap_or_else(|| self.identity.attest(&self.revision(), index, digest));
        self.store_chunk(record, data, ByteSource::Peer, requested)
    }

    fn commit(
        &self,
        record: ChunkRecord,
        source: ByteSource,
        bytes: u64,
        requested: bool,
    ) -> Result<(), SessionError> {
        if let Err(e) = self.files.record_verified(&[record]) {
            self.fail_storage(&e);
            return Err(e.into());
        }
        let new = self.swarm().commit(record, requested);
        if new {
            let counter = match source {
                ByteSource::Origin => &self.counters.from_origin,
                ByteSource::Peer => &self.counters.from_peers,
            };
            counter.fetch_add(bytes, Ordering::Relaxed);
            self.metrics.received(source, bytes);
            self.metrics.chunks_verified.inc();
            self.served.announce(record);
        }
        self.bump();
        Ok(())
    }
}
