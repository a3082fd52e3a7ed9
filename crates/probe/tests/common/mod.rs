//! Test helpers: a private network namespace for the timeout cases.
//!
//! The namespace is created with `unshare(CLONE_NEWNET)` on a dedicated thread, so it has no name
//! (nothing to collide with other tests or sessions), only that thread (and the `ip`/`nft`
//! commands it runs) lives in it, and the kernel frees it when the thread ends — also when the
//! test panics. The host's namespace is never touched.

#![allow(dead_code)]

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::time::Duration;

/// Nothing listens on it: a TCP SYN gets RST (connection refused).
pub const ALIVE: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
/// nft drops every packet to it: a TCP SYN gets no answer (timeout).
pub const SILENT: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));
/// Behind an `unreachable` route: connect fails with EHOSTUNREACH.
pub const NO_ROUTE: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 5));

const NFT_RULES: &str = "table inet kube_egress_probe_test {
    set dark { type ipv4_addr; }
    chain input {
        type filter hook input priority 0; policy accept;
        ip daddr 192.0.2.2 drop
        ip daddr @dark drop
    }
}
";

fn run(cmd: &str, args: &[&str], stdin: Option<&str>) {
    use std::io::Write;
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"));
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let status = child.wait().unwrap();
    assert!(status.success(), "{cmd} {args:?} failed: {status}");
}

/// Drops (true) or passes (false) every packet to `ip` from now on (namespace thread only).
pub fn set_dark(ip: IpAddr, dark: bool) {
    let verb = if dark { "add" } else { "delete" };
    run(
        "nft",
        &[
            verb,
            "element",
            "inet",
            "kube_egress_probe_test",
            "dark",
            &format!("{{ {ip} }}"),
        ],
        None,
    );
}

/// Runs `test` on a current-thread Tokio runtime inside a fresh network namespace with `lo` up,
/// [`ALIVE`] and [`SILENT`] on `lo`, the nft drop rules, and an unreachable route for
/// [`NO_ROUTE`]. Returns `None` (and says why) when namespaces cannot be created (not root).
pub fn in_netns<F, Fut, T>(test: F) -> Option<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: network namespace test needs root");
        return None;
    }
    std::thread::spawn(move || {
        // SAFETY: unshare only changes this thread's network namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            eprintln!(
                "SKIPPED: cannot create a network namespace: {}",
                std::io::Error::last_os_error()
            );
            return None;
        }
        run("ip", &["link", "set", "lo", "up"], None);
        run(
            "ip",
            &["addr", "add", &format!("{ALIVE}/32"), "dev", "lo"],
            None,
        );
        run(
            "ip",
            &["addr", "add", &format!("{SILENT}/32"), "dev", "lo"],
            None,
        );
        run(
            "ip",
            &["route", "add", "unreachable", "203.0.113.0/24"],
            None,
        );
        run("nft", &["-f", "-"], Some(NFT_RULES));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Some(runtime.block_on(test()))
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Receives the next transition or fails after `within`.
pub async fn next(
    t: &mut kube_egress_probe::Transitions,
    within: Duration,
) -> kube_egress_probe::Transition {
    tokio::time::timeout(within, t.recv())
        .await
        .expect("no transition in time")
        .expect("prober gone")
}

/// Asserts that no transition arrives for `quiet`.
pub async fn quiet(t: &mut kube_egress_probe::Transitions, quiet: Duration) {
    if let Ok(got) = tokio::time::timeout(quiet, t.recv()).await {
        panic!("unexpected transition: {got:?}");
    }
}
