//! Rarity hints: which of a peer's files it should hear about at its next beat.
//!
//! A holder ranks what it serves by each file's supply and demand (`quaver_core::seeding`), and
//! only the directory knows those. Sending every holder its whole share list per beat would cost
//! a million-file peer a million entries every thirty seconds, so the directory sends a
//! difference: a file is queued for a holder when its [`RarityClass`] changes (its online or
//! complete sources, or its demand, cross a bucket boundary), or when the holder has just become
//! one of its sources (it knows nothing of it yet). Each beat's answer takes the oldest queued
//! files, at most [`PER_BEAT`], with their counts as they are at that moment: a file that
//! changed class three times between beats costs one entry.
//!
//! Owns: the demand sketch (Locates counted per file, in bounded memory, halving every
//! [`HALF_LIFE`](quaver_core::seeding::demand::HALF_LIFE)) and the per-peer queues. The queues
//! are bounded per peer and in all: a hint that does not fit is dropped and counted, and the
//! holder goes on ranking that file by what it last heard (or as unknown), which costs
//! ordering, never correctness. Must never: take another lock while its own is held (it is
//! always the innermost lock), or scan a catalog.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Instant;

use quaver_core::seeding::Rarity;
use quaver_core::seeding::demand::DemandSketch;
use quaver_shared::{ContentId, PeerId};

use crate::online::Counts;

/// Hints in one beat's answer: about 13 KiB of protobuf.
pub const PER_BEAT: usize = 256;
/// Hints waiting for one peer: sixteen beats' worth. A peer that comes online with more files
/// than this learns the first ones and ranks the rest as unknown until they change class.
pub const PENDING_PER_PEER: usize = 4096;
/// Hints waiting in all (about 64 MiB at the worst).
pub const PENDING_TOTAL: usize = 1 << 20;

#[derive(Default)]
struct Queue {
    order: VecDeque<ContentId>,
    queued: HashSet<ContentId>,
}

pub struct Hints {
    demand: DemandSketch,
    queues: HashMap<PeerId, Queue>,
    pending: usize,
    sent: u64,
    dropped: u64,
}

/// What a beat takes: the files to tell about and whether more wait.
pub struct Taken {
    pub files: Vec<ContentId>,
    pub more: bool,
}

fn class_of(c: Counts) -> (u8, u8) {
    let class = Rarity { online_sources: c.online, complete_sources: c.complete, demand: 0 }.class();
    (class.online, class.complete)
}

impl Hints {
    pub fn new(now: Instant) -> Self {
        Self { demand: DemandSketch::new(now), queues: HashMap::new(), pending: 0, sent: 0, dropped: 0 }
    }

    fn queue(&mut self, peer: PeerId, id: &ContentId) {
        let queue = self.queues.entry(peer).or_default();
        if queue.queued.contains(id) {
            return;
        }
        if queue.order.len() >= PENDING_PER_PEER || self.pending >= PENDING_TOTAL {
            self.dropped += 1;
            return;
        }
        queue.order.push_back(*id);
        queue.queued.insert(*id);
        self.pending += 1;
    }

    /// File `id`'s online sources went from `before` to `after`; `holders` are its sources now,
    /// `newcomer` the one just added, if one was. The newcomer always hears of the file; the
    /// others only if its class changed.
    pub fn sources_changed<'a>(
        &mut self,
        id: &ContentId,
        before: Counts,
        after: Counts,
        holders: impl IntoIterator<Item = &'a PeerId>,
        newcomer: Option<PeerId>,
    ) {
        let changed = class_of(before) != class_of(after);
        for holder in holders {
            if changed || Some(*holder) == newcomer {
                self.queue(*holder, id);
            }
        }
    }

    /// Someone asked where file `id` is; `holders` are its sources. Its holders hear of it when
    /// its demand crosses a bucket.
    pub fn asked<'a>(&mut self, id: &ContentId, holders: impl IntoIterator<Item = &'a PeerId>, now: Instant) {
        let (before, after) = self.demand.record(id, now);
        let bucket = |demand| Rarity { demand, ..Rarity::default() }.class().demand;
        if bucket(before) != bucket(after) {
            for holder in holders {
                self.queue(*holder, id);
            }
        }
    }

    /// File `id`'s demand now.
    pub fn demand(&mut self, id: &ContentId, now: Instant) -> u32 {
        self.demand.estimate(id, now)
    }

    /// The files `peer` should hear about in this beat's answer, oldest first.
    pub fn take(&mut self, peer: &PeerId) -> Taken {
        let Some(queue) = self.queues.get_mut(peer) else { return Taken { files: Vec::new(), more: false } };
        let n = queue.order.len().min(PER_BEAT);
        let files: Vec<ContentId> = queue.order.drain(..n).collect();
        for id in &files {
            queue.queued.remove(id);
        }
        let more = !queue.order.is_empty();
        if !more {
            self.queues.remove(peer);
        }
        self.pending -= files.len();
        self.sent += files.len() as u64;
        Taken { files, more }
    }

    /// `peer` went offline: nothing waits for it any more.
    pub fn forget(&mut self, peer: &PeerId) {
        if let Some(queue) = self.queues.remove(peer) {
            self.pending -= queue.order.len();
        }
    }

    /// `(sent, dropped, pending)` since start, for metrics.
    pub fn counters(&self) -> (u64, u64, usize) {
        (self.sent, self.dropped, self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u8) -> PeerId {
        PeerId::from_array([n; 32])
    }

    fn file(n: u8) -> ContentId {
        ContentId::from_array([n; 32])
    }

    fn counts(online: u32, complete: u32) -> Counts {
        Counts { online, complete }
    }

    #[test]
    fn holders_hear_of_a_class_change_and_a_newcomer_of_every_file() {
        let now = Instant::now();
        let mut hints = Hints::new(now);
        let (a, b, c) = (peer(1), peer(2), peer(3));
        // b joins a: 1 -> 2 is a class change, both hear.
        hints.sources_changed(&file(9), counts(1, 1), counts(2, 2), [&a, &b], Some(b));
        assert_eq!(hints.take(&a).files, [file(9)]);
        assert_eq!(hints.take(&b).files, [file(9)]);
        // 5 -> 6 sources stays in the 4-7 bucket: only the newcomer hears.
        let five: Vec<PeerId> = (10..16).map(peer).collect();
        hints.sources_changed(&file(8), counts(5, 5), counts(6, 6), &five, Some(five[5]));
        assert!(hints.take(&five[0]).files.is_empty());
        assert_eq!(hints.take(&five[5]).files, [file(8)]);
        // A holder leaving 2 -> 1: the last one hears, nobody joined.
        hints.sources_changed(&file(9), counts(2, 2), counts(1, 1), [&c], None);
        assert_eq!(hints.take(&c).files, [file(9)]);
    }

    #[test]
    fn a_file_is_queued_once_however_often_it_changes_and_beats_drain_in_order() {
        let now = Instant::now();
        let mut hints = Hints::new(now);
        let a = peer(1);
        for n in 0..=3 {
            hints.sources_changed(&file(7), counts(n, n), counts(n + 1, n + 1), [&a], None);
        }
        hints.sources_changed(&file(6), counts(1, 1), counts(2, 2), [&a], None);
        assert_eq!(hints.take(&a).files, [file(7), file(6)]);
        assert_eq!(hints.counters(), (2, 0, 0));
    }

    #[test]
    fn queues_are_bounded_and_a_beat_takes_at_most_its_share() {
        let now = Instant::now();
        let mut hints = Hints::new(now);
        let a = peer(1);
        for n in 0..(PENDING_PER_PEER + 10) as u32 {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&n.to_le_bytes());
            hints.sources_changed(&ContentId::from_array(id), counts(0, 0), counts(1, 1), [&a], Some(a));
        }
        assert_eq!(hints.counters(), (0, 10, PENDING_PER_PEER));
        let first = hints.take(&a);
        assert_eq!((first.files.len(), first.more), (PER_BEAT, true));
        let mut beats = 1;
        while hints.take(&a).more {
            beats += 1;
        }
        assert_eq!(beats + 1, PENDING_PER_PEER / PER_BEAT);
        hints.sources_changed(&file(1), counts(0, 0), counts(1, 1), [&a], Some(a));
        hints.forget(&a);
        assert_eq!(hints.counters().2, 0, "a peer gone offline leaves nothing queued");
    }

    #[test]
    fn demand_crossing_a_bucket_tells_the_holders() {
        let now = Instant::now();
        let mut hints = Hints::new(now);
        let a = peer(1);
        // Buckets 0, 1, 2, 3, 4-7: the first four asks each cross one, the next three do not.
        for _ in 0..4 {
            hints.asked(&file(5), [&a], now);
            assert_eq!(hints.take(&a).files, [file(5)]);
        }
        for _ in 4..7 {
            hints.asked(&file(5), [&a], now);
            assert!(hints.take(&a).files.is_empty());
        }
        hints.asked(&file(5), [&a], now);
        assert_eq!(hints.take(&a).files, [file(5)], "8 opens the 8-15 bucket");
        assert_eq!(hints.demand(&file(5), now), 8);
    }
}
