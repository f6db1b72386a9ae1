//! The baselines of the peer bench, measured in the same run: raw TCP on
//! loopback, the dataset's bytes only received, and the bare receiver
//! (verify and store without the agent).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use anyhow::bail;

/// One TCP stream over loopback, `bytes` long: receiver-side rate.
pub(super) fn raw_tcp(bytes: u64) -> anyhow::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let sender = std::thread::spawn(move || -> std::io::Result<()> {
        let mut s = TcpStream::connect(addr)?;
        let buf = vec![0x5au8; 1 << 20];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            s.write_all(&buf[..n])?;
            left -= n as u64;
        }
        Ok(())
    });
    let (mut r, _) = listener.accept()?;
    let rate = drain(&mut r, bytes)?;
    join(sender)?;
    Ok(rate)
}

/// Reads `bytes` from `r` into one 1 MiB buffer, dropping them: bytes per
/// second.
fn drain(r: &mut TcpStream, bytes: u64) -> anyhow::Result<f64> {
    let mut buf = vec![0u8; 1 << 20];
    let started = Instant::now();
    let mut got = 0u64;
    while got < bytes {
        let n = r.read(&mut buf)?;
        if n == 0 {
            bail!("stream ended after {got} of {bytes} bytes");
        }
        got += n as u64;
    }
    Ok(bytes as f64 / started.elapsed().as_secs_f64())
}

/// `path` (in the page cache) sent with `sendfile` over one loopback
/// stream, as a seeding agent sends. Returns the sender thread and the
/// accepted receiving end.
fn sendfile_stream(
    path: &Path,
) -> anyhow::Result<(std::thread::JoinHandle<std::io::Result<()>>, TcpStream, u64)> {
    let file = std::fs::File::open(path)?;
    let bytes = file.metadata()?.len();
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let sender = std::thread::spawn(move || -> std::io::Result<()> {
        let s = TcpStream::connect(addr)?;
        let mut offset: nix::libc::off_t = 0;
        while (offset as u64) < bytes {
            let count = (bytes - offset as u64).min(1 << 20) as usize;
            if nix::sys::sendfile::sendfile(&s, &file, Some(&mut offset), count)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(())
    });
    let (r, _) = listener.accept()?;
    Ok((sender, r, bytes))
}

fn join(sender: std::thread::JoinHandle<std::io::Result<()>>) -> anyhow::Result<()> {
    sender
        .join()
        .map_err(|_| anyhow::anyhow!("sender panicked"))??;
    Ok(())
}

/// The dataset's own bytes over one loopback stream, as a seeding agent
/// sends them (`sendfile` from the page cache), read into one 1 MiB buffer
/// and dropped: no hash, no store. Receiver-side bytes per second.
pub(super) fn receive_only(path: &Path) -> anyhow::Result<f64> {
    let (sender, mut r, bytes) = sendfile_stream(path)?;
    let rate = drain(&mut r, bytes)?;
    join(sender)?;
    Ok(rate)
}

/// Threads that hash and store chunks in the bare receiver: one per core
/// of the machines the bench runs on.
pub(super) const BARE_WORKERS: usize = 2;

/// The least any receiver that verifies and stores must do, on this
/// machine, stored as the agent stores: `path` sent as by
/// [`sendfile_stream`]; one thread reads each chunk into a block-aligned
/// buffer and hands it to [`BARE_WORKERS`] threads that hash it with
/// blake3 and write it into the new file `into` with `O_DIRECT` (through
/// the page cache where the filesystem refuses that), no fsync. No
/// protocol, no async runtime, no bookkeeping. Receiver-side bytes per
/// second; `into` is removed after.
pub(super) fn bare_receiver(path: &Path, chunk_size: u64, into: &Path) -> anyhow::Result<f64> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::sync::mpsc;
    use swarmseed_agent::chunkmem::{BLOCK, ChunkBuf};

    let open = |flags| {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(flags)
            .open(into)
    };
    let out = std::sync::Arc::new(open(nix::libc::O_DIRECT).or_else(|_| open(0))?);
    // The end of a file that is not whole blocks long: through the page
    // cache, as the agent writes it.
    let tail = std::sync::Arc::new(std::fs::OpenOptions::new().write(true).open(into)?);
    let (sender, mut r, bytes) = sendfile_stream(path)?;
    let chunk = usize::try_from(chunk_size)?;
    // Two buffers per worker: one being hashed and stored, one waiting.
    let (give, free) = mpsc::channel::<ChunkBuf>();
    for _ in 0..2 * BARE_WORKERS {
        give.send(ChunkBuf::with_capacity(chunk))?;
    }
    let (queues, workers): (Vec<_>, Vec<_>) = (0..BARE_WORKERS)
        .map(|_| {
            let (queue, work) = mpsc::sync_channel::<(u64, ChunkBuf)>(1);
            let (give, out, tail) = (give.clone(), out.clone(), tail.clone());
            let worker = std::thread::spawn(move || -> std::io::Result<()> {
                for (offset, buf) in work {
                    std::hint::black_box(blake3::hash(&buf));
                    let whole = buf.len() / BLOCK * BLOCK;
                    out.write_all_at(&buf[..whole], offset)?;
                    tail.write_all_at(&buf[whole..], offset + whole as u64)?;
                    let _ = give.send(buf);
                }
                Ok(())
            });
            (queue, worker)
        })
        .unzip();
    drop(give);
    let started = Instant::now();
    let mut got = 0u64;
    for queue in queues.iter().cycle() {
        if got == bytes {
            break;
        }
        let mut buf = free.recv()?;
        let n = (bytes - got).min(chunk_size) as usize;
        buf.set_len(n);
        r.read_exact(&mut buf)?;
        if queue.send((got, buf)).is_err() {
            bail!("a worker stopped at byte {got}");
        }
        got += n as u64;
    }
    drop(queues);
    for worker in workers {
        worker
            .join()
            .map_err(|_| anyhow::anyhow!("worker panicked"))??;
    }
    let secs = started.elapsed().as_secs_f64();
    join(sender)?;
    drop(out);
    std::fs::remove_file(into)?;
    Ok(bytes as f64 / secs)
}

/// Writes `path` back and drops its pages from the page cache.
pub(super) fn evict(path: &Path) -> anyhow::Result<()> {
    let f = std::fs::File::open(path)?;
    f.sync_all()?;
    nix::fcntl::posix_fadvise(
        &f,
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    )?;
    Ok(())
}

/// Fills `path` with `size` pseudo-random bytes.
pub fn write_random(path: &Path, size: u64, seed: u64) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut xof = blake3::Hasher::new()
        .update(&seed.to_le_bytes())
        .finalize_xof();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        xof.fill(&mut buf[..n]);
        out.write_all(&buf[..n])?;
        left -= n as u64;
    }
    out.flush()
}
