//! What the data planes consume: the desired egress state of one node.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use serde::Serialize;

use crate::model::Family;

/// Where on the node an egress IP lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SubnetKind {
    /// The node's primary network (`k8s.ovn.org/node-primary-ifaddr`).
    Primary,
    /// Another host network of the node (`k8s.ovn.org/host-cidrs`), the seed 000 case.
    Secondary,
}

/// An egress IP this node hosts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HostedIp {
    pub ip: IpAddr,
    /// The EgressIP object.
    #[serde(rename = "egressIPName")]
    pub egress_ip: String,
    pub mark: Option<u32>,
    pub kind: SubnetKind,
    /// The host network holding the IP (longest-prefix match), network address form.
    pub subnet: IpNet,
}

/// Source NAT on this node: traffic of `pod_ip` leaves with `egress_ip`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SnatEntry {
    #[serde(rename = "podIP")]
    pub pod_ip: IpAddr,
    #[serde(rename = "egressIP")]
    pub egress_ip: IpAddr,
}

/// A local pod whose traffic is sent to the egress nodes of its EgressIP.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SteeringEntry {
    #[serde(rename = "podIP")]
    pub pod_ip: IpAddr,
    pub mark: u32,
}

/// An egress node as a next hop.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EgressHop {
    pub node: String,
    /// The node's tunnel endpoint address.
    pub address: IpAddr,
    /// The egress IP it hosts for this EgressIP.
    #[serde(rename = "egressIP")]
    pub egress_ip: IpAddr,
}

/// Where traffic carrying `mark` goes: one next hop per egress node (ECMP).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SteeringRoute {
    pub mark: u32,
    pub family: Family,
    /// The EgressIP object.
    #[serde(rename = "egressIPName")]
    pub egress_ip: String,
    pub next_hops: Vec<EgressHop>,
}

/// Destinations that are never steered or rewritten (east-west traffic).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Exclusions {
    #[serde(rename = "podCIDRs")]
    pub pod_cidrs: Vec<IpNet>,
    #[serde(rename = "serviceCIDRs")]
    pub service_cidrs: Vec<IpNet>,
    #[serde(rename = "nodeIPs")]
    pub node_ips: Vec<IpAddr>,
}

/// The desired egress state of one node. Every list is sorted.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodePlan {
    /// Egress IPs to place on this node's links.
    #[serde(rename = "egressIPs")]
    pub egress_ips: Vec<HostedIp>,
    /// Pod IP → egress IP source NAT for every pod served through an egress IP hosted here.
    pub snat: Vec<SnatEntry>,
    /// Local pods whose egress IP is hosted on other nodes.
    pub steering: Vec<SteeringEntry>,
    /// One route per mark used by `steering`.
    pub steering_routes: Vec<SteeringRoute>,
    /// Shared by every node plan.
    pub exclusions: Arc<Exclusions>,
}

impl NodePlan {
    /// True when the node has nothing to do.
    pub fn is_empty(&self) -> bool {
        self.egress_ips.is_empty() && self.snat.is_empty() && self.steering.is_empty()
    }
}
