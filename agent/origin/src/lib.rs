//! Owns origin access: listings taken once per revision, and ranged reads pinned to them.
//! Never writes to an origin or a local disk; knows nothing of peers, node stores or the cluster.
//!
//! The operator lists a source once per revision; the agent reads from it
//! as a last resort.
//!
//! # Source URIs
//!
//! | URI | Backend | Pinning of reads |
//! |-----|---------|------------------|
//! | `s3://bucket/prefix` | S3 and S3-compatible stores (MinIO, moto, …) | `If-Match: <listed ETag>` (+ `versionId` when listed) |
//! | `gs://bucket/prefix` | Google Cloud Storage | `If-Match: <listed ETag>` (+ generation, when listed) |
//! | `az://container/prefix` | Azure Blob Storage | `If-Match: <listed ETag>` |
//! | `http(s)://host/dir/` | a directory listed with nginx `autoindex_format json` | `If-Match: <ETag>` (or `If-Unmodified-Since`) |
//! | `http(s)://host/file` | one file (named after the last path segment) | as above |
//! | `hf://org/repo[@rev][/sub/dir]` | Hugging Face Hub model | commit sha in the URL, listed blob/LFS oid |
//! | `hf://datasets/org/repo[@rev]`, `hf://spaces/org/repo[@rev]` | Hub dataset / Space | as above |
//!
//! Object-store URIs name a prefix ("directory"): every object below it is
//! listed, with paths relative to it. Empty objects whose key ends in `/`
//! (directory markers) are skipped; any other key that is not a plain
//! relative path as written (a leading `/`, a trailing `/` on an object
//! with data, an empty, `.` or `..` segment) is refused, naming the key
//! (see `keys`). An HTTP URI that ends in `/` is a directory, listed
//! recursively from nginx's JSON autoindex (`GET` with `Accept:
//! application/json`, an array of `{"name","type","size","mtime"}`), and
//! each file is asked for its ETag with `HEAD`; otherwise the URI is one
//! file. A Hugging Face revision (branch, tag or commit; default `main`) is
//! resolved to a commit sha when listing; reads use that sha
//! (`SourceListing::revision`, carried in `Origin.revision`). Pull-request
//! refs may be written `@refs/pr/N`; percent-encode other `/` in a revision.
//!
//! Include and exclude patterns are globs over the listed relative paths:
//! `*` and `?` stay within one path segment, `**` crosses segments
//! (`**/*.safetensors` matches at any depth). An empty include list keeps
//! everything; exclude wins over include.
//!
//! # What a listing must be
//!
//! Checked in one place for every kind of source ([`OriginClient::list`]),
//! each refusal an [`OriginError`] whose reason is `InvalidSource`:
//!
//! - at least one file after include/exclude ([`OriginError::NoFiles`],
//!   saying what was listed and which globs kept nothing);
//! - every path valid by `swarmseed_proto::path` (relative, no empty, `.`
//!   or `..` segment, segments of at most 255 bytes, at most 3072 bytes in
//!   all), listed once, no file where a directory must be
//!   ([`OriginError::UnusableName`], naming it);
//! - bounded while it is read ([`OriginError::TooLarge`]): at most
//!   [`MAX_LISTED_ENTRIES`] entries, `layout::MAX_FILES` files kept, and
//!   `layout::MAX_LISTING_BYTES` of names and validators; every answer is
//!   read with a size bound before it is parsed (a directory listing or Hub
//!   tree page 256 MiB, an object-store listing page 16 MiB, an error
//!   answer 64 KiB, a header digest 1 KiB).
//!
//! # Validators and digests
//!
//! Reads are pinned by a validator, which is only as good as the origin
//! makes it. Object stores' ETags and versions change with every write, and
//! Hub reads name a commit. An HTTP server's ETag is often made of the
//! file's modification time and size (nginx, Apache): rewritten in place at
//! the same size within the same second, a file keeps it, and nodes could
//! publish a mix of old and new bytes. Such files (and those with a weak or
//! no ETag) are counted in [`SourceListing::weak_validators`] for the
//! operator to show, with `spec.digest` as the remedy. Where an origin
//! offers a digest of the content (`Repr-Digest`, `Digest`,
//! `x-amz-checksum-sha256`, `x-goog-hash`, `Content-MD5`; see `checksum`),
//! the listing records it in `FileEntry.checksum` and reads refuse an
//! answer that names another one, or whole-file bytes that hash to another
//! one ([`OriginError::Changed`]). Files read whole from the Hub are hashed
//! against their id (the LFS SHA-256, or git's blob id).
//!
//! # Settings (`Origin` fields)
//!
//! - `endpoint`: S3: a custom endpoint (MinIO, moto, …); requests are then
//!   path-style. GCS: the base URL. Azure: the blob endpoint. Hugging Face:
//!   the Hub (default `https://huggingface.co`, e.g. a mirror). Unused for
//!   HTTP(S) URIs.
//! - `region`: S3 region (default `us-east-1`).
//! - `allow_http`: permits a plain-`http://` `endpoint` (in-cluster stores,
//!   tests). An `http://` URI needs no flag: it says so itself.
//! - `revision`: the Hugging Face commit the listing was taken at; when set,
//!   both listing and reads use it instead of resolving `@rev`.
//!
//! # Credentials (`Origin.credentials` keys)
//!
//! - S3: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, optional
//!   `AWS_SESSION_TOKEN`. Without keys, requests are unsigned (public
//!   buckets); set `AWS_CREDENTIALS_FROM_ENVIRONMENT=true` instead to use
//!   the agent's own environment (IRSA web identity, EKS Pod Identity,
//!   instance profile): nothing is read from the environment otherwise.
//! - GCS: `GOOGLE_SERVICE_ACCOUNT_KEY` (the service-account JSON). Without
//!   it, requests are anonymous.
//! - Azure: `AZURE_STORAGE_ACCOUNT_NAME` (required) and either
//!   `AZURE_STORAGE_ACCOUNT_KEY` or `AZURE_STORAGE_SAS_TOKEN`. Without
//!   either, requests are anonymous (public containers).
//! - HTTP(S): optional `HTTP_BEARER_TOKEN`, sent as `Authorization: Bearer`.
//! - Hugging Face: optional `HF_TOKEN`, sent as `Authorization: Bearer`.
//!
//! Tokens go only to the host of the URI (or of the Hub endpoint): when a
//! redirect leads elsewhere (the Hub sends LFS files to a CDN), the
//! `Authorization` header is dropped and the `Range` header kept.
//!
//! # Failure handling
//!
//! Every request is bounded by `OriginOptions::request_timeout` (waiting for
//! the answer, and each wait for more body data), transient failures
//! (network, timeouts, 408/429/5xx) are retried `max_retries` times with
//! jittered exponential backoff (200 ms doubling to at most 10 s). A read
//! never returns bytes of another version of the object: a failed
//! precondition, another ETag, a vanished or shrunk object is
//! [`OriginError::Changed`].

mod checksum;
mod error;
mod hf;
mod http;
mod keys;
mod request;
mod store;
mod transfer;
mod uri;

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use swarmseed_proto::layout;
use swarmseed_proto::pb::{FileEntry, Origin};

pub use error::OriginError;
pub use uri::{HfKind, OriginUri};

use transfer::Budget;

/// Permission bits of listed files: no origin here tells us about
/// executables, so everything is read-only data.
const LISTED_MODE: u32 = 0o444;

/// Makes ring the process's TLS crypto provider (once). object_store's HTTP
/// client is built without a provider of its own so that the process links
/// only one (kube uses ring too); rustls then needs it installed.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err only if another provider was installed first: that one is used.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Limits of one [`OriginClient`].
#[derive(Debug, Clone)]
pub struct OriginOptions {
    /// Bound on waiting for an answer, and on each wait for more body data.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// Retries of a transient failure (0: one attempt only).
    pub max_retries: u32,
    /// Shared by all reads of the client; 0 means unlimited.
    pub bandwidth_bytes_per_sec: u64,
    /// Concurrent requests of the client.
    pub concurrency: usize,
}

impl Default for OriginOptions {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            max_retries: 5,
            bandwidth_bytes_per_sec: 0,
            concurrency: 16,
        }
    }
}

/// What a source holds, as listed once per revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceListing {
    /// Sorted by path, never empty; size, ETag (and version where the
    /// store has one, checksum where the origin offers one) filled in;
    /// paths pass `swarmseed_proto::path::validate_listing`.
    pub files: Vec<FileEntry>,
    /// Hugging Face commit sha; empty for other origins.
    pub revision: String,
    /// The files whose reads only a weak validator pins.
    pub weak_validators: WeakValidators,
}

/// Listed files whose reads are pinned only by a weak validator: a weak
/// (`W/`) ETag, an ETag made of the file's modification time and size (as
/// nginx and Apache make them), or Last-Modified alone, and no digest of
/// the content. Such a file rewritten in place at the same size within the
/// same second keeps its validator: a node could publish a mix of its old
/// and new bytes, a file that never existed at the origin. Only HTTP(S)
/// origins have them; object stores and the Hub pin by content or version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WeakValidators {
    /// How many listed files have one.
    pub count: usize,
    /// The first few of them, by path (at most [`WeakValidators::EXAMPLES`]).
    pub examples: Vec<String>,
}

impl WeakValidators {
    pub const EXAMPLES: usize = 3;

    fn of<'a>(
        files: impl IntoIterator<Item = &'a FileEntry>,
        weak: fn(&FileEntry) -> bool,
    ) -> Self {
        let mut out = Self::default();
        for f in files.into_iter().filter(|f| weak(f)) {
            out.count += 1;
            if out.examples.len() < Self::EXAMPLES {
                out.examples.push(f.path.clone());
            }
        }
        out
    }

    /// What to tell the user, when there is anything to tell: which files,
    /// what can happen, and the remedy (a pinned digest).
    pub fn message(&self) -> Option<String> {
        if self.count == 0 {
            return None;
        }
        let mut named = self.examples.join(", ");
        if self.count > self.examples.len() {
            named.push_str(", ...");
        }
        Some(format!(
            "{} file(s) ({named}) are pinned only by a weak validator (a weak ETag, an ETag \
             made of modification time and size, or Last-Modified) and the origin offers no \
             digest of their content: a file rewritten in place at the same size and time \
             would not be noticed, and nodes could publish a mix of old and new bytes. Pin \
             the content with spec.digest (the value of status.contentDigest) to refuse \
             anything else",
            self.count
        ))
    }
}

/// Entries listed (files, directories, markers) before anything is kept:
/// a bound on the time and memory a hostile or runaway listing can take.
pub const MAX_LISTED_ENTRIES: u64 = 16_000_000;

/// Counts what a listing holds while it is read, and refuses it once it is
/// larger than a Dataset may be (before it is all in memory).
#[derive(Debug, Default)]
pub(crate) struct Tally {
    /// Every entry the origin listed.
    entries: u64,
    /// Files listed, before include/exclude.
    files_listed: u64,
    /// Files kept, and the bytes of their names and validators.
    kept: usize,
    kept_bytes: usize,
}

impl Tally {
    /// `n` more entries listed, `files` of them files.
    pub(crate) fn listed(&mut self, uri: &str, n: u64, files: u64) -> Result<(), OriginError> {
        self.entries += n;
        self.files_listed += files;
        if self.entries > MAX_LISTED_ENTRIES {
            return Err(OriginError::too_large(
                uri,
                format!("more than {MAX_LISTED_ENTRIES} entries"),
            ));
        }
        Ok(())
    }

    /// One more file kept, whose path and validators take `bytes`.
    pub(crate) fn keep(&mut self, uri: &str, bytes: usize) -> Result<(), OriginError> {
        self.kept += 1;
        self.add_bytes(uri, bytes)?;
        if self.kept > layout::MAX_FILES {
            return Err(OriginError::too_large(
                uri,
                format!(
                    "more than {} files (narrow it with include/exclude)",
                    layout::MAX_FILES
                ),
            ));
        }
        Ok(())
    }

    /// `bytes` more of names and validators of kept files.
    pub(crate) fn add_bytes(&mut self, uri: &str, bytes: usize) -> Result<(), OriginError> {
        self.kept_bytes = self.kept_bytes.saturating_add(bytes);
        if self.kept_bytes > layout::MAX_LISTING_BYTES {
            return Err(OriginError::too_large(
                uri,
                format!(
                    "more than {} bytes of file names and validators (narrow it with \
                     include/exclude)",
                    layout::MAX_LISTING_BYTES
                ),
            ));
        }
        Ok(())
    }

    /// Why a listing that kept nothing is empty, for [`OriginError::NoFiles`].
    fn why_empty(&self, include: &[String], exclude: &[String]) -> String {
        let n = self.files_listed;
        match (include.is_empty(), exclude.is_empty()) {
            _ if n == 0 => "the origin lists no file there".to_owned(),
            (false, true) => format!("{n} file(s) listed, none matches include {include:?}"),
            (false, false) => format!(
                "{n} file(s) listed, none matches include {include:?} without matching \
                 exclude {exclude:?}"
            ),
            (true, false) => format!("{n} file(s) listed, exclude {exclude:?} matches them all"),
            (true, true) => format!("{n} file(s) listed, none kept"),
        }
    }
}

/// Reads one origin. Cheap to clone; clones share the request budget
/// (concurrency and bandwidth).
#[derive(Clone, Debug)]
pub struct OriginClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    uri: String,
    budget: Budget,
    backend: Backend,
}

#[derive(Debug)]
enum Backend {
    Store(store::StoreOrigin),
    Http(http::HttpOrigin),
    Hf(hf::HfOrigin),
}

impl OriginClient {
    /// Checks the URI and settings and builds the client. No request is
    /// made here.
    pub fn new(origin: &Origin, options: OriginOptions) -> Result<Self, OriginError> {
        install_crypto_provider();
        let parsed = OriginUri::parse(&origin.uri)?;
        let backend = match parsed {
            OriginUri::Http { url, directory } => {
                Backend::Http(http::HttpOrigin::new(origin, &options, url, directory)?)
            }
            OriginUri::Hf {
                kind,
                repo,
                revision,
                subdir,
            } => Backend::Hf(hf::HfOrigin::new(
                origin, &options, kind, repo, revision, subdir,
            )?),
            other => Backend::Store(store::StoreOrigin::new(origin, &options, other)?),
        };
        Ok(Self {
            inner: Arc::new(Inner {
                uri: origin.uri.clone(),
                budget: Budget::new(options),
                backend,
            }),
        })
    }

    /// Lists every file under the URI that passes the include/exclude globs.
    pub async fn list(
        &self,
        include: &[String],
        exclude: &[String],
    ) -> Result<SourceListing, OriginError> {
        let uri = &self.inner.uri;
        let filter = PathFilter::new(uri, include, exclude)?;
        let budget = &self.inner.budget;
        let (mut files, revision, tally) = match &self.inner.backend {
            Backend::Store(s) => {
                let (files, tally) = s.list(uri, budget, &filter).await?;
                (files, String::new(), tally)
            }
            Backend::Http(h) => {
                let (files, tally) = h.list(uri, budget, &filter).await?;
                (files, String::new(), tally)
            }
            Backend::Hf(h) => h.list(uri, budget, &filter).await?,
        };
        // Every kind of source alike: a Dataset of nothing is a mistake
        // (a wrong prefix or glob), never a Ready Dataset.
        if files.is_empty() {
            return Err(OriginError::NoFiles {
                uri: uri.clone(),
                detail: tally.why_empty(include, exclude),
            });
        }
        for file in &mut files {
            file.mode = LISTED_MODE;
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        check_listing(uri, &files)?;
        let weak_validators = match &self.inner.backend {
            Backend::Http(_) => WeakValidators::of(&files, http::is_weak),
            Backend::Store(_) | Backend::Hf(_) => WeakValidators::default(),
        };
        tracing::info!(
            uri = %redact_queries(uri),
            files = files.len(),
            weak_validators = weak_validators.count,
            "listed origin"
        );
        Ok(SourceListing {
            files,
            revision,
            weak_validators,
        })
    }

    /// Reads bytes `[range.start, range.end)` of `file`, pinned to its
    /// listed ETag/version: if the object changed, the answer is
    /// [`OriginError::Changed`], never other bytes. Returns exactly
    /// `range.end - range.start` bytes or an error.
    pub async fn read_range(
        &self,
        file: &FileEntry,
        range: Range<u64>,
    ) -> Result<Bytes, OriginError> {
        if range.start > range.end || range.end > file.size {
            return Err(OriginError::protocol(
                &file.path,
                format!(
                    "range {}..{} is outside the listed size {}",
                    range.start, range.end, file.size
                ),
            ));
        }
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        let budget = &self.inner.budget;
        let bytes = match &self.inner.backend {
            Backend::Store(s) => s.read_range(budget, file, range.clone()).await?,
            Backend::Http(h) => h.read_range(budget, file, range.clone()).await?,
            Backend::Hf(h) => h.read_range(budget, file, range.clone()).await?,
        };
        // Every backend already checks this; a wrong length must never
        // reach the chunk store.
        if bytes.len() as u64 != range.end - range.start {
            return Err(OriginError::protocol(
                &file.path,
                format!(
                    "got {} bytes for a range of {}",
                    bytes.len(),
                    range.end - range.start
                ),
            ));
        }
        Ok(bytes)
    }

    /// The URI this client reads.
    pub fn uri(&self) -> &str {
        &self.inner.uri
    }
}

/// The path rules of `swarmseed_proto::path` and the size bound over a
/// sorted listing; a refusal names the path.
fn check_listing(uri: &str, files: &[FileEntry]) -> Result<(), OriginError> {
    swarmseed_proto::path::validate_listing(files.iter().map(|f| f.path.as_str()))
        .map_err(|e| OriginError::unusable_name(uri, e.path(), e.to_string()))?;
    let bytes = layout::listing_bytes(files);
    if bytes > layout::MAX_LISTING_BYTES {
        return Err(OriginError::too_large(
            uri,
            format!(
                "{} files take {bytes} bytes, more than {} (narrow it with include/exclude)",
                files.len(),
                layout::MAX_LISTING_BYTES
            ),
        ));
    }
    Ok(())
}

/// Include/exclude globs over relative paths.
#[derive(Debug)]
pub(crate) struct PathFilter {
    include: Option<GlobSet>,
    exclude: GlobSet,
}

impl PathFilter {
    fn new(uri: &str, include: &[String], exclude: &[String]) -> Result<Self, OriginError> {
        let build = |patterns: &[String]| -> Result<GlobSet, OriginError> {
            let mut set = GlobSetBuilder::new();
            for pattern in patterns {
                let glob = GlobBuilder::new(pattern)
                    .literal_separator(true)
                    .build()
                    .map_err(|e| {
                        OriginError::invalid_uri(uri, format!("bad glob {pattern:?}: {e}"))
                    })?;
                set.add(glob);
            }
            set.build()
                .map_err(|e| OriginError::invalid_uri(uri, format!("bad globs: {e}")))
        };
        Ok(Self {
            include: if include.is_empty() {
                None
            } else {
                Some(build(include)?)
            },
            exclude: build(exclude)?,
        })
    }

    pub(crate) fn accepts(&self, path: &str) -> bool {
        self.include.as_ref().is_none_or(|set| set.is_match(path)) && !self.exclude.is_match(path)
    }
}

/// A token that must not show up in logs: `Debug` prints a placeholder.
#[derive(Clone)]
pub(crate) struct Secret(String);

impl Secret {
    pub(crate) fn new(value: &str) -> Self {
        Self(value.to_owned())
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Drops the query of every URL in an error message: presigned URLs and
/// SAS tokens carry credentials there.
pub(crate) fn redact_queries(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut in_url = false;
    let mut skipping = false;
    let mut rest = message;
    while let Some(c) = rest.chars().next() {
        if !in_url && (rest.starts_with("http://") || rest.starts_with("https://")) {
            in_url = true;
        }
        if c.is_whitespace() || matches!(c, '"' | '\'' | ')' | '>' | ',') {
            in_url = false;
            skipping = false;
        } else if in_url && c == '?' {
            skipping = true;
            out.push_str("?<redacted>");
        }
        if !skipping {
            out.push(c);
        }
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// A credential, if present and not blank.
fn credential<'a>(origin: &'a Origin, key: &str) -> Option<&'a str> {
    origin
        .credentials
        .get(key)
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarmseed_proto::Reason;

    fn filter(include: &[&str], exclude: &[&str]) -> PathFilter {
        let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        PathFilter::new("s3://b", &own(include), &own(exclude)).unwrap()
    }

    #[test]
    fn globs_are_relative_and_segment_aware() {
        let all = filter(&[], &[]);
        assert!(all.accepts("a/b/c.bin"));
        let top = filter(&["*.json"], &[]);
        assert!(top.accepts("config.json"));
        assert!(!top.accepts("sub/config.json"));
        let deep = filter(&["**/*.safetensors"], &["**/optimizer*"]);
        assert!(deep.accepts("model.safetensors"));
        assert!(deep.accepts("a/b/model.safetensors"));
        assert!(!deep.accepts("a/optimizer.safetensors"));
        assert!(!deep.accepts("a/model.bin"));
        let err = PathFilter::new("s3://b", &["a[".to_string()], &[]).unwrap_err();
        assert_eq!(err.label(), "invalid_uri");
    }

    #[test]
    fn listings_are_bounded_while_they_are_read() {
        let mut t = Tally::default();
        t.listed("u", MAX_LISTED_ENTRIES, 0).unwrap();
        let err = t.listed("u", 1, 1).unwrap_err();
        assert_eq!(err.label(), "too_large");
        assert_eq!(err.reason(), Reason::InvalidSource);
        assert!(
            err.to_string().contains("more than 16000000 entries"),
            "{err}"
        );

        let mut t = Tally::default();
        t.add_bytes("u", layout::MAX_LISTING_BYTES).unwrap();
        let err = t.keep("u", 1).unwrap_err();
        assert!(err.to_string().contains("include/exclude"), "{err}");

        let mut t = Tally {
            kept: layout::MAX_FILES,
            ..Tally::default()
        };
        let err = t.keep("u", 1).unwrap_err();
        assert!(err.to_string().contains("more than 4000000 files"), "{err}");
    }

    #[test]
    fn an_empty_listing_says_what_matched_nothing() {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let none = Tally::default();
        assert_eq!(none.why_empty(&[], &[]), "the origin lists no file there");
        let two = Tally {
            files_listed: 2,
            ..Tally::default()
        };
        assert_eq!(
            two.why_empty(&strings(&["*.bin"]), &[]),
            "2 file(s) listed, none matches include [\"*.bin\"]"
        );
        assert_eq!(
            two.why_empty(&strings(&["*.bin"]), &strings(&["a*"])),
            "2 file(s) listed, none matches include [\"*.bin\"] without matching exclude [\"a*\"]"
        );
        assert_eq!(
            two.why_empty(&[], &strings(&["**"])),
            "2 file(s) listed, exclude [\"**\"] matches them all"
        );
    }

    #[test]
    fn weak_validators_name_a_few_files_and_the_remedy() {
        let file = |path: &str, etag: &str| FileEntry {
            path: path.into(),
            size: 10,
            etag: etag.into(),
            ..Default::default()
        };
        let files = [
            file("a", "\"65f0a1b2-a\""),
            file("b", "\"0123456789abcdef0123456789abcdef\""),
            file("c", "W/\"x\""),
            file("d", ""),
            file("e", "\"65f0a1b2-a\""),
        ];
        let weak = WeakValidators::of(&files, http::is_weak);
        assert_eq!(weak.count, 4);
        assert_eq!(weak.examples, ["a", "c", "d"]);
        let message = weak.message().unwrap();
        assert!(
            message.starts_with("4 file(s) (a, c, d, ...) are pinned only by a weak validator"),
            "{message}"
        );
        assert!(message.contains("spec.digest"), "{message}");
        assert_eq!(WeakValidators::default().message(), None);
    }

    #[test]
    fn secrets_stay_out_of_logs_and_errors() {
        let mut origin = Origin {
            uri: "hf://o/r".into(),
            ..Default::default()
        };
        origin
            .credentials
            .insert("HF_TOKEN".into(), "hf_very_secret".into());
        let client = OriginClient::new(&origin, OriginOptions::default()).unwrap();
        assert!(!format!("{client:?}").contains("hf_very_secret"));
        origin.uri = "https://h/d/".into();
        origin
            .credentials
            .insert("HTTP_BEARER_TOKEN".into(), "bearer_very_secret".into());
        let client = OriginClient::new(&origin, OriginOptions::default()).unwrap();
        assert!(!format!("{client:?}").contains("bearer_very_secret"));

        assert_eq!(
            redact_queries(
                "GET https://a.blob/c/f?sv=1&sig=abc failed (https://x/y?s=1), status 403"
            ),
            "GET https://a.blob/c/f?<redacted> failed (https://x/y?<redacted>), status 403"
        );
        assert_eq!(redact_queries("no url? here"), "no url? here");
    }

    #[test]
    fn client_construction_checks_the_uri() {
        let origin = |uri: &str| Origin {
            uri: uri.into(),
            ..Default::default()
        };
        for uri in [
            "s3://b/p",
            "gs://b/p",
            "http://h/x/",
            "https://h/f",
            "hf://o/r",
        ] {
            OriginClient::new(&origin(uri), OriginOptions::default())
                .unwrap_or_else(|e| panic!("{uri}: {e}"));
        }
        let err = OriginClient::new(&origin("ftp://h/x"), OriginOptions::default()).unwrap_err();
        assert_eq!(err.label(), "unsupported");
        // Azure needs an account name.
        let err = OriginClient::new(&origin("az://c/p"), OriginOptions::default()).unwrap_err();
        assert_eq!(err.label(), "invalid_uri");
    }
}
