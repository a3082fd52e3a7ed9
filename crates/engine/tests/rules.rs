//! One test per assignment, selection and plan rule, and per Event reason.

mod common;

use std::net::IpAddr;

use common::*;
use kube_egress_engine::{Config, Engine, Event, Snapshot, SubnetKind};

fn status(engine: &Engine, name: &str) -> Vec<(String, String)> {
    engine
        .status(name)
        .unwrap_or_default()
        .into_iter()
        .map(|i| (i.node, i.egress_ip))
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

fn reasons(events: &[Event]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|e| (e.name.clone(), e.reason.clone()))
        .collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Seed 003 §15.9.1.4: node1 and node3 assignable, two IPs, pods in two `env: prod` namespaces.
fn seed_003() -> Snapshot {
    Snapshot {
        nodes: vec![
            node("node1", true, "192.168.126.5/18", &[]),
            node("node2", false, "192.168.126.6/18", &[]),
            node("node3", true, "192.168.126.7/18", &[]),
        ],
        namespaces: vec![
            namespace("namespace1", &[("env", "prod")]),
            namespace("namespace2", &[("env", "prod")]),
            namespace("other", &[]),
        ],
        pods: vec![
            pod("namespace1", "pod1", "node1", &["10.128.0.10"], &[]),
            pod("namespace1", "pod2", "node2", &["10.128.2.10"], &[]),
            pod("namespace2", "pod3", "node3", &["10.128.4.10"], &[]),
            pod("other", "pod4", "node2", &["10.128.2.11"], &[]),
        ],
        egress_ips: vec![eip(
            "egressips-prod",
            1,
            &["192.168.126.10", "192.168.126.102"],
            match_labels(&[("env", "prod")]),
        )],
        ..Default::default()
    }
}

#[test]
fn seed_003_assigns_one_ip_to_each_assignable_node() {
    let mut engine = Engine::load(Config::default(), seed_003());
    assert_eq!(
        status(&engine, "egressips-prod"),
        pairs(&[("node1", "192.168.126.10"), ("node3", "192.168.126.102")])
    );
    assert_eq!(
        engine.served_pods("egressips-prod"),
        vec!["namespace1/pod1", "namespace1/pod2", "namespace2/pod3"]
    );
    assert!(engine.take_changes().events.is_empty());
    assert!(engine.mark("egressips-prod").is_some());
}

#[test]
fn seed_001_not_in_selects_namespaces_without_the_label() {
    let snapshot = Snapshot {
        nodes: vec![node("w1", true, "172.18.0.2/16", &[])],
        namespaces: vec![
            namespace("dev", &[("environment", "development")]),
            namespace("prod", &[("environment", "production")]),
            namespace("plain", &[]),
        ],
        pods: vec![
            pod("dev", "web", "w1", &["10.244.1.3"], &[("app", "web")]),
            pod("prod", "web", "w1", &["10.244.1.4"], &[("app", "web")]),
            pod("prod", "db", "w1", &["10.244.1.5"], &[("app", "db")]),
            pod("plain", "web", "w1", &["10.244.1.6"], &[("app", "web")]),
        ],
        egress_ips: vec![with_pod_selector(
            eip(
                "egressip-prod",
                1,
                &["172.18.0.33", "172.18.0.44"],
                not_in("environment", &["development"]),
            ),
            match_labels(&[("app", "web")]),
        )],
        ..Default::default()
    };
    let engine = Engine::load(Config::default(), snapshot);
    assert_eq!(
        engine.served_pods("egressip-prod"),
        vec!["plain/web", "prod/web"]
    );
}

#[test]
fn only_labelled_ready_reachable_nodes_are_eligible() {
    let mut not_ready = node("b", true, "10.0.0.2/24", &[]);
    not_ready.ready = false;
    let snapshot = Snapshot {
        nodes: vec![
            node("a", false, "10.0.0.1/24", &[]),
            not_ready,
            node("c", true, "10.0.0.3/24", &[]),
            node("d", true, "10.0.0.4/24", &[]),
        ],
        egress_ips: vec![eip("e", 1, &["10.0.0.100"], match_labels(&[("x", "y")]))],
        unreachable: vec!["c".into()],
        ..Default::default()
    };
    let mut engine = Engine::load(Config::default(), snapshot);
    assert_eq!(status(&engine, "e"), pairs(&[("d", "10.0.0.100")]));
    assert!(!engine.node_eligible("a"));
    assert!(!engine.node_eligible("b"));
    assert!(!engine.node_eligible("c"));
    // d becomes unreachable: the IP has nowhere to go.
    engine.set_node_reachable("d", false);
    assert_eq!(status(&engine, "e"), vec![]);
    let changes = engine.take_changes();
    assert_eq!(changes.egress_ips.iter().collect::<Vec<_>>(), vec!["e"]);
    assert_eq!(
        reasons(&changes.events),
        pairs(&[("e", "NoMatchingNodeFound")])
    );
    assert!(
        changes.events[0]
            .message
            .starts_with("no assignable nodes for EgressIP: e")
    );
    // c comes back: the pending IP is assigned there.
    engine.set_node_reachable("c", true);
    assert_eq!(status(&engine, "e"), pairs(&[("c", "10.0.0.100")]));
}

#[test]
fn least_loaded_first_ties_broken_by_name() {
    let mut engine = Engine::new(Config::default());
    for (n, a) in [
        ("c", "10.0.0.3/24"),
        ("a", "10.0.0.1/24"),
        ("b", "10.0.0.2/24"),
    ] {
        engine.upsert_node(node(n, true, a, &[]));
    }
    let sel = || match_labels(&[("x", "y")]);
    engine.upsert_egress_ip(eip("e1", 1, &["10.0.0.101"], sel()));
    engine.upsert_egress_ip(eip("e2", 2, &["10.0.0.102"], sel()));
    engine.upsert_egress_ip(eip("e3", 3, &["10.0.0.103", "10.0.0.104"], sel()));
    assert_eq!(status(&engine, "e1"), pairs(&[("a", "10.0.0.101")]));
    assert_eq!(status(&engine, "e2"), pairs(&[("b", "10.0.0.102")]));
    assert_eq!(
        status(&engine, "e3"),
        pairs(&[("c", "10.0.0.103"), ("a", "10.0.0.104")])
    );
}

#[test]
fn never_two_ips_of_one_object_on_one_node() {
    let mut engine = Engine::new(Config::default());
    engine.upsert_node(node("a", true, "10.0.0.1/24", &[]));
    engine.upsert_egress_ip(eip(
        "e",
        1,
        &["10.0.0.101", "10.0.0.102"],
        match_labels(&[("x", "y")]),
    ));
    assert_eq!(status(&engine, "e"), pairs(&[("a", "10.0.0.101")]));
    let changes = engine.take_changes();
    assert_eq!(
        reasons(&changes.events),
        pairs(&[("e", "UnassignedRequest")])
    );
    assert_eq!(
        changes.events[0].message,
        "Not all egress IPs for EgressIP: e could be assigned, please tag more nodes"
    );
    // A second node takes the pending IP.
    engine.upsert_node(node("b", true, "10.0.0.2/24", &[]));
    assert_eq!(
        status(&engine, "e"),
        pairs(&[("a", "10.0.0.101"), ("b", "10.0.0.102")])
    );
    // Removing the first IP frees node a for nothing else; the second stays on b.
    engine.upsert_egress_ip(eip("e", 1, &["10.0.0.102"], match_labels(&[("x", "y")])));
    assert_eq!(status(&engine, "e"), pairs(&[("b", "10.0.0.102")]));
}

#[test]
fn valid_assignments_never_move_and_lost_nodes_move_only_their_ips() {
    let mut engine = Engine::new(Config::default());
    for (n, a) in [("a", "10.0.0.1/24"), ("b", "10.0.0.2/24")] {
        engine.upsert_node(node(n, true, a, &[]));
    }
    let sel = || match_labels(&[("x", "y")]);
    engine.upsert_egress_ip(eip("e1", 1, &["10.0.0.101"], sel()));
    engine.upsert_egress_ip(eip("e2", 2, &["10.0.0.102"], sel()));
    engine.upsert_egress_ip(eip("e3", 3, &["10.0.0.103"], sel()));
    assert_eq!(status(&engine, "e1"), pairs(&[("a", "10.0.0.101")]));
    assert_eq!(status(&engine, "e2"), pairs(&[("b", "10.0.0.102")]));
    assert_eq!(status(&engine, "e3"), pairs(&[("a", "10.0.0.103")]));
    engine.take_changes();

    // A new, empty node: nothing moves to it.
    engine.upsert_node(node("c", true, "10.0.0.3/24", &[]));
    assert!(engine.take_changes().egress_ips.is_empty());

    // b is lost: only e2 moves, to the least-loaded node (c).
    let mut b = node("b", true, "10.0.0.2/24", &[]);
    b.ready = false;
    engine.upsert_node(b.clone());
    let changes = engine.take_changes();
    assert_eq!(changes.egress_ips.iter().collect::<Vec<_>>(), vec!["e2"]);
    assert_eq!(status(&engine, "e2"), pairs(&[("c", "10.0.0.102")]));

    // b comes back: no failback.
    b.ready = true;
    engine.upsert_node(b);
    assert!(engine.take_changes().egress_ips.is_empty());
    assert_eq!(status(&engine, "e2"), pairs(&[("c", "10.0.0.102")]));

    // Removing the egress-assignable label moves the IPs away too.
    engine.upsert_node(node("a", false, "10.0.0.1/24", &[]));
    assert_eq!(status(&engine, "e1"), pairs(&[("b", "10.0.0.101")]));
    // Both IPs of a move, in object order, to the least-loaded nodes (ties by name).
    assert_eq!(status(&engine, "e3"), pairs(&[("b", "10.0.0.103")]));
    // Deleting a node moves its IPs.
    engine.remove_node("c");
    assert_eq!(status(&engine, "e2"), pairs(&[("b", "10.0.0.102")]));
}

#[test]
fn cordoned_nodes_keep_their_ips_unless_configured_otherwise() {
    let sel = || match_labels(&[("x", "y")]);
    let setup = |config: Config| {
        let mut engine = Engine::new(config);
        for (n, a) in [("a", "10.0.0.1/24"), ("b", "10.0.0.2/24")] {
            engine.upsert_node(node(n, true, a, &[]));
        }
        engine.upsert_egress_ip(eip("e1", 1, &["10.0.0.101"], sel()));
        assert_eq!(status(&engine, "e1"), pairs(&[("a", "10.0.0.101")]));
        engine.take_changes();
        engine
    };
    let mut cordoned = node("a", true, "10.0.0.1/24", &[]);
    cordoned.unschedulable = true;

    // Default (as OVN-K): cordoning changes nothing.
    let mut engine = setup(Config::default());
    engine.upsert_node(cordoned.clone());
    assert!(engine.take_changes().egress_ips.is_empty());
    assert!(engine.node_eligible("a"));

    // With the option, the IP leaves the cordoned node and does not come back when uncordoned.
    let config = Config {
        cordoned_nodes_ineligible: true,
        ..Config::default()
    };
    let mut engine = setup(config.clone());
    engine.upsert_node(cordoned.clone());
    assert!(!engine.node_eligible("a"));
    assert_eq!(status(&engine, "e1"), pairs(&[("b", "10.0.0.101")]));
    engine.upsert_node(node("a", true, "10.0.0.1/24", &[]));
    assert!(engine.node_eligible("a"));
    assert_eq!(status(&engine, "e1"), pairs(&[("b", "10.0.0.101")]));

    // Turning the option on later re-evaluates nodes already cordoned.
    let mut engine = setup(Config::default());
    engine.upsert_node(cordoned);
    engine.set_config(config);
    assert_eq!(status(&engine, "e1"), pairs(&[("b", "10.0.0.101")]));
}

#[test]
fn invalid_ip_is_reported_and_does_not_block_the_others() {
    let mut engine = Engine::new(Config::default());
    engine.upsert_node(node("a", true, "10.0.0.1/24", &[]));
    engine.upsert_node(node("b", true, "10.0.0.2/24", &[]));
    engine.upsert_egress_ip(eip(
        "e",
        1,
        &["10.0.0.300", "10.0.0.101"],
        match_labels(&[("x", "y")]),
    ));
    assert_eq!(status(&engine, "e"), pairs(&[("a", "10.0.0.101")]));
    let events = engine.take_changes().events;
    assert_eq!(reasons(&events), pairs(&[("e", "InvalidEgressIP")]));
    assert_eq!(
        events[0].message,
        "egress IP: 10.0.0.300 for object EgressIP: e is not a valid IP address"
    );
    // The same problem is not reported again on an unrelated change.
    engine.upsert_node(node("c", true, "10.0.0.3/24", &[]));
    assert!(engine.take_changes().events.is_empty());
}

#[test]
fn ip_equal_to_a_host_address_is_refused() {
    let mut engine = Engine::new(Config::default());
    engine.upsert_node(node("a", true, "10.0.0.1/24", &[]));
    engine.upsert_node(node("b", true, "10.0.0.2/24", &["10.0.0.50/24"]));
    engine.upsert_egress_ip(eip(
        "e",
        1,
        &["10.0.0.50", "10.0.0.101"],
        match_labels(&[("x", "y")]),
    ));
    assert_eq!(status(&engine, "e"), pairs(&[("a", "10.0.0.101")]));
    let events = engine.take_changes().events;
    assert_eq!(reasons(&events), pairs(&[("e", "EgressIPConflict")]));
    assert_eq!(
        events[0].message,
        "Egress IP e with IP 10.0.0.50 is conflicting with a host (b) IP address and will not be assigned"
    );
    // The host drops the address: the IP is assigned.
    engine.upsert_node(node("b", true, "10.0.0.2/24", &[]));
    assert_eq!(
        status(&engine, "e"),
        pairs(&[("b", "10.0.0.50"), ("a", "10.0.0.101")])
    );
    // A host takes the address while it is assigned: it is withdrawn.
    engine.upsert_node(node("a", true, "10.0.0.1/24", &["10.0.0.101/24"]));
    assert_eq!(status(&engine, "e"), pairs(&[("b", "10.0.0.50")]));
}

#[test]
fn ip_of_another_object_is_refused_until_released() {
    let mut engine = Engine::new(Config::default());
    engine.upsert_node(node("a", true, "10.0.0.1/24", &[]));
    engine.upsert_node(node("b", true, "10.0.0.2/24", &[]));
    let sel = || match_labels(&[("x", "y")]);
    engine.upsert_egress_ip(eip("first", 5, &["10.0.0.101"], sel()));
    // An *older* object claiming the same IP later does not take it away from its holder.
    engine.upsert_egress_ip(eip("older", 1, &["10.0.0.101", "10.0.0.102"], sel()));
    assert_eq!(status(&engine, "first"), pairs(&[("a", "10.0.0.101")]));
    assert_eq!(status(&engine, "older"), pairs(&[("b", "10.0.0.102")]));
    let events = engine.take_changes().events;
    assert_eq!(reasons(&events), pairs(&[("older", "UnsupportedRequest")]));
    assert_eq!(
        events[0].message,
        "IP: \"10.0.0.101\" for EgressIP: older is already allocated for EgressIP: first on a"
    );
    engine.remove_egress_ip("first");
    assert_eq!(
        status(&engine, "older"),
        pairs(&[("a", "10.0.0.101"), ("b", "10.0.0.102")])
    );
    assert_eq!(engine.status("first"), None);
}

#[test]
fn no_node_can_host_the_ips() {
    let mut engine = Engine::new(Config::default());
    engine.upsert_egress_ip(eip("e", 1, &["10.0.0.101"], match_labels(&[("x", "y")])));
    let events = engine.take_changes().events;
    assert_eq!(reasons(&events), pairs(&[("e", "NoMatchingNodeFound")]));
    assert_eq!(
        events[0].message,
        "no assignable nodes for EgressIP: e, please tag at least one node with label: k8s.ovn.org/egress-assignable"
    );
    engine.upsert_node(node("a", true, "192.0.2.1/24", &[]));
    let events = engine.take_changes().events;
    assert_eq!(reasons(&events), pairs(&[("e", "NoMatchingNodeFound")]));
    assert_eq!(
        events[0].message,
        "No matching nodes found, which can host any of the egress IPs: [10.0.0.101] for object EgressIP: e"
    );
}

#[test]
fn pod_matched_twice_is_served_by_the_oldest_object() {
    let snapshot = Snapshot {
        nodes: vec![
            node("a", true, "10.0.0.1/24", &[]),
            node("b", true, "10.0.0.2/24", &[]),
        ],
        namespaces: vec![namespace("ns", &[("env", "prod")])],
        pods: vec![pod("ns", "p", "a", &["10.128.0.5"], &[("app", "web")])],
        egress_ips: vec![
            eip("zeta", 1, &["10.0.0.101"], match_labels(&[("env", "prod")])),
            eip(
                "alpha",
                2,
                &["10.0.0.102"],
                match_labels(&[("env", "prod")]),
            ),
        ],
        ..Default::default()
    };
    let mut engine = Engine::load(Config::default(), snapshot);
    assert_eq!(engine.served_pods("zeta"), vec!["ns/p"]);
    assert!(engine.served_pods("alpha").is_empty());
    let events = engine.take_changes().events;
    assert_eq!(reasons(&events), pairs(&[("alpha", "UndefinedRequest")]));
    assert_eq!(
        events[0].message,
        "EgressIP object alpha will not be configured for pod ns_p since another egressIP object zeta is serving it, this is undefined"
    );
    engine.remove_egress_ip("zeta");
    assert_eq!(engine.served_pods("alpha"), vec!["ns/p"]);
}

#[test]
fn pod_matched_by_objects_of_the_same_age_is_served_by_the_smaller_name() {
    let nodes = [
        node("a", true, "10.0.0.1/24", &[]),
        node("b", true, "10.0.0.2/24", &[]),
    ];
    let objects = [
        eip("beta", 7, &["10.0.0.101"], match_labels(&[("env", "prod")])),
        eip(
            "alpha",
            7,
            &["10.0.0.102"],
            match_labels(&[("env", "prod")]),
        ),
    ];
    let undefined = "EgressIP object beta will not be configured for pod ns_p since another egressIP object alpha is serving it, this is undefined";

    // From scratch, whatever the input order.
    for egress_ips in [objects.to_vec(), objects.iter().rev().cloned().collect()] {
        let snapshot = Snapshot {
            nodes: nodes.to_vec(),
            namespaces: vec![namespace("ns", &[("env", "prod")])],
            pods: vec![pod("ns", "p", "a", &["10.128.0.5"], &[])],
            egress_ips,
            ..Default::default()
        };
        let mut engine = Engine::load(Config::default(), snapshot);
        assert_eq!(engine.served_pods("alpha"), vec!["ns/p"]);
        assert!(engine.served_pods("beta").is_empty());
        let events = engine.take_changes().events;
        assert_eq!(reasons(&events), pairs(&[("beta", "UndefinedRequest")]));
        assert_eq!(events[0].kind, "EgressIP");
        assert_eq!(events[0].type_, "Warning");
        assert_eq!(events[0].message, undefined);
    }

    // Incrementally: the object that arrives second but sorts first by name takes the pod over.
    let mut engine = Engine::new(Config::default());
    for n in &nodes {
        engine.upsert_node(n.clone());
    }
    engine.upsert_namespace(namespace("ns", &[("env", "prod")]));
    engine.upsert_pod(pod("ns", "p", "a", &["10.128.0.5"], &[]));
    engine.upsert_egress_ip(objects[0].clone());
    assert_eq!(engine.served_pods("beta"), vec!["ns/p"]);
    engine.take_changes();
    engine.upsert_egress_ip(objects[1].clone());
    assert_eq!(engine.served_pods("alpha"), vec!["ns/p"]);
    assert!(engine.served_pods("beta").is_empty());
    let events = engine.take_changes().events;
    assert_eq!(reasons(&events), pairs(&[("beta", "UndefinedRequest")]));
    assert_eq!(events[0].message, undefined);
}

#[test]
fn unservable_pods_are_not_served() {
    let mut host = pod("ns", "host", "a", &["10.0.0.1"], &[]);
    host.host_network = true;
    let mut done = pod("ns", "done", "a", &["10.128.0.6"], &[]);
    done.completed = true;
    let mut pending = pod("ns", "pending", "a", &[], &[]);
    pending.node = None;
    let no_ip = pod("ns", "noip", "a", &[], &[]);
    let snapshot = Snapshot {
        nodes: vec![node("a", true, "10.0.0.1/24", &[])],
        namespaces: vec![namespace("ns", &[("env", "prod")])],
        pods: vec![
            host,
            done,
            pending,
            no_ip,
            pod("ns", "ok", "a", &["10.128.0.7"], &[]),
        ],
        egress_ips: vec![eip(
            "e",
            1,
            &["10.0.0.101"],
            match_labels(&[("env", "prod")]),
        )],
        ..Default::default()
    };
    let mut engine = Engine::load(Config::default(), snapshot);
    assert_eq!(engine.served_pods("e"), vec!["ns/ok"]);
    // The pending pod gets scheduled and an IP: now served.
    engine.upsert_pod(pod("ns", "pending", "a", &["10.128.0.8"], &[]));
    assert_eq!(engine.served_pods("e"), vec!["ns/ok", "ns/pending"]);
}

#[test]
fn secondary_networks_host_ips_and_are_preferred() {
    let snapshot = Snapshot {
        nodes: vec![
            // a has the IP's network as its primary network, b and c as a secondary one.
            node("a", true, "10.10.0.1/24", &[]),
            node("b", true, "192.168.1.2/24", &["10.10.0.2/24"]),
            node(
                "c",
                true,
                "192.168.1.3/24",
                &["10.10.0.3/24", "10.10.0.4/16"],
            ),
        ],
        namespaces: vec![namespace("ns", &[("env", "prod")])],
        pods: vec![pod("ns", "p", "a", &["10.128.0.5"], &[])],
        egress_ips: vec![eip(
            "e",
            1,
            &["10.10.0.100", "10.10.0.101"],
            match_labels(&[("env", "prod")]),
        )],
        ..Default::default()
    };
    let engine = Engine::load(Config::default(), snapshot);
    assert_eq!(
        status(&engine, "e"),
        pairs(&[("b", "10.10.0.100"), ("c", "10.10.0.101")])
    );
    let plan = engine.node_plan("c");
    assert_eq!(plan.egress_ips.len(), 1);
    assert_eq!(plan.egress_ips[0].kind, SubnetKind::Secondary);
    assert_eq!(plan.egress_ips[0].subnet, "10.10.0.0/24".parse().unwrap());
}

#[test]
fn families_are_independent_and_ipv6_is_normalised() {
    let mut a = node("a", true, "10.0.0.1/24", &[]);
    a.primary.push("fd00::1/64".parse().unwrap());
    let snapshot = Snapshot {
        nodes: vec![a, node("b", true, "10.0.0.2/24", &[])],
        namespaces: vec![namespace("ns", &[("env", "prod")])],
        pods: vec![pod("ns", "p", "b", &["10.128.0.5", "fd01::5"], &[])],
        egress_ips: vec![eip(
            "e",
            1,
            &["fd00:0:0:0::10", "10.0.0.101"],
            match_labels(&[("env", "prod")]),
        )],
        ..Default::default()
    };
    let engine = Engine::load(Config::default(), snapshot);
    assert_eq!(
        status(&engine, "e"),
        pairs(&[("a", "fd00::10"), ("b", "10.0.0.101")])
    );
    // b hosts the v4 IP (local v4 SNAT, no steering) and steers v6 to a.
    let plan = engine.node_plan("b");
    assert_eq!(plan.snat.len(), 1);
    assert_eq!(plan.snat[0].pod_ip, ip("10.128.0.5"));
    assert_eq!(plan.steering.len(), 1);
    assert_eq!(plan.steering[0].pod_ip, ip("fd01::5"));
    assert_eq!(plan.steering_routes[0].next_hops[0].node, "a");
    let plan = engine.node_plan("a");
    assert_eq!(plan.snat.len(), 1);
    assert_eq!(plan.snat[0].pod_ip, ip("fd01::5"));
    assert_eq!(plan.snat[0].egress_ip, ip("fd00::10"));
}

#[test]
fn given_status_is_kept_when_valid_and_repaired_when_not() {
    let mut snapshot = seed_003();
    snapshot.egress_ips[0].status = pairs(&[
        ("node3", "192.168.126.10"),
        ("node2", "192.168.126.102"), // node2 is not assignable
    ]);
    let engine = Engine::load(Config::default(), snapshot);
    assert_eq!(
        status(&engine, "egressips-prod"),
        pairs(&[("node3", "192.168.126.10"), ("node1", "192.168.126.102")])
    );
}

#[test]
fn marks_follow_the_annotation_and_are_reused() {
    let sel = || match_labels(&[("x", "y")]);
    let mut annotated = eip("annotated", 1, &[], sel());
    annotated.mark = Some(50007);
    let mut clash = eip("clash", 2, &[], sel());
    clash.mark = Some(50007);
    let mut out_of_range = eip("out", 3, &[], sel());
    out_of_range.mark = Some(42);
    let snapshot = Snapshot {
        egress_ips: vec![out_of_range, clash, annotated],
        ..Default::default()
    };
    let mut engine = Engine::load(Config::default(), snapshot);
    assert_eq!(engine.mark("annotated"), Some(50007));
    assert_eq!(engine.mark("clash"), Some(50000));
    assert_eq!(engine.mark("out"), Some(50001));
    engine.remove_egress_ip("clash");
    engine.upsert_egress_ip(eip("new", 4, &[], sel()));
    assert_eq!(engine.mark("new"), Some(50000));
}

#[test]
fn node_plans_hold_snat_steering_and_exclusions() {
    let mut snapshot = seed_003();
    snapshot.nodes[1].pod_cidrs = vec!["10.128.2.0/23".parse().unwrap()];
    snapshot.service_cidrs = vec![("kubernetes".into(), vec!["172.30.0.0/16".parse().unwrap()])];
    let config = Config {
        cluster_cidrs: vec!["10.128.0.0/14".parse().unwrap()],
        service_cidrs: vec!["fd02::/112".parse().unwrap()],
        ..Config::default()
    };
    let engine = Engine::load(config, snapshot);
    let mark = engine.mark("egressips-prod").unwrap();

    // Egress nodes: the IP, SNAT for every served pod; their own pods are not steered.
    let plan1 = engine.node_plan("node1");
    assert_eq!(plan1.egress_ips.len(), 1);
    assert_eq!(plan1.egress_ips[0].ip, ip("192.168.126.10"));
    assert_eq!(plan1.egress_ips[0].kind, SubnetKind::Primary);
    assert_eq!(plan1.egress_ips[0].mark, Some(mark));
    let snat: Vec<_> = plan1.snat.iter().map(|s| (s.pod_ip, s.egress_ip)).collect();
    assert_eq!(
        snat,
        vec![
            (ip("10.128.0.10"), ip("192.168.126.10")),
            (ip("10.128.2.10"), ip("192.168.126.10")),
            (ip("10.128.4.10"), ip("192.168.126.10")),
        ]
    );
    assert!(plan1.steering.is_empty());

    // node2: steers its served pod (not the unselected one) to both egress nodes.
    let plan2 = engine.node_plan("node2");
    assert!(plan2.egress_ips.is_empty() && plan2.snat.is_empty());
    assert_eq!(plan2.steering.len(), 1);
    assert_eq!(plan2.steering[0].pod_ip, ip("10.128.2.10"));
    assert_eq!(plan2.steering[0].mark, mark);
    let hops: Vec<_> = plan2.steering_routes[0]
        .next_hops
        .iter()
        .map(|h| (h.node.as_str(), h.address))
        .collect();
    assert_eq!(
        hops,
        vec![
            ("node1", ip("192.168.126.5")),
            ("node3", ip("192.168.126.7"))
        ]
    );

    let ex = &plan2.exclusions;
    assert_eq!(
        ex.pod_cidrs,
        vec![
            "10.128.0.0/14".parse().unwrap(),
            "10.128.2.0/23".parse().unwrap()
        ]
    );
    assert_eq!(
        ex.service_cidrs,
        vec![
            "172.30.0.0/16".parse().unwrap(),
            "fd02::/112".parse().unwrap()
        ]
    );
    assert_eq!(
        ex.node_ips,
        vec![
            ip("192.168.126.5"),
            ip("192.168.126.6"),
            ip("192.168.126.7")
        ]
    );
}

#[test]
fn invalid_selector_is_an_event_and_selects_nothing() {
    let bad = k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
        match_labels: None,
        match_expressions: Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement {
                key: "env".into(),
                operator: "In".into(),
                values: None,
            },
        ]),
    };
    let mut snapshot = seed_003();
    snapshot.egress_ips[0] = eip("egressips-prod", 1, &["192.168.126.10"], bad);
    let mut engine = Engine::load(Config::default(), snapshot);
    assert!(engine.served_pods("egressips-prod").is_empty());
    assert_eq!(status(&engine, "egressips-prod").len(), 1);
    let events = engine.take_changes().events;
    assert_eq!(
        reasons(&events),
        pairs(&[("egressips-prod", "InvalidSelector")])
    );
    assert!(
        events[0]
            .message
            .contains("spec.namespaceSelector.matchExpressions[0].values"),
        "{}",
        events[0].message
    );
    // Fixing the selector selects the pods.
    engine.upsert_egress_ip(eip(
        "egressips-prod",
        1,
        &["192.168.126.10"],
        match_labels(&[("env", "prod")]),
    ));
    assert_eq!(engine.served_pods("egressips-prod").len(), 3);
}

#[test]
fn malformed_node_annotation_is_an_event_on_the_node() {
    let mut n = node("a", true, "10.0.0.1/24", &[]);
    n.problems.push(kube_egress_engine::FieldProblem {
        field: "metadata.annotations[k8s.ovn.org/host-cidrs]".into(),
        message: "expected a JSON list".into(),
    });
    let mut engine = Engine::new(Config::default());
    engine.upsert_node(n);
    let events = engine.take_changes().events;
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].kind.as_str(), events[0].name.as_str()),
        ("Node", "a")
    );
    assert_eq!(events[0].reason, "InvalidNodeAddressing");
    assert!(events[0].message.contains("k8s.ovn.org/host-cidrs"));
}

#[test]
fn changes_name_exactly_the_touched_nodes() {
    let mut engine = Engine::load(Config::default(), seed_003());
    engine.take_changes();
    // A pod on node2 joins: node2 steers it, node1 and node3 SNAT it.
    engine.upsert_pod(pod("namespace2", "new", "node2", &["10.128.2.20"], &[]));
    let changes = engine.take_changes();
    assert_eq!(
        changes.nodes.iter().collect::<Vec<_>>(),
        vec!["node1", "node2", "node3"]
    );
    assert!(changes.egress_ips.is_empty());
    // A pod in the unselected namespace: only its node (nothing to do, but its plan is rechecked).
    engine.upsert_pod(pod("other", "x", "node2", &["10.128.2.21"], &[]));
    let changes = engine.take_changes();
    assert!(changes.nodes.is_empty(), "{changes:?}");
    // Relabelling the namespace selects it.
    engine.upsert_namespace(namespace("other", &[("env", "prod")]));
    assert_eq!(engine.served_pods("egressips-prod").len(), 6);
    let changes = engine.take_changes();
    assert_eq!(
        changes.nodes.iter().collect::<Vec<_>>(),
        vec!["node1", "node2", "node3"]
    );
}

#[test]
fn objects_without_creation_time_count_as_newest() {
    let mut manifest_only = eip("aaa", 0, &["10.0.0.101"], match_labels(&[("env", "prod")]));
    manifest_only.created = None;
    let snapshot = Snapshot {
        nodes: vec![node("a", true, "10.0.0.1/24", &[])],
        namespaces: vec![namespace("ns", &[("env", "prod")])],
        pods: vec![pod("ns", "p", "a", &["10.128.0.5"], &[])],
        egress_ips: vec![
            manifest_only,
            eip(
                "zzz",
                1_700_000_000,
                &["10.0.0.101"],
                match_labels(&[("env", "prod")]),
            ),
        ],
        ..Default::default()
    };
    let mut engine = Engine::load(Config::default(), snapshot);
    assert_eq!(engine.served_pods("zzz"), vec!["ns/p"]);
    assert_eq!(status(&engine, "zzz"), pairs(&[("a", "10.0.0.101")]));
    let events = engine.take_changes().events;
    assert_eq!(
        reasons(&events),
        pairs(&[("aaa", "UndefinedRequest"), ("aaa", "UnsupportedRequest")])
    );
}
