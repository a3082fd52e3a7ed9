//! Watch streams of the objects the engine reads, turned into [`Update`]s.
//!
//! Each kind is followed with kube-runtime's `watcher`, which lists, then watches from the list's
//! resourceVersion; after a dropped connection it watches again from the last version seen, and
//! after `410 Gone` (the version was compacted away) it lists again. A list arrives as
//! `Init`, `InitApply`..., `InitDone`; [`Tracker`] turns a re-list into upserts plus the removal
//! of every object the new list no longer holds, so a relist never leaves a stale object behind.

use std::collections::HashSet;
use std::fmt::Debug;
use std::pin::Pin;

use futures::{Stream, StreamExt};
use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::ServiceCIDR;
use kube::api::{Api, ListParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use kube_egress_api::EgressIP;
use kube_egress_engine::{NamespaceInfo, PodInfo};
use serde::de::DeserializeOwned;

use crate::log;

/// The kinds of object watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Node,
    Namespace,
    Pod,
    EgressIP,
    ServiceCIDR,
}

/// One change of the watched cluster. Nodes and EgressIPs are kept whole (their uid,
/// annotations and status are needed by the writers); pods and namespaces are converted at once.
#[derive(Debug, Clone)]
pub enum Update {
    Node(Box<Node>),
    NodeGone(String),
    Namespace(NamespaceInfo),
    NamespaceGone(String),
    Pod(PodInfo),
    PodGone {
        namespace: String,
        name: String,
    },
    EgressIp(Box<EgressIP>),
    EgressIpGone(String),
    ServiceCidr {
        name: String,
        cidrs: Vec<IpNet>,
    },
    ServiceCidrGone(String),
    /// The kind's first complete list has been delivered (once per kind).
    Synced(Kind),
}

/// A watched object's key: `namespace/name`, or `name` when cluster-scoped.
fn key_of<K: Resource>(obj: &K) -> String {
    match obj.meta().namespace.as_deref() {
        Some(ns) => format!("{ns}/{}", obj.name_any()),
        None => obj.name_any(),
    }
}

/// What a watch event means for the set of known objects.
#[derive(Debug, PartialEq)]
pub enum Delta<K> {
    Upsert(K),
    /// The object with this key is gone.
    Gone(String),
    /// The first complete list was delivered.
    Synced,
}

/// Follows one kind's watch events: which objects exist, and what a relist removed.
#[derive(Debug)]
pub struct Tracker<K> {
    known: HashSet<String>,
    relist: Option<Vec<K>>,
    synced: bool,
}

impl<K> Default for Tracker<K> {
    fn default() -> Self {
        Tracker {
            known: HashSet::new(),
            relist: None,
            synced: false,
        }
    }
}

impl<K: Resource> Tracker<K> {
    pub fn on(&mut self, event: watcher::Event<K>) -> Vec<Delta<K>> {
        match event {
            watcher::Event::Init => {
                self.relist = Some(Vec::new());
                Vec::new()
            }
            watcher::Event::InitApply(obj) => {
                self.relist.get_or_insert_with(Vec::new).push(obj);
                Vec::new()
            }
            watcher::Event::InitDone => {
                let listed = self.relist.take().unwrap_or_default();
                let keys: HashSet<String> = listed.iter().map(key_of).collect();
                let mut gone: Vec<String> = self.known.difference(&keys).cloned().collect();
                gone.sort();
                let mut out: Vec<Delta<K>> = gone.into_iter().map(Delta::Gone).collect();
                out.extend(listed.into_iter().map(Delta::Upsert));
                self.known = keys;
                if !self.synced {
                    self.synced = true;
                    out.push(Delta::Synced);
                }
                out
            }
            watcher::Event::Apply(obj) => {
                self.known.insert(key_of(&obj));
                vec![Delta::Upsert(obj)]
            }
            watcher::Event::Delete(obj) => {
                let key = key_of(&obj);
                self.known.remove(&key);
                vec![Delta::Gone(key)]
            }
        }
    }
}

type Updates = Pin<Box<dyn Stream<Item = Update> + Send>>;

/// One kind's watch as a stream of [`Update`]s. Watch errors are logged; the watcher recovers
/// by itself (re-watch or re-list) after a backoff.
fn follow<K, F>(api: Api<K>, kind: Kind, convert: F) -> Updates
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    F: Fn(Delta<K>) -> Option<Update> + Send + 'static,
{
    let mut tracker = Tracker::<K>::default();
    let config = watcher::Config::default();
    watcher(api, config)
        .default_backoff()
        .flat_map(move |result| {
            let updates: Vec<Update> = match result {
                Ok(event) => tracker
                    .on(event)
                    .into_iter()
                    .filter_map(|d| match d {
                        Delta::Synced => Some(Update::Synced(kind)),
                        other => convert(other),
                    })
                    .collect(),
                Err(e) => {
                    log("watch", format!("{kind:?}: {e}; recovering"));
                    Vec::new()
                }
            };
            futures::stream::iter(updates)
        })
        .boxed()
}

fn split_key(key: &str) -> (String, String) {
    match key.split_once('/') {
        Some((ns, name)) => (ns.to_string(), name.to_string()),
        None => (String::new(), key.to_string()),
    }
}

/// The CIDRs of a ServiceCIDR object; malformed entries are logged and skipped.
pub fn service_cidrs_of(obj: &ServiceCIDR) -> Vec<IpNet> {
    let name = obj.name_any();
    obj.spec
        .as_ref()
        .and_then(|s| s.cidrs.as_ref())
        .into_iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, raw)| match raw.parse::<IpNet>() {
            Ok(net) => Some(net),
            Err(_) => {
                log(
                    "watch",
                    format!("ServiceCIDR {name}: spec.cidrs[{i}] {raw:?} is not a CIDR; ignored"),
                );
                None
            }
        })
        .collect()
}

/// Whether the API server serves `networking.k8s.io/v1` ServiceCIDR (Kubernetes 1.33+).
pub async fn serves_service_cidrs(client: &Client) -> bool {
    let api: Api<ServiceCIDR> = Api::all(client.clone());
    match api.list_metadata(&ListParams::default().limit(1)).await {
        Ok(_) => true,
        Err(kube::Error::Api(s)) if s.is_not_found() => false,
        Err(e) => {
            log(
                "watch",
                format!("checking for ServiceCIDR objects: {e}; not watching them"),
            );
            false
        }
    }
}

/// Every kind the engine reads, merged into one stream. `service_cidrs` adds the
/// `networking.k8s.io/v1` ServiceCIDR watch (see [`serves_service_cidrs`]).
pub fn watch_cluster(client: Client, service_cidrs: bool) -> (Updates, Vec<Kind>) {
    let mut streams: Vec<Updates> = vec![
        follow(Api::<Node>::all(client.clone()), Kind::Node, |d| match d {
            Delta::Upsert(n) => Some(Update::Node(Box::new(n))),
            Delta::Gone(k) => Some(Update::NodeGone(k)),
            Delta::Synced => None,
        }),
        follow(
            Api::<Namespace>::all(client.clone()),
            Kind::Namespace,
            |d| match d {
                Delta::Upsert(n) => Some(Update::Namespace(NamespaceInfo::from_namespace(&n))),
                Delta::Gone(k) => Some(Update::NamespaceGone(k)),
                Delta::Synced => None,
            },
        ),
        follow(Api::<Pod>::all(client.clone()), Kind::Pod, |d| match d {
            Delta::Upsert(p) => Some(Update::Pod(PodInfo::from_pod(&p))),
            Delta::Gone(k) => {
                let (namespace, name) = split_key(&k);
                Some(Update::PodGone { namespace, name })
            }
            Delta::Synced => None,
        }),
        follow(
            Api::<EgressIP>::all(client.clone()),
            Kind::EgressIP,
            |d| match d {
                Delta::Upsert(e) => Some(Update::EgressIp(Box::new(e))),
                Delta::Gone(k) => Some(Update::EgressIpGone(k)),
                Delta::Synced => None,
            },
        ),
    ];
    let mut kinds = vec![Kind::Node, Kind::Namespace, Kind::Pod, Kind::EgressIP];
    if service_cidrs {
        streams.push(follow(
            Api::<ServiceCIDR>::all(client),
            Kind::ServiceCIDR,
            |d| match d {
                Delta::Upsert(s) => Some(Update::ServiceCidr {
                    name: s.name_any(),
                    cidrs: service_cidrs_of(&s),
                }),
                Delta::Gone(k) => Some(Update::ServiceCidrGone(k)),
                Delta::Synced => None,
            },
        ));
        kinds.push(Kind::ServiceCIDR);
    }
    (futures::stream::select_all(streams).boxed(), kinds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn ns(name: &str) -> Namespace {
        Namespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn keys(deltas: &[Delta<Namespace>]) -> Vec<String> {
        deltas
            .iter()
            .map(|d| match d {
                Delta::Upsert(n) => format!("+{}", n.name_any()),
                Delta::Gone(k) => format!("-{k}"),
                Delta::Synced => "synced".into(),
            })
            .collect()
    }

    #[test]
    fn a_relist_removes_what_the_new_list_lacks_and_syncs_once() {
        let mut t = Tracker::<Namespace>::default();
        assert!(t.on(watcher::Event::Init).is_empty());
        assert!(t.on(watcher::Event::InitApply(ns("a"))).is_empty());
        assert!(t.on(watcher::Event::InitApply(ns("b"))).is_empty());
        assert_eq!(
            keys(&t.on(watcher::Event::InitDone)),
            ["+a", "+b", "synced"]
        );
        assert_eq!(keys(&t.on(watcher::Event::Apply(ns("c")))), ["+c"]);
        assert_eq!(keys(&t.on(watcher::Event::Delete(ns("a")))), ["-a"]);
        // After a 410 Gone the watcher lists again: c vanished meanwhile, d appeared.
        t.on(watcher::Event::Init);
        t.on(watcher::Event::InitApply(ns("b")));
        t.on(watcher::Event::InitApply(ns("d")));
        assert_eq!(keys(&t.on(watcher::Event::InitDone)), ["-c", "+b", "+d"]);
    }
}
