//! Fallback: the chunks this node takes over from the origin because no
//! one else will deliver them. A pure function of the board, the plan's
//! fetchers, when peers were last up, and the clock; [`Transfer`] runs it
//! once a second.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::info;

use super::Transfer;
use crate::board::{Board, ChunkSet};
use crate::reach::PeerReach;

/// What [`decide`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Fallback {
    /// Chunks to read from the origin now.
    pub take: Vec<u32>,
    /// The fetchers (other than this node) unreachable for the delay.
    pub gone: Vec<String>,
}

/// The chunks no live peer holds whose fetchers have been unreachable for
/// `after`, and, once `after` has passed since `started`, the chunks no
/// fetcher covers at all: none verified, none this node reads already.
pub(super) fn decide(
    board: &Board,
    fetcher_nodes: &[(String, Vec<(u32, u32)>)],
    me: &str,
    reach: &PeerReach,
    started: Instant,
    now: Instant,
    after: Duration,
) -> Fallback {
    let n = board.chunk_count();
    let unreachable: HashSet<&str> = fetcher_nodes
        .iter()
        .map(|(node, _)| node.as_str())
        .filter(|node| *node != me && reach.unreachable(node, now, after))
        .collect();
    let stranded_since_start = now.duration_since(started) >= after;
    let mut covered = ChunkSet::new(n);
    let mut taken = ChunkSet::new(n);
    let mut out = Fallback::default();
    let free = |i: u32, taken: &ChunkSet| {
        !board.is_verified(i)
            && board.availability(i) == 0
            && !board.is_origin(i)
            && !taken.contains(i)
    };
    for (node, ranges) in fetcher_nodes {
        let gone = unreachable.contains(node.as_str());
        if gone {
            out.gone.push(node.clone());
        }
        for &(s, e) in ranges {
            for i in s..e.min(n) {
                covered.insert(i);
                if gone && free(i, &taken) {
                    taken.insert(i);
                    out.take.push(i);
                }
            }
        }
    }
    if stranded_since_start {
        for i in 0..n {
            if !covered.contains(i) && free(i, &taken) {
                taken.insert(i);
                out.take.push(i);
            }
        }
    }
    out
}

impl Transfer {
    /// Gives this node the chunks whose fetchers have been unreachable for
    /// the fallback delay, so no chunk is stranded.
    pub(super) async fn run_fallback(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let decided = self.swarm().take_stranded(
                &self.cfg.node_name,
                self.started,
                Instant::now(),
                self.cfg.fallback_after,
            );
            if !decided.take.is_empty() {
                info!(fetchers = ?decided.gone, "fetchers unreachable: reading their chunks from the origin");
                self.bump();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AFTER: Duration = Duration::from_secs(30);

    fn fetchers() -> Vec<(String, Vec<(u32, u32)>)> {
        vec![
            ("me".into(), vec![(0, 2)]),
            ("gone".into(), vec![(2, 4)]),
            ("up".into(), vec![(4, 6)]),
        ]
    }

    #[test]
    fn nothing_is_taken_before_the_delay() {
        let t0 = Instant::now();
        let board = Board::new(8);
        let reach = PeerReach::new(t0);
        let d = decide(&board, &fetchers(), "me", &reach, t0, t0 + AFTER / 2, AFTER);
        assert_eq!(d, Fallback::default());
    }

    #[test]
    fn an_unreachable_fetchers_chunks_no_peer_holds_are_taken_and_so_are_uncovered_ones() {
        let t0 = Instant::now();
        let mut board = Board::new(8);
        let mut reach = PeerReach::new(t0);
        reach.session_opened("up", t0);
        // A live peer holds chunk 3: it will come from there.
        board.peer_gained(3);
        // This node reads its own range already.
        board.assign_origin(0);
        board.assign_origin(1);
        let now = t0 + AFTER + Duration::from_secs(1);
        let d = decide(&board, &fetchers(), "me", &reach, t0, now, AFTER);
        // 2 from the gone fetcher; 6 and 7 are no fetcher's.
        assert_eq!(d.take, vec![2, 6, 7]);
        assert_eq!(d.gone, vec!["gone".to_string()]);
        // Taken once: the next tick finds them this node's.
        for &i in &d.take {
            board.assign_origin(i);
        }
        let d = decide(&board, &fetchers(), "me", &reach, t0, now, AFTER);
        assert!(d.take.is_empty(), "{d:?}");
    }
}
