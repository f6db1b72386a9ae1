//! Where the bytes of a verified chunk came from.

/// Where a chunk's bytes came from; chooses the counter they are added to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ByteSource {
    /// Read from the dataset's origin (bucket, HTTP server, Hub).
    Origin,
    /// Received from another node's agent.
    Peer,
}

impl ByteSource {
    /// The value of the `source` label on the agent's byte counters.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Origin => "origin",
            Self::Peer => "peer",
        }
    }
}

impl std::fmt::Display for ByteSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
