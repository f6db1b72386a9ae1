//! The machine and its processes as `/proc` tells them: CPU and disk
//! counters, a process's CPU time, memory and threads, and the utilisation
//! between two snapshots.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// `/proc/<pid>/stat` counts CPU time in USER_HZ, which Linux fixes at 100
/// for user space on every architecture we run on.
pub const USER_HZ: f64 = 100.0;

/// The machine the run was on.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Machine {
    pub nproc: usize,
    pub mem_total_bytes: u64,
    pub kernel: String,
}

impl Machine {
    pub fn current() -> Self {
        let mem_kb = std::fs::read_to_string("/proc/meminfo")
            .map(|s| status_kb(&s, "MemTotal:"))
            .unwrap_or(0);
        Self {
            nproc: std::thread::available_parallelism().map_or(0, usize::from),
            mem_total_bytes: mem_kb * 1024,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
        }
    }
}

/// Jiffies of all CPUs: busy excludes idle and iowait.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTimes {
    pub busy: u64,
    pub iowait: u64,
    pub total: u64,
}

/// The machine's CPU times now.
pub fn cpu_times() -> Option<CpuTimes> {
    parse_proc_stat(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// The aggregate `cpu` line of `/proc/stat`.
pub fn parse_proc_stat(s: &str) -> Option<CpuTimes> {
    let line = s.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal (guest is in user).
    let get = |i: usize| v.get(i).copied().unwrap_or(0);
    let total: u64 = (0..8).map(get).sum();
    let (idle, iowait) = (get(3), get(4));
    Some(CpuTimes {
        busy: total - idle - iowait,
        iowait,
        total,
    })
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskCounters {
    pub sectors_read: u64,
    pub sectors_written: u64,
    pub io_ticks_ms: u64,
}

/// `/proc/diskstats` rows of the named devices.
pub fn parse_diskstats(s: &str, devices: &[String]) -> BTreeMap<String, DiskCounters> {
    s.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let name = *f.get(2)?;
            if !devices.iter().any(|d| d == name) {
                return None;
            }
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            Some((
                name.to_owned(),
                DiskCounters {
                    sectors_read: num(5),
                    sectors_written: num(9),
                    io_ticks_ms: num(12),
                },
            ))
        })
        .collect()
}

/// utime + stime of `/proc/<pid>/stat`, in clock ticks.
pub fn parse_pid_cpu_ticks(s: &str) -> Option<u64> {
    // The command name may contain spaces and parentheses: fields count
    // from the last ')'. After it come state (3), ppid (4), ... utime (14).
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Whole disks (no partitions, loop, RAM or zram devices).
pub fn whole_disks() -> Vec<String> {
    std::fs::read_dir("/sys/block")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !["loop", "ram", "zram"].iter().any(|p| n.starts_with(p)))
                .collect()
        })
        .unwrap_or_default()
}

/// A `kB` (or plain count) field of `/proc/<pid>/status` or
/// `/proc/meminfo`, 0 when missing.
pub fn status_kb(s: &str, key: &str) -> u64 {
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
}

/// Peak resident set size (VmHWM) of a process, in bytes; 0 if unknown.
pub fn max_rss_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_or(0, |s| status_kb(&s, "VmHWM:") * 1024)
}

/// One process's memory, threads and CPU time.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    pub hwm: u64,
    pub rss: u64,
    pub threads: u64,
    pub cpu_ticks: u64,
}

impl ProcSample {
    /// The process now (`None`: it is gone).
    pub fn take(pid: impl std::fmt::Display) -> Option<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        Some(Self {
            hwm: status_kb(&status, "VmHWM:") * 1024,
            rss: status_kb(&status, "VmRSS:") * 1024,
            threads: status_kb(&status, "Threads:"),
            cpu_ticks: parse_pid_cpu_ticks(&stat).unwrap_or(0),
        })
    }
}

/// The machine's CPU and disk counters and the CPU time of some processes.
#[derive(Debug, Clone)]
pub struct Snapshot {
    at: Instant,
    cpu: CpuTimes,
    disks: BTreeMap<String, DiskCounters>,
    process_ticks: u64,
}

impl Snapshot {
    pub fn take(pids: &[u32]) -> Self {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        Self {
            at: Instant::now(),
            cpu: parse_proc_stat(&read("/proc/stat")).unwrap_or_default(),
            disks: parse_diskstats(&read("/proc/diskstats"), &whole_disks()),
            process_ticks: pids
                .iter()
                .filter_map(|p| parse_pid_cpu_ticks(&read(&format!("/proc/{p}/stat"))))
                .sum(),
        }
    }
}

/// What happened between two snapshots.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Utilisation {
    pub cpu_util: f64,
    pub cpu_iowait: f64,
    pub disk_util: f64,
    pub disk_device: String,
    pub disk_read_bytes: u64,
    pub disk_written_bytes: u64,
    pub agent_cpu_s: f64,
}

impl Utilisation {
    pub fn between(a: &Snapshot, b: &Snapshot) -> Self {
        let total = b.cpu.total.saturating_sub(a.cpu.total).max(1) as f64;
        let wall_ms = b.at.duration_since(a.at).as_secs_f64() * 1000.0;
        let mut u = Utilisation {
            cpu_util: b.cpu.busy.saturating_sub(a.cpu.busy) as f64 / total,
            cpu_iowait: b.cpu.iowait.saturating_sub(a.cpu.iowait) as f64 / total,
            agent_cpu_s: b.process_ticks.saturating_sub(a.process_ticks) as f64 / USER_HZ,
            ..Default::default()
        };
        for (dev, end) in &b.disks {
            let Some(start) = a.disks.get(dev) else {
                continue;
            };
            u.disk_read_bytes += end.sectors_read.saturating_sub(start.sectors_read) * 512;
            u.disk_written_bytes += end.sectors_written.saturating_sub(start.sectors_written) * 512;
            let busy = end.io_ticks_ms.saturating_sub(start.io_ticks_ms) as f64 / wall_ms.max(1.0);
            if u.disk_device.is_empty() || busy > u.disk_util {
                u.disk_util = busy.min(1.0);
                u.disk_device = dev.clone();
            }
        }
        u
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_counters_parse() {
        let stat = "cpu  100 5 50 800 20 3 2 10 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        assert_eq!(
            parse_proc_stat(stat),
            Some(CpuTimes {
                busy: 170,
                iowait: 20,
                total: 990
            })
        );
        let disks = " 254       0 vda 761712 14453 21529466 1717518 324764 105812 90044144 950696 0 165840 2783168 0 0 0 0\n   7       0 loop0 1 0 2 0 0 0 0 0 0 0 0\n";
        let got = parse_diskstats(disks, &["vda".to_string()]);
        assert_eq!(
            got.get("vda"),
            Some(&DiskCounters {
                sectors_read: 21529466,
                sectors_written: 90044144,
                io_ticks_ms: 165840
            })
        );
        assert_eq!(got.len(), 1);
        let pid =
            "1234 (swarm seed) agent) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 9 0";
        assert_eq!(parse_pid_cpu_ticks(pid), Some(325));
    }

    #[test]
    fn status_fields_parse() {
        assert_eq!(status_kb("VmHWM:\t  2048 kB\n", "VmHWM:"), 2048);
        assert_eq!(status_kb("Threads:\t9\n", "Threads:"), 9);
        assert_eq!(status_kb("", "VmHWM:"), 0);
    }
}
