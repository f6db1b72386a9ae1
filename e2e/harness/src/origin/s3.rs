//! The S3 origin: moto's S3 server (`python3 -m moto.server`) behind the
//! counting TCP proxy.
//!
//! Uploads and reads use `object_store`'s S3 client (already a workspace
//! dependency, and what the agent uses), so no AWS SDK or Python helper is
//! needed. The only call `object_store` lacks, CreateBucket, is a plain
//! unsigned `PUT /<bucket>`, which moto accepts.

use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::{ClientOptions, ObjectStore, RetryConfig};
use tokio::io::AsyncWriteExt;

use super::http::{OriginStats, fetch_stats, reset_stats};
use super::proxy::TcpProxy;
use crate::error::{Error, Result};
use crate::process::{ChildSpec, ManagedChild};

/// Credentials moto accepts (it accepts any); tests and agents use these.
pub const ACCESS_KEY_ID: &str = "swarmseed-test";
pub const SECRET_ACCESS_KEY: &str = "swarmseed-test-secret";
pub const REGION: &str = "us-east-1";

/// Where and how to run the S3 origin.
#[derive(Debug, Clone)]
pub struct S3OriginSpec {
    /// Address the proxy (the S3 endpoint clients use) listens on.
    pub listen_ip: IpAddr,
    /// Proxy port (0: any free port; only sensible without `netns`).
    pub port: u16,
    /// Run moto and the proxy inside this network namespace.
    pub netns: Option<String>,
    /// The `e2e` binary, needed to run the proxy inside a namespace.
    pub e2e_binary: Option<PathBuf>,
    /// Where moto's (and the proxy's) output goes.
    pub log_dir: PathBuf,
    pub bucket: String,
    pub startup_timeout: Duration,
}

impl S3OriginSpec {
    /// moto and an in-process proxy on `ip` (loopback tests).
    pub fn local(ip: IpAddr, log_dir: impl Into<PathBuf>, bucket: impl Into<String>) -> Self {
        Self {
            listen_ip: ip,
            port: 0,
            netns: None,
            e2e_binary: None,
            log_dir: log_dir.into(),
            bucket: bucket.into(),
            startup_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug)]
enum Proxy {
    InProcess(TcpProxy),
    Child(ManagedChild),
}

/// A running S3 origin; moto and the proxy stop on drop.
#[derive(Debug)]
pub struct S3Origin {
    endpoint: String,
    stats_url: String,
    bucket: String,
    // Dropped first: the proxy, then moto.
    proxy: Proxy,
    moto: ManagedChild,
}

/// Binds port 0 on `ip` to learn a free port (for moto, which cannot
/// report the port it picked).
fn free_port(ip: IpAddr) -> Result<u16> {
    let l = std::net::TcpListener::bind((ip, 0))
        .map_err(|e| Error::network(format!("bind {ip}:0"), e))?;
    Ok(l.local_addr()
        .map_err(|e| Error::network("local address", e))?
        .port())
}

impl S3Origin {
    /// Starts moto and the proxy, waits until S3 answers through the proxy,
    /// and creates the bucket.
    pub async fn start(spec: S3OriginSpec) -> Result<Self> {
        crate::init_crypto();
        std::fs::create_dir_all(&spec.log_dir)
            .map_err(|e| Error::io("create log dir", &spec.log_dir, e))?;
        // Inside a namespace moto has the loopback to itself; outside, it
        // shares 127.0.0.1 with everything else, so pick a free port.
        let (moto_ip, moto_port): (IpAddr, u16) = match &spec.netns {
            Some(_) => ([127, 0, 0, 1].into(), 5000),
            None => {
                let ip: IpAddr = [127, 0, 0, 1].into();
                (ip, free_port(ip)?)
            }
        };
        let moto = ManagedChild::spawn(
            &ChildSpec::new("moto", "python3")
                .netns(spec.netns.clone())
                .args(["-m", "moto.server", "-H"])
                .arg(moto_ip.to_string())
                .arg("-p")
                .arg(moto_port.to_string())
                .log(spec.log_dir.join("moto.log")),
        )?;
        let upstream = SocketAddr::new(moto_ip, moto_port);
        let (proxy, endpoint_addr, stats_addr) = match &spec.netns {
            None => {
                let p = TcpProxy::start(
                    SocketAddr::new(spec.listen_ip, spec.port),
                    upstream,
                    Some(SocketAddr::new(spec.listen_ip, 0)),
                )
                .await?;
                let (a, s) = (p.addr(), p.stats_addr());
                (Proxy::InProcess(p), a, s.unwrap_or(a))
            }
            Some(ns) => {
                let bin = spec.e2e_binary.clone().ok_or_else(|| {
                    Error::Invalid(
                        "the e2e binary is needed to run the proxy in a namespace".into(),
                    )
                })?;
                let port = if spec.port == 0 { 9000 } else { spec.port };
                let listen = SocketAddr::new(spec.listen_ip, port);
                let stats = SocketAddr::new(spec.listen_ip, port + 1);
                let child = ManagedChild::spawn(
                    &ChildSpec::new("s3-proxy", OsString::from(bin))
                        .netns(Some(ns.clone()))
                        .arg("tcp-proxy")
                        .arg("--listen")
                        .arg(listen.to_string())
                        .arg("--upstream")
                        .arg(upstream.to_string())
                        .arg("--stats-listen")
                        .arg(stats.to_string())
                        .log(spec.log_dir.join("s3-proxy.log")),
                )?;
                (Proxy::Child(child), listen, stats)
            }
        };
        let mut origin = Self {
            endpoint: format!("http://{endpoint_addr}"),
            stats_url: format!("http://{stats_addr}"),
            bucket: spec.bucket.clone(),
            proxy,
            moto,
        };
        origin.wait_ready(spec.startup_timeout).await?;
        origin.create_bucket().await?;
        origin.reset_stats().await?;
        Ok(origin)
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let client = http_client()?;
        let start = Instant::now();
        let mut last = String::from("no answer yet");
        let mut backoff = Duration::from_millis(50);
        while start.elapsed() < timeout {
            if !self.moto.is_running() {
                return Err(Error::NotReady {
                    what: "moto S3 server".into(),
                    waited: start.elapsed(),
                    last: format!("exited: {}", self.moto.log_tail(2000)),
                });
            }
            // ListBuckets, unsigned: moto answers 200 once it serves.
            match client.get(format!("{}/", self.endpoint)).send().await {
                Ok(r) if r.status().is_success() => {
                    // Proxy children also need their stats port up.
                    if fetch_stats(&self.stats_url).await.is_ok() {
                        return Ok(());
                    }
                    last = "stats endpoint not up".into();
                }
                Ok(r) => last = format!("status {}", r.status()),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
        Err(Error::NotReady {
            what: format!("moto S3 server at {}", self.endpoint),
            waited: timeout,
            last,
        })
    }

    async fn create_bucket(&self) -> Result<()> {
        let url = format!("{}/{}", self.endpoint, self.bucket);
        let resp = http_client()?
            .put(&url)
            .send()
            .await
            .map_err(|e| Error::network(format!("PUT {url}"), e))?;
        // 409: it exists already (ours).
        if resp.status().is_success() || resp.status().as_u16() == 409 {
            Ok(())
        } else {
            Err(Error::network(format!("PUT {url}"), resp.status()))
        }
    }

    /// The S3 endpoint clients use (through the counting proxy).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Base URL of the proxy's `/_origin/stats`.
    pub fn stats_url(&self) -> &str {
        &self.stats_url
    }

    /// Bytes served to clients (through the proxy) since the last reset.
    pub async fn stats(&self) -> Result<OriginStats> {
        match &self.proxy {
            Proxy::InProcess(p) => Ok(p.stats()),
            Proxy::Child(_) => fetch_stats(&self.stats_url).await,
        }
    }

    /// The pids of moto and (when it runs as a child) the proxy.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.moto.pid()];
        if let Proxy::Child(c) = &self.proxy {
            pids.push(c.pid());
        }
        pids
    }

    pub async fn reset_stats(&self) -> Result<()> {
        reset_stats(&self.stats_url).await
    }

    /// An `object_store` client for the bucket, through the proxy.
    pub fn store(&self) -> Result<AmazonS3> {
        s3_store(&self.endpoint, &self.bucket)
    }

    /// Uploads every file under `dir` to `prefix/<relative path>`;
    /// returns (files, bytes).
    pub async fn upload_dir(&self, dir: &Path, prefix: &str) -> Result<(usize, u64)> {
        let store: Arc<dyn ObjectStore> = Arc::new(self.store()?);
        upload_dir(store, dir, prefix).await
    }
}

fn http_client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .build()
        .map_err(|e| Error::network("build http client", e))
}

/// An `object_store` S3 client for moto at `endpoint` (path-style, plain
/// HTTP, the test credentials, bounded timeouts and retries).
pub fn s3_store(endpoint: &str, bucket: &str) -> Result<AmazonS3> {
    crate::init_crypto();
    crate::init_crypto();
    Ok(AmazonS3Builder::new()
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .with_bucket_name(bucket)
        .with_region(REGION)
        .with_access_key_id(ACCESS_KEY_ID)
        .with_secret_access_key(SECRET_ACCESS_KEY)
        .with_virtual_hosted_style_request(false)
        .with_client_options(
            // Replaces all client options: allow_http must be set here too.
            ClientOptions::new()
                .with_allow_http(true)
                .with_timeout(Duration::from_secs(120))
                .with_connect_timeout(Duration::from_secs(5)),
        )
        .with_retry(RetryConfig {
            max_retries: 3,
            retry_timeout: Duration::from_secs(60),
            ..RetryConfig::default()
        })
        .build()?)
}

fn list_files(dir: &Path, prefix: &str, out: &mut Vec<(PathBuf, String)>) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| Error::io("read directory", dir, e))?
        .collect::<std::io::Result<_>>()
        .map_err(|e| Error::io("read directory", dir, e))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let path = e.path();
        let meta = std::fs::metadata(&path).map_err(|e| Error::io("stat", &path, e))?;
        if meta.is_dir() {
            list_files(&path, &rel, out)?;
        } else if meta.is_file() {
            out.push((path, rel));
        }
    }
    Ok(())
}

/// Uploads every file under `dir` to `prefix/<relative path>` (multipart
/// for big files); returns (files, bytes).
pub async fn upload_dir(
    store: Arc<dyn ObjectStore>,
    dir: &Path,
    prefix: &str,
) -> Result<(usize, u64)> {
    let mut files = Vec::new();
    list_files(dir, prefix.trim_matches('/'), &mut files)?;
    let mut bytes = 0u64;
    for (path, key) in &files {
        let location =
            object_store::path::Path::parse(key).map_err(|e| Error::Invalid(e.to_string()))?;
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(|e| Error::io("open", path, e))?;
        let mut writer = object_store::buffered::BufWriter::with_capacity(
            store.clone(),
            location,
            8 * 1024 * 1024,
        );
        let upload = async {
            let n = tokio::io::copy(&mut file, &mut writer).await?;
            writer.shutdown().await?;
            Ok::<u64, std::io::Error>(n)
        };
        let n = tokio::time::timeout(Duration::from_secs(600), upload)
            .await
            .map_err(|_| Error::ObjectStore(format!("upload of {key} timed out")))?
            .map_err(|e| Error::ObjectStore(format!("upload of {key}: {e}")))?;
        bytes += n;
    }
    Ok((files.len(), bytes))
}
