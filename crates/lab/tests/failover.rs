//! The lab cluster on the lab testbed with real packets: the engine, the prober (from the router
//! namespace) and one in-process agent per node; pods' requests to the external web server show
//! the source address the server saw.
//!
//! Needs root (network namespaces); every test is skipped with a message otherwise. Failover
//! times are printed (run with `--nocapture`), never asserted beyond the test's time budget.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use std::io::ErrorKind;

use kube_egress_api::{EgressIP, EgressIPStatusItem};
use kube_egress_lab::seed::{SEED_EGRESS_IP, SeedObjects};
use kube_egress_lab::traffic::{Poller, first_success, link_mac, neighbour_mac, recovery};
use kube_egress_lab::{LabCluster, LabEventKind, LabOptions};
use kube_egress_probe::LEGACY_PROBE_PORT;
use kube_egress_probe::legacy::{self, DialResult, LegacyOutcome};
use kube_egress_testbed::{Testbed, is_root};

const PROD_10: &str = "192.168.126.10";
const PROD_102: &str = "192.168.126.102";
/// node2's address: what the server sees from pod2 when no egress IP serves it (CNI masquerade).
const NODE2_IP: &str = "192.168.126.3";
const SETTLE: Duration = Duration::from_secs(5);
/// Requests of the failover poller give up after this: well before TCP's first SYN retransmit
/// (1 s), so a request sent into the cut-off node counts as failed instead of succeeding late.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(300);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn item(node: &str, egress_ip: &str) -> EgressIPStatusItem {
    EgressIPStatusItem {
        node: node.into(),
        egress_ip: egress_ip.into(),
    }
}

struct Lab {
    // Dropped first: the cluster stops before the testbed removes the namespaces.
    cluster: LabCluster,
    tb: Testbed,
    seed: SeedObjects,
}

impl Lab {
    /// `None` (after saying why) when not root.
    fn start(with_seed_egress_ip: bool) -> Option<Lab> {
        if !is_root() {
            eprintln!("SKIPPED: the lab tests need root (they create network namespaces)");
            return None;
        }
        let tb = Testbed::lab().expect("building the lab testbed");
        let seed = SeedObjects::load().expect("the seed manifests");
        let snapshot = seed.snapshot(|e| {
            with_seed_egress_ip && e.metadata.name.as_deref() == Some(SEED_EGRESS_IP)
        });
        let cluster =
            LabCluster::start(&tb, snapshot, LabOptions::default()).expect("starting the lab");
        cluster
            .settle(SETTLE)
            .expect("the initial plans are applied");
        for node in ["node1", "node3"] {
            assert!(
                cluster.reachable(node),
                "{node} is probed reachable at start"
            );
        }
        Some(Lab { cluster, tb, seed })
    }

    fn ns(&self, node: &str) -> String {
        self.tb.node(node).unwrap().netns().name().to_string()
    }

    fn source(&self, pod: &str) -> IpAddr {
        let reply = self
            .tb
            .pod(pod)
            .unwrap()
            .http_get(&self.tb.server().url())
            .unwrap_or_else(|e| panic!("request from {pod}: {e}"));
        reply.seen_source().expect("the server reports the source")
    }

    fn sources(&self, pod: &str, n: usize) -> Vec<IpAddr> {
        (0..n).map(|_| self.source(pod)).collect()
    }

    fn holds(&self, node: &str, egress_ip: &str) -> bool {
        let out = self
            .tb
            .exec(&self.ns(node), &["ip", "-o", "addr", "show", "dev", "eth0"])
            .unwrap();
        out.contains(&format!(" {egress_ip}/32 "))
    }

    fn mac(&self, node: &str) -> String {
        link_mac(&self.ns(node), "eth0")
            .unwrap()
            .expect("eth0 has a MAC")
    }

    fn router_neighbour(&self, egress_ip: &str) -> Option<String> {
        neighbour_mac(self.tb.router().netns().name(), ip(egress_ip)).unwrap()
    }

    /// Polls the status until it equals `want`; panics `within` after `start`. Returns the time
    /// since `start`.
    fn wait_status(
        &self,
        name: &str,
        want: &[EgressIPStatusItem],
        start: Instant,
        within: Duration,
    ) -> Duration {
        loop {
            if self.cluster.status(name).as_deref() == Some(want) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < within,
                "status of {name} is {:?}, not {want:?}, after {within:?}; timeline: {:#?}",
                self.cluster.status(name),
                self.cluster.events()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// When the controller last saw `node` become (un)reachable, after `since`.
    fn transition_after(&self, node: &str, reachable: bool, since: Instant) -> Option<Instant> {
        self.cluster.wait_for(Duration::from_secs(3), |events| {
            events.iter().find_map(|e| match &e.kind {
                LabEventKind::Reachability {
                    node: n,
                    reachable: r,
                    ..
                } if n == node && *r == reachable && e.at >= since => Some(e.at),
                _ => None,
            })
        })
    }

    /// A copy of the seed's object with another name and one egress IP.
    fn single_ip_object(&self, name: &str, egress_ip: &str) -> EgressIP {
        let mut eip = self.seed.egress_ip(SEED_EGRESS_IP).unwrap().clone();
        eip.metadata.name = Some(name.into());
        eip.metadata.creation_timestamp = None;
        eip.spec.egress_ips = vec![egress_ip.into()];
        eip
    }
}

/// (a) pod2 (namespace1, `env: prod`, on node2, which hosts no egress IP) leaves from node2's
/// address, then from the seed's egress IPs once `egressips-prod` is applied at run time (steered
/// over the tunnel to node1 and node3, ECMP), and from node2's address again once it is removed.
#[test]
fn applying_the_seed_egress_ip_gives_pod2_an_egress_source() {
    let Some(lab) = Lab::start(false) else { return };
    assert_eq!(lab.cluster.status(SEED_EGRESS_IP), None);
    assert_eq!(lab.sources("pod2", 3), vec![ip(NODE2_IP); 3]);

    lab.cluster
        .apply_egress_ip(lab.seed.egress_ip(SEED_EGRESS_IP).unwrap());
    lab.cluster.settle(SETTLE).unwrap();
    assert_eq!(
        lab.cluster.status(SEED_EGRESS_IP).unwrap(),
        [item("node1", PROD_10), item("node3", PROD_102)]
    );
    assert!(lab.holds("node1", PROD_10) && lab.holds("node3", PROD_102));
    let seen = lab.sources("pod2", 24);
    assert!(
        seen.iter().all(|s| *s == ip(PROD_10) || *s == ip(PROD_102)),
        "pod2 left from {seen:?}"
    );
    // Both egress nodes carry pod2's flows (L4 hash over two next hops; 24 flows all on one
    // hop would happen with probability 2^-23).
    assert!(
        seen.contains(&ip(PROD_10)) && seen.contains(&ip(PROD_102)),
        "{seen:?}"
    );
    // pod4 (namespace default, not `env: prod`) is not served.
    assert_eq!(lab.source("pod4"), ip(NODE2_IP));

    lab.cluster.remove_egress_ip(SEED_EGRESS_IP);
    lab.cluster.settle(SETTLE).unwrap();
    assert_eq!(lab.cluster.status(SEED_EGRESS_IP), None);
    assert!(!lab.holds("node1", PROD_10) && !lab.holds("node3", PROD_102));
    assert_eq!(lab.sources("pod2", 3), vec![ip(NODE2_IP); 3]);
    let failures = lab.cluster.stop();
    assert!(failures.is_empty(), "{failures:?}");
}

/// (b, c) with the seed's `egressips-prod`: cutting node3 (hosting .102) leaves .102 unassigned —
/// node1, the only other egress-assignable node, already hosts .10 of the same object and OVN-K
/// never puts two IPs of one object on one node — so node2 stops steering pod2 to node3 and every
/// request leaves from .10 through node1. Reconnected, node3 becomes eligible again: .10 stays on
/// node1 and the unassigned .102 is assigned to node3, the only node that may host it.
#[test]
fn cutting_the_node_of_a_seed_egress_ip_sends_pod2_through_the_other() {
    let Some(lab) = Lab::start(true) else { return };
    let before = [item("node1", PROD_10), item("node3", PROD_102)];
    assert_eq!(lab.cluster.status(SEED_EGRESS_IP).unwrap(), before);
    let node1_mac = lab.mac("node1");

    let server = lab.tb.server().url();
    let poller = Poller::start(
        lab.tb.pod("pod2").unwrap().netns().name(),
        &server,
        Duration::from_millis(20),
        REQUEST_TIMEOUT,
    );
    std::thread::sleep(Duration::from_millis(200));
    let cut = Instant::now();
    lab.tb.set_node_connected("node3", false).unwrap();
    // Requests count from when the links are down; times run from the start of the cut.
    let cut_done = Instant::now();
    let moved = lab.wait_status(
        SEED_EGRESS_IP,
        &[item("node1", PROD_10)],
        cut,
        Duration::from_secs(3),
    );
    let detected = lab
        .transition_after("node3", false, cut)
        .expect("node3 reported unreachable");
    // Why: from the router (on the switch, like the controller's host), the cut node's SYNs are
    // lost (or, once the neighbour entry failed, EHOSTUNREACH) — never the ENETUNREACH or RST
    // that the legacy probe counts as alive.
    let node3_ip = [IpAddr::V4(lab.tb.node("node3").unwrap().ip())];
    let outcome = kube_egress_linux::netns::run_in(lab.tb.router().netns().name(), || {
        legacy::probe(&node3_ip, LEGACY_PROBE_PORT, Duration::from_millis(400))
    })
    .unwrap();
    assert!(
        matches!(
            outcome,
            LegacyOutcome::Dead {
                last: DialResult::TimedOut | DialResult::Failed(ErrorKind::HostUnreachable),
                ..
            }
        ),
        "{outcome:?}"
    );
    // Let requests started after the change run to completion.
    std::thread::sleep(Duration::from_millis(2500).saturating_sub(cut.elapsed()));
    let samples = poller.finish();
    let recovered = recovery(&samples, cut_done, |s| s == ip(PROD_10))
        .unwrap_or_else(|| panic!("pod2's requests did not all leave from .10: {samples:#?}"))
        + (cut_done - cut);
    let after_cut = samples.iter().filter(|s| s.started >= cut_done).count();
    println!(
        "seed failover (node3 cut): detected after {:?}, status changed after {moved:?}, \
         pod2's requests all through node1 (.10) after {recovered:?} ({after_cut} requests)",
        detected - cut
    );
    assert!(recovered < Duration::from_secs(3), "{recovered:?}");
    assert!(lab.sources("pod2", 10).iter().all(|s| *s == ip(PROD_10)));
    assert_eq!(lab.router_neighbour(PROD_10), Some(node1_mac));
    // node3 heard nothing while cut off: it still has the address (nobody can reach it there).
    assert!(lab.holds("node3", PROD_102));

    let reconnect = Instant::now();
    lab.tb.set_node_connected("node3", true).unwrap();
    lab.transition_after("node3", true, reconnect)
        .expect("node3 reported reachable again");
    lab.cluster.settle(SETTLE).unwrap();
    std::thread::sleep(Duration::from_secs(2).saturating_sub(reconnect.elapsed()));
    assert_eq!(lab.cluster.status(SEED_EGRESS_IP).unwrap(), before);
    assert!(lab.holds("node1", PROD_10) && lab.holds("node3", PROD_102));
    let seen = lab.sources("pod2", 24);
    assert!(
        seen.contains(&ip(PROD_10)) && seen.contains(&ip(PROD_102)),
        "{seen:?}"
    );
    let failures = lab.cluster.stop();
    assert!(failures.is_empty(), "{failures:?}");
}

/// (b, c) with an EgressIP of one IP (.102, `env: prod`): cutting the node hosting it moves the
/// IP to the other egress-assignable node, whose agent places and announces it (the router's
/// neighbour entry follows at once), and pod2's traffic resumes through it. Reconnected, the old
/// node gets its new plan and drops the IP; nothing moves back.
#[test]
fn a_moved_egress_ip_is_announced_and_does_not_move_back() {
    let Some(lab) = Lab::start(false) else { return };
    let name = "egressip-failover";
    lab.cluster
        .apply_egress_ip(&lab.single_ip_object(name, PROD_102));
    lab.cluster.settle(SETTLE).unwrap();
    let status = lab.cluster.status(name).unwrap();
    assert_eq!(status.len(), 1, "{status:?}");
    let old = status[0].node.clone();
    let new = if old == "node1" { "node3" } else { "node1" }.to_string();
    assert_eq!(lab.sources("pod2", 3), vec![ip(PROD_102); 3]);
    assert!(lab.holds(&old, PROD_102) && !lab.holds(&new, PROD_102));
    assert_eq!(lab.router_neighbour(PROD_102), Some(lab.mac(&old)));

    let poller = Poller::start(
        lab.tb.pod("pod2").unwrap().netns().name(),
        &lab.tb.server().url(),
        Duration::from_millis(20),
        REQUEST_TIMEOUT,
    );
    std::thread::sleep(Duration::from_millis(200));
    let cut = Instant::now();
    lab.tb.set_node_connected(&old, false).unwrap();
    let cut_done = Instant::now();
    let moved = lab.wait_status(name, &[item(&new, PROD_102)], cut, Duration::from_secs(3));
    let detected = lab
        .transition_after(&old, false, cut)
        .expect("reported unreachable");
    lab.cluster.settle(SETTLE).unwrap();
    // The takeover announcement updated the router's entry (no request needed for that).
    assert_eq!(lab.router_neighbour(PROD_102), Some(lab.mac(&new)));
    std::thread::sleep(Duration::from_millis(2500).saturating_sub(cut.elapsed()));
    let samples = poller.finish();
    // The old node is cut off: a request started after the cut succeeds only through the new one.
    let failover = first_success(&samples, cut_done, |s| s == ip(PROD_102))
        .unwrap_or_else(|| panic!("no request from pod2 succeeded after the cut: {samples:#?}"))
        + (cut_done - cut);
    let recovered = recovery(&samples, cut_done, |s| s == ip(PROD_102))
        .unwrap_or_else(|| panic!("pod2's last requests failed: {samples:#?}"))
        + (cut_done - cut);
    // Requests started after the first one through the new node and lost (none expected).
    for late in samples
        .iter()
        .filter(|x| x.started >= cut + failover && x.source.is_err())
    {
        println!(
            "  lost after the takeover: started {:?} after the cut: {:?}",
            late.started - cut,
            late.source
        );
    }
    // Nothing got through between the cut and the takeover: the old node was really gone.
    assert!(
        failover >= detected - cut,
        "{failover:?} < {:?}",
        detected - cut
    );
    println!(
        "failover ({old} cut, {PROD_102} to {new}): detected after {:?}, status changed after \
         {moved:?}, first request through {new} after {failover:?}, all requests after \
         {recovered:?}",
        detected - cut
    );
    assert!(failover < Duration::from_secs(3), "{failover:?}");
    assert!(lab.holds(&new, PROD_102));
    // Cut off, the old node heard nothing yet.
    assert!(lab.holds(&old, PROD_102));

    let reconnect = Instant::now();
    lab.tb.set_node_connected(&old, true).unwrap();
    lab.transition_after(&old, true, reconnect)
        .expect("reported reachable again");
    lab.cluster.settle(SETTLE).unwrap();
    std::thread::sleep(Duration::from_secs(2).saturating_sub(reconnect.elapsed()));
    assert_eq!(lab.cluster.status(name).unwrap(), [item(&new, PROD_102)]);
    assert!(!lab.holds(&old, PROD_102), "{old} still holds {PROD_102}");
    assert!(lab.holds(&new, PROD_102));
    assert_eq!(lab.router_neighbour(PROD_102), Some(lab.mac(&new)));
    assert_eq!(lab.sources("pod2", 5), vec![ip(PROD_102); 5]);
    let failures = lab.cluster.stop();
    assert!(failures.is_empty(), "{failures:?}");
}
