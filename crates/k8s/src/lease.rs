//! Leader election on a `coordination.k8s.io/v1` Lease.
//!
//! The algorithm is client-go's: the holder renews `spec.renewTime` every retry period with a
//! resourceVersion-guarded replace; a candidate takes the Lease over once it has seen the same
//! holder and renew time unchanged for a whole `leaseDurationSeconds` by its own clock (so clocks
//! of different machines are never compared). Fencing: the holder counts itself leader only
//! until `renew_deadline` after its last successful renewal, which is shorter than the lease
//! duration, so it stops writing before anyone else may start.
//!
//! Written in-house (about 200 lines) rather than with kube-lease-manager: its server-side-apply
//! Lease and its renewal loop give no fencing deadline to check before each write, and a
//! guarded replace is also what the test API server can play exactly.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::log;

/// Where the Lease is and how long it lasts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// `spec.leaseDurationSeconds`: how long others wait for a silent holder.
    pub lease_duration: Duration,
    /// The holder stops acting as leader this long after its last successful renewal.
    pub renew_deadline: Duration,
    /// Time between two attempts to acquire or renew.
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// client-go's defaults: 15 s lease, 10 s renew deadline, 2 s retry period.
    pub fn new(namespace: &str, name: &str, identity: &str) -> LeaseConfig {
        LeaseConfig {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Whether this replica leads, checked before every write.
#[derive(Clone, Debug)]
pub struct Leadership {
    rx: watch::Receiver<Option<Instant>>,
    renew_deadline: Duration,
}

impl Leadership {
    /// True while the last successful renewal is younger than the renew deadline.
    pub fn is_leader(&self) -> bool {
        self.rx
            .borrow()
            .is_some_and(|renewed| renewed.elapsed() < self.renew_deadline)
    }

    /// Waits until the leadership may have changed (a renewal, a loss, or a takeover).
    pub async fn changed(&mut self) {
        if self.rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// A candidate for the Lease. [`LeaderElector::run`] loops until dropped.
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
    tx: Arc<watch::Sender<Option<Instant>>>,
    /// The holder and renew time last seen, and when they were first seen (our clock).
    observed: Option<(String, Option<MicroTime>, Instant)>,
}

enum Attempt {
    Held,
    NotHeld,
}

impl LeaderElector {
    pub fn new(client: Client, config: LeaseConfig) -> (LeaderElector, Leadership) {
        let (tx, rx) = watch::channel(None);
        let leadership = Leadership {
            rx,
            renew_deadline: config.renew_deadline,
        };
        (
            LeaderElector {
                api: Api::namespaced(client, &config.namespace),
                config,
                tx: Arc::new(tx),
                observed: None,
            },
            leadership,
        )
    }

    /// Acquires and renews for ever.
    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(self.config.retry_period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut leading = false;
        loop {
            tick.tick().await;
            let started = Instant::now();
            // A request that hangs must not outlive the renew deadline unnoticed.
            let attempt =
                match tokio::time::timeout(self.config.renew_deadline, self.attempt()).await {
                    Ok(result) => result,
                    Err(_) => Err(format!("no answer within {:?}", self.config.renew_deadline)),
                };
            match attempt {
                Ok(Attempt::Held) => {
                    if !leading {
                        log(
                            "lease",
                            format!(
                                "{} leads (Lease {}/{})",
                                self.config.identity, self.config.namespace, self.config.name
                            ),
                        );
                    }
                    leading = true;
                    self.tx.send_replace(Some(started));
                }
                Ok(Attempt::NotHeld) => {
                    if leading {
                        log("lease", format!("{} lost the Lease", self.config.identity));
                    }
                    leading = false;
                    self.tx.send_replace(None);
                }
                Err(e) => {
                    log("lease", format!("acquiring or renewing: {e}"));
                    // Keep the last renewal: it expires by itself after the renew deadline.
                    let expired = self
                        .tx
                        .borrow()
                        .is_some_and(|r| r.elapsed() >= self.config.renew_deadline);
                    if expired && leading {
                        log(
                            "lease",
                            format!(
                                "{} could not renew within {:?}; stepping down",
                                self.config.identity, self.config.renew_deadline
                            ),
                        );
                        leading = false;
                        self.tx.send_replace(None);
                    }
                }
            }
        }
    }

    fn spec(&self, acquire: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(self.config.lease_duration.as_secs().max(1) as i32),
            acquire_time: Some(acquire.unwrap_or_else(|| now.clone())),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    async fn attempt(&mut self) -> Result<Attempt, String> {
        self.try_attempt().await.map_err(|e| e.to_string())
    }

    async fn try_attempt(&mut self) -> Result<Attempt, kube::Error> {
        let pp = PostParams {
            field_manager: Some("kube-egress-controller".into()),
            ..PostParams::default()
        };
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(None, 0)),
            };
            return match self.api.create(&pp, &lease).await {
                Ok(_) => Ok(Attempt::Held),
                Err(kube::Error::Api(s)) if s.is_already_exists() || s.is_conflict() => {
                    Ok(Attempt::NotHeld)
                }
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let ours = holder == self.config.identity;
        if !ours && !holder.is_empty() {
            let duration =
                Duration::from_secs(spec.lease_duration_seconds.unwrap_or(15).max(1) as u64);
            let now = Instant::now();
            let seen_since = match &self.observed {
                Some((h, r, since)) if *h == holder && *r == spec.renew_time => *since,
                _ => {
                    self.observed = Some((holder.clone(), spec.renew_time.clone(), now));
                    now
                }
            };
            if now.duration_since(seen_since) < duration {
                return Ok(Attempt::NotHeld);
            }
            log(
                "lease",
                format!(
                    "{holder} has not renewed for {duration:?}; {} takes over",
                    self.config.identity
                ),
            );
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
        let acquire = if ours {
            spec.acquire_time.clone()
        } else {
            None
        };
        lease.spec = Some(self.spec(acquire, transitions));
        match self.api.replace(&self.config.name, &pp, &lease).await {
            Ok(_) => Ok(Attempt::Held),
            Err(kube::Error::Api(s)) if s.is_conflict() => Ok(Attempt::NotHeld),
            Err(e) => Err(e),
        }
    }
}
