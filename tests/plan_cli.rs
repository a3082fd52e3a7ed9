//! `kube-egress plan` end to end: the built binary over manifests on disk.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};

const EXAMPLE: &str = "examples/cluster";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(args: &[&str]) -> Output {
    run_with_stdin(args, None)
}

fn run_with_stdin(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kube-egress"))
        .args(args)
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kube-egress");
    {
        let mut input = child.stdin.take().expect("stdin");
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).expect("write stdin");
        }
    }
    child.wait_with_output().expect("run kube-egress")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).expect("utf-8 stdout")
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).expect("utf-8 stderr")
}

/// Runs a plan that must succeed and returns its JSON document.
fn plan_json(args: &[&str]) -> Value {
    let mut all = vec!["plan", "-o", "json"];
    all.extend_from_slice(args);
    let o = run(&all);
    assert!(o.status.success(), "{all:?} failed: {}", stderr(&o));
    serde_json::from_str(&stdout(&o)).expect("stdout is one JSON document")
}

/// Runs a plan that must fail with exit status 1 and returns its stderr.
fn plan_error(args: &[&str]) -> String {
    plan_failure(args, 1)
}

/// Runs a plan that clap must refuse (exit status 2) and returns its stderr.
fn usage_error(args: &[&str]) -> String {
    plan_failure(args, 2)
}

fn plan_failure(args: &[&str], code: i32) -> String {
    let mut all = vec!["plan"];
    all.extend_from_slice(args);
    let o = run(&all);
    assert_eq!(o.status.code(), Some(code), "{all:?}: {}", stderr(&o));
    assert!(o.stdout.is_empty(), "no plan on error: {}", stdout(&o));
    stderr(&o)
}

fn egress_ip<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["egressIPs"]
        .as_array()
        .expect("egressIPs")
        .iter()
        .find(|e| e["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("EgressIP {name} in output"))
}

/// `status.items` of an EgressIP as egress IP → node.
fn assignments(doc: &Value, name: &str) -> BTreeMap<String, String> {
    egress_ip(doc, name)["status"]["items"]
        .as_array()
        .expect("status.items")
        .iter()
        .map(|i| {
            (
                i["egressIP"].as_str().unwrap().to_string(),
                i["node"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn mark(doc: &Value, name: &str) -> u64 {
    egress_ip(doc, name)["metadata"]["annotations"]["k8s.ovn.org/egressip-mark"]
        .as_str()
        .expect("mark annotation is a string")
        .parse()
        .expect("mark is a number")
}

fn events(doc: &Value) -> Vec<(String, String, String)> {
    doc["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_string(),
                e["name"].as_str().unwrap().to_string(),
                e["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// SNAT entries of a node as (pod IP, egress IP).
fn snat(doc: &Value, node: &str) -> BTreeSet<(String, String)> {
    doc["nodes"][node]["snat"]
        .as_array()
        .unwrap_or_else(|| panic!("nodes.{node}.snat"))
        .iter()
        .map(|s| {
            (
                s["podIP"].as_str().unwrap().to_string(),
                s["egressIP"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Steered pod IP → mark on a node.
fn steering(doc: &Value, node: &str) -> BTreeMap<String, u64> {
    doc["nodes"][node]["steering"]
        .as_array()
        .unwrap_or_else(|| panic!("nodes.{node}.steering"))
        .iter()
        .map(|s| {
            (
                s["podIP"].as_str().unwrap().to_string(),
                s["mark"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write scratch file");
    path.to_str().expect("utf-8 path").to_string()
}

fn example(file: &str) -> String {
    format!("{EXAMPLE}/{file}")
}

const POD1: &str = "10.128.0.10"; // namespace1, node1
const POD2: &str = "10.128.2.10"; // namespace1, node2
const POD3: &str = "10.128.4.10"; // namespace2, node3
const POD4: &str = "10.128.2.11"; // default, node2, app: reports
const EIP_A: &str = "192.168.126.10";
const EIP_B: &str = "192.168.126.102";

#[test]
fn example_cluster_json() {
    let doc = plan_json(&["-f", EXAMPLE]);
    let top: Vec<&String> = doc.as_object().unwrap().keys().collect();
    assert_eq!(top, ["egressIPs", "events", "nodes"]);

    // Input order, objects as given plus status and mark.
    let names: Vec<&str> = doc["egressIPs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["egressips-prod", "egressip-reports"]);
    let prod = egress_ip(&doc, "egressips-prod");
    assert_eq!(prod["apiVersion"], "k8s.ovn.org/v1");
    assert_eq!(prod["kind"], "EgressIP");
    assert_eq!(prod["spec"]["egressIPs"], json!([EIP_A, EIP_B]));
    assert_eq!(
        prod["spec"]["namespaceSelector"],
        json!({"matchLabels": {"env": "prod"}})
    );
    assert_eq!(
        prod["metadata"]["creationTimestamp"],
        "2024-06-01T10:00:00Z"
    );

    // One IP on node1, the other on node3 (seed 003 §15.9.1.4).
    let prod_status = assignments(&doc, "egressips-prod");
    assert_eq!(
        prod_status.keys().collect::<Vec<_>>(),
        [EIP_A, EIP_B],
        "both IPs assigned"
    );
    assert_eq!(
        prod_status.values().collect::<BTreeSet<_>>(),
        BTreeSet::from([&"node1".to_string(), &"node3".to_string()])
    );
    let reports_status = assignments(&doc, "egressip-reports");
    assert_eq!(reports_status.len(), 1);
    let reports_node = reports_status["10.10.0.100"].clone();
    assert!(reports_node == "node1" || reports_node == "node3");

    let prod_mark = mark(&doc, "egressips-prod");
    let reports_mark = mark(&doc, "egressip-reports");
    assert!((50000..=54999).contains(&prod_mark));
    assert!((50000..=54999).contains(&reports_mark));
    assert_ne!(prod_mark, reports_mark);
    assert_eq!(events(&doc), []);

    let nodes: Vec<&String> = doc["nodes"].as_object().unwrap().keys().collect();
    assert_eq!(nodes, ["node1", "node2", "node3"]);

    // Each egress node hosts its prod IP and SNATs every prod pod to it; the reports pod only to
    // the secondary-network IP.
    for (ip, node) in &prod_status {
        let hosted = doc["nodes"][node]["egressIPs"].as_array().unwrap();
        let entry = hosted
            .iter()
            .find(|h| h["ip"] == ip.as_str())
            .unwrap_or_else(|| panic!("{node} hosts {ip}"));
        assert_eq!(entry["egressIPName"], "egressips-prod");
        assert_eq!(entry["kind"], "primary");
        assert_eq!(entry["subnet"], "192.168.64.0/18");
        assert_eq!(entry["mark"], prod_mark);
        let snat = snat(&doc, node);
        for pod in [POD1, POD2, POD3] {
            assert!(
                snat.contains(&(pod.to_string(), ip.clone())),
                "{node}: SNAT {pod} -> {ip} in {snat:?}"
            );
        }
        assert!(!snat.contains(&(POD4.to_string(), ip.clone())));
    }
    let secondary = doc["nodes"][&reports_node]["egressIPs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["ip"] == "10.10.0.100")
        .expect("secondary IP hosted")
        .clone();
    assert_eq!(secondary["kind"], "secondary");
    assert_eq!(secondary["subnet"], "10.10.0.0/24");
    assert!(snat(&doc, &reports_node).contains(&(POD4.to_string(), "10.10.0.100".to_string())));

    // node2 hosts nothing and steers its two served pods to the egress nodes.
    assert_eq!(doc["nodes"]["node2"]["egressIPs"], json!([]));
    assert_eq!(snat(&doc, "node2"), BTreeSet::new());
    assert_eq!(
        steering(&doc, "node2"),
        BTreeMap::from([
            (POD2.to_string(), prod_mark),
            (POD4.to_string(), reports_mark)
        ])
    );
    let routes = doc["nodes"]["node2"]["steeringRoutes"].as_array().unwrap();
    let prod_route = routes
        .iter()
        .find(|r| r["mark"] == prod_mark)
        .expect("route for the prod mark");
    assert_eq!(prod_route["family"], "v4");
    let hops: BTreeSet<(String, String, String)> = prod_route["nextHops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["node"].as_str().unwrap().to_string(),
                h["address"].as_str().unwrap().to_string(),
                h["egressIP"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected: BTreeSet<(String, String, String)> = prod_status
        .iter()
        .map(|(ip, node)| {
            let address = if node == "node1" {
                "192.168.126.2"
            } else {
                "192.168.126.4"
            };
            (node.clone(), address.to_string(), ip.clone())
        })
        .collect();
    assert_eq!(hops, expected);

    // Pods local to an egress node of their EgressIP are not steered.
    assert!(!steering(&doc, "node1").contains_key(POD1));
    assert!(!steering(&doc, "node3").contains_key(POD3));

    // East-west exclusions: pod CIDRs of the nodes, the ServiceCIDR, the node addresses.
    let exclusions = &doc["nodes"]["node2"]["exclusions"];
    assert_eq!(
        exclusions["podCIDRs"],
        json!(["10.128.0.0/23", "10.128.2.0/23", "10.128.4.0/23"])
    );
    assert_eq!(exclusions["serviceCIDRs"], json!(["172.30.0.0/16"]));
    let node_ips = exclusions["nodeIPs"].as_array().unwrap();
    assert!(node_ips.contains(&json!("192.168.126.3")));
}

#[test]
fn cidr_flags_extend_the_exclusions() {
    let doc = plan_json(&[
        "-f",
        EXAMPLE,
        "--cluster-cidr",
        "10.128.0.0/14",
        "--service-cidr",
        "fd00:1::/112",
    ]);
    let exclusions = &doc["nodes"]["node1"]["exclusions"];
    assert!(
        exclusions["podCIDRs"]
            .as_array()
            .unwrap()
            .contains(&json!("10.128.0.0/14"))
    );
    assert!(
        exclusions["serviceCIDRs"]
            .as_array()
            .unwrap()
            .contains(&json!("fd00:1::/112"))
    );
    let e = usage_error(&["-f", EXAMPLE, "--service-cidr", "nonsense"]);
    assert!(
        e.contains("--service-cidr") && e.contains("nonsense"),
        "{e}"
    );
}

#[test]
fn example_cluster_text() {
    let o = run(&["plan", "-f", EXAMPLE]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stderr(&o), "", "the example loads without warnings");
    let text = stdout(&o);
    let lines: Vec<&str> = text.lines().collect();

    let header = lines[0];
    assert!(header.starts_with("NAME "), "{text}");
    let columns = ["EGRESSIPS", "ASSIGNED NODE", "ASSIGNED EGRESSIPS"];
    let starts: Vec<usize> = columns
        .iter()
        .map(|c| {
            header
                .find(c)
                .unwrap_or_else(|| panic!("{c} in {header:?}"))
        })
        .collect();
    assert!(starts.windows(2).all(|w| w[0] < w[1]), "{header}");

    let doc = plan_json(&["-f", EXAMPLE]);
    let prod = assignments(&doc, "egressips-prod");
    let row = lines
        .iter()
        .find(|l| l.starts_with("egressips-prod "))
        .expect("egressips-prod row");
    // Cells start under their headers; arrays are comma-joined in status order.
    let cell = |i: usize| row[starts[i]..].split_whitespace().next().unwrap();
    assert_eq!(cell(0), format!("{EIP_A},{EIP_B}"));
    assert_eq!(cell(1), format!("{},{}", prod[EIP_A], prod[EIP_B]));
    assert_eq!(cell(2), format!("{EIP_A},{EIP_B}"));
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("egressip-reports ") && l.contains("10.10.0.100")),
        "{text}"
    );

    assert!(lines.contains(&"No events."), "{text}");
    assert!(lines.contains(&"Nodes:"), "{text}");
    assert!(lines.contains(&"  node1 (egress node)"), "{text}");
    assert!(
        lines.contains(&"  node2 (not an egress node: not labelled k8s.ovn.org/egress-assignable)"),
        "{text}"
    );
    let steered = lines
        .iter()
        .find(|l| l.contains("namespace1/pod2"))
        .expect("pod2 steered on node2");
    assert!(steered.trim_start().starts_with(POD2), "{steered}");
    assert!(steered.contains(&format!("mark {}", mark(&doc, "egressips-prod"))));
    assert!(steered.contains("node1 192.168.126.2") && steered.contains("node3 192.168.126.4"));
    assert!(
        lines
            .iter()
            .any(|l| l.contains("10.10.0.100") && l.contains("secondary   10.10.0.0/24")),
        "{text}"
    );
    assert!(
        lines.iter().all(|l| l == &l.trim_end()),
        "no trailing blanks"
    );
}

#[test]
fn yaml_output_is_the_json_document() {
    let json = plan_json(&["-f", EXAMPLE]);
    let o = run(&["plan", "-f", EXAMPLE, "-o", "yaml"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let yaml: Value = serde_saphyr::from_str(&stdout(&o)).expect("stdout is YAML");
    assert_eq!(yaml, json);
}

#[test]
fn unreachable_node_leaves_one_ip_unassigned() {
    let doc = plan_json(&["-f", EXAMPLE, "--unreachable", "node1"]);
    let prod = assignments(&doc, "egressips-prod");
    assert_eq!(
        prod.len(),
        1,
        "node3 is the only egress node left: {prod:?}"
    );
    assert_eq!(prod.values().next().unwrap(), "node3");
    assert_eq!(
        assignments(&doc, "egressip-reports")["10.10.0.100"],
        "node3"
    );
    assert!(
        events(&doc).contains(&(
            "EgressIP".to_string(),
            "egressips-prod".to_string(),
            "UnassignedRequest".to_string()
        )),
        "{:?}",
        events(&doc)
    );
    assert_eq!(doc["nodes"]["node1"]["egressIPs"], json!([]));
    // node1 keeps sending its served pod to the remaining egress node.
    assert!(steering(&doc, "node1").contains_key(POD1));

    let text = stdout(&run(&["plan", "-f", EXAMPLE, "--unreachable", "node1"]));
    assert!(
        text.contains("node1 (not an egress node: unreachable)"),
        "{text}"
    );
    assert!(
        text.contains("Warning   UnassignedRequest   EgressIP/egressips-prod"),
        "{text}"
    );

    // Same result spelt twice or comma-separated; unknown nodes are refused.
    assert_eq!(
        plan_json(&["-f", EXAMPLE, "--unreachable", "node1,node1"]),
        doc
    );
    let both = plan_json(&[
        "-f",
        EXAMPLE,
        "--unreachable",
        "node1",
        "--unreachable",
        "node3",
    ]);
    assert_eq!(assignments(&both, "egressips-prod").len(), 0);
    let e = plan_error(&["-f", EXAMPLE, "--unreachable", "node9"]);
    assert!(
        e.contains("node9") && e.contains("node1, node2, node3"),
        "{e}"
    );
    let e = usage_error(&["-f", EXAMPLE, "--unreachable", "node1", "--reachable-all"]);
    assert!(e.contains("cannot be used with"), "{e}");
    assert_eq!(
        plan_json(&["-f", EXAMPLE, "--reachable-all"]),
        plan_json(&["-f", EXAMPLE])
    );
}

/// The EgressIP objects of a plan as a `kind: List` manifest, as a controller would have left them.
fn egress_ips_as_list(doc: &Value) -> String {
    serde_json::to_string(&json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": doc["egressIPs"],
    }))
    .unwrap()
}

#[test]
fn given_status_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = |eips: &str| {
        vec![
            "-f".to_string(),
            example("nodes.yaml"),
            "-f".to_string(),
            example("namespaces.yaml"),
            "-f".to_string(),
            example("pods.yaml"),
            "-f".to_string(),
            eips.to_string(),
        ]
    };
    // Written by hand: the first IP on node3, which a fresh plan would not choose.
    let eips = write(
        dir.path(),
        "eips.yaml",
        "apiVersion: k8s.ovn.org/v1
kind: EgressIP
metadata:
  name: egressips-prod
spec:
  egressIPs: [192.168.126.10, 192.168.126.102]
  namespaceSelector:
    matchLabels: {env: prod}
status:
  items:
  - node: node3
    egressIP: 192.168.126.10
",
    );
    let args = inputs(&eips);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let doc = plan_json(&args);
    assert_eq!(
        assignments(&doc, "egressips-prod"),
        BTreeMap::from([
            (EIP_A.to_string(), "node3".to_string()),
            (EIP_B.to_string(), "node1".to_string())
        ])
    );

    // Feeding a plan's objects back keeps the assignment; when node1 then fails, only its IP is
    // lost (it cannot move to node3, which holds the other one) and node3 keeps its IP.
    let previous = plan_json(&["-f", EXAMPLE]);
    let before = assignments(&previous, "egressips-prod");
    let on_node3 = before
        .iter()
        .find(|(_, n)| n.as_str() == "node3")
        .map(|(ip, _)| ip.clone())
        .unwrap();
    let list = write(dir.path(), "previous.json", &egress_ips_as_list(&previous));
    let args = inputs(&list);
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(
        assignments(&plan_json(&args), "egressips-prod"),
        before,
        "a replan of a planned cluster moves nothing"
    );
    args.extend(["--unreachable", "node1"]);
    let after = plan_json(&args);
    assert_eq!(
        assignments(&after, "egressips-prod"),
        BTreeMap::from([(on_node3, "node3".to_string())])
    );
    assert!(
        events(&after)
            .iter()
            .any(|(_, name, reason)| name == "egressips-prod" && reason == "UnassignedRequest")
    );
    // The marks given in the input are kept.
    assert_eq!(
        mark(&after, "egressips-prod"),
        mark(&previous, "egressips-prod")
    );
}

#[test]
fn invalid_objects_are_events_not_errors() {
    let dir = tempfile::tempdir().unwrap();
    let eips = write(
        dir.path(),
        "bad.yaml",
        "apiVersion: k8s.ovn.org/v1
kind: EgressIP
metadata:
  name: bad-ip
spec:
  egressIPs: [not-an-ip, 192.168.126.10]
  namespaceSelector: {matchLabels: {env: prod}}
",
    );
    let doc = plan_json(&[
        "-f",
        &example("nodes.yaml"),
        "-f",
        &example("namespaces.yaml"),
        "-f",
        &eips,
    ]);
    assert!(
        events(&doc).contains(&(
            "EgressIP".to_string(),
            "bad-ip".to_string(),
            "InvalidEgressIP".to_string()
        )),
        "{:?}",
        events(&doc)
    );
    // The valid IP is still assigned.
    assert_eq!(assignments(&doc, "bad-ip").len(), 1);
}

#[test]
fn malformed_yaml_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "broken.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: [a\n",
    );
    let e = plan_error(&["-f", &file]);
    assert!(e.starts_with(&format!("error: {file}: ")), "{e}");
    assert!(e.contains("line 4"), "{e}");
}

#[test]
fn wrong_field_type_names_file_document_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "x.yaml",
        "apiVersion: v1
kind: Namespace
metadata: {name: a}
---
apiVersion: v1
kind: Namespace
metadata: {name: b}
---
apiVersion: k8s.ovn.org/v1
kind: EgressIP
metadata:
  name: egressips-prod
spec:
  egressIPs: a
  namespaceSelector: {}
",
    );
    let e = plan_error(&["-f", &file]);
    assert_eq!(
        e.trim_end(),
        format!(
            "error: {file}: document 3 (EgressIP egressips-prod, line 9): spec.egressIPs: \
             invalid type: string \"a\", expected a sequence"
        )
    );

    // Inside a list: the item index and the path within the item.
    let list = write(
        dir.path(),
        "list.json",
        r#"{"apiVersion": "v1", "kind": "NodeList", "items": [
            {"metadata": {"name": "n1"}},
            {"metadata": {"name": "n2"}, "spec": {"podCIDRs": "10.0.0.0/24"}}
        ]}"#,
    );
    let e = plan_error(&["-f", &list]);
    assert_eq!(
        e.trim_end(),
        format!(
            "error: {list}: document 1, items[1] (Node n2): spec.podCIDRs: \
             invalid type: string \"10.0.0.0/24\", expected a sequence"
        )
    );
}

#[test]
fn duplicate_object_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let copy = write(
        dir.path(),
        "more-pods.yaml",
        "apiVersion: v1
kind: Namespace
metadata: {name: namespace3}
---
apiVersion: v1
kind: Pod
metadata: {name: pod1, namespace: namespace1}
spec:
  containers: [{name: c, image: i}]
",
    );
    let e = plan_error(&["-f", EXAMPLE, "-f", &copy]);
    assert_eq!(
        e.trim_end(),
        format!(
            "error: duplicate Pod namespace1/pod1: defined in examples/cluster/pods.yaml: \
             document 1 (line 2) and again in {copy}: document 2 (line 5)"
        )
    );

    // The same file twice (here through its directory and by name) is refused as such.
    let e = plan_error(&["-f", EXAMPLE, "-f", &example("pods.yaml")]);
    assert_eq!(
        e.trim_end(),
        "error: examples/cluster/pods.yaml: the file is given more than once \
         (first as examples/cluster/pods.yaml)"
    );

    let e = plan_error(&["-f", &copy, "-f", "-", "-f", "-"]);
    assert!(
        e.contains("standard input (-) is given more than once"),
        "{e}"
    );
}

#[test]
fn missing_file_is_an_error() {
    let e = plan_error(&["-f", "examples/cluster/no-such-file.yaml"]);
    assert!(
        e.contains("examples/cluster/no-such-file.yaml: No such file or directory"),
        "{e}"
    );
    let empty = tempfile::tempdir().unwrap();
    let e = plan_error(&["-f", empty.path().to_str().unwrap()]);
    assert!(e.contains("no *.yaml, *.yml or *.json files"), "{e}");
    let e = usage_error(&[]);
    assert!(
        e.contains("--filename <FILE_OR_DIR>"),
        "-f is required: {e}"
    );
}

#[test]
fn kinds_outside_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let extra = write(
        dir.path(),
        "extra.yaml",
        "apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: namespace1}
spec: {}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: namespace1}
",
    );
    let o = run(&["plan", "-o", "json", "-f", EXAMPLE, "-f", &extra]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stderr(&o).trim_end(),
        format!(
            "warning: {extra}: skipped 2 objects of kinds not used for planning: \
             apps/v1 Deployment, v1 Service"
        )
    );
    let doc: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(doc, plan_json(&["-f", EXAMPLE]));

    let qos = write(
        dir.path(),
        "qos.yaml",
        "apiVersion: k8s.ovn.org/v1\nkind: EgressQoS\nmetadata: {name: default, namespace: namespace1}\n",
    );
    let e = plan_error(&["-f", EXAMPLE, "-f", &qos]);
    assert!(
        e.contains("k8s.ovn.org/v1 EgressQoS is not supported"),
        "{e}"
    );
}

#[test]
fn list_documents_plan_like_the_directory() {
    // The example as two JSON lists: a typed NodeList whose items omit apiVersion and kind (as the
    // API server returns them), and a `kind: List` with everything else.
    let mut nodes = Vec::new();
    let mut others = Vec::new();
    for file in [
        "egressfirewall.yaml",
        "egressips.yaml",
        "namespaces.yaml",
        "nodes.yaml",
        "pods.yaml",
        "servicecidr.yaml",
    ] {
        let text = std::fs::read_to_string(root().join(example(file))).unwrap();
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
        for mut doc in docs {
            if doc["kind"] == "Node" {
                let map = doc.as_object_mut().unwrap();
                map.remove("apiVersion");
                map.remove("kind");
                nodes.push(doc);
            } else {
                others.push(doc);
            }
        }
    }
    assert_eq!(nodes.len(), 3);
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "a-nodes.json",
        &serde_json::to_string_pretty(
            &json!({"apiVersion": "v1", "kind": "NodeList", "items": nodes}),
        )
        .unwrap(),
    );
    write(
        dir.path(),
        "b-rest.yaml",
        &serde_saphyr::to_string(&json!({"apiVersion": "v1", "kind": "List", "items": others}))
            .unwrap(),
    );
    let from_lists = plan_json(&["-f", dir.path().to_str().unwrap()]);
    // Input order differs (nodes first), so compare per object.
    let direct = plan_json(&["-f", EXAMPLE]);
    assert_eq!(from_lists["nodes"], direct["nodes"]);
    assert_eq!(from_lists["events"], direct["events"]);
    assert_eq!(from_lists["egressIPs"], direct["egressIPs"]);
}

#[test]
fn standard_input() {
    let eips = std::fs::read_to_string(root().join(example("egressips.yaml"))).unwrap();
    let args = [
        "plan",
        "-o",
        "json",
        "-f",
        "examples/cluster/nodes.yaml",
        "-f",
        "examples/cluster/namespaces.yaml",
        "-f",
        "examples/cluster/pods.yaml",
        "-f",
        "examples/cluster/servicecidr.yaml",
        "-f",
        "-",
    ];
    let o = run_with_stdin(&args, Some(&eips));
    assert!(o.status.success(), "{}", stderr(&o));
    let doc: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(doc, plan_json(&["-f", EXAMPLE]));
}

/// Seed 001: `NotIn` selects the `app: web` pods of every namespace without
/// `environment: development`, including namespaces without the label at all.
#[test]
fn seed_001_not_in_selector() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::new();
    for (i, name) in ["ovn-control-plane", "ovn-worker", "ovn-worker2"]
        .iter()
        .enumerate()
    {
        let ip = ["172.18.0.4", "172.18.0.2", "172.18.0.3"][i];
        let assignable = if i > 0 {
            "\n  labels: {k8s.ovn.org/egress-assignable: \"\"}"
        } else {
            ""
        };
        text.push_str(&format!(
            "---
apiVersion: v1
kind: Node
metadata:
  name: {name}{assignable}
  annotations:
    k8s.ovn.org/node-primary-ifaddr: '{{\"ipv4\":\"{ip}/16\"}}'
    k8s.ovn.org/host-cidrs: '[\"{ip}/16\"]'
spec:
  podCIDRs: [10.244.{i}.0/24]
status:
  addresses: [{{type: InternalIP, address: {ip}}}]
  conditions: [{{type: Ready, status: \"True\"}}]
"
        ));
    }
    for (ns, labels) in [
        ("dev", "{environment: development}"),
        ("prod", "{environment: production}"),
        ("plain", "{}"),
    ] {
        text.push_str(&format!(
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {labels}}}\n"
        ));
    }
    let pods = [
        ("dev", "web", "10.244.1.3", "ovn-worker"),
        ("prod", "web", "10.244.1.4", "ovn-worker"),
        ("prod", "db", "10.244.2.5", "ovn-worker2"),
        ("plain", "web", "10.244.0.6", "ovn-control-plane"),
    ];
    for (ns, app, ip, node) in pods {
        text.push_str(&format!(
            "---
apiVersion: v1
kind: Pod
metadata: {{name: {app}, namespace: {ns}, labels: {{app: {app}}}}}
spec:
  nodeName: {node}
  containers: [{{name: c, image: i}}]
status:
  podIPs: [{{ip: {ip}}}]
"
        ));
    }
    // The seed's object, verbatim apart from its lost indentation.
    text.push_str(
        "---
apiVersion: k8s.ovn.org/v1
kind: EgressIP
metadata:
  name: egressip-prod
spec:
  egressIPs:
  - 172.18.0.33
  - 172.18.0.44
  namespaceSelector:
    matchExpressions:
    - key: environment
      operator: NotIn
      values:
      - development
  podSelector:
    matchLabels:
      app: web
",
    );
    let file = write(dir.path(), "seed001.yaml", &text);
    let doc = plan_json(&["-f", &file]);
    let status = assignments(&doc, "egressip-prod");
    assert_eq!(
        status.values().collect::<BTreeSet<_>>(),
        BTreeSet::from([&"ovn-worker".to_string(), &"ovn-worker2".to_string()])
    );
    let served: BTreeSet<String> = ["ovn-worker", "ovn-worker2"]
        .iter()
        .flat_map(|n| snat(&doc, n))
        .map(|(pod, _)| pod)
        .collect();
    assert_eq!(
        served,
        BTreeSet::from(["10.244.1.4".to_string(), "10.244.0.6".to_string()]),
        "prod/web and plain/web; not dev/web, not prod/db"
    );
    // The plain/web pod runs on a node that is no egress node: it is steered.
    assert_eq!(
        steering(&doc, "ovn-control-plane")
            .keys()
            .collect::<Vec<_>>(),
        ["10.244.0.6"]
    );
}
