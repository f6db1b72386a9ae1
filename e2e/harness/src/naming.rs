//! Names and addresses of one test cluster, and the slot that keeps them
//! unique.
//!
//! Tests start clusters from parallel threads and sometimes from several
//! processes (a test binary next to a running demo). Every name a cluster
//! creates in shared kernel namespaces carries the owner's pid and a
//! per-process cluster counter, so that
//! - two clusters never collide, and
//! - a later run can tell leftovers of a dead process from live clusters
//!   (see [`parse_owner_pid`]) and sweep them.
//!
//! Interface names are limited to 15 bytes (IFNAMSIZ - 1). The layout is
//! `ss` + kind (1) + pid in base 36 (5) + cluster counter in base 36 (2)
//! [+ node index in base 36 (2)] = at most 12 bytes.
//!
//! The /24 each cluster uses (10.213.S.0/24 with namespaces, 127.213.S.0/24
//! on the loopback fallback) is claimed through a slot file created with
//! `O_EXCL` in a shared directory, so that concurrent processes never pick
//! the same S; slots of dead owners are reclaimed.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::error::{Error, Result};

/// Prefix of every network namespace a cluster creates: `ss-<pid>-<counter>-...`.
pub const NETNS_PREFIX: &str = "ss-";
/// Prefix of every interface a cluster creates (`ssb...` bridge, `ssn...`
/// node veth, `sso...` origin veth).
pub const LINK_PREFIX: &str = "ss";

const PID_DIGITS: usize = 5;
const COUNTER_DIGITS: usize = 2;
const INDEX_DIGITS: usize = 2;
/// Largest value representable in the counter / index fields.
const MAX_2_DIGITS: u32 = 36 * 36;

/// First host number used for nodes in a cluster's /24 (.1 is the gateway /
/// API server, .2 the origin).
pub const FIRST_NODE_HOST: u8 = 10;
/// How many nodes fit into one /24 with that plan.
pub const MAX_NODES: usize = 254 - FIRST_NODE_HOST as usize;

static CLUSTER_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Takes the next per-process cluster counter value.
pub fn next_cluster_counter() -> u32 {
    CLUSTER_COUNTER.fetch_add(1, Ordering::Relaxed) % MAX_2_DIGITS
}

fn base36(mut n: u64, width: usize) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = vec![b'0'; width];
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(n % 36) as usize];
        n /= 36;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_base36(s: &str) -> Option<u32> {
    if s.is_empty() {
        return None;
    }
    s.chars().try_fold(0u32, |acc, c| {
        let d = c.to_digit(36)?;
        if c.is_ascii_uppercase() {
            return None;
        }
        acc.checked_mul(36)?.checked_add(d)
    })
}

/// The kernel-visible names of one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNames {
    pub pid: u32,
    pub counter: u32,
}

impl ClusterNames {
    pub fn new(pid: u32, counter: u32) -> Self {
        Self {
            pid,
            counter: counter % MAX_2_DIGITS,
        }
    }

    fn tag(&self) -> String {
        format!(
            "{}{}",
            base36(u64::from(self.pid), PID_DIGITS),
            base36(u64::from(self.counter), COUNTER_DIGITS)
        )
    }

    /// The bridge in the root namespace.
    pub fn bridge(&self) -> String {
        format!("{LINK_PREFIX}b{}", self.tag())
    }

    /// Root-side end of node `index`'s veth pair.
    pub fn node_veth(&self, index: usize) -> String {
        format!(
            "{LINK_PREFIX}n{}{}",
            self.tag(),
            base36(index as u64, INDEX_DIGITS)
        )
    }

    /// Root-side end of the origin's veth pair.
    pub fn origin_veth(&self) -> String {
        format!("{LINK_PREFIX}o{}", self.tag())
    }

    /// Network namespace of node `index`.
    pub fn node_netns(&self, index: usize) -> String {
        format!("{NETNS_PREFIX}{}-{}-n{index}", self.pid, self.counter)
    }

    /// Network namespace of the origin servers.
    pub fn origin_netns(&self) -> String {
        format!("{NETNS_PREFIX}{}-{}-origin", self.pid, self.counter)
    }
}

/// The pid that owns a namespace or interface name created by this module,
/// or `None` when the name is not one of ours.
pub fn parse_owner_pid(name: &str) -> Option<u32> {
    if let Some(rest) = name.strip_prefix(NETNS_PREFIX) {
        let pid = rest.split('-').next()?;
        if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        // Expect `<pid>-<counter>-<n<i>|origin>`.
        let mut parts = rest.split('-');
        let _ = parts.next();
        let counter = parts.next()?;
        let what = parts.next()?;
        if parts.next().is_some()
            || counter.is_empty()
            || !counter.bytes().all(|b| b.is_ascii_digit())
            || !(what == "origin" || what.starts_with('n'))
        {
            return None;
        }
        return pid.parse().ok();
    }
    let rest = name.strip_prefix(LINK_PREFIX)?;
    let mut chars = rest.chars();
    let kind = chars.next()?;
    let tail: &str = chars.as_str();
    let expected = match kind {
        'b' | 'o' => PID_DIGITS + COUNTER_DIGITS,
        'n' => PID_DIGITS + COUNTER_DIGITS + INDEX_DIGITS,
        _ => return None,
    };
    if tail.len() != expected {
        return None;
    }
    parse_base36(&tail[..PID_DIGITS])
}

/// Where a cluster's addresses live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressMode {
    /// 10.213.S.0/24 on a bridge, one network namespace per node.
    Namespaces,
    /// 127.213.S.0/24 on the loopback interface, no namespaces, no shaping.
    Loopback,
}

/// The addresses of one cluster: the gateway (bridge address; the API
/// stand-in listens here), the origin, and the nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressPlan {
    pub mode: AddressMode,
    /// The third octet, S.
    pub subnet: u8,
}

impl AddressPlan {
    fn octets(&self) -> (u8, u8) {
        match self.mode {
            AddressMode::Namespaces => (10, 213),
            AddressMode::Loopback => (127, 213),
        }
    }

    fn host(&self, host: u8) -> Ipv4Addr {
        let (a, b) = self.octets();
        Ipv4Addr::new(a, b, self.subnet, host)
    }

    /// The root namespace's address on the bridge (where the API stand-in
    /// listens and from where tests reach the nodes).
    pub fn gateway(&self) -> Ipv4Addr {
        self.host(1)
    }

    /// The origin servers' address.
    pub fn origin(&self) -> Ipv4Addr {
        self.host(2)
    }

    /// Node `index`'s address; `None` past [`MAX_NODES`].
    pub fn node(&self, index: usize) -> Option<Ipv4Addr> {
        if index >= MAX_NODES {
            return None;
        }
        Some(self.host(FIRST_NODE_HOST + index as u8))
    }

    /// Prefix length of the cluster network.
    pub fn prefix_len(&self) -> u8 {
        24
    }
}

/// First subnet to try for a (pid, counter): spreads clusters of different
/// processes over the /16 so that they rarely even contend for a slot.
pub fn preferred_subnet(pid: u32, counter: u32) -> u8 {
    let h = (u64::from(pid).wrapping_mul(2_654_435_761) + u64::from(counter) * 7) % 254;
    (h + 1) as u8
}

/// Default directory for slot files.
pub fn default_slot_dir() -> PathBuf {
    std::env::temp_dir().join("swarmseed-e2e-slots")
}

/// Prefix of temporary work directories: `swarmseed-e2e-<pid>-<counter>-*`.
pub const WORK_DIR_PREFIX: &str = "swarmseed-e2e-";

/// A work directory holding this file was asked to be kept: never swept.
pub const KEEP_MARKER: &str = ".keep";

/// The owner pid of a temporary work directory name, if it is one of ours.
pub fn work_dir_owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(WORK_DIR_PREFIX)?;
    let (pid, rest) = rest.split_once('-')?;
    let (counter, _) = rest.split_once('-')?;
    if counter.is_empty() || !counter.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// Removes temporary work directories in `tmp` and slot files in
/// `slot_dir` whose owners no longer run (a SIGKILLed test cannot clean up
/// after itself). Returns what was removed.
pub fn sweep_stale_files(tmp: &Path, slot_dir: &Path, alive: impl Fn(u32) -> bool) -> Vec<PathBuf> {
    let me = std::process::id();
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(tmp).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = work_dir_owner(&name)
            && pid != me
            && !alive(pid)
            && !entry.path().join(KEEP_MARKER).exists()
        {
            // Node disks a killed benchmark left mounted.
            for m in crate::disk::mounts_under(&entry.path()) {
                crate::disk::unmount(&m);
            }
            if std::fs::remove_dir_all(entry.path()).is_ok() {
                removed.push(entry.path());
            }
        }
    }
    for entry in std::fs::read_dir(slot_dir).into_iter().flatten().flatten() {
        let owner = std::fs::read_to_string(entry.path())
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        if let Some(pid) = owner
            && pid != me
            && !alive(pid)
            && std::fs::remove_file(entry.path()).is_ok()
        {
            removed.push(entry.path());
        }
    }
    removed
}

/// A claimed subnet; the slot file is removed on drop.
#[derive(Debug)]
pub struct SubnetSlot {
    pub subnet: u8,
    path: PathBuf,
}

impl SubnetSlot {
    /// Claims a free subnet, starting at `preferred` and probing upwards.
    /// `alive(pid)` decides whether a slot's owner still runs (slots of dead
    /// owners are taken over).
    pub fn claim(
        dir: &Path,
        preferred: u8,
        owner: u32,
        alive: impl Fn(u32) -> bool,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create slot dir", dir, e))?;
        // Shared by every user's clusters (like /tmp): root's and an
        // unprivileged user's must not pick the same subnet either.
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o1777));
        }
        let start = preferred.clamp(1, 254);
        for step in 0..254u16 {
            let subnet = ((u16::from(start) - 1 + step) % 254 + 1) as u8;
            let path = dir.join(format!("slot-{subnet}"));
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    f.write_all(owner.to_string().as_bytes())
                        .map_err(|e| Error::io("write slot file", &path, e))?;
                    return Ok(Self { subnet, path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let holder = std::fs::read_to_string(&path)
                        .ok()
                        .and_then(|s| s.trim().parse::<u32>().ok());
                    match holder {
                        // A concurrent claimer may not have written its pid
                        // yet; leave such a slot alone.
                        None => continue,
                        Some(pid) if pid != owner && !alive(pid) => {
                            // Stale: remove and retry this subnet once.
                            let _ = std::fs::remove_file(&path);
                            if let Ok(mut f) = std::fs::OpenOptions::new()
                                .write(true)
                                .create_new(true)
                                .open(&path)
                            {
                                f.write_all(owner.to_string().as_bytes())
                                    .map_err(|e| Error::io("write slot file", &path, e))?;
                                return Ok(Self { subnet, path });
                            }
                        }
                        Some(_) => {}
                    }
                }
                Err(e) => return Err(Error::io("create slot file", &path, e)),
            }
        }
        Err(Error::NoFreeSlot)
    }
}

impl Drop for SubnetSlot {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether a process with this pid runs (a zombie does not: it is dead but
/// not yet reaped, which happens to orphans in containers whose init does
/// not reap).
pub fn pid_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat"))
    else {
        return false;
    };
    // The state follows the parenthesised command name, which may itself
    // contain spaces or parentheses.
    match stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
    {
        Some(state) => state != "Z" && state != "X",
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_fit_ifnamsiz_and_carry_the_owner() {
        for (pid, counter) in [(1, 0), (4_194_304, 1295), (123_456, 17)] {
            let n = ClusterNames::new(pid, counter);
            let links = [
                n.bridge(),
                n.node_veth(0),
                n.node_veth(1295),
                n.origin_veth(),
            ];
            for link in &links {
                assert!(link.len() <= 15, "{link} is too long");
                assert_eq!(parse_owner_pid(link), Some(pid), "{link}");
            }
            assert_eq!(parse_owner_pid(&n.node_netns(3)), Some(pid));
            assert_eq!(parse_owner_pid(&n.origin_netns()), Some(pid));
        }
    }

    #[test]
    fn names_of_different_clusters_differ() {
        let a = ClusterNames::new(100, 1);
        let b = ClusterNames::new(100, 2);
        let c = ClusterNames::new(101, 1);
        assert_ne!(a.bridge(), b.bridge());
        assert_ne!(a.bridge(), c.bridge());
        assert_ne!(a.node_veth(0), b.node_veth(0));
        assert_ne!(a.node_netns(0), c.node_netns(0));
        assert_ne!(a.node_veth(0), a.node_veth(1));
    }

    #[test]
    fn foreign_names_are_not_ours() {
        for name in [
            "eth0",
            "lo",
            "ssh",
            "ssb",
            "ssbabc",
            "ss-x-1-n0",
            "ss-12-1",
            "ssx0000000",
            "ss-12-1-n0-extra",
        ] {
            assert_eq!(parse_owner_pid(name), None, "{name}");
        }
    }

    #[test]
    fn address_plans() {
        let ns = AddressPlan {
            mode: AddressMode::Namespaces,
            subnet: 42,
        };
        assert_eq!(ns.gateway(), Ipv4Addr::new(10, 213, 42, 1));
        assert_eq!(ns.origin(), Ipv4Addr::new(10, 213, 42, 2));
        assert_eq!(ns.node(0), Some(Ipv4Addr::new(10, 213, 42, 10)));
        assert_eq!(
            ns.node(MAX_NODES - 1),
            Some(Ipv4Addr::new(10, 213, 42, 253))
        );
        assert_eq!(ns.node(MAX_NODES), None);
        let lo = AddressPlan {
            mode: AddressMode::Loopback,
            subnet: 7,
        };
        assert_eq!(lo.node(3), Some(Ipv4Addr::new(127, 213, 7, 13)));
        assert!(lo.gateway().is_loopback() && lo.origin().is_loopback());
    }

    #[test]
    fn preferred_subnet_is_a_valid_octet() {
        for pid in [1, 2, 999, 4_194_304] {
            for counter in 0..20 {
                let s = preferred_subnet(pid, counter);
                assert!((1..=254).contains(&s));
            }
        }
    }

    #[test]
    fn stale_work_dirs_and_slots_are_swept() {
        let tmp = tempfile::tempdir().unwrap();
        let slots = tmp.path().join("slots");
        std::fs::create_dir(&slots).unwrap();
        for d in [
            "swarmseed-e2e-100-0-abc",
            "swarmseed-e2e-100-1-kept",
            "swarmseed-e2e-200-3-xyz",
            "swarmseed-e2e-x",
            "other-100-0-a",
        ] {
            std::fs::create_dir(tmp.path().join(d)).unwrap();
        }
        let kept = tmp
            .path()
            .join("swarmseed-e2e-100-1-kept")
            .join(KEEP_MARKER);
        std::fs::write(kept, "").unwrap();
        std::fs::write(slots.join("slot-1"), "100").unwrap();
        std::fs::write(slots.join("slot-2"), "200").unwrap();
        let alive = |pid: u32| pid == 200;
        let mut removed = sweep_stale_files(tmp.path(), &slots, alive);
        removed.sort();
        assert_eq!(
            removed,
            vec![
                tmp.path().join("slots/slot-1"),
                tmp.path().join("swarmseed-e2e-100-0-abc")
            ]
        );
        assert!(tmp.path().join("swarmseed-e2e-200-3-xyz").exists());
        assert!(tmp.path().join("swarmseed-e2e-100-1-kept").exists());
        assert!(tmp.path().join("swarmseed-e2e-x").exists());
        assert!(tmp.path().join("other-100-0-a").exists());
    }

    #[test]
    fn slots_are_exclusive_and_stale_ones_are_reclaimed() {
        let dir = tempfile::tempdir().unwrap();
        let a = SubnetSlot::claim(dir.path(), 5, 1000, |_| true).unwrap();
        let b = SubnetSlot::claim(dir.path(), 5, 1001, |_| true).unwrap();
        assert_eq!(a.subnet, 5);
        assert_eq!(b.subnet, 6, "a live owner's slot is skipped");
        // The owner of slot 6 dies: its slot is taken over.
        std::mem::forget(b);
        let c = SubnetSlot::claim(dir.path(), 6, 1002, |pid| pid != 1001).unwrap();
        assert_eq!(c.subnet, 6);
        drop(a);
        let d = SubnetSlot::claim(dir.path(), 5, 1003, |_| true).unwrap();
        assert_eq!(d.subnet, 5, "dropping a slot frees it");
        // Wraps around past 254.
        let e = SubnetSlot::claim(dir.path(), 254, 1004, |_| true).unwrap();
        let f = SubnetSlot::claim(dir.path(), 254, 1005, |_| true).unwrap();
        assert_eq!((e.subnet, f.subnet), (254, 1));
    }
}
