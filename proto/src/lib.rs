//! Owns the wire contracts between operator and agent: the gRPC API generated from `agent.proto`, listings, the chunk layout, digests and path rules.
//! Never does IO of its own: no sockets, no files, no Kubernetes.
//!
//! Types shared by the swarmseed operator and agent.
//!
//! - [`pb`]: the operator→agent gRPC API, generated from `proto/`.
//! - [`layout`]: how a source listing is cut into chunks, and the identity of
//!   a revision (which listing, which chunk size).
//! - [`digest`]: chunk digests and the content digest that names what a
//!   revision holds, independent of where it came from.
//! - [`path`]: the rules a listed path must obey before anything touches a
//!   disk.
//! - [`reason`]: condition reasons across gRPC (a proto enum, and the
//!   details of the status with which an agent refuses a call).

pub mod digest;
pub mod layout;
pub mod path;
pub mod reason;

/// Generated protobuf and tonic code for `swarmseed.agent.v1`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("swarmseed.agent.v1");
}

pub use reason::{UnspecifiedReason, refusal, refusal_reason};
pub use swarmseed_core::Reason;

pub use digest::{ChunkDigest, ContentDigest};
pub use layout::{Chunk, ChunkLayout, LayoutError, RevisionId, Segment};
pub use path::{PathError, validate_path};
