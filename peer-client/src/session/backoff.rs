//! The reconnect schedule, sans-IO: exponential backoff with jitter. It only says how long to
//! wait; the session does the waiting.
//!
//! Attempt `n` (from 0) waits a random duration in `[d/2, d]` where `d = min(initial * 2^n,
//! max)` ("equal jitter"): the wait still grows, but nodes that lost the directory together do
//! not all come back in the same instant. A success resets the schedule.

use std::time::Duration;

/// Exponential backoff with jitter (see the module doc).
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    /// Failures since the last reset.
    attempt: u32,
    /// splitmix64 state: a tiny generator is plenty for jitter and needs no dependency.
    rng: u64,
}

impl Backoff {
    /// A schedule starting at `initial` and doubling up to `max`. `seed` drives the jitter;
    /// give each node a different one (any value works, the same seed gives the same waits).
    pub fn new(initial: Duration, max: Duration, seed: u64) -> Self {
        let initial = initial.max(Duration::from_millis(1));
        Self { initial, max: max.max(initial), attempt: 0, rng: seed }
    }

    /// The upper bound of the next wait, before jitter.
    pub fn ceiling(&self) -> Duration {
        // 2^31 * 1 ms already exceeds any sensible max; saturate instead of overflowing.
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// How long to wait before the next attempt; each call counts one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        let span = u64::try_from((ceiling - half).as_nanos()).unwrap_or(u64::MAX);
        let jitter = if span == 0 { 0 } else { self.next_random() % (span + 1) };
        half + Duration::from_nanos(jitter)
    }

    /// Failures since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Back to the first, shortest wait (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    fn next_random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn schedule() -> Backoff {
        Backoff::new(250 * MS, 30_000 * MS, 7)
    }

    #[test]
    fn doubles_from_initial_up_to_max() {
        let mut b = schedule();
        let ceilings: Vec<Duration> = (0..10)
            .map(|_| {
                let c = b.ceiling();
                b.next_delay();
                c
            })
            .collect();
        let expected = [250, 500, 1000, 2000, 4000, 8000, 16_000, 30_000, 30_000, 30_000];
        assert_eq!(ceilings, expected.map(|ms| ms * MS).to_vec());
    }

    #[test]
    fn every_delay_lies_between_half_and_whole_ceiling() {
        let mut b = schedule();
        for _ in 0..200 {
            let ceiling = b.ceiling();
            let d = b.next_delay();
            assert!(d >= ceiling / 2 && d <= ceiling, "{d:?} outside [{:?}, {ceiling:?}]", ceiling / 2);
        }
        // Far past the cap it stays capped and never overflows.
        assert_eq!(b.ceiling(), 30_000 * MS);
    }

    #[test]
    fn jitter_spreads_nodes_apart() {
        let delays = |seed| {
            let mut b = Backoff::new(250 * MS, 30_000 * MS, seed);
            (0..8).map(|_| b.next_delay()).collect::<Vec<_>>()
        };
        assert_eq!(delays(1), delays(1), "same seed, same schedule");
        assert_ne!(delays(1), delays(2), "different seeds must not wake in lockstep");
        let mut b = Backoff::new(30_000 * MS, 30_000 * MS, 3);
        let distinct: std::collections::HashSet<Duration> = (0..20).map(|_| b.next_delay()).collect();
        assert!(distinct.len() > 10, "jitter should vary the wait: {distinct:?}");
    }

    #[test]
    fn reset_starts_over() {
        let mut b = schedule();
        for _ in 0..6 {
            b.next_delay();
        }
        assert_eq!(b.attempts(), 6);
        assert_eq!(b.ceiling(), 16_000 * MS);
        b.reset();
        assert_eq!(b.attempts(), 0);
        let d = b.next_delay();
        assert!(d <= 250 * MS && d >= 125 * MS);
    }

    #[test]
    fn degenerate_settings_are_clamped() {
        let mut b = Backoff::new(Duration::ZERO, Duration::ZERO, 0);
        assert!(b.next_delay() <= MS);
        let mut b = Backoff::new(10 * MS, MS, 0);
        assert_eq!(b.ceiling(), 10 * MS, "max below initial means no growth");
        b.next_delay();
        assert_eq!(b.ceiling(), 10 * MS);
    }
}
