//! The HTTP origin, in process on 127.0.0.1: what the agent's HTTP source
//! relies on (ranges, ETag/If-Match, nginx JSON listings) and the byte
//! counting the benchmarks rely on.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CONTENT_LENGTH, CONTENT_RANGE, ETAG, IF_MATCH, LOCATION, RANGE};
use swarmseed_harness::origin::http::ListingEntry;
use swarmseed_harness::origin::{
    DatasetSpec, HttpOrigin, OriginStats, fetch_stats, generate_dataset, reset_stats,
};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("http client")
}

/// GET the directory `url` as nginx's JSON autoindex.
async fn json_listing(c: &reqwest::Client, url: String) -> reqwest::Response {
    c.get(url)
        .header(ACCEPT, "application/json")
        .send()
        .await
        .expect("the origin answers")
}

async fn raw_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("send request");
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
        .await
        .expect("response within 10 s")
        .expect("read response");
    out
}

#[tokio::test]
async fn http_origin_serves_ranges_etags_listings_and_counts_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let files = generate_dataset(dir.path(), &DatasetSpec::tiny(3)).unwrap();
    std::fs::write(dir.path().join(".hidden"), b"secret").unwrap();
    let big = &files
        .iter()
        .find(|f| f.path.starts_with("big/"))
        .unwrap()
        .path;
    let content = std::fs::read(dir.path().join(big)).unwrap();
    let len = content.len() as u64;

    let origin = HttpOrigin::start(dir.path(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let url = format!("{}/{big}", origin.url());
    let c = client();

    // Whole file.
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let etag = r.headers()[ETAG].to_str().unwrap().to_string();
    assert!(
        etag.starts_with('"') && etag.ends_with('"'),
        "strong ETag: {etag}"
    );
    assert_eq!(r.headers()["accept-ranges"], "bytes");
    assert_eq!(r.bytes().await.unwrap(), content);

    // A middle range, an open range and a suffix range.
    for (range, start, end) in [
        ("bytes=1000-1999", 1000, 1999),
        (&format!("bytes={}-", len - 10) as &str, len - 10, len - 1),
        ("bytes=-7", len - 7, len - 1),
    ] {
        let r = c.get(&url).header(RANGE, range).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(
            r.headers()[CONTENT_RANGE],
            format!("bytes {start}-{end}/{len}").as_str()
        );
        assert_eq!(
            r.bytes().await.unwrap(),
            content[start as usize..=end as usize],
            "{range}"
        );
    }

    // Past the end: 416 with the length.
    let r = c
        .get(&url)
        .header(RANGE, format!("bytes={len}-"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        r.headers()[CONTENT_RANGE],
        format!("bytes */{len}").as_str()
    );

    // If-Match: the current ETag passes, another one gets 412.
    let r = c
        .get(&url)
        .header(IF_MATCH, &etag)
        .header(RANGE, "bytes=0-3")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.bytes().await.unwrap(), content[..4]);
    let r = c
        .get(&url)
        .header(IF_MATCH, "\"stale\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED);

    // HEAD: the length, no body.
    let r = c.head(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()[CONTENT_LENGTH], len.to_string().as_str());
    assert_eq!(r.headers()[ETAG], etag.as_str());

    // Rewriting the file changes its ETag, so a reader pinned to the old
    // one notices.
    std::thread::sleep(Duration::from_millis(10));
    std::fs::write(dir.path().join(big), &content).unwrap();
    let r = c.get(&url).header(IF_MATCH, &etag).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED);

    // Missing files and escapes.
    assert_eq!(
        c.get(format!("{}/nope", origin.url()))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
    // (Raw request: HTTP clients normalise `..` away before sending.)
    let raw = raw_get(origin.addr(), "/big/../../etc/passwd").await;
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");

    // Directory without the slash: redirect, as nginx does.
    let r = c
        .get(format!("{}/small", origin.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::MOVED_PERMANENTLY);
    assert_eq!(r.headers()[LOCATION], "/small/");

    // JSON listing: nginx's autoindex_format json.
    let r = json_listing(&c, format!("{}/", origin.url())).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/json");
    let root: Vec<ListingEntry> = r.json().await.unwrap();
    let names: Vec<(&str, &str)> = root
        .iter()
        .map(|e| (e.name.as_str(), e.kind.as_str()))
        .collect();
    assert_eq!(
        names,
        [("big", "directory"), ("small", "directory")],
        "dot files hidden"
    );
    assert!(
        root.iter()
            .all(|e| e.size.is_none() && e.mtime.ends_with(" GMT"))
    );
    let r = json_listing(&c, format!("{}/big/", origin.url())).await;
    let raw: serde_json::Value = r.json().await.unwrap();
    let first = &raw[0];
    assert_eq!(first["name"], "shard-00000.bin");
    assert_eq!(first["type"], "file");
    assert_eq!(
        first["size"],
        serde_json::json!(DatasetSpec::tiny(3).big_file_size)
    );
    // Without Accept: JSON, an HTML page.
    let html = c
        .get(format!("{}/big/", origin.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("href=\"shard%2D00000%2Ebin\""), "{html}");

    // Byte counting over HTTP: reset, fetch exactly 1 MiB + 10 bytes of body.
    reset_stats(&origin.url()).await.unwrap();
    assert_eq!(
        fetch_stats(&origin.url()).await.unwrap(),
        OriginStats::default()
    );
    for (range, len) in [("bytes=0-1048575", 1 << 20), ("bytes=-10", 10)] {
        let r = c.get(&url).header(RANGE, range).send().await.unwrap();
        assert_eq!(r.bytes().await.unwrap().len(), len);
    }
    c.head(&url).send().await.unwrap();
    let stats = fetch_stats(&origin.url()).await.unwrap();
    assert_eq!(
        stats,
        OriginStats {
            bytes_served: (1 << 20) + 10,
            requests: 3
        }
    );
    assert_eq!(origin.stats(), stats);
}
