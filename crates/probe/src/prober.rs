//! The prober: every node probed concurrently (one task per node) on the interval; reachability
//! changes come out of a channel as [`Transition`]s, exactly one per change.
//!
//! Per node: probe, report a transition if the result differs from the last one (the first
//! result of a node is always reported, `initial: true`), then wait until `interval` after the
//! probe *started* — or not at all if the probe took longer. In gRPC mode the node's session is
//! kept between probes. Mode [`ProbeMode::Disabled`] reports every node reachable once and never
//! probes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::transport::ClientTlsConfig;

use crate::Error;
use crate::config::{ProbeMode, ProbeSettings};
use crate::grpc::{GrpcOutcome, GrpcProbe};
use crate::legacy::{self, LegacyOutcome};
use crate::tls::ClientTls;

/// A node to probe: its name and the addresses to probe (OVN-K: its management IPs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeTarget {
    pub name: String,
    pub addrs: Vec<IpAddr>,
}

impl NodeTarget {
    pub fn new(name: impl Into<String>, addrs: impl IntoIterator<Item = IpAddr>) -> Self {
        Self {
            name: name.into(),
            addrs: addrs.into_iter().collect(),
        }
    }
}

/// A node's reachability changed (or was first established, `initial`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub node: String,
    pub reachable: bool,
    /// The node's first result since it was added.
    pub initial: bool,
}

/// The result of one probe of a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Disabled,
    Legacy(LegacyOutcome),
    Grpc(GrpcOutcome),
}

impl Outcome {
    pub fn reachable(&self) -> bool {
        match self {
            Outcome::Disabled => true,
            Outcome::Legacy(o) => o.reachable(),
            Outcome::Grpc(o) => o.reachable(),
        }
    }
}

/// One node's probe with its state (the gRPC session), usable on its own for an ad hoc check.
pub enum NodeProbe {
    Disabled,
    Legacy { addrs: Vec<IpAddr>, port: u16 },
    Grpc(Box<GrpcProbe>),
}

impl NodeProbe {
    pub fn new(mode: ProbeMode, addrs: &[IpAddr], tls: Option<ClientTlsConfig>) -> Self {
        match mode {
            ProbeMode::Disabled => NodeProbe::Disabled,
            ProbeMode::Legacy { port } => NodeProbe::Legacy {
                addrs: addrs.to_vec(),
                port,
            },
            ProbeMode::Grpc { port } => NodeProbe::Grpc(Box::new(GrpcProbe::new(addrs, port, tls))),
        }
    }

    pub fn set_addresses(&mut self, new: &[IpAddr]) {
        match self {
            NodeProbe::Disabled => {}
            NodeProbe::Legacy { addrs, .. } => *addrs = new.to_vec(),
            NodeProbe::Grpc(g) => g.set_addresses(new),
        }
    }

    /// Probes once within `deadline`.
    pub async fn probe(&mut self, deadline: std::time::Duration) -> Outcome {
        match self {
            NodeProbe::Disabled => Outcome::Disabled,
            NodeProbe::Legacy { addrs, port } => {
                Outcome::Legacy(legacy::probe(addrs, *port, deadline).await)
            }
            NodeProbe::Grpc(g) => Outcome::Grpc(g.probe(deadline).await),
        }
    }
}

struct Entry {
    epoch: u64,
    reachable: Option<bool>,
}

#[derive(Default)]
struct Shared {
    nodes: Mutex<HashMap<String, Entry>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        // The map stays consistent even if a holder panicked (every update is a single store).
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Event {
    epoch: u64,
    transition: Transition,
}

/// The receiving end of the prober's transitions. Transitions of nodes removed (or removed and
/// added again) after they were queued are dropped, so every transition received belongs to the
/// node as currently registered.
pub struct Transitions {
    rx: mpsc::UnboundedReceiver<Event>,
    shared: Arc<Shared>,
}

impl Transitions {
    fn current(&self, event: &Event) -> bool {
        self.shared
            .lock()
            .get(&event.transition.node)
            .is_some_and(|e| e.epoch == event.epoch)
    }

    /// The next transition; `None` once the prober is gone.
    pub async fn recv(&mut self) -> Option<Transition> {
        loop {
            let event = self.rx.recv().await?;
            if self.current(&event) {
                return Some(event.transition);
            }
        }
    }

    /// The next transition if one is queued.
    pub fn try_recv(&mut self) -> Option<Transition> {
        while let Ok(event) = self.rx.try_recv() {
            if self.current(&event) {
                return Some(event.transition);
            }
        }
        None
    }
}

struct NodeTask {
    addrs: watch::Sender<Vec<IpAddr>>,
    handle: JoinHandle<()>,
}

/// Probes a set of nodes. Dropping it stops every probe (and closes the gRPC sessions).
pub struct Prober {
    settings: ProbeSettings,
    tls: Option<ClientTlsConfig>,
    runtime: tokio::runtime::Handle,
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Event>,
    tasks: HashMap<String, NodeTask>,
    next_epoch: u64,
}

impl Prober {
    /// A prober with no nodes; must be called inside a Tokio runtime (its tasks run there).
    /// `tls` is read now (gRPC mode only).
    pub fn new(
        settings: ProbeSettings,
        tls: Option<&ClientTls>,
    ) -> Result<(Self, Transitions), Error> {
        let runtime = tokio::runtime::Handle::try_current().map_err(Error::NoRuntime)?;
        let tls = match (settings.mode, tls) {
            (ProbeMode::Grpc { .. }, Some(tls)) => Some(tls.load()?),
            _ => None,
        };
        let shared = Arc::new(Shared::default());
        let (tx, rx) = mpsc::unbounded_channel();
        Ok((
            Self {
                settings,
                tls,
                runtime,
                shared: shared.clone(),
                tx,
                tasks: HashMap::new(),
                next_epoch: 0,
            },
            Transitions { rx, shared },
        ))
    }

    pub fn settings(&self) -> ProbeSettings {
        self.settings
    }

    /// Adds a node, or updates its addresses (its reachability is kept; a gRPC session to the old
    /// addresses is closed and the new ones are probed at once).
    pub fn upsert(&mut self, node: NodeTarget) {
        if let Some(task) = self.tasks.get(&node.name) {
            task.addrs.send_if_modified(|addrs| {
                let changed = *addrs != node.addrs;
                if changed {
                    addrs.clone_from(&node.addrs);
                }
                changed
            });
            return;
        }
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        self.shared.lock().insert(
            node.name.clone(),
            Entry {
                epoch,
                reachable: None,
            },
        );
        let (addrs_tx, addrs_rx) = watch::channel(node.addrs);
        let handle = self.runtime.spawn(run_node(NodeRun {
            name: node.name.clone(),
            epoch,
            settings: self.settings,
            tls: self.tls.clone(),
            addrs: addrs_rx,
            shared: self.shared.clone(),
            tx: self.tx.clone(),
        }));
        self.tasks.insert(
            node.name,
            NodeTask {
                addrs: addrs_tx,
                handle,
            },
        );
    }

    /// Stops probing a node (OVN-K closes the session of nodes that are no longer assignable or
    /// ready). Its queued transitions are dropped.
    pub fn remove(&mut self, name: &str) {
        self.shared.lock().remove(name);
        if let Some(task) = self.tasks.remove(name) {
            task.handle.abort();
        }
    }

    /// Makes the probed set exactly `nodes`.
    pub fn set_nodes(&mut self, nodes: impl IntoIterator<Item = NodeTarget>) {
        let nodes: HashMap<String, NodeTarget> =
            nodes.into_iter().map(|n| (n.name.clone(), n)).collect();
        let gone: Vec<String> = self
            .tasks
            .keys()
            .filter(|name| !nodes.contains_key(*name))
            .cloned()
            .collect();
        for name in gone {
            self.remove(&name);
        }
        for node in nodes.into_values() {
            self.upsert(node);
        }
    }

    /// The node's last result: `None` if it is not probed or has no result yet.
    pub fn reachable(&self, name: &str) -> Option<bool> {
        self.shared.lock().get(name).and_then(|e| e.reachable)
    }

    /// The probed nodes' names.
    pub fn nodes(&self) -> impl Iterator<Item = &str> {
        self.tasks.keys().map(String::as_str)
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        for task in self.tasks.values() {
            task.handle.abort();
        }
    }
}

struct NodeRun {
    name: String,
    epoch: u64,
    settings: ProbeSettings,
    tls: Option<ClientTlsConfig>,
    addrs: watch::Receiver<Vec<IpAddr>>,
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Event>,
}

impl NodeRun {
    /// Records the result; sends a transition if it changed. False when the node is gone.
    fn record(&self, last: &mut Option<bool>, reachable: bool) -> bool {
        let mut nodes = self.shared.lock();
        let Some(entry) = nodes.get_mut(&self.name).filter(|e| e.epoch == self.epoch) else {
            return false;
        };
        entry.reachable = Some(reachable);
        if *last != Some(reachable) {
            let transition = Transition {
                node: self.name.clone(),
                reachable,
                initial: last.is_none(),
            };
            *last = Some(reachable);
            // Sent under the lock, so a concurrent remove() is ordered before or after it.
            if self
                .tx
                .send(Event {
                    epoch: self.epoch,
                    transition,
                })
                .is_err()
            {
                return false;
            }
        }
        true
    }
}

async fn run_node(mut run: NodeRun) {
    let addrs = run.addrs.borrow_and_update().clone();
    let mut probe = NodeProbe::new(run.settings.mode, &addrs, run.tls.take());
    let mut last = None;
    loop {
        let started = Instant::now();
        let reachable = probe.probe(run.settings.deadline).await.reachable();
        if !run.record(&mut last, reachable) {
            return;
        }
        let next = if matches!(probe, NodeProbe::Disabled) {
            None
        } else {
            Some(started + run.settings.interval)
        };
        tokio::select! {
            _ = sleep_until(next) => {}
            changed = run.addrs.changed() => {
                if changed.is_err() {
                    return;
                }
                let addrs = run.addrs.borrow_and_update().clone();
                probe.set_addresses(&addrs);
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
