//! Write-behind: start writing received data to disk while the transfer
//! goes on, so that the fsync before publication finds little left to do.
//!
//! Without it the kernel starts background writeback only once dirty pages
//! pass `vm.dirty_background_ratio` (10 % of memory by default: gigabytes),
//! and the fsync at the end of a transfer then waits for all of them. Here
//! every written range is handed to one thread that asks the kernel to
//! start writing it out (`sync_file_range(SYNC_FILE_RANGE_WRITE)`, which
//! does not wait for the disk, though it can block while the device queue
//! is full). Receiving never waits for it: when the queue of hints is
//! full, hints are dropped, and the fsync at publication still makes
//! everything durable. A hint is only a head start, never a guarantee.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};

/// Hints waiting for the thread; beyond this they are dropped.
const QUEUE: usize = 1024;

/// A handle to the write-behind thread; cheap to clone. The thread ends
/// when the last handle is dropped.
#[derive(Clone, Debug)]
pub struct WriteBehind {
    tx: SyncSender<(Arc<File>, u64, u64)>,
}

impl WriteBehind {
    pub fn start() -> std::io::Result<Self> {
        let (tx, rx) = sync_channel::<(Arc<File>, u64, u64)>(QUEUE);
        std::thread::Builder::new()
            .name("write-behind".into())
            .spawn(move || {
                for (file, offset, len) in rx {
                    // Errors surface at the fsync before publication.
                    let _ = start_writeback(&file, offset, len);
                }
            })?;
        Ok(Self { tx })
    }

    /// Asks for `len` bytes of `file` at `offset` to be written out soon.
    pub fn hint(&self, file: Arc<File>, offset: u64, len: u64) {
        match self.tx.try_send((file, offset, len)) {
            Ok(()) | Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

/// `sync_file_range(fd, offset, len, SYNC_FILE_RANGE_WRITE)`.
fn start_writeback(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Ok(());
    };
    // SAFETY: a plain system call on a file descriptor that `file` keeps
    // open for the duration of the call; no memory is passed.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn hints_start_writeback_and_never_block_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut f = File::create(&path).unwrap();
        f.write_all(&vec![7u8; 1 << 20]).unwrap();
        let f = Arc::new(f);
        let wb = WriteBehind::start().unwrap();
        // Far more hints than the queue holds: the extra ones are dropped.
        for _ in 0..(4 * QUEUE) {
            wb.hint(f.clone(), 0, 1 << 20);
        }
        start_writeback(&f, 0, 1 << 20).unwrap();
        drop(wb);
        assert_eq!(std::fs::read(&path).unwrap(), vec![7u8; 1 << 20]);
    }
}
