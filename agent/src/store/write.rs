//! Writing verified chunks into the files of a revision: big aligned
//! segments with `O_DIRECT`, the rest through the page cache with a
//! write-behind hint.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::revision::Access;
use super::{RevisionFiles, StoreError};
use crate::lock;

/// Whether big chunk writes bypass the page cache (`O_DIRECT`): on unless
/// turned off, and off for good once the filesystem refuses it.
#[derive(Debug)]
pub(super) struct DirectIo(pub(super) AtomicBool);

impl DirectIo {
    pub(super) fn enabled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    pub(super) fn refused(&self, e: &io::Error) {
        if self.0.swap(false, Ordering::Relaxed) {
            tracing::info!(error = %e, "the store's filesystem refuses O_DIRECT; writing through the page cache");
        }
    }
}

/// Segments at least this long, at a block-aligned offset and in
/// block-aligned memory, are written with `O_DIRECT`; shorter ones go
/// through the page cache, where the write-behind thread batches them.
const DIRECT_MIN: u64 = 256 * 1024;

impl RevisionFiles {
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
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::OpenOptionsExt;
    use std::path::Path;

    use swarmseed_proto::ChunkLayout;

    use super::*;
    use crate::store::test_support::{as_the_chart_runs_the_agent, entry};
    use crate::store::{DatasetKey, NodeStore, Reuse};

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
}
