//! Acceptance: the README's Quickstart works exactly as written against
//! `demo --keep`. Starts the demo as a user would (`e2e demo --keep`), takes
//! the `export KUBECONFIG=…` line it prints, runs every line of the
//! Quickstart's `sh` blocks through `bash -euo pipefail` with the plugin
//! (`target/release`) on the PATH, checks each output against what the
//! README says it shows, then stops the demo with Ctrl-C (SIGINT) and
//! checks that nothing of it is left.
//!
//! Run after `cargo build --release --bins`.

// Tests unwrap like tests do.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use swarmseed_harness::naming::{parse_owner_pid, pid_alive};
use swarmseed_harness::netns::{list_links, list_netns, sweep_stale};

const E2E: &str = env!("CARGO_BIN_EXE_e2e");
const NODES: [&str; 4] = ["node-0", "node-1", "node-2", "node-3"];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The lines of the `sh` blocks between `## Quickstart` and the next
/// heading, as written (a line ending in `\` continues on the next).
fn quickstart_commands(readme: &str) -> Vec<String> {
    let mut lines = readme
        .lines()
        .skip_while(|l| l.trim_end() != "## Quickstart");
    assert!(lines.next().is_some(), "README.md has no `## Quickstart`");
    let mut commands = Vec::new();
    let mut in_sh = false;
    let mut pending = String::new();
    for line in lines.take_while(|l| !l.starts_with("## ") && !l.starts_with("### ")) {
        if !in_sh {
            in_sh = line.trim_end() == "```sh";
            continue;
        }
        if line.trim_end() == "```" {
            in_sh = false;
            continue;
        }
        pending.push_str(line);
        if let Some(head) = pending.strip_suffix('\\') {
            pending = format!("{head}\n");
            continue;
        }
        if !pending.trim().is_empty() {
            commands.push(std::mem::take(&mut pending));
        }
        pending.clear();
    }
    commands
}

/// `e2e demo --keep` running in its own process group, its output read
/// as it comes. Dropping it kills what is left (SIGKILL to the group; the
/// demo's agents and helpers die with it by their parent-death signal) and
/// removes what a killed demo leaves behind: namespaces, links, its work
/// directory.
struct Demo {
    child: Child,
    /// Known once the demo printed its KUBECONFIG.
    work_dir: Option<PathBuf>,
    lines: Receiver<String>,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Demo {
    fn start(args: &[&str]) -> Self {
        use std::os::unix::process::CommandExt;
        let mut child = Command::new(E2E)
            .arg("demo")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        let stdout = Arc::new(Mutex::new(String::new()));
        let out = BufReader::new(child.stdout.take().unwrap());
        let log = stdout.clone();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                log.lock().unwrap().push_str(&format!("{line}\n"));
                let _ = tx.send(line);
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().unwrap();
        let log = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                log.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Self {
            child,
            work_dir: None,
            lines,
            stdout,
            stderr,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn output(&self) -> String {
        format!(
            "stdout:\n{}\nstderr (tail):\n{}",
            self.stdout.lock().unwrap(),
            tail(&self.stderr.lock().unwrap(), 6000)
        )
    }

    /// The first stdout line starting with `prefix`.
    fn wait_for_line(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no {prefix:?} line within {timeout:?}\n{}", self.output())
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait();
                    panic!(
                        "the demo ended ({status:?}) before printing {prefix:?}\n{}",
                        self.output()
                    )
                }
            }
        }
    }

    /// Ctrl-C, as the demo tells its user; its exit status.
    fn interrupt(&mut self, timeout: Duration) -> std::process::ExitStatus {
        kill(Pid::from_raw(self.pid() as i32), Signal::SIGINT).unwrap();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the demo did not stop within {timeout:?} of Ctrl-C\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = kill(Pid::from_raw(-(self.pid() as i32)), Signal::SIGKILL);
            let _ = self.child.wait();
            // Its agents die with it (parent-death signal); wait for that
            // before sweeping what a killed owner leaves.
            std::thread::sleep(Duration::from_millis(500));
            sweep_stale();
            if let Some(dir) = &self.work_dir {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

fn tail(s: &str, max: usize) -> &str {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// What one Quickstart line printed.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `export_line` then `command` in `bash -euo pipefail` from the
/// repository root, with `plugin_dir` first on the PATH and no KUBECONFIG
/// but the one the export sets; bounded by `timeout`.
fn run_line(export_line: &str, command: &str, plugin_dir: &Path, timeout: Duration) -> Ran {
    let dir = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let path = format!(
        "{}:{}",
        plugin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut child = Command::new("bash")
        .args([
            "-euo",
            "pipefail",
            "-c",
            &format!("{export_line}\n{command}\n"),
        ])
        .current_dir(repo_root())
        .env("PATH", path)
        .env_remove("KUBECONFIG")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + timeout;
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Ran {
        code,
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    }
}

/// The row of `table` whose cells include all of `cells`.
fn row_with<'a>(table: &'a str, cells: &[&str]) -> Option<&'a str> {
    table.lines().find(|l| {
        let words: Vec<&str> = l.split_whitespace().collect();
        cells.iter().all(|c| words.contains(c))
    })
}

/// Whether `cell` is an origin ratio (`1.01x`) within the target: at most
/// 1.02 × the dataset read from the origin.
fn origin_ratio_ok(cell: &str) -> bool {
    cell.strip_suffix('x')
        .and_then(|r| r.parse::<f64>().ok())
        .is_some_and(|r| (1.0..=1.02).contains(&r))
}

/// Whether `out` shows what the README says `command` shows (the comment
/// on its line, or the prose around it).
fn check(command: &str, out: &str) -> Result<(), String> {
    let fail = |what: &str| Err(format!("{what}; got:\n{out}"));
    let cmd = command.split(" #").next().unwrap_or(command).trim();
    match cmd {
        // READY 4/4, SIZE, ORIGIN 1.00x (at most 1.02x)
        "kubectl get datasets -A" => {
            let header: Vec<&str> = out
                .lines()
                .next()
                .unwrap_or("")
                .split_whitespace()
                .collect();
            if header != ["NAMESPACE", "NAME", "READY", "SIZE", "ORIGIN", "AGE"] {
                return fail("columns NAMESPACE NAME READY SIZE ORIGIN AGE");
            }
            match row_with(out, &["ml", "llama-demo", "4/4"]) {
                Some(row)
                    if row.split_whitespace().count() == 6
                        && row.split_whitespace().nth(4).is_some_and(origin_ratio_ok) =>
                {
                    Ok(())
                }
                _ => fail("ml llama-demo 4/4 <size> <origin ratio at most 1.02x> <age>"),
            }
        }
        // conditions, per-revision facts
        "kubectl describe dataset llama-demo -n ml" => {
            // Fields as `Key: value` with the alignment squeezed out.
            let fields: Vec<String> = out
                .lines()
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                .collect();
            let has = |prefix: &str| fields.iter().any(|f| f.starts_with(prefix));
            let ready_true = fields
                .windows(2)
                .any(|w| w[0] == "Status: True" && w[1] == "Type: Ready");
            let facts = [
                "Name: llama-demo",
                "Conditions:",
                "Revision: ",
                "Content Digest: blake3:",
                "Total Bytes: ",
                "Files: ",
            ];
            match facts.iter().find(|f| !has(f)) {
                None if ready_true => Ok(()),
                None => fail("the Ready condition, True"),
                Some(f) => fail(&format!("{f:?}")),
            }
        }
        "kubectl wait --for=condition=Ready dataset/llama-demo -n ml --timeout=10m" => {
            if out.trim() == "dataset.swarmseed.io/llama-demo condition met" {
                Ok(())
            } else {
                fail("condition met")
            }
        }
        c if c.starts_with("kubectl get dataset llama-demo -n ml -o jsonpath=") => {
            let want = format!(
                "/var/lib/swarmseed/datasets/ml/llama-demo\n{}\n",
                swarmseed_core::label::key("ml", "llama-demo")
            );
            if out == want {
                Ok(())
            } else {
                fail(&format!("the path and the node label:\n{want}"))
            }
        }
        c if c.starts_with("kubectl get nodes -l ") => {
            let names: Vec<&str> = out
                .lines()
                .skip(1)
                .filter_map(|l| l.split_whitespace().next())
                .collect();
            if names == NODES {
                Ok(())
            } else {
                fail("the 4 demo nodes")
            }
        }
        // SourceListed, Ready, warnings
        "kubectl get events.events.k8s.io -n ml" => {
            let has = |reason: &str| {
                out.lines()
                    .any(|l| l.split_whitespace().any(|w| w == reason))
            };
            if has("SourceListed") && has("Ready") {
                Ok(())
            } else {
                fail("SourceListed and Ready events")
            }
        }
        "kubectl swarmseed ls -A" => match row_with(out, &["ml", "llama-demo", "4/4", "Ready"]) {
            Some(row)
                if out.starts_with("NAMESPACE   NAME")
                    && row.split_whitespace().nth(4).is_some_and(origin_ratio_ok) =>
            {
                Ok(())
            }
            _ => fail("ml llama-demo 4/4 <size> <origin ratio at most 1.02x> <age> Ready"),
        },
        // Per-node progress bars, the origin/peer byte split.
        "kubectl swarmseed status llama-demo -n ml" => {
            let all_done = NODES.iter().all(|n| {
                out.lines().any(|l| {
                    l.starts_with(&format!("{n} "))
                        && l.contains("] 100%")
                        && l.contains("origin ")
                        && l.contains(" / peers ")
                        && l.ends_with(" Ready")
                })
            });
            let split = out.lines().any(|l| {
                l.starts_with("Total: origin ")
                    && l.split("origin ratio ")
                        .nth(1)
                        .and_then(|r| r.split_whitespace().next())
                        .is_some_and(origin_ratio_ok)
            });
            if all_done && split && out.contains("Nodes:      4/4 ready, 0 seeding, 0 failed") {
                Ok(())
            } else {
                fail("4 nodes at 100% Ready with the origin/peer split, ratio at most 1.02x")
            }
        }
        "kubectl swarmseed wait llama-demo -n ml --timeout 10m" => {
            if out.starts_with("dataset \"llama-demo\" is Ready: 4/4 nodes") {
                Ok(())
            } else {
                fail("dataset \"llama-demo\" is Ready: 4/4 nodes …")
            }
        }
        _ => Err(format!(
            "the README's Quickstart has a line this test does not know; add a check of what it shows:\n{command}"
        )),
    }
}

#[test]
fn the_readme_quickstart_works_as_written_against_demo_keep() {
    let started = Instant::now();
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let commands = quickstart_commands(&readme);
    assert!(
        commands.len() >= 9,
        "the Quickstart's sh blocks: {commands:#?}"
    );
    let plugin_dir = Path::new(E2E).parent().unwrap().to_path_buf();
    assert!(
        plugin_dir.join("kubectl-swarmseed").is_file(),
        "{}/kubectl-swarmseed is missing: cargo build --release --bins",
        plugin_dir.display()
    );

    let mut demo = Demo::start(&["--keep", "--no-build", "--size", "64MiB", "--timeout", "3m"]);
    let export_line = demo.wait_for_line("export KUBECONFIG=", Duration::from_secs(180));
    let kubeconfig = PathBuf::from(export_line.trim_start_matches("export KUBECONFIG="));
    let work_dir = kubeconfig.parent().unwrap().to_path_buf();
    demo.work_dir = Some(work_dir.clone());
    assert!(kubeconfig.is_file(), "{export_line}");
    eprintln!("demo up after {:.1?}: {export_line}", started.elapsed());

    let mut failures = Vec::new();
    for command in &commands {
        let ran = run_line(&export_line, command, &plugin_dir, Duration::from_secs(60));
        eprintln!(
            "\n$ {command}\n{}{}[exit {:?}]",
            ran.stdout, ran.stderr, ran.code
        );
        let verdict = match ran.code {
            Some(0) => check(command, &ran.stdout),
            code => Err(format!("exited {code:?}; stderr:\n{}", ran.stderr)),
        };
        if let Err(why) = verdict {
            failures.push(format!("$ {command}\n{why}"));
        }
    }

    // Ctrl-C ends it cleanly and leaves nothing behind.
    let pid = demo.pid();
    let stopping = Instant::now();
    // Most of the stop is deleting the nodes' copies from the work dir:
    // slow on a busy disk.
    let status = demo.interrupt(Duration::from_secs(60));
    eprintln!("\nthe demo stopped {:.1?} after Ctrl-C", stopping.elapsed());
    let output = demo.output();
    assert!(
        failures.is_empty(),
        "README Quickstart lines that do not work as written:\n\n{}\n\ndemo {output}",
        failures.join("\n\n")
    );
    assert!(status.success(), "the demo exited {status:?}\n{output}");
    assert!(output.contains("tearing down"), "{output}");
    let ns = made_by(pid, list_netns().unwrap());
    assert!(ns.is_empty(), "network namespaces left: {ns:?}");
    let links = made_by(pid, list_links().unwrap());
    assert!(links.is_empty(), "links left: {links:?}");
    assert!(!work_dir.exists(), "work dir left: {}", work_dir.display());
    let work = work_dir.to_string_lossy().into_owned();
    let left = processes_mentioning(&work);
    assert!(left.is_empty(), "processes left: {left:?}");
    eprintln!("\nquickstart checked in {:.1?}", started.elapsed());
}

/// Those of `names` (network namespaces, links) that the process `pid`
/// made.
fn made_by(pid: u32, names: Vec<String>) -> Vec<String> {
    names
        .into_iter()
        .filter(|n| parse_owner_pid(n) == Some(pid))
        .collect()
}

/// Live processes whose command line mentions `needle` (the demo's agents
/// and operator name files in its work dir).
fn processes_mentioning(needle: &str) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) && pid_alive(pid) {
            found.push((pid, cmdline));
        }
    }
    found
}
