//! The controller against the test API server: what it writes, when, and who writes.

mod common;

use std::time::Duration;

use common::*;
use http::Method;
use kube_egress_engine::Config;
use kube_egress_k8s::controller::{ControllerConfig, NoMetrics, run};
use kube_egress_k8s::fake::{ApiServer, Fault, Recorded};
use kube_egress_k8s::lease::LeaseConfig;
use kube_egress_probe::ReachabilityConfig;
use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

fn config(identity: &str) -> ControllerConfig {
    ControllerConfig {
        engine: Config::default(),
        // Probing disabled: every node is reachable (the probes have their own tests).
        reachability: ReachabilityConfig {
            total_timeout: Duration::ZERO,
            ..ReachabilityConfig::default()
        },
        probe_tls: None,
        lease: LeaseConfig {
            lease_duration: Duration::from_secs(2),
            renew_deadline: Duration::from_millis(1200),
            retry_period: Duration::from_millis(100),
            ..LeaseConfig::new("kube-egress", "kube-egress-controller", identity)
        },
    }
}

struct Replica {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Replica {
    fn start(api: &ApiServer, identity: &str) -> Replica {
        let client = api.client(identity);
        let config = config(identity);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            run(client, config, &NoMetrics, async {
                let _ = stopped.await;
            })
            .await
            .expect("controller");
        });
        Replica {
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().expect("running").send(());
        (&mut self.task).await.expect("controller task");
    }
}

fn egress_ip_patches(api: &ApiServer, client: &str) -> Vec<Recorded> {
    api.requests()
        .into_iter()
        .filter(|r| r.client == client && r.method == "PATCH" && r.path.contains("/egressips/"))
        .collect()
}

fn lease_writes(api: &ApiServer, client: &str) -> usize {
    api.requests()
        .iter()
        .filter(|r| {
            r.client == client
                && (r.method == "PUT" || r.method == "POST")
                && r.path.contains("/leases")
        })
        .count()
}

fn eip_status(api: &ApiServer, name: &str) -> Vec<(String, String)> {
    api.get("k8s.ovn.org/v1", "EgressIP", "", name)
        .map(|o| status_of(&o))
        .unwrap_or_default()
}

fn cluster(api: &ApiServer) {
    api.put(node("n1", "10.0.0.1/24", true));
    api.put(node("n2", "10.0.0.2/24", true));
    api.put(node("n3", "10.0.0.3/24", false));
    api.put(namespace("prod", json!({ "env": "prod" })));
    api.put(pod("prod", "web", "n3", "10.128.7.5"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_writes_status_mark_and_events_exactly() {
    let api = ApiServer::new();
    cluster(&api);
    // The older object gets the first mark.
    let mut e1 = egress_ip("e1", &["10.0.0.100", "10.0.0.101"]);
    e1["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
    let rv = api.put(e1);
    let mut bad = egress_ip("bad", &["not-an-ip", "10.0.0.1"]);
    bad["metadata"]["creationTimestamp"] = json!("2026-01-02T00:00:00Z");
    // Selecting no pod, so that its only Events are about its IPs.
    bad["spec"]["namespaceSelector"] = json!({ "matchLabels": { "env": "staging" } });
    api.put(bad);

    let a = Replica::start(&api, "a");
    eventually("e1's status", || eip_status(&api, "e1").len() == 2).await;

    // One merge patch of the object (no status subresource), guarded by its resourceVersion,
    // replacing status.items and adding the mark.
    let patches = egress_ip_patches(&api, "a");
    let e1: Vec<&Recorded> = patches.iter().filter(|r| r.path.ends_with("/e1")).collect();
    assert_eq!(e1.len(), 1, "{e1:?}");
    assert_eq!(e1[0].path, "/apis/k8s.ovn.org/v1/egressips/e1");
    assert_eq!(
        e1[0].content_type.as_deref(),
        Some("application/merge-patch+json")
    );
    assert_eq!(
        e1[0].body,
        Some(json!({
            "metadata": {
                "resourceVersion": rv.to_string(),
                "annotations": { "k8s.ovn.org/egressip-mark": "50000" }
            },
            "status": { "items": [
                { "node": "n1", "egressIP": "10.0.0.100" },
                { "node": "n2", "egressIP": "10.0.0.101" }
            ] }
        }))
    );
    let stored = api.get("k8s.ovn.org/v1", "EgressIP", "", "e1").unwrap();
    assert_eq!(
        stored["metadata"]["annotations"]["k8s.ovn.org/egressip-mark"],
        "50000"
    );
    assert_eq!(
        stored["spec"]["egressIPs"],
        json!(["10.0.0.100", "10.0.0.101"])
    );

    // Events for the bad object: events.k8s.io/v1 in "default", naming it, with OVN-K's reasons.
    eventually("two Events", || {
        api.list("events.k8s.io/v1", "Event").len() >= 2
    })
    .await;
    let bad_uid =
        api.get("k8s.ovn.org/v1", "EgressIP", "", "bad").unwrap()["metadata"]["uid"].clone();
    let posts: Vec<Recorded> = api
        .requests()
        .into_iter()
        .filter(|r| {
            r.method == "POST" && r.path == "/apis/events.k8s.io/v1/namespaces/default/events"
        })
        .collect();
    let mut reasons: Vec<String> = Vec::new();
    for post in &posts {
        let body = post.body.as_ref().unwrap();
        assert_eq!(body["reportingController"], "kube-egress-controller");
        assert_eq!(body["reportingInstance"], "a");
        assert_eq!(body["type"], "Warning");
        assert_eq!(
            body["regarding"],
            json!({ "apiVersion": "k8s.ovn.org/v1", "kind": "EgressIP", "name": "bad", "uid": bad_uid })
        );
        reasons.push(body["reason"].as_str().unwrap().to_string());
    }
    reasons.sort();
    assert_eq!(reasons, ["EgressIPConflict", "InvalidEgressIP"]);
    let invalid = posts
        .iter()
        .find(|p| p.body.as_ref().unwrap()["reason"] == "InvalidEgressIP")
        .unwrap();
    assert_eq!(
        invalid.body.as_ref().unwrap()["note"],
        "egress IP: not-an-ip for object EgressIP: bad is not a valid IP address"
    );

    // The Lease: created with our identity, then renewed.
    let lease = api
        .get(
            "coordination.k8s.io/v1",
            "Lease",
            "kube-egress",
            "kube-egress-controller",
        )
        .unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "a");
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 2);
    eventually("renewals", || lease_writes(&api, "a") >= 3).await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_lease_holder_writes_and_a_lost_lease_stops_writes() {
    let api = ApiServer::new();
    cluster(&api);
    api.put(egress_ip("e1", &["10.0.0.100"]));
    let a = Replica::start(&api, "a");
    eventually("e1 assigned by a", || {
        eip_status(&api, "e1") == pairs(&[("n1", "10.0.0.100")])
    })
    .await;

    let b = Replica::start(&api, "b");
    // b follows the Lease for a while (a keeps renewing) and writes nothing.
    eventually("b tried the Lease", || {
        api.requests()
            .iter()
            .filter(|r| r.client == "b" && r.method == "GET" && r.path.contains("/leases/"))
            .count()
            >= 10
    })
    .await;
    // A change while a leads: a moves the IP, b stays silent.
    api.put(node("n1", "10.0.0.1/24", false));
    eventually("e1 moved to n2", || {
        eip_status(&api, "e1") == pairs(&[("n2", "10.0.0.100")])
    })
    .await;
    assert!(egress_ip_patches(&api, "b").is_empty());
    assert_eq!(
        api.get(
            "coordination.k8s.io/v1",
            "Lease",
            "kube-egress",
            "kube-egress-controller"
        )
        .unwrap()["spec"]["holderIdentity"],
        "a"
    );

    // a can no longer renew: it steps down after its renew deadline, b takes over after the
    // lease duration, and only b writes from then on.
    api.fail(Fault {
        method: Method::PUT,
        path: "/leases/".into(),
        client: Some("a".into()),
        code: 500,
        times: usize::MAX,
    });
    let cut = api.requests().len();
    eventually("b holds the Lease", || {
        api.get(
            "coordination.k8s.io/v1",
            "Lease",
            "kube-egress",
            "kube-egress-controller",
        )
        .unwrap()["spec"]["holderIdentity"]
            == "b"
    })
    .await;
    let lease = api
        .get(
            "coordination.k8s.io/v1",
            "Lease",
            "kube-egress",
            "kube-egress-controller",
        )
        .unwrap();
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
    api.put(node("n2", "10.0.0.2/24", false));
    api.put(node("n1", "10.0.0.1/24", true));
    eventually("e1 moved back to n1 by b", || {
        eip_status(&api, "e1") == pairs(&[("n1", "10.0.0.100")])
    })
    .await;
    let after: Vec<Recorded> = api.requests()[cut..]
        .iter()
        .filter(|r| r.method == "PATCH" && r.path.contains("/egressips/"))
        .cloned()
        .collect();
    assert!(!after.is_empty());
    assert!(after.iter().all(|r| r.client == "b"), "{after:?}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_rereads_and_patches_again() {
    let api = ApiServer::new();
    cluster(&api);
    api.put(egress_ip("e1", &["10.0.0.100"]));
    api.fail(Fault {
        method: Method::PATCH,
        path: "/egressips/e1".into(),
        client: None,
        code: 409,
        times: 1,
    });
    let a = Replica::start(&api, "a");
    eventually("e1 assigned", || {
        eip_status(&api, "e1") == pairs(&[("n1", "10.0.0.100")])
    })
    .await;
    let calls: Vec<String> = api
        .requests()
        .iter()
        .filter(|r| r.path == "/apis/k8s.ovn.org/v1/egressips/e1")
        .map(|r| r.method.clone())
        .collect();
    assert_eq!(calls, ["PATCH", "GET", "PATCH"]);
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_controller_keeps_every_valid_assignment() {
    let api = ApiServer::new();
    cluster(&api);
    // Written by an earlier controller: e1 on n2 although a fresh assignment would pick n1
    // (least loaded, then by name); e2's 10.0.0.200 is on n1.
    api.put(with_status(
        egress_ip("e1", &["10.0.0.100"]),
        &[("n2", "10.0.0.100")],
        50000,
    ));
    api.put(with_status(
        egress_ip("e2", &["10.0.0.200"]),
        &[("n1", "10.0.0.200")],
        50001,
    ));
    // Written last in name order: once it is assigned, the new leader has checked e1 and e2.
    api.put(egress_ip("zz-last", &["10.0.0.250"]));

    let a = Replica::start(&api, "a");
    eventually("zz-last assigned", || {
        eip_status(&api, "zz-last").len() == 1
    })
    .await;
    a.stop().await;
    let a2 = Replica::start(&api, "a2");
    api.put(egress_ip("zz-later", &["10.0.0.251"]));
    eventually("zz-later assigned", || {
        eip_status(&api, "zz-later").len() == 1
    })
    .await;
    a2.stop().await;

    let moved: Vec<Recorded> = api
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH" && (r.path.ends_with("/e1") || r.path.ends_with("/e2")))
        .collect();
    assert!(moved.is_empty(), "{moved:?}");
    assert_eq!(eip_status(&api, "e1"), pairs(&[("n2", "10.0.0.100")]));
    assert_eq!(eip_status(&api, "e2"), pairs(&[("n1", "10.0.0.200")]));
    // The second replica waited for the first one's Lease to expire, then took it.
    assert_eq!(
        api.get(
            "coordination.k8s.io/v1",
            "Lease",
            "kube-egress",
            "kube-egress-controller"
        )
        .unwrap()["spec"]["holderIdentity"],
        "a2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_status_or_removed_mark_is_restored() {
    let api = ApiServer::new();
    cluster(&api);
    api.put(egress_ip("e1", &["10.0.0.100"]));
    let a = Replica::start(&api, "a");
    eventually("e1 assigned", || {
        eip_status(&api, "e1") == pairs(&[("n1", "10.0.0.100")])
    })
    .await;
    // A user rewrites the object without status and mark (as `kubectl replace` from a file).
    api.put(egress_ip("e1", &["10.0.0.100"]));
    eventually("status and mark restored", || {
        let e1 = api.get("k8s.ovn.org/v1", "EgressIP", "", "e1").unwrap();
        status_of(&e1) == pairs(&[("n1", "10.0.0.100")])
            && e1["metadata"]["annotations"]["k8s.ovn.org/egressip-mark"] == "50000"
    })
    .await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cordoned_nodes_lose_their_ips_when_configured() {
    let api = ApiServer::new();
    cluster(&api);
    api.put(egress_ip("e1", &["10.0.0.100"]));
    let mut config = config("a");
    config.engine.cordoned_nodes_ineligible = true;
    let client = api.client("a");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        run(client, config, &NoMetrics, async {
            let _ = stopped.await;
        })
        .await
        .expect("controller");
    });
    eventually("e1 on n1", || {
        eip_status(&api, "e1") == pairs(&[("n1", "10.0.0.100")])
    })
    .await;
    // kubectl cordon n1
    let mut n1 = node("n1", "10.0.0.1/24", true);
    n1["spec"]["unschedulable"] = json!(true);
    api.put(n1);
    eventually("e1 moved to n2", || {
        eip_status(&api, "e1") == pairs(&[("n2", "10.0.0.100")])
    })
    .await;
    let _ = stop.send(());
    task.await.unwrap();
}

/// Counts the metric hooks.
#[derive(Default)]
struct Counting {
    assigned: std::sync::atomic::AtomicUsize,
    unassigned: std::sync::atomic::AtomicUsize,
    rebalanced: std::sync::atomic::AtomicUsize,
    egress_ips: std::sync::atomic::AtomicUsize,
}

impl kube_egress_k8s::controller::Observer for Counting {
    fn egress_ips(&self, assigned: usize) {
        self.egress_ips
            .store(assigned, std::sync::atomic::Ordering::SeqCst);
    }
    fn rebalance(&self) {
        self.rebalanced
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
    fn assigned(&self, _latency: Duration) {
        self.assigned
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
    fn unassigned(&self, _latency: Duration) {
        self.unassigned
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metric_hooks_follow_the_status_writes() {
    use std::sync::atomic::Ordering::SeqCst;
    let api = ApiServer::new();
    cluster(&api);
    api.put(egress_ip("e1", &["10.0.0.100", "10.0.0.101"]));
    let counting = std::sync::Arc::new(Counting::default());
    let observer = counting.clone();
    let client = api.client("a");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        run(client, config("a"), &*observer, async {
            let _ = stopped.await;
        })
        .await
        .expect("controller");
    });
    eventually("both assigned", || {
        counting.assigned.load(SeqCst) == 2 && counting.egress_ips.load(SeqCst) == 2
    })
    .await;
    // n1 loses its label: its IP cannot move (n2 already holds e1's other IP), so it is removed.
    api.put(node("n1", "10.0.0.1/24", false));
    eventually("one unassigned", || {
        counting.unassigned.load(SeqCst) == 1 && counting.egress_ips.load(SeqCst) == 1
    })
    .await;
    // n1 is labelled again and gets the IP back; then n2 goes and its IP moves to the new n4.
    api.put(node("n1", "10.0.0.1/24", true));
    eventually("assigned again", || counting.assigned.load(SeqCst) == 3).await;
    api.put(node("n4", "10.0.0.4/24", true));
    api.delete("v1", "Node", "", "n2");
    eventually("moved", || counting.rebalanced.load(SeqCst) == 1).await;
    assert_eq!(counting.egress_ips.load(SeqCst), 2);
    assert_eq!(counting.unassigned.load(SeqCst), 1);
    let _ = stop.send(());
    task.await.unwrap();
}
