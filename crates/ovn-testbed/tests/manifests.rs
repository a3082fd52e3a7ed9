//! The Kubernetes objects of a cluster read back as typed objects, with the annotations ovnkube
//! sets and the addresses the data plane uses. No root needed.

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube_egress_ovn_testbed::{ClusterSpec, manifests};
use serde::de::DeserializeOwned;
use serde_json::Value;

fn docs<T: DeserializeOwned>(yaml: &str) -> Vec<T> {
    yaml.split("\n---\n")
        .map(|doc| serde_saphyr::from_str(doc).unwrap_or_else(|e| panic!("{e}\n{doc}")))
        .collect()
}

fn annotation(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    key: &str,
) -> Value {
    let text = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .unwrap_or_else(|| panic!("annotation {key} missing"));
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.clone()))
}

#[test]
fn nodes_namespaces_and_pods_carry_what_ovnkube_writes() {
    let layout = ClusterSpec::two_nodes()
        .namespace_labels("prod", &[("env", "prod")])
        .pod_with_labels("prod", "web", "node2", &[("app", "web")])
        .layout()
        .unwrap();
    let files = manifests::cluster_files(&layout).unwrap();
    let names: Vec<&str> = files.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, ["nodes.yaml", "namespaces.yaml", "pods.yaml"]);

    let nodes: Vec<Node> = docs(&files[0].1);
    assert_eq!(nodes.len(), 2);
    let node2 = &nodes[1];
    let meta = &node2.metadata;
    assert_eq!(meta.name.as_deref(), Some("node2"));
    assert!(
        meta.labels
            .as_ref()
            .unwrap()
            .contains_key("k8s.ovn.org/egress-assignable")
    );
    assert_eq!(
        annotation(meta, "k8s.ovn.org/node-primary-ifaddr"),
        serde_json::json!({"ipv4": "172.18.0.3/24"})
    );
    assert_eq!(
        annotation(meta, "k8s.ovn.org/host-cidrs"),
        serde_json::json!(["172.18.0.3/24"])
    );
    assert_eq!(
        annotation(meta, "k8s.ovn.org/node-subnets"),
        serde_json::json!({"default": ["10.244.1.0/24"]})
    );
    assert_eq!(
        annotation(meta, "k8s.ovn.org/node-gateway-router-lrp-ifaddr"),
        serde_json::json!({"ipv4": "100.64.0.3/16"})
    );
    assert_eq!(
        annotation(meta, "k8s.ovn.org/node-gateway-router-lrp-ifaddrs"),
        serde_json::json!({"default": {"ipv4": "100.64.0.3/16"}})
    );
    assert_eq!(
        annotation(meta, "k8s.ovn.org/l3-gateway-config")["default"]["next-hops"],
        serde_json::json!(["172.18.0.1"])
    );
    let spec = node2.spec.as_ref().unwrap();
    assert_eq!(
        spec.pod_cidrs.as_deref(),
        Some(&["10.244.1.0/24".to_string()][..])
    );
    let status = node2.status.as_ref().unwrap();
    let ready = status.conditions.as_ref().unwrap();
    assert!(
        ready
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    );
    assert_eq!(status.addresses.as_ref().unwrap()[0].address, "172.18.0.3");

    let namespaces: Vec<Namespace> = docs(&files[1].1);
    let prod = namespaces
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some("prod"))
        .unwrap();
    let labels = prod.metadata.labels.as_ref().unwrap();
    assert_eq!(labels.get("env").map(String::as_str), Some("prod"));
    assert_eq!(
        labels
            .get("kubernetes.io/metadata.name")
            .map(String::as_str),
        Some("prod")
    );

    let pods: Vec<Pod> = docs(&files[2].1);
    assert_eq!(pods.len(), 1);
    let pod = &pods[0];
    assert_eq!(pod.metadata.namespace.as_deref(), Some("prod"));
    assert_eq!(
        pod.spec.as_ref().unwrap().node_name.as_deref(),
        Some("node2")
    );
    let status = pod.status.as_ref().unwrap();
    assert_eq!(status.phase.as_deref(), Some("Running"));
    assert_eq!(status.pod_ip.as_deref(), Some("10.244.1.3"));
    let networks = annotation(&pod.metadata, "k8s.ovn.org/pod-networks");
    assert_eq!(
        networks["default"]["ip_addresses"],
        serde_json::json!(["10.244.1.3/24"])
    );
    assert_eq!(networks["default"]["mac_address"], "0a:58:0a:f4:01:03");
    assert_eq!(
        networks["default"]["gateway_ips"],
        serde_json::json!(["10.244.1.1"])
    );
}

#[test]
fn egress_ips_are_written_as_k8s_ovn_org_v1() {
    let eip = manifests::egress_ip(
        "eip-prod",
        &["172.18.0.100".parse().unwrap()],
        &[("env", "prod")],
        &[],
    );
    let yaml = manifests::to_yaml(&[eip]).unwrap();
    let back: Value = serde_saphyr::from_str(&yaml).unwrap();
    assert_eq!(back["apiVersion"], "k8s.ovn.org/v1");
    assert_eq!(back["kind"], "EgressIP");
    assert_eq!(
        back["spec"]["egressIPs"],
        serde_json::json!(["172.18.0.100"])
    );
    assert_eq!(
        back["spec"]["namespaceSelector"]["matchLabels"]["env"],
        "prod"
    );
    assert!(back["spec"].get("podSelector").is_none());
}

#[test]
fn files_are_written_into_the_directory() {
    let layout = ClusterSpec::two_nodes().layout().unwrap();
    let dir = std::env::temp_dir().join(format!("ovn-testbed-manifests-{}", std::process::id()));
    let written = manifests::write_cluster(&layout, &dir).unwrap();
    assert_eq!(written.len(), 3);
    let nodes: Vec<Node> = docs(&std::fs::read_to_string(dir.join("nodes.yaml")).unwrap());
    assert_eq!(nodes.len(), 2);
    std::fs::remove_dir_all(&dir).unwrap();
}
