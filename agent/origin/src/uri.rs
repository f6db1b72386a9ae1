//! Parsing of `Origin.uri` into what each backend needs. Pure: no I/O.

use url::Url;

use super::OriginError;

/// A Hugging Face repository type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HfKind {
    Model,
    Dataset,
    Space,
}

impl HfKind {
    /// Path segment of the API (`/api/models/...`).
    pub fn api_segment(self) -> &'static str {
        match self {
            Self::Model => "models",
            Self::Dataset => "datasets",
            Self::Space => "spaces",
        }
    }

    /// Prefix of the resolve URL (`/datasets/{repo}/resolve/...`); models
    /// have none.
    pub fn resolve_prefix(self) -> &'static str {
        match self {
            Self::Model => "",
            Self::Dataset => "datasets/",
            Self::Space => "spaces/",
        }
    }
}

/// A parsed origin URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginUri {
    /// `s3://`, `gs://`, `az://`: a bucket (container) and a key prefix
    /// without leading or trailing `/` (empty: the whole bucket).
    S3 {
        bucket: String,
        prefix: String,
    },
    Gcs {
        bucket: String,
        prefix: String,
    },
    Azure {
        container: String,
        prefix: String,
    },
    /// `http(s)://`: one file, or a directory when the path ends in `/`.
    Http {
        url: Url,
        directory: bool,
    },
    /// `hf://[datasets/|spaces/|models/]org/repo[@revision][/sub/dir]`.
    Hf {
        kind: HfKind,
        repo: String,
        revision: String,
        subdir: String,
    },
}

pub const DEFAULT_HF_REVISION: &str = "main";

impl OriginUri {
    pub fn parse(uri: &str) -> Result<Self, OriginError> {
        let invalid = |reason: &str| OriginError::invalid_uri(uri, reason);
        let Some((scheme, rest)) = uri.split_once("://") else {
            return Err(invalid("expected scheme://..."));
        };
        match scheme {
            "s3" | "gs" | "az" => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(invalid("missing bucket name"));
                }
                if bucket.contains(['?', '#', '@', ':']) {
                    return Err(invalid("bucket name has a forbidden character"));
                }
                let prefix = prefix.trim_matches('/');
                check_prefix(prefix).map_err(invalid)?;
                let (bucket, prefix) = (bucket.to_owned(), prefix.to_owned());
                Ok(match scheme {
                    "s3" => Self::S3 { bucket, prefix },
                    "gs" => Self::Gcs { bucket, prefix },
                    _ => Self::Azure {
                        container: bucket,
                        prefix,
                    },
                })
            }
            "http" | "https" => {
                let url = Url::parse(uri).map_err(|e| invalid(&e.to_string()))?;
                if url.host_str().is_none_or(str::is_empty) {
                    return Err(invalid("missing host"));
                }
                if url.fragment().is_some() {
                    return Err(invalid("a fragment (#...) is not allowed"));
                }
                // A query (presigned URLs) is kept and sent as is; names come
                // from the path.
                let directory = url.path().ends_with('/');
                Ok(Self::Http { url, directory })
            }
            "hf" => parse_hf(rest).map_err(invalid),
            other => Err(OriginError::Unsupported {
                uri: uri.to_owned(),
                reason: format!("scheme {other:?} is not one of s3, gs, az, http, https, hf"),
            }),
        }
    }
}

/// Key prefixes become object-store paths: no empty, `.` or `..` segments.
fn check_prefix(prefix: &str) -> Result<(), &'static str> {
    if prefix.is_empty() {
        return Ok(());
    }
    for segment in prefix.split('/') {
        if segment.is_empty() {
            return Err("the prefix has an empty segment (//)");
        }
        if segment == "." || segment == ".." {
            return Err("the prefix has a '.' or '..' segment");
        }
    }
    Ok(())
}

fn parse_hf(rest: &str) -> Result<OriginUri, &'static str> {
    let (kind, rest) = if let Some(r) = rest.strip_prefix("datasets/") {
        (HfKind::Dataset, r)
    } else if let Some(r) = rest.strip_prefix("spaces/") {
        (HfKind::Space, r)
    } else if let Some(r) = rest.strip_prefix("models/") {
        (HfKind::Model, r)
    } else {
        (HfKind::Model, rest)
    };
    // The repository id ends at '@' (a revision follows) or after two
    // segments ("org/name"); a one-segment id ("gpt2") is a legacy model.
    let (repo_and_sub, revision_and_sub) = match rest.split_once('@') {
        Some((repo, after)) => (repo, Some(after)),
        None => (rest, None),
    };
    let mut segments: Vec<&str> = repo_and_sub.split('/').collect();
    if segments.last() == Some(&"") {
        segments.pop();
    }
    if segments.is_empty() || segments.iter().any(|s| s.is_empty()) {
        return Err("expected hf://[datasets/|spaces/]org/repo[@revision]");
    }
    let (repo, mut subdir): (Vec<&str>, Vec<&str>) = match revision_and_sub {
        // With '@', everything before it is the repository.
        Some(_) => (segments, Vec::new()),
        None => {
            let n = segments.len().min(2);
            let sub = segments.split_off(n);
            (segments, sub)
        }
    };
    if repo.len() > 2 {
        return Err("a repository id has at most two segments (org/name)");
    }
    for segment in &repo {
        if !segment
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            || segment.starts_with('.')
        {
            return Err("repository ids use only letters, digits, '-', '_' and '.'");
        }
    }
    let mut revision = DEFAULT_HF_REVISION.to_owned();
    if let Some(after) = revision_and_sub {
        let after = after.trim_end_matches('/');
        // Pull-request and conversion refs contain slashes; everything else
        // is one segment (percent-encode other slashes: %2F).
        let take = if after.starts_with("refs/pr/") || after.starts_with("refs/convert/") {
            3
        } else {
            1
        };
        let parts: Vec<&str> = after.splitn(take + 1, '/').collect();
        let rev_parts = &parts[..parts.len().min(take)];
        let raw = rev_parts.join("/");
        revision = percent_decode(&raw).ok_or("the revision is not valid percent-encoded UTF-8")?;
        if revision.is_empty() {
            return Err("empty revision after '@'");
        }
        if parts.len() > take {
            subdir = parts[take].split('/').collect();
        }
    }
    for segment in &subdir {
        if segment.is_empty() || *segment == "." || *segment == ".." {
            return Err("the path inside the repository has an empty, '.' or '..' segment");
        }
    }
    Ok(OriginUri::Hf {
        kind,
        repo: repo.join("/"),
        revision,
        subdir: subdir.join("/"),
    })
}

pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarmseed_proto::Reason;

    fn hf(kind: HfKind, repo: &str, revision: &str, subdir: &str) -> OriginUri {
        OriginUri::Hf {
            kind,
            repo: repo.into(),
            revision: revision.into(),
            subdir: subdir.into(),
        }
    }

    #[test]
    fn object_store_uris() {
        assert_eq!(
            OriginUri::parse("s3://bucket/some/prefix/").unwrap(),
            OriginUri::S3 {
                bucket: "bucket".into(),
                prefix: "some/prefix".into()
            }
        );
        assert_eq!(
            OriginUri::parse("s3://bucket").unwrap(),
            OriginUri::S3 {
                bucket: "bucket".into(),
                prefix: String::new()
            }
        );
        assert_eq!(
            OriginUri::parse("gs://b/p").unwrap(),
            OriginUri::Gcs {
                bucket: "b".into(),
                prefix: "p".into()
            }
        );
        assert_eq!(
            OriginUri::parse("az://container/x/y").unwrap(),
            OriginUri::Azure {
                container: "container".into(),
                prefix: "x/y".into()
            }
        );
        for bad in [
            "s3://",
            "s3:///prefix",
            "s3://b/a//c",
            "s3://b/../etc",
            "gs://b/./x",
        ] {
            let err = OriginUri::parse(bad).unwrap_err();
            assert_eq!(err.label(), "invalid_uri", "{bad}: {err}");
        }
    }

    #[test]
    fn http_uris() {
        let OriginUri::Http { url, directory } =
            OriginUri::parse("https://example.org/data/").unwrap()
        else {
            panic!("not http")
        };
        assert!(directory);
        assert_eq!(url.as_str(), "https://example.org/data/");
        let OriginUri::Http { directory, .. } =
            OriginUri::parse("http://127.0.0.1:8080/file.bin").unwrap()
        else {
            panic!("not http")
        };
        assert!(!directory);
        assert_eq!(
            OriginUri::parse("http://:80/x").unwrap_err().label(),
            "invalid_uri"
        );
        assert_eq!(
            OriginUri::parse("http://h/x#frag").unwrap_err().label(),
            "invalid_uri"
        );
    }

    #[test]
    fn hf_uris() {
        use HfKind::*;
        let cases = [
            ("hf://org/repo", hf(Model, "org/repo", "main", "")),
            ("hf://gpt2", hf(Model, "gpt2", "main", "")),
            ("hf://org/repo@v1.0", hf(Model, "org/repo", "v1.0", "")),
            ("hf://models/org/repo", hf(Model, "org/repo", "main", "")),
            ("hf://datasets/org/ds@abc", hf(Dataset, "org/ds", "abc", "")),
            ("hf://spaces/org/app", hf(Space, "org/app", "main", "")),
            (
                "hf://org/repo/sub/dir",
                hf(Model, "org/repo", "main", "sub/dir"),
            ),
            ("hf://org/repo@dev/sub", hf(Model, "org/repo", "dev", "sub")),
            (
                "hf://org/repo@refs/pr/3/sub",
                hf(Model, "org/repo", "refs/pr/3", "sub"),
            ),
            (
                "hf://org/repo@feature%2Fx",
                hf(Model, "org/repo", "feature/x", ""),
            ),
        ];
        for (uri, want) in cases {
            assert_eq!(OriginUri::parse(uri).unwrap(), want, "{uri}");
        }
        for bad in [
            "hf://",
            "hf://org//repo",
            "hf://org/re po",
            "hf://org/repo@",
            "hf://a/b/c@main",
            "hf://org/repo/../x",
            "hf://org/repo@%zz",
        ] {
            let err = OriginUri::parse(bad).unwrap_err();
            assert_eq!(err.label(), "invalid_uri", "{bad}: {err}");
        }
    }

    #[test]
    fn unknown_schemes_are_unsupported() {
        let err = OriginUri::parse("ftp://host/x").unwrap_err();
        assert_eq!(err.label(), "unsupported");
        assert_eq!(err.reason(), Reason::InvalidSource);
        assert_eq!(
            OriginUri::parse("/local/path").unwrap_err().label(),
            "invalid_uri"
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn name() -> impl Strategy<Value = String> {
            "[a-z0-9][a-z0-9._-]{0,20}".prop_filter("dot names", |s| !s.starts_with('.'))
        }

        fn key_segment() -> impl Strategy<Value = String> {
            "[^/?#\\x00]{1,12}".prop_filter("dot segments", |s| s != "." && s != "..")
        }

        proptest! {
            /// Any string: a URI or an error that says why, never a panic.
            #[test]
            fn arbitrary_uris_never_panic(uri in any::<String>()) {
                match OriginUri::parse(&uri) {
                    Ok(_) => {}
                    Err(e) => prop_assert_eq!(e.reason(), Reason::InvalidSource),
                }
                let _ = percent_decode(&uri);
            }

            /// Anything after a known scheme: also never a panic.
            #[test]
            fn arbitrary_tails_never_panic(
                scheme in prop::sample::select(vec!["s3", "gs", "az", "http", "https", "hf"]),
                tail in any::<String>(),
            ) {
                let _ = OriginUri::parse(&format!("{scheme}://{tail}"));
            }

            /// Buckets and prefixes come back as written (less the slashes
            /// around the prefix).
            #[test]
            fn object_store_uris_round_trip(
                scheme in prop::sample::select(vec!["s3", "gs", "az"]),
                bucket in name(),
                prefix in proptest::collection::vec(key_segment(), 0..4),
                trailing in any::<bool>(),
            ) {
                let joined = prefix.join("/");
                let slash = if trailing { "/" } else { "" };
                let uri = format!("{scheme}://{bucket}/{joined}{slash}");
                let (b, p) = match OriginUri::parse(&uri).unwrap() {
                    OriginUri::S3 { bucket, prefix } | OriginUri::Gcs { bucket, prefix } => (bucket, prefix),
                    OriginUri::Azure { container, prefix } => (container, prefix),
                    other => panic!("{other:?}"),
                };
                prop_assert_eq!(b, bucket);
                prop_assert_eq!(p, joined);
            }

            /// Hub URIs: kind, repository, revision and subdirectory come
            /// back as written.
            #[test]
            fn hf_uris_round_trip(
                kind in prop::sample::select(vec![("", HfKind::Model), ("models/", HfKind::Model), ("datasets/", HfKind::Dataset), ("spaces/", HfKind::Space)]),
                org in name(),
                repo in name(),
                revision in proptest::option::of("[a-zA-Z0-9._-]{1,12}"),
                subdir in proptest::collection::vec("[a-z0-9_-]{1,8}", 0..3),
            ) {
                let (prefix, want_kind) = kind;
                let mut uri = format!("hf://{prefix}{org}/{repo}");
                if let Some(r) = &revision {
                    uri.push('@');
                    uri.push_str(r);
                }
                for s in &subdir {
                    uri.push('/');
                    uri.push_str(s);
                }
                let parsed = OriginUri::parse(&uri).unwrap();
                prop_assert_eq!(
                    parsed,
                    OriginUri::Hf {
                        kind: want_kind,
                        repo: format!("{org}/{repo}"),
                        revision: revision.unwrap_or_else(|| DEFAULT_HF_REVISION.to_owned()),
                        subdir: subdir.join("/"),
                    }
                );
            }
        }
    }
}
