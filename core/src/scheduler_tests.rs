//! Unit tests of the scheduler, one rule at a time, with hand-made event sequences.

use super::scheduler::*;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const MS: Duration = Duration::from_millis(1);
const B: u64 = BLOCK_SIZE;

fn sched(blocks: u64) -> Scheduler<u8> {
    Scheduler::new(blocks * B, B, []).unwrap()
}

/// Completes `block` at `src` as if it took `ms` milliseconds.
fn done(s: &mut Scheduler<u8>, src: u8, block: Block, ms: u64) -> Verified<u8> {
    s.block_verified(src, block, B, MS * u32::try_from(ms).unwrap())
}

fn blocks_of(reqs: &[(u8, Block)], src: u8) -> Vec<Block> {
    reqs.iter().filter(|r| r.0 == src).map(|r| r.1).collect()
}

#[test]
fn construction_checks_its_inputs() {
    for bad in [0, 1000, 16 * 1024 + 1, 2 * 1024 * 1024] {
        assert_eq!(Scheduler::<u8>::new(1 << 20, bad, []).err(), Some(SchedulerError::BlockSize(bad)));
    }
    assert_eq!(
        Scheduler::<u8>::new(10 * B, B, [10]).err(),
        Some(SchedulerError::BlockOutOfRange { block: 10, count: 10 })
    );
    assert!(Scheduler::<u8>::new(u64::MAX, 16 * 1024, []).is_err());
    let cfg = SchedulerConfig { max_in_flight: 1, ..SchedulerConfig::default() };
    assert!(matches!(Scheduler::<u8>::with_config(cfg, B, B, []), Err(SchedulerError::Config(_))));
}

#[test]
fn blocks_cover_the_file_and_the_last_one_may_be_short() {
    let s = Scheduler::<u8>::new(2 * B + 5, B, []).unwrap();
    assert_eq!(s.block_count(), 3);
    assert_eq!(s.block_range(0), Some(0..B));
    assert_eq!(s.block_range(2), Some(2 * B..2 * B + 5));
    assert_eq!(s.block_range(3), None);
    let mut empty = Scheduler::<u8>::new(0, B, []).unwrap();
    assert!(empty.is_complete());
    empty.add_source(1);
    assert!(empty.next_requests(Instant::now()).is_empty());
    assert!(!empty.needs_more_sources());
}

#[test]
fn resumed_blocks_are_never_requested() {
    let mut s = Scheduler::<u8>::new(6 * B, B, [0, 1, 3]).unwrap();
    assert_eq!(s.verified_count(), 3);
    assert_eq!(s.missing_blocks().collect::<Vec<_>>(), vec![2, 4, 5]);
    s.add_source(1);
    let now = Instant::now();
    assert_eq!(s.next_requests(now), vec![(1, 2), (1, 4)]); // new source: window 2
    done(&mut s, 1, 2, 10);
    assert_eq!(s.next_requests(now), vec![(1, 5)]);
    assert_eq!(s.progress().verified_bytes, 4 * B);
}

#[test]
fn windows_grow_with_measured_throughput() {
    let mut s = sched(1000);
    let now = Instant::now();
    s.add_source(1);
    s.add_source(2);
    let first = s.next_requests(now);
    assert_eq!(first.len(), 4, "unmeasured sources start at min_in_flight");
    // Source 1 delivers 256 KiB in 20 ms (about 13 MB/s), source 2 in 2 s (128 KiB/s).
    let (b1, b2) = (blocks_of(&first, 1), blocks_of(&first, 2));
    done(&mut s, 1, b1[0], 20);
    done(&mut s, 2, b2[0], 2000);
    s.next_requests(now);
    let p = s.progress();
    let (fast, slow) = (&p.sources[0], &p.sources[1]);
    assert_eq!(fast.window, 32, "13 MB/s x 1 s is far over the cap");
    assert_eq!(fast.in_flight, 32);
    assert_eq!(slow.window, 2);
    assert_eq!(slow.in_flight, 2);
    // Fastest source first: it got the lowest blocks of this round.
    assert!(fast.bytes_per_sec > slow.bytes_per_sec);
}

#[test]
fn no_block_is_at_two_sources_while_the_pool_has_blocks() {
    let mut s = sched(1000);
    let now = Instant::now();
    for id in 1..=4 {
        s.add_source(id);
    }
    let mut seen = BTreeSet::new();
    let mut outstanding = Vec::new();
    for round in 0..10 {
        for (src, b) in s.next_requests(now) {
            assert!(seen.insert(b), "block {b} given twice (to {src})");
            outstanding.push((src, b));
        }
        if round % 2 == 0 {
            for (src, b) in outstanding.drain(..) {
                done(&mut s, src, b, 100);
            }
        }
    }
    assert!(seen.len() > 500 && !s.in_end_phase());
}

/// One slow source holds the last blocks; a fast, idle source takes them over.
#[test]
fn end_phase_duplicates_slow_blocks_and_the_first_copy_wins() {
    let mut s = sched(6);
    let now = Instant::now();
    s.add_source(1); // will be slow
    assert_eq!(s.next_requests(now), vec![(1, 0), (1, 1)]);
    done(&mut s, 1, 0, 4000); // 64 KiB/s: window stays 2
    assert_eq!(s.next_requests(now), vec![(1, 2)]);
    s.add_source(2);
    let reqs = s.next_requests(now);
    assert_eq!(reqs, vec![(2, 3), (2, 4)]);
    done(&mut s, 2, 3, 10); // fast: window 32
    let reqs = s.next_requests(now);
    assert!(s.in_end_phase());
    // Block 5 first (pooled), then duplicates: 2 is last in the slow queue, then 1.
    assert_eq!(reqs, vec![(2, 5), (2, 2), (2, 1)]);
    assert_eq!(s.holders(2), 2);
    assert_eq!(done(&mut s, 2, 2, 10), Verified::Accepted { cancel: vec![1] });
    assert_eq!(done(&mut s, 1, 2, 10), Verified::Late, "a late duplicate is ignored");
    assert_eq!(s.holders(2), 0);
    // Block 1 is at both already; nothing else is worth a copy.
    assert_eq!(s.next_requests(now), vec![]);
    assert_eq!(s.holders(1), 2);
}

#[test]
fn max_holders_of_one_turns_duplicates_off() {
    let cfg = SchedulerConfig { max_holders: 1, ..SchedulerConfig::default() };
    let mut s = Scheduler::<u8>::with_config(cfg, 6 * B, B, []).unwrap();
    let now = Instant::now();
    s.add_source(1);
    s.next_requests(now);
    done(&mut s, 1, 0, 4000);
    s.next_requests(now);
    s.add_source(2);
    s.next_requests(now);
    done(&mut s, 2, 3, 10);
    // The same scene as above, but the fast source only gets the pooled block.
    assert_eq!(s.next_requests(now), vec![(2, 5)]);
    assert!(s.in_end_phase());
}

#[test]
fn no_duplicate_unless_it_would_finish_much_sooner() {
    let mut s = sched(4);
    let now = Instant::now();
    s.add_source(1);
    s.add_source(2);
    let reqs = s.next_requests(now);
    assert_eq!(reqs.len(), 4);
    // Equal speeds: after each verifies one, each has one block left, no gain from a copy.
    done(&mut s, 1, blocks_of(&reqs, 1)[0], 500);
    done(&mut s, 2, blocks_of(&reqs, 2)[0], 500);
    assert!(s.in_end_phase());
    assert_eq!(s.next_requests(now), vec![]);
}

#[test]
fn a_source_with_bad_data_is_banned_forever() {
    let mut s = sched(10);
    let now = Instant::now();
    s.add_source(1);
    s.add_source(2);
    let reqs = s.next_requests(now);
    let bad = blocks_of(&reqs, 1);
    s.block_failed_verification(1, bad[0]);
    assert!(s.is_banned(1));
    for b in &bad {
        assert!(s.is_pooled(*b), "a banned source's blocks go back to the pool");
    }
    assert_eq!(s.progress().sources[0].status, SourceStatus::Banned);
    s.remove_source(1);
    assert!(!s.add_source(1), "re-adding a banned source is refused");
    assert!(!s.add_partial_source(1, [0, 1]));
    let mut open: Vec<(u8, Block)> = reqs.into_iter().filter(|r| r.0 == 2).collect();
    for _ in 0..20 {
        for (src, b) in open.drain(..) {
            done(&mut s, src, b, 10);
        }
        open = s.next_requests(now);
        assert!(open.iter().all(|r| r.0 == 2));
    }
    assert!(s.is_complete());
}

#[test]
fn transient_failures_back_off_then_retire_the_source() {
    let cfg = SchedulerConfig { max_failures: 3, want_sources: 1, ..SchedulerConfig::default() };
    let mut s = Scheduler::<u8>::with_config(cfg, 10 * B, B, []).unwrap();
    let t0 = Instant::now();
    s.add_source(1);
    assert_eq!(s.next_requests(t0), vec![(1, 0), (1, 1)]);
    s.request_failed(1, 0);
    assert!(s.is_pooled(0));
    s.request_failed(1, 7); // not in flight there: ignored
    assert_eq!(s.progress().sources[0].failures, 1);
    assert_eq!(s.next_requests(t0), vec![], "backing off");
    assert_eq!(s.poll_timeout(), Some(t0 + 500 * MS));
    assert_eq!(s.next_requests(t0 + 499 * MS), vec![]);
    // Window halved to 1, and block 1 still in flight: nothing more yet.
    assert_eq!(s.next_requests(t0 + 500 * MS), vec![]);
    // Only the stall check of block 1 is left: that block and four more block times at the
    // unmeasured rate.
    let cfg = SchedulerConfig::default();
    let stall = Duration::from_secs_f64(5.0 * B as f64 / cfg.unknown_bandwidth).max(cfg.stall_after);
    assert_eq!(s.poll_timeout(), Some(t0 + stall));
    done(&mut s, 1, 1, 10_000); // slow: the window stays at 2
    assert_eq!(s.next_requests(t0 + 600 * MS), vec![(1, 0), (1, 2)]);
    let t1 = t0 + 600 * MS;
    s.request_failed(1, 0);
    assert_eq!(s.next_requests(t1), vec![]);
    s.request_failed(1, 2);
    assert_eq!(s.next_requests(t1), vec![], "second failure in a row: 1 s wait");
    assert_eq!(s.next_requests(t1 + 500 * MS), vec![]);
    assert_eq!(s.poll_timeout(), Some(t1 + 1000 * MS));
    assert_eq!(s.next_requests(t1 + 1000 * MS), vec![(1, 0)]);
    assert!(!s.needs_more_sources());
    s.request_failed(1, 0);
    assert_eq!(s.progress().sources[0].status, SourceStatus::Retired);
    assert!(s.next_requests(t1 + Duration::from_secs(100)).is_empty());
    assert!(s.needs_more_sources());
    // Removing and re-adding gives it a fresh start (it was not banned).
    s.remove_source(1);
    assert!(s.add_source(1));
    assert_eq!(s.next_requests(t1), vec![(1, 0), (1, 2)]);
}

#[test]
fn a_removed_source_returns_its_blocks_lowest_first() {
    let mut s = sched(10);
    let now = Instant::now();
    s.add_source(1);
    s.add_source(2);
    assert_eq!(s.next_requests(now), vec![(1, 0), (1, 1), (2, 2), (2, 3)]);
    s.remove_source(1);
    assert_eq!(s.pooled_count(), 8);
    done(&mut s, 2, 2, 10_000);
    assert_eq!(s.next_requests(now), vec![(2, 0)]);
    // Events from the removed source: data still counts (it is verified), failures do not.
    s.request_failed(1, 1);
    assert_eq!(done(&mut s, 1, 1, 10), Verified::Accepted { cancel: vec![] });
    assert_eq!(done(&mut s, 9, 99, 10), Verified::Unknown);
}

#[test]
fn partial_sources_only_get_blocks_they_have() {
    let mut s = sched(8);
    let now = Instant::now();
    s.add_partial_source(1, [1, 3, 5, 100]);
    assert_eq!(s.next_requests(now), vec![(1, 1), (1, 3)]);
    assert!(s.needs_more_sources(), "blocks 0, 2, 4, 6, 7 have no source");
    done(&mut s, 1, 1, 10);
    done(&mut s, 1, 3, 10);
    assert_eq!(s.next_requests(now), vec![(1, 5)]);
    s.add_have(1, 6);
    assert_eq!(s.next_requests(now), vec![(1, 6)]);
    s.add_source(2);
    // The full source starts from the lowest pooled block, skipped by the partial one.
    assert_eq!(s.next_requests(now), vec![(2, 0), (2, 2)]);
}

#[test]
fn progress_reports_bytes_and_sources() {
    let mut s = Scheduler::<u8>::new(3 * B + 7, B, [3]).unwrap();
    let now = Instant::now();
    s.add_source(4);
    s.next_requests(now);
    done(&mut s, 4, 0, 1000);
    let p = s.progress();
    assert_eq!((p.file_size, p.verified_bytes), (3 * B + 7, B + 7));
    assert_eq!((p.blocks, p.verified_blocks, p.in_flight_blocks), (4, 2, 1));
    assert!(!p.end_phase);
    let src = &p.sources[0];
    assert_eq!((src.id, src.bytes_verified, src.blocks_verified), (4, B, 1));
    assert_eq!(src.bytes_per_sec, Some(B), "alone in its queue: 256 KiB in 1 s");
}

#[test]
fn state_is_one_byte_per_block() {
    // 1 TB in 256 KiB blocks: 3.8 million blocks, about 4 MB of state, made at once.
    let s = Scheduler::<u8>::new(1_000_000_000_000, B, []).unwrap();
    assert_eq!(s.block_count(), 3_814_698);
    assert_eq!(s.missing_blocks().next(), Some(0));
}

#[test]
fn busy_is_backpressure_not_failure() {
    let mut s = sched(400);
    s.add_source(1);
    // Grow the window well past 3 with fast answers.
    let mut now = Instant::now();
    for _ in 0..6 {
        for (src, b) in s.next_requests(now) {
            done(&mut s, src, b, 1);
        }
        now += MS;
    }
    let sent = s.next_requests(now);
    assert!(sent.len() > 4, "window grew: {sent:?}");
    // The source serves 3 at once and answers BUSY to the rest.
    let mut held: Vec<Block> = sent.iter().map(|r| r.1).take(3).collect();
    for &(_, b) in &sent[3..] {
        s.request_busy(1, b, 50 * MS);
    }
    assert!(s.next_requests(now).is_empty(), "waits out the BUSY");
    assert!(s.poll_timeout().is_some_and(|t| t >= now + 50 * MS));
    now += 60 * MS;
    assert!(s.next_requests(now).is_empty(), "its window is now what it serves");
    // Many more rounds of one success and BUSY for everything new: never retired, never a
    // failure, and the window never runs away from what the source serves.
    for _ in 0..30 {
        let b = held.remove(0);
        done(&mut s, 1, b, 10);
        let more = s.next_requests(now);
        assert!(!more.is_empty() && more.len() <= 2, "{more:?}");
        held.push(more[0].1);
        for &(_, b) in &more[1..] {
            s.request_busy(1, b, 50 * MS);
        }
        if more.len() > 1 {
            assert!(s.next_requests(now).is_empty(), "waits out the BUSY");
        }
        assert_eq!(s.usable_sources(), 1);
        assert_eq!(s.progress().sources[0].failures, 0);
        now += 60 * MS;
    }
}

#[test]
fn a_silent_source_stalls_and_idle_sources_copy_its_blocks() {
    let mut s = sched(6);
    s.add_source(1);
    s.add_source(2);
    let t0 = Instant::now();
    let first = s.next_requests(t0);
    // Both prove fast on their first blocks.
    for (src, b) in first {
        done(&mut s, src, b, 10);
    }
    let t1 = t0 + 20 * MS;
    let second = s.next_requests(t1);
    let at_one = blocks_of(&second, 1);
    assert!(!at_one.is_empty(), "{second:?}");
    // Source 1 now answers nothing. A poll notes the silence and says when to look again.
    let quiet_from = t1 + 10 * MS;
    let mut copied = blocks_of(&second, 2);
    copied.extend(blocks_of(&s.next_requests(quiet_from), 2));
    let deadline = s.poll_timeout().expect("a wake-up for the stall check");
    assert!(deadline <= quiet_from + SchedulerConfig::default().stall_after, "{:?}", deadline - quiet_from);
    // Fast and measured, source 1's blocks looked due at once: before the stall, block 4 was
    // not worth a copy.
    assert!(!copied.contains(&at_one[0]), "copied before any stall: {copied:?}");
    // Past the deadline source 1 is stalled: source 2 copies everything it holds.
    copied.extend(blocks_of(&s.next_requests(deadline + MS), 2));
    for b in &at_one {
        assert!(copied.contains(b), "block {b} of the silent source not copied: {copied:?}");
    }
    // The copies complete the file; source 1's requests are the ones cancelled.
    for b in at_one {
        if let Verified::Accepted { cancel } = done(&mut s, 2, b, 10) {
            assert_eq!(cancel, vec![1]);
        }
    }
    assert!(s.is_complete());
}

#[test]
fn a_silent_source_is_reported_stalled_and_removing_it_pools_its_blocks() {
    let mut s = sched(8);
    s.add_source(1);
    s.add_source(2);
    let t0 = Instant::now();
    for (src, b) in s.next_requests(t0) {
        done(&mut s, src, b, 10);
    }
    let t1 = t0 + 20 * MS;
    let at_one = blocks_of(&s.next_requests(t1), 1);
    assert!(!at_one.is_empty());
    assert!(s.stalled_sources(t1).is_empty(), "nobody is silent yet");
    // A poll notes source 1's silence; past its deadline it is reported, and only it.
    let _ = s.next_requests(t1 + MS);
    let deadline = s.poll_timeout().expect("a stall check");
    assert!(s.stalled_sources(deadline - MS).is_empty());
    let _ = s.next_requests(deadline);
    assert!(s.stalled_sources(deadline).contains(&1), "{:?}", s.stalled_sources(deadline));
    s.remove_source(1);
    for b in at_one {
        assert!(s.is_pooled(b) || s.holders(b) > 0, "block {b} stranded");
    }
    assert!(s.stalled_sources(deadline).iter().all(|&id| id != 1));
}
