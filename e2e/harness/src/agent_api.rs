//! The agents' control API as the tests and benchmarks call it: with the
//! control token, as the operator does, through a client of their own (the
//! operator's client is part of what they test).

use std::net::SocketAddr;
use std::time::Duration;

use swarmseed_proto::ChunkLayout;
use swarmseed_proto::pb::{self, agent_control_client::AgentControlClient};
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

/// An assignment of `layout` in which `seeder` reads every chunk from
/// `origin` and is the only peer: given to the seeder, it fetches the
/// dataset; given to another agent, that agent pulls all of it from the
/// seeder. One transfer between two agents without the operator, as the
/// peer benchmark and the fault tests set it up.
pub fn one_seeder_assignment(
    dataset: pb::DatasetRef,
    origin: pb::Origin,
    layout: &ChunkLayout,
    seeder: pb::Peer,
    seeder_key: Vec<u8>,
) -> pb::Assignment {
    pb::Assignment {
        dataset: Some(dataset),
        revision: layout.revision().to_hex(),
        chunk_size: layout.chunk_size(),
        files: layout.files().to_vec(),
        origin: Some(origin),
        fetchers: vec![pb::OriginFetcher {
            node_name: seeder.node_name.clone(),
            public_key: seeder_key,
            ranges: vec![pb::ChunkRange {
                start: 0,
                end: layout.chunk_count(),
            }],
        }],
        peers: vec![seeder],
        peer_token: vec![9; 32],
        plan_generation: 1,
        ..Default::default()
    }
}
