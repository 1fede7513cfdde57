//! The transfer's promises, in virtual time. The simulator (`transfer_sim`) asserts the
//! per-action ones on every run: no block requested twice outside the end phase, a banned
//! source never dialled or asked again, every block written exactly once, no block the resume
//! check kept requested, no request to a source that is not connected. The tests here build
//! the scenarios, fixed and random, and check how each one ends.

use crate::scheduler::{BLOCK_SIZE, Block};
use crate::transfer::*;
use crate::transfer_sim::*;
use proptest::prelude::*;
use std::time::{Duration, Instant};

const MB: u64 = 1_000_000;

fn file(blocks: u64) -> u64 {
    blocks * BLOCK_SIZE - 1000
}

#[test]
fn one_honest_source_finishes_and_is_credited_every_byte() {
    let size = file(20);
    let out = Sim::new(size, BLOCK_SIZE, vec![SimSource::honest(10 * MB, 20)]).run();
    assert_eq!(out.end, Action::Finish);
    assert_eq!(out.per_source, vec![(0, size)]);
    assert_eq!(out.requests[&0], 20, "each block asked for once");
}

#[test]
fn a_source_that_sends_bad_data_is_banned_and_the_file_still_finishes() {
    let mut liar = SimSource::honest(50 * MB, 5);
    liar.corrupt = true;
    let out = Sim::new(file(30), BLOCK_SIZE, vec![SimSource::honest(5 * MB, 20), liar]).run();
    assert_eq!(out.end, Action::Finish);
    assert_eq!(out.banned, vec![1]);
    assert!(out.dropped.contains(&(1, DropReason::BadData)));
    assert!(!out.per_source.iter().any(|(s, _)| *s == 1));
}

#[test]
fn a_silent_source_is_dropped_while_others_remain() {
    let mut hung = SimSource::honest(20 * MB, 10);
    hung.silent_after = Some(3);
    let out = Sim::new(file(40), BLOCK_SIZE, vec![SimSource::honest(10 * MB, 10), hung]).run();
    assert_eq!(out.end, Action::Finish);
    assert!(out.dropped.contains(&(1, DropReason::Stalled)), "dropped: {:?}", out.dropped);
    // Dropped, not banned: a later lookup may dial it again.
    assert!(out.banned.is_empty());
}

#[test]
fn a_resumed_download_requests_only_what_the_check_did_not_keep() {
    let mut sim = Sim::new(file(16), BLOCK_SIZE, vec![SimSource::honest(10 * MB, 10)]);
    sim.saved_outboard = true;
    sim.marked = (0..10).collect();
    // Blocks 3 and 7 were marked but their bytes on disk no longer verify.
    sim.marked_good = (0..10).filter(|b| *b != 3 && *b != 7).collect();
    let out = sim.run();
    assert_eq!(out.end, Action::Finish);
    assert_eq!(out.requests[&0], 16 - 8, "the 6 unmarked blocks and the 2 that failed the check");
}

#[test]
fn the_outboard_race_skips_a_busy_source_and_bans_a_bad_outboard() {
    let mut busy = SimSource::honest(10 * MB, 2);
    busy.busy_outboards = 3;
    let mut bad = SimSource::honest(10 * MB, 1);
    bad.bad_outboard = true;
    let out = Sim::new(file(8), BLOCK_SIZE, vec![busy, bad]).run();
    assert_eq!(out.end, Action::Finish);
    assert_eq!(out.banned, vec![1]);
    assert!(out.dropped.contains(&(1, DropReason::BadOutboard)));
    assert_eq!(out.per_source.iter().map(|(_, b)| b).sum::<u64>(), file(8));
}

#[test]
fn with_no_source_the_download_waits_visibly_then_gives_up() {
    let mut later = SimSource::honest(10 * MB, 10);
    later.online_from_ms = 3_600_000;
    let mut sim = Sim::new(file(4), BLOCK_SIZE, vec![later]);
    sim.wait_for_sources = Duration::from_secs(20);
    let out = sim.run();
    assert!(out.waited);
    assert_eq!(out.end, Action::Fail(Failure::NoSources { tried: 0, waited: Duration::from_secs(20) }));
    assert_eq!(out.elapsed.as_secs(), 20);
}

#[test]
fn sources_that_are_listed_but_never_reached_end_in_no_sources_after_the_wait() {
    let mut behind_nat = SimSource::honest(10 * MB, 10);
    behind_nat.unreachable = true;
    let mut sim = Sim::new(file(4), BLOCK_SIZE, vec![behind_nat.clone(), behind_nat]);
    sim.wait_for_sources = Duration::from_secs(20);
    let out = sim.run();
    assert!(out.waited);
    let Action::Fail(Failure::NoSources { tried, waited }) = out.end else { panic!("{:?}", out.end) };
    assert_eq!(waited, Duration::from_secs(20));
    assert!(tried >= 2, "both were dialled (again after each lookup): {tried}");
    assert_eq!(out.elapsed.as_secs(), 20, "the wait is the user's bound, not longer");
}

#[test]
fn a_relayed_source_is_dialled_only_when_the_others_are_not_enough() {
    let routed = |route: Route, bandwidth: u64| SimSource { route, ..SimSource::honest(bandwidth, 10) };
    // Listed first, but eight others fill `max_sources`: the relay is never used.
    let mut sources = vec![routed(Route::Relayed, 50 * MB)];
    sources.extend((0..8).map(|i| routed(if i % 2 == 0 { Route::Direct } else { Route::Punched }, 10 * MB)));
    let out = Sim::new(file(40), BLOCK_SIZE, sources).run();
    assert_eq!(out.end, Action::Finish);
    assert!(!out.dialled.contains(&0), "dialled: {:?}", out.dialled);
    // With only two others it fills in, after them, and serves its share.
    let sources = vec![
        routed(Route::Relayed, 10 * MB),
        routed(Route::Direct, 10 * MB),
        routed(Route::Punched, 10 * MB),
    ];
    let out = Sim::new(file(40), BLOCK_SIZE, sources).run();
    assert_eq!(out.end, Action::Finish);
    assert_eq!(out.dialled.first(), Some(&1), "the others first: {:?}", out.dialled);
    assert_eq!(out.dialled.get(2), Some(&0), "then the relayed one: {:?}", out.dialled);
    assert!(out.per_source.iter().any(|(s, b)| *s == 0 && *b > 0), "{:?}", out.per_source);
}

#[test]
fn a_source_that_comes_online_while_the_download_waits_serves_it() {
    let mut later = SimSource::honest(10 * MB, 10);
    later.online_from_ms = 9_000;
    let out = Sim::new(file(4), BLOCK_SIZE, vec![later]).run();
    assert!(out.waited);
    assert_eq!(out.end, Action::Finish);
    assert!(out.elapsed >= Duration::from_secs(9));
}

#[test]
fn a_lost_source_is_replaced_by_the_next_lookup_and_its_blocks_go_elsewhere() {
    let mut leaving = SimSource::honest(10 * MB, 10);
    leaving.leaves_at_ms = Some(100);
    let mut later = SimSource::honest(10 * MB, 10);
    later.online_from_ms = 1_000;
    let out = Sim::new(file(40), BLOCK_SIZE, vec![leaving, later]).run();
    assert_eq!(out.end, Action::Finish);
    assert!(out.dropped.contains(&(0, DropReason::Lost)));
    assert!(out.per_source.iter().any(|(s, b)| *s == 1 && *b > 0));
}

#[test]
fn every_outboard_invalid_fails_with_no_outboard() {
    let mut bad = SimSource::honest(10 * MB, 1);
    bad.bad_outboard = true;
    let mut sim = Sim::new(file(4), BLOCK_SIZE, vec![bad]);
    sim.wait_for_sources = Duration::from_secs(5);
    assert_eq!(sim.run().end, Action::Fail(Failure::NoOutboard));
}

#[test]
fn without_lookups_a_download_with_no_source_fails_at_once() {
    let cfg = config(file(4), BLOCK_SIZE, Duration::from_secs(300), false);
    let mut t = Transfer::<u8>::new(cfg, Instant::now(), [], false, Vec::new()).unwrap();
    assert!(matches!(t.poll_action(), Some(Action::Fail(Failure::NoSources { tried: 0, .. }))));
}

#[test]
fn an_outboard_broken_on_disk_fails_the_download_instead_of_banning_sources() {
    let cfg = config(file(4), BLOCK_SIZE, Duration::from_secs(300), false);
    let now = Instant::now();
    let mut t = Transfer::<u8>::new(cfg, now, [(7, Route::Direct)], true, Vec::new()).unwrap();
    assert_eq!(t.poll_action(), Some(Action::Connect { source: 7, via: Route::Direct }));
    t.handle(now, Event::Connected(7));
    let Some(Action::Request { block, .. }) = t.poll_action() else { panic!("a request first") };
    let done = BlockResult::OutboardBroken;
    t.handle(now, Event::BlockDone { from: 7, block, received: 1, elapsed: Duration::ZERO, result: done });
    let actions: Vec<_> = std::iter::from_fn(|| t.poll_action()).collect();
    assert_eq!(actions.last(), Some(&Action::Fail(Failure::OutboardBroken)));
    assert!(t.banned().is_empty());
}

fn any_source() -> impl Strategy<Value = SimSource> {
    (
        1u64..40,
        1u64..120,
        prop::bool::weighted(0.15),
        prop::bool::weighted(0.1),
        0u32..3,
        prop::option::weighted(0.2, 0u32..20),
        prop::option::weighted(0.2, 10u64..3_000),
        prop::option::weighted(0.2, 0u64..5_000),
        prop::bool::weighted(0.1),
        0u8..3,
    )
        .prop_map(
            |(mb, rtt_ms, corrupt, bad_outboard, busy, silent, leaves, online, unreachable, route)| {
                SimSource {
                    bandwidth: mb * MB,
                    rtt_ms,
                    corrupt,
                    bad_outboard,
                    busy_outboards: busy,
                    silent_after: silent,
                    leaves_at_ms: leaves,
                    online_from_ms: online.unwrap_or(0),
                    unreachable,
                    route: [Route::Direct, Route::Punched, Route::Relayed][route as usize],
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Whatever the sources do, with one honest source that stays the download finishes, and
    /// the simulator's per-action checks hold all the way.
    #[test]
    fn any_mix_of_sources_finishes_with_every_promise_kept(
        blocks in 1u64..48,
        tail in 1u64..BLOCK_SIZE,
        others in prop::collection::vec(any_source(), 0..6),
        honest_mb in 1u64..20,
        marked in prop::collection::btree_set(0u32..48, 0..12),
        bad_marks in prop::collection::btree_set(0u32..48, 0..6),
        saved in any::<bool>(),
    ) {
        let size = (blocks - 1) * BLOCK_SIZE + tail;
        let mut sources = vec![SimSource::honest(honest_mb * MB, 30)];
        sources.extend(others);
        let mut sim = Sim::new(size, BLOCK_SIZE, sources);
        sim.saved_outboard = saved;
        sim.marked = marked.iter().copied().filter(|b| u64::from(*b) < blocks).collect();
        sim.marked_good = sim.marked.iter().copied().filter(|b| !bad_marks.contains(b)).collect();
        let kept = sim.marked_good.len() as u64;
        let out = sim.run();
        prop_assert_eq!(&out.end, &Action::Finish);
        let won: u64 = out.per_source.iter().map(|(_, b)| b).sum();
        let kept_bytes: u64 = sim.marked_good.iter().map(|b| block_len(size, *b)).sum();
        prop_assert_eq!(won + kept_bytes, size, "{} blocks kept", kept);
        for (s, _) in &out.per_source {
            let src = &sim.sources[*s as usize];
            prop_assert!(!src.corrupt, "a lying source was credited");
        }
    }
}

fn block_len(size: u64, b: Block) -> u64 {
    (size - u64::from(b) * BLOCK_SIZE).min(BLOCK_SIZE)
}
