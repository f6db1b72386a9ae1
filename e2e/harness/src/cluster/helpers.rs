//! Helper processes of a running cluster: commands at a placement, the
//! HTTP and S3 origins.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use super::{Cluster, Placement, RemoteHttpOrigin};
use crate::error::{Error, Result};
use crate::origin::{S3Origin, S3OriginSpec, fetch_stats};
use crate::process::{ChildSpec, ManagedChild};

impl Cluster {
    fn netns_for(&self, placement: Placement<'_>) -> Result<Option<String>> {
        Ok(match placement {
            Placement::Root => None,
            Placement::Origin => self.origin_netns().map(str::to_string),
            Placement::Node(name) => self.nodes[self.index_of(name)?].netns.clone(),
        })
    }

    /// Starts a helper process at `placement`; it is killed on teardown.
    /// Returns its pid.
    pub fn spawn(&mut self, placement: Placement<'_>, spec: ChildSpec) -> Result<u32> {
        let spec = spec.netns(self.netns_for(placement)?);
        let child = ManagedChild::spawn(&spec)?;
        let pid = child.pid();
        self.extra.push(child);
        Ok(pid)
    }

    /// Kills a helper started with [`Cluster::spawn`].
    pub fn kill_helper(&mut self, pid: u32) {
        self.extra.retain(|c| c.pid() != pid);
    }

    /// A command that runs `program` at `placement` (for short, awaited
    /// commands; wrap the wait in a timeout). Killed if dropped.
    pub fn command(
        &self,
        placement: Placement<'_>,
        program: impl AsRef<std::ffi::OsStr>,
    ) -> Result<tokio::process::Command> {
        let mut cmd = match self.netns_for(placement)? {
            Some(ns) => {
                let mut c = tokio::process::Command::new("ip");
                c.args(["netns", "exec", &ns]).arg(program);
                c
            }
            None => tokio::process::Command::new(program),
        };
        cmd.kill_on_drop(true).stdin(std::process::Stdio::null());
        Ok(cmd)
    }

    /// Runs `e2e origin-http` serving `root` on the origin address and
    /// `port`, in the origin namespace; waits until it answers.
    pub async fn start_http_origin(&mut self, root: &Path, port: u16) -> Result<RemoteHttpOrigin> {
        let bin = self.e2e_binary()?;
        let listen = SocketAddr::new(self.origin_address().into(), port);
        let spec = ChildSpec::new("origin-http", bin)
            .netns(self.origin_netns().map(str::to_string))
            .arg("origin-http")
            .arg("--root")
            .arg(root)
            .arg("--listen")
            .arg(listen.to_string())
            .log(self.work_dir().join(format!("origin-http-{port}.log")));
        let mut child = ManagedChild::spawn(&spec)?;
        let url = format!("http://{listen}");
        let start = Instant::now();
        loop {
            match fetch_stats(&url).await {
                Ok(_) => return Ok(RemoteHttpOrigin { url, child }),
                Err(e) if start.elapsed() > Duration::from_secs(15) || !child.is_running() => {
                    return Err(Error::NotReady {
                        what: format!("http origin at {url}"),
                        waited: start.elapsed(),
                        last: format!("{e}; log: {}", child.log_tail(2000)),
                    });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Starts moto's S3 server and the counting proxy on the origin address
    /// (port 9000, stats on 9001 inside a namespace) and creates `bucket`.
    pub async fn start_s3_origin(&self, bucket: &str) -> Result<S3Origin> {
        let in_ns = self.origin_netns().map(str::to_string);
        S3Origin::start(S3OriginSpec {
            listen_ip: IpAddr::V4(self.origin_address()),
            port: 9000,
            e2e_binary: if in_ns.is_some() {
                Some(self.e2e_binary()?)
            } else {
                None
            },
            netns: in_ns,
            log_dir: self.work_dir().join("s3-origin"),
            bucket: bucket.to_string(),
            startup_timeout: Duration::from_secs(30),
        })
        .await
    }
}
