//! The nftables table against the real nftables (in process through libnftables, and through
//! the `nft` program), inside a network namespace of the test's own.

use std::process::Command;

use kube_egress_linux::nft::{Nft, NftState, TABLE};

/// A network namespace removed when dropped (also on panic).
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Option<Netns> {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipping: network namespace tests need root");
            return None;
        }
        let name = format!("ke{}-nft-{tag}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(ok.success(), "ip netns add {name}");
        Some(Netns(name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn listed(ns: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "list", "table", "inet", TABLE])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sample() -> NftState {
    let mut s = NftState::default();
    s.excluded.insert("10.128.0.0/14".parse().unwrap());
    s.excluded.insert("172.30.0.0/16".parse().unwrap());
    s.excluded.insert("192.168.126.2/32".parse().unwrap());
    s.excluded.insert("fd01::/48".parse().unwrap());
    s.marks.insert("10.128.2.10".parse().unwrap(), 50000);
    s.marks.insert("10.128.2.11".parse().unwrap(), 1003);
    s.steering = true;
    s.snat.insert(
        ("10.128.2.10".parse().unwrap(), "eth0".into()),
        "192.168.126.10".parse().unwrap(),
    );
    s.snat.insert(
        ("fd01::5".parse().unwrap(), "eth1".into()),
        "fd00::10".parse().unwrap(),
    );
    s.counted.insert("192.168.126.10".parse().unwrap());
    s.counted.insert("fd00::10".parse().unwrap());
    s
}

#[tokio::test]
async fn full_table_then_element_diffs_round_trip_in_process() {
    let Some(ns) = Netns::new("rt") else { return };
    let nft = Nft::in_netns(&ns.0, "kegress0");
    // The context was opened in the namespace; this test's thread is not in it.
    assert_eq!(nft.backend(), "libnftables");
    round_trip(&ns, nft).await;
}

#[tokio::test]
async fn full_table_then_element_diffs_round_trip_through_the_program() {
    let Some(ns) = Netns::new("rtp") else { return };
    let nft = Nft::in_netns(&ns.0, "kegress0").with_program();
    assert_eq!(nft.backend(), "nft program");
    round_trip(&ns, nft).await;
}

async fn round_trip(ns: &Netns, nft: Nft) {
    assert_eq!(nft.read().await.unwrap(), None);

    let state = sample();
    nft.apply(&nft.full_batch(&state)).await.unwrap();
    assert_eq!(nft.read().await.unwrap(), Some(state.clone()));
    let text = listed(&ns.0);
    assert!(text.contains("ip saddr @marks_v4 jump mark_v4"), "{text}");
    assert!(
        text.contains("meta mark set ip saddr map @marks_v4"),
        "{text}"
    );
    assert!(
        text.contains("counter name ip saddr map @counters_v4"),
        "{text}"
    );
    assert!(text.contains("counter egress_fd00--10"), "{text}");
    assert!(
        text.contains("snat ip to ip saddr . oifname map @snat_v4"),
        "{text}"
    );
    assert!(text.contains("oifname \"kegress0\""), "{text}");

    // Element changes only.
    let mut next = state.clone();
    next.marks.insert("10.128.2.10".parse().unwrap(), 50001);
    next.marks.insert("10.128.2.12".parse().unwrap(), 50002);
    next.counted.remove(&"fd00::10".parse().unwrap());
    next.counted.insert("192.168.126.11".parse().unwrap());
    next.snat
        .remove(&("fd01::5".parse().unwrap(), "eth1".to_string()));
    next.excluded.remove(&"172.30.0.0/16".parse().unwrap());
    next.excluded.insert("172.31.0.0/16".parse().unwrap());
    nft.apply(&nft.diff_batch(&state, &next).unwrap())
        .await
        .unwrap();
    assert_eq!(nft.read().await.unwrap(), Some(next.clone()));

    // Applying the full batch again replaces the table atomically and is idempotent.
    nft.apply(&nft.full_batch(&next)).await.unwrap();
    assert_eq!(nft.read().await.unwrap(), Some(next));

    nft.delete_table().await.unwrap();
    assert_eq!(nft.read().await.unwrap(), None);
    nft.delete_table().await.unwrap();
}

#[tokio::test]
async fn a_failed_batch_changes_nothing_in_process() {
    let Some(ns) = Netns::new("fail") else { return };
    a_failed_batch_changes_nothing(Nft::in_netns(&ns.0, "kegress0")).await;
}

#[tokio::test]
async fn a_failed_batch_changes_nothing_through_the_program() {
    let Some(ns) = Netns::new("failp") else {
        return;
    };
    a_failed_batch_changes_nothing(Nft::in_netns(&ns.0, "kegress0").with_program()).await;
}

/// A batch the kernel refuses reports nft's error and leaves the table as it was.
async fn a_failed_batch_changes_nothing(nft: Nft) {
    let state = sample();
    nft.apply(&nft.full_batch(&state)).await.unwrap();
    // Deleting an element that does not exist fails the whole batch, including the add before it.
    let mut gone = state.clone();
    gone.marks.insert("10.128.9.9".parse().unwrap(), 50009);
    let mut bogus = NftState::default();
    bogus.marks.insert("10.128.7.7".parse().unwrap(), 50007);
    let mut batch = nft.diff_batch(&state, &gone).unwrap();
    let bad = nft.diff_batch(&bogus, &NftState::default()).unwrap();
    batch["nftables"]
        .as_array_mut()
        .unwrap()
        .extend(bad["nftables"].as_array().unwrap().iter().cloned());
    let err = nft.apply(&batch).await.unwrap_err().to_string();
    assert!(err.contains("nft apply failed"), "{err}");
    assert!(err.contains("No such file or directory"), "{err}");
    assert_eq!(nft.read().await.unwrap(), Some(state));
}

#[tokio::test]
async fn a_table_of_another_layout_reads_as_absent() {
    let Some(ns) = Netns::new("layout") else {
        return;
    };
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.0, "nft", "add", "table", "inet", TABLE])
        .status()
        .unwrap();
    assert!(out.success());
    let nft = Nft::in_netns(&ns.0, "kegress0");
    assert_eq!(nft.read().await.unwrap(), None);
}

/// The chains of the listed table, in order.
fn chains(ns: &str) -> Vec<String> {
    listed(ns)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("chain "))
        .map(|l| l.trim_end_matches(" {").to_string())
        .collect()
}

/// Maps that get their first element, or lose their last, add or remove their chains in the
/// same transaction, and the table reads back as what was written at every step.
#[tokio::test]
async fn chains_follow_the_maps_through_every_transition() {
    let Some(ns) = Netns::new("chains") else {
        return;
    };
    let nft = Nft::in_netns(&ns.0, "kegress0");
    let mut empty = NftState::default();
    empty.excluded.insert("10.128.0.0/14".parse().unwrap());
    nft.apply(&nft.full_batch(&empty)).await.unwrap();
    assert_eq!(nft.read().await.unwrap(), Some(empty.clone()));
    assert!(chains(&ns.0).is_empty(), "{}", listed(&ns.0));

    let mut egress = empty.clone();
    egress.snat.insert(
        ("10.128.2.10".parse().unwrap(), "eth0".into()),
        "192.168.126.10".parse().unwrap(),
    );
    egress.counted.insert("192.168.126.10".parse().unwrap());
    let mut steering = empty.clone();
    steering.marks.insert("10.128.2.10".parse().unwrap(), 50000);
    steering.steering = true;
    let mut both = egress.clone();
    both.marks = steering.marks.clone();
    both.steering = true;

    let steps: [(&NftState, &[&str]); 6] = [
        (&egress, &["postrouting", "egress_count"]),
        (
            &both,
            &[
                "mark_v4",
                "prerouting",
                "tunnel_out",
                "postrouting",
                "egress_count",
            ],
        ),
        (
            &steering,
            &["mark_v4", "prerouting", "tunnel_out", "postrouting"],
        ),
        (&empty, &[]),
        (
            &both,
            &[
                "mark_v4",
                "prerouting",
                "tunnel_out",
                "postrouting",
                "egress_count",
            ],
        ),
        (&empty, &[]),
    ];
    let mut current = empty.clone();
    for (next, wanted) in steps {
        let batch = nft.diff_batch(&current, next).unwrap();
        nft.apply(&batch)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{batch:#}"));
        assert_eq!(
            nft.read().await.unwrap().as_ref(),
            Some(next),
            "{}",
            listed(&ns.0)
        );
        let mut got = chains(&ns.0);
        got.sort();
        let mut wanted: Vec<String> = wanted.iter().map(|s| s.to_string()).collect();
        wanted.sort();
        assert_eq!(got, wanted, "{}", listed(&ns.0));
        current = next.clone();
    }
}

/// A table whose chains were changed behind our back reads as absent, so the next apply
/// rewrites it as a whole.
#[tokio::test]
async fn a_tampered_chain_reads_as_absent() {
    let Some(ns) = Netns::new("tamper") else {
        return;
    };
    let nft = Nft::in_netns(&ns.0, "kegress0");
    nft.apply(&nft.full_batch(&sample())).await.unwrap();
    let ok = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.0,
            "nft",
            "flush",
            "chain",
            "inet",
            TABLE,
            "prerouting",
        ])
        .status()
        .unwrap();
    assert!(ok.success());
    assert_eq!(nft.read().await.unwrap(), None);
    nft.apply(&nft.full_batch(&sample())).await.unwrap();
    assert_eq!(nft.read().await.unwrap(), Some(sample()));
}

#[tokio::test]
async fn counters_of_an_absent_table_are_empty() {
    let Some(ns) = Netns::new("nocount") else {
        return;
    };
    let nft = Nft::in_netns(&ns.0, "kegress0");
    assert!(nft.egress_counters().await.unwrap().is_empty());
    assert!(nft.egress_counters_blocking().unwrap().is_empty());
    nft.apply(&nft.full_batch(&sample())).await.unwrap();
    let counters = nft.egress_counters().await.unwrap();
    assert_eq!(
        counters.keys().copied().collect::<Vec<_>>(),
        sample().counted.into_iter().collect::<Vec<_>>()
    );
    assert!(counters.values().all(|c| c.packets == 0 && c.bytes == 0));
    assert_eq!(nft.egress_counters_blocking().unwrap(), counters);
}
