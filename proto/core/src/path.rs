//! Listed paths come from an origin we do not control. Before any of them
//! reaches a disk it must be a plain relative path made of normal segments,
//! each a name the filesystem can hold. (That no segment passes through a
//! symlink is checked by the agent when it opens files: that is a property
//! of the disk, not of the string.)
//!
//! This module is the one place for these rules: the operator checks a
//! listing with them, and every agent checks its assignment again.

use thiserror::Error;

/// Why a listed path was refused. The message names the path.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PathError {
    #[error("path {0:?} is empty")]
    Empty(String),
    #[error("path {0:?} is absolute")]
    Absolute(String),
    #[error("path {0:?} contains a NUL byte")]
    Nul(String),
    #[error("path {0:?} contains a backslash")]
    Backslash(String),
    #[error("path {0:?} has an empty segment")]
    EmptySegment(String),
    #[error("path {0:?} has a '.' or '..' segment")]
    DotSegment(String),
    #[error("path {0:?} is longer than {max} bytes", max = MAX_PATH_LEN)]
    TooLong(String),
    #[error(
        "path {0:?} has a segment longer than {max} bytes (a file or directory name the filesystem cannot hold)",
        max = MAX_SEGMENT_LEN
    )]
    SegmentTooLong(String),
    #[error("path {0:?} is listed twice")]
    Duplicate(String),
    #[error("path {0:?} is listed both as a file and as a directory")]
    FileIsDirectory(String),
    #[error("path {0:?} is out of order: a listing is sorted by path")]
    Unsorted(String),
}

impl PathError {
    /// The offending path.
    pub fn path(&self) -> &str {
        match self {
            Self::Empty(p)
            | Self::Absolute(p)
            | Self::Nul(p)
            | Self::Backslash(p)
            | Self::EmptySegment(p)
            | Self::DotSegment(p)
            | Self::TooLong(p)
            | Self::SegmentTooLong(p)
            | Self::Duplicate(p)
            | Self::FileIsDirectory(p)
            | Self::Unsorted(p) => p,
        }
    }
}

/// Longest accepted path, in bytes: Linux's PATH_MAX (4096, with the
/// terminating NUL) less 1 KiB for the store's prefix in front of it
/// (`<root>/revisions/<namespace>/<name>/<revision>/`), so that the whole
/// path of a published file stays openable by programs that use it.
pub const MAX_PATH_LEN: usize = 3072;

/// Longest accepted segment (file or directory name), in bytes: NAME_MAX of
/// Linux filesystems (ext4, xfs, btrfs, tmpfs). A longer name would pass
/// every other check and fail only when a node creates the file.
pub const MAX_SEGMENT_LEN: usize = 255;

/// Checks one listed path: relative, '/'-separated, no empty, `.` or `..`
/// segments, no segment longer than [`MAX_SEGMENT_LEN`] bytes, no NUL and
/// no backslash, at most [`MAX_PATH_LEN`] bytes.
pub fn validate_path(path: &str) -> Result<(), PathError> {
    let owned = || path.to_owned();
    if path.is_empty() {
        return Err(PathError::Empty(owned()));
    }
    if path.starts_with('/') {
        return Err(PathError::Absolute(owned()));
    }
    if path.contains('\0') {
        return Err(PathError::Nul(owned()));
    }
    if path.contains('\\') {
        return Err(PathError::Backslash(owned()));
    }
    if path.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong(owned()));
    }
    for segment in path.split('/') {
        match segment {
            "" => return Err(PathError::EmptySegment(owned())),
            "." | ".." => return Err(PathError::DotSegment(owned())),
            s if s.len() > MAX_SEGMENT_LEN => return Err(PathError::SegmentTooLong(owned())),
            _ => {}
        }
    }
    Ok(())
}

/// Checks a whole listing: every path valid, listed once, in ascending byte
/// order, and no file listed where another file needs a directory.
pub fn validate_listing<'a>(paths: impl IntoIterator<Item = &'a str>) -> Result<(), PathError> {
    let mut files = std::collections::HashSet::new();
    let mut previous: Option<&str> = None;
    for path in paths {
        validate_path(path)?;
        if let Some(prev) = previous {
            if prev == path {
                return Err(PathError::Duplicate(path.to_owned()));
            }
            if prev > path {
                return Err(PathError::Unsorted(path.to_owned()));
            }
        }
        files.insert(path);
        previous = Some(path);
    }
    for path in &files {
        for (i, _) in path.match_indices('/') {
            if files.contains(&path[..i]) {
                return Err(PathError::FileIsDirectory(path[..i].to_owned()));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_relative_paths() {
        for p in [
            "a",
            "a/b",
            "model-00001-of-00002.safetensors",
            "x/.hidden",
            "a/b..c",
        ] {
            assert_eq!(validate_path(p), Ok(()), "{p}");
        }
    }

    #[test]
    fn refuses_every_unsafe_form_and_names_it() {
        let cases = [
            ("", "is empty"),
            ("/etc/passwd", "is absolute"),
            ("a/../../etc", "'.' or '..'"),
            ("..", "'.' or '..'"),
            ("./a", "'.' or '..'"),
            ("a/./b", "'.' or '..'"),
            ("a//b", "empty segment"),
            ("a/", "empty segment"),
            ("a\0b", "NUL"),
            ("a\\b", "backslash"),
        ];
        for (p, what) in cases {
            let err = validate_path(p).expect_err(p);
            let msg = err.to_string();
            assert!(msg.contains(what), "{p:?}: {msg}");
            assert!(
                msg.contains(&format!("{p:?}")),
                "message names the path: {msg}"
            );
            assert_eq!(err.path(), p);
        }
    }

    #[test]
    fn segments_longer_than_name_max_are_refused() {
        let longest = "n".repeat(MAX_SEGMENT_LEN);
        assert_eq!(validate_path(&longest), Ok(()));
        assert_eq!(validate_path(&format!("dir/{longest}")), Ok(()));
        let over = format!("dir/{}.bin", "n".repeat(MAX_SEGMENT_LEN - 3));
        let err = validate_path(&over).unwrap_err();
        assert_eq!(err, PathError::SegmentTooLong(over.clone()));
        assert!(err.to_string().contains("255 bytes"), "{err}");
        assert_eq!(err.path(), over);
        // Bytes, not characters: 128 two-byte characters are 256 bytes.
        assert!(validate_path(&"é".repeat(128)).is_err());
        assert_eq!(validate_path(&"é".repeat(127)), Ok(()));
        // Many short segments may make a long path, up to the bound.
        let deep = ["d"; MAX_PATH_LEN / 2].join("/");
        assert_eq!(validate_path(&deep), Ok(()));
        assert!(matches!(
            validate_path(&format!("{deep}/xx")),
            Err(PathError::TooLong(_))
        ));
    }

    #[test]
    fn listing_rejects_duplicates_and_file_directory_clashes() {
        assert_eq!(validate_listing(["a", "b", "c/d"]), Ok(()));
        assert_eq!(
            validate_listing(["a", "a"]),
            Err(PathError::Duplicate("a".into()))
        );
        assert_eq!(
            validate_listing(["a", "a-x", "a/b"]),
            Err(PathError::FileIsDirectory("a".into()))
        );
        assert_eq!(
            validate_listing(["b", "a"]),
            Err(PathError::Unsorted("a".into()))
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// One segment the rules accept: printable, no `/`, not `.`/`..`.
        fn segment() -> impl Strategy<Value = String> {
            "[^/\\\\\\x00]{1,40}".prop_filter("dot segments", |s| s != "." && s != "..")
        }

        fn valid_path() -> impl Strategy<Value = String> {
            proptest::collection::vec(segment(), 1..6).prop_map(|v| v.join("/"))
        }

        proptest! {
            /// Any string: an answer, never a panic; and what is accepted
            /// obeys every rule.
            #[test]
            fn arbitrary_strings_are_judged_without_panicking(path in any::<String>()) {
                if validate_path(&path).is_ok() {
                    prop_assert!(!path.is_empty() && path.len() <= MAX_PATH_LEN);
                    prop_assert!(!path.contains(['\\', '\0']));
                    for segment in path.split('/') {
                        prop_assert!(!segment.is_empty() && segment != "." && segment != "..");
                        prop_assert!(segment.len() <= MAX_SEGMENT_LEN);
                    }
                }
            }

            /// Paths made of valid segments are accepted as they are: the
            /// path a listing names is the path on disk.
            #[test]
            fn valid_paths_are_accepted_and_round_trip(path in valid_path()) {
                prop_assert_eq!(validate_path(&path), Ok(()));
                let segments: Vec<&str> = path.split('/').collect();
                prop_assert_eq!(segments.join("/"), path.clone());
                prop_assert!(!path.starts_with('/') && !path.ends_with('/'));
            }

            /// A leading or trailing `/`, or an empty segment, is refused
            /// (never stripped) and the error names the path as given.
            #[test]
            fn slashes_are_never_stripped(path in valid_path(), at in 0usize..3) {
                let bad = match at {
                    0 => format!("/{path}"),
                    1 => format!("{path}/"),
                    _ => format!("{path}//x"),
                };
                let err = validate_path(&bad).unwrap_err();
                prop_assert_eq!(err.path(), bad.as_str());
            }

            /// Whole listings: never a panic; an accepted one is sorted,
            /// unique, and has no file where a directory is needed.
            #[test]
            fn arbitrary_listings_are_judged_without_panicking(
                paths in proptest::collection::vec("[a-c/]{0,6}", 0..12)
            ) {
                if validate_listing(paths.iter().map(String::as_str)).is_ok() {
                    for pair in paths.windows(2) {
                        prop_assert!(pair[0] < pair[1]);
                    }
                    for p in &paths {
                        for q in &paths {
                            let dir = format!("{p}/");
                            prop_assert!(!q.starts_with(&dir));
                        }
                    }
                }
            }
        }
    }
}
