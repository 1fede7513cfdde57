//! What an upload may spend: an upload slot, and bytes from the shared bandwidth budget.
//!
//! Owns the slot count, the BUSY estimates handed to peers that find every slot taken, and the
//! token bucket behind the upload cap. Never blocks a caller for a slot: a request that finds
//! no free slot is answered BUSY at once and told when to come back, so a stalled downloader
//! costs us one task, not a growing queue of them.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

/// What one upload is assumed to take before any has finished.
const INITIAL_HOLD: Duration = Duration::from_millis(500);
/// Bounds of the wait told to a BUSY asker: not so short that it hammers us, not so long that
/// it gives up on a source that frees up quickly.
const MIN_WAIT: Duration = Duration::from_millis(50);
const MAX_WAIT: Duration = Duration::from_secs(60);

/// The upload slots. A slot is held from the first body byte until the peer has acknowledged
/// the last one, so the count is the uploads really in progress, not just the ones being read
/// from disk.
pub(super) struct Slots {
    capacity: usize,
    state: Mutex<SlotState>,
}

struct SlotState {
    in_use: usize,
    /// Askers told BUSY since the queue was last empty: a virtual queue. We keep no waiters; the
    /// count only staggers their retries (position n is told n slot-times) so they don't all
    /// come back at once.
    queued: u32,
    /// Moving average of how long an upload holds its slot.
    avg_hold: Duration,
}

/// The answer to a request that found every slot taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Busy {
    pub queue_position: u32,
    pub estimated_wait: Duration,
}

impl Slots {
    pub fn new(capacity: usize) -> Arc<Self> {
        let state = SlotState { in_use: 0, queued: 0, avg_hold: INITIAL_HOLD };
        Arc::new(Self { capacity, state: Mutex::new(state) })
    }

    fn lock(&self) -> MutexGuard<'_, SlotState> {
        // The state is a few counters, consistent after every statement: a panic elsewhere
        // cannot leave it half-updated, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a slot if one is free; otherwise the BUSY answer for this asker.
    pub fn try_acquire(self: &Arc<Self>) -> Result<SlotPermit, Busy> {
        let mut s = self.lock();
        if s.in_use < self.capacity {
            s.in_use += 1;
            // Whoever takes a slot leaves the virtual queue (or jumped it; either way one
            // fewer is waiting ahead of the next asker).
            s.queued = s.queued.saturating_sub(1);
            return Ok(SlotPermit { slots: Arc::clone(self), since: Instant::now() });
        }
        s.queued = s.queued.saturating_add(1);
        // With `capacity` uploads running, a slot frees about every avg_hold / capacity.
        let per_slot = s.avg_hold / u32::try_from(self.capacity.max(1)).unwrap_or(u32::MAX);
        let wait = per_slot.saturating_mul(s.queued).clamp(MIN_WAIT, MAX_WAIT);
        Err(Busy { queue_position: s.queued, estimated_wait: wait })
    }

    /// `(free_slots, queue_len)` for a `Status` answer.
    pub fn status(&self) -> (u32, u32) {
        let s = self.lock();
        let free = self.capacity.saturating_sub(s.in_use);
        (u32::try_from(free).unwrap_or(u32::MAX), s.queued)
    }

    fn release(&self, held: Duration) {
        let mut s = self.lock();
        s.in_use = s.in_use.saturating_sub(1);
        // avg = 7/8 avg + 1/8 sample: smooth enough to ignore one odd upload, quick enough to
        // follow a change of link speed within a few dozen uploads.
        s.avg_hold = (s.avg_hold * 7 + held) / 8;
        if s.in_use == 0 {
            // Nothing is uploading, so nobody is really waiting for us any more.
            s.queued = 0;
        }
    }
}

/// A held upload slot; dropping it frees the slot.
pub(super) struct SlotPermit {
    slots: Arc<Slots>,
    since: Instant,
}

impl Drop for SlotPermit {
    fn drop(&mut self) {
        self.slots.release(self.since.elapsed());
    }
}

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

    fn busy(slots: &Arc<Slots>) -> Busy {
        slots.try_acquire().err().expect("expected BUSY")
    }

    #[test]
    fn busy_askers_get_growing_positions_and_waits_and_the_queue_empties_when_idle() {
        let slots = Slots::new(1);
        let held = slots.try_acquire().unwrap();
        assert_eq!(slots.status(), (0, 0));
        let first = busy(&slots);
        let second = busy(&slots);
        assert_eq!((first.queue_position, second.queue_position), (1, 2));
        assert!(first.estimated_wait < second.estimated_wait);
        assert_eq!(slots.status(), (0, 2));
        drop(held);
        assert_eq!(slots.status(), (1, 0));
        assert!(slots.try_acquire().is_ok());
    }

    #[test]
    fn zero_slots_means_always_busy_with_a_bounded_wait() {
        let slots = Slots::new(0);
        for _ in 0..10_000 {
            assert!(busy(&slots).estimated_wait <= MAX_WAIT);
        }
        assert_eq!(slots.status(), (0, 10_000));
    }

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
