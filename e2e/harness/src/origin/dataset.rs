//! Deterministic test datasets and tree comparison.
//!
//! A dataset is a few big files plus many small ones. Every file's content
//! is the BLAKE3 extendable output keyed by the seed over the file's path:
//! the same (seed, spec) always gives the same bytes, different files never
//! share content (so no chunk deduplication flatters a benchmark), and the
//! data is incompressible.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::rng::SplitMix64;

/// What to generate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetSpec {
    pub seed: u64,
    /// Files under `big/`.
    pub big_files: usize,
    pub big_file_size: u64,
    /// Files under `small/dNNN/`.
    pub small_files: usize,
    /// Small file sizes are drawn uniformly from this inclusive range.
    pub small_file_min: u64,
    pub small_file_max: u64,
    /// How many directories the small files are spread over.
    pub small_dirs: usize,
}

impl DatasetSpec {
    /// A few MiB: for tests that must be quick.
    pub fn tiny(seed: u64) -> Self {
        Self {
            seed,
            big_files: 2,
            big_file_size: 3 * 1024 * 1024 + 123,
            small_files: 40,
            small_file_min: 0,
            small_file_max: 64 * 1024,
            small_dirs: 4,
        }
    }

    /// Total bytes the spec produces.
    pub fn total_bytes(&self) -> u64 {
        plan(self).iter().map(|f| f.size).sum()
    }
}

/// One file of a dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedFile {
    /// Relative, `/`-separated.
    pub path: String,
    pub size: u64,
}

/// The files a spec produces, in path order (pure; no I/O).
pub fn plan(spec: &DatasetSpec) -> Vec<PlannedFile> {
    let mut files = Vec::with_capacity(spec.big_files + spec.small_files);
    for i in 0..spec.big_files {
        files.push(PlannedFile {
            path: format!("big/shard-{i:05}.bin"),
            size: spec.big_file_size,
        });
    }
    let mut rng = SplitMix64::new(spec.seed ^ 0x5eed_5eed_5eed_5eed);
    let (lo, hi) = (
        spec.small_file_min.min(spec.small_file_max),
        spec.small_file_min.max(spec.small_file_max),
    );
    let dirs = spec.small_dirs.max(1);
    for i in 0..spec.small_files {
        let size = lo + rng.next_u64() % (hi - lo + 1);
        files.push(PlannedFile {
            path: format!("small/d{:03}/f{i:06}.bin", i % dirs),
            size,
        });
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    files
}

fn content_key(seed: u64) -> [u8; 32] {
    blake3::derive_key("swarmseed e2e dataset v1", &seed.to_le_bytes())
}

/// The deterministic content of `path` in a dataset with `seed`.
pub fn file_content(seed: u64, path: &str) -> impl Read {
    let mut hasher = blake3::Hasher::new_keyed(&content_key(seed));
    hasher.update(path.as_bytes());
    hasher.finalize_xof()
}

/// Writes the dataset under `dir` (created if missing) and flushes it to
/// disk; returns its files.
pub fn generate_dataset(dir: &Path, spec: &DatasetSpec) -> Result<Vec<PlannedFile>> {
    let files = plan(spec);
    std::fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
    let mut buf = vec![0u8; 1024 * 1024];
    for f in &files {
        let path = dir.join(&f.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::io("create directory", parent, e))?;
        }
        let mut out = File::create(&path).map_err(|e| Error::io("create file", &path, e))?;
        let mut content = file_content(spec.seed, &f.path);
        let mut left = f.size;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            content
                .read_exact(&mut buf[..n])
                .map_err(|e| Error::io("generate content", &path, e))?;
            out.write_all(&buf[..n])
                .map_err(|e| Error::io("write file", &path, e))?;
            left -= n as u64;
        }
    }
    // On disk before anything is measured, in one flush of the filesystem
    // rather than a journal commit per file.
    let root = File::open(dir).map_err(|e| Error::io("open", dir, e))?;
    nix::unistd::syncfs(&root).map_err(|e| Error::io("sync", dir, e.into()))?;
    Ok(files)
}

/// Size and BLAKE3 of one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    pub size: u64,
    pub blake3: String,
}

/// Every regular file under a directory (symlinks followed), keyed by its
/// relative `/`-separated path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeDigest {
    pub files: BTreeMap<String, FileDigest>,
}

impl TreeDigest {
    /// One digest over all paths, sizes and contents.
    pub fn root(&self) -> String {
        let mut h = blake3::Hasher::new();
        for (path, d) in &self.files {
            h.update(path.as_bytes());
            h.update(&[0]);
            h.update(&d.size.to_le_bytes());
            h.update(d.blake3.as_bytes());
        }
        h.finalize().to_hex().to_string()
    }

    pub fn total_bytes(&self) -> u64 {
        self.files.values().map(|d| d.size).sum()
    }
}

/// Hashes every file under `dir` (following symlinks, including the root
/// itself, so a published revision symlink can be passed directly).
pub fn tree_digest(dir: &Path) -> Result<TreeDigest> {
    let mut digest = TreeDigest::default();
    walk(dir, "", 0, &mut digest)?;
    Ok(digest)
}

fn walk(dir: &Path, prefix: &str, depth: usize, out: &mut TreeDigest) -> Result<()> {
    // Guards against symlink loops.
    if depth > 64 {
        return Err(Error::Invalid(format!(
            "{} nests deeper than 64 levels",
            dir.display()
        )));
    }
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| Error::io("read directory", dir, e))?
        .collect::<std::io::Result<_>>()
        .map_err(|e| Error::io("read directory", dir, e))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let path = entry.path();
        let meta = std::fs::metadata(&path).map_err(|e| Error::io("stat", &path, e))?;
        if meta.is_dir() {
            walk(&path, &rel, depth + 1, out)?;
        } else if meta.is_file() {
            let mut h = blake3::Hasher::new();
            h.update_reader(File::open(&path).map_err(|e| Error::io("open", &path, e))?)
                .map_err(|e| Error::io("read", &path, e))?;
            out.files.insert(
                rel,
                FileDigest {
                    size: meta.len(),
                    blake3: h.finalize().to_hex().to_string(),
                },
            );
        }
    }
    Ok(())
}

/// How two trees differ.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TreeDiff {
    /// In the expected tree only.
    pub missing: Vec<String>,
    /// In the actual tree only.
    pub extra: Vec<String>,
    /// In both, with different size or content.
    pub different: Vec<String>,
}

impl TreeDiff {
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty() && self.different.is_empty()
    }
}

impl std::fmt::Display for TreeDiff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (label, list) in [
            ("missing", &self.missing),
            ("extra", &self.extra),
            ("different", &self.different),
        ] {
            if list.is_empty() {
                continue;
            }
            write!(f, "{} {label}:", list.len())?;
            for p in list.iter().take(20) {
                write!(f, " {p}")?;
            }
            if list.len() > 20 {
                write!(f, " ...")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// Compares two digests.
pub fn diff_digests(expected: &TreeDigest, actual: &TreeDigest) -> TreeDiff {
    let mut diff = TreeDiff::default();
    for (path, d) in &expected.files {
        match actual.files.get(path) {
            None => diff.missing.push(path.clone()),
            Some(a) if a != d => diff.different.push(path.clone()),
            Some(_) => {}
        }
    }
    diff.extra = actual
        .files
        .keys()
        .filter(|p| !expected.files.contains_key(*p))
        .cloned()
        .collect();
    diff
}

/// Compares two directories file by file.
pub fn compare_trees(expected: &Path, actual: &Path) -> Result<TreeDiff> {
    Ok(diff_digests(&tree_digest(expected)?, &tree_digest(actual)?))
}

/// Panics, listing missing, extra and different files, unless both trees
/// hold exactly the same files with the same bytes.
pub fn assert_trees_identical(expected: &Path, actual: &Path) {
    match compare_trees(expected, actual) {
        Ok(diff) if diff.is_empty() => {}
        Ok(diff) => panic!(
            "{} and {} differ:\n{diff}",
            expected.display(),
            actual.display()
        ),
        Err(e) => panic!(
            "comparing {} and {}: {e}",
            expected.display(),
            actual.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_seed_dependent() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let c = tempfile::tempdir().unwrap();
        let spec = DatasetSpec::tiny(7);
        let files = generate_dataset(a.path(), &spec).unwrap();
        generate_dataset(b.path(), &spec).unwrap();
        generate_dataset(c.path(), &DatasetSpec::tiny(8)).unwrap();
        assert_eq!(files.len(), 42);
        assert_eq!(
            files.iter().map(|f| f.size).sum::<u64>(),
            spec.total_bytes()
        );
        let (da, db, dc) = (
            tree_digest(a.path()).unwrap(),
            tree_digest(b.path()).unwrap(),
            tree_digest(c.path()).unwrap(),
        );
        assert_eq!(da.total_bytes(), spec.total_bytes());
        assert_eq!(da.root(), db.root());
        assert_ne!(da.root(), dc.root());
        assert_trees_identical(a.path(), b.path());
        // Different files have different content.
        let big0 = std::fs::read(a.path().join("big/shard-00000.bin")).unwrap();
        let big1 = std::fs::read(a.path().join("big/shard-00001.bin")).unwrap();
        assert_eq!(big0.len() as u64, spec.big_file_size);
        assert_ne!(big0, big1);
    }

    #[test]
    fn diff_lists_missing_extra_and_different_files() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let spec = DatasetSpec {
            seed: 1,
            big_files: 1,
            big_file_size: 1000,
            small_files: 3,
            small_file_min: 10,
            small_file_max: 20,
            small_dirs: 1,
        };
        generate_dataset(a.path(), &spec).unwrap();
        generate_dataset(b.path(), &spec).unwrap();
        std::fs::remove_file(b.path().join("small/d000/f000000.bin")).unwrap();
        std::fs::write(b.path().join("stray.txt"), b"x").unwrap();
        let mut big = std::fs::read(b.path().join("big/shard-00000.bin")).unwrap();
        big[500] ^= 1;
        std::fs::write(b.path().join("big/shard-00000.bin"), big).unwrap();
        let diff = compare_trees(a.path(), b.path()).unwrap();
        assert_eq!(diff.missing, vec!["small/d000/f000000.bin"]);
        assert_eq!(diff.extra, vec!["stray.txt"]);
        assert_eq!(diff.different, vec!["big/shard-00000.bin"]);
        let msg = std::panic::catch_unwind(|| assert_trees_identical(a.path(), b.path()))
            .unwrap_err()
            .downcast::<String>()
            .unwrap();
        assert!(msg.contains("1 missing: small/d000/f000000.bin"), "{msg}");
    }
}
