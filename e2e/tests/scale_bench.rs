//! `e2e bench-scale`, small: the real operator drives 20 simulated agents
//! and 2 Datasets to Ready, and the JSON report carries the figures the
//! results table is made of. Needs `swarmseed-operator` next to `e2e`
//! (`cargo build --release --bins`) and kubectl, as the other e2e tests.

// Tests unwrap like tests do.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

#[test]
fn the_operator_drives_simulated_agents_to_ready_and_the_report_says_so() {
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_e2e"))
        .args([
            "bench-scale",
            "--agents",
            "20",
            "--datasets",
            "2",
            "--seed-time",
            "3s",
            "--settle",
            "2s",
            "--timeout",
            "50s",
            "--json",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench-scale failed:\n{stdout}\n{stderr}"
    );
    assert!(start.elapsed() < Duration::from_secs(60), "{stderr}");
    let r: Value = serde_json::from_str(stdout.trim().lines().last().unwrap()).unwrap();

    assert_eq!(r["all_ready"], true, "{stdout}\n{stderr}");
    assert_eq!(r["agents"], 20);
    assert_eq!(r["datasets_ready"], 2);
    // Every agent got every Dataset's assignment, through the token check.
    assert_eq!(r["assigned_pairs"], 40, "{stdout}");
    assert_eq!(r["agent_unauthenticated_calls"], 0);
    assert!(r["agent_status_calls"].as_u64().unwrap() >= 40);
    for key in [
        "operator_peak_rss_bytes",
        "operator_rss_at_ready_bytes",
        "status_writes",
        "status_writes_max_per_s",
        "operator_status_writes",
        "operator_reconciles",
    ] {
        assert!(
            r[key].as_u64().is_some_and(|v| v > 0),
            "{key} missing or 0:\n{stdout}"
        );
    }
    for key in [
        "operator_cpu_seed_s",
        "status_writes_mean_per_s",
        "ready_after_last_agent_median_s",
        "ready_after_last_agent_max_s",
        "last_agent_ready_s",
        "last_dataset_ready_s",
        "all_assigned_s",
        "wall_s",
    ] {
        assert!(r[key].is_f64(), "{key} missing:\n{stdout}");
    }
    // Status says Ready only after the last agent did, and not much later.
    let latency = r["ready_after_last_agent_max_s"].as_f64().unwrap();
    assert!((0.0..20.0).contains(&latency), "{latency}");
    let per = r["per_dataset"].as_array().unwrap();
    assert_eq!(per.len(), 2);
    for d in per {
        assert!(d["ready_s"].is_f64(), "{d}");
        assert!(d["status_writes"].as_u64().unwrap() >= 1, "{d}");
    }
    // The operator rate-limits status writes to one a second per Dataset
    // (timed where its requests arrive, so load cannot fake a violation).
    assert_eq!(r["status_writes_max_per_s"], 1, "{stdout}");
    assert!(r["status_changes_seen"].as_u64().unwrap() >= 2, "{stdout}");
    assert!(stdout.contains("Datasets Ready        2/2"), "{stdout}");
}
