//! Which node may host which IP: host networks of a node and an index of eligible nodes by network.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::model::{Family, NodeInfo};
use crate::plan::SubnetKind;

/// The networks of a node that can hold egress IPs, in network-address form.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct HostNetworks {
    pub primary: Vec<IpNet>,
    pub secondary: Vec<IpNet>,
}

impl HostNetworks {
    /// Primary networks from `node-primary-ifaddr`; secondary networks are the `host-cidrs` that are
    /// not primary entries and whose address is global unicast (as OVN-Kubernetes).
    pub fn of(node: &NodeInfo) -> HostNetworks {
        let mut primary: Vec<IpNet> = node.primary.iter().map(IpNet::trunc).collect();
        primary.sort();
        primary.dedup();
        let mut secondary: Vec<IpNet> = node
            .host_cidrs
            .iter()
            .filter(|c| !node.primary.contains(c))
            .filter(|c| is_global_unicast(&c.addr()))
            .map(IpNet::trunc)
            .filter(|c| !primary.contains(c))
            .collect();
        secondary.sort();
        secondary.dedup();
        HostNetworks { primary, secondary }
    }

    /// How this node would host `ip`: in its primary network first, else the longest secondary
    /// network holding it.
    pub fn host(&self, ip: &IpAddr) -> Option<(SubnetKind, IpNet)> {
        if let Some(net) = self.primary.iter().find(|n| n.contains(ip)) {
            return Some((SubnetKind::Primary, *net));
        }
        self.secondary
            .iter()
            .filter(|n| n.contains(ip))
            .max_by_key(|n| n.prefix_len())
            .map(|n| (SubnetKind::Secondary, *n))
    }

    pub fn primary_contains(&self, ip: &IpAddr) -> bool {
        self.primary.iter().any(|n| n.contains(ip))
    }

    fn all(&self) -> impl Iterator<Item = (SubnetKind, &IpNet)> {
        self.primary
            .iter()
            .map(|n| (SubnetKind::Primary, n))
            .chain(self.secondary.iter().map(|n| (SubnetKind::Secondary, n)))
    }
}

fn is_global_unicast(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            !(a.is_loopback()
                || a.is_link_local()
                || a.is_multicast()
                || a.is_unspecified()
                || a.is_broadcast())
        }
        IpAddr::V6(a) => {
            !(a.is_loopback()
                || a.is_multicast()
                || a.is_unspecified()
                || (a.segments()[0] & 0xffc0) == 0xfe80)
        }
    }
}

/// Eligible nodes sorted by load, per network.
#[derive(Debug, Default)]
struct NetworkMembers {
    primary: BTreeSet<(usize, String)>,
    secondary: BTreeSet<(usize, String)>,
}

/// Eligible nodes indexed by the networks they can host IPs in, each ordered by (load, name), so the
/// least-loaded candidate for an IP is found with one lookup per prefix length in use.
#[derive(Debug, Default)]
pub(crate) struct NetworkIndex {
    networks: HashMap<IpNet, NetworkMembers>,
    prefix_lens: BTreeMap<(Family, u8), usize>,
}

impl NetworkIndex {
    pub fn insert(&mut self, node: &str, load: usize, nets: &HostNetworks) {
        for (kind, net) in nets.all() {
            let members = self.networks.entry(*net).or_insert_with(|| {
                *self
                    .prefix_lens
                    .entry((Family::of(&net.addr()), net.prefix_len()))
                    .or_default() += 1;
                NetworkMembers::default()
            });
            let set = match kind {
                SubnetKind::Primary => &mut members.primary,
                SubnetKind::Secondary => &mut members.secondary,
            };
            set.insert((load, node.to_string()));
        }
    }

    pub fn remove(&mut self, node: &str, load: usize, nets: &HostNetworks) {
        for (kind, net) in nets.all() {
            let Some(members) = self.networks.get_mut(net) else {
                continue;
            };
            let set = match kind {
                SubnetKind::Primary => &mut members.primary,
                SubnetKind::Secondary => &mut members.secondary,
            };
            set.remove(&(load, node.to_string()));
            if members.primary.is_empty() && members.secondary.is_empty() {
                self.networks.remove(net);
                let key = (Family::of(&net.addr()), net.prefix_len());
                if let Some(count) = self.prefix_lens.get_mut(&key) {
                    *count -= 1;
                    if *count == 0 {
                        self.prefix_lens.remove(&key);
                    }
                }
            }
        }
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.networks.is_empty()
    }

    fn containing<'a>(&'a self, ip: &'a IpAddr) -> impl Iterator<Item = &'a NetworkMembers> + 'a {
        let family = Family::of(ip);
        self.prefix_lens
            .keys()
            .filter(move |(f, _)| *f == family)
            .filter_map(move |(_, len)| {
                let net = IpNet::new(*ip, *len).ok()?.trunc();
                self.networks.get(&net)
            })
    }

    /// The least-loaded eligible node (ties: name) that can host `ip` and passes `usable`. As in
    /// OVN-Kubernetes, when some eligible node holds the IP in a secondary network (and not in its
    /// primary one), only such nodes are candidates. `primary_contains(node)` tells whether the
    /// node's primary network holds the IP.
    pub fn pick(
        &self,
        ip: &IpAddr,
        usable: impl Fn(&str) -> bool,
        primary_contains: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let via_secondary = self
            .containing(ip)
            .any(|m| m.secondary.iter().any(|(_, n)| !primary_contains(n)));
        let mut best: Option<&(usize, String)> = None;
        for members in self.containing(ip) {
            let found = if via_secondary {
                members
                    .secondary
                    .iter()
                    .find(|(_, n)| !primary_contains(n) && usable(n))
            } else {
                members.primary.iter().find(|(_, n)| usable(n))
            };
            if let Some(candidate) = found
                && best.is_none_or(|b| candidate < b)
            {
                best = Some(candidate);
            }
        }
        best.map(|(_, n)| n.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(primary: &[&str], host_cidrs: &[&str]) -> NodeInfo {
        NodeInfo {
            name: "n".into(),
            primary: primary.iter().map(|s| s.parse().unwrap()).collect(),
            host_cidrs: host_cidrs.iter().map(|s| s.parse().unwrap()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn primary_wins_then_longest_secondary() {
        let nets = HostNetworks::of(&node(
            &["192.168.126.5/18"],
            &[
                "192.168.126.5/18",
                "10.10.0.7/16",
                "10.10.10.7/24",
                "169.254.0.2/16",
                "fd00::5/64",
            ],
        ));
        assert_eq!(
            nets.primary,
            vec!["192.168.64.0/18".parse::<IpNet>().unwrap()]
        );
        assert_eq!(
            nets.secondary,
            ["10.10.0.0/16", "10.10.10.0/24", "fd00::/64"]
                .iter()
                .map(|s| s.parse::<IpNet>().unwrap())
                .collect::<Vec<_>>()
        );
        let host = |s: &str| nets.host(&s.parse().unwrap());
        assert_eq!(
            host("192.168.126.10"),
            Some((SubnetKind::Primary, "192.168.64.0/18".parse().unwrap()))
        );
        assert_eq!(
            host("10.10.10.100"),
            Some((SubnetKind::Secondary, "10.10.10.0/24".parse().unwrap()))
        );
        assert_eq!(
            host("10.10.20.1"),
            Some((SubnetKind::Secondary, "10.10.0.0/16".parse().unwrap()))
        );
        assert_eq!(
            host("fd00::99"),
            Some((SubnetKind::Secondary, "fd00::/64".parse().unwrap()))
        );
        assert_eq!(host("169.254.1.1"), None);
        assert_eq!(host("203.0.113.1"), None);
    }

    #[test]
    fn index_picks_least_loaded_then_name() {
        let mut idx = NetworkIndex::default();
        let a = HostNetworks::of(&node(&["10.0.0.1/24"], &[]));
        idx.insert("b", 1, &a);
        idx.insert("c", 0, &a);
        idx.insert("a", 1, &a);
        let ip: IpAddr = "10.0.0.50".parse().unwrap();
        assert_eq!(idx.pick(&ip, |_| true, |_| true).as_deref(), Some("c"));
        assert_eq!(idx.pick(&ip, |n| n != "c", |_| true).as_deref(), Some("a"));
        idx.remove("c", 0, &a);
        idx.insert("c", 2, &a);
        assert_eq!(idx.pick(&ip, |_| true, |_| true).as_deref(), Some("a"));
        assert_eq!(
            idx.pick(&"10.0.1.1".parse().unwrap(), |_| true, |_| true),
            None
        );
        idx.remove("a", 1, &a);
        idx.remove("b", 1, &a);
        idx.remove("c", 2, &a);
        assert!(idx.is_empty());
    }
}
