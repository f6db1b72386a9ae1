//! The README's main job, small: `e2e demo` seeds its example Dataset on
//! 4 nodes, verifies every copy and prints the figures.

// Tests unwrap like tests do.
#![allow(clippy::unwrap_used)]

use std::process::Command;

#[test]
fn the_demo_seeds_every_node_and_says_so() {
    let out = Command::new(env!("CARGO_BIN_EXE_e2e"))
        .args(["demo", "--no-build", "--size", "48MiB", "--timeout", "5m"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    for node in ["node-0", "node-1", "node-2", "node-3"] {
        assert!(
            stdout.contains(&format!("  {node:<8} identical")),
            "{node} not verified:\n{stdout}"
        );
    }
    assert!(
        stdout.contains("kubectl apply -f e2e/examples/dataset.yaml"),
        "{stdout}"
    );
    assert!(stdout.contains("llama-demo   4/4"), "{stdout}");
    let ratio: f64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("origin egress:"))
        .and_then(|l| l.split('=').nth(1))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(ratio <= 1.02, "origin egress {ratio}x:\n{stdout}");
    assert!(stdout.contains("OK: every node holds a verified, identical copy."));
}
