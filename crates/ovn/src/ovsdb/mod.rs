//! A small OVSDB client (RFC 7047 plus ovsdb-server's `monitor_cond` / `update2` extension).

mod client;
mod ops;
mod schema;
mod value;

use std::collections::BTreeMap;

use serde_json::Value as Json;

pub use client::{Client, Error, Notification};
pub use ops::{Condition, Mutation, OpResult, Operation, OperationFailure, interpret_results};
pub use schema::{ColumnType, Schema, TableSchema};
pub use value::{Atom, DecodeError, Row, RowExt, Value, row_from_json, row_to_json};

/// What happened to one row in an `update2` notification (or the initial monitor reply).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowUpdate {
    /// The row existed when the monitor started.
    Initial(Row),
    Insert(Row),
    /// Only the changed columns: the new value of scalar columns; for sets the elements added or
    /// removed; for maps the pairs added, removed (same value) or changed (new value).
    Modify(Row),
    Delete,
}

/// Table name → row UUID → update.
pub type TableUpdates = BTreeMap<String, BTreeMap<String, RowUpdate>>;

/// Decodes a `<table-updates2>` object.
pub fn parse_table_updates(json: &Json) -> Result<TableUpdates, DecodeError> {
    let mut out = TableUpdates::new();
    let bad = |reason: &str| DecodeError {
        json: json.to_string().chars().take(200).collect(),
        reason: reason.to_string(),
    };
    let Some(tables) = json.as_object() else {
        return Err(bad("table updates are a JSON object"));
    };
    for (table, rows) in tables {
        let rows = rows
            .as_object()
            .ok_or_else(|| bad("rows are a JSON object"))?;
        let entry = out.entry(table.clone()).or_default();
        for (uuid, update) in rows {
            let update = update
                .as_object()
                .ok_or_else(|| bad("a row update is a JSON object"))?;
            let row_update = if let Some(row) = update.get("initial") {
                RowUpdate::Initial(row_from_json(row)?)
            } else if let Some(row) = update.get("insert") {
                RowUpdate::Insert(row_from_json(row)?)
            } else if let Some(row) = update.get("modify") {
                RowUpdate::Modify(row_from_json(row)?)
            } else if update.contains_key("delete") {
                RowUpdate::Delete
            } else {
                return Err(bad("a row update is initial, insert, modify or delete"));
            };
            entry.insert(uuid.clone(), row_update);
        }
    }
    Ok(out)
}

/// A replica of the monitored part of a database, kept up to date from `update2` notifications.
#[derive(Debug, Clone, Default)]
pub struct Database {
    pub schema: Schema,
    /// Table → UUID → row.
    pub tables: BTreeMap<String, BTreeMap<String, Row>>,
}

impl Database {
    pub fn new(schema: Schema) -> Database {
        Database {
            schema,
            tables: BTreeMap::new(),
        }
    }

    pub fn table(&self, name: &str) -> impl Iterator<Item = (&String, &Row)> {
        self.tables.get(name).into_iter().flatten()
    }

    pub fn row(&self, table: &str, uuid: &str) -> Option<&Row> {
        self.tables.get(table)?.get(uuid)
    }

    /// Applies an update; a `modify` of an unknown row is an error (the replica is out of step
    /// and needs a full resync).
    pub fn apply(&mut self, updates: TableUpdates) -> Result<(), String> {
        for (table, rows) in updates {
            let replica = self.tables.entry(table.clone()).or_default();
            for (uuid, update) in rows {
                match update {
                    RowUpdate::Initial(row) | RowUpdate::Insert(row) => {
                        replica.insert(uuid, row);
                    }
                    RowUpdate::Delete => {
                        replica.remove(&uuid);
                    }
                    RowUpdate::Modify(diff) => {
                        let Some(row) = replica.get_mut(&uuid) else {
                            return Err(format!("modify of unknown row {table} {uuid}"));
                        };
                        for (column, change) in diff {
                            let kind = self.schema.column(&table, &column);
                            let old = row.remove(&column);
                            let new = apply_diff(kind, old, &change);
                            row.insert(column, new);
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// The new value of a column after an `update2` "modify" diff.
fn apply_diff(kind: Option<&ColumnType>, old: Option<Value>, change: &Value) -> Value {
    let map = kind
        .map(|k| k.map)
        .unwrap_or(matches!(change, Value::Map(_)));
    let scalar = kind
        .map(|k| k.scalar)
        .unwrap_or(matches!(change, Value::Atom(_)));
    if map {
        let mut pairs: BTreeMap<Atom, Atom> = old
            .map(|v| v.pairs().iter().cloned().collect())
            .unwrap_or_default();
        for (k, v) in change.pairs() {
            match pairs.get(k) {
                Some(current) if current == v => {
                    pairs.remove(k);
                }
                _ => {
                    pairs.insert(k.clone(), v.clone());
                }
            }
        }
        Value::Map(pairs.into_iter().collect())
    } else if scalar {
        change.clone()
    } else {
        let mut atoms: Vec<Atom> = old.map(|v| v.atoms().to_vec()).unwrap_or_default();
        for atom in change.atoms() {
            match atoms.iter().position(|a| a == atom) {
                Some(i) => {
                    atoms.swap_remove(i);
                }
                None => atoms.push(atom.clone()),
            }
        }
        atoms.sort();
        Value::Set(atoms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Schema {
        Schema::from_json(
            &json!({"name": "T", "version": "1", "tables": {"P": {"columns": {
                "match": {"type": "string"},
                "nexthops": {"type": {"key": "string", "min": 0, "max": "unlimited"}},
                "nexthop": {"type": {"key": "string", "min": 0, "max": 1}},
                "external_ids": {"type": {"key": "string", "value": "string", "min": 0, "max": "unlimited"}}
            }}}}),
        )
    }

    #[test]
    fn modify_diffs_apply_per_column_kind() {
        let mut db = Database::new(schema());
        db.apply(
            parse_table_updates(&json!({"P": {"u1": {"initial": {
                "match": "a", "nexthops": "1.1.1.1", "nexthop": ["set", []],
                "external_ids": ["map", [["k", "v"], ["gone", "x"]]]
            }}}}))
            .unwrap(),
        )
        .unwrap();
        db.apply(
            parse_table_updates(&json!({"P": {"u1": {"modify": {
                "match": "b",
                "nexthops": ["set", ["1.1.1.1", "2.2.2.2"]],
                "nexthop": "9.9.9.9",
                "external_ids": ["map", [["k", "w"], ["gone", "x"], ["new", "n"]]]
            }}}}))
            .unwrap(),
        )
        .unwrap();
        let row = db.row("P", "u1").unwrap();
        assert_eq!(row.string("match"), "b");
        assert_eq!(row.strings("nexthops"), vec!["2.2.2.2".to_string()]);
        assert_eq!(row.optional_string("nexthop").as_deref(), Some("9.9.9.9"));
        let ids = row.string_map("external_ids");
        assert_eq!(ids.len(), 2);
        assert_eq!((ids["k"].as_str(), ids["new"].as_str()), ("w", "n"));
        db.apply(parse_table_updates(&json!({"P": {"u1": {"delete": null}}})).unwrap())
            .unwrap();
        assert!(db.row("P", "u1").is_none());
        assert!(
            db.apply(parse_table_updates(&json!({"P": {"u9": {"modify": {}}}})).unwrap())
                .is_err()
        );
    }
}
