//! The fault matrix: one named test per row, each a real cluster (nodes in
//! network namespaces, shaped links, the release binaries) put through one
//! fault and checked for what a user relies on afterwards. Run after
//! `cargo build --release --bins`.

// Tests unwrap like tests do.
#![allow(clippy::unwrap_used)]

mod hostile_peers;
