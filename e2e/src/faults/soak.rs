//! The seeded chaos soak: 3 Datasets on a 4-node cluster, faults drawn from
//! the matrix (agent kill, operator kill, partition, origin outage, delete
//! and recreate) by a seeded generator, the invariants checked every
//! second; at the end every fault is healed and every Dataset must come
//! back Ready with the origin's bytes.
//!
//! The schedule is a pure function of the seed and the duration
//! ([`plan`]), so a seed replays the same faults in the same order at the
//! same offsets; only the product's own timing differs between runs.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::json;

use super::invariants::{Invariant, Violation};
use super::monitor::Monitor;
use super::report::Report;
use super::row::conclude;
use super::setup::{FaultCluster, FaultSetup, Source};
use swarmseed_harness::error::{Error, Result};
use swarmseed_harness::origin::DatasetSpec;
use swarmseed_harness::rng::SplitMix64;

/// Namespace of the soak's Datasets.
pub const NAMESPACE: &str = "soak";
/// Chaos time in CI, unless `SWARMSEED_SOAK_SECS` says otherwise.
pub const DEFAULT_SECS: u64 = 120;
/// How long every Dataset may take to be Ready again after the last fault.
pub const RECOVERY: Duration = Duration::from_secs(180);
/// At most this many faults at once.
const MAX_ACTIVE: usize = 2;

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SoakConfig {
    pub seed: u64,
    /// How long faults are injected (recovery comes on top).
    pub duration: Duration,
    pub nodes: usize,
    pub datasets: usize,
    pub keep_work_dir: bool,
}

impl SoakConfig {
    /// `SWARMSEED_SOAK_SEED` (default: from the clock, printed) and
    /// `SWARMSEED_SOAK_SECS` (default [`DEFAULT_SECS`]).
    pub fn from_env() -> Result<Self> {
        let num = |var: &str| -> Result<Option<u64>> {
            match std::env::var(var) {
                Ok(v) => v
                    .trim()
                    .parse()
                    .map(Some)
                    .map_err(|_| Error::Invalid(format!("{var}={v:?} is not a number"))),
                Err(_) => Ok(None),
            }
        };
        Ok(Self {
            seed: num("SWARMSEED_SOAK_SEED")?.unwrap_or_else(clock_seed),
            duration: Duration::from_secs(num("SWARMSEED_SOAK_SECS")?.unwrap_or(DEFAULT_SECS)),
            nodes: 4,
            datasets: 3,
            keep_work_dir: std::env::var_os("SWARMSEED_FAULTS_KEEP").is_some(),
        })
    }
}

/// A seed from the clock, for runs that do not pin one.
pub fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        % 1_000_000_007
}

/// One step of the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    KillAgent(usize),
    RestartAgent(usize),
    Partition(usize),
    HealPartition(usize),
    OriginDown,
    OriginUp,
    KillOperator,
    StartOperator,
    /// Delete Dataset `i` (its recreation waits until it is gone).
    Delete(usize),
    Recreate(usize),
}

/// A step at an offset from the start of the chaos.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Planned {
    pub at: Duration,
    pub step: Step,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    AgentKill,
    Partition,
    OperatorKill,
    OriginOutage,
    DeleteRecreate,
}

/// (kind, weight, shortest, longest) — how often each fault is drawn and
/// how long it lasts, in seconds.
const MENU: [(Kind, u64, u64, u64); 5] = [
    (Kind::AgentKill, 3, 3, 20),
    (Kind::Partition, 2, 8, 30),
    (Kind::OperatorKill, 1, 0, 8),
    (Kind::OriginOutage, 2, 8, 25),
    (Kind::DeleteRecreate, 2, 2, 10),
];

/// The faults of a run: a pure function of its inputs. Faults start 3 s
/// in, 4–12 s apart; at most [`MAX_ACTIVE`] at once, at most one node cut
/// off at a time (agent down or partitioned), one origin outage, one
/// operator kill and one deletion per Dataset at a time; every fault ends
/// by `chaos`.
pub fn plan(seed: u64, chaos: Duration, nodes: usize, datasets: usize) -> Vec<Planned> {
    let mut rng = SplitMix64::new(seed);
    let mut steps = Vec::new();
    // (kind, target, end)
    let mut active: Vec<(Kind, usize, Duration)> = Vec::new();
    let mut t = Duration::from_secs(3);
    let last_start = chaos.saturating_sub(Duration::from_secs(3));
    while t < last_start {
        active.retain(|(_, _, end)| *end > t);
        if active.len() < MAX_ACTIVE {
            let node_busy = active
                .iter()
                .any(|(k, _, _)| matches!(k, Kind::AgentKill | Kind::Partition));
            let allowed: Vec<(Kind, u64, u64, u64)> = MENU
                .into_iter()
                .filter(|(k, ..)| match k {
                    Kind::AgentKill | Kind::Partition => !node_busy && nodes > 0,
                    Kind::DeleteRecreate => {
                        datasets > active.iter().filter(|(a, ..)| a == k).count()
                    }
                    _ => !active.iter().any(|(a, ..)| a == k),
                })
                .collect();
            let total: u64 = allowed.iter().map(|(_, w, ..)| w).sum();
            let mut pick = rng.below(total);
            let chosen = allowed.iter().find(|(_, w, ..)| {
                if pick < *w {
                    true
                } else {
                    pick -= w;
                    false
                }
            });
            if let Some(&(kind, _, lo, hi)) = chosen {
                let end = (t + Duration::from_secs(rng.between(lo, hi))).min(chaos);
                let target = match kind {
                    Kind::AgentKill | Kind::Partition => rng.below(nodes as u64) as usize,
                    Kind::DeleteRecreate => {
                        let busy: BTreeSet<usize> = active
                            .iter()
                            .filter(|(k, ..)| *k == Kind::DeleteRecreate)
                            .map(|(_, i, _)| *i)
                            .collect();
                        let free: Vec<usize> =
                            (0..datasets).filter(|i| !busy.contains(i)).collect();
                        free[rng.below(free.len() as u64) as usize]
                    }
                    _ => 0,
                };
                let (begin, finish) = match kind {
                    Kind::AgentKill => (Step::KillAgent(target), Step::RestartAgent(target)),
                    Kind::Partition => (Step::Partition(target), Step::HealPartition(target)),
                    Kind::OperatorKill => (Step::KillOperator, Step::StartOperator),
                    Kind::OriginOutage => (Step::OriginDown, Step::OriginUp),
                    Kind::DeleteRecreate => (Step::Delete(target), Step::Recreate(target)),
                };
                steps.push(Planned { at: t, step: begin });
                steps.push(Planned {
                    at: end,
                    step: finish,
                });
                active.push((kind, target, end));
            }
        }
        t += Duration::from_secs(rng.between(4, 12));
    }
    // Stable: steps at the same offset keep the order they were drawn in.
    steps.sort_by_key(|p| p.at);
    steps
}

/// The soak's Datasets: the same spec for each, its own source.
fn dataset_spec(source: &Source) -> serde_json::Value {
    json!({
        "source": { "uri": source.uri },
        "chunkSize": "256Ki",
        // Slow enough that faults often land mid-seed.
        "origin": { "maxFetchers": 2, "bandwidth": "512Ki" },
    })
}

fn dataset_name(i: usize) -> String {
    format!("soak-{}", (b'a' + (i % 26) as u8) as char)
}

/// Runs the soak; the report holds every violation (see
/// [`Report::assert_clean`]).
pub async fn run(cfg: SoakConfig) -> Result<Report> {
    let started = Instant::now();
    eprintln!(
        "soak: seed={} chaos={}s nodes={} datasets={} (replay: SWARMSEED_SOAK_SEED={})",
        cfg.seed,
        cfg.duration.as_secs(),
        cfg.nodes,
        cfg.datasets,
        cfg.seed
    );
    let mut setup = FaultSetup::nodes(cfg.nodes);
    setup.keep_work_dir |= cfg.keep_work_dir;
    let Some(mut c) = FaultCluster::start(setup).await? else {
        return Err(Error::Invalid(
            "the soak needs network namespaces (run as root)".into(),
        ));
    };
    let mut sources = Vec::new();
    for i in 0..cfg.datasets {
        let spec = DatasetSpec {
            seed: cfg.seed.wrapping_add(i as u64),
            big_files: 2,
            big_file_size: 2 * 1024 * 1024 + 777 * i as u64,
            small_files: 30,
            small_file_min: 0,
            small_file_max: 64 * 1024,
            small_dirs: 3,
        };
        sources.push(c.add_source(&dataset_name(i), &spec)?);
    }
    for (i, s) in sources.iter().enumerate() {
        c.apply(NAMESPACE, &dataset_name(i), &dataset_spec(s), Some(s))
            .await?;
    }
    let monitor = Monitor::start(c.observer.clone(), c.world.clone());
    let steps = plan(cfg.seed, cfg.duration, cfg.nodes, cfg.datasets);
    let mut failures = drive(&mut c, &sources, steps, cfg.nodes).await;
    failures.extend(recover(&mut c, &sources).await);
    Ok(conclude("soak", Some(cfg.seed), started, c, monitor, failures).await)
}

/// Executes the schedule. A recreation waits (re-queued every 2 s) until
/// the deleted object is gone; an injection that fails is a violation.
async fn drive(
    c: &mut FaultCluster,
    sources: &[Source],
    steps: Vec<Planned>,
    nodes: usize,
) -> Vec<Violation> {
    let node = |i: usize| format!("node-{}", i % nodes.max(1));
    let chaos_start = Instant::now();
    let mut queue: std::collections::VecDeque<Planned> = steps.into();
    let mut failures = Vec::new();
    while let Some(next) = queue.front().copied() {
        let due = chaos_start + next.at;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        queue.pop_front();
        let r = match next.step {
            Step::KillAgent(i) => c.kill_agent(&node(i)).await,
            Step::RestartAgent(i) => c.restart_agent(&node(i)).await,
            Step::Partition(i) => c.partition(&node(i)),
            Step::HealPartition(i) => c.heal_partition(&node(i)),
            Step::OriginDown => c.origin_outage(),
            Step::OriginUp => c.origin_restore(),
            Step::KillOperator => c.kill_operator(),
            Step::StartOperator => c.start_operator(),
            Step::Delete(i) => {
                c.world
                    .injected(format!("delete {NAMESPACE}/{}", dataset_name(i)));
                c.delete(NAMESPACE, &dataset_name(i)).await
            }
            Step::Recreate(i) => match c.dataset(NAMESPACE, &dataset_name(i)).await {
                Ok(None) => {
                    c.world
                        .healed(format!("recreate {NAMESPACE}/{}", dataset_name(i)));
                    let s = &sources[i];
                    c.apply(NAMESPACE, &dataset_name(i), &dataset_spec(s), Some(s))
                        .await
                }
                // Already back (a late recreation did it): nothing to do.
                Ok(Some(d)) if !d.deleting => Ok(()),
                // Still held by its finalizer (a node may be away): later.
                Ok(Some(_)) | Err(_) => {
                    let at = chaos_start.elapsed() + Duration::from_secs(2);
                    let pos = queue.iter().position(|p| p.at > at).unwrap_or(queue.len());
                    queue.insert(
                        pos,
                        Planned {
                            at,
                            step: next.step,
                        },
                    );
                    Ok(())
                }
            },
        };
        if let Err(e) = r {
            failures.push(row_violation(
                c,
                "inject a fault",
                format!("{:?}: {e}", next.step),
            ));
        }
    }
    failures
}

/// After the chaos: every Dataset Ready again within [`RECOVERY`].
async fn recover(c: &mut FaultCluster, sources: &[Source]) -> Vec<Violation> {
    let mut failures = Vec::new();
    if !c.operator_running()
        && let Err(e) = c.start_operator()
    {
        failures.push(row_violation(c, "restart the operator", e));
    }
    let deadline = Instant::now() + RECOVERY;
    for i in 0..sources.len() {
        let name = dataset_name(i);
        let left = deadline.saturating_duration_since(Instant::now());
        if let Err(e) = c.wait_ready(NAMESPACE, &name, left).await {
            failures.push(row_violation(
                c,
                "every Dataset Ready again after the faults",
                e,
            ));
        }
    }
    failures
}

fn row_violation(c: &FaultCluster, what: &str, detail: impl std::fmt::Display) -> Violation {
    Violation {
        invariant: Invariant::Row(what.into()),
        at: c.world.lock().started.elapsed(),
        subject: "soak".into(),
        detail: detail.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_one_schedule_within_the_limits() {
        let chaos = Duration::from_secs(600);
        let a = plan(7, chaos, 4, 3);
        assert_eq!(a, plan(7, chaos, 4, 3));
        assert_ne!(a, plan(8, chaos, 4, 3));
        assert!(a.len() > 40, "{}", a.len());
        // Replay the schedule: limits hold at every step, everything ends.
        let mut nodes_out = BTreeSet::new();
        let (mut origin, mut operator) = (false, false);
        let mut deleted = BTreeSet::new();
        let mut active = 0usize;
        for p in &a {
            assert!(p.at <= chaos);
            match p.step {
                Step::KillAgent(i) | Step::Partition(i) => {
                    assert!(nodes_out.is_empty(), "two nodes out at {:?}", p.at);
                    nodes_out.insert(i);
                    active += 1;
                }
                Step::RestartAgent(i) | Step::HealPartition(i) => {
                    assert!(nodes_out.remove(&i));
                    active -= 1;
                }
                Step::OriginDown => {
                    assert!(!origin);
                    origin = true;
                    active += 1;
                }
                Step::OriginUp => {
                    origin = false;
                    active -= 1;
                }
                Step::KillOperator => {
                    assert!(!operator);
                    operator = true;
                    active += 1;
                }
                Step::StartOperator => {
                    operator = false;
                    active -= 1;
                }
                Step::Delete(i) => {
                    assert!(deleted.insert(i));
                    active += 1;
                }
                Step::Recreate(i) => {
                    assert!(deleted.remove(&i));
                    active -= 1;
                }
            }
            assert!(active <= MAX_ACTIVE, "{active} faults at {:?}", p.at);
        }
        assert!(nodes_out.is_empty() && !origin && !operator && deleted.is_empty());
        // Every kind comes up in a long run.
        for want in [
            Step::KillOperator,
            Step::OriginDown,
            Step::Partition(0),
            Step::KillAgent(0),
            Step::Delete(0),
        ] {
            assert!(
                a.iter()
                    .any(|p| std::mem::discriminant(&p.step) == std::mem::discriminant(&want)),
                "{want:?} never drawn"
            );
        }
    }

    #[test]
    fn a_short_run_still_heals_everything_before_its_end() {
        let chaos = Duration::from_secs(20);
        for seed in 0..50 {
            let steps = plan(seed, chaos, 4, 3);
            assert!(steps.iter().all(|p| p.at <= chaos), "seed {seed}");
            assert_eq!(steps.len() % 2, 0, "seed {seed}: every fault ends");
        }
    }
}
