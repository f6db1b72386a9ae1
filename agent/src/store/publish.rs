//! Publication: a complete revision is made durable and read-only, moved
//! into `revisions/`, and the dataset's symlink swapped to it atomically.

use std::fs::File;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use swarmseed_proto::layout::published_mode;

use super::fs::{fsync_dir, remove_tree};
use super::revision::{Access, HandleCache};
use super::{DatasetKey, NodeStore, RevisionFiles, StoreError, io_err};
use crate::lock;

/// Above this many files a revision is made durable by one `syncfs(2)` of
/// its filesystem rather than an `fsync(2)` per file and directory: every
/// fsync commits the filesystem's journal, and thousands of commits take
/// minutes. (syncfs also flushes other writers' data on that filesystem,
/// which is why a revision of a few files still uses fsync.)
const SYNCFS_ABOVE_FILES: usize = 64;

impl NodeStore {
    /// Publishes a complete revision: makes it durable and read-only, moves
    /// it into `revisions/`, swaps the dataset symlink to it, and removes
    /// revisions older than the one it replaces. Returns how long the flush
    /// to disk took.
    pub fn publish(&self, files: &RevisionFiles) -> Result<Duration, StoreError> {
        let key = &files.key;
        let rev = files.layout.revision();
        let flush_started = Instant::now();
        files.seal()?;
        let flush = flush_started.elapsed();

        let target = self.revision_dir(key, &rev);
        if !*lock(&files.published) {
            let parent = target.parent().map(Path::to_path_buf).unwrap_or_default();
            std::fs::create_dir_all(&parent).map_err(io_err(&parent))?;
            let staging = self.staging_dir(key, &rev);
            std::fs::rename(&staging, &target).map_err(io_err(&target))?;
            fsync_dir(&parent)?;
            *lock(&files.published) = true;
        }
        // Also after a restart between the move and this.
        files.seal_top()?;

        let link = self.dataset_path(key);
        let link_parent = link.parent().map(Path::to_path_buf).unwrap_or_default();
        std::fs::create_dir_all(&link_parent).map_err(io_err(&link_parent))?;
        match std::fs::symlink_metadata(&link) {
            Ok(m) if !m.file_type().is_symlink() => {
                return Err(StoreError::Occupied {
                    path: link.display().to_string(),
                });
            }
            _ => {}
        }
        let previous = self.published_revision(key);
        let relative = Path::new("../../revisions")
            .join(key.rel())
            .join(rev.short());
        let tmp = link_parent.join(swap_name(&key.name));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&relative, &tmp).map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &link).map_err(io_err(&link))?;
        fsync_dir(&link_parent)?;

        // Keep the revision just replaced (pods that mounted it keep a
        // consistent view); drop anything older.
        let keep = [Some(rev.short()), previous];
        self.prune_revisions(key, &keep)?;
        Ok(flush)
    }

    fn prune_revisions(&self, key: &DatasetKey, keep: &[Option<String>]) -> Result<(), StoreError> {
        let dir = self.root.join("revisions").join(key.rel());
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(());
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if keep.iter().flatten().any(|k| *k == name) {
                continue;
            }
            remove_tree(&e.path())?;
            let log = self.state_dir(key).join(format!("{name}.chunks"));
            let _ = std::fs::remove_file(log);
        }
        let staging = self.root.join("staging").join(key.rel());
        if let Ok(entries) = std::fs::read_dir(&staging) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !keep.iter().flatten().any(|k| *k == name) {
                    remove_tree(&e.path())?;
                }
            }
        }
        Ok(())
    }
}

impl RevisionFiles {
    /// Flushes every file to disk and makes files and directories
    /// read-only.
    pub(super) fn seal(&self) -> Result<(), StoreError> {
        if *lock(&self.published) {
            return Ok(());
        }
        let files = self.layout.files();
        let whole_fs = files.len() > SYNCFS_ABOVE_FILES;
        // Writable handles are not needed any more.
        *lock(&self.handles) = HandleCache::default();
        *lock(&self.direct_handles) = HandleCache::default();
        let linked = lock(&self.linked).clone();
        for (i, f) in files.iter().enumerate() {
            if linked[i] {
                // Published before: durable and read-only already.
                continue;
            }
            // Every byte of a file was written, which created it; only an
            // empty file may not exist yet.
            let handle = match self.open_file(&f.path, Access::Read) {
                Err(StoreError::Io { source, .. })
                    if source.kind() == io::ErrorKind::NotFound && f.size == 0 =>
                {
                    self.open_file(&f.path, Access::Create)?
                }
                other => other?,
            };
            let len = handle.metadata().map_err(io_err(&f.path))?.len();
            if len != f.size {
                return Err(StoreError::Io {
                    path: f.path.clone(),
                    source: io::Error::other(format!(
                        "holds {len} bytes, the listing says {}",
                        f.size
                    )),
                });
            }
            if !whole_fs {
                handle.sync_all().map_err(io_err(&f.path))?;
            }
            handle
                .set_permissions(std::fs::Permissions::from_mode(published_mode(f.mode)))
                .map_err(io_err(&f.path))?;
        }
        // Directories: fsync (entries are durable) and read-only, deepest
        // first.
        for d in self.directories().iter().rev() {
            let dir = self.open_dir(d, d)?;
            if !whole_fs {
                dir.sync_all().map_err(io_err(d))?;
            }
            dir.set_permissions(std::fs::Permissions::from_mode(0o555))
                .map_err(io_err(d))?;
        }
        // The revision directory itself stays writable until it has been
        // moved into place: moving a directory to another parent updates
        // its `..` entry, which needs write permission on it.
        let top = File::from(
            self.dir_fd
                .try_clone()
                .map_err(io_err("revision directory"))?,
        );
        if whole_fs {
            // After every permission change, so that those are durable too.
            nix::unistd::syncfs(&top)
                .map_err(|e| io_err("revision directory")(io::Error::from(e)))?;
        } else {
            top.sync_all().map_err(io_err("revision directory"))?;
        }
        lock(&self.linked).iter_mut().for_each(|l| *l = true);
        Ok(())
    }

    /// Makes a staging tree writable again if the agent stopped between
    /// sealing it and moving it into `revisions/`. Chunks whose records
    /// had not reached the (not fsynced) chunk log are then written again,
    /// and without `CAP_DAC_OVERRIDE` a read-only file or directory would
    /// refuse them. Sealing goes through the files in layout order, so the
    /// first file not linked from the previous revision tells whether it
    /// ever started; linked files share their inode with a published
    /// revision and are left alone.
    pub(super) fn undo_interrupted_seal(&self) -> Result<(), StoreError> {
        let linked = lock(&self.linked).clone();
        let files = self.layout.files();
        let Some(first) = files.iter().zip(&linked).find(|(_, l)| !**l) else {
            return Ok(());
        };
        let writable = |f: &File, path: &str| {
            f.metadata()
                .map(|m| m.permissions().mode() & 0o200 != 0)
                .map_err(io_err(path))
        };
        // Anything but a read-only file (none yet, or an unsafe path that
        // the first write reports) means no seal started.
        match self.open_file(&first.0.path, Access::Read) {
            Ok(f) if !writable(&f, &first.0.path)? => {}
            _ => return Ok(()),
        }
        tracing::info!(dataset = %self.key, "reopening a staging tree sealed before a restart");
        for d in self.directories() {
            self.open_dir(d, d)?
                .set_permissions(std::fs::Permissions::from_mode(0o755))
                .map_err(io_err(d))?;
        }
        for (f, _) in files.iter().zip(&linked).filter(|(_, l)| !**l) {
            match self.open_file(&f.path, Access::Read) {
                Ok(h) => h
                    .set_permissions(std::fs::Permissions::from_mode(0o644))
                    .map_err(io_err(&f.path))?,
                Err(StoreError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Makes the (moved) revision directory read-only, durably.
    pub(super) fn seal_top(&self) -> Result<(), StoreError> {
        let top = File::from(
            self.dir_fd
                .try_clone()
                .map_err(io_err("revision directory"))?,
        );
        top.set_permissions(std::fs::Permissions::from_mode(0o555))
            .map_err(io_err("revision directory"))?;
        top.sync_all().map_err(io_err("revision directory"))
    }
}

/// The temporary name of a dataset's new symlink before it is renamed over
/// `datasets/<ns>/<name>`: of fixed length whatever the name (a name of
/// 253 bytes, valid in Kubernetes, fits a path segment of 255, but not
/// with a prefix and a suffix added), starting with a dot so that it is
/// never taken for a dataset.
fn swap_name(name: &str) -> String {
    let hash = blake3::hash(name.as_bytes()).to_hex();
    format!(".swap-{}", &hash[..32])
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::store::Reuse;
    use crate::store::test_support::{as_the_chart_runs_the_agent, entry, fill, layout};

    fn big_chunks_first(rev: &RevisionFiles) -> u32 {
        (0..rev.layout().chunk_count())
            .find(|&i| rev.chunk_is_local(i))
            .unwrap()
    }

    #[test]
    fn a_revision_of_many_files_is_published_with_one_syncfs() {
        as_the_chart_runs_the_agent(|| {
            let tmp = tempfile::tempdir().unwrap();
            let store = NodeStore::open(tmp.path()).unwrap();
            let key = DatasetKey::new("ml", "many").unwrap();
            let mut files: Vec<_> = (0..=SYNCFS_ABOVE_FILES)
                .map(|i| entry(&format!("d{}/f{i}", i % 3), 1000 + i as u64, "1"))
                .collect();
            files.sort_by(|a, b| a.path.cmp(&b.path));
            let rev = store
                .open_revision(&key, layout(files), Reuse::default())
                .unwrap();
            fill(&rev, 3);
            store.publish(&rev).unwrap();
            let published = tmp.path().join("datasets/ml/many");
            let meta = std::fs::metadata(published.join("d1/f1")).unwrap();
            assert_eq!((meta.len(), meta.mode() & 0o222), (1001, 0));
            assert_eq!(
                std::fs::metadata(published.join("d1")).unwrap().mode() & 0o777,
                0o555
            );
            // Read-only trees are removed whole.
            assert!(store.remove(&key).unwrap());
            assert_eq!(
                std::fs::read_dir(tmp.path().join("revisions/ml"))
                    .unwrap()
                    .count(),
                0
            );
        });
    }

    #[test]
    fn a_seal_interrupted_before_the_move_is_undone_when_the_revision_reopens() {
        as_the_chart_runs_the_agent(|| {
            let tmp = tempfile::tempdir().unwrap();
            let store = NodeStore::open(tmp.path()).unwrap();
            let key = DatasetKey::new("ml", "llama").unwrap();
            let l = layout(vec![entry("a/b/c.bin", 200_000, "1"), entry("d", 10, "1")]);
            let rev = store
                .open_revision(&key, l.clone(), Reuse::default())
                .unwrap();
            fill(&rev, 1);
            // The agent stops after sealing, before the move into place...
            rev.seal().unwrap();
            drop(rev);
            // ...and its chunk log lost its records: every chunk is written
            // again, into files and directories that sealing made read-only.
            let rev = store
                .open_revision(&key, l.clone(), Reuse::default())
                .unwrap();
            fill(&rev, 2);
            store.publish(&rev).unwrap();
            let path = store.dataset_path(&key);
            let last = l.chunk_count() - 1;
            assert_eq!(
                std::fs::read(path.join("d")).unwrap(),
                vec![2 + last as u8; 10]
            );
            let mode = |p: &str| std::fs::metadata(path.join(p)).unwrap().mode() & 0o777;
            assert_eq!(
                (mode("a/b/c.bin"), mode("a/b"), mode(".")),
                (0o444, 0o555, 0o555)
            );
        });
    }

    #[test]
    fn publish_swaps_the_symlink_and_makes_files_read_only() {
        as_the_chart_runs_the_agent(|| {
            let tmp = tempfile::tempdir().unwrap();
            let store = NodeStore::open(tmp.path()).unwrap();
            let key = DatasetKey::new("ml", "llama").unwrap();
            let l = layout(vec![entry("a/b.bin", 200_000, "1"), entry("c", 10, "1")]);
            let rev = store
                .open_revision(&key, l.clone(), Reuse::default())
                .unwrap();
            fill(&rev, 1);
            store.publish(&rev).unwrap();
            let path = store.dataset_path(&key);
            assert_eq!(std::fs::read(path.join("c")).unwrap().len(), 10);
            let mode = std::fs::metadata(path.join("a/b.bin"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o444);
            assert_eq!(store.published_revision(&key), Some(l.revision().short()));

            // A new revision with one file changed: the unchanged one is linked.
            let l2 = layout(vec![entry("a/b.bin", 200_000, "1"), entry("c", 12, "2")]);
            let rev2 = store
                .open_revision(&key, l2.clone(), Reuse::published(&rev))
                .unwrap();
            let big_chunks: Vec<u32> = (0..l2.chunk_count())
                .filter(|&i| rev2.chunk_is_local(i))
                .collect();
            // Peers may read the linked (read-only) file before publication.
            let mut buf = vec![0; l2.chunk_len(big_chunks_first(&rev2)) as usize];
            rev2.read_chunk(big_chunks_first(&rev2), &mut buf).unwrap();
            assert_eq!(buf[0], 1);
            assert_eq!(
                big_chunks.len(),
                4,
                "the 200 kB file's four chunks are local"
            );
            for i in 0..l2.chunk_count() {
                if !rev2.chunk_is_local(i) {
                    rev2.write_chunk(i, &vec![9; l2.chunk_len(i) as usize])
                        .unwrap();
                }
            }
            store.publish(&rev2).unwrap();
            assert_eq!(std::fs::read(path.join("c")).unwrap(), vec![9; 12]);
            assert_eq!(std::fs::read(path.join("a/b.bin")).unwrap()[0], 1);

            assert!(store.remove(&key).unwrap());
            assert!(!path.exists());
            assert!(!store.remove(&key).unwrap());
        });
    }

    #[test]
    fn empty_files_are_created_at_publication() {
        as_the_chart_runs_the_agent(|| {
            let tmp = tempfile::tempdir().unwrap();
            let store = NodeStore::open(tmp.path()).unwrap();
            let key = DatasetKey::new("ml", "x").unwrap();
            let l = layout(vec![entry("a", 10, "1"), entry("d/empty", 0, "2")]);
            let files = store
                .open_revision(&key, l.clone(), Reuse::default())
                .unwrap();
            for i in 0..l.chunk_count() {
                files
                    .write_chunk(i, &vec![1; l.chunk_len(i) as usize])
                    .unwrap();
            }
            store.publish(&files).unwrap();
            let dir = store.dataset_path(&key);
            assert_eq!(std::fs::metadata(dir.join("d/empty")).unwrap().len(), 0);
            assert_eq!(std::fs::read(dir.join("a")).unwrap(), vec![1; 10]);
            assert!(store.remove(&key).unwrap());
        });
    }

    /// A name of 253 bytes, valid in Kubernetes: labels of 63, 63, 63 and
    /// 61 characters.
    fn longest_name() -> String {
        let name = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61),
        ]
        .join(".");
        assert_eq!(name.len(), 253);
        name
    }

    #[test]
    fn a_dataset_named_with_253_characters_is_published_and_updated() {
        as_the_chart_runs_the_agent(|| {
            let tmp = tempfile::tempdir().unwrap();
            let store = NodeStore::open(tmp.path()).unwrap();
            let key = DatasetKey::new("ml", &longest_name()).unwrap();
            let l = layout(vec![entry("a", 10, "1")]);
            let rev = store.open_revision(&key, l, Reuse::default()).unwrap();
            fill(&rev, 1);
            store.publish(&rev).unwrap();
            // And again, over the link just made.
            let l2 = layout(vec![entry("a", 10, "1"), entry("b", 5, "1")]);
            let rev2 = store
                .open_revision(&key, l2.clone(), Reuse::published(&rev))
                .unwrap();
            for i in (0..l2.chunk_count()).filter(|&i| !rev2.chunk_is_local(i)) {
                rev2.write_chunk(i, &vec![2; l2.chunk_len(i) as usize])
                    .unwrap();
            }
            store.publish(&rev2).unwrap();
            let path = store.dataset_path(&key);
            assert_eq!(std::fs::read(path.join("a")).unwrap(), vec![1; 10]);
            assert_eq!(std::fs::read(path.join("b")).unwrap(), vec![2; 5]);
            // Nothing left beside the link.
            let names: Vec<_> = std::fs::read_dir(tmp.path().join("datasets/ml"))
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(names, [std::ffi::OsString::from(longest_name())]);
            assert!(store.remove(&key).unwrap());
        });
    }

    #[test]
    fn temporary_names_do_not_grow_with_the_dataset_name() {
        assert_eq!(swap_name("a"), swap_name("a"));
        assert_ne!(swap_name("a"), swap_name("b"));
        assert_eq!(swap_name(&longest_name()).len(), swap_name("a").len());
        assert!(swap_name("a").len() <= 64);
    }
}
