//! A mini OVN-Kubernetes cluster with real OVN, for real-packet tests of the OVN data plane and
//! for benchmarks: [`OvnCluster::start`].
//!
//! Real daemons from the Debian packages (OVN 23.03, Open vSwitch 3.1): Northbound and
//! Southbound ovsdb-servers, ovn-northd, and per node (chassis) an Open_vSwitch ovsdb-server,
//! ovs-vswitchd with the userspace (`netdev`) datapath (no kernel module) and ovn-controller.
//! The Northbound database holds the logical topology ovnkube writes for the default network
//! ([`nb::topology_commands`]); pods are network namespaces whose veth is a port of the
//! chassis's `br-int`, bound to the pod's logical switch port.
//!
//! ```text
//!  NB (unix + tcp:127.0.0.1:<port>)  SB   ovn-northd          <- the caller's namespace
//!
//!  [n-node1] chassis node1                      [n-node2] chassis node2
//!    ovsdb-server, ovs-vswitchd, ovn-controller   (same)
//!    br-int: p0 -> [p-pod1] 10.244.0.3           br-int: p1 -> [p-pod2] 10.244.1.3
//!            ovn-k8s-mp0 10.244.0.2 (k8s-node1)          ovn-k8s-mp0 10.244.1.2
//!    br-ex:  ext0 ------------------+             br-ex:  ext0 ----------+
//!    br-phy: ul0 192.168.100.1 --+  |             br-phy: ul0 .2 ---+    |
//!                                |  |                               |    |
//!  [fabric]  br-ul (Geneve underlay) u0 ---------------------------- u1  |
//!            br-ext 172.18.0.1/24  x0 --------------------------------- x1
//!            web 203.0.113.1/24 ---- [web] 203.0.113.10:80 (logs client addresses)
//!
//!  Logical (NB):  pods -- <node> switch -- rtos-<node> [ovn_cluster_router] rtoj-
//!                 -- join 100.64.0.0/16 -- rtoj-GR_<node> 100.64.0.(2+i) [GR_<node>]
//!                 rtoe-GR_<node> 172.18.0.(2+i) -- ext_<node> -- localnet br-ex_<node>
//! ```
//!
//! Addresses ([`spec`]): node `i` (from 0) has pod subnet `10.244.i.0/24` (gateway `.1`,
//! management port `.2`, pods from `.3`), gateway-router join IP `100.64.0.(i+2)/16` and node IP
//! `172.18.0.(i+2)/24` on the external network, which is one L2 segment for every gateway
//! router, so an egress IP from `172.18.0.100` on can be hosted by any of them. Each GR SNATs the
//! cluster subnet to its node IP, as ovnkube does by default.
//!
//! Each cluster comes with the Kubernetes objects describing it ([`manifests`],
//! [`OvnCluster::write_manifests`]): Nodes with ovnkube's annotations, Namespaces, and Pods with
//! `k8s.ovn.org/pod-networks`.
//!
//! # Observing traffic
//!
//! [`OvnCluster::request`] sends an HTTP `GET` from a pod to the web server and returns the
//! source address the server logged and the node whose `br-ex` uplink carried the request onto
//! the external network (an nft counter per uplink in the fabric namespace). Two gateway routers
//! can SNAT to the same egress IP; the uplink tells which one did.
//!
//! # Names and cleanup
//!
//! Namespaces are `ko<pid>-<n>-<role>` (`fabric`, `web`, `n-<node>`, `p-<pod>`) and the run
//! directory (databases, sockets, logs) is `<temp>/kube-egress-ovn-<pid>-<n>`: unique per
//! process and cluster. The caller's own namespace gets no link, route, rule or nft change; the
//! central daemons run in it only to listen on its 127.0.0.1 and on unix sockets.
//! ovs-vswitchd runs inside its chassis namespace, so its tap devices go away with it.
//!
//! Dropping an [`OvnCluster`] (also while a panic unwinds) stops the web server and every
//! daemon, kills anything else living in its namespaces, deletes the namespaces and the run
//! directory. Starting one first removes what clusters of dead processes left behind
//! ([`sweep_stale`]).
//!
//! # Requirements
//!
//! Root, and the programs of [`REQUIRED_PROGRAMS`] ([`unavailable_reason`] says what is missing;
//! tests skip with that message). Every veth end attached to a `netdev` bridge has TX checksum
//! offload turned off (`ethtool -K ... tx off`): the userspace datapath would otherwise forward
//! TCP packets with unfinished checksums.
//!
//! # Example
//!
//! ```no_run
//! use kube_egress_ovn_testbed::{ClusterSpec, OvnCluster};
//! let cluster = OvnCluster::start(&ClusterSpec::two_nodes().pod("prod", "web", "node2"))?;
//! let egress = cluster.request("web")?;
//! assert_eq!(egress.source.to_string(), "172.18.0.3"); // node2's SNAT
//! assert_eq!(egress.uplink(), Some("node2"));
//! cluster.nbctl(&["lr-nat-list", "GR_node2"])?;
//! # Ok::<(), kube_egress_ovn_testbed::Error>(())
//! ```

mod cluster;
mod error;
pub mod manifests;
pub mod nb;
mod process;
pub mod spec;

pub use cluster::{
    DEBIAN_PACKAGES, Egress, FABRIC_UNDERLAY_IP, MGMT_LINK, OvnCluster, REQUEST_TIMEOUT,
    REQUIRED_PROGRAMS, UPLINK_TABLE, missing_programs, unavailable_reason,
};
pub use error::{Error, Result};
pub use process::{NETNS_PREFIX, RUNDIR_PREFIX, sweep_stale};
pub use spec::{ClusterSpec, Layout, NodeLayout, PodLayout, PodSpec};
