//! `kube-egress controller --dataplane ovn --once` on a real mini OVN-Kubernetes cluster (two
//! chassis, userspace datapath, Geneve): the rows it writes carry real packets out with the
//! egress IP, failover moves them and the traffic follows, and a restart changes no row.
//! Needs root and the OVN/OVS packages; skipped with a message otherwise.

use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Output};

use kube_egress_ovn_testbed::{ClusterSpec, OvnCluster, manifests, unavailable_reason};

const EGRESS_IP: &str = "172.18.0.100";

fn controller(cluster: &OvnCluster, dir: &Path, extra: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_kube-egress"))
        .args(["controller", "--dataplane", "ovn", "--ovn-nb"])
        .arg(cluster.nb_address())
        .arg("--manifests")
        .arg(dir)
        .args(["--cluster-cidr", "10.244.0.0/16", "--once"])
        .args(extra)
        .output()
        .expect("run kube-egress");
    assert!(
        output.status.success(),
        "kube-egress controller {extra:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    cluster.wait_hv().unwrap();
    output
}

/// The rows of every table the Egress IP mapping writes or links from, with their uuids, in a
/// stable order: equal snapshots mean no row was created, deleted or changed.
fn rows(cluster: &OvnCluster) -> Vec<String> {
    let mut all = Vec::new();
    for table in [
        "Logical_Router_Policy",
        "NAT",
        "Address_Set",
        "QoS",
        "Logical_Router",
        "Logical_Switch",
    ] {
        let out = cluster.nbctl(&["list", table]).unwrap();
        let mut records: Vec<String> = out
            .split("\n\n")
            .map(|r| format!("{table}: {}", r.trim()))
            .collect();
        records.sort();
        all.extend(records);
    }
    all
}

/// The gateway routers with a NAT row for the egress IP.
fn hosting_routers(cluster: &OvnCluster) -> Vec<String> {
    cluster
        .layout()
        .nodes
        .iter()
        .map(|n| n.gateway_router())
        .filter(|gr| {
            cluster
                .nbctl(&["lr-nat-list", gr])
                .unwrap()
                .contains(EGRESS_IP)
        })
        .collect()
}

fn assert_served(cluster: &OvnCluster, pods: &[&str], node: &str) {
    let eip: IpAddr = EGRESS_IP.parse().unwrap();
    for pod in pods {
        let egress = cluster.request(pod).unwrap();
        assert_eq!(egress.source, eip, "pod {pod}: {egress:?}");
        assert_eq!(egress.uplink(), Some(node), "pod {pod}: {egress:?}");
    }
}

#[test]
fn controller_rows_carry_packets_through_failover_and_a_restart_changes_nothing() {
    if let Some(reason) = unavailable_reason() {
        eprintln!("SKIPPED: the OVN controller data-plane test {reason}");
        return;
    }
    let cluster = OvnCluster::start(
        &ClusterSpec::two_nodes()
            .namespace_labels("prod", &[("env", "prod")])
            .pod("prod", "a", "node1")
            .pod("prod", "b", "node2")
            .pod("dev", "c", "node2"),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    cluster.write_manifests(dir.path()).unwrap();
    let eip = manifests::egress_ip(
        "eip-prod",
        &[EGRESS_IP.parse().unwrap()],
        &[("env", "prod")],
        &[],
    );
    std::fs::write(
        dir.path().join("egressips.yaml"),
        manifests::to_yaml(&[eip]).unwrap(),
    )
    .unwrap();

    controller(&cluster, dir.path(), &[]);
    let hosts = hosting_routers(&cluster);
    assert_eq!(hosts.len(), 1, "{hosts:?}");
    let first = hosts[0].strip_prefix("GR_").unwrap().to_string();
    let other = if first == "node1" { "node2" } else { "node1" };
    // Served pods on both nodes leave with the egress IP through the egress node's GR; the
    // unserved pod keeps its node's SNAT.
    assert_served(&cluster, &["a", "b"], &first);
    let c = cluster.request("c").unwrap();
    assert_eq!(c.source.to_string(), "172.18.0.3");
    assert_eq!(c.uplink(), Some("node2"));

    // A restart of the controller with the same inputs changes no row.
    let before = rows(&cluster);
    controller(&cluster, dir.path(), &[]);
    assert_eq!(
        rows(&cluster),
        before,
        "a restart of the controller changed rows"
    );
    assert_served(&cluster, &["a", "b"], &first);

    // Failover: the egress node fails its probe; NAT and nexthops move and traffic follows.
    controller(&cluster, dir.path(), &["--unreachable", &first]);
    assert_eq!(hosting_routers(&cluster), vec![format!("GR_{other}")]);
    let policies = cluster
        .nbctl(&["lr-policy-list", "ovn_cluster_router"])
        .unwrap();
    let join = |n: &str| cluster.node(n).unwrap().join_ip.addr().to_string();
    assert!(policies.contains(&join(other)), "{policies}");
    assert!(
        !policies
            .lines()
            .any(|l| l.contains("reroute") && l.contains(&join(&first)) && !l.contains("1004")),
        "{policies}"
    );
    assert_served(&cluster, &["a", "b"], other);

    // The failed node recovers: the controller is stateless, so the plan (and the rows) go back.
    controller(&cluster, dir.path(), &[]);
    assert_eq!(hosting_routers(&cluster), vec![format!("GR_{first}")]);
    assert_served(&cluster, &["a", "b"], &first);
}
