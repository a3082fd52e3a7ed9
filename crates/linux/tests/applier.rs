//! The applier against the real kernel, in the node namespace of a one-node testbed (namespaces
//! named `ke<pid>-<n>-<role>`, deleted when the testbed is dropped, panics included). Nothing
//! here changes the host's own namespace. Needs root; skipped otherwise.
//!
//! The tunnel peers are addresses on the primary network where no node answers: their neighbour
//! and FDB entries are permanent and no test sends a packet to them.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use ipnet::Ipv4Net;
use kube_egress_engine::{
    EgressHop, Exclusions, Family, HostedIp, NodePlan, SnatEntry, SteeringEntry, SteeringRoute,
    SubnetKind,
};
use kube_egress_linux::applier::Applier;
use kube_egress_linux::desired::{TUNNEL_DEVICE, tunnel_mac};
use kube_egress_linux::netlink::{Mac, Netlink};
use kube_egress_linux::netns;
use kube_egress_linux::nft::Nft;
use kube_egress_testbed::{NodeSpec, Testbed, TestbedBuilder, is_root};
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::route::RouteAttribute;
use netlink_packet_route::rule::RuleAttribute;
use rtnetlink::MulticastGroup;

const NODE: &str = "n1";
const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 126, 2);
const POD_CIDR: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(10, 128, 0, 0), 23);
/// The testbed's primary network.
const PRIMARY: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(192, 168, 64, 0), 18);
/// An egress IP hosted here in plan A, taken over by `NEW_OWNER` in plan B.
const EGRESS_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 126, 10);
const EGRESS_MARK: u32 = 50_000;
/// The pod served by `EGRESS_IP`.
const SERVED_POD: Ipv4Addr = Ipv4Addr::new(10, 128, 0, 10);
/// A pod steered to `PEER` in plan A only.
const STEERED_POD: Ipv4Addr = Ipv4Addr::new(10, 128, 0, 11);
const STEERED_MARK: u32 = 50_001;
const PEER: Ipv4Addr = Ipv4Addr::new(192, 168, 126, 3);
const NEW_OWNER: Ipv4Addr = Ipv4Addr::new(192, 168, 126, 4);

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped: creating network namespaces needs root");
            return;
        }
    };
}

fn testbed() -> Testbed {
    TestbedBuilder::new()
        .node(NodeSpec::new(NODE, NODE_IP, POD_CIDR))
        .build()
        .unwrap_or_else(|e| panic!("building the testbed: {e}"))
}

fn node_ns(tb: &Testbed) -> String {
    tb.node(NODE).unwrap().netns().name().to_string()
}

fn steering(pod: Ipv4Addr, mark: u32, to: Ipv4Addr) -> (SteeringEntry, SteeringRoute) {
    (
        SteeringEntry {
            pod_ip: pod.into(),
            mark,
        },
        SteeringRoute {
            mark,
            family: Family::V4,
            egress_ip: format!("eip-{mark}"),
            next_hops: vec![EgressHop {
                node: format!("node-{to}"),
                address: to.into(),
                egress_ip: EGRESS_IP.into(),
            }],
        },
    )
}

fn exclusions() -> Arc<Exclusions> {
    Arc::new(Exclusions {
        pod_cidrs: vec!["10.128.0.0/14".parse().unwrap()],
        service_cidrs: vec!["172.30.0.0/16".parse().unwrap()],
        node_ips: vec![NODE_IP.into(), PEER.into(), NEW_OWNER.into()],
    })
}

/// This node hosts `EGRESS_IP` for `SERVED_POD` and steers `STEERED_POD` to `PEER`.
fn plan_a() -> NodePlan {
    let (entry, route) = steering(STEERED_POD, STEERED_MARK, PEER);
    NodePlan {
        egress_ips: vec![HostedIp {
            ip: EGRESS_IP.into(),
            egress_ip: format!("eip-{EGRESS_MARK}"),
            mark: Some(EGRESS_MARK),
            kind: SubnetKind::Primary,
            subnet: PRIMARY.into(),
        }],
        snat: vec![SnatEntry {
            pod_ip: SERVED_POD.into(),
            egress_ip: EGRESS_IP.into(),
        }],
        steering: vec![entry],
        steering_routes: vec![route],
        exclusions: exclusions(),
    }
}

/// `EGRESS_IP` was taken over by `NEW_OWNER`: `SERVED_POD` is steered there; `STEERED_POD` is
/// gone.
fn plan_b() -> NodePlan {
    let (entry, route) = steering(SERVED_POD, EGRESS_MARK, NEW_OWNER);
    NodePlan {
        egress_ips: Vec::new(),
        snat: Vec::new(),
        steering: vec![entry],
        steering_routes: vec![route],
        exclusions: exclusions(),
    }
}

fn applier() -> Applier {
    Applier::new(
        Netlink::connect().unwrap(),
        Nft::new(TUNNEL_DEVICE),
        Some(NODE_IP.into()),
    )
}

/// Runs a command in the namespace of the calling thread; it must succeed.
fn run(argv: &[&str]) -> String {
    let output = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .expect("running a command");
    assert!(
        output.status.success(),
        "{argv:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

fn mac(ip: Ipv4Addr) -> String {
    Mac(tunnel_mac(&ip.into())).to_string()
}

/// One notification, reduced to what the ordering checks need.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    AddressAdded(IpAddr),
    AddressRemoved(IpAddr),
    RouteAdded(u32),
    RouteRemoved(u32),
    RuleAdded(u32),
    RuleRemoved(u32),
    /// A neighbour or FDB entry of the link with this index changed.
    Neighbour(u32),
}

fn event_of(message: RouteNetlinkMessage) -> Option<Event> {
    let address = |m: &netlink_packet_route::address::AddressMessage| {
        m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(ip) => Some(*ip),
            _ => None,
        })
    };
    let route_table = |m: &netlink_packet_route::route::RouteMessage| {
        m.attributes
            .iter()
            .find_map(|a| match a {
                RouteAttribute::Table(table) => Some(*table),
                _ => None,
            })
            .unwrap_or(u32::from(m.header.table))
    };
    let rule_table = |m: &netlink_packet_route::rule::RuleMessage| {
        m.attributes
            .iter()
            .find_map(|a| match a {
                RuleAttribute::Table(table) => Some(*table),
                _ => None,
            })
            .unwrap_or(u32::from(m.header.table))
    };
    match message {
        RouteNetlinkMessage::NewAddress(m) => address(&m).map(Event::AddressAdded),
        RouteNetlinkMessage::DelAddress(m) => address(&m).map(Event::AddressRemoved),
        RouteNetlinkMessage::NewRoute(m) => Some(Event::RouteAdded(route_table(&m))),
        RouteNetlinkMessage::DelRoute(m) => Some(Event::RouteRemoved(route_table(&m))),
        RouteNetlinkMessage::NewRule(m) => Some(Event::RuleAdded(rule_table(&m))),
        RouteNetlinkMessage::DelRule(m) => Some(Event::RuleRemoved(rule_table(&m))),
        RouteNetlinkMessage::NewNeighbour(m) | RouteNetlinkMessage::DelNeighbour(m) => {
            Some(Event::Neighbour(m.header.ifindex))
        }
        _ => None,
    }
}

/// Applies `plan` and returns the IPv4 address, route, rule and neighbour notifications it
/// caused, in the kernel's order.
async fn apply_and_watch(applier: &mut Applier, plan: &NodePlan) -> Vec<Event> {
    let (connection, _handle, mut messages) = rtnetlink::new_multicast_connection(&[
        MulticastGroup::Ipv4Ifaddr,
        MulticastGroup::Ipv4Route,
        MulticastGroup::Ipv4Rule,
        MulticastGroup::Neigh,
    ])
    .unwrap();
    let connection = tokio::spawn(connection);
    let report = applier.apply(plan).await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    // Every notification was queued on the socket while the requests ran.
    let mut events = Vec::new();
    while let Ok(Some((message, _))) =
        tokio::time::timeout(Duration::from_millis(300), messages.next()).await
    {
        if let NetlinkPayload::InnerMessage(inner) = message.payload
            && let Some(event) = event_of(inner)
        {
            events.push(event);
        }
    }
    connection.abort();
    events
}

fn position(events: &[Event], event: &Event) -> usize {
    events
        .iter()
        .position(|e| e == event)
        .unwrap_or_else(|| panic!("no {event:?} in {events:#?}"))
}

/// The node that loses an egress IP drops it before it changes anything else, and a table it no
/// longer wants is emptied before the rule that selects it goes.
#[test]
fn takeover_drops_the_address_first_and_empties_tables_before_their_rules() {
    require_root!();
    let tb = testbed();
    netns::run_in(&node_ns(&tb), || async {
        let mut applier = applier();
        applier.apply(&plan_a()).await.unwrap();
        assert_eq!(
            applier.verify(&plan_a()).await.unwrap(),
            Vec::<String>::new()
        );
        let tunnel = Netlink::connect()
            .unwrap()
            .link(TUNNEL_DEVICE)
            .await
            .unwrap()
            .expect("the tunnel device")
            .index;

        let mut events = apply_and_watch(&mut applier, &plan_b()).await;
        // The kernel's own neighbour changes on other links are no concern here.
        events.retain(|e| !matches!(e, Event::Neighbour(index) if *index != tunnel));
        assert_eq!(
            events.first(),
            Some(&Event::AddressRemoved(EGRESS_IP.into())),
            "{events:#?}"
        );
        for later in [
            Event::Neighbour(tunnel),
            Event::RouteAdded(EGRESS_MARK),
            Event::RuleAdded(EGRESS_MARK),
        ] {
            assert!(
                position(&events, &Event::AddressRemoved(EGRESS_IP.into()))
                    < position(&events, &later),
                "{later:?} before the address went: {events:#?}"
            );
        }
        assert!(
            position(&events, &Event::RouteRemoved(STEERED_MARK))
                < position(&events, &Event::RuleRemoved(STEERED_MARK)),
            "the rule went before its table was empty: {events:#?}"
        );
        assert!(
            !events.contains(&Event::AddressAdded(EGRESS_IP.into())),
            "{events:#?}"
        );
        assert_eq!(
            applier.verify(&plan_b()).await.unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(run(&["ip", "-4", "route", "show", "table", "50001"]), "");

        applier.remove_all().await.unwrap();
        assert_eq!(run(&["ip", "-4", "rule", "show", "priority", "6000"]), "");
        assert_eq!(run(&["ip", "-4", "route", "show", "table", "50000"]), "");
    })
    .unwrap();
}

/// `verify` compares the tunnel's neighbour and FDB entries with the tunnel peers: a missing or
/// stale entry is a difference, and the next apply repairs it.
#[test]
fn verify_reports_missing_and_stale_tunnel_peer_entries() {
    require_root!();
    let tb = testbed();
    netns::run_in(&node_ns(&tb), || async {
        let mut applier = applier();
        let plan = plan_a();
        let repaired = |diffs: Vec<String>| {
            assert_eq!(diffs, Vec::<String>::new());
        };
        applier.apply(&plan).await.unwrap();
        repaired(applier.verify(&plan).await.unwrap());
        let (peer, peer_mac) = (PEER.to_string(), mac(PEER));

        run(&["ip", "neigh", "del", &peer, "dev", TUNNEL_DEVICE]);
        assert_eq!(
            applier.verify(&plan).await.unwrap(),
            [format!(
                "no neighbour entry {peer} lladdr {peer_mac} on {TUNNEL_DEVICE}"
            )]
        );
        assert!(applier.apply(&plan).await.unwrap().changes >= 1);
        repaired(applier.verify(&plan).await.unwrap());

        run(&[
            "bridge",
            "fdb",
            "del",
            &peer_mac,
            "dev",
            TUNNEL_DEVICE,
            "dst",
            &peer,
        ]);
        assert_eq!(
            applier.verify(&plan).await.unwrap(),
            [format!(
                "no FDB entry {peer_mac} dst {peer} on {TUNNEL_DEVICE}"
            )]
        );
        assert!(applier.apply(&plan).await.unwrap().changes >= 1);
        repaired(applier.verify(&plan).await.unwrap());

        // Entries we wrote for a node that is no peer (any more) are stale; foreign ones are not
        // ours to judge.
        let gone = NEW_OWNER.to_string();
        let gone_mac = mac(NEW_OWNER);
        run(&[
            "ip",
            "neigh",
            "add",
            &gone,
            "lladdr",
            &gone_mac,
            "dev",
            TUNNEL_DEVICE,
            "nud",
            "permanent",
            "protocol",
            "238",
        ]);
        run(&[
            "ip",
            "neigh",
            "add",
            "192.168.126.99",
            "lladdr",
            "02:00:00:00:00:99",
            "dev",
            TUNNEL_DEVICE,
            "nud",
            "permanent",
        ]);
        run(&[
            "bridge",
            "fdb",
            "append",
            &gone_mac,
            "dev",
            TUNNEL_DEVICE,
            "dst",
            &gone,
            "self",
            "permanent",
        ]);
        assert_eq!(
            applier.verify(&plan).await.unwrap(),
            [
                format!("stale neighbour entry {gone} on {TUNNEL_DEVICE}"),
                format!("stale FDB entry {gone_mac} dst {gone} on {TUNNEL_DEVICE}"),
            ]
        );
        applier.apply(&plan).await.unwrap();
        repaired(applier.verify(&plan).await.unwrap());
        assert!(run(&["ip", "neigh", "show", "dev", TUNNEL_DEVICE]).contains("192.168.126.99"));

        // Without the tunnel device, no peer entry can be there.
        run(&["ip", "link", "del", TUNNEL_DEVICE]);
        let diffs = applier.verify(&plan).await.unwrap();
        assert!(
            diffs.contains(&format!("tunnel device {TUNNEL_DEVICE} is missing")),
            "{diffs:?}"
        );
        applier.apply(&plan).await.unwrap();
        repaired(applier.verify(&plan).await.unwrap());
    })
    .unwrap();
}
