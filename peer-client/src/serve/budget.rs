//! What an upload may spend: an upload slot, and bytes from the shared bandwidth budget.
//!
//! Owns the slot count, the short line of requests waiting for a slot, the BUSY estimates
//! handed to peers that find the line full too, and the token bucket behind the upload cap.
//!
//! A request that finds every slot taken may wait for one, briefly and only if few others
//! already wait: at most as many as there are slots, for at most the patience the caller gives.
//! Most such requests are a downloader's next block, sent the moment the last one arrived and
//! before its acknowledgement freed the slot here; answering those BUSY sent the downloader
//! away for 50 ms (930 of 4,096 blocks on the 4-source loopback bench). Past the line, or past
//! the patience, a request is answered BUSY and told when to come back, so a stalled
//! downloader costs us a bounded number of tasks, not a growing queue of them.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
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
    /// One permit per slot; tokio's semaphore serves waiters in order and forgets a waiter
    /// that gave up, so the line stays fair and cancellation-safe.
    permits: Arc<Semaphore>,
    state: Mutex<SlotState>,
}

struct SlotState {
    /// Requests waiting in line for a slot right now (at most `capacity`).
    waiting: usize,
    /// Askers told BUSY since the slots were last all free: a virtual queue. We keep no such
    /// waiters; the count only staggers their retries (position n is told n slot-times) so
    /// they don't all come back at once.
    queued: u32,
    /// Moving average of how long an upload holds its slot.
    avg_hold: Duration,
}

/// The answer to a request that found every slot taken and the line full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Busy {
    pub queue_position: u32,
    pub estimated_wait: Duration,
}

impl Slots {
    pub fn new(capacity: usize) -> Arc<Self> {
        let state = SlotState { waiting: 0, queued: 0, avg_hold: INITIAL_HOLD };
        let permits = Arc::new(Semaphore::new(capacity.min(Semaphore::MAX_PERMITS)));
        Arc::new(Self { capacity, permits, state: Mutex::new(state) })
    }

    fn lock(&self) -> MutexGuard<'_, SlotState> {
        // The state is a few counters, consistent after every statement: a panic elsewhere
        // cannot leave it half-updated, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a slot: a free one at once, or one that frees within `patience` if the line of
    /// waiters is shorter than the slot count. Otherwise the BUSY answer for this asker.
    /// Dropping the future leaves the line.
    pub async fn acquire(self: &Arc<Self>, patience: Duration) -> Result<SlotPermit, Busy> {
        if let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() {
            return Ok(self.granted(permit));
        }
        if let Some(_in_line) = InLine::join(self) {
            let waited = tokio::time::timeout(patience, Arc::clone(&self.permits).acquire_owned()).await;
            if let Ok(Ok(permit)) = waited {
                return Ok(self.granted(permit));
            }
        }
        Err(self.busy())
    }

    fn granted(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> SlotPermit {
        let mut s = self.lock();
        // Whoever takes a slot leaves the virtual queue (or jumped it; either way one fewer
        // is waiting ahead of the next asker).
        s.queued = s.queued.saturating_sub(1);
        SlotPermit { slots: Arc::clone(self), since: Instant::now(), _permit: permit }
    }

    fn busy(&self) -> Busy {
        let mut s = self.lock();
        s.queued = s.queued.saturating_add(1);
        // With `capacity` uploads running, a slot frees about every avg_hold / capacity.
        let per_slot = s.avg_hold / u32::try_from(self.capacity.max(1)).unwrap_or(u32::MAX);
        let wait = per_slot.saturating_mul(s.queued).clamp(MIN_WAIT, MAX_WAIT);
        Busy { queue_position: s.queued, estimated_wait: wait }
    }

    /// `(free_slots, queue_len)` for a `Status` answer: the line counts those waiting in it
    /// and those told BUSY since the slots were last all free.
    pub fn status(&self) -> (u32, u32) {
        let free = self.permits.available_permits();
        let s = self.lock();
        let waiting = u32::try_from(s.waiting).unwrap_or(u32::MAX);
        (u32::try_from(free).unwrap_or(u32::MAX), s.queued.saturating_add(waiting))
    }

    /// Called as a permit is dropped, before its slot is given back.
    fn release(&self, held: Duration) {
        let mut s = self.lock();
        // avg = 7/8 avg + 1/8 sample: smooth enough to ignore one odd upload, quick enough to
        // follow a change of link speed within a few dozen uploads.
        s.avg_hold = (s.avg_hold * 7 + held) / 8;
        // This one's permit is still held, so "all free" is every other one.
        if self.permits.available_permits() + 1 >= self.capacity {
            // Nothing else is uploading, so nobody told BUSY is really waiting for us any more.
            s.queued = 0;
        }
    }
}

/// A place in the line of requests waiting for a slot; dropping it leaves the line.
struct InLine<'a>(&'a Slots);

impl<'a> InLine<'a> {
    /// A place, if fewer than `capacity` requests wait already.
    fn join(slots: &'a Slots) -> Option<Self> {
        let mut s = slots.lock();
        if s.waiting >= slots.capacity {
            return None;
        }
        s.waiting += 1;
        Some(Self(slots))
    }
}

impl Drop for InLine<'_> {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.waiting = s.waiting.saturating_sub(1);
    }
}

/// A held upload slot; dropping it frees the slot (and wakes the first in line).
pub(super) struct SlotPermit {
    slots: Arc<Slots>,
    since: Instant,
    _permit: OwnedSemaphorePermit,
}

impl Drop for SlotPermit {
    fn drop(&mut self) {
        // Runs before the fields drop, so the semaphore permit is given back just after.
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

    const NO_PATIENCE: Duration = Duration::ZERO;

    async fn busy(slots: &Arc<Slots>) -> Busy {
        slots.acquire(NO_PATIENCE).await.err().expect("expected BUSY")
    }

    #[tokio::test]
    async fn busy_askers_get_growing_positions_and_waits_and_the_queue_empties_when_idle() {
        let slots = Slots::new(1);
        let held = slots.acquire(NO_PATIENCE).await.unwrap();
        assert_eq!(slots.status(), (0, 0));
        let first = busy(&slots).await;
        let second = busy(&slots).await;
        assert_eq!((first.queue_position, second.queue_position), (1, 2));
        assert!(first.estimated_wait < second.estimated_wait);
        assert_eq!(slots.status(), (0, 2));
        drop(held);
        assert_eq!(slots.status(), (1, 0));
        assert!(slots.acquire(NO_PATIENCE).await.is_ok());
    }

    #[tokio::test]
    async fn zero_slots_means_always_busy_with_a_bounded_wait() {
        let slots = Slots::new(0);
        for _ in 0..10_000 {
            let answer = slots.acquire(Duration::from_secs(3600)).await;
            assert!(answer.err().expect("expected BUSY").estimated_wait <= MAX_WAIT);
        }
        assert_eq!(slots.status(), (0, 10_000));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_gets_the_slot_that_frees_and_others_past_the_line_are_busy_at_once() {
        let slots = Slots::new(1);
        let held = slots.acquire(NO_PATIENCE).await.unwrap();
        let waiter = tokio::spawn({
            let slots = Arc::clone(&slots);
            async move { slots.acquire(Duration::from_secs(1)).await.map(|_| Instant::now()) }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(slots.status(), (0, 1), "one waits in line");
        // The line (as long as the slot count) is full: no waiting, whatever the patience.
        let start = Instant::now();
        assert!(slots.acquire(Duration::from_secs(1)).await.is_err());
        assert_eq!(start.elapsed(), Duration::ZERO);

        tokio::time::sleep(Duration::from_millis(90)).await;
        let freed_at = Instant::now();
        drop(held);
        let got_at = waiter.await.unwrap().expect("the waiter got the freed slot");
        assert_eq!(got_at, freed_at);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_out_of_patience_is_busy_and_one_that_gave_up_leaves_the_line() {
        let slots = Slots::new(1);
        let _held = slots.acquire(NO_PATIENCE).await.unwrap();
        let start = Instant::now();
        let answer = slots.acquire(Duration::from_millis(250)).await;
        assert_eq!(answer.err().map(|b| b.queue_position), Some(1));
        assert_eq!(start.elapsed(), Duration::from_millis(250));
        assert_eq!(slots.status(), (0, 1), "no longer in line, only counted as told BUSY");

        // A request dropped while in line (its stream was reset) frees its place.
        let gave_up =
            tokio::time::timeout(Duration::from_millis(10), slots.acquire(Duration::from_secs(1))).await;
        assert!(gave_up.is_err());
        assert_eq!(slots.lock().waiting, 0);
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
