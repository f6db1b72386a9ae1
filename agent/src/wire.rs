//! The peer protocol: compact frames over plain TCP.
//!
//! Every frame is `[kind: u8][len: u32 LE][payload: len bytes]`.
//!
//! ```text
//! server → client  SERVER_HELLO  magic[8] nonce[32]
//! client → server  HELLO         magic[8] revision[32] mac[32] ns name node (u16-prefixed)
//! server → client  WELCOME       chunk_count u32            (or ERROR, then close)
//! server → client  HAVE          n × ChunkRecord            (initial set, then each new chunk)
//! client → server  REQUEST       index u32                  (many in flight)
//! client → server  CANCEL        index u32                  (endgame)
//! server → client  PIECE         index u32, then the chunk's bytes (sent with sendfile)
//! server → client  REJECT        index u32                  (not held / cancelled)
//! ```
//!
//! The MAC proves the client holds the dataset's peer token without sending
//! it: `blake3::keyed_hash(token, context ‖ nonce ‖ revision ‖ ns ‖ 0 ‖ name)`.
//!
//! Every length a peer declares is checked against what its frame kind may
//! hold ([`control_payload_limit`]) before a byte of the payload is read or
//! a buffer allocated: a HELLO is at most [`MAX_HELLO`] bytes, so an
//! unauthenticated client can make a server hold a few hundred bytes, not
//! the megabyte a HAVE may fill.

use std::io;
use std::os::fd::AsRawFd;

use swarmseed_proto::RevisionId;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;

use crate::store::ChunkRecord;

pub const MAGIC: [u8; 8] = *b"SWSEED\x00\x01";

pub const SERVER_HELLO: u8 = 1;
pub const WELCOME: u8 = 2;
pub const HAVE: u8 = 3;
pub const PIECE: u8 = 4;
pub const ERROR: u8 = 5;
pub const REJECT: u8 = 6;
pub const HELLO: u8 = 16;
pub const REQUEST: u8 = 17;
pub const CANCEL: u8 = 18;

/// HAVE records per frame.
pub const HAVE_BATCH: usize = 4096;
/// Largest HAVE payload: a full batch of records (528 KiB).
pub const MAX_HAVE: u32 = (HAVE_BATCH * ChunkRecord::LEN) as u32;
/// SERVER_HELLO payload: magic and nonce.
pub const SERVER_HELLO_LEN: u32 = 8 + 32;
/// Longest namespace in a HELLO (a Kubernetes namespace is a DNS label).
pub const MAX_NAMESPACE_LEN: usize = 63;
/// Longest dataset name in a HELLO (a Kubernetes object name is a DNS
/// subdomain).
pub const MAX_NAME_LEN: usize = 253;
/// Longest node name in a HELLO (a DNS subdomain too).
pub const MAX_NODE_NAME_LEN: usize = 253;
/// Shortest HELLO: magic, revision, MAC and three empty strings.
pub const MIN_HELLO: u32 = 8 + 32 + 32 + 3 * 2;
/// Longest HELLO: every string at its longest (647 bytes).
pub const MAX_HELLO: u32 =
    MIN_HELLO + (MAX_NAMESPACE_LEN + MAX_NAME_LEN + MAX_NODE_NAME_LEN) as u32;
/// Longest ERROR payload: a short reason.
pub const MAX_ERROR: u32 = 1024;

const MAC_CONTEXT: &[u8] = b"swarmseed.io peer hello v1";

pub fn hello_mac(
    token: &[u8; 32],
    nonce: &[u8; 32],
    revision: &RevisionId,
    namespace: &str,
    name: &str,
) -> [u8; 32] {
    let mut m = Vec::with_capacity(MAC_CONTEXT.len() + 64 + namespace.len() + name.len() + 1);
    m.extend_from_slice(MAC_CONTEXT);
    m.extend_from_slice(nonce);
    m.extend_from_slice(&revision.0);
    m.extend_from_slice(namespace.as_bytes());
    m.push(0);
    m.extend_from_slice(name.as_bytes());
    *blake3::keyed_hash(token, &m).as_bytes()
}

pub fn header(kind: u8, len: u32) -> [u8; 5] {
    let mut h = [0u8; 5];
    h[0] = kind;
    h[1..].copy_from_slice(&len.to_le_bytes());
    h
}

pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    kind: u8,
    payload: &[u8],
) -> io::Result<()> {
    let len = u32::try_from(payload.len()).map_err(|_| io::Error::other("frame too large"))?;
    let mut buf = Vec::with_capacity(5 + payload.len());
    buf.extend_from_slice(&header(kind, len));
    buf.extend_from_slice(payload);
    w.write_all(&buf).await
}

pub async fn read_header<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<(u8, u32)> {
    let mut h = [0u8; 5];
    r.read_exact(&mut h).await?;
    Ok((h[0], u32::from_le_bytes([h[1], h[2], h[3], h[4]])))
}

/// The name of a frame kind, for messages.
pub fn kind_name(kind: u8) -> &'static str {
    match kind {
        SERVER_HELLO => "SERVER_HELLO",
        WELCOME => "WELCOME",
        HAVE => "HAVE",
        PIECE => "PIECE",
        ERROR => "ERROR",
        REJECT => "REJECT",
        HELLO => "HELLO",
        REQUEST => "REQUEST",
        CANCEL => "CANCEL",
        _ => "unknown",
    }
}

/// The payload lengths a control frame of `kind` may declare (least,
/// most); `None` for PIECE, whose length the receiver checks against the
/// chunk it asked for, and for unknown kinds.
pub fn control_payload_limit(kind: u8) -> Option<(u32, u32)> {
    match kind {
        SERVER_HELLO => Some((SERVER_HELLO_LEN, SERVER_HELLO_LEN)),
        HELLO => Some((MIN_HELLO, MAX_HELLO)),
        WELCOME | REJECT | REQUEST | CANCEL => Some((4, 4)),
        HAVE => Some((0, MAX_HAVE)),
        ERROR => Some((0, MAX_ERROR)),
        _ => None,
    }
}

/// Refuses a control frame whose declared length its kind cannot have.
pub fn check_control(kind: u8, len: u32) -> io::Result<()> {
    match control_payload_limit(kind) {
        Some(_) if kind == HAVE && !(len as usize).is_multiple_of(ChunkRecord::LEN) => {
            Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("HAVE of {len} bytes: not whole records"),
            ))
        }
        Some((least, most)) if (least..=most).contains(&len) => Ok(()),
        Some((least, most)) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} of {len} bytes (expected {least} to {most})",
                kind_name(kind)
            ),
        )),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected frame {kind}"),
        )),
    }
}

/// Reads a control frame's payload of the declared `len`, refusing a
/// length its kind cannot have before allocating anything.
pub async fn read_control<R: AsyncRead + Unpin>(
    r: &mut R,
    kind: u8,
    len: u32,
) -> io::Result<Vec<u8>> {
    check_control(kind, len)?;
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf).await?;
    Ok(buf)
}

/// Reads one whole control frame that must be one of `expected`: any other
/// kind is refused on its header, before its payload is read.
pub async fn read_frame_of<R: AsyncRead + Unpin>(
    r: &mut R,
    expected: &[u8],
) -> io::Result<(u8, Vec<u8>)> {
    let (kind, len) = read_header(r).await?;
    if !expected.contains(&kind) {
        let names: Vec<&str> = expected.iter().map(|&k| kind_name(k)).collect();
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("expected {}, got frame {kind}", names.join(" or ")),
        ));
    }
    Ok((kind, read_control(r, kind, len).await?))
}

/// Wake-ups per PIECE body are bounded by asking the kernel to report the
/// socket readable only once this much of the body is queued
/// (`SO_RCVLOWAT`), rather than at every 64 KiB segment.
const BODY_LOW_WATER: usize = 256 * 1024;

/// Reads a PIECE body of exactly `buf.len()` bytes: first what `rd` has
/// buffered, then straight from the socket into `buf`, with the socket's
/// low-water mark raised to the bytes still missing (capped) so that each
/// wake-up brings a large piece. The mark is back at 1 byte on return, as
/// the frames that follow may be small.
pub async fn read_body(rd: &mut BufReader<OwnedReadHalf>, buf: &mut [u8]) -> io::Result<()> {
    let buffered = rd.buffer().len().min(buf.len());
    buf[..buffered].copy_from_slice(&rd.buffer()[..buffered]);
    rd.consume(buffered);
    let mut filled = buffered;
    let sock = rd.get_mut();
    let mut low_water = 1;
    let result = async {
        while filled < buf.len() {
            let want = (buf.len() - filled).min(BODY_LOW_WATER);
            if want != low_water {
                set_low_water(sock.as_ref(), want)?;
                low_water = want;
            }
            match sock.read(&mut buf[filled..]).await? {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n => filled += n,
            }
        }
        Ok(())
    }
    .await;
    if low_water != 1 {
        set_low_water(sock.as_ref(), 1)?;
    }
    result
}

/// `setsockopt(TCP_CONGESTION)`. On a listening socket it applies to every
/// connection accepted from it.
pub fn set_congestion_control(sock: &impl AsRawFd, name: &str) -> io::Result<()> {
    setsockopt(
        sock,
        libc::IPPROTO_TCP,
        libc::TCP_CONGESTION,
        name.as_bytes(),
    )
}

/// `setsockopt(TCP_NOTSENT_LOWAT)`: the socket takes more data only while
/// less than `bytes` of what it holds is still unsent. What a server
/// writes after a long piece (an announcement) then waits behind at most
/// that much, not behind a send buffer of megabytes at the peer's share of
/// a slow link.
pub fn set_unsent_limit(sock: &impl AsRawFd, bytes: usize) -> io::Result<()> {
    setsockopt_bytes(sock, libc::IPPROTO_TCP, libc::TCP_NOTSENT_LOWAT, bytes)
}

/// An integer socket option that is a byte count (capped at `c_int::MAX`).
fn setsockopt_bytes(
    sock: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    bytes: usize,
) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    setsockopt(sock, level, name, &value.to_ne_bytes())
}

fn setsockopt(
    sock: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &[u8],
) -> io::Result<()> {
    // SAFETY: a plain system call on a socket that `sock` keeps open for
    // the duration of the call; `value` outlives it and its length is
    // passed.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            value.as_ptr().cast(),
            value.len() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `getsockopt(TCP_CONGESTION)`.
pub fn congestion_control(sock: &impl AsRawFd) -> io::Result<String> {
    let mut name = [0u8; 32];
    let mut len = name.len() as libc::socklen_t;
    // SAFETY: as above; the kernel writes at most `len` bytes into `name`
    // and stores the length it wrote in `len`.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CONGESTION,
            name.as_mut_ptr().cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let name = &name[..(len as usize).min(name.len())];
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Ok(String::from_utf8_lossy(&name[..end]).into_owned())
}

/// `setsockopt(SO_RCVLOWAT)`. On TCP, Linux wakes a reader (and reports
/// EPOLLIN) once this many bytes are queued, or earlier when the receive
/// window is nearly closed, so a mark never stalls a stream.
fn set_low_water(sock: &TcpStream, bytes: usize) -> io::Result<()> {
    setsockopt_bytes(sock, libc::SOL_SOCKET, libc::SO_RCVLOWAT, bytes)
}

pub fn encode_haves(records: &[ChunkRecord]) -> Vec<u8> {
    let mut out = Vec::with_capacity(records.len() * ChunkRecord::LEN);
    for r in records {
        r.encode(&mut out);
    }
    out
}

pub fn decode_haves(payload: &[u8]) -> io::Result<Vec<ChunkRecord>> {
    if !payload.len().is_multiple_of(ChunkRecord::LEN) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "torn HAVE frame",
        ));
    }
    Ok(payload
        .chunks_exact(ChunkRecord::LEN)
        .filter_map(ChunkRecord::decode)
        .collect())
}

/// The server's SERVER_HELLO payload.
pub fn server_hello(nonce: &[u8; 32]) -> [u8; SERVER_HELLO_LEN as usize] {
    let mut p = [0u8; SERVER_HELLO_LEN as usize];
    p[..8].copy_from_slice(&MAGIC);
    p[8..].copy_from_slice(nonce);
    p
}

/// The nonce of a SERVER_HELLO payload.
pub fn parse_server_hello(p: &[u8]) -> io::Result<[u8; 32]> {
    match p.split_first_chunk::<8>() {
        Some((magic, nonce)) if *magic == MAGIC => nonce
            .try_into()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "malformed SERVER_HELLO")),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a swarmseed peer (bad magic)",
        )),
    }
}

/// An ERROR payload's reason, cut to [`MAX_ERROR`] bytes.
pub fn error_payload(why: &str) -> &[u8] {
    let b = why.as_bytes();
    &b[..b.len().min(MAX_ERROR as usize)]
}

/// The client's HELLO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub revision: RevisionId,
    pub mac: [u8; 32],
    pub namespace: String,
    pub name: String,
    pub node: String,
}

impl Hello {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&self.revision.0);
        out.extend_from_slice(&self.mac);
        for s in [&self.namespace, &self.name, &self.node] {
            let b = s.as_bytes();
            let len = b.len().min(u16::MAX as usize);
            out.extend_from_slice(&(len as u16).to_le_bytes());
            out.extend_from_slice(&b[..len]);
        }
        out
    }

    /// Decodes a HELLO payload: at most [`MAX_HELLO`] bytes, each string
    /// within its Kubernetes limit, nothing after the last.
    pub fn decode(p: &[u8]) -> io::Result<Self> {
        let bad = |what: &str| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("malformed HELLO: {what}"),
            )
        };
        if p.len() > MAX_HELLO as usize {
            return Err(bad("too long"));
        }
        let Some((magic, rest)) = p.split_first_chunk::<8>() else {
            return Err(bad("too short"));
        };
        if *magic != MAGIC {
            return Err(bad("bad magic"));
        }
        let (revision, rest) = rest
            .split_first_chunk::<32>()
            .ok_or_else(|| bad("too short"))?;
        let (mac, mut rest) = rest
            .split_first_chunk::<32>()
            .ok_or_else(|| bad("too short"))?;
        let mut string = |most: usize, what: &str| -> io::Result<String> {
            let (len, tail) = rest
                .split_first_chunk::<2>()
                .ok_or_else(|| bad("too short"))?;
            let len = usize::from(u16::from_le_bytes(*len));
            if len > most {
                return Err(bad(&format!("{what} longer than {most} bytes")));
            }
            let (s, tail) = tail.split_at_checked(len).ok_or_else(|| bad("too short"))?;
            rest = tail;
            String::from_utf8(s.to_vec()).map_err(|_| bad(&format!("{what} is not UTF-8")))
        };
        let namespace = string(MAX_NAMESPACE_LEN, "namespace")?;
        let name = string(MAX_NAME_LEN, "name")?;
        let node = string(MAX_NODE_NAME_LEN, "node name")?;
        if !rest.is_empty() {
            return Err(bad("bytes after the node name"));
        }
        Ok(Self {
            revision: RevisionId(*revision),
            mac: *mac,
            namespace,
            name,
            node,
        })
    }
}

pub fn u32_payload(v: u32) -> [u8; 4] {
    v.to_le_bytes()
}

pub fn parse_u32(p: &[u8]) -> io::Result<u32> {
    p.try_into()
        .map(u32::from_le_bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "expected a u32 payload"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_accepted_from_a_listener_take_its_congestion_control() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let default = congestion_control(&listener).unwrap();
        // Reno is built into every Linux kernel and always allowed.
        set_congestion_control(&listener, "reno").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (accepted, client) = tokio::join!(listener.accept(), client);
        assert_eq!(congestion_control(&accepted.unwrap().0).unwrap(), "reno");
        assert_eq!(congestion_control(&client.unwrap()).unwrap(), default);
        let e = set_congestion_control(&listener, "no-such-algorithm").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{e}");
    }

    #[test]
    fn hello_round_trips() {
        let h = Hello {
            revision: RevisionId([5; 32]),
            mac: [6; 32],
            namespace: "ml".into(),
            name: "llama".into(),
            node: "gpu-1".into(),
        };
        assert_eq!(Hello::decode(&h.encode()).unwrap(), h);
        assert!(Hello::decode(&h.encode()[..80]).is_err());
    }

    #[test]
    fn the_mac_binds_token_nonce_and_dataset() {
        let rev = RevisionId([1; 32]);
        let m = hello_mac(&[1; 32], &[2; 32], &rev, "a", "b");
        assert_ne!(m, hello_mac(&[9; 32], &[2; 32], &rev, "a", "b"));
        assert_ne!(m, hello_mac(&[1; 32], &[3; 32], &rev, "a", "b"));
        assert_ne!(m, hello_mac(&[1; 32], &[2; 32], &rev, "ab", ""));
    }

    /// A body that trickles in (partly already buffered) arrives whole,
    /// and the small frame behind it is read without waiting for more
    /// bytes: the low-water mark does not outlive the body.
    #[tokio::test]
    async fn a_body_arrives_whole_and_the_next_small_frame_does_not_stall() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let body: Vec<u8> = (0..3 * BODY_LOW_WATER + 12_345)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let sent = body.clone();
        let writer = tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(&header(PIECE, sent.len() as u32))
                .await
                .unwrap();
            for part in sent.chunks(100_003) {
                s.write_all(part).await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            s.write_all(&header(REJECT, 4)).await.unwrap();
            s.write_all(&u32_payload(7)).await.unwrap();
            // Keep the connection open: EOF must not be what wakes the
            // reader.
            tokio::time::sleep(std::time::Duration::from_secs(30)).await;
        });
        let (sock, _) = listener.accept().await.unwrap();
        let (rd, _wr) = sock.into_split();
        let mut rd = BufReader::with_capacity(64 * 1024, rd);
        let deadline = std::time::Duration::from_secs(10);
        let (kind, len) = read_header(&mut rd).await.unwrap();
        assert_eq!((kind, len as usize), (PIECE, body.len()));
        let mut got = vec![0u8; body.len()];
        tokio::time::timeout(deadline, read_body(&mut rd, &mut got))
            .await
            .expect("body stalled")
            .unwrap();
        assert!(got == body, "body bytes differ");
        let (kind, len) = tokio::time::timeout(deadline, read_header(&mut rd))
            .await
            .expect("frame after the body stalled")
            .unwrap();
        assert_eq!((kind, len), (REJECT, 4));
        let p = read_control(&mut rd, kind, len).await.unwrap();
        assert_eq!(parse_u32(&p).unwrap(), 7);
        writer.abort();
    }
}
