//! Which agents read which chunks from the origin, and who peers with whom.
//!
//! Pure: no kube, no network. The reconciler feeds it the revision's chunk
//! layout, the agents on the selected nodes and the plan it sent last time,
//! and sends the result to every agent.
//!
//! Rules:
//! - at most `maxFetchers` agents read from the origin, each a set of
//!   contiguous chunk ranges; the ranges are disjoint and cover every chunk,
//!   so each byte leaves the origin about once; never more fetchers than
//!   chunks, and every fetcher gets at least one chunk, so that the plan for
//!   the same inputs is the plan itself (a fetcher left without chunks would
//!   be dropped, and a rebalance would bring it back at the next run, for
//!   ever: a small dataset then never settled);
//! - a node that failed or refused the revision is not made a fetcher (and
//!   loses the role if it had it): its chunks would never be read;
//! - a plan that still fits is kept as it is (same generation), so sending
//!   it again is a no-op for the agents;
//! - when a fetcher goes away, only its ranges move (to replacement
//!   fetchers, else to the surviving ones) and the generation is bumped;
//!   surviving fetchers keep what they already fetch;
//! - ranges are balanced by bytes, not by chunk count (packed small-file
//!   chunks and a file's last chunk are shorter);
//! - each agent gets a bounded peer set: every fetcher plus others chosen
//!   by a hash of the pair, so the choice is stable and spread evenly.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use swarmseed_proto::ChunkLayout;
use swarmseed_proto::pb;

/// Peers per agent (besides the fetchers, which every agent gets).
pub const DEFAULT_MAX_PEERS: usize = 16;

/// An agent on a selected node, as found from its Pod and its GetStatus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentInfo {
    pub node_name: String,
    pub pod_ip: String,
    pub control_port: u16,
    /// host:port of its peer data server.
    pub peer_address: String,
    /// Ed25519 public key (32 bytes).
    pub public_key: Vec<u8>,
    /// The Pod is ready and GetStatus answered.
    pub ready: bool,
}

impl AgentInfo {
    fn usable(&self) -> bool {
        self.ready && !self.peer_address.is_empty() && self.public_key.len() == 32
    }
}

/// An agent that reads from the origin, and the chunks it reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetcher {
    pub node_name: String,
    pub public_key: Vec<u8>,
    /// Disjoint, non-empty, in increasing order.
    pub ranges: Vec<Range<u32>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Bumped whenever the plan for the same revision changes.
    pub generation: u64,
    /// The revision (hex) the ranges refer to.
    pub revision: String,
    pub chunk_count: u32,
    pub fetchers: Vec<Fetcher>,
    /// The peers of each agent, by node name.
    pub peers: BTreeMap<String, Vec<pb::Peer>>,
}

impl Plan {
    /// The fetchers in wire form.
    pub fn fetchers_pb(&self) -> Vec<pb::OriginFetcher> {
        self.fetchers
            .iter()
            .map(|f| pb::OriginFetcher {
                node_name: f.node_name.clone(),
                public_key: f.public_key.clone(),
                ranges: f
                    .ranges
                    .iter()
                    .map(|r| pb::ChunkRange {
                        start: r.start,
                        end: r.end,
                    })
                    .collect(),
            })
            .collect()
    }

    /// The peers of `node` (empty when the node is not in the plan).
    pub fn peers_of(&self, node: &str) -> &[pb::Peer] {
        self.peers.get(node).map(Vec::as_slice).unwrap_or_default()
    }
}

/// The plan the agents already follow, as they report it: a restarted
/// operator continues from it, so the attestations the agents hold stay
/// valid and nothing is fetched twice. The latest generation wins; peers
/// are recomputed.
pub fn from_agents<'a>(
    revision: &str,
    chunk_count: u32,
    reports: impl IntoIterator<Item = &'a pb::DatasetProgress>,
) -> Option<Plan> {
    let latest = reports
        .into_iter()
        .filter(|p| p.revision == revision && !p.fetchers.is_empty())
        .max_by_key(|p| p.plan_generation)?;
    Some(Plan {
        generation: latest.plan_generation,
        revision: revision.to_owned(),
        chunk_count,
        fetchers: latest
            .fetchers
            .iter()
            .map(|f| Fetcher {
                node_name: f.node_name.clone(),
                public_key: f.public_key.clone(),
                ranges: f.ranges.iter().map(|r| r.start..r.end).collect(),
            })
            .collect(),
        peers: BTreeMap::new(),
    })
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("no ready agent on the selected nodes")]
    NoReadyAgents,
}

impl PlanError {
    pub fn label(&self) -> &'static str {
        match self {
            Self::NoReadyAgents => "no_ready_agents",
        }
    }
}

pub struct PlanInput<'a> {
    pub layout: &'a ChunkLayout,
    /// Agents on the selected nodes (unready ones are ignored).
    pub agents: &'a [AgentInfo],
    /// Nodes that may not read from the origin (they failed or refused
    /// this revision); they stay peers.
    pub no_fetch: &'a BTreeSet<String>,
    pub previous: Option<&'a Plan>,
    pub max_fetchers: u32,
    pub max_peers: usize,
}

/// Plans one revision.
pub fn plan(input: &PlanInput<'_>) -> Result<Plan, PlanError> {
    let layout = input.layout;
    let revision = layout.revision().to_hex();
    let chunk_count = layout.chunk_count();
    let live: BTreeMap<&str, &AgentInfo> = input
        .agents
        .iter()
        .filter(|a| a.usable())
        .map(|a| (a.node_name.as_str(), a))
        .collect();
    if live.is_empty() {
        return Err(PlanError::NoReadyAgents);
    }
    let candidates: BTreeMap<&str, &AgentInfo> = live
        .iter()
        .filter(|(n, _)| !input.no_fetch.contains(**n))
        .map(|(n, a)| (*n, *a))
        .collect();
    let k = (input.max_fetchers.max(1) as usize)
        .min(candidates.len())
        .min(chunk_count as usize);

    // Fetchers of the previous plan that are still alive with the same key
    // keep their role (and, for the same revision, their ranges).
    let previous = input.previous;
    let same_revision =
        previous.is_some_and(|p| p.revision == revision && p.chunk_count == chunk_count);
    let alive = |f: &Fetcher| {
        candidates
            .get(f.node_name.as_str())
            .is_some_and(|a| a.public_key == f.public_key)
    };
    let mut kept: Vec<Fetcher> = previous
        .map(|p| p.fetchers.iter().filter(|f| alive(f)).cloned().collect())
        .unwrap_or_default();
    kept.truncate(k);

    // New fetchers, spread over nodes by a hash of (revision, node) so that
    // different datasets pick different nodes.
    let taken: BTreeSet<&str> = kept.iter().map(|f| f.node_name.as_str()).collect();
    let mut fresh: Vec<&AgentInfo> = candidates
        .values()
        .copied()
        .filter(|a| !taken.contains(a.node_name.as_str()))
        .collect();
    fresh.sort_by_key(|a| {
        (
            score(&[revision.as_bytes(), a.node_name.as_bytes()]),
            a.node_name.clone(),
        )
    });
    fresh.truncate(k - kept.len());
    let mut fresh: Vec<Fetcher> = fresh
        .into_iter()
        .map(|a| Fetcher {
            node_name: a.node_name.clone(),
            public_key: a.public_key.clone(),
            ranges: Vec::new(),
        })
        .collect();

    let mut fetchers = if !same_revision || (kept.len() < k && orphans(previous, &kept).is_empty())
    {
        // New revision, or more fetchers allowed: balance everything anew
        // (kept fetchers first, so they keep the leading share).
        let mut all = kept;
        all.append(&mut fresh);
        for f in &mut all {
            f.ranges.clear();
        }
        let parts = split(layout, std::slice::from_ref(&(0..chunk_count)), all.len());
        for (f, p) in all.iter_mut().zip(parts) {
            f.ranges = p;
        }
        all
    } else {
        // Same revision: only the ranges nobody holds any more move.
        let orphaned = orphans(previous, &kept);
        let receivers = if fresh.is_empty() {
            &mut kept
        } else {
            &mut fresh
        };
        let parts = split(layout, &orphaned, receivers.len());
        for (f, p) in receivers.iter_mut().zip(parts) {
            f.ranges.extend(p);
            f.ranges.sort_by_key(|r| r.start);
            f.ranges = merge_adjacent(std::mem::take(&mut f.ranges));
        }
        kept.append(&mut fresh);
        kept
    };
    fetchers.retain(|f| !f.ranges.is_empty());

    let peers = peer_sets(&live, &fetchers, input.max_peers);
    let generation = match previous {
        Some(p) if same_revision && p.fetchers == fetchers && p.peers == peers => p.generation,
        Some(p) => p.generation + 1,
        None => 1,
    };
    Ok(Plan {
        generation,
        revision,
        chunk_count,
        fetchers,
        peers,
    })
}

/// The chunk ranges of `previous` that none of `kept` covers.
fn orphans(previous: Option<&Plan>, kept: &[Fetcher]) -> Vec<Range<u32>> {
    let Some(p) = previous else { return Vec::new() };
    let kept: BTreeSet<&str> = kept.iter().map(|f| f.node_name.as_str()).collect();
    let mut out: Vec<Range<u32>> = p
        .fetchers
        .iter()
        .filter(|f| !kept.contains(f.node_name.as_str()))
        .flat_map(|f| f.ranges.iter().cloned())
        .collect();
    out.sort_by_key(|r| r.start);
    merge_adjacent(out)
}

fn merge_adjacent(ranges: Vec<Range<u32>>) -> Vec<Range<u32>> {
    let mut out: Vec<Range<u32>> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if last.end == r.start => last.end = r.end,
            _ => out.push(r),
        }
    }
    out
}

/// Splits the chunks of `ranges` into `parts` groups of contiguous ranges,
/// in order, with about equal bytes each. Every group gets at least one
/// chunk while there are as many chunks as groups (balancing by bytes
/// alone leaves a group empty beside a chunk much larger than the
/// others); with fewer chunks, the last groups are empty.
fn split(layout: &ChunkLayout, ranges: &[Range<u32>], parts: usize) -> Vec<Vec<Range<u32>>> {
    let mut out = vec![Vec::new(); parts];
    if parts == 0 {
        return out;
    }
    let chunks: Vec<u32> = ranges.iter().flat_map(|r| r.clone()).collect();
    let n = chunks.len();
    let total: u64 = chunks.iter().map(|&i| layout.chunk_len(i)).sum();
    // Zero-length chunks cannot exist, but weigh by count if bytes are 0.
    let weight = |i: u32| if total == 0 { 1 } else { layout.chunk_len(i) };
    let total = if total == 0 { n as u64 } else { total };
    // The group of each position by bytes: the one whose share holds the
    // chunk's midpoint.
    let mut done = 0u64;
    let mut group: Vec<usize> = chunks
        .iter()
        .map(|&i| {
            let w = weight(i);
            let mid = done * 2 + w;
            done += w;
            (((mid as u128 * parts as u128) / (total as u128 * 2)) as usize).min(parts - 1)
        })
        .collect();
    // Then at least one chunk per group, keeping the order: position p
    // goes to a group no later than p allows (the groups before it need a
    // chunk each) and no earlier than the chunks after it need.
    for (p, g) in group.iter_mut().enumerate() {
        *g = (*g).min(p).max((parts.min(n)).saturating_sub(n - p));
    }
    for p in 1..n {
        group[p] = group[p].clamp(group[p - 1], group[p - 1] + 1);
    }
    let mut p = 0;
    for r in ranges {
        let mut start = r.start;
        for i in r.clone() {
            if i > start && group[p] != group[p - 1] {
                out[group[p - 1]].push(start..i);
                start = i;
            }
            p += 1;
        }
        if r.end > start {
            out[group[p - 1]].push(start..r.end);
        }
    }
    out
}

/// A stable pseudo-random rank.
fn score(parts: &[&[u8]]) -> u64 {
    let mut h = blake3::Hasher::new();
    for p in parts {
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p);
    }
    let b = h.finalize();
    u64::from_le_bytes(b.as_bytes()[..8].try_into().unwrap_or_default())
}

fn peer_sets(
    live: &BTreeMap<&str, &AgentInfo>,
    fetchers: &[Fetcher],
    max_peers: usize,
) -> BTreeMap<String, Vec<pb::Peer>> {
    let is_fetcher: BTreeSet<&str> = fetchers.iter().map(|f| f.node_name.as_str()).collect();
    let peer = |a: &AgentInfo| pb::Peer {
        node_name: a.node_name.clone(),
        address: a.peer_address.clone(),
    };
    let mut out = BTreeMap::new();
    for (&node, _) in live.iter() {
        let mut chosen: Vec<&AgentInfo> = live
            .iter()
            .filter(|(n, _)| **n != node && is_fetcher.contains(*n))
            .map(|(_, a)| *a)
            .collect();
        // The pair score is symmetric, so a choice tends to be mutual.
        let mut others: Vec<(u64, &AgentInfo)> = live
            .iter()
            .filter(|(n, _)| **n != node && !is_fetcher.contains(*n))
            .map(|(n, a)| {
                let (x, y) = if node < *n { (node, *n) } else { (*n, node) };
                (score(&[x.as_bytes(), y.as_bytes()]), *a)
            })
            .collect();
        others.sort_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| a.1.node_name.cmp(&b.1.node_name))
        });
        let room = max_peers.saturating_sub(chosen.len());
        chosen.extend(others.into_iter().take(room).map(|(_, a)| a));
        chosen.sort_by(|a, b| a.node_name.cmp(&b.node_name));
        out.insert(node.to_owned(), chosen.into_iter().map(peer).collect());
    }
    out
}

#[cfg(test)]
mod tests;
