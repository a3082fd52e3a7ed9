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

use crate::netlink::LINK_TABLE_BASE;
use crate::nft::NftState;

/// Priority of every ip rule we own.
pub const RULE_PRIORITY: u32 = 6000;
/// Name of the VXLAN device that carries steered traffic to egress nodes.
pub const TUNNEL_DEVICE: &str = "kegress0";
/// VXLAN network identifier of the tunnel.
pub const TUNNEL_VNI: u32 = 19269;
/// UDP port of the tunnel (not 4789 or 8472, which CNIs use).
pub const TUNNEL_PORT: u16 = 4790;
/// An address for the tunnel device, never used for traffic: the kernel's reverse-path filter
/// (`rp_filter` 1 or 2) drops every packet arriving on a device without an IPv4 address, and
/// steered packets arrive on the tunnel. Link-local and /32, so no route or link selection sees it.
pub const TUNNEL_ADDRESS: std::net::Ipv4Addr = std::net::Ipv4Addr::new(169, 254, 101, 1);

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

/// The kernel objects the plan needs. `link_for` names the link (ifindex, name) whose network
/// holds an egress IP (longest-prefix match over up links, see `netlink::select_link`).
pub fn desired(
    plan: &NodePlan,
    link_for: impl Fn(&IpAddr) -> Option<(u32, String)>,
) -> (Desired, Vec<Problem>) {
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
        match link_for(&hosted.ip) {
            Some((index, name)) => {
                d.addresses.insert(hosted.ip, (index, name.clone()));
                d.nft.counted.insert(hosted.ip);
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
            d.nft.marks.insert(snat.pod_ip, mark);
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
            // A secondary link's mark, set above, wins (as the later rule did in earlier
            // layouts): the pod leaves by its egress IP here.
            d.nft.marks.entry(entry.pod_ip).or_insert(entry.mark);
            d.nft.steering = true;
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

    /// eth0 holds 192.168.64.0/18 (index 2), eth1 10.10.0.0/24 (index 3).
    fn link_for(ip: &IpAddr) -> Option<(u32, String)> {
        if "192.168.64.0/18".parse::<IpNet>().unwrap().contains(ip) {
            Some((2, "eth0".into()))
        } else if "10.10.0.0/24".parse::<IpNet>().unwrap().contains(ip) {
            Some((3, "eth1".into()))
        } else {
            None
        }
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
        let (d, problems) = desired(&plan, link_for);
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
        assert_eq!(d.nft.marks.get(&ip("10.128.2.11")), Some(&1003));
        assert_eq!(d.nft.marks.len(), 1);
        assert!(!d.nft.steering);
        assert_eq!(
            d.nft.counted,
            [ip("10.10.0.100"), ip("192.168.126.10")].into()
        );
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
        let (d, problems) = desired(&plan, link_for);
        assert!(problems.is_empty());
        assert_eq!(d.nft.marks.len(), 1);
        assert!(d.nft.steering);
        assert_eq!(
            d.steering_tables.get(&(50000, Family::V4)),
            Some(&vec![ip("192.168.126.2"), ip("192.168.126.4")])
        );
        assert_eq!(d.tunnel_peers.len(), 2);
        assert!(d.addresses.is_empty() && d.nft.snat.is_empty());
    }

    #[test]
    fn a_secondary_link_mark_wins_over_steering() {
        let plan = NodePlan {
            egress_ips: vec![hosted("10.10.0.100", SubnetKind::Secondary, "10.10.0.0/24")],
            snat: vec![SnatEntry {
                pod_ip: ip("10.128.2.11"),
                egress_ip: ip("10.10.0.100"),
            }],
            steering: vec![SteeringEntry {
                pod_ip: ip("10.128.2.11"),
                mark: 50000,
            }],
            steering_routes: vec![SteeringRoute {
                mark: 50000,
                family: Family::V4,
                egress_ip: "prod".into(),
                next_hops: vec![EgressHop {
                    node: "node3".into(),
                    address: ip("192.168.126.4"),
                    egress_ip: ip("192.168.126.102"),
                }],
            }],
            ..Default::default()
        };
        let (d, problems) = desired(&plan, link_for);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(d.nft.marks.get(&ip("10.128.2.11")), Some(&1003));
        assert!(d.nft.steering);
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
