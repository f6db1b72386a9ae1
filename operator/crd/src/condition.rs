//! The `type`s and `reason`s of a Dataset's `status.conditions`, as the
//! operator writes them and the plugin and tests read them.

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
/// Present only where some file is pinned at the origin by a weak
/// validator alone: `False` (`WeakValidators`) until `spec.digest` pins
/// the content, then `True` (`DigestPinned`).
pub const CONTENT_PINNED: &str = "ContentPinned";

/// Machine-readable condition reasons.
pub mod reason {
    pub const READY: &str = "Ready";
    pub const NOT_READY: &str = "NotReady";
    pub const SEEDING: &str = "Seeding";
    pub const COMPLETE: &str = "Complete";
    pub const STALLED: &str = "Stalled";
    pub const AS_EXPECTED: &str = "AsExpected";
    pub const NO_MATCHING_NODES: &str = "NoMatchingNodes";
    pub const SOURCE_UNAVAILABLE: &str = "SourceUnavailable";
    pub const INVALID_SOURCE: &str = "InvalidSource";
    /// The operator cannot read the Dataset at all (a value its types
    /// cannot hold); the message names the field.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// Some files are pinned at the origin only by a weak validator.
    pub const WEAK_VALIDATORS: &str = "WeakValidators";
    /// `spec.digest` pins the content whatever the validators.
    pub const DIGEST_PINNED: &str = "DigestPinned";
    /// The Dataset is being deleted.
    pub const TERMINATING: &str = "Terminating";
    /// The deletion waits for nodes whose agent runs but cannot be reached.
    pub const DELETION_BLOCKED: &str = "DeletionBlocked";
    /// A node could not write to its store (other than running out of
    /// space).
    pub const STORAGE_ERROR: &str = "StorageError";
    pub const DIGEST_MISMATCH: &str = "DigestMismatch";
    pub const INSUFFICIENT_STORAGE: &str = "InsufficientStorage";
    pub const AGENT_UNREACHABLE: &str = "AgentUnreachable";
    pub const UNSAFE_PATH: &str = "UnsafePath";
    pub const NODE_FAILED: &str = "NodeFailed";
}
