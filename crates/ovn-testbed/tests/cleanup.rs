//! Nothing of a cluster survives it: not on drop, not on panic, and what a killed test process
//! left is swept by the next start. Needs root and the OVN/OVS packages; skipped otherwise.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kube_egress_ovn_testbed::{
    ClusterSpec, NETNS_PREFIX, OvnCluster, RUNDIR_PREFIX, unavailable_reason,
};
use kube_egress_testbed::{list_namespaces, namespace_exists, processes_in};

/// Every start sweeps: the tests of this file run one at a time, so that one test's start does
/// not sweep the stale state the other is still setting up.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn available() -> bool {
    match unavailable_reason() {
        Some(reason) => {
            eprintln!("SKIPPED: the OVN cleanup tests {reason}");
            false
        }
        None => true,
    }
}

fn gone(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
        if stat.is_empty() || zombie {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Footprint {
    namespaces: Vec<String>,
    rundir: PathBuf,
    pids: Vec<(String, u32)>,
}

fn footprint(cluster: &OvnCluster) -> Footprint {
    Footprint {
        namespaces: cluster.namespaces(),
        rundir: cluster.rundir().to_path_buf(),
        pids: cluster.daemon_pids(),
    }
}

fn assert_removed(f: &Footprint) {
    for ns in &f.namespaces {
        assert!(!namespace_exists(ns), "namespace {ns} survived");
    }
    assert!(!f.rundir.exists(), "{} survived", f.rundir.display());
    for (name, pid) in &f.pids {
        assert!(gone(*pid), "daemon {name} (pid {pid}) survived");
    }
}

#[test]
fn drop_and_panic_remove_daemons_namespaces_and_files() {
    if !available() {
        return;
    }
    let _serial = serial();
    let spec = ClusterSpec::two_nodes().pod("prod", "a", "node2");
    let cluster = OvnCluster::start(&spec).unwrap();
    let f = footprint(&cluster);
    // Two central databases, northd, three daemons per chassis.
    assert_eq!(f.pids.len(), 3 + 2 * 3, "{:?}", f.pids);
    // 2 chassis + pod + fabric + web.
    assert_eq!(f.namespaces.len(), 5, "{:?}", f.namespaces);
    assert!(f.rundir.join("nb.db").exists());
    drop(cluster);
    assert_removed(&f);

    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::panic::catch_unwind(|| {
        let cluster = OvnCluster::start(&spec).unwrap();
        tx.send(footprint(&cluster)).unwrap();
        panic!("a test failing while the cluster runs");
    });
    assert!(result.is_err());
    assert_removed(&rx.recv().unwrap());
}

/// What a SIGKILLed test process leaves: namespaces named after its pid (with daemons living in
/// them) and a run directory whose pid files name central daemons still running.
#[test]
fn a_start_sweeps_what_a_dead_process_left() {
    if !available() {
        return;
    }
    let _serial = serial();
    // A pid that is certainly dead: a child that has exited and been reaped.
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();

    let ns = format!("{NETNS_PREFIX}{dead}-0-n-node1");
    let status = Command::new("ip")
        .args(["netns", "add", &ns])
        .status()
        .unwrap();
    assert!(status.success());
    // A "chassis daemon" living in the stale namespace (`ip netns exec` execs it: one pid).
    let mut in_ns = Command::new("ip")
        .args(["netns", "exec", &ns, "sleep", "300"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !processes_in(std::slice::from_ref(&ns))
        .iter()
        .any(|(pid, _)| *pid == in_ns.id())
    {
        assert!(Instant::now() < deadline, "sleep never entered {ns}");
        std::thread::sleep(Duration::from_millis(5));
    }

    // Filled under another name and renamed, so that no sweep sees it half made.
    let rundir = std::env::temp_dir().join(format!("{RUNDIR_PREFIX}{dead}-0"));
    let staging = std::env::temp_dir().join(format!("staging-{RUNDIR_PREFIX}{dead}-0"));
    std::fs::create_dir_all(&staging).unwrap();
    // A "central daemon" whose command line names the run directory (as its argv[0]), and one
    // that does not (a recycled pid must never be killed).
    let mut central = Command::new("sleep")
        .arg0(rundir.display().to_string())
        .arg("300")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut unrelated = Command::new("sleep")
        .arg("300")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::fs::write(staging.join("nb.pid"), format!("{}\n", central.id())).unwrap();
    std::fs::write(staging.join("sb.pid"), format!("{}\n", unrelated.id())).unwrap();
    std::fs::rename(&staging, &rundir).unwrap();

    let cluster = OvnCluster::start(&ClusterSpec::two_nodes()).unwrap();
    assert!(!namespace_exists(&ns), "stale namespace {ns} survived");
    assert!(
        !Path::new(&rundir).exists(),
        "stale {} survived",
        rundir.display()
    );
    // Both were SIGKILLed; reap them.
    assert!(in_ns.wait().unwrap().code().is_none());
    assert!(central.wait().unwrap().code().is_none());
    assert!(
        unrelated.try_wait().unwrap().is_none(),
        "a process not naming the run directory was killed"
    );
    unrelated.kill().unwrap();
    unrelated.wait().unwrap();

    // The living cluster's own namespaces were left alone.
    let ours = list_namespaces()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(cluster.prefix()))
        .count();
    assert_eq!(ours, cluster.namespaces().len());
}
