//! The kube-egress engine: pure functions from a cluster snapshot to the desired egress state.
//!
//! The engine never does I/O. Edges (Kubernetes watches, manifest files, the lab) feed it object
//! changes; it answers with the EgressIP statuses and marks to write, the Events to publish and the
//! per-node plans for the data planes. Each change costs work proportional to what it touches.
//!
//! Semantics follow OVN-Kubernetes (see `shared/reference/ovnk-behaviour.md` §2) with these
//! differences, all deterministic:
//! - one bad or conflicting IP never stops the other IPs of an object from being assigned;
//! - ties between equally loaded nodes go to the node name, not to map order;
//! - a pod matched by several EgressIPs is served by the oldest object (then by name);
//! - an IP claimed by several objects belongs to the one holding it, else to the oldest.

mod engine;
pub mod event;
pub mod model;
pub mod plan;
mod subnets;

pub use engine::{Changes, Config, Engine, MARK_RANGE, Snapshot};
pub use event::Event;
pub use model::{EgressIpInfo, Family, FieldProblem, NamespaceInfo, NodeInfo, PodInfo};
pub use plan::{
    EgressHop, Exclusions, HostedIp, NodePlan, SnatEntry, SteeringEntry, SteeringRoute, SubnetKind,
};
