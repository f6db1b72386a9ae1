//! S3, GCS and Azure through `object_store`. Its own retries are off: the
//! shared [`Budget`] retries, times out and paces every backend alike.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::{GcpCredential, GoogleCloudStorageBuilder};
use object_store::path::Path;
use object_store::{
    ClientOptions, GetOptions, GetRange, ObjectMeta, ObjectStore, RetryConfig,
    StaticCredentialProvider,
};
use swarmseed_proto::pb::{FileEntry, Origin};

use super::keys::{KeyCheckConnector, KeyLog};
use super::transfer::{Budget, check_etag};
use super::{OriginError, OriginOptions, OriginUri, PathFilter, Tally, credential, redact_queries};

pub(crate) struct StoreOrigin {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    /// The raw keys of the listing pages the store's client received.
    keys: KeyLog,
    /// One listing at a time per client: they share `keys`.
    listing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for StoreOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreOrigin")
            .field("store", &self.store.to_string())
            .field("prefix", &self.prefix.as_ref())
            .finish()
    }
}

fn client_options(origin: &Origin, options: &OriginOptions) -> ClientOptions {
    // The request timeout is enforced per wait by the budget: a total
    // timeout would cut slow, bandwidth-limited reads of large ranges.
    ClientOptions::new()
        .with_connect_timeout(options.connect_timeout)
        .with_timeout_disabled()
        .with_allow_http(origin.allow_http)
}

fn no_retries() -> RetryConfig {
    RetryConfig {
        max_retries: 0,
        ..RetryConfig::default()
    }
}

impl StoreOrigin {
    pub(crate) fn new(
        origin: &Origin,
        options: &OriginOptions,
        uri: OriginUri,
    ) -> Result<Self, OriginError> {
        // object_store's HTTP client has no crypto provider of its own.
        super::install_crypto_provider();
        let invalid = |reason: String| OriginError::invalid_uri(&origin.uri, reason);
        let endpoint = Some(origin.endpoint.trim()).filter(|e| !e.is_empty());
        let keys = KeyLog::default();
        let connector = || KeyCheckConnector { log: keys.clone() };
        let (store, prefix): (Arc<dyn ObjectStore>, String) = match uri {
            OriginUri::S3 { bucket, prefix } => {
                let from_env = credential(origin, "AWS_CREDENTIALS_FROM_ENVIRONMENT")
                    .is_some_and(|v| v.eq_ignore_ascii_case("true"));
                let mut builder = if from_env {
                    AmazonS3Builder::from_env()
                } else {
                    AmazonS3Builder::new()
                };
                builder = builder
                    .with_bucket_name(bucket)
                    .with_region(
                        Some(origin.region.trim())
                            .filter(|r| !r.is_empty())
                            .unwrap_or("us-east-1"),
                    )
                    .with_allow_http(origin.allow_http)
                    .with_client_options(client_options(origin, options))
                    .with_http_connector(connector())
                    .with_retry(no_retries());
                if let Some(endpoint) = endpoint {
                    // Custom endpoints (MinIO, moto) want path-style requests.
                    builder = builder
                        .with_endpoint(endpoint)
                        .with_virtual_hosted_style_request(false);
                }
                let key = credential(origin, "AWS_ACCESS_KEY_ID");
                let secret = credential(origin, "AWS_SECRET_ACCESS_KEY");
                match (key, secret) {
                    (Some(key), Some(secret)) => {
                        builder = builder
                            .with_access_key_id(key)
                            .with_secret_access_key(secret);
                        if let Some(token) = credential(origin, "AWS_SESSION_TOKEN") {
                            builder = builder.with_token(token);
                        }
                    }
                    (None, None) if !from_env => {
                        // Unsigned requests: never fall back to instance
                        // metadata behind the user's back.
                        builder = builder.with_skip_signature(true);
                    }
                    (None, None) => {}
                    _ => {
                        return Err(invalid(
                            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY go together".into(),
                        ));
                    }
                }
                let store = builder.build().map_err(|e| invalid(e.to_string()))?;
                (Arc::new(store), prefix)
            }
            OriginUri::Gcs { bucket, prefix } => {
                let mut builder = GoogleCloudStorageBuilder::new()
                    .with_bucket_name(bucket)
                    .with_client_options(client_options(origin, options))
                    .with_http_connector(connector())
                    .with_retry(no_retries());
                if let Some(endpoint) = endpoint {
                    builder = builder.with_base_url(endpoint);
                }
                match credential(origin, "GOOGLE_SERVICE_ACCOUNT_KEY") {
                    Some(key) => builder = builder.with_service_account_key(key),
                    None => {
                        // Anonymous: an explicit empty credential keeps the
                        // builder from reading application-default
                        // credentials from this machine.
                        let anonymous = StaticCredentialProvider::new(GcpCredential {
                            bearer: String::new(),
                        });
                        builder = builder
                            .with_credentials(Arc::new(anonymous))
                            .with_skip_signature(true);
                    }
                }
                let store = builder.build().map_err(|e| invalid(e.to_string()))?;
                (Arc::new(store), prefix)
            }
            OriginUri::Azure { container, prefix } => {
                let account =
                    credential(origin, "AZURE_STORAGE_ACCOUNT_NAME").ok_or_else(|| {
                        invalid("az:// needs AZURE_STORAGE_ACCOUNT_NAME in the credentials".into())
                    })?;
                let mut builder = MicrosoftAzureBuilder::new()
                    .with_account(account)
                    .with_container_name(container)
                    .with_allow_http(origin.allow_http)
                    .with_client_options(client_options(origin, options))
                    .with_http_connector(connector())
                    .with_retry(no_retries());
                if let Some(endpoint) = endpoint {
                    builder = builder.with_endpoint(endpoint.to_owned());
                }
                if let Some(key) = credential(origin, "AZURE_STORAGE_ACCOUNT_KEY") {
                    builder = builder.with_access_key(key);
                } else if let Some(sas) = credential(origin, "AZURE_STORAGE_SAS_TOKEN") {
                    builder = builder.with_config(
                        object_store::azure::AzureConfigKey::SasKey,
                        sas.trim_start_matches('?'),
                    );
                } else {
                    builder = builder.with_skip_signature(true);
                }
                let store = builder.build().map_err(|e| invalid(e.to_string()))?;
                (Arc::new(store), prefix)
            }
            OriginUri::Http { .. } | OriginUri::Hf { .. } => {
                return Err(invalid("not an object-store URI".into()));
            }
        };
        let prefix = Path::parse(&prefix).map_err(|e| invalid(e.to_string()))?;
        Ok(Self {
            store,
            prefix,
            keys,
            listing: tokio::sync::Mutex::new(()),
        })
    }

    pub(crate) async fn list(
        &self,
        uri: &str,
        budget: &Budget,
        filter: &PathFilter,
    ) -> Result<(Vec<FileEntry>, Tally), OriginError> {
        let _one_at_a_time = self.listing.lock().await;
        // A listing stream cannot resume mid-way: a transient failure
        // restarts it, with a fresh count.
        budget
            .retry(uri, || async {
                self.keys.reset();
                let listed = self.list_once(uri, budget, filter).await;
                let report = self.keys.take();
                // An unusable key explains a failed listing best (object_store
                // fails on some of them) and is refused in a good one.
                if let Some((key, message)) = report.unusable.into_iter().next() {
                    return Err(OriginError::unusable_name(uri, &key, message));
                }
                let (files, tally, objects) = listed?;
                if let Some(failed) = report.failed {
                    return Err(OriginError::protocol(uri, failed));
                }
                // Every key must have been seen: otherwise the pages were
                // not recognised and their keys went unchecked.
                if report.keys != objects {
                    return Err(OriginError::protocol(
                        uri,
                        format!(
                            "the listing's keys could not be checked ({} keys read, {objects} \
                             objects listed)",
                            report.keys
                        ),
                    ));
                }
                Ok((files, tally))
            })
            .await
    }

    /// One pass over the listing: the files kept, the tally, and how many
    /// objects the store listed.
    async fn list_once(
        &self,
        uri: &str,
        budget: &Budget,
        filter: &PathFilter,
    ) -> Result<(Vec<FileEntry>, Tally, u64), OriginError> {
        let prefix = self.prefix.as_ref();
        let mut stream = self
            .store
            .list((!prefix.is_empty()).then_some(&self.prefix));
        let mut files = Vec::new();
        let mut tally = Tally::default();
        let mut objects = 0u64;
        loop {
            let next = budget.timed(uri, async { Ok(stream.next().await) }).await?;
            let meta = match next {
                None => break,
                Some(Err(e)) => return Err(map_error(uri, e, false)),
                Some(Ok(meta)) => meta,
            };
            objects += 1;
            let location = meta.location.as_ref();
            // Directory markers (the prefix's own among them) are not files.
            let marker = meta.size == 0 && self.keys.is_marker(location);
            tally.listed(uri, 1, u64::from(!marker))?;
            if marker {
                continue;
            }
            let Some(relative) = under_prefix(prefix, location) else {
                return Err(OriginError::protocol(
                    uri,
                    format!("listed {location:?}, which is outside the prefix"),
                ));
            };
            if !filter.accepts(relative) {
                continue;
            }
            let relative = relative.to_owned();
            let entry = entry_of(relative, meta);
            tally.keep(uri, entry_bytes(&entry))?;
            files.push(entry);
        }
        Ok((files, tally, objects))
    }

    pub(crate) async fn read_range(
        &self,
        budget: &Budget,
        file: &FileEntry,
        range: Range<u64>,
    ) -> Result<Bytes, OriginError> {
        let path = file.path.as_str();
        let location = if self.prefix.as_ref().is_empty() {
            Path::parse(path)
        } else {
            Path::parse(format!("{}/{path}", self.prefix.as_ref()))
        }
        .map_err(|e| OriginError::protocol(path, format!("not an object path: {e}")))?;
        let len = range.end - range.start;
        budget
            .retry(path, || async {
                let options = GetOptions {
                    range: Some(GetRange::Bounded(range.clone())),
                    if_match: Some(file.etag.clone()).filter(|e| !e.is_empty()),
                    version: Some(file.version.clone()).filter(|v| !v.is_empty()),
                    ..GetOptions::default()
                };
                let result = budget
                    .timed(path, async {
                        self.store
                            .get_opts(&location, options)
                            .await
                            .map_err(|e| map_error(path, e, true))
                    })
                    .await?;
                // Belt and braces for stores that ignore If-Match.
                check_etag(path, result.meta.e_tag.as_deref(), &file.etag)?;
                if result.meta.size != file.size {
                    return Err(OriginError::changed(path));
                }
                if result.range != range {
                    return Err(OriginError::protocol(
                        path,
                        format!("asked for {range:?}, got {:?}", result.range),
                    ));
                }
                let stream = result.into_stream();
                budget
                    .read_body(path, stream, 0, len, true, |e| map_error(path, e, true))
                    .await
            })
            .await
    }
}

/// The key of `location` relative to `prefix` (both without a leading or
/// trailing `/`); `None` when it is not below it.
pub(crate) fn under_prefix<'a>(prefix: &str, location: &'a str) -> Option<&'a str> {
    if prefix.is_empty() {
        return Some(location);
    }
    location.strip_prefix(prefix)?.strip_prefix('/')
}

/// The file a listed object becomes (`relative`: its key under the prefix,
/// checked to round-trip by [`super::keys`]).
pub(crate) fn entry_of(relative: String, meta: ObjectMeta) -> FileEntry {
    FileEntry {
        path: relative,
        size: meta.size,
        mode: 0,
        etag: meta.e_tag.unwrap_or_default(),
        version: meta.version.unwrap_or_default(),
        // Stores pin reads by ETag (and version): both change with the
        // content, so no digest is needed to notice a rewrite.
        checksum: String::new(),
    }
}

/// What one entry adds to the listing's size ([`Tally::keep`]).
pub(crate) fn entry_bytes(entry: &FileEntry) -> usize {
    entry.path.len() + entry.etag.len() + entry.version.len() + entry.checksum.len()
}

fn map_error(path: &str, error: object_store::Error, reading: bool) -> OriginError {
    use object_store::Error as E;
    match error {
        // A listed object that is gone has changed.
        E::NotFound { .. } if reading => OriginError::changed(path),
        E::NotFound { .. } => OriginError::NotFound {
            path: path.to_owned(),
        },
        E::Precondition { .. } | E::NotModified { .. } => OriginError::changed(path),
        E::PermissionDenied { source, .. } | E::Unauthenticated { source, .. } => {
            OriginError::denied(path, redact_queries(&source.to_string()))
        }
        E::InvalidPath { source } => OriginError::protocol(path, source.to_string()),
        E::NotSupported { source } => OriginError::protocol(path, source.to_string()),
        E::UnknownConfigurationKey { key, .. } => {
            OriginError::protocol(path, format!("unknown configuration key {key}"))
        }
        // object_store reports other statuses (a missing bucket's 404
        // while listing, 5xx, 429) as generic errors whose message carries
        // the status; without one it was the network.
        other => {
            let message = redact_queries(&other.to_string());
            match status_in(&message) {
                Some(status) => {
                    let error = super::request::status_error(path, status, reading);
                    match error {
                        OriginError::Denied { .. }
                        | OriginError::Unavailable { .. }
                        | OriginError::Protocol { .. } => with_message(error, message),
                        error => error,
                    }
                }
                None => OriginError::unavailable(path, message),
            }
        }
    }
}

/// The HTTP status in an object_store error message
/// ("... non-2xx status code: 404 Not Found ...").
fn status_in(message: &str) -> Option<reqwest::StatusCode> {
    let (_, after) = message.split_once("status code: ")?;
    let code = after.get(..3)?.parse::<u16>().ok()?;
    reqwest::StatusCode::from_u16(code).ok()
}

fn with_message(error: OriginError, message: String) -> OriginError {
    match error {
        OriginError::Denied { path, .. } => OriginError::Denied { path, message },
        OriginError::Unavailable { path, .. } => OriginError::Unavailable { path, message },
        OriginError::Protocol { path, .. } => OriginError::Protocol { path, message },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(uri: &str, creds: &[(&str, &str)]) -> Origin {
        Origin {
            uri: uri.into(),
            credentials: creds
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    fn build(origin: &Origin) -> Result<StoreOrigin, OriginError> {
        let uri = OriginUri::parse(&origin.uri)?;
        StoreOrigin::new(origin, &OriginOptions::default(), uri)
    }

    #[test]
    fn builders_accept_documented_credentials() {
        let s3 = build(&origin(
            "s3://bucket/pre/fix",
            &[
                ("AWS_ACCESS_KEY_ID", "k"),
                ("AWS_SECRET_ACCESS_KEY", "s"),
                ("AWS_SESSION_TOKEN", "t"),
            ],
        ))
        .unwrap();
        assert_eq!(s3.prefix.as_ref(), "pre/fix");
        assert!(s3.store.to_string().contains("bucket"), "{}", s3.store);
        build(&origin("s3://bucket", &[])).unwrap();
        let err = build(&origin("s3://bucket", &[("AWS_ACCESS_KEY_ID", "k")])).unwrap_err();
        assert_eq!(err.label(), "invalid_uri");

        let gcs = build(&origin("gs://bkt/p", &[])).unwrap();
        assert!(gcs.store.to_string().contains("bkt"), "{}", gcs.store);
        let err = build(&origin(
            "gs://bkt/p",
            &[("GOOGLE_SERVICE_ACCOUNT_KEY", "not json")],
        ))
        .unwrap_err();
        assert_eq!(err.label(), "invalid_uri");

        let az = build(&origin(
            "az://ctr/p",
            &[
                ("AZURE_STORAGE_ACCOUNT_NAME", "acct"),
                ("AZURE_STORAGE_ACCOUNT_KEY", "a2V5"),
            ],
        ))
        .unwrap();
        assert!(az.store.to_string().contains("ctr"), "{}", az.store);
        build(&origin(
            "az://ctr/p",
            &[
                ("AZURE_STORAGE_ACCOUNT_NAME", "acct"),
                ("AZURE_STORAGE_SAS_TOKEN", "?sv=1&sig=x"),
            ],
        ))
        .unwrap();
        let err = build(&origin("az://ctr/p", &[])).unwrap_err();
        assert_eq!(err.label(), "invalid_uri");
    }

    #[test]
    fn plain_http_endpoints_need_allow_http() {
        let mut o = origin("s3://bucket/p", &[]);
        o.endpoint = "http://127.0.0.1:9".into();
        // object_store refuses http:// only when a request is made; the
        // flag must reach the builder either way.
        build(&o).unwrap();
        o.allow_http = true;
        build(&o).unwrap();
    }

    #[test]
    fn errors_map_to_what_users_see() {
        let boxed = || -> Box<dyn std::error::Error + Send + Sync> { "x".into() };
        let nf = || object_store::Error::NotFound {
            path: "p".into(),
            source: boxed(),
        };
        assert_eq!(map_error("f", nf(), true).label(), "changed");
        assert_eq!(map_error("f", nf(), false).label(), "not_found");
        let pre = object_store::Error::Precondition {
            path: "p".into(),
            source: boxed(),
        };
        assert_eq!(map_error("f", pre, true).label(), "changed");
        let denied = object_store::Error::PermissionDenied {
            path: "p".into(),
            source: boxed(),
        };
        assert_eq!(map_error("f", denied, true).label(), "denied");
        let unauth = object_store::Error::Unauthenticated {
            path: "p".into(),
            source: boxed(),
        };
        assert_eq!(map_error("f", unauth, true).label(), "denied");
        let generic = object_store::Error::Generic {
            store: "S3",
            source: boxed(),
        };
        assert_eq!(map_error("f", generic, true).label(), "unavailable");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn segment() -> impl Strategy<Value = String> {
            "[^/\\x00-\\x1f\\x7f]{1,12}".prop_filter("dot segments", |s| s != "." && s != "..")
        }

        fn key() -> impl Strategy<Value = String> {
            proptest::collection::vec(segment(), 1..4).prop_map(|v| v.join("/"))
        }

        proptest! {
            /// Any prefix and location: an answer, never a panic; what is
            /// below the prefix joins back into the location.
            #[test]
            fn arbitrary_locations_never_panic(prefix in any::<String>(), location in any::<String>()) {
                if let Some(relative) = under_prefix(&prefix, &location) {
                    let joined = if prefix.is_empty() {
                        relative.to_owned()
                    } else {
                        format!("{prefix}/{relative}")
                    };
                    prop_assert_eq!(joined, location);
                }
            }

            /// A listed object becomes the file of its key under the prefix,
            /// with its size, ETag and version, and reads go back to the
            /// same key.
            #[test]
            fn listed_objects_round_trip(
                prefix in proptest::option::of(key()),
                relative in key(),
                size in any::<u64>(),
                e_tag in proptest::option::of("[ -~]{0,40}"),
                version in proptest::option::of("[ -~]{0,40}"),
            ) {
                let prefix = prefix.unwrap_or_default();
                let key = if prefix.is_empty() { relative.clone() } else { format!("{prefix}/{relative}") };
                let location = Path::parse(&key).unwrap();
                prop_assert_eq!(location.as_ref(), key.as_str());
                let meta = ObjectMeta {
                    location: location.clone(),
                    last_modified: Default::default(),
                    size,
                    e_tag: e_tag.clone(),
                    version: version.clone(),
                };
                let under = under_prefix(&prefix, location.as_ref()).unwrap().to_owned();
                let file = entry_of(under, meta);
                prop_assert_eq!(&file.path, &relative);
                prop_assert_eq!(file.size, size);
                prop_assert_eq!(file.etag, e_tag.unwrap_or_default());
                prop_assert_eq!(file.version, version.unwrap_or_default());
                let read_back = if prefix.is_empty() {
                    Path::parse(&file.path).unwrap()
                } else {
                    Path::parse(format!("{prefix}/{}", file.path)).unwrap()
                };
                prop_assert_eq!(read_back, location);
            }
        }
    }
}
