//! HTTP requests as every HTTP-speaking backend (plain HTTP(S) and the
//! Hugging Face Hub) sends them: redirects that keep `Range` but drop
//! credentials off-host, status mapping, bounded bodies, and ranged answers
//! checked before any byte is returned.

use std::ops::Range;

use bytes::Bytes;
use futures::TryStreamExt;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, Response, StatusCode};
use serde::de::DeserializeOwned;
use swarmseed_proto::pb::FileEntry;
use url::Url;

use super::checksum::Checksum;
use super::transfer::Budget;
use super::{OriginError, OriginOptions, Secret, redact_queries};

/// Redirect hops followed before giving up.
const MAX_REDIRECTS: usize = 10;

/// Where an HTTP-speaking backend's requests go and with which token.
#[derive(Debug)]
pub(crate) struct Target {
    client: reqwest::Client,
    token: Option<Secret>,
    /// The bearer token goes only to URLs with this scheme, host and port.
    pub(crate) trusted: url::Origin,
}

impl Target {
    /// Redirects are followed by hand (see [`send`]), so that credentials
    /// never leave the origin's host and the Hub's first answer can be
    /// checked.
    pub(crate) fn new(
        options: &OriginOptions,
        trusted: url::Origin,
        token: Option<&str>,
    ) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .connect_timeout(options.connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("swarmseed-agent/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            client,
            token: token.map(Secret::new),
            trusted,
        })
    }

    pub(crate) fn has_token(&self) -> bool {
        self.token.is_some()
    }
}

/// Sends a request, following redirects. Headers other than the token
/// (`Range`, `If-Match`) go to every hop. `inspect` sees the first answer
/// (the origin's own, before any redirect) and may refuse it before
/// anything else is fetched.
pub(crate) async fn send(
    target: &Target,
    method: Method,
    url: Url,
    headers: &HeaderMap,
    path: &str,
    inspect: impl Fn(StatusCode, &HeaderMap) -> Result<(), OriginError>,
) -> Result<Response, OriginError> {
    let mut url = url;
    let mut first = true;
    for _ in 0..=MAX_REDIRECTS {
        let mut request = target
            .client
            .request(method.clone(), url.clone())
            .headers(headers.clone());
        if let Some(token) = &target.token
            && url.origin() == target.trusted
        {
            request = request.bearer_auth(token.expose());
        }
        let response = request
            .send()
            .await
            .map_err(|e| transport_error(path, &e))?;
        let status = response.status();
        if std::mem::take(&mut first) {
            inspect(status, response.headers())?;
        }
        if status.is_redirection() && status != StatusCode::NOT_MODIFIED {
            let location = response
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| {
                    OriginError::protocol(path, format!("{status} without a Location"))
                })?;
            let next = url.join(location).map_err(|e| {
                OriginError::protocol(path, format!("bad redirect {location:?}: {e}"))
            })?;
            if !matches!(next.scheme(), "http" | "https") {
                return Err(OriginError::protocol(
                    path,
                    format!("redirect to {next} refused"),
                ));
            }
            tracing::debug!(from = %url.origin().ascii_serialization(), to = %next.origin().ascii_serialization(), "origin redirect");
            url = next;
            continue;
        }
        return Ok(response);
    }
    Err(OriginError::protocol(
        path,
        format!("more than {MAX_REDIRECTS} redirects"),
    ))
}

/// A network-level failure, with its causes (reqwest's top message alone
/// rarely says what happened).
pub(crate) fn transport_error(path: &str, error: &reqwest::Error) -> OriginError {
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    OriginError::unavailable(path, redact_queries(&message))
}

/// Bound on a JSON document (one directory's listing, a Hub tree page) held
/// in memory: nginx's listing of a directory of about two million files.
pub(crate) const MAX_JSON_BYTES: usize = 256 << 20;

/// GET of a JSON document (a directory listing, a Hub API answer), read
/// whole but at most [`MAX_JSON_BYTES`], retried and timed; returns it
/// with the answer's headers.
pub(crate) async fn get_body(
    budget: &Budget,
    target: &Target,
    url: &Url,
    what: &str,
) -> Result<(Vec<u8>, HeaderMap), OriginError> {
    let mut headers = HeaderMap::new();
    headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
    budget
        .retry(what, || async {
            budget
                .timed(what, async {
                    let mut response =
                        send(target, Method::GET, url.clone(), &headers, what, |_, _| {
                            Ok(())
                        })
                        .await?;
                    if !response.status().is_success() {
                        return Err(status_error(what, response.status(), false));
                    }
                    if response
                        .content_length()
                        .is_some_and(|n| n > MAX_JSON_BYTES as u64)
                    {
                        return Err(too_long(what));
                    }
                    let mut body = Vec::new();
                    while let Some(chunk) = response
                        .chunk()
                        .await
                        .map_err(|e| transport_error(what, &e))?
                    {
                        if body.len() + chunk.len() > MAX_JSON_BYTES {
                            return Err(too_long(what));
                        }
                        body.extend_from_slice(&chunk);
                    }
                    Ok((body, response.headers().clone()))
                })
                .await
        })
        .await
}

fn too_long(what: &str) -> OriginError {
    OriginError::protocol(
        what,
        format!("a listing answer larger than {MAX_JSON_BYTES} bytes"),
    )
}

/// [`get_body`], parsed as `T`. `unexpected` says what a body that does not
/// parse is not.
pub(crate) async fn get_json<T: DeserializeOwned>(
    budget: &Budget,
    target: &Target,
    url: &Url,
    what: &str,
    unexpected: &str,
) -> Result<(T, HeaderMap), OriginError> {
    let (body, headers) = get_body(budget, target, url, what).await?;
    let value = serde_json::from_slice(&body)
        .map_err(|e| OriginError::protocol(what, format!("{unexpected}: {e}")))?;
    Ok((value, headers))
}

/// Maps a non-success status. While reading a listed file, "gone" and
/// "range not satisfiable" mean the object changed.
pub(crate) fn status_error(path: &str, status: StatusCode, reading: bool) -> OriginError {
    match status.as_u16() {
        401 | 403 => OriginError::denied(path, status.to_string()),
        404 | 410 | 416 if reading => OriginError::changed(path),
        404 | 410 => OriginError::NotFound {
            path: path.to_owned(),
        },
        412 => OriginError::changed(path),
        408 | 425 | 429 | 500..=599 => OriginError::unavailable(path, status.to_string()),
        _ => OriginError::protocol(path, format!("unexpected status {status}")),
    }
}

pub(crate) fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

pub(crate) fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    header_str(headers, name).and_then(|v| v.parse().ok())
}

/// `bytes a-b/total` → (a, b inclusive, total if known).
fn parse_content_range(value: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (span, total) = rest.split_once('/')?;
    let (a, b) = span.split_once('-')?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?, total))
}

/// Headers of a ranged GET.
pub(crate) fn range_headers(range: &Range<u64>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(&format!("bytes={}-{}", range.start, range.end - 1)) {
        headers.insert(header::RANGE, value);
    }
    // Byte ranges of an encoded body are not byte ranges of the file.
    headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    headers
}

/// Turns the answer to a ranged GET of `file` into exactly the range's
/// bytes. A 206 must carry the requested Content-Range of an object of the
/// listed size; a 200 (Range ignored) is read up to the range's end only.
/// A read of the whole file must also hash to `whole_file_id` where the
/// listing or the answer named one: validators that still match can come
/// with other bytes (a file rewritten in place that kept its ETag, a CDN
/// serving a stale object, a mirror rewriting files).
pub(crate) async fn read_ranged(
    budget: &Budget,
    response: Response,
    file: &FileEntry,
    range: &Range<u64>,
    whole_file_id: Option<&Checksum>,
) -> Result<Bytes, OriginError> {
    let path = file.path.as_str();
    let file_size = file.size;
    let status = response.status();
    let len = range.end - range.start;
    let skip = match status {
        StatusCode::PARTIAL_CONTENT => {
            let value = header_str(response.headers(), "content-range")
                .ok_or_else(|| OriginError::protocol(path, "206 without Content-Range"))?;
            let (a, b, total) = parse_content_range(value).ok_or_else(|| {
                OriginError::protocol(path, format!("bad Content-Range {value:?}"))
            })?;
            if total.is_some_and(|t| t != file_size) {
                return Err(OriginError::changed(path));
            }
            if a != range.start || b + 1 != range.end {
                return Err(OriginError::protocol(
                    path,
                    format!(
                        "asked for bytes {}-{}, got {value:?}",
                        range.start,
                        range.end - 1
                    ),
                ));
            }
            None
        }
        StatusCode::OK => {
            if header_u64(response.headers(), "content-length").is_some_and(|n| n != file_size) {
                return Err(OriginError::changed(path));
            }
            Some(range.start)
        }
        other if other.is_success() => {
            return Err(OriginError::protocol(
                path,
                format!("unexpected status {other}"),
            ));
        }
        other => return Err(status_error(path, other, true)),
    };
    let body = response
        .bytes_stream()
        .map_err(|e| transport_error(path, &e));
    let body = Box::pin(body);
    let bytes = match skip {
        None => budget.read_body(path, body, 0, len, true, |e| e).await?,
        Some(skip) => {
            budget
                .read_body(path, body, skip, len, false, |e| e)
                .await?
        }
    };
    let whole_file = range.start == 0 && range.end == file_size;
    if whole_file
        && let Some(id) = whole_file_id
        && !id.matches_whole(&bytes).await
    {
        return Err(OriginError::changed(path));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_parsing() {
        assert_eq!(
            parse_content_range("bytes 0-9/100"),
            Some((0, 9, Some(100)))
        );
        assert_eq!(parse_content_range("bytes 5-5/*"), Some((5, 5, None)));
        assert_eq!(parse_content_range("items 0-9/100"), None);
        assert_eq!(parse_content_range("bytes 0-x/100"), None);
    }

    #[test]
    fn statuses_map_to_what_users_see() {
        let label = |code: u16, reading| {
            status_error("f", StatusCode::from_u16(code).unwrap(), reading).label()
        };
        assert_eq!(label(401, true), "denied");
        assert_eq!(label(403, false), "denied");
        assert_eq!(label(404, true), "changed");
        assert_eq!(label(404, false), "not_found");
        assert_eq!(label(412, true), "changed");
        assert_eq!(label(416, true), "changed");
        assert_eq!(label(429, true), "unavailable");
        assert_eq!(label(503, false), "unavailable");
        assert_eq!(label(400, true), "protocol");
    }
}
