//! Datasets and agents that are not there when they are needed: a deletion
//! while an agent is not Ready or cannot be reached, and an agent that
//! (re)starts after Datasets were deleted. The reconciler runs against the
//! test API server; the agent is a fake control API that records calls.

// Tests unwrap like tests do.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube_standin::ApiServer;
use swarmseed_core::label::AGENT_POD_LABELS;
use swarmseed_crd::Dataset;
use swarmseed_operator::controller::FINALIZER;
use swarmseed_proto::pb;
use swarmseed_proto::pb::agent_control_server::{AgentControl, AgentControlServer};
use tonic::{Request, Response, Status};

mod support;
use support::{AGENT_NS, dataset, wait_for};

#[derive(Default)]
struct Calls {
    syncs: Vec<Vec<pb::DatasetRef>>,
    removes: Vec<pb::DatasetRef>,
}

/// An agent that holds nothing, answers every call, and records them.
#[derive(Clone, Default)]
struct FakeAgent {
    calls: Arc<Mutex<Calls>>,
    /// Refuse RemoveDataset (as an agent cut off would fail to answer).
    refuse_removal: Arc<Mutex<bool>>,
}

#[tonic::async_trait]
impl AgentControl for FakeAgent {
    async fn apply_assignment(
        &self,
        _: Request<pb::Assignment>,
    ) -> Result<Response<pb::ApplyAssignmentResponse>, Status> {
        Ok(Response::new(pb::ApplyAssignmentResponse::default()))
    }

    async fn remove_dataset(
        &self,
        r: Request<pb::RemoveDatasetRequest>,
    ) -> Result<Response<pb::RemoveDatasetResponse>, Status> {
        if *self.refuse_removal.lock().unwrap() {
            return Err(Status::unavailable("cut off"));
        }
        let d = r.into_inner().dataset.unwrap_or_default();
        self.calls.lock().unwrap().removes.push(d);
        Ok(Response::new(pb::RemoveDatasetResponse { existed: true }))
    }

    async fn get_status(
        &self,
        _: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::AgentStatus>, Status> {
        Ok(Response::new(pb::AgentStatus {
            node_name: "n1".into(),
            public_key: vec![1; 32],
            peer_address: "127.0.0.1:1".into(),
            ..Default::default()
        }))
    }

    async fn sync_datasets(
        &self,
        r: Request<pb::SyncDatasetsRequest>,
    ) -> Result<Response<pb::SyncDatasetsResponse>, Status> {
        self.calls
            .lock()
            .unwrap()
            .syncs
            .push(r.into_inner().datasets);
        Ok(Response::new(pb::SyncDatasetsResponse::default()))
    }
}

struct World {
    server: ApiServer,
    client: kube::Client,
    agent: FakeAgent,
    operator: tokio::task::JoinHandle<()>,
    datasets: Api<Dataset>,
    pods: Api<Pod>,
}

impl World {
    async fn start() -> Self {
        let (server, client) = support::api_server_with_crd().await;
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": AGENT_NS }
        }))
        .unwrap();
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap();
        let node: Node = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Node", "metadata": { "name": "n1" }
        }))
        .unwrap();
        Api::<Node>::all(client.clone())
            .create(&PostParams::default(), &node)
            .await
            .unwrap();

        let agent = FakeAgent::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let svc = AgentControlServer::new(agent.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );

        let operator = support::start_operator(&client, port);
        World {
            datasets: Api::namespaced(client.clone(), "default"),
            pods: Api::namespaced(client.clone(), AGENT_NS),
            server,
            client,
            agent,
            operator,
        }
    }

    /// The agent Pod of node n1 with the given phase, readiness and
    /// restart count, pointing at the fake agent.
    async fn agent_pod(&self, phase: &str, ready: bool, restarts: i32) {
        let name = "swarmseed-agent-n1";
        if self.pods.get_opt(name).await.unwrap().is_none() {
            let labels: BTreeMap<&str, &str> = AGENT_POD_LABELS.into_iter().collect();
            let pod: Pod = serde_json::from_value(serde_json::json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": { "name": name, "namespace": AGENT_NS, "labels": labels },
                "spec": { "nodeName": "n1", "containers": [{ "name": "agent", "image": "x" }] },
            }))
            .unwrap();
            self.pods
                .create(&PostParams::default(), &pod)
                .await
                .unwrap();
        }
        let ready = if ready { "True" } else { "False" };
        let status = serde_json::json!({ "status": {
            "phase": phase,
            "podIP": "127.0.0.1",
            "conditions": [{ "type": "Ready", "status": ready }],
            "containerStatuses": [{
                "name": "agent", "image": "x", "imageID": "", "ready": ready == "True",
                "restartCount": restarts,
            }],
        } });
        self.pods
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap();
    }

    async fn dataset(&self, name: &str) -> Dataset {
        // Nobody serves it: the Dataset never gets further than listing.
        let spec = serde_json::json!({ "source": { "uri": "http://127.0.0.1:1/data.bin" } });
        let ds = dataset(name, spec);
        self.datasets
            .create(&PostParams::default(), &ds)
            .await
            .unwrap();
        wait_for("the finalizer", async || {
            let ds = self.datasets.get(name).await.ok()?;
            ds.finalizers()
                .contains(&FINALIZER.to_owned())
                .then_some(ds)
        })
        .await
    }

    async fn gone(&self, name: &str) {
        wait_for(&format!("{name} to go"), async || {
            self.datasets
                .get_opt(name)
                .await
                .ok()
                .filter(Option::is_none)
        })
        .await;
    }

    async fn stop(self) {
        self.operator.abort();
        drop(self.client);
        self.server.shutdown().await;
    }
}

/// An agent that is up but not Ready still holds (and resumes) what it was
/// given: the finalizer was released without asking it, and the Dataset
/// came back on that node. Now it is asked like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_reaches_an_agent_that_is_not_ready() {
    let w = World::start().await;
    w.agent_pod("Running", false, 0).await;
    let ds = w.dataset("llama").await;
    w.datasets
        .delete("llama", &DeleteParams::default())
        .await
        .unwrap();
    w.gone("llama").await;
    let removes = w.agent.calls.lock().unwrap().removes.clone();
    assert!(
        removes
            .iter()
            .any(|d| d.name == "llama" && d.uid == ds.uid().unwrap()),
        "RemoveDataset reached the agent: {removes:?}"
    );
    w.stop().await;
}

/// A deletion held up by a node whose agent runs but cannot be reached
/// says so, naming the node; it completes once the agent Pod is gone (a
/// restarted agent then drops the Dataset at its first sync).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_deletion_names_the_node_and_ends_when_its_agent_is_gone() {
    let w = World::start().await;
    w.agent_pod("Running", true, 0).await;
    w.dataset("llama").await;
    *w.agent.refuse_removal.lock().unwrap() = true;
    w.datasets
        .delete("llama", &DeleteParams::default())
        .await
        .unwrap();
    let (reason, message) = wait_for("the Degraded condition", async || {
        let st = w.datasets.get("llama").await.ok()?.status?;
        let c = st.conditions.into_iter().find(|c| c.type_ == "Degraded")?;
        (c.status == "True" && c.reason == "DeletionBlocked").then_some((c.reason, c.message))
    })
    .await;
    assert_eq!(reason, "DeletionBlocked", "{message}");
    assert!(message.contains("n1 ("), "names the node: {message}");
    let ready = w
        .datasets
        .get("llama")
        .await
        .unwrap()
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "Terminating")
    );

    // The agent's container stopped (not running): nothing to wait for.
    w.agent_pod("Failed", false, 0).await;
    w.gone("llama").await;
    w.stop().await;
}

/// Each agent process is told once which Datasets exist: when the
/// operator first finds it ready and again after it restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_agent_process_is_told_which_datasets_exist() {
    let w = World::start().await;
    let ds = w.dataset("llama").await;
    w.agent_pod("Running", true, 0).await;
    let listed = |calls: &Calls, n: usize| {
        calls.syncs.get(n).is_some_and(|s| {
            s.iter().any(|d| {
                d.namespace == "default" && d.name == "llama" && Some(&d.uid) == ds.uid().as_ref()
            })
        })
    };
    wait_for("the first sync", async || {
        listed(&w.agent.calls.lock().unwrap(), 0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(w.agent.calls.lock().unwrap().syncs.len(), 1, "told once");
    w.agent_pod("Running", true, 1).await;
    wait_for("a sync after the restart", async || {
        listed(&w.agent.calls.lock().unwrap(), 1).then_some(())
    })
    .await;
    w.stop().await;
}
