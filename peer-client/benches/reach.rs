//! Reachability bench, in the NAT bed (`tests/common/nat_bed.rs`: routers in network
//! namespaces, coturn as the relay): what each route to a source costs.
//!
//! Run as root: `cargo bench -p quaver-peer --bench reach` (release). `QUAVER_BENCH_SIZE`
//! (bytes, default 100 MB) sizes the throughput cases. It measures, it does not judge;
//! without root, nft or coturn it says why and exits successfully.
//!
//! - **Time to first byte** by route: a `quaver get` of a 64 KiB file (CLI to verified file on
//!   disk: lookup, introduction if any, handshake, outboard, the one block) from a public
//!   source (direct), one behind a cone NAT (punched) and one behind a symmetric NAT
//!   (relayed), by a downloader behind a cone NAT; median and spread of 15 files each.
//! - **Throughput**: 4 sources each capped at 20 MB/s (`--max-upload-rate`), all public
//!   (direct), against 3 public and 1 behind a symmetric NAT (relayed through coturn).
//! - **Directory CPU** per get through an introduction (the bench process hosts only the
//!   directory; the CLI and daemons are processes of their own), and **relay CPU per GB**
//!   relayed (coturn's own CPU over the relayed bytes).

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::path::Path;
use std::time::Instant;

use common::nat_bed::{Bed, Host, Kind, NsDirectory, TurnServer};
use common::{Daemon, judged_in};
use serde_json::Value;

const SMALL: u64 = 64 * 1024;
const RUNS: usize = 15;
const CAP: &str = "20000000";

fn process_cpu_seconds() -> f64 {
    support::cpu_seconds(std::process::id()).unwrap_or(0.0)
}

/// Shares `files` (name, size, seed) from `node` in a folder of its own; their content ids.
async fn share(node: &Daemon, root: &Path, files: &[(String, u64, u64)]) -> Vec<String> {
    let folder = root.join(format!("share-{}", &node.peer_id[..8]));
    std::fs::create_dir_all(&folder).unwrap();
    let mut ids = Vec::new();
    for (name, size, seed) in files {
        let path = folder.join(name);
        support::make_file_seeded(&path, *size, *seed).unwrap();
        ids.push(support::blake3_file(&path).unwrap());
    }
    node.share(&folder).await;
    ids
}

async fn get(node: &Daemon, id: &str) -> Value {
    node.json(&["get", id, "--json", "--wait-sources", "30"]).await
}

fn median_and_range(mut v: Vec<f64>) -> String {
    v.sort_by(f64::total_cmp);
    format!("{:.1} ms (min {:.1}, max {:.1})", v[v.len() / 2], v[0], v[v.len() - 1])
}

#[tokio::main]
async fn main() {
    let Some(mut bed) = Bed::create() else { return };
    let Some(turn) = TurnServer::start(&bed.inet(), 0) else { return };
    let dir = NsDirectory::start_with_relay(&bed.inet(), Some(&turn));
    let root = tempfile::tempdir().unwrap();
    let size = support::env_u64("QUAVER_BENCH_SIZE", 100_000_000);

    let public: Vec<Host> = (0..4).map(|_| bed.host(Kind::Public)).collect();
    let (cone_host, sym_host, getter_host) =
        (bed.host(Kind::Cone), bed.host(Kind::Symmetric), bed.host(Kind::Cone));
    let mut publics = Vec::new();
    for (i, h) in public.iter().enumerate() {
        publics.push(
            judged_in(h, root.path(), &format!("public{i}"), &dir.url, &["--max-upload-rate", CAP]).await,
        );
    }
    let cone = judged_in(&cone_host, root.path(), "cone", &dir.url, &[]).await;
    let sym = judged_in(&sym_host, root.path(), "symmetric", &dir.url, &["--max-upload-rate", CAP]).await;
    let getter = judged_in(&getter_host, root.path(), "getter", &dir.url, &[]).await;

    println!("## Time to first byte (get of a 64 KiB file), downloader behind a cone NAT");
    // Seeds of their own per file (odd: `make_file_seeded` sets the low bit): a file the
    // getter has already is not fetched again.
    let small = |tag: u64| {
        (0..RUNS as u64)
            .map(|i| (format!("{tag}-{i}.bin"), SMALL, (1000 * tag + i) * 2 + 1))
            .collect::<Vec<_>>()
    };
    let cases = [("direct", &publics[0], 1), ("punched", &cone, 2), ("relayed", &sym, 3)];
    for (route, source, tag) in cases {
        let ids = share(source, root.path(), &small(tag)).await;
        let cpu = process_cpu_seconds();
        let mut times = Vec::new();
        for id in &ids {
            let started = Instant::now();
            let got = get(&getter, id).await;
            times.push(started.elapsed().as_secs_f64() * 1000.0);
            let taken = got["per_source"][0]["path"].as_str().unwrap_or_default().to_owned();
            assert_eq!(taken, route, "{got}");
        }
        let cpu_ms = (process_cpu_seconds() - cpu) * 1000.0 / RUNS as f64;
        println!("- {route}: {}; directory CPU {cpu_ms:.2} ms per get", median_and_range(times));
    }

    println!("## Throughput: 4 sources at 20 MB/s each, {} MB", size / 1_000_000);
    let all_direct: Vec<&Daemon> = publics.iter().collect();
    let one_relayed: Vec<&Daemon> = publics.iter().take(3).chain([&sym]).collect();
    for (case, sources, seed) in [("all direct", all_direct, 7u64), ("one relayed", one_relayed, 8)] {
        let mut id = String::new();
        for s in &sources {
            id = share(s, root.path(), &[(format!("big-{seed}.bin"), size, seed)]).await.remove(0);
        }
        let relay_cpu = support::cpu_seconds(turn.pid()).unwrap_or(0.0);
        let started = Instant::now();
        let got = get(&getter, &id).await;
        let secs = started.elapsed().as_secs_f64();
        let relay_cpu = support::cpu_seconds(turn.pid()).unwrap_or(0.0) - relay_cpu;
        let per: Vec<String> = got["per_source"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                format!(
                    "{} {:.0} MB",
                    p["path"].as_str().unwrap_or("?"),
                    p["bytes"].as_f64().unwrap_or(0.0) / 1e6
                )
            })
            .collect();
        let relayed: f64 = got["per_source"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["path"] == "relayed")
            .map(|p| p["bytes"].as_f64().unwrap_or(0.0))
            .sum();
        let mbps = size as f64 / 1e6 / secs;
        let relay = if relayed > 0.0 {
            format!("; relay CPU {:.2} s per GB relayed", relay_cpu / (relayed / 1e9))
        } else {
            String::new()
        };
        println!("- {case}: {secs:.2} s, {mbps:.1} MB/s of an ideal 80 MB/s ({}){relay}", per.join(", "));
    }

    getter.stop().await;
    for n in publics.into_iter().chain([cone, sym]) {
        n.stop().await;
    }
    drop((dir, turn, bed));
}
