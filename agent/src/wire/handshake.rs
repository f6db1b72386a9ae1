//! The handshake, both ends of it: the download session runs [`client`],
//! the peer server [`server`] (then [`welcome`]).
//!
//! ```text
//! server → client  SERVER_HELLO  magic, nonce
//! client → server  HELLO         revision, MAC, namespace, name, node
//! server → client  WELCOME       chunk count       (or ERROR, then close)
//! ```
//!
//! The MAC proves the client holds the dataset's peer token without
//! sending it: `blake3::keyed_hash(token, context ‖ nonce ‖ revision ‖ ns ‖
//! 0 ‖ name)`. Every frame is bounded by its kind before it is read; the
//! caller bounds the whole exchange in time.

use std::io;
use std::time::Duration;

use swarmseed_proto::RevisionId;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::frame::{Frame, Hello, Kind, read_frame, read_header, read_payload, write_frame};
use crate::store::DatasetKey;

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

/// What a client asks for and proves it may read.
#[derive(Debug, Clone, Copy)]
pub struct Credentials<'a> {
    pub token: &'a [u8; 32],
    pub revision: RevisionId,
    pub namespace: &'a str,
    pub name: &'a str,
    /// The client's node name (for the server's logs).
    pub node: &'a str,
}

/// How the client end of a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("timed out: {0}")]
    Timeout(&'static str),
    /// The server said why in an ERROR (busy, unknown dataset, bad
    /// credential, failed copy).
    #[error("peer refused: {0}")]
    Refused(String),
}

/// The client end: SERVER_HELLO in, HELLO out, WELCOME in; each frame
/// whole within `timeout`. The chunk count the server welcomed with.
pub async fn client<R, W>(
    rd: &mut R,
    wr: &mut W,
    timeout: Duration,
    creds: &Credentials<'_>,
) -> Result<u32, ClientError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let first = tokio::time::timeout(timeout, read_frame(rd, &[Kind::ServerHello, Kind::Error]))
        .await
        .map_err(|_| ClientError::Timeout("server hello"))??;
    let nonce = match first {
        Frame::ServerHello { nonce } => nonce,
        // A server with too many handshakes in progress says so.
        Frame::Error(why) => return Err(ClientError::Refused(why)),
        _ => unreachable!("read_frame returns only the kinds asked for"),
    };
    let hello = Hello {
        revision: creds.revision,
        mac: hello_mac(
            creds.token,
            &nonce,
            &creds.revision,
            creds.namespace,
            creds.name,
        ),
        namespace: creds.namespace.to_owned(),
        name: creds.name.to_owned(),
        node: creds.node.to_owned(),
    };
    write_frame(wr, &Frame::Hello(hello)).await?;
    let answer = tokio::time::timeout(timeout, read_frame(rd, &[Kind::Welcome, Kind::Error]))
        .await
        .map_err(|_| ClientError::Timeout("welcome"))??;
    match answer {
        Frame::Welcome { chunk_count } => Ok(chunk_count),
        Frame::Error(why) => Err(ClientError::Refused(why)),
        _ => unreachable!("read_frame returns only the kinds asked for"),
    }
}

/// What the server end needs of the revision a client asks for.
pub trait Served {
    fn token(&self) -> [u8; 32];
    /// A failed copy serves nothing.
    fn is_failed(&self) -> bool;
}

/// Why the server end refused a client (it was told so in an ERROR,
/// except on `Io`).
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    Malformed(io::Error),
    #[error("{0}")]
    UnknownDataset(&'static str),
    #[error("bad credential")]
    BadCredential,
    #[error("dataset failed on this node")]
    Failed,
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl Refusal {
    /// A short stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::UnknownDataset(_) => "unknown_dataset",
            Self::BadCredential => "bad_credential",
            Self::Failed => "dataset_failed",
            Self::Io(_) => "io",
        }
    }
}

/// The server end: SERVER_HELLO out, HELLO in, checked. The revision the
/// client proved it may read (`find` looks it up) and its HELLO. A
/// refusal is answered with ERROR and the write side shut. Reads straight
/// from `rd`: nothing is read or allocated beyond the HELLO's declared
/// length, which is bounded first.
pub async fn server<R, W, T, F>(rd: &mut R, wr: &mut W, find: F) -> Result<(T, Hello), Refusal>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    T: Served,
    F: FnOnce(&DatasetKey, &RevisionId) -> Option<T>,
{
    let nonce: [u8; 32] = rand::random();
    write_frame(wr, &Frame::ServerHello { nonce }).await?;

    let header = read_header(rd).await?;
    let kind = match header.check_expected(&[Kind::Hello]) {
        Ok(k) => k,
        Err(e) => return Err(refuse(wr, Refusal::Malformed(e)).await),
    };
    let payload = read_payload(rd, header).await?;
    let hello = match Frame::decode(kind, &payload) {
        Ok(Frame::Hello(h)) => h,
        Ok(_) => unreachable!("a HELLO decodes as one"),
        Err(e) => return Err(refuse(wr, Refusal::Malformed(e)).await),
    };
    let Ok(key) = DatasetKey::new(&hello.namespace, &hello.name) else {
        return Err(refuse(wr, Refusal::UnknownDataset("unknown dataset")).await);
    };
    let Some(served) = find(&key, &hello.revision) else {
        let e = Refusal::UnknownDataset("unknown dataset or revision");
        return Err(refuse(wr, e).await);
    };
    let expected = hello_mac(
        &served.token(),
        &nonce,
        &hello.revision,
        &key.namespace,
        &key.name,
    );
    if !constant_time_eq(&expected, &hello.mac) {
        return Err(refuse(wr, Refusal::BadCredential).await);
    }
    // A failed copy serves nothing: its peers must not take it for a live
    // fetcher (they fall back to the origin for what only it would read).
    // Said only to a client that proved it holds the token.
    if served.is_failed() {
        return Err(refuse(wr, Refusal::Failed).await);
    }
    Ok((served, hello))
}

/// Ends a handshake the server accepted.
pub async fn welcome<W: AsyncWrite + Unpin>(wr: &mut W, chunk_count: u32) -> io::Result<()> {
    write_frame(wr, &Frame::Welcome { chunk_count }).await
}

/// Tells the client why (ERROR, then the write side shut); the refusal,
/// or the error that kept it from being told.
async fn refuse<W: AsyncWrite + Unpin>(wr: &mut W, why: Refusal) -> Refusal {
    let told = async {
        write_frame(wr, &Frame::Error(why.to_string())).await?;
        wr.shutdown().await
    };
    match told.await {
        Ok(()) => why,
        Err(e) => Refusal::Io(e),
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Header;

    const TOKEN: [u8; 32] = [7; 32];
    const REVISION: RevisionId = RevisionId([3; 32]);
    const SOON: Duration = Duration::from_secs(2);

    struct Held {
        failed: bool,
    }

    impl Served for Held {
        fn token(&self) -> [u8; 32] {
            TOKEN
        }
        fn is_failed(&self) -> bool {
            self.failed
        }
    }

    fn creds(token: &[u8; 32]) -> Credentials<'_> {
        Credentials {
            token,
            revision: REVISION,
            namespace: "ml",
            name: "llama",
            node: "gpu-2",
        }
    }

    /// Both ends against each other over an in-memory pipe: what each
    /// ended with.
    async fn both_ends(
        token: [u8; 32],
        failed: bool,
    ) -> (Result<u32, ClientError>, Result<Hello, Refusal>) {
        let (client_io, server_io) = tokio::io::duplex(4096);
        let (mut crd, mut cwr) = tokio::io::split(client_io);
        let (mut srd, mut swr) = tokio::io::split(server_io);
        let server = async move {
            let r = server(&mut srd, &mut swr, |key, revision| {
                (key.namespace == "ml" && key.name == "llama" && *revision == REVISION)
                    .then_some(Held { failed })
            })
            .await;
            match r {
                Ok((_, hello)) => {
                    welcome(&mut swr, 12).await.unwrap();
                    Ok(hello)
                }
                Err(e) => Err(e),
            }
        };
        let client = async move { client(&mut crd, &mut cwr, SOON, &creds(&token)).await };
        tokio::time::timeout(SOON * 2, async { tokio::join!(client, server) })
            .await
            .expect("the handshake hangs")
    }

    #[tokio::test]
    async fn a_client_with_the_token_is_welcomed() {
        let (client, server) = both_ends(TOKEN, false).await;
        assert_eq!(client.unwrap(), 12);
        let hello = server.unwrap();
        assert_eq!((hello.revision, hello.node.as_str()), (REVISION, "gpu-2"));
    }

    #[tokio::test]
    async fn a_client_without_the_token_is_refused_and_told_so() {
        let (client, server) = both_ends([8; 32], false).await;
        assert!(matches!(server, Err(Refusal::BadCredential)), "{server:?}");
        match client {
            Err(ClientError::Refused(why)) => assert_eq!(why, "bad credential"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_failed_copy_says_so_only_after_the_credential() {
        let (client, server) = both_ends(TOKEN, true).await;
        assert!(matches!(server, Err(Refusal::Failed)), "{server:?}");
        match client {
            Err(ClientError::Refused(why)) => assert_eq!(why, "dataset failed on this node"),
            other => panic!("{other:?}"),
        }
        let (_, server) = both_ends([8; 32], true).await;
        assert!(matches!(server, Err(Refusal::BadCredential)), "{server:?}");
    }

    #[tokio::test]
    async fn a_server_refuses_a_frame_that_is_not_a_hello_on_its_header() {
        let (client_io, server_io) = tokio::io::duplex(4096);
        let (mut crd, mut cwr) = tokio::io::split(client_io);
        let (mut srd, mut swr) = tokio::io::split(server_io);
        let server = server(&mut srd, &mut swr, |_, _| None::<Held>);
        let client = async {
            read_frame(&mut crd, &[Kind::ServerHello]).await.unwrap();
            cwr.write_all(&Header::new(Kind::Request, 1 << 20).to_bytes())
                .await
                .unwrap();
            read_frame(&mut crd, &[Kind::Error]).await.unwrap()
        };
        let (told, refused) = tokio::join!(client, server);
        assert_eq!(told, Frame::Error("expected HELLO, got frame 17".into()));
        assert!(matches!(refused, Err(Refusal::Malformed(_))));
    }

    #[test]
    fn the_mac_binds_token_nonce_and_dataset() {
        let rev = RevisionId([1; 32]);
        let m = hello_mac(&[1; 32], &[2; 32], &rev, "a", "b");
        assert_ne!(m, hello_mac(&[9; 32], &[2; 32], &rev, "a", "b"));
        assert_ne!(m, hello_mac(&[1; 32], &[3; 32], &rev, "a", "b"));
        assert_ne!(m, hello_mac(&[1; 32], &[2; 32], &rev, "ab", ""));
    }
}
