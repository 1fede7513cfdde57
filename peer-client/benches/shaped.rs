//! Shaped multi-source benchmark: one file downloaded from 4 sources, each a real `quaver
//! daemon` in its own network namespace whose uplink is capped with `tc tbf`, with a real
//! directory.
//!
//! Run as root: `cargo bench --workspace --bench shaped` (release). Environment:
//! `QUAVER_BENCH_SIZE` (bytes, default 256 MiB). It measures, it does not judge.
//!
//! The bench builds its own test bed and removes it on exit, on error and on panic (a drop
//! guard), and removes one a crashed earlier run left behind before it starts:
//!
//! - a bridge `qvbr0` in the root namespace with 10.203.0.1/24 (the directory and the
//!   downloader bind that address);
//! - per source `i` (1..=4) a namespace `qv-srcI` holding one end of a veth pair (`qvnI`,
//!   10.203.0.(10+I)/24, egress shaped by `tbf`), the other end (`qvhI`) a port of the bridge.
//!
//! No existing interface is touched and 10.203.0.0/24 is used only on those interfaces (the
//! bench refuses to start if anything else already uses it). Without root, or without the
//! `tbf` qdisc, it prints why and exits successfully.
//!
//! Cases: 4 sources at 20 MB/s; 3 at 20 MB/s and 1 at 2 MB/s; 4 at 20 MB/s of which one is
//! killed (SIGKILL, no withdraw) once half the file is verified. Reported: wall time of the
//! `get`, aggregate MB/s, the ideal (sum of the caps of the live sources; for the killed case
//! half the file at 4 caps and half at 3), their ratio, the downloader's CPU seconds and the
//! bytes each source delivered. The downloaded file's BLAKE3 is checked against the source
//! file's.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use quaver_directory::{Config, RunningServer};

mod support;
use support::{Daemon, blake3_file, cpu_seconds, env_u64, make_file, run_cmd, wait_for_sources};

const BRIDGE: &str = "qvbr0";
const NS_PREFIX: &str = "qv-src";
const HOST_ADDR: &str = "10.203.0.1";
const SUBNET: &str = "10.203.0.0/24";
const SOURCES: usize = 4;
/// 20 MB/s and 2 MB/s, in bytes per second (MB = 10^6 bytes).
const FAST: u64 = 20_000_000;
const SLOW: u64 = 2_000_000;

/// The namespaces, veth pairs and bridge; removed when dropped.
struct Testbed {
    sources: usize,
}

fn ns_name(i: usize) -> String {
    format!("{NS_PREFIX}{i}")
}

fn source_addr(i: usize) -> String {
    format!("10.203.0.{}", 10 + i)
}

/// Namespaces whose names are ours (`qv-src*`), from `ip netns list`.
fn our_namespaces() -> Vec<String> {
    let Ok(out) = std::process::Command::new("ip").args(["netns", "list"]).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(NS_PREFIX))
        .map(str::to_owned)
        .collect()
}

fn link_exists(name: &str) -> bool {
    std::process::Command::new("ip")
        .args(["link", "show", "dev", name])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Removes everything this bench creates, whatever state it is in. Deleting a namespace
/// deletes the veth end inside it and so its peer on the bridge.
fn remove_all(max_sources: usize) {
    for ns in our_namespaces() {
        if let Err(e) = run_cmd("ip", ["netns", "del", &ns]) {
            eprintln!("cleanup: {e:#}");
        }
    }
    for i in 1..=max_sources {
        let host = format!("qvh{i}");
        if link_exists(&host) {
            let _ = run_cmd("ip", ["link", "del", &host]);
        }
    }
    if link_exists(BRIDGE)
        && let Err(e) = run_cmd("ip", ["link", "del", BRIDGE])
    {
        eprintln!("cleanup: {e:#}");
    }
}

impl Testbed {
    /// Builds the bed. `Ok(None)`: not possible here (not root, no netns or tbf support); the
    /// reason is printed.
    fn create(sources: usize) -> anyhow::Result<Option<Testbed>> {
        let stale = our_namespaces();
        if !stale.is_empty() || link_exists(BRIDGE) {
            println!("removing a test bed left by an earlier run: {stale:?}");
        }
        remove_all(16);
        // Refuse to share the subnet with anything else.
        let routes =
            std::process::Command::new("ip").args(["-4", "route", "show", "to", "match", SUBNET]).output()?;
        let routes = String::from_utf8_lossy(&routes.stdout);
        if let Some(r) = routes.lines().find(|l| !l.starts_with("default")) {
            bail!("{SUBNET} is already routed here ({r}); not touching it");
        }
        // From here on the guard cleans up whatever part was built.
        let bed = Testbed { sources };
        if let Err(e) = run_cmd("ip", ["netns", "add", &ns_name(1)]) {
            println!("cannot create network namespaces ({e:#}); the shaped bench needs root. Skipped.");
            return Ok(None);
        }
        run_cmd("ip", ["link", "add", BRIDGE, "type", "bridge"])?;
        run_cmd("ip", ["addr", "add", &format!("{HOST_ADDR}/24"), "dev", BRIDGE])?;
        run_cmd("ip", ["link", "set", BRIDGE, "up"])?;
        for i in 1..=sources {
            let (ns, host, inner) = (ns_name(i), format!("qvh{i}"), format!("qvn{i}"));
            if i > 1 {
                run_cmd("ip", ["netns", "add", &ns])?;
            }
            run_cmd("ip", ["link", "add", &host, "type", "veth", "peer", "name", &inner])?;
            run_cmd("ip", ["link", "set", &inner, "netns", &ns])?;
            run_cmd("ip", ["link", "set", &host, "master", BRIDGE])?;
            run_cmd("ip", ["link", "set", &host, "up"])?;
            run_cmd("ip", ["-n", &ns, "addr", "add", &format!("{}/24", source_addr(i)), "dev", &inner])?;
            run_cmd("ip", ["-n", &ns, "link", "set", "lo", "up"])?;
            run_cmd("ip", ["-n", &ns, "link", "set", &inner, "up"])?;
            if let Err(e) = bed.set_rate(i, FAST) {
                println!("cannot shape with tc tbf ({e:#}). Skipped.");
                return Ok(None);
            }
        }
        Ok(Some(bed))
    }

    /// Caps source `i`'s uplink (its veth's egress) at `bytes_per_sec`: a fresh `tbf`, so its
    /// drop counter starts at zero.
    fn set_rate(&self, i: usize, bytes_per_sec: u64) -> anyhow::Result<()> {
        let (ns, dev, rate) = (ns_name(i), format!("qvn{i}"), format!("{}bit", bytes_per_sec * 8));
        // Fails when only the default qdisc is there, which is fine.
        let _ = run_cmd("ip", ["netns", "exec", &ns, "tc", "qdisc", "del", "dev", &dev, "root"]);
        run_cmd(
            "ip",
            [
                "netns", "exec", &ns, "tc", "qdisc", "add", "dev", &dev, "root", "tbf", "rate", &rate,
                "burst", "64kb", "latency", "25ms",
            ],
        )
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        remove_all(self.sources.max(16));
    }
}

struct Shape {
    name: &'static str,
    rates: [u64; SOURCES],
    /// Index (0-based) of the source killed once half the file is verified.
    kill: Option<usize>,
}

struct Outcome {
    row: String,
}

/// `verified_bytes` of the getter's one download, from `quaver status --json`.
async fn verified_bytes(getter: &Daemon) -> anyhow::Result<Option<u64>> {
    let status = getter.cli(&["status", "--json"]).await?;
    Ok(status["downloads"].as_array().and_then(|d| d.first()).and_then(|d| d["verified_bytes"].as_u64()))
}

/// MB/s between the moments `from` and `to` bytes were verified (linear between samples).
fn rate_between(samples: &[(f64, u64)], from: u64, to: u64) -> Option<f64> {
    let at = |target: u64| {
        samples.windows(2).find(|w| w[1].1 >= target).map(|w| {
            let ((t0, b0), (t1, b1)) = (w[0], w[1]);
            t0 + (t1 - t0) * (target.saturating_sub(b0)) as f64 / (b1 - b0).max(1) as f64
        })
    };
    let (t0, t1) = (at(from)?, at(to)?);
    (t1 > t0).then(|| (to - from) as f64 / (t1 - t0) / 1e6)
}

/// Packets `tbf` dropped on source `i`'s uplink since the qdisc was (re)placed.
fn tbf_drops(i: usize) -> anyhow::Result<u64> {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &ns_name(i), "tc", "-s", "qdisc", "show", "dev", &format!("qvn{i}")])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let after = text.split_once("dropped ").context("no drop count")?.1;
    Ok(after.split(|c: char| !c.is_ascii_digit()).next().unwrap_or_default().parse()?)
}

async fn case(
    root: &Path,
    bed: &Testbed,
    shape: &Shape,
    size: u64,
    expected: &str,
) -> anyhow::Result<Outcome> {
    println!("## {}", shape.name);
    for (i, &rate) in shape.rates.iter().enumerate() {
        bed.set_rate(i + 1, rate)?;
    }
    let tag = shape.name.split_whitespace().collect::<Vec<_>>().join("-");
    let config = Config {
        listen: format!("{HOST_ADDR}:0").parse()?,
        data_dir: root.join(format!("directory-{tag}")),
        index_commit_ms: 50,
        ..Config::default()
    };
    let server = RunningServer::start(config).await?;
    let url = format!("http://{}", server.local_addr);
    let music = root.join("music");

    let mut sources = Vec::new();
    for i in 1..=SOURCES {
        let data = root.join(format!("{tag}-src{i}"));
        let d = Daemon::start_in(Some(&ns_name(i)), data, &url, &format!("{}:0", source_addr(i))).await?;
        d.share(&music).await?;
        sources.push(d);
    }
    let getter =
        Daemon::start_in(None, root.join(format!("{tag}-get")), &url, &format!("{HOST_ADDR}:0")).await?;
    let id = wait_for_sources(&getter, "benchfile", SOURCES, Duration::from_secs(30)).await?;
    if id != expected {
        bail!("the directory lists content id {id}, the file hashes to {expected}");
    }

    let cpu_before = cpu_seconds(getter.pid()?)?;
    let started = Instant::now();
    let get_args = ["get", id.as_str(), "--json"];
    let get = getter.cli(&get_args);
    tokio::pin!(get);
    let mut killed_at: Option<(f64, u64)> = None;
    // (seconds since the start, verified bytes), sampled every 250 ms.
    let mut samples: Vec<(f64, u64)> = vec![(0.0, 0)];
    let got = loop {
        tokio::select! {
            got = &mut get => break got?,
            () = tokio::time::sleep(Duration::from_millis(250)) => {
                let Some(done) = verified_bytes(&getter).await? else { continue };
                samples.push((started.elapsed().as_secs_f64(), done));
                if done >= size / 2
                    && killed_at.is_none()
                    && let Some(k) = shape.kill
                    && let Some(victim) = sources.get_mut(k)
                {
                    victim.kill().await?;
                    let t = started.elapsed().as_secs_f64();
                    println!("  killed source {} at {t:.2} s, {done} bytes verified", k + 1);
                    killed_at = Some((t, done));
                }
            }
        }
    };
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(getter.pid()?)? - cpu_before;
    if got["size"].as_u64() != Some(size) {
        bail!("unexpected answer: {got}");
    }
    let path = PathBuf::from(got["path"].as_str().context("no path in the answer")?);
    let hash = blake3_file(&path)?;
    if hash != expected {
        bail!("downloaded file hashes to {hash}, expected {expected}");
    }
    let _ = std::fs::remove_file(&path);

    let per_source: Vec<String> = sources
        .iter()
        .map(|s| {
            let bytes = got["per_source"]
                .as_array()
                .and_then(|a| a.iter().find(|p| p["peer_id"].as_str() == Some(s.peer_id.as_str())))
                .and_then(|p| p["bytes"].as_u64())
                .unwrap_or(0);
            format!("{:.0}", bytes as f64 / 1e6)
        })
        .collect();
    let per_source = per_source.join("/");
    let all: u64 = shape.rates.iter().sum();
    let mbps = size as f64 / wall / 1e6;
    let (ideal, extra) = match (shape.kill, killed_at) {
        (Some(k), Some((t, done))) => {
            let rest = all - shape.rates[k];
            let half = size as f64 / 2.0;
            let ideal_wall = half / all as f64 + half / rest as f64;
            let after = (size - done) as f64 / (wall - t).max(1e-9) / 1e6;
            (
                size as f64 / ideal_wall / 1e6,
                format!(", after the kill {after:.1} MB/s of {:.0}", rest as f64 / 1e6),
            )
        }
        (Some(_), None) => (all as f64 / 1e6, ", finished before half was verified: no kill".to_owned()),
        (None, _) => (all as f64 / 1e6, String::new()),
    };
    let ratio = mbps / ideal;
    // The rate between 25% and 75% verified (before the kill, for the killed case): the
    // steady state without the start (locate, connect, outboard, slow start) and the tail.
    let steady = match killed_at {
        Some(_) => rate_between(&samples, size / 8, size * 3 / 8),
        None => rate_between(&samples, size / 4, size * 3 / 4),
    };
    let steady = steady.map_or("-".to_owned(), |r| format!("{r:.1} MB/s"));
    let mut drops = Vec::new();
    for i in 1..=SOURCES {
        drops.push(tbf_drops(i).map_or("?".to_owned(), |d| d.to_string()));
    }
    let drops = drops.join("/");
    println!("  steady {steady}; tbf drops per source {drops}");
    if killed_at.is_some() {
        let timeline: Vec<String> =
            samples.iter().step_by(4).map(|(t, b)| format!("{t:.0}s:{:.0}", *b as f64 / 1e6)).collect();
        println!("  verified MB over time: {}", timeline.join(" "));
    }
    println!(
        "  {wall:.2} s, {mbps:.1} MB/s of an ideal {ideal:.1} MB/s ({:.1}%){extra}; downloader CPU {cpu:.2} s; MB per source {per_source}; BLAKE3 ok",
        ratio * 100.0
    );
    let row = format!(
        "| {} | {wall:.2} s | {mbps:.1} MB/s | {ideal:.1} MB/s | {:.1}% | {steady} | {cpu:.2} s | {per_source} | {drops} |",
        shape.name,
        ratio * 100.0
    );
    Ok(Outcome { row })
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; there are no other options.
    let size = env_u64("QUAVER_BENCH_SIZE", 256 << 20);
    let Some(bed) = Testbed::create(SOURCES)? else {
        return Ok(());
    };
    let root = tempfile::tempdir()?;
    std::fs::create_dir_all(root.path().join("music"))?;
    let file = root.path().join("music").join("benchfile.bin");
    println!("# Quaver shaped bench: {size} bytes from {SOURCES} sources in namespaces, tc tbf caps");
    make_file(&file, size)?;
    let expected = blake3_file(&file)?;
    let shapes = [
        Shape { name: "4 x 20 MB/s", rates: [FAST; SOURCES], kill: None },
        Shape { name: "3 x 20 + 1 x 2 MB/s", rates: [FAST, FAST, FAST, SLOW], kill: None },
        Shape { name: "4 x 20 MB/s, one killed halfway", rates: [FAST; SOURCES], kill: Some(3) },
    ];
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut rows = Vec::new();
    let result = runtime.block_on(async {
        let cases = async {
            for shape in &shapes {
                rows.push(case(root.path(), &bed, shape, size, &expected).await?.row);
            }
            anyhow::Ok(())
        };
        tokio::select! {
            r = cases => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    // The daemons are gone with the cases; now the namespaces and the bridge.
    drop(runtime);
    drop(bed);
    result?;
    println!(
        "\n| case | wall | aggregate | ideal | ratio | steady (25-75%) | downloader CPU | MB per source | tbf drops |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
    Ok(())
}
