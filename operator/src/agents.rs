//! Finding the agents (the agent DaemonSet's Pods) and talking to them.
//!
//! [`agent_pods`] is pure: Pods in, one agent per node out. [`AgentClient`]
//! is the gRPC client of the control API: every call carries the bearer
//! token and is bounded by a timeout.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use swarmseed_proto::pb::agent_control_client::AgentControlClient;
use swarmseed_proto::{Reason, pb};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// Default port of an agent's control API.
pub const DEFAULT_CONTROL_PORT: u16 = 7400;

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("reading the control token from {path}: {source}")]
    TokenFile {
        path: String,
        source: std::io::Error,
    },
    #[error("the control token in {0} is empty or not printable ASCII")]
    BadToken(String),
    #[error("agent address {0:?} is not an IP address")]
    Address(String),
    #[error("agent {addr}: {status}")]
    Call {
        addr: SocketAddr,
        status: Box<tonic::Status>,
    },
    #[error("agent {addr}: no answer within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
}

impl AgentError {
    /// The condition reason when the agent answered and refused (it names
    /// it in the status details: [`swarmseed_proto::refusal`]); `None` when
    /// it could not be asked.
    pub fn refusal(&self) -> Option<Reason> {
        match self {
            Self::Call { status, .. } => swarmseed_proto::refusal_reason(status),
            _ => None,
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            Self::TokenFile { .. } => "token_file",
            Self::BadToken(_) => "bad_token",
            Self::Address(_) => "address",
            Self::Call { .. } => "call",
            Self::Timeout { .. } => "timeout",
        }
    }
}

/// The agent Pod on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentPod {
    pub node_name: String,
    pub pod_name: String,
    /// Empty until the Pod has an IP.
    pub pod_ip: String,
    /// Running, Ready, not being deleted, with an IP.
    pub ready: bool,
    /// The Pod's phase is `Running`: its agent may be up (and hold data)
    /// even when it is not Ready or cannot be reached, e.g. on a node cut
    /// off from the network. A Pod that is not running starts its agent
    /// afresh, and a fresh agent drops what it holds of deleted Datasets
    /// at its first `SyncDatasets`.
    pub running: bool,
    /// Identifies one run of the agent process: the Pod's uid and its
    /// containers' restart count. A new value is a new process, one that
    /// resumed from its disk and has not been told which Datasets exist.
    pub incarnation: String,
}

fn pod_running(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

fn incarnation(pod: &Pod) -> String {
    let restarts: i64 = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| cs.iter().map(|c| i64::from(c.restart_count)).sum())
        .unwrap_or(0);
    format!(
        "{}/{restarts}",
        pod.metadata.uid.as_deref().unwrap_or_default()
    )
}

fn pod_ready(pod: &Pod) -> bool {
    let status = pod.status.as_ref();
    pod.metadata.deletion_timestamp.is_none()
        && status.and_then(|s| s.phase.as_deref()) == Some("Running")
        && status
            .and_then(|s| s.pod_ip.as_deref())
            .is_some_and(|ip| !ip.is_empty())
        && status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// One agent per node from the agent Pods (already filtered by
/// [`swarmseed_core::label::AGENT_SELECTOR`]). During a rollout a node may
/// briefly run two: the ready one wins, then the one created last.
pub fn agent_pods<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> BTreeMap<String, AgentPod> {
    let mut out: BTreeMap<String, (AgentPod, Option<&k8s_openapi::jiff::Timestamp>)> =
        BTreeMap::new();
    for pod in pods {
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            continue;
        };
        let candidate = AgentPod {
            node_name: node.clone(),
            pod_name: pod.metadata.name.clone().unwrap_or_default(),
            pod_ip: pod
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.clone())
                .unwrap_or_default(),
            ready: pod_ready(pod),
            running: pod_running(pod),
            incarnation: incarnation(pod),
        };
        let created = pod.metadata.creation_timestamp.as_ref().map(|t| &t.0);
        let better = match out.get(&node) {
            None => true,
            Some((cur, cur_created)) => (candidate.ready, created) > (cur.ready, *cur_created),
        };
        if better {
            out.insert(node, (candidate, created));
        }
    }
    out.into_iter().map(|(k, (v, _))| (k, v)).collect()
}

/// The control API's bearer token.
#[derive(Clone)]
pub struct ControlToken(MetadataValue<Ascii>);

impl std::fmt::Debug for ControlToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ControlToken(<redacted>)")
    }
}

impl ControlToken {
    /// Reads the token from a file (a mounted Secret); surrounding
    /// whitespace is ignored, as the agent does.
    pub fn from_file(path: &Path) -> Result<Self, AgentError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| AgentError::TokenFile {
            path: shown.clone(),
            source,
        })?;
        Self::new(&text).ok_or(AgentError::BadToken(shown))
    }

    pub fn new(token: &str) -> Option<Self> {
        let token = token.trim();
        if token.is_empty() {
            return None;
        }
        format!("Bearer {token}").parse().ok().map(Self)
    }
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct BearerAuth(ControlToken);

impl Interceptor for BearerAuth {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.0.clone());
        Ok(request)
    }
}

/// A control API client of one agent. Cheap to clone (one shared HTTP/2
/// connection, opened on first use).
#[derive(Clone)]
pub struct AgentClient {
    addr: SocketAddr,
    inner: AgentControlClient<InterceptedService<Channel, BearerAuth>>,
    timeout: Duration,
}

impl AgentClient {
    /// A client of the agent at `pod_ip:port`; connects on first call.
    pub fn new(
        pod_ip: &str,
        port: u16,
        token: ControlToken,
        timeout: Duration,
    ) -> Result<Self, AgentError> {
        let ip: IpAddr = pod_ip
            .parse()
            .map_err(|_| AgentError::Address(pod_ip.to_owned()))?;
        let addr = SocketAddr::new(ip, port);
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|_| AgentError::Address(pod_ip.to_owned()))?
            .connect_timeout(CONNECT_TIMEOUT);
        let channel = endpoint.connect_lazy();
        Ok(Self {
            addr,
            inner: AgentControlClient::with_interceptor(channel, BearerAuth(token)),
            timeout,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, AgentError> {
        let (addr, timeout) = (self.addr, self.timeout);
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(status)) => Err(AgentError::Call {
                addr,
                status: Box::new(status),
            }),
            Err(_) => Err(AgentError::Timeout { addr, timeout }),
        }
    }

    /// Identity and progress (of one dataset, or of all).
    pub async fn status(
        &self,
        dataset: Option<pb::DatasetRef>,
    ) -> Result<pb::AgentStatus, AgentError> {
        let mut c = self.inner.clone();
        self.bounded(c.get_status(pb::GetStatusRequest { dataset }))
            .await
    }

    /// Idempotent: the same assignment twice changes nothing.
    pub async fn apply(
        &self,
        assignment: pb::Assignment,
    ) -> Result<pb::ApplyAssignmentResponse, AgentError> {
        let mut c = self.inner.clone();
        self.bounded(c.apply_assignment(assignment)).await
    }

    /// Tells the agent which Datasets exist; it drops what it resumed
    /// from its disk of any other. Returns what it removed.
    pub async fn sync(
        &self,
        datasets: Vec<pb::DatasetRef>,
    ) -> Result<Vec<pb::DatasetRef>, AgentError> {
        let mut c = self.inner.clone();
        let r = self
            .bounded(c.sync_datasets(pb::SyncDatasetsRequest { datasets }))
            .await?;
        Ok(r.removed)
    }

    /// Removes the dataset from the node; false when it held nothing.
    pub async fn remove(&self, dataset: pb::DatasetRef) -> Result<bool, AgentError> {
        let mut c = self.inner.clone();
        let r = self
            .bounded(c.remove_dataset(pb::RemoveDatasetRequest {
                dataset: Some(dataset),
            }))
            .await?;
        Ok(r.existed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;
    use swarmseed_proto::pb::agent_control_server::{AgentControl, AgentControlServer};
    use tonic::{Request, Response, Status};

    fn pod(name: &str, node: &str, ip: &str, ready: bool, created: i64) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        p.metadata.creation_timestamp = Some(Time(
            Timestamp::from_second(1_800_000_000 + created).unwrap(),
        ));
        p.spec = Some(PodSpec {
            node_name: Some(node.into()),
            ..Default::default()
        });
        p.status = Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some(ip.into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        p
    }

    #[test]
    fn one_agent_per_node_preferring_ready_then_newest() {
        let mut unscheduled = pod("x", "n", "", false, 0);
        unscheduled.spec = None;
        let pods = vec![
            pod("a-old", "n1", "10.0.0.1", true, 0),
            pod("a-new", "n1", "10.0.0.2", true, 10),
            pod("b-ready", "n2", "10.0.1.1", true, 0),
            pod("b-starting", "n2", "10.0.1.2", false, 10),
            pod("c", "n3", "", false, 0),
            unscheduled,
        ];
        let a = agent_pods(&pods);
        assert_eq!(a.len(), 3);
        assert_eq!(a["n1"].pod_name, "a-new");
        assert_eq!(a["n2"].pod_name, "b-ready");
        assert!(a["n2"].ready);
        assert!(!a["n3"].ready, "no IP yet");
        let mut deleting = pod("d", "n4", "10.0.2.1", true, 0);
        deleting.metadata.deletion_timestamp =
            Some(Time(Timestamp::from_second(1_800_000_100).unwrap()));
        assert!(!agent_pods(&[deleting])["n4"].ready);
    }

    #[test]
    fn tokens_are_trimmed_and_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        std::fs::write(&p, "s3cret\n").unwrap();
        let t = ControlToken::from_file(&p).unwrap();
        assert_eq!(t.0.to_str().unwrap(), "Bearer s3cret");
        assert!(!format!("{t:?}").contains("s3cret"));
        std::fs::write(&p, "  \n").unwrap();
        assert_eq!(
            ControlToken::from_file(&p).unwrap_err().label(),
            "bad_token"
        );
        let missing = ControlToken::from_file(&dir.path().join("nope")).unwrap_err();
        assert_eq!(missing.label(), "token_file");
    }

    /// Answers GetStatus with the authorization header it saw as the node
    /// name; ApplyAssignment never answers.
    struct Fake;

    #[tonic::async_trait]
    impl AgentControl for Fake {
        async fn apply_assignment(
            &self,
            _: Request<pb::Assignment>,
        ) -> Result<Response<pb::ApplyAssignmentResponse>, Status> {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Err(Status::internal("unreachable"))
        }
        async fn sync_datasets(
            &self,
            _: Request<pb::SyncDatasetsRequest>,
        ) -> Result<Response<pb::SyncDatasetsResponse>, Status> {
            Ok(Response::new(pb::SyncDatasetsResponse::default()))
        }
        async fn remove_dataset(
            &self,
            _: Request<pb::RemoveDatasetRequest>,
        ) -> Result<Response<pb::RemoveDatasetResponse>, Status> {
            Err(Status::not_found("nothing here"))
        }
        async fn get_status(
            &self,
            r: Request<pb::GetStatusRequest>,
        ) -> Result<Response<pb::AgentStatus>, Status> {
            let auth = r
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            Ok(Response::new(pb::AgentStatus {
                node_name: auth.into(),
                ..Default::default()
            }))
        }
    }

    #[tokio::test]
    async fn calls_carry_the_token_and_are_bounded() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(AgentControlServer::new(Fake))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let token = ControlToken::new("tok").unwrap();
        let c =
            AgentClient::new("127.0.0.1", addr.port(), token, Duration::from_millis(500)).unwrap();
        assert_eq!(c.status(None).await.unwrap().node_name, "Bearer tok");
        let err = c.apply(pb::Assignment::default()).await.unwrap_err();
        assert_eq!(err.label(), "timeout", "{err}");
        let err = c.remove(pb::DatasetRef::default()).await.unwrap_err();
        assert!(err.to_string().contains("nothing here"), "{err}");
        assert_eq!(
            AgentClient::new("node-1", 1, ControlToken::new("t").unwrap(), CALL_TIMEOUT)
                .err()
                .map(|e| e.label()),
            Some("address")
        );
        server.abort();
    }
}
