//! Watch recovery through kube-runtime's watcher: a dropped connection is watched again from the
//! last resourceVersion (no list), `410 Gone` is listed again and the relist removes what vanished.

mod common;

use std::time::Duration;

use common::{namespace, node};
use futures::StreamExt;
use kube_egress_k8s::fake::ApiServer;
use kube_egress_k8s::watch::{Kind, Update, watch_cluster};
use serde_json::json;

async fn next_node_update(updates: &mut (impl futures::Stream<Item = Update> + Unpin)) -> Update {
    loop {
        let update = tokio::time::timeout(Duration::from_secs(30), updates.next())
            .await
            .expect("an update within 30 s")
            .expect("the stream goes on");
        if matches!(update, Update::Node(_) | Update::NodeGone(_)) {
            return update;
        }
    }
}

fn node_lists(api: &ApiServer) -> Vec<String> {
    api.requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path == "/api/v1/nodes" && !r.is_watch())
        .map(|r| r.query.clone())
        .collect()
}

fn node_watches(api: &ApiServer) -> Vec<String> {
    api.requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path == "/api/v1/nodes" && r.is_watch())
        .map(|r| r.query.clone())
        .collect()
}

fn rv_param(query: &str) -> Option<String> {
    query
        .split('&')
        .find_map(|p| p.strip_prefix("resourceVersion="))
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_recover_from_dropped_connections_and_410_gone() {
    let api = ApiServer::new();
    api.put(node("n1", "10.0.0.1/24", true));
    api.put(node("n2", "10.0.0.2/24", true));
    api.put(namespace("prod", json!({ "env": "prod" })));
    let (mut updates, kinds) = watch_cluster(api.client("w"), true);
    assert!(kinds.contains(&Kind::ServiceCIDR));

    // The first list: both nodes, then the kind is synced.
    let mut synced = Vec::new();
    let mut nodes = Vec::new();
    while synced.len() < kinds.len() {
        match updates.next().await.expect("update") {
            Update::Synced(k) => synced.push(k),
            Update::Node(n) => nodes.push(n.metadata.name.unwrap()),
            _ => {}
        }
    }
    assert_eq!(nodes, ["n1", "n2"]);
    assert_eq!(node_lists(&api).len(), 1);

    // A change arrives as a watch event (with a BOOKMARK in between, which changes nothing).
    api.put(node("n3", "10.0.0.3/24", false));
    match next_node_update(&mut updates).await {
        Update::Node(n) => assert_eq!(n.metadata.name.as_deref(), Some("n3")),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(node_watches(&api).len(), 1);
    let first_watch_rv = rv_param(&node_watches(&api)[0]).expect("watch from the list's version");

    // Dropped connection: watched again from the last version seen, without a new list; what
    // changed in between is replayed.
    api.drop_watches();
    api.delete("v1", "Node", "", "n3");
    match next_node_update(&mut updates).await {
        Update::NodeGone(name) => assert_eq!(name, "n3"),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(node_lists(&api).len(), 1);
    let watches = node_watches(&api);
    assert_eq!(watches.len(), 2);
    let rewatch_rv = rv_param(&watches[1]).unwrap();
    assert!(rewatch_rv.parse::<u64>().unwrap() > first_watch_rv.parse::<u64>().unwrap());

    // 410 Gone: the history is compacted; the watcher lists again, and the relist reports the
    // node deleted while no watch could see it.
    api.compact();
    api.delete("v1", "Node", "", "n2");
    match next_node_update(&mut updates).await {
        Update::NodeGone(name) => assert_eq!(name, "n2"),
        other => panic!("unexpected {other:?}"),
    }
    match next_node_update(&mut updates).await {
        Update::Node(n) => assert_eq!(n.metadata.name.as_deref(), Some("n1")),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(node_lists(&api).len(), 2, "a relist after 410 Gone");
}
