//! When to merge the whole search index into one segment: a sans-IO policy the index loop asks
//! after every indexing round (the merge itself is [`SearchIndex::merge_all`]).
//!
//! Every search pays a set-up per segment, and tantivy's log merge policy leaves several
//! (four to seven at 1M files). One segment cut the mean search time by about a third on the
//! 1M bench, but a full merge rewrites the whole index (about 10 s of one core at 1M files). So:
//! - **only when quiet**: a round found nothing to index, so no backlog waits behind the merge
//!   and no bulk load is still adding segments (after a bulk load, as soon as it is in);
//! - **on a CPU budget**: after a merge that took `t`, the next waits at least `t` times
//!   `rest_factor`, so merges take at most 1 / `rest_factor` of one core however busy the
//!   directory is, and a cheap merge of a small index does not hold back the next one (a merge
//!   that lost a race with tantivy's own merges rests only as long as it ran, see `ran`);
//! - **only if it helps**: more than one segment.
//!
//! [`SearchIndex::merge_all`]: super::SearchIndex::merge_all

use std::time::{Duration, Instant};

/// The compaction policy's state (see the module doc).
#[derive(Debug)]
pub struct Compaction {
    rest_factor: u32,
    next_allowed: Option<Instant>,
}

impl Compaction {
    pub fn new(rest_factor: u32) -> Self {
        Self { rest_factor, next_allowed: None }
    }

    /// After an indexing round that indexed `indexed` documents, with `segments` segments now:
    /// whether to merge them all now.
    pub fn due(&self, indexed: usize, segments: usize, now: Instant) -> bool {
        indexed == 0 && segments > 1 && self.next_allowed.is_none_or(|t| now >= t)
    }

    /// A merge started at `started` took `took`, and `completed` or not.
    ///
    /// One that did not complete is retried after resting only as long as it ran, not
    /// `rest_factor` times that. Such a merge lost a race: tantivy's own merges, still running
    /// after a bulk load, took some of its segments, and tantivy only finds that out once ours
    /// is done, so its whole cost is wasted. Resting 50 times that (minutes at 1M files) left
    /// the index in five or six pieces, each search paying its set-up five or six times. The
    /// race ends with tantivy's merges, so retries do not go on for long.
    pub fn ran(&mut self, started: Instant, took: Duration, completed: bool) {
        let rest = if completed { took.saturating_mul(self.rest_factor) } else { took };
        self.next_allowed = Some(started + took + rest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REST: u32 = 50;

    #[test]
    fn merges_when_quiet_with_several_segments_then_rests_in_proportion() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut c = Compaction::new(REST);
        assert!(!c.due(10, 7, t0), "still indexing");
        assert!(!c.due(0, 1, t0), "one segment: nothing to merge");
        assert!(c.due(0, 7, t0), "quiet, several segments");

        // A 2 s merge: the next one waits 2 s + 100 s from its start.
        c.ran(t0, 2 * s, true);
        assert!(!c.due(0, 3, t0 + 101 * s), "rests in proportion to the last merge");
        assert!(c.due(0, 3, t0 + 102 * s));
        assert!(!c.due(5, 3, t0 + 102 * s), "not while indexing");

        // A cheap merge of a small index barely delays the next.
        c.ran(t0, Duration::from_millis(10), true);
        assert!(c.due(0, 2, t0 + s));
    }

    #[test]
    fn a_merge_that_lost_a_race_is_retried_after_resting_as_long_as_it_ran() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut c = Compaction::new(REST);
        c.ran(t0, 3 * s, false);
        assert!(!c.due(0, 5, t0 + 5 * s), "it rests as long as it ran");
        assert!(c.due(0, 5, t0 + 6 * s), "but not 50 times that");
        assert!(!c.due(7, 5, t0 + 6 * s), "and still not while indexing");
    }
}
