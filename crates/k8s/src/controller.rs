//! `kube-egress controller` on Kubernetes: watches feeding the engine, probes of the eligible
//! nodes feeding reachability, and, on the Lease holder only, the writes.
//!
//! Every replica watches, probes and computes; only the leader writes, so a takeover is
//! immediate. Writes are driven by "desired vs. last seen" per object, not by a log of changes:
//! when a replica becomes leader it checks every EgressIP once, so nothing a previous leader left
//! unwritten is lost, and nothing already right is written again.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use kube::api::Api;
use kube::{Client, ResourceExt};
use kube_egress_api::{EgressIP, EgressIPStatusItem};
use kube_egress_engine::{Config, NodeInfo};
use kube_egress_probe::{ClientTls, NodeTarget, Prober, ReachabilityConfig};
use tokio::time::Instant;

use crate::feed::{Feed, Role};
use crate::lease::{LeaderElector, Leadership, LeaseConfig};
use crate::log;
use crate::watch::{Update, serves_service_cidrs, watch_cluster};
use crate::writer::{EventWriter, WriteError, write_status};

/// Everything the controller needs besides the client.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub engine: Config,
    pub reachability: ReachabilityConfig,
    /// TLS for gRPC probes (CA of the agents' certificates).
    pub probe_tls: Option<ClientTls>,
    pub lease: LeaseConfig,
}

/// Hooks for metrics; every method defaults to doing nothing.
pub trait Observer: Send + Sync {
    /// Egress IPs currently assigned, cluster-wide.
    fn egress_ips(&self, _assigned: usize) {}
    /// A node went from reachable to unreachable.
    fn node_unreachable(&self) {}
    /// An assigned IP moved to another node.
    fn rebalance(&self) {}
    /// Time from the engine's decision to the status write that assigns an IP.
    fn assigned(&self, _latency: Duration) {}
    /// Time from the engine's decision to the status write that removes an IP.
    fn unassigned(&self, _latency: Duration) {}
}

/// Most recent Events kept while not leading.
const HELD_EVENTS: usize = 256;

/// An observer that records nothing.
pub struct NoMetrics;
impl Observer for NoMetrics {}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("starting the prober: {0}")]
    Prober(#[from] kube_egress_probe::Error),
    #[error("the watch streams ended")]
    WatchEnded,
}

/// The addresses probed for a node: its primary addresses, then its InternalIP/ExternalIPs.
fn probe_addresses(info: &NodeInfo) -> Vec<IpAddr> {
    let mut addrs: Vec<IpAddr> = info.primary.iter().map(|n| n.addr()).collect();
    for a in &info.addresses {
        if !addrs.contains(a) {
            addrs.push(*a);
        }
    }
    addrs
}

/// Whether the prober should follow the node: it could host IPs but for its reachability
/// (OVN-K probes labelled, Ready nodes and closes the sessions of the others).
fn probed(info: &NodeInfo, config: &Config) -> bool {
    info.egress_assignable()
        && info.ready
        && !(config.cordoned_nodes_ineligible && info.unschedulable)
}

struct Writes {
    api: Api<EgressIP>,
    events: EventWriter,
    /// EgressIPs to check, with the time the engine changed them.
    dirty: BTreeMap<String, Instant>,
    assigned: BTreeMap<String, usize>,
}

impl Writes {
    async fn flush(
        &mut self,
        feed: &mut Feed,
        leadership: &Leadership,
        observer: &dyn Observer,
    ) -> Result<(), WriteError> {
        let dirty = std::mem::take(&mut self.dirty);
        let mut failed = Vec::new();
        let mut result = Ok(());
        for (name, since) in dirty {
            let Some(engine) = feed.engine() else {
                break;
            };
            let (Some(items), Some(current)) = (engine.status(&name), feed.egress_ips.get(&name))
            else {
                self.assigned.remove(&name);
                continue;
            };
            let mark = engine.mark(&name);
            let before: Vec<EgressIPStatusItem> = current
                .status
                .iter()
                .flat_map(|s| s.items.clone())
                .collect();
            match write_status(&self.api, current, &items, mark, || leadership.is_leader()).await {
                Ok(Some(written)) => {
                    let latency = since.elapsed();
                    for item in &items {
                        match before.iter().find(|b| b.egress_ip == item.egress_ip) {
                            None => observer.assigned(latency),
                            Some(b) if b.node != item.node => {
                                observer.rebalance();
                                observer.assigned(latency);
                            }
                            Some(_) => {}
                        }
                    }
                    for b in &before {
                        if !items.iter().any(|i| i.egress_ip == b.egress_ip) {
                            observer.unassigned(latency);
                        }
                    }
                    log(
                        "controller",
                        format!("EgressIP {name}: status {}", describe(&items)),
                    );
                    self.assigned.insert(name.clone(), items.len());
                    feed.egress_ips.insert(name, written);
                }
                Ok(None) => {
                    self.assigned.insert(name.clone(), items.len());
                }
                Err(WriteError::NotLeader { .. }) => {
                    failed.push((name, since));
                    break;
                }
                Err(e) => {
                    log("controller", format!("{e}; retrying"));
                    failed.push((name, since));
                    result = Err(e);
                }
            }
        }
        self.dirty.extend(failed);
        observer.egress_ips(self.assigned.values().sum());
        result
    }
}

fn describe(items: &[EgressIPStatusItem]) -> String {
    if items.is_empty() {
        return "[] (nothing assigned)".into();
    }
    let parts: Vec<String> = items
        .iter()
        .map(|i| format!("{} on {}", i.egress_ip, i.node))
        .collect();
    format!("[{}]", parts.join(", "))
}

/// Runs the controller until `shutdown` completes.
pub async fn run(
    client: Client,
    config: ControllerConfig,
    observer: &dyn Observer,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let service_cidrs = serves_service_cidrs(&client).await;
    let (mut updates, kinds) = watch_cluster(client.clone(), service_cidrs);
    let mut feed = Feed::new(Role::Controller, config.engine.clone(), &kinds);
    let (mut prober, mut transitions) =
        Prober::new(config.reachability.settings(), config.probe_tls.as_ref())?;
    let (elector, mut leadership) = LeaderElector::new(client.clone(), config.lease.clone());
    let lease_task = tokio::spawn(elector.run());
    let mut writes = Writes {
        api: Api::all(client.clone()),
        events: EventWriter::new(client.clone(), &config.lease.identity),
        dirty: BTreeMap::new(),
        assigned: BTreeMap::new(),
    };
    let mut retry = tokio::time::interval(Duration::from_secs(1));
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_leader = false;
    let mut loaded = false;
    let mut unreachable: BTreeSet<String> = BTreeSet::new();
    // Events raised while not leading (the load's, before the Lease is won) are published once
    // leading; after a takeover some may repeat what the previous leader published.
    let mut held_events: Vec<kube_egress_engine::Event> = Vec::new();
    let mut touched: Vec<String> = Vec::new();
    tokio::pin!(shutdown);
    let result = loop {
        tokio::select! {
            _ = &mut shutdown => break Ok(()),
            update = updates.next() => {
                let Some(update) = update else { break Err(Error::WatchEnded) };
                let mut batch = vec![update];
                // Take what else is ready, so a burst becomes one pass of writes.
                while batch.len() < 1024 {
                    match updates.next().now_or_never() {
                        Some(Some(u)) => batch.push(u),
                        _ => break,
                    }
                }
                for update in batch {
                    follow_node(&mut prober, &update, &config.engine);
                    if let Update::EgressIp(eip) = &update {
                        // Checked even when the engine sees no change: someone may have edited
                        // the status or removed the mark (OVN-K restores both).
                        touched.push(eip.name_any());
                    }
                    feed.apply(update);
                }
            }
            t = transitions.recv() => {
                let Some(t) = t else { continue };
                if t.reachable {
                    unreachable.remove(&t.node);
                } else if unreachable.insert(t.node.clone()) {
                    observer.node_unreachable();
                }
                log("controller", format!(
                    "node {} is {}",
                    t.node,
                    if t.reachable { "reachable" } else { "unreachable" }
                ));
                feed.set_node_reachable(&t.node, t.reachable);
            }
            _ = leadership.changed() => {}
            _ = retry.tick() => {}
        }
        if !loaded && feed.is_loaded() {
            loaded = true;
            log("controller", "every kind listed; engine loaded");
        }
        let changes = feed.take_changes();
        let now = Instant::now();
        held_events.extend(changes.events);
        if held_events.len() > HELD_EVENTS {
            held_events.drain(..held_events.len() - HELD_EVENTS);
        }
        let leader = leadership.is_leader() && loaded;
        if !leader {
            // Not ours to write; a replica that becomes leader checks every object.
            was_leader = false;
            writes.dirty.clear();
            touched.clear();
            continue;
        }
        if !was_leader {
            was_leader = true;
            log("controller", "leading: checking every EgressIP");
            for name in feed.egress_ips.keys() {
                writes.dirty.entry(name.clone()).or_insert(now);
            }
        }
        for name in changes.egress_ips.into_iter().chain(touched.drain(..)) {
            writes.dirty.entry(name).or_insert(now);
        }
        let _ = writes.flush(&mut feed, &leadership, observer).await;
        for event in std::mem::take(&mut held_events) {
            if !leadership.is_leader() {
                break;
            }
            let uid = feed.uid_of(&event.kind, &event.name);
            if let Err(e) = writes.events.publish(&event, uid).await {
                log(
                    "controller",
                    format!(
                        "Event {} for {} {}: {e}",
                        event.reason, event.kind, event.name
                    ),
                );
            }
        }
    };
    lease_task.abort();
    result
}

/// Keeps the prober's node set in line with Node updates.
fn follow_node(prober: &mut Prober, update: &Update, config: &Config) {
    match update {
        Update::Node(node) => {
            let info = NodeInfo::from_node(node);
            if probed(&info, config) {
                prober.upsert(NodeTarget::new(info.name.clone(), probe_addresses(&info)));
            } else {
                prober.remove(&info.name);
            }
        }
        Update::NodeGone(name) => prober.remove(name),
        _ => {}
    }
}
