//! Chunk buffers in memory: block-aligned buffers that are reused rather
//! than freed ([`BufferPool`]), and the chunks verified last, kept to be
//! served to peers from memory ([`RecentChunks`]).
//!
//! Together they keep a transfer's bytes out of the page cache: a verified
//! chunk is written to its file with `O_DIRECT` straight from its aligned
//! buffer (see [`crate::store::RevisionFiles::write_chunk`]), and the
//! peers that ask for it soon after, as a swarm does, get it from here. On
//! a node this spares the page cache of the jobs running there a dataset
//! of hundreds of GiB; on virtual machines whose host takes freed memory
//! back, it spares the cost of faulting in a new page for every byte.

use crate::lock;
use std::collections::{HashMap, VecDeque};
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};

/// Alignment of a buffer's first byte: what `O_DIRECT` needs of memory on
/// every common block device (logical blocks of 512 B or 4 KiB).
pub const BLOCK: usize = 4096;

/// A byte buffer whose first byte is [`BLOCK`]-aligned, of a fixed
/// capacity (never reallocated).
pub struct ChunkBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl ChunkBuf {
    pub fn with_capacity(capacity: usize) -> Self {
        let raw = vec![0u8; capacity + BLOCK];
        let start = raw.as_ptr().align_offset(BLOCK);
        Self { raw, start, len: 0 }
    }

    pub fn capacity(&self) -> usize {
        self.raw.len() - self.start
    }

    /// Sets the length (the bytes keep whatever they held).
    ///
    /// # Panics
    /// If `len` exceeds the capacity.
    pub fn set_len(&mut self, len: usize) {
        assert!(
            len <= self.capacity(),
            "{len} bytes in a buffer of {}",
            self.capacity()
        );
        self.len = len;
    }

    /// Appends `bytes`.
    ///
    /// # Panics
    /// If they do not fit.
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        let at = self.len;
        self.set_len(at + bytes.len());
        self[at..].copy_from_slice(bytes);
    }
}

impl Deref for ChunkBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }
}

impl DerefMut for ChunkBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }
}

impl std::fmt::Debug for ChunkBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChunkBuf({} of {} bytes)", self.len, self.capacity())
    }
}

/// Buffers of one chunk size, handed back when done with, so that a
/// transfer touches the same memory again instead of new pages.
#[derive(Debug)]
pub struct BufferPool {
    chunk_size: usize,
    max_idle: usize,
    idle: Mutex<Vec<ChunkBuf>>,
}

impl BufferPool {
    /// A pool of `chunk_size` buffers that keeps at most `max_idle` unused.
    pub fn new(chunk_size: usize, max_idle: usize) -> Self {
        Self {
            chunk_size,
            max_idle,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// A buffer of `len` bytes (at most the chunk size), contents
    /// unspecified.
    pub fn take(&self, len: usize) -> ChunkBuf {
        let mut buf = lock(&self.idle)
            .pop()
            .unwrap_or_else(|| ChunkBuf::with_capacity(self.chunk_size));
        buf.set_len(len);
        buf
    }

    /// Frees the idle buffers.
    pub fn clear(&self) {
        lock(&self.idle).clear();
    }

    pub fn give(&self, buf: ChunkBuf) {
        let mut idle = lock(&self.idle);
        if idle.len() < self.max_idle && buf.capacity() >= self.chunk_size {
            idle.push(buf);
        }
    }
}

/// The chunks verified last, up to a byte budget, oldest evicted first.
#[derive(Debug)]
pub struct RecentChunks {
    budget: u64,
    inner: Mutex<Recent>,
}

#[derive(Debug, Default)]
struct Recent {
    chunks: HashMap<u32, Arc<ChunkBuf>>,
    order: VecDeque<u32>,
    bytes: u64,
}

impl RecentChunks {
    pub fn new(budget: u64) -> Self {
        Self {
            budget,
            inner: Mutex::default(),
        }
    }

    /// Keeps chunk `index`; returns the buffers it pushed out that nobody
    /// else holds (for reuse). With no budget, keeps nothing.
    pub fn insert(&self, index: u32, buf: ChunkBuf) -> Vec<ChunkBuf> {
        let mut evicted = Vec::new();
        if self.budget == 0 {
            evicted.push(buf);
            return evicted;
        }
        let mut r = lock(&self.inner);
        r.bytes += buf.len() as u64;
        if let Some(old) = r.chunks.insert(index, Arc::new(buf)) {
            r.bytes -= old.len() as u64;
            r.order.retain(|&i| i != index);
            evicted.extend(Arc::into_inner(old));
        }
        r.order.push_back(index);
        while r.bytes > self.budget
            && r.order.len() > 1
            && let Some(oldest) = r.order.pop_front()
            && let Some(old) = r.chunks.remove(&oldest)
        {
            r.bytes -= old.len() as u64;
            // Still being sent to a peer: freed when that send ends.
            evicted.extend(Arc::into_inner(old));
        }
        evicted
    }

    /// Drops every chunk kept.
    pub fn clear(&self) {
        *lock(&self.inner) = Recent::default();
    }

    pub fn get(&self, index: u32) -> Option<Arc<ChunkBuf>> {
        lock(&self.inner).chunks.get(&index).cloned()
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        lock(&self.inner).bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_block_aligned_and_reused() {
        let pool = BufferPool::new(3 * BLOCK + 10, 1);
        let mut a = pool.take(100);
        assert_eq!(a.as_ptr() as usize % BLOCK, 0);
        assert_eq!(a.len(), 100);
        a[0] = 7;
        let at = a.as_ptr();
        pool.give(a);
        let b = pool.take(3 * BLOCK + 10);
        assert_eq!(b.as_ptr(), at, "the idle buffer comes back");
        assert_eq!(b.len(), 3 * BLOCK + 10);
        // Beyond max_idle, buffers are dropped.
        pool.give(b);
        pool.give(ChunkBuf::with_capacity(3 * BLOCK + 10));
        assert_eq!(lock(&pool.idle).len(), 1);

        let mut c = ChunkBuf::with_capacity(8);
        c.extend_from_slice(b"abc");
        c.extend_from_slice(b"de");
        assert_eq!(&c[..], b"abcde");
    }

    #[test]
    fn recent_chunks_keep_the_newest_within_the_budget() {
        let recent = RecentChunks::new(2 * BLOCK as u64);
        let chunk = |fill: u8| {
            let mut b = ChunkBuf::with_capacity(BLOCK);
            b.set_len(BLOCK);
            b.fill(fill);
            b
        };
        assert!(recent.insert(1, chunk(1)).is_empty());
        assert!(recent.insert(2, chunk(2)).is_empty());
        // Chunk 1 is being served while chunk 3 pushes it out: its buffer
        // is not handed back for reuse.
        let serving = recent.get(1).unwrap();
        assert!(recent.insert(3, chunk(3)).is_empty());
        assert_eq!(serving[0], 1);
        assert!(recent.get(1).is_none());
        // Chunk 2 is free to reuse when chunk 4 pushes it out.
        let evicted = recent.insert(4, chunk(4));
        assert_eq!(evicted.len(), 1);
        assert_eq!(evicted[0][0], 2);
        assert_eq!(
            (recent.get(3).unwrap()[0], recent.get(4).unwrap()[0]),
            (3, 4)
        );
        assert_eq!(recent.bytes(), 2 * BLOCK as u64);
        // No budget: nothing kept.
        let none = RecentChunks::new(0);
        assert_eq!(none.insert(1, chunk(1)).len(), 1);
        assert!(none.get(1).is_none());
    }
}
