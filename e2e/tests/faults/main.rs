//! The fault matrix of issue 18: one test per row, each disturbing the
//! whole product (real agents, the operator, kubectl, an HTTP origin) on a
//! namespace cluster and ending with the shared invariant check
//! (`swarmseed_e2e::faults::invariants`): no byte outside the root, no
//! partial tree at a published path, every Dataset Ready or naming the
//! fault, no silent seeding for 120 s, no leftover after delete. The
//! monitor checks the same invariants every second while a row runs.
//!
//! Needs root (network namespaces) and the release binaries
//! (`cargo build --release --bins`); without root every row prints SKIP.
//! `SWARMSEED_FAULTS_KEEP=1` keeps each cluster's work directory;
//! `SWARMSEED_SOAK_SEED` / `SWARMSEED_SOAK_SECS` pin the soak's seed and
//! length (`e2e soak --seed N --duration 30m` runs it alone).
//!
//! Rows by module: `crashes` (agent and operator kills), `network`
//! (partition, origin outages), `deletion` (deletes while a node is down or
//! cut off), `specs` (tiny Datasets, oversized names, bad specs),
//! `hostile_peers` (slow handshakes, oversize frames, connection floods),
//! `storage` (full disks, a 253-character name), `origin` (unsafe object
//! keys; a file changed at the origin before and during its read), `soak`.

// Tests unwrap like tests do.
#![allow(clippy::unwrap_used)]

mod crashes;
mod deletion;
mod hostile_peers;
mod network;
mod origin;
mod soak;
mod specs;
mod storage;

use std::time::Duration;

use serde_json::{Value, json};
use swarmseed_e2e::faults::{DatasetView, Row, Source};

/// Namespace of the rows' Datasets.
pub const NS: &str = "faults";

/// A Dataset spec reading `source` with `maxFetchers` fetchers, each capped
/// at `bandwidth` (a quantity, or `None` for unlimited), 256 KiB chunks.
pub fn spec(source: &Source, max_fetchers: u32, bandwidth: Option<&str>) -> Value {
    let mut origin = json!({ "maxFetchers": max_fetchers });
    if let Some(b) = bandwidth {
        origin["bandwidth"] = json!(b);
    }
    json!({
        "source": { "uri": source.uri },
        "chunkSize": "256Ki",
        "origin": origin,
    })
}

/// Waits for `ns/name` to satisfy `ok`, recording a failed row assertion
/// `what` (with the last conditions seen) if it does not within `timeout`.
pub async fn expect_dataset(
    row: &mut Row,
    ns: &str,
    name: &str,
    what: &str,
    timeout: Duration,
    mut ok: impl FnMut(Option<&DatasetView>) -> bool,
) -> Option<Option<DatasetView>> {
    let mut last = None;
    let r = row
        .wait_for(what, timeout, async || {
            let d = row.dataset(ns, name).await?;
            let done = ok(d.as_ref());
            last = Some(d.clone());
            Ok(done.then_some(d))
        })
        .await;
    match r {
        Ok(d) => Some(d),
        Err(e) => {
            let seen = match last {
                Some(Some(d)) => d.conditions_text(),
                Some(None) => "the Dataset is gone".into(),
                None => "nothing read".into(),
            };
            row.check(what, false, format!("{e}; last seen: {seen}"));
            None
        }
    }
}

/// Waits until `ns/name` is seeding: not Ready, bytes read from the origin.
pub async fn seeding_under_way(row: &Row, ns: &str, name: &str) {
    let r = row
        .wait_for("seeding under way", Duration::from_secs(60), async || {
            let d = row.dataset(ns, name).await?;
            Ok(d.filter(|d| {
                !d.is_ready() && d.status.as_ref().is_some_and(|s| s.bytes_from_origin > 0)
            }))
        })
        .await;
    row.must("seeding under way", r);
}

/// Whether any condition of `d` names `needle` in its message.
pub fn names(d: &DatasetView, needle: &str) -> bool {
    d.conditions().iter().any(|c| c.message.contains(needle))
        || d.status
            .iter()
            .flat_map(|s| &s.failed_nodes)
            .any(|f| f.node == needle || f.message.contains(needle))
}

/// Whether node `node` holds anything of `ns/name` on its disk.
pub fn holds_anything(row: &Row, node: &str, ns: &str, name: &str) -> bool {
    let root = &row.seed.cluster.node(node).unwrap().root;
    ["datasets", "revisions", "staging", "state"]
        .iter()
        .any(|area| std::fs::symlink_metadata(root.join(area).join(ns).join(name)).is_ok())
}
