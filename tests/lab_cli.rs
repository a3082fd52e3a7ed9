//! `kube-egress lab` end to end, as a user runs it: the report, the exit status, and that nothing
//! is left behind — after a normal run, after Ctrl-C, and after `--keep` + `lab down`.
//!
//! Needs root (network namespaces); skipped with a message otherwise.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kube_egress_testbed::{is_root, list_namespaces};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_kube-egress");

fn namespaces_with(prefix: &str) -> Vec<String> {
    list_namespaces()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// The namespace prefix of a lab run by process `pid` (`ke<pid>-<n>-`).
fn run_prefix(pid: u32) -> String {
    format!("ke{pid}-")
}

#[test]
fn the_lab_passes_reports_json_and_leaves_nothing_behind() {
    if !is_root() {
        eprintln!("SKIPPED: the lab needs root");
        return;
    }
    let child = Command::new(BIN)
        .args(["lab", "--json", "--failover-samples", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}); stderr:\n{stderr}"));
    assert_eq!(
        out.status.code(),
        Some(0),
        "report: {report:#}\nstderr:\n{stderr}"
    );

    let checks = report["checks"].as_array().unwrap();
    assert!(checks.len() >= 8, "{report:#}");
    for c in checks {
        assert_eq!(c["passed"], true, "{c}");
        assert!(c["name"].is_string() && c["detail"].is_string());
    }
    // Seed 002 walkthrough: node addresses before, egress IPs after.
    assert_eq!(report["before"]["namespace1/pod2"], "192.168.126.3");
    assert_eq!(report["before"]["default/pod4"], "192.168.126.3");
    let after2 = report["after"]["namespace1/pod2"].as_str().unwrap();
    assert!(
        ["192.168.126.10", "192.168.126.102"].contains(&after2),
        "{after2}"
    );
    assert_eq!(report["after"]["default/pod4"], "192.168.126.3");
    let items = &report["statusItems"]["egressips-prod"];
    assert_eq!(items.as_array().unwrap().len(), 2, "{items}");
    assert!(items[0]["node"].is_string() && items[0]["egressIP"].is_string());
    // Seed 000.
    assert_eq!(report["secondary"]["seen"][0], "10.10.0.100");
    let failover = &report["failover"];
    assert_eq!(failover["samples"], 3);
    assert!(failover["p50_ms"].as_f64().unwrap() > 0.0, "{failover}");
    assert!(
        failover["p99_ms"].as_f64().unwrap() >= failover["p50_ms"].as_f64().unwrap(),
        "{failover}"
    );
    assert!(stderr.contains("failover 3/3"), "progress:\n{stderr}");

    assert_eq!(namespaces_with(&run_prefix(pid)), Vec::<String>::new());
}

#[test]
fn ctrl_c_removes_the_lab() {
    if !is_root() {
        eprintln!("SKIPPED: the lab needs root");
        return;
    }
    let mut child = Command::new(BIN)
        .args(["lab", "--failover-samples", "200"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    // Interrupt in the middle of the failover samples.
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let go = line.contains("failover 2/200");
        seen.push(line);
        if go {
            break;
        }
    }
    assert!(
        seen.last().is_some_and(|l| l.contains("failover 2/200")),
        "the lab ended early:\n{}",
        seen.join("\n")
    );
    assert!(!namespaces_with(&run_prefix(pid)).is_empty());
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGINT);
    }
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let started = Instant::now();
    let status = child.wait().unwrap();
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(status.code(), Some(130), "{}", rest.join("\n"));
    assert!(
        rest.iter().any(|l| l.contains("removed every namespace")),
        "{}",
        rest.join("\n")
    );
    assert_eq!(namespaces_with(&run_prefix(pid)), Vec::<String>::new());
}

#[test]
fn a_kept_lab_keeps_answering_until_lab_down() {
    if !is_root() {
        eprintln!("SKIPPED: the lab needs root");
        return;
    }
    let prefix = format!("kelabtest{}", std::process::id());
    let out = Command::new(BIN)
        .args([
            "lab",
            "--keep",
            "--failover-samples",
            "0",
            "--prefix",
            &prefix,
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("kube-egress lab down"), "{stderr}");
    let kept = namespaces_with(&format!("{prefix}-"));
    assert!(kept.len() >= 10, "{kept:?}");

    // The data plane and the web servers outlive the lab process.
    let pod2 = format!("{prefix}-pod2");
    let reply =
        kube_egress_testbed::http_get(&pod2, "http://203.0.113.10/", Duration::from_secs(2))
            .unwrap_or_else(|e| {
                let _ = kube_egress_testbed::remove_namespaces_with_prefix(&format!("{prefix}-"));
                panic!("request from the kept lab: {e}")
            });
    let seen = reply.seen_source().map(|s| s.to_string());
    // A second lab with the same prefix refuses to start over the kept one.
    let again = Command::new(BIN)
        .args(["lab", "--keep", "--prefix", &prefix])
        .output()
        .unwrap();

    let down = Command::new(BIN)
        .args(["lab", "down", "--prefix", &prefix])
        .output()
        .unwrap();
    assert_eq!(
        down.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert_eq!(namespaces_with(&format!("{prefix}-")), Vec::<String>::new());
    // Checked after `lab down` so that a failure leaves nothing behind.
    // Without failover samples the seed's egressips-prod is still applied: pod2 leaves with one
    // of its IPs.
    assert!(
        matches!(seen.as_deref(), Some("192.168.126.10" | "192.168.126.102")),
        "{seen:?}"
    );
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("still up"));
    let down_again = Command::new(BIN)
        .args(["lab", "down", "--prefix", &prefix])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&down_again.stderr).contains("no lab is up"));
}
