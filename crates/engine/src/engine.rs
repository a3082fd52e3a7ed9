//! The incremental engine: object changes in, statuses, Events and node plans out.

use std::collections::{BTreeMap, BTreeSet};

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::sync::Arc;

use ipnet::IpNet;
use kube_egress_api::selector::IndexHint;
use kube_egress_api::{EgressIPStatusItem, Selector};

use crate::event::{Event, reason};
use crate::model::{EgressIpInfo, Family, NamespaceInfo, NodeInfo, PodInfo};
use crate::plan::{
    EgressHop, Exclusions, HostedIp, NodePlan, SnatEntry, SteeringEntry, SteeringRoute,
};
use crate::subnets::{HostNetworks, NetworkIndex};

/// Packet marks handed to EgressIP objects (`k8s.ovn.org/egressip-mark`), as OVN-Kubernetes.
pub const MARK_RANGE: RangeInclusive<u32> = 50000..=54999;

/// Cluster-wide settings that do not come from objects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    /// `--cluster-cidr`: pod networks in addition to the nodes' `spec.podCIDRs`.
    pub cluster_cidrs: Vec<IpNet>,
    /// `--service-cidr`: service networks in addition to ServiceCIDR objects.
    pub service_cidrs: Vec<IpNet>,
    /// `--cordoned-nodes-ineligible`: a cordoned node (`spec.unschedulable`) hosts no egress IP,
    /// so draining a node for maintenance moves its IPs before the node goes away.
    pub cordoned_nodes_ineligible: bool,
}

/// Everything the engine reads, for a from-scratch computation.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub nodes: Vec<NodeInfo>,
    pub namespaces: Vec<NamespaceInfo>,
    pub pods: Vec<PodInfo>,
    pub egress_ips: Vec<EgressIpInfo>,
    /// `networking.k8s.io` ServiceCIDR objects: name and CIDRs.
    pub service_cidrs: Vec<(String, Vec<IpNet>)>,
    /// Nodes that failed their reachability probe.
    pub unreachable: Vec<String>,
}

/// What changed since the last [`Engine::take_changes`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// EgressIP objects whose status items or mark changed.
    pub egress_ips: BTreeSet<String>,
    /// Nodes whose plan changed (apart from exclusions).
    pub nodes: BTreeSet<String>,
    /// The exclusion sets (shared by every node plan) changed.
    pub exclusions: bool,
    /// Events to publish, in the order they arose.
    pub events: Vec<Event>,
}

/// Orders EgressIP objects: oldest first, then by name. Objects without a creation time (not yet
/// created, e.g. in a manifest) count as the newest.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct EipKey {
    created: i64,
    name: Arc<str>,
}

impl EipKey {
    fn of(info: &EgressIpInfo) -> EipKey {
        EipKey {
            created: info.created.unwrap_or(i64::MAX),
            name: Arc::from(info.name.as_str()),
        }
    }
}

#[derive(Debug)]
struct EipState {
    info: EgressIpInfo,
    key: EipKey,
    /// `None` when the selector is invalid: the object then selects nothing.
    namespace_selector: Option<Selector>,
    pod_selector: Option<Arc<Selector>>,
    /// Valid, normalised, distinct IPs in spec order.
    wanted: Vec<IpAddr>,
    /// Assigned IPs and their nodes.
    held: BTreeMap<IpAddr, String>,
    mark: Option<u32>,
    namespaces: HashSet<String>,
    /// Keys (`ns/name`) of the pods this object serves, with their IPs.
    served: HashMap<Arc<str>, Vec<IpAddr>>,
    /// Number of served pods per node.
    served_nodes: HashMap<String, usize>,
    /// Current problems by identity, so each Event is raised once per occurrence.
    problems: BTreeMap<String, Event>,
}

#[derive(Debug)]
struct NodeState {
    info: Option<NodeInfo>,
    networks: HostNetworks,
    eligible: bool,
    hosted: BTreeMap<IpAddr, EipKey>,
    problems: BTreeMap<String, Event>,
}

impl NodeState {
    fn load(&self) -> usize {
        self.hosted.len()
    }
}

#[derive(Debug, Default)]
struct NamespaceState {
    labels: Option<std::collections::BTreeMap<String, String>>,
    /// The EgressIPs selecting this namespace, with their pod selectors.
    eips: BTreeMap<EipKey, Arc<Selector>>,
    /// The same pod selectors, indexed by label.
    pod_selectors: SelectorIndex,
    /// Pod names.
    pods: HashSet<String>,
}

#[derive(Debug)]
struct PodState {
    info: PodInfo,
    matching: BTreeSet<EipKey>,
}

impl PodState {
    fn serving(&self) -> Option<&EipKey> {
        self.matching.first()
    }
}

/// Selectors indexed by a label condition every matching object satisfies.
#[derive(Debug, Default)]
struct SelectorIndex {
    /// key → value → selectors requiring `key=value` (or `key in (…value…)`).
    by_label: HashMap<String, HashMap<String, HashSet<EipKey>>>,
    /// key → selectors requiring `key` to exist.
    by_key: HashMap<String, HashSet<EipKey>>,
    unindexed: HashSet<EipKey>,
}

impl SelectorIndex {
    fn insert(&mut self, key: &EipKey, selector: &Selector) {
        match selector.index_hint() {
            IndexHint::Label(k, v) => {
                self.by_label
                    .entry(k.to_string())
                    .or_default()
                    .entry(v.to_string())
                    .or_default()
                    .insert(key.clone());
            }
            IndexHint::AnyOf(k, vs) => {
                let values = self.by_label.entry(k.to_string()).or_default();
                for v in vs {
                    values.entry(v.clone()).or_default().insert(key.clone());
                }
            }
            IndexHint::Key(k) => {
                self.by_key
                    .entry(k.to_string())
                    .or_default()
                    .insert(key.clone());
            }
            IndexHint::Unindexed => {
                self.unindexed.insert(key.clone());
            }
        }
    }

    fn remove(&mut self, key: &EipKey, selector: &Selector) {
        match selector.index_hint() {
            IndexHint::Label(k, v) => self.remove_label(k, v, key),
            IndexHint::AnyOf(k, vs) => {
                for v in vs {
                    self.remove_label(k, v, key);
                }
            }
            IndexHint::Key(k) => {
                if let Some(set) = self.by_key.get_mut(k) {
                    set.remove(key);
                    if set.is_empty() {
                        self.by_key.remove(k);
                    }
                }
            }
            IndexHint::Unindexed => {
                self.unindexed.remove(key);
            }
        }
    }

    fn remove_label(&mut self, k: &str, v: &str, key: &EipKey) {
        if let Some(values) = self.by_label.get_mut(k) {
            if let Some(set) = values.get_mut(v) {
                set.remove(key);
                if set.is_empty() {
                    values.remove(v);
                }
            }
            if values.is_empty() {
                self.by_label.remove(k);
            }
        }
    }

    /// Selectors that may match an object with these labels (sorted, without repeats).
    fn candidates(&self, labels: &BTreeMap<String, String>) -> Vec<&EipKey> {
        let mut out: Vec<&EipKey> = self.unindexed.iter().collect();
        for (k, v) in labels {
            if let Some(set) = self.by_label.get(k).and_then(|values| values.get(v)) {
                out.extend(set.iter());
            }
            if let Some(set) = self.by_key.get(k) {
                out.extend(set.iter());
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// Namespaces indexed by label, to find the namespaces a selector may match.
#[derive(Debug, Default)]
struct LabelIndex {
    by_label: HashMap<(String, String), BTreeSet<String>>,
    by_key: HashMap<String, BTreeSet<String>>,
    all: BTreeSet<String>,
}

impl LabelIndex {
    fn insert(&mut self, name: &str, labels: &BTreeMap<String, String>) {
        self.all.insert(name.to_string());
        for (k, v) in labels {
            self.by_label
                .entry((k.clone(), v.clone()))
                .or_default()
                .insert(name.to_string());
            self.by_key
                .entry(k.clone())
                .or_default()
                .insert(name.to_string());
        }
    }

    fn remove(&mut self, name: &str, labels: &BTreeMap<String, String>) {
        self.all.remove(name);
        for (k, v) in labels {
            let key = (k.clone(), v.clone());
            if let Some(set) = self.by_label.get_mut(&key) {
                set.remove(name);
                if set.is_empty() {
                    self.by_label.remove(&key);
                }
            }
            if let Some(set) = self.by_key.get_mut(k) {
                set.remove(name);
                if set.is_empty() {
                    self.by_key.remove(k);
                }
            }
        }
    }

    fn candidates(&self, selector: &Selector) -> Vec<String> {
        match selector.index_hint() {
            IndexHint::Label(k, v) => self
                .by_label
                .get(&(k.to_string(), v.to_string()))
                .map(|s| s.iter().cloned().collect())
                .unwrap_or_default(),
            IndexHint::AnyOf(k, vs) => {
                let mut out = BTreeSet::new();
                for v in vs {
                    if let Some(s) = self.by_label.get(&(k.to_string(), v.clone())) {
                        out.extend(s.iter().cloned());
                    }
                }
                out.into_iter().collect()
            }
            IndexHint::Key(k) => self
                .by_key
                .get(k)
                .map(|s| s.iter().cloned().collect())
                .unwrap_or_default(),
            IndexHint::Unindexed => self.all.iter().cloned().collect(),
        }
    }
}

/// The EgressIPs whose selectors match a pod (none when the pod cannot be served).
fn matching_eips(ns: Option<&NamespaceState>, info: &PodInfo) -> BTreeSet<EipKey> {
    match ns {
        Some(ns) if info.servable() => ns
            .pod_selectors
            .candidates(&info.labels)
            .into_iter()
            .filter(|k| ns.eips[*k].matches(&info.labels))
            .cloned()
            .collect(),
        _ => BTreeSet::new(),
    }
}

impl NamespaceState {
    fn add_eip(&mut self, key: &EipKey, pod_selector: Arc<Selector>) {
        if let Some(old) = self.eips.insert(key.clone(), pod_selector.clone()) {
            self.pod_selectors.remove(key, &old);
        }
        self.pod_selectors.insert(key, &pod_selector);
    }

    fn remove_eip(&mut self, key: &EipKey) {
        if let Some(old) = self.eips.remove(key) {
            self.pod_selectors.remove(key, &old);
        }
    }
}

/// The Event of an object that matches a pod another object serves. `pod` is our pod key
/// (`namespace/name`); the message names the pod as OVN-Kubernetes does, `namespace_name`.
fn undefined_request(standby: &EipKey, pod: &str, serving: &EipKey) -> Event {
    let pod = pod.replacen('/', "_", 1);
    Event::warning(
        "EgressIP",
        &standby.name,
        reason::UNDEFINED_REQUEST,
        format!(
            "EgressIP object {} will not be configured for pod {pod} since another egressIP object {} is serving it, this is undefined",
            standby.name, serving.name
        ),
    )
}

fn add_count<K: Ord + Clone>(map: &mut BTreeMap<K, usize>, k: &K) -> bool {
    let c = map.entry(k.clone()).or_default();
    *c += 1;
    *c == 1
}

fn sub_count<K: Ord>(map: &mut BTreeMap<K, usize>, k: &K) -> bool {
    if let Some(c) = map.get_mut(k) {
        *c -= 1;
        if *c == 0 {
            map.remove(k);
            return true;
        }
    }
    false
}

/// The incremental engine. Feed it object changes with the `upsert_*` / `remove_*` methods, read
/// results with [`Engine::status`], [`Engine::mark`] and [`Engine::node_plan`], and collect what
/// changed with [`Engine::take_changes`].
#[derive(Debug)]
pub struct Engine {
    config: Config,
    nodes: HashMap<String, NodeState>,
    unreachable: HashSet<String>,
    namespaces: HashMap<String, NamespaceState>,
    /// Pods by key (`namespace/name`).
    pods: HashMap<Arc<str>, PodState>,
    pods_by_node: HashMap<String, HashSet<Arc<str>>>,
    eips: HashMap<String, EipState>,

    namespace_labels: LabelIndex,
    namespace_selectors: SelectorIndex,
    network_index: NetworkIndex,
    eligible_nodes: usize,
    /// Which EgressIP holds an IP, and on which node. One IP is never on two nodes.
    assigned: HashMap<IpAddr, (EipKey, String)>,
    /// Which objects list an IP in their spec.
    claims: HashMap<IpAddr, BTreeSet<EipKey>>,
    /// Host addresses of nodes (an egress IP equal to one is refused).
    host_ips: HashMap<IpAddr, BTreeSet<String>>,
    /// Objects with valid IPs not assigned yet.
    pending: BTreeSet<EipKey>,
    used_marks: HashMap<u32, EipKey>,
    free_marks: BTreeSet<u32>,
    without_mark: BTreeSet<EipKey>,

    pod_cidrs: BTreeMap<IpNet, usize>,
    service_cidrs: BTreeMap<IpNet, usize>,
    service_cidr_objects: HashMap<String, Vec<IpNet>>,
    node_ips: BTreeMap<IpAddr, usize>,
    /// The exclusion sets, rebuilt after a change of any of the four maps above.
    exclusions: Arc<Exclusions>,
    exclusions_stale: bool,

    queue: BTreeSet<EipKey>,
    /// Defers reconciling while a snapshot is loaded.
    loading: bool,
    /// Skips tracking dirty nodes while a snapshot is loaded (every plan is new).
    bulk: bool,
    changes: Changes,
}

impl Engine {
    /// An empty cluster.
    pub fn new(config: Config) -> Engine {
        let mut engine = Engine {
            config: Config::default(),
            nodes: HashMap::default(),
            unreachable: HashSet::default(),
            namespaces: HashMap::default(),
            pods: HashMap::default(),
            pods_by_node: HashMap::default(),
            eips: HashMap::default(),
            namespace_labels: LabelIndex::default(),
            namespace_selectors: SelectorIndex::default(),
            network_index: NetworkIndex::default(),
            eligible_nodes: 0,
            assigned: HashMap::default(),
            claims: HashMap::default(),
            host_ips: HashMap::default(),
            pending: BTreeSet::new(),
            used_marks: HashMap::default(),
            free_marks: MARK_RANGE.collect(),
            without_mark: BTreeSet::new(),
            pod_cidrs: BTreeMap::new(),
            service_cidrs: BTreeMap::new(),
            service_cidr_objects: HashMap::default(),
            node_ips: BTreeMap::new(),
            exclusions: Arc::default(),
            exclusions_stale: false,
            queue: BTreeSet::new(),
            loading: false,
            bulk: false,
            changes: Changes::default(),
        };
        engine.set_config(config);
        engine
    }

    /// Builds the engine from a snapshot in one pass. Existing `status.items` are honoured first
    /// (for every object, oldest first), then the remaining IPs are assigned, so a restart moves no
    /// valid assignment. The result does not depend on the order of the snapshot's lists.
    pub fn load(config: Config, snapshot: Snapshot) -> Engine {
        let mut engine = Engine::new(config);
        engine.loading = true;
        engine.bulk = true;
        for name in &snapshot.unreachable {
            engine.unreachable.insert(name.clone());
        }
        let mut nodes = snapshot.nodes;
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        for node in nodes {
            engine.upsert_node(node);
        }
        for (name, cidrs) in snapshot.service_cidrs {
            engine.upsert_service_cidr(&name, cidrs);
        }
        for ns in snapshot.namespaces {
            engine.upsert_namespace(ns);
        }
        engine.pods.reserve(snapshot.pods.len());
        for pod in snapshot.pods {
            // Matched once all objects are known (match_all_pods); a later duplicate wins.
            let key: Arc<str> = Arc::from(pod.key());
            engine.detach_pod(&key);
            engine.index_pod(key, pod);
        }
        let mut eips = snapshot.egress_ips;
        eips.sort_by_key(EipKey::of);
        // Marks from annotations first, so that no new allocation takes an annotated mark.
        let mut keys = Vec::with_capacity(eips.len());
        for info in &eips {
            keys.push(EipKey::of(info));
        }
        for (info, key) in eips.iter().zip(&keys) {
            if let Some(m) = info.mark
                && MARK_RANGE.contains(&m)
                && !engine.used_marks.contains_key(&m)
            {
                engine.used_marks.insert(m, key.clone());
                engine.free_marks.remove(&m);
            }
        }
        for info in eips {
            engine.add_egress_ip(info, true);
        }
        engine.match_all_pods();
        engine.loading = false;
        engine.drain();
        engine.bulk = false;
        // Events in a stable order whatever the order of the input.
        engine.changes.events.sort();
        // Every plan is new.
        let nodes: Vec<String> = engine
            .nodes
            .keys()
            .chain(engine.pods_by_node.keys())
            .cloned()
            .collect();
        engine.changes.nodes.extend(nodes);
        engine
    }

    /// Replaces the cluster-wide settings.
    pub fn set_config(&mut self, config: Config) {
        for c in &self.config.cluster_cidrs {
            sub_count(&mut self.pod_cidrs, &c.trunc());
        }
        for c in &self.config.service_cidrs {
            sub_count(&mut self.service_cidrs, &c.trunc());
        }
        for c in &config.cluster_cidrs {
            add_count(&mut self.pod_cidrs, &c.trunc());
        }
        for c in &config.service_cidrs {
            add_count(&mut self.service_cidrs, &c.trunc());
        }
        let exclusions_changed = config.cluster_cidrs != self.config.cluster_cidrs
            || config.service_cidrs != self.config.service_cidrs;
        if exclusions_changed {
            self.changes.exclusions = true;
            self.exclusions_stale = true;
        }
        let eligibility_changed =
            config.cordoned_nodes_ineligible != self.config.cordoned_nodes_ineligible;
        self.config = config;
        if eligibility_changed {
            let mut cordoned: Vec<(String, NodeInfo)> = self
                .nodes
                .iter()
                .filter_map(|(name, n)| n.info.clone().map(|i| (name.clone(), i)))
                .filter(|(_, i)| i.unschedulable)
                .collect();
            cordoned.sort_by(|a, b| a.0.cmp(&b.0));
            for (name, info) in cordoned {
                self.refresh_node(&name, Some(info));
            }
        }
        self.drain();
    }

    /// Returns and clears what changed.
    pub fn take_changes(&mut self) -> Changes {
        std::mem::take(&mut self.changes)
    }

    // ---------------------------------------------------------------------------------------
    // Nodes

    pub fn upsert_node(&mut self, info: NodeInfo) {
        let name = info.name.clone();
        self.refresh_node(&name, Some(info));
        self.drain();
    }

    pub fn remove_node(&mut self, name: &str) {
        self.refresh_node(name, None);
        self.drain();
    }

    /// Records the result of a reachability probe.
    pub fn set_node_reachable(&mut self, name: &str, reachable: bool) {
        let changed = if reachable {
            self.unreachable.remove(name)
        } else {
            self.unreachable.insert(name.to_string())
        };
        if changed && let Some(info) = self.nodes.get(name).and_then(|n| n.info.clone()) {
            self.refresh_node(name, Some(info));
            self.drain();
        }
    }

    /// Whether the node can host egress IPs: labelled, Ready, reachable (and not cordoned, when
    /// [`Config::cordoned_nodes_ineligible`] is set).
    pub fn node_eligible(&self, name: &str) -> bool {
        self.nodes.get(name).is_some_and(|n| n.eligible)
    }

    fn refresh_node(&mut self, name: &str, new: Option<NodeInfo>) {
        let old = self.nodes.get(name).and_then(|n| n.info.clone());
        if old == new && self.nodes.contains_key(name) {
            // Reachability may still have changed.
            let eligible = new.as_ref().is_some_and(|i| self.is_eligible(i));
            if self.nodes.get(name).is_some_and(|n| n.eligible == eligible) {
                return;
            }
        }

        // Exclusion sets and host addresses.
        let old_ips = old.as_ref().map(NodeInfo::host_ips).unwrap_or_default();
        let new_ips = new.as_ref().map(NodeInfo::host_ips).unwrap_or_default();
        let old_pod_cidrs = old
            .as_ref()
            .map(|i| i.pod_cidrs.clone())
            .unwrap_or_default();
        let new_pod_cidrs = new
            .as_ref()
            .map(|i| i.pod_cidrs.clone())
            .unwrap_or_default();
        if old_ips != new_ips || old_pod_cidrs != new_pod_cidrs {
            self.changes.exclusions = true;
            self.exclusions_stale = true;
        }
        for c in &old_pod_cidrs {
            sub_count(&mut self.pod_cidrs, c);
        }
        for c in &new_pod_cidrs {
            add_count(&mut self.pod_cidrs, c);
        }
        for ip in &old_ips {
            sub_count(&mut self.node_ips, ip);
            if let Some(set) = self.host_ips.get_mut(ip) {
                set.remove(name);
                if set.is_empty() {
                    self.host_ips.remove(ip);
                }
            }
        }
        for ip in &new_ips {
            add_count(&mut self.node_ips, ip);
            self.host_ips
                .entry(*ip)
                .or_default()
                .insert(name.to_string());
        }
        let old_set: BTreeSet<_> = old_ips.iter().collect();
        let new_set: BTreeSet<_> = new_ips.iter().collect();
        for ip in old_set.symmetric_difference(&new_set) {
            if let Some(claimants) = self.claims.get(ip) {
                self.queue.extend(claimants.iter().cloned());
            }
        }

        // Eligibility and the network index.
        let networks = new.as_ref().map(HostNetworks::of).unwrap_or_default();
        let eligible = new.as_ref().is_some_and(|i| self.is_eligible(i));
        let state = self
            .nodes
            .entry(name.to_string())
            .or_insert_with(|| NodeState {
                info: None,
                networks: HostNetworks::default(),
                eligible: false,
                hosted: BTreeMap::new(),
                problems: BTreeMap::new(),
            });
        let load = state.load();
        let eligible_before = self.eligible_nodes;
        if state.eligible {
            self.network_index.remove(name, load, &state.networks);
            self.eligible_nodes -= 1;
        }
        let gained = eligible && (!state.eligible || state.networks != networks);
        let old_tunnel = state.info.as_ref().and_then(NodeInfo::tunnel_address);
        state.networks = networks;
        state.eligible = eligible;
        state.info = new.clone();
        if eligible {
            self.network_index.insert(name, load, &state.networks);
            self.eligible_nodes += 1;
        }

        // Hosted IPs that the node can no longer keep move elsewhere.
        for (ip, key) in &state.hosted {
            if !eligible || state.networks.host(ip).is_none() {
                self.queue.insert(key.clone());
            }
        }
        // Other nodes steer to this node's tunnel address.
        let new_tunnel = new.as_ref().and_then(NodeInfo::tunnel_address);
        if old_tunnel != new_tunnel {
            let keys: Vec<EipKey> = state.hosted.values().cloned().collect();
            for key in keys {
                self.mark_steering_dirty(&key.name);
            }
        }
        // The first eligible node (or the loss of the last one) changes why pending IPs wait.
        if (eligible_before > 0) != (self.eligible_nodes > 0) {
            self.queue.extend(self.pending.iter().cloned());
        }
        // Objects waiting for a node may now fit here.
        if gained {
            let state = &self.nodes[name];
            for key in &self.pending {
                let eip = &self.eips[&*key.name];
                if eip
                    .wanted
                    .iter()
                    .any(|ip| !eip.held.contains_key(ip) && state.networks.host(ip).is_some())
                {
                    self.queue.insert(key.clone());
                }
            }
        }

        // Problems with the node's addressing.
        let mut problems = BTreeMap::new();
        if let Some(info) = &new {
            for p in &info.problems {
                problems.insert(
                    p.field.clone(),
                    Event::warning(
                        "Node",
                        name,
                        reason::INVALID_NODE_ADDRESSING,
                        format!("{}: {}", p.field, p.message),
                    ),
                );
            }
        }
        self.replace_problems_of_node(name, problems);

        if new.is_none() {
            let state = &self.nodes[name];
            if state.hosted.is_empty() {
                self.nodes.remove(name);
            }
        }
    }

    fn is_eligible(&self, info: &NodeInfo) -> bool {
        info.egress_assignable()
            && info.ready
            && !self.unreachable.contains(&info.name)
            && !(self.config.cordoned_nodes_ineligible && info.unschedulable)
    }

    fn replace_problems_of_node(&mut self, name: &str, problems: BTreeMap<String, Event>) {
        let Some(state) = self.nodes.get_mut(name) else {
            return;
        };
        for (id, event) in &problems {
            if state.problems.get(id) != Some(event) {
                self.changes.events.push(event.clone());
            }
        }
        state.problems = problems;
    }

    // ---------------------------------------------------------------------------------------
    // ServiceCIDR objects

    pub fn upsert_service_cidr(&mut self, name: &str, cidrs: Vec<IpNet>) {
        let cidrs: Vec<IpNet> = cidrs.iter().map(IpNet::trunc).collect();
        let old = self
            .service_cidr_objects
            .insert(name.to_string(), cidrs.clone())
            .unwrap_or_default();
        if old != cidrs {
            for c in &old {
                sub_count(&mut self.service_cidrs, c);
            }
            for c in &cidrs {
                add_count(&mut self.service_cidrs, c);
            }
            self.changes.exclusions = true;
            self.exclusions_stale = true;
        }
        self.drain();
    }

    pub fn remove_service_cidr(&mut self, name: &str) {
        if let Some(old) = self.service_cidr_objects.remove(name) {
            for c in &old {
                sub_count(&mut self.service_cidrs, c);
            }
            self.changes.exclusions = true;
            self.exclusions_stale = true;
        }
        self.drain();
    }

    // ---------------------------------------------------------------------------------------
    // Namespaces

    pub fn upsert_namespace(&mut self, ns: NamespaceInfo) {
        self.set_namespace_labels(&ns.name, Some(ns.labels));
    }

    pub fn remove_namespace(&mut self, name: &str) {
        self.set_namespace_labels(name, None);
    }

    fn set_namespace_labels(&mut self, name: &str, labels: Option<BTreeMap<String, String>>) {
        let state = self.namespaces.entry(name.to_string()).or_default();
        if state.labels == labels {
            return;
        }
        if let Some(old) = &state.labels {
            self.namespace_labels.remove(name, old);
        }
        if let Some(new) = &labels {
            self.namespace_labels.insert(name, new);
        }
        state.labels = labels.clone();
        let new_eips: BTreeMap<EipKey, Arc<Selector>> = match &labels {
            None => BTreeMap::new(),
            Some(labels) => self
                .namespace_selectors
                .candidates(labels)
                .into_iter()
                .filter_map(|k| {
                    let e = &self.eips[&*k.name];
                    let pod_selector = e.pod_selector.clone()?;
                    e.namespace_selector
                        .as_ref()
                        .is_some_and(|s| s.matches(labels))
                        .then(|| (k.clone(), pod_selector))
                })
                .collect(),
        };
        let state = self.namespaces.get_mut(name).expect("just inserted");
        let old_eips = state.eips.clone();
        for (key, pod_selector) in &new_eips {
            if old_eips.get(key) != Some(pod_selector) {
                state.add_eip(key, pod_selector.clone());
            }
        }
        for key in old_eips.keys().filter(|k| !new_eips.contains_key(*k)) {
            state.remove_eip(key);
        }
        for key in old_eips.keys().filter(|k| !new_eips.contains_key(*k)) {
            if let Some(e) = self.eips.get_mut(&*key.name) {
                e.namespaces.remove(name);
            }
        }
        for key in new_eips.keys().filter(|k| !old_eips.contains_key(*k)) {
            if let Some(e) = self.eips.get_mut(&*key.name) {
                e.namespaces.insert(name.to_string());
            }
        }
        if old_eips != new_eips {
            let mut pods: Vec<String> = state.pods.iter().map(|p| format!("{name}/{p}")).collect();
            pods.sort();
            for pod in pods {
                self.rematch_pod(&pod);
            }
        }
        if labels.is_none() && self.namespaces[name].pods.is_empty() {
            self.namespaces.remove(name);
        }
    }

    // ---------------------------------------------------------------------------------------
    // Pods

    pub fn upsert_pod(&mut self, info: PodInfo) {
        let key: Arc<str> = Arc::from(info.key());
        if self.pods.get(&key).is_some_and(|p| p.info == info) {
            return;
        }
        let old = self.detach_pod(&key);
        let matching = self.matching_eips(&info);
        self.index_pod(key.clone(), info);
        self.attach_pod(&key, matching, old.map(|o| o.matching).unwrap_or_default());
    }

    /// Records a pod in the pod, namespace and node indexes, matching nothing yet.
    fn index_pod(&mut self, key: Arc<str>, info: PodInfo) {
        match self.namespaces.get_mut(&info.namespace) {
            Some(ns) => {
                ns.pods.insert(info.name.clone());
            }
            None => {
                let mut ns = NamespaceState::default();
                ns.pods.insert(info.name.clone());
                self.namespaces.insert(info.namespace.clone(), ns);
            }
        }
        if let Some(node) = &info.node {
            match self.pods_by_node.get_mut(node) {
                Some(pods) => {
                    pods.insert(key.clone());
                }
                None => {
                    self.pods_by_node
                        .insert(node.clone(), HashSet::from_iter([key.clone()]));
                }
            }
        }
        self.pods.insert(
            key,
            PodState {
                info,
                matching: BTreeSet::new(),
            },
        );
    }

    pub fn remove_pod(&mut self, namespace: &str, name: &str) {
        let key = format!("{namespace}/{name}");
        if self.detach_pod(&key).is_some()
            && let Some(ns) = self.namespaces.get_mut(namespace)
            && ns.labels.is_none()
            && ns.pods.is_empty()
        {
            self.namespaces.remove(namespace);
        }
    }

    /// The EgressIPs whose selectors match the pod (empty when the pod cannot be served).
    fn matching_eips(&self, info: &PodInfo) -> BTreeSet<EipKey> {
        matching_eips(self.namespaces.get(&info.namespace), info)
    }

    /// Matches every pod once against every object (loading), rather than once per object.
    fn match_all_pods(&mut self) {
        // EgressIP name → (pod key, node, pod IPs) of the pods it serves.
        type Served = Vec<(Arc<str>, String, Vec<IpAddr>)>;
        let mut served: HashMap<Arc<str>, Served> = HashMap::default();
        let mut events = Vec::new();
        let namespaces = &self.namespaces;
        for (key, pod) in self.pods.iter_mut() {
            pod.matching = matching_eips(namespaces.get(&pod.info.namespace), &pod.info);
            let Some(serving) = pod.matching.first() else {
                continue;
            };
            let node = pod.info.node.clone().expect("served pods are scheduled");
            served.entry(serving.name.clone()).or_default().push((
                key.clone(),
                node,
                pod.info.ips.clone(),
            ));
            for standby in pod.matching.iter().skip(1) {
                events.push(undefined_request(standby, key, serving));
            }
        }
        for (name, pods) in served {
            let e = self.eips.get_mut(&*name).expect("serving object exists");
            e.served.reserve(pods.len());
            for (key, node, ips) in pods {
                e.served.insert(key, ips);
                match e.served_nodes.get_mut(&node) {
                    Some(count) => *count += 1,
                    None => {
                        e.served_nodes.insert(node, 1);
                    }
                }
            }
        }
        self.changes.events.extend(events);
    }

    /// Removes a pod and everything it contributes; returns its old state.
    fn detach_pod(&mut self, key: &str) -> Option<PodState> {
        let old = self.pods.remove(key)?;
        if let Some(ns) = self.namespaces.get_mut(&old.info.namespace) {
            ns.pods.remove(&old.info.name);
        }
        if let Some(node) = &old.info.node
            && let Some(set) = self.pods_by_node.get_mut(node)
        {
            set.remove(key);
            if set.is_empty() {
                self.pods_by_node.remove(node);
            }
        }
        if let Some(serving) = old.serving() {
            let serving = serving.clone();
            self.unserve(&serving, key, old.info.node.as_deref());
        }
        Some(old)
    }

    /// Records the matching set of a freshly inserted pod and its serving object.
    fn attach_pod(&mut self, key: &Arc<str>, matching: BTreeSet<EipKey>, before: BTreeSet<EipKey>) {
        let pod = self.pods.get_mut(key).expect("attached pod exists");
        pod.matching = matching;
        if let Some(serving) = pod.serving().cloned() {
            let (node, ips) = (pod.info.node.clone(), pod.info.ips.clone());
            self.serve(&serving, key, node.as_deref(), &ips);
        }
        self.report_standby(key, &before);
    }

    /// Recomputes which EgressIPs match a pod after a selector or namespace change.
    fn rematch_pod(&mut self, key: &str) {
        let Some((key, pod)) = self.pods.get_key_value(key) else {
            return;
        };
        let key = key.clone();
        let matching = self.matching_eips(&pod.info);
        if matching == pod.matching {
            return;
        }
        let (node, ips) = (pod.info.node.clone(), pod.info.ips.clone());
        let old_serving = pod.serving().cloned();
        let before = pod.matching.clone();
        let new_serving = matching.first().cloned();
        if old_serving != new_serving {
            if let Some(old) = &old_serving {
                self.unserve(old, &key, node.as_deref());
            }
            if let Some(new) = &new_serving {
                self.serve(new, &key, node.as_deref(), &ips);
            }
        }
        self.pods.get_mut(&key).expect("pod exists").matching = matching;
        self.report_standby(&key, &before);
    }

    /// Raises `UndefinedRequest` for each object that newly stands by for a pod served by another.
    fn report_standby(&mut self, key: &str, before: &BTreeSet<EipKey>) {
        let pod = &self.pods[key];
        let Some(serving) = pod.serving() else {
            return;
        };
        for standby in pod.matching.iter().skip(1) {
            let was_standby_behind_same =
                before.first() == Some(serving) && before.contains(standby);
            if !was_standby_behind_same {
                self.changes
                    .events
                    .push(undefined_request(standby, key, serving));
            }
        }
    }

    fn serve(&mut self, eip: &EipKey, pod_key: &Arc<str>, node: Option<&str>, ips: &[IpAddr]) {
        let e = self
            .eips
            .get_mut(&*eip.name)
            .expect("serving object exists");
        e.served.insert(pod_key.clone(), ips.to_vec());
        let node = node.expect("served pods are scheduled");
        match e.served_nodes.get_mut(node) {
            Some(count) => *count += 1,
            None => {
                e.served_nodes.insert(node.to_string(), 1);
            }
        }
        if !self.bulk {
            self.changes.nodes.insert(node.to_string());
            self.changes.nodes.extend(e.held.values().cloned());
        }
    }

    fn unserve(&mut self, eip: &EipKey, pod_key: &str, node: Option<&str>) {
        let Some(e) = self.eips.get_mut(&*eip.name) else {
            return;
        };
        e.served.remove(pod_key);
        if let Some(node) = node {
            if let Some(c) = e.served_nodes.get_mut(node) {
                *c -= 1;
                if *c == 0 {
                    e.served_nodes.remove(node);
                }
            }
            self.changes.nodes.insert(node.to_string());
        }
        self.changes.nodes.extend(e.held.values().cloned());
    }

    // ---------------------------------------------------------------------------------------
    // EgressIPs

    pub fn upsert_egress_ip(&mut self, info: EgressIpInfo) {
        match self.eips.get(&*info.name) {
            None => self.add_egress_ip(info, true),
            Some(e) if e.info == info => {}
            Some(e) if e.key != EipKey::of(&info) => {
                // Recreated under the same name: a new object.
                let name = info.name.clone();
                self.remove_egress_ip(&name);
                self.add_egress_ip(info, true);
            }
            Some(_) => self.update_egress_ip(info),
        }
        self.drain();
    }

    pub fn remove_egress_ip(&mut self, name: &str) {
        let Some(e) = self.eips.get(name) else {
            return;
        };
        let key = e.key.clone();
        // Release the IPs (other claimants are queued) and the pods, then forget the object.
        self.set_wanted(&key, &[]);
        let held: Vec<IpAddr> = self.eips[name].held.keys().copied().collect();
        for ip in held {
            self.unassign(&key, ip);
        }
        self.set_selection(&key, None, None);
        let e = self.eips.remove(name).expect("present");
        self.pending.remove(&key);
        self.queue.remove(&key);
        self.without_mark.remove(&key);
        if let Some(m) = e.mark {
            self.used_marks.remove(&m);
            self.free_marks.insert(m);
            if let Some(next) = self.without_mark.pop_first() {
                self.give_mark(&next);
            }
        }
        self.changes.egress_ips.insert(name.to_string());
        self.drain();
    }

    fn add_egress_ip(&mut self, info: EgressIpInfo, honour_status: bool) {
        let key = EipKey::of(&info);
        let state = EipState {
            info: info.clone(),
            key: key.clone(),
            namespace_selector: None,
            pod_selector: None,
            wanted: Vec::new(),
            held: BTreeMap::new(),
            mark: None,
            namespaces: HashSet::default(),
            served: HashMap::default(),
            served_nodes: HashMap::default(),
            problems: BTreeMap::new(),
        };
        self.eips.insert(info.name.clone(), state);

        // Mark: the annotated one when it is free (or already reserved for us while loading).
        let annotated = info.mark.filter(|m| {
            MARK_RANGE.contains(m) && self.used_marks.get(m).is_none_or(|owner| *owner == key)
        });
        match annotated {
            Some(m) => {
                self.used_marks.insert(m, key.clone());
                self.free_marks.remove(&m);
                self.eips.get_mut(&*info.name).expect("inserted").mark = Some(m);
                if info.mark != Some(m) {
                    self.changes.egress_ips.insert(info.name.clone());
                }
            }
            None => self.give_mark(&key),
        }

        self.set_wanted(&key, &info.ips);
        if honour_status {
            self.take_status(&key, &info.status);
        }
        self.set_selectors(&key, &info);
        self.queue.insert(key);
    }

    fn update_egress_ip(&mut self, info: EgressIpInfo) {
        let e = &self.eips[&*info.name];
        let key = e.key.clone();
        let old = e.info.clone();
        if old.ips != info.ips {
            self.set_wanted(&key, &info.ips);
            self.queue.insert(key.clone());
        }
        if old.namespace_selector != info.namespace_selector
            || old.pod_selector != info.pod_selector
        {
            self.set_selectors(&key, &info);
        }
        let name = info.name.clone();
        self.eips.get_mut(&*name).expect("present").info = info;
    }

    fn give_mark(&mut self, key: &EipKey) {
        let Some(e) = self.eips.get_mut(&*key.name) else {
            return;
        };
        match self.free_marks.pop_first() {
            Some(m) => {
                e.mark = Some(m);
                self.used_marks.insert(m, key.clone());
                self.without_mark.remove(key);
                e.problems.remove("mark");
                self.changes.egress_ips.insert(key.name.to_string());
                self.mark_steering_dirty(&key.name);
            }
            None => {
                e.mark = None;
                self.without_mark.insert(key.clone());
                let event = Event::warning(
                    "EgressIP",
                    &key.name,
                    reason::MARK_EXHAUSTED,
                    format!(
                        "all {} packet marks are in use: pods selected by EgressIP {} on nodes that do not host one of its IPs keep their node's source address",
                        MARK_RANGE.count(),
                        key.name
                    ),
                );
                if e.problems.insert("mark".into(), event.clone()).is_none() {
                    self.changes.events.push(event);
                }
            }
        }
    }

    /// Parses `spec.egressIPs` and updates the claims index.
    fn set_wanted(&mut self, key: &EipKey, ips: &[String]) {
        let mut wanted: Vec<IpAddr> = Vec::new();
        for raw in ips {
            if let Ok(ip) = raw.trim().parse::<IpAddr>()
                && !wanted.contains(&ip)
            {
                wanted.push(ip);
            }
        }
        let e = self.eips.get_mut(&*key.name).expect("present");
        let old = std::mem::replace(&mut e.wanted, wanted.clone());
        for ip in old.iter().filter(|ip| !wanted.contains(ip)) {
            if let Some(set) = self.claims.get_mut(ip) {
                set.remove(key);
                self.queue.extend(set.iter().cloned());
                if set.is_empty() {
                    self.claims.remove(ip);
                }
            }
        }
        for ip in wanted.iter().filter(|ip| !old.contains(ip)) {
            let set = self.claims.entry(*ip).or_default();
            set.insert(key.clone());
            self.queue.extend(set.iter().cloned());
        }
    }

    /// Takes the object's written assignment as current where it is still valid (first sight only).
    fn take_status(&mut self, key: &EipKey, status: &[(String, String)]) {
        for (node, raw) in status {
            let Ok(ip) = raw.parse::<IpAddr>() else {
                continue;
            };
            let e = &self.eips[&*key.name];
            if !e.wanted.contains(&ip)
                || e.held.contains_key(&ip)
                || e.held.values().any(|n| n == node)
                || self.assigned.contains_key(&ip)
                || self.host_ips.contains_key(&ip)
            {
                continue;
            }
            let Some(n) = self.nodes.get(node) else {
                continue;
            };
            if n.eligible && n.networks.host(&ip).is_some() {
                self.assign(key, ip, node);
            }
        }
    }

    /// Takes the object's selectors; an invalid one makes the object select nothing, with an Event
    /// naming the field.
    fn set_selectors(&mut self, key: &EipKey, info: &EgressIpInfo) {
        let mut problems = BTreeMap::new();
        for err in [&info.namespace_selector, &info.pod_selector]
            .into_iter()
            .filter_map(|r| r.as_ref().err())
        {
            problems.insert(
                format!("selector:{}", err.field),
                Event::warning(
                    "EgressIP",
                    &key.name,
                    reason::INVALID_SELECTOR,
                    format!("EgressIP {} selects no pods: {err}", key.name),
                ),
            );
        }
        let e = self.eips.get_mut(&*key.name).expect("present");
        e.problems.retain(|id, _| !id.starts_with("selector:"));
        for (id, event) in problems {
            self.changes.events.push(event.clone());
            e.problems.insert(id, event);
        }
        match (&info.namespace_selector, &info.pod_selector) {
            (Ok(ns), Ok(pod)) => {
                self.set_selection(key, Some(ns.clone()), Some(Arc::new(pod.clone())))
            }
            _ => self.set_selection(key, None, None),
        }
    }

    /// Recomputes the namespaces and pods the object selects.
    fn set_selection(
        &mut self,
        key: &EipKey,
        namespace_selector: Option<Selector>,
        pod_selector: Option<Arc<Selector>>,
    ) {
        let e = self.eips.get_mut(&*key.name).expect("present");
        if let Some(old) = e.namespace_selector.take() {
            self.namespace_selectors.remove(key, &old);
        }
        e.namespace_selector = namespace_selector;
        e.pod_selector = pod_selector;
        let new_namespaces: HashSet<String> = match &e.namespace_selector {
            Some(sel) => {
                self.namespace_selectors.insert(key, sel);
                self.namespace_labels
                    .candidates(sel)
                    .into_iter()
                    .filter(|ns| {
                        self.namespaces[ns]
                            .labels
                            .as_ref()
                            .is_some_and(|l| sel.matches(l))
                    })
                    .collect()
            }
            None => HashSet::default(),
        };
        let e = self.eips.get_mut(&*key.name).expect("present");
        let old_namespaces = std::mem::replace(&mut e.namespaces, new_namespaces.clone());
        for ns in old_namespaces.difference(&new_namespaces) {
            if let Some(s) = self.namespaces.get_mut(ns) {
                s.remove_eip(key);
            }
        }
        if let Some(pod_selector) = &e.pod_selector {
            for ns in &new_namespaces {
                if let Some(s) = self.namespaces.get_mut(ns) {
                    s.add_eip(key, pod_selector.clone());
                }
            }
        }
        if self.loading {
            return;
        }
        let mut touched: Vec<String> = old_namespaces.union(&new_namespaces).cloned().collect();
        touched.sort();
        for ns in touched {
            let Some(s) = self.namespaces.get(&ns) else {
                continue;
            };
            let mut pods: Vec<String> = s.pods.iter().map(|p| format!("{ns}/{p}")).collect();
            pods.sort();
            for pod in pods {
                self.rematch_pod(&pod);
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // Assignment

    fn assign(&mut self, key: &EipKey, ip: IpAddr, node: &str) {
        let n = self.nodes.get_mut(node).expect("assigning to a known node");
        if n.eligible {
            self.network_index.remove(node, n.load(), &n.networks);
        }
        n.hosted.insert(ip, key.clone());
        if n.eligible {
            self.network_index.insert(node, n.load(), &n.networks);
        }
        self.assigned.insert(ip, (key.clone(), node.to_string()));
        let e = self.eips.get_mut(&*key.name).expect("present");
        e.held.insert(ip, node.to_string());
        self.changes.egress_ips.insert(key.name.to_string());
        self.changes.nodes.insert(node.to_string());
        self.mark_steering_dirty(&key.name);
    }

    fn unassign(&mut self, key: &EipKey, ip: IpAddr) {
        let Some((_, node)) = self.assigned.remove(&ip) else {
            return;
        };
        if let Some(n) = self.nodes.get_mut(&node) {
            if n.eligible {
                self.network_index.remove(&node, n.load(), &n.networks);
            }
            n.hosted.remove(&ip);
            if n.eligible {
                self.network_index.insert(&node, n.load(), &n.networks);
            }
            if n.info.is_none() && n.hosted.is_empty() {
                self.nodes.remove(&node);
            }
        }
        if let Some(e) = self.eips.get_mut(&*key.name) {
            e.held.remove(&ip);
        }
        self.changes.egress_ips.insert(key.name.to_string());
        self.changes.nodes.insert(node);
        self.mark_steering_dirty(&key.name);
        // Someone else may claim the IP now.
        if let Some(claimants) = self.claims.get(&ip) {
            self.queue
                .extend(claimants.iter().filter(|k| *k != key).cloned());
        }
    }

    /// Every node with pods of this object steers by its egress nodes. (While loading every plan
    /// is new anyway.)
    fn mark_steering_dirty(&mut self, name: &str) {
        if self.bulk {
            return;
        }
        if let Some(e) = self.eips.get(name) {
            self.changes.nodes.extend(e.served_nodes.keys().cloned());
            self.changes.nodes.extend(e.held.values().cloned());
        }
    }

    /// Who an IP belongs to: the object holding it, else the oldest claimant.
    fn owner(&self, ip: &IpAddr) -> Option<&EipKey> {
        match self.assigned.get(ip) {
            Some((k, _)) => Some(k),
            None => self.claims.get(ip).and_then(|c| c.first()),
        }
    }

    fn drain(&mut self) {
        if self.loading {
            return;
        }
        if self.exclusions_stale {
            self.exclusions_stale = false;
            let exclusions = Exclusions {
                pod_cidrs: self.pod_cidrs.keys().copied().collect(),
                service_cidrs: self.service_cidrs.keys().copied().collect(),
                node_ips: self.node_ips.keys().copied().collect(),
            };
            if *self.exclusions != exclusions {
                self.exclusions = Arc::new(exclusions);
            }
        }
        // Each pass either settles an object or frees an IP for a later one; bound it anyway.
        let mut budget = 16 * (self.queue.len() + self.eips.len() + 16);
        while let Some(key) = self.queue.pop_first() {
            if self.eips.contains_key(&*key.name) {
                self.reconcile(&key);
            }
            budget -= 1;
            if budget == 0 {
                debug_assert!(false, "reconcile did not settle");
                self.queue.clear();
            }
        }
    }

    /// Brings one object's assignment in line with its spec and the cluster: keeps valid
    /// assignments, moves the others, assigns new IPs to the least-loaded eligible node, and records
    /// the problems as Events.
    fn reconcile(&mut self, key: &EipKey) {
        let name = key.name.clone();
        let e = &self.eips[&*name];
        let wanted = e.wanted.clone();
        let raw_ips = e.info.ips.clone();
        let mut problems: BTreeMap<String, Event> = e
            .problems
            .iter()
            .filter(|(id, _)| id.starts_with("selector:") || *id == "mark")
            .map(|(id, ev)| (id.clone(), ev.clone()))
            .collect();
        let mut warn = |id: String, reason: &str, message: String| {
            problems.insert(id, Event::warning("EgressIP", &name, reason, message));
        };
        for raw in &raw_ips {
            if raw.trim().parse::<IpAddr>().is_err() {
                warn(
                    format!("invalid:{raw}"),
                    reason::INVALID_EGRESS_IP,
                    format!(
                        "egress IP: {raw} for object EgressIP: {name} is not a valid IP address"
                    ),
                );
            }
        }

        // Drop what is no longer wanted.
        let held: Vec<(IpAddr, String)> = e.held.iter().map(|(ip, n)| (*ip, n.clone())).collect();
        for (ip, _) in &held {
            if !wanted.contains(ip) {
                self.unassign(key, *ip);
            }
        }

        // Which IPs this object may have, and which of its current assignments stay.
        let mut usable: Vec<IpAddr> = Vec::new();
        let mut moving: Vec<IpAddr> = Vec::new();
        let mut kept_nodes: HashSet<String> = HashSet::default();
        for ip in &wanted {
            let held_here = self.eips[&*name].held.get(ip).cloned();
            if held_here.is_none() {
                match self.owner(ip) {
                    Some(owner) if owner != key => {
                        let (holder, node) = match self.assigned.get(ip) {
                            Some((k, n)) => (k.name.clone(), n.clone()),
                            None => (owner.name.clone(), String::new()),
                        };
                        warn(
                            format!("unsupported:{ip}"),
                            reason::UNSUPPORTED_REQUEST,
                            format!(
                                "IP: {:?} for EgressIP: {name} is already allocated for EgressIP: {holder} on {node}",
                                ip.to_string()
                            ),
                        );
                        continue;
                    }
                    _ => {}
                }
            }
            if let Some(hosts) = self.host_ips.get(ip) {
                let host = hosts.first().cloned().unwrap_or_default();
                warn(
                    format!("conflict:{ip}"),
                    reason::EGRESS_IP_CONFLICT,
                    format!(
                        "Egress IP {name} with IP {ip} is conflicting with a host ({host}) IP address and will not be assigned"
                    ),
                );
                if held_here.is_some() {
                    self.unassign(key, *ip);
                }
                continue;
            }
            usable.push(*ip);
            if let Some(node) = held_here {
                let valid = self
                    .nodes
                    .get(&node)
                    .is_some_and(|n| n.eligible && n.networks.host(ip).is_some())
                    && !kept_nodes.contains(&node);
                if valid {
                    kept_nodes.insert(node);
                } else {
                    moving.push(*ip);
                }
            }
        }
        for ip in &moving {
            self.unassign_keeping_claim(key, *ip);
        }

        // Assign everything usable and not held, in spec order.
        let mut unassigned: Vec<IpAddr> = Vec::new();
        for ip in &usable {
            if self.eips[&*name].held.contains_key(ip) {
                continue;
            }
            let picked = {
                let e = &self.eips[&*name];
                let nodes = &self.nodes;
                self.network_index.pick(
                    ip,
                    |n| !e.held.values().any(|h| h == n),
                    |n| {
                        nodes
                            .get(n)
                            .is_some_and(|s| s.networks.primary_contains(ip))
                    },
                )
            };
            match picked {
                Some(node) => self.assign(key, *ip, &node),
                None => unassigned.push(*ip),
            }
        }
        // A move that found no node frees the IP for other claimants.
        for ip in &moving {
            if !self.eips[&*name].held.contains_key(ip)
                && let Some(claimants) = self.claims.get(ip)
            {
                self.queue
                    .extend(claimants.iter().filter(|k| *k != key).cloned());
            }
        }

        if !unassigned.is_empty() {
            let held_count = usable.len() - unassigned.len();
            if self.eligible_nodes == 0 {
                warn(
                    "nodes".into(),
                    reason::NO_MATCHING_NODE_FOUND,
                    format!(
                        "no assignable nodes for EgressIP: {name}, please tag at least one node with label: {}",
                        kube_egress_api::EGRESS_ASSIGNABLE_LABEL
                    ),
                );
            } else if held_count == 0 {
                let list: Vec<String> = unassigned.iter().map(IpAddr::to_string).collect();
                warn(
                    "nodes".into(),
                    reason::NO_MATCHING_NODE_FOUND,
                    format!(
                        "No matching nodes found, which can host any of the egress IPs: [{}] for object EgressIP: {name}",
                        list.join(" ")
                    ),
                );
            } else {
                warn(
                    "nodes".into(),
                    reason::UNASSIGNED_REQUEST,
                    format!(
                        "Not all egress IPs for EgressIP: {name} could be assigned, please tag more nodes"
                    ),
                );
            }
            self.pending.insert(key.clone());
        } else {
            self.pending.remove(key);
        }

        let e = self.eips.get_mut(&*name).expect("present");
        for (id, event) in &problems {
            if e.problems.get(id) != Some(event) {
                self.changes.events.push(event.clone());
            }
        }
        e.problems = problems;
    }

    /// Unassigns an IP that this object will try to place elsewhere in the same pass.
    fn unassign_keeping_claim(&mut self, key: &EipKey, ip: IpAddr) {
        let Some((_, node)) = self.assigned.remove(&ip) else {
            return;
        };
        if let Some(n) = self.nodes.get_mut(&node) {
            if n.eligible {
                self.network_index.remove(&node, n.load(), &n.networks);
            }
            n.hosted.remove(&ip);
            if n.eligible {
                self.network_index.insert(&node, n.load(), &n.networks);
            }
            if n.info.is_none() && n.hosted.is_empty() {
                self.nodes.remove(&node);
            }
        }
        self.eips
            .get_mut(&*key.name)
            .expect("present")
            .held
            .remove(&ip);
        self.changes.egress_ips.insert(key.name.to_string());
        self.changes.nodes.insert(node);
        self.mark_steering_dirty(&key.name);
    }

    // ---------------------------------------------------------------------------------------
    // Results

    /// `status.items` of an object, in `spec.egressIPs` order.
    pub fn status(&self, name: &str) -> Option<Vec<EgressIPStatusItem>> {
        let e = self.eips.get(name)?;
        Some(
            e.wanted
                .iter()
                .filter_map(|ip| {
                    e.held.get(ip).map(|node| EgressIPStatusItem {
                        node: node.clone(),
                        egress_ip: ip.to_string(),
                    })
                })
                .collect(),
        )
    }

    /// The object's packet mark (`k8s.ovn.org/egressip-mark`).
    pub fn mark(&self, name: &str) -> Option<u32> {
        self.eips.get(name).and_then(|e| e.mark)
    }

    /// Names of the EgressIP objects, sorted.
    pub fn egress_ip_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.eips.keys().cloned().collect();
        names.sort();
        names
    }

    /// Names of the known nodes, sorted.
    pub fn node_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.info.is_some())
            .map(|(name, _)| name.clone())
            .collect();
        names.sort();
        names
    }

    /// Keys (`namespace/name`) of the pods an object serves, sorted.
    pub fn served_pods(&self, name: &str) -> Vec<String> {
        self.eips
            .get(name)
            .map(|e| {
                let mut pods: Vec<String> = e.served.keys().map(|k| k.to_string()).collect();
                pods.sort();
                pods
            })
            .unwrap_or_default()
    }

    /// The exclusion sets shared by every node plan.
    pub fn exclusions(&self) -> Arc<Exclusions> {
        self.exclusions.clone()
    }

    /// The desired egress state of one node.
    pub fn node_plan(&self, node: &str) -> NodePlan {
        let mut plan = NodePlan {
            exclusions: self.exclusions(),
            ..NodePlan::default()
        };
        if let Some(state) = self.nodes.get(node) {
            for (ip, key) in &state.hosted {
                let e = &self.eips[&*key.name];
                let Some((kind, subnet)) = state.networks.host(ip) else {
                    continue;
                };
                plan.egress_ips.push(HostedIp {
                    ip: *ip,
                    egress_ip: key.name.to_string(),
                    mark: e.mark,
                    kind,
                    subnet,
                });
                let family = Family::of(ip);
                for pod_ips in e.served.values() {
                    for pod_ip in pod_ips {
                        if Family::of(pod_ip) == family {
                            plan.snat.push(SnatEntry {
                                pod_ip: *pod_ip,
                                egress_ip: *ip,
                            });
                        }
                    }
                }
            }
        }
        let mut routes: BTreeMap<(u32, Family), SteeringRoute> = BTreeMap::new();
        for pod in self.pods_by_node.get(node).into_iter().flatten() {
            let pod = &self.pods[pod];
            let Some(serving) = pod.serving() else {
                continue;
            };
            let e = &self.eips[&*serving.name];
            let Some(mark) = e.mark else {
                continue;
            };
            for pod_ip in &pod.info.ips {
                let family = Family::of(pod_ip);
                let hops: Vec<(&IpAddr, &String)> = e
                    .held
                    .iter()
                    .filter(|(ip, _)| Family::of(ip) == family)
                    .collect();
                if hops.is_empty() || hops.iter().any(|(_, n)| n.as_str() == node) {
                    continue;
                }
                plan.steering.push(SteeringEntry {
                    pod_ip: *pod_ip,
                    mark,
                });
                routes
                    .entry((mark, family))
                    .or_insert_with(|| SteeringRoute {
                        mark,
                        family,
                        egress_ip: serving.name.to_string(),
                        next_hops: hops
                            .iter()
                            .filter_map(|(ip, n)| {
                                let address =
                                    self.nodes.get(*n)?.info.as_ref()?.tunnel_address()?;
                                Some(EgressHop {
                                    node: (*n).clone(),
                                    address,
                                    egress_ip: **ip,
                                })
                            })
                            .collect(),
                    });
            }
        }
        plan.steering_routes = routes.into_values().collect();
        plan.snat.sort();
        plan.snat.dedup();
        plan.steering.sort();
        plan
    }
}
