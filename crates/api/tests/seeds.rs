//! Every manifest under `examples/seeds/` parses into the typed objects, and what the seeds say
//! (selectors, rules, the documentation errors they carry) comes through.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::Namespace;
use kube_egress_api::{
    EgressFirewall, EgressFirewallRuleType, EgressIP, Selector, ValidatedDestination,
};
use serde_json::Value;

/// One parsed document.
#[derive(Debug)]
enum Object {
    EgressIP(Box<EgressIP>),
    EgressFirewall(Box<EgressFirewall>),
    Namespace(Box<Namespace>),
}

fn seeds_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/seeds")
}

fn typed<T: serde::de::DeserializeOwned>(doc: Value) -> Result<T, String> {
    serde_json::from_value(doc).map_err(|e| e.to_string())
}

/// Parses every document of a file by `kind`; the error names the document.
fn parse(text: &str) -> Result<Vec<Object>, String> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| format!("YAML: {e}"))?;
    if docs.is_empty() {
        return Err("no documents".into());
    }
    docs.into_iter()
        .enumerate()
        .map(|(i, doc)| {
            let api_version = doc["apiVersion"].as_str().unwrap_or_default().to_string();
            let kind = doc["kind"].as_str().unwrap_or_default().to_string();
            let object = match (api_version.as_str(), kind.as_str()) {
                ("k8s.ovn.org/v1", "EgressIP") => typed(doc).map(|o| Object::EgressIP(Box::new(o))),
                ("k8s.ovn.org/v1", "EgressFirewall") => {
                    typed(doc).map(|o| Object::EgressFirewall(Box::new(o)))
                }
                ("v1", "Namespace") => typed(doc).map(|o| Object::Namespace(Box::new(o))),
                _ => Err("unexpected apiVersion/kind".to_string()),
            };
            object.map_err(|e| format!("document {i} ({api_version} {kind}): {e}"))
        })
        .collect()
}

/// Every seed file, parsed, by file name.
fn all_seeds() -> BTreeMap<String, Vec<Object>> {
    let mut seeds = BTreeMap::new();
    let mut failures = Vec::new();
    for entry in fs::read_dir(seeds_dir()).expect("examples/seeds exists") {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            failures.push(format!("{name}: not a .yaml file"));
            continue;
        }
        let text = fs::read_to_string(&path).unwrap();
        match parse(&text) {
            Ok(objects) => {
                seeds.insert(name, objects);
            }
            Err(e) => failures.push(format!("examples/seeds/{name}: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "seed files that do not parse:\n{}",
        failures.join("\n")
    );
    seeds
}

fn single<'a>(seeds: &'a BTreeMap<String, Vec<Object>>, name: &str) -> &'a Object {
    let objects = seeds
        .get(name)
        .unwrap_or_else(|| panic!("missing examples/seeds/{name}"));
    assert_eq!(objects.len(), 1, "{name}");
    &objects[0]
}

fn egress_ip<'a>(seeds: &'a BTreeMap<String, Vec<Object>>, name: &str) -> &'a EgressIP {
    match single(seeds, name) {
        Object::EgressIP(eip) => eip,
        other => panic!("{name}: expected an EgressIP, got {other:?}"),
    }
}

fn egress_firewall<'a>(seeds: &'a BTreeMap<String, Vec<Object>>, name: &str) -> &'a EgressFirewall {
    match single(seeds, name) {
        Object::EgressFirewall(ef) => ef,
        other => panic!("{name}: expected an EgressFirewall, got {other:?}"),
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn every_seed_parses() {
    let seeds = all_seeds();
    let names: Vec<&str> = seeds.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "001-egressip-prod.yaml",
            "003-15.10.1-egress-project1.yaml",
            "003-15.5.2.2-egressfirewall-allow-cidr-deny-all.yaml",
            "003-15.5.2.2-egressfirewall-deny-host-ports.yaml",
            "003-15.9.1.4-egressips-prod.yaml",
            "003-15.9.1.4-namespaces.yaml",
            "003-15.9.2-egress-group1.yaml",
            "003-15.9.2-egress-group2.yaml",
        ]
    );
}

#[test]
fn parse_errors_name_the_document() {
    let err = parse("apiVersion: k8s.ovn.org/v1\nkind: EgressIP\nmetadata:\n  name: x\nspec:\n  egressIPs: []\n")
        .unwrap_err();
    assert!(
        err.starts_with("document 0 (k8s.ovn.org/v1 EgressIP):"),
        "{err}"
    );
    assert!(err.contains("namespaceSelector"), "{err}");
    let err =
        parse("apiVersion: v1\nkind: Namespace\n---\napiVersion: v1\nkind: Pod\n").unwrap_err();
    assert!(err.starts_with("document 1 (v1 Pod): unexpected"), "{err}");
    assert!(parse("# only a comment\n").is_err());
}

#[test]
fn every_egressip_selector_compiles() {
    for (name, objects) in all_seeds() {
        for object in objects {
            if let Object::EgressIP(eip) = object {
                Selector::compile(&eip.spec.namespace_selector, "spec.namespaceSelector")
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                Selector::compile_optional(eip.spec.pod_selector.as_ref(), "spec.podSelector")
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
            }
        }
    }
}

#[test]
fn ovn_kubernetes_egressip_example() {
    let seeds = all_seeds();
    let eip = egress_ip(&seeds, "001-egressip-prod.yaml");
    assert_eq!(eip.metadata.name.as_deref(), Some("egressip-prod"));
    assert_eq!(eip.spec.egress_ips, ["172.18.0.33", "172.18.0.44"]);
    assert_eq!(eip.status, None);
    let namespaces =
        Selector::compile(&eip.spec.namespace_selector, "spec.namespaceSelector").unwrap();
    assert!(namespaces.matches(&labels(&[])));
    assert!(namespaces.matches(&labels(&[("environment", "production")])));
    assert!(!namespaces.matches(&labels(&[("environment", "development")])));
    let pods =
        Selector::compile_optional(eip.spec.pod_selector.as_ref(), "spec.podSelector").unwrap();
    assert!(pods.matches(&labels(&[("app", "web")])));
    assert!(!pods.matches(&labels(&[("app", "db")])));
}

#[test]
fn openshift_egressips_prod_selects_both_namespaces_and_ignores_assignments() {
    let seeds = all_seeds();
    let eip = egress_ip(&seeds, "003-15.9.1.4-egressips-prod.yaml");
    assert_eq!(eip.spec.egress_ips, ["192.168.126.10", "192.168.126.102"]);
    // `status.assignments` is not OVN-Kubernetes' field: the status parses with no items.
    assert_eq!(eip.status.as_ref().map(|s| s.items.len()), Some(0));
    assert_eq!(eip.spec.pod_selector, None);

    let selector =
        Selector::compile(&eip.spec.namespace_selector, "spec.namespaceSelector").unwrap();
    let namespaces = &seeds["003-15.9.1.4-namespaces.yaml"];
    assert_eq!(namespaces.len(), 2);
    for (object, expected) in namespaces.iter().zip(["namespace1", "namespace2"]) {
        let Object::Namespace(ns) = object else {
            panic!("expected a Namespace, got {object:?}");
        };
        assert_eq!(ns.metadata.name.as_deref(), Some(expected));
        assert!(
            selector.matches(ns.metadata.labels.as_ref().unwrap()),
            "{expected}"
        );
    }
}

#[test]
fn openshift_egressip_examples() {
    let seeds = all_seeds();
    let group1 = egress_ip(&seeds, "003-15.9.2-egress-group1.yaml");
    assert_eq!(
        group1.spec.egress_ips,
        ["192.168.126.11", "192.168.126.102"]
    );
    assert!(group1.spec.pod_selector.is_some());

    let group2 = egress_ip(&seeds, "003-15.9.2-egress-group2.yaml");
    assert_eq!(group2.spec.egress_ips, ["192.168.127.30", "192.168.127.40"]);
    let selector =
        Selector::compile(&group2.spec.namespace_selector, "spec.namespaceSelector").unwrap();
    assert!(!selector.matches(&labels(&[("environment", "development")])));

    let project1 = egress_ip(&seeds, "003-15.10.1-egress-project1.yaml");
    assert_eq!(
        project1.spec.egress_ips,
        ["192.168.127.10", "192.168.127.11"]
    );
    let selector =
        Selector::compile(&project1.spec.namespace_selector, "spec.namespaceSelector").unwrap();
    assert!(selector.matches(&labels(&[("env", "qa")])));
}

#[test]
fn openshift_allow_then_deny_firewall_validates() {
    let seeds = all_seeds();
    let ef = egress_firewall(
        &seeds,
        "003-15.5.2.2-egressfirewall-allow-cidr-deny-all.yaml",
    );
    let rules = ef.validate().unwrap();
    let summary: Vec<_> = rules
        .iter()
        .map(|r| match &r.destination {
            ValidatedDestination::Cidr(net) => (r.action, net.to_string()),
            other => panic!("unexpected destination {other:?}"),
        })
        .collect();
    assert_eq!(
        summary,
        [
            (EgressFirewallRuleType::Allow, "1.2.3.0/24".to_string()),
            (EgressFirewallRuleType::Deny, "0.0.0.0/0".to_string()),
        ]
    );
}

#[test]
fn openshift_port_example_carries_two_documentation_errors() {
    let seeds = all_seeds();
    let ef = egress_firewall(&seeds, "003-15.5.2.2-egressfirewall-deny-host-ports.yaml");
    let fields: Vec<String> = ef
        .validate()
        .unwrap_err()
        .into_iter()
        .map(|e| e.field)
        .collect();
    assert_eq!(
        fields,
        [
            "spec.egress[0].to.cidrSelector",
            "spec.egress[0].ports[1].protocol"
        ]
    );
}
