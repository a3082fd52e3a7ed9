//! What the OVN mapping needs to know about a node, read from the annotations ovnkube keeps on it.

use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use kube_egress_engine::NodeInfo;
use serde_json::Value as Json;

/// `{"default":{"ipv4":"100.64.0.2/16","ipv6":"fd98::2/64"}}`: the gateway router's join-switch
/// port addresses per network (ovnkube's cluster manager writes it).
pub const GATEWAY_ROUTER_JOIN_ANNOTATION: &str = "k8s.ovn.org/node-gateway-router-lrp-ifaddrs";
/// The older single-network form, `{"ipv4":"100.64.0.2/16"}`; read when the new one is absent.
pub const GATEWAY_ROUTER_JOIN_ANNOTATION_LEGACY: &str =
    "k8s.ovn.org/node-gateway-router-lrp-ifaddr";
/// `{"default":["10.244.1.0/24"]}` (or a single string): the node's pod subnets per network.
pub const NODE_SUBNETS_ANNOTATION: &str = "k8s.ovn.org/node-subnets";

/// A node as the OVN mapping sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OvnNode {
    pub name: String,
    /// Address of `rtoj-GR_<node>` per family: the next hop for egress IPs on the primary network.
    pub gateway_join_ips: Vec<IpAddr>,
    /// Address of the management port `k8s-<node>` per family (the second address of each node
    /// subnet): the next hop for egress IPs on secondary host networks.
    pub management_ips: Vec<IpAddr>,
    /// Every host address (the `node-ips` address set).
    pub host_ips: Vec<IpAddr>,
    /// Malformed annotations, naming the field.
    pub problems: Vec<String>,
}

impl OvnNode {
    /// Reads a Kubernetes Node. Node subnets come from `k8s.ovn.org/node-subnets`, else from
    /// `spec.podCIDRs`; host addresses from the engine's view (`host-cidrs`, primary address,
    /// `status.addresses`).
    pub fn from_node(node: &Node) -> OvnNode {
        let info = NodeInfo::from_node(node);
        let name = info.name.clone();
        let annotations = node.metadata.annotations.clone().unwrap_or_default();
        let mut problems = Vec::new();
        let field = |key: &str| format!("node {name}: metadata.annotations[{key}]");

        let mut gateway_join_ips = Vec::new();
        if let Some(raw) = annotations.get(GATEWAY_ROUTER_JOIN_ANNOTATION) {
            match serde_json::from_str::<Json>(raw) {
                Ok(Json::Object(networks)) => match networks.get("default") {
                    Some(addrs) => {
                        gateway_join_ips = family_addresses(
                            addrs,
                            &format!("{}.default", field(GATEWAY_ROUTER_JOIN_ANNOTATION)),
                            &mut problems,
                        )
                    }
                    None => problems.push(format!(
                        "{}: no entry for network \"default\"",
                        field(GATEWAY_ROUTER_JOIN_ANNOTATION)
                    )),
                },
                _ => problems.push(format!(
                    "{}: expected {{\"default\":{{\"ipv4\":\"A.B.C.D/len\"}}}}, got {raw:?}",
                    field(GATEWAY_ROUTER_JOIN_ANNOTATION)
                )),
            }
        } else if let Some(raw) = annotations.get(GATEWAY_ROUTER_JOIN_ANNOTATION_LEGACY) {
            match serde_json::from_str::<Json>(raw) {
                Ok(addrs @ Json::Object(_)) => {
                    gateway_join_ips = family_addresses(
                        &addrs,
                        &field(GATEWAY_ROUTER_JOIN_ANNOTATION_LEGACY),
                        &mut problems,
                    )
                }
                _ => problems.push(format!(
                    "{}: expected {{\"ipv4\":\"A.B.C.D/len\"}}, got {raw:?}",
                    field(GATEWAY_ROUTER_JOIN_ANNOTATION_LEGACY)
                )),
            }
        }

        let mut subnets: Vec<IpNet> = Vec::new();
        if let Some(raw) = annotations.get(NODE_SUBNETS_ANNOTATION) {
            let default = serde_json::from_str::<Json>(raw)
                .ok()
                .and_then(|j| j.get("default").cloned());
            let listed: Option<Vec<String>> = match default {
                Some(Json::String(s)) => Some(vec![s]),
                Some(Json::Array(a)) => a
                    .iter()
                    .map(|v| v.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>(),
                _ => None,
            };
            match listed {
                Some(list) => {
                    for (i, s) in list.iter().enumerate() {
                        match s.parse::<IpNet>() {
                            Ok(net) => subnets.push(net.trunc()),
                            Err(_) => problems.push(format!(
                                "{}.default[{i}]: {s:?} is not a CIDR",
                                field(NODE_SUBNETS_ANNOTATION)
                            )),
                        }
                    }
                }
                None => problems.push(format!(
                    "{}: expected {{\"default\":[\"CIDR\",...]}}, got {raw:?}",
                    field(NODE_SUBNETS_ANNOTATION)
                )),
            }
        }
        if subnets.is_empty() {
            subnets = info.pod_cidrs.clone();
        }
        let management_ips = subnets.iter().filter_map(second_address).collect();

        OvnNode {
            name,
            gateway_join_ips,
            management_ips,
            host_ips: info.host_ips(),
            problems,
        }
    }
}

/// `{"ipv4":"A/len","ipv6":"B/len"}` → addresses.
fn family_addresses(json: &Json, field: &str, problems: &mut Vec<String>) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for key in ["ipv4", "ipv6"] {
        let Some(value) = json.get(key) else {
            continue;
        };
        match value.as_str().map(|s| (s, s.parse::<IpNet>())) {
            Some((_, Ok(net))) if net.addr().is_ipv4() == (key == "ipv4") => out.push(net.addr()),
            Some((s, _)) => problems.push(format!(
                "{field}.{key}: {s:?} is not an {key} address with prefix length"
            )),
            None => problems.push(format!("{field}.{key}: not a string")),
        }
    }
    out
}

/// The second address of a subnet (`.2` in IPv4): where ovnkube puts the management port.
fn second_address(net: &IpNet) -> Option<IpAddr> {
    match net {
        IpNet::V4(n) => {
            let base = u32::from(n.network());
            (n.prefix_len() <= 30).then(|| IpAddr::V4((base + 2).into()))
        }
        IpNet::V6(n) => {
            let base = u128::from(n.network());
            (n.prefix_len() <= 126).then(|| IpAddr::V6((base + 2).into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(annotations: &[(&str, &str)], pod_cidr: Option<&str>) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1", "annotations": annotations.iter().cloned().collect::<std::collections::BTreeMap<_, _>>()},
            "spec": {"podCIDR": pod_cidr},
        }))
        .unwrap()
    }

    #[test]
    fn reads_join_and_management_addresses() {
        let n = OvnNode::from_node(&node(
            &[
                (
                    GATEWAY_ROUTER_JOIN_ANNOTATION,
                    r#"{"default":{"ipv4":"100.64.0.3/16","ipv6":"fd98::3/64"}}"#,
                ),
                (NODE_SUBNETS_ANNOTATION, r#"{"default":["10.244.1.0/24"]}"#),
                ("k8s.ovn.org/host-cidrs", r#"["172.18.0.2/24"]"#),
            ],
            Some("10.99.0.0/24"),
        ));
        assert_eq!(n.problems, Vec::<String>::new());
        assert_eq!(
            n.gateway_join_ips,
            vec![
                "100.64.0.3".parse::<IpAddr>().unwrap(),
                "fd98::3".parse().unwrap()
            ]
        );
        assert_eq!(
            n.management_ips,
            vec!["10.244.1.2".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(n.host_ips, vec!["172.18.0.2".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn falls_back_to_legacy_annotation_and_pod_cidr() {
        let n = OvnNode::from_node(&node(
            &[(
                GATEWAY_ROUTER_JOIN_ANNOTATION_LEGACY,
                r#"{"ipv4":"100.64.0.4/16"}"#,
            )],
            Some("10.244.2.0/24"),
        ));
        assert_eq!(
            n.gateway_join_ips,
            vec!["100.64.0.4".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(
            n.management_ips,
            vec!["10.244.2.2".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn malformed_annotations_name_the_field() {
        let n = OvnNode::from_node(&node(
            &[
                (
                    GATEWAY_ROUTER_JOIN_ANNOTATION,
                    r#"{"default":{"ipv4":"fd98::3/64"}}"#,
                ),
                (NODE_SUBNETS_ANNOTATION, r#"{"default":["nope"]}"#),
            ],
            None,
        ));
        assert!(n.gateway_join_ips.is_empty() && n.management_ips.is_empty());
        assert_eq!(n.problems.len(), 2, "{:?}", n.problems);
        assert!(n.problems[0].contains(
            "node n1: metadata.annotations[k8s.ovn.org/node-gateway-router-lrp-ifaddrs].default.ipv4"
        ));
        assert!(
            n.problems[1].starts_with(
                "node n1: metadata.annotations[k8s.ovn.org/node-subnets].default[0]: \"nope\""
            ),
            "{}",
            n.problems[1]
        );
    }
}
