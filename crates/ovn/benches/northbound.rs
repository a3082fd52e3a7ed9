//! Programming 10,000 served pods into an empty OVN Northbound database (no northd): our
//! reconciler (one transaction) against the fastest ovn-nbctl path (one invocation, one
//! transaction) writing the same rows, each on a fresh ovsdb-server in the same run.
//!
//! `cargo bench -p kube-egress-ovn --bench northbound` (env: PODS=10000, IPS=2, RUNS=3).
//!
//! Cluster: 20 nodes, 50 EgressIPs with IPS egress IPs each on as many nodes' primary network
//! (2 is seed 001's shape), PODS/50 served pods each: PODS reroute policies with IPS next hops,
//! PODS × IPS SNATs, a PODS-address served-pods set, plus the global 102 policies and address
//! sets.

use std::net::IpAddr;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use kube_egress_engine::SubnetKind;
use kube_egress_ovn::mapping::{AssignedIp, EgressAssignment, ServedPod};
use kube_egress_ovn::nb;
use kube_egress_ovn::server::NbServer;
use kube_egress_ovn::sync::{NbMonitor, plan};
use kube_egress_ovn::{ClusterState, Desired, Options, OvnNode, default_join_subnets, desired};

const NODES: usize = 20;
const EGRESS_IPS: usize = 50;

fn cluster(pods: usize, ips: usize) -> ClusterState {
    let ip = |s: String| -> IpAddr { s.parse().unwrap() };
    let nodes = (0..NODES)
        .map(|i| OvnNode {
            name: format!("node{i}"),
            gateway_join_ips: vec![ip(format!("100.64.0.{}", i + 2))],
            management_ips: vec![ip(format!("10.128.{}.2", i))],
            host_ips: vec![ip(format!("172.18.0.{}", i + 2))],
            problems: vec![],
        })
        .collect();
    let per_eip = pods.div_ceil(EGRESS_IPS);
    let mut egress_ips = Vec::new();
    let mut n = 0;
    for k in 0..EGRESS_IPS {
        let items = (0..ips)
            .map(|j| AssignedIp {
                node: format!("node{}", (ips * k + j) % NODES),
                ip: ip(format!("172.19.{k}.{}", j + 1)),
                kind: SubnetKind::Primary,
            })
            .collect();
        let mut served = Vec::new();
        for j in 0..per_eip {
            if n == pods {
                break;
            }
            served.push(ServedPod {
                key: format!("ns{k}/pod{j}"),
                ips: vec![ip(format!(
                    "10.{}.{}.{}",
                    129 + n / 65536,
                    (n / 256) % 256,
                    n % 256
                ))],
            });
            n += 1;
        }
        egress_ips.push(EgressAssignment {
            name: format!("eip{k}"),
            items,
            pods: served,
        });
    }
    ClusterState {
        cluster_subnets: vec!["10.128.0.0/9".parse().unwrap()],
        join_subnets: default_join_subnets(),
        nodes,
        egress_ips,
    }
}

fn topology(server: &NbServer) {
    let mut args = vec!["lr-add".to_string(), "ovn_cluster_router".to_string()];
    for i in 0..NODES {
        args.extend(["--".into(), "lr-add".into(), format!("GR_node{i}")]);
        args.extend(["--".into(), "ls-add".into(), format!("node{i}")]);
    }
    server
        .nbctl(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .unwrap();
}

/// ovsdb-server CPU time so far (user + system).
fn server_cpu(server: &NbServer) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", server.pid().unwrap())).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn map(m: &std::collections::BTreeMap<String, String>) -> String {
    let pairs: Vec<String> = m
        .iter()
        .map(|(k, v)| format!("{}={}", quote(k), quote(v)))
        .collect();
    format!("{{{}}}", pairs.join(","))
}

fn set(items: &[String]) -> String {
    let q: Vec<String> = items.iter().map(|s| quote(s)).collect();
    format!("[{}]", q.join(","))
}

/// ovn-nbctl commands creating exactly the desired rows; each unit (a row and its link to the
/// parent, which name each other with `@id`) must stay in one invocation.
fn nbctl_units(want: &Desired) -> Vec<Vec<String>> {
    let mut units: Vec<Vec<String>> = Vec::new();
    let mut unit: Vec<String> = Vec::new();
    fn cmd(unit: &mut Vec<String>, parts: Vec<String>) {
        unit.push("--".into());
        unit.extend(parts);
    }
    for (i, p) in want.policies.iter().enumerate() {
        let id = format!("@p{i}");
        let mut c = vec![
            format!("--id={id}"),
            "create".into(),
            "Logical_Router_Policy".into(),
            format!("priority={}", p.priority),
            format!("match={}", quote(&p.match_)),
            format!("action={}", p.action),
            format!("external_ids={}", map(&p.external_ids)),
        ];
        if !p.nexthops.is_empty() {
            c.push(format!("nexthops={}", set(&p.nexthops)));
        }
        if !p.options.is_empty() {
            c.push(format!("options={}", map(&p.options)));
        }
        cmd(&mut unit, c);
        cmd(
            &mut unit,
            vec![
                "add".into(),
                "Logical_Router".into(),
                "ovn_cluster_router".into(),
                "policies".into(),
                id,
            ],
        );
        units.push(std::mem::take(&mut unit));
    }
    for (i, n) in want.nats.iter().enumerate() {
        let id = format!("@n{i}");
        cmd(
            &mut unit,
            vec![
                format!("--id={id}"),
                "create".into(),
                "NAT".into(),
                "type=snat".into(),
                format!("external_ip={}", quote(&n.nat.external_ip)),
                format!("logical_ip={}", quote(&n.nat.logical_ip)),
                format!(
                    "logical_port={}",
                    quote(n.nat.logical_port.as_deref().unwrap())
                ),
                format!("options={}", map(&n.nat.options)),
                format!("external_ids={}", map(&n.nat.external_ids)),
            ],
        );
        cmd(
            &mut unit,
            vec![
                "add".into(),
                "Logical_Router".into(),
                n.router.clone(),
                "nat".into(),
                id,
            ],
        );
        units.push(std::mem::take(&mut unit));
    }
    for s in want
        .address_sets
        .iter()
        .chain(&want.referenced_address_sets)
    {
        cmd(
            &mut unit,
            vec![
                "create".into(),
                "Address_Set".into(),
                format!("name={}", s.name),
                format!("external_ids={}", map(&s.external_ids)),
            ],
        );
        // One argument may not exceed 128 KiB: the addresses go in as separate arguments.
        for chunk in s.addresses.chunks(2000) {
            let mut c = vec![
                "add".into(),
                "Address_Set".into(),
                s.name.clone(),
                "addresses".into(),
            ];
            c.extend(chunk.iter().cloned());
            cmd(&mut unit, c);
        }
        units.push(std::mem::take(&mut unit));
    }
    units
}

/// The kernel refuses a command line above 6 MB (3/4 of 8 MB, whatever the stack limit), counting
/// every string and its pointer: pack the units into as few invocations as fit.
fn nbctl_invocations(want: &Desired) -> Vec<Vec<String>> {
    const BUDGET: usize = 5_500_000;
    let cost = |args: &[String]| args.iter().map(|a| a.len() + 1 + 8).sum::<usize>();
    let mut out: Vec<Vec<String>> = Vec::new();
    let mut current: Vec<String> = vec!["--no-wait".into()];
    for unit in nbctl_units(want) {
        if cost(&current) + cost(&unit) > BUDGET {
            out.push(std::mem::replace(&mut current, vec!["--no-wait".into()]));
        }
        current.extend(unit);
    }
    out.push(current);
    out
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn count(server: &NbServer, table: &str) -> usize {
    server
        .nbctl(&["--bare", "--columns=_uuid", "list", table])
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let mem_kb: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let server = Command::new("ovsdb-server")
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default();
    format!(
        "nproc {}, {cpu}, {} GiB RAM, Linux {}, {server}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        mem_kb.div_ceil(1024 * 1024),
        kernel.trim()
    )
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

fn main() {
    println!("machine: {}; load average {}", machine(), loadavg());
    let pods: usize = std::env::var("PODS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let ips: usize = std::env::var("IPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let state = cluster(pods, ips);
    let options = Options { qos_mark: false };

    let t = Instant::now();
    let want = desired(&state, &options);
    let mapping = t.elapsed();
    assert!(want.problems.is_empty(), "{:?}", want.problems);
    let policies = want.policies.len();
    let nats = want.nats.len();
    println!(
        "{pods} served pods, {ips} egress IP(s) per EgressIP → {policies} policies, {nats} NATs, {} address sets ({} + {} addresses); mapping {}",
        want.address_sets.len() + want.referenced_address_sets.len(),
        want.address_sets[0].addresses.len(),
        want.address_sets[1].addresses.len(),
        ms(mapping)
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut ours = (vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut theirs = (vec![], vec![]);
    let mut ops = 0;
    let mut noop_ops = usize::MAX;
    let mut one_more_ops = 0;
    let mut json_bytes = 0;
    let mut nbctl_calls = 0;
    let mut floor = (vec![], vec![]);
    for _ in 0..runs {
        // Ours: diff against the (empty) replica, one transaction, replica caught up.
        let server = NbServer::start().unwrap();
        topology(&server);
        runtime.block_on(async {
            let mut monitor = NbMonitor::connect(&server.unix()).await.unwrap();
            let cpu = server_cpu(&server);
            let start = Instant::now();
            let sync = plan(monitor.state(), &want);
            let planned = start.elapsed();
            ops = sync.ops.len();
            json_bytes =
                serde_json::to_vec(&sync.ops.iter().map(|o| o.to_json()).collect::<Vec<_>>())
                    .unwrap()
                    .len();
            let t = Instant::now();
            monitor
                .client()
                .transact(nb::DATABASE, &sync.ops)
                .await
                .unwrap();
            let nb_time = t.elapsed();
            monitor.catch_up().unwrap();
            let total = start.elapsed();
            ours.0.push(planned);
            ours.1.push(nb_time);
            ours.2.push(total);
            ours.3.push(server_cpu(&server) - cpu);

            // The same input again: nothing to write.
            let t = Instant::now();
            let sync = plan(monitor.state(), &want);
            noop_ops = noop_ops.min(sync.ops.len());
            ours.4.push(t.elapsed());

            // One more served pod.
            let mut more = state.clone();
            more.egress_ips[0].pods.push(ServedPod {
                key: "ns0/extra".into(),
                ips: vec!["10.200.0.1".parse().unwrap()],
            });
            let more = desired(&more, &options);
            let t = Instant::now();
            let sync = plan(monitor.state(), &more);
            one_more_ops = sync.ops.len();
            monitor
                .client()
                .transact(nb::DATABASE, &sync.ops)
                .await
                .unwrap();
            monitor.catch_up().unwrap();
            ours.5.push(t.elapsed());
        });
        assert_eq!(count(&server, "Logical_Router_Policy"), policies + 1);
        assert_eq!(count(&server, "NAT"), nats + ips);
        drop(server);

        // The server's own share: the same operations with no monitor (nothing sent back).
        let server = NbServer::start().unwrap();
        topology(&server);
        runtime.block_on(async {
            let monitor = NbMonitor::connect(&server.unix()).await.unwrap();
            let sync = plan(monitor.state(), &want);
            let client = kube_egress_ovn::ovsdb::Client::connect(&server.unix())
                .await
                .unwrap();
            drop(monitor);
            let cpu = server_cpu(&server);
            let t = Instant::now();
            client.transact(nb::DATABASE, &sync.ops).await.unwrap();
            floor.0.push(t.elapsed());
            floor.1.push(server_cpu(&server) - cpu);
        });
        drop(server);

        // ovn-nbctl: as few invocations as the kernel allows, same rows.
        let server = NbServer::start().unwrap();
        topology(&server);
        let invocations = nbctl_invocations(&want);
        nbctl_calls = invocations.len();
        let cpu = server_cpu(&server);
        let t = Instant::now();
        for args in &invocations {
            let mut c = Command::new("ovn-nbctl");
            c.arg(format!("--db={}", server.unix())).args(args);
            // The argument limit is also a quarter of the stack limit: lift that one.
            // SAFETY: setrlimit is async-signal-safe.
            unsafe {
                c.pre_exec(|| {
                    let limit = libc::rlimit {
                        rlim_cur: 1 << 30,
                        rlim_max: libc::RLIM_INFINITY,
                    };
                    libc::setrlimit(libc::RLIMIT_STACK, &limit);
                    Ok(())
                });
            }
            let out = c.output().unwrap();
            assert!(
                out.status.success(),
                "ovn-nbctl: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let elapsed = t.elapsed();
        theirs.0.push(elapsed);
        theirs.1.push(server_cpu(&server) - cpu);
        assert_eq!(count(&server, "Logical_Router_Policy"), policies);
        assert_eq!(count(&server, "NAT"), nats);
    }

    let (plan_t, nb_t, total_t, cpu_t) = (
        median(ours.0),
        median(ours.1),
        median(ours.2),
        median(ours.3),
    );
    let (nbctl_t, nbctl_cpu) = (median(theirs.0), median(theirs.1));
    let (floor_t, floor_cpu) = (median(floor.0), median(floor.1));
    println!("median of {runs} runs, each on a fresh ovsdb-server (unix socket):");
    println!(
        "  kube-egress: 1 transaction, {ops} operations ({:.1} MB JSON): diff {}, NB transact {}, total {}; ovsdb-server CPU {}",
        json_bytes as f64 / 1e6,
        ms(plan_t),
        ms(nb_t),
        ms(total_t),
        ms(cpu_t)
    );
    println!(
        "  same transaction without a monitor (server's share): transact {}; ovsdb-server CPU {}",
        ms(floor_t),
        ms(floor_cpu)
    );
    let arguments: usize = nbctl_invocations(&want).iter().map(Vec::len).sum();
    println!(
        "  ovn-nbctl: {nbctl_calls} invocation(s) = {nbctl_calls} transaction(s), {arguments} arguments: wall {}; ovsdb-server CPU {}",
        ms(nbctl_t),
        ms(nbctl_cpu)
    );
    println!(
        "  ratio ovn-nbctl / kube-egress total: {:.1}x",
        nbctl_t.as_secs_f64() / total_t.as_secs_f64()
    );
    println!(
        "  same input again: {noop_ops} operations, diff {}",
        ms(median(ours.4))
    );
    println!(
        "  one more served pod: {one_more_ops} operations in 1 transaction, {}",
        ms(median(ours.5))
    );
    println!("load average after: {}", loadavg());
}
