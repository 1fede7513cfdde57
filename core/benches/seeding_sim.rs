//! The seeding simulator's scenario ([`Config::bench`]) under each policy, as a Markdown table:
//! which files are still around after the simulated weeks, how fast downloads were, and what
//! upload they cost. Not a timing benchmark: the numbers are the simulation's, the same on
//! every run (the wall time goes to stderr). See `quaver_core::seeding::swarm_sim` for the model.
//!
//! `cargo bench -p quaver-core --bench seeding_sim`

use quaver_core::seeding::swarm_sim::{Config, Policy, Report, run};
use std::time::Instant;

const MIB: f64 = (1u64 << 20) as f64;
const GIB: f64 = (1u64 << 30) as f64;

fn minutes(m: u64) -> String {
    if m < 120 { format!("{m} min") } else { format!("{:.1} h", m as f64 / 60.0) }
}

fn row(r: &Report) -> String {
    format!(
        "| {} | {:.1}% ({}/{}) | {:.1}% ({}/{}) | {} / {} | {} | {} | {} | {} | {:.1} | {:.0} / {:.0} |",
        r.policy,
        Report::percent(r.files_at_end, r.files_at_start),
        r.files_at_end,
        r.files_at_start,
        Report::percent(r.tail_at_end, r.tail_at_start),
        r.tail_at_end,
        r.tail_at_start,
        r.completed,
        r.requests,
        minutes(r.median_minutes),
        minutes(r.p99_minutes),
        r.abandoned,
        r.orphaned,
        r.uploaded_bytes as f64 / GIB,
        r.peer_upload_p50 as f64 / MIB,
        r.peer_upload_p90 as f64 / MIB,
    )
}

fn table(c: &Config) {
    println!(
        "{} peers ({} slots, {} KiB/s up; online {} h / offline {} h on average, gone for good after {} days), \
         {} files of {} MiB (Zipf s = {}, top file on {} peers, tail on 1-{}), {} requests per online hour, \
         give up after {} h, {} days, seed {}\n",
        c.peers,
        c.slots_per_peer,
        c.upload_bytes_per_sec >> 10,
        c.mean_online_hours,
        c.mean_offline_hours,
        c.mean_lifetime_days,
        c.files,
        c.file_bytes >> 20,
        c.zipf_s,
        c.head_holders,
        c.tail_holders_max,
        c.requests_per_hour,
        c.give_up_after_hours,
        c.days,
        c.seed,
    );
    println!(
        "| policy | files available after {} days | tail files available | completed / requests | median completion | p99 completion | abandoned | orphaned | upload spent (GiB) | per-peer upload p50 / p90 (MiB) |",
        c.days
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let reports: Vec<Report> = std::thread::scope(|s| {
        let runs: Vec<_> = [Policy::Fcfs, Policy::Ranked, Policy::Rare]
            .map(|p| s.spawn(move || run(c, p)))
            .into_iter()
            .collect();
        runs.into_iter().map(|h| h.join().expect("a simulation panicked")).collect()
    });
    for r in &reports {
        println!("{}", row(r));
    }
    println!();
}

fn main() {
    let started = Instant::now();
    let scarce = Config::bench();
    println!("## Upload scarce: demand outruns the popular files' holders\n");
    table(&scarce);
    println!("## Upload ample: the same swarm with four times the upload\n");
    table(&Config { upload_bytes_per_sec: scarce.upload_bytes_per_sec * 4, ..scarce });
    eprintln!("simulated in {:.1} s", started.elapsed().as_secs_f64());
}
