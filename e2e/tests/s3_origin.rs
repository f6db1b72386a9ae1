//! moto's S3 server behind the counting proxy, on loopback: upload a
//! generated tree, read it back with ranged GETs through object_store, and
//! check the proxy counted what was served.

use std::sync::Arc;

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use swarmseed_harness::origin::s3::upload_dir;
use swarmseed_harness::origin::{
    DatasetSpec, S3Origin, S3OriginSpec, generate_dataset, tree_digest,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_origin_serves_uploaded_tree_with_ranges_and_counts_bytes() {
    if !swarmseed_harness::cmd::on_path("python3") {
        eprintln!("SKIP: python3 not installed (run e2e/setup.sh)");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let spec = DatasetSpec {
        seed: 11,
        big_files: 1,
        // Above the 8 MiB buffer: exercises the multipart upload.
        big_file_size: 9 * 1024 * 1024 + 17,
        small_files: 12,
        small_file_min: 0,
        small_file_max: 20_000,
        small_dirs: 3,
    };
    let files = generate_dataset(&data, &spec).unwrap();
    let origin = S3Origin::start(S3OriginSpec::local(
        [127, 0, 0, 1].into(),
        work.path().join("logs"),
        "datasets",
    ))
    .await
    .unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(origin.store().unwrap());
    let (count, bytes) = upload_dir(store.clone(), &data, "v1").await.unwrap();
    assert_eq!((count, bytes), (files.len(), spec.total_bytes()));
    origin.reset_stats().await.unwrap();

    // The listing shows every file with its size.
    use futures::TryStreamExt;
    let mut listed: Vec<(String, u64)> = store
        .list(Some(&ObjectPath::from("v1")))
        .map_ok(|m| (m.location.to_string(), m.size))
        .try_collect()
        .await
        .unwrap();
    listed.sort();
    let expected: Vec<(String, u64)> = files
        .iter()
        .map(|f| (format!("v1/{}", f.path), f.size))
        .collect();
    assert_eq!(listed, expected);

    // Ranged reads return exactly the file's bytes.
    let big = files.iter().find(|f| f.path.starts_with("big/")).unwrap();
    let local = std::fs::read(data.join(&big.path)).unwrap();
    let key = ObjectPath::from(format!("v1/{}", big.path));
    let mut served_body = 0u64;
    for range in [0..4096u64, 5_000_000..5_100_000, big.size - 100..big.size] {
        let got = store.get_range(&key, range.clone()).await.unwrap();
        assert_eq!(
            got.as_ref(),
            &local[range.start as usize..range.end as usize]
        );
        served_body += range.end - range.start;
    }
    // And the whole small files, to rebuild the tree elsewhere.
    let copy = work.path().join("copy");
    for f in &files {
        let got = store
            .get(&ObjectPath::from(format!("v1/{}", f.path)))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        served_body += got.len() as u64;
        let path = copy.join(&f.path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, got).unwrap();
    }
    assert_eq!(tree_digest(&copy).unwrap(), tree_digest(&data).unwrap());

    // The proxy counted the bodies plus HTTP headers (a few hundred bytes
    // per request), nothing from the upload before the reset.
    let stats = origin.stats().await.unwrap();
    let requests = 3 + files.len() as u64;
    assert!(
        stats.bytes_served >= served_body,
        "{stats:?} < {served_body}"
    );
    assert!(
        stats.bytes_served < served_body + requests * 2048,
        "{stats:?} counts more than bodies and headers ({served_body} body bytes)"
    );
    assert!(stats.requests >= 1);
}
