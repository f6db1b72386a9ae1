//! The one error type of origin access, with stable labels for metrics and
//! the condition reasons the operator shows on a `Dataset`.

use swarmseed_proto::Reason;
use thiserror::Error;

/// Why an origin operation failed. `path` is the file (relative to the URI)
/// or, for listing, the URI itself.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OriginError {
    /// The URI or its settings cannot name an origin.
    #[error("invalid origin URI {uri:?}: {reason}")]
    InvalidUri { uri: String, reason: String },
    /// A well-formed URI this build cannot serve (unknown scheme, …).
    #[error("unsupported origin {uri:?}: {reason}")]
    Unsupported { uri: String, reason: String },
    /// The bucket, prefix, repository, revision or URL does not exist.
    #[error("{path}: not found at the origin")]
    NotFound { path: String },
    /// The object is no longer the one that was listed (other ETag or
    /// version, deleted, shrunk). No byte of the new content is returned.
    #[error("{path}: changed at the origin since it was listed")]
    Changed { path: String },
    /// The origin refused the credentials (HTTP 401/403).
    #[error("{path}: access denied by the origin: {message}")]
    Denied { path: String, message: String },
    /// Network errors, timeouts, throttling and 5xx answers that outlived
    /// the retries.
    #[error("{path}: origin unavailable: {message}")]
    Unavailable { path: String, message: String },
    /// The origin answered something unusable: a short or oversized body,
    /// a wrong Content-Range, a listing that cannot be parsed.
    #[error("{path}: unexpected answer from the origin: {message}")]
    Protocol { path: String, message: String },
    /// The source holds no file (after include/exclude). `detail` says
    /// what was listed and what matched nothing.
    #[error("{uri}: no files: {detail}")]
    NoFiles { uri: String, detail: String },
    /// The listing names an object that cannot be a file of the dataset
    /// as it is named (a key with a leading or trailing `/`, an unsafe or
    /// too long path). `message` names it as the origin does.
    #[error("{uri}: unusable name in the listing: {message}")]
    UnusableName {
        uri: String,
        name: String,
        message: String,
    },
    /// The listing is beyond what one Dataset may hold (entries, files or
    /// bytes).
    #[error("{uri}: listing too large: {message}")]
    TooLarge { uri: String, message: String },
}

impl OriginError {
    /// Short stable label, for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::InvalidUri { .. } => "invalid_uri",
            Self::Unsupported { .. } => "unsupported",
            Self::NotFound { .. } => "not_found",
            Self::Changed { .. } => "changed",
            Self::Denied { .. } => "denied",
            Self::Unavailable { .. } => "unavailable",
            Self::Protocol { .. } => "protocol",
            Self::NoFiles { .. } => "no_files",
            Self::UnusableName { .. } => "unusable_name",
            Self::TooLarge { .. } => "too_large",
        }
    }

    /// The reason of the `Dataset` condition this error leads to.
    pub fn reason(&self) -> Reason {
        match self {
            Self::InvalidUri { .. }
            | Self::Unsupported { .. }
            | Self::NotFound { .. }
            | Self::Protocol { .. }
            | Self::NoFiles { .. }
            | Self::UnusableName { .. }
            | Self::TooLarge { .. } => Reason::InvalidSource,
            Self::Changed { .. } => Reason::SourceChanged,
            Self::Denied { .. } => Reason::SourceDenied,
            Self::Unavailable { .. } => Reason::SourceUnavailable,
        }
    }

    /// Whether trying again later may succeed. Only these are retried.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }

    pub(crate) fn unavailable(path: &str, message: impl Into<String>) -> Self {
        Self::Unavailable {
            path: path.to_owned(),
            message: message.into(),
        }
    }

    pub(crate) fn changed(path: &str) -> Self {
        Self::Changed {
            path: path.to_owned(),
        }
    }

    pub(crate) fn protocol(path: &str, message: impl Into<String>) -> Self {
        Self::Protocol {
            path: path.to_owned(),
            message: message.into(),
        }
    }

    pub(crate) fn denied(path: &str, message: impl Into<String>) -> Self {
        Self::Denied {
            path: path.to_owned(),
            message: message.into(),
        }
    }

    pub(crate) fn unusable_name(uri: &str, name: &str, message: impl Into<String>) -> Self {
        Self::UnusableName {
            uri: uri.to_owned(),
            name: name.to_owned(),
            message: message.into(),
        }
    }

    pub(crate) fn too_large(uri: &str, message: impl Into<String>) -> Self {
        Self::TooLarge {
            uri: uri.to_owned(),
            message: message.into(),
        }
    }

    pub(crate) fn invalid_uri(uri: &str, reason: impl Into<String>) -> Self {
        Self::InvalidUri {
            uri: uri.to_owned(),
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_has_a_stable_label_and_reason() {
        let p = || "a/b".to_owned();
        let m = || "m".to_owned();
        let cases = [
            (
                OriginError::InvalidUri {
                    uri: p(),
                    reason: m(),
                },
                "invalid_uri",
                Reason::InvalidSource,
            ),
            (
                OriginError::Unsupported {
                    uri: p(),
                    reason: m(),
                },
                "unsupported",
                Reason::InvalidSource,
            ),
            (
                OriginError::NotFound { path: p() },
                "not_found",
                Reason::InvalidSource,
            ),
            (
                OriginError::Changed { path: p() },
                "changed",
                Reason::SourceChanged,
            ),
            (
                OriginError::Denied {
                    path: p(),
                    message: m(),
                },
                "denied",
                Reason::SourceDenied,
            ),
            (
                OriginError::Unavailable {
                    path: p(),
                    message: m(),
                },
                "unavailable",
                Reason::SourceUnavailable,
            ),
            (
                OriginError::Protocol {
                    path: p(),
                    message: m(),
                },
                "protocol",
                Reason::InvalidSource,
            ),
            (
                OriginError::NoFiles {
                    uri: p(),
                    detail: m(),
                },
                "no_files",
                Reason::InvalidSource,
            ),
            (
                OriginError::UnusableName {
                    uri: p(),
                    name: "/x".into(),
                    message: m(),
                },
                "unusable_name",
                Reason::InvalidSource,
            ),
            (
                OriginError::TooLarge {
                    uri: p(),
                    message: m(),
                },
                "too_large",
                Reason::InvalidSource,
            ),
        ];
        for (error, label, reason) in cases {
            assert_eq!(error.label(), label);
            assert_eq!(error.reason(), reason);
            assert_eq!(error.is_transient(), label == "unavailable");
            // Users see the path in every message.
            assert!(error.to_string().contains("a/b"), "{error}");
        }
    }
}
