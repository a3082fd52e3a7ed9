//! The controller: the engine, the agents' plan channels, and the reachability state fed by the
//! prober. Every engine change goes through [`Controller::publish`], which hands the changed
//! nodes' plans to their agents (every node's plan when the shared exclusions changed).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use kube_egress_api::EgressIPStatusItem;
use kube_egress_engine::Engine;
use kube_egress_metrics::ControllerMetrics;
use kube_egress_probe::Transition;

use crate::agent::{Agent, Message};
use crate::log::{Awaiting, LabEventKind, Shared};

pub(crate) struct Controller {
    pub engine: Engine,
    pub agents: BTreeMap<String, Agent>,
    generations: BTreeMap<String, u64>,
    /// Nodes the prober declared unreachable.
    unreachable: BTreeSet<String>,
    shared: Arc<Shared>,
    metrics: ControllerMetrics,
    /// The last `status.items` per EgressIP, to count the IPs that moved.
    statuses: BTreeMap<String, Vec<EgressIPStatusItem>>,
    /// The number of IPs in each object's spec (OVN-K's `num_egress_ips` counts those).
    spec_ips: BTreeMap<String, usize>,
}

impl Controller {
    pub fn new(
        engine: Engine,
        agents: BTreeMap<String, Agent>,
        shared: Arc<Shared>,
        metrics: ControllerMetrics,
    ) -> Self {
        Controller {
            engine,
            agents,
            generations: BTreeMap::new(),
            unreachable: BTreeSet::new(),
            shared,
            metrics,
            statuses: BTreeMap::new(),
            spec_ips: BTreeMap::new(),
        }
    }

    /// Records the size of an object's spec (`None`: deleted) for `num_egress_ips`.
    pub fn set_spec_ips(&mut self, name: &str, ips: Option<usize>) {
        match ips {
            Some(n) => self.spec_ips.insert(name.to_string(), n),
            None => self.spec_ips.remove(name),
        };
        self.metrics
            .set_egress_ips(self.spec_ips.values().copied().sum());
    }

    pub fn reachable(&self, node: &str) -> bool {
        !self.unreachable.contains(node)
    }

    /// Takes the engine's changes: records its Events and pushes the changed plans. Returns the
    /// nodes whose plan was pushed.
    pub fn publish(&mut self) -> BTreeSet<String> {
        let changes = self.engine.take_changes();
        for event in changes.events {
            self.shared.record(LabEventKind::EngineEvent(event));
        }
        let decided = std::time::Instant::now();
        // (node, assign): egress IPs placed on or removed from a node by this change.
        let mut placements: Vec<(String, bool)> = Vec::new();
        for name in &changes.egress_ips {
            let now = self.engine.status(name).unwrap_or_default();
            let before = self.statuses.remove(name).unwrap_or_default();
            // An IP that was on one node and is now on another was rebalanced (OVN-K counts
            // each move).
            for item in &now {
                if before
                    .iter()
                    .any(|b| b.egress_ip == item.egress_ip && b.node != item.node)
                {
                    self.metrics.rebalance();
                }
                if !before.contains(item) {
                    placements.push((item.node.clone(), true));
                }
            }
            for item in before.iter().filter(|b| !now.contains(b)) {
                placements.push((item.node.clone(), false));
            }
            if !now.is_empty() {
                self.statuses.insert(name.clone(), now);
            }
        }
        let nodes: Vec<String> = if changes.exclusions {
            self.agents.keys().cloned().collect()
        } else {
            changes
                .nodes
                .into_iter()
                .filter(|n| self.agents.contains_key(n))
                .collect()
        };
        let mut pushed = BTreeSet::new();
        for node in nodes {
            if self.push(&node) {
                pushed.insert(node);
            }
        }
        // Carried out with the plan just pushed, or (held for an unreachable node) the next one.
        let mut state = self.shared.lock();
        for (node, assign) in placements {
            let current = self.generations.get(&node).copied().unwrap_or(0);
            let generation = if pushed.contains(&node) {
                current
            } else {
                current + 1
            };
            state.awaiting.push(Awaiting {
                node,
                generation,
                decided,
                assign,
            });
        }
        drop(state);
        pushed
    }

    /// Hands the node's current plan to its agent, unless the node is unreachable (then the
    /// plan waits for the node to come back). True when pushed.
    fn push(&mut self, node: &str) -> bool {
        if !self.reachable(node) {
            self.shared.record(LabEventKind::PlanHeld {
                node: node.to_string(),
            });
            return false;
        }
        let Some(agent) = self.agents.get(node) else {
            return false;
        };
        let generation = self.generations.entry(node.to_string()).or_default();
        *generation += 1;
        let generation = *generation;
        let plan = self.engine.node_plan(node);
        if agent.tx.send(Message::Plan { generation, plan }).is_ok() {
            self.shared.record(LabEventKind::PlanPushed {
                node: node.to_string(),
                generation,
            });
            true
        } else {
            self.shared.record(LabEventKind::Failed {
                component: format!("agent {node}"),
                error: "the agent is gone; its plan was not delivered".into(),
            });
            false
        }
    }

    /// A reachability verdict of the prober.
    pub fn on_transition(&mut self, t: Transition) {
        self.shared.record(LabEventKind::Reachability {
            node: t.node.clone(),
            reachable: t.reachable,
            initial: t.initial,
        });
        let was_reachable = self.reachable(&t.node);
        if !t.reachable && was_reachable {
            self.metrics.node_unreachable();
        }
        if t.reachable {
            self.unreachable.remove(&t.node);
        } else {
            self.unreachable.insert(t.node.clone());
        }
        self.engine.set_node_reachable(&t.node, t.reachable);
        let pushed = self.publish();
        // A node that comes back gets its current plan at once, changed or not: it may still
        // hold egress IPs that moved away while it was cut off.
        if t.reachable && !was_reachable && !pushed.contains(&t.node) {
            self.push(&t.node);
        }
    }
}
