//! The agent's identity key on the node (`<root>/agent.key`, owner only):
//! read at every start, made once on the first. Signing with it is
//! [`crate::attest`]'s.

use std::io;
use std::path::{Path, PathBuf};

use super::NodeStore;
use super::StoreError;
use super::fs::write_atomically;

/// The identity key's file under the store's root.
pub const IDENTITY_KEY_FILE: &str = "agent.key";

impl NodeStore {
    /// Where this node's identity key is kept.
    pub fn identity_key_path(&self) -> PathBuf {
        self.root.join(IDENTITY_KEY_FILE)
    }
}

/// Reads the 32-byte secret at `path`; when there is none yet, persists
/// the one `generate` makes (mode 0600, written, fsynced and renamed into
/// place) and returns it.
pub fn load_or_create_secret(
    path: &Path,
    generate: impl FnOnce() -> [u8; 32],
) -> io::Result<[u8; 32]> {
    match std::fs::read(path) {
        Ok(bytes) => bytes.as_slice().try_into().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not a 32-byte key", path.display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let secret = generate();
            write_atomically(path, &secret).map_err(|e| {
                let kind = match &e {
                    StoreError::Io { source, .. } => source.kind(),
                    _ => io::ErrorKind::Other,
                };
                io::Error::new(kind, e)
            })?;
            Ok(secret)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn the_key_is_made_once_readable_by_the_agent_only_and_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let store = NodeStore::open(tmp.path()).unwrap();
        let path = store.identity_key_path();
        assert_eq!(path, tmp.path().join("agent.key"));
        let first = load_or_create_secret(&path, || [7; 32]).unwrap();
        assert_eq!(first, [7; 32]);
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let again = load_or_create_secret(&path, || unreachable!("the key exists")).unwrap();
        assert_eq!(again, first);
        assert!(!tmp.path().join("agent.tmp").exists());
    }

    #[test]
    fn a_key_file_of_another_length_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("agent.key");
        std::fs::write(&path, [1; 31]).unwrap();
        let err = load_or_create_secret(&path, || [7; 32]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(std::fs::read(&path).unwrap(), [1; 31]);
    }
}
