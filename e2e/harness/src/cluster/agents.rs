//! The agents of a running cluster: their Pods, processes and readiness,
//! crashes, restarts and cut links.

use std::time::{Duration, Instant};

use super::{Cluster, KUBE_TIMEOUT, LinkEnd, with_timeout};
use crate::error::{Error, Result};
use crate::kube_objects;
use crate::naming;
use crate::process::{ChildSpec, ManagedChild};

impl Cluster {
    pub(super) async fn register_objects(&mut self) -> Result<()> {
        let client = self.client.clone();
        self.owner_uid = with_timeout(
            "registering the agent DaemonSet",
            KUBE_TIMEOUT,
            kube_objects::register_agent_daemonset(&client),
        )
        .await?;
        for n in &self.nodes {
            with_timeout(
                "registering a Node",
                KUBE_TIMEOUT,
                kube_objects::register_node(&client, &n.name, &n.labels, n.address),
            )
            .await?;
            with_timeout(
                "registering an agent Pod",
                KUBE_TIMEOUT,
                kube_objects::register_agent_pod(
                    &client,
                    &n.name,
                    n.address,
                    n.ports,
                    self.owner_uid.as_deref(),
                ),
            )
            .await?;
        }
        Ok(())
    }

    fn agent_spec(&self, i: usize) -> ChildSpec {
        let n = &self.nodes[i];
        let mut spec = ChildSpec::new(format!("agent {}", n.name), self.spec.agent_binary.clone())
            .netns(n.netns.clone())
            .args(self.spec.agent_args.iter())
            .arg("--node-name")
            .arg(&n.name)
            .arg("--root")
            .arg(&n.root)
            .arg("--control-listen")
            .arg(n.control_addr().to_string())
            .arg("--peer-listen")
            .arg(n.peer_addr().to_string())
            .arg("--admin-listen")
            .arg(n.admin_addr().to_string())
            .arg("--advertise-address")
            .arg(n.address.to_string())
            .arg("--control-token-file")
            .arg(&self.token_file)
            .log(&n.agent_log)
            // As the chart runs it: permissions apply to the agent.
            .without_capabilities();
        for (k, v) in &self.spec.agent_env {
            spec = spec.env(k, v);
        }
        spec
    }

    pub(super) fn spawn_agent(&mut self, i: usize) -> Result<()> {
        let spec = self.agent_spec(i);
        let child = ManagedChild::spawn(&spec)?;
        self.nodes[i].agent = Some(child);
        Ok(())
    }

    pub(super) async fn wait_agent_ready(&self, i: usize) -> Result<()> {
        let n = &self.nodes[i];
        let url = format!("{}/readyz", n.admin_url());
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .no_proxy()
            .build()
            .map_err(|e| Error::network("build http client", e))?;
        let start = Instant::now();
        let mut last = "no answer yet".to_string();
        while start.elapsed() < self.spec.ready_timeout {
            match client.get(&url).send().await {
                Ok(r) if r.status() == reqwest::StatusCode::OK => return Ok(()),
                Ok(r) => last = format!("status {}", r.status()),
                Err(e) => last = e.to_string(),
            }
            // An exited (unreaped, so zombie) agent will never get ready.
            if n.agent
                .as_ref()
                .is_some_and(|a| !naming::pid_alive(a.pid()))
            {
                last = "the agent exited".into();
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let tail = n
            .agent
            .as_ref()
            .map(|a| a.log_tail(2000))
            .unwrap_or_default();
        Err(Error::NotReady {
            what: format!("agent on {} ({url})", n.name),
            waited: start.elapsed(),
            last: format!("{last}; agent log tail:\n{tail}"),
        })
    }

    pub(super) async fn set_pod_ready(&self, i: usize, ready: bool) -> Result<()> {
        let n = &self.nodes[i];
        with_timeout(
            "updating an agent Pod",
            KUBE_TIMEOUT,
            kube_objects::set_agent_pod_ready(&self.client, &n.name, n.address, ready, n.restarts),
        )
        .await
    }

    pub(super) fn index_of(&self, node: &str) -> Result<usize> {
        self.nodes
            .iter()
            .position(|n| n.name == node)
            .ok_or_else(|| Error::Invalid(format!("no node named {node:?}")))
    }

    /// Kills the agent on `node` with SIGKILL (a crash) and marks its Pod
    /// not ready, as the kubelet would after the probe fails.
    pub async fn kill_agent(&mut self, node: &str) -> Result<()> {
        let i = self.index_of(node)?;
        if let Some(mut agent) = self.nodes[i].agent.take() {
            agent.kill();
        }
        self.set_pod_ready(i, false).await
    }

    /// Kills the agent on `node` and deletes its Pod, as draining or
    /// replacing the node would; [`Cluster::restart_agent`] brings both back.
    pub async fn remove_agent_pod(&mut self, node: &str) -> Result<()> {
        let i = self.index_of(node)?;
        if let Some(mut agent) = self.nodes[i].agent.take() {
            agent.kill();
        }
        let pods = kube::Api::<k8s_openapi::api::core::v1::Pod>::namespaced(
            self.client.clone(),
            kube_objects::AGENT_NAMESPACE,
        );
        let name = kube_objects::agent_pod_name(node);
        with_timeout("deleting an agent Pod", KUBE_TIMEOUT, async {
            match pods.delete(&name, &Default::default()).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                Err(e) => Err(e.into()),
            }
        })
        .await?;
        self.nodes[i].pod_removed = true;
        Ok(())
    }

    /// Restarts the agent on `node` (killing it first if it runs), waits for
    /// `/readyz` and marks its Pod ready again with one more restart (made
    /// anew if [`Cluster::remove_agent_pod`] deleted it).
    pub async fn restart_agent(&mut self, node: &str) -> Result<()> {
        let i = self.index_of(node)?;
        if let Some(mut agent) = self.nodes[i].agent.take() {
            agent.kill();
            self.set_pod_ready(i, false).await?;
        }
        if self.nodes[i].pod_removed {
            let n = &self.nodes[i];
            with_timeout(
                "registering an agent Pod",
                KUBE_TIMEOUT,
                kube_objects::register_agent_pod(
                    &self.client,
                    &n.name,
                    n.address,
                    n.ports,
                    self.owner_uid.as_deref(),
                ),
            )
            .await?;
            self.nodes[i].pod_removed = false;
        }
        self.nodes[i].restarts += 1;
        self.spawn_agent(i)?;
        self.wait_agent_ready(i).await?;
        self.set_pod_ready(i, true).await
    }

    /// Cuts (`up = false`) or restores a link ([`LinkEnd`]). Needs network
    /// namespaces: on the loopback fallback there is no link to cut.
    pub fn set_link_up(&self, end: LinkEnd<'_>, up: bool) -> Result<()> {
        let net = self.network.as_ref().ok_or_else(|| {
            Error::Invalid("cutting a link needs network namespaces (run as root)".into())
        })?;
        let ep = match end {
            LinkEnd::Origin => &net.origin,
            LinkEnd::Node(name) => &net.nodes[self.index_of(name)?],
        };
        net.set_link_up(ep, up)
    }
}
