//! The engine's view of the cluster: plain values converted from Kubernetes objects.
//!
//! Conversion is pure and never fails: problems with an object (a malformed annotation, an invalid
//! selector) are kept on the value and reported by the engine as Events naming the object and field.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube_egress_api::{
    EGRESS_ASSIGNABLE_LABEL, EGRESSIP_MARK_ANNOTATION, EgressIP, HOST_CIDRS_ANNOTATION,
    NODE_PRIMARY_IFADDR_ANNOTATION, Selector, SelectorError,
};
use serde::Deserialize;

/// IP family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: &IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

/// A problem found while converting an object; the engine turns it into a Warning Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldProblem {
    /// Path of the field, e.g. `metadata.annotations[k8s.ovn.org/host-cidrs]`.
    pub field: String,
    pub message: String,
}

/// A node as the engine needs it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Node condition `Ready` is `True`.
    pub ready: bool,
    /// Primary network per family from `k8s.ovn.org/node-primary-ifaddr` (address with prefix length).
    pub primary: Vec<IpNet>,
    /// Every host address with its prefix length, from `k8s.ovn.org/host-cidrs`.
    pub host_cidrs: Vec<IpNet>,
    /// `status.addresses` of type InternalIP / ExternalIP.
    pub addresses: Vec<IpAddr>,
    /// `spec.podCIDRs` (or `spec.podCIDR`).
    pub pod_cidrs: Vec<IpNet>,
    /// `spec.unschedulable` (the node is cordoned).
    pub unschedulable: bool,
    /// Problems found in the object.
    pub problems: Vec<FieldProblem>,
}

impl NodeInfo {
    /// Whether the node carries `k8s.ovn.org/egress-assignable` (any value).
    pub fn egress_assignable(&self) -> bool {
        self.labels.contains_key(EGRESS_ASSIGNABLE_LABEL)
    }

    /// The node's address used as tunnel endpoint by other nodes: its primary IPv4 address, else its
    /// primary IPv6 address, else its first InternalIP/ExternalIP.
    pub fn tunnel_address(&self) -> Option<IpAddr> {
        let primary = |f: Family| {
            self.primary
                .iter()
                .map(IpNet::addr)
                .find(|a| Family::of(a) == f)
        };
        primary(Family::V4)
            .or_else(|| primary(Family::V6))
            .or_else(|| self.addresses.first().copied())
    }

    /// Every address of the node: `host-cidrs` with masks dropped, the primary addresses and
    /// `status.addresses`. An egress IP equal to one of them is refused (`EgressIPConflict`).
    pub fn host_ips(&self) -> Vec<IpAddr> {
        let mut ips: Vec<IpAddr> = self
            .host_cidrs
            .iter()
            .chain(self.primary.iter())
            .map(IpNet::addr)
            .chain(self.addresses.iter().copied())
            .collect();
        ips.sort();
        ips.dedup();
        ips
    }

    /// Converts a Kubernetes Node.
    pub fn from_node(node: &Node) -> NodeInfo {
        let name = node.metadata.name.clone().unwrap_or_default();
        let mut problems = Vec::new();
        let annotations = node.metadata.annotations.clone().unwrap_or_default();

        let mut primary = Vec::new();
        if let Some(raw) = annotations.get(NODE_PRIMARY_IFADDR_ANNOTATION) {
            #[derive(Deserialize)]
            struct PrimaryIfAddr {
                ipv4: Option<String>,
                ipv6: Option<String>,
            }
            let field = format!("metadata.annotations[{NODE_PRIMARY_IFADDR_ANNOTATION}]");
            match serde_json::from_str::<PrimaryIfAddr>(raw) {
                Ok(parsed) => {
                    for (key, value) in [("ipv4", parsed.ipv4), ("ipv6", parsed.ipv6)] {
                        let Some(value) = value.filter(|v| !v.is_empty()) else {
                            continue;
                        };
                        match value.parse::<IpNet>() {
                            Ok(net) if (key == "ipv4") == net.addr().is_ipv4() => primary.push(net),
                            Ok(_) => problems.push(FieldProblem {
                                field: format!("{field}.{key}"),
                                message: format!("{value:?} is not an {key} address"),
                            }),
                            Err(_) => problems.push(FieldProblem {
                                field: format!("{field}.{key}"),
                                message: format!("{value:?} is not an address with prefix length"),
                            }),
                        }
                    }
                }
                Err(e) => problems.push(FieldProblem {
                    field,
                    message: format!(
                        "expected {{\"ipv4\":\"A.B.C.D/len\",\"ipv6\":\"X::Y/len\"}}: {e}"
                    ),
                }),
            }
        }

        let mut host_cidrs = Vec::new();
        if let Some(raw) = annotations.get(HOST_CIDRS_ANNOTATION) {
            let field = format!("metadata.annotations[{HOST_CIDRS_ANNOTATION}]");
            match serde_json::from_str::<Vec<String>>(raw) {
                Ok(list) => {
                    for (i, value) in list.iter().enumerate() {
                        match value.parse::<IpNet>() {
                            Ok(net) => host_cidrs.push(net),
                            Err(_) => problems.push(FieldProblem {
                                field: format!("{field}[{i}]"),
                                message: format!("{value:?} is not an address with prefix length"),
                            }),
                        }
                    }
                }
                Err(e) => problems.push(FieldProblem {
                    field,
                    message: format!("expected a JSON list of \"IP/len\" strings: {e}"),
                }),
            }
        }

        let status = node.status.as_ref();
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let mut addresses = Vec::new();
        for (i, a) in status
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
            .enumerate()
        {
            if a.type_ == "InternalIP" || a.type_ == "ExternalIP" {
                match a.address.parse::<IpAddr>() {
                    Ok(ip) => addresses.push(ip),
                    Err(_) => problems.push(FieldProblem {
                        field: format!("status.addresses[{i}].address"),
                        message: format!("{:?} is not an IP address", a.address),
                    }),
                }
            }
        }

        let mut pod_cidrs = Vec::new();
        if let Some(spec) = &node.spec {
            let listed = spec.pod_cidrs.clone().unwrap_or_default();
            let (raw, field) = if listed.is_empty() {
                (spec.pod_cidr.clone().into_iter().collect(), "spec.podCIDR")
            } else {
                (listed, "spec.podCIDRs")
            };
            for (i, value) in raw.iter().enumerate() {
                match value.parse::<IpNet>() {
                    Ok(net) => pod_cidrs.push(net.trunc()),
                    Err(_) => problems.push(FieldProblem {
                        field: format!("{field}[{i}]"),
                        message: format!("{value:?} is not a CIDR"),
                    }),
                }
            }
        }

        NodeInfo {
            name,
            labels: node.metadata.labels.clone().unwrap_or_default(),
            ready,
            primary,
            host_cidrs,
            addresses,
            pod_cidrs,
            unschedulable: node
                .spec
                .as_ref()
                .and_then(|s| s.unschedulable)
                .unwrap_or(false),
            problems,
        }
    }
}

/// A namespace as the engine needs it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NamespaceInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

impl NamespaceInfo {
    pub fn from_namespace(ns: &Namespace) -> NamespaceInfo {
        NamespaceInfo {
            name: ns.metadata.name.clone().unwrap_or_default(),
            labels: ns.metadata.labels.clone().unwrap_or_default(),
        }
    }
}

/// A pod as the engine needs it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// `spec.nodeName`; `None` while unscheduled.
    pub node: Option<String>,
    pub host_network: bool,
    /// Phase `Succeeded` or `Failed`.
    pub completed: bool,
    /// `status.podIPs` (or `status.podIP`), normalised.
    pub ips: Vec<IpAddr>,
}

impl PodInfo {
    /// Whether an EgressIP may serve this pod: scheduled, not host-network, not completed, with IPs.
    pub fn servable(&self) -> bool {
        self.node.is_some() && !self.host_network && !self.completed && !self.ips.is_empty()
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub fn from_pod(pod: &Pod) -> PodInfo {
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let mut ips: Vec<IpAddr> = status
            .and_then(|s| s.pod_ips.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|p| p.ip.parse().ok())
            .collect();
        if ips.is_empty()
            && let Some(ip) = status
                .and_then(|s| s.pod_ip.as_ref())
                .and_then(|ip| ip.parse().ok())
        {
            ips.push(ip);
        }
        ips.dedup();
        PodInfo {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            node: spec
                .and_then(|s| s.node_name.clone())
                .filter(|n| !n.is_empty()),
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
            completed: matches!(
                status.and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            ),
            ips,
        }
    }
}

/// An EgressIP object as the engine needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressIpInfo {
    pub name: String,
    /// `metadata.creationTimestamp` in seconds; objects without one count as the newest.
    pub created: Option<i64>,
    /// `spec.egressIPs` as written.
    pub ips: Vec<String>,
    pub namespace_selector: Result<Selector, SelectorError>,
    pub pod_selector: Result<Selector, SelectorError>,
    /// `status.items` as `(node, egressIP)`: the current assignment when the engine first sees the
    /// object (after a restart); later updates of the status are the engine's own writes.
    pub status: Vec<(String, String)>,
    /// `k8s.ovn.org/egressip-mark`, when present and a number.
    pub mark: Option<u32>,
    pub problems: Vec<FieldProblem>,
}

impl EgressIpInfo {
    pub fn from_egress_ip(eip: &EgressIP) -> EgressIpInfo {
        let mut problems = Vec::new();
        let mark = eip
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(EGRESSIP_MARK_ANNOTATION))
            .and_then(|raw| match raw.parse::<u32>() {
                Ok(m) => Some(m),
                Err(_) => {
                    problems.push(FieldProblem {
                        field: format!("metadata.annotations[{EGRESSIP_MARK_ANNOTATION}]"),
                        message: format!("{raw:?} is not a number; a new mark is allocated"),
                    });
                    None
                }
            });
        EgressIpInfo {
            name: eip.metadata.name.clone().unwrap_or_default(),
            created: created(&eip.metadata),
            ips: eip.spec.egress_ips.clone(),
            namespace_selector: Selector::compile(
                &eip.spec.namespace_selector,
                "spec.namespaceSelector",
            ),
            pod_selector: Selector::compile_optional(
                eip.spec.pod_selector.as_ref(),
                "spec.podSelector",
            ),
            status: eip
                .status
                .iter()
                .flat_map(|s| &s.items)
                .map(|i| (i.node.clone(), i.egress_ip.clone()))
                .collect(),
            mark,
            problems,
        }
    }
}

fn created(meta: &ObjectMeta) -> Option<i64> {
    meta.creation_timestamp.as_ref().map(|t| t.0.as_second())
}
