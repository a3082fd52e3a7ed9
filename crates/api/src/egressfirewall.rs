//! `EgressFirewall` (`egressfirewalls.k8s.ovn.org`): namespaced, one per namespace, named `default`.

use std::fmt;

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::selector::{Selector, SelectorError};

/// The only name an EgressFirewall may have (the CRD pattern is `^default$`).
pub const EGRESS_FIREWALL_NAME: &str = "default";

/// The highest accepted rule index. OVN-Kubernetes rejects rule `i` when `i > 10000 - 2000`, so
/// indices `0..=8000` (8001 rules) fit although its error message says the maximum is 8000.
pub const MAX_RULE_INDEX: usize = 8000;

/// CRD pattern of `to.dnsName`: an optional `*.` wildcard label, then dot-separated labels of
/// letters, digits and `-`, optionally fully qualified (trailing dot).
pub const DNS_NAME_PATTERN: &str = r"^(\*\.)?([A-Za-z0-9-]+\.)*[A-Za-z0-9-]+\.?$";

/// CRD pattern of `ports[].protocol`, as OVN-Kubernetes writes it (the alternation is unanchored).
pub const PROTOCOL_PATTERN: &str = "^TCP|UDP|SCTP$";

/// CRD pattern of a rule's `type`, as OVN-Kubernetes writes it (the alternation is unanchored).
pub const RULE_TYPE_PATTERN: &str = "^Allow|Deny$";

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
    doc = "The egress firewall of one namespace: ordered rules checked against traffic from its pods to destinations outside the cluster. At most one per namespace, named `default`.",
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
    #[schemars(pattern(DNS_NAME_PATTERN))]
    pub dns_name: Option<String>,
    /// Every host address of the matching nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
}

/// A port and protocol a rule applies to.
//
// Both fields are required by the CRD (see `crate::crd`). Like the Go types of OVN-Kubernetes,
// parsing fills a missing field with its zero value (`""`, `0`); `EgressFirewall::validate`
// rejects those with the field's path. Some published examples omit `protocol`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct EgressFirewallPort {
    /// `TCP`, `UDP` or `SCTP`.
    #[serde(default)]
    #[schemars(pattern(PROTOCOL_PATTERN))]
    pub protocol: String,
    /// 1 to 65535.
    #[serde(default)]
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

/// One problem found by [`EgressFirewall::validate`], with the path of the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// Path of the field, e.g. `spec.egress[2].to` or `spec.egress[0].ports[1].port`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl From<SelectorError> for FieldError {
    fn from(e: SelectorError) -> Self {
        FieldError {
            field: e.field,
            message: e.message,
        }
    }
}

/// A transport protocol a rule can be limited to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortProtocol {
    Tcp,
    Udp,
    Sctp,
}

impl PortProtocol {
    /// The spelling used in the API: `TCP`, `UDP` or `SCTP`.
    pub fn as_str(self) -> &'static str {
        match self {
            PortProtocol::Tcp => "TCP",
            PortProtocol::Udp => "UDP",
            PortProtocol::Sctp => "SCTP",
        }
    }

    /// Parses the exact API spelling (upper case, as the CRD pattern requires).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "TCP" => Some(PortProtocol::Tcp),
            "UDP" => Some(PortProtocol::Udp),
            "SCTP" => Some(PortProtocol::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for PortProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A checked `ports[]` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValidatedPort {
    pub protocol: PortProtocol,
    /// 1 to 65535.
    pub port: u16,
}

/// A checked rule destination: exactly one of the three kinds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValidatedDestination {
    /// `cidrSelector`, parsed. Host bits are kept as written (`10.0.0.5/24`); use
    /// [`IpNet::trunc`] for the network.
    Cidr(IpNet),
    /// `dnsName` as written. It may start with the `*.` wildcard, which OVN-Kubernetes accepts only
    /// with its DNSNameResolver feature; that choice is left to the caller.
    DnsName(String),
    /// `nodeSelector`, compiled: the rule covers every host address of the matching nodes.
    Nodes(Selector),
}

/// One checked rule of an EgressFirewall.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatedRule {
    /// Position in `spec.egress`; OVN-Kubernetes derives the ACL priority from it (`10000 - index`).
    pub index: usize,
    pub action: EgressFirewallRuleType,
    pub destination: ValidatedDestination,
    /// Empty: every port and protocol.
    pub ports: Vec<ValidatedPort>,
}

impl EgressFirewall {
    /// Checks the object the way the CRD schema and OVN-Kubernetes do, and returns the rules in
    /// order. Every problem is reported (not just the first), each naming its field:
    /// - `metadata.name` must be `default`;
    /// - at most [`MAX_RULE_INDEX`]` + 1` rules;
    /// - each rule's `to` sets exactly one of `cidrSelector`, `dnsName`, `nodeSelector`;
    /// - `cidrSelector` is a CIDR (`address/prefix`), `dnsName` matches [`DNS_NAME_PATTERN`],
    ///   `nodeSelector` is a valid label selector;
    /// - each port has protocol `TCP`, `UDP` or `SCTP` and a port in 1..=65535.
    pub fn validate(&self) -> Result<Vec<ValidatedRule>, Vec<FieldError>> {
        let mut errors = Vec::new();
        match self.metadata.name.as_deref() {
            Some(EGRESS_FIREWALL_NAME) => {}
            Some(other) => errors.push(FieldError::new(
                "metadata.name",
                format!("must be {EGRESS_FIREWALL_NAME:?} (one EgressFirewall per namespace), got {other:?}"),
            )),
            None => errors.push(FieldError::new(
                "metadata.name",
                format!("missing; must be {EGRESS_FIREWALL_NAME:?}"),
            )),
        }
        let rules = &self.spec.egress;
        if rules.len() > MAX_RULE_INDEX + 1 {
            errors.push(FieldError::new(
                "spec.egress",
                format!(
                    "{} rules: too many, max allowed number is {MAX_RULE_INDEX} (rule index {} is past the limit)",
                    rules.len(),
                    MAX_RULE_INDEX + 1
                ),
            ));
        }
        let mut validated = Vec::with_capacity(rules.len());
        for (index, rule) in rules.iter().enumerate() {
            match validate_rule(index, rule) {
                Ok(rule) => validated.push(rule),
                Err(mut rule_errors) => errors.append(&mut rule_errors),
            }
        }
        if errors.is_empty() {
            Ok(validated)
        } else {
            Err(errors)
        }
    }
}

fn validate_rule(
    index: usize,
    rule: &EgressFirewallRule,
) -> Result<ValidatedRule, Vec<FieldError>> {
    let at = format!("spec.egress[{index}]");
    let mut errors = Vec::new();
    let destination = match validate_destination(&rule.to, &format!("{at}.to")) {
        Ok(destination) => Some(destination),
        Err(e) => {
            errors.push(e);
            None
        }
    };
    let mut ports = Vec::with_capacity(rule.ports.len());
    for (i, port) in rule.ports.iter().enumerate() {
        let port_at = format!("{at}.ports[{i}]");
        let protocol = PortProtocol::parse(&port.protocol);
        if protocol.is_none() {
            let message = if port.protocol.is_empty() {
                "required: must be TCP, UDP or SCTP".to_string()
            } else {
                format!("must be TCP, UDP or SCTP, got {:?}", port.protocol)
            };
            errors.push(FieldError::new(format!("{port_at}.protocol"), message));
        }
        let number = u16::try_from(port.port).ok().filter(|p| *p >= 1);
        if number.is_none() {
            errors.push(FieldError::new(
                format!("{port_at}.port"),
                format!("must be between 1 and 65535, got {}", port.port),
            ));
        }
        if let (Some(protocol), Some(port)) = (protocol, number) {
            ports.push(ValidatedPort { protocol, port });
        }
    }
    match destination {
        Some(destination) if errors.is_empty() => Ok(ValidatedRule {
            index,
            action: rule.rule_type,
            destination,
            ports,
        }),
        _ => Err(errors),
    }
}

fn validate_destination(
    to: &EgressFirewallDestination,
    at: &str,
) -> Result<ValidatedDestination, FieldError> {
    let set: Vec<&str> = [
        ("cidrSelector", to.cidr_selector.is_some()),
        ("dnsName", to.dns_name.is_some()),
        ("nodeSelector", to.node_selector.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, present)| present.then_some(name))
    .collect();
    if set.len() != 1 {
        let found = if set.is_empty() {
            "none".to_string()
        } else {
            set.join(", ")
        };
        return Err(FieldError::new(
            at,
            format!(
                "exactly one of cidrSelector, dnsName, nodeSelector must be set (found: {found})"
            ),
        ));
    }
    if let Some(cidr) = &to.cidr_selector {
        return cidr
            .parse::<IpNet>()
            .map(ValidatedDestination::Cidr)
            .map_err(|_| {
                FieldError::new(
                    format!("{at}.cidrSelector"),
                    format!("invalid CIDR {cidr:?} (expected address/prefix, e.g. 203.0.113.0/24)"),
                )
            });
    }
    if let Some(name) = &to.dns_name {
        return if matches_dns_name_pattern(name) {
            Ok(ValidatedDestination::DnsName(name.clone()))
        } else {
            Err(FieldError::new(
                format!("{at}.dnsName"),
                format!("invalid DNS name {name:?} (must match {DNS_NAME_PATTERN})"),
            ))
        };
    }
    let selector = to
        .node_selector
        .as_ref()
        .expect("exactly one destination field is set");
    Selector::compile(selector, &format!("{at}.nodeSelector"))
        .map(ValidatedDestination::Nodes)
        .map_err(FieldError::from)
}

/// Whether `name` matches [`DNS_NAME_PATTERN`]:
/// `^(\*\.)?([A-Za-z0-9-]+\.)*[A-Za-z0-9-]+\.?$`.
pub fn matches_dns_name_pattern(name: &str) -> bool {
    let name = name.strip_prefix("*.").unwrap_or(name);
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    use super::*;

    fn rule(to: EgressFirewallDestination) -> EgressFirewallRule {
        EgressFirewallRule {
            rule_type: EgressFirewallRuleType::Allow,
            to,
            ports: Vec::new(),
        }
    }

    fn cidr(c: &str) -> EgressFirewallDestination {
        EgressFirewallDestination {
            cidr_selector: Some(c.into()),
            ..Default::default()
        }
    }

    fn dns(name: &str) -> EgressFirewallDestination {
        EgressFirewallDestination {
            dns_name: Some(name.into()),
            ..Default::default()
        }
    }

    fn nodes(selector: LabelSelector) -> EgressFirewallDestination {
        EgressFirewallDestination {
            node_selector: Some(selector),
            ..Default::default()
        }
    }

    fn port(protocol: &str, port: i32) -> EgressFirewallPort {
        EgressFirewallPort {
            protocol: protocol.into(),
            port,
        }
    }

    fn firewall(rules: Vec<EgressFirewallRule>) -> EgressFirewall {
        let mut ef = EgressFirewall::new("default", EgressFirewallSpec { egress: rules });
        ef.metadata.namespace = Some("project1".into());
        ef
    }

    /// The fields named by the errors, in order.
    fn error_fields(ef: &EgressFirewall) -> Vec<String> {
        ef.validate()
            .expect_err("expected validation errors")
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn valid_firewall_yields_typed_rules_in_order() {
        let mut deny_web = rule(cidr("0.0.0.0/0"));
        deny_web.rule_type = EgressFirewallRuleType::Deny;
        deny_web.ports = vec![port("TCP", 80), port("UDP", 53), port("SCTP", 65535)];
        let ef = firewall(vec![
            rule(cidr("10.0.0.5/24")),
            rule(dns("www.example.com")),
            rule(nodes(LabelSelector {
                match_labels: Some([("kubernetes.io/os".into(), "linux".into())].into()),
                ..Default::default()
            })),
            rule(cidr("2001:db8::/32")),
            deny_web,
        ]);
        let rules = ef.validate().unwrap();
        assert_eq!(rules.len(), 5);
        assert_eq!(
            rules.iter().map(|r| r.index).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4]
        );
        // Host bits are kept as written.
        assert_eq!(
            rules[0].destination,
            ValidatedDestination::Cidr("10.0.0.5/24".parse().unwrap())
        );
        assert_eq!(
            rules[1].destination,
            ValidatedDestination::DnsName("www.example.com".into())
        );
        let ValidatedDestination::Nodes(selector) = &rules[2].destination else {
            panic!("{:?}", rules[2].destination);
        };
        assert!(selector.matches(&[("kubernetes.io/os".into(), "linux".into())].into()));
        assert!(!selector.matches(&Default::default()));
        assert!(matches!(
            rules[3].destination,
            ValidatedDestination::Cidr(IpNet::V6(_))
        ));
        assert_eq!(rules[4].action, EgressFirewallRuleType::Deny);
        assert_eq!(
            rules[4].ports,
            [
                ValidatedPort {
                    protocol: PortProtocol::Tcp,
                    port: 80
                },
                ValidatedPort {
                    protocol: PortProtocol::Udp,
                    port: 53
                },
                ValidatedPort {
                    protocol: PortProtocol::Sctp,
                    port: 65535
                },
            ]
        );
    }

    #[test]
    fn empty_rule_list_is_valid() {
        assert_eq!(firewall(Vec::new()).validate().unwrap(), Vec::new());
    }

    #[test]
    fn name_must_be_default() {
        let mut ef = firewall(vec![rule(cidr("1.2.3.0/24"))]);
        ef.metadata.name = Some("strict".into());
        let errors = ef.validate().unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].field, "metadata.name");
        assert!(errors[0].message.contains("\"strict\""), "{}", errors[0]);

        ef.metadata.name = None;
        assert_eq!(error_fields(&ef), ["metadata.name"]);
    }

    #[test]
    fn destination_needs_exactly_one_field() {
        let both = EgressFirewallDestination {
            cidr_selector: Some("1.2.3.0/24".into()),
            dns_name: Some("example.com".into()),
            ..Default::default()
        };
        let ef = firewall(vec![
            rule(cidr("1.2.3.0/24")),
            rule(cidr("1.2.3.0/24")),
            rule(both),
            rule(EgressFirewallDestination::default()),
        ]);
        let errors = ef.validate().unwrap_err();
        assert_eq!(
            errors.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(),
            ["spec.egress[2].to", "spec.egress[3].to"]
        );
        assert!(
            errors[0].message.contains("found: cidrSelector, dnsName"),
            "{}",
            errors[0]
        );
        assert!(errors[1].message.contains("found: none"), "{}", errors[1]);

        let all_three = EgressFirewallDestination {
            cidr_selector: Some("1.2.3.0/24".into()),
            dns_name: Some("example.com".into()),
            node_selector: Some(LabelSelector::default()),
        };
        assert_eq!(
            error_fields(&firewall(vec![rule(all_three)])),
            ["spec.egress[0].to"]
        );
    }

    #[test]
    fn cidr_selector_must_be_a_cidr() {
        for bad in [
            "172.16.1.1",
            "1.2.3.0/33",
            "1.2.3/24",
            "",
            "example.com/8",
            "::/129",
        ] {
            let ef = firewall(vec![rule(cidr("1.2.3.0/24")), rule(cidr(bad))]);
            let errors = ef.validate().unwrap_err();
            assert_eq!(errors.len(), 1, "{bad:?}: {errors:?}");
            assert_eq!(errors[0].field, "spec.egress[1].to.cidrSelector", "{bad:?}");
            assert!(
                errors[0].message.contains(&format!("{bad:?}")),
                "{}",
                errors[0]
            );
        }
        for good in ["0.0.0.0/0", "172.16.1.1/32", "::/0", "fd00::1/128"] {
            firewall(vec![rule(cidr(good))]).validate().unwrap();
        }
    }

    #[test]
    fn dns_name_must_match_the_crd_pattern() {
        for good in [
            "example.com",
            "www.example.com.",
            "localhost",
            "*.example.com",
            "a-b.c-d.e",
            "xn--bcher-kva.example",
            "1.2.3.4",
        ] {
            assert!(matches_dns_name_pattern(good), "{good}");
            firewall(vec![rule(dns(good))]).validate().unwrap();
        }
        for bad in [
            "",
            ".",
            "*.",
            "*",
            "a..b",
            "example.com..",
            ".example.com",
            "foo.*.example.com",
            "**.example.com",
            "exa mple.com",
            "under_score.com",
            "http://example.com",
            "bücher.example",
        ] {
            assert!(!matches_dns_name_pattern(bad), "{bad:?}");
            let errors = firewall(vec![rule(dns(bad))]).validate().unwrap_err();
            assert_eq!(errors.len(), 1, "{bad:?}");
            assert_eq!(errors[0].field, "spec.egress[0].to.dnsName", "{bad:?}");
        }
    }

    #[test]
    fn node_selector_must_compile() {
        let bad = LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "role".into(),
                operator: "Equals".into(),
                values: Some(vec!["egress".into()]),
            }]),
            ..Default::default()
        };
        let ef = firewall(vec![rule(cidr("1.2.3.0/24")), rule(nodes(bad))]);
        let errors = ef.validate().unwrap_err();
        assert_eq!(
            errors.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(),
            ["spec.egress[1].to.nodeSelector.matchExpressions[0].operator"]
        );

        let no_values = LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "role".into(),
                operator: "In".into(),
                values: None,
            }]),
            ..Default::default()
        };
        assert_eq!(
            error_fields(&firewall(vec![rule(nodes(no_values))])),
            ["spec.egress[0].to.nodeSelector.matchExpressions[0].values"]
        );

        // `{}` selects every node.
        let rules = firewall(vec![rule(nodes(LabelSelector::default()))])
            .validate()
            .unwrap();
        assert_eq!(
            rules[0].destination,
            ValidatedDestination::Nodes(Selector::everything())
        );
    }

    #[test]
    fn ports_need_a_known_protocol_and_a_port_in_range() {
        let mut r = rule(cidr("1.2.3.0/24"));
        r.ports = vec![
            port("TCP", 1),
            port("tcp", 80),
            port("", 443),
            port("UDP", 0),
            port("SCTP", 65536),
            port("ICMP", -1),
            port("TCPX", 22),
        ];
        let errors = firewall(vec![r]).validate().unwrap_err();
        assert_eq!(
            errors.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(),
            [
                "spec.egress[0].ports[1].protocol",
                "spec.egress[0].ports[2].protocol",
                "spec.egress[0].ports[3].port",
                "spec.egress[0].ports[4].port",
                "spec.egress[0].ports[5].protocol",
                "spec.egress[0].ports[5].port",
                "spec.egress[0].ports[6].protocol",
            ]
        );
        assert!(errors[1].message.starts_with("required"), "{}", errors[1]);
        assert!(errors[3].message.contains("65536"), "{}", errors[3]);
    }

    #[test]
    fn all_problems_are_reported_together() {
        let mut r = rule(cidr("not-a-cidr"));
        r.ports = vec![port("TCP", 0)];
        let mut ef = firewall(vec![rule(dns("ok.example")), r]);
        ef.metadata.name = Some("other".into());
        assert_eq!(
            error_fields(&ef),
            [
                "metadata.name",
                "spec.egress[1].to.cidrSelector",
                "spec.egress[1].ports[0].port"
            ]
        );
    }

    #[test]
    fn rule_limit_is_8001_rules_like_ovn_kubernetes() {
        let rules = vec![rule(cidr("1.2.3.0/24")); MAX_RULE_INDEX + 1];
        let validated = firewall(rules.clone()).validate().unwrap();
        assert_eq!(validated.len(), 8001);
        assert_eq!(validated.last().unwrap().index, 8000);

        let mut too_many = rules;
        too_many.push(rule(cidr("1.2.3.0/24")));
        let errors = firewall(too_many).validate().unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].field, "spec.egress");
        assert!(
            errors[0].message.contains("max allowed number is 8000"),
            "{}",
            errors[0]
        );
        assert!(errors[0].message.starts_with("8002 rules"), "{}", errors[0]);
    }

    #[test]
    fn missing_port_fields_parse_as_zero_values_and_fail_validation() {
        let ef: EgressFirewall = serde_json::from_value(serde_json::json!({
            "apiVersion": "k8s.ovn.org/v1",
            "kind": "EgressFirewall",
            "metadata": {"name": "default", "namespace": "ns"},
            "spec": {"egress": [{"type": "Deny", "to": {"cidrSelector": "10.0.0.0/8"},
                                 "ports": [{"port": 443}, {"protocol": "UDP"}]}]}
        }))
        .unwrap();
        assert_eq!(ef.spec.egress[0].ports[0], port("", 443));
        assert_eq!(ef.spec.egress[0].ports[1], port("UDP", 0));
        assert_eq!(
            error_fields(&ef),
            [
                "spec.egress[0].ports[0].protocol",
                "spec.egress[0].ports[1].port"
            ]
        );
    }

    #[test]
    fn error_display_names_the_field() {
        let errors = firewall(vec![rule(cidr("x"))]).validate().unwrap_err();
        assert!(
            errors[0]
                .to_string()
                .starts_with("spec.egress[0].to.cidrSelector: invalid CIDR \"x\""),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn protocol_spelling_round_trips() {
        for p in [PortProtocol::Tcp, PortProtocol::Udp, PortProtocol::Sctp] {
            assert_eq!(PortProtocol::parse(p.as_str()), Some(p));
            assert_eq!(p.to_string(), p.as_str());
        }
        assert_eq!(PortProtocol::parse("tcp"), None);
    }
}
