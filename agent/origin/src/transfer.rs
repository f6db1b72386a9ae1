//! What every backend shares: the request budget (concurrency, bandwidth),
//! bounded retries with backoff, and reading a body into exactly the
//! requested range under an idle timeout.

use std::future::Future;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use rand::Rng;
use swarmseed_runtime::ratelimit::TokenBucket;
use tokio::sync::Semaphore;

use super::{OriginError, OriginOptions};

/// First and largest pause between two attempts.
const BACKOFF_INITIAL: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// A quarter second of the bandwidth passes at once.
const BANDWIDTH_BURST: Duration = Duration::from_millis(250);

/// Per-client state every request goes through.
#[derive(Debug)]
pub(crate) struct Budget {
    pub(crate) options: OriginOptions,
    /// All reads of the client share it (unlimited at rate 0).
    bandwidth: TokenBucket,
    permits: Semaphore,
}

impl Budget {
    pub(crate) fn new(options: OriginOptions) -> Self {
        let bandwidth =
            TokenBucket::new(options.bandwidth_bytes_per_sec, BANDWIDTH_BURST).starting_full();
        let permits = Semaphore::new(options.concurrency.max(1));
        Self {
            options,
            bandwidth,
            permits,
        }
    }

    /// Runs `op` (one request) under a concurrency permit, retrying
    /// transient failures up to `max_retries` times with jittered backoff.
    pub(crate) async fn retry<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, OriginError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, OriginError>>,
    {
        let mut attempt: u32 = 0;
        loop {
            let result = {
                let _permit =
                    self.permits.acquire().await.map_err(|_| {
                        OriginError::unavailable(what, "origin client is shut down")
                    })?;
                op().await
            };
            match result {
                Err(error) if error.is_transient() && attempt < self.options.max_retries => {
                    let pause = backoff(attempt);
                    tracing::debug!(%error, attempt, ?pause, "origin request failed, retrying");
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Awaits `fut` for at most the request timeout.
    pub(crate) async fn timed<T>(
        &self,
        path: &str,
        fut: impl Future<Output = Result<T, OriginError>>,
    ) -> Result<T, OriginError> {
        let limit = self.options.request_timeout;
        match tokio::time::timeout(limit, fut).await {
            Ok(result) => result,
            Err(_) => Err(OriginError::unavailable(
                path,
                format!("no answer within {limit:?}"),
            )),
        }
    }

    /// Reads a body: skips `skip` bytes, then returns exactly `len` bytes.
    /// With `exact`, the body must hold exactly `skip + len` bytes (a 206
    /// answer); otherwise the rest is dropped unread (a 200 answer to a
    /// ranged request). Each wait for data is bounded by the request
    /// timeout, so slow but moving transfers are fine and stalls are not.
    pub(crate) async fn read_body<S, E>(
        &self,
        path: &str,
        mut body: S,
        skip: u64,
        len: u64,
        exact: bool,
        map_err: impl Fn(E) -> OriginError,
    ) -> Result<Bytes, OriginError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
    {
        let capacity = usize::try_from(len)
            .map_err(|_| OriginError::protocol(path, "range too large for this machine"))?;
        let mut out = BytesMut::with_capacity(capacity);
        let mut to_skip = skip;
        loop {
            let next = self.timed(path, async { Ok(body.next().await) }).await?;
            let mut chunk = match next {
                None => break,
                Some(Err(e)) => return Err(map_err(e)),
                Some(Ok(chunk)) => chunk,
            };
            self.bandwidth.take(chunk.len() as u64).await;
            if to_skip > 0 {
                let n = to_skip.min(chunk.len() as u64);
                chunk.advance(n as usize);
                to_skip -= n;
            }
            let want = len - out.len() as u64;
            if chunk.len() as u64 > want {
                if exact {
                    return Err(OriginError::protocol(
                        path,
                        format!("the origin sent more than the {len} bytes asked for"),
                    ));
                }
                out.extend_from_slice(&chunk[..want as usize]);
                break;
            }
            out.extend_from_slice(&chunk);
            if !exact && out.len() as u64 == len {
                break;
            }
        }
        if (out.len() as u64) < len {
            return Err(OriginError::protocol(
                path,
                format!("short read: {} of {len} bytes", out.len()),
            ));
        }
        Ok(out.freeze())
    }
}

/// Exponential backoff with equal jitter: half fixed, half random, capped.
pub(crate) fn backoff(attempt: u32) -> Duration {
    let exp = BACKOFF_INITIAL.saturating_mul(1u32 << attempt.min(16));
    let cap = exp.min(BACKOFF_MAX);
    let half = cap / 2;
    let jitter = rand::thread_rng().gen_range(0..=half.as_millis() as u64);
    half + Duration::from_millis(jitter)
}

/// Refuses an answer whose ETag is not the listed one: the defence
/// against stores and servers that ignore `If-Match`.
pub(crate) fn check_etag(
    path: &str,
    answered: Option<&str>,
    listed: &str,
) -> Result<(), OriginError> {
    match answered {
        Some(etag) if !listed.is_empty() && normalize_etag(etag) != normalize_etag(listed) => {
            Err(OriginError::changed(path))
        }
        _ => Ok(()),
    }
}

/// Normalizes an ETag for comparison: no weak marker, no quotes.
pub(crate) fn normalize_etag(etag: &str) -> &str {
    etag.trim().trim_start_matches("W/").trim_matches('"')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        for attempt in 0..40 {
            let pause = backoff(attempt);
            let cap = BACKOFF_INITIAL
                .saturating_mul(1u32 << attempt.min(16))
                .min(BACKOFF_MAX);
            assert!(pause >= cap / 2 && pause <= cap, "{attempt}: {pause:?}");
        }
        assert!(backoff(0) <= Duration::from_millis(200));
        assert!(backoff(30) >= Duration::from_secs(5));
    }

    #[test]
    fn etags_compare_without_quotes_or_weakness() {
        assert_eq!(normalize_etag("\"abc\""), "abc");
        assert_eq!(normalize_etag("W/\"abc\""), "abc");
        assert_eq!(normalize_etag("abc"), "abc");
    }
}
