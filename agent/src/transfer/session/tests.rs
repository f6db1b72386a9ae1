//! The session core driven without sockets: frames, verified pieces and
//! ticks in, requests, cancels and errors out.

use super::*;
use swarmseed_proto::pb;

const CHUNK: u64 = 64 * 1024;
const STALL: Duration = Duration::from_secs(30);

fn layout(chunks: u32) -> ChunkLayout {
    let file = pb::FileEntry {
        path: "f".into(),
        size: CHUNK * u64::from(chunks),
        etag: "1".into(),
        ..Default::default()
    };
    ChunkLayout::new(vec![file], CHUNK).expect("layout")
}

fn digest(i: u32) -> ChunkDigest {
    ChunkDigest([i as u8 + 1; 32])
}

fn record(i: u32) -> ChunkRecord {
    ChunkRecord {
        index: i,
        digest: digest(i),
        signer: [9; 32],
        signature: [8; 64],
    }
}

/// A session whose peer announced every chunk of a 4-chunk revision.
fn announced(now: Instant) -> (ChunkLayout, Board, PeerSession) {
    let layout = layout(4);
    let mut board = Board::new(4);
    let mut s = PeerSession::new(&layout, ScanOrder::random(4), STALL, now);
    assert!(s.on_have(&mut board, (0..4).map(record).collect()));
    (layout, board, s)
}

fn requested(next: Next) -> Vec<u32> {
    match next {
        Next::Send(frames) => {
            let mut v: Vec<u32> = frames
                .into_iter()
                .map(|f| match f {
                    Frame::Request(i) => i,
                    other => panic!("not a REQUEST: {other:?}"),
                })
                .collect();
            v.sort_unstable();
            v
        }
        Next::Complete => panic!("complete"),
    }
}

#[test]
fn what_the_peer_announced_is_requested_once() {
    let t0 = Instant::now();
    let (_, mut board, mut s) = announced(t0);
    assert_eq!(requested(s.fill(&mut board, t0, false)), [0, 1, 2, 3]);
    assert!((0..4).all(|i| board.inflight(i) == 1 && board.availability(i) == 1));
    // Nothing more to ask of this peer.
    assert_eq!(requested(s.fill(&mut board, t0, false)), Vec::<u32>::new());
    // An announcement of a chunk that does not exist changes nothing.
    assert!(!s.on_have(&mut board, vec![record(7)]));
}

#[test]
fn a_piece_that_was_not_requested_is_a_protocol_violation() {
    let t0 = Instant::now();
    let layout = layout(4);
    let mut board = Board::new(4);
    let mut s = PeerSession::new(&layout, ScanOrder::random(4), STALL, t0);
    s.on_have(&mut board, vec![record(0), record(1)]);
    assert_eq!(requested(s.fill(&mut board, t0, false)), [0, 1]);
    let e = s.on_piece_header(&layout, 2, CHUNK).unwrap_err();
    assert!(
        matches!(&e, SessionError::Protocol(m) if m == "unrequested PIECE 2"),
        "{e:?}"
    );
    // Nor may a piece lie about its chunk's length or index.
    assert!(matches!(
        s.on_piece_header(&layout, 0, CHUNK - 1),
        Err(SessionError::Protocol(_))
    ));
    assert!(matches!(
        s.on_piece_header(&layout, 9, CHUNK),
        Err(SessionError::Protocol(_))
    ));
    s.on_piece_header(&layout, 0, CHUNK).expect("requested");
}

#[test]
fn a_digest_mismatch_is_bad_data_and_a_match_settles_the_request() {
    let t0 = Instant::now();
    let (_, mut board, mut s) = announced(t0);
    requested(s.fill(&mut board, t0, false));
    let e = s
        .on_piece_hashed(&board, 1, ChunkDigest([0xee; 32]))
        .unwrap_err();
    assert!(matches!(e, SessionError::BadData(1)), "{e:?}");
    // The one that matches is this session's to release, once.
    assert!(s.on_piece_hashed(&board, 1, digest(1)).unwrap());
    assert!(!s.on_piece_hashed(&board, 1, digest(1)).unwrap());
}

#[test]
fn a_chunk_delivered_elsewhere_is_cancelled_and_its_reject_frees_it() {
    let t0 = Instant::now();
    let (_, mut board, mut s) = announced(t0);
    requested(s.fill(&mut board, t0, false));
    assert!(s.cancels(&board).is_empty());
    // Another peer (or the origin) delivered chunk 2.
    board.complete(record(2));
    assert_eq!(s.cancels(&board), [Frame::Cancel(2)]);
    // The peer confirms: the request is gone, and the board knows.
    assert_eq!(board.inflight(2), 1);
    assert!(s.on_reject(&mut board, 2));
    assert_eq!(board.inflight(2), 0);
    assert!(s.cancels(&board).is_empty());
    // A second REJECT for it is not this session's any more.
    assert!(!s.on_reject(&mut board, 2));
    s.on_resolved(t0, 0);
}

#[test]
fn a_peer_that_stalls_with_requests_outstanding_is_dropped() {
    let t0 = Instant::now();
    let (_, mut board, mut s) = announced(t0);
    // Idle, the clock does not run however long.
    assert!(s.stall_deadline().is_none());
    let later = t0 + STALL * 3;
    s.on_timer(later).expect("idle is no stall");
    requested(s.fill(&mut board, later, false));
    assert_eq!(s.stall_deadline(), Some(later + STALL));
    s.on_timer(later + STALL - Duration::from_millis(1))
        .expect("not yet");
    // A piece arrives: the clock starts again.
    let t = later + STALL / 2;
    s.on_resolved(t, CHUNK);
    s.on_timer(later + STALL).expect("progress was made");
    let e = s.on_timer(t + STALL).unwrap_err();
    assert!(matches!(e, SessionError::Stalled), "{e:?}");
}

#[test]
fn a_peer_that_disconnects_mid_piece_leaves_its_chunks_to_others() {
    let t0 = Instant::now();
    let (layout, mut board, mut s) = announced(t0);
    requested(s.fill(&mut board, t0, false));
    // The header of chunk 3 arrived, its body never will.
    s.on_piece_header(&layout, 3, CHUNK).expect("requested");
    s.close(&mut board);
    assert!((0..4).all(|i| board.inflight(i) == 0 && board.availability(i) == 0));
    // Another peer that holds them gets every request.
    let mut other = PeerSession::new(&layout, ScanOrder::random(4), STALL, t0);
    other.on_have(&mut board, (0..4).map(record).collect());
    assert_eq!(requested(other.fill(&mut board, t0, false)), [0, 1, 2, 3]);
    // A body that was being verified when the session ended is no longer
    // its to release.
    assert!(!s.on_piece_hashed(&board, 3, digest(3)).unwrap());
}

#[test]
fn with_relays_up_few_requests_go_to_chunks_only_this_peer_holds() {
    let t0 = Instant::now();
    let (_, mut board, mut s) = announced(t0);
    assert_eq!(
        requested(s.fill(&mut board, t0, true)).len(),
        SOLE_SOURCE_REQUESTS
    );
}

#[test]
fn a_complete_board_ends_the_session() {
    let t0 = Instant::now();
    let (_, mut board, mut s) = announced(t0);
    for i in 0..4 {
        board.complete(record(i));
    }
    assert_eq!(s.fill(&mut board, t0, false), Next::Complete);
}

#[test]
fn an_announcement_that_contradicts_the_first_attestation_is_ignored() {
    let t0 = Instant::now();
    let (_, mut board, mut s) = announced(t0);
    let mut other = PeerSession::new(&layout(4), ScanOrder::random(4), STALL, t0);
    let mut liar = record(0);
    liar.digest = ChunkDigest([0xaa; 32]);
    assert!(!other.on_have(&mut board, vec![liar]));
    assert_eq!(board.expected(0), Some(digest(0)));
    assert_eq!(board.availability(0), 1);
    s.close(&mut board);
}
