//! The async shell of a download session: it connects, runs the client
//! handshake, then moves bytes between the socket and the sans-IO
//! [`PeerSession`] (which decides), and hashes and writes pieces through
//! the sink on blocking threads.

use crate::lock;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use swarmseed_proto::pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span, warn};

use super::session::{Next, PeerSession, SessionError};
use super::{Transfer, scopeguard};
use crate::attest::ChunkRecord;
use crate::board::ScanOrder;
use crate::metrics::ReasonLabels;
use crate::wire::handshake::{self, Credentials};
use crate::wire::{self, Frame, Kind};

/// Chunks of one peer session being verified at once.
const VERIFY_SLOTS: usize = 3;

enum SessionEvent {
    /// A request was answered: this many chunk bytes arrived (0: refused).
    Resolved(u64),
    Closed(Result<(), SessionError>),
}

impl Transfer {
    /// Starts a session for every planned peer without one, stops sessions
    /// of peers no longer planned.
    pub(super) fn sync_sessions(self: &Arc<Self>) {
        let start = self
            .swarm()
            .plan_sessions(&self.cfg.node_name, || self.cancel.child_token());
        for (peer, token) in start {
            let this = self.clone();
            tokio::spawn(async move { this.run_peer(peer, token).await });
        }
    }

    pub(super) fn stop_sessions(&self) {
        self.swarm().stop_sessions();
    }

    /// Keeps one download session with `peer` alive until the transfer is
    /// complete, reconnecting with backoff; drops the peer for good if it
    /// serves bad data.
    async fn run_peer(self: Arc<Self>, peer: pb::Peer, cancel: CancellationToken) {
        let span = info_span!("peer", node = %peer.node_name, addr = %peer.address);
        async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                if cancel.is_cancelled() {
                    return;
                }
                {
                    let swarm = self.swarm();
                    if swarm.board().is_complete() || swarm.is_banned(&peer.node_name) {
                        return;
                    }
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
                        self.swarm().ban(peer.node_name.clone());
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

    pub(super) async fn session(
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
        let token = self.token();
        let creds = Credentials {
            token: &token,
            revision: self.revision(),
            namespace: &self.key.namespace,
            name: &self.key.name,
            node: &self.cfg.node_name,
        };
        let chunk_count = handshake::client(&mut rd, &mut wr, io_timeout, &creds).await?;
        if chunk_count != self.layout.chunk_count() {
            return Err(SessionError::Protocol("chunk count differs".into()));
        }
        // A refusal is no sign of life for the fallback (see
        // `crate::reach`): only a welcome is.
        self.swarm().session_opened(&peer.node_name, Instant::now());
        self.metrics.active_peers.inc();
        let _active = scopeguard(|| {
            self.metrics.active_peers.dec();
            // It was up until now.
            self.swarm().session_closed(&peer.node_name, Instant::now());
        });

        let core = Arc::new(Mutex::new(PeerSession::new(
            &self.layout,
            ScanOrder::random(self.layout.chunk_count()),
            self.cfg.stall_timeout,
            Instant::now(),
        )));
        let (events_tx, mut events) = mpsc::channel(64);
        let reader = {
            let this = self.clone();
            let core = core.clone();
            tokio::spawn(async move {
                let r = this.read_loop(rd, &core, &events_tx).await;
                let _ = events_tx.send(SessionEvent::Closed(r)).await;
            })
        };
        let result = self.request_loop(&mut wr, &core, &mut events, cancel).await;
        // Wait for the reader to stop: a HAVE batch it is still applying
        // would otherwise raise availability after `close` below, and a
        // chunk only this peer "holds" would never go to the origin.
        reader.abort();
        let _ = reader.await;
        self.with_session(&core, |session, swarm| swarm.close_session(session));
        self.bump();
        result
    }

    async fn request_loop(
        &self,
        wr: &mut OwnedWriteHalf,
        core: &Mutex<PeerSession>,
        events: &mut mpsc::Receiver<SessionEvent>,
        cancel: &CancellationToken,
    ) -> Result<(), SessionError> {
        let mut version = self.board_version.subscribe();
        loop {
            let next =
                self.with_session(core, |session, swarm| swarm.fill(session, Instant::now()));
            match next {
                Next::Complete => return Ok(()),
                Next::Send(requests) => send(wr, &requests).await?,
            }
            let stall = lock(core).stall_deadline();
            let stall_at = tokio::time::Instant::from_std(
                stall.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600)),
            );
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(SessionEvent::Resolved(bytes)) => lock(core).on_resolved(Instant::now(), bytes),
                    Some(SessionEvent::Closed(r)) => return r,
                    None => return Ok(()),
                },
                r = version.changed() => {
                    if r.is_err() {
                        return Ok(());
                    }
                    // Endgame: cancel what another peer already delivered.
                    let cancels = self.with_session(core, |session, swarm| swarm.cancels(session));
                    send(wr, &cancels).await?;
                }
                _ = tokio::time::sleep_until(stall_at), if stall.is_some() => {}
                _ = cancel.cancelled() => return Ok(()),
            }
            lock(core).on_timer(Instant::now())?;
        }
    }

    async fn read_loop(
        self: &Arc<Self>,
        mut rd: BufReader<OwnedReadHalf>,
        core: &Arc<Mutex<PeerSession>>,
        events: &mpsc::Sender<SessionEvent>,
    ) -> Result<(), SessionError> {
        let rev = self.revision();
        // Chunks received but not yet verified: bounds memory to
        // VERIFY_SLOTS chunks per peer.
        let verify_slots = Arc::new(tokio::sync::Semaphore::new(VERIFY_SLOTS));
        loop {
            let header = wire::read_header(&mut rd).await?;
            if header.kind == Kind::Piece as u8 {
                if header.len < 4 {
                    return Err(SessionError::Protocol("short PIECE".into()));
                }
                let mut idx = [0u8; 4];
                rd.read_exact(&mut idx).await?;
                let index = u32::from_le_bytes(idx);
                let data_len = u64::from(header.len - 4);
                lock(core).on_piece_header(&self.layout, index, data_len)?;
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
                let core = core.clone();
                let events = events.clone();
                tokio::task::spawn_blocking(move || {
                    let result = this.verify_peer_chunk(index, buf, &core);
                    drop(permit);
                    let event = match result {
                        Ok(()) => SessionEvent::Resolved(data_len),
                        Err(e) => SessionEvent::Closed(Err(e)),
                    };
                    let _ = events.blocking_send(event);
                });
                continue;
            }
            const EXPECTED: [Kind; 3] = [Kind::Have, Kind::Reject, Kind::Error];
            if !EXPECTED.iter().any(|k| *k as u8 == header.kind) {
                return Err(SessionError::Protocol(format!(
                    "unexpected frame {}",
                    header.kind
                )));
            }
            let kind = header.check_control()?;
            let payload = wire::read_payload(&mut rd, header).await?;
            match Frame::decode(kind, &payload)? {
                Frame::Have(mut records) => {
                    records.retain(|r| r.index < self.layout.chunk_count());
                    // Every peer passes on the same attestation of a chunk:
                    // check its signature once, not once per peer (an
                    // ed25519 verification costs far more than the rest of
                    // a HAVE), and outside the swarm's lock.
                    let (fetchers, known) = {
                        let swarm = self.swarm();
                        (
                            swarm.plan().fetchers.clone(),
                            swarm.known_attestations(&records),
                        )
                    };
                    let valid: Vec<ChunkRecord> = records
                        .into_iter()
                        .zip(known)
                        .filter(|(r, known)| *known || fetchers.accepts(&rev, r))
                        .map(|(r, _)| r)
                        .collect();
                    let gained =
                        self.with_session(core, |session, swarm| swarm.on_have(session, valid));
                    if gained {
                        self.bump();
                    }
                }
                Frame::Reject(index) => {
                    let released =
                        self.with_session(core, |session, swarm| swarm.on_reject(session, index));
                    if released {
                        // The peer no longer offers it (cancelled or gone).
                        self.bump();
                    }
                    let _ = events.send(SessionEvent::Resolved(0)).await;
                }
                Frame::Error(why) => return Err(SessionError::Refused(why)),
                other => {
                    return Err(SessionError::Protocol(format!(
                        "unexpected frame {}",
                        other.kind() as u8
                    )));
                }
            }
        }
    }
}

/// Sends REQUESTs or CANCELs in one write.
async fn send(wr: &mut OwnedWriteHalf, frames: &[Frame]) -> Result<(), SessionError> {
    if frames.is_empty() {
        return Ok(());
    }
    let mut buf = Vec::with_capacity(frames.len() * (wire::HEADER_LEN + 4));
    for f in frames {
        f.encode_into(&mut buf);
    }
    wr.write_all(&buf).await?;
    Ok(())
}
