//! Fixtures shared by the origin tests: test content, a loopback server,
//! and HTTP range answers as S3, nginx and the Hub give them.

// Not every test file uses every helper.
#![allow(dead_code)]

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header, response};
use axum::response::Response;
use bytes::Bytes;
use swarmseed_origin::OriginOptions;
use swarmseed_proto::pb::FileEntry;

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

/// Starts moto's S3 server on a free 127.0.0.1 port and waits until it
/// listens; returns the process (kill it when done) and the port.
pub fn start_moto() -> (std::process::Child, u16) {
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
    (child, port)
}
