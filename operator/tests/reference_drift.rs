//! The checked-in Dataset reference must be what the CRD schema renders.
//! `SWARMSEED_REGENERATE=1` writes it instead of comparing:
//!
//! ```sh
//! SWARMSEED_REGENERATE=1 cargo test --release -p operator --test reference_drift
//! ```

use std::path::PathBuf;

use swarmseed_operator::reference::{REFERENCE_PATH, REGENERATE_ENV, dataset_reference};

#[test]
fn checked_in_reference_matches_the_crd_schema() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(REFERENCE_PATH);
    let generated = dataset_reference().unwrap();
    if std::env::var_os(REGENERATE_ENV).is_some_and(|v| !v.is_empty() && v != "0") {
        std::fs::write(&path, &generated).unwrap();
        eprintln!("wrote {}", path.display());
        return;
    }
    let regenerate = format!(
        "regenerate it with\n  \
         {REGENERATE_ENV}=1 cargo test --release -p operator --test reference_drift"
    );
    let committed = match std::fs::read_to_string(&path) {
        Ok(c) => c,
        Err(e) => panic!("{REFERENCE_PATH} cannot be read ({e}); {regenerate}"),
    };
    if generated == committed {
        return;
    }
    let lines = generated.lines().count().max(committed.lines().count());
    let (line, ours, theirs) = generated
        .lines()
        .map(Some)
        .chain(std::iter::repeat(None))
        .zip(committed.lines().map(Some).chain(std::iter::repeat(None)))
        .take(lines)
        .enumerate()
        .find(|(_, (g, c))| g != c)
        .map(|(i, (g, c))| {
            (
                i + 1,
                g.unwrap_or("<end of file>"),
                c.unwrap_or("<end of file>"),
            )
        })
        .unwrap_or((0, "<trailing newline>", "<trailing newline>"));
    panic!(
        "{REFERENCE_PATH} is out of date with the CRD schema (operator/crd/src/lib.rs); {regenerate}\n\
         first difference at line {line}:\n  checked in: {theirs}\n  generated:  {ours}"
    );
}

/// The operations guide, the security model and the Grafana dashboard name
/// only metrics the binaries export, and the operations guide names every
/// one of them.
#[test]
fn the_docs_and_the_dashboard_name_the_exported_metrics() {
    let mut registry = prometheus_client::registry::Registry::default();
    let operator = swarmseed_operator::admin::Metrics::register(&mut registry);
    let agent = swarmseed_agent::metrics::Metrics::register(&mut registry);
    // A labelled family shows up in the exposition once it has a series.
    operator.reconciled("ok");
    operator.reconcile_error("kube");
    operator.agent_call("status", "ok");
    agent.reused(1);
    let reason = swarmseed_agent::metrics::ReasonLabels { reason: "io" };
    agent.peers_dropped.get_or_create(&reason).inc();
    agent.origin_errors.get_or_create(&reason).inc();
    agent.peer_handshakes_failed.get_or_create(&reason).inc();
    let mut exposition = String::new();
    prometheus_client::encoding::text::encode(&mut exposition, &registry).unwrap();
    // `# TYPE <family> <type>`; a counter's samples are `<family>_total`.
    let mut exported = std::collections::BTreeSet::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let (family, kind) = (words.next().unwrap(), words.next().unwrap());
        exported.insert(match kind {
            "counter" => format!("{family}_total"),
            _ => family.to_owned(),
        });
    }
    assert!(exported.len() >= 13, "{exposition}");

    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dashboard_path = "docs/grafana/swarmseed-dashboard.json";
    let dashboard = std::fs::read_to_string(root.join(dashboard_path)).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&dashboard)
        .unwrap_or_else(|e| panic!("{dashboard_path} is not valid JSON: {e}"));
    assert!(
        parsed["panels"].as_array().is_some_and(|p| !p.is_empty()),
        "{dashboard_path} has no panels"
    );
    let mut operations = Vec::new();
    for doc in ["docs/operations.md", "docs/security.md", dashboard_path] {
        let text = std::fs::read_to_string(root.join(doc)).unwrap();
        let named = metric_names(&text);
        let unknown: Vec<&String> = named.iter().filter(|n| !exported.contains(*n)).collect();
        assert!(
            unknown.is_empty(),
            "{doc} names metrics the binaries do not export: {unknown:?}\nexported: {exported:?}"
        );
        if doc == "docs/operations.md" {
            operations = named;
        }
    }
    let undocumented: Vec<&String> = exported
        .iter()
        .filter(|n| !operations.contains(n))
        .collect();
    assert!(
        undocumented.is_empty(),
        "docs/operations.md does not describe the exported metrics {undocumented:?}"
    );
}

/// Every `swarmseed_operator_…`/`swarmseed_agent_…` name in `text`.
fn metric_names(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for prefix in ["swarmseed_operator_", "swarmseed_agent_"] {
        for (at, _) in text.match_indices(prefix) {
            let name: String = text[at..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            if !out.contains(&name) {
                out.push(name);
            }
        }
    }
    out
}
