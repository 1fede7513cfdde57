//! The seeding simulator's promises: the same seed gives the same numbers, bytes are
//! conserved, and the policies differ where the model says they should.

use super::*;

/// The bench's scarce scenario, shrunk to run in debug in a fraction of a second: 40 peers,
/// 800 files, six days, and holders who leave for good after three days on average, so the
/// long tail is in danger within the run.
fn scarce() -> Config {
    Config { peers: 40, files: 800, head_holders: 8, mean_lifetime_days: 3.0, days: 6, ..Config::bench() }
}

/// Upload to spare (64 KiB/s, half the requests): every popular file is on plenty of peers,
/// and requests finish in minutes. Two weeks, so that who carries the popular files settles.
fn ample() -> Config {
    Config {
        peers: 60,
        files: 1_500,
        head_holders: 10,
        upload_bytes_per_sec: 64 << 10,
        requests_per_hour: 10.0,
        mean_lifetime_days: 7.0,
        days: 14,
        ..Config::bench()
    }
}

#[test]
fn the_same_seed_gives_the_same_report_and_another_seed_another() {
    let c = Config { days: 2, ..scarce() };
    let a = run(&c, Policy::Ranked);
    assert_eq!(a, run(&c, Policy::Ranked));
    assert_ne!(a, run(&Config { seed: 2, ..c }, Policy::Ranked));
}

#[test]
fn bytes_are_conserved_and_no_request_completes_twice() {
    for policy in [Policy::Fcfs, Policy::Ranked, Policy::Rare] {
        let c = scarce();
        let r = run(&c, policy);
        assert_eq!(r.uploaded_bytes, r.downloaded_bytes, "{policy}: every byte sent was received");
        assert!(r.downloaded_bytes >= r.completed * c.file_bytes);
        assert!(r.completed > 0 && r.abandoned > 0, "{policy}: a scenario with both: {r:?}");
        assert_eq!(r.completed + r.abandoned + r.orphaned + r.pending, r.requests, "{policy}: {r:?}");
        assert!(r.median_minutes <= r.p99_minutes);
        assert!(r.files_at_end <= r.files_at_start && r.tail_at_end <= r.tail_at_start);
    }
}

#[test]
fn ranking_by_rarity_keeps_more_of_the_long_tail_than_first_come_first_served() {
    let c = scarce();
    let (fcfs, ranked) = (run(&c, Policy::Fcfs), run(&c, Policy::Ranked));
    assert_eq!(fcfs.tail_at_start, ranked.tail_at_start, "the same catalog");
    assert!(
        fcfs.tail_at_end < fcfs.tail_at_start,
        "the tail must be in danger for the test to mean anything"
    );
    assert!(
        ranked.tail_at_end > fcfs.tail_at_end,
        "ranked keeps {} tail files, fcfs {} (of {})",
        ranked.tail_at_end,
        fcfs.tail_at_end,
        fcfs.tail_at_start
    );
}

/// `rare` cannot lower the network's total upload without serving less: every completed
/// download is `file_bytes` from someone. What it does save is the busiest holders' upload on
/// files plenty of others offer, moving it to peers that offered little.
#[test]
fn rare_serves_the_same_for_the_same_total_and_spares_the_busiest_uploaders() {
    let c = ample();
    let (ranked, rare) = (run(&c, Policy::Ranked), run(&c, Policy::Rare));
    let close = |a: u64, b: u64| a.abs_diff(b) * 100 <= a.max(b);
    assert!(close(ranked.completed, rare.completed), "{ranked:?}\n{rare:?}");
    assert!(close(ranked.uploaded_bytes, rare.uploaded_bytes), "{ranked:?}\n{rare:?}");
    assert!(rare.peer_upload_p90 < ranked.peer_upload_p90, "{ranked:?}\n{rare:?}");
}

#[test]
fn upload_is_shared_by_weight_and_what_one_cannot_use_goes_to_the_others() {
    assert_eq!(share(900, &[(10_000, 1), (10_000, 2)]), vec![300, 600]);
    assert_eq!(share(900, &[(100, 16), (10_000, 1), (10_000, 1)]), vec![100, 400, 400]);
    assert_eq!(share(900, &[(100, 1), (200, 1)]), vec![100, 200], "both done, the rest unused");
    assert!(share(900, &[]).is_empty());
}

#[test]
fn the_generator_and_the_samplers_are_sane() {
    let mut rng = Rng::new(7, 0);
    let mean = (0..10_000).map(|_| rng.poisson(3.5)).sum::<u64>() as f64 / 10_000.0;
    assert!((3.4..3.6).contains(&mean), "{mean}");
    let big = (0..1_000).map(|_| rng.poisson(100.0)).sum::<u64>() as f64 / 1_000.0;
    assert!((98.0..102.0).contains(&big), "{big}");
    let zipf = Zipf::new(1_000, 1.0);
    let draws: Vec<u32> = (0..20_000).map(|_| zipf.sample(&mut rng)).collect();
    let first = draws.iter().filter(|&&f| f == 0).count() as f64 / 20_000.0;
    // 1 / H(1000) = 0.1336.
    assert!((0.12..0.15).contains(&first), "{first}");
    assert!(draws.iter().all(|&f| f < 1_000));
    assert_ne!(Rng::new(7, 1).next_u64(), Rng::new(7, 2).next_u64(), "streams differ");
}
