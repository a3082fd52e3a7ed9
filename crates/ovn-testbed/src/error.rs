//! The error type: every failure names what was being done.

use std::time::Duration;

/// What went wrong while starting, using or stopping an [`crate::OvnCluster`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The requested cluster is inconsistent (an unknown node, a duplicate pod, ...).
    #[error("invalid OVN cluster spec: {0}")]
    Spec(String),
    /// A command failed, an OS call failed, or a namespace operation failed (the testbed's
    /// errors quote the command and its standard error).
    #[error(transparent)]
    Testbed(#[from] kube_egress_testbed::Error),
    /// A daemon exited, or never became ready; `log` is the end of its log and standard error.
    #[error("{daemon}: {reason}\n--- last log lines ---\n{log}")]
    Daemon {
        daemon: String,
        reason: String,
        log: String,
    },
    /// Something did not happen in time.
    #[error("timed out after {waited:?} waiting for {what}")]
    Timeout { what: String, waited: Duration },
    /// The OVN databases or the data plane are not in the state a helper expects.
    #[error("{0}")]
    State(String),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Testbed(kube_egress_testbed::Error::Io {
            context: context.into(),
            source,
        })
    }
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
