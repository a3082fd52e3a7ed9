//! The one error type of the testbed: every failure names what was being done.

use std::io;

/// What went wrong while building, using or removing a testbed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A command ran and failed. `command` is written so that it can be pasted into a shell
    /// (`ip -n NS ...`, `ip netns exec NS nft -f -`), followed by the input it was given, if any.
    #[error("`{command}` failed ({status}){}: {}", input_note(.input), stderr.trim_end())]
    Command {
        command: String,
        /// Exit status as printed by the OS (`exit status: 2`, `signal: 9`).
        status: String,
        stderr: String,
        /// The failing batch line or the whole stdin given to the command, when there was one.
        input: Option<String>,
    },
    /// An operating-system call failed; `context` says which and on what.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// The requested topology is inconsistent (a bad name, an address outside its network, ...).
    #[error("invalid testbed topology: {0}")]
    Topology(String),
    /// An HTTP exchange failed at the protocol level (the connection itself worked).
    #[error("HTTP GET {target} from namespace {netns}: {reason}")]
    Http {
        netns: String,
        target: String,
        reason: String,
    },
}

fn input_note(input: &Option<String>) -> String {
    match input {
        Some(text) if text.contains('\n') => format!(" with input:\n{}\n", text.trim_end()),
        Some(text) => format!(" at `{text}`"),
        None => String::new(),
    }
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// The underlying OS error kind, for `Io` errors (for instance `TimedOut` or
    /// `ConnectionRefused` from [`crate::http_get`]).
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            Error::Io { source, .. } => Some(source.kind()),
            _ => None,
        }
    }
}

/// Result with the testbed's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
