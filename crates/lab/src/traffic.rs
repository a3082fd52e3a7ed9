//! Observing traffic: a poller that starts a request from a namespace at a fixed period (each
//! request on its own thread, so a lost one does not delay the next), the failover figures
//! computed from its samples, and the neighbour entries of a namespace.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One request: when it started and ended, and the source address the server saw (or why it
/// failed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    pub started: Instant,
    pub finished: Instant,
    pub source: Result<IpAddr, String>,
}

impl Sample {
    /// Whether the request succeeded and the server saw a source for which `ok` holds.
    pub fn succeeded_with(&self, ok: impl Fn(IpAddr) -> bool) -> bool {
        self.source.as_ref().is_ok_and(|ip| ok(*ip))
    }
}

/// Requests from a network namespace, one every `period`, until [`Poller::finish`]. The
/// finished requests can be looked at while it runs ([`Poller::samples`]).
pub struct Poller {
    stop: Arc<AtomicBool>,
    done: Arc<Mutex<Vec<Sample>>>,
    thread: Option<JoinHandle<()>>,
}

impl Poller {
    /// Starts polling `target` (see `kube_egress_testbed::http_get`) from namespace `netns`; each
    /// request gives up after `timeout`.
    pub fn start(netns: &str, target: &str, period: Duration, timeout: Duration) -> Poller {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(Mutex::new(Vec::new()));
        let (netns, target, flag) = (netns.to_string(), target.to_string(), stop.clone());
        let sink = done.clone();
        let thread = std::thread::spawn(move || {
            let mut requests = Vec::new();
            let mut next = Instant::now();
            while !flag.load(Ordering::Relaxed) {
                let (sink, netns, target) = (sink.clone(), netns.clone(), target.clone());
                requests.push(std::thread::spawn(move || {
                    let started = Instant::now();
                    let source = kube_egress_testbed::http_get(&netns, &target, timeout)
                        .map_err(|e| e.to_string())
                        .and_then(|r| {
                            r.seen_source()
                                .ok_or_else(|| format!("no source in the reply {:?}", r.body))
                        });
                    lock(&sink).push(Sample {
                        started,
                        finished: Instant::now(),
                        source,
                    });
                }));
                // Reap the finished request threads as we go (a long run starts thousands).
                requests.retain(|r: &JoinHandle<()>| !r.is_finished());
                next += period;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            for r in requests {
                let _ = r.join();
            }
        });
        Poller {
            stop,
            done,
            thread: Some(thread),
        }
    }

    /// The requests finished so far, in the order they started.
    pub fn samples(&self) -> Vec<Sample> {
        let mut samples = lock(&self.done).clone();
        samples.sort_by_key(|s| s.started);
        samples
    }

    /// Stops starting requests, waits for those under way and returns every sample, in the order
    /// they started.
    pub fn finish(mut self) -> Vec<Sample> {
        self.stop_and_join();
        self.samples()
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

fn lock(samples: &Mutex<Vec<Sample>>) -> std::sync::MutexGuard<'_, Vec<Sample>> {
    samples.lock().unwrap_or_else(|e| e.into_inner())
}

/// Time from `since` to the end of the first request started at or after `since` that succeeded
/// with a source for which `ok` holds: e.g. the first request through the new egress node.
pub fn first_success(
    samples: &[Sample],
    since: Instant,
    ok: impl Fn(IpAddr) -> bool,
) -> Option<Duration> {
    samples
        .iter()
        .filter(|s| s.started >= since && s.succeeded_with(&ok))
        .map(|s| s.finished - since)
        .min()
}

/// Time from `since` until traffic is whole again: the end of the first request started at or
/// after `since` from which on every started request succeeded with a source for which `ok`
/// holds. `None` if the last request did not.
pub fn recovery(
    samples: &[Sample],
    since: Instant,
    ok: impl Fn(IpAddr) -> bool,
) -> Option<Duration> {
    let after: Vec<&Sample> = samples.iter().filter(|s| s.started >= since).collect();
    let first_good = after
        .iter()
        .rposition(|s| !s.succeeded_with(&ok))
        .map_or(0, |bad| bad + 1);
    after.get(first_good).map(|s| s.finished - since)
}

/// The link-layer address of `ip` in the neighbour table of namespace `netns` (`ip neigh`), if
/// it has a usable entry.
pub fn neighbour_mac(
    netns: &str,
    ip: IpAddr,
) -> Result<Option<String>, kube_egress_testbed::Error> {
    let out = kube_egress_testbed::exec(netns, &["ip", "neigh", "show", &ip.to_string()])?;
    Ok(out.lines().find_map(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() != Some(&ip.to_string().as_str()) || words.contains(&"FAILED") {
            return None;
        }
        let at = words.iter().position(|w| *w == "lladdr")?;
        words.get(at + 1).map(|m| m.to_string())
    }))
}

/// The MAC address of `link` in namespace `netns`.
pub fn link_mac(netns: &str, link: &str) -> Result<Option<String>, kube_egress_testbed::Error> {
    let out = kube_egress_testbed::exec(netns, &["ip", "-o", "link", "show", "dev", link])?;
    let words: Vec<&str> = out.split_whitespace().collect();
    Ok(words
        .iter()
        .position(|w| *w == "link/ether")
        .and_then(|at| words.get(at + 1))
        .map(|m| m.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t0: Instant, start: u64, end: u64, source: Option<&str>) -> Sample {
        Sample {
            started: t0 + Duration::from_millis(start),
            finished: t0 + Duration::from_millis(end),
            source: source
                .map(|s| s.parse().unwrap())
                .ok_or_else(|| "lost".into()),
        }
    }

    #[test]
    fn failover_figures() {
        let t0 = Instant::now();
        let new: IpAddr = "192.0.2.2".parse().unwrap();
        let samples = vec![
            sample(t0, 0, 5, Some("192.0.2.1")), // before the cut
            sample(t0, 10, 1000, None),
            sample(t0, 30, 35, Some("192.0.2.1")), // lucky flow through the old hop
            sample(t0, 50, 1100, None),
            sample(t0, 70, 72, Some("192.0.2.2")),
            sample(t0, 90, 93, Some("192.0.2.2")),
        ];
        let cut = t0 + Duration::from_millis(10);
        assert_eq!(
            first_success(&samples, cut, |ip| ip == new),
            Some(Duration::from_millis(62))
        );
        assert_eq!(
            recovery(&samples, cut, |ip| ip == new),
            Some(Duration::from_millis(62))
        );
        assert_eq!(
            recovery(&samples, cut, |_| true),
            Some(Duration::from_millis(62))
        );
        let mut broken = samples.clone();
        broken.push(sample(t0, 110, 2000, None));
        assert_eq!(recovery(&broken, cut, |_| true), None);
        assert_eq!(
            first_success(&samples, t0 + Duration::from_secs(1), |_| true),
            None
        );
    }
}
