//! The bound on a listing's size is counted in the bytes an assignment
//! spends on it, so it must cover the protobuf encoding of the files.

use swarmseed_proto::layout::{
    FileEntry, MAX_ASSIGNMENT_BYTES, MAX_FILES, MAX_LISTING_BYTES, listing_bytes,
};
use swarmseed_proto::{path, pb};

fn file(path: &str, size: u64) -> FileEntry {
    FileEntry {
        path: path.into(),
        size,
        ..Default::default()
    }
}

#[test]
fn listings_are_bounded_in_bytes() {
    let files = vec![file("a", 1), file("b", 2)];
    let bytes = listing_bytes(&files);
    let encoded = prost::Message::encoded_len(&pb::Assignment {
        files: files.clone(),
        ..Default::default()
    });
    assert!(bytes >= encoded, "{bytes} < {encoded}");
    // Paths of the longest kind: the bound bites long before MAX_FILES.
    let long = "p".repeat(path::MAX_PATH_LEN - 8);
    let per_file = listing_bytes(&[file(&long, 1)]);
    assert!(MAX_LISTING_BYTES / per_file < MAX_FILES);
    const { assert!(MAX_ASSIGNMENT_BYTES > MAX_LISTING_BYTES) };
}
