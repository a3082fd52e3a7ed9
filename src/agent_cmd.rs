//! `kube-egress agent`: programs this node's egress data plane (Linux kernel) from a source.
//!
//! Two sources feed the same apply loop:
//! - **Kubernetes** (no `--manifests`): the agent watches Nodes, Namespaces, Pods and EgressIPs
//!   and computes its node's plan with the engine, taking the `status.items` the controller wrote
//!   as the assignment (it never places an IP the controller did not assign). It serves the
//!   gRPC health check the controller probes, and publishes the node addressing annotations
//!   (`k8s.ovn.org/node-primary-ifaddr`, `k8s.ovn.org/host-cidrs`) when no OVN-Kubernetes does.
//! - **Manifests** (`--manifests DIR`): a directory of manifests, re-read when it changes.
//!   EgressIPs that carry `status.items` keep those assignments when they are valid; others are
//!   assigned by the engine, deterministically, so every agent reaches the same result.
//!
//! The plan is applied with the Linux applier in the network namespace the agent runs in. The
//! agent follows the main-table routes of secondary links, re-checks the kernel periodically,
//! and on SIGTERM/SIGINT leaves the data plane in place (a rolling update must not cut traffic);
//! startup adopts what exists. It serves its metrics on `--metrics-bind-address`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use clap::Args;
use futures::StreamExt;
use ipnet::IpNet;
use kube_egress_engine::{Config, Engine, Family, NodePlan};
use kube_egress_k8s::agent::{
    AgentView, KubeSource, PublishNodeAddressing, addressing_patch, node_addressing,
    publish_addressing,
};
use kube_egress_linux::applier::{Applier, ApplyError, Report};
use kube_egress_linux::desired::TUNNEL_DEVICE;
use kube_egress_linux::netlink::{AddressScope, Change, Netlink, Subscription};
use kube_egress_linux::nft::Nft;
use kube_egress_metrics::{AgentMetrics, EgressTraffic, Registry};
use kube_egress_probe::{HealthServer, HealthServerConfig, ServerTls};

use crate::manifests::Manifests;

/// The agent's settings. Every flag can also be set through the environment
/// (`KUBE_EGRESS_<FLAG>`), so a ConfigMap can feed them with `envFrom`.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The Kubernetes name of the node this agent runs on.
    #[arg(long, env = "KUBE_EGRESS_NODE")]
    pub node: String,
    /// Directory (or file) of manifests describing the cluster; re-read when it changes.
    /// Without it, the agent watches the Kubernetes API.
    #[arg(long, env = "KUBE_EGRESS_MANIFESTS", value_name = "DIR")]
    pub manifests: Option<PathBuf>,
    /// Kubeconfig file; without it: in-cluster service account, then KUBECONFIG / ~/.kube/config.
    #[arg(long, env = "KUBE_EGRESS_KUBECONFIG", value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// Apply once, check that the kernel matches the plan, and exit (0 when it does).
    #[arg(long, env = "KUBE_EGRESS_ONCE")]
    pub once: bool,
    /// Pod network(s) in addition to the nodes' spec.podCIDRs (comma-separated in the env var).
    #[arg(
        long = "cluster-cidr",
        env = "KUBE_EGRESS_CLUSTER_CIDR",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    pub cluster_cidrs: Vec<IpNet>,
    /// Service network(s) (comma-separated in the env var).
    #[arg(
        long = "service-cidr",
        env = "KUBE_EGRESS_SERVICE_CIDR",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    pub service_cidrs: Vec<IpNet>,
    /// Manifests only: nodes that failed their reachability probe (their egress IPs move).
    #[arg(
        long = "unreachable",
        env = "KUBE_EGRESS_UNREACHABLE",
        value_name = "NODE",
        value_delimiter = ','
    )]
    pub unreachable: Vec<String>,
    /// Port of the gRPC health service (`Service_Egress_IP`) the controller probes; 0 = none
    /// (the controller then probes TCP port 9, where the kernel's refusal means alive).
    #[arg(
        long = "egressip-node-healthcheck-port",
        env = "KUBE_EGRESS_EGRESSIP_NODE_HEALTHCHECK_PORT",
        value_name = "PORT",
        default_value_t = 0
    )]
    pub healthcheck_port: u16,
    /// PEM certificate (chain) of the health service; TLS when given with the key.
    #[arg(
        long,
        env = "KUBE_EGRESS_HEALTHCHECK_TLS_CERT",
        value_name = "PATH",
        requires = "healthcheck_tls_key"
    )]
    pub healthcheck_tls_cert: Option<PathBuf>,
    /// PEM private key of the health service.
    #[arg(
        long,
        env = "KUBE_EGRESS_HEALTHCHECK_TLS_KEY",
        value_name = "PATH",
        requires = "healthcheck_tls_cert"
    )]
    pub healthcheck_tls_key: Option<PathBuf>,
    /// Kubernetes only: publish this node's `node-primary-ifaddr` and `host-cidrs` annotations.
    /// `auto` publishes unless another writer's (OVN-Kubernetes') annotations are present.
    #[arg(
        long,
        env = "KUBE_EGRESS_PUBLISH_NODE_ADDRESSING",
        value_name = "auto|always|never",
        default_value = "auto"
    )]
    pub publish_node_addressing: PublishNodeAddressing,
    /// Where to serve Prometheus metrics (`GET /metrics`); an empty value disables them.
    #[arg(
        long,
        env = "KUBE_EGRESS_METRICS_BIND_ADDRESS",
        default_value = "0.0.0.0:9477",
        value_name = "ADDRESS:PORT"
    )]
    pub metrics_bind_address: String,
    /// How often the whole kernel state is checked against the plan.
    #[arg(
        long,
        env = "KUBE_EGRESS_RESYNC_SECONDS",
        default_value = "60",
        value_name = "SECONDS"
    )]
    pub resync_seconds: u64,
}

impl AgentArgs {
    fn engine_config(&self) -> Config {
        Config {
            cluster_cidrs: self.cluster_cidrs.clone(),
            service_cidrs: self.service_cidrs.clone(),
            ..Config::default()
        }
    }
}

fn log(message: impl AsRef<str>) {
    eprintln!("kube-egress agent: {}", message.as_ref());
}

/// The plan of this node and its tunnel address, from the manifests.
fn compute(args: &AgentArgs, path: &Path) -> Result<(NodePlan, Option<IpAddr>)> {
    let manifests = Manifests::load([path])?;
    for warning in &manifests.warnings {
        log(format!("warning: {warning}"));
    }
    let mut snapshot = manifests.snapshot();
    snapshot.unreachable = args.unreachable.clone();
    let Some(node) = snapshot.nodes.iter().find(|n| n.name == args.node) else {
        bail!(
            "node {} is not in {}: give the name of this node with --node",
            args.node,
            path.display()
        );
    };
    let tunnel = node
        .tunnel_address()
        .filter(|a| Family::of(a) == Family::V4);
    let mut engine = Engine::load(args.engine_config(), snapshot);
    for event in engine.take_changes().events {
        log(format!(
            "event {} {} {}: {}",
            event.kind, event.name, event.reason, event.message
        ));
    }
    Ok((engine.node_plan(&args.node), tunnel))
}

/// What identifies a version of the manifests: every file's path, length and mtime.
pub(crate) fn fingerprint(path: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut out = Vec::new();
    let entries: Vec<PathBuf> = match std::fs::read_dir(path) {
        Ok(dir) => dir.flatten().map(|e| e.path()).collect(),
        Err(_) => vec![path.to_path_buf()],
    };
    for p in entries {
        if let Ok(meta) = std::fs::metadata(&p) {
            out.push((p, meta.len(), meta.modified().ok()));
        }
    }
    out.sort();
    out
}

/// Where plans come from.
enum Source {
    Manifests {
        path: PathBuf,
        seen: Vec<(PathBuf, u64, Option<SystemTime>)>,
        poll: tokio::time::Interval,
    },
    Kubernetes {
        source: KubeSource,
        client: kube_egress_k8s::Client,
        last: Option<Arc<AgentView>>,
    },
}

impl Source {
    async fn open(args: &AgentArgs) -> Result<Source> {
        Ok(match &args.manifests {
            Some(path) => Source::Manifests {
                path: path.clone(),
                seen: fingerprint(path),
                poll: tokio::time::interval(Duration::from_millis(500)),
            },
            None => {
                let client = kube_egress_k8s::client(args.kubeconfig.as_deref())
                    .await
                    .map_err(anyhow::Error::msg)?;
                let source =
                    KubeSource::start(client.clone(), &args.node, args.engine_config()).await;
                Source::Kubernetes {
                    source,
                    client,
                    last: None,
                }
            }
        })
    }

    fn describe(&self) -> String {
        match self {
            Source::Manifests { path, .. } => path.display().to_string(),
            Source::Kubernetes { .. } => "the Kubernetes API".into(),
        }
    }

    /// The first plan and this node's tunnel address.
    async fn first(&mut self, args: &AgentArgs) -> Result<(NodePlan, Option<IpAddr>)> {
        match self {
            Source::Manifests { path, .. } => compute(args, path),
            Source::Kubernetes { source, last, .. } => {
                log("listing the cluster");
                let Some(view) = source.next().await else {
                    bail!("the Kubernetes watches ended before the first plan");
                };
                if view.node.is_none() {
                    log(format!(
                        "warning: node {} does not exist in the cluster; check --node",
                        args.node
                    ));
                }
                *last = Some(view.clone());
                Ok((view.plan.clone(), view.tunnel))
            }
        }
    }

    /// The next changed plan (cancel-safe).
    async fn next(&mut self, args: &AgentArgs) -> Option<NodePlan> {
        match self {
            Source::Manifests { path, seen, poll } => loop {
                poll.tick().await;
                let now = fingerprint(path);
                if now == *seen {
                    continue;
                }
                *seen = now;
                match compute(args, path) {
                    Ok((plan, _)) => return Some(plan),
                    Err(e) => log(format!("manifests not applied: {e:#}")),
                }
            },
            Source::Kubernetes { source, last, .. } => {
                let view = source.next().await?;
                if last.as_ref().is_some_and(|l| l.tunnel != view.tunnel) {
                    log(format!(
                        "warning: this node's tunnel address changed to {:?}; restart the agent to use it",
                        view.tunnel
                    ));
                }
                *last = Some(view.clone());
                Some(view.plan.clone())
            }
        }
    }

    /// Kubernetes only: publishes the node addressing annotations when they differ.
    async fn publish_addressing(&self, args: &AgentArgs, nl: &Netlink, plan: &NodePlan) {
        let Source::Kubernetes {
            client,
            last: Some(view),
            ..
        } = self
        else {
            return;
        };
        let Some(node) = &view.node else {
            return;
        };
        if args.publish_node_addressing == PublishNodeAddressing::Never {
            return;
        }
        // Pod network gateways (bridges) are not host networks: --cluster-cidr and the node's
        // own pod CIDRs.
        let mut pod_networks = args.cluster_cidrs.clone();
        pod_networks.extend(
            node.spec
                .iter()
                .flat_map(|s| s.pod_cidrs.iter().flatten().chain(s.pod_cidr.iter()))
                .filter_map(|c| c.parse::<IpNet>().ok()),
        );
        let host = match host_addresses(nl, &pod_networks).await {
            Ok(h) => h,
            Err(e) => {
                log(format!("reading host addresses: {e:#}"));
                return;
            }
        };
        let node_ips: Vec<IpAddr> = node
            .status
            .iter()
            .flat_map(|s| s.addresses.iter().flatten())
            .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
            .filter_map(|a| a.address.parse().ok())
            .collect();
        let placed: Vec<IpAddr> = plan.egress_ips.iter().map(|h| h.ip).collect();
        let addressing = node_addressing(&host, &node_ips, &placed);
        let Some(patch) = addressing_patch(node, &addressing, args.publish_node_addressing) else {
            return;
        };
        match publish_addressing(client, &args.node, &patch).await {
            Ok(_) => log(format!(
                "published node addressing: primary {:?}, host CIDRs {:?}",
                addressing.primary, addressing.host_cidrs
            )),
            Err(e) => log(format!("publishing node addressing: {e}")),
        }
    }
}

/// Host addresses worth publishing: global scope, not placed by us (egress IPs), not on our
/// tunnel device, not inside the pod networks, not deprecated.
async fn host_addresses(nl: &Netlink, pod_networks: &[IpNet]) -> Result<Vec<IpNet>> {
    let tunnel = nl.link(TUNNEL_DEVICE).await?.map(|l| l.index);
    Ok(nl
        .addresses()
        .await?
        .into_iter()
        .filter(|a| a.scope == AddressScope::Universe && !a.is_owned() && !a.deprecated)
        .filter(|a| Some(a.index) != tunnel)
        .filter(|a| !pod_networks.iter().any(|c| c.contains(&a.ip())))
        .map(|a| a.net)
        .collect())
}

/// Serves the health check on all addresses (IPv6 socket accepting IPv4 too, else IPv4 only).
async fn health_server(args: &AgentArgs) -> Result<Option<HealthServer>> {
    if args.healthcheck_port == 0 {
        return Ok(None);
    }
    let tls = match (&args.healthcheck_tls_cert, &args.healthcheck_tls_key) {
        (Some(cert), Some(key)) => Some(ServerTls {
            cert: cert.clone(),
            key: key.clone(),
        }),
        _ => None,
    };
    let any6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, args.healthcheck_port));
    let any4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, args.healthcheck_port));
    let server = match HealthServer::start(HealthServerConfig {
        listen: any6,
        tls: tls.clone(),
    })
    .await
    {
        Ok(s) => s,
        Err(_) => HealthServer::start(HealthServerConfig { listen: any4, tls })
            .await
            .with_context(|| format!("serving the health check on {any4}"))?,
    };
    log(format!(
        "health check (grpc.health.v1 Service_Egress_IP) on {}",
        server.local_addr()
    ));
    Ok(Some(server))
}

/// Starts the metrics endpoint unless it is disabled. The per egress IP counters are read from
/// nft at each scrape, so they are always the kernel's current values.
async fn start_metrics(address: &str) -> Result<Option<AgentMetrics>> {
    if address.is_empty() {
        return Ok(None);
    }
    let address: SocketAddr = address.parse().with_context(|| {
        format!("--metrics-bind-address {address:?} is not an ADDRESS:PORT (an empty value disables metrics)")
    })?;
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("binding the metrics endpoint to {address}"))?;
    let mut registry = Registry::default();
    let nft = Nft::new(TUNNEL_DEVICE);
    let metrics = AgentMetrics::register(&mut registry, move || {
        let counters = nft.egress_counters_blocking().map_err(|e| {
            log(format!("reading the egress IP counters: {e}"));
            e.to_string()
        })?;
        Ok(counters
            .into_iter()
            .map(|(ip, c)| {
                let traffic = EgressTraffic {
                    packets: c.packets,
                    bytes: c.bytes,
                };
                (ip, traffic)
            })
            .collect())
    });
    log(format!(
        "serving metrics on http://{}/metrics",
        listener.local_addr()?
    ));
    tokio::spawn(kube_egress_metrics::serve(
        listener,
        Arc::new(registry),
        std::future::pending::<()>(),
    ));
    Ok(Some(metrics))
}

/// One apply of the plan, recorded in the metrics.
async fn apply(
    applier: &mut Applier,
    plan: &NodePlan,
    metrics: Option<&AgentMetrics>,
) -> Result<Report, ApplyError> {
    let started = Instant::now();
    let result = applier.apply(plan).await;
    if let Some(metrics) = metrics {
        metrics.observe_apply(started.elapsed(), result.is_ok());
        if let Ok(report) = &result {
            metrics.set_problems(report.problems.len());
            metrics.set_egress_ips(report.egress_ips);
        }
    }
    result
}

pub fn run(args: &AgentArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(agent(args))
}

async fn agent(args: &AgentArgs) -> Result<()> {
    if args.manifests.is_some() && args.kubeconfig.is_some() {
        bail!("--manifests and --kubeconfig exclude each other: pick one source");
    }
    if args.manifests.is_none() && !args.unreachable.is_empty() {
        bail!(
            "--unreachable applies to --manifests only; on Kubernetes the controller probes nodes"
        );
    }
    let mut source = Source::open(args).await?;
    let (mut plan, tunnel) = source.first(args).await?;
    let nl = Netlink::connect()?;
    let mut applier = Applier::new(nl, Nft::new(TUNNEL_DEVICE), tunnel);

    if args.once {
        let report = applier.apply(&plan).await?;
        for problem in &report.problems {
            log(format!("problem: {problem}"));
        }
        let diffs = applier.verify(&plan).await?;
        if !diffs.is_empty() {
            for d in &diffs {
                log(format!("kernel differs from the plan: {d}"));
            }
            bail!("the kernel does not match the plan of node {}", args.node);
        }
        if !report.problems.is_empty() {
            bail!(
                "the plan of node {} cannot be carried out: {}",
                args.node,
                report.problems.join("; ")
            );
        }
        log(format!(
            "node {}: plan applied ({} changes), kernel matches",
            args.node, report.changes
        ));
        return Ok(());
    }

    let health = health_server(args).await?;
    let metrics = start_metrics(&args.metrics_bind_address).await?;
    let metrics = metrics.as_ref();
    // A second handle for reading host addresses (the applier owns the first).
    let nl = Netlink::connect()?;
    let mut routes = Subscription::new(&[Family::V4, Family::V6])?;
    let report = apply(&mut applier, &plan, metrics).await?;
    for problem in &report.problems {
        log(format!("problem: {problem}"));
    }
    log(format!(
        "node {}: plan applied ({} changes); watching {}",
        args.node,
        report.changes,
        source.describe()
    ));
    source.publish_addressing(args, &nl, &plan).await;

    let mut resync = tokio::time::interval(Duration::from_secs(args.resync_seconds.max(1)));
    resync.reset();
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            next = source.next(args) => {
                let Some(new_plan) = next else {
                    bail!("the source of plans ended");
                };
                if new_plan != plan {
                    plan = new_plan;
                    match apply(&mut applier, &plan, metrics).await {
                        Ok(r) => log(format!("plan changed: {} changes", r.changes)),
                        Err(e) => log(format!("applying: {e}")),
                    }
                }
                source.publish_addressing(args, &nl, &plan).await;
            }
            change = routes.next() => {
                match change {
                    Some(Change::Route(_) | Change::RouteRemoved(_) | Change::Link(_)
                        | Change::LinkRemoved(_) | Change::Resync) => {
                        // Only main-table changes matter (our own tables echo back too); the
                        // refresh is a no-op when the copies already match.
                        match applier.refresh_link_tables(&plan).await {
                            Ok(0) => {}
                            Ok(n) => log(format!("secondary link routes changed: {n} tables updated")),
                            Err(e) => log(format!("following link routes: {e}")),
                        }
                    }
                    Some(Change::Address(_) | Change::AddressRemoved(_)) => {
                        match applier.refresh_link_tables(&plan).await {
                            Ok(0) => {}
                            Ok(n) => log(format!("secondary link routes changed: {n} tables updated")),
                            Err(e) => log(format!("following link routes: {e}")),
                        }
                        source.publish_addressing(args, &nl, &plan).await;
                    }
                    None => {
                        log("route notifications ended; subscribing again");
                        routes = Subscription::new(&[Family::V4, Family::V6])?;
                        let _ = apply(&mut applier, &plan, metrics).await;
                    }
                }
            }
            _ = resync.tick() => {
                match applier.verify(&plan).await {
                    Ok(diffs) if diffs.is_empty() => {}
                    Ok(diffs) => {
                        log(format!("repairing: {}", diffs.join("; ")));
                        if let Err(e) = apply(&mut applier, &plan, metrics).await {
                            log(format!("applying: {e}"));
                        }
                    }
                    Err(e) => log(format!("checking: {e}")),
                }
            }
        }
    }
    // The health server stops with the process; the kernel state stays.
    drop(health);
    log("stopping; the data plane stays in place");
    Ok(())
}
