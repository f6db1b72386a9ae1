//! What can go wrong in the store, with the label for metrics and the
//! condition reason the operator shows.

use std::io;
use std::path::Path;

use swarmseed_proto::Reason;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("{0}")]
    InvalidName(String),
    #[error("listed path {path:?} would pass through a symlink or leave the dataset directory")]
    UnsafePath { path: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    /// Writing chunk data failed (a full disk, a quota, an I/O error).
    #[error("{path}: writing {bytes} bytes at offset {offset} failed: {source}")]
    Write {
        path: String,
        offset: u64,
        bytes: u64,
        #[source]
        source: io::Error,
    },
    #[error("not enough disk space for {needed} bytes under {root} ({free} bytes free)")]
    InsufficientStorage {
        root: String,
        needed: u64,
        free: u64,
    },
    #[error("{path} exists and is not managed by swarmseed; refusing to replace it")]
    Occupied { path: String },
}

impl StoreError {
    pub fn label(&self) -> &'static str {
        match self {
            Self::InvalidName(_) => "invalid_name",
            Self::UnsafePath { .. } => "unsafe_path",
            _ if self.is_out_of_space() => "insufficient_storage",
            Self::Io { .. } => "io",
            Self::Write { .. } => "write",
            Self::InsufficientStorage { .. } => "insufficient_storage",
            Self::Occupied { .. } => "occupied",
        }
    }

    /// The condition reason the operator shows for this error.
    pub fn reason(&self) -> Reason {
        match self {
            Self::InvalidName(_) => Reason::InvalidAssignment,
            Self::UnsafePath { .. } => Reason::UnsafePath,
            _ if self.is_out_of_space() => Reason::InsufficientStorage,
            Self::Io { .. } | Self::Write { .. } => Reason::StorageError,
            Self::InsufficientStorage { .. } => Reason::InsufficientStorage,
            Self::Occupied { .. } => Reason::PathOccupied,
        }
    }

    /// Whether the filesystem (or the agent's quota on it) is full.
    pub fn is_out_of_space(&self) -> bool {
        match self {
            Self::InsufficientStorage { .. } => true,
            Self::Io { source, .. } | Self::Write { source, .. } => {
                matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
            }
            _ => false,
        }
    }
}

pub(super) fn io_err(path: impl AsRef<Path>) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.as_ref().display().to_string();
    move |source| StoreError::Io { path, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_filesystem_is_insufficient_storage_any_other_failure_a_storage_error() {
        let enospc = StoreError::Write {
            path: "/var/lib/swarmseed/staging/ml/x/0123/a.bin".into(),
            offset: 1 << 20,
            bytes: 1 << 20,
            source: io::Error::from_raw_os_error(libc::ENOSPC),
        };
        assert_eq!(enospc.reason(), Reason::InsufficientStorage);
        assert_eq!(enospc.label(), "insufficient_storage");
        let message = enospc.to_string();
        assert!(
            message.contains("/var/lib/swarmseed/staging/ml/x/0123/a.bin")
                && message.contains("writing 1048576 bytes"),
            "{message}"
        );
        let quota = StoreError::Io {
            path: "log".into(),
            source: io::Error::from_raw_os_error(libc::EDQUOT),
        };
        assert_eq!(quota.reason(), Reason::InsufficientStorage);
        let eio = StoreError::Io {
            path: "log".into(),
            source: io::Error::from_raw_os_error(libc::EIO),
        };
        assert_eq!(eio.reason(), Reason::StorageError);
    }
}
