//! Fixtures shared by the origin tests (and the agent's swarm tests): test
//! content, a loopback server, HTTP range answers as S3, nginx and the Hub
//! give them, and moto's S3 server.

// Not every test file uses every helper.
#![allow(dead_code)]

use std::ops::Range;
use std::process::Child;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header, response};
use axum::response::Response;
use bytes::Bytes;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use swarmseed_origin::{OriginClient, OriginError, OriginOptions, SourceListing};
use swarmseed_proto::pb::{FileEntry, Origin};

/// Deterministic bytes that differ with position and seed.
pub fn content(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect::<Vec<_>>()
        .into()
}

/// The listed entry for `path`.
pub fn entry<'a>(files: &'a [FileEntry], path: &str) -> &'a FileEntry {
    files
        .iter()
        .find(|f| f.path == path)
        .unwrap_or_else(|| panic!("{path} not listed"))
}

/// The paths of `files`, in listing order.
pub fn listed_paths(files: &[FileEntry]) -> Vec<&str> {
    files.iter().map(|f| f.path.as_str()).collect()
}

/// Lists all of `client`'s origin and checks that the listing is at
/// `revision` and holds exactly `paths`, in order; the listing.
pub async fn list_all(client: &OriginClient, revision: &str, paths: &[&str]) -> SourceListing {
    let listing = client.list(&[], &[]).await.unwrap();
    assert_eq!(listing.revision, revision);
    assert_eq!(listed_paths(&listing.files), paths);
    listing
}

/// How listing all of `origin` fails.
pub async fn list_error(origin: &Origin, options: OriginOptions) -> OriginError {
    OriginClient::new(origin, options)
        .unwrap()
        .list(&[], &[])
        .await
        .unwrap_err()
}

/// Short timeouts so that failing tests fail fast.
pub fn options(max_retries: u32) -> OriginOptions {
    OriginOptions {
        request_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
        max_retries,
        ..OriginOptions::default()
    }
}

pub fn respond(status: StatusCode) -> Response {
    Response::builder()
        .status(status)
        .body(Body::empty())
        .unwrap()
}

pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 3 <= bytes.len() {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// Answers a GET of `content`: 206 for `Range: bytes=a-b`, 416 (with
/// `Content-Range: bytes */len`) past the end, else 200.
pub fn serve_range(content: &Bytes, headers: &HeaderMap, builder: response::Builder) -> Response {
    let builder = builder.header(header::ACCEPT_RANGES, "bytes");
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.split_once('-'))
        .map(|(a, b)| (a.parse::<usize>().unwrap(), b.parse::<usize>().unwrap()));
    match range {
        Some((a, _)) if a >= content.len() => builder
            .status(StatusCode::RANGE_NOT_SATISFIABLE)
            .header(header::CONTENT_RANGE, format!("bytes */{}", content.len()))
            .body(Body::empty())
            .unwrap(),
        Some((a, b)) => {
            let b = b.min(content.len() - 1);
            builder
                .status(StatusCode::PARTIAL_CONTENT)
                .header(
                    header::CONTENT_RANGE,
                    format!("bytes {a}-{b}/{}", content.len()),
                )
                .body(Body::from(content.slice(a..=b)))
                .unwrap()
        }
        None => builder.body(Body::from(content.clone())).unwrap(),
    }
}

/// Serves `app` on 127.0.0.1 (a free port) for the rest of the test;
/// returns its base URL.
pub async fn spawn_server(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{address}")
}

/// Reads each of `ranges` of `file` through `client` and checks that it is
/// that slice of `want`, the file's whole content.
pub async fn assert_reads_ranges(
    client: &OriginClient,
    file: &FileEntry,
    want: &Bytes,
    ranges: &[Range<u64>],
) {
    for range in ranges {
        let got = client.read_range(file, range.clone()).await.unwrap();
        assert_eq!(
            got,
            want.slice(range.start as usize..range.end as usize),
            "{range:?}"
        );
    }
}

/// moto's S3 server on a free 127.0.0.1 port, killed when dropped.
pub struct Moto {
    child: Child,
    pub port: u16,
    /// Its base URL.
    pub endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    /// Starts the server and waits until it listens.
    pub fn start() -> Self {
        use std::process::{Command, Stdio};
        let probe = Command::new("python3")
            .args(["-c", "import moto.server"])
            .output()
            .expect("python3 is needed to run moto's S3 server");
        assert!(
            probe.status.success(),
            "moto's S3 server is not installed (run e2e/setup.sh, or `pip install 'moto[server]>=5,<6'`): {}",
            String::from_utf8_lossy(&probe.stderr)
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start moto");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "moto did not listen on port {port} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Self {
            child,
            port,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Creates `bucket`: see [`create_bucket`].
    pub async fn create_bucket(&self, bucket: &str) -> AmazonS3 {
        create_bucket(&self.endpoint, bucket).await
    }

    /// Stores `body` under exactly `key` (object_store would normalize a
    /// key with a leading or trailing `/`); moto takes unsigned PUTs.
    pub async fn put_raw(&self, bucket: &str, key: &str, body: &'static [u8]) {
        let response = reqwest::Client::new()
            .put(format!("{}/{bucket}/{key}", self.endpoint))
            .body(body)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{}", response.status());
    }

    /// An origin for the S3 `uri` on this server: see [`s3_origin`].
    pub fn origin(&self, uri: &str) -> Origin {
        s3_origin(&self.endpoint, uri)
    }
}

/// Creates `bucket` at the S3 `endpoint` and a store for it with moto's
/// test credentials. object_store cannot create buckets; moto takes an
/// unsigned PUT.
pub async fn create_bucket(endpoint: &str, bucket: &str) -> AmazonS3 {
    let response = reqwest::Client::new()
        .put(format!("{endpoint}/{bucket}"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "create bucket: {}",
        response.status()
    );
    swarmseed_origin::install_crypto_provider();
    AmazonS3Builder::new()
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .with_bucket_name(bucket)
        .with_region("us-east-1")
        .with_access_key_id("test")
        .with_secret_access_key("test")
        .build()
        .unwrap()
}

/// An origin for the S3 `uri` at `endpoint`, with moto's test credentials.
pub fn s3_origin(endpoint: &str, uri: &str) -> Origin {
    let mut origin = Origin {
        uri: uri.into(),
        endpoint: endpoint.into(),
        region: "us-east-1".into(),
        allow_http: true,
        ..Default::default()
    };
    origin
        .credentials
        .insert("AWS_ACCESS_KEY_ID".into(), "test".into());
    origin
        .credentials
        .insert("AWS_SECRET_ACCESS_KEY".into(), "test".into());
    origin
}
