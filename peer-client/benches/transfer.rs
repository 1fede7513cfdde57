//! Transfer benchmark: one file downloaded over loopback QUIC from K sources, with the real
//! `quaver` daemons and a real directory.
//!
//! Run: `cargo bench -p quaver-peer --bench transfer` (release). Environment:
//! `QUAVER_BENCH_SIZE` (bytes, default 1 GiB) and `QUAVER_BENCH_SOURCES` (comma-separated
//! source counts, default `1,4`). It measures, it does not judge.
//!
//! For each K: a deterministic file of SIZE bytes in a temp dir; K source daemons share it; a
//! fresh downloader daemon runs `quaver get ID`. Reported: wall time of the `get`, MB/s, the
//! downloader daemon's CPU seconds (user + system, from /proc) and peak RSS (VmHWM), and the
//! sources' CPU seconds summed. Hashing speed of `share` (the first source) is reported too.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use quaver_directory::{Config, RunningServer};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const QUAVER: &str = env!("CARGO_BIN_EXE_quaver");
const LIMIT: Duration = Duration::from_secs(600);

struct Daemon {
    child: Child,
    data: PathBuf,
}

impl Daemon {
    async fn start(data: PathBuf, directory: &str) -> anyhow::Result<Daemon> {
        let mut child = Command::new(QUAVER)
            .arg("--data-dir")
            .arg(&data)
            .args(["--directory", directory, "daemon", "--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await?.context("daemon exited")?;
        Ok(Daemon { child, data })
    }

    async fn cli(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let out = tokio::time::timeout(
            LIMIT,
            Command::new(QUAVER).arg("--data-dir").arg(&self.data).args(args).output(),
        )
        .await??;
        if !out.status.success() {
            bail!("quaver {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    fn pid(&self) -> anyhow::Result<u32> {
        self.child.id().context("daemon gone")
    }
}

/// User + system CPU seconds of a process, from /proc/PID/stat.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("odd stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks / 100.0) // USER_HZ is 100 on Linux
}

/// Peak resident set of a process in MiB (VmHWM).
fn peak_rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).context("no VmHWM")?;
    let kib: f64 = line.split_whitespace().nth(1).context("odd VmHWM")?.parse()?;
    Ok(kib / 1024.0)
}

fn make_file(path: &Path, size: u64) -> anyhow::Result<()> {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut block = vec![0u8; 1 << 20];
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut written = 0;
    while written < size {
        for chunk in block.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
        }
        let n = (size - written).min(block.len() as u64) as usize;
        file.write_all(&block[..n])?;
        written += n as u64;
    }
    file.flush()?;
    Ok(())
}

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
    let mut id = String::new();
    for i in 0..sources {
        let d = Daemon::start(root.join(format!("k{sources}-src{i}")), &url).await?;
        let started = Instant::now();
        d.cli(&["share", music.to_str().context("path")?, "--json"]).await?;
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
    let deadline = Instant::now() + Duration::from_secs(30);
    while id.is_empty() {
        let hits = getter.cli(&["search", "benchfile", "--json"]).await?;
        if let Some(h) = hits.as_array().and_then(|a| a.first())
            && h["online_sources"].as_u64() == Some(sources as u64)
        {
            id = h["content_id"].as_str().unwrap_or_default().to_owned();
        }
        if Instant::now() > deadline {
            bail!("the file never showed {sources} online sources");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
