//! The gRPC probe (`egressip-node-healthcheck-port` ≠ 0), OVN-K's `egressIPHealthClient`.
//!
//! One session (a tonic [`Channel`]) per node, kept across probes:
//! - **session up**: `Check("Service_Egress_IP")`; `SERVING` = reachable. On an RPC error the
//!   session is dropped and, as in OVN-K, **the first consecutive failure is tolerated** (reported
//!   reachable: the session may just have gone down and needs re-establishing); the next failure
//!   (normally the re-dial of the following probe) reports unreachable.
//! - **no session**: connect to each address in turn, then `Check`, all within the deadline.
//!   Unlike the old OVN-K client (where a successful dial alone counted), a fresh session must
//!   also answer `SERVING`, as newer OVN-K (`connectAndProbe`) requires; a failure here is never
//!   tolerated, since the session was just established.
//!
//! The decisions are the pure [`Tolerance`] state machine; [`GrpcProbe`] is the I/O around it.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::time::Instant;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus as PbStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::config::SERVICE_EGRESS_IP;

/// What a `Check` call returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckResult {
    /// The response said `SERVING`.
    Serving,
    /// A response with another status (`NOT_SERVING`, `UNKNOWN`, ...).
    NotServing(i32),
    /// The call failed: transport error, deadline, or a gRPC status such as `NotFound`.
    RpcError(String),
}

/// One step of a probe, as seen by the tolerance rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// `Check` on the session kept from an earlier probe.
    Existing(CheckResult),
    /// A new session was established and then checked.
    Fresh(CheckResult),
    /// No address accepted a session within the deadline.
    ConnectFailed(String),
}

/// The decision for one step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub reachable: bool,
    /// Keep the session for the next probe.
    pub keep_session: bool,
    /// The step failed but was reported reachable (OVN-K's one-bounce tolerance).
    pub tolerated: bool,
}

/// OVN-K's `probeFailed` flag: whether the last `Check` ended in an RPC error.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tolerance {
    failed: bool,
}

impl Tolerance {
    pub fn decide(&mut self, step: &Step) -> Decision {
        match step {
            Step::Existing(CheckResult::RpcError(_)) => {
                let tolerated = !self.failed;
                self.failed = true;
                Decision {
                    reachable: tolerated,
                    keep_session: false,
                    tolerated,
                }
            }
            Step::Fresh(CheckResult::RpcError(_)) => {
                self.failed = true;
                Decision {
                    reachable: false,
                    keep_session: false,
                    tolerated: false,
                }
            }
            Step::Existing(r) | Step::Fresh(r) => {
                self.failed = false;
                Decision {
                    reachable: *r == CheckResult::Serving,
                    keep_session: true,
                    tolerated: false,
                }
            }
            // OVN-K leaves probeFailed as it is when the dial fails.
            Step::ConnectFailed(_) => Decision {
                reachable: false,
                keep_session: false,
                tolerated: false,
            },
        }
    }
}

/// The result of one gRPC probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcOutcome {
    pub step: Step,
    pub decision: Decision,
}

impl GrpcOutcome {
    pub fn reachable(&self) -> bool {
        self.decision.reachable
    }
}

/// The gRPC probe of one node, holding its session between probes.
pub struct GrpcProbe {
    port: u16,
    addrs: Vec<SocketAddr>,
    tls: Option<ClientTlsConfig>,
    session: Option<HealthClient<Channel>>,
    tolerance: Tolerance,
}

impl GrpcProbe {
    /// A probe of `<ip>:port` for each of `ips` (tried in order when connecting). With `tls`, the
    /// session uses `https` and verifies the agent's certificate.
    pub fn new(ips: &[IpAddr], port: u16, tls: Option<ClientTlsConfig>) -> Self {
        Self {
            port,
            addrs: ips.iter().map(|&ip| SocketAddr::new(ip, port)).collect(),
            tls,
            session: None,
            tolerance: Tolerance::default(),
        }
    }

    /// Replaces the addresses; an existing session is closed.
    pub fn set_addresses(&mut self, ips: &[IpAddr]) {
        let addrs: Vec<SocketAddr> = ips
            .iter()
            .map(|&ip| SocketAddr::new(ip, self.port))
            .collect();
        if addrs != self.addrs {
            self.addrs = addrs;
            self.disconnect();
        }
    }

    /// Whether a session is kept from an earlier probe.
    pub fn is_connected(&self) -> bool {
        self.session.is_some()
    }

    /// Closes the session (OVN-K does this for nodes that are no longer assignable or ready).
    pub fn disconnect(&mut self) {
        self.session = None;
    }

    /// Probes once; everything (connects and `Check`) happens within `deadline`.
    pub async fn probe(&mut self, deadline: Duration) -> GrpcOutcome {
        let end = Instant::now() + deadline;
        let step = match self.session.as_mut() {
            Some(client) => Step::Existing(check(client, end).await),
            None => match self.connect(end).await {
                Ok(mut client) => {
                    let result = check(&mut client, end).await;
                    self.session = Some(client);
                    Step::Fresh(result)
                }
                Err(e) => Step::ConnectFailed(e),
            },
        };
        let decision = self.tolerance.decide(&step);
        if !decision.keep_session {
            self.session = None;
        }
        GrpcOutcome { step, decision }
    }

    async fn connect(&self, end: Instant) -> Result<HealthClient<Channel>, String> {
        let mut last = String::from("no address to probe");
        for addr in &self.addrs {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                last = format!("deadline passed before dialling {addr}");
                break;
            }
            match connect_one(*addr, self.tls.as_ref(), left).await {
                Ok(channel) => return Ok(HealthClient::new(channel)),
                Err(e) => last = format!("{addr}: {e}"),
            }
        }
        Err(last)
    }
}

async fn connect_one(
    addr: SocketAddr,
    tls: Option<&ClientTlsConfig>,
    timeout: Duration,
) -> Result<Channel, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(timeout)
        .tcp_nodelay(true);
    if let Some(tls) = tls {
        endpoint = endpoint
            .tls_config(tls.clone())
            .map_err(|e| e.to_string())?;
    }
    match tokio::time::timeout(timeout, endpoint.connect()).await {
        Err(_) => Err("connect timed out".into()),
        Ok(Err(e)) => Err(error_chain(&e)),
        Ok(Ok(channel)) => Ok(channel),
    }
}

async fn check(client: &mut HealthClient<Channel>, end: Instant) -> CheckResult {
    let left = end.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return CheckResult::RpcError("deadline passed before Check".into());
    }
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: SERVICE_EGRESS_IP.to_string(),
    });
    request.set_timeout(left);
    match tokio::time::timeout(left, client.check(request)).await {
        Err(_) => CheckResult::RpcError("Check timed out".into()),
        Ok(Err(status)) => {
            CheckResult::RpcError(format!("{:?}: {}", status.code(), status.message()))
        }
        Ok(Ok(response)) => {
            let status = response.into_inner().status;
            if status == PbStatus::Serving as i32 {
                CheckResult::Serving
            } else {
                CheckResult::NotServing(status)
            }
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err() -> CheckResult {
        CheckResult::RpcError("x".into())
    }

    fn run(t: &mut Tolerance, steps: &[Step]) -> Vec<bool> {
        steps.iter().map(|s| t.decide(s).reachable).collect()
    }

    #[test]
    fn first_consecutive_rpc_error_is_tolerated() {
        let mut t = Tolerance::default();
        let d = t.decide(&Step::Fresh(CheckResult::Serving));
        assert_eq!(
            d,
            Decision {
                reachable: true,
                keep_session: true,
                tolerated: false
            }
        );
        let d = t.decide(&Step::Existing(err()));
        assert_eq!(
            d,
            Decision {
                reachable: true,
                keep_session: false,
                tolerated: true
            }
        );
        // The re-dial fails: now unreachable.
        assert!(!t.decide(&Step::ConnectFailed("refused".into())).reachable);
        assert!(!t.decide(&Step::ConnectFailed("refused".into())).reachable);
        // Back: reachable, and the tolerance is armed again.
        assert!(t.decide(&Step::Fresh(CheckResult::Serving)).reachable);
        assert!(t.decide(&Step::Existing(err())).reachable);
    }

    #[test]
    fn reconnected_session_failing_again_is_not_tolerated() {
        // The failure flag stays set until a Check gets a response: a re-dialled session whose
        // Check fails right after a tolerated failure is unreachable.
        let mut t = Tolerance::default();
        let steps = [
            Step::Fresh(CheckResult::Serving),
            Step::Existing(err()), // tolerated
            Step::Fresh(err()),    // fresh session, Check fails: unreachable
            Step::Fresh(CheckResult::Serving),
            Step::Existing(err()), // tolerated again after a good Check
            Step::Existing(err()), // (if a session were kept) second failure
        ];
        assert_eq!(run(&mut t, &steps), [true, true, false, true, true, false]);
    }

    #[test]
    fn not_serving_is_unreachable_but_keeps_the_session() {
        let mut t = Tolerance::default();
        let d = t.decide(&Step::Existing(CheckResult::NotServing(2)));
        assert!(!d.reachable && d.keep_session && !d.tolerated);
        // A response (even NOT_SERVING) proves the session works: the tolerance is re-armed.
        assert!(t.decide(&Step::Existing(err())).reachable);
    }

    #[test]
    fn connect_failure_is_never_tolerated() {
        let mut t = Tolerance::default();
        assert!(!t.decide(&Step::ConnectFailed("timeout".into())).reachable);
        assert!(t.decide(&Step::Fresh(CheckResult::Serving)).reachable);
    }
}
