//! Objects for the test API server, and waiting helpers.
#![allow(dead_code)]

use std::time::Duration;

use serde_json::{Value, json};

/// A Ready node with a primary network, labelled egress-assignable when `assignable`.
pub fn node(name: &str, primary: &str, assignable: bool) -> Value {
    let ip = primary.split('/').next().unwrap();
    let mut labels = json!({ "kubernetes.io/hostname": name });
    if assignable {
        labels["k8s.ovn.org/egress-assignable"] = json!("");
    }
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {
                "k8s.ovn.org/node-primary-ifaddr": json!({ "ipv4": primary }).to_string(),
                "k8s.ovn.org/host-cidrs": json!([primary]).to_string()
            }
        },
        "spec": { "podCIDR": pod_cidr(name) },
        "status": {
            "conditions": [ { "type": "Ready", "status": "True" } ],
            "addresses": [ { "type": "InternalIP", "address": ip } ]
        }
    })
}

fn pod_cidr(name: &str) -> String {
    let n: u32 = name.bytes().map(u32::from).sum::<u32>() % 200;
    format!("10.128.{n}.0/24")
}

pub fn namespace(name: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": { "name": name, "labels": labels }
    })
}

pub fn pod(ns: &str, name: &str, node: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "namespace": ns, "labels": { "app": "web" } },
        "spec": { "nodeName": node, "containers": [ { "name": "c", "image": "x" } ] },
        "status": { "phase": "Running", "podIP": ip, "podIPs": [ { "ip": ip } ] }
    })
}

/// An EgressIP selecting namespaces labelled `env: prod`.
pub fn egress_ip(name: &str, ips: &[&str]) -> Value {
    json!({
        "apiVersion": "k8s.ovn.org/v1", "kind": "EgressIP",
        "metadata": { "name": name },
        "spec": {
            "egressIPs": ips,
            "namespaceSelector": { "matchLabels": { "env": "prod" } }
        }
    })
}

pub fn with_status(mut eip: Value, items: &[(&str, &str)], mark: u32) -> Value {
    let items: Vec<Value> = items
        .iter()
        .map(|(n, ip)| json!({ "node": n, "egressIP": ip }))
        .collect();
    eip["status"] = json!({ "items": items });
    eip["metadata"]["annotations"] = json!({ "k8s.ovn.org/egressip-mark": mark.to_string() });
    eip
}

/// `status.items` of a stored EgressIP as (node, ip).
pub fn status_of(obj: &Value) -> Vec<(String, String)> {
    obj["status"]["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            (
                i["node"].as_str().unwrap_or_default().to_string(),
                i["egressIP"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

pub fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// Polls `check` until it holds; panics with `what` after 30 s (a generous bound against
/// hangs, not a timing assertion).
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
