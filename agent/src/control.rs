//! The gRPC control API the operator calls (`swarmseed.agent.v1.AgentControl`).
//!
//! Every call must carry `authorization: Bearer <token>` with the control
//! token shared by the operator and the agents (a Secret mounted into both;
//! see docs/security.md). Anything else is refused with UNAUTHENTICATED.

use std::sync::Arc;

use subtle::ConstantTimeEq;
use swarmseed_proto::pb::{self, agent_control_server::AgentControl};
use tonic::{Request, Response, Status};

use crate::agent::Agent;
use crate::store::DatasetKey;

pub struct ControlService {
    agent: Arc<Agent>,
}

impl ControlService {
    pub fn new(agent: Arc<Agent>) -> Self {
        Self { agent }
    }
}

#[tonic::async_trait]
impl AgentControl for ControlService {
    async fn apply_assignment(
        &self,
        request: Request<pb::Assignment>,
    ) -> Result<Response<pb::ApplyAssignmentResponse>, Status> {
        // Run to the end even if the caller gives up (a revision of many
        // files takes a while to lay out): its retry then finds the
        // assignment in place instead of starting over.
        let agent = self.agent.clone();
        let resp = tokio::spawn(async move { agent.apply(request.into_inner()).await })
            .await
            .map_err(|e| Status::internal(format!("applying the assignment: {e}")))??;
        Ok(Response::new(resp))
    }

    async fn remove_dataset(
        &self,
        request: Request<pb::RemoveDatasetRequest>,
    ) -> Result<Response<pb::RemoveDatasetResponse>, Status> {
        let key = DatasetKey::from_ref(request.get_ref().dataset.as_ref())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let existed = self
            .agent
            .remove(&key)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::RemoveDatasetResponse { existed }))
    }

    async fn sync_datasets(
        &self,
        request: Request<pb::SyncDatasetsRequest>,
    ) -> Result<Response<pb::SyncDatasetsResponse>, Status> {
        let removed = self
            .agent
            .sync(&request.get_ref().datasets)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::SyncDatasetsResponse {
            removed: removed.iter().map(DatasetKey::to_ref).collect(),
        }))
    }

    async fn get_status(
        &self,
        request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::AgentStatus>, Status> {
        let only = match request.get_ref().dataset.as_ref() {
            Some(d) => Some(
                DatasetKey::new(&d.namespace, &d.name)
                    .map_err(|e| Status::invalid_argument(e.to_string()))?,
            ),
            None => None,
        };
        Ok(Response::new(self.agent.status(only.as_ref())))
    }
}

/// Checks the bearer token on every control call.
#[derive(Clone)]
pub struct ControlAuth {
    expected: Arc<Vec<u8>>,
}

impl ControlAuth {
    pub fn new(token: &str) -> Self {
        Self {
            expected: Arc::new(format!("Bearer {}", token.trim()).into_bytes()),
        }
    }
}

impl tonic::service::Interceptor for ControlAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let given = request
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        // Constant time for equal lengths; the length is not secret.
        if bool::from(given.ct_eq(self.expected.as_slice())) {
            Ok(request)
        } else {
            Err(Status::unauthenticated("missing or wrong control token"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor;

    fn call(auth: &mut ControlAuth, header: Option<&str>) -> Result<(), tonic::Code> {
        let mut request = Request::new(());
        if let Some(h) = header {
            request
                .metadata_mut()
                .insert("authorization", h.parse().expect("ascii header"));
        }
        auth.call(request).map(|_| ()).map_err(|s| s.code())
    }

    #[test]
    fn only_the_right_bearer_token_gets_in() {
        let mut auth = ControlAuth::new("s3cret\n");
        assert_eq!(call(&mut auth, Some("Bearer s3cret")), Ok(()));
        for wrong in [
            None,
            Some("Bearer s3cres"),
            Some("Bearer s3cret2"),
            Some("s3cret"),
        ] {
            assert_eq!(
                call(&mut auth, wrong),
                Err(tonic::Code::Unauthenticated),
                "{wrong:?}"
            );
        }
    }
}
