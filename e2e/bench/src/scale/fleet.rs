//! N fake agents serving on one port, each on its own loopback address,
//! behind the real agent's token check.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use swarmseed_agent::control::ControlAuth;
use swarmseed_harness::kube_objects::AgentPorts;
use swarmseed_proto::pb::{self, agent_control_server::AgentControlServer};
use tonic::Request;

use super::fake_agent::{CountingAuth, FakeAgent, FakeService, FleetLog, Sim};
use super::node_name;

/// The address of agent `i`: 127.214.x.y, y in 1..=250.
pub fn agent_address(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 214, (i / 250) as u8, (i % 250 + 1) as u8)
}

/// N fake agents serving on one port, each on its own address.
pub(super) struct Fleet {
    pub(super) agents: Vec<(Ipv4Addr, Arc<FakeAgent>)>,
    pub(super) port: u16,
    pub(super) log: Arc<FleetLog>,
    pub(super) servers: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for s in &self.servers {
            s.abort();
        }
    }
}

impl Fleet {
    pub(super) async fn start(count: usize, token: &str, sim: Sim) -> anyhow::Result<Self> {
        let log = Arc::new(FleetLog::default());
        // One port for every address (the operator has one --control-port):
        // the first address picks a free one; retry if another is taken.
        let mut last_err = None;
        for _attempt in 0..8 {
            match Self::bind_all(count).await {
                Ok((port, listeners)) => {
                    let auth = CountingAuth {
                        inner: ControlAuth::new(token),
                        log: log.clone(),
                    };
                    let mut agents = Vec::with_capacity(count);
                    let mut servers = Vec::with_capacity(count);
                    for (i, listener) in listeners.into_iter().enumerate() {
                        let ip = agent_address(i);
                        let node = node_name(i);
                        let agent = Arc::new(FakeAgent {
                            public_key: blake3::hash(node.as_bytes()).as_bytes().to_vec(),
                            peer_address: format!("{ip}:{}", AgentPorts::default().peer),
                            node,
                            sim,
                            probe: i == 0,
                            log: log.clone(),
                            held: Mutex::new(BTreeMap::new()),
                        });
                        let svc = AgentControlServer::with_interceptor(
                            FakeService(agent.clone()),
                            auth.clone(),
                        );
                        servers.push(tokio::spawn(async move {
                            let incoming = tonic::transport::server::TcpIncoming::from(listener);
                            if let Err(e) = tonic::transport::Server::builder()
                                .timeout(Duration::from_secs(120))
                                .add_service(svc)
                                .serve_with_incoming(incoming)
                                .await
                            {
                                tracing::warn!(error = %e, "fake agent server stopped");
                            }
                        }));
                        agents.push((ip, agent));
                    }
                    return Ok(Self {
                        agents,
                        port,
                        log,
                        servers,
                    });
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("binding the fake agents failed")))
    }

    pub(super) async fn bind_all(
        count: usize,
    ) -> anyhow::Result<(u16, Vec<tokio::net::TcpListener>)> {
        let first = tokio::net::TcpListener::bind(SocketAddr::new(agent_address(0).into(), 0))
            .await
            .with_context(|| format!("binding {}", agent_address(0)))?;
        let port = first.local_addr()?.port();
        let mut listeners = vec![first];
        for i in 1..count {
            let addr = SocketAddr::new(agent_address(i).into(), port);
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr}"))?;
            listeners.push(l);
        }
        Ok((port, listeners))
    }

    /// Agents must refuse calls without the token or with a wrong one, and
    /// answer with the right one (as the real agent does).
    pub(super) async fn check_auth(&self, token: &str) -> anyhow::Result<()> {
        let Some((ip, _)) = self.agents.first() else {
            return Ok(());
        };
        let url = format!("http://{}", SocketAddr::new((*ip).into(), self.port));
        let channel = tonic::transport::Endpoint::from_shared(url)?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(5))
            .connect()
            .await
            .context("connecting to a fake agent")?;
        for (bearer, want_ok) in [
            (None, false),
            (Some("Bearer not-the-token".to_owned()), false),
            (Some(format!("Bearer {token}")), true),
        ] {
            let mut client = pb::agent_control_client::AgentControlClient::new(channel.clone());
            let mut req = Request::new(pb::GetStatusRequest::default());
            if let Some(b) = bearer {
                req.metadata_mut()
                    .insert("authorization", b.parse().context("bearer header")?);
            }
            match (client.get_status(req).await, want_ok) {
                (Ok(_), true) => {}
                (Err(s), false) if s.code() == tonic::Code::Unauthenticated => {}
                (r, _) => bail!(
                    "fake agent auth check: expected {}, got {:?}",
                    if want_ok { "OK" } else { "UNAUTHENTICATED" },
                    r.map(|_| ())
                ),
            }
        }
        for c in [
            &self.log.unauthenticated,
            &self.log.status,
            &self.log.apply,
            &self.log.remove,
        ] {
            c.store(0, Ordering::Relaxed);
        }
        Ok(())
    }

    pub(super) fn ready_pairs(&self) -> usize {
        let now = Instant::now();
        self.agents.iter().map(|(_, a)| a.ready_count(now)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_distinct_loopback() {
        let a: std::collections::BTreeSet<Ipv4Addr> = (0..1000).map(agent_address).collect();
        assert_eq!(a.len(), 1000);
        assert!(a.iter().all(|ip| ip.is_loopback() && ip.octets()[3] != 0));
    }
}
