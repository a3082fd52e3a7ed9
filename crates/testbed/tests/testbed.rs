//! The testbed with real packets. Needs root (network namespaces); skipped otherwise.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube_egress_testbed::{
    NodeSpec, PodSpec, Testbed, TestbedBuilder, is_root, list_namespaces, namespace_exists,
    processes_in, remove_namespaces_with_prefix,
};

fn root() -> bool {
    if !is_root() {
        eprintln!(
            "SKIPPED: the testbed tests need root (they create network namespaces); CI runs them as root"
        );
    }
    is_root()
}

fn lab() -> Testbed {
    Testbed::lab().unwrap_or_else(|e| panic!("building the lab testbed: {e}"))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// What the host namespace looks like: links, IPv4 routes of every table, rules, nft.
fn host_snapshot() -> String {
    let run = |args: &[&str]| {
        let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    [
        run(&["ip", "-o", "link", "show"])
            .lines()
            .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join("\n"),
        run(&["ip", "-4", "route", "show", "table", "all"]),
        run(&["ip", "rule", "show"]),
        run(&["nft", "list", "ruleset"]),
    ]
    .join("\n")
}

fn is_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // Reparented to an init that does not reap: a zombie holds nothing.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[test]
fn lab_topology_builds_with_the_documented_addresses_and_leaves_the_host_alone() {
    if !root() {
        return;
    }
    let before = host_snapshot();
    let tb = lab();
    assert_eq!(
        host_snapshot(),
        before,
        "the host namespace changed while building"
    );

    assert_eq!(tb.namespaces().len(), 13, "{:?}", tb.namespaces());
    for ns in tb.namespaces() {
        assert!(ns.starts_with(tb.prefix()), "{ns}");
        assert!(namespace_exists(ns), "{ns} missing");
    }
    assert!(
        tb.prefix()
            .starts_with(&format!("ke{}-", std::process::id()))
    );
    assert_eq!(tb.primary_subnet().to_string(), "192.168.64.0/18");
    assert_eq!(tb.cluster_cidr().to_string(), "10.128.0.0/14");
    assert_eq!(tb.router().primary().to_string(), "192.168.126.1/18");
    assert_eq!(tb.server().ip(), Ipv4Addr::new(203, 0, 113, 10));
    assert_eq!(tb.server().url(), "http://203.0.113.10/");
    let sec = tb.secondary("sec").unwrap();
    assert_eq!(sec.gateway().to_string(), "10.10.0.1/24");
    assert_eq!(sec.server().ip(), Ipv4Addr::new(198, 51, 100, 10));

    let node1 = tb.node("node1").unwrap();
    assert_eq!(node1.ip(), Ipv4Addr::new(192, 168, 126, 2));
    assert_eq!(node1.pod_gateway(), Ipv4Addr::new(10, 128, 0, 1));
    assert_eq!(
        node1.secondary("sec").unwrap().address.to_string(),
        "10.10.0.2/24"
    );
    assert!(tb.node("node2").unwrap().secondaries().is_empty());
    let pods: Vec<(&str, &str, &str, String)> = tb
        .pods()
        .iter()
        .map(|p| (p.name(), p.namespace(), p.node(), p.ip().to_string()))
        .collect();
    assert_eq!(
        pods,
        vec![
            ("pod1", "namespace1", "node1", "10.128.0.10".to_string()),
            ("pod2", "namespace1", "node2", "10.128.2.10".to_string()),
            ("pod3", "namespace2", "node3", "10.128.4.10".to_string()),
            ("pod4", "default", "node2", "10.128.2.11".to_string()),
        ]
    );

    // The kernel state behind the accessors.
    let addrs = node1.exec(&["ip", "-4", "-br", "addr"]).unwrap();
    assert!(addrs.contains("192.168.126.2/18"), "{addrs}");
    assert!(addrs.contains("10.10.0.2/24"), "{addrs}");
    let routes = node1.exec(&["ip", "route"]).unwrap();
    for route in [
        "default via 192.168.126.1 dev eth0",
        "10.128.2.0/23 via 192.168.126.3 dev eth0",
        "10.128.4.0/23 via 192.168.126.4 dev eth0",
        "unreachable 10.128.0.0/23",
        "10.128.0.10 dev v-pod1 scope link src 10.128.0.1",
        "198.51.100.0/24 via 10.10.0.1 dev eth1",
    ] {
        assert!(routes.contains(route), "node1 lacks `{route}`:\n{routes}");
    }
    let nft = node1
        .exec(&["nft", "list", "table", "ip", "cni_masq"])
        .unwrap();
    assert!(nft.contains("priority srcnat"), "{nft}");
    assert!(
        nft.contains("ip saddr 10.128.0.0/14 ip daddr != 10.128.0.0/14 masquerade"),
        "{nft}"
    );
    let router_routes = tb.router().netns().exec(&["ip", "route"]).unwrap();
    assert!(!router_routes.contains("10.128."), "{router_routes}");
    assert!(!router_routes.contains("default"), "{router_routes}");
    let pod_routes = tb.pod("pod2").unwrap().exec(&["ip", "route"]).unwrap();
    assert!(
        pod_routes.contains("default via 10.128.2.1 dev eth0"),
        "{pod_routes}"
    );
    let sysctl = |ns: &kube_egress_testbed::Netns, key: &str| {
        ns.run(|| std::fs::read_to_string(format!("/proc/sys/{key}")).unwrap())
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(sysctl(node1.netns(), "net/ipv4/ip_forward"), "1");
    assert_eq!(sysctl(node1.netns(), "net/ipv4/conf/eth0/rp_filter"), "2");
    assert_eq!(sysctl(tb.router().netns(), "net/ipv4/ip_forward"), "1");
    assert_eq!(
        sysctl(tb.pod("pod1").unwrap().netns(), "net/ipv4/ip_forward"),
        "0"
    );

    let text = tb.describe();
    for needle in [
        tb.node("node3").unwrap().netns().name(),
        "192.168.126.4/18",
        "10.128.2.11",
        "namespace2/pod3",
        "198.51.100.10",
        "ip netns exec",
    ] {
        assert!(text.contains(needle), "describe() lacks {needle}:\n{text}");
    }
}

#[test]
fn pod_traffic_leaving_the_cluster_reaches_the_server_with_the_node_ip() {
    if !root() {
        return;
    }
    let tb = lab();
    let server = tb.server();
    for (pod, node) in [("pod2", "node2"), ("pod4", "node2"), ("pod1", "node1")] {
        server.clear();
        let reply = tb.pod(pod).unwrap().http_get(&server.url()).unwrap();
        let node_ip = IpAddr::from(tb.node(node).unwrap().ip());
        assert_eq!(reply.status, 200);
        assert_eq!(reply.seen_source(), Some(node_ip), "{pod}");
        assert_eq!(server.seen(), vec![node_ip], "{pod}");
        assert_eq!(server.requests()[0].path, "/");
    }
}

#[test]
fn without_the_cni_masquerade_pod_traffic_cannot_come_back() {
    if !root() {
        return;
    }
    let tb = lab();
    let node2 = tb.node("node2").unwrap();
    node2
        .exec(&["nft", "delete", "table", "ip", "cni_masq"])
        .unwrap();
    let err = tb
        .pod("pod2")
        .unwrap()
        .http_get_timeout(&tb.server().url(), Duration::from_millis(300))
        .unwrap_err();
    assert!(err.to_string().contains("connect"), "{err}");
    assert!(tb.server().seen().is_empty());
}

#[test]
fn pod_to_pod_traffic_keeps_the_pod_ip() {
    if !root() {
        return;
    }
    let tb = lab();
    let pod1 = tb.pod("pod1").unwrap();
    let pod2 = tb.pod("pod2").unwrap();
    let pod4 = tb.pod("pod4").unwrap();
    let listener = pod1.serve_http(8080).unwrap();
    // Across nodes (node2 -> node1).
    let reply = pod2.http_get(&format!("{}:8080", pod1.ip())).unwrap();
    assert_eq!(reply.seen_source(), Some(IpAddr::from(pod2.ip())));
    assert_eq!(listener.seen(), vec![IpAddr::from(pod2.ip())]);
    // On one node (pod4 -> pod2, both on node2).
    let listener2 = pod2.serve_http(8081).unwrap();
    pod4.http_get(&format!("http://{}:8081/x", pod2.ip()))
        .unwrap();
    assert_eq!(listener2.seen(), vec![IpAddr::from(pod4.ip())]);
    assert_eq!(listener2.requests()[0].path, "/x");
    // A node reaches a pod on another node with its node IP.
    listener.clear();
    tb.node("node3")
        .unwrap()
        .http_get(&format!("{}:8080", pod1.ip()))
        .unwrap();
    assert_eq!(listener.seen(), vec![ip("192.168.126.4")]);
}

#[test]
fn the_far_server_is_reachable_only_through_the_secondary_gateway() {
    if !root() {
        return;
    }
    let tb = lab();
    let sec = tb.secondary("sec").unwrap();
    let url = sec.server().url();
    for (who, source) in [("node1", "10.10.0.2"), ("node3", "10.10.0.4")] {
        sec.server().clear();
        let reply = tb.node(who).unwrap().http_get(&url).unwrap();
        assert_eq!(reply.seen_source(), Some(ip(source)), "{who}");
        assert_eq!(sec.server().seen(), vec![ip(source)], "{who}");
    }
    // A pod on node1 leaves by the secondary link, masqueraded to node1's address there.
    sec.server().clear();
    tb.pod("pod1").unwrap().http_get(&url).unwrap();
    assert_eq!(sec.server().seen(), vec![ip("10.10.0.2")]);

    // node2 has no link on the secondary network: its default route ends at the router,
    // which has no route there and says so at once.
    sec.server().clear();
    let started = Instant::now();
    let err = tb
        .node("node2")
        .unwrap()
        .http_get_timeout(&url, Duration::from_secs(1))
        .unwrap_err();
    assert!(err.to_string().contains("connect"), "{err}");
    assert!(started.elapsed() < Duration::from_millis(900), "{err}");
    assert!(
        tb.pod("pod2")
            .unwrap()
            .http_get_timeout(&url, Duration::from_millis(500))
            .is_err()
    );
    assert!(sec.server().seen().is_empty());
    // And the primary external server is not on the secondary side.
    assert!(
        sec.gateway_netns()
            .http_get_timeout(&tb.server().url(), Duration::from_millis(300))
            .is_err()
    );
}

#[test]
fn a_node_can_be_cut_off_and_reconnected() {
    if !root() {
        return;
    }
    let tb = lab();
    let pod2 = tb.pod("pod2").unwrap();
    pod2.http_get(&tb.server().url()).unwrap();
    tb.set_node_connected("node2", false).unwrap();
    let link = tb
        .node("node2")
        .unwrap()
        .exec(&["ip", "link", "show", "eth0"])
        .unwrap();
    assert!(link.contains("NO-CARRIER"), "{link}");
    assert!(
        pod2.http_get_timeout(&tb.server().url(), Duration::from_millis(300))
            .is_err()
    );
    tb.set_node_connected("node2", true).unwrap();
    pod2.http_get(&tb.server().url()).unwrap();
    assert!(tb.set_node_connected("node9", false).is_err());
}

#[test]
fn errors_name_the_failing_command_and_its_stderr() {
    if !root() {
        return;
    }
    let tb = lab();
    let ns = tb.node("node1").unwrap().netns().name().to_string();
    let err = tb
        .exec(&ns, &["ip", "link", "show", "dev", "nosuchlink"])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("ip netns exec {ns} ip link show dev nosuchlink")),
        "{err}"
    );
    assert!(err.contains("does not exist"), "{err}");
    let err = tb
        .exec("ke0-0-elsewhere", &["true"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a namespace of this testbed"), "{err}");
    let err = tb
        .pod("pod1")
        .unwrap()
        .http_get("example.com")
        .unwrap_err()
        .to_string();
    assert!(err.contains("bad HTTP target"), "{err}");
}

#[test]
fn dropping_removes_every_namespace_and_process() {
    if !root() {
        return;
    }
    let tb = lab();
    let names = tb.namespaces().to_vec();
    let node1 = tb.node("node1").unwrap().netns().name().to_string();
    let tracked = tb.spawn(&node1, Command::new("sleep").arg("60")).unwrap();
    // A process the testbed did not start itself, living in a pod namespace.
    let stray: u32 = tb
        .pod("pod1")
        .unwrap()
        .exec(&["sh", "-c", "sleep 60 </dev/null >/dev/null 2>&1 & echo $!"])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let living: BTreeSet<u32> = processes_in(&names).into_iter().map(|(p, _)| p).collect();
    assert!(
        living.contains(&tracked) && living.contains(&stray),
        "{living:?}"
    );

    drop(tb);
    for ns in &names {
        assert!(!namespace_exists(ns), "{ns} left behind");
    }
    assert!(is_gone(tracked), "spawned process {tracked} survived");
    assert!(is_gone(stray), "stray process {stray} survived");
}

#[test]
fn a_panicking_test_still_cleans_up() {
    if !root() {
        return;
    }
    let names = Mutex::new(Vec::new());
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let tb = lab();
        *names.lock().unwrap() = tb.namespaces().to_vec();
        tb.pod("pod2")
            .unwrap()
            .http_get(&tb.server().url())
            .unwrap();
        panic!("deliberate panic with a testbed alive");
    }));
    assert!(result.is_err());
    let names = names.into_inner().unwrap();
    assert_eq!(names.len(), 13);
    for ns in &names {
        assert!(!namespace_exists(ns), "{ns} left behind after a panic");
    }
}

#[test]
fn testbeds_built_concurrently_do_not_collide() {
    if !root() {
        return;
    }
    let built: Vec<Testbed> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..3).map(|_| scope.spawn(lab)).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut all = BTreeSet::new();
    for tb in &built {
        for ns in tb.namespaces() {
            assert!(all.insert(ns.clone()), "{ns} used twice");
        }
    }
    // Same addresses everywhere, yet each pod talks to the server of its own testbed only.
    std::thread::scope(|scope| {
        for tb in &built {
            scope.spawn(move || {
                for _ in 0..3 {
                    tb.pod("pod2")
                        .unwrap()
                        .http_get(&tb.server().url())
                        .unwrap();
                }
            });
        }
    });
    for tb in &built {
        assert_eq!(tb.server().seen(), vec![ip("192.168.126.3"); 3]);
    }
}

#[test]
fn namespaces_of_dead_processes_are_swept_and_others_kept() {
    if !root() {
        return;
    }
    let mut finished = Command::new("true").spawn().unwrap();
    let dead_pid = finished.id();
    finished.wait().unwrap();
    let mut alive = Command::new("sleep").arg("30").spawn().unwrap();
    let stale = format!("ke{dead_pid}-0-node1");
    let foreign = format!("ke{}-0-node1", alive.id());
    // Our own pid with a testbed number never handed out: an earlier process with this pid.
    let reused = format!("ke{}-4000000000-node1", std::process::id());
    for ns in [&stale, &foreign, &reused] {
        let status = Command::new("ip")
            .args(["netns", "add", ns])
            .status()
            .unwrap();
        assert!(status.success());
    }

    let tb = TestbedBuilder::new().build().unwrap();
    let stale_gone = !namespace_exists(&stale);
    let reused_gone = !namespace_exists(&reused);
    let foreign_kept = namespace_exists(&foreign);
    drop(tb);
    for ns in [&foreign, &stale, &reused] {
        let _ = Command::new("ip")
            .args(["netns", "delete", ns])
            .stderr(std::process::Stdio::null())
            .status();
    }
    alive.kill().unwrap();
    alive.wait().unwrap();
    assert!(stale_gone, "{stale} was not swept");
    assert!(reused_gone, "{reused} was not swept");
    assert!(
        foreign_kept,
        "{foreign} belongs to a live process and was swept"
    );
}

#[test]
fn a_custom_topology_builds_and_routes() {
    if !root() {
        return;
    }
    let net = |s: &str| s.parse().unwrap();
    let tb = TestbedBuilder::new()
        .cluster_cidr(net("10.244.0.0/16"))
        .node(NodeSpec::new(
            "a",
            Ipv4Addr::new(192, 168, 126, 21),
            net("10.244.1.0/24"),
        ))
        .node(NodeSpec::new(
            "b",
            Ipv4Addr::new(192, 168, 126, 22),
            net("10.244.2.0/24"),
        ))
        .pod(PodSpec::new("a1", "a"))
        .pod(PodSpec::new("b1", "b"))
        .pod(PodSpec::new("b2", "b"))
        .http_port(8080)
        .rp_filter(1)
        .build()
        .unwrap();
    assert_eq!(tb.namespaces().len(), 8);
    assert_eq!(tb.server().url(), "http://203.0.113.10:8080/");
    let b2 = tb.pod("b2").unwrap();
    assert_eq!(b2.ip(), Ipv4Addr::new(10, 244, 2, 11));
    assert_eq!(b2.node_link(), "v-b2");
    let reply = b2.http_get(&tb.server().url()).unwrap();
    assert_eq!(reply.seen_source(), Some(ip("192.168.126.22")));
    let listener = tb.pod("a1").unwrap().serve_http(9000).unwrap();
    b2.http_get("10.244.1.10:9000").unwrap();
    assert_eq!(listener.seen(), vec![ip("10.244.2.11")]);
}

#[test]
fn a_kept_testbed_with_a_persistent_prefix_stays_until_removed_by_prefix() {
    if !root() {
        return;
    }
    let prefix = format!("kept{}", std::process::id());
    let builder = TestbedBuilder::new()
        .node(NodeSpec::new(
            "n1",
            Ipv4Addr::new(192, 168, 126, 2),
            "10.128.0.0/23".parse().unwrap(),
        ))
        .pod(PodSpec::new("p1", "n1"))
        .persistent_prefix(&prefix);
    let tb = builder.clone().build().unwrap();
    let names = tb.namespaces().to_vec();
    assert!(names.iter().all(|n| n.starts_with(&format!("{prefix}-"))));
    assert!(names.contains(&format!("{prefix}-p1")));
    let pid = tb
        .spawn(&format!("{prefix}-n1"), Command::new("sleep").arg("30"))
        .unwrap();
    let url = tb.server().url();
    let pod = format!("{prefix}-p1");

    // A second one with the same prefix is refused, and takes nothing away.
    let err = builder.clone().build().unwrap_err().to_string();
    assert!(err.contains("already exist"), "{err}");

    let text = tb.keep();
    assert!(
        text.contains(&format!("ip netns exec {prefix}-n1")),
        "{text}"
    );
    let kept = names.iter().all(|n| namespace_exists(n));
    let served = kube_egress_testbed::http_get(&pod, &url, Duration::from_secs(2));
    let alive = !is_gone(pid);

    let removed = remove_namespaces_with_prefix(&prefix).unwrap();
    assert!(kept, "kept namespaces disappeared");
    assert_eq!(
        served.unwrap().seen_source(),
        Some(ip("192.168.126.2")),
        "the kept server no longer answers"
    );
    assert!(alive, "the spawned process was stopped by keep()");
    assert_eq!(removed.len(), names.len());
    assert!(
        list_namespaces()
            .unwrap()
            .iter()
            .all(|n| !n.starts_with(&format!("{prefix}-")))
    );
    assert!(
        is_gone(pid),
        "remove_namespaces_with_prefix left {pid} running"
    );
}
