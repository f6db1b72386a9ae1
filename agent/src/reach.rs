//! Whether a peer can still deliver the chunks it fetches: the input of the
//! fallback to the origin (`Transfer::run_fallback`).
//!
//! A peer is *up* while this node has a download session with it (it
//! welcomed this node to the revision) and at the moment such a session
//! ends. Any other answer is not: a peer that refuses the dataset (it has
//! not been assigned it yet, it refused the assignment, say for lack of
//! space, or its copy failed) serves nothing, whatever it says. A peer is
//! *unreachable* once it has not been up for the fallback delay, counted
//! from the start of this transfer for a peer that never was.
//!
//! So a peer that merely starts late (it answers "unknown dataset" while
//! its own assignment is being laid out) is waited for one fallback delay
//! before anyone reads its chunks from the origin, and a fetcher that
//! refused or failed its assignment is given up on one fallback delay
//! after it was last up: its chunks no other peer holds are then read from
//! the origin instead of being waited for forever. (The server side ends
//! every session of a transfer that failed and refuses new ones, so a
//! failed fetcher does not look up.)

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// When each peer was last up, as this node's download sessions saw it.
#[derive(Debug)]
pub struct PeerReach {
    started: Instant,
    peers: HashMap<String, Contact>,
    /// Peers with a session now (asked on every request a session makes).
    live: usize,
}

#[derive(Debug, Default, Clone, Copy)]
struct Contact {
    /// Sessions established now.
    sessions: u32,
    last_up: Option<Instant>,
}

impl PeerReach {
    /// Nothing known yet; the fallback delay of a peer never up counts
    /// from `started`.
    pub fn new(started: Instant) -> Self {
        Self {
            started,
            peers: HashMap::new(),
            live: 0,
        }
    }

    /// A session with `node` was established (it welcomed this node).
    pub fn session_opened(&mut self, node: &str, now: Instant) {
        let c = self.peers.entry(node.to_owned()).or_default();
        if c.sessions == 0 {
            self.live += 1;
        }
        c.sessions += 1;
        c.last_up = Some(now);
    }

    /// An established session with `node` ended: it was up until now.
    pub fn session_closed(&mut self, node: &str, now: Instant) {
        let c = self.peers.entry(node.to_owned()).or_default();
        if c.sessions == 1 {
            self.live -= 1;
        }
        c.sessions = c.sessions.saturating_sub(1);
        c.last_up = Some(now);
    }

    /// Peers with an established session.
    pub fn live(&self) -> usize {
        self.live
    }

    /// Whether `node` has not been up for `after` (see the module
    /// documentation).
    pub fn unreachable(&self, node: &str, now: Instant, after: Duration) -> bool {
        let c = self.peers.get(node).copied().unwrap_or_default();
        c.sessions == 0 && now.saturating_duration_since(c.last_up.unwrap_or(self.started)) >= after
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AFTER: Duration = Duration::from_secs(30);

    #[test]
    fn a_peer_that_never_welcomed_this_node_is_waited_for_one_fallback_delay_from_the_start() {
        // It refuses ("unknown dataset": not assigned yet, or it refused
        // the assignment) or does not answer at all: the same to us.
        let t0 = Instant::now();
        let reach = PeerReach::new(t0);
        assert!(!reach.unreachable("late", t0 + AFTER / 2, AFTER));
        assert!(reach.unreachable("late", t0 + AFTER, AFTER));
    }

    #[test]
    fn a_late_starter_that_welcomes_this_node_within_the_delay_stays_reachable() {
        let t0 = Instant::now();
        let mut reach = PeerReach::new(t0);
        reach.session_opened("late", t0 + Duration::from_secs(20));
        assert!(!reach.unreachable("late", t0 + AFTER * 10, AFTER));
        assert_eq!(reach.live(), 1);
    }

    #[test]
    fn a_peer_whose_session_ended_is_given_up_one_delay_after_it_was_last_up() {
        // Its copy failed (its server ends the session and refuses the
        // next), or it went away.
        let t0 = Instant::now();
        let mut reach = PeerReach::new(t0);
        reach.session_opened("fetcher", t0);
        let failed = t0 + Duration::from_secs(100);
        reach.session_closed("fetcher", failed);
        assert_eq!(reach.live(), 0);
        assert!(!reach.unreachable("fetcher", failed + AFTER / 2, AFTER));
        assert!(reach.unreachable("fetcher", failed + AFTER, AFTER));
        // Back (a retry of its assignment worked): reachable at once.
        reach.session_opened("fetcher", failed + AFTER * 2);
        assert!(!reach.unreachable("fetcher", failed + AFTER * 2, AFTER));
    }
}
