//! Transfer benchmark: one file downloaded over loopback QUIC from K sources, with the real
//! `quaver` daemons and a real directory.
//!
//! Run: `cargo bench --workspace --bench transfer` (release). Environment:
//! `QUAVER_BENCH_SIZE` (bytes, default 1 GiB), `QUAVER_BENCH_SOURCES` (comma-separated source
//! counts, default `1,4`) and `QUAVER_BENCH_LOG` (the daemons' `RUST_LOG`, default `warn`;
//! `debug` logs each connection's path MTU, losses and congestion events when it closes). It
//! measures, it does not judge.
//!
//! For each K: a deterministic file of SIZE bytes in a temp dir; K source daemons share it; a
//! fresh downloader daemon runs `quaver get ID`. Reported: wall time of the `get`, MB/s, the
//! downloader daemon's CPU seconds (user + system, from /proc) and peak RSS (VmHWM), and the
//! sources' CPU seconds summed. Hashing speed of `share` (the first source) is reported too.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use quaver_directory::{Config, RunningServer};

mod support;
use support::{Daemon, cpu_seconds, make_file, peak_rss_mib, wait_for_sources};

async fn case(root: &Path, size: u64, sources: usize, rows: &mut Vec<String>) -> anyhow::Result<()> {
    let dir_data = root.join(format!("directory-{sources}"));
    let config = Config {
        listen: "127.0.0.1:0".parse()?,
        data_dir: dir_data,
        index_commit_ms: 50,
        ..Config::default()
    };
    let server = RunningServer::start(config).await?;
    let url = format!("http://{}", server.local_addr);
    let music = root.join("music");

    let mut daemons = Vec::new();
    for i in 0..sources {
        let d = Daemon::start(root.join(format!("k{sources}-src{i}")), &url).await?;
        let started = Instant::now();
        d.share(&music).await?;
        if i == 0 {
            let secs = started.elapsed().as_secs_f64();
            println!(
                "  share (hash + outboard) of {size} bytes: {secs:.2} s, {:.0} MB/s",
                size as f64 / secs / 1e6
            );
        }
        daemons.push(d);
    }
    // The content id, from a search by file name (the directory indexes in the background).
    let getter = Daemon::start(root.join(format!("k{sources}-get")), &url).await?;
    let id = wait_for_sources(&getter, "benchfile", sources, Duration::from_secs(30)).await?;
    let src_cpu_before: f64 =
        daemons.iter().map(|d| d.pid().and_then(cpu_seconds)).sum::<anyhow::Result<f64>>()?;
    let get_cpu_before = cpu_seconds(getter.pid()?)?;
    let started = Instant::now();
    let got = getter.cli(&["get", &id, "--json"]).await?;
    let wall = started.elapsed().as_secs_f64();
    let get_cpu = cpu_seconds(getter.pid()?)? - get_cpu_before;
    let src_cpu: f64 =
        daemons.iter().map(|d| d.pid().and_then(cpu_seconds)).sum::<anyhow::Result<f64>>()? - src_cpu_before;
    let rss = peak_rss_mib(getter.pid()?)?;
    if got["size"].as_u64() != Some(size) {
        bail!("unexpected answer: {got}");
    }
    let mbps = size as f64 / wall / 1e6;
    println!(
        "  {sources} source(s): {wall:.2} s, {mbps:.0} MB/s, downloader CPU {get_cpu:.2} s, peak RSS {rss:.1} MiB, sources CPU {src_cpu:.2} s"
    );
    rows.push(format!(
        "| {} MiB from {sources} source(s) | {wall:.2} s | {mbps:.0} MB/s | {get_cpu:.2} s | {rss:.1} MiB | {src_cpu:.2} s |",
        size >> 20
    ));
    // The downloader's copy of the file is not needed any more.
    if let Some(path) = got["path"].as_str() {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; there are no other options.
    let size: u64 = std::env::var("QUAVER_BENCH_SIZE").ok().and_then(|s| s.parse().ok()).unwrap_or(1 << 30);
    let counts: Vec<usize> = std::env::var("QUAVER_BENCH_SOURCES")
        .unwrap_or_else(|_| "1,4".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .filter(|&k| k > 0 && k <= 16)
        .collect();
    let root = tempfile::tempdir()?;
    std::fs::create_dir_all(root.path().join("music"))?;
    let file = root.path().join("music").join("benchfile.bin");
    println!("# Quaver transfer bench: {size} bytes over loopback, sources {counts:?}");
    make_file(&file, size)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut rows = Vec::new();
    runtime.block_on(async {
        for &k in &counts {
            case(root.path(), size, k, &mut rows).await?;
        }
        anyhow::Ok(())
    })?;
    println!("\n| case | wall | throughput | downloader CPU | downloader peak RSS | sources CPU |");
    println!("|---|---|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
    Ok(())
}
