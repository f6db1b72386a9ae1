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

use crate::lock;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{Mode, fstatat};
use prost::Message;
use swarmseed_proto::layout::published_mode;
use swarmseed_proto::pb;
use swarmseed_proto::{ChunkLayout, RevisionId};

use crate::attest::ChunkRecord;
use crate::board::ChunkSet;
use crate::writeback::WriteBehind;
use thiserror::Error;

/// A dataset's identity on the node: its Kubernetes namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DatasetKey {
    pub namespace: String,
    pub name: String,
}

impl DatasetKey {
    /// Validates both parts as Kubernetes names (a namespace is a DNS-1123
    /// label, a name a DNS-1123 subdomain), which also makes them safe as
    /// directory names.
    pub fn new(namespace: &str, name: &str) -> Result<Self, StoreError> {
        let label_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 63
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !s.starts_with('-')
                && !s.ends_with('-')
        };
        if !label_ok(namespace) {
            return Err(StoreError::InvalidName(format!(
                "namespace {namespace:?} is not a valid Kubernetes namespace"
            )));
        }
        if name.len() > 253 || !name.split('.').all(label_ok) {
            return Err(StoreError::InvalidName(format!(
                "name {name:?} is not a valid Kubernetes object name"
            )));
        }
        Ok(Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }

    pub fn from_ref(r: Option<&pb::DatasetRef>) -> Result<Self, StoreError> {
        let r = r.ok_or_else(|| StoreError::InvalidName("dataset is missing".into()))?;
        Self::new(&r.namespace, &r.name)
    }

    pub fn to_ref(&self) -> pb::DatasetRef {
        pb::DatasetRef {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            uid: String::new(),
        }
    }

    fn rel(&self) -> PathBuf {
        Path::new(&self.namespace).join(&self.name)
    }
}

impl std::fmt::Display for DatasetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

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
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidName(_) => "InvalidAssignment",
            Self::UnsafePath { .. } => "UnsafePath",
            _ if self.is_out_of_space() => "InsufficientStorage",
            Self::Io { .. } | Self::Write { .. } => "StorageError",
            Self::InsufficientStorage { .. } => "InsufficientStorage",
            Self::Occupied { .. } => "PathOccupied",
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

fn io_err(path: impl AsRef<Path>) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.as_ref().display().to_string();
    move |source| StoreError::Io { path, source }
}

/// The node store under one root directory.
pub struct NodeStore {
    root: PathBuf,
    write_behind: WriteBehind,
    usage: Arc<UsageCache>,
    direct_io: Arc<DirectIo>,
}

/// Whether big chunk writes bypass the page cache (`O_DIRECT`): on unless
/// turned off, and off for good once the filesystem refuses it.
#[derive(Debug)]
struct DirectIo(AtomicBool);

impl DirectIo {
    fn enabled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    fn refused(&self, e: &io::Error) {
        if self.0.swap(false, Ordering::Relaxed) {
            tracing::info!(error = %e, "the store's filesystem refuses O_DIRECT; writing through the page cache");
        }
    }
}

/// Segments at least this long, at a block-aligned offset and in
/// block-aligned memory, are written with `O_DIRECT`; shorter ones go
/// through the page cache, where the write-behind thread batches them.
const DIRECT_MIN: u64 = 256 * 1024;

/// How old the reported size of the store may be. Measuring it takes a
/// `statx` of every file under the root: on every status call (the
/// operator asks every agent every few seconds) that would cost more CPU
/// than the transfers themselves once datasets hold tens of thousands of
/// files.
const USAGE_MAX_AGE: Duration = Duration::from_secs(30);

/// The store's size, measured off the caller's thread when stale.
struct UsageCache {
    root: PathBuf,
    max_age: Duration,
    bytes: AtomicU64,
    /// When the last measurement finished, and whether one is running.
    state: Mutex<(Instant, bool)>,
}

impl UsageCache {
    fn measure(root: &Path, max_age: Duration) -> Self {
        Self {
            root: root.to_owned(),
            max_age,
            bytes: AtomicU64::new(tree_bytes(root)),
            state: Mutex::new((Instant::now(), false)),
        }
    }

    /// The last measurement; starts a new one in the background when it
    /// is older than `max_age`.
    fn get(self: &Arc<Self>) -> u64 {
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

    /// Refuses a revision whose missing bytes do not fit on the store's
    /// filesystem.
    fn check_space(&self, files: &RevisionFiles, count_present: bool) -> Result<(), StoreError> {
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

/// How [`RevisionFiles::open_file`] opens a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    /// Writable, created if missing.
    Create,
    /// As `Create`, bypassing the page cache (`O_DIRECT`).
    CreateDirect,
}

/// Open file handles of a revision, bounded: datasets may have millions of
/// small files.
#[derive(Default)]
struct HandleCache {
    map: HashMap<u32, Arc<File>>,
    order: VecDeque<u32>,
}

const MAX_OPEN_FILES: usize = 256;

impl HandleCache {
    fn insert(&mut self, index: u32, file: Arc<File>) {
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
    key: DatasetKey,
    layout: Arc<ChunkLayout>,
    /// The directory opened as `dir_fd` (named in error messages).
    dir: PathBuf,
    dir_fd: OwnedFd,
    log_path: PathBuf,
    published: Mutex<bool>,
    handles: Mutex<HandleCache>,
    /// `O_DIRECT` handles of files being written.
    direct_handles: Mutex<HandleCache>,
    direct_io: Arc<DirectIo>,
    written_direct: AtomicU64,
    /// Files already complete on disk (hard-linked from the previous
    /// revision, or the whole revision once published): never written.
    linked: Mutex<Vec<bool>>,
    /// Chunks whose bytes were verified in an unfinished revision, in
    /// files linked from it ([`RevisionFiles::carry_from`]).
    carried: ChunkSet,
    write_behind: WriteBehind,
}

/// What a new revision may take from the revisions the node has.
#[derive(Default, Clone, Copy)]
pub struct Reuse<'a> {
    /// The published revision.
    pub published: Option<&'a RevisionFiles>,
    /// An unpublished revision (failed, or replaced before it was
    /// complete) and the chunks this node verified of it.
    pub unfinished: Option<(&'a RevisionFiles, &'a ChunkSet)>,
}

impl<'a> Reuse<'a> {
    pub fn published(files: &'a RevisionFiles) -> Self {
        Self {
            published: Some(files),
            unfinished: None,
        }
    }
}

/// Above this many files a revision is made durable by one `syncfs(2)` of
/// its filesystem rather than an `fsync(2)` per file and directory: every
/// fsync commits the filesystem's journal, and thousands of commits take
/// minutes. (syncfs also flushes other writers' data on that filesystem,
/// which is why a revision of a few files still uses fsync.)
const SYNCFS_ABOVE_FILES: usize = 64;

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

    /// The file of this revision that holds the same origin object as `f`
    /// (same path, size, mode, ETag and version), if any.
    fn find_same_object(&self, f: &pb::FileEntry) -> Option<u32> {
        let files = self.layout.files();
        let i = files
            .binary_search_by(|x| x.path.as_str().cmp(&f.path))
            .ok()?;
        let old = &files[i];
        let same = old.size == f.size
            && old.mode == f.mode
            && old.etag == f.etag
            && old.version == f.version
            && old.checksum == f.checksum
            && !f.etag.is_empty();
        same.then_some(i as u32)
    }

    /// As [`Self::find_same_object`], for a file complete on disk.
    fn find_unchanged(&self, f: &pb::FileEntry) -> Option<u32> {
        self.find_same_object(f)
            .filter(|&i| lock(&self.linked)[i as usize])
    }

    /// Hard-links into this (staging) revision the files that hold the
    /// same origin object as a file of `old`, an unfinished revision of
    /// which this node verified the chunks `verified`; returns the chunks
    /// of this revision that lie wholly in bytes verified there (or in
    /// files complete on disk).
    ///
    /// Why those bytes may be published without a transfer: each lies in
    /// a chunk of `old` that matched a digest from the origin side (a
    /// fetcher's attestation, or this node's own read) before it was
    /// written, and its file is the same origin object (reads are pinned
    /// to the ETag or version), so it is the origin's byte. This node
    /// then vouches for the chunk of this revision itself, as for a file
    /// linked from the published revision. A file of `old` that is
    /// read-only (sealed) is left alone: the chunks of this revision that
    /// share it with other files are written again.
    fn carry_from(&self, old: &RevisionFiles, verified: &ChunkSet) -> Result<ChunkSet, StoreError> {
        let linked = lock(&self.linked).clone();
        let mut source = vec![FileSource::Missing; self.layout.files().len()];
        for (i, f) in self.layout.files().iter().enumerate() {
            if linked[i] {
                source[i] = FileSource::Complete;
                continue;
            }
            let Some(j) = old.find_same_object(f) else {
                continue;
            };
            let Ok(theirs) = fstatat(
                old.dir_fd.as_fd(),
                f.path.as_str(),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            ) else {
                continue;
            };
            let regular = theirs.st_mode & libc::S_IFMT == libc::S_IFREG;
            if !regular || theirs.st_mode & 0o200 == 0 {
                continue;
            }
            let same_inode = |s: &nix::sys::stat::FileStat| {
                s.st_ino == theirs.st_ino && s.st_dev == theirs.st_dev
            };
            match nix::unistd::linkat(
                old.dir_fd.as_fd(),
                f.path.as_str(),
                self.dir_fd.as_fd(),
                f.path.as_str(),
                AtFlags::empty(),
            ) {
                Ok(()) => source[i] = FileSource::Carried(j),
                // Linked before (this revision was opened already): the
                // same file. Otherwise this revision's own.
                Err(Errno::EEXIST) => {
                    let ours = fstatat(
                        self.dir_fd.as_fd(),
                        f.path.as_str(),
                        AtFlags::AT_SYMLINK_NOFOLLOW,
                    );
                    if ours.is_ok_and(|s| same_inode(&s)) {
                        source[i] = FileSource::Carried(j);
                    }
                }
                Err(e) => {
                    tracing::debug!(path = %f.path, error = %e, "hard link from the unfinished revision failed; transferring");
                }
            }
        }
        let carried = carried_chunks(&old.layout, verified, &self.layout, &source);
        if !carried.is_empty() {
            tracing::info!(
                dataset = %self.key,
                from = %old.layout.revision().short(),
                chunks = carried.count(),
                "chunks verified in an unfinished revision are kept"
            );
        }
        Ok(carried)
    }

    /// Bytes allocated on disk to file `path` of this revision (0 if it
    /// does not exist yet), at most its listed size.
    fn allocated_bytes(&self, path: &str) -> u64 {
        fstatat(self.dir_fd.as_fd(), path, AtFlags::AT_SYMLINK_NOFOLLOW)
            .ok()
            .filter(|s| s.st_mode & libc::S_IFMT == libc::S_IFREG)
            .map_or(0, |s| s.st_blocks as u64 * 512)
    }

    /// Creates the revision's directories and hard-links the files that
    /// did not change since `previous`. Other files are created by their
    /// first write ([`Self::file`]), so that a dataset of many small files
    /// starts moving bytes at once rather than after laying out every
    /// file, and [`Self::seal`] creates the empty ones.
    fn prepare_files(&self, previous: Option<&RevisionFiles>) -> Result<(), StoreError> {
        let mut linked = lock(&self.linked);
        let mut dirs = HashSet::new();
        for (i, f) in self.layout.files().iter().enumerate() {
            self.ensure_parent_dirs(&f.path, &mut dirs)?;
            if let Some(prev) = previous.filter(|p| p.find_unchanged(f).is_some()) {
                match nix::unistd::linkat(
                    prev.dir_fd.as_fd(),
                    f.path.as_str(),
                    self.dir_fd.as_fd(),
                    f.path.as_str(),
                    nix::fcntl::AtFlags::empty(),
                ) {
                    Ok(()) | Err(Errno::EEXIST) => {
                        linked[i] = true;
                        continue;
                    }
                    Err(e) => {
                        tracing::debug!(path = %f.path, error = %e, "hard link failed; transferring");
                    }
                }
            }
        }
        Ok(())
    }

    /// Creates the parent directories of `path`, each checked to be a real
    /// directory; `done` holds those already checked by this caller (files
    /// of a dataset share few directories).
    fn ensure_parent_dirs(&self, path: &str, done: &mut HashSet<String>) -> Result<(), StoreError> {
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

    fn open_error(&self, path: &str, e: Errno) -> StoreError {
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

    fn open_file(&self, path: &str, access: Access) -> Result<File, StoreError> {
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

    /// An `O_DIRECT` handle on file `index` (cached), created if it does
    /// not exist yet; `None` where direct I/O is off or refused.
    fn direct_file(&self, index: u32) -> Result<Option<Arc<File>>, StoreError> {
        if !self.direct_io.enabled() {
            return Ok(None);
        }
        if let Some(f) = lock(&self.direct_handles).map.get(&index) {
            return Ok(Some(f.clone()));
        }
        let path = &self.layout.files()[index as usize].path;
        let file = match self.open_file(path, Access::CreateDirect) {
            Ok(f) => Arc::new(f),
            Err(StoreError::Io { source, .. }) if source.raw_os_error() == Some(libc::EINVAL) => {
                self.direct_io.refused(&source);
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        lock(&self.direct_handles).insert(index, file.clone());
        Ok(Some(file))
    }

    /// Writes a verified chunk into its files (segments of files that are
    /// already complete are skipped). The block-aligned part of a big
    /// segment whose bytes lie in block-aligned memory (a
    /// [`crate::chunkmem::ChunkBuf`]) goes to the disk with `O_DIRECT`,
    /// without page-cache pages; the rest through the page cache, with a
    /// writeback hint.
    pub fn write_chunk(&self, index: u32, data: &[u8]) -> Result<(), StoreError> {
        let mut at = 0usize;
        for s in self.layout.segments(index) {
            let len = s.len as usize;
            let skip = lock(&self.linked)[s.file as usize];
            if !skip {
                self.write_segment(s.file, s.file_offset, &data[at..at + len])?;
            }
            at += len;
        }
        Ok(())
    }

    /// Bytes [`Self::write_chunk`] wrote with `O_DIRECT`.
    pub fn bytes_written_direct(&self) -> u64 {
        self.written_direct.load(Ordering::Relaxed)
    }

    fn write_segment(&self, index: u32, offset: u64, bytes: &[u8]) -> Result<(), StoreError> {
        let path = &self.layout.files()[index as usize].path;
        let failed = |source: io::Error| StoreError::Write {
            path: self.dir.join(path).display().to_string(),
            offset,
            bytes: bytes.len() as u64,
            source,
        };
        let block = crate::chunkmem::BLOCK;
        let aligned = bytes.len() / block * block;
        let mut direct = 0;
        if aligned as u64 >= DIRECT_MIN
            && offset.is_multiple_of(block as u64)
            && (bytes.as_ptr() as usize).is_multiple_of(block)
            && let Some(f) = self.direct_file(index)?
        {
            match f.write_all_at(&bytes[..aligned], offset) {
                Ok(()) => {
                    direct = aligned;
                    self.written_direct
                        .fetch_add(aligned as u64, Ordering::Relaxed);
                }
                // A block size above ours: the page cache it is.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.direct_io.refused(&e),
                Err(e) => return Err(failed(e)),
            }
        }
        if direct < bytes.len() {
            let f = self.file(index)?;
            let at = offset + direct as u64;
            f.write_all_at(&bytes[direct..], at).map_err(failed)?;
            self.write_behind.hint(f, at, (bytes.len() - direct) as u64);
        }
        Ok(())
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

    /// Flushes every file to disk and makes files and directories
    /// read-only.
    fn seal(&self) -> Result<(), StoreError> {
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
    fn undo_interrupted_seal(&self) -> Result<(), StoreError> {
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

    /// Every directory of the layout (parents before children).
    fn directories(&self) -> std::collections::BTreeSet<&str> {
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
    fn open_dir(&self, path: &str, named: &str) -> Result<File, StoreError> {
        let how = OpenHow::new()
            .flags(OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
        let fd = openat2(self.dir_fd.as_fd(), path, how).map_err(|e| self.open_error(named, e))?;
        Ok(File::from(fd))
    }

    /// Makes the (moved) revision directory read-only, durably.
    fn seal_top(&self) -> Result<(), StoreError> {
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

/// Where the bytes of a file of a new revision may come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileSource {
    /// Nowhere: every chunk is transferred.
    Missing,
    /// Complete on disk (linked from the published revision).
    Complete,
    /// Linked from an unfinished revision, where it is this file.
    Carried(u32),
}

/// The chunks of `new` whose every byte is on disk already: in files
/// complete on disk, or in files carried over from `old` (`source`, by
/// file of `new`) within chunks of `old` that were verified.
fn carried_chunks(
    old: &ChunkLayout,
    verified: &ChunkSet,
    new: &ChunkLayout,
    source: &[FileSource],
) -> ChunkSet {
    let mut out = ChunkSet::new(new.chunk_count());
    if !source.iter().any(|s| matches!(s, FileSource::Carried(_))) {
        return out;
    }
    // The verified byte ranges of every file of `old`, merged.
    let mut ranges: HashMap<u32, Vec<(u64, u64)>> = HashMap::new();
    for c in verified.iter().filter(|&c| c < old.chunk_count()) {
        for s in old.segments(c) {
            ranges
                .entry(s.file)
                .or_default()
                .push((s.file_offset, s.file_offset + s.len));
        }
    }
    for r in ranges.values_mut() {
        r.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(r.len());
        for &(a, b) in r.iter() {
            match merged.last_mut() {
                Some(last) if a <= last.1 => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        *r = merged;
    }
    let covered = |file: u32, start: u64, len: u64| {
        ranges.get(&file).is_some_and(|r| {
            // The last range starting at or before `start`.
            let i = r.partition_point(|&(a, _)| a <= start);
            i > 0 && r[i - 1].1 >= start + len
        })
    };
    for c in 0..new.chunk_count() {
        let segments = new.segments(c);
        let carried = segments
            .iter()
            .any(|s| matches!(source.get(s.file as usize), Some(FileSource::Carried(_))));
        let local = segments.iter().all(|s| match source.get(s.file as usize) {
            Some(FileSource::Complete) => true,
            Some(FileSource::Carried(j)) => covered(*j, s.file_offset, s.len),
            _ => false,
        });
        if carried && local {
            out.insert(c);
        }
    }
    out
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

/// The temporary name of a dataset's new symlink before it is renamed over
/// `datasets/<ns>/<name>`: of fixed length whatever the name (a name of
/// 253 bytes, valid in Kubernetes, fits a path segment of 255, but not
/// with a prefix and a suffix added), starting with a dot so that it is
/// never taken for a dataset.
fn swap_name(name: &str) -> String {
    let hash = blake3::hash(name.as_bytes()).to_hex();
    format!(".swap-{}", &hash[..32])
}

fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = path.with_extension("tmp");
    // Owner only: what is written here may hold credentials.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    if let Some(parent) = path.parent() {
        fsync_dir(parent)?;
    }
    Ok(())
}

/// Removes a tree that may contain read-only directories, never following
/// symlinks.
fn remove_tree(path: &Path) -> Result<(), StoreError> {
    fn make_writable(p: &Path) {
        let Ok(meta) = std::fs::symlink_metadata(p) else {
            return;
        };
        if !meta.is_dir() {
            return;
        }
        let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755));
        if let Ok(entries) = std::fs::read_dir(p) {
            for e in entries.flatten() {
                make_writable(&e.path());
            }
        }
    }
    // A transfer being stopped may still finish a write it began, making a
    // file in a directory just emptied: take the tree again (a few times,
    // briefly). Once a directory is gone, such writes fail: they hold it
    // open by descriptor, not by path.
    const ATTEMPTS: u32 = 20;
    for attempt in 1.. {
        make_writable(path);
        match std::fs::remove_dir_all(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty && attempt < ATTEMPTS => {
                std::thread::sleep(std::time::Duration::from_millis(25));
            }
            Err(e) => return Err(io_err(path)(e)),
        }
    }
    Ok(())
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
    use super::*;
    use swarmseed_proto::ChunkDigest;

    fn entry(path: &str, size: u64, etag: &str) -> pb::FileEntry {
        pb::FileEntry {
            path: path.into(),
            size,
            etag: etag.into(),
            ..Default::default()
        }
    }

    fn layout(files: Vec<pb::FileEntry>) -> Arc<ChunkLayout> {
        Arc::new(ChunkLayout::new(files, 64 * 1024).unwrap())
    }

    fn big_chunks_first(rev: &RevisionFiles) -> u32 {
        (0..rev.layout().chunk_count())
            .find(|&i| rev.chunk_is_local(i))
            .unwrap()
    }

    /// Runs `test` on a thread of its own with the file capabilities
    /// dropped, as the chart runs the agent: uid 0 without
    /// `CAP_DAC_OVERRIDE`, `CAP_DAC_READ_SEARCH` and `CAP_FOWNER`, so file
    /// and directory permissions apply to it as to any owner.
    fn as_the_chart_runs_the_agent(test: impl FnOnce() + Send + 'static) {
        #[repr(C)]
        struct Header {
            version: u32,
            pid: i32,
        }
        #[repr(C)]
        #[derive(Default, Clone, Copy)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        const VERSION_3: u32 = 0x2008_0522;
        const FILE_CAPABILITIES: u32 = (1 << 1) | (1 << 2) | (1 << 3);
        let outcome = std::thread::spawn(move || {
            let mut header = Header {
                version: VERSION_3,
                pid: 0,
            };
            let mut data = [Data::default(); 2];
            // SAFETY: capget(2)/capset(2) with a version-3 header and the
            // two data words that version takes; they change only the
            // capabilities of this thread, which ends with the test.
            #[allow(unsafe_code)]
            unsafe {
                let got = libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr());
                assert_eq!(got, 0, "capget: {}", io::Error::last_os_error());
                data[0].effective &= !FILE_CAPABILITIES;
                data[0].permitted &= !FILE_CAPABILITIES;
                let set = libc::syscall(libc::SYS_capset, &mut header, data.as_ptr());
                assert_eq!(set, 0, "capset: {}", io::Error::last_os_error());
            }
            // The test means something only if permissions now apply.
            let dir = tempfile::tempdir().unwrap();
            let probe = dir.path().join("read-only");
            std::fs::write(&probe, b"x").unwrap();
            std::fs::set_permissions(&probe, std::fs::Permissions::from_mode(0o444)).unwrap();
            let denied = std::fs::OpenOptions::new().write(true).open(&probe);
            assert_eq!(
                denied.err().map(|e| e.kind()),
                Some(io::ErrorKind::PermissionDenied)
            );
            test();
        })
        .join();
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    }

    fn fill(files: &RevisionFiles, seed: u8) {
        let l = files.layout().clone();
        for i in 0..l.chunk_count() {
            let data = vec![seed.wrapping_add(i as u8); l.chunk_len(i) as usize];
            files.write_chunk(i, &data).unwrap();
        }
    }

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

    /// Whether the filesystem of `dir` takes `O_DIRECT`.
    fn takes_direct_io(dir: &Path) -> bool {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .custom_flags(libc::O_DIRECT)
            .open(dir.join("direct-probe"))
            .is_ok()
    }

    #[test]
    fn big_chunks_in_aligned_memory_bypass_the_page_cache_small_ones_do_not() {
        as_the_chart_runs_the_agent(|| {
            let tmp = tempfile::tempdir().unwrap();
            let store = NodeStore::open(tmp.path().join("root")).unwrap();
            let key = DatasetKey::new("ml", "llama").unwrap();
            // 1 MiB chunks: two of the big file (the second 4 KiB short and
            // not a whole number of blocks), one packing both small files.
            let size = (2 << 20) - 4096 - 10;
            let files = vec![
                entry("big", size, "1"),
                entry("s1", 3, "1"),
                entry("s2", 5000, "1"),
            ];
            let l = Arc::new(ChunkLayout::new(files, 1 << 20).unwrap());
            assert_eq!(l.chunk_count(), 3);
            let rev = store
                .open_revision(&key, l.clone(), Reuse::default())
                .unwrap();
            let pool = crate::chunkmem::BufferPool::new(1 << 20, 1);
            let mut expected = Vec::new();
            for i in 0..l.chunk_count() {
                let mut buf = pool.take(l.chunk_len(i) as usize);
                buf.iter_mut()
                    .enumerate()
                    .for_each(|(j, b)| *b = (j * 7 + i as usize) as u8);
                expected.extend_from_slice(&buf);
                rev.write_chunk(i, &buf).unwrap();
                pool.give(buf);
            }
            let direct = if takes_direct_io(tmp.path()) {
                // Both big-file chunks, less the second's partial block.
                (1 << 20) + ((1 << 20) - 4096 - 4096)
            } else {
                0
            };
            assert_eq!(rev.bytes_written_direct(), direct);
            store.publish(&rev).unwrap();
            let path = store.dataset_path(&key);
            let mut got = std::fs::read(path.join("big")).unwrap();
            got.extend(std::fs::read(path.join("s1")).unwrap());
            got.extend(std::fs::read(path.join("s2")).unwrap());
            assert!(got == expected, "the published bytes differ");

            // Memory that is not block-aligned goes through the page cache.
            let key = DatasetKey::new("ml", "other").unwrap();
            let rev = store
                .open_revision(&key, l.clone(), Reuse::default())
                .unwrap();
            let off_by_one = vec![0u8; (1 << 20) + 1];
            rev.write_chunk(0, &off_by_one[1..]).unwrap();
            assert_eq!(rev.bytes_written_direct(), 0);
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
    fn invalid_kubernetes_names_are_refused() {
        for (ns, name) in [
            ("", "a"),
            ("A", "a"),
            ("a", "../x"),
            ("a", "x/y"),
            ("a", ".."),
            ("a", ""),
        ] {
            assert!(DatasetKey::new(ns, name).is_err(), "{ns}/{name}");
        }
        assert!(DatasetKey::new("team-a", "llama.v2").is_ok());
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

    #[test]
    fn a_full_filesystem_is_insufficient_storage_any_other_failure_a_storage_error() {
        let enospc = StoreError::Write {
            path: "/var/lib/swarmseed/staging/ml/x/0123/a.bin".into(),
            offset: 1 << 20,
            bytes: 1 << 20,
            source: io::Error::from_raw_os_error(libc::ENOSPC),
        };
        assert_eq!(enospc.reason(), "InsufficientStorage");
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
        assert_eq!(quota.reason(), "InsufficientStorage");
        let eio = StoreError::Io {
            path: "log".into(),
            source: io::Error::from_raw_os_error(libc::EIO),
        };
        assert_eq!(eio.reason(), "StorageError");
    }

    fn set(n: u32, members: impl IntoIterator<Item = u32>) -> ChunkSet {
        let mut s = ChunkSet::new(n);
        for i in members {
            s.insert(i);
        }
        s
    }

    #[test]
    fn chunks_of_a_new_revision_lying_in_verified_bytes_of_unchanged_files_are_carried() {
        // 64 KiB chunks: "big" has chunks 0..3 of its own; "s1", "s2" and
        // "s3" are packed into chunk 3.
        let old = layout(vec![
            entry("big", 3 * 65536, "1"),
            entry("s1", 100, "1"),
            entry("s2", 100, "1"),
            entry("s3", 100, "1"),
        ]);
        assert_eq!(old.chunk_count(), 4);
        // The new listing: s2 changed (other size and ETag).
        let new = layout(vec![
            entry("big", 3 * 65536, "1"),
            entry("s1", 100, "1"),
            entry("s2", 120, "2"),
            entry("s3", 100, "1"),
        ]);
        let carried = [0, 1, 3].map(FileSource::Carried);
        let source = [carried[0], carried[1], FileSource::Missing, carried[2]];
        // Chunks 0 and 2 of "big" and the packed chunk verified before.
        let got = carried_chunks(&old, &set(4, [0, 2, 3]), &new, &source);
        // The packed chunk holds the changed s2: transferred again.
        assert_eq!(got.iter().collect::<Vec<_>>(), [0, 2]);

        // Another chunk size: a chunk of the new layout spans two old ones
        // and is carried only if both were verified.
        let new =
            Arc::new(ChunkLayout::new(vec![entry("big", 3 * 65536, "1")], 128 * 1024).unwrap());
        let one = [FileSource::Carried(0)];
        let got = carried_chunks(&old, &set(4, [0, 2]), &new, &one);
        assert_eq!(got.iter().collect::<Vec<_>>(), [1]);
        let got = carried_chunks(&old, &set(4, [0, 1, 2]), &new, &one);
        assert_eq!(got.iter().collect::<Vec<_>>(), [0, 1]);
        // Files complete on disk count; a chunk of nothing but those is
        // local already and not counted as carried.
        let got = carried_chunks(&old, &set(4, []), &new, &[FileSource::Complete]);
        assert!(got.is_empty());
    }

    #[test]
    fn an_unfinished_revision_hands_its_verified_chunks_of_unchanged_files_to_the_next() {
        as_the_chart_runs_the_agent(|| {
            let tmp = tempfile::tempdir().unwrap();
            let store = NodeStore::open(tmp.path()).unwrap();
            let key = DatasetKey::new("ml", "llama").unwrap();
            let l1 = layout(vec![entry("a", 200_000, "1"), entry("b", 100_000, "1")]);
            let rev1 = store
                .open_revision(&key, l1.clone(), Reuse::default())
                .unwrap();
            // Half of it arrived, then "b" changed at the origin.
            let verified = set(l1.chunk_count(), [0, 1, 3]);
            for i in verified.iter() {
                rev1.write_chunk(i, &vec![i as u8 + 1; l1.chunk_len(i) as usize])
                    .unwrap();
            }
            let l2 = layout(vec![entry("a", 200_000, "1"), entry("b", 100_000, "2")]);
            let unfinished = Reuse {
                published: None,
                unfinished: Some((&rev1, &verified)),
            };
            let rev2 = store.open_revision(&key, l2.clone(), unfinished).unwrap();
            let local: Vec<u32> = (0..l2.chunk_count())
                .filter(|&i| rev2.chunk_is_local(i))
                .collect();
            // a's chunks 0, 1 and 3 (its last, short one); not b's.
            assert_eq!(local, [0, 1, 3]);
            let mut buf = vec![0; l2.chunk_len(1) as usize];
            rev2.read_chunk(1, &mut buf).unwrap();
            assert_eq!(buf, vec![2; buf.len()]);
            // The rest is written as usual, also into the carried file.
            for i in (0..l2.chunk_count()).filter(|&i| !rev2.chunk_is_local(i)) {
                rev2.write_chunk(i, &vec![9; l2.chunk_len(i) as usize])
                    .unwrap();
            }
            store.publish(&rev2).unwrap();
            let a = std::fs::read(store.dataset_path(&key).join("a")).unwrap();
            assert_eq!(&a[..65536], &[1; 65536][..]);
            assert_eq!(&a[2 * 65536..3 * 65536], &[9; 65536][..]);
            assert_eq!(a[3 * 65536], 4);
            // Opened again (after a restart): the same chunks.
            drop(rev2);
            let rev2 = store
                .open_revision(&key, l2.clone(), Reuse::default())
                .unwrap();
            assert!(rev2.is_published());
        });
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
