//! The lab's scenario, as `kube-egress lab` runs it: the seed 002 walkthrough on the seed 003
//! cluster, the seed 000 case, and measured failovers — every claim checked with real packets.
//!
//! 1. **Build** the lab testbed (three nodes, node1 and node3 egress-assignable; pods pod1..pod3
//!    in the `env: prod` namespaces `namespace1`/`namespace2`, pod4 in `default`; a secondary
//!    network on node1/node3 whose gateway leads to 198.51.100.0/24; a router; the web server
//!    203.0.113.10) and start the cluster ([`LabCluster`]) with no EgressIP.
//! 2. **Before**: every pod's request; the server sees the pod's node address (CNI masquerade).
//! 3. **After**: the seed's `egressips-prod` is applied; its `status.items`; every `env: prod` pod
//!    leaves with one of its egress IPs (pods on node2 through both egress nodes, ECMP), pod4
//!    still with its node address.
//! 4. **Seed 000**: `egressip-reports` (10.10.0.100 on the secondary network) serves pod4; the
//!    server behind the secondary network's gateway, unreachable before, sees 10.10.0.100, and
//!    the egress node's per-link route table holds the gateway route (the seed 000 bug).
//! 5. **Failover**: `egressips-prod` holds two IPs and the lab has exactly two egress-assignable
//!    nodes; OVN-K never puts two IPs of one object on one node, so cutting one of them leaves its
//!    IP unassigned rather than moved. To show an IP moving, the scenario replaces the object by
//!    `egressip-failover` (one IP, 192.168.126.102, same selector). Each sample cuts the node
//!    holding it (its links go down at the switch: no flag anywhere), measures the time to the
//!    first request from pod2 that succeeds through the new egress node, checks that only the cut
//!    node's IPs moved and that the router's neighbour entry already points at the new node (the
//!    takeover announcement), reconnects the node and checks nothing moves back and the old node
//!    dropped the IP. The next sample cuts the new holder.
//!
//! The scenario stops at the next step boundary when asked to ([`Scenario::run`]'s
//! `interrupted`), and everything is removed when the [`Scenario`] is dropped — unless it is
//! [kept](Scenario::keep).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use kube_egress_api::{EgressIP, EgressIPStatusItem};
use kube_egress_probe::{ProbeMode, ProbeSettings};
use kube_egress_testbed::{Testbed, TestbedBuilder};
use serde::Serialize;

use crate::seed::{SEED_EGRESS_IP, SeedObjects};
use crate::traffic::{Poller, first_success, link_mac, neighbour_mac, recovery};
use crate::{LabCluster, LabError, LabEventKind, LabOptions};

/// The namespace prefix of a kept lab (`kube-egress lab --keep`); `kube-egress lab down` removes
/// the namespaces carrying it.
pub const KEPT_PREFIX: &str = "kelab";
/// The seed 000 EgressIP of the example cluster (secondary network, serves `default/pod4`).
pub const SECONDARY_EGRESS_IP: &str = "egressip-reports";
/// The one-IP object the failover samples move around.
pub const FAILOVER_EGRESS_IP: &str = "egressip-failover";
/// The IP of [`FAILOVER_EGRESS_IP`].
pub const FAILOVER_IP: &str = "192.168.126.102";
/// The failover target of the project (p99 with default settings).
pub const FAILOVER_TARGET: Duration = Duration::from_secs(1);

/// How long plans may take to be applied before a step fails.
pub(crate) const SETTLE: Duration = Duration::from_secs(5);
/// A failover sample fails when no request succeeds through the new node within this, on top of
/// the probing's worst-case detection time.
const FAILOVER_MARGIN: Duration = Duration::from_secs(3);
/// The period of the failover poller: the resolution of the measurement.
pub(crate) const POLL_PERIOD: Duration = Duration::from_millis(10);
/// Requests of the failover poller give up after this: well before TCP's first SYN retransmit
/// (1 s), so a request sent into the cut-off node counts as failed instead of succeeding late.
pub(crate) const POLL_REQUEST_TIMEOUT: Duration = Duration::from_millis(300);
/// Requests per pod after the EgressIP is applied: with two egress nodes, all of pod2's flows
/// on one hop happens with probability 2^-15.
pub(crate) const AFTER_REQUESTS: usize = 16;

/// What the scenario runs with.
#[derive(Clone, Debug)]
pub struct ScenarioOptions {
    /// Failover repetitions (0 skips the failover step).
    pub failover_samples: usize,
    /// The controller's probing.
    pub probe: ProbeSettings,
    /// Name the namespaces `<prefix>-<role>` (normally [`KEPT_PREFIX`]) so they can outlive the
    /// process; `None`: pid-stamped names, swept once the process is gone.
    pub keep_prefix: Option<String>,
}

/// One verdict of the scenario.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

/// The seed 000 step.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SecondaryReport {
    pub egress_ip: String,
    pub node: Option<String>,
    /// The server behind the secondary network's gateway.
    pub server: String,
    /// What pod4's request to it did before the EgressIP existed.
    pub before: String,
    /// The source addresses that server saw from pod4 afterwards.
    pub seen: Vec<String>,
    /// The per-link route table on the egress node.
    pub table: Option<u32>,
    pub routes: Vec<String>,
}

/// One failover sample; times from the moment the node's links were cut.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FailoverSample {
    pub cut: String,
    pub to: Option<String>,
    /// The controller saw the node unreachable.
    pub detected_ms: Option<f64>,
    /// `status.items` named the new node (its plan was pushed).
    pub moved_ms: Option<f64>,
    /// The new egress node's agent had applied its plan (IP placed and announced).
    pub egress_node_applied_ms: Option<f64>,
    /// The agent of pod2's node had applied its plan (steering to the new node).
    pub pod_node_applied_ms: Option<f64>,
    /// OVN data plane: the controller's Northbound transaction moving the IP had completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub northbound_ms: Option<f64>,
    /// The first request from pod2 that succeeded through the new node ended.
    pub first_request_ms: Option<f64>,
    /// From then on every request succeeded.
    pub recovered_ms: Option<f64>,
    /// Requests started after the cut.
    pub requests: usize,
    /// Egress IPs that moved off the cut node (the failover IP and any other it held).
    pub moved_ips: usize,
}

/// The failover step.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct FailoverReport {
    /// The egress IP the samples move.
    pub ip: String,
    /// Samples taken.
    pub samples: usize,
    /// Percentiles (nearest rank) of `first_request_ms` over the samples that recovered.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    pub target_ms: f64,
    /// How the controller probed (e.g. "legacy TCP port 9, every 200 ms, deadline 400 ms").
    pub probe: String,
    pub runs: Vec<FailoverSample>,
}

impl FailoverReport {
    /// The report of the samples `runs` moving `ip`, probed as `probe` says.
    pub(crate) fn from_runs(ip: &str, probe: String, runs: Vec<FailoverSample>) -> FailoverReport {
        let mut times: Vec<f64> = runs.iter().filter_map(|r| r.first_request_ms).collect();
        times.sort_by(f64::total_cmp);
        FailoverReport {
            ip: ip.into(),
            samples: runs.len(),
            p50_ms: percentile(&times, 50.0),
            p99_ms: percentile(&times, 99.0),
            max_ms: times.last().copied(),
            target_ms: FAILOVER_TARGET.as_secs_f64() * 1000.0,
            probe,
            runs,
        }
    }
}

/// Everything the scenario observed.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LabReport {
    /// The data plane the lab ran: `linux` or `ovn`.
    pub dataplane: String,
    /// What the reader should know about how this lab differs from the seed's cluster.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    pub checks: Vec<Check>,
    /// Pod (`namespace/name`) → the source the server saw before the EgressIP existed.
    pub before: BTreeMap<String, String>,
    /// Pod → the source of its first request after `egressips-prod` was applied.
    pub after: BTreeMap<String, String>,
    /// Pod → every distinct source over its requests after `egressips-prod` was applied.
    pub after_seen: BTreeMap<String, Vec<String>>,
    /// EgressIP name → `status.items`, as the controller computed them after the seed's objects
    /// were applied.
    pub status_items: BTreeMap<String, Vec<EgressIPStatusItem>>,
    pub secondary: SecondaryReport,
    pub failover: FailoverReport,
    /// The controller's metrics at the end (OpenMetrics text, as `/metrics` serves it).
    pub metrics: String,
}

impl LabReport {
    pub fn passed(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.passed)
    }
}

/// Why the scenario stopped before its end.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("interrupted")]
    Interrupted,
    #[error("building the testbed: {0}")]
    Testbed(#[from] kube_egress_testbed::Error),
    #[error("the OVN cluster: {0}")]
    Ovn(#[from] kube_egress_ovn_testbed::Error),
    #[error(transparent)]
    Lab(#[from] LabError),
}

/// A built lab: the testbed and the running cluster.
pub struct Scenario {
    // Field order is drop order: the cluster stops before the testbed removes the namespaces.
    cluster: LabCluster,
    seed: SeedObjects,
    options: ScenarioOptions,
    testbed: Testbed,
}

impl Scenario {
    /// Builds the testbed and starts the cluster with no EgressIP; returns once every agent
    /// applied its first plan and every egress node has a first probe verdict.
    pub fn start(
        options: ScenarioOptions,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Scenario, ScenarioError> {
        let started = Instant::now();
        let mut builder = TestbedBuilder::lab();
        if let Some(prefix) = &options.keep_prefix {
            builder = builder.persistent_prefix(prefix.clone());
        }
        let testbed = builder.build()?;
        progress(&format!(
            "built the network: {} nodes, {} pods, a router, the web server {} and a secondary network ({} ms)",
            testbed.nodes().len(),
            testbed.pods().len(),
            testbed.server().ip(),
            started.elapsed().as_millis()
        ));
        let seed = SeedObjects::load()?;
        let started = Instant::now();
        let cluster = LabCluster::start(
            &testbed,
            seed.snapshot(|_| false),
            LabOptions {
                probe: options.probe,
                ..LabOptions::default()
            },
        )?;
        cluster.settle(SETTLE)?;
        progress(&format!(
            "started the controller and {} agents; probing {} ({} ms)",
            testbed.nodes().len(),
            cluster.probed_nodes().join(", "),
            started.elapsed().as_millis()
        ));
        Ok(Scenario {
            cluster,
            seed,
            options,
            testbed,
        })
    }

    pub fn testbed(&self) -> &Testbed {
        &self.testbed
    }

    /// Runs every step; a failed check does not stop the scenario, an error (or `interrupted()`
    /// turning true, looked at between steps and samples) does.
    pub fn run(
        &self,
        progress: &mut dyn FnMut(&str),
        interrupted: &dyn Fn() -> bool,
    ) -> Result<LabReport, ScenarioError> {
        let stop = || {
            if interrupted() {
                Err(ScenarioError::Interrupted)
            } else {
                Ok(())
            }
        };
        let mut report = LabReport {
            dataplane: "linux".into(),
            ..LabReport::default()
        };
        stop()?;
        self.before(&mut report, progress);
        stop()?;
        self.after(&mut report, progress)?;
        stop()?;
        self.secondary(&mut report, progress)?;
        stop()?;
        if self.options.failover_samples > 0 {
            self.failover(&mut report, progress, &stop)?;
        }
        Ok(report)
    }

    /// Stops the cluster (the agents leave the kernel state in place) and removes every
    /// namespace; reports any component failure seen on the way and any namespace left.
    pub fn destroy(self) -> Result<(), String> {
        let Scenario {
            cluster, testbed, ..
        } = self;
        let failures = cluster.stop();
        let prefix = testbed.prefix().to_string();
        testbed.destroy().map_err(|e| e.to_string())?;
        let left: Vec<String> = kube_egress_testbed::list_namespaces()
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|n| n.starts_with(&prefix))
            .collect();
        if !left.is_empty() {
            return Err(format!("namespaces left behind: {}", left.join(", ")));
        }
        if !failures.is_empty() {
            return Err(format!("components failed: {}", failures.join("; ")));
        }
        Ok(())
    }

    /// Stops the controller and agents but leaves the namespaces and the programmed data plane.
    /// The web servers are threads of this process; `serve(namespace, listen address)` gives
    /// the command of a process that takes over from each (started in that namespace once the
    /// thread stopped). Returns the testbed's description.
    pub fn keep(
        self,
        mut serve: impl FnMut(&str, &str) -> std::process::Command,
    ) -> Result<String, ScenarioError> {
        let Scenario {
            cluster, testbed, ..
        } = self;
        cluster.stop();
        let mut servers = vec![(
            testbed.server().netns().name().to_string(),
            testbed.server().port(),
            testbed.server().url(),
        )];
        for s in testbed.secondaries() {
            let server = s.server();
            servers.push((
                server.netns().name().to_string(),
                server.port(),
                server.url(),
            ));
        }
        testbed.stop_servers();
        for (ns, port, url) in &servers {
            let mut cmd = serve(ns, &format!("0.0.0.0:{port}"));
            testbed.spawn(ns, &mut cmd)?;
            // The process answers before the lab is handed over (a request from the server's
            // own namespace needs no route).
            let deadline = Instant::now() + Duration::from_secs(3);
            while let Err(e) = kube_egress_testbed::http_get(ns, url, Duration::from_millis(200)) {
                if Instant::now() > deadline {
                    return Err(ScenarioError::Testbed(e));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(testbed.keep())
    }

    fn request(&self, pod: &str, url: &str, timeout: Duration) -> Result<IpAddr, String> {
        let pod = self
            .testbed
            .pod(pod)
            .ok_or_else(|| format!("no pod {pod}"))?;
        let reply = pod
            .http_get_timeout(url, timeout)
            .map_err(|e| e.to_string())?;
        reply
            .seen_source()
            .ok_or_else(|| format!("no source in the reply {:?}", reply.body))
    }

    fn pod_key(&self, pod: &str) -> String {
        let p = self.testbed.pod(pod).expect("a pod of the testbed");
        format!("{}/{}", p.namespace(), p.name())
    }

    fn node_ip(&self, node: &str) -> IpAddr {
        IpAddr::V4(self.testbed.node(node).expect("a node").ip())
    }

    fn before(&self, report: &mut LabReport, progress: &mut dyn FnMut(&str)) {
        let url = self.testbed.server().url();
        let mut wrong = Vec::new();
        for pod in self.testbed.pods() {
            let seen = self.request(pod.name(), &url, Duration::from_secs(2));
            let want = self.node_ip(pod.node());
            let shown = shown(&seen);
            progress(&format!(
                "before: {:<18} on {} -> server saw {shown}",
                self.pod_key(pod.name()),
                pod.node()
            ));
            if seen != Ok(want) {
                wrong.push(format!("{} saw {shown}, not {want}", pod.name()));
            }
            report.before.insert(self.pod_key(pod.name()), shown);
        }
        report.checks.push(check(
            "before: every pod leaves with its node's address",
            wrong,
            "the server saw each pod's node address (the CNI's masquerade)",
        ));
    }

    fn after(
        &self,
        report: &mut LabReport,
        progress: &mut dyn FnMut(&str),
    ) -> Result<(), ScenarioError> {
        let eip = self.seed_object(SEED_EGRESS_IP)?;
        self.cluster.apply_egress_ip(eip);
        self.cluster.settle(SETTLE)?;
        let items = self.cluster.status(SEED_EGRESS_IP).unwrap_or_default();
        progress(&format!(
            "applied {SEED_EGRESS_IP} ({}): status.items {}",
            eip.spec.egress_ips.join(", "),
            items_text(&items)
        ));
        report
            .checks
            .push(status_check(eip, &items, self.cluster.probed_nodes()));
        report
            .status_items
            .insert(SEED_EGRESS_IP.to_string(), items);

        let egress: BTreeSet<IpAddr> = eip
            .spec
            .egress_ips
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect();
        let prod: BTreeSet<&str> = self
            .seed
            .namespaces
            .iter()
            .filter(|n| {
                n.metadata
                    .labels
                    .as_ref()
                    .is_some_and(|l| l.get("env").map(String::as_str) == Some("prod"))
            })
            .filter_map(|n| n.metadata.name.as_deref())
            .collect();
        let url = self.testbed.server().url();
        let (mut served_wrong, mut others_wrong, mut ecmp_missing) = (vec![], vec![], vec![]);
        for pod in self.testbed.pods() {
            let results: Vec<Result<IpAddr, String>> = (0..AFTER_REQUESTS)
                .map(|_| self.request(pod.name(), &url, Duration::from_secs(2)))
                .collect();
            let distinct: BTreeSet<String> = results.iter().map(shown).collect();
            let key = self.pod_key(pod.name());
            progress(&format!(
                "after:  {key:<18} on {} -> server saw {}",
                pod.node(),
                distinct.iter().cloned().collect::<Vec<_>>().join(" and ")
            ));
            report.after.insert(key.clone(), shown(&results[0]));
            report
                .after_seen
                .insert(key.clone(), distinct.into_iter().collect());
            if prod.contains(pod.namespace()) {
                let bad: Vec<String> = results
                    .iter()
                    .filter(|r| !r.as_ref().is_ok_and(|ip| egress.contains(ip)))
                    .map(shown)
                    .collect();
                if !bad.is_empty() {
                    served_wrong.push(format!("{key}: {}", bad.join(", ")));
                }
                let hosts_one = items_hosted_on(report, pod.node());
                let seen: BTreeSet<IpAddr> =
                    results.iter().filter_map(|r| r.clone().ok()).collect();
                if !hosts_one && bad.is_empty() && seen.len() < egress.len() {
                    ecmp_missing.push(format!("{key} left only from {seen:?}"));
                }
            } else if results
                .iter()
                .any(|r| r.as_ref() != Ok(&self.node_ip(pod.node())))
            {
                others_wrong.push(format!(
                    "{key}: {}",
                    results.iter().map(shown).collect::<Vec<_>>().join(", ")
                ));
            }
        }
        report.checks.push(check(
            "after: every env=prod pod leaves with an egress IP of egressips-prod",
            served_wrong,
            &format!("{AFTER_REQUESTS} requests per pod, each from one of the object's egress IPs"),
        ));
        report.checks.push(check(
            "after: pods on a node without egress IP use both egress nodes (ECMP)",
            ecmp_missing,
            "the server saw both egress IPs from the pods of node2",
        ));
        report.checks.push(check(
            "after: pods of other namespaces keep their node's address",
            others_wrong,
            "pod4 (namespace default) still leaves with node2's address",
        ));
        Ok(())
    }

    fn secondary(
        &self,
        report: &mut LabReport,
        progress: &mut dyn FnMut(&str),
    ) -> Result<(), ScenarioError> {
        let eip = self.seed_object(SECONDARY_EGRESS_IP)?;
        let Some(sec) = self.testbed.secondaries().first() else {
            return Err(ScenarioError::Lab(LabError::Seed(
                "the lab has no secondary network".into(),
            )));
        };
        let server = sec.server();
        let url = server.url();
        let pod = "pod4";
        let mut out = SecondaryReport {
            egress_ip: eip.spec.egress_ips.join(", "),
            server: server.ip().to_string(),
            ..SecondaryReport::default()
        };
        // Without the EgressIP, 198.51.100.0/24 is reachable only through the secondary gateway,
        // which no pod route leads to.
        out.before = shown(&self.request(pod, &url, Duration::from_millis(500)));
        self.cluster.apply_egress_ip(eip);
        self.cluster.settle(SETTLE)?;
        let items = self.cluster.status(SECONDARY_EGRESS_IP).unwrap_or_default();
        out.node = items.first().map(|i| i.node.clone());
        let results: Vec<Result<IpAddr, String>> = (0..3)
            .map(|_| self.request(pod, &url, Duration::from_secs(2)))
            .collect();
        out.seen = results
            .iter()
            .map(shown)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut problems = Vec::new();
        if let Some(node) = &out.node {
            let link = self
                .testbed
                .node(node)
                .and_then(|n| n.secondary(sec.name()))
                .map(|a| a.link.clone());
            if let Some(link) = link {
                match self.link_table(node, &link) {
                    Ok((table, routes)) => {
                        let gateway = sec.gateway().addr().to_string();
                        if !routes.iter().any(|r| r.contains(&format!("via {gateway}"))) {
                            problems.push(format!(
                                "table {table} on {node} lacks the route via {gateway}"
                            ));
                        }
                        out.table = Some(table);
                        out.routes = routes;
                    }
                    Err(e) => problems.push(e),
                }
            }
        } else {
            problems.push(format!("{SECONDARY_EGRESS_IP} was not assigned"));
        }
        let want: IpAddr = eip.spec.egress_ips[0].parse().map_err(|_| {
            LabError::Seed(format!("{SECONDARY_EGRESS_IP} has an invalid egress IP"))
        })?;
        for r in &results {
            if r.as_ref() != Ok(&want) {
                problems.push(format!("{pod} to {url}: {}", shown(r)));
            }
        }
        progress(&format!(
            "seed 000: {SECONDARY_EGRESS_IP} ({}) on {}: pod4 -> {} (behind the secondary gateway): before {}, after {}; table {} holds {} route(s)",
            out.egress_ip,
            out.node.as_deref().unwrap_or("no node"),
            out.server,
            out.before,
            out.seen.join(", "),
            out.table.map_or("-".to_string(), |t| t.to_string()),
            out.routes.len()
        ));
        report
            .status_items
            .insert(SECONDARY_EGRESS_IP.into(), items);
        report.checks.push(check(
            "seed 000: a secondary-network egress IP reaches a server behind that network's gateway",
            problems,
            &format!(
                "the server saw {}; the per-link table holds the gateway route",
                out.seen.join(", ")
            ),
        ));
        report.secondary = out;
        Ok(())
    }

    fn failover(
        &self,
        report: &mut LabReport,
        progress: &mut dyn FnMut(&str),
        stop: &dyn Fn() -> Result<(), ScenarioError>,
    ) -> Result<(), ScenarioError> {
        let ip: IpAddr = FAILOVER_IP.parse().expect("a valid address");
        self.cluster.remove_egress_ip(SEED_EGRESS_IP);
        let object = self.failover_object()?;
        self.cluster.apply_egress_ip(&object);
        self.cluster.settle(SETTLE)?;
        progress(&format!(
            "failover: replaced {SEED_EGRESS_IP} by {FAILOVER_EGRESS_IP} ({FAILOVER_IP}, same selector): with two egress nodes, a two-IP object cannot move an IP"
        ));
        let probe = probe_text(&self.options.probe);
        let (mut moved_wrong, mut unannounced, mut failback, mut lost) =
            (vec![], vec![], vec![], vec![]);
        let mut runs = Vec::new();
        for n in 0..self.options.failover_samples {
            stop()?;
            let sample = self.failover_sample(ip, &mut moved_wrong, &mut unannounced)?;
            progress(&format!(
                "failover {}/{}: cut {} -> {FAILOVER_IP} on {}: detected {}, status {}, first request through it {}",
                n + 1,
                self.options.failover_samples,
                sample.cut,
                sample.to.as_deref().unwrap_or("no node"),
                ms(sample.detected_ms),
                ms(sample.moved_ms),
                ms(sample.first_request_ms),
            ));
            if sample.first_request_ms.is_none() {
                lost.push(format!(
                    "sample {}: no request succeeded within {:?}",
                    n + 1,
                    self.failover_limit()
                ));
            }
            let back = self.reconnect(&sample, ip)?;
            failback.extend(back.into_iter().map(|p| format!("sample {}: {p}", n + 1)));
            runs.push(sample);
        }
        report.failover = FailoverReport::from_runs(FAILOVER_IP, probe, runs);
        let f = &report.failover;
        report.checks.push(check(
            "failover: traffic resumes through the new egress node",
            lost,
            &format!(
                "{} samples: p50 {}, p99 {}, max {} (target p99 <= {} ms)",
                f.samples,
                ms(f.p50_ms),
                ms(f.p99_ms),
                ms(f.max_ms),
                f.target_ms
            ),
        ));
        report.checks.push(check(
            "failover: only the cut node's egress IPs move",
            moved_wrong,
            "every IP hosted elsewhere kept its node",
        ));
        report.checks.push(check(
            "failover: the new egress node announces the IP (router's neighbour entry updated)",
            unannounced,
            "the router's neighbour entry for the IP points at the new egress node",
        ));
        report.checks.push(check(
            "failover: a reconnected node drops the IP and nothing moves back",
            failback,
            "the old node removed the IP; status.items kept the new node",
        ));
        report.metrics = self.cluster.metrics_text();
        let runs = &report.failover.runs;
        let want_unreachable = runs.len() as f64;
        let want_moves: usize = runs.iter().map(|r| r.moved_ips).sum();
        let mut problems = Vec::new();
        for (metric, want) in [
            (
                "ovnkube_clustermanager_egress_ips_node_unreachable_total",
                want_unreachable,
            ),
            (
                "ovnkube_clustermanager_egress_ips_rebalance_total",
                want_moves as f64,
            ),
        ] {
            let got = metric_value(&report.metrics, metric);
            if got != Some(want) {
                problems.push(format!("{metric} is {got:?}, expected {want}"));
            }
        }
        report.checks.push(check(
            "metrics: the controller counted every lost node and every moved IP",
            problems,
            &format!(
                "node_unreachable_total {want_unreachable}, rebalance_total {want_moves} (OVN-K's names)"
            ),
        ));
        Ok(())
    }

    /// Cuts the node holding `ip` and measures until a request succeeds through the new one.
    fn failover_sample(
        &self,
        ip: IpAddr,
        moved_wrong: &mut Vec<String>,
        unannounced: &mut Vec<String>,
    ) -> Result<FailoverSample, ScenarioError> {
        let holder = self
            .holder(FAILOVER_EGRESS_IP)
            .ok_or_else(|| LabError::Seed(format!("{FAILOVER_EGRESS_IP} is not assigned")))?;
        // Every other object's assignments: those not on the cut node must stay.
        let others: BTreeMap<String, Vec<EgressIPStatusItem>> = [SECONDARY_EGRESS_IP]
            .into_iter()
            .filter_map(|name| Some((name.to_string(), self.cluster.status(name)?)))
            .collect();
        let pod2 = self.testbed.pod("pod2").expect("the lab has pod2");
        let traffic = CutTraffic::measure(
            pod2.netns().name(),
            &self.testbed.server().url(),
            ip,
            self.failover_limit(),
            || self.testbed.set_node_connected(&holder, false),
        )?;
        let cut = traffic.cut;
        let events = self.cluster.events();
        let detected = lost_at(&events, &holder, cut);
        self.cluster.settle(SETTLE)?;
        let to = self.holder(FAILOVER_EGRESS_IP);
        let moved = events.iter().find_map(|e| match &e.kind {
            LabEventKind::PlanPushed { node, .. } if Some(node) == to.as_ref() && e.at >= cut => {
                Some(e.at - cut)
            }
            _ => None,
        });
        match &to {
            Some(to) if *to != holder => {
                let mac = link_mac(
                    self.testbed.node(to).expect("a node").netns().name(),
                    "eth0",
                )?;
                let entry = neighbour_mac(self.testbed.router().netns().name(), ip)?;
                if mac.is_none() || entry != mac {
                    unannounced.push(format!(
                        "router's entry for {ip} is {entry:?}, {to}'s eth0 is {mac:?}"
                    ));
                }
            }
            _ => moved_wrong.push(format!(
                "{FAILOVER_IP} did not move off {holder} (now {to:?})"
            )),
        }
        let mut moved_ips = usize::from(to.as_ref().is_some_and(|to| *to != holder));
        for (name, items) in others {
            let now = self.cluster.status(&name).unwrap_or_default();
            moved_ips += items
                .iter()
                .filter(|i| i.node == holder)
                .filter(|i| {
                    now.iter()
                        .any(|n| n.egress_ip == i.egress_ip && n.node != holder)
                })
                .count();
            for item in items.iter().filter(|i| i.node != holder) {
                if !now.contains(item) {
                    moved_wrong.push(format!(
                        "{name}: {} moved off {} though it was not cut",
                        item.egress_ip, item.node
                    ));
                }
            }
        }
        // The timeline after `settle`: every apply of the move is in it.
        let events = self.cluster.events();
        let applied = |on: &str| {
            events.iter().find_map(|e| match &e.kind {
                LabEventKind::Applied { node, .. } if node == on && e.at >= cut => Some(e.at - cut),
                _ => None,
            })
        };
        Ok(FailoverSample {
            egress_node_applied_ms: to.as_deref().and_then(applied).and_then(since_cut_raw),
            pod_node_applied_ms: applied(pod2.node()).and_then(since_cut_raw),
            northbound_ms: None,
            cut: holder,
            to,
            detected_ms: detected.and_then(since_cut_raw),
            moved_ms: moved.and_then(since_cut_raw),
            first_request_ms: traffic.first_request_ms(),
            recovered_ms: traffic.recovered_ms(),
            requests: traffic.requests(),
            moved_ips,
        })
    }

    /// Reconnects the cut node and checks it comes back without taking anything back. Returns
    /// the problems seen.
    fn reconnect(&self, sample: &FailoverSample, ip: IpAddr) -> Result<Vec<String>, ScenarioError> {
        let node = &sample.cut;
        let at = Instant::now();
        self.testbed.set_node_connected(node, true)?;
        // `reachable` answers under the controller's lock, so once it is true the controller has
        // also pushed the node its current plan and `settle` waits for that plan.
        while !self.cluster.reachable(node) {
            if at.elapsed() > self.failover_limit() {
                return Ok(vec![format!(
                    "{node} was not seen reachable within {:?}",
                    self.failover_limit()
                )]);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut problems = Vec::new();
        self.cluster.settle(SETTLE)?;
        let holder = self.holder(FAILOVER_EGRESS_IP);
        if holder != sample.to {
            problems.push(format!(
                "{FAILOVER_IP} moved from {:?} to {holder:?} after {node} came back",
                sample.to
            ));
        }
        if self.holds(node, ip)? {
            problems.push(format!("{node} still holds {ip}"));
        }
        Ok(problems)
    }

    /// How long a node may take to be seen lost (or back) and traffic to follow.
    fn failover_limit(&self) -> Duration {
        self.options.probe.worst_case_detection() + FAILOVER_MARGIN
    }

    fn holder(&self, name: &str) -> Option<String> {
        self.cluster
            .status(name)
            .and_then(|items| items.first().map(|i| i.node.clone()))
    }

    fn holds(&self, node: &str, ip: IpAddr) -> Result<bool, ScenarioError> {
        let ns = self.testbed.node(node).expect("a node").netns().name();
        let out = self
            .testbed
            .exec(ns, &["ip", "-o", "addr", "show", "to", &ip.to_string()])?;
        Ok(!out.trim().is_empty())
    }

    fn link_table(&self, node: &str, link: &str) -> Result<(u32, Vec<String>), String> {
        let ns = self.testbed.node(node).expect("a node").netns().name();
        let line = self
            .testbed
            .exec(ns, &["ip", "-o", "link", "show", "dev", link])
            .map_err(|e| e.to_string())?;
        let ifindex: u32 = line
            .split(':')
            .next()
            .and_then(|n| n.trim().parse().ok())
            .ok_or_else(|| format!("no ifindex in `{line}`"))?;
        let table = 1000 + ifindex;
        let routes = self
            .testbed
            .exec(
                ns,
                &["ip", "-4", "route", "show", "table", &table.to_string()],
            )
            .map_err(|e| e.to_string())?;
        Ok((table, routes.lines().map(str::to_string).collect()))
    }

    fn seed_object(&self, name: &str) -> Result<&EgressIP, ScenarioError> {
        self.seed
            .egress_ip(name)
            .ok_or_else(|| LabError::Seed(format!("no EgressIP {name} in the seed")).into())
    }

    fn failover_object(&self) -> Result<EgressIP, ScenarioError> {
        let mut eip = self.seed_object(SEED_EGRESS_IP)?.clone();
        eip.metadata.name = Some(FAILOVER_EGRESS_IP.into());
        eip.metadata.creation_timestamp = None;
        eip.spec.egress_ips = vec![FAILOVER_IP.into()];
        Ok(eip)
    }
}

/// Every IP assigned, on egress-assignable (probed) nodes, no two on one node.
pub(crate) fn status_check(
    eip: &EgressIP,
    items: &[EgressIPStatusItem],
    probed: &[String],
) -> Check {
    let mut problems = Vec::new();
    let nodes: BTreeSet<&str> = items.iter().map(|i| i.node.as_str()).collect();
    if items.len() != eip.spec.egress_ips.len() {
        problems.push(format!(
            "{} of {} egress IPs assigned",
            items.len(),
            eip.spec.egress_ips.len()
        ));
    }
    if nodes.len() != items.len() {
        problems.push("two egress IPs on one node".into());
    }
    for node in &nodes {
        if !probed.iter().any(|p| p == node) {
            problems.push(format!("{node} is not egress-assignable"));
        }
    }
    check(
        "status.items: every egress IP of egressips-prod on its own egress node",
        problems,
        &items_text(items),
    )
}

fn items_hosted_on(report: &LabReport, node: &str) -> bool {
    report
        .status_items
        .get(SEED_EGRESS_IP)
        .is_some_and(|items| items.iter().any(|i| i.node == node))
}

pub(crate) fn check(name: &str, problems: Vec<String>, ok_detail: &str) -> Check {
    Check {
        name: name.to_string(),
        passed: problems.is_empty(),
        detail: if problems.is_empty() {
            ok_detail.to_string()
        } else {
            problems.join("; ")
        },
    }
}

pub(crate) fn shown(r: &Result<IpAddr, String>) -> String {
    match r {
        Ok(ip) => ip.to_string(),
        Err(e) => format!("error: {e}"),
    }
}

pub(crate) fn items_text(items: &[EgressIPStatusItem]) -> String {
    if items.is_empty() {
        return "[]".into();
    }
    items
        .iter()
        .map(|i| format!("{{node: {}, egressIP: {}}}", i.node, i.egress_ip))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The traffic around one cut of an egress node: requests from a pod, every [`POLL_PERIOD`],
/// from shortly before the cut until the first one after it that succeeds from `ip` (or `limit`),
/// and one request timeout more so the requests under way end.
pub(crate) struct CutTraffic {
    /// When the cut began and when it was done.
    pub cut: Instant,
    pub cut_done: Instant,
    /// From the end of the cut to the end of the first request that succeeded from `ip`.
    pub first: Option<Duration>,
    pub samples: Vec<crate::traffic::Sample>,
    ip: IpAddr,
}

impl CutTraffic {
    /// Polls `target` from `netns`, runs `cut`, and waits as described above.
    pub fn measure<E>(
        netns: &str,
        target: &str,
        ip: IpAddr,
        limit: Duration,
        cut: impl FnOnce() -> Result<(), E>,
    ) -> Result<CutTraffic, E> {
        let poller = Poller::start(netns, target, POLL_PERIOD, POLL_REQUEST_TIMEOUT);
        std::thread::sleep(Duration::from_millis(100));
        let cut_at = Instant::now();
        cut()?;
        let cut_done = Instant::now();
        let mut first = None;
        while cut_at.elapsed() < limit {
            first = first_success(&poller.samples(), cut_done, |s| s == ip);
            if first.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(POLL_REQUEST_TIMEOUT);
        Ok(CutTraffic {
            cut: cut_at,
            cut_done,
            first,
            samples: poller.finish(),
            ip,
        })
    }

    /// Milliseconds from the start of the cut of a time measured from its end.
    fn since_cut(&self, d: Duration) -> Option<f64> {
        Some((d + (self.cut_done - self.cut)).as_secs_f64() * 1000.0)
    }

    /// Milliseconds from the start of the cut to the first request through `ip`.
    pub fn first_request_ms(&self) -> Option<f64> {
        self.first.and_then(|d| self.since_cut(d))
    }

    /// Milliseconds from the start of the cut until every request succeeded through `ip`.
    pub fn recovered_ms(&self) -> Option<f64> {
        recovery(&self.samples, self.cut_done, |s| s == self.ip).and_then(|d| self.since_cut(d))
    }

    /// Requests started after the cut.
    pub fn requests(&self) -> usize {
        self.samples
            .iter()
            .filter(|s| s.started >= self.cut_done)
            .count()
    }
}

/// When (after `cut`) the timeline first has `node` declared unreachable.
pub(crate) fn lost_at(events: &[crate::LabEvent], node: &str, cut: Instant) -> Option<Duration> {
    events.iter().find_map(|e| match &e.kind {
        LabEventKind::Reachability {
            node: n, reachable, ..
        } if n == node && !reachable && e.at >= cut => Some(e.at - cut),
        _ => None,
    })
}

pub(crate) fn since_cut_raw(d: Duration) -> Option<f64> {
    Some(d.as_secs_f64() * 1000.0)
}

pub(crate) fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.0} ms"))
}

/// The value of an unlabelled metric in OpenMetrics text.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let (n, value) = line.split_once(' ')?;
        if n == name {
            value.trim().parse().ok()
        } else {
            None
        }
    })
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// How the controller probes, in words.
pub fn probe_text(p: &ProbeSettings) -> String {
    match p.mode {
        ProbeMode::Disabled => "probing disabled (total timeout 0)".into(),
        ProbeMode::Legacy { port } => format!(
            "TCP port {port} (refused = alive), every {} ms, deadline {} ms",
            p.interval.as_millis(),
            p.deadline.as_millis()
        ),
        ProbeMode::Grpc { port } => format!(
            "grpc.health.v1 on port {port}, every {} ms, deadline {} ms",
            p.interval.as_millis(),
            p.deadline.as_millis()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(10.0));
        assert_eq!(percentile(&v, 99.0), Some(20.0));
        assert_eq!(percentile(&v, 95.0), Some(19.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&hundred, 99.0), Some(99.0));
    }

    #[test]
    fn metric_values_are_read_from_openmetrics_text() {
        let text =
            "# HELP x_total X.\n# TYPE x counter\nx_total 3\nx_created 1.7e9\ny 2.5\n# EOF\n";
        assert_eq!(metric_value(text, "x_total"), Some(3.0));
        assert_eq!(metric_value(text, "y"), Some(2.5));
        assert_eq!(metric_value(text, "x"), None);
        assert_eq!(metric_value(text, "z"), None);
    }

    #[test]
    fn a_report_passes_only_with_checks_all_passed() {
        let mut r = LabReport::default();
        assert!(!r.passed(), "no checks is not a pass");
        r.checks.push(check("a", vec![], "fine"));
        assert!(r.passed());
        r.checks.push(check("b", vec!["x".into()], "fine"));
        assert!(!r.passed());
        assert_eq!(r.checks[1].detail, "x");
    }

    #[test]
    fn the_json_has_the_documented_keys() {
        let mut r = LabReport::default();
        r.checks.push(check("a", vec![], "fine"));
        r.failover.samples = 2;
        r.failover.p50_ms = Some(500.0);
        let v = serde_json::to_value(&r).unwrap();
        for key in ["checks", "before", "after", "statusItems", "failover"] {
            assert!(v.get(key).is_some(), "{key} missing in {v}");
        }
        assert_eq!(v["failover"]["samples"], 2);
        assert_eq!(v["failover"]["p50_ms"], 500.0);
        assert!(v["failover"].get("p99_ms").is_some());
        assert_eq!(v["checks"][0]["passed"], true);
    }
}
