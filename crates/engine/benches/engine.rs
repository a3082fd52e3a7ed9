//! Engine benchmark: a generated cluster (5,000 nodes / 20,000 EgressIPs / 200,000 pods by
//! default), planned from scratch and then changed one object at a time.
//!
//! ```text
//! cargo bench -p kube-egress-engine --bench engine
//! cargo bench -p kube-egress-engine --bench engine -- --nodes 500 --eips 2000 --pods 20000
//! ```
//!
//! Sizes come from `--nodes/--eips/--pods/--namespaces/--runs/--iterations/--seed` or the
//! environment (`BENCH_NODES`, `BENCH_EIPS`, ...). Each full-plan measurement runs in a fresh child
//! process (`--only full`) so that its peak memory (VmHWM) is its own; the incremental operations
//! run in this process. Results are sanity-checked: the process exits non-zero when the engine
//! produced something wrong, since a benchmark of a broken engine is worthless.

/// The allocator of the `kube-egress` binary, so the figures are the product's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use ipnet::{IpNet, Ipv4Net};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use kube_egress_api::{EGRESS_ASSIGNABLE_LABEL, Selector};
use kube_egress_engine::event::reason;
use kube_egress_engine::{
    Config, EgressIpInfo, Engine, MARK_RANGE, NamespaceInfo, NodeInfo, NodePlan, PodInfo, Snapshot,
};

const TARGET_FULL: Duration = Duration::from_secs(1);
const TARGET_OP: Duration = Duration::from_millis(1);

// -------------------------------------------------------------------------------------------
// Arguments

#[derive(Debug, Clone)]
struct Args {
    nodes: usize,
    eips: usize,
    pods: usize,
    namespaces: usize,
    runs: usize,
    iterations: usize,
    seed: u64,
    only: Option<String>,
}

impl Args {
    fn parse() -> Result<Args, String> {
        let env = |name: &str, default: usize| -> Result<usize, String> {
            match std::env::var(name) {
                Ok(v) => v
                    .parse()
                    .map_err(|_| format!("{name}={v:?} is not a number")),
                Err(_) => Ok(default),
            }
        };
        let mut args = Args {
            nodes: env("BENCH_NODES", 5_000)?,
            eips: env("BENCH_EIPS", 20_000)?,
            pods: env("BENCH_PODS", 200_000)?,
            namespaces: env("BENCH_NAMESPACES", 0)?,
            runs: env("BENCH_RUNS", 3)?,
            iterations: env("BENCH_ITERATIONS", 1_000)?,
            seed: env("BENCH_SEED", 42)? as u64,
            only: std::env::var("BENCH_ONLY").ok(),
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            // `cargo bench` passes `--bench`; test-harness style filters are ignored too.
            if flag == "--bench" || !flag.starts_with("--") {
                continue;
            }
            let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
            let num = || {
                value
                    .parse::<usize>()
                    .map_err(|_| format!("{flag} {value:?}: not a number"))
            };
            match flag.as_str() {
                "--nodes" => args.nodes = num()?,
                "--eips" => args.eips = num()?,
                "--pods" => args.pods = num()?,
                "--namespaces" => args.namespaces = num()?,
                "--runs" => args.runs = num()?,
                "--iterations" => args.iterations = num()?,
                "--seed" => args.seed = num()? as u64,
                "--only" => args.only = Some(value.clone()),
                _ => return Err(format!("unknown argument {flag}")),
            }
        }
        if args.namespaces == 0 {
            args.namespaces = (args.pods / 100).max(4);
        }
        if args.nodes < 10 || args.eips == 0 || args.namespaces < 4 || args.runs == 0 {
            return Err("need --nodes >= 10, --eips >= 1, --namespaces >= 4, --runs >= 1".into());
        }
        Ok(args)
    }

    fn size_args(&self) -> Vec<String> {
        [
            ("--nodes", self.nodes as u64),
            ("--eips", self.eips as u64),
            ("--pods", self.pods as u64),
            ("--namespaces", self.namespaces as u64),
            ("--iterations", self.iterations as u64),
            ("--seed", self.seed),
        ]
        .iter()
        .flat_map(|(k, v)| [k.to_string(), v.to_string()])
        .collect()
    }
}

// -------------------------------------------------------------------------------------------
// Cluster generation

/// splitmix64: deterministic and good enough to spread pods and picks.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn v4(a: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(a))
}

fn net4(a: u32, len: u8) -> IpNet {
    IpNet::V4(Ipv4Net::new(Ipv4Addr::from(a), len).expect("valid prefix"))
}

/// A primary node network and what is still free in it for egress IPs (taken from the top down).
struct Subnet {
    base: u32,
    prefix: u8,
    assignable: usize,
    /// First address not used by a node or the gateway.
    low: u32,
    /// Next egress IP to hand out, downwards; `low..=top` is free.
    top: u32,
}

impl Subnet {
    fn free(&self) -> usize {
        (self.top + 1).saturating_sub(self.low) as usize
    }
}

/// The generated cluster plus what the measurements need to know about it.
struct Cluster {
    snapshot: Snapshot,
    node_names: Vec<String>,
    assignable: Vec<usize>,
    subnets: usize,
    secondary_nodes: usize,
    secondary_networks: usize,
    pod_cidr_base: Vec<u32>,
    pod_next: Vec<u32>,
    pod_cidr_len: u8,
    namespaces: Vec<NamespaceInfo>,
    /// First pod of each namespace: name and app index.
    first_pod: Vec<Option<(String, usize)>>,
    teams: usize,
    apps: usize,
    eips: usize,
    eip_names: Vec<String>,
    eip_ip_count: Vec<usize>,
    total_ips: usize,
    expected_served: usize,
    expected_snat: usize,
}

fn namespace_name(i: usize) -> String {
    format!(
        "t{}-{}",
        i / 2,
        if i.is_multiple_of(2) { "prod" } else { "dev" }
    )
}

fn namespace_labels(name: &str, team: usize, prod: bool) -> BTreeMap<String, String> {
    labels(&[
        ("team", &format!("t{team}")),
        ("env", if prod { "prod" } else { "dev" }),
        ("kubernetes.io/metadata.name", name),
    ])
}

fn eip_name(team: usize, app: usize) -> String {
    format!("egress-t{team}-app{app}")
}

impl Cluster {
    /// The EgressIP (index) that serves a pod with app `app` in a namespace of `team`/`env`; mirrors
    /// the selectors built in [`Cluster::egress_ip`]. No pod is matched by two objects.
    fn expected_eip(&self, team: usize, prod: bool, app: usize) -> Option<usize> {
        let j0 = team * self.apps;
        if team.is_multiple_of(4) {
            // K=0 takes the whole prod namespace; K>0 objects select only the dev namespace.
            if prod {
                return (j0 < self.eips).then_some(j0);
            }
            let j = j0 + app;
            return (app != 0 && j < self.eips).then_some(j);
        }
        let j = j0 + app;
        if j >= self.eips {
            return None;
        }
        match app % 5 {
            1 => prod.then_some(j),
            2 => (!prod).then_some(j),
            _ => Some(j),
        }
    }

    fn egress_ip(&self, j: usize, ips: Vec<String>) -> EgressIpInfo {
        let (team, app) = (j / self.apps, j % self.apps);
        let team_label = || Some(labels(&[("team", &format!("t{team}"))]));
        let env = |op: &str| {
            Some(vec![LabelSelectorRequirement {
                key: "env".into(),
                operator: op.into(),
                values: Some(vec!["prod".into()]),
            }])
        };
        let app_labels = LabelSelector {
            match_labels: Some(labels(&[("app", &format!("app{app}"))])),
            match_expressions: None,
        };
        let (ns, pod) = if team.is_multiple_of(4) && app == 0 {
            let ns = LabelSelector {
                match_labels: team_label(),
                match_expressions: env("In"),
            };
            (ns, None)
        } else if team.is_multiple_of(4) {
            let ns = LabelSelector {
                match_labels: team_label(),
                match_expressions: env("NotIn"),
            };
            (ns, Some(app_labels))
        } else {
            match app % 5 {
                1 | 2 => {
                    let ns = LabelSelector {
                        match_labels: team_label(),
                        match_expressions: env(if app % 5 == 1 { "In" } else { "NotIn" }),
                    };
                    (ns, Some(app_labels))
                }
                3 => {
                    let ns = LabelSelector {
                        match_labels: team_label(),
                        match_expressions: None,
                    };
                    let pod = LabelSelector {
                        match_labels: None,
                        match_expressions: Some(vec![LabelSelectorRequirement {
                            key: "app".into(),
                            operator: "In".into(),
                            values: Some(vec![format!("app{app}")]),
                        }]),
                    };
                    (ns, Some(pod))
                }
                _ => {
                    let ns = LabelSelector {
                        match_labels: team_label(),
                        match_expressions: None,
                    };
                    (ns, Some(app_labels))
                }
            }
        };
        EgressIpInfo {
            name: eip_name(team, app),
            created: Some(1_700_000_000 + j as i64),
            ips,
            namespace_selector: Selector::compile(&ns, "spec.namespaceSelector"),
            pod_selector: Selector::compile_optional(pod.as_ref(), "spec.podSelector"),
            status: Vec::new(),
            mark: None,
            problems: Vec::new(),
        }
    }

    fn generate(args: &Args) -> Result<Cluster, String> {
        let mut rng = Rng(args.seed);

        // Primary networks /22–/24 in 172.16.0.0/12, one node per ten addresses; the gateway is
        // .1, nodes follow, egress IPs come from the top of each network.
        let prefixes = [22u8, 24, 23, 24, 22, 23];
        let space_end = u32::from(Ipv4Addr::new(172, 31, 255, 255));
        let mut cursor = u32::from(Ipv4Addr::new(172, 16, 0, 0));
        let mut subnets: Vec<Subnet> = Vec::new();
        let mut node_subnet: Vec<usize> = Vec::with_capacity(args.nodes);
        let mut node_ip: Vec<u32> = Vec::with_capacity(args.nodes);
        while node_ip.len() < args.nodes {
            let prefix = prefixes[subnets.len() % prefixes.len()];
            let size = 1u32 << (32 - prefix);
            cursor = cursor.div_ceil(size) * size;
            if cursor + size - 1 > space_end {
                return Err("too many nodes for 172.16.0.0/12".into());
            }
            let members = ((size - 2) as usize / 10).min(args.nodes - node_ip.len());
            let mut assignable = 0;
            for i in 0..members {
                if node_ip.len().is_multiple_of(5) {
                    assignable += 1;
                }
                node_subnet.push(subnets.len());
                node_ip.push(cursor + 2 + i as u32);
            }
            subnets.push(Subnet {
                base: cursor,
                prefix,
                assignable,
                low: cursor + 2 + members as u32,
                top: cursor + size - 2,
            });
            cursor += size;
        }

        // Every fifth node is egress-assignable; every twentieth of those also has a secondary
        // network 192.168.G.0/24 shared by groups of four nodes.
        let assignable: Vec<usize> = (0..args.nodes).step_by(5).collect();
        // (Leftovers join the last group: every secondary network has at least two nodes.)
        let with_secondary: Vec<usize> =
            assignable.iter().step_by(20).take(1000).copied().collect();
        let groups = if with_secondary.len() < 2 {
            0
        } else {
            (with_secondary.len() / 4).max(1)
        };
        let mut secondary_of: HashMap<usize, (usize, u32)> = HashMap::new();
        for (k, &n) in with_secondary.iter().enumerate().filter(|_| groups > 0) {
            let g = (k / 4).min(groups - 1);
            secondary_of.insert(n, (g, (k - g * 4) as u32 + 1));
        }
        let secondary_networks = secondary_of.values().map(|(g, _)| g + 1).max().unwrap_or(0);
        let secondary_base = |g: usize| u32::from(Ipv4Addr::new(192, 168, 0, 0)) + (g as u32) * 256;

        // Namespaces: a prod and a dev namespace per team.
        let namespaces: Vec<NamespaceInfo> = (0..args.namespaces)
            .map(|i| {
                let name = namespace_name(i);
                NamespaceInfo {
                    labels: namespace_labels(&name, i / 2, i.is_multiple_of(2)),
                    name,
                }
            })
            .collect();
        let teams = args.namespaces.div_ceil(2);
        let apps = args.eips.div_ceil(teams).max(1);

        let mut cluster = Cluster {
            snapshot: Snapshot::default(),
            node_names: (0..args.nodes).map(|n| format!("node-{n:05}")).collect(),
            assignable,
            subnets: subnets.len(),
            secondary_nodes: secondary_of.len(),
            secondary_networks,
            pod_cidr_base: Vec::new(),
            pod_next: vec![0; args.nodes],
            pod_cidr_len: 24,
            namespaces,
            first_pod: vec![None; args.namespaces],
            teams,
            apps,
            eips: args.eips,
            eip_names: Vec::with_capacity(args.eips),
            eip_ip_count: Vec::with_capacity(args.eips),
            total_ips: 0,
            expected_served: 0,
            expected_snat: 0,
        };

        // EgressIPs: 1–2 IPs each from primary networks with at least two assignable nodes
        // (round robin over the networks with room), 1% from a secondary network.
        let usable: Vec<usize> = (0..subnets.len())
            .filter(|&s| subnets[s].assignable >= 2)
            .collect();
        if usable.is_empty() {
            return Err("no primary network with two assignable nodes".into());
        }
        let mut secondary_next = vec![10u32; secondary_networks];
        let mut rr = 0usize;
        let mut eips = Vec::with_capacity(args.eips);
        for j in 0..args.eips {
            let mut ips: Vec<String> = Vec::new();
            if j % 100 == 50 && secondary_networks > 0 {
                let g = (j / 100) % secondary_networks;
                if secondary_next[g] < 250 {
                    ips.push(v4(secondary_base(g) + secondary_next[g]).to_string());
                    secondary_next[g] += 1;
                }
            }
            if ips.is_empty() {
                let want = if j.is_multiple_of(2) { 2 } else { 1 };
                let mut tried = 0;
                loop {
                    let s = &mut subnets[usable[rr % usable.len()]];
                    rr += 1;
                    if s.free() >= want {
                        for _ in 0..want {
                            ips.push(v4(s.top).to_string());
                            s.top -= 1;
                        }
                        break;
                    }
                    tried += 1;
                    if tried > usable.len() {
                        return Err(format!(
                            "primary networks are full after {j} EgressIPs; use fewer --eips"
                        ));
                    }
                }
            }
            cluster.eip_names.push(eip_name(j / apps, j % apps));
            cluster.eip_ip_count.push(ips.len());
            cluster.total_ips += ips.len();
            eips.push(cluster.egress_ip(j, ips));
        }

        // Pods: spread over every node at random; one IPv4 address each from the node's pod CIDR.
        let mut pod_node = Vec::with_capacity(args.pods);
        let mut per_node = vec![0u32; args.nodes];
        for _ in 0..args.pods {
            let n = rng.below(args.nodes);
            per_node[n] += 1;
            pod_node.push(n);
        }
        let most = per_node.iter().copied().max().unwrap_or(0) as usize;
        let needed = most + args.iterations.div_ceil(args.nodes) * 4 + 16;
        let host_bits = (needed + 2).next_power_of_two().trailing_zeros().max(8);
        cluster.pod_cidr_len = (32 - host_bits) as u8;
        let pod_space = u32::from(Ipv4Addr::new(10, 128, 0, 0));
        if (args.nodes as u64) << host_bits > 1 << 23 {
            return Err("pod CIDRs do not fit in 10.128.0.0/9".into());
        }
        cluster.pod_cidr_base = (0..args.nodes as u32)
            .map(|n| pod_space + (n << host_bits))
            .collect();

        let nodes: Vec<NodeInfo> = (0..args.nodes)
            .map(|n| {
                let s = &subnets[node_subnet[n]];
                let primary = net4(node_ip[n], s.prefix);
                let mut host_cidrs = vec![primary];
                if let Some((g, host)) = secondary_of.get(&n) {
                    host_cidrs.push(net4(secondary_base(*g) + host, 24));
                }
                let name = cluster.node_names[n].clone();
                let mut l = labels(&[
                    ("kubernetes.io/hostname", &name),
                    ("kubernetes.io/os", "linux"),
                    ("node-role.kubernetes.io/worker", ""),
                    (
                        "topology.kubernetes.io/zone",
                        &format!("zone-{}", node_subnet[n] % 3),
                    ),
                ]);
                if n.is_multiple_of(5) {
                    l.insert(EGRESS_ASSIGNABLE_LABEL.to_string(), String::new());
                }
                NodeInfo {
                    name,
                    labels: l,
                    ready: true,
                    primary: vec![primary],
                    host_cidrs,
                    addresses: vec![v4(node_ip[n])],
                    pod_cidrs: vec![net4(cluster.pod_cidr_base[n], cluster.pod_cidr_len)],
                    unschedulable: false,
                    problems: Vec::new(),
                }
            })
            .collect();
        debug_assert!(subnets.iter().all(|s| s.base < s.low));

        let mut pods = Vec::with_capacity(args.pods);
        for (p, &n) in pod_node.iter().enumerate() {
            let ns = p % args.namespaces;
            let idx = p / args.namespaces;
            let app = idx % apps;
            let name = format!("app{app}-{:08x}-{idx}", p as u32 ^ 0x5bd1_e995);
            if cluster.first_pod[ns].is_none() {
                cluster.first_pod[ns] = Some((name.clone(), app));
            }
            if let Some(j) = cluster.expected_eip(ns / 2, ns.is_multiple_of(2), app) {
                cluster.expected_served += 1;
                cluster.expected_snat += cluster.eip_ip_count[j];
            }
            let ip = cluster.next_pod_ip(n);
            pods.push(PodInfo {
                namespace: cluster.namespaces[ns].name.clone(),
                name,
                labels: labels(&[
                    ("app", &format!("app{app}")),
                    (
                        "pod-template-hash",
                        &format!("{:08x}", app * 2654435761 % (1 << 32)),
                    ),
                ]),
                node: Some(cluster.node_names[n].clone()),
                host_network: false,
                completed: false,
                ips: vec![ip],
            });
        }

        cluster.snapshot = Snapshot {
            nodes,
            namespaces: cluster.namespaces.clone(),
            pods,
            egress_ips: eips,
            service_cidrs: vec![("kubernetes".into(), vec![net4(0x0a60_0000, 12)])],
            unreachable: Vec::new(),
        };
        Ok(cluster)
    }

    fn next_pod_ip(&mut self, node: usize) -> IpAddr {
        let ip = self.pod_cidr_base[node] + 2 + self.pod_next[node];
        self.pod_next[node] += 1;
        assert!(
            self.pod_next[node] + 3 < 1 << (32 - self.pod_cidr_len),
            "pod CIDR of node {node} exhausted"
        );
        v4(ip)
    }
}

fn config() -> Config {
    Config {
        cluster_cidrs: vec!["10.128.0.0/9".parse().expect("cidr")],
        service_cidrs: vec!["10.96.0.0/12".parse().expect("cidr")],
        ..Config::default()
    }
}

// -------------------------------------------------------------------------------------------
// Measurement helpers

fn proc_status_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn mib(kb: u64) -> String {
    format!("{:.0} MiB", kb as f64 / 1024.0)
}

fn fmt_dur(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1_000.0 {
        format!("{us:.1} µs")
    } else if us < 1_000_000.0 {
        format!("{:.2} ms", us / 1e3)
    } else {
        format!("{:.3} s", us / 1e6)
    }
}

struct Stats {
    median: Duration,
    p99: Duration,
    max: Duration,
}

fn stats(samples: &[Duration]) -> Stats {
    let mut v = samples.to_vec();
    v.sort();
    let n = v.len().max(1);
    let at = |q: f64| {
        v.get(((q * n as f64).ceil() as usize).clamp(1, n) - 1)
            .copied()
    };
    Stats {
        median: v.get(v.len() / 2).copied().unwrap_or_default(),
        p99: at(0.99).unwrap_or_default(),
        max: v.last().copied().unwrap_or_default(),
    }
}

fn median_usize(samples: &[usize]) -> usize {
    let mut v = samples.to_vec();
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

fn verdict(value: Duration, target: Duration) -> &'static str {
    if value <= target { "ok" } else { "MISSED" }
}

/// Collects sanity failures; the benchmark exits non-zero when there is any.
#[derive(Default)]
struct Checks(Vec<String>);

impl Checks {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok && self.0.len() < 50 {
            self.0.push(what());
        }
    }
}

// -------------------------------------------------------------------------------------------
// (a) Full plan from scratch

#[derive(Default)]
struct PlanTotals {
    hosted: Vec<(IpAddr, String)>,
    snat: usize,
    steering: usize,
    routes: usize,
    exclusions: usize,
}

impl PlanTotals {
    fn add(&mut self, node: &str, plan: &NodePlan) {
        self.hosted
            .extend(plan.egress_ips.iter().map(|h| (h.ip, node.to_string())));
        self.snat += plan.snat.len();
        self.steering += plan.steering.len();
        self.routes += plan.steering_routes.len();
        self.exclusions = plan.exclusions.pod_cidrs.len()
            + plan.exclusions.service_cidrs.len()
            + plan.exclusions.node_ips.len();
    }
}

/// One from-scratch measurement; meant to run in a fresh process. Prints a `RESULT` line.
fn run_full(args: &Args) -> Result<(), Vec<String>> {
    let mut cluster = Cluster::generate(args).map_err(|e| vec![e])?;
    let snapshot = std::mem::take(&mut cluster.snapshot);
    let rss_input = proc_status_kb("VmRSS");

    let t = Instant::now();
    let mut engine = Engine::load(config(), snapshot);
    let changes = engine.take_changes();
    let load = t.elapsed();
    let rss_loaded = proc_status_kb("VmRSS");

    let t = Instant::now();
    let statuses: Vec<_> = cluster
        .eip_names
        .iter()
        .map(|name| engine.status(name))
        .collect();
    let status = t.elapsed();

    let t = Instant::now();
    let mut totals = PlanTotals::default();
    for node in &cluster.node_names {
        let plan = engine.node_plan(node);
        totals.add(node, &plan);
    }
    let plans = t.elapsed();
    let hwm = proc_status_kb("VmHWM");

    // Sanity.
    let mut c = Checks::default();
    let mut assigned = 0;
    for ((name, st), &want) in cluster
        .eip_names
        .iter()
        .zip(&statuses)
        .zip(&cluster.eip_ip_count)
    {
        let items = st.as_ref().map(Vec::len).unwrap_or(0);
        assigned += items;
        c.check(items == want && items > 0, || {
            format!("{name}: {items} of {want} IPs assigned ({st:?})")
        });
    }
    c.check(assigned == cluster.total_ips, || {
        format!("{assigned} of {} IPs assigned", cluster.total_ips)
    });
    let mut seen = HashSet::new();
    let assignable: HashSet<&str> = cluster
        .assignable
        .iter()
        .map(|&n| cluster.node_names[n].as_str())
        .collect();
    for (ip, node) in &totals.hosted {
        c.check(seen.insert(*ip), || format!("{ip} hosted twice"));
        c.check(assignable.contains(node.as_str()), || {
            format!("{ip} hosted by non-assignable {node}")
        });
    }
    c.check(totals.hosted.len() == cluster.total_ips, || {
        format!(
            "node plans host {} IPs, expected {}",
            totals.hosted.len(),
            cluster.total_ips
        )
    });
    c.check(totals.snat == cluster.expected_snat, || {
        format!(
            "node plans have {} SNAT entries, expected {}",
            totals.snat, cluster.expected_snat
        )
    });
    c.check(totals.steering > 0 && totals.routes > 0, || {
        "no steering entries in any node plan".into()
    });
    let marks = cluster
        .eip_names
        .iter()
        .filter(|n| engine.mark(n).is_some())
        .count();
    let mark_capacity = MARK_RANGE.count();
    c.check(marks == cluster.eips.min(mark_capacity), || {
        format!("{marks} objects have a mark")
    });
    let mut by_reason: BTreeMap<&str, usize> = BTreeMap::new();
    for e in &changes.events {
        *by_reason.entry(e.reason.as_str()).or_default() += 1;
    }
    for (r, count) in &by_reason {
        let expected =
            *r == reason::MARK_EXHAUSTED && *count == cluster.eips.saturating_sub(mark_capacity);
        c.check(expected, || format!("unexpected events: {count} × {r}"));
    }
    if !c.0.is_empty() {
        return Err(c.0);
    }
    println!(
        "RESULT load_ns={} status_ns={} plans_ns={} rss_input_kb={rss_input} rss_loaded_kb={rss_loaded} hwm_kb={hwm} \
         ips={assigned} snat={} steering={} routes={} exclusions={} marks={marks} mark_exhausted={} served={}",
        load.as_nanos(),
        status.as_nanos(),
        plans.as_nanos(),
        totals.snat,
        totals.steering,
        totals.routes,
        totals.exclusions,
        by_reason.get(reason::MARK_EXHAUSTED).copied().unwrap_or(0),
        cluster.expected_served,
    );
    // Freeing the whole engine takes a while and is not part of any measurement.
    std::mem::forget(engine);
    Ok(())
}

// -------------------------------------------------------------------------------------------
// (b) Incremental operations

struct OpResult {
    name: &'static str,
    times: Vec<Duration>,
    dirty: Vec<usize>,
    note: String,
    target: Option<Duration>,
}

fn run_incremental(args: &Args, cluster: &mut Cluster) -> Result<Vec<OpResult>, Vec<String>> {
    let mut rng = Rng(args.seed ^ 0xdead_beef);
    let iters = args.iterations.max(1);
    let snapshot = std::mem::take(&mut cluster.snapshot);
    let mut engine = Engine::load(config(), snapshot);
    engine.take_changes();
    let mut c = Checks::default();
    let mut out = Vec::new();

    // One pod added, then the plans of its node and of an egress node serving it.
    let mut add = Vec::new();
    let mut add_dirty = Vec::new();
    let mut plan_pod_node = Vec::new();
    let mut plan_egress_node = Vec::new();
    let mut snat_sizes = Vec::new();
    let mut served = 0;
    for it in 0..iters {
        let ns = rng.below(cluster.namespaces.len());
        let app = rng.below(cluster.apps);
        let n = rng.below(cluster.node_names.len());
        let ip = cluster.next_pod_ip(n);
        let node = cluster.node_names[n].clone();
        let namespace = cluster.namespaces[ns].name.clone();
        let name = format!("bench-app{app}-{it}");
        let pod = PodInfo {
            namespace: namespace.clone(),
            name: name.clone(),
            labels: labels(&[("app", &format!("app{app}"))]),
            node: Some(node.clone()),
            host_network: false,
            completed: false,
            ips: vec![ip],
        };
        let expected = cluster.expected_eip(ns / 2, ns.is_multiple_of(2), app);

        let t = Instant::now();
        engine.upsert_pod(pod);
        let changes = engine.take_changes();
        let dirty = changes.nodes.len();
        let has_node = changes.nodes.contains(&node);
        drop(changes);
        add.push(t.elapsed());
        add_dirty.push(dirty);

        c.check(has_node == expected.is_some(), || {
            format!("pod {namespace}/{name}: own node dirty {has_node}, expected {expected:?}")
        });
        let t = Instant::now();
        let plan = engine.node_plan(&node);
        plan_pod_node.push(t.elapsed());
        if let Some(j) = expected {
            served += 1;
            let eip = &cluster.eip_names[j];
            let status = engine.status(eip).unwrap_or_default();
            let local = status.iter().any(|s| s.node == node);
            if engine.mark(eip).is_some() && !local {
                c.check(plan.steering.iter().any(|s| s.pod_ip == ip), || {
                    format!("pod {ip} not steered on {node}")
                });
            }
            if let Some(item) = status.first() {
                let t = Instant::now();
                let plan = engine.node_plan(&item.node);
                plan_egress_node.push(t.elapsed());
                snat_sizes.push(plan.snat.len());
                c.check(
                    plan.snat
                        .iter()
                        .any(|s| s.pod_ip == ip && s.egress_ip.to_string() == item.egress_ip),
                    || format!("no SNAT for {ip} on {}", item.node),
                );
            }
        }
        engine.remove_pod(&namespace, &name);
        engine.take_changes();
    }
    out.push(OpResult {
        name: "pod added",
        times: add,
        dirty: add_dirty,
        note: format!("{served} of {iters} served"),
        target: Some(TARGET_OP),
    });

    // One egress node lost (a different node each time), restored outside the timed region.
    let mut order = cluster.assignable.clone();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i + 1));
    }
    let mut lost = Vec::new();
    let mut lost_dirty = Vec::new();
    let mut back = Vec::new();
    let mut moved = Vec::new();
    for it in 0..iters {
        let node = cluster.node_names[order[it % order.len()]].clone();
        let hosted: Vec<(IpAddr, String)> = engine
            .node_plan(&node)
            .egress_ips
            .into_iter()
            .map(|h| (h.ip, h.egress_ip))
            .collect();
        moved.push(hosted.len());

        let t = Instant::now();
        engine.set_node_reachable(&node, false);
        let changes = engine.take_changes();
        let dirty = changes.nodes.len();
        drop(changes);
        lost.push(t.elapsed());
        lost_dirty.push(dirty);

        for (ip, eip) in &hosted {
            let status = engine.status(eip).unwrap_or_default();
            let ip = ip.to_string();
            c.check(
                status.iter().any(|s| s.egress_ip == ip && s.node != node),
                || format!("{eip}: {ip} not moved off lost {node}: {status:?}"),
            );
        }
        c.check(engine.node_plan(&node).egress_ips.is_empty(), || {
            format!("lost {node} still hosts IPs")
        });

        let t = Instant::now();
        engine.set_node_reachable(&node, true);
        engine.take_changes();
        back.push(t.elapsed());
    }
    out.push(OpResult {
        name: "egress node lost",
        times: lost,
        dirty: lost_dirty,
        note: format!("{} egress IPs moved (median)", median_usize(&moved)),
        target: Some(TARGET_OP),
    });
    out.push(OpResult {
        name: "  (node reachable again)",
        times: back,
        dirty: Vec::new(),
        note: "untimed restore, for reference".into(),
        target: None,
    });

    // One namespace relabelled to another team, restored outside the timed region.
    let mut relabel = Vec::new();
    let mut relabel_dirty = Vec::new();
    let count = cluster.namespaces.len();
    let mut stride = 7919 % count;
    while gcd(stride, count) != 1 {
        stride += 1;
    }
    let pods_per_ns = args.pods / count;
    for it in 0..iters {
        let ns = it * stride % count;
        let old = cluster.namespaces[ns].clone();
        let team = ns / 2;
        let new_team = (team + cluster.teams / 2).max(team + 1) % cluster.teams;
        let prod = ns.is_multiple_of(2);
        let new = NamespaceInfo {
            name: old.name.clone(),
            labels: namespace_labels(&old.name, new_team, prod),
        };

        let t = Instant::now();
        engine.upsert_namespace(new);
        let changes = engine.take_changes();
        let dirty = changes.nodes.len();
        drop(changes);
        relabel.push(t.elapsed());
        relabel_dirty.push(dirty);

        if let Some((pod, app)) = &cluster.first_pod[ns] {
            let key = format!("{}/{pod}", old.name);
            let before = cluster.expected_eip(team, prod, *app);
            let after = cluster.expected_eip(new_team, prod, *app);
            if let Some(j) = after {
                let eip = &cluster.eip_names[j];
                c.check(engine.served_pods(eip).contains(&key), || {
                    format!("{key} not served by {eip} after relabel")
                });
            }
            if let Some(j) = before.filter(|b| Some(*b) != after) {
                let eip = &cluster.eip_names[j];
                c.check(!engine.served_pods(eip).contains(&key), || {
                    format!("{key} still served by {eip} after relabel")
                });
            }
        }
        engine.upsert_namespace(old);
        engine.take_changes();
    }
    out.push(OpResult {
        name: "namespace relabelled",
        times: relabel,
        dirty: relabel_dirty,
        note: format!("team tN → other team, {pods_per_ns} pods rematched"),
        target: Some(TARGET_OP),
    });
    out.push(OpResult {
        name: "node_plan: pod's node",
        times: plan_pod_node,
        dirty: Vec::new(),
        note: "after a pod add".into(),
        target: None,
    });
    out.push(OpResult {
        name: "node_plan: egress node",
        times: plan_egress_node,
        dirty: Vec::new(),
        note: format!(
            "hosting the pod's egress IP, {} SNAT entries (median)",
            median_usize(&snat_sizes)
        ),
        target: None,
    });

    // The cluster must be whole again after all of this.
    for (name, &want) in cluster.eip_names.iter().zip(&cluster.eip_ip_count) {
        let got = engine.status(name).map(|s| s.len()).unwrap_or(0);
        c.check(got == want, || {
            format!("{name}: {got} of {want} IPs assigned at the end")
        });
    }
    if c.0.is_empty() { Ok(out) } else { Err(c.0) }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

// -------------------------------------------------------------------------------------------
// Main

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map(|kb| format!("{:.0} GiB", kb as f64 / 1024.0 / 1024.0))
        .unwrap_or_default();
    format!("nproc {nproc}, {cpu}, {mem} RAM, Linux {kernel}")
}

/// The 1-minute load average: other work on the machine skews the figures.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

fn fail(what: &str, problems: &[String]) -> ExitCode {
    eprintln!("SANITY CHECK FAILED ({what}):");
    for p in problems {
        eprintln!("  - {p}");
    }
    ExitCode::FAILURE
}

fn main() -> ExitCode {
    let args = match Args::parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match args.only.as_deref() {
        Some("full") => {
            return match run_full(&args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(p) => fail("full plan", &p),
            };
        }
        Some("incremental") | None => {}
        Some(other) => {
            eprintln!("error: --only {other}: expected full or incremental");
            return ExitCode::FAILURE;
        }
    }

    let load_before = loadavg();

    // (a) in fresh processes.
    let mut full: Vec<HashMap<String, u128>> = Vec::new();
    if args.only.is_none() {
        let exe = match std::env::current_exe() {
            Ok(e) => e,
            Err(e) => {
                eprintln!("error: current_exe: {e}");
                return ExitCode::FAILURE;
            }
        };
        for run in 1..=args.runs {
            eprintln!("full plan: run {run}/{} (fresh process)", args.runs);
            let output = Command::new(&exe)
                .args(args.size_args())
                .args(["--only", "full"])
                .stderr(std::process::Stdio::inherit())
                .output();
            let output = match output {
                Ok(o) => o,
                Err(e) => {
                    eprintln!("error: spawning {}: {e}", exe.display());
                    return ExitCode::FAILURE;
                }
            };
            if !output.status.success() {
                eprintln!("full-plan child failed: {}", output.status);
                return ExitCode::FAILURE;
            }
            let stdout = String::from_utf8_lossy(&output.stdout);
            let Some(line) = stdout.lines().find(|l| l.starts_with("RESULT ")) else {
                eprintln!("full-plan child printed no RESULT line:\n{stdout}");
                return ExitCode::FAILURE;
            };
            full.push(
                line.split_whitespace()
                    .skip(1)
                    .filter_map(|kv| kv.split_once('='))
                    .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
                    .collect(),
            );
        }
    }

    // (b) in this process.
    eprintln!("incremental: generating and loading the cluster");
    let mut cluster = match Cluster::generate(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ops = match run_incremental(&args, &mut cluster) {
        Ok(o) => o,
        Err(p) => return fail("incremental", &p),
    };

    // Report.
    println!();
    println!("kube-egress engine benchmark");
    println!("machine: {}", machine());
    println!(
        "load average (1 min): {load_before} before, {} after the run",
        loadavg()
    );
    println!(
        "cluster: {} nodes ({} egress-assignable, {} primary networks /22–/24, {} nodes on {} secondary network(s)), \
         {} namespaces ({} teams × prod/dev), {} pods ({} apps per namespace), {} EgressIPs with {} egress IPs",
        args.nodes,
        cluster.assignable.len(),
        cluster.subnets,
        cluster.secondary_nodes,
        cluster.secondary_networks,
        args.namespaces,
        cluster.teams,
        args.pods,
        cluster.apps,
        args.eips,
        cluster.total_ips,
    );
    if !full.is_empty() {
        let get = |k: &str| -> Vec<u128> { full.iter().map(|m| m[k]).collect() };
        let med = |k: &str| -> u128 {
            let mut v = get(k);
            v.sort();
            v[v.len() / 2]
        };
        let ns = |k: &str| Duration::from_nanos(med(k) as u64);
        let totals: Vec<Duration> = full
            .iter()
            .map(|m| Duration::from_nanos((m["load_ns"] + m["status_ns"] + m["plans_ns"]) as u64))
            .collect();
        let total = stats(&totals).median;
        let first = &full[0];
        println!();
        println!(
            "(a) full plan from scratch — median of {} runs, each in a fresh process",
            full.len()
        );
        println!("    {:<44} {:>12}", "phase", "median");
        println!(
            "    {:<44} {:>12}",
            "Engine::load (whole snapshot) + take_changes",
            fmt_dur(ns("load_ns"))
        );
        println!(
            "    {:<44} {:>12}",
            format!("status() × {} EgressIPs", args.eips),
            fmt_dur(ns("status_ns"))
        );
        println!(
            "    {:<44} {:>12}",
            format!("node_plan() × {} nodes", args.nodes),
            fmt_dur(ns("plans_ns"))
        );
        println!(
            "    {:<44} {:>12}   target ≤ {} → {}",
            "total",
            fmt_dur(total),
            fmt_dur(TARGET_FULL),
            verdict(total, TARGET_FULL)
        );
        println!(
            "    runs: {}",
            totals
                .iter()
                .map(|d| fmt_dur(*d))
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!(
            "    peak memory (VmHWM): {} (median; generated input snapshot alone: {} RSS; after load: {} RSS)",
            mib(med("hwm_kb") as u64),
            mib(med("rss_input_kb") as u64),
            mib(med("rss_loaded_kb") as u64),
        );
        println!(
            "    checked: {} egress IPs assigned, {} pods served, {} SNAT / {} steering entries / {} routes over all plans, \
             {} exclusion entries per plan, {} marks ({} MarkExhausted events)",
            first["ips"],
            first["served"],
            first["snat"],
            first["steering"],
            first["routes"],
            first["exclusions"],
            first["marks"],
            first["mark_exhausted"],
        );
    }
    println!();
    println!(
        "(b) incremental operations on the loaded cluster — {} repetitions each, timed with take_changes()",
        args.iterations.max(1)
    );
    println!(
        "    {:<26} {:>10} {:>10} {:>10} {:>8}   {:>15}   notes",
        "operation", "median", "p99", "max", "target", "dirty nodes med/max"
    );
    for op in &ops {
        let s = stats(&op.times);
        let target = match op.target {
            Some(t) => {
                let worst = s.median.max(s.p99);
                verdict(worst, t).to_string()
            }
            None => "-".into(),
        };
        let dirty = if op.dirty.is_empty() {
            "-".to_string()
        } else {
            format!(
                "{}/{}",
                median_usize(&op.dirty),
                op.dirty.iter().max().copied().unwrap_or(0)
            )
        };
        println!(
            "    {:<26} {:>10} {:>10} {:>10} {:>8}   {:>15}   {}",
            op.name,
            fmt_dur(s.median),
            fmt_dur(s.p99),
            fmt_dur(s.max),
            target,
            dirty,
            op.note
        );
    }
    println!(
        "    target: ≤ {} per operation (median and p99)",
        fmt_dur(TARGET_OP)
    );
    println!();
    println!("all sanity checks passed");
    ExitCode::SUCCESS
}
