//! Acceptance: `kubectl swarmseed status --watch`, run by the real kubectl
//! on a terminal against a cluster that is seeding, shows every node's
//! progress as it moves and the origin/peer byte split; once the Dataset
//! is Ready it shows every node at 100% and exits 0. The screens are what a
//! detached tmux pane of fixed size holds, i.e. what a user would see.
//!
//! Run after `cargo build --release --bins` (the plugin is
//! `target/release/kubectl-swarmseed`); needs tmux (`e2e/setup.sh`) and root
//! for shaped links.

// Tests unwrap like tests do.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use swarmseed_harness::ClusterSpec;
use swarmseed_harness::origin::dataset::{DatasetSpec, generate_dataset};
use swarmseed_harness::seeding::{Binaries, SeedCluster, dataset_yaml};

const MIB: u64 = 1 << 20;
const NS: &str = "ml";
const NAME: &str = "weights";
const NODES: [&str; 4] = ["node-0", "node-1", "node-2", "node-3"];
/// Every node link and the origin link. Each node has to receive the
/// whole ~35 MiB dataset through its link: at least 18 s of seeding (about
/// 30 s measured).
const LINK_MBIT: u32 = 16;
/// The pane a user looks at.
const COLUMNS: u16 = 120;
const ROWS: u16 = 40;
/// Printed by the pane's shell when the command returns.
const EXIT_MARK: &str = "[exit ";

/// A tmux server of its own (its own socket, in a directory of its own),
/// killed with everything it runs when the test ends, passes or panics.
struct Tmux {
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmux {
    /// A detached session `session` of `COLUMNS`x`ROWS` running `command`
    /// (a shell command line), without a status bar.
    fn start(session: &str, command: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("swarmseed-tmux-")
            .tempdir()
            .unwrap();
        let tmux = Self {
            socket: dir.path().join("socket"),
            _dir: dir,
        };
        let (columns, rows) = (COLUMNS.to_string(), ROWS.to_string());
        tmux.run(&[
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-s",
            session,
            "-x",
            &columns,
            "-y",
            &rows,
            command,
            ";",
            "set-option",
            "-t",
            session,
            "status",
            "off",
        ]);
        tmux
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("running tmux (install it: e2e/setup.sh, or apt-get install tmux)");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// The visible screen of `target`, wrapped lines joined (`-J`, which
    /// also keeps trailing blanks: trimmed here), without the blank rows
    /// below the last line of text.
    fn capture(&self, target: &str) -> String {
        let screen = self.run(&["capture-pane", "-p", "-J", "-t", target]);
        let lines: Vec<&str> = screen.lines().map(str::trim_end).collect();
        format!("{}\n", lines.join("\n").trim_end())
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .arg("kill-server")
            .output();
    }
}

/// `'…'` for sh.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A shell command line that runs `kubectl swarmseed <args>` as a user
/// with the plugin on the PATH would, then says how it exited and keeps the
/// pane (and its last screen) open.
fn plugin_command(plugin_dir: &Path, kubeconfig: &Path, args: &str) -> String {
    let path = format!(
        "{}:{}",
        plugin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    format!(
        "KUBECONFIG={} PATH={} kubectl swarmseed {args}; echo \"{EXIT_MARK}$?]\"; exec sleep 600",
        quote(&kubeconfig.to_string_lossy()),
        quote(&path),
    )
}

/// One node's row of the status page.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NodeRow {
    node: String,
    percent: u32,
    received: String,
    state: String,
}

/// The node rows on a screen:
/// `node-1   [#####---------------]  25%   8.6MiB/34MiB   origin 8.5MiB / peers 0B   Transferring`.
fn node_rows(screen: &str) -> Vec<NodeRow> {
    screen
        .lines()
        .filter_map(|line| {
            let node = line.split_whitespace().next()?;
            if !NODES.contains(&node) {
                return None;
            }
            let (bar, rest) = line.split_once(']')?;
            if !bar.contains('[') {
                return None;
            }
            let (percent, rest) = rest.split_once('%')?;
            let received = rest
                .find("origin ")
                .map(|i| rest[i..].split("   ").next().unwrap_or_default().to_owned())?;
            Some(NodeRow {
                node: node.to_owned(),
                percent: percent.trim().parse().ok()?,
                received,
                state: line.split_whitespace().last()?.to_owned(),
            })
        })
        .collect()
}

/// `Total: origin 34MiB / peers 101MiB (75% from peers); origin ratio 1.00x (…)`.
fn total_line(screen: &str) -> Option<&str> {
    screen
        .lines()
        .find(|l| l.starts_with("Total: origin ") && l.contains(" / peers "))
}

fn every_node_shown(rows: &[NodeRow]) -> bool {
    rows.len() == NODES.len() && NODES.iter().zip(rows).all(|(n, r)| r.node == *n)
}

fn show(title: &str, screen: &str) {
    let rule = "-".repeat(usize::from(COLUMNS));
    eprintln!("\n{title}\n{rule}\n{screen}{rule}");
}

/// About 35 MiB: two big files and a few hundred small ones.
fn files() -> DatasetSpec {
    DatasetSpec {
        seed: 7,
        big_files: 2,
        big_file_size: 16 * MIB,
        small_files: 200,
        small_file_min: 0,
        small_file_max: 32 * 1024,
        small_dirs: 8,
    }
}

fn plugin_dir(bins: &Binaries) -> PathBuf {
    let dir = bins.e2e.parent().unwrap().to_path_buf();
    let plugin = dir.join("kubectl-swarmseed");
    assert!(
        plugin.is_file(),
        "{} is missing: build it first (cargo build --release --bins)",
        plugin.display()
    );
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_watch_on_a_terminal_shows_every_node_moving_to_ready() {
    swarmseed_harness::init_crypto();
    let bins = Binaries::beside_e2e().unwrap();
    let plugin_dir = plugin_dir(&bins);
    let mut spec = ClusterSpec::new(NODES.len(), &bins.agent);
    spec.link_mbit = Some(LINK_MBIT);
    spec.origin_link_mbit = Some(LINK_MBIT);
    let mut c = SeedCluster::start(spec, bins).await.unwrap();
    if let Some(why) = c.cluster.fallback_reason() {
        eprintln!("note: {why}: links are not shaped, the Dataset's own caps slow it down");
    }
    c.kubectl(&["create", "namespace", NS]).await.unwrap();
    let src = c.cluster.work_dir().join("origin-http");
    generate_dataset(&src, &files()).unwrap();
    let origin = c.cluster.start_http_origin(&src, 8080).await.unwrap();
    // Caps a little above the links' rate: the links decide when they are
    // shaped; without network namespaces (not root) the caps keep the
    // seeding slow enough to be watched.
    let manifest = dataset_yaml(
        NS,
        NAME,
        &json!({
            "source": { "uri": format!("{}/", origin.url()) },
            "origin": { "bandwidth": "2Mi" },
            "peerBandwidth": "2Mi",
        }),
    );
    c.kubectl_stdin(&["apply", "-f", "-"], &manifest)
        .await
        .unwrap();
    let applied = Instant::now();

    let kubeconfig = c.cluster.kubeconfig().to_path_buf();
    let watch = plugin_command(
        &plugin_dir,
        &kubeconfig,
        &format!("status {NAME} -n {NS} --watch"),
    );
    let tmux = Tmux::start("screen", &watch);

    // While it seeds: every node on one page, at least one part-way, the
    // page redrawn in place as the numbers move.
    let mut mid: Option<(u32, String)> = None;
    let mut snapshots: Vec<Vec<u32>> = Vec::new();
    let mut last = String::new();
    let final_screen = loop {
        let screen = tmux.capture("screen");
        if screen.contains(EXIT_MARK) {
            break screen;
        }
        let rows = node_rows(&screen);
        let percents: Vec<u32> = rows.iter().map(|r| r.percent).collect();
        let part_way = percents.iter().any(|p| (1..100).contains(p));
        if every_node_shown(&rows) && part_way && total_line(&screen).is_some() {
            // Keep the screen nearest to half way: the one to show.
            let mean = percents.iter().sum::<u32>() / percents.len() as u32;
            if mid
                .as_ref()
                .is_none_or(|(m, _)| m.abs_diff(50) > mean.abs_diff(50))
            {
                mid = Some((mean, screen.clone()));
            }
            if snapshots.last() != Some(&percents) {
                snapshots.push(percents);
            }
        }
        assert!(
            applied.elapsed() < Duration::from_secs(75),
            "the watch did not end with Ready within 75 s; its screen:\n{screen}\nstatus: {:#}\noperator log:\n{}",
            c.dataset(NS, NAME).await.unwrap().unwrap_or_default()["status"],
            c.operator_log("operator-0")
        );
        last = screen;
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let seeding_time = applied.elapsed();
    let Some((_, mid)) = mid else {
        panic!(
            "no screen showed every node with one part-way ({seeding_time:?} from apply to exit); \
             the last screen before the end:\n{last}\nthe end:\n{final_screen}"
        );
    };
    show("mid-seeding: kubectl swarmseed status --watch", &mid);
    show(
        "after Ready: kubectl swarmseed status --watch",
        &final_screen,
    );
    eprintln!(
        "\nseeding took {seeding_time:.1?} from apply to the watch's exit; {} distinct progress snapshots: {snapshots:?}",
        snapshots.len()
    );

    // The mid-seeding screen, as drawn on the terminal: the page from the
    // top (cleared and redrawn, not scrolled), every node with a bar, the
    // bytes it got from the origin and from peers, and the totals.
    assert!(
        mid.starts_with(&format!("Dataset:    {NS}/{NAME}\n")),
        "the page is redrawn from the top:\n{mid}"
    );
    assert!(mid.contains("NODE     PROGRESS"), "{mid}");
    let rows = node_rows(&mid);
    assert!(every_node_shown(&rows), "{rows:?}\n{mid}");
    for r in &rows {
        assert!(r.percent <= 100, "{r:?}");
        assert!(
            r.received.starts_with("origin ") && r.received.contains(" / peers "),
            "{r:?}"
        );
    }
    assert!(
        rows.iter()
            .any(|r| (1..100).contains(&r.percent) && r.state == "Transferring"),
        "one node part-way and transferring: {rows:?}"
    );
    let split = total_line(&mid).unwrap();
    assert!(
        !split.contains("/ peers 0B "),
        "half way, peers have sent bytes: {split}"
    );
    assert!(
        mid.contains("Every 1s until Ready; Ctrl-C to stop."),
        "{mid}"
    );
    assert!(
        snapshots.len() >= 2,
        "the page follows the progress: {snapshots:?}"
    );

    // The end: the watch stopped by itself with 0, every node complete.
    assert!(final_screen.contains("[exit 0]"), "{final_screen}");
    assert_ready_page(&final_screen);
    let split = total_line(&final_screen).unwrap();
    let from_peers: u32 = split
        .split_once(" (")
        .and_then(|(_, r)| r.split_once("% from peers)"))
        .and_then(|(p, _)| p.parse().ok())
        .unwrap_or_else(|| panic!("no peer share in {split:?}"));
    // Each byte left the origin about once; the other three copies came
    // from peers (75%).
    assert!(
        from_peers >= 60,
        "only {from_peers}% came from peers: {split}"
    );
    assert!(split.contains("origin ratio 1.0"), "{split}");

    // The one-shot page after Ready says the same.
    let once = plugin_command(&plugin_dir, &kubeconfig, &format!("status {NAME} -n {NS}"));
    tmux.run(&["new-window", "-t", "screen", "-n", "once", &once]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let screen = loop {
        let screen = tmux.capture("screen:once");
        if screen.contains(EXIT_MARK) || Instant::now() > deadline {
            break screen;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    show("after Ready: kubectl swarmseed status", &screen);
    assert!(screen.contains("[exit 0]"), "{screen}");
    assert_ready_page(&screen);

    drop(tmux);
    drop(origin);
    c.cluster.stop().await;
}

/// Every node at 100%, Ready; the Dataset Ready on all four.
fn assert_ready_page(screen: &str) {
    let rows = node_rows(screen);
    assert!(every_node_shown(&rows), "{rows:?}\n{screen}");
    for r in &rows {
        assert_eq!((r.percent, r.state.as_str()), (100, "Ready"), "{r:?}");
    }
    assert!(
        screen.contains("Nodes:      4/4 ready, 0 seeding, 0 failed"),
        "{screen}"
    );
    assert!(
        screen
            .lines()
            .any(|l| l.trim_start().starts_with("Ready ") && l.contains(" True ")),
        "Ready=True:\n{screen}"
    );
    assert!(total_line(screen).is_some(), "{screen}");
}
