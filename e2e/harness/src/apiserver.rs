//! The only module that touches the Kubernetes API stand-in
//! (`kube-standin`, e2e/apiserver).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::error::{Error, Result};

/// One request the stand-in served, as RBAC sees it.
pub use kube_standin::AuditRecord;

/// A running API stand-in and a client for it.
pub struct ApiServer {
    server: kube_standin::ApiServer,
    client: kube::Client,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("url", &self.server.url())
            .finish()
    }
}

impl ApiServer {
    /// Starts the stand-in on `addr`, writes a kubeconfig for it to
    /// `kubeconfig`, and connects a client. `audit`: record every request
    /// (see [`ApiServer::audit`]).
    pub async fn start(addr: SocketAddr, kubeconfig: &Path, audit: bool) -> Result<Self> {
        crate::init_crypto();
        let options = kube_standin::Options {
            audit,
            ..kube_standin::Options::default()
        };
        let server = tokio::time::timeout(
            Duration::from_secs(30),
            kube_standin::ApiServer::start_with(addr, options),
        )
        .await
        .map_err(|_| Error::Kube(format!("API stand-in did not start on {addr} within 30 s")))?
        .map_err(|e| Error::Kube(format!("starting the API stand-in on {addr}: {e}")))?;
        server
            .write_kubeconfig(kubeconfig)
            .map_err(|e| Error::io("write kubeconfig", kubeconfig, e))?;
        let client = tokio::time::timeout(Duration::from_secs(30), server.client())
            .await
            .map_err(|_| Error::Kube("connecting to the API stand-in timed out".into()))?
            .map_err(|e| Error::Kube(format!("connecting to the API stand-in: {e}")))?;
        Ok(Self { server, client })
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// Every resource request so far (empty unless started with `audit`).
    pub fn audit(&self) -> Vec<AuditRecord> {
        self.server.audit()
    }

    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}

/// `e2e apiserver`: the stand-in's own command line.
pub type CliArgs = kube_standin::CliArgs;

/// Runs the stand-in's command line until it stops.
pub async fn run_cli(args: CliArgs) -> Result<()> {
    kube_standin::run_cli(args)
        .await
        .map_err(|e| Error::Kube(format!("{e:#}")))
}
