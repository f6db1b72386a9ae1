//! The `type`s and `reason`s of a Dataset's `status.conditions`, as the
//! operator writes them and the plugin and tests read them.

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
/// Present only where some file is pinned at the origin by a weak
/// validator alone: `False` (`WeakValidators`) until `spec.digest` pins
/// the content, then `True` (`DigestPinned`).
pub const CONTENT_PINNED: &str = "ContentPinned";

/// Machine-readable condition reasons: one enum for every process, spelled
/// in the API by [`Reason::as_str`].
pub use swarmseed_core::Reason;
