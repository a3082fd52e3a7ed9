//! Typed rows of the OVN Northbound tables we read or write (schema 7.0.0).
//!
//! Each type converts from a monitored row (`from_row`) and to the columns we write (`to_row`).
//! `uuid` is empty for rows that do not exist yet.

use std::collections::BTreeMap;

use crate::ovsdb::{Atom, Row, RowExt, Value};

pub const DATABASE: &str = "OVN_Northbound";

pub const LOGICAL_ROUTER: &str = "Logical_Router";
pub const LOGICAL_ROUTER_POLICY: &str = "Logical_Router_Policy";
pub const NAT: &str = "NAT";
pub const ADDRESS_SET: &str = "Address_Set";
pub const QOS: &str = "QoS";
pub const LOGICAL_SWITCH: &str = "Logical_Switch";

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogicalRouter {
    pub uuid: String,
    pub name: String,
    /// UUIDs of its Logical_Router_Policy rows.
    pub policies: Vec<String>,
    /// UUIDs of its NAT rows.
    pub nat: Vec<String>,
}

impl LogicalRouter {
    pub const COLUMNS: &'static [&'static str] = &["name", "policies", "nat"];

    pub fn from_row(uuid: &str, row: &Row) -> LogicalRouter {
        LogicalRouter {
            uuid: uuid.to_string(),
            name: row.string("name"),
            policies: row.uuids("policies"),
            nat: row.uuids("nat"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogicalSwitch {
    pub uuid: String,
    pub name: String,
    /// UUIDs of its QoS rows.
    pub qos_rules: Vec<String>,
}

impl LogicalSwitch {
    pub const COLUMNS: &'static [&'static str] = &["name", "qos_rules"];

    pub fn from_row(uuid: &str, row: &Row) -> LogicalSwitch {
        LogicalSwitch {
            uuid: uuid.to_string(),
            name: row.string("name"),
            qos_rules: row.uuids("qos_rules"),
        }
    }
}

fn string_map(map: &BTreeMap<String, String>) -> Value {
    Value::string_map(map.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogicalRouterPolicy {
    pub uuid: String,
    pub priority: i64,
    pub match_: String,
    /// `allow`, `drop` or `reroute`.
    pub action: String,
    /// The legacy single next hop; we never write it, and clear it on rows we own.
    pub nexthop: Option<String>,
    /// Sorted.
    pub nexthops: Vec<String>,
    pub options: BTreeMap<String, String>,
    pub external_ids: BTreeMap<String, String>,
}

impl LogicalRouterPolicy {
    pub const COLUMNS: &'static [&'static str] = &[
        "priority",
        "match",
        "action",
        "nexthop",
        "nexthops",
        "options",
        "external_ids",
    ];

    pub fn from_row(uuid: &str, row: &Row) -> LogicalRouterPolicy {
        LogicalRouterPolicy {
            uuid: uuid.to_string(),
            priority: row.integer("priority"),
            match_: row.string("match"),
            action: row.string("action"),
            nexthop: row.optional_string("nexthop"),
            nexthops: row.strings("nexthops"),
            options: row.string_map("options"),
            external_ids: row.string_map("external_ids"),
        }
    }

    /// Every column we write (so an update also clears what should be empty).
    pub fn to_row(&self) -> Row {
        let mut row = Row::new();
        row.insert("priority".into(), Value::integer(self.priority));
        row.insert("match".into(), Value::string(&self.match_));
        row.insert("action".into(), Value::string(&self.action));
        row.insert(
            "nexthop".into(),
            match &self.nexthop {
                Some(n) => Value::string(n),
                None => Value::empty(),
            },
        );
        row.insert("nexthops".into(), Value::string_set(&self.nexthops));
        row.insert("options".into(), string_map(&self.options));
        row.insert("external_ids".into(), string_map(&self.external_ids));
        row
    }

    /// Equal in every column we write.
    pub fn same_content(&self, other: &LogicalRouterPolicy) -> bool {
        LogicalRouterPolicy {
            uuid: String::new(),
            ..self.clone()
        } == LogicalRouterPolicy {
            uuid: String::new(),
            ..other.clone()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Nat {
    pub uuid: String,
    /// `snat`, `dnat` or `dnat_and_snat`.
    pub type_: String,
    pub external_ip: String,
    pub logical_ip: String,
    pub logical_port: Option<String>,
    pub options: BTreeMap<String, String>,
    pub external_ids: BTreeMap<String, String>,
}

impl Nat {
    pub const COLUMNS: &'static [&'static str] = &[
        "type",
        "external_ip",
        "logical_ip",
        "logical_port",
        "options",
        "external_ids",
    ];

    pub fn from_row(uuid: &str, row: &Row) -> Nat {
        Nat {
            uuid: uuid.to_string(),
            type_: row.string("type"),
            external_ip: row.string("external_ip"),
            logical_ip: row.string("logical_ip"),
            logical_port: row.optional_string("logical_port"),
            options: row.string_map("options"),
            external_ids: row.string_map("external_ids"),
        }
    }

    pub fn to_row(&self) -> Row {
        let mut row = Row::new();
        row.insert("type".into(), Value::string(&self.type_));
        row.insert("external_ip".into(), Value::string(&self.external_ip));
        row.insert("logical_ip".into(), Value::string(&self.logical_ip));
        row.insert(
            "logical_port".into(),
            match &self.logical_port {
                Some(p) => Value::string(p),
                None => Value::empty(),
            },
        );
        row.insert("options".into(), string_map(&self.options));
        row.insert("external_ids".into(), string_map(&self.external_ids));
        row
    }

    pub fn same_content(&self, other: &Nat) -> bool {
        Nat {
            uuid: String::new(),
            ..self.clone()
        } == Nat {
            uuid: String::new(),
            ..other.clone()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AddressSet {
    pub uuid: String,
    pub name: String,
    /// Sorted, without duplicates.
    pub addresses: Vec<String>,
    pub external_ids: BTreeMap<String, String>,
}

impl AddressSet {
    pub const COLUMNS: &'static [&'static str] = &["name", "addresses", "external_ids"];

    pub fn from_row(uuid: &str, row: &Row) -> AddressSet {
        let mut addresses = row.strings("addresses");
        addresses.dedup();
        AddressSet {
            uuid: uuid.to_string(),
            name: row.string("name"),
            addresses,
            external_ids: row.string_map("external_ids"),
        }
    }

    pub fn to_row(&self) -> Row {
        let mut row = Row::new();
        row.insert("name".into(), Value::string(&self.name));
        row.insert("addresses".into(), Value::string_set(&self.addresses));
        row.insert("external_ids".into(), string_map(&self.external_ids));
        row
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Qos {
    pub uuid: String,
    pub priority: i64,
    /// `from-lport` or `to-lport`.
    pub direction: String,
    pub match_: String,
    /// e.g. `mark` → 42.
    pub action: BTreeMap<String, i64>,
    pub external_ids: BTreeMap<String, String>,
}

impl Qos {
    pub const COLUMNS: &'static [&'static str] =
        &["priority", "direction", "match", "action", "external_ids"];

    pub fn from_row(uuid: &str, row: &Row) -> Qos {
        Qos {
            uuid: uuid.to_string(),
            priority: row.integer("priority"),
            direction: row.string("direction"),
            match_: row.string("match"),
            action: row
                .get("action")
                .map(|v| {
                    v.pairs()
                        .iter()
                        .filter_map(|(k, v)| Some((k.as_str()?.to_string(), v.as_integer()?)))
                        .collect()
                })
                .unwrap_or_default(),
            external_ids: row.string_map("external_ids"),
        }
    }

    pub fn to_row(&self) -> Row {
        let mut row = Row::new();
        row.insert("priority".into(), Value::integer(self.priority));
        row.insert("direction".into(), Value::string(&self.direction));
        row.insert("match".into(), Value::string(&self.match_));
        row.insert(
            "action".into(),
            Value::Map(
                self.action
                    .iter()
                    .map(|(k, v)| (Atom::string(k), Atom::Integer(*v)))
                    .collect(),
            ),
        );
        row.insert("external_ids".into(), string_map(&self.external_ids));
        row
    }

    pub fn same_content(&self, other: &Qos) -> bool {
        Qos {
            uuid: String::new(),
            ..self.clone()
        } == Qos {
            uuid: String::new(),
            ..other.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip() {
        let policy = LogicalRouterPolicy {
            uuid: "u".into(),
            priority: 100,
            match_: "ip4.src == 10.244.1.3".into(),
            action: "reroute".into(),
            nexthop: None,
            nexthops: vec!["100.64.0.3".into(), "100.64.0.4".into()],
            options: BTreeMap::new(),
            external_ids: [("k".to_string(), "v".to_string())].into(),
        };
        assert_eq!(LogicalRouterPolicy::from_row("u", &policy.to_row()), policy);
        let nat = Nat {
            uuid: "n".into(),
            type_: "snat".into(),
            external_ip: "172.18.0.33".into(),
            logical_ip: "10.244.1.3".into(),
            logical_port: Some("k8s-node1".into()),
            options: [("stateless".to_string(), "false".to_string())].into(),
            external_ids: BTreeMap::new(),
        };
        assert_eq!(Nat::from_row("n", &nat.to_row()), nat);
        let qos = Qos {
            uuid: "q".into(),
            priority: 103,
            direction: "from-lport".into(),
            match_: "m".into(),
            action: [("mark".to_string(), 42)].into(),
            external_ids: BTreeMap::new(),
        };
        assert_eq!(Qos::from_row("q", &qos.to_row()), qos);
        let set = AddressSet {
            uuid: "a".into(),
            name: "a1".into(),
            addresses: vec!["10.0.0.1".into(), "10.0.0.2".into()],
            external_ids: BTreeMap::new(),
        };
        assert_eq!(AddressSet::from_row("a", &set.to_row()), set);
    }
}
