//! Child processes that never outlive the test that started them.
//!
//! Each child
//! - runs in its own process group (so teardown kills it and anything it
//!   forked with one `killpg`),
//! - gets `PR_SET_PDEATHSIG = SIGKILL` through util-linux `setpriv` when
//!   that is installed, so it dies with us even if we are SIGKILLed (the
//!   kernel fires it when the *thread* that spawned the child exits; spawn
//!   from a thread that lives as long as the cluster: a test's main thread
//!   or a tokio worker, not `spawn_blocking`),
//! - is started through `ip netns exec NS` when it belongs to a node, which
//!   execs without forking, so the pid we hold is the program's pid,
//! - is killed and reaped on drop.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::cmd;
use crate::error::{Error, Result};

/// What to run, where, and where its output goes.
#[derive(Debug, Clone)]
pub struct ChildSpec {
    /// Used in messages.
    pub name: String,
    /// Network namespace to run in (`None`: the caller's namespace).
    pub netns: Option<String>,
    pub program: OsString,
    pub args: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
    /// stdout and stderr are appended here (`None`: discarded).
    pub log: Option<PathBuf>,
    /// Run as root without any capability, as the chart runs the agent
    /// (only when the caller is root and `setpriv` is there).
    pub drop_capabilities: bool,
}

impl ChildSpec {
    pub fn new(name: impl Into<String>, program: impl Into<OsString>) -> Self {
        Self {
            name: name.into(),
            netns: None,
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            log: None,
            drop_capabilities: false,
        }
    }

    /// See [`ChildSpec::drop_capabilities`].
    pub fn without_capabilities(mut self) -> Self {
        self.drop_capabilities = true;
        self
    }

    pub fn netns(mut self, netns: Option<String>) -> Self {
        self.netns = netns;
        self
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn log(mut self, path: impl Into<PathBuf>) -> Self {
        self.log = Some(path.into());
        self
    }

    /// The full command line (with the `ip netns exec` / `setpriv` prefix).
    pub fn command(&self) -> Command {
        let mut argv: Vec<OsString> = Vec::new();
        if let Some(ns) = &self.netns {
            argv.extend(["ip", "netns", "exec"].map(OsString::from));
            argv.push(ns.into());
        }
        if have_setpriv() {
            argv.extend(["setpriv", "--pdeathsig", "KILL"].map(OsString::from));
            // Dropping capabilities needs them in the first place.
            if self.drop_capabilities && nix::unistd::geteuid().is_root() {
                argv.extend(["--bounding-set=-all", "--inh-caps=-all"].map(OsString::from));
            }
            argv.push("--".into());
        }
        argv.push(self.program.clone());
        argv.extend(self.args.iter().cloned());
        let mut command = Command::new(&argv[0]);
        command.args(&argv[1..]);
        for (k, v) in &self.env {
            command.env(k, v);
        }
        command
    }
}

fn have_setpriv() -> bool {
    static HAVE: OnceLock<bool> = OnceLock::new();
    *HAVE.get_or_init(|| cmd::on_path("setpriv"))
}

/// A running child; killed (whole process group) and reaped on drop.
#[derive(Debug)]
pub struct ManagedChild {
    name: String,
    pid: u32,
    child: Option<Child>,
    log: Option<PathBuf>,
}

impl ManagedChild {
    pub fn spawn(spec: &ChildSpec) -> Result<Self> {
        let mut command = spec.command();
        command.stdin(Stdio::null()).process_group(0);
        match &spec.log {
            Some(path) => {
                let open = || {
                    OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .map_err(|e| Error::io("open log file", path, e))
                };
                command.stdout(open()?).stderr(open()?);
            }
            None => {
                command.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        let child = command.spawn().map_err(|e| Error::Command {
            command: format!("{:?}", command),
            detail: e.to_string(),
        })?;
        Ok(Self {
            name: spec.name.clone(),
            pid: child.id(),
            child: Some(child),
            log: spec.log.clone(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn log_path(&self) -> Option<&Path> {
        self.log.as_deref()
    }

    /// The last `max_bytes` of the child's log, for error messages.
    pub fn log_tail(&self, max_bytes: usize) -> String {
        let Some(path) = &self.log else {
            return String::new();
        };
        let data = std::fs::read(path).unwrap_or_default();
        let start = data.len().saturating_sub(max_bytes);
        String::from_utf8_lossy(&data[start..]).into_owned()
    }

    /// Whether the child still runs (reaps it if it exited).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(Ok(Some(_))) | Some(Err(_)) | None => false,
        }
    }

    /// Sends `signal` to the child's process group.
    pub fn signal(&self, signal: Signal) {
        if self.child.is_some() {
            // ESRCH only means it is already gone.
            let _ = killpg(Pid::from_raw(self.pid as i32), signal);
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; reaps the child.
    pub fn stop(&mut self, grace: Duration) {
        if !self.is_running() {
            self.reap();
            return;
        }
        self.signal(Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !self.is_running() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
    }

    /// SIGKILL to the process group; reaps the child.
    pub fn kill(&mut self) {
        self.signal(Signal::SIGKILL);
        self.reap();
    }

    fn reap(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SIGKILL cannot be ignored; the bound only guards against a child
        // stuck in uninterruptible sleep.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if Instant::now() >= deadline => {
                    tracing::warn!(name = %self.name, pid = self.pid, "child did not exit after SIGKILL");
                    return;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }
}

impl Drop for ManagedChild {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gone(pid: u32) -> bool {
        !crate::naming::pid_alive(pid)
    }

    fn wait_for_exit(child: &mut ManagedChild) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while child.is_running() {
            assert!(Instant::now() < deadline, "{} still runs", child.pid());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn drop_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("grandchild");
        let spec = ChildSpec::new("sh", "sh")
            .arg("-c")
            .arg(format!("sleep 30 & echo $! > {}; wait", pidfile.display()))
            .log(dir.path().join("log"));
        let mut child = ManagedChild::spawn(&spec).unwrap();
        let pid = child.pid();
        let deadline = Instant::now() + Duration::from_secs(5);
        let grandchild: u32 = loop {
            if let Some(p) = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                break p;
            }
            assert!(Instant::now() < deadline, "grandchild did not start");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(child.is_running());
        drop(child);
        assert!(gone(pid), "the child was reaped");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !gone(grandchild) {
            assert!(
                Instant::now() < deadline,
                "grandchild {grandchild} survived"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_child_without_capabilities_has_none() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let mut child = ManagedChild::spawn(
            &ChildSpec::new("caps", "sh")
                .arg("-c")
                .arg("grep -E '^Cap(Eff|Prm)' /proc/self/status")
                .log(&log)
                .without_capabilities(),
        )
        .unwrap();
        wait_for_exit(&mut child);
        let tail = child.log_tail(200);
        assert!(
            tail.contains("CapPrm:\t0000000000000000")
                && tail.contains("CapEff:\t0000000000000000"),
            "{tail}"
        );
    }

    #[test]
    fn output_goes_to_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let mut child = ManagedChild::spawn(
            &ChildSpec::new("echo", "sh")
                .arg("-c")
                .arg("echo hello; echo oops >&2")
                .log(&log),
        )
        .unwrap();
        wait_for_exit(&mut child);
        let tail = child.log_tail(100);
        assert!(tail.contains("hello") && tail.contains("oops"), "{tail}");
    }
}
