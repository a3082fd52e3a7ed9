//! The Linux data plane with real packets: the built `kube-egress agent` programs the nodes of
//! the lab testbed (seed 003's three-node cluster, `examples/cluster`), and pods make HTTP
//! requests to web servers that report the source address they saw.
//!
//! Needs root (network namespaces); every test is skipped with a message otherwise. Each test
//! builds its own testbed (unique namespace names, removed on every exit path, including the
//! agents started here) and its own copy of the manifests in a temporary directory.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kube_egress_linux::desired::TUNNEL_DEVICE;
use kube_egress_linux::nft::{Nft, PacketCount};
use kube_egress_testbed::{Pod, Testbed, is_root};

const BIN: &str = env!("CARGO_BIN_EXE_kube-egress");
const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/cluster");
const NODES: [&str; 3] = ["node1", "node2", "node3"];
/// `egressips-prod`, hosted on node1 (.10) and node3 (.102).
const PROD_EGRESS_IPS: [&str; 2] = ["192.168.126.10", "192.168.126.102"];
/// `egressip-reports` on node1's secondary link eth1 (serves default/pod4 on node2).
const REPORTS_EGRESS_IP: &str = "10.10.0.100";
/// The file of `examples/cluster` holding both EgressIPs.
const EGRESSIPS: &str = "egressips.yaml";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A lab testbed and a manifest directory (a copy of `examples/cluster`) for the agents.
struct Lab {
    // Dropped first: stops the agents started with `spawn`, then deletes the namespaces.
    tb: Testbed,
    dir: tempfile::TempDir,
}

/// A long-running agent started in a node namespace through the testbed (stopped on drop).
struct Agent {
    node: String,
    pid: u32,
    log: PathBuf,
}

impl Agent {
    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the agent's log contains `needle`; panics with the log after `timeout` or
    /// when the agent reports a fatal error.
    fn wait_for(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if log.contains(needle) {
                return;
            }
            assert!(
                !log.contains("error:") && Instant::now() < deadline,
                "agent on {} (pid {}): no `{needle}` in its log within {timeout:?}:\n{log}",
                self.node,
                self.pid
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Lab {
    /// `None` (after saying why) when not root.
    fn new() -> Option<Lab> {
        if !is_root() {
            eprintln!(
                "SKIPPED: the data-plane tests need root (they create network namespaces); CI runs them as root"
            );
            return None;
        }
        let tb = Testbed::lab().unwrap_or_else(|e| panic!("building the lab testbed: {e}"));
        let dir = tempfile::tempdir().expect("a temporary directory");
        let lab = Lab { tb, dir };
        fs::create_dir(lab.manifests()).unwrap();
        for entry in fs::read_dir(EXAMPLES).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                fs::copy(&path, lab.manifests().join(path.file_name().unwrap())).unwrap();
            }
        }
        Some(lab)
    }

    fn manifests(&self) -> PathBuf {
        self.dir.path().join("manifests")
    }

    /// Writes a manifest file atomically (a running agent never reads half of it).
    fn write_manifest(&self, name: &str, content: &str) {
        let staging = self.dir.path().join(format!(".{name}.new"));
        fs::write(&staging, content).unwrap();
        fs::rename(&staging, self.manifests().join(name)).unwrap();
    }

    /// Puts back the file of `examples/cluster` of that name.
    fn restore_manifest(&self, name: &str) {
        let content = fs::read_to_string(Path::new(EXAMPLES).join(name)).unwrap();
        self.write_manifest(name, &content);
    }

    fn remove_manifest(&self, name: &str) {
        fs::remove_file(self.manifests().join(name)).unwrap();
    }

    fn ns(&self, node: &str) -> &str {
        self.tb
            .node(node)
            .unwrap_or_else(|| panic!("no node {node}"))
            .netns()
            .name()
    }

    fn node_ip(&self, node: &str) -> IpAddr {
        self.tb.node(node).unwrap().ip().into()
    }

    fn pod(&self, name: &str) -> &Pod {
        self.tb.pod(name).unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// `ip netns exec <node ns> kube-egress agent --node <node> --manifests DIR --once`.
    fn once_as(&self, node_ns_of: &str, node: &str) -> Output {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                self.ns(node_ns_of),
                BIN,
                "agent",
                "--node",
                node,
            ])
            .arg("--manifests")
            .arg(self.manifests())
            .arg("--once")
            .stdin(Stdio::null())
            .output()
            .expect("start ip netns exec kube-egress agent --once")
    }

    /// Runs `--once` on `node`, which must exit 0 saying the kernel matches; returns its log.
    fn once_ok(&self, node: &str) -> String {
        let out = self.once_as(node, node);
        let log = text(&out.stderr);
        assert!(
            out.status.success(),
            "agent --once on {node} failed ({}):\n{log}",
            out.status
        );
        assert!(log.contains("kernel matches"), "{node}:\n{log}");
        assert!(!log.contains("problem:"), "{node}:\n{log}");
        log
    }

    /// Starts `ip netns exec <ns> kube-egress agent --node <node> --manifests DIR` through the
    /// testbed and waits until it has applied its plan and watches for changes.
    fn start_agent(&self, node: &str) -> Agent {
        self.start_agent_with(node, &[])
    }

    /// [`Lab::start_agent`] with more arguments.
    fn start_agent_with(&self, node: &str, more: &[&str]) -> Agent {
        let log = unique(self.dir.path().join(format!("agent-{node}.log")));
        let file = fs::File::create(&log).unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.ns(node), BIN, "agent", "--node", node])
            .arg("--manifests")
            .arg(self.manifests())
            .args(more)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file);
        let pid = self
            .tb
            .spawn(self.ns(node), &mut cmd)
            .unwrap_or_else(|e| panic!("starting the agent on {node}: {e}"));
        let agent = Agent {
            node: node.to_string(),
            pid,
            log,
        };
        agent.wait_for("watching", Duration::from_secs(10));
        agent
    }

    /// SIGTERM; the agent must exit 0 (it leaves the data plane in place).
    fn stop_agent(&self, agent: &Agent) {
        let status = self
            .tb
            .stop_process(agent.pid)
            .expect("the agent was started by this testbed");
        assert!(
            status.success(),
            "agent on {} ended with {status}:\n{}",
            agent.node,
            agent.log()
        );
    }

    /// Runs a command in one of the testbed's namespaces; it must succeed.
    fn run(&self, ns: &str, argv: &[&str]) -> String {
        self.tb
            .exec(ns, argv)
            .unwrap_or_else(|e| panic!("in {ns}: {e}"))
    }

    /// `ip <args>` in a namespace.
    fn ip(&self, ns: &str, args: &[&str]) -> String {
        let mut argv = vec!["ip"];
        argv.extend_from_slice(args);
        self.run(ns, &argv)
    }

    /// The routes of a table in a node namespace.
    fn table(&self, node: &str, table: u32) -> String {
        self.ip(
            self.ns(node),
            &["-4", "route", "show", "table", &table.to_string()],
        )
    }

    fn ifindex(&self, node: &str, link: &str) -> u32 {
        let line = self.ip(self.ns(node), &["-o", "link", "show", "dev", link]);
        line.split(':')
            .next()
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no ifindex in `{line}`"))
    }

    /// The IPv4 addresses of a link (`a.b.c.d/len`).
    fn addresses(&self, node: &str, link: &str) -> Vec<String> {
        self.ip(self.ns(node), &["-4", "-o", "addr", "show", "dev", link])
            .lines()
            .filter_map(|l| {
                let mut words = l.split_whitespace();
                words.find(|w| *w == "inet")?;
                words.next().map(str::to_string)
            })
            .collect()
    }

    /// `nft list ...` in a node namespace, or `None` when it fails (absent object).
    fn nft(&self, node: &str, args: &[&str]) -> Option<String> {
        let mut argv = vec!["nft", "list"];
        argv.extend_from_slice(args);
        self.tb.exec(self.ns(node), &argv).ok()
    }

    /// The elements of one of our nft maps, as listed (empty when it has none).
    fn nft_elements(&self, node: &str, map: &str) -> String {
        let listing = self
            .nft(node, &["map", "inet", "kube_egress", map])
            .unwrap_or_else(|| panic!("no map {map} on {node}"));
        match listing.split_once("elements = {") {
            Some((_, rest)) => rest.split('}').next().unwrap_or("").trim().to_string(),
            None => String::new(),
        }
    }

    /// The rules at priority 6000, one per line.
    fn rules_6000(&self, node: &str) -> Vec<String> {
        self.ip(self.ns(node), &["-4", "rule", "show"])
            .lines()
            .filter(|l| l.starts_with("6000:"))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect()
    }

    /// What the agent owns on a node, as listed by `ip` and `nft`: compared before and after an
    /// agent restart to show nothing was torn down or rebuilt.
    fn owned_state(&self, node: &str) -> String {
        let ns = self.ns(node);
        let mut parts = vec![
            self.rules_6000(node).join("\n"),
            // One line per route, multipath next hops included.
            self.ip(ns, &["-4", "-o", "route", "show", "table", "all"])
                .lines()
                .filter(|l| l.contains("proto 238"))
                .collect::<Vec<_>>()
                .join("\n"),
            self.ip(ns, &["-4", "-o", "addr", "show"]),
            self.nft(node, &["table", "inet", "kube_egress"])
                .unwrap_or_else(|| "no table inet kube_egress".into()),
        ];
        if self.ip(ns, &["-o", "link", "show"]).contains("kegress0") {
            parts.push(self.ip(ns, &["-o", "link", "show", "dev", "kegress0"]));
            parts.push(self.ip(ns, &["neigh", "show", "dev", "kegress0"]));
            parts.push(self.run(ns, &["bridge", "fdb", "show", "dev", "kegress0"]));
        }
        parts.join("\n---\n")
    }
}

/// A path that does not exist yet (`name`, `name.1`, ...).
fn unique(path: PathBuf) -> PathBuf {
    let mut candidate = path.clone();
    let mut n = 0;
    while candidate.exists() {
        n += 1;
        candidate = PathBuf::from(format!("{}.{n}", path.display()));
    }
    candidate
}

/// The source address a server saw for one request, or why the request failed.
fn source(pod: &Pod, target: &str) -> Result<IpAddr, String> {
    source_with_timeout(pod, target, kube_egress_testbed::DEFAULT_TIMEOUT)
}

fn source_with_timeout(pod: &Pod, target: &str, timeout: Duration) -> Result<IpAddr, String> {
    let reply = pod
        .http_get_timeout(target, timeout)
        .map_err(|e| e.to_string())?;
    if reply.status != 200 {
        return Err(format!("HTTP {}: {}", reply.status, reply.body));
    }
    reply
        .seen_source()
        .ok_or_else(|| format!("not an address: {:?}", reply.body))
}

/// The source address a server saw; the request must work.
fn seen_by(pod: &Pod, target: &str) -> IpAddr {
    source(pod, target).unwrap_or_else(|e| panic!("{} -> {target}: {e}", pod.name()))
}

/// Repeats requests until one is answered with a source satisfying `want`, or panics after
/// `timeout` with the last answer.
fn wait_for_source(pod: &Pod, target: &str, timeout: Duration, want: impl Fn(IpAddr) -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        let got = source_with_timeout(pod, target, Duration::from_millis(500));
        if let Ok(seen) = got
            && want(seen)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} -> {target}: still {got:?} after {timeout:?}",
            pod.name()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn prod_egress_ips() -> Vec<IpAddr> {
    PROD_EGRESS_IPS.iter().map(|s| ip(s)).collect()
}

/// Seed 002's walkthrough on the primary network, and ECMP over two egress nodes.
#[test]
fn primary_subnet_egress_ip_replaces_the_node_ip_and_spreads_over_both_egress_nodes() {
    let Some(lab) = Lab::new() else { return };
    let server = lab.tb.server();
    let url = server.url();
    let (pod1, pod2, pod3) = (lab.pod("pod1"), lab.pod("pod2"), lab.pod("pod3"));

    // Before any EgressIP: the agents run, and pods leave with their node's IP (the CNI's
    // masquerade).
    lab.remove_manifest(EGRESSIPS);
    for node in NODES {
        lab.once_ok(node);
    }
    assert_eq!(seen_by(pod2, &url), lab.node_ip("node2"));
    assert_eq!(seen_by(pod1, &url), lab.node_ip("node1"));
    assert_eq!(seen_by(pod3, &url), lab.node_ip("node3"));

    // The EgressIP is created: every agent applies the new plan once.
    lab.restore_manifest(EGRESSIPS);
    for node in NODES {
        lab.once_ok(node);
    }
    assert!(
        lab.addresses("node1", "eth0")
            .contains(&"192.168.126.10/32".to_string())
    );
    assert!(
        lab.addresses("node3", "eth0")
            .contains(&"192.168.126.102/32".to_string())
    );

    // Pods on an egress node are served there, by that node's egress IP.
    server.clear();
    for _ in 0..5 {
        assert_eq!(seen_by(pod1, &url), ip("192.168.126.10"), "pod1 on node1");
        assert_eq!(seen_by(pod3, &url), ip("192.168.126.102"), "pod3 on node3");
    }
    assert_eq!(server.seen().len(), 10);

    // pod2 on node2 is steered over the tunnel; one connection after another spreads over both
    // egress nodes.
    server.clear();
    let mut counts: BTreeMap<IpAddr, usize> = BTreeMap::new();
    for _ in 0..40 {
        *counts.entry(seen_by(pod2, &url)).or_default() += 1;
    }
    assert_eq!(
        counts.keys().copied().collect::<Vec<_>>(),
        prod_egress_ips(),
        "pod2's 40 connections arrived from {counts:?}"
    );
    for (egress_ip, n) in &counts {
        assert!(
            *n >= 5,
            "ECMP: only {n} of 40 connections left by {egress_ip} ({counts:?})"
        );
    }
    // The server's own log agrees with what the clients were told.
    let mut logged: BTreeMap<IpAddr, usize> = BTreeMap::new();
    for seen in server.seen() {
        *logged.entry(seen).or_default() += 1;
    }
    assert_eq!(logged, counts);
}

/// Seed 000: an egress IP on a secondary link, with the server behind that network's gateway.
#[test]
fn secondary_interface_egress_ip_routes_through_the_gateway_and_follows_its_changes() {
    let Some(lab) = Lab::new() else { return };
    let sec = lab.tb.secondary("sec").expect("the lab has network sec");
    let far = sec.server();
    let url = far.url();
    let pod4 = lab.pod("pod4");
    let gw_ns = sec.gateway_netns().name();
    let node1 = lab.ns("node1");

    // Without the data plane the far server cannot be reached from pod4's node at all.
    assert!(
        source_with_timeout(pod4, &url, Duration::from_secs(1)).is_err(),
        "198.51.100.0/24 must be reachable only through the secondary gateway"
    );

    for node in NODES {
        lab.once_ok(node);
    }
    let table = 1000 + lab.ifindex("node1", "eth1");
    let routes = lab.table("node1", table);
    assert!(
        routes.contains("198.51.100.0/24 via 10.10.0.1 dev eth1"),
        "table {table} on node1 lacks the gateway route:\n{routes}"
    );
    assert!(
        lab.addresses("node1", "eth1")
            .contains(&format!("{REPORTS_EGRESS_IP}/32"))
    );

    far.clear();
    for _ in 0..3 {
        assert_eq!(seen_by(pod4, &url), ip(REPORTS_EGRESS_IP));
    }
    assert_eq!(far.seen(), vec![ip(REPORTS_EGRESS_IP); 3]);

    // The gateway moves to another address while an agent runs on node1. (The new address is
    // a secondary one of the same subnet: promoted, not deleted, when the old one goes.)
    let agent = lab.start_agent("node1");
    lab.run(
        gw_ns,
        &[
            "sysctl",
            "-q",
            "-w",
            "net.ipv4.conf.eth0.promote_secondaries=1",
        ],
    );
    lab.ip(gw_ns, &["addr", "add", "10.10.0.254/24", "dev", "eth0"]);
    lab.ip(
        node1,
        &[
            "route",
            "replace",
            "198.51.100.0/24",
            "via",
            "10.10.0.254",
            "dev",
            "eth1",
        ],
    );
    let changed = Instant::now();
    loop {
        let routes = lab.table("node1", table);
        if routes.contains("198.51.100.0/24 via 10.10.0.254 dev eth1")
            && !routes.contains("via 10.10.0.1 ")
        {
            break;
        }
        assert!(
            changed.elapsed() < Duration::from_secs(1),
            "table {table} did not follow the main table within 1 s:\n{routes}\nagent log:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // The old gateway address goes away, and node1 forgets its MAC: a route still using it
    // would now fail.
    lab.ip(gw_ns, &["addr", "del", "10.10.0.1/24", "dev", "eth0"]);
    lab.ip(node1, &["neigh", "flush", "dev", "eth1", "to", "10.10.0.1"]);
    far.clear();
    for _ in 0..3 {
        assert_eq!(seen_by(pod4, &url), ip(REPORTS_EGRESS_IP));
    }
    assert_eq!(far.seen(), vec![ip(REPORTS_EGRESS_IP); 3]);
    lab.stop_agent(&agent);
}

/// Requests between pods and from pods to node IPs: (what, source seen, the two acceptable
/// sources: the client pod's IP, or its node's IP as the CNI's masquerade makes it).
fn east_west(lab: &Lab) -> Vec<(String, IpAddr, [IpAddr; 2])> {
    let mut cases: Vec<(&str, &str, IpAddr)> = Vec::new();
    for (from, to) in [("pod2", "pod1"), ("pod4", "pod3"), ("pod2", "pod3")] {
        cases.push((from, to, lab.pod(to).ip().into()));
    }
    for (from, to) in [("pod2", "node1"), ("pod2", "node3"), ("pod4", "node1")] {
        cases.push((from, to, lab.node_ip(to)));
    }
    cases
        .into_iter()
        .map(|(from, to, target)| {
            let pod = lab.pod(from);
            let seen = seen_by(pod, &format!("{target}:8080"));
            let acceptable = [pod.ip().into(), lab.node_ip(pod.node())];
            (format!("{from} -> {to} ({target})"), seen, acceptable)
        })
        .collect()
}

/// Pod-to-pod and pod-to-node traffic is not steered or rewritten by us.
#[test]
fn east_west_traffic_is_untouched() {
    let Some(lab) = Lab::new() else { return };
    let _servers: Vec<_> = ["pod1", "pod3"]
        .iter()
        .map(|p| lab.pod(p).serve_http(8080).unwrap())
        .chain(
            ["node1", "node3"]
                .iter()
                .map(|n| lab.tb.node(n).unwrap().serve_http(8080).unwrap()),
        )
        .collect();

    // What the testbed's CNI alone does: pod to pod keeps the pod IP.
    let without = east_west(&lab);
    for (what, seen, acceptable) in &without {
        assert!(
            acceptable.contains(seen),
            "without the agent, {what}: {seen}"
        );
        if what.contains("-> pod") {
            assert_eq!(*seen, acceptable[0], "without the agent, {what}");
        }
    }

    for node in NODES {
        lab.once_ok(node);
    }
    // The agents are at work: pod2 and pod4 are steered when they leave the cluster.
    assert!(prod_egress_ips().contains(&seen_by(lab.pod("pod2"), &lab.tb.server().url())));
    assert_eq!(
        seen_by(
            lab.pod("pod4"),
            &lab.tb.secondary("sec").unwrap().server().url()
        ),
        ip(REPORTS_EGRESS_IP)
    );

    let with = east_west(&lab);
    assert_eq!(with, without, "east-west traffic changed with the agents");
}

/// When a request of the restart test was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Running,
    Down,
    Restarted,
}

/// Restarting the agent of a node with served pods loses no request.
#[test]
fn agent_restart_under_continuous_requests_loses_nothing() {
    let Some(lab) = Lab::new() else { return };
    lab.once_ok("node1");
    lab.once_ok("node3");
    let first = lab.start_agent("node2");
    let pod2 = lab.pod("pod2");
    let url = lab.tb.server().url();
    assert!(prod_egress_ips().contains(&seen_by(pod2, &url)));
    let before = lab.owned_state("node2");
    assert!(
        before.contains("lookup 50000 proto 238") && before.contains("nexthop via"),
        "node2 is not steering:\n{before}"
    );

    let phase = std::sync::Mutex::new(Phase::Running);
    let stop = AtomicBool::new(false);
    let results = std::thread::scope(|s| {
        let client = s.spawn(|| {
            let mut results = Vec::new();
            let mut next = Instant::now();
            while !stop.load(Ordering::SeqCst) {
                let during = *phase.lock().unwrap();
                results.push((during, source(pod2, &url)));
                // 20 requests a second.
                next += Duration::from_millis(50);
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            results
        });
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            std::thread::sleep(Duration::from_millis(800));
            lab.stop_agent(&first);
            *phase.lock().unwrap() = Phase::Down;
            let down = lab.owned_state("node2");
            std::thread::sleep(Duration::from_millis(800));
            let second = lab.start_agent("node2");
            *phase.lock().unwrap() = Phase::Restarted;
            std::thread::sleep(Duration::from_millis(800));
            (down, second)
        }));
        stop.store(true, Ordering::SeqCst);
        let results = client.join().unwrap();
        match outcome {
            Ok((down, second)) => (results, down, second),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    });
    let (results, down, second) = results;

    let failed: Vec<_> = results
        .iter()
        .filter(|(_, r)| !matches!(r, Ok(seen) if prod_egress_ips().contains(seen)))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed or left without an egress IP: {failed:?}\nrestarted agent:\n{}",
        failed.len(),
        results.len(),
        second.log()
    );
    assert_eq!(
        down, before,
        "the data plane changed when the agent stopped"
    );
    assert_eq!(
        lab.owned_state("node2"),
        before,
        "the restarted agent changed the data plane"
    );
    // Adopting what exists touches nothing, not even an identical rewrite.
    assert!(
        second.log().contains("plan applied (0 changes)"),
        "the restarted agent rewrote kernel state:\n{}",
        second.log()
    );
    for p in [Phase::Running, Phase::Down, Phase::Restarted] {
        let n = results.iter().filter(|(q, _)| *q == p).count();
        assert!(n >= 10, "only {n} requests while the agent was {p:?}");
    }
    lab.stop_agent(&second);
}

/// Foreign objects placed in a node namespace, in the places the agent works in.
const FOREIGN_ADDRESSES: [(&str, &str); 2] =
    [("eth0", "192.168.126.50/32"), ("eth0", "10.99.0.1/32")];

fn place_foreign(lab: &Lab, node: &str) {
    let ns = lab.ns(node);
    lab.ip(
        ns,
        &[
            "rule", "add", "priority", "6000", "fwmark", "0x99", "lookup", "99",
        ],
    );
    lab.ip(
        ns,
        &[
            "route",
            "add",
            "203.0.113.0/24",
            "via",
            "192.168.126.1",
            "dev",
            "eth0",
            "table",
            "1099",
        ],
    );
    for (link, address) in FOREIGN_ADDRESSES {
        lab.ip(ns, &["addr", "add", address, "dev", link]);
    }
    kube_egress_testbed::exec_with_input(
        ns,
        &["nft", "-f", "-"],
        "table inet foreign {
\tchain input {
\t\ttype filter hook input priority 0; policy accept;
\t\tip saddr 192.0.2.1 drop
\t}
}
table ip kube_egress {
\tchain output {
\t\ttype filter hook output priority 0; policy accept;
\t\tip daddr 192.0.2.2 drop
\t}
}
",
    )
    .unwrap();
}

/// The foreign objects as listed; must never change.
fn foreign_state(lab: &Lab, node: &str) -> String {
    let rules: Vec<String> = lab
        .rules_6000(node)
        .into_iter()
        .filter(|r| !r.contains("proto 238"))
        .collect();
    let addresses: Vec<String> = lab
        .addresses(node, "eth0")
        .into_iter()
        .filter(|a| FOREIGN_ADDRESSES.iter().any(|(_, f)| f == a))
        .collect();
    [
        rules.join("\n"),
        lab.table(node, 1099),
        addresses.join("\n"),
        lab.nft(node, &["table", "inet", "foreign"])
            .unwrap_or_default(),
        lab.nft(node, &["table", "ip", "kube_egress"])
            .unwrap_or_default(),
    ]
    .join("\n---\n")
}

/// A new plan removes what the old one placed, and nothing that is not ours.
#[test]
fn stale_state_is_removed_and_foreign_state_is_kept() {
    let Some(lab) = Lab::new() else { return };
    let nodes = ["node1", "node2"];
    let mut foreign = BTreeMap::new();
    for node in nodes {
        place_foreign(&lab, node);
        let state = foreign_state(&lab, node);
        for needle in [
            "fwmark 0x99 lookup 99",
            "203.0.113.0/24 via 192.168.126.1 dev eth0",
            "192.168.126.50/32",
            "10.99.0.1/32",
            "chain input",
            "chain output",
        ] {
            assert!(state.contains(needle), "{node}: no {needle} in\n{state}");
        }
        foreign.insert(node, state);
    }

    // The plan of examples/cluster: node1 hosts two egress IPs, node2 steers to node1 and node3.
    for node in NODES {
        lab.once_ok(node);
    }
    let link_table = 1000 + lab.ifindex("node1", "eth1");
    let mark = format!("fwmark {link_table:#x} lookup {link_table} proto 238");
    assert!(
        lab.rules_6000("node1").iter().any(|r| r.contains(&mark)),
        "{:?}",
        lab.rules_6000("node1")
    );
    assert!(lab.table("node1", link_table).contains("198.51.100.0/24"));
    assert!(
        lab.addresses("node1", "eth0")
            .contains(&"192.168.126.10/32".into())
    );
    assert!(
        lab.addresses("node1", "eth1")
            .contains(&"10.10.0.100/32".into())
    );
    assert!(lab.nft_elements("node1", "snat_v4").contains("10.128.2.10"));
    assert!(
        lab.nft_elements("node1", "marks_v4")
            .contains("10.128.2.11")
    );
    assert!(
        lab.nft_elements("node1", "counters_v4")
            .contains("192.168.126.10")
    );
    assert!(
        lab.nft_elements("node2", "marks_v4")
            .contains("10.128.2.10")
    );
    assert_eq!(
        lab.rules_6000("node2").len(),
        3,
        "{:?}",
        lab.rules_6000("node2")
    );
    assert!(
        lab.table("node2", 50000)
            .contains("nexthop via 192.168.126.4")
    );
    assert!(!lab.table("node2", 50001).is_empty());
    assert!(
        lab.ip(lab.ns("node2"), &["neigh", "show", "dev", "kegress0"])
            .contains("192.168.126.2")
    );
    for node in nodes {
        assert_eq!(foreign_state(&lab, node), foreign[node], "{node}");
    }

    // The EgressIPs are deleted: node1 hosts nothing, node2 steers nothing.
    lab.remove_manifest(EGRESSIPS);
    for node in NODES {
        lab.once_ok(node);
    }
    let owned_rules = |node: &str| -> Vec<String> {
        lab.rules_6000(node)
            .into_iter()
            .filter(|r| r.contains("proto 238"))
            .collect()
    };
    for node in nodes {
        assert_eq!(owned_rules(node), Vec::<String>::new(), "{node}");
        let routes: Vec<String> = lab
            .ip(lab.ns(node), &["-4", "route", "show", "table", "all"])
            .lines()
            .filter(|l| l.contains("proto 238"))
            .map(str::to_string)
            .collect();
        assert_eq!(routes, Vec::<String>::new(), "{node}: our routes remain");
        for map in ["snat_v4", "marks_v4", "counters_v4"] {
            assert_eq!(lab.nft_elements(node, map), "", "{node}: map {map}");
        }
        // With every map empty, no chain is left to cost anything per packet.
        let table = lab.nft(node, &["table", "inet", "kube_egress"]).unwrap();
        assert!(!table.contains("chain "), "{node}:\n{table}");
        assert_eq!(
            foreign_state(&lab, node),
            foreign[node],
            "{node}: foreign state changed"
        );
    }
    assert_eq!(lab.table("node1", link_table), "");
    for (link, gone) in [("eth0", "192.168.126.10/32"), ("eth1", "10.10.0.100/32")] {
        assert!(
            !lab.addresses("node1", link).contains(&gone.to_string()),
            "node1 still has {gone} on {link}"
        );
    }
    assert_eq!(
        lab.ip(lab.ns("node2"), &["neigh", "show", "dev", "kegress0"]),
        ""
    );
    let fdb = lab.run(
        lab.ns("node2"),
        &["bridge", "fdb", "show", "dev", "kegress0"],
    );
    assert!(!fdb.contains("dst 192.168.126"), "node2 fdb:\n{fdb}");
    // And traffic is back to the CNI's behaviour.
    assert_eq!(
        seen_by(lab.pod("pod2"), &lab.tb.server().url()),
        lab.node_ip("node2")
    );
}

/// `--once` fails clearly, with a non-zero exit status, when it cannot do its job.
#[test]
fn once_fails_clearly_when_the_node_is_unknown_or_the_plan_cannot_be_carried_out() {
    let Some(lab) = Lab::new() else { return };
    let untouched = |what: &str| {
        let links = lab.ip(lab.ns("node1"), &["-o", "link", "show"]);
        assert!(!links.contains("kegress0"), "{what}: tunnel created");
        assert!(
            lab.nft("node1", &["table", "inet", "kube_egress"])
                .is_none(),
            "{what}: nft table created"
        );
    };

    // A node the manifests do not know.
    let out = lab.once_as("node1", "node9");
    let log = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains("node9") && log.contains("is not in") && log.contains("--node"),
        "{log}"
    );
    untouched("unknown node");

    // A malformed manifest.
    lab.write_manifest("broken.yaml", "kind: [\n");
    let out = lab.once_as("node1", "node1");
    let log = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("broken.yaml"), "{log}");
    untouched("malformed manifests");
    lab.remove_manifest("broken.yaml");

    // An egress IP whose link is down cannot be placed.
    lab.ip(lab.ns("node1"), &["link", "set", "eth1", "down"]);
    let out = lab.once_as("node1", "node1");
    let log = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains(REPORTS_EGRESS_IP) && log.contains("no link that is up"),
        "{log}"
    );
    assert!(!log.contains("kernel matches"), "{log}");

    // Once the link is back, the same plan is carried out.
    lab.ip(lab.ns("node1"), &["link", "set", "eth1", "up"]);
    lab.once_ok("node1");
    assert!(
        lab.addresses("node1", "eth1")
            .contains(&format!("{REPORTS_EGRESS_IP}/32"))
    );
}

/// `--once` names unmet prerequisites of the node in its own words and fails: forwarding off,
/// and strict reverse-path filtering on the secondary link that carries an egress IP. Once the
/// sysctls are back, it succeeds. The sysctls belong to node1's namespace only.
#[test]
fn once_names_forwarding_off_and_strict_reverse_path_filtering() {
    let Some(lab) = Lab::new() else { return };
    let node1 = lab.ns("node1");
    let sysctl = |key: &str| lab.run(node1, &["sysctl", "-n", key]).trim().to_string();
    let set = |key: &str, value: &str| {
        lab.run(node1, &["sysctl", "-q", "-w", &format!("{key}={value}")]);
    };
    // The kernel filters with the larger of `all` and the link's value, and the lab sets `all`
    // to 2 (loose): eth1 alone at 1 would still be loose.
    let keys = [
        ("net.ipv4.ip_forward", "0"),
        ("net.ipv4.conf.all.rp_filter", "0"),
        ("net.ipv4.conf.eth1.rp_filter", "1"),
    ];
    let before: Vec<(&str, String)> = keys.iter().map(|(key, _)| (*key, sysctl(key))).collect();
    for (key, value) in keys {
        set(key, value);
    }

    let out = lab.once_as("node1", "node1");
    let log = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains(
            "problem: V4 forwarding is off on this node: steered and served traffic is dropped \
             (set net.ipv4.ip_forward=1)"
        ),
        "{log}"
    );
    assert!(
        log.contains(
            "problem: strict reverse-path filtering on eth1: replies to egress IPs on this \
             secondary link are dropped (set net.ipv4.conf.eth1.rp_filter=2)"
        ),
        "{log}"
    );
    assert!(log.contains("cannot be carried out"), "{log}");
    assert!(!log.contains("kernel matches"), "{log}");

    for (key, value) in &before {
        set(key, value);
    }
    lab.once_ok("node1");
}

/// A running agent follows its manifest directory: the EgressIP appears, then goes away.
#[test]
fn running_agents_follow_manifest_changes() {
    let Some(lab) = Lab::new() else { return };
    lab.remove_manifest(EGRESSIPS);
    let agents: Vec<Agent> = NODES.iter().map(|n| lab.start_agent(n)).collect();
    let pod2 = lab.pod("pod2");
    let url = lab.tb.server().url();
    assert_eq!(seen_by(pod2, &url), lab.node_ip("node2"));
    // Nothing to steer yet, so node2 has no steering chains: they come with the first mark.
    let table = || lab.nft("node2", &["table", "inet", "kube_egress"]).unwrap();
    assert!(!table().contains("chain prerouting"), "{}", table());

    lab.restore_manifest(EGRESSIPS);
    wait_for_source(pod2, &url, Duration::from_secs(5), |seen| {
        prod_egress_ips().contains(&seen)
    });
    assert!(table().contains("chain prerouting"), "{}", table());
    assert!(table().contains("chain tunnel_out"), "{}", table());

    lab.remove_manifest(EGRESSIPS);
    let node2 = lab.node_ip("node2");
    wait_for_source(pod2, &url, Duration::from_secs(5), |seen| seen == node2);
    let deadline = Instant::now() + Duration::from_secs(5);
    while lab
        .addresses("node1", "eth0")
        .contains(&"192.168.126.10/32".to_string())
    {
        assert!(
            Instant::now() < deadline,
            "node1 keeps 192.168.126.10:\n{}",
            agents[0].log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for agent in &agents {
        lab.stop_agent(agent);
    }
}

/// The packets and bytes counted per egress IP on a node (the agent's nft counters).
fn egress_counters(lab: &Lab, node: &str) -> BTreeMap<IpAddr, PacketCount> {
    Nft::in_netns(lab.ns(node), TUNNEL_DEVICE)
        .egress_counters_blocking()
        .unwrap_or_else(|e| panic!("reading the counters of {node}: {e}"))
}

/// Every egress IP a node hosts has a counter, and it counts the traffic the server receives
/// from that address, and only that.
#[test]
fn egress_counters_count_what_the_server_sees() {
    let Some(lab) = Lab::new() else { return };
    for node in NODES {
        lab.once_ok(node);
    }
    let hosted = |node: &str| {
        egress_counters(&lab, node)
            .keys()
            .copied()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        hosted("node1"),
        [ip(REPORTS_EGRESS_IP), ip(PROD_EGRESS_IPS[0])]
    );
    assert_eq!(hosted("node3"), [ip(PROD_EGRESS_IPS[1])]);
    assert_eq!(hosted("node2"), Vec::<IpAddr>::new());

    let before: BTreeMap<IpAddr, PacketCount> = ["node1", "node3"]
        .iter()
        .flat_map(|n| egress_counters(&lab, n))
        .collect();
    let server = lab.tb.server();
    let far = lab.tb.secondary("sec").unwrap().server();
    server.clear();
    far.clear();
    for _ in 0..20 {
        let seen = seen_by(lab.pod("pod2"), &server.url());
        assert!(prod_egress_ips().contains(&seen), "pod2 left with {seen}");
    }
    for _ in 0..3 {
        assert_eq!(
            seen_by(lab.pod("pod1"), &server.url()),
            ip(PROD_EGRESS_IPS[0])
        );
        assert_eq!(seen_by(lab.pod("pod4"), &far.url()), ip(REPORTS_EGRESS_IP));
    }
    let mut requests: BTreeMap<IpAddr, u64> = BTreeMap::new();
    for seen in server.seen().into_iter().chain(far.seen()) {
        *requests.entry(seen).or_default() += 1;
    }
    let after: BTreeMap<IpAddr, PacketCount> = ["node1", "node3"]
        .iter()
        .flat_map(|n| egress_counters(&lab, n))
        .collect();
    for (egress_ip, count) in &after {
        let n = requests.get(egress_ip).copied().unwrap_or(0);
        let packets = count.packets - before[egress_ip].packets;
        let bytes = count.bytes - before[egress_ip].bytes;
        // A request on its own connection: at least the SYN, the request and the final ACK or
        // FIN leave with the egress IP; no other traffic here has it as its source.
        assert!(
            packets >= 3 * n && (n > 0) == (packets > 0),
            "{egress_ip}: {packets} packets counted for {n} requests (seen: {requests:?})"
        );
        assert!(
            bytes >= 40 * packets,
            "{egress_ip}: {bytes} bytes for {packets} packets"
        );
    }
    assert_eq!(requests.values().sum::<u64>(), 26, "{requests:?}");
}

/// The agent's default metrics port.
const METRICS_PORT: u16 = 9477;

/// An HTTP/1.1 GET over TCP to the agent's metrics port, from inside a node's namespace.
fn metrics_get(lab: &Lab, node: &str, path: &str) -> std::io::Result<String> {
    kube_egress_testbed::in_netns(lab.ns(node), || {
        let mut stream = TcpStream::connect(("127.0.0.1", METRICS_PORT))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok(response)
    })
    .unwrap_or_else(|e| panic!("entering {node}: {e}"))
}

/// The value of the sample `name` (with its labels) in an OpenMetrics text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// A running agent serves `/metrics`: the traffic of its egress IPs as the kernel counts it, and
/// its own state.
#[test]
fn agent_serves_metrics_with_the_traffic_of_its_egress_ips() {
    let Some(lab) = Lab::new() else { return };
    let agent = lab.start_agent("node1");
    agent.wait_for(
        "serving metrics on http://0.0.0.0:9477/metrics",
        Duration::from_secs(5),
    );
    let pod1 = lab.pod("pod1");
    let url = lab.tb.server().url();
    for _ in 0..5 {
        assert_eq!(seen_by(pod1, &url), ip(PROD_EGRESS_IPS[0]));
    }

    let response = metrics_get(&lab, "node1", "/metrics").unwrap();
    let (head, text) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0; charset=utf-8"),
        "{head}"
    );
    let egress = |what: &str, ip: &str| {
        sample(
            text,
            &format!("kube_egress_agent_egress_ip_{what}_total{{egress_ip=\"{ip}\"}}"),
        )
        .unwrap_or_else(|| panic!("no {what} of {ip} in\n{text}"))
    };
    let packets = egress("packets", PROD_EGRESS_IPS[0]);
    assert!(packets >= 15.0, "{packets} packets for 5 requests:\n{text}");
    assert!(
        egress("bytes", PROD_EGRESS_IPS[0]) >= 40.0 * packets,
        "{text}"
    );
    // Hosted but unused: counted, at zero.
    assert_eq!(egress("packets", REPORTS_EGRESS_IP), 0.0, "{text}");
    for (name, value) in [
        ("kube_egress_agent_egress_ips", Some(2.0)),
        ("kube_egress_agent_plan_problems", Some(0.0)),
        ("kube_egress_agent_apply_errors_total", Some(0.0)),
        ("kube_egress_agent_counter_read_errors_total", Some(0.0)),
        ("kube_egress_agent_applies_total", None),
        ("kube_egress_agent_apply_duration_seconds", None),
    ] {
        let got = sample(text, name).unwrap_or_else(|| panic!("no {name} in\n{text}"));
        if let Some(value) = value {
            assert_eq!(got, value, "{name}");
        }
    }
    assert!(sample(text, "kube_egress_agent_applies_total").unwrap() >= 1.0);
    assert!(text.ends_with("# EOF\n"), "{text}");

    let missing = metrics_get(&lab, "node1", "/").unwrap();
    assert!(missing.starts_with("HTTP/1.1 404 "), "{missing}");
    lab.stop_agent(&agent);

    // An empty address turns the endpoint off.
    let quiet = lab.start_agent_with("node3", &["--metrics-bind-address", ""]);
    let refused = metrics_get(&lab, "node3", "/metrics").unwrap_err();
    assert_eq!(
        refused.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "{refused}"
    );
    assert!(!quiet.log().contains("serving metrics"), "{}", quiet.log());
    lab.stop_agent(&quiet);
}
