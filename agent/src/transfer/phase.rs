//! Where a transfer is: pending (recovering what survived a restart),
//! transferring, publishing, ready, or failed. Only another failure moves
//! a transfer out of failed (the last one is reported).

use swarmseed_proto::Reason;
use swarmseed_proto::pb::{self, DatasetState};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Phase {
    Pending,
    Transferring,
    Publishing,
    Ready,
    Failed { reason: Reason, message: String },
}

impl Phase {
    /// Moves to `next`, unless the transfer failed already. Whether it
    /// moved.
    pub(super) fn advance(&mut self, next: Phase) -> bool {
        if matches!(self, Phase::Failed { .. }) {
            return false;
        }
        *self = next;
        true
    }

    pub(super) fn fail(&mut self, reason: Reason, message: String) {
        *self = Phase::Failed { reason, message };
    }

    pub(super) fn is_ready(&self) -> bool {
        matches!(self, Phase::Ready)
    }

    pub(super) fn is_failed(&self) -> bool {
        matches!(self, Phase::Failed { .. })
    }

    /// The state reported to the operator, and the error of a failure.
    pub(super) fn report(&self) -> (DatasetState, Option<pb::ErrorInfo>) {
        match self {
            Phase::Pending => (DatasetState::Pending, None),
            Phase::Transferring => (DatasetState::Transferring, None),
            Phase::Publishing => (DatasetState::Publishing, None),
            Phase::Ready => (DatasetState::Ready, None),
            Phase::Failed { reason, message } => (
                DatasetState::Failed,
                Some(pb::ErrorInfo::new(*reason, message.clone())),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_failure_leaves_a_failure_and_it_is_reported_with_its_reason() {
        let mut p = Phase::Pending;
        assert!(p.advance(Phase::Transferring));
        p.fail(Reason::StorageError, "disk".into());
        assert!(!p.advance(Phase::Publishing));
        assert!(!p.advance(Phase::Ready));
        p.fail(Reason::DigestMismatch, "pinned".into());
        let (state, error) = p.report();
        assert_eq!(state, DatasetState::Failed);
        assert_eq!(
            error.map(|e| (e.known_reason(), e.message)),
            Some((Some(Reason::DigestMismatch), "pinned".into()))
        );
        assert!(p.is_failed() && !p.is_ready());
    }
}
