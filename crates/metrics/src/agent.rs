//! The node agent's metrics (ours, not OVN-Kubernetes'; all named `kube_egress_agent_*`).
//!
//! Packets and bytes per egress IP are kernel counters. They are read when a scrape arrives, not
//! copied on a timer, so a scrape always shows what the kernel counts at that moment and nothing
//! runs between scrapes.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

/// Traffic that left the node with one egress IP as its source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EgressTraffic {
    pub packets: u64,
    pub bytes: u64,
}

/// Reads the current traffic per egress IP (called on every scrape, on a blocking thread); an
/// error is a sentence saying what failed.
pub type EgressTrafficSource =
    Box<dyn Fn() -> Result<BTreeMap<IpAddr, EgressTraffic>, String> + Send + Sync>;

/// The agent's metrics. Cheap to clone; clones share the values.
#[derive(Debug, Clone)]
pub struct AgentMetrics {
    egress_ips: Gauge,
    problems: Gauge,
    apply_duration: Gauge<f64, AtomicU64>,
    applies: Counter,
    apply_errors: Counter,
}

impl AgentMetrics {
    /// Registers the metrics in `registry`; `source` is read on every scrape.
    pub fn register(
        registry: &mut Registry,
        source: impl Fn() -> Result<BTreeMap<IpAddr, EgressTraffic>, String> + Send + Sync + 'static,
    ) -> AgentMetrics {
        let metrics = AgentMetrics {
            egress_ips: Gauge::default(),
            problems: Gauge::default(),
            apply_duration: Gauge::default(),
            applies: Counter::default(),
            apply_errors: Counter::default(),
        };
        registry.register(
            "kube_egress_agent_egress_ips",
            "Egress IP addresses placed on this node",
            metrics.egress_ips.clone(),
        );
        registry.register(
            "kube_egress_agent_plan_problems",
            "Parts of this node's plan the last apply could not carry out",
            metrics.problems.clone(),
        );
        registry.register_with_unit(
            "kube_egress_agent_apply_duration",
            "Duration of the last apply of this node's plan to the kernel",
            Unit::Seconds,
            metrics.apply_duration.clone(),
        );
        registry.register(
            "kube_egress_agent_applies",
            "Applies of this node's plan to the kernel, failed ones included",
            metrics.applies.clone(),
        );
        registry.register(
            "kube_egress_agent_apply_errors",
            "Applies of this node's plan that failed",
            metrics.apply_errors.clone(),
        );
        registry.register_collector(Box::new(TrafficCollector {
            source: Box::new(source),
            read_errors: Arc::new(AtomicU64::new(0)),
        }));
        metrics
    }

    /// The number of egress IPs placed on this node.
    pub fn set_egress_ips(&self, count: usize) {
        self.egress_ips
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// The number of problems the last apply reported.
    pub fn set_problems(&self, count: usize) {
        self.problems.set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// One apply of the plan, how long it took and whether it succeeded.
    pub fn observe_apply(&self, duration: Duration, ok: bool) {
        self.apply_duration.set(duration.as_secs_f64());
        self.applies.inc();
        if !ok {
            self.apply_errors.inc();
        }
    }
}

/// Picks one value out of the traffic of an egress IP.
type ValueOf = fn(&EgressTraffic) -> u64;

/// Encodes the per-egress-IP counters from the source at scrape time.
struct TrafficCollector {
    source: EgressTrafficSource,
    read_errors: Arc<AtomicU64>,
}

impl fmt::Debug for TrafficCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrafficCollector")
            .field("read_errors", &self.read_errors)
            .finish_non_exhaustive()
    }
}

impl Collector for TrafficCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        // A failed read shows as no samples and a counted error, never as a failed scrape: the
        // other metrics stay visible.
        let traffic = (self.source)().unwrap_or_else(|_| {
            self.read_errors.fetch_add(1, Ordering::Relaxed);
            BTreeMap::new()
        });
        let families: [(&str, &str, ValueOf); 2] = [
            (
                "kube_egress_agent_egress_ip_packets",
                "Packets that left this node with this egress IP as source (after SNAT).",
                |t| t.packets,
            ),
            (
                "kube_egress_agent_egress_ip_bytes",
                "Bytes (IP packets, headers included) that left this node with this egress IP as \
                 source (after SNAT).",
                |t| t.bytes,
            ),
        ];
        for (name, help, value) in families {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (ip, t) in &traffic {
                let labels = [("egress_ip", ip.to_string())];
                family
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&value(t), None)?;
            }
        }
        let mut errors = encoder.encode_descriptor(
            "kube_egress_agent_counter_read_errors",
            "Scrapes for which the kernel's egress IP counters could not be read.",
            None,
            MetricType::Counter,
        )?;
        errors.encode_counter::<NoLabelSet, _, u64>(&self.read_errors.load(Ordering::Relaxed), None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn has(text: &str, line: &str) -> bool {
        text.lines().any(|l| l == line)
    }

    #[test]
    fn traffic_is_read_at_every_scrape() {
        let kernel: Arc<Mutex<Result<BTreeMap<IpAddr, EgressTraffic>, String>>> =
            Arc::new(Mutex::new(Ok(BTreeMap::new())));
        let mut registry = Registry::default();
        let source = kernel.clone();
        let m = AgentMetrics::register(&mut registry, move || source.lock().unwrap().clone());
        m.set_egress_ips(2);
        m.observe_apply(Duration::from_millis(250), true);
        m.observe_apply(Duration::from_millis(500), false);

        let text = crate::encode(&registry);
        assert!(has(&text, "kube_egress_agent_egress_ips 2"), "{text}");
        assert!(
            has(&text, "kube_egress_agent_apply_duration_seconds 0.5"),
            "{text}"
        );
        assert!(has(&text, "kube_egress_agent_applies_total 2"), "{text}");
        assert!(
            has(&text, "kube_egress_agent_apply_errors_total 1"),
            "{text}"
        );
        assert!(
            has(&text, "# TYPE kube_egress_agent_egress_ip_packets counter"),
            "{text}"
        );
        assert!(!text.contains("egress_ip=\""), "{text}");

        let ip: IpAddr = "192.168.126.10".parse().unwrap();
        let v6: IpAddr = "fd00::10".parse().unwrap();
        let mut now = BTreeMap::new();
        now.insert(
            ip,
            EgressTraffic {
                packets: 7,
                bytes: 700,
            },
        );
        now.insert(
            v6,
            EgressTraffic {
                packets: 1,
                bytes: 80,
            },
        );
        *kernel.lock().unwrap() = Ok(now);
        let text = crate::encode(&registry);
        for line in [
            "kube_egress_agent_egress_ip_packets_total{egress_ip=\"192.168.126.10\"} 7",
            "kube_egress_agent_egress_ip_bytes_total{egress_ip=\"192.168.126.10\"} 700",
            "kube_egress_agent_egress_ip_packets_total{egress_ip=\"fd00::10\"} 1",
            "kube_egress_agent_egress_ip_bytes_total{egress_ip=\"fd00::10\"} 80",
            "kube_egress_agent_counter_read_errors_total 0",
        ] {
            assert!(has(&text, line), "missing {line:?} in\n{text}");
        }

        *kernel.lock().unwrap() = Err("nft failed".into());
        let text = crate::encode(&registry);
        assert!(!text.contains("egress_ip=\""), "{text}");
        assert!(
            has(&text, "kube_egress_agent_counter_read_errors_total 1"),
            "{text}"
        );
        assert!(has(&text, "kube_egress_agent_egress_ips 2"), "{text}");
    }
}
