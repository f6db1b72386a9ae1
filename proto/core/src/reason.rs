//! Every reason a `Dataset` condition, a failed node, an agent's refusal or
//! an operator Event can carry. The agent and the operator pass these
//! values, never strings (across gRPC as the `Reason` proto enum): a reason
//! that is not a variant here cannot be reported, and docs/operations.md
//! has a troubleshooting entry for each one (a test checks it).

use std::fmt;
use std::str::FromStr;

macro_rules! reasons {
    ($( $(#[$doc:meta])* $variant:ident, )+) => {
        /// A machine-readable condition reason, spelled in the API as the
        /// variant's name (`InsufficientStorage`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Reason {
            $( $(#[$doc])* $variant, )+
        }

        impl Reason {
            /// Every reason, in declaration order.
            pub const ALL: &[Reason] = &[ $( Reason::$variant, )+ ];

            /// The reason as the API spells it.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( Reason::$variant => stringify!($variant), )+
                }
            }
        }

        impl FromStr for Reason {
            type Err = UnknownReason;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $( stringify!($variant) => Ok(Reason::$variant), )+
                    _ => Err(UnknownReason(s.to_owned())),
                }
            }
        }
    };
}

reasons! {
    // Ready, Progressing and Degraded when nothing is wrong.
    /// Ready=True: every selected node holds a verified copy.
    Ready,
    /// Ready=False: nodes are still seeding and none failed.
    NotReady,
    /// Progressing=True: nodes are receiving the revision.
    Seeding,
    /// Progressing=False: no node is seeding and none failed.
    Complete,
    /// Progressing=False: no node is seeding and some failed.
    Stalled,
    /// Degraded=False.
    AsExpected,
    /// No selected node runs an agent.
    NoMatchingNodes,

    // Found by the operator (spec, credentials, listing).
    /// The operator cannot read the Dataset (a value its types cannot hold).
    InvalidSpec,
    /// The source cannot be used as given (URI, names, size, no files).
    InvalidSource,
    /// The origin cannot be reached or keeps failing; retried.
    SourceUnavailable,
    /// The origin refused the credentials.
    SourceDenied,
    /// An object changed at the origin after it was listed.
    SourceChanged,
    /// ContentPinned=False: some files are pinned only by a weak validator.
    WeakValidators,
    /// ContentPinned=True: `spec.digest` pins the content.
    DigestPinned,

    // Deletion.
    /// The Dataset is being deleted.
    Terminating,
    /// The deletion waits for nodes whose agent runs but cannot be reached.
    DeletionBlocked,

    // Reported for a node, by its agent or about it.
    /// The content digest differs from `spec.digest`.
    DigestMismatch,
    /// The node's store has no room for the revision.
    InsufficientStorage,
    /// The node's store could not be written (other than running out of space).
    StorageError,
    /// A path in the node's store is a symlink or not a directory.
    UnsafePath,
    /// The published path exists and was not made by swarmseed.
    PathOccupied,
    /// The agent could not be asked.
    AgentUnreachable,
    /// The agent was sent an assignment it cannot follow.
    InvalidAssignment,
    /// A task of the agent failed unexpectedly.
    Internal,
    /// The agent reported a failure without a reason it knows.
    NodeFailed,

    // Reasons of the operator's Events only (conditions reuse the above).
    /// The source was listed: files, bytes, chunks and revision.
    SourceListed,
    /// A node the Dataset no longer selects had its copy removed.
    Removed,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A reason string that names no [`Reason`] (from a newer or older peer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown condition reason {0:?}")]
pub struct UnknownReason(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_reads_back_from_its_name() {
        for &r in Reason::ALL {
            assert_eq!(r.as_str().parse::<Reason>(), Ok(r));
        }
        assert_eq!(
            "NoSuchReason".parse::<Reason>(),
            Err(UnknownReason("NoSuchReason".into()))
        );
    }

    #[test]
    fn names_are_unique_camel_case() {
        let mut names: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert!(names.iter().all(|n| n.starts_with(char::is_uppercase)));
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Reason::ALL.len());
    }
}
