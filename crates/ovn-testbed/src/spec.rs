//! What a cluster should contain ([`ClusterSpec`]) and every address and name derived from it
//! ([`Layout`]). Pure: nothing here touches the system, so the addressing plan is unit-tested.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::error::{Error, Result};

/// The pod network of the whole cluster (ovnkube's `--cluster-subnets`); node `i` (from 0)
/// gets `10.244.i.0/24`.
pub const CLUSTER_SUBNET: Ipv4Net = net(Ipv4Addr::new(10, 244, 0, 0), 16);
/// ovnkube's default IPv4 join subnet between `ovn_cluster_router` and the gateway routers.
pub const JOIN_SUBNET: Ipv4Net = net(Ipv4Addr::new(100, 64, 0, 0), 16);
/// `rtoj-ovn_cluster_router`, the cluster router's address on the join switch.
pub const CLUSTER_ROUTER_JOIN_IP: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
/// The nodes' primary (external) network: one L2 segment shared by every `GR_<node>`, like the
/// network a kind cluster runs on. Node `i` is `172.18.0.(i+2)`; egress IPs can be taken from
/// [`FIRST_FREE_EXTERNAL_IP`] on, so either gateway router can host them.
pub const EXTERNAL_SUBNET: Ipv4Net = net(Ipv4Addr::new(172, 18, 0, 0), 24);
/// The router of the external network (the gateway routers' default route).
pub const EXTERNAL_GATEWAY: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 1);
/// The first address of the external network that no node or router uses.
pub const FIRST_FREE_EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 100);
/// The network of the web server, behind the external router.
pub const SERVER_SUBNET: Ipv4Net = net(Ipv4Addr::new(203, 0, 113, 0), 24);
/// The external router's address on [`SERVER_SUBNET`].
pub const SERVER_GATEWAY: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// The web server that logs the source address of every request.
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// The port the web server listens on.
pub const SERVER_PORT: u16 = 80;
/// The Geneve underlay: chassis `i` has tunnel endpoint `192.168.100.(i+1)` on its `br-phy`.
pub const UNDERLAY_SUBNET: Ipv4Net = net(Ipv4Addr::new(192, 168, 100, 0), 24);
/// The `ovn-bridge-mappings` network name of `br-ex` and of every localnet port.
pub const PHYSNET: &str = "physnet";
/// The largest number of nodes: node IPs must stay below [`FIRST_FREE_EXTERNAL_IP`].
pub const MAX_NODES: usize = 98;
/// The largest number of pods per node (`.3` to `.252` of the node subnet).
pub const MAX_PODS_PER_NODE: usize = 250;

const fn net(addr: Ipv4Addr, len: u8) -> Ipv4Net {
    match Ipv4Net::new(addr, len) {
        Ok(n) => n,
        Err(_) => panic!("bad prefix length"),
    }
}

/// A pod to create: a network namespace with `eth0` bound to a logical switch port of its node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodSpec {
    /// Kubernetes namespace.
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub labels: BTreeMap<String, String>,
}

/// The cluster to start: node names, pods, and labels of the Kubernetes namespaces.
///
/// ```
/// use kube_egress_ovn_testbed::ClusterSpec;
/// let spec = ClusterSpec::two_nodes()
///     .namespace_labels("prod", &[("env", "prod")])
///     .pod("prod", "web1", "node1")
///     .pod("prod", "web2", "node2");
/// let layout = spec.layout().unwrap();
/// assert_eq!(layout.pod("web2").unwrap().ip.to_string(), "10.244.1.3");
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterSpec {
    pub nodes: Vec<String>,
    pub pods: Vec<PodSpec>,
    /// Labels of Kubernetes namespaces, beyond `kubernetes.io/metadata.name` which every
    /// namespace gets. Namespaces of pods are created even when not listed here.
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
}

impl ClusterSpec {
    /// A cluster with these nodes (chassis) and no pods yet.
    pub fn new(nodes: &[&str]) -> Self {
        ClusterSpec {
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
            ..Default::default()
        }
    }

    /// `node1` and `node2`.
    pub fn two_nodes() -> Self {
        Self::new(&["node1", "node2"])
    }

    /// Adds a pod without labels.
    pub fn pod(self, namespace: &str, name: &str, node: &str) -> Self {
        self.pod_with_labels(namespace, name, node, &[])
    }

    /// Adds a pod with labels.
    pub fn pod_with_labels(
        mut self,
        namespace: &str,
        name: &str,
        node: &str,
        labels: &[(&str, &str)],
    ) -> Self {
        self.pods.push(PodSpec {
            namespace: namespace.to_string(),
            name: name.to_string(),
            node: node.to_string(),
            labels: pairs(labels),
        });
        self
    }

    /// Sets labels of a Kubernetes namespace.
    pub fn namespace_labels(mut self, namespace: &str, labels: &[(&str, &str)]) -> Self {
        self.namespaces
            .entry(namespace.to_string())
            .or_default()
            .extend(pairs(labels));
        self
    }

    /// Checks the spec and derives every name and address.
    pub fn layout(&self) -> Result<Layout> {
        Layout::new(self)
    }
}

fn pairs(labels: &[(&str, &str)]) -> BTreeMap<String, String> {
    labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A node (chassis) with everything ovnkube would derive for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeLayout {
    pub name: String,
    /// Position in the spec, from 0.
    pub index: usize,
    /// The node's pod subnet (`k8s.ovn.org/node-subnets`), `10.244.<index>.0/24`.
    pub subnet: Ipv4Net,
    /// `rtos-<node>` on `ovn_cluster_router`: the pods' default gateway (`.1`).
    pub gateway: Ipv4Addr,
    /// The management port `k8s-<node>` (`.2` of the subnet), host side `ovn-k8s-mp0`.
    pub mgmt_ip: Ipv4Addr,
    pub mgmt_mac: String,
    /// `rtoj-GR_<node>` on the join switch, with the join subnet's prefix length.
    pub join_ip: Ipv4Net,
    /// The node IP: `rtoe-GR_<node>` on the external network (shared gateway mode).
    pub node_ip: Ipv4Net,
    /// MAC of `rtoe-GR_<node>`.
    pub external_mac: String,
    /// Geneve tunnel endpoint (`ovn-encap-ip`) on the chassis's `br-phy`.
    pub encap_ip: Ipv4Addr,
}

impl NodeLayout {
    /// `GR_<node>`.
    pub fn gateway_router(&self) -> String {
        format!("GR_{}", self.name)
    }
    /// `k8s-<node>`, the management port's logical switch port.
    pub fn mgmt_port(&self) -> String {
        format!("k8s-{}", self.name)
    }
    /// `ext_<node>`, the external logical switch.
    pub fn external_switch(&self) -> String {
        format!("ext_{}", self.name)
    }
    /// The localnet port of the external switch (ovnkube names it `<bridge>_<node>`).
    pub fn localnet_port(&self) -> String {
        format!("br-ex_{}", self.name)
    }
}

/// A pod with its address and names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodLayout {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub labels: BTreeMap<String, String>,
    pub ip: Ipv4Addr,
    /// `0a:58` followed by the IP's bytes, as ovnkube assigns.
    pub mac: String,
    /// Its node's subnet (the prefix length of the address inside the pod).
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    /// `<namespace>_<name>`: ovnkube's logical switch port name, also the OVS `iface-id`.
    pub lsp: String,
    /// The host end of the pod's veth in the chassis namespace (`p<n>`).
    pub host_link: String,
}

/// Every name and address of a cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub nodes: Vec<NodeLayout>,
    pub pods: Vec<PodLayout>,
    /// Every Kubernetes namespace (of pods or given labels) with its labels.
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
}

impl Layout {
    fn new(spec: &ClusterSpec) -> Result<Layout> {
        if spec.nodes.is_empty() {
            return Err(spec_error("a cluster needs at least one node"));
        }
        if spec.nodes.len() > MAX_NODES {
            return Err(spec_error(format!(
                "{} nodes requested; at most {MAX_NODES} fit the address plan",
                spec.nodes.len()
            )));
        }
        let mut nodes = Vec::new();
        let mut seen = BTreeSet::new();
        for (index, name) in spec.nodes.iter().enumerate() {
            check_name("node", name)?;
            if !seen.insert(name) {
                return Err(spec_error(format!("node {name} is listed twice")));
            }
            let i = index as u8;
            let subnet = net(Ipv4Addr::new(10, 244, i, 0), 24);
            let mgmt_ip = Ipv4Addr::new(10, 244, i, 2);
            let node_ip = Ipv4Addr::new(172, 18, 0, i + 2);
            nodes.push(NodeLayout {
                name: name.clone(),
                index,
                subnet,
                gateway: Ipv4Addr::new(10, 244, i, 1),
                mgmt_ip,
                mgmt_mac: mac_of(mgmt_ip),
                join_ip: net(Ipv4Addr::new(100, 64, 0, i + 2), JOIN_SUBNET.prefix_len()),
                node_ip: net(node_ip, EXTERNAL_SUBNET.prefix_len()),
                external_mac: mac_of(node_ip),
                encap_ip: Ipv4Addr::new(192, 168, 100, i + 1),
            });
        }

        let mut pods = Vec::new();
        let mut names = BTreeSet::new();
        let mut per_node = vec![0usize; nodes.len()];
        for (n, pod) in spec.pods.iter().enumerate() {
            let what = format!("pod {}/{}", pod.namespace, pod.name);
            check_name(&format!("namespace of {what}"), &pod.namespace)?;
            check_name(&what, &pod.name)?;
            if !names.insert(pod.name.as_str()) {
                // Pod names double as namespace names of the testbed: keep them unique.
                return Err(spec_error(format!(
                    "{what}: another pod is already called {}",
                    pod.name
                )));
            }
            let node = nodes
                .iter()
                .find(|node| node.name == pod.node)
                .ok_or_else(|| spec_error(format!("{what}: no node called {}", pod.node)))?;
            let slot = &mut per_node[node.index];
            if *slot == MAX_PODS_PER_NODE {
                return Err(spec_error(format!(
                    "{what}: node {} already has {MAX_PODS_PER_NODE} pods",
                    node.name
                )));
            }
            let ip = Ipv4Addr::new(10, 244, node.index as u8, 3 + *slot as u8);
            *slot += 1;
            pods.push(PodLayout {
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
                node: node.name.clone(),
                labels: pod.labels.clone(),
                ip,
                mac: mac_of(ip),
                subnet: node.subnet,
                gateway: node.gateway,
                lsp: format!("{}_{}", pod.namespace, pod.name),
                host_link: format!("p{n}"),
            });
        }

        let mut namespaces = spec.namespaces.clone();
        for name in namespaces.keys() {
            check_name("namespace", name)?;
        }
        for pod in &pods {
            namespaces.entry(pod.namespace.clone()).or_default();
        }
        Ok(Layout {
            nodes,
            pods,
            namespaces,
        })
    }

    pub fn node(&self, name: &str) -> Option<&NodeLayout> {
        self.nodes.iter().find(|n| n.name == name)
    }

    pub fn pod(&self, name: &str) -> Option<&PodLayout> {
        self.pods.iter().find(|p| p.name == name)
    }

    /// The pods of one node.
    pub fn pods_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a PodLayout> + 'a {
        self.pods.iter().filter(move |p| p.node == node)
    }
}

/// ovnkube's MAC for an IPv4 address: `0a:58:` followed by the four address bytes.
pub fn mac_of(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("0a:58:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

fn spec_error(msg: impl Into<String>) -> Error {
    Error::Spec(msg.into())
}

/// Kubernetes names used here must be DNS labels: they become parts of OVN names, namespace
/// names and file names.
fn check_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(spec_error(format!(
            "{what}: `{name}` is not a DNS label (lowercase letters, digits and '-', at most 63)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_follow_ovnkube_conventions() {
        let layout = ClusterSpec::two_nodes()
            .pod("prod", "a", "node1")
            .pod("prod", "b", "node2")
            .pod("dev", "c", "node1")
            .layout()
            .unwrap();
        let n2 = layout.node("node2").unwrap();
        assert_eq!(n2.subnet.to_string(), "10.244.1.0/24");
        assert_eq!(n2.gateway.to_string(), "10.244.1.1");
        assert_eq!(n2.mgmt_ip.to_string(), "10.244.1.2");
        assert_eq!(n2.mgmt_mac, "0a:58:0a:f4:01:02");
        assert_eq!(n2.join_ip.to_string(), "100.64.0.3/16");
        assert_eq!(n2.node_ip.to_string(), "172.18.0.3/24");
        assert_eq!(n2.encap_ip.to_string(), "192.168.100.2");
        assert_eq!(n2.gateway_router(), "GR_node2");
        assert_eq!(n2.mgmt_port(), "k8s-node2");
        let c = layout.pod("c").unwrap();
        assert_eq!(c.ip.to_string(), "10.244.0.4");
        assert_eq!(c.mac, "0a:58:0a:f4:00:04");
        assert_eq!(c.lsp, "dev_c");
        assert_eq!(c.host_link, "p2");
        assert_eq!(layout.pod("b").unwrap().ip.to_string(), "10.244.1.3");
        assert_eq!(
            layout.namespaces.keys().collect::<Vec<_>>(),
            vec!["dev", "prod"]
        );
        assert!(CLUSTER_SUBNET.contains(&c.subnet));
    }

    #[test]
    fn bad_specs_are_rejected_with_the_culprit_named() {
        let err = |spec: ClusterSpec| spec.layout().unwrap_err().to_string();
        assert!(err(ClusterSpec::new(&[])).contains("at least one node"));
        assert!(err(ClusterSpec::new(&["n1", "n1"])).contains("node n1 is listed twice"));
        assert!(err(ClusterSpec::new(&["Node_1"])).contains("`Node_1` is not a DNS label"));
        let e = err(ClusterSpec::two_nodes().pod("prod", "a", "node3"));
        assert!(e.contains("pod prod/a: no node called node3"), "{e}");
        let e = err(ClusterSpec::two_nodes()
            .pod("prod", "a", "node1")
            .pod("dev", "a", "node2"));
        assert!(
            e.contains("pod dev/a: another pod is already called a"),
            "{e}"
        );
        let many: Vec<String> = (0..=MAX_NODES).map(|i| format!("n{i}")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(err(ClusterSpec::new(&refs)).contains("at most 98"));
        let mut full = ClusterSpec::new(&["n"]);
        for i in 0..=MAX_PODS_PER_NODE {
            full = full.pod("x", &format!("p{i}"), "n");
        }
        assert!(err(full).contains("already has 250 pods"));
    }
}
