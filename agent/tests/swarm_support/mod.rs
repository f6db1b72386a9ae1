//! Fixtures for the swarm tests: generated datasets, a file-backed HTTP
//! origin that counts the bytes it serves, agent processes on loopback, and
//! a small driver that plans and applies assignments the way the operator
//! does.

#![allow(dead_code)]

#[path = "../../origin/tests/origin_support/mod.rs"]
mod origin_support;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::Response;
use swarmseed_proto::pb::{self, agent_control_client::AgentControlClient};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tonic::transport::Channel;

pub const TOKEN: &str = "test-control-token";
pub const MIB: u64 = 1 << 20;
pub const KIB: u64 = 1 << 10;

// ---------------------------------------------------------------- datasets

/// Writes a deterministic dataset: `big` files of the given sizes and
/// `small` files of 1..=128 KiB, spread over a few directories. Returns the
/// total size.
pub fn generate(dir: &Path, big: &[u64], small: usize, seed: u64) -> u64 {
    let mut total = 0;
    for (i, &size) in big.iter().enumerate() {
        let p = dir.join(format!("model-{i:05}.safetensors"));
        write_random(&p, size, seed ^ (i as u64 + 1) << 32);
        total += size;
    }
    let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for i in 0..small {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let size = KIB + rng % (127 * KIB + 1);
        let p = dir.join(format!("shard-{:02}/sample-{i:05}.json", i % 16));
        write_random(&p, size, seed ^ (0x5151 + i as u64));
        total += size;
    }
    total
}

/// Fills `path` with `size` pseudo-random bytes (blake3 XOF of the seed).
pub fn write_random(path: &Path, size: u64, seed: u64) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let mut xof = blake3::Hasher::new()
        .update(&seed.to_le_bytes())
        .finalize_xof();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        xof.fill(&mut buf[..n]);
        out.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    out.flush().unwrap();
}

/// Every regular file under `dir`, relative path → (size, blake3).
pub fn tree(dir: &Path) -> BTreeMap<String, (u64, blake3::Hash)> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, (u64, blake3::Hash)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
            let meta = std::fs::metadata(&p).unwrap();
            if meta.is_dir() {
                walk(base, &p, out);
            } else {
                let mut h = blake3::Hasher::new();
                h.update_reader(std::fs::File::open(&p).unwrap()).unwrap();
                out.insert(rel, (meta.len(), h.finalize()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Asserts two trees hold the same files with the same bytes.
pub fn assert_same_tree(expected: &BTreeMap<String, (u64, blake3::Hash)>, dir: &Path) {
    let got = tree(dir);
    let missing: Vec<_> = expected
        .keys()
        .filter(|k| !got.contains_key(*k))
        .take(5)
        .collect();
    let extra: Vec<_> = got
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .take(5)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{}: missing {missing:?}, extra {extra:?}",
        dir.display()
    );
    for (k, v) in expected {
        assert_eq!(&got[k], v, "{}: {k} differs", dir.display());
    }
}

// ------------------------------------------------------------------ origin

/// A file-backed HTTP origin (nginx-like: JSON autoindex, Range, ETag,
/// If-Match) counting the body bytes it serves; it can be taken down (it
/// then answers every request 503, as a load balancer in front of a
/// server that is gone).
pub struct HttpOrigin {
    pub url: String,
    pub bytes_served: Arc<AtomicU64>,
    down: Arc<AtomicBool>,
}

struct OriginState {
    root: PathBuf,
    served: Arc<AtomicU64>,
    down: Arc<AtomicBool>,
}

impl HttpOrigin {
    pub async fn start(root: &Path) -> Self {
        let served = Arc::new(AtomicU64::new(0));
        let down = Arc::new(AtomicBool::new(false));
        let state = Arc::new(OriginState {
            root: root.to_owned(),
            served: served.clone(),
            down: down.clone(),
        });
        let app = axum::Router::new()
            .fallback(origin_handler)
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            url: format!("http://{addr}/"),
            bytes_served: served,
            down,
        }
    }

    pub fn served(&self) -> u64 {
        self.bytes_served.load(Ordering::SeqCst)
    }

    /// Takes the origin down (every request answered 503) or back up.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }
}

fn etag_of(meta: &std::fs::Metadata) -> String {
    format!(
        "\"{:x}-{:x}-{:x}\"",
        meta.mtime_nsec() as u64 ^ (meta.mtime() as u64) << 20,
        meta.len(),
        meta.ino()
    )
}

fn empty(status: StatusCode) -> Response {
    Response::builder()
        .status(status)
        .body(Body::empty())
        .unwrap()
}

async fn origin_handler(
    State(s): State<Arc<OriginState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if s.down.load(Ordering::SeqCst) {
        return empty(StatusCode::SERVICE_UNAVAILABLE);
    }
    let rel = percent_decode(uri.path().trim_start_matches('/'));
    if rel.split('/').any(|seg| seg == "..") {
        return empty(StatusCode::BAD_REQUEST);
    }
    let path = s.root.join(&rel);
    let Ok(meta) = std::fs::metadata(&path) else {
        return empty(StatusCode::NOT_FOUND);
    };
    if meta.is_dir() {
        let mut entries = Vec::new();
        for e in std::fs::read_dir(&path).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            entries.push(if m.is_dir() {
                serde_json::json!({"name": name, "type": "directory", "mtime": "Wed, 25 Nov 2026 00:00:00 GMT"})
            } else {
                serde_json::json!({"name": name, "type": "file", "size": m.len(), "mtime": "Wed, 25 Nov 2026 00:00:00 GMT"})
            });
        }
        return Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(serde_json::to_vec(&entries).unwrap()))
            .unwrap();
    }
    let etag = etag_of(&meta);
    if let Some(want) = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok())
        && want != "*"
        && want != etag
    {
        return empty(StatusCode::PRECONDITION_FAILED);
    }
    let len = meta.len();
    let builder = Response::builder()
        .header(header::ETAG, &etag)
        .header(header::ACCEPT_RANGES, "bytes");
    if method == Method::HEAD {
        return builder
            .header(header::CONTENT_LENGTH, len)
            .body(Body::empty())
            .unwrap();
    }
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.split_once('-'))
        .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)));
    let (start, end, status) = match range {
        Some((a, _)) if a >= len => {
            return builder
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{len}"))
                .body(Body::empty())
                .unwrap();
        }
        Some((a, b)) => (a, b.min(len - 1) + 1, StatusCode::PARTIAL_CONTENT),
        None => (0, len, StatusCode::OK),
    };
    let mut f = tokio::fs::File::open(&path).await.unwrap();
    f.seek(std::io::SeekFrom::Start(start)).await.unwrap();
    let mut buf = vec![0u8; (end - start) as usize];
    f.read_exact(&mut buf).await.unwrap();
    s.served.fetch_add(buf.len() as u64, Ordering::SeqCst);
    let mut b = builder
        .status(status)
        .header(header::CONTENT_LENGTH, buf.len());
    if status == StatusCode::PARTIAL_CONTENT {
        b = b.header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{len}", end - 1),
        );
    }
    b.body(Body::from(buf)).unwrap()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len() + 1
            && i + 3 <= b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ------------------------------------------------------------------ agents

/// A port for an agent to listen on. Not one the kernel picked (port 0):
/// between this call and the agent's bind, any outgoing connection of the
/// tests running at once could take that one as its local port, and the
/// agent would exit with "address in use". These come from below the
/// kernel's ephemeral range (32768 and up by default), in turn within this
/// process, starting where its process id points so that test processes
/// running at once start apart; one still bound is skipped.
fn free_port() -> u16 {
    const FIRST: u16 = 10_000;
    const SPAN: u32 = 22_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id() % SPAN,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    loop {
        let port = FIRST + (NEXT.fetch_add(1, Ordering::Relaxed) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// One agent process on loopback.
pub struct AgentProc {
    pub name: String,
    pub root: PathBuf,
    pub control_port: u16,
    pub peer_port: u16,
    pub admin_port: u16,
    extra_env: Vec<(String, String)>,
    child: Option<Child>,
    log: PathBuf,
}

impl AgentProc {
    pub fn spawn(base: &Path, name: &str, extra_env: &[(&str, &str)]) -> Self {
        let root = base.join(name);
        std::fs::create_dir_all(&root).unwrap();
        let mut a = Self {
            name: name.to_owned(),
            root,
            control_port: free_port(),
            peer_port: free_port(),
            admin_port: free_port(),
            extra_env: extra_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            child: None,
            log: base.join(format!("{name}.log")),
        };
        a.start();
        a
    }

    pub fn start(&mut self) {
        let token_file = self.root.parent().unwrap().join("control-token");
        if !token_file.exists() {
            // Atomically: agents started a moment ago may be reading it.
            let tmp = token_file.with_extension(format!("tmp-{}", self.name));
            std::fs::write(&tmp, TOKEN).unwrap();
            std::fs::rename(&tmp, &token_file).unwrap();
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = agent_command();
        cmd.arg("--node-name")
            .arg(&self.name)
            .arg("--root")
            .arg(&self.root)
            .arg("--control-listen")
            .arg(format!("127.0.0.1:{}", self.control_port))
            .arg("--peer-listen")
            .arg(format!("127.0.0.1:{}", self.peer_port))
            .arg("--admin-listen")
            .arg(format!("127.0.0.1:{}", self.admin_port))
            .arg("--advertise-address")
            .arg("127.0.0.1")
            .arg("--control-token-file")
            .arg(&token_file)
            .arg("--fallback-after")
            .arg("3s")
            .env("RUST_LOG", "info,swarmseed_agent=debug")
            // An agent that exits with an error prints the error, not a
            // backtrace that would push it out of the log tail a failing
            // test shows.
            .env("RUST_LIB_BACKTRACE", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("start swarmseed-agent"));
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn peer_address(&self) -> String {
        format!("127.0.0.1:{}", self.peer_port)
    }

    pub fn dataset_dir(&self, ns: &str, name: &str) -> PathBuf {
        self.root.join("datasets").join(ns).join(name)
    }

    pub async fn client(
        &self,
    ) -> AgentControlClient<tonic::service::interceptor::InterceptedService<Channel, Auth>> {
        let url = format!("http://127.0.0.1:{}", self.control_port);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match Channel::from_shared(url.clone())
                .unwrap()
                .connect_timeout(Duration::from_secs(2))
                .connect()
                .await
            {
                Ok(ch) => return AgentControlClient::with_interceptor(ch, Auth(TOKEN.into())),
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!(
                    "agent {} control API unreachable: {e}\n{}",
                    self.name,
                    self.log_tail()
                ),
            }
        }
    }

    /// The agent's status; a hung agent fails the test instead of hanging it.
    pub async fn status(&self) -> pb::AgentStatus {
        let call = async {
            self.client()
                .await
                .get_status(pb::GetStatusRequest::default())
                .await
        };
        match tokio::time::timeout(Duration::from_secs(20), call).await {
            Ok(r) => r.unwrap().into_inner(),
            Err(_) => panic!(
                "agent {} did not answer GetStatus in 20 s\n{}",
                self.name,
                self.log_tail()
            ),
        }
    }

    pub async fn metrics(&self) -> String {
        let url = format!("http://127.0.0.1:{}/metrics", self.admin_port);
        reqwest::get(url).await.unwrap().text().await.unwrap()
    }

    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

#[derive(Clone)]
pub struct Auth(pub String);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", self.0).parse().unwrap(),
        );
        Ok(req)
    }
}

// ------------------------------------------------------------------ driver

/// Builds the assignment every agent gets: all agents fetch disjoint,
/// equal ranges from the origin; everyone peers with everyone.
pub async fn plan(
    agents: &[AgentProc],
    fetchers: usize,
    files: Vec<pb::FileEntry>,
    chunk_size: u64,
    origin: pb::Origin,
    generation: u64,
) -> pb::Assignment {
    let layout = swarmseed_proto::ChunkLayout::new(files.clone(), chunk_size).unwrap();
    let n = layout.chunk_count();
    let mut fetcher_list = Vec::new();
    let k = fetchers.min(agents.len()).max(1) as u32;
    for (i, a) in agents.iter().take(k as usize).enumerate() {
        let status = a.status().await;
        let (s, e) = (n * i as u32 / k, n * (i as u32 + 1) / k);
        fetcher_list.push(pb::OriginFetcher {
            node_name: a.name.clone(),
            public_key: status.public_key,
            ranges: vec![pb::ChunkRange { start: s, end: e }],
        });
    }
    pb::Assignment {
        dataset: Some(pb::DatasetRef {
            namespace: "ml".into(),
            name: "weights".into(),
            uid: String::new(),
        }),
        revision: layout.revision().to_hex(),
        chunk_size,
        files,
        pinned_digest: vec![],
        origin: Some(origin),
        fetchers: fetcher_list,
        peers: agents
            .iter()
            .map(|a| pb::Peer {
                node_name: a.name.clone(),
                address: a.peer_address(),
            })
            .collect(),
        peer_token: vec![7; 32],
        limits: None,
        plan_generation: generation,
    }
}

/// Applies `a` on every agent at once, as the operator does.
pub async fn apply_all(
    agents: &[AgentProc],
    a: &pb::Assignment,
) -> Vec<pb::ApplyAssignmentResponse> {
    let calls = agents.iter().map(|agent| async move {
        let r = agent.client().await.apply_assignment(a.clone()).await;
        r.unwrap_or_else(|e| panic!("apply on {}: {e}", agent.name))
            .into_inner()
    });
    futures::future::join_all(calls).await
}

/// The progress of `agent` for the test dataset.
pub async fn progress(agent: &AgentProc) -> Option<pb::DatasetProgress> {
    agent.status().await.datasets.into_iter().next()
}

/// Waits until every agent reports the revision READY; panics with the
/// agents' state and logs after `timeout`.
pub async fn wait_ready(
    agents: &[AgentProc],
    revision: &str,
    timeout: Duration,
) -> Vec<pb::DatasetProgress> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut all = Vec::new();
        for a in agents {
            all.push(progress(a).await);
        }
        let failed = all
            .iter()
            .flatten()
            .find(|p| p.state == pb::DatasetState::Failed as i32);
        assert!(failed.is_none(), "an agent failed: {failed:?}");
        if all.iter().all(|p| {
            p.as_ref().is_some_and(|p| {
                p.state == pb::DatasetState::Ready as i32 && p.revision == revision
            })
        }) {
            return all.into_iter().flatten().collect();
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = agents
                .iter()
                .map(|a| format!("--- {}\n{}", a.name, a.log_tail()))
                .collect();
            panic!("not ready after {timeout:?}: {all:#?}\n{}", logs.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub fn http_origin(url: &str) -> pb::Origin {
    pb::Origin {
        uri: url.to_owned(),
        allow_http: true,
        ..Default::default()
    }
}

// --------------------------------------------------------------------- s3

/// moto's S3 server behind a counting TCP proxy; both stop when dropped.
pub struct S3Origin {
    /// The server itself, stopped when this is dropped.
    moto: origin_support::Moto,
    /// The proxy's base URL.
    pub endpoint: String,
    pub bytes_served: Arc<AtomicU64>,
}

impl S3Origin {
    pub async fn start() -> Self {
        let moto = origin_support::Moto::start();
        let port = moto.port;
        // Count what flows from moto to its clients.
        let served = Arc::new(AtomicU64::new(0));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = listener.local_addr().unwrap();
        let counter = served.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let counter = counter.clone();
                tokio::spawn(async move {
                    let Ok(upstream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await
                    else {
                        return;
                    };
                    let (mut ur, mut uw) = upstream.into_split();
                    let (mut cr, mut cw) = client.split();
                    let up = tokio::io::copy(&mut cr, &mut uw);
                    let down = async {
                        let mut buf = vec![0u8; 256 * 1024];
                        loop {
                            let n = match ur.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            counter.fetch_add(n as u64, Ordering::SeqCst);
                            if tokio::io::AsyncWriteExt::write_all(&mut cw, &buf[..n])
                                .await
                                .is_err()
                            {
                                break;
                            }
                        }
                        let _ = tokio::io::AsyncWriteExt::shutdown(&mut cw).await;
                    };
                    let _ = tokio::join!(up, down);
                });
            }
        });
        Self {
            moto,
            endpoint: format!("http://{proxy}"),
            bytes_served: served,
        }
    }

    /// Creates `bucket` and uploads every file under `dir` into it.
    pub async fn upload(&self, bucket: &str, dir: &Path) {
        use object_store::ObjectStoreExt;
        let store = origin_support::create_bucket(&self.endpoint, bucket).await;
        for (rel, _) in tree(dir) {
            let bytes = std::fs::read(dir.join(&rel)).unwrap();
            store
                .put(&object_store::path::Path::from(rel.as_str()), bytes.into())
                .await
                .unwrap();
        }
        self.bytes_served.store(0, Ordering::SeqCst);
    }

    /// An origin for the S3 `uri`, read through the counting proxy.
    pub fn origin(&self, uri: &str) -> pb::Origin {
        origin_support::s3_origin(&self.endpoint, uri)
    }

    pub fn served(&self) -> u64 {
        self.bytes_served.load(Ordering::SeqCst)
    }
}

/// A scratch directory for one test; kept for inspection when
/// `SWARMSEED_TEST_KEEP` is set.
pub fn workdir() -> tempfile::TempDir {
    let keep = std::env::var_os("SWARMSEED_TEST_KEEP").is_some();
    let dir = tempfile::Builder::new()
        .prefix("swarm-")
        .disable_cleanup(keep)
        .tempdir()
        .unwrap();
    if keep {
        eprintln!("keeping {}", dir.path().display());
    }
    dir
}

/// The agent as the chart runs it: as root, without any capability (file
/// permissions apply to it), when this test runs as root and `setpriv` is
/// there; as this user otherwise.
fn agent_command() -> Command {
    let agent = env!("CARGO_BIN_EXE_swarmseed-agent");
    let setpriv = std::path::Path::new("/usr/bin/setpriv");
    // /proc/self belongs to this process's effective user.
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    if root && setpriv.exists() {
        let mut cmd = Command::new(setpriv);
        cmd.args(["--bounding-set=-all", "--inh-caps=-all", "--", agent]);
        cmd
    } else {
        Command::new(agent)
    }
}
