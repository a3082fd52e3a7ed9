//! The CRDs under `deploy/crds/` are generated from the Rust types and must stay in sync.
//!
//! Regenerate them with `KUBE_EGRESS_UPDATE_CRDS=1 cargo test -p kube-egress-api --test crds`.

use std::fs;
use std::path::PathBuf;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceColumnDefinition, CustomResourceDefinition, JSONSchemaProps,
    JSONSchemaPropsOrArray,
};
use kube_egress_api::crd;

fn crd_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(crd::CRD_DIR)
}

fn updating() -> bool {
    std::env::var(crd::UPDATE_ENV).is_ok_and(|v| v == "1")
}

/// Where two texts first differ, for the failure message.
fn first_difference(expected: &str, actual: &str) -> String {
    let mut expected_lines = expected.lines();
    let mut actual_lines = actual.lines();
    for line in 1.. {
        match (expected_lines.next(), actual_lines.next()) {
            (Some(e), Some(a)) if e == a => continue,
            (None, None) => break,
            (e, a) => {
                return format!(
                    "first difference at line {line}:\n  generated:  {}\n  checked in: {}",
                    e.unwrap_or("<end of file>"),
                    a.unwrap_or("<end of file>")
                );
            }
        }
    }
    "the texts differ only in line endings".to_string()
}

#[test]
fn checked_in_crds_match_the_types() {
    let dir = crd_dir();
    let mut stale = Vec::new();
    for crd in crd::all() {
        let path = dir.join(crd::file_name(&crd));
        let generated = crd::render_file(&crd);
        if updating() {
            fs::create_dir_all(&dir).unwrap();
            fs::write(&path, &generated).unwrap();
            continue;
        }
        match fs::read_to_string(&path) {
            Ok(checked_in) if checked_in == generated => {}
            Ok(checked_in) => stale.push(format!(
                "{}/{} is out of date; {}",
                crd::CRD_DIR,
                crd::file_name(&crd),
                first_difference(&generated, &checked_in)
            )),
            Err(e) => stale.push(format!("{} cannot be read: {e}", path.display())),
        }
    }
    assert!(
        stale.is_empty(),
        "generated CRDs drifted from the checked-in files:\n{}\n\nRegenerate with\n  {}=1 cargo test -p kube-egress-api --test crds\nthen review the change with `git diff {}`.",
        stale.join("\n"),
        crd::UPDATE_ENV,
        crd::CRD_DIR
    );
}

#[test]
fn no_stale_generated_files() {
    let expected: Vec<String> = crd::all().iter().map(crd::file_name).collect();
    for entry in fs::read_dir(crd_dir()).unwrap() {
        let path = entry.unwrap().path();
        let text = fs::read_to_string(&path).unwrap_or_default();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if text.starts_with(crd::GENERATED_HEADER) {
            assert!(
                expected.contains(&name),
                "{} says it is generated but no CRD produces it; delete it",
                path.display()
            );
        }
    }
}

#[test]
fn rendering_is_deterministic() {
    for (a, b) in crd::all().iter().zip(crd::all().iter()) {
        assert_eq!(crd::render_file(a), crd::render_file(b));
    }
}

#[test]
fn rendered_files_start_with_the_generated_comment() {
    for crd in crd::all() {
        let text = crd::render_file(&crd);
        assert!(
            text.starts_with("# Generated from the Rust types"),
            "{text}"
        );
        assert!(text.contains(crd::UPDATE_ENV), "{text}");
        assert!(
            !text.contains(".0\n"),
            "floats leaked into the YAML:\n{text}"
        );
    }
}

/// Parses the rendered text (and the checked-in file) back and checks it equals the CRD.
fn parsed(crd: &CustomResourceDefinition) -> CustomResourceDefinition {
    let name = crd::file_name(crd);
    let back: CustomResourceDefinition = serde_saphyr::from_str(&crd::render_file(crd))
        .unwrap_or_else(|e| panic!("{name} does not parse back: {e}"));
    // Not assert_eq: the Debug form of a CRD is pages long.
    assert!(&back == crd, "{name} changed in a YAML round trip");
    if !updating() {
        let on_disk = fs::read_to_string(crd_dir().join(&name)).unwrap();
        let from_disk: CustomResourceDefinition = serde_saphyr::from_str(&on_disk)
            .unwrap_or_else(|e| panic!("checked-in {name} does not parse: {e}"));
        assert!(
            &from_disk == crd,
            "checked-in {name} differs from the generated CRD (see checked_in_crds_match_the_types)"
        );
    }
    assert_eq!(crd::structural_problems(&back), Vec::<String>::new());
    back
}

fn root(crd: &CustomResourceDefinition) -> &JSONSchemaProps {
    assert_eq!(crd.spec.versions.len(), 1);
    crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("openAPIV3Schema")
}

/// The node at a dotted path; `[]` after a name steps into the array items.
fn node<'a>(root: &'a JSONSchemaProps, path: &str) -> &'a JSONSchemaProps {
    let mut node = root;
    for segment in path.split('.') {
        let (name, items) = match segment.strip_suffix("[]") {
            Some(name) => (name, true),
            None => (segment, false),
        };
        node = node
            .properties
            .as_ref()
            .and_then(|p| p.get(name))
            .unwrap_or_else(|| panic!("no property {name} on the way to {path}"));
        if items {
            node = match &node.items {
                Some(JSONSchemaPropsOrArray::Schema(items)) => items,
                other => panic!("{path}: items {other:?}"),
            };
        }
    }
    node
}

fn required(schema: &JSONSchemaProps) -> Vec<&str> {
    let mut names: Vec<&str> = schema
        .required
        .iter()
        .flatten()
        .map(String::as_str)
        .collect();
    names.sort();
    names
}

fn columns(crd: &CustomResourceDefinition) -> Vec<(String, String, String)> {
    crd.spec.versions[0]
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c: &CustomResourceColumnDefinition| {
            (c.name.clone(), c.type_.clone(), c.json_path.clone())
        })
        .collect()
}

fn assert_nowhere_nullable(schema: &JSONSchemaProps, path: &str) {
    assert_eq!(schema.nullable, None, "{path} is nullable");
    for (name, child) in schema.properties.iter().flatten() {
        assert_nowhere_nullable(child, &format!("{path}.{name}"));
    }
    if let Some(JSONSchemaPropsOrArray::Schema(items)) = &schema.items {
        assert_nowhere_nullable(items, &format!("{path}[]"));
    }
}

#[test]
fn egressip_crd_matches_ovn_kubernetes() {
    let crd = parsed(&crd::egressip_crd());
    assert_eq!(crd.metadata.name.as_deref(), Some("egressips.k8s.ovn.org"));
    assert_eq!(crd.spec.group, "k8s.ovn.org");
    assert_eq!(crd.spec.scope, "Cluster");
    let names = &crd.spec.names;
    assert_eq!(names.kind, "EgressIP");
    assert_eq!(names.list_kind.as_deref(), Some("EgressIPList"));
    assert_eq!(names.plural, "egressips");
    assert_eq!(names.singular.as_deref(), Some("egressip"));
    assert_eq!(names.short_names, Some(vec!["eip".to_string()]));

    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1");
    assert!(version.served && version.storage);
    // No status subresource: `subresources: {}` (or absent), never `status`.
    if let Some(subresources) = &version.subresources {
        assert_eq!(
            subresources.status, None,
            "EgressIP must not have a status subresource"
        );
        assert_eq!(subresources.scale, None);
    }
    let text = crd::render_yaml(&crd::egressip_crd());
    assert!(text.contains("subresources: {}"), "{text}");

    assert_eq!(
        columns(&crd),
        [
            ("EgressIPs", ".spec.egressIPs[*]"),
            ("Assigned Node", ".status.items[*].node"),
            ("Assigned EgressIPs", ".status.items[*].egressIP"),
        ]
        .map(|(n, p)| (n.to_string(), "string".to_string(), p.to_string()))
    );

    let root = root(&crd);
    assert_eq!(root.type_.as_deref(), Some("object"));
    assert_eq!(required(root), ["spec"]);
    assert_eq!(
        required(node(root, "spec")),
        ["egressIPs", "namespaceSelector"]
    );
    let egress_ips = node(root, "spec.egressIPs");
    assert_eq!(egress_ips.type_.as_deref(), Some("array"));
    assert_eq!(
        node(root, "spec.egressIPs[]").type_.as_deref(),
        Some("string")
    );
    assert_eq!(node(root, "spec.egressIPs[]").pattern, None);
    for selector in ["spec.namespaceSelector", "spec.podSelector"] {
        let s = node(root, selector);
        assert_eq!(s.type_.as_deref(), Some("object"), "{selector}");
        assert_eq!(
            s.x_kubernetes_map_type.as_deref(),
            Some("atomic"),
            "{selector}"
        );
        assert!(s.properties.as_ref().unwrap().contains_key("matchLabels"));
        assert!(
            s.properties
                .as_ref()
                .unwrap()
                .contains_key("matchExpressions")
        );
    }

    let status = node(root, "status");
    assert_eq!(status.type_.as_deref(), Some("object"));
    assert_eq!(required(status), ["items"]);
    assert_eq!(node(root, "status.items").default, None);
    assert_eq!(required(node(root, "status.items[]")), ["egressIP", "node"]);
    assert_eq!(node(root, "metadata").type_.as_deref(), Some("object"));
    assert_nowhere_nullable(root, "openAPIV3Schema");
}

#[test]
fn egressfirewall_crd_matches_ovn_kubernetes() {
    let crd = parsed(&crd::egressfirewall_crd());
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("egressfirewalls.k8s.ovn.org")
    );
    assert_eq!(crd.spec.scope, "Namespaced");
    let names = &crd.spec.names;
    assert_eq!(names.kind, "EgressFirewall");
    assert_eq!(names.list_kind.as_deref(), Some("EgressFirewallList"));
    assert_eq!(names.plural, "egressfirewalls");
    assert_eq!(names.singular.as_deref(), Some("egressfirewall"));

    let version = &crd.spec.versions[0];
    assert!(
        version
            .subresources
            .as_ref()
            .is_some_and(|s| s.status.is_some()),
        "EgressFirewall has a status subresource"
    );
    assert_eq!(
        columns(&crd),
        [(
            "EgressFirewall Status".to_string(),
            "string".to_string(),
            ".status.status".to_string()
        )]
    );

    let root = root(&crd);
    let name = node(root, "metadata.name");
    assert_eq!(name.type_.as_deref(), Some("string"));
    assert_eq!(name.pattern.as_deref(), Some("^default$"));
    assert_eq!(node(root, "metadata").type_.as_deref(), Some("object"));

    assert_eq!(required(root), ["spec"]);
    assert_eq!(required(node(root, "spec")), ["egress"]);
    let rule = node(root, "spec.egress[]");
    assert_eq!(required(rule), ["to", "type"]);
    let rule_type = node(rule, "type");
    assert_eq!(rule_type.type_.as_deref(), Some("string"));
    assert_eq!(rule_type.pattern.as_deref(), Some("^Allow|Deny$"));
    assert_eq!(rule_type.enum_, None);

    let to = node(rule, "to");
    assert_eq!((to.min_properties, to.max_properties), (Some(1), Some(1)));
    assert_eq!(required(to), Vec::<&str>::new());
    assert_eq!(node(to, "cidrSelector").type_.as_deref(), Some("string"));
    assert_eq!(
        node(to, "dnsName").pattern.as_deref(),
        Some(r"^(\*\.)?([A-Za-z0-9-]+\.)*[A-Za-z0-9-]+\.?$")
    );
    assert_eq!(
        node(to, "nodeSelector").x_kubernetes_map_type.as_deref(),
        Some("atomic")
    );

    let port = node(rule, "ports[]");
    assert_eq!(required(port), ["port", "protocol"]);
    let protocol = node(port, "protocol");
    assert_eq!(protocol.pattern.as_deref(), Some("^TCP|UDP|SCTP$"));
    assert_eq!(protocol.default, None);
    let number = node(port, "port");
    assert_eq!(number.type_.as_deref(), Some("integer"));
    assert_eq!(number.format.as_deref(), Some("int32"));
    assert_eq!((number.minimum, number.maximum), (Some(1.0), Some(65535.0)));
    assert_eq!(number.default, None);

    let messages = node(root, "status.messages");
    assert_eq!(messages.type_.as_deref(), Some("array"));
    assert_eq!(messages.x_kubernetes_list_type.as_deref(), Some("set"));
    assert_eq!(node(root, "status.status").type_.as_deref(), Some("string"));
    assert_nowhere_nullable(root, "openAPIV3Schema");
}
