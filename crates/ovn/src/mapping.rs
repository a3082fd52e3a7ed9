//! The Northbound rows that carry the egress plan, as ovnkube writes them for the default network in
//! a single zone (every node programmed through one Northbound database). Pure: cluster state in,
//! rows out.
//!
//! - priority 102 `allow` policies on `ovn_cluster_router`: pod→pod and pod→join subnet per cluster
//!   subnet and family, reply traffic (`pkt.mark == 42`), and pod→node IPs
//!   (`$<egressip-served-pods> / $<egresssvc-served-pods> → $<node-ips>`, option `pkt_mark=1008`);
//! - a priority 100 `reroute` policy per served pod IP with one next hop per egress node of that
//!   family: the egress node's gateway router join address when the egress IP is on the node's
//!   primary network, its management port address when it is on another host network (the node's
//!   Linux data plane then does the SNAT);
//! - a `snat` NAT per served pod IP on `GR_<egress node>` for primary-network egress IPs;
//! - address sets `egressip-served-pods` and `node-ips` per family (and the Egress Service
//!   served-pods set the 102 policy names, created empty when missing, never changed);
//! - a priority 103 QoS rule (`mark=42` on replies of connections into served pods) attached to
//!   every node switch, when the Northbound schema supports the `mark` action.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use kube_egress_engine::{Engine, Family, PodInfo, SubnetKind};

use crate::names;
use crate::nb::{AddressSet, LogicalRouterPolicy, Nat, Qos};
use crate::node::OvnNode;

/// An egress IP as assigned: the node hosting it and where on the node it lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignedIp {
    pub node: String,
    pub ip: IpAddr,
    pub kind: SubnetKind,
}

/// A pod served by an EgressIP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedPod {
    /// `namespace/name`.
    pub key: String,
    pub ips: Vec<IpAddr>,
}

/// One EgressIP object: its status items and the pods it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressAssignment {
    pub name: String,
    /// In status order.
    pub items: Vec<AssignedIp>,
    pub pods: Vec<ServedPod>,
}

/// Everything the mapping reads.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClusterState {
    /// ovnkube's `--cluster-subnets`.
    pub cluster_subnets: Vec<IpNet>,
    /// The join switch subnets (ovnkube's defaults: 100.64.0.0/16 and fd98::/64).
    pub join_subnets: Vec<IpNet>,
    pub nodes: Vec<OvnNode>,
    pub egress_ips: Vec<EgressAssignment>,
}

/// What the Northbound server supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// The QoS table's `action` accepts `mark` (OVN ≥ 23.06). Without it there is no reply-traffic
    /// QoS rule, and the desired state says so in its problems.
    pub qos_mark: bool,
}

/// A SNAT row and the gateway router it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterNat {
    pub router: String,
    pub nat: Nat,
}

/// The desired Northbound rows we own, plus what could not be mapped.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Desired {
    /// On `ovn_cluster_router`; unique by (priority, match).
    pub policies: Vec<LogicalRouterPolicy>,
    /// Unique by (router, logical IP).
    pub nats: Vec<RouterNat>,
    /// Owned address sets, unique by name.
    pub address_sets: Vec<AddressSet>,
    /// Address sets of other owners that our matches name: created empty when missing, never
    /// changed or deleted.
    pub referenced_address_sets: Vec<AddressSet>,
    /// One rule per family, attached to every switch in `qos_switches`.
    pub qos: Vec<Qos>,
    /// The node logical switches (named like the nodes).
    pub qos_switches: Vec<String>,
    /// Why some rows are missing, each naming the object: the plan cannot be carried out fully.
    pub problems: Vec<String>,
    /// Rows left out because the server cannot hold them (an older OVN): the plan is carried out
    /// as far as this OVN allows.
    pub warnings: Vec<String>,
}

impl Desired {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.policies.len() + self.nats.len() + self.address_sets.len() + self.qos.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn families(subnets: &[IpNet]) -> Vec<Family> {
    let set: BTreeSet<Family> = subnets.iter().map(|n| Family::of(&n.addr())).collect();
    set.into_iter().collect()
}

fn prefix(family: Family) -> &'static str {
    names::policy_family(family)
}

fn allow(match_: String, name: &str, family: &str) -> LogicalRouterPolicy {
    LogicalRouterPolicy {
        priority: names::NO_REROUTE_PRIORITY,
        match_,
        action: "allow".to_string(),
        external_ids: names::policy_ids(names::NO_REROUTE_PRIORITY, name, family),
        ..LogicalRouterPolicy::default()
    }
}

/// The desired rows for a cluster state.
pub fn desired(state: &ClusterState, options: &Options) -> Desired {
    let mut out = Desired::default();
    let cluster_families = families(&state.cluster_subnets);
    let nodes: BTreeMap<&str, &OvnNode> =
        state.nodes.iter().map(|n| (n.name.as_str(), n)).collect();
    for node in &state.nodes {
        out.problems.extend(node.problems.iter().cloned());
    }

    let mut served: BTreeMap<Family, BTreeSet<IpAddr>> = BTreeMap::new();
    let mut set_names: BTreeMap<Family, (String, String)> = BTreeMap::new();
    for &family in &cluster_families {
        let p = prefix(family);
        let subnets: Vec<&IpNet> = state
            .cluster_subnets
            .iter()
            .filter(|n| Family::of(&n.addr()) == family)
            .collect();
        for a in &subnets {
            for b in &subnets {
                out.policies.push(allow(
                    format!("{p}.src == {a} && {p}.dst == {b}"),
                    names::POD_TO_POD,
                    p,
                ));
            }
        }
        match state
            .join_subnets
            .iter()
            .find(|n| Family::of(&n.addr()) == family)
        {
            Some(join) => {
                for a in &subnets {
                    out.policies.push(allow(
                        format!("{p}.src == {a} && {p}.dst == {join}"),
                        names::POD_TO_JOIN,
                        p,
                    ));
                }
            }
            None => out.problems.push(format!(
                "no {p} join subnet: the pod→join-subnet allow policy for {p} is not written"
            )),
        }
        let (served_name, _) = names::egress_ip_address_set(names::SERVED_PODS_SET, family);
        let (service_name, service_ids) = names::egress_service_address_set(family);
        let (node_ips_name, node_ips_ids) =
            names::egress_ip_address_set(names::NODE_IPS_SET, family);
        let mut to_node = allow(
            format!(
                "({p}.src == ${served_name} || {p}.src == ${service_name}) && {p}.dst == ${node_ips_name}"
            ),
            names::POD_TO_NODE,
            p,
        );
        to_node.options.insert(
            "pkt_mark".to_string(),
            names::NODE_CONNECTION_MARK.to_string(),
        );
        out.policies.push(to_node);
        out.referenced_address_sets.push(AddressSet {
            name: service_name,
            external_ids: service_ids,
            ..AddressSet::default()
        });
        let node_ips: BTreeSet<String> = state
            .nodes
            .iter()
            .flat_map(|n| &n.host_ips)
            .filter(|ip| Family::of(ip) == family)
            .map(IpAddr::to_string)
            .collect();
        out.address_sets.push(AddressSet {
            name: node_ips_name,
            addresses: node_ips.into_iter().collect(),
            external_ids: node_ips_ids,
            ..AddressSet::default()
        });
        if options.qos_mark {
            out.qos.push(Qos {
                priority: names::QOS_PRIORITY,
                direction: "from-lport".to_string(),
                match_: format!("{p}.src == ${served_name} && ct.trk && ct.rpl"),
                action: [("mark".to_string(), i64::from(names::REPLY_TRAFFIC_MARK))].into(),
                external_ids: names::qos_ids(family),
                ..Qos::default()
            });
        }
        served.insert(family, BTreeSet::new());
        set_names.insert(family, (served_name, p.to_string()));
    }
    if !cluster_families.is_empty() {
        out.policies.push(allow(
            format!("pkt.mark == {}", names::REPLY_TRAFFIC_MARK),
            names::REPLY_TRAFFIC,
            "ip",
        ));
        if options.qos_mark {
            out.qos_switches = state.nodes.iter().map(|n| n.name.clone()).collect();
        } else {
            out.warnings.push(
                "the Northbound schema has no QoS action \"mark\" (OVN < 23.06): the priority 103 \
                 reply-traffic rule is not written"
                    .to_string(),
            );
        }
    }

    let mut policy_keys: BTreeSet<(i64, String)> = out
        .policies
        .iter()
        .map(|p| (p.priority, p.match_.clone()))
        .collect();
    let mut nat_keys: BTreeSet<(String, String)> = BTreeSet::new();
    for eip in &state.egress_ips {
        if eip.items.is_empty() {
            continue;
        }
        for pod in &eip.pods {
            let object_name = names::pod_object_name(&eip.name, &pod.key);
            for pod_ip in &pod.ips {
                let family = Family::of(pod_ip);
                let p = prefix(family);
                let items: Vec<&AssignedIp> = eip
                    .items
                    .iter()
                    .filter(|i| Family::of(&i.ip) == family)
                    .collect();
                if items.is_empty() {
                    continue;
                }
                if let Some(set) = served.get_mut(&family) {
                    set.insert(*pod_ip);
                }
                let mut nexthops = BTreeSet::new();
                for item in &items {
                    let Some(node) = nodes.get(item.node.as_str()) else {
                        out.problems.push(format!(
                            "EgressIP {}: egress IP {} is assigned to node {}, which is unknown",
                            eip.name, item.ip, item.node
                        ));
                        continue;
                    };
                    let (candidates, what) = match item.kind {
                        SubnetKind::Primary => (
                            &node.gateway_join_ips,
                            format!(
                                "gateway router join address (annotation {})",
                                crate::node::GATEWAY_ROUTER_JOIN_ANNOTATION
                            ),
                        ),
                        SubnetKind::Secondary => (
                            &node.management_ips,
                            format!(
                                "management port address (annotation {} or spec.podCIDRs)",
                                crate::node::NODE_SUBNETS_ANNOTATION
                            ),
                        ),
                    };
                    match candidates.iter().find(|ip| Family::of(ip) == family) {
                        Some(hop) => {
                            nexthops.insert(hop.to_string());
                        }
                        None => out.problems.push(format!(
                            "node {}: no {p} {what}; pods of EgressIP {} are not rerouted to it",
                            node.name, eip.name
                        )),
                    }
                    if item.kind == SubnetKind::Primary {
                        let router = names::gateway_router(&item.node);
                        let logical_ip = pod_ip.to_string();
                        if !nat_keys.insert((router.clone(), logical_ip.clone())) {
                            out.problems.push(format!(
                                "pod {}: a second SNAT for {logical_ip} on {router} (egress IP {}) is not written",
                                pod.key, item.ip
                            ));
                            continue;
                        }
                        out.nats.push(RouterNat {
                            router,
                            nat: Nat {
                                type_: "snat".to_string(),
                                external_ip: item.ip.to_string(),
                                logical_ip,
                                logical_port: Some(names::management_port(&item.node)),
                                options: [("stateless".to_string(), "false".to_string())].into(),
                                external_ids: names::nat_ids(&object_name, family),
                                ..Nat::default()
                            },
                        });
                    }
                }
                if nexthops.is_empty() {
                    continue;
                }
                let match_ = format!("{p}.src == {pod_ip}");
                if !policy_keys.insert((names::REROUTE_PRIORITY, match_.clone())) {
                    out.problems.push(format!(
                        "pod {}: IP {pod_ip} already has a reroute policy; EgressIP {} is not applied to it",
                        pod.key, eip.name
                    ));
                    continue;
                }
                out.policies.push(LogicalRouterPolicy {
                    priority: names::REROUTE_PRIORITY,
                    match_,
                    action: "reroute".to_string(),
                    nexthops: nexthops.into_iter().collect(),
                    external_ids: names::policy_ids(names::REROUTE_PRIORITY, &object_name, p),
                    ..LogicalRouterPolicy::default()
                });
            }
        }
    }
    for (family, ips) in served {
        let (name, _) = &set_names[&family];
        let (_, ids) = names::egress_ip_address_set(names::SERVED_PODS_SET, family);
        out.address_sets.push(AddressSet {
            name: name.clone(),
            addresses: ips.iter().map(IpAddr::to_string).collect(),
            external_ids: ids,
            ..AddressSet::default()
        });
    }
    out
}

/// The cluster state from an engine that has loaded the cluster: status items (with the subnet
/// kind from the egress nodes' plans) and served pods with their IPs.
pub fn cluster_state(
    engine: &Engine,
    pods: &[PodInfo],
    nodes: Vec<OvnNode>,
    cluster_subnets: Vec<IpNet>,
    join_subnets: Vec<IpNet>,
) -> ClusterState {
    let mut kinds: BTreeMap<(String, IpAddr), SubnetKind> = BTreeMap::new();
    for node in engine.node_names() {
        for hosted in engine.node_plan(&node).egress_ips {
            kinds.insert((node.clone(), hosted.ip), hosted.kind);
        }
    }
    let pods: BTreeMap<String, &PodInfo> = pods.iter().map(|p| (p.key(), p)).collect();
    let egress_ips = engine
        .egress_ip_names()
        .into_iter()
        .map(|name| {
            let items = engine
                .status(&name)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|item| {
                    let ip: IpAddr = item.egress_ip.parse().ok()?;
                    let kind = *kinds.get(&(item.node.clone(), ip))?;
                    Some(AssignedIp {
                        node: item.node,
                        ip,
                        kind,
                    })
                })
                .collect();
            let served = engine
                .served_pods(&name)
                .into_iter()
                .filter_map(|key| {
                    let pod = pods.get(&key)?;
                    Some(ServedPod {
                        key,
                        ips: pod.ips.clone(),
                    })
                })
                .collect();
            EgressAssignment {
                name,
                items,
                pods: served,
            }
        })
        .collect();
    ClusterState {
        cluster_subnets,
        join_subnets,
        nodes,
        egress_ips,
    }
}

/// ovnkube's default join subnets.
pub fn default_join_subnets() -> Vec<IpNet> {
    vec![
        "100.64.0.0/16".parse().expect("valid"),
        "fd98::/64".parse().expect("valid"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn node(name: &str, join: &str, mgmt: &str, host: &str) -> OvnNode {
        OvnNode {
            name: name.into(),
            gateway_join_ips: vec![ip(join)],
            management_ips: vec![ip(mgmt)],
            host_ips: vec![ip(host)],
            problems: vec![],
        }
    }

    /// Seed 001: EgressIP `egressip-prod` with 172.18.0.33 on ovn-worker and 172.18.0.44 on
    /// ovn-worker2, serving one pod 10.244.1.3.
    fn seed_001(kind: SubnetKind) -> ClusterState {
        ClusterState {
            cluster_subnets: vec!["10.244.0.0/16".parse().unwrap()],
            join_subnets: default_join_subnets(),
            nodes: vec![
                node(
                    "ovn-control-plane",
                    "100.64.0.2",
                    "10.244.0.2",
                    "172.18.0.4",
                ),
                node("ovn-worker", "100.64.0.3", "10.244.1.2", "172.18.0.2"),
                node("ovn-worker2", "100.64.0.4", "10.244.2.2", "172.18.0.3"),
            ],
            egress_ips: vec![EgressAssignment {
                name: "egressip-prod".into(),
                items: vec![
                    AssignedIp {
                        node: "ovn-worker".into(),
                        ip: ip("172.18.0.33"),
                        kind,
                    },
                    AssignedIp {
                        node: "ovn-worker2".into(),
                        ip: ip("172.18.0.44"),
                        kind,
                    },
                ],
                pods: vec![ServedPod {
                    key: "prod/web-1".into(),
                    ips: vec![ip("10.244.1.3")],
                }],
            }],
        }
    }

    fn lines(d: &Desired) -> Vec<String> {
        d.policies
            .iter()
            .map(|p| {
                let mut s = format!("{} {} {}", p.priority, p.match_, p.action);
                if !p.nexthops.is_empty() {
                    s.push_str(&format!(" {}", p.nexthops.join(", ")));
                }
                for (k, v) in &p.options {
                    s.push_str(&format!(" {k}={v}"));
                }
                s
            })
            .collect()
    }

    #[test]
    fn seed_001_primary_network() {
        let d = desired(&seed_001(SubnetKind::Primary), &Options { qos_mark: true });
        let served = names::egress_ip_address_set(names::SERVED_PODS_SET, Family::V4).0;
        let svc = names::egress_service_address_set(Family::V4).0;
        let node_ips = names::egress_ip_address_set(names::NODE_IPS_SET, Family::V4).0;
        assert_eq!(
            lines(&d),
            vec![
                "102 ip4.src == 10.244.0.0/16 && ip4.dst == 10.244.0.0/16 allow".to_string(),
                "102 ip4.src == 10.244.0.0/16 && ip4.dst == 100.64.0.0/16 allow".to_string(),
                format!(
                    "102 (ip4.src == ${served} || ip4.src == ${svc}) && ip4.dst == ${node_ips} allow pkt_mark=1008"
                ),
                "102 pkt.mark == 42 allow".to_string(),
                "100 ip4.src == 10.244.1.3 reroute 100.64.0.3, 100.64.0.4".to_string(),
            ]
        );
        let nats: Vec<(String, String, String, Option<String>)> = d
            .nats
            .iter()
            .map(|n| {
                (
                    n.router.clone(),
                    n.nat.external_ip.clone(),
                    n.nat.logical_ip.clone(),
                    n.nat.logical_port.clone(),
                )
            })
            .collect();
        assert_eq!(
            nats,
            vec![
                (
                    "GR_ovn-worker".into(),
                    "172.18.0.33".into(),
                    "10.244.1.3".into(),
                    Some("k8s-ovn-worker".into())
                ),
                (
                    "GR_ovn-worker2".into(),
                    "172.18.0.44".into(),
                    "10.244.1.3".into(),
                    Some("k8s-ovn-worker2".into())
                ),
            ]
        );
        assert_eq!(
            d.nats[0].nat.external_ids[names::ID_KEY],
            "default-network-controller:EgressIP:egressip-prod_prod/web-1:ip4"
        );
        let reroute = d.policies.last().unwrap();
        assert_eq!(
            reroute.external_ids[names::NAME_KEY],
            "egressip-prod_prod/web-1"
        );
        let sets: BTreeMap<&str, &Vec<String>> = d
            .address_sets
            .iter()
            .map(|s| (s.name.as_str(), &s.addresses))
            .collect();
        assert_eq!(sets[served.as_str()], &vec!["10.244.1.3".to_string()]);
        assert_eq!(
            sets[node_ips.as_str()],
            &vec![
                "172.18.0.2".to_string(),
                "172.18.0.3".to_string(),
                "172.18.0.4".to_string()
            ]
        );
        assert_eq!(d.referenced_address_sets[0].name, svc);
        assert_eq!(d.qos.len(), 1);
        assert_eq!(
            d.qos[0].match_,
            format!("ip4.src == ${served} && ct.trk && ct.rpl")
        );
        assert_eq!(d.qos_switches.len(), 3);
        assert!(d.problems.is_empty(), "{:?}", d.problems);
    }

    #[test]
    fn seed_001_secondary_network_reroutes_to_management_ports_without_nat() {
        let d = desired(
            &seed_001(SubnetKind::Secondary),
            &Options { qos_mark: true },
        );
        assert_eq!(
            lines(&d).last().unwrap(),
            "100 ip4.src == 10.244.1.3 reroute 10.244.1.2, 10.244.2.2"
        );
        assert!(d.nats.is_empty());
    }

    #[test]
    fn without_qos_mark_support_the_rule_is_reported_missing() {
        let d = desired(&seed_001(SubnetKind::Primary), &Options { qos_mark: false });
        assert!(d.qos.is_empty() && d.qos_switches.is_empty());
        assert!(d.problems.is_empty());
        assert_eq!(d.warnings.len(), 1);
        assert!(d.warnings[0].contains("QoS action \"mark\""));
    }

    #[test]
    fn failover_moves_nat_and_nexthop() {
        let mut state = seed_001(SubnetKind::Primary);
        state.egress_ips[0].items[0].node = "ovn-control-plane".into();
        let d = desired(&state, &Options { qos_mark: true });
        assert_eq!(
            lines(&d).last().unwrap(),
            "100 ip4.src == 10.244.1.3 reroute 100.64.0.2, 100.64.0.4"
        );
        assert_eq!(d.nats[0].router, "GR_ovn-control-plane");
        assert_eq!(
            d.nats[0].nat.logical_port.as_deref(),
            Some("k8s-ovn-control-plane")
        );
    }

    #[test]
    fn missing_join_address_is_a_problem_naming_the_node() {
        let mut state = seed_001(SubnetKind::Primary);
        state.nodes[2].gateway_join_ips.clear();
        let d = desired(&state, &Options { qos_mark: true });
        assert_eq!(
            lines(&d).last().unwrap(),
            "100 ip4.src == 10.244.1.3 reroute 100.64.0.3"
        );
        assert_eq!(d.problems.len(), 1);
        assert!(d.problems[0].starts_with("node ovn-worker2: no ip4 gateway router join address"));
    }

    #[test]
    fn dual_stack_pods_get_one_row_per_family_and_unassigned_objects_nothing() {
        let mut state = seed_001(SubnetKind::Primary);
        state
            .cluster_subnets
            .push("fd00:10:244::/48".parse().unwrap());
        state.nodes[1].gateway_join_ips.push(ip("fd98::3"));
        state.egress_ips[0].items.push(AssignedIp {
            node: "ovn-worker".into(),
            ip: ip("2001:db8::33"),
            kind: SubnetKind::Primary,
        });
        state.egress_ips[0].pods[0].ips.push(ip("fd00:10:244:1::3"));
        state.egress_ips.push(EgressAssignment {
            name: "unassigned".into(),
            items: vec![],
            pods: vec![ServedPod {
                key: "x/y".into(),
                ips: vec![ip("10.244.1.9")],
            }],
        });
        let d = desired(&state, &Options { qos_mark: false });
        let text = lines(&d);
        assert!(text.contains(&"100 ip6.src == fd00:10:244:1::3 reroute fd98::3".to_string()));
        assert!(text.contains(
            &"102 ip6.src == fd00:10:244::/48 && ip6.dst == fd98::/64 allow".to_string()
        ));
        assert!(!text.iter().any(|l| l.contains("10.244.1.9")));
        assert_eq!(d.nats.len(), 3);
        let v6 = d
            .nats
            .iter()
            .find(|n| n.nat.external_ip == "2001:db8::33")
            .unwrap();
        assert_eq!(v6.nat.external_ids[names::IP_FAMILY_KEY], "ip6");
        assert_eq!(d.address_sets.len(), 4);
    }
}
