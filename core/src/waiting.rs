//! How a download waits for sources, sans-IO: time is an argument, nothing here sleeps.
//!
//! Sources come and go between a search and a `get`, and during a download. A download with
//! nobody to fetch from keeps asking the directory (every `relocate_every`) for up to `bound`,
//! then gives up with [`Verdict::GiveUp`]; the bound is the user's (`quaver get
//! --wait-sources`). The clock starts when the last source was lost (or at the start, if there
//! was none), and any source found meanwhile stops it: a download that waits twice gets the
//! whole bound each time.
//!
//! A source that answers BUSY is online and only short of upload slots: that is backpressure,
//! not a reason to give up, so the download asks it again after the wait it announced,
//! [`busy_retry_after`] (bounded both ways: a peer's estimate is a hint, not a command).

use std::time::{Duration, Instant};

/// How long a download waits for a source by default (`quaver get` without `--wait-sources`).
pub const DEFAULT_WAIT: Duration = Duration::from_secs(300);
/// How often a waiting download asks the directory for sources again.
pub const RELOCATE_EVERY: Duration = Duration::from_secs(2);
/// Bounds on the pause before a BUSY source is asked again.
const BUSY_RETRY_MIN: Duration = Duration::from_millis(100);
const BUSY_RETRY_MAX: Duration = Duration::from_secs(5);

/// What a download should do about its sources now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// It has someone to talk to (connected, connecting, or answering BUSY).
    Fetching,
    /// Nobody: keep looking until `gives_up_at`.
    Waiting { gives_up_at: Instant },
    /// Nobody for the whole bound: fail.
    GiveUp,
}

/// The waiting policy of one download (see the module doc).
#[derive(Clone, Debug)]
pub struct SourceWait {
    bound: Duration,
    relocate_every: Duration,
    /// Since when the download has had nobody; `None` while it has someone.
    alone_since: Option<Instant>,
    last_lookup: Option<Instant>,
}

impl SourceWait {
    pub fn new(bound: Duration, relocate_every: Duration) -> Self {
        Self { bound, relocate_every, alone_since: None, last_lookup: None }
    }

    /// The verdict at `now`, given whether the download has any source to talk to.
    pub fn update(&mut self, now: Instant, has_sources: bool) -> Verdict {
        if has_sources {
            self.alone_since = None;
            return Verdict::Fetching;
        }
        let since = *self.alone_since.get_or_insert(now);
        let gives_up_at = since + self.bound;
        if now >= gives_up_at { Verdict::GiveUp } else { Verdict::Waiting { gives_up_at } }
    }

    /// Whether to ask the directory for sources now (at most every `relocate_every`); a yes
    /// counts as the lookup being made.
    pub fn lookup_due(&mut self, now: Instant) -> bool {
        let due = self.last_lookup.is_none_or(|t| now.saturating_duration_since(t) >= self.relocate_every);
        if due {
            self.last_lookup = Some(now);
        }
        due
    }

    /// When the download must look at its sources again, whatever happens meanwhile: the next
    /// lookup, or the end of the wait.
    pub fn next_wake(&self, now: Instant) -> Instant {
        let lookup = self.last_lookup.map_or(now, |t| t + self.relocate_every);
        match self.alone_since {
            Some(since) => lookup.min(since + self.bound),
            None => lookup,
        }
        .max(now)
    }
}

/// How long to wait before asking a source that answered BUSY (with its own estimate) again.
pub fn busy_retry_after(estimated_wait: Duration) -> Duration {
    estimated_wait.clamp(BUSY_RETRY_MIN, BUSY_RETRY_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_download_alone_waits_for_the_bound_then_gives_up() {
        let t0 = Instant::now();
        let mut w = SourceWait::new(10 * S, 2 * S);
        assert_eq!(w.update(t0, false), Verdict::Waiting { gives_up_at: t0 + 10 * S });
        assert_eq!(w.update(t0 + 9 * S, false), Verdict::Waiting { gives_up_at: t0 + 10 * S });
        assert_eq!(w.update(t0 + 10 * S, false), Verdict::GiveUp);
    }

    #[test]
    fn a_source_found_meanwhile_resets_the_clock() {
        let t0 = Instant::now();
        let mut w = SourceWait::new(10 * S, 2 * S);
        w.update(t0, false);
        assert_eq!(w.update(t0 + 8 * S, true), Verdict::Fetching);
        // Lost again: a whole new bound from then.
        assert_eq!(w.update(t0 + 9 * S, false), Verdict::Waiting { gives_up_at: t0 + 19 * S });
        assert_eq!(w.update(t0 + 18 * S, false), Verdict::Waiting { gives_up_at: t0 + 19 * S });
    }

    #[test]
    fn lookups_are_spaced_and_the_wake_covers_lookup_and_end() {
        let t0 = Instant::now();
        let mut w = SourceWait::new(3 * S, 2 * S);
        assert!(w.lookup_due(t0));
        assert!(!w.lookup_due(t0 + S));
        assert_eq!(w.next_wake(t0 + S), t0 + 2 * S);
        assert!(w.lookup_due(t0 + 2 * S));
        w.update(t0 + 2 * S, false);
        // The next lookup would be at 4 s, but the wait ends at 5 s: the lookup comes first.
        assert_eq!(w.next_wake(t0 + 2 * S), t0 + 4 * S);
        let mut short = SourceWait::new(S, 10 * S);
        short.lookup_due(t0);
        short.update(t0, false);
        assert_eq!(short.next_wake(t0), t0 + S, "the end of the wait comes before the lookup");
    }

    #[test]
    fn busy_retries_follow_the_estimate_within_bounds() {
        assert_eq!(busy_retry_after(Duration::ZERO), BUSY_RETRY_MIN);
        assert_eq!(busy_retry_after(Duration::from_millis(700)), Duration::from_millis(700));
        assert_eq!(busy_retry_after(Duration::from_secs(3600)), BUSY_RETRY_MAX);
    }
}
