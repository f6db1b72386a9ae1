//! An agent process of the peer bench on loopback ports of its own.

use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;

use swarmseed_harness::agent_api::{self, AgentControl, Bearer};
use swarmseed_harness::process::{ChildSpec, ManagedChild};
use swarmseed_proto::pb;

use super::TOKEN;
use crate::procfs::max_rss_of;

pub(super) struct BenchAgent {
    pub(super) child: ManagedChild,
    control: u16,
    peer: u16,
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl BenchAgent {
    pub(super) fn spawn(bin: &Path, work: &Path, name: &str, token: &Path) -> anyhow::Result<Self> {
        let (control, peer, admin) = (free_port()?, free_port()?, free_port()?);
        let spec = ChildSpec::new(name, bin)
            .arg("--node-name")
            .arg(name)
            .arg("--root")
            .arg(work.join(name))
            .arg("--control-listen")
            .arg(format!("127.0.0.1:{control}"))
            .arg("--peer-listen")
            .arg(format!("127.0.0.1:{peer}"))
            .arg("--admin-listen")
            .arg(format!("127.0.0.1:{admin}"))
            .arg("--advertise-address")
            .arg("127.0.0.1")
            .arg("--control-token-file")
            .arg(token)
            .log(work.join(format!("{name}.log")));
        Ok(Self {
            child: ManagedChild::spawn(&spec)?,
            control,
            peer,
        })
    }

    pub(super) fn peer_address(&self) -> String {
        format!("127.0.0.1:{}", self.peer)
    }

    pub(super) async fn client(&self) -> anyhow::Result<AgentControl> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.control));
        let bearer = Bearer::new(TOKEN)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match agent_api::connect(addr, &bearer, Duration::from_secs(30)).await {
                Ok(client) => return Ok(client),
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => bail!(
                    "agent control API at {addr} unreachable: {e}\n{}",
                    self.child.log_tail(4000)
                ),
            }
        }
    }

    pub(super) async fn status(&self) -> anyhow::Result<pb::AgentStatus> {
        Ok(self
            .client()
            .await?
            .get_status(pb::GetStatusRequest::default())
            .await?
            .into_inner())
    }

    pub(super) async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let st = self.status().await?;
            if let Some(p) = st.datasets.first() {
                if p.state == pb::DatasetState::Ready as i32 {
                    return Ok(());
                }
                if p.state == pb::DatasetState::Failed as i32 {
                    bail!("{} failed: {:?}", self.child.name(), p.error);
                }
            }
            if Instant::now() > deadline {
                bail!("{} not ready after {timeout:?}", self.child.name());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Peak resident set size (VmHWM) in bytes.
    pub(super) fn max_rss(&self) -> u64 {
        max_rss_of(self.child.pid())
    }
}
