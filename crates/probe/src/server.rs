//! The agent's health server: `grpc.health.v1.Health` (tonic-health) answering `SERVING` for
//! `Service_Egress_IP`. Other names get what tonic-health gives: `SERVING` for `""` (the server
//! as a whole, per the gRPC health protocol) and the `NotFound` status for unknown names.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::Error;
use crate::config::SERVICE_EGRESS_IP;
use crate::tls::{ServerTls, ensure_crypto_provider};

/// How long [`HealthServer::shutdown`] waits for open connections to drain (a client with a
/// `Watch` stream open would otherwise hold it forever) before it stops waiting.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Where and how to serve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthServerConfig {
    /// OVN-K binds `<management IP>:<egressip-node-healthcheck-port>`; port 0 picks a free port
    /// (see [`HealthServer::local_addr`]).
    pub listen: SocketAddr,
    /// TLS from PEM files; plain h2c without.
    pub tls: Option<ServerTls>,
}

/// Stops the server gracefully: it stops accepting (the listening socket closes at once, so new
/// probes are refused) and finishes open connections. Cloneable; the server also stops when the
/// [`HealthServer`] and every handle are dropped.
#[derive(Clone, Debug)]
pub struct ShutdownHandle(Arc<watch::Sender<bool>>);

impl ShutdownHandle {
    pub fn shutdown(&self) {
        self.0.send_replace(true);
    }
}

/// A running health server.
pub struct HealthServer {
    local_addr: SocketAddr,
    reporter: HealthReporter,
    shutdown: ShutdownHandle,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
    accepted: Arc<AtomicU64>,
}

impl HealthServer {
    /// Binds and starts serving in a background task; returns once the socket is listening.
    pub async fn start(config: HealthServerConfig) -> Result<Self, Error> {
        let mut builder = Server::builder();
        if let Some(tls) = &config.tls {
            ensure_crypto_provider();
            builder = builder.tls_config(tls.load()?).map_err(Error::Tls)?;
        }
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| Error::Bind {
                addr: config.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: config.listen,
            source,
        })?;

        let (reporter, service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status(SERVICE_EGRESS_IP, ServingStatus::Serving)
            .await;

        let accepted = Arc::new(AtomicU64::new(0));
        let counter = accepted.clone();
        let incoming = TcpListenerStream::new(listener).map(move |conn| {
            if let Ok(stream) = &conn {
                counter.fetch_add(1, Ordering::Relaxed);
                let _ = stream.set_nodelay(true);
            }
            conn
        });

        let (tx, mut rx) = watch::channel(false);
        let signal = async move {
            // Also completes when every sender is gone.
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let task = tokio::spawn(
            builder
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, signal),
        );
        Ok(Self {
            local_addr,
            reporter,
            shutdown: ShutdownHandle(Arc::new(tx)),
            task,
            accepted,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Number of TCP connections accepted so far (a prober keeps one session per node).
    pub fn accepted_connections(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Answers `SERVING` (true) or `NOT_SERVING` (false) for `Service_Egress_IP`, e.g. to hand off
    /// egress IPs before a planned stop.
    pub async fn set_serving(&self, serving: bool) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.reporter
            .set_service_status(SERVICE_EGRESS_IP, status)
            .await;
    }

    /// A handle that stops the server from elsewhere.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Waits until the server stops (after a [`ShutdownHandle::shutdown`]) and reports how it ended.
    pub async fn join(self) -> Result<(), Error> {
        match self.task.await {
            Ok(result) => result.map_err(Error::Serve),
            Err(e) => Err(Error::Task(e)),
        }
    }

    /// Stops gracefully and waits up to [`SHUTDOWN_GRACE`] for open connections to finish.
    pub async fn shutdown(self) -> Result<(), Error> {
        self.shutdown.shutdown();
        let mut task = self.task;
        match tokio::time::timeout(SHUTDOWN_GRACE, &mut task).await {
            Ok(Ok(result)) => result.map_err(Error::Serve),
            Ok(Err(e)) => Err(Error::Task(e)),
            Err(_) => {
                // The listener is already closed; stop waiting for long-lived streams.
                task.abort();
                Ok(())
            }
        }
    }
}
