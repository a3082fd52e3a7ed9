//! `kube-egress lab --dataplane ovn` end to end: the JSON report's contract, the exit status, and
//! that no namespace, OVN/OVS daemon or run directory of the run is left behind.
//!
//! Needs root and the OVN/OVS packages; skipped with a message otherwise.

use std::process::{Command, Stdio};

use kube_egress_ovn_testbed::unavailable_reason;
use kube_egress_testbed::list_namespaces;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_kube-egress");

/// Processes whose command line names the run directories of process `pid`
/// (`kube-egress-ovn-<pid>-<n>`): every daemon of its clusters does.
fn daemons_of(pid: u32) -> Vec<String> {
    let marker = format!("kube-egress-ovn-{pid}-");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&marker) {
            found.push(cmdline);
        }
    }
    found
}

#[test]
fn the_ovn_lab_reports_json_and_leaves_nothing_behind() {
    if let Some(reason) = unavailable_reason() {
        eprintln!("SKIPPED: the OVN lab {reason}");
        return;
    }
    let child = Command::new(BIN)
        .args([
            "lab",
            "--dataplane",
            "ovn",
            "--json",
            "--failover-samples",
            "2",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let leftovers: Vec<String> = list_namespaces()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(&format!("ko{pid}-")) || n.starts_with("kelab"))
        .collect();
    assert_eq!(leftovers, Vec::<String>::new(), "namespaces left behind");
    assert_eq!(daemons_of(pid), Vec::<String>::new(), "daemons left behind");
    let tmp = std::env::temp_dir();
    let dirs: Vec<String> = std::fs::read_dir(&tmp)
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(&format!("kube-egress-ovn-{pid}-")))
        .collect();
    assert_eq!(dirs, Vec::<String>::new(), "run directories left behind");

    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}); stderr:\n{stderr}"));
    assert_eq!(
        out.status.code(),
        Some(0),
        "report: {report:#}\nstderr:\n{stderr}"
    );
    assert_eq!(report["dataplane"], "ovn");
    let checks = report["checks"].as_array().unwrap();
    assert!(checks.len() >= 8, "{report:#}");
    for c in checks {
        assert_eq!(c["passed"], true, "{c}");
        assert!(c["name"].is_string() && c["detail"].is_string());
    }
    // Before: each pod's node IP on the external network (its gateway router's SNAT).
    assert_eq!(report["before"]["namespace1/pod1"], "172.18.0.2");
    assert_eq!(report["before"]["namespace1/pod2"], "172.18.0.3");
    assert_eq!(report["before"]["default/pod4"], "172.18.0.3");
    // After: the egress IPs of the external network; pod4 unchanged.
    let after2 = report["after"]["namespace1/pod2"].as_str().unwrap();
    assert!(
        ["172.18.0.100", "172.18.0.101"].contains(&after2),
        "{after2}"
    );
    assert_eq!(report["after"]["default/pod4"], "172.18.0.3");
    let items = report["statusItems"]["egressips-prod"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{items:?}");
    let mut nodes: Vec<&str> = items.iter().map(|i| i["node"].as_str().unwrap()).collect();
    nodes.sort();
    assert_eq!(nodes, ["node1", "node3"]);
    assert!(items.iter().all(|i| i["egressIP"].is_string()));

    let failover = &report["failover"];
    assert_eq!(failover["samples"], 2);
    assert_eq!(failover["ip"], "172.18.0.100");
    let p50 = failover["p50_ms"].as_f64().unwrap();
    assert!(p50 > 0.0, "{failover}");
    assert!(failover["p99_ms"].as_f64().unwrap() >= p50, "{failover}");
    for run in failover["runs"].as_array().unwrap() {
        assert_ne!(run["cut"], run["to"], "{run}");
        assert!(run["detected_ms"].as_f64().unwrap() > 0.0, "{run}");
    }
    assert!(stderr.contains("failover 2/2"), "progress:\n{stderr}");
}
