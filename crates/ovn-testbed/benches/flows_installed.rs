//! Time from one Northbound transaction that programs N served pods the way ovnkube does to the
//! flows being installed on every chassis (`NB_Global.hv_cfg`), with ovn-northd and two
//! ovn-controllers running (userspace datapath).
//!
//! Each measurement starts a fresh mini cluster (empty of egress rows), then sends ONE
//! `transact` over the NB unix socket (RFC 7047 JSON-RPC, built before the clock starts):
//! - address sets `egressip-served-pods` (the N pod IPs) and `node-ips`;
//! - the four priority 102 `allow` policies (pod→pod, pod→join, `pkt.mark == 42`, served pods →
//!   node IPs with `pkt_mark=1008`);
//! - per pod a priority 100 `reroute` with two nexthops (the GR join IPs of node1 and node2, as
//!   for an EgressIP with two IPs on two nodes), and one `snat` per egress node on `GR_<node>`
//!   (`logical_port=k8s-<node>`), all with ovnkube-style `external_ids`;
//! - `nb_cfg += 1` on `NB_Global` (what `ovn-nbctl --wait=hv` adds).
//!
//! Then it times `sb_cfg` (northd has written the Southbound database) and `hv_cfg` (every
//! ovn-controller has installed the flows) reaching the new `nb_cfg`, with OVSDB `wait`
//! operations, and checks that each chassis gained at least N OpenFlow rules.
//!
//! The same transaction is also timed against a bare Northbound ovsdb-server (no northd, no
//! ovn-controller, no monitor): the NB commit alone. For N = 1,000 the same rows are also written
//! with one `ovn-nbctl --wait=hv` invocation (one transaction); for 10,000 pods that argument
//! list exceeds the kernel's 6 MB ceiling for arguments.
//!
//! ```sh
//! cargo bench -p kube-egress-ovn-testbed --bench flows_installed
//! cargo bench -p kube-egress-ovn-testbed --bench flows_installed -- --pods 1000,10000 --reps 3
//! ```
//! Needs root and the OVN/OVS packages; exits 2 naming what is missing.

use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use kube_egress_ovn_testbed::nb::NbCommand;
use kube_egress_ovn_testbed::{ClusterSpec, Layout, OvnCluster, unavailable_reason};
use serde_json::{Value, json};

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

const EGRESS_IPS: [&str; 2] = ["172.18.0.100", "172.18.0.101"];
const EGRESS_NODES: [&str; 2] = ["node1", "node2"];

/// A minimal RFC 7047 client for the benchmark: one request at a time, answers `echo`.
struct Ovsdb {
    stream: UnixStream,
    buf: Vec<u8>,
    next_id: u64,
}

impl Ovsdb {
    fn connect(path: &std::path::Path) -> BenchResult<Ovsdb> {
        Ok(Ovsdb {
            stream: UnixStream::connect(path)?,
            buf: Vec::new(),
            next_id: 1,
        })
    }

    fn call(&mut self, method: &str, params: Value) -> BenchResult<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let request = json!({ "id": id, "method": method, "params": params });
        self.stream.write_all(&serde_json::to_vec(&request)?)?;
        loop {
            while let Some(message) = self.next_message()? {
                if message["method"] == "echo" {
                    let reply =
                        json!({ "id": message["id"], "result": message["params"], "error": null });
                    self.stream.write_all(&serde_json::to_vec(&reply)?)?;
                    continue;
                }
                if message["id"] == json!(id) {
                    if !message["error"].is_null() {
                        return Err(format!("{method}: {}", message["error"]).into());
                    }
                    return Ok(message["result"].clone());
                }
            }
            let mut chunk = [0u8; 65536];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err("the NB server closed the connection".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next complete JSON message in the buffer, if there is one.
    fn next_message(&mut self) -> BenchResult<Option<Value>> {
        let mut stream = serde_json::Deserializer::from_slice(&self.buf).into_iter::<Value>();
        match stream.next() {
            Some(Ok(value)) => {
                let used = stream.byte_offset();
                self.buf.drain(..used);
                Ok(Some(value))
            }
            Some(Err(e)) if e.is_eof() => Ok(None),
            Some(Err(e)) => Err(e.into()),
            None => Ok(None),
        }
    }

    /// `transact`, failing on any per-operation error (they arrive inside the result array).
    fn transact(&mut self, ops: Vec<Value>) -> BenchResult<Vec<Value>> {
        let mut params = vec![json!("OVN_Northbound")];
        params.extend(ops);
        let result = self.call("transact", Value::Array(params))?;
        let results = result.as_array().cloned().unwrap_or_default();
        if let Some(err) = results.iter().find(|r| r.get("error").is_some()) {
            return Err(format!("transaction failed: {err}").into());
        }
        Ok(results)
    }
}

fn pod_ip(i: usize) -> Ipv4Addr {
    // 10.244.16.0 onwards: clear of the node subnets the cluster uses.
    let n = (16u32 << 8) + i as u32;
    Ipv4Addr::new(10, 244, (n >> 8) as u8, n as u8)
}

fn ids(name: &str, extra: &[(&str, &str)]) -> Value {
    let mut pairs = vec![
        json!(["k8s.ovn.org/owner-controller", "default-network-controller"]),
        json!(["k8s.ovn.org/owner-type", "EgressIP"]),
        json!(["k8s.ovn.org/name", name]),
    ];
    pairs.extend(extra.iter().map(|(k, v)| json!([k, v])));
    json!(["map", pairs])
}

fn set(items: &[String]) -> Value {
    json!(["set", items])
}

/// The operations of the one transaction, and the `nb_cfg` value it sets (read just before).
fn egress_ops(layout: &Layout, pods: usize, nb_cfg: u64) -> Vec<Value> {
    let node_ips: Vec<String> = layout
        .nodes
        .iter()
        .map(|n| n.node_ip.addr().to_string())
        .collect();
    let pod_ips: Vec<String> = (0..pods).map(|i| pod_ip(i).to_string()).collect();
    let nexthops: Vec<String> = EGRESS_NODES
        .iter()
        .map(|n| layout.node(n).unwrap().join_ip.addr().to_string())
        .collect();
    let mut ops = vec![
        json!({"op": "insert", "table": "Address_Set", "row": {
            "name": "egressip_served_pods_v4", "addresses": set(&pod_ips),
            "external_ids": ids("egressip-served-pods", &[("ip-family", "v4"), ("network", "default")])}}),
        json!({"op": "insert", "table": "Address_Set", "row": {
            "name": "node_ips_v4", "addresses": set(&node_ips),
            "external_ids": ids("node-ips", &[("ip-family", "v4"), ("network", "default")])}}),
    ];
    let allows = [
        (
            "ip4.src == 10.244.0.0/16 && ip4.dst == 10.244.0.0/16",
            false,
        ),
        (
            "ip4.src == 10.244.0.0/16 && ip4.dst == 100.64.0.0/16",
            false,
        ),
        ("pkt.mark == 42", false),
        (
            "ip4.src == $egressip_served_pods_v4 && ip4.dst == $node_ips_v4",
            true,
        ),
    ];
    let mut policy_refs = Vec::new();
    for (i, (m, mark)) in allows.iter().enumerate() {
        let options = if *mark {
            json!(["map", [["pkt_mark", "1008"]]])
        } else {
            json!(["map", []])
        };
        ops.push(json!({"op": "insert", "table": "Logical_Router_Policy", "uuid-name": format!("allow{i}"),
            "row": {"priority": 102, "match": m, "action": "allow", "options": options,
                    "external_ids": ids(&format!("allow-{i}"), &[("priority", "102")])}}));
        policy_refs.push(json!(["named-uuid", format!("allow{i}")]));
    }
    let mut nat_refs: Vec<Vec<Value>> = vec![Vec::new(); EGRESS_NODES.len()];
    for (i, ip) in pod_ips.iter().enumerate() {
        let name = format!("eip-prod_prod/pod{i}");
        ops.push(json!({"op": "insert", "table": "Logical_Router_Policy", "uuid-name": format!("p{i}"),
            "row": {"priority": 100, "match": format!("ip4.src == {ip}"), "action": "reroute",
                    "nexthops": set(&nexthops),
                    "external_ids": ids(&name, &[("priority", "100"), ("ip-family", "ip4"), ("network", "default")])}}));
        policy_refs.push(json!(["named-uuid", format!("p{i}")]));
        for (k, node) in EGRESS_NODES.iter().enumerate() {
            ops.push(
                json!({"op": "insert", "table": "NAT", "uuid-name": format!("n{k}_{i}"),
                "row": {"type": "snat", "external_ip": EGRESS_IPS[k], "logical_ip": ip,
                        "logical_port": format!("k8s-{node}"),
                        "external_ids": ids(&name, &[("ip-family", "ip4")])}}),
            );
            nat_refs[k].push(json!(["named-uuid", format!("n{k}_{i}")]));
        }
    }
    ops.push(json!({"op": "mutate", "table": "Logical_Router",
        "where": [["name", "==", "ovn_cluster_router"]],
        "mutations": [["policies", "insert", ["set", policy_refs]]]}));
    for (k, node) in EGRESS_NODES.iter().enumerate() {
        ops.push(json!({"op": "mutate", "table": "Logical_Router",
            "where": [["name", "==", format!("GR_{node}")]],
            "mutations": [["nat", "insert", ["set", nat_refs[k]]]]}));
    }
    ops.push(json!({"op": "mutate", "table": "NB_Global", "where": [],
        "mutations": [["nb_cfg", "+=", 1]]}));
    ops.push(json!({"op": "comment", "comment": format!("benchmark: {pods} served pods, nb_cfg {}", nb_cfg + 1)}));
    ops
}

/// The same rows as `ovn-nbctl` commands (one invocation, one transaction).
fn egress_nbctl(cluster: &OvnCluster, pods: usize) -> Vec<NbCommand> {
    let w = |words: &[&str]| -> NbCommand { words.iter().map(|s| s.to_string()).collect() };
    let quoted = |items: &[String]| {
        format!(
            "[{}]",
            items
                .iter()
                .map(|i| format!("\"{i}\""))
                .collect::<Vec<_>>()
                .join(",")
        )
    };
    let pod_ips: Vec<String> = (0..pods).map(|i| pod_ip(i).to_string()).collect();
    let nexthops: Vec<String> = EGRESS_NODES
        .iter()
        .map(|n| cluster.node(n).unwrap().join_ip.addr().to_string())
        .collect();
    let mut c = vec![
        w(&[
            "create",
            "Address_Set",
            "name=egressip_served_pods_v4",
            &format!("addresses={}", quoted(&pod_ips)),
            "external_ids:k8s.ovn.org/name=egressip-served-pods",
        ]),
        w(&[
            "create",
            "Address_Set",
            "name=node_ips_v4",
            "addresses=[\"172.18.0.2\",\"172.18.0.3\"]",
            "external_ids:k8s.ovn.org/name=node-ips",
        ]),
    ];
    let allows = [
        "ip4.src == 10.244.0.0/16 && ip4.dst == 10.244.0.0/16",
        "ip4.src == 10.244.0.0/16 && ip4.dst == 100.64.0.0/16",
        "pkt.mark == 42",
    ];
    for (i, m) in allows.iter().enumerate() {
        c.push(w(&[
            &format!("--id=@allow{i}"),
            "create",
            "Logical_Router_Policy",
            "priority=102",
            &format!("match=\"{m}\""),
            "action=allow",
        ]));
        c.push(w(&[
            "add",
            "Logical_Router",
            "ovn_cluster_router",
            "policies",
            &format!("@allow{i}"),
        ]));
    }
    c.push(w(&[
        "--id=@allow3",
        "create",
        "Logical_Router_Policy",
        "priority=102",
        "match=\"ip4.src == $egressip_served_pods_v4 && ip4.dst == $node_ips_v4\"",
        "action=allow",
        "options:pkt_mark=1008",
    ]));
    c.push(w(&[
        "add",
        "Logical_Router",
        "ovn_cluster_router",
        "policies",
        "@allow3",
    ]));
    for (i, ip) in pod_ips.iter().enumerate() {
        let name = format!("external_ids:k8s.ovn.org/name=eip-prod_prod/pod{i}");
        c.push(w(&[
            &format!("--id=@p{i}"),
            "create",
            "Logical_Router_Policy",
            "priority=100",
            &format!("match=\"ip4.src == {ip}\""),
            "action=reroute",
            &format!("nexthops={}", quoted(&nexthops)),
            &name,
        ]));
        c.push(w(&[
            "add",
            "Logical_Router",
            "ovn_cluster_router",
            "policies",
            &format!("@p{i}"),
        ]));
        for (k, node) in EGRESS_NODES.iter().enumerate() {
            c.push(w(&[
                &format!("--id=@n{k}_{i}"),
                "create",
                "NAT",
                "type=snat",
                &format!("external_ip=\"{}\"", EGRESS_IPS[k]),
                &format!("logical_ip=\"{ip}\""),
                &format!("logical_port=k8s-{node}"),
                &name,
            ]));
            c.push(w(&[
                "add",
                "Logical_Router",
                &format!("GR_{node}"),
                "nat",
                &format!("@n{k}_{i}"),
            ]));
        }
    }
    c
}

/// One way of writing the rows and waiting for the flows.
type Measure = fn(usize) -> BenchResult<Sample>;

#[derive(Debug, Clone, Copy)]
struct Sample {
    build: Duration,
    nb: Option<Duration>,
    sb: Option<Duration>,
    hv: Option<Duration>,
    /// OpenFlow rules per chassis after and before.
    flows: Option<([usize; 2], [usize; 2])>,
}

fn flows(cluster: &OvnCluster) -> BenchResult<[usize; 2]> {
    Ok([
        cluster.openflow_count("node1")?,
        cluster.openflow_count("node2")?,
    ])
}

fn check_flows(pods: usize, before: [usize; 2], after: [usize; 2]) -> BenchResult<()> {
    for (k, (b, a)) in before.iter().zip(after).enumerate() {
        if a < b + pods {
            return Err(format!(
                "chassis {} has {a} OpenFlow rules after programming {pods} pods, {b} before: \
                 fewer than one per pod, the flows are not installed",
                EGRESS_NODES[k]
            )
            .into());
        }
    }
    Ok(())
}

fn spec() -> ClusterSpec {
    ClusterSpec::two_nodes()
}

/// One measurement through the JSON-RPC client.
fn measure_rpc(pods: usize) -> BenchResult<Sample> {
    let cluster = OvnCluster::start(&spec())?;
    let flows_before = flows(&cluster)?;
    let (nb_cfg, _) = cluster.nb_cfg()?;
    let mut db = Ovsdb::connect(&cluster.nb_socket())?;
    let built = Instant::now();
    let ops = egress_ops(cluster.layout(), pods, nb_cfg);
    let build = built.elapsed();
    let target = nb_cfg + 1;
    let wait = |column: &str| {
        json!({"op": "wait", "table": "NB_Global", "where": [], "columns": [column],
               "until": "==", "rows": [{ column: target }], "timeout": 600_000})
    };
    let start = Instant::now();
    db.transact(ops)?;
    let nb = start.elapsed();
    db.transact(vec![wait("sb_cfg")])?;
    let sb = start.elapsed();
    db.transact(vec![wait("hv_cfg")])?;
    let hv = start.elapsed();
    let after = flows(&cluster)?;
    check_flows(pods, flows_before, after)?;
    Ok(Sample {
        build,
        nb: Some(nb),
        sb: Some(sb),
        hv: Some(hv),
        flows: Some((after, flows_before)),
    })
}

/// One measurement through one `ovn-nbctl --wait=hv` invocation (nb and sb are not separable).
fn measure_nbctl(pods: usize) -> BenchResult<Sample> {
    let cluster = OvnCluster::start(&spec())?;
    let flows_before = flows(&cluster)?;
    let built = Instant::now();
    let commands = egress_nbctl(&cluster, pods);
    let build = built.elapsed();
    let start = Instant::now();
    cluster.nbctl_batch(&["--wait=hv", "--timeout=600"], &commands)?;
    let hv = start.elapsed();
    let after = flows(&cluster)?;
    check_flows(pods, flows_before, after)?;
    Ok(Sample {
        build,
        nb: None,
        sb: None,
        hv: Some(hv),
        flows: Some((after, flows_before)),
    })
}

/// A bare Northbound ovsdb-server (no northd, no other client) in a directory of its own,
/// stopped and removed on drop.
struct BareNb {
    dir: std::path::PathBuf,
    child: std::process::Child,
}

impl BareNb {
    fn start() -> BenchResult<BareNb> {
        let dir = std::env::temp_dir().join(format!("kube-egress-bench-nb-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir)?;
        let db = dir.join("nb.db");
        let status = std::process::Command::new("ovsdb-tool")
            .arg("create")
            .arg(&db)
            .arg("/usr/share/ovn/ovn-nb.ovsschema")
            .status()?;
        if !status.success() {
            return Err("ovsdb-tool create failed".into());
        }
        let child = std::process::Command::new("ovsdb-server")
            .arg(&db)
            .arg(format!("--remote=punix:{}", dir.join("nb.sock").display()))
            .arg(format!("--unixctl={}", dir.join("nb.ctl").display()))
            .arg(format!("--log-file={}", dir.join("nb.log").display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let nb = BareNb { dir, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(nb.socket()).is_err() {
            if Instant::now() > deadline {
                return Err("the bare NB ovsdb-server did not start".into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let status = std::process::Command::new("ovn-nbctl")
            .arg(format!("--db=unix:{}", nb.socket().display()))
            .args(["--", "init", "--", "lr-add", "ovn_cluster_router"])
            .args(["--", "lr-add", "GR_node1", "--", "lr-add", "GR_node2"])
            .status()?;
        if !status.success() {
            return Err("ovn-nbctl on the bare NB failed".into());
        }
        Ok(nb)
    }

    fn socket(&self) -> std::path::PathBuf {
        self.dir.join("nb.sock")
    }
}

impl Drop for BareNb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The same transaction against a bare Northbound server: NB time alone, without northd and
/// the ovn-controllers competing for the CPUs and without monitors to update.
fn measure_nb_only(pods: usize) -> BenchResult<Sample> {
    let nb = BareNb::start()?;
    let layout = spec().layout()?;
    let mut db = Ovsdb::connect(&nb.socket())?;
    let built = Instant::now();
    let ops = egress_ops(&layout, pods, 0);
    let build = built.elapsed();
    let start = Instant::now();
    db.transact(ops)?;
    let nb_time = start.elapsed();
    let policies = std::process::Command::new("ovn-nbctl")
        .arg(format!("--db=unix:{}", nb.socket().display()))
        .args([
            "--bare",
            "--columns=policies",
            "list",
            "Logical_Router",
            "ovn_cluster_router",
        ])
        .output()?;
    let linked = String::from_utf8_lossy(&policies.stdout)
        .split_whitespace()
        .count();
    if linked != pods + 4 {
        return Err(format!(
            "{linked} policies linked from ovn_cluster_router, expected {}",
            pods + 4
        )
        .into());
    }
    Ok(Sample {
        build,
        nb: Some(nb_time),
        sb: None,
        hv: None,
        flows: None,
    })
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_string();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "nproc {cpus}, {model}, {} GiB RAM, Linux {}",
        (mem_kib + (1 << 19)) >> 20,
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

fn versions() -> String {
    let v = |program: &str| {
        std::process::Command::new(program)
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.lines().next().map(str::to_string))
            .unwrap_or_else(|| "?".into())
    };
    format!("{}; {}", v("ovn-northd"), v("ovs-vswitchd"))
}

fn arg(args: &[String], name: &str, env: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| std::env::var(env).ok())
        .unwrap_or_else(|| default.to_string())
}

fn main() {
    if let Some(reason) = unavailable_reason() {
        eprintln!("flows_installed: the benchmark {reason}");
        std::process::exit(2);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let sizes: Vec<usize> = arg(&args, "--pods", "BENCH_PODS", "1000,10000")
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .expect("--pods takes numbers, comma-separated")
        })
        .collect();
    let reps: usize = arg(&args, "--reps", "BENCH_REPS", "3")
        .parse()
        .expect("--reps takes a number");
    println!("machine: {}", machine());
    println!("versions: {}", versions());
    println!("load average before: {}", loadavg());
    let started = Instant::now();
    let mut failed = false;
    println!(
        "\n| path | served pods | rows | NB commit | sb_cfg (northd done) | hv_cfg (flows installed) | OpenFlow rules node1 / node2 (before) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for &pods in &sizes {
        let rows = 2 + 4 + pods * 3;
        let mut paths: Vec<(&str, Measure)> = vec![
            ("one JSON-RPC transact", measure_rpc),
            ("same transact, bare NB server", measure_nb_only),
        ];
        if pods <= 2000 {
            paths.push(("one ovn-nbctl --wait=hv", measure_nbctl));
        }
        for (name, measure) in paths {
            let mut samples = Vec::new();
            for _ in 0..reps {
                match measure(pods) {
                    Ok(s) => samples.push(s),
                    Err(e) => {
                        eprintln!("{name}, {pods} pods: {e}");
                        failed = true;
                        break;
                    }
                }
            }
            if samples.is_empty() {
                continue;
            }
            let last = *samples.last().unwrap();
            // Median and every run of one column, or "-" where the path does not measure it.
            let column = |pick: fn(&Sample) -> Option<Duration>| -> String {
                let values: Vec<Duration> = samples.iter().filter_map(pick).collect();
                if values.is_empty() {
                    return "-".into();
                }
                let runs: Vec<String> = values.iter().map(|d| ms(*d)).collect();
                format!("{} (runs: {})", ms(median(values)), runs.join(", "))
            };
            let flows = match last.flows {
                Some((after, before)) => format!(
                    "{} / {} ({} / {})",
                    after[0], after[1], before[0], before[1]
                ),
                None => "-".into(),
            };
            println!(
                "| {name} | {pods} | {rows} | {} | {} | {} | {flows} |",
                column(|s| s.nb),
                column(|s| s.sb),
                column(|s| s.hv),
            );
            eprintln!(
                "  ({name}, {pods} pods: building the request took {})",
                ms(last.build)
            );
        }
    }
    println!(
        "\nload average after: {}; the run took {:.0} s",
        loadavg(),
        started.elapsed().as_secs_f64()
    );
    if failed {
        std::process::exit(1);
    }
}
