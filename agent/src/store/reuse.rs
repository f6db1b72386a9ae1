//! Delta updates: what a new revision takes from the revisions the node
//! has (files unchanged since the published one, and bytes verified in an
//! unfinished one), so that only what changed is transferred.

use std::collections::{HashMap, HashSet};
use std::os::fd::AsFd;

use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::sys::stat::fstatat;
use swarmseed_proto::{ChunkLayout, pb};

use super::{RevisionFiles, StoreError};
use crate::board::ChunkSet;
use crate::lock;

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

impl RevisionFiles {
    /// The file of this revision that holds the same origin object as `f`
    /// (same path, size, mode, ETag and version), if any.
    pub(super) fn find_same_object(&self, f: &pb::FileEntry) -> Option<u32> {
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
    pub(super) fn find_unchanged(&self, f: &pb::FileEntry) -> Option<u32> {
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
    pub(super) fn carry_from(
        &self,
        old: &RevisionFiles,
        verified: &ChunkSet,
    ) -> Result<ChunkSet, StoreError> {
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

    /// Creates the revision's directories and hard-links the files that
    /// did not change since `previous`. Other files are created by their
    /// first write ([`Self::file`]), so that a dataset of many small files
    /// starts moving bytes at once rather than after laying out every
    /// file, and [`Self::seal`] creates the empty ones.
    pub(super) fn prepare_files(&self, previous: Option<&RevisionFiles>) -> Result<(), StoreError> {
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::test_support::{as_the_chart_runs_the_agent, entry, layout};
    use crate::store::{DatasetKey, NodeStore};

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
}
