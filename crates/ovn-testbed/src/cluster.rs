//! A running mini OVN-Kubernetes cluster: its daemons, namespaces and links, the helpers the
//! tests use, and the cleanup that removes all of it when it is dropped.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kube_egress_testbed::{self as testbed, HttpServer};

use crate::error::{Error, Result};
use crate::manifests;
use crate::nb::{self, NbCommand};
use crate::process::{self, Daemon, NETNS_PREFIX, RUNDIR_PREFIX, run, wait_until};
use crate::spec::{
    ClusterSpec, EXTERNAL_GATEWAY, EXTERNAL_SUBNET, Layout, NodeLayout, PHYSNET, PodLayout,
    SERVER_GATEWAY, SERVER_IP, SERVER_PORT, SERVER_SUBNET, UNDERLAY_SUBNET,
};

/// The programs a cluster runs; [`missing_programs`] tells which are not installed.
pub const REQUIRED_PROGRAMS: &[&str] = &[
    "ovsdb-tool",
    "ovsdb-server",
    "ovs-vswitchd",
    "ovs-vsctl",
    "ovs-ofctl",
    "ovn-northd",
    "ovn-controller",
    "ovn-nbctl",
    "ovn-sbctl",
    "ethtool",
    "nft",
    "ip",
];
/// The Debian packages providing [`REQUIRED_PROGRAMS`].
pub const DEBIAN_PACKAGES: &str =
    "ovn-central ovn-host openvswitch-switch ovn-common ethtool nftables iproute2";

const NB_SCHEMA: &str = "/usr/share/ovn/ovn-nb.ovsschema";
const SB_SCHEMA: &str = "/usr/share/ovn/ovn-sb.ovsschema";
const VSWITCH_SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";

/// How long start-up steps and `wait_hv` may take before they are reported as stuck.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// Timeout of a request from a pod to the web server (covers a lost first SYN).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(4);

/// The nft table in the fabric namespace that counts, per uplink, packets to the web server.
pub const UPLINK_TABLE: &str = "ovn_testbed";
/// The fabric's address on the underlay bridge once [`OvnCluster::attach_fabric_to_underlay`]
/// gave it one (the chassis have `192.168.100.1` on).
pub const FABRIC_UNDERLAY_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 254);
/// The management port's host interface (ovnkube's name).
pub const MGMT_LINK: &str = "ovn-k8s-mp0";

/// The programs of [`REQUIRED_PROGRAMS`] that are not on `PATH` (nor in `/usr/sbin`, `/sbin`).
pub fn missing_programs() -> Vec<&'static str> {
    let path = std::env::var("PATH").unwrap_or_default();
    REQUIRED_PROGRAMS
        .iter()
        .copied()
        .filter(|program| {
            !path
                .split(':')
                .chain(["/usr/sbin", "/sbin", "/usr/bin"])
                .any(|dir| Path::new(dir).join(program).is_file())
        })
        .collect()
}

/// Why a cluster cannot start on this machine (not root, programs missing), if it cannot.
/// Tests print it and skip.
pub fn unavailable_reason() -> Option<String> {
    if !testbed::is_root() {
        return Some("needs root (network namespaces, OVS bridges)".into());
    }
    let missing = missing_programs();
    if !missing.is_empty() {
        return Some(format!(
            "missing {} (Debian packages: {DEBIAN_PACKAGES}; scripts/test installs them)",
            missing.join(", ")
        ));
    }
    None
}

/// One chassis: the namespace that holds its OVS (netdev datapath) and ovn-controller, and its
/// private run directory.
#[derive(Debug)]
struct Chassis {
    node: NodeLayout,
    netns: String,
    dir: PathBuf,
}

impl Chassis {
    fn db(&self) -> String {
        format!("unix:{}", self.dir.join("db.sock").display())
    }
    /// The fabric's end of the chassis's `br-ex` uplink.
    fn uplink(&self) -> String {
        format!("x{}", self.node.index)
    }
    fn underlay(&self) -> String {
        format!("u{}", self.node.index)
    }
}

/// Where a request from a pod left the cluster, as seen outside it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Egress {
    /// The source address the web server logged.
    pub source: IpAddr,
    /// The nodes whose `br-ex` uplink carried the request's packets onto the external network,
    /// i.e. whose gateway router sent it out.
    pub uplinks: Vec<String>,
}

impl Egress {
    /// The one node whose uplink carried the request, if exactly one did.
    pub fn uplink(&self) -> Option<&str> {
        match self.uplinks.as_slice() {
            [one] => Some(one),
            _ => None,
        }
    }
}

/// Stops the daemons, deletes the namespaces and the run directory when dropped (also while a
/// panic unwinds).
struct Guard {
    daemons: Mutex<Vec<Daemon>>,
    namespaces: Mutex<Vec<String>>,
    rundir: PathBuf,
}

impl Guard {
    fn daemons(&self) -> std::sync::MutexGuard<'_, Vec<Daemon>> {
        self.daemons
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
    fn namespaces(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.namespaces
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
    fn add_daemon(&self, daemon: Daemon) {
        self.daemons().push(daemon);
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        // Newest first: ovn-controllers and vswitchds before their databases and northd.
        let mut daemons = std::mem::take(&mut *self.daemons());
        daemons.reverse();
        process::stop_all(&mut daemons);
        let namespaces = std::mem::take(&mut *self.namespaces());
        if let Err(e) = testbed::delete_namespaces(&namespaces) {
            eprintln!("kube-egress-ovn-testbed: cleanup: {e}");
        }
        if let Err(e) = std::fs::remove_dir_all(&self.rundir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!(
                "kube-egress-ovn-testbed: cleanup: remove {}: {e}",
                self.rundir.display()
            );
        }
    }
}

/// A mini OVN-Kubernetes cluster with real OVN: see the crate documentation.
pub struct OvnCluster {
    // Field order is drop order: the server stops before the guard deletes the namespaces.
    server: HttpServer,
    layout: Layout,
    prefix: String,
    nb_tcp: SocketAddr,
    fabric: String,
    web: String,
    chassis: Vec<Chassis>,
    pod_netns: Vec<String>,
    requests: AtomicU64,
    /// Held by [`OvnCluster::request`]: the uplink counters tell one request's uplink only
    /// when no other request runs meanwhile.
    request_lock: Mutex<()>,
    guard: Guard,
}

impl fmt::Debug for OvnCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OvnCluster")
            .field("prefix", &self.prefix)
            .field("rundir", &self.guard.rundir)
            .field("nb_tcp", &self.nb_tcp)
            .finish_non_exhaustive()
    }
}

impl OvnCluster {
    /// Starts the cluster: sweeps what dead processes left, then builds everything. On any
    /// error, what was built is removed again. Needs root and the OVN/OVS programs
    /// ([`unavailable_reason`]).
    pub fn start(spec: &ClusterSpec) -> Result<OvnCluster> {
        let layout = spec.layout()?;
        if let Some(reason) = unavailable_reason() {
            return Err(Error::State(format!(
                "cannot start an OVN cluster: {reason}"
            )));
        }
        process::sweep_stale()?;
        let pid = std::process::id();
        let number = process::next_cluster_number();
        let prefix = format!("{NETNS_PREFIX}{pid}-{number}-");
        let rundir = std::env::temp_dir().join(format!("{RUNDIR_PREFIX}{pid}-{number}"));
        std::fs::create_dir(&rundir)
            .map_err(|e| Error::io(format!("create {}", rundir.display()), e))?;
        let guard = Guard {
            daemons: Mutex::new(Vec::new()),
            namespaces: Mutex::new(Vec::new()),
            rundir: rundir.clone(),
        };
        let fabric = format!("{prefix}fabric");
        let web = format!("{prefix}web");
        let chassis: Vec<Chassis> = layout
            .nodes
            .iter()
            .map(|node| Chassis {
                node: node.clone(),
                netns: format!("{prefix}n-{}", node.name),
                dir: rundir.join(&node.name),
            })
            .collect();
        let pod_netns: Vec<String> = layout
            .pods
            .iter()
            .map(|p| format!("{prefix}p-{}", p.name))
            .collect();
        let mut all_ns = vec![fabric.clone(), web.clone()];
        all_ns.extend(chassis.iter().map(|c| c.netns.clone()));
        all_ns.extend(pod_netns.iter().cloned());
        create_namespaces(&guard, &all_ns)?;

        let nb_tcp = start_central(&guard, &rundir)?;
        let nbctl_db = format!("unix:{}", rundir.join("nb.sock").display());
        // The logical topology goes in while the chassis come up.
        let mut args = vec![format!("--db={nbctl_db}")];
        args.extend(nb::batch_args(&nb::topology_commands(&layout)));
        run("ovn-nbctl", &args)?;

        build_fabric(&fabric, &web, &chassis)?;
        let sb = format!("unix:{}", rundir.join("sb.sock").display());
        for c in &chassis {
            start_chassis(&guard, c, &sb)?;
        }
        for (pod, ns) in layout.pods.iter().zip(&pod_netns) {
            let c = chassis
                .iter()
                .find(|c| c.node.name == pod.node)
                .expect("a layout's pods are on its nodes");
            plug_pod(c, pod, ns)?;
        }
        let server = HttpServer::start(&web, SocketAddr::new(IpAddr::V4(SERVER_IP), SERVER_PORT))?;
        let cluster = OvnCluster {
            server,
            layout,
            prefix,
            nb_tcp,
            fabric,
            web,
            chassis,
            pod_netns,
            requests: AtomicU64::new(0),
            request_lock: Mutex::new(()),
            guard,
        };
        cluster.wait_ports_up()?;
        cluster.wait_hv()?;
        Ok(cluster)
    }

    /// Every name and address of the cluster.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn node(&self, name: &str) -> Option<&NodeLayout> {
        self.layout.node(name)
    }

    pub fn pod(&self, name: &str) -> Option<&PodLayout> {
        self.layout.pod(name)
    }

    /// The Northbound database on TCP, `127.0.0.1:<ephemeral port>`.
    pub fn nb_tcp(&self) -> SocketAddr {
        self.nb_tcp
    }

    /// The Northbound database as an OVSDB address: `tcp:127.0.0.1:<port>`.
    pub fn nb_address(&self) -> String {
        format!("tcp:{}", self.nb_tcp)
    }

    /// The Northbound database's unix socket.
    pub fn nb_socket(&self) -> PathBuf {
        self.guard.rundir.join("nb.sock")
    }

    /// The Southbound database's unix socket.
    pub fn sb_socket(&self) -> PathBuf {
        self.guard.rundir.join("sb.sock")
    }

    /// The private run directory (databases, sockets, logs).
    pub fn rundir(&self) -> &Path {
        &self.guard.rundir
    }

    /// The prefix of every namespace name (`ko<pid>-<n>-`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Every namespace of the cluster.
    pub fn namespaces(&self) -> Vec<String> {
        self.guard.namespaces().clone()
    }

    /// The namespace of a pod.
    pub fn pod_netns(&self, pod: &str) -> Option<&str> {
        let i = self.layout.pods.iter().position(|p| p.name == pod)?;
        Some(&self.pod_netns[i])
    }

    /// The namespace of a node's chassis (its OVS, ovn-controller and `ovn-k8s-mp0`).
    pub fn chassis_netns(&self, node: &str) -> Option<&str> {
        self.chassis_of(node).map(|c| c.netns.as_str())
    }

    /// The namespace of the external network's bridge and router.
    pub fn fabric_netns(&self) -> &str {
        &self.fabric
    }

    /// The namespace of the web server.
    pub fn web_netns(&self) -> &str {
        &self.web
    }

    /// The web server at [`SERVER_IP`], which records the source of every request.
    pub fn server(&self) -> &HttpServer {
        &self.server
    }

    fn chassis_of(&self, node: &str) -> Option<&Chassis> {
        self.chassis.iter().find(|c| c.node.name == node)
    }

    /// Runs `ovn-nbctl` on the Northbound database and returns its output.
    pub fn nbctl(&self, args: &[&str]) -> Result<String> {
        let mut full = vec![format!("--db=unix:{}", self.nb_socket().display())];
        full.extend(args.iter().map(|a| a.to_string()));
        run("ovn-nbctl", &full)
    }

    /// Runs many `ovn-nbctl` commands as one invocation, hence one transaction. `options` go
    /// before the commands (`--no-wait`, `--wait=hv`). Argument lists of any length work.
    pub fn nbctl_batch(&self, options: &[&str], commands: &[NbCommand]) -> Result<String> {
        let mut full = vec![format!("--db=unix:{}", self.nb_socket().display())];
        full.extend(options.iter().map(|a| a.to_string()));
        full.extend(nb::batch_args(commands));
        process::run_long("ovn-nbctl", &full)
    }

    /// Runs `ovn-sbctl` on the Southbound database.
    pub fn sbctl(&self, args: &[&str]) -> Result<String> {
        let mut full = vec![format!("--db=unix:{}", self.sb_socket().display())];
        full.extend(args.iter().map(|a| a.to_string()));
        run("ovn-sbctl", &full)
    }

    /// Runs `ovs-vsctl` on a node's Open_vSwitch database.
    pub fn vsctl(&self, node: &str, args: &[&str]) -> Result<String> {
        let c = self.known_chassis(node)?;
        let mut full = vec![format!("--db={}", c.db()), "--timeout=30".to_string()];
        full.extend(args.iter().map(|a| a.to_string()));
        run("ovs-vsctl", &full)
    }

    /// The number of OpenFlow rules installed on a node's `br-int`.
    pub fn openflow_count(&self, node: &str) -> Result<usize> {
        let c = self.known_chassis(node)?;
        let out = process::run_with(
            Command::new("ovs-ofctl")
                .args(["dump-aggregate", "br-int"])
                .env("OVS_RUNDIR", &c.dir),
            &format!(
                "OVS_RUNDIR={} ovs-ofctl dump-aggregate br-int",
                c.dir.display()
            ),
            None,
        )?;
        out.split_whitespace()
            .find_map(|w| w.strip_prefix("flow_count="))
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| Error::State(format!("no flow_count in `{}`", out.trim())))
    }

    fn known_chassis(&self, node: &str) -> Result<&Chassis> {
        self.chassis_of(node)
            .ok_or_else(|| Error::State(format!("no node called {node} in this cluster")))
    }

    /// Waits until every chassis has installed the flows of the Northbound database's current
    /// contents: bumps `NB_Global.nb_cfg` and waits for `hv_cfg` to reach it (what
    /// `ovn-nbctl --wait=hv sync` does). Returns how long it took.
    pub fn wait_hv(&self) -> Result<Duration> {
        let start = std::time::Instant::now();
        self.nbctl(&["--wait=hv", "--timeout=60", "sync"])?;
        Ok(start.elapsed())
    }

    /// `NB_Global`'s `nb_cfg` and `hv_cfg`.
    pub fn nb_cfg(&self) -> Result<(u64, u64)> {
        let out = self.nbctl(&["--bare", "--columns=nb_cfg,hv_cfg", "list", "NB_Global"])?;
        let numbers: Vec<u64> = out
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        match numbers.as_slice() {
            [nb, hv] => Ok((*nb, *hv)),
            _ => Err(Error::State(format!(
                "unexpected NB_Global nb_cfg/hv_cfg: `{}`",
                out.trim()
            ))),
        }
    }

    /// Waits until ovn-controller has claimed every pod's and management port's logical switch
    /// port (`up = true`).
    fn wait_ports_up(&self) -> Result<()> {
        let mut wanted: Vec<String> = self.layout.pods.iter().map(|p| p.lsp.clone()).collect();
        wanted.extend(self.layout.nodes.iter().map(|n| n.mgmt_port()));
        let result = wait_until(
            "ovn-controller to claim the pod and management ports",
            STEP_TIMEOUT,
            || {
                self.check_daemons()?;
                let up = self.nbctl(&[
                    "--bare",
                    "--columns=name",
                    "find",
                    "Logical_Switch_Port",
                    "up=true",
                ])?;
                let up: Vec<&str> = up.split_whitespace().collect();
                Ok(wanted.iter().all(|w| up.contains(&w.as_str())))
            },
        );
        result.map(|_| ())
    }

    /// An error naming the first daemon that has exited.
    pub fn check_daemons(&self) -> Result<()> {
        for d in self.guard.daemons().iter_mut() {
            d.check_running()?;
        }
        Ok(())
    }

    /// The end of a daemon's log (`nb`, `sb`, `northd`, `<node>/ovsdb`, `<node>/vswitchd`,
    /// `<node>/controller`).
    pub fn log_tail(&self, daemon: &str) -> Option<String> {
        self.guard
            .daemons()
            .iter()
            .find(|d| d.name == daemon)
            .map(|d| d.log_tail())
    }

    /// Pids of the running daemons, by name.
    pub fn daemon_pids(&self) -> Vec<(String, u32)> {
        self.guard
            .daemons()
            .iter()
            .map(|d| (d.name.clone(), d.pid()))
            .collect()
    }

    /// `GET`s the web server from a pod and reports the source address the server logged and
    /// the node whose uplink carried the request. Fails when the request does not complete.
    /// Requests of one cluster run one at a time.
    pub fn request(&self, pod: &str) -> Result<Egress> {
        let ns = self
            .pod_netns(pod)
            .ok_or_else(|| Error::State(format!("no pod called {pod} in this cluster")))?;
        let _one_at_a_time = self
            .request_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let seq = self.requests.fetch_add(1, Ordering::SeqCst);
        let path = format!("/{pod}/{seq}");
        let before = self.uplink_counters()?;
        let target = format!("http://{SERVER_IP}:{SERVER_PORT}{path}");
        let response = testbed::http_get(ns, &target, REQUEST_TIMEOUT)?;
        let after = self.uplink_counters()?;
        if response.status != 200 {
            return Err(Error::State(format!(
                "GET {target} from pod {pod}: status {}",
                response.status
            )));
        }
        let source = self
            .server
            .requests()
            .into_iter()
            .find(|r| r.path == path)
            .map(|r| r.source.ip())
            .ok_or_else(|| {
                Error::State(format!(
                    "GET {target} from pod {pod} got an answer but the server logged no such request"
                ))
            })?;
        let uplinks = self
            .chassis
            .iter()
            .zip(before.iter().zip(&after))
            .filter(|(_, (b, a))| a > b)
            .map(|(c, _)| c.node.name.clone())
            .collect();
        Ok(Egress { source, uplinks })
    }

    /// Gives the fabric namespace an address on the Geneve underlay's bridge,
    /// [`FABRIC_UNDERLAY_IP`], so a process there (a prober) reaches every chassis's tunnel
    /// endpoint address across the bridge, like a host of the node network. Idempotent.
    ///
    /// Each chassis gets a host route to that address straight out of its underlay link `ul0`:
    /// the userspace datapath's internal port `br-phy`, which holds the address, can lose its
    /// carrier after `ul0` went down and up, and the chassis's replies would then be dropped
    /// while the fabric's packets still arrive (the kernel also receives on `ul0`).
    pub fn attach_fabric_to_underlay(&self) -> Result<Ipv4Addr> {
        for c in &self.chassis {
            let routes = testbed::exec(&c.netns, &["ip", "-4", "route", "show", "dev", "ul0"])?;
            if !routes.contains(&FABRIC_UNDERLAY_IP.to_string()) {
                process::ip_batch(
                    &c.netns,
                    &[format!(
                        "route add {FABRIC_UNDERLAY_IP}/32 dev ul0 src {}",
                        c.node.encap_ip
                    )],
                )?;
            }
        }
        let shown = testbed::exec(
            &self.fabric,
            &["ip", "-o", "-4", "addr", "show", "dev", "br-ul"],
        )?;
        if !shown.contains(&format!("{FABRIC_UNDERLAY_IP}/")) {
            process::ip_batch(
                &self.fabric,
                &[format!(
                    "addr add {FABRIC_UNDERLAY_IP}/{} dev br-ul",
                    UNDERLAY_SUBNET.prefix_len()
                )],
            )?;
        }
        Ok(FABRIC_UNDERLAY_IP)
    }

    /// Cuts a node off the network (`false`) or reconnects it (`true`): the fabric's ends of
    /// its `br-ex` uplink and of its underlay link go down or up. Nothing inside the node
    /// changes; its gateway router can no longer reach the external network, its tunnel
    /// endpoint no other chassis, and what is sent to it on either network is lost (the
    /// fabric's routes stay, so a sender in the fabric sees timeouts, not `ENETUNREACH`).
    pub fn set_node_connected(&self, node: &str, connected: bool) -> Result<()> {
        let c = self.known_chassis(node)?;
        let state = if connected { "up" } else { "down" };
        process::ip_batch(
            &self.fabric,
            &[
                format!("link set {} {state}", c.uplink()),
                format!("link set {} {state}", c.underlay()),
            ],
        )
    }

    /// Per node, the packets to the web server that entered the external network from its
    /// uplink so far.
    pub fn uplink_counters(&self) -> Result<Vec<u64>> {
        self.chassis
            .iter()
            .map(|c| {
                let out = testbed::exec(
                    &self.fabric,
                    &[
                        "nft",
                        "list",
                        "counter",
                        "bridge",
                        UPLINK_TABLE,
                        &counter_name(c),
                    ],
                )?;
                parse_packets(&out)
                    .ok_or_else(|| Error::State(format!("no packet count in `{}`", out.trim())))
            })
            .collect()
    }

    /// The Kubernetes objects of the cluster (`nodes.yaml`, `namespaces.yaml`, `pods.yaml`).
    pub fn manifest_files(&self) -> Result<Vec<(&'static str, String)>> {
        manifests::cluster_files(&self.layout)
    }

    /// Writes the Kubernetes objects of the cluster into `dir`.
    pub fn write_manifests(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        manifests::write_cluster(&self.layout, dir)
    }

    /// A human-readable summary: addresses, namespaces, databases.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "OVN cluster {}: NB tcp:{} and unix:{}, SB unix:{}, run directory {}\n",
            self.prefix,
            self.nb_tcp,
            self.nb_socket().display(),
            self.sb_socket().display(),
            self.rundir().display()
        );
        for c in &self.chassis {
            let n = &c.node;
            s.push_str(&format!(
                "  {} (netns {}): node IP {}, GR_{} join {}, subnet {}, mgmt {}, encap {}\n",
                n.name, c.netns, n.node_ip, n.name, n.join_ip, n.subnet, n.mgmt_ip, n.encap_ip
            ));
        }
        for (p, ns) in self.layout.pods.iter().zip(&self.pod_netns) {
            s.push_str(&format!(
                "  pod {}/{} on {} (netns {ns}): {}\n",
                p.namespace, p.name, p.node, p.ip
            ));
        }
        s.push_str(&format!(
            "  web server {SERVER_IP}:{SERVER_PORT} (netns {}) behind {EXTERNAL_GATEWAY} (netns {})\n",
            self.web, self.fabric
        ));
        s
    }
}

fn counter_name(c: &Chassis) -> String {
    format!("to_server_{}", c.uplink())
}

/// The `packets N` of `nft list counter` output.
fn parse_packets(out: &str) -> Option<u64> {
    let mut words = out.split_whitespace();
    while let Some(w) = words.next() {
        if w == "packets" {
            return words.next()?.parse().ok();
        }
    }
    None
}

/// `ip netns add` mounts the shared `/run/netns` on first use; two concurrent first uses could
/// stack two mounts, so clusters of one process create their namespaces one at a time.
static NETNS_LOCK: Mutex<()> = Mutex::new(());

fn create_namespaces(guard: &Guard, names: &[String]) -> Result<()> {
    let _one_at_a_time = NETNS_LOCK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    for name in names {
        run("ip", &["netns".into(), "add".into(), name.clone()])?;
        guard.namespaces().push(name.clone());
        run(
            "ip",
            &[
                "-n".into(),
                name.clone(),
                "link".into(),
                "set".into(),
                "lo".into(),
                "up".into(),
            ],
        )?;
    }
    Ok(())
}

fn connectable(socket: &Path) -> bool {
    UnixStream::connect(socket).is_ok()
}

/// Takes ownership of a started daemon and waits until `ready` (checking that it has not exited
/// meanwhile).
fn adopt_when_ready(
    guard: &Guard,
    daemon: Result<Daemon>,
    mut ready: impl FnMut() -> bool,
) -> Result<()> {
    let daemon = daemon?;
    let what = format!("{} to become ready", daemon.name);
    guard.add_daemon(daemon);
    wait_until(&what, STEP_TIMEOUT, || {
        guard
            .daemons()
            .last_mut()
            .expect("just added")
            .check_running()?;
        Ok(ready())
    })
    .map_err(|e| match e {
        Error::Timeout { .. } => guard
            .daemons()
            .last()
            .expect("just added")
            .failed(e.to_string()),
        other => other,
    })?;
    Ok(())
}

fn path_arg(flag: &str, p: &Path) -> String {
    format!("{flag}{}", p.display())
}

fn ovsdb_tool_create(db: &Path, schema: &str) -> Result<()> {
    run(
        "ovsdb-tool",
        &["create".into(), db.display().to_string(), schema.into()],
    )?;
    Ok(())
}

/// NB and SB ovsdb-servers and ovn-northd, in the calling process's namespace (so NB's TCP
/// port is on this namespace's 127.0.0.1). Returns NB's TCP address.
fn start_central(guard: &Guard, dir: &Path) -> Result<SocketAddr> {
    let env: [(&str, &Path); 4] = [
        ("OVS_RUNDIR", dir),
        ("OVN_RUNDIR", dir),
        ("OVS_LOGDIR", dir),
        ("OVN_LOGDIR", dir),
    ];
    let nb_log = dir.join("nb.log");
    for (name, schema, extra) in [
        ("nb", NB_SCHEMA, Some("--remote=ptcp:0:127.0.0.1")),
        ("sb", SB_SCHEMA, None),
    ] {
        let db = dir.join(format!("{name}.db"));
        let sock = dir.join(format!("{name}.sock"));
        ovsdb_tool_create(&db, schema)?;
        let mut args = vec![
            db.display().to_string(),
            path_arg("--remote=punix:", &sock),
            path_arg("--pidfile=", &dir.join(format!("{name}.pid"))),
            path_arg("--log-file=", &dir.join(format!("{name}.log"))),
            path_arg("--unixctl=", &dir.join(format!("{name}.ctl"))),
        ];
        args.extend(extra.map(str::to_string));
        let log = dir.join(format!("{name}.log"));
        let is_nb = name == "nb";
        adopt_when_ready(
            guard,
            Daemon::start(name, None, "ovsdb-server", &args, &env, &log),
            || connectable(&sock) && (!is_nb || tcp_port_in_log(&nb_log).is_some()),
        )?;
    }
    let port = tcp_port_in_log(&nb_log).expect("waited for it");
    let northd_args = vec![
        path_arg("--ovnnb-db=unix:", &dir.join("nb.sock")),
        path_arg("--ovnsb-db=unix:", &dir.join("sb.sock")),
        path_arg("--pidfile=", &dir.join("northd.pid")),
        path_arg("--log-file=", &dir.join("northd.log")),
        path_arg("--unixctl=", &dir.join("northd.ctl")),
    ];
    let ctl = dir.join("northd.ctl");
    adopt_when_ready(
        guard,
        Daemon::start(
            "northd",
            None,
            "ovn-northd",
            &northd_args,
            &env,
            &dir.join("northd.log"),
        ),
        || connectable(&ctl),
    )?;
    Ok(SocketAddr::from(([127, 0, 0, 1], port)))
}

/// The port of `ptcp:0:127.0.0.1` as ovsdb-server logs it (`listening on port N`).
fn tcp_port_in_log(log: &Path) -> Option<u16> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .find_map(|l| l.split("listening on port ").nth(1))
        .and_then(|rest| rest.trim().parse().ok())
}

fn ethtool_tx_off(ns: &str, links: &[&str]) -> Result<()> {
    // The userspace datapath reads veths with AF_PACKET and forwards packets whose checksum the
    // sender left to offload as they are: TCP would break. Every veth end that carries traffic
    // into or out of a netdev bridge computes checksums in software.
    for link in links {
        testbed::exec(ns, &["ethtool", "-K", link, "tx", "off"])?;
    }
    Ok(())
}

fn set_forwarding(ns: &str) -> Result<()> {
    testbed::in_netns(ns, || {
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
            .map_err(|e| Error::io(format!("enable IPv4 forwarding in namespace {ns}"), e))
    })?
}

/// The fabric namespace: bridge `br-ext` (the external L2 segment, with the router's
/// 172.18.0.1) and bridge `br-ul` (the Geneve underlay) with a veth to each chassis, a veth to
/// the web server's namespace, forwarding between them, and the uplink counters.
fn build_fabric(fabric: &str, web: &str, chassis: &[Chassis]) -> Result<()> {
    let mut lines = vec![
        "link add br-ext type bridge".to_string(),
        format!(
            "addr add {EXTERNAL_GATEWAY}/{} dev br-ext",
            EXTERNAL_SUBNET.prefix_len()
        ),
        "link set br-ext up".to_string(),
        "link add br-ul type bridge".to_string(),
        "link set br-ul up".to_string(),
        format!("link add web type veth peer name eth0 netns {web}"),
        format!(
            "addr add {SERVER_GATEWAY}/{} dev web",
            SERVER_SUBNET.prefix_len()
        ),
        "link set web up".to_string(),
    ];
    for c in chassis {
        let (x, u) = (c.uplink(), c.underlay());
        lines.push(format!(
            "link add {x} type veth peer name ext0 netns {}",
            c.netns
        ));
        lines.push(format!("link set {x} master br-ext up"));
        lines.push(format!(
            "link add {u} type veth peer name ul0 netns {}",
            c.netns
        ));
        lines.push(format!("link set {u} master br-ul up"));
    }
    process::ip_batch(fabric, &lines)?;
    set_forwarding(fabric)?;
    process::ip_batch(
        web,
        &[
            format!(
                "addr add {SERVER_IP}/{} dev eth0",
                SERVER_SUBNET.prefix_len()
            ),
            "link set eth0 up".to_string(),
            format!("route add default via {SERVER_GATEWAY}"),
        ],
    )?;
    ethtool_tx_off(web, &["eth0"])?;
    let mut links = vec!["web".to_string()];
    for c in chassis {
        links.push(c.uplink());
        links.push(c.underlay());
    }
    let refs: Vec<&str> = links.iter().map(String::as_str).collect();
    ethtool_tx_off(fabric, &refs)?;

    let mut rules = format!("table bridge {UPLINK_TABLE} {{\n");
    for c in chassis {
        rules.push_str(&format!("  counter {} {{ }}\n", counter_name(c)));
    }
    rules.push_str(
        "  chain uplinks {\n    type filter hook prerouting priority 0; policy accept;\n",
    );
    for c in chassis {
        rules.push_str(&format!(
            "    iifname \"{}\" ip daddr {SERVER_IP} counter name \"{}\"\n",
            c.uplink(),
            counter_name(c)
        ));
    }
    rules.push_str("  }\n}\n");
    testbed::exec_with_input(fabric, &["nft", "-f", "-"], &rules)?;
    Ok(())
}

/// One chassis: its Open_vSwitch database, ovs-vswitchd (netdev datapath) and ovn-controller,
/// all in the chassis namespace; bridges `br-int`, `br-ex` (uplink `ext0`, mapped to
/// [`PHYSNET`]) and `br-phy` (underlay `ul0`, holding the Geneve endpoint); the management
/// port `ovn-k8s-mp0` as an internal port of `br-int`.
fn start_chassis(guard: &Guard, c: &Chassis, sb: &str) -> Result<()> {
    let dir = &c.dir;
    std::fs::create_dir(dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    let env: [(&str, &Path); 4] = [
        ("OVS_RUNDIR", dir),
        ("OVN_RUNDIR", dir),
        ("OVS_LOGDIR", dir),
        ("OVN_LOGDIR", dir),
    ];
    let name = &c.node.name;
    let conf = dir.join("conf.db");
    let sock = dir.join("db.sock");
    ovsdb_tool_create(&conf, VSWITCH_SCHEMA)?;
    let args = vec![
        conf.display().to_string(),
        path_arg("--remote=punix:", &sock),
        path_arg("--pidfile=", &dir.join("ovsdb.pid")),
        path_arg("--log-file=", &dir.join("ovsdb.log")),
        path_arg("--unixctl=", &dir.join("ovsdb.ctl")),
    ];
    adopt_when_ready(
        guard,
        Daemon::start(
            &format!("{name}/ovsdb"),
            Some(&c.netns),
            "ovsdb-server",
            &args,
            &env,
            &dir.join("ovsdb.log"),
        ),
        || connectable(&sock),
    )?;
    let vsctl = |args: &[&str]| -> Result<String> {
        let mut full = vec![format!("--db={}", c.db()), "--timeout=30".to_string()];
        full.extend(args.iter().map(|a| a.to_string()));
        run("ovs-vsctl", &full)
    };
    vsctl(&["--no-wait", "init"])?;
    let args = vec![
        c.db(),
        path_arg("--pidfile=", &dir.join("vswitchd.pid")),
        path_arg("--log-file=", &dir.join("vswitchd.log")),
        path_arg("--unixctl=", &dir.join("vswitchd.ctl")),
    ];
    let ctl = dir.join("vswitchd.ctl");
    adopt_when_ready(
        guard,
        Daemon::start(
            &format!("{name}/vswitchd"),
            Some(&c.netns),
            "ovs-vswitchd",
            &args,
            &env,
            &dir.join("vswitchd.log"),
        ),
        || connectable(&ctl),
    )?;
    let node = &c.node;
    let mgmt_mac = format!("mac=\"{}\"", node.mgmt_mac);
    let mgmt_id = format!("external_ids:iface-id={}", node.mgmt_port());
    let ids = [
        format!("external_ids:system-id={name}"),
        format!("external_ids:hostname={name}"),
        format!("external_ids:ovn-remote={sb}"),
        "external_ids:ovn-encap-type=geneve".to_string(),
        format!("external_ids:ovn-encap-ip={}", node.encap_ip),
        "external_ids:ovn-bridge-datapath-type=netdev".to_string(),
        format!("external_ids:ovn-bridge-mappings={PHYSNET}:br-ex"),
    ];
    let mut args: Vec<&str> = vec![
        "add-br",
        "br-int",
        "--",
        "set",
        "bridge",
        "br-int",
        "datapath_type=netdev",
        "fail-mode=secure",
        "other-config:disable-in-band=true",
        "--",
        "add-br",
        "br-ex",
        "--",
        "set",
        "bridge",
        "br-ex",
        "datapath_type=netdev",
        "--",
        "add-port",
        "br-ex",
        "ext0",
        "--",
        "add-br",
        "br-phy",
        "--",
        "set",
        "bridge",
        "br-phy",
        "datapath_type=netdev",
        "--",
        "add-port",
        "br-phy",
        "ul0",
        "--",
        "add-port",
        "br-int",
        MGMT_LINK,
        "--",
        "set",
        "interface",
        MGMT_LINK,
        "type=internal",
        &mgmt_mac,
        &mgmt_id,
        "--",
        "set",
        "open_vswitch",
        ".",
    ];
    args.extend(ids.iter().map(String::as_str));
    vsctl(&args)?;
    process::ip_batch(
        &c.netns,
        &[
            "link set ext0 up".to_string(),
            "link set ul0 up".to_string(),
            format!(
                "addr add {}/{} dev br-phy",
                node.encap_ip,
                UNDERLAY_SUBNET.prefix_len()
            ),
            "link set br-phy up".to_string(),
            format!(
                "addr add {}/{} dev {MGMT_LINK}",
                node.mgmt_ip,
                node.subnet.prefix_len()
            ),
            format!("link set {MGMT_LINK} up"),
            format!(
                "route add {} via {} dev {MGMT_LINK}",
                crate::spec::CLUSTER_SUBNET,
                node.gateway
            ),
        ],
    )?;
    ethtool_tx_off(&c.netns, &["ext0", "ul0"])?;
    let args = vec![
        c.db(),
        path_arg("--pidfile=", &dir.join("controller.pid")),
        path_arg("--log-file=", &dir.join("controller.log")),
    ];
    let pidfile = dir.join("controller.pid");
    adopt_when_ready(
        guard,
        Daemon::start(
            &format!("{name}/controller"),
            Some(&c.netns),
            "ovn-controller",
            &args,
            &env,
            &dir.join("controller.log"),
        ),
        || pidfile.exists(),
    )?;
    Ok(())
}

/// A pod: a veth from the chassis namespace (`p<n>`, a port of `br-int` bound to the pod's
/// logical switch port by `iface-id`) to `eth0` in the pod's namespace, with ovnkube's MAC,
/// the address with the node subnet's prefix and a default route via `rtos-<node>`.
fn plug_pod(c: &Chassis, pod: &PodLayout, ns: &str) -> Result<()> {
    let host = &pod.host_link;
    process::ip_batch(
        &c.netns,
        &[
            format!("link add {host} type veth peer name eth0 netns {ns}"),
            format!("link set {host} up"),
        ],
    )?;
    process::ip_batch(
        ns,
        &[
            format!("link set eth0 address {}", pod.mac),
            format!("addr add {}/{} dev eth0", pod.ip, pod.subnet.prefix_len()),
            "link set eth0 up".to_string(),
            format!("route add default via {}", pod.gateway),
        ],
    )?;
    ethtool_tx_off(ns, &["eth0"])?;
    ethtool_tx_off(&c.netns, &[host])?;
    let id = format!("external_ids:iface-id={}", pod.lsp);
    run(
        "ovs-vsctl",
        &[
            format!("--db={}", c.db()),
            "--timeout=30".into(),
            "add-port".into(),
            "br-int".into(),
            host.clone(),
            "--".into(),
            "set".into(),
            "interface".into(),
            host.clone(),
            id,
        ],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nft_counter_output_parses() {
        let out = "table bridge ovn_testbed {\n\tcounter to_server_x0 {\n\t\tpackets 12 bytes 900\n\t}\n}\n";
        assert_eq!(parse_packets(out), Some(12));
        assert_eq!(parse_packets("nothing"), None);
    }

    #[test]
    fn the_nb_port_is_read_from_the_log() {
        let dir = std::env::temp_dir().join(format!("ovn-testbed-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("nb.log");
        std::fs::write(
            &log,
            "2026-11-22T07:38:03.423Z|00002|socket_util|INFO|0:127.0.0.1: listening on port 38523\n",
        )
        .unwrap();
        assert_eq!(tcp_port_in_log(&log), Some(38523));
        std::fs::write(&log, "nothing yet\n").unwrap();
        assert_eq!(tcp_port_in_log(&log), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
