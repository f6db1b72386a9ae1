//! The files of one revision on disk: opened (creating the staging tree
//! as needed) relative to the revision's directory, never through a
//! symlink, with bounded caches of open handles.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{Mode, fstatat};
use swarmseed_proto::ChunkLayout;

use super::write::DirectIo;
use super::writeback::WriteBehind;
use super::{DatasetKey, NodeStore, Reuse, StoreError, io_err};
use crate::board::ChunkSet;
use crate::lock;

impl NodeStore {
    /// Opens (creating as needed) the on-disk files of one revision: the
    /// published tree if it is complete, else its staging tree, taking
    /// what it can from the revisions this node already has (`reuse`):
    /// files unchanged from the published one (same path, size, mode, ETag,
    /// version) are hard-linked from it whole; files unchanged from an
    /// unfinished one are hard-linked from its staging tree, and the chunks
    /// of this revision that lie wholly in bytes verified there need no
    /// transfer ([`RevisionFiles::chunk_is_local`]).
    pub fn open_revision(
        &self,
        key: &DatasetKey,
        layout: Arc<ChunkLayout>,
        reuse: Reuse<'_>,
    ) -> Result<RevisionFiles, StoreError> {
        let rev = layout.revision();
        let state_dir = self.state_dir(key);
        std::fs::create_dir_all(&state_dir).map_err(io_err(&state_dir))?;
        let log_path = state_dir.join(format!("{}.chunks", rev.short()));

        let published_dir = self.revision_dir(key, &rev);
        let (dir, published, resumed) = if published_dir.is_dir() {
            (published_dir, true, true)
        } else {
            let staging = self.staging_dir(key, &rev);
            let resumed = staging.is_dir();
            std::fs::create_dir_all(&staging).map_err(io_err(&staging))?;
            (staging, false, resumed)
        };
        let dir_fd = open_dir_nofollow(&dir)?;
        let mut files = RevisionFiles {
            key: key.clone(),
            layout: layout.clone(),
            dir,
            dir_fd,
            log_path,
            published: Mutex::new(published),
            handles: Mutex::new(HandleCache::default()),
            direct_handles: Mutex::new(HandleCache::default()),
            direct_io: self.direct_io.clone(),
            written_direct: AtomicU64::new(0),
            linked: Mutex::new(vec![published; layout.files().len()]),
            carried: ChunkSet::new(0),
            write_behind: self.write_behind.clone(),
        };
        if !published {
            files.prepare_files(reuse.published)?;
            let unfinished = reuse
                .unfinished
                .filter(|(u, _)| u.layout.revision() != rev && !u.is_published());
            if let Some((old, verified)) = unfinished {
                files.carried = files.carry_from(old, verified)?;
            }
            files.undo_interrupted_seal()?;
            // What is on the disk already needs no room: files of this
            // revision filled before (a retry after a failure, a restart),
            // or linked from the unfinished revision. Only then is every
            // file looked at.
            self.check_space(&files, resumed || unfinished.is_some())?;
        }
        Ok(files)
    }
}

/// How [`RevisionFiles::open_file`] opens a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Access {
    Read,
    /// Writable, created if missing.
    Create,
    /// As `Create`, bypassing the page cache (`O_DIRECT`).
    CreateDirect,
}

/// Open file handles of a revision, bounded: datasets may have millions of
/// small files.
#[derive(Default)]
pub(super) struct HandleCache {
    pub(super) map: HashMap<u32, Arc<File>>,
    order: VecDeque<u32>,
}

const MAX_OPEN_FILES: usize = 256;

impl HandleCache {
    pub(super) fn insert(&mut self, index: u32, file: Arc<File>) {
        if self.map.len() >= MAX_OPEN_FILES
            && let Some(old) = self.order.pop_front()
        {
            self.map.remove(&old);
        }
        self.map.insert(index, file);
        self.order.push_back(index);
    }
}

/// The files of one revision on disk.
pub struct RevisionFiles {
    pub(super) key: DatasetKey,
    pub(super) layout: Arc<ChunkLayout>,
    /// The directory opened as `dir_fd` (named in error messages).
    pub(super) dir: PathBuf,
    pub(super) dir_fd: OwnedFd,
    pub(super) log_path: PathBuf,
    pub(super) published: Mutex<bool>,
    pub(super) handles: Mutex<HandleCache>,
    /// `O_DIRECT` handles of files being written.
    pub(super) direct_handles: Mutex<HandleCache>,
    pub(super) direct_io: Arc<DirectIo>,
    pub(super) written_direct: AtomicU64,
    /// Files already complete on disk (hard-linked from the previous
    /// revision, or the whole revision once published): never written.
    pub(super) linked: Mutex<Vec<bool>>,
    /// Chunks whose bytes were verified in an unfinished revision, in
    /// files linked from it ([`RevisionFiles::carry_from`]).
    pub(super) carried: ChunkSet,
    pub(super) write_behind: WriteBehind,
}

impl RevisionFiles {
    pub fn layout(&self) -> &Arc<ChunkLayout> {
        &self.layout
    }

    pub fn is_published(&self) -> bool {
        *lock(&self.published)
    }

    /// Whether chunk `index` is on disk already, so it needs no transfer:
    /// every segment lies in files complete on disk, or its bytes were
    /// verified in an unfinished revision whose files were carried over.
    pub fn chunk_is_local(&self, index: u32) -> bool {
        if self.carried.contains(index) {
            return true;
        }
        let linked = lock(&self.linked);
        self.layout
            .segments(index)
            .iter()
            .all(|s| linked[s.file as usize])
    }

    /// Bytes allocated on disk to file `path` of this revision (0 if it
    /// does not exist yet), at most its listed size.
    pub(super) fn allocated_bytes(&self, path: &str) -> u64 {
        fstatat(self.dir_fd.as_fd(), path, AtFlags::AT_SYMLINK_NOFOLLOW)
            .ok()
            .filter(|s| s.st_mode & libc::S_IFMT == libc::S_IFREG)
            .map_or(0, |s| s.st_blocks as u64 * 512)
    }

    /// Creates the parent directories of `path`, each checked to be a real
    /// directory; `done` holds those already checked by this caller (files
    /// of a dataset share few directories).
    pub(super) fn ensure_parent_dirs(
        &self,
        path: &str,
        done: &mut HashSet<String>,
    ) -> Result<(), StoreError> {
        let Some((parents, _)) = path.rsplit_once('/') else {
            return Ok(());
        };
        if done.contains(parents) {
            return Ok(());
        }
        let mut prefix = String::new();
        for seg in parents.split('/') {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(seg);
            if done.contains(&prefix) {
                continue;
            }
            match nix::sys::stat::mkdirat(
                self.dir_fd.as_fd(),
                prefix.as_str(),
                Mode::from_bits_truncate(0o755),
            ) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(self.open_error(path, e)),
            }
            // Refuse a component that is not a real directory (a symlink
            // planted in its place).
            self.open_dir(&prefix, path)?;
            done.insert(prefix.clone());
        }
        Ok(())
    }

    pub(super) fn open_error(&self, path: &str, e: Errno) -> StoreError {
        match e {
            Errno::ELOOP | Errno::EXDEV | Errno::ENOTDIR => StoreError::UnsafePath {
                path: path.to_owned(),
            },
            // The whole path: the operator shows it, for an admin to look.
            other => StoreError::Io {
                path: self.dir.join(path).display().to_string(),
                source: io::Error::from(other),
            },
        }
    }

    pub(super) fn open_file(&self, path: &str, access: Access) -> Result<File, StoreError> {
        let mut flags = OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW;
        flags |= match access {
            Access::Read => OFlag::O_RDONLY,
            Access::Create => OFlag::O_RDWR | OFlag::O_CREAT,
            Access::CreateDirect => OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_DIRECT,
        };
        let create = access != Access::Read;
        // openat2 refuses a mode without O_CREAT.
        let mut how = OpenHow::new()
            .flags(flags)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
        if create {
            how = how.mode(Mode::from_bits_truncate(0o644));
        }
        let fd = openat2(self.dir_fd.as_fd(), path, how).map_err(|e| self.open_error(path, e))?;
        Ok(File::from(fd))
    }

    /// An open handle on file `index` of the layout (cached): read-only
    /// once the file is complete (published, or linked from the previous
    /// revision: read-only on disk, and the agent's root has no
    /// `CAP_DAC_OVERRIDE`); otherwise writable, and created if it does not
    /// exist yet.
    pub fn file(&self, index: u32) -> Result<Arc<File>, StoreError> {
        if let Some(f) = lock(&self.handles).map.get(&index) {
            return Ok(f.clone());
        }
        let path = &self.layout.files()[index as usize].path;
        let complete = *lock(&self.published) || lock(&self.linked)[index as usize];
        let access = if complete {
            Access::Read
        } else {
            Access::Create
        };
        let file = Arc::new(self.open_file(path, access)?);
        lock(&self.handles).insert(index, file.clone());
        Ok(file)
    }

    /// Reads chunk `index` into `buf` (which must be the chunk's length).
    pub fn read_chunk(&self, index: u32, buf: &mut [u8]) -> Result<(), StoreError> {
        let mut at = 0usize;
        for s in self.layout.segments(index) {
            let len = s.len as usize;
            let f = self.file(s.file)?;
            f.read_exact_at(&mut buf[at..at + len], s.file_offset)
                .map_err(io_err(&self.layout.files()[s.file as usize].path))?;
            at += len;
        }
        Ok(())
    }

    /// Every directory of the layout (parents before children).
    pub(super) fn directories(&self) -> std::collections::BTreeSet<&str> {
        let mut all = std::collections::BTreeSet::new();
        for f in self.layout.files() {
            let mut p = f.path.as_str();
            while let Some((parent, _)) = p.rsplit_once('/') {
                if !all.insert(parent) {
                    break;
                }
                p = parent;
            }
        }
        all
    }

    /// Opens directory `path` of the revision, refusing symlinks; an error
    /// names `named` (the listing entry being made, for a parent).
    pub(super) fn open_dir(&self, path: &str, named: &str) -> Result<File, StoreError> {
        let how = OpenHow::new()
            .flags(OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
        let fd = openat2(self.dir_fd.as_fd(), path, how).map_err(|e| self.open_error(named, e))?;
        Ok(File::from(fd))
    }
}

fn open_dir_nofollow(dir: &Path) -> Result<OwnedFd, StoreError> {
    let how = OpenHow::new().flags(OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW);
    openat2(nix::fcntl::AT_FDCWD, dir, how).map_err(|e| match e {
        Errno::ELOOP | Errno::ENOTDIR => StoreError::Occupied {
            path: dir.display().to_string(),
        },
        other => io_err(dir)(io::Error::from(other)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::{entry, layout};

    /// A symlink to `target` where `name` of the revision would go.
    fn plant_symlink(
        store: &NodeStore,
        key: &DatasetKey,
        l: &ChunkLayout,
        name: &str,
        target: &Path,
    ) {
        let staging = store.staging_dir(key, &l.revision());
        std::fs::create_dir_all(&staging).unwrap();
        std::os::unix::fs::symlink(target, staging.join(name)).unwrap();
    }

    #[test]
    fn a_planted_symlink_is_refused_and_nothing_is_written_through_it() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let store = NodeStore::open(tmp.path()).unwrap();
        let key = DatasetKey::new("ml", "x").unwrap();
        let l = layout(vec![entry("d/f", 10, "1")]);
        plant_symlink(&store, &key, &l, "d", outside.path());
        let err = store
            .open_revision(&key, l, Reuse::default())
            .err()
            .unwrap();
        assert!(
            matches!(err, StoreError::UnsafePath { ref path } if path == "d/f"),
            "{err}"
        );
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_symlink_planted_as_a_file_is_refused_at_the_first_write() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let store = NodeStore::open(tmp.path()).unwrap();
        let key = DatasetKey::new("ml", "x").unwrap();
        let l = layout(vec![entry("f", 10, "1")]);
        let target = outside.path().join("target");
        plant_symlink(&store, &key, &l, "f", &target);
        let files = store.open_revision(&key, l, Reuse::default()).unwrap();
        let err = files.write_chunk(0, &[7; 10]).unwrap_err();
        assert!(
            matches!(err, StoreError::UnsafePath { ref path } if path == "f"),
            "{err}"
        );
        assert!(!target.exists());
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }
}
