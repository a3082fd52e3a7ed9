//! Linux data plane benchmark (issue 3): programming 10,000 served pods on one egress node, and
//! traffic through that node, against OVN-Kubernetes' way of doing the same (one `ip rule` and one
//! iptables SNAT rule per pod).
//!
//! ```text
//! cargo bench -p kube-egress-linux --bench dataplane
//! cargo bench -p kube-egress-linux --bench dataplane -- --pods 2000 --reps 20 --rounds 3
//! ```
//!
//! Flags (or `BENCH_*` variables): `--pods` (10,000), `--runs` (5 from-empty runs), `--reps` (100
//! one-pod repetitions), `--rounds` (7 traffic rounds), `--ovnk-rounds` (3 of them with the OVN-K
//! way), `--seconds` (2, iperf3) and `--rate-seconds` (2, request rate).
//!
//! Needs root, `ip`, `ss`, `nft`, `iptables`, `iptables-restore` and `iperf3`. Everything happens
//! in network namespaces of a small testbed (`kube-egress-testbed`: one node `egress` with two
//! pods, the router and an external server), which is removed on every exit path (also on Ctrl-C:
//! the run stops after the current step and cleans up).
//!
//! (a) **Programming.** The node plan is built by hand: one egress IP on the node's primary link
//! and N SNAT entries (pod IPs from 10.128.0.0/16), plus exclusions. `Applier::apply` is timed from
//! empty (`remove_all` between runs), then with the plan plus one pod (a different pod each
//! repetition; the plan without it is applied again, untimed, after each one). Where the time of
//! the one-pod apply goes is measured separately: the netlink reads the applier makes, the pure
//! computation of the desired state and the nft batch, the batch itself, an empty batch, and the
//! same one-element batch through the `nft` program (what starting a process per change costs;
//! the applier uses libnftables in process when it loads). The baseline runs in the same namespace: N × `ip rule add from POD/32 lookup T
//! priority 6000` through `ip -batch -` and N × `iptables -t nat -A OVN-KUBE-EGRESS-IP-MULTI-NIC -s
//! POD/32 -o eth0 -j SNAT --to-source EIP` through `iptables-restore --noflush` (batched, which is
//! generous to the baseline), then one more pod with one `ip rule add` and one `iptables -A`.
//!
//! (b) **Traffic.** pod → egress node → router → external server, with the node holding (1) no
//! egress rules (the CNI's masquerade only), (2) kube-egress with the N-pod plan, (3) the same
//! with the egress IP counting chain deleted after the apply (what the counters cost), (4)
//! kube-egress with only the traffic's pod in its plan (what the chains cost whatever the size),
//! (5) the N-pod plan plus N other local pods steered to another egress node (the prerouting and
//! tunnel chains exist; the measured packets miss the marks map), (6) the OVN-K way with N ip
//! rules and N iptables rules. The traffic's pod is one of the N (the middle one, so
//! the linear rule lists of the baseline are walked half-way for it). Measured: iperf3 TCP
//! throughput (one stream) and a request rate (4 clients in parallel, a new TCP connection per
//! request, so every request passes the NAT rules). Each round programs each configuration in
//! turn (rotating the order) and measures it against servers on ports of their own, so that no
//! connection-tracking entry of another configuration takes part. Ratios are the median of the
//! per-round ratios against no rules (measured seconds apart), and the ratio of the medians.
//!
//! Before any figure is taken the state is checked: the applier's `verify` is empty and the nft
//! map holds N entries, the baseline has N rules of each kind, and a request from the served pod
//! reaches the server with the egress IP (the node IP without egress rules), while a pod outside
//! the N keeps leaving with the node IP; the chains of the table are the ones the configuration
//! calls for, and after each kube-egress measurement with counters the egress IP's counter holds
//! at least three packets per request. A failed check exits non-zero.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use ipnet::{IpNet, Ipv4Net};
use kube_egress_engine::{
    EgressHop, Exclusions, HostedIp, NodePlan, SnatEntry, SteeringEntry, SteeringRoute, SubnetKind,
};
use kube_egress_linux::applier::Applier;
use kube_egress_linux::desired::{RULE_PRIORITY, TUNNEL_DEVICE, desired};
use kube_egress_linux::netlink::{Family, Netlink, RouteProtocol, Rule, RuleAction, select_link};
use kube_egress_linux::netns::run_in;
use kube_egress_linux::nft::Nft;
use kube_egress_testbed::{NodeSpec, PodSpec, Testbed, TestbedBuilder};

// -------------------------------------------------------------------------------------------
// The topology and the plan

const NODE: &str = "egress";
const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 126, 2);
/// The testbed's primary network (router 192.168.126.1/18).
const PRIMARY: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(192, 168, 64, 0), 18);
const ROUTER: Ipv4Addr = Ipv4Addr::new(192, 168, 126, 1);
const EGRESS_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 126, 10);
const POD_CIDR: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(10, 128, 0, 0), 16);
const CLUSTER_CIDR: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(10, 128, 0, 0), 14);
const SERVICE_CIDR: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(172, 30, 0, 0), 16);
/// Served pod i is FIRST_POD + i.
const FIRST_POD: Ipv4Addr = Ipv4Addr::new(10, 128, 0, 10);
/// The pods added one at a time: FIRST_EXTRA + k.
const FIRST_EXTRA: Ipv4Addr = Ipv4Addr::new(10, 128, 128, 0);
/// A pod on the node that no EgressIP serves.
const OTHER_POD: Ipv4Addr = Ipv4Addr::new(10, 128, 200, 10);
const LINK: &str = "eth0";
/// The steered pods of the steering configuration: STEERED_POD + i, to a peer egress node that
/// is never reached (no measured packet is steered).
const STEERED_POD: Ipv4Addr = Ipv4Addr::new(10, 129, 0, 10);
const STEERING_MARK: u32 = 50_001;
const PEER_NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 126, 3);
const PEER_EGRESS_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 126, 11);
const MAX_PODS: u32 = 30_000;

const OVNK_CHAIN: &str = "OVN-KUBE-EGRESS-IP-MULTI-NIC";
const OVNK_PRIORITY: u32 = 6000;

const IPERF_PORT: u16 = 5201;
const RATE_PORT: u16 = 8080;

const TARGET_FULL: Duration = Duration::from_secs(1);
const TARGET_ADD: Duration = Duration::from_millis(10);
const TARGET_RATIO: f64 = 0.95;

fn pod_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(FIRST_POD) + i)
}

fn extra_ip(k: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(FIRST_EXTRA) + k as u32)
}

fn base_plan(pods: u32) -> NodePlan {
    NodePlan {
        egress_ips: vec![HostedIp {
            ip: EGRESS_IP.into(),
            egress_ip: "bench".into(),
            mark: Some(50_000),
            kind: SubnetKind::Primary,
            subnet: PRIMARY.into(),
        }],
        snat: (0..pods)
            .map(|i| SnatEntry {
                pod_ip: pod_ip(i).into(),
                egress_ip: EGRESS_IP.into(),
            })
            .collect(),
        steering: Vec::new(),
        steering_routes: Vec::new(),
        exclusions: Arc::new(Exclusions {
            pod_cidrs: vec![CLUSTER_CIDR.into()],
            service_cidrs: vec![SERVICE_CIDR.into()],
            node_ips: vec![NODE_IP.into()],
        }),
    }
}

/// `base` plus `pods` other local pods (from 10.129.0.0) steered over the tunnel to another
/// egress node, as on a node that both hosts an egress IP and has pods served elsewhere.
fn steering_plan(base: &NodePlan, pods: u32) -> NodePlan {
    let first = u32::from(STEERED_POD);
    NodePlan {
        steering: (0..pods)
            .map(|i| SteeringEntry {
                pod_ip: Ipv4Addr::from(first + i).into(),
                mark: STEERING_MARK,
            })
            .collect(),
        steering_routes: vec![SteeringRoute {
            mark: STEERING_MARK,
            family: Family::V4,
            egress_ip: "elsewhere".into(),
            next_hops: vec![EgressHop {
                node: "peer".into(),
                address: PEER_NODE_IP.into(),
                egress_ip: PEER_EGRESS_IP.into(),
            }],
        }],
        ..base.clone()
    }
}

fn plus_one(base: &NodePlan, pod: Ipv4Addr) -> NodePlan {
    let mut plan = base.clone();
    let entry = SnatEntry {
        pod_ip: pod.into(),
        egress_ip: EGRESS_IP.into(),
    };
    let at = plan.snat.binary_search(&entry).unwrap_or_else(|at| at);
    plan.snat.insert(at, entry);
    plan
}

// -------------------------------------------------------------------------------------------
// Arguments, interruption, tools

#[derive(Debug, Clone)]
struct Args {
    pods: u32,
    runs: usize,
    reps: usize,
    rounds: usize,
    ovnk_rounds: usize,
    seconds: u64,
    rate_seconds: u64,
}

impl Args {
    fn parse() -> Result<Args> {
        let env = |name: &str, default: u64| -> Result<u64> {
            match std::env::var(name) {
                Ok(v) => v.parse().with_context(|| format!("{name}={v:?}")),
                Err(_) => Ok(default),
            }
        };
        let mut a = Args {
            pods: env("BENCH_PODS", 10_000)? as u32,
            runs: env("BENCH_RUNS", 5)? as usize,
            reps: env("BENCH_REPS", 100)? as usize,
            rounds: env("BENCH_ROUNDS", 7)? as usize,
            ovnk_rounds: env("BENCH_OVNK_ROUNDS", 3)? as usize,
            seconds: env("BENCH_SECONDS", 2)?,
            rate_seconds: env("BENCH_RATE_SECONDS", 2)?,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            // `cargo bench` passes `--bench`; test-harness style filters are ignored.
            if flag == "--bench" || !flag.starts_with("--") {
                continue;
            }
            let value = it.next().with_context(|| format!("{flag} needs a value"))?;
            let n: u64 = value
                .parse()
                .with_context(|| format!("{flag} {value:?}: not a number"))?;
            match flag.as_str() {
                "--pods" => a.pods = n as u32,
                "--runs" => a.runs = n as usize,
                "--reps" => a.reps = n as usize,
                "--rounds" => a.rounds = n as usize,
                "--ovnk-rounds" => a.ovnk_rounds = n as usize,
                "--seconds" => a.seconds = n,
                "--rate-seconds" => a.rate_seconds = n,
                _ => bail!(
                    "unknown flag {flag} (known: --pods --runs --reps --rounds --ovnk-rounds --seconds --rate-seconds)"
                ),
            }
        }
        ensure!(
            (2..=MAX_PODS).contains(&a.pods),
            "--pods must be 2..={MAX_PODS}"
        );
        ensure!(
            a.runs >= 1 && a.reps >= 1,
            "--runs and --reps must be at least 1"
        );
        ensure!(
            a.seconds >= 1 && a.rate_seconds >= 1,
            "durations are whole seconds ≥ 1"
        );
        Ok(a)
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    if INTERRUPTED.swap(true, Ordering::SeqCst) {
        // A second signal: leave at once (the next testbed sweeps the namespaces).
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(130) };
    }
}

/// Turns SIGINT, SIGTERM and SIGHUP into a flag that the run checks between steps, so that the
/// testbed is dropped (and its namespaces removed) on the way out. A handler, not a blocked
/// mask: child processes get the default dispositions back when they exec.
fn catch_signals() {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: installs a handler that only touches an atomic (and calls _exit).
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// (tool, Debian package)
const TOOLS: [(&str, &str); 6] = [
    ("ip", "iproute2"),
    ("ss", "iproute2"),
    ("nft", "nftables"),
    ("iptables", "iptables"),
    ("iptables-restore", "iptables"),
    ("iperf3", "iperf3"),
];

fn missing_tools() -> Vec<String> {
    let path = std::env::var("PATH").unwrap_or_default();
    let dirs: Vec<&str> = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .collect();
    TOOLS
        .iter()
        .filter(|(tool, _)| {
            !dirs
                .iter()
                .any(|d| std::path::Path::new(d).join(tool).is_file())
        })
        .map(|(tool, package)| format!("{tool} (Debian: apt-get install {package})"))
        .collect()
}

// -------------------------------------------------------------------------------------------
// Small helpers

/// Runs a command in the calling thread's network namespace; a non-zero exit is an error that
/// quotes its standard error.
fn run(program: &str, args: &[&str]) -> Result<String> {
    run_with(program, args, None)
}

/// [`run`] with the given standard input.
fn run_with(program: &str, args: &[&str], input: Option<&str>) -> Result<String> {
    let shown = || format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting `{}`", shown()))?;
    // Fed from another thread: a command may fill its output pipes before it has read all its
    // input (`ip -force -batch -` reporting every failing line).
    let writer = input.map(|input| {
        let mut stdin = child.stdin.take().expect("piped");
        let input = input.to_string();
        // A command that fails early closes its input; its status tells.
        std::thread::spawn(move || drop(stdin.write_all(input.as_bytes())))
    });
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for `{}`", shown()))?;
    if let Some(writer) = writer {
        let _ = writer.join();
    }
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            shown(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn first_line(program: &str, arg: &str) -> String {
    Command::new(program)
        .arg(arg)
        .output()
        .ok()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_else(|| "?".into())
}

#[derive(Debug, Clone, Copy)]
struct Stats {
    median: Duration,
    p99: Duration,
    max: Duration,
}

fn stats(samples: &[Duration]) -> Stats {
    let mut s = samples.to_vec();
    s.sort();
    let n = s.len();
    let median = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2
    };
    // Nearest rank: with 50 samples the p99 is the maximum.
    let p99 = s[((n as f64 * 0.99).ceil() as usize).clamp(1, n) - 1];
    Stats {
        median,
        p99,
        max: s[n - 1],
    }
}

fn median_f(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

struct Ratios {
    /// The median of the ratios of measurements taken in the same round.
    paired: f64,
    /// The ratio of the medians.
    of_medians: f64,
}

impl Ratios {
    fn text(&self) -> String {
        format!("{:.3} ({:.3})", self.paired, self.of_medians)
    }
}

/// `f` against `base`, by `value(figures, index)`.
fn ratios(
    f: &TrafficFigures,
    base: &TrafficFigures,
    value: impl Fn(&TrafficFigures, usize) -> f64,
) -> Ratios {
    let per_round: Vec<f64> = (0..f.round.len())
        .filter_map(|i| {
            let j = base.round.iter().position(|r| *r == f.round[i])?;
            Some(value(f, i) / value(base, j))
        })
        .collect();
    let all = |x: &TrafficFigures| (0..x.round.len()).map(|i| value(x, i)).collect::<Vec<_>>();
    Ratios {
        paired: median_f(&per_round),
        of_medians: median_f(&all(f)) / median_f(&all(base)),
    }
}

fn dur(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 {
        format!("{s:.3} s")
    } else if s >= 0.1 {
        format!("{:.0} ms", s * 1e3)
    } else if s >= 0.001 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{:.0} µs", s * 1e6)
    }
}

fn durs(samples: &[Duration]) -> String {
    samples
        .iter()
        .map(|d| dur(*d))
        .collect::<Vec<_>>()
        .join(" / ")
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ratio(a: f64, b: f64) -> String {
    if a / b >= 10.0 {
        format!("{:.0}×", a / b)
    } else {
        format!("{:.2}×", a / b)
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "**missed**" }
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(str::trim)
        .unwrap_or("unknown CPU")
        .to_string();
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "nproc {nproc}, {model}, {:.0} GiB RAM, Linux {}",
        mem_kib as f64 / 1024.0 / 1024.0,
        kernel.trim()
    )
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn progress(message: impl AsRef<str>) {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let t = START.get_or_init(Instant::now).elapsed().as_secs_f64();
    eprintln!("[dataplane {t:6.1} s] {}", message.as_ref());
}

// -------------------------------------------------------------------------------------------
// (a) kube-egress: programming

#[derive(Debug, Default)]
struct KubeEgressProgramming {
    full: Vec<Duration>,
    full_changes: usize,
    /// Breakdown of a from-empty apply: the desired state (netlink reads and computation),
    /// building the full nft batch, and applying it alone (table deleted first).
    full_desired: Vec<Duration>,
    full_build: Vec<Duration>,
    full_nft: Vec<Duration>,
    add: Vec<Duration>,
    add_changes: Vec<usize>,
    /// Breakdown of a one-pod apply.
    reads: Vec<Duration>,
    compute: Vec<Duration>,
    nft_batch: Vec<Duration>,
    nft_empty: Vec<Duration>,
    nft_program_batch: Vec<Duration>,
    /// How the applier talks to nftables.
    nft_backend: &'static str,
}

async fn kube_egress_programming(args: &Args, base: &NodePlan) -> Result<KubeEgressProgramming> {
    let nl = Netlink::connect()?;
    let mut applier = Applier::new(nl.clone(), Nft::new(TUNNEL_DEVICE), Some(NODE_IP.into()));
    let nft = Nft::new(TUNNEL_DEVICE);
    let program = Nft::new(TUNNEL_DEVICE).with_program();
    let mut out = KubeEgressProgramming {
        nft_backend: nft.backend(),
        ..Default::default()
    };
    applier.remove_all().await?;

    progress(format!(
        "(a) kube-egress: {} pods from empty × {}",
        thousands(args.pods.into()),
        args.runs
    ));
    for _ in 0..args.runs {
        check_interrupted()?;
        applier.remove_all().await?;
        let start = Instant::now();
        let report = applier.apply(base).await?;
        out.full.push(start.elapsed());
        ensure!(
            report.problems.is_empty(),
            "apply reported problems: {:?}",
            report.problems
        );
        out.full_changes = report.changes;
    }
    let diffs = applier.verify(base).await?;
    ensure!(diffs.is_empty(), "kernel differs from the plan: {diffs:?}");
    let state = nft
        .read()
        .await?
        .context("table inet kube_egress is missing")?;
    ensure!(
        state.snat.len() == args.pods as usize,
        "nft map snat_v4 holds {} entries, not {}",
        state.snat.len(),
        args.pods
    );

    // The parts of the from-empty apply, timed alone.
    let (base_desired, _) = applier.desired(base).await?;
    for _ in 0..args.runs {
        check_interrupted()?;
        let start = Instant::now();
        let (d, _) = applier.desired(base).await?;
        out.full_desired.push(start.elapsed());
        let start = Instant::now();
        let full_batch = nft.full_batch(&d.nft);
        out.full_build.push(start.elapsed());
        nft.delete_table().await?;
        let start = Instant::now();
        nft.apply(&full_batch).await?;
        out.full_nft.push(start.elapsed());
    }
    let diffs = applier.verify(base).await?;
    ensure!(diffs.is_empty(), "kernel differs from the plan: {diffs:?}");

    progress(format!(
        "(a) kube-egress: +1 pod at {} × {}",
        thousands(args.pods.into()),
        args.reps
    ));
    for k in 0..args.reps {
        check_interrupted()?;
        let plan = plus_one(base, extra_ip(k));
        let start = Instant::now();
        let report = applier.apply(&plan).await?;
        out.add.push(start.elapsed());
        out.add_changes.push(report.changes);
        ensure!(report.changes >= 1, "adding a pod changed nothing");
        if k == 0 {
            let diffs = applier.verify(&plan).await?;
            ensure!(diffs.is_empty(), "kernel differs from the plan: {diffs:?}");
            let state = nft.read().await?.context("table missing")?;
            ensure!(
                state.snat.len() == args.pods as usize + 1
                    && state
                        .snat
                        .contains_key(&(extra_ip(k).into(), LINK.to_string())),
                "the added pod is not in the SNAT map"
            );
        }
        applier.apply(base).await?;
    }

    // Where the time of a one-pod apply goes.
    let tunnel = nl
        .link(TUNNEL_DEVICE)
        .await?
        .context("the tunnel device is missing")?;
    for k in 0..args.reps {
        check_interrupted()?;
        let plan = plus_one(base, extra_ip(args.reps + k));

        // The netlink reads apply makes: links and addresses (desired state), addresses and the
        // VXLAN device (tunnel; read twice when it exists), neighbours and FDB (peers), links,
        // owned addresses, rules.
        let start = Instant::now();
        let links = nl.links().await?;
        let addresses = nl.addresses().await?;
        nl.addresses().await?;
        nl.vxlan(TUNNEL_DEVICE).await?;
        nl.vxlan(TUNNEL_DEVICE).await?;
        nl.neighbours(&tunnel).await?;
        nl.fdb(&tunnel).await?;
        nl.links().await?;
        nl.owned_addresses().await?;
        nl.rules_at(RULE_PRIORITY).await?;
        out.reads.push(start.elapsed());

        let start = Instant::now();
        let (d, _) = desired(&plan, |ip| {
            select_link(&links, &addresses, *ip).map(|m| (m.link.index, m.link.name))
        });
        let batch = nft
            .diff_batch(&base_desired.nft, &d.nft)
            .context("no nft change for an added pod")?;
        out.compute.push(start.elapsed());

        let start = Instant::now();
        nft.apply(&batch).await?;
        out.nft_batch.push(start.elapsed());
        let back = nft
            .diff_batch(&d.nft, &base_desired.nft)
            .context("no way back")?;
        nft.apply(&back).await?;

        let start = Instant::now();
        nft.apply(&serde_json::json!({"nftables": []})).await?;
        out.nft_empty.push(start.elapsed());

        let start = Instant::now();
        program.apply(&batch).await?;
        out.nft_program_batch.push(start.elapsed());
        program.apply(&back).await?;
    }
    let diffs = applier.verify(base).await?;
    ensure!(diffs.is_empty(), "kernel differs from the plan: {diffs:?}");
    applier.remove_all().await?;
    Ok(out)
}

// -------------------------------------------------------------------------------------------
// (a) and (b) baseline: OVN-Kubernetes' way

/// OVN-Kubernetes' kernel state for egress IPs on a host network: per pod, `ip rule add from
/// POD/32 lookup T priority 6000` (T holds a copy of the link's routes) and `iptables -t nat -A
/// OVN-KUBE-EGRESS-IP-MULTI-NIC -s POD/32 -o LINK -j SNAT --to-source EIP` (the chain is jumped to
/// from POSTROUTING); the egress IP on the link.
struct Ovnk {
    pods: Vec<Ipv4Addr>,
    table: u32,
    nft_backend: bool,
}

impl Ovnk {
    fn rule(&self, verb: &str, pod: Ipv4Addr) -> String {
        format!(
            "rule {verb} from {pod}/32 lookup {} priority {OVNK_PRIORITY}",
            self.table
        )
    }

    fn snat(&self, pod: Ipv4Addr) -> String {
        format!("-s {pod}/32 -o {LINK} -j SNAT --to-source {EGRESS_IP}")
    }

    fn ip_batch(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "address add {EGRESS_IP}/32 dev {LINK}");
        let _ = writeln!(s, "route add {PRIMARY} dev {LINK} table {}", self.table);
        let _ = writeln!(
            s,
            "route add default via {ROUTER} dev {LINK} table {}",
            self.table
        );
        for pod in &self.pods {
            let _ = writeln!(s, "{}", self.rule("add", *pod));
        }
        s
    }

    fn restore(&self) -> String {
        let mut s = format!("*nat\n:{OVNK_CHAIN} - [0:0]\n-A POSTROUTING -j {OVNK_CHAIN}\n");
        for pod in &self.pods {
            let _ = writeln!(s, "-A {OVNK_CHAIN} {}", self.snat(*pod));
        }
        s.push_str("COMMIT\n");
        s
    }

    /// Programs every pod; returns the time of `ip -batch -` and of `iptables-restore`. The
    /// inputs are prepared before the clock starts.
    fn setup(&self) -> Result<(Duration, Duration)> {
        let batch = self.ip_batch();
        let restore = self.restore();
        let start = Instant::now();
        run_with("ip", &["-batch", "-"], Some(&batch))?;
        let ip = start.elapsed();
        let start = Instant::now();
        run_with("iptables-restore", &["-w", "--noflush"], Some(&restore))?;
        Ok((ip, start.elapsed()))
    }

    /// Removes everything `setup` made (whatever part of it exists).
    fn teardown(&self) -> Result<()> {
        let priority = OVNK_PRIORITY.to_string();
        let mut batch = String::new();
        if !run("ip", &["rule", "show", "priority", &priority])?
            .trim()
            .is_empty()
        {
            for pod in &self.pods {
                let _ = writeln!(batch, "{}", self.rule("del", *pod));
            }
        }
        let _ = writeln!(batch, "route flush table {}", self.table);
        let _ = writeln!(batch, "address del {EGRESS_IP}/32 dev {LINK}");
        // -force: go on past lines that fail (a partial setup).
        let _ = run_with("ip", &["-force", "-batch", "-"], Some(&batch));
        let _ = run(
            "iptables",
            &["-w", "-t", "nat", "-D", "POSTROUTING", "-j", OVNK_CHAIN],
        );
        let _ = run("iptables", &["-w", "-t", "nat", "-F", OVNK_CHAIN]);
        let _ = run("iptables", &["-w", "-t", "nat", "-X", OVNK_CHAIN]);
        if self.nft_backend {
            // iptables-nft's own table: gone, so that the next setup starts from empty.
            let _ = run("nft", &["delete", "table", "ip", "nat"]);
        }
        let rules = run("ip", &["rule", "show", "priority", &priority])?;
        ensure!(
            rules.trim().is_empty(),
            "ip rules left at priority {OVNK_PRIORITY}: {}",
            rules.lines().count()
        );
        Ok(())
    }

    /// Checks that `pods + extra` rules of each kind exist.
    async fn check(&self, nl: &Netlink, extra: usize) -> Result<()> {
        let want = self.pods.len() + extra;
        let rules = nl
            .rules_at(OVNK_PRIORITY)
            .await?
            .into_iter()
            .filter(|r| r.src.is_some() && r.table == self.table)
            .count();
        ensure!(
            rules == want,
            "{rules} ip rules from pods at priority {OVNK_PRIORITY}, not {want}"
        );
        let listed = run("iptables", &["-w", "-t", "nat", "-S", OVNK_CHAIN])?;
        let snat = listed
            .lines()
            .filter(|l| l.starts_with("-A ") && l.contains("--to-source"))
            .count();
        ensure!(snat == want, "{snat} iptables SNAT rules, not {want}");
        let post = run("iptables", &["-w", "-t", "nat", "-S", "POSTROUTING"])?;
        ensure!(
            post.contains(&format!("-j {OVNK_CHAIN}")),
            "POSTROUTING does not jump to {OVNK_CHAIN}"
        );
        Ok(())
    }

    /// The rule OVN-Kubernetes adds through its netlink library (in process).
    fn netlink_rule(&self, pod: Ipv4Addr) -> Rule {
        Rule {
            family: Family::V4,
            priority: OVNK_PRIORITY,
            table: self.table,
            action: RuleAction::ToTable,
            fwmark: None,
            fwmask: None,
            src: Some(IpNet::from(IpAddr::from(pod))),
            dst: None,
            iif: None,
            oif: None,
            protocol: RouteProtocol::Unspec,
        }
    }
}

#[derive(Debug, Default)]
struct OvnkProgramming {
    full_ip: Vec<Duration>,
    full_iptables: Vec<Duration>,
    full: Vec<Duration>,
    add_rule: Vec<Duration>,
    add_iptables: Vec<Duration>,
    add: Vec<Duration>,
    add_rule_netlink: Vec<Duration>,
}

async fn ovnk_programming(args: &Args, ovnk: &Ovnk) -> Result<OvnkProgramming> {
    let nl = Netlink::connect()?;
    let mut out = OvnkProgramming::default();
    ovnk.teardown()?;
    progress(format!(
        "(a) OVN-K way: {} pods from empty × {}",
        thousands(args.pods.into()),
        args.runs
    ));
    for run_index in 0..args.runs {
        check_interrupted()?;
        if run_index > 0 {
            ovnk.teardown()?;
        }
        let (ip, iptables) = ovnk.setup()?;
        out.full_ip.push(ip);
        out.full_iptables.push(iptables);
        out.full.push(ip + iptables);
    }
    ovnk.check(&nl, 0).await?;

    progress(format!(
        "(a) OVN-K way: +1 pod at {} × {}",
        thousands(args.pods.into()),
        args.reps
    ));
    let table = ovnk.table.to_string();
    let priority = OVNK_PRIORITY.to_string();
    for k in 0..args.reps {
        check_interrupted()?;
        let pod = extra_ip(k);
        let from = format!("{pod}/32");
        let rule = |verb: &'static str| {
            vec![
                "rule", verb, "from", &from, "lookup", &table, "priority", &priority,
            ]
        };
        let snat = ovnk.snat(pod);
        let snat: Vec<&str> = snat.split(' ').collect();
        let iptables = |verb: &'static str| {
            let mut a = vec!["-w", "-t", "nat", verb, OVNK_CHAIN];
            a.extend(snat.iter().copied());
            a
        };
        let start = Instant::now();
        run("ip", &rule("add"))?;
        let rule_done = start.elapsed();
        run("iptables", &iptables("-A"))?;
        let all = start.elapsed();
        out.add_rule.push(rule_done);
        out.add_iptables.push(all - rule_done);
        out.add.push(all);
        if k == 0 {
            ovnk.check(&nl, 1).await?;
        }
        run("ip", &rule("del"))?;
        run("iptables", &iptables("-D"))?;
    }
    for k in 0..args.reps {
        check_interrupted()?;
        let rule = ovnk.netlink_rule(extra_ip(k));
        let start = Instant::now();
        nl.add_rule(&rule).await?;
        out.add_rule_netlink.push(start.elapsed());
        nl.delete_rule(&rule).await?;
    }
    ovnk.check(&nl, 0).await?;
    ovnk.teardown()?;
    Ok(out)
}

// -------------------------------------------------------------------------------------------
// (b) traffic

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Config {
    NoRules,
    KubeEgress,
    /// The same with the counting chain deleted after the apply: what the egress IP counters cost.
    KubeEgressUncounted,
    /// kube-egress with only the served pod in the plan: what the chains cost whatever the size.
    KubeEgressOne,
    /// The N-pod plan plus N other local pods steered to another egress node: the prerouting and
    /// tunnel chains exist, and every packet of the measured traffic misses the marks map.
    KubeEgressSteering,
    Ovnk,
}

impl Config {
    const ALL: [Config; 6] = [
        Config::NoRules,
        Config::KubeEgress,
        Config::KubeEgressUncounted,
        Config::KubeEgressOne,
        Config::KubeEgressSteering,
        Config::Ovnk,
    ];

    fn is_kube_egress(self) -> bool {
        matches!(
            self,
            Config::KubeEgress
                | Config::KubeEgressUncounted
                | Config::KubeEgressOne
                | Config::KubeEgressSteering
        )
    }

    fn label(self, pods: u32) -> String {
        let n = thousands(pods.into());
        match self {
            Config::NoRules => "no egress rules (CNI masquerade only)".into(),
            Config::KubeEgress => format!("kube-egress, {n} SNAT map entries"),
            Config::KubeEgressUncounted => {
                format!("kube-egress, {n} SNAT map entries, egress IP counters removed")
            }
            Config::KubeEgressOne => "kube-egress, 1 SNAT map entry (the served pod)".into(),
            Config::KubeEgressSteering => {
                format!("kube-egress, {n} SNAT map entries + {n} other pods steered away")
            }
            Config::Ovnk => format!("OVN-K way, {n} ip rules + {n} iptables SNAT rules"),
        }
    }

    /// The source address the server must see for the served pod.
    fn expected_source(self) -> Ipv4Addr {
        match self {
            Config::NoRules => NODE_IP,
            _ => EGRESS_IP,
        }
    }
}

/// A request/response server: reads a request, answers a fixed response, waits for the client
/// to close (it resets the connection, so no side keeps TIME_WAIT), and counts the source
/// addresses it saw. One accepting thread per client.
struct RateServer {
    netns: String,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    peers: Arc<Mutex<HashMap<IpAddr, u64>>>,
    threads: Vec<JoinHandle<()>>,
}

const REQUEST: &[u8] = b"GET / HTTP/1.0\r\n\r\n";
const RESPONSE: &[u8] = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok";
/// Clients in parallel, so that the rate depends on the CPU cost of a connection more than on
/// how fast idle virtual CPUs wake up.
const RATE_CLIENTS: usize = 4;

impl RateServer {
    fn start(netns: &str, addr: SocketAddr) -> Result<RateServer> {
        // The socket stays in the namespace it was made in.
        let listener = kube_egress_testbed::in_netns(netns, || TcpListener::bind(addr))?
            .with_context(|| format!("binding {addr} in {netns}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let peers: Arc<Mutex<HashMap<IpAddr, u64>>> = Arc::default();
        let mut threads = Vec::new();
        for _ in 0..RATE_CLIENTS {
            let listener = listener.try_clone()?;
            let (stop, peers) = (Arc::clone(&stop), Arc::clone(&peers));
            threads.push(
                std::thread::Builder::new()
                    .name("rate server".into())
                    .spawn(move || {
                        for stream in listener.incoming() {
                            if stop.load(Ordering::SeqCst) {
                                break;
                            }
                            let Ok(mut stream) = stream else { continue };
                            let Ok(peer) = stream.peer_addr() else {
                                continue;
                            };
                            let _ = serve_one(&mut stream, peer.ip(), &peers);
                        }
                    })?,
            );
        }
        Ok(RateServer {
            netns: netns.to_string(),
            addr,
            stop,
            peers,
            threads,
        })
    }

    fn take_peers(&self) -> HashMap<IpAddr, u64> {
        std::mem::take(&mut *self.peers.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Drop for RateServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake every accepting thread: each ends on the first connection it accepts now.
        let (addr, threads) = (self.addr, self.threads.len());
        let _ = kube_egress_testbed::in_netns(&self.netns, || {
            (0..threads)
                .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok())
                .collect::<Vec<_>>()
        });
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn serve_one(
    stream: &mut TcpStream,
    peer: IpAddr,
    peers: &Mutex<HashMap<IpAddr, u64>>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = [0u8; 512];
    let mut got = 0;
    while !buf[..got].windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf[got..])?;
        if n == 0 || got + n == buf.len() {
            return Err(std::io::ErrorKind::InvalidData.into());
        }
        got += n;
    }
    // Counted before answering: once a client has its answer, its request is counted.
    *peers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(peer)
        .or_default() += 1;
    stream.write_all(RESPONSE)?;
    // Until the client's reset (or end of stream).
    let _ = stream.read(&mut buf);
    Ok(())
}

/// [`RATE_CLIENTS`] clients making requests for `duration`, each on a new connection that the
/// client resets after the answer. Call it from a thread in the client's namespace (the client
/// threads inherit it). Returns (answered, failed, elapsed).
fn rate_clients(server: SocketAddr, duration: Duration) -> (u64, u64, Duration) {
    let start = Instant::now();
    let counts: Vec<(u64, u64)> = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..RATE_CLIENTS)
            .map(|_| {
                scope.spawn(|| {
                    let (mut ok, mut failed) = (0u64, 0u64);
                    while start.elapsed() < duration && failed < 50 {
                        match one_request(server) {
                            Ok(()) => ok += 1,
                            Err(_) => failed += 1,
                        }
                    }
                    (ok, failed)
                })
            })
            .collect();
        clients
            .into_iter()
            .map(|c| c.join().unwrap_or((0, 1)))
            .collect()
    });
    let elapsed = start.elapsed();
    counts
        .iter()
        .fold((0, 0, elapsed), |(o, f, e), (ok, failed)| {
            (o + ok, f + failed, e)
        })
}

fn one_request(server: SocketAddr) -> std::io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&server, Duration::from_secs(1))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    stream.write_all(REQUEST)?;
    let mut buf = [0u8; 64];
    let mut got = 0;
    while got < RESPONSE.len() {
        let n = stream.read(&mut buf[got..])?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        got += n;
    }
    if &buf[..got] != RESPONSE {
        return Err(std::io::ErrorKind::InvalidData.into());
    }
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on an open socket with a correctly sized linger struct.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    Ok(())
}

#[derive(Debug, Default, Clone)]
struct TrafficFigures {
    /// The round of each measurement.
    round: Vec<usize>,
    /// Gbit/s received by the server, per round.
    gbits: Vec<f64>,
    retransmits: Vec<u64>,
    /// Requests per second, per round.
    rate: Vec<f64>,
}

struct Traffic<'a> {
    tb: &'a Testbed,
    node_ns: String,
    served_ns: String,
    other_ns: String,
    web_ns: String,
    server: Ipv4Addr,
    plan: &'a NodePlan,
    plan_one: &'a NodePlan,
    plan_steering: &'a NodePlan,
    ovnk: &'a Ovnk,
}

impl Traffic<'_> {
    fn setup(&self, config: Config) -> Result<()> {
        match config {
            Config::NoRules => run_in(&self.node_ns, || async {
                ensure!(
                    Nft::new(TUNNEL_DEVICE).read().await?.is_none(),
                    "table inet kube_egress exists"
                );
                let rules = run("ip", &["rule", "show", "priority", "6000"])?;
                ensure!(rules.trim().is_empty(), "rules at priority 6000: {rules}");
                ensure!(
                    run("iptables", &["-w", "-t", "nat", "-S", OVNK_CHAIN]).is_err(),
                    "chain {OVNK_CHAIN} exists"
                );
                anyhow::Ok(())
            })??,
            Config::KubeEgress
            | Config::KubeEgressUncounted
            | Config::KubeEgressOne
            | Config::KubeEgressSteering => run_in(&self.node_ns, || async {
                let plan = match config {
                    Config::KubeEgressOne => self.plan_one,
                    Config::KubeEgressSteering => self.plan_steering,
                    _ => self.plan,
                };
                let nl = Netlink::connect()?;
                let mut applier = Applier::new(nl, Nft::new(TUNNEL_DEVICE), Some(NODE_IP.into()));
                let report = applier.apply(plan).await?;
                ensure!(
                    report.problems.is_empty(),
                    "problems: {:?}",
                    report.problems
                );
                let diffs = applier.verify(plan).await?;
                ensure!(diffs.is_empty(), "kernel differs from the plan: {diffs:?}");
                let entries = Nft::new(TUNNEL_DEVICE)
                    .read()
                    .await?
                    .map(|state| state.snat.len());
                ensure!(
                    entries == Some(plan.snat.len()),
                    "the SNAT map holds {entries:?} entries, not {}",
                    plan.snat.len()
                );
                let table = run("nft", &["list", "table", "inet", "kube_egress"])?;
                let steering = config == Config::KubeEgressSteering;
                ensure!(
                    table.contains("chain prerouting") == steering
                        && table.contains("chain tunnel_out") == steering
                        && table.contains("chain egress_count"),
                    "unexpected chains for {config:?}:\n{table}"
                );
                if config == Config::KubeEgressUncounted {
                    run(
                        "nft",
                        &["flush chain inet kube_egress egress_count; \
                             delete chain inet kube_egress egress_count"],
                    )?;
                }
                anyhow::Ok(())
            })??,
            Config::Ovnk => {
                run_in(&self.node_ns, || async {
                    self.ovnk.setup()?;
                    self.ovnk.check(&Netlink::connect()?, 0).await?;
                    // iptables' nat table is registered after the CNI's masquerade table, at the
                    // same priority (srcnat); the kernel runs a hook registered later before the
                    // earlier ones of equal priority, so the SNAT rules bind first, as in
                    // OVN-Kubernetes where they precede the masquerade. The source check below
                    // proves it.
                    anyhow::Ok(())
                })??
            }
        }
        Ok(())
    }

    fn teardown(&self, config: Config) -> Result<()> {
        match config {
            Config::NoRules => Ok(()),
            Config::KubeEgress
            | Config::KubeEgressUncounted
            | Config::KubeEgressOne
            | Config::KubeEgressSteering => run_in(&self.node_ns, || async {
                let nl = Netlink::connect()?;
                let mut applier = Applier::new(nl, Nft::new(TUNNEL_DEVICE), Some(NODE_IP.into()));
                applier.remove_all().await?;
                anyhow::Ok(())
            })?,
            Config::Ovnk => run_in(&self.node_ns, || async { self.ovnk.teardown() })?,
        }
    }

    /// A request from the served pod leaves with the expected source; the other pod's with the
    /// node IP.
    fn check_sources(&self, config: Config) -> Result<()> {
        let url = self.tb.server().url();
        for (ns, want) in [
            (&self.served_ns, config.expected_source()),
            (&self.other_ns, NODE_IP),
        ] {
            let reply = kube_egress_testbed::http_get(ns, &url, Duration::from_secs(2))
                .with_context(|| format!("request from {ns} in configuration {config:?}"))?;
            ensure!(
                reply.seen_source() == Some(want.into()),
                "{config:?}: a request from {ns} reached the server from {:?}, not {want}",
                reply.seen_source()
            );
        }
        Ok(())
    }

    /// One measurement: iperf3, then the request rate, each against a server on its own port
    /// (`index`), so that no connection tracking entry left by another configuration (a reused
    /// 5-tuple keeps its old NAT binding) can take part.
    fn measure(
        &self,
        config: Config,
        round: usize,
        index: u16,
        args: &Args,
        figures: &mut TrafficFigures,
    ) -> Result<()> {
        let want: IpAddr = config.expected_source().into();
        check_interrupted()?;
        let (gbits, retransmits, seen) = self.iperf(IPERF_PORT + index, args.seconds)?;
        ensure!(
            seen == Some(want),
            "{config:?}: the iperf3 server saw the client at {seen:?}, not {want}"
        );
        check_interrupted()?;
        let addr = SocketAddr::from((self.server, RATE_PORT + index));
        let rate = RateServer::start(&self.web_ns, addr)?;
        let duration = Duration::from_secs(args.rate_seconds);
        let (ok, failed, elapsed) =
            kube_egress_testbed::in_netns(&self.served_ns, || rate_clients(addr, duration))?;
        let peers = rate.take_peers();
        drop(rate);
        ensure!(
            failed == 0,
            "{config:?}: {failed} of {} requests failed",
            ok + failed
        );
        ensure!(
            peers.len() == 1 && peers.get(&want) == Some(&ok),
            "{config:?}: the server saw sources {peers:?}, wanted {ok} × {want}"
        );
        if config.is_kube_egress() && config != Config::KubeEgressUncounted {
            // The table is new in each round: its counter holds this round's traffic, of which
            // every request sent at least a SYN, the request and an ACK or FIN.
            let counters = run_in(&self.node_ns, || async {
                Nft::new(TUNNEL_DEVICE).egress_counters().await
            })??;
            let counted = counters.get(&want).map(|c| c.packets).unwrap_or(0);
            ensure!(
                counters.len() == 1 && counted >= 3 * ok,
                "{config:?}: the egress IP counters hold {counters:?} after {ok} requests"
            );
        }
        figures.round.push(round);
        figures.gbits.push(gbits);
        figures.retransmits.push(retransmits);
        figures.rate.push(ok as f64 / elapsed.as_secs_f64());
        Ok(())
    }

    /// iperf3 from the served pod to a one-off server on `port`: (Gbit/s received by the
    /// server, retransmissions, the client address the server saw).
    fn iperf(&self, port: u16, seconds: u64) -> Result<(f64, u64, Option<IpAddr>)> {
        let server = self.server.to_string();
        let port_s = port.to_string();
        let log = std::env::temp_dir().join(format!(
            "kube-egress-dataplane-{}-{port}.json",
            std::process::id()
        ));
        let file = std::fs::File::create(&log).with_context(|| format!("{}", log.display()))?;
        let pid = self.tb.spawn(
            &self.web_ns,
            Command::new("iperf3")
                .args(["-s", "-1", "-J", "-B", &server, "-p", &port_s])
                .stdin(Stdio::null())
                .stdout(file)
                .stderr(Stdio::null()),
        )?;
        let result = (|| {
            let deadline = Instant::now() + Duration::from_secs(5);
            while run_in_ns(&self.web_ns, &["ss", "-Hltn", &format!("sport = :{port}")])?
                .trim()
                .is_empty()
            {
                ensure!(
                    Instant::now() < deadline,
                    "iperf3 -s did not start listening"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            let output = kube_egress_testbed::output(
                &self.served_ns,
                Command::new("iperf3").args([
                    "-c",
                    &server,
                    "-p",
                    &port_s,
                    "-t",
                    &seconds.to_string(),
                    "-J",
                ]),
            )?;
            let doc: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
            if !output.status.success() {
                bail!(
                    "iperf3 -c {server} -p {port}: {}",
                    doc["error"]
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| String::from_utf8_lossy(&output.stderr).into_owned())
                );
            }
            let end = &doc["end"];
            let bps = end["sum_received"]["bits_per_second"]
                .as_f64()
                .context("iperf3 -J: no end.sum_received.bits_per_second")?;
            let retransmits = end["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
            // The server's report names the client address it saw.
            let deadline = Instant::now() + Duration::from_secs(3);
            let seen = loop {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                if let Ok(server_doc) = serde_json::from_str::<serde_json::Value>(&text) {
                    break server_doc["start"]["connected"][0]["remote_host"]
                        .as_str()
                        .and_then(|h| h.parse::<IpAddr>().ok());
                }
                ensure!(
                    Instant::now() < deadline,
                    "no report from the iperf3 server"
                );
                std::thread::sleep(Duration::from_millis(20));
            };
            Ok((bps / 1e9, retransmits, seen))
        })();
        self.tb.stop_process(pid);
        let _ = std::fs::remove_file(&log);
        result
    }
}

/// Runs a command inside a namespace and returns its output.
fn run_in_ns(ns: &str, argv: &[&str]) -> Result<String> {
    Ok(kube_egress_testbed::exec(ns, argv)?)
}

fn traffic(
    tb: &Testbed,
    args: &Args,
    plan: &NodePlan,
    ovnk: &Ovnk,
) -> Result<Vec<(Config, TrafficFigures)>> {
    let served: IpAddr = pod_ip(args.pods / 2).into();
    let plan_one = NodePlan {
        snat: plan
            .snat
            .iter()
            .filter(|e| e.pod_ip == served)
            .cloned()
            .collect(),
        ..plan.clone()
    };
    ensure!(
        plan_one.snat.len() == 1,
        "the served pod is not in the plan"
    );
    let plan_steering = steering_plan(plan, args.pods);
    let t = Traffic {
        tb,
        node_ns: tb.node(NODE).context("no node")?.netns().name().to_string(),
        served_ns: tb
            .pod("served")
            .context("no pod")?
            .netns()
            .name()
            .to_string(),
        other_ns: tb
            .pod("other")
            .context("no pod")?
            .netns()
            .name()
            .to_string(),
        web_ns: tb.server().netns().name().to_string(),
        server: tb.server().ip(),
        plan,
        plan_one: &plan_one,
        plan_steering: &plan_steering,
        ovnk,
    };
    let mut figures: Vec<(Config, TrafficFigures)> = Config::ALL
        .iter()
        .map(|c| (*c, TrafficFigures::default()))
        .collect();
    let mut index = 0u16;
    for round in 0..args.rounds {
        // The OVN-K way only in the first rounds (it is ten times slower; its setup takes
        // seconds); each configuration takes each position in turn.
        let configs: Vec<Config> = Config::ALL
            .into_iter()
            .filter(|c| *c != Config::Ovnk || round < args.ovnk_rounds)
            .collect();
        for i in 0..configs.len() {
            let config = configs[(round + i) % configs.len()];
            check_interrupted()?;
            progress(format!(
                "(b) round {}/{}: {}",
                round + 1,
                args.rounds,
                config.label(args.pods)
            ));
            t.setup(config)?;
            let result = t.check_sources(config).and_then(|()| {
                let slot = &mut figures.iter_mut().find(|(c, _)| *c == config).unwrap().1;
                t.measure(config, round, index, args, slot)
            });
            index += 1;
            let down = t.teardown(config);
            result?;
            down?;
        }
    }
    Ok(figures)
}

// -------------------------------------------------------------------------------------------
// Report

struct Results {
    args: Args,
    ke: KubeEgressProgramming,
    ovnk: OvnkProgramming,
    traffic: Vec<(Config, TrafficFigures)>,
    namespace: String,
}

fn report(r: &Results, header: &str) -> (String, bool) {
    let n = thousands(r.args.pods.into());
    let mut s = String::new();
    let mut all_met = true;
    let _ = writeln!(s, "{header}");

    let ke_full = stats(&r.ke.full);
    let ov_full = stats(&r.ovnk.full);
    let ke_add = stats(&r.ke.add);
    let ov_add = stats(&r.ovnk.add);
    let full_ok = ke_full.median <= TARGET_FULL;
    let add_ok = ke_add.median <= TARGET_ADD;
    all_met &= full_ok && add_ok;
    let _ = writeln!(
        s,
        "\n(a) Programming {n} served pods on one node (namespace {}), one egress IP on {LINK}\n",
        r.namespace
    );
    let _ = writeln!(
        s,
        "| Measurement | kube-egress (`Applier::apply`) | OVN-K way (ip rule + iptables SNAT per pod) | OVN-K / kube-egress | Target (kube-egress) | |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    let _ = writeln!(
        s,
        "| {n} pods from empty (median of {}) | **{}** (runs {}) | **{}** (`ip -batch` {} + `iptables-restore --noflush` {}; runs {}) | {} | ≤ 1 s | {} |",
        r.args.runs,
        dur(ke_full.median),
        durs(&r.ke.full),
        dur(ov_full.median),
        dur(stats(&r.ovnk.full_ip).median),
        dur(stats(&r.ovnk.full_iptables).median),
        durs(&r.ovnk.full),
        ratio(ov_full.median.as_secs_f64(), ke_full.median.as_secs_f64()),
        verdict(full_ok)
    );
    let _ = writeln!(
        s,
        "| +1 pod at {n} ({} different pods) | median **{}**, p99 {}, max {} | median **{}** (`ip rule add` {} + `iptables -A` {}), p99 {}, max {} | {} | ≤ 10 ms | {} |",
        r.args.reps,
        dur(ke_add.median),
        dur(ke_add.p99),
        dur(ke_add.max),
        dur(ov_add.median),
        dur(stats(&r.ovnk.add_rule).median),
        dur(stats(&r.ovnk.add_iptables).median),
        dur(ov_add.p99),
        dur(ov_add.max),
        ratio(ov_add.median.as_secs_f64(), ke_add.median.as_secs_f64()),
        verdict(add_ok)
    );
    let ov_add_nl: Vec<Duration> = r
        .ovnk
        .add_rule_netlink
        .iter()
        .zip(&r.ovnk.add_iptables)
        .map(|(a, b)| *a + *b)
        .collect();
    let ov_add_nl = stats(&ov_add_nl);
    let _ = writeln!(
        s,
        "| +1 pod, OVN-K's ip rule through netlink in process (as OVN-Kubernetes adds it) | (as above) | median **{}** (netlink rule {} + `iptables -A` {}), p99 {} | {} | | |",
        dur(ov_add_nl.median),
        dur(stats(&r.ovnk.add_rule_netlink).median),
        dur(stats(&r.ovnk.add_iptables).median),
        dur(ov_add_nl.p99),
        ratio(ov_add_nl.median.as_secs_f64(), ke_add.median.as_secs_f64()),
    );
    let _ = writeln!(
        s,
        "\nWhere the time goes (medians; kube-egress: {} kernel changes from empty, {} for +1 pod):",
        r.ke.full_changes,
        r.ke.add_changes.iter().max().copied().unwrap_or(0)
    );
    let full_desired = stats(&r.ke.full_desired).median;
    let full_build = stats(&r.ke.full_build).median;
    let full_nft = stats(&r.ke.full_nft).median;
    let _ = writeln!(
        s,
        "- kube-egress from empty: desired state (netlink reads + {n} entries) {}; building the JSON batch (the whole table, {n} map elements) {}; the transaction (serialising it + handing it to {}) {}; the rest of the {}, not broken down further (reading the absent table, creating the VXLAN device, placing and announcing the egress IP, sysctls) {}",
        dur(full_desired),
        dur(full_build),
        r.ke.nft_backend,
        dur(full_nft),
        dur(ke_full.median),
        dur(ke_full
            .median
            .saturating_sub(full_desired + full_build + full_nft))
    );
    let reads = stats(&r.ke.reads).median;
    let compute = stats(&r.ke.compute).median;
    let batch = stats(&r.ke.nft_batch).median;
    let empty = stats(&r.ke.nft_empty).median;
    let _ = writeln!(
        s,
        "- kube-egress +1 pod: netlink reads {} (links, addresses ×2, tunnel ×2, neighbours, FDB, links, owned addresses, rules); desired state of all {n} entries + diff {}; the one-element nft batch through {} {} (an empty batch {}; the same one-element batch through the `nft` program {}); the rest of the {}, not broken down further (prerequisite sysctl reads, the copy of the nft state the applier keeps for its next diff) {}",
        dur(reads),
        dur(compute),
        r.ke.nft_backend,
        dur(batch),
        dur(empty),
        dur(stats(&r.ke.nft_program_batch).median),
        dur(ke_add.median),
        dur(ke_add.median.saturating_sub(reads + compute + batch))
    );
    let _ = writeln!(
        s,
        "- OVN-K way +1 pod: `ip rule add` {} as a process, {} through netlink in process (the kernel checks the new rule against the {n} existing ones); `iptables -A` into a chain of {n} rules {}",
        dur(stats(&r.ovnk.add_rule).median),
        dur(stats(&r.ovnk.add_rule_netlink).median),
        dur(stats(&r.ovnk.add_iptables).median)
    );

    let _ = writeln!(
        s,
        "\n(b) Traffic from a served pod through the egress node to the external server (pod {} of {n}; {} rounds, the OVN-K way in the first {}; configurations in turn)\n",
        thousands((r.args.pods / 2 + 1).into()),
        r.args.rounds,
        r.args.ovnk_rounds.min(r.args.rounds)
    );
    let _ = writeln!(
        s,
        "| Egress node holds | iperf3 TCP, {} s: median (rounds) | vs no rules | requests/s, {RATE_CLIENTS} clients, a new connection each, {} s: median (rounds) | vs no rules |",
        r.args.seconds, r.args.rate_seconds
    );
    let _ = writeln!(s, "|---|---|---|---|---|");
    let none = r
        .traffic
        .iter()
        .find(|(c, _)| *c == Config::NoRules)
        .map(|(_, f)| f);
    let gbits = |f: &TrafficFigures, i: usize| f.gbits[i];
    let rate = |f: &TrafficFigures, i: usize| f.rate[i];
    for (config, f) in &r.traffic {
        if f.gbits.is_empty() {
            continue;
        }
        let (gr, qr) = match none {
            Some(none) if *config != Config::NoRules => {
                (ratios(f, none, gbits).text(), ratios(f, none, rate).text())
            }
            _ => ("1".into(), "1".into()),
        };
        let _ = writeln!(
            s,
            "| {} | **{:.2} Gbit/s** ({}; retransmits {}) | {gr} | **{}** ({}) | {qr} |",
            config.label(r.args.pods),
            median_f(&f.gbits),
            f.gbits
                .iter()
                .map(|v| format!("{v:.2}"))
                .collect::<Vec<_>>()
                .join(" / "),
            f.retransmits
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join("/"),
            thousands(median_f(&f.rate) as u64),
            f.rate
                .iter()
                .map(|v| thousands(*v as u64))
                .collect::<Vec<_>>()
                .join(" / "),
        );
    }
    let _ = writeln!(
        s,
        "\nRatios: the median of the per-round ratios (each configuration against no rules in the same round, measured seconds apart), then the ratio of the medians in brackets."
    );
    if let (Some(none), Some((_, f))) = (
        none,
        r.traffic.iter().find(|(c, _)| *c == Config::KubeEgress),
    ) && !f.gbits.is_empty()
    {
        let gr = ratios(f, none, gbits).paired;
        let qr = ratios(f, none, rate).paired;
        let (g_ok, q_ok) = (gr >= TARGET_RATIO, qr >= TARGET_RATIO);
        all_met &= g_ok && q_ok;
        let _ = writeln!(
            s,
            "Target: kube-egress ({n} entries) / no rules ≥ {TARGET_RATIO} (median of per-round ratios): iperf3 throughput {gr:.3} ({}), request rate {qr:.3} ({})",
            verdict(g_ok),
            verdict(q_ok)
        );
    }
    let find = |config: Config| {
        r.traffic
            .iter()
            .find(|(c, f)| *c == config && !f.gbits.is_empty())
            .map(|(_, f)| f)
    };
    if let (Some(counted), Some(uncounted)) =
        (find(Config::KubeEgress), find(Config::KubeEgressUncounted))
    {
        let _ = writeln!(
            s,
            "Egress IP counters: kube-egress with / without its counting chain, paired by round: iperf3 throughput {}, request rate {}",
            ratios(counted, uncounted, gbits).text(),
            ratios(counted, uncounted, rate).text()
        );
    }
    (s, all_met)
}

// -------------------------------------------------------------------------------------------

fn bench(args: &Args) -> Result<Results> {
    let served = pod_ip(args.pods / 2);
    let tb = TestbedBuilder::new()
        .node(NodeSpec::new(NODE, NODE_IP, POD_CIDR))
        .pod(PodSpec::new("served", NODE).ip(served))
        .pod(PodSpec::new("other", NODE).ip(OTHER_POD))
        .build()
        .context("building the testbed")?;
    let node_ns = tb.node(NODE).context("no node")?.netns().name().to_string();
    progress(format!("testbed {}* built", tb.prefix()));

    let base = base_plan(args.pods);
    ensure!(
        base.snat.iter().any(|e| e.pod_ip == IpAddr::from(served)),
        "the served pod is not in the plan"
    );
    let nft_backend = first_line("iptables", "-V").contains("nf_tables");
    let table = run_in(&node_ns, || async {
        let nl = Netlink::connect()?;
        let link = nl.link(LINK).await?.context("no eth0")?;
        anyhow::Ok(1000 + link.index)
    })??;
    let ovnk = Ovnk {
        pods: (0..args.pods).map(pod_ip).collect(),
        table,
        nft_backend,
    };

    let ke = run_in(&node_ns, || kube_egress_programming(args, &base))??;
    let ov = run_in(&node_ns, || async {
        let result = ovnk_programming(args, &ovnk).await;
        if result.is_err() {
            let _ = ovnk.teardown();
        }
        result
    })??;
    let traffic = traffic(&tb, args, &base, &ovnk)?;
    let results = Results {
        args: args.clone(),
        ke,
        ovnk: ov,
        traffic,
        namespace: node_ns,
    };
    tb.destroy().context("removing the testbed")?;
    Ok(results)
}

fn main() -> ExitCode {
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "dataplane: a benchmark; run it with `cargo bench -p kube-egress-linux --bench dataplane`"
        );
        return ExitCode::SUCCESS;
    }
    catch_signals();
    let args = match Args::parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("dataplane: {e:#}");
            return ExitCode::from(2);
        }
    };
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("dataplane: needs root (network namespaces, nftables, iptables); run it as root");
        return ExitCode::from(2);
    }
    let missing = missing_tools();
    if !missing.is_empty() {
        eprintln!("dataplane: missing tools: {}", missing.join(", "));
        return ExitCode::from(2);
    }
    let tools = format!(
        "{}; {}; {}; {}",
        first_line("nft", "-v"),
        first_line("iptables", "-V"),
        first_line("ip", "-V"),
        first_line("iperf3", "-v")
    );
    let commit = Command::new("git")
        .args([
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "rev-parse",
            "--short",
            "HEAD",
        ])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let load_before = loadavg();
    let started = Instant::now();
    let results = match bench(&args) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("dataplane: FAILED: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let header = format!(
        "Linux data plane benchmark: kube-egress vs OVN-Kubernetes' way\n\
         machine: {}\n\
         tools: {tools}\n\
         commit: {commit}; {} pods, {} runs, {} repetitions, {} rounds\n\
         load average (1/5/15 min): {load_before} before, {} after; run took {:.0} s",
        machine(),
        thousands(args.pods.into()),
        args.runs,
        args.reps,
        args.rounds,
        loadavg(),
        started.elapsed().as_secs_f64()
    );
    let (text, all_met) = report(&results, &header);
    println!("{text}");
    if !all_met {
        println!("(some targets missed; see above)");
    }
    ExitCode::SUCCESS
}
