//! The lab's scenario on the OVN data plane, as `kube-egress lab --dataplane ovn` runs it: the
//! seed's cluster as a mini OVN-Kubernetes cluster (real OVN Northbound/Southbound, northd and
//! one chassis per node), the controller writing Northbound rows, every claim checked with real
//! packets.
//!
//! 1. **Build** an [`OvnCluster`] with the seed's nodes and pods (node1..node3, node1 and node3
//!    `k8s.ovn.org/egress-assignable`; pod1..pod3 in the `env: prod` namespaces, pod4 in
//!    `default`) and start the control plane ([`OvnControlPlane`]) with no EgressIP.
//! 2. **Before**: every pod's request; the server sees the pod's node IP (its gateway router's
//!    SNAT) and the request leaves through that node's uplink.
//! 3. **After**: the seed's `egressips-prod` (same object and selector) with egress IPs of the
//!    testbed's external network, [`OVN_EGRESS_IPS`], instead of the seed's 192.168.126.x; its
//!    `status.items`; every `env: prod` pod leaves with one of them through the uplink of the
//!    node `status.items` names for it (pods on node2 through both, ECMP), pod4 with node2's IP.
//! 4. **Failover**: as in the Linux lab, the object is replaced by a one-IP `egressip-failover`
//!    ([`OVN_FAILOVER_IP`], same selector). Each sample cuts the node holding it (the fabric's
//!    ends of its links go down: no flag anywhere), lets the prober find out, measures the time
//!    to the first request from pod2 (on node2, no egress IP) that succeeds with the egress IP —
//!    necessarily through the new egress node, the old one's uplink being down — and checks the
//!    uplink, the NAT rows and the external router's neighbour entry (the new gateway router's
//!    gratuitous ARP). It then reconnects the node and checks nothing moves back. The next
//!    sample cuts the new holder.
//!
//! The seed 000 step (a secondary host network) has no counterpart here: the OVN testbed's
//! nodes have one network.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube_egress_api::EgressIP;
use kube_egress_engine::{Config, NamespaceInfo, NodeInfo, PodInfo, Snapshot};
use kube_egress_ovn::OvnNode;
use kube_egress_ovn_testbed::spec::{CLUSTER_SUBNET, SERVER_IP, SERVER_PORT};
use kube_egress_ovn_testbed::{ClusterSpec, OvnCluster, manifests};
use kube_egress_probe::{ProbeMode, ProbeSettings};

use crate::ovn::{NORTHBOUND, OvnControlPlane, OvnInputs};
use crate::scenario::{
    AFTER_REQUESTS, CutTraffic, FAILOVER_EGRESS_IP, FailoverReport, FailoverSample, LabReport,
    SETTLE, ScenarioError, ScenarioOptions, check, items_text, lost_at, ms, probe_text,
    since_cut_raw, status_check,
};
use crate::seed::{SEED_EGRESS_IP, SeedObjects};
use crate::traffic::neighbour_mac;
use crate::{LabError, LabEventKind};

/// The egress IPs `egressips-prod` gets in the OVN lab: free addresses of the testbed's
/// external network, which every gateway router is on.
pub const OVN_EGRESS_IPS: [&str; 2] = ["172.18.0.100", "172.18.0.101"];
/// The IP of the failover object in the OVN lab.
pub const OVN_FAILOVER_IP: &str = "172.18.0.100";
/// The health-check port the OVN lab probes when none is configured (OVN-K's usual value).
pub const DEFAULT_HEALTHCHECK_PORT: u16 = 9107;

/// Beyond the worst-case detection time: the Northbound write, northd, the chassis' flows and
/// the new gateway router's gratuitous ARP.
const FAILOVER_MARGIN: Duration = Duration::from_secs(5);
/// The pod whose traffic the failover samples follow (on node2, which hosts no egress IP).
const FAILOVER_POD: &str = "pod2";
/// How many times the request checking a failover's new path is tried when it gets no answer.
const VERIFY_ATTEMPTS: usize = 3;

/// The probing the OVN lab uses for `settings`: the same interval and deadline, gRPC on the
/// configured health-check port or [`DEFAULT_HEALTHCHECK_PORT`] (the legacy TCP port 9 probe
/// has nothing to talk to on a gateway router's logical address).
pub fn ovn_probe(settings: ProbeSettings) -> ProbeSettings {
    let mode = match settings.mode {
        ProbeMode::Legacy { .. } => ProbeMode::Grpc {
            port: DEFAULT_HEALTHCHECK_PORT,
        },
        other => other,
    };
    ProbeSettings { mode, ..settings }
}

/// A built OVN lab: the cluster and the running control plane.
pub struct OvnScenario {
    // Field order is drop order: the control plane stops before the cluster goes.
    control: OvnControlPlane,
    seed: SeedObjects,
    options: ScenarioOptions,
    cluster: OvnCluster,
}

/// The seed's cluster as an OVN testbed spec: its nodes, its namespaces' labels, its pods.
fn spec(seed: &SeedObjects) -> ClusterSpec {
    let nodes: Vec<&str> = seed
        .nodes
        .iter()
        .filter_map(|n| n.metadata.name.as_deref())
        .collect();
    let mut spec = ClusterSpec::new(&nodes);
    for ns in &seed.namespaces {
        let labels: Vec<(&str, &str)> = ns
            .metadata
            .labels
            .iter()
            .flatten()
            .filter(|(k, _)| k.as_str() != "kubernetes.io/metadata.name")
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        spec = spec.namespace_labels(ns.metadata.name.as_deref().unwrap_or_default(), &labels);
    }
    for pod in &seed.pods {
        let labels: Vec<(&str, &str)> = pod
            .metadata
            .labels
            .iter()
            .flatten()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        spec = spec.pod_with_labels(
            pod.metadata.namespace.as_deref().unwrap_or("default"),
            pod.metadata.name.as_deref().unwrap_or_default(),
            pod.spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .unwrap_or_default(),
            &labels,
        );
    }
    spec
}

fn bad_object(e: serde_json::Error) -> LabError {
    LabError::Seed(format!("the OVN testbed's objects: {e}"))
}

/// The cluster's Node and Pod objects as ovnkube annotates them, the nodes labelled
/// egress-assignable exactly where the seed's are; the engine's snapshot (no EgressIP) and what
/// the OVN mapping reads.
fn objects(cluster: &OvnCluster, seed: &SeedObjects) -> Result<(Snapshot, OvnInputs), LabError> {
    let layout = cluster.layout();
    let mut nodes = Vec::new();
    for n in &layout.nodes {
        let mut node: Node = serde_json::from_value(manifests::node(n)).map_err(bad_object)?;
        let assignable = seed
            .nodes
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(n.name.as_str()))
            .and_then(|s| s.metadata.labels.as_ref())
            .is_some_and(|l| l.contains_key(manifests::EGRESS_ASSIGNABLE));
        if !assignable && let Some(labels) = node.metadata.labels.as_mut() {
            labels.remove(manifests::EGRESS_ASSIGNABLE);
        }
        nodes.push(node);
    }
    let mut pods = Vec::new();
    for p in &layout.pods {
        let node = layout
            .node(&p.node)
            .expect("a layout's pods are on its nodes");
        let pod: Pod = serde_json::from_value(manifests::pod(p, node)).map_err(bad_object)?;
        pods.push(PodInfo::from_pod(&pod));
    }
    let snapshot = Snapshot {
        nodes: nodes.iter().map(NodeInfo::from_node).collect(),
        namespaces: seed
            .namespaces
            .iter()
            .map(NamespaceInfo::from_namespace)
            .collect(),
        pods: pods.clone(),
        egress_ips: Vec::new(),
        service_cidrs: seed.service_cidrs.clone(),
        unreachable: Vec::new(),
    };
    let inputs = OvnInputs {
        nodes: nodes.iter().map(OvnNode::from_node).collect(),
        pods,
        cluster_subnets: vec![IpNet::V4(CLUSTER_SUBNET)],
    };
    Ok((snapshot, inputs))
}

impl OvnScenario {
    /// Starts the OVN cluster and the control plane with no EgressIP; returns once the first
    /// reconcile is written, every egress node has a first verdict and the chassis have the
    /// flows.
    pub fn start(
        options: ScenarioOptions,
        progress: &mut dyn FnMut(&str),
    ) -> Result<OvnScenario, ScenarioError> {
        let seed = SeedObjects::load()?;
        let started = Instant::now();
        let cluster = OvnCluster::start(&spec(&seed))?;
        progress(&format!(
            "started OVN (NB, SB, northd) and {} chassis (ovs-vswitchd userspace datapath, ovn-controller), {} pods, the web server {SERVER_IP} ({} ms)",
            cluster.layout().nodes.len(),
            cluster.layout().pods.len(),
            started.elapsed().as_millis()
        ));
        let started = Instant::now();
        let (snapshot, inputs) = objects(&cluster, &seed)?;
        let config = Config {
            cluster_cidrs: inputs.cluster_subnets.clone(),
            ..Config::default()
        };
        let control = OvnControlPlane::start(&cluster, snapshot, inputs, config, options.probe)?;
        control.settle(SETTLE)?;
        cluster.wait_hv()?;
        progress(&format!(
            "started the controller (engine, prober, Northbound reconciler) and {} health servers; probing {} ({} ms)",
            cluster.layout().nodes.len(),
            control.probed_nodes().join(", "),
            started.elapsed().as_millis()
        ));
        Ok(OvnScenario {
            control,
            seed,
            options,
            cluster,
        })
    }

    pub fn cluster(&self) -> &OvnCluster {
        &self.cluster
    }

    /// Runs every step; a failed check does not stop the scenario, an error (or `interrupted()`
    /// turning true, looked at between steps and samples) does.
    pub fn run(
        &self,
        progress: &mut dyn FnMut(&str),
        interrupted: &dyn Fn() -> bool,
    ) -> Result<LabReport, ScenarioError> {
        let stop = || {
            if interrupted() {
                Err(ScenarioError::Interrupted)
            } else {
                Ok(())
            }
        };
        let mut report = LabReport {
            dataplane: "ovn".into(),
            notes: vec![
                format!(
                    "{SEED_EGRESS_IP} is the seed's object with egress IPs of the OVN testbed's external network ({}) instead of 192.168.126.10 and 192.168.126.102",
                    OVN_EGRESS_IPS.join(", ")
                ),
                format!(
                    "the controller probes each chassis's underlay address with gRPC ({}); the nodes' external addresses are OVN gateway router ports",
                    probe_text(&self.options.probe)
                ),
                "no secondary-network step: the OVN testbed's nodes have one network".into(),
            ],
            ..LabReport::default()
        };
        stop()?;
        self.before(&mut report, progress)?;
        stop()?;
        self.after(&mut report, progress)?;
        stop()?;
        if self.options.failover_samples > 0 {
            self.failover(&mut report, progress, &stop)?;
        }
        Ok(report)
    }

    /// Stops the control plane and removes the cluster (daemons, namespaces, run directory);
    /// reports any component failure and any namespace left.
    pub fn destroy(self) -> Result<(), String> {
        let OvnScenario {
            control, cluster, ..
        } = self;
        let failures = control.stop();
        let prefix = cluster.prefix().to_string();
        drop(cluster);
        let left: Vec<String> = kube_egress_testbed::list_namespaces()
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|n| n.starts_with(&prefix))
            .collect();
        if !left.is_empty() {
            return Err(format!("namespaces left behind: {}", left.join(", ")));
        }
        if !failures.is_empty() {
            return Err(format!("components failed: {}", failures.join("; ")));
        }
        Ok(())
    }

    fn pod_key(&self, pod: &str) -> String {
        let p = self.cluster.pod(pod).expect("a pod of the cluster");
        format!("{}/{}", p.namespace, p.name)
    }

    fn node_ip(&self, node: &str) -> IpAddr {
        IpAddr::V4(self.cluster.node(node).expect("a node").node_ip.addr())
    }

    fn before(
        &self,
        report: &mut LabReport,
        progress: &mut dyn FnMut(&str),
    ) -> Result<(), ScenarioError> {
        let mut wrong = Vec::new();
        for pod in &self.cluster.layout().pods {
            let key = self.pod_key(&pod.name);
            let want = self.node_ip(&pod.node);
            let shown = match self.cluster.request(&pod.name) {
                Ok(egress) => {
                    if egress.source != want || egress.uplink() != Some(pod.node.as_str()) {
                        wrong.push(format!(
                            "{key}: {} through {:?}, not {want} through {}",
                            egress.source, egress.uplinks, pod.node
                        ));
                    }
                    egress.source.to_string()
                }
                Err(e) => {
                    wrong.push(format!("{key}: {e}"));
                    format!("error: {e}")
                }
            };
            progress(&format!(
                "before: {key:<18} on {} -> server saw {shown}",
                pod.node
            ));
            report.before.insert(key, shown);
        }
        report.checks.push(check(
            "before: every pod leaves with its node's address",
            wrong,
            "the server saw each pod's node IP (its gateway router's SNAT), through that node's uplink",
        ));
        Ok(())
    }

    /// Waits for the Northbound rows of the last change and the chassis' flows.
    fn settle(&self) -> Result<(), ScenarioError> {
        self.control.settle(SETTLE)?;
        self.cluster.wait_hv()?;
        Ok(())
    }

    fn seed_object(&self, name: &str, ips: &[&str]) -> Result<EgressIP, ScenarioError> {
        let mut eip = self
            .seed
            .egress_ip(SEED_EGRESS_IP)
            .ok_or_else(|| LabError::Seed(format!("no EgressIP {SEED_EGRESS_IP} in the seed")))?
            .clone();
        if name != SEED_EGRESS_IP {
            eip.metadata.name = Some(name.into());
            eip.metadata.creation_timestamp = None;
        }
        eip.spec.egress_ips = ips.iter().map(|s| s.to_string()).collect();
        Ok(eip)
    }

    fn after(
        &self,
        report: &mut LabReport,
        progress: &mut dyn FnMut(&str),
    ) -> Result<(), ScenarioError> {
        let eip = self.seed_object(SEED_EGRESS_IP, &OVN_EGRESS_IPS)?;
        self.control.apply_egress_ip(&eip);
        self.settle()?;
        let items = self.control.status(SEED_EGRESS_IP).unwrap_or_default();
        progress(&format!(
            "applied {SEED_EGRESS_IP} ({}; the seed's object and selector, egress IPs of the external network): status.items {}",
            eip.spec.egress_ips.join(", "),
            items_text(&items)
        ));
        report
            .checks
            .push(status_check(&eip, &items, self.control.probed_nodes()));
        let holder: BTreeMap<IpAddr, String> = items
            .iter()
            .filter_map(|i| Some((i.egress_ip.parse().ok()?, i.node.clone())))
            .collect();
        let hosting: BTreeSet<&str> = items.iter().map(|i| i.node.as_str()).collect();
        report
            .status_items
            .insert(SEED_EGRESS_IP.to_string(), items.clone());

        let prod: BTreeSet<&str> = self
            .cluster
            .layout()
            .namespaces
            .iter()
            .filter(|(_, labels)| labels.get("env").map(String::as_str) == Some("prod"))
            .map(|(name, _)| name.as_str())
            .collect();
        let (mut served_wrong, mut uplink_wrong, mut others_wrong, mut ecmp_missing) =
            (vec![], vec![], vec![], vec![]);
        for pod in &self.cluster.layout().pods {
            let key = self.pod_key(&pod.name);
            let results: Vec<_> = (0..AFTER_REQUESTS)
                .map(|_| self.cluster.request(&pod.name).map_err(|e| e.to_string()))
                .collect();
            let sources: Vec<Result<IpAddr, String>> = results
                .iter()
                .map(|r| r.as_ref().map(|e| e.source).map_err(Clone::clone))
                .collect();
            let distinct: BTreeSet<String> = sources.iter().map(crate::scenario::shown).collect();
            progress(&format!(
                "after:  {key:<18} on {} -> server saw {}",
                pod.node,
                distinct.iter().cloned().collect::<Vec<_>>().join(" and ")
            ));
            report
                .after
                .insert(key.clone(), crate::scenario::shown(&sources[0]));
            report
                .after_seen
                .insert(key.clone(), distinct.into_iter().collect());
            if prod.contains(pod.namespace.as_str()) {
                let bad: Vec<String> = sources
                    .iter()
                    .filter(|r| !r.as_ref().is_ok_and(|ip| holder.contains_key(ip)))
                    .map(crate::scenario::shown)
                    .collect();
                if !bad.is_empty() {
                    served_wrong.push(format!("{key}: {}", bad.join(", ")));
                }
                for egress in results.iter().flatten() {
                    if let Some(node) = holder.get(&egress.source)
                        && egress.uplink() != Some(node.as_str())
                    {
                        uplink_wrong.push(format!(
                            "{key}: {} left through {:?}, not {node}",
                            egress.source, egress.uplinks
                        ));
                    }
                }
                let seen: BTreeSet<IpAddr> =
                    sources.iter().filter_map(|r| r.clone().ok()).collect();
                if !hosting.contains(pod.node.as_str())
                    && bad.is_empty()
                    && seen.len() < holder.len()
                {
                    ecmp_missing.push(format!("{key} left only from {seen:?}"));
                }
            } else {
                let want = self.node_ip(&pod.node);
                if results.iter().any(|r| {
                    !r.as_ref()
                        .is_ok_and(|e| e.source == want && e.uplink() == Some(pod.node.as_str()))
                }) {
                    others_wrong.push(format!(
                        "{key}: {}",
                        sources
                            .iter()
                            .map(crate::scenario::shown)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
            }
        }
        report.checks.push(check(
            "after: every env=prod pod leaves with an egress IP of egressips-prod",
            served_wrong,
            &format!("{AFTER_REQUESTS} requests per pod, each from one of the object's egress IPs"),
        ));
        report.checks.push(check(
            "after: each egress IP leaves through the gateway router of its node in status.items",
            uplink_wrong,
            "every request's uplink was the node hosting the source the server saw",
        ));
        report.checks.push(check(
            "after: pods on a node without egress IP use both egress nodes (ECMP)",
            ecmp_missing,
            "the server saw both egress IPs from the pods of node2",
        ));
        report.checks.push(check(
            "after: pods of other namespaces keep their node's address",
            others_wrong,
            "pod4 (namespace default) still leaves with node2's IP through node2's uplink",
        ));
        Ok(())
    }

    fn holder(&self, name: &str) -> Option<String> {
        self.control
            .status(name)
            .and_then(|items| items.first().map(|i| i.node.clone()))
    }

    /// How long a node may take to be seen lost (or back) and traffic to follow.
    fn failover_limit(&self) -> Duration {
        self.options.probe.worst_case_detection() + FAILOVER_MARGIN
    }

    /// The gateway routers with a NAT row for `ip`.
    fn nat_routers(&self, ip: IpAddr) -> Result<Vec<String>, ScenarioError> {
        let mut routers = Vec::new();
        for node in &self.cluster.layout().nodes {
            let gr = node.gateway_router();
            let nats = self.cluster.nbctl(&["lr-nat-list", &gr])?;
            if nats.split_whitespace().any(|w| w == ip.to_string()) {
                routers.push(gr);
            }
        }
        Ok(routers)
    }

    fn failover(
        &self,
        report: &mut LabReport,
        progress: &mut dyn FnMut(&str),
        stop: &dyn Fn() -> Result<(), ScenarioError>,
    ) -> Result<(), ScenarioError> {
        let ip: IpAddr = OVN_FAILOVER_IP.parse().expect("a valid address");
        self.control.remove_egress_ip(SEED_EGRESS_IP);
        let object = self.seed_object(FAILOVER_EGRESS_IP, &[OVN_FAILOVER_IP])?;
        self.control.apply_egress_ip(&object);
        self.settle()?;
        progress(&format!(
            "failover: replaced {SEED_EGRESS_IP} by {FAILOVER_EGRESS_IP} ({OVN_FAILOVER_IP}, same selector): with two egress nodes, a two-IP object cannot move an IP"
        ));
        let (mut through_wrong, mut unannounced, mut failback, mut lost) =
            (vec![], vec![], vec![], vec![]);
        let mut runs = Vec::new();
        for n in 0..self.options.failover_samples {
            stop()?;
            let sample = self.failover_sample(ip, &mut through_wrong, &mut unannounced)?;
            progress(&format!(
                "failover {}/{}: cut {} -> {OVN_FAILOVER_IP} on {}: detected {}, Northbound written {}, first request through it {}",
                n + 1,
                self.options.failover_samples,
                sample.cut,
                sample.to.as_deref().unwrap_or("no node"),
                ms(sample.detected_ms),
                ms(sample.northbound_ms),
                ms(sample.first_request_ms),
            ));
            if sample.first_request_ms.is_none() {
                lost.push(format!(
                    "sample {}: no request succeeded within {:?}",
                    n + 1,
                    self.failover_limit()
                ));
            }
            let back = self.reconnect(&sample)?;
            failback.extend(back.into_iter().map(|p| format!("sample {}: {p}", n + 1)));
            runs.push(sample);
        }
        report.failover =
            FailoverReport::from_runs(OVN_FAILOVER_IP, probe_text(&self.options.probe), runs);
        let f = &report.failover;
        report.checks.push(check(
            "failover: traffic resumes through the new egress node",
            lost,
            &format!(
                "{} samples: p50 {}, p99 {}, max {}",
                f.samples,
                ms(f.p50_ms),
                ms(f.p99_ms),
                ms(f.max_ms)
            ),
        ));
        report.checks.push(check(
            "failover: the IP's NAT moves to the new egress node's gateway router and traffic leaves through its uplink",
            through_wrong,
            "one NAT row, on GR_<new node>; pod2's request left through the new node's uplink",
        ));
        report.checks.push(check(
            "failover: the new gateway router announces the IP (external router's neighbour entry updated)",
            unannounced,
            "the external router's entry for the IP holds the new gateway router's MAC",
        ));
        report.checks.push(check(
            "failover: a reconnected node takes nothing back",
            failback,
            "status.items and the NAT rows kept the new node",
        ));
        Ok(())
    }

    /// Cuts the node holding the failover IP and measures until a request succeeds through the
    /// new one.
    fn failover_sample(
        &self,
        ip: IpAddr,
        through_wrong: &mut Vec<String>,
        unannounced: &mut Vec<String>,
    ) -> Result<FailoverSample, ScenarioError> {
        let holder = self
            .holder(FAILOVER_EGRESS_IP)
            .ok_or_else(|| LabError::Seed(format!("{FAILOVER_EGRESS_IP} is not assigned")))?;
        let netns = self
            .cluster
            .pod_netns(FAILOVER_POD)
            .expect("the lab has pod2")
            .to_string();
        let traffic = CutTraffic::measure(
            &netns,
            &format!("http://{SERVER_IP}:{SERVER_PORT}/failover"),
            ip,
            self.failover_limit(),
            || self.cluster.set_node_connected(&holder, false),
        )?;
        let cut = traffic.cut;
        let events = self.control.events();
        let detected = lost_at(&events, &holder, cut);
        self.settle()?;
        let to = self.holder(FAILOVER_EGRESS_IP);
        let events = self.control.events();
        let after_detection = |e: &crate::LabEvent| detected.is_some_and(|d| e.at >= cut + d);
        let moved = events.iter().find_map(|e| match &e.kind {
            LabEventKind::PlanPushed { node, .. } if node == NORTHBOUND && after_detection(e) => {
                Some(e.at - cut)
            }
            _ => None,
        });
        let written = events.iter().find_map(|e| match &e.kind {
            LabEventKind::Applied { node, changes, .. }
                if node == NORTHBOUND && *changes > 0 && after_detection(e) =>
            {
                Some(e.at - cut)
            }
            _ => None,
        });
        match &to {
            Some(to) if *to != holder => {
                let routers = self.nat_routers(ip)?;
                let gr = format!("GR_{to}");
                if routers != [gr.clone()] {
                    through_wrong.push(format!("NAT rows for {ip} on {routers:?}, not [{gr}]"));
                }
                // The testbed's userspace datapath can stall a connection for seconds after a
                // chassis's links flapped (see BENCHMARKS.md, OVN lab failover), so a request that
                // gets no answer is tried again; one that is answered must be right the first time.
                let mut timeouts = Vec::new();
                for _ in 0..VERIFY_ATTEMPTS {
                    match self.cluster.request(FAILOVER_POD) {
                        Ok(e) if e.source == ip && e.uplink() == Some(to.as_str()) => {
                            timeouts.clear();
                            break;
                        }
                        Ok(e) => {
                            timeouts.clear();
                            through_wrong.push(format!(
                                "{FAILOVER_POD} left as {} through {:?}, not {ip} through {to}",
                                e.source, e.uplinks
                            ));
                            break;
                        }
                        Err(e) => timeouts.push(format!("{FAILOVER_POD}: {e}")),
                    }
                }
                if !timeouts.is_empty() {
                    through_wrong.push(timeouts.join("; "));
                }
                let mac = &self.cluster.node(to).expect("a node").external_mac;
                let entry = neighbour_mac(self.cluster.fabric_netns(), ip)?;
                if entry.as_deref() != Some(mac.as_str()) {
                    unannounced.push(format!(
                        "the external router's entry for {ip} is {entry:?}, GR_{to}'s MAC is {mac}"
                    ));
                }
            }
            _ => through_wrong.push(format!(
                "{OVN_FAILOVER_IP} did not move off {holder} (now {to:?})"
            )),
        }
        Ok(FailoverSample {
            cut: holder.clone(),
            moved_ips: usize::from(to.as_ref().is_some_and(|to| *to != holder)),
            to,
            detected_ms: detected.and_then(since_cut_raw),
            moved_ms: moved.and_then(since_cut_raw),
            egress_node_applied_ms: None,
            pod_node_applied_ms: None,
            northbound_ms: written.and_then(since_cut_raw),
            first_request_ms: traffic.first_request_ms(),
            recovered_ms: traffic.recovered_ms(),
            requests: traffic.requests(),
        })
    }

    /// Reconnects the cut node and checks it takes nothing back. Returns the problems seen.
    fn reconnect(&self, sample: &FailoverSample) -> Result<Vec<String>, ScenarioError> {
        let node = &sample.cut;
        let at = Instant::now();
        self.cluster.set_node_connected(node, true)?;
        while !self.control.reachable(node) {
            if at.elapsed() > self.failover_limit() {
                return Ok(vec![format!(
                    "{node} was not seen reachable within {:?}",
                    self.failover_limit()
                )]);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.settle()?;
        let mut problems = Vec::new();
        let holder = self.holder(FAILOVER_EGRESS_IP);
        if holder != sample.to {
            problems.push(format!(
                "{OVN_FAILOVER_IP} moved from {:?} to {holder:?} after {node} came back",
                sample.to
            ));
        }
        let ip: IpAddr = OVN_FAILOVER_IP.parse().expect("a valid address");
        let routers = self.nat_routers(ip)?;
        if routers.contains(&format!("GR_{node}")) {
            problems.push(format!("GR_{node} has a NAT row for {ip} again"));
        }
        Ok(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_becomes_an_ovn_cluster_spec() {
        let seed = SeedObjects::load().unwrap();
        let layout = spec(&seed).layout().unwrap();
        let names: Vec<&str> = layout.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["node1", "node2", "node3"]);
        assert_eq!(layout.pod("pod2").unwrap().node, "node2");
        assert_eq!(layout.pod("pod4").unwrap().namespace, "default");
        assert_eq!(
            layout.namespaces["namespace1"]
                .get("env")
                .map(String::as_str),
            Some("prod")
        );
        assert!(!layout.namespaces["default"].contains_key("env"));
    }

    #[test]
    fn the_ovn_lab_probes_with_grpc() {
        let legacy = kube_egress_probe::ReachabilityConfig::default().settings();
        let p = ovn_probe(legacy);
        assert_eq!(
            p.mode,
            ProbeMode::Grpc {
                port: DEFAULT_HEALTHCHECK_PORT
            }
        );
        assert_eq!(p.interval, legacy.interval);
        assert_eq!(p.deadline, legacy.deadline);
    }
}
