//! Locate's source ranking: ordering N online candidates for one asker (same IP, same prefix,
//! completeness, free slots, freshness) and keeping the best 50. Pure; deterministic inputs.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use quaver_directory::ranking::{Candidate, Reach, rank};
use quaver_shared::PeerId;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// `n` candidates spread over a few /24s (some sharing the asker's), a few IPv6, mixed
/// completeness, slots and ages.
fn candidates(n: usize) -> Vec<Candidate> {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    (0..n)
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let b = state.to_le_bytes();
            let ip = if i % 10 == 9 {
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, u16::from(b[0] % 4), 0, 0, 0, 0, u16::from(b[1])))
            } else {
                IpAddr::V4(Ipv4Addr::new(10, b[0] % 4, b[1] % 8, b[2]))
            };
            let mut id = [0u8; 32];
            id[..8].copy_from_slice(&state.to_le_bytes());
            id[8..16].copy_from_slice(&(i as u64).to_le_bytes());
            Candidate {
                peer: PeerId::from_array(id),
                address: SocketAddr::new(ip, 4000),
                complete: !b[3].is_multiple_of(4),
                free_upload_slots: u32::from(b[4] % 5),
                since_last_seen: Duration::from_millis(u64::from(b[5]) * 250),
                reach: if b[6].is_multiple_of(8) { Reach::Introduced } else { Reach::Direct },
                local: None,
            }
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let asker = Some(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 77)));
    let mut group = c.benchmark_group("locate_rank_top50");
    for n in [8, 64, 512, 4096] {
        let input = candidates(n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &input, |b, input| {
            // The clone is part of what Locate pays too (it hands `rank` an owned list).
            b.iter(|| rank(black_box(asker), black_box(input).clone(), 50))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
