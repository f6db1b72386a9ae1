//! Where a chunk digest may come from.
//!
//! Only an agent that read a chunk from the origin knows its true digest.
//! It signs `(revision, chunk index, digest)` with its Ed25519 key; the
//! attestation travels with the chunk's availability through the swarm. A
//! receiver accepts a digest only when it is signed by an agent the plan
//! names as an origin fetcher (the plan comes from the operator over the
//! authenticated control channel). So a peer can serve
//! bytes, but it can never make another node accept bytes the origin side
//! did not vouch for: a corrupted chunk fails verification and its sender is
//! dropped.

use std::io;
use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use swarmseed_proto::pb;
use swarmseed_proto::{ChunkDigest, RevisionId};

const CONTEXT: &[u8] = b"swarmseed.io chunk attestation v1";

/// One verified chunk as persisted: its digest and the attestation that
/// lets peers accept it (see [`crate::attest`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRecord {
    pub index: u32,
    pub digest: ChunkDigest,
    pub signer: [u8; 32],
    pub signature: [u8; 64],
}

impl ChunkRecord {
    pub const LEN: usize = 4 + 32 + 32 + 64;

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.index.to_le_bytes());
        out.extend_from_slice(&self.digest.0);
        out.extend_from_slice(&self.signer);
        out.extend_from_slice(&self.signature);
    }

    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < Self::LEN {
            return None;
        }
        Some(Self {
            index: u32::from_le_bytes(b[0..4].try_into().ok()?),
            digest: ChunkDigest(b[4..36].try_into().ok()?),
            signer: b[36..68].try_into().ok()?,
            signature: b[68..132].try_into().ok()?,
        })
    }
}

/// This agent's signing identity, persisted in the node store so that
/// attestations survive a restart.
pub struct Identity {
    key: SigningKey,
}

impl Identity {
    /// Loads the key at `path`, creating it (mode 0600) on first start.
    pub fn load_or_create(path: &Path) -> io::Result<Self> {
        let secret = crate::store::key::load_or_create_secret(path, || {
            SigningKey::generate(&mut rand::rngs::OsRng).to_bytes()
        })?;
        Ok(Self {
            key: SigningKey::from_bytes(&secret),
        })
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    pub fn attest(&self, revision: &RevisionId, index: u32, digest: ChunkDigest) -> ChunkRecord {
        let sig = self.key.sign(&message(revision, index, &digest));
        ChunkRecord {
            index,
            digest,
            signer: self.public_key(),
            signature: sig.to_bytes(),
        }
    }
}

fn message(revision: &RevisionId, index: u32, digest: &ChunkDigest) -> Vec<u8> {
    let mut m = Vec::with_capacity(CONTEXT.len() + 32 + 4 + 32);
    m.extend_from_slice(CONTEXT);
    m.extend_from_slice(&revision.0);
    m.extend_from_slice(&index.to_le_bytes());
    m.extend_from_slice(&digest.0);
    m
}

/// One planned fetcher: its key (parsed and raw) and its sorted ranges.
type Fetcher = (VerifyingKey, [u8; 32], Vec<(u32, u32)>);

/// Which keys may vouch for which chunks, from the plan.
#[derive(Debug, Default, Clone)]
pub struct FetcherTable {
    fetchers: Vec<Fetcher>,
}

impl FetcherTable {
    pub fn from_plan(fetchers: &[pb::OriginFetcher]) -> Self {
        let fetchers = fetchers
            .iter()
            .filter_map(|f| {
                let bytes: [u8; 32] = f.public_key.as_slice().try_into().ok()?;
                let key = VerifyingKey::from_bytes(&bytes).ok()?;
                let mut ranges: Vec<(u32, u32)> = f
                    .ranges
                    .iter()
                    .map(|r| (r.start, r.end))
                    .filter(|(s, e)| s < e)
                    .collect();
                ranges.sort_unstable();
                Some((key, bytes, ranges))
            })
            .collect();
        Self { fetchers }
    }

    /// Whether this plan names a fetcher that `earlier` does not: the
    /// attestations it signed were refused under `earlier`.
    pub fn adds_signers_to(&self, earlier: &FetcherTable) -> bool {
        self.fetchers
            .iter()
            .any(|(_, k, _)| !earlier.fetchers.iter().any(|(_, e, _)| e == k))
    }

    /// The ranges the plan gives to `key`.
    pub fn ranges_of(&self, key: &[u8; 32]) -> Vec<(u32, u32)> {
        self.fetchers
            .iter()
            .filter(|(_, k, _)| k == key)
            .flat_map(|(_, _, r)| r.iter().copied())
            .collect()
    }

    /// Whether `record` is a valid attestation by one of the plan's
    /// fetchers. Any of them may vouch for any chunk: a fetcher done with
    /// its own ranges helps one that lags (see `Board::pick_help`), and a
    /// fetcher is trusted with the origin's bytes either way.
    pub fn accepts(&self, revision: &RevisionId, record: &ChunkRecord) -> bool {
        let Some((key, _, _)) = self.fetchers.iter().find(|(_, k, _)| *k == record.signer) else {
            return false;
        };
        let sig = Signature::from_bytes(&record.signature);
        key.verify(&message(revision, record.index, &record.digest), &sig)
            .is_ok()
    }

    /// What the fetcher `key` needs to help the others (`None` if the plan
    /// does not name it).
    pub fn helper_view(&self, key: &[u8; 32]) -> Option<HelperView> {
        let me = self.fetchers.iter().position(|(_, k, _)| k == key)?;
        Some(HelperView {
            me,
            fetchers: self.fetchers.iter().map(|(_, _, r)| r.clone()).collect(),
        })
    }
}

/// A fetcher's view of the others, for helping them.
pub struct HelperView {
    /// Its position among the fetchers (the same on every agent following
    /// the plan).
    pub me: usize,
    /// Every fetcher's ranges, in plan order.
    pub fetchers: Vec<Vec<(u32, u32)>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(id: &Identity, start: u32, end: u32) -> FetcherTable {
        FetcherTable::from_plan(&[pb::OriginFetcher {
            node_name: "n".into(),
            public_key: id.public_key().to_vec(),
            ranges: vec![pb::ChunkRange { start, end }],
        }])
    }

    #[test]
    fn only_a_planned_fetcher_may_vouch() {
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::load_or_create(&dir.path().join("a.key")).unwrap();
        let b = Identity::load_or_create(&dir.path().join("b.key")).unwrap();
        let rev = RevisionId([3; 32]);
        let table = plan(&a, 0, 10);
        let good = a.attest(&rev, 4, ChunkDigest([1; 32]));
        assert!(table.accepts(&rev, &good));
        // A fetcher may help outside its own range.
        assert!(table.accepts(&rev, &a.attest(&rev, 10, ChunkDigest([1; 32]))));
        // Someone not in the plan, a tampered digest, another revision: all
        // refused.
        assert!(!table.accepts(&rev, &b.attest(&rev, 4, ChunkDigest([1; 32]))));
        let mut tampered = good;
        tampered.digest = ChunkDigest([2; 32]);
        assert!(!table.accepts(&rev, &tampered));
        assert!(!table.accepts(&RevisionId([4; 32]), &good));
    }

    #[test]
    fn a_plan_adds_signers_only_when_it_names_a_new_fetcher() {
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::load_or_create(&dir.path().join("a.key")).unwrap();
        let b = Identity::load_or_create(&dir.path().join("b.key")).unwrap();
        // Moving a fetcher's ranges adds no one; naming another fetcher does.
        assert!(!plan(&a, 5, 10).adds_signers_to(&plan(&a, 0, 10)));
        assert!(plan(&b, 0, 10).adds_signers_to(&plan(&a, 0, 10)));
        assert!(plan(&a, 0, 10).adds_signers_to(&FetcherTable::from_plan(&[])));
        assert!(!FetcherTable::from_plan(&[]).adds_signers_to(&plan(&a, 0, 10)));
    }

    #[test]
    fn the_identity_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agent.key");
        let k1 = Identity::load_or_create(&p).unwrap().public_key();
        let k2 = Identity::load_or_create(&p).unwrap().public_key();
        assert_eq!(k1, k2);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
