//! The prober: exactly one transition per change, over real sockets.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::{ALIVE, SILENT, in_netns, next, quiet, set_dark};
use kube_egress_probe::{
    HealthServer, HealthServerConfig, NodeTarget, ProbeMode, ProbeSettings, Prober, Transition,
};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const WAIT: Duration = Duration::from_secs(3);
/// Long enough for several probes at the test interval.
const QUIET: Duration = Duration::from_millis(300);

fn settings(mode: ProbeMode) -> ProbeSettings {
    ProbeSettings {
        mode,
        interval: Duration::from_millis(40),
        deadline: Duration::from_millis(250),
    }
}

fn t(node: &str, reachable: bool, initial: bool) -> Transition {
    Transition {
        node: node.to_string(),
        reachable,
        initial,
    }
}

async fn start(port: u16) -> HealthServer {
    HealthServer::start(HealthServerConfig {
        listen: SocketAddr::new(LOCALHOST, port),
        tls: None,
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn grpc_one_transition_per_change() {
    let server = start(0).await;
    let port = server.local_addr().port();
    let (mut prober, mut transitions) =
        Prober::new(settings(ProbeMode::Grpc { port }), None).unwrap();
    prober.upsert(NodeTarget::new("node1", [LOCALHOST]));

    assert_eq!(next(&mut transitions, WAIT).await, t("node1", true, true));
    quiet(&mut transitions, QUIET).await;
    assert_eq!(prober.reachable("node1"), Some(true));
    // Several probes, one session.
    assert_eq!(server.accepted_connections(), 1);

    // The agent stops: one tolerated failure, then exactly one "unreachable".
    server.shutdown().await.unwrap();
    assert_eq!(next(&mut transitions, WAIT).await, t("node1", false, false));
    quiet(&mut transitions, QUIET).await;
    assert_eq!(prober.reachable("node1"), Some(false));

    // Back on the same port: exactly one "reachable".
    let server = start(port).await;
    assert_eq!(next(&mut transitions, WAIT).await, t("node1", true, false));
    quiet(&mut transitions, QUIET).await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn nodes_are_independent_and_removed_nodes_are_silent() {
    let server = start(0).await;
    let port = server.local_addr().port();
    let (mut prober, mut transitions) =
        Prober::new(settings(ProbeMode::Grpc { port }), None).unwrap();
    // 127.0.0.2 is loopback, but the server listens on 127.0.0.1 only: refused.
    let down = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    prober.set_nodes([
        NodeTarget::new("up", [LOCALHOST]),
        NodeTarget::new("down", [down]),
    ]);
    let mut first = vec![
        next(&mut transitions, WAIT).await,
        next(&mut transitions, WAIT).await,
    ];
    first.sort_by(|a, b| a.node.cmp(&b.node));
    assert_eq!(first, [t("down", false, true), t("up", true, true)]);
    quiet(&mut transitions, QUIET).await;

    // "down" gets the working address: it becomes reachable, keeping its history (not initial).
    prober.upsert(NodeTarget::new("down", [LOCALHOST]));
    assert_eq!(next(&mut transitions, WAIT).await, t("down", true, false));

    // Removing "up" before the server stops: nothing more is heard about it.
    prober.set_nodes([NodeTarget::new("down", [LOCALHOST])]);
    assert_eq!(prober.reachable("up"), None);
    assert_eq!(prober.nodes().collect::<Vec<_>>(), ["down"]);
    server.shutdown().await.unwrap();
    assert_eq!(next(&mut transitions, WAIT).await, t("down", false, false));
    quiet(&mut transitions, QUIET).await;

    // Added again under the same name: a new node, with an initial transition.
    prober.upsert(NodeTarget::new("up", [LOCALHOST]));
    assert_eq!(next(&mut transitions, WAIT).await, t("up", false, true));
}

#[tokio::test]
async fn disabled_reports_every_node_reachable_once() {
    let (mut prober, mut transitions) = Prober::new(settings(ProbeMode::Disabled), None).unwrap();
    prober.upsert(NodeTarget::new("a", []));
    prober.upsert(NodeTarget::new(
        "b",
        [IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))],
    ));
    let mut got = vec![
        next(&mut transitions, WAIT).await,
        next(&mut transitions, WAIT).await,
    ];
    got.sort_by(|a, b| a.node.cmp(&b.node));
    assert_eq!(got, [t("a", true, true), t("b", true, true)]);
    prober.upsert(NodeTarget::new("a", [LOCALHOST]));
    quiet(&mut transitions, QUIET).await;
}

#[test]
fn dropping_the_prober_ends_the_transitions() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (mut prober, mut transitions) =
            Prober::new(settings(ProbeMode::Disabled), None).unwrap();
        prober.upsert(NodeTarget::new("a", []));
        assert_eq!(next(&mut transitions, WAIT).await, t("a", true, true));
        drop(prober);
        let end = tokio::time::timeout(WAIT, transitions.recv()).await;
        assert_eq!(end, Ok(None));
    });
    // Outside a runtime the prober cannot start its tasks.
    assert!(Prober::new(settings(ProbeMode::Disabled), None).is_err());
}

#[test]
fn legacy_transitions_with_dropped_packets() {
    in_netns(|| async {
        let (mut prober, mut transitions) =
            Prober::new(settings(ProbeMode::Legacy { port: 9 }), None).unwrap();
        prober.set_nodes([
            NodeTarget::new("node1", [common::ALIVE]),
            NodeTarget::new("node3", [SILENT]),
        ]);
        let mut first = vec![
            next(&mut transitions, WAIT).await,
            next(&mut transitions, WAIT).await,
        ];
        first.sort_by(|a, b| a.node.cmp(&b.node));
        assert_eq!(first, [t("node1", true, true), t("node3", false, true)]);
        quiet(&mut transitions, QUIET).await;

        // node1 goes dark (its packets dropped): one transition, after a full deadline.
        set_dark(ALIVE, true);
        assert_eq!(next(&mut transitions, WAIT).await, t("node1", false, false));
        quiet(&mut transitions, QUIET).await;
        set_dark(ALIVE, false);
        assert_eq!(next(&mut transitions, WAIT).await, t("node1", true, false));
        quiet(&mut transitions, QUIET).await;
    });
}

#[test]
fn grpc_dark_node_is_detected_after_the_tolerated_timeout() {
    in_netns(|| async {
        let server = HealthServer::start(HealthServerConfig {
            listen: SocketAddr::new(ALIVE, 0),
            tls: None,
        })
        .await
        .unwrap();
        let port = server.local_addr().port();
        let (mut prober, mut transitions) =
            Prober::new(settings(ProbeMode::Grpc { port }), None).unwrap();
        prober.upsert(NodeTarget::new("node1", [ALIVE]));
        assert_eq!(next(&mut transitions, WAIT).await, t("node1", true, true));

        // Packets dropped: the Check on the session times out (tolerated), the re-dial times out.
        set_dark(ALIVE, true);
        let went_dark = tokio::time::Instant::now();
        assert_eq!(next(&mut transitions, WAIT).await, t("node1", false, false));
        let s = prober.settings();
        // At least the re-dial after the tolerated failure must have timed out.
        assert!(
            went_dark.elapsed() >= s.deadline,
            "detected before a deadline passed"
        );
        quiet(&mut transitions, QUIET).await;

        set_dark(ALIVE, false);
        assert_eq!(next(&mut transitions, WAIT).await, t("node1", true, false));
        server.shutdown().await.unwrap();
    });
}
