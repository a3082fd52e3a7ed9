//! The OVSDB client against a real ovsdb-server with the packaged Northbound schema.

use std::time::Duration;

use kube_egress_ovn::nb;
use kube_egress_ovn::ovsdb::{
    Client, Condition, Error, Mutation, Operation, Row, RowExt, RowUpdate, Value,
};
use kube_egress_ovn::server::NbServer;
use kube_egress_ovn::sync::NbMonitor;

fn server() -> NbServer {
    NbServer::start().expect("starting ovsdb-server")
}

fn row(pairs: &[(&str, Value)]) -> Row {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn address_set(name: &str, addresses: &[&str]) -> Operation {
    Operation::Insert {
        table: nb::ADDRESS_SET.into(),
        row: row(&[
            ("name", Value::string(name)),
            ("addresses", Value::string_set(addresses.iter().copied())),
        ]),
        uuid_name: None,
    }
}

#[tokio::test]
async fn lists_databases_over_tcp_and_unix() {
    let nb = server();
    for endpoint in [nb.tcp(), nb.unix()] {
        let client = Client::connect(&endpoint).await.unwrap();
        let dbs = client.list_dbs().await.unwrap();
        assert!(dbs.contains(&"OVN_Northbound".to_string()), "{dbs:?}");
        let schema = client.get_schema(nb::DATABASE).await.unwrap();
        assert_eq!(schema.name, "OVN_Northbound");
        assert!(!schema.tables["NAT"].is_root);
        client.echo().await.unwrap();
    }
    let refused = Client::connect("tcp:127.0.0.1:1").await;
    assert!(
        matches!(refused, Err(Error::Connect { .. })),
        "{:?}",
        refused.err()
    );
}

#[tokio::test]
async fn transaction_errors_name_the_failing_operation() {
    let nb = server();
    let client = Client::connect(&nb.unix()).await.unwrap();

    // A bad enum value fails operation 1; operation 0 is rolled back with it.
    let ops = vec![
        address_set("as_ok", &["10.0.0.1"]),
        Operation::Insert {
            table: nb::LOGICAL_ROUTER_POLICY.into(),
            row: row(&[
                ("priority", Value::integer(1)),
                ("match", Value::string("1")),
                ("action", Value::string("bogus")),
            ]),
            uuid_name: None,
        },
        address_set("as_never", &[]),
    ];
    match client.transact(nb::DATABASE, &ops).await {
        Err(Error::Transaction(f)) => {
            assert_eq!(f.index, Some(1));
            assert_eq!(f.operation, "insert into Logical_Router_Policy");
            assert_eq!(f.error, "constraint violation");
            assert!(f.details.as_deref().unwrap_or("").contains("bogus"), "{f}");
        }
        other => panic!("expected a failure of operation 1, got {other:?}"),
    }
    assert_eq!(
        nb.nbctl(&["--bare", "--columns=name", "list", "Address_Set"])
            .unwrap()
            .trim(),
        ""
    );

    // A duplicate index value passes every operation and fails the commit: the trailing error.
    let ops = vec![address_set("dup", &[]), address_set("dup", &[])];
    match client.transact(nb::DATABASE, &ops).await {
        Err(Error::Transaction(f)) => {
            assert_eq!(f.index, None);
            assert_eq!(f.error, "constraint violation");
            assert!(
                f.to_string().starts_with("commit: constraint violation"),
                "{f}"
            );
        }
        other => panic!("expected a commit failure, got {other:?}"),
    }

    // An unknown column fails its operation with a syntax error.
    let ops = vec![Operation::Mutate {
        table: nb::ADDRESS_SET.into(),
        conditions: vec![Condition::eq("name", Value::string("x"))],
        mutations: vec![Mutation::insert("no_such_column", Value::string_set(["a"]))],
    }];
    match client.transact(nb::DATABASE, &ops).await {
        Err(Error::Transaction(f)) => assert_eq!(f.index, Some(0), "{f}"),
        other => panic!("expected a failure, got {other:?}"),
    }

    // The connection is still usable, and results come back per operation.
    let results = client
        .transact(
            nb::DATABASE,
            &[
                address_set("as1", &["10.0.0.1", "10.0.0.2"]),
                Operation::Comment("kube-egress test".into()),
            ],
        )
        .await
        .unwrap();
    assert!(results[0].uuid().is_some());
}

#[tokio::test]
async fn non_root_rows_live_only_when_linked_and_one_element_sets_are_bare_atoms() {
    let nb = server();
    nb.nbctl(&["lr-add", "ovn_cluster_router"]).unwrap();
    let client = Client::connect(&nb.tcp()).await.unwrap();
    let policy = |name: &str, hop: &str| Operation::Insert {
        table: nb::LOGICAL_ROUTER_POLICY.into(),
        row: row(&[
            ("priority", Value::integer(100)),
            ("match", Value::string(format!("ip4.src == {hop}"))),
            ("action", Value::string("reroute")),
            ("nexthops", Value::string_set([hop])),
        ]),
        uuid_name: Some(name.into()),
    };
    let results = client
        .transact(
            nb::DATABASE,
            &[
                policy("orphan", "100.64.0.9"),
                policy("linked", "100.64.0.4"),
                Operation::Mutate {
                    table: nb::LOGICAL_ROUTER.into(),
                    conditions: vec![Condition::eq("name", Value::string("ovn_cluster_router"))],
                    mutations: vec![Mutation::insert(
                        "policies",
                        Value::Set(vec![kube_egress_ovn::ovsdb::Atom::NamedUuid(
                            "linked".into(),
                        )]),
                    )],
                },
            ],
        )
        .await
        .unwrap();
    assert!(results[0].uuid().is_some(), "the orphan insert succeeds");
    let rows = client
        .transact(
            nb::DATABASE,
            &[Operation::Select {
                table: nb::LOGICAL_ROUTER_POLICY.into(),
                conditions: vec![],
                columns: Some(vec!["match".into(), "nexthops".into()]),
            }],
        )
        .await
        .unwrap();
    let rows = rows[0].rows();
    assert_eq!(
        rows.len(),
        1,
        "the unlinked policy is garbage-collected: {rows:?}"
    );
    assert!(
        matches!(rows[0]["nexthops"], Value::Atom(_)),
        "one-element set on the wire: {:?}",
        rows[0]["nexthops"]
    );
    assert_eq!(rows[0].strings("nexthops"), vec!["100.64.0.4".to_string()]);
}

#[tokio::test]
async fn monitor_follows_inserts_modifies_and_deletes() {
    let nb = server();
    let client = Client::connect(&nb.unix()).await.unwrap();
    nb.nbctl(&[
        "create",
        "Address_Set",
        "name=before",
        "addresses=\"10.0.0.1\"",
    ])
    .unwrap();
    let (initial, mut updates) = client
        .monitor_cond(
            nb::DATABASE,
            "m1",
            serde_json::json!({"Address_Set": [{"columns": ["name", "addresses"]}]}),
        )
        .await
        .unwrap();
    let rows = &initial["Address_Set"];
    assert_eq!(rows.len(), 1);
    assert!(
        matches!(rows.values().next(), Some(RowUpdate::Initial(r)) if r.string("name") == "before")
    );

    let next = async |updates: &mut tokio::sync::mpsc::UnboundedReceiver<_>| {
        let n: kube_egress_ovn::ovsdb::Notification =
            tokio::time::timeout(Duration::from_secs(5), updates.recv())
                .await
                .expect("an update within 5 s")
                .expect("monitor open");
        assert_eq!(n.method, "update2");
        kube_egress_ovn::ovsdb::parse_table_updates(&n.updates).unwrap()
    };
    nb.nbctl(&[
        "create",
        "Address_Set",
        "name=new",
        "addresses=\"10.0.0.2\"",
    ])
    .unwrap();
    let u = next(&mut updates).await;
    let (uuid, update) = u["Address_Set"].iter().next().unwrap();
    assert!(matches!(update, RowUpdate::Insert(r) if r.strings("addresses") == ["10.0.0.2"]));
    nb.nbctl(&["add", "Address_Set", "new", "addresses", "10.0.0.3"])
        .unwrap();
    let u = next(&mut updates).await;
    assert!(
        matches!(&u["Address_Set"][uuid], RowUpdate::Modify(r) if r.strings("addresses") == ["10.0.0.3"]),
        "a modify carries the added element only: {u:?}"
    );
    nb.nbctl(&["destroy", "Address_Set", "new"]).unwrap();
    let u = next(&mut updates).await;
    assert_eq!(u["Address_Set"][uuid], RowUpdate::Delete);
}

#[tokio::test]
async fn answers_the_servers_echo_probes() {
    // ovsdb-server probes an idle connection after 5 s and drops it when the probe is not answered
    // within another 5 s.
    let nb = server();
    let client = Client::connect(&nb.tcp()).await.unwrap();
    client.list_dbs().await.unwrap();
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert!(!client.is_closed(), "the server dropped an idle connection");
    client.list_dbs().await.unwrap();
    let log = std::fs::read_to_string(nb.dir().join("nb.log")).unwrap();
    assert!(!log.contains("inactivity probe"), "{log}");
}

#[tokio::test]
async fn reconnects_after_a_server_restart_with_a_full_resync() {
    let mut nb = server();
    nb.nbctl(&[
        "create",
        "Address_Set",
        "name=kept",
        "external_ids:k8s.ovn.org/owner-type=EgressIP",
        "external_ids:k8s.ovn.org/owner-controller=default-network-controller",
    ])
    .unwrap();
    nb.nbctl(&[
        "create",
        "Address_Set",
        "name=removed",
        "external_ids:k8s.ovn.org/owner-type=EgressIP",
        "external_ids:k8s.ovn.org/owner-controller=default-network-controller",
    ])
    .unwrap();
    let mut monitor = NbMonitor::connect(&nb.unix()).await.unwrap();
    let names = |m: &NbMonitor| {
        let mut v: Vec<String> = m
            .state()
            .address_sets
            .values()
            .map(|a| a.name.clone())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&monitor), vec!["kept", "removed"]);

    nb.stop();
    tokio::time::timeout(Duration::from_secs(5), monitor.client().closed())
        .await
        .expect("the client notices the server is gone");
    assert!(matches!(monitor.catch_up(), Err(Error::Disconnected)));
    assert!(matches!(
        monitor.client().echo().await,
        Err(Error::Disconnected)
    ));

    nb.restart().unwrap();
    // Changes made while we were away: only a full resync sees the deletion.
    nb.nbctl(&["destroy", "Address_Set", "removed"]).unwrap();
    nb.nbctl(&[
        "create",
        "Address_Set",
        "name=added",
        "external_ids:k8s.ovn.org/owner-type=EgressIP",
        "external_ids:k8s.ovn.org/owner-controller=default-network-controller",
    ])
    .unwrap();
    monitor
        .reconnect(Duration::from_millis(50), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(monitor.resyncs(), 1);
    assert_eq!(names(&monitor), vec!["added", "kept"]);

    // And it follows changes again.
    nb.nbctl(&["destroy", "Address_Set", "kept"]).unwrap();
    tokio::time::timeout(Duration::from_secs(5), monitor.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(names(&monitor), vec!["added"]);
}

#[tokio::test]
async fn reconnect_gives_up_after_its_timeout() {
    let mut nb = server();
    let mut monitor = NbMonitor::connect(&nb.unix()).await.unwrap();
    nb.stop();
    let err = monitor
        .reconnect(Duration::from_millis(20), Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");
}

/// A TCP endpoint forwarding each connection to the server's unix socket, which can slip a
/// message of its own into what the server sends to the newest connection (between two of the
/// server's messages: it is used only while the server has nothing to say).
struct Proxy {
    endpoint: String,
    inject: tokio::sync::mpsc::UnboundedSender<Vec<u8>>,
}

impl Proxy {
    async fn start(unix: &str) -> Proxy {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let socket = unix.strip_prefix("unix:").unwrap().to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("tcp:{}", listener.local_addr().unwrap());
        let (inject, injected) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
        let injected = std::sync::Arc::new(tokio::sync::Mutex::new(injected));
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = tokio::net::UnixStream::connect(&socket).await.unwrap();
                let injected = injected.clone();
                tokio::spawn(async move {
                    let (mut client_rd, mut client_wr) = client.into_split();
                    let (mut server_rd, mut server_wr) = server.into_split();
                    tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut client_rd, &mut server_wr).await;
                    });
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        tokio::select! {
                            n = server_rd.read(&mut buf) => match n {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if client_wr.write_all(&buf[..n]).await.is_err() {
                                        break;
                                    }
                                }
                            },
                            Some(message) = async { injected.lock().await.recv().await } => {
                                if client_wr.write_all(&message).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                });
            }
        });
        Proxy { endpoint, inject }
    }
}

/// An update the replica cannot apply (a modify of a row it never saw) leaves it out of step: it
/// says so on every later call, not only once, until a reconnection rebuilds it; a reconcile
/// does that reconnection itself.
#[tokio::test]
async fn an_update_that_does_not_fit_keeps_the_replica_out_of_step_until_a_resync() {
    use kube_egress_ovn::{Desired, Reconciler};
    let nb = server();
    nb.nbctl(&[
        "create",
        "Address_Set",
        "name=kept",
        "external_ids:k8s.ovn.org/owner-type=EgressIP",
        "external_ids:k8s.ovn.org/owner-controller=default-network-controller",
    ])
    .unwrap();
    let proxy = Proxy::start(&nb.unix()).await;
    let mut reconciler = Reconciler::connect(&proxy.endpoint).await.unwrap();
    assert!(reconciler.monitor_mut().catch_up().is_ok());

    let bogus = serde_json::json!({
        "id": null,
        "method": "update2",
        "params": ["kube-egress", {"Address_Set": {
            "0b6d1e3c-6a3f-4a51-9d0c-4d2f2f1c0001": {"modify": {"name": "ghost"}}
        }}]
    });
    proxy.inject.send(bogus.to_string().into_bytes()).unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), reconciler.monitor_mut().changed())
        .await
        .expect("the injected update arrives");
    assert!(matches!(first, Err(Error::OutOfStep(_))), "{first:?}");
    // Still out of step: nothing new arrived, but the replica is not to be trusted.
    let again = reconciler.monitor_mut().catch_up();
    assert!(
        matches!(again, Err(Error::OutOfStep(ref why)) if why.contains("unknown row")),
        "{again:?}"
    );
    let waited = tokio::time::timeout(Duration::from_secs(1), reconciler.monitor_mut().changed())
        .await
        .expect("an out-of-step replica answers at once");
    assert!(matches!(waited, Err(Error::OutOfStep(_))), "{waited:?}");

    // A change made meanwhile is seen after the resync the reconcile starts with.
    nb.nbctl(&[
        "create",
        "Address_Set",
        "name=added",
        "external_ids:k8s.ovn.org/owner-type=EgressIP",
        "external_ids:k8s.ovn.org/owner-controller=default-network-controller",
    ])
    .unwrap();
    reconciler.reconcile(&Desired::default()).await.unwrap();
    assert_eq!(reconciler.monitor().resyncs(), 1);
    assert!(reconciler.monitor_mut().catch_up().is_ok());
}
