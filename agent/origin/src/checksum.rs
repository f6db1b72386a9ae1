//! Whole-file digests an origin offers besides its validator (ETag,
//! Last-Modified), and checking bytes against them.
//!
//! An ETag only says "the same version" as far as the server knows: nginx
//! and Apache make theirs from the modification time and size, so a file
//! rewritten in place within the same second and at the same size keeps
//! it. A digest of the content does not have that hole. Where an origin
//! offers one, the listing records it ([`Checksum::to_listed`], in
//! `FileEntry.checksum`) and reads check it: every answer that repeats a
//! digest of the whole file must repeat the listed one, and a read that
//! covers the whole file is hashed. Both cost nothing on the seeding path of
//! a source that offers no digest.
//!
//! Understood, strongest first (a header that does not parse is ignored):
//!
//! | header | form | describes |
//! | --- | --- | --- |
//! | `Repr-Digest` (RFC 9530) | `sha-512=:<base64>:, sha-256=:<base64>:` | the whole file, also in a 206 |
//! | `Digest` (RFC 3230) | `SHA-512=<base64>, SHA-256=<base64>, MD5=<base64>` | the whole file, also in a 206 |
//! | `x-amz-checksum-sha256` | `<base64>` (not a multipart `…-N` checksum) | the whole object |
//! | `x-goog-hash` | `crc32c=<base64>, md5=<base64>` | the whole object |
//! | `Content-MD5` (RFC 1864) | `<base64>` | the body sent: used only from a HEAD or a whole-file answer |

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use md5::Digest as _;
use reqwest::header::HeaderMap;

/// Digest algorithms understood, weakest first (so `max` is the strongest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Algorithm {
    /// Git's blob id: SHA-1 of `blob <size>\0` and the content (the Hub's
    /// id of a file stored in git). Never read from a header.
    GitSha1,
    Md5,
    Sha256,
    Sha512,
}

impl Algorithm {
    /// The prefix in `FileEntry.checksum`.
    fn label(self) -> &'static str {
        match self {
            Self::GitSha1 => "git-sha1",
            Self::Md5 => "md5",
            Self::Sha256 => "sha256",
            Self::Sha512 => "sha512",
        }
    }

    fn from_label(label: &str) -> Option<Self> {
        match label {
            "git-sha1" => Some(Self::GitSha1),
            "md5" => Some(Self::Md5),
            "sha256" => Some(Self::Sha256),
            "sha512" => Some(Self::Sha512),
            _ => None,
        }
    }

    fn len(self) -> usize {
        match self {
            Self::GitSha1 => 20,
            Self::Md5 => 16,
            Self::Sha256 => 32,
            Self::Sha512 => 64,
        }
    }
}

/// A digest of a whole file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Checksum {
    pub(crate) algorithm: Algorithm,
    digest: Vec<u8>,
}

impl Checksum {
    /// `None` unless `digest` has the algorithm's length.
    pub(crate) fn new(algorithm: Algorithm, digest: Vec<u8>) -> Option<Self> {
        (digest.len() == algorithm.len()).then_some(Self { algorithm, digest })
    }

    /// The digest of `bytes`.
    pub(crate) fn of(algorithm: Algorithm, bytes: &[u8]) -> Self {
        let digest = match algorithm {
            Algorithm::GitSha1 => {
                let mut h = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
                h.update(format!("blob {}\0", bytes.len()).as_bytes());
                h.update(bytes);
                h.finish().as_ref().to_vec()
            }
            Algorithm::Md5 => md5::Md5::digest(bytes).to_vec(),
            Algorithm::Sha256 => ring::digest::digest(&ring::digest::SHA256, bytes)
                .as_ref()
                .to_vec(),
            Algorithm::Sha512 => ring::digest::digest(&ring::digest::SHA512, bytes)
                .as_ref()
                .to_vec(),
        };
        Self { algorithm, digest }
    }

    /// The form `FileEntry.checksum` holds: `sha256:<hex>`.
    pub(crate) fn to_listed(&self) -> String {
        format!("{}:{}", self.algorithm.label(), hex::encode(&self.digest))
    }

    /// Parses `FileEntry.checksum`; `None` for the empty string and for
    /// anything this build does not know.
    pub(crate) fn from_listed(listed: &str) -> Option<Self> {
        let (label, digest) = listed.split_once(':')?;
        let algorithm = Algorithm::from_label(label)?;
        // Bounded before decoding: the longest digest is 64 bytes.
        if digest.len() != 2 * algorithm.len() {
            return None;
        }
        Self::new(algorithm, hex::decode(digest).ok()?)
    }

    /// Whether `bytes` (a whole file) have this digest.
    pub(crate) fn matches(&self, bytes: &[u8]) -> bool {
        Self::of(self.algorithm, bytes) == *self
    }

    /// [`Self::matches`], off the async workers for large files (a file
    /// read whole is at most one chunk, up to 256 MiB).
    pub(crate) async fn matches_whole(&self, bytes: &Bytes) -> bool {
        if bytes.len() <= INLINE_HASH_BYTES {
            return self.matches(bytes);
        }
        let (this, bytes) = (self.clone(), bytes.clone());
        tokio::task::spawn_blocking(move || this.matches(&bytes))
            .await
            // A hashing thread that died proves nothing: refuse the bytes.
            .unwrap_or(false)
    }
}

/// Files up to this size are hashed where they were read (well under a
/// millisecond); larger ones on a blocking thread.
const INLINE_HASH_BYTES: usize = 256 << 10;

/// Header values longer than this are not digests of anything understood
/// here (a SHA-512 in base64 is 88 characters); they are ignored unparsed.
const MAX_HEADER_LEN: usize = 1024;

/// Every whole-file digest `headers` offer. `whole_body`: the answer's body
/// is the whole file (a HEAD, a 200, or a 206 of every byte), so
/// `Content-MD5` describes the file too.
pub(crate) fn offered(headers: &HeaderMap, whole_body: bool) -> Vec<Checksum> {
    let mut out = Vec::new();
    let mut each = |name: &str, parse: fn(&str) -> Vec<Checksum>| {
        for value in headers.get_all(name) {
            if let Ok(value) = value.to_str() {
                out.extend(parse(value));
            }
        }
    };
    each("repr-digest", parse_repr_digest);
    each("digest", parse_digest);
    each("x-amz-checksum-sha256", parse_amz_sha256);
    each("x-goog-hash", parse_goog_hash);
    if whole_body {
        each("content-md5", parse_content_md5);
    }
    out
}

/// The strongest digest `headers` offer (what a listing records).
pub(crate) fn strongest(headers: &HeaderMap, whole_body: bool) -> Option<Checksum> {
    offered(headers, whole_body)
        .into_iter()
        .max_by_key(|c| c.algorithm)
}

/// Whether an answer contradicts the listed checksum: it offers a digest
/// of the same algorithm that differs.
pub(crate) fn contradicts(listed: &Checksum, headers: &HeaderMap, whole_body: bool) -> bool {
    offered(headers, whole_body)
        .iter()
        .any(|c| c.algorithm == listed.algorithm && c != listed)
}

fn base64(value: &str) -> Option<Vec<u8>> {
    let value = value.trim();
    if value.len() > MAX_HEADER_LEN {
        return None;
    }
    STANDARD.decode(value).ok()
}

/// The members `key=value` of a comma-separated header value, each read as
/// a digest by `read` (`None`: not one understood here).
fn members(value: &str, read: impl Fn(&str, &str) -> Option<Checksum>) -> Vec<Checksum> {
    if value.len() > MAX_HEADER_LEN {
        return Vec::new();
    }
    value
        .split(',')
        .filter_map(|member| {
            let (key, digest) = member.split_once('=')?;
            read(key.trim(), digest.trim())
        })
        .collect()
}

/// RFC 9530 `Repr-Digest`: a dictionary of `algorithm=:base64:`.
pub(crate) fn parse_repr_digest(value: &str) -> Vec<Checksum> {
    members(value, |key, digest| {
        let algorithm = match key {
            "sha-256" => Algorithm::Sha256,
            "sha-512" => Algorithm::Sha512,
            _ => return None,
        };
        // Parameters (`;…`) may follow the byte sequence.
        let bytes = digest.split(';').next()?.trim();
        let inner = bytes.strip_prefix(':')?.strip_suffix(':')?;
        Checksum::new(algorithm, base64(inner)?)
    })
}

/// RFC 3230 `Digest`: `algorithm=base64`, algorithm names case-insensitive.
pub(crate) fn parse_digest(value: &str) -> Vec<Checksum> {
    members(value, |key, digest| {
        let algorithm = match key.to_ascii_lowercase().as_str() {
            "sha-256" => Algorithm::Sha256,
            "sha-512" => Algorithm::Sha512,
            "md5" => Algorithm::Md5,
            _ => return None,
        };
        Checksum::new(algorithm, base64(digest)?)
    })
}

/// `x-goog-hash: crc32c=…, md5=…` (the MD5 is absent for composite objects).
pub(crate) fn parse_goog_hash(value: &str) -> Vec<Checksum> {
    members(value, |key, digest| {
        (key == "md5")
            .then(|| Checksum::new(Algorithm::Md5, base64(digest)?))
            .flatten()
    })
}

/// One base64 digest of `algorithm`, the whole value.
fn single(algorithm: Algorithm, value: &str) -> Vec<Checksum> {
    base64(value)
        .and_then(|d| Checksum::new(algorithm, d))
        .into_iter()
        .collect()
}

/// `x-amz-checksum-sha256`: one base64 SHA-256 of the whole object. A
/// multipart upload's checksum of part checksums ends in `-N` and is no
/// digest of the content: it does not parse.
pub(crate) fn parse_amz_sha256(value: &str) -> Vec<Checksum> {
    single(Algorithm::Sha256, value)
}

/// `Content-MD5`: the base64 MD5 of the body.
pub(crate) fn parse_content_md5(value: &str) -> Vec<Checksum> {
    single(Algorithm::Md5, value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    const HELLO_SHA256: &str = "LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ=";
    const HELLO_MD5: &str = "XUFAKrxLKna5cZ2REBfFkg==";

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, HeaderValue::from_str(value).unwrap());
        }
        h
    }

    #[test]
    fn digests_of_known_content() {
        let sha = Checksum::of(Algorithm::Sha256, b"hello");
        assert_eq!(
            sha.to_listed(),
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(Checksum::from_listed(&sha.to_listed()), Some(sha.clone()));
        assert!(sha.matches(b"hello"));
        assert!(!sha.matches(b"hellO"));
        assert_eq!(
            Checksum::of(Algorithm::Md5, b"hello").to_listed(),
            "md5:5d41402abc4b2a76b9719d911017c592"
        );
        // `printf hello | git hash-object --stdin`
        assert_eq!(
            Checksum::of(Algorithm::GitSha1, b"hello").to_listed(),
            "git-sha1:b6fc4c620b67d95f953a5c1c1230aaab5db5a1b0"
        );
        for bad in ["", "sha256:", "sha256:zz", "crc32:00000000", "sha256:00"] {
            assert_eq!(Checksum::from_listed(bad), None, "{bad}");
        }
    }

    #[test]
    fn every_header_form_is_understood() {
        let sha = Checksum::of(Algorithm::Sha256, b"hello");
        let md5 = Checksum::of(Algorithm::Md5, b"hello");
        let cases = [
            ("repr-digest", format!("sha-256=:{HELLO_SHA256}:"), &sha),
            (
                "repr-digest",
                format!("unixsum=:AAA=:, sha-256=:{HELLO_SHA256}:;x=1"),
                &sha,
            ),
            ("digest", format!("SHA-256={HELLO_SHA256}"), &sha),
            ("digest", format!("md5={HELLO_MD5}"), &md5),
            ("x-amz-checksum-sha256", HELLO_SHA256.to_owned(), &sha),
            (
                "x-goog-hash",
                format!("crc32c=n03x6A==, md5={HELLO_MD5}"),
                &md5,
            ),
            ("content-md5", HELLO_MD5.to_owned(), &md5),
        ];
        for (name, value, want) in cases {
            let h = headers(&[(name, &value)]);
            assert_eq!(strongest(&h, true).as_ref(), Some(want), "{name}: {value}");
            assert!(!contradicts(want, &h, true));
        }
        // Content-MD5 of a partial body says nothing about the file.
        let h = headers(&[("content-md5", HELLO_MD5)]);
        assert_eq!(strongest(&h, false), None);
        // A multipart checksum is not a content digest.
        let h = headers(&[("x-amz-checksum-sha256", "AAAA-3")]);
        assert_eq!(strongest(&h, true), None);
        // The strongest wins.
        let h = headers(&[
            ("content-md5", HELLO_MD5),
            ("digest", &format!("SHA-256={HELLO_SHA256}")),
        ]);
        assert_eq!(strongest(&h, true), Some(sha.clone()));
        // Another digest of the same kind contradicts; another kind cannot.
        let other = Checksum::of(Algorithm::Sha256, b"other");
        assert!(contradicts(&other, &h, true));
        assert!(!contradicts(
            &other,
            &headers(&[("content-md5", HELLO_MD5)]),
            true
        ));
    }

    /// What checking a whole file costs, per algorithm (not run by
    /// default: `cargo test --release -p agent --lib checksum_throughput --
    /// --ignored --nocapture`).
    #[test]
    #[ignore]
    fn checksum_throughput() {
        let data = vec![7u8; 64 << 20];
        for algorithm in [
            Algorithm::GitSha1,
            Algorithm::Md5,
            Algorithm::Sha256,
            Algorithm::Sha512,
        ] {
            let start = std::time::Instant::now();
            let mut rounds = 0;
            while start.elapsed() < std::time::Duration::from_secs(1) {
                std::hint::black_box(Checksum::of(algorithm, &data));
                rounds += 1;
            }
            let secs = start.elapsed().as_secs_f64();
            let mib_s = (rounds * 64) as f64 / secs;
            println!(
                "{algorithm:?}: {mib_s:.0} MiB/s ({:.2} ms per MiB)",
                1000.0 / mib_s
            );
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Any header value: parsed without panicking, and whatever
            /// parses has the algorithm's digest length.
            #[test]
            fn arbitrary_header_values_never_panic(value in any::<String>()) {
                for parse in [parse_repr_digest, parse_digest, parse_amz_sha256, parse_goog_hash, parse_content_md5] {
                    for c in parse(&value) {
                        prop_assert_eq!(c.digest.len(), c.algorithm.len());
                    }
                }
                let _ = Checksum::from_listed(&value);
            }

            /// A digest written in each form is read back as itself.
            #[test]
            fn digests_round_trip_through_every_form(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
                for algorithm in [Algorithm::GitSha1, Algorithm::Md5, Algorithm::Sha256, Algorithm::Sha512] {
                    let c = Checksum::of(algorithm, &bytes);
                    prop_assert_eq!(Checksum::from_listed(&c.to_listed()), Some(c.clone()));
                    if algorithm == Algorithm::GitSha1 {
                        continue;
                    }
                    let b64 = STANDARD.encode(&c.digest);
                    let dictionary = match algorithm {
                        Algorithm::GitSha1 | Algorithm::Md5 => None,
                        Algorithm::Sha256 => Some(format!("sha-256=:{b64}:")),
                        Algorithm::Sha512 => Some(format!("sha-512=:{b64}:")),
                    };
                    if let Some(v) = dictionary {
                        prop_assert_eq!(parse_repr_digest(&v), vec![c.clone()]);
                    }
                    let name = match algorithm {
                        Algorithm::GitSha1 | Algorithm::Md5 => "MD5",
                        Algorithm::Sha256 => "SHA-256",
                        Algorithm::Sha512 => "SHA-512",
                    };
                    prop_assert_eq!(parse_digest(&format!("{name}={b64}")), vec![c.clone()]);
                }
            }
        }
    }
}
