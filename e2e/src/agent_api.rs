//! The agents' control API as the tests and benchmarks call it: with the
//! control token, as the operator does, through a client of their own (the
//! operator's client is part of what they test).

use std::net::SocketAddr;
use std::time::Duration;

use swarmseed_proto::pb::agent_control_client::AgentControlClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::error::{Error, Result};

/// A control API client of one agent.
pub type AgentControl = AgentControlClient<InterceptedService<Channel, Bearer>>;

/// Puts `authorization: Bearer <control token>` on every call.
#[derive(Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl Bearer {
    pub fn new(token: &str) -> Result<Self> {
        format!("Bearer {token}")
            .parse()
            .map(Self)
            .map_err(|_| Error::Invalid("the control token is not an HTTP header value".into()))
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

/// Opens a channel to the agent at `addr`: at most `timeout` to connect,
/// and the same for every call on it.
pub async fn connect(addr: SocketAddr, bearer: &Bearer, timeout: Duration) -> Result<AgentControl> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| Error::network(format!("agent at {addr}"), e))?
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect()
        .await
        .map_err(|e| Error::network(format!("agent at {addr}"), e))?;
    Ok(AgentControlClient::with_interceptor(
        channel,
        bearer.clone(),
    ))
}
