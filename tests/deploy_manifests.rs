//! `deploy/`: every manifest parses strictly into the Kubernetes API types (a typo is an error,
//! not a silently ignored field), the objects reference each other consistently, the workloads
//! use only the flags of `kube-egress controller` and `kube-egress agent`, RBAC grants exactly
//! what the code needs, and the Helm chart, rendered by Helm's own engine, produces the same
//! objects as the plain manifests.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser;
use ipnet::IpNet;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, PodTemplateSpec, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

const MANIFESTS: &str = "deploy/kubernetes";
const CRDS: &str = "deploy/crds";
const CHART: &str = "deploy/helm/kube-egress";
const DOCKERFILE: &str = "deploy/Dockerfile";
/// The Helm release the README installs; with it the chart renders the plain manifests' names.
const RELEASE: &str = "kube-egress";
/// The Helm version compiled into the pinned renderer (scripts/helm-requirements.txt).
const HELM_VERSION: &str = "v4.2.3";
/// Labels Helm's charts add for release tracking; the plain manifests do not carry them.
const HELM_LABELS: &[&str] = &[
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------------------------
// The command-line contract of the two workloads: the flags of `kube-egress controller` and
// `kube-egress agent`, each also read from its environment variable. Once the binary has both
// subcommands, `the_binary_has_every_flag_of_the_contract` holds it to the same lists.

/// Flags of `kube-egress controller`.
const CONTROLLER_FLAGS: &[&str] = &[
    "kubeconfig",
    "cluster-cidr",
    "service-cidr",
    "egressip-reachability-total-timeout",
    "egressip-node-healthcheck-port",
    "egressip-reachability-interval",
    "egressip-reachability-probe-timeout",
    "leader-election-namespace",
    "leader-election-lease-name",
    "identity",
    "cordoned-nodes-ineligible",
    "metrics-bind-address",
];

/// Flags of `kube-egress agent`.
const AGENT_FLAGS: &[&str] = &[
    "node",
    "cluster-cidr",
    "service-cidr",
    "egressip-node-healthcheck-port",
    "healthcheck-tls-cert",
    "healthcheck-tls-key",
    "publish-node-addressing",
    "metrics-bind-address",
];

/// The Lease `kube-egress controller` holds without `--leader-election-lease-name`.
const DEFAULT_LEASE_NAME: &str = "kube-egress-controller";

fn flags_of(subcommand: &str) -> Option<&'static [&'static str]> {
    match subcommand {
        "controller" => Some(CONTROLLER_FLAGS),
        "agent" => Some(AGENT_FLAGS),
        _ => None,
    }
}

/// The environment variable of a flag: `KUBE_EGRESS_<FLAG_IN_UPPER_SNAKE>`, except the two the
/// downward API feeds under Kubernetes' usual names.
fn env_of(flag: &str) -> String {
    match flag {
        "leader-election-namespace" => "POD_NAMESPACE".into(),
        "identity" => "POD_NAME".into(),
        _ => format!("KUBE_EGRESS_{}", flag.to_uppercase().replace('-', "_")),
    }
}

fn flag_of_env(subcommand: &str, env: &str) -> Option<&'static str> {
    flags_of(subcommand)?
        .iter()
        .copied()
        .find(|f| env_of(f) == env)
}

/// The reachability flags parsed by the code that parses them in the binary.
#[derive(Debug, Parser)]
struct ReachabilityFlags {
    #[command(flatten)]
    reachability: kube_egress_probe::ReachabilityConfig,
}

/// Checks one flag value the way the binary will read it.
fn check_value(flag: &str, value: &str) -> Result<(), String> {
    let bad = |why: String| Err(format!("{flag}={value:?}: {why}"));
    match flag {
        "cluster-cidr" | "service-cidr" => {
            for part in value.split(',') {
                if let Err(e) = part.trim().parse::<IpNet>() {
                    return bad(format!("{part:?} is not a CIDR: {e}"));
                }
            }
            Ok(())
        }
        "egressip-node-healthcheck-port" => match value.parse::<u16>() {
            Ok(_) => Ok(()),
            Err(e) => bad(e.to_string()),
        },
        "egressip-reachability-total-timeout"
        | "egressip-reachability-interval"
        | "egressip-reachability-probe-timeout" => {
            let arg = format!("--{flag}={value}");
            match ReachabilityFlags::try_parse_from(["kube-egress", arg.as_str()]) {
                Ok(_) => Ok(()),
                Err(e) => bad(e.to_string()),
            }
        }
        "publish-node-addressing" => match value {
            "auto" | "always" | "never" => Ok(()),
            _ => bad("expected auto, always or never".into()),
        },
        "cordoned-nodes-ineligible" => match value {
            "true" | "false" => Ok(()),
            _ => bad("expected true or false".into()),
        },
        "metrics-bind-address" => match value.parse::<std::net::SocketAddr>() {
            Ok(_) => Ok(()),
            Err(e) => bad(e.to_string()),
        },
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// Strict parsing.

/// One Kubernetes object of deploy/, typed.
#[derive(Debug)]
enum Object {
    Namespace(Namespace),
    ServiceAccount(ServiceAccount),
    ClusterRole(ClusterRole),
    ClusterRoleBinding(ClusterRoleBinding),
    Role(Role),
    RoleBinding(RoleBinding),
    ConfigMap(ConfigMap),
    Deployment(Deployment),
    DaemonSet(DaemonSet),
    Crd(CustomResourceDefinition),
}

#[derive(Debug)]
struct Document {
    /// `file#n` (n counts from 1), for messages.
    source: String,
    /// The document as written.
    raw: Value,
    object: Object,
}

impl Document {
    fn kind(&self) -> &str {
        self.raw["kind"].as_str().unwrap_or_default()
    }

    fn meta(&self) -> &ObjectMeta {
        match &self.object {
            Object::Namespace(o) => &o.metadata,
            Object::ServiceAccount(o) => &o.metadata,
            Object::ClusterRole(o) => &o.metadata,
            Object::ClusterRoleBinding(o) => &o.metadata,
            Object::Role(o) => &o.metadata,
            Object::RoleBinding(o) => &o.metadata,
            Object::ConfigMap(o) => &o.metadata,
            Object::Deployment(o) => &o.metadata,
            Object::DaemonSet(o) => &o.metadata,
            Object::Crd(o) => &o.metadata,
        }
    }

    fn name(&self) -> &str {
        self.meta().name.as_deref().unwrap_or_default()
    }

    fn namespace(&self) -> Option<&str> {
        self.meta().namespace.as_deref()
    }

    /// `Kind namespace/name`, the identity of an object in the cluster.
    fn key(&self) -> String {
        match self.namespace() {
            Some(ns) => format!("{} {ns}/{}", self.kind(), self.name()),
            None => format!("{} {}", self.kind(), self.name()),
        }
    }
}

/// Where two JSON documents first differ.
#[derive(Debug)]
enum Difference {
    /// A field only the left one has.
    OnlyLeft(String),
    /// A field only the right one has.
    OnlyRight(String),
    /// A value that differs: the path, the left value, the right value.
    Changed(String, Value, Value),
}

fn first_difference(left: &Value, right: &Value, path: &str) -> Option<Difference> {
    match (left, right) {
        (Value::Object(l), Value::Object(r)) => {
            for (key, lv) in l {
                let here = format!("{path}.{key}");
                match r.get(key) {
                    None => return Some(Difference::OnlyLeft(here)),
                    Some(rv) => {
                        if let Some(d) = first_difference(lv, rv, &here) {
                            return Some(d);
                        }
                    }
                }
            }
            r.keys()
                .find(|k| !l.contains_key(*k))
                .map(|k| Difference::OnlyRight(format!("{path}.{k}")))
        }
        (Value::Array(l), Value::Array(r)) if l.len() == r.len() => l
            .iter()
            .zip(r)
            .enumerate()
            .find_map(|(i, (lv, rv))| first_difference(lv, rv, &format!("{path}[{i}]"))),
        _ if left == right => None,
        // A number the type holds as a float (JSONSchemaProps.maximum) is still the same number.
        (Value::Number(l), Value::Number(r)) if l.as_f64() == r.as_f64() => None,
        _ => Some(Difference::Changed(
            if path.is_empty() {
                ".".into()
            } else {
                path.into()
            },
            left.clone(),
            right.clone(),
        )),
    }
}

/// Deserialises `raw` into `T` and fails unless `T` keeps every field exactly as written.
fn strict<T: DeserializeOwned + Serialize>(raw: &Value, source: &str) -> Result<T, String> {
    let object: T = serde_path_to_error::deserialize(raw)
        .map_err(|e| format!("{source}: {}: {}", e.path(), e.inner()))?;
    let read = serde_json::to_value(&object).map_err(|e| format!("{source}: {e}"))?;
    match first_difference(raw, &read, "") {
        None => Ok(object),
        Some(Difference::OnlyLeft(path)) => Err(format!("{source}: unknown field {path}")),
        Some(Difference::OnlyRight(path)) => {
            Err(format!("{source}: field {path} appeared when parsed"))
        }
        Some(Difference::Changed(path, written, read)) => {
            Err(format!("{source}: {path}: {written} is read as {read}"))
        }
    }
}

fn parse_object(raw: Value, source: String) -> Result<Document, String> {
    let api_version = raw["apiVersion"].as_str().unwrap_or_default().to_string();
    let kind = raw["kind"].as_str().unwrap_or_default().to_string();
    let object = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => Object::Namespace(strict(&raw, &source)?),
        ("v1", "ServiceAccount") => Object::ServiceAccount(strict(&raw, &source)?),
        ("v1", "ConfigMap") => Object::ConfigMap(strict(&raw, &source)?),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
            Object::ClusterRole(strict(&raw, &source)?)
        }
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            Object::ClusterRoleBinding(strict(&raw, &source)?)
        }
        ("rbac.authorization.k8s.io/v1", "Role") => Object::Role(strict(&raw, &source)?),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => {
            Object::RoleBinding(strict(&raw, &source)?)
        }
        ("apps/v1", "Deployment") => Object::Deployment(strict(&raw, &source)?),
        ("apps/v1", "DaemonSet") => Object::DaemonSet(strict(&raw, &source)?),
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
            Object::Crd(strict(&raw, &source)?)
        }
        _ => {
            return Err(format!(
                "{source}: apiVersion {api_version:?} kind {kind:?} is not a kind deploy/ is expected to hold"
            ));
        }
    };
    let document = Document {
        source,
        raw,
        object,
    };
    if document.name().is_empty() {
        return Err(format!("{}: metadata.name is missing", document.source));
    }
    Ok(document)
}

/// The YAML documents of a text (empty ones dropped) as JSON values.
fn yaml_values(text: &str, source: &str) -> Result<Vec<Value>, String> {
    let values: Vec<Value> =
        serde_saphyr::from_multiple(text).map_err(|e| format!("{source}: {e}"))?;
    Ok(values.into_iter().filter(|v| !v.is_null()).collect())
}

fn parse_text(text: &str, source: &str) -> Result<Vec<Document>, String> {
    yaml_values(text, source)?
        .into_iter()
        .enumerate()
        .map(|(i, raw)| parse_object(raw, format!("{source}#{}", i + 1)))
        .collect()
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    files
}

fn parse_dir(dir: &str) -> Vec<Document> {
    let mut documents = Vec::new();
    let mut errors = Vec::new();
    for path in yaml_files(&root().join(dir)) {
        let text = std::fs::read_to_string(&path).unwrap();
        let source = path.strip_prefix(root()).unwrap().display().to_string();
        match parse_text(&text, &source) {
            Ok(d) => documents.extend(d),
            Err(e) => errors.push(e),
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    documents
}

// ---------------------------------------------------------------------------------------------
// Consistency of a set of objects (the plain manifests, or one rendering of the chart).

fn find<'a>(
    docs: &'a [Document],
    kind: &str,
    ns: Option<&str>,
    name: &str,
) -> Option<&'a Document> {
    docs.iter()
        .find(|d| d.kind() == kind && d.name() == name && d.namespace() == ns)
}

/// A permission: (namespace or "*" for cluster-wide, API group, resource, verb, resource name or "*").
type Permission = (String, String, String, String, String);

fn permissions_of(rules: &[PolicyRule], scope: &str) -> BTreeSet<Permission> {
    let mut out = BTreeSet::new();
    for rule in rules {
        let groups = rule.api_groups.clone().unwrap_or_default();
        let resources = rule.resources.clone().unwrap_or_default();
        let names = rule
            .resource_names
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| vec!["*".into()]);
        for g in &groups {
            for r in &resources {
                for v in &rule.verbs {
                    for n in &names {
                        out.insert((scope.into(), g.clone(), r.clone(), v.clone(), n.clone()));
                    }
                }
            }
        }
    }
    out
}

/// Everything the bindings grant a ServiceAccount.
fn granted(docs: &[Document], ns: &str, account: &str) -> BTreeSet<Permission> {
    let is_subject = |subjects: &Option<Vec<k8s_openapi::api::rbac::v1::Subject>>| {
        subjects.iter().flatten().any(|s| {
            s.kind == "ServiceAccount" && s.name == account && s.namespace.as_deref() == Some(ns)
        })
    };
    let mut out = BTreeSet::new();
    for d in docs {
        match &d.object {
            Object::ClusterRoleBinding(b) if is_subject(&b.subjects) => {
                if let Some(r) = find(docs, "ClusterRole", None, &b.role_ref.name)
                    && let Object::ClusterRole(role) = &r.object
                {
                    out.extend(permissions_of(
                        role.rules.as_deref().unwrap_or_default(),
                        "*",
                    ));
                }
            }
            Object::RoleBinding(b) if is_subject(&b.subjects) => {
                let scope = d.namespace().unwrap_or_default();
                let role = match b.role_ref.kind.as_str() {
                    "Role" => find(docs, "Role", Some(scope), &b.role_ref.name).and_then(|r| {
                        match &r.object {
                            Object::Role(role) => role.rules.clone(),
                            _ => None,
                        }
                    }),
                    _ => find(docs, "ClusterRole", None, &b.role_ref.name).and_then(|r| {
                        match &r.object {
                            Object::ClusterRole(role) => role.rules.clone(),
                            _ => None,
                        }
                    }),
                };
                out.extend(permissions_of(role.as_deref().unwrap_or_default(), scope));
            }
            _ => {}
        }
    }
    out
}

/// What the code of each component calls, from its Kubernetes edge. Each kind is followed by a
/// watcher (list and watch); `get` only where one object is read by name: an EgressIP re-read after
/// a conflicting status patch, the Lease. `patch` on events: kube's event recorder patches a
/// repeated Event instead of creating it again.
fn needed(component: &str, ns: &str, lease: &str) -> BTreeSet<Permission> {
    let mut out = BTreeSet::new();
    let mut add = |scope: &str, group: &str, resources: &[&str], verbs: &[&str], name: &str| {
        for r in resources {
            for v in verbs {
                out.insert((
                    scope.into(),
                    group.into(),
                    r.to_string(),
                    v.to_string(),
                    name.into(),
                ));
            }
        }
    };
    let read = ["list", "watch"];
    add("*", "", &["namespaces", "pods"], &read, "*");
    add("*", "networking.k8s.io", &["servicecidrs"], &read, "*");
    match component {
        "controller" => {
            add("*", "", &["nodes"], &read, "*");
            // Status and mark: one merge patch of the object.
            add(
                "*",
                "k8s.ovn.org",
                &["egressips"],
                &["get", "list", "watch", "patch"],
                "*",
            );
            // kube-runtime's event recorder: create, and patch for a repeated Event.
            add("*", "events.k8s.io", &["events"], &["create", "patch"], "*");
            add(ns, "coordination.k8s.io", &["leases"], &["create"], "*");
            add(
                ns,
                "coordination.k8s.io",
                &["leases"],
                &["get", "update"],
                lease,
            );
        }
        "agent" => {
            // Addressing annotations of its own node: a merge patch.
            add("*", "", &["nodes"], &["list", "watch", "patch"], "*");
            add("*", "k8s.ovn.org", &["egressips"], &read, "*");
        }
        other => panic!("no permissions known for component {other}"),
    }
    out
}

fn workloads(docs: &[Document]) -> Vec<(&Document, &PodTemplateSpec, &BTreeMap<String, String>)> {
    docs.iter()
        .filter_map(|d| {
            let (template, selector) = match &d.object {
                Object::Deployment(o) => {
                    let spec = o.spec.as_ref()?;
                    (&spec.template, spec.selector.match_labels.as_ref()?)
                }
                Object::DaemonSet(o) => {
                    let spec = o.spec.as_ref()?;
                    (&spec.template, spec.selector.match_labels.as_ref()?)
                }
                _ => return None,
            };
            Some((d, template, selector))
        })
        .collect()
}

/// The flags a container passes on its command line: subcommand and `--flag[=value]` pairs.
fn container_args(
    c: &Container,
    errors: &mut Vec<String>,
    at: &str,
) -> (String, Vec<(String, Option<String>)>) {
    if c.command.is_some() {
        errors.push(format!(
            "{at}: sets command; the image's entrypoint is kube-egress"
        ));
    }
    let args = c.args.clone().unwrap_or_default();
    let Some((subcommand, rest)) = args.split_first() else {
        errors.push(format!("{at}: no subcommand in args"));
        return (String::new(), Vec::new());
    };
    let mut flags = Vec::new();
    for arg in rest {
        match arg.strip_prefix("--") {
            Some(flag) => match flag.split_once('=') {
                Some((name, value)) => flags.push((name.to_string(), Some(value.to_string()))),
                None => flags.push((flag.to_string(), None)),
            },
            None => errors.push(format!("{at}: argument {arg:?} is not --flag=value")),
        }
    }
    (subcommand.clone(), flags)
}

fn port_of_address(address: &str) -> Option<i32> {
    address
        .parse::<std::net::SocketAddr>()
        .ok()
        .map(|a| i32::from(a.port()))
}

/// Every cross-reference and contract check over one set of objects; the list of problems.
fn check_consistency(docs: &[Document]) -> Vec<String> {
    let mut errors = Vec::new();

    // Unique identities.
    let mut seen = BTreeSet::new();
    for d in docs {
        if !seen.insert(d.key()) {
            errors.push(format!("{}: {} is defined twice", d.source, d.key()));
        }
    }

    // Namespaces: when the set creates namespaces, every namespaced object is in one of them.
    let namespaces: BTreeSet<&str> = docs
        .iter()
        .filter(|d| d.kind() == "Namespace")
        .map(|d| d.name())
        .collect();
    for d in docs {
        let cluster_scoped = matches!(
            d.object,
            Object::Namespace(_)
                | Object::ClusterRole(_)
                | Object::ClusterRoleBinding(_)
                | Object::Crd(_)
        );
        match (cluster_scoped, d.namespace()) {
            (true, Some(ns)) => errors.push(format!(
                "{}: {} is cluster-scoped but has namespace {ns}",
                d.source,
                d.key()
            )),
            (false, None) => errors.push(format!("{}: {} has no namespace", d.source, d.key())),
            (false, Some(ns)) if !namespaces.is_empty() && !namespaces.contains(ns) => {
                errors.push(format!(
                    "{}: namespace {ns} of {} is not created here",
                    d.source,
                    d.key()
                ))
            }
            _ => {}
        }
    }

    // RBAC: bindings point at existing roles and service accounts; no wildcards, no Secrets.
    for d in docs {
        let (role_ref, subjects, ns) = match &d.object {
            Object::ClusterRoleBinding(b) => (&b.role_ref, &b.subjects, None),
            Object::RoleBinding(b) => (&b.role_ref, &b.subjects, d.namespace()),
            _ => continue,
        };
        let role_exists = match role_ref.kind.as_str() {
            "Role" if ns.is_some() => find(docs, "Role", ns, &role_ref.name).is_some(),
            "ClusterRole" => find(docs, "ClusterRole", None, &role_ref.name).is_some(),
            _ => false,
        };
        if !role_exists || role_ref.api_group != "rbac.authorization.k8s.io" {
            errors.push(format!(
                "{}: roleRef {} {} does not exist",
                d.source, role_ref.kind, role_ref.name
            ));
        }
        for s in subjects.iter().flatten() {
            let exists = s.kind == "ServiceAccount"
                && find(docs, "ServiceAccount", s.namespace.as_deref(), &s.name).is_some();
            if !exists {
                errors.push(format!(
                    "{}: subject {} {}/{} does not exist",
                    d.source,
                    s.kind,
                    s.namespace.as_deref().unwrap_or("?"),
                    s.name
                ));
            }
        }
    }
    for d in docs {
        let rules = match &d.object {
            Object::ClusterRole(r) => r.rules.as_deref().unwrap_or_default(),
            Object::Role(r) => r.rules.as_deref().unwrap_or_default(),
            _ => continue,
        };
        for (i, rule) in rules.iter().enumerate() {
            let words = rule
                .api_groups
                .iter()
                .flatten()
                .chain(rule.resources.iter().flatten())
                .chain(&rule.verbs);
            for w in words {
                if w.contains('*') || w == "secrets" {
                    errors.push(format!("{}: rules[{i}] grants {w:?}", d.source));
                }
            }
        }
    }

    // ConfigMaps by namespace and name.
    let config_maps: BTreeMap<(String, String), &ConfigMap> = docs
        .iter()
        .filter_map(|d| match &d.object {
            Object::ConfigMap(c) => Some(((d.namespace()?.to_string(), d.name().to_string()), c)),
            _ => None,
        })
        .collect();
    // Which subcommands read each ConfigMap key through envFrom.
    let mut key_readers: BTreeMap<(String, String, String), BTreeSet<String>> = BTreeMap::new();

    for (d, template, selector) in workloads(docs) {
        let ns = d.namespace().unwrap_or_default().to_string();
        let at = d.source.as_str();
        let labels = template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        for (k, v) in selector {
            if labels.get(k) != Some(v) {
                errors.push(format!(
                    "{at}: selector {k}={v} does not match the pod template's labels"
                ));
            }
        }
        let Some(pod) = &template.spec else {
            errors.push(format!("{at}: no pod spec"));
            continue;
        };
        let account = pod.service_account_name.clone().unwrap_or_default();
        if find(docs, "ServiceAccount", Some(&ns), &account).is_none() {
            errors.push(format!(
                "{at}: serviceAccountName {account:?} does not exist in {ns}"
            ));
        }
        let annotations = template
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.clone())
            .unwrap_or_default();

        for c in &pod.containers {
            let at = format!("{at} container {}", c.name);
            let (subcommand, flags) = container_args(c, &mut errors, &at);
            let Some(known) = flags_of(&subcommand) else {
                errors.push(format!("{at}: unknown subcommand {subcommand:?}"));
                continue;
            };
            let mut given: BTreeMap<&str, String> = BTreeMap::new();
            for (flag, value) in &flags {
                if !known.contains(&flag.as_str()) {
                    errors.push(format!(
                        "{at}: --{flag} is not a flag of kube-egress {subcommand}"
                    ));
                    continue;
                }
                let value = value.clone().unwrap_or_else(|| "true".into());
                if let Err(e) = check_value(flag, &value) {
                    errors.push(format!("{at}: {e}"));
                }
                given.insert(known.iter().find(|k| *k == flag).unwrap(), value);
            }

            for env in c.env.iter().flatten() {
                let Some(flag) = flag_of_env(&subcommand, &env.name) else {
                    errors.push(format!(
                        "{at}: env {} is no flag of kube-egress {subcommand}",
                        env.name
                    ));
                    continue;
                };
                if let Some(value) = &env.value
                    && let Err(e) = check_value(flag, value)
                {
                    errors.push(format!("{at}: env {}: {e}", env.name));
                }
                let source = env.value_from.as_ref();
                if let Some(field) = source.and_then(|s| s.field_ref.as_ref()) {
                    let expected = match flag {
                        "leader-election-namespace" => "metadata.namespace",
                        "identity" => "metadata.name",
                        "node" => "spec.nodeName",
                        _ => "",
                    };
                    if field.field_path != expected {
                        errors.push(format!(
                            "{at}: env {} comes from {}, expected {expected:?}",
                            env.name, field.field_path
                        ));
                    }
                }
                if let Some(key_ref) = source.and_then(|s| s.config_map_key_ref.as_ref()) {
                    let exists = config_maps
                        .get(&(ns.clone(), key_ref.name.clone()))
                        .and_then(|cm| cm.data.as_ref())
                        .is_some_and(|data| data.contains_key(&key_ref.key));
                    if !exists {
                        errors.push(format!(
                            "{at}: env {} reads missing ConfigMap key {}/{}",
                            env.name, key_ref.name, key_ref.key
                        ));
                    }
                }
                given.insert(flag, String::new());
            }

            for from in c.env_from.iter().flatten() {
                if from.secret_ref.is_some() || from.prefix.is_some() {
                    errors.push(format!(
                        "{at}: envFrom may only load the settings ConfigMap, without prefix"
                    ));
                }
                let Some(cm_ref) = &from.config_map_ref else {
                    continue;
                };
                match config_maps.get(&(ns.clone(), cm_ref.name.clone())) {
                    None => errors.push(format!(
                        "{at}: envFrom ConfigMap {ns}/{} does not exist",
                        cm_ref.name
                    )),
                    Some(cm) => {
                        for key in cm.data.iter().flatten().map(|(k, _)| k) {
                            key_readers
                                .entry((ns.clone(), cm_ref.name.clone(), key.clone()))
                                .or_default()
                                .insert(subcommand.clone());
                            if let Some(flag) = flag_of_env(&subcommand, key) {
                                given.insert(flag, String::new());
                            }
                        }
                    }
                }
            }

            // The required flag of the agent comes from the downward API.
            if subcommand == "agent" && !given.contains_key("node") {
                errors.push(format!(
                    "{at}: the agent gets no --node (env KUBE_EGRESS_NODE)"
                ));
            }
            if subcommand == "controller" {
                for flag in ["leader-election-namespace", "identity"] {
                    if !given.contains_key(flag) {
                        errors.push(format!(
                            "{at}: the controller gets no --{flag} ({})",
                            env_of(flag)
                        ));
                    }
                }
                let lease = given
                    .get("leader-election-lease-name")
                    .cloned()
                    .unwrap_or_else(|| DEFAULT_LEASE_NAME.into());
                let want = needed("controller", &ns, &lease);
                let have = granted(docs, &ns, &account);
                if want != have {
                    errors.push(format!(
                        "{at}: RBAC of {ns}/{account}: missing {:?}; not needed {:?}",
                        want.difference(&have).collect::<Vec<_>>(),
                        have.difference(&want).collect::<Vec<_>>()
                    ));
                }
            }
            if subcommand == "agent" {
                let want = needed("agent", &ns, "");
                let have = granted(docs, &ns, &account);
                if want != have {
                    errors.push(format!(
                        "{at}: RBAC of {ns}/{account}: missing {:?}; not needed {:?}",
                        want.difference(&have).collect::<Vec<_>>(),
                        have.difference(&want).collect::<Vec<_>>()
                    ));
                }
                if pod.host_network != Some(true) {
                    errors.push(format!(
                        "{at}: the agent must run in the host network namespace"
                    ));
                }
            }

            // Metrics: the port the binary binds is the container's metrics port, the one the
            // probes and the scrape annotation use.
            let ports = c.ports.clone().unwrap_or_default();
            let metrics_port = ports
                .iter()
                .find(|p| p.name.as_deref() == Some("metrics"))
                .map(|p| p.container_port);
            let default_bind = if subcommand == "controller" {
                "0.0.0.0:9476"
            } else {
                "0.0.0.0:9477"
            };
            let bind = given
                .get("metrics-bind-address")
                .cloned()
                .unwrap_or_else(|| default_bind.into());
            if metrics_port != port_of_address(&bind) {
                errors.push(format!(
                    "{at}: metrics binds {bind} but the metrics containerPort is {metrics_port:?}"
                ));
            }
            if annotations.contains_key("prometheus.io/port") {
                let scraped = annotations["prometheus.io/port"].parse::<i32>().ok();
                if scraped != metrics_port {
                    errors.push(format!("{at}: prometheus.io/port {scraped:?} is not the metrics port {metrics_port:?}"));
                }
            }
            for (which, probe) in [
                ("readinessProbe", &c.readiness_probe),
                ("livenessProbe", &c.liveness_probe),
            ] {
                let Some(probe) = probe else {
                    errors.push(format!("{at}: no {which}"));
                    continue;
                };
                use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
                let port = match (&probe.http_get, &probe.grpc, &probe.tcp_socket) {
                    (Some(h), None, None) => h.port.clone(),
                    (None, Some(g), None) => IntOrString::Int(g.port),
                    (None, None, Some(t)) => t.port.clone(),
                    _ => {
                        errors.push(format!("{at}: {which} must have one handler"));
                        continue;
                    }
                };
                let declared = match &port {
                    IntOrString::String(name) => {
                        ports.iter().any(|p| p.name.as_deref() == Some(name))
                    }
                    IntOrString::Int(n) => ports.iter().any(|p| p.container_port == *n),
                };
                if !declared {
                    errors.push(format!(
                        "{at}: {which} probes port {port:?}, which the container does not declare"
                    ));
                }
                if let Some(g) = &probe.grpc
                    && g.service.as_deref() != Some("Service_Egress_IP")
                {
                    errors.push(format!(
                        "{at}: {which} checks gRPC service {:?}, not Service_Egress_IP",
                        g.service
                    ));
                }
            }
        }
    }

    // Every settings key is a flag of a component that loads it, with a value it accepts.
    for ((ns, name, key), readers) in &key_readers {
        let flag = readers.iter().find_map(|s| flag_of_env(s, key));
        match flag {
            None => errors.push(format!(
                "ConfigMap {ns}/{name}: key {key} is no flag of kube-egress {}",
                readers.iter().cloned().collect::<Vec<_>>().join(" or ")
            )),
            Some(flag) => {
                let value = &config_maps[&(ns.clone(), name.clone())]
                    .data
                    .as_ref()
                    .unwrap()[key];
                if let Err(e) = check_value(flag, value) {
                    errors.push(format!("ConfigMap {ns}/{name}: {key}: {e}"));
                }
            }
        }
    }
    for (ns, name) in config_maps.keys() {
        let read = key_readers.keys().any(|(n, m, _)| n == ns && m == name);
        let empty = config_maps[&(ns.clone(), name.clone())]
            .data
            .as_ref()
            .is_none_or(|d| d.is_empty());
        if !read && !empty {
            errors.push(format!("ConfigMap {ns}/{name} is loaded by no workload"));
        }
    }
    errors
}

fn assert_consistent(docs: &[Document], what: &str) {
    let errors = check_consistency(docs);
    assert!(errors.is_empty(), "{what}:\n{}", errors.join("\n"));
}

fn workload<'a>(docs: &'a [Document], kind: &str, name: &str) -> &'a Document {
    docs.iter()
        .find(|d| d.kind() == kind && d.name() == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn pod_template(d: &Document) -> &PodTemplateSpec {
    match &d.object {
        Object::Deployment(o) => &o.spec.as_ref().unwrap().template,
        Object::DaemonSet(o) => &o.spec.as_ref().unwrap().template,
        _ => panic!("{} is not a workload", d.key()),
    }
}

fn only_container(d: &Document) -> &Container {
    let containers = &pod_template(d).spec.as_ref().unwrap().containers;
    assert_eq!(containers.len(), 1, "{}: one container", d.key());
    &containers[0]
}

fn config_data<'a>(docs: &'a [Document], name: &str) -> &'a BTreeMap<String, String> {
    docs.iter()
        .find_map(|d| match &d.object {
            Object::ConfigMap(c) if d.name() == name => c.data.as_ref(),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no ConfigMap {name}"))
}

// ---------------------------------------------------------------------------------------------
// The plain manifests.

#[test]
fn every_manifest_parses_strictly() {
    let docs = parse_dir(MANIFESTS);
    let kinds: BTreeSet<&str> = docs.iter().map(|d| d.kind()).collect();
    for kind in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "Deployment",
        "DaemonSet",
    ] {
        assert!(kinds.contains(kind), "deploy/kubernetes/ holds no {kind}");
    }
    let crds = parse_dir(CRDS);
    assert!(crds.iter().all(|d| d.kind() == "CustomResourceDefinition"));
    let names: BTreeSet<&str> = crds.iter().map(|d| d.name()).collect();
    assert_eq!(
        names,
        BTreeSet::from(["egressips.k8s.ovn.org", "egressfirewalls.k8s.ovn.org"])
    );
}

#[test]
fn a_typo_or_a_wrong_type_is_an_error_naming_the_field() {
    let base = std::fs::read_to_string(root().join(MANIFESTS).join("50-agent.yaml")).unwrap();
    assert!(parse_text(&base, "agent").is_ok());
    let cases = [
        (
            "hostNetwork: true",
            "hostNetwrok: true",
            "unknown field .spec.template.spec.hostNetwrok",
        ),
        (
            "hostNetwork: true",
            "hostNetwork: yes please",
            "spec.template.spec.hostNetwork: invalid type",
        ),
        (
            "containerPort: 9477",
            "containerPort: 9477\n              hostIP: 0.0.0.0\n              protcol: TCP",
            "unknown field .spec.template.spec.containers[0].ports[0].protcol",
        ),
        ("kind: DaemonSet", "kind: DaemonSets", "DaemonSets"),
    ];
    for (from, to, expected) in cases {
        assert!(base.contains(from), "the agent manifest has {from:?}");
        let broken = base.replacen(from, to, 1);
        let error = parse_text(&broken, "agent").expect_err(&format!("{to:?} must be refused"));
        assert!(
            error.contains(expected),
            "{to:?}: the error {error:?} should name {expected:?}"
        );
    }
}

#[test]
fn manifests_reference_each_other_and_use_only_the_command_line_contract() {
    let docs = parse_dir(MANIFESTS);
    assert_consistent(&docs, "deploy/kubernetes/");

    let controller = workload(&docs, "Deployment", "kube-egress-controller");
    match &controller.object {
        Object::Deployment(d) => assert_eq!(d.spec.as_ref().unwrap().replicas, Some(2)),
        _ => unreachable!(),
    }
    let agent = workload(&docs, "DaemonSet", "kube-egress-agent");
    let pod = pod_template(agent).spec.as_ref().unwrap();
    let tolerates_all =
        pod.tolerations.iter().flatten().any(|t| {
            t.operator.as_deref() == Some("Exists") && t.key.is_none() && t.effect.is_none()
        });
    assert!(
        tolerates_all,
        "the agent must run on every node, tainted or not"
    );
}

#[test]
fn the_checks_catch_broken_references() {
    let good = parse_dir(MANIFESTS);
    assert!(check_consistency(&good).is_empty());
    let all: String = yaml_files(&root().join(MANIFESTS))
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap() + "\n---\n")
        .collect();
    let cases = [
        // A ServiceAccount name that does not exist.
        (
            "serviceAccountName: kube-egress-agent",
            "serviceAccountName: kube-egress-agnet",
            "serviceAccountName \"kube-egress-agnet\"",
        ),
        // A flag outside the contract.
        (
            "- --metrics-bind-address=0.0.0.0:9477",
            "- --metrics-address=0.0.0.0:9477",
            "--metrics-address is not a flag of kube-egress agent",
        ),
        // A settings key no component reads.
        (
            "KUBE_EGRESS_PUBLISH_NODE_ADDRESSING: \"auto\"",
            "KUBE_EGRESS_PUBLISH_NODE_ADRESSING: \"auto\"",
            "key KUBE_EGRESS_PUBLISH_NODE_ADRESSING is no flag",
        ),
        // A value the binary would refuse.
        (
            "KUBE_EGRESS_EGRESSIP_REACHABILITY_INTERVAL: \"200ms\"",
            "KUBE_EGRESS_EGRESSIP_REACHABILITY_INTERVAL: \"0\"",
            "egressip-reachability-interval=\"0\"",
        ),
        // A binding to a role that does not exist.
        (
            "  kind: ClusterRole\n  name: kube-egress-agent",
            "  kind: ClusterRole\n  name: kube-egress-agents",
            "roleRef ClusterRole kube-egress-agents",
        ),
        // A permission the code does not need.
        (
            "verbs: [\"get\", \"list\", \"watch\", \"patch\"]",
            "verbs: [\"get\", \"list\", \"watch\", \"patch\", \"delete\"]",
            "not needed",
        ),
        // The metrics port and the bound address disagree.
        (
            "containerPort: 9476",
            "containerPort: 9999",
            "metrics binds 0.0.0.0:9476",
        ),
        // The leader-election Lease the controller uses is not the one its Role allows.
        (
            "- --leader-election-lease-name=kube-egress-controller",
            "- --leader-election-lease-name=egress-leader",
            "missing",
        ),
        // A ConfigMap that is not there.
        (
            "      envFrom:\n            - configMapRef:\n                name: kube-egress-config",
            "      envFrom:\n            - configMapRef:\n                name: kube-egress-settings",
            "ConfigMap kube-egress/kube-egress-settings does not exist",
        ),
    ];
    for (from, to, expected) in cases {
        assert!(all.contains(from), "the manifests hold {from:?}");
        let docs = parse_text(&all.replacen(from, to, 1), "manifests").unwrap();
        let errors = check_consistency(&docs).join("\n");
        assert!(
            errors.contains(expected),
            "{to:?}: expected a problem with {expected:?}, got:\n{errors}"
        );
    }
}

/// Each RBAC rule says why it exists: a comment right above it.
fn uncommented_rules(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.trim_start().starts_with("- apiGroups:"))
        .filter(|(i, _)| *i == 0 || !lines[i - 1].trim_start().starts_with('#'))
        .map(|(i, l)| format!("line {}: {}", i + 1, l.trim()))
        .collect()
}

#[test]
fn every_rbac_rule_is_commented() {
    for path in [
        format!("{MANIFESTS}/20-rbac.yaml"),
        format!("{CHART}/templates/rbac.yaml"),
    ] {
        let text = std::fs::read_to_string(root().join(&path)).unwrap();
        assert!(text.contains("- apiGroups:"), "{path} holds rules");
        let missing = uncommented_rules(&text);
        assert!(
            missing.is_empty(),
            "{path}: rules without a comment saying why:\n{}",
            missing.join("\n")
        );
    }
    assert_eq!(
        uncommented_rules("rules:\n  - apiGroups: [\"\"]\n").len(),
        1
    );
}

#[test]
fn image_chart_and_crate_versions_agree() {
    let version = env!("CARGO_PKG_VERSION");
    let docs = parse_dir(MANIFESTS);
    for (d, template, _) in workloads(&docs) {
        for c in &template.spec.as_ref().unwrap().containers {
            assert_eq!(
                c.image.as_deref(),
                Some(format!("kube-egress:{version}").as_str()),
                "{}",
                d.source
            );
        }
    }
    let chart: ChartYaml = strict_yaml(&root().join(CHART).join("Chart.yaml"));
    assert_eq!(chart.api_version, "v2");
    assert_eq!(chart.name, "kube-egress");
    assert_eq!(chart.app_version, version);
    assert_eq!(chart.version, version);
    assert_eq!(chart.chart_type, "application");
    assert!(!chart.description.is_empty());
}

/// Chart.yaml, with only the fields this chart uses (an unknown one is an error).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ChartYaml {
    api_version: String,
    name: String,
    description: String,
    #[serde(rename = "type")]
    chart_type: String,
    version: String,
    app_version: String,
}

fn strict_yaml<T: DeserializeOwned>(path: &Path) -> T {
    let text = std::fs::read_to_string(path).unwrap();
    let value: Value =
        serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_path_to_error::deserialize(&value)
        .unwrap_or_else(|e| panic!("{}: {}: {}", path.display(), e.path(), e.inner()))
}

#[test]
fn the_dockerfile_builds_with_the_workspace_toolchain_and_ships_what_the_agent_runs() {
    let text = std::fs::read_to_string(root().join(DOCKERFILE)).unwrap();
    let froms: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("FROM "))
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(
        froms.len(),
        2,
        "a build stage and a runtime stage: {froms:?}"
    );
    let (build, runtime) = (froms[0], froms[1]);
    // rust:<major>.<minor>-<debian release>
    let tag = build.rsplit_once(':').expect("a tagged Rust image").1;
    let (rust, build_release) = tag.split_once('-').expect("rust:VERSION-RELEASE");
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let workspace = manifest
        .lines()
        .find(|l| l.starts_with("rust-version"))
        .and_then(|l| l.split('"').nth(1))
        .expect("the workspace declares rust-version");
    let minor = |v: &str| -> (u32, u32) {
        let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap());
        (parts.next().unwrap(), parts.next().unwrap())
    };
    assert!(
        minor(rust) >= minor(workspace),
        "the build image's Rust {rust} is older than the workspace's rust-version {workspace}"
    );
    assert!(
        runtime.ends_with(&format!(":{build_release}-slim")),
        "the runtime ({runtime}) must be the Debian release the binary was built on ({build_release}), for its glibc"
    );
    assert!(text.contains("cargo build --release --locked --bin kube-egress"));
    let install = text
        .lines()
        .skip_while(|l| !l.contains("apt-get install"))
        .take_while(|l| !l.contains("rm -rf"))
        .collect::<String>();
    for package in ["nftables", "iproute2"] {
        assert!(
            install.contains(package),
            "the runtime image installs {package}"
        );
    }
    assert!(text.contains("ENTRYPOINT [\"/usr/local/bin/kube-egress\"]"));
}

/// The flags the plain manifests give each subcommand: arguments, environment variables and
/// settings keys.
fn provided_flags(docs: &[Document]) -> BTreeMap<String, BTreeSet<&'static str>> {
    let mut out: BTreeMap<String, BTreeSet<&'static str>> = BTreeMap::new();
    for (_, template, _) in workloads(docs) {
        for c in &template.spec.as_ref().unwrap().containers {
            let args = c.args.clone().unwrap_or_default();
            let Some(subcommand) = args.first() else {
                continue;
            };
            let mut names: Vec<String> = c.env.iter().flatten().map(|e| e.name.clone()).collect();
            for from in c.env_from.iter().flatten() {
                if let Some(cm) = from.config_map_ref.as_ref() {
                    names.extend(config_data(docs, &cm.name).keys().cloned());
                }
            }
            let entry = out.entry(subcommand.clone()).or_default();
            for name in names {
                entry.extend(flag_of_env(subcommand, &name));
            }
            for arg in &args[1..] {
                let flag = arg.trim_start_matches("--").split('=').next().unwrap();
                entry.extend(
                    flags_of(subcommand)
                        .unwrap_or_default()
                        .iter()
                        .find(|f| **f == flag),
                );
            }
        }
    }
    out
}

/// The flags clap's usage line lists outside brackets, i.e. the required ones.
fn required_flags(help: &str) -> Vec<String> {
    let usage = help
        .split("Usage:")
        .nth(1)
        .and_then(|rest| rest.split("\n\n").next())
        .unwrap_or_default();
    let mut depth = 0i32;
    let mut required = Vec::new();
    for token in usage.split_whitespace() {
        if depth == 0 && token.starts_with("--") {
            required.push(token.trim_start_matches("--").to_string());
        }
        depth += token.matches('[').count() as i32 - token.matches(']').count() as i32;
    }
    required
}

/// What a subcommand's `--help` says is missing: a flag of the contract, the environment variable
/// of one, or a required flag the manifests do not give.
fn contract_problems(
    subcommand: &str,
    help: &str,
    provided: &BTreeMap<String, BTreeSet<&'static str>>,
) -> Vec<String> {
    let mut problems = Vec::new();
    // Help text wraps anywhere between words.
    let words = help.split_whitespace().collect::<Vec<_>>().join(" ") + " ";
    for flag in flags_of(subcommand).unwrap() {
        if !words.contains(&format!("--{flag} ")) {
            problems.push(format!("kube-egress {subcommand} has no --{flag}"));
        } else if !words.contains(&format!("[env: {}", env_of(flag))) {
            problems.push(format!(
                "kube-egress {subcommand} --{flag} does not read {}",
                env_of(flag)
            ));
        }
    }
    for flag in required_flags(help) {
        if !provided
            .get(subcommand)
            .is_some_and(|p| p.contains(flag.as_str()))
        {
            problems.push(format!(
                "kube-egress {subcommand} requires --{flag}, which deploy/kubernetes/ does not give"
            ));
        }
    }
    problems
}

/// A clap command with the contract's flags, as the binary declares them.
fn contract_command(subcommand: &'static str, required: &[&str]) -> clap::Command {
    let mut command = clap::Command::new(subcommand);
    for flag in flags_of(subcommand).unwrap() {
        command = command.arg(
            clap::Arg::new(*flag)
                .long(*flag)
                // clap takes static names without its `string` feature.
                .env(&*Box::leak(env_of(flag).into_boxed_str()))
                .required(required.contains(flag))
                .help("A setting whose help text is long enough to wrap over more than one line of the terminal."),
        );
    }
    command
}

#[test]
fn the_contract_check_reads_clap_help() {
    let provided = provided_flags(&parse_dir(MANIFESTS));
    assert!(provided["agent"].contains("node"), "{provided:?}");
    assert!(provided["controller"].contains("identity"), "{provided:?}");

    let help = contract_command("agent", &["node"])
        .render_long_help()
        .to_string();
    assert_eq!(required_flags(&help), ["node"]);
    assert_eq!(
        contract_problems("agent", &help, &provided),
        Vec::<String>::new()
    );

    // A flag the binary lacks, one without its environment variable, a required one not given.
    let mut command = contract_command("agent", &["node", "healthcheck-tls-cert"])
        .mut_arg("publish-node-addressing", |a| a.long("publish-addressing"))
        .mut_arg("service-cidr", |a| a.env("SERVICE_CIDR"));
    let help = command.render_long_help().to_string();
    let problems = contract_problems("agent", &help, &provided).join("\n");
    for expected in [
        "has no --publish-node-addressing",
        "--service-cidr does not read KUBE_EGRESS_SERVICE_CIDR",
        "requires --healthcheck-tls-cert",
    ] {
        assert!(
            problems.contains(expected),
            "{expected:?} not in:\n{problems}"
        );
    }
}

#[test]
fn the_binary_has_every_flag_of_the_contract() {
    let help = |subcommand: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_kube-egress"))
            .args([subcommand, "--help"])
            .output()
            .expect("run kube-egress");
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    };
    if help("controller").is_none() {
        eprintln!(
            "skipped: this kube-egress has no controller subcommand yet; the manifests are checked \
             against the flag lists of this test"
        );
        return;
    }
    let provided = provided_flags(&parse_dir(MANIFESTS));
    let mut problems = Vec::new();
    for subcommand in ["controller", "agent"] {
        let text = help(subcommand).unwrap_or_default();
        problems.extend(contract_problems(subcommand, &text, &provided));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// The Helm chart, rendered by Helm's engine (scripts/helm-render; scripts/test installs it).

struct Rendering {
    helm: String,
    manifests: BTreeMap<String, String>,
    crds: BTreeMap<String, String>,
    lint: Value,
}

/// Whether the Helm engine is installed; outside CI a missing one skips the Helm tests with a
/// message, in CI it fails them.
fn helm_available() -> bool {
    let out = Command::new("python3")
        .arg(root().join("scripts/helm-render"))
        .arg("--version")
        .output();
    match out {
        Ok(o) if o.status.success() => true,
        other => {
            let why = match other {
                Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
                Err(e) => e.to_string(),
            };
            assert!(
                std::env::var_os("CI").is_none(),
                "the Helm engine is missing in CI ({why}); scripts/test installs it with scripts/install-helm-renderer"
            );
            eprintln!(
                "skipped: the Helm engine is not installed ({why}); run scripts/install-helm-renderer"
            );
            false
        }
    }
}

fn render(name: &str, namespace: &str, values: Value) -> Rendering {
    try_render(name, namespace, &values)
        .unwrap_or_else(|e| panic!("helm-render with {values}: {e}"))
}

/// The chart rendered with `values`, or Helm's error.
fn try_render(name: &str, namespace: &str, values: &Value) -> Result<Rendering, String> {
    let out = Command::new("python3")
        .arg(root().join("scripts/helm-render"))
        .arg(root().join(CHART))
        .args([
            "--name",
            name,
            "--namespace",
            namespace,
            "--json",
            "--values",
        ])
        .arg(values.to_string())
        .output()
        .expect("run scripts/helm-render");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let report: Value = serde_json::from_slice(&out.stdout).expect("helm-render prints JSON");
    let texts = |key: &str| -> BTreeMap<String, String> {
        serde_json::from_value(report[key].clone()).unwrap_or_else(|e| panic!("{key}: {e}"))
    };
    Ok(Rendering {
        helm: report["helm"].as_str().unwrap_or_default().to_string(),
        manifests: texts("manifests"),
        crds: texts("crds"),
        lint: report["lint"].clone(),
    })
}

impl Rendering {
    /// The rendered objects, parsed as strictly as the plain manifests.
    fn documents(&self) -> Vec<Document> {
        let mut docs = Vec::new();
        for (path, text) in &self.manifests {
            if path.ends_with("NOTES.txt") {
                continue;
            }
            docs.extend(parse_text(text, path).unwrap_or_else(|e| panic!("{e}\n{text}")));
        }
        docs
    }
}

/// The document without the labels Helm adds for release tracking.
fn without_helm_labels(mut raw: Value) -> Value {
    fn strip(labels: &mut Value) {
        if let Some(map) = labels.as_object_mut() {
            for label in HELM_LABELS {
                map.remove(*label);
            }
        }
    }
    strip(&mut raw["metadata"]["labels"]);
    if raw["spec"]["template"]["metadata"]["labels"].is_object() {
        strip(&mut raw["spec"]["template"]["metadata"]["labels"]);
    }
    raw
}

#[test]
fn the_chart_with_default_values_renders_the_plain_manifests() {
    if !helm_available() {
        return;
    }
    let rendering = render(RELEASE, "kube-egress", json!({}));
    assert_eq!(rendering.helm, HELM_VERSION);

    let plain: BTreeMap<String, Value> = parse_dir(MANIFESTS)
        .into_iter()
        .filter(|d| d.kind() != "Namespace") // `helm install --create-namespace` makes it
        .map(|d| (d.key(), d.raw))
        .collect();
    let docs = rendering.documents();
    assert_consistent(&docs, "the chart with default values");
    for d in &docs {
        let labels = d.meta().labels.clone().unwrap_or_default();
        assert_eq!(
            labels
                .get("app.kubernetes.io/managed-by")
                .map(String::as_str),
            Some("Helm"),
            "{}",
            d.key()
        );
        assert_eq!(
            labels.get("app.kubernetes.io/instance").map(String::as_str),
            Some(RELEASE),
            "{}",
            d.key()
        );
    }
    let rendered: BTreeMap<String, Value> = docs
        .into_iter()
        .map(|d| (d.key(), without_helm_labels(d.raw)))
        .collect();
    assert_eq!(
        plain.keys().collect::<Vec<_>>(),
        rendered.keys().collect::<Vec<_>>(),
        "the chart renders other objects than deploy/kubernetes/"
    );
    for (key, want) in &plain {
        let problem = match first_difference(want, &rendered[key], "") {
            None => continue,
            Some(Difference::OnlyLeft(path)) => format!("{path} is only in deploy/kubernetes/"),
            Some(Difference::OnlyRight(path)) => format!("{path} is only in the chart"),
            Some(Difference::Changed(path, plain, chart)) => {
                format!("{path} is {plain} in deploy/kubernetes/ but {chart} in the chart")
            }
        };
        panic!("{key}: the chart differs from the plain manifests: {problem}");
    }
}

#[test]
fn the_chart_installs_the_generated_crds_and_passes_helm_lint() {
    if !helm_available() {
        return;
    }
    let rendering = render(RELEASE, "kube-egress", json!({}));
    let mut expected = BTreeMap::new();
    for path in yaml_files(&root().join(CRDS)) {
        let name = format!("crds/{}", path.file_name().unwrap().to_str().unwrap());
        expected.insert(name, std::fs::read_to_string(&path).unwrap());
    }
    assert_eq!(
        rendering.crds, expected,
        "the chart's crds/ must be deploy/crds/"
    );

    assert_eq!(
        rendering.lint["errors"],
        json!([]),
        "helm lint --strict: {}",
        rendering.lint
    );
    let messages = rendering.lint["messages"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let serious: Vec<&Value> = messages
        .iter()
        .filter(|m| m["severity"].as_i64().unwrap_or(3) >= 2)
        .collect();
    assert!(serious.is_empty(), "helm lint --strict: {serious:?}");
}

#[test]
fn chart_values_override_what_they_name() {
    if !helm_available() {
        return;
    }
    let values = json!({
        "image": {"repository": "registry.example/net/kube-egress", "tag": "v9"},
        "config": {
            "egressipReachabilityTotalTimeout": "0",
            "egressipNodeHealthcheckPort": 9107,
            "egressipReachabilityInterval": "1s",
            "egressipReachabilityProbeTimeout": "total",
            "publishNodeAddressing": "never",
            "clusterCIDRs": ["10.244.0.0/16", "fd00:10:244::/56"],
            "serviceCIDRs": ["10.96.0.0/12"],
            "cordonedNodesIneligible": true
        },
        "controller": {"replicas": 3, "leaseName": "egress-leader", "metricsPort": 19476},
        "agent": {"privileged": false, "metricsPort": 19477, "nodeSelector": {"kubernetes.io/os": "linux"}},
        "prometheusAnnotations": false
    });
    let docs = render("edge", "net", values).documents();
    // The checks of the plain manifests hold for any values: names, RBAC, flags, ports.
    assert_consistent(&docs, "the chart with overrides");

    for d in &docs {
        assert!(
            d.name().starts_with("edge-kube-egress-"),
            "{}: release-prefixed name",
            d.key()
        );
        assert!(
            d.namespace().is_none_or(|ns| ns == "net"),
            "{}: release namespace",
            d.key()
        );
    }
    let controller = workload(&docs, "Deployment", "edge-kube-egress-controller");
    let agent = workload(&docs, "DaemonSet", "edge-kube-egress-agent");
    match &controller.object {
        Object::Deployment(d) => assert_eq!(d.spec.as_ref().unwrap().replicas, Some(3)),
        _ => unreachable!(),
    }
    for d in [controller, agent] {
        let c = only_container(d);
        assert_eq!(
            c.image.as_deref(),
            Some("registry.example/net/kube-egress:v9")
        );
        let annotations = pod_template(d)
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .clone();
        assert!(
            annotations.unwrap_or_default().is_empty(),
            "no scrape annotations"
        );
    }
    let args = only_container(controller).args.clone().unwrap();
    assert!(
        args.contains(&"--leader-election-lease-name=egress-leader".to_string()),
        "{args:?}"
    );
    assert!(
        args.contains(&"--metrics-bind-address=0.0.0.0:19476".to_string()),
        "{args:?}"
    );

    let data = config_data(&docs, "edge-kube-egress-config");
    let expected: BTreeMap<String, String> = [
        ("KUBE_EGRESS_EGRESSIP_REACHABILITY_TOTAL_TIMEOUT", "0"),
        ("KUBE_EGRESS_EGRESSIP_NODE_HEALTHCHECK_PORT", "9107"),
        ("KUBE_EGRESS_EGRESSIP_REACHABILITY_INTERVAL", "1s"),
        ("KUBE_EGRESS_EGRESSIP_REACHABILITY_PROBE_TIMEOUT", "total"),
        ("KUBE_EGRESS_PUBLISH_NODE_ADDRESSING", "never"),
        ("KUBE_EGRESS_CLUSTER_CIDR", "10.244.0.0/16,fd00:10:244::/56"),
        ("KUBE_EGRESS_SERVICE_CIDR", "10.96.0.0/12"),
        ("KUBE_EGRESS_CORDONED_NODES_INELIGIBLE", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(data, &expected);

    // With a health-check port the agent is ready when its gRPC health service serves.
    let c = only_container(agent);
    let grpc = c
        .readiness_probe
        .as_ref()
        .unwrap()
        .grpc
        .as_ref()
        .expect("a gRPC readiness probe");
    assert_eq!(
        (grpc.port, grpc.service.as_deref()),
        (9107, Some("Service_Egress_IP"))
    );
    assert!(c.liveness_probe.as_ref().unwrap().http_get.is_some());
    // Unprivileged: exactly NET_ADMIN and NET_RAW.
    let security = c.security_context.as_ref().unwrap();
    assert_eq!(security.privileged, None);
    let caps = security.capabilities.as_ref().unwrap();
    assert_eq!(
        caps.add.as_deref(),
        Some(&["NET_ADMIN".to_string(), "NET_RAW".to_string()][..])
    );
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    let pod = pod_template(agent).spec.as_ref().unwrap();
    assert_eq!(
        pod.node_selector.clone().unwrap_or_default(),
        BTreeMap::from([("kubernetes.io/os".to_string(), "linux".to_string())])
    );
}

#[test]
fn the_chart_refuses_values_it_does_not_know_or_of_the_wrong_type() {
    if !helm_available() {
        return;
    }
    let cases = [
        (
            json!({"controller": {"replica": 3}}),
            "additional properties 'replica' not allowed",
        ),
        (
            json!({"agent": {"metricsPort": "9477"}}),
            "/agent/metricsPort",
        ),
        (
            json!({"config": {"publishNodeAddressing": "sometimes"}}),
            "/config/publishNodeAddressing",
        ),
        (
            json!({"config": {"egressipNodeHealthcheckPort": 70000}}),
            "/config/egressipNodeHealthcheckPort",
        ),
    ];
    for (values, expected) in cases {
        match try_render(RELEASE, "kube-egress", &values) {
            Ok(_) => panic!("{values} must be refused"),
            Err(e) => assert!(e.contains(expected), "{values}: {expected:?} not in\n{e}"),
        }
    }
}

#[test]
fn bad_values_fail_the_checks_of_the_rendering() {
    if !helm_available() {
        return;
    }
    // Values the chart passes through are still checked against what the binary accepts.
    let docs = render(
        RELEASE,
        "kube-egress",
        json!({"config": {"clusterCIDRs": ["10.244.0.0/33"]}}),
    )
    .documents();
    let errors = check_consistency(&docs).join("\n");
    assert!(
        errors.contains("\"10.244.0.0/33\" is not a CIDR"),
        "{errors}"
    );
}
