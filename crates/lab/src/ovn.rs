//! The lab's control plane on the OVN data plane: the engine, the [`Prober`] and the OVN
//! Northbound [`Reconciler`], in-process, over a running [`OvnCluster`] — what
//! `kube-egress controller --dataplane ovn` does, with the prober's verdicts as the source of
//! node reachability.
//!
//! [`OvnControlPlane::start`] runs:
//! - **a health server per node**: `grpc.health.v1` answering `SERVING` for `Service_Egress_IP`
//!   (the agent's [`HealthServer`]) on a thread inside the node's chassis namespace, bound to the
//!   chassis's underlay address (its Geneve tunnel endpoint);
//! - **the controller**: one thread inside the cluster's **fabric** namespace running the
//!   prober (gRPC, probing every egress-assignable node's underlay address) and the reconciler
//!   (connected to the Northbound database's unix socket, which every namespace reaches). Every
//!   engine change (an EgressIP applied or removed, a reachability verdict) is followed by a
//!   reconcile: the engine's state is mapped to the rows ovnkube writes ([`desired`]) and the
//!   difference goes to the database in one transaction. Changes others make to our rows are
//!   repaired as the monitor reports them.
//!
//! # Why gRPC, and why a cut node is seen dead
//!
//! The nodes' addresses on the external network belong to the gateway routers: they are logical
//! ports of OVN, which answers ARP and ICMP for them but no TCP, so the legacy TCP port 9 probe
//! (where a refused connection means alive) has nothing to talk to. The prober therefore speaks
//! gRPC to a health server on each chassis's underlay address. The fabric namespace gets an
//! address on the underlay bridge ([`OvnCluster::attach_fabric_to_underlay`]): the prober sits on
//! that segment like any host of the node network, and its packets to a node cross the bridge.
//! [`OvnCluster::set_node_connected`]`(node, false)` takes the fabric's ends of the node's links
//! down; the bridge drops what is sent to the node, the `Check` (or the dial) times out, and the
//! node is declared unreachable after at most [`ProbeSettings::worst_case_detection`]. The
//! fabric's own route to the underlay stays, so no probe fails early with `ENETUNREACH` (which
//! would count as alive, as in OVN-K).
//!
//! # Timeline
//!
//! The controller records on the lab's timeline: the prober's verdicts
//! ([`LabEventKind::Reachability`]), the engine's Events, and each reconcile as the plan of the
//! pseudo-node [`NORTHBOUND`] — [`LabEventKind::PlanPushed`] when the engine changed and
//! [`LabEventKind::Applied`] (operations as `changes`, the reconcile's problems) once the
//! transaction completed, or [`LabEventKind::ApplyFailed`] (retried after a second).

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use kube_egress_api::{EgressIP, EgressIPStatusItem};
use kube_egress_engine::{Config, EgressIpInfo, Engine, PodInfo, Snapshot};
use kube_egress_linux::netns;
use kube_egress_ovn::{OvnNode, Reconciler, cluster_state, default_join_subnets, desired};
use kube_egress_ovn_testbed::OvnCluster;
use kube_egress_probe::{
    HealthServer, HealthServerConfig, NodeTarget, ProbeMode, ProbeSettings, Prober,
};
use tokio::sync::{Notify, oneshot};

use crate::log::{LabEvent, LabEventKind, Shared};
use crate::{LabError, settle};

/// The timeline's name for the Northbound database, whose "plan" is the set of rows.
pub const NORTHBOUND: &str = "northbound";
/// How long a failed reconcile waits before the next attempt.
const RETRY: Duration = Duration::from_secs(1);

/// What the controller reads besides the engine: the nodes as the OVN mapping sees them, the
/// pods with their IPs, the cluster and join subnets.
#[derive(Clone, Debug)]
pub struct OvnInputs {
    pub nodes: Vec<OvnNode>,
    pub pods: Vec<PodInfo>,
    pub cluster_subnets: Vec<IpNet>,
}

struct Control {
    engine: Engine,
    /// Bumped with every engine change; the reconcile that follows carries it.
    generation: u64,
    unreachable: BTreeSet<String>,
}

/// A health server on a thread in a chassis namespace; stops when dropped.
struct HealthThread {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl HealthThread {
    fn start(node: &str, namespace: &str, listen: SocketAddr) -> Result<HealthThread, LabError> {
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let namespace = namespace.to_string();
        let thread = std::thread::Builder::new()
            .name(format!("health {node}"))
            .spawn(move || {
                let failed = ready_tx.clone();
                let result = netns::run_in(&namespace, move || async move {
                    let server =
                        match HealthServer::start(HealthServerConfig { listen, tls: None }).await {
                            Ok(s) => s,
                            Err(e) => {
                                let _ = ready_tx.send(Err(format!("serving on {listen}: {e}")));
                                return;
                            }
                        };
                    let _ = ready_tx.send(Ok(()));
                    let _ = stop_rx.await;
                    let _ = server.shutdown().await;
                });
                if let Err(e) = result {
                    let _ = failed.send(Err(e.to_string()));
                }
            })
            .map_err(|source| LabError::Start {
                what: format!("the health server of {node}"),
                source,
            })?;
        let mut health = HealthThread {
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(health),
            Ok(Err(e)) => {
                health.stop();
                Err(LabError::Start {
                    what: format!("the health server of {node}"),
                    source: std::io::Error::other(e),
                })
            }
            Err(_) => {
                health.stop();
                Err(LabError::Start {
                    what: format!("the health server of {node}"),
                    source: std::io::Error::other("its thread ended early"),
                })
            }
        }
    }

    fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for HealthThread {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The running control plane of the OVN lab; see the module documentation. Stops when dropped
/// (the Northbound rows stay, as `kube-egress controller` leaves them).
pub struct OvnControlPlane {
    control: Arc<Mutex<Control>>,
    shared: Arc<Shared>,
    wake: Arc<Notify>,
    controller: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
    health: Vec<HealthThread>,
    probed: Vec<String>,
}

impl OvnControlPlane {
    /// Starts a health server on every node of `cluster`, then the controller with the engine
    /// loaded from `snapshot`, probing its egress-assignable nodes with gRPC (`probe.mode` must
    /// be [`ProbeMode::Grpc`]). Returns once the controller is connected and probing;
    /// [`OvnControlPlane::settle`] waits for the first reconcile and verdicts.
    pub fn start(
        cluster: &OvnCluster,
        snapshot: Snapshot,
        inputs: OvnInputs,
        config: Config,
        probe: ProbeSettings,
    ) -> Result<OvnControlPlane, LabError> {
        let ProbeMode::Grpc { port } = probe.mode else {
            return Err(LabError::Prober(
                "the OVN lab probes the nodes with gRPC (set --egressip-node-healthcheck-port)"
                    .into(),
            ));
        };
        let mut health = Vec::new();
        let mut targets = Vec::new();
        for node in &cluster.layout().nodes {
            let namespace = cluster
                .chassis_netns(&node.name)
                .ok_or_else(|| LabError::UnknownNode(node.name.clone()))?;
            let address = IpAddr::V4(node.encap_ip);
            health.push(HealthThread::start(
                &node.name,
                namespace,
                SocketAddr::new(address, port),
            )?);
            if snapshot
                .nodes
                .iter()
                .any(|n| n.name == node.name && n.egress_assignable())
            {
                targets.push(NodeTarget::new(node.name.clone(), [address]));
            }
        }
        for node in &snapshot.nodes {
            if cluster.node(&node.name).is_none() {
                return Err(LabError::UnknownNode(node.name.clone()));
            }
        }
        cluster
            .attach_fabric_to_underlay()
            .map_err(|e| LabError::Prober(format!("joining the fabric to the underlay: {e}")))?;
        let probed = targets.iter().map(|t| t.name.clone()).collect();
        let control = Arc::new(Mutex::new(Control {
            engine: Engine::load(config, snapshot),
            generation: 1,
            unreachable: BTreeSet::new(),
        }));
        let shared = Arc::new(Shared::default());
        shared.record(LabEventKind::PlanPushed {
            node: NORTHBOUND.into(),
            generation: 1,
        });
        let wake = Arc::new(Notify::new());
        let mut plane = OvnControlPlane {
            control,
            shared,
            wake,
            controller: None,
            health,
            probed,
        };
        let nb = format!("unix:{}", cluster.nb_socket().display());
        plane.controller =
            Some(plane.start_controller(cluster.fabric_netns(), nb, probe, targets, inputs)?);
        Ok(plane)
    }

    fn lock(&self) -> MutexGuard<'_, Control> {
        self.control.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn start_controller(
        &self,
        namespace: &str,
        nb: String,
        settings: ProbeSettings,
        targets: Vec<NodeTarget>,
        inputs: OvnInputs,
    ) -> Result<(oneshot::Sender<()>, JoinHandle<()>), LabError> {
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let control = self.control.clone();
        let shared = self.shared.clone();
        let wake = self.wake.clone();
        let namespace = namespace.to_string();
        let thread = std::thread::Builder::new()
            .name("lab ovn controller".into())
            .spawn(move || {
                let failed_ready = ready_tx.clone();
                let failed_shared = shared.clone();
                let result = netns::run_in(&namespace, move || async move {
                    let mut reconciler = match Reconciler::connect(&nb).await {
                        Ok(r) => r,
                        Err(e) => {
                            let _ = ready_tx.send(Err(format!("connecting to {nb}: {e}")));
                            return;
                        }
                    };
                    let (mut prober, transitions) = match Prober::new(settings, None) {
                        Ok(p) => p,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    prober.set_nodes(targets);
                    let _ = ready_tx.send(Ok(()));
                    let run = ControllerLoop {
                        control,
                        shared,
                        wake,
                        inputs,
                    };
                    run.run(&mut reconciler, transitions, stop_rx).await;
                    drop(prober);
                });
                if let Err(e) = result {
                    let _ = failed_ready.send(Err(e.to_string()));
                    failed_shared.record(LabEventKind::Failed {
                        component: "controller".into(),
                        error: e.to_string(),
                    });
                }
            })
            .map_err(|source| LabError::Start {
                what: "the controller".into(),
                source,
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok((stop_tx, thread)),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(LabError::Prober(e))
            }
            Err(_) => {
                let _ = thread.join();
                Err(LabError::Prober("the controller thread ended early".into()))
            }
        }
    }

    /// Changes the engine under the lock, bumps the generation and wakes the controller.
    fn change(&self, f: impl FnOnce(&mut Engine)) {
        let mut c = self.lock();
        f(&mut c.engine);
        c.generation += 1;
        self.shared.record(LabEventKind::PlanPushed {
            node: NORTHBOUND.into(),
            generation: c.generation,
        });
        drop(c);
        self.wake.notify_one();
    }

    /// Creates or replaces an EgressIP object; the Northbound rows follow.
    pub fn apply_egress_ip(&self, eip: &EgressIP) {
        let info = EgressIpInfo::from_egress_ip(eip);
        self.change(|engine| engine.upsert_egress_ip(info));
    }

    /// Deletes an EgressIP object; its rows go.
    pub fn remove_egress_ip(&self, name: &str) {
        self.change(|engine| engine.remove_egress_ip(name));
    }

    /// The object's `status.items` as the controller computed them.
    pub fn status(&self, name: &str) -> Option<Vec<EgressIPStatusItem>> {
        self.lock().engine.status(name)
    }

    /// The controller's view of the node's reachability.
    pub fn reachable(&self, node: &str) -> bool {
        !self.lock().unreachable.contains(node)
    }

    /// The probed (egress-assignable) nodes.
    pub fn probed_nodes(&self) -> &[String] {
        &self.probed
    }

    /// Waits until the Northbound database holds the rows of the engine's last change and every
    /// probed node has a first verdict. (The chassis install the flows after that:
    /// [`OvnCluster::wait_hv`].)
    pub fn settle(&self, timeout: Duration) -> Result<(), LabError> {
        settle(&self.shared, &self.probed, timeout)
    }

    /// The timeline so far.
    pub fn events(&self) -> Vec<LabEvent> {
        self.shared.lock().events.clone()
    }

    /// Stops the controller and the health servers; reports the failures recorded on the way.
    pub fn stop(mut self) -> Vec<String> {
        self.shutdown();
        self.shared
            .lock()
            .events
            .iter()
            .filter_map(|e| match &e.kind {
                LabEventKind::Failed { component, error } => Some(format!("{component}: {error}")),
                _ => None,
            })
            .collect()
    }

    fn shutdown(&mut self) {
        if let Some((stop, thread)) = self.controller.take() {
            let _ = stop.send(());
            let _ = thread.join();
        }
        for h in &mut self.health {
            h.stop();
        }
    }
}

impl Drop for OvnControlPlane {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The controller's loop, on its thread in the fabric namespace.
struct ControllerLoop {
    control: Arc<Mutex<Control>>,
    shared: Arc<Shared>,
    wake: Arc<Notify>,
    inputs: OvnInputs,
}

impl ControllerLoop {
    fn lock(&self) -> MutexGuard<'_, Control> {
        self.control.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn run(
        &self,
        reconciler: &mut Reconciler,
        mut transitions: kube_egress_probe::Transitions,
        mut stop: oneshot::Receiver<()>,
    ) {
        let join: Vec<IpNet> = default_join_subnets().iter().map(IpNet::trunc).collect();
        let mut dirty = true;
        let mut retry_at: Option<Instant> = None;
        loop {
            if dirty && retry_at.is_none_or(|at| Instant::now() >= at) {
                let (generation, state) = {
                    let mut c = self.lock();
                    for event in c.engine.take_changes().events {
                        self.shared.record(LabEventKind::EngineEvent(event));
                    }
                    let state = cluster_state(
                        &c.engine,
                        &self.inputs.pods,
                        self.inputs.nodes.clone(),
                        self.inputs.cluster_subnets.clone(),
                        join.clone(),
                    );
                    (c.generation, state)
                };
                let want = desired(&state, &reconciler.options());
                let started = Instant::now();
                match reconciler.reconcile(&want).await {
                    Ok(report) => {
                        let mut problems = want.problems.clone();
                        problems.extend(report.problems);
                        self.shared.record(LabEventKind::Applied {
                            node: NORTHBOUND.into(),
                            generation,
                            changes: report.operations,
                            problems,
                            took: started.elapsed(),
                        });
                        dirty = false;
                        retry_at = None;
                    }
                    Err(e) => {
                        self.shared.record(LabEventKind::ApplyFailed {
                            node: NORTHBOUND.into(),
                            generation,
                            error: e.to_string(),
                        });
                        retry_at = Some(Instant::now() + RETRY);
                    }
                }
            }
            let retry = async {
                match retry_at {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut stop => break,
                _ = self.wake.notified() => dirty = true,
                _ = retry => {}
                t = transitions.recv() => match t {
                    Some(t) => {
                        let mut c = self.lock();
                        self.shared.record(LabEventKind::Reachability {
                            node: t.node.clone(),
                            reachable: t.reachable,
                            initial: t.initial,
                        });
                        if t.reachable {
                            c.unreachable.remove(&t.node);
                        } else {
                            c.unreachable.insert(t.node.clone());
                        }
                        c.engine.set_node_reachable(&t.node, t.reachable);
                        c.generation += 1;
                        self.shared.record(LabEventKind::PlanPushed {
                            node: NORTHBOUND.into(),
                            generation: c.generation,
                        });
                        dirty = true;
                    }
                    None => break,
                },
                // Someone changed the database (our own writes plan to nothing), or the
                // connection was lost: the next reconcile reconnects with a full resync.
                _ = reconciler.monitor_mut().changed(), if !dirty => dirty = true,
            }
        }
    }
}
