//! The netlink layer against the real kernel, each test inside network namespaces it creates
//! (named `kenl-PID-N`, removed by a guard on every exit path, panics included). Nothing here
//! changes the host's own namespace. Needs root; skipped otherwise.
//!
//! Assertions read the kernel state with iproute2 (`ip -n NS ...`, `bridge -n NS fdb`) rather
//! than with the code under test.

use std::future::Future;
use std::io::Write;
use std::net::{IpAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube_egress_linux::netlink::{
    self, Change, Error, Family, Mac, NeighbourState, Netlink, OWNER_PROTOCOL, Route,
    RouteProtocol, RouteScope, RouteType, Rule, Subscription, VxlanSpec, link_table, sysctl,
};
use kube_egress_linux::netns;

// ---------------------------------------------------------------------------------------------
// Namespaces and commands

const PREFIX: &str = "kenl";
static NETNS_LOCK: Mutex<()> = Mutex::new(());
static COUNTER: AtomicUsize = AtomicUsize::new(0);
static SWEEP: Once = Once::new();

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped: creating network namespaces needs root");
            return;
        }
    };
}

fn lock() -> std::sync::MutexGuard<'static, ()> {
    NETNS_LOCK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Removes namespaces of earlier runs of this suite whose process is gone (killed runs).
fn sweep_stale() {
    SWEEP.call_once(|| {
        let Ok(entries) = std::fs::read_dir(netns::NETNS_DIR) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let mut parts = name.split('-');
            if parts.next() != Some(PREFIX) {
                continue;
            }
            let Some(pid) = parts.next().and_then(|pid| pid.parse::<u32>().ok()) else {
                continue;
            };
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                let _ = Command::new("ip").args(["netns", "del", &name]).status();
            }
        }
    });
}

/// Network namespaces owned by one test; deleted when dropped.
struct Namespaces {
    names: Vec<String>,
}

impl Namespaces {
    fn new(count: usize) -> Namespaces {
        sweep_stale();
        let mut namespaces = Namespaces { names: Vec::new() };
        {
            let _guard = lock();
            for _ in 0..count {
                let name = format!(
                    "{PREFIX}-{}-{}",
                    std::process::id(),
                    COUNTER.fetch_add(1, Ordering::SeqCst)
                );
                run(Command::new("ip").args(["netns", "add", &name]));
                namespaces.names.push(name);
            }
        }
        // IPv6 addresses usable at once (no duplicate address detection), for links created
        // from now on; `lo` up so local addresses answer.
        for name in &namespaces.names {
            netns::run_in(name, || async {
                sysctl::write("net/ipv6/conf/default/accept_dad", "0").unwrap();
                sysctl::write("net/ipv6/conf/all/accept_dad", "0").unwrap();
            })
            .unwrap();
            ip(name, "link set lo up");
        }
        namespaces
    }

    fn get(&self, index: usize) -> &str {
        &self.names[index]
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        let _guard = lock();
        for name in &self.names {
            let status = Command::new("ip").args(["netns", "del", name]).status();
            if !matches!(status, Ok(status) if status.success()) {
                eprintln!("could not delete network namespace {name}: {status:?}");
            }
        }
    }
}

fn run(command: &mut Command) -> String {
    let output = command.output().expect("running a command");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

/// `ip -n NS ARGS...` (arguments split on whitespace); panics on failure.
fn ip(ns: &str, args: &str) -> String {
    run(Command::new("ip")
        .args(["-n", ns])
        .args(args.split_whitespace()))
}

/// `bridge -n NS ARGS...`.
fn bridge(ns: &str, args: &str) -> String {
    run(Command::new("bridge")
        .args(["-n", ns])
        .args(args.split_whitespace()))
}

/// The lines of a command's output, trimmed, without empty ones.
fn lines(text: &str) -> Vec<String> {
    text.lines()
        .map(|line| line.trim().to_string())
        .filter(|line| !line.is_empty())
        .collect()
}

/// A veth pair with both ends in `ns`, both up: `name` and `name` + `p`.
fn veth(ns: &str, name: &str) {
    ip(ns, &format!("link add {name} type veth peer name {name}p"));
    ip(ns, &format!("link set {name} up"));
    ip(ns, &format!("link set {name}p up"));
}

/// Runs `work` with a fresh netlink connection inside `ns`.
fn in_ns<F, Fut, T>(ns: &str, work: F) -> T
where
    F: FnOnce(Netlink) -> Fut + Send,
    Fut: Future<Output = T>,
    T: Send,
{
    netns::run_in(ns, || async {
        work(Netlink::connect().expect("netlink connection")).await
    })
    .expect("entering the namespace")
}

fn link(nl: &Netlink, name: &str) -> impl Future<Output = netlink::Link> {
    let nl = nl.clone();
    let name = name.to_string();
    async move {
        nl.link(&name)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no link {name}"))
    }
}

/// Polls `check` every 10 ms until it holds or `limit` passes; returns whether it held.
fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if check() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn mac_of(ns: &str, link: &str) -> Mac {
    let output = ip(ns, &format!("-j link show {link}"));
    let json: serde_json::Value = serde_json::from_str(&output).unwrap();
    json[0]["address"].as_str().unwrap().parse().unwrap()
}

fn index_of(ns: &str, link: &str) -> u32 {
    let output = ip(ns, &format!("-j link show {link}"));
    let json: serde_json::Value = serde_json::from_str(&output).unwrap();
    json[0]["ifindex"].as_u64().unwrap() as u32
}

/// `IFA_PROTO` of `address` decoded by hand from a raw `RTM_GETADDR` dump in the calling thread's
/// namespace: iproute2 6.1 neither prints nor sets the address protocol, and this check must not
/// depend on the netlink crates under test.
fn raw_address_protocol(address: IpAddr) -> Option<u8> {
    const RTM_NEWADDR: u16 = 20;
    const RTM_GETADDR: u16 = 22;
    const NLMSG_DONE: u16 = 3;
    const NLMSG_ERROR: u16 = 2;
    const IFA_ADDRESS: u16 = 1;
    const IFA_LOCAL: u16 = 2;
    const IFA_PROTO: u16 = 11;
    let wanted: Vec<u8> = match address {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    // SAFETY: plain socket calls on a descriptor we own and close below.
    unsafe {
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        );
        assert!(
            fd >= 0,
            "netlink socket: {}",
            std::io::Error::last_os_error()
        );
        let mut request = Vec::new();
        request.extend_from_slice(&24u32.to_ne_bytes()); // length: header + ifaddrmsg
        request.extend_from_slice(&RTM_GETADDR.to_ne_bytes());
        request.extend_from_slice(&0x301u16.to_ne_bytes()); // NLM_F_REQUEST | NLM_F_DUMP
        request.extend_from_slice(&1u32.to_ne_bytes()); // sequence
        request.extend_from_slice(&0u32.to_ne_bytes()); // port id
        request.extend_from_slice(&[0u8; 8]); // ifaddrmsg: AF_UNSPEC
        assert_eq!(
            libc::send(fd, request.as_ptr().cast(), request.len(), 0),
            request.len() as isize
        );
        let mut found = None;
        let mut buffer = vec![0u8; 1 << 16];
        'receive: loop {
            let received = libc::recv(fd, buffer.as_mut_ptr().cast(), buffer.len(), 0);
            assert!(
                received > 0,
                "netlink recv: {}",
                std::io::Error::last_os_error()
            );
            let mut data = &buffer[..received as usize];
            while data.len() >= 16 {
                let length = u32::from_ne_bytes(data[0..4].try_into().unwrap()) as usize;
                let kind = u16::from_ne_bytes(data[4..6].try_into().unwrap());
                if kind == NLMSG_DONE || kind == NLMSG_ERROR {
                    break 'receive;
                }
                if kind == RTM_NEWADDR {
                    let mut attributes = &data[16 + 8..length];
                    let mut matches = false;
                    let mut protocol = None;
                    while attributes.len() >= 4 {
                        let attribute_length =
                            u16::from_ne_bytes(attributes[0..2].try_into().unwrap()) as usize;
                        let attribute_kind =
                            u16::from_ne_bytes(attributes[2..4].try_into().unwrap());
                        let value = &attributes[4..attribute_length];
                        match attribute_kind {
                            IFA_ADDRESS | IFA_LOCAL if value == wanted.as_slice() => matches = true,
                            IFA_PROTO => protocol = Some(value[0]),
                            _ => {}
                        }
                        let advance = (attribute_length + 3) & !3;
                        attributes = &attributes[advance.min(attributes.len())..];
                    }
                    if matches {
                        found = protocol;
                    }
                }
                data = &data[((length + 3) & !3).min(data.len())..];
            }
        }
        libc::close(fd);
        found
    }
}

// ---------------------------------------------------------------------------------------------
// netns

#[test]
fn netns_runs_work_and_children_inside_the_namespace() {
    require_root!();
    let namespaces = Namespaces::new(1);
    let ns = namespaces.get(0);
    veth(ns, "inside0");

    // A child started from the work inherits the namespace: plain `ip link` (no -n) sees it.
    let seen = netns::run_in(ns, || async {
        let output = tokio::process::Command::new("ip")
            .args(["-o", "link", "show"])
            .output()
            .await
            .unwrap();
        String::from_utf8(output.stdout).unwrap()
    })
    .unwrap();
    assert!(seen.contains("inside0"), "{seen}");

    // /proc/sys/net opened from the work is the namespace's.
    let host_forwarding = sysctl::read("net/ipv4/ip_forward").unwrap();
    let inside = if host_forwarding == "1" { "0" } else { "1" };
    netns::run_in(ns, || async {
        sysctl::write("net/ipv4/ip_forward", inside).unwrap();
    })
    .unwrap();
    assert_eq!(
        run(Command::new("ip").args(["netns", "exec", ns, "cat", "/proc/sys/net/ipv4/ip_forward"]))
            .trim(),
        inside
    );
    assert_eq!(
        sysctl::read("net/ipv4/ip_forward").unwrap(),
        host_forwarding
    );

    // The async flavour, from a runtime of the caller's own.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let name = ns.to_string();
    let links = runtime
        .block_on(netns::run_in_async(&name, || async {
            Netlink::connect().unwrap().links().await.unwrap()
        }))
        .unwrap();
    assert!(links.iter().any(|link| link.name == "inside0"));

    // A panic in the work reaches the caller; a missing namespace is an error naming it.
    let panic = std::panic::catch_unwind(|| netns::run_in(ns, || async { panic!("boom") }));
    assert!(panic.is_err());
    let missing = netns::run_in(&format!("{PREFIX}-none-{}", std::process::id()), || async {
    })
    .unwrap_err();
    assert!(
        missing
            .to_string()
            .starts_with("opening network namespace kenl-none-"),
        "{missing}"
    );
}

// ---------------------------------------------------------------------------------------------
// Links and addresses

#[test]
fn lists_links_and_addresses() {
    require_root!();
    let namespaces = Namespaces::new(1);
    let ns = namespaces.get(0);
    ip(ns, "link add e1 type veth peer name e1p");
    ip(ns, "link set e1 up");
    ip(ns, "addr add 10.1.0.1/24 dev e1");
    ip(ns, "addr add 10.1.0.2/24 dev e1");
    ip(ns, "addr add 2001:db8:1::1/64 dev e1");
    let (e1_mac, e1_index) = (mac_of(ns, "e1"), index_of(ns, "e1"));

    let (links, addresses) = in_ns(ns, |nl| async move {
        (nl.links().await.unwrap(), nl.addresses().await.unwrap())
    });
    let e1 = links.iter().find(|link| link.name == "e1").unwrap();
    assert_eq!(
        (e1.index, e1.up, e1.mac, e1.kind.as_deref()),
        (e1_index, true, Some(e1_mac), Some("veth"))
    );
    let e1p = links.iter().find(|link| link.name == "e1p").unwrap();
    assert!(!e1p.up);
    let lo = links.iter().find(|link| link.name == "lo").unwrap();
    assert_eq!((lo.up, lo.kind.as_deref()), (true, None));

    let find = |net: &str| {
        addresses
            .iter()
            .find(|address| address.net == net.parse().unwrap())
            .unwrap_or_else(|| panic!("no {net} in {addresses:?}"))
    };
    let primary = find("10.1.0.1/24");
    assert_eq!(primary.index, e1_index);
    assert!(!primary.secondary && primary.permanent && !primary.deprecated);
    assert_eq!(primary.label.as_deref(), Some("e1"));
    assert_eq!(primary.scope, netlink::AddressScope::Universe);
    assert!(find("10.1.0.2/24").secondary);
    let v6 = find("2001:db8:1::1/64");
    assert!(v6.permanent && !v6.secondary && v6.label.is_none());
    assert_eq!(find("127.0.0.1/8").scope, netlink::AddressScope::Host);

    // ip says the same about secondary.
    assert!(ip(ns, "addr show dev e1").contains("inet 10.1.0.2/24 scope global secondary e1"));
}

#[test]
fn find_link_for_picks_longest_prefix_and_skips_what_ovnk_skips() {
    require_root!();
    let namespaces = Namespaces::new(1);
    let ns = namespaces.get(0);
    for name in ["e1", "e2", "e3", "e4"] {
        veth(ns, name);
    }
    ip(ns, "addr add 10.2.0.1/16 dev e1");
    ip(ns, "addr add 10.2.3.1/24 dev e2");
    ip(ns, "addr add 10.2.3.40/32 dev e2"); // single host: never a candidate
    ip(ns, "addr add 10.2.3.33/28 dev e3 label e3vip"); // keepalived
    ip(ns, "addr add 10.2.3.34/28 dev e3"); // secondary (same subnet as the primary above)
    ip(ns, "addr add 10.2.3.41/29 dev e4");
    ip(ns, "link set e4 down");
    ip(ns, "addr add 2001:db8:2::1/48 dev e1");
    ip(ns, "addr add 2001:db8:2:3::1/64 dev e2");
    ip(ns, "addr add 2001:db8:2:3::9/64 dev e3 preferred_lft 0"); // deprecated
    assert!(ip(ns, "addr show dev e3").contains("10.2.3.34/28 scope global secondary e3"));
    assert!(ip(ns, "addr show dev e3").contains("deprecated"));

    let pick = |target: &str| -> Option<(String, String)> {
        let target: IpAddr = target.parse().unwrap();
        in_ns(
            ns,
            |nl| async move { nl.find_link_for(target).await.unwrap() },
        )
        .map(|found| (found.link.name, found.prefix.to_string()))
    };
    let some = |link: &str, prefix: &str| Some((link.to_string(), prefix.to_string()));
    assert_eq!(pick("10.2.3.40"), some("e2", "10.2.3.0/24"));
    assert_eq!(pick("10.2.200.1"), some("e1", "10.2.0.0/16"));
    assert_eq!(pick("10.3.0.1"), None);
    assert_eq!(pick("2001:db8:2:3::50"), some("e2", "2001:db8:2:3::/64"));
    assert_eq!(pick("2001:db8:2:4::50"), some("e1", "2001:db8:2::/48"));
    assert_eq!(pick("fe80::1"), None);

    // The down link was the only reason e4's /29 lost: up, it wins.
    ip(ns, "link set e4 up");
    assert_eq!(pick("10.2.3.40"), some("e4", "10.2.3.40/29"));
}

#[test]
fn owned_addresses_are_tagged_and_recognised_after_a_restart() {
    require_root!();
    let namespaces = Namespaces::new(1);
    let ns = namespaces.get(0);
    veth(ns, "e1");
    ip(ns, "addr add 192.0.2.1/24 dev e1");
    ip(ns, "addr add 2001:db8:3::1/64 dev e1");

    let egress4: IpAddr = "192.0.2.10".parse().unwrap();
    let egress6: IpAddr = "2001:db8:3::10".parse().unwrap();
    let (added4, added6, again, raw4, raw6) = in_ns(ns, |nl| async move {
        let e1 = link(&nl, "e1").await;
        let added4 = nl.add_owned_address(&e1, egress4).await.unwrap();
        let added6 = nl.add_owned_address(&e1, egress6).await.unwrap();
        let again = nl.add_owned_address(&e1, egress4).await.unwrap_err();
        (
            added4,
            added6,
            again,
            raw_address_protocol(egress4),
            raw_address_protocol(egress6),
        )
    });
    assert_eq!(added4.net.to_string(), "192.0.2.10/32");
    assert_eq!(added6.net.to_string(), "2001:db8:3::10/128");
    assert!(added4.is_owned() && added6.is_owned());
    assert_eq!(added4.scope, netlink::AddressScope::Universe);
    assert_eq!(again.to_string(), "adding 192.0.2.10/32 to e1: File exists");
    assert!(again.is_exists());
    assert_eq!((raw4, raw6), (Some(OWNER_PROTOCOL), Some(OWNER_PROTOCOL)));
    let shown = ip(ns, "addr show dev e1");
    assert!(
        shown.contains("inet 192.0.2.10/32 scope global e1"),
        "{shown}"
    );
    assert!(
        shown.contains("inet6 2001:db8:3::10/128 scope global nodad"),
        "{shown}"
    );

    // Someone else's /32 on the same link is not ours.
    ip(ns, "addr add 192.0.2.11/32 dev e1");
    // "Restart": a new connection on a new thread, nothing remembered.
    let (owned, refused) = in_ns(ns, |nl| async move {
        let owned = nl.owned_addresses().await.unwrap();
        let foreign = nl
            .addresses()
            .await
            .unwrap()
            .into_iter()
            .find(|a| a.ip() == "192.0.2.11".parse::<IpAddr>().unwrap())
            .unwrap();
        (owned, nl.delete_owned_address(&foreign).await.unwrap_err())
    });
    let mut owned_ips: Vec<String> = owned.iter().map(|a| a.net.to_string()).collect();
    owned_ips.sort();
    assert_eq!(owned_ips, ["192.0.2.10/32", "2001:db8:3::10/128"]);
    assert!(matches!(refused, Error::Refused { .. }), "{refused}");
    assert_eq!(
        refused.to_string(),
        "deleting 192.0.2.11/32 from e1: not ours (address protocol is not 238)"
    );

    in_ns(ns, |nl| async move {
        for address in &owned {
            nl.delete_owned_address(address).await.unwrap();
        }
        let gone = nl.delete_owned_address(&owned[0]).await.unwrap_err();
        assert!(gone.is_not_found(), "{gone}");
        assert_eq!(
            gone.to_string(),
            format!(
                "deleting {} from e1: Cannot assign requested address",
                owned[0].net
            )
        );
    });
    let shown = ip(ns, "addr show dev e1");
    assert!(
        !shown.contains("192.0.2.10") && !shown.contains("2001:db8:3::10"),
        "{shown}"
    );
    assert!(
        shown.contains("192.0.2.11/32") && shown.contains("192.0.2.1/24"),
        "{shown}"
    );
}

// ---------------------------------------------------------------------------------------------
// Gratuitous ARP / unsolicited NA

/// Three namespaces: `B` with bridge `br0` (192.0.2.100/24, 2001:db8:4::100/64) and two "nodes",
/// each with a veth (`n1`, `n2`) into the bridge and 192.0.2.N/24, 2001:db8:4::N/64.
fn two_nodes_on_a_bridge() -> Namespaces {
    let namespaces = Namespaces::new(3);
    let b = namespaces.get(0);
    ip(b, "link add br0 type bridge");
    ip(b, "link set br0 up");
    ip(b, "addr add 192.0.2.100/24 dev br0");
    ip(b, "addr add 2001:db8:4::100/64 dev br0");
    for n in 1..=2 {
        let node = namespaces.get(n);
        ip(
            node,
            &format!("link add n{n} type veth peer name p{n} netns {b}"),
        );
        ip(b, &format!("link set p{n} master br0 up"));
        ip(node, &format!("link set n{n} up"));
        ip(node, &format!("addr add 192.0.2.{n}/24 dev n{n}"));
        ip(node, &format!("addr add 2001:db8:4::{n}/64 dev n{n}"));
    }
    namespaces
}

/// The MAC `B` has for `address` on br0, if any.
fn neighbour_mac(b: &str, address: IpAddr) -> Option<Mac> {
    let shown = ip(b, &format!("neigh show {address} dev br0"));
    let words: Vec<&str> = shown.split_whitespace().collect();
    let at = words.iter().position(|word| *word == "lladdr")?;
    words.get(at + 1)?.parse().ok()
}

fn moves_and_announces(egress: IpAddr) {
    let namespaces = two_nodes_on_a_bridge();
    let (b, node1, node2) = (namespaces.get(0), namespaces.get(1), namespaces.get(2));
    let (mac1, mac2) = (mac_of(node1, "n1"), mac_of(node2, "n2"));

    in_ns(node1, |nl| async move {
        let n1 = link(&nl, "n1").await;
        nl.add_owned_address(&n1, egress).await.unwrap();
    });
    // B talks to the egress IP and so learns node 1's MAC for it.
    netns::run_in(b, || async {
        let socket = UdpSocket::bind(if egress.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        })
        .unwrap();
        socket.send_to(b"hello", (egress, 9)).unwrap();
    })
    .unwrap();
    assert!(
        eventually(Duration::from_secs(3), || neighbour_mac(b, egress)
            == Some(mac1)),
        "B never resolved {egress}: {}",
        ip(b, "neigh show dev br0")
    );

    // The IP moves to node 2. Without an announcement B keeps the old, still fresh entry.
    let owned = in_ns(
        node1,
        |nl| async move { nl.owned_addresses().await.unwrap() },
    );
    in_ns(node1, |nl| async move {
        nl.delete_owned_address(&owned[0]).await.unwrap()
    });
    let n2 = in_ns(node2, |nl| async move {
        let n2 = link(&nl, "n2").await;
        nl.add_owned_address(&n2, egress).await.unwrap();
        n2
    });
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        neighbour_mac(b, egress),
        Some(mac1),
        "B changed its entry before any announcement"
    );

    netns::run_in(node2, || async { netlink::announce(&n2, egress).unwrap() }).unwrap();
    assert!(
        eventually(Duration::from_millis(500), || neighbour_mac(b, egress)
            == Some(mac2)),
        "B still has {:?} for {egress} after the announcement (node 2 is {mac2})",
        neighbour_mac(b, egress)
    );
}

#[test]
fn gratuitous_arp_updates_the_peer_neighbour_entry() {
    require_root!();
    moves_and_announces("192.0.2.50".parse().unwrap());
}

#[test]
fn unsolicited_neighbour_advertisement_updates_the_peer_neighbour_entry() {
    require_root!();
    moves_and_announces("2001:db8:4::50".parse().unwrap());
}

#[test]
fn announcing_needs_an_ethernet_address() {
    require_root!();
    let namespaces = Namespaces::new(1);
    let ns = namespaces.get(0);
    let error = in_ns(ns, |nl| async move {
        let lo = link(&nl, "lo").await;
        netlink::announce(&lo, "127.0.0.1".parse().unwrap()).unwrap_err()
    });
    assert_eq!(
        error.to_string(),
        "sending gratuitous ARP for 127.0.0.1 on lo: lo has no Ethernet address"
    );
}

// ---------------------------------------------------------------------------------------------
// Rules

#[test]
fn fwmark_rules_in_both_families_with_big_tables() {
    require_root!();
    let namespaces = Namespaces::new(1);
    let ns = namespaces.get(0);
    ip(ns, "rule add fwmark 0x1 lookup 100 priority 6001");
    ip(
        ns,
        "-6 rule add from 2001:db8::/32 lookup 200 priority 6000",
    );

    let v4 = Rule::fwmark_lookup(Family::V4, 50_000, 1005, 6000);
    let v6 = Rule::fwmark_lookup(Family::V6, 50_001, 70_000, 6000);
    let (listed, again) = in_ns(ns, |nl| {
        let (v4, v6) = (v4.clone(), v6.clone());
        async move {
            nl.add_rule(&v4).await.unwrap();
            nl.add_rule(&v6).await.unwrap();
            let again = nl.add_rule(&v4).await.unwrap_err();
            (nl.rules_at(6000).await.unwrap(), again)
        }
    });
    assert_eq!(
        again.to_string(),
        "adding rule priority 6000 fwmark 0xc350 lookup 1005: File exists"
    );
    assert!(
        lines(&ip(ns, "rule show"))
            .contains(&"6000:\tfrom all fwmark 0xc350 lookup 1005 proto 238".to_string())
    );
    assert!(
        lines(&ip(ns, "-6 rule show"))
            .contains(&"6000:\tfrom all fwmark 0xc351 lookup 70000 proto 238".to_string())
    );

    // Read back exactly as written (table 70000 comes from FRA_TABLE), plus the foreign IPv6 rule.
    assert!(listed.contains(&v4) && listed.contains(&v6), "{listed:?}");
    assert_eq!(listed.len(), 3, "{listed:?}");
    let foreign = listed.iter().find(|rule| rule.fwmark.is_none()).unwrap();
    assert_eq!((foreign.family, foreign.table), (Family::V6, 200));
    assert_eq!(foreign.src, Some("2001:db8::/32".parse().unwrap()));
    assert!(!foreign.is_owned() && v4.is_owned());

    in_ns(ns, |nl| async move {
        for rule in listed.iter().filter(|rule| rule.is_owned()) {
            nl.delete_rule(rule).await.unwrap();
        }
        assert!(nl.delete_rule(&v4).await.unwrap_err().is_not_found());
    });
    let shown = ip(ns, "rule show") + &ip(ns, "-6 rule show");
    assert!(
        !shown.contains("0xc350") && !shown.contains("0xc351"),
        "{shown}"
    );
    assert!(
        shown.contains("6001:\tfrom all fwmark 0x1 lookup 100"),
        "{shown}"
    );
    assert!(
        shown.contains("6000:\tfrom 2001:db8::/32 lookup 200"),
        "{shown}"
    );
}

// ---------------------------------------------------------------------------------------------
// Routes

fn gateway_route(table: u32, dst: &str, gateway: &str, oif: u32) -> Route {
    Route {
        family: Family::V4,
        table,
        dst: dst.parse().unwrap(),
        gateway: Some(gateway.parse().unwrap()),
        oif: Some(oif),
        src: None,
        metric: 0,
        scope: RouteScope::Universe,
        kind: RouteType::Unicast,
        protocol: RouteProtocol::from(OWNER_PROTOCOL),
        onlink: false,
        nexthops: Vec::new(),
    }
}

#[test]
fn routes_add_replace_delete_and_multipath() {
    require_root!();
    let namespaces = Namespaces::new(1);
    let ns = namespaces.get(0);
    veth(ns, "e1");
    veth(ns, "e2");
    ip(ns, "addr add 192.0.2.1/24 dev e1");
    ip(ns, "addr add 198.51.100.1/24 dev e2");
    let (e1, e2) = (index_of(ns, "e1"), index_of(ns, "e2"));

    let first = gateway_route(1005, "203.0.113.0/24", "192.0.2.254", e1);
    let listed = in_ns(ns, |nl| {
        let first = first.clone();
        async move {
            nl.add_route(&first).await.unwrap();
            nl.routes(Family::V4, 1005).await.unwrap()
        }
    });
    assert_eq!(listed, std::slice::from_ref(&first));
    assert_eq!(
        lines(&ip(ns, "route show table 1005")),
        ["203.0.113.0/24 via 192.0.2.254 dev e1 proto 238"]
    );

    let replaced = gateway_route(1005, "203.0.113.0/24", "192.0.2.253", e1);
    let (exists, listed) = in_ns(ns, |nl| {
        let (first, replaced) = (first.clone(), replaced.clone());
        async move {
            let exists = nl.add_route(&first).await.unwrap_err();
            nl.replace_route(&replaced).await.unwrap();
            (exists, nl.routes(Family::V4, 1005).await.unwrap())
        }
    });
    assert_eq!(
        exists.to_string(),
        "adding route 203.0.113.0/24 via 192.0.2.254 dev e1 table 1005: File exists"
    );
    assert_eq!(listed, std::slice::from_ref(&replaced));
    assert_eq!(
        lines(&ip(ns, "route show table 1005")),
        ["203.0.113.0/24 via 192.0.2.253 dev e1 proto 238"]
    );

    // ECMP default: equal weights, onlink next hops on two links, in a table above 255.
    let ecmp = Route::multipath_default(
        Family::V4,
        50_123,
        &[
            ("10.255.0.1".parse().unwrap(), e1),
            ("10.255.0.2".parse().unwrap(), e2),
        ],
    );
    let listed = in_ns(ns, |nl| {
        let ecmp = ecmp.clone();
        async move {
            nl.add_route(&ecmp).await.unwrap();
            nl.routes(Family::V4, 50_123).await.unwrap()
        }
    });
    assert_eq!(listed, std::slice::from_ref(&ecmp));
    assert_eq!(
        lines(&ip(ns, "route show table 50123")),
        [
            "default proto 238",
            "nexthop via 10.255.0.1 dev e1 weight 1 onlink",
            "nexthop via 10.255.0.2 dev e2 weight 1 onlink"
        ]
    );

    let missing = in_ns(ns, |nl| {
        let (replaced, ecmp, first) = (replaced.clone(), ecmp.clone(), first.clone());
        async move {
            nl.delete_route(&replaced).await.unwrap();
            nl.delete_route(&ecmp).await.unwrap();
            nl.delete_route(&first).await.unwrap_err()
        }
    });
    assert_eq!(
        missing.to_string(),
        "deleting route 203.0.113.0/24 via 192.0.2.254 dev e1 table 1005: No such process"
    );
    assert!(ip(ns, "route show table 1005").trim().is_empty());
    assert!(ip(ns, "route show table 50123").trim().is_empty());
}

#[test]
fn copy_link_routes_copies_gateway_routes_adds_a_default_and_follows_changes() {
    require_root!();
    let namespaces = Namespaces::new(1);
    let ns = namespaces.get(0);
    veth(ns, "e0");
    veth(ns, "e1");
    ip(ns, "addr add 10.0.0.1/24 dev e0");
    ip(ns, "route add default via 10.0.0.254 dev e0");
    ip(ns, "addr add 192.0.2.1/24 dev e1");
    ip(ns, "route add 203.0.113.0/24 via 192.0.2.254 dev e1");
    ip(ns, "-6 addr add 2001:db8:5::1/64 dev e1");
    let table = link_table(index_of(ns, "e1"));
    let show = || lines(&ip(ns, &format!("route show table {table}")));

    let copy = |family: Family| {
        in_ns(ns, move |nl| async move {
            let e1 = link(&nl, "e1").await;
            nl.copy_link_routes(&e1, family, table).await.unwrap()
        })
    };
    let first = copy(Family::V4);
    assert_eq!(
        (first.routes.len(), first.written, first.deleted),
        (3, 3, 0)
    );
    assert_eq!(
        show(),
        [
            "default dev e1 proto 238 scope link",
            "192.0.2.0/24 dev e1 proto 238 scope link",
            "203.0.113.0/24 via 192.0.2.254 dev e1 proto 238",
        ]
    );
    // Already in place: nothing is written.
    let again = copy(Family::V4);
    assert_eq!(
        (again.routes, again.written, again.deleted),
        (first.routes, 0, 0)
    );

    // A default route of the link in main replaces the synthetic one; a changed gateway is
    // followed (replaced in place, so the old route needs no delete).
    ip(ns, "route add default via 192.0.2.254 dev e1 metric 50");
    ip(ns, "route replace 203.0.113.0/24 via 192.0.2.253 dev e1");
    let changed = copy(Family::V4);
    assert_eq!((changed.written, changed.deleted), (2, 1));
    assert_eq!(
        show(),
        [
            "default via 192.0.2.254 dev e1 proto 238 metric 50",
            "192.0.2.0/24 dev e1 proto 238 scope link",
            "203.0.113.0/24 via 192.0.2.253 dev e1 proto 238",
        ]
    );

    // IPv6 goes into the same table, beside IPv4.
    copy(Family::V6);
    let v6 = lines(&ip(ns, &format!("-6 route show table {table}")));
    assert!(
        v6.contains(&"2001:db8:5::/64 dev e1 proto 238 metric 256 pref medium".to_string()),
        "{v6:?}"
    );
    assert!(
        v6.contains(&"default dev e1 proto 238 metric 1024 pref medium".to_string()),
        "{v6:?}"
    );
    assert_eq!(show().len(), 3);
    // IPv6 read-back (metrics 256 and 1024 given by the kernel) matches what was written.
    let again = copy(Family::V6);
    assert_eq!((again.written, again.deleted), (0, 0), "{again:?}");

    // Not into a table that is not ours, and only routes of the table.
    let (refused, stray) = in_ns(ns, |nl| async move {
        let e1 = link(&nl, "e1").await;
        let refused = nl.copy_link_routes(&e1, Family::V4, 254).await.unwrap_err();
        let stray = Route::default_dev(Family::V4, e1.index, 7);
        let stray = nl.sync_table(Family::V4, 8, vec![stray]).await.unwrap_err();
        (refused, stray)
    });
    assert_eq!(
        refused.to_string(),
        "copying the routes of e1 into table 254: not a table of ours"
    );
    assert!(
        stray
            .to_string()
            .starts_with("setting the V4 routes of table 8: route default dev #"),
        "{stray}"
    );
}

// ---------------------------------------------------------------------------------------------
// VXLAN, neighbours, FDB

fn vxlan_spec(vni: u32, mac: &str) -> VxlanSpec {
    VxlanSpec {
        name: "kevx".into(),
        vni,
        local: "192.0.2.1".parse().unwrap(),
        port: 4789,
        mac: mac.parse().unwrap(),
        underlay: None,
        mtu: None,
    }
}

#[test]
fn vxlan_device_is_ensured_read_back_and_deleted() {
    require_root!();
    let namespaces = Namespaces::new(1);
    let ns = namespaces.get(0);
    veth(ns, "e1");
    ip(ns, "addr add 192.0.2.1/24 dev e1");

    let first = in_ns(ns, |nl| async move {
        nl.ensure_vxlan(&vxlan_spec(4242, "0a:58:c0:00:02:01"))
            .await
            .unwrap()
    });
    let shown = ip(ns, "-d link show kevx");
    assert!(
        shown.contains("<BROADCAST,MULTICAST,UP,LOWER_UP>"),
        "{shown}"
    );
    assert!(shown.contains("link/ether 0a:58:c0:00:02:01"), "{shown}");
    assert!(shown.contains("vxlan id 4242 local 192.0.2.1 "), "{shown}");
    assert!(shown.contains("dstport 4789 nolearning"), "{shown}");
    assert_eq!(
        (
            first.vni,
            first.local,
            first.port,
            first.learning,
            first.link.up
        ),
        (4242, Some("192.0.2.1".parse().unwrap()), 4789, false, true)
    );
    assert_eq!(first.link.index, index_of(ns, "kevx"));

    // Same spec: untouched. New MAC: changed in place. New VNI: recreated.
    let (same, new_mac, read) = in_ns(ns, |nl| async move {
        let same = nl
            .ensure_vxlan(&vxlan_spec(4242, "0a:58:c0:00:02:01"))
            .await
            .unwrap();
        let new_mac = nl
            .ensure_vxlan(&vxlan_spec(4242, "0a:58:c0:00:02:02"))
            .await
            .unwrap();
        (same, new_mac, nl.vxlan("kevx").await.unwrap())
    });
    assert_eq!(same, first);
    assert_eq!(new_mac.link.index, first.link.index);
    assert_eq!(read, Some(new_mac));
    assert!(ip(ns, "link show kevx").contains("link/ether 0a:58:c0:00:02:02"));
    ip(ns, "link set kevx down");
    let new_vni = in_ns(ns, |nl| async move {
        nl.ensure_vxlan(&vxlan_spec(4243, "0a:58:c0:00:02:02"))
            .await
            .unwrap()
    });
    assert_eq!((new_vni.vni, new_vni.link.up), (4243, true));
    assert!(ip(ns, "-d link show kevx").contains("vxlan id 4243 "));

    // A foreign link with the name is left alone.
    let (refused, missing) = in_ns(ns, |nl| async move {
        let mut spec = vxlan_spec(1, "0a:58:c0:00:02:02");
        spec.name = "e1".into();
        let refused = nl.ensure_vxlan(&spec).await.unwrap_err();
        let device = nl.vxlan("kevx").await.unwrap().unwrap();
        nl.delete_link(&device.link).await.unwrap();
        (refused, nl.vxlan("kevx").await.unwrap())
    });
    assert_eq!(
        refused.to_string(),
        "reading VXLAN device e1: e1 exists and is not a VXLAN device"
    );
    assert!(ip(ns, "link show e1").contains("e1@e1p"));
    assert_eq!(missing, None);
    assert!(!ip(ns, "link show").contains("kevx"));
}

#[test]
fn permanent_neighbours_and_fdb_entries() {
    require_root!();
    let namespaces = Namespaces::new(1);
    let ns = namespaces.get(0);
    veth(ns, "e1");
    ip(ns, "addr add 192.0.2.1/24 dev e1");
    in_ns(ns, |nl| async move {
        nl.ensure_vxlan(&vxlan_spec(7, "0a:58:c0:00:02:01"))
            .await
            .unwrap()
    });

    let mac1: Mac = "0a:58:c0:00:02:02".parse().unwrap();
    let mac2: Mac = "0a:58:c0:00:02:03".parse().unwrap();
    let peer: IpAddr = "10.244.255.2".parse().unwrap();
    let peer6: IpAddr = "fd00:244::2".parse().unwrap();

    let listed = in_ns(ns, |nl| async move {
        let vx = link(&nl, "kevx").await;
        nl.replace_neighbour(&vx, peer, mac1).await.unwrap();
        nl.replace_neighbour(&vx, peer6, mac1).await.unwrap();
        nl.replace_neighbour(&vx, peer, mac2).await.unwrap(); // replaces
        nl.neighbours(&vx).await.unwrap()
    });
    assert_eq!(
        lines(&ip(ns, "neigh show dev kevx")),
        [
            "10.244.255.2 lladdr 0a:58:c0:00:02:03 PERMANENT proto 238",
            "fd00:244::2 lladdr 0a:58:c0:00:02:02 PERMANENT proto 238"
        ]
    );
    let entry = listed.iter().find(|n| n.ip == peer).unwrap();
    assert_eq!(
        (entry.mac, entry.state, entry.protocol),
        (Some(mac2), NeighbourState::Permanent, Some(OWNER_PROTOCOL))
    );
    assert!(listed.iter().any(|n| n.ip == peer6 && n.mac == Some(mac1)));

    let underlay2: IpAddr = "192.0.2.2".parse().unwrap();
    let underlay3: IpAddr = "192.0.2.3".parse().unwrap();
    let underlay9: IpAddr = "192.0.2.9".parse().unwrap();
    let flood = Mac::default();
    let fdb = in_ns(ns, |nl| async move {
        let vx = link(&nl, "kevx").await;
        nl.delete_neighbour(&vx, peer).await.unwrap();
        nl.delete_neighbour(&vx, peer6).await.unwrap();
        // The flood entry holds several remotes; a unicast MAC holds one.
        nl.append_fdb(&vx, flood, underlay2).await.unwrap();
        nl.append_fdb(&vx, flood, underlay3).await.unwrap();
        nl.replace_fdb(&vx, mac1, underlay2).await.unwrap();
        nl.replace_fdb(&vx, mac1, underlay3).await.unwrap();
        nl.fdb(&vx).await.unwrap()
    });
    assert!(ip(ns, "neigh show dev kevx").trim().is_empty());
    let mut shown = lines(&bridge(ns, "fdb show dev kevx"));
    shown.sort();
    assert_eq!(
        shown,
        [
            "00:00:00:00:00:00 dst 192.0.2.2 self permanent",
            "00:00:00:00:00:00 dst 192.0.2.3 self permanent",
            "0a:58:c0:00:02:02 dst 192.0.2.3 self permanent",
        ]
    );
    let flooded: Vec<_> = fdb.iter().filter(|e| e.mac == flood).collect();
    assert_eq!(flooded.len(), 2, "{fdb:?}");
    assert!(
        flooded
            .iter()
            .all(|e| e.own && e.permanent && e.index == index_of(ns, "kevx"))
    );
    let mut flood_dsts: Vec<_> = flooded.iter().map(|e| e.dst).collect();
    flood_dsts.sort();
    assert_eq!(flood_dsts, [Some(underlay2), Some(underlay3)]);
    let unicast: Vec<_> = fdb
        .iter()
        .filter(|e| e.mac == mac1)
        .map(|e| e.dst)
        .collect();
    assert_eq!(unicast, [Some(underlay3)]);

    let missing = in_ns(ns, |nl| async move {
        let vx = link(&nl, "kevx").await;
        nl.delete_fdb(&vx, flood, underlay2).await.unwrap();
        nl.replace_fdb(&vx, mac1, underlay9).await.unwrap();
        nl.delete_fdb(&vx, mac1, underlay9).await.unwrap();
        nl.delete_fdb(&vx, mac1, underlay9).await.unwrap_err()
    });
    assert!(missing.is_not_found(), "{missing}");
    assert_eq!(
        lines(&bridge(ns, "fdb show dev kevx")),
        ["00:00:00:00:00:00 dst 192.0.2.3 self permanent"]
    );
}

// ---------------------------------------------------------------------------------------------
// Sysctls

#[test]
fn sysctls_are_read_and_written_in_the_namespace() {
    require_root!();
    let namespaces = Namespaces::new(1);
    let ns = namespaces.get(0);
    veth(ns, "e1");
    let host = (
        sysctl::read("net/ipv4/ip_forward").unwrap(),
        sysctl::read("net/ipv4/fib_multipath_hash_policy").unwrap(),
    );
    let read = netns::run_in(ns, || async {
        sysctl::write("net/ipv4/ip_forward", "1").unwrap();
        sysctl::write(&sysctl::conf(Family::V4, "e1", "rp_filter"), "2").unwrap();
        sysctl::write("net/ipv4/fib_multipath_hash_policy", "1").unwrap();
        let error = sysctl::write("net/ipv4/conf/nope0/rp_filter", "1").unwrap_err();
        assert_eq!(
            error.to_string(),
            "writing 1 to net/ipv4/conf/nope0/rp_filter: No such file or directory (os error 2)"
        );
        (
            sysctl::forwarding(Family::V4).unwrap(),
            sysctl::read("net/ipv4/conf/e1/rp_filter").unwrap(),
            sysctl::read("net/ipv4/fib_multipath_hash_policy").unwrap(),
        )
    })
    .unwrap();
    assert_eq!(read, (true, "2".to_string(), "1".to_string()));
    let exec = |key: &str| run(Command::new("ip").args(["netns", "exec", ns, "sysctl", "-n", key]));
    assert_eq!(exec("net.ipv4.ip_forward").trim(), "1");
    assert_eq!(exec("net.ipv4.conf.e1.rp_filter").trim(), "2");
    assert_eq!(exec("net.ipv4.fib_multipath_hash_policy").trim(), "1");
    // The host's values are untouched.
    assert_eq!(
        (
            sysctl::read("net/ipv4/ip_forward").unwrap(),
            sysctl::read("net/ipv4/fib_multipath_hash_policy").unwrap()
        ),
        host
    );
}

// ---------------------------------------------------------------------------------------------
// Change notifications

async fn next_change(
    subscription: &mut Subscription,
    limit: Duration,
    wanted: impl Fn(&Change) -> bool,
) -> Option<Change> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, subscription.next()).await {
            Ok(Some(change)) if wanted(&change) => return Some(change),
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => return None,
        }
    }
}

#[test]
fn subscription_sees_route_link_and_address_changes_within_a_second() {
    require_root!();
    let namespaces = Namespaces::new(1);
    let ns = namespaces.get(0);
    veth(ns, "e1");
    ip(ns, "addr add 192.0.2.1/24 dev e1");
    let e1 = index_of(ns, "e1");
    let target: ipnet::IpNet = "203.0.113.0/24".parse().unwrap();

    netns::run_in(ns, || async {
        let mut subscription = Subscription::new(&[Family::V4, Family::V6]).unwrap();
        let started = Instant::now();
        // A child of this thread: plain `ip` acts in the namespace.
        let status = tokio::process::Command::new("ip")
            .args([
                "route",
                "add",
                "203.0.113.0/24",
                "via",
                "192.0.2.254",
                "dev",
                "e1",
            ])
            .status()
            .await
            .unwrap();
        assert!(status.success());
        let change = next_change(
            &mut subscription,
            Duration::from_secs(1),
            |change| matches!(change, Change::Route(route) if route.dst == target),
        )
        .await
        .expect("no notification of the new route within a second");
        let Change::Route(route) = change else {
            unreachable!()
        };
        assert_eq!(route.gateway, Some("192.0.2.254".parse().unwrap()));
        assert_eq!((route.oif, route.table), (Some(e1), 254));
        assert!(started.elapsed() < Duration::from_secs(1));

        run(Command::new("ip").args(["route", "del", "203.0.113.0/24"]));
        assert!(
            next_change(&mut subscription, Duration::from_secs(1), |change| {
                matches!(change, Change::RouteRemoved(route) if route.dst == target)
            })
            .await
            .is_some()
        );
        run(Command::new("ip").args(["-6", "addr", "add", "2001:db8:6::1/64", "dev", "e1"]));
        assert!(
            next_change(&mut subscription, Duration::from_secs(1), |change| {
                matches!(change, Change::Address(a) if a.net == "2001:db8:6::1/64".parse().unwrap())
            })
            .await
            .is_some()
        );
        run(Command::new("ip").args(["link", "set", "e1", "down"]));
        assert!(
            next_change(&mut subscription, Duration::from_secs(1), |change| {
                matches!(change, Change::Link(link) if link.name == "e1" && !link.up)
            })
            .await
            .is_some()
        );
    })
    .unwrap();
}

#[test]
fn subscription_reports_an_overrun_as_resync() {
    require_root!();
    let namespaces = Namespaces::new(1);
    let ns = namespaces.get(0);
    veth(ns, "e1");
    ip(ns, "addr add 192.0.2.1/24 dev e1");

    netns::run_in(ns, || async {
        // A tiny buffer, and a thread too busy to read while 2000 routes come and go.
        let mut subscription = Subscription::with_receive_buffer(&[Family::V4], 4096).unwrap();
        let mut batch = String::new();
        for i in 0..2000 {
            batch.push_str(&format!(
                "route add 10.{}.{}.0/24 via 192.0.2.254 dev e1\n",
                100 + i / 256,
                i % 256
            ));
        }
        let mut child = Command::new("ip")
            .args(["-batch", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(batch.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success()); // blocks this thread: nobody reads
        let resync = next_change(&mut subscription, Duration::from_secs(2), |change| {
            *change == Change::Resync
        })
        .await;
        assert_eq!(resync, Some(Change::Resync));
        // The subscription goes on after the overrun.
        run(Command::new("ip").args([
            "route",
            "add",
            "203.0.113.0/24",
            "via",
            "192.0.2.254",
            "dev",
            "e1",
        ]));
        let target: ipnet::IpNet = "203.0.113.0/24".parse().unwrap();
        assert!(
            next_change(&mut subscription, Duration::from_secs(2), |change| {
                matches!(change, Change::Route(route) if route.dst == target)
            })
            .await
            .is_some()
        );
    })
    .unwrap();
}

#[test]
fn lookups_of_missing_links_and_invalid_names() {
    require_root!();
    let namespaces = Namespaces::new(1);
    let ns = namespaces.get(0);
    let (by_name, by_index, bad_name) = in_ns(ns, |nl| async move {
        let mut spec = vxlan_spec(1, "0a:58:c0:00:02:01");
        spec.name = "a-name-far-too-long".into();
        (
            nl.link("nope0").await.unwrap(),
            nl.link_by_index(9999).await.unwrap(),
            nl.ensure_vxlan(&spec).await.unwrap_err(),
        )
    });
    assert_eq!((by_name, by_index), (None, None));
    assert_eq!(
        bad_name.to_string(),
        "creating VXLAN device a-name-far-too-long (VNI 1): invalid link name \"a-name-far-too-long\""
    );
}
