//! Reasons across gRPC: the `Reason` proto enum and
//! [`swarmseed_core::Reason`], one to one.
//!
//! Both conversions are exhaustive matches generated from one list, so a
//! variant added on one side and not the other does not compile.

use prost::Message;
use swarmseed_core::Reason;

use crate::pb;

macro_rules! mirror {
    ($($variant:ident,)+) => {
        impl From<Reason> for pb::Reason {
            fn from(r: Reason) -> Self {
                match r {
                    $( Reason::$variant => pb::Reason::$variant, )+
                }
            }
        }

        impl TryFrom<pb::Reason> for Reason {
            type Error = UnspecifiedReason;

            fn try_from(r: pb::Reason) -> Result<Self, Self::Error> {
                match r {
                    pb::Reason::Unspecified => Err(UnspecifiedReason),
                    $( pb::Reason::$variant => Ok(Reason::$variant), )+
                }
            }
        }
    };
}

mirror! {
    Ready,
    NotReady,
    Seeding,
    Complete,
    Stalled,
    AsExpected,
    NoMatchingNodes,
    InvalidSpec,
    InvalidSource,
    SourceUnavailable,
    SourceDenied,
    SourceChanged,
    WeakValidators,
    DigestPinned,
    Terminating,
    DeletionBlocked,
    DigestMismatch,
    InsufficientStorage,
    StorageError,
    UnsafePath,
    PathOccupied,
    AgentUnreachable,
    InvalidAssignment,
    Internal,
    NodeFailed,
    SourceListed,
    Removed,
}

/// `REASON_UNSPECIFIED`, or a number this build does not know (sent by an
/// agent or operator of another version).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no known reason")]
pub struct UnspecifiedReason;

impl pb::ErrorInfo {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        let mut info = Self {
            message: message.into(),
            ..Self::default()
        };
        info.set_reason(reason.into());
        info
    }

    /// The reason, when it is one this build knows.
    pub fn known_reason(&self) -> Option<Reason> {
        pb::Reason::try_from(self.reason)
            .ok()
            .and_then(|r| Reason::try_from(r).ok())
    }
}

/// The gRPC status with which an agent refuses a call: the message, and
/// the reason as an encoded [`pb::ErrorInfo`] in the status details.
pub fn refusal(code: tonic::Code, reason: Reason, message: impl Into<String>) -> tonic::Status {
    let message = message.into();
    let details = pb::ErrorInfo::new(reason, message.clone()).encode_to_vec();
    tonic::Status::with_details(code, message, details.into())
}

/// The reason of a refusal made by [`refusal`]; `None` for a status that
/// carries none (a transport error, a proxy's answer).
pub fn refusal_reason(status: &tonic::Status) -> Option<Reason> {
    if status.details().is_empty() {
        return None;
    }
    pb::ErrorInfo::decode(status.details()).ok()?.known_reason()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_crosses_grpc_and_back() {
        for &r in Reason::ALL {
            assert_eq!(Reason::try_from(pb::Reason::from(r)), Ok(r));
            let info = pb::ErrorInfo::new(r, "m");
            let wire = pb::ErrorInfo::decode(info.encode_to_vec().as_slice()).unwrap();
            assert_eq!(wire.known_reason(), Some(r));
        }
        assert_eq!(
            Reason::try_from(pb::Reason::Unspecified),
            Err(UnspecifiedReason)
        );
    }

    #[test]
    fn an_unknown_reason_number_reads_as_none() {
        let info = pb::ErrorInfo {
            reason: 10_000,
            message: "from a newer agent".into(),
        };
        assert_eq!(info.known_reason(), None);
        assert_eq!(pb::ErrorInfo::default().known_reason(), None);
    }

    #[test]
    fn a_refusal_carries_its_reason_in_the_status_details() {
        let status = refusal(
            tonic::Code::FailedPrecondition,
            Reason::InsufficientStorage,
            "needs 3 GiB, 1 GiB free",
        );
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert_eq!(status.message(), "needs 3 GiB, 1 GiB free");
        assert_eq!(refusal_reason(&status), Some(Reason::InsufficientStorage));
        assert_eq!(refusal_reason(&tonic::Status::unavailable("down")), None);
        let garbage =
            tonic::Status::with_details(tonic::Code::Internal, "x", vec![0xff, 0xff].into());
        assert_eq!(refusal_reason(&garbage), None);
    }
}
