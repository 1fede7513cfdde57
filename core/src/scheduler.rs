//! The fetch scheduler: which block of a file to ask which source for. A pure state machine.
//!
//! It owns the download's plan and nothing else: no sockets, no files, no tokio, no clock. The
//! fetch task around it reports events and asks for work; time only comes in as arguments
//! (`now: Instant` for polls, `elapsed: Duration` for completed blocks), so every rule here is
//! tested deterministically and a whole download can be simulated in microseconds.
//!
//! # Driving it
//!
//! 1. [`Scheduler::new`] with the file size, the block size ([`BLOCK_SIZE`]) and the blocks a
//!    previous run already verified (they are never requested again).
//! 2. [`Scheduler::add_source`] (or [`Scheduler::add_partial_source`]) for every source.
//! 3. Loop: send every `(source, block)` from [`Scheduler::next_requests`] as a `GetRange` of
//!    [`Scheduler::block_range`]; report each outcome with [`Scheduler::block_verified`],
//!    [`Scheduler::block_failed_verification`] or [`Scheduler::request_failed`], and a lost
//!    connection with [`Scheduler::remove_source`]. Poll again after every event, and at
//!    [`Scheduler::poll_timeout`] (a source's failure backoff ends). Stop at
//!    [`Scheduler::is_complete`]; ask the directory for more sources when
//!    [`Scheduler::needs_more_sources`].
//!
//! # Rules
//!
//! - **Lowest missing block first.** Close to sequential, which disk and a streaming player
//!   like; a block that comes back to the pool (failure, lost source) is the lowest again, so it
//!   is retried first and never starves.
//! - **Windows follow speed.** Each source may have about `bandwidth × target_latency` bytes of
//!   requests in flight (between `min_in_flight` and `max_in_flight` blocks), so a fast source
//!   gets more blocks at once and every source stays busy without a long queue.
//! - **One source per block, except in the end phase.** While some missing block is in no one's
//!   hands (and this source has it) a source only gets pooled blocks. Once it has none left to
//!   take, an idle source may *duplicate* a block held by another source if it would finish it at
//!   least `dup_advantage` times sooner. The first verified copy wins; [`Verified::Accepted`]
//!   lists the sources whose copies are now moot, so the caller can cancel their streams.
//! - **Bad data bans forever.** A source whose block fails verification never gets another
//!   request, even after `remove_source` and `add_source`; its blocks go back to the pool.
//! - **Transient failures back off.** A failed request halves the source's window and estimate
//!   and pauses it (`backoff_base`, doubling, capped); `max_failures` in a row retire it: no new
//!   requests, though those already sent may still land. Detecting a stalled request (no bytes
//!   for a while) is the caller's job, with its timers: report it as a failure or a removal.
//!
//! Events about a `(source, block)` that is not in flight (a cancelled duplicate, a request of
//! a removed source) change nothing but what they must: verified data is accepted from anyone,
//! since it is verified; a failed verification bans whoever sent it.
//!
//! Memory: one byte per block, one bit per block per partial source, and a few words per
//! request in flight: O(blocks), never O(file size).

use super::scheduler_blocks::{BlockSet, Blocks};
use super::scheduler_source::Source;
use super::scheduler_types::check_config;
pub use super::scheduler_types::{
    BLOCK_SIZE, Block, Progress, SchedulerConfig, SchedulerError, SourceKey, SourceProgress, SourceStatus,
    Verified,
};
use std::collections::BTreeSet;
use std::ops::Range;
use std::time::{Duration, Instant};

/// The plan of one download. See the module doc for the rules.
pub struct Scheduler<S> {
    cfg: SchedulerConfig,
    blocks: Blocks,
    sources: Vec<Source<S>>,
    banned: BTreeSet<S>,
}

impl<S: SourceKey> Scheduler<S> {
    /// A scheduler with the default config. `already_verified` are blocks a previous run kept.
    pub fn new(
        file_size: u64,
        block_size: u64,
        already_verified: impl IntoIterator<Item = Block>,
    ) -> Result<Self, SchedulerError> {
        Self::with_config(SchedulerConfig::default(), file_size, block_size, already_verified)
    }

    pub fn with_config(
        cfg: SchedulerConfig,
        file_size: u64,
        block_size: u64,
        already_verified: impl IntoIterator<Item = Block>,
    ) -> Result<Self, SchedulerError> {
        check_config(&cfg)?;
        Ok(Self {
            cfg,
            blocks: Blocks::new(file_size, block_size, already_verified)?,
            sources: Vec::new(),
            banned: BTreeSet::new(),
        })
    }

    /// Adds a source that has the whole file. False if it is banned or already present.
    pub fn add_source(&mut self, id: S) -> bool {
        self.insert_source(id, None)
    }

    /// Adds a source that has only the `have` blocks (from its `GetHave` answer).
    pub fn add_partial_source(&mut self, id: S, have: impl IntoIterator<Item = Block>) -> bool {
        let mut set = BlockSet::new(self.blocks.count());
        have.into_iter().for_each(|b| set.insert(b));
        self.insert_source(id, Some(set))
    }

    /// A partial source got one more block.
    pub fn add_have(&mut self, id: S, block: Block) {
        if let Some(set) = self.index(id).and_then(|i| self.sources[i].have.as_mut()) {
            set.insert(block);
        }
    }

    fn insert_source(&mut self, id: S, have: Option<BlockSet>) -> bool {
        if self.banned.contains(&id) || self.index(id).is_some() {
            return false;
        }
        self.sources.push(Source::new(id, have));
        true
    }

    /// A source is gone (disconnected, stalled): its blocks in flight go back to the pool.
    /// A banned source stays banned.
    pub fn remove_source(&mut self, id: S) {
        if let Some(i) = self.index(id) {
            self.release_all(i);
            self.sources.remove(i);
        }
    }

    /// `bytes` of `block` from `id` passed verification, `elapsed` after they were requested.
    pub fn block_verified(&mut self, id: S, block: Block, bytes: u64, elapsed: Duration) -> Verified<S> {
        if !self.blocks.exists(block) {
            return Verified::Unknown;
        }
        if !self.blocks.mark_verified(block) {
            // Normally its request was already dropped when the first copy won; make sure.
            if let Some(i) = self.index(id) {
                self.sources[i].take(block);
                self.sources[i].answered += 1;
            }
            return Verified::Late;
        }
        let len = self.blocks.range(block).map_or(0, |r| r.end - r.start);
        let mut cancel = Vec::new();
        for src in &mut self.sources {
            let req = src.take(block);
            if src.id == id {
                src.answered += 1;
                if let Some(req) = req {
                    src.record_success(req, bytes, elapsed, &self.cfg);
                }
                src.bytes_verified += len;
                src.blocks_verified += 1;
            } else if req.is_some() {
                cancel.push(src.id);
            }
        }
        Verified::Accepted { cancel }
    }

    /// `block` from `id` failed verification: `id` is banned for good, its blocks go back to
    /// the pool. The caller should close the connection.
    pub fn block_failed_verification(&mut self, id: S, block: Block) {
        let _ = block; // Which block does not matter: one bad block is proof enough.
        self.banned.insert(id);
        if let Some(i) = self.index(id) {
            self.sources[i].status = SourceStatus::Banned;
            self.release_all(i);
        }
    }

    /// The source answered BUSY for `block`: the block goes back to the pool, the source's
    /// window shrinks to what it serves at once, and it is asked again after `retry_after`.
    /// Unlike a failure, BUSY never retires a source: it is backpressure, not a fault.
    pub fn request_busy(&mut self, id: S, block: Block, retry_after: Duration) {
        let Some(i) = self.index(id) else { return };
        if self.sources[i].take(block).is_none() {
            return;
        }
        self.sources[i].answered += 1;
        self.blocks.release(block);
        self.sources[i].record_busy(retry_after, &self.cfg);
    }

    /// Sources that may still get requests (not retired, not banned).
    pub fn usable_sources(&self) -> usize {
        self.sources.iter().filter(|s| s.status == SourceStatus::Active).count()
    }

    /// A request failed in a way that may pass (reset, timeout, RANGE_NOT_AVAILABLE):
    /// the block goes back to the pool and the source backs off.
    pub fn request_failed(&mut self, id: S, block: Block) {
        let Some(i) = self.index(id) else { return };
        if self.sources[i].take(block).is_none() {
            return; // Not in flight there (cancelled, or settled already): nothing to undo.
        }
        self.sources[i].answered += 1;
        self.blocks.release(block);
        // A retired source keeps its other requests: they may still arrive, and if they fail
        // they come back here one by one. Only `remove_source` takes them all back at once.
        self.sources[i].record_failure(&self.cfg);
    }

    /// The requests to send now, as `(source, block)`: pooled blocks first (lowest first, the
    /// fastest sources served first), then end-phase duplicates.
    pub fn next_requests(&mut self, now: Instant) -> Vec<(S, Block)> {
        let mut out = Vec::new();
        if self.is_complete() {
            return out;
        }
        for src in &mut self.sources {
            src.start_backoff(&self.cfg, now);
            src.note_progress(now);
        }
        let order = self.by_speed();
        let block_size = self.blocks.block_size();
        for &i in &order {
            let src = &mut self.sources[i];
            for _ in 0..src.free_slots(&self.cfg, block_size, now) {
                let Some(b) = self.blocks.take_lowest(|b| src.has(b)) else { break };
                src.push(b);
                out.push((src.id, b));
            }
        }
        // A source with free slots left found no pooled block it has: its end phase.
        let idle: Vec<usize> = order
            .into_iter()
            .filter(|&i| self.sources[i].free_slots(&self.cfg, block_size, now) > 0)
            .collect();
        if let Some(bar) = idle.iter().map(|&i| self.copy_time(i)).min_by(f64::total_cmp) {
            let mut candidates = self.duplicate_candidates(bar * self.cfg.dup_advantage, now);
            for i in idle {
                self.duplicate_into(i, &mut candidates, now, &mut out);
            }
        }
        out
    }

    /// When to poll again even without an event: the end of the earliest failure backoff, or
    /// the moment a silent source would count as stalled.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let block_size = self.blocks.block_size();
        let active = self.sources.iter().filter(|s| s.status == SourceStatus::Active);
        active.flat_map(|s| [s.retry_at, s.stall_deadline(&self.cfg, block_size)]).flatten().min()
    }

    /// Active sources that have been silent past their stall deadline (see
    /// [`SchedulerConfig::stall_after`]) as of the last poll, with requests in flight: most
    /// likely dead without having closed their connection. The caller should drop them
    /// ([`Scheduler::remove_source`] and its own streams): their blocks go back to the pool at
    /// once, and whatever they held while they hung (buffers, streams) is freed.
    pub fn stalled_sources(&self, now: Instant) -> Vec<S> {
        let block_size = self.blocks.block_size();
        self.sources
            .iter()
            .filter(|s| s.status == SourceStatus::Active && !s.in_flight.is_empty())
            .filter(|s| s.is_stalled(&self.cfg, block_size, now))
            .map(|s| s.id)
            .collect()
    }

    /// Blocks that may take one more holder, with when their quickest holder should finish
    /// them, latest first. Finish times assume a source works through its requests in order at
    /// its measured rate. Built once per poll: every idle source then looks at its head only.
    /// Blocks due within `bar` seconds are left out: no idle source would beat them by enough.
    /// A stalled holder's blocks are due never: any idle source beats it.
    fn duplicate_candidates(&self, bar: f64, now: Instant) -> Vec<(f64, Block)> {
        let block_size = self.blocks.block_size() as f64;
        let mut all: Vec<(Block, f64)> = Vec::new();
        for holder in &self.sources {
            let rate = holder.rate(&self.cfg);
            let stalled = holder.is_stalled(&self.cfg, self.blocks.block_size(), now);
            for (pos, req) in holder.in_flight.iter().enumerate() {
                let due = if stalled { f64::INFINITY } else { (pos as f64 + 0.5) * block_size / rate };
                let holders = self.blocks.holders(req.block);
                // A block at one source is judged here; one at several only after we know its
                // earliest finish (below).
                if holders < self.cfg.max_holders && (holders > 1 || due > bar) {
                    all.push((req.block, due));
                }
            }
        }
        all.sort_by(|x, y| x.0.cmp(&y.0).then(x.1.total_cmp(&y.1)));
        all.dedup_by_key(|c| c.0); // keeps each block's earliest finish
        all.retain(|c| c.1 > bar);
        let mut latest_first: Vec<(f64, Block)> = all.into_iter().map(|(b, t)| (t, b)).collect();
        latest_first.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)));
        latest_first
    }

    /// Gives idle source `d` the candidates it would finish `dup_advantage` times sooner than
    /// their holders, latest-finishing first, while it has free slots.
    fn duplicate_into(
        &mut self,
        d: usize,
        candidates: &mut Vec<(f64, Block)>,
        now: Instant,
        out: &mut Vec<(S, Block)>,
    ) {
        let block_size = self.blocks.block_size();
        for _ in 0..self.sources[d].free_slots(&self.cfg, block_size, now) {
            let dup = &self.sources[d];
            let ours = self.copy_time(d);
            // Sorted latest first: once a candidate is not worth a copy, none after it is.
            let mut worth = candidates.iter().take_while(|c| ours * self.cfg.dup_advantage < c.0);
            let Some(j) = worth.position(|&(_, b)| dup.has(b) && !dup.holds(b)) else { break };
            let b = candidates[j].1;
            if !self.blocks.add_holder(b, self.cfg.max_holders) {
                break;
            }
            if self.blocks.holders(b) >= self.cfg.max_holders {
                candidates.remove(j);
            }
            self.sources[d].push(b);
            out.push((self.sources[d].id, b));
        }
    }

    /// Seconds source `i` would take to deliver one more block, behind the ones it has.
    fn copy_time(&self, i: usize) -> f64 {
        let src = &self.sources[i];
        (src.in_flight.len() as f64 + 0.5) * self.blocks.block_size() as f64 / src.rate(&self.cfg)
    }

    /// Source indices, fastest first (ties keep the order they were added in).
    fn by_speed(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.sources.len()).collect();
        order.sort_by(|&a, &b| {
            let (ra, rb) = (self.sources[a].rate(&self.cfg), self.sources[b].rate(&self.cfg));
            rb.total_cmp(&ra)
        });
        order
    }

    fn index(&self, id: S) -> Option<usize> {
        self.sources.iter().position(|s| s.id == id)
    }

    fn release_all(&mut self, i: usize) {
        for req in std::mem::take(&mut self.sources[i].in_flight) {
            self.blocks.release(req.block);
        }
    }

    pub fn is_complete(&self) -> bool {
        self.blocks.verified() == self.blocks.count()
    }

    pub fn verified_count(&self) -> usize {
        self.blocks.verified()
    }

    pub fn block_count(&self) -> usize {
        self.blocks.count()
    }

    /// Blocks waiting for a source (not verified, in flight nowhere).
    pub fn pooled_count(&self) -> usize {
        self.blocks.pooled()
    }

    /// No block is waiting for a source: duplicates are allowed from now on.
    pub fn in_end_phase(&self) -> bool {
        !self.is_complete() && self.blocks.pooled() == 0
    }

    pub fn is_verified(&self, block: Block) -> bool {
        self.blocks.is_verified(block)
    }

    /// Whether `block` is waiting for a source.
    pub fn is_pooled(&self, block: Block) -> bool {
        self.blocks.is_pooled(block)
    }

    /// Sources `block` is in flight at right now.
    pub fn holders(&self, block: Block) -> usize {
        usize::from(self.blocks.holders(block))
    }

    /// Blocks not verified yet, lowest first.
    pub fn missing_blocks(&self) -> impl Iterator<Item = Block> + '_ {
        self.blocks.missing()
    }

    /// The bytes of the file that `block` covers (the last block may be short).
    pub fn block_range(&self, block: Block) -> Option<Range<u64>> {
        self.blocks.range(block)
    }

    /// Whether this source is banned (sent bad data).
    pub fn is_banned(&self, id: S) -> bool {
        self.banned.contains(&id)
    }

    /// True while the download is unfinished and it has fewer than `want_sources` usable
    /// sources, or some missing block is held by none of them.
    pub fn needs_more_sources(&self) -> bool {
        if self.is_complete() {
            return false;
        }
        let usable: Vec<_> = self.sources.iter().filter(|s| s.status == SourceStatus::Active).collect();
        if usable.len() < self.cfg.want_sources {
            return true;
        }
        if usable.iter().any(|s| s.have.is_none()) {
            return false;
        }
        let mut missing = self.blocks.missing();
        missing.any(|b| !usable.iter().any(|s| s.has(b)))
    }

    pub fn progress(&self) -> Progress<S> {
        let block_size = self.blocks.block_size();
        let sources = self.sources.iter().map(|s| SourceProgress {
            id: s.id,
            status: s.status,
            bytes_verified: s.bytes_verified,
            blocks_verified: s.blocks_verified,
            in_flight: s.in_flight.len(),
            window: s.window(&self.cfg, block_size),
            bytes_per_sec: s.bandwidth.map(|bw| bw as u64),
            failures: s.failures,
        });
        Progress {
            file_size: self.blocks.file_size(),
            verified_bytes: self.blocks.verified_bytes(),
            blocks: self.blocks.count(),
            verified_blocks: self.blocks.verified(),
            in_flight_blocks: self.blocks.count() - self.blocks.verified() - self.blocks.pooled(),
            end_phase: self.in_end_phase(),
            sources: sources.collect(),
        }
    }
}
