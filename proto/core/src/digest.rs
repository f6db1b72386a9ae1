//! Digests. A chunk digest is plain blake3 over the chunk's bytes. The
//! content digest names a revision's content: the paths, sizes and modes of
//! its files, the chunk size, and every chunk digest. It leaves out where the
//! bytes came from (ETags, versions), so the same content from another
//! bucket has the same digest, and a user may pin it.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

use crate::layout::ChunkLayout;

/// blake3 of one chunk's bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkDigest(pub [u8; 32]);

impl ChunkDigest {
    pub fn of(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }
}

impl From<blake3::Hash> for ChunkDigest {
    fn from(h: blake3::Hash) -> Self {
        Self(*h.as_bytes())
    }
}

impl fmt::Debug for ChunkDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkDigest({})", hex::encode(&self.0[..8]))
    }
}

/// The content digest of a revision, written `blake3:<64 hex digits>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ContentDigest(pub [u8; 32]);

const CONTENT_CONTEXT: &str = "swarmseed.io 2026 content digest v1";

impl ContentDigest {
    /// Computes the content digest of `layout` given every chunk's digest.
    ///
    /// # Panics
    /// If `chunks.len()` differs from the layout's chunk count (a bug in the
    /// caller, never a property of the data).
    pub fn compute(layout: &ChunkLayout, chunks: &[ChunkDigest]) -> Self {
        assert_eq!(chunks.len(), layout.chunks().len(), "one digest per chunk");
        let mut h = blake3::Hasher::new_derive_key(CONTENT_CONTEXT);
        h.update(&layout.chunk_size().to_le_bytes());
        h.update(&(layout.files().len() as u64).to_le_bytes());
        for f in layout.files() {
            h.update(&(f.path.len() as u64).to_le_bytes());
            h.update(f.path.as_bytes());
            h.update(&f.size.to_le_bytes());
            h.update(&crate::layout::published_mode(f.mode).to_le_bytes());
        }
        for c in chunks {
            h.update(&c.0);
        }
        Self(*h.finalize().as_bytes())
    }

    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(Self)
    }
}

impl fmt::Display for ContentDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "blake3:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for ContentDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("digest {0:?} is not of the form blake3:<64 lowercase hex digits>")]
pub struct ParseDigestError(pub String);

impl FromStr for ContentDigest {
    type Err = ParseDigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseDigestError(s.to_owned());
        let hex_part = s.strip_prefix("blake3:").ok_or_else(err)?;
        if hex_part.len() != 64 || hex_part.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(err());
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut out).map_err(|_| err())?;
        Ok(Self(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_digest_round_trips_through_text() {
        let d = ContentDigest([0xab; 32]);
        let s = d.to_string();
        assert_eq!(s, format!("blake3:{}", "ab".repeat(32)));
        assert_eq!(s.parse::<ContentDigest>(), Ok(d));
    }

    #[test]
    fn malformed_digests_are_refused() {
        for s in [
            "",
            "blake3:",
            "sha256:abababababababababababababababababababababababababababababababab",
            "blake3:ABABABABABABABABABABABABABABABABABABABABABABABABABABABABABABABAB",
            "blake3:zz",
        ] {
            let err = s.parse::<ContentDigest>().expect_err(s);
            assert!(err.to_string().contains("blake3:<64"), "{err}");
        }
    }
}
