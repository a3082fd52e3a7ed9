//! Prometheus metrics of kube-egress and the HTTP endpoint that exposes them.
//!
//! - [`ControllerMetrics`]: the egress IP metrics of OVN-Kubernetes under the same names and help
//!   texts, so dashboards and alerts written for OVN-Kubernetes keep working.
//! - [`AgentMetrics`]: what a node agent adds, above all packets and bytes per egress IP, read
//!   from the kernel at scrape time.
//! - [`serve`]: `GET /metrics` in the OpenMetrics text format.
//!
//! Both sets register into a caller's [`Registry`], so one process can expose both on one port.

mod agent;
mod controller;
mod http;

pub use agent::{AgentMetrics, EgressTraffic, EgressTrafficSource};
pub use controller::ControllerMetrics;
pub use http::{CONTENT_TYPE, serve};
pub use prometheus_client::registry::Registry;

/// The registry's content in the OpenMetrics text format (what `GET /metrics` returns).
pub fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing into a String cannot fail; an error could only come from a collector, and ours
    // report their failures as metrics instead.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, registry) {
        text.push_str(&format!("# encoding failed: {e}\n# EOF\n"));
    }
    text
}
