//! Socket options of peer connections, and the PIECE body reader that
//! uses them.

use std::ffi::OsString;
use std::io;
use std::os::fd::AsFd;

use nix::sys::socket::sockopt::TcpCongestion;
use nix::sys::socket::{getsockopt, setsockopt};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;

use options_nix_lacks::{RcvLowat, TcpNotSentLowat};

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
pub fn set_congestion_control(sock: &impl AsFd, name: &str) -> io::Result<()> {
    setsockopt(sock, TcpCongestion, &OsString::from(name)).map_err(io::Error::from)
}

/// `getsockopt(TCP_CONGESTION)`.
pub fn congestion_control(sock: &impl AsFd) -> io::Result<String> {
    let name = getsockopt(sock, TcpCongestion).map_err(io::Error::from)?;
    Ok(name.to_string_lossy().into_owned())
}

/// `setsockopt(TCP_NOTSENT_LOWAT)`: the socket takes more data only while
/// less than `bytes` of what it holds is still unsent. What a server
/// writes after a long piece (an announcement) then waits behind at most
/// that much, not behind a send buffer of megabytes at the peer's share of
/// a slow link.
pub fn set_unsent_limit(sock: &impl AsFd, bytes: usize) -> io::Result<()> {
    setsockopt(sock, TcpNotSentLowat, &int_option(bytes)).map_err(io::Error::from)
}

/// `setsockopt(SO_RCVLOWAT)`. On TCP, Linux wakes a reader (and reports
/// EPOLLIN) once this many bytes are queued, or earlier when the receive
/// window is nearly closed, so a mark never stalls a stream.
fn set_low_water(sock: &TcpStream, bytes: usize) -> io::Result<()> {
    setsockopt(sock, RcvLowat, &int_option(bytes)).map_err(io::Error::from)
}

/// A byte count as an `int` socket option, capped at `c_int::MAX` (nix
/// would wrap a larger one).
fn int_option(bytes: usize) -> usize {
    bytes.min(libc::c_int::MAX as usize)
}

/// The options nix 0.30 lacks, declared with its own macro so that no
/// unsafe code is needed here either.
mod options_nix_lacks {
    use nix::{setsockopt_impl, sockopt_impl};

    sockopt_impl!(
        /// `SO_RCVLOWAT`: bytes queued before a reader is woken.
        RcvLowat,
        SetOnly,
        libc::SOL_SOCKET,
        libc::SO_RCVLOWAT,
        usize
    );
    sockopt_impl!(
        /// `TCP_NOTSENT_LOWAT`: unsent bytes above which the socket is not
        /// writable.
        TcpNotSentLowat,
        SetOnly,
        libc::IPPROTO_TCP,
        libc::TCP_NOTSENT_LOWAT,
        usize
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Frame, Header, Kind, read_frame, read_header};
    use tokio::io::AsyncWriteExt;

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
            s.write_all(&Header::new(Kind::Piece, sent.len() as u32).to_bytes())
                .await
                .unwrap();
            for part in sent.chunks(100_003) {
                s.write_all(part).await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            s.write_all(&Frame::Reject(7).encode()).await.unwrap();
            // Keep the connection open: EOF must not be what wakes the
            // reader.
            tokio::time::sleep(std::time::Duration::from_secs(30)).await;
        });
        let (sock, _) = listener.accept().await.unwrap();
        let (rd, _wr) = sock.into_split();
        let mut rd = BufReader::with_capacity(64 * 1024, rd);
        let deadline = std::time::Duration::from_secs(10);
        let header = read_header(&mut rd).await.unwrap();
        assert_eq!(header, Header::new(Kind::Piece, body.len() as u32));
        let mut got = vec![0u8; body.len()];
        tokio::time::timeout(deadline, read_body(&mut rd, &mut got))
            .await
            .expect("body stalled")
            .unwrap();
        assert!(got == body, "body bytes differ");
        let next = tokio::time::timeout(deadline, read_frame(&mut rd, &[Kind::Reject]))
            .await
            .expect("frame after the body stalled")
            .unwrap();
        assert_eq!(next, Frame::Reject(7));
        writer.abort();
    }
}
