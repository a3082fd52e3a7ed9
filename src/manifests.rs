//! Kubernetes manifests read from files and directories, as typed objects.
//!
//! Used by `kube-egress plan` and meant for every edge that reads manifests (the node agent's
//! `--manifests DIR` later): [`Manifests::load`] returns plain vectors of typed objects.
//!
//! Input:
//! - a path is a file or a directory; a directory contributes its `*.yaml`, `*.yml` and `*.json`
//!   files (not hidden ones), sorted by name, without descending into subdirectories; `-` is
//!   standard input (YAML, which includes JSON);
//! - `*.json` files hold one or more JSON values; every other file is multi-document YAML;
//! - `kind: List` and typed lists (`NodeList`, `EgressIPList`, ...) contribute their `items`; the
//!   items of a typed list may leave out `apiVersion` and `kind`, as the API server returns them.
//!
//! YAML is read with the YAML 1.2 core schema: only `true`/`false` are booleans, and numbers with
//! leading zeros or underscores stay strings (`yes`, `on`, `0755` are strings, not `true` or 493).
//!
//! Kinds:
//! - `v1` Node, Namespace, Pod; `k8s.ovn.org/v1` EgressIP, EgressFirewall; `networking.k8s.io/v1`
//!   and `v1beta1` ServiceCIDR are loaded;
//! - any other `k8s.ovn.org` kind is an error: it would change egress behaviour and this tool would
//!   silently ignore it, so the plan would be wrong;
//! - a kind spelt like a supported one but for case (`EgressIp`), and a supported kind under another
//!   `apiVersion`, are errors (typos must not silently drop objects);
//! - every other kind (Service, Deployment, ConfigMap, ...) is skipped with a warning: a dump of a
//!   whole cluster or application manifests can be given as is, and these kinds do not affect
//!   egress planning.
//!
//! Errors name the file, the document (numbered from 1 in the order of the file; empty documents
//! are skipped and not counted, so the line where the document starts is given as well), the object
//! and the path of the offending field. Objects are identified by kind, namespace and name; a second
//! object with the same identity is an error naming both places. A namespaced object without
//! `metadata.namespace` lands in `default`, as `kubectl apply` with the default context would do.
//! Fields the typed objects do not know are ignored with a warning (a misspelt `podSelector` would
//! otherwise select every pod without notice).

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow, bail};
use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube_egress_api::{EgressFirewall, EgressIP};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// The kinds this module loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Node,
    Namespace,
    Pod,
    EgressIP,
    EgressFirewall,
    ServiceCIDR,
}

impl Kind {
    const ALL: [Kind; 6] = [
        Kind::Node,
        Kind::Namespace,
        Kind::Pod,
        Kind::EgressIP,
        Kind::EgressFirewall,
        Kind::ServiceCIDR,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Node => "Node",
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::EgressIP => "EgressIP",
            Kind::EgressFirewall => "EgressFirewall",
            Kind::ServiceCIDR => "ServiceCIDR",
        }
    }

    /// The `apiVersion`s accepted for the kind.
    fn api_versions(self) -> &'static [&'static str] {
        match self {
            Kind::Node | Kind::Namespace | Kind::Pod => &["v1"],
            Kind::EgressIP | Kind::EgressFirewall => &[kube_egress_api::API_VERSION],
            Kind::ServiceCIDR => &["networking.k8s.io/v1", "networking.k8s.io/v1beta1"],
        }
    }

    fn namespaced(self) -> bool {
        matches!(self, Kind::Pod | Kind::EgressFirewall)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identity of an object: kind, namespace (namespaced kinds only) and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: Option<String>,
    pub name: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// Where an object was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The path as given (or `<stdin>`).
    pub file: String,
    /// Document number in the file, from 1; empty documents are not counted.
    pub document: usize,
    /// Line where the document starts, when known.
    pub line: Option<u64>,
    /// Index in the `items` of a list document.
    pub item: Option<usize>,
}

impl Source {
    /// `FILE: document N[, items[I]] (WHAT, line L)`, the prefix of every message about an object.
    fn context(&self, what: Option<&str>) -> String {
        let mut s = format!("{}: document {}", self.file, self.document);
        if let Some(i) = self.item {
            s.push_str(&format!(", items[{i}]"));
        }
        let mut notes: Vec<String> = what.map(str::to_string).into_iter().collect();
        if let (Some(line), None) = (self.line, self.item) {
            notes.push(format!("line {line}"));
        }
        if !notes.is_empty() {
            s.push_str(&format!(" ({})", notes.join(", ")));
        }
        s
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.context(None))
    }
}

/// A `networking.k8s.io` ServiceCIDR (v1 or v1beta1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceCidr {
    pub name: String,
    /// `spec.cidrs`, in network address form.
    pub cidrs: Vec<IpNet>,
}

/// How a file is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Multi-document YAML (JSON is accepted as well).
    Yaml,
    /// A stream of JSON values.
    Json,
}

impl Format {
    /// JSON for `*.json`, YAML otherwise.
    pub fn of(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("json") => Format::Json,
            _ => Format::Yaml,
        }
    }
}

/// The objects read from a set of manifests, in input order per kind.
#[derive(Debug, Clone, Default)]
pub struct Manifests {
    pub nodes: Vec<Node>,
    pub namespaces: Vec<Namespace>,
    pub pods: Vec<Pod>,
    pub egress_ips: Vec<EgressIP>,
    /// Accepted and kept; not planned yet.
    pub egress_firewalls: Vec<EgressFirewall>,
    pub service_cidrs: Vec<ServiceCidr>,
    /// Where every object was read.
    pub sources: BTreeMap<ObjectKey, Source>,
    /// Findings that do not stop loading (skipped kinds, unknown fields), one line each, for the
    /// caller to print or log.
    pub warnings: Vec<String>,
    /// Files read so far (canonical path → path as given), to refuse reading one twice.
    read: BTreeMap<PathBuf, String>,
}

impl Manifests {
    /// Reads every path (file, directory or `-`) in order.
    pub fn load<P: AsRef<Path>>(paths: impl IntoIterator<Item = P>) -> Result<Manifests> {
        let mut manifests = Manifests::default();
        for path in paths {
            manifests.add_path(path.as_ref())?;
        }
        Ok(manifests)
    }

    /// Whether no object was loaded.
    /// The engine's view of the objects (reachability not included).
    pub fn snapshot(&self) -> kube_egress_engine::Snapshot {
        use kube_egress_engine::{EgressIpInfo, NamespaceInfo, NodeInfo, PodInfo};
        kube_egress_engine::Snapshot {
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
                .map(EgressIpInfo::from_egress_ip)
                .collect(),
            service_cidrs: self
                .service_cidrs
                .iter()
                .map(|s| (s.name.clone(), s.cidrs.clone()))
                .collect(),
            unreachable: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// Adds a file, the manifest files of a directory, or standard input for `-`.
    pub fn add_path(&mut self, path: &Path) -> Result<()> {
        if path.as_os_str() == "-" {
            if self
                .read
                .insert(PathBuf::from("-"), "-".to_string())
                .is_some()
            {
                bail!("standard input (-) is given more than once");
            }
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| anyhow!("<stdin>: {e}"))?;
            return self.add_text("<stdin>", &text, Format::Yaml);
        }
        let meta = std::fs::metadata(path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        if !meta.is_dir() {
            return self.add_file(path);
        }
        let mut files = Vec::new();
        let entries = std::fs::read_dir(path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| anyhow!("{}: {e}", path.display()))?;
            let file = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let manifest = !name.starts_with('.')
                && file.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                    ["yaml", "yml", "json"]
                        .iter()
                        .any(|x| e.eq_ignore_ascii_case(x))
                });
            if manifest && file.is_file() {
                files.push(file);
            }
        }
        if files.is_empty() {
            bail!(
                "{}: no *.yaml, *.yml or *.json files in this directory",
                path.display()
            );
        }
        files.sort();
        for file in files {
            self.add_file(&file)?;
        }
        Ok(())
    }

    /// Adds one file, parsed as [`Format::of`] its name.
    pub fn add_file(&mut self, path: &Path) -> Result<()> {
        let canonical = path
            .canonicalize()
            .map_err(|e| anyhow!("{}: {e}", path.display()))?;
        let shown = path.display().to_string();
        if let Some(first) = self.read.insert(canonical, shown.clone()) {
            bail!("{shown}: the file is given more than once (first as {first})");
        }
        let text = std::fs::read_to_string(path).map_err(|e| anyhow!("{shown}: {e}"))?;
        self.add_text(&shown, &text, Format::of(path))
    }

    /// Adds the documents of `text`; `name` is used in messages.
    pub fn add_text(&mut self, name: &str, text: &str, format: Format) -> Result<()> {
        let documents = match format {
            Format::Yaml => yaml_documents(text).map_err(|e| {
                // Drop the hint meant for programmers using the library.
                let e = e
                    .to_string()
                    .replace(", set DuplicateKeyPolicy in Options if acceptable", "");
                anyhow!("{name}: {e}")
            })?,
            Format::Json => json_documents(text).map_err(|e| anyhow!("{name}: {e}"))?,
        };
        let mut skipped = BTreeMap::new();
        let documents = documents.into_iter().filter(|(value, _)| !value.is_null());
        for (index, (value, line)) in documents.enumerate() {
            let source = Source {
                file: name.to_string(),
                document: index + 1,
                line,
                item: None,
            };
            self.add_value(value, source, None, &mut skipped)?;
        }
        if !skipped.is_empty() {
            let total: usize = skipped.values().sum();
            let kinds: Vec<String> = skipped
                .into_iter()
                .map(|(kind, n)| {
                    if n == 1 {
                        kind
                    } else {
                        format!("{kind} (x{n})")
                    }
                })
                .collect();
            self.warnings.push(format!(
                "{name}: skipped {total} object{} of kinds not used for planning: {}",
                if total == 1 { "" } else { "s" },
                kinds.join(", ")
            ));
        }
        Ok(())
    }

    /// Adds one document or list item. `list` is the `(apiVersion, kind)` of the typed list the
    /// value is an item of: items may leave these fields out.
    fn add_value(
        &mut self,
        mut value: Value,
        source: Source,
        list: Option<(&str, &str)>,
        skipped: &mut BTreeMap<String, usize>,
    ) -> Result<()> {
        let Value::Object(map) = &mut value else {
            bail!(
                "{}: expected a Kubernetes object (a mapping with apiVersion and kind), found {}",
                source.context(None),
                describe(&value)
            );
        };
        if let Some((api_version, kind)) = list {
            map.entry("apiVersion")
                .or_insert_with(|| Value::String(api_version.to_string()));
            map.entry("kind")
                .or_insert_with(|| Value::String(kind.to_string()));
        }
        let what = describe_object(map);
        let context = source.context(what.as_deref());
        let api_version = string_field(map, "apiVersion", &context)?;
        let kind = string_field(map, "kind", &context)?;

        if kind.ends_with("List") && (kind == "List" || map.contains_key("items")) {
            if source.item.is_some() {
                bail!("{context}: a list inside a list is not supported");
            }
            let items = match map.remove("items") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(items)) => items,
                Some(other) => bail!(
                    "{context}: items: expected a sequence, found {}",
                    describe(&other)
                ),
            };
            let item_kind = kind.strip_suffix("List").filter(|k| !k.is_empty());
            for (i, item) in items.into_iter().enumerate() {
                let source = Source {
                    item: Some(i),
                    ..source.clone()
                };
                let list = item_kind.map(|k| (api_version.as_str(), k));
                self.add_value(item, source, list, skipped)?;
            }
            return Ok(());
        }

        let Some(known) = Kind::ALL.into_iter().find(|k| k.as_str() == kind) else {
            if let Some(k) = Kind::ALL
                .into_iter()
                .find(|k| k.as_str().eq_ignore_ascii_case(&kind))
            {
                bail!(
                    "{context}: unknown kind {kind:?}; did you mean {:?}?",
                    k.as_str()
                );
            }
            if api_version
                .split('/')
                .next()
                .is_some_and(|group| group == kube_egress_api::GROUP)
            {
                bail!(
                    "{context}: {api_version} {kind} is not supported (of {}, only EgressIP and \
                     EgressFirewall are); remove it from the input rather than plan without it",
                    kube_egress_api::GROUP
                );
            }
            *skipped.entry(format!("{api_version} {kind}")).or_default() += 1;
            return Ok(());
        };
        if !known.api_versions().contains(&api_version.as_str()) {
            bail!(
                "{context}: apiVersion {api_version:?} is not supported for {kind} (expected {})",
                known.api_versions().join(" or ")
            );
        }

        let warnings = &mut self.warnings;
        let object = match known {
            Kind::Node => Object::Node(typed(&value, &context, warnings)?),
            Kind::Namespace => Object::Namespace(typed(&value, &context, warnings)?),
            Kind::Pod => {
                let mut o: Pod = typed(&value, &context, warnings)?;
                o.metadata.namespace.get_or_insert_with(default_namespace);
                Object::Pod(o)
            }
            Kind::EgressIP => Object::EgressIP(typed(&value, &context, warnings)?),
            Kind::EgressFirewall => {
                let mut o: EgressFirewall = typed(&value, &context, warnings)?;
                o.metadata.namespace.get_or_insert_with(default_namespace);
                Object::EgressFirewall(o)
            }
            Kind::ServiceCIDR => {
                let (metadata, cidrs) = if api_version.ends_with("v1beta1") {
                    let o: networking::v1beta1::ServiceCIDR = typed(&value, &context, warnings)?;
                    (o.metadata, o.spec.and_then(|s| s.cidrs))
                } else {
                    let o: networking::v1::ServiceCIDR = typed(&value, &context, warnings)?;
                    (o.metadata, o.spec.and_then(|s| s.cidrs))
                };
                let mut nets = Vec::new();
                for (i, cidr) in cidrs.unwrap_or_default().iter().enumerate() {
                    let net: IpNet = cidr.parse().map_err(|_| {
                        anyhow!("{context}: spec.cidrs[{i}]: {cidr:?} is not a CIDR")
                    })?;
                    nets.push(net.trunc());
                }
                Object::ServiceCIDR(metadata, nets)
            }
        };
        let meta = object.metadata();

        let name = meta.name.clone().filter(|n| !n.is_empty());
        let Some(name) = name else {
            bail!("{context}: metadata.name: missing");
        };
        let key = ObjectKey {
            kind: known,
            namespace: known
                .namespaced()
                .then(|| meta.namespace.clone().unwrap_or_else(default_namespace)),
            name,
        };
        if let Some(first) = self.sources.get(&key) {
            bail!("duplicate {key}: defined in {first} and again in {source}");
        }
        self.sources.insert(key, source);
        match object {
            Object::Node(o) => self.nodes.push(o),
            Object::Namespace(o) => self.namespaces.push(o),
            Object::Pod(o) => self.pods.push(o),
            Object::EgressIP(o) => self.egress_ips.push(o),
            Object::EgressFirewall(o) => self.egress_firewalls.push(o),
            Object::ServiceCIDR(meta, cidrs) => self.service_cidrs.push(ServiceCidr {
                name: meta.name.unwrap_or_default(),
                cidrs,
            }),
        }
        Ok(())
    }
}

/// One decoded object.
#[expect(
    clippy::large_enum_variant,
    reason = "one short-lived value per document, moved once into its vector"
)]
enum Object {
    Node(Node),
    Namespace(Namespace),
    Pod(Pod),
    EgressIP(EgressIP),
    EgressFirewall(EgressFirewall),
    ServiceCIDR(ObjectMeta, Vec<IpNet>),
}

impl Object {
    fn metadata(&self) -> &ObjectMeta {
        match self {
            Object::Node(o) => &o.metadata,
            Object::Namespace(o) => &o.metadata,
            Object::Pod(o) => &o.metadata,
            Object::EgressIP(o) => &o.metadata,
            Object::EgressFirewall(o) => &o.metadata,
            Object::ServiceCIDR(meta, _) => meta,
        }
    }
}

fn default_namespace() -> String {
    "default".to_string()
}

/// YAML documents with the line each starts at. Null documents are dropped by the parser.
fn yaml_documents(text: &str) -> Result<Vec<(Value, Option<u64>)>, serde_saphyr::Error> {
    let options = serde_saphyr::options! {
        with_snippet: false,
        strict_booleans: true,
        leading_zero_numbers_as_strings: true,
        underscored_numbers_as_strings: true,
        // Dumps of whole clusters are large; the alias limits stay at their defaults.
        budget: serde_saphyr::budget! {
            max_documents: 1_000_000,
            max_events: 200_000_000,
            max_nodes: 100_000_000,
            max_total_scalar_bytes: 1 << 30,
            max_reader_input_bytes: None,
        },
    };
    let documents: Vec<serde_saphyr::Spanned<Value>> =
        serde_saphyr::from_multiple_with_options(text, options)?;
    Ok(documents
        .into_iter()
        .map(|d| {
            let line = d.referenced.line();
            (d.value, (line > 0).then_some(line))
        })
        .collect())
}

/// The values of a JSON stream with the line each starts at.
fn json_documents(text: &str) -> Result<Vec<(Value, Option<u64>)>, serde_json::Error> {
    let mut documents = Vec::new();
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
    let mut offset = 0;
    while let Some(value) = stream.next() {
        let value = value?;
        let start = offset + (text[offset..].len() - text[offset..].trim_start().len());
        let line = text[..start].matches('\n').count() as u64 + 1;
        documents.push((value, Some(line)));
        offset = stream.byte_offset();
    }
    Ok(documents)
}

/// Deserialises a typed object, reporting errors with the path of the field, and warns about
/// fields the type does not know.
fn typed<T: DeserializeOwned + Serialize>(
    value: &Value,
    context: &str,
    warnings: &mut Vec<String>,
) -> Result<T> {
    let object: T = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            anyhow!("{context}: {}", e.inner())
        } else {
            anyhow!("{context}: {path}: {}", e.inner())
        }
    })?;
    let known = serde_json::to_value(&object)?;
    let mut unknown = Vec::new();
    unknown_fields(value, &known, "", &mut unknown);
    if !unknown.is_empty() {
        warnings.push(format!(
            "{context}: unknown field{} ignored: {}",
            if unknown.len() == 1 { "" } else { "s" },
            unknown.join(", ")
        ));
    }
    Ok(object)
}

/// Paths of the non-null fields of `input` that are absent from `known` (the typed object
/// serialised back).
fn unknown_fields(input: &Value, known: &Value, path: &str, out: &mut Vec<String>) {
    match (input, known) {
        (Value::Object(input), Value::Object(known)) => {
            for (key, value) in input {
                if value.is_null() {
                    continue;
                }
                let path = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match known.get(key) {
                    Some(k) => unknown_fields(value, k, &path, out),
                    None => out.push(path),
                }
            }
        }
        (Value::Array(input), Value::Array(known)) if input.len() == known.len() => {
            for (i, (value, k)) in input.iter().zip(known).enumerate() {
                unknown_fields(value, k, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn string_field(map: &Map<String, Value>, field: &str, context: &str) -> Result<String> {
    match map.get(field) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        None | Some(Value::Null) => bail!("{context}: {field}: missing"),
        Some(Value::String(_)) => bail!("{context}: {field}: empty"),
        Some(other) => bail!(
            "{context}: {field}: expected a string, found {}",
            describe(other)
        ),
    }
}

/// `Kind namespace/name` of an object, from whatever fields are usable.
fn describe_object(map: &Map<String, Value>) -> Option<String> {
    let kind = map.get("kind").and_then(Value::as_str).unwrap_or("object");
    let meta = map.get("metadata");
    let field = |f: &str| meta.and_then(|m| m.get(f)).and_then(Value::as_str);
    match (field("namespace"), field("name")) {
        (Some(ns), Some(name)) => Some(format!("{kind} {ns}/{name}")),
        (None, Some(name)) => Some(format!("{kind} {name}")),
        _ => map.get("kind").and_then(Value::as_str).map(str::to_string),
    }
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a sequence",
        Value::Object(_) => "a mapping",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Manifests> {
        let mut m = Manifests::default();
        m.add_text("t.yaml", text, Format::Yaml)?;
        Ok(m)
    }

    fn err(text: &str) -> String {
        format!("{:#}", load(text).expect_err("should fail"))
    }

    #[test]
    fn yaml_1_2_scalars_stay_strings() {
        let m = load(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: n\n  labels: {a: yes, b: on, c: 0755, d: 1_000, e: y}\n",
        )
        .unwrap();
        let labels = m.namespaces[0].metadata.labels.clone().unwrap();
        let got: Vec<&str> = labels.values().map(String::as_str).collect();
        assert_eq!(got, ["yes", "on", "0755", "1_000", "y"]);
    }

    #[test]
    fn document_numbers_and_lines_skip_empty_documents() {
        let e = err(
            "# comment\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: b\n  labels: [x]\n",
        );
        assert_eq!(
            e,
            "t.yaml: document 2 (Namespace b, line 8): metadata.labels: invalid type: sequence, expected a map"
        );
    }

    #[test]
    fn root_level_errors_have_no_path() {
        let e = err("apiVersion: k8s.ovn.org/v1\nkind: EgressIP\nmetadata: {name: e}\n");
        assert_eq!(
            e,
            "t.yaml: document 1 (EgressIP e, line 1): missing field `spec`"
        );
    }

    #[test]
    fn typed_list_items_inherit_api_version_and_kind() {
        let m = load("apiVersion: v1\nkind: NamespaceList\nitems:\n- metadata: {name: a}\n- metadata: {name: b}\n").unwrap();
        assert_eq!(m.namespaces.len(), 2);
        let e = err("apiVersion: v1\nkind: List\nitems:\n- metadata: {name: a}\n");
        assert_eq!(
            e,
            "t.yaml: document 1, items[0] (object a): apiVersion: missing"
        );
    }

    #[test]
    fn kind_policy() {
        let m = load("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: b}\n").unwrap();
        assert!(m.is_empty());
        assert_eq!(
            m.warnings,
            [
                "t.yaml: skipped 3 objects of kinds not used for planning: apps/v1 Deployment, v1 Service (x2)"
            ]
        );
        assert!(
            err("apiVersion: k8s.ovn.org/v1\nkind: EgressIp\nmetadata: {name: x}\n")
                .contains("unknown kind \"EgressIp\"; did you mean \"EgressIP\"?")
        );
        assert!(
            err("apiVersion: k8s.ovn.org/v1\nkind: EgressQoS\nmetadata: {name: x}\n")
                .contains("k8s.ovn.org/v1 EgressQoS is not supported")
        );
        assert!(
            err("apiVersion: k8s.ovn.org/v2\nkind: EgressIP\nmetadata: {name: x}\n")
                .contains("apiVersion \"k8s.ovn.org/v2\" is not supported for EgressIP")
        );
        assert!(err("kind: Pod\nmetadata: {name: x}\n").contains("apiVersion: missing"));
        assert!(err("- a\n- b\n").contains("expected a Kubernetes object"));
    }

    #[test]
    fn namespaced_objects_default_to_default_namespace() {
        let m = load("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n").unwrap();
        assert_eq!(m.pods[0].metadata.namespace.as_deref(), Some("default"));
        let e = err(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: default}\n",
        );
        assert_eq!(
            e,
            "duplicate Pod default/p: defined in t.yaml: document 1 (line 1) and again in t.yaml: document 2 (line 5)"
        );
        // Same name, other namespace or other kind: no conflict.
        load("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: x}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: p}\n").unwrap();
    }

    #[test]
    fn unknown_fields_are_warnings() {
        let m = load("apiVersion: k8s.ovn.org/v1\nkind: EgressIP\nmetadata: {name: e, creationTimestamp: null}\nspec:\n  egressIPs: [1.2.3.4]\n  namespaceSelector: {}\n  podselector: {matchLabels: {a: b}}\nstatus:\n  assignments: [{node: n, egressIP: 1.2.3.4}]\n").unwrap();
        assert_eq!(
            m.warnings,
            [
                "t.yaml: document 1 (EgressIP e, line 1): unknown fields ignored: spec.podselector, status.assignments"
            ]
        );
        assert!(m.egress_ips[0].spec.pod_selector.is_none());
    }

    #[test]
    fn service_cidrs() {
        let m = load("apiVersion: networking.k8s.io/v1\nkind: ServiceCIDR\nmetadata: {name: kubernetes}\nspec: {cidrs: [10.96.0.1/12, 'fd00::/108']}\n---\napiVersion: networking.k8s.io/v1beta1\nkind: ServiceCIDR\nmetadata: {name: extra}\nspec: {cidrs: [172.30.0.0/16]}\n").unwrap();
        let cidrs: Vec<String> = m
            .service_cidrs
            .iter()
            .flat_map(|s| &s.cidrs)
            .map(ToString::to_string)
            .collect();
        assert_eq!(cidrs, ["10.96.0.0/12", "fd00::/108", "172.30.0.0/16"]);
        let e = err(
            "apiVersion: networking.k8s.io/v1\nkind: ServiceCIDR\nmetadata: {name: k}\nspec: {cidrs: [10.96.0.0/12, nope]}\n",
        );
        assert_eq!(
            e,
            "t.yaml: document 1 (ServiceCIDR k, line 1): spec.cidrs[1]: \"nope\" is not a CIDR"
        );
    }

    #[test]
    fn json_streams_and_syntax_errors() {
        let mut m = Manifests::default();
        m.add_text(
            "t.json",
            "{\"apiVersion\":\"v1\",\"kind\":\"Namespace\",\"metadata\":{\"name\":\"a\"}}\n\n{\"apiVersion\":\"v1\",\"kind\":\"Namespace\",\"metadata\":{\"name\":\"b\",\"labels\":3}}",
            Format::Json,
        )
        .expect_err("labels is a number");
        assert_eq!(m.namespaces.len(), 1);
        let e = format!(
            "{:#}",
            m.add_text("t.json", "{\"a\": [1,}", Format::Json)
                .unwrap_err()
        );
        assert!(e.starts_with("t.json: ") && e.contains("line 1"), "{e}");
        let e = err("a: [1, 2\n");
        assert!(e.starts_with("t.yaml: ") && e.contains("line 1"), "{e}");
    }

    #[test]
    fn json_document_lines() {
        let docs = json_documents("{}\n\n  {\"a\": 1}\n[]").unwrap();
        let lines: Vec<Option<u64>> = docs.iter().map(|d| d.1).collect();
        assert_eq!(lines, [Some(1), Some(3), Some(4)]);
        // Null values are skipped and not counted, as empty YAML documents are.
        let mut m = Manifests::default();
        let e = m
            .add_text("t.json", "null\n{\"kind\": \"Pod\"}", Format::Json)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "t.json: document 1 (Pod, line 2): apiVersion: missing"
        );
    }
}
