//! Share benchmark: how fast `quaver share` hashes (BLAKE3 + bao outboard, tags, store writes)
//! one big file and a folder of many small ones, with the real daemon and a real directory on
//! loopback.
//!
//! Run: `cargo bench --workspace --bench share` (release). Environment: `QUAVER_BENCH_SIZE`
//! (bytes of the big file, default 1 GiB), `QUAVER_BENCH_SMALL_FILES` (default 5000) and
//! `QUAVER_BENCH_SMALL_SIZE` (bytes each, default 64 KiB), `QUAVER_BENCH_RUNS` (default 3;
//! the median is reported). It measures, it does not judge.
//!
//! The files are written first, so they are in the page cache: this is hashing, not disk,
//! speed. Each run is a fresh daemon (nothing already hashed), timed from `quaver share DIR`
//! until it returns; the daemon's CPU seconds over that time are reported too.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use quaver_directory::{Config, RunningServer};

mod support;
use support::{Daemon, cpu_seconds, env_u64, make_file, make_file_seeded};

/// One timed share of `dir` by a fresh daemon: (seconds, daemon CPU seconds).
async fn share_once(data: &Path, url: &str, dir: &Path, files: u64) -> anyhow::Result<(f64, f64)> {
    let daemon = Daemon::start(data.to_path_buf(), url).await?;
    let cpu_before = cpu_seconds(daemon.pid()?)?;
    let started = Instant::now();
    let answer = daemon.share(dir).await?;
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(daemon.pid()?)? - cpu_before;
    if answer["hashed"].as_u64() != Some(files) {
        bail!("expected {files} files hashed, got {answer}");
    }
    Ok((secs, cpu))
}

fn median(mut v: Vec<(f64, f64)>) -> (f64, f64) {
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    v.get(v.len() / 2).copied().unwrap_or((f64::NAN, f64::NAN))
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; there are no other options.
    let size = env_u64("QUAVER_BENCH_SIZE", 1 << 30);
    let small_files = env_u64("QUAVER_BENCH_SMALL_FILES", 5000).clamp(1, 1_000_000);
    let small_size = env_u64("QUAVER_BENCH_SMALL_SIZE", 64 << 10);
    let runs = env_u64("QUAVER_BENCH_RUNS", 3).clamp(1, 20);
    let root = tempfile::tempdir()?;
    let big = root.path().join("big");
    let small = root.path().join("small");
    std::fs::create_dir_all(&big)?;
    std::fs::create_dir_all(&small)?;
    println!(
        "# Quaver share bench: one file of {size} bytes; {small_files} files of {small_size} bytes; {runs} run(s) each"
    );
    make_file(&big.join("bigfile.bin"), size)?;
    for i in 0..small_files {
        // Distinct content per file (equal files would be one content id).
        make_file_seeded(&small.join(format!("small-{i:06}.bin")), small_size, 0x5151 + i)?;
    }

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut rows = Vec::new();
    runtime.block_on(async {
        let config = Config {
            listen: "127.0.0.1:0".parse()?,
            data_dir: root.path().join("directory"),
            index_commit_ms: 50,
            ..Config::default()
        };
        let server = RunningServer::start(config).await?;
        let url = format!("http://{}", server.local_addr);
        let cases = [
            ("one big file", &big, 1, size),
            ("many small files", &small, small_files, small_files * small_size),
        ];
        for (name, dir, files, bytes) in cases {
            let mut samples = Vec::new();
            for run in 0..runs {
                let data = root.path().join(format!("{}-{run}", name.replace(' ', "-")));
                samples.push(share_once(&data, &url, dir, files).await?);
                let _ = std::fs::remove_dir_all(&data);
                // Let the background publish of the previous daemon settle.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let (secs, cpu) = median(samples);
            let mbps = bytes as f64 / secs / 1e6;
            let fps = files as f64 / secs;
            println!("  {name}: {secs:.2} s, {mbps:.0} MB/s, {fps:.0} files/s, daemon CPU {cpu:.2} s");
            rows.push(format!(
                "| {name}: {files} x {} | {secs:.2} s | {mbps:.0} MB/s | {fps:.0} files/s | {cpu:.2} s |",
                bytes / files
            ));
        }
        anyhow::Ok(())
    })?;
    println!("\n| case (median of {runs}) | wall | throughput | files/s | daemon CPU |");
    println!("|---|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
    Ok(())
}
