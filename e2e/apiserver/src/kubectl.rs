//! `kubectl` pointed at a stand-in, for tests that drive it the way a user
//! does.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use crate::ApiServer;

/// How long [`Kubectl::run`] lets one kubectl command take.
const RUN_TIMEOUT: Duration = Duration::from_secs(40);

/// kubectl for one stand-in: its kubeconfig and a cache directory of its
/// own (so that tests never share discovery caches).
#[derive(Debug, Clone)]
pub struct Kubectl {
    pub kubeconfig: PathBuf,
    pub cache: PathBuf,
}

/// How a kubectl command ended.
#[derive(Debug, Clone)]
pub struct KubectlOutput {
    /// It exited 0.
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl ApiServer {
    /// kubectl for this server, with its kubeconfig and cache in `dir`.
    pub fn kubectl(&self, dir: &Path) -> io::Result<Kubectl> {
        let kubectl = Kubectl {
            kubeconfig: dir.join("kubeconfig"),
            cache: dir.join("cache"),
        };
        self.write_kubeconfig(&kubectl.kubeconfig)?;
        Ok(kubectl)
    }
}

impl Kubectl {
    /// Whether a `kubectl` client is on PATH (tests that need one skip
    /// without it).
    pub fn installed() -> bool {
        std::process::Command::new("kubectl")
            .args(["version", "--client"])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// `kubectl args` against the server, with a 20 s request timeout and
    /// stdin closed; killed when dropped.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("kubectl");
        command
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(&self.cache)
            .arg("--request-timeout=20s")
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }

    /// Runs `kubectl args` to its end, within 40 s (else `TimedOut`).
    pub async fn run(&self, args: &[&str]) -> io::Result<KubectlOutput> {
        let out = tokio::time::timeout(RUN_TIMEOUT, self.command(args).output())
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("kubectl {args:?} hung for {RUN_TIMEOUT:?}"),
                )
            })??;
        Ok(KubectlOutput {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}
