//! Whether the origin answers a transfer that needs it: what the agent
//! reports as `DatasetProgress.origin_error`, and how long the origin
//! reader waits before it tries a failed chunk again.
//!
//! A transient failure (network, timeouts, throttling, 5xx: what outlived
//! the origin client's own retries) never fails a transfer: peers keep
//! serving what they have and the reader tries again, ever later up to
//! [`MAX_PAUSE`]. But an origin down for minutes must not look like a slow
//! seed: once no origin read has succeeded for [`REPORT_AFTER`] while this
//! node needed the origin, and a read has failed, the last error is
//! reported; the next read that succeeds clears it. Time in which the node
//! needs nothing from the origin (its chunks come from peers) does not
//! count.

use std::time::{Duration, Instant};

use swarmseed_proto::{Reason, pb};

/// How long no origin read may succeed, while reads fail, before the error
/// is reported.
pub const REPORT_AFTER: Duration = Duration::from_secs(10);

/// The pause after the first failed read of a run of failures; it doubles
/// with each further failure, up to [`MAX_PAUSE`].
pub const FIRST_PAUSE: Duration = Duration::from_secs(2);
pub const MAX_PAUSE: Duration = Duration::from_secs(8);

/// The origin as one transfer sees it.
#[derive(Debug)]
pub struct OriginHealth {
    /// The last read that succeeded, or the last moment this node needed
    /// nothing from the origin.
    fine_at: Instant,
    /// Reason and message of the last failure since then.
    last_error: Option<(Reason, String)>,
    /// Failures since then.
    failures: u32,
    /// Whether the current run of failures has been reported already.
    reported: bool,
}

impl OriginHealth {
    pub fn new(now: Instant) -> Self {
        Self {
            fine_at: now,
            last_error: None,
            failures: 0,
            reported: false,
        }
    }

    /// A read succeeded. Returns whether that ended an outage that
    /// [`Self::report_began`] has not counted yet.
    pub fn succeeded(&mut self, now: Instant) -> bool {
        let uncounted = self.report_began(now);
        *self = Self::new(now);
        uncounted
    }

    /// Nothing is being read and nothing is wanted from the origin; as
    /// [`Self::succeeded`].
    pub fn idle(&mut self, now: Instant) -> bool {
        self.succeeded(now)
    }

    /// A read failed with a transient error (`reason`: a condition reason
    /// such as `SourceUnavailable`). Returns how long to wait before that
    /// chunk is tried again.
    pub fn failed(&mut self, reason: Reason, message: String) -> Duration {
        self.last_error = Some((reason, message));
        self.failures = self.failures.saturating_add(1);
        let doublings = (self.failures - 1).min(8);
        FIRST_PAUSE.saturating_mul(1 << doublings).min(MAX_PAUSE)
    }

    /// The error to report now, with how long no read has succeeded.
    pub fn report(&self, now: Instant) -> Option<(pb::ErrorInfo, u32)> {
        let (reason, message) = self.last_error.as_ref()?;
        let quiet = now.saturating_duration_since(self.fine_at);
        (quiet >= REPORT_AFTER).then(|| {
            (
                pb::ErrorInfo::new(*reason, message.clone()),
                u32::try_from(quiet.as_secs()).unwrap_or(u32::MAX),
            )
        })
    }

    /// Whether a report began with this call (once per run of failures:
    /// what the outage metric counts).
    pub fn report_began(&mut self, now: Instant) -> bool {
        let begins = !self.reported && self.report(now).is_some();
        self.reported |= begins;
        begins
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unavailable(h: &mut OriginHealth) -> Duration {
        h.failed(
            Reason::SourceUnavailable,
            "a.bin: origin unavailable: connection refused".into(),
        )
    }

    #[test]
    fn failures_are_reported_once_no_read_succeeded_for_ten_seconds_and_cleared_by_a_success() {
        let t0 = Instant::now();
        let mut h = OriginHealth::new(t0);
        h.succeeded(t0);
        // The first failure comes after the client's own retries.
        unavailable(&mut h);
        assert!(h.report(t0 + Duration::from_secs(6)).is_none());
        let (error, seconds) = h.report(t0 + REPORT_AFTER).expect("reported");
        assert_eq!(error.known_reason(), Some(Reason::SourceUnavailable));
        assert!(error.message.contains("connection refused"), "{error:?}");
        assert_eq!(seconds, 10);
        assert_eq!(h.report(t0 + Duration::from_secs(42)).unwrap().1, 42);
        // Counted once per outage.
        assert!(h.report_began(t0 + REPORT_AFTER));
        assert!(!h.report_began(t0 + REPORT_AFTER * 2));
        // Back.
        assert!(!h.succeeded(t0 + Duration::from_secs(50)));
        assert!(h.report(t0 + Duration::from_secs(61)).is_none());
        // An outage that ends before anyone asked is counted as it ends.
        unavailable(&mut h);
        assert!(h.succeeded(t0 + Duration::from_secs(70)));
    }

    #[test]
    fn slow_reads_without_a_failure_and_time_not_needing_the_origin_are_not_an_outage() {
        let t0 = Instant::now();
        let mut h = OriginHealth::new(t0);
        // One read taking a minute: slow, not failing.
        assert!(h.report(t0 + Duration::from_secs(60)).is_none());
        // Idle for an hour (peers delivered everything), then one failure:
        // not ten seconds of failing yet.
        h.idle(t0 + Duration::from_secs(3600));
        unavailable(&mut h);
        assert!(h.report(t0 + Duration::from_secs(3601)).is_none());
        assert!(h.report(t0 + Duration::from_secs(3610)).is_some());
    }

    #[test]
    fn a_failed_chunk_is_tried_again_ever_later_up_to_the_maximum_pause() {
        let mut h = OriginHealth::new(Instant::now());
        let pauses: Vec<u64> = (0..6).map(|_| unavailable(&mut h).as_secs()).collect();
        assert_eq!(pauses, [2, 4, 8, 8, 8, 8]);
        h.succeeded(Instant::now());
        assert_eq!(unavailable(&mut h), FIRST_PAUSE);
    }
}
