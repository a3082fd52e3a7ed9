//! The legacy probe (`egressip-node-healthcheck-port` = 0): TCP connect to `<ip>:9`.
//!
//! As in OVN-K (`isReachableLegacy` / `dialDiscardService`), **any dial outcome other than a
//! timeout or `EHOSTUNREACH` means the node is alive**: a refused connection (RST) comes from a
//! live kernel. The node's addresses are dialled in turn, in rounds, until one says "alive" or the
//! deadline passes; no address at all means unreachable.
//!
//! Timing ([`DialPlan`]): OVN-K's split for an integer total timeout `T`, generalised to any
//! deadline `D` (so that a sub-second deadline keeps the same shape):
//! - `D ≤ 1 s`: first round dials `0.7·D/n` each, later rounds `0.1·D/n`, pause `0.1·D` between
//!   rounds — for `D = 1 s` exactly OVN-K's 700 ms/n, 100 ms/n and 100 ms;
//! - `D > 1 s`: every dial `900 ms/n`, pause 100 ms — OVN-K's `T > 1` case.
//!
//! One difference: each dial and pause is cut to what is left of the deadline, so a probe never
//! outlasts `D` (OVN-K can overshoot by a round).

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::time::Instant;

/// Per-dial timeouts and the pause between rounds for one probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DialPlan {
    /// Timeout of each dial in the first round.
    pub first: Duration,
    /// Timeout of each dial in later rounds.
    pub later: Duration,
    /// Sleep between two rounds.
    pub pause: Duration,
}

const ONE_SECOND: Duration = Duration::from_secs(1);

/// The dial plan for `addresses` addresses within `deadline`; `None` when there is no address.
pub fn dial_plan(deadline: Duration, addresses: usize) -> Option<DialPlan> {
    if addresses == 0 {
        return None;
    }
    let n = u32::try_from(addresses).unwrap_or(u32::MAX);
    Some(if deadline <= ONE_SECOND {
        DialPlan {
            first: deadline * 7 / 10 / n,
            later: deadline / 10 / n,
            pause: deadline / 10,
        }
    } else {
        let dial = Duration::from_millis(900) / n;
        DialPlan {
            first: dial,
            later: dial,
            pause: Duration::from_millis(100),
        }
    })
}

/// How one dial ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DialResult {
    /// The connection was established (and closed at once).
    Connected,
    /// The dial timed out (ours, or the kernel's `ETIMEDOUT`).
    TimedOut,
    /// Any error, e.g. `ConnectionRefused`, `HostUnreachable`, `NetworkUnreachable`.
    Failed(io::ErrorKind),
}

impl DialResult {
    /// OVN-K's verdict: only a timeout or `EHOSTUNREACH` means dead.
    pub fn alive(self) -> bool {
        match self {
            DialResult::Connected => true,
            DialResult::TimedOut => false,
            DialResult::Failed(io::ErrorKind::HostUnreachable | io::ErrorKind::TimedOut) => false,
            DialResult::Failed(_) => true,
        }
    }

    /// Classifies the result of a connect attempt.
    pub fn from_connect<T>(result: &io::Result<T>) -> Self {
        match result {
            Ok(_) => DialResult::Connected,
            Err(e) => DialResult::Failed(e.kind()),
        }
    }
}

/// The result of one legacy probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LegacyOutcome {
    /// A dial of `addr` said the node is alive.
    Alive { addr: SocketAddr, dial: DialResult },
    /// The deadline passed without a sign of life; `last` is the last dial's result.
    Dead { last: DialResult, dials: u32 },
    /// The node has no address to probe.
    NoAddresses,
}

impl LegacyOutcome {
    pub fn reachable(&self) -> bool {
        matches!(self, LegacyOutcome::Alive { .. })
    }
}

/// Runs the dial rounds with any dialer (`dial(addr, timeout)`); the deadline is `deadline` from now.
pub async fn probe_with<D, F>(
    addrs: &[SocketAddr],
    deadline: Duration,
    mut dial: D,
) -> LegacyOutcome
where
    D: FnMut(SocketAddr, Duration) -> F,
    F: Future<Output = DialResult>,
{
    let Some(plan) = dial_plan(deadline, addrs.len()) else {
        return LegacyOutcome::NoAddresses;
    };
    let end = Instant::now() + deadline;
    let mut timeout = plan.first;
    let mut dials = 0;
    let mut last = DialResult::TimedOut;
    while Instant::now() < end {
        for &addr in addrs {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            dials += 1;
            last = dial(addr, timeout.min(left)).await;
            if last.alive() {
                return LegacyOutcome::Alive { addr, dial: last };
            }
        }
        let left = end.saturating_duration_since(Instant::now());
        tokio::time::sleep(plan.pause.min(left)).await;
        timeout = plan.later;
    }
    LegacyOutcome::Dead { last, dials }
}

/// One TCP dial with a timeout; an established connection is closed at once.
pub async fn dial_tcp(addr: SocketAddr, timeout: Duration) -> DialResult {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Err(_elapsed) => DialResult::TimedOut,
        Ok(result) => DialResult::from_connect(&result),
    }
}

/// The legacy probe of a node: TCP connect to `<ip>:port` (port 9 in production) for each address.
pub async fn probe(ips: &[IpAddr], port: u16, deadline: Duration) -> LegacyOutcome {
    let addrs: Vec<SocketAddr> = ips.iter().map(|&ip| SocketAddr::new(ip, port)).collect();
    probe_with(&addrs, deadline, dial_tcp).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::net::Ipv4Addr;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn plan_matches_ovnk_at_integer_seconds() {
        let one = dial_plan(ms(1000), 1).unwrap();
        assert_eq!(
            (one.first, one.later, one.pause),
            (ms(700), ms(100), ms(100))
        );
        let two = dial_plan(ms(1000), 2).unwrap();
        assert_eq!(
            (two.first, two.later, two.pause),
            (ms(350), ms(50), ms(100))
        );
        let five = dial_plan(ms(5000), 3).unwrap();
        assert_eq!(
            (five.first, five.later, five.pause),
            (ms(300), ms(300), ms(100))
        );
        let small = dial_plan(ms(400), 1).unwrap();
        assert_eq!(
            (small.first, small.later, small.pause),
            (ms(280), ms(40), ms(40))
        );
        assert_eq!(dial_plan(ms(1000), 0), None);
    }

    #[test]
    fn verdicts() {
        use io::ErrorKind::*;
        assert!(DialResult::Connected.alive());
        assert!(DialResult::Failed(ConnectionRefused).alive());
        assert!(DialResult::Failed(ConnectionReset).alive());
        // OVN-K only treats timeouts and EHOSTUNREACH as dead; ENETUNREACH counts as alive.
        assert!(DialResult::Failed(NetworkUnreachable).alive());
        assert!(!DialResult::Failed(HostUnreachable).alive());
        assert!(!DialResult::Failed(TimedOut).alive());
        assert!(!DialResult::TimedOut.alive());
        let refused: io::Result<()> = Err(io::Error::from_raw_os_error(111));
        assert_eq!(
            DialResult::from_connect(&refused),
            DialResult::Failed(ConnectionRefused)
        );
        let unreach: io::Result<()> = Err(io::Error::from_raw_os_error(113));
        assert!(!DialResult::from_connect(&unreach).alive());
    }

    fn addr(last: u8) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, last)), 9)
    }

    /// A silent network: every dial uses its whole timeout. Records (addr, timeout, start offset).
    #[tokio::test(start_paused = true)]
    async fn silent_node_follows_the_plan_and_respects_the_deadline() {
        let log = RefCell::new(Vec::new());
        let t0 = Instant::now();
        let out = probe_with(&[addr(1), addr(2)], ms(1000), |a, t| {
            log.borrow_mut().push((a, t, t0.elapsed()));
            async move {
                tokio::time::sleep(t).await;
                DialResult::TimedOut
            }
        })
        .await;
        assert_eq!(t0.elapsed(), ms(1000));
        let log = log.into_inner();
        assert_eq!(
            log,
            vec![
                (addr(1), ms(350), ms(0)),
                (addr(2), ms(350), ms(350)),
                // pause 100 ms, then the short rounds
                (addr(1), ms(50), ms(800)),
                (addr(2), ms(50), ms(850)),
            ]
        );
        assert_eq!(
            out,
            LegacyOutcome::Dead {
                last: DialResult::TimedOut,
                dials: 4
            }
        );
    }

    /// `EHOSTUNREACH` answers at once: the probe keeps trying until the deadline, then reports dead.
    #[tokio::test(start_paused = true)]
    async fn host_unreachable_retries_until_the_deadline() {
        let t0 = Instant::now();
        let mut n = 0;
        let out = probe_with(&[addr(1)], ms(400), |_, _| {
            n += 1;
            async { DialResult::Failed(io::ErrorKind::HostUnreachable) }
        })
        .await;
        assert_eq!(t0.elapsed(), ms(400));
        assert_eq!(n, 10); // one dial per 40 ms pause
        assert!(!out.reachable());
    }

    /// The second address answering RST is enough, and the probe stops there.
    #[tokio::test(start_paused = true)]
    async fn refused_on_any_address_is_alive() {
        let out = probe_with(&[addr(1), addr(2), addr(3)], ms(1000), |a, t| async move {
            if a == addr(2) {
                DialResult::Failed(io::ErrorKind::ConnectionRefused)
            } else {
                tokio::time::sleep(t).await;
                DialResult::TimedOut
            }
        })
        .await;
        assert_eq!(
            out,
            LegacyOutcome::Alive {
                addr: addr(2),
                dial: DialResult::Failed(io::ErrorKind::ConnectionRefused)
            }
        );
    }

    #[tokio::test]
    async fn no_addresses_is_unreachable() {
        let out = probe(&[], 9, ms(1000)).await;
        assert_eq!(out, LegacyOutcome::NoAddresses);
        assert!(!out.reachable());
    }
}
