//! Hugging Face Hub over its HTTP API, as `huggingface_hub` uses it:
//!
//! - revision → commit: `GET {ep}/api/{models|datasets|spaces}/{repo}/revision/{rev}` → `{"sha": ..}`
//! - listing: `GET {ep}/api/{kind}/{repo}/tree/{sha}[/{dir}]?recursive=true&expand=false`,
//!   a JSON array of `{"type","path","size","oid","lfs":{"oid","size"}}`,
//!   paginated by a `Link: <..>; rel="next"` header
//! - reads: `GET {ep}/[datasets/|spaces/]{repo}/resolve/{sha}/{path}` with
//!   `Range`; LFS files redirect to a CDN, which gets the `Range` but not
//!   the token.
//!
//! Reads are pinned by the commit sha in the URL; the Hub's first answer
//! must also name the listed commit (`X-Repo-Commit`) and blob
//! (`X-Linked-Etag`, or `ETag` for files stored in git).

use std::ops::Range;
use std::sync::atomic::{AtomicU8, Ordering};

use bytes::Bytes;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use swarmseed_proto::pb::{FileEntry, Origin};
use tokio::sync::OnceCell;
use url::Url;

use super::checksum::{Algorithm, Checksum};
use super::request::{Target, get_body, get_json, header_str, range_headers, read_ranged, send};
use super::transfer::{Budget, check_etag, normalize_etag};
use super::{HfKind, OriginError, OriginOptions, PathFilter, Tally, credential};

const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
const UNEXPECTED: &str = "unexpected Hub API answer";
/// Bound on tree pages (the Hub sends about a thousand entries a page).
const MAX_PAGES: usize = 100_000;

#[derive(Debug, Deserialize)]
struct RevisionInfo {
    sha: String,
}

/// One entry of a tree page (other fields are skipped unread).
#[derive(Debug, Deserialize, PartialEq, Eq)]
pub(crate) struct TreeEntry {
    #[serde(rename = "type")]
    kind: TreeKind,
    path: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    oid: String,
    #[serde(default)]
    lfs: Option<LfsInfo>,
}

#[derive(Debug, Deserialize, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum TreeKind {
    File,
    Directory,
    #[serde(other)]
    Other,
}

#[derive(Debug, Deserialize, PartialEq, Eq)]
struct LfsInfo {
    oid: String,
    size: u64,
}

/// Parses one page of the tree API (pure, for the tests).
pub(crate) fn parse_tree_page(body: &[u8]) -> Result<Vec<TreeEntry>, serde_json::Error> {
    serde_json::from_slice(body)
}

/// How the Hub stores a file, as its first answer to a read says.
const STORED_UNKNOWN: u8 = 0;
/// In LFS (`X-Linked-Etag`): the id is the SHA-256 of the content.
const STORED_LFS: u8 = 1;
/// In git (`ETag`): the id is git's blob id.
const STORED_GIT: u8 = 2;

/// The digest a whole file read from the Hub must have: its listed id, read
/// as the kind the Hub's answer says it is.
fn content_id(stored: u8, etag: &str) -> Option<Checksum> {
    let algorithm = match stored {
        STORED_LFS => Algorithm::Sha256,
        STORED_GIT => Algorithm::GitSha1,
        _ => return None,
    };
    Checksum::new(algorithm, hex::decode(etag).ok()?)
}

#[derive(Debug)]
pub(crate) struct HfOrigin {
    target: Target,
    /// Without a trailing `/`.
    endpoint: String,
    kind: HfKind,
    repo: String,
    revision: String,
    subdir: String,
    /// `Origin.revision`: the commit a listing was taken at.
    pinned: Option<String>,
    resolved: OnceCell<String>,
}

/// Percent-encodes everything but RFC 3986 unreserved characters (and `/`
/// when `keep_slash`), like Python's `quote`.
fn encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The `rel="next"` target of a `Link` header.
fn next_link(value: &str) -> Option<&str> {
    let mut rest = value;
    while let Some(start) = rest.find('<') {
        let after = &rest[start + 1..];
        let end = after.find('>')?;
        let target = &after[..end];
        let params_end = after[end..].find('<').map_or(after.len(), |i| end + i);
        let params = &after[end + 1..params_end];
        if params.split(';').any(|p| {
            matches!(
                p.trim().replace(' ', "").as_str(),
                "rel=\"next\"" | "rel=next"
            )
        }) {
            return Some(target);
        }
        rest = &after[params_end..];
    }
    None
}

impl HfOrigin {
    pub(crate) fn new(
        origin: &Origin,
        options: &OriginOptions,
        kind: HfKind,
        repo: String,
        revision: String,
        subdir: String,
    ) -> Result<Self, OriginError> {
        let invalid = |reason: String| OriginError::invalid_uri(&origin.uri, reason);
        let endpoint = match origin.endpoint.trim() {
            "" => DEFAULT_ENDPOINT,
            e => e,
        }
        .trim_end_matches('/')
        .to_owned();
        let url = Url::parse(&endpoint)
            .map_err(|e| invalid(format!("bad endpoint {endpoint:?}: {e}")))?;
        match url.scheme() {
            "https" => {}
            "http" if origin.allow_http => {}
            "http" => return Err(invalid("a plain-http Hub endpoint needs allow_http".into())),
            other => return Err(invalid(format!("endpoint scheme {other:?} is not http(s)"))),
        }
        let pinned = Some(origin.revision.trim()).filter(|r| !r.is_empty());
        if let Some(sha) = pinned
            && !sha.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(invalid(format!("revision {sha:?} is not a commit sha")));
        }
        let token = credential(origin, "HF_TOKEN");
        let target =
            Target::new(options, url.origin(), token).map_err(|e| invalid(e.to_string()))?;
        Ok(Self {
            target,
            endpoint,
            kind,
            repo,
            revision,
            subdir,
            pinned: pinned.map(str::to_owned),
            resolved: OnceCell::new(),
        })
    }

    fn url(&self, path_and_query: &str, what: &str) -> Result<Url, OriginError> {
        Url::parse(&format!("{}/{path_and_query}", self.endpoint))
            .map_err(|e| OriginError::protocol(what, format!("cannot build a Hub URL: {e}")))
    }

    async fn resolve(&self, budget: &Budget, uri: &str) -> Result<String, OriginError> {
        let url = self.url(
            &format!(
                "api/{}/{}/revision/{}",
                self.kind.api_segment(),
                self.repo,
                encode(&self.revision, false)
            ),
            uri,
        )?;
        let (info, _): (RevisionInfo, _) = get_json(budget, &self.target, &url, uri, UNEXPECTED)
            .await
            .map_err(|e| match e {
                // The Hub hides private and missing repositories alike.
                OriginError::Denied { path, message } => OriginError::Denied {
                    path,
                    message: format!(
                        "{message} (the repository is private, gated or does not exist; \
                         HF_TOKEN {})",
                        if self.target.has_token() {
                            "was sent"
                        } else {
                            "is not set"
                        }
                    ),
                },
                other => other,
            })?;
        if info.sha.is_empty() || !info.sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(OriginError::protocol(
                uri,
                format!("revision answer has sha {:?}", info.sha),
            ));
        }
        Ok(info.sha)
    }

    /// The commit reads use: the pinned one, else the URI's revision
    /// resolved once per client.
    async fn commit(&self, budget: &Budget, what: &str) -> Result<String, OriginError> {
        if let Some(sha) = &self.pinned {
            return Ok(sha.clone());
        }
        self.resolved
            .get_or_try_init(|| self.resolve(budget, what))
            .await
            .cloned()
    }

    pub(crate) async fn list(
        &self,
        uri: &str,
        budget: &Budget,
        filter: &PathFilter,
    ) -> Result<(Vec<FileEntry>, String, Tally), OriginError> {
        let sha = match &self.pinned {
            Some(sha) => sha.clone(),
            None => {
                // A listing always looks at where the revision is now.
                let sha = self.resolve(budget, uri).await?;
                let _ = self.resolved.set(sha.clone());
                sha
            }
        };
        let dir = if self.subdir.is_empty() {
            String::new()
        } else {
            format!("/{}", encode(&self.subdir, false))
        };
        let mut next = Some(self.url(
            &format!(
                "api/{}/{}/tree/{sha}{dir}?recursive=true&expand=false",
                self.kind.api_segment(),
                self.repo
            ),
            uri,
        )?);
        let strip = if self.subdir.is_empty() {
            String::new()
        } else {
            format!("{}/", self.subdir)
        };
        let mut files = Vec::new();
        let mut tally = Tally::default();
        let mut pages = 0;
        while let Some(url) = next.take() {
            pages += 1;
            if pages > MAX_PAGES {
                return Err(OriginError::protocol(uri, "too many tree pages"));
            }
            let (body, headers) = get_body(budget, &self.target, &url, uri).await?;
            let entries = parse_tree_page(&body)
                .map_err(|e| OriginError::protocol(uri, format!("{UNEXPECTED}: {e}")))?;
            let listed_files = entries.iter().filter(|e| e.kind == TreeKind::File).count();
            tally.listed(uri, entries.len() as u64, listed_files as u64)?;
            for entry in entries {
                if entry.kind != TreeKind::File {
                    continue;
                }
                let Some(path) = entry.path.strip_prefix(&strip) else {
                    return Err(OriginError::protocol(
                        uri,
                        format!("tree of {:?} lists {:?}", self.subdir, entry.path),
                    ));
                };
                if !filter.accepts(path) {
                    continue;
                }
                let (size, etag) = match entry.lfs {
                    Some(lfs) => (lfs.size, lfs.oid),
                    None => (entry.size, entry.oid),
                };
                let file = FileEntry {
                    path: path.to_owned(),
                    size,
                    mode: 0,
                    // The LFS sha256 or the git blob id: reads check the
                    // content against it (see `read_range`).
                    etag,
                    version: String::new(),
                    checksum: String::new(),
                };
                tally.keep(uri, super::store::entry_bytes(&file))?;
                files.push(file);
            }
            if let Some(link) = header_str(&headers, "link").and_then(next_link) {
                let target = url.join(link).map_err(|e| {
                    OriginError::protocol(uri, format!("bad next page {link:?}: {e}"))
                })?;
                // Mirrors pass on the Hub's own links: stay on our endpoint
                // (and under its path, if it has one).
                next = Some(if target.origin() == self.target.trusted {
                    target
                } else {
                    let path = target.path().trim_start_matches('/');
                    match target.query() {
                        Some(query) => self.url(&format!("{path}?{query}"), uri)?,
                        None => self.url(path, uri)?,
                    }
                });
            }
        }
        Ok((files, sha, tally))
    }

    pub(crate) async fn read_range(
        &self,
        budget: &Budget,
        file: &FileEntry,
        range: Range<u64>,
    ) -> Result<Bytes, OriginError> {
        let path = file.path.as_str();
        let sha = self.commit(budget, path).await?;
        let in_repo = if self.subdir.is_empty() {
            path.to_owned()
        } else {
            format!("{}/{path}", self.subdir)
        };
        let url = self.url(
            &format!(
                "{}{}/resolve/{sha}/{}",
                self.kind.resolve_prefix(),
                self.repo,
                encode(&in_repo, true)
            ),
            path,
        )?;
        let headers = range_headers(&range);
        budget
            .retry(path, || async {
                let stored = AtomicU8::new(STORED_UNKNOWN);
                // The Hub's own answer (before a CDN redirect) names the
                // commit and blob it serves: refuse before fetching a byte.
                let check = |status: StatusCode, first: &HeaderMap| {
                    if !(status.is_success() || status.is_redirection()) {
                        return Ok(());
                    }
                    if let Some(commit) = header_str(first, "x-repo-commit")
                        && commit != sha
                    {
                        return Err(OriginError::changed(path));
                    }
                    let (blob, kind) = match header_str(first, "x-linked-etag") {
                        Some(lfs) => (Some(lfs), STORED_LFS),
                        None => (header_str(first, "etag"), STORED_GIT),
                    };
                    if blob.is_some() {
                        stored.store(kind, Ordering::Relaxed);
                    }
                    check_etag(path, blob, &file.etag)
                };
                let response = budget
                    .timed(
                        path,
                        send(
                            &self.target,
                            Method::GET,
                            url.clone(),
                            &headers,
                            path,
                            check,
                        ),
                    )
                    .await?;
                // A file read whole is checked against the blob id the Hub
                // named.
                let id = content_id(stored.load(Ordering::Relaxed), normalize_etag(&file.etag));
                read_ranged(budget, response, file, &range, id.as_ref()).await
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_matches_python_quote() {
        assert_eq!(encode("refs/pr/1", false), "refs%2Fpr%2F1");
        assert_eq!(encode("a b/c+d.bin", true), "a%20b/c%2Bd.bin");
        assert_eq!(encode("v1.0~x_y-z", false), "v1.0~x_y-z");
    }

    #[test]
    fn whole_files_are_checked_against_the_id_the_hub_names() {
        let git = "b6fc4c620b67d95f953a5c1c1230aaab5db5a1b0"; // git hash-object of "hello"
        let lfs = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
        assert!(content_id(STORED_GIT, git).unwrap().matches(b"hello"));
        assert!(content_id(STORED_LFS, lfs).unwrap().matches(b"hello"));
        assert!(!content_id(STORED_GIT, git).unwrap().matches(b"hellO"));
        // An id of the wrong kind or form, or an answer that named none:
        // nothing to check against (the ETag check has the last word).
        assert_eq!(content_id(STORED_LFS, git), None);
        assert_eq!(content_id(STORED_GIT, lfs), None);
        assert_eq!(content_id(STORED_UNKNOWN, git), None);
        assert_eq!(content_id(STORED_GIT, "not hex"), None);
    }

    #[test]
    fn tree_pages_parse_and_skip_what_they_do_not_need() {
        let page = br#"[{"type":"directory","oid":"d","size":0,"path":"sub"},
            {"type":"file","oid":"aa","size":7,"path":"sub/a.json","lastCommit":{"id":"x"}},
            {"type":"file","oid":"bb","size":134,"path":"w.bin","lfs":{"oid":"cc","size":9,"pointerSize":134}},
            {"type":"symlink","oid":"e","size":1,"path":"l"}]"#;
        let entries = parse_tree_page(page).unwrap();
        let kinds: Vec<_> = entries.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [
                TreeKind::Directory,
                TreeKind::File,
                TreeKind::File,
                TreeKind::Other
            ]
        );
        assert_eq!(entries[2].lfs.as_ref().map(|l| l.size), Some(9));
        assert!(parse_tree_page(b"{}").is_err());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Arbitrary bytes as a tree page: entries or an error, never a
            /// panic (and at most the body's size in memory: serde_json
            /// builds strings from the body only).
            #[test]
            fn arbitrary_tree_pages_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
                let _ = parse_tree_page(&body);
            }

            /// Entries written as the Hub writes them are read back.
            #[test]
            fn tree_entries_round_trip(
                path in "[^\\x00]{1,40}",
                size in any::<u64>(),
                oid in "[0-9a-f]{40}",
                lfs in proptest::option::of(("[0-9a-f]{64}", any::<u64>())),
            ) {
                let mut e = serde_json::json!({"type": "file", "path": path, "size": size, "oid": oid});
                if let Some((lfs_oid, lfs_size)) = &lfs {
                    e["lfs"] = serde_json::json!({"oid": lfs_oid, "size": lfs_size, "pointerSize": 134});
                }
                let body = serde_json::to_vec(&serde_json::Value::Array(vec![e])).unwrap();
                let got = parse_tree_page(&body).unwrap();
                prop_assert_eq!(got.len(), 1);
                prop_assert_eq!(&got[0].path, &path);
                prop_assert_eq!(got[0].size, size);
                prop_assert_eq!(&got[0].oid, &oid);
                prop_assert_eq!(
                    got[0].lfs.as_ref().map(|l| (l.oid.clone(), l.size)),
                    lfs
                );
            }
        }
    }

    #[test]
    fn link_headers() {
        let h = r#"<https://huggingface.co/api/models/o/r/tree/abc?recursive=true&cursor=xyz>; rel="next""#;
        assert_eq!(
            next_link(h),
            Some("https://huggingface.co/api/models/o/r/tree/abc?recursive=true&cursor=xyz")
        );
        assert_eq!(
            next_link(r#"<http://a/1>; rel="prev", <http://a/3>; rel="next""#),
            Some("http://a/3")
        );
        assert_eq!(next_link(r#"<http://a/1>; rel="prev""#), None);
        assert_eq!(next_link(""), None);
    }

    #[test]
    fn endpoints_and_pins_are_checked() {
        let origin = |endpoint: &str, allow_http: bool, revision: &str| Origin {
            uri: "hf://o/r".into(),
            endpoint: endpoint.into(),
            allow_http,
            revision: revision.into(),
            ..Default::default()
        };
        let new = |o: &Origin| {
            HfOrigin::new(
                o,
                &OriginOptions::default(),
                HfKind::Model,
                "o/r".into(),
                "main".into(),
                String::new(),
            )
        };
        let hub = new(&origin("", false, "")).unwrap();
        assert_eq!(hub.endpoint, "https://huggingface.co");
        assert_eq!(
            new(&origin("http://127.0.0.1:1/", false, ""))
                .unwrap_err()
                .label(),
            "invalid_uri"
        );
        let local = new(&origin("http://127.0.0.1:1/", true, "0123abcd")).unwrap();
        assert_eq!(local.endpoint, "http://127.0.0.1:1");
        assert_eq!(local.pinned.as_deref(), Some("0123abcd"));
        assert_eq!(
            new(&origin("", false, "main")).unwrap_err().label(),
            "invalid_uri"
        );
    }
}
