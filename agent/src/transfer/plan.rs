//! The plan as one transfer reads it: peers, fetchers and their ranges,
//! the peer token, limits, the pinned digest and the origin to read.

use std::sync::Arc;

use swarmseed_proto::ContentDigest;
use swarmseed_proto::pb;

use super::TransferConfig;
use crate::attest::FetcherTable;
use crate::served::UPLOAD_BURST;
use swarmseed_origin::{OriginClient, OriginError};
use swarmseed_runtime::ratelimit::TokenBucket;

/// What the plan says, as this transfer uses it.
pub(super) struct Plan {
    pub(super) generation: u64,
    pub(super) token: [u8; 32],
    /// Shared: every HAVE a session receives is checked against it,
    /// outside the swarm's lock.
    pub(super) fetchers: Arc<FetcherTable>,
    /// The fetchers as assigned (reported back to the operator).
    pub(super) assigned_fetchers: Vec<pb::OriginFetcher>,
    pub(super) fetcher_nodes: Vec<(String, Vec<(u32, u32)>)>,
    pub(super) peers: Vec<pb::Peer>,
    pub(super) pinned: Option<ContentDigest>,
    pub(super) origin: Option<OriginClient>,
    pub(super) upload: Arc<TokenBucket>,
}

impl Plan {
    /// The plan an assignment states, for a transfer with `cfg`.
    pub(super) fn from_assignment(
        a: &pb::Assignment,
        cfg: &TransferConfig,
    ) -> Result<Self, OriginError> {
        let token: [u8; 32] = a.peer_token.as_slice().try_into().unwrap_or([0; 32]);
        let fetcher_nodes = a
            .fetchers
            .iter()
            .map(|f| {
                (
                    f.node_name.clone(),
                    f.ranges.iter().map(|r| (r.start, r.end)).collect(),
                )
            })
            .collect();
        let limits = a.limits.unwrap_or_default();
        let origin = match &a.origin {
            Some(o) if !o.uri.is_empty() => {
                let mut opts = cfg.origin.clone();
                opts.bandwidth_bytes_per_sec = limits.origin_bytes_per_second;
                if limits.origin_concurrency > 0 {
                    opts.concurrency = limits.origin_concurrency as usize;
                }
                Some(OriginClient::new(o, opts)?)
            }
            _ => None,
        };
        Ok(Self {
            generation: a.plan_generation,
            token,
            fetchers: Arc::new(FetcherTable::from_plan(&a.fetchers)),
            assigned_fetchers: a.fetchers.clone(),
            fetcher_nodes,
            peers: a.peers.clone(),
            pinned: ContentDigest::from_slice(&a.pinned_digest),
            origin,
            upload: Arc::new(TokenBucket::new(
                limits.peer_upload_bytes_per_second,
                UPLOAD_BURST,
            )),
        })
    }
}
