//! The signals that stop a swarmseed process: SIGTERM (what Kubernetes
//! sends) and SIGINT (ctrl-c).

use std::fmt;

use tokio::signal::unix::{SignalKind, signal};

/// Which signal asked the process to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGINT (ctrl-c).
    Interrupted,
    /// SIGTERM.
    Terminated,
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Interrupted => "interrupted",
            Self::Terminated => "terminated",
        })
    }
}

/// Handlers for both signals, installed when made: a signal that arrives
/// after [`listen`] returned is never missed.
#[derive(Debug)]
pub struct Signals {
    terminate: Option<tokio::signal::unix::Signal>,
    interrupt: Option<tokio::signal::unix::Signal>,
}

/// Installs the handlers (within a tokio runtime). One that cannot be
/// installed is logged and left out; with neither, [`Signals::recv`]
/// never resolves.
pub fn listen() -> Signals {
    let install = |kind: SignalKind, name: &str| match signal(kind) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for {name}; it will not stop the process");
            None
        }
    };
    Signals {
        terminate: install(SignalKind::terminate(), "SIGTERM"),
        interrupt: install(SignalKind::interrupt(), "SIGINT"),
    }
}

impl Signals {
    /// Resolves on the next SIGTERM or SIGINT, saying which.
    pub async fn recv(&mut self) -> Stop {
        async fn next(s: &mut Option<tokio::signal::unix::Signal>) {
            if let Some(s) = s
                && s.recv().await.is_some()
            {
                return;
            }
            std::future::pending().await
        }
        tokio::select! {
            () = next(&mut self.terminate) => Stop::Terminated,
            () = next(&mut self.interrupt) => Stop::Interrupted,
        }
    }
}

/// Resolves on SIGTERM or SIGINT, saying which.
pub async fn signal_received() -> Stop {
    listen().recv().await
}

#[cfg(test)]
mod tests {
    use nix::sys::signal::{Signal, raise};

    use super::*;

    #[tokio::test]
    async fn sigterm_and_sigint_are_told_apart_and_never_missed() {
        let mut signals = listen();
        // Raised before anyone waits: the handler holds it.
        raise(Signal::SIGTERM).unwrap();
        assert_eq!(signals.recv().await, Stop::Terminated);
        raise(Signal::SIGINT).unwrap();
        assert_eq!(signals.recv().await, Stop::Interrupted);
        assert_eq!(Stop::Terminated.to_string(), "terminated");
        assert_eq!(Stop::Interrupted.to_string(), "interrupted");
    }
}
