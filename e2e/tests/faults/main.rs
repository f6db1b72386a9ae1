//! The fault matrix of issue 18: one test per row, each disturbing the
//! whole product (real agents, the operator, kubectl, real origins) on a
//! namespace cluster. Needs root and the release binaries
//! (`cargo build --release --bins`); without root every row prints SKIP.
//!
//! Rows by module: `origin` (unsafe object keys; a file changed at the
//! origin before and during its read).

// Tests unwrap like tests do.
#![allow(clippy::unwrap_used)]

mod origin;
