//! The health server and the gRPC probe over real loopback sockets.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use kube_egress_probe::grpc::{CheckResult, GrpcProbe, Step};
use kube_egress_probe::{
    ClientTls, Error, HealthServer, HealthServerConfig, SERVICE_EGRESS_IP, ServerTls,
};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const DEADLINE: Duration = Duration::from_secs(2);

async fn start(port: u16) -> HealthServer {
    HealthServer::start(HealthServerConfig {
        listen: SocketAddr::new(LOCALHOST, port),
        tls: None,
    })
    .await
    .unwrap()
}

/// A port on which nothing listens (bound once, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind((LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn serving_for_service_egress_ip_and_not_for_other_names() {
    let server = start(0).await;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", server.local_addr()))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut client = HealthClient::new(channel);
    let check = |service: &str| HealthCheckRequest {
        service: service.to_string(),
    };

    let ok = client.check(check(SERVICE_EGRESS_IP)).await.unwrap();
    assert_eq!(ok.into_inner().status, ServingStatus::Serving as i32);
    // Other names: tonic-health answers NotFound (a service it does not know).
    let other = client.check(check("Service_Other")).await.unwrap_err();
    assert_eq!(other.code(), tonic::Code::NotFound);
    let case = client.check(check("service_egress_ip")).await.unwrap_err();
    assert_eq!(case.code(), tonic::Code::NotFound);

    // The probe sees SERVING; a NOT_SERVING answer is unreachable and keeps the session.
    let mut probe = GrpcProbe::new(&[LOCALHOST], server.local_addr().port(), None);
    let out = probe.probe(DEADLINE).await;
    assert_eq!(out.step, Step::Fresh(CheckResult::Serving));
    assert!(out.reachable());

    server.set_serving(false).await;
    let not = client.check(check(SERVICE_EGRESS_IP)).await.unwrap();
    assert_eq!(not.into_inner().status, ServingStatus::NotServing as i32);
    let out = probe.probe(DEADLINE).await;
    assert_eq!(
        out.step,
        Step::Existing(CheckResult::NotServing(ServingStatus::NotServing as i32))
    );
    assert!(!out.reachable());
    assert!(probe.is_connected());

    server.set_serving(true).await;
    assert!(probe.probe(DEADLINE).await.reachable());
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn one_session_per_node_is_reused() {
    let server = start(0).await;
    let mut probe = GrpcProbe::new(&[LOCALHOST], server.local_addr().port(), None);
    for _ in 0..5 {
        assert!(probe.probe(DEADLINE).await.reachable());
    }
    assert!(probe.is_connected());
    assert_eq!(server.accepted_connections(), 1);
    probe.disconnect();
    assert!(probe.probe(DEADLINE).await.reachable());
    assert_eq!(server.accepted_connections(), 2);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn one_bounce_is_tolerated_then_unreachable_then_back() {
    let server = start(0).await;
    let port = server.local_addr().port();
    let mut probe = GrpcProbe::new(&[LOCALHOST], port, None);
    assert!(probe.probe(DEADLINE).await.reachable());

    server.shutdown().await.unwrap();
    // First failure on the established session: tolerated.
    let first = probe.probe(DEADLINE).await;
    assert!(
        matches!(first.step, Step::Existing(CheckResult::RpcError(_))),
        "{first:?}"
    );
    assert!(first.decision.tolerated);
    assert!(first.reachable());
    assert!(!probe.is_connected());
    // Second: the re-dial is refused.
    let second = probe.probe(DEADLINE).await;
    assert!(matches!(second.step, Step::ConnectFailed(_)), "{second:?}");
    assert!(!second.reachable());
    assert!(!probe.probe(DEADLINE).await.reachable());

    // The agent comes back on the same port.
    let server = start(port).await;
    let back = probe.probe(DEADLINE).await;
    assert_eq!(back.step, Step::Fresh(CheckResult::Serving));
    assert!(back.reachable());
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn nothing_listening_is_unreachable_from_the_first_probe() {
    let mut probe = GrpcProbe::new(&[LOCALHOST], free_port(), None);
    let out = probe.probe(DEADLINE).await;
    assert!(matches!(out.step, Step::ConnectFailed(_)), "{out:?}");
    assert!(!out.reachable());
    // No address at all: unreachable too.
    let mut none = GrpcProbe::new(&[], 1, None);
    assert!(!none.probe(DEADLINE).await.reachable());
}

#[tokio::test]
async fn second_address_is_tried_when_the_first_refuses() {
    let server = start(0).await;
    let port = server.local_addr().port();
    // 127.0.0.2 is loopback too, but the server is bound to 127.0.0.1 only.
    let mut probe = GrpcProbe::new(
        &[IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), LOCALHOST],
        port,
        None,
    );
    assert!(probe.probe(DEADLINE).await.reachable());
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_closes_the_listener_and_handles_stop_the_server() {
    let server = start(0).await;
    let addr = server.local_addr();
    let handle = server.shutdown_handle();
    handle.shutdown();
    server.join().await.unwrap();
    let refused = tokio::net::TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[tokio::test]
async fn bind_conflict_and_missing_tls_files_are_errors() {
    let server = start(0).await;
    let taken = HealthServer::start(HealthServerConfig {
        listen: server.local_addr(),
        tls: None,
    })
    .await;
    assert!(
        matches!(taken, Err(Error::Bind { .. })),
        "{:?}",
        taken.err()
    );

    let dir = tempfile::tempdir().unwrap();
    let missing = HealthServer::start(HealthServerConfig {
        listen: SocketAddr::new(LOCALHOST, 0),
        tls: Some(ServerTls {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
        }),
    })
    .await;
    assert!(
        matches!(missing, Err(Error::Read { .. })),
        "{:?}",
        missing.err()
    );

    // Garbage PEM is refused when the server starts, not on the first connection.
    std::fs::write(dir.path().join("cert.pem"), "not a certificate").unwrap();
    std::fs::write(dir.path().join("key.pem"), "not a key").unwrap();
    let garbage = HealthServer::start(HealthServerConfig {
        listen: SocketAddr::new(LOCALHOST, 0),
        tls: Some(ServerTls {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
        }),
    })
    .await;
    assert!(matches!(garbage, Err(Error::Tls(_))), "{:?}", garbage.err());
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn tls_round_trip_with_a_self_signed_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let generated = rcgen::generate_simple_self_signed(vec![
        "egress-node.test".to_string(),
        "127.0.0.1".to_string(),
    ])
    .unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();

    let server = HealthServer::start(HealthServerConfig {
        listen: SocketAddr::new(LOCALHOST, 0),
        tls: Some(ServerTls {
            cert: cert.clone(),
            key,
        }),
    })
    .await
    .unwrap();
    let port = server.local_addr().port();
    let tls = |name: Option<&str>| {
        ClientTls {
            ca_cert: cert.clone(),
            server_name: name.map(str::to_string),
        }
        .load()
        .unwrap()
    };

    // Verified by name (OVN-K's CertCommonName) and by the IP address in the certificate.
    let mut by_name = GrpcProbe::new(&[LOCALHOST], port, Some(tls(Some("egress-node.test"))));
    let out = by_name.probe(DEADLINE).await;
    assert_eq!(out.step, Step::Fresh(CheckResult::Serving), "{out:?}");
    assert!(by_name.probe(DEADLINE).await.reachable());
    let mut by_ip = GrpcProbe::new(&[LOCALHOST], port, Some(tls(None)));
    assert!(by_ip.probe(DEADLINE).await.reachable());

    // A name the certificate does not carry, or no TLS at all: no session.
    let mut wrong = GrpcProbe::new(&[LOCALHOST], port, Some(tls(Some("other.test"))));
    let out = wrong.probe(DEADLINE).await;
    assert!(!out.reachable(), "{out:?}");
    let mut plain = GrpcProbe::new(&[LOCALHOST], port, None);
    let out = plain.probe(DEADLINE).await;
    assert!(!out.reachable(), "{out:?}");

    server.shutdown().await.unwrap();
}
