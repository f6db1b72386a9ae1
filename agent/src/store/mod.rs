//! The node store: everything the agent keeps on its node's disk.
//!
//! ```text
//! <root>/
//!   agent.key                             Ed25519 identity (0600)
//!   state/                                owner only (0700): assignments hold credentials
//!   state/<ns>/<name>/assignment.pb       the assignment in force (0600)
//!   state/<ns>/<name>/<rev>.chunks        verified chunks of a revision (append-only log)
//!   staging/<ns>/<name>/<rev>/...         files of a revision being filled
//!   revisions/<ns>/<name>/<rev>/...       complete revisions, read-only
//!   datasets/<ns>/<name> -> ../../revisions/<ns>/<name>/<rev>    what pods mount
//! ```
//!
//! Publication is a `rename` of the staging tree into `revisions/` followed
//! by an atomic symlink swap of `datasets/<ns>/<name>`: a reader sees the old
//! revision or the new one, never a mix. Every file of a revision is opened
//! relative to the revision's directory with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)`, so no listed path can reach outside it, even
//! through a symlink planted on the disk.
//!
//! The parts, by concern: `dataset` (a dataset's key, safe as a
//! directory name), `key` (the identity key's file), `assignments`,
//! `revision` (opening a revision's files), `write` and `writeback`
//! (chunk data onto the disk), `chunk_log` (what was verified),
//! `reuse` (delta updates from the revisions the node has), `publish`,
//! `usage` (disk accounting), `error` and `fs` (atomic writes and
//! tree removal).

mod assignments;
mod chunk_log;
mod dataset;
mod error;
mod fs;
pub mod key;
mod publish;
mod reuse;
mod revision;
#[cfg(test)]
mod test_support;
mod usage;
mod write;
pub mod writeback;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use swarmseed_proto::RevisionId;

pub use crate::attest::ChunkRecord;
pub use dataset::DatasetKey;
pub use error::StoreError;
use error::io_err;
pub use reuse::Reuse;
pub use revision::RevisionFiles;

use fs::remove_tree;
use usage::{USAGE_MAX_AGE, UsageCache};
use write::DirectIo;
use writeback::WriteBehind;

/// The node store under one root directory.
pub struct NodeStore {
    root: PathBuf,
    write_behind: WriteBehind,
    usage: Arc<UsageCache>,
    direct_io: Arc<DirectIo>,
}

impl NodeStore {
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        for sub in ["state", "staging", "revisions", "datasets"] {
            let p = root.join(sub);
            std::fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        // Assignments hold origin credentials and peer tokens: only the
        // agent's user may enter (also on a root made by an older agent).
        let state = root.join("state");
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err(&state))?;
        let write_behind = WriteBehind::start().map_err(io_err("the write-behind thread"))?;
        let usage = Arc::new(UsageCache::measure(&root, USAGE_MAX_AGE));
        Ok(Self {
            root,
            write_behind,
            usage,
            direct_io: Arc::new(DirectIo(AtomicBool::new(true))),
        })
    }

    /// Writes every chunk through the page cache, never with `O_DIRECT`.
    pub fn without_direct_io(self) -> Self {
        self.direct_io.0.store(false, Ordering::Relaxed);
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory pods mount: `<root>/datasets/<ns>/<name>`.
    pub fn dataset_path(&self, key: &DatasetKey) -> PathBuf {
        self.root.join("datasets").join(key.rel())
    }

    fn state_dir(&self, key: &DatasetKey) -> PathBuf {
        self.root.join("state").join(key.rel())
    }

    fn staging_dir(&self, key: &DatasetKey, rev: &RevisionId) -> PathBuf {
        self.root.join("staging").join(key.rel()).join(rev.short())
    }

    fn revision_dir(&self, key: &DatasetKey, rev: &RevisionId) -> PathBuf {
        self.root
            .join("revisions")
            .join(key.rel())
            .join(rev.short())
    }

    /// Every dataset this store holds anything of: a link under
    /// `datasets/`, a revision, a staging tree or saved state. Names that
    /// are not valid dataset keys are left out (nothing of ours made them).
    pub fn held_datasets(&self) -> Vec<DatasetKey> {
        let mut out = std::collections::BTreeSet::new();
        for top in ["datasets", "revisions", "staging", "state"] {
            let Ok(namespaces) = std::fs::read_dir(self.root.join(top)) else {
                continue;
            };
            for ns in namespaces.flatten() {
                let Ok(names) = std::fs::read_dir(ns.path()) else {
                    continue;
                };
                for name in names.flatten() {
                    let (ns, name) = (ns.file_name(), name.file_name());
                    if let (Some(ns), Some(name)) = (ns.to_str(), name.to_str())
                        && let Ok(key) = DatasetKey::new(ns, name)
                    {
                        out.insert(key);
                    }
                }
            }
        }
        out.into_iter().collect()
    }

    /// The revision currently published at the dataset path, if any.
    pub fn published_revision(&self, key: &DatasetKey) -> Option<String> {
        let target = std::fs::read_link(self.dataset_path(key)).ok()?;
        Some(target.file_name()?.to_string_lossy().into_owned())
    }

    /// Removes everything of a dataset from the node. Returns whether there
    /// was anything.
    pub fn remove(&self, key: &DatasetKey) -> Result<bool, StoreError> {
        let mut existed = false;
        let link = self.dataset_path(key);
        match std::fs::symlink_metadata(&link) {
            Ok(m) if m.file_type().is_symlink() => {
                std::fs::remove_file(&link).map_err(io_err(&link))?;
                existed = true;
            }
            Ok(_) => {
                return Err(StoreError::Occupied {
                    path: link.display().to_string(),
                });
            }
            Err(_) => {}
        }
        for top in ["revisions", "staging", "state"] {
            let p = self.root.join(top).join(key.rel());
            if p.exists() {
                existed = true;
                remove_tree(&p)?;
            }
        }
        Ok(existed)
    }
}
