//! The seeded chaos soak (`swarmseed_e2e::faults::soak`): in CI for
//! `SWARMSEED_SOAK_SECS` (default 120 s) of faults with a fresh seed,
//! printed with the faults and the invariant checks; a failure prints the
//! seed to replay it (`SWARMSEED_SOAK_SEED=N`, or `e2e soak --seed N`).

use swarmseed_e2e::faults::soak::{SoakConfig, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak() {
    if let Some(why) = swarmseed_harness::netns::unavailable_reason() {
        eprintln!("SKIP: the soak needs network namespaces ({why})");
        return;
    }
    let cfg = SoakConfig::from_env().unwrap();
    let report = run(cfg).await.unwrap();
    // Past the test harness's capture, so that every run's log (CI's too)
    // keeps the seed, the faults and the checks, passing or not.
    use std::io::Write as _;
    let _ = write!(std::io::stderr(), "{}", report.summary());
    report.assert_clean();
}
