//! The chunk log of a revision: the verified chunks with their
//! attestations, appended as they are committed and read back after a
//! restart (then re-verified against the data).

use std::fs::File;
use std::io::{Read, Write};

use crate::attest::ChunkRecord;

use super::{RevisionFiles, StoreError, io_err};

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
    use swarmseed_proto::ChunkDigest;

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
