//! A built testbed: its namespaces, links and addresses, the servers running in it, and the
//! cleanup that removes all of it when it is dropped.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Command, ExitStatus};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;

use crate::error::{Error, Result};
use crate::http::{self, HttpResponse, HttpServer, Request};
use crate::netns;
use crate::spec::{Plan, TestbedBuilder, gateway_of};

/// The bridge in every switch namespace.
pub const BRIDGE: &str = "br0";
/// The nft table of the CNI imitation in every node namespace (family `ip`).
pub const CNI_MASQ_TABLE: &str = "cni_masq";

/// A named network namespace of the testbed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Netns {
    name: String,
}

impl fmt::Display for Netns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl Netns {
    fn new(name: String) -> Self {
        Netns { name }
    }

    /// The name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs a command in the namespace; see [`netns::exec`].
    pub fn exec(&self, argv: &[&str]) -> Result<String> {
        netns::exec(&self.name, argv)
    }

    /// Runs `f` on a thread inside the namespace; see [`netns::in_netns`].
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        netns::in_netns(&self.name, f)
    }

    /// `GET`s `target` (`203.0.113.10`, `10.128.0.10:8080`, `http://198.51.100.10/x`) from
    /// inside the namespace with a 2 s timeout.
    pub fn http_get(&self, target: &str) -> Result<HttpResponse> {
        http::http_get(&self.name, target, http::DEFAULT_TIMEOUT)
    }

    /// [`Netns::http_get`] with another timeout.
    pub fn http_get_timeout(&self, target: &str, timeout: Duration) -> Result<HttpResponse> {
        http::http_get(&self.name, target, timeout)
    }

    /// Starts an [`HttpServer`] listening on `0.0.0.0:port` in the namespace.
    pub fn serve_http(&self, port: u16) -> Result<HttpServer> {
        HttpServer::start(&self.name, SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))
    }
}

/// A node's link on one network and the switch port at the other end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    /// `primary` or the secondary network's name.
    pub network: String,
    /// The link in the node namespace (`eth0`, `eth1`, ...).
    pub link: String,
    /// The node's address with the network's prefix length.
    pub address: Ipv4Net,
    /// The switch namespace and the port (named after the node) on its bridge.
    pub switch_netns: String,
    pub switch_port: String,
}

/// A node namespace.
#[derive(Debug)]
pub struct Node {
    name: String,
    netns: Netns,
    primary: Attachment,
    secondaries: Vec<Attachment>,
    pod_cidr: Ipv4Net,
    pod_gateway: Ipv4Addr,
}

impl Node {
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn netns(&self) -> &Netns {
        &self.netns
    }
    /// The node IP: its address on the primary network.
    pub fn ip(&self) -> Ipv4Addr {
        self.primary.address.addr()
    }
    pub fn primary(&self) -> &Attachment {
        &self.primary
    }
    pub fn secondaries(&self) -> &[Attachment] {
        &self.secondaries
    }
    /// The node's link on secondary network `network`, if it has one.
    pub fn secondary(&self, network: &str) -> Option<&Attachment> {
        self.secondaries.iter().find(|a| a.network == network)
    }
    /// The primary link followed by the secondary ones.
    pub fn attachments(&self) -> impl Iterator<Item = &Attachment> {
        std::iter::once(&self.primary).chain(&self.secondaries)
    }
    pub fn pod_cidr(&self) -> Ipv4Net {
        self.pod_cidr
    }
    /// The pods' default gateway: the first address of the pod CIDR, held (as a /32) by every
    /// pod-facing veth of the node.
    pub fn pod_gateway(&self) -> Ipv4Addr {
        self.pod_gateway
    }
    pub fn exec(&self, argv: &[&str]) -> Result<String> {
        self.netns.exec(argv)
    }
    pub fn http_get(&self, target: &str) -> Result<HttpResponse> {
        self.netns.http_get(target)
    }
    pub fn http_get_timeout(&self, target: &str, timeout: Duration) -> Result<HttpResponse> {
        self.netns.http_get_timeout(target, timeout)
    }
    pub fn serve_http(&self, port: u16) -> Result<HttpServer> {
        self.netns.serve_http(port)
    }
}

/// A pod namespace.
#[derive(Debug)]
pub struct Pod {
    name: String,
    namespace: String,
    node: String,
    netns: Netns,
    ip: Ipv4Addr,
    node_link: String,
    gateway: Ipv4Addr,
}

impl Pod {
    pub const LINK: &'static str = "eth0";

    pub fn name(&self) -> &str {
        &self.name
    }
    /// The Kubernetes namespace it stands for.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }
    /// The name of its node.
    pub fn node(&self) -> &str {
        &self.node
    }
    pub fn netns(&self) -> &Netns {
        &self.netns
    }
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }
    /// Its link in the pod namespace (`eth0`).
    pub fn link(&self) -> &str {
        Self::LINK
    }
    /// The other end of its veth, in the node namespace (`v-<pod>`).
    pub fn node_link(&self) -> &str {
        &self.node_link
    }
    /// Its default gateway (the node's pod gateway address).
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }
    pub fn exec(&self, argv: &[&str]) -> Result<String> {
        self.netns.exec(argv)
    }
    pub fn http_get(&self, target: &str) -> Result<HttpResponse> {
        self.netns.http_get(target)
    }
    pub fn http_get_timeout(&self, target: &str, timeout: Duration) -> Result<HttpResponse> {
        self.netns.http_get_timeout(target, timeout)
    }
    pub fn serve_http(&self, port: u16) -> Result<HttpServer> {
        self.netns.serve_http(port)
    }
}

/// The router between the primary and the external network. It knows no pod CIDR.
#[derive(Debug)]
pub struct Router {
    netns: Netns,
    primary: Ipv4Net,
    external: Ipv4Net,
}

impl Router {
    pub const PRIMARY_LINK: &'static str = "eth0";
    pub const EXTERNAL_LINK: &'static str = "eth1";

    pub fn netns(&self) -> &Netns {
        &self.netns
    }
    /// Its address on the primary network (the nodes' default gateway), with the prefix.
    pub fn primary(&self) -> Ipv4Net {
        self.primary
    }
    /// Its address on the external network, with the prefix.
    pub fn external(&self) -> Ipv4Net {
        self.external
    }
}

/// A web server namespace on an external network, logging the source of every request.
#[derive(Debug)]
pub struct Server {
    netns: Netns,
    ip: Ipv4Addr,
    gateway: Ipv4Addr,
    // Shared so that [`Testbed::keep`] can leave it running past the testbed.
    http: Arc<HttpServer>,
}

impl Server {
    pub const LINK: &'static str = "eth0";

    pub fn netns(&self) -> &Netns {
        &self.netns
    }
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }
    /// Its default gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }
    pub fn port(&self) -> u16 {
        self.http.local_addr().port()
    }
    /// `http://IP/` (with `:port` unless it is 80).
    pub fn url(&self) -> String {
        match self.port() {
            80 => format!("http://{}/", self.ip),
            port => format!("http://{}:{port}/", self.ip),
        }
    }
    /// The source address of every request so far, oldest first.
    pub fn seen(&self) -> Vec<IpAddr> {
        self.http.seen()
    }
    pub fn requests(&self) -> Vec<Request> {
        self.http.requests()
    }
    pub fn clear(&self) {
        self.http.clear()
    }
    pub fn http(&self) -> &HttpServer {
        &self.http
    }
}

/// A secondary network: its switch, its gateway, and the server behind the gateway.
#[derive(Debug)]
pub struct Secondary {
    name: String,
    switch: Netns,
    gateway_netns: Netns,
    gateway: Ipv4Net,
    far_gateway: Ipv4Net,
    server: Server,
}

impl Secondary {
    /// The gateway's link on the secondary network and on the far network.
    pub const GATEWAY_LINK: &'static str = "eth0";
    pub const GATEWAY_FAR_LINK: &'static str = "eth1";

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn subnet(&self) -> Ipv4Net {
        self.gateway.trunc()
    }
    pub fn switch(&self) -> &Netns {
        &self.switch
    }
    pub fn gateway_netns(&self) -> &Netns {
        &self.gateway_netns
    }
    /// The gateway's address on the secondary network, with the prefix.
    pub fn gateway(&self) -> Ipv4Net {
        self.gateway
    }
    /// The gateway's address on the far network, with the prefix.
    pub fn far_gateway(&self) -> Ipv4Net {
        self.far_gateway
    }
    /// The network behind the gateway.
    pub fn far_subnet(&self) -> Ipv4Net {
        self.far_gateway.trunc()
    }
    /// The server behind the gateway.
    pub fn server(&self) -> &Server {
        &self.server
    }
}

/// Kills the started processes and deletes the namespaces when dropped (also while a panic
/// unwinds), unless disarmed by [`Testbed::keep`].
struct Guard {
    namespaces: Vec<String>,
    children: Mutex<Vec<Child>>,
    armed: bool,
}

impl Guard {
    fn cleanup(&mut self) -> Result<()> {
        let children = std::mem::take(
            self.children
                .get_mut()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        terminate(children);
        self.armed = false;
        netns::delete_namespaces(&self.namespaces)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.armed
            && let Err(e) = self.cleanup()
        {
            eprintln!("kube-egress-testbed: cleanup: {e}");
        }
    }
}

/// SIGTERM, up to 1 s of grace, then SIGKILL; every child is reaped.
fn terminate(mut children: Vec<Child>) {
    for child in &mut children {
        if matches!(child.try_wait(), Ok(None)) {
            // SAFETY: kill(2) on the pid of a child we have not reaped yet.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(1);
    for child in &mut children {
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if matches!(child.try_wait(), Ok(None)) {
            let _ = child.kill();
        }
        let _ = child.wait();
    }
}

/// A topology of network namespaces: switches, nodes with pods, a router with an external web
/// server, secondary networks with gateways and servers. See the crate documentation.
///
/// Dropping it stops its servers, ends the processes it started and deletes every namespace it
/// created, which removes every link, address, route and rule in them.
#[derive(Debug)]
pub struct Testbed {
    // Field order is drop order: the servers stop before the guard deletes the namespaces.
    server: Server,
    secondaries: Vec<Secondary>,
    prefix: String,
    cluster_cidr: Ipv4Net,
    rp_filter: u8,
    switch: Netns,
    router: Router,
    nodes: Vec<Node>,
    pods: Vec<Pod>,
    guard: Guard,
}

impl fmt::Debug for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard")
            .field("namespaces", &self.namespaces)
            .field("armed", &self.armed)
            .finish_non_exhaustive()
    }
}

impl TestbedBuilder {
    /// Checks the topology, sweeps namespaces left behind by dead test processes, and creates
    /// everything. On any error, what was created is removed again.
    pub fn build(self) -> Result<Testbed> {
        let plan = self.validate()?;
        build(plan)
    }
}

impl Testbed {
    /// The lab topology ([`TestbedBuilder::lab`]), built.
    pub fn lab() -> Result<Testbed> {
        TestbedBuilder::lab().build()
    }

    /// The prefix of every namespace name (`ke<pid>-<n>-` or `<persistent prefix>-`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    /// Every namespace of the testbed.
    pub fn namespaces(&self) -> &[String] {
        &self.guard.namespaces
    }
    pub fn cluster_cidr(&self) -> Ipv4Net {
        self.cluster_cidr
    }
    /// The primary network (192.168.64.0/18 in the lab).
    pub fn primary_subnet(&self) -> Ipv4Net {
        self.router.primary.trunc()
    }
    /// The namespace of the primary network's bridge ([`BRIDGE`]).
    pub fn switch(&self) -> &Netns {
        &self.switch
    }
    pub fn router(&self) -> &Router {
        &self.router
    }
    /// The external web server behind the router.
    pub fn server(&self) -> &Server {
        &self.server
    }
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }
    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }
    pub fn pod(&self, name: &str) -> Option<&Pod> {
        self.pods.iter().find(|p| p.name == name)
    }
    pub fn secondaries(&self) -> &[Secondary] {
        &self.secondaries
    }
    pub fn secondary(&self, name: &str) -> Option<&Secondary> {
        self.secondaries.iter().find(|s| s.name == name)
    }

    /// Runs a command in one of the testbed's namespaces (by full name).
    pub fn exec(&self, ns: &str, argv: &[&str]) -> Result<String> {
        self.check_own(ns)?;
        netns::exec(ns, argv)
    }

    /// Starts a process in one of the testbed's namespaces; it is stopped (SIGTERM, then
    /// SIGKILL after 1 s) when the testbed goes away. Returns its pid.
    pub fn spawn(&self, ns: &str, cmd: &mut Command) -> Result<u32> {
        self.check_own(ns)?;
        let child = netns::spawn(ns, cmd)?;
        let pid = child.id();
        self.children().push(child);
        Ok(pid)
    }

    /// Stops a process started by [`Testbed::spawn`] (SIGTERM, SIGKILL after 1 s) and returns
    /// how it ended; `None` if no such process was started here.
    pub fn stop_process(&self, pid: u32) -> Option<ExitStatus> {
        let mut child = {
            let mut children = self.children();
            let index = children.iter().position(|c| c.id() == pid)?;
            children.swap_remove(index)
        };
        if matches!(child.try_wait(), Ok(None)) {
            // SAFETY: kill(2) on the pid of a child we have not reaped yet.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(1);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
        }
        child.wait().ok()
    }

    /// Takes all links of a node down (`false`) or up again (`true`) from the switch side, as
    /// if its cables were pulled: the node sees no carrier and cannot undo it itself.
    pub fn set_node_connected(&self, node: &str, connected: bool) -> Result<()> {
        let node = self
            .node(node)
            .ok_or_else(|| Error::Topology(format!("no node `{node}`")))?;
        let state = if connected { "up" } else { "down" };
        for a in node.attachments() {
            netns::ip_batch(
                Some(&a.switch_netns),
                &[format!("link set dev {} {state}", a.switch_port)],
            )?;
        }
        Ok(())
    }

    /// Stops the web servers of the testbed (their threads; the namespaces stay). For a caller
    /// that wants to serve the same addresses and ports in another way, for instance from a
    /// process that outlives this one.
    pub fn stop_servers(&self) {
        self.servers().for_each(|s| s.http.stop());
    }

    /// Leaves everything in place: the namespaces, the processes started with
    /// [`Testbed::spawn`], and the web servers, which go on answering as long as this process
    /// runs (they are threads of it). Returns [`Testbed::describe`]. Meant for a testbed with a
    /// [persistent prefix](TestbedBuilder::persistent_prefix), removed later with
    /// [`crate::remove_namespaces_with_prefix`]; a pid-stamped one is swept by the first testbed
    /// built after this process has ended.
    pub fn keep(mut self) -> String {
        for server in self.servers() {
            // One reference that is never dropped: the server thread runs until the process ends.
            std::mem::forget(Arc::clone(&server.http));
        }
        self.guard.armed = false;
        self.describe()
    }

    /// Removes everything now and reports whether it all went.
    pub fn destroy(mut self) -> Result<()> {
        self.stop_servers();
        self.guard.cleanup()
    }

    fn servers(&self) -> impl Iterator<Item = &Server> {
        std::iter::once(&self.server).chain(self.secondaries.iter().map(|s| &s.server))
    }

    fn children(&self) -> std::sync::MutexGuard<'_, Vec<Child>> {
        self.guard
            .children
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn check_own(&self, ns: &str) -> Result<()> {
        if self.guard.namespaces.iter().any(|n| n == ns) {
            Ok(())
        } else {
            Err(Error::Topology(format!(
                "`{ns}` is not a namespace of this testbed (its names start with {})",
                self.prefix
            )))
        }
    }

    /// A human-readable map of the testbed: every namespace with its role, links and
    /// addresses, and commands to look around.
    pub fn describe(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Testbed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.prefix;
        writeln!(f, "kube-egress testbed: network namespaces {p}*")?;
        writeln!(
            f,
            "  primary network {}: bridge {BRIDGE} in {}",
            self.primary_subnet(),
            self.switch
        )?;
        writeln!(
            f,
            "    router {:<w$} {} {}, {} {} (routes no pod CIDR)",
            self.router.netns.name,
            Router::PRIMARY_LINK,
            self.router.primary,
            Router::EXTERNAL_LINK,
            self.router.external,
            w = 24
        )?;
        for n in &self.nodes {
            write!(
                f,
                "    {:<6} {:<w$} {} {}",
                n.name,
                n.netns.name,
                n.primary.link,
                n.primary.address,
                w = 24
            )?;
            for a in &n.secondaries {
                write!(f, ", {} {} ({})", a.link, a.address, a.network)?;
            }
            writeln!(
                f,
                "; pods {} via gateway {}; nft table ip {CNI_MASQ_TABLE} masquerades traffic leaving {}",
                n.pod_cidr, n.pod_gateway, self.cluster_cidr
            )?;
        }
        writeln!(
            f,
            "  external network {}: web server {} {} at {} (logs client addresses)",
            self.router.external.trunc(),
            self.server.netns.name,
            Server::LINK,
            self.server.url()
        )?;
        for s in &self.secondaries {
            writeln!(
                f,
                "  secondary network {} {}: bridge {BRIDGE} in {}; gateway {} {} {}, {} {}; behind it web server {} at {}",
                s.name,
                s.subnet(),
                s.switch,
                s.gateway_netns,
                Secondary::GATEWAY_LINK,
                s.gateway,
                Secondary::GATEWAY_FAR_LINK,
                s.far_gateway,
                s.server.netns,
                s.server.url()
            )?;
        }
        writeln!(f, "  pods (cluster CIDR {}):", self.cluster_cidr)?;
        for pod in &self.pods {
            writeln!(
                f,
                "    {:<24} {:<w$} {} {} on {} (node link {})",
                format!("{}/{}", pod.namespace, pod.name),
                pod.netns.name,
                Pod::LINK,
                pod.ip,
                pod.node,
                pod.node_link,
                w = 24
            )?;
        }
        writeln!(f, "  rp_filter on nodes: {}", self.rp_filter)?;
        writeln!(f, "Look around:")?;
        writeln!(f, "  ip netns list | grep ^{p}")?;
        if let Some(n) = self.nodes.first() {
            let ns = &n.netns.name;
            writeln!(f, "  ip netns exec {ns} ip -br addr")?;
            writeln!(
                f,
                "  ip netns exec {ns} ip route; ip netns exec {ns} ip rule"
            )?;
            writeln!(f, "  ip netns exec {ns} nft list ruleset")?;
        }
        if let Some(pod) = self.pods.first() {
            writeln!(
                f,
                "  ip netns exec {} curl -s {}   # prints the source address the server saw",
                pod.netns.name,
                self.server.url()
            )?;
        }
        writeln!(f, "  ip netns exec {} ip neigh", self.router.netns.name)
    }
}

/// Role suffixes of namespaces that are not nodes or pods.
const SWITCH: &str = "switch";
const ROUTER: &str = "router";
const WEB: &str = "web";

fn build(plan: Plan) -> Result<Testbed> {
    let b = &plan.builder;
    if let Err(e) = netns::sweep_stale() {
        eprintln!("kube-egress-testbed: sweeping stale namespaces: {e}");
    }
    let prefix = match &b.persistent_prefix {
        Some(prefix) => {
            let prefix = format!("{prefix}-");
            let existing: Vec<String> = netns::list_namespaces()?
                .into_iter()
                .filter(|n| n.starts_with(&prefix))
                .collect();
            if !existing.is_empty() {
                return Err(Error::Topology(format!(
                    "namespaces {} already exist; remove them first",
                    existing.join(", ")
                )));
            }
            prefix
        }
        None => format!("ke{}-{}-", std::process::id(), netns::next_testbed_number()),
    };
    let ns = |role: &str| format!("{prefix}{role}");

    // Every namespace, with the sysctls it gets: (name, ip_forward, rp_filter).
    let mut namespaces: Vec<(String, bool, u8)> = vec![
        (ns(SWITCH), false, 0),
        (ns(ROUTER), true, 0),
        (ns(WEB), false, 0),
    ];
    for s in &b.secondaries {
        namespaces.push((ns(&format!("{}-switch", s.name)), false, 0));
        namespaces.push((ns(&format!("{}-gw", s.name)), true, 0));
        namespaces.push((ns(&format!("{}-web", s.name)), false, 0));
    }
    for n in &b.nodes {
        namespaces.push((ns(&n.name), true, b.rp_filter));
    }
    for pod in &b.pods {
        namespaces.push((ns(&pod.name), false, 0));
    }

    let names: Vec<String> = namespaces.iter().map(|(n, _, _)| n.clone()).collect();
    // All or none: a failure here removes the ones already created (and only those).
    netns::create_namespaces(&names)?;
    // From here on, an early return drops `guard`, which deletes the namespaces again.
    let guard = Guard {
        namespaces: names,
        children: Mutex::new(Vec::new()),
        armed: true,
    };

    for (name, forward, rp_filter) in &namespaces {
        set_sysctls(name, *forward, *rp_filter)?;
    }

    let switch = ns(SWITCH);
    let router = ns(ROUTER);
    let web = ns(WEB);
    let bridge =
        format!("link add name {BRIDGE} type bridge stp_state 0 forward_delay 0 mcast_snooping 0");
    let veth = |here: &str, peer: &str, peer_ns: &str| {
        format!("link add name {here} type veth peer name {peer} netns {peer_ns}")
    };
    let up = |link: &str| format!("link set dev {link} up");
    let addr = |net: Ipv4Net, link: &str| format!("address add {net} dev {link}");

    // Phase 1: links. Each veth is created inside one of the namespaces it joins, its peer
    // directly in the other: nothing ever exists in the caller's namespace.
    let mut links: Vec<(String, Vec<String>)> = vec![
        (switch.clone(), vec![bridge.clone()]),
        (
            router.clone(),
            vec![
                veth(Router::PRIMARY_LINK, ROUTER, &switch),
                veth(Router::EXTERNAL_LINK, Server::LINK, &web),
            ],
        ),
    ];
    for s in &b.secondaries {
        let s_switch = ns(&format!("{}-switch", s.name));
        links.push((s_switch.clone(), vec![bridge.clone()]));
        links.push((
            ns(&format!("{}-gw", s.name)),
            vec![
                veth(Secondary::GATEWAY_LINK, "gw", &s_switch),
                veth(
                    Secondary::GATEWAY_FAR_LINK,
                    Server::LINK,
                    &ns(&format!("{}-web", s.name)),
                ),
            ],
        ));
    }
    for n in &b.nodes {
        let mut lines = vec![veth("eth0", &n.name, &switch)];
        for (i, (network, _)) in n.secondary.iter().enumerate() {
            lines.push(veth(
                &format!("eth{}", i + 1),
                &n.name,
                &ns(&format!("{network}-switch")),
            ));
        }
        for pod in b.pods.iter().filter(|p| p.node == n.name) {
            lines.push(veth(&node_link(&pod.name), Pod::LINK, &ns(&pod.name)));
        }
        links.push((ns(&n.name), lines));
    }
    for (name, lines) in &links {
        netns::ip_batch(Some(name), lines)?;
    }

    // Phase 2: addresses, states and routes; the switches first, so that links come up with
    // carrier.
    let mut config: Vec<(String, Vec<String>)> = Vec::new();
    let switch_lines = |ports: &[String]| {
        let mut lines = vec![up("lo"), up(BRIDGE)];
        for port in ports {
            lines.push(format!("link set dev {port} master {BRIDGE}"));
            lines.push(up(port));
        }
        lines
    };
    let mut primary_ports = vec![ROUTER.to_string()];
    primary_ports.extend(b.nodes.iter().map(|n| n.name.clone()));
    config.push((switch.clone(), switch_lines(&primary_ports)));
    for s in &b.secondaries {
        let mut ports = vec!["gw".to_string()];
        ports.extend(
            b.nodes
                .iter()
                .filter(|n| n.secondary.iter().any(|(net, _)| *net == s.name))
                .map(|n| n.name.clone()),
        );
        config.push((ns(&format!("{}-switch", s.name)), switch_lines(&ports)));
    }
    config.push((
        router.clone(),
        vec![
            up("lo"),
            addr(b.primary.router, Router::PRIMARY_LINK),
            up(Router::PRIMARY_LINK),
            addr(b.external.router, Router::EXTERNAL_LINK),
            up(Router::EXTERNAL_LINK),
        ],
    ));
    let server_lines = |ip: Ipv4Addr, net: Ipv4Net| {
        vec![
            up("lo"),
            addr(with_prefix(ip, net), Server::LINK),
            up(Server::LINK),
            format!("route add default via {} dev {}", net.addr(), Server::LINK),
        ]
    };
    config.push((
        web.clone(),
        server_lines(b.external.server, b.external.router),
    ));
    for s in &b.secondaries {
        config.push((
            ns(&format!("{}-gw", s.name)),
            vec![
                up("lo"),
                addr(s.gateway, Secondary::GATEWAY_LINK),
                up(Secondary::GATEWAY_LINK),
                addr(s.far_gateway, Secondary::GATEWAY_FAR_LINK),
                up(Secondary::GATEWAY_FAR_LINK),
            ],
        ));
        config.push((
            ns(&format!("{}-web", s.name)),
            server_lines(s.server, s.far_gateway),
        ));
    }
    for n in &b.nodes {
        let gateway = gateway_of(&n.pod_cidr);
        let mut lines = vec![
            up("lo"),
            addr(with_prefix(n.ip, b.primary.router), "eth0"),
            up("eth0"),
            format!("route add default via {} dev eth0", b.primary.router.addr()),
            // Like a host-gw CNI: no traffic to an unused address of the own block leaves.
            format!("route add unreachable {}", n.pod_cidr),
        ];
        for other in b.nodes.iter().filter(|o| o.name != n.name) {
            lines.push(format!(
                "route add {} via {} dev eth0",
                other.pod_cidr, other.ip
            ));
        }
        for (i, (network, ip)) in n.secondary.iter().enumerate() {
            let link = format!("eth{}", i + 1);
            let s = b
                .secondaries
                .iter()
                .find(|s| s.name == *network)
                .expect("validated: the secondary network exists");
            lines.push(addr(with_prefix(*ip, s.gateway), &link));
            lines.push(up(&link));
            lines.push(format!(
                "route add {} via {} dev {link}",
                s.far_gateway.trunc(),
                s.gateway.addr()
            ));
        }
        for (pod, ip) in b.pods.iter().zip(&plan.pod_ips) {
            if pod.node != n.name {
                continue;
            }
            let link = node_link(&pod.name);
            lines.push(addr(host(gateway), &link));
            lines.push(up(&link));
            lines.push(format!(
                "route add {ip}/32 dev {link} scope link src {gateway}"
            ));
        }
        config.push((ns(&n.name), lines));
    }
    for (pod, ip) in b.pods.iter().zip(&plan.pod_ips) {
        let node = b
            .nodes
            .iter()
            .find(|n| n.name == pod.node)
            .expect("validated: the node exists");
        let gateway = gateway_of(&node.pod_cidr);
        config.push((
            ns(&pod.name),
            vec![
                up("lo"),
                addr(host(*ip), Pod::LINK),
                up(Pod::LINK),
                format!("route add {gateway}/32 dev {} scope link", Pod::LINK),
                format!("route add default via {gateway} dev {}", Pod::LINK),
            ],
        ));
    }
    for (name, lines) in &config {
        netns::ip_batch(Some(name), lines)?;
    }

    // Phase 3: the CNI's masquerade on every node.
    let ruleset = cni_masquerade_ruleset(b.cluster_cidr.trunc());
    for n in &b.nodes {
        netns::exec_with_input(&ns(&n.name), &["nft", "-f", "-"], &ruleset)?;
    }

    // Phase 4: the servers.
    let start_server = |name: String, ip: Ipv4Addr, gateway: Ipv4Addr| -> Result<Server> {
        let http = Arc::new(HttpServer::start(
            &name,
            SocketAddr::from((ip, b.http_port)),
        )?);
        Ok(Server {
            netns: Netns::new(name),
            ip,
            gateway,
            http,
        })
    };
    let server = start_server(web, b.external.server, b.external.router.addr())?;
    let mut secondaries = Vec::new();
    for s in &b.secondaries {
        secondaries.push(Secondary {
            name: s.name.clone(),
            switch: Netns::new(ns(&format!("{}-switch", s.name))),
            gateway_netns: Netns::new(ns(&format!("{}-gw", s.name))),
            gateway: s.gateway,
            far_gateway: s.far_gateway,
            server: start_server(
                ns(&format!("{}-web", s.name)),
                s.server,
                s.far_gateway.addr(),
            )?,
        });
    }

    let nodes = b
        .nodes
        .iter()
        .map(|n| Node {
            name: n.name.clone(),
            netns: Netns::new(ns(&n.name)),
            primary: Attachment {
                network: "primary".into(),
                link: "eth0".into(),
                address: with_prefix(n.ip, b.primary.router),
                switch_netns: switch.clone(),
                switch_port: n.name.clone(),
            },
            secondaries: n
                .secondary
                .iter()
                .enumerate()
                .map(|(i, (network, ip))| {
                    let s = b
                        .secondaries
                        .iter()
                        .find(|s| s.name == *network)
                        .expect("validated: the secondary network exists");
                    Attachment {
                        network: network.clone(),
                        link: format!("eth{}", i + 1),
                        address: with_prefix(*ip, s.gateway),
                        switch_netns: ns(&format!("{network}-switch")),
                        switch_port: n.name.clone(),
                    }
                })
                .collect(),
            pod_cidr: n.pod_cidr,
            pod_gateway: gateway_of(&n.pod_cidr),
        })
        .collect::<Vec<_>>();
    let pods = b
        .pods
        .iter()
        .zip(&plan.pod_ips)
        .map(|(pod, ip)| {
            let node = b
                .nodes
                .iter()
                .find(|n| n.name == pod.node)
                .expect("validated: the node exists");
            Pod {
                name: pod.name.clone(),
                namespace: pod.namespace.clone(),
                node: pod.node.clone(),
                netns: Netns::new(ns(&pod.name)),
                ip: *ip,
                node_link: node_link(&pod.name),
                gateway: gateway_of(&node.pod_cidr),
            }
        })
        .collect();

    let testbed = Testbed {
        server,
        secondaries,
        prefix: prefix.clone(),
        cluster_cidr: b.cluster_cidr.trunc(),
        rp_filter: b.rp_filter,
        switch: Netns::new(switch),
        router: Router {
            netns: Netns::new(router),
            primary: b.primary.router,
            external: b.external.router,
        },
        nodes,
        pods,
        guard,
    };
    Ok(testbed)
}

/// The node-side name of a pod's veth.
fn node_link(pod: &str) -> String {
    format!("v-{pod}")
}

fn with_prefix(ip: Ipv4Addr, net: Ipv4Net) -> Ipv4Net {
    Ipv4Net::new_assert(ip, net.prefix_len())
}

fn host(ip: Ipv4Addr) -> Ipv4Net {
    Ipv4Net::new_assert(ip, 32)
}

/// The CNI imitation: pod traffic to anything outside the cluster CIDR leaves with the node's
/// address, in its own table at the usual source-NAT priority (as flannel or a bridge CNI's
/// `ipMasq` would do it). An egress data plane has to win against this rule.
pub fn cni_masquerade_ruleset(cluster_cidr: Ipv4Net) -> String {
    format!(
        "table ip {CNI_MASQ_TABLE} {{
\tchain postrouting {{
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tip saddr {cluster_cidr} ip daddr != {cluster_cidr} masquerade comment \"pod traffic leaving the cluster\"
\t}}
}}
"
    )
}

/// Explicit values for the sysctls that matter, so nothing depends on what a new namespace
/// inherits from the host.
fn set_sysctls(ns: &str, forward: bool, rp_filter: u8) -> Result<()> {
    let values = [
        ("net/ipv4/ip_forward", if forward { "1" } else { "0" }),
        ("net/ipv4/conf/all/rp_filter", &*rp_filter.to_string()),
        ("net/ipv4/conf/default/rp_filter", &*rp_filter.to_string()),
        // Routing follows the routing tables only, never an ICMP redirect.
        ("net/ipv4/conf/all/accept_redirects", "0"),
        ("net/ipv4/conf/default/accept_redirects", "0"),
        ("net/ipv4/conf/all/arp_ignore", "0"),
        ("net/ipv4/conf/all/arp_announce", "0"),
    ]
    .map(|(k, v)| (k, v.to_string()));
    netns::in_netns(ns, || {
        for (key, value) in &values {
            let path = format!("/proc/sys/{key}");
            std::fs::write(&path, value)
                .map_err(|e| Error::io(format!("write {value} to {path} in namespace {ns}"), e))?;
        }
        Ok(())
    })?
}
