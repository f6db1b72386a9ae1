//! HTTP(S) origins against an in-test server that behaves like nginx with
//! `autoindex_format json`: ranges, ETags, If-Match, HEAD.

// Test fixtures may panic on anything unexpected.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::Response;
use bytes::Bytes;
use swarmseed_origin::{OriginClient, OriginError, OriginOptions};
use swarmseed_proto::Reason;
use swarmseed_proto::pb::{FileEntry, Origin};

mod origin_support;
use origin_support::{
    assert_reads_ranges, content, entry, list_all, list_error, listed_paths, percent_decode,
    respond, serve_range, spawn_server,
};

#[derive(Default)]
struct Site {
    /// Path (no leading '/') → content. ETags derive from a per-file
    /// generation so that rewriting a file changes its ETag.
    files: Mutex<BTreeMap<String, (Bytes, u32)>>,
    /// Answer this many requests with 503 first.
    fail_next: AtomicU32,
    /// Behave like a server without Range support (always 200).
    ignore_range: AtomicBool,
    /// Behave like a server that ignores If-Match.
    ignore_if_match: AtomicBool,
    /// Answer HEAD with 405, like servers (and GET-only presigned URLs)
    /// that do not do HEAD.
    no_head: AtomicBool,
    /// ETags as nginx makes them, from modification time and size
    /// (`"<mtime hex>-<size hex>"`), with every file's mtime the same.
    nginx_etags: AtomicBool,
    /// Send `Repr-Digest: sha-256=…` of the current content (HEAD and GET).
    repr_digest: AtomicBool,
    /// ... but only in answers to HEAD.
    repr_digest_head_only: AtomicBool,
    /// Extra raw listing entries of the top directory (a hostile server).
    extra_entries: Mutex<Vec<serde_json::Value>>,
    /// Bearer token required when set.
    token: Mutex<Option<String>>,
    requests: AtomicU32,
    /// Each request waits this long (milliseconds) inside the server.
    delay_ms: AtomicU32,
    in_flight: AtomicU32,
    max_in_flight: AtomicU32,
}

impl Site {
    fn put(&self, path: &str, content: impl Into<Bytes>) {
        let mut files = self.files.lock().unwrap();
        let generation = files.get(path).map_or(1, |(_, g)| g + 1);
        files.insert(path.to_owned(), (content.into(), generation));
    }

    /// Rewrites a file in place keeping its generation: with nginx ETags,
    /// the same size and mtime give the same ETag.
    fn rewrite_in_place(&self, path: &str, content: impl Into<Bytes>) {
        let mut files = self.files.lock().unwrap();
        let generation = files.get(path).map_or(1, |(_, g)| *g);
        files.insert(path.to_owned(), (content.into(), generation));
    }

    fn etag(&self, path: &str, content: &Bytes, generation: u32) -> String {
        if self.nginx_etags.load(Ordering::SeqCst) {
            // mtime 2026-11-25 06:00:00 UTC, as every file's.
            format!("\"{:x}-{:x}\"", 1_795_586_400u64, content.len())
        } else {
            etag(path, generation)
        }
    }
}

fn etag(path: &str, generation: u32) -> String {
    format!("\"{:x}-{generation}\"", path.len())
}

async fn serve(
    State(site): State<Arc<Site>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let now = site.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    site.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let delay = site.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay.into())).await;
    }
    let response = answer(&site, method, uri, headers);
    site.in_flight.fetch_sub(1, Ordering::SeqCst);
    response
}

fn answer(site: &Site, method: Method, uri: Uri, headers: HeaderMap) -> Response {
    site.requests.fetch_add(1, Ordering::SeqCst);
    if site
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return respond(StatusCode::SERVICE_UNAVAILABLE);
    }
    if let Some(token) = site.token.lock().unwrap().clone() {
        let want = format!("Bearer {token}");
        if headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            != Some(want.as_str())
        {
            return respond(StatusCode::UNAUTHORIZED);
        }
    }
    let path = percent_decode(uri.path().trim_start_matches('/'));
    let files = site.files.lock().unwrap().clone();
    if path.is_empty() || path.ends_with('/') {
        // nginx autoindex_format json: the entries directly in this directory.
        let mut entries = BTreeMap::new();
        for (name, (content, _)) in files.range(path.clone()..) {
            let Some(rest) = name.strip_prefix(&path) else {
                break;
            };
            let entry = match rest.split_once('/') {
                Some((dir, _)) => {
                    serde_json::json!({"name": dir, "type": "directory", "mtime": "Wed, 25 Nov 2026 06:00:00 GMT"})
                }
                None => {
                    serde_json::json!({"name": rest, "type": "file", "mtime": "Wed, 25 Nov 2026 06:00:00 GMT", "size": content.len()})
                }
            };
            entries.insert(entry["name"].as_str().unwrap().to_owned(), entry);
        }
        if entries.is_empty() && !path.is_empty() {
            return respond(StatusCode::NOT_FOUND);
        }
        let mut entries: Vec<_> = entries.into_values().collect();
        if path.is_empty() {
            entries.extend(site.extra_entries.lock().unwrap().iter().cloned());
        }
        let body = serde_json::to_vec(&entries).unwrap();
        return Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .unwrap();
    }
    let Some((content, generation)) = files.get(&path).cloned() else {
        return respond(StatusCode::NOT_FOUND);
    };
    let tag = site.etag(&path, &content, generation);
    let mut builder = Response::builder();
    if site.repr_digest.load(Ordering::SeqCst)
        && (method == Method::HEAD || !site.repr_digest_head_only.load(Ordering::SeqCst))
    {
        let sha = ring::digest::digest(&ring::digest::SHA256, &content);
        builder = builder.header("repr-digest", format!("sha-256=:{}:", base64(sha.as_ref())));
    }
    let builder = builder
        .header(header::ETAG, &tag)
        .header(header::LAST_MODIFIED, "Wed, 25 Nov 2026 06:00:00 GMT")
        .header(header::ACCEPT_RANGES, "bytes");
    if method == Method::HEAD && site.no_head.load(Ordering::SeqCst) {
        return respond(StatusCode::METHOD_NOT_ALLOWED);
    }
    if method == Method::HEAD {
        return builder
            .header(header::CONTENT_LENGTH, content.len())
            .body(Body::empty())
            .unwrap();
    }
    if !site.ignore_if_match.load(Ordering::SeqCst)
        && let Some(want) = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok())
        && want != tag
    {
        return respond(StatusCode::PRECONDITION_FAILED);
    }
    if site.ignore_range.load(Ordering::SeqCst) {
        return builder.body(Body::from(content)).unwrap();
    }
    serve_range(&content, &headers, builder)
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

async fn start(site: Arc<Site>) -> String {
    spawn_server(axum::Router::new().fallback(serve).with_state(site)).await
}

fn sample_site() -> Arc<Site> {
    let site = Arc::new(Site::default());
    site.put("data/config.json", &b"{\"a\": 1}"[..]);
    site.put("data/weights/model-00001.safetensors", content(300_000, 1));
    site.put("data/weights/model-00002.safetensors", content(200_001, 2));
    site.put("data/weights/optimizer.bin", content(1000, 3));
    site.put("data/a dir/with #odd name.txt", &b"odd"[..]);
    site.put("data/empty.txt", Bytes::new());
    site.put("elsewhere/ignored.txt", &b"x"[..]);
    site
}

fn fast() -> OriginOptions {
    origin_support::options(3)
}

fn origin(uri: String) -> Origin {
    Origin {
        uri,
        ..Default::default()
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn lists_a_directory_tree_sorted_with_sizes_and_etags() {
    let site = sample_site();
    let base = start(site.clone()).await;
    let client = OriginClient::new(&origin(format!("{base}/data/")), fast()).unwrap();
    let paths = [
        "a dir/with #odd name.txt",
        "config.json",
        "empty.txt",
        "weights/model-00001.safetensors",
        "weights/model-00002.safetensors",
        "weights/optimizer.bin",
    ];
    let listing = list_all(&client, "", &paths).await;
    let model = entry(&listing.files, "weights/model-00002.safetensors");
    assert_eq!(model.size, 200_001);
    assert_eq!(model.etag, etag("data/weights/model-00002.safetensors", 1));
    assert_eq!(model.mode, 0o444);
    assert_eq!(entry(&listing.files, "empty.txt").size, 0);

    let filtered = client
        .list(
            &strings(&["**/*.safetensors", "*.json"]),
            &strings(&["**/*00002*"]),
        )
        .await
        .unwrap();
    let paths = listed_paths(&filtered.files);
    assert_eq!(paths, ["config.json", "weights/model-00001.safetensors"]);
}

#[tokio::test]
async fn reads_exact_ranges_including_odd_names() {
    let site = sample_site();
    let base = start(site.clone()).await;
    let client = OriginClient::new(&origin(format!("{base}/data/")), fast()).unwrap();
    let listing = client.list(&[], &[]).await.unwrap();
    let model = entry(&listing.files, "weights/model-00001.safetensors");
    let ranges = [0..1, 0..300_000, 12_345..200_000, 299_999..300_000];
    assert_reads_ranges(&client, model, &content(300_000, 1), &ranges).await;
    let odd = entry(&listing.files, "a dir/with #odd name.txt");
    assert_eq!(client.read_range(odd, 0..3).await.unwrap(), &b"odd"[..]);
    // Outside the listed size: refused before any request.
    let before = site.requests.load(Ordering::SeqCst);
    let err = client
        .read_range(model, 299_000..300_001)
        .await
        .unwrap_err();
    assert_eq!(err.label(), "protocol");
    assert_eq!(site.requests.load(Ordering::SeqCst), before);
    assert!(client.read_range(model, 5..5).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_single_file_uri_lists_one_file() {
    let site = sample_site();
    let base = start(site.clone()).await;
    let client = OriginClient::new(
        &origin(format!("{base}/data/weights/optimizer.bin")),
        fast(),
    )
    .unwrap();
    let listing = client.list(&[], &[]).await.unwrap();
    assert_eq!(listing.files.len(), 1);
    let file = &listing.files[0];
    assert_eq!((file.path.as_str(), file.size), ("optimizer.bin", 1000));
    let got = client.read_range(file, 10..20).await.unwrap();
    assert_eq!(got, content(1000, 3).slice(10..20));

    let missing = OriginClient::new(&origin(format!("{base}/data/nope.bin")), fast()).unwrap();
    let err = missing.list(&[], &[]).await.unwrap_err();
    assert_eq!(
        err,
        OriginError::NotFound {
            path: "nope.bin".into()
        }
    );
}

#[tokio::test]
async fn a_file_changed_after_listing_is_never_read() {
    let site = sample_site();
    let base = start(site.clone()).await;
    let client = OriginClient::new(&origin(format!("{base}/data/")), fast()).unwrap();
    let listing = client.list(&[], &[]).await.unwrap();
    let config = entry(&listing.files, "config.json").clone();
    assert_eq!(
        client.read_range(&config, 0..8).await.unwrap(),
        &b"{\"a\": 1}"[..]
    );

    site.put("data/config.json", &b"{\"a\": 2}"[..]);
    let err = client.read_range(&config, 0..8).await.unwrap_err();
    assert_eq!(
        err,
        OriginError::Changed {
            path: "config.json".into()
        }
    );
    assert_eq!(err.reason(), Reason::SourceChanged);

    // A server that ignores If-Match still names the new ETag.
    site.ignore_if_match.store(true, Ordering::SeqCst);
    let err = client.read_range(&config, 0..8).await.unwrap_err();
    assert_eq!(err.label(), "changed");

    // Deleted since listing.
    site.files.lock().unwrap().remove("data/empty.txt");
    site.files
        .lock()
        .unwrap()
        .remove("data/weights/optimizer.bin");
    let gone = entry(&listing.files, "weights/optimizer.bin");
    assert_eq!(
        client.read_range(gone, 0..10).await.unwrap_err().label(),
        "changed"
    );
}

#[tokio::test]
async fn a_server_without_range_support_still_yields_only_the_range() {
    let site = sample_site();
    site.ignore_range.store(true, Ordering::SeqCst);
    let base = start(site.clone()).await;
    let client = OriginClient::new(&origin(format!("{base}/data/")), fast()).unwrap();
    let listing = client.list(&[], &[]).await.unwrap();
    let model = entry(&listing.files, "weights/model-00002.safetensors");
    let got = client.read_range(model, 100_000..100_100).await.unwrap();
    assert_eq!(got, content(200_001, 2).slice(100_000..100_100));
}

#[tokio::test]
async fn transient_errors_are_retried_then_succeed() {
    let site = sample_site();
    let base = start(site.clone()).await;
    let client = OriginClient::new(&origin(format!("{base}/data/")), fast()).unwrap();
    site.fail_next.store(2, Ordering::SeqCst);
    let listing = client.list(&[], &[]).await.unwrap();
    assert_eq!(listing.files.len(), 6);

    let model = entry(&listing.files, "weights/model-00001.safetensors");
    site.fail_next.store(2, Ordering::SeqCst);
    let before = site.requests.load(Ordering::SeqCst);
    let got = client.read_range(model, 0..1000).await.unwrap();
    assert_eq!(got, content(300_000, 1).slice(0..1000));
    assert_eq!(site.requests.load(Ordering::SeqCst) - before, 3);

    // More failures than retries: the error says the origin is unavailable.
    let once = OriginClient::new(
        &origin(format!("{base}/data/")),
        OriginOptions {
            max_retries: 1,
            ..fast()
        },
    )
    .unwrap();
    site.fail_next.store(5, Ordering::SeqCst);
    let err = once.read_range(model, 0..1000).await.unwrap_err();
    assert_eq!(err.label(), "unavailable");
    assert_eq!(err.reason(), Reason::SourceUnavailable);
    assert!(err.to_string().contains("503"), "{err}");
    site.fail_next.store(0, Ordering::SeqCst);
}

#[tokio::test]
async fn a_hanging_server_times_out_within_the_configured_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    // Accepts connections and never answers.
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            keep.lock().unwrap().push(socket);
        }
    });
    let options = OriginOptions {
        request_timeout: Duration::from_millis(300),
        max_retries: 1,
        ..fast()
    };
    let client = OriginClient::new(&origin(format!("http://{address}/data/")), options).unwrap();
    let started = Instant::now();
    let err = client.list(&[], &[]).await.unwrap_err();
    let elapsed = started.elapsed();
    assert_eq!(err.label(), "unavailable", "{err}");
    assert!(err.to_string().contains("no answer within"), "{err}");
    // Two attempts of 300 ms and one pause of at most 200 ms.
    assert!(elapsed >= Duration::from_millis(600), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");

    let file = FileEntry {
        path: "x.bin".into(),
        size: 100,
        etag: "\"e\"".into(),
        ..Default::default()
    };
    let started = Instant::now();
    let err = client.read_range(&file, 0..100).await.unwrap_err();
    assert_eq!(err.label(), "unavailable");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn bandwidth_limit_is_shared_by_all_reads_of_a_client() {
    let site = Arc::new(Site::default());
    site.put("big.bin", content(1 << 20, 9));
    let base = start(site.clone()).await;
    let uri = format!("{base}/");
    let free = OriginClient::new(&origin(uri.clone()), fast()).unwrap();
    let listing = free.list(&[], &[]).await.unwrap();
    let big = listing.files[0].clone();

    let started = Instant::now();
    free.read_range(&big, 0..1 << 20).await.unwrap();
    let unlimited = started.elapsed();

    let rate = 1 << 20; // 1 MiB/s, with a quarter second of burst
    let limited = OriginClient::new(
        &origin(uri),
        OriginOptions {
            bandwidth_bytes_per_sec: rate,
            ..fast()
        },
    )
    .unwrap();
    let started = Instant::now();
    let twin = limited.clone();
    let (a, b) = tokio::join!(
        limited.read_range(&big, 0..1 << 19),
        twin.read_range(&big, 1 << 19..1 << 20)
    );
    let elapsed = started.elapsed();
    let mut whole = a.unwrap().to_vec();
    whole.extend_from_slice(&b.unwrap());
    assert_eq!(whole, content(1 << 20, 9));
    // 1 MiB at 1 MiB/s after a 256 KiB burst: about 0.75 s.
    assert!(elapsed >= Duration::from_millis(600), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    assert!(
        elapsed > unlimited * 3,
        "limited {elapsed:?} vs unlimited {unlimited:?}"
    );
}

#[tokio::test]
async fn bearer_tokens_are_sent_and_refusals_reported() {
    let site = sample_site();
    *site.token.lock().unwrap() = Some("s3cret".into());
    let base = start(site.clone()).await;
    let anonymous = OriginClient::new(&origin(format!("{base}/data/")), fast()).unwrap();
    let err = anonymous.list(&[], &[]).await.unwrap_err();
    assert_eq!(err.label(), "denied");
    assert_eq!(err.reason(), Reason::SourceDenied);

    let mut with_token = origin(format!("{base}/data/"));
    with_token
        .credentials
        .insert("HTTP_BEARER_TOKEN".into(), "s3cret".into());
    let client = OriginClient::new(&with_token, fast()).unwrap();
    let listing = client.list(&[], &[]).await.unwrap();
    let config = entry(&listing.files, "config.json");
    assert_eq!(
        client.read_range(config, 0..8).await.unwrap(),
        &b"{\"a\": 1}"[..]
    );
}

#[tokio::test]
async fn a_listing_that_is_not_json_is_a_protocol_error() {
    let app = axum::Router::new().fallback(|| async { "<html>index</html>" });
    let base = spawn_server(app).await;
    let client = OriginClient::new(&origin(format!("{base}/")), fast()).unwrap();
    let err = client.list(&[], &[]).await.unwrap_err();
    assert_eq!(err.label(), "protocol");
    assert!(err.to_string().contains("autoindex"), "{err}");
}

#[tokio::test]
async fn servers_without_head_are_probed_with_a_one_byte_get() {
    let site = sample_site();
    site.no_head.store(true, Ordering::SeqCst);
    let base = start(site.clone()).await;
    let client = OriginClient::new(&origin(format!("{base}/data/")), fast()).unwrap();
    let listing = client.list(&[], &[]).await.unwrap();
    assert_eq!(listing.files.len(), 6);
    let model = entry(&listing.files, "weights/model-00002.safetensors");
    assert_eq!(model.size, 200_001);
    assert_eq!(model.etag, etag("data/weights/model-00002.safetensors", 1));
    assert_eq!(entry(&listing.files, "empty.txt").size, 0);
    let got = client.read_range(model, 7..70).await.unwrap();
    assert_eq!(got, content(200_001, 2).slice(7..70));
}

#[tokio::test]
async fn concurrent_requests_are_bounded_per_client() {
    let site = sample_site();
    let base = start(site.clone()).await;
    let options = OriginOptions {
        concurrency: 2,
        ..fast()
    };
    let client = OriginClient::new(&origin(format!("{base}/data/")), options).unwrap();
    let listing = client.list(&[], &[]).await.unwrap();
    assert!(site.max_in_flight.load(Ordering::SeqCst) <= 2);
    let model = entry(&listing.files, "weights/model-00001.safetensors").clone();
    site.delay_ms.store(50, Ordering::SeqCst);
    site.max_in_flight.store(0, Ordering::SeqCst);
    let reads = (0..8u64).map(|i| {
        let client = client.clone();
        let model = model.clone();
        async move { client.read_range(&model, i * 1000..(i + 1) * 1000).await }
    });
    let results = futures::future::join_all(reads).await;
    let want = content(300_000, 1);
    for (i, got) in results.into_iter().enumerate() {
        assert_eq!(got.unwrap(), want.slice(i * 1000..(i + 1) * 1000));
    }
    assert_eq!(site.max_in_flight.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_empty_directory_or_globs_that_match_nothing_have_no_files() {
    let empty = Arc::new(Site::default());
    let base = start(empty).await;
    let uri = format!("{base}/");
    let err = list_error(&origin(uri.clone()), fast()).await;
    assert_eq!(
        err,
        OriginError::NoFiles {
            uri,
            detail: "the origin lists no file there".into()
        }
    );
    assert_eq!(err.reason(), Reason::InvalidSource);

    let base = start(sample_site()).await;
    let uri = format!("{base}/data/");
    let client = OriginClient::new(&origin(uri.clone()), fast()).unwrap();
    let err = client
        .list(&strings(&["**/*.parquet"]), &[])
        .await
        .unwrap_err();
    assert_eq!(err.reason(), Reason::InvalidSource);
    assert_eq!(
        err.to_string(),
        format!("{uri}: no files: 6 file(s) listed, none matches include [\"**/*.parquet\"]")
    );
    let err = client.list(&[], &strings(&["**"])).await.unwrap_err();
    assert!(
        err.to_string()
            .ends_with("6 file(s) listed, exclude [\"**\"] matches them all"),
        "{err}"
    );
    // One file, filtered out.
    let single = OriginClient::new(&origin(format!("{base}/data/config.json")), fast()).unwrap();
    let err = single.list(&strings(&["*.bin"]), &[]).await.unwrap_err();
    assert_eq!(err.label(), "no_files", "{err}");
}

#[tokio::test]
async fn unusable_names_in_a_directory_listing_are_refused_naming_them() {
    let long = format!("{}.bin", "n".repeat(253));
    let cases = [
        (
            serde_json::json!({"name": "x.txt/", "type": "file", "size": 1}),
            "x.txt/",
        ),
        (serde_json::json!({"name": "..", "type": "directory"}), ".."),
        (
            serde_json::json!({"name": long, "type": "file", "size": 1}),
            long.as_str(),
        ),
        (
            serde_json::json!({"name": "a/b", "type": "file", "size": 1}),
            "a/b",
        ),
    ];
    for (raw, name) in cases {
        let site = sample_site();
        site.extra_entries.lock().unwrap().push(raw);
        let base = start(site).await;
        let err = list_error(&origin(format!("{base}/")), fast()).await;
        assert_eq!(err.label(), "unusable_name", "{name}: {err}");
        assert_eq!(err.reason(), Reason::InvalidSource);
        assert!(err.to_string().contains(&format!("{name:?}")), "{err}");
    }
}

/// nginx's ETag is `"<mtime>-<size>"`: a file rewritten in place at the
/// same size within the same second keeps it, and reads pinned to it can
/// mix old and new bytes. The listing says so.
#[tokio::test]
async fn an_nginx_style_rewrite_in_place_is_reported_as_a_weak_validator() {
    let site = sample_site();
    site.nginx_etags.store(true, Ordering::SeqCst);
    let base = start(site.clone()).await;
    let client = OriginClient::new(&origin(format!("{base}/data/")), fast()).unwrap();
    let listing = client.list(&[], &[]).await.unwrap();
    let weak = &listing.weak_validators;
    // Every file but the empty one (an empty file cannot mix).
    assert_eq!(weak.count, 5);
    assert_eq!(
        weak.examples,
        [
            "a dir/with #odd name.txt",
            "config.json",
            "weights/model-00001.safetensors"
        ]
    );
    let message = weak.message().unwrap();
    assert!(message.starts_with("5 file(s) (a dir/with #odd name.txt, config.json, weights/model-00001.safetensors, ...)"), "{message}");
    assert!(message.contains("spec.digest"), "{message}");

    // Why it matters: the first half read, the file rewritten in place,
    // the second half read, and nothing noticed.
    let model = entry(&listing.files, "weights/model-00001.safetensors");
    let first = client.read_range(model, 0..150_000).await.unwrap();
    site.rewrite_in_place("data/weights/model-00001.safetensors", content(300_000, 77));
    let second = client.read_range(model, 150_000..300_000).await.unwrap();
    assert_eq!(first, content(300_000, 1).slice(..150_000));
    assert_eq!(second, content(300_000, 77).slice(150_000..));

    // Content-derived ETags are not weak.
    let strong = OriginClient::new(
        &origin(format!("{}/data/", start(sample_site()).await)),
        fast(),
    )
    .unwrap()
    .list(&[], &[])
    .await
    .unwrap();
    assert_eq!(strong.weak_validators.count, 0);
    assert_eq!(strong.weak_validators.message(), None);
}

/// The same rewrite, from an origin that offers a digest of the content:
/// refused, naming the file, instead of mixing bytes.
#[tokio::test]
async fn with_a_digest_offered_a_rewrite_in_place_is_refused_naming_the_file() {
    let site = sample_site();
    site.nginx_etags.store(true, Ordering::SeqCst);
    site.repr_digest.store(true, Ordering::SeqCst);
    let base = start(site.clone()).await;
    let client = OriginClient::new(&origin(format!("{base}/data/")), fast()).unwrap();
    let listing = client.list(&[], &[]).await.unwrap();
    assert_eq!(listing.weak_validators.count, 0);
    let model = entry(&listing.files, "weights/model-00001.safetensors");
    assert!(model.checksum.starts_with("sha256:"), "{model:?}");

    // A big file read in parts: each answer repeats the digest.
    let first = client.read_range(model, 0..150_000).await.unwrap();
    assert_eq!(first, content(300_000, 1).slice(..150_000));
    site.rewrite_in_place("data/weights/model-00001.safetensors", content(300_000, 77));
    let err = client
        .read_range(model, 150_000..300_000)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        OriginError::Changed {
            path: "weights/model-00001.safetensors".into()
        }
    );
    assert_eq!(err.reason(), Reason::SourceChanged);

    // A small file read whole, from a server that sends the digest only
    // to HEAD: the bytes are hashed.
    site.repr_digest_head_only.store(true, Ordering::SeqCst);
    let config = entry(&listing.files, "config.json");
    assert_eq!(
        client.read_range(config, 0..8).await.unwrap(),
        &b"{\"a\": 1}"[..]
    );
    site.rewrite_in_place("data/config.json", &b"{\"a\": 2}"[..]);
    let err = client.read_range(config, 0..8).await.unwrap_err();
    assert_eq!(
        err,
        OriginError::Changed {
            path: "config.json".into()
        }
    );
    // A relisting records the new digest and reads the new content.
    let relisted = client.list(&[], &[]).await.unwrap();
    let config = entry(&relisted.files, "config.json");
    assert_eq!(
        client.read_range(config, 0..8).await.unwrap(),
        &b"{\"a\": 2}"[..]
    );
}

/// A listing answer is bounded before it is read: a server announcing more
/// than the bound is refused at once, without reading the body.
#[tokio::test]
async fn an_oversized_listing_is_refused_before_it_is_read() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = socket.read(&mut request).await;
                let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                            content-length: 300000000\r\n\r\n[";
                let _ = socket.write_all(head.as_bytes()).await;
                // Then nothing: a client that waited for the body would hang.
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    let started = Instant::now();
    let err = list_error(&origin(format!("http://{address}/")), fast()).await;
    assert_eq!(err.label(), "protocol", "{err}");
    assert!(
        err.to_string().contains("larger than 268435456 bytes"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}
