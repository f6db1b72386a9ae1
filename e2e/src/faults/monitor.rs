//! The continuous check: a task that takes a [`super::observe::Snapshot`]
//! every second and runs the [`Checker`] on it, for as long as a row or the
//! soak runs.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::invariants::{Checker, Violation};
use super::observe::Observer;
use super::world::SharedWorld;

/// How often the invariants are checked.
pub const INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct Found {
    checks: u64,
    violations: Vec<Violation>,
}

/// What the monitor found.
#[derive(Debug, Default, Clone)]
pub struct MonitorResult {
    /// Snapshots checked (each against every invariant).
    pub checks: u64,
    pub violations: Vec<Violation>,
}

/// A running monitor; [`Monitor::stop`] ends it.
#[derive(Debug)]
pub struct Monitor {
    found: Arc<Mutex<Found>>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Monitor {
    pub fn start(observer: Observer, world: SharedWorld) -> Self {
        let found = Arc::new(Mutex::new(Found::default()));
        let stop = CancellationToken::new();
        let (f, s) = (found.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut checker = Checker::new();
            let mut tick = tokio::time::interval(INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = s.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let view = world.view();
                let snap = observer.observe(&view.sealed).await;
                let new = checker.check(&snap, &world.view());
                for v in &new {
                    eprintln!("VIOLATION {v}");
                }
                let mut f = f.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                f.checks = checker.checks;
                f.violations.extend(new);
            }
        });
        Self { found, stop, task }
    }

    /// Violations so far (the monitor keeps running).
    pub fn violations(&self) -> Vec<Violation> {
        self.lock().violations.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Found> {
        self.found
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub async fn stop(self) -> MonitorResult {
        self.stop.cancel();
        let Self { found, task, .. } = self;
        let _ = task.await;
        let f = found
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        MonitorResult {
            checks: f.checks,
            violations: f.violations.clone(),
        }
    }
}
