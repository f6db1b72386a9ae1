//! A transfer's sink, without the network.

use super::*;
use crate::chunkmem::ChunkBuf;
use swarmseed_proto::ChunkDigest;

#[test]
fn a_chunk_has_one_writer_at_a_time_and_none_once_complete() {
    let tmp = tempfile::tempdir().unwrap();
    let store = crate::store::NodeStore::open(tmp.path().join("root")).unwrap();
    let key = DatasetKey::new("ml", "x").unwrap();
    let file = pb::FileEntry {
        path: "f".into(),
        size: 10,
        etag: "1".into(),
        ..Default::default()
    };
    let layout = Arc::new(ChunkLayout::new(vec![file], 64 * 1024).unwrap());
    let files = store
        .open_revision(&key, layout, Default::default())
        .unwrap();
    let identity = Identity::load_or_create(&tmp.path().join("key")).unwrap();
    let transfer = Transfer::new(
        key,
        Arc::new(files),
        &pb::Assignment::default(),
        Arc::new(identity),
        Metrics::register(&mut Default::default()),
        Arc::default(),
    )
    .unwrap();

    let claim = transfer.claim_write(0).expect("nobody writes chunk 0");
    // A duplicate (endgame, or the origin helper) finds it taken...
    assert!(transfer.claim_write(0).is_none());
    // ...until the writer gives up (a failed write).
    drop(claim);
    let claim = transfer.claim_write(0).expect("released");
    let mut data = ChunkBuf::with_capacity(10);
    data.extend_from_slice(&[7; 10]);
    transfer
        .accept_peer_chunk(0, ChunkDigest::of(&data), data, false)
        .unwrap();
    // Kept in memory for peers.
    assert_eq!(
        transfer.served().recent_chunk(0).as_deref().map(|b| &b[..]),
        Some(&[7u8; 10][..])
    );
    drop(claim);
    // Complete: nobody writes it again.
    assert!(transfer.claim_write(0).is_none());
}
