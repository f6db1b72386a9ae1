//! How a listing is cut into chunks.
//!
//! A chunk is the unit that is fetched, verified, announced and served. The
//! layout is a pure function of the listing and the chunk size, so the
//! operator and every agent derive the same chunks independently.
//!
//! Big files and small files are treated differently (see
//! `docs/architecture.md`, "Chunk layout"):
//!
//! - a file of at least one chunk size is cut into chunks of its own,
//!   aligned to the file's start (like BitTorrent v2), so a change inside a
//!   large file changes only the chunks it touches;
//! - smaller files are packed, whole and in path order, into shared chunks
//!   of at most the chunk size (like BitTorrent v1 pieces), so many small
//!   files do not mean many tiny transfers. A small file never straddles two
//!   chunks.

use std::ops::Range;

use thiserror::Error;

use crate::path::{PathError, validate_listing};

/// One file of a source listing, as the operator lists it and every agent
/// receives it. This is also the protobuf message `FileEntry` of
/// `agent.proto` (the generated gRPC code maps it here): fields and tags
/// must match that file, which the `proto` crate's build checks.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct FileEntry {
    /// Relative, '/'-separated path inside the dataset.
    #[prost(string, tag = "1")]
    pub path: String,
    #[prost(uint64, tag = "2")]
    pub size: u64,
    /// Permission bits of the published file; write bits are always cleared.
    /// 0 means 0444.
    #[prost(uint32, tag = "3")]
    pub mode: u32,
    /// The origin's ETag for this object; ranged reads are pinned to it.
    #[prost(string, tag = "4")]
    pub etag: String,
    /// The origin's object version, where the store has versions.
    #[prost(string, tag = "5")]
    pub version: String,
    /// A digest of the whole file the origin offered when it was listed
    /// (`sha256:<hex>`, `sha512:<hex>` or `md5:<hex>`), checked on every read
    /// whose answer repeats it and on every read of the whole file; empty
    /// when the origin offered none.
    #[prost(string, tag = "6")]
    pub checksum: String,
}

pub const MIN_CHUNK_SIZE: u64 = 64 * 1024;
pub const MAX_CHUNK_SIZE: u64 = 256 * 1024 * 1024;
/// Upper bound on files in one dataset (keeps one listing in memory sane).
pub const MAX_FILES: usize = 4_000_000;
/// Upper bound on the size of a listing as an assignment carries it (the
/// protobuf encoding of its files): 256 MiB, about 2.5 million files whose
/// path and ETag take 100 bytes. The operator holds the listing in memory
/// and sends it to every agent in one message; agents accept assignments of
/// this size and refuse larger ones ([`MAX_ASSIGNMENT_BYTES`]).
pub const MAX_LISTING_BYTES: usize = 256 << 20;
/// Largest assignment message an agent decodes: the listing plus room for
/// the plan (fetchers, ranges, peers).
pub const MAX_ASSIGNMENT_BYTES: usize = MAX_LISTING_BYTES + (16 << 20);

/// The identity of a revision: blake3 over the chunk size and the listing
/// (paths, sizes, modes, ETags, versions). Same listing, same revision.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RevisionId(pub [u8; 32]);

impl RevisionId {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// A short form for directory names and logs (16 hex digits).
    pub fn short(&self) -> String {
        hex::encode(&self.0[..8])
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Self(out))
    }
}

impl std::fmt::Display for RevisionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl std::fmt::Debug for RevisionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RevisionId({})", self.short())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LayoutError {
    #[error(transparent)]
    Path(#[from] PathError),
    #[error(
        "chunk size {0} is not a power of two between {min} and {max} bytes",
        min = MIN_CHUNK_SIZE,
        max = MAX_CHUNK_SIZE
    )]
    ChunkSize(u64),
    #[error("listing has {0} files; at most {max} are supported", max = MAX_FILES)]
    TooManyFiles(usize),
    #[error(
        "listing takes {0} bytes; at most {max} are supported (narrow it with include/exclude)",
        max = MAX_LISTING_BYTES
    )]
    ListingTooLarge(usize),
    #[error("listing needs {0} chunks at this chunk size; choose a larger chunk size")]
    TooManyChunks(u64),
}

/// A run of bytes of one file inside a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Index into [`ChunkLayout::files`].
    pub file: u32,
    pub file_offset: u64,
    pub len: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Length in bytes (at most the chunk size).
    pub len: u64,
    segments: Range<u32>,
}

#[derive(Debug, Clone)]
pub struct ChunkLayout {
    chunk_size: u64,
    files: Vec<FileEntry>,
    chunks: Vec<Chunk>,
    segments: Vec<Segment>,
    revision: RevisionId,
    total_bytes: u64,
}

const REVISION_CONTEXT: &str = "swarmseed.io 2026 revision id v1";

/// Permission bits a published file gets: the listed mode without write
/// bits, readable by everyone; 0 (unknown) becomes 0444.
pub fn published_mode(listed: u32) -> u32 {
    let m = listed & 0o555;
    if m == 0 { 0o444 } else { m | 0o444 }
}

/// The default chunk size for a dataset of `total_bytes`: 1 MiB from 1 GiB
/// to 16 GiB; below, small enough for about 1,024 chunks, down to 256 KiB
/// (256 MiB); above, the smallest power of two that keeps the chunk count
/// at or below 16,384 (100 GiB at 8 MiB), at most 64 MiB.
///
/// A chunk moves whole from hop to hop, so the swarm fills and drains in a
/// few chunk times per hop: small chunks keep that short against the whole
/// transfer where the dataset is small, large ones keep the per-chunk work
/// and bookkeeping low where it is big.
pub fn default_chunk_size(total_bytes: u64) -> u64 {
    const MIN: u64 = 256 << 10;
    const MAX: u64 = 64 << 20;
    let mut size = MIN;
    while size < (1 << 20) && total_bytes.div_ceil(size) > 1024 {
        size <<= 1;
    }
    while size < MAX && total_bytes.div_ceil(size) > 16_384 {
        size <<= 1;
    }
    size
}

impl ChunkLayout {
    /// Validates the listing (see [`crate::path`]) and cuts it into chunks.
    pub fn new(files: Vec<FileEntry>, chunk_size: u64) -> Result<Self, LayoutError> {
        if !chunk_size.is_power_of_two() || !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size)
        {
            return Err(LayoutError::ChunkSize(chunk_size));
        }
        if files.len() > MAX_FILES {
            return Err(LayoutError::TooManyFiles(files.len()));
        }
        let listing_bytes = listing_bytes(&files);
        if listing_bytes > MAX_LISTING_BYTES {
            return Err(LayoutError::ListingTooLarge(listing_bytes));
        }
        validate_listing(files.iter().map(|f| f.path.as_str()))?;

        let mut chunks = Vec::new();
        let mut segments: Vec<Segment> = Vec::new();
        // The chunk being packed with small files: first segment, length.
        let mut pack: Option<(u32, u64)> = None;
        let close = |pack: &mut Option<(u32, u64)>, chunks: &mut Vec<Chunk>, end: u32| {
            if let Some((start, len)) = pack.take() {
                chunks.push(Chunk {
                    len,
                    segments: start..end,
                });
            }
        };
        let mut total_bytes = 0u64;
        for (i, f) in files.iter().enumerate() {
            let file = i as u32;
            total_bytes += f.size;
            if f.size == 0 {
                continue;
            }
            if f.size >= chunk_size {
                close(&mut pack, &mut chunks, segments.len() as u32);
                let mut offset = 0;
                while offset < f.size {
                    let len = chunk_size.min(f.size - offset);
                    let s = segments.len() as u32;
                    segments.push(Segment {
                        file,
                        file_offset: offset,
                        len,
                    });
                    chunks.push(Chunk {
                        len,
                        segments: s..s + 1,
                    });
                    offset += len;
                }
            } else {
                if matches!(pack, Some((_, len)) if len + f.size > chunk_size) {
                    close(&mut pack, &mut chunks, segments.len() as u32);
                }
                let s = segments.len() as u32;
                segments.push(Segment {
                    file,
                    file_offset: 0,
                    len: f.size,
                });
                let (_, len) = pack.get_or_insert((s, 0));
                *len += f.size;
            }
            if chunks.len() as u64 > u64::from(u32::MAX) {
                return Err(LayoutError::TooManyChunks(chunks.len() as u64));
            }
        }
        close(&mut pack, &mut chunks, segments.len() as u32);

        let revision = revision_id(&files, chunk_size);
        Ok(Self {
            chunk_size,
            files,
            chunks,
            segments,
            revision,
            total_bytes,
        })
    }

    pub fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    pub fn files(&self) -> &[FileEntry] {
        &self.files
    }

    pub fn chunks(&self) -> &[Chunk] {
        &self.chunks
    }

    pub fn chunk_count(&self) -> u32 {
        self.chunks.len() as u32
    }

    /// The segments of chunk `index`, in chunk order.
    ///
    /// # Panics
    /// If `index` is out of range.
    pub fn segments(&self, index: u32) -> &[Segment] {
        let r = &self.chunks[index as usize].segments;
        &self.segments[r.start as usize..r.end as usize]
    }

    pub fn chunk_len(&self, index: u32) -> u64 {
        self.chunks[index as usize].len
    }

    pub fn revision(&self) -> RevisionId {
        self.revision
    }

    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Total bytes of the chunks in `range`.
    pub fn bytes_in(&self, range: Range<u32>) -> u64 {
        self.chunks[range.start as usize..range.end as usize]
            .iter()
            .map(|c| c.len)
            .sum()
    }
}

/// The bytes `files` take in an assignment (see [`MAX_LISTING_BYTES`]).
pub fn listing_bytes(files: &[FileEntry]) -> usize {
    use prost::Message;
    // Each entry is a length-delimited field: a tag byte and a length.
    files.iter().map(|f| f.encoded_len() + 1 + 5).sum()
}

fn revision_id(files: &[FileEntry], chunk_size: u64) -> RevisionId {
    let mut h = blake3::Hasher::new_derive_key(REVISION_CONTEXT);
    let field = |h: &mut blake3::Hasher, s: &str| {
        h.update(&(s.len() as u64).to_le_bytes());
        h.update(s.as_bytes());
    };
    h.update(&chunk_size.to_le_bytes());
    h.update(&(files.len() as u64).to_le_bytes());
    for f in files {
        field(&mut h, &f.path);
        h.update(&f.size.to_le_bytes());
        h.update(&f.mode.to_le_bytes());
        field(&mut h, &f.etag);
        field(&mut h, &f.version);
    }
    // Checksums came later: hashed after everything else and only when a
    // listing has one, so the revisions of listings without them keep
    // their ids (every length before is fixed, so this cannot collide).
    if files.iter().any(|f| !f.checksum.is_empty()) {
        h.update(b"checksums");
        for f in files {
            field(&mut h, &f.checksum);
        }
    }
    RevisionId(*h.finalize().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * 1024;
    /// The revision id of the listing in
    /// `revision_ids_of_listings_without_checksums_never_change`, as the
    /// first release computed it.
    const PINNED_REVISION: &str =
        "ab2e050631d47312821bc92e49b4257edea0ac20feb4ca5f193acd52c8473a69";

    fn file(path: &str, size: u64) -> FileEntry {
        FileEntry {
            path: path.into(),
            size,
            ..Default::default()
        }
    }

    fn covered(layout: &ChunkLayout) -> Vec<u64> {
        // Bytes of each file covered by segments, to check every byte is in
        // exactly one chunk.
        let mut per_file = vec![0u64; layout.files().len()];
        for i in 0..layout.chunk_count() {
            let segs = layout.segments(i);
            assert_eq!(segs.iter().map(|s| s.len).sum::<u64>(), layout.chunk_len(i));
            for s in segs {
                assert_eq!(s.file_offset, per_file[s.file as usize], "contiguous");
                per_file[s.file as usize] += s.len;
            }
        }
        per_file
    }

    #[test]
    fn big_files_get_aligned_chunks_and_small_files_are_packed() {
        let files = vec![
            file("a.bin", 2 * MIB + 10),
            file("b/1", 300 * KIB),
            file("b/2", 300 * KIB),
            file("b/3", 300 * KIB),
            file("b/4", 300 * KIB),
            file("c.bin", MIB),
            file("d", 0),
        ];
        let l = ChunkLayout::new(files.clone(), MIB).unwrap();
        let lens: Vec<u64> = l.chunks().iter().map(|c| c.len).collect();
        assert_eq!(lens, vec![MIB, MIB, 10, 900 * KIB, 300 * KIB, MIB]);
        assert_eq!(
            covered(&l),
            files.iter().map(|f| f.size).collect::<Vec<_>>()
        );
        assert_eq!(l.total_bytes(), 2 * MIB + 10 + 1200 * KIB + MIB);
        assert_eq!(l.segments(3).len(), 3, "three small files share a chunk");
    }

    #[test]
    fn a_change_inside_a_big_file_keeps_other_chunks_in_place() {
        let a = ChunkLayout::new(vec![file("a", 10 * MIB), file("b", 5 * MIB)], MIB).unwrap();
        let mut changed = vec![file("a", 10 * MIB), file("b", 5 * MIB)];
        changed[0].etag = "v2".into();
        let b = ChunkLayout::new(changed, MIB).unwrap();
        assert_ne!(a.revision(), b.revision());
        assert_eq!(a.chunks(), b.chunks());
    }

    #[test]
    fn revision_is_a_function_of_listing_and_chunk_size() {
        let l1 = ChunkLayout::new(vec![file("x", 1)], MIB).unwrap();
        let l2 = ChunkLayout::new(vec![file("x", 1)], MIB).unwrap();
        let l3 = ChunkLayout::new(vec![file("x", 1)], 2 * MIB).unwrap();
        assert_eq!(l1.revision(), l2.revision());
        assert_ne!(l1.revision(), l3.revision());
        assert_eq!(
            RevisionId::from_hex(&l1.revision().to_hex()),
            Some(l1.revision())
        );
    }

    #[test]
    fn revision_ids_of_listings_without_checksums_never_change() {
        // Agents compare revision ids across upgrades: a listing must keep
        // its id when fields are added to the data model.
        let mut files = vec![file("a/x.bin", 5), file("b", 0)];
        files[0].etag = "\"e\"".into();
        let l = ChunkLayout::new(files.clone(), MIB).unwrap();
        assert_eq!(l.revision().to_hex(), PINNED_REVISION);
        // A checksum makes another revision: content with another digest
        // under the same ETag is not the same content.
        files[0].checksum = "sha256:00".into();
        let with = ChunkLayout::new(files.clone(), MIB).unwrap();
        assert_ne!(with.revision(), l.revision());
        files[0].checksum = "sha256:01".into();
        assert_ne!(
            ChunkLayout::new(files, MIB).unwrap().revision(),
            with.revision()
        );
    }

    #[test]
    fn bad_chunk_sizes_and_paths_are_refused() {
        assert_eq!(
            ChunkLayout::new(vec![], 3 * MIB).unwrap_err(),
            LayoutError::ChunkSize(3 * MIB)
        );
        let err = ChunkLayout::new(vec![file("../x", 1)], MIB).unwrap_err();
        assert!(err.to_string().contains("\"../x\""), "{err}");
    }

    #[test]
    fn default_chunk_size_scales_with_the_dataset() {
        assert_eq!(default_chunk_size(0), MIB / 4);
        assert_eq!(default_chunk_size(256 * MIB), MIB / 4);
        assert_eq!(default_chunk_size(256 * MIB + 1), MIB / 2);
        assert_eq!(default_chunk_size(512 * MIB), MIB / 2);
        assert_eq!(default_chunk_size(1024 * MIB), MIB);
        assert_eq!(default_chunk_size(16 * 1024 * MIB), MIB);
        assert_eq!(default_chunk_size(100 * 1024 * MIB), 8 * MIB);
        assert_eq!(default_chunk_size(u64::MAX / 2), 64 * MIB);
    }

    #[test]
    fn published_files_are_never_writable() {
        assert_eq!(published_mode(0), 0o444);
        assert_eq!(published_mode(0o644), 0o444);
        assert_eq!(published_mode(0o755), 0o555);
        assert_eq!(published_mode(0o4777), 0o555);
    }
}
