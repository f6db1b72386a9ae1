//! Chunk bytes received lately, and the requests in flight they call
//! for: per peer session, and for the origin reader.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Requests one session keeps in flight however slow its peer: one being
/// sent and one waiting keep the connection busy.
pub(super) const MIN_DEPTH: usize = 2;

/// A session keeps about this much of its peer's recent rate in flight
/// beyond the chunk being sent. A peer whose uplink is shared by many
/// sessions serves each slowly; a chunk queued there waits while another
/// peer that holds it idles, so slow peers get short queues.
const QUEUE_TIME: Duration = Duration::from_millis(250);

/// The window over which a session's receive rate is measured.
const RATE_WINDOW: Duration = Duration::from_secs(2);

/// Chunk bytes received over the last [`RATE_WINDOW`], by one peer session
/// or by the origin reader.
pub(super) struct RecentRate {
    since: Instant,
    arrivals: VecDeque<(Instant, u64)>,
    bytes: u64,
}

impl RecentRate {
    pub(super) fn new(now: Instant) -> Self {
        Self {
            since: now,
            arrivals: Default::default(),
            bytes: 0,
        }
    }

    pub(super) fn record(&mut self, now: Instant, bytes: u64) {
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
    pub(super) fn session_depth(&mut self, now: Instant, max: usize, chunk_size: u64) -> usize {
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
    pub(super) fn origin_depth(&mut self, now: Instant, max: usize, chunk_size: u64) -> usize {
        let (per_sec, _) = self.per_sec(now);
        (Self::queued(per_sec, chunk_size).ceil() as usize).clamp(1, max.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

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
