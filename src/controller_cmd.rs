//! `kube-egress controller`: assigns egress IPs cluster-wide on Kubernetes (one Lease holder
//! writes statuses, marks and Events; the other replicas stand by). The logic lives in the
//! `kube-egress-k8s` crate; this file maps flags to its configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use ipnet::IpNet;
use kube_egress_engine::Config;
use kube_egress_k8s::controller::{ControllerConfig, Observer};
use kube_egress_k8s::lease::LeaseConfig;
use kube_egress_metrics::{ControllerMetrics, Registry};
use kube_egress_probe::{ClientTls, ReachabilityConfig};

/// The controller's Kubernetes settings. Every flag can also be set through the environment
/// (`KUBE_EGRESS_<FLAG>`), so a ConfigMap can feed them with `envFrom`.
#[derive(Debug, Args)]
pub struct ControllerArgs {
    /// Kubeconfig file; without it: in-cluster service account, then KUBECONFIG / ~/.kube/config.
    #[arg(long, env = "KUBE_EGRESS_KUBECONFIG", value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// Pod network(s) in addition to the nodes' spec.podCIDRs (comma-separated in the env var).
    #[arg(
        long = "cluster-cidr",
        env = "KUBE_EGRESS_CLUSTER_CIDR",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    pub cluster_cidrs: Vec<IpNet>,
    /// Service network(s) in addition to ServiceCIDR objects (comma-separated in the env var).
    #[arg(
        long = "service-cidr",
        env = "KUBE_EGRESS_SERVICE_CIDR",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    pub service_cidrs: Vec<IpNet>,
    #[command(flatten)]
    pub reachability: ReachabilityConfig,
    /// PEM CA certificate of the agents' health-check certificates: gRPC probes use TLS when set.
    #[arg(long, env = "KUBE_EGRESS_HEALTHCHECK_TLS_CA", value_name = "PATH")]
    pub healthcheck_tls_ca: Option<PathBuf>,
    /// Namespace of the Lease [default: $POD_NAMESPACE, else kube-egress].
    #[arg(long, env = "KUBE_EGRESS_LEADER_ELECTION_NAMESPACE", value_name = "NS")]
    pub leader_election_namespace: Option<String>,
    /// Name of the Lease.
    #[arg(
        long,
        env = "KUBE_EGRESS_LEADER_ELECTION_LEASE_NAME",
        value_name = "NAME",
        default_value = "kube-egress-controller"
    )]
    pub leader_election_lease_name: String,
    /// This replica's identity in the Lease [default: $POD_NAME, else the host name].
    #[arg(long, env = "KUBE_EGRESS_IDENTITY", value_name = "ID")]
    pub identity: Option<String>,
    /// Cordoned nodes (spec.unschedulable) host no egress IP, so draining a node moves its IPs
    /// before the maintenance (OVN-K keeps them).
    #[arg(long, env = "KUBE_EGRESS_CORDONED_NODES_INELIGIBLE")]
    pub cordoned_nodes_ineligible: bool,
    /// Where to serve Prometheus metrics (`GET /metrics`); an empty value disables them.
    #[arg(
        long,
        env = "KUBE_EGRESS_METRICS_BIND_ADDRESS",
        value_name = "ADDRESS:PORT",
        default_value = "0.0.0.0:9476"
    )]
    pub metrics_bind_address: String,
}

/// The controller's Prometheus metrics, fed by the Kubernetes controller's hooks.
struct Metrics(ControllerMetrics);

impl Observer for Metrics {
    fn egress_ips(&self, assigned: usize) {
        self.0.set_egress_ips(assigned);
    }
    fn node_unreachable(&self) {
        self.0.node_unreachable();
    }
    fn rebalance(&self) {
        self.0.rebalance();
    }
    fn assigned(&self, latency: Duration) {
        self.0.observe_assign(latency);
    }
    fn unassigned(&self, latency: Duration) {
        self.0.observe_unassign(latency);
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "kube-egress-controller".into())
}

fn from_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl ControllerArgs {
    pub fn config(&self) -> ControllerConfig {
        let namespace = self
            .leader_election_namespace
            .clone()
            .or_else(|| from_env("POD_NAMESPACE"))
            .unwrap_or_else(|| "kube-egress".into());
        let identity = self
            .identity
            .clone()
            .or_else(|| from_env("POD_NAME"))
            .unwrap_or_else(host_name);
        ControllerConfig {
            engine: Config {
                cluster_cidrs: self.cluster_cidrs.clone(),
                service_cidrs: self.service_cidrs.clone(),
                cordoned_nodes_ineligible: self.cordoned_nodes_ineligible,
            },
            reachability: self.reachability.clone(),
            probe_tls: self.healthcheck_tls_ca.as_ref().map(|ca| ClientTls {
                ca_cert: ca.clone(),
                server_name: None,
            }),
            lease: LeaseConfig::new(&namespace, &self.leader_election_lease_name, &identity),
        }
    }
}

pub fn run(args: &ControllerArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(controller(args))
}

async fn controller(args: &ControllerArgs) -> Result<()> {
    let config = args.config();
    let client = kube_egress_k8s::client(args.kubeconfig.as_deref())
        .await
        .map_err(anyhow::Error::msg)?;
    eprintln!(
        "kube-egress controller: {} starting (Lease {}/{})",
        config.lease.identity, config.lease.namespace, config.lease.name
    );
    let mut registry = Registry::default();
    let metrics = Metrics(ControllerMetrics::register(&mut registry));
    let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics_server = if args.metrics_bind_address.is_empty() {
        None
    } else {
        let address: SocketAddr = args.metrics_bind_address.parse().with_context(|| {
            format!(
                "--metrics-bind-address {:?} is not an ADDRESS:PORT (an empty value disables metrics)",
                args.metrics_bind_address
            )
        })?;
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("binding the metrics endpoint to {address}"))?;
        Some(tokio::spawn(kube_egress_metrics::serve(
            listener,
            Arc::new(registry),
            metrics_stopped,
        )))
    };
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let shutdown = async move {
        tokio::select! {
            _ = sigterm.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    let result = kube_egress_k8s::controller::run(client, config, &metrics, shutdown).await;
    let _ = stop_metrics.send(());
    if let Some(server) = metrics_server {
        let _ = server.await;
    }
    result?;
    eprintln!("kube-egress controller: stopping");
    Ok(())
}
