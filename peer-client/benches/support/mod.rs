//! Helpers shared by the process-level benches (`transfer`, `shaped`, `share`): real `quaver`
//! daemons driven by the `quaver` CLI, /proc readings, deterministic test files.
//!
//! Included by each bench with `mod support;`; not every bench uses every helper.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The `quaver` binary cargo built for this bench.
pub const QUAVER: &str = env!("CARGO_BIN_EXE_quaver");
/// Bound on any one CLI command (a `get` or `share` included).
pub const LIMIT: Duration = Duration::from_secs(600);

/// A running `quaver daemon`, killed when dropped.
pub struct Daemon {
    pub child: Child,
    pub data: PathBuf,
    /// Hex peer id, from the readiness line.
    pub peer_id: String,
}

impl Daemon {
    /// A daemon on loopback.
    pub async fn start(data: PathBuf, directory: &str) -> anyhow::Result<Daemon> {
        Daemon::start_in(None, data, directory, "127.0.0.1:0").await
    }

    /// A daemon listening on `listen`, inside network namespace `netns` when given (run as
    /// `ip netns exec NETNS quaver ...`, which execs, so the child is the daemon itself).
    pub async fn start_in(
        netns: Option<&str>,
        data: PathBuf,
        directory: &str,
        listen: &str,
    ) -> anyhow::Result<Daemon> {
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, QUAVER]);
                c
            }
            None => Command::new(QUAVER),
        };
        let mut child = cmd
            .arg("--data-dir")
            .arg(&data)
            .args(["--directory", directory, "daemon", "--listen", listen])
            // QUAVER_BENCH_LOG=debug shows, e.g., each connection's path MTU and losses.
            .env("RUST_LOG", std::env::var("QUAVER_BENCH_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await?
            .context("reading the daemon's readiness line")?
            .context("daemon exited")?;
        // `quaver node PEER_ID serving on QUIC_ADDR, control socket SOCKET`
        let peer_id = line.split_whitespace().nth(2).unwrap_or_default().to_owned();
        Ok(Daemon { child, data, peer_id })
    }

    /// Runs `quaver --data-dir DATA ARGS...` (the control socket is a path, so this works
    /// across network namespaces) and parses its JSON output.
    pub async fn cli(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let out = tokio::time::timeout(
            LIMIT,
            Command::new(QUAVER).arg("--data-dir").arg(&self.data).args(args).kill_on_drop(true).output(),
        )
        .await??;
        if !out.status.success() {
            bail!("quaver {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// `quaver share DIR --json`.
    pub async fn share(&self, dir: &Path) -> anyhow::Result<serde_json::Value> {
        self.cli(&["share", dir.to_str().context("path")?, "--json"]).await
    }

    pub fn pid(&self) -> anyhow::Result<u32> {
        self.child.id().context("daemon gone")
    }

    /// SIGKILL: the daemon dies without withdrawing, as a crashed or unplugged peer would.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }
}

/// Polls `searcher`'s search for `query` until the first hit shows `sources` online sources;
/// returns its content id. Bounded by `limit`.
pub async fn wait_for_sources(
    searcher: &Daemon,
    query: &str,
    sources: usize,
    limit: Duration,
) -> anyhow::Result<String> {
    let deadline = Instant::now() + limit;
    loop {
        let hits = searcher.cli(&["search", query, "--json"]).await?;
        if let Some(h) = hits.as_array().and_then(|a| a.first())
            && h["online_sources"].as_u64() == Some(sources as u64)
            && let Some(id) = h["content_id"].as_str()
        {
            return Ok(id.to_owned());
        }
        if Instant::now() > deadline {
            bail!("{query:?} never showed {sources} online sources");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// User + system CPU seconds of a process, from /proc/PID/stat.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("odd stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11).context("odd stat")?.parse::<f64>()?
        + fields.get(12).context("odd stat")?.parse::<f64>()?;
    Ok(ticks / 100.0) // USER_HZ is 100 on Linux
}

/// Peak resident set of a process in MiB (VmHWM).
pub fn peak_rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).context("no VmHWM")?;
    let kib: f64 = line.split_whitespace().nth(1).context("odd VmHWM")?.parse()?;
    Ok(kib / 1024.0)
}

/// Writes `size` deterministic pseudo-random bytes (xorshift from `seed`) to `path`.
pub fn make_file_seeded(path: &Path, size: u64, seed: u64) -> anyhow::Result<()> {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut block = vec![0u8; (1 << 20).min(size.max(8) as usize)];
    let mut state = seed | 1;
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

/// `make_file_seeded` with the benches' usual seed.
pub fn make_file(path: &Path, size: u64) -> anyhow::Result<()> {
    make_file_seeded(path, size, 0x9E37_79B9_7F4A_7C15)
}

/// The BLAKE3 hash of a file, in hex (a content id is this hash).
pub fn blake3_file(path: &Path) -> anyhow::Result<String> {
    let mut file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().to_hex().to_string())
}

/// A `u64` from the environment, or `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(default)
}

/// Runs a system command (no shell) and fails with its standard error when it fails.
pub fn run_cmd<I, S>(program: &str, args: I) -> anyhow::Result<()>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let out = std::process::Command::new(program)
        .args(&args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!("{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}
