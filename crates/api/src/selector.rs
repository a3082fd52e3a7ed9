//! Kubernetes label selectors with the API server's exact semantics.
//!
//! A `LabelSelector` is compiled once into a [`Selector`]; compiling checks it and names the field of
//! the first problem (`spec.namespaceSelector.matchExpressions[1].values`). Rules:
//! - every `matchLabels` pair and every `matchExpressions` entry must hold (AND);
//! - `In`: the key is present and its value is one of `values`;
//! - `NotIn`: the key is absent, or its value is none of `values`;
//! - `Exists` / `DoesNotExist`: the key is present / absent; `values` must be empty;
//! - `In` and `NotIn` need at least one value; any other operator is an error;
//! - an empty selector (`{}`) selects everything.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// A selector that failed to compile, with the path of the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SelectorError {
    /// Path of the field, e.g. `spec.podSelector.matchExpressions[0].operator`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

/// One requirement on one label key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Requirement {
    /// The key has exactly this value (`matchLabels`).
    Equals(String, String),
    /// The key is present with one of the values (`In`, values sorted and deduplicated).
    In(String, Vec<String>),
    /// The key is absent or has none of the values (`NotIn`).
    NotIn(String, Vec<String>),
    /// The key is present (`Exists`).
    Exists(String),
    /// The key is absent (`DoesNotExist`).
    DoesNotExist(String),
}

impl Requirement {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.binary_search(v).is_ok()),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| vs.binary_search(v).is_err()),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        }
    }
}

/// A compiled label selector: a conjunction of requirements. No requirement selects everything.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

/// A label condition every object matched by a selector satisfies; used to index selectors so that a
/// relabelled object is checked only against the selectors that could match it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexHint<'a> {
    /// Matching objects carry `key=value`.
    Label(&'a str, &'a str),
    /// Matching objects carry `key` with one of the values.
    AnyOf(&'a str, &'a [String]),
    /// Matching objects carry `key`.
    Key(&'a str),
    /// The selector can match objects without any particular label.
    Unindexed,
}

impl Selector {
    /// The selector that selects everything.
    pub fn everything() -> Self {
        Selector::default()
    }

    /// Compiles `selector`; `field` is the path used in errors (e.g. `spec.namespaceSelector`).
    pub fn compile(selector: &LabelSelector, field: &str) -> Result<Selector, SelectorError> {
        let mut requirements = Vec::new();
        if let Some(match_labels) = &selector.match_labels {
            for (key, value) in match_labels {
                let at = format!("{field}.matchLabels[{key}]");
                check_key(key, &at)?;
                check_value(value, &at)?;
                requirements.push(Requirement::Equals(key.clone(), value.clone()));
            }
        }
        if let Some(expressions) = &selector.match_expressions {
            for (i, expr) in expressions.iter().enumerate() {
                let at = format!("{field}.matchExpressions[{i}]");
                check_key(&expr.key, &format!("{at}.key"))?;
                let values = expr.values.clone().unwrap_or_default();
                for (j, value) in values.iter().enumerate() {
                    check_value(value, &format!("{at}.values[{j}]"))?;
                }
                let mut sorted = values.clone();
                sorted.sort();
                sorted.dedup();
                let key = expr.key.clone();
                let requirement = match expr.operator.as_str() {
                    "In" | "NotIn" if values.is_empty() => {
                        return Err(SelectorError {
                            field: format!("{at}.values"),
                            message: format!("operator {} needs at least one value", expr.operator),
                        });
                    }
                    "In" => Requirement::In(key, sorted),
                    "NotIn" => Requirement::NotIn(key, sorted),
                    "Exists" | "DoesNotExist" if !values.is_empty() => {
                        return Err(SelectorError {
                            field: format!("{at}.values"),
                            message: format!("operator {} takes no values", expr.operator),
                        });
                    }
                    "Exists" => Requirement::Exists(key),
                    "DoesNotExist" => Requirement::DoesNotExist(key),
                    other => {
                        return Err(SelectorError {
                            field: format!("{at}.operator"),
                            message: format!(
                                "unknown operator {other:?} (expected In, NotIn, Exists or DoesNotExist)"
                            ),
                        });
                    }
                };
                requirements.push(requirement);
            }
        }
        requirements.sort();
        requirements.dedup();
        Ok(Selector { requirements })
    }

    /// Compiles an optional selector where absence means "everything" (EgressIP `podSelector`).
    pub fn compile_optional(
        selector: Option<&LabelSelector>,
        field: &str,
    ) -> Result<Selector, SelectorError> {
        selector.map_or(Ok(Selector::everything()), |s| Selector::compile(s, field))
    }

    /// Whether the labels satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// True for the empty selector.
    pub fn selects_everything(&self) -> bool {
        self.requirements.is_empty()
    }

    /// The requirements, sorted.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// The most selective label condition implied by the selector, for indexing.
    pub fn index_hint(&self) -> IndexHint<'_> {
        let mut best = IndexHint::Unindexed;
        for r in &self.requirements {
            match r {
                Requirement::Equals(k, v) => return IndexHint::Label(k, v),
                Requirement::In(k, vs) => {
                    if !matches!(best, IndexHint::AnyOf(..)) {
                        best = IndexHint::AnyOf(k, vs)
                    }
                }
                Requirement::Exists(k) => {
                    if matches!(best, IndexHint::Unindexed) {
                        best = IndexHint::Key(k)
                    }
                }
                Requirement::NotIn(..) | Requirement::DoesNotExist(_) => {}
            }
        }
        best
    }
}

impl fmt::Display for Selector {
    /// The `kubectl` selector syntax, e.g. `app=web,environment notin (development)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.requirements.is_empty() {
            return f.write_str("<all>");
        }
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match r {
                Requirement::Equals(k, v) => write!(f, "{k}={v}")?,
                Requirement::In(k, vs) => write!(f, "{k} in ({})", vs.join(","))?,
                Requirement::NotIn(k, vs) => write!(f, "{k} notin ({})", vs.join(","))?,
                Requirement::Exists(k) => write!(f, "{k}")?,
                Requirement::DoesNotExist(k) => write!(f, "!{k}")?,
            }
        }
        Ok(())
    }
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a name of at most 63 characters.
fn check_key(key: &str, field: &str) -> Result<(), SelectorError> {
    let bad = |message: String| SelectorError {
        field: field.to_string(),
        message,
    };
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        let valid = !prefix.is_empty()
            && prefix.len() <= 253
            && prefix.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            });
        if !valid {
            return Err(bad(format!(
                "invalid label key {key:?}: prefix must be a lowercase DNS subdomain"
            )));
        }
    }
    if name.is_empty() || !is_label_name(name) {
        return Err(bad(format!(
            "invalid label key {key:?}: name must be 1-63 alphanumeric characters, '-', '_' or '.', \
             starting and ending with an alphanumeric character"
        )));
    }
    Ok(())
}

/// A label value: empty, or a name of at most 63 characters.
fn check_value(value: &str, field: &str) -> Result<(), SelectorError> {
    if value.is_empty() || is_label_name(value) {
        Ok(())
    } else {
        Err(SelectorError {
            field: field.to_string(),
            message: format!(
                "invalid label value {value:?}: must be at most 63 alphanumeric characters, '-', \
                 '_' or '.', starting and ending with an alphanumeric character"
            ),
        })
    }
}

fn is_label_name(s: &str) -> bool {
    let bytes = s.as_bytes();
    s.len() <= 63
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: Option<&[&str]>) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: values.map(|vs| vs.iter().map(|v| v.to_string()).collect()),
        }
    }

    fn with_exprs(exprs: Vec<LabelSelectorRequirement>) -> LabelSelector {
        LabelSelector {
            match_expressions: Some(exprs),
            match_labels: None,
        }
    }

    #[test]
    fn empty_selector_selects_everything() {
        let s = Selector::compile(&LabelSelector::default(), "spec.namespaceSelector").unwrap();
        assert!(s.selects_everything());
        assert!(s.matches(&labels(&[])));
        assert!(s.matches(&labels(&[("a", "b")])));
        let absent = Selector::compile_optional(None, "spec.podSelector").unwrap();
        assert!(absent.matches(&labels(&[("x", "y")])));
    }

    #[test]
    fn match_labels_needs_every_pair() {
        let sel = LabelSelector {
            match_labels: Some(
                [("env", "prod"), ("tier", "web")]
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            match_expressions: None,
        };
        let s = Selector::compile(&sel, "f").unwrap();
        assert!(s.matches(&labels(&[("env", "prod"), ("tier", "web"), ("x", "1")])));
        assert!(!s.matches(&labels(&[("env", "prod")])));
        assert!(!s.matches(&labels(&[("env", "dev"), ("tier", "web")])));
    }

    #[test]
    fn operators() {
        let s = |e| Selector::compile(&with_exprs(vec![e]), "f").unwrap();
        let in_ = s(expr("env", "In", Some(&["prod", "qa"])));
        assert!(in_.matches(&labels(&[("env", "qa")])));
        assert!(!in_.matches(&labels(&[("env", "dev")])));
        assert!(!in_.matches(&labels(&[])));

        // Seed 001: namespaces without `environment: development`, including unlabelled ones.
        let not_in = s(expr("environment", "NotIn", Some(&["development"])));
        assert!(not_in.matches(&labels(&[])));
        assert!(not_in.matches(&labels(&[("environment", "prod")])));
        assert!(!not_in.matches(&labels(&[("environment", "development")])));

        let exists = s(expr("app", "Exists", None));
        assert!(exists.matches(&labels(&[("app", "")])));
        assert!(!exists.matches(&labels(&[("other", "x")])));

        let absent = s(expr("app", "DoesNotExist", Some(&[])));
        assert!(absent.matches(&labels(&[("other", "x")])));
        assert!(!absent.matches(&labels(&[("app", "web")])));
    }

    #[test]
    fn labels_and_expressions_are_anded() {
        let sel = LabelSelector {
            match_labels: Some([("app".to_string(), "web".to_string())].into()),
            match_expressions: Some(vec![expr("env", "NotIn", Some(&["dev"]))]),
        };
        let s = Selector::compile(&sel, "f").unwrap();
        assert!(s.matches(&labels(&[("app", "web")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("env", "dev")])));
        assert!(!s.matches(&labels(&[("env", "prod")])));
        assert_eq!(s.to_string(), "app=web,env notin (dev)");
    }

    #[test]
    fn errors_name_the_field() {
        let err = Selector::compile(
            &with_exprs(vec![
                expr("a", "Exists", None),
                expr("b", "Equals", Some(&["x"])),
            ]),
            "spec.namespaceSelector",
        )
        .unwrap_err();
        assert_eq!(
            err.field,
            "spec.namespaceSelector.matchExpressions[1].operator"
        );
        assert!(err.message.contains("\"Equals\""), "{err}");

        for op in ["In", "NotIn"] {
            for values in [None, Some(&[][..])] {
                let err =
                    Selector::compile(&with_exprs(vec![expr("k", op, values)]), "spec.podSelector")
                        .unwrap_err();
                assert_eq!(err.field, "spec.podSelector.matchExpressions[0].values");
            }
        }

        let err = Selector::compile(&with_exprs(vec![expr("k", "Exists", Some(&["v"]))]), "f")
            .unwrap_err();
        assert_eq!(err.field, "f.matchExpressions[0].values");

        let err =
            Selector::compile(&with_exprs(vec![expr("-bad", "Exists", None)]), "f").unwrap_err();
        assert_eq!(err.field, "f.matchExpressions[0].key");

        let bad_value = LabelSelector {
            match_labels: Some([("k".to_string(), "no spaces".to_string())].into()),
            match_expressions: None,
        };
        let err = Selector::compile(&bad_value, "f").unwrap_err();
        assert_eq!(err.field, "f.matchLabels[k]");
    }

    #[test]
    fn valid_keys() {
        for key in [
            "app",
            "k8s.ovn.org/egress-assignable",
            "a_b.c-d",
            "example.com/X",
        ] {
            check_key(key, "f").unwrap();
        }
        for key in ["", "/x", "Ex.com/x", "x/", "a/b/c", &"x".repeat(64)] {
            assert!(check_key(key, "f").is_err(), "{key:?}");
        }
    }

    #[test]
    fn index_hint_prefers_equality() {
        let sel = LabelSelector {
            match_labels: Some([("env".to_string(), "prod".to_string())].into()),
            match_expressions: Some(vec![expr("tier", "In", Some(&["a"]))]),
        };
        let s = Selector::compile(&sel, "f").unwrap();
        assert_eq!(s.index_hint(), IndexHint::Label("env", "prod"));
        let s =
            Selector::compile(&with_exprs(vec![expr("x", "NotIn", Some(&["a"]))]), "f").unwrap();
        assert_eq!(s.index_hint(), IndexHint::Unindexed);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn label_map() -> impl Strategy<Value = BTreeMap<String, String>> {
            proptest::collection::btree_map("[abc]", "[xyz]", 0..3)
        }

        fn requirement() -> impl Strategy<Value = LabelSelectorRequirement> {
            (
                "[abc]",
                prop_oneof![
                    Just("In"),
                    Just("NotIn"),
                    Just("Exists"),
                    Just("DoesNotExist")
                ],
                proptest::collection::vec("[xyz]", 1..3),
            )
                .prop_map(|(key, op, values)| LabelSelectorRequirement {
                    key,
                    operator: op.to_string(),
                    values: matches!(op, "In" | "NotIn").then_some(values),
                })
        }

        proptest! {
            /// The compiled selector agrees with a direct reading of the Kubernetes rules.
            #[test]
            fn agrees_with_the_definition(
                match_labels in proptest::collection::btree_map("[abc]", "[xyz]", 0..2),
                exprs in proptest::collection::vec(requirement(), 0..3),
                object in label_map(),
            ) {
                let sel = LabelSelector {
                    match_labels: Some(match_labels.clone()),
                    match_expressions: Some(exprs.clone()),
                };
                let compiled = Selector::compile(&sel, "f").unwrap();
                let expected = match_labels.iter().all(|(k, v)| object.get(k) == Some(v))
                    && exprs.iter().all(|e| {
                        let values = e.values.clone().unwrap_or_default();
                        match e.operator.as_str() {
                            "In" => object.get(&e.key).is_some_and(|v| values.contains(v)),
                            "NotIn" => !object.get(&e.key).is_some_and(|v| values.contains(v)),
                            "Exists" => object.contains_key(&e.key),
                            _ => !object.contains_key(&e.key),
                        }
                    });
                prop_assert_eq!(compiled.matches(&object), expected);
                // The index hint never excludes a matching object.
                if expected {
                    let hinted = match compiled.index_hint() {
                        IndexHint::Label(k, v) => object.get(k).map(String::as_str) == Some(v),
                        IndexHint::AnyOf(k, vs) => object.get(k).is_some_and(|v| vs.contains(v)),
                        IndexHint::Key(k) => object.contains_key(k),
                        IndexHint::Unindexed => true,
                    };
                    prop_assert!(hinted);
                }
            }
        }
    }
}
