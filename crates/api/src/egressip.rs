//! `EgressIP` (`egressips.k8s.ovn.org`): cluster-scoped, no status subresource.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Pods picked by `namespaceSelector` and `podSelector` leave the cluster with one of `egressIPs`.
//
// OVN-Kubernetes declares the CRD without a status subresource: the controller writes `status`
// with a plain patch of the object, and so do we (see `crate::crd::egressip_crd`).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "k8s.ovn.org",
    version = "v1",
    kind = "EgressIP",
    plural = "egressips",
    singular = "egressip",
    shortname = "eip",
    status = "EgressIPStatus",
    doc = "A fixed source IP for the traffic that selected pods send out of the cluster.",
    printcolumn = r#"{"name":"EgressIPs","type":"string","jsonPath":".spec.egressIPs[*]"}"#,
    printcolumn = r#"{"name":"Assigned Node","type":"string","jsonPath":".status.items[*].node"}"#,
    printcolumn = r#"{"name":"Assigned EgressIPs","type":"string","jsonPath":".status.items[*].egressIP"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct EgressIPSpec {
    /// The egress IP addresses (IPv4 and/or IPv6) to use for the selected pods. Each is hosted by a
    /// different node.
    #[serde(rename = "egressIPs")]
    pub egress_ips: Vec<String>,
    /// Selects the namespaces whose pods use the egress IPs. `{}` selects every namespace.
    pub namespace_selector: LabelSelector,
    /// Narrows the selection to matching pods of the selected namespaces. Absent or `{}` selects
    /// every pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
}

/// Where each egress IP is hosted. Unassigned IPs are absent.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct EgressIPStatus {
    /// One entry per assigned egress IP.
    // Required by the CRD whenever `status` is present (added in `crate::crd`: schemars drops
    // `required` for fields with a serde default). Parsing defaults it to empty so that objects
    // with a misspelt list, such as the `status.assignments` of some published examples, still
    // load.
    #[serde(default)]
    pub items: Vec<EgressIPStatusItem>,
}

/// One assigned egress IP and the node that hosts it.
#[derive(
    Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
pub struct EgressIPStatusItem {
    /// The node hosting the egress IP.
    pub node: String,
    /// The egress IP.
    #[serde(rename = "egressIP")]
    pub egress_ip: String,
}
