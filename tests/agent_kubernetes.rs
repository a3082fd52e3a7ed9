//! The agent's Kubernetes source end to end: the built `kube-egress agent`, in a node namespace
//! of the lab testbed, reads the cluster from the test API server (served over HTTP inside that
//! namespace) and applies the plan that follows from the statuses the controller wrote.
//!
//! Needs root (network namespaces); skipped with a message otherwise.

use std::process::Command;

use kube_egress_k8s::fake::ApiServer;
use kube_egress_testbed::{Testbed, is_root};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_kube-egress");
const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/cluster");

/// The objects of `examples/cluster` the test API server serves (not the EgressFirewall).
fn load_examples(api: &ApiServer) {
    for file in ["nodes", "namespaces", "pods", "servicecidr", "egressips"] {
        let text = std::fs::read_to_string(format!("{EXAMPLES}/{file}.yaml")).unwrap();
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
        for doc in docs.into_iter().filter(|d| !d.is_null()) {
            api.put(doc);
        }
    }
}

#[test]
fn agent_applies_the_written_assignment_from_the_kubernetes_api() {
    if !is_root() {
        eprintln!("SKIPPED: needs root (it creates network namespaces)");
        return;
    }
    let tb = Testbed::lab().unwrap_or_else(|e| panic!("building the lab testbed: {e}"));
    let ns = tb.node("node1").unwrap().netns().name().to_string();

    let api = ApiServer::new();
    load_examples(&api);
    // The controller assigned egressips-prod (node1 and node3) but has not assigned
    // egressip-reports yet: node1 could host 10.10.0.100, and must not place it on its own.
    let mut prod = api
        .get("k8s.ovn.org/v1", "EgressIP", "", "egressips-prod")
        .unwrap();
    prod["status"] = json!({ "items": [
        { "node": "node1", "egressIP": "192.168.126.10" },
        { "node": "node3", "egressIP": "192.168.126.102" }
    ] });
    prod["metadata"]["annotations"] = json!({ "k8s.ovn.org/egressip-mark": "50000" });
    api.put(prod);

    // The API server listens inside node1's namespace, where the agent runs.
    let listener = kube_egress_linux::netns::run_in(&ns, || async {
        std::net::TcpListener::bind("127.0.0.1:0")
    })
    .expect("entering node1's namespace")
    .expect("binding the test API server");
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let server = api.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            tokio::select! {
                _ = server.serve_http(listener, "agent") => {}
                _ = stopped => {}
            }
        });
    });

    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: http://{addr}\n\
             contexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n\
             current-context: test\nusers:\n- name: test\n  user: {{}}\n"
        ),
    )
    .unwrap();

    let out = Command::new("ip")
        .args([
            "netns", "exec", &ns, BIN, "agent", "--node", "node1", "--once",
        ])
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .env_remove("KUBECONFIG")
        .output()
        .expect("running the agent");
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    let addresses = Command::new("ip")
        .args(["-n", &ns, "-4", "-o", "addr", "show"])
        .output()
        .unwrap();
    let addresses = String::from_utf8_lossy(&addresses.stdout).into_owned();
    let _ = stop.send(());
    serving.join().unwrap();

    assert!(out.status.success(), "agent --once failed:\n{log}");
    assert!(log.contains("kernel matches"), "{log}");
    assert!(addresses.contains("192.168.126.10/32"), "{addresses}");
    assert!(!addresses.contains("10.10.0.100"), "{addresses}");
    // It read the cluster (list, then watch) and wrote nothing in --once mode.
    let requests = api.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.path == "/apis/k8s.ovn.org/v1/egressips" && !r.is_watch())
    );
    assert!(requests.iter().all(|r| r.method == "GET"), "{requests:?}");
}
