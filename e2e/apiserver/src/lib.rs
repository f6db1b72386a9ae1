//! Owns the in-memory Kubernetes API server the tests run against.
//! Never ships: a test fixture, not part of the product.
//!
//! An in-memory Kubernetes API server for swarmseed's tests: it speaks the
//! real wire protocol (discovery, CRUD, list/watch with resourceVersions and
//! bookmarks, merge/JSON/strategic/apply patches, status subresource,
//! generation, finalizers, Tables) well enough for kube-rs and `kubectl`.
//! A test fixture, never shipped.

mod http;
mod kubectl;
mod patch;
mod protobuf;
mod resources;
mod selector;
mod status;
mod store;
mod table;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use http::AuditRecord;
pub use kubectl::{Kubectl, KubectlOutput};

/// Errors of starting the server or building a client for it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid server URL {0}")]
    Url(String),
    #[error("building a kube client: {0}")]
    Client(#[from] kube::Error),
}

impl Error {
    /// A short stable label (metrics, logs).
    pub fn label(&self) -> &'static str {
        match self {
            Error::Bind { .. } => "bind",
            Error::Url(_) => "url",
            Error::Client(_) => "client",
        }
    }
}

/// Tunables of the stand-in.
#[derive(Clone, Debug)]
pub struct Options {
    /// How many change events are kept for watches; watching from an older
    /// resourceVersion answers 410 Gone.
    pub watch_history: usize,
    /// How often an idle watch that asked for bookmarks gets one.
    pub bookmark_interval: Duration,
    /// Record every resource request for [`ApiServer::audit`] (tests of
    /// RBAC). Off by default: the record only grows.
    pub audit: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            watch_history: 10_000,
            bookmark_interval: Duration::from_secs(5),
            audit: false,
        }
    }
}

/// A running stand-in API server. Dropping it stops serving.
pub struct ApiServer {
    addr: SocketAddr,
    shared: Arc<http::Shared>,
    task: Option<JoinHandle<()>>,
}

impl ApiServer {
    /// Starts serving on `listen` (use 127.0.0.1:0 for an ephemeral port).
    pub async fn start(listen: SocketAddr) -> Result<ApiServer, Error> {
        Self::start_with(listen, Options::default()).await
    }

    pub async fn start_with(listen: SocketAddr, options: Options) -> Result<ApiServer, Error> {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| Error::Bind {
                addr: listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: listen,
            source,
        })?;
        let (shutdown, _) = watch::channel(false);
        let (changed, _) = watch::channel(0);
        let shared = Arc::new(http::Shared {
            store: Mutex::new(store::Store::new(options.watch_history)),
            changed,
            shutdown,
            options,
            audit: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .fallback(http::handle)
            .with_state(shared.clone());
        let mut stop = shared.shutdown.subscribe();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            });
            if let Err(e) = serve.await {
                tracing::warn!(error = %e, "stand-in API server stopped");
            }
        });
        tracing::info!(%addr, "stand-in Kubernetes API server listening");
        Ok(ApiServer {
            addr,
            shared,
            task: Some(task),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig with cluster/user/context `swarmseed-e2e`, no auth.
    pub fn kubeconfig_yaml(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: swarmseed-e2e\n  cluster:\n    server: {}\n\
             users:\n- name: swarmseed-e2e\n  user: {{}}\ncontexts:\n- name: swarmseed-e2e\n  context:\n    \
             cluster: swarmseed-e2e\n    user: swarmseed-e2e\n    namespace: default\n\
             current-context: swarmseed-e2e\n",
            self.url()
        )
    }

    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig_yaml())
    }

    /// A kube client pointed at this server.
    pub async fn client(&self) -> Result<kube::Client, Error> {
        let uri: ::http::Uri = self.url().parse().map_err(|_| Error::Url(self.url()))?;
        let mut config = kube::Config::new(uri);
        config.default_namespace = "default".to_string();
        config.connect_timeout = Some(Duration::from_secs(5));
        config.read_timeout = Some(Duration::from_secs(300));
        Ok(kube::Client::try_from(config)?)
    }

    /// Every resource request served so far, in arrival order, with the
    /// attributes RBAC decides on; empty unless [`Options::audit`] is on.
    /// Discovery and other non-resource URLs are not recorded (every
    /// authenticated user may read those).
    pub fn audit(&self) -> Vec<AuditRecord> {
        self.shared.audit_log().clone()
    }

    /// Forgets the watch history: every resourceVersion issued so far is
    /// too old to watch from (410 Gone), and open watches get a 410 ERROR event.
    pub fn expire_watch_history(&self) {
        let mut store = self.shared.lock();
        store.expire_history();
        self.shared.changed.send_replace(store.rv);
    }

    /// Stops serving; open watches end.
    pub async fn shutdown(mut self) {
        self.shared.shutdown.send_replace(true);
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.shared.shutdown.send_replace(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// `e2e apiserver`: serve until Ctrl-C.
#[derive(clap::Args, Debug, Clone)]
pub struct CliArgs {
    /// Address to listen on (loopback only).
    #[arg(
        long,
        env = "SWARMSEED_APISERVER_LISTEN",
        default_value = "127.0.0.1:0"
    )]
    pub listen: SocketAddr,
    /// Where to write a kubeconfig pointing at the server.
    #[arg(
        long,
        env = "SWARMSEED_APISERVER_KUBECONFIG",
        default_value = "kubeconfig.yaml"
    )]
    pub kubeconfig: PathBuf,
    /// Change events kept for watches (older resourceVersions get 410 Gone).
    #[arg(
        long,
        env = "SWARMSEED_APISERVER_WATCH_HISTORY",
        default_value_t = 10_000
    )]
    pub watch_history: usize,
}

/// Serves until Ctrl-C or SIGTERM, writes the kubeconfig, prints
/// `KUBECONFIG=...`.
pub async fn run_cli(args: CliArgs) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let options = Options {
        watch_history: args.watch_history,
        ..Options::default()
    };
    let server = ApiServer::start_with(args.listen, options).await?;
    server
        .write_kubeconfig(&args.kubeconfig)
        .with_context(|| format!("writing {}", args.kubeconfig.display()))?;
    let path = std::fs::canonicalize(&args.kubeconfig).unwrap_or(args.kubeconfig.clone());
    println!("KUBECONFIG={}", path.display());
    println!("serving {} (Ctrl-C stops)", server.url());
    swarmseed_runtime::shutdown::signal_received().await;
    server.shutdown().await;
    Ok(())
}
