//! The Kubernetes objects describing a cluster as ovnkube would have annotated them: Nodes,
//! Namespaces and Pods, written as YAML so `kube-egress plan -f DIR` and the controller's
//! `--manifests DIR` read the same cluster the data plane runs. Pure except for the file writing.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::spec::{CLUSTER_SUBNET, EXTERNAL_GATEWAY, JOIN_SUBNET, Layout, NodeLayout, PodLayout};

/// The label that lets a node host egress IPs; every node of the cluster carries it.
pub const EGRESS_ASSIGNABLE: &str = "k8s.ovn.org/egress-assignable";

/// ovnkube's annotations and labels of a node, `status.addresses` and a `Ready` condition.
///
/// Annotations: `node-primary-ifaddr` and `host-cidrs` (the node IP on the external network),
/// `node-subnets` (`{"default":[subnet]}`), the gateway router's join address both in the older
/// per-family form `node-gateway-router-lrp-ifaddr` and the per-network form
/// `node-gateway-router-lrp-ifaddrs`, `node-chassis-id` (the chassis is named after the node),
/// `node-mgmt-port-mac-addresses`, `l3-gateway-config` (shared gateway mode on `br-ex`),
/// `node-encap-ips` and `zone-name` (`global`: one zone holds every node).
pub fn node(node: &NodeLayout) -> Value {
    let n = &node.name;
    let ip = node.node_ip.to_string();
    let join = json!({ "ipv4": node.join_ip.to_string() });
    let annotations = json!({
        "k8s.ovn.org/node-primary-ifaddr": json!({ "ipv4": ip }).to_string(),
        "k8s.ovn.org/host-cidrs": json!([ip]).to_string(),
        "k8s.ovn.org/node-subnets": json!({ "default": [node.subnet.to_string()] }).to_string(),
        "k8s.ovn.org/node-gateway-router-lrp-ifaddr": join.to_string(),
        "k8s.ovn.org/node-gateway-router-lrp-ifaddrs": json!({ "default": join }).to_string(),
        "k8s.ovn.org/node-chassis-id": n,
        "k8s.ovn.org/node-mgmt-port-mac-addresses":
            json!({ "default": node.mgmt_mac }).to_string(),
        "k8s.ovn.org/l3-gateway-config": json!({
            "default": {
                "mode": "shared",
                "bridge-id": "br-ex",
                "interface-id": node.localnet_port(),
                "mac-address": node.external_mac,
                "ip-addresses": [ip],
                "ip-address": ip,
                "next-hops": [EXTERNAL_GATEWAY.to_string()],
                "next-hop": EXTERNAL_GATEWAY.to_string(),
                "node-port-enable": "true",
                "vlan-id": "0",
            }
        })
        .to_string(),
        "k8s.ovn.org/node-encap-ips": json!([node.encap_ip.to_string()]).to_string(),
        "k8s.ovn.org/zone-name": "global",
    });
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": n,
            "labels": {
                "kubernetes.io/hostname": n,
                "kubernetes.io/os": "linux",
                EGRESS_ASSIGNABLE: "",
            },
            "annotations": annotations,
        },
        "spec": {
            "podCIDR": node.subnet.to_string(),
            "podCIDRs": [node.subnet.to_string()],
        },
        "status": {
            "addresses": [
                { "type": "InternalIP", "address": node.node_ip.addr().to_string() },
                { "type": "Hostname", "address": n },
            ],
            "conditions": [{
                "type": "Ready",
                "status": "True",
                "reason": "KubeletReady",
                "message": "kubelet is posting ready status",
            }],
        },
    })
}

/// A namespace with `kubernetes.io/metadata.name` and the given labels.
pub fn namespace(name: &str, labels: &std::collections::BTreeMap<String, String>) -> Value {
    let mut all = serde_json::Map::new();
    all.insert("kubernetes.io/metadata.name".into(), json!(name));
    for (k, v) in labels {
        all.insert(k.clone(), json!(v));
    }
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": { "name": name, "labels": all },
    })
}

/// A running pod with its IPs and ovnkube's `k8s.ovn.org/pod-networks` annotation.
pub fn pod(pod: &PodLayout, node: &NodeLayout) -> Value {
    let cidr = format!("{}/{}", pod.ip, pod.subnet.prefix_len());
    let gw = pod.gateway.to_string();
    let networks = json!({
        "default": {
            "ip_addresses": [cidr],
            "mac_address": pod.mac,
            "gateway_ips": [gw],
            "routes": [
                { "dest": CLUSTER_SUBNET.to_string(), "nextHop": gw },
                { "dest": JOIN_SUBNET.to_string(), "nextHop": gw },
            ],
            "ip_address": cidr,
            "gateway_ip": gw,
            "role": "primary",
        }
    });
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod.name,
            "namespace": pod.namespace,
            "labels": pod.labels,
            "annotations": { "k8s.ovn.org/pod-networks": networks.to_string() },
        },
        "spec": {
            "nodeName": pod.node,
            "containers": [{ "name": "app", "image": "registry.example.com/app:1.0" }],
        },
        "status": {
            "phase": "Running",
            "hostIP": node.node_ip.addr().to_string(),
            "podIP": pod.ip.to_string(),
            "podIPs": [{ "ip": pod.ip.to_string() }],
        },
    })
}

/// An EgressIP (`k8s.ovn.org/v1`) selecting namespaces by labels, and pods by labels when
/// `pod_labels` is not empty.
pub fn egress_ip(
    name: &str,
    ips: &[Ipv4Addr],
    namespace_labels: &[(&str, &str)],
    pod_labels: &[(&str, &str)],
) -> Value {
    let labels = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect::<serde_json::Map<_, _>>()
    };
    let mut spec = json!({
        "egressIPs": ips.iter().map(|ip| ip.to_string()).collect::<Vec<_>>(),
        "namespaceSelector": { "matchLabels": labels(namespace_labels) },
    });
    if !pod_labels.is_empty() {
        spec["podSelector"] = json!({ "matchLabels": labels(pod_labels) });
    }
    json!({
        "apiVersion": "k8s.ovn.org/v1",
        "kind": "EgressIP",
        "metadata": { "name": name, "creationTimestamp": "2026-01-01T00:00:00Z" },
        "spec": spec,
    })
}

/// Objects as multi-document YAML.
pub fn to_yaml(objects: &[Value]) -> Result<String> {
    let mut out = String::new();
    for object in objects {
        if !out.is_empty() {
            out.push_str("---\n");
        }
        let doc = serde_saphyr::to_string(object)
            .map_err(|e| Error::State(format!("YAML serialisation failed: {e}")))?;
        out.push_str(&doc);
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok(out)
}

/// The files of a cluster's manifests: `nodes.yaml`, `namespaces.yaml`, `pods.yaml`.
pub fn cluster_files(layout: &Layout) -> Result<Vec<(&'static str, String)>> {
    let nodes: Vec<Value> = layout.nodes.iter().map(node).collect();
    let namespaces: Vec<Value> = layout
        .namespaces
        .iter()
        .map(|(name, labels)| namespace(name, labels))
        .collect();
    let pods: Vec<Value> = layout
        .pods
        .iter()
        .map(|p| {
            let n = layout
                .node(&p.node)
                .expect("a layout's pods are on its nodes");
            pod(p, n)
        })
        .collect();
    Ok(vec![
        ("nodes.yaml", to_yaml(&nodes)?),
        ("namespaces.yaml", to_yaml(&namespaces)?),
        ("pods.yaml", to_yaml(&pods)?),
    ])
}

/// Writes [`cluster_files`] into `dir` (created if missing); returns the paths written.
pub fn write_cluster(layout: &Layout, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    let mut written = Vec::new();
    for (name, text) in cluster_files(layout)? {
        let path = dir.join(name);
        std::fs::write(&path, text)
            .map_err(|e| Error::io(format!("write {}", path.display()), e))?;
        written.push(path);
    }
    Ok(written)
}
