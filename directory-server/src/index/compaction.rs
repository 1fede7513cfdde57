//! When to merge the whole search index into one segment: a sans-IO policy the index loop asks
//! after every indexing round (the merge itself is [`SearchIndex::merge_all`]).
//!
//! Every search pays a set-up per segment, and tantivy's log merge policy leaves several
//! (seven at 1M files). One segment cut the mean search time by about a third on the 1M bench,
//! but a full merge rewrites the whole index (about 10 s of one core at 1M files). So:
//! - **only when caught up**: a round indexed less than a full batch, so no backlog is waiting
//!   behind the merge (after a bulk load, as soon as it is in);
//! - **not too often**: at most once per `min_gap` (an index that keeps changing costs one full
//!   rewrite per `min_gap`, the price of searching one segment most of the time);
//! - **only if it helps**: more than one segment.
//!
//! [`SearchIndex::merge_all`]: super::SearchIndex::merge_all

use std::time::{Duration, Instant};

/// The compaction policy's state (see the module doc).
#[derive(Debug)]
pub struct Compaction {
    min_gap: Duration,
    last: Option<Instant>,
}

impl Compaction {
    pub fn new(min_gap: Duration) -> Self {
        Self { min_gap, last: None }
    }

    /// After an indexing round that indexed `indexed` documents out of at most `batch`, with
    /// `segments` segments now: whether to merge them all now.
    pub fn due(&self, indexed: usize, batch: usize, segments: usize, now: Instant) -> bool {
        let caught_up = indexed < batch;
        let rested = self.last.is_none_or(|t| now.saturating_duration_since(t) >= self.min_gap);
        caught_up && rested && segments > 1
    }

    /// A merge ran at `now` (whether or not it completed: a failed one is not retried at once).
    pub fn ran(&mut self, now: Instant) {
        self.last = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BATCH: usize = 100;
    const GAP: Duration = Duration::from_secs(600);

    #[test]
    fn merges_once_caught_up_with_several_segments_then_rests() {
        let t0 = Instant::now();
        let mut c = Compaction::new(GAP);
        assert!(!c.due(BATCH, BATCH, 7, t0), "a full batch: more is waiting");
        assert!(!c.due(10, BATCH, 1, t0), "one segment: nothing to merge");
        assert!(c.due(10, BATCH, 7, t0), "caught up");
        assert!(c.due(0, BATCH, 2, t0), "an idle round after the last batch counts too");
        c.ran(t0);
        assert!(!c.due(0, BATCH, 3, t0 + GAP / 2), "rests between merges");
        assert!(c.due(0, BATCH, 3, t0 + GAP));
        assert!(!c.due(BATCH, BATCH, 3, t0 + GAP), "not with a backlog");
    }
}
