//! What the `quaver-directory` binary says when it cannot start: one line, each cause once, no
//! backtrace (even with RUST_BACKTRACE=1), no colour codes when standard error is not a
//! terminal, and what to do: a second directory on the same data dir names the first one's pid,
//! a port in use names the port and the flag, and the peer's `QUAVER_DATA_DIR` is refused
//! rather than read.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const DIRECTORY: &str = env!("CARGO_BIN_EXE_quaver-directory");

fn directory(cwd: &Path) -> Command {
    let mut command = Command::new(DIRECTORY);
    command
        .current_dir(cwd)
        .env_remove("QUAVER_DATA_DIR")
        .env_remove("QUAVER_DIRECTORY_DATA_DIR")
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

async fn output(mut command: Command) -> Output {
    tokio::time::timeout(Duration::from_secs(60), command.output()).await.expect("it never exited").unwrap()
}

/// Standard error of a failed start: exactly one line, plain text.
fn one_error_line(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line, no backtrace: {stderr}");
    assert!(!stderr.contains('\u{1b}'), "colour codes: {stderr:?}");
    assert!(lines[0].starts_with("quaver-directory: "), "{stderr}");
    lines[0].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_directory_on_the_same_data_dir_names_the_first_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut first = directory(dir.path())
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(first.stdout.take().unwrap()).lines();
    let listening = tokio::time::timeout(Duration::from_secs(60), stdout.next_line()).await.unwrap().unwrap();
    assert!(listening.is_some_and(|l| l.starts_with("listening on ")));

    let mut second = directory(dir.path());
    second.args(["--listen", "127.0.0.1:0", "--data-dir"]).arg(&data);
    let line = one_error_line(&output(second).await);
    let pid = first.id().unwrap();
    assert_eq!(
        line,
        format!(
            "quaver-directory: another quaver-directory (pid {pid}) uses {}: stop it first, or give this one another data dir",
            data.display()
        )
    );

    // The first one's own log, on a pipe, is plain text too; it is still serving.
    first.start_kill().unwrap();
    let log = first.wait_with_output().await.unwrap();
    let log = String::from_utf8_lossy(&log.stderr);
    assert!(log.contains("INFO"), "{log}");
    assert!(!log.contains('\u{1b}'), "colour codes in a piped log: {log:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_in_use_names_the_port_and_the_flag_once() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut command = directory(dir.path());
    command.args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"]).arg(dir.path().join("data"));
    let line = one_error_line(&output(command).await);
    assert!(line.contains(&format!("another program uses port {port} on 127.0.0.1")), "{line}");
    assert!(line.contains("--listen (QUAVER_LISTEN"), "{line}");
    assert_eq!(line.matches("Address already in use").count(), 1, "each cause once: {line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_s_data_dir_variable_is_refused_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let peer_data = dir.path().join("peer-data");
    let mut command = directory(dir.path());
    command.args(["--listen", "127.0.0.1:0"]).env("QUAVER_DATA_DIR", &peer_data);
    let line = one_error_line(&output(command).await);
    assert!(line.contains("QUAVER_DATA_DIR=") && line.contains("QUAVER_DIRECTORY_DATA_DIR"), "{line}");
    assert!(!peer_data.exists(), "the directory wrote into the peer's data dir");
    assert!(!dir.path().join("quaver-directory-data").exists(), "nor started on its default");

    // Its own variable is read.
    let own = dir.path().join("own");
    let mut child = directory(dir.path())
        .args(["--listen", "127.0.0.1:0"])
        .env("QUAVER_DATA_DIR", &peer_data)
        .env("QUAVER_DIRECTORY_DATA_DIR", &own)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let listening = tokio::time::timeout(Duration::from_secs(60), stdout.next_line()).await.unwrap().unwrap();
    assert!(listening.is_some_and(|l| l.starts_with("listening on ")));
    assert!(own.join("catalog").exists(), "the catalog is in QUAVER_DIRECTORY_DATA_DIR");
    assert!(!peer_data.exists());
}
