//! The parts of a database schema (RFC 7047 §3.2) the client needs: which columns are scalars,
//! sets or maps (to apply `update2` "modify" diffs), which tables are root tables, and which enum
//! values a column accepts (to know what a server supports).

use std::collections::BTreeMap;

use serde_json::Value as Json;

/// How a column's values are shaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnType {
    /// A map column (`value` present in the type).
    pub map: bool,
    /// Exactly one atom (`min` = `max` = 1, not a map). Everything else is a set.
    pub scalar: bool,
    /// Enum values of the key, when the key is an enum.
    pub key_enum: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TableSchema {
    pub columns: BTreeMap<String, ColumnType>,
    /// Non-root rows that no other row references are garbage-collected at commit.
    pub is_root: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Schema {
    pub name: String,
    pub version: String,
    pub tables: BTreeMap<String, TableSchema>,
}

impl Schema {
    pub fn from_json(json: &Json) -> Schema {
        let mut schema = Schema {
            name: json["name"].as_str().unwrap_or_default().to_string(),
            version: json["version"].as_str().unwrap_or_default().to_string(),
            tables: BTreeMap::new(),
        };
        for (table, t) in json["tables"].as_object().into_iter().flatten() {
            let mut ts = TableSchema {
                columns: BTreeMap::new(),
                is_root: t["isRoot"].as_bool().unwrap_or(false),
            };
            for (column, c) in t["columns"].as_object().into_iter().flatten() {
                ts.columns.insert(column.clone(), column_type(&c["type"]));
            }
            schema.tables.insert(table.clone(), ts);
        }
        schema
    }

    pub fn column(&self, table: &str, column: &str) -> Option<&ColumnType> {
        self.tables.get(table)?.columns.get(column)
    }
}

fn column_type(t: &Json) -> ColumnType {
    match t {
        Json::Object(o) => {
            let min = o.get("min").and_then(Json::as_u64).unwrap_or(1);
            let max = match o.get("max") {
                Some(Json::String(s)) if s == "unlimited" => u64::MAX,
                Some(m) => m.as_u64().unwrap_or(1),
                None => 1,
            };
            let map = o.contains_key("value");
            let key_enum = match &o.get("key").map(|k| &k["enum"]) {
                Some(Json::Array(e)) if e.first().and_then(Json::as_str) == Some("set") => e
                    .get(1)
                    .and_then(Json::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Json::as_str)
                    .map(str::to_string)
                    .collect(),
                Some(Json::String(s)) => vec![s.clone()],
                _ => Vec::new(),
            };
            ColumnType {
                map,
                scalar: !map && min == 1 && max == 1,
                key_enum,
            }
        }
        _ => ColumnType {
            map: false,
            scalar: true,
            key_enum: Vec::new(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn column_shapes() {
        let schema = Schema::from_json(&json!({
            "name": "OVN_Northbound", "version": "7.0.0",
            "tables": {
                "QoS": {"columns": {
                    "priority": {"type": {"key": {"type": "integer"}}},
                    "match": {"type": "string"},
                    "action": {"type": {"key": {"type": "string", "enum": ["set", ["dscp"]]},
                               "value": {"type": "integer"}, "min": 0, "max": "unlimited"}},
                    "nexthop": {"type": {"key": "string", "min": 0, "max": 1}}
                }},
                "Address_Set": {"isRoot": true, "columns": {}}
            }
        }));
        let qos = &schema.tables["QoS"];
        assert!(!qos.is_root && schema.tables["Address_Set"].is_root);
        assert!(qos.columns["priority"].scalar && qos.columns["match"].scalar);
        assert!(qos.columns["action"].map && !qos.columns["action"].scalar);
        assert_eq!(qos.columns["action"].key_enum, vec!["dscp".to_string()]);
        assert!(!qos.columns["nexthop"].scalar && !qos.columns["nexthop"].map);
    }
}
