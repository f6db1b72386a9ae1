//! Listed paths come from an origin we do not control. Before any of them
//! reaches a disk it must be a plain relative path made of normal segments.
//! (That no segment passes through a symlink is checked by the agent when it
//! opens files: that is a property of the disk, not of the string.)

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
            | Self::Duplicate(p)
            | Self::FileIsDirectory(p)
            | Self::Unsorted(p) => p,
        }
    }
}

/// Longest accepted path (Linux PATH_MAX less room for the store prefix).
pub const MAX_PATH_LEN: usize = 3072;

/// Checks one listed path: relative, '/'-separated, no empty, `.` or `..`
/// segments, no NUL and no backslash.
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
}
