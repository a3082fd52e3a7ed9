//! The agent's Kubernetes source: its plan follows the statuses the controller writes, and the
//! node addressing patch it sends.

mod common;

use std::time::Duration;

use common::*;
use kube_egress_engine::Config;
use kube_egress_k8s::agent::{
    KubeSource, PublishNodeAddressing, addressing_patch, node_addressing, publish_addressing,
};
use kube_egress_k8s::fake::ApiServer;
use serde_json::json;

async fn next(source: &mut KubeSource) -> std::sync::Arc<kube_egress_k8s::agent::AgentView> {
    tokio::time::timeout(Duration::from_secs(30), source.next())
        .await
        .expect("a view within 30 s")
        .expect("the source goes on")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plan_follows_the_written_status_only() {
    let api = ApiServer::new();
    api.put(node("n1", "10.0.0.1/24", true));
    api.put(node("n2", "10.0.0.2/24", true));
    api.put(namespace("prod", json!({ "env": "prod" })));
    api.put(pod("prod", "web", "n2", "10.128.7.5"));
    // Written by the controller: 10.0.0.100 on n1. 10.0.0.101 is not assigned (yet): the agent
    // must not place it, although n1 could host it.
    api.put(with_status(
        egress_ip("e1", &["10.0.0.100", "10.0.0.101"]),
        &[("n1", "10.0.0.100")],
        50007,
    ));

    let mut source = KubeSource::start(api.client("agent-n1"), "n1", Config::default()).await;
    let view = next(&mut source).await;
    assert_eq!(view.tunnel, Some("10.0.0.1".parse().unwrap()));
    let hosted: Vec<String> = view
        .plan
        .egress_ips
        .iter()
        .map(|h| h.ip.to_string())
        .collect();
    assert_eq!(hosted, ["10.0.0.100"]);
    assert_eq!(view.plan.egress_ips[0].mark, Some(50007));
    assert_eq!(view.plan.snat.len(), 1);
    assert_eq!(view.plan.snat[0].pod_ip.to_string(), "10.128.7.5");

    // The controller moves the IP to n2: n1 hosts nothing any more.
    api.put(with_status(
        egress_ip("e1", &["10.0.0.100", "10.0.0.101"]),
        &[("n2", "10.0.0.100")],
        50007,
    ));
    let view = loop {
        let v = next(&mut source).await;
        if v.plan.egress_ips.is_empty() {
            break v;
        }
    };
    assert!(view.plan.snat.is_empty());

    // A pod on n1 is now steered to n2 with the object's mark.
    api.put(pod("prod", "api", "n1", "10.128.9.9"));
    let view = loop {
        let v = next(&mut source).await;
        if !v.plan.steering.is_empty() {
            break v;
        }
    };
    assert_eq!(view.plan.steering[0].pod_ip.to_string(), "10.128.9.9");
    assert_eq!(view.plan.steering[0].mark, 50007);
    assert_eq!(view.plan.steering_routes[0].next_hops[0].node, "n2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_addressing_is_published_without_the_placed_egress_ips() {
    let api = ApiServer::new();
    let mut bare = node("n1", "10.0.0.1/24", true);
    bare["metadata"]["annotations"] = json!({});
    api.put(bare);
    let client = api.client("agent-n1");
    let node_obj: k8s_openapi::api::core::v1::Node =
        serde_json::from_value(api.get("v1", "Node", "", "n1").unwrap()).unwrap();
    let addressing = node_addressing(
        &[
            "10.0.0.1/24".parse().unwrap(),
            "10.0.0.100/32".parse().unwrap(),
            "192.168.50.4/24".parse().unwrap(),
        ],
        &["10.0.0.1".parse().unwrap()],
        &["10.0.0.100".parse().unwrap()],
    );
    let patch = addressing_patch(&node_obj, &addressing, PublishNodeAddressing::Auto).unwrap();
    let written = publish_addressing(&client, "n1", &patch).await.unwrap();

    let sent = api
        .requests()
        .into_iter()
        .find(|r| r.method == "PATCH")
        .unwrap();
    assert_eq!(sent.path, "/api/v1/nodes/n1");
    assert_eq!(
        sent.content_type.as_deref(),
        Some("application/merge-patch+json")
    );
    assert_eq!(
        sent.body,
        Some(json!({ "metadata": { "annotations": {
            "k8s.ovn.org/node-primary-ifaddr": "{\"ipv4\":\"10.0.0.1/24\"}",
            "k8s.ovn.org/host-cidrs": "[\"10.0.0.1/24\",\"192.168.50.4/24\"]",
            "kube-egress.io/node-addressing-publisher": "kube-egress-agent"
        }}}))
    );
    // Written once; the same addressing again needs no write.
    assert_eq!(
        addressing_patch(&written, &addressing, PublishNodeAddressing::Auto),
        None
    );
}
