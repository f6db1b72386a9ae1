//! The object keys of S3, GCS and Azure listings as the store sent them.
//!
//! `object_store` turns every listed key into a `Path`, and `Path` drops a
//! leading and a trailing `/`: the keys `/abs.txt` and `dir/` come out as
//! `abs.txt` and `dir`, objects that do not exist under those names (a read
//! then fails as if the object had changed), and an empty `e/` comes out as
//! an empty file `e`. So the HTTP client `object_store` uses is wrapped
//! ([`KeyCheckConnector`]): every listing page it receives is read with a
//! size bound, its raw keys are checked here, and the page is passed on
//! unchanged. The listing then refuses a key that does not name itself
//! ([`KeyVerdict::Unusable`]) and skips directory markers (empty objects
//! whose key ends in `/`).
//!
//! The same wrapper bounds what `object_store` would read without limit:
//! listing pages and error answers.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use object_store::ClientOptions;
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse,
    HttpResponseBody, HttpService, ReqwestConnector,
};
use serde::Deserialize;

/// Largest listing page read (S3 sends at most 1,000 keys of at most 1 KiB
/// each, about 1.5 MB with their metadata).
pub(crate) const MAX_PAGE_BYTES: usize = 16 << 20;
/// Largest error answer read (its text goes into the error message).
pub(crate) const MAX_ERROR_BYTES: usize = 64 << 10;
/// Unusable keys remembered (the first one is reported).
const MAX_UNUSABLE: usize = 16;

/// What a listed key is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeyVerdict {
    /// The key names itself: `object_store` lists it under the same name.
    Plain,
    /// An empty object whose key ends in `/`: a directory, listed by
    /// `object_store` under the key without the `/`.
    DirectoryMarker(String),
    /// A key that would be listed under another name, or not at all. The
    /// message names the key.
    Unusable(String),
}

/// Judges one raw key and its size.
pub(crate) fn judge(key: &str, size: u64) -> KeyVerdict {
    if key.starts_with('/') {
        return KeyVerdict::Unusable(format!(
            "object key {key:?} starts with '/' (it cannot be a relative path)"
        ));
    }
    let (name, marker) = match key.strip_suffix('/') {
        Some(name) if size == 0 => (name, true),
        Some(_) => {
            return KeyVerdict::Unusable(format!(
                "object key {key:?} ends with '/' but holds {size} bytes \
                 (only an empty object may mark a directory)"
            ));
        }
        None => (key, false),
    };
    match object_store::path::Path::parse(name) {
        Ok(path) if path.as_ref() == name => {}
        Ok(_) => {
            return KeyVerdict::Unusable(format!(
                "object key {key:?} is not a plain path (more than one '/' at its end)"
            ));
        }
        Err(e) => {
            return KeyVerdict::Unusable(format!("object key {key:?} is not a plain path: {e}"));
        }
    }
    if marker {
        KeyVerdict::DirectoryMarker(name.to_owned())
    } else {
        KeyVerdict::Plain
    }
}

/// One raw entry of a listing page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawKey {
    pub(crate) key: String,
    pub(crate) size: u64,
}

/// Which store's listing format a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PageKind {
    /// S3 ListObjectsV2, also GCS's XML API (`list-type=2`).
    S3,
    /// Azure List Blobs (`comp=list`), with the request's prefix: Azure
    /// lists the prefix itself, which `object_store` drops.
    Azure { prefix: String },
}

impl PageKind {
    /// The kind of listing a GET to `uri` fetches, if it is one.
    pub(crate) fn of(method: &http::Method, uri: &http::Uri) -> Option<Self> {
        if method != http::Method::GET {
            return None;
        }
        let query = uri.query()?;
        let pairs = || url::form_urlencoded::parse(query.as_bytes());
        if pairs().any(|(k, v)| k == "list-type" && v == "2") {
            return Some(Self::S3);
        }
        if pairs().any(|(k, v)| k == "comp" && v == "list") {
            let prefix = pairs()
                .find(|(k, _)| k == "prefix")
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default();
            return Some(Self::Azure { prefix });
        }
        None
    }

    /// The entries of one page, as `object_store` will list them (Azure's
    /// directory entries and the prefix itself are not objects).
    pub(crate) fn scan(&self, body: &[u8]) -> Result<Vec<RawKey>, String> {
        match self {
            Self::S3 => {
                let page: S3Page = quick_xml::de::from_reader(body)
                    .map_err(|e| format!("listing page is not S3 XML: {e}"))?;
                Ok(page
                    .contents
                    .into_iter()
                    .map(|c| RawKey {
                        key: c.key,
                        size: c.size,
                    })
                    .collect())
            }
            Self::Azure { prefix } => {
                let page: AzurePage = quick_xml::de::from_reader(body)
                    .map_err(|e| format!("listing page is not Azure XML: {e}"))?;
                Ok(page
                    .blobs
                    .blobs
                    .into_iter()
                    .filter(|b| {
                        b.properties.resource_type.as_deref() != Some("directory")
                            && b.name.len() > prefix.len()
                    })
                    .map(|b| RawKey {
                        key: b.name,
                        size: b.properties.content_length,
                    })
                    .collect())
            }
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct S3Page {
    #[serde(default)]
    contents: Vec<S3Entry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct S3Entry {
    key: String,
    #[serde(default)]
    size: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AzurePage {
    #[serde(default)]
    blobs: AzureBlobs,
}

#[derive(Deserialize, Default)]
struct AzureBlobs {
    #[serde(rename = "Blob", default)]
    blobs: Vec<AzureBlob>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AzureBlob {
    name: String,
    properties: AzureProperties,
}

#[derive(Deserialize)]
struct AzureProperties {
    #[serde(rename = "Content-Length", default)]
    content_length: u64,
    #[serde(rename = "ResourceType", default)]
    resource_type: Option<String>,
}

/// What the pages of one listing held, as far as keys are concerned.
#[derive(Debug, Default)]
pub(crate) struct KeyReport {
    /// Entries on every page (what `object_store` should yield).
    pub(crate) keys: u64,
    /// Listed names that stand for directory markers.
    pub(crate) markers: HashSet<String>,
    /// The first unusable keys' messages.
    pub(crate) unusable: Vec<(String, String)>,
    /// A page that could not be read.
    pub(crate) failed: Option<String>,
}

impl KeyReport {
    fn record(&mut self, page: Result<Vec<RawKey>, String>) {
        let keys = match page {
            Ok(keys) => keys,
            Err(e) => {
                self.failed.get_or_insert(e);
                return;
            }
        };
        self.keys += keys.len() as u64;
        for RawKey { key, size } in keys {
            match judge(&key, size) {
                KeyVerdict::Plain => {}
                KeyVerdict::DirectoryMarker(name) => {
                    self.markers.insert(name);
                }
                KeyVerdict::Unusable(message) => {
                    if self.unusable.len() < MAX_UNUSABLE {
                        self.unusable.push((key, message));
                    }
                }
            }
        }
    }
}

/// Shared between the wrapped HTTP client and the listing that reads it.
#[derive(Debug, Clone, Default)]
pub(crate) struct KeyLog(Arc<Mutex<KeyReport>>);

impl KeyLog {
    /// Starts a new listing: forgets the pages of the last one.
    pub(crate) fn reset(&self) {
        *self.lock() = KeyReport::default();
    }

    /// The report so far, leaving an empty one.
    pub(crate) fn take(&self) -> KeyReport {
        std::mem::take(&mut *self.lock())
    }

    pub(crate) fn is_marker(&self, name: &str) -> bool {
        self.lock().markers.contains(name)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, KeyReport> {
        // A panic while holding it left plain data behind: keep using it.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Builds `object_store`'s usual reqwest client, wrapped.
#[derive(Debug)]
pub(crate) struct KeyCheckConnector {
    pub(crate) log: KeyLog,
}

impl HttpConnector for KeyCheckConnector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let inner = ReqwestConnector::default().connect(options)?;
        Ok(HttpClient::new(KeyCheckService {
            inner,
            log: self.log.clone(),
        }))
    }
}

#[derive(Debug)]
struct KeyCheckService {
    inner: HttpClient,
    log: KeyLog,
}

#[derive(Debug, thiserror::Error)]
#[error("the answer is larger than {0} bytes")]
struct TooLarge(usize);

/// Reads a body of at most `max` bytes.
async fn read_capped(body: HttpResponseBody, max: usize) -> Result<Bytes, HttpError> {
    let mut stream = body.bytes_stream();
    let mut out = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if out.len() + chunk.len() > max {
            return Err(HttpError::new(HttpErrorKind::Decode, TooLarge(max)));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
}

#[async_trait]
impl HttpService for KeyCheckService {
    async fn call(&self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        let page = PageKind::of(request.method(), request.uri());
        let (parts, body) = self.inner.execute(request).await?.into_parts();
        let body = if !parts.status.is_success() {
            read_capped(body, MAX_ERROR_BYTES).await?.into()
        } else if let Some(page) = page {
            let bytes = read_capped(body, MAX_PAGE_BYTES).await?;
            self.log.lock().record(page.scan(&bytes));
            bytes.into()
        } else {
            // Object reads: streamed, and bounded by the range asked for.
            body
        };
        Ok(HttpResponse::from_parts(parts, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_do_not_name_themselves_are_unusable() {
        assert_eq!(judge("a/b.txt", 3), KeyVerdict::Plain);
        assert_eq!(judge("a b/c%d.txt", 0), KeyVerdict::Plain);
        assert_eq!(judge("dir/", 0), KeyVerdict::DirectoryMarker("dir".into()));
        assert_eq!(judge("a/b/", 0), KeyVerdict::DirectoryMarker("a/b".into()));
        for (key, size, says) in [
            ("/abs.txt", 5, "starts with '/'"),
            ("dir/", 7, "holds 7 bytes"),
            ("a//b", 1, "not a plain path"),
            ("a/../b", 1, "not a plain path"),
            ("x//", 0, "not a plain path"),
            ("a\u{1}b", 1, "not a plain path"),
        ] {
            let KeyVerdict::Unusable(message) = judge(key, size) else {
                panic!("{key:?} accepted");
            };
            assert!(message.contains(says), "{key:?}: {message}");
            assert!(message.contains(&format!("{key:?}")), "{message}");
        }
    }

    #[test]
    fn listing_requests_are_recognised() {
        let get = http::Method::GET;
        let uri = |s: &str| s.parse::<http::Uri>().unwrap();
        assert_eq!(
            PageKind::of(&get, &uri("http://h/b?list-type=2&prefix=p%2F")),
            Some(PageKind::S3)
        );
        assert_eq!(
            PageKind::of(
                &get,
                &uri("http://h/c?restype=container&comp=list&prefix=p%2F")
            ),
            Some(PageKind::Azure {
                prefix: "p/".into()
            })
        );
        assert_eq!(PageKind::of(&get, &uri("http://h/b/key")), None);
        assert_eq!(
            PageKind::of(&http::Method::PUT, &uri("http://h/b?list-type=2")),
            None
        );
    }

    #[test]
    fn pages_are_scanned_as_object_store_lists_them() {
        let s3 = br#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Name>b</Name><Prefix>p/</Prefix><KeyCount>3</KeyCount>
  <Contents><Key>p/a&amp;b.txt</Key><Size>5</Size><ETag>"x"</ETag></Contents>
  <Contents><Key>/abs.txt</Key><Size>1</Size></Contents>
  <CommonPrefixes><Prefix>ignored/</Prefix></CommonPrefixes>
  <Contents><Key>p/e/</Key><Size>0</Size></Contents>
</ListBucketResult>"#;
        let keys = PageKind::S3.scan(s3).unwrap();
        let names: Vec<_> = keys.iter().map(|k| (k.key.as_str(), k.size)).collect();
        assert_eq!(names, [("p/a&b.txt", 5), ("/abs.txt", 1), ("p/e/", 0)]);

        let azure = br#"<?xml version="1.0" encoding="utf-8"?>
<EnumerationResults ServiceEndpoint="http://a/" ContainerName="c">
  <Prefix>p/</Prefix>
  <Blobs>
    <Blob><Name>p/</Name><Properties><Content-Length>0</Content-Length></Properties></Blob>
    <Blob><Name>p/d</Name><Properties><Content-Length>0</Content-Length><ResourceType>directory</ResourceType></Properties></Blob>
    <Blob><Name>p/x.bin</Name><Properties><Content-Length>9</Content-Length></Properties></Blob>
  </Blobs>
  <NextMarker />
</EnumerationResults>"#;
        let kind = PageKind::Azure {
            prefix: "p/".into(),
        };
        let keys = kind.scan(azure).unwrap();
        assert_eq!(
            keys,
            [RawKey {
                key: "p/x.bin".into(),
                size: 9
            }]
        );
        assert!(
            PageKind::S3.scan(b"<html>").is_err()
                || PageKind::S3.scan(b"<html>").unwrap().is_empty()
        );
    }

    #[test]
    fn reports_count_keys_markers_and_the_first_unusable_ones() {
        let mut report = KeyReport::default();
        report.record(Ok(vec![
            RawKey {
                key: "p/a".into(),
                size: 1,
            },
            RawKey {
                key: "p/d/".into(),
                size: 0,
            },
            RawKey {
                key: "/p".into(),
                size: 1,
            },
        ]));
        report.record(Err("bad page".into()));
        assert_eq!(report.keys, 3);
        assert!(report.markers.contains("p/d"));
        assert_eq!(report.unusable.len(), 1);
        assert_eq!(report.unusable[0].0, "/p");
        assert_eq!(report.failed.as_deref(), Some("bad page"));
    }

    #[tokio::test]
    async fn answers_are_read_up_to_their_bound() {
        let page = Bytes::from(vec![b'x'; MAX_PAGE_BYTES]);
        let read = read_capped(page.clone().into(), MAX_PAGE_BYTES)
            .await
            .unwrap();
        assert_eq!(read.len(), MAX_PAGE_BYTES);
        let over = Bytes::from(vec![b'x'; MAX_PAGE_BYTES + 1]);
        let err = read_capped(over.into(), MAX_PAGE_BYTES).await.unwrap_err();
        assert!(
            err.to_string().contains("larger than 16777216 bytes"),
            "{err}"
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Any key: a verdict, never a panic; a plain key is exactly the
            /// name `object_store` lists, a marker's name is the key less
            /// its `/`.
            #[test]
            fn every_key_gets_a_verdict_that_round_trips(key in any::<String>(), size in 0u64..3) {
                match judge(&key, size) {
                    KeyVerdict::Plain => {
                        let path = object_store::path::Path::parse(&key).unwrap();
                        prop_assert_eq!(path.as_ref(), key.as_str());
                    }
                    KeyVerdict::DirectoryMarker(name) => {
                        prop_assert_eq!(size, 0);
                        prop_assert_eq!(format!("{name}/"), key.clone());
                        let path = object_store::path::Path::parse(&name).unwrap();
                        prop_assert_eq!(path.as_ref(), name.as_str());
                    }
                    KeyVerdict::Unusable(message) => {
                        let named = format!("{key:?}");
                        prop_assert!(message.contains(&named));
                    }
                }
            }

            /// Arbitrary bytes as a listing page: an answer or an error,
            /// never a panic.
            #[test]
            fn arbitrary_pages_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
                let _ = PageKind::S3.scan(&body);
                let _ = PageKind::Azure { prefix: "p".into() }.scan(&body);
            }

            /// Keys written into an S3 page (XML-escaped) are read back as
            /// they were.
            #[test]
            fn s3_pages_round_trip(keys in proptest::collection::vec("[ -~]{1,30}", 0..8)) {
                let mut xml = String::from("<ListBucketResult>");
                for (i, k) in keys.iter().enumerate() {
                    let escaped = k.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
                    xml.push_str(&format!("<Contents><Key>{escaped}</Key><Size>{i}</Size></Contents>"));
                }
                xml.push_str("</ListBucketResult>");
                let got = PageKind::S3.scan(xml.as_bytes()).unwrap();
                let want: Vec<RawKey> = keys
                    .iter()
                    .enumerate()
                    .map(|(i, k)| RawKey { key: k.clone(), size: i as u64 })
                    .collect();
                prop_assert_eq!(got, want);
            }
        }
    }
}
