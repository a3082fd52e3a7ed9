//! The legacy TCP port 9 probe with real sockets: loopback for "alive", a private network
//! namespace for "timeout" and "EHOSTUNREACH".

mod common;

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::{ALIVE, NO_ROUTE, SILENT, in_netns};
use kube_egress_probe::legacy::{self, DialResult, LegacyOutcome};
use kube_egress_probe::{LEGACY_PROBE_PORT, NodeProbe, Outcome, ReachabilityConfig};
use tokio::time::Instant;

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const DEADLINE: Duration = Duration::from_millis(300);

#[tokio::test]
async fn refused_connection_means_alive() {
    let port = std::net::TcpListener::bind((LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = legacy::probe(&[LOCALHOST], port, DEADLINE).await;
    assert_eq!(
        out,
        LegacyOutcome::Alive {
            addr: SocketAddr::new(LOCALHOST, port),
            dial: DialResult::Failed(ErrorKind::ConnectionRefused)
        }
    );
}

#[tokio::test]
async fn accepted_connection_means_alive() {
    let listener = tokio::net::TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let out = legacy::probe(&[LOCALHOST], port, DEADLINE).await;
    assert!(
        matches!(
            out,
            LegacyOutcome::Alive {
                dial: DialResult::Connected,
                ..
            }
        ),
        "{out:?}"
    );
}

#[tokio::test]
async fn total_timeout_zero_disables_probing() {
    let config = ReachabilityConfig {
        total_timeout: Duration::ZERO,
        ..Default::default()
    };
    // Even a node without any address (unreachable when probing) is reachable.
    let mut probe = NodeProbe::new(config.mode(), &[], None);
    let out = probe.probe(config.probe_deadline()).await;
    assert_eq!(out, Outcome::Disabled);
    assert!(out.reachable());
    let enabled = ReachabilityConfig::default();
    let mut probe = NodeProbe::new(enabled.mode(), &[], None);
    assert!(!probe.probe(enabled.probe_deadline()).await.reachable());
}

#[test]
fn port_9_refused_is_alive_and_silence_is_dead_in_a_namespace() {
    in_netns(|| async {
        // The real port 9: nothing listens, the kernel answers RST.
        let alive = legacy::probe(&[ALIVE], LEGACY_PROBE_PORT, DEADLINE).await;
        assert!(
            matches!(
                alive,
                LegacyOutcome::Alive {
                    dial: DialResult::Failed(ErrorKind::ConnectionRefused),
                    ..
                }
            ),
            "{alive:?}"
        );

        // Dropped SYNs: every dial times out, the probe uses its whole deadline and no more.
        let started = Instant::now();
        let silent = legacy::probe(&[SILENT], LEGACY_PROBE_PORT, DEADLINE).await;
        let took = started.elapsed();
        assert!(
            matches!(
                silent,
                LegacyOutcome::Dead {
                    last: DialResult::TimedOut,
                    dials: 2
                }
            ),
            "{silent:?}"
        );
        assert!(took >= DEADLINE, "gave up after {took:?}");

        // EHOSTUNREACH is dead too (after retrying until the deadline).
        let no_route = legacy::probe(&[NO_ROUTE], LEGACY_PROBE_PORT, DEADLINE).await;
        assert!(
            matches!(
                no_route,
                LegacyOutcome::Dead {
                    last: DialResult::Failed(ErrorKind::HostUnreachable),
                    ..
                }
            ),
            "{no_route:?}"
        );

        // Any address alive is enough.
        let mixed = legacy::probe(&[SILENT, ALIVE], LEGACY_PROBE_PORT, DEADLINE).await;
        assert!(
            matches!(mixed, LegacyOutcome::Alive { addr, .. } if addr.ip() == ALIVE),
            "{mixed:?}"
        );

        // Total timeout 0: the silent node is reachable without a probe.
        let disabled = ReachabilityConfig {
            total_timeout: Duration::ZERO,
            ..Default::default()
        };
        let mut probe = NodeProbe::new(disabled.mode(), &[SILENT], None);
        assert!(probe.probe(disabled.probe_deadline()).await.reachable());
    });
}
