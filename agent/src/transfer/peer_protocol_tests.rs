//! The client end of the peer handshake against servers that lie or
//! stall: every frame is bounded in size by its kind and read whole within
//! the handshake timeout.

use super::*;
use crate::wire::{self, Frame, Header, Kind};
use session::SessionError;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

const TIMEOUT: Duration = Duration::from_millis(300);
/// Ample for anything local that should happen at once.
const SOON: Duration = Duration::from_secs(2);

/// A session of a fresh transfer against a server that runs `script` on
/// the accepted connection: what it ended with, and when.
async fn session_against<F, Fut>(script: F) -> (Result<(), SessionError>, Duration)
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let dir = tempfile::tempdir().unwrap();
    let cfg = TransferConfig {
        node_name: "gpu-1".into(),
        connect_timeout: TIMEOUT,
        ..Default::default()
    };
    let transfer = crate::peer_server::test_transfer(dir.path(), [7; 32], cfg);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer = pb::Peer {
        node_name: "gpu-2".into(),
        address: listener.local_addr().unwrap().to_string(),
    };
    let server = tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        script(s).await;
    });
    let started = Instant::now();
    let result = tokio::time::timeout(
        TIMEOUT + SOON,
        transfer.session(&peer, &CancellationToken::new()),
    )
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the session still waits on the server {:?} after it began",
            started.elapsed()
        )
    });
    server.abort();
    (result, started.elapsed())
}

/// Writes `bytes`, then holds the connection open without a word.
async fn say_then_stall(mut s: TcpStream, bytes: Vec<u8>) {
    s.write_all(&bytes).await.unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
}

fn frame(kind: Kind, declared: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = Header::new(kind, declared).to_bytes().to_vec();
    f.extend_from_slice(payload);
    f
}

#[tokio::test]
async fn a_server_hello_that_never_arrives_whole_ends_the_session_in_time() {
    let (result, took) =
        session_against(|s| say_then_stall(s, frame(Kind::ServerHello, 40, &wire::MAGIC))).await;
    assert!(
        matches!(result, Err(SessionError::Timeout("server hello"))),
        "{result:?}"
    );
    assert!(took < TIMEOUT + SOON / 2, "took {took:?}");
}

#[tokio::test]
async fn an_oversized_server_frame_is_refused_on_its_header() {
    for (kind, len) in [
        (Kind::ServerHello, 1 << 20),
        (Kind::Error, u32::MAX),
        (Kind::Have, 1000),
    ] {
        let (result, took) =
            session_against(move |s| say_then_stall(s, Header::new(kind, len).to_bytes().to_vec()))
                .await;
        let Err(SessionError::Io(e)) = &result else {
            panic!("{result:?}");
        };
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
        assert!(
            took < TIMEOUT,
            "waited {took:?} for the body of a refused frame"
        );
    }
}

#[tokio::test]
async fn a_welcome_that_never_arrives_whole_ends_the_session_in_time() {
    let (result, _) = session_against(|mut s| async move {
        s.write_all(&Frame::ServerHello { nonce: [1; 32] }.encode())
            .await
            .unwrap();
        let hello = wire::read_frame(&mut s, &[Kind::Hello]).await.unwrap();
        assert_eq!(hello.kind(), Kind::Hello);
        say_then_stall(s, frame(Kind::Welcome, 4, &[1])).await;
    })
    .await;
    assert!(
        matches!(result, Err(SessionError::Timeout("welcome"))),
        "{result:?}"
    );
}

#[tokio::test]
async fn a_busy_server_is_a_refusal_with_its_reason() {
    let why = b"busy: 16 handshakes in progress from this address";
    let (result, _) =
        session_against(move |s| say_then_stall(s, frame(Kind::Error, why.len() as u32, why)))
            .await;
    match result {
        Err(SessionError::Refused(m)) => assert_eq!(m.as_bytes(), why),
        other => panic!("{other:?}"),
    }
}
