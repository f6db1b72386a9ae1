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
//!
//! Small ranges (whole small files, mostly) are not hinted one by one:
//! each `sync_file_range` writes its file out as an I/O request of its
//! own, and for 50,000 files of 5 KiB that costs more than writing them.
//! Instead, once another [`SMALL_BATCH`] bytes of small ranges were
//! written, the thread flushes their filesystem at once (`syncfs(2)`,
//! which merges neighbouring files into large requests, and waits, on this
//! thread only).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};

/// Hints waiting for the thread; beyond this they are dropped.
const QUEUE: usize = 1024;

/// Ranges shorter than this are flushed in batches.
const SMALL_RANGE: u64 = 256 << 10;

/// Bytes of small ranges between two flushes of their filesystem.
const SMALL_BATCH: u64 = 32 << 20;

#[derive(Debug)]
enum Hint {
    /// Start writing out this range of the file.
    Range(Arc<File>, u64, u64),
    /// Flush the filesystem that holds the file.
    Filesystem(Arc<File>),
}

/// A handle to the write-behind thread; cheap to clone. The thread ends
/// when the last handle is dropped.
#[derive(Clone, Debug)]
pub struct WriteBehind {
    tx: SyncSender<Hint>,
    /// Bytes of small ranges written so far.
    small: Arc<AtomicU64>,
}

impl WriteBehind {
    pub fn start() -> std::io::Result<Self> {
        let (tx, rx) = sync_channel::<Hint>(QUEUE);
        std::thread::Builder::new()
            .name("write-behind".into())
            .spawn(move || {
                for hint in rx {
                    // Errors surface at the fsync before publication.
                    let _ = match hint {
                        Hint::Range(file, offset, len) => start_writeback(&file, offset, len),
                        Hint::Filesystem(file) => nix::unistd::syncfs(&*file).map_err(Into::into),
                    };
                }
            })?;
        Ok(Self {
            tx,
            small: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Asks for `len` bytes of `file` at `offset` to be written out soon.
    pub fn hint(&self, file: Arc<File>, offset: u64, len: u64) {
        let hint = if len >= SMALL_RANGE {
            Hint::Range(file, offset, len)
        } else {
            let before = self.small.fetch_add(len, Ordering::Relaxed);
            if !completes_batch(before, len) {
                return;
            }
            Hint::Filesystem(file)
        };
        match self.tx.try_send(hint) {
            Ok(()) | Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

/// Whether `len` more bytes of small ranges, after `before`, complete a
/// batch.
fn completes_batch(before: u64, len: u64) -> bool {
    (before + len) / SMALL_BATCH != before / SMALL_BATCH
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

    #[test]
    fn small_ranges_flush_their_filesystem_once_per_batch() {
        let small = 5000;
        let mut written = 0;
        let mut flushes = 0;
        for _ in 0..(3 * SMALL_BATCH / small) {
            flushes += u64::from(completes_batch(written, small));
            written += small;
        }
        assert_eq!(flushes, 2, "{written} bytes");
        let wb = WriteBehind::start().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let f = Arc::new(File::create(dir.path().join("f")).unwrap());
        wb.hint(f.clone(), 0, small);
        wb.hint(f, 0, SMALL_RANGE);
        assert_eq!(wb.small.load(Ordering::Relaxed), small);
    }
}
