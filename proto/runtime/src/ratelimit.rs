//! A token bucket: one byte rate shared by every task that spends from it
//! (all uploads of a node, all origin reads of a client). No IO: a taker
//! that must wait sleeps on the tokio clock.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The least a bucket holds, so that one 64 KiB socket read does not
/// always wait.
const MIN_BURST_BYTES: f64 = 64.0 * 1024.0;

/// Takers reserve before they wait: a reservation may drive the balance
/// negative, and the taker then sleeps until it is paid back. Concurrent
/// takers so share the rate fairly without a background task, and a
/// single request larger than the burst never waits forever.
#[derive(Debug)]
pub struct TokenBucket {
    /// Bytes per second; 0 means unlimited.
    rate: u64,
    /// Most tokens the bucket holds: the burst that may pass at once.
    capacity: f64,
    balance: Mutex<Balance>,
}

#[derive(Debug)]
struct Balance {
    /// Bytes that may pass now; negative while takers are in debt.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    refilled: Instant,
}

impl TokenBucket {
    /// `rate` bytes per second (0: unlimited), holding at most `burst`
    /// worth of that rate (at least 64 KiB). It starts empty: the first
    /// bytes already wait their share.
    pub fn new(rate: u64, burst: Duration) -> Self {
        Self {
            rate,
            capacity: (rate as f64 * burst.as_secs_f64()).max(MIN_BURST_BYTES),
            balance: Mutex::new(Balance {
                tokens: 0.0,
                refilled: Instant::now(),
            }),
        }
    }

    /// The same bucket, full: the first burst passes at once.
    #[must_use]
    pub fn starting_full(self) -> Self {
        let capacity = self.capacity;
        self.balance
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .tokens = capacity;
        self
    }

    /// Waits until `bytes` may pass.
    pub async fn take(&self, bytes: u64) {
        if self.rate == 0 {
            return;
        }
        let rate = self.rate as f64;
        let wait = {
            // Only arithmetic happens under the lock, never an await.
            let mut balance = self
                .balance
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let now = Instant::now();
            let elapsed = now.duration_since(balance.refilled).as_secs_f64();
            balance.tokens = (balance.tokens + elapsed * rate).min(self.capacity);
            balance.refilled = now;
            balance.tokens -= bytes as f64;
            if balance.tokens >= 0.0 {
                Duration::ZERO
            } else {
                Duration::from_secs_f64(-balance.tokens / rate)
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn holds_the_average_rate() {
        let b = TokenBucket::new(1_000_000, Duration::from_millis(100));
        let start = tokio::time::Instant::now();
        for _ in 0..20 {
            b.take(100_000).await;
        }
        let secs = start.elapsed().as_secs_f64();
        // 2 MB at 1 MB/s, less the initial burst allowance.
        assert!((1.8..=2.1).contains(&secs), "{secs}");
    }

    #[tokio::test]
    async fn zero_means_unlimited() {
        let b = TokenBucket::new(0, Duration::from_millis(100));
        b.take(u64::MAX).await;
    }

    #[tokio::test]
    async fn rate_limiter_paces_to_the_rate() {
        let limiter = TokenBucket::new(4 * 1024 * 1024, Duration::from_millis(250)).starting_full();
        let start = Instant::now();
        // 2 MiB in 64 KiB pieces at 4 MiB/s, after a 1 MiB burst: 0.25 s.
        for _ in 0..32 {
            limiter.take(64 * 1024).await;
        }
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(230), "{elapsed:?}");
        assert!(elapsed <= Duration::from_millis(1000), "{elapsed:?}");
    }
}
