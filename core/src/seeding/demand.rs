//! How often each file is asked for, in bounded memory: a count-min sketch whose counters halve
//! every [`HALF_LIFE`], sans-IO (time is an argument).
//!
//! The directory counts a Locate per file. Keeping a counter per file would grow with the
//! catalog; a count-min sketch (Cormode and Muthukrishnan, 2005) keeps `DEPTH` rows of `WIDTH`
//! counters (1 MiB) whatever the catalog's size, and a file's estimate is the smallest of its
//! counters: never below the truth, above it only by collisions with busier files (expected
//! error: total demand / `WIDTH`). Halving every counter each half-life makes it a decaying
//! count, so yesterday's hit stops counting as demand; holders decay the demand they were told
//! at the same rate, so the directory never has to say that a file's demand went down.
//!
//! A crate was not used: the maintained ones lack decay, and decay is the point.

use std::time::{Duration, Instant};

use crate::ids::ContentId;

/// Demand halves after this long without requests.
pub const HALF_LIFE: Duration = Duration::from_secs(600);

const DEPTH: usize = 4;
const WIDTH: usize = 1 << 16;

#[derive(Debug)]
pub struct DemandSketch {
    counters: Vec<u32>,
    halved_at: Instant,
}

impl DemandSketch {
    pub fn new(now: Instant) -> Self {
        Self { counters: vec![0; DEPTH * WIDTH], halved_at: now }
    }

    /// The counter of row `row` for `id`. A content id is a BLAKE3 hash, uniform already: each
    /// row takes its index from its own four bytes.
    fn slot(id: &ContentId, row: usize) -> usize {
        let b = id.as_bytes();
        let at = row * 4;
        let word = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        row * WIDTH + (word as usize % WIDTH)
    }

    fn decay(&mut self, now: Instant) {
        let mut halvings = 0;
        while now.saturating_duration_since(self.halved_at) >= HALF_LIFE && halvings < 32 {
            self.halved_at += HALF_LIFE;
            halvings += 1;
        }
        if now.saturating_duration_since(self.halved_at) >= HALF_LIFE {
            // Asleep for longer than 32 half-lives: everything is zero anyway.
            self.halved_at = now;
        }
        if halvings > 0 {
            for c in &mut self.counters {
                *c = c.checked_shr(halvings).unwrap_or(0);
            }
        }
    }

    /// One request for `id`; returns its estimate before and after.
    pub fn record(&mut self, id: &ContentId, now: Instant) -> (u32, u32) {
        self.decay(now);
        let before = self.estimate_now(id);
        // Conservative update: raise only the counters at the minimum, which keeps collisions'
        // overestimate down without ever going below the truth.
        for row in 0..DEPTH {
            let slot = Self::slot(id, row);
            if self.counters[slot] == before {
                self.counters[slot] = before.saturating_add(1);
            }
        }
        (before, self.estimate_now(id))
    }

    /// `id`'s demand at `now`.
    pub fn estimate(&mut self, id: &ContentId, now: Instant) -> u32 {
        self.decay(now);
        self.estimate_now(id)
    }

    fn estimate_now(&self, id: &ContentId) -> u32 {
        (0..DEPTH).map(|row| self.counters[Self::slot(id, row)]).min().unwrap_or(0)
    }
}

/// `demand` told at some time, as it stands `elapsed` later: what a holder keeps in step with
/// the directory's halving without being told.
pub fn decayed(demand: u32, elapsed: Duration) -> u32 {
    let halvings = elapsed.as_secs() / HALF_LIFE.as_secs();
    demand.checked_shr(u32::try_from(halvings).unwrap_or(u32::MAX)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> ContentId {
        ContentId::from_array(*blake3::hash(&n.to_le_bytes()).as_bytes())
    }

    #[test]
    fn counts_are_never_below_the_truth_and_close_to_it_for_the_busy_files() {
        let now = Instant::now();
        let mut sketch = DemandSketch::new(now);
        // 200,000 files asked for once each, and ten asked for 1,000 times.
        for n in 0..200_000 {
            sketch.record(&id(n), now);
        }
        for n in 0..10 {
            for _ in 0..999 {
                sketch.record(&id(n), now);
            }
        }
        for n in 0..10 {
            let e = sketch.estimate(&id(n), now);
            assert!((1000..1010).contains(&e), "{e}");
        }
        let low = (10..1010).filter(|&n| sketch.estimate(&id(n), now) <= 2).count();
        assert!(low > 950, "{low} of 1000 single requests estimated within one");
    }

    #[test]
    fn demand_halves_each_half_life_on_both_sides() {
        let start = Instant::now();
        let mut sketch = DemandSketch::new(start);
        for _ in 0..64 {
            sketch.record(&id(7), start);
        }
        assert_eq!(sketch.record(&id(7), start), (64, 65));
        assert_eq!(sketch.estimate(&id(7), start + HALF_LIFE), 32);
        assert_eq!(decayed(65, HALF_LIFE), 32);
        assert_eq!(sketch.estimate(&id(7), start + HALF_LIFE * 3), 8);
        assert_eq!(decayed(65, HALF_LIFE * 3 + Duration::from_secs(1)), 8);
        assert_eq!(sketch.estimate(&id(7), start + HALF_LIFE * 100), 0, "a long sleep forgets all");
        assert_eq!(decayed(u32::MAX, HALF_LIFE * 100), 0);
    }
}
