//! The engine fed from watch [`Update`]s.
//!
//! Until every watched kind has delivered its first complete list, updates are staged; then the
//! engine is built in one pass with [`Engine::load`], which honours the `status.items` already
//! written, so a restarted or newly elected controller moves no valid assignment. Feeding objects
//! one by one instead would let an EgressIP arrive before the node holding it and be reassigned.
//! After the load, updates go to the incremental engine.
//!
//! Two roles read the same objects differently:
//! - [`Role::Controller`] decides the assignment (statuses are read once, on first sight);
//! - [`Role::Agent`] takes the controller's written statuses as the assignment (see
//!   [`follow_written_status`]) and computes only its node's plan from them.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use kube_egress_api::{EGRESS_ASSIGNABLE_LABEL, EgressIP};
use kube_egress_engine::{
    Changes, Config, EgressIpInfo, Engine, NamespaceInfo, NodeInfo, PodInfo, Snapshot,
};

use crate::watch::{Kind, Update};

/// How the engine's input is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Controller,
    Agent,
}

#[derive(Default)]
struct Staging {
    nodes: BTreeMap<String, NodeInfo>,
    namespaces: BTreeMap<String, NamespaceInfo>,
    pods: HashMap<String, PodInfo>,
    egress_ips: BTreeMap<String, EgressIpInfo>,
    service_cidrs: BTreeMap<String, Vec<IpNet>>,
}

/// The engine and the latest Node and EgressIP objects, fed from watch updates.
pub struct Feed {
    role: Role,
    config: Config,
    expected: BTreeSet<Kind>,
    synced: BTreeSet<Kind>,
    staging: Option<Staging>,
    unreachable: BTreeSet<String>,
    engine: Option<Engine>,
    /// The latest Node objects by name.
    pub nodes: BTreeMap<String, Node>,
    /// The latest EgressIP objects by name (including the controller's own writes).
    pub egress_ips: BTreeMap<String, EgressIP>,
    /// Agent role: the written status of each EgressIP, as last given to the engine.
    written: HashMap<String, Vec<(String, String)>>,
}

impl Feed {
    pub fn new(role: Role, config: Config, kinds: &[Kind]) -> Feed {
        Feed {
            role,
            config,
            expected: kinds.iter().copied().collect(),
            synced: BTreeSet::new(),
            staging: Some(Staging::default()),
            unreachable: BTreeSet::new(),
            engine: None,
            nodes: BTreeMap::new(),
            egress_ips: BTreeMap::new(),
            written: HashMap::new(),
        }
    }

    /// The engine, once every kind has been listed.
    pub fn engine(&self) -> Option<&Engine> {
        self.engine.as_ref()
    }

    pub fn is_loaded(&self) -> bool {
        self.engine.is_some()
    }

    /// What changed in the engine since the last call (nothing before the load; the load itself
    /// reports every object and node as changed).
    pub fn take_changes(&mut self) -> Changes {
        self.engine
            .as_mut()
            .map(Engine::take_changes)
            .unwrap_or_default()
    }

    /// Records a reachability verdict (controller).
    pub fn set_node_reachable(&mut self, node: &str, reachable: bool) {
        if reachable {
            self.unreachable.remove(node);
        } else {
            self.unreachable.insert(node.to_string());
        }
        if let Some(engine) = &mut self.engine {
            engine.set_node_reachable(node, reachable);
        }
    }

    fn node_info(&self, node: &Node) -> NodeInfo {
        let mut info = NodeInfo::from_node(node);
        if self.role == Role::Agent {
            // The controller decided where IPs go (labels, readiness, reachability, cordons);
            // a status it wrote names a node that was eligible then, and it rewrites the
            // status when that changes.
            info.labels
                .insert(EGRESS_ASSIGNABLE_LABEL.to_string(), String::new());
            info.ready = true;
            info.unschedulable = false;
        }
        info
    }

    fn egress_ip_info(&self, eip: &EgressIP) -> EgressIpInfo {
        let info = EgressIpInfo::from_egress_ip(eip);
        match self.role {
            Role::Controller => info,
            Role::Agent => follow_written_status(info),
        }
    }

    /// Applies one update.
    pub fn apply(&mut self, update: Update) {
        match update {
            Update::Node(node) => {
                let info = self.node_info(&node);
                self.nodes.insert(info.name.clone(), *node);
                match (&mut self.staging, &mut self.engine) {
                    (Some(s), _) => {
                        s.nodes.insert(info.name.clone(), info);
                    }
                    (None, Some(e)) => e.upsert_node(info),
                    (None, None) => {}
                }
            }
            Update::NodeGone(name) => {
                self.nodes.remove(&name);
                self.with(
                    |s| {
                        s.nodes.remove(&name);
                    },
                    |e| e.remove_node(&name),
                );
            }
            Update::Namespace(ns) => match (&mut self.staging, &mut self.engine) {
                (Some(s), _) => {
                    s.namespaces.insert(ns.name.clone(), ns);
                }
                (None, Some(e)) => e.upsert_namespace(ns),
                (None, None) => {}
            },
            Update::NamespaceGone(name) => self.with(
                |s| {
                    s.namespaces.remove(&name);
                },
                |e| e.remove_namespace(&name),
            ),
            Update::Pod(pod) => match (&mut self.staging, &mut self.engine) {
                (Some(s), _) => {
                    s.pods.insert(pod.key(), pod);
                }
                (None, Some(e)) => e.upsert_pod(pod),
                (None, None) => {}
            },
            Update::PodGone { namespace, name } => self.with(
                |s| {
                    s.pods.remove(&format!("{namespace}/{name}"));
                },
                |e| e.remove_pod(&namespace, &name),
            ),
            Update::EgressIp(eip) => {
                let info = self.egress_ip_info(&eip);
                let name = info.name.clone();
                let status_changed = self.role == Role::Agent
                    && self.written.get(&name).is_some_and(|w| *w != info.status);
                if self.role == Role::Agent {
                    self.written.insert(name.clone(), info.status.clone());
                }
                self.egress_ips.insert(name.clone(), *eip);
                match (&mut self.staging, &mut self.engine) {
                    (Some(s), _) => {
                        s.egress_ips.insert(name, info);
                    }
                    (None, Some(e)) => {
                        if status_changed {
                            // The engine reads a status only on first sight: show it anew.
                            e.remove_egress_ip(&name);
                        }
                        e.upsert_egress_ip(info);
                    }
                    (None, None) => {}
                }
            }
            Update::EgressIpGone(name) => {
                self.egress_ips.remove(&name);
                self.written.remove(&name);
                self.with(
                    |s| {
                        s.egress_ips.remove(&name);
                    },
                    |e| e.remove_egress_ip(&name),
                );
            }
            Update::ServiceCidr { name, cidrs } => match (&mut self.staging, &mut self.engine) {
                (Some(s), _) => {
                    s.service_cidrs.insert(name, cidrs);
                }
                (None, Some(e)) => e.upsert_service_cidr(&name, cidrs),
                (None, None) => {}
            },
            Update::ServiceCidrGone(name) => self.with(
                |s| {
                    s.service_cidrs.remove(&name);
                },
                |e| e.remove_service_cidr(&name),
            ),
            Update::Synced(kind) => {
                self.synced.insert(kind);
                if self.staging.is_some() && self.expected.is_subset(&self.synced) {
                    self.load();
                }
            }
        }
    }

    fn with(&mut self, staged: impl FnOnce(&mut Staging), live: impl FnOnce(&mut Engine)) {
        match (&mut self.staging, &mut self.engine) {
            (Some(s), _) => staged(s),
            (None, Some(e)) => live(e),
            (None, None) => {}
        }
    }

    fn load(&mut self) {
        let Some(s) = self.staging.take() else {
            return;
        };
        let snapshot = Snapshot {
            nodes: s.nodes.into_values().collect(),
            namespaces: s.namespaces.into_values().collect(),
            pods: s.pods.into_values().collect(),
            egress_ips: s.egress_ips.into_values().collect(),
            service_cidrs: s.service_cidrs.into_iter().collect(),
            unreachable: self.unreachable.iter().cloned().collect(),
        };
        self.engine = Some(Engine::load(self.config.clone(), snapshot));
    }

    /// The uid of a known object, for Event references.
    pub fn uid_of(&self, kind: &str, name: &str) -> Option<String> {
        match kind {
            "Node" => self.nodes.get(name).and_then(|n| n.uid()),
            "EgressIP" => self.egress_ips.get(name).and_then(|e| e.uid()),
            _ => None,
        }
    }
}

/// The agent's reading of an EgressIP: only the IPs the controller wrote into `status.items`
/// are wanted, so the agent's engine places exactly those, on the written nodes, and never
/// assigns an IP on its own (it does not probe nodes and may see them differently).
pub fn follow_written_status(mut info: EgressIpInfo) -> EgressIpInfo {
    let written: BTreeSet<std::net::IpAddr> = info
        .status
        .iter()
        .filter_map(|(_, ip)| ip.parse().ok())
        .collect();
    info.ips
        .retain(|raw| raw.trim().parse().is_ok_and(|ip| written.contains(&ip)));
    info
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube_egress_api::{EgressIPSpec, EgressIPStatus, EgressIPStatusItem};

    fn eip(ips: &[&str], status: &[(&str, &str)]) -> EgressIP {
        let mut e = EgressIP::new(
            "e",
            EgressIPSpec {
                egress_ips: ips.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            },
        );
        e.status = Some(EgressIPStatus {
            items: status
                .iter()
                .map(|(n, ip)| EgressIPStatusItem {
                    node: n.to_string(),
                    egress_ip: ip.to_string(),
                })
                .collect(),
        });
        e
    }

    #[test]
    fn the_agent_wants_only_written_ips() {
        let info = EgressIpInfo::from_egress_ip(&eip(
            &["10.0.0.10", "10.0.0.11", "bad"],
            &[("n1", "10.0.0.11")],
        ));
        assert_eq!(follow_written_status(info).ips, ["10.0.0.11"]);
        let none = EgressIpInfo::from_egress_ip(&eip(&["10.0.0.10"], &[]));
        assert!(follow_written_status(none).ips.is_empty());
    }
}
