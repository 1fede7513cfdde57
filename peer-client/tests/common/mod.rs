//! The end-to-end harness of this crate's network tests: a real directory server in the test's
//! process (127.0.0.1:0), real `quaver daemon` processes, each with its own data dir, and the
//! real `quaver` CLI to drive them.

// Each test binary uses the part of the harness it needs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use quaver_directory::{Config, RunningServer};
use quaver_shared::ContentId;
use quaver_shared::directory::v1::LocateRequest;
use quaver_shared::directory::v1::directory_client::DirectoryClient;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const QUAVER: &str = env!("CARGO_BIN_EXE_quaver");
pub const SIZE: usize = 20 * 1024 * 1024;
pub mod nat_bed;

pub const WAIT: Duration = Duration::from_secs(60);

pub struct Directory {
    pub server: RunningServer,
    _data: tempfile::TempDir,
}

impl Directory {
    pub async fn start() -> Directory {
        let data = tempfile::tempdir().unwrap();
        let config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: data.path().to_owned(),
            index_commit_ms: 20,
            ..Config::default()
        };
        let server = RunningServer::start(config).await.unwrap();
        Directory { server, _data: data }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.server.local_addr)
    }

    pub async fn locate(&self, id: ContentId) -> Vec<String> {
        let mut c = DirectoryClient::connect(self.url()).await.unwrap();
        let req = LocateRequest { content_id: id.to_vec(), max_sources: 50, peer_id: vec![] };
        let sources = c.locate(req).await.unwrap().into_inner().sources;
        sources.iter().map(|s| hex::encode(&s.peer_id)).collect()
    }
}

/// A `quaver daemon` process with its own data dir.
pub struct Daemon {
    pub child: Child,
    pub data: PathBuf,
    pub peer_id: String,
}

impl Daemon {
    pub async fn start(root: &Path, name: &str, directory: &str, extra: &[&str]) -> Daemon {
        Self::start_in(None, root, name, directory, &[&["--listen", "127.0.0.1:0"], extra].concat()).await
    }

    /// A daemon in network namespace `ns` (`ip netns exec` execs, so the child is the daemon),
    /// listening on every address there unless `extra` says otherwise.
    pub async fn start_in(
        ns: Option<&str>,
        root: &Path,
        name: &str,
        directory: &str,
        extra: &[&str],
    ) -> Daemon {
        let data = root.join(name);
        let mut command = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, QUAVER]);
                c
            }
            None => Command::new(QUAVER),
        };
        let mut child = command
            .arg("--data-dir")
            .arg(&data)
            .args(["--directory", directory, "daemon"])
            .args(extra)
            // QUAVER_TEST_LOG=info (or a filter) shows what the daemons do when a test fails.
            .env("RUST_LOG", std::env::var("QUAVER_TEST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(WAIT, lines.next_line()).await.unwrap().unwrap().unwrap();
        // "quaver node PEER serving on ADDR, control socket SOCK"
        let peer_id = line.split_whitespace().nth(2).unwrap().to_owned();
        assert_eq!(peer_id.len(), 64, "{line}");
        Daemon { child, data, peer_id }
    }

    /// Runs `quaver --data-dir D ARGS...`; returns the exit code and standard output.
    pub async fn cli(&self, args: &[&str]) -> (i32, String) {
        let out = Command::new(QUAVER).arg("--data-dir").arg(&self.data).args(args).output().await.unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            eprintln!("quaver {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        (out.status.code().unwrap_or(-1), stdout)
    }

    pub async fn json(&self, args: &[&str]) -> Value {
        let (code, out) = self.cli(args).await;
        assert_eq!(code, 0, "quaver {args:?} failed: {out}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("quaver {args:?}: {e}: {out}"))
    }

    pub async fn share(&self, folder: &Path) {
        let v = self.json(&["share", folder.to_str().unwrap(), "--json"]).await;
        assert!(v["shared_files"].as_u64().unwrap() >= 1, "{v}");
    }

    /// `quaver get ID --json` left running (the CLI only watches; the node downloads).
    pub fn get_in_background(&self, id: ContentId, stdout: Stdio) -> Child {
        Command::new(QUAVER)
            .arg("--data-dir")
            .arg(&self.data)
            .args(["get", &id.to_hex(), "--json"])
            .stdout(stdout)
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    }

    /// Verified bytes of the first download in `status`, or 0 when there is none (yet).
    pub async fn verified_bytes(&self) -> u64 {
        let out =
            Command::new(QUAVER).arg("--data-dir").arg(&self.data).args(["status", "--json"]).output().await;
        let v: Value = out.ok().and_then(|o| serde_json::from_slice(&o.stdout).ok()).unwrap_or_default();
        v["downloads"].get(0).and_then(|d| d["verified_bytes"].as_u64()).unwrap_or(0)
    }

    pub fn kill(&mut self) {
        // SIGKILL: no cleanup runs.
        self.child.start_kill().unwrap();
    }

    pub async fn stop(mut self) {
        let pid = self.child.id().unwrap();
        Command::new("kill").args(["-TERM", &pid.to_string()]).status().await.unwrap();
        let _ = tokio::time::timeout(WAIT, self.child.wait()).await;
    }
}

/// A deterministic 20 MB file in `dir/name`, and its content id.
pub fn song(dir: &Path, name: &str) -> (PathBuf, ContentId) {
    std::fs::create_dir_all(dir).unwrap();
    let data: Vec<u8> =
        (0..SIZE).map(|i| (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes()[7]).collect();
    let path = dir.join(name);
    std::fs::write(&path, &data).unwrap();
    (path, ContentId::of_bytes(&data))
}

/// `quaver status --json` once `check` holds for it.
pub async fn status_until(node: &Daemon, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let status = node.json(&["status", "--json"]).await;
        if check(&status) {
            return status;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what} not within {WAIT:?}: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A daemon on a NAT-bed host (listening on every address there, plus `extra`), once address
/// discovery has run and the directory has judged it a source some way (dialled, introduced
/// or relayed).
pub async fn judged_in(host: &nat_bed::Host, root: &Path, name: &str, url: &str, extra: &[&str]) -> Daemon {
    let args = [&["--listen", "0.0.0.0:0"], extra].concat();
    let node = Daemon::start_in(Some(&host.ns), root, name, url, &args).await;
    status_until(&node, &format!("{name}'s verdict"), |s| {
        let judged = s["reachable"] == true || s["introducible"] == true || s["relayed"] == true;
        !s["nat"].as_str().unwrap_or_default().is_empty() && judged
    })
    .await;
    node
}

/// Waits until `check` holds, polling; panics with `what` after `WAIT`.
pub async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn sources_of(dir: &Directory, id: ContentId, n: usize) {
    until(&format!("{n} sources"), || async { dir.locate(id).await.len() >= n }).await;
}

pub fn blake3_of(path: &str) -> ContentId {
    ContentId::of_bytes(&std::fs::read(path).unwrap())
}
