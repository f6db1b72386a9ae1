//! The fault matrix: one named test per row, each a real cluster (nodes in
//! network namespaces, shaped links, the release binaries) put through one
//! fault and checked for what a user relies on afterwards: identical bytes
//! where a Dataset is Ready, a condition naming the fault where it is not,
//! nothing partial at a published path. Run after `cargo build --release
//! --bins`.
//!
//! Rows by module: `hostile_peers`, `storage`, `origin` (unsafe object
//! keys; a file changed at the origin before and during its read).

// Tests unwrap like tests do.
#![allow(clippy::unwrap_used)]

mod hostile_peers;
mod origin;
mod storage;
