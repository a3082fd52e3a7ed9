//! Test topologies made of Linux network namespaces: the base of kube-egress's data-plane tests
//! and of `kube-egress lab`.
//!
//! A [`Testbed`] is a small cluster without Kubernetes: nodes on a primary network, pods routed
//! like a simple host-gw CNI that masquerades pod traffic leaving the cluster to the node IP, a
//! router to an external network with a web server that logs the source address of every
//! request, and secondary networks with their own gateways and a server behind each (the
//! seed 000 case). Real packets, real kernel routing and nftables.
//!
//! # The lab topology ([`TestbedBuilder::lab`])
//!
//! It follows seed 003 §15.9.1.4 and `examples/cluster/` (node addresses, pod CIDRs and pods are
//! the ones those manifests describe, so the engine's plans apply to it unchanged):
//!
//! ```text
//!                      203.0.113.0/24
//!   [web 203.0.113.10] ---- eth1 [router] eth0 192.168.126.1/18   (no pod CIDR routes)
//!                                     |
//!        primary network 192.168.64.0/18 ("192.168.126.0/18"): bridge br0 in [switch]
//!           |                         |                          |
//!   eth0 192.168.126.2        eth0 192.168.126.3         eth0 192.168.126.4
//!      [node1]                    [node2]                    [node3]
//!   pods 10.128.0.0/23         pods 10.128.2.0/23         pods 10.128.4.0/23
//!   v-pod1 - [pod1]            v-pod2 - [pod2]            v-pod3 - [pod3]
//!   10.128.0.10 namespace1     10.128.2.10 namespace1     10.128.4.10 namespace2
//!                              v-pod4 - [pod4]
//!                              10.128.2.11 default
//!   eth1 10.10.0.2                                        eth1 10.10.0.4
//!           |                                                    |
//!        secondary network "sec" 10.10.0.0/24: bridge br0 in [sec-switch]
//!                                     |
//!                      eth0 10.10.0.1 [sec-gw] eth1 198.51.100.1/24 ---- [sec-web 198.51.100.10]
//! ```
//!
//! - **Nodes** (`ip_forward=1`, `rp_filter` 2 by default): default route via the router;
//!   `10.128.X.0/23 via <other node IP>` for every other node; `unreachable` for the own pod
//!   CIDR; a `/32 scope link` route per local pod over its veth `v-<pod>`, which carries the
//!   pods' gateway address (`.1` of the pod CIDR) as a /32; on a secondary link, the gateway
//!   route `198.51.100.0/24 via 10.10.0.1 dev eth1`; and the CNI's masquerade in nft table
//!   `ip cni_masq` (postrouting, priority srcnat: `ip saddr 10.128.0.0/14 ip daddr !=
//!   10.128.0.0/14 masquerade`, see [`cni_masquerade_ruleset`]).
//! - **Pods**: `eth0` with the pod IP as /32, `<gateway>/32 scope link` and a default route via
//!   the gateway (no proxy ARP anywhere).
//! - **Router** and **sec-gw** forward but know only their connected networks, so un-NATed pod
//!   traffic cannot come back, and 198.51.100.0/24 is reachable only through `sec-gw`.
//! - **Servers** answer every `GET` with the client address they saw, and record it
//!   ([`Server::seen`]).
//!
//! # Names and cleanup
//!
//! Namespaces are named `ke<pid>-<n>-<role>` (`ke4242-0-node1`, `ke4242-0-sec-gw`): unique per
//! process and testbed. Interface names are fixed per namespace (`eth0`, `eth1`, `v-<pod>`,
//! switch ports named after what they connect), at most 15 bytes since names are limited to 12.
//! Every veth is created inside the namespaces it joins: the calling process's own namespace is
//! never changed (no link, address, route, rule or nft change there).
//!
//! Dropping a [`Testbed`] (also while a panic unwinds) stops its servers, ends the processes it
//! started and any other process living in its namespaces, and deletes the namespaces. Building
//! one first deletes the `ke<pid>-...` namespaces whose process is gone ([`sweep_stale`]).
//! A testbed meant to outlive its process uses a
//! [persistent prefix](TestbedBuilder::persistent_prefix) and [`Testbed::keep`], and is removed
//! later with [`remove_namespaces_with_prefix`].
//!
//! Building uses the `ip` and `nft` commands (this is test infrastructure; the product's
//! applier uses netlink). Errors name the failing command and quote its standard error.
//!
//! # Example
//!
//! ```no_run
//! let tb = kube_egress_testbed::Testbed::lab()?;
//! let pod2 = tb.pod("pod2").unwrap();
//! let reply = pod2.http_get(&tb.server().url())?;
//! assert_eq!(reply.seen_source(), Some(tb.node("node2").unwrap().ip().into()));
//! assert_eq!(tb.server().seen(), vec![tb.node("node2").unwrap().ip()]);
//! println!("{}", tb.describe());
//! # Ok::<(), kube_egress_testbed::Error>(())
//! ```
//!
//! IPv4 only for now; observations ([`Server::seen`], [`HttpResponse`]) use `IpAddr` already.

mod error;
mod http;
mod netns;
mod spec;
mod testbed;

pub use error::{Error, Result};
pub use http::{DEFAULT_TIMEOUT, HttpResponse, HttpServer, Request, http_get, parse_target};
pub use netns::{
    NETNS_DIR, delete_namespaces, exec, exec_with_input, in_netns, is_root, list_namespaces,
    namespace_exists, netns_path, output, processes_in, remove_namespaces_with_prefix, spawn,
    sweep_stale,
};
pub use spec::{
    ExternalNetwork, NodeSpec, Plan, PodSpec, PrimaryNetwork, SecondaryNetwork, TestbedBuilder, lab,
};
pub use testbed::{
    Attachment, BRIDGE, CNI_MASQ_TABLE, Netns, Node, Pod, Router, Secondary, Server, Testbed,
    cni_masquerade_ruleset,
};
