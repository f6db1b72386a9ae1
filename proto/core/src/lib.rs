//! Owns the vocabulary every swarmseed process shares: condition reasons and
//! where a verified byte came from.
//! Never does IO, and depends on no async runtime, gRPC or Kubernetes crate.

pub mod reason;
pub mod source;

pub use reason::{Reason, UnknownReason};
pub use source::ByteSource;
