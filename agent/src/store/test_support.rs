//! Helpers the store's tests share.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use swarmseed_proto::{ChunkLayout, pb};

use super::RevisionFiles;

pub(super) fn entry(path: &str, size: u64, etag: &str) -> pb::FileEntry {
    pb::FileEntry {
        path: path.into(),
        size,
        etag: etag.into(),
        ..Default::default()
    }
}

pub(super) fn layout(files: Vec<pb::FileEntry>) -> Arc<ChunkLayout> {
    Arc::new(ChunkLayout::new(files, 64 * 1024).unwrap())
}

/// Runs `test` on a thread of its own with the file capabilities
/// dropped, as the chart runs the agent: uid 0 without
/// `CAP_DAC_OVERRIDE`, `CAP_DAC_READ_SEARCH` and `CAP_FOWNER`, so file
/// and directory permissions apply to it as to any owner.
pub(super) fn as_the_chart_runs_the_agent(test: impl FnOnce() + Send + 'static) {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Default, Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    const FILE_CAPABILITIES: u32 = (1 << 1) | (1 << 2) | (1 << 3);
    let outcome = std::thread::spawn(move || {
        let mut header = Header {
            version: VERSION_3,
            pid: 0,
        };
        let mut data = [Data::default(); 2];
        // SAFETY: capget(2)/capset(2) with a version-3 header and the
        // two data words that version takes; they change only the
        // capabilities of this thread, which ends with the test.
        #[allow(unsafe_code)]
        unsafe {
            let got = libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr());
            assert_eq!(got, 0, "capget: {}", io::Error::last_os_error());
            data[0].effective &= !FILE_CAPABILITIES;
            data[0].permitted &= !FILE_CAPABILITIES;
            let set = libc::syscall(libc::SYS_capset, &mut header, data.as_ptr());
            assert_eq!(set, 0, "capset: {}", io::Error::last_os_error());
        }
        // The test means something only if permissions now apply.
        let dir = tempfile::tempdir().unwrap();
        let probe = dir.path().join("read-only");
        std::fs::write(&probe, b"x").unwrap();
        std::fs::set_permissions(&probe, std::fs::Permissions::from_mode(0o444)).unwrap();
        let denied = std::fs::OpenOptions::new().write(true).open(&probe);
        assert_eq!(
            denied.err().map(|e| e.kind()),
            Some(io::ErrorKind::PermissionDenied)
        );
        test();
    })
    .join();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

pub(super) fn fill(files: &RevisionFiles, seed: u8) {
    let l = files.layout().clone();
    for i in 0..l.chunk_count() {
        let data = vec![seed.wrapping_add(i as u8); l.chunk_len(i) as usize];
        files.write_chunk(i, &data).unwrap();
    }
}
