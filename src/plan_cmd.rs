//! `kube-egress plan`: the egress state that a set of manifests leads to, computed offline.
//!
//! The manifests are converted to the engine's model and loaded in one pass, exactly as the
//! controller does after a restart: `status.items` already present in the input are honoured, so a
//! plan over a cluster dump shows which assignments would stay and which would move.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use ipnet::IpNet;
use kube_egress_api::{EGRESSIP_MARK_ANNOTATION, EgressIP, EgressIPStatus};
use kube_egress_engine::{Config, Engine, Event, Family, NodeInfo, NodePlan, PodInfo, SubnetKind};
use serde::Serialize;

use crate::manifests::Manifests;

#[derive(Debug, Clone, clap::Args)]
pub struct PlanArgs {
    /// Manifest file or directory (its *.yaml, *.yml and *.json files); `-` reads standard input.
    /// Repeatable.
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "FILE_OR_DIR",
        required = true
    )]
    pub files: Vec<PathBuf>,

    /// Every node passes its reachability probe (the default).
    #[arg(long, conflicts_with = "unreachable")]
    pub reachable_all: bool,

    /// Plan as if NODE failed its reachability probe. Repeatable; also comma-separated.
    #[arg(long, value_name = "NODE", value_delimiter = ',')]
    pub unreachable: Vec<String>,

    /// Pod network never steered (in addition to the nodes' spec.podCIDRs). Repeatable.
    #[arg(long = "cluster-cidr", value_name = "CIDR")]
    pub cluster_cidrs: Vec<IpNet>,

    /// Service network never steered (in addition to ServiceCIDR objects). Repeatable.
    #[arg(long = "service-cidr", value_name = "CIDR")]
    pub service_cidrs: Vec<IpNet>,

    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Tables for people.
    Text,
    /// One JSON object: egressIPs, events, nodes.
    Json,
    /// The JSON document as YAML.
    Yaml,
}

pub fn run(args: &PlanArgs) -> Result<()> {
    let manifests = Manifests::load(&args.files)?;
    for warning in &manifests.warnings {
        eprintln!("warning: {warning}");
    }
    if manifests.is_empty() {
        eprintln!("warning: the input holds no objects to plan");
    }
    let config = Config {
        cluster_cidrs: args.cluster_cidrs.clone(),
        service_cidrs: args.service_cidrs.clone(),
        ..Config::default()
    };
    let plan = Plan::compute(&manifests, &args.unreachable, config)?;
    let text = match args.output {
        OutputFormat::Text => plan.to_text(),
        OutputFormat::Json => {
            let mut s = serde_json::to_string_pretty(&plan.document)?;
            s.push('\n');
            s
        }
        OutputFormat::Yaml => serde_saphyr::to_string(&plan.document)?,
    };
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        // `kube-egress plan ... | head` is fine.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing the plan"),
    }
}

/// What `-o json` and `-o yaml` print.
#[derive(Debug, Clone, Serialize)]
pub struct PlanDocument {
    /// The input EgressIP objects in input order, with `status.items` and the
    /// `k8s.ovn.org/egressip-mark` annotation as the controller would write them. Objects pass
    /// through the typed API, so fields it does not know (reported as warnings when loading) are
    /// dropped, as the API server prunes them from a structural CRD.
    #[serde(rename = "egressIPs")]
    pub egress_ips: Vec<EgressIP>,
    /// The Events the controller would publish.
    pub events: Vec<Event>,
    /// The plan of every node.
    pub nodes: BTreeMap<String, NodePlan>,
}

/// Why a node does or does not host egress IPs.
#[derive(Debug, Clone)]
struct NodeState {
    assignable: bool,
    ready: bool,
    reachable: bool,
    eligible: bool,
}

/// A computed plan.
#[derive(Debug, Clone)]
pub struct Plan {
    pub document: PlanDocument,
    node_states: BTreeMap<String, NodeState>,
    /// Pod IP → `namespace/name`, to name steered pods.
    pods_by_ip: BTreeMap<IpAddr, String>,
}

impl Plan {
    /// Runs the engine over the manifests. `unreachable` names nodes that fail their probe.
    pub fn compute(manifests: &Manifests, unreachable: &[String], config: Config) -> Result<Plan> {
        let nodes: Vec<NodeInfo> = manifests.nodes.iter().map(NodeInfo::from_node).collect();
        for name in unreachable {
            if !nodes.iter().any(|n| &n.name == name) {
                let known: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
                bail!(
                    "--unreachable {name}: no such node in the input (nodes: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                );
            }
        }
        let pods: Vec<PodInfo> = manifests.pods.iter().map(PodInfo::from_pod).collect();
        let pods_by_ip = pods
            .iter()
            .flat_map(|p| p.ips.iter().map(move |ip| (*ip, p.key())))
            .collect();
        let mut snapshot = manifests.snapshot();
        snapshot.unreachable = unreachable.to_vec();
        let mut engine = Engine::load(config, snapshot);
        let events = engine.take_changes().events;

        let egress_ips = manifests
            .egress_ips
            .iter()
            .map(|eip| {
                let mut eip = eip.clone();
                let name = eip.metadata.name.clone().unwrap_or_default();
                eip.status = Some(EgressIPStatus {
                    items: engine.status(&name).unwrap_or_default(),
                });
                if let Some(mark) = engine.mark(&name) {
                    eip.metadata
                        .annotations
                        .get_or_insert_default()
                        .insert(EGRESSIP_MARK_ANNOTATION.to_string(), mark.to_string());
                }
                eip
            })
            .collect();
        let node_plans = engine
            .node_names()
            .into_iter()
            .map(|name| {
                let plan = engine.node_plan(&name);
                (name, plan)
            })
            .collect();
        let node_states = nodes
            .iter()
            .map(|n| {
                let state = NodeState {
                    assignable: n.egress_assignable(),
                    ready: n.ready,
                    reachable: !unreachable.contains(&n.name),
                    eligible: engine.node_eligible(&n.name),
                };
                (n.name.clone(), state)
            })
            .collect();
        Ok(Plan {
            document: PlanDocument {
                egress_ips,
                events,
                nodes: node_plans,
            },
            node_states,
            pods_by_ip,
        })
    }

    /// The human-readable form: a `kubectl get egressip` table, the Events, a summary per node.
    pub fn to_text(&self) -> String {
        let mut out = String::new();

        if self.document.egress_ips.is_empty() {
            out.push_str("No EgressIP objects.\n");
        } else {
            let mut rows = vec![row([
                "NAME",
                "EGRESSIPS",
                "ASSIGNED NODE",
                "ASSIGNED EGRESSIPS",
            ])];
            for eip in &self.document.egress_ips {
                let items = eip.status.as_ref().map(|s| &s.items[..]).unwrap_or(&[]);
                rows.push(vec![
                    eip.metadata.name.clone().unwrap_or_default(),
                    eip.spec.egress_ips.join(","),
                    join(items.iter().map(|i| &i.node)),
                    join(items.iter().map(|i| &i.egress_ip)),
                ]);
            }
            out.push_str(&table(&rows, 0));
        }

        out.push('\n');
        if self.document.events.is_empty() {
            out.push_str("No events.\n");
        } else {
            out.push_str("Events:\n");
            let mut rows = vec![row(["TYPE", "REASON", "OBJECT", "MESSAGE"])];
            for e in &self.document.events {
                let object = match &e.namespace {
                    Some(ns) => format!("{}/{ns}/{}", e.kind, e.name),
                    None => format!("{}/{}", e.kind, e.name),
                };
                rows.push(vec![
                    e.type_.clone(),
                    e.reason.clone(),
                    object,
                    e.message.clone(),
                ]);
            }
            out.push_str(&table(&rows, 2));
        }

        out.push('\n');
        if self.document.nodes.is_empty() {
            out.push_str("No nodes.\n");
        } else {
            out.push_str("Nodes:\n");
            for (name, plan) in &self.document.nodes {
                self.node_text(name, plan, &mut out);
            }
        }
        out
    }

    fn node_text(&self, name: &str, plan: &NodePlan, out: &mut String) {
        let role = match self.node_states.get(name) {
            Some(s) if s.eligible => "egress node".to_string(),
            Some(s) => {
                let mut why = Vec::new();
                if !s.assignable {
                    why.push("not labelled k8s.ovn.org/egress-assignable");
                }
                if !s.ready {
                    why.push("not Ready");
                }
                if !s.reachable {
                    why.push("unreachable");
                }
                if why.is_empty() {
                    why.push("not eligible");
                }
                format!("not an egress node: {}", why.join(", "))
            }
            None => "unknown node".to_string(),
        };
        out.push_str(&format!("  {name} ({role})\n"));

        if plan.egress_ips.is_empty() {
            out.push_str("    egress IPs: none\n");
        } else {
            out.push_str("    egress IPs:\n");
            let rows: Vec<Vec<String>> = plan
                .egress_ips
                .iter()
                .map(|h| {
                    let kind = match h.kind {
                        SubnetKind::Primary => "primary",
                        SubnetKind::Secondary => "secondary",
                    };
                    vec![
                        h.ip.to_string(),
                        h.egress_ip.clone(),
                        kind.to_string(),
                        h.subnet.to_string(),
                        h.mark.map(|m| format!("mark {m}")).unwrap_or_default(),
                    ]
                })
                .collect();
            out.push_str(&table(&rows, 6));
        }

        out.push_str(&format!(
            "    SNAT: {} entr{}\n",
            plan.snat.len(),
            if plan.snat.len() == 1 { "y" } else { "ies" },
        ));

        if plan.steering.is_empty() {
            out.push_str("    steered pods: none\n");
        } else {
            out.push_str("    steered pods:\n");
            let rows: Vec<Vec<String>> = plan
                .steering
                .iter()
                .map(|s| {
                    let family = Family::of(&s.pod_ip);
                    let hops = plan
                        .steering_routes
                        .iter()
                        .find(|r| r.mark == s.mark && r.family == family)
                        .map(|r| {
                            r.next_hops
                                .iter()
                                .map(|h| format!("{} {} ({})", h.node, h.address, h.egress_ip))
                                .collect::<Vec<_>>()
                                .join(", ")
                        })
                        .unwrap_or_default();
                    vec![
                        s.pod_ip.to_string(),
                        self.pods_by_ip.get(&s.pod_ip).cloned().unwrap_or_default(),
                        format!("mark {}", s.mark),
                        format!("-> {hops}"),
                    ]
                })
                .collect();
            out.push_str(&table(&rows, 6));
        }
    }
}

fn row<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

/// Comma-joined, as kubectl prints a `[*]` JSONPath column.
fn join<'a>(values: impl Iterator<Item = &'a String>) -> String {
    values.map(String::as_str).collect::<Vec<_>>().join(",")
}

/// Left-aligned columns separated by three spaces, each line indented.
fn table(rows: &[Vec<String>], indent: usize) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = " ".repeat(indent);
        for (c, cell) in r.iter().enumerate() {
            line.push_str(cell);
            if c + 1 < r.len() {
                let pad = widths[c] - cell.chars().count() + 3;
                line.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_and_trims() {
        let rows = vec![
            row(["NAME", "EGRESSIPS", "NODE"]),
            row(["a-long-name", "1.2.3.4", ""]),
        ];
        assert_eq!(
            table(&rows, 2),
            "  NAME          EGRESSIPS   NODE\n  a-long-name   1.2.3.4\n"
        );
    }
}
