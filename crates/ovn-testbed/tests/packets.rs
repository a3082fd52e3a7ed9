//! Real packets through OVN (userspace datapath, two chassis, Geneve between them): baseline
//! SNAT, an egress IP programmed the way ovnkube programs it, and failover. Needs root and the
//! OVN/OVS packages; skipped with a message otherwise.

use std::net::{IpAddr, SocketAddr};

use kube_egress_ovn_testbed::{ClusterSpec, OvnCluster, unavailable_reason};
use kube_egress_testbed::HttpServer;

fn available() -> bool {
    match unavailable_reason() {
        Some(reason) => {
            eprintln!("SKIPPED: the OVN data-plane tests {reason}");
            false
        }
        None => true,
    }
}

fn start(spec: &ClusterSpec) -> OvnCluster {
    OvnCluster::start(spec).unwrap_or_else(|e| panic!("starting the OVN cluster: {e}"))
}

/// pod `a` on node1, pods `b` and `c` on node2; `a` and `b` are in namespace `prod`.
fn three_pods() -> ClusterSpec {
    ClusterSpec::two_nodes()
        .namespace_labels("prod", &[("env", "prod")])
        .pod("prod", "a", "node1")
        .pod("prod", "b", "node2")
        .pod("dev", "c", "node2")
}

fn v4(s: &str) -> IpAddr {
    s.parse().unwrap()
}

const EGRESS_IP: &str = "172.18.0.100";

/// What ovnkube writes for one EgressIP hosted on one node: the 102 allow policies (pod → pod,
/// pod → join subnet, reply traffic `pkt.mark == 42`, served pods → node IPs with
/// `pkt_mark=1008` through two address sets), and per served pod a 100 reroute to the egress
/// node's GR join IP and an SNAT on `GR_<egressNode>` with `logical_port=k8s-<egressNode>`.
/// Everything in one `ovn-nbctl` transaction; non-root rows are linked from their router.
fn program_egress_ip(cluster: &OvnCluster, egress_node: &str, pods: &[&str]) {
    let node = cluster.node(egress_node).unwrap();
    let gr = node.gateway_router();
    let join_ip = node.join_ip.addr().to_string();
    let pod_ips: Vec<String> = pods
        .iter()
        .map(|p| cluster.pod(p).unwrap().ip.to_string())
        .collect();
    let node_ips: Vec<String> = cluster
        .layout()
        .nodes
        .iter()
        .map(|n| n.node_ip.addr().to_string())
        .collect();
    let set = |ips: &[String]| {
        format!(
            "addresses=[{}]",
            ips.iter()
                .map(|i| format!("\"{i}\""))
                .collect::<Vec<_>>()
                .join(",")
        )
    };
    let mut args: Vec<String> = vec![
        "--".into(),
        "create".into(),
        "Address_Set".into(),
        "name=egressip_served_pods_v4".into(),
        "external_ids:k8s.ovn.org/name=egressip-served-pods".into(),
        set(&pod_ips),
        "--".into(),
        "create".into(),
        "Address_Set".into(),
        "name=node_ips_v4".into(),
        "external_ids:k8s.ovn.org/name=node-ips".into(),
        set(&node_ips),
    ];
    let allows = [
        ("ip4.src == 10.244.0.0/16 && ip4.dst == 10.244.0.0/16", None),
        ("ip4.src == 10.244.0.0/16 && ip4.dst == 100.64.0.0/16", None),
        ("pkt.mark == 42", None),
        (
            "ip4.src == $egressip_served_pods_v4 && ip4.dst == $node_ips_v4",
            Some("options:pkt_mark=1008"),
        ),
    ];
    for (i, (m, option)) in allows.iter().enumerate() {
        let id = format!("@allow{i}");
        args.extend([
            "--".into(),
            format!("--id={id}"),
            "create".into(),
            "Logical_Router_Policy".into(),
            "priority=102".into(),
            format!("match=\"{m}\""),
            "action=allow".into(),
        ]);
        args.extend(option.map(str::to_string));
        args.extend([
            "--".into(),
            "add".into(),
            "Logical_Router".into(),
            "ovn_cluster_router".into(),
            "policies".into(),
            id,
        ]);
    }
    for (i, (pod, ip)) in pods.iter().zip(&pod_ips).enumerate() {
        let name = format!("external_ids:k8s.ovn.org/name=eip_prod/{pod}");
        args.extend([
            "--".into(),
            format!("--id=@reroute{i}"),
            "create".into(),
            "Logical_Router_Policy".into(),
            "priority=100".into(),
            format!("match=\"ip4.src == {ip}\""),
            "action=reroute".into(),
            format!("nexthops=\"{join_ip}\""),
            name.clone(),
            "--".into(),
            "add".into(),
            "Logical_Router".into(),
            "ovn_cluster_router".into(),
            "policies".into(),
            format!("@reroute{i}"),
            "--".into(),
            format!("--id=@nat{i}"),
            "create".into(),
            "NAT".into(),
            "type=snat".into(),
            format!("external_ip=\"{EGRESS_IP}\""),
            format!("logical_ip=\"{ip}\""),
            format!("logical_port=\"{}\"", node.mgmt_port()),
            name,
            "--".into(),
            "add".into(),
            "Logical_Router".into(),
            gr.clone(),
            "nat".into(),
            format!("@nat{i}"),
        ]);
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    cluster.nbctl(&refs).unwrap();
    cluster.wait_hv().unwrap();
}

/// Failover the ovnkube way: the served pods' reroute policies get the new egress node's join
/// IP as nexthop, their SNATs leave `GR_<from>` and are created on `GR_<to>`; one transaction.
fn move_egress_ip(cluster: &OvnCluster, from: &str, to: &str) {
    let from = cluster.node(from).unwrap();
    let to = cluster.node(to).unwrap();
    let uuids = |table: &str, condition: &str| -> Vec<String> {
        cluster
            .nbctl(&["--bare", "--columns=_uuid", "find", table, condition])
            .unwrap()
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    let policies = uuids("Logical_Router_Policy", "priority=100");
    let nats = uuids("NAT", &format!("external_ip=\"{EGRESS_IP}\""));
    assert!(!policies.is_empty() && !nats.is_empty());
    let mut args: Vec<String> = Vec::new();
    for p in &policies {
        args.extend([
            "--".into(),
            "set".into(),
            "Logical_Router_Policy".into(),
            p.clone(),
            format!("nexthops=\"{}\"", to.join_ip.addr()),
        ]);
    }
    for (i, nat) in nats.iter().enumerate() {
        let logical_ip = cluster
            .nbctl(&["get", "NAT", nat, "logical_ip"])
            .unwrap()
            .trim()
            .to_string();
        let name = cluster
            .nbctl(&["get", "NAT", nat, "external_ids:k8s.ovn.org/name"])
            .unwrap()
            .trim()
            .to_string();
        args.extend([
            "--".into(),
            "remove".into(),
            "Logical_Router".into(),
            from.gateway_router(),
            "nat".into(),
            nat.clone(),
            "--".into(),
            format!("--id=@nat{i}"),
            "create".into(),
            "NAT".into(),
            "type=snat".into(),
            format!("external_ip=\"{EGRESS_IP}\""),
            format!("logical_ip={logical_ip}"),
            format!("logical_port=\"{}\"", to.mgmt_port()),
            format!("external_ids:k8s.ovn.org/name={name}"),
            "--".into(),
            "add".into(),
            "Logical_Router".into(),
            to.gateway_router(),
            "nat".into(),
            format!("@nat{i}"),
        ]);
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    cluster.nbctl(&refs).unwrap();
    cluster.wait_hv().unwrap();
}

/// The NAT rows of a router as `(type, external_ip, logical_ip)` of `lr-nat-list`.
fn nats(cluster: &OvnCluster, router: &str) -> Vec<(String, String, String)> {
    let out = cluster.nbctl(&["lr-nat-list", router]).unwrap();
    let mut rows: Vec<_> = out
        .lines()
        .skip(1)
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.len() >= 3).then(|| (w[0].to_string(), w[1].to_string(), w[2].to_string()))
        })
        .collect();
    rows.sort();
    rows
}

#[test]
fn pods_leave_through_their_own_node_and_reach_each_other_directly() {
    if !available() {
        return;
    }
    let cluster = start(&three_pods());
    let node1_ip = v4("172.18.0.2");
    let node2_ip = v4("172.18.0.3");
    for (pod, source, uplink) in [
        ("a", node1_ip, "node1"),
        ("b", node2_ip, "node2"),
        ("c", node2_ip, "node2"),
    ] {
        let egress = cluster.request(pod).unwrap();
        assert_eq!(egress.source, source, "pod {pod}: {egress:?}");
        assert_eq!(egress.uplink(), Some(uplink), "pod {pod}: {egress:?}");
    }
    assert_eq!(cluster.server().seen(), vec![node1_ip, node2_ip, node2_ip]);

    // East-west across chassis (Geneve): no SNAT, the pod's own address arrives.
    let b_ns = cluster.pod_netns("b").unwrap();
    let b_ip = cluster.pod("b").unwrap().ip;
    let in_b = HttpServer::start(b_ns, SocketAddr::new(IpAddr::V4(b_ip), 8080)).unwrap();
    let a_ns = cluster.pod_netns("a").unwrap();
    let reply = kube_egress_testbed::http_get(
        a_ns,
        &format!("{b_ip}:8080"),
        std::time::Duration::from_secs(4),
    )
    .unwrap();
    assert_eq!(
        reply.seen_source(),
        Some(IpAddr::V4(cluster.pod("a").unwrap().ip))
    );
    assert_eq!(in_b.seen(), vec![IpAddr::V4(cluster.pod("a").unwrap().ip)]);

    // Helpers name what they do not know.
    let err = cluster.request("nosuch").unwrap_err().to_string();
    assert!(err.contains("no pod called nosuch"), "{err}");
    let err = cluster.vsctl("node9", &["show"]).unwrap_err().to_string();
    assert!(err.contains("no node called node9"), "{err}");
    let err = cluster
        .nbctl(&["lr-nat-list", "GR_node9"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("GR_node9"), "{err}");
    // Both chassis registered, with their Geneve endpoints on br-phy.
    let chassis = cluster
        .sbctl(&["--bare", "--columns=name", "list", "Chassis"])
        .unwrap();
    assert_eq!(chassis.split_whitespace().count(), 2, "{chassis}");
    let encaps = cluster
        .sbctl(&["--bare", "--columns=ip", "list", "Encap"])
        .unwrap();
    assert!(
        encaps.contains("192.168.100.1") && encaps.contains("192.168.100.2"),
        "{encaps}"
    );

    // The management port (host side ovn-k8s-mp0) reaches the pods of its node, as kubelet's
    // probes do, from the management IP.
    let node2 = cluster.node("node2").unwrap();
    let chassis2 = cluster.chassis_netns("node2").unwrap();
    let reply = kube_egress_testbed::http_get(
        chassis2,
        &format!("{b_ip}:8080"),
        std::time::Duration::from_secs(4),
    )
    .unwrap();
    assert_eq!(reply.seen_source(), Some(IpAddr::V4(node2.mgmt_ip)));
}

#[test]
fn an_egress_ip_programmed_the_ovnkube_way_is_the_source_seen_outside() {
    if !available() {
        return;
    }
    let cluster = start(&three_pods());
    // Served: a (on node1, the egress node itself) and b (on node2: rerouted over Geneve).
    program_egress_ip(&cluster, "node1", &["a", "b"]);
    let eip = v4(EGRESS_IP);
    for pod in ["a", "b"] {
        let egress = cluster.request(pod).unwrap();
        assert_eq!(egress.source, eip, "pod {pod}: {egress:?}");
        assert_eq!(egress.uplink(), Some("node1"), "pod {pod}: {egress:?}");
    }
    // c is not served: its own node's SNAT as before.
    let egress = cluster.request("c").unwrap();
    assert_eq!(egress.source, v4("172.18.0.3"));
    assert_eq!(egress.uplink(), Some("node2"));

    let policies = cluster
        .nbctl(&["lr-policy-list", "ovn_cluster_router"])
        .unwrap();
    assert!(policies.contains("pkt_mark=1008"), "{policies}");
    assert_eq!(policies.matches("reroute").count(), 2 + 2, "{policies}"); // + the two 1004s
    assert_eq!(
        nats(&cluster, "GR_node1"),
        vec![
            ("snat".into(), "172.18.0.100".into(), "10.244.0.3".into()),
            ("snat".into(), "172.18.0.100".into(), "10.244.1.3".into()),
            ("snat".into(), "172.18.0.2".into(), "10.244.0.0/16".into()),
        ]
    );
}

#[test]
fn failover_moves_nat_and_nexthops_and_traffic_follows() {
    if !available() {
        return;
    }
    let cluster = start(&three_pods());
    program_egress_ip(&cluster, "node1", &["a", "b"]);
    let eip = v4(EGRESS_IP);
    assert_eq!(cluster.request("b").unwrap().uplink(), Some("node1"));

    move_egress_ip(&cluster, "node1", "node2");
    assert!(nats(&cluster, "GR_node1").iter().all(|n| n.1 != EGRESS_IP));
    assert_eq!(
        nats(&cluster, "GR_node2")
            .iter()
            .filter(|n| n.1 == EGRESS_IP)
            .count(),
        2
    );
    for pod in ["a", "b"] {
        let egress = cluster.request(pod).unwrap();
        assert_eq!(egress.source, eip, "pod {pod}: {egress:?}");
        assert_eq!(egress.uplink(), Some("node2"), "pod {pod}: {egress:?}");
    }

    // And back.
    move_egress_ip(&cluster, "node2", "node1");
    for pod in ["a", "b"] {
        let egress = cluster.request(pod).unwrap();
        assert_eq!(egress.source, eip, "pod {pod}: {egress:?}");
        assert_eq!(egress.uplink(), Some("node1"), "pod {pod}: {egress:?}");
    }
}
