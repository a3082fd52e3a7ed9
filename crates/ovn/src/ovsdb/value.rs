//! OVSDB values (RFC 7047 §5.1) and their JSON notation.
//!
//! The wire format is ambiguous on purpose: a set with exactly one element may be sent as the bare
//! atom, and ovsdb-server does so (`"nexthops":"100.64.0.4"`). [`Value::atoms`] therefore treats a
//! bare atom as a one-element set, and every typed accessor goes through it.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Value as Json, json};

/// A value that does not follow RFC 7047's notation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid OVSDB value {json}: {reason}")]
pub struct DecodeError {
    pub json: String,
    pub reason: String,
}

fn decode_error(json: &Json, reason: &str) -> DecodeError {
    let mut text = json.to_string();
    if text.len() > 200 {
        text.truncate(200);
        text.push('…');
    }
    DecodeError {
        json: text,
        reason: reason.to_string(),
    }
}

/// One atom. Real numbers are compared by their bits so atoms can be sorted and deduplicated.
#[derive(Debug, Clone)]
pub enum Atom {
    Integer(i64),
    Real(f64),
    Boolean(bool),
    String(String),
    /// `["uuid","…"]`: a row's UUID.
    Uuid(String),
    /// `["named-uuid","…"]`: a row inserted earlier in the same transaction.
    NamedUuid(String),
}

impl Atom {
    pub fn string(s: impl Into<String>) -> Atom {
        Atom::String(s.into())
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Atom::String(s) => Some(s),
            _ => None,
        }
    }

    /// The UUID of a `["uuid",…]` atom.
    pub fn as_uuid(&self) -> Option<&str> {
        match self {
            Atom::Uuid(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_integer(&self) -> Option<i64> {
        match self {
            Atom::Integer(i) => Some(*i),
            _ => None,
        }
    }

    pub fn to_json(&self) -> Json {
        match self {
            Atom::Integer(i) => json!(i),
            Atom::Real(r) => json!(r),
            Atom::Boolean(b) => json!(b),
            Atom::String(s) => json!(s),
            Atom::Uuid(u) => json!(["uuid", u]),
            Atom::NamedUuid(u) => json!(["named-uuid", u]),
        }
    }

    pub fn from_json(json: &Json) -> Result<Atom, DecodeError> {
        match json {
            Json::String(s) => Ok(Atom::String(s.clone())),
            Json::Bool(b) => Ok(Atom::Boolean(*b)),
            Json::Number(n) => match n.as_i64() {
                Some(i) => Ok(Atom::Integer(i)),
                None => n
                    .as_f64()
                    .map(Atom::Real)
                    .ok_or_else(|| decode_error(json, "number out of range")),
            },
            Json::Array(a) => match (a.first().and_then(Json::as_str), a.get(1), a.len()) {
                (Some("uuid"), Some(Json::String(u)), 2) => Ok(Atom::Uuid(u.clone())),
                (Some("named-uuid"), Some(Json::String(u)), 2) => Ok(Atom::NamedUuid(u.clone())),
                _ => Err(decode_error(
                    json,
                    "an atom is a string, number, boolean, [\"uuid\",…] or [\"named-uuid\",…]",
                )),
            },
            _ => Err(decode_error(json, "not an atom")),
        }
    }

    fn rank(&self) -> u8 {
        match self {
            Atom::Integer(_) => 0,
            Atom::Real(_) => 1,
            Atom::Boolean(_) => 2,
            Atom::String(_) => 3,
            Atom::Uuid(_) => 4,
            Atom::NamedUuid(_) => 5,
        }
    }
}

impl PartialEq for Atom {
    fn eq(&self, other: &Atom) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Atom {}

impl PartialOrd for Atom {
    fn partial_cmp(&self, other: &Atom) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Atom {
    fn cmp(&self, other: &Atom) -> Ordering {
        match (self, other) {
            (Atom::Integer(a), Atom::Integer(b)) => a.cmp(b),
            (Atom::Real(a), Atom::Real(b)) => a.total_cmp(b),
            (Atom::Boolean(a), Atom::Boolean(b)) => a.cmp(b),
            (Atom::String(a), Atom::String(b))
            | (Atom::Uuid(a), Atom::Uuid(b))
            | (Atom::NamedUuid(a), Atom::NamedUuid(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

impl fmt::Display for Atom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Atom::Integer(i) => write!(f, "{i}"),
            Atom::Real(r) => write!(f, "{r}"),
            Atom::Boolean(b) => write!(f, "{b}"),
            Atom::String(s) => write!(f, "{s:?}"),
            Atom::Uuid(u) => write!(f, "{u}"),
            Atom::NamedUuid(u) => write!(f, "@{u}"),
        }
    }
}

/// A column value: an atom, a set or a map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Atom(Atom),
    Set(Vec<Atom>),
    Map(Vec<(Atom, Atom)>),
}

impl Value {
    pub fn string(s: impl Into<String>) -> Value {
        Value::Atom(Atom::String(s.into()))
    }

    pub fn integer(i: i64) -> Value {
        Value::Atom(Atom::Integer(i))
    }

    pub fn boolean(b: bool) -> Value {
        Value::Atom(Atom::Boolean(b))
    }

    pub fn uuid(u: impl Into<String>) -> Value {
        Value::Atom(Atom::Uuid(u.into()))
    }

    pub fn named_uuid(u: impl Into<String>) -> Value {
        Value::Atom(Atom::NamedUuid(u.into()))
    }

    /// The empty set (also an absent optional value).
    pub fn empty() -> Value {
        Value::Set(Vec::new())
    }

    /// A set of strings, sorted and without duplicates.
    pub fn string_set<S: Into<String>>(items: impl IntoIterator<Item = S>) -> Value {
        let mut atoms: Vec<Atom> = items.into_iter().map(|s| Atom::String(s.into())).collect();
        atoms.sort();
        atoms.dedup();
        Value::Set(atoms)
    }

    /// A set of UUID atoms.
    pub fn uuid_set<S: Into<String>>(items: impl IntoIterator<Item = S>) -> Value {
        Value::Set(items.into_iter().map(|s| Atom::Uuid(s.into())).collect())
    }

    /// A string → string map.
    pub fn string_map<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Value {
        let map: BTreeMap<String, String> = pairs
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        Value::Map(
            map.into_iter()
                .map(|(k, v)| (Atom::String(k), Atom::String(v)))
                .collect(),
        )
    }

    /// The elements of a set; a bare atom is a one-element set. A map has no atoms.
    pub fn atoms(&self) -> &[Atom] {
        match self {
            Value::Atom(a) => std::slice::from_ref(a),
            Value::Set(s) => s,
            Value::Map(_) => &[],
        }
    }

    /// The pairs of a map; an empty set counts as an empty map.
    pub fn pairs(&self) -> &[(Atom, Atom)] {
        match self {
            Value::Map(m) => m,
            _ => &[],
        }
    }

    pub fn to_json(&self) -> Json {
        match self {
            Value::Atom(a) => a.to_json(),
            Value::Set(s) => json!(["set", s.iter().map(Atom::to_json).collect::<Vec<_>>()]),
            Value::Map(m) => json!([
                "map",
                m.iter()
                    .map(|(k, v)| json!([k.to_json(), v.to_json()]))
                    .collect::<Vec<_>>()
            ]),
        }
    }

    pub fn from_json(json: &Json) -> Result<Value, DecodeError> {
        if let Json::Array(a) = json {
            match (a.first().and_then(Json::as_str), a.get(1), a.len()) {
                (Some("set"), Some(Json::Array(items)), 2) => {
                    return items
                        .iter()
                        .map(Atom::from_json)
                        .collect::<Result<Vec<_>, _>>()
                        .map(Value::Set);
                }
                (Some("map"), Some(Json::Array(pairs)), 2) => {
                    return pairs
                        .iter()
                        .map(|p| match p {
                            Json::Array(kv) if kv.len() == 2 => {
                                Ok((Atom::from_json(&kv[0])?, Atom::from_json(&kv[1])?))
                            }
                            _ => Err(decode_error(p, "a map pair is [key, value]")),
                        })
                        .collect::<Result<Vec<_>, _>>()
                        .map(Value::Map);
                }
                (Some("set" | "map"), _, _) => {
                    return Err(decode_error(json, "expected [\"set\"|\"map\", [...]]"));
                }
                _ => {}
            }
        }
        Atom::from_json(json).map(Value::Atom)
    }
}

/// A row: column name → value.
pub type Row = BTreeMap<String, Value>;

/// Decodes a row object (`{"column": value, ...}`).
pub fn row_from_json(json: &Json) -> Result<Row, DecodeError> {
    let Json::Object(object) = json else {
        return Err(decode_error(json, "a row is a JSON object"));
    };
    object
        .iter()
        .map(|(column, value)| Ok((column.clone(), Value::from_json(value)?)))
        .collect()
}

pub fn row_to_json(row: &Row) -> Json {
    Json::Object(
        row.iter()
            .map(|(column, value)| (column.clone(), value.to_json()))
            .collect(),
    )
}

/// Typed reads of row columns. Missing columns read as empty / zero so that a row from a monitor
/// that selected fewer columns still converts.
pub trait RowExt {
    fn string(&self, column: &str) -> String;
    fn optional_string(&self, column: &str) -> Option<String>;
    fn strings(&self, column: &str) -> Vec<String>;
    fn integer(&self, column: &str) -> i64;
    fn uuids(&self, column: &str) -> Vec<String>;
    fn optional_uuid(&self, column: &str) -> Option<String>;
    fn string_map(&self, column: &str) -> BTreeMap<String, String>;
}

impl RowExt for Row {
    fn string(&self, column: &str) -> String {
        self.optional_string(column).unwrap_or_default()
    }

    fn optional_string(&self, column: &str) -> Option<String> {
        self.get(column)
            .and_then(|v| v.atoms().first())
            .and_then(Atom::as_str)
            .map(str::to_string)
    }

    fn strings(&self, column: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .get(column)
            .map(|v| {
                v.atoms()
                    .iter()
                    .filter_map(Atom::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    fn integer(&self, column: &str) -> i64 {
        self.get(column)
            .and_then(|v| v.atoms().first())
            .and_then(Atom::as_integer)
            .unwrap_or_default()
    }

    fn uuids(&self, column: &str) -> Vec<String> {
        self.get(column)
            .map(|v| {
                v.atoms()
                    .iter()
                    .filter_map(Atom::as_uuid)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }

    fn optional_uuid(&self, column: &str) -> Option<String> {
        self.uuids(column).into_iter().next()
    }

    fn string_map(&self, column: &str) -> BTreeMap<String, String> {
        self.get(column)
            .map(|v| {
                v.pairs()
                    .iter()
                    .filter_map(|(k, v)| Some((k.as_str()?.to_string(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_element_sets_arrive_as_bare_atoms() {
        let bare = Value::from_json(&json!("100.64.0.4")).unwrap();
        let full = Value::from_json(&json!(["set", ["100.64.0.4"]])).unwrap();
        assert_eq!(bare.atoms(), full.atoms());
        let mut row = Row::new();
        row.insert("nexthops".into(), bare);
        assert_eq!(row.strings("nexthops"), vec!["100.64.0.4".to_string()]);
        let uuid = Value::from_json(&json!(["uuid", "d967"])).unwrap();
        row.insert("policies".into(), uuid);
        assert_eq!(row.uuids("policies"), vec!["d967".to_string()]);
    }

    #[test]
    fn sets_maps_and_uuids_round_trip() {
        for text in [
            json!(["set", []]),
            json!(["set", ["a", "b"]]),
            json!(["map", [["k8s.ovn.org/name", "x"], ["priority", "100"]]]),
            json!(["uuid", "0a1b"]),
            json!(["named-uuid", "p1"]),
            json!(["set", [["uuid", "u1"], ["uuid", "u2"]]]),
            json!(42),
            json!(true),
        ] {
            let value = Value::from_json(&text).unwrap();
            assert_eq!(value.to_json(), text, "{text}");
        }
        let map = Value::from_json(&json!(["map", [["pkt_mark", "1008"]]])).unwrap();
        let mut row = Row::new();
        row.insert("options".into(), map);
        assert_eq!(row.string_map("options")["pkt_mark"], "1008");
        assert!(row.string_map("external_ids").is_empty());
    }

    #[test]
    fn malformed_values_are_errors() {
        for bad in [
            json!(["set", "x"]),
            json!(["map", [["k"]]]),
            json!(["uuid"]),
            json!({"a": 1}),
            json!(null),
        ] {
            assert!(Value::from_json(&bad).is_err(), "{bad}");
        }
    }
}
