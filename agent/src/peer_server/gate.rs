//! The gate in front of the handshake: connections that have not proven
//! a peer token yet, bounded per source address and in total, and why one
//! was closed. Pure bookkeeping ([`PendingHandshakes`]) and the shared
//! state [`super::serve`] keeps it in.

use crate::lock;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::metrics::{Metrics, ReasonLabels};
use crate::wire::handshake::Refusal;

/// Bounds on connections that have not proven a peer token yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeLimits {
    /// From accept to the answer to HELLO: a peer sends its HELLO as soon
    /// as it reads the server's, one round trip.
    pub timeout: Duration,
    /// Handshakes in progress at once; a new one past it drops the oldest.
    pub max_pending: usize,
    /// Handshakes in progress from one source address (IPv6: one /64); a
    /// new one past it is refused.
    pub max_pending_per_source: usize,
}

impl Default for HandshakeLimits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            max_pending: 256,
            max_pending_per_source: 16,
        }
    }
}

/// Why a connection was closed before it authenticated: the gate's own
/// limits, or what the handshake refused.
#[derive(Debug, thiserror::Error)]
pub(super) enum HandshakeError {
    #[error("{0} handshakes in progress from this address")]
    SourceLimit(usize),
    #[error("dropped for a newer connection: {0} handshakes in progress")]
    Evicted(usize),
    #[error("no valid HELLO within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Refused(#[from] Refusal),
}

impl HandshakeError {
    pub(super) fn label(&self) -> &'static str {
        match self {
            Self::SourceLimit(_) => "source_limit",
            Self::Evicted(_) => "evicted",
            Self::Timeout(_) => "timeout",
            Self::Refused(refusal) => refusal.label(),
        }
    }
}

/// The key a source address is counted under: an IPv4 address (also when
/// mapped into IPv6), or an IPv6 address's /64, which one host usually
/// has whole.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// The handshakes in progress, each with a `T` (what drops it), counted per
/// source and in admission order. Pure bookkeeping: [`serve`] acts on what
/// it decides.
#[derive(Debug)]
pub(super) struct PendingHandshakes<T> {
    limits: HandshakeLimits,
    per_source: HashMap<IpAddr, usize>,
    /// Admission id → (source key, what drops it); the first is the oldest.
    by_age: BTreeMap<u64, (IpAddr, T)>,
    next_id: u64,
}

/// What admitting a new connection decided.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Admission<T> {
    /// Go ahead under this id; drop the connection of the `T` evicted for it.
    Admit { id: u64, evicted: Option<T> },
    /// Its source has `max_pending_per_source` handshakes in progress.
    SourceLimit,
}

impl<T> PendingHandshakes<T> {
    pub(super) fn new(limits: HandshakeLimits) -> Self {
        Self {
            limits,
            per_source: HashMap::new(),
            by_age: BTreeMap::new(),
            next_id: 0,
        }
    }

    pub(super) fn admit(&mut self, source: IpAddr, drop: T) -> Admission<T> {
        let source = source_key(source);
        if self.per_source.get(&source).copied().unwrap_or(0)
            >= self.limits.max_pending_per_source.max(1)
        {
            return Admission::SourceLimit;
        }
        let evicted = if self.by_age.len() >= self.limits.max_pending.max(1) {
            self.by_age.pop_first().map(|(_, (old, t))| {
                self.forget(old);
                t
            })
        } else {
            None
        };
        let id = self.next_id;
        self.next_id += 1;
        self.by_age.insert(id, (source, drop));
        *self.per_source.entry(source).or_insert(0) += 1;
        Admission::Admit { id, evicted }
    }

    /// The handshake `id` ended (authenticated, failed or evicted).
    pub(super) fn release(&mut self, id: u64) {
        if let Some((source, _)) = self.by_age.remove(&id) {
            self.forget(source);
        }
    }

    fn forget(&mut self, source: IpAddr) {
        if let Some(n) = self.per_source.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&source);
            }
        }
    }

    pub(super) fn len(&self) -> usize {
        self.by_age.len()
    }
}

/// Counts refusals between log lines: at most one line per interval.
#[derive(Debug, Default)]
pub(super) struct LogThrottle {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogThrottle {
    /// `Some(refusals since the last line)` when a line is due.
    pub(super) fn due(&mut self, now: Instant, interval: Duration) -> Option<u64> {
        self.suppressed += 1;
        match self.last {
            Some(t) if now.duration_since(t) < interval => None,
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// The shared side of [`PendingHandshakes`]: a connection holds a
/// [`HandshakeSlot`] until it authenticated or ended.
pub(super) struct Gate {
    pub(super) pending: Mutex<PendingHandshakes<CancellationToken>>,
    pub(super) refusals: Mutex<LogThrottle>,
    pub(super) metrics: Arc<Metrics>,
}

pub(super) struct HandshakeSlot {
    pub(super) gate: Arc<Gate>,
    pub(super) id: u64,
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut pending = lock(&self.gate.pending);
        pending.release(self.id);
        self.gate
            .metrics
            .peer_handshakes_pending
            .set(pending.len() as i64);
    }
}

impl Gate {
    pub(super) fn failed(&self, e: &HandshakeError) {
        self.metrics
            .peer_handshakes_failed
            .get_or_create(&ReasonLabels { reason: e.label() })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn limits(timeout: Duration, total: usize, per_source: usize) -> HandshakeLimits {
        HandshakeLimits {
            timeout,
            max_pending: total,
            max_pending_per_source: per_source,
        }
    }

    #[test]
    fn a_source_over_its_share_is_refused_and_the_total_drops_the_oldest() {
        let mut p = PendingHandshakes::new(limits(Duration::from_secs(1), 3, 2));
        let [a, b, c]: [IpAddr; 3] = [1, 2, 3].map(|i| Ipv4Addr::new(10, 0, 0, i).into());
        let admit = |id, evicted| Admission::Admit { id, evicted };
        assert_eq!(p.admit(a, "a0"), admit(0, None));
        assert_eq!(p.admit(a, "a1"), admit(1, None));
        assert_eq!(p.admit(a, "a2"), Admission::SourceLimit);
        assert_eq!(p.admit(b, "b0"), admit(2, None));
        // The total is reached: the oldest goes, whoever it came from.
        assert_eq!(p.admit(c, "c0"), admit(3, Some("a0")));
        assert_eq!(p.len(), 3);
        // a0's share went with it.
        assert_eq!(p.admit(a, "a3"), admit(4, Some("a1")));
        // Releasing an evicted id again changes nothing.
        p.release(0);
        p.release(1);
        assert_eq!(p.len(), 3);
        for id in 2..5 {
            p.release(id);
        }
        assert_eq!(p.len(), 0);
        assert!(p.per_source.is_empty(), "{:?}", p.per_source);
    }

    #[test]
    fn sources_are_counted_by_ipv4_address_and_ipv6_64() {
        let v6 = |s: &str| -> IpAddr { s.parse().unwrap() };
        assert_eq!(source_key(v6("2001:db8:1:2:aa::1")), v6("2001:db8:1:2::"));
        assert_eq!(
            source_key(v6("2001:db8:1:2:aa::1")),
            source_key(v6("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            source_key(v6("2001:db8:1:2::1")),
            source_key(v6("2001:db8:1:3::1"))
        );
        assert_eq!(source_key(v6("::ffff:10.0.0.1")), v6("10.0.0.1"));
        assert_eq!(source_key(v6("10.0.0.1")), v6("10.0.0.1"));
    }

    #[test]
    fn refusals_are_logged_once_per_interval_with_their_count() {
        let mut t = LogThrottle::default();
        let t0 = Instant::now();
        let every = Duration::from_secs(10);
        assert_eq!(t.due(t0, every), Some(1));
        assert_eq!(t.due(t0 + Duration::from_secs(1), every), None);
        assert_eq!(t.due(t0 + Duration::from_secs(2), every), None);
        assert_eq!(t.due(t0 + every, every), Some(3));
    }
}
