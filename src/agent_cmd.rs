//! `kube-egress agent`: programs this node's egress data plane (Linux kernel) from a source.
//!
//! For now the source is a directory of manifests (`--manifests DIR`), re-read when it changes.
//! The agent computes its node's plan with the engine (EgressIPs that carry `status.items` keep
//! those assignments when they are valid; others are assigned by the engine, deterministically, so
//! every agent reaches the same result) and applies it with the Linux applier in the network
//! namespace it runs in. It follows the main-table routes of secondary links, re-checks the kernel
//! periodically, and on SIGTERM/SIGINT leaves the data plane in place (a restart must not cut
//! traffic); startup adopts what exists.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use clap::Args;
use futures::StreamExt;
use ipnet::IpNet;
use kube_egress_engine::{Config, Engine, Family, NodePlan};
use kube_egress_linux::applier::Applier;
use kube_egress_linux::desired::TUNNEL_DEVICE;
use kube_egress_linux::netlink::{Change, Netlink, Subscription};
use kube_egress_linux::nft::Nft;

use crate::manifests::Manifests;

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The Kubernetes name of the node this agent runs on.
    #[arg(long, env = "KUBE_EGRESS_NODE")]
    pub node: String,
    /// Directory (or file) of manifests describing the cluster; re-read when it changes.
    #[arg(long, value_name = "DIR")]
    pub manifests: PathBuf,
    /// Apply once, check that the kernel matches the plan, and exit (0 when it does).
    #[arg(long)]
    pub once: bool,
    /// Pod network(s) in addition to the nodes' spec.podCIDRs.
    #[arg(long = "cluster-cidr", value_name = "CIDR")]
    pub cluster_cidrs: Vec<IpNet>,
    /// Service network(s).
    #[arg(long = "service-cidr", value_name = "CIDR")]
    pub service_cidrs: Vec<IpNet>,
    /// Nodes that failed their reachability probe (their egress IPs move elsewhere).
    #[arg(long = "unreachable", value_name = "NODE")]
    pub unreachable: Vec<String>,
    /// How often the whole kernel state is checked against the plan.
    #[arg(long, default_value = "60", value_name = "SECONDS")]
    pub resync_seconds: u64,
}

fn log(message: impl AsRef<str>) {
    eprintln!("kube-egress agent: {}", message.as_ref());
}

/// The plan of this node and its tunnel address, from the manifests.
fn compute(args: &AgentArgs) -> Result<(NodePlan, Option<IpAddr>)> {
    let manifests = Manifests::load([&args.manifests])?;
    for warning in &manifests.warnings {
        log(format!("warning: {warning}"));
    }
    let mut snapshot = manifests.snapshot();
    snapshot.unreachable = args.unreachable.clone();
    let Some(node) = snapshot.nodes.iter().find(|n| n.name == args.node) else {
        bail!(
            "node {} is not in {}: give the name of this node with --node",
            args.node,
            args.manifests.display()
        );
    };
    let tunnel = node
        .tunnel_address()
        .filter(|a| Family::of(a) == Family::V4);
    let config = Config {
        cluster_cidrs: args.cluster_cidrs.clone(),
        service_cidrs: args.service_cidrs.clone(),
    };
    let mut engine = Engine::load(config, snapshot);
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

pub fn run(args: &AgentArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(agent(args))
}

async fn agent(args: &AgentArgs) -> Result<()> {
    let (mut plan, tunnel) = compute(args)?;
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

    let mut routes = Subscription::new(&[Family::V4, Family::V6])?;
    let report = applier.apply(&plan).await?;
    for problem in &report.problems {
        log(format!("problem: {problem}"));
    }
    log(format!(
        "node {}: plan applied ({} changes); watching {}",
        args.node,
        report.changes,
        args.manifests.display()
    ));

    let mut seen = fingerprint(&args.manifests);
    let mut poll = tokio::time::interval(Duration::from_millis(500));
    let mut resync = tokio::time::interval(Duration::from_secs(args.resync_seconds.max(1)));
    resync.reset();
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = poll.tick() => {
                let now = fingerprint(&args.manifests);
                if now == seen {
                    continue;
                }
                seen = now;
                match compute(args) {
                    Ok((new_plan, _)) => {
                        plan = new_plan;
                        match applier.apply(&plan).await {
                            Ok(r) => log(format!("manifests changed: {} changes", r.changes)),
                            Err(e) => log(format!("applying: {e}")),
                        }
                    }
                    Err(e) => log(format!("manifests not applied: {e:#}")),
                }
            }
            change = routes.next() => {
                match change {
                    Some(Change::Route(_) | Change::RouteRemoved(_) | Change::Link(_)
                        | Change::LinkRemoved(_) | Change::Address(_)
                        | Change::AddressRemoved(_) | Change::Resync) => {
                        // Only main-table changes matter (our own tables echo back too); the
                        // refresh is a no-op when the copies already match.
                        match applier.refresh_link_tables(&plan).await {
                            Ok(0) => {}
                            Ok(n) => log(format!("secondary link routes changed: {n} tables updated")),
                            Err(e) => log(format!("following link routes: {e}")),
                        }
                    }
                    None => {
                        log("route notifications ended; subscribing again");
                        routes = Subscription::new(&[Family::V4, Family::V6])?;
                        let _ = applier.apply(&plan).await;
                    }
                }
            }
            _ = resync.tick() => {
                match applier.verify(&plan).await {
                    Ok(diffs) if diffs.is_empty() => {}
                    Ok(diffs) => {
                        log(format!("repairing: {}", diffs.join("; ")));
                        if let Err(e) = applier.apply(&plan).await {
                            log(format!("applying: {e}"));
                        }
                    }
                    Err(e) => log(format!("checking: {e}")),
                }
            }
        }
    }
    log("stopping; the data plane stays in place");
    Ok(())
}
