//! Plain HTTP(S) origins: one file, or a directory listed with nginx's JSON
//! autoindex, each file asked for its validators with `HEAD`; requests go
//! through [`super::request`].

use std::ops::Range;

use bytes::Bytes;
use futures::StreamExt;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, Response, StatusCode};
use serde::Deserialize;
use swarmseed_proto::path::PathError;
use swarmseed_proto::pb::{FileEntry, Origin};
use url::Url;

use super::checksum::{self, Checksum};
use super::request::{
    Target, get_body, header_str, header_u64, range_headers, read_ranged, send, status_error,
};
use super::transfer::{Budget, check_etag};
use super::uri::percent_decode;
use super::{OriginError, OriginOptions, PathFilter, Tally, credential};

/// Bound on a directory walk's depth, against servers that loop (the
/// number of entries is bounded by [`Tally`]).
const MAX_DEPTH: usize = 64;

/// One entry of nginx's `autoindex_format json` (other fields, such as
/// `mtime`, are skipped unread).
#[derive(Debug, Deserialize, PartialEq, Eq)]
pub(crate) struct AutoIndexEntry {
    name: String,
    #[serde(rename = "type")]
    kind: EntryKind,
    #[serde(default)]
    size: Option<u64>,
}

#[derive(Debug, Deserialize, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum EntryKind {
    File,
    Directory,
    /// Symlinks nginx could not follow, devices, sockets.
    #[serde(other)]
    Other,
}

/// Parses one directory's nginx JSON listing (pure, for the tests).
pub(crate) fn parse_autoindex(body: &[u8]) -> Result<Vec<AutoIndexEntry>, serde_json::Error> {
    serde_json::from_slice(body)
}

/// The name of an autoindex entry as a path segment, or why it cannot be
/// one. A directory may be written with one trailing `/`; a file may not.
fn entry_name(entry: &AutoIndexEntry) -> Result<&str, &'static str> {
    let name = match entry.kind {
        EntryKind::Directory => entry.name.strip_suffix('/').unwrap_or(&entry.name),
        EntryKind::File | EntryKind::Other => &entry.name,
    };
    if name.contains('/') {
        return Err("a name with '/' in it");
    }
    match swarmseed_proto::path::validate_path(name) {
        Ok(()) => Ok(name),
        Err(PathError::SegmentTooLong(_)) => Err("a name longer than 255 bytes"),
        Err(_) => Err("an empty, '.' or '..' name, or one with a NUL or backslash"),
    }
}

/// Whether reads of a listed HTTP file are pinned only by a weak
/// validator (see [`super::WeakValidators`]): no digest of the content,
/// and a weak ETag, none, or one made of modification time and size.
pub(crate) fn is_weak(file: &FileEntry) -> bool {
    file.size > 0
        && file.checksum.is_empty()
        && (file.etag.is_empty()
            || file.etag.trim_start().starts_with("W/")
            || etag_is_metadata(&file.etag, file.size))
}

/// Whether an ETag is made of file metadata rather than content: two or
/// three hex numbers joined by `-`, one of them the size. nginx sends
/// `"<mtime hex>-<size hex>"`, Apache `"<size hex>-<mtime µs hex>"` (with
/// an inode first under `FileETag All`); both stay the same across a
/// rewrite at the same size within their clock's resolution. (An S3
/// multipart ETag, `"<32 hex>-<parts>"`, is not one: its first part is an
/// MD5.)
pub(crate) fn etag_is_metadata(etag: &str, size: u64) -> bool {
    let tag = etag.trim().trim_start_matches("W/").trim_matches('"');
    let mut parts = 0;
    let mut names_size = false;
    for part in tag.split('-') {
        parts += 1;
        if parts > 3 || part.is_empty() || part.len() > 16 {
            return false;
        }
        match u64::from_str_radix(part, 16) {
            Ok(n) => names_size |= n == size,
            Err(_) => return false,
        }
    }
    parts >= 2 && names_size
}

/// Longest ETag or Last-Modified accepted from a server (a listing keeps
/// one per file).
const MAX_VALIDATOR_LEN: usize = 1024;

#[derive(Debug)]
pub(crate) struct HttpOrigin {
    target: Target,
    base: Url,
    directory: bool,
    /// Name of the one file of a non-directory URI.
    name: String,
}

impl HttpOrigin {
    pub(crate) fn new(
        origin: &Origin,
        options: &OriginOptions,
        base: Url,
        directory: bool,
    ) -> Result<Self, OriginError> {
        let invalid = |reason: String| OriginError::invalid_uri(&origin.uri, reason);
        let name = if directory {
            String::new()
        } else {
            let last = base
                .path_segments()
                .and_then(|mut s| s.next_back())
                .unwrap_or_default();
            percent_decode(last)
                .ok_or_else(|| invalid("the file name is not valid UTF-8".into()))?
        };
        if !directory {
            swarmseed_proto::path::validate_path(&name).map_err(|e| invalid(e.to_string()))?;
        }
        let token = credential(origin, "HTTP_BEARER_TOKEN");
        let target =
            Target::new(options, base.origin(), token).map_err(|e| invalid(e.to_string()))?;
        Ok(Self {
            target,
            base,
            directory,
            name,
        })
    }

    fn file_url(&self, path: &str) -> Result<Url, OriginError> {
        if !self.directory {
            if path != self.name {
                return Err(OriginError::protocol(
                    path,
                    format!("this origin holds only {:?}", self.name),
                ));
            }
            return Ok(self.base.clone());
        }
        let mut url = self.base.clone();
        {
            let mut segments = url
                .path_segments_mut()
                .map_err(|()| OriginError::protocol(path, "URL cannot have a path"))?;
            segments.pop_if_empty();
            for segment in path.split('/') {
                segments.push(segment);
            }
        }
        Ok(url)
    }

    async fn get(
        &self,
        budget: &Budget,
        method: Method,
        url: Url,
        headers: HeaderMap,
        path: &str,
    ) -> Result<Response, OriginError> {
        budget
            .timed(
                path,
                send(&self.target, method, url, &headers, path, |_, _| Ok(())),
            )
            .await
    }

    /// Size and pin of one file, from a HEAD.
    async fn head(
        &self,
        budget: &Budget,
        path: String,
        url: Url,
        listed_size: Option<u64>,
    ) -> Result<FileEntry, OriginError> {
        budget
            .retry(&path, || async {
                let mut response = self
                    .get(budget, Method::HEAD, url.clone(), HeaderMap::new(), &path)
                    .await?;
                let mut size = None;
                if matches!(response.status().as_u16(), 403 | 405 | 501) {
                    // No HEAD here (or a URL presigned for GET only): ask
                    // for the first byte instead and read the size from
                    // Content-Range.
                    let mut probe = HeaderMap::new();
                    probe.insert(header::RANGE, HeaderValue::from_static("bytes=0-0"));
                    probe.insert(
                        header::ACCEPT_ENCODING,
                        HeaderValue::from_static("identity"),
                    );
                    response = self
                        .get(budget, Method::GET, url.clone(), probe, &path)
                        .await?;
                    let total = header_str(response.headers(), "content-range")
                        .and_then(|v| v.rsplit_once('/'))
                        .and_then(|(_, total)| total.trim().parse::<u64>().ok());
                    match response.status() {
                        StatusCode::PARTIAL_CONTENT => size = total,
                        // An empty file has no first byte.
                        StatusCode::RANGE_NOT_SATISFIABLE if total == Some(0) => size = Some(0),
                        _ => {}
                    }
                }
                let status = response.status();
                if !status.is_success() && size.is_none() {
                    return Err(status_error(&path, status, false));
                }
                let headers = response.headers();
                let size = size
                    .or_else(|| header_u64(headers, "content-length"))
                    .or(listed_size)
                    .ok_or_else(|| OriginError::protocol(&path, "no Content-Length"))?;
                let etag = header_str(headers, "etag").unwrap_or_default().to_owned();
                let last_modified = header_str(headers, "last-modified").unwrap_or_default();
                if etag.len() > MAX_VALIDATOR_LEN || last_modified.len() > MAX_VALIDATOR_LEN {
                    return Err(OriginError::protocol(
                        &path,
                        format!("an ETag or Last-Modified longer than {MAX_VALIDATOR_LEN} bytes"),
                    ));
                }
                // A HEAD describes the whole file; the one-byte probe's
                // body is the whole file only when the file is one byte.
                let whole_body = status == StatusCode::OK || size <= 1;
                let checksum = checksum::strongest(headers, whole_body)
                    .map(|c| c.to_listed())
                    .unwrap_or_default();
                // A weak ETag cannot be used with If-Match (RFC 9110 13.1.1):
                // pin such files by modification time instead.
                let version = if etag.is_empty() || etag.starts_with("W/") {
                    last_modified.to_owned()
                } else {
                    String::new()
                };
                // (An empty file is never read: nothing to pin.)
                if etag.is_empty() && version.is_empty() && size > 0 {
                    return Err(OriginError::protocol(
                        &path,
                        "neither ETag nor Last-Modified: reads could not be pinned",
                    ));
                }
                Ok(FileEntry {
                    path: path.clone(),
                    size,
                    mode: 0,
                    etag,
                    version,
                    checksum,
                })
            })
            .await
    }

    pub(crate) async fn list(
        &self,
        uri: &str,
        budget: &Budget,
        filter: &PathFilter,
    ) -> Result<(Vec<FileEntry>, Tally), OriginError> {
        let mut tally = Tally::default();
        if !self.directory {
            tally.listed(uri, 1, 1)?;
            if !filter.accepts(&self.name) {
                return Ok((Vec::new(), tally));
            }
            let file = self
                .head(budget, self.name.clone(), self.base.clone(), None)
                .await?;
            tally.keep(uri, super::store::entry_bytes(&file))?;
            return Ok((vec![file], tally));
        }
        let mut pending = vec![(self.base.clone(), String::new(), 0usize)];
        let mut found: Vec<(String, Url, Option<u64>)> = Vec::new();
        while let Some((dir_url, dir_path, depth)) = pending.pop() {
            let entries = self
                .list_directory(budget, uri, &dir_url, &dir_path)
                .await?;
            let files = entries.iter().filter(|e| e.kind == EntryKind::File).count();
            tally.listed(uri, entries.len() as u64, files as u64)?;
            for entry in entries {
                let path_of = |name: &str| {
                    if dir_path.is_empty() {
                        name.to_owned()
                    } else {
                        format!("{dir_path}/{name}")
                    }
                };
                let name = entry_name(&entry).map_err(|what| {
                    let shown = path_of(&entry.name);
                    OriginError::unusable_name(
                        uri,
                        &shown,
                        format!(
                            "directory {dir_path:?} lists {:?} ({what}), which cannot be a \
                             file or directory name",
                            entry.name
                        ),
                    )
                })?;
                let path = path_of(name);
                let mut url = dir_url.clone();
                if let Ok(mut segments) = url.path_segments_mut() {
                    segments.pop_if_empty().push(name);
                }
                match entry.kind {
                    EntryKind::Directory => {
                        if depth + 1 > MAX_DEPTH {
                            return Err(OriginError::protocol(
                                uri,
                                format!("{path:?} is nested too deep"),
                            ));
                        }
                        if let Ok(mut segments) = url.path_segments_mut() {
                            segments.push("");
                        }
                        pending.push((url, path, depth + 1));
                    }
                    EntryKind::File if filter.accepts(&path) => {
                        tally.keep(uri, path.len())?;
                        found.push((path, url, entry.size));
                    }
                    // Filtered out, or symlinks and devices ("other").
                    EntryKind::File | EntryKind::Other => {}
                }
            }
        }
        let concurrency = budget.options.concurrency.max(1);
        let mut files = Vec::with_capacity(found.len());
        let mut heads = futures::stream::iter(found)
            .map(|(path, url, size)| self.head(budget, path, url, size))
            .buffer_unordered(concurrency);
        while let Some(file) = heads.next().await {
            let file = file?;
            tally.add_bytes(uri, super::store::entry_bytes(&file) - file.path.len())?;
            files.push(file);
        }
        Ok((files, tally))
    }

    async fn list_directory(
        &self,
        budget: &Budget,
        uri: &str,
        url: &Url,
        dir_path: &str,
    ) -> Result<Vec<AutoIndexEntry>, OriginError> {
        let shown = if dir_path.is_empty() { uri } else { dir_path };
        let (body, _) = get_body(budget, &self.target, url, shown).await?;
        parse_autoindex(&body).map_err(|e| {
            OriginError::protocol(
                shown,
                format!("not an nginx JSON autoindex (autoindex_format json): {e}"),
            )
        })
    }

    pub(crate) async fn read_range(
        &self,
        budget: &Budget,
        file: &FileEntry,
        range: Range<u64>,
    ) -> Result<Bytes, OriginError> {
        let path = file.path.as_str();
        let url = self.file_url(path)?;
        let mut headers = range_headers(&range);
        let strong_etag = !file.etag.is_empty() && !file.etag.starts_with("W/");
        if strong_etag {
            if let Ok(value) = HeaderValue::from_str(&file.etag) {
                headers.insert(header::IF_MATCH, value);
            }
        } else if let Ok(value) = HeaderValue::from_str(&file.version) {
            headers.insert(header::IF_UNMODIFIED_SINCE, value);
        }
        let listed = Checksum::from_listed(&file.checksum);
        let whole_file = range.start == 0 && range.end == file.size;
        budget
            .retry(path, || async {
                let response = self
                    .get(budget, Method::GET, url.clone(), headers.clone(), path)
                    .await?;
                // Servers that ignore preconditions still say what they send.
                let answered = response.headers();
                if response.status().is_success() {
                    check_etag(path, header_str(answered, "etag"), &file.etag)?;
                    if !strong_etag
                        && !file.version.is_empty()
                        && header_str(answered, "last-modified").is_some_and(|m| m != file.version)
                    {
                        return Err(OriginError::changed(path));
                    }
                    // A digest of the whole file in the answer must be the
                    // listed one: this catches a rewrite that kept the ETag.
                    let whole_body = whole_file || response.status() == StatusCode::OK;
                    if listed
                        .as_ref()
                        .is_some_and(|c| checksum::contradicts(c, answered, whole_body))
                    {
                        return Err(OriginError::changed(path));
                    }
                }
                read_ranged(budget, response, file, &range, listed.as_ref()).await
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_urls_are_percent_encoded() {
        let origin = Origin {
            uri: "http://h/data/".into(),
            ..Default::default()
        };
        let base = Url::parse(&origin.uri).unwrap();
        let h = HttpOrigin::new(&origin, &OriginOptions::default(), base, true).unwrap();
        assert_eq!(
            h.file_url("a b/c#d.bin").unwrap().as_str(),
            "http://h/data/a%20b/c%23d.bin"
        );
        let single = Origin {
            uri: "http://h/x/model%20v1.bin?sig=1".into(),
            ..Default::default()
        };
        let base = Url::parse(&single.uri).unwrap();
        let h = HttpOrigin::new(&single, &OriginOptions::default(), base, false).unwrap();
        assert_eq!(h.name, "model v1.bin");
        assert_eq!(h.file_url("model v1.bin").unwrap().as_str(), single.uri);
        assert_eq!(h.file_url("other").unwrap_err().label(), "protocol");
    }

    #[test]
    fn metadata_etags_are_recognised() {
        // nginx: mtime-size; Apache: size-mtime(µs), or inode-size-mtime.
        assert!(etag_is_metadata("\"6745a3c0-493e0\"", 300_000));
        assert!(etag_is_metadata("W/\"493e0-62a1b2c3d4e5f\"", 300_000));
        assert!(etag_is_metadata("\"1a2b-493e0-62a1b2c3d4e5f\"", 300_000));
        // Content-derived or opaque: S3 (single and multipart), git ids,
        // a generation counter.
        assert!(!etag_is_metadata("\"5d41402abc4b2a76b9719d911017c592\"", 5));
        assert!(!etag_is_metadata(
            "\"5d41402abc4b2a76b9719d911017c592-3\"",
            3
        ));
        assert!(!etag_is_metadata("\"abc\"", 0xabc));
        assert!(!etag_is_metadata("\"6745a3c0-493e1\"", 300_000));
        let file = |etag: &str, checksum: &str| FileEntry {
            path: "f".into(),
            size: 300_000,
            etag: etag.into(),
            checksum: checksum.into(),
            ..Default::default()
        };
        assert!(is_weak(&file("\"6745a3c0-493e0\"", "")));
        assert!(is_weak(&file("W/\"x\"", "")));
        assert!(is_weak(&file("", "")));
        assert!(!is_weak(&file("\"6745a3c0-493e0\"", "sha256:00")));
        assert!(!is_weak(&file("\"5d41402abc4b2a76b9719d911017c592\"", "")));
    }

    #[test]
    fn autoindex_entries_become_names_or_refusals() {
        let body = br#"[{"name":"d/","type":"directory","mtime":"x"},
            {"name":"f.bin","type":"file","mtime":"x","size":3},
            {"name":"l","type":"other","mtime":"x"}]"#;
        let entries = parse_autoindex(body).unwrap();
        let names: Vec<_> = entries.iter().map(|e| entry_name(e)).collect();
        assert_eq!(names, [Ok("d"), Ok("f.bin"), Ok("l")]);
        assert_eq!(entries[1].size, Some(3));
        let file = |name: &str| AutoIndexEntry {
            name: name.into(),
            kind: EntryKind::File,
            size: None,
        };
        for bad in ["f/", "", ".", "..", "a/b", "a\\b"] {
            assert!(entry_name(&file(bad)).is_err(), "{bad:?}");
        }
        assert!(entry_name(&file(&"n".repeat(256))).is_err());
        assert_eq!(
            entry_name(&file(&"n".repeat(255))),
            Ok("n".repeat(255).as_str())
        );
        assert!(parse_autoindex(b"<html>").is_err());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Arbitrary bytes as a directory listing: entries or an error,
            /// never a panic.
            #[test]
            fn arbitrary_listings_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
                if let Ok(entries) = parse_autoindex(&body) {
                    for e in &entries {
                        let _ = entry_name(e);
                    }
                }
            }

            /// Any name: a segment that passes the path rules, or a refusal.
            #[test]
            fn arbitrary_names_are_judged(name in any::<String>(), directory in any::<bool>()) {
                let entry = AutoIndexEntry {
                    name,
                    kind: if directory { EntryKind::Directory } else { EntryKind::File },
                    size: None,
                };
                if let Ok(segment) = entry_name(&entry) {
                    prop_assert!(!segment.contains('/'));
                    prop_assert_eq!(swarmseed_proto::path::validate_path(segment), Ok(()));
                }
            }

            /// Entries written as nginx writes them are read back.
            #[test]
            fn listings_round_trip(
                entries in proptest::collection::vec(("[^/\\x00]{1,30}", any::<bool>(), any::<u64>()), 0..8)
            ) {
                let json: Vec<_> = entries
                    .iter()
                    .map(|(name, dir, size)| if *dir {
                        serde_json::json!({"name": name, "type": "directory", "mtime": "Wed, 25 Nov 2026 06:00:00 GMT"})
                    } else {
                        serde_json::json!({"name": name, "type": "file", "mtime": "Wed, 25 Nov 2026 06:00:00 GMT", "size": size})
                    })
                    .collect();
                let body = serde_json::to_vec(&json).unwrap();
                let parsed = parse_autoindex(&body).unwrap();
                prop_assert_eq!(parsed.len(), entries.len());
                for (p, (name, dir, size)) in parsed.iter().zip(&entries) {
                    prop_assert_eq!(&p.name, name);
                    prop_assert_eq!(p.kind, if *dir { EntryKind::Directory } else { EntryKind::File });
                    prop_assert_eq!(p.size, (!dir).then_some(*size));
                }
            }

            /// ETags of every form: a verdict, never a panic; nginx's form
            /// of the file's own size is always metadata.
            #[test]
            fn etags_are_classified(etag in any::<String>(), size in any::<u64>(), mtime in any::<u32>()) {
                let _ = etag_is_metadata(&etag, size);
                let nginx = format!("\"{mtime:x}-{size:x}\"");
                prop_assert!(etag_is_metadata(&nginx, size));
            }
        }
    }
}
