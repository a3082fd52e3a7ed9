//! `kube-egress controller`: the cluster-wide controller.
//!
//! - On Kubernetes (the default, `--dataplane linux`): assigns egress IPs cluster-wide; one Lease
//!   holder writes statuses, marks and Events, the other replicas stand by; the agents program
//!   the nodes. The logic lives in the `kube-egress-k8s` crate; this file maps flags to it.
//! - `--dataplane ovn --manifests DIR`: programs the OVN Northbound database from a directory of
//!   manifests (`ovn_cmd`); the Kubernetes source for the OVN data plane is not wired yet.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use ipnet::IpNet;
use kube_egress_engine::Config;
use kube_egress_k8s::controller::{ControllerConfig, Observer};
use kube_egress_k8s::lease::LeaseConfig;
use kube_egress_metrics::{ControllerMetrics, Registry};
use kube_egress_probe::{ClientTls, ReachabilityConfig};

use crate::ovn_cmd;

/// Which data plane carries the egress plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Dataplane {
    /// Per-node Linux routing, nftables and addresses (the `agent` on every node).
    Linux,
    /// OVN Northbound rows, as ovnkube writes them.
    Ovn,
}

/// Data-plane selection; meant to be `#[command(flatten)]`ed.
#[derive(Debug, Clone, Args)]
pub struct DataplaneArgs {
    /// The data plane to program: `linux` (the agents do, from the statuses this controller
    /// writes) or `ovn` (this controller writes OVN Northbound rows).
    #[arg(long, env = "KUBE_EGRESS_DATAPLANE", value_enum, default_value_t = Dataplane::Linux)]
    pub dataplane: Dataplane,
    /// OVN Northbound database, `tcp:HOST:PORT` or `unix:PATH` (with --dataplane ovn).
    #[arg(long = "ovn-nb", value_name = "ENDPOINT", env = "KUBE_EGRESS_OVN_NB")]
    pub ovn_nb: Option<String>,
    /// Join switch subnet per family (with --dataplane ovn; default: ovnkube's 100.64.0.0/16 and
    /// fd98::/64). Repeatable.
    #[arg(long = "ovn-join-subnet", value_name = "CIDR")]
    pub ovn_join_subnets: Vec<IpNet>,
}

/// The controller's Kubernetes settings. Every flag can also be set through the environment
/// (`KUBE_EGRESS_<FLAG>`), so a ConfigMap can feed them with `envFrom`.
#[derive(Debug, Args)]
pub struct ControllerArgs {
    /// Kubeconfig file; without it: in-cluster service account, then KUBECONFIG / ~/.kube/config.
    #[arg(long, env = "KUBE_EGRESS_KUBECONFIG", value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    #[command(flatten)]
    pub dataplane: DataplaneArgs,
    /// Read the cluster from this directory (or file) of manifests instead of Kubernetes (with
    /// --dataplane ovn); re-read when it changes.
    #[arg(long, value_name = "DIR")]
    pub manifests: Option<PathBuf>,
    /// With --manifests: reconcile once, check that the data plane matches the plan, and exit
    /// (0 when it does).
    #[arg(long)]
    pub once: bool,
    /// With --manifests: nodes that failed their reachability probe (their egress IPs move).
    #[arg(long = "unreachable", value_name = "NODE")]
    pub unreachable: Vec<String>,
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
    /// Namespace of the Lease: the controller's own, which the downward API gives as
    /// POD_NAMESPACE [default: kube-egress].
    #[arg(long, env = "POD_NAMESPACE", value_name = "NS")]
    pub leader_election_namespace: Option<String>,
    /// Name of the Lease.
    #[arg(
        long,
        env = "KUBE_EGRESS_LEADER_ELECTION_LEASE_NAME",
        value_name = "NAME",
        default_value = "kube-egress-controller"
    )]
    pub leader_election_lease_name: String,
    /// This replica's identity in the Lease: its pod name, which the downward API gives as
    /// POD_NAME [default: the host name].
    #[arg(long, env = "POD_NAME", value_name = "ID")]
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

impl ControllerArgs {
    pub fn config(&self) -> ControllerConfig {
        let namespace = self
            .leader_election_namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "kube-egress".into());
        let identity = self
            .identity
            .clone()
            .filter(|i| !i.is_empty())
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
    match (args.dataplane.dataplane, &args.manifests) {
        (Dataplane::Ovn, Some(manifests)) => {
            return ovn_cmd::run(&ovn_cmd::OvnRun {
                nb: args.dataplane.ovn_nb.clone(),
                join_subnets: args.dataplane.ovn_join_subnets.clone(),
                manifests: manifests.clone(),
                once: args.once,
                cluster_cidrs: args.cluster_cidrs.clone(),
                service_cidrs: args.service_cidrs.clone(),
                unreachable: args.unreachable.clone(),
            });
        }
        (Dataplane::Ovn, None) => bail!(
            "--dataplane ovn reads the cluster from --manifests DIR (the Kubernetes source for the \
             OVN data plane is not available yet)"
        ),
        (Dataplane::Linux, Some(_)) => bail!(
            "--manifests is for --dataplane ovn; with the Linux data plane each node's agent reads \
             manifests itself (`kube-egress agent --manifests DIR`), and `kube-egress plan` shows \
             the assignment"
        ),
        (Dataplane::Linux, None) => {}
    }
    if args.once || !args.unreachable.is_empty() {
        bail!("--once and --unreachable go with --manifests");
    }
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
