//! Owns the wire contract between operator and agent: the gRPC API generated from `agent.proto`.
//! Never does IO of its own (no sockets, no files, no Kubernetes), and never defines the data model: that is `swarmseed-core`'s.
//!
//! - [`pb`]: the operator→agent gRPC API, generated from `proto/`. Its
//!   `FileEntry` is [`layout::FileEntry`] itself, so a listing goes on the
//!   wire without a conversion.
//! - [`layout`], [`digest`], [`path`]: the chunk layout, digests and path
//!   rules of `swarmseed-core`, re-exported so the wire types and the data
//!   they carry come from one place.
//! - [`reason`]: condition reasons across gRPC (a proto enum, and the
//!   details of the status with which an agent refuses a call).

pub use swarmseed_core::{digest, layout, path};
pub mod reason;

/// Generated protobuf and tonic code for `swarmseed.agent.v1`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("swarmseed.agent.v1");

    /// Mapped by `build.rs` onto the core type (`extern_path`).
    pub use swarmseed_core::layout::FileEntry;
}

pub use reason::{UnspecifiedReason, refusal, refusal_reason};
pub use swarmseed_core::Reason;

pub use digest::{ChunkDigest, ContentDigest};
pub use layout::{Chunk, ChunkLayout, LayoutError, RevisionId, Segment};
pub use path::{PathError, validate_path};
