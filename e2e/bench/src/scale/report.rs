//! What one scale run measured, printed for people and as the RESULTS.md
//! table.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{MARKERS, RSS_TARGET_BYTES, WRITES_PER_S_TARGET};
use crate::procfs::Machine;
use crate::report::{GIB, human, secs};

/// Figures of one Dataset.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DatasetFigures {
    pub name: String,
    /// From creation to `Ready=True` seen on the watch.
    pub ready_s: Option<f64>,
    /// From creation to the instant its last fake agent turned Ready.
    pub last_agent_ready_s: Option<f64>,
    pub ready_after_last_agent_s: Option<f64>,
    /// Status writes from creation to Ready.
    pub status_writes: u64,
    pub max_writes_in_1s: u32,
    pub min_write_gap_s: Option<f64>,
    /// `status_writes` over the time from creation to Ready.
    pub writes_per_s: f64,
    pub writes_after_ready: u64,
    /// From creation to every Node carrying its label.
    pub labelled_s: Option<f64>,
    pub labelled_after_last_agent_s: Option<f64>,
    /// Reconciles (GetStatus rounds) from creation to Ready, and the
    /// median time between two.
    pub reconciles_until_ready: u64,
    pub reconcile_interval_s: Option<f64>,
    /// When each of those reconciles asked the probe agent.
    pub reconcile_rounds_s: Vec<f64>,
}

/// What one run measured. Times in seconds from the Datasets' creation
/// unless named otherwise.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ScaleReport {
    pub command: String,
    pub agents: usize,
    pub datasets: usize,
    pub seed_time_s: f64,
    pub jitter: f64,
    pub dataset_bytes: u64,
    pub dataset_files: usize,
    pub chunk_size: Option<u64>,
    pub all_ready: bool,
    pub datasets_ready: usize,
    /// The whole run, start-up and teardown included.
    pub wall_s: f64,
    /// Stand-in, objects, fake agents and the operator up, before the
    /// Datasets were created.
    pub setup_s: f64,
    /// First ApplyAssignment any agent received.
    pub first_assignment_s: Option<f64>,
    /// When the last (agent, Dataset) pair received its first assignment.
    pub all_assigned_s: Option<f64>,
    /// (agent, Dataset) pairs assigned, of agents × datasets.
    pub assigned_pairs: u64,
    /// The instant the last fake agent turned Ready (any Dataset).
    pub last_agent_ready_s: Option<f64>,
    pub last_dataset_ready_s: Option<f64>,
    /// Per Dataset: its `Ready=True` after its own last agent turned Ready.
    pub ready_after_last_agent_median_s: Option<f64>,
    pub ready_after_last_agent_max_s: Option<f64>,
    /// The last Dataset Ready after the last agent of all turned Ready.
    pub all_ready_after_last_agent_s: Option<f64>,
    /// Per Dataset: every Node labelled after its last agent turned Ready.
    pub labelled_after_last_agent_median_s: Option<f64>,
    pub labelled_after_last_agent_max_s: Option<f64>,
    /// Median time between two reconciles of one Dataset while seeding.
    pub reconcile_interval_median_s: Option<f64>,
    /// Status writes (the operator's PATCH requests of `…/status`, timed
    /// as they arrive), every Dataset, creation to Ready.
    pub status_writes: u64,
    /// The most status writes of one Dataset in any 1 s window.
    pub status_writes_max_per_s: u32,
    /// Mean over Datasets of status writes per second, creation to Ready.
    pub status_writes_mean_per_s: f64,
    /// Smallest gap between two status writes of one Dataset.
    pub status_write_min_gap_s: Option<f64>,
    /// Status writes after a Dataset was Ready (until the end of settle).
    pub status_writes_after_ready: u64,
    /// Status changes seen on a watch of the Datasets, all of the run (a
    /// cross-check of the writes: an identical write changes nothing).
    pub status_changes_seen: u64,
    /// The operator's own `swarmseed_operator_status_writes_total` at the end.
    pub operator_status_writes: Option<u64>,
    pub operator_reconciles: Option<u64>,
    pub operator_reconcile_errors: Option<u64>,
    /// The operator's `agent_calls_total` by `method/result`.
    pub operator_agent_calls: BTreeMap<String, u64>,
    /// Calls the fake agents answered (after the start-up auth check).
    pub agent_apply_calls: u64,
    pub agent_apply_changed: u64,
    pub agent_status_calls: u64,
    pub agent_remove_calls: u64,
    /// Calls refused for a missing or wrong token.
    pub agent_unauthenticated_calls: u64,
    /// Highest VmHWM of the operator.
    pub operator_peak_rss_bytes: u64,
    /// VmRSS when every Dataset was Ready, and at the end.
    pub operator_rss_at_ready_bytes: u64,
    pub operator_rss_final_bytes: u64,
    pub operator_threads: u64,
    /// Operator CPU seconds: all, creation to all Ready, during settle.
    pub operator_cpu_s: f64,
    pub operator_cpu_seed_s: f64,
    pub operator_cpu_settle_s: f64,
    /// Reconciles and status writes during settle (every Dataset Ready).
    pub operator_reconciles_settle: Option<u64>,
    pub operator_status_writes_settle: Option<u64>,
    pub settle_s: f64,
    /// CPU seconds of this process (stand-in, fake agents, watch) in all.
    pub harness_cpu_s: f64,
    /// Busy share of all CPUs, creation to all Ready (every process on the
    /// machine: the operator, the harness and anyone else's work).
    pub machine_cpu_busy: f64,
    /// A LIST of every Node (as each reconcile does) from the harness,
    /// once a second while seeding: the API stand-in's responsiveness.
    pub api_list_nodes_median_s: Option<f64>,
    pub api_list_nodes_max_s: Option<f64>,
    /// Per reconcile that sent the probe agent an assignment: from its
    /// GetStatus to its ApplyAssignment (discover every agent, plan), and
    /// from there to the next reconcile's GetStatus (send, label, status,
    /// wait); medians.
    pub reconcile_discover_plan_median_s: Option<f64>,
    pub reconcile_rest_median_s: Option<f64>,
    pub rss_target_met: bool,
    pub writes_target_met: bool,
    pub per_dataset: Vec<DatasetFigures>,
    pub machine: Machine,
}

/// Prints the summary; with `json` the JSON object as the last line.
pub fn print(r: &ScaleReport, json: bool) -> anyhow::Result<()> {
    println!("{}", r.command);
    println!(
        "setup                 {} fake agents (tonic, bearer token checked), {} Datasets × {} nodes, {} in {} files each (chunk {}); seed time {:.0} s ± {:.0} %",
        r.agents,
        r.datasets,
        r.agents,
        human(r.dataset_bytes),
        r.dataset_files,
        r.chunk_size.map_or("-".into(), human),
        r.seed_time_s,
        100.0 * r.jitter
    );
    println!(
        "Datasets Ready        {}/{}; last agent Ready at {}, last Dataset Ready at {}",
        r.datasets_ready,
        r.datasets,
        secs(r.last_agent_ready_s),
        secs(r.last_dataset_ready_s)
    );
    println!(
        "Ready after the last agent   median {}, max {} (per Dataset); all Datasets {} after the last agent of all",
        secs(r.ready_after_last_agent_median_s),
        secs(r.ready_after_last_agent_max_s),
        secs(r.all_ready_after_last_agent_s)
    );
    println!(
        "node labels           all Nodes labelled after the Dataset's last agent: median {}, max {}; a Dataset reconciled every {} (median)",
        secs(r.labelled_after_last_agent_median_s),
        secs(r.labelled_after_last_agent_max_s),
        secs(r.reconcile_interval_median_s)
    );
    println!(
        "one reconcile         GetStatus → ApplyAssignment at one agent {} (discover, plan), then {} to the next (send, label, status, wait); LIST of every Node {} (max {})",
        secs(r.reconcile_discover_plan_median_s),
        secs(r.reconcile_rest_median_s),
        r.api_list_nodes_median_s
            .map_or("-".into(), |s| format!("{:.0} ms", s * 1000.0)),
        r.api_list_nodes_max_s
            .map_or("-".into(), |s| format!("{:.0} ms", s * 1000.0)),
    );
    println!(
        "assignments           first after {}, every agent × Dataset after {} ({} of {})",
        secs(r.first_assignment_s),
        secs(r.all_assigned_s),
        r.assigned_pairs,
        r.agents * r.datasets
    );
    println!(
        "status writes         {} while seeding (operator counted {}, watch saw {} changes in all); per Dataset: at most {} in any 1 s (target ≤ {WRITES_PER_S_TARGET}: {}), mean {:.2}/s, smallest gap {}; {} after Ready",
        r.status_writes,
        r.operator_status_writes
            .map_or("-".to_owned(), |n| n.to_string()),
        r.status_changes_seen,
        r.status_writes_max_per_s,
        if r.writes_target_met { "met" } else { "MISSED" },
        r.status_writes_mean_per_s,
        r.status_write_min_gap_s
            .map_or("-".to_owned(), |g| format!("{g:.3} s")),
        r.status_writes_after_ready
    );
    println!(
        "operator              peak RSS {} (target ≤ {}: {}), RSS at Ready {}, {} threads",
        human(r.operator_peak_rss_bytes),
        human(RSS_TARGET_BYTES),
        if r.rss_target_met { "met" } else { "MISSED" },
        human(r.operator_rss_at_ready_bytes),
        r.operator_threads
    );
    let seed_span = r.last_dataset_ready_s.unwrap_or(0.0).max(1e-3);
    println!(
        "operator CPU          {:.1} s while seeding ({:.2} cores), {:.1} s in {:.0} s at rest ({} reconciles, {} status writes), {:.1} s in all; harness (stand-in, fakes) {:.1} s; machine {:.0} % busy while seeding",
        r.operator_cpu_seed_s,
        r.operator_cpu_seed_s / seed_span,
        r.operator_cpu_settle_s,
        r.settle_s,
        r.operator_reconciles_settle
            .map_or("-".into(), |n| n.to_string()),
        r.operator_status_writes_settle
            .map_or("-".into(), |n| n.to_string()),
        r.operator_cpu_s,
        r.harness_cpu_s,
        100.0 * r.machine_cpu_busy
    );
    println!(
        "agent calls           ApplyAssignment {} ({} changed), GetStatus {}, RemoveDataset {}, unauthenticated {}; reconciles {} ({} errors)",
        r.agent_apply_calls,
        r.agent_apply_changed,
        r.agent_status_calls,
        r.agent_remove_calls,
        r.agent_unauthenticated_calls,
        r.operator_reconciles.map_or("-".into(), |n| n.to_string()),
        r.operator_reconcile_errors.unwrap_or(0)
    );
    println!(
        "wall time             {:.1} s (setup {:.1} s)",
        r.wall_s, r.setup_s
    );
    if json {
        println!("{}", serde_json::to_string(r)?);
    }
    Ok(())
}

/// The generated section, markers included.
pub fn results_section(reports: &[ScaleReport], date: &str, note: &str) -> String {
    let m = reports
        .first()
        .map(|r| r.machine.clone())
        .unwrap_or_default();
    let mut s = String::new();
    s.push_str(MARKERS.begin);
    s.push_str("\n## Control plane at scale (`e2e bench-scale`)\n\n");
    if !date.is_empty() {
        s.push_str(&format!("Run {date}. "));
    }
    s.push_str(&format!(
        "Machine: {} CPUs, {:.1} GiB memory, Linux {}, release build, one run per row. \
Targets at 500 nodes: operator peak RSS ≤ {}, at most {WRITES_PER_S_TARGET} status write per second per Dataset.\n\n",
        m.nproc,
        m.mem_total_bytes as f64 / GIB as f64,
        m.kernel,
        human(RSS_TARGET_BYTES),
    ));
    s.push_str(
        "The real operator against the API stand-in, N simulated agents (in-process \
tonic servers of the agent control API, one per 127.214.x.y address, behind the real \
agent's token check) on N Nodes, and M Datasets created at once, each selecting every \
node and listing sparse files from an HTTP origin. A fake agent accepts assignments as \
the agent does and reports progress from Pending to Ready over the seed time ± 25 %. \
*Status writes*: the operator's status PATCHes of one Dataset, timed as they reach the \
API (through a proxy), the most in any 1-second window (max over Datasets) and the mean \
rate from creation to Ready. *Ready after last \
agent*: from the instant a Dataset's last agent turned Ready to its `Ready=True` \
(median / max over Datasets). *Reconcile every*: the median time between two \
reconciles of one Dataset (its GetStatus calls at one agent). *Assigned*: when every \
agent held every Dataset's assignment. CPU: the operator's, from creation to all Ready; \
*machine busy*: all CPUs, every process (the harness, i.e. stand-in and fakes, and \
anyone else's work share them).\n\n",
    );
    if !note.is_empty() {
        s.push_str(note.trim());
        s.push_str("\n\n");
    }
    s.push_str(
        "| command | Ready | operator peak RSS | status writes / s per Dataset (max in 1 s, mean) | Ready after last agent (median / max) | reconcile every (median) | all assigned | operator CPU (cores) | machine busy | GetStatus / ApplyAssignment calls | wall |\n",
    );
    s.push_str("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    for r in reports {
        let span = r.last_dataset_ready_s.unwrap_or(0.0).max(1e-3);
        s.push_str(&format!(
            "| `{}` | {}/{} | **{}** | **{}**, {:.2} | {} / **{}** | {} | {} | {:.1} s ({:.2}) | {:.0} % | {} / {} | {:.0} s |\n",
            r.command,
            r.datasets_ready,
            r.datasets,
            human(r.operator_peak_rss_bytes),
            r.status_writes_max_per_s,
            r.status_writes_mean_per_s,
            secs(r.ready_after_last_agent_median_s),
            secs(r.ready_after_last_agent_max_s),
            secs(r.reconcile_interval_median_s),
            secs(r.all_assigned_s),
            r.operator_cpu_seed_s,
            r.operator_cpu_seed_s / span,
            100.0 * r.machine_cpu_busy,
            r.agent_status_calls,
            r.agent_apply_calls,
            r.wall_s,
        ));
    }
    s.push_str(MARKERS.end);
    s.push('\n');
    s
}

/// Replaces the text between the scale markers (inclusive) with
/// `section`, or appends it when they are missing.
pub fn splice_section(existing: &str, section: &str) -> String {
    MARKERS.splice(existing, section)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_report() -> ScaleReport {
        ScaleReport {
            command: "e2e bench-scale --agents 500 --datasets 20 --seed-time 20s".into(),
            agents: 500,
            datasets: 20,
            seed_time_s: 20.0,
            jitter: 0.25,
            dataset_bytes: 4 << 30,
            dataset_files: 4,
            chunk_size: Some(1 << 20),
            all_ready: true,
            datasets_ready: 20,
            wall_s: 60.0,
            setup_s: 10.0,
            first_assignment_s: Some(0.5),
            all_assigned_s: Some(5.0),
            assigned_pairs: 10_000,
            last_agent_ready_s: Some(30.0),
            last_dataset_ready_s: Some(32.0),
            ready_after_last_agent_median_s: Some(1.0),
            ready_after_last_agent_max_s: Some(2.0),
            labelled_after_last_agent_median_s: Some(0.8),
            labelled_after_last_agent_max_s: Some(1.5),
            reconcile_interval_median_s: Some(2.0),
            all_ready_after_last_agent_s: Some(2.0),
            status_writes: 500,
            status_writes_max_per_s: 1,
            status_writes_mean_per_s: 0.8,
            status_write_min_gap_s: Some(1.01),
            status_writes_after_ready: 0,
            status_changes_seen: 500,
            operator_status_writes: Some(510),
            operator_reconciles: Some(900),
            operator_reconcile_errors: Some(0),
            operator_agent_calls: BTreeMap::from([("apply/ok".to_owned(), 10)]),
            agent_apply_calls: 10,
            agent_apply_changed: 10,
            agent_status_calls: 100,
            agent_remove_calls: 0,
            agent_unauthenticated_calls: 0,
            operator_peak_rss_bytes: 100 << 20,
            operator_rss_at_ready_bytes: 90 << 20,
            operator_rss_final_bytes: 90 << 20,
            operator_threads: 4,
            operator_cpu_s: 40.0,
            operator_cpu_seed_s: 30.0,
            operator_cpu_settle_s: 1.0,
            operator_reconciles_settle: Some(20),
            operator_status_writes_settle: Some(0),
            settle_s: 10.0,
            harness_cpu_s: 20.0,
            machine_cpu_busy: 0.9,
            api_list_nodes_median_s: Some(0.01),
            api_list_nodes_max_s: Some(0.1),
            reconcile_discover_plan_median_s: Some(1.0),
            reconcile_rest_median_s: Some(1.0),
            rss_target_met: true,
            writes_target_met: true,
            per_dataset: vec![],
            machine: Machine {
                nproc: 2,
                mem_total_bytes: 24 << 30,
                kernel: "6.18.0".into(),
            },
        }
    }

    #[test]
    fn the_results_section_keeps_the_data_plane_section() {
        let section = results_section(&[sample_report()], "2026-12-01", "Quick run.");
        assert!(
            section.starts_with(MARKERS.begin) && section.ends_with(&format!("{}\n", MARKERS.end))
        );
        assert!(section.contains(
            "| `e2e bench-scale --agents 500 --datasets 20 --seed-time 20s` | 20/20 | **100.0 MiB** | **1**, 0.80 | 1.0 s / **2.0 s** | 2.0 s |"
        ));
        let data_plane = "# Results\n\n<!-- BEGIN e2e/bench/run.sh: generated, edits here are overwritten -->\nrows\n<!-- END e2e/bench/run.sh -->\n";
        let once = splice_section(data_plane, &section);
        assert!(once.starts_with(data_plane));
        assert_eq!(splice_section(&once, &section), once);
        let line = serde_json::to_string(&sample_report()).unwrap();
        assert_eq!(
            serde_json::from_str::<ScaleReport>(&line).unwrap(),
            sample_report()
        );
    }
}
