//! Property tests over random clusters and random sequences of changes.
//!
//! Invariants checked after every change:
//! - one IP is on at most one node, and never two IPs of one object on one node;
//! - every assigned IP is hostable on an eligible node and is not a host address;
//! - nothing assignable is left unassigned (no lost retries);
//! - a pod is served by at most one object, the oldest matching one;
//! - a node change (added, updated, removed, probed) moves only the IPs that node can no longer
//!   keep, each to a node that can host it, or leaves it unassigned, reported by an Event, only
//!   when every such node already holds an IP of the same object;
//! - an object that claims nothing already held moves no assignment;
//! - the incremental result equals the from-scratch result for the same objects and statuses, and
//!   the from-scratch result does not depend on the order of the input.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use common::*;
use kube_egress_api::Selector;
use kube_egress_engine::{
    Config, EgressIpInfo, Engine, Event, NamespaceInfo, NodeInfo, PodInfo, Snapshot,
};
use proptest::prelude::*;

const NODE_NAMES: [&str; 5] = ["n0", "n1", "n2", "n3", "n4"];
const NAMESPACES: [&str; 3] = ["ns0", "ns1", "ns2"];
const EIP_NAMES: [&str; 4] = ["e0", "e1", "e2", "e3"];

/// One change to the cluster.
#[derive(Debug, Clone)]
enum Op {
    Node(NodeInfo),
    RemoveNode(usize),
    Reachable(usize, bool),
    Namespace(NamespaceInfo),
    Pod(PodInfo),
    RemovePod(usize, usize),
    Eip(EgressIpInfo),
    RemoveEip(usize),
}

/// IPs from two primary networks, a secondary network and a few node addresses, so that
/// hostability, conflicts and shared claims all happen.
fn egress_ip() -> impl Strategy<Value = String> {
    prop_oneof![
        (100u8..104).prop_map(|h| format!("10.0.0.{h}")),
        (100u8..102).prop_map(|h| format!("10.0.1.{h}")),
        (100u8..102).prop_map(|h| format!("172.16.0.{h}")),
        (1u8..3).prop_map(|h| format!("10.0.0.{h}")),
        (100u8..102).prop_map(|h| format!("fd00::{h:x}")),
        Just("not-an-ip".to_string()),
    ]
}

fn node_info() -> impl Strategy<Value = NodeInfo> {
    (
        0..NODE_NAMES.len(),
        any::<bool>(),
        prop::bool::weighted(0.85),
        0u8..2,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(i, assignable, ready, net, secondary, v6)| {
            let primary = format!("10.0.{net}.{}/24", i + 1);
            let extra: Vec<String> = secondary
                .then(|| format!("172.16.0.{}/24", i + 1))
                .into_iter()
                .collect();
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            let mut n = node(NODE_NAMES[i], assignable, &primary, &extra);
            n.ready = ready;
            if v6 {
                n.primary
                    .push(format!("fd00::{}/64", i + 1).parse().unwrap());
            }
            n
        })
}

fn ns_labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(
        prop_oneof![Just("env".to_string()), Just("team".to_string())],
        prop_oneof![Just("a".to_string()), Just("b".to_string())],
        0..3,
    )
}

fn selector() -> impl Strategy<Value = Selector> {
    prop_oneof![
        Just(Selector::everything()),
        Just(Selector::compile(&match_labels(&[("env", "a")]), "s").unwrap()),
        Just(Selector::compile(&match_labels(&[("team", "b")]), "s").unwrap()),
        Just(Selector::compile(&not_in("env", &["b"]), "s").unwrap()),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => node_info().prop_map(Op::Node),
        1 => (0..NODE_NAMES.len()).prop_map(Op::RemoveNode),
        1 => (0..NODE_NAMES.len(), any::<bool>()).prop_map(|(i, r)| Op::Reachable(i, r)),
        2 => (0..NAMESPACES.len(), ns_labels()).prop_map(|(i, labels)| Op::Namespace(
            NamespaceInfo { name: NAMESPACES[i].into(), labels })),
        3 => (0..NAMESPACES.len(), 0usize..4, 0..NODE_NAMES.len(), any::<bool>(), ns_labels())
            .prop_map(|(ns, p, n, v6, labels)| {
                let mut ips = vec![format!("10.128.{n}.{}", ns * 10 + p)];
                if v6 {
                    ips.push(format!("fd01::{n}:{}", ns * 10 + p));
                }
                let ips: Vec<&str> = ips.iter().map(String::as_str).collect();
                let mut info = pod(NAMESPACES[ns], &format!("p{p}"), NODE_NAMES[n], &ips, &[]);
                info.labels = labels;
                Op::Pod(info)
            }),
        1 => (0..NAMESPACES.len(), 0usize..4).prop_map(|(ns, p)| Op::RemovePod(ns, p)),
        3 => (0..EIP_NAMES.len(), prop::collection::vec(egress_ip(), 0..4), selector(), selector())
            .prop_map(|(i, ips, ns_sel, pod_sel)| {
                let mut e = eip(EIP_NAMES[i], i as i64, &[], match_labels(&[]));
                e.ips = ips;
                e.namespace_selector = Ok(ns_sel);
                e.pod_selector = Ok(pod_sel);
                Op::Eip(e)
            }),
        1 => (0..EIP_NAMES.len()).prop_map(Op::RemoveEip),
    ]
}

/// The objects as the API server would hold them, to rebuild from scratch.
#[derive(Default, Clone)]
struct World {
    nodes: BTreeMap<String, NodeInfo>,
    unreachable: BTreeSet<String>,
    namespaces: BTreeMap<String, NamespaceInfo>,
    pods: BTreeMap<String, PodInfo>,
    eips: BTreeMap<String, EgressIpInfo>,
}

impl World {
    fn apply(&mut self, engine: &mut Engine, op: &Op) {
        match op.clone() {
            Op::Node(n) => {
                self.nodes.insert(n.name.clone(), n.clone());
                engine.upsert_node(n);
            }
            Op::RemoveNode(i) => {
                self.nodes.remove(NODE_NAMES[i]);
                engine.remove_node(NODE_NAMES[i]);
            }
            Op::Reachable(i, r) => {
                if r {
                    self.unreachable.remove(NODE_NAMES[i]);
                } else {
                    self.unreachable.insert(NODE_NAMES[i].into());
                }
                engine.set_node_reachable(NODE_NAMES[i], r);
            }
            Op::Namespace(ns) => {
                self.namespaces.insert(ns.name.clone(), ns.clone());
                engine.upsert_namespace(ns);
            }
            Op::Pod(p) => {
                self.pods.insert(p.key(), p.clone());
                engine.upsert_pod(p);
            }
            Op::RemovePod(ns, p) => {
                self.pods.remove(&format!("{}/p{p}", NAMESPACES[ns]));
                engine.remove_pod(NAMESPACES[ns], &format!("p{p}"));
            }
            Op::Eip(e) => {
                self.eips.insert(e.name.clone(), e.clone());
                engine.upsert_egress_ip(e);
            }
            Op::RemoveEip(i) => {
                self.eips.remove(EIP_NAMES[i]);
                engine.remove_egress_ip(EIP_NAMES[i]);
            }
        }
    }

    /// The objects with the statuses and marks the engine wrote.
    fn snapshot(&self, engine: &Engine) -> Snapshot {
        Snapshot {
            nodes: self.nodes.values().cloned().collect(),
            namespaces: self.namespaces.values().cloned().collect(),
            pods: self.pods.values().cloned().collect(),
            egress_ips: self
                .eips
                .values()
                .map(|e| {
                    let mut e = e.clone();
                    e.status = engine
                        .status(&e.name)
                        .unwrap()
                        .into_iter()
                        .map(|i| (i.node, i.egress_ip))
                        .collect();
                    e.mark = engine.mark(&e.name);
                    e
                })
                .collect(),
            service_cidrs: vec![],
            unreachable: self.unreachable.iter().cloned().collect(),
        }
    }

    fn eligible(&self, node: &str) -> bool {
        self.nodes
            .get(node)
            .is_some_and(|n| n.egress_assignable() && n.ready && !self.unreachable.contains(node))
    }
}

type Assignments = BTreeMap<String, Vec<(String, String)>>;

fn assignments(engine: &Engine) -> Assignments {
    engine
        .egress_ip_names()
        .into_iter()
        .map(|name| {
            let items = engine
                .status(&name)
                .unwrap()
                .into_iter()
                .map(|i| (i.node, i.egress_ip))
                .collect();
            (name, items)
        })
        .collect()
}

fn everything(engine: &Engine) -> (Assignments, BTreeMap<String, Option<u32>>, Vec<String>) {
    let marks = engine
        .egress_ip_names()
        .into_iter()
        .map(|n| (n.clone(), engine.mark(&n)))
        .collect();
    let plans = engine
        .node_names()
        .into_iter()
        .map(|n| format!("{n}: {:?}", engine.node_plan(&n)))
        .collect();
    (assignments(engine), marks, plans)
}

/// How a node would host an IP: (is primary, prefix length), mirroring the documented rules.
fn hostable(node: &NodeInfo, ip: &IpAddr) -> Option<bool> {
    if node.primary.iter().any(|p| p.trunc().contains(ip)) {
        return Some(true);
    }
    node.host_cidrs
        .iter()
        .filter(|c| !node.primary.contains(c))
        .any(|c| c.trunc().contains(ip))
        .then_some(false)
}

/// The eligible nodes that may take `ip` when it is placed: those that can host it, narrowed to the
/// ones holding it in a secondary network (and not their primary one) when there are any.
fn candidates(world: &World, ip: &IpAddr) -> Vec<String> {
    let hosting: Vec<(&String, bool)> = world
        .nodes
        .iter()
        .filter(|(n, _)| world.eligible(n))
        .filter_map(|(n, info)| hostable(info, ip).map(|primary| (n, primary)))
        .collect();
    let secondary_only = hosting.iter().any(|(_, primary)| !primary);
    hosting
        .into_iter()
        .filter(|(_, primary)| !secondary_only || !primary)
        .map(|(n, _)| n.clone())
        .collect()
}

/// The objects that hold every IP of their spec that is not a host address: they have no
/// outstanding `UnassignedRequest` or `NoMatchingNodeFound`, so losing an IP raises a new one.
fn fully_assigned(world: &World, assignments: &Assignments) -> BTreeSet<String> {
    let host_ips: BTreeSet<IpAddr> = world.nodes.values().flat_map(NodeInfo::host_ips).collect();
    world
        .eips
        .values()
        .filter(|e| {
            let held: BTreeSet<IpAddr> = assignments
                .get(&e.name)
                .into_iter()
                .flatten()
                .map(|(_, ip)| ip.parse().unwrap())
                .collect();
            e.ips
                .iter()
                .filter_map(|raw| raw.parse::<IpAddr>().ok())
                .filter(|ip| !host_ips.contains(ip))
                .all(|ip| held.contains(&ip))
        })
        .map(|e| e.name.clone())
        .collect()
}

/// What must hold after node `changed` was added, updated, removed or probed:
/// - an IP on another node, or on `changed` while that node is still eligible and can still host
///   it, stays where it was (unless the change made it a host address, which refuses it);
/// - an IP that `changed` can no longer keep is either on another node that may take it, or
///   unassigned because every such node already hosts an IP of the same object; an object that
///   had all its IPs before then gets an `UnassignedRequest` or `NoMatchingNodeFound` Event.
fn check_node_change(
    world: &World,
    changed: &str,
    before: &Assignments,
    after: &Assignments,
    events: &[Event],
    fully_assigned: &BTreeSet<String>,
) -> Result<(), TestCaseError> {
    let host_ips: BTreeSet<IpAddr> = world.nodes.values().flat_map(NodeInfo::host_ips).collect();
    for (name, items) in before {
        let now = &after[name];
        for (node, raw) in items {
            let ip: IpAddr = raw.parse().unwrap();
            if host_ips.contains(&ip) {
                continue;
            }
            let placed = now.iter().find(|(_, i)| i == raw).map(|(n, _)| n);
            let keeps = node != changed
                || (world.eligible(node) && hostable(&world.nodes[node], &ip).is_some());
            if keeps {
                prop_assert_eq!(
                    placed,
                    Some(node),
                    "{} of {} moved from {}",
                    raw,
                    name,
                    node
                );
                continue;
            }
            let allowed = candidates(world, &ip);
            match placed {
                Some(to) => prop_assert!(
                    to != node && allowed.contains(to),
                    "{raw} of {name} moved from {node} to {to}, which may not take it"
                ),
                None => {
                    let used: BTreeSet<&str> = now.iter().map(|(n, _)| n.as_str()).collect();
                    let free = allowed.iter().find(|n| !used.contains(n.as_str()));
                    prop_assert!(
                        free.is_none(),
                        "{raw} of {name} left {node} unassigned but {free:?} has room"
                    );
                    if fully_assigned.contains(name) {
                        prop_assert!(
                            events.iter().any(|e| e.kind == "EgressIP"
                                && e.name == *name
                                && (e.reason == "UnassignedRequest"
                                    || e.reason == "NoMatchingNodeFound")),
                            "{raw} of {name} left {node} unassigned without an Event: {events:?}"
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

fn check_invariants(world: &World, engine: &Engine) -> Result<(), TestCaseError> {
    let host_ips: BTreeSet<IpAddr> = world.nodes.values().flat_map(NodeInfo::host_ips).collect();
    let mut seen_ips: BTreeMap<IpAddr, String> = BTreeMap::new();
    for (name, items) in assignments(engine) {
        let eip = &world.eips[&name];
        let mut nodes = BTreeSet::new();
        for (node, ip) in &items {
            let ip: IpAddr = ip.parse().unwrap();
            prop_assert!(nodes.insert(node.clone()), "{name}: two IPs on {node}");
            prop_assert!(
                seen_ips.insert(ip, name.clone()).is_none(),
                "{ip} assigned twice"
            );
            prop_assert!(world.eligible(node), "{name}: {ip} on ineligible {node}");
            prop_assert!(
                hostable(&world.nodes[node], &ip).is_some(),
                "{ip} not hostable on {node}"
            );
            prop_assert!(!host_ips.contains(&ip), "{ip} is a host address");
            prop_assert!(eip.ips.iter().any(|s| s.parse::<IpAddr>() == Ok(ip)));
        }
    }
    // Nothing assignable left unassigned: an unassigned, valid, unconflicted IP that nobody else
    // holds has no eligible node able to take it.
    for (name, eip) in &world.eips {
        let items = engine.status(name).unwrap();
        let used: BTreeSet<&str> = items.iter().map(|i| i.node.as_str()).collect();
        for raw in &eip.ips {
            let Ok(ip) = raw.parse::<IpAddr>() else {
                continue;
            };
            if items.iter().any(|i| i.egress_ip == ip.to_string())
                || seen_ips.contains_key(&ip)
                || host_ips.contains(&ip)
            {
                continue;
            }
            // Owned by an older claimant that is not holding it either? Then that one must be
            // unable to place it too, checked in its own iteration.
            let older_claimant = world.eips.values().any(|o| {
                o.name != *name
                    && (o.created, &o.name) < (eip.created, &eip.name)
                    && o.ips.iter().any(|s| s.parse::<IpAddr>() == Ok(ip))
            });
            if older_claimant {
                continue;
            }
            let free = candidates(world, &ip)
                .into_iter()
                .find(|n| !used.contains(n.as_str()));
            prop_assert!(
                free.is_none(),
                "{name}: {ip} unassigned but {free:?} could host it"
            );
        }
    }
    // Serving: each pod by its oldest matching object.
    let mut served: BTreeMap<String, String> = BTreeMap::new();
    for name in engine.egress_ip_names() {
        for pod in engine.served_pods(&name) {
            prop_assert!(
                served.insert(pod.clone(), name.clone()).is_none(),
                "{pod} served twice"
            );
        }
    }
    for (key, pod) in &world.pods {
        let expected = world
            .namespaces
            .get(&pod.namespace)
            .filter(|_| pod.servable())
            .and_then(|ns| {
                world
                    .eips
                    .values()
                    .filter(|e| {
                        e.namespace_selector
                            .as_ref()
                            .is_ok_and(|s| s.matches(&ns.labels))
                            && e.pod_selector
                                .as_ref()
                                .is_ok_and(|s| s.matches(&pod.labels))
                    })
                    .min_by_key(|e| (e.created, e.name.clone()))
                    .map(|e| e.name.clone())
            });
        prop_assert_eq!(served.get(key).cloned(), expected, "pod {}", key);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn random_changes_keep_the_invariants(ops in prop::collection::vec(op(), 1..40)) {
        let mut engine = Engine::new(Config::default());
        let mut world = World::default();
        for op in &ops {
            engine.take_changes();
            let before = assignments(&engine);
            let fully_assigned = fully_assigned(&world, &before);
            world.apply(&mut engine, op);
            let events = engine.take_changes().events;
            check_invariants(&world, &engine)?;
            let after = assignments(&engine);
            match op {
                // A node added, changed, removed or probed: only the IPs it can no longer keep
                // move, each to a node that may take it; only lack of room leaves one unassigned.
                Op::Node(n) => {
                    check_node_change(&world, &n.name, &before, &after, &events, &fully_assigned)?
                }
                Op::RemoveNode(i) | Op::Reachable(i, _) => check_node_change(
                    &world, NODE_NAMES[*i], &before, &after, &events, &fully_assigned,
                )?,
                // An object never takes IPs from another one (others may gain released IPs).
                Op::Eip(e) => {
                    for (name, items) in before.iter().filter(|(n, _)| **n != e.name) {
                        for item in items {
                            prop_assert!(after[name].contains(item), "{item:?} of {name} moved");
                        }
                    }
                }
                // Pods and namespaces never move IPs.
                Op::Namespace(_) | Op::Pod(_) | Op::RemovePod(..) => prop_assert_eq!(&before, &after),
                Op::RemoveEip(_) => {}
            }
        }
        // Incremental == from scratch, given the statuses and marks the engine wrote.
        let incremental = everything(&engine);
        let scratch = Engine::load(Config::default(), world.snapshot(&engine));
        prop_assert_eq!(&incremental, &everything(&scratch));
    }

    #[test]
    fn from_scratch_does_not_depend_on_input_order(
        ops in prop::collection::vec(op(), 1..40),
        seed in any::<u64>(),
    ) {
        let mut engine = Engine::new(Config::default());
        let mut world = World::default();
        for op in &ops {
            world.apply(&mut engine, op);
        }
        let mut snapshot = world.snapshot(&engine);
        for e in &mut snapshot.egress_ips {
            e.status.clear();
            e.mark = None;
        }
        let first = everything(&Engine::load(Config::default(), snapshot.clone()));
        let mut rng = seed;
        let mut shuffle = |len: usize| -> Vec<usize> {
            let mut idx: Vec<usize> = (0..len).collect();
            for i in (1..len).rev() {
                rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                idx.swap(i, (rng >> 33) as usize % (i + 1));
            }
            idx
        };
        let order = shuffle(snapshot.nodes.len());
        snapshot.nodes = order.iter().map(|&i| snapshot.nodes[i].clone()).collect();
        let order = shuffle(snapshot.pods.len());
        snapshot.pods = order.iter().map(|&i| snapshot.pods[i].clone()).collect();
        let order = shuffle(snapshot.egress_ips.len());
        snapshot.egress_ips = order.iter().map(|&i| snapshot.egress_ips[i].clone()).collect();
        let order = shuffle(snapshot.namespaces.len());
        snapshot.namespaces = order.iter().map(|&i| snapshot.namespaces[i].clone()).collect();
        prop_assert_eq!(first, everything(&Engine::load(Config::default(), snapshot)));
    }
}
