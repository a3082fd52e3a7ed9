//! What a testbed is made of: networks, nodes and pods, the builder that collects them, the
//! ready-made lab topology, and the checks that reject an inconsistent topology before anything
//! is created.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::error::{Error, Result};

/// The primary (host) network: a bridge in its own "switch" namespace, every node attached by a
/// veth, and the router. `router` is the router's address with the network's prefix length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrimaryNetwork {
    pub router: Ipv4Net,
}

/// The external network behind the router, with one web server that logs client addresses.
/// `router` is the router's address there, with the prefix length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalNetwork {
    pub router: Ipv4Net,
    pub server: Ipv4Addr,
}

/// A secondary host network (the seed 000 case): a bridge namespace joining the nodes that have
/// a link on it and a gateway router; behind the gateway (`far_gateway`'s network) sits a web
/// server reachable only through that gateway. Every attached node gets a main-table route to
/// the far network via `gateway` on its secondary link: the "gateway route" a per-link routing
/// table must copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecondaryNetwork {
    /// Short name (1..=12 of `a-z0-9-`), used in namespace names.
    pub name: String,
    /// The gateway's address on the secondary network, with the prefix length.
    pub gateway: Ipv4Net,
    /// The gateway's address on the far network, with the prefix length.
    pub far_gateway: Ipv4Net,
    /// The web server on the far network.
    pub server: Ipv4Addr,
}

impl SecondaryNetwork {
    pub fn new(
        name: impl Into<String>,
        gateway: Ipv4Net,
        far_gateway: Ipv4Net,
        server: Ipv4Addr,
    ) -> Self {
        SecondaryNetwork {
            name: name.into(),
            gateway,
            far_gateway,
            server,
        }
    }
}

/// A node: a namespace with a link on the primary network (`eth0`), optionally links on
/// secondary networks (`eth1`, `eth2`, ... in the order given), and one veth per pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSpec {
    /// Short name (1..=12 of `a-z0-9-`): the namespace suffix and the switch port name.
    pub name: String,
    /// Its address on the primary network (the prefix length is the network's).
    pub ip: Ipv4Addr,
    /// The node's pod CIDR (inside the cluster CIDR); its first address is the pods' gateway.
    pub pod_cidr: Ipv4Net,
    /// (secondary network name, address on it).
    pub secondary: Vec<(String, Ipv4Addr)>,
}

impl NodeSpec {
    pub fn new(name: impl Into<String>, ip: Ipv4Addr, pod_cidr: Ipv4Net) -> Self {
        NodeSpec {
            name: name.into(),
            ip,
            pod_cidr,
            secondary: Vec::new(),
        }
    }

    /// Attaches the node to secondary network `network` with address `ip`.
    pub fn secondary(mut self, network: impl Into<String>, ip: Ipv4Addr) -> Self {
        self.secondary.push((network.into(), ip));
        self
    }
}

/// A pod: a namespace with one veth (`eth0`) to its node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodSpec {
    /// Short name (1..=12 of `a-z0-9-`), unique in the testbed.
    pub name: String,
    /// The Kubernetes namespace the pod stands for (only carried along, for the lab).
    pub namespace: String,
    pub node: String,
    /// Its address; `None` takes the next free one from the node's pod CIDR, from `.10` on.
    pub ip: Option<Ipv4Addr>,
}

impl PodSpec {
    /// A pod in Kubernetes namespace `default` with an automatic address.
    pub fn new(name: impl Into<String>, node: impl Into<String>) -> Self {
        PodSpec {
            name: name.into(),
            namespace: "default".into(),
            node: node.into(),
            ip: None,
        }
    }

    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    pub fn ip(mut self, ip: Ipv4Addr) -> Self {
        self.ip = Some(ip);
        self
    }
}

/// Addresses of the ready-made lab topology ([`TestbedBuilder::lab`]).
pub mod lab {
    use std::net::Ipv4Addr;

    use ipnet::Ipv4Net;

    /// The router on the primary network 192.168.64.0/18 — the seed's "192.168.126.0/18".
    pub const PRIMARY_ROUTER: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(192, 168, 126, 1), 18);
    /// The router on the external network.
    pub const EXTERNAL_ROUTER: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(203, 0, 113, 1), 24);
    /// The external web server.
    pub const EXTERNAL_SERVER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
    /// Name of the secondary network.
    pub const SECONDARY: &str = "sec";
    /// The secondary network's gateway.
    pub const SECONDARY_GATEWAY: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(10, 10, 0, 1), 24);
    /// The gateway's address on the network behind it.
    pub const FAR_GATEWAY: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(198, 51, 100, 1), 24);
    /// The web server behind the secondary gateway.
    pub const FAR_SERVER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
    /// OVN-Kubernetes' default cluster network.
    pub const CLUSTER_CIDR: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(10, 128, 0, 0), 14);
    /// The egress IPs of the seed's `egressips-prod` (on the primary network, hosted by no one
    /// in the testbed itself).
    pub const SEED_EGRESS_IPS: [Ipv4Addr; 2] = [
        Ipv4Addr::new(192, 168, 126, 10),
        Ipv4Addr::new(192, 168, 126, 102),
    ];
    /// (name, primary address, pod CIDR, secondary address).
    pub const NODES: [(&str, Ipv4Addr, Ipv4Net, Option<Ipv4Addr>); 3] = [
        (
            "node1",
            Ipv4Addr::new(192, 168, 126, 2),
            Ipv4Net::new_assert(Ipv4Addr::new(10, 128, 0, 0), 23),
            Some(Ipv4Addr::new(10, 10, 0, 2)),
        ),
        (
            "node2",
            Ipv4Addr::new(192, 168, 126, 3),
            Ipv4Net::new_assert(Ipv4Addr::new(10, 128, 2, 0), 23),
            None,
        ),
        (
            "node3",
            Ipv4Addr::new(192, 168, 126, 4),
            Ipv4Net::new_assert(Ipv4Addr::new(10, 128, 4, 0), 23),
            Some(Ipv4Addr::new(10, 10, 0, 4)),
        ),
    ];
    /// (pod name, Kubernetes namespace, node, address).
    pub const PODS: [(&str, &str, &str, Ipv4Addr); 4] = [
        ("pod1", "namespace1", "node1", Ipv4Addr::new(10, 128, 0, 10)),
        ("pod2", "namespace1", "node2", Ipv4Addr::new(10, 128, 2, 10)),
        ("pod3", "namespace2", "node3", Ipv4Addr::new(10, 128, 4, 10)),
        ("pod4", "default", "node2", Ipv4Addr::new(10, 128, 2, 11)),
    ];
}

/// Collects a topology; [`TestbedBuilder::build`] creates it.
#[derive(Clone, Debug)]
pub struct TestbedBuilder {
    pub(crate) persistent_prefix: Option<String>,
    pub(crate) primary: PrimaryNetwork,
    pub(crate) external: ExternalNetwork,
    pub(crate) secondaries: Vec<SecondaryNetwork>,
    pub(crate) cluster_cidr: Ipv4Net,
    pub(crate) nodes: Vec<NodeSpec>,
    pub(crate) pods: Vec<PodSpec>,
    pub(crate) http_port: u16,
    pub(crate) rp_filter: u8,
}

impl Default for TestbedBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl TestbedBuilder {
    /// The lab's networks (primary 192.168.64.0/18 with the router at 192.168.126.1, external
    /// 203.0.113.0/24, cluster CIDR 10.128.0.0/14) but no secondary network, nodes or pods.
    pub fn new() -> Self {
        TestbedBuilder {
            persistent_prefix: None,
            primary: PrimaryNetwork {
                router: lab::PRIMARY_ROUTER,
            },
            external: ExternalNetwork {
                router: lab::EXTERNAL_ROUTER,
                server: lab::EXTERNAL_SERVER,
            },
            secondaries: Vec::new(),
            cluster_cidr: lab::CLUSTER_CIDR,
            nodes: Vec::new(),
            pods: Vec::new(),
            http_port: 80,
            rp_filter: 2,
        }
    }

    /// The lab topology of seed 003 §15.9.1.4 (and of `examples/cluster/`): node1..node3 at
    /// 192.168.126.2..4/18 with pod CIDRs 10.128.{0,2,4}.0/23; node1 and node3 also on the
    /// secondary network `sec` 10.10.0.0/24 (10.10.0.2, 10.10.0.4; gateway 10.10.0.1, behind it
    /// 198.51.100.0/24 with a server at 198.51.100.10); pods pod1 (namespace1, node1, 10.128.0.10),
    /// pod2 (namespace1, node2, 10.128.2.10), pod3 (namespace2, node3, 10.128.4.10) and pod4
    /// (default, node2, 10.128.2.11); the router at 192.168.126.1 and 203.0.113.1, the external
    /// web server at 203.0.113.10.
    pub fn lab() -> Self {
        let mut builder = Self::new().secondary_network(SecondaryNetwork::new(
            lab::SECONDARY,
            lab::SECONDARY_GATEWAY,
            lab::FAR_GATEWAY,
            lab::FAR_SERVER,
        ));
        for (name, ip, pod_cidr, secondary) in lab::NODES {
            let mut node = NodeSpec::new(name, ip, pod_cidr);
            if let Some(secondary) = secondary {
                node = node.secondary(lab::SECONDARY, secondary);
            }
            builder = builder.node(node);
        }
        for (name, namespace, node, ip) in lab::PODS {
            builder = builder.pod(PodSpec::new(name, node).namespace(namespace).ip(ip));
        }
        builder
    }

    /// Names the namespaces `<prefix>-<role>` instead of `ke<pid>-<n>-<role>`. Such a testbed is
    /// not swept when its process is gone, so it can outlive the process
    /// ([`crate::Testbed::keep`]) and be removed later with
    /// [`crate::remove_namespaces_with_prefix`]. Building fails if a namespace with the prefix
    /// already exists.
    pub fn persistent_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.persistent_prefix = Some(prefix.into());
        self
    }

    pub fn primary_network(mut self, network: PrimaryNetwork) -> Self {
        self.primary = network;
        self
    }

    pub fn external_network(mut self, network: ExternalNetwork) -> Self {
        self.external = network;
        self
    }

    pub fn secondary_network(mut self, network: SecondaryNetwork) -> Self {
        self.secondaries.push(network);
        self
    }

    /// The cluster CIDR: every pod CIDR lies in it, and the CNI masquerade spares it.
    pub fn cluster_cidr(mut self, cidr: Ipv4Net) -> Self {
        self.cluster_cidr = cidr;
        self
    }

    pub fn node(mut self, node: NodeSpec) -> Self {
        self.nodes.push(node);
        self
    }

    pub fn pod(mut self, pod: PodSpec) -> Self {
        self.pods.push(pod);
        self
    }

    /// The port of the external web servers (default 80).
    pub fn http_port(mut self, port: u16) -> Self {
        self.http_port = port;
        self
    }

    /// `net.ipv4.conf.{all,default}.rp_filter` on the nodes (default 2, loose, as systemd sets
    /// it); every other namespace gets 0.
    pub fn rp_filter(mut self, mode: u8) -> Self {
        self.rp_filter = mode;
        self
    }

    /// Checks the topology and fills in pod addresses, without creating anything.
    pub fn validate(&self) -> Result<Plan> {
        validate(self)
    }
}

/// A checked topology, pod addresses filled in.
#[derive(Clone, Debug)]
pub struct Plan {
    pub(crate) builder: TestbedBuilder,
    /// Pod addresses, in the order the pods were given.
    pub(crate) pod_ips: Vec<Ipv4Addr>,
}

fn bad(msg: impl Into<String>) -> Error {
    Error::Topology(msg.into())
}

/// Names end up in interface names (`v-<pod>`, switch ports named after nodes), which the kernel
/// limits to 15 bytes.
pub(crate) fn check_name(kind: &str, name: &str) -> Result<()> {
    let ok = (1..=12).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(bad(format!(
            "{kind} name `{name}`: use 1 to 12 characters of a-z, 0-9 and '-', not starting with '-'"
        )))
    }
}

fn check_prefix(prefix: &str) -> Result<()> {
    let ok = (1..=20).contains(&prefix.len())
        && prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !prefix.starts_with('-');
    // A persistent prefix must not look like the pid-stamped names that the sweep removes.
    if !ok || crate::netns::owner_of(&format!("{prefix}-x")).is_some() {
        return Err(bad(format!(
            "namespace prefix `{prefix}`: use 1 to 20 characters of a-z, 0-9 and '-', not of the form ke<digits>-<digits>"
        )));
    }
    Ok(())
}

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// An address usable by a host in `net`: inside it and neither its network nor broadcast
/// address (for prefixes up to /30).
fn is_host_of(net: &Ipv4Net, ip: Ipv4Addr) -> bool {
    net.contains(&ip) && (net.prefix_len() >= 31 || (ip != net.network() && ip != net.broadcast()))
}

fn validate(b: &TestbedBuilder) -> Result<Plan> {
    if let Some(prefix) = &b.persistent_prefix {
        check_prefix(prefix)?;
    }
    if b.rp_filter > 2 {
        return Err(bad(format!("rp_filter {} is not 0, 1 or 2", b.rp_filter)));
    }
    let primary = b.primary.router.trunc();
    let external = b.external.router.trunc();
    let cluster = b.cluster_cidr.trunc();
    for (what, net, ip) in [
        ("primary router", b.primary.router, b.primary.router.addr()),
        (
            "external router",
            b.external.router,
            b.external.router.addr(),
        ),
        ("external server", b.external.router, b.external.server),
    ] {
        if !is_host_of(&net, ip) || net.prefix_len() > 30 {
            return Err(bad(format!("{what} {ip} is not a host address of {net}")));
        }
    }
    if b.external.server == b.external.router.addr() {
        return Err(bad("the external server and the router share an address"));
    }
    // Every network of the testbed must be distinct from every other.
    let mut networks: Vec<(String, Ipv4Net)> = vec![
        ("primary network".into(), primary),
        ("external network".into(), external),
        ("cluster CIDR".into(), cluster),
    ];

    let mut namespace_roles: BTreeSet<String> = ["switch", "router", "web"]
        .into_iter()
        .map(String::from)
        .collect();
    let mut secondaries: BTreeMap<&str, &SecondaryNetwork> = BTreeMap::new();
    for s in &b.secondaries {
        check_name("secondary network", &s.name)?;
        if secondaries.insert(&s.name, s).is_some() {
            return Err(bad(format!("secondary network `{}` given twice", s.name)));
        }
        for role in ["switch", "gw", "web"] {
            namespace_roles.insert(format!("{}-{role}", s.name));
        }
        for (what, net, ip) in [
            ("gateway", s.gateway, s.gateway.addr()),
            ("far gateway", s.far_gateway, s.far_gateway.addr()),
            ("server", s.far_gateway, s.server),
        ] {
            if !is_host_of(&net, ip) || net.prefix_len() > 30 {
                return Err(bad(format!(
                    "secondary network `{}`: {what} {ip} is not a host address of {net}",
                    s.name
                )));
            }
        }
        if s.server == s.far_gateway.addr() {
            return Err(bad(format!(
                "secondary network `{}`: the server and the gateway share an address",
                s.name
            )));
        }
        networks.push((format!("secondary network `{}`", s.name), s.gateway.trunc()));
        networks.push((
            format!("network behind `{}`", s.name),
            s.far_gateway.trunc(),
        ));
    }
    for (i, (name_a, a)) in networks.iter().enumerate() {
        for (name_b, b) in &networks[i + 1..] {
            if overlaps(a, b) {
                return Err(bad(format!("{name_a} {a} overlaps {name_b} {b}")));
            }
        }
    }

    let mut node_index: BTreeMap<&str, &NodeSpec> = BTreeMap::new();
    let mut primary_ips: BTreeSet<Ipv4Addr> = BTreeSet::from([b.primary.router.addr()]);
    let mut secondary_ips: BTreeSet<(String, Ipv4Addr)> = b
        .secondaries
        .iter()
        .map(|s| (s.name.clone(), s.gateway.addr()))
        .collect();
    for node in &b.nodes {
        check_name("node", &node.name)?;
        if !namespace_roles.insert(node.name.clone()) {
            return Err(bad(format!(
                "node name `{}` is taken by another node or a role of the testbed",
                node.name
            )));
        }
        node_index.insert(&node.name, node);
        if !is_host_of(&b.primary.router, node.ip) {
            return Err(bad(format!(
                "node {}: {} is not a host address of the primary network {primary}",
                node.name, node.ip
            )));
        }
        if !primary_ips.insert(node.ip) {
            return Err(bad(format!(
                "node {}: address {} is already taken",
                node.name, node.ip
            )));
        }
        if !cluster.contains(&node.pod_cidr) || node.pod_cidr.prefix_len() > 29 {
            return Err(bad(format!(
                "node {}: pod CIDR {} must lie in the cluster CIDR {cluster} and be /29 or larger",
                node.name, node.pod_cidr
            )));
        }
        if node.pod_cidr != node.pod_cidr.trunc() {
            return Err(bad(format!(
                "node {}: pod CIDR {} has host bits set (did you mean {}?)",
                node.name,
                node.pod_cidr,
                node.pod_cidr.trunc()
            )));
        }
        let mut seen_networks = BTreeSet::new();
        for (network, ip) in &node.secondary {
            let Some(s) = secondaries.get(network.as_str()) else {
                return Err(bad(format!(
                    "node {}: unknown secondary network `{network}`",
                    node.name
                )));
            };
            if !seen_networks.insert(network) {
                return Err(bad(format!(
                    "node {}: attached twice to `{network}`",
                    node.name
                )));
            }
            if !is_host_of(&s.gateway, *ip) || !secondary_ips.insert((network.clone(), *ip)) {
                return Err(bad(format!(
                    "node {}: {ip} is not a free host address of `{network}` {}",
                    node.name,
                    s.gateway.trunc()
                )));
            }
        }
    }
    let cidrs: Vec<(&str, Ipv4Net)> = b
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), n.pod_cidr))
        .collect();
    for (i, (name_a, a)) in cidrs.iter().enumerate() {
        for (name_b, c) in &cidrs[i + 1..] {
            if overlaps(a, c) {
                return Err(bad(format!(
                    "pod CIDRs of {name_a} ({a}) and {name_b} ({c}) overlap"
                )));
            }
        }
    }

    // Pods: explicit addresses first, then automatic ones from .10 on.
    let mut used: BTreeSet<Ipv4Addr> = b.nodes.iter().map(|n| gateway_of(&n.pod_cidr)).collect();
    for pod in &b.pods {
        check_name("pod", &pod.name)?;
        if !namespace_roles.insert(pod.name.clone()) {
            return Err(bad(format!(
                "pod name `{}` is taken by another pod, a node or a role of the testbed",
                pod.name
            )));
        }
        let Some(node) = node_index.get(pod.node.as_str()) else {
            return Err(bad(format!(
                "pod {}: unknown node `{}`",
                pod.name, pod.node
            )));
        };
        if let Some(ip) = pod.ip
            && (!is_host_of(&node.pod_cidr, ip) || !used.insert(ip))
        {
            return Err(bad(format!(
                "pod {}: {ip} is not a free address of {}'s pod CIDR {} (its first address is the gateway)",
                pod.name, node.name, node.pod_cidr
            )));
        }
    }
    let mut pod_ips = Vec::with_capacity(b.pods.len());
    for pod in &b.pods {
        let ip = match pod.ip {
            Some(ip) => ip,
            None => {
                let node = node_index[pod.node.as_str()];
                let ip = node
                    .pod_cidr
                    .hosts()
                    .skip(9)
                    .find(|ip| !used.contains(ip))
                    .ok_or_else(|| {
                        bad(format!(
                            "pod {}: no free address left in {}",
                            pod.name, node.pod_cidr
                        ))
                    })?;
                used.insert(ip);
                ip
            }
        };
        pod_ips.push(ip);
    }
    Ok(Plan {
        builder: b.clone(),
        pod_ips,
    })
}

/// The pods' gateway on a node: the first address of its pod CIDR.
pub(crate) fn gateway_of(pod_cidr: &Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(pod_cidr.network()) + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn err(b: TestbedBuilder) -> String {
        b.validate().unwrap_err().to_string()
    }

    #[test]
    fn lab_topology_is_valid_and_keeps_its_addresses() {
        let plan = TestbedBuilder::lab().validate().unwrap();
        assert_eq!(
            plan.pod_ips,
            vec![
                ip("10.128.0.10"),
                ip("10.128.2.10"),
                ip("10.128.4.10"),
                ip("10.128.2.11")
            ]
        );
    }

    #[test]
    fn automatic_pod_addresses_skip_taken_ones() {
        let plan = TestbedBuilder::new()
            .node(NodeSpec::new(
                "n1",
                ip("192.168.126.5"),
                net("10.128.8.0/24"),
            ))
            .pod(PodSpec::new("a", "n1"))
            .pod(PodSpec::new("b", "n1").ip(ip("10.128.8.11")))
            .pod(PodSpec::new("c", "n1"))
            .validate()
            .unwrap();
        assert_eq!(
            plan.pod_ips,
            vec![ip("10.128.8.10"), ip("10.128.8.11"), ip("10.128.8.12")]
        );
    }

    #[test]
    fn inconsistent_topologies_are_rejected_with_the_reason() {
        let node = |name: &str, addr: &str, cidr: &str| NodeSpec::new(name, ip(addr), net(cidr));
        let base = || TestbedBuilder::new().node(node("n1", "192.168.126.5", "10.128.8.0/24"));

        assert!(
            err(TestbedBuilder::new().node(node("Node_1", "192.168.126.5", "10.128.8.0/24")))
                .contains("node name `Node_1`")
        );
        assert!(
            err(TestbedBuilder::new().node(node(
                "abcdefghijklm",
                "192.168.126.5",
                "10.128.8.0/24"
            )))
            .contains("1 to 12")
        );
        assert!(err(base().node(node("n2", "10.0.0.1", "10.128.9.0/24"))).contains("primary"));
        assert!(
            err(base().node(node("n2", "192.168.126.5", "10.128.9.0/24")))
                .contains("already taken")
        );
        assert!(
            err(base().node(node("n2", "192.168.126.1", "10.128.9.0/24")))
                .contains("already taken")
        );
        assert!(
            err(base().node(node("n2", "192.168.126.6", "10.128.8.128/25"))).contains("overlap")
        );
        assert!(
            err(base().node(node("n2", "192.168.126.6", "10.200.0.0/24"))).contains("cluster CIDR")
        );
        assert!(
            err(base().node(node("n2", "192.168.126.6", "10.128.9.1/24"))).contains("host bits")
        );
        assert!(
            err(base().node(node("router", "192.168.126.6", "10.128.9.0/24"))).contains("taken")
        );
        assert!(err(base().pod(PodSpec::new("n1", "n1"))).contains("taken"));
        assert!(err(base().pod(PodSpec::new("p", "nope"))).contains("unknown node"));
        assert!(err(base().pod(PodSpec::new("p", "n1").ip(ip("10.128.8.1")))).contains("gateway"));
        assert!(
            err(base().pod(PodSpec::new("p", "n1").ip(ip("10.128.9.1")))).contains("not a free")
        );
        assert!(
            err(base()
                .pod(PodSpec::new("p", "n1"))
                .pod(PodSpec::new("p", "n1")))
            .contains("taken")
        );
        assert!(
            err(base().node(
                node("n2", "192.168.126.6", "10.128.9.0/24").secondary("nope", ip("10.10.0.5"))
            ))
            .contains("unknown secondary")
        );
        let sec = SecondaryNetwork::new(
            "s",
            net("10.10.0.1/24"),
            net("198.51.100.1/24"),
            ip("198.51.100.10"),
        );
        assert!(
            err(base().secondary_network(sec.clone()).node(
                node("n2", "192.168.126.6", "10.128.9.0/24").secondary("s", ip("10.10.0.1"))
            ))
            .contains("not a free host address")
        );
        assert!(
            err(base().secondary_network(SecondaryNetwork {
                far_gateway: net("203.0.113.77/24"),
                server: ip("203.0.113.78"),
                ..sec.clone()
            }))
            .contains("overlaps")
        );
        assert!(
            err(base().secondary_network(sec.clone()).secondary_network(sec)).contains("twice")
        );
        assert!(err(base().persistent_prefix("ke12-3")).contains("prefix"));
        assert!(err(base().persistent_prefix("Lab")).contains("prefix"));
        assert!(err(base().rp_filter(3)).contains("rp_filter"));
        assert!(
            err(base().external_network(ExternalNetwork {
                router: net("203.0.113.1/24"),
                server: ip("203.0.113.1"),
            }))
            .contains("share")
        );
    }
}
