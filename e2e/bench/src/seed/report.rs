//! What one `e2e bench` run measured, printed for people, as one JSON
//! line, and as the RESULTS.md table.

use serde::{Deserialize, Serialize};

use super::MARKERS;
use crate::procfs::Machine;
use crate::report::{GIB, human, mib_s};

/// What one run measured. Times in seconds, rates in bytes/s, utilisation
/// as fractions (CPU: of all CPUs; disk: of the busiest whole disk's time).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BenchReport {
    pub command: String,
    pub nodes: usize,
    pub dataset_bytes: u64,
    pub dataset_files: usize,
    pub chunk_size: u64,
    pub link_mbit: u32,
    pub max_fetchers: u32,
    /// From just before `kubectl apply` to every agent reporting Ready.
    pub makespan_s: f64,
    /// When any agent was first seen with a verified byte: the control
    /// plane's share of the makespan (kubectl, listing, planning, commands).
    pub first_byte_s: Option<f64>,
    /// When the Dataset's `Ready` condition was first seen True.
    pub status_ready_s: Option<f64>,
    /// When each node's agent was first seen Ready, by node order.
    pub node_ready_s: Vec<f64>,
    /// Kumar–Ross T* at the nominal link rates.
    pub bound_s: f64,
    pub makespan_over_bound: f64,
    pub origin_bytes: u64,
    pub origin_over_dataset: f64,
    pub naive_makespan_s: f64,
    pub naive_origin_bytes: u64,
    pub naive_over_bound: f64,
    /// One agent pulling from one peer on a shaped link (steady state).
    pub peer_link_bytes_per_s: f64,
    pub peer_probe_bytes: u64,
    /// One TCP stream on the same pair of nodes (steady state).
    pub raw_tcp_bytes_per_s: f64,
    pub peer_over_raw_tcp: f64,
    /// Highest VmHWM of the agents, read when the seed completed.
    pub agent_max_rss_bytes: u64,
    /// CPU time of all agents during the seed.
    pub agent_cpu_s: f64,
    /// Busy share of all CPUs during the seed (every process on the machine).
    pub cpu_util: f64,
    pub cpu_iowait: f64,
    /// Busy share (io_ticks) of the busiest whole disk during the seed.
    pub disk_util: f64,
    pub disk_device: String,
    pub disk_read_bytes: u64,
    pub disk_written_bytes: u64,
    pub naive_cpu_util: f64,
    pub naive_disk_util: f64,
    pub machine: Machine,
}

/// The report as one JSON line (no newline inside).
pub fn json_line(report: &BenchReport) -> anyhow::Result<String> {
    Ok(serde_json::to_string(report)?)
}

/// Prints the human table; with `json` the JSON object as the last line.
pub fn print(r: &BenchReport, json: bool) -> anyhow::Result<()> {
    println!("{}", r.command);
    println!(
        "dataset               {} in {} files, chunk {}; {} nodes, every link {} Mbit/s; maxFetchers {}",
        human(r.dataset_bytes),
        r.dataset_files,
        human(r.chunk_size),
        r.nodes,
        r.link_mbit,
        r.max_fetchers
    );
    println!("                      swarmseed        naive (every node GETs all)");
    println!(
        "makespan              {:<16} {:.2} s",
        format!("{:.2} s", r.makespan_s),
        r.naive_makespan_s
    );
    println!(
        "makespan / T*         {:<16} {:.2}x     (T* = {:.2} s)",
        format!("{:.2}x", r.makespan_over_bound),
        r.naive_over_bound,
        r.bound_s
    );
    println!(
        "origin bytes / F      {:<16} {:.4}x",
        format!("{:.4}x", r.origin_over_dataset),
        r.naive_origin_bytes as f64 / r.dataset_bytes.max(1) as f64
    );
    let secs = |s: Option<f64>| s.map_or("(not seen)".to_string(), |s| format!("{s:.2} s"));
    println!("first verified byte   {}", secs(r.first_byte_s));
    println!("status Ready after    {}", secs(r.status_ready_s));
    println!(
        "peer link / raw TCP   {} / {} = {:.1} %  (probe {})",
        mib_s(r.peer_link_bytes_per_s),
        mib_s(r.raw_tcp_bytes_per_s),
        100.0 * r.peer_over_raw_tcp,
        human(r.peer_probe_bytes)
    );
    println!("agent peak RSS        {}", human(r.agent_max_rss_bytes));
    println!(
        "during the seed       CPU {:.0} % busy, {:.0} % iowait ({} CPUs); disk {} {:.0} % busy, {} written; agents {:.1} CPU-s",
        100.0 * r.cpu_util,
        100.0 * r.cpu_iowait,
        r.machine.nproc,
        r.disk_device,
        100.0 * r.disk_util,
        human(r.disk_written_bytes),
        r.agent_cpu_s
    );
    println!(
        "during naive          CPU {:.0} % busy; disk {:.0} % busy",
        100.0 * r.naive_cpu_util,
        100.0 * r.naive_disk_util
    );
    if json {
        println!("{}", json_line(r)?);
    }
    Ok(())
}

/// The generated section, markers included.
pub fn results_section(reports: &[BenchReport], date: &str, note: &str) -> String {
    let m = reports
        .first()
        .map(|r| r.machine.clone())
        .unwrap_or_default();
    let mut s = String::new();
    s.push_str(MARKERS.begin);
    s.push_str("\n## Seeding through the operator (`e2e/bench/run.sh`)\n\n");
    if !date.is_empty() {
        s.push_str(&format!("Run {date}. "));
    }
    s.push_str(&format!(
        "Machine: {} CPUs, {:.1} GiB memory, Linux {}, release build, one run per row.\n\n",
        m.nproc,
        m.mem_total_bytes as f64 / GIB as f64,
        m.kernel
    ));
    s.push_str(
        "Every node link and the origin link are shaped to the row's rate in both \
directions (`tc tbf`), so T* = max(F/u_s, F/d_min, N·F/(u_s+Σu_i)) = F / rate. \
*Makespan*: from `kubectl apply` until every agent reports the revision Ready \
(published, fsynced), `origin.maxFetchers` = N, default chunk size. *Naive*: the \
Dataset deleted, every node GETs the whole dataset from the origin at once \
(`e2e bench fetch-all`, 8 parallel GETs, files made durable as the agents do). \
*Peer link*: one agent pulling a probe from one peer on the same shaped link vs \
one raw TCP stream (steady state). Every node (and the origin) has an ext4 \
filesystem of its own, made fresh for the run (loop-mounted images on the \
machine's one disk). CPU and disk: share busy during the seed, whole machine.\n\n",
    );
    if !note.is_empty() {
        s.push_str(note.trim());
        s.push_str("\n\n");
    }
    s.push_str(
        "| command | F | makespan (first byte) | T* | makespan / T* | origin / F | naive makespan | naive / T* | naive origin / F | peer link / raw TCP | agent peak RSS | CPU busy | disk busy |\n",
    );
    s.push_str("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    for r in reports {
        s.push_str(&format!(
            "| `{}` | {} in {} files | {:.1} s ({}) | {:.1} s | **{:.2}** | **{:.4}** | {:.1} s | {:.2} | {:.2} | {} / {} = {:.0} % | {} | {:.0} % | {:.0} % |\n",
            r.command,
            human(r.dataset_bytes),
            r.dataset_files,
            r.makespan_s,
            r.first_byte_s.map_or("-".into(), |s| format!("{s:.1} s")),
            r.bound_s,
            r.makespan_over_bound,
            r.origin_over_dataset,
            r.naive_makespan_s,
            r.naive_over_bound,
            r.naive_origin_bytes as f64 / r.dataset_bytes.max(1) as f64,
            mib_s(r.peer_link_bytes_per_s),
            mib_s(r.raw_tcp_bytes_per_s),
            100.0 * r.peer_over_raw_tcp,
            human(r.agent_max_rss_bytes),
            100.0 * r.cpu_util,
            100.0 * r.disk_util,
        ));
    }
    s.push_str(MARKERS.end);
    s.push('\n');
    s
}

/// Replaces the text between the markers (inclusive) with `section`, or
/// appends `section` when the markers are missing.
pub fn splice_section(existing: &str, section: &str) -> String {
    MARKERS.splice(existing, section)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> BenchReport {
        BenchReport {
            command: "e2e bench --nodes 4 --size 64MiB --link-mbit 200".into(),
            nodes: 4,
            dataset_bytes: 64 << 20,
            dataset_files: 4,
            chunk_size: 1 << 20,
            link_mbit: 200,
            max_fetchers: 4,
            makespan_s: 3.5,
            first_byte_s: Some(1.1),
            status_ready_s: Some(4.0),
            node_ready_s: vec![3.0, 3.2, 3.4, 3.5],
            bound_s: 2.68,
            makespan_over_bound: 1.3,
            origin_bytes: 64 << 20,
            origin_over_dataset: 1.0,
            naive_makespan_s: 11.0,
            naive_origin_bytes: 4 * (64 << 20),
            naive_over_bound: 4.1,
            peer_link_bytes_per_s: 23e6,
            peer_probe_bytes: 100e6 as u64,
            raw_tcp_bytes_per_s: 23.5e6,
            peer_over_raw_tcp: 0.98,
            agent_max_rss_bytes: 30 << 20,
            agent_cpu_s: 2.0,
            cpu_util: 0.8,
            cpu_iowait: 0.05,
            disk_util: 0.2,
            disk_device: "vda".into(),
            disk_read_bytes: 0,
            disk_written_bytes: 256 << 20,
            naive_cpu_util: 0.5,
            naive_disk_util: 0.3,
            machine: Machine {
                nproc: 2,
                mem_total_bytes: 24 << 30,
                kernel: "6.18.0".into(),
            },
        }
    }

    #[test]
    fn the_json_line_is_one_object_with_the_documented_fields() {
        let line = json_line(&sample()).unwrap();
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        for key in [
            "nodes",
            "dataset_bytes",
            "link_mbit",
            "makespan_s",
            "bound_s",
            "origin_bytes",
            "naive_makespan_s",
            "naive_origin_bytes",
            "peer_link_bytes_per_s",
            "raw_tcp_bytes_per_s",
            "agent_max_rss_bytes",
            "cpu_util",
            "cpu_iowait",
            "disk_util",
            "disk_written_bytes",
        ] {
            assert!(v.get(key).is_some_and(|x| !x.is_null()), "missing {key}");
        }
        assert!(v["nodes"].is_u64() && v["makespan_s"].is_f64());
        assert_eq!(v["machine"]["nproc"], 2);
        // What run.sh writes, render reads back.
        let back: BenchReport = serde_json::from_str(&line).unwrap();
        assert_eq!(back, sample());
    }

    #[test]
    fn the_results_section_replaces_only_its_own_markers() {
        let section = results_section(&[sample()], "2026-11-26", "Smoke run.");
        assert!(
            section.starts_with(MARKERS.begin) && section.ends_with(&format!("{}\n", MARKERS.end))
        );
        assert!(section.contains("| `e2e bench --nodes 4 --size 64MiB --link-mbit 200` |"));
        assert!(section.contains("2 CPUs") && section.contains("\nSmoke run.\n"));
        let original = "# Benchmark results\n\nkept text\n";
        let once = splice_section(original, &section);
        assert!(once.starts_with(original));
        let twice = splice_section(&once, &section);
        assert_eq!(once, twice);
        let other = splice_section(&once, "X\n");
        assert!(other.starts_with(original) && !other.contains(MARKERS.begin));
        let with_tail = format!("{once}\n## later\n");
        assert!(splice_section(&with_tail, &section).ends_with("\n## later\n"));
    }
}
