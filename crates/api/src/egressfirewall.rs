//! `EgressFirewall` (`egressfirewalls.k8s.ovn.org`): namespaced, one per namespace, named `default`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Ordered Allow/Deny rules for traffic leaving the pods of one namespace. First match wins;
/// traffic matching no rule is allowed.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "k8s.ovn.org",
    version = "v1",
    kind = "EgressFirewall",
    plural = "egressfirewalls",
    singular = "egressfirewall",
    namespaced,
    status = "EgressFirewallStatus",
    printcolumn = r#"{"name":"EgressFirewall Status","type":"string","jsonPath":".status.status"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct EgressFirewallSpec {
    /// The rules, evaluated in order.
    pub egress: Vec<EgressFirewallRule>,
}

/// One rule: what to do with traffic to one destination, optionally limited to some ports.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EgressFirewallRule {
    /// `Allow` or `Deny`.
    #[serde(rename = "type")]
    pub rule_type: EgressFirewallRuleType,
    /// The destination: exactly one of `cidrSelector`, `dnsName`, `nodeSelector`.
    pub to: EgressFirewallDestination,
    /// Limits the rule to these ports. Absent or empty: every port and protocol.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<EgressFirewallPort>,
}

/// The action of a rule.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum EgressFirewallRuleType {
    Allow,
    Deny,
}

/// The destination of a rule. The CRD schema allows exactly one property.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EgressFirewallDestination {
    /// A CIDR such as `203.0.113.0/24`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr_selector: Option<String>,
    /// A DNS name such as `www.example.com`, or `*.example.com` for one label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(\*\.)?([A-Za-z0-9-]+\.)*[A-Za-z0-9-]+\.?$"))]
    pub dns_name: Option<String>,
    /// Every host address of the matching nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
}

/// A port and protocol a rule applies to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct EgressFirewallPort {
    /// `TCP`, `UDP` or `SCTP`.
    #[schemars(regex(pattern = r"^TCP|UDP|SCTP$"))]
    pub protocol: String,
    /// 1 to 65535.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

/// What the controllers report about the rules of a namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct EgressFirewallStatus {
    /// `EgressFirewall Rules applied` or `EgressFirewall Rules not correctly applied`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// One message per zone that applied (or failed to apply) the rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<String>,
}
