//! Reachability knobs: OVN-Kubernetes' names where they exist, ours where they do not.
//!
//! | flag | origin | default | meaning |
//! |---|---|---|---|
//! | `--egressip-reachability-total-timeout` | OVN-K | `1` (s) | budget of one probe; `0` disables probing (every node reachable) |
//! | `--egressip-node-healthcheck-port` | OVN-K | `0` | `0`: legacy TCP port 9 probe; otherwise gRPC `grpc.health.v1` on this port |
//! | `--egressip-reachability-interval` | ours | `200ms` | time between the starts of two probes of one node (OVN-K: fixed 5 s) |
//! | `--egressip-reachability-probe-timeout` | ours | `400ms` | deadline of one probe, capped by the total timeout; `total` = exactly OVN-K |
//!
//! The crate documentation explains why the probe timeout defaults below the total timeout.

use std::path::PathBuf;
use std::time::Duration;

/// The gRPC health service name OVN-Kubernetes' agents answer `SERVING` for.
pub const SERVICE_EGRESS_IP: &str = "Service_Egress_IP";
/// The TCP port (DISCARD) of the legacy probe, used when `egressip-node-healthcheck-port` is 0.
pub const LEGACY_PROBE_PORT: u16 = 9;
/// OVN-K's default `egressip-reachability-total-timeout`.
pub const DEFAULT_TOTAL_TIMEOUT: Duration = Duration::from_secs(1);
/// Our default `egressip-reachability-interval` (OVN-K ticks every 5 s).
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(200);
/// Our default `egressip-reachability-probe-timeout`.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_millis(400);
/// OVN-K's reachability check period (`egressIPReachabilityCheckInterval`), for reference and
/// for [`ReachabilityConfig::ovnk`].
pub const OVNK_INTERVAL: Duration = Duration::from_secs(5);

/// Deadline of a single probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeTimeout {
    /// Use the total timeout, exactly as OVN-Kubernetes does (command line: `total`).
    Total,
    /// A fixed deadline; the effective deadline is the smaller of this and the total timeout.
    Fixed(Duration),
}

/// How a node is probed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeMode {
    /// Total timeout 0: no probing, every node is reachable.
    Disabled,
    /// TCP connect to `<ip>:port` (port 9 from the configuration); refused means alive.
    Legacy { port: u16 },
    /// `grpc.health.v1.Health/Check("Service_Egress_IP")` on `<ip>:port`.
    Grpc { port: u16 },
}

/// What the prober needs: derived from [`ReachabilityConfig`] (or built directly, e.g. in tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeSettings {
    pub mode: ProbeMode,
    /// Minimum time between the starts of two probes of one node. A probe that takes longer is
    /// followed by the next one at once.
    pub interval: Duration,
    /// Deadline of one probe (connect + `Check`, or all TCP-9 dial rounds).
    pub deadline: Duration,
}

impl ProbeSettings {
    /// Worst-case time from a node going silent (packets dropped) to the probe that reports it
    /// unreachable, excluding scheduling noise: the next probe starts at most one interval later
    /// and needs its full deadline; in gRPC mode the first failed `Check` on an established
    /// session is tolerated (as in OVN-K), so a second full deadline follows (the next probe starts
    /// at once because the first one took `deadline`; if `deadline < interval` it waits for the tick).
    pub fn worst_case_detection(&self) -> Duration {
        match self.mode {
            ProbeMode::Disabled => Duration::ZERO,
            ProbeMode::Legacy { .. } => self.interval + self.deadline,
            ProbeMode::Grpc { .. } => {
                self.interval + self.deadline + self.deadline.max(self.interval)
            }
        }
    }
}

/// The reachability configuration of the controller (the health-check port is shared with the
/// agents and must be the same on both sides, as in OVN-K).
///
/// Derives [`clap::Args`], so a command can `#[command(flatten)]` it.
#[derive(Clone, Debug, PartialEq, Eq, clap::Args)]
pub struct ReachabilityConfig {
    /// Budget of one reachability probe (OVN-K knob; integer seconds as in OVN-K, or a duration
    /// such as `500ms`). 0 disables probing: every node is reachable.
    #[arg(
        long = "egressip-reachability-total-timeout",
        env = "KUBE_EGRESS_EGRESSIP_REACHABILITY_TOTAL_TIMEOUT",
        value_name = "SECONDS",
        default_value = "1",
        value_parser = parse_total_timeout
    )]
    pub total_timeout: Duration,

    /// Port of the agents' gRPC health service (OVN-K knob). 0 = legacy probe: TCP connect to
    /// port 9, where a refused connection means the node is alive.
    #[arg(
        long = "egressip-node-healthcheck-port",
        env = "KUBE_EGRESS_EGRESSIP_NODE_HEALTHCHECK_PORT",
        value_name = "PORT",
        default_value_t = 0
    )]
    pub healthcheck_port: u16,

    /// Time between the starts of two probes of one node (ours; OVN-K uses a fixed 5 s).
    #[arg(
        long = "egressip-reachability-interval",
        env = "KUBE_EGRESS_EGRESSIP_REACHABILITY_INTERVAL",
        value_name = "DURATION",
        default_value = "200ms",
        value_parser = parse_interval
    )]
    pub interval: Duration,

    /// Deadline of one probe, capped by the total timeout (ours). `total` probes exactly as OVN-K
    /// does (deadline = total timeout) at the cost of slower failure detection.
    #[arg(
        long = "egressip-reachability-probe-timeout",
        env = "KUBE_EGRESS_EGRESSIP_REACHABILITY_PROBE_TIMEOUT",
        value_name = "DURATION|total",
        default_value = "400ms",
        value_parser = parse_probe_timeout
    )]
    pub probe_timeout: ProbeTimeout,
}

impl Default for ReachabilityConfig {
    fn default() -> Self {
        Self {
            total_timeout: DEFAULT_TOTAL_TIMEOUT,
            healthcheck_port: 0,
            interval: DEFAULT_INTERVAL,
            probe_timeout: ProbeTimeout::Fixed(DEFAULT_PROBE_TIMEOUT),
        }
    }
}

impl ReachabilityConfig {
    /// OVN-Kubernetes' own behaviour: total timeout 1 s as the probe deadline, a probe every 5 s.
    pub fn ovnk() -> Self {
        Self {
            total_timeout: DEFAULT_TOTAL_TIMEOUT,
            healthcheck_port: 0,
            interval: OVNK_INTERVAL,
            probe_timeout: ProbeTimeout::Total,
        }
    }

    /// False when the total timeout is 0.
    pub fn enabled(&self) -> bool {
        !self.total_timeout.is_zero()
    }

    /// The effective deadline of one probe: the probe timeout capped by the total timeout.
    pub fn probe_deadline(&self) -> Duration {
        match self.probe_timeout {
            ProbeTimeout::Total => self.total_timeout,
            ProbeTimeout::Fixed(d) => d.min(self.total_timeout),
        }
    }

    /// The probe mode: disabled, legacy TCP port 9, or gRPC.
    pub fn mode(&self) -> ProbeMode {
        if !self.enabled() {
            ProbeMode::Disabled
        } else if self.healthcheck_port == 0 {
            ProbeMode::Legacy {
                port: LEGACY_PROBE_PORT,
            }
        } else {
            ProbeMode::Grpc {
                port: self.healthcheck_port,
            }
        }
    }

    /// The prober's settings.
    pub fn settings(&self) -> ProbeSettings {
        ProbeSettings {
            mode: self.mode(),
            interval: self.interval,
            deadline: self.probe_deadline(),
        }
    }
}

/// TLS files of the health service (OVN-K reuses its northbound database certificates; we name
/// them for what they secure). Derives [`clap::Args`].
#[derive(Clone, Debug, Default, PartialEq, Eq, clap::Args)]
pub struct HealthTlsArgs {
    /// Agent: PEM certificate (chain) the health server presents. TLS is on when this and the key are set.
    #[arg(
        long = "egressip-healthcheck-cert",
        value_name = "FILE",
        requires = "key"
    )]
    pub cert: Option<PathBuf>,
    /// Agent: PEM private key of the health server.
    #[arg(
        long = "egressip-healthcheck-privkey",
        value_name = "FILE",
        requires = "cert"
    )]
    pub key: Option<PathBuf>,
    /// Controller: PEM CA certificate that signs the agents' certificates. TLS is on when set.
    #[arg(long = "egressip-healthcheck-cacert", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// Controller: name expected in the agents' certificates (default: the probed IP address).
    #[arg(long = "egressip-healthcheck-cert-common-name", value_name = "NAME")]
    pub server_name: Option<String>,
}

impl HealthTlsArgs {
    /// The agent side, when both the certificate and the key are given.
    pub fn server(&self) -> Option<crate::ServerTls> {
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Some(crate::ServerTls {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        }
    }

    /// The controller side, when the CA certificate is given.
    pub fn client(&self) -> Option<crate::ClientTls> {
        self.ca_cert.as_ref().map(|ca| crate::ClientTls {
            ca_cert: ca.clone(),
            server_name: self.server_name.clone(),
        })
    }
}

/// Parses a duration: a bare number is seconds (OVN-K's integer form, decimals allowed), or a
/// number followed by `ms`, `s` or `m`. Usable as a clap `value_parser`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else {
        (t, 1.0)
    };
    let num = num.trim();
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(format!(
            "invalid duration {s:?}: expected seconds (\"1\") or a number with ms, s or m (\"500ms\")"
        ));
    }
    let value: f64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    Duration::try_from_secs_f64(value * scale).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// `egressip-reachability-total-timeout`: any duration, 0 disables probing.
pub fn parse_total_timeout(s: &str) -> Result<Duration, String> {
    parse_duration(s)
}

/// `egressip-reachability-interval`: a duration greater than 0.
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err("the reachability interval must be greater than 0".into());
    }
    Ok(d)
}

/// `egressip-reachability-probe-timeout`: `total` or a duration greater than 0.
pub fn parse_probe_timeout(s: &str) -> Result<ProbeTimeout, String> {
    if s.trim().eq_ignore_ascii_case("total") {
        return Ok(ProbeTimeout::Total);
    }
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(
            "the probe timeout must be greater than 0 (set egressip-reachability-total-timeout=0 to disable probing)"
                .into(),
        );
    }
    Ok(ProbeTimeout::Fixed(d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        reach: ReachabilityConfig,
        #[command(flatten)]
        tls: HealthTlsArgs,
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1"), Ok(ms(1000)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("2s"), Ok(ms(2000)));
        assert_eq!(parse_duration("250ms"), Ok(ms(250)));
        assert_eq!(parse_duration("0.5"), Ok(ms(500)));
        assert_eq!(parse_duration("1m"), Ok(ms(60_000)));
        for bad in ["", "ms", "-1", "1h", "abc", "1.2.3", "1e3"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_interval("0").is_err());
        assert_eq!(parse_probe_timeout("total"), Ok(ProbeTimeout::Total));
        assert_eq!(
            parse_probe_timeout("300ms"),
            Ok(ProbeTimeout::Fixed(ms(300)))
        );
        assert!(parse_probe_timeout("0").is_err());
    }

    #[test]
    fn clap_defaults_equal_default_impl() {
        let cli = Cli::try_parse_from(["x"]).unwrap();
        assert_eq!(cli.reach, ReachabilityConfig::default());
        assert_eq!(cli.tls, HealthTlsArgs::default());
        let s = cli.reach.settings();
        assert_eq!(s.mode, ProbeMode::Legacy { port: 9 });
        assert_eq!(s.deadline, DEFAULT_PROBE_TIMEOUT);
        assert_eq!(s.interval, DEFAULT_INTERVAL);
    }

    #[test]
    fn clap_knobs() {
        let cli = Cli::try_parse_from([
            "x",
            "--egressip-reachability-total-timeout=3",
            "--egressip-node-healthcheck-port",
            "9107",
            "--egressip-reachability-interval=1s",
            "--egressip-reachability-probe-timeout=total",
            "--egressip-healthcheck-cacert=/ca.pem",
        ])
        .unwrap();
        assert_eq!(cli.reach.mode(), ProbeMode::Grpc { port: 9107 });
        assert_eq!(cli.reach.probe_deadline(), ms(3000));
        assert_eq!(cli.reach.interval, ms(1000));
        assert!(cli.tls.server().is_none());
        let client = cli.tls.client().unwrap();
        assert_eq!(client.ca_cert, PathBuf::from("/ca.pem"));
        assert_eq!(client.server_name, None);
        // A certificate without its key is refused.
        assert!(Cli::try_parse_from(["x", "--egressip-healthcheck-cert=/c.pem"]).is_err());
        assert!(Cli::try_parse_from(["x", "--egressip-reachability-interval=0"]).is_err());
    }

    #[test]
    fn zero_total_timeout_disables_whatever_the_port() {
        let c = ReachabilityConfig {
            total_timeout: Duration::ZERO,
            healthcheck_port: 9107,
            ..Default::default()
        };
        assert!(!c.enabled());
        assert_eq!(c.mode(), ProbeMode::Disabled);
        assert_eq!(c.settings().worst_case_detection(), Duration::ZERO);
    }

    #[test]
    fn deadline_is_capped_by_total_timeout() {
        let mut c = ReachabilityConfig {
            total_timeout: ms(300),
            ..Default::default()
        };
        assert_eq!(c.probe_deadline(), ms(300));
        c.total_timeout = ms(5000);
        assert_eq!(c.probe_deadline(), DEFAULT_PROBE_TIMEOUT);
        c.probe_timeout = ProbeTimeout::Total;
        assert_eq!(c.probe_deadline(), ms(5000));
    }

    #[test]
    fn detection_latency_of_the_defaults() {
        // Legacy (the default mode): next probe within 200 ms, dead after 400 ms.
        let legacy = ReachabilityConfig::default().settings();
        assert_eq!(legacy.worst_case_detection(), ms(600));
        // gRPC: one tolerated failure doubles the deadline.
        let grpc = ReachabilityConfig {
            healthcheck_port: 9107,
            ..Default::default()
        }
        .settings();
        assert_eq!(grpc.worst_case_detection(), ms(1000));
        // OVN-K's deadline with our interval is over the 1 s failover budget before anything moves.
        let compat = ReachabilityConfig {
            probe_timeout: ProbeTimeout::Total,
            ..Default::default()
        }
        .settings();
        assert_eq!(compat.worst_case_detection(), ms(1200));
        // OVN-K itself: 5 s ticks.
        assert_eq!(
            ReachabilityConfig::ovnk().settings().worst_case_detection(),
            ms(6000)
        );
    }
}
