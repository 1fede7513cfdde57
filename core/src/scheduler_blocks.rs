//! The scheduler's per-block bookkeeping: one byte per block, whatever the file size.
//!
//! Owns the state of every block (pooled, in flight at N sources, verified) and the search for
//! the lowest pooled block. Knows nothing of sources, speeds or time, and does no I/O.

use super::scheduler_types::{Block, SchedulerError};
use crate::wire::{CHUNK_GROUP_SIZE, MAX_RANGE_LEN};
use std::ops::Range;

/// Not verified and not in flight anywhere: free for any source that has it.
const POOLED: u8 = 0;
/// Verified: never requested again. (Values in between count the sources it is in flight at.)
const VERIFIED: u8 = u8::MAX;
/// Most sources one block can be in flight at.
pub(super) const MAX_HOLDERS: u8 = VERIFIED - 1;

/// The state of every block of one file.
pub(super) struct Blocks {
    file_size: u64,
    block_size: u64,
    /// POOLED, a holder count, or VERIFIED. One byte per block keeps a 100 GiB file of 256 KiB
    /// blocks at 400 KB of state.
    state: Vec<u8>,
    pooled: usize,
    verified: usize,
    verified_bytes: u64,
    /// No block below `hint` is pooled. Taking blocks moves it up, returning one moves it down,
    /// so "lowest pooled block first" costs O(1) amortised instead of a scan from 0.
    hint: usize,
}

impl Blocks {
    pub(super) fn new(
        file_size: u64,
        block_size: u64,
        verified: impl IntoIterator<Item = Block>,
    ) -> Result<Self, SchedulerError> {
        // A block must be verifiable on its own (whole chunk groups) and fit in one GetRange.
        if block_size == 0 || !block_size.is_multiple_of(CHUNK_GROUP_SIZE) || block_size > MAX_RANGE_LEN {
            return Err(SchedulerError::BlockSize(block_size));
        }
        let count = file_size.div_ceil(block_size);
        let count = u32::try_from(count)
            .ok()
            .and_then(|c| usize::try_from(c).ok())
            .ok_or(SchedulerError::TooManyBlocks { file_size })?;
        let mut blocks = Self {
            file_size,
            block_size,
            state: vec![POOLED; count],
            pooled: count,
            verified: 0,
            verified_bytes: 0,
            hint: 0,
        };
        for b in verified {
            if usize::try_from(b).map_or(true, |i| i >= count) {
                return Err(SchedulerError::BlockOutOfRange { block: b, count });
            }
            blocks.mark_verified(b);
        }
        Ok(blocks)
    }

    pub(super) fn count(&self) -> usize {
        self.state.len()
    }

    pub(super) fn block_size(&self) -> u64 {
        self.block_size
    }

    pub(super) fn file_size(&self) -> u64 {
        self.file_size
    }

    pub(super) fn pooled(&self) -> usize {
        self.pooled
    }

    pub(super) fn verified(&self) -> usize {
        self.verified
    }

    pub(super) fn verified_bytes(&self) -> u64 {
        self.verified_bytes
    }

    fn get(&self, b: Block) -> Option<u8> {
        self.state.get(usize::try_from(b).ok()?).copied()
    }

    /// The byte range of block `b`; the last block may be short.
    pub(super) fn range(&self, b: Block) -> Option<Range<u64>> {
        self.get(b)?;
        let start = u64::from(b) * self.block_size;
        Some(start..(start + self.block_size).min(self.file_size))
    }

    fn len_of(&self, b: Block) -> u64 {
        self.range(b).map_or(0, |r| r.end - r.start)
    }

    pub(super) fn exists(&self, b: Block) -> bool {
        self.get(b).is_some()
    }

    pub(super) fn is_verified(&self, b: Block) -> bool {
        self.get(b) == Some(VERIFIED)
    }

    pub(super) fn is_pooled(&self, b: Block) -> bool {
        self.get(b) == Some(POOLED)
    }

    /// Sources `b` is in flight at (0 when pooled or verified).
    pub(super) fn holders(&self, b: Block) -> u8 {
        self.get(b).filter(|&s| s != VERIFIED).unwrap_or(0)
    }

    /// Takes the lowest pooled block that `wanted` accepts and counts one holder for it.
    pub(super) fn take_lowest(&mut self, wanted: impl Fn(Block) -> bool) -> Option<Block> {
        if self.pooled == 0 {
            return None;
        }
        let mut first_pooled = None;
        for i in self.hint..self.state.len() {
            if self.state[i] != POOLED {
                continue;
            }
            first_pooled.get_or_insert(i);
            // `i < state.len() <= u32::MAX + 1`, checked in `new`, so this never fails.
            let Ok(b) = Block::try_from(i) else { break };
            if wanted(b) {
                self.state[i] = 1;
                self.pooled -= 1;
                // Below `i` every block is not pooled, except pooled ones this source does not
                // have: the lowest of those stays the hint for the next source.
                self.hint = match first_pooled {
                    Some(f) if f < i => f,
                    _ => i + 1,
                };
                return Some(b);
            }
        }
        self.hint = first_pooled.unwrap_or(self.state.len());
        None
    }

    /// One more source holds `b` (an end-phase duplicate). False if it cannot take another.
    pub(super) fn add_holder(&mut self, b: Block, max: u8) -> bool {
        let Some(slot) = usize::try_from(b).ok().and_then(|i| self.state.get_mut(i)) else {
            return false;
        };
        if *slot == POOLED || *slot == VERIFIED || *slot >= max.min(MAX_HOLDERS) {
            return false;
        }
        *slot += 1;
        true
    }

    /// One source stopped holding `b`; with no holder left it goes back to the pool.
    pub(super) fn release(&mut self, b: Block) {
        let Ok(i) = usize::try_from(b) else { return };
        match self.state.get_mut(i) {
            Some(slot) if *slot != POOLED && *slot != VERIFIED => {
                *slot -= 1;
                if *slot == POOLED {
                    self.pooled += 1;
                    self.hint = self.hint.min(i);
                }
            }
            _ => {}
        }
    }

    /// Marks `b` verified, whatever it was. False if it already was (or does not exist).
    pub(super) fn mark_verified(&mut self, b: Block) -> bool {
        let len = self.len_of(b);
        let Some(slot) = usize::try_from(b).ok().and_then(|i| self.state.get_mut(i)) else {
            return false;
        };
        match *slot {
            VERIFIED => return false,
            POOLED => self.pooled -= 1,
            _ => {}
        }
        *slot = VERIFIED;
        self.verified += 1;
        self.verified_bytes += len;
        true
    }

    /// Every block not verified yet, lowest first.
    pub(super) fn missing(&self) -> impl Iterator<Item = Block> + '_ {
        (0..).zip(&self.state).filter(|&(_, &s)| s != VERIFIED).map(|(b, _)| b)
    }
}

/// A fixed-size set of blocks, one bit each: what a partial source holds.
#[derive(Clone, Debug)]
pub(super) struct BlockSet {
    words: Vec<u64>,
}

impl BlockSet {
    pub(super) fn new(count: usize) -> Self {
        Self { words: vec![0; count.div_ceil(64)] }
    }

    /// Adds `b`. A block past the end of the file is harmless: it is never asked for.
    pub(super) fn insert(&mut self, b: Block) {
        let i = b as usize;
        if let Some(w) = self.words.get_mut(i / 64) {
            *w |= 1 << (i % 64);
        }
    }

    pub(super) fn contains(&self, b: Block) -> bool {
        let i = b as usize;
        self.words.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
}
