//! What happened in the lab, in order, with times: the controller's and the agents' timeline.
//! Tests and the lab's report read it; [`Shared::wait`] lets a caller block until a condition
//! on it holds.

use std::collections::BTreeMap;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kube_egress_engine::Event;
use kube_egress_metrics::ControllerMetrics;

/// One entry of the timeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabEvent {
    pub at: Instant,
    pub kind: LabEventKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LabEventKind {
    /// The prober's verdict about a node changed (or was first established, `initial`).
    Reachability {
        node: String,
        reachable: bool,
        initial: bool,
    },
    /// The engine asked for an Event (OVN-K reasons).
    EngineEvent(Event),
    /// The controller handed a new plan to the node's agent.
    PlanPushed { node: String, generation: u64 },
    /// The node's plan changed while the node was unreachable: it is delivered when the node is
    /// reachable again (a cut-off node cannot hear from the control plane either).
    PlanHeld { node: String },
    /// The agent applied a plan.
    Applied {
        node: String,
        generation: u64,
        changes: usize,
        problems: Vec<String>,
        took: Duration,
    },
    /// The agent could not apply a plan (it retries).
    ApplyFailed {
        node: String,
        generation: u64,
        error: String,
    },
    /// An agent, the controller or the prober stopped working.
    Failed { component: String, error: String },
}

#[derive(Default)]
pub(crate) struct State {
    pub events: Vec<LabEvent>,
    /// Per node: the last generation pushed, and the last one attempted with its outcome.
    pub pushed: BTreeMap<String, u64>,
    pub attempted: BTreeMap<String, (u64, Result<(), String>)>,
    /// Assignments (and unassignments) decided but not yet carried out by the node's agent.
    pub awaiting: Vec<Awaiting>,
}

/// An egress IP assigned to (or removed from) a node at `decided`, carried out once the node's
/// agent has applied plan `generation` or a later one.
pub(crate) struct Awaiting {
    pub node: String,
    pub generation: u64,
    pub decided: Instant,
    pub assign: bool,
}

#[derive(Default)]
pub(crate) struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    /// Observes the assign/unassign latencies (decision to applied on the node).
    pub metrics: std::sync::OnceLock<ControllerMetrics>,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn record(&self, kind: LabEventKind) {
        let mut state = self.lock();
        match &kind {
            LabEventKind::PlanPushed { node, generation } => {
                state.pushed.insert(node.clone(), *generation);
            }
            LabEventKind::Applied {
                node, generation, ..
            } => {
                state.attempted.insert(node.clone(), (*generation, Ok(())));
                let metrics = self.metrics.get();
                state.awaiting.retain(|a| {
                    if a.node != *node || a.generation > *generation {
                        return true;
                    }
                    if let Some(m) = metrics {
                        if a.assign {
                            m.observe_assign(a.decided.elapsed());
                        } else {
                            m.observe_unassign(a.decided.elapsed());
                        }
                    }
                    false
                });
            }
            LabEventKind::ApplyFailed {
                node,
                generation,
                error,
            } => {
                state
                    .attempted
                    .insert(node.clone(), (*generation, Err(error.clone())));
            }
            _ => {}
        }
        state.events.push(LabEvent {
            at: Instant::now(),
            kind,
        });
        drop(state);
        self.changed.notify_all();
    }

    /// Waits until `f` returns `Some` (re-evaluated at every change) or the timeout passes.
    pub fn wait<T>(&self, timeout: Duration, mut f: impl FnMut(&State) -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            if let Some(t) = f(&state) {
                return Some(t);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}
