//! The cluster network: one bridge in the root namespace, one network
//! namespace per node and one for the origin, each joined to the bridge by a
//! veth pair, with `tc` token-bucket shaping on both directions of every
//! link.
//!
//! ```text
//!   root ns: bridge ssb<tag> 10.213.S.1/24  (API stand-in, tests)
//!      ├── sso<tag>    ══ origin ns: eth0 10.213.S.2   (HTTP / S3 origins)
//!      ├── ssn<tag>00  ══ node 0 ns: eth0 10.213.S.10  (agent)
//!      └── ssn<tag>01  ══ node 1 ns: eth0 10.213.S.11  (agent)
//! ```
//!
//! Shaping: the namespace-side `eth0` egress is the node's upload, the
//! root-side veth egress is its download; both are `tbf` qdiscs.

use std::net::Ipv4Addr;

use crate::cmd::{self, SHORT};
use crate::error::Result;
use crate::naming::{self, AddressPlan, ClusterNames};

/// The smallest `tbf` bucket: one largest GSO packet with its headers and
/// room to spare (see [`Tbf::for_rate`]).
pub const MIN_BURST: u64 = 96 * 1024;

/// Token bucket parameters for a rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tbf {
    pub rate_mbit: u32,
    /// Bucket size in bytes.
    pub burst_bytes: u32,
    /// How long a packet may wait in the queue before it is dropped.
    pub latency_ms: u32,
}

impl Tbf {
    /// Parameters that keep TCP goodput close to the rate: a bucket of about
    /// 4 ms worth of bytes, and a queue long enough that TCP is not pushed
    /// into repeated loss recovery.
    ///
    /// The bucket holds at least [`MIN_BURST`]: `tbf` cuts a packet larger
    /// than its bucket into MTU-sized frames, and TCP hands the device
    /// packets of up to 64 KiB (TSO/GSO; about 68 KiB with a header per
    /// frame) on these low-latency links. At 100 Mbit/s a 4 ms bucket
    /// (50 kB) had every such packet cut up, so forty times the packets
    /// crossed the emulated link, its bridge and the receiving stack, which
    /// a real link's NIC and GRO spare the node's CPU.
    pub fn for_rate(rate_mbit: u32) -> Self {
        let bytes_per_sec = u64::from(rate_mbit.max(1)) * 1_000_000 / 8;
        let burst = (bytes_per_sec / 250).clamp(MIN_BURST, 4 * 1024 * 1024) as u32;
        Self {
            rate_mbit: rate_mbit.max(1),
            burst_bytes: burst,
            latency_ms: 50,
        }
    }

    /// The `tc qdisc replace` arguments for `dev`.
    pub fn tc_args(&self, dev: &str) -> Vec<String> {
        [
            "qdisc",
            "replace",
            "dev",
            dev,
            "root",
            "tbf",
            "rate",
            &format!("{}mbit", self.rate_mbit),
            "burst",
            &self.burst_bytes.to_string(),
            "latency",
            &format!("{}ms", self.latency_ms),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }
}

fn ip(args: &[&str]) -> Result<String> {
    cmd::run("ip", args, SHORT)
}

fn tc(netns: Option<&str>, tbf: &Tbf, dev: &str) -> Result<String> {
    let mut args: Vec<String> = Vec::new();
    if let Some(ns) = netns {
        args.extend(["-n".to_string(), ns.to_string()]);
    }
    args.extend(tbf.tc_args(dev));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    cmd::run("tc", &refs, SHORT)
}

/// One endpoint (node or origin) attached to the bridge.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub netns: String,
    pub host_veth: String,
    pub address: Ipv4Addr,
}

/// Everything the cluster network consists of; removed on drop.
#[derive(Debug)]
pub struct Network {
    pub bridge: String,
    pub gateway: Ipv4Addr,
    pub nodes: Vec<Endpoint>,
    pub origin: Endpoint,
    /// What exists so far (teardown removes exactly these).
    created_links: Vec<String>,
    created_netns: Vec<String>,
}

impl Network {
    /// Builds the network. On error, whatever was created is removed again.
    pub fn create(
        names: &ClusterNames,
        plan: &AddressPlan,
        node_count: usize,
        node_link: Option<Tbf>,
        origin_link: Option<Tbf>,
    ) -> Result<Self> {
        let mut nodes = Vec::with_capacity(node_count);
        for i in 0..node_count {
            let address = plan.node(i).ok_or_else(|| {
                crate::Error::Invalid(format!("at most {} nodes per cluster", naming::MAX_NODES))
            })?;
            nodes.push(Endpoint {
                netns: names.node_netns(i),
                host_veth: names.node_veth(i),
                address,
            });
        }
        let mut net = Network {
            bridge: names.bridge(),
            gateway: plan.gateway(),
            nodes,
            origin: Endpoint {
                netns: names.origin_netns(),
                host_veth: names.origin_veth(),
                address: plan.origin(),
            },
            created_links: Vec::new(),
            created_netns: Vec::new(),
        };
        // On error `net` is dropped here, which tears down the partial setup.
        net.build(plan, node_link, origin_link)?;
        Ok(net)
    }

    fn build(
        &mut self,
        plan: &AddressPlan,
        node_link: Option<Tbf>,
        origin_link: Option<Tbf>,
    ) -> Result<()> {
        let prefix = plan.prefix_len();
        let bridge = self.bridge.clone();
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        self.created_links.push(bridge.clone());
        ip(&[
            "addr",
            "add",
            &format!("{}/{prefix}", self.gateway),
            "dev",
            &bridge,
        ])?;
        ip(&["link", "set", &bridge, "up"])?;
        let endpoints: Vec<(Endpoint, Option<Tbf>)> =
            std::iter::once((self.origin.clone(), origin_link))
                .chain(self.nodes.iter().cloned().map(|e| (e, node_link)))
                .collect();
        for (ep, shaping) in endpoints {
            self.attach(&ep, prefix, shaping)?;
        }
        Ok(())
    }

    fn attach(&mut self, ep: &Endpoint, prefix: u8, shaping: Option<Tbf>) -> Result<()> {
        let ns = ep.netns.as_str();
        ip(&["netns", "add", ns])?;
        self.created_netns.push(ns.to_string());
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        ip(&[
            "link",
            "add",
            &ep.host_veth,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns,
        ])?;
        self.created_links.push(ep.host_veth.clone());
        ip(&["link", "set", &ep.host_veth, "master", &self.bridge])?;
        ip(&["link", "set", &ep.host_veth, "up"])?;
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{}/{prefix}", ep.address),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        ip(&[
            "-n",
            ns,
            "route",
            "add",
            "default",
            "via",
            &self.gateway.to_string(),
        ])?;
        if let Some(tbf) = shaping {
            // Download: what the bridge sends into the node.
            tc(None, &tbf, &ep.host_veth)?;
            // Upload: what the node sends.
            tc(Some(ns), &tbf, "eth0")?;
        }
        Ok(())
    }

    /// Takes the root-namespace end of an endpoint's link down or up: down,
    /// the endpoint can neither send nor receive (a partition, or an origin
    /// outage); up again, its shaping is still in place (the qdisc belongs
    /// to the device, not to its up state).
    pub fn set_link_up(&self, ep: &Endpoint, up: bool) -> Result<()> {
        let state = if up { "up" } else { "down" };
        ip(&["link", "set", "dev", &ep.host_veth, state]).map(|_| ())
    }

    /// Every namespace name of this network.
    pub fn netns_names(&self) -> Vec<String> {
        self.created_netns.clone()
    }

    /// Every root-namespace interface name of this network.
    pub fn link_names(&self) -> Vec<String> {
        self.created_links.clone()
    }

    /// Removes everything (idempotent). Processes still inside the
    /// namespaces are killed first: a namespace with live processes
    /// outlives `ip netns del`.
    pub fn teardown(&mut self) {
        for ns in &self.created_netns {
            kill_netns_processes(ns);
        }
        // Deleting the root-side veth removes both ends synchronously;
        // namespace deletion alone would free them asynchronously.
        for link in self.created_links.iter().rev() {
            if let Err(e) = ip(&["link", "del", link]) {
                tracing::warn!(link, error = %e, "could not delete link");
            }
        }
        for ns in &self.created_netns {
            if let Err(e) = ip(&["netns", "del", ns]) {
                tracing::warn!(netns = ns, error = %e, "could not delete network namespace");
            }
        }
        self.created_links.clear();
        self.created_netns.clear();
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.teardown();
    }
}

fn kill_netns_processes(ns: &str) {
    let Ok(out) = ip(&["netns", "pids", ns]) else {
        return;
    };
    for pid in out.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Names of all network namespaces (`ip netns list`).
pub fn list_netns() -> Result<Vec<String>> {
    Ok(ip(&["netns", "list"])?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

/// Names of all interfaces in the root namespace (`ip -o link show`).
pub fn list_links() -> Result<Vec<String>> {
    Ok(ip(&["-o", "link", "show"])?
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_string())
        .collect())
}

/// What [`sweep_stale`] removed.
#[derive(Debug, Default, Clone)]
pub struct Sweep {
    pub netns: Vec<String>,
    pub links: Vec<String>,
}

/// Removes namespaces and interfaces left behind by cluster owners that no
/// longer run (a test that was SIGKILLed, a crashed demo). Live owners'
/// clusters are never touched.
pub fn sweep_stale() -> Sweep {
    let me = std::process::id();
    let stale = |name: &str| matches!(naming::parse_owner_pid(name), Some(pid) if pid != me && !naming::pid_alive(pid));
    let mut sweep = Sweep::default();
    for ns in list_netns().unwrap_or_default() {
        if stale(&ns) {
            kill_netns_processes(&ns);
            if ip(&["netns", "del", &ns]).is_ok() {
                sweep.netns.push(ns);
            }
        }
    }
    for link in list_links().unwrap_or_default() {
        if stale(&link) && ip(&["link", "del", &link]).is_ok() {
            sweep.links.push(link);
        }
    }
    if !sweep.netns.is_empty() || !sweep.links.is_empty() {
        tracing::info!(?sweep, "removed leftovers of dead test clusters");
    }
    sweep
}

/// Why network namespaces cannot be used here, or `None` if they can:
/// needs root (CAP_NET_ADMIN + CAP_SYS_ADMIN), `ip` and `tc`.
pub fn unavailable_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not running as root".into());
    }
    for tool in ["ip", "tc"] {
        if !cmd::on_path(tool) {
            return Some(format!("`{tool}` (iproute2) is not installed"));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tbf_parameters_scale_with_the_rate() {
        let t = Tbf::for_rate(400);
        assert_eq!(t.burst_bytes, 200_000);
        assert_eq!(
            t.tc_args("eth0").join(" "),
            "qdisc replace dev eth0 root tbf rate 400mbit burst 200000 latency 50ms"
        );
        assert_eq!(
            Tbf::for_rate(100).burst_bytes,
            96 * 1024,
            "at least a whole GSO packet"
        );
        assert_eq!(Tbf::for_rate(100_000).burst_bytes, 4 * 1024 * 1024);
    }
}
