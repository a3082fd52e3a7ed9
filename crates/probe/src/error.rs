use std::net::SocketAddr;
use std::path::PathBuf;

/// Errors of the health server and of prober set-up. Probe failures are not errors: they are
/// outcomes ([`crate::Outcome`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("binding the egress IP health server to {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS configuration of the egress IP health service: {0}")]
    Tls(#[source] tonic::transport::Error),
    #[error("egress IP health server: {0}")]
    Serve(#[source] tonic::transport::Error),
    #[error("the egress IP health server task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
    #[error("the prober must be created inside a Tokio runtime: {0}")]
    NoRuntime(#[source] tokio::runtime::TryCurrentError),
}
