//! The agent's Kubernetes source: this node's plan from the watched objects, and the node
//! addressing annotations the engine needs when no OVN-Kubernetes publishes them.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use futures::{FutureExt, StreamExt};
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use kube_egress_api::{HOST_CIDRS_ANNOTATION, NODE_PRIMARY_IFADDR_ANNOTATION};
use kube_egress_engine::{Config, Family, NodeInfo, NodePlan};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::feed::{Feed, Role};
use crate::log;
use crate::watch::{serves_service_cidrs, watch_cluster};

/// What the agent needs from the cluster at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentView {
    pub plan: NodePlan,
    /// The node's IPv4 tunnel endpoint (other nodes steer to it).
    pub tunnel: Option<IpAddr>,
    /// This node's object, when it exists.
    pub node: Option<Node>,
}

/// Follows the cluster and hands out this node's [`AgentView`] whenever it changes.
pub struct KubeSource {
    rx: watch::Receiver<Option<Arc<AgentView>>>,
    task: JoinHandle<()>,
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl KubeSource {
    /// Starts watching. The first view arrives once every kind has been listed.
    pub async fn start(client: Client, node: &str, config: Config) -> KubeSource {
        let service_cidrs = serves_service_cidrs(&client).await;
        let (mut updates, kinds) = watch_cluster(client, service_cidrs);
        let (tx, rx) = watch::channel(None);
        let node = node.to_string();
        let task = tokio::spawn(async move {
            let mut feed = Feed::new(Role::Agent, config, &kinds);
            let mut last: Option<Arc<AgentView>> = None;
            while let Some(update) = updates.next().await {
                feed.apply(update);
                while let Some(Some(more)) = updates.next().now_or_never() {
                    feed.apply(more);
                }
                let changes = feed.take_changes();
                let Some(engine) = feed.engine() else {
                    continue;
                };
                for event in &changes.events {
                    log(
                        "agent",
                        format!(
                            "event {} {} {}: {}",
                            event.kind, event.name, event.reason, event.message
                        ),
                    );
                }
                let node_obj = feed.nodes.get(&node).cloned();
                let plan_changed =
                    last.is_none() || changes.exclusions || changes.nodes.contains(&node);
                let node_changed = last.as_ref().is_none_or(|l| l.node != node_obj);
                if !plan_changed && !node_changed {
                    continue;
                }
                let plan = if plan_changed {
                    restrict_to_written(engine.node_plan(&node), &node, &written(&feed))
                } else {
                    last.as_ref().map(|l| l.plan.clone()).unwrap_or_default()
                };
                let tunnel = node_obj
                    .as_ref()
                    .map(NodeInfo::from_node)
                    .and_then(|i| i.tunnel_address())
                    .filter(|a| Family::of(a) == Family::V4);
                let view = Arc::new(AgentView {
                    plan,
                    tunnel,
                    node: node_obj,
                });
                if last.as_deref() != Some(&*view) {
                    last = Some(view.clone());
                    tx.send_replace(Some(view));
                }
            }
            log("agent", "the watch streams ended");
        });
        KubeSource { rx, task }
    }

    /// The next view different from the last one returned (the first: once listed).
    pub async fn next(&mut self) -> Option<Arc<AgentView>> {
        loop {
            if self.rx.changed().await.is_err() {
                return None;
            }
            if let Some(view) = self.rx.borrow_and_update().clone() {
                return Some(view);
            }
        }
    }
}

/// Every `(node, egress IP)` pair written in an EgressIP status.
fn written(feed: &Feed) -> HashSet<(String, IpAddr)> {
    feed.egress_ips
        .values()
        .flat_map(|e| e.status.iter().flat_map(|s| &s.items))
        .filter_map(|i| Some((i.node.clone(), i.egress_ip.trim().parse().ok()?)))
        .collect()
}

/// Drops from a plan whatever the written statuses do not say: an IP is hosted here only when
/// written as on this node, and steered to a node only when written as on that node. The
/// agent's engine reproduces the written assignment; this guarantees it where the engine could
/// not take a status as written (e.g. a node whose addressing this agent sees differently).
pub fn restrict_to_written(
    mut plan: NodePlan,
    node: &str,
    written: &HashSet<(String, IpAddr)>,
) -> NodePlan {
    plan.egress_ips
        .retain(|h| written.contains(&(node.to_string(), h.ip)));
    let hosted: HashSet<IpAddr> = plan.egress_ips.iter().map(|h| h.ip).collect();
    plan.snat.retain(|s| hosted.contains(&s.egress_ip));
    for route in &mut plan.steering_routes {
        route
            .next_hops
            .retain(|h| written.contains(&(h.node.clone(), h.egress_ip)));
    }
    plan.steering_routes.retain(|r| !r.next_hops.is_empty());
    let routed: HashSet<(u32, Family)> = plan
        .steering_routes
        .iter()
        .map(|r| (r.mark, r.family))
        .collect();
    plan.steering
        .retain(|s| routed.contains(&(s.mark, Family::of(&s.pod_ip))));
    plan
}

/// Whether the agent publishes `node-primary-ifaddr` and `host-cidrs` on its Node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PublishNodeAddressing {
    /// Publish unless another writer (OVN-Kubernetes' ovnkube-node) already does: the node
    /// carries one of the two annotations without our publisher annotation.
    #[default]
    Auto,
    Always,
    Never,
}

impl FromStr for PublishNodeAddressing {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "always" => Ok(Self::Always),
            "never" => Ok(Self::Never),
            other => Err(format!("{other:?}: expected auto, always or never")),
        }
    }
}

impl fmt::Display for PublishNodeAddressing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Always => "always",
            Self::Never => "never",
        })
    }
}

/// Set by the agent next to the two addressing annotations it writes, so that `auto` can tell
/// its own annotations from another writer's.
pub const ADDRESSING_PUBLISHER_ANNOTATION: &str = "kube-egress.io/node-addressing-publisher";
const PUBLISHER: &str = "kube-egress-agent";

/// A node's addressing as the engine reads it from the two annotations.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeAddressing {
    /// The primary network per family (the address with its prefix length).
    pub primary: Vec<IpNet>,
    /// Every host address with its prefix length, sorted.
    pub host_cidrs: Vec<IpNet>,
}

/// The node's addressing from its host addresses (global scope, as found in the kernel).
/// Primary: per family, the host address equal to one of the node's InternalIP/ExternalIPs.
/// The egress IPs this agent placed are left out of both (OVN-K bug #5966: listing them made
/// every egress IP look like a host address, which the controller then refuses to assign).
pub fn node_addressing(host: &[IpNet], node_ips: &[IpAddr], placed: &[IpAddr]) -> NodeAddressing {
    let mut host_cidrs: Vec<IpNet> = host
        .iter()
        .filter(|n| !placed.contains(&n.addr()))
        .copied()
        .collect();
    host_cidrs.sort_by_key(|n| (Family::of(&n.addr()), n.addr(), n.prefix_len()));
    host_cidrs.dedup();
    let mut primary = Vec::new();
    for family in [Family::V4, Family::V6] {
        let found = node_ips
            .iter()
            .filter(|ip| Family::of(ip) == family)
            .find_map(|ip| host_cidrs.iter().find(|n| n.addr() == *ip));
        if let Some(net) = found {
            primary.push(*net);
        }
    }
    NodeAddressing {
        primary,
        host_cidrs,
    }
}

/// The two annotation values, spelled as OVN-Kubernetes writes them.
pub fn addressing_annotations(addressing: &NodeAddressing) -> BTreeMap<String, String> {
    let mut primary = serde_json::Map::new();
    for net in &addressing.primary {
        let key = match Family::of(&net.addr()) {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        };
        primary.insert(key.into(), Value::String(net.to_string()));
    }
    let cidrs: Vec<String> = addressing.host_cidrs.iter().map(IpNet::to_string).collect();
    BTreeMap::from([
        (
            NODE_PRIMARY_IFADDR_ANNOTATION.to_string(),
            Value::Object(primary).to_string(),
        ),
        (
            HOST_CIDRS_ANNOTATION.to_string(),
            Value::from(cidrs).to_string(),
        ),
    ])
}

/// The merge patch of the Node's annotations, or `None` when there is nothing to publish.
pub fn addressing_patch(
    node: &Node,
    addressing: &NodeAddressing,
    mode: PublishNodeAddressing,
) -> Option<Value> {
    let current = node.annotations();
    let ours = current
        .get(ADDRESSING_PUBLISHER_ANNOTATION)
        .map(String::as_str)
        == Some(PUBLISHER);
    let foreign = !ours
        && (current.contains_key(NODE_PRIMARY_IFADDR_ANNOTATION)
            || current.contains_key(HOST_CIDRS_ANNOTATION));
    match mode {
        PublishNodeAddressing::Never => return None,
        PublishNodeAddressing::Auto if foreign => return None,
        _ => {}
    }
    if addressing.primary.is_empty() && addressing.host_cidrs.is_empty() {
        return None;
    }
    let mut wanted = addressing_annotations(addressing);
    wanted.insert(ADDRESSING_PUBLISHER_ANNOTATION.into(), PUBLISHER.into());
    wanted.retain(|k, v| current.get(k) != Some(v));
    if wanted.is_empty() {
        return None;
    }
    Some(json!({ "metadata": { "annotations": wanted } }))
}

/// Sends the annotation patch of [`addressing_patch`].
pub async fn publish_addressing(
    client: &Client,
    node: &str,
    patch: &Value,
) -> Result<Node, kube::Error> {
    let api: Api<Node> = Api::all(client.clone());
    api.patch(node, &PatchParams::default(), &Patch::Merge(patch))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn node(annotations: &[(&str, &str)]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some("n1".into()),
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn a_plan_keeps_only_written_assignments() {
        use kube_egress_engine::{
            EgressHop, HostedIp, SnatEntry, SteeringEntry, SteeringRoute, SubnetKind,
        };
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let plan = NodePlan {
            egress_ips: vec![
                HostedIp {
                    ip: ip("10.0.0.100"),
                    egress_ip: "e1".into(),
                    mark: Some(50000),
                    kind: SubnetKind::Primary,
                    subnet: net("10.0.0.0/24"),
                },
                HostedIp {
                    ip: ip("10.0.0.101"),
                    egress_ip: "e2".into(),
                    mark: Some(50001),
                    kind: SubnetKind::Primary,
                    subnet: net("10.0.0.0/24"),
                },
            ],
            snat: vec![
                SnatEntry {
                    pod_ip: ip("10.128.0.5"),
                    egress_ip: ip("10.0.0.100"),
                },
                SnatEntry {
                    pod_ip: ip("10.128.0.6"),
                    egress_ip: ip("10.0.0.101"),
                },
            ],
            steering: vec![SteeringEntry {
                pod_ip: ip("10.128.0.7"),
                mark: 50002,
            }],
            steering_routes: vec![SteeringRoute {
                mark: 50002,
                family: Family::V4,
                egress_ip: "e3".into(),
                next_hops: vec![EgressHop {
                    node: "n2".into(),
                    address: ip("10.0.0.2"),
                    egress_ip: ip("10.0.0.102"),
                }],
            }],
            ..NodePlan::default()
        };
        let written: HashSet<(String, IpAddr)> = [("n1".to_string(), ip("10.0.0.100"))].into();
        let kept = restrict_to_written(plan.clone(), "n1", &written);
        assert_eq!(kept.egress_ips.len(), 1);
        assert_eq!(kept.egress_ips[0].ip, ip("10.0.0.100"));
        assert_eq!(kept.snat, plan.snat[..1]);
        assert!(kept.steering.is_empty() && kept.steering_routes.is_empty());
        // Everything written: nothing dropped.
        let all: HashSet<(String, IpAddr)> = [
            ("n1".to_string(), ip("10.0.0.100")),
            ("n1".to_string(), ip("10.0.0.101")),
            ("n2".to_string(), ip("10.0.0.102")),
        ]
        .into();
        assert_eq!(restrict_to_written(plan.clone(), "n1", &all), plan);
    }

    #[test]
    fn placed_egress_ips_are_never_host_addresses() {
        let a = node_addressing(
            &[
                net("192.168.1.10/24"),
                net("192.168.1.200/32"),
                net("172.16.0.5/16"),
                net("fd00::10/64"),
            ],
            &["192.168.1.10".parse().unwrap(), "fd00::10".parse().unwrap()],
            &["192.168.1.200".parse().unwrap()],
        );
        assert_eq!(a.primary, [net("192.168.1.10/24"), net("fd00::10/64")]);
        assert_eq!(
            a.host_cidrs,
            [
                net("172.16.0.5/16"),
                net("192.168.1.10/24"),
                net("fd00::10/64")
            ]
        );
    }

    #[test]
    fn patch_body_spells_the_annotations_like_ovn_kubernetes() {
        let a = NodeAddressing {
            primary: vec![net("192.168.1.10/24")],
            host_cidrs: vec![net("172.16.0.5/16"), net("192.168.1.10/24")],
        };
        let patch = addressing_patch(&node(&[]), &a, PublishNodeAddressing::Auto).unwrap();
        assert_eq!(
            patch,
            json!({ "metadata": { "annotations": {
                "k8s.ovn.org/node-primary-ifaddr": "{\"ipv4\":\"192.168.1.10/24\"}",
                "k8s.ovn.org/host-cidrs": "[\"172.16.0.5/16\",\"192.168.1.10/24\"]",
                "kube-egress.io/node-addressing-publisher": "kube-egress-agent"
            }}})
        );
    }

    #[test]
    fn auto_leaves_another_writers_annotations_alone() {
        let a = NodeAddressing {
            primary: vec![net("192.168.1.10/24")],
            host_cidrs: vec![net("192.168.1.10/24")],
        };
        let ovnk = node(&[(HOST_CIDRS_ANNOTATION, "[\"192.168.1.10/24\"]")]);
        assert_eq!(
            addressing_patch(&ovnk, &a, PublishNodeAddressing::Auto),
            None
        );
        assert!(addressing_patch(&ovnk, &a, PublishNodeAddressing::Always).is_some());
        assert_eq!(
            addressing_patch(&node(&[]), &a, PublishNodeAddressing::Never),
            None
        );
        // Our own annotations, up to date: nothing to write; changed: only what changed.
        let mut ours: Vec<(String, String)> = addressing_annotations(&a).into_iter().collect();
        ours.push((ADDRESSING_PUBLISHER_ANNOTATION.into(), PUBLISHER.into()));
        let ours_ref: Vec<(&str, &str)> =
            ours.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let current = node(&ours_ref);
        assert_eq!(
            addressing_patch(&current, &a, PublishNodeAddressing::Auto),
            None
        );
        let moved = NodeAddressing {
            primary: a.primary.clone(),
            host_cidrs: vec![net("10.9.0.1/16"), net("192.168.1.10/24")],
        };
        assert_eq!(
            addressing_patch(&current, &moved, PublishNodeAddressing::Auto),
            Some(json!({ "metadata": { "annotations": {
                "k8s.ovn.org/host-cidrs": "[\"10.9.0.1/16\",\"192.168.1.10/24\"]"
            }}}))
        );
    }
}
