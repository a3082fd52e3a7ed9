//! Keeping the Northbound database in line with the desired rows.
//!
//! [`NbMonitor`] keeps a replica of what matters (routers and switches with their row lists, and
//! the policies, NATs, QoS rules and address sets of the Egress IP owner) with `monitor_cond`, and
//! after a lost connection reconnects and replaces the replica with a full copy. [`plan`] diffs the
//! replica against [`Desired`] into one list of operations; [`Reconciler`] sends it as one
//! transaction. Only rows whose `external_ids` name our owner (controller
//! `default-network-controller`, type `EgressIP`) are updated or removed; every other row is left
//! alone. Starting against a database written by ovnkube or an older run therefore adopts rows
//! that are right and repairs the ones that are not: a SNAT on the wrong gateway router or with the
//! wrong egress IP, a reroute with a next hop of a node that no longer hosts the IP (ovn-kubernetes
//! issues #3383, #4559), rows of pods no longer served.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{Value as Json, json};
use tokio::sync::mpsc;

use crate::mapping::{Desired, Options};
use crate::names::{self, CLUSTER_ROUTER};
use crate::nb::{self, AddressSet, LogicalRouter, LogicalRouterPolicy, LogicalSwitch, Nat, Qos};
use crate::ovsdb::{
    Atom, Client, Condition, Database, Error, Mutation, Notification, Operation, Row, Value,
    parse_table_updates,
};

/// The replica, typed and keyed by UUID. Policies, NATs and QoS rules are the owned ones only.
#[derive(Debug, Clone, Default)]
pub struct NbState {
    pub routers: BTreeMap<String, LogicalRouter>,
    pub switches: BTreeMap<String, LogicalSwitch>,
    pub policies: BTreeMap<String, LogicalRouterPolicy>,
    pub nats: BTreeMap<String, Nat>,
    pub address_sets: BTreeMap<String, AddressSet>,
    pub qos: BTreeMap<String, Qos>,
}

impl NbState {
    pub fn from_database(db: &Database) -> NbState {
        let mut state = NbState::default();
        for table in [
            nb::LOGICAL_ROUTER,
            nb::LOGICAL_SWITCH,
            nb::LOGICAL_ROUTER_POLICY,
            nb::NAT,
            nb::ADDRESS_SET,
            nb::QOS,
        ] {
            for (uuid, _) in db.table(table) {
                state.refresh(db, table, uuid);
            }
        }
        state
    }

    /// Brings one row up to date with the replica (after an insert, modify or delete).
    pub fn refresh(&mut self, db: &Database, table: &str, uuid: &str) {
        fn put<T>(map: &mut BTreeMap<String, T>, uuid: &str, value: Option<T>) {
            match value {
                Some(v) => {
                    map.insert(uuid.to_string(), v);
                }
                None => {
                    map.remove(uuid);
                }
            }
        }
        let row = db.row(table, uuid);
        match table {
            nb::LOGICAL_ROUTER => put(
                &mut self.routers,
                uuid,
                row.map(|r| LogicalRouter::from_row(uuid, r)),
            ),
            nb::LOGICAL_SWITCH => put(
                &mut self.switches,
                uuid,
                row.map(|r| LogicalSwitch::from_row(uuid, r)),
            ),
            nb::LOGICAL_ROUTER_POLICY => put(
                &mut self.policies,
                uuid,
                row.map(|r| LogicalRouterPolicy::from_row(uuid, r))
                    .filter(|p| names::is_owned(&p.external_ids)),
            ),
            nb::NAT => put(
                &mut self.nats,
                uuid,
                row.map(|r| Nat::from_row(uuid, r))
                    .filter(|n| names::is_owned(&n.external_ids)),
            ),
            nb::ADDRESS_SET => put(
                &mut self.address_sets,
                uuid,
                row.map(|r| AddressSet::from_row(uuid, r)),
            ),
            nb::QOS => put(
                &mut self.qos,
                uuid,
                row.map(|r| Qos::from_row(uuid, r))
                    .filter(|q| names::is_owned(&q.external_ids)),
            ),
            _ => {}
        }
    }
}

/// What [`plan`] found: the operations of one transaction, a line per change, and the desired
/// rows that cannot be written (a missing router or switch).
#[derive(Debug, Clone, Default)]
pub struct SyncPlan {
    pub ops: Vec<Operation>,
    pub changes: Vec<String>,
    pub problems: Vec<String>,
}

/// A reference from a parent row's column: the rows to add (by UUID or named UUID) and remove.
#[derive(Default)]
struct ParentEdit {
    insert: Vec<Atom>,
    delete: Vec<Atom>,
}

fn policy_line(p: &LogicalRouterPolicy) -> String {
    let mut s = format!("{} {} {}", p.priority, p.match_, p.action);
    if !p.nexthops.is_empty() {
        s.push_str(&format!(" {}", p.nexthops.join(", ")));
    }
    for (k, v) in &p.options {
        s.push_str(&format!(" {k}={v}"));
    }
    s
}

fn nat_line(router: &str, n: &Nat) -> String {
    format!(
        "{router} {} {} {} {}",
        n.type_,
        n.external_ip,
        n.logical_ip,
        n.logical_port.as_deref().unwrap_or("")
    )
}

/// The operations that turn the replica into the desired rows (no operations when it matches).
pub fn plan(state: &NbState, desired: &Desired) -> SyncPlan {
    let mut out = SyncPlan::default();
    let mut inserts: Vec<Operation> = Vec::new();
    let mut updates: Vec<Operation> = Vec::new();
    let mut deletes: Vec<Operation> = Vec::new();
    // (parent table, parent UUID, column) → edit
    let mut parents: BTreeMap<(&str, String, &str), ParentEdit> = BTreeMap::new();

    let mut routers: BTreeMap<&str, &LogicalRouter> = BTreeMap::new();
    for r in state.routers.values() {
        if routers.insert(r.name.as_str(), r).is_some() {
            out.problems
                .push(format!("several logical routers are named {}", r.name));
        }
    }

    // Logical_Router_Policy on ovn_cluster_router.
    let mut policy_parents: BTreeMap<&str, Vec<&LogicalRouter>> = BTreeMap::new();
    let mut nat_parents: BTreeMap<&str, Vec<&LogicalRouter>> = BTreeMap::new();
    for r in state.routers.values() {
        for u in &r.policies {
            if state.policies.contains_key(u) {
                policy_parents.entry(u.as_str()).or_default().push(r);
            }
        }
        for u in &r.nat {
            if state.nats.contains_key(u) {
                nat_parents.entry(u.as_str()).or_default().push(r);
            }
        }
    }
    let cluster_router = routers.get(CLUSTER_ROUTER).copied();
    let mut existing: BTreeMap<(i64, &str), Vec<&LogicalRouterPolicy>> = BTreeMap::new();
    let mut stale_policies: Vec<&LogicalRouterPolicy> = Vec::new();
    for p in state.policies.values() {
        let on_cluster_router = cluster_router.is_some_and(|cr| {
            policy_parents
                .get(p.uuid.as_str())
                .is_some_and(|ps| ps.iter().any(|r| r.uuid == cr.uuid))
        });
        if on_cluster_router {
            existing
                .entry((p.priority, p.match_.as_str()))
                .or_default()
                .push(p);
        } else {
            stale_policies.push(p);
        }
    }
    match cluster_router {
        None if !desired.policies.is_empty() => out.problems.push(format!(
            "logical router {CLUSTER_ROUTER} does not exist: {} policies are not written",
            desired.policies.len()
        )),
        None => {}
        Some(cr) => {
            for (i, want) in desired.policies.iter().enumerate() {
                match existing.remove(&(want.priority, want.match_.as_str())) {
                    Some(rows) => {
                        let first = rows[0];
                        if !first.same_content(want) {
                            updates.push(Operation::Update {
                                table: nb::LOGICAL_ROUTER_POLICY.into(),
                                conditions: vec![Condition::uuid(&first.uuid)],
                                row: want.to_row(),
                            });
                            out.changes.push(format!(
                                "update policy {} (was {})",
                                policy_line(want),
                                policy_line(first)
                            ));
                        }
                        stale_policies.extend(&rows[1..]);
                    }
                    None => {
                        let name = format!("p{i}");
                        inserts.push(Operation::Insert {
                            table: nb::LOGICAL_ROUTER_POLICY.into(),
                            row: want.to_row(),
                            uuid_name: Some(name.clone()),
                        });
                        parents
                            .entry((nb::LOGICAL_ROUTER, cr.uuid.clone(), "policies"))
                            .or_default()
                            .insert
                            .push(Atom::NamedUuid(name));
                        out.changes
                            .push(format!("insert policy {}", policy_line(want)));
                    }
                }
            }
        }
    }
    stale_policies.extend(existing.into_values().flatten());
    for p in stale_policies {
        for r in policy_parents.get(p.uuid.as_str()).into_iter().flatten() {
            parents
                .entry((nb::LOGICAL_ROUTER, r.uuid.clone(), "policies"))
                .or_default()
                .delete
                .push(Atom::Uuid(p.uuid.clone()));
        }
        out.changes
            .push(format!("delete policy {}", policy_line(p)));
    }

    // NAT on the gateway routers.
    let mut existing: BTreeMap<(&str, &str), Vec<(&LogicalRouter, &Nat)>> = BTreeMap::new();
    for n in state.nats.values() {
        for r in nat_parents.get(n.uuid.as_str()).into_iter().flatten() {
            existing
                .entry((r.name.as_str(), n.logical_ip.as_str()))
                .or_default()
                .push((r, n));
        }
    }
    let mut missing_routers: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, want) in desired.nats.iter().enumerate() {
        let Some(router) = routers.get(want.router.as_str()) else {
            *missing_routers.entry(want.router.as_str()).or_default() += 1;
            continue;
        };
        match existing.remove(&(want.router.as_str(), want.nat.logical_ip.as_str())) {
            Some(rows) => {
                let (_, first) = rows[0];
                if !first.same_content(&want.nat) {
                    updates.push(Operation::Update {
                        table: nb::NAT.into(),
                        conditions: vec![Condition::uuid(&first.uuid)],
                        row: want.nat.to_row(),
                    });
                    out.changes.push(format!(
                        "update NAT {} (was {})",
                        nat_line(&want.router, &want.nat),
                        nat_line(&want.router, first)
                    ));
                }
                for (r, n) in &rows[1..] {
                    parents
                        .entry((nb::LOGICAL_ROUTER, r.uuid.clone(), "nat"))
                        .or_default()
                        .delete
                        .push(Atom::Uuid(n.uuid.clone()));
                    out.changes
                        .push(format!("delete NAT {}", nat_line(&r.name, n)));
                }
            }
            None => {
                let name = format!("n{i}");
                inserts.push(Operation::Insert {
                    table: nb::NAT.into(),
                    row: want.nat.to_row(),
                    uuid_name: Some(name.clone()),
                });
                parents
                    .entry((nb::LOGICAL_ROUTER, router.uuid.clone(), "nat"))
                    .or_default()
                    .insert
                    .push(Atom::NamedUuid(name));
                out.changes
                    .push(format!("insert NAT {}", nat_line(&want.router, &want.nat)));
            }
        }
    }
    for (router, count) in missing_routers {
        out.problems.push(format!(
            "logical router {router} does not exist: {count} SNAT rows are not written"
        ));
    }
    for (r, n) in existing.into_values().flatten() {
        parents
            .entry((nb::LOGICAL_ROUTER, r.uuid.clone(), "nat"))
            .or_default()
            .delete
            .push(Atom::Uuid(n.uuid.clone()));
        out.changes
            .push(format!("delete NAT {}", nat_line(&r.name, n)));
    }

    // Address_Set.
    let mut by_name: BTreeMap<&str, Vec<&AddressSet>> = BTreeMap::new();
    for a in state.address_sets.values() {
        by_name.entry(a.name.as_str()).or_default().push(a);
    }
    let mut wanted_sets: BTreeSet<&str> = BTreeSet::new();
    for want in &desired.address_sets {
        wanted_sets.insert(want.name.as_str());
        let owned = by_name
            .get(want.name.as_str())
            .and_then(|sets| sets.iter().find(|a| names::is_owned(&a.external_ids)));
        match (owned, by_name.contains_key(want.name.as_str())) {
            (Some(have), _) => {
                let have_set: BTreeSet<&String> = have.addresses.iter().collect();
                let want_set: BTreeSet<&String> = want.addresses.iter().collect();
                let added: Vec<&str> = want_set.difference(&have_set).map(|s| s.as_str()).collect();
                let removed: Vec<&str> =
                    have_set.difference(&want_set).map(|s| s.as_str()).collect();
                let mut mutations = Vec::new();
                if !added.is_empty() {
                    mutations.push(Mutation::insert(
                        "addresses",
                        Value::string_set(added.iter().copied()),
                    ));
                }
                if !removed.is_empty() {
                    mutations.push(Mutation::delete(
                        "addresses",
                        Value::string_set(removed.iter().copied()),
                    ));
                }
                if !mutations.is_empty() {
                    updates.push(Operation::Mutate {
                        table: nb::ADDRESS_SET.into(),
                        conditions: vec![Condition::uuid(&have.uuid)],
                        mutations,
                    });
                    out.changes.push(format!(
                        "address set {} ({}): +{} -{} addresses",
                        want.name,
                        want.external_ids
                            .get(names::NAME_KEY)
                            .map(String::as_str)
                            .unwrap_or(""),
                        added.len(),
                        removed.len()
                    ));
                }
                if have.external_ids != want.external_ids {
                    let mut row = Row::new();
                    row.insert(
                        "external_ids".into(),
                        Value::string_map(
                            want.external_ids
                                .iter()
                                .map(|(k, v)| (k.as_str(), v.as_str())),
                        ),
                    );
                    updates.push(Operation::Update {
                        table: nb::ADDRESS_SET.into(),
                        conditions: vec![Condition::uuid(&have.uuid)],
                        row,
                    });
                    out.changes
                        .push(format!("update address set {} external_ids", want.name));
                }
            }
            (None, true) => out.problems.push(format!(
                "address set {} exists but belongs to another owner: left alone",
                want.name
            )),
            (None, false) => {
                inserts.push(Operation::Insert {
                    table: nb::ADDRESS_SET.into(),
                    row: want.to_row(),
                    uuid_name: None,
                });
                out.changes.push(format!(
                    "insert address set {} ({}, {} addresses)",
                    want.name,
                    want.external_ids
                        .get(names::NAME_KEY)
                        .map(String::as_str)
                        .unwrap_or(""),
                    want.addresses.len()
                ));
            }
        }
    }
    for want in &desired.referenced_address_sets {
        if !by_name.contains_key(want.name.as_str()) {
            inserts.push(Operation::Insert {
                table: nb::ADDRESS_SET.into(),
                row: want.to_row(),
                uuid_name: None,
            });
            out.changes
                .push(format!("insert referenced address set {}", want.name));
        }
    }
    for a in state.address_sets.values() {
        if names::is_owned(&a.external_ids) && !wanted_sets.contains(a.name.as_str()) {
            deletes.push(Operation::Delete {
                table: nb::ADDRESS_SET.into(),
                conditions: vec![Condition::uuid(&a.uuid)],
            });
            out.changes.push(format!("delete address set {}", a.name));
        }
    }

    // QoS on the node switches.
    let mut qos_parents: BTreeMap<&str, Vec<&LogicalSwitch>> = BTreeMap::new();
    for s in state.switches.values() {
        for u in &s.qos_rules {
            if state.qos.contains_key(u) {
                qos_parents.entry(u.as_str()).or_default().push(s);
            }
        }
    }
    let switches: BTreeMap<&str, &LogicalSwitch> = state
        .switches
        .values()
        .map(|s| (s.name.as_str(), s))
        .collect();
    let mut targets: Vec<&LogicalSwitch> = Vec::new();
    let mut missing_switches: Vec<&str> = Vec::new();
    for name in &desired.qos_switches {
        match switches.get(name.as_str()) {
            Some(s) => targets.push(s),
            None => missing_switches.push(name),
        }
    }
    if !missing_switches.is_empty() && !desired.qos.is_empty() {
        out.problems.push(format!(
            "logical switches {} do not exist: the reply-traffic QoS rule is not attached to them",
            missing_switches.join(", ")
        ));
    }
    let mut existing: BTreeMap<&str, Vec<&Qos>> = BTreeMap::new();
    for q in state.qos.values() {
        existing
            .entry(
                q.external_ids
                    .get(names::ID_KEY)
                    .map(String::as_str)
                    .unwrap_or(""),
            )
            .or_default()
            .push(q);
    }
    let mut stale_qos: Vec<&Qos> = Vec::new();
    for (i, want) in desired.qos.iter().enumerate() {
        let id = want
            .external_ids
            .get(names::ID_KEY)
            .map(String::as_str)
            .unwrap_or("");
        let reference = match existing.remove(id) {
            Some(rows) => {
                let first = rows[0];
                if !first.same_content(want) {
                    updates.push(Operation::Update {
                        table: nb::QOS.into(),
                        conditions: vec![Condition::uuid(&first.uuid)],
                        row: want.to_row(),
                    });
                    out.changes.push(format!("update QoS {}", want.match_));
                }
                stale_qos.extend(&rows[1..]);
                Atom::Uuid(first.uuid.clone())
            }
            None if targets.is_empty() => continue,
            None => {
                let name = format!("q{i}");
                inserts.push(Operation::Insert {
                    table: nb::QOS.into(),
                    row: want.to_row(),
                    uuid_name: Some(name.clone()),
                });
                out.changes.push(format!("insert QoS {}", want.match_));
                Atom::NamedUuid(name)
            }
        };
        for s in &targets {
            let attached = match &reference {
                Atom::Uuid(u) => s.qos_rules.contains(u),
                _ => false,
            };
            if !attached {
                parents
                    .entry((nb::LOGICAL_SWITCH, s.uuid.clone(), "qos_rules"))
                    .or_default()
                    .insert
                    .push(reference.clone());
                out.changes
                    .push(format!("attach QoS {} to switch {}", want.match_, s.name));
            }
        }
    }
    stale_qos.extend(existing.into_values().flatten());
    for q in stale_qos {
        for s in qos_parents.get(q.uuid.as_str()).into_iter().flatten() {
            parents
                .entry((nb::LOGICAL_SWITCH, s.uuid.clone(), "qos_rules"))
                .or_default()
                .delete
                .push(Atom::Uuid(q.uuid.clone()));
        }
        out.changes.push(format!("delete QoS {}", q.match_));
    }

    let mut mutates = Vec::new();
    for ((table, uuid, column), edit) in parents {
        let mut mutations = Vec::new();
        if !edit.delete.is_empty() {
            mutations.push(Mutation::delete(column, Value::Set(edit.delete)));
        }
        if !edit.insert.is_empty() {
            mutations.push(Mutation::insert(column, Value::Set(edit.insert)));
        }
        mutates.push(Operation::Mutate {
            table: table.to_string(),
            conditions: vec![Condition::uuid(&uuid)],
            mutations,
        });
    }
    out.ops = inserts;
    out.ops.extend(updates);
    out.ops.extend(mutates);
    out.ops.extend(deletes);
    out
}

/// The monitor request: routers and switches (names and row lists), and the rows of the Egress IP
/// and Egress Service owners. Clauses of one request are alternatives.
fn monitor_requests() -> Json {
    let owner = |owner: &str| {
        json!([
            "external_ids",
            "includes",
            ["map", [[names::OWNER_TYPE_KEY, owner]]]
        ])
    };
    let owned =
        |columns: &[&str]| json!([{"columns": columns, "where": [owner(names::OWNER_EGRESS_IP)]}]);
    json!({
        nb::LOGICAL_ROUTER: [{"columns": LogicalRouter::COLUMNS}],
        nb::LOGICAL_SWITCH: [{"columns": LogicalSwitch::COLUMNS}],
        nb::LOGICAL_ROUTER_POLICY: owned(LogicalRouterPolicy::COLUMNS),
        nb::NAT: owned(Nat::COLUMNS),
        nb::QOS: owned(Qos::COLUMNS),
        nb::ADDRESS_SET: [{"columns": AddressSet::COLUMNS, "where": [
            owner(names::OWNER_EGRESS_IP), owner(names::OWNER_EGRESS_SERVICE)
        ]}],
    })
}

const MONITOR_ID: &str = "kube-egress";

/// A monitored replica of the Northbound rows that matter to us.
pub struct NbMonitor {
    client: Client,
    db: Database,
    state: NbState,
    updates: mpsc::UnboundedReceiver<Notification>,
    resyncs: u64,
    /// Why the replica stopped following the server (an update it could not apply): until a
    /// reconnection rebuilds it, every [`NbMonitor::catch_up`] reports [`Error::OutOfStep`].
    out_of_step: Option<String>,
}

impl NbMonitor {
    /// Connects and copies the monitored rows.
    pub async fn connect(endpoint: &str) -> Result<NbMonitor, Error> {
        let client = Client::connect(endpoint).await?;
        let (db, updates) = Self::start(&client).await?;
        Ok(NbMonitor {
            client,
            state: NbState::from_database(&db),
            db,
            updates,
            resyncs: 0,
            out_of_step: None,
        })
    }

    async fn start(
        client: &Client,
    ) -> Result<(Database, mpsc::UnboundedReceiver<Notification>), Error> {
        let schema = client.get_schema(nb::DATABASE).await?;
        let (initial, updates) = client
            .monitor_cond(nb::DATABASE, MONITOR_ID, monitor_requests())
            .await?;
        let mut db = Database::new(schema);
        db.apply(initial).map_err(Error::OutOfStep)?;
        Ok((db, updates))
    }

    /// Connects again (retrying every `retry` until `timeout`) and replaces the replica with a
    /// full copy: nothing seen before the connection was lost is trusted.
    pub async fn reconnect(&mut self, retry: Duration, timeout: Duration) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let attempt = async {
                let client = Client::connect(self.client.endpoint()).await?;
                let (db, updates) = Self::start(&client).await?;
                Ok::<_, Error>((client, db, updates))
            };
            match attempt.await {
                Ok((client, db, updates)) => {
                    self.client = client;
                    self.state = NbState::from_database(&db);
                    self.db = db;
                    self.updates = updates;
                    self.resyncs += 1;
                    self.out_of_step = None;
                    return Ok(());
                }
                Err(e) if tokio::time::Instant::now() + retry > deadline => return Err(e),
                Err(_) => tokio::time::sleep(retry).await,
            }
        }
    }

    /// Applies the updates received so far. [`Error::Disconnected`] when the connection ended,
    /// [`Error::OutOfStep`] when an update did not fit the replica, now or earlier (either way,
    /// call [`NbMonitor::reconnect`]).
    pub fn catch_up(&mut self) -> Result<(), Error> {
        if let Some(why) = &self.out_of_step {
            return Err(Error::OutOfStep(why.clone()));
        }
        loop {
            match self.updates.try_recv() {
                Ok(n) => self.apply(n)?,
                Err(mpsc::error::TryRecvError::Empty) => return Ok(()),
                Err(mpsc::error::TryRecvError::Disconnected) => return Err(Error::Disconnected),
            }
        }
    }

    /// Waits for the next update and applies it (with any others queued).
    pub async fn changed(&mut self) -> Result<(), Error> {
        if let Some(why) = &self.out_of_step {
            return Err(Error::OutOfStep(why.clone()));
        }
        match self.updates.recv().await {
            Some(n) => {
                self.apply(n)?;
                self.catch_up()
            }
            None => Err(Error::Disconnected),
        }
    }

    /// Applies one update. One that does not parse or fit leaves the replica partly updated:
    /// it is marked out of step until a reconnection rebuilds it.
    fn apply(&mut self, n: Notification) -> Result<(), Error> {
        let applied = parse_table_updates(&n.updates)
            .map_err(Error::from)
            .and_then(|updates| {
                let touched: Vec<(String, String)> = updates
                    .iter()
                    .flat_map(|(table, rows)| {
                        rows.keys().map(move |uuid| (table.clone(), uuid.clone()))
                    })
                    .collect();
                self.db.apply(updates).map_err(Error::OutOfStep)?;
                for (table, uuid) in touched {
                    self.state.refresh(&self.db, &table, &uuid);
                }
                Ok(())
            });
        if let Err(e) = &applied {
            self.out_of_step = Some(match e {
                Error::OutOfStep(why) => why.clone(),
                other => other.to_string(),
            });
        }
        applied
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// The replica, typed (kept up to date row by row).
    pub fn state(&self) -> &NbState {
        &self.state
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// How many times the replica was rebuilt after a reconnection.
    pub fn resyncs(&self) -> u64 {
        self.resyncs
    }

    /// What the server's schema supports.
    pub fn options(&self) -> Options {
        Options {
            qos_mark: self
                .db
                .schema
                .column(nb::QOS, "action")
                .is_some_and(|c| c.key_enum.iter().any(|k| k == "mark")),
        }
    }
}

/// What one reconcile did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Operations sent (0 when the database already matched).
    pub operations: usize,
    /// Transactions sent: 0 or 1.
    pub transactions: usize,
    /// One line per change.
    pub changes: Vec<String>,
    /// Desired rows that cannot be written, and why.
    pub problems: Vec<String>,
    /// Rows this server cannot hold ([`Desired::warnings`]).
    pub warnings: Vec<String>,
}

/// Writes desired rows into the Northbound database, one transaction per call.
pub struct Reconciler {
    monitor: NbMonitor,
    reconnect_timeout: Duration,
}

impl Reconciler {
    pub async fn connect(endpoint: &str) -> Result<Reconciler, Error> {
        Ok(Reconciler {
            monitor: NbMonitor::connect(endpoint).await?,
            reconnect_timeout: Duration::from_secs(10),
        })
    }

    /// How long [`Reconciler::reconcile`] keeps trying to reconnect after a lost connection.
    pub fn set_reconnect_timeout(&mut self, timeout: Duration) {
        self.reconnect_timeout = timeout;
    }

    pub fn monitor(&self) -> &NbMonitor {
        &self.monitor
    }

    pub fn monitor_mut(&mut self) -> &mut NbMonitor {
        &mut self.monitor
    }

    /// What the server supports; pass to [`crate::mapping::desired`].
    pub fn options(&self) -> Options {
        self.monitor.options()
    }

    /// The operations a reconcile would send now (after applying pending updates).
    pub fn plan(&mut self, desired: &Desired) -> Result<SyncPlan, Error> {
        self.monitor.catch_up()?;
        Ok(plan(self.monitor.state(), desired))
    }

    /// Diffs the replica against `desired` and sends the difference as one transaction. A lost
    /// connection, or a replica that stopped following the server, is re-established (with a
    /// full resync) before diffing.
    pub async fn reconcile(&mut self, desired: &Desired) -> Result<Report, Error> {
        if self.monitor.catch_up().is_err() {
            self.monitor
                .reconnect(Duration::from_millis(200), self.reconnect_timeout)
                .await?;
        }
        let sync = plan(self.monitor.state(), desired);
        let mut problems = desired.problems.clone();
        problems.extend(sync.problems);
        if sync.ops.is_empty() {
            return Ok(Report {
                problems,
                warnings: desired.warnings.clone(),
                ..Report::default()
            });
        }
        self.monitor
            .client()
            .transact(nb::DATABASE, &sync.ops)
            .await?;
        // ovsdb-server sends the monitor update before the reply: the replica is current now.
        self.monitor.catch_up()?;
        Ok(Report {
            operations: sync.ops.len(),
            transactions: 1,
            changes: sync.changes,
            problems,
            warnings: desired.warnings.clone(),
        })
    }

    /// Remaining differences between the replica and `desired`, one line each (empty when the
    /// database matches, apart from rows that cannot be written, which [`Report::problems`] names).
    pub fn verify(&mut self, desired: &Desired) -> Result<Vec<String>, Error> {
        Ok(self.plan(desired)?.changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::RouterNat;
    use kube_egress_engine::Family;

    fn state() -> NbState {
        let mut s = NbState::default();
        s.routers.insert(
            "r1".into(),
            LogicalRouter {
                uuid: "r1".into(),
                name: CLUSTER_ROUTER.into(),
                // p-foreign belongs to someone else: it is not in `policies`.
                policies: vec!["p-owned".into(), "p-foreign".into()],
                nat: vec![],
            },
        );
        s.routers.insert(
            "r2".into(),
            LogicalRouter {
                uuid: "r2".into(),
                name: "GR_a".into(),
                policies: vec![],
                nat: vec!["n1".into()],
            },
        );
        s.policies.insert(
            "p-owned".into(),
            LogicalRouterPolicy {
                uuid: "p-owned".into(),
                priority: 100,
                match_: "ip4.src == 10.244.1.3".into(),
                action: "reroute".into(),
                nexthops: vec!["100.64.0.3".into(), "100.64.0.9".into()],
                external_ids: names::policy_ids(100, "e_ns/p", "ip4"),
                ..Default::default()
            },
        );
        s.nats.insert(
            "n1".into(),
            Nat {
                uuid: "n1".into(),
                type_: "snat".into(),
                external_ip: "172.18.0.99".into(),
                logical_ip: "10.244.1.3".into(),
                logical_port: Some("k8s-a".into()),
                options: [("stateless".to_string(), "false".to_string())].into(),
                external_ids: names::nat_ids("e_ns/p", Family::V4),
            },
        );
        s
    }

    fn desired_rows() -> Desired {
        let s = state();
        let mut policy = s.policies["p-owned"].clone();
        policy.uuid.clear();
        policy.nexthops = vec!["100.64.0.3".into(), "100.64.0.4".into()];
        let mut nat = s.nats["n1"].clone();
        nat.uuid.clear();
        nat.external_ip = "172.18.0.33".into();
        let (name, ids) = names::egress_ip_address_set(names::SERVED_PODS_SET, Family::V4);
        Desired {
            policies: vec![policy],
            nats: vec![RouterNat {
                router: "GR_a".into(),
                nat,
            }],
            address_sets: vec![AddressSet {
                name,
                addresses: vec!["10.244.1.3".into()],
                external_ids: ids,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn wrong_rows_are_updated_in_place() {
        let p = plan(&state(), &desired_rows());
        let described: Vec<String> = p.ops.iter().map(Operation::to_string).collect();
        assert_eq!(
            described,
            vec![
                "insert into Address_Set",
                "update Logical_Router_Policy where _uuid == [\"uuid\",\"p-owned\"]",
                "update NAT where _uuid == [\"uuid\",\"n1\"]",
            ]
        );
        assert!(p.problems.is_empty());
    }

    #[test]
    fn rows_no_longer_wanted_are_unlinked_and_foreign_ones_kept() {
        let p = plan(&state(), &Desired::default());
        let json: Vec<String> = p.ops.iter().map(|o| o.to_json().to_string()).collect();
        assert_eq!(p.ops.len(), 2, "{json:?}");
        assert!(
            json[0].contains("\"policies\",\"delete\",[\"set\",[[\"uuid\",\"p-owned\"]]]"),
            "{}",
            json[0]
        );
        assert!(
            json[1].contains("\"nat\",\"delete\",[\"set\",[[\"uuid\",\"n1\"]]]"),
            "{}",
            json[1]
        );
        assert!(!json.iter().any(|j| j.contains("p-foreign")));
    }

    #[test]
    fn matching_state_plans_nothing() {
        let mut s = state();
        let want = desired_rows();
        s.policies.get_mut("p-owned").unwrap().nexthops = want.policies[0].nexthops.clone();
        s.nats.get_mut("n1").unwrap().external_ip = "172.18.0.33".into();
        s.address_sets.insert(
            "a1".into(),
            AddressSet {
                uuid: "a1".into(),
                ..want.address_sets[0].clone()
            },
        );
        let p = plan(&s, &want);
        assert!(p.ops.is_empty(), "{:?}", p.changes);
    }

    #[test]
    fn a_missing_cluster_router_is_a_problem() {
        let mut s = state();
        s.routers.remove("r1");
        let p = plan(&s, &desired_rows());
        assert!(
            p.problems
                .iter()
                .any(|m| m.starts_with("logical router ovn_cluster_router does not exist"))
        );
    }

    #[test]
    fn qos_rule_is_shared_by_every_node_switch() {
        let qos = Qos {
            priority: names::QOS_PRIORITY,
            direction: "from-lport".into(),
            match_: "ip4.src == $a1 && ct.trk && ct.rpl".into(),
            action: [("mark".to_string(), 42)].into(),
            external_ids: names::qos_ids(Family::V4),
            ..Default::default()
        };
        let want = Desired {
            qos: vec![qos.clone()],
            qos_switches: vec!["a".into(), "b".into(), "gone".into()],
            ..Default::default()
        };
        let mut s = NbState::default();
        for name in ["a", "b"] {
            s.switches.insert(
                format!("s-{name}"),
                LogicalSwitch {
                    uuid: format!("s-{name}"),
                    name: name.into(),
                    qos_rules: vec![],
                },
            );
        }
        let p = plan(&s, &want);
        let json: Vec<String> = p.ops.iter().map(|o| o.to_json().to_string()).collect();
        assert_eq!(json.len(), 3, "{json:?}");
        assert!(json[0].contains("\"op\":\"insert\"") && json[0].contains("\"uuid-name\":\"q0\""));
        for j in &json[1..] {
            assert!(
                j.contains("[\"qos_rules\",\"insert\",[\"set\",[[\"named-uuid\",\"q0\"]]]]"),
                "{j}"
            );
        }
        assert_eq!(p.problems.len(), 1);
        assert!(p.problems[0].contains("logical switches gone do not exist"));

        // Existing and attached to a: attached to b only.
        s.qos.insert(
            "q-1".into(),
            Qos {
                uuid: "q-1".into(),
                ..qos
            },
        );
        s.switches
            .get_mut("s-a")
            .unwrap()
            .qos_rules
            .push("q-1".into());
        let p = plan(&s, &want);
        let json: Vec<String> = p.ops.iter().map(|o| o.to_json().to_string()).collect();
        assert_eq!(json.len(), 1, "{json:?}");
        assert!(
            json[0].contains("s-b") && json[0].contains("[\"uuid\",\"q-1\"]"),
            "{}",
            json[0]
        );
    }
}
