//! One row of the fault matrix: a [`FaultCluster`] watched by the
//! [`Monitor`] from start to end, the row's own assertions (recorded, not
//! fatal, so a run shows every assertion that fails rather than the first),
//! and at the end the [`final_check`] once the cluster settled, then the
//! [`Report`].

use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

use super::invariants::{Invariant, Violation, final_check};
use super::monitor::Monitor;
use super::observe::Observer;
use super::report::Report;
use super::setup::{FaultCluster, FaultSetup};
use super::world::SharedWorld;
use swarmseed_harness::error::Result;
use swarmseed_harness::seeding::SeedCluster;

/// How long the final check may wait for the cluster to settle.
pub const SETTLE: Duration = Duration::from_secs(45);

/// A running row; see the module doc.
pub struct Row {
    pub name: String,
    cluster: FaultCluster,
    monitor: Monitor,
    failures: Vec<Violation>,
    started: Instant,
}

impl Deref for Row {
    type Target = FaultCluster;
    fn deref(&self) -> &FaultCluster {
        &self.cluster
    }
}

impl DerefMut for Row {
    fn deref_mut(&mut self) -> &mut FaultCluster {
        &mut self.cluster
    }
}

impl Row {
    /// Starts the cluster and the monitor; `None` (after printing why) where
    /// the rows cannot run. Panics if the cluster does not start.
    pub async fn start(name: &str, setup: FaultSetup) -> Option<Self> {
        let started = Instant::now();
        let cluster = match FaultCluster::start(setup).await {
            Ok(Some(c)) => c,
            Ok(None) => return None,
            Err(e) => panic!("{name}: the cluster did not start: {e}"),
        };
        let monitor = Monitor::start(cluster.observer.clone(), cluster.world.clone());
        Some(Self {
            name: name.to_owned(),
            cluster,
            monitor,
            failures: Vec::new(),
            started,
        })
    }

    /// Records a failed row assertion unless `ok`.
    pub fn check(&mut self, what: &str, ok: bool, detail: impl std::fmt::Display) {
        if !ok {
            let at = self.world.lock().started.elapsed();
            let v = Violation {
                invariant: Invariant::Row(what.to_owned()),
                at,
                subject: self.name.clone(),
                detail: detail.to_string(),
            };
            eprintln!("ROW ASSERTION FAILED {v}");
            self.failures.push(v);
        }
    }

    /// The value, or records the error as a failed assertion `what`.
    pub fn check_ok<T>(&mut self, what: &str, r: Result<T>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.check(what, false, e);
                None
            }
        }
    }

    /// Panics on a setup step that failed (not an assertion: the row cannot
    /// go on), with the operator logs.
    pub fn must<T>(&self, what: &str, r: Result<T>) -> T {
        r.unwrap_or_else(|e| {
            panic!(
                "{}: {what}: {e}\n{}",
                self.name,
                self.cluster.operator_logs(3000)
            )
        })
    }

    /// Violations the monitor found so far.
    pub fn violations(&self) -> Vec<Violation> {
        self.monitor.violations()
    }

    /// Stops the monitor, waits (up to [`SETTLE`]) for the final check to
    /// pass, prints the report and panics if any promise was broken.
    pub async fn finish(self) {
        let Self {
            name,
            cluster,
            monitor,
            failures,
            started,
        } = self;
        conclude(&name, None, started, cluster, monitor, failures)
            .await
            .assert_clean();
    }
}

/// Ends a row or a soak run: stops the monitor, waits for the final check
/// ([`settle`]) and makes the report. A clean run stops the cluster
/// gracefully; otherwise it is torn down on drop, after the report read
/// the operators' logs.
pub async fn conclude(
    name: &str,
    seed: Option<u64>,
    started: Instant,
    cluster: FaultCluster,
    monitor: Monitor,
    failures: Vec<Violation>,
) -> Report {
    let found = monitor.stop().await;
    let (final_checks, last) = settle(&cluster).await;
    let mut violations = failures;
    violations.extend(found.violations);
    violations.extend(last);
    let report = Report {
        name: name.to_owned(),
        seed,
        elapsed: started.elapsed(),
        faults: cluster.world.view().faults,
        checks: found.checks,
        final_checks,
        violations,
        context: cluster.operator_logs(3000),
    };
    if report.violations.is_empty() {
        cluster.seed.cluster.stop().await;
    }
    report
}

/// The shared invariant check for a row that runs a cluster of its own
/// rather than a [`Row`]: once its faults are healed, waits (up to
/// [`SETTLE`]) for [`final_check`] to pass and panics with what it found
/// otherwise. Without the origins' content known, published copies must
/// agree across nodes; without a baseline, only the nodes' directories are
/// checked for bytes outside the roots.
pub async fn assert_invariants(name: &str, cluster: &SeedCluster) {
    let (observer, world) = Observer::of(cluster);
    let (final_checks, violations) = settle_with(&observer, &world).await;
    Report {
        name: name.to_owned(),
        final_checks,
        violations,
        context: cluster.operator_log("operator-0"),
        ..Report::default()
    }
    .assert_clean();
}

/// Runs the final check until it passes or [`SETTLE`] is over; returns the
/// number of checks and the last result.
pub async fn settle(cluster: &FaultCluster) -> (u64, Vec<Violation>) {
    settle_with(&cluster.observer, &cluster.world).await
}

async fn settle_with(observer: &Observer, world: &SharedWorld) -> (u64, Vec<Violation>) {
    let start = Instant::now();
    let mut checks = 0;
    loop {
        let world = world.view();
        let snap = observer.observe(&world.sealed).await;
        let found = final_check(&snap, &world);
        checks += 1;
        if found.is_empty() || start.elapsed() > SETTLE {
            return (checks, found);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
