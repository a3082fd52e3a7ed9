//! Node reachability for egress IPs, compatible with OVN-Kubernetes.
//!
//! - **Agent**: [`HealthServer`] serves `grpc.health.v1.Health` (tonic-health), `SERVING` for
//!   [`SERVICE_EGRESS_IP`], optionally over TLS from PEM files, with a graceful shutdown handle.
//! - **Controller**: [`Prober`] probes a set of nodes concurrently on an interval and emits
//!   [`Transition`]s (node → reachable/unreachable, one per change) on [`Transitions`]. A node is
//!   probed with the legacy TCP port 9 probe ([`legacy`]; a refused connection means alive) when
//!   `egressip-node-healthcheck-port` is 0, or with gRPC `Check("Service_Egress_IP")` over a kept
//!   session ([`grpc`]; one failed `Check` tolerated, as in OVN-K) otherwise; total timeout 0
//!   disables probing (every node reachable).
//! - **Configuration**: [`ReachabilityConfig`] (clap `Args`) with OVN-K's knob names and our own.
//!
//! The decisions are pure and unit-tested ([`legacy::dial_plan`], [`legacy::DialResult::alive`],
//! [`grpc::Tolerance`], [`ReachabilityConfig::settings`]); the I/O around them is thin.
//!
//! # Defaults and detection latency
//!
//! The failover target is p99 ≤ 1 s from losing an egress node to traffic flowing through the new
//! one, with default settings. Detection is most of it. With interval `I` and probe deadline `D`,
//! a node that goes silent (its packets dropped) is reported unreachable after at most:
//! - legacy (the default mode, as in OVN-K): `I + D` — the next probe starts within `I` and
//!   needs its whole deadline to conclude "dead" (a fast `EHOSTUNREACH` does not shorten it: the
//!   probe retries until the deadline, as OVN-K does);
//! - gRPC: `I + D + max(D, I)` — the first failed `Check` on the established session is
//!   tolerated, and the re-dial of the next probe fails after another `D`. A node whose agent died
//!   but whose kernel answers (RST) is detected in about `2·I`.
//!
//! OVN-K's deadline is its total timeout (`egressip-reachability-total-timeout`, default 1 s) and
//! its interval 5 s: 1–6 s (legacy), 2–12 s (gRPC). Keeping the 1 s deadline with a 200 ms
//! interval still gives 1.0–1.2 s (legacy) and 2.0–2.2 s (gRPC) before anything moves, over the
//! budget. So we keep OVN-K's knobs and defaults (total timeout 1 s, 0 disables; port 0 = TCP 9)
//! and add two of ours:
//! - `egressip-reachability-interval` = **200 ms**;
//! - `egressip-reachability-probe-timeout` = **400 ms**, the deadline of one probe, capped by the
//!   total timeout.
//!
//! That gives at most 600 ms (legacy; 400–600 ms, mean ≈ 500 ms) and 1.0 s (gRPC) of detection,
//! leaving ≥ 400 ms in legacy mode for reassignment, the takeover announcement and the first
//! request. **Trade-off**: a deadline below the total timeout is not OVN-K's behaviour — a node
//! that needs more than 400 ms to answer a TCP SYN (or, in gRPC mode, a `Check`) is declared
//! unreachable where OVN-K would wait up to 1 s. On a LAN the SYN→RST round trip is answered by
//! the kernel in well under a millisecond even on a loaded node, so 400 ms is a wide margin;
//! clusters with slow links can set the probe timeout higher, or to `total` for OVN-K's exact
//! semantics (e.g. `--egressip-reachability-probe-timeout=total` with the total timeout of their
//! choice). [`ReachabilityConfig::ovnk`] is OVN-K's behaviour as a whole (5 s interval, deadline
//! = total timeout). [`ProbeSettings::worst_case_detection`] computes the bound for any settings.
//!
//! A probe costs one TCP handshake (legacy) or one unary RPC on a kept HTTP/2 connection (gRPC)
//! per node per interval: 5 per second per node at the defaults.

pub mod config;
mod error;
pub mod grpc;
pub mod legacy;
mod prober;
mod server;
mod tls;

pub use config::{
    HealthTlsArgs, LEGACY_PROBE_PORT, ProbeMode, ProbeSettings, ProbeTimeout, ReachabilityConfig,
    SERVICE_EGRESS_IP,
};
pub use error::Error;
pub use prober::{NodeProbe, NodeTarget, Outcome, Prober, Transition, Transitions};
pub use server::{HealthServer, HealthServerConfig, SHUTDOWN_GRACE, ShutdownHandle};
pub use tls::{ClientTls, ServerTls};
