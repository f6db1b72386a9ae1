//! Hugging Face origins against a fake Hub on 127.0.0.1 that implements the
//! revision, tree (paginated) and resolve endpoints, and a second server
//! standing in for the LFS CDN the Hub redirects to.

// Test fixtures may panic on anything unexpected.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::Response;
use bytes::Bytes;
use swarmseed_origin::{OriginClient, OriginError, OriginOptions};
use swarmseed_proto::Reason;
use swarmseed_proto::pb::Origin;

mod origin_support;
use origin_support::{
    content, entry, list_all, listed_paths, percent_decode as decode, respond, serve_range,
    spawn_server,
};

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";
const OLD_SHA: &str = "fedcba9876543210fedcba9876543210fedcba98";
const TOKEN: &str = "hf_test_token";
const PAGE: usize = 2;

struct RepoFile {
    content: Bytes,
    /// sha256 of an LFS file (served from the CDN), else the git blob oid.
    lfs: bool,
    oid: String,
}

impl RepoFile {
    /// A file with the Hub's id for it: the content's SHA-256 for LFS,
    /// git's blob id otherwise.
    fn new(content: Bytes, lfs: bool) -> Self {
        let oid = if lfs {
            hex(ring::digest::digest(&ring::digest::SHA256, &content).as_ref())
        } else {
            git_blob_id(&content)
        };
        Self { content, lfs, oid }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `git hash-object` of `content`.
fn git_blob_id(content: &[u8]) -> String {
    let mut h = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    h.update(format!("blob {}\0", content.len()).as_bytes());
    h.update(content);
    hex(h.finish().as_ref())
}

struct Hub {
    /// "models/org/name" or "datasets/org/name" → path → file, at SHA.
    repos: BTreeMap<String, BTreeMap<String, RepoFile>>,
    /// Repositories that need the token.
    private: Vec<String>,
    cdn: Mutex<String>,
    revision_calls: AtomicU32,
    tree_pages: AtomicU32,
    hub_saw_token: AtomicU32,
}

#[derive(Default)]
struct Cdn {
    blobs: Mutex<BTreeMap<String, Bytes>>,
    requests: AtomicU32,
    with_authorization: AtomicU32,
    ranged: AtomicU32,
}

fn json(value: serde_json::Value) -> Response {
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(serde_json::to_vec(&value).unwrap()))
        .unwrap()
}

async fn hub(State(hub): State<Arc<Hub>>, uri: Uri, headers: HeaderMap) -> Response {
    let authorized = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {TOKEN}"));
    if authorized {
        hub.hub_saw_token.fetch_add(1, Ordering::SeqCst);
    }
    let path = uri.path().trim_start_matches('/');
    let query = uri.query().unwrap_or("");
    let segments: Vec<&str> = path.split('/').collect();
    // Private repositories look missing without the token, as on the Hub.
    let allowed = |repo: &str| authorized || !hub.private.iter().any(|p| p == repo);
    if segments.first() == Some(&"api") && segments.len() >= 6 {
        let repo = segments[1..4].join("/");
        let Some(files) = hub.repos.get(&repo) else {
            return respond(StatusCode::NOT_FOUND);
        };
        if !allowed(&repo) {
            return respond(StatusCode::UNAUTHORIZED);
        }
        match segments[4] {
            "revision" => {
                hub.revision_calls.fetch_add(1, Ordering::SeqCst);
                let revision = decode(&segments[5..].join("/"));
                return match revision.as_str() {
                    "main" | "v1" | SHA => json(serde_json::json!({"id": repo, "sha": SHA})),
                    _ => respond(StatusCode::NOT_FOUND),
                };
            }
            "tree" => {
                if segments[5] != SHA {
                    return respond(StatusCode::NOT_FOUND);
                }
                assert!(query.contains("recursive=true"), "{query}");
                hub.tree_pages.fetch_add(1, Ordering::SeqCst);
                let under = decode(&segments[6..].join("/"));
                // Files and the directories above them, like the Hub.
                let mut entries = BTreeMap::new();
                for (p, f) in files
                    .iter()
                    .filter(|(p, _)| under.is_empty() || p.starts_with(&format!("{under}/")))
                {
                    let mut dir = p.as_str();
                    while let Some((parent, _)) = dir.rsplit_once('/') {
                        if parent.len() > under.len() {
                            entries.insert(parent.to_owned(), serde_json::json!({"type": "directory", "oid": "d", "size": 0, "path": parent}));
                        }
                        dir = parent;
                    }
                    let mut e = serde_json::json!({"type": "file", "path": p, "oid": if f.lfs { "b10b".repeat(10) } else { f.oid.clone() }, "size": if f.lfs { 134 } else { f.content.len() }});
                    if f.lfs {
                        e["lfs"] = serde_json::json!({"oid": f.oid, "size": f.content.len(), "pointerSize": 134});
                    }
                    entries.insert(p.clone(), e);
                }
                let entries: Vec<_> = entries.into_values().collect();
                let cursor: usize = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("cursor="))
                    .map_or(0, |c| c.parse().unwrap());
                let page: Vec<_> = entries.iter().skip(cursor).take(PAGE).cloned().collect();
                let mut response = json(serde_json::Value::Array(page));
                if cursor + PAGE < entries.len() {
                    // The Hub names itself in its links; clients must stay on
                    // their endpoint (mirrors).
                    let next = format!(
                        "<https://huggingface.co/{path}?recursive=true&expand=false&cursor={}>; rel=\"next\"",
                        cursor + PAGE
                    );
                    response
                        .headers_mut()
                        .insert(header::LINK, next.parse().unwrap());
                }
                return response;
            }
            _ => return respond(StatusCode::NOT_FOUND),
        }
    }
    // Resolve: [datasets/]org/name/resolve/{rev}/{path}
    let Some(at) = segments.iter().position(|s| *s == "resolve") else {
        return respond(StatusCode::NOT_FOUND);
    };
    let repo = if at == 2 {
        format!("models/{}", segments[..2].join("/"))
    } else {
        segments[..at].join("/")
    };
    let Some(files) = hub.repos.get(&repo) else {
        return respond(StatusCode::NOT_FOUND);
    };
    if !allowed(&repo) {
        return respond(StatusCode::UNAUTHORIZED);
    }
    if segments.get(at + 1) != Some(&SHA) {
        return respond(StatusCode::NOT_FOUND);
    }
    let file_path = decode(&segments[at + 2..].join("/"));
    let Some(file) = files.get(&file_path) else {
        return respond(StatusCode::NOT_FOUND);
    };
    let builder = Response::builder().header("x-repo-commit", SHA);
    if file.lfs {
        let cdn = hub.cdn.lock().unwrap().clone();
        return builder
            .status(StatusCode::FOUND)
            .header("x-linked-etag", format!("\"{}\"", file.oid))
            .header("x-linked-size", file.content.len())
            .header(
                header::LOCATION,
                format!("{cdn}/blobs/{}?signature=abc", file.oid),
            )
            .body(Body::empty())
            .unwrap();
    }
    serve_range(
        &file.content,
        &headers,
        builder.header(header::ETAG, format!("\"{}\"", file.oid)),
    )
}

async fn cdn(State(cdn): State<Arc<Cdn>>, uri: Uri, headers: HeaderMap) -> Response {
    cdn.requests.fetch_add(1, Ordering::SeqCst);
    if headers.contains_key(header::AUTHORIZATION) {
        cdn.with_authorization.fetch_add(1, Ordering::SeqCst);
        return respond(StatusCode::BAD_REQUEST);
    }
    if headers.contains_key(header::RANGE) {
        cdn.ranged.fetch_add(1, Ordering::SeqCst);
    }
    let oid = uri.path().trim_start_matches("/blobs/");
    let Some(blob) = cdn.blobs.lock().unwrap().get(oid).cloned() else {
        return respond(StatusCode::NOT_FOUND);
    };
    serve_range(
        &blob,
        &headers,
        Response::builder().header(header::ETAG, "\"cdn-etag\""),
    )
}

struct Fixture {
    hub: Arc<Hub>,
    cdn: Arc<Cdn>,
    endpoint: String,
}

fn model_files() -> BTreeMap<String, RepoFile> {
    let mut files = BTreeMap::new();
    let mut add = |path: &str, content: Bytes, lfs: bool| {
        files.insert(path.to_owned(), RepoFile::new(content, lfs));
    };
    add("config.json", Bytes::from_static(b"{\"hidden\": 8}"), false);
    add("README.md", Bytes::from_static(b"# model"), false);
    add("model-00001.safetensors", content(150_000, 1), true);
    add("model-00002.safetensors", content(90_001, 2), true);
    add(
        "tokenizer/vocab.txt",
        Bytes::from_static(b"a\nb\nc\n"),
        false,
    );
    add("tokenizer/merges txt", Bytes::from_static(b"ab"), false);
    files
}

async fn fixture() -> Fixture {
    let mut repos = BTreeMap::new();
    repos.insert("models/org/model".to_owned(), model_files());
    let mut ds = BTreeMap::new();
    ds.insert(
        "train/part-0.parquet".to_owned(),
        RepoFile::new(content(5000, 7), true),
    );
    ds.insert(
        "train/meta.json".to_owned(),
        RepoFile::new(Bytes::from_static(b"{}"), false),
    );
    ds.insert(
        "test/part-0.parquet".to_owned(),
        RepoFile::new(content(10, 8), false),
    );
    repos.insert("datasets/org/data".to_owned(), ds);
    let cdn = Arc::new(Cdn::default());
    for files in repos.values() {
        for f in files.values().filter(|f| f.lfs) {
            cdn.blobs
                .lock()
                .unwrap()
                .insert(f.oid.clone(), f.content.clone());
        }
    }
    let hub = Arc::new(Hub {
        repos,
        private: vec!["models/org/model".to_owned()],
        cdn: Mutex::new(String::new()),
        revision_calls: AtomicU32::new(0),
        tree_pages: AtomicU32::new(0),
        hub_saw_token: AtomicU32::new(0),
    });
    let cdn_url = spawn_server(
        axum::Router::new()
            .fallback(self::cdn)
            .with_state(cdn.clone()),
    )
    .await;
    *hub.cdn.lock().unwrap() = cdn_url;
    let endpoint = spawn_server(
        axum::Router::new()
            .fallback(self::hub)
            .with_state(hub.clone()),
    )
    .await;
    Fixture { hub, cdn, endpoint }
}

fn options() -> OriginOptions {
    origin_support::options(1)
}

fn origin(fx: &Fixture, uri: &str, token: bool) -> Origin {
    let mut origin = Origin {
        uri: uri.into(),
        endpoint: fx.endpoint.clone(),
        allow_http: true,
        ..Default::default()
    };
    if token {
        origin.credentials.insert("HF_TOKEN".into(), TOKEN.into());
    }
    origin
}

#[tokio::test]
async fn lists_a_model_at_a_commit_across_pages() {
    let fx = fixture().await;
    let client = OriginClient::new(&origin(&fx, "hf://org/model", true), options()).unwrap();
    let paths = [
        "README.md",
        "config.json",
        "model-00001.safetensors",
        "model-00002.safetensors",
        "tokenizer/merges txt",
        "tokenizer/vocab.txt",
    ];
    let listing = list_all(&client, SHA, &paths).await;
    // 7 entries (6 files + 1 directory), 2 a page.
    assert_eq!(fx.hub.tree_pages.load(Ordering::SeqCst), 4);
    let lfs = entry(&listing.files, "model-00002.safetensors");
    assert_eq!(
        (lfs.size, lfs.etag.as_str()),
        (
            90_001,
            hex(ring::digest::digest(&ring::digest::SHA256, &content(90_001, 2)).as_ref()).as_str()
        )
    );
    let small = entry(&listing.files, "config.json");
    assert_eq!(
        (small.size, small.etag.as_str()),
        (13, git_blob_id(b"{\"hidden\": 8}").as_str())
    );
    assert!(listing.files.iter().all(|f| f.mode == 0o444));

    let only = client
        .list(&["*.safetensors".to_string()], &["*00002*".to_string()])
        .await
        .unwrap();
    let paths = listed_paths(&only.files);
    assert_eq!(paths, ["model-00001.safetensors"]);
    assert_eq!(only.weak_validators.count, 0);

    // Globs that keep nothing: no files, as for every other source.
    let err = client.list(&["*.gguf".to_string()], &[]).await.unwrap_err();
    assert_eq!(err.label(), "no_files", "{err}");
    assert!(
        err.to_string()
            .ends_with("6 file(s) listed, none matches include [\"*.gguf\"]"),
        "{err}"
    );
}

#[tokio::test]
async fn reads_git_and_lfs_files_and_keeps_the_token_on_the_hub() {
    let fx = fixture().await;
    let client = OriginClient::new(&origin(&fx, "hf://org/model@v1", true), options()).unwrap();
    let listing = client.list(&[], &[]).await.unwrap();

    let config = entry(&listing.files, "config.json");
    assert_eq!(
        client.read_range(config, 1..9).await.unwrap(),
        &b"\"hidden\""[..]
    );
    let spaced = entry(&listing.files, "tokenizer/merges txt");
    assert_eq!(client.read_range(spaced, 0..2).await.unwrap(), &b"ab"[..]);

    let model = entry(&listing.files, "model-00001.safetensors");
    let got = client.read_range(model, 10_000..110_000).await.unwrap();
    assert_eq!(got, content(150_000, 1).slice(10_000..110_000));
    assert_eq!(fx.cdn.requests.load(Ordering::SeqCst), 1);
    assert_eq!(
        fx.cdn.ranged.load(Ordering::SeqCst),
        1,
        "the CDN must get the Range header"
    );
    assert_eq!(
        fx.cdn.with_authorization.load(Ordering::SeqCst),
        0,
        "the token leaked to the CDN"
    );
    assert!(fx.hub.hub_saw_token.load(Ordering::SeqCst) >= 4);
}

#[tokio::test]
async fn agents_read_at_the_pinned_commit_without_resolving() {
    let fx = fixture().await;
    let lister = OriginClient::new(&origin(&fx, "hf://org/model", true), options()).unwrap();
    let listing = lister.list(&[], &[]).await.unwrap();
    let calls = fx.hub.revision_calls.load(Ordering::SeqCst);

    let mut pinned = origin(&fx, "hf://org/model", true);
    pinned.revision = listing.revision.clone();
    let agent = OriginClient::new(&pinned, options()).unwrap();
    let file = entry(&listing.files, "model-00002.safetensors");
    let got = agent.read_range(file, 0..90_001).await.unwrap();
    assert_eq!(got, content(90_001, 2));
    assert_eq!(fx.hub.revision_calls.load(Ordering::SeqCst), calls);

    // A commit the Hub no longer has (or never had): nothing is read.
    pinned.revision = OLD_SHA.into();
    let stale = OriginClient::new(&pinned, options()).unwrap();
    let err = stale.read_range(file, 0..10).await.unwrap_err();
    assert_eq!(
        err,
        OriginError::Changed {
            path: "model-00002.safetensors".into()
        }
    );
}

#[tokio::test]
async fn a_blob_that_is_not_the_listed_one_is_changed() {
    let fx = fixture().await;
    let client = OriginClient::new(&origin(&fx, "hf://org/model", true), options()).unwrap();
    let listing = client.list(&[], &[]).await.unwrap();
    for path in ["model-00001.safetensors", "config.json"] {
        let mut file = entry(&listing.files, path).clone();
        file.etag = "9".repeat(64);
        let err = client.read_range(&file, 0..5).await.unwrap_err();
        assert_eq!(err, OriginError::Changed { path: path.into() });
    }
    // Nothing reached the CDN for the mismatching LFS file.
    assert_eq!(fx.cdn.ranged.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn datasets_revisions_and_subdirectories() {
    let fx = fixture().await;
    let client = OriginClient::new(
        &origin(&fx, "hf://datasets/org/data@main/train", false),
        options(),
    )
    .unwrap();
    let paths = ["meta.json", "part-0.parquet"];
    let listing = list_all(&client, SHA, &paths).await;
    let part = entry(&listing.files, "part-0.parquet");
    assert_eq!(part.size, 5000);
    let got = client.read_range(part, 4000..5000).await.unwrap();
    assert_eq!(got, content(5000, 7).slice(4000..5000));
    let meta = entry(&listing.files, "meta.json");
    assert_eq!(client.read_range(meta, 0..2).await.unwrap(), &b"{}"[..]);
}

#[tokio::test]
async fn missing_repositories_revisions_and_tokens_are_reported() {
    let fx = fixture().await;
    let missing = OriginClient::new(&origin(&fx, "hf://org/nothing", true), options()).unwrap();
    let err = missing.list(&[], &[]).await.unwrap_err();
    assert_eq!(err.label(), "not_found");
    assert_eq!(err.reason(), Reason::InvalidSource);

    let bad_rev = OriginClient::new(&origin(&fx, "hf://org/model@nope", true), options()).unwrap();
    assert_eq!(
        bad_rev.list(&[], &[]).await.unwrap_err().label(),
        "not_found"
    );

    let no_token = OriginClient::new(&origin(&fx, "hf://org/model", false), options()).unwrap();
    let err = no_token.list(&[], &[]).await.unwrap_err();
    assert_eq!(err.label(), "denied");
    assert_eq!(err.reason(), Reason::SourceDenied);
    assert!(err.to_string().contains("HF_TOKEN is not set"), "{err}");
}

#[tokio::test]
async fn a_whole_file_whose_bytes_are_not_its_listed_id_is_refused() {
    let fx = fixture().await;
    let client = OriginClient::new(&origin(&fx, "hf://org/model", true), options()).unwrap();
    let listing = client.list(&[], &[]).await.unwrap();
    let model = entry(&listing.files, "model-00002.safetensors").clone();
    // The CDN serves other bytes under the listed LFS id (a stale or
    // corrupt object): a read of the whole file hashes it and refuses.
    let tampered = {
        let mut b = content(90_001, 2).to_vec();
        b[45_000] ^= 1;
        Bytes::from(b)
    };
    fx.cdn
        .blobs
        .lock()
        .unwrap()
        .insert(model.etag.clone(), tampered.clone());
    let err = client.read_range(&model, 0..90_001).await.unwrap_err();
    assert_eq!(
        err,
        OriginError::Changed {
            path: "model-00002.safetensors".into()
        }
    );
    // A part of a file cannot be hashed alone: its bytes come back as
    // served (the chunk digests and spec.digest guard those).
    let part = client.read_range(&model, 0..1000).await.unwrap();
    assert_eq!(part, tampered.slice(0..1000));
}
