//! `k8s.ovn.org/v1` API types and Kubernetes label selectors.
//!
//! The types serialize exactly like the objects OVN-Kubernetes reads and writes, so manifests written
//! for OVN-Kubernetes apply unchanged. The CRD YAML under `deploy/crds/` is generated from them.

pub mod crd;
pub mod egressfirewall;
pub mod egressip;
pub mod selector;

pub use egressfirewall::{
    EgressFirewall, EgressFirewallDestination, EgressFirewallPort, EgressFirewallRule,
    EgressFirewallRuleType, EgressFirewallSpec, EgressFirewallStatus, FieldError, PortProtocol,
    ValidatedDestination, ValidatedPort, ValidatedRule,
};
pub use egressip::{EgressIP, EgressIPSpec, EgressIPStatus, EgressIPStatusItem};
pub use selector::{Selector, SelectorError};

/// The API group of every custom resource here.
pub const GROUP: &str = "k8s.ovn.org";
/// `apiVersion` of every custom resource here.
pub const API_VERSION: &str = "k8s.ovn.org/v1";

/// Node label that makes a node a candidate for hosting egress IPs (any value).
pub const EGRESS_ASSIGNABLE_LABEL: &str = "k8s.ovn.org/egress-assignable";
/// Node annotation holding the node's primary network, `{"ipv4":"A.B.C.D/len","ipv6":"…/len"}`.
pub const NODE_PRIMARY_IFADDR_ANNOTATION: &str = "k8s.ovn.org/node-primary-ifaddr";
/// Node annotation holding every host address of the node as a JSON list of `IP/len`.
pub const HOST_CIDRS_ANNOTATION: &str = "k8s.ovn.org/host-cidrs";
/// EgressIP annotation holding the object's packet mark (decimal).
pub const EGRESSIP_MARK_ANNOTATION: &str = "k8s.ovn.org/egressip-mark";
