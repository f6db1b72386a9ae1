//! A filesystem of a node's own: a fresh ext4 in a sparse image file,
//! loop-mounted with direct I/O (needs root, `mkfs.ext4`, `losetup`).
//!
//! On a real cluster every node has its own filesystem. Nodes that share
//! the work directory's filesystem also share its history and its
//! allocator: on an ext4 without a journal, as on some test machines, the
//! inode allocator skips inodes freed in the last one to six minutes, and
//! after a benchmark run has removed the previous run's 450,000 small files
//! a file creation costs 100–400 µs of CPU instead of about 25. A fresh
//! filesystem per node and run keeps the benchmark's figures about the
//! agent rather than about the last run. The bytes still go to the same
//! physical disk (direct I/O, so the page cache holds them once).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cmd;
use crate::error::{Error, Result};

/// How long `mkfs.ext4`, `losetup` or `mount` may take.
const TIMEOUT: Duration = Duration::from_secs(60);

/// The programs a [`NodeDisk`] needs.
pub const PROGRAMS: [&str; 4] = ["mkfs.ext4", "losetup", "mount", "umount"];

/// A mounted filesystem image; unmounted and deleted on drop.
#[derive(Debug)]
pub struct NodeDisk {
    image: PathBuf,
    mountpoint: PathBuf,
}

impl NodeDisk {
    /// Creates a sparse image of `bytes` at `image`, makes an ext4
    /// filesystem in it (inode tables and journal written now, so no
    /// background initialisation competes with the benchmark) and mounts
    /// it on `mountpoint`, which is created.
    pub fn create(image: &Path, mountpoint: &Path, bytes: u64) -> Result<Self> {
        for p in PROGRAMS {
            if !cmd::on_path(p) {
                return Err(Error::Invalid(format!(
                    "a disk per node needs {p} on PATH (Debian: e2fsprogs, mount)"
                )));
            }
        }
        let file = std::fs::File::create(image).map_err(|e| Error::io("create", image, e))?;
        file.set_len(bytes)
            .map_err(|e| Error::io("size disk image", image, e))?;
        drop(file);
        std::fs::create_dir_all(mountpoint).map_err(|e| Error::io("create", mountpoint, e))?;
        let img = image.to_string_lossy();
        let mnt = mountpoint.to_string_lossy();
        let cleanup_image = || {
            let _ = std::fs::remove_file(image);
        };
        if let Err(e) = cmd::run(
            "mkfs.ext4",
            &[
                "-q",
                "-F",
                "-E",
                "lazy_itable_init=0,lazy_journal_init=0",
                &img,
            ],
            TIMEOUT,
        ) {
            cleanup_image();
            return Err(e);
        }
        let device = match cmd::run(
            "losetup",
            &["--find", "--show", "--direct-io=on", &img],
            TIMEOUT,
        ) {
            Ok(out) => out.trim().to_owned(),
            Err(e) => {
                cleanup_image();
                return Err(e);
            }
        };
        let mounted = cmd::run("mount", &[&device, &mnt], TIMEOUT);
        // Detached now, the device goes away by itself at unmount (or at
        // once if the mount failed).
        let _ = cmd::run("losetup", &["-d", &device], TIMEOUT);
        if let Err(e) = mounted {
            cleanup_image();
            return Err(e);
        }
        Ok(Self {
            image: image.to_path_buf(),
            mountpoint: mountpoint.to_path_buf(),
        })
    }

    /// Where the filesystem is mounted.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }
}

impl Drop for NodeDisk {
    fn drop(&mut self) {
        unmount(&self.mountpoint);
        let _ = std::fs::remove_file(&self.image);
    }
}

/// Unmounts `mountpoint` (lazily if it is busy); quiet if nothing is
/// mounted there.
pub fn unmount(mountpoint: &Path) {
    let mnt = mountpoint.to_string_lossy();
    if cmd::run("umount", &[&mnt], TIMEOUT).is_err() {
        let _ = cmd::run("umount", &["-l", &mnt], TIMEOUT);
    }
}

/// Mount points under `dir` (from `/proc/self/mountinfo`), deepest first:
/// what a killed run left mounted in its work directory.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mount_path(p)))
        .filter(|p| p.starts_with(dir) && p != dir)
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mount_path(p: &str) -> String {
    let mut out = Vec::with_capacity(p.len());
    let b = p.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && let Some(Ok(v)) = p.get(i + 1..i + 4).map(|o| u8::from_str_radix(o, 8))
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape_mount_path(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape_mount_path(r"/x\134y"), r"/x\y");
        assert_eq!(unescape_mount_path("/plain"), "/plain");
    }

    #[test]
    fn a_disk_is_a_filesystem_of_its_own_until_dropped() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        let mnt = dir.path().join("disk");
        let made = NodeDisk::create(&image, &mnt, 64 << 20);
        let can = nix::unistd::geteuid().is_root()
            && Path::new("/dev/loop-control").exists()
            && PROGRAMS.iter().all(|p| cmd::on_path(p));
        if !can {
            // Without root, loop devices or the programs: an error that
            // says what failed, and no image left behind.
            let err = made.unwrap_err();
            assert!(["command", "invalid"].contains(&err.label()), "{err}");
            assert!(!image.exists());
            return;
        }
        let disk = made.unwrap();
        assert_eq!(mounts_under(dir.path()), vec![mnt.clone()]);
        let outer = std::fs::metadata(dir.path()).unwrap().dev();
        assert_ne!(std::fs::metadata(disk.path()).unwrap().dev(), outer);
        std::fs::write(disk.path().join("f"), b"bytes").unwrap();
        drop(disk);
        assert!(mounts_under(dir.path()).is_empty());
        assert!(!image.exists());
        assert!(!mnt.join("f").exists());
    }

    #[test]
    fn nothing_is_mounted_under_a_fresh_directory() {
        let d = tempfile::tempdir().unwrap();
        assert!(mounts_under(d.path()).is_empty());
    }
}
