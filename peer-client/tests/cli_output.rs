//! What the `quaver` CLI prints for people, checked against a real directory (in this process,
//! on 127.0.0.1:0) and real `quaver daemon` processes: text from the network cannot drive the
//! terminal, `status` tells the truth about the directory session and about reachability, and
//! a directory that cannot be reached is named with what to check.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use quaver_directory::{Config, RunningServer};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const QUAVER: &str = env!("CARGO_BIN_EXE_quaver");
/// Upper bound on any wait, so a broken build fails instead of hanging.
const WAIT: Duration = Duration::from_secs(60);

async fn directory(heartbeat_seconds: u32) -> (RunningServer, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data.path().to_owned(),
        index_commit_ms: 20,
        heartbeat_seconds,
        lease_seconds: heartbeat_seconds * 3,
        ..Config::default()
    };
    (RunningServer::start(config).await.unwrap(), data)
}

/// A `quaver daemon` process with its own data dir, talking to the directory at `url`.
struct Daemon {
    child: Child,
    data: PathBuf,
}

impl Daemon {
    async fn start(root: &Path, name: &str, url: &str) -> Daemon {
        let data = root.join(name);
        let mut child = Command::new(QUAVER)
            .arg("--data-dir")
            .arg(&data)
            .args(["--directory", url, "daemon", "--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = tokio::time::timeout(WAIT, lines.next_line()).await.unwrap().unwrap().unwrap();
        assert!(ready.starts_with("quaver node "), "{ready}");
        Daemon { child, data }
    }

    async fn run(&self, args: &[&str]) -> Output {
        let cli = Command::new(QUAVER).arg("--data-dir").arg(&self.data).args(args).output();
        tokio::time::timeout(WAIT, cli).await.unwrap().unwrap()
    }

    /// Standard output of a command that must succeed.
    async fn stdout(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "quaver {args:?} failed: {stderr}");
        String::from_utf8(out.stdout).unwrap()
    }

    async fn json(&self, args: &[&str]) -> Value {
        let out = self.stdout(args).await;
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("quaver {args:?}: {e}: {out}"))
    }

    async fn status(&self) -> Value {
        self.json(&["status", "--json"]).await
    }
}

/// Polls `check` every 50 ms until it holds; panics with `what` after `within`.
async fn until<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out after {within:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_shows_a_title_with_a_bidi_override_neutralised() {
    let root = tempfile::tempdir().unwrap();
    let (dir, _data) = directory(30).await;
    let url = format!("http://{}", dir.local_addr);
    // A real peer shares a file whose name (hence title, by the `Artist - Title` rule) holds a
    // right-to-left override: "evil\u{202e}3pm.exe" would show as "evilexe.mp3".
    let music = root.path().join("music");
    std::fs::create_dir_all(&music).unwrap();
    std::fs::write(music.join("Bidiartist - evil\u{202e}3pm.exe.flac"), vec![7u8; 40_000]).unwrap();
    let node = Daemon::start(root.path(), "node", &url).await;
    node.json(&["share", music.to_str().unwrap(), "--json"]).await;
    until("the file to be searchable", WAIT, || async {
        node.json(&["search", "Bidiartist", "--json"]).await.as_array().is_some_and(|hits| !hits.is_empty())
    })
    .await;
    // --json keeps the title as it is (JSON escapes are for programs).
    let hits = node.json(&["search", "Bidiartist", "--json"]).await;
    assert_eq!(hits[0]["title"], "evil\u{202e}3pm.exe");

    let shown = node.stdout(&["search", "Bidiartist"]).await;
    assert!(shown.contains("Bidiartist"), "{shown}");
    assert!(!shown.contains('\u{202e}'), "the override reached the terminal: {shown:?}");
    assert!(shown.contains("evil\u{fffd}3pm.exe"), "shown as a placeholder: {shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_reachability_and_stops_saying_connected_soon_after_the_directory_stops() {
    let root = tempfile::tempdir().unwrap();
    // Beats every 30 s: the session's loss must show long before the next beat would.
    let (dir, _data) = directory(30).await;
    let url = format!("http://{}", dir.local_addr);
    let node = Daemon::start(root.path(), "node", &url).await;
    until("the session to be up with a reachability verdict", WAIT, || async {
        let s = node.status().await;
        s["directory_connected"] == true && s["reachable"] == true
    })
    .await;
    let s = node.status().await;
    let address = s["observed_address"].as_str().unwrap().to_owned();
    let shown = node.stdout(&["status"]).await;
    assert!(shown.contains(&format!("directory {url} (connected since")), "{shown}");
    assert!(
        shown.contains(&format!("reachable at {address}: other peers can download from this node")),
        "{shown}"
    );

    dir.shutdown().await.unwrap();
    let stopped = Instant::now();
    until("status to stop saying connected", Duration::from_secs(10), || async {
        node.status().await["directory_connected"] == false
    })
    .await;
    eprintln!("status said the session was down {:?} after the directory stopped", stopped.elapsed());
    let s = node.status().await;
    assert!(!s["directory_last_error"].as_str().unwrap().is_empty(), "{s}");
    let shown = node.stdout(&["status"]).await;
    assert!(shown.contains(&format!("directory {url} (reconnecting since")), "{shown}");
    assert!(shown.contains("last error: "), "{shown}");
    assert!(
        shown.contains(&format!("check that the directory is running and listening at {url}")),
        "{shown}"
    );
    assert!(!shown.contains("connected since"), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_nobody_listens_on_is_named_with_what_to_check() {
    let root = tempfile::tempdir().unwrap();
    // A loopback port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}");
    let node = Daemon::start(root.path(), "node", &url).await;

    let out = node.run(&["search", "anything"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "exit code for an unreachable directory: {stderr}");
    assert!(stderr.contains(&format!("the directory at {url} cannot be reached (")), "{stderr}");
    assert!(stderr.contains("check that the directory is running and listening at"), "{stderr}");
    assert!(stderr.contains("--directory") && stderr.contains("QUAVER_DIRECTORY"), "{stderr}");
    assert_eq!(stderr.matches("cannot be reached").count(), 1, "said once: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");

    until("the session's first attempt to fail", WAIT, || async {
        !node.status().await["directory_last_error"].as_str().unwrap_or("").is_empty()
    })
    .await;
    let shown = node.stdout(&["status"]).await;
    assert!(shown.contains(&format!("directory {url} (reconnecting since")), "{shown}");
    assert!(
        shown.contains(&format!("check that the directory is running and listening at {url}")),
        "{shown}"
    );
}

/// `quaver daemon ARGS` that is expected to fail at once: its standard error, which must be one
/// plain line (no backtrace with RUST_BACKTRACE=1, no colour codes on a pipe).
async fn failed_daemon(data: &Path, args: &[&str]) -> String {
    let run = Command::new(QUAVER)
        .arg("--data-dir")
        .arg(data)
        .args(["--directory", "http://127.0.0.1:9", "daemon"])
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .output();
    let out = tokio::time::timeout(WAIT, run).await.unwrap().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(!stderr.contains('\u{1b}'), "colour codes: {stderr:?}");
    stderr.trim_end().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_that_cannot_start_says_why_once_and_what_to_do() {
    let root = tempfile::tempdir().unwrap();
    let node = Daemon::start(root.path(), "node", "http://127.0.0.1:9").await;
    let pid = node.child.id().unwrap();
    let second = failed_daemon(&node.data, &["--listen", "127.0.0.1:0"]).await;
    assert_eq!(
        second,
        format!(
            "quaver daemon: another quaver node (pid {pid}) uses {}: stop it first, or give this one another data dir",
            node.data.display()
        )
    );

    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let busy = failed_daemon(&root.path().join("other"), &["--listen", &format!("127.0.0.1:{port}")]).await;
    assert!(busy.starts_with(&format!("quaver daemon: UDP port {port} on 127.0.0.1 is in use")), "{busy}");
    assert!(busy.contains("--listen"), "{busy}");
    assert_eq!(busy.matches("Address already in use").count(), 1, "each cause once: {busy}");
}
