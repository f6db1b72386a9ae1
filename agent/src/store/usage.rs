//! Disk accounting: the store's size (measured in the background when
//! stale), its filesystem's free room, and the room a revision needs.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use swarmseed_proto::pb;

use super::{NodeStore, RevisionFiles, StoreError, io_err};
use crate::lock;

/// How old the reported size of the store may be. Measuring it takes a
/// `statx` of every file under the root: on every status call (the
/// operator asks every agent every few seconds) that would cost more CPU
/// than the transfers themselves once datasets hold tens of thousands of
/// files.
pub(super) const USAGE_MAX_AGE: Duration = Duration::from_secs(30);

/// The store's size, measured off the caller's thread when stale.
pub(super) struct UsageCache {
    root: PathBuf,
    max_age: Duration,
    bytes: AtomicU64,
    /// When the last measurement finished, and whether one is running.
    state: Mutex<(Instant, bool)>,
}

impl UsageCache {
    pub(super) fn measure(root: &Path, max_age: Duration) -> Self {
        Self {
            root: root.to_owned(),
            max_age,
            bytes: AtomicU64::new(tree_bytes(root)),
            state: Mutex::new((Instant::now(), false)),
        }
    }

    /// The last measurement; starts a new one in the background when it
    /// is older than `max_age`.
    pub(super) fn get(self: &Arc<Self>) -> u64 {
        let start = {
            let mut state = lock(&self.state);
            let (measured, running) = *state;
            let start = !running && measured.elapsed() >= self.max_age;
            state.1 |= start;
            start
        };
        if start {
            let this = self.clone();
            let spawned = std::thread::Builder::new()
                .name("disk-usage".into())
                .spawn(move || {
                    this.bytes.store(tree_bytes(&this.root), Ordering::Relaxed);
                    *lock(&this.state) = (Instant::now(), false);
                });
            if spawned.is_err() {
                lock(&self.state).1 = false;
            }
        }
        self.bytes.load(Ordering::Relaxed)
    }
}

impl NodeStore {
    /// Refuses a revision whose missing bytes do not fit on the store's
    /// filesystem.
    pub(super) fn check_space(
        &self,
        files: &RevisionFiles,
        count_present: bool,
    ) -> Result<(), StoreError> {
        let linked = lock(&files.linked).clone();
        let needed: u64 = files
            .layout
            .files()
            .iter()
            .zip(&linked)
            .filter(|(_, linked)| !**linked)
            .map(|(f, _)| {
                let present = if count_present {
                    files.allocated_bytes(&f.path)
                } else {
                    0
                };
                f.size.saturating_sub(present)
            })
            .sum();
        let stat = nix::sys::statvfs::statvfs(&self.root)
            .map_err(|e| io_err(&self.root)(io::Error::from(e)))?;
        let free = stat.blocks_available() as u64 * stat.fragment_size() as u64;
        if needed > free {
            return Err(StoreError::InsufficientStorage {
                root: self.root.display().to_string(),
                needed,
                free,
            });
        }
        Ok(())
    }

    /// The store's size (measured at most [`USAGE_MAX_AGE`] ago) and its
    /// filesystem's free and total bytes (now).
    pub fn disk_usage(&self) -> pb::DiskUsage {
        let store_bytes = self.usage.get();
        let (free, total) = nix::sys::statvfs::statvfs(&self.root)
            .map(|s| {
                let f = s.fragment_size();
                (s.blocks_available() * f, s.blocks() * f)
            })
            .unwrap_or((0, 0));
        pb::DiskUsage {
            store_bytes,
            filesystem_free_bytes: free,
            filesystem_total_bytes: total,
        }
    }
}

fn tree_bytes(p: &Path) -> u64 {
    match std::fs::symlink_metadata(p) {
        Ok(meta) if meta.is_dir() => dir_bytes(p),
        Ok(meta) if meta.is_file() => meta.blocks() * 512,
        _ => 0,
    }
}

/// Bytes allocated under directory `p`: entries are examined relative to
/// their directory (`fstatat`), not by walking each full path again.
fn dir_bytes(p: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(p) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            // Allocated bytes: sparse staging files count for what they
            // hold; hard links are counted once per link (an over-estimate).
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.blocks() * 512),
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use swarmseed_proto::ChunkLayout;

    use super::*;
    use crate::store::test_support::{entry, layout};
    use crate::store::{DatasetKey, Reuse};

    #[test]
    fn the_store_size_is_remeasured_in_the_background_only_when_stale() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), vec![1u8; 64 << 10]).unwrap();

        let fresh = Arc::new(UsageCache::measure(dir.path(), Duration::from_secs(3600)));
        let first = fresh.get();
        assert!(first >= 64 << 10, "measured at creation: {first}");
        std::fs::write(dir.path().join("b"), vec![2u8; 1 << 20]).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(fresh.get(), first, "not stale yet: no new walk");

        let stale = Arc::new(UsageCache::measure(dir.path(), Duration::ZERO));
        std::fs::write(dir.path().join("c"), vec![3u8; 1 << 20]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while stale.get() < (2 << 20) + (64 << 10) {
            assert!(Instant::now() < deadline, "the new file was never counted");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_retry_needs_room_only_for_what_is_missing() {
        let tmp = tempfile::tempdir().unwrap();
        let store = NodeStore::open(tmp.path()).unwrap();
        let key = DatasetKey::new("ml", "x").unwrap();
        let free = || {
            let s = nix::sys::statvfs::statvfs(tmp.path()).unwrap();
            s.blocks_available() as u64 * s.fragment_size() as u64
        };
        // A first attempt filled 2 GiB of the file, then failed (the disk
        // was full: something else took the room, since freed).
        let have: u64 = 2 << 30;
        let mut l = layout(vec![entry("f", have, "1")]);
        drop(
            store
                .open_revision(&key, l.clone(), Reuse::default())
                .unwrap(),
        );
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(store.staging_dir(&key, &l.revision()).join("f"))
            .unwrap();
        nix::fcntl::fallocate(&f, nix::fcntl::FallocateFlags::empty(), 0, have as i64).unwrap();
        // The listing holds a file larger than the free space, but what is
        // missing of it fits (with a margin of a GiB for the other writers
        // of this filesystem).
        let size = free() + have / 2;
        l = Arc::new(ChunkLayout::new(vec![entry("f", size, "1")], 64 << 20).unwrap());
        let staging = store.staging_dir(&key, &l.revision());
        std::fs::create_dir_all(&staging).unwrap();
        std::fs::rename(
            store
                .staging_dir(&key, &layout(vec![entry("f", have, "1")]).revision())
                .join("f"),
            staging.join("f"),
        )
        .unwrap();
        store
            .open_revision(&key, l.clone(), Reuse::default())
            .unwrap();
        // Without it, refused.
        std::fs::remove_file(staging.join("f")).unwrap();
        let err = store.open_revision(&key, l, Reuse::default()).err();
        assert!(
            matches!(err, Some(StoreError::InsufficientStorage { .. })),
            "{err:?}"
        );
    }
}
