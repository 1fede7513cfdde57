//! The fetch scheduler's own cost: a 1 GiB download (4096 blocks of 256 KiB) simulated in
//! virtual time over 4 sources of different speeds, and over 32 to see how it scales. The
//! simulation (an event heap) is included in the time, so the figures are an upper bound on
//! the scheduler's cost per scheduled block.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use quaver_core::scheduler::{BLOCK_SIZE, Block, Scheduler, Verified};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hint::black_box;
use std::time::{Duration, Instant};

const GIB: u64 = 1024 * 1024 * 1024;
const MIB: u64 = 1024 * 1024;

/// (bandwidth in bytes/s, round trip in ms) of each source.
fn sources(n: usize) -> Vec<(u64, u64)> {
    (0..n).map(|i| ((40 * MIB) >> (i % 4), 20 + 20 * (i as u64 % 4))).collect()
}

/// Runs the download; returns the number of requests the scheduler made.
fn run(file_size: u64, srcs: &[(u64, u64)]) -> u64 {
    let base = Instant::now();
    let mut s = Scheduler::<u16>::new(file_size, BLOCK_SIZE, []).expect("valid sizes");
    for id in 0..srcs.len() {
        s.add_source(u16::try_from(id).expect("few sources"));
    }
    // (done at ns, source, block, sent at ns)
    let mut heap: BinaryHeap<Reverse<(u64, u16, Block, u64)>> = BinaryHeap::new();
    let mut free_at = vec![0u64; srcs.len()];
    let mut now = 0u64;
    let mut requests = 0;
    while !s.is_complete() {
        for (src, block) in s.next_requests(base + Duration::from_nanos(now)) {
            requests += 1;
            let (bw, rtt_ms) = srcs[usize::from(src)];
            let half_rtt = rtt_ms * 500_000;
            let start = free_at[usize::from(src)].max(now + half_rtt);
            free_at[usize::from(src)] = start + BLOCK_SIZE * 1_000_000_000 / bw;
            heap.push(Reverse((free_at[usize::from(src)] + half_rtt, src, block, now)));
        }
        let Some(Reverse((at, src, block, sent))) = heap.pop() else {
            break;
        };
        now = at;
        let elapsed = Duration::from_nanos(at - sent);
        if let Verified::Accepted { cancel } = s.block_verified(src, block, BLOCK_SIZE, elapsed) {
            black_box(cancel);
        }
    }
    assert!(s.is_complete());
    requests
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("scheduler_1GiB");
    for n in [4, 32] {
        let srcs = sources(n);
        let requests = run(GIB, &srcs);
        eprintln!("{n} sources: {requests} requests for {} blocks", GIB / BLOCK_SIZE);
        group.throughput(Throughput::Elements(requests));
        group.bench_with_input(BenchmarkId::new("sources", n), &srcs, |b, srcs| {
            b.iter(|| run(black_box(GIB), srcs))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
