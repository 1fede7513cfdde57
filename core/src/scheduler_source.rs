//! One source as the scheduler sees it: what it holds, how fast it is, how far to trust it.
//!
//! Owns the throughput estimate, the in-flight window derived from it, and the failure backoff.
//! Knows nothing of other sources or of block states, reads no clock (time comes in as
//! arguments) and does no I/O.

use super::scheduler_blocks::BlockSet;
use super::scheduler_types::{Block, SchedulerConfig};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Where a source stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceStatus {
    /// Gets requests (unless backing off after a failure).
    Active,
    /// Too many transient failures in a row: gets no more requests until removed and re-added.
    Retired,
    /// Sent a block that failed verification: gets no request ever again.
    Banned,
}

/// A request sent to a source and not answered yet.
#[derive(Clone, Copy, Debug)]
pub(super) struct InFlight {
    pub(super) block: Block,
    /// Requests in flight at this source when this one was sent, itself included: the work the
    /// source had to do before this block could be done (it serves requests roughly in order).
    pub(super) queued: u32,
}

pub(super) struct Source<S> {
    pub(super) id: S,
    /// `None` for a complete source; a partial one holds only these blocks.
    pub(super) have: Option<BlockSet>,
    /// Oldest first.
    pub(super) in_flight: VecDeque<InFlight>,
    /// Smoothed throughput in bytes per second; `None` until a block completes.
    pub(super) bandwidth: Option<f64>,
    pub(super) bytes_verified: u64,
    pub(super) blocks_verified: u64,
    /// Transient failures since the last success.
    pub(super) failures: u32,
    /// A failure was reported; its backoff starts at the next poll (events carry no time).
    pub(super) backoff_pending: bool,
    pub(super) retry_at: Option<Instant>,
    /// The source said BUSY: ask again after this wait (starts at the next poll, like a backoff).
    pub(super) busy_pending: Option<Duration>,
    /// The most requests the source was seen to take at once without answering BUSY. Grows by
    /// one per verified block (additive increase) until it no longer limits the window.
    pub(super) busy_cap: Option<usize>,
    pub(super) status: SourceStatus,
    /// Requests answered so far (any outcome), and since when that count has not moved while
    /// requests were in flight (set at polls: events carry no time). A source that answers
    /// nothing for long is stalled: most likely dead without having closed its connection.
    pub(super) answered: u64,
    pub(super) quiet_since: Option<(u64, Instant)>,
}

impl<S> Source<S> {
    pub(super) fn new(id: S, have: Option<BlockSet>) -> Self {
        Self {
            id,
            have,
            in_flight: VecDeque::new(),
            bandwidth: None,
            bytes_verified: 0,
            blocks_verified: 0,
            failures: 0,
            backoff_pending: false,
            retry_at: None,
            busy_pending: None,
            busy_cap: None,
            status: SourceStatus::Active,
            answered: 0,
            quiet_since: None,
        }
    }

    pub(super) fn has(&self, b: Block) -> bool {
        self.have.as_ref().is_none_or(|set| set.contains(b))
    }

    pub(super) fn holds(&self, b: Block) -> bool {
        self.in_flight.iter().any(|f| f.block == b)
    }

    /// The throughput to plan with: the measured one, or the config's guess for a new source.
    pub(super) fn rate(&self, cfg: &SchedulerConfig) -> f64 {
        self.bandwidth.unwrap_or(cfg.unknown_bandwidth).max(1.0)
    }

    /// How many requests this source may have in flight: enough to keep it busy for
    /// `target_latency` (bandwidth × latency, counted in blocks), halved per recent failure.
    /// More in flight than that only lengthens its queue and the blocks it strands if it dies;
    /// fewer leaves its pipe idle between requests.
    pub(super) fn window(&self, cfg: &SchedulerConfig, block_size: u64) -> usize {
        let blocks = match self.bandwidth {
            // Float to integer casts saturate, so a wild estimate cannot overflow.
            Some(bw) => (bw * cfg.target_latency.as_secs_f64() / block_size as f64) as usize,
            None => cfg.min_in_flight,
        };
        let window = blocks.clamp(cfg.min_in_flight, cfg.max_in_flight);
        let window = self.busy_cap.map_or(window, |cap| window.min(cap));
        (window >> self.failures.min(16)).max(1)
    }

    /// Requests it may be sent right now.
    pub(super) fn free_slots(&self, cfg: &SchedulerConfig, block_size: u64, now: Instant) -> usize {
        let waiting =
            self.retry_at.is_some_and(|t| now < t) || self.backoff_pending || self.busy_pending.is_some();
        if self.status != SourceStatus::Active || waiting {
            return 0;
        }
        self.window(cfg, block_size).saturating_sub(self.in_flight.len())
    }

    pub(super) fn push(&mut self, block: Block) {
        let queued = u32::try_from(self.in_flight.len() + 1).unwrap_or(u32::MAX);
        self.in_flight.push_back(InFlight { block, queued });
    }

    /// Forgets the request for `b`; returns it if there was one.
    pub(super) fn take(&mut self, b: Block) -> Option<InFlight> {
        let pos = self.in_flight.iter().position(|f| f.block == b)?;
        self.in_flight.remove(pos)
    }

    /// Notes at a poll whether the source answered anything since the last one.
    pub(super) fn note_progress(&mut self, now: Instant) {
        if self.in_flight.is_empty() {
            self.quiet_since = None;
        } else if self.quiet_since.is_none_or(|(n, _)| n != self.answered) {
            self.quiet_since = Some((self.answered, now));
        }
    }

    /// When this source counts as stalled if it stays silent: `stall_after`, or what its
    /// requests in flight plus four more blocks should take at its measured rate if that is
    /// longer (a slow but live source is not stalled). The requests in flight count because a
    /// source serves several at once: sharing its rate, they may all finish together, after
    /// a silence of about `in_flight` block times.
    pub(super) fn stall_deadline(&self, cfg: &SchedulerConfig, block_size: u64) -> Option<Instant> {
        let (_, since) = self.quiet_since?;
        let blocks = 4.0 + self.in_flight.len() as f64;
        let per_block = Duration::from_secs_f64((blocks * block_size as f64 / self.rate(cfg)).min(3600.0));
        Some(since + cfg.stall_after.max(per_block))
    }

    /// Silent past its [`stall_deadline`](Self::stall_deadline) at `now`.
    pub(super) fn is_stalled(&self, cfg: &SchedulerConfig, block_size: u64, now: Instant) -> bool {
        self.stall_deadline(cfg, block_size).is_some_and(|t| now >= t)
    }

    /// A block arrived and verified `elapsed` after it was requested.
    pub(super) fn record_success(
        &mut self,
        req: InFlight,
        bytes: u64,
        elapsed: Duration,
        cfg: &SchedulerConfig,
    ) {
        self.failures = 0;
        self.retry_at = None;
        self.backoff_pending = false;
        self.busy_cap = match self.busy_cap {
            Some(cap) if cap < cfg.max_in_flight => Some(cap + 1),
            _ => None,
        };
        // Little's law: with `queued` requests ahead of and including this one, the source moved
        // about `queued - 0.5` blocks (the head was half done on average) in `elapsed`. Timing
        // one block alone would undercount a source that serves many requests in parallel.
        let secs = elapsed.as_secs_f64().max(1e-3);
        let sample = bytes as f64 * (f64::from(req.queued) - 0.5).max(1.0) / secs;
        self.bandwidth = Some(match self.bandwidth {
            None => sample,
            Some(bw) => bw + cfg.ewma_weight * (sample - bw),
        });
    }

    /// A request failed for a reason that may pass (timeout, reset, BUSY, ...).
    pub(super) fn record_failure(&mut self, cfg: &SchedulerConfig) {
        self.failures = self.failures.saturating_add(1);
        self.bandwidth = self.bandwidth.map(|bw| bw / 2.0);
        if self.failures >= cfg.max_failures {
            self.status = SourceStatus::Retired;
        } else {
            self.backoff_pending = true;
        }
    }

    /// The source answered BUSY to one of its requests: it is not failing, only full. Its window
    /// shrinks to what it was serving (at least one request) and it is asked again after `wait`
    /// (clamped to the backoff bounds). BUSY never retires a source.
    pub(super) fn record_busy(&mut self, wait: Duration, cfg: &SchedulerConfig) {
        let serving = self.in_flight.len().max(1);
        self.busy_cap = Some(self.busy_cap.map_or(serving, |cap| cap.min(serving)));
        let wait = wait.clamp(cfg.backoff_base / 10, cfg.backoff_max);
        self.busy_pending = Some(self.busy_pending.map_or(wait, |w| w.max(wait)));
    }

    /// Starts a pending backoff at `now`: `backoff_base × 2^(failures-1)`, capped; or the wait a
    /// BUSY answer asked for.
    pub(super) fn start_backoff(&mut self, cfg: &SchedulerConfig, now: Instant) {
        if let Some(wait) = self.busy_pending.take() {
            let until = now + wait;
            self.retry_at = Some(self.retry_at.map_or(until, |t| t.max(until)));
        }
        if self.backoff_pending {
            self.backoff_pending = false;
            let factor = 1u32 << self.failures.saturating_sub(1).min(16);
            let wait = cfg.backoff_base.saturating_mul(factor).min(cfg.backoff_max);
            self.retry_at = Some(now + wait);
        } else if self.retry_at.is_some_and(|t| now >= t) {
            self.retry_at = None;
        }
    }
}
