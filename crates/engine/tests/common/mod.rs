//! Builders for engine inputs shared by the engine's tests.
#![allow(dead_code)]

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use kube_egress_api::Selector;
use kube_egress_engine::{EgressIpInfo, NamespaceInfo, NodeInfo, PodInfo};

pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A Ready node; `primary` like `192.168.126.5/18`, `secondary` extra host CIDRs.
pub fn node(name: &str, assignable: bool, primary: &str, secondary: &[&str]) -> NodeInfo {
    let primary: ipnet::IpNet = primary.parse().unwrap();
    let mut host_cidrs = vec![primary];
    host_cidrs.extend(secondary.iter().map(|s| s.parse::<ipnet::IpNet>().unwrap()));
    NodeInfo {
        name: name.into(),
        labels: if assignable {
            labels(&[("k8s.ovn.org/egress-assignable", "")])
        } else {
            BTreeMap::new()
        },
        ready: true,
        primary: vec![primary],
        host_cidrs,
        addresses: vec![primary.addr()],
        pod_cidrs: vec![],
        unschedulable: false,
        problems: vec![],
    }
}

pub fn namespace(name: &str, pairs: &[(&str, &str)]) -> NamespaceInfo {
    NamespaceInfo {
        name: name.into(),
        labels: labels(pairs),
    }
}

pub fn pod(ns: &str, name: &str, node: &str, ips: &[&str], pairs: &[(&str, &str)]) -> PodInfo {
    PodInfo {
        namespace: ns.into(),
        name: name.into(),
        labels: labels(pairs),
        node: Some(node.into()),
        host_network: false,
        completed: false,
        ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
    }
}

pub fn match_labels(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels(pairs)),
        match_expressions: None,
    }
}

pub fn not_in(key: &str, values: &[&str]) -> LabelSelector {
    LabelSelector {
        match_labels: None,
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: key.into(),
            operator: "NotIn".into(),
            values: Some(values.iter().map(|v| v.to_string()).collect()),
        }]),
    }
}

/// An EgressIP selecting namespaces by `ns`, every pod in them, created at `created`.
pub fn eip(name: &str, created: i64, ips: &[&str], ns: LabelSelector) -> EgressIpInfo {
    EgressIpInfo {
        name: name.into(),
        created: Some(created),
        ips: ips.iter().map(|s| s.to_string()).collect(),
        namespace_selector: Selector::compile(&ns, "spec.namespaceSelector"),
        pod_selector: Ok(Selector::everything()),
        status: vec![],
        mark: None,
        problems: vec![],
    }
}

pub fn with_pod_selector(mut e: EgressIpInfo, sel: LabelSelector) -> EgressIpInfo {
    e.pod_selector = Selector::compile(&sel, "spec.podSelector");
    e
}
