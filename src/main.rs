//! `kube-egress`: stable, chosen source IPs for traffic leaving a Kubernetes cluster.
//!
//! One binary, one subcommand per role. Each subcommand lives in its own module with a clap
//! `Args` struct and a `run` function; this file only dispatches.

mod agent_cmd;
mod controller_cmd;
mod lab_cmd;
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
    /// Assign egress IPs cluster-wide on Kubernetes (statuses, marks, Events; one Lease
    /// holder writes), or program OVN Northbound from manifests (`--dataplane ovn`).
    Controller(controller_cmd::ControllerArgs),
    /// Build a 3-node cluster in network namespaces, show egress IPs working and failing over,
    /// and remove it (needs root; never touches the host's own network namespace).
    Lab(lab_cmd::LabArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Plan(args) => plan_cmd::run(args).map(|()| 0),
        Command::Agent(args) => agent_cmd::run(args).map(|()| 0),
        Command::Controller(args) => controller_cmd::run(args).map(|()| 0),
        Command::Lab(args) => lab_cmd::run(args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
