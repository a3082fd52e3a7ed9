//! `kube-egress controller --dataplane ovn`: the egress plan of a cluster as OVN Northbound rows.
//!
//! The cluster comes from a directory of manifests (`--manifests DIR`, the agent's file source).
//! The engine plans it (EgressIPs that carry `status.items` keep valid assignments), the OVN
//! mapping turns the plan into the rows ovnkube writes for the default network, and the reconciler
//! writes the difference to the Northbound database in one transaction. Only rows owned by the
//! Egress IP feature (`k8s.ovn.org/owner-type=EgressIP`) are changed; the topology (routers,
//! switches, ports) must exist. With `--once` it exits 0 when the database matches the plan.
//! Otherwise it follows the manifests and the database (repairing changes others make to our rows)
//! until SIGTERM/SIGINT, leaving the rows in place.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ipnet::IpNet;
use kube_egress_engine::{Config, Engine, Family};
use kube_egress_ovn::{
    ClusterState, OvnNode, Reconciler, Report, cluster_state, default_join_subnets, desired,
};

use crate::agent_cmd::fingerprint;
use crate::manifests::Manifests;

/// What `kube-egress controller --dataplane ovn` was asked to do.
#[derive(Debug, Clone)]
pub struct OvnRun {
    pub nb: Option<String>,
    pub join_subnets: Vec<IpNet>,
    pub manifests: PathBuf,
    pub once: bool,
    pub cluster_cidrs: Vec<IpNet>,
    pub service_cidrs: Vec<IpNet>,
    pub unreachable: Vec<String>,
}

fn log(message: impl AsRef<str>) {
    eprintln!("kube-egress controller: {}", message.as_ref());
}

/// The cluster state the manifests describe.
fn cluster(run: &OvnRun) -> Result<ClusterState> {
    let manifests = Manifests::load([&run.manifests])?;
    for warning in &manifests.warnings {
        log(format!("warning: {warning}"));
    }
    let mut snapshot = manifests.snapshot();
    snapshot.unreachable = run.unreachable.clone();
    let pods = snapshot.pods.clone();
    let config = Config {
        cluster_cidrs: run.cluster_cidrs.clone(),
        service_cidrs: run.service_cidrs.clone(),
    };
    let mut engine = Engine::load(config, snapshot);
    for event in engine.take_changes().events {
        log(format!(
            "event {} {} {}: {}",
            event.kind, event.name, event.reason, event.message
        ));
    }
    let join = if run.join_subnets.is_empty() {
        default_join_subnets()
    } else {
        run.join_subnets.clone()
    };
    Ok(cluster_state(
        &engine,
        &pods,
        manifests.nodes.iter().map(OvnNode::from_node).collect(),
        run.cluster_cidrs.iter().map(IpNet::trunc).collect(),
        join.iter().map(IpNet::trunc).collect(),
    ))
}

fn check_args(run: &OvnRun) -> Result<String> {
    let Some(nb) = run.nb.clone() else {
        bail!("--ovn-nb tcp:HOST:PORT|unix:PATH is required with --dataplane ovn");
    };
    if run.cluster_cidrs.is_empty() {
        bail!(
            "--cluster-cidr is required with --dataplane ovn: the priority 102 policies name \
             ovnkube's cluster subnets (e.g. --cluster-cidr 10.244.0.0/16)"
        );
    }
    for family in [Family::V4, Family::V6] {
        if run
            .join_subnets
            .iter()
            .filter(|n| Family::of(&n.addr()) == family)
            .count()
            > 1
        {
            bail!("--ovn-join-subnet: at most one join subnet per IP family");
        }
    }
    Ok(nb)
}

fn log_report(report: &Report) {
    for change in &report.changes {
        log(format!("  {change}"));
    }
    for warning in &report.warnings {
        log(format!("warning: {warning}"));
    }
    for problem in &report.problems {
        log(format!("problem: {problem}"));
    }
}

pub fn run(run: &OvnRun) -> Result<()> {
    let nb = check_args(run)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(controller(run, &nb))
}

async fn controller(run: &OvnRun, nb: &str) -> Result<()> {
    let state = cluster(run)?;
    let mut reconciler = Reconciler::connect(nb)
        .await
        .with_context(|| format!("connecting to the OVN Northbound database at {nb}"))?;
    let mut want = desired(&state, &reconciler.options());
    let report = reconciler
        .reconcile(&want)
        .await
        .with_context(|| format!("writing to the OVN Northbound database at {nb}"))?;
    log_report(&report);
    log(format!(
        "{} rows planned; {} operations in {} transaction(s)",
        want.len(),
        report.operations,
        report.transactions
    ));

    if run.once {
        let differences = reconciler.verify(&want)?;
        for d in &differences {
            log(format!("differs: {d}"));
        }
        if !differences.is_empty() {
            bail!(
                "the Northbound database does not match the plan ({} differences)",
                differences.len()
            );
        }
        if !report.problems.is_empty() {
            bail!(
                "the plan cannot be carried out in the Northbound database: {}",
                report.problems.join("; ")
            );
        }
        log("the Northbound database matches the plan");
        return Ok(());
    }

    let mut seen = fingerprint(&run.manifests);
    let mut poll = tokio::time::interval(Duration::from_millis(500));
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    log(format!("watching {} and {nb}", run.manifests.display()));
    loop {
        let mut changed = false;
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = poll.tick() => {
                let now = fingerprint(&run.manifests);
                if now != seen {
                    seen = now;
                    match cluster(run) {
                        Ok(state) => {
                            want = desired(&state, &reconciler.options());
                            changed = true;
                        }
                        Err(e) => log(format!("manifests not applied: {e:#}")),
                    }
                }
            }
            result = reconciler.monitor_mut().changed() => {
                // Someone changed the database (our own writes plan to nothing), or the
                // connection was lost: reconcile reconnects with a full resync.
                if let Err(e) = result {
                    log(format!("Northbound database: {e}; reconnecting"));
                }
                changed = true;
            }
        }
        if changed {
            match reconciler.reconcile(&want).await {
                Ok(report) if report.operations > 0 => {
                    log(format!(
                        "reconciled: {} operations in one transaction",
                        report.operations
                    ));
                    log_report(&report);
                }
                Ok(_) => {}
                Err(e) => {
                    log(format!("reconciling: {e}"));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
    log("stopping; the Northbound rows stay in place");
    Ok(())
}
