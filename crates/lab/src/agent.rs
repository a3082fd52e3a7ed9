//! One in-process node agent: a thread inside the node's network namespace running the Linux
//! [`Applier`], fed node plans through a channel. It applies the newest plan it has (plans that
//! arrive while it is busy are coalesced), reports every outcome to the timeline, retries a failed
//! apply, follows the main-table routes of secondary links (as `kube-egress agent` does), serves
//! the `grpc.health.v1` check when the controller probes with gRPC, and on stop leaves the data
//! plane in place.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube_egress_engine::{Family, NodePlan};
use kube_egress_linux::applier::Applier;
use kube_egress_linux::desired::TUNNEL_DEVICE;
use kube_egress_linux::netlink::{Netlink, Subscription};
use kube_egress_linux::netns;
use kube_egress_linux::nft::Nft;
use kube_egress_probe::{HealthServer, HealthServerConfig};
use tokio::sync::mpsc;

use crate::log::{LabEventKind, Shared};

/// How long a failed apply waits before the next attempt.
const RETRY: Duration = Duration::from_millis(500);

pub(crate) enum Message {
    Plan { generation: u64, plan: NodePlan },
    Stop,
}

pub(crate) struct Agent {
    pub tx: mpsc::UnboundedSender<Message>,
    thread: Option<JoinHandle<()>>,
}

impl Agent {
    /// Starts the agent of `node` in `namespace`; with `health_port`, it also answers the
    /// controller's gRPC health probes on that port (all addresses of the node).
    pub fn start(
        node: String,
        namespace: String,
        tunnel_local: Option<IpAddr>,
        health_port: Option<u16>,
        shared: Arc<Shared>,
    ) -> std::io::Result<Agent> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let thread = std::thread::Builder::new()
            .name(format!("agent {node}"))
            .spawn(move || {
                let worker_shared = shared.clone();
                let worker_node = node.clone();
                let failed_ready = ready_tx.clone();
                let result = netns::run_in(&namespace, move || {
                    run(
                        worker_node,
                        tunnel_local,
                        health_port,
                        rx,
                        ready_tx,
                        worker_shared,
                    )
                });
                if let Err(e) = result {
                    let _ = failed_ready.send(Err(e.to_string()));
                    shared.record(LabEventKind::Failed {
                        component: format!("agent {node}"),
                        error: e.to_string(),
                    });
                }
            })?;
        let mut agent = Agent {
            tx,
            thread: Some(thread),
        };
        // Ready means listening for health probes: a probe before that would be refused, which
        // the gRPC probe counts as dead.
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(agent),
            Ok(Err(e)) => {
                agent.stop();
                Err(std::io::Error::other(e))
            }
            Err(_) => {
                agent.stop();
                Err(std::io::Error::other("the agent thread ended early"))
            }
        }
    }

    /// Asks the agent to stop and waits for its thread.
    pub fn stop(&mut self) {
        let _ = self.tx.send(Message::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn next_route_change(routes: &mut Option<Subscription>) -> bool {
    match routes {
        Some(s) => s.next().await.is_some(),
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

async fn run(
    node: String,
    tunnel_local: Option<IpAddr>,
    health_port: Option<u16>,
    mut rx: mpsc::UnboundedReceiver<Message>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
    shared: Arc<Shared>,
) {
    let fail = |error: String| {
        shared.record(LabEventKind::Failed {
            component: format!("agent {node}"),
            error,
        })
    };
    // Kept until the agent stops: the server answers as long as this agent runs.
    let _health = match health_port {
        Some(port) => match HealthServer::start(HealthServerConfig {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
            tls: None,
        })
        .await
        {
            Ok(server) => Some(server),
            Err(e) => {
                let error = format!("starting the health server on port {port}: {e}");
                let _ = ready.send(Err(error.clone()));
                return fail(error);
            }
        },
        None => None,
    };
    let _ = ready.send(Ok(()));
    let nl = match Netlink::connect() {
        Ok(nl) => nl,
        Err(e) => return fail(format!("connecting to netlink: {e}")),
    };
    let mut applier = Applier::new(nl, Nft::new(TUNNEL_DEVICE), tunnel_local);
    let mut routes = match Subscription::new(&[Family::V4, Family::V6]) {
        Ok(s) => Some(s),
        Err(e) => {
            fail(format!(
                "subscribing to route changes (secondary-link tables are not followed): {e}"
            ));
            None
        }
    };
    // The newest plan and whether the kernel is known to match it.
    let mut current: Option<(u64, NodePlan)> = None;
    let mut retry_at: Option<Instant> = None;
    loop {
        tokio::select! {
            message = rx.recv() => {
                let Some(Message::Plan { generation, plan }) = message else { break };
                let mut newest = (generation, plan);
                // Coalesce: only the newest queued plan matters.
                let mut stop = false;
                while let Ok(m) = rx.try_recv() {
                    match m {
                        Message::Plan { generation, plan } => newest = (generation, plan),
                        Message::Stop => stop = true,
                    }
                }
                if stop {
                    break;
                }
                current = Some(newest);
                retry_at = None;
            }
            _ = sleep_until(retry_at) => {
                retry_at = None;
            }
            alive = next_route_change(&mut routes) => {
                if !alive {
                    routes = Subscription::new(&[Family::V4, Family::V6]).ok();
                    // Changes may have been missed: apply the whole plan again.
                    retry_at = Some(Instant::now());
                    continue;
                }
                if let Some((_, plan)) = &current
                    && let Err(e) = applier.refresh_link_tables(plan).await
                {
                    fail(format!("following secondary-link routes: {e}"));
                }
                continue;
            }
        }
        let Some((generation, plan)) = &current else {
            continue;
        };
        let started = Instant::now();
        match applier.apply(plan).await {
            Ok(report) => shared.record(LabEventKind::Applied {
                node: node.clone(),
                generation: *generation,
                changes: report.changes,
                problems: report.problems,
                took: started.elapsed(),
            }),
            Err(e) => {
                shared.record(LabEventKind::ApplyFailed {
                    node: node.clone(),
                    generation: *generation,
                    error: e.to_string(),
                });
                retry_at = Some(Instant::now() + RETRY);
            }
        }
    }
}
