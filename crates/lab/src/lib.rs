//! The lab's cluster runtime: the real control plane and data plane of kube-egress, in-process,
//! over a [`Testbed`] of network namespaces, with no Kubernetes.
//!
//! [`LabCluster::start`] runs, on the production code paths:
//! - **one agent per node**: a thread inside the node's network namespace running the Linux
//!   [`Applier`](kube_egress_linux::applier::Applier), fed node plans through a channel; it
//!   applies each new plan (placing and announcing egress IPs, steering, SNAT) and reports the
//!   outcome (changes, problems, errors) to the [timeline](LabCluster::events); when the
//!   controller probes with gRPC it also serves `grpc.health.v1` (`Service_Egress_IP`) there, and
//!   is started only once it listens;
//! - **the controller**: the [`Engine`] loaded from a snapshot (e.g. [`seed::SeedObjects`]) and a
//!   [`Prober`] with the production defaults (legacy TCP port 9 probe, 200 ms interval, 400 ms
//!   probe deadline) probing every egress-assignable node's primary IP. On every reachability
//!   transition the engine is told ([`Engine::set_node_reachable`]) and the changed nodes' plans
//!   are pushed to their agents (every plan when the shared exclusions changed).
//!
//! # Where the prober runs, and why a cut node is seen dead
//!
//! The legacy probe counts only a timeout or `EHOSTUNREACH` as dead; a refused connection, and
//! also `ENETUNREACH` (as in OVN-K), mean alive. The prober therefore runs on a thread inside the
//! testbed's **router** namespace, which sits on the primary network's bridge like any host of
//! the node network: its SYNs to a node cross the switch. When
//! [`Testbed::set_node_connected`]`(node, false)` takes the node's switch ports down, the bridge
//! drops the frames for that node, the SYN is lost, the dial times out and the node is declared
//! unreachable after at most interval + deadline (600 ms). Probing from a namespace whose own
//! route to the node disappears would instead fail at once with `ENETUNREACH` and keep the node
//! "alive" forever. (Once the router's neighbour entry for the node fails, dials end with
//! `EHOSTUNREACH`, which also means dead.)
//!
//! # Partitions
//!
//! A node cut off from the network cannot hear from the control plane either: while the prober
//! says a node is unreachable, its plan changes are held back ([`LabEventKind::PlanHeld`]), and
//! when it becomes reachable again it receives its current plan at once, so it drops the egress
//! IPs that moved away while it was gone. Nothing moves back to it (the engine's stability rule).
//!
//! # Stopping
//!
//! [`LabCluster::stop`] (or dropping the cluster) stops the prober, the controller and the agents;
//! the agents leave the kernel state in place, as `kube-egress agent` does. The namespaces, and
//! with them everything the agents created, go when the [`Testbed`] is dropped.

mod agent;
mod controller;
mod log;
pub mod ovn;
pub mod ovn_scenario;
pub mod scenario;
pub mod seed;
pub mod traffic;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use kube_egress_api::{EgressIP, EgressIPStatusItem};
use kube_egress_engine::{Config, EgressIpInfo, Engine, Family, NodePlan, Snapshot};
use kube_egress_probe::{NodeTarget, ProbeMode, ProbeSettings, Prober, ReachabilityConfig};
use kube_egress_testbed::Testbed;
use tokio::sync::oneshot;

pub use log::{LabEvent, LabEventKind};

use crate::agent::Agent;
use crate::controller::Controller;
use crate::log::Shared;

/// Why the lab could not start or could not settle.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("the seed manifests: {0}")]
    Seed(String),
    #[error("node {0} of the snapshot is not in the testbed")]
    UnknownNode(String),
    #[error("starting {what}: {source}")]
    Start {
        what: String,
        source: std::io::Error,
    },
    #[error("the prober: {0}")]
    Prober(String),
    #[error("the plan of node {node} (generation {generation}) failed: {error}")]
    ApplyFailed {
        node: String,
        generation: u64,
        error: String,
    },
    #[error("not settled within {timeout:?}: {pending}")]
    Timeout { timeout: Duration, pending: String },
}

/// How the lab's controller runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabOptions {
    /// The prober's settings; [`LabOptions::default`] takes the production defaults
    /// ([`ReachabilityConfig::default`]).
    pub probe: ProbeSettings,
    /// Cluster-wide settings of the engine.
    pub config: Config,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            probe: ReachabilityConfig::default().settings(),
            config: Config::default(),
        }
    }
}

/// A running lab cluster: the controller, its prober and one agent per node. See the crate
/// documentation.
pub struct LabCluster {
    controller: Arc<Mutex<Controller>>,
    /// The controller's metrics (OVN-K's egress IP names).
    registry: kube_egress_metrics::Registry,
    shared: Arc<Shared>,
    prober: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
    probed: Vec<String>,
}

impl LabCluster {
    /// Starts an agent for every node of `snapshot` (each must be a node of `testbed`), loads the
    /// engine, pushes every plan, and starts probing the egress-assignable nodes. Returns once the
    /// prober is running; [`LabCluster::settle`] waits for the plans to be applied.
    pub fn start(
        testbed: &Testbed,
        snapshot: Snapshot,
        options: LabOptions,
    ) -> Result<LabCluster, LabError> {
        let shared = Arc::new(Shared::default());
        let mut agents = BTreeMap::new();
        let mut targets = Vec::new();
        for node in &snapshot.nodes {
            let tb_node = testbed
                .node(&node.name)
                .ok_or_else(|| LabError::UnknownNode(node.name.clone()))?;
            let tunnel = node
                .tunnel_address()
                .filter(|a| Family::of(a) == Family::V4);
            let health_port = match options.probe.mode {
                ProbeMode::Grpc { port } => Some(port),
                ProbeMode::Legacy { .. } | ProbeMode::Disabled => None,
            };
            let agent = Agent::start(
                node.name.clone(),
                tb_node.netns().name().to_string(),
                tunnel,
                health_port,
                shared.clone(),
            )
            .map_err(|source| LabError::Start {
                what: format!("the agent of {}", node.name),
                source,
            })?;
            agents.insert(node.name.clone(), agent);
            if node.egress_assignable() {
                let addrs: Vec<IpAddr> = node.tunnel_address().into_iter().collect();
                targets.push(NodeTarget::new(node.name.clone(), addrs));
            }
        }
        let spec_ips: Vec<(String, usize)> = snapshot
            .egress_ips
            .iter()
            .map(|e| (e.name.to_string(), e.ips.len()))
            .collect();
        let engine = Engine::load(options.config.clone(), snapshot);
        let mut registry = kube_egress_metrics::Registry::default();
        let metrics = kube_egress_metrics::ControllerMetrics::register(&mut registry);
        let _ = shared.metrics.set(metrics.clone());
        let mut controller = Controller::new(engine, agents, shared.clone(), metrics);
        for (name, n) in spec_ips {
            controller.set_spec_ips(&name, Some(n));
        }
        let controller = Arc::new(Mutex::new(controller));
        let mut lab = LabCluster {
            controller,
            registry,
            shared,
            prober: None,
            probed: targets.iter().map(|t| t.name.clone()).collect(),
        };
        lab.lock().publish();
        lab.prober =
            Some(lab.start_prober(testbed.router().netns().name(), options.probe, targets)?);
        Ok(lab)
    }

    fn lock(&self) -> MutexGuard<'_, Controller> {
        self.controller.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The prober on a thread in the router namespace (see the crate documentation); every
    /// transition goes to the controller. Returns once the prober runs or failed to start.
    fn start_prober(
        &self,
        namespace: &str,
        settings: ProbeSettings,
        targets: Vec<NodeTarget>,
    ) -> Result<(oneshot::Sender<()>, JoinHandle<()>), LabError> {
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let controller = self.controller.clone();
        let shared = self.shared.clone();
        let namespace = namespace.to_string();
        let thread = std::thread::Builder::new()
            .name("lab prober".into())
            .spawn(move || {
                let failed_ready = ready_tx.clone();
                let result = kube_egress_linux::netns::run_in(&namespace, move || async move {
                    let (mut prober, mut transitions) = match Prober::new(settings, None) {
                        Ok(p) => p,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    prober.set_nodes(targets);
                    let _ = ready_tx.send(Ok(()));
                    let mut stop_rx = stop_rx;
                    loop {
                        tokio::select! {
                            _ = &mut stop_rx => break,
                            t = transitions.recv() => match t {
                                Some(t) => controller
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .on_transition(t),
                                None => break,
                            },
                        }
                    }
                });
                if let Err(e) = result {
                    let _ = failed_ready.send(Err(e.to_string()));
                    shared.record(LabEventKind::Failed {
                        component: "prober".into(),
                        error: e.to_string(),
                    });
                }
            })
            .map_err(|source| LabError::Start {
                what: "the prober".into(),
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
                Err(LabError::Prober("the prober thread ended early".into()))
            }
        }
    }

    /// Creates or replaces an EgressIP object; the changed plans are pushed at once.
    pub fn apply_egress_ip(&self, eip: &EgressIP) {
        let mut c = self.lock();
        let info = EgressIpInfo::from_egress_ip(eip);
        c.set_spec_ips(&info.name, Some(info.ips.len()));
        c.engine.upsert_egress_ip(info);
        c.publish();
    }

    /// Deletes an EgressIP object; the changed plans are pushed at once.
    pub fn remove_egress_ip(&self, name: &str) {
        let mut c = self.lock();
        c.set_spec_ips(name, None);
        c.engine.remove_egress_ip(name);
        c.publish();
    }

    /// The controller's metrics in the OpenMetrics text format (what `/metrics` would serve),
    /// under OVN-K's names: `ovnkube_clustermanager_num_egress_ips`,
    /// `..._egress_ips_node_unreachable_total`, `..._egress_ips_rebalance_total`, and the
    /// assign/unassign latency histograms, measured here from the controller's decision to the
    /// moment the node's agent has applied it (OVN-K: to the Northbound write).
    pub fn metrics_text(&self) -> String {
        kube_egress_metrics::encode(&self.registry)
    }

    /// The object's `status.items` as the controller would write them; `None` if unknown.
    pub fn status(&self, name: &str) -> Option<Vec<EgressIPStatusItem>> {
        self.lock().engine.status(name)
    }

    /// The node's current plan, as the controller computes it.
    pub fn node_plan(&self, node: &str) -> NodePlan {
        self.lock().engine.node_plan(node)
    }

    /// The controller's view of the node's reachability (nodes that are not probed count as
    /// reachable).
    pub fn reachable(&self, node: &str) -> bool {
        self.lock().reachable(node)
    }

    /// The nodes that are probed (the egress-assignable ones).
    pub fn probed_nodes(&self) -> &[String] {
        &self.probed
    }

    /// Waits until every agent has applied the last plan pushed to it and every probed node has
    /// a first verdict. Fails on the first failed apply it sees and on timeout.
    pub fn settle(&self, timeout: Duration) -> Result<(), LabError> {
        settle(&self.shared, &self.probed, timeout)
    }

    /// The timeline so far.
    pub fn events(&self) -> Vec<LabEvent> {
        self.shared.lock().events.clone()
    }

    /// Waits until the timeline satisfies `f`, returning what it returns; `None` on timeout.
    pub fn wait_for<T>(
        &self,
        timeout: Duration,
        mut f: impl FnMut(&[LabEvent]) -> Option<T>,
    ) -> Option<T> {
        self.shared.wait(timeout, |state| f(&state.events))
    }

    /// Stops the prober, then the agents (which leave their kernel state in place). Reports the
    /// failures recorded on the way, if any component stopped working.
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
        if let Some((stop, thread)) = self.prober.take() {
            let _ = stop.send(());
            let _ = thread.join();
        }
        let mut agents = std::mem::take(&mut self.lock().agents);
        for agent in agents.values_mut() {
            agent.stop();
        }
    }
}

/// Waits until every plan pushed (to an agent, or to the Northbound database) has been applied
/// and every probed node has a first verdict. Fails on the first failed apply it sees and on
/// timeout.
pub(crate) fn settle(
    shared: &Shared,
    probed: &[String],
    timeout: Duration,
) -> Result<(), LabError> {
    let outcome = shared.wait(timeout, |state| {
        for (node, pushed) in &state.pushed {
            match state.attempted.get(node) {
                Some((g, Err(error))) if g == pushed => {
                    return Some(Err(LabError::ApplyFailed {
                        node: node.clone(),
                        generation: *g,
                        error: error.clone(),
                    }));
                }
                Some((g, Ok(()))) if g >= pushed => {}
                _ => return None,
            }
        }
        let verdicts = probed.iter().all(|n| {
            state
                .events
                .iter()
                .any(|e| matches!(&e.kind, LabEventKind::Reachability { node, .. } if node == n))
        });
        verdicts.then_some(Ok(()))
    });
    outcome.unwrap_or_else(|| Err(timeout_error(shared, timeout)))
}

fn timeout_error(shared: &Shared, timeout: Duration) -> LabError {
    let state = shared.lock();
    let mut pending: Vec<String> = state
        .pushed
        .iter()
        .filter(|(node, pushed)| state.attempted.get(*node).map(|(g, _)| g) != Some(*pushed))
        .map(|(node, pushed)| format!("{node} has not applied plan {pushed}"))
        .collect();
    pending.extend(state.events.iter().filter_map(|e| match &e.kind {
        LabEventKind::Failed { component, error } => Some(format!("{component}: {error}")),
        _ => None,
    }));
    LabError::Timeout {
        timeout,
        pending: if pending.is_empty() {
            "no first probe verdict yet".into()
        } else {
            pending.join("; ")
        },
    }
}

impl Drop for LabCluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}
