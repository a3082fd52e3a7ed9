//! The controller: the engine, the agents' plan channels, and the reachability state fed by the
//! prober. Every engine change goes through [`Controller::publish`], which hands the changed
//! nodes' plans to their agents (every node's plan when the shared exclusions changed).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use kube_egress_engine::Engine;
use kube_egress_probe::Transition;

use crate::agent::{Agent, Message};
use crate::log::{LabEventKind, Shared};

pub(crate) struct Controller {
    pub engine: Engine,
    pub agents: BTreeMap<String, Agent>,
    generations: BTreeMap<String, u64>,
    /// Nodes the prober declared unreachable.
    unreachable: BTreeSet<String>,
    shared: Arc<Shared>,
}

impl Controller {
    pub fn new(engine: Engine, agents: BTreeMap<String, Agent>, shared: Arc<Shared>) -> Self {
        Controller {
            engine,
            agents,
            generations: BTreeMap::new(),
            unreachable: BTreeSet::new(),
            shared,
        }
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
