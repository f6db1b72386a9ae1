//! The assignment in force for each dataset, persisted for recovery after
//! a restart (owner only: assignments hold origin credentials and peer
//! tokens).

use std::io;

use prost::Message;
use swarmseed_proto::pb;

use super::fs::write_atomically;
use super::{DatasetKey, NodeStore, StoreError, io_err};

impl NodeStore {
    /// Persists the assignment in force (write, fsync, rename).
    pub fn save_assignment(&self, key: &DatasetKey, a: &pb::Assignment) -> Result<(), StoreError> {
        let dir = self.state_dir(key);
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        write_atomically(&dir.join("assignment.pb"), &a.encode_to_vec())
    }

    /// Every persisted assignment, for recovery after a restart. Unreadable
    /// ones are reported and skipped, never fatal.
    pub fn load_assignments(&self) -> Vec<Result<pb::Assignment, StoreError>> {
        let mut out = Vec::new();
        let state = self.root.join("state");
        let Ok(namespaces) = std::fs::read_dir(&state) else {
            return out;
        };
        for ns in namespaces.flatten() {
            let Ok(names) = std::fs::read_dir(ns.path()) else {
                continue;
            };
            for name in names.flatten() {
                let p = name.path().join("assignment.pb");
                match std::fs::read(&p) {
                    Ok(bytes) => out.push(pb::Assignment::decode(bytes.as_slice()).map_err(|e| {
                        StoreError::Io {
                            path: p.display().to_string(),
                            source: io::Error::other(e),
                        }
                    })),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => out.push(Err(io_err(&p)(e))),
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;
    use std::path::Path;

    use super::*;

    #[test]
    fn saved_assignments_are_readable_by_the_agent_only() {
        let tmp = tempfile::tempdir().unwrap();
        let store = NodeStore::open(tmp.path()).unwrap();
        let key = DatasetKey::new("ml", "llama").unwrap();
        store
            .save_assignment(&key, &pb::Assignment::default())
            .unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(&tmp.path().join("state")), 0o700);
        assert_eq!(
            mode(&tmp.path().join("state/ml/llama/assignment.pb")),
            0o600
        );
        assert_eq!(store.load_assignments().len(), 1);
    }
}
