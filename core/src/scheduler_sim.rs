//! Whole downloads simulated in virtual time: sources with their own speed and latency, some
//! that leave, some that fail now and then, some that send bad data. Checks the scheduler's
//! promises over many random runs (proptest) and a few fixed ones.

use super::scheduler::*;
use proptest::prelude::*;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
struct SimSource {
    /// Bytes per second of its upload pipe (requests are served one after another).
    bandwidth: u64,
    /// Round trip, in milliseconds.
    rtt_ms: u64,
    /// Every block it sends fails verification.
    corrupt: bool,
    /// Disconnects after this many milliseconds.
    leaves_at_ms: Option<u64>,
    /// Every n-th request it gets fails (timeout, reset).
    fails_every: Option<u32>,
}

impl SimSource {
    fn honest(bandwidth: u64, rtt_ms: u64) -> Self {
        Self { bandwidth, rtt_ms, corrupt: false, leaves_at_ms: None, fails_every: None }
    }
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Done { src: u8, block: Block, sent_ns: u64 },
    Failed { src: u8, block: Block },
    Leave { src: u8 },
}

#[derive(Debug, Default)]
struct Outcome {
    /// Blocks whose first verified copy came from each source.
    won: BTreeMap<u8, u64>,
    /// Virtual time at completion.
    elapsed: Duration,
    /// Duplicate requests sent (end phase).
    duplicates: u64,
}

const NS_PER_MS: u64 = 1_000_000;

/// Runs one download to the end and checks every invariant on the way. Source 0 must be
/// honest and stay, so that the download can finish.
fn simulate(file_size: u64, block_size: u64, resume: &[Block], sources: &[SimSource]) -> Outcome {
    let base = Instant::now();
    let mut s = Scheduler::<u8>::new(file_size, block_size, resume.iter().copied()).unwrap();
    let mut events = BinaryHeap::new();
    let mut seq = 0u64; // ties at one instant are handled in the order they were made
    let mut push = |events: &mut BinaryHeap<_>, at: u64, e: Event| {
        seq += 1;
        events.push(Reverse((at, seq, e)));
    };
    let mut server_free_ns = vec![0u64; sources.len()];
    let mut requests_seen = vec![0u32; sources.len()];
    for (i, src) in sources.iter().enumerate() {
        let id = u8::try_from(i).unwrap();
        assert!(s.add_source(id));
        if let Some(ms) = src.leaves_at_ms {
            push(&mut events, ms * NS_PER_MS, Event::Leave { src: id });
        }
    }
    // What the caller has open: (source, block). Results of anything else are dropped, as a
    // cancelled or reset stream would drop them.
    let mut live: BTreeSet<(u8, Block)> = BTreeSet::new();
    let mut banned = BTreeSet::new();
    let mut accepted: BTreeMap<Block, u32> = BTreeMap::new();
    let mut out = Outcome::default();
    let mut t = 0u64;
    for _ in 0..2_000_000 {
        let now = base + Duration::from_nanos(t);
        let reqs = s.next_requests(now);
        let mut duplicated = false;
        for &(src, block) in &reqs {
            assert!(!banned.contains(&src), "(b) banned source {src} got block {block}");
            assert!(!s.is_verified(block), "verified block {block} requested again");
            assert!(!resume.contains(&block), "resumed block {block} requested");
            duplicated |= live.iter().any(|&(_, b)| b == block);
            assert!(live.insert((src, block)), "block {block} twice at {src}");
            let (i, sim) = (usize::from(src), &sources[usize::from(src)]);
            requests_seen[i] += 1;
            if sim.fails_every.is_some_and(|n| requests_seen[i].is_multiple_of(n)) {
                push(&mut events, t + sim.rtt_ms * NS_PER_MS, Event::Failed { src, block });
                continue;
            }
            let len = s.block_range(block).map_or(0, |r| r.end - r.start);
            let start = server_free_ns[i].max(t + sim.rtt_ms * NS_PER_MS / 2);
            server_free_ns[i] = start + len * 1_000_000_000 / sim.bandwidth;
            let done = server_free_ns[i] + sim.rtt_ms * NS_PER_MS / 2;
            push(&mut events, done, Event::Done { src, block, sent_ns: t });
        }
        if duplicated {
            out.duplicates += 1;
            assert_eq!(s.pooled_count(), 0, "(c) duplicate while blocks wait in the pool");
        }
        if s.is_complete() {
            break;
        }
        let Some(Reverse((at, _, event))) = events.pop() else {
            let wake = s.poll_timeout().expect("stuck: no events, no timeout, not complete");
            t = u64::try_from(wake.duration_since(base).as_nanos()).unwrap();
            continue;
        };
        t = at;
        match event {
            Event::Leave { src } => {
                s.remove_source(src);
                live.retain(|&(x, _)| x != src);
            }
            Event::Failed { src, block } => {
                if live.remove(&(src, block)) {
                    s.request_failed(src, block);
                }
            }
            Event::Done { src, block, sent_ns } => {
                if !live.remove(&(src, block)) {
                    continue;
                }
                if sources[usize::from(src)].corrupt {
                    s.block_failed_verification(src, block);
                    banned.insert(src);
                    live.retain(|&(x, _)| x != src); // the caller closes the connection
                    continue;
                }
                let len = s.block_range(block).map_or(0, |r| r.end - r.start);
                let elapsed = Duration::from_nanos(t - sent_ns);
                if let Verified::Accepted { cancel } = s.block_verified(src, block, len, elapsed) {
                    *accepted.entry(block).or_default() += 1;
                    *out.won.entry(src).or_default() += 1;
                    for c in cancel {
                        assert!(live.remove(&(c, block)), "cancel of a request not open");
                    }
                }
            }
        }
    }
    // (a) every block verified exactly once, resumed ones never fetched.
    assert!(s.is_complete(), "did not finish");
    for b in 0..u32::try_from(s.block_count()).unwrap() {
        let want = u32::from(!resume.contains(&b));
        assert_eq!(accepted.get(&b).copied().unwrap_or(0), want, "block {b}");
    }
    assert_eq!(s.progress().verified_bytes, file_size);
    out.elapsed = Duration::from_nanos(t);
    out
}

const MIB: u64 = 1024 * 1024;

#[test]
fn a_fast_source_gets_more_blocks_than_a_slow_one() {
    let out =
        simulate(64 * MIB, BLOCK_SIZE, &[], &[SimSource::honest(8 * MIB, 50), SimSource::honest(MIB, 50)]);
    let (fast, slow) = (out.won[&0], out.won.get(&1).copied().unwrap_or(0));
    assert!(fast > 4 * slow, "fast {fast}, slow {slow}");
}

#[test]
fn equal_sources_finish_close_to_the_ideal_time() {
    let sources: Vec<_> = (0..4).map(|_| SimSource::honest(4 * MIB, 40)).collect();
    let out = simulate(256 * MIB, BLOCK_SIZE, &[], &sources);
    // 256 MiB over 16 MiB/s is 16 s; allow for start-up and the tail.
    assert!(out.elapsed < Duration::from_millis(17_500), "{:?}", out.elapsed);
    for n in out.won.values() {
        assert!((200..=312).contains(n), "{:?}", out.won);
    }
}

#[test]
fn the_end_phase_rescues_the_tail_from_a_very_slow_source() {
    let sources = [SimSource::honest(10 * MIB, 20), SimSource::honest(16 * 1024, 20)];
    let out = simulate(32 * MIB, BLOCK_SIZE, &[], &sources);
    // Without duplicates the slow source's 2 blocks alone would take 32 s.
    assert!(out.duplicates > 0);
    assert!(out.elapsed < Duration::from_secs(5), "{:?}", out.elapsed);
}

#[test]
fn corrupt_sources_are_banned_and_their_blocks_refetched() {
    let mut liar = SimSource::honest(50 * MIB, 5);
    liar.corrupt = true;
    let out = simulate(16 * MIB, BLOCK_SIZE, &[3, 4, 60], &[SimSource::honest(MIB, 50), liar]);
    assert_eq!(out.won.get(&1), None);
}

fn any_source() -> impl Strategy<Value = SimSource> {
    (
        10u32..27, // bandwidth 1 KiB/s .. 64 MiB/s, log-uniform
        1u64..300,
        prop::bool::weighted(0.2),
        prop::option::weighted(0.3, 0u64..20_000),
        prop::option::weighted(0.2, 2u32..10),
    )
        .prop_map(|(bw_log, rtt_ms, corrupt, leaves_at_ms, fails_every)| SimSource {
            bandwidth: 1 << bw_log,
            rtt_ms,
            corrupt,
            leaves_at_ms,
            fails_every,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Invariants (a), (b), (c) are asserted inside `simulate`; (d) here.
    #[test]
    fn random_downloads_finish_with_every_block_verified_once(
        file_size in 0u64..48 * MIB,
        block_groups in prop::sample::select(vec![1u64, 4, 16, 64]),
        honest_bw_log in 16u32..25,
        others in prop::collection::vec(any_source(), 0..6),
        resume in prop::collection::vec(0u32..200, 0..20),
    ) {
        let block_size = block_groups * 16 * 1024;
        let blocks = u32::try_from(file_size.div_ceil(block_size)).unwrap();
        let resume: Vec<Block> = resume.into_iter().filter(|&b| b < blocks).collect::<BTreeSet<_>>().into_iter().collect();
        let mut sources = vec![SimSource::honest(1 << honest_bw_log, 30)];
        sources.extend(others);
        let out = simulate(file_size, block_size, &resume, &sources);
        // (d) a steady source 8x faster than another, and no farther away, won at least as many
        // blocks (a farther one may lose a short download to latency, which is fair).
        let steady = |s: &SimSource| !s.corrupt && s.leaves_at_ms.is_none() && s.fails_every.is_none();
        if blocks >= 64 {
            for (a, sa) in sources.iter().enumerate().filter(|(_, s)| steady(s)) {
                for (b, sb) in sources.iter().enumerate().filter(|(_, s)| steady(s)) {
                    let won = |i: usize| out.won.get(&u8::try_from(i).unwrap()).copied().unwrap_or(0);
                    if sa.bandwidth >= 8 * sb.bandwidth && sa.rtt_ms <= sb.rtt_ms {
                        prop_assert!(won(a) >= won(b), "{a}: {sa:?} won {}, {b}: {sb:?} won {}", won(a), won(b));
                    }
                }
            }
        }
    }
}
