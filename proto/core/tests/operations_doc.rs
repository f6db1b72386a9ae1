//! docs/operations.md tells an admin what to do about every reason the
//! agent or the operator can report.

use swarmseed_core::Reason;

/// The part of docs/operations.md under "Troubleshooting by condition reason".
fn troubleshooting_section() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/operations.md");
    let doc = std::fs::read_to_string(path).expect("read docs/operations.md");
    let start = doc
        .find("\n## Troubleshooting by condition reason")
        .expect("docs/operations.md has a section 'Troubleshooting by condition reason'");
    let rest = &doc[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    rest[..end].to_owned()
}

/// An entry: a `###` heading naming the reason in backticks, or a table row
/// that starts with it.
fn has_entry(section: &str, reason: Reason) -> bool {
    let quoted = format!("`{reason}`");
    section.lines().any(|line| {
        (line.starts_with("### ") && line.contains(&quoted))
            || line.starts_with(&format!("| {quoted} |"))
    })
}

#[test]
fn every_reason_has_a_troubleshooting_entry() {
    let section = troubleshooting_section();
    let missing: Vec<&str> = Reason::ALL
        .iter()
        .filter(|r| !has_entry(&section, **r))
        .map(|r| r.as_str())
        .collect();
    assert!(
        missing.is_empty(),
        "docs/operations.md, 'Troubleshooting by condition reason', has no entry \
         (a ### heading or a table row naming it in backticks) for: {missing:?}"
    );
}
