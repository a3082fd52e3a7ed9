//! CustomResourceDefinitions of `k8s.ovn.org/v1`, generated from the Rust types.
//!
//! `kube`'s derive produces a CRD from the types; [`egressip_crd`] and [`egressfirewall_crd`] then
//! adjust it to match the CRDs OVN-Kubernetes installs:
//! - EgressIP has no status subresource (`subresources: {}`); EgressFirewall keeps it;
//! - `status.items` of an EgressIP and `protocol`/`port` of an EgressFirewall port are required
//!   (the Rust types default them when parsing, which makes schemars drop `required`);
//! - an EgressFirewall must be named `default`, a rule's `type` is a string with OVN-Kubernetes'
//!   pattern, `to` has exactly one property, `status.messages` is a set;
//! - label selectors are atomic maps, no field is `nullable`, `listKind` is set, and the root lists
//!   `apiVersion`, `kind` and `metadata` like controller-gen output.
//!
//! [`render_file`] gives the text of the checked-in files under `deploy/crds/` (see [`file_name`]);
//! [`structural_problems`] checks the rules Kubernetes imposes on CRD schemas.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceSubresources, JSONSchemaProps, JSONSchemaPropsOrArray,
    JSONSchemaPropsOrBool,
};
use kube::CustomResourceExt;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::Value;

use crate::egressfirewall::{EGRESS_FIREWALL_NAME, EgressFirewall, RULE_TYPE_PATTERN};
use crate::egressip::EgressIP;

/// Setting this environment variable to `1` makes the `crds` test rewrite the files under
/// `deploy/crds/` instead of failing on drift.
pub const UPDATE_ENV: &str = "KUBE_EGRESS_UPDATE_CRDS";

/// Where the generated CRD files live, relative to the workspace root.
pub const CRD_DIR: &str = "deploy/crds";

/// The first lines of every generated file.
pub const GENERATED_HEADER: &str = "\
# Generated from the Rust types in crates/api (kube_egress_api::crd); do not edit by hand.
# Regenerate with: KUBE_EGRESS_UPDATE_CRDS=1 cargo test -p kube-egress-api --test crds
";

/// The `egressips.k8s.ovn.org` CRD: cluster-scoped, short name `eip`, no status subresource.
pub fn egressip_crd() -> CustomResourceDefinition {
    let mut crd = EgressIP::crd();
    crd.spec.names.list_kind = Some("EgressIPList".into());
    for version in &mut crd.spec.versions {
        // OVN-Kubernetes writes status with ordinary patches of the object (and relies on status
        // changes bumping metadata.generation), so there must be no status subresource.
        version.subresources = Some(CustomResourceSubresources::default());
    }
    let root = root_schema(&mut crd);
    add_root_properties(root, None);
    require(at(root, "status"), "items");
    atomic_map(at(root, "spec.namespaceSelector"));
    atomic_map(at(root, "spec.podSelector"));
    tidy(root);
    crd
}

/// The `egressfirewalls.k8s.ovn.org` CRD: namespaced, status subresource, name `default` only.
pub fn egressfirewall_crd() -> CustomResourceDefinition {
    let mut crd = EgressFirewall::crd();
    crd.spec.names.list_kind = Some("EgressFirewallList".into());
    let root = root_schema(&mut crd);
    add_root_properties(root, Some(&format!("^{EGRESS_FIREWALL_NAME}$")));

    let rule = at(root, "spec.egress[]");
    let rule_type = at(rule, "type");
    rule_type.enum_ = None;
    rule_type.pattern = Some(RULE_TYPE_PATTERN.into());
    let to = at(rule, "to");
    to.min_properties = Some(1);
    to.max_properties = Some(1);
    atomic_map(at(to, "nodeSelector"));
    let port = at(rule, "ports[]");
    require(port, "protocol");
    require(port, "port");

    at(root, "status.messages").x_kubernetes_list_type = Some("set".into());
    tidy(root);
    crd
}

/// Both CRDs.
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![egressip_crd(), egressfirewall_crd()]
}

/// The file name used under [`CRD_DIR`], e.g. `k8s.ovn.org_egressips.yaml`.
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}_{}.yaml", crd.spec.group, crd.spec.names.plural)
}

/// The CRD as one YAML document: keys sorted, integral numbers without a fraction, long texts as
/// block scalars. The output depends only on `crd`.
///
/// # Panics
///
/// If the CRD cannot be serialized, which the k8s-openapi types do not allow.
pub fn render_yaml(crd: &CustomResourceDefinition) -> String {
    let mut value = serde_json::to_value(crd).expect("a CustomResourceDefinition serializes");
    integral_floats_to_ints(&mut value);
    serde_saphyr::to_string(&SortedKeys(&value)).expect("a JSON value serializes to YAML")
}

/// [`GENERATED_HEADER`] followed by [`render_yaml`]: the text of the checked-in file.
pub fn render_file(crd: &CustomResourceDefinition) -> String {
    format!("{GENERATED_HEADER}{}", render_yaml(crd))
}

fn root_schema(crd: &mut CustomResourceDefinition) -> &mut JSONSchemaProps {
    let name = crd.metadata.name.clone().unwrap_or_default();
    let [version] = crd.spec.versions.as_mut_slice() else {
        panic!("{name}: expected exactly one version");
    };
    version
        .schema
        .as_mut()
        .and_then(|v| v.open_api_v3_schema.as_mut())
        .unwrap_or_else(|| panic!("{name}: no openAPIV3Schema"))
}

/// The schema node at `path`: property names separated by dots, `[]` after a name steps into the
/// array's items (`spec.egress[].to`). Panics if there is no such node: the paths are fixed and
/// the tests generate both CRDs.
fn at<'a>(schema: &'a mut JSONSchemaProps, path: &str) -> &'a mut JSONSchemaProps {
    let mut node = schema;
    for segment in path.split('.') {
        let (name, items) = match segment.strip_suffix("[]") {
            Some(name) => (name, true),
            None => (segment, false),
        };
        node = node
            .properties
            .as_mut()
            .and_then(|p| p.get_mut(name))
            .unwrap_or_else(|| panic!("schema has no property {name:?} (path {path})"));
        if items {
            node = match node.items.as_mut() {
                Some(JSONSchemaPropsOrArray::Schema(items)) => items,
                _ => panic!("schema property {name:?} has no items schema (path {path})"),
            };
        }
    }
    node
}

/// Marks `field` of an object schema as required and drops its default (a default would make the
/// requirement void, since the API server applies defaults before validating).
fn require(object: &mut JSONSchemaProps, field: &str) {
    let property = object
        .properties
        .as_mut()
        .and_then(|p| p.get_mut(field))
        .unwrap_or_else(|| panic!("schema has no property {field:?} to require"));
    property.default = None;
    let required = object.required.get_or_insert_with(Vec::new);
    if !required.iter().any(|r| r == field) {
        required.push(field.to_string());
        required.sort();
    }
}

/// A label selector is replaced as a whole by server-side apply, as in OVN-Kubernetes' CRDs.
fn atomic_map(selector: &mut JSONSchemaProps) {
    selector.x_kubernetes_map_type = Some("atomic".into());
}

/// Adds `apiVersion`, `kind` and `metadata` to the root, as controller-gen does. With
/// `name_pattern`, `metadata.name` must match it.
fn add_root_properties(root: &mut JSONSchemaProps, name_pattern: Option<&str>) {
    let string = |description: &str| JSONSchemaProps {
        type_: Some("string".into()),
        description: Some(description.into()),
        ..Default::default()
    };
    let metadata = JSONSchemaProps {
        type_: Some("object".into()),
        properties: name_pattern.map(|pattern| {
            BTreeMap::from([(
                "name".to_string(),
                JSONSchemaProps {
                    type_: Some("string".into()),
                    pattern: Some(pattern.into()),
                    ..Default::default()
                },
            )])
        }),
        ..Default::default()
    };
    let properties = root.properties.get_or_insert_with(BTreeMap::new);
    properties.insert(
        "apiVersion".into(),
        string("The versioned schema of this object: k8s.ovn.org/v1."),
    );
    properties.insert(
        "kind".into(),
        string("The type of this object, in CamelCase."),
    );
    properties.insert("metadata".into(), metadata);
}

/// Final clean-up of every node: no `nullable` (OVN-Kubernetes' CRDs have none, so the API server
/// prunes explicit nulls), no root `title`, and doc comments unwrapped into one line per
/// paragraph.
fn tidy(root: &mut JSONSchemaProps) {
    root.title = None;
    walk_mut(root, &mut |node| {
        node.nullable = None;
        if let Some(description) = &mut node.description {
            *description = unwrap_lines(description);
        }
    });
}

fn unwrap_lines(text: &str) -> String {
    text.split("\n\n")
        .map(|paragraph| {
            paragraph
                .lines()
                .map(str::trim)
                .filter(|line| !line.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// Calls `f` on `schema` and every schema nested in it.
fn walk_mut(schema: &mut JSONSchemaProps, f: &mut impl FnMut(&mut JSONSchemaProps)) {
    f(schema);
    for child in schema.properties.iter_mut().flat_map(|p| p.values_mut()) {
        walk_mut(child, f);
    }
    match &mut schema.items {
        Some(JSONSchemaPropsOrArray::Schema(items)) => walk_mut(items, f),
        Some(JSONSchemaPropsOrArray::Schemas(list)) => list.iter_mut().for_each(|s| walk_mut(s, f)),
        None => {}
    }
    if let Some(JSONSchemaPropsOrBool::Schema(additional)) = &mut schema.additional_properties {
        walk_mut(additional, f);
    }
    for junctor in [&mut schema.all_of, &mut schema.any_of, &mut schema.one_of] {
        junctor.iter_mut().flatten().for_each(|s| walk_mut(s, f));
    }
    if let Some(not) = &mut schema.not {
        walk_mut(not, f);
    }
}

/// k8s-openapi stores `minimum`/`maximum` as `f64`; write `65535`, not `65535.0`.
fn integral_floats_to_ints(value: &mut Value) {
    match value {
        Value::Number(n) => {
            if let Some(f) = n.as_f64()
                && n.is_f64()
                && f.fract() == 0.0
                && f.abs() < 9_007_199_254_740_992.0
            {
                // Exact: |f| < 2^53 and f has no fraction.
                *n = serde_json::Number::from(f as i64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_floats_to_ints),
        Value::Object(map) => map.values_mut().for_each(integral_floats_to_ints),
        _ => {}
    }
}

/// Serializes a JSON value with object keys in sorted order, whatever map type serde_json uses.
struct SortedKeys<'a>(&'a Value);

impl Serialize for SortedKeys<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Object(map) => {
                let mut entries: Vec<_> = map.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                let mut out = serializer.serialize_map(Some(entries.len()))?;
                for (key, value) in entries {
                    out.serialize_entry(key, &SortedKeys(value))?;
                }
                out.end()
            }
            Value::Array(items) => serializer.collect_seq(items.iter().map(SortedKeys)),
            other => other.serialize(serializer),
        }
    }
}

/// Violations of the Kubernetes rules for CRD schemas ("structural schemas" plus the keywords
/// `apiextensions.k8s.io/v1` forbids), one message per problem naming the schema path. Empty when
/// the CRD is fine. Checked:
/// - every version has a schema whose root is an object;
/// - every node has a valid `type` (unless `x-kubernetes-int-or-string` or
///   `x-kubernetes-preserve-unknown-fields`), arrays have one `items` schema, objects do not mix
///   `properties` with `additionalProperties`;
/// - no `$ref`, `$schema`, `id`, `definitions`, `dependencies`, `patternProperties`,
///   `additionalItems`, `uniqueItems: true`, `additionalProperties: false`;
/// - inside `allOf`/`anyOf`/`oneOf`/`not`: no `type`, `description`, `default`, `nullable`,
///   `additionalProperties` or `x-kubernetes-*`;
/// - validation keywords fit the type (`pattern` on strings, bounds on numbers, property counts
///   on objects); `x-kubernetes-list-type` is atomic/set/map on arrays, set items are scalars or
///   atomic; `x-kubernetes-map-type` is atomic/granular on objects;
/// - every `required` name is a property;
/// - root `metadata` constrains at most `name` and `generateName`.
pub fn structural_problems(crd: &CustomResourceDefinition) -> Vec<String> {
    let mut problems = Vec::new();
    if crd.spec.versions.is_empty() {
        problems.push("spec.versions: no versions".to_string());
    }
    for (i, version) in crd.spec.versions.iter().enumerate() {
        let path = format!("spec.versions[{i}].schema.openAPIV3Schema");
        let Some(root) = version
            .schema
            .as_ref()
            .and_then(|v| v.open_api_v3_schema.as_ref())
        else {
            problems.push(format!("{path}: missing"));
            continue;
        };
        if root.type_.as_deref() != Some("object") {
            problems.push(format!("{path}: the root must have type object"));
        }
        if let Some(metadata) = root.properties.as_ref().and_then(|p| p.get("metadata")) {
            check_metadata(
                metadata,
                &format!("{path}.properties.metadata"),
                &mut problems,
            );
        }
        check_node(root, &path, false, &mut problems);
    }
    problems
}

fn check_metadata(metadata: &JSONSchemaProps, path: &str, problems: &mut Vec<String>) {
    if metadata.type_.as_deref() != Some("object") {
        problems.push(format!("{path}: must have type object"));
    }
    let allowed = ["name", "generateName"];
    for name in metadata.properties.iter().flat_map(|p| p.keys()) {
        if !allowed.contains(&name.as_str()) {
            problems.push(format!(
                "{path}.properties.{name}: only name and generateName may be constrained"
            ));
        }
    }
    if metadata.required.is_some() || metadata.additional_properties.is_some() {
        problems.push(format!(
            "{path}: only properties name and generateName may be constrained"
        ));
    }
}

const TYPES: [&str; 6] = ["object", "array", "string", "integer", "number", "boolean"];

fn check_node(s: &JSONSchemaProps, path: &str, in_junctor: bool, problems: &mut Vec<String>) {
    let mut problem = |what: &str| problems.push(format!("{path}: {what}"));

    let forbidden = [
        ("$ref", s.ref_path.is_some()),
        ("$schema", s.schema.is_some()),
        ("id", s.id.is_some()),
        ("definitions", s.definitions.is_some()),
        ("dependencies", s.dependencies.is_some()),
        ("patternProperties", s.pattern_properties.is_some()),
        ("additionalItems", s.additional_items.is_some()),
        ("uniqueItems: true", s.unique_items == Some(true)),
        (
            "additionalProperties: false",
            matches!(
                s.additional_properties,
                Some(JSONSchemaPropsOrBool::Bool(false))
            ),
        ),
        (
            "items as a list of schemas",
            matches!(s.items, Some(JSONSchemaPropsOrArray::Schemas(_))),
        ),
    ];
    for (keyword, present) in forbidden {
        if present {
            problem(&format!("{keyword} is not allowed in a CRD schema"));
        }
    }

    let ty = s.type_.as_deref();
    if in_junctor {
        let structural = [
            ("type", ty.is_some()),
            ("description", s.description.is_some()),
            ("default", s.default.is_some()),
            ("nullable", s.nullable.is_some()),
            ("additionalProperties", s.additional_properties.is_some()),
            (
                "x-kubernetes-* extensions",
                s.x_kubernetes_embedded_resource.is_some()
                    || s.x_kubernetes_int_or_string.is_some()
                    || s.x_kubernetes_preserve_unknown_fields.is_some()
                    || s.x_kubernetes_list_type.is_some()
                    || s.x_kubernetes_map_type.is_some(),
            ),
        ];
        for (keyword, present) in structural {
            if present {
                problem(&format!(
                    "{keyword} must not be set inside allOf/anyOf/oneOf/not"
                ));
            }
        }
    } else {
        match ty {
            Some(t) if TYPES.contains(&t) => {}
            Some(t) => problem(&format!("unknown type {t:?}")),
            None if s.x_kubernetes_int_or_string == Some(true)
                || s.x_kubernetes_preserve_unknown_fields == Some(true) => {}
            None => problem("type is missing (every node of a structural schema needs one)"),
        }
        if ty == Some("array") && s.items.is_none() {
            problem("an array needs an items schema");
        }
        if s.properties.is_some() && s.additional_properties.is_some() {
            problem("properties and additionalProperties are mutually exclusive");
        }
    }

    if let Some(t) = ty {
        let misplaced = [
            (
                "pattern",
                s.pattern.is_some() || s.min_length.is_some() || s.max_length.is_some(),
                t == "string",
            ),
            (
                "minimum/maximum",
                s.minimum.is_some() || s.maximum.is_some() || s.multiple_of.is_some(),
                t == "integer" || t == "number",
            ),
            (
                "minProperties/maxProperties",
                s.min_properties.is_some() || s.max_properties.is_some(),
                t == "object",
            ),
            (
                "minItems/maxItems",
                s.min_items.is_some() || s.max_items.is_some(),
                t == "array",
            ),
            (
                "x-kubernetes-list-type",
                s.x_kubernetes_list_type.is_some(),
                t == "array",
            ),
            (
                "x-kubernetes-map-type",
                s.x_kubernetes_map_type.is_some(),
                t == "object",
            ),
        ];
        for (keyword, present, fits) in misplaced {
            if present && !fits {
                problem(&format!("{keyword} does not apply to type {t}"));
            }
        }
    }

    match s.x_kubernetes_list_type.as_deref() {
        None | Some("atomic") | Some("map") => {}
        Some("set") => {
            if let Some(JSONSchemaPropsOrArray::Schema(items)) = &s.items {
                let scalar = !matches!(items.type_.as_deref(), Some("object" | "array"));
                let atomic = items.x_kubernetes_map_type.as_deref() == Some("atomic");
                if !scalar && !atomic {
                    problem("items of an x-kubernetes-list-type set must be scalars or atomic");
                }
            }
        }
        Some(other) => problem(&format!(
            "x-kubernetes-list-type must be atomic, set or map, not {other:?}"
        )),
    }
    if let Some(map_type) = s.x_kubernetes_map_type.as_deref()
        && map_type != "atomic"
        && map_type != "granular"
    {
        problem(&format!(
            "x-kubernetes-map-type must be atomic or granular, not {map_type:?}"
        ));
    }

    let names: BTreeSet<&str> = s
        .properties
        .iter()
        .flat_map(|p| p.keys())
        .map(String::as_str)
        .collect();
    for required in s.required.iter().flatten() {
        if !names.contains(required.as_str()) {
            problem(&format!("required field {required:?} is not a property"));
        }
    }

    for (name, child) in s.properties.iter().flatten() {
        check_node(
            child,
            &format!("{path}.properties.{name}"),
            in_junctor,
            problems,
        );
    }
    match &s.items {
        Some(JSONSchemaPropsOrArray::Schema(items)) => {
            check_node(items, &format!("{path}.items"), in_junctor, problems)
        }
        Some(JSONSchemaPropsOrArray::Schemas(list)) => {
            for (i, item) in list.iter().enumerate() {
                check_node(item, &format!("{path}.items[{i}]"), in_junctor, problems);
            }
        }
        None => {}
    }
    if let Some(JSONSchemaPropsOrBool::Schema(additional)) = &s.additional_properties {
        check_node(
            additional,
            &format!("{path}.additionalProperties"),
            in_junctor,
            problems,
        );
    }
    for (keyword, junctor) in [
        ("allOf", &s.all_of),
        ("anyOf", &s.any_of),
        ("oneOf", &s.one_of),
    ] {
        for (i, branch) in junctor.iter().flatten().enumerate() {
            check_node(branch, &format!("{path}.{keyword}[{i}]"), true, problems);
        }
    }
    if let Some(not) = &s.not {
        check_node(not, &format!("{path}.not"), true, problems);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(properties: Vec<(&str, JSONSchemaProps)>) -> JSONSchemaProps {
        JSONSchemaProps {
            type_: Some("object".into()),
            properties: Some(
                properties
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    fn string() -> JSONSchemaProps {
        JSONSchemaProps {
            type_: Some("string".into()),
            ..Default::default()
        }
    }

    /// The EgressIP CRD with `spec.extra` set to `extra`.
    fn with_spec_property(extra: JSONSchemaProps) -> CustomResourceDefinition {
        let mut crd = egressip_crd();
        let spec = at(root_schema(&mut crd), "spec");
        spec.properties
            .as_mut()
            .unwrap()
            .insert("extra".into(), extra);
        crd
    }

    fn problems_mentioning(crd: &CustomResourceDefinition, needle: &str) -> Vec<String> {
        let problems = structural_problems(crd);
        assert!(
            problems.iter().any(|p| p.contains(needle)),
            "expected a problem mentioning {needle:?}, got {problems:#?}"
        );
        problems
    }

    #[test]
    fn generated_crds_have_no_problems() {
        for crd in all() {
            assert_eq!(structural_problems(&crd), Vec::<String>::new());
        }
    }

    #[test]
    fn missing_type_is_reported_with_its_path() {
        let crd = with_spec_property(JSONSchemaProps::default());
        let problems = problems_mentioning(&crd, "type is missing");
        assert!(
            problems.iter().any(|p| p.starts_with(
                "spec.versions[0].schema.openAPIV3Schema.properties.spec.properties.extra:"
            )),
            "{problems:#?}"
        );
    }

    #[test]
    fn ref_is_reported() {
        let crd = with_spec_property(JSONSchemaProps {
            ref_path: Some("#/definitions/Other".into()),
            type_: Some("object".into()),
            ..Default::default()
        });
        problems_mentioning(&crd, "$ref is not allowed");
    }

    #[test]
    fn any_of_without_type_is_reported() {
        let crd = with_spec_property(JSONSchemaProps {
            any_of: Some(vec![string(), object(vec![])]),
            ..Default::default()
        });
        let problems = problems_mentioning(&crd, "type is missing");
        // The branches set `type`, which only the enclosing node may do.
        assert!(
            problems
                .iter()
                .any(|p| p.contains("extra.anyOf[0]: type must not be set")),
            "{problems:#?}"
        );
    }

    #[test]
    fn int_or_string_needs_no_type() {
        let crd = with_spec_property(JSONSchemaProps {
            x_kubernetes_int_or_string: Some(true),
            any_of: Some(vec![
                JSONSchemaProps {
                    minimum: Some(1.0),
                    ..Default::default()
                },
                JSONSchemaProps {
                    pattern: Some("^[a-z]+$".into()),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        });
        assert_eq!(structural_problems(&crd), Vec::<String>::new());
    }

    #[test]
    fn set_of_non_atomic_objects_is_reported() {
        let crd = with_spec_property(JSONSchemaProps {
            type_: Some("array".into()),
            x_kubernetes_list_type: Some("set".into()),
            items: Some(JSONSchemaPropsOrArray::Schema(Box::new(object(vec![(
                "a",
                string(),
            )])))),
            ..Default::default()
        });
        problems_mentioning(&crd, "must be scalars or atomic");
    }

    #[test]
    fn array_without_items_and_misplaced_keywords_are_reported() {
        let crd = with_spec_property(JSONSchemaProps {
            type_: Some("array".into()),
            pattern: Some("^x$".into()),
            ..Default::default()
        });
        problems_mentioning(&crd, "an array needs an items schema");
        problems_mentioning(&crd, "pattern does not apply to type array");
    }

    #[test]
    fn unknown_required_field_is_reported() {
        let mut extra = object(vec![("a", string())]);
        extra.required = Some(vec!["b".into()]);
        let crd = with_spec_property(extra);
        problems_mentioning(&crd, "required field \"b\" is not a property");
    }

    #[test]
    fn metadata_may_only_constrain_name() {
        let mut crd = egressfirewall_crd();
        let metadata = at(root_schema(&mut crd), "metadata");
        metadata
            .properties
            .as_mut()
            .unwrap()
            .insert("labels".into(), object(vec![]));
        problems_mentioning(&crd, "only name and generateName may be constrained");
    }

    #[test]
    fn missing_version_schema_is_reported() {
        let mut crd = egressip_crd();
        crd.spec.versions[0].schema = None;
        problems_mentioning(&crd, "openAPIV3Schema: missing");
    }

    #[test]
    fn unwrap_lines_joins_lines_within_paragraphs() {
        assert_eq!(
            unwrap_lines("one\ntwo  \n three\n\nfour\nfive"),
            "one two three\n\nfour five"
        );
    }

    #[test]
    fn integral_floats_become_ints_but_fractions_stay() {
        let mut value = serde_json::json!({"a": 65535.0, "b": [1.5, -2.0], "c": 7});
        integral_floats_to_ints(&mut value);
        assert_eq!(
            value,
            serde_json::json!({"a": 65535, "b": [1.5, -2], "c": 7})
        );
        assert!(value["a"].is_i64());
    }

    #[test]
    fn rendering_sorts_keys() {
        let mut crd = egressip_crd();
        crd.metadata.labels = Some(BTreeMap::from([
            ("z".to_string(), "1".to_string()),
            ("a".to_string(), "2".to_string()),
        ]));
        let yaml = render_yaml(&crd);
        let a = yaml
            .find("a: '2'")
            .or_else(|| yaml.find("a: \"2\""))
            .expect(&yaml);
        let z = yaml
            .find("z: '1'")
            .or_else(|| yaml.find("z: \"1\""))
            .expect(&yaml);
        assert!(a < z, "{yaml}");
        assert!(
            yaml.starts_with("apiVersion: apiextensions.k8s.io/v1\n"),
            "{yaml}"
        );
    }
}
