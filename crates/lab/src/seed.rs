//! The lab's cluster objects: `examples/cluster/` (seed 003 §15.9.1.4), embedded in the crate.
//!
//! The manifests describe exactly the testbed's lab topology (node addresses, pod CIDRs, pods), so
//! the engine's plans apply to it unchanged. EgressFirewall objects are not part of the engine's
//! snapshot and are skipped.

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::ServiceCIDR;
use kube_egress_api::EgressIP;
use kube_egress_engine::{EgressIpInfo, NamespaceInfo, NodeInfo, PodInfo, Snapshot};
use serde_json::Value;

use crate::LabError;

/// The name of the seed's EgressIP (192.168.126.10 and 192.168.126.102, `env: prod` namespaces).
pub const SEED_EGRESS_IP: &str = "egressips-prod";

const FILES: [(&str, &str); 6] = [
    (
        "nodes.yaml",
        include_str!("../../../examples/cluster/nodes.yaml"),
    ),
    (
        "namespaces.yaml",
        include_str!("../../../examples/cluster/namespaces.yaml"),
    ),
    (
        "pods.yaml",
        include_str!("../../../examples/cluster/pods.yaml"),
    ),
    (
        "egressips.yaml",
        include_str!("../../../examples/cluster/egressips.yaml"),
    ),
    (
        "servicecidr.yaml",
        include_str!("../../../examples/cluster/servicecidr.yaml"),
    ),
    (
        "egressfirewall.yaml",
        include_str!("../../../examples/cluster/egressfirewall.yaml"),
    ),
];

/// The typed objects of `examples/cluster/`.
#[derive(Clone, Debug, Default)]
pub struct SeedObjects {
    pub nodes: Vec<Node>,
    pub namespaces: Vec<Namespace>,
    pub pods: Vec<Pod>,
    pub egress_ips: Vec<EgressIP>,
    /// ServiceCIDR objects: name and CIDRs.
    pub service_cidrs: Vec<(String, Vec<IpNet>)>,
}

impl SeedObjects {
    /// Parses the embedded manifests.
    pub fn load() -> Result<SeedObjects, LabError> {
        let mut objects = SeedObjects::default();
        for (file, text) in FILES {
            let bad = |message: String| LabError::Seed(format!("{file}: {message}"));
            let options = serde_saphyr::options! {
                strict_booleans: true,
                leading_zero_numbers_as_strings: true,
                underscored_numbers_as_strings: true,
            };
            let documents: Vec<Value> = serde_saphyr::from_multiple_with_options(text, options)
                .map_err(|e| bad(e.to_string()))?;
            for document in documents.into_iter().filter(|d| !d.is_null()) {
                let kind = document
                    .get("kind")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let typed = |e: serde_json::Error| bad(format!("{kind}: {e}"));
                match kind.as_str() {
                    "Node" => objects
                        .nodes
                        .push(serde_json::from_value(document).map_err(typed)?),
                    "Namespace" => objects
                        .namespaces
                        .push(serde_json::from_value(document).map_err(typed)?),
                    "Pod" => objects
                        .pods
                        .push(serde_json::from_value(document).map_err(typed)?),
                    "EgressIP" => objects
                        .egress_ips
                        .push(serde_json::from_value(document).map_err(typed)?),
                    "ServiceCIDR" => {
                        let object: ServiceCIDR =
                            serde_json::from_value(document).map_err(typed)?;
                        let name = object.metadata.name.unwrap_or_default();
                        let cidrs = object
                            .spec
                            .and_then(|s| s.cidrs)
                            .unwrap_or_default()
                            .iter()
                            .map(|c| {
                                c.parse::<IpNet>()
                                    .map_err(|e| bad(format!("ServiceCIDR {name}: {c}: {e}")))
                            })
                            .collect::<Result<Vec<_>, _>>()?;
                        objects.service_cidrs.push((name, cidrs));
                    }
                    "EgressFirewall" => {}
                    other => return Err(bad(format!("unexpected kind {other:?}"))),
                }
            }
        }
        Ok(objects)
    }

    /// An EgressIP object of the seed by name.
    pub fn egress_ip(&self, name: &str) -> Option<&EgressIP> {
        self.egress_ips
            .iter()
            .find(|e| e.metadata.name.as_deref() == Some(name))
    }

    /// The engine's view of the objects, with only the EgressIPs for which `keep` is true (the lab
    /// can start without the seed's EgressIP and apply it later).
    pub fn snapshot(&self, keep: impl Fn(&EgressIP) -> bool) -> Snapshot {
        Snapshot {
            nodes: self.nodes.iter().map(NodeInfo::from_node).collect(),
            namespaces: self
                .namespaces
                .iter()
                .map(NamespaceInfo::from_namespace)
                .collect(),
            pods: self.pods.iter().map(PodInfo::from_pod).collect(),
            egress_ips: self
                .egress_ips
                .iter()
                .filter(|e| keep(e))
                .map(EgressIpInfo::from_egress_ip)
                .collect(),
            service_cidrs: self.service_cidrs.clone(),
            unreachable: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_manifests_describe_the_lab() {
        let seed = SeedObjects::load().unwrap();
        assert_eq!(seed.nodes.len(), 3);
        assert_eq!(seed.pods.len(), 4);
        let prod = seed.egress_ip(SEED_EGRESS_IP).unwrap();
        assert_eq!(
            prod.spec.egress_ips,
            ["192.168.126.10", "192.168.126.102"].map(String::from)
        );
        let all = seed.snapshot(|_| true);
        assert_eq!(all.egress_ips.len(), seed.egress_ips.len());
        assert_eq!(all.service_cidrs.len(), 1);
        let none = seed.snapshot(|_| false);
        assert!(none.egress_ips.is_empty());
        assert_eq!(none.nodes.len(), 3);
    }
}
