//! What an upload may spend: bytes from the shared bandwidth budget (the upload cap).
//!
//! Slots (how many uploads, and whose) are [`super::admission`]'s.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// A token bucket shared by all uploads: `rate` bytes per second on average, with bursts of at
/// most `burst` bytes after a quiet spell.
///
/// Callers take before they send and may drive the balance negative; each then sleeps until its
/// share of the debt is paid. Later callers see the larger debt and sleep longer, so the total
/// rate holds however many uploads share the bucket, without a background refill task.
pub(super) struct TokenBucket {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// `rate` 0 is taken as 1 byte per second (a cap, not a ban; set `upload_slots` to 0 to
    /// serve no data at all).
    pub fn new(rate: u64, burst: u64) -> Self {
        // Precision: f64 is exact for byte counts up to 2^53, far beyond any rate or piece.
        let rate = rate.max(1) as f64;
        let burst = burst.max(1) as f64;
        Self { rate, burst, state: Mutex::new((burst, Instant::now())) }
    }

    /// Waits until `bytes` may be sent.
    pub async fn take(&self, bytes: u64) {
        let wait = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let (tokens, last) = &mut *state;
            let now = Instant::now();
            *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(self.burst);
            *last = now;
            *tokens -= bytes as f64;
            if *tokens >= 0.0 { Duration::ZERO } else { Duration::from_secs_f64(-*tokens / self.rate) }
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
    async fn the_bucket_lets_a_burst_through_then_paces_at_the_rate() {
        let bucket = TokenBucket::new(1000, 100);
        let start = Instant::now();
        bucket.take(100).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        bucket.take(500).await;
        let after = start.elapsed();
        assert!(after >= Duration::from_millis(499) && after <= Duration::from_millis(501), "{after:?}");
        bucket.take(1000).await;
        assert!(start.elapsed() >= Duration::from_millis(1499), "{:?}", start.elapsed());
    }
}
