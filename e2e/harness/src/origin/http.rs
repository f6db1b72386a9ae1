//! The HTTP origin: serves a directory like nginx with `autoindex on;
//! autoindex_format json;` would, and counts the body bytes it served.
//!
//! - `GET`/`HEAD` of a file: `ETag` (strong: size and mtime in ns),
//!   `Last-Modified`, `Accept-Ranges: bytes`; a single `Range` gives 206 or
//!   416; multiple ranges are ignored (a full 200, which RFC 9110 allows);
//!   `If-Match` that does not match gives 412.
//! - A URL ending in `/` names a directory: with `Accept: application/json`
//!   the nginx JSON listing (`[{"name","type","mtime","size"}]`, directories
//!   first, dot files hidden), otherwise a small HTML page. A directory URL
//!   without the slash redirects (301) to the one with it, as nginx does.
//! - `GET /_origin/stats` → `{"bytes_served":N,"requests":N}`;
//!   `POST /_origin/reset` zeroes both.

use std::io::SeekFrom;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::net::TcpListener;
use tokio_util::io::ReaderStream;

use crate::error::{Error, Result};

/// Ranges up to this size are read whole and sent as one body.
const WHOLE_READ_MAX: u64 = 1 << 20;

/// Counters an origin exposes at `/_origin/stats`.
#[derive(Debug, Default)]
pub struct OriginCounters {
    bytes_served: AtomicU64,
    requests: AtomicU64,
}

impl OriginCounters {
    pub fn snapshot(&self) -> OriginStats {
        OriginStats {
            bytes_served: self.bytes_served.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
        }
    }

    pub fn reset(&self) {
        self.bytes_served.store(0, Ordering::Relaxed);
        self.requests.store(0, Ordering::Relaxed);
    }

    pub(crate) fn add_bytes(&self, n: u64) {
        self.bytes_served.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn add_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }
}

/// The JSON at `/_origin/stats` (HTTP origin and counting TCP proxy alike).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginStats {
    /// Body bytes served (HTTP origin) or bytes sent from upstream to
    /// clients (TCP proxy).
    pub bytes_served: u64,
    /// Requests (HTTP origin) or connections (TCP proxy).
    pub requests: u64,
}

/// Reads `/_origin/stats` of an origin or proxy at `base_url`
/// (`http://host:port`).
pub async fn fetch_stats(base_url: &str) -> Result<OriginStats> {
    let url = format!("{}/_origin/stats", base_url.trim_end_matches('/'));
    let resp = stats_client()?
        .get(&url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| Error::network(format!("GET {url}"), e))?;
    resp.json()
        .await
        .map_err(|e| Error::network(format!("GET {url}"), e))
}

/// `POST /_origin/reset` on an origin or proxy at `base_url`.
pub async fn reset_stats(base_url: &str) -> Result<()> {
    let url = format!("{}/_origin/reset", base_url.trim_end_matches('/'));
    stats_client()?
        .post(&url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| Error::network(format!("POST {url}"), e))?;
    Ok(())
}

fn stats_client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .build()
        .map_err(|e| Error::network("build http client", e))
}

/// The router for the stats endpoints alone (used by the TCP proxy).
pub fn stats_router(counters: Arc<OriginCounters>) -> Router {
    Router::new()
        .route(
            "/_origin/stats",
            get(|State(c): State<Arc<OriginCounters>>| async move { axum::Json(c.snapshot()) }),
        )
        .route(
            "/_origin/reset",
            post(|State(c): State<Arc<OriginCounters>>| async move {
                c.reset();
                StatusCode::NO_CONTENT
            }),
        )
        .with_state(counters)
}

#[derive(Debug)]
struct FileServer {
    root: PathBuf,
    counters: Arc<OriginCounters>,
}

/// The origin's router: files under `root`, plus the stats endpoints.
pub fn router(root: PathBuf, counters: Arc<OriginCounters>) -> Router {
    let files = Arc::new(FileServer {
        root,
        counters: counters.clone(),
    });
    stats_router(counters).fallback(move |method: Method, uri: Uri, headers: HeaderMap| {
        let files = files.clone();
        async move { files.handle(&method, &uri, &headers).await }
    })
}

/// Serves `root` on `listener` until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    root: PathBuf,
    counters: Arc<OriginCounters>,
) -> Result<()> {
    axum::serve(listener, router(root, counters))
        .await
        .map_err(|e| Error::network("http origin", e))
}

/// An HTTP origin running in this process; stops on drop.
#[derive(Debug)]
pub struct HttpOrigin {
    addr: SocketAddr,
    counters: Arc<OriginCounters>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpOrigin {
    /// Binds `listen` (port 0: any) and serves `root`.
    pub async fn start(root: impl Into<PathBuf>, listen: SocketAddr) -> Result<Self> {
        let (listener, addr) = crate::bind_tcp(listen).await?;
        let counters = Arc::new(OriginCounters::default());
        let app = router(root.into(), counters.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!(error = %e, "http origin stopped");
            }
        });
        Ok(Self {
            addr,
            counters,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://addr` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stats(&self) -> OriginStats {
        self.counters.snapshot()
    }

    pub fn reset_stats(&self) {
        self.counters.reset();
    }
}

impl Drop for HttpOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a `Range` header asks for, given the file length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable range: serve everything (200).
    Full,
    /// Bytes `start..=end` (206).
    Partial { start: u64, end: u64 },
    /// A syntactically valid range that lies outside the file (416).
    Unsatisfiable,
}

/// Parses a single `bytes=` range; anything else (other units, several
/// ranges, bad syntax) means "ignore the header", as RFC 9110 permits.
pub fn parse_range(value: &str, len: u64) -> RangeRequest {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        // Suffix range: the last N bytes.
        let Ok(n) = last.parse::<u64>() else {
            return RangeRequest::Full;
        };
        if n == 0 || len == 0 {
            return RangeRequest::Unsatisfiable;
        }
        return RangeRequest::Partial {
            start: len.saturating_sub(n),
            end: len - 1,
        };
    }
    let Ok(start) = first.parse::<u64>() else {
        return RangeRequest::Full;
    };
    let end = if last.is_empty() {
        u64::MAX
    } else {
        match last.parse::<u64>() {
            Ok(e) if e >= start => e,
            _ => return RangeRequest::Full,
        }
    };
    if start >= len {
        return RangeRequest::Unsatisfiable;
    }
    RangeRequest::Partial {
        start,
        end: end.min(len - 1),
    }
}

/// Whether an `If-Match` value lets a request on `etag` proceed (strong
/// comparison: weak tags never match).
pub fn if_match_allows(value: &str, etag: &str) -> bool {
    value
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || (!tag.starts_with("W/") && tag == etag))
}

/// The strong ETag of a file: size and modification time (ns), which
/// changes whenever the content is rewritten.
pub fn etag_for(meta: &std::fs::Metadata) -> String {
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("\"{:x}-{:x}\"", meta.len(), mtime)
}

/// Maps a decoded URL path to a path below the root, refusing anything
/// that could leave it.
fn relative_path(decoded: &str) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for part in decoded.split('/') {
        match part {
            "" => {}
            "." | ".." => return None,
            p if p.contains('\0') || p.contains('\\') => return None,
            p => out.push(p),
        }
    }
    Some(out)
}

fn status(code: StatusCode, msg: &str) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "text/plain")],
        format!("{msg}\n"),
    )
        .into_response()
}

/// One entry of nginx's `autoindex_format json` listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListingEntry {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// RFC 7231 date, e.g. `Wed, 25 Nov 2026 06:48:52 GMT`.
    pub mtime: String,
    /// Present for files only, as in nginx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

async fn list_dir(dir: &Path) -> std::io::Result<Vec<ListingEntry>> {
    // One blocking task for the whole directory, not one per entry.
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || list_dir_blocking(&dir))
        .await
        .map_err(std::io::Error::other)?
}

fn list_dir_blocking(dir: &Path) -> std::io::Result<Vec<ListingEntry>> {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        // Follow symlinks, as nginx does.
        let Ok(meta) = std::fs::metadata(entry.path()) else {
            continue;
        };
        let mtime = httpdate::fmt_http_date(meta.modified().unwrap_or(SystemTime::UNIX_EPOCH));
        let (kind, size) = if meta.is_dir() {
            ("directory", None)
        } else if meta.is_file() {
            ("file", Some(meta.len()))
        } else {
            ("other", None)
        };
        entries.push(ListingEntry {
            name,
            kind: kind.into(),
            mtime,
            size,
        });
    }
    entries.sort_by(|a, b| {
        (b.kind == "directory")
            .cmp(&(a.kind == "directory"))
            .then_with(|| a.name.cmp(&b.name))
    });
    Ok(entries)
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

impl FileServer {
    async fn handle(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> Response {
        if method != Method::GET && method != Method::HEAD {
            return status(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD");
        }
        self.counters.add_request();
        let raw = uri.path();
        let Ok(decoded) = percent_encoding::percent_decode_str(raw).decode_utf8() else {
            return status(StatusCode::BAD_REQUEST, "path is not UTF-8");
        };
        let Some(rel) = relative_path(&decoded) else {
            return status(StatusCode::BAD_REQUEST, "path leaves the root");
        };
        let full = self.root.join(rel);
        // Inline rather than on a blocking thread: the files of a test
        // origin are local and cached, and a thread handoff per request
        // costs more than the call (with 50,000 small files, requests
        // are many and tiny).
        let meta = match std::fs::metadata(&full) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return status(StatusCode::NOT_FOUND, "not found");
            }
            Err(e) => return status(StatusCode::FORBIDDEN, &e.to_string()),
        };
        if meta.is_dir() {
            if !decoded.ends_with('/') {
                let location = format!("{raw}/");
                return (
                    StatusCode::MOVED_PERMANENTLY,
                    [(header::LOCATION, location)],
                )
                    .into_response();
            }
            return self.listing(&full, &decoded, method, headers).await;
        }
        if decoded.ends_with('/') || !meta.is_file() {
            return status(StatusCode::NOT_FOUND, "not found");
        }
        self.file(&full, &meta, method, headers).await
    }

    async fn listing(
        &self,
        dir: &Path,
        url_path: &str,
        method: &Method,
        headers: &HeaderMap,
    ) -> Response {
        let entries = match list_dir(dir).await {
            Ok(e) => e,
            Err(e) => return status(StatusCode::FORBIDDEN, &e.to_string()),
        };
        let wants_json = headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("application/json"));
        let (content_type, body) = if wants_json {
            (
                "application/json",
                serde_json::to_string(&entries).unwrap_or_else(|_| "[]".into()),
            )
        } else {
            let mut html = format!(
                "<html><head><title>Index of {0}</title></head><body><h1>Index of {0}</h1><pre>\n",
                html_escape(url_path)
            );
            for e in &entries {
                let slash = if e.kind == "directory" { "/" } else { "" };
                let href = percent_encoding::utf8_percent_encode(
                    &e.name,
                    percent_encoding::NON_ALPHANUMERIC,
                );
                html.push_str(&format!(
                    "<a href=\"{href}{slash}\">{}{slash}</a> {} {}\n",
                    html_escape(&e.name),
                    e.mtime,
                    e.size.map(|s| s.to_string()).unwrap_or_else(|| "-".into())
                ));
            }
            html.push_str("</pre></body></html>\n");
            ("text/html", html)
        };
        let len = body.len() as u64;
        let body = if method == Method::HEAD {
            Body::empty()
        } else {
            self.counters.add_bytes(len);
            Body::from(body)
        };
        (
            [
                (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
                (header::CONTENT_LENGTH, HeaderValue::from(len)),
            ],
            body,
        )
            .into_response()
    }

    async fn file(
        &self,
        path: &Path,
        meta: &std::fs::Metadata,
        method: &Method,
        headers: &HeaderMap,
    ) -> Response {
        let len = meta.len();
        let etag = etag_for(meta);
        if let Some(value) = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok())
            && !if_match_allows(value, &etag)
        {
            return (
                StatusCode::PRECONDITION_FAILED,
                [(header::ETAG, etag)],
                "ETag does not match If-Match\n",
            )
                .into_response();
        }
        let range = headers
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok())
            .map(|v| parse_range(v, len))
            .unwrap_or(RangeRequest::Full);
        let mut builder = Response::builder()
            .header(header::ACCEPT_RANGES, "bytes")
            .header(header::ETAG, &etag)
            .header(
                header::LAST_MODIFIED,
                httpdate::fmt_http_date(meta.modified().unwrap_or(SystemTime::UNIX_EPOCH)),
            )
            .header(header::CONTENT_TYPE, "application/octet-stream");
        let (start, count) = match range {
            RangeRequest::Full => {
                builder = builder.status(StatusCode::OK);
                (0, len)
            }
            RangeRequest::Partial { start, end } => {
                builder = builder
                    .status(StatusCode::PARTIAL_CONTENT)
                    .header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}"));
                (start, end - start + 1)
            }
            RangeRequest::Unsatisfiable => {
                return (
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    [(header::CONTENT_RANGE, format!("bytes */{len}"))],
                )
                    .into_response();
            }
        };
        builder = builder.header(header::CONTENT_LENGTH, count);
        let body = if method == Method::HEAD || count == 0 {
            Body::empty()
        } else if count <= WHOLE_READ_MAX {
            // One open and read, inline as the metadata above (most
            // requests of a dataset of small files), rather than a stream
            // with a buffer and blocking reads of its own.
            let read = std::fs::File::open(path).and_then(|file| {
                let mut buf = vec![0; count as usize];
                file.read_exact_at(&mut buf, start)?;
                Ok(buf)
            });
            match read {
                Ok(buf) => {
                    self.counters.add_bytes(count);
                    Body::from(buf)
                }
                Err(e) => return status(StatusCode::FORBIDDEN, &e.to_string()),
            }
        } else {
            let mut file = match tokio::fs::File::open(path).await {
                Ok(f) => f,
                Err(e) => return status(StatusCode::FORBIDDEN, &e.to_string()),
            };
            if let Err(e) = file.seek(SeekFrom::Start(start)).await {
                return status(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string());
            }
            let counters = self.counters.clone();
            let stream =
                ReaderStream::with_capacity(file.take(count), 256 * 1024).map(move |chunk| {
                    if let Ok(bytes) = &chunk {
                        counters.add_bytes(bytes.len() as u64);
                    }
                    chunk
                });
            Body::from_stream(stream)
        };
        builder
            .body(body)
            .unwrap_or_else(|e| status(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeRequest::*;
        let partial = |start, end| Partial { start, end };
        for (header, size, want) in [
            ("bytes=0-9", 100, partial(0, 9)),
            ("bytes=90-", 100, partial(90, 99)),
            ("bytes=90-500", 100, partial(90, 99)),
            ("bytes=-10", 100, partial(90, 99)),
            ("bytes=-500", 100, partial(0, 99)),
            ("bytes=100-", 100, Unsatisfiable),
            ("bytes=-0", 100, Unsatisfiable),
            ("bytes=0-0", 0, Unsatisfiable),
            // Invalid, multi-range and other units: ignored.
            ("bytes=5-2", 100, Full),
            ("bytes=0-1,5-6", 100, Full),
            ("items=0-1", 100, Full),
            ("bytes=x-1", 100, Full),
        ] {
            assert_eq!(parse_range(header, size), want, "{header} of {size}");
        }
    }

    #[test]
    fn if_match() {
        assert!(if_match_allows("\"a\"", "\"a\""));
        assert!(if_match_allows("\"b\", \"a\"", "\"a\""));
        assert!(if_match_allows("*", "\"a\""));
        assert!(!if_match_allows("\"b\"", "\"a\""));
        assert!(
            !if_match_allows("W/\"a\"", "\"a\""),
            "weak tags never match strongly"
        );
    }

    #[test]
    fn paths_cannot_leave_the_root() {
        assert_eq!(
            relative_path("/a/b/c.bin"),
            Some(PathBuf::from("a/b/c.bin"))
        );
        assert_eq!(relative_path("/"), Some(PathBuf::new()));
        assert_eq!(relative_path("/a/../../etc/passwd"), None);
        assert_eq!(relative_path("/./a"), None);
    }
}
