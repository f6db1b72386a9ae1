//! The fault matrix (issue 18): one named test per fault, each through the
//! product (kubectl, the operator, real agents on namespace nodes), each
//! ending with the invariants a user relies on: identical bytes where the
//! Dataset is Ready, a condition naming the fault where it is not, nothing
//! partial at a published path.

// Tests unwrap like tests do.
#![allow(clippy::unwrap_used)]

mod storage;
