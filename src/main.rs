//! `kube-egress`: stable, chosen source IPs for traffic leaving a Kubernetes cluster.
//!
//! One binary, one subcommand per role. Each subcommand lives in its own module with a clap
//! `Args` struct and a `run` function; this file only dispatches.

mod agent_cmd;
mod controller_cmd;
mod manifests;
mod ovn_cmd;
mod plan_cmd;

use std::process::ExitCode;

/// mimalloc: the engine allocates many small objects; it plans a large cluster about 1.3x faster
/// than the system allocator (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "kube-egress", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Compute EgressIP statuses, Events and per-node plans from manifests, offline.
    Plan(plan_cmd::PlanArgs),
    /// Program this node's egress data plane (Linux) and keep it in line with the plan.
    Agent(agent_cmd::AgentArgs),
    /// Program the cluster-wide data plane (OVN Northbound) from the cluster's state.
    Controller(controller_cmd::ControllerArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Plan(args) => plan_cmd::run(args),
        Command::Agent(args) => agent_cmd::run(args),
        Command::Controller(args) => controller_cmd::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
