//! How `quaver get` ends when the world is not kind: no source online (it waits, visibly, and
//! ends with exit code 7, or finishes when a source comes back; `quaver cancel` stops it), a
//! destination on another filesystem (the finish copies), an `--out` folder with other files in
//! it (only the download is shared), and a destination too small for the file (refused before
//! it starts, with the numbers). Real directory, real daemons, real CLI; the filesystems are
//! tmpfs mounts the tests make inside their own temporary directories and remove.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use common::{Daemon, Directory, QUAVER, SIZE, WAIT, blake3_of, song, sources_of, until};
use quaver_shared::ContentId;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// `quaver --data-dir D ARGS...` to the end, standard error included.
async fn run(node: &Daemon, args: &[&str]) -> Output {
    let cli = Command::new(QUAVER).arg("--data-dir").arg(&node.data).args(args).output();
    tokio::time::timeout(WAIT * 2, cli).await.expect("the CLI hung").unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A source of the 20 MB song, and the song's id; the directory knows the file and the source.
async fn one_source(root: &Path, dir: &Directory) -> (Daemon, ContentId) {
    let (_, id) = song(&root.join("music"), "周杰伦 - 晴天.flac");
    let source = Daemon::start(root, "source", &dir.url(), &[]).await;
    source.share(&root.join("music")).await;
    sources_of(dir, id, 1).await;
    (source, id)
}

/// A file the directory knows but nobody serves any more: its only source left.
async fn orphaned_song(root: &Path, dir: &Directory) -> ContentId {
    let (source, id) = one_source(root, dir).await;
    source.stop().await;
    until("the source to leave", || async { dir.locate(id).await.is_empty() }).await;
    id
}

/// `quaver get ID ARGS...` in the background, its standard error read line by line.
fn get_watched(
    node: &Daemon,
    id: ContentId,
    args: &[&str],
) -> (Child, tokio::io::Lines<BufReader<tokio::process::ChildStderr>>) {
    let mut child = Command::new(QUAVER)
        .arg("--data-dir")
        .arg(&node.data)
        .args(["get", &id.to_hex(), "--json"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stderr.take().unwrap()).lines();
    (child, lines)
}

/// Reads standard error until a line says the download waits for a source.
async fn until_waiting(lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStderr>>) -> String {
    let read = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("no source is online") {
                return line;
            }
        }
        panic!("get ended without saying it waits for a source");
    };
    tokio::time::timeout(WAIT, read).await.expect("get never said it waits for a source")
}

/// Files of `id`'s download left in the node's partial dir.
fn partial_files(node: &Daemon, id: ContentId) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(node.data.join("partial")) else { return Vec::new() };
    entries.flatten().map(|e| e.path()).filter(|p| p.to_string_lossy().contains(&id.to_hex())).collect()
}

/// A tmpfs of `size` mounted at `at` for the life of the guard. `None` (and a note saying the
/// test is skipped) where this process may not mount, as without root.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .stderr(Stdio::null())
            .status();
        if status.is_ok_and(|s| s.success()) {
            Some(Tmpfs(at.to_owned()))
        } else {
            eprintln!("skipped: cannot mount a tmpfs here (needs root); this test runs in CI");
            None
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_with_no_source_online_says_it_waits_then_ends_with_exit_code_7() {
    let root = tempfile::tempdir().unwrap();
    let dir = Directory::start().await;
    let id = orphaned_song(root.path(), &dir).await;
    let getter = Daemon::start(root.path(), "getter", &dir.url(), &[]).await;

    let (mut get, mut lines) = get_watched(&getter, id, &["--wait-sources", "3"]);
    let waiting = until_waiting(&mut lines).await;
    assert!(waiting.contains("gives up in") && waiting.contains(&format!("quaver cancel {id}")), "{waiting}");
    let status = getter.json(&["status", "--json"]).await;
    assert_eq!(status["downloads"][0]["waiting_for_sources"], true, "{status}");

    let code = tokio::time::timeout(WAIT, get.wait()).await.expect("get never gave up").unwrap();
    let rest: Vec<String> = {
        let mut rest = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            rest.push(line);
        }
        rest
    };
    assert_eq!(code.code(), Some(7), "{rest:?}");
    let error = rest.join("\n");
    assert!(error.contains("no source was online to serve the file for 3 s"), "{error}");
    assert!(error.contains("--wait-sources"), "{error}");

    // The node is not stuck on it: the next get starts afresh (and waits again).
    let again = run(&getter, &["get", &id.to_hex(), "--wait-sources", "1"]).await;
    assert_eq!(again.status.code(), Some(7), "{}", stderr(&again));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_is_listed_but_cannot_be_dialled_does_not_keep_a_get_waiting_past_its_bound() {
    let root = tempfile::tempdir().unwrap();
    let dir = Directory::start().await;
    let (mut source, id) = one_source(root.path(), &dir).await;
    // Killed, not stopped: its lease stays until it expires, so every lookup still lists it
    // and every dial fails.
    source.kill();
    let getter = Daemon::start(root.path(), "getter", &dir.url(), &[]).await;
    assert!(!dir.locate(id).await.is_empty(), "the dead source is still listed");

    let (mut get, mut lines) = get_watched(&getter, id, &["--wait-sources", "3"]);
    until_waiting(&mut lines).await;
    let code = tokio::time::timeout(WAIT, get.wait()).await.expect("get never gave up").unwrap();
    assert_eq!(code.code(), Some(7), "no source could be reached within --wait-sources");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_get_finishes_when_a_source_comes_back() {
    let root = tempfile::tempdir().unwrap();
    let dir = Directory::start().await;
    let id = orphaned_song(root.path(), &dir).await;
    let getter = Daemon::start(root.path(), "getter", &dir.url(), &[]).await;

    let (get, mut lines) = get_watched(&getter, id, &["--wait-sources", "120"]);
    until_waiting(&mut lines).await;
    // The same source, back with the same data dir (and its share list).
    let _source = Daemon::start(root.path(), "source", &dir.url(), &[]).await;
    let out = tokio::time::timeout(WAIT, get.wait_with_output()).await.expect("get never finished").unwrap();
    assert_eq!(out.status.code(), Some(0));
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(blake3_of(got["path"].as_str().unwrap()), id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_waiting_download_and_removes_its_partial_data() {
    let root = tempfile::tempdir().unwrap();
    let dir = Directory::start().await;
    let id = orphaned_song(root.path(), &dir).await;
    let getter = Daemon::start(root.path(), "getter", &dir.url(), &[]).await;

    let (get, mut lines) = get_watched(&getter, id, &["--wait-sources", "120"]);
    until_waiting(&mut lines).await;
    assert!(!partial_files(&getter, id).is_empty(), "the download keeps its state in partial/");
    let cancelled = getter.json(&["cancel", &id.to_hex(), "--json"]).await;
    assert_eq!(cancelled["was_running"], true, "{cancelled}");
    let code = tokio::time::timeout(WAIT, get.wait_with_output()).await.expect("get never ended").unwrap();
    assert_eq!(code.status.code(), Some(9));
    assert_eq!(partial_files(&getter, id), Vec::<PathBuf>::new());
    let nothing = run(&getter, &["cancel", &id.to_hex()]).await;
    assert_eq!(nothing.status.code(), Some(4), "nothing left to cancel: {}", stderr(&nothing));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_to_another_filesystem_lands_there() {
    let root = tempfile::tempdir().unwrap();
    let Some(other) = Tmpfs::mount(&root.path().join("other-disk"), "64m") else { return };
    let dir = Directory::start().await;
    let (_source, id) = one_source(root.path(), &dir).await;
    let getter = Daemon::start(root.path(), "getter", &dir.url(), &[]).await;

    let got = getter.json(&["get", &id.to_hex(), "--out", other.0.to_str().unwrap(), "--json"]).await;
    let path = PathBuf::from(got["path"].as_str().unwrap());
    assert_eq!(path.parent(), Some(other.0.as_path()));
    assert_eq!(blake3_of(path.to_str().unwrap()), id);
    let names: Vec<_> = std::fs::read_dir(&other.0).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(names.len(), 1, "the file alone, no copy left beside it: {names:?}");
    assert_eq!(partial_files(&getter, id), Vec::<PathBuf>::new());
    // And the node serves it from there.
    until("the getter as a source", || async { dir.locate(id).await.contains(&getter.peer_id) }).await;
    drop(getter);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_download_is_shared_from_an_out_folder() {
    let root = tempfile::tempdir().unwrap();
    let dir = Directory::start().await;
    let (_source, id) = one_source(root.path(), &dir).await;
    let getter = Daemon::start(root.path(), "getter", &dir.url(), &[]).await;
    let downloads = root.path().join("Downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let private = b"tax return 2026: not for anyone else".to_vec();
    std::fs::write(downloads.join("tax return.pdf"), &private).unwrap();

    getter.json(&["get", &id.to_hex(), "--out", downloads.to_str().unwrap(), "--json"]).await;
    // Another folder shared later rescans everything the node shares.
    let music = root.path().join("getter-music");
    song(&music, "another.flac");
    getter.json(&["share", music.to_str().unwrap(), "--json"]).await;

    until("the getter as a source", || async { dir.locate(id).await.contains(&getter.peer_id) }).await;
    let status = getter.json(&["status", "--json"]).await;
    let folders: Vec<String> =
        status["folders"].as_array().unwrap().iter().map(|f| f.as_str().unwrap().to_owned()).collect();
    assert!(!folders.iter().any(|f| Path::new(f).ends_with("Downloads")), "{folders:?}");
    assert!(dir.locate(ContentId::of_bytes(&private)).await.is_empty(), "the tax return was published");
    let hits = getter.json(&["search", "tax", "return", "--json"]).await;
    assert_eq!(hits.as_array().map(Vec::len), Some(0), "{hits}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_that_does_not_fit_is_refused_before_it_starts() {
    let root = tempfile::tempdir().unwrap();
    let Some(small) = Tmpfs::mount(&root.path().join("small-disk"), "4m") else { return };
    let dir = Directory::start().await;
    let (_source, id) = one_source(root.path(), &dir).await;
    let getter = Daemon::start(root.path(), "getter", &dir.url(), &[]).await;

    let out = run(&getter, &["get", &id.to_hex(), "--out", small.0.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(8), "{}", stderr(&out));
    let error = stderr(&out);
    assert!(error.contains("not enough disk space"), "{error}");
    assert!(error.contains(&format!("({SIZE} bytes)")), "the size needed: {error}");
    assert!(error.contains(small.0.to_str().unwrap()), "the path: {error}");
    assert!(error.contains("4.0 MiB (4194304 bytes) free"), "what is free: {error}");
    assert_eq!(std::fs::read_dir(&small.0).unwrap().count(), 0, "nothing was written there");
    assert_eq!(partial_files(&getter, id), Vec::<PathBuf>::new(), "nor a partial download");
}
