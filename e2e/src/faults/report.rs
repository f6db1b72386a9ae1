//! Reporting: one summary per row or soak run (faults injected, invariant
//! checks done, violations), printed always, and a failure message that
//! holds everything needed to act on it (and the seed to replay a soak).

use std::time::Duration;

use super::invariants::{INVARIANTS, Violation};
use super::world::FaultRecord;

/// The outcome of a row or a soak run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub name: String,
    /// The soak's seed.
    pub seed: Option<u64>,
    pub elapsed: Duration,
    pub faults: Vec<FaultRecord>,
    /// Continuous checks (snapshots), each against every invariant.
    pub checks: u64,
    /// Final checks run while the cluster settled.
    pub final_checks: u64,
    pub violations: Vec<Violation>,
    /// Shown on failure (operator log tails and the like).
    pub context: String,
}

impl Report {
    /// Injections only (not their ends).
    pub fn faults_injected(&self) -> usize {
        self.faults.iter().filter(|f| f.injected).count()
    }

    /// The one-paragraph summary.
    pub fn summary(&self) -> String {
        let seed = self.seed.map(|s| format!(" seed={s}")).unwrap_or_default();
        let mut out = format!(
            "{}:{seed} {:.1} s, {} faults injected, {} invariant checks ({} snapshots x {} invariants, then {} final), {} violations\n",
            self.name,
            self.elapsed.as_secs_f64(),
            self.faults_injected(),
            self.checks * INVARIANTS,
            self.checks,
            INVARIANTS,
            self.final_checks,
            self.violations.len(),
        );
        for f in &self.faults {
            out.push_str(&format!("  {:>6.1} s  {}\n", f.at.as_secs_f64(), f.what));
        }
        out
    }

    /// Panics with every violation unless there is none.
    pub fn assert_clean(&self) {
        if self.violations.is_empty() {
            eprintln!("{}", self.summary());
            return;
        }
        let mut msg = String::new();
        if let Some(seed) = self.seed {
            msg.push_str(&format!(
                "replay with SWARMSEED_SOAK_SEED={seed} (or `e2e soak --seed {seed}`)\n"
            ));
        }
        for v in &self.violations {
            msg.push_str(&format!("{v}\n"));
        }
        panic!(
            "{} broke {} promise(s):\n{msg}\n{}\n{}",
            self.name,
            self.violations.len(),
            self.summary(),
            self.context
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::invariants::Invariant;

    #[test]
    fn a_failure_names_the_seed_and_every_violation() {
        let r = Report {
            name: "soak".into(),
            seed: Some(42),
            faults: vec![
                FaultRecord {
                    at: Duration::from_secs(1),
                    what: "partition node-1".into(),
                    injected: true,
                },
                FaultRecord {
                    at: Duration::from_secs(9),
                    what: "partition-end node-1".into(),
                    injected: false,
                },
            ],
            checks: 10,
            violations: vec![Violation {
                invariant: Invariant::NoLeftover,
                at: Duration::from_secs(3),
                subject: "state/ml/w on node-1".into(),
                detail: "x".into(),
            }],
            ..Report::default()
        };
        assert_eq!(r.faults_injected(), 1);
        assert!(
            r.summary().contains("50 invariant checks"),
            "{}",
            r.summary()
        );
        let msg = std::panic::catch_unwind(|| r.assert_clean())
            .unwrap_err()
            .downcast::<String>()
            .unwrap();
        assert!(msg.contains("SWARMSEED_SOAK_SEED=42"), "{msg}");
        assert!(msg.contains("state/ml/w on node-1"), "{msg}");
    }
}
