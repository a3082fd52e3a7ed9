//! `kube-egress controller --dataplane ovn` end to end: the built binary, the seed 001 cluster of
//! `examples/ovn`, and a real OVN Northbound ovsdb-server.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use kube_egress_ovn::server::NbServer;

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/ovn")
}

fn command(nb: &str, manifests: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kube-egress"));
    c.args([
        "controller",
        "--dataplane",
        "ovn",
        "--ovn-nb",
        nb,
        "--manifests",
    ])
    .arg(manifests)
    .args(["--cluster-cidr", "10.244.0.0/16"])
    .args(extra)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    c
}

fn once(nb: &str, manifests: &Path) -> Output {
    command(nb, manifests, &["--once"])
        .output()
        .expect("run kube-egress")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn topology(nb: &NbServer, nodes: &[&str]) {
    let mut args = vec!["lr-add".to_string(), "ovn_cluster_router".to_string()];
    for node in nodes {
        args.extend(["--".into(), "lr-add".into(), format!("GR_{node}")]);
        args.extend(["--".into(), "ls-add".into(), node.to_string()]);
    }
    nb.nbctl(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .unwrap();
}

fn squeeze(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect()
}

const NODES: [&str; 3] = ["ovn-control-plane", "ovn-worker", "ovn-worker2"];

#[test]
fn once_programs_seed_001_and_a_second_run_writes_nothing() {
    let nb = NbServer::start().unwrap();
    topology(&nb, &NODES);
    let o = once(&nb.tcp(), &example());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("the Northbound database matches the plan"));

    let policies = squeeze(&nb.nbctl(&["lr-policy-list", "ovn_cluster_router"]).unwrap());
    assert_eq!(policies.len(), 6, "{policies:?}");
    assert!(
        policies[1].starts_with("102 (ip4.src == $a")
            && policies[1].ends_with("allow pkt_mark=1008")
    );
    assert!(
        policies.contains(
            &"102 ip4.src == 10.244.0.0/16 && ip4.dst == 10.244.0.0/16 allow".to_string()
        )
    );
    assert!(
        policies.contains(
            &"102 ip4.src == 10.244.0.0/16 && ip4.dst == 100.64.0.0/16 allow".to_string()
        )
    );
    assert_eq!(
        policies[5],
        "100 ip4.src == 10.244.1.3 reroute 100.64.0.3, 100.64.0.4"
    );
    let nats = |router: &str| squeeze(&nb.nbctl(&["lr-nat-list", router]).unwrap());
    assert_eq!(nats("GR_ovn-worker")[1], "snat 172.18.0.33 10.244.1.3");
    assert_eq!(nats("GR_ovn-worker2")[1], "snat 172.18.0.44 10.244.1.3");
    assert!(nats("GR_ovn-control-plane").is_empty());

    let o = once(&nb.unix(), &example());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("operations in 0 transaction(s)")
            && stderr(&o).contains("; 0 operations"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn once_fails_when_the_plan_cannot_be_carried_out() {
    let nb = NbServer::start().unwrap();
    topology(&nb, &["ovn-control-plane", "ovn-worker"]);
    let o = once(&nb.tcp(), &example());
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o)
            .contains("logical router GR_ovn-worker2 does not exist: 1 SNAT rows are not written"),
        "{}",
        stderr(&o)
    );
    // What can be written is written.
    let nats = squeeze(&nb.nbctl(&["lr-nat-list", "GR_ovn-worker"]).unwrap());
    assert_eq!(nats[1], "snat 172.18.0.33 10.244.1.3");
}

#[test]
fn bad_arguments_are_named() {
    let nb = NbServer::start().unwrap();
    let cases: [(&[&str], &str); 3] = [
        (
            &[
                "controller",
                "--dataplane",
                "ovn",
                "--manifests",
                "examples/ovn",
                "--cluster-cidr",
                "10.244.0.0/16",
                "--once",
            ],
            "--ovn-nb",
        ),
        (
            &[
                "controller",
                "--dataplane",
                "ovn",
                "--ovn-nb",
                "tcp:127.0.0.1",
                "--manifests",
                "examples/ovn",
                "--once",
            ],
            "--cluster-cidr is required",
        ),
        (
            &[
                "controller",
                "--dataplane",
                "ovn",
                "--ovn-nb",
                "tcp:127.0.0.1",
                "--cluster-cidr",
                "10.244.0.0/16",
                "--manifests",
                "examples/ovn",
                "--once",
            ],
            "invalid OVSDB endpoint \"tcp:127.0.0.1\"",
        ),
    ];
    for (args, message) in cases {
        let o = Command::new(env!("CARGO_BIN_EXE_kube-egress"))
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env_remove("KUBE_EGRESS_OVN_NB")
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(message), "{args:?}: {}", stderr(&o));
    }
    let o = once("tcp:127.0.0.1:1", &example());
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("connecting to the OVN Northbound database at tcp:127.0.0.1:1"),
        "{}",
        stderr(&o)
    );
    // An input error is reported before anything is written.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.yaml"),
        "apiVersion: k8s.ovn.org/v1\nkind: EgressIp\nmetadata:\n  name: x\n",
    )
    .unwrap();
    let o = once(&nb.tcp(), dir.path());
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("bad.yaml"), "{}", stderr(&o));
    assert_eq!(
        nb.nbctl(&["--bare", "--columns=_uuid", "list", "Address_Set"])
            .unwrap()
            .trim(),
        ""
    );
}

struct Controller(Child);

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn follows_manifest_changes_and_repairs_our_rows() {
    let nb = NbServer::start().unwrap();
    topology(&nb, &NODES);
    let dir = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(example()).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dir.path().join(f.file_name().unwrap())).unwrap();
    }
    let mut controller = Controller(command(&nb.unix(), dir.path(), &[]).spawn().unwrap());
    let reroutes = || {
        squeeze(&nb.nbctl(&["lr-policy-list", "ovn_cluster_router"]).unwrap())
            .into_iter()
            .filter(|l| l.starts_with("100 "))
            .collect::<Vec<_>>()
    };
    wait_for("the reroute of web-1", || {
        reroutes() == ["100 ip4.src == 10.244.1.3 reroute 100.64.0.3, 100.64.0.4"]
    });

    // Someone deletes our SNAT: it comes back.
    nb.nbctl(&["lr-nat-del", "GR_ovn-worker", "snat", "10.244.1.3"])
        .unwrap();
    wait_for("the SNAT to be restored", || {
        squeeze(&nb.nbctl(&["lr-nat-list", "GR_ovn-worker"]).unwrap()).len() == 2
    });

    // db-1 gets the app=web label: it is served too.
    let pods = std::fs::read_to_string(dir.path().join("pods.yaml")).unwrap();
    std::fs::write(
        dir.path().join("pods.yaml"),
        pods.replace("app: db", "app: web"),
    )
    .unwrap();
    wait_for("the reroute of db-1", || reroutes().len() == 2);
    assert!(
        reroutes()
            .contains(&"100 ip4.src == 10.244.1.4 reroute 100.64.0.3, 100.64.0.4".to_string())
    );

    // SIGTERM: exits 0 and leaves the rows.
    let pid = controller.0.id() as i32;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = controller.0.wait().unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(reroutes().len(), 2);
}
