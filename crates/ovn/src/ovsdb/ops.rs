//! Transaction operations (RFC 7047 §5.2) and their results.

use std::fmt;

use serde_json::{Map, Value as Json, json};

use super::value::{DecodeError, Row, Value, row_from_json, row_to_json};

/// `[column, function, value]`, e.g. `["name", "==", "GR_node1"]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub column: String,
    pub function: String,
    pub value: Value,
}

impl Condition {
    pub fn new(column: &str, function: &str, value: Value) -> Condition {
        Condition {
            column: column.to_string(),
            function: function.to_string(),
            value,
        }
    }

    /// `column == value`.
    pub fn eq(column: &str, value: Value) -> Condition {
        Condition::new(column, "==", value)
    }

    /// The row with this UUID.
    pub fn uuid(uuid: &str) -> Condition {
        Condition::eq("_uuid", Value::uuid(uuid))
    }

    pub fn to_json(&self) -> Json {
        json!([self.column, self.function, self.value.to_json()])
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {}",
            self.column,
            self.function,
            self.value.to_json()
        )
    }
}

/// `[column, mutator, value]`, e.g. `["policies", "insert", ["set", [["named-uuid","p1"]]]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Mutation {
    pub column: String,
    pub mutator: String,
    pub value: Value,
}

impl Mutation {
    /// Adds the elements of a set (or pairs of a map) to a column.
    pub fn insert(column: &str, value: Value) -> Mutation {
        Mutation {
            column: column.to_string(),
            mutator: "insert".to_string(),
            value,
        }
    }

    /// Removes the elements of a set (or the keys / pairs of a map) from a column.
    pub fn delete(column: &str, value: Value) -> Mutation {
        Mutation {
            column: column.to_string(),
            mutator: "delete".to_string(),
            value,
        }
    }

    pub fn to_json(&self) -> Json {
        json!([self.column, self.mutator, self.value.to_json()])
    }
}

/// One operation of a `transact` request.
#[derive(Debug, Clone, PartialEq)]
pub enum Operation {
    Insert {
        table: String,
        row: Row,
        /// Lets later operations of the same transaction refer to the row as `["named-uuid", …]`.
        uuid_name: Option<String>,
    },
    Update {
        table: String,
        conditions: Vec<Condition>,
        row: Row,
    },
    Mutate {
        table: String,
        conditions: Vec<Condition>,
        mutations: Vec<Mutation>,
    },
    Delete {
        table: String,
        conditions: Vec<Condition>,
    },
    Select {
        table: String,
        conditions: Vec<Condition>,
        columns: Option<Vec<String>>,
    },
    Comment(String),
}

impl Operation {
    pub fn table(&self) -> Option<&str> {
        match self {
            Operation::Insert { table, .. }
            | Operation::Update { table, .. }
            | Operation::Mutate { table, .. }
            | Operation::Delete { table, .. }
            | Operation::Select { table, .. } => Some(table),
            Operation::Comment(_) => None,
        }
    }

    pub fn to_json(&self) -> Json {
        let mut o = Map::new();
        let conditions =
            |c: &[Condition]| Json::Array(c.iter().map(Condition::to_json).collect::<Vec<_>>());
        match self {
            Operation::Insert {
                table,
                row,
                uuid_name,
            } => {
                o.insert("op".into(), json!("insert"));
                o.insert("table".into(), json!(table));
                o.insert("row".into(), row_to_json(row));
                if let Some(name) = uuid_name {
                    o.insert("uuid-name".into(), json!(name));
                }
            }
            Operation::Update {
                table,
                conditions: c,
                row,
            } => {
                o.insert("op".into(), json!("update"));
                o.insert("table".into(), json!(table));
                o.insert("where".into(), conditions(c));
                o.insert("row".into(), row_to_json(row));
            }
            Operation::Mutate {
                table,
                conditions: c,
                mutations,
            } => {
                o.insert("op".into(), json!("mutate"));
                o.insert("table".into(), json!(table));
                o.insert("where".into(), conditions(c));
                o.insert(
                    "mutations".into(),
                    Json::Array(mutations.iter().map(Mutation::to_json).collect()),
                );
            }
            Operation::Delete {
                table,
                conditions: c,
            } => {
                o.insert("op".into(), json!("delete"));
                o.insert("table".into(), json!(table));
                o.insert("where".into(), conditions(c));
            }
            Operation::Select {
                table,
                conditions: c,
                columns,
            } => {
                o.insert("op".into(), json!("select"));
                o.insert("table".into(), json!(table));
                o.insert("where".into(), conditions(c));
                if let Some(columns) = columns {
                    o.insert("columns".into(), json!(columns));
                }
            }
            Operation::Comment(text) => {
                o.insert("op".into(), json!("comment"));
                o.insert("comment".into(), json!(text));
            }
        }
        Json::Object(o)
    }
}

impl fmt::Display for Operation {
    /// A short description for error messages: `insert into NAT`, `mutate Logical_Router where
    /// name == "GR_node1"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let conditions = |c: &[Condition]| {
            if c.is_empty() {
                String::new()
            } else {
                format!(
                    " where {}",
                    c.iter()
                        .map(Condition::to_string)
                        .collect::<Vec<_>>()
                        .join(" and ")
                )
            }
        };
        match self {
            Operation::Insert { table, .. } => write!(f, "insert into {table}"),
            Operation::Update {
                table,
                conditions: c,
                ..
            } => write!(f, "update {table}{}", conditions(c)),
            Operation::Mutate {
                table,
                conditions: c,
                ..
            } => write!(f, "mutate {table}{}", conditions(c)),
            Operation::Delete {
                table,
                conditions: c,
                ..
            } => write!(f, "delete from {table}{}", conditions(c)),
            Operation::Select {
                table,
                conditions: c,
                ..
            } => write!(f, "select from {table}{}", conditions(c)),
            Operation::Comment(_) => write!(f, "comment"),
        }
    }
}

/// The result of one successful operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpResult {
    /// `insert`: the new row's UUID.
    Uuid(String),
    /// `update`, `mutate`, `delete`: rows affected.
    Count(u64),
    /// `select`.
    Rows(Vec<Row>),
    /// `comment`, `wait`, ...
    Empty,
}

impl OpResult {
    pub fn from_json(json: &Json) -> Result<OpResult, DecodeError> {
        if let Some(uuid) = json.get("uuid") {
            return match Value::from_json(uuid)? {
                Value::Atom(a) if a.as_uuid().is_some() => {
                    Ok(OpResult::Uuid(a.as_uuid().unwrap_or_default().to_string()))
                }
                _ => Err(DecodeError {
                    json: json.to_string(),
                    reason: "\"uuid\" is not a [\"uuid\",…] atom".into(),
                }),
            };
        }
        if let Some(count) = json.get("count").and_then(Json::as_u64) {
            return Ok(OpResult::Count(count));
        }
        if let Some(Json::Array(rows)) = json.get("rows") {
            return rows
                .iter()
                .map(row_from_json)
                .collect::<Result<Vec<_>, _>>()
                .map(OpResult::Rows);
        }
        Ok(OpResult::Empty)
    }

    pub fn uuid(&self) -> Option<&str> {
        match self {
            OpResult::Uuid(u) => Some(u),
            _ => None,
        }
    }

    pub fn count(&self) -> Option<u64> {
        match self {
            OpResult::Count(c) => Some(*c),
            _ => None,
        }
    }

    pub fn rows(&self) -> &[Row] {
        match self {
            OpResult::Rows(r) => r,
            _ => &[],
        }
    }
}

/// Where a transaction failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationFailure {
    /// Index of the failing operation in the request; `None` when every operation succeeded but
    /// the commit failed (a constraint checked at commit, e.g. a duplicate index value).
    pub index: Option<usize>,
    /// The operation, described (`insert into Address_Set`); `commit` for commit failures.
    pub operation: String,
    /// The RFC 7047 error string, e.g. `constraint violation`.
    pub error: String,
    pub details: Option<String>,
}

impl fmt::Display for OperationFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.index {
            Some(i) => write!(f, "operation {i} ({})", self.operation)?,
            None => write!(f, "commit")?,
        }
        write!(f, ": {}", self.error)?;
        if let Some(details) = &self.details {
            write!(f, ": {details}")?;
        }
        Ok(())
    }
}

/// Maps a `transact` result array onto the operations: per-operation results, or the failure.
///
/// RFC 7047 §4.1.3: successes, possibly followed by one error and `null`s for the operations not
/// attempted; or, when only the commit failed, one extra error element after all results.
pub fn interpret_results(
    ops: &[Operation],
    result: &Json,
) -> Result<Result<Vec<OpResult>, OperationFailure>, DecodeError> {
    let Json::Array(items) = result else {
        return Err(DecodeError {
            json: result.to_string(),
            reason: "transact result is not an array".into(),
        });
    };
    let mut results = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        if let Some(error) = item.get("error").filter(|e| !e.is_null()) {
            return Ok(Err(OperationFailure {
                index: (i < ops.len()).then_some(i),
                operation: ops
                    .get(i)
                    .map(Operation::to_string)
                    .unwrap_or_else(|| "commit".to_string()),
                error: error.as_str().unwrap_or("error").to_string(),
                details: item
                    .get("details")
                    .and_then(Json::as_str)
                    .map(str::to_string),
            }));
        }
        if item.is_null() {
            continue;
        }
        results.push(OpResult::from_json(item)?);
    }
    if results.len() != ops.len() {
        return Err(DecodeError {
            json: format!("{} results", results.len()),
            reason: format!("expected {} results", ops.len()),
        });
    }
    Ok(Ok(results))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops() -> Vec<Operation> {
        vec![
            Operation::Insert {
                table: "Address_Set".into(),
                row: Row::new(),
                uuid_name: None,
            },
            Operation::Mutate {
                table: "Logical_Router".into(),
                conditions: vec![Condition::eq("name", Value::string("GR_a"))],
                mutations: vec![],
            },
        ]
    }

    #[test]
    fn errors_map_to_their_operation() {
        let failure = interpret_results(
            &ops(),
            &json!([{"uuid": ["uuid", "u1"]}, {"error": "constraint violation", "details": "x"}]),
        )
        .unwrap()
        .unwrap_err();
        assert_eq!(failure.index, Some(1));
        assert_eq!(
            failure.to_string(),
            "operation 1 (mutate Logical_Router where name == \"GR_a\"): constraint violation: x"
        );
        let failure = interpret_results(
            &ops(),
            &json!([{"error": "referential integrity violation"}, null]),
        )
        .unwrap()
        .unwrap_err();
        assert_eq!(failure.index, Some(0));
        assert_eq!(failure.operation, "insert into Address_Set");
    }

    #[test]
    fn a_trailing_error_is_a_commit_failure() {
        let failure = interpret_results(
            &ops(),
            &json!([{"uuid": ["uuid", "u1"]}, {"count": 1}, {"error": "constraint violation"}]),
        )
        .unwrap()
        .unwrap_err();
        assert_eq!(failure.index, None);
        assert!(
            failure
                .to_string()
                .starts_with("commit: constraint violation")
        );
    }

    #[test]
    fn successes_decode() {
        let results = interpret_results(&ops(), &json!([{"uuid": ["uuid", "u1"]}, {"count": 1}]))
            .unwrap()
            .unwrap();
        assert_eq!(results[0].uuid(), Some("u1"));
        assert_eq!(results[1].count(), Some(1));
    }
}
