//! S3 origins against moto's S3 server on 127.0.0.1 (installed by
//! e2e/setup.sh).

// Test fixtures may panic on anything unexpected.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use object_store::ObjectStoreExt;
use object_store::path::Path;
use swarmseed_origin::{OriginClient, OriginError, OriginOptions};
use swarmseed_proto::Reason;

mod origin_support;
use origin_support::{
    Moto, assert_reads_ranges, content, entry, list_all, list_error, listed_paths,
};

fn options() -> OriginOptions {
    origin_support::options(2)
}

#[tokio::test]
async fn lists_reads_and_detects_changes_on_s3() {
    let moto = Moto::start();
    let store = moto.create_bucket("models").await;
    let put = |key: &'static str, body: Bytes| {
        let store = &store;
        async move { store.put(&Path::from(key), body.into()).await.unwrap() }
    };
    put("llama/model.safetensors", content(300_000, 1)).await;
    put("llama/config.json", Bytes::from_static(b"{\"layers\": 2}")).await;
    put("llama/tok/vocab file.txt", Bytes::from_static(b"a b c")).await;
    put("llama/tok/extra.bin", content(10, 2)).await;
    put("llama-other/x.bin", content(10, 3)).await;

    let client = OriginClient::new(&moto.origin("s3://models/llama/"), options()).unwrap();
    let paths = [
        "config.json",
        "model.safetensors",
        "tok/extra.bin",
        "tok/vocab file.txt",
    ];
    let listing = list_all(&client, "", &paths).await;
    let model = entry(&listing.files, "model.safetensors");
    assert_eq!(model.size, 300_000);
    assert!(!model.etag.is_empty());
    assert!(listing.files.iter().all(|f| f.mode == 0o444));

    let filtered = client
        .list(&["**/*.txt".into(), "*.json".into()], &["tok/*".into()])
        .await
        .unwrap();
    let paths = listed_paths(&filtered.files);
    assert_eq!(paths, ["config.json"]);

    let ranges = [0..1, 0..300_000, 65_536..200_001, 299_999..300_000];
    assert_reads_ranges(&client, model, &content(300_000, 1), &ranges).await;
    let vocab = entry(&listing.files, "tok/vocab file.txt");
    assert_eq!(client.read_range(vocab, 2..5).await.unwrap(), &b"b c"[..]);

    // Overwritten after listing: If-Match fails, no new byte comes back.
    put("llama/model.safetensors", content(300_000, 9)).await;
    let err = client.read_range(model, 0..1000).await.unwrap_err();
    assert_eq!(
        err,
        OriginError::Changed {
            path: "model.safetensors".into()
        }
    );
    // Deleted after listing.
    store
        .delete(&Path::from("llama/tok/extra.bin"))
        .await
        .unwrap();
    let extra = entry(&listing.files, "tok/extra.bin");
    assert_eq!(
        client.read_range(extra, 0..10).await.unwrap_err().label(),
        "changed"
    );

    // A fresh listing pins the new content.
    let relisted = client.list(&[], &[]).await.unwrap();
    let model = entry(&relisted.files, "model.safetensors");
    assert_eq!(
        client.read_range(model, 0..1000).await.unwrap(),
        content(300_000, 9).slice(0..1000)
    );
}

#[tokio::test]
async fn missing_buckets_are_not_found_and_empty_prefixes_have_no_files() {
    let moto = Moto::start();
    let store = moto.create_bucket("data").await;
    store
        .put(
            &Path::from("present/file.bin"),
            Bytes::from_static(b"x").into(),
        )
        .await
        .unwrap();

    let err = list_error(&moto.origin("s3://no-such-bucket/x"), options()).await;
    assert_eq!(err.label(), "not_found", "{err}");
    assert_eq!(err.reason(), Reason::InvalidSource);

    let err = list_error(&moto.origin("s3://data/absent"), options()).await;
    assert_eq!(
        err,
        OriginError::NoFiles {
            uri: "s3://data/absent".into(),
            detail: "the origin lists no file there".into()
        }
    );
    assert_eq!(err.reason(), Reason::InvalidSource);
    // Files there, but the globs keep none: the message says which.
    let err = OriginClient::new(&moto.origin("s3://data/present"), options())
        .unwrap()
        .list(&["*.json".into()], &[])
        .await
        .unwrap_err();
    assert_eq!(err.label(), "no_files", "{err}");
    assert!(
        err.to_string()
            .contains("1 file(s) listed, none matches include [\"*.json\"]"),
        "{err}"
    );

    // The whole bucket, unsigned (no credentials: public-bucket mode);
    // moto lets anyone list.
    let mut anonymous = moto.origin("s3://data");
    anonymous.credentials.clear();
    let client = OriginClient::new(&anonymous, options()).unwrap();
    let listing = client.list(&[], &[]).await.unwrap();
    assert_eq!(listing.files.len(), 1);
    assert_eq!(listing.files[0].path, "present/file.bin");
    // moto, like S3, keeps a private bucket's objects from anonymous reads.
    let err = client
        .read_range(&listing.files[0], 0..1)
        .await
        .unwrap_err();
    assert_eq!(err.label(), "denied", "{err}");
    assert_eq!(err.reason(), Reason::SourceDenied);
    assert!(err.to_string().contains("403"), "{err}");
}

/// Keys that are not the names object_store lists them under: refused when
/// listing, naming the key as the bucket holds it (never stripped into
/// another name that fails later as "changed"); directory markers skipped.
#[tokio::test]
async fn keys_that_do_not_round_trip_are_refused_naming_the_key() {
    let moto = Moto::start();
    for bucket in ["abs", "dirs", "markers", "deep"] {
        moto.create_bucket(bucket).await;
    }
    let list = |uri: &str| {
        let client = OriginClient::new(&moto.origin(uri), options()).unwrap();
        async move { client.list(&[], &[]).await }
    };

    // A leading '/': listed by object_store as "abs.txt", which does not exist.
    moto.put_raw("abs", "/abs.txt", b"abs").await;
    moto.put_raw("abs", "ok.txt", b"ok").await;
    let err = list("s3://abs").await.unwrap_err();
    assert_eq!(err.label(), "unusable_name", "{err}");
    assert_eq!(err.reason(), Reason::InvalidSource);
    let message = err.to_string();
    assert!(
        message.contains("object key \"/abs.txt\" starts with '/'"),
        "{message}"
    );

    // A trailing '/' on an object with data: it would become a file "dir".
    moto.put_raw("dirs", "p/dir/", b"7 bytes").await;
    moto.put_raw("dirs", "p/ok.bin", b"x").await;
    let err = list("s3://dirs/p").await.unwrap_err();
    assert_eq!(err.label(), "unusable_name", "{err}");
    assert!(
        err.to_string()
            .contains("object key \"p/dir/\" ends with '/'"),
        "{err}"
    );

    // Empty markers are directories, not files: "e/" is not published as
    // an empty file "e", and the prefix's own marker is skipped too.
    moto.put_raw("markers", "p/", b"").await;
    moto.put_raw("markers", "p/e/", b"").await;
    moto.put_raw("markers", "p/sub/", b"").await;
    moto.put_raw("markers", "p/sub/x.bin", b"xyz").await;
    let listing = list("s3://markers/p").await.unwrap();
    let paths = listed_paths(&listing.files);
    assert_eq!(paths, ["sub/x.bin"]);
    assert_eq!(listing.weak_validators.count, 0);
    let err = list("s3://markers/p/e").await.unwrap_err();
    assert_eq!(err.label(), "no_files", "{err}");

    // A name no node can create (a segment over 255 bytes), and an empty
    // segment (which object_store refuses to list at all): both named.
    let long = format!("deep/{}.bin", "n".repeat(252));
    moto.put_raw("deep", &long, b"x").await;
    let err = list("s3://deep/deep").await.unwrap_err();
    assert_eq!(err.label(), "unusable_name", "{err}");
    assert!(err.to_string().contains("longer than 255 bytes"), "{err}");
    moto.put_raw("deep", "empty//segment.bin", b"x").await;
    let err = list("s3://deep/empty").await.unwrap_err();
    assert_eq!(err.label(), "unusable_name", "{err}");
    assert!(err.to_string().contains("\"empty//segment.bin\""), "{err}");
}
