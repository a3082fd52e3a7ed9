//! Kubernetes Events the engine asks the edges to publish.

use serde::Serialize;

/// Event reasons, spelled as OVN-Kubernetes spells them where it has one.
pub mod reason {
    /// An entry of `spec.egressIPs` is not an IP address.
    pub const INVALID_EGRESS_IP: &str = "InvalidEgressIP";
    /// The egress IP equals a node's host address.
    pub const EGRESS_IP_CONFLICT: &str = "EgressIPConflict";
    /// The egress IP belongs to another EgressIP object.
    pub const UNSUPPORTED_REQUEST: &str = "UnsupportedRequest";
    /// No node can host any egress IP of the object.
    pub const NO_MATCHING_NODE_FOUND: &str = "NoMatchingNodeFound";
    /// Some egress IPs of the object could not be assigned.
    pub const UNASSIGNED_REQUEST: &str = "UnassignedRequest";
    /// A pod matched by several EgressIPs is served by another one.
    pub const UNDEFINED_REQUEST: &str = "UndefinedRequest";
    /// A selector of the object is invalid; the object selects no pods (ours).
    pub const INVALID_SELECTOR: &str = "InvalidSelector";
    /// All packet marks are in use; pods of the object on other nodes cannot be steered (ours).
    pub const MARK_EXHAUSTED: &str = "MarkExhausted";
    /// A node annotation or address is malformed (ours).
    pub const INVALID_NODE_ADDRESSING: &str = "InvalidNodeAddressing";
}

/// A Warning Event about one object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Event {
    /// `EgressIP` or `Node`.
    pub kind: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Always `Warning` for the reasons above.
    #[serde(rename = "type")]
    pub type_: String,
    pub reason: String,
    pub message: String,
}

impl Event {
    pub fn warning(kind: &str, name: &str, reason: &str, message: String) -> Event {
        Event {
            kind: kind.to_string(),
            name: name.to_string(),
            namespace: None,
            type_: "Warning".to_string(),
            reason: reason.to_string(),
            message,
        }
    }
}
