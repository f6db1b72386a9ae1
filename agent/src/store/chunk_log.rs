//! The chunk log of a revision: the verified chunks with their
//! attestations, appended as they are committed and read back after a
//! restart (then re-verified against the data).

use std::fs::File;
use std::io::{Read, Write};

use swarmseed_proto::ChunkDigest;

use super::{RevisionFiles, StoreError, io_err};

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

impl RevisionFiles {
    /// Appends verified chunks to the revision's log. Not fsynced per
    /// chunk: after a crash the log is re-verified against the data.
    pub fn record_verified(&self, records: &[ChunkRecord]) -> Result<(), StoreError> {
        // Nothing to log: no file made (the dataset may be being removed).
        if records.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(records.len() * ChunkRecord::LEN);
        for r in records {
            r.encode(&mut buf);
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(io_err(&self.log_path))?;
        let offset = f.metadata().map_or(0, |m| m.len());
        f.write_all(&buf).map_err(|source| StoreError::Write {
            path: self.log_path.display().to_string(),
            offset,
            bytes: buf.len() as u64,
            source,
        })
    }

    /// The chunk log as written (possibly with a torn last record).
    pub fn load_records(&self) -> Vec<ChunkRecord> {
        let mut bytes = Vec::new();
        if let Ok(mut f) = File::open(&self.log_path) {
            let _ = f.read_to_end(&mut bytes);
        }
        bytes
            .chunks_exact(ChunkRecord::LEN)
            .filter_map(ChunkRecord::decode)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::store::test_support::{entry, layout};
    use crate::store::{DatasetKey, NodeStore, Reuse};

    #[test]
    fn chunk_log_round_trips_and_ignores_a_torn_tail() {
        let tmp = tempfile::tempdir().unwrap();
        let store = NodeStore::open(tmp.path()).unwrap();
        let key = DatasetKey::new("a", "b").unwrap();
        let rev = store
            .open_revision(&key, layout(vec![entry("f", 5, "1")]), Reuse::default())
            .unwrap();
        let rec = ChunkRecord {
            index: 0,
            digest: ChunkDigest([7; 32]),
            signer: [1; 32],
            signature: [2; 64],
        };
        rev.record_verified(&[rec]).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&rev.log_path)
            .unwrap()
            .write_all(&[1, 2, 3])
            .unwrap();
        assert_eq!(rev.load_records(), vec![rec]);
    }
}
