//! The one error type of the `swarmseed_harness` library.

use std::path::PathBuf;
use std::time::Duration;

/// What can go wrong while building or using a test cluster or an origin.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An external command (`ip`, `tc`, `python3`, ...) failed or could not start.
    #[error("command `{command}` failed: {detail}")]
    Command { command: String, detail: String },
    /// An external command did not finish within its time limit.
    #[error("command `{command}` did not finish within {timeout:?}")]
    CommandTimeout { command: String, timeout: Duration },
    /// A file or directory operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A network operation (bind, connect, HTTP) failed.
    #[error("{action}: {detail}")]
    Network { action: String, detail: String },
    /// Something did not become ready in time (an agent's /readyz, moto, ...).
    #[error("{what} not ready after {waited:?}: {last}")]
    NotReady {
        what: String,
        waited: Duration,
        last: String,
    },
    /// A request to the Kubernetes API stand-in failed.
    #[error("kubernetes api: {0}")]
    Kube(String),
    /// The S3 client reported an error.
    #[error("s3: {0}")]
    ObjectStore(String),
    /// The caller asked for something that does not exist or makes no sense.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// No free cluster slot (subnet) is left.
    #[error(
        "no free cluster subnet left in 10.213.0.0/16 (all 254 slots are taken by live processes)"
    )]
    NoFreeSlot,
}

impl Error {
    /// A short stable label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Error::Command { .. } => "command",
            Error::CommandTimeout { .. } => "command_timeout",
            Error::Io { .. } => "io",
            Error::Network { .. } => "network",
            Error::NotReady { .. } => "not_ready",
            Error::Kube(_) => "kube",
            Error::ObjectStore(_) => "object_store",
            Error::Invalid(_) => "invalid",
            Error::NoFreeSlot => "no_free_slot",
        }
    }

    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }

    pub fn network(action: impl Into<String>, detail: impl std::fmt::Display) -> Self {
        Error::Network {
            action: action.into(),
            detail: detail.to_string(),
        }
    }
}

impl From<kube::Error> for Error {
    fn from(e: kube::Error) -> Self {
        Error::Kube(e.to_string())
    }
}

impl From<object_store::Error> for Error {
    fn from(e: object_store::Error) -> Self {
        Error::ObjectStore(e.to_string())
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
