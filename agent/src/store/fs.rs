//! File system steps the store repeats: an atomic, durable write; a
//! directory fsync; the removal of a tree that may be read-only.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use super::{StoreError, io_err};

pub(super) fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

pub(super) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = path.with_extension("tmp");
    // Owner only: what is written here may hold credentials.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    if let Some(parent) = path.parent() {
        fsync_dir(parent)?;
    }
    Ok(())
}

/// Removes a tree that may contain read-only directories, never following
/// symlinks.
pub(super) fn remove_tree(path: &Path) -> Result<(), StoreError> {
    fn make_writable(p: &Path) {
        let Ok(meta) = std::fs::symlink_metadata(p) else {
            return;
        };
        if !meta.is_dir() {
            return;
        }
        let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755));
        if let Ok(entries) = std::fs::read_dir(p) {
            for e in entries.flatten() {
                make_writable(&e.path());
            }
        }
    }
    // A transfer being stopped may still finish a write it began, making a
    // file in a directory just emptied: take the tree again (a few times,
    // briefly). Once a directory is gone, such writes fail: they hold it
    // open by descriptor, not by path.
    const ATTEMPTS: u32 = 20;
    for attempt in 1.. {
        make_writable(path);
        match std::fs::remove_dir_all(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty && attempt < ATTEMPTS => {
                std::thread::sleep(std::time::Duration::from_millis(25));
            }
            Err(e) => return Err(io_err(path)(e)),
        }
    }
    Ok(())
}
