//! From a node plan and the node's links to the kernel objects the data plane wants. Pure.
//!
//! What the agent owns on a node (and nothing else):
//! - nft table `inet kube_egress` (see [`crate::nft`]);
//! - ip rules at priority [`RULE_PRIORITY`] (6000): `fwmark M lookup T`;
//! - route tables `1000 + ifindex` (a copy of the main-table routes of a secondary link, seed 000)
//!   and `M` for each EgressIP mark M in 50000..54999 (default route over the tunnel, one next hop
//!   per egress node);
//! - the VXLAN device [`TUNNEL_DEVICE`], its neighbour and FDB entries;
//! - the egress IP addresses it placed (tagged, see `netlink`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use kube_egress_engine::{Family, NodePlan, SubnetKind};

use crate::nft::NftState;

/// Priority of every ip rule we own.
pub const RULE_PRIORITY: u32 = 6000;
/// Route table (and packet mark) of a secondary link: `LINK_TABLE_BASE + ifindex`, as OVN-Kubernetes.
pub const LINK_TABLE_BASE: u32 = 1000;
/// Name of the VXLAN device that carries steered traffic to egress nodes.
pub const TUNNEL_DEVICE: &str = "kegress0";
/// VXLAN network identifier of the tunnel.
pub const TUNNEL_VNI: u32 = 19269;
/// UDP port of the tunnel (not 4789 or 8472, which CNIs use).
pub const TUNNEL_PORT: u16 = 4790;

/// A link of the node with its addresses, as read from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkFacts {
    pub index: u32,
    pub name: String,
    pub up: bool,
    /// Addresses usable to find the link of an egress IP: no /32 or /128, not secondary,
    /// deprecated or link-local (the caller filters).
    pub networks: Vec<IpNet>,
}

/// The link whose network holds `ip`, by longest-prefix match over up links.
pub fn link_for(links: &[LinkFacts], ip: &IpAddr) -> Option<(u32, String)> {
    links
        .iter()
        .filter(|l| l.up)
        .flat_map(|l| l.networks.iter().map(move |n| (n, l)))
        .filter(|(n, _)| n.contains(ip))
        .max_by_key(|(n, l)| (n.prefix_len(), std::cmp::Reverse(l.index)))
        .map(|(_, l)| (l.index, l.name.clone()))
}

/// One ip rule: `fwmark mark lookup table priority 6000`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rule {
    pub family: Family,
    pub mark: u32,
    pub table: u32,
}

/// Everything the data plane wants on the node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// Egress IP → (ifindex, link name) it is placed on.
    pub addresses: BTreeMap<IpAddr, (u32, String)>,
    pub nft: NftState,
    pub rules: BTreeSet<Rule>,
    /// Secondary links whose main-table routes are mirrored into `1000 + ifindex`, per family.
    pub link_tables: BTreeMap<(u32, Family), String>,
    /// Steering tables: (mark, family) → tunnel next hops (egress nodes' tunnel addresses).
    pub steering_tables: BTreeMap<(u32, Family), Vec<IpAddr>>,
    /// Tunnel endpoints of the egress nodes we steer to.
    pub tunnel_peers: BTreeSet<IpAddr>,
}

/// A part of the plan the node cannot carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub message: String,
}

/// The kernel objects the plan needs, given the node's links.
pub fn desired(plan: &NodePlan, links: &[LinkFacts]) -> (Desired, Vec<Problem>) {
    let mut d = Desired::default();
    let mut problems = Vec::new();

    d.nft
        .excluded
        .extend(plan.exclusions.pod_cidrs.iter().copied());
    d.nft
        .excluded
        .extend(plan.exclusions.service_cidrs.iter().copied());
    d.nft
        .excluded
        .extend(plan.exclusions.node_ips.iter().map(|ip| IpNet::from(*ip)));

    // Egress IPs hosted here: the address, SNAT on its link, secondary-link routing.
    let mut egress_links: BTreeMap<IpAddr, (u32, String, SubnetKind)> = BTreeMap::new();
    for hosted in &plan.egress_ips {
        match link_for(links, &hosted.ip) {
            Some((index, name)) => {
                d.addresses.insert(hosted.ip, (index, name.clone()));
                egress_links.insert(hosted.ip, (index, name, hosted.kind));
            }
            None => problems.push(Problem {
                message: format!(
                    "egress IP {} of EgressIP {}: no link that is up has an address in {}",
                    hosted.ip, hosted.egress_ip, hosted.subnet
                ),
            }),
        }
    }
    for snat in &plan.snat {
        let Some((index, link, kind)) = egress_links.get(&snat.egress_ip) else {
            continue;
        };
        d.nft
            .snat
            .insert((snat.pod_ip, link.clone()), snat.egress_ip);
        if *kind == SubnetKind::Secondary {
            let family = Family::of(&snat.egress_ip);
            let mark = LINK_TABLE_BASE + index;
            d.nft.link_marks.insert(snat.pod_ip, mark);
            d.rules.insert(Rule {
                family,
                mark,
                table: mark,
            });
            d.link_tables.insert((*index, family), link.clone());
        }
    }

    // Local pods served from other nodes: mark, rule, table over the tunnel.
    let routable: BTreeSet<(u32, Family)> = plan
        .steering_routes
        .iter()
        .filter(|r| !r.next_hops.is_empty())
        .map(|r| (r.mark, r.family))
        .collect();
    for entry in &plan.steering {
        if routable.contains(&(entry.mark, Family::of(&entry.pod_ip))) {
            d.nft.steer.insert(entry.pod_ip, entry.mark);
        }
    }
    for route in &plan.steering_routes {
        if route.next_hops.is_empty() {
            continue;
        }
        let hops: Vec<IpAddr> = route.next_hops.iter().map(|h| h.address).collect();
        d.tunnel_peers.extend(hops.iter().copied());
        d.steering_tables.insert((route.mark, route.family), hops);
        d.rules.insert(Rule {
            family: route.family,
            mark: route.mark,
            table: route.mark,
        });
    }
    (d, problems)
}

/// The MAC address of a node's tunnel device, derived from its tunnel address so that no exchange
/// is needed: `0a:58` followed by the IPv4 address (as OVN-Kubernetes derives MACs from IPs), or
/// `0a:58` followed by the last four bytes of an IPv6 address.
pub fn tunnel_mac(address: &IpAddr) -> [u8; 6] {
    let b = match address {
        IpAddr::V4(a) => a.octets(),
        IpAddr::V6(a) => {
            let o = a.octets();
            [o[12], o[13], o[14], o[15]]
        }
    };
    [0x0a, 0x58, b[0], b[1], b[2], b[3]]
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube_egress_engine::{
        EgressHop, Exclusions, HostedIp, SnatEntry, SteeringEntry, SteeringRoute,
    };
    use std::sync::Arc;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn links() -> Vec<LinkFacts> {
        vec![
            LinkFacts {
                index: 2,
                name: "eth0".into(),
                up: true,
                networks: vec!["192.168.64.0/18".parse().unwrap()],
            },
            LinkFacts {
                index: 3,
                name: "eth1".into(),
                up: true,
                networks: vec!["10.10.0.0/24".parse().unwrap()],
            },
            LinkFacts {
                index: 4,
                name: "eth2".into(),
                up: false,
                networks: vec!["10.20.0.0/24".parse().unwrap()],
            },
            LinkFacts {
                index: 5,
                name: "eth3".into(),
                up: true,
                networks: vec!["10.10.0.0/16".parse().unwrap()],
            },
        ]
    }

    #[test]
    fn longest_prefix_over_up_links() {
        let l = links();
        assert_eq!(link_for(&l, &ip("10.10.0.9")), Some((3, "eth1".into())));
        assert_eq!(link_for(&l, &ip("10.10.7.9")), Some((5, "eth3".into())));
        assert_eq!(link_for(&l, &ip("10.20.0.9")), None);
        assert_eq!(
            link_for(&l, &ip("192.168.126.10")),
            Some((2, "eth0".into()))
        );
    }

    fn hosted(ip_: &str, kind: SubnetKind, subnet: &str) -> HostedIp {
        HostedIp {
            ip: ip(ip_),
            egress_ip: "e".into(),
            mark: Some(50000),
            kind,
            subnet: subnet.parse().unwrap(),
        }
    }

    #[test]
    fn egress_node_places_addresses_snat_and_secondary_routing() {
        let plan = NodePlan {
            egress_ips: vec![
                hosted("10.10.0.100", SubnetKind::Secondary, "10.10.0.0/24"),
                hosted("192.168.126.10", SubnetKind::Primary, "192.168.64.0/18"),
                hosted("10.20.0.100", SubnetKind::Secondary, "10.20.0.0/24"),
            ],
            snat: vec![
                SnatEntry {
                    pod_ip: ip("10.128.2.10"),
                    egress_ip: ip("192.168.126.10"),
                },
                SnatEntry {
                    pod_ip: ip("10.128.2.11"),
                    egress_ip: ip("10.10.0.100"),
                },
            ],
            exclusions: Arc::new(Exclusions {
                pod_cidrs: vec!["10.128.0.0/14".parse().unwrap()],
                service_cidrs: vec![],
                node_ips: vec![ip("192.168.126.2")],
            }),
            ..Default::default()
        };
        let (d, problems) = desired(&plan, &links());
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].message.contains("10.20.0.100"));
        assert_eq!(d.addresses.len(), 2);
        assert_eq!(
            d.nft.snat.get(&(ip("10.128.2.10"), "eth0".to_string())),
            Some(&ip("192.168.126.10"))
        );
        assert_eq!(
            d.nft.snat.get(&(ip("10.128.2.11"), "eth1".to_string())),
            Some(&ip("10.10.0.100"))
        );
        assert_eq!(d.nft.link_marks.get(&ip("10.128.2.11")), Some(&1003));
        assert_eq!(d.nft.link_marks.len(), 1);
        assert_eq!(
            d.rules.iter().copied().collect::<Vec<_>>(),
            vec![Rule {
                family: Family::V4,
                mark: 1003,
                table: 1003
            }]
        );
        assert_eq!(
            d.link_tables.get(&(3, Family::V4)).map(String::as_str),
            Some("eth1")
        );
        assert!(
            d.nft
                .excluded
                .contains(&"192.168.126.2/32".parse().unwrap())
        );
    }

    #[test]
    fn pod_node_steers_to_the_egress_nodes() {
        let hop = |n: &str, a: &str, e: &str| EgressHop {
            node: n.into(),
            address: ip(a),
            egress_ip: ip(e),
        };
        let plan = NodePlan {
            steering: vec![
                SteeringEntry {
                    pod_ip: ip("10.128.2.10"),
                    mark: 50000,
                },
                SteeringEntry {
                    pod_ip: ip("10.128.2.12"),
                    mark: 50001,
                },
            ],
            steering_routes: vec![
                SteeringRoute {
                    mark: 50000,
                    family: Family::V4,
                    egress_ip: "prod".into(),
                    next_hops: vec![
                        hop("node1", "192.168.126.2", "192.168.126.10"),
                        hop("node3", "192.168.126.4", "192.168.126.102"),
                    ],
                },
                SteeringRoute {
                    mark: 50001,
                    family: Family::V4,
                    egress_ip: "nowhere".into(),
                    next_hops: vec![],
                },
            ],
            ..Default::default()
        };
        let (d, problems) = desired(&plan, &links());
        assert!(problems.is_empty());
        assert_eq!(d.nft.steer.len(), 1);
        assert_eq!(
            d.steering_tables.get(&(50000, Family::V4)),
            Some(&vec![ip("192.168.126.2"), ip("192.168.126.4")])
        );
        assert_eq!(d.tunnel_peers.len(), 2);
        assert!(d.addresses.is_empty() && d.nft.snat.is_empty());
    }

    #[test]
    fn tunnel_macs_come_from_addresses() {
        assert_eq!(
            tunnel_mac(&ip("192.168.126.2")),
            [0x0a, 0x58, 192, 168, 126, 2]
        );
        assert_eq!(tunnel_mac(&ip("fd00::1:2")), [0x0a, 0x58, 0, 1, 0, 2]);
    }
}
