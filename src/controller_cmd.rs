//! `kube-egress controller`: the cluster-wide controller.
//!
//! For now it programs the OVN data plane (`--dataplane ovn`) from a directory of manifests
//! (`--manifests DIR`); the Kubernetes source comes later under the same subcommand.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};
use ipnet::IpNet;

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
    /// The data plane to program.
    #[arg(long, value_enum, default_value_t = Dataplane::Linux)]
    pub dataplane: Dataplane,
    /// OVN Northbound database, `tcp:HOST:PORT` or `unix:PATH` (with --dataplane ovn).
    #[arg(long = "ovn-nb", value_name = "ENDPOINT", env = "KUBE_EGRESS_OVN_NB")]
    pub ovn_nb: Option<String>,
    /// Join switch subnet per family (with --dataplane ovn; default: ovnkube's 100.64.0.0/16 and
    /// fd98::/64). Repeatable.
    #[arg(long = "ovn-join-subnet", value_name = "CIDR")]
    pub ovn_join_subnets: Vec<IpNet>,
}

#[derive(Debug, Args)]
pub struct ControllerArgs {
    #[command(flatten)]
    pub dataplane: DataplaneArgs,
    /// Directory (or file) of manifests describing the cluster; re-read when it changes.
    #[arg(long, value_name = "DIR")]
    pub manifests: Option<PathBuf>,
    /// Reconcile once, check that the data plane matches the plan, and exit (0 when it does).
    #[arg(long)]
    pub once: bool,
    /// Pod network(s): ovnkube's cluster subnets (required with --dataplane ovn).
    #[arg(long = "cluster-cidr", value_name = "CIDR")]
    pub cluster_cidrs: Vec<IpNet>,
    /// Service network(s).
    #[arg(long = "service-cidr", value_name = "CIDR")]
    pub service_cidrs: Vec<IpNet>,
    /// Nodes that failed their reachability probe (their egress IPs move elsewhere).
    #[arg(long = "unreachable", value_name = "NODE")]
    pub unreachable: Vec<String>,
}

pub fn run(args: &ControllerArgs) -> Result<()> {
    match args.dataplane.dataplane {
        Dataplane::Ovn => {
            let Some(manifests) = &args.manifests else {
                bail!(
                    "--manifests DIR is required: the controller reads the cluster from manifests"
                );
            };
            ovn_cmd::run(&ovn_cmd::OvnRun {
                nb: args.dataplane.ovn_nb.clone(),
                join_subnets: args.dataplane.ovn_join_subnets.clone(),
                manifests: manifests.clone(),
                once: args.once,
                cluster_cidrs: args.cluster_cidrs.clone(),
                service_cidrs: args.service_cidrs.clone(),
                unreachable: args.unreachable.clone(),
            })
        }
        Dataplane::Linux => bail!(
            "the controller does not program the Linux data plane: run `kube-egress agent` on \
             every node, or use --dataplane ovn"
        ),
    }
}
