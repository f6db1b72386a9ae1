//! Owns what `kubectl swarmseed` shows: tables, progress bars and `wait`'s verdict, from Datasets.
//! Never talks to the API server, an agent or an origin: pure functions over Dataset objects.
//!
//! The binary (`src/main.rs`) fetches the objects and prints what these
//! functions return, so the tables, progress bars and the decision of `wait`
//! are tested on fixed statuses.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;

use swarmseed_core::label;
use swarmseed_crd::condition::{DEGRADED, PROGRESSING, READY, Reason};
use swarmseed_crd::quantity::human_bytes;
use swarmseed_crd::{Dataset, DatasetStatus, NodeProgress, NodeProgressState};

/// Characters between the brackets of a progress bar.
pub const BAR_WIDTH: usize = 20;

/// Shown where a value is not known (yet).
const NONE: &str = "-";

/// `[########------------]  40%`: `done` of `total`, rounded down so that
/// 100% means complete.
pub fn progress_bar(done: u64, total: u64) -> String {
    let (filled, percent) = if total == 0 {
        (0, 0)
    } else {
        let done = u128::from(done.min(total));
        let total = u128::from(total);
        (
            (done * BAR_WIDTH as u128 / total) as usize,
            done * 100 / total,
        )
    };
    format!(
        "[{}{}] {percent:>3}%",
        "#".repeat(filled),
        "-".repeat(BAR_WIDTH - filled)
    )
}

/// Rows under a header, columns padded to their widest cell and three
/// spaces apart (as `kubectl get` prints them); no trailing blanks.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i > 0 {
                out.push_str("   ");
            }
            out.push_str(cell);
            if i + 1 < cells.len() {
                out.push_str(&" ".repeat(w - cell.chars().count()));
            }
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
        out
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// Age as `kubectl get` prints it: `45s`, `3m20s`, `17m`, `5h3m`, `20h`,
/// `3d4h`, `40d`, `2y30d`.
pub fn age(seconds: i64) -> String {
    let s = seconds.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86400);
    match () {
        () if s < 120 => format!("{s}s"),
        () if m < 10 => non_zero(m, "m", s % 60, "s"),
        () if h < 3 => format!("{m}m"),
        () if h < 8 => non_zero(h, "h", m % 60, "m"),
        () if h < 48 => format!("{h}h"),
        () if d < 8 => non_zero(d, "d", h % 24, "h"),
        () if d < 365 * 2 => format!("{d}d"),
        () if d < 365 * 8 => non_zero(d / 365, "y", d % 365, "d"),
        () => format!("{}y", d / 365),
    }
}

fn non_zero(big: i64, big_unit: &str, small: i64, small_unit: &str) -> String {
    if small == 0 {
        format!("{big}{big_unit}")
    } else {
        format!("{big}{big_unit}{small}{small_unit}")
    }
}

fn namespace(ds: &Dataset) -> &str {
    ds.metadata.namespace.as_deref().unwrap_or_default()
}

fn name(ds: &Dataset) -> &str {
    ds.metadata.name.as_deref().unwrap_or_default()
}

fn condition<'a>(status: Option<&'a DatasetStatus>, type_: &str) -> Option<&'a Condition> {
    status?.conditions.iter().find(|c| c.type_ == type_)
}

fn age_of(ds: &Dataset, now: Timestamp) -> String {
    ds.metadata
        .creation_timestamp
        .as_ref()
        .map_or_else(|| NONE.into(), |t| age(now.as_second() - t.0.as_second()))
}

/// One row of `ls`: a Dataset, or one that could not be read (a newer or
/// older schema; the binary says why on stderr).
pub enum ListEntry {
    Dataset(Box<Dataset>),
    Unreadable { namespace: String, name: String },
}

/// The `ls` table: NAMESPACE (with `all_namespaces`), NAME, READY, SIZE,
/// ORIGIN-RATIO, AGE and STATUS (the reason of the Ready condition).
pub fn render_list(entries: &[ListEntry], all_namespaces: bool, now: Timestamp) -> String {
    let mut header = vec!["NAME", "READY", "SIZE", "ORIGIN-RATIO", "AGE", "STATUS"];
    if all_namespaces {
        header.insert(0, "NAMESPACE");
    }
    let text = |v: Option<&String>| v.cloned().unwrap_or_else(|| NONE.into());
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|entry| {
            let (ns, mut row) = match entry {
                ListEntry::Dataset(ds) => {
                    let st = ds.status.as_ref();
                    let reason = condition(st, READY).map(|c| c.reason.clone());
                    (
                        namespace(ds).to_owned(),
                        vec![
                            name(ds).to_owned(),
                            text(st.and_then(|s| s.ready_text.as_ref())),
                            text(st.and_then(|s| s.size_text.as_ref())),
                            text(st.and_then(|s| s.origin_ratio.as_ref())),
                            age_of(ds, now),
                            text(reason.as_ref()),
                        ],
                    )
                }
                ListEntry::Unreadable { namespace, name } => (
                    namespace.clone(),
                    vec![
                        name.clone(),
                        NONE.into(),
                        NONE.into(),
                        NONE.into(),
                        NONE.into(),
                        "Unreadable".into(),
                    ],
                ),
            };
            if all_namespaces {
                row.insert(0, ns);
            }
            row
        })
        .collect();
    table(&header, &rows)
}

/// One node's line of `status`: name, progress bar, verified/total,
/// origin/peer split, state.
fn node_row(p: &NodeProgress) -> Vec<String> {
    // A node holding a verified copy is complete even when the sizes are
    // not known (an empty dataset).
    let bar = if p.state == NodeProgressState::Ready {
        progress_bar(1, 1)
    } else {
        progress_bar(p.bytes_verified, p.bytes_total)
    };
    vec![
        p.node.clone(),
        bar,
        format!(
            "{}/{}",
            human_bytes(p.bytes_verified),
            human_bytes(p.bytes_total)
        ),
        format!(
            "origin {} / peers {}",
            human_bytes(p.bytes_from_origin),
            human_bytes(p.bytes_from_peers)
        ),
        p.state.as_str().to_owned(),
    ]
}

/// `bytesFromOrigin / totalBytes` (`1.01x`): how many times each byte of
/// the dataset left the origin.
fn origin_ratio(st: &DatasetStatus) -> String {
    st.origin_ratio.clone().unwrap_or_else(|| NONE.into())
}

/// Whether the status was written for the Dataset's current spec.
fn observed(ds: &Dataset) -> bool {
    let status = ds.status.as_ref().and_then(|s| s.observed_generation);
    status.is_some() && status == ds.metadata.generation
}

/// The `status` page: the Dataset, its conditions, one line per node and
/// the bytes from the origin vs. from peers.
pub fn render_status(ds: &Dataset) -> String {
    let st = ds.status.clone().unwrap_or_default();
    let opt = |v: Option<String>| v.unwrap_or_else(|| NONE.into());
    let mut head: Vec<(&str, String)> = vec![
        ("Dataset", format!("{}/{}", namespace(ds), name(ds))),
        ("Source", ds.spec.source.uri.clone()),
        (
            "Revision",
            opt(st.revision.as_deref().map(|r| short(r).to_owned())),
        ),
        ("Size", opt(st.total_bytes.map(human_bytes))),
        ("Files", opt(st.files.map(|f| f.to_string()))),
        ("Chunk size", opt(st.chunk_size.map(human_bytes))),
    ];
    if let Some(d) = &st.content_digest {
        head.push(("Digest", d.clone()));
    }
    head.push(("Path", opt(st.path.clone())));
    head.push((
        "Node label",
        opt(st
            .node_label
            .as_ref()
            .map(|l| format!("{l}={}", label::READY_VALUE))),
    ));
    head.push((
        "Nodes",
        format!(
            "{}/{} ready, {} seeding, {} failed",
            st.nodes.ready, st.nodes.desired, st.nodes.seeding, st.nodes.failed
        ),
    ));
    let mut out = String::new();
    let width = head.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 2;
    for (k, v) in &head {
        out.push_str(&format!("{:<width$}{v}\n", format!("{k}:")));
    }
    if ds.status.is_none() {
        out.push_str("\nThe operator has not reported on this Dataset yet.\n");
        return out;
    }
    if !observed(ds) {
        out.push_str(&format!(
            "\nThis status describes generation {}; the operator has not yet acted on generation {}.\n",
            opt(st.observed_generation.map(|g| g.to_string())),
            opt(ds.metadata.generation.map(|g| g.to_string())),
        ));
    }

    out.push_str("\nConditions:\n");
    let rows: Vec<Vec<String>> = [READY, PROGRESSING, DEGRADED]
        .iter()
        .filter_map(|t| condition(Some(&st), t))
        .map(|c| {
            vec![
                c.type_.clone(),
                c.status.clone(),
                c.reason.clone(),
                c.message.clone(),
            ]
        })
        .collect();
    out.push_str(&indent(&table(
        &["TYPE", "STATUS", "REASON", "MESSAGE"],
        &rows,
    )));

    if !st.failed_nodes.is_empty() {
        out.push_str("\nFailed nodes:\n");
        let rows: Vec<Vec<String>> = st
            .failed_nodes
            .iter()
            .map(|f| vec![f.node.clone(), f.reason.clone(), f.message.clone()])
            .collect();
        out.push_str(&indent(&table(&["NODE", "REASON", "MESSAGE"], &rows)));
    }

    if !st.node_progress.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = st.node_progress.iter().map(node_row).collect();
        out.push_str(&table(
            &["NODE", "PROGRESS", "VERIFIED", "RECEIVED", "STATE"],
            &rows,
        ));
        let shown = st.node_progress.len();
        if (shown as u64) < u64::from(st.nodes.desired) {
            out.push_str(&format!(
                "(the first {shown} of {} nodes by name; the counts above cover all)\n",
                st.nodes.desired
            ));
        }
    }
    let received = st.bytes_from_origin + st.bytes_from_peers;
    let from_peers = if received == 0 {
        String::new()
    } else {
        format!(
            " ({}% from peers)",
            u128::from(st.bytes_from_peers) * 100 / u128::from(received)
        )
    };
    out.push_str(&format!(
        "\nTotal: origin {} / peers {}{from_peers}; origin ratio {} (bytes read from the origin / dataset size)\n",
        human_bytes(st.bytes_from_origin),
        human_bytes(st.bytes_from_peers),
        origin_ratio(&st),
    ));
    out
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

fn short(revision: &str) -> &str {
    revision.get(..16).unwrap_or(revision)
}

/// What `wait --for ready` makes of a Dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Ready=True for the current generation; the condition's message.
    Ready(String),
    /// Degraded=True for the current generation.
    Degraded { reason: String, message: String },
    /// Neither yet: a one-line summary of the progress.
    Waiting(String),
}

/// Degraded reasons that pass without anyone acting: an agent restarting,
/// the origin briefly failing. `wait` keeps waiting through them; every
/// other reason needs a change (spec, Secret, disk) and ends the wait.
pub fn degraded_may_pass(reason: &str) -> bool {
    matches!(
        reason.parse(),
        Ok(Reason::AgentUnreachable | Reason::SourceUnavailable)
    )
}

/// Whether the Dataset is Ready (or Degraded) for its current spec: a
/// status written for an older generation decides nothing.
pub fn readiness(ds: &Dataset) -> Readiness {
    let st = ds.status.as_ref();
    let current = |c: &&Condition| {
        observed(ds)
            && c.observed_generation
                .is_none_or(|g| Some(g) == ds.metadata.generation)
    };
    if let Some(c) = condition(st, READY).filter(current)
        && c.status == "True"
    {
        return Readiness::Ready(c.message.clone());
    }
    if let Some(c) = condition(st, DEGRADED).filter(current)
        && c.status == "True"
    {
        return Readiness::Degraded {
            reason: c.reason.clone(),
            message: c.message.clone(),
        };
    }
    Readiness::Waiting(progress_line(ds))
}

/// `2/3 nodes ready, 5.5GiB/12GiB verified (45%), origin 4.2GiB / peers
/// 1.3GiB` (or why nothing is known yet).
pub fn progress_line(ds: &Dataset) -> String {
    let Some(st) = ds.status.as_ref() else {
        return "waiting for the operator to report".into();
    };
    if !observed(ds) {
        return format!(
            "waiting for the operator to act on generation {}",
            ds.metadata
                .generation
                .map_or_else(|| NONE.into(), |g| g.to_string())
        );
    }
    let verified: u64 = st.node_progress.iter().map(|p| p.bytes_verified).sum();
    let total: u64 = st.node_progress.iter().map(|p| p.bytes_total).sum();
    let percent = if total == 0 {
        0
    } else {
        u128::from(verified.min(total)) * 100 / u128::from(total)
    };
    let mut line = format!(
        "{}/{} nodes ready, {}/{} verified ({percent}%), origin {} / peers {}",
        st.nodes.ready,
        st.nodes.desired,
        human_bytes(verified),
        human_bytes(total),
        human_bytes(st.bytes_from_origin),
        human_bytes(st.bytes_from_peers),
    );
    if let Some(c) = condition(Some(st), READY)
        && c.status != "True"
        && !c.reason.is_empty()
    {
        line.push_str(&format!(" [{}]", c.reason));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use swarmseed_crd::{FailedNode, NodeCounts};

    const GIB: u64 = 1 << 30;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn cond(type_: &str, ok: bool, reason: &str, message: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: if ok { "True" } else { "False" }.into(),
            reason: reason.into(),
            message: message.into(),
            observed_generation: Some(2),
            last_transition_time: Time(at(0)),
        }
    }

    fn node(name: &str, state: NodeProgressState, verified: u64, origin: u64) -> NodeProgress {
        NodeProgress {
            node: name.into(),
            state,
            bytes_verified: verified,
            bytes_total: 4 * GIB,
            bytes_from_origin: origin,
            bytes_from_peers: verified - origin,
        }
    }

    /// Three nodes, one done, one at 57%, one failed.
    fn seeding() -> Dataset {
        let mut ds = Dataset::new(
            "llama",
            serde_json::from_value(serde_json::json!({"source": {"uri": "s3://models/llama"}}))
                .unwrap(),
        );
        ds.metadata.namespace = Some("ml".into());
        ds.metadata.generation = Some(2);
        ds.metadata.creation_timestamp = Some(Time(at(0)));
        let gpu_b = (4 * GIB) * 57 / 100;
        ds.status = Some(DatasetStatus {
            observed_generation: Some(2),
            revision: Some("0123456789abcdef0123".into()),
            total_bytes: Some(4 * GIB),
            files: Some(3),
            chunk_size: Some(4 << 20),
            nodes: NodeCounts {
                desired: 3,
                ready: 1,
                seeding: 1,
                failed: 1,
            },
            bytes_from_origin: 4 * GIB,
            bytes_from_peers: gpu_b,
            path: Some("/var/lib/swarmseed/datasets/ml/llama".into()),
            node_label: Some("swarmseed.io/ds-00".into()),
            ready_text: Some("1/3".into()),
            size_text: Some("4GiB".into()),
            origin_ratio: Some("1.00x".into()),
            failed_nodes: vec![FailedNode {
                node: "gpu-c".into(),
                reason: "InsufficientStorage".into(),
                message: "1GiB free, 4GiB needed".into(),
            }],
            node_progress: vec![
                node("gpu-a", NodeProgressState::Ready, 4 * GIB, 4 * GIB),
                node("gpu-b", NodeProgressState::Transferring, gpu_b, 0),
                node("gpu-c", NodeProgressState::Failed, 0, 0),
            ],
            conditions: vec![
                cond(
                    READY,
                    false,
                    "InsufficientStorage",
                    "1/3 nodes ready, 1 seeding, 1 failed",
                ),
                cond(
                    PROGRESSING,
                    true,
                    "Seeding",
                    "1 node(s) receiving revision 0123",
                ),
                cond(
                    DEGRADED,
                    true,
                    "InsufficientStorage",
                    "1 node(s) failed; gpu-c: 1GiB free, 4GiB needed",
                ),
            ],
            ..Default::default()
        });
        ds
    }

    #[test]
    fn progress_bars_round_down_and_stay_in_bounds() {
        assert_eq!(progress_bar(0, 100), "[--------------------]   0%");
        assert_eq!(progress_bar(57, 100), "[###########---------]  57%");
        assert_eq!(progress_bar(999, 1000), "[###################-]  99%");
        assert_eq!(progress_bar(100, 100), "[####################] 100%");
        assert_eq!(
            progress_bar(200, 100),
            "[####################] 100%",
            "capped"
        );
        assert_eq!(progress_bar(0, 0), "[--------------------]   0%");
        assert_eq!(
            progress_bar(u64::MAX / 2, u64::MAX),
            "[#########-----------]  49%",
            "no overflow"
        );
    }

    #[test]
    fn human_sizes_stay_one_word() {
        assert_eq!(human_bytes(0), "0B");
        assert_eq!(human_bytes(1023), "1023B");
        assert_eq!(human_bytes(1536), "1.5KiB");
        assert_eq!(human_bytes(4 * GIB), "4GiB");
        assert_eq!(human_bytes(4 * GIB * 57 / 100), "2.3GiB");
        assert_eq!(human_bytes(300 << 40), "300TiB");
    }

    #[test]
    fn ages_read_like_kubectl() {
        assert_eq!(age(-5), "0s", "clock skew");
        assert_eq!(age(45), "45s");
        assert_eq!(age(200), "3m20s");
        assert_eq!(age(300), "5m");
        assert_eq!(age(17 * 60), "17m");
        assert_eq!(age(5 * 3600 + 180), "5h3m");
        assert_eq!(age(20 * 3600), "20h");
        assert_eq!(age(3 * 86400 + 4 * 3600), "3d4h");
        assert_eq!(age(40 * 86400), "40d");
        assert_eq!(age(3 * 365 * 86400 + 30 * 86400), "3y30d");
    }

    #[test]
    fn the_list_is_a_kubectl_style_table() {
        let mut fresh = Dataset::new("new", seeding().spec);
        fresh.metadata.namespace = Some("default".into());
        fresh.metadata.creation_timestamp = Some(Time(at(3000)));
        let entries = [
            ListEntry::Dataset(Box::new(seeding())),
            ListEntry::Dataset(Box::new(fresh)),
        ];
        assert_eq!(
            render_list(&entries, false, at(3045)),
            "NAME    READY   SIZE   ORIGIN-RATIO   AGE   STATUS\n\
             llama   1/3     4GiB   1.00x          50m   InsufficientStorage\n\
             new     -       -      -              45s   -\n"
        );
        let bad = ListEntry::Unreadable {
            namespace: "x".into(),
            name: "odd".into(),
        };
        assert_eq!(
            render_list(
                &[ListEntry::Dataset(Box::new(seeding())), bad],
                true,
                at(60)
            ),
            "NAMESPACE   NAME    READY   SIZE   ORIGIN-RATIO   AGE   STATUS\n\
             ml          llama   1/3     4GiB   1.00x          60s   InsufficientStorage\n\
             x           odd     -       -      -              -     Unreadable\n"
        );
        assert_eq!(
            render_list(&[], false, at(0)),
            "NAME   READY   SIZE   ORIGIN-RATIO   AGE   STATUS\n"
        );
    }

    #[test]
    fn status_shows_each_node_and_the_origin_peer_split() {
        let out = render_status(&seeding());
        let expected = "\
Dataset:    ml/llama
Source:     s3://models/llama
Revision:   0123456789abcdef
Size:       4GiB
Files:      3
Chunk size: 4MiB
Path:       /var/lib/swarmseed/datasets/ml/llama
Node label: swarmseed.io/ds-00=ready
Nodes:      1/3 ready, 1 seeding, 1 failed

Conditions:
  TYPE          STATUS   REASON                MESSAGE
  Ready         False    InsufficientStorage   1/3 nodes ready, 1 seeding, 1 failed
  Progressing   True     Seeding               1 node(s) receiving revision 0123
  Degraded      True     InsufficientStorage   1 node(s) failed; gpu-c: 1GiB free, 4GiB needed

Failed nodes:
  NODE    REASON                MESSAGE
  gpu-c   InsufficientStorage   1GiB free, 4GiB needed

NODE    PROGRESS                      VERIFIED      RECEIVED                   STATE
gpu-a   [####################] 100%   4GiB/4GiB     origin 4GiB / peers 0B     Ready
gpu-b   [###########---------]  56%   2.3GiB/4GiB   origin 0B / peers 2.3GiB   Transferring
gpu-c   [--------------------]   0%   0B/4GiB       origin 0B / peers 0B       Failed

Total: origin 4GiB / peers 2.3GiB (36% from peers); origin ratio 1.00x (bytes read from the origin / dataset size)
";
        assert_eq!(out, expected, "\n{out}");
    }

    #[test]
    fn status_says_when_it_is_stale_or_missing_or_cut_short() {
        let mut ds = seeding();
        ds.metadata.generation = Some(3);
        let out = render_status(&ds);
        assert!(
            out.contains("describes generation 2; the operator has not yet acted on generation 3"),
            "{out}"
        );
        if let Some(st) = ds.status.as_mut() {
            st.nodes.desired = 300;
        }
        let out = render_status(&ds);
        assert!(
            out.contains("(the first 3 of 300 nodes by name; the counts above cover all)"),
            "{out}"
        );
        ds.status = None;
        let out = render_status(&ds);
        assert!(out.contains("Revision:   -\n"), "{out}");
        assert!(
            out.ends_with("\nThe operator has not reported on this Dataset yet.\n"),
            "{out}"
        );
    }

    #[test]
    fn wait_sits_out_only_the_degraded_reasons_that_pass_by_themselves() {
        for r in [Reason::AgentUnreachable, Reason::SourceUnavailable] {
            assert!(degraded_may_pass(r.as_str()), "{r}");
        }
        for r in [
            Reason::InvalidSource,
            Reason::InvalidSpec,
            Reason::DigestMismatch,
            Reason::InsufficientStorage,
            Reason::UnsafePath,
            Reason::NodeFailed,
        ] {
            assert!(!degraded_may_pass(r.as_str()), "{r}");
        }
    }

    #[test]
    fn wait_decides_on_the_current_generation_only() {
        let ds = seeding();
        assert_eq!(
            readiness(&ds),
            Readiness::Degraded {
                reason: "InsufficientStorage".into(),
                message: "1 node(s) failed; gpu-c: 1GiB free, 4GiB needed".into()
            }
        );
        // A new spec: the old Degraded says nothing about it.
        let mut newer = seeding();
        newer.metadata.generation = Some(3);
        assert_eq!(
            readiness(&newer),
            Readiness::Waiting("waiting for the operator to act on generation 3".into())
        );

        let mut ready = seeding();
        if let Some(st) = ready.status.as_mut() {
            st.conditions = vec![
                cond(READY, true, "Ready", "3/3 nodes hold a verified copy"),
                cond(DEGRADED, false, "AsExpected", ""),
            ];
        }
        assert_eq!(
            readiness(&ready),
            Readiness::Ready("3/3 nodes hold a verified copy".into())
        );
        ready.metadata.generation = Some(3);
        assert!(matches!(readiness(&ready), Readiness::Waiting(_)));

        let mut progressing = seeding();
        if let Some(st) = progressing.status.as_mut() {
            st.conditions = vec![cond(READY, false, "NotReady", "")];
        }
        assert_eq!(
            readiness(&progressing),
            Readiness::Waiting(
                "1/3 nodes ready, 6.3GiB/12GiB verified (52%), origin 4GiB / peers 2.3GiB [NotReady]"
                    .into()
            )
        );
        progressing.status = None;
        assert_eq!(
            readiness(&progressing),
            Readiness::Waiting("waiting for the operator to report".into())
        );
    }
}
