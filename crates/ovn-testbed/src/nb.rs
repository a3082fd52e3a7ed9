//! The logical topology ovnkube writes into the Northbound database for the default network
//! (shared gateway mode, one zone), as `ovn-nbctl` commands. Pure: the commands are unit-tested
//! and run in one transaction by [`crate::OvnCluster::start`].

use crate::spec::{CLUSTER_ROUTER_JOIN_IP, CLUSTER_SUBNET, EXTERNAL_GATEWAY, JOIN_SUBNET, Layout};
use crate::spec::{PHYSNET, mac_of};

/// `ovn_cluster_router`, the distributed router every node switch hangs off.
pub const CLUSTER_ROUTER: &str = "ovn_cluster_router";
/// The join switch between the cluster router and the gateway routers.
pub const JOIN_SWITCH: &str = "join";

/// One `ovn-nbctl` command: its words, without the `--` separator.
pub type NbCommand = Vec<String>;

fn cmd(words: &[&str]) -> NbCommand {
    words.iter().map(|w| w.to_string()).collect()
}

/// A logical switch port of type `router` peering with `router_port`, as ovnkube creates them
/// (`stor-`, `jtor-`, `etor-` ports).
fn router_lsp(
    switch: &str,
    name: &str,
    router_port: &str,
    extra_options: &[&str],
) -> Vec<NbCommand> {
    let mut options = vec!["lsp-set-options", name];
    let peer = format!("router-port={router_port}");
    options.push(&peer);
    options.extend_from_slice(extra_options);
    vec![
        cmd(&["lsp-add", switch, name]),
        cmd(&["lsp-set-type", name, "router"]),
        cmd(&["lsp-set-addresses", name, "router"]),
        cmd(&options),
    ]
}

/// Every command that builds the cluster's logical topology, pods included:
///
/// - `ovn_cluster_router` with `rtoj-ovn_cluster_router` (100.64.0.1/16) on the `join` switch and
///   `rtos-<node>` (the node subnet's `.1`) on each node switch;
/// - per node: switch `<node>` (`other_config:subnet`, `exclude_ips` = management IP) with
///   `stor-<node>`, the management port `k8s-<node>` and the pods' ports `<namespace>_<pod>`;
///   `GR_<node>` bound to the chassis (`options:chassis`) with `rtoj-GR_<node>` on `join` and
///   `rtoe-GR_<node>` (the node IP) on `ext_<node>`, whose localnet port `br-ex_<node>` leads to
///   the chassis's `br-ex`; GR routes `10.244.0.0/16 via 100.64.0.1` and a default route via
///   the external gateway; the cluster router's `src-ip` route of the node subnet via the GR's
///   join IP; the GR's SNAT of the cluster subnet to the node IP; the priority 1004 reroute of
///   pod → own node IP traffic to the management port.
pub fn topology_commands(layout: &Layout) -> Vec<NbCommand> {
    let join_cidr = format!("{CLUSTER_ROUTER_JOIN_IP}/{}", JOIN_SUBNET.prefix_len());
    let cluster = CLUSTER_SUBNET.to_string();
    let mut out = vec![
        cmd(&["lr-add", CLUSTER_ROUTER]),
        cmd(&["ls-add", JOIN_SWITCH]),
        cmd(&[
            "lrp-add",
            CLUSTER_ROUTER,
            "rtoj-ovn_cluster_router",
            &mac_of(CLUSTER_ROUTER_JOIN_IP),
            &join_cidr,
        ]),
    ];
    out.extend(router_lsp(
        JOIN_SWITCH,
        "jtor-ovn_cluster_router",
        "rtoj-ovn_cluster_router",
        &[],
    ));
    for node in &layout.nodes {
        let n = node.name.as_str();
        let gr = node.gateway_router();
        let ext = node.external_switch();
        let node_ip = node.node_ip.addr().to_string();
        let join_ip = node.join_ip.addr().to_string();
        let subnet = node.subnet.to_string();
        // Node switch and its router port.
        out.push(cmd(&["ls-add", n]));
        out.push(cmd(&[
            "set",
            "logical_switch",
            n,
            &format!("other_config:subnet={subnet}"),
            &format!("other_config:exclude_ips={}", node.mgmt_ip),
        ]));
        let rtos = format!("rtos-{n}");
        out.push(cmd(&[
            "lrp-add",
            CLUSTER_ROUTER,
            &rtos,
            &mac_of(node.gateway),
            &format!("{}/{}", node.gateway, node.subnet.prefix_len()),
        ]));
        out.extend(router_lsp(n, &format!("stor-{n}"), &rtos, &[]));
        // Management port.
        let mgmt = node.mgmt_port();
        let mgmt_addr = format!("{} {}", node.mgmt_mac, node.mgmt_ip);
        out.push(cmd(&["lsp-add", n, &mgmt]));
        out.push(cmd(&["lsp-set-addresses", &mgmt, &mgmt_addr]));
        // Pods.
        for pod in layout.pods_on(n) {
            let addr = format!("{} {}", pod.mac, pod.ip);
            out.push(cmd(&["lsp-add", n, &pod.lsp]));
            out.push(cmd(&["lsp-set-addresses", &pod.lsp, &addr]));
            out.push(cmd(&["lsp-set-port-security", &pod.lsp, &addr]));
        }
        // Gateway router.
        out.push(cmd(&["lr-add", &gr]));
        out.push(cmd(&[
            "set",
            "logical_router",
            &gr,
            &format!("options:chassis={n}"),
            "options:lb_force_snat_ip=router_ip",
            "options:snat-ct-zone=0",
            "options:always_learn_from_arp_request=false",
            "options:dynamic_neigh_routers=true",
            &format!("external_ids:physical_ip={node_ip}"),
            &format!("external_ids:physical_ips={node_ip}"),
        ]));
        let rtoj = format!("rtoj-{gr}");
        out.push(cmd(&[
            "lrp-add",
            &gr,
            &rtoj,
            &mac_of(node.join_ip.addr()),
            &node.join_ip.to_string(),
        ]));
        out.extend(router_lsp(JOIN_SWITCH, &format!("jtor-{gr}"), &rtoj, &[]));
        // External switch: the GR's port and the localnet port to br-ex.
        out.push(cmd(&["ls-add", &ext]));
        let rtoe = format!("rtoe-{gr}");
        out.push(cmd(&[
            "lrp-add",
            &gr,
            &rtoe,
            &node.external_mac,
            &node.node_ip.to_string(),
        ]));
        out.extend(router_lsp(
            &ext,
            &format!("etor-{gr}"),
            &rtoe,
            &["nat-addresses=router", "exclude-lb-vips-from-garp=true"],
        ));
        let localnet = node.localnet_port();
        out.push(cmd(&["lsp-add", &ext, &localnet]));
        out.push(cmd(&["lsp-set-type", &localnet, "localnet"]));
        out.push(cmd(&["lsp-set-addresses", &localnet, "unknown"]));
        out.push(cmd(&[
            "lsp-set-options",
            &localnet,
            &format!("network_name={PHYSNET}"),
        ]));
        // Routes, SNAT and the pod -> own node IP policy.
        out.push(cmd(&[
            "lr-route-add",
            &gr,
            &cluster,
            &CLUSTER_ROUTER_JOIN_IP.to_string(),
        ]));
        out.push(cmd(&[
            "lr-route-add",
            &gr,
            "0.0.0.0/0",
            &EXTERNAL_GATEWAY.to_string(),
            &rtoe,
        ]));
        out.push(cmd(&[
            "--policy=src-ip",
            "lr-route-add",
            CLUSTER_ROUTER,
            &subnet,
            &join_ip,
        ]));
        out.push(cmd(&["lr-nat-add", &gr, "snat", &node_ip, &cluster]));
        out.push(cmd(&[
            "lr-policy-add",
            CLUSTER_ROUTER,
            "1004",
            &format!("inport == \"{rtos}\" && ip4.dst == {node_ip} /* {n} */"),
            "reroute",
            &node.mgmt_ip.to_string(),
        ]));
    }
    out
}

/// Joins commands into one `ovn-nbctl` argument list (one transaction).
pub fn batch_args(commands: &[NbCommand]) -> Vec<String> {
    let mut args = Vec::new();
    for command in commands {
        args.push("--".to_string());
        args.extend(command.iter().cloned());
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::ClusterSpec;

    fn has(commands: &[NbCommand], words: &[&str]) -> bool {
        commands.iter().any(|c| c == &cmd(words))
    }

    #[test]
    fn the_topology_has_ovnkube_names_and_routes() {
        let layout = ClusterSpec::two_nodes()
            .pod("prod", "web", "node2")
            .layout()
            .unwrap();
        let c = topology_commands(&layout);
        assert!(has(&c, &["lr-add", "ovn_cluster_router"]));
        assert!(has(&c, &["lr-add", "GR_node2"]));
        assert!(has(
            &c,
            &[
                "lrp-add",
                "GR_node2",
                "rtoj-GR_node2",
                "0a:58:64:40:00:03",
                "100.64.0.3/16"
            ]
        ));
        assert!(has(
            &c,
            &[
                "lrp-add",
                "ovn_cluster_router",
                "rtos-node1",
                "0a:58:0a:f4:00:01",
                "10.244.0.1/24"
            ]
        ));
        assert!(has(
            &c,
            &[
                "lrp-add",
                "GR_node1",
                "rtoe-GR_node1",
                "0a:58:ac:12:00:02",
                "172.18.0.2/24"
            ]
        ));
        assert!(has(&c, &["lsp-add", "node2", "k8s-node2"]));
        assert!(has(
            &c,
            &[
                "lsp-set-addresses",
                "k8s-node2",
                "0a:58:0a:f4:01:02 10.244.1.2"
            ]
        ));
        assert!(has(
            &c,
            &[
                "lsp-set-addresses",
                "prod_web",
                "0a:58:0a:f4:01:03 10.244.1.3"
            ]
        ));
        assert!(has(
            &c,
            &["lsp-set-options", "br-ex_node1", "network_name=physnet"]
        ));
        assert!(has(
            &c,
            &["lr-route-add", "GR_node1", "10.244.0.0/16", "100.64.0.1"]
        ));
        assert!(has(
            &c,
            &[
                "lr-route-add",
                "GR_node2",
                "0.0.0.0/0",
                "172.18.0.1",
                "rtoe-GR_node2"
            ]
        ));
        assert!(has(
            &c,
            &[
                "--policy=src-ip",
                "lr-route-add",
                "ovn_cluster_router",
                "10.244.1.0/24",
                "100.64.0.3"
            ]
        ));
        assert!(has(
            &c,
            &[
                "lr-nat-add",
                "GR_node2",
                "snat",
                "172.18.0.3",
                "10.244.0.0/16"
            ]
        ));
        assert!(
            c.iter()
                .any(|w| w.first().map(String::as_str) == Some("set")
                    && w.contains(&"options:chassis=node1".to_string()))
        );
        let args = batch_args(&c[..2]);
        assert_eq!(
            args,
            ["--", "lr-add", "ovn_cluster_router", "--", "ls-add", "join"]
        );
    }
}
