//! Owns the data model every swarmseed process shares: the chunk layout, digests, path rules, node and agent label keys, condition reasons and where a verified byte came from.
//! Never does IO, and depends on no async runtime, gRPC or Kubernetes crate (only the protobuf codec, for the listed file).
//!
//! - [`layout`]: how a source listing is cut into chunks, and the identity of
//!   a revision (which listing, which chunk size).
//! - [`digest`]: chunk digests and the content digest that names what a
//!   revision holds, independent of where it came from.
//! - [`path`]: the rules a listed path must obey before anything touches a
//!   disk.
//! - [`label`]: the node label that marks a verified copy, and the labels
//!   that find the agent's Pods.
//! - [`reason`], [`source`]: condition reasons and byte sources.

pub mod digest;
pub mod label;
pub mod layout;
pub mod path;
pub mod reason;
pub mod source;

pub use reason::{Reason, UnknownReason};
pub use source::ByteSource;
