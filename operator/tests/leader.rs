//! Leader election against the test API server: one leader at a time, a
//! standby takes over when the leader releases or stops renewing, and a
//! leader whose Lease is taken away finds out.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use swarmseed_operator::leader::{ElectionStatus, LeaderElector, LeaderGuard, LeaseTiming};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};

mod support;

const NS: &str = "default";
const LEASE: &str = "swarmseed-operator";

/// A 2 s lease: the leader gives up after 1 s without renewal, everyone
/// retries every 250 ms.
fn short() -> LeaseTiming {
    LeaseTiming {
        lease_duration: Duration::from_secs(2),
        renew_deadline: Duration::from_secs(1),
        retry_period: Duration::from_millis(250),
    }
}

fn elector(client: &Client, identity: &str) -> LeaderElector {
    LeaderElector::new(client.clone(), NS, LEASE, identity, short()).expect("valid timing")
}

fn spawn_acquire(e: &LeaderElector) -> JoinHandle<LeaderGuard> {
    let e = e.clone();
    tokio::spawn(async move { e.acquire().await.expect("leadership") })
}

/// Leadership as `e`, within 5 s.
async fn lead(e: &LeaderElector) -> LeaderGuard {
    timeout(Duration::from_secs(5), e.acquire())
        .await
        .expect("leadership within 5 s")
        .expect("leadership")
}

/// Candidate `a` leads; candidate `b` waits for it to go, and has had the
/// time to read the Lease.
async fn leader_and_standby(
    client: &Client,
) -> (
    LeaderElector,
    LeaderGuard,
    LeaderElector,
    JoinHandle<LeaderGuard>,
) {
    let (a, b) = (elector(client, "a"), elector(client, "b"));
    let guard = lead(&a).await;
    let standby = spawn_acquire(&b);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!standby.is_finished(), "b leads while a holds the lease");
    (a, guard, b, standby)
}

async fn lease(client: &Client) -> Lease {
    Api::<Lease>::namespaced(client.clone(), NS)
        .get(LEASE)
        .await
        .expect("the Lease")
}

fn holder_and_transitions(l: &Lease) -> (Option<String>, Option<i32>) {
    let spec = l.spec.clone().unwrap_or_default();
    (spec.holder_identity, spec.lease_transitions)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_candidates_exactly_one_leads() {
    let (_server, client) = support::api_server().await;
    let (a, b) = (elector(&client, "a"), elector(&client, "b"));
    let (mut ta, mut tb) = (spawn_acquire(&a), spawn_acquire(&b));
    let (winner, loser, _guard, mut waiting) = tokio::select! {
        g = &mut ta => ("a", &b, g.unwrap(), tb),
        g = &mut tb => ("b", &a, g.unwrap(), ta),
        () = tokio::time::sleep(Duration::from_secs(5)) => panic!("nobody became the leader"),
    };
    // Longer than the lease: the leader renews, so the other keeps waiting.
    assert!(
        timeout(Duration::from_secs(4), &mut waiting).await.is_err(),
        "both candidates lead"
    );
    assert_eq!(
        holder_and_transitions(&lease(&client).await),
        (Some(winner.to_string()), Some(0))
    );
    assert!(matches!(
        &*loser.status().borrow(),
        ElectionStatus::Standby { holder: Some(h), read_at: Some(_) } if h == winner
    ));
    waiting.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_lease_is_taken_over_at_the_next_retry() {
    let (_server, client) = support::api_server().await;
    let (a, guard, b, standby) = leader_and_standby(&client).await;

    let released = Instant::now();
    guard.release().await.unwrap();
    assert_eq!(*a.status().borrow(), ElectionStatus::Stopped);
    let _b = timeout(Duration::from_secs(3), standby)
        .await
        .expect("b took over")
        .unwrap();
    // Well before the 2 s lease would have expired on its own.
    assert!(released.elapsed() < Duration::from_millis(1500));
    assert_eq!(
        holder_and_transitions(&lease(&client).await),
        (Some("b".into()), Some(1))
    );
    assert_eq!(*b.status().borrow(), ElectionStatus::Leader);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_no_longer_renewed_is_taken_over_once_it_expires() {
    let (_server, client) = support::api_server().await;
    let (_a, guard, _b, standby) = leader_and_standby(&client).await;

    // The leader hangs or dies: it stops renewing without releasing.
    let last_renewal = lease(&client).await.spec.unwrap().renew_time.unwrap().0;
    drop(guard);
    let stopped = Instant::now();
    let _b = timeout(Duration::from_secs(5), standby)
        .await
        .expect("b took over")
        .unwrap();
    let after = stopped.elapsed();
    let l = lease(&client).await;
    let spec = l.spec.clone().unwrap();
    // Not before the lease ran out: renewed + 2 s.
    let taken = spec.acquire_time.unwrap().0;
    assert!(
        taken.duration_since(last_renewal) >= k8s_openapi::jiff::SignedDuration::from_secs(2),
        "taken over at {taken}, last renewed at {last_renewal}"
    );
    assert!(after < Duration::from_secs(4), "took {after:?}");
    assert_eq!(holder_and_transitions(&l), (Some("b".into()), Some(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_lease_is_taken_away_knows_it_lost() {
    let (_server, client) = support::api_server().await;
    let a = elector(&client, "a");
    let guard = lead(&a).await;
    let lost = guard.lost();
    assert!(guard.is_leader());

    // Someone else writes itself into the Lease (e.g. after a partition).
    let api: Api<Lease> = Api::namespaced(client.clone(), NS);
    let mut l = lease(&client).await;
    let spec = l.spec.as_mut().unwrap();
    spec.holder_identity = Some("intruder".into());
    spec.renew_time = Some(MicroTime(Timestamp::now()));
    spec.lease_duration_seconds = Some(30);
    api.replace(LEASE, &PostParams::default(), &l)
        .await
        .unwrap();

    timeout(Duration::from_secs(2), lost.cancelled())
        .await
        .expect("the leader noticed within a few renewals");
    assert!(!guard.is_leader());
    assert_eq!(*a.status().borrow(), ElectionStatus::Stopped);
    // Releasing after the loss leaves the new holder alone.
    guard.release().await.unwrap();
    assert_eq!(
        holder_and_transitions(&lease(&client).await).0.as_deref(),
        Some("intruder")
    );
}
