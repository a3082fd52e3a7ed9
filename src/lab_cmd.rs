//! `kube-egress lab`: builds a three-node cluster out of network namespaces, runs the real
//! controller and agents on it, shows egress IPs working and failing over, and removes
//! everything (see `kube_egress_lab::scenario`). `kube-egress lab down` removes a lab left up
//! with `--keep`. `--dataplane ovn` runs the same walkthrough on a mini OVN-Kubernetes cluster
//! with the controller writing OVN Northbound rows (`kube_egress_lab::ovn_scenario`).
//!
//! Ctrl-C (SIGINT), SIGTERM and SIGHUP stop the scenario at its next step and remove the lab; a
//! second signal, or a scenario that does not stop within [`INTERRUPT_GRACE`], removes the
//! namespaces (and the OVN lab's central daemons and run directory) from a watchdog thread and
//! exits at once.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use kube_egress_lab::ovn_scenario::{OvnScenario, ovn_probe};
use kube_egress_lab::scenario::{
    FailoverReport, KEPT_PREFIX, LabReport, Scenario, ScenarioError, ScenarioOptions, probe_text,
};
use kube_egress_probe::ReachabilityConfig;

use crate::controller_cmd::Dataplane;

/// How long an interrupted scenario may take to reach its next step before the watchdog removes
/// the lab itself.
const INTERRUPT_GRACE: Duration = Duration::from_secs(10);
/// Exit status after an interruption (128 + SIGINT, as shells report it).
const EXIT_INTERRUPTED: u8 = 130;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct LabArgs {
    #[command(subcommand)]
    pub action: Option<LabAction>,
    /// The data plane of the lab: `linux` (agents programming each node's routing, nftables and
    /// addresses) or `ovn` (a mini OVN-Kubernetes cluster with real OVN daemons, the controller
    /// writing Northbound rows, probing the nodes with gRPC on --egressip-node-healthcheck-port,
    /// 9107 when 0; needs the OVN/OVS packages; no --keep).
    #[arg(long, value_enum, default_value_t = Dataplane::Linux)]
    pub dataplane: Dataplane,
    /// Print one JSON object (checks, before, after, statusItems, failover) instead of the text
    /// report; progress still goes to standard error.
    #[arg(long)]
    pub json: bool,
    /// How many times an egress node is cut to measure failover (0 skips the step).
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub failover_samples: usize,
    /// Leave the lab up afterwards (namespaces `kelab-*`, data plane as programmed, web servers
    /// answering); remove it with `kube-egress lab down`. Linux data plane only.
    #[arg(long)]
    pub keep: bool,
    /// The namespace prefix of a kept lab.
    #[arg(long, hide = true, default_value = KEPT_PREFIX)]
    pub prefix: String,
    #[command(flatten)]
    pub reachability: ReachabilityConfig,
}

#[derive(Debug, Subcommand)]
pub enum LabAction {
    /// Remove a lab left up with `--keep` (every `kelab-*` namespace and the processes in it).
    Down {
        /// The namespace prefix of the kept lab.
        #[arg(long, hide = true, default_value = KEPT_PREFIX)]
        prefix: String,
    },
    /// Serve the lab's web server from its own process (used by `--keep`).
    #[command(hide = true)]
    ServeHttp {
        #[arg(long)]
        netns: String,
        #[arg(long)]
        listen: SocketAddr,
    },
}

/// Signals received so far.
static SIGNALS: AtomicUsize = AtomicUsize::new(0);
/// What the watchdog removes: the lab's namespaces (with the processes in them) and, for the OVN
/// lab, its central daemons and run directory.
struct Leftovers {
    prefix: String,
    pids: Vec<u32>,
    rundir: Option<std::path::PathBuf>,
}

/// The lab being built, for the watchdog.
static LEFTOVERS: Mutex<Option<Leftovers>> = Mutex::new(None);

fn set_leftovers(leftovers: Leftovers) {
    *LEFTOVERS.lock().unwrap_or_else(|e| e.into_inner()) = Some(leftovers);
}

extern "C" fn on_signal(_: libc::c_int) {
    SIGNALS.fetch_add(1, Ordering::SeqCst);
    let msg = b"\nkube-egress lab: interrupted, removing the lab...\n";
    // SAFETY: write(2) is async-signal-safe; the buffer is a static.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
    }
}

fn install_signal_handlers() {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only touches an atomic and calls write(2).
        unsafe {
            libc::signal(signal, on_signal as *const () as libc::sighandler_t);
        }
    }
    std::thread::Builder::new()
        .name("lab watchdog".into())
        .spawn(|| {
            let mut first: Option<Instant> = None;
            loop {
                std::thread::sleep(Duration::from_millis(50));
                let n = SIGNALS.load(Ordering::SeqCst);
                if n == 0 {
                    continue;
                }
                let first = *first.get_or_insert_with(Instant::now);
                if n >= 2 || first.elapsed() > INTERRUPT_GRACE {
                    let leftovers = LEFTOVERS.lock().unwrap_or_else(|e| e.into_inner()).take();
                    if let Some(l) = leftovers {
                        for pid in l.pids {
                            // SAFETY: kill(2) on a daemon this process started and still owns.
                            unsafe {
                                libc::kill(pid as libc::pid_t, libc::SIGKILL);
                            }
                        }
                        let _ = kube_egress_testbed::remove_namespaces_with_prefix(&l.prefix);
                        if let Some(dir) = l.rundir {
                            let _ = std::fs::remove_dir_all(dir);
                        }
                    }
                    eprintln!("kube-egress lab: removed the lab's namespaces; exiting");
                    std::process::exit(EXIT_INTERRUPTED.into());
                }
            }
        })
        .expect("starting the watchdog thread");
}

fn interrupted() -> bool {
    SIGNALS.load(Ordering::SeqCst) > 0
}

/// Runs the lab; `Ok(code)` is the process's exit status.
pub fn run(args: &LabArgs) -> Result<u8> {
    match &args.action {
        Some(LabAction::Down { prefix }) => down(prefix),
        Some(LabAction::ServeHttp { netns, listen }) => serve_http(netns, *listen),
        None => lab(args),
    }
}

fn check_prerequisites() -> Result<()> {
    if !kube_egress_testbed::is_root() {
        bail!("the lab creates network namespaces and needs root: run it with sudo");
    }
    for (tool, package) in [("ip", "iproute2"), ("nft", "nftables")] {
        let found = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .any(|dir| std::path::Path::new(dir).join(tool).exists());
        if !found {
            bail!("`{tool}` is missing: install the Debian package {package}");
        }
    }
    Ok(())
}

fn lab(args: &LabArgs) -> Result<u8> {
    if args.dataplane == Dataplane::Ovn {
        return lab_ovn(args);
    }
    check_prerequisites()?;
    let probe = args.reachability.settings();
    let prefix = &args.prefix;
    let existing: Vec<String> = kube_egress_testbed::list_namespaces()?
        .into_iter()
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .collect();
    if args.keep && !existing.is_empty() {
        bail!(
            "a kept lab is still up ({} namespaces {prefix}-*): remove it with `kube-egress lab down`",
            existing.len()
        );
    }
    install_signal_handlers();
    let start = Instant::now();
    let mut progress = |line: &str| {
        eprintln!("[{:5.1}s] {line}", start.elapsed().as_secs_f64());
    };
    progress(&format!(
        "kube-egress lab: building a 3-node cluster in network namespaces; probing: {}",
        probe_text(&probe)
    ));
    let options = ScenarioOptions {
        failover_samples: args.failover_samples,
        probe,
        keep_prefix: args.keep.then(|| prefix.clone()),
    };
    let scenario = match Scenario::start(options, &mut progress) {
        Ok(s) => s,
        Err(ScenarioError::Interrupted) => return Ok(EXIT_INTERRUPTED),
        Err(e) => return Err(e).context("starting the lab"),
    };
    set_leftovers(Leftovers {
        prefix: scenario.testbed().prefix().into(),
        pids: Vec::new(),
        rundir: None,
    });
    let outcome = scenario.run(&mut progress, &interrupted);
    let report = match outcome {
        Ok(report) => report,
        Err(ScenarioError::Interrupted) => {
            progress("interrupted: removing the lab");
            finish_removal(scenario, &mut progress);
            return Ok(EXIT_INTERRUPTED);
        }
        Err(e) => {
            progress(&format!("the scenario failed: {e}; removing the lab"));
            finish_removal(scenario, &mut progress);
            return Err(e).context("running the lab");
        }
    };
    if args.keep && !interrupted() {
        let exe = std::env::current_exe().context("locating the kube-egress binary")?;
        let description = scenario
            .keep(|netns, listen| {
                let mut cmd = std::process::Command::new(&exe);
                cmd.args(["lab", "serve-http", "--netns", netns, "--listen", listen])
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null());
                cmd
            })
            .context("keeping the lab")?;
        print_report(args, &report)?;
        eprintln!("\n{}", kept_help(&description));
    } else {
        progress("removing the lab");
        finish_removal(scenario, &mut progress);
        print_report(args, &report)?;
    }
    if interrupted() {
        return Ok(EXIT_INTERRUPTED);
    }
    Ok(if report.passed() { 0 } else { 1 })
}

fn finish_removal(scenario: Scenario, progress: &mut dyn FnMut(&str)) {
    removed(scenario.destroy(), progress);
}

fn removed(outcome: Result<(), String>, progress: &mut dyn FnMut(&str)) {
    match outcome {
        Ok(()) => progress("removed every namespace, link and process of the lab"),
        Err(e) => progress(&format!("removing the lab: {e}")),
    }
}

/// `kube-egress lab --dataplane ovn`.
fn lab_ovn(args: &LabArgs) -> Result<u8> {
    if args.keep {
        bail!(
            "--keep is not supported with --dataplane ovn: the OVN daemons of the lab are children \
             of this process and go with it"
        );
    }
    if let Some(reason) = kube_egress_ovn_testbed::unavailable_reason() {
        bail!("the OVN lab {reason}");
    }
    let probe = ovn_probe(args.reachability.settings());
    install_signal_handlers();
    let start = Instant::now();
    let mut progress = |line: &str| {
        eprintln!("[{:5.1}s] {line}", start.elapsed().as_secs_f64());
    };
    progress(&format!(
        "kube-egress lab --dataplane ovn: starting a 3-node OVN-Kubernetes cluster in network namespaces; probing: {}",
        probe_text(&probe)
    ));
    let options = ScenarioOptions {
        failover_samples: args.failover_samples,
        probe,
        keep_prefix: None,
    };
    let scenario = match OvnScenario::start(options, &mut progress) {
        Ok(s) => s,
        Err(ScenarioError::Interrupted) => return Ok(EXIT_INTERRUPTED),
        Err(e) => return Err(e).context("starting the OVN lab"),
    };
    let cluster = scenario.cluster();
    set_leftovers(Leftovers {
        prefix: cluster.prefix().into(),
        pids: cluster
            .daemon_pids()
            .into_iter()
            .map(|(_, pid)| pid)
            .collect(),
        rundir: Some(cluster.rundir().to_path_buf()),
    });
    let outcome = scenario.run(&mut progress, &interrupted);
    let report = match outcome {
        Ok(report) => report,
        Err(ScenarioError::Interrupted) => {
            progress("interrupted: removing the lab");
            removed(scenario.destroy(), &mut progress);
            return Ok(EXIT_INTERRUPTED);
        }
        Err(e) => {
            progress(&format!("the scenario failed: {e}; removing the lab"));
            removed(scenario.destroy(), &mut progress);
            return Err(e).context("running the OVN lab");
        }
    };
    progress("removing the lab");
    removed(scenario.destroy(), &mut progress);
    print_report(args, &report)?;
    if interrupted() {
        return Ok(EXIT_INTERRUPTED);
    }
    Ok(if report.passed() { 0 } else { 1 })
}

fn print_report(args: &LabArgs, report: &LabReport) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, report)?;
        writeln!(out)?;
    } else {
        out.write_all(text_report(report).as_bytes())?;
    }
    Ok(())
}

fn text_report(r: &LabReport) -> String {
    let mut s = String::new();
    let w = r.before.keys().map(String::len).max().unwrap_or(3).max(3);
    if !r.notes.is_empty() {
        s.push_str(&format!("\nData plane: {}\n", r.dataplane));
        for note in &r.notes {
            s.push_str(&format!("  - {note}\n"));
        }
    }
    s.push_str("\nSource address seen by the web server 203.0.113.10\n");
    s.push_str(&format!(
        "  {:<w$}  {:<16}  after egressips-prod\n",
        "pod", "before"
    ));
    for (pod, before) in &r.before {
        let after = r
            .after_seen
            .get(pod)
            .map(|v| v.join(", "))
            .unwrap_or_default();
        s.push_str(&format!("  {pod:<w$}  {before:<16}  {after}\n"));
    }
    s.push_str("\nstatus.items\n");
    for (name, items) in &r.status_items {
        let items: Vec<String> = items
            .iter()
            .map(|i| format!("{} on {}", i.egress_ip, i.node))
            .collect();
        s.push_str(&format!("  {name:<18} {}\n", items.join(", ")));
    }
    let sec = &r.secondary;
    if !sec.egress_ip.is_empty() {
        s.push_str(&format!(
            "\nSeed 000: {} on {}'s secondary link; pod4 -> {} (behind the secondary gateway)\n  before: {}\n  after:  {}\n",
            sec.egress_ip,
            sec.node.as_deref().unwrap_or("no node"),
            sec.server,
            sec.before,
            sec.seen.join(", ")
        ));
        if let Some(table) = sec.table {
            s.push_str(&format!("  route table {table}:\n"));
            for route in &sec.routes {
                s.push_str(&format!("    {route}\n"));
            }
        }
    }
    s.push_str(&failover_text(&r.failover, &r.dataplane));
    let metrics: Vec<&str> = r
        .metrics
        .lines()
        .filter(|l| l.starts_with("ovnkube_") && !l.contains("_bucket") && !l.contains("_created"))
        .collect();
    if !metrics.is_empty() {
        s.push_str("\nController metrics (as /metrics serves them)\n");
        for line in metrics {
            s.push_str(&format!("  {line}\n"));
        }
    }
    s.push_str("\nChecks\n");
    for c in &r.checks {
        let mark = if c.passed { "pass" } else { "FAIL" };
        s.push_str(&format!("  [{mark}] {}: {}\n", c.name, c.detail));
    }
    let passed = r.checks.iter().filter(|c| c.passed).count();
    s.push_str(&format!(
        "\n{passed} of {} checks passed.\n",
        r.checks.len()
    ));
    s
}

fn failover_text(f: &FailoverReport, dataplane: &str) -> String {
    if f.samples == 0 {
        return String::new();
    }
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0} ms"));
    let mut s = format!(
        "\nFailover: the egress node of {} cut {} times (probing {})\n  first request through the new egress node: p50 {}, p99 {}, max {} (target p99 <= {:.0} ms)\n",
        f.ip,
        f.samples,
        f.probe,
        ms(f.p50_ms),
        ms(f.p99_ms),
        ms(f.max_ms),
        f.target_ms
    );
    for (i, run) in f.runs.iter().enumerate() {
        if dataplane == "ovn" {
            s.push_str(&format!(
                "  {:>2}. cut {} -> {}: detected {}, Northbound written {}, first request {}, all requests {}\n",
                i + 1,
                run.cut,
                run.to.as_deref().unwrap_or("-"),
                ms(run.detected_ms),
                ms(run.northbound_ms),
                ms(run.first_request_ms),
                ms(run.recovered_ms)
            ));
            continue;
        }
        s.push_str(&format!(
            "  {:>2}. cut {} -> {}: detected {}, status {}, IP placed {}, steering updated {}, first request {}, all requests {}\n",
            i + 1,
            run.cut,
            run.to.as_deref().unwrap_or("-"),
            ms(run.detected_ms),
            ms(run.moved_ms),
            ms(run.egress_node_applied_ms),
            ms(run.pod_node_applied_ms),
            ms(run.first_request_ms),
            ms(run.recovered_ms)
        ));
    }
    s
}

fn kept_help(description: &str) -> String {
    format!(
        "The lab stays up: the data plane as the agents left it, the web servers answering. The \
         controller and agents have stopped, so nothing fails over any more.\n{description}\
         Remove it: kube-egress lab down\n"
    )
}

fn down(prefix: &str) -> Result<u8> {
    check_prerequisites()?;
    let removed = kube_egress_testbed::remove_namespaces_with_prefix(&format!("{prefix}-"))?;
    if removed.is_empty() {
        eprintln!("kube-egress lab down: no lab is up");
    } else {
        eprintln!(
            "kube-egress lab down: removed {} namespaces ({}) and the processes in them",
            removed.len(),
            removed.join(", ")
        );
    }
    Ok(0)
}

fn serve_http(netns: &str, listen: SocketAddr) -> Result<u8> {
    let _server = kube_egress_testbed::HttpServer::start(netns, listen)
        .with_context(|| format!("serving HTTP on {listen} in {netns}"))?;
    loop {
        std::thread::park();
    }
}
