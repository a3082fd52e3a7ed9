//! The controller's egress IP metrics, named as OVN-Kubernetes names them.
//!
//! OVN-Kubernetes registers the first three in its cluster manager (namespace `ovnkube`,
//! subsystem `clustermanager`) and the two latency histograms in ovnkube-controller (subsystem
//! `controller`, buckets 1 ms doubling 15 times). prometheus-client appends `_total` to counters
//! and the unit to a name registered with one, so the names below are given without them. It also
//! ends every help text with a period, which OVN-Kubernetes' texts lack; nothing matches on help.

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// Egress IP metrics of the controller. Cheap to clone; clones share the values.
#[derive(Debug, Clone)]
pub struct ControllerMetrics {
    egress_ips: Gauge,
    node_unreachable: Counter,
    rebalance: Counter,
    assign_latency: Histogram,
    unassign_latency: Histogram,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

impl ControllerMetrics {
    /// Registers the metrics in `registry` (once per registry: names must be unique).
    pub fn register(registry: &mut Registry) -> ControllerMetrics {
        let metrics = ControllerMetrics {
            egress_ips: Gauge::default(),
            node_unreachable: Counter::default(),
            rebalance: Counter::default(),
            assign_latency: latency_histogram(),
            unassign_latency: latency_histogram(),
        };
        registry.register(
            "ovnkube_clustermanager_num_egress_ips",
            "The number of defined egress IP addresses",
            metrics.egress_ips.clone(),
        );
        registry.register(
            "ovnkube_clustermanager_egress_ips_node_unreachable",
            "The total number of times assigned egress IP(s) were unreachable",
            metrics.node_unreachable.clone(),
        );
        registry.register(
            "ovnkube_clustermanager_egress_ips_rebalance",
            "The total number of times assigned egress IP(s) needed to be moved to a different node",
            metrics.rebalance.clone(),
        );
        registry.register_with_unit(
            "ovnkube_controller_egress_ips_assign_latency",
            "The latency of egress IP assignment to ovn nb database",
            Unit::Seconds,
            metrics.assign_latency.clone(),
        );
        registry.register_with_unit(
            "ovnkube_controller_egress_ips_unassign_latency",
            "The latency of egress IP unassignment from ovn nb database",
            Unit::Seconds,
            metrics.unassign_latency.clone(),
        );
        metrics
    }

    /// The number of egress IP addresses defined by all EgressIP objects.
    pub fn set_egress_ips(&self, count: usize) {
        self.egress_ips
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// A node holding egress IPs was found unreachable.
    pub fn node_unreachable(&self) {
        self.node_unreachable.inc();
    }

    /// An assigned egress IP was moved to another node.
    pub fn rebalance(&self) {
        self.rebalance.inc();
    }

    /// Time from deciding an assignment to the data plane carrying it.
    pub fn observe_assign(&self, latency: Duration) {
        self.assign_latency.observe(latency.as_secs_f64());
    }

    /// Time from deciding an unassignment to the data plane dropping it.
    pub fn observe_unassign(&self, latency: Duration) {
        self.unassign_latency.observe(latency.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_types_and_values_are_ovn_kubernetes_ones() {
        let mut registry = Registry::default();
        let m = ControllerMetrics::register(&mut registry);
        m.set_egress_ips(3);
        m.node_unreachable();
        m.rebalance();
        m.rebalance();
        m.observe_assign(Duration::from_millis(3));
        m.observe_unassign(Duration::from_millis(20));
        m.observe_unassign(Duration::from_secs(60));
        let text = crate::encode(&registry);
        for line in [
            "# TYPE ovnkube_clustermanager_num_egress_ips gauge",
            "ovnkube_clustermanager_num_egress_ips 3",
            "# HELP ovnkube_clustermanager_egress_ips_node_unreachable The total number of times \
             assigned egress IP(s) were unreachable.",
            "# TYPE ovnkube_clustermanager_egress_ips_node_unreachable counter",
            "ovnkube_clustermanager_egress_ips_node_unreachable_total 1",
            "ovnkube_clustermanager_egress_ips_rebalance_total 2",
            "# TYPE ovnkube_controller_egress_ips_assign_latency_seconds histogram",
            "# UNIT ovnkube_controller_egress_ips_assign_latency_seconds seconds",
            "ovnkube_controller_egress_ips_assign_latency_seconds_count 1",
            "ovnkube_controller_egress_ips_assign_latency_seconds_bucket{le=\"0.004\"} 1",
            "ovnkube_controller_egress_ips_assign_latency_seconds_bucket{le=\"0.002\"} 0",
            "ovnkube_controller_egress_ips_unassign_latency_seconds_count 2",
            // 15 buckets from 1 ms: the last is 16.384 s; a minute lands only in +Inf.
            "ovnkube_controller_egress_ips_unassign_latency_seconds_bucket{le=\"16.384\"} 1",
            "ovnkube_controller_egress_ips_unassign_latency_seconds_bucket{le=\"+Inf\"} 2",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
