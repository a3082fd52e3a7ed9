//! The OVN data plane: the egress plan as OVN Northbound rows, written the way ovnkube writes
//! them for the default network, so that an OVN-Kubernetes cluster's Egress IP traffic is carried
//! by the same logical router policies, NATs, address sets and QoS rules.
//!
//! - [`ovsdb`]: an OVSDB JSON-RPC client (RFC 7047, `monitor_cond`/`update2`) over TCP or unix
//!   sockets;
//! - [`nb`]: typed rows of the Northbound tables used;
//! - [`names`]: ovnkube's names, priorities and ownership `external_ids`;
//! - [`node`]: what the mapping reads from Node annotations;
//! - [`mapping`]: engine state → desired rows (pure);
//! - [`sync`]: replica, diff and one-transaction reconcile;
//! - [`server`]: a real Northbound ovsdb-server in a temporary directory, for tests and benchmarks.

pub mod mapping;
pub mod names;
pub mod nb;
pub mod node;
pub mod ovsdb;
pub mod server;
pub mod sync;

pub use mapping::{ClusterState, Desired, Options, cluster_state, default_join_subnets, desired};
pub use node::OvnNode;
pub use sync::{NbMonitor, NbState, Reconciler, Report, SyncPlan};
