//! A token bucket shared by every user of one limit (all uploads of a node,
//! all origin reads of a dataset).

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
pub struct TokenBucket {
    rate: u64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// `rate` bytes per second; 0 means unlimited. The burst is a tenth of
    /// a second's worth (at least 64 KiB), so short bursts do not overshoot
    /// the average.
    pub fn new(rate: u64) -> Self {
        Self {
            rate,
            state: Mutex::new((0.0, Instant::now())),
        }
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }

    fn burst(&self) -> f64 {
        (self.rate as f64 / 10.0).max(64.0 * 1024.0)
    }

    /// Waits until `bytes` may pass. Large requests go into debt, so a
    /// single request never waits forever.
    pub async fn take(&self, bytes: u64) {
        if self.rate == 0 {
            return;
        }
        let wait = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let elapsed = now.duration_since(st.1).as_secs_f64();
            st.0 = (st.0 + elapsed * self.rate as f64).min(self.burst());
            st.1 = now;
            st.0 -= bytes as f64;
            if st.0 >= 0.0 {
                Duration::ZERO
            } else {
                Duration::from_secs_f64(-st.0 / self.rate as f64)
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
        let b = TokenBucket::new(1_000_000);
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
        let b = TokenBucket::new(0);
        b.take(u64::MAX).await;
    }
}
