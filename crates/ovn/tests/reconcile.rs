//! Seed 001's example planned by the engine and reconciled into a real Northbound database;
//! checked with ovn-nbctl.

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube_egress_api::EgressIP;
use kube_egress_engine::{
    Config, EgressIpInfo, Engine, NamespaceInfo, NodeInfo, PodInfo, Snapshot,
};
use kube_egress_ovn::server::NbServer;
use kube_egress_ovn::{Desired, OvnNode, Reconciler, cluster_state, default_join_subnets, desired};
use serde_json::json;

const NODES: [(&str, &str, &str, &str); 3] = [
    (
        "ovn-control-plane",
        "172.18.0.4",
        "100.64.0.2",
        "10.244.0.0/24",
    ),
    ("ovn-worker", "172.18.0.2", "100.64.0.3", "10.244.1.0/24"),
    ("ovn-worker2", "172.18.0.3", "100.64.0.4", "10.244.2.0/24"),
];

fn node(name: &str, ip: &str, join: &str, subnet: &str) -> Node {
    serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "labels": {"k8s.ovn.org/egress-assignable": ""},
            "annotations": {
                "k8s.ovn.org/node-primary-ifaddr": format!("{{\"ipv4\":\"{ip}/16\"}}"),
                "k8s.ovn.org/host-cidrs": format!("[\"{ip}/16\"]"),
                "k8s.ovn.org/node-gateway-router-lrp-ifaddrs": format!("{{\"default\":{{\"ipv4\":\"{join}/16\"}}}}"),
                "k8s.ovn.org/node-subnets": format!("{{\"default\":[\"{subnet}\"]}}"),
            }
        },
        "spec": {"podCIDR": subnet, "podCIDRs": [subnet]},
        "status": {
            "conditions": [{"type": "Ready", "status": "True"}],
            "addresses": [{"type": "InternalIP", "address": ip}]
        }
    }))
    .unwrap()
}

/// Seed 001: EgressIP egressip-prod (172.18.0.33 on ovn-worker, 172.18.0.44 on ovn-worker2)
/// selecting `app: web` pods outside `environment: development` namespaces.
struct Cluster {
    nodes: Vec<Node>,
    namespaces: Vec<Namespace>,
    pods: Vec<Pod>,
    egress_ips: Vec<EgressIP>,
    unreachable: Vec<String>,
}

fn seed_001() -> Cluster {
    let pod = |ns: &str, name: &str, node: &str, ip: &str, app: &str| -> Pod {
        serde_json::from_value(json!({
            "metadata": {"namespace": ns, "name": name, "labels": {"app": app}},
            "spec": {"nodeName": node, "containers": []},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
        }))
        .unwrap()
    };
    Cluster {
        nodes: NODES
            .iter()
            .map(|(n, ip, join, subnet)| node(n, ip, join, subnet))
            .collect(),
        namespaces: vec![
            serde_json::from_value(json!({"metadata": {"name": "prod", "labels": {"environment": "production"}}})).unwrap(),
            serde_json::from_value(json!({"metadata": {"name": "dev", "labels": {"environment": "development"}}})).unwrap(),
        ],
        pods: vec![
            pod("prod", "web-1", "ovn-worker", "10.244.1.3", "web"),
            pod("prod", "db-1", "ovn-worker", "10.244.1.4", "db"),
            pod("dev", "web-2", "ovn-worker2", "10.244.2.5", "web"),
        ],
        egress_ips: vec![serde_json::from_value(json!({
            "apiVersion": "k8s.ovn.org/v1", "kind": "EgressIP",
            "metadata": {"name": "egressip-prod", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {
                "egressIPs": ["172.18.0.33", "172.18.0.44"],
                "namespaceSelector": {"matchExpressions": [{"key": "environment", "operator": "NotIn", "values": ["development"]}]},
                "podSelector": {"matchLabels": {"app": "web"}}
            },
            "status": {"items": [
                {"node": "ovn-worker", "egressIP": "172.18.0.33"},
                {"node": "ovn-worker2", "egressIP": "172.18.0.44"}
            ]}
        }))
        .unwrap()],
        unreachable: vec![],
    }
}

fn plan(cluster: &Cluster, options: &kube_egress_ovn::Options) -> Desired {
    let pods: Vec<PodInfo> = cluster.pods.iter().map(PodInfo::from_pod).collect();
    let snapshot = Snapshot {
        nodes: cluster.nodes.iter().map(NodeInfo::from_node).collect(),
        namespaces: cluster
            .namespaces
            .iter()
            .map(NamespaceInfo::from_namespace)
            .collect(),
        pods: pods.clone(),
        egress_ips: cluster
            .egress_ips
            .iter()
            .map(EgressIpInfo::from_egress_ip)
            .collect(),
        service_cidrs: vec![],
        unreachable: cluster.unreachable.clone(),
    };
    let engine = Engine::load(Config::default(), snapshot);
    let state = cluster_state(
        &engine,
        &pods,
        cluster.nodes.iter().map(OvnNode::from_node).collect(),
        vec!["10.244.0.0/16".parse().unwrap()],
        default_join_subnets(),
    );
    desired(&state, options)
}

/// ovnkube's topology rows that our rows hang off.
fn topology(nb: &NbServer) {
    let mut args: Vec<String> = vec!["lr-add".into(), "ovn_cluster_router".into()];
    for (name, ..) in NODES {
        for a in [
            "--".to_string(),
            "lr-add".into(),
            format!("GR_{name}"),
            "--".into(),
            "ls-add".into(),
            name.to_string(),
        ] {
            args.push(a);
        }
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    nb.nbctl(&args).unwrap();
}

/// Lines of ovn-nbctl output with runs of spaces squeezed.
fn squeeze(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect()
}

fn policies(nb: &NbServer) -> Vec<String> {
    squeeze(&nb.nbctl(&["lr-policy-list", "ovn_cluster_router"]).unwrap())
}

fn nats(nb: &NbServer, router: &str) -> Vec<String> {
    squeeze(&nb.nbctl(&["lr-nat-list", router]).unwrap())
        .into_iter()
        .skip(1)
        .collect()
}

/// Every row of the tables we write, with UUIDs, to compare before and after.
fn dump(nb: &NbServer) -> String {
    [
        "Logical_Router_Policy",
        "NAT",
        "Address_Set",
        "QoS",
        "Logical_Router",
    ]
    .iter()
    .map(|t| nb.nbctl(&["list", t]).unwrap())
    .collect::<Vec<_>>()
    .join("\n")
}

fn hashed(set: &str) -> String {
    kube_egress_ovn::names::egress_ip_address_set(set, kube_egress_engine::Family::V4).0
}

#[tokio::test]
async fn seed_001_is_programmed_like_ovnkube_and_kept_in_line() {
    let nb = NbServer::start().unwrap();
    topology(&nb);
    // Rows of others: a 1004 policy, a subnet SNAT and an address set without our owner.
    nb.nbctl(&[
        "lr-policy-add",
        "ovn_cluster_router",
        "1004",
        "inport == \"rtos-ovn-worker\" && ip4.dst == 172.18.0.2 /* ovn-worker */",
        "reroute",
        "10.244.1.2",
    ])
    .unwrap();
    nb.nbctl(&[
        "lr-nat-add",
        "GR_ovn-worker",
        "snat",
        "172.18.0.2",
        "10.244.0.0/16",
    ])
    .unwrap();
    nb.nbctl(&[
        "create",
        "Address_Set",
        "name=foreign",
        "addresses=\"10.9.9.9\"",
        "external_ids:k8s.ovn.org/owner-type=EgressFirewallDNS",
        "external_ids:k8s.ovn.org/owner-controller=default-network-controller",
    ])
    .unwrap();
    let foreign = |nb: &NbServer| {
        let p = policies(nb);
        assert!(
            p.iter()
                .any(|l| l.starts_with("1004 inport == \"rtos-ovn-worker\"")),
            "{p:?}"
        );
        assert!(nats(nb, "GR_ovn-worker").contains(&"snat 172.18.0.2 10.244.0.0/16".to_string()));
        assert_eq!(
            nb.nbctl(&["get", "Address_Set", "foreign", "addresses"])
                .unwrap()
                .trim(),
            "[\"10.9.9.9\"]"
        );
    };

    let mut reconciler = Reconciler::connect(&nb.tcp()).await.unwrap();
    let options = reconciler.options();
    let cluster = seed_001();
    let want = plan(&cluster, &options);
    assert!(want.problems.is_empty(), "{:?}", want.problems);
    let report = reconciler.reconcile(&want).await.unwrap();
    assert_eq!(report.transactions, 1);
    assert!(report.operations > 0);

    let served = hashed("egressip-served-pods");
    let node_ips = hashed("node-ips");
    let svc = kube_egress_ovn::names::egress_service_address_set(kube_egress_engine::Family::V4).0;
    assert_eq!(
        policies(&nb),
        vec![
            "Routing Policies".to_string(),
            "1004 inport == \"rtos-ovn-worker\" && ip4.dst == 172.18.0.2 /* ovn-worker */ reroute 10.244.1.2".into(),
            format!("102 (ip4.src == ${served} || ip4.src == ${svc}) && ip4.dst == ${node_ips} allow pkt_mark=1008"),
            "102 ip4.src == 10.244.0.0/16 && ip4.dst == 10.244.0.0/16 allow".into(),
            "102 ip4.src == 10.244.0.0/16 && ip4.dst == 100.64.0.0/16 allow".into(),
            "102 pkt.mark == 42 allow".into(),
            "100 ip4.src == 10.244.1.3 reroute 100.64.0.3, 100.64.0.4".into(),
        ]
    );
    assert_eq!(
        nats(&nb, "GR_ovn-worker"),
        vec![
            "snat 172.18.0.2 10.244.0.0/16",
            "snat 172.18.0.33 10.244.1.3"
        ]
    );
    assert_eq!(
        nats(&nb, "GR_ovn-worker2"),
        vec!["snat 172.18.0.44 10.244.1.3"]
    );
    assert!(nats(&nb, "GR_ovn-control-plane").is_empty());
    assert_eq!(
        nb.nbctl(&[
            "--bare",
            "--columns=logical_port",
            "find",
            "NAT",
            "external_ip=172.18.0.44"
        ])
        .unwrap()
        .trim(),
        "k8s-ovn-worker2"
    );
    assert_eq!(
        nb.nbctl(&["get", "Address_Set", &served, "addresses"])
            .unwrap()
            .trim(),
        "[\"10.244.1.3\"]"
    );
    assert_eq!(
        nb.nbctl(&["get", "Address_Set", &node_ips, "addresses"])
            .unwrap()
            .trim(),
        "[\"172.18.0.2\", \"172.18.0.3\", \"172.18.0.4\"]"
    );
    assert_eq!(
        nb.nbctl(&[
            "get",
            "Address_Set",
            &served,
            "external_ids:\"k8s.ovn.org/id\""
        ])
        .unwrap()
        .trim(),
        "\"default-network-controller:EgressIP:egressip-served-pods:v4:default\""
    );
    assert_eq!(
        nb.nbctl(&["get", "Address_Set", &svc, "addresses"])
            .unwrap()
            .trim(),
        "[]"
    );
    foreign(&nb);

    // The same input again writes nothing.
    let report = reconciler.reconcile(&want).await.unwrap();
    assert_eq!(
        (report.operations, report.transactions),
        (0, 0),
        "{:?}",
        report.changes
    );

    // A restarted reconciler adopts every row as it is.
    let before = dump(&nb);
    drop(reconciler);
    let mut reconciler = Reconciler::connect(&nb.unix()).await.unwrap();
    let report = reconciler.reconcile(&want).await.unwrap();
    assert_eq!(report.operations, 0, "{:?}", report.changes);
    assert_eq!(dump(&nb), before);

    // Failover: ovn-worker fails its probe; 172.18.0.33 moves to ovn-control-plane, and with it
    // the SNAT and the next hop.
    let mut failed = seed_001();
    failed.unreachable = vec!["ovn-worker".into()];
    let want = plan(&failed, &options);
    let report = reconciler.reconcile(&want).await.unwrap();
    assert_eq!(report.transactions, 1);
    assert!(
        policies(&nb)
            .contains(&"100 ip4.src == 10.244.1.3 reroute 100.64.0.2, 100.64.0.4".to_string())
    );
    assert_eq!(
        nats(&nb, "GR_ovn-control-plane"),
        vec!["snat 172.18.0.33 10.244.1.3"]
    );
    assert_eq!(
        nats(&nb, "GR_ovn-worker"),
        vec!["snat 172.18.0.2 10.244.0.0/16"]
    );
    assert_eq!(
        nats(&nb, "GR_ovn-worker2"),
        vec!["snat 172.18.0.44 10.244.1.3"]
    );
    assert!(reconciler.verify(&want).unwrap().is_empty());
    foreign(&nb);

    // The EgressIP goes away: every row of the pod goes; the global rows and foreign rows stay.
    let mut gone = seed_001();
    gone.egress_ips.clear();
    let want = plan(&gone, &options);
    reconciler.reconcile(&want).await.unwrap();
    assert!(!policies(&nb).iter().any(|l| l.starts_with("100 ")));
    assert_eq!(policies(&nb).len(), 6);
    assert!(nats(&nb, "GR_ovn-control-plane").is_empty() && nats(&nb, "GR_ovn-worker2").is_empty());
    assert_eq!(
        nb.nbctl(&["get", "Address_Set", &served, "addresses"])
            .unwrap()
            .trim(),
        "[]"
    );
    foreign(&nb);
}

#[tokio::test]
async fn stale_rows_are_repaired_on_start() {
    let nb = NbServer::start().unwrap();
    topology(&nb);
    let owner = [
        "external_ids:k8s.ovn.org/owner-controller=default-network-controller",
        "external_ids:k8s.ovn.org/owner-type=EgressIP",
    ];
    let create = |table: &str, parent: (&str, &str, &str), columns: &[&str]| {
        let mut args = vec!["--", "--id=@r", "create", table];
        args.extend_from_slice(columns);
        args.extend_from_slice(&owner);
        args.extend_from_slice(&["--", "add", parent.0, parent.1, parent.2, "@r"]);
        nb.nbctl(&args).unwrap();
    };
    let name = "external_ids:k8s.ovn.org/name=egressip-prod_prod/web-1";
    // A reroute with a dangling next hop (a node that no longer hosts the IP).
    create(
        "Logical_Router_Policy",
        ("Logical_Router", "ovn_cluster_router", "policies"),
        &[
            "priority=100",
            "match=\"ip4.src == 10.244.1.3\"",
            "action=reroute",
            "nexthops=\"100.64.0.3\",\"100.64.0.9\"",
            name,
        ],
    );
    // A reroute of a pod that is gone.
    create(
        "Logical_Router_Policy",
        ("Logical_Router", "ovn_cluster_router", "policies"),
        &[
            "priority=100",
            "match=\"ip4.src == 10.244.1.77\"",
            "action=reroute",
            "nexthops=\"100.64.0.3\"",
            "external_ids:k8s.ovn.org/name=egressip-prod_prod/gone",
        ],
    );
    // A SNAT on the wrong node, and one with the wrong egress IP.
    create(
        "NAT",
        ("Logical_Router", "GR_ovn-control-plane", "nat"),
        &[
            "type=snat",
            "external_ip=172.18.0.33",
            "logical_ip=10.244.1.3",
            "logical_port=k8s-ovn-control-plane",
            name,
        ],
    );
    create(
        "NAT",
        ("Logical_Router", "GR_ovn-worker2", "nat"),
        &[
            "type=snat",
            "external_ip=172.18.0.99",
            "logical_ip=10.244.1.3",
            "logical_port=k8s-ovn-worker2",
            name,
        ],
    );
    // A served-pods set holding a stale pod IP.
    let served = hashed("egressip-served-pods");
    nb.nbctl(&[
        "create",
        "Address_Set",
        &format!("name={served}"),
        "addresses=\"10.244.1.77\"",
        owner[0],
        owner[1],
    ])
    .unwrap();

    let mut reconciler = Reconciler::connect(&nb.unix()).await.unwrap();
    let want = plan(&seed_001(), &reconciler.options());
    let report = reconciler.reconcile(&want).await.unwrap();
    assert_eq!(report.transactions, 1);
    let p = policies(&nb);
    assert!(
        p.contains(&"100 ip4.src == 10.244.1.3 reroute 100.64.0.3, 100.64.0.4".to_string()),
        "{p:?}"
    );
    assert!(!p.iter().any(|l| l.contains("10.244.1.77")), "{p:?}");
    assert!(nats(&nb, "GR_ovn-control-plane").is_empty());
    assert_eq!(
        nats(&nb, "GR_ovn-worker2"),
        vec!["snat 172.18.0.44 10.244.1.3"]
    );
    assert_eq!(
        nats(&nb, "GR_ovn-worker"),
        vec!["snat 172.18.0.33 10.244.1.3"]
    );
    assert_eq!(
        nb.nbctl(&["get", "Address_Set", &served, "addresses"])
            .unwrap()
            .trim(),
        "[\"10.244.1.3\"]"
    );
    assert_eq!(reconciler.reconcile(&want).await.unwrap().operations, 0);
}

#[tokio::test]
async fn missing_topology_is_reported_not_invented() {
    let nb = NbServer::start().unwrap();
    nb.nbctl(&["lr-add", "ovn_cluster_router"]).unwrap();
    let mut reconciler = Reconciler::connect(&nb.tcp()).await.unwrap();
    let want = plan(&seed_001(), &reconciler.options());
    let report = reconciler.reconcile(&want).await.unwrap();
    assert!(
        report.problems.iter().any(
            |p| p == "logical router GR_ovn-worker does not exist: 1 SNAT rows are not written"
        ),
        "{:?}",
        report.problems
    );
    assert!(
        nb.nbctl(&["lr-list"]).unwrap().lines().count() == 1,
        "no router is created"
    );
    assert_eq!(
        nb.nbctl(&["--bare", "--columns=_uuid", "list", "NAT"])
            .unwrap()
            .trim(),
        ""
    );
    assert!(
        policies(&nb)
            .contains(&"100 ip4.src == 10.244.1.3 reroute 100.64.0.3, 100.64.0.4".to_string())
    );
}
