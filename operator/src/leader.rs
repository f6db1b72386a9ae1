//! Leader election on a `coordination.k8s.io/v1` Lease, the way client-go's
//! `leaderelection` package does it, so only one operator replica acts.
//!
//! - A candidate takes the Lease when it is absent, has no holder, or its
//!   `renewTime + leaseDurationSeconds` is in the past; otherwise it checks
//!   again every retry period.
//! - Writes are optimistic: `replace` carries the `resourceVersion` that was
//!   read and `create` fails if the Lease exists, so when two candidates race
//!   the API server answers one of them 409 and that one simply lost the round.
//! - The leader renews every retry period. If no renewal has succeeded for the
//!   renew deadline, or the Lease names another holder, leadership is lost and
//!   [`LeaderGuard::lost`] fires. The renew deadline is shorter than the lease
//!   duration, so the old leader stops acting before a standby may take over.
//! - `leaseTransitions` counts changes of holder; releasing (on graceful
//!   shutdown) clears the holder so a standby takes over at its next retry
//!   instead of waiting for the lease to expire.
//!
//! Expiry is judged by comparing the holder's `renewTime` with the local
//! clock, which assumes clocks agree to well within `lease_duration -
//! renew_deadline` (5 s by default); NTP-synchronised nodes do.
//!
//! The decision of what to write ([`claim`]) is a pure function of the Lease
//! as read; the rest is the I/O around it.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use rand::Rng;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long a Lease lasts and how often it is renewed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTiming {
    /// How long a standby waits after the last renewal before it takes the
    /// Lease (written to the Lease in whole seconds, rounded up).
    pub lease_duration: Duration,
    /// How long the leader keeps acting without a successful renewal.
    /// Shorter than `lease_duration`.
    pub renew_deadline: Duration,
    /// Pause between attempts to acquire or renew. Shorter than
    /// `renew_deadline`.
    pub retry_period: Duration,
}

impl Default for LeaseTiming {
    /// client-go's defaults: 15 s lease, 10 s renew deadline, 2 s retry.
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

impl LeaseTiming {
    fn validate(&self) -> Result<(), Error> {
        if self.lease_duration < Duration::from_secs(1) {
            return Err(Error::InvalidTiming("lease_duration must be at least 1s"));
        }
        if self.renew_deadline >= self.lease_duration {
            return Err(Error::InvalidTiming(
                "renew_deadline must be shorter than lease_duration",
            ));
        }
        if self.retry_period.is_zero() || self.retry_period >= self.renew_deadline {
            return Err(Error::InvalidTiming(
                "retry_period must be non-zero and shorter than renew_deadline",
            ));
        }
        Ok(())
    }

    fn lease_duration_seconds(&self) -> i32 {
        let secs =
            self.lease_duration.as_secs() + u64::from(self.lease_duration.subsec_nanos() > 0);
        i32::try_from(secs).unwrap_or(i32::MAX)
    }

    /// Bound on a single API call: two of them (read, write) fit in the
    /// renew deadline.
    fn call_timeout(&self) -> Duration {
        self.renew_deadline / 2
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid lease timing: {0}")]
    InvalidTiming(&'static str),
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("kubernetes API: no answer to {0} within {1:?}")]
    Timeout(&'static str, Duration),
    #[error("not allowed to use Lease {lease} (check the operator's RBAC): {source}")]
    Forbidden {
        lease: String,
        #[source]
        source: kube::Error,
    },
}

impl Error {
    /// A short stable label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::InvalidTiming(_) => "invalid_timing",
            Self::Kube(_) => "kube",
            Self::Timeout(..) => "kube_timeout",
            Self::Forbidden { .. } => "forbidden",
        }
    }
}

/// Where this process stands in the election, for `/readyz` and the
/// `swarmseed_operator_leader` gauge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ElectionStatus {
    /// Not leading (yet). `holder` is the leader as last read, `read_at`
    /// when the Lease was last read successfully.
    Standby {
        holder: Option<String>,
        read_at: Option<Instant>,
    },
    /// Holds the Lease (or leader election is off).
    Leader,
    /// Leadership was lost or released: this process no longer acts.
    Stopped,
}

/// Competes for one Lease under one identity. Cheap to clone.
#[derive(Clone)]
pub struct LeaderElector {
    shared: Arc<Shared>,
}

struct Shared {
    api: Api<Lease>,
    /// `namespace/name`, for messages.
    lease: String,
    name: String,
    identity: String,
    timing: LeaseTiming,
    status: watch::Sender<ElectionStatus>,
}

/// What one attempt to acquire or renew found.
enum Attempt {
    /// We hold the Lease now.
    Held,
    /// Someone else holds it (`None`: nobody, but our write lost a race).
    Other(Option<String>),
}

impl LeaderElector {
    /// An elector for the Lease `namespace/lease_name`. `identity` must be
    /// unique among the candidates (the Pod name is).
    pub fn new(
        client: Client,
        namespace: &str,
        lease_name: &str,
        identity: &str,
        timing: LeaseTiming,
    ) -> Result<Self, Error> {
        timing.validate()?;
        let (status, _) = watch::channel(ElectionStatus::Standby {
            holder: None,
            read_at: None,
        });
        Ok(Self {
            shared: Arc::new(Shared {
                api: Api::namespaced(client, namespace),
                lease: format!("{namespace}/{lease_name}"),
                name: lease_name.to_string(),
                identity: identity.to_string(),
                timing,
                status,
            }),
        })
    }

    pub fn identity(&self) -> &str {
        &self.shared.identity
    }

    /// Follows this elector's [`ElectionStatus`].
    pub fn status(&self) -> watch::Receiver<ElectionStatus> {
        self.shared.status.subscribe()
    }

    /// Waits until this process holds the Lease, then keeps renewing it in
    /// the background until the guard is released or dropped.
    ///
    /// Transient API errors are retried every retry period for as long as it
    /// takes; only a 401/403 (RBAC does not allow the Lease) is returned.
    /// Dropping the future is safe: a Lease won in the last moment simply
    /// expires.
    pub async fn acquire(&self) -> Result<LeaderGuard, Error> {
        let s = &self.shared;
        let mut last_holder: Option<Option<String>> = None;
        let mut failing = false;
        loop {
            let started = Instant::now();
            match s.try_acquire_or_renew(false).await {
                Ok(Attempt::Held) => {
                    tracing::info!(lease = %s.lease, identity = %s.identity, "acquired leadership");
                    s.status.send_replace(ElectionStatus::Leader);
                    return Ok(LeaderGuard::start(self.shared.clone(), started));
                }
                Ok(Attempt::Other(holder)) => {
                    if failing {
                        tracing::info!(lease = %s.lease, "the Lease is readable again");
                        failing = false;
                    }
                    if last_holder.as_ref() != Some(&holder) {
                        tracing::info!(
                            lease = %s.lease,
                            holder = holder.as_deref().unwrap_or("<none>"),
                            "waiting for leadership"
                        );
                        last_holder = Some(holder);
                    }
                }
                Err(e @ Error::Forbidden { .. }) => return Err(e),
                Err(e) => {
                    // One warning per outage, not one every retry period.
                    if failing {
                        tracing::debug!(lease = %s.lease, error = %e, "still cannot acquire the Lease");
                    } else {
                        tracing::warn!(lease = %s.lease, error = %e, "cannot acquire the Lease; retrying");
                        failing = true;
                    }
                }
            }
            // Jitter so standbys that started together do not ask in lockstep.
            let jitter = rand::thread_rng().gen_range(0.0..0.2);
            tokio::time::sleep(s.timing.retry_period.mul_f64(1.0 + jitter)).await;
        }
    }
}

impl Shared {
    /// Reads the Lease and, if [`claim`] says so, writes it back as ours.
    /// `renewing`: we are the leader, and any other holder means we lost.
    async fn try_acquire_or_renew(&self, renewing: bool) -> Result<Attempt, Error> {
        let observed = self
            .call("reading the Lease", self.api.get_opt(&self.name))
            .await?;
        let now = Timestamp::now();
        let holder = observed
            .as_ref()
            .and_then(|l| l.spec.as_ref())
            .and_then(holder_of)
            .map(str::to_string);
        if !renewing {
            self.status.send_replace(ElectionStatus::Standby {
                holder: holder.clone(),
                read_at: Some(Instant::now()),
            });
        }
        if renewing && holder.as_deref().is_some_and(|h| h != self.identity) {
            return Ok(Attempt::Other(holder));
        }
        let Some(spec) = claim(
            observed.as_ref().and_then(|l| l.spec.as_ref()),
            &self.identity,
            now,
            self.timing.lease_duration_seconds(),
        ) else {
            return Ok(Attempt::Other(holder));
        };
        let pp = PostParams::default();
        let written = match observed {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(spec),
                };
                self.call("creating the Lease", self.api.create(&pp, &lease))
                    .await
            }
            Some(mut lease) => {
                // Keeps metadata.resourceVersion: a concurrent write makes
                // this a 409.
                lease.spec = Some(spec);
                self.call(
                    "updating the Lease",
                    self.api.replace(&self.name, &pp, &lease),
                )
                .await
            }
        };
        match written {
            Ok(_) => Ok(Attempt::Held),
            Err(Error::Kube(kube::Error::Api(status)))
                if status.is_conflict() || status.is_already_exists() =>
            {
                tracing::debug!(lease = %self.lease, "another candidate wrote the Lease first");
                Ok(Attempt::Other(holder))
            }
            Err(e) => Err(e),
        }
    }

    /// Bounds an API call and sorts out RBAC errors, which retrying does not
    /// fix.
    async fn call<T>(
        &self,
        what: &'static str,
        f: impl Future<Output = kube::Result<T>>,
    ) -> Result<T, Error> {
        let timeout = self.timing.call_timeout();
        match tokio::time::timeout(timeout, f).await {
            Err(_) => Err(Error::Timeout(what, timeout)),
            Ok(Ok(v)) => Ok(v),
            Ok(Err(kube::Error::Api(status))) if status.is_forbidden() || status.code == 401 => {
                Err(Error::Forbidden {
                    lease: self.lease.clone(),
                    source: kube::Error::Api(status),
                })
            }
            Ok(Err(e)) => Err(Error::Kube(e)),
        }
    }

    /// Clears the holder if it is still us, so a standby takes over at its
    /// next retry. A few attempts: a 409 here is our own last renewal racing.
    async fn release(&self) -> Result<(), Error> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let Some(mut lease) = self
                .call("reading the Lease", self.api.get_opt(&self.name))
                .await?
            else {
                return Ok(());
            };
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            if holder_of(spec) != Some(self.identity.as_str()) {
                return Ok(());
            }
            let now = MicroTime(Timestamp::now());
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(now.clone());
            spec.acquire_time = Some(now);
            match self
                .call(
                    "releasing the Lease",
                    self.api.replace(&self.name, &PostParams::default(), &lease),
                )
                .await
            {
                Ok(_) => return Ok(()),
                Err(Error::Kube(kube::Error::Api(status)))
                    if status.is_conflict() && attempts < 3 =>
                {
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Proof of leadership: renews the Lease in the background.
///
/// Dropping the guard stops renewing without releasing (the Lease then
/// expires); call [`LeaderGuard::release`] on a graceful shutdown.
pub struct LeaderGuard {
    shared: Arc<Shared>,
    lost: CancellationToken,
    stop: CancellationToken,
    renewer: Option<JoinHandle<()>>,
}

impl LeaderGuard {
    fn start(shared: Arc<Shared>, renewed_at: Instant) -> Self {
        let lost = CancellationToken::new();
        let stop = CancellationToken::new();
        let renewer = tokio::spawn(keep_renewing(
            shared.clone(),
            renewed_at,
            lost.clone(),
            stop.clone(),
        ));
        Self {
            shared,
            lost,
            stop,
            renewer: Some(renewer),
        }
    }

    /// Cancelled when leadership is lost: the renew deadline passed without
    /// a successful renewal, or another holder took the Lease. Whatever acts
    /// as the leader must stop at once. Not cancelled by
    /// [`LeaderGuard::release`].
    pub fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }

    /// Whether leadership has not been lost (yet).
    pub fn is_leader(&self) -> bool {
        !self.lost.is_cancelled()
    }

    /// Stops renewing and gives the Lease up, if it is still ours.
    pub async fn release(mut self) -> Result<(), Error> {
        self.stop.cancel();
        if let Some(renewer) = self.renewer.take() {
            // The renewer finishes its current attempt (bounded) first, so
            // no renewal lands after the release.
            let _ = renewer.await;
        }
        self.shared.status.send_replace(ElectionStatus::Stopped);
        // Bounded as a whole: shutdown must not hang on a slow API server
        // (the Lease then expires on its own).
        let bound = self.shared.timing.renew_deadline;
        let released = tokio::time::timeout(bound, self.shared.release())
            .await
            .unwrap_or(Err(Error::Timeout("releasing the Lease", bound)));
        if released.is_ok() {
            tracing::info!(lease = %self.shared.lease, "released leadership");
        }
        released
    }
}

impl Drop for LeaderGuard {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn keep_renewing(
    shared: Arc<Shared>,
    mut renewed_at: Instant,
    lost: CancellationToken,
    stop: CancellationToken,
) {
    let timing = shared.timing;
    let why = loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(timing.retry_period) => {}
        }
        let started = Instant::now();
        let deadline = renewed_at + timing.renew_deadline;
        match tokio::time::timeout_at(deadline, shared.try_acquire_or_renew(true)).await {
            Ok(Ok(Attempt::Held)) => renewed_at = started,
            Ok(Ok(Attempt::Other(Some(holder)))) => {
                break format!("the Lease is now held by {holder}");
            }
            Ok(Ok(Attempt::Other(None))) => {
                tracing::warn!(lease = %shared.lease, "renewing the Lease raced another write; retrying");
            }
            Ok(Err(e)) => {
                tracing::warn!(lease = %shared.lease, error = %e, "renewing the Lease failed; retrying");
            }
            Err(_) => {
                break format!(
                    "no successful renewal for {:?} (renew deadline)",
                    timing.renew_deadline
                );
            }
        }
        if Instant::now() >= renewed_at + timing.renew_deadline {
            break format!(
                "no successful renewal for {:?} (renew deadline)",
                timing.renew_deadline
            );
        }
    };
    tracing::error!(lease = %shared.lease, identity = %shared.identity, reason = %why, "lost leadership");
    shared.status.send_replace(ElectionStatus::Stopped);
    lost.cancel();
}

/// The holder named by a Lease; an empty name means none.
fn holder_of(spec: &LeaseSpec) -> Option<&str> {
    spec.holder_identity.as_deref().filter(|h| !h.is_empty())
}

/// Whether a Lease held by someone has run out at `now`: its last renewal
/// plus its duration lies in the past.
pub fn expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    let Some(MicroTime(renewed)) = spec.renew_time else {
        return true;
    };
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(0)));
    match renewed.checked_add(duration) {
        Ok(until) => until <= now,
        // A renewal time so far in the future that adding overflows.
        Err(_) => false,
    }
}

/// The Lease spec `identity` should write, or `None` when someone else
/// validly holds the Lease. `observed` is the spec as read (`None`: no
/// Lease).
///
/// Taking over from another (or no) holder sets `acquireTime` and counts a
/// transition; renewing our own Lease keeps both.
pub fn claim(
    observed: Option<&LeaseSpec>,
    identity: &str,
    now: Timestamp,
    lease_duration_seconds: i32,
) -> Option<LeaseSpec> {
    let now = MicroTime(now);
    let Some(old) = observed else {
        return Some(LeaseSpec {
            holder_identity: Some(identity.to_string()),
            lease_duration_seconds: Some(lease_duration_seconds),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            lease_transitions: Some(0),
            ..LeaseSpec::default()
        });
    };
    let mut spec = old.clone();
    match holder_of(old) {
        Some(h) if h == identity => {}
        Some(_) if !expired(old, now.0) => return None,
        _ => {
            spec.holder_identity = Some(identity.to_string());
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(old.lease_transitions.unwrap_or(0).saturating_add(1));
        }
    }
    spec.lease_duration_seconds = Some(lease_duration_seconds);
    spec.renew_time = Some(now);
    Some(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn held(by: &str, renewed: i64, duration: i32, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(by.into()),
            acquire_time: Some(MicroTime(at(0))),
            renew_time: Some(MicroTime(at(renewed))),
            lease_duration_seconds: Some(duration),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn an_absent_lease_is_created_with_no_transitions() {
        let spec = claim(None, "a", at(5), 15).unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("a"));
        assert_eq!(spec.lease_transitions, Some(0));
        assert_eq!(spec.lease_duration_seconds, Some(15));
        assert_eq!(spec.acquire_time, Some(MicroTime(at(5))));
        assert_eq!(spec.renew_time, Some(MicroTime(at(5))));
    }

    #[test]
    fn a_valid_lease_of_another_holder_is_left_alone() {
        let old = held("b", 10, 15, 3);
        assert_eq!(claim(Some(&old), "a", at(24), 15), None);
    }

    #[test]
    fn an_expired_lease_is_taken_over_and_counts_a_transition() {
        let old = held("b", 10, 15, 3);
        let spec = claim(Some(&old), "a", at(25), 15).unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("a"));
        assert_eq!(spec.lease_transitions, Some(4));
        assert_eq!(spec.acquire_time, Some(MicroTime(at(25))));
        assert_eq!(spec.renew_time, Some(MicroTime(at(25))));
    }

    #[test]
    fn a_released_lease_is_taken_at_once() {
        let mut old = held("b", 10, 1, 3);
        old.holder_identity = None;
        let spec = claim(Some(&old), "a", at(10), 15).unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("a"));
        assert_eq!(spec.lease_transitions, Some(4));
        old.holder_identity = Some(String::new());
        assert!(claim(Some(&old), "a", at(10), 15).is_some());
    }

    #[test]
    fn renewing_keeps_acquire_time_and_transitions() {
        let old = held("a", 10, 15, 3);
        let spec = claim(Some(&old), "a", at(12), 15).unwrap();
        assert_eq!(spec.lease_transitions, Some(3));
        assert_eq!(spec.acquire_time, Some(MicroTime(at(0))));
        assert_eq!(spec.renew_time, Some(MicroTime(at(12))));
    }

    #[test]
    fn a_lease_without_renew_time_or_duration_has_expired() {
        let mut old = held("b", 10, 15, 0);
        old.renew_time = None;
        assert!(expired(&old, at(10)));
        let mut old = held("b", 10, 15, 0);
        old.lease_duration_seconds = None;
        assert!(expired(&old, at(10)));
    }

    #[test]
    fn timing_must_leave_room_between_deadline_and_expiry() {
        assert!(LeaseTiming::default().validate().is_ok());
        let t = LeaseTiming {
            renew_deadline: Duration::from_secs(15),
            ..LeaseTiming::default()
        };
        assert!(t.validate().is_err());
        let t = LeaseTiming {
            retry_period: Duration::from_secs(10),
            ..LeaseTiming::default()
        };
        assert!(t.validate().is_err());
        let t = LeaseTiming {
            lease_duration: Duration::from_millis(1500),
            renew_deadline: Duration::from_secs(1),
            retry_period: Duration::from_millis(250),
        };
        assert_eq!(t.lease_duration_seconds(), 2);
    }
}
